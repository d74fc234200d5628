//! The builder turns a script version into a runnable artifact. An artifact
//! is a manifest plus layers, the way an image is: a dependency layer keyed
//! by (template, dependency files), shared between versions and scripts,
//! and a code layer keyed by the source tree. Layers and manifests live in
//! the artifact store; the builder keeps unpacked copies under
//! `layers/` in the data dir for instances to run from.
//!
//! The build key hashes the template, the entry and the source tree (which
//! includes the dependency files), so an existing manifest is a cache hit
//! and a change of any input gives a new key. A manifest is written only
//! after its layers, and unpacked layers are renamed into place, so a
//! failed or interrupted build leaves no half-written artifact.

pub mod artifact_store;
mod layers;
mod steps;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::Instrument;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ErrorKind};
use crate::store::{BuildRecord, Store, now_ms};
use crate::templates::Template;
use artifact_store::{ArtifactStore, ArtifactStoreError};

/// The part of a build's log returned with `build_failed`.
const LOG_TAIL_BYTES: usize = 4096;
/// Build logs keep their first and last half of this many bytes.
const MAX_LOG_BYTES: usize = 1024 * 1024;
/// A use is recorded at most this often per artifact or layer, so the
/// invoke path does not write to the database on every call.
const USE_RECORD_INTERVAL_MS: u64 = 60 * 60 * 1000;

/// Stored as `artifacts/{build_key}.json`; lists the layers to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactManifest {
    pub build_key: String,
    pub template: String,
    pub entry: String,
    /// Key of the dependency layer, if the script has a dependency file.
    pub dependency_layer: Option<String>,
    /// Key of the code layer: the source tree's hash.
    pub code_layer: String,
}

impl ArtifactManifest {
    /// Lists the artifact store keys of this artifact and its layers.
    fn object_keys(&self) -> Vec<String> {
        let mut keys = vec![manifest_key(&self.build_key), layer_key(LayerKind::Code, &self.code_layer)];
        if let Some(dependency_layer) = &self.dependency_layer {
            keys.push(layer_key(LayerKind::Dependencies, dependency_layer));
        }
        keys
    }
}

/// A built artifact, unpacked on local disk.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub manifest: ArtifactManifest,
    pub code_dir: PathBuf,
    /// The dependency layer, or an empty folder when there is none.
    pub dependencies_dir: PathBuf,
}

/// The source of an artifact from [`Builder::ensure`]: the cache or a new build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildOutcome {
    CacheHit,
    Built,
}

/// The inputs of one build.
pub struct BuildInput<'a> {
    pub key: &'a str,
    pub template: &'a Template,
    pub entry: &'a str,
    pub source_dir: &'a Path,
    pub source_hash: &'a str,
}

/// Receives progress lines ("dependencies: running pip") while a build runs.
pub type Progress = Option<tokio::sync::mpsc::UnboundedSender<String>>;

pub fn report(progress: &Progress, line: impl Into<String>) {
    if let Some(sender) = progress {
        let _ = sender.send(line.into());
    }
}

#[derive(Debug, Clone, Copy)]
enum LayerKind {
    Dependencies,
    Code,
}

impl LayerKind {
    fn folder(self) -> &'static str {
        match self {
            LayerKind::Dependencies => "dependencies",
            LayerKind::Code => "code",
        }
    }
}

fn manifest_key(build_key: &str) -> String {
    format!("artifacts/{build_key}.json")
}

fn layer_key(kind: LayerKind, key: &str) -> String {
    format!("layers/{}/{key}.tar", kind.folder())
}

/// Computes the build key of a source tree built with a template.
pub fn build_key(template: &Template, entry: &str, source_hash: &str) -> String {
    hash_parts(&["kubefaas-build-2", &template.spec.name, &template.digest, entry, source_hash])
}

fn hash_parts(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

pub struct Builder {
    store: ArtifactStore,
    metadata: Arc<Store>,
    layers_dir: PathBuf,
    temp_dir: PathBuf,
    empty_dir: PathBuf,
    step_timeout: Duration,
    /// One lock per build key and per layer, so concurrent requests for the
    /// same output run one build and the rest wait for it.
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// When each artifact or layer's use was last recorded, by store key.
    recorded_uses: std::sync::Mutex<HashMap<String, u64>>,
}

impl Builder {
    pub fn new(
        store: ArtifactStore,
        metadata: Arc<Store>,
        layers_dir: PathBuf,
        temp_dir: PathBuf,
        step_timeout: Duration,
    ) -> std::io::Result<Builder> {
        let empty_dir = layers_dir.join("empty");
        std::fs::create_dir_all(&empty_dir)?;
        Ok(Builder {
            store,
            metadata,
            layers_dir,
            temp_dir,
            empty_dir,
            step_timeout,
            locks: Default::default(),
            recorded_uses: Default::default(),
        })
    }

    fn lock_for(&self, name: String) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().expect("build locks poisoned").entry(name).or_default().clone()
    }

    /// Creates a private folder under `tmp/` for one build step's files.
    /// It is removed when dropped, also when a build fails or its request
    /// is cancelled, so a layer is either renamed into place or gone.
    fn staging_dir(&self, label: &str) -> Result<tempfile::TempDir, String> {
        tempfile::Builder::new()
            .prefix(&format!("{label}-"))
            .tempdir_in(&self.temp_dir)
            .map_err(|error| format!("creating a folder in {}: {error}", self.temp_dir.display()))
    }

    /// Returns the artifact for `input.key`, building what is missing. A
    /// build that failed before is returned as `build_failed` again unless
    /// `retry_failed` is set (a new deploy retries; an invoke does not).
    pub async fn ensure(
        &self,
        input: &BuildInput<'_>,
        retry_failed: bool,
        progress: &Progress,
    ) -> Result<(Artifact, BuildOutcome), ApiError> {
        let lock = self.lock_for(format!("build/{}", input.key));
        let _guard = lock.lock().await;

        if let Some(artifact) = self.load(input.key).await? {
            self.record_use(&artifact.manifest, now_ms())?;
            report(progress, "cache hit: the artifact is already built");
            return Ok((artifact, BuildOutcome::CacheHit));
        }
        if !retry_failed {
            if let Some(record) = self.metadata.build(input.key)? {
                if !record.succeeded {
                    return Err(build_failed(&record.log));
                }
            }
        }

        let started = Instant::now();
        let span = tracing::info_span!("build", build_key = %input.key, template = %input.template.spec.name);
        let log_dir = self.staging_dir("build-log").map_err(|message| ApiError::internal(anyhow::anyhow!(message)))?;
        let log_path = log_dir.path().join("build.log");
        span.in_scope(|| tracing::info!("build started"));
        let result = self.build(input, &log_path, progress).instrument(span.clone()).await;
        let mut log = std::fs::read(&log_path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default();
        drop(log_dir);
        if let Err(message) = &result {
            log.push_str(message);
            log.push('\n');
        }
        let record = BuildRecord {
            key: input.key.to_string(),
            template: input.template.spec.name.clone(),
            succeeded: result.is_ok(),
            log: bound_log(log),
            finished_at_ms: now_ms(),
            duration_ms: started.elapsed().as_millis() as u64,
        };
        self.metadata.put_build(&record)?;
        let _entered = span.enter();
        match result {
            Ok(artifact) => {
                tracing::info!(duration_ms = record.duration_ms, "build finished");
                self.record_use(&artifact.manifest, now_ms())?;
                Ok((artifact, BuildOutcome::Built))
            }
            Err(_) => {
                tracing::warn!(duration_ms = record.duration_ms, "build failed");
                Err(build_failed(&record.log))
            }
        }
    }

    /// Loads an artifact whose manifest is in the store, unpacking layers
    /// that are not on local disk yet.
    async fn load(&self, key: &str) -> Result<Option<Artifact>, ApiError> {
        let Some(bytes) = self.store.get_bytes(&manifest_key(key)).await.map_err(ApiError::internal)? else {
            return Ok(None);
        };
        let manifest: ArtifactManifest = serde_json::from_slice(&bytes)
            .map_err(|error| ApiError::internal(anyhow::anyhow!("artifact manifest {key} is invalid: {error}")))?;
        let code_dir = self.local_layer(LayerKind::Code, &manifest.code_layer).await?;
        let dependencies_dir = match &manifest.dependency_layer {
            Some(layer) => self.local_layer(LayerKind::Dependencies, layer).await?,
            None => Some(self.empty_dir.clone()),
        };
        match (code_dir, dependencies_dir) {
            (Some(code_dir), Some(dependencies_dir)) => Ok(Some(Artifact { manifest, code_dir, dependencies_dir })),
            // A layer was removed from the store: build again.
            _ => Ok(None),
        }
    }

    /// Returns the local folder of a layer, downloading and unpacking it
    /// from the store if needed; None if the store does not have it.
    async fn local_layer(&self, kind: LayerKind, key: &str) -> Result<Option<PathBuf>, ApiError> {
        let dir = self.layers_dir.join(kind.folder()).join(key);
        if dir.is_dir() {
            return Ok(Some(dir));
        }
        let lock = self.lock_for(format!("layer/{}/{key}", kind.folder()));
        let _guard = lock.lock().await;
        if dir.is_dir() {
            return Ok(Some(dir));
        }
        let work = self.staging_dir("layer-download").map_err(|message| ApiError::internal(anyhow::anyhow!(message)))?;
        let tar_path = work.path().join("layer.tar");
        if !self.store.get_to_file(&layer_key(kind, key), &tar_path).await.map_err(ApiError::internal)? {
            return Ok(None);
        }
        let (staging, target) = (work.path().join("layer"), dir.clone());
        tokio::task::spawn_blocking(move || {
            layers::unpack(&tar_path, &staging)?;
            std::fs::create_dir_all(target.parent().expect("layer folder has a parent"))?;
            std::fs::rename(&staging, &target)
        })
        .await
        .map_err(|error| ApiError::internal(anyhow::anyhow!("unpack task failed: {error}")))?
        .map_err(|error| ApiError::internal(anyhow::anyhow!("unpacking layer {key}: {error}")))?;
        Ok(Some(dir))
    }

    /// Builds the missing layers and writes the manifest. Returns a message
    /// for the build log on failure.
    async fn build(&self, input: &BuildInput<'_>, log_path: &Path, progress: &Progress) -> Result<Artifact, String> {
        append_log(log_path, &format!("build {} with template {}\n", short(input.key), input.template.spec.name));
        if !input.source_dir.join(input.entry).is_file() {
            return Err(format!(
                "entry file {:?} not found in the upload: the {} template loads it, so upload it, or set `entry` in kubefaas.toml to the file that defines the handler",
                input.entry, input.template.spec.name
            ));
        }

        let dependency_layer = match dependency_layer_key(input)? {
            Some(key) => {
                let dir = self.dependency_layer(input, &key, log_path, progress).await?;
                Some((key, dir))
            }
            None => {
                append_log(log_path, "dependencies: none (no dependency file)\n");
                None
            }
        };
        let code_key = code_layer_key(input);
        let code_dir = self.code_layer(input, &code_key, log_path, progress).await?;

        let manifest = ArtifactManifest {
            build_key: input.key.to_string(),
            template: input.template.spec.name.clone(),
            entry: input.entry.to_string(),
            dependency_layer: dependency_layer.as_ref().map(|(key, _)| key.clone()),
            code_layer: code_key,
        };
        let manifest_json = serde_json::to_vec_pretty(&manifest).map_err(|error| error.to_string())?;
        self.store
            .put_bytes(&manifest_key(input.key), manifest_json)
            .await
            .map_err(|error| format!("storing the artifact manifest failed: {error}"))?;
        append_log(log_path, "artifact stored\n");
        let dependencies_dir = dependency_layer.map_or_else(|| self.empty_dir.clone(), |(_, dir)| dir);
        Ok(Artifact { manifest, code_dir, dependencies_dir })
    }

    async fn dependency_layer(
        &self,
        input: &BuildInput<'_>,
        key: &str,
        log_path: &Path,
        progress: &Progress,
    ) -> Result<PathBuf, String> {
        // One build of a layer at a time; a build that waited finds the
        // layer the first one stored.
        let lock = self.lock_for(format!("build-layer/{key}"));
        let _guard = lock.lock().await;
        if let Some(dir) = self.local_layer(LayerKind::Dependencies, key).await.map_err(|error| error.message)? {
            append_log(log_path, &format!("dependencies: layer {} reused\n", short(key)));
            report(progress, format!("dependencies: layer {} reused", short(key)));
            return Ok(dir);
        }

        let spec = input.template.spec.dependencies.as_ref().expect("a dependency key implies a spec");
        let work = self.staging_dir("dependencies")?;
        let staging = work.path().join("layer");
        std::fs::create_dir_all(&staging).map_err(|error| format!("creating {}: {error}", staging.display()))?;
        for file in std::iter::once(&spec.file).chain(&spec.lock_files) {
            let source = input.source_dir.join(file);
            if source.is_file() {
                std::fs::copy(&source, staging.join(file)).map_err(|error| format!("copying {file}: {error}"))?;
            }
        }
        self.run_steps(input.template, &spec.steps, "dependencies", &staging, log_path, progress).await?;
        report(progress, "dependencies: storing the layer");
        self.store_layer(LayerKind::Dependencies, key, &staging).await?;
        append_log(log_path, &format!("dependencies: layer {} built\n", short(key)));
        Ok(self.layers_dir.join(LayerKind::Dependencies.folder()).join(key))
    }

    async fn code_layer(
        &self,
        input: &BuildInput<'_>,
        key: &str,
        log_path: &Path,
        progress: &Progress,
    ) -> Result<PathBuf, String> {
        if let Some(dir) = self.local_layer(LayerKind::Code, key).await.map_err(|error| error.message)? {
            append_log(log_path, &format!("code: layer {} reused\n", short(key)));
            return Ok(dir);
        }
        let work = self.staging_dir("code")?;
        let staging = work.path().join("layer");
        layers::copy_tree(input.source_dir, &staging).map_err(|error| format!("copying the code: {error}"))?;
        if let Some(code) = &input.template.spec.code {
            // Build steps write into the folder. Hard-linked files would let
            // them change the stored source, so the files become copies first.
            replace_links_with_copies(&staging).map_err(|error| format!("copying the code: {error}"))?;
            std::fs::copy(&input.template.shim_path, staging.join(&input.template.spec.shim))
                .map_err(|error| format!("copying the shim: {error}"))?;
            self.run_steps(input.template, &code.steps, "code", &staging, log_path, progress).await?;
        }
        report(progress, "code: storing the layer");
        self.store_layer(LayerKind::Code, key, &staging).await?;
        append_log(log_path, &format!("code: layer {} stored\n", short(key)));
        Ok(self.layers_dir.join(LayerKind::Code.folder()).join(key))
    }

    /// Runs a template's build steps in `dir`, logging and reporting each
    /// command under `layer` (such as "dependencies").
    async fn run_steps(
        &self,
        template: &Template,
        steps: &[Vec<String>],
        layer: &str,
        dir: &Path,
        log_path: &Path,
        progress: &Progress,
    ) -> Result<(), String> {
        for step in steps {
            let command = template.step_command(step);
            let line = format!("{layer}: $ {}", command.join(" "));
            append_log(log_path, &format!("{line}\n"));
            report(progress, line);
            steps::run_step(&command, dir, log_path, self.step_timeout).await?;
        }
        Ok(())
    }

    /// Packs `staging` into the store, then moves it to its local place.
    async fn store_layer(&self, kind: LayerKind, key: &str, staging: &Path) -> Result<(), String> {
        let work = self.staging_dir("layer-pack")?;
        let tar_path = work.path().join("layer.tar");
        let (folder, tar) = (staging.to_path_buf(), tar_path.clone());
        let packed = tokio::task::spawn_blocking(move || layers::pack(&folder, &tar))
            .await
            .map_err(|error| format!("pack task failed: {error}"))
            .and_then(|result| result.map_err(|error| format!("packing the {} layer: {error}", kind.folder())));
        let stored = match packed {
            Ok(()) => self
                .store
                .put_file(&layer_key(kind, key), &tar_path)
                .await
                .map_err(|error: ArtifactStoreError| format!("storing the {} layer: {error}", kind.folder())),
            Err(message) => Err(message),
        };
        drop(work);
        stored?;
        let target = self.layers_dir.join(kind.folder()).join(key);
        std::fs::create_dir_all(target.parent().expect("layer folder has a parent"))
            .map_err(|error| format!("creating the layers folder: {error}"))?;
        match std::fs::rename(staging, &target) {
            Ok(()) => Ok(()),
            // Another build stored the same layer first, so its copy is used.
            Err(_) if target.is_dir() => Ok(()),
            Err(error) => Err(format!("moving the {} layer into place: {error}", kind.folder())),
        }
    }

    /// Records that an artifact and its layers were used at `now`, which
    /// restarts their retention period. Writes at most once an hour per key.
    pub fn record_use(&self, manifest: &ArtifactManifest, now: u64) -> Result<(), ApiError> {
        let due: Vec<String> = {
            let mut recorded = self.recorded_uses.lock().expect("recorded uses poisoned");
            manifest
                .object_keys()
                .into_iter()
                .filter(|key| {
                    let due = recorded.get(key).is_none_or(|last| now.saturating_sub(*last) >= USE_RECORD_INTERVAL_MS);
                    if due {
                        recorded.insert(key.clone(), now);
                    }
                    due
                })
                .collect()
        };
        if !due.is_empty() {
            self.metadata.record_uses(&due, now)?;
        }
        Ok(())
    }

    /// Deletes artifacts and layers not used since `now - retention`, from
    /// the store and from local disk. Returns the build keys removed.
    pub async fn collect_garbage(&self, now: u64, retention: Duration) -> Result<Vec<String>, ApiError> {
        let cutoff = now.saturating_sub(retention.as_millis() as u64);
        let mut removed_builds = Vec::new();
        // Manifests first, so no manifest ever names a deleted layer.
        let mut expired = self.metadata.uses_before(cutoff)?;
        expired.sort_by_key(|key| !key.starts_with("artifacts/"));
        for key in expired {
            self.store.delete(&key).await.map_err(ApiError::internal)?;
            if let Some(build_key) = key.strip_prefix("artifacts/").and_then(|rest| rest.strip_suffix(".json")) {
                removed_builds.push(build_key.to_string());
            } else if let Some(layer) = key.strip_prefix("layers/").and_then(|rest| rest.strip_suffix(".tar")) {
                let dir = self.layers_dir.join(layer);
                if let Err(error) = std::fs::remove_dir_all(&dir) {
                    if error.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(dir = %dir.display(), %error, "removing an expired layer failed");
                    }
                }
            }
            self.metadata.remove_use(&key)?;
            self.recorded_uses.lock().expect("recorded uses poisoned").remove(&key);
            tracing::info!(object = %key, "removed after the retention period");
        }
        Ok(removed_builds)
    }
}

/// Computes the code layer key: the source hash, or, for a template that
/// builds its code, a hash of the source and the template.
fn code_layer_key(input: &BuildInput<'_>) -> String {
    match &input.template.spec.code {
        None => input.source_hash.to_string(),
        Some(_) => hash_parts(&["kubefaas-code-1", input.source_hash, &input.template.digest, input.entry]),
    }
}

/// Replaces every hard-linked file in `dir` with its own copy.
fn replace_links_with_copies(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            replace_links_with_copies(&path)?;
        } else if file_type.is_file() {
            let copy = path.with_extension("kubefaas-copy");
            std::fs::copy(&path, &copy)?;
            std::fs::rename(&copy, &path)?;
        }
    }
    Ok(())
}

/// Computes the dependency layer key, a hash of the template and the bytes
/// of its dependency files. Returns None when the template has no
/// dependencies or the upload lacks the dependency file.
fn dependency_layer_key(input: &BuildInput<'_>) -> Result<Option<String>, String> {
    let Some(spec) = &input.template.spec.dependencies else {
        return Ok(None);
    };
    if !input.source_dir.join(&spec.file).is_file() {
        return Ok(None);
    }
    let mut hasher = Sha256::new();
    hasher.update(b"kubefaas-dependencies-1");
    hasher.update(input.template.spec.name.as_bytes());
    hasher.update(input.template.digest.as_bytes());
    for file in std::iter::once(&spec.file).chain(&spec.lock_files) {
        hasher.update((file.len() as u64).to_be_bytes());
        hasher.update(file.as_bytes());
        match std::fs::read(input.source_dir.join(file)) {
            Ok(bytes) => {
                hasher.update((bytes.len() as u64).to_be_bytes());
                hasher.update(&bytes);
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => hasher.update(b"absent"),
            Err(error) => return Err(format!("reading {file}: {error}")),
        }
    }
    Ok(Some(hex::encode(hasher.finalize())))
}

fn append_log(log_path: &Path, text: &str) {
    use std::io::Write;
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(log_path) {
        let _ = file.write_all(text.as_bytes());
    }
}

/// Keeps the first and last half of a log over [`MAX_LOG_BYTES`].
fn bound_log(log: String) -> String {
    if log.len() <= MAX_LOG_BYTES {
        return log;
    }
    let mut head_end = MAX_LOG_BYTES / 2;
    while !log.is_char_boundary(head_end) {
        head_end -= 1;
    }
    let tail = tail_of(&log, MAX_LOG_BYTES / 2);
    format!("{}\n[... {} bytes of the log left out ...]\n{tail}", &log[..head_end], log.len() - head_end - tail.len())
}

fn build_failed(log: &str) -> ApiError {
    let tail = tail_of(log, LOG_TAIL_BYTES);
    let mut lines = tail.lines().rev().map(str::trim).filter(|line| !line.is_empty());
    let last = lines.clone().next().unwrap_or("no output");
    // npm prints its error code first and the path of its own log last,
    // and the lines in between describe what failed.
    let npm_reason = tail.lines().map(str::trim).find(|line| {
        (line.starts_with("npm error") || line.starts_with("npm ERR!"))
            && !line.contains(" code ")
            && !line.contains("A complete log of this run")
    });
    let pip_reason = lines.clone().find(|line| line.starts_with("ERROR"));
    let reason = match npm_reason.or(pip_reason) {
        Some(line) => line.to_string(),
        // The last line is the failed step; the line before it is usually
        // the tool's own message, such as a compiler error.
        None => match lines.nth(1) {
            Some(message) if last.contains(" failed: ") => format!("{message} ({last})"),
            _ => last.to_string(),
        },
    };
    ApiError::new(ErrorKind::BuildFailed, format!("the build failed: {reason}")).with("log_tail", tail)
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

fn short(key: &str) -> &str {
    &key[..key.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::templates::Templates;

    const DAY_MS: u64 = 24 * 3600 * 1000;

    struct Fixture {
        _temp: tempfile::TempDir,
        root: PathBuf,
        builder: Builder,
        templates: Templates,
        source_dir: PathBuf,
    }

    fn fixture() -> Fixture {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().to_path_buf();
        let metadata = Arc::new(Store::open(&root.join("metadata.redb")).unwrap());
        let store = ArtifactStore::open(&artifact_store::ArtifactStoreConfig::Default, &root.join("store")).unwrap();
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        let builder =
            Builder::new(store, metadata, root.join("layers"), root.join("tmp"), Duration::from_secs(60)).unwrap();
        let templates = Templates::load(&root.join("templates"), None).unwrap();
        let source_dir = root.join("source");
        std::fs::create_dir_all(&source_dir).unwrap();
        std::fs::write(source_dir.join("handler.py"), "def handle(data):\n    return data\n").unwrap();
        Fixture { _temp: temp, root, builder, templates, source_dir }
    }

    async fn build(fixture: &Fixture) -> (Artifact, BuildOutcome) {
        let template = fixture.templates.get("python").expect("python template");
        let input = BuildInput {
            key: "key-1",
            template,
            entry: "handler.py",
            source_dir: &fixture.source_dir,
            source_hash: "source-1",
        };
        fixture.builder.ensure(&input, false, &None).await.unwrap()
    }

    #[tokio::test]
    async fn retention_removes_only_unused_artifacts() {
        let fixture = fixture();
        let (artifact, outcome) = build(&fixture).await;
        assert_eq!(outcome, BuildOutcome::Built);
        let built_at = now_ms();
        let retention = Duration::from_millis(14 * DAY_MS);
        let manifest_file = fixture.root.join("store/artifacts/key-1.json");
        let code_file = fixture.root.join("store/layers/code/source-1.tar");
        assert!(manifest_file.is_file());
        assert!(artifact.code_dir.join("handler.py").is_file());

        let removed = fixture.builder.collect_garbage(built_at + 10 * DAY_MS, retention).await.unwrap();
        assert!(removed.is_empty(), "used 10 days ago: kept");

        // A use on day 10 restarts the period.
        fixture.builder.record_use(&artifact.manifest, built_at + 10 * DAY_MS).unwrap();
        let removed = fixture.builder.collect_garbage(built_at + 20 * DAY_MS, retention).await.unwrap();
        assert!(removed.is_empty(), "used 10 days before: kept");
        assert!(manifest_file.is_file());

        let removed = fixture.builder.collect_garbage(built_at + 25 * DAY_MS, retention).await.unwrap();
        assert_eq!(removed, vec!["key-1".to_string()]);
        assert!(!manifest_file.exists(), "the manifest is deleted from the store");
        assert!(!code_file.exists(), "the code layer is deleted from the store");
        assert!(!artifact.code_dir.exists(), "the unpacked code layer is deleted");

        let (rebuilt, outcome) = build(&fixture).await;
        assert_eq!(outcome, BuildOutcome::Built, "an expired artifact is built again");
        assert!(rebuilt.code_dir.join("handler.py").is_file());
    }

    #[tokio::test]
    async fn second_ensure_is_a_cache_hit() {
        let fixture = fixture();
        assert_eq!(build(&fixture).await.1, BuildOutcome::Built);
        assert_eq!(build(&fixture).await.1, BuildOutcome::CacheHit);
    }
}
