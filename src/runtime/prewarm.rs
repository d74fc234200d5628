//! Prewarmed instances: per template, a few sandboxes with the interpreter
//! and the shim already started, waiting for a script. A cold start that
//! takes one skips the interpreter's start-up and only loads the code.
//!
//! A prewarmed sandbox is created before its script is known, so it cannot
//! bind the script's folders. The code files travel over the instance
//! socket instead, and the shim writes them to its private /tmp. Scripts
//! with a dependency layer, or with limits or network settings other than
//! the defaults the sandbox was made with, start a new instance instead.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::InstanceSpec;
use super::local::{LocalInstance, RuntimeInner};
use crate::error::ApiError;

/// Code sent to a prewarmed instance, at most: larger scripts start a new instance.
const MAX_CODE_BYTES: u64 = 16 * 1024 * 1024;
const MAX_CODE_FILES: usize = 2000;

pub enum LoadError {
    /// This script cannot use a prewarmed instance; start a new one.
    Unsuitable(String),
    /// The script failed while loading, as it would in a new instance.
    Failed(ApiError),
}

struct TemplatePool {
    spec: InstanceSpec,
    ready: Vec<LocalInstance>,
    starting: usize,
    size: usize,
}

#[derive(Default)]
pub struct Prewarmed {
    pools: Mutex<HashMap<String, TemplatePool>>,
    /// Set at shutdown: instances that finish starting afterwards are stopped.
    closed: std::sync::atomic::AtomicBool,
}

impl Prewarmed {
    pub fn configure(runtime: &Arc<RuntimeInner>, generic_specs: Vec<InstanceSpec>, size: usize) {
        {
            let mut pools = runtime.prewarmed.pools.lock().expect("prewarm pools poisoned");
            for spec in generic_specs {
                let template = spec.prewarm.clone().expect("a generic spec names its template");
                pools.insert(template, TemplatePool { spec, ready: Vec::new(), starting: 0, size });
            }
        }
        let templates: Vec<String> =
            runtime.prewarmed.pools.lock().expect("prewarm pools poisoned").keys().cloned().collect();
        for template in templates {
            Self::refill(runtime, &template);
        }
    }

    /// Takes a ready instance of `template`, if there is one, and starts
    /// its replacement.
    pub fn take(runtime: &Arc<RuntimeInner>, template: &str) -> Option<LocalInstance> {
        if runtime.prewarmed.closed.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let instance = {
            let mut pools = runtime.prewarmed.pools.lock().expect("prewarm pools poisoned");
            pools.get_mut(template)?.ready.pop()
        };
        Self::refill(runtime, template);
        instance
    }

    /// Starts instances until ready and starting ones reach the pool size.
    fn refill(runtime: &Arc<RuntimeInner>, template: &str) {
        let mut pools = runtime.prewarmed.pools.lock().expect("prewarm pools poisoned");
        let Some(pool) = pools.get_mut(template) else { return };
        while pool.ready.len() + pool.starting < pool.size {
            pool.starting += 1;
            let (runtime, spec, template) = (runtime.clone(), pool.spec.clone(), template.to_string());
            tokio::spawn(async move {
                let started = LocalInstance::start(&runtime, spec, true).await;
                let unwanted = {
                    let mut pools = runtime.prewarmed.pools.lock().expect("prewarm pools poisoned");
                    let pool = pools.get_mut(&template).expect("template pools are never removed");
                    match started {
                        Ok(instance) if runtime.prewarmed.closed.load(std::sync::atomic::Ordering::Acquire) => {
                            Some(instance)
                        }
                        Ok(instance) => {
                            pool.ready.push(instance);
                            None
                        }
                        // Not retried until the next take, so a broken
                        // template does not start processes in a loop.
                        Err(error) => {
                            tracing::warn!(template, %error, "starting a prewarmed instance failed");
                            None
                        }
                    }
                };
                if let Some(instance) = unwanted {
                    instance.stop_now().await;
                }
                runtime.prewarmed.pools.lock().expect("prewarm pools poisoned").get_mut(&template).expect("template pools are never removed").starting -= 1;
            });
        }
    }

    /// Stops every prewarmed instance, including those still starting,
    /// and starts no more: for the server's shutdown.
    pub async fn stop_all(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::Release);
        let ready: Vec<LocalInstance> = {
            let mut pools = self.pools.lock().expect("prewarm pools poisoned");
            pools.values_mut().flat_map(|pool| {
                pool.size = 0;
                pool.ready.drain(..)
            }).collect()
        };
        for instance in ready {
            instance.stop_now().await;
        }
        // Starting instances stop themselves once started (see refill).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.pools.lock().expect("prewarm pools poisoned").values().any(|pool| pool.starting > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Reads a code layer into a file list (`{"path", "size"}`) and the
/// concatenated contents. Returns the reason as the error when the layer
/// is too large or contains a link.
pub fn read_code_files(code_dir: &Path) -> Result<(Vec<Value>, Vec<u8>), String> {
    let mut files = Vec::new();
    let mut body = Vec::new();
    collect(code_dir, Path::new(""), &mut files, &mut body)?;
    Ok((files, body))
}

fn collect(root: &Path, relative: &Path, files: &mut Vec<Value>, body: &mut Vec<u8>) -> Result<(), String> {
    let dir = root.join(relative);
    let entries = std::fs::read_dir(&dir).map_err(|error| format!("reading {}: {error}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|error| format!("reading {}: {error}", dir.display()))?;
        let path = relative.join(entry.file_name());
        let file_type = entry.file_type().map_err(|error| format!("reading {}: {error}", path.display()))?;
        if file_type.is_dir() {
            collect(root, &path, files, body)?;
        } else if file_type.is_file() {
            let bytes = std::fs::read(root.join(&path)).map_err(|error| format!("reading {}: {error}", path.display()))?;
            if body.len() as u64 + bytes.len() as u64 > MAX_CODE_BYTES || files.len() >= MAX_CODE_FILES {
                return Err(format!("the code is over {MAX_CODE_BYTES} bytes or {MAX_CODE_FILES} files"));
            }
            files.push(json!({ "path": path.to_string_lossy(), "size": bytes.len() }));
            body.extend_from_slice(&bytes);
        } else {
            return Err(format!("{} is a link, which is not sent to a prewarmed instance", path.display()));
        }
    }
    Ok(())
}
