//! The instance sandbox, built with bubblewrap (`bwrap`).
//!
//! Each instance gets its own mount, PID, IPC, UTS and cgroup namespaces,
//! and a user namespace where the kernel allows one, in which it runs as
//! uid and gid 65534 with no capabilities. Its file system is a new tmpfs
//! root. Read-only, it contains the system folders (`/usr` and the `/bin`,
//! `/lib` links), a few files of `/etc`, the interpreter's folders, the
//! script's code at [`CODE_DIR`] and the template at [`TEMPLATE_DIR`].
//! It also contains a fresh `/proc` and `/dev` and a private tmpfs `/tmp`.
//! With `network` off it gets its own network namespace, which has only a
//! loopback interface.
//!
//! bwrap passes inherited file descriptors through, so the socket pair at
//! fd 3 reaches the instance unchanged.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The path of the script's code inside the sandbox.
pub const CODE_DIR: &str = "/kubefaas/code";
/// The path of the template folder, with the shim, inside the sandbox.
pub const TEMPLATE_DIR: &str = "/kubefaas/template";
/// The path of the script's dependency layer inside the sandbox.
pub const DEPENDENCIES_DIR: &str = "/kubefaas/dependencies";
/// The uid and gid an instance runs as inside its user namespace ("nobody").
const SANDBOX_ID: &str = "65534";
/// The host name inside the sandbox.
const HOSTNAME: &str = "kubefaas";

/// Top-level folders that hold programs and libraries. Each is bound
/// read-only if it is a folder, or recreated if it is a link (`/bin` is a
/// link to `usr/bin` on merged-/usr systems).
const SYSTEM_PATHS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/// Files and folders of `/etc` that programs need to load libraries,
/// resolve host names, check TLS certificates and tell the time. Nothing
/// else of `/etc` is visible: no `/etc/shadow`, no `/etc/passwd`.
const ETC_PATHS: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/localtime",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/mime.types",
];

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("bubblewrap (bwrap) was not found on PATH; kubefaas runs every instance in a bwrap sandbox, so install it (Debian: apt-get install bubblewrap)")]
    NotFound,
    #[error("bubblewrap at {bwrap} cannot create a sandbox on this host: {output}")]
    Unusable { bwrap: PathBuf, output: String },
    #[error("starting {bwrap} failed: {source}")]
    Start {
        bwrap: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The folders and network access of one instance's sandbox.
#[derive(Debug, Clone)]
pub struct SandboxMounts<'a> {
    /// The built script's files, shown read-only at [`CODE_DIR`].
    pub code_dir: &'a Path,
    /// The dependency layer, shown read-only at [`DEPENDENCIES_DIR`].
    pub dependencies_dir: &'a Path,
    /// The template folder, shown read-only at [`TEMPLATE_DIR`].
    pub template_dir: &'a Path,
    /// Folders the interpreter reads, shown read-only at the same paths.
    pub interpreter_paths: &'a [PathBuf],
    /// Whether the instance shares the host's network (egress allowed).
    pub network: bool,
    /// The size limit of the private `/tmp`, in bytes.
    pub tmp_bytes: u64,
}

/// The bwrap program and what this host's kernel lets it do.
#[derive(Debug, Clone)]
pub struct Sandbox {
    bwrap: PathBuf,
    user_namespace: bool,
}

impl Sandbox {
    /// Finds bwrap (on PATH unless `bwrap` is given) and checks that it can
    /// start a sandbox, with a user namespace if the kernel allows one.
    pub fn detect(bwrap: Option<&Path>) -> Result<Sandbox, SandboxError> {
        let bwrap = match bwrap {
            Some(path) => path.to_path_buf(),
            None => find_on_path("bwrap").ok_or(SandboxError::NotFound)?,
        };
        let with_user_namespace = Sandbox { bwrap: bwrap.clone(), user_namespace: true };
        let first_failure = match with_user_namespace.probe() {
            Ok(()) => return Ok(with_user_namespace),
            Err(error) => error,
        };
        let without = Sandbox { bwrap, user_namespace: false };
        match without.probe() {
            Ok(()) => {
                tracing::warn!(
                    error = %first_failure,
                    "user namespaces are not available to bwrap; instances run without one, as the server's user without capabilities"
                );
                Ok(without)
            }
            Err(_) => Err(first_failure),
        }
    }

    pub fn bwrap(&self) -> &Path {
        &self.bwrap
    }

    pub fn user_namespace(&self) -> bool {
        self.user_namespace
    }

    /// Runs `true` in a sandbox with the same namespaces an instance gets.
    fn probe(&self) -> Result<(), SandboxError> {
        let mut arguments = self.namespace_arguments(true);
        arguments.extend(system_arguments());
        arguments.push("--".into());
        arguments.push("true".into());
        let output = Command::new(&self.bwrap)
            .args(&arguments)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .output()
            .map_err(|source| SandboxError::Start { bwrap: self.bwrap.clone(), source })?;
        if output.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
            Err(SandboxError::Unusable {
                bwrap: self.bwrap.clone(),
                output: if stderr.is_empty() { output.status.to_string() } else { stderr },
            })
        }
    }

    /// Returns the bwrap arguments for one instance, ending with `--`: the
    /// interpreter and its arguments follow.
    pub fn arguments(&self, mounts: &SandboxMounts) -> Vec<OsString> {
        let mut arguments = self.namespace_arguments(mounts.network);
        arguments.extend(system_arguments());
        let mut push = |items: &[&dyn AsRef<std::ffi::OsStr>]| {
            arguments.extend(items.iter().map(|item| item.as_ref().to_os_string()));
        };
        push(&[&"--proc", &"/proc", &"--dev", &"/dev"]);
        push(&[&"--size", &mounts.tmp_bytes.to_string(), &"--tmpfs", &"/tmp"]);
        for path in mounts.interpreter_paths {
            if !is_system_path(path) {
                push(&[&"--ro-bind", path, path]);
            }
        }
        push(&[&"--ro-bind", &mounts.code_dir, &CODE_DIR]);
        push(&[&"--ro-bind", &mounts.dependencies_dir, &DEPENDENCIES_DIR]);
        push(&[&"--ro-bind", &mounts.template_dir, &TEMPLATE_DIR]);
        push(&[&"--chdir", &CODE_DIR, &"--"]);
        arguments
    }

    fn namespace_arguments(&self, network: bool) -> Vec<OsString> {
        let mut arguments: Vec<&str> = vec![
            // bwrap's own process is the parent of the sandbox: if it dies,
            // everything in the sandbox is killed.
            "--die-with-parent",
            // A new session, so the script cannot inject input into a
            // terminal the server may have (TIOCSTI).
            "--new-session",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--hostname",
            HOSTNAME,
            "--cap-drop",
            "ALL",
        ];
        if self.user_namespace {
            arguments.extend(["--unshare-user", "--uid", SANDBOX_ID, "--gid", SANDBOX_ID, "--disable-userns"]);
        }
        if !network {
            arguments.push("--unshare-net");
        }
        arguments.into_iter().map(OsString::from).collect()
    }
}

/// Binds the system folders read-only (or recreates their links) and the
/// `/etc` entries that exist on this host.
fn system_arguments() -> Vec<OsString> {
    let mut arguments: Vec<OsString> = Vec::new();
    for path in SYSTEM_PATHS.iter().chain(ETC_PATHS) {
        let Ok(metadata) = std::fs::symlink_metadata(path) else { continue };
        if metadata.file_type().is_symlink() && SYSTEM_PATHS.contains(path) {
            if let Ok(target) = std::fs::read_link(path) {
                arguments.extend(["--symlink".into(), target.into_os_string(), OsString::from(path)]);
            }
        } else {
            // A link in /etc (resolv.conf often is one) is followed, so the
            // file it points to is bound without its folder.
            arguments.extend(["--ro-bind".into(), OsString::from(path), OsString::from(path)]);
        }
    }
    arguments
}

/// True for paths inside the system folders, which every sandbox binds.
fn is_system_path(path: &Path) -> bool {
    SYSTEM_PATHS.iter().any(|system| path.starts_with(system))
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(arguments: &[OsString], window: &[&str]) -> Option<usize> {
        arguments.windows(window.len()).position(|found| found.iter().zip(window).all(|(a, b)| a == b))
    }

    #[test]
    fn arguments_bind_code_read_only() {
        let sandbox = Sandbox { bwrap: "/usr/bin/bwrap".into(), user_namespace: true };
        let interpreter_paths = [PathBuf::from("/opt/python3.11"), PathBuf::from("/usr/lib/python3")];
        let mut mounts = SandboxMounts {
            code_dir: Path::new("/data/artifacts/k/code"),
            dependencies_dir: Path::new("/data/layers/dependencies/d"),
            template_dir: Path::new("/data/templates/python-1"),
            interpreter_paths: &interpreter_paths,
            network: true,
            tmp_bytes: 1024,
        };
        let arguments = sandbox.arguments(&mounts);
        assert!(position(&arguments, &["--ro-bind", "/data/artifacts/k/code", CODE_DIR]).is_some());
        assert!(position(&arguments, &["--ro-bind", "/data/layers/dependencies/d", DEPENDENCIES_DIR]).is_some());
        assert!(position(&arguments, &["--ro-bind", "/data/templates/python-1", TEMPLATE_DIR]).is_some());
        assert!(position(&arguments, &["--ro-bind", "/opt/python3.11", "/opt/python3.11"]).is_some());
        assert!(position(&arguments, &["--ro-bind", "/usr/lib/python3", "/usr/lib/python3"]).is_none(), "/usr covers it");
        assert!(position(&arguments, &["--size", "1024", "--tmpfs", "/tmp"]).is_some());
        assert!(position(&arguments, &["--unshare-user", "--uid", "65534", "--gid", "65534"]).is_some());
        assert!(position(&arguments, &["--unshare-net"]).is_none(), "network is on by default");
        assert_eq!(arguments.last().unwrap(), "--");
        assert!(position(&arguments, &["--ro-bind", "/etc/shadow", "/etc/shadow"]).is_none());

        mounts.network = false;
        assert!(position(&sandbox.arguments(&mounts), &["--unshare-net"]).is_some());
    }
}
