//! The controller: resolves a script name to its current version, makes
//! sure it is built, finds or starts an instance, and proxies the call.

mod budget;
pub mod calls;
mod deploy;
pub mod pool;
mod sources;
mod targets;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::builder::{Artifact, BuildInput, BuildOutcome, Builder};
use crate::config::Config;
use crate::error::{ApiError, ErrorKind};
use crate::metrics::{CANCELLED, CallLabels, Metrics, script_labels};
use crate::runtime::logs::{LogBuffer, LogLine};
use crate::runtime::{CallData, CallReply, InstanceSpec, ResourceLimits, Runtime};
use crate::store::{BuildRecord, Script, ScriptVersion, Store};
use crate::templates::{Template, Templates};
use budget::MemoryBudget;
use calls::{CallHistory, CallRecord};
use pool::{Pool, PoolLimits};
use sources::SourcesInUse;
use targets::{CallTarget, CallTargets};

pub use deploy::{DeployRequest, Deployed};

/// The CPU weight of an instance whose script sets none (the cgroup v2 default).
pub const DEFAULT_CPU_WEIGHT: u64 = 100;

/// The server's file layout, all under one data dir.
#[derive(Debug, Clone)]
pub struct DataPaths {
    pub root: PathBuf,
}

impl DataPaths {
    pub fn database(&self) -> PathBuf {
        self.root.join("metadata.redb")
    }
    pub fn sources(&self) -> PathBuf {
        self.root.join("sources")
    }
    /// Unpacked layers that instances run from.
    pub fn layers(&self) -> PathBuf {
        self.root.join("layers")
    }
    /// Returns the default artifact store folder: layer tars and manifests.
    pub fn artifact_store(&self) -> PathBuf {
        self.root.join("store")
    }
    pub fn templates(&self) -> PathBuf {
        self.root.join("templates")
    }
    /// Uploads and builds in progress; emptied when the server starts.
    pub fn temp(&self) -> PathBuf {
        self.root.join("tmp")
    }
}

pub struct Controller {
    pub config: Config,
    pub paths: DataPaths,
    pub store: Arc<Store>,
    pub templates: Templates,
    builder: Builder,
    runtime: Arc<dyn Runtime>,
    pools: Mutex<HashMap<String, Arc<Pool>>>,
    logs: Mutex<HashMap<String, Arc<LogBuffer>>>,
    calls: Mutex<HashMap<String, Arc<CallHistory>>>,
    /// Artifacts already read from disk, by build key.
    artifacts: Mutex<HashMap<String, Artifact>>,
    targets: CallTargets,
    sources_in_use: SourcesInUse,
    memory_budget: Arc<MemoryBudget>,
    pub metrics: Arc<Metrics>,
}

impl Controller {
    pub fn new(
        config: Config,
        paths: DataPaths,
        store: Arc<Store>,
        templates: Templates,
        builder: Builder,
        runtime: Arc<dyn Runtime>,
    ) -> Controller {
        let memory_budget =
            MemoryBudget::new(config.memory_budget_mib.map_or_else(budget::default_budget_bytes, |mib| mib * 1024 * 1024));
        tracing::info!(memory_budget_mib = memory_budget.total_bytes() / (1024 * 1024), "instance memory budget");
        Controller {
            config,
            paths,
            store,
            templates,
            builder,
            runtime,
            pools: Mutex::default(),
            logs: Mutex::default(),
            calls: Mutex::default(),
            artifacts: Mutex::default(),
            targets: CallTargets::default(),
            sources_in_use: SourcesInUse::default(),
            memory_budget,
            metrics: Arc::new(Metrics::new()),
        }
    }

    pub fn script(&self, name: &str) -> Result<Script, ApiError> {
        self.store.script(name)?.ok_or_else(|| ApiError::not_found(name))
    }

    pub fn scripts(&self) -> Result<Vec<Script>, ApiError> {
        Ok(self.store.scripts()?)
    }

    pub fn versions(&self, name: &str) -> Result<Vec<ScriptVersion>, ApiError> {
        Ok(self.store.versions(name)?)
    }

    pub fn build_record(&self, key: &str) -> Result<Option<BuildRecord>, ApiError> {
        Ok(self.store.build(key)?)
    }

    /// Counts a script's instances, running or starting.
    pub fn instance_count(&self, name: &str) -> usize {
        self.pools.lock().expect("pools poisoned").get(name).map_or(0, |pool| pool.instance_count())
    }

    pub fn template(&self, name: &str) -> Result<&Template, ApiError> {
        self.templates.get(name).ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!(
                "template {name:?} is not available on this server: its interpreter is missing or it was removed"
            ))
        })
    }

    /// Deletes a script. Calls in flight finish; its instances then stop.
    pub async fn remove(&self, name: &str) -> Result<(), ApiError> {
        let source_hashes = self.store.versions(name)?.into_iter().map(|version| version.source_hash).collect();
        if !self.store.remove_script(name)? {
            return Err(ApiError::not_found(name));
        }
        self.targets.forget(name);
        let pool = self.pools.lock().expect("pools poisoned").remove(name);
        if let Some(pool) = pool {
            pool.close().await;
        }
        self.logs.lock().expect("logs poisoned").remove(name);
        self.calls.lock().expect("calls poisoned").remove(name);
        self.metrics.remove_script(name);
        let removed_sources = self.remove_unused_sources(source_hashes).await?;
        tracing::info!(script = name, removed_sources, "script deleted");
        Ok(())
    }

    pub fn calls(&self, name: &str) -> Vec<CallRecord> {
        self.calls.lock().expect("calls poisoned").get(name).map(|history| history.snapshot()).unwrap_or_default()
    }

    fn call_history(&self, name: &str) -> Arc<CallHistory> {
        let mut calls = self.calls.lock().expect("calls poisoned");
        calls.entry(name.to_string()).or_insert_with(|| Arc::new(CallHistory::new(self.config.call_records_per_script))).clone()
    }

    fn count_build(&self, result: &Result<(Artifact, BuildOutcome), ApiError>) {
        let outcome = match result {
            Ok((_, BuildOutcome::CacheHit)) => "cache_hit",
            Ok((_, BuildOutcome::Built)) => "built",
            Err(_) => "failed",
        };
        self.metrics.record_build(outcome);
    }

    /// Encodes the metrics, with the instance and queue gauges read now.
    pub fn render_metrics(&self) -> String {
        let pools: Vec<(String, Arc<Pool>)> =
            self.pools.lock().expect("pools poisoned").iter().map(|(name, pool)| (name.clone(), pool.clone())).collect();
        self.metrics.instances.clear();
        self.metrics.queue_length.clear();
        for (name, pool) in pools {
            let labels = script_labels(&name);
            self.metrics.instances.get_or_create(&labels).set(pool.instance_count() as i64);
            self.metrics.queue_length.get_or_create(&labels).set(pool.waiting() as i64);
        }
        self.metrics.encode()
    }

    pub fn logs(&self, name: &str) -> Vec<LogLine> {
        self.logs.lock().expect("logs poisoned").get(name).map(|buffer| buffer.snapshot()).unwrap_or_default()
    }

    fn log_buffer(&self, name: &str) -> Arc<LogBuffer> {
        let mut logs = self.logs.lock().expect("logs poisoned");
        logs.entry(name.to_string())
            .or_insert_with(|| Arc::new(LogBuffer::new(self.config.log_lines_per_script)))
            .clone()
    }

    fn pool(&self, name: &str) -> Arc<Pool> {
        let mut pools = self.pools.lock().expect("pools poisoned");
        pools.entry(name.to_string()).or_insert_with(|| Pool::new(name, self.metrics.clone())).clone()
    }

    /// Returns the artifact of a version, building it if it is missing.
    async fn artifact(&self, version: &ScriptVersion) -> Result<Artifact, ApiError> {
        if let Some(artifact) = self.artifacts.lock().expect("artifacts poisoned").get(&version.build_key) {
            return Ok(artifact.clone());
        }
        let template = self.template(&version.template)?;
        let source_dir = self.paths.sources().join(&version.source_hash);
        let input = BuildInput {
            key: &version.build_key,
            template,
            entry: &version.entry,
            source_dir: &source_dir,
            source_hash: &version.source_hash,
        };
        let result = self.builder.ensure(&input, false, &None).await;
        self.count_build(&result);
        let (artifact, _) = result?;
        self.artifacts.lock().expect("artifacts poisoned").insert(version.build_key.clone(), artifact.clone());
        Ok(artifact)
    }

    /// Deletes artifacts and layers unused for the retention period, now
    /// and then every hour.
    pub async fn run_garbage_collector(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(Duration::from_secs(3600));
        loop {
            ticker.tick().await;
            match self.builder.collect_garbage(crate::store::now_ms(), self.config.retention()).await {
                Ok(removed) => {
                    let mut artifacts = self.artifacts.lock().expect("artifacts poisoned");
                    for key in &removed {
                        artifacts.remove(key);
                    }
                    if !removed.is_empty() {
                        // A target may name a removed layer folder, so the
                        // next call makes a new one, rebuilding if needed.
                        self.targets.clear();
                    }
                }
                Err(error) => tracing::warn!(%error, "garbage collection failed"),
            }
            match self.collect_unused_sources().await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "removed sources no version names"),
                Err(error) => tracing::warn!(%error, "removing unused sources failed"),
            }
        }
    }

    /// Invokes a script's current version with `data` and records the
    /// call: metrics, and a call record under `call_id`. Calls to unknown
    /// scripts are not recorded, so metric labels only name scripts that
    /// exist. A call whose caller disconnects is recorded as `cancelled`.
    pub async fn invoke(&self, name: &str, call_id: &str, data: CallData) -> Result<CallReply, ApiError> {
        let mut recording = CallRecording::start(self, name, call_id);
        let result = match self.call_target(name).await {
            Ok(target) => {
                recording.target = Some(target.clone());
                self.call(&target, data, recording.started_at_ms).await
            }
            Err(error) => Err(error),
        };
        match &result {
            Err(error) if error.kind == ErrorKind::NotFound => recording.skip(),
            Ok(reply) => recording.finish("ok", reply.logs.clone()),
            Err(error) => recording.finish(error.kind.as_str(), vec![error.message.clone()]),
        }
        result
    }

    /// Returns the call target of a script's current version, making it
    /// (and building the version if needed) when there is none.
    async fn call_target(&self, name: &str) -> Result<Arc<CallTarget>, ApiError> {
        if let Some(target) = self.targets.get(name) {
            return Ok(target);
        }
        let generation = self.targets.generation();
        let version = self.script(name)?.current;
        let artifact = self.artifact(&version).await?;
        let spec = self.instance_spec(&version, &artifact)?;
        let labels = script_labels(name);
        let target = Arc::new(CallTarget::new(
            spec,
            self.pool(name),
            self.call_history(name),
            artifact.manifest,
            self.metrics.calls.get_or_create(&CallLabels { script: name.to_string(), outcome: "ok".into() }).clone(),
            self.metrics.call_duration.get_or_create(&labels).clone(),
        ));
        self.targets.insert(name, generation, target.clone());
        Ok(target)
    }

    async fn call(&self, target: &CallTarget, data: CallData, now_ms: u64) -> Result<CallReply, ApiError> {
        if target.use_due(now_ms)
            && let Err(error) = self.builder.record_use(&target.manifest, now_ms)
        {
            tracing::warn!(script = %target.spec.script, %error, "recording the artifact's use failed");
        }
        let timeout = target.spec.start_timeout;
        let limits = PoolLimits {
            max_instances: self.config.max_instances_per_script,
            concurrency: self.config.instance_concurrency,
            max_waiting: self.config.max_waiting_calls_per_script,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let lease = target
            .pool
            .acquire(&self.runtime, &self.memory_budget, &target.spec, &target.pool_key, limits, deadline, timeout)
            .await?;

        // The lease travels with the call: if the caller disconnects, the
        // slot stays taken until the instance has replied, so the instance
        // is never sent more calls than its concurrency.
        let instance = lease.instance.clone();
        match tokio::time::timeout_at(deadline, instance.call(&data, Box::new(lease))).await {
            Ok(reply) => reply.map(|mut reply| {
                reply.keep_sent_values(data);
                reply
            }),
            Err(_) => {
                tracing::warn!(script = %target.spec.script, instance = instance.id(), "call timed out; replacing the instance");
                instance.stop().await;
                Err(ApiError::new(ErrorKind::Timeout, format!("the call exceeded the timeout of {} s", timeout.as_secs_f64()))
                    .with("timeout_seconds", timeout.as_secs_f64()))
            }
        }
    }

    /// Describes the instances of a version: its template's command, the
    /// script's settings within the server's limits, and its secrets.
    fn instance_spec(&self, version: &ScriptVersion, artifact: &Artifact) -> Result<InstanceSpec, ApiError> {
        let template = self.template(&version.template)?;
        let settings = &version.settings;
        let timeout = settings.timeout_seconds.map_or_else(|| self.config.call_timeout(), Duration::from_secs_f64);
        let mut memory_mib = settings.memory_mib.unwrap_or(self.config.instance_memory_mib);
        if memory_mib > self.config.max_instance_memory_mib {
            // Deploy rejects such a value; this version was deployed while
            // the server allowed more.
            tracing::warn!(
                script = %version.name,
                version = version.version,
                memory_mib,
                max_instance_memory_mib = self.config.max_instance_memory_mib,
                "the script asks for more memory than the server allows; using the server's maximum"
            );
            memory_mib = self.config.max_instance_memory_mib;
        }
        let mut env = template.spec.run.env.clone();
        env.extend(settings.env.clone());
        let limits = ResourceLimits {
            memory_bytes: memory_mib * 1024 * 1024,
            pids: self.config.max_pids_per_instance,
            cpu_weight: settings.cpu_weight.unwrap_or(DEFAULT_CPU_WEIGHT),
        };
        let network = settings.network.unwrap_or(true);
        let prewarm_fits = template.spec.prewarm
            && artifact.manifest.dependency_layer.is_none()
            && network
            && limits == self.default_limits();
        Ok(InstanceSpec {
            script: version.name.clone(),
            version: version.version,
            build_key: version.build_key.clone(),
            interpreter: template.interpreter.clone(),
            program: template.spec.run.program.clone(),
            interpreter_paths: template.interpreter_paths.clone(),
            args: template.spec.run.args.clone(),
            shim: template.shim_path.clone(),
            env,
            secrets: version.secrets.clone(),
            code_dir: artifact.code_dir.clone(),
            dependencies_dir: artifact.dependencies_dir.clone(),
            entry: artifact.manifest.entry.clone(),
            concurrency: self.config.instance_concurrency,
            logs: self.log_buffer(&version.name),
            start_timeout: timeout,
            limits,
            network,
            prewarm: prewarm_fits.then(|| template.spec.name.clone()),
        })
    }

    fn default_limits(&self) -> ResourceLimits {
        ResourceLimits {
            memory_bytes: self.config.instance_memory_mib * 1024 * 1024,
            pids: self.config.max_pids_per_instance,
            cpu_weight: DEFAULT_CPU_WEIGHT,
        }
    }

    /// Asks the runtime to keep prewarmed instances of every template that
    /// supports them: a spec per template with no script, empty code and
    /// dependency folders, and the default limits.
    pub fn start_prewarming(&self) {
        let size = self.config.prewarm_instances_per_template;
        let empty = self.paths.layers().join("empty");
        let specs: Vec<InstanceSpec> = self
            .templates
            .all()
            .filter(|template| template.spec.prewarm)
            .map(|template| InstanceSpec {
                script: format!("prewarmed-{}", template.spec.name),
                version: 0,
                build_key: String::new(),
                interpreter: template.interpreter.clone(),
                program: template.spec.run.program.clone(),
                interpreter_paths: template.interpreter_paths.clone(),
                args: template.spec.run.args.clone(),
                shim: template.shim_path.clone(),
                env: template.spec.run.env.clone(),
                secrets: Default::default(),
                code_dir: empty.clone(),
                dependencies_dir: empty.clone(),
                entry: String::new(),
                concurrency: self.config.instance_concurrency,
                logs: Arc::new(LogBuffer::new(self.config.log_lines_per_script)),
                start_timeout: self.config.call_timeout(),
                limits: self.default_limits(),
                network: true,
                prewarm: Some(template.spec.name.clone()),
            })
            .collect();
        tracing::info!(templates = specs.len(), per_template = size, "prewarming instances");
        self.runtime.prewarm(specs, size);
    }

    /// Stops idle instances every `period` until the server stops.
    pub async fn run_idle_reaper(self: Arc<Self>) {
        let idle = self.config.idle_timeout();
        let period = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let pools: Vec<Arc<Pool>> = self.pools.lock().expect("pools poisoned").values().cloned().collect();
            for pool in pools {
                pool.stop_idle(idle).await;
            }
        }
    }

    /// Stops every instance; called when the server shuts down.
    pub async fn shutdown(&self) {
        let pools: Vec<Arc<Pool>> = self.pools.lock().expect("pools poisoned").drain().map(|(_, pool)| pool).collect();
        for pool in pools {
            pool.close().await;
        }
        self.runtime.shutdown().await;
    }
}

/// The record of one call in progress. [`CallRecording::finish`] records
/// its outcome. Dropped unfinished, because the caller disconnected and
/// the call's future was dropped, it records the outcome `cancelled`.
struct CallRecording<'a> {
    controller: &'a Controller,
    name: &'a str,
    call_id: &'a str,
    started_at_ms: u64,
    started: std::time::Instant,
    target: Option<Arc<CallTarget>>,
    done: bool,
}

impl<'a> CallRecording<'a> {
    fn start(controller: &'a Controller, name: &'a str, call_id: &'a str) -> CallRecording<'a> {
        CallRecording {
            controller,
            name,
            call_id,
            started_at_ms: crate::store::now_ms(),
            started: std::time::Instant::now(),
            target: None,
            done: false,
        }
    }

    /// Leaves the call unrecorded.
    fn skip(mut self) {
        self.done = true;
    }

    fn finish(mut self, outcome: &str, logs: Vec<String>) {
        self.done = true;
        self.record(outcome, logs);
    }

    /// Counts the call in the metrics and adds it to the script's call
    /// records, unless the script was deleted while the call ran.
    fn record(&self, outcome: &str, logs: Vec<String>) {
        if self.target.as_ref().is_some_and(|target| target.pool.is_closed()) {
            return;
        }
        let duration = self.started.elapsed();
        let metrics = &self.controller.metrics;
        match (&self.target, outcome) {
            (Some(target), "ok") => {
                target.ok_calls.inc();
            }
            _ => {
                let labels = CallLabels { script: self.name.to_string(), outcome: outcome.to_string() };
                metrics.calls.get_or_create(&labels).inc();
            }
        }
        let history = match &self.target {
            Some(target) => {
                target.call_duration.observe(duration.as_secs_f64());
                target.history.clone()
            }
            None => {
                metrics.call_duration.get_or_create(&script_labels(self.name)).observe(duration.as_secs_f64());
                self.controller.call_history(self.name)
            }
        };
        history.push(CallRecord {
            id: self.call_id.to_string(),
            started_at_ms: self.started_at_ms,
            duration_ms: duration.as_secs_f64() * 1000.0,
            outcome: outcome.to_string(),
            logs,
        });
    }
}

impl Drop for CallRecording<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.record(CANCELLED, vec!["the caller disconnected before the reply".to_string()]);
        }
    }
}

/// Checks a script name: lowercase letters, digits and `-`, 1 to 63
/// characters, starting and ending with a letter or digit (a Kubernetes
/// DNS label, so the name is valid in cluster mode too).
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let valid = (1..=63).contains(&name.len())
        && name.chars().all(allowed)
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "invalid script name {name:?}: use 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        ))
        .with("name", name))
    }
}

#[cfg(test)]
mod tests {
    use super::validate_name;

    #[test]
    fn names_follow_kubernetes_labels() {
        for good in ["a", "order-to-warehouse", "csv2json", &"a".repeat(63)] {
            assert!(validate_name(good).is_ok(), "{good} should be valid");
        }
        for bad in ["", "A", "has_underscore", "-lead", "trail-", "dot.ted", "sp ace", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad} should be invalid");
        }
    }
}
