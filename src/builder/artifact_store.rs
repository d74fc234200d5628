//! The artifact store: layers as tar files and artifact manifests as
//! JSON, in an object store. A local folder by default; S3-compatible
//! storage by configuration, with credentials from the usual AWS
//! environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Upload part size for layers; S3 requires at least 5 MiB per part.
const PART_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactStoreError {
    #[error("artifact store {store}: {source}")]
    Object {
        store: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The `[artifact_store]` section of the server config.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ArtifactStoreConfig {
    /// A folder on local disk; `path` defaults to `store/` in the data dir.
    #[default]
    #[serde(skip)]
    Default,
    Local { path: PathBuf },
    S3 {
        bucket: String,
        /// For example `http://127.0.0.1:9000`; the AWS endpoint if absent.
        endpoint: Option<String>,
        #[serde(default = "default_region")]
        region: String,
        /// Path-style addressing (`endpoint/bucket/key`), which most
        /// S3-compatible servers need; false selects virtual-hosted style.
        #[serde(default = "default_true")]
        path_style: bool,
    },
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_true() -> bool {
    true
}

pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    description: String,
}

impl ArtifactStore {
    pub fn open(config: &ArtifactStoreConfig, default_dir: &Path) -> anyhow::Result<ArtifactStore> {
        match config {
            ArtifactStoreConfig::Default => Self::local(default_dir),
            ArtifactStoreConfig::Local { path } => Self::local(path),
            ArtifactStoreConfig::S3 { bucket, endpoint, region, path_style } => {
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_region(region)
                    .with_virtual_hosted_style_request(!path_style);
                if let Some(endpoint) = endpoint {
                    builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
                }
                let store = builder.build()?;
                let description = format!("s3 bucket {bucket} at {}", endpoint.as_deref().unwrap_or("AWS"));
                Ok(ArtifactStore { store: Arc::new(store), description })
            }
        }
    }

    fn local(dir: &Path) -> anyhow::Result<ArtifactStore> {
        std::fs::create_dir_all(dir).map_err(|source| ArtifactStoreError::Io {
            operation: "creating artifact store folder",
            path: dir.to_path_buf(),
            source,
        })?;
        let store = LocalFileSystem::new_with_prefix(dir)?;
        Ok(ArtifactStore { store: Arc::new(store), description: format!("folder {}", dir.display()) })
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    fn error(&self, source: object_store::Error) -> ArtifactStoreError {
        ArtifactStoreError::Object { store: self.description.clone(), source }
    }

    pub async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>, ArtifactStoreError> {
        match self.store.get(&ObjectPath::from(key)).await {
            Ok(result) => Ok(Some(result.bytes().await.map_err(|error| self.error(error))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(self.error(error)),
        }
    }

    pub async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), ArtifactStoreError> {
        self.store
            .put(&ObjectPath::from(key), PutPayload::from(bytes))
            .await
            .map_err(|error| self.error(error))?;
        Ok(())
    }

    /// Uploads a file in parts, so a large layer is never held in memory.
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<(), ArtifactStoreError> {
        let io_error = |source| ArtifactStoreError::Io { operation: "reading", path: path.to_path_buf(), source };
        let mut file = tokio::fs::File::open(path).await.map_err(io_error)?;
        let upload = self.store.put_multipart(&ObjectPath::from(key)).await.map_err(|error| self.error(error))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut buffer = vec![0u8; 1024 * 1024];
        loop {
            let read = match file.read(&mut buffer).await {
                Ok(read) => read,
                Err(source) => {
                    let _ = writer.abort().await;
                    return Err(io_error(source));
                }
            };
            if read == 0 {
                break;
            }
            writer.wait_for_capacity(2).await.map_err(|error| self.error(error))?;
            writer.write(&buffer[..read]);
        }
        writer.finish().await.map_err(|error| self.error(error))?;
        Ok(())
    }

    /// Downloads an object into a file, streaming. Returns false if the
    /// object does not exist.
    pub async fn get_to_file(&self, key: &str, path: &Path) -> Result<bool, ArtifactStoreError> {
        let result = match self.store.get(&ObjectPath::from(key)).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(error) => return Err(self.error(error)),
        };
        let io_error = |source| ArtifactStoreError::Io { operation: "writing", path: path.to_path_buf(), source };
        let mut file = tokio::fs::File::create(path).await.map_err(io_error)?;
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|error| self.error(error))?;
            file.write_all(&chunk).await.map_err(io_error)?;
        }
        file.flush().await.map_err(io_error)?;
        Ok(true)
    }

    pub async fn delete(&self, key: &str) -> Result<(), ArtifactStoreError> {
        match self.store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(self.error(error)),
        }
    }
}
