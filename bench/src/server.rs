//! A `kubefaas serve` process on 127.0.0.1 with a port the system picks,
//! a temporary data dir and a config file, and its memory as /proc shows it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::child::kill_with_harness;

/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Server {
    child: Child,
    pub address: SocketAddr,
    pub data_dir: PathBuf,
    /// Kept open so the server never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
    _temp: tempfile::TempDir,
}

/// Resident memory of a process, from /proc/PID/status.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// VmRSS: resident now, in bytes.
    pub resident: u64,
    /// VmHWM: the peak resident size since the process started, in bytes.
    pub peak_resident: u64,
}

impl Server {
    /// Starts `binary serve` with `config` (TOML) as its config file and
    /// waits for its "listening" line.
    pub fn start(binary: &Path, config: &str) -> anyhow::Result<Server> {
        let temp = tempfile::Builder::new().prefix("kubefaas-bench-").tempdir().context("creating a temporary dir")?;
        let data_dir = temp.path().join("data");
        let config_path = temp.path().join("config.toml");
        std::fs::write(&config_path, config).with_context(|| format!("writing {}", config_path.display()))?;
        let log_path = temp.path().join("server.log");
        let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;

        let mut child = kill_with_harness(&mut Command::new(binary))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let address = line.trim().strip_prefix("kubefaas listening on http://").and_then(|rest| rest.parse().ok());
        let Some(address) = address else {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("the server did not report its address (first line {line:?}, read result {read:?}); its log:\n{log}");
        };
        Ok(Server { child, address, data_dir, _stdout: stdout, _temp: temp })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn memory(&self) -> anyhow::Result<Memory> {
        read_memory(self.pid())
    }

    /// Counts the server's direct child processes: its instances, prewarmed
    /// or serving a script, and any build step running.
    pub fn child_count(&self) -> usize {
        let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
        let pid = self.pid();
        entries
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().bytes().all(|byte| byte.is_ascii_digit()))
            .filter(|entry| parent_pid(&entry.path()) == Some(pid))
            .count()
    }

    /// Returns the path of a template's shim as the server installed it, so
    /// a direct baseline runs exactly the file the server's instances run.
    pub fn shim_path(&self, template: &str, shim_file: &str) -> anyhow::Result<PathBuf> {
        let templates = self.data_dir.join("templates");
        let entries = std::fs::read_dir(&templates).with_context(|| format!("reading {}", templates.display()))?;
        for entry in entries {
            let path = entry.with_context(|| format!("reading {}", templates.display()))?.path();
            let matches = path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&format!("{template}-")));
            if matches && path.join(shim_file).is_file() {
                return Ok(path.join(shim_file));
            }
        }
        bail!("no {template} shim under {}", templates.display())
    }
}

impl Drop for Server {
    /// Stops the server with SIGTERM, as an operator would, so it stops its
    /// instances; kills it if it has not exited within the stop timeout.
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions, and the child is
        // not reaped before the wait below, so its pid is still ours.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("the server (pid {}) did not stop within {STOP_TIMEOUT:?} of SIGTERM; killing it", self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the parent pid from a /proc/PID folder's stat file.
fn parent_pid(process_dir: &Path) -> Option<u32> {
    let stat = std::fs::read_to_string(process_dir.join("stat")).ok()?;
    // The command name in parentheses may contain spaces, so the fields
    // are counted from the last closing parenthesis.
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split(' ').nth(1)?.parse().ok()
}

/// Reads VmRSS and VmHWM of a process.
pub fn read_memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|line| line.starts_with(name))
            .with_context(|| format!("{path} has no {name} line"))?;
        let kibibytes: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("invalid {name} line in {path}: {line:?}"))?;
        Ok(kibibytes * 1024)
    };
    Ok(Memory { resident: field("VmRSS:")?, peak_resident: field("VmHWM:")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_of_this_process_is_read() {
        let memory = read_memory(std::process::id()).unwrap();
        assert!(memory.resident > 0);
        assert!(memory.peak_resident >= memory.resident);
    }
}
