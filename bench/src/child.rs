//! Child processes that cannot outlive the harness.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes the child receive SIGKILL when the harness thread that starts it
/// exits, so a harness that is killed leaves no server or shim running.
/// The harness runs on one thread (a current-thread runtime), so that
/// thread lives as long as the harness. nginx's worker processes are
/// children of its master and are not covered.
pub fn kill_with_harness(command: &mut Command) -> &mut Command {
    // SAFETY: the closure runs in the forked child before exec and calls
    // only prctl, which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}
