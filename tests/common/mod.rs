//! Test fixtures: a real `kubefaas serve` process on a free port with a
//! temporary data dir, driven through the CLI and the HTTP API.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BINARY: &str = env!("CARGO_BIN_EXE_kubefaas");

pub struct Server {
    pub url: String,
    pub data_dir: PathBuf,
    /// The server's cgroup folders (`kubefaas-{pid}`), which must be gone
    /// once it stops.
    pub cgroup_groups: Vec<PathBuf>,
    child: Option<Child>,
    _temp: Option<tempfile::TempDir>,
}

pub struct ServerBuilder {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    data_dir: Option<PathBuf>,
    config: Option<String>,
    stderr: Option<PathBuf>,
    /// `--prewarm`: 0 unless a test sets it, so that tests counting processes
    /// and cgroups see only the instances of their scripts.
    prewarm: Option<usize>,
}

impl ServerBuilder {
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// Settings written to a TOML file passed with --config.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }

    /// Writes the server's stderr to `path` instead of the test's stderr.
    /// Sets `--prewarm`; None leaves it to the config file and the default.
    pub fn prewarm(mut self, count: Option<usize>) -> Self {
        self.prewarm = count;
        self
    }

    pub fn stderr_file(mut self, path: &Path) -> Self {
        self.stderr = Some(path.to_path_buf());
        self
    }

    pub fn start(self) -> Server {
        let temp = tempfile::tempdir().expect("creating a temporary data dir");
        let data_dir = self.data_dir.clone().unwrap_or_else(|| temp.path().join("data"));
        let mut command = Command::new(BINARY);
        command.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(&data_dir).args(&self.args);
        if let Some(count) = self.prewarm {
            command.arg("--prewarm").arg(count.to_string());
        }
        if let Some(config) = &self.config {
            let path = temp.path().join("config.toml");
            std::fs::write(&path, config).expect("writing the config file");
            command.arg("--config").arg(path);
        }
        let stderr = match &self.stderr {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("creating the server's stderr file")),
            None => Stdio::inherit(),
        };
        let mut child = command
            .env("RUST_LOG", "info")
            .envs(self.envs.iter().map(|(key, value)| (key, value)))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("starting kubefaas serve");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("reading the server's first line");
        let url = line
            .trim()
            .strip_prefix("kubefaas listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from the server: {line:?}"))
            .to_string();
        let cgroup_groups = server_cgroup_groups(child.id());
        Server { url, data_dir, cgroup_groups, child: Some(child), _temp: Some(temp) }
    }
}

impl Server {
    pub fn builder() -> ServerBuilder {
        ServerBuilder { args: Vec::new(), envs: Vec::new(), data_dir: None, config: None, stderr: None, prewarm: Some(0) }
    }

    pub fn start() -> Server {
        Server::builder().start()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    /// Stops the server with SIGTERM, as an operator would, and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().expect("waiting for the server").is_some() {
                    self.assert_cgroups_removed();
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server did not stop within 10 s of SIGTERM");
        }
    }

    /// Checks that the stopped server left no cgroup behind: its group, and
    /// so every instance group in it, is removed.
    pub fn assert_cgroups_removed(&self) {
        for group in &self.cgroup_groups {
            assert!(!group.exists(), "the stopped server left its cgroup {} behind", group.display());
        }
    }

    /// Returns the cgroup folders of the server's running instances, one per
    /// instance for cgroup v2 and one per instance and controller for v1.
    pub fn instance_cgroups(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        for group in &self.cgroup_groups {
            for entry in std::fs::read_dir(group).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().starts_with("instance-") {
                    dirs.push(entry.path());
                }
            }
        }
        dirs.sort();
        dirs
    }

    /// Reads a control file, such as `pids.max`, of the one running
    /// instance's cgroup.
    pub fn instance_cgroup_file(&self, file: &str) -> String {
        let found: Vec<PathBuf> =
            self.instance_cgroups().into_iter().map(|dir| dir.join(file)).filter(|path| path.exists()).collect();
        assert_eq!(found.len(), 1, "expected one running instance with {file}, found {found:?}");
        std::fs::read_to_string(&found[0]).expect("reading a cgroup file").trim().to_string()
    }

    /// Keeps the temporary data dir after the server stops, for a restart.
    pub fn keep_data_dir(&mut self) -> tempfile::TempDir {
        self._temp.take().expect("data dir already taken")
    }

    /// Runs a CLI command against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_in(args, None)
    }

    pub fn cli_in(&self, args: &[&str], dir: Option<&Path>) -> Output {
        let mut command = Command::new(BINARY);
        command.args(args).env("KUBEFAAS_URL", &self.url);
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        command.output().expect("running the kubefaas CLI")
    }

    /// Runs a CLI command and returns its stdout, failing the test with its
    /// stderr if it exits non-zero.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "kubefaas {args:?} failed with {}\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("CLI output is UTF-8")
    }

    pub fn http(&self) -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder().timeout(None).build().expect("building an HTTP client")
    }

    /// Sends a request and returns the status and the JSON body.
    pub fn request(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("valid method");
        let mut request = self.http().request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().expect("sending the request");
        let status = response.status().as_u16();
        let text = response.text().expect("reading the response");
        let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("response is not JSON: {text:?}"));
        (status, body)
    }

    pub fn invoke(&self, name: &str, body: Value) -> (u16, Value) {
        self.request("POST", &format!("/v1/scripts/{name}/invoke"), Some(body))
    }

    /// Uploads one file under `file_name` as script `name`.
    pub fn deploy_file(&self, name: &str, file_name: &str, contents: &str) -> (u16, Value) {
        let response = self
            .http()
            .put(format!("{}/v1/scripts/{name}?filename={file_name}", self.url))
            .body(contents.to_string())
            .send()
            .expect("sending the upload");
        let status = response.status().as_u16();
        (status, response.json().expect("upload response is JSON"))
    }

    /// Uploads an archive with the given Content-Type and extra headers.
    pub fn deploy_archive(&self, name: &str, content_type: &str, bytes: Vec<u8>, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut request =
            self.http().put(format!("{}/v1/scripts/{name}", self.url)).header("content-type", content_type).body(bytes);
        for (header, value) in headers {
            request = request.header(*header, *value);
        }
        let response = request.send().expect("sending the upload");
        let status = response.status().as_u16();
        (status, response.json().expect("upload response is JSON"))
    }

    /// Uploads a folder given as (path, contents) pairs, packed as tar.
    pub fn deploy_folder(&self, name: &str, files: &[(&str, &str)]) -> (u16, Value) {
        self.deploy_archive(name, "application/x-tar", tar_of(files), &[])
    }

    pub fn instances(&self, name: &str) -> u64 {
        let (status, body) = self.request("GET", &format!("/v1/scripts/{name}"), None);
        assert_eq!(status, 200, "show {name}: {body}");
        body["instances"].as_u64().expect("instances is a number")
    }

    /// Waits until `condition` holds, polling; panics after `limit`.
    pub fn wait_until(&self, limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !condition() {
            assert!(Instant::now() < deadline, "timed out after {limit:?} waiting until {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    if !std::thread::panicking() {
                        self.assert_cgroups_removed();
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Returns the cgroup folders a server with `pid` creates: `kubefaas-{pid}` below
/// its own cgroup, in the v2 hierarchy or in each v1 controller it uses.
pub fn server_cgroup_groups(pid: u32) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let path_for = |wanted: Option<&str>| {
        own.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let matches = match wanted {
                None => id == "0" && controllers.is_empty(),
                Some(wanted) => controllers.split(',').any(|name| name == wanted),
            };
            matches.then(|| path.trim_start_matches('/').to_string())
        })
    };
    let group = format!("kubefaas-{pid}");
    if root.join("cgroup.controllers").exists() {
        return path_for(None).map(|path| root.join(path).join(&group)).into_iter().collect();
    }
    ["memory", "pids", "cpu"]
        .iter()
        .filter_map(|controller| path_for(Some(controller)).map(|path| root.join(controller).join(path).join(&group)))
        .collect()
}

/// Returns the peak memory (VmHWM) of the process `pid`, in bytes.
pub fn peak_memory_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading the process status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in the process status");
    kib * 1024
}

/// Packs `files` (path, contents) into a tar archive.
pub fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut archive = tar::Builder::new(Vec::new());
    for (path, contents) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        archive.append_data(&mut header, path, contents.as_bytes()).expect("adding a file to the archive");
    }
    archive.into_inner().expect("finishing the archive")
}

/// Lists the processes whose parent is `pid`.
pub fn child_pids(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("reading /proc").flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        // The fields after the command name, which is in parentheses.
        let after_name = &stat[stat.rfind(')').map_or(0, |at| at + 2)..];
        let parent: u32 = after_name.split(' ').nth(1).and_then(|field| field.parse().ok()).unwrap_or(0);
        if parent == pid {
            children.push(child);
        }
    }
    children
}

pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// A real S3-compatible server (moto's, from PyPI) on a free loopback port,
/// with one empty bucket. `scripts/setup.sh --tests` installs it.
pub struct S3Server {
    pub endpoint: String,
    pub bucket: String,
    child: Child,
}

impl S3Server {
    pub fn start() -> S3Server {
        let program = std::env::var("KUBEFAAS_MOTO_SERVER").unwrap_or_else(|_| {
            let home = std::env::var("HOME").expect("HOME is set");
            format!("{home}/.cache/kubefaas/test-tools/moto/bin/moto_server")
        });
        assert!(
            Path::new(&program).is_file(),
            "the S3 test server {program} is missing: run scripts/setup.sh --tests (or set KUBEFAAS_MOTO_SERVER)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the S3 test server");
        let endpoint = format!("http://127.0.0.1:{port}");
        let server = S3Server { endpoint, bucket: "kubefaas-test".into(), child };
        let client = reqwest::blocking::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // moto accepts unsigned requests, so a plain PUT creates the bucket.
            match client.put(format!("{}/{}", server.endpoint, server.bucket)).send() {
                Ok(response) if response.status().is_success() => break,
                Ok(response) => panic!("creating the test bucket failed: {}", response.status()),
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                Err(error) => panic!("the S3 test server did not start: {error}"),
            }
        }
        server
    }

    /// Returns the server config that points kubefaas at this bucket.
    pub fn config(&self) -> String {
        format!(
            "[artifact_store]\nkind = \"s3\"\nbucket = \"{}\"\nendpoint = \"{}\"\n",
            self.bucket, self.endpoint
        )
    }

    /// Keys of all objects in the bucket.
    pub fn keys(&self) -> Vec<String> {
        let text = reqwest::blocking::get(format!("{}/{}?list-type=2", self.endpoint, self.bucket))
            .and_then(|response| response.text())
            .expect("listing the bucket");
        text.split("<Key>").skip(1).filter_map(|part| part.split("</Key>").next()).map(str::to_string).collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
