//! Deploying a script: receive the upload, unpack it, pick its template,
//! store the file tree by content hash, record a new version, and build it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;

use super::{Controller, validate_name};
use crate::builder::{BuildInput, BuildOutcome, Progress, build_key};
use crate::error::{ApiError, ErrorKind};
use crate::store::{BuildRecord, ScriptVersion, now_ms};
use crate::templates::Template;
use crate::upload::{UploadKind, hash_tree, receive_body, too_large_script, unpack_upload};

/// The optional `kubefaas.toml` at the top of an uploaded folder.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptManifest {
    template: Option<String>,
    entry: Option<String>,
}

pub struct DeployRequest {
    pub name: String,
    pub kind: UploadKind,
    pub body: axum::body::Body,
    /// The Content-Length header, checked before any byte is read.
    pub content_length: Option<u64>,
}

/// A deployed version with the result of its build.
pub struct Deployed {
    pub version: ScriptVersion,
    pub outcome: BuildOutcome,
    pub build: Option<BuildRecord>,
}

static NEXT_UPLOAD_ID: AtomicU64 = AtomicU64::new(1);

impl Controller {
    /// Deploys an upload as the script's new current version. A version
    /// whose build fails stays current, so invoking it gives `build_failed`
    /// until a fixed version is deployed.
    pub async fn deploy(&self, request: DeployRequest, progress: Progress) -> Result<Deployed, ApiError> {
        validate_name(&request.name)?;
        let max_bytes = self.config.max_script_bytes;
        if request.content_length.is_some_and(|length| length > max_bytes) {
            return Err(too_large_script(max_bytes));
        }
        let upload_id = NEXT_UPLOAD_ID.fetch_add(1, Ordering::Relaxed);
        let work_dir = self.paths.temp().join(format!("upload-{}-{upload_id}", std::process::id()));
        std::fs::create_dir_all(&work_dir)
            .map_err(|error| ApiError::internal(anyhow::anyhow!("creating {}: {error}", work_dir.display())))?;
        let result = self.deploy_in(&work_dir, request, &progress).await;
        if let Err(error) = std::fs::remove_dir_all(&work_dir) {
            tracing::warn!(dir = %work_dir.display(), %error, "removing upload folder failed");
        }
        result
    }

    async fn deploy_in(&self, work_dir: &Path, request: DeployRequest, progress: &Progress) -> Result<Deployed, ApiError> {
        let max_bytes = self.config.max_script_bytes;
        let received = work_dir.join("upload");
        let received_bytes = receive_body(request.body, &received, max_bytes).await?;
        crate::builder::report(progress, format!("upload received: {received_bytes} bytes"));

        let tree = work_dir.join("tree");
        let kind = request.kind.clone();
        let (tree, source_hash, source_bytes) = tokio::task::spawn_blocking(move || {
            unpack_upload(&kind, &received, &tree, max_bytes)?;
            let (hash, bytes) = hash_tree(&tree)
                .map_err(|error| ApiError::internal(anyhow::anyhow!("hashing {}: {error}", tree.display())))?;
            Ok::<_, ApiError>((tree, hash, bytes))
        })
        .await
        .map_err(|error| ApiError::internal(anyhow::anyhow!("unpack task failed: {error}")))??;

        let manifest = read_manifest(&tree)?;
        let template = self.choose_template(&request.kind, &manifest, &tree)?;
        let entry = match (&manifest.entry, &request.kind) {
            (Some(entry), _) => entry.clone(),
            (None, UploadKind::File { file_name }) => file_name.clone(),
            (None, UploadKind::Archive(_)) => template.spec.entry.clone(),
        };
        let source_dir = self.store_source(&tree, &source_hash)?;
        let key = build_key(template, &entry, &source_hash);

        let version = self.store.add_version(ScriptVersion {
            name: request.name.clone(),
            version: 0,
            template: template.spec.name.clone(),
            entry: entry.clone(),
            source_hash,
            source_bytes,
            build_key: key,
            created_at_ms: now_ms(),
        })?;
        tracing::info!(script = %version.name, version = version.version, build_key = %version.build_key, "version deployed");

        let built = self.builder_ensure(&version, template, &source_dir, progress).await;
        let build = self.store.build(&version.build_key)?;
        match built {
            Ok(outcome) => Ok(Deployed { version, outcome, build }),
            Err(error) => Err(error.with("version", version.version)),
        }
    }

    async fn builder_ensure(
        &self,
        version: &ScriptVersion,
        template: &Template,
        source_dir: &Path,
        progress: &Progress,
    ) -> Result<BuildOutcome, ApiError> {
        let input = BuildInput {
            key: &version.build_key,
            template,
            entry: &version.entry,
            source_dir,
            source_hash: &version.source_hash,
        };
        let (artifact, outcome) = self.builder.ensure(&input, true, progress).await?;
        self.artifacts.lock().expect("artifacts poisoned").insert(version.build_key.clone(), artifact);
        Ok(outcome)
    }

    fn choose_template(
        &self,
        kind: &UploadKind,
        manifest: &ScriptManifest,
        tree: &Path,
    ) -> Result<&Template, ApiError> {
        let available = || {
            let mut names: Vec<&str> = self.templates.all().map(|template| template.spec.name.as_str()).collect();
            names.sort();
            names.join(", ")
        };
        if let Some(name) = &manifest.template {
            return self.templates.get(name).ok_or_else(|| {
                ApiError::invalid(format!("unknown template {name:?} in kubefaas.toml; available: {}", available()))
            });
        }
        match kind {
            UploadKind::File { file_name } => {
                let extension = Path::new(file_name).extension().unwrap_or_default().to_string_lossy();
                self.templates.for_extension(&extension).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "no template runs {file_name:?}: name the file with a known extension or upload a folder with kubefaas.toml; available templates: {}",
                        available()
                    ))
                })
            }
            UploadKind::Archive(_) => self.templates.for_folder(tree).ok_or_else(|| {
                ApiError::invalid(format!(
                    "no template found for this folder: add an entry file such as handler.py or index.js, or set `template` in kubefaas.toml; available templates: {}",
                    available()
                ))
            }),
        }
    }

    /// Moves an unpacked tree to `sources/{hash}`, or drops it if that
    /// content is already stored.
    fn store_source(&self, tree: &Path, hash: &str) -> Result<PathBuf, ApiError> {
        let target = self.paths.sources().join(hash);
        if target.is_dir() {
            return Ok(target);
        }
        match std::fs::rename(tree, &target) {
            Ok(()) => Ok(target),
            // Another upload of the same content won the race.
            Err(_) if target.is_dir() => Ok(target),
            Err(error) => Err(ApiError::internal(anyhow::anyhow!("moving source to {}: {error}", target.display()))),
        }
    }
}

fn read_manifest(tree: &Path) -> Result<ScriptManifest, ApiError> {
    let path = tree.join("kubefaas.toml");
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text)
            .map_err(|error| ApiError::new(ErrorKind::InvalidRequest, format!("invalid kubefaas.toml: {error}"))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(ScriptManifest::default()),
        Err(error) => Err(ApiError::invalid(format!("kubefaas.toml could not be read: {error}"))),
    }
}
