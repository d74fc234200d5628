//! The builder turns a script version into a runnable artifact in
//! `artifacts/{build_key}`: the script's files (the code layer) plus
//! `artifact.json`. The build key is a hash of everything that affects the
//! result, so a key that exists on disk is a cache hit. A build is written
//! to a temporary folder and renamed into place, so an artifact folder is
//! either complete or absent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ErrorKind};
use crate::store::{BuildRecord, Store, now_ms};
use crate::templates::Template;

/// The part of a build's log returned with `build_failed`.
const LOG_TAIL_BYTES: usize = 4096;

/// Written into every artifact; the runtime reads it to start an instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactManifest {
    pub build_key: String,
    pub template: String,
    pub entry: String,
}

/// A built artifact on disk.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub manifest: ArtifactManifest,
    pub code_dir: PathBuf,
}

/// How a call to [`Builder::ensure`] got its artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildOutcome {
    CacheHit,
    Built,
}

pub struct Builder {
    artifacts_dir: PathBuf,
    temp_dir: PathBuf,
    store: Arc<Store>,
    /// One lock per build key, so concurrent requests for one key run one build.
    in_progress: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Computes the build key of a source tree built with a template.
pub fn build_key(template: &Template, entry: &str, source_hash: &str) -> String {
    let mut hasher = Sha256::new();
    for part in ["kubefaas-build-1", &template.spec.name, &template.digest, entry, source_hash] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

impl Builder {
    pub fn new(artifacts_dir: PathBuf, temp_dir: PathBuf, store: Arc<Store>) -> Builder {
        Builder { artifacts_dir, temp_dir, store, in_progress: Default::default() }
    }

    fn artifact_dir(&self, key: &str) -> PathBuf {
        self.artifacts_dir.join(key)
    }

    /// Returns the artifact for `key`, building it from `source_dir` if it is
    /// not on disk yet. A failed build is recorded and returned as
    /// `build_failed` with the tail of its log; it is not retried until the
    /// script is deployed again.
    pub async fn ensure(
        &self,
        key: &str,
        template: &Template,
        entry: &str,
        source_dir: &Path,
    ) -> Result<(Artifact, BuildOutcome), ApiError> {
        if let Some(artifact) = self.load(key)? {
            return Ok((artifact, BuildOutcome::CacheHit));
        }
        let lock = {
            let mut in_progress = self.in_progress.lock().expect("build lock map poisoned");
            in_progress.entry(key.to_string()).or_default().clone()
        };
        let _guard = lock.lock().await;
        if let Some(artifact) = self.load(key)? {
            return Ok((artifact, BuildOutcome::CacheHit));
        }

        let started = Instant::now();
        let span = tracing::info_span!("build", build_key = %key, template = %template.spec.name);
        let _entered = span.enter();
        let result = self.build(key, template, entry, source_dir);
        let (succeeded, log) = match &result {
            Ok(log) => (true, log.clone()),
            Err(log) => (false, log.clone()),
        };
        let record = BuildRecord {
            key: key.to_string(),
            template: template.spec.name.clone(),
            succeeded,
            log,
            finished_at_ms: now_ms(),
            duration_ms: started.elapsed().as_millis() as u64,
        };
        self.store.put_build(&record)?;
        self.in_progress.lock().expect("build lock map poisoned").remove(key);
        match result {
            Ok(_) => {
                tracing::info!(duration_ms = record.duration_ms, "build finished");
                let artifact = self.load(key)?.ok_or_else(|| {
                    ApiError::internal(anyhow::anyhow!("artifact {key} missing right after its build"))
                })?;
                Ok((artifact, BuildOutcome::Built))
            }
            Err(log) => {
                tracing::warn!(duration_ms = record.duration_ms, "build failed");
                Err(build_failed(&log))
            }
        }
    }

    /// Builds into a temporary folder, then renames it into place. Returns
    /// the build log, or the log so far if a step failed.
    fn build(&self, key: &str, template: &Template, entry: &str, source_dir: &Path) -> Result<String, String> {
        let mut log = String::new();
        let staging = self.temp_dir.join(format!("build-{key}-{}", std::process::id()));
        let result = (|| -> Result<(), String> {
            let _ = std::fs::remove_dir_all(&staging);
            let code_dir = staging.join("code");
            let copied = copy_tree(source_dir, &code_dir)
                .map_err(|error| format!("copying the script's files failed: {error}"))?;
            log.push_str(&format!("code layer: {copied} files from source\n"));
            if !code_dir.join(entry).is_file() {
                return Err(format!(
                    "entry file {entry:?} not found: the {} template loads it, so upload it or set `entry` in kubefaas.toml",
                    template.spec.name
                ));
            }
            let manifest = ArtifactManifest {
                build_key: key.to_string(),
                template: template.spec.name.clone(),
                entry: entry.to_string(),
            };
            let manifest_json = serde_json::to_vec_pretty(&manifest).map_err(|error| error.to_string())?;
            std::fs::write(staging.join("artifact.json"), manifest_json)
                .map_err(|error| format!("writing artifact.json failed: {error}"))?;
            std::fs::rename(&staging, self.artifact_dir(key))
                .map_err(|error| format!("moving the artifact into place failed: {error}"))?;
            Ok(())
        })();
        match result {
            Ok(()) => Ok(log),
            Err(message) => {
                let _ = std::fs::remove_dir_all(&staging);
                log.push_str(&message);
                log.push('\n');
                Err(log)
            }
        }
    }

    /// Loads an artifact if it is on disk. A previously failed build of the
    /// same key is returned as `build_failed`.
    fn load(&self, key: &str) -> Result<Option<Artifact>, ApiError> {
        let dir = self.artifact_dir(key);
        let manifest_path = dir.join("artifact.json");
        match std::fs::read(&manifest_path) {
            Ok(bytes) => {
                let manifest: ArtifactManifest = serde_json::from_slice(&bytes).map_err(|error| {
                    ApiError::internal(anyhow::anyhow!("reading {}: {error}", manifest_path.display()))
                })?;
                Ok(Some(Artifact { manifest, code_dir: dir.join("code") }))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => match self.store.build(key)? {
                Some(record) if !record.succeeded => Err(build_failed(&record.log)),
                _ => Ok(None),
            },
            Err(error) => Err(ApiError::internal(anyhow::anyhow!("reading {}: {error}", manifest_path.display()))),
        }
    }
}

fn build_failed(log: &str) -> ApiError {
    let tail = tail_of(log, LOG_TAIL_BYTES);
    let last_line = tail.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("no output");
    ApiError::new(ErrorKind::BuildFailed, format!("the build failed: {last_line}")).with("log_tail", tail)
}

/// Returns the last `max` bytes of `text`, cut at a character boundary.
pub fn tail_of(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

/// Copies a folder, hard-linking files where the filesystem allows it.
/// Returns the number of files.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<u64> {
    std::fs::create_dir_all(to)?;
    let mut count = 0;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            count += copy_tree(&source, &target)?;
        } else if file_type.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&source)?, &target)?;
        } else {
            if std::fs::hard_link(&source, &target).is_err() {
                std::fs::copy(&source, &target)?;
            }
            count += 1;
        }
    }
    Ok(count)
}
