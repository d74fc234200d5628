//! The runtime seam: start an instance of a built artifact, send it calls,
//! stop it. The local runtime runs instances as child processes of the
//! server; a Kubernetes runtime would run them as pods and speak the same
//! protocol over TCP.

pub mod cgroup;
pub mod local;
pub mod logs;
mod prewarm;
pub mod protocol;
pub mod sandbox;
mod socket;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::store::Secrets;
use logs::LogBuffer;

/// Everything needed to start one instance.
#[derive(Clone)]
pub struct InstanceSpec {
    pub script: String,
    pub version: u64,
    pub build_key: String,
    pub interpreter: PathBuf,
    /// The program to start instead of the interpreter; `{code}` is replaced
    /// with the path of the code folder inside the instance.
    pub program: Option<String>,
    /// Folders the interpreter reads at run time (its installation prefix),
    /// which the instance may read.
    pub interpreter_paths: Vec<PathBuf>,
    /// Arguments after the interpreter. `{shim}` is replaced by the runtime
    /// with the shim's path inside the instance.
    pub args: Vec<String>,
    /// The shim file on the server's disk; its folder is the template folder.
    pub shim: PathBuf,
    /// Environment variables: the template's, then the script's `[env]`.
    pub env: BTreeMap<String, String>,
    /// Secret environment variables, set after `env`. Their values are
    /// masked in the script's logs and error messages.
    pub secrets: Secrets,
    pub code_dir: PathBuf,
    /// The dependency layer's folder, or an empty folder. `{dependencies}`
    /// in `env` is replaced with its path inside the instance.
    pub dependencies_dir: PathBuf,
    pub entry: String,
    /// Calls the instance is sent at once.
    pub concurrency: usize,
    /// The template whose prewarmed instances can take this script: set
    /// when the script needs nothing a prewarmed instance lacks (no
    /// dependency layer, default limits, network on).
    pub prewarm: Option<String>,
    pub logs: Arc<LogBuffer>,
    /// How long the script may take to load before the start counts as failed.
    pub start_timeout: Duration,
    pub limits: ResourceLimits,
    /// Whether the instance may open network connections.
    pub network: bool,
}

impl InstanceSpec {
    /// The key instances are shared by: instances of one version of one
    /// build. A new version gets new instances even with the same build,
    /// because its secrets may differ.
    pub fn pool_key(&self) -> String {
        format!("{}/{}", self.version, self.build_key)
    }
}

/// Resource limits of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceLimits {
    /// Memory, including the private `/tmp`; the instance is stopped above it.
    pub memory_bytes: u64,
    /// Processes and threads the instance may have at once.
    pub pids: u64,
    /// CPU weight relative to other instances: 1 to 10000, 100 is the default.
    pub cpu_weight: u64,
}

/// The data object sent to a script, with the payload as raw bytes.
#[derive(Debug, Clone, Default)]
pub struct CallData {
    pub payload: Option<Vec<u8>>,
    pub variables: Map<String, Value>,
    pub meta: Map<String, Value>,
    pub flow: Value,
    /// Set for a raw HTTP call: `{"method", "path", "query", "headers"}`.
    pub http: Option<Value>,
}

/// The data object the script returned. Fields it left out are `None`
/// until [`CallReply::keep_sent_values`] fills them.
#[derive(Debug, Clone, Default)]
pub struct CallReply {
    pub payload: Option<Vec<u8>>,
    pub variables: Option<Map<String, Value>>,
    pub meta: Option<Map<String, Value>>,
    pub flow: Option<Value>,
    /// For a raw HTTP call: `{"status", "headers"}` as the script set them.
    pub response: Option<Value>,
    pub logs: Vec<String>,
}

impl CallReply {
    /// Gives `variables`, `meta` and `flow` the values they were sent with
    /// where the script left them out, so they go back to the caller as sent.
    pub fn keep_sent_values(&mut self, sent: CallData) {
        self.variables.get_or_insert(sent.variables);
        self.meta.get_or_insert(sent.meta);
        self.flow.get_or_insert(sent.flow);
    }
}

/// A value a call keeps until the instance is done with it. The controller
/// passes the call slot, so a caller that gives up does not free the slot
/// while the instance still runs its call.
pub type CallHold = Box<dyn Send>;

pub trait Runtime: Send + Sync {
    /// Starts an instance and returns once it has loaded the script and is
    /// ready for calls. A script that fails while loading gives `crashed`
    /// with its own error output.
    fn start(&self, spec: InstanceSpec) -> BoxFuture<'_, Result<Arc<dyn Instance>, ApiError>>;

    /// Keeps `per_template` started instances of each generic spec (one per
    /// template, with no script) ready for specs whose `prewarm` names that
    /// template. Zero keeps none.
    fn prewarm(&self, _generic_specs: Vec<InstanceSpec>, _per_template: usize) {}

    /// Releases what the runtime holds for all instances, once every
    /// instance has been stopped.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

pub trait Instance: Send + Sync {
    fn id(&self) -> u64;

    /// Sends one call and waits for the reply. The caller bounds the wait;
    /// after a failure other than `script_error` the instance is dead.
    /// `hold` is dropped once the instance is done with the call: when its
    /// reply is read or the instance fails, also if the caller stopped
    /// waiting before.
    fn call<'a>(&'a self, data: &'a CallData, hold: CallHold) -> BoxFuture<'a, Result<CallReply, ApiError>>;

    /// False once the instance has exited or failed a call.
    fn is_alive(&self) -> bool;

    /// Stops the instance and every process it started, and waits for them.
    fn stop(&self) -> BoxFuture<'_, ()>;
}
