//! Memory, PID and CPU limits for instances through cgroups, on the unified
//! hierarchy (cgroup v2) or on the legacy per-controller hierarchies (v1).
//!
//! The server creates one group `kubefaas-{server pid}` below its own
//! cgroup (or below `cgroup_parent`), and one child group per instance in
//! it. An instance joins its group before it execs bubblewrap, so every
//! process it starts is counted. Groups are removed when their instance
//! stops and when the server stops. Groups left by a server that died are
//! removed by the next server that starts with the same parent.
//!
//! Every path is taken from the `root` given to [`Cgroups::setup`]
//! (normally `/sys/fs/cgroup`), so unit tests run against a temporary dir.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ResourceLimits;

/// The v1 controllers an instance needs, each mounted at `{root}/{name}`.
const V1_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
/// The v2 controllers an instance needs.
const V2_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
/// The prefix of the server's group; the server's pid follows it.
const GROUP_PREFIX: &str = "kubefaas-";
/// How long removing a group waits for its processes to exit.
const REMOVE_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl std::fmt::Display for CgroupVersion {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroup hierarchy under {root}: {reason}")]
    Unavailable { root: PathBuf, reason: String },
    #[error("{operation} {path} failed: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup {path} still has processes after {seconds} s")]
    Busy { path: PathBuf, seconds: u64 },
}

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { operation, path, source }
}

/// The server's cgroups: one group folder for v2, one per controller for v1.
#[derive(Debug)]
pub struct Cgroups {
    version: CgroupVersion,
    server_groups: Vec<PathBuf>,
}

/// The location and name of the server's group.
#[derive(Debug, Clone)]
pub struct CgroupPlacement<'a> {
    /// The folder the hierarchies are mounted in, normally `/sys/fs/cgroup`.
    pub root: &'a Path,
    /// The text of `/proc/self/cgroup`, which names the server's own cgroups.
    pub self_cgroup: &'a str,
    /// A cgroup path to create groups under instead of the server's own
    /// cgroup, such as `/kubefaas.slice`.
    pub parent: Option<&'a str>,
    /// The server's pid, which names its group.
    pub server_pid: u32,
}

impl Cgroups {
    /// Finds a usable hierarchy, v2 first, and creates the server's group.
    /// Groups left by servers that are no longer running are removed first.
    pub fn setup(placement: &CgroupPlacement) -> Result<Cgroups, CgroupError> {
        let root = placement.root;
        let group_name = format!("{GROUP_PREFIX}{}", placement.server_pid);
        let v2_controllers = root.join("cgroup.controllers");
        let version = if v2_controllers.is_file() {
            let available = read_to_string(&v2_controllers)?;
            let missing: Vec<&str> =
                V2_CONTROLLERS.iter().copied().filter(|name| !available.split_whitespace().any(|found| found == *name)).collect();
            if !missing.is_empty() {
                return Err(unavailable(root, format!("cgroup v2 is mounted but lacks the {} controller(s)", missing.join(", "))));
            }
            CgroupVersion::V2
        } else {
            let missing: Vec<&str> =
                V1_CONTROLLERS.iter().copied().filter(|name| !root.join(name).join("cgroup.procs").is_file()).collect();
            if !missing.is_empty() {
                return Err(unavailable(
                    root,
                    format!(
                        "neither cgroup v2 ({} is missing) nor the cgroup v1 controller(s) {} are mounted",
                        v2_controllers.display(),
                        missing.join(", ")
                    ),
                ));
            }
            CgroupVersion::V1
        };

        let parents: Vec<PathBuf> = match version {
            CgroupVersion::V2 => {
                let own = own_cgroup(placement.self_cgroup, None).ok_or_else(|| {
                    unavailable(root, "/proc/self/cgroup has no cgroup v2 entry (a line starting with 0::)".into())
                })?;
                vec![join_cgroup(root, placement.parent.unwrap_or(&own))]
            }
            CgroupVersion::V1 => V1_CONTROLLERS
                .iter()
                .map(|controller| {
                    let own = own_cgroup(placement.self_cgroup, Some(controller)).ok_or_else(|| {
                        unavailable(root, format!("/proc/self/cgroup has no entry for the {controller} controller"))
                    })?;
                    Ok(join_cgroup(&root.join(controller), placement.parent.unwrap_or(&own)))
                })
                .collect::<Result<_, CgroupError>>()?,
        };

        for parent in &parents {
            remove_stale_groups(parent);
            // A group with this server's name was left by an earlier
            // process that had the same pid.
            remove_group_tree(&parent.join(&group_name));
        }
        if version == CgroupVersion::V2 {
            enable_controllers(&parents[0])?;
        }
        let mut server_groups = Vec::new();
        for parent in &parents {
            let group = parent.join(&group_name);
            if let Err(error) = std::fs::create_dir(&group).map_err(io_error("creating cgroup", &group)) {
                remove_dirs(&server_groups);
                return Err(error);
            }
            server_groups.push(group);
        }
        if version == CgroupVersion::V2
            && let Err(error) = enable_controllers(&server_groups[0])
        {
            remove_dirs(&server_groups);
            return Err(error);
        }
        Ok(Cgroups { version, server_groups })
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// Returns the server's group folders: one for v2, one per controller for v1.
    pub fn server_groups(&self) -> &[PathBuf] {
        &self.server_groups
    }

    /// Creates an instance's group with its limits written. On an error no
    /// folder is left behind.
    pub fn create_instance(&self, name: &str, limits: &ResourceLimits) -> Result<InstanceCgroup, CgroupError> {
        let mut dirs = Vec::new();
        for server_group in &self.server_groups {
            let dir = server_group.join(name);
            if let Err(error) = std::fs::create_dir(&dir).map_err(io_error("creating cgroup", &dir)) {
                remove_dirs(&dirs);
                return Err(error);
            }
            dirs.push(dir);
        }
        let group = InstanceCgroup { version: self.version, dirs };
        if let Err(error) = group.write_limits(limits) {
            remove_dirs(&group.dirs);
            return Err(error);
        }
        Ok(group)
    }

    /// Removes the server's group once every instance group in it is gone.
    pub async fn remove(&self) -> Result<(), CgroupError> {
        for server_group in &self.server_groups {
            let entries = std::fs::read_dir(server_group).map_err(io_error("reading cgroup", server_group))?;
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                    remove_when_empty(&entry.path()).await?;
                }
            }
            remove_when_empty(server_group).await?;
        }
        Ok(())
    }
}

/// One instance's group.
#[derive(Debug)]
pub struct InstanceCgroup {
    version: CgroupVersion,
    /// One folder for v2; memory, pids and cpu folders for v1.
    dirs: Vec<PathBuf>,
}

impl InstanceCgroup {
    #[cfg(test)]
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Returns the `cgroup.procs` files a process writes `0` to in order to join
    /// this group, as C strings so a forked child can use them before exec.
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .map(|dir| {
                CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
                    .expect("cgroup paths are built from names without NUL bytes")
            })
            .collect()
    }

    fn memory_dir(&self) -> &Path {
        &self.dirs[0]
    }

    fn write_limits(&self, limits: &ResourceLimits) -> Result<(), CgroupError> {
        match self.version {
            CgroupVersion::V2 => {
                let dir = &self.dirs[0];
                write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                // Without these the instance could swap instead of being
                // stopped, and the OOM killer could stop one process of an
                // instance while leaving the rest running.
                write_if_present(&dir.join("memory.swap.max"), "0")?;
                write_if_present(&dir.join("memory.oom.group"), "1")?;
                write(&dir.join("pids.max"), &limits.pids.to_string())?;
                write(&dir.join("cpu.weight"), &limits.cpu_weight.to_string())?;
            }
            CgroupVersion::V1 => {
                let (memory, pids, cpu) = (&self.dirs[0], &self.dirs[1], &self.dirs[2]);
                write(&memory.join("memory.limit_in_bytes"), &limits.memory_bytes.to_string())?;
                // Present only when swap accounting is on; the sum of memory
                // and swap gets the same limit, so the instance cannot swap.
                write_if_present(&memory.join("memory.memsw.limit_in_bytes"), &limits.memory_bytes.to_string())?;
                write(&pids.join("pids.max"), &limits.pids.to_string())?;
                write(&cpu.join("cpu.shares"), &cpu_shares(limits.cpu_weight).to_string())?;
            }
        }
        Ok(())
    }

    /// Returns the number of processes the kernel's OOM killer stopped in this group
    /// because it reached its memory limit.
    pub fn oom_kills(&self) -> u64 {
        let dir = self.memory_dir();
        let (file, key) = match self.version {
            CgroupVersion::V2 => (dir.join("memory.events"), "oom_kill"),
            CgroupVersion::V1 => (dir.join("memory.oom_control"), "oom_kill"),
        };
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let kills = text
            .lines()
            .filter_map(|line| line.split_once(' '))
            .find(|(name, _)| *name == key)
            .and_then(|(_, value)| value.trim().parse().ok());
        match kills {
            Some(kills) => kills,
            // Kernels before 4.13 have no oom_kill counter in v1; a failed
            // charge is the closest sign that the limit was reached.
            None if self.version == CgroupVersion::V1 => {
                std::fs::read_to_string(dir.join("memory.failcnt")).ok().and_then(|text| text.trim().parse().ok()).unwrap_or(0)
            }
            None => 0,
        }
    }

    /// Removes the group's folders, waiting for its processes to exit.
    pub async fn remove(&self) -> Result<(), CgroupError> {
        if self.version == CgroupVersion::V2 {
            // cgroup.kill (Linux 5.14+) stops every process in the group at
            // once, without the pid reuse race of signalling each pid.
            let kill = self.dirs[0].join("cgroup.kill");
            if kill.is_file() {
                let _ = std::fs::write(&kill, "1");
            }
        }
        for dir in &self.dirs {
            remove_when_empty(dir).await?;
        }
        Ok(())
    }
}

/// Maps a v2 CPU weight (1 to 10000, default 100) to v1 shares (default 1024).
pub fn cpu_shares(weight: u64) -> u64 {
    (weight * 1024 / 100).max(2)
}

/// Finds the server's cgroup path in the text of `/proc/self/cgroup`: the
/// v2 line (`0::/path`) when `controller` is None, else the v1 line whose
/// controller list contains `controller`.
fn own_cgroup(self_cgroup: &str, controller: Option<&str>) -> Option<String> {
    self_cgroup.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let matches = match controller {
            None => id == "0" && controllers.is_empty(),
            Some(wanted) => controllers.split(',').any(|name| name == wanted),
        };
        matches.then(|| path.to_string())
    })
}

/// Joins a cgroup path such as `/a/b` below a hierarchy's mount folder.
fn join_cgroup(mount: &Path, cgroup: &str) -> PathBuf {
    let relative = cgroup.trim_start_matches('/');
    if relative.is_empty() { mount.to_path_buf() } else { mount.join(relative) }
}

/// Enables the needed controllers for the children of a v2 group.
fn enable_controllers(group: &Path) -> Result<(), CgroupError> {
    let control = group.join("cgroup.subtree_control");
    let enabled = match std::fs::read_to_string(&control) {
        Ok(text) => text,
        // The kernel creates the file with every group; a missing file is
        // read as no controller enabled, and writing it enables them.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(CgroupError::Io { operation: "reading", path: control, source }),
    };
    let missing: Vec<String> = V2_CONTROLLERS
        .iter()
        .filter(|name| !enabled.split_whitespace().any(|found| found == **name))
        .map(|name| format!("+{name}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::write(&control, missing.join(" ")).map_err(|source| CgroupError::Unavailable {
        root: group.to_path_buf(),
        reason: format!(
            "enabling {} in {} failed ({source}); a cgroup v2 group that has processes of its own cannot pass controllers on, so set cgroup_parent to a delegated group without processes",
            missing.join(" "),
            control.display()
        ),
    })
}

/// Removes the groups of servers that are no longer running below `parent`.
fn remove_stale_groups(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|name| name.strip_prefix(GROUP_PREFIX)).and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        remove_group_tree(&entry.path());
    }
}

/// Removes a server group left by a stopped server and the instance groups
/// in it. A group that still has processes is left as it is, with a warning.
fn remove_group_tree(group: &Path) {
    if !group.is_dir() {
        return;
    }
    let children: Vec<PathBuf> = std::fs::read_dir(group)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|child| child.file_type().is_ok_and(|kind| kind.is_dir()))
        .map(|child| child.path())
        .collect();
    for dir in children.iter().map(PathBuf::as_path).chain(std::iter::once(group)) {
        match std::fs::remove_dir(dir) {
            Ok(()) => tracing::info!(cgroup = %dir.display(), "removed a cgroup left by a stopped server"),
            Err(error) => tracing::warn!(cgroup = %dir.display(), %error, "cannot remove a cgroup left by a stopped server"),
        }
    }
}

/// Removes a cgroup folder once no process is left in it, waiting up to
/// [`REMOVE_WAIT`].
async fn remove_when_empty(dir: &Path) -> Result<(), CgroupError> {
    let deadline = tokio::time::Instant::now() + REMOVE_WAIT;
    let mut pause = Duration::from_millis(5);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            // EBUSY: processes are still exiting.
            Err(error) if error.raw_os_error() == Some(libc::EBUSY) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Err(error) if error.raw_os_error() == Some(libc::EBUSY) => {
                return Err(CgroupError::Busy { path: dir.to_path_buf(), seconds: REMOVE_WAIT.as_secs() });
            }
            Err(source) => return Err(CgroupError::Io { operation: "removing cgroup", path: dir.to_path_buf(), source }),
        }
    }
}

fn remove_dirs(dirs: &[PathBuf]) {
    for dir in dirs {
        let _ = std::fs::remove_dir(dir);
    }
}

fn read_to_string(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(io_error("reading", path))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io_error("writing", path))
}

fn write_if_present(path: &Path, value: &str) -> Result<(), CgroupError> {
    if path.exists() { write(path, value) } else { Ok(()) }
}

fn unavailable(root: &Path, reason: String) -> CgroupError {
    CgroupError::Unavailable { root: root.to_path_buf(), reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ResourceLimits = ResourceLimits { memory_bytes: 256 * 1024 * 1024, pids: 64, cpu_weight: 50 };

    /// Lays out a fake v1 hierarchy: one folder per controller, the server
    /// in `/svc` for memory and in the root for the others.
    fn fake_v1(root: &Path) -> &'static str {
        for controller in V1_CONTROLLERS {
            let dir = root.join(controller);
            std::fs::create_dir_all(dir.join("svc")).unwrap();
            std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        }
        "4:memory:/svc\n8:pids:/\n1:cpu,cpuacct:/\n0::/\n"
    }

    fn placement<'a>(root: &'a Path, self_cgroup: &'a str) -> CgroupPlacement<'a> {
        CgroupPlacement { root, self_cgroup, parent: None, server_pid: 4242 }
    }

    #[test]
    fn v1_groups_nest_below_own_cgroup() {
        let temp = tempfile::tempdir().unwrap();
        let self_cgroup = fake_v1(temp.path());
        let cgroups = Cgroups::setup(&placement(temp.path(), self_cgroup)).unwrap();
        assert_eq!(cgroups.version(), CgroupVersion::V1);
        assert_eq!(
            cgroups.server_groups(),
            [
                temp.path().join("memory/svc/kubefaas-4242"),
                temp.path().join("pids/kubefaas-4242"),
                temp.path().join("cpu/kubefaas-4242"),
            ]
        );

        let group = cgroups.create_instance("instance-1", &LIMITS).unwrap();
        let read = |path: &str| std::fs::read_to_string(temp.path().join(path)).unwrap();
        assert_eq!(read("memory/svc/kubefaas-4242/instance-1/memory.limit_in_bytes"), "268435456");
        assert_eq!(read("pids/kubefaas-4242/instance-1/pids.max"), "64");
        assert_eq!(read("cpu/kubefaas-4242/instance-1/cpu.shares"), "512");
        assert_eq!(
            group.procs_files()[1].to_str().unwrap(),
            temp.path().join("pids/kubefaas-4242/instance-1/cgroup.procs").to_str().unwrap()
        );
    }

    #[test]
    fn v2_writes_limits_and_enables_controllers() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path();
        std::fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        std::fs::create_dir_all(root.join("work.slice")).unwrap();
        std::fs::write(root.join("work.slice/cgroup.subtree_control"), "memory\n").unwrap();

        let cgroups = Cgroups::setup(&placement(root, "0::/work.slice\n")).unwrap();
        let server = root.join("work.slice/kubefaas-4242");
        assert_eq!(cgroups.version(), CgroupVersion::V2);
        assert_eq!(cgroups.server_groups(), [server.clone()]);
        assert_eq!(std::fs::read_to_string(root.join("work.slice/cgroup.subtree_control")).unwrap(), "+pids +cpu");
        assert_eq!(std::fs::read_to_string(server.join("cgroup.subtree_control")).unwrap(), "+memory +pids +cpu");

        let group = cgroups.create_instance("instance-7", &LIMITS).unwrap();
        let read = |name: &str| std::fs::read_to_string(server.join("instance-7").join(name)).unwrap();
        assert_eq!(read("memory.max"), "268435456");
        assert_eq!(read("pids.max"), "64");
        assert_eq!(read("cpu.weight"), "50");
        assert_eq!(group.dirs(), [server.join("instance-7")]);
    }

    #[test]
    fn cgroup_parent_replaces_own_cgroup() {
        let temp = tempfile::tempdir().unwrap();
        let self_cgroup = fake_v1(temp.path());
        std::fs::create_dir_all(temp.path().join("pids/scripts")).unwrap();
        std::fs::create_dir_all(temp.path().join("memory/scripts")).unwrap();
        std::fs::create_dir_all(temp.path().join("cpu/scripts")).unwrap();
        let mut placement = placement(temp.path(), self_cgroup);
        placement.parent = Some("/scripts");
        let cgroups = Cgroups::setup(&placement).unwrap();
        assert_eq!(cgroups.server_groups()[0], temp.path().join("memory/scripts/kubefaas-4242"));
        assert_eq!(cgroups.server_groups()[1], temp.path().join("pids/scripts/kubefaas-4242"));
    }

    #[test]
    fn missing_hierarchy_is_unavailable() {
        let temp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(temp.path().join("memory")).unwrap();
        std::fs::write(temp.path().join("memory/cgroup.procs"), "").unwrap();
        let error = Cgroups::setup(&placement(temp.path(), "4:memory:/\n")).unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with(&format!("no usable cgroup hierarchy under {}", temp.path().display())), "{message}");
        assert!(message.ends_with("the cgroup v1 controller(s) pids, cpu are mounted"), "{message}");

        std::fs::write(temp.path().join("cgroup.controllers"), "memory cpu\n").unwrap();
        let message = Cgroups::setup(&placement(temp.path(), "0::/\n")).unwrap_err().to_string();
        assert!(message.ends_with("cgroup v2 is mounted but lacks the pids controller(s)"), "{message}");
    }

    #[test]
    fn stale_groups_of_stopped_servers_are_removed() {
        let temp = tempfile::tempdir().unwrap();
        let self_cgroup = fake_v1(temp.path());
        // No process has pid 0x7fffffff: the kernel's pid_max is at most 2^22.
        let stale = temp.path().join("pids/kubefaas-2147483647");
        std::fs::create_dir_all(stale.join("instance-3")).unwrap();
        let running = temp.path().join(format!("pids/kubefaas-{}", std::process::id()));
        std::fs::create_dir_all(&running).unwrap();
        // An earlier process with this server's pid left its group.
        let same_pid = temp.path().join("cpu/kubefaas-4242");
        std::fs::create_dir_all(same_pid.join("instance-9")).unwrap();
        Cgroups::setup(&placement(temp.path(), self_cgroup)).unwrap();
        assert!(!stale.exists(), "the group of a stopped server is removed");
        assert!(running.exists(), "the group of a running server is kept");
        assert!(same_pid.is_dir(), "the server's group is created anew");
        assert!(!same_pid.join("instance-9").exists(), "the earlier process's instance group is removed");
    }

    #[test]
    fn cpu_weight_maps_to_shares() {
        assert_eq!(cpu_shares(100), 1024);
        assert_eq!(cpu_shares(1), 10);
        assert_eq!(cpu_shares(10000), 102400);
    }

    #[test]
    fn own_cgroup_reads_proc_self_cgroup() {
        let text = "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu,cpuacct:/x\n0::/user.slice\n";
        assert_eq!(own_cgroup(text, Some("memory")).as_deref(), Some("/process_api/abc"));
        assert_eq!(own_cgroup(text, Some("cpu")).as_deref(), Some("/x"));
        assert_eq!(own_cgroup(text, None).as_deref(), Some("/user.slice"));
        assert_eq!(own_cgroup(text, Some("pids")), None);
    }
}
