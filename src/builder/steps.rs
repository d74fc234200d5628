//! Running one build step: a command whose stdout and stderr both go to the
//! build log, in the order written, killed if it runs past the timeout.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Runs `command` in `dir` and appends its output to the file at `log_path`. Returns an
/// error message for the log if it fails to start, fails, or times out.
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
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("{program} failed: {status}")),
        Ok(Err(error)) => Err(format!("waiting for {program} failed: {error}")),
        Err(_) => {
            if let Some(pid) = child.id() {
                // SAFETY: kill has no memory-safety preconditions; the step
                // runs in its own process group (process_group(0) above).
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGKILL);
                }
            }
            let _ = child.kill().await;
            Err(format!("{program} did not finish within the build step timeout of {} s", timeout.as_secs()))
        }
    }
}
