//! Server settings: defaults, then the `--config` TOML file, then flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::builder::artifact_store::ArtifactStoreConfig;
/// The minimum memory of an instance, in MiB. A Python 3.11 interpreter with
/// the shim's modules loaded has a resident size of about 14 MiB in bwrap.
pub const MIN_MEMORY_MIB: u64 = 32;

/// Settings the controller runs with. In the TOML file, durations are in
/// seconds and sizes in bytes, under the field names below.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// An instance with no call for this long is stopped (scale to zero).
    pub idle_timeout_seconds: f64,
    /// The time a call may take, from the end of the build to the reply,
    /// including waiting for an instance to start.
    pub call_timeout_seconds: f64,
    /// The largest script upload accepted.
    pub max_script_bytes: u64,
    /// The largest payload accepted in one call.
    pub max_payload_bytes: u64,
    /// The number of instances one script may run at once.
    pub max_instances_per_script: usize,
    /// The number of calls one instance serves at once.
    pub instance_concurrency: usize,
    /// Calls of one script that may wait for a free instance; more get
    /// `overloaded` (503).
    pub max_waiting_calls_per_script: usize,
    /// The sum of the memory limits of all running instances, in MiB; by
    /// default 80 % of the host's memory.
    pub memory_budget_mib: Option<u64>,
    /// Call records kept per script for `kubefaas logs`.
    pub call_records_per_script: usize,
    /// Started instances kept waiting for a script, per template that
    /// supports it (python, node); a cold start that takes one skips the
    /// interpreter's start-up. Zero keeps none.
    pub prewarm_instances_per_template: usize,
    /// The number of stdout and stderr lines kept per script.
    pub log_lines_per_script: usize,
    /// An artifact or layer unused for this many days is deleted.
    pub retention_days: f64,
    /// The time one dependency build step (pip, npm) may take.
    pub build_step_timeout_seconds: f64,
    /// The store for layers and artifact manifests.
    pub artifact_store: ArtifactStoreConfig,
    /// Memory per instance, in MiB, for scripts whose kubefaas.toml sets none.
    pub instance_memory_mib: u64,
    /// The maximum memory per instance, in MiB, that a script may request.
    pub max_instance_memory_mib: u64,
    /// Processes and threads one instance may have at once.
    pub max_pids_per_instance: u64,
    /// The folder the cgroup hierarchies are mounted in.
    pub cgroup_root: PathBuf,
    /// The cgroup (a path such as `/kubefaas.slice`) to create instance
    /// groups under; by default, the server's own cgroup.
    pub cgroup_parent: Option<String>,
    /// Runs instances without memory, PID and CPU limits when no usable
    /// cgroup hierarchy is found, instead of refusing to start.
    pub allow_no_cgroups: bool,
    /// Threads that serve HTTP and talk to instances. The default is half of
    /// the CPUs, at least one, so the scripts keep the other half. Builds and
    /// unpacking run on threads of their own.
    pub server_threads: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            idle_timeout_seconds: 300.0,
            call_timeout_seconds: 120.0,
            max_script_bytes: 4 * 1024 * 1024 * 1024,
            max_payload_bytes: 500 * 1024 * 1024,
            max_instances_per_script: 4,
            instance_concurrency: 1,
            max_waiting_calls_per_script: 1000,
            memory_budget_mib: None,
            call_records_per_script: 100,
            prewarm_instances_per_template: 1,
            log_lines_per_script: 1000,
            retention_days: 14.0,
            build_step_timeout_seconds: 600.0,
            artifact_store: ArtifactStoreConfig::Default,
            instance_memory_mib: 512,
            max_instance_memory_mib: 512,
            max_pids_per_instance: 256,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_parent: None,
            allow_no_cgroups: false,
            server_threads: None,
        }
    }
}

impl Config {
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.idle_timeout_seconds > 0.0, "idle_timeout_seconds must be above 0");
        anyhow::ensure!(self.call_timeout_seconds > 0.0, "call_timeout_seconds must be above 0");
        anyhow::ensure!(self.max_instances_per_script >= 1, "max_instances_per_script must be at least 1");
        anyhow::ensure!(self.instance_concurrency >= 1, "instance_concurrency must be at least 1");
        anyhow::ensure!(self.call_records_per_script >= 1, "call_records_per_script must be at least 1");
        anyhow::ensure!(self.log_lines_per_script >= 1, "log_lines_per_script must be at least 1");
        anyhow::ensure!(self.retention_days > 0.0, "retention_days must be above 0");
        anyhow::ensure!(self.build_step_timeout_seconds > 0.0, "build_step_timeout_seconds must be above 0");
        anyhow::ensure!(
            self.instance_memory_mib >= MIN_MEMORY_MIB,
            "instance_memory_mib must be at least {MIN_MEMORY_MIB}"
        );
        anyhow::ensure!(
            self.instance_memory_mib <= self.max_instance_memory_mib,
            "instance_memory_mib ({}) must not be above max_instance_memory_mib ({})",
            self.instance_memory_mib,
            self.max_instance_memory_mib
        );
        anyhow::ensure!(self.max_pids_per_instance >= 8, "max_pids_per_instance must be at least 8");
        anyhow::ensure!(self.server_threads != Some(0), "server_threads must be at least 1");
        Ok(())
    }

    /// Returns the number of server threads: the setting, or half of the CPUs.
    pub fn server_threads(&self) -> usize {
        self.server_threads.unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism().map_or(1, usize::from);
            (cpus / 2).max(1)
        })
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.idle_timeout_seconds)
    }

    pub fn retention(&self) -> Duration {
        Duration::from_secs_f64(self.retention_days * 24.0 * 3600.0)
    }

    pub fn build_step_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.build_step_timeout_seconds)
    }

    pub fn call_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.call_timeout_seconds)
    }
}
