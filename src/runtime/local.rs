//! The local runtime: each instance is a bubblewrap sandbox (see
//! [`super::sandbox`]) in its own process group and its own cgroup (see
//! [`super::cgroup`]), connected to the server by a Unix socket pair passed
//! as fd 3. The instance's stdout and stderr go to the script's log buffer.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::BufReader;
use tokio::sync::oneshot;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::cgroup::{Cgroups, InstanceCgroup};
use super::prewarm::{LoadError, Prewarmed, read_code_files};
use super::logs::{LogTarget, capture_lines};
use super::protocol::{CallHeader, FrameError, InstanceHeader, read_frame, write_frame};
use super::sandbox::{self, Sandbox, SandboxMounts};
use super::socket::{self, SocketReader, SocketWriter};
use super::{CallData, CallHold, CallReply, Instance, InstanceSpec, ResourceLimits, Runtime};
use crate::error::{ApiError, ErrorKind};

/// The fd number the shim finds its end of the socket pair at.
const INSTANCE_FD: i32 = 3;
/// Lines of the script's stderr returned with `crashed`.
const STDERR_TAIL_LINES: usize = 20;
const MIB: u64 = 1024 * 1024;

static NEXT_INSTANCE_ID: AtomicU64 = AtomicU64::new(1);

pub struct LocalRuntime {
    inner: Arc<RuntimeInner>,
}

pub(super) struct RuntimeInner {
    pub(super) sandbox: Sandbox,
    /// None when the operator chose to run without limits on a host with no
    /// usable cgroup hierarchy.
    pub(super) cgroups: Option<Cgroups>,
    pub(super) prewarmed: Prewarmed,
    spawner: Spawner,
}

impl LocalRuntime {
    /// Creates the runtime. Call it within the server's async runtime.
    pub fn new(sandbox: Sandbox, cgroups: Option<Cgroups>) -> std::io::Result<LocalRuntime> {
        let spawner = Spawner::start(tokio::runtime::Handle::current())?;
        Ok(LocalRuntime { inner: Arc::new(RuntimeInner { sandbox, cgroups, prewarmed: Prewarmed::default(), spawner }) })
    }
}

type SpawnRequest = (Command, oneshot::Sender<std::io::Result<Child>>);

/// Starts instance processes on a thread of its own, for two reasons. A
/// start returns only once the child has joined its cgroups and started
/// bwrap, which takes milliseconds on cgroup v1 and would hold up every
/// call served by the same async thread. And `PR_SET_PDEATHSIG` (see
/// [`prepare_child`]) ties an instance to the thread that started it, which
/// must therefore live as long as the server.
struct Spawner {
    requests: std::sync::mpsc::Sender<SpawnRequest>,
}

impl Spawner {
    fn start(handle: tokio::runtime::Handle) -> std::io::Result<Spawner> {
        let (requests, receiver) = std::sync::mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new().name("instance-spawner".into()).spawn(move || {
            // Child processes are registered with the async runtime's reaper.
            let _runtime = handle.enter();
            for (mut command, reply) in receiver {
                let _ = reply.send(command.spawn());
            }
        })?;
        Ok(Spawner { requests })
    }

    async fn spawn(&self, command: Command) -> std::io::Result<Child> {
        let stopped = || std::io::Error::other("the instance spawner thread has stopped");
        let (reply, receiver) = oneshot::channel();
        self.requests.send((command, reply)).map_err(|_| stopped())?;
        receiver.await.map_err(|_| stopped())?
    }
}

impl Runtime for LocalRuntime {
    fn start(&self, spec: InstanceSpec) -> BoxFuture<'_, Result<Arc<dyn Instance>, ApiError>> {
        Box::pin(async move {
            if let Some(template) = spec.prewarm.clone()
                && let Some(instance) = Prewarmed::take(&self.inner, &template)
            {
                match instance.load_script(&spec).await {
                    Ok(()) => return Ok(Arc::new(instance) as Arc<dyn Instance>),
                    Err(LoadError::Failed(error)) => return Err(error),
                    Err(LoadError::Unsuitable(reason)) => {
                        tracing::info!(script = %spec.script, reason, "starting a new instance instead of a prewarmed one");
                        instance.stop_now().await;
                    }
                }
            }
            let instance = LocalInstance::start(&self.inner, spec, false).await?;
            Ok(Arc::new(instance) as Arc<dyn Instance>)
        })
    }

    fn prewarm(&self, generic_specs: Vec<InstanceSpec>, per_template: usize) {
        Prewarmed::configure(&self.inner, generic_specs, per_template);
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.inner.prewarmed.stop_all().await;
            if let Some(cgroups) = &self.inner.cgroups
                && let Err(error) = cgroups.remove().await
            {
                tracing::warn!(error = %error, "removing the server's cgroups failed");
            }
        })
    }
}

/// Calls sent to an instance and waiting for their replies, by call id.
/// Replies may come back in any order when the instance serves several
/// calls at once; a reader task hands each to its caller.
#[derive(Default)]
struct PendingCalls {
    waiting: HashMap<u64, PendingCall>,
    /// Set when the connection failed; no reply will come any more.
    closed: bool,
}

type Frame = (InstanceHeader, Vec<u8>);

struct PendingCall {
    reply: oneshot::Sender<Result<Frame, FrameError>>,
    /// Dropped when the reply arrives or the connection fails.
    _hold: Option<CallHold>,
}

pub struct LocalInstance {
    id: u64,
    pid: i32,
    writer: tokio::sync::Mutex<SocketWriter>,
    /// The reading half until the ready message is read; then the reader task owns it.
    reader: tokio::sync::Mutex<Option<BufReader<SocketReader>>>,
    pending: Arc<std::sync::Mutex<PendingCalls>>,
    child: tokio::sync::Mutex<Child>,
    /// Taken when the instance stops and its group is removed.
    cgroup: tokio::sync::Mutex<Option<InstanceCgroup>>,
    stderr_reader: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// The destination of stdout and stderr, which also masks secrets.
    log_target: LogTarget,
    limits: ResourceLimits,
    next_call_id: AtomicU64,
    alive: AtomicBool,
}

impl LocalInstance {
    /// Starts an instance of `spec`. A `prewarmed` instance starts the
    /// interpreter and the shim only, and waits for a script (see
    /// [`LocalInstance::load_script`]).
    pub(super) async fn start(runtime: &RuntimeInner, spec: InstanceSpec, prewarmed: bool) -> Result<LocalInstance, ApiError> {
        let id = NEXT_INSTANCE_ID.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("instance", script = %spec.script, version = spec.version, instance = id);
        let (server_end, instance_end) = std::os::unix::net::UnixStream::pair()
            .map_err(|error| ApiError::internal(anyhow::anyhow!("creating a socket pair: {error}")))?;

        let cgroup = match &runtime.cgroups {
            Some(cgroups) => Some(cgroups.create_instance(&format!("instance-{id}"), &spec.limits).map_err(ApiError::internal)?),
            None => {
                tracing::warn!(parent: &span, "starting an instance WITHOUT memory, PID and CPU limits: no usable cgroup hierarchy");
                None
            }
        };
        let mut command = sandboxed_command(&runtime.sandbox, &spec);
        if prewarmed {
            command.env("KUBEFAAS_PREWARM", "1");
        }
        let join_files = cgroup.as_ref().map(InstanceCgroup::procs_files).unwrap_or_default();
        let instance_fd = instance_end.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and calls
        // only async-signal-safe functions (open, write, close, dup2, fcntl,
        // prctl) on data prepared before the fork.
        unsafe {
            command.pre_exec(move || prepare_child(&join_files, instance_fd));
        }
        let mut child = match runtime.spawner.spawn(command).await {
            Ok(child) => child,
            Err(error) => {
                if let Some(cgroup) = cgroup {
                    let _ = cgroup.remove().await;
                }
                return Err(ApiError::internal(anyhow::anyhow!(
                    "starting {} for {}: {error}",
                    runtime.sandbox.bwrap().display(),
                    spec.interpreter.display()
                )));
            }
        };
        drop(instance_end);
        let pid = child.id().map_or(0, |pid| pid as i32);

        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log_target = LogTarget::new(spec.logs.clone(), spec.secrets.clone());
        tokio::spawn(capture_lines(stdout, log_target.clone(), id, "stdout"));
        let stderr_reader = tokio::spawn(capture_lines(stderr, log_target.clone(), id, "stderr"));

        let (reader, writer) = socket::split(server_end)
            .map_err(|error| ApiError::internal(anyhow::anyhow!("registering the instance socket: {error}")))?;
        let instance = LocalInstance {
            id,
            pid,
            writer: tokio::sync::Mutex::new(writer),
            reader: tokio::sync::Mutex::new(Some(reader)),
            pending: Arc::default(),
            child: tokio::sync::Mutex::new(child),
            cgroup: tokio::sync::Mutex::new(cgroup),
            stderr_reader: std::sync::Mutex::new(Some(stderr_reader)),
            log_target,
            limits: spec.limits,
            next_call_id: AtomicU64::new(1),
            alive: AtomicBool::new(true),
        };
        let mut reader = instance.reader.lock().await.take().expect("the reader is taken once");
        let ready = tokio::time::timeout(spec.start_timeout, read_frame(&mut reader)).await;
        match ready {
            Ok(Ok((header, _))) if header.ready => {
                tracing::info!(parent: &span, pid, "instance ready");
                tokio::spawn(read_replies(reader, instance.pending.clone(), id));
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

    async fn call_inner(&self, data: &CallData, hold: CallHold) -> Result<CallReply, ApiError> {
        let id = self.next_call_id.fetch_add(1, Ordering::Relaxed);
        let header = CallHeader {
            id,
            has_payload: data.payload.is_some(),
            variables: &data.variables,
            meta: &data.meta,
            flow: &data.flow,
            http: data.http.as_ref(),
        };

        let (reply_sender, reply_receiver) = oneshot::channel();
        // Registered before the call is sent, so the reply always finds it.
        let registered = {
            let mut pending = self.pending.lock().expect("pending calls poisoned");
            if !pending.closed {
                pending.waiting.insert(id, PendingCall { reply: reply_sender, _hold: Some(hold) });
            }
            !pending.closed
        };
        if !registered {
            return Err(self.exit_error(&FrameError::Closed, "before the call").await);
        }

        let body = data.payload.as_deref().unwrap_or_default();
        let mut sending = SendingCall { instance: self, id, writing: false };
        let written = {
            let mut writer = self.writer.lock().await;
            sending.writing = true;
            write_frame(&mut *writer, &header, body).await
        };
        sending.written();
        if let Err(error) = written {
            self.forget_call(id);
            return Err(self.exit_error(&error, "during the call").await);
        }

        let (reply, body) = match reply_receiver.await {
            Ok(Ok(frame)) => frame,
            Ok(Err(error)) => return Err(self.exit_error(&error, "during the call").await),
            Err(_) => return Err(self.exit_error(&FrameError::Closed, "during the call").await),
        };
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
                traceback: None,
            });
            let message = self.log_target.mask(&format!("{}: {}", failure.error_type, failure.message));
            let mut error = ApiError::new(ErrorKind::ScriptError, message).with("error_type", failure.error_type);
            if let Some(traceback) = failure.traceback {
                error = error.with("traceback", self.log_target.mask(&traceback));
            }
            return Err(error);
        }
        let logs = reply.logs.unwrap_or_default().iter().map(|line| self.log_target.mask(line)).collect();
        Ok(CallReply {
            payload: reply.has_payload.then_some(body),
            variables: reply.variables,
            meta: reply.meta,
            flow: reply.flow,
            response: reply.response,
            logs,
        })
    }

    /// Marks the instance dead and sends SIGKILL to its whole process group,
    /// without waiting. [`LocalInstance::stop_now`] reaps the child later.
    fn kill_group(&self) {
        self.alive.store(false, Ordering::Release);
        if self.pid > 0 {
            // SAFETY: kill has no memory-safety preconditions. The group id is
            // the child's pid (process_group(0)), and the child is not reaped
            // until `stop_now` waits for it, so the id cannot have been reused.
            unsafe {
                libc::kill(-self.pid, libc::SIGKILL);
            }
        }
    }

    /// Removes a call that will get no reply, releasing what it holds.
    fn forget_call(&self, id: u64) {
        let call = self.pending.lock().expect("pending calls poisoned").waiting.remove(&id);
        drop(call);
    }

    /// Builds the error for an instance whose connection failed: waits
    /// briefly for the exit status and the last stderr lines, then reports
    /// `out_of_memory` if the kernel stopped a process of the instance at
    /// its memory limit, else `crashed`.
    async fn exit_error(&self, error: &FrameError, when: &str) -> ApiError {
        self.alive.store(false, Ordering::Release);
        let status = {
            let mut child = self.child.lock().await;
            match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
                Ok(Ok(status)) => Some(status),
                _ => None,
            }
        };
        let oom_kills = self.cgroup.lock().await.as_ref().map_or(0, InstanceCgroup::oom_kills);
        self.stop_now().await;
        let reader = self.stderr_reader.lock().expect("stderr reader lock poisoned").take();
        if let Some(reader) = reader {
            let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
        }
        let stderr_tail = self.log_target.buffer().tail(self.id, "stderr", STDERR_TAIL_LINES).join("\n");
        let mut api_error = if oom_kills > 0 {
            let limit = self.limits.memory_bytes;
            let limit_text = if limit % MIB == 0 { format!("{} MiB", limit / MIB) } else { format!("{limit} bytes") };
            ApiError::new(
                ErrorKind::OutOfMemory,
                format!("the instance reached its memory limit of {limit_text} {when} and was stopped"),
            )
            .with("limit_bytes", limit)
        } else {
            match status {
                Some(status) => {
                    let exit = describe_exit(status);
                    ApiError::new(ErrorKind::Crashed, format!("the instance {} {when}", exit.text))
                        .with("exit_code", exit.code)
                        .with("signal", exit.signal)
                }
                None => ApiError::new(ErrorKind::Crashed, format!("the instance connection failed {when}: {error}")),
            }
        };
        if !stderr_tail.is_empty() {
            if api_error.kind == ErrorKind::Crashed {
                api_error.message.push_str(&format!(": {}", summary_line(&stderr_tail)));
            }
            api_error = api_error.with("stderr_tail", stderr_tail);
        }
        tracing::warn!(instance = self.id, pid = self.pid, error = %api_error, "instance failed");
        api_error
    }

    /// Hands a prewarmed instance its script: the code files travel in one
    /// frame, the shim writes them to its private /tmp and loads the entry.
    async fn load_script(&self, spec: &InstanceSpec) -> Result<(), LoadError> {
        let (files, body) = read_code_files(&spec.code_dir).map_err(LoadError::Unsuitable)?;
        self.log_target.set(spec.logs.clone(), spec.secrets.clone());
        let mut env: serde_json::Map<String, serde_json::Value> = spec
            .env
            .iter()
            .map(|(key, value)| (key.clone(), value.replace("{dependencies}", sandbox::DEPENDENCIES_DIR).into()))
            .collect();
        env.extend(spec.secrets.0.iter().map(|(key, value)| (key.clone(), value.clone().into())));
        env.insert("KUBEFAAS_SCRIPT".into(), spec.script.clone().into());

        let id = self.next_call_id.fetch_add(1, Ordering::Relaxed);
        let header = serde_json::json!({
            "id": id,
            "load": { "entry": spec.entry, "env": env, "files": files },
        });

        let (reply_sender, reply_receiver) = oneshot::channel();
        self.pending.lock().expect("pending calls poisoned").waiting.insert(id, PendingCall { reply: reply_sender, _hold: None });
        let written = {
            let mut writer = self.writer.lock().await;
            write_frame(&mut *writer, &header, &body).await
        };
        let failed = match written {
            Err(error) => Some(error),
            Ok(()) => match reply_receiver.await {
                Ok(Ok((reply, _))) if reply.ok => None,
                Ok(Ok(_)) => Some(FrameError::Io(std::io::Error::other("the shim rejected the script"))),
                Ok(Err(error)) => Some(error),
                Err(_) => Some(FrameError::Closed),
            },
        };
        match failed {
            None => {
                tracing::info!(script = %spec.script, instance = self.id, "prewarmed instance took the script");
                Ok(())
            }
            Some(error) => Err(LoadError::Failed(self.exit_error(&error, "while loading the script").await)),
        }
    }

    /// Kills the whole process group, reaps the child and removes the
    /// instance's cgroup once its processes are gone.
    pub(super) async fn stop_now(&self) {
        self.kill_group();
        {
            let mut child = self.child.lock().await;
            let _ = child.kill().await;
        }
        // Killing bwrap kills the sandbox's PID namespace, and with it every
        // process of the instance; the group empties as they exit.
        let cgroup = self.cgroup.lock().await.take();
        if let Some(cgroup) = cgroup
            && let Err(error) = cgroup.remove().await
        {
            tracing::warn!(instance = self.id, %error, "removing the instance's cgroup failed");
        }
    }
}

impl Drop for LocalInstance {
    /// Removes the cgroup of an instance dropped without `stop`, in the
    /// background. Its bwrap is killed by `kill_on_drop`.
    fn drop(&mut self) {
        let Some(cgroup) = self.cgroup.get_mut().take() else { return };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let id = self.id;
            handle.spawn(async move {
                if let Err(error) = cgroup.remove().await {
                    tracing::warn!(instance = id, %error, "removing the instance's cgroup failed");
                }
            });
        }
    }
}

/// A call whose frame is not yet written whole. If its caller stops
/// waiting now, the call is forgotten. If part of the frame was already
/// written, the connection is out of step, so the instance is killed too.
struct SendingCall<'a> {
    instance: &'a LocalInstance,
    id: u64,
    writing: bool,
}

impl SendingCall<'_> {
    /// Marks the frame as written whole, or its write as failed and
    /// handled by the caller, so dropping undoes nothing.
    fn written(self) {
        std::mem::forget(self);
    }
}

impl Drop for SendingCall<'_> {
    fn drop(&mut self) {
        if self.writing {
            tracing::warn!(instance = self.instance.id, "a call was cancelled while its frame was written; stopping the instance");
            self.instance.kill_group();
        }
        self.instance.forget_call(self.id);
    }
}

/// Reads replies until the connection closes, handing each to the call
/// waiting for its id. Then fails the calls still waiting.
async fn read_replies(mut reader: BufReader<SocketReader>, pending: Arc<std::sync::Mutex<PendingCalls>>, instance: u64) {
    let error = loop {
        match read_frame(&mut reader).await {
            Ok((header, body)) => {
                let waiting = pending.lock().expect("pending calls poisoned").waiting.remove(&header.id);
                match waiting {
                    Some(call) => {
                        let _ = call.reply.send(Ok((header, body)));
                    }
                    None => tracing::warn!(instance, call = header.id, "reply to a call that is not waiting; ignored"),
                }
            }
            Err(error) => break error,
        }
    };
    let failed: Vec<PendingCall> = {
        let mut pending = pending.lock().expect("pending calls poisoned");
        pending.closed = true;
        pending.waiting.drain().map(|(_, call)| call).collect()
    };
    for call in failed {
        let _ = call.reply.send(Err(match &error {
            FrameError::Closed => FrameError::Closed,
            other => FrameError::Io(std::io::Error::other(other.to_string())),
        }));
    }
}

/// Builds the bwrap command for an instance: the sandbox's arguments, then
/// the interpreter with the template's arguments, with a clean environment.
fn sandboxed_command(sandbox: &Sandbox, spec: &InstanceSpec) -> Command {
    let template_dir = spec.shim.parent().unwrap_or(Path::new("/"));
    let shim_inside = Path::new(sandbox::TEMPLATE_DIR).join(spec.shim.file_name().unwrap_or_default());
    let shim_inside = shim_inside.to_string_lossy();
    let mounts = SandboxMounts {
        code_dir: &spec.code_dir,
        dependencies_dir: &spec.dependencies_dir,
        template_dir,
        interpreter_paths: &spec.interpreter_paths,
        network: spec.network,
        tmp_bytes: spec.limits.memory_bytes,
    };
    let interpreter_dir = spec.interpreter.parent().map(PathBuf::from).unwrap_or_default();
    let mut command = Command::new(sandbox.bwrap());
    command
        .args(sandbox.arguments(&mounts))
        .arg(match &spec.program {
            Some(program) => PathBuf::from(program.replace("{code}", sandbox::CODE_DIR)),
            None => spec.interpreter.clone(),
        })
        .args(spec.args.iter().map(|arg| arg.replace("{shim}", &shim_inside)))
        .current_dir("/")
        .env_clear()
        .env("PATH", format!("{}:/usr/local/bin:/usr/bin:/bin", interpreter_dir.display()))
        .env("LANG", "C.UTF-8")
        .env("HOME", "/tmp")
        .envs(spec.env.iter().map(|(key, value)| (key, value.replace("{dependencies}", sandbox::DEPENDENCIES_DIR))))
        .envs(&spec.secrets.0)
        .env("KUBEFAAS_FD", INSTANCE_FD.to_string())
        .env("KUBEFAAS_CODE_DIR", sandbox::CODE_DIR)
        .env("KUBEFAAS_ENTRY", &spec.entry)
        .env("KUBEFAAS_SCRIPT", &spec.script)
        .env("KUBEFAAS_CONCURRENCY", spec.concurrency.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    command
}

/// Runs in the forked child before exec: joins the instance's cgroups, so
/// bwrap and everything it starts is counted from the first instruction,
/// moves the instance's socket to fd 3, and requests SIGKILL when the server
/// dies. Only async-signal-safe calls are allowed here.
fn prepare_child(join_files: &[CString], instance_fd: i32) -> std::io::Result<()> {
    for file in join_files {
        // SAFETY: `file` is a valid NUL-terminated path; the fd is closed
        // before the next iteration.
        unsafe {
            let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Writing 0 to cgroup.procs moves the writing process.
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let error = std::io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(error);
            }
        }
    }
    // SAFETY: plain syscalls on integer arguments.
    unsafe {
        if instance_fd == INSTANCE_FD {
            // dup2 onto itself keeps close-on-exec set, so clear it.
            if libc::fcntl(INSTANCE_FD, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        } else if libc::dup2(instance_fd, INSTANCE_FD) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Instances must not outlive a server that is killed. The signal
        // fires when the forking thread exits, and this runs on the spawner
        // thread, which lives as long as the server.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Instance for LocalInstance {
    fn id(&self) -> u64 {
        self.id
    }

    fn call<'a>(&'a self, data: &'a CallData, hold: CallHold) -> BoxFuture<'a, Result<CallReply, ApiError>> {
        Box::pin(self.call_inner(data, hold))
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

/// The end of an instance, as reported to the caller.
struct ExitDescription {
    text: String,
    code: Option<i32>,
    signal: Option<i32>,
}

/// Describes bwrap's exit status. bwrap exits with the sandboxed process's
/// code, or with 128 + N when that process was killed by signal N.
// NOTE: a script that itself exits with a code above 128 is therefore
// reported as killed by a signal.
fn describe_exit(status: ExitStatus) -> ExitDescription {
    let killed = |signal: i32| ExitDescription {
        text: format!("was killed by signal {signal}{}", signal_name(signal).map(|name| format!(" ({name})")).unwrap_or_default()),
        code: None,
        signal: Some(signal),
    };
    match (status.code(), status.signal()) {
        (Some(code), _) if (129..=128 + 64).contains(&code) => killed(code - 128),
        (Some(code), _) => ExitDescription { text: format!("exited with code {code}"), code: Some(code), signal: None },
        (None, Some(signal)) => killed(signal),
        _ => ExitDescription { text: format!("exited ({status})"), code: None, signal: None },
    }
}

fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => return None,
    })
}

/// Picks the line of a script's error output that names the error: the
/// last one mentioning an error or exception (Node prints its version after
/// the error), else the last non-empty line.
fn summary_line(text: &str) -> &str {
    let mut lines = text.lines().rev().map(str::trim).filter(|line| !line.is_empty());
    let last = lines.clone().next().unwrap_or("");
    lines.find(|line| line.contains("Error") || line.contains("Exception")).unwrap_or(last)
}
