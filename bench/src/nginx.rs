//! nginx as a reference proxy. The instance protocol is not HTTP, so nginx
//! runs its stream module: a plain TCP proxy with one listening port per
//! instance, because each shim accepts exactly one connection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::child::kill_with_harness;
use crate::instance::free_local_address;

/// The stream module's path as Debian's libnginx-mod-stream installs it.
const DEBIAN_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

pub struct Nginx {
    child: Child,
    /// The proxy's listening addresses, one per upstream, in the same order.
    pub listen: Vec<SocketAddr>,
    _temp: tempfile::TempDir,
}

/// Finds the nginx binary, or returns why the reference rows are skipped.
pub fn find_nginx() -> Result<PathBuf, String> {
    for dir in ["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"] {
        let candidate = Path::new(dir).join("nginx");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err("nginx is not installed (Debian: apt-get install nginx libnginx-mod-stream)".into())
}

impl Nginx {
    /// Starts nginx in the foreground with a private prefix, proxying a new
    /// port on 127.0.0.1 to each of `upstreams`.
    pub fn start(binary: &Path, upstreams: &[SocketAddr]) -> anyhow::Result<Nginx> {
        let temp = tempfile::Builder::new().prefix("kubefaas-bench-nginx-").tempdir().context("creating a temporary dir")?;
        let build_options = Command::new(binary).arg("-V").output().context("running nginx -V")?;
        let build_options = String::from_utf8_lossy(&build_options.stderr);
        let load_module = if build_options.contains("--with-stream=dynamic") {
            if !Path::new(DEBIAN_STREAM_MODULE).is_file() {
                bail!("nginx has the stream module as a separate package that is not installed (Debian: apt-get install libnginx-mod-stream)");
            }
            format!("load_module {DEBIAN_STREAM_MODULE};\n")
        } else if build_options.contains("--with-stream") {
            String::new()
        } else {
            bail!("this nginx is built without the stream module");
        };

        let mut listen = Vec::new();
        let mut servers = String::new();
        for upstream in upstreams {
            let address = free_local_address()?;
            servers.push_str(&format!("    server {{ listen {address}; proxy_pass {upstream}; }}\n"));
            listen.push(address);
        }
        let prefix = temp.path();
        let config = format!(
            "{load_module}daemon off;\nworker_processes auto;\npid {pid};\nerror_log {log} warn;\n\
             events {{ worker_connections 1024; }}\nstream {{\n{servers}}}\n",
            pid = prefix.join("nginx.pid").display(),
            log = prefix.join("error.log").display(),
        );
        let config_path = prefix.join("nginx.conf");
        std::fs::write(&config_path, config).with_context(|| format!("writing {}", config_path.display()))?;
        let child = kill_with_harness(&mut Command::new(binary))
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(&config_path)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut nginx = Nginx { child, listen, _temp: temp };
        nginx.wait_listening()?;
        Ok(nginx)
    }

    /// Waits until nginx listens on every port, or fails if it exits. It
    /// reads the socket table instead of connecting, because a test
    /// connection would make nginx use up a shim's only accept.
    fn wait_listening(&mut self) -> anyhow::Result<()> {
        for _ in 0..250 {
            if let Some(status) = self.child.try_wait().context("checking on nginx")? {
                let log = std::fs::read_to_string(self._temp.path().join("error.log")).unwrap_or_default();
                bail!("nginx exited with {status}: {log}");
            }
            let listening = listening_ports()?;
            if self.listen.iter().all(|address| listening.contains(&address.port())) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("nginx did not listen on {:?} within 5 s", self.listen)
    }
}

/// Lists the TCP ports with a socket in the LISTEN state, from /proc/net/tcp.
fn listening_ports() -> anyhow::Result<Vec<u16>> {
    const LISTEN_STATE: &str = "0A";
    let table = std::fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
    let mut ports = Vec::new();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else { continue };
        let port = local.rsplit(':').next().and_then(|hex| u16::from_str_radix(hex, 16).ok());
        if let (Some(port), true) = (port, *state == LISTEN_STATE) {
            ports.push(port);
        }
    }
    Ok(ports)
}

impl Drop for Nginx {
    /// Stops nginx with SIGQUIT (graceful shutdown), then waits for it.
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions; the child is not
        // reaped before the wait below, so its pid is still ours.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGQUIT);
        }
        for _ in 0..250 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
