//! The local runtime: each instance is a child process of the server in its
//! own process group, connected by a Unix socket pair passed as fd 3. The
//! child's stdout and stderr go to the script's log buffer.

use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::logs::{LogBuffer, capture_lines};
use super::protocol::{CallHeader, FrameError, read_frame, write_frame};
use super::{CallData, CallReply, Instance, InstanceSpec, Runtime};
use crate::error::{ApiError, ErrorKind};

/// The fd number the shim finds its end of the socket pair at.
const INSTANCE_FD: i32 = 3;
/// Lines of the script's stderr returned with `crashed`.
const STDERR_TAIL_LINES: usize = 20;

static NEXT_INSTANCE_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Default)]
pub struct LocalRuntime;

impl Runtime for LocalRuntime {
    fn start(&self, spec: InstanceSpec) -> BoxFuture<'_, Result<Arc<dyn Instance>, ApiError>> {
        Box::pin(async move {
            let instance = LocalInstance::start(spec).await?;
            Ok(Arc::new(instance) as Arc<dyn Instance>)
        })
    }
}

pub struct LocalInstance {
    id: u64,
    pid: i32,
    connection: tokio::sync::Mutex<UnixStream>,
    child: tokio::sync::Mutex<Child>,
    stderr_reader: std::sync::Mutex<Option<JoinHandle<()>>>,
    logs: Arc<LogBuffer>,
    next_call_id: AtomicU64,
    alive: AtomicBool,
}

impl LocalInstance {
    async fn start(spec: InstanceSpec) -> Result<LocalInstance, ApiError> {
        let id = NEXT_INSTANCE_ID.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("instance", script = %spec.script, instance = id);
        let (server_end, instance_end) = std::os::unix::net::UnixStream::pair()
            .map_err(|error| ApiError::internal(anyhow::anyhow!("creating a socket pair: {error}")))?;

        let mut command = Command::new(&spec.interpreter);
        command
            .args(&spec.args)
            .current_dir(&spec.code_dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()))
            .env("LANG", "C.UTF-8")
            .env("HOME", "/tmp")
            .envs(&spec.env)
            .env("KUBEFAAS_FD", INSTANCE_FD.to_string())
            .env("KUBEFAAS_CODE_DIR", &spec.code_dir)
            .env("KUBEFAAS_ENTRY", &spec.entry)
            .env("KUBEFAAS_SCRIPT", &spec.script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let instance_fd = instance_end.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and calls
        // only async-signal-safe functions (dup2, fcntl, prctl).
        unsafe {
            command.pre_exec(move || {
                if instance_fd == INSTANCE_FD {
                    // dup2 onto itself keeps close-on-exec set, so clear it.
                    if libc::fcntl(INSTANCE_FD, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(instance_fd, INSTANCE_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Instances must not outlive a server that is killed. The signal
                // fires when the forking thread exits; this runs on a runtime
                // worker thread, which lives as long as the server.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|error| {
            ApiError::internal(anyhow::anyhow!("starting {}: {error}", spec.interpreter.display()))
        })?;
        drop(instance_end);
        let pid = child.id().map_or(0, |pid| pid as i32);

        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        tokio::spawn(capture_lines(stdout, spec.logs.clone(), id, "stdout"));
        let stderr_reader = tokio::spawn(capture_lines(stderr, spec.logs.clone(), id, "stderr"));

        server_end
            .set_nonblocking(true)
            .map_err(|error| ApiError::internal(anyhow::anyhow!("configuring the instance socket: {error}")))?;
        let connection = UnixStream::from_std(server_end)
            .map_err(|error| ApiError::internal(anyhow::anyhow!("registering the instance socket: {error}")))?;

        let instance = LocalInstance {
            id,
            pid,
            connection: tokio::sync::Mutex::new(connection),
            child: tokio::sync::Mutex::new(child),
            stderr_reader: std::sync::Mutex::new(Some(stderr_reader)),
            logs: spec.logs.clone(),
            next_call_id: AtomicU64::new(1),
            alive: AtomicBool::new(true),
        };
        let ready = {
            let mut connection = instance.connection.lock().await;
            tokio::time::timeout(spec.start_timeout, read_frame(&mut *connection)).await
        };
        match ready {
            Ok(Ok((header, _))) if header.ready => {
                let _entered = span.enter();
                tracing::info!(pid, "instance ready");
                Ok(instance)
            }
            Ok(Ok(_)) => {
                instance.stop_now().await;
                Err(ApiError::new(ErrorKind::Crashed, "the instance sent a call reply before its ready message"))
            }
            Ok(Err(error)) => Err(instance.exit_error(&error, "while loading the script").await),
            Err(_) => {
                instance.stop_now().await;
                let timeout = spec.start_timeout.as_secs_f64();
                Err(ApiError::new(
                    ErrorKind::Timeout,
                    format!("the instance did not become ready within {timeout} s"),
                )
                .with("timeout_seconds", timeout))
            }
        }
    }

    async fn call_inner(&self, data: &CallData) -> Result<CallReply, ApiError> {
        let mut connection = self.connection.lock().await;
        let id = self.next_call_id.fetch_add(1, Ordering::Relaxed);
        let header = CallHeader {
            id,
            has_payload: data.payload.is_some(),
            variables: data.variables.clone(),
            meta: data.meta.clone(),
            flow: data.flow.clone(),
        };
        let body = data.payload.as_deref().unwrap_or_default();
        if let Err(error) = write_frame(&mut *connection, &header, body).await {
            drop(connection);
            return Err(self.exit_error(&error, "during the call").await);
        }
        let (reply, body) = match read_frame(&mut *connection).await {
            Ok(frame) => frame,
            Err(error) => {
                drop(connection);
                return Err(self.exit_error(&error, "during the call").await);
            }
        };
        drop(connection);
        if reply.id != id {
            self.stop_now().await;
            return Err(ApiError::new(
                ErrorKind::Crashed,
                format!("the instance replied to call {} while call {id} was waiting", reply.id),
            ));
        }
        if !reply.ok {
            let failure = reply.error.unwrap_or_else(|| super::protocol::ScriptFailure {
                error_type: "Error".into(),
                message: "the script failed without a message".into(),
            });
            return Err(ApiError::new(ErrorKind::ScriptError, format!("{}: {}", failure.error_type, failure.message))
                .with("error_type", failure.error_type));
        }
        Ok(CallReply {
            payload: reply.has_payload.then_some(body),
            variables: reply.variables,
            meta: reply.meta,
            flow: reply.flow,
            logs: reply.logs.unwrap_or_default(),
        })
    }

    /// Builds the `crashed` error for an instance whose connection failed:
    /// waits briefly for the exit status and the last stderr lines.
    async fn exit_error(&self, error: &FrameError, when: &str) -> ApiError {
        self.alive.store(false, Ordering::Release);
        let status = {
            let mut child = self.child.lock().await;
            match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
                Ok(Ok(status)) => Some(status),
                _ => None,
            }
        };
        self.stop_now().await;
        let reader = self.stderr_reader.lock().expect("stderr reader lock poisoned").take();
        if let Some(reader) = reader {
            let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
        }
        let stderr_tail = self.logs.tail(self.id, "stderr", STDERR_TAIL_LINES).join("\n");
        let mut api_error = match status {
            Some(status) => {
                let exit = describe_exit(status);
                ApiError::new(ErrorKind::Crashed, format!("the instance {exit} {when}"))
                    .with("exit_code", status.code())
                    .with("signal", status.signal())
            }
            None => ApiError::new(ErrorKind::Crashed, format!("the instance connection failed {when}: {error}")),
        };
        if !stderr_tail.is_empty() {
            api_error.message.push_str(&format!(": {}", summary_line(&stderr_tail)));
            api_error = api_error.with("stderr_tail", stderr_tail);
        }
        tracing::warn!(instance = self.id, pid = self.pid, error = %api_error, "instance failed");
        api_error
    }

    /// Kills the whole process group and reaps the child.
    async fn stop_now(&self) {
        self.alive.store(false, Ordering::Release);
        if self.pid > 0 {
            // SAFETY: kill has no memory-safety preconditions. The group id is
            // the child's pid (process_group(0)), and the child is not reaped
            // until the wait below, so the id cannot have been reused.
            unsafe {
                libc::kill(-self.pid, libc::SIGKILL);
            }
        }
        let mut child = self.child.lock().await;
        let _ = child.kill().await;
    }
}

impl Instance for LocalInstance {
    fn id(&self) -> u64 {
        self.id
    }

    fn call<'a>(&'a self, data: &'a CallData) -> BoxFuture<'a, Result<CallReply, ApiError>> {
        Box::pin(self.call_inner(data))
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.stop_now().await;
            tracing::info!(instance = self.id, pid = self.pid, "instance stopped");
        })
    }
}

fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => format!("exited ({status})"),
    }
}

/// Picks the line of a script's error output that names the error: the
/// last one mentioning an error or exception (Node prints its version after
/// the error), else the last non-empty line.
fn summary_line(text: &str) -> &str {
    let mut lines = text.lines().rev().map(str::trim).filter(|line| !line.is_empty());
    let last = lines.clone().next().unwrap_or("");
    lines.find(|line| line.contains("Error") || line.contains("Exception")).unwrap_or(last)
}
