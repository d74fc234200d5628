//! Deploying a script: receive the upload, unpack it, pick its template,
//! store the file tree by content hash, record a new version, and build it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Controller, validate_name};
use crate::builder::{BuildInput, BuildOutcome, Progress, build_key};
use crate::config::{Config, MIN_MEMORY_MIB};
use crate::error::{ApiError, ErrorKind};
use crate::store::{BuildRecord, RunSettings, ScriptVersion, Secrets, now_ms};
use crate::templates::Template;
use crate::upload::{UploadKind, hash_tree, receive_body, too_large_script, unpack_upload};

/// The optional `kubefaas.toml` at the top of an uploaded folder.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptManifest {
    template: Option<String>,
    entry: Option<String>,
    /// Whether instances may open network connections (default true).
    network: Option<bool>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    limits: ManifestLimits,
}

/// The `[limits]` table of `kubefaas.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestLimits {
    memory_mib: Option<u64>,
    timeout_seconds: Option<f64>,
    cpu_weight: Option<u64>,
}

pub struct DeployRequest {
    pub name: String,
    pub kind: UploadKind,
    pub body: axum::body::Body,
    /// The Content-Length header, checked before any byte is read.
    pub content_length: Option<u64>,
    /// Secret changes: a value sets a secret, None removes it. Secrets not
    /// named here keep the value they had in the previous version.
    pub secrets: BTreeMap<String, Option<String>>,
}

/// A deployed version with the result of its build.
pub struct Deployed {
    pub version: ScriptVersion,
    pub outcome: BuildOutcome,
    pub build: Option<BuildRecord>,
}

impl Controller {
    /// Deploys an upload as the script's new current version. A version
    /// whose build fails becomes current only for a new script, so that
    /// invoking it gives `build_failed`; an existing script keeps serving.
    pub async fn deploy(&self, request: DeployRequest, progress: Progress) -> Result<Deployed, ApiError> {
        validate_name(&request.name)?;
        for name in request.secrets.keys() {
            validate_variable_name("secret", name)?;
        }
        let max_bytes = self.config.max_script_bytes;
        if request.content_length.is_some_and(|length| length > max_bytes) {
            return Err(too_large_script(max_bytes));
        }
        // Removed when dropped, also when the request is cancelled.
        let work_dir = tempfile::Builder::new().prefix("upload-").tempdir_in(self.paths.temp()).map_err(|error| {
            ApiError::internal(anyhow::anyhow!("creating an upload folder in {}: {error}", self.paths.temp().display()))
        })?;
        self.deploy_in(work_dir.path(), request, &progress).await
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
        let settings = run_settings(&manifest, &self.config)?;
        let secrets = self.next_secrets(&request.name, &request.secrets)?;
        let template = self.choose_template(&request.kind, &manifest, &tree)?;
        let entry = match (&manifest.entry, &request.kind) {
            (Some(entry), _) => entry.clone(),
            (None, UploadKind::File { file_name }) => file_name.clone(),
            (None, UploadKind::Archive(_)) => template.spec.entry.clone(),
        };
        // Keeps the source from being removed as unused until the version
        // that names it is recorded.
        let _source_use = self.use_source(&source_hash);
        let source_dir = self.store_source(&tree, &source_hash)?;
        let key = build_key(template, &entry, &source_hash);

        let candidate = ScriptVersion {
            name: request.name.clone(),
            version: 0,
            template: template.spec.name.clone(),
            entry: entry.clone(),
            source_hash,
            source_bytes,
            build_key: key,
            created_at_ms: now_ms(),
            settings,
            secrets,
        };

        // Built before it is recorded: a version whose build fails does not
        // replace a working one. A new script is recorded anyway, so that
        // invoking it returns build_failed.
        let built = self.builder_ensure(&candidate, template, &source_dir, progress).await;
        let previous = self.store.script(&request.name)?;
        if let (Err(error), Some(previous)) = (&built, &previous) {
            tracing::warn!(script = %request.name, build_key = %candidate.build_key, "build failed; the current version keeps serving");
            return Err(error
                .clone()
                .with("build_key", candidate.build_key.clone())
                .with("serving_version", previous.current.version));
        }
        let version = self.store.add_version(candidate)?;
        self.targets.forget(&version.name);
        tracing::info!(script = %version.name, version = version.version, build_key = %version.build_key, "version deployed");
        let build = self.store.build(&version.build_key)?;
        match built {
            Ok(outcome) => Ok(Deployed { version, outcome, build }),
            Err(error) => Err(error.with("build_key", version.build_key.clone()).with("version", version.version)),
        }
    }

    /// Applies a deploy's secret changes to the previous version's secrets.
    fn next_secrets(&self, name: &str, changes: &BTreeMap<String, Option<String>>) -> Result<Secrets, ApiError> {
        let mut secrets = self.store.script(name)?.map(|script| script.current.secrets).unwrap_or_default();
        for (key, value) in changes {
            match value {
                Some(value) => {
                    if value.contains('\0') {
                        return Err(ApiError::invalid(format!("secret {key} contains a NUL byte, which no environment variable can hold")));
                    }
                    secrets.0.insert(key.clone(), value.clone());
                }
                None => {
                    secrets.0.remove(key);
                }
            }
        }
        Ok(secrets)
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
        let result = self.builder.ensure(&input, true, progress).await;
        self.count_build(&result);
        let (artifact, outcome) = result?;
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

/// Checks the settings of a `kubefaas.toml` against the server's limits.
fn run_settings(manifest: &ScriptManifest, config: &Config) -> Result<RunSettings, ApiError> {
    let limits = &manifest.limits;
    if let Some(memory_mib) = limits.memory_mib
        && !(MIN_MEMORY_MIB..=config.max_instance_memory_mib).contains(&memory_mib)
    {
        return Err(ApiError::invalid(format!(
            "invalid kubefaas.toml: limits.memory_mib is {memory_mib}, but this server allows {MIN_MEMORY_MIB} to {} MiB per instance",
            config.max_instance_memory_mib
        ))
        .with("max_memory_mib", config.max_instance_memory_mib));
    }
    if let Some(seconds) = limits.timeout_seconds
        && !(seconds.is_finite() && seconds > 0.0)
    {
        return Err(ApiError::invalid(format!(
            "invalid kubefaas.toml: limits.timeout_seconds is {seconds}; give a number of seconds above 0"
        )));
    }
    if let Some(weight) = limits.cpu_weight
        && !(1..=10_000).contains(&weight)
    {
        return Err(ApiError::invalid(format!(
            "invalid kubefaas.toml: limits.cpu_weight is {weight}; give a weight from 1 to 10000 (100 is the default)"
        )));
    }
    for (name, value) in &manifest.env {
        validate_variable_name("env", name)?;
        if value.contains('\0') {
            return Err(ApiError::invalid(format!("invalid kubefaas.toml: env.{name} contains a NUL byte")));
        }
    }
    Ok(RunSettings {
        memory_mib: limits.memory_mib,
        timeout_seconds: limits.timeout_seconds,
        cpu_weight: limits.cpu_weight,
        network: manifest.network,
        env: manifest.env.clone(),
    })
}

/// Checks the name of an environment variable or secret: a letter or `_`,
/// then letters, digits and `_`. Names starting with `KUBEFAAS_` are the
/// platform's own.
fn validate_variable_name(what: &str, name: &str) -> Result<(), ApiError> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(ApiError::invalid(format!(
            "invalid {what} name {name:?}: use letters, digits and '_', starting with a letter or '_'"
        )));
    }
    if name.starts_with("KUBEFAAS_") {
        return Err(ApiError::invalid(format!(
            "invalid {what} name {name:?}: names starting with KUBEFAAS_ are set by kubefaas itself"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(text: &str) -> ScriptManifest {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn settings_within_server_limits_are_kept() {
        let settings = run_settings(
            &manifest("network = false\n[limits]\nmemory_mib = 128\ntimeout_seconds = 2.5\ncpu_weight = 50\n[env]\nREGION = \"eu\"\n"),
            &Config::default(),
        )
        .unwrap();
        assert_eq!(settings.memory_mib, Some(128));
        assert_eq!(settings.timeout_seconds, Some(2.5));
        assert_eq!(settings.cpu_weight, Some(50));
        assert_eq!(settings.network, Some(false));
        assert_eq!(settings.env["REGION"], "eu");
    }

    #[test]
    fn settings_outside_limits_are_invalid() {
        let cases = [
            ("[limits]\nmemory_mib = 1024\n", "limits.memory_mib is 1024, but this server allows 32 to 512 MiB per instance"),
            ("[limits]\nmemory_mib = 1\n", "limits.memory_mib is 1, but this server allows 32 to 512 MiB per instance"),
            ("[limits]\ntimeout_seconds = 0\n", "limits.timeout_seconds is 0; give a number of seconds above 0"),
            ("[limits]\ncpu_weight = 0\n", "limits.cpu_weight is 0; give a weight from 1 to 10000 (100 is the default)"),
            ("[env]\n\"1X\" = \"a\"\n", "invalid env name \"1X\""),
            ("[env]\nKUBEFAAS_FD = \"4\"\n", "names starting with KUBEFAAS_ are set by kubefaas itself"),
        ];
        for (text, expected) in cases {
            let error = run_settings(&manifest(text), &Config::default()).unwrap_err();
            assert_eq!(error.kind, ErrorKind::InvalidRequest, "{text}");
            assert!(error.message.contains(expected), "{text}: {}", error.message);
        }
    }
}
