//! Script instances called directly, without the controller: the Python
//! shim started as the server starts it, but with `KUBEFAAS_LISTEN` so it
//! accepts one TCP connection, and a client speaking the instance protocol.
//! Each frame is a 4-byte big-endian header length, a 4-byte big-endian
//! body length, the header as JSON and the raw payload.

use std::cell::RefCell;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::child::kill_with_harness;

/// How long a shim may take to accept its connection and send `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A shim process, killed when dropped.
pub struct ShimProcess {
    child: Child,
    pub address: SocketAddr,
}

impl ShimProcess {
    /// Starts the Python shim for `entry` in `code_dir` with the interpreter
    /// arguments and environment of the server's python template (`-u`,
    /// no bytecode files, unbuffered output, a cleared environment).
    pub fn start_python(python: &Path, shim: &Path, code_dir: &Path, entry: &str) -> anyhow::Result<ShimProcess> {
        let address = free_local_address()?;
        let mut command = Command::new(python);
        kill_with_harness(&mut command).arg("-u").arg(shim).current_dir(code_dir);
        instance_environment(&mut command, PYTHON_TEMPLATE_ENV);
        let child = command
            .env("KUBEFAAS_LISTEN", address.to_string())
            .env("KUBEFAAS_CODE_DIR", code_dir)
            .env("KUBEFAAS_ENTRY", entry)
            .env("KUBEFAAS_SCRIPT", "bench-direct")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} {}", python.display(), shim.display()))?;
        Ok(ShimProcess { child, address })
    }
}

impl Drop for ShimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment variables of the server's python template.
pub const PYTHON_TEMPLATE_ENV: &[(&str, &str)] = &[("PYTHONDONTWRITEBYTECODE", "1"), ("PYTHONUNBUFFERED", "1")];

/// Gives a command the environment the server's local runtime gives an
/// instance: only PATH, LANG and HOME from outside, then the template's
/// variables. Variables such as NODE_EXTRA_CA_CERTS in a developer's shell
/// would otherwise add to a baseline's start time.
pub fn instance_environment(command: &mut Command, template_env: &[(&str, &str)]) {
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()))
        .env("LANG", "C.UTF-8")
        .env("HOME", "/tmp")
        .envs(template_env.iter().copied());
}

/// Picks a free port on 127.0.0.1 by binding port 0 and releasing it.
/// Another process could take the port before the shim binds it. The shim
/// then fails to start, and connecting to it times out with an error.
pub fn free_local_address() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free port on 127.0.0.1")?;
    listener.local_addr().context("reading the free port")
}

/// One call prepared once and sent many times: the same data object the
/// controller benchmark sends over HTTP.
pub struct CallTemplate {
    pub payload: Vec<u8>,
    pub variables: Value,
}

/// A connection to one instance, directly or through a TCP proxy.
pub struct FrameConnection {
    stream: TcpStream,
    next_id: u64,
    buffer: Vec<u8>,
}

impl FrameConnection {
    /// Connects to a shim and waits for its `ready` frame. Retries while the
    /// shim (or a proxy's upstream) is not listening yet, up to a deadline.
    pub async fn connect(address: SocketAddr) -> anyhow::Result<FrameConnection> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match Self::try_connect(address).await {
                Ok(connection) => return Ok(connection),
                Err(error) if Instant::now() >= deadline => {
                    return Err(error.context(format!("no instance became ready at {address} within {READY_TIMEOUT:?}")));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    async fn try_connect(address: SocketAddr) -> anyhow::Result<FrameConnection> {
        let stream = TcpStream::connect(address).await.with_context(|| format!("connecting to {address}"))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        let mut connection = FrameConnection { stream, next_id: 1, buffer: Vec::new() };
        let (header, _) = connection.read_frame().await?;
        if header["ready"] != true {
            bail!("the instance's first frame is not ready: {header}");
        }
        Ok(connection)
    }

    /// Sends one call and checks that the reply is a success that echoes
    /// the payload.
    pub async fn call(&mut self, call: &CallTemplate) -> anyhow::Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        let header = json!({
            "id": id,
            "has_payload": true,
            "variables": call.variables,
            "meta": {},
            "flow": {},
        });
        let header = serde_json::to_vec(&header).context("encoding the call header")?;
        self.buffer.clear();
        self.buffer.extend_from_slice(&(header.len() as u32).to_be_bytes());
        self.buffer.extend_from_slice(&(call.payload.len() as u32).to_be_bytes());
        self.buffer.extend_from_slice(&header);
        self.buffer.extend_from_slice(&call.payload);
        self.stream.write_all(&self.buffer).await.context("sending a call to the instance")?;

        let (reply, body) = self.read_frame().await?;
        if reply["id"] != id || reply["ok"] != true {
            bail!("the instance replied {reply} to call {id}");
        }
        if body != call.payload {
            bail!("the instance returned a different payload: {:?}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }

    async fn read_frame(&mut self) -> anyhow::Result<(Value, Vec<u8>)> {
        let mut prefix = [0u8; 8];
        self.stream.read_exact(&mut prefix).await.context("reading a frame from the instance")?;
        let header_length = u32::from_be_bytes(prefix[..4].try_into().expect("slice of 4 bytes")) as usize;
        let body_length = u32::from_be_bytes(prefix[4..].try_into().expect("slice of 4 bytes")) as usize;
        let mut header = vec![0; header_length];
        self.stream.read_exact(&mut header).await.context("reading a frame header from the instance")?;
        let mut body = vec![0; body_length];
        self.stream.read_exact(&mut body).await.context("reading a frame body from the instance")?;
        let header = serde_json::from_slice(&header).context("the instance sent a frame header that is not JSON")?;
        Ok((header, body))
    }
}

/// Connections to several instances, each serving one call at a time, as
/// the controller's pool does with `instance_concurrency = 1`. A caller
/// waits for a free connection; the wait counts in its latency.
pub struct ConnectionPool {
    free: RefCell<Vec<FrameConnection>>,
    available: Semaphore,
}

impl ConnectionPool {
    pub fn new(connections: Vec<FrameConnection>) -> ConnectionPool {
        let available = Semaphore::new(connections.len());
        ConnectionPool { free: RefCell::new(connections), available }
    }

    pub async fn call(&self, call: &CallTemplate) -> anyhow::Result<()> {
        let permit = self.available.acquire().await.context("the connection pool is closed")?;
        let mut connection = self.free.borrow_mut().pop().expect("a permit guarantees a free connection");
        let result = connection.call(call).await;
        // A connection whose call failed may be out of step; it is dropped.
        if result.is_ok() {
            self.free.borrow_mut().push(connection);
        } else {
            permit.forget();
        }
        result
    }
}
