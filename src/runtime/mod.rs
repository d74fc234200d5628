//! The runtime seam: start an instance of a built artifact, send it calls,
//! stop it. The local runtime runs instances as child processes of the
//! server; a Kubernetes runtime would run them as pods and speak the same
//! protocol over TCP.

pub mod local;
pub mod logs;
pub mod protocol;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use crate::error::ApiError;
use logs::LogBuffer;

/// Everything needed to start one instance.
#[derive(Clone)]
pub struct InstanceSpec {
    pub script: String,
    pub build_key: String,
    pub interpreter: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub code_dir: PathBuf,
    pub entry: String,
    pub logs: Arc<LogBuffer>,
    /// How long the script may take to load before the start counts as failed.
    pub start_timeout: Duration,
}

/// The data object sent to a script, with the payload as raw bytes.
#[derive(Debug, Clone, Default)]
pub struct CallData {
    pub payload: Option<Vec<u8>>,
    pub variables: Map<String, Value>,
    pub meta: Map<String, Value>,
    pub flow: Value,
}

/// What the script returned. Fields it left out are `None` and go back to
/// the caller as they were sent.
#[derive(Debug, Clone, Default)]
pub struct CallReply {
    pub payload: Option<Vec<u8>>,
    pub variables: Option<Map<String, Value>>,
    pub meta: Option<Map<String, Value>>,
    pub flow: Option<Value>,
    pub logs: Vec<String>,
}

pub trait Runtime: Send + Sync {
    /// Starts an instance and returns once it has loaded the script and is
    /// ready for calls. A script that fails while loading gives `crashed`
    /// with its own error output.
    fn start(&self, spec: InstanceSpec) -> BoxFuture<'_, Result<Arc<dyn Instance>, ApiError>>;
}

pub trait Instance: Send + Sync {
    fn id(&self) -> u64;

    /// Sends one call and waits for the reply. The caller bounds the wait;
    /// after a failure other than `script_error` the instance is dead.
    fn call<'a>(&'a self, data: &'a CallData) -> BoxFuture<'a, Result<CallReply, ApiError>>;

    /// False once the instance has exited or failed a call.
    fn is_alive(&self) -> bool;

    /// Stops the instance and every process it started, and waits for them.
    fn stop(&self) -> BoxFuture<'_, ()>;
}
