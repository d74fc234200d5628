//! Running one build step: a command whose stdout and stderr both go to the
//! build log, in the order written. The step and every process it started
//! are killed if it runs past the timeout or its build is cancelled.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Runs `command` in `dir` and appends its output to the file at
/// `log_path`. Returns an error message for the log if it fails to start,
/// fails, or times out.
pub async fn run_step(command: &[String], dir: &Path, log_path: &Path, timeout: Duration) -> Result<(), String> {
    let (program, args) = command.split_first().ok_or("empty build step in the template")?;
    let open_log = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(|error| format!("opening build log {}: {error}", log_path.display()))
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(open_log()?))
        .stderr(Stdio::from(open_log()?))
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .map_err(|error| format!("starting {program:?} failed: {error}; is it installed on the server?"))?;
    let mut group = ProcessGroup(child.id().map(|pid| pid as i32));
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    if waited.is_ok() {
        // Reaped: the group id may be reused, so it is not signalled.
        group.0 = None;
    }
    match waited {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("{program} failed: {status}")),
        Ok(Err(error)) => Err(format!("waiting for {program} failed: {error}")),
        Err(_) => {
            drop(group);
            let _ = child.kill().await;
            Err(format!("{program} did not finish within the build step timeout of {} s", timeout.as_secs()))
        }
    }
}

/// The process group of a running step, killed when dropped: on timeout,
/// and when the build's future is dropped because its request was cancelled.
struct ProcessGroup(Option<i32>);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill has no memory-safety preconditions. The step runs
            // in its own process group (process_group(0)) whose id is its
            // pid, and the step has not been reaped, so the id is still its.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}
