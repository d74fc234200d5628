//! End-to-end tests of isolation and limits: real misbehaving scripts run in
//! real bwrap sandboxes and cgroups by the real server, and every failure
//! reaches the caller as an error of the right kind.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Server, peak_memory_bytes};
use serde_json::{Value, json};

const MIB: u64 = 1024 * 1024;

/// Tries each path in `variables` and reports what happened, so the test can
/// assert on every probe separately.
const SNOOP_PY: &str = r#"
import json, os, socket

def attempt(action):
    try:
        return action()
    except OSError as error:
        return f"{type(error).__name__}: {error.strerror}"

def handle(data):
    probes = data['variables']
    report = {}
    for key in ('shadow', 'neighbour_code', 'neighbour_source', 'database'):
        report[key] = attempt(lambda: open(probes[key], 'rb').read() and 'read')
    report['data_dir'] = attempt(lambda: sorted(os.listdir(probes['data_dir'])))
    report['root'] = attempt(lambda: sorted(os.listdir('/root')))
    report['write_code'] = attempt(lambda: open('handler.py', 'a').write('#') and 'written')
    report['write_tmp'] = attempt(lambda: open('/tmp/' + probes['tmp_name'], 'w').write('note') and 'written')
    report['proc'] = sorted(int(name) for name in os.listdir('/proc') if name.isdigit())
    report['hostname'] = socket.gethostname()
    report['uid'] = os.getuid()
    report['namespaces'] = {kind: os.readlink('/proc/self/ns/' + kind) for kind in ('mnt', 'pid', 'ipc', 'uts')}
    data['payload'] = json.dumps(report)
    return data
"#;

/// Reads a file in /tmp, to show that another instance's /tmp is not shared.
const READ_TMP_PY: &str = r#"
def handle(data):
    try:
        data['payload'] = open('/tmp/' + data['variables']['tmp_name']).read()
    except OSError as error:
        data['payload'] = type(error).__name__
    return data
"#;

/// Allocates and writes the number of MiB given in the payload.
const ALLOCATE_PY: &str = r#"
def handle(data):
    size = int(data['payload']) * 1024 * 1024
    block = b'x' * size
    data['payload'] = f'allocated {len(block) // (1024 * 1024)} MiB'
    return data
"#;

fn payload_json(body: &Value) -> Value {
    serde_json::from_str(body["payload"].as_str().expect("payload is text")).expect("payload is JSON")
}

/// Returns the interpreter prefix the python template binds, as a host path.
fn python_prefix() -> String {
    let output = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.base_prefix)"])
        .output()
        .expect("running python3");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[test]
fn sandbox_hides_host_and_other_scripts() {
    let server = Server::start();
    let neighbour = "SECRET_RECIPE = 'do not read'\ndef handle(data):\n    return data\n";
    let (status, deployed) = server.deploy_file("neighbour", "handler.py", neighbour);
    assert_eq!(status, 201, "{deployed}");
    let neighbour_code =
        server.data_dir.join("layers/code").join(deployed["source_hash"].as_str().unwrap()).join("handler.py");
    let neighbour_source =
        server.data_dir.join("sources").join(deployed["source_hash"].as_str().unwrap()).join("handler.py");
    assert!(neighbour_code.is_file(), "the neighbour's code layer exists on the host");
    assert!(neighbour_source.is_file(), "the neighbour's source exists on the host");
    assert_eq!(server.deploy_file("snoop", "handler.py", SNOOP_PY).0, 201);

    let tmp_name = format!("kubefaas-test-note-{}", std::process::id());
    let variables = json!({
        "shadow": "/etc/shadow",
        "neighbour_code": neighbour_code,
        "neighbour_source": neighbour_source,
        "database": server.data_dir.join("metadata.redb"),
        "data_dir": server.data_dir,
        "tmp_name": tmp_name,
    });
    let (status, body) = server.invoke("snoop", json!({"variables": variables}));
    assert_eq!(status, 200, "{body}");
    let report = payload_json(&body);

    let not_found = "FileNotFoundError: No such file or directory";
    assert_eq!(report["shadow"], not_found, "/etc/shadow is not visible");
    assert_eq!(report["neighbour_code"], not_found, "another script's built code is not visible");
    assert_eq!(report["neighbour_source"], not_found, "another script's upload is not visible");
    assert_eq!(report["database"], not_found, "the server's database is not visible");
    assert_eq!(report["data_dir"], not_found, "the data dir is not visible");
    assert_eq!(report["write_code"], "OSError: Read-only file system", "the script's code is read-only");
    assert_eq!(report["write_tmp"], "written", "/tmp is writable");
    assert!(!Path::new("/tmp").join(&tmp_name).exists(), "the instance's /tmp is not the host's");

    // Only the folders leading to the interpreter are visible under /root.
    let prefix = python_prefix();
    let expected_root = match prefix.strip_prefix("/root/") {
        Some(rest) => json!([rest.split('/').next().unwrap()]),
        None => json!(not_found),
    };
    assert_eq!(report["root"], expected_root, "python is installed at {prefix}");

    assert_eq!(report["proc"], json!([1, 2]), "the instance sees only bwrap's init and itself");
    assert_eq!(report["hostname"], "kubefaas");
    assert_eq!(report["uid"], 65534, "the script runs as nobody in its user namespace");
    for kind in ["mnt", "pid", "ipc", "uts"] {
        let host = std::fs::read_link(format!("/proc/self/ns/{kind}")).unwrap();
        assert_ne!(report["namespaces"][kind], host.to_str().unwrap(), "{kind} namespace is the instance's own");
    }

    // Another script's instance has its own /tmp.
    assert_eq!(server.deploy_file("reader", "handler.py", READ_TMP_PY).0, 201);
    let (status, body) = server.invoke("reader", json!({"variables": {"tmp_name": tmp_name}}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], "FileNotFoundError");
}

#[test]
fn network_off_on_request() {
    let server = Server::start();
    let fetch = r#"
import urllib.request
def handle(data):
    try:
        with urllib.request.urlopen(data['variables']['url'] + '/v1/healthz', timeout=10) as response:
            data['payload'] = response.read().decode()
    except OSError as error:
        data['payload'] = type(getattr(error, 'reason', error)).__name__
    return data
"#;
    let variables = json!({"url": server.url});
    assert_eq!(server.deploy_folder("online", &[("handler.py", fetch)]).0, 201);
    let (status, body) = server.invoke("online", json!({"variables": variables}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], "{\"status\":\"ok\"}", "the script reached the server on the host's loopback");

    let (status, body) = server.deploy_folder("offline", &[("handler.py", fetch), ("kubefaas.toml", "network = false\n")]);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["settings"]["network"], false);
    let (status, body) = server.invoke("offline", json!({"variables": variables}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], "ConnectionRefusedError", "only the sandbox's own loopback exists");
}

#[test]
fn memory_limit_stops_instance_and_next_call_works() {
    let server = Server::start();
    assert_eq!(server.deploy_file("hungry", "handler.py", ALLOCATE_PY).0, 201);
    let (status, body) = server.invoke("hungry", json!({"payload": "300"}));
    assert_eq!(status, 200, "300 MiB fit in the default 512 MiB: {body}");
    assert_eq!(body["payload"], "allocated 300 MiB");

    let (status, body) = server.invoke("hungry", json!({"payload": "1024"}));
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["kind"], "out_of_memory");
    assert_eq!(body["error"]["message"], "the instance reached its memory limit of 512 MiB during the call and was stopped");
    assert_eq!(body["error"]["limit_bytes"], 512 * MIB);

    let (status, body) = server.invoke("hungry", json!({"payload": "10"}));
    assert_eq!(status, 200, "a new instance serves the next call: {body}");
    assert_eq!(body["payload"], "allocated 10 MiB");

    // A script may lower its limit in kubefaas.toml.
    let toml = "[limits]\nmemory_mib = 64\n";
    assert_eq!(server.deploy_folder("small", &[("handler.py", ALLOCATE_PY), ("kubefaas.toml", toml)]).0, 201);
    let (status, body) = server.invoke("small", json!({"payload": "100"}));
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["kind"], "out_of_memory");
    assert_eq!(body["error"]["message"], "the instance reached its memory limit of 64 MiB during the call and was stopped");
    assert_eq!(body["error"]["limit_bytes"], 64 * MIB);

    // ...but not raise it past the server's maximum.
    let toml = "[limits]\nmemory_mib = 1024\n";
    let (status, body) = server.deploy_folder("greedy", &[("handler.py", ALLOCATE_PY), ("kubefaas.toml", toml)]);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["kind"], "invalid_request");
    assert_eq!(
        body["error"]["message"],
        "invalid kubefaas.toml: limits.memory_mib is 1024, but this server allows 32 to 512 MiB per instance"
    );
    assert_eq!(server.request("GET", "/v1/scripts/greedy", None).0, 404, "nothing was deployed");
}

#[test]
fn memory_limit_during_loading_is_out_of_memory() {
    let server = Server::start();
    let script = "BLOCK = b'x' * (1024 * 1024 * 1024)\ndef handle(data):\n    return data\n";
    assert_eq!(server.deploy_file("heavy-import", "handler.py", script).0, 201);
    let (status, body) = server.invoke("heavy-import", json!({}));
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["kind"], "out_of_memory");
    assert_eq!(
        body["error"]["message"],
        "the instance reached its memory limit of 512 MiB while loading the script and was stopped"
    );
}

#[test]
fn server_maximum_allows_more_memory() {
    let server = Server::builder().config("max_instance_memory_mib = 1024\n").start();
    let toml = "[limits]\nmemory_mib = 768\n";
    assert_eq!(server.deploy_folder("roomy", &[("handler.py", ALLOCATE_PY), ("kubefaas.toml", toml)]).0, 201);
    let (status, body) = server.invoke("roomy", json!({"payload": "600"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], "allocated 600 MiB");
    assert_eq!(server.instance_cgroup_file(memory_limit_file()), (768 * MIB).to_string());
}

fn memory_limit_file() -> &'static str {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() { "memory.max" } else { "memory.limit_in_bytes" }
}

#[test]
fn limits_are_written_to_instance_cgroup() {
    let server = Server::start();
    let toml = "[limits]\nmemory_mib = 128\ncpu_weight = 50\n";
    let script = "def handle(data):\n    return data\n";
    assert_eq!(server.deploy_folder("limited", &[("handler.py", script), ("kubefaas.toml", toml)]).0, 201);
    assert!(server.instance_cgroups().is_empty(), "deploy starts no instance");
    assert_eq!(server.invoke("limited", json!({})).0, 200);

    assert_eq!(server.instance_cgroup_file(memory_limit_file()), (128 * MIB).to_string());
    assert_eq!(server.instance_cgroup_file("pids.max"), "256", "the server's default PID limit");
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert_eq!(server.instance_cgroup_file("cpu.weight"), "50");
    } else {
        assert_eq!(server.instance_cgroup_file("cpu.shares"), "512", "weight 50 is half of the default 1024 shares");
    }
    let pids_group = server.instance_cgroups().into_iter().find(|dir| dir.join("pids.max").exists()).unwrap();
    let processes = std::fs::read_to_string(pids_group.join("cgroup.procs")).unwrap();
    assert_eq!(processes.lines().count(), 3, "bwrap, its init and the interpreter are in the group: {processes}");

    server.cli_ok(&["rm", "limited"]);
    server.wait_until(Duration::from_secs(10), "the instance's cgroup is removed", || server.instance_cgroups().is_empty());
}

#[test]
fn fork_bomb_stays_inside_its_instance() {
    let server = Server::builder().config("max_pids_per_instance = 32\n").start();
    let bounded = r#"
import os, time
def handle(data):
    forks = 0
    try:
        while True:
            if os.fork() == 0:
                time.sleep(600)
                os._exit(0)
            forks += 1
    except OSError as error:
        data['payload'] = f'{forks < 32} {error.strerror}'
    return data
"#;
    assert_eq!(server.deploy_file("forks", "handler.py", bounded).0, 201);
    let (status, body) = server.invoke("forks", json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], "True Resource temporarily unavailable", "fork fails at the PID limit");
    let current: u64 = server.instance_cgroup_file("pids.current").parse().unwrap();
    assert!(current <= 32, "the instance holds {current} PIDs, within its limit of 32");
    server.cli_ok(&["rm", "forks"]);

    // Every child forks too, without end, until the call's timeout.
    let bomb = r#"
import os
def handle(data):
    if data['payload'] == 'bomb':
        while True:
            try:
                os.fork()
            except OSError:
                pass
    return data
"#;
    let toml = "[limits]\ntimeout_seconds = 3\n";
    assert_eq!(server.deploy_folder("bomb", &[("handler.py", bomb), ("kubefaas.toml", toml)]).0, 201);
    let (status, body) = server.invoke("bomb", json!({"payload": "bomb"}));
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["kind"], "timeout");
    assert_eq!(body["error"]["message"], "the call exceeded the timeout of 3 s");
    assert_eq!(body["error"]["timeout_seconds"], 3.0);

    assert_eq!(server.request("GET", "/v1/healthz", None).0, 200, "the server keeps serving");
    let (status, body) = server.invoke("bomb", json!({"payload": "calm"}));
    assert_eq!(status, 200, "a new instance serves the next call: {body}");
    assert_eq!(body["payload"], "calm");
    server.cli_ok(&["rm", "bomb"]);
    server.wait_until(Duration::from_secs(10), "every instance cgroup is removed", || server.instance_cgroups().is_empty());
}

#[test]
fn script_timeout_overrides_server_default() {
    let server = Server::start();
    let script = r#"
import time
def handle(data):
    if data['payload'] == 'slow':
        time.sleep(60)
    return data
"#;
    let toml = "[limits]\ntimeout_seconds = 2\n";
    assert_eq!(server.deploy_folder("sleeper", &[("handler.py", script), ("kubefaas.toml", toml)]).0, 201);
    let (status, body) = server.invoke("sleeper", json!({"payload": "slow"}));
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["kind"], "timeout");
    assert_eq!(body["error"]["message"], "the call exceeded the timeout of 2 s");
    assert_eq!(body["error"]["timeout_seconds"], 2.0);
    let (status, body) = server.invoke("sleeper", json!({"payload": "quick"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], "quick");

    for (toml, message) in [
        ("[limits]\ntimeout_seconds = 0\n", "invalid kubefaas.toml: limits.timeout_seconds is 0; give a number of seconds above 0"),
        ("[limits]\ncpu_weight = 20000\n", "invalid kubefaas.toml: limits.cpu_weight is 20000; give a weight from 1 to 10000 (100 is the default)"),
    ] {
        let (status, body) = server.deploy_folder("bad-limits", &[("handler.py", script), ("kubefaas.toml", toml)]);
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["kind"], "invalid_request");
        assert_eq!(body["error"]["message"], message);
    }
    let (status, body) = server.deploy_folder("bad-limits", &[("handler.py", script), ("kubefaas.toml", "[limits]\nmemory = 5\n")]);
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("invalid kubefaas.toml: TOML parse error at line 2"), "{message}");
    assert!(message.contains("unknown field `memory`, expected one of `memory_mib`, `timeout_seconds`, `cpu_weight`"), "{message}");
}

#[test]
fn killed_by_signal_is_crashed_with_signal() {
    let server = Server::start();
    let script = r#"
import os, signal
def handle(data):
    if data['payload'] == 'kill':
        os.kill(os.getpid(), signal.SIGKILL)
    if data['payload'] == 'segv':
        os.kill(os.getpid(), signal.SIGSEGV)
    return data
"#;
    assert_eq!(server.deploy_file("suicidal", "handler.py", script).0, 201);
    for (payload, signal, name) in [("kill", 9, "SIGKILL"), ("segv", 11, "SIGSEGV")] {
        let (status, body) = server.invoke("suicidal", json!({"payload": payload}));
        assert_eq!(status, 502, "{body}");
        assert_eq!(body["error"]["kind"], "crashed");
        assert_eq!(body["error"]["message"], format!("the instance was killed by signal {signal} ({name}) during the call"));
        assert_eq!(body["error"]["signal"], signal);
        assert_eq!(body["error"]["exit_code"], Value::Null);

        let (status, body) = server.invoke("suicidal", json!({"payload": "live"}));
        assert_eq!(status, 200, "a new instance serves the next call: {body}");
    }
}

#[test]
fn huge_log_line_keeps_instance_working() {
    let server = Server::start();
    let script = r#"
def handle(data):
    if data['payload'] == 'shout':
        print('x' * (50 * 1024 * 1024))
    print('after the line')
    return data
"#;
    assert_eq!(server.deploy_file("shouter", "handler.py", script).0, 201);
    assert_eq!(server.invoke("shouter", json!({"payload": "warm"})).0, 200);
    let memory_before = peak_memory_bytes(server.pid());

    let (status, body) = server.invoke("shouter", json!({"payload": "shout"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], "shout");
    let (status, body) = server.invoke("shouter", json!({"payload": "again"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.instances("shouter"), 1, "the same instance keeps serving");

    let cut_marker = format!(" [line cut: {} more bytes]", 50 * MIB - 8 * 1024);
    server.wait_until(Duration::from_secs(10), "the cut line and the next line reach the logs", || {
        let (_, logs) = server.request("GET", "/v1/scripts/shouter/logs", None);
        let lines: Vec<&str> = logs["lines"].as_array().unwrap().iter().map(|line| line["text"].as_str().unwrap()).collect();
        lines.iter().any(|line| line.ends_with(&cut_marker) && line.len() == 8 * 1024 + cut_marker.len())
            && lines.iter().filter(|line| **line == "after the line").count() == 3
    });
    let growth = peak_memory_bytes(server.pid()).saturating_sub(memory_before);
    assert!(growth < 32 * MIB, "the server's peak memory grew by {growth} bytes for a 50 MiB line");
}

#[test]
fn secrets_reach_instance_not_logs() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("greeter");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("kubefaas.toml"), "[env]\nGREETING = \"hello\"\n").unwrap();
    std::fs::write(
        folder.join("handler.py"),
        r#"
import os
def handle(data):
    token = os.environ.get('API_TOKEN', 'none')
    print('using token', token)
    if data['payload'] == 'fail':
        raise ValueError('rejected token ' + token)
    data['payload'] = os.environ['GREETING'] + ' ' + token
    data['logs'] = ['token was ' + token]
    return data
"#,
    )
    .unwrap();
    let secret = "tok-8d41-very-secret";
    let folder_arg = folder.to_str().unwrap();
    let deployed = server.cli_ok(&["deploy", folder_arg, "--secret", &format!("API_TOKEN={secret}")]);
    assert!(!deployed.contains(secret), "{deployed}");

    let (status, body) = server.invoke("greeter", json!({"payload": "hi"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], format!("hello {secret}"), "env and secret reach the instance");
    assert_eq!(body["logs"], json!(["token was ***"]), "the returned run log is masked");

    let (status, body) = server.invoke("greeter", json!({"payload": "fail"}));
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["message"], "ValueError: rejected token ***");

    server.wait_until(Duration::from_secs(5), "the printed line reaches the logs", || {
        server.cli_ok(&["logs", "greeter"]).contains("stdout: using token ***")
    });
    let logs = server.cli_ok(&["logs", "greeter"]);
    assert!(!logs.contains(secret), "{logs}");

    let show = server.cli_ok(&["show", "greeter"]);
    assert!(show.contains("secret:     API_TOKEN (value hidden)"), "{show}");
    assert!(show.contains("env:        GREETING=hello"), "{show}");
    assert!(!show.contains(secret), "{show}");
    let (_, shown) = server.request("GET", "/v1/scripts/greeter", None);
    assert_eq!(shown["secrets"], json!(["API_TOKEN"]));
    assert!(!shown.to_string().contains(secret), "{shown}");

    // A new deploy keeps the secret; --remove-secret drops it.
    std::fs::write(folder.join("kubefaas.toml"), "[env]\nGREETING = \"hi\"\n").unwrap();
    server.cli_ok(&["deploy", folder_arg]);
    assert_eq!(server.invoke("greeter", json!({"payload": "x"})).1["payload"], format!("hi {secret}"));
    server.cli_ok(&["deploy", folder_arg, "--remove-secret", "API_TOKEN"]);
    assert_eq!(server.invoke("greeter", json!({"payload": "x"})).1["payload"], "hi none");

    let output = server.cli(&["deploy", folder_arg, "--secret", "1BAD=x"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid_request: invalid secret name \"1BAD\": use letters, digits and '_', starting with a letter or '_'"),
        "{stderr}"
    );
    let (status, body) = server.deploy_archive(
        "greeter",
        "application/x-tar",
        common::tar_of(&[("handler.py", "def handle(data):\n    return data\n")]),
        &[("kubefaas-secrets", "not base64!")],
    );
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("invalid Kubefaas-Secrets header: not base64"), "{body}");
}

#[test]
fn missing_cgroups_stop_the_server_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(common::BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--cgroup-root", "/nonexistent/cgroup", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .expect("running kubefaas serve");
    assert!(!output.status.success(), "the server refuses to start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("or pass --allow-no-cgroups to run scripts without limits"), "{stderr}");
    assert!(stderr.contains("no usable cgroup hierarchy under /nonexistent/cgroup"), "{stderr}");

    let log = dir.path().join("server.log");
    let server = Server::builder()
        .arg("--cgroup-root")
        .arg("/nonexistent/cgroup")
        .arg("--allow-no-cgroups")
        .stderr_file(&log)
        .start();
    assert_eq!(server.deploy_file("unlimited", "handler.py", "def handle(data):\n    return data\n").0, 201);
    assert_eq!(server.invoke("unlimited", json!({"payload": "x"})).0, 200);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("WARNING: instances run WITHOUT memory, PID and CPU limits"), "{log}");
    assert!(log.contains("starting an instance WITHOUT memory, PID and CPU limits"), "{log}");
}

#[test]
fn nothing_left_after_misbehaving_scripts() {
    let mut server = Server::builder().config("max_pids_per_instance = 16\n").start();
    let groups = server.cgroup_groups.clone();
    assert!(!groups.is_empty() && groups.iter().all(|group| group.is_dir()), "the server created {groups:?}");

    assert_eq!(server.deploy_file("hungry", "handler.py", ALLOCATE_PY).0, 201);
    assert_eq!(server.invoke("hungry", json!({"payload": "1024"})).0, 502);
    let bomb = "import os\ndef handle(data):\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n";
    let toml = "[limits]\ntimeout_seconds = 2\n";
    assert_eq!(server.deploy_folder("bomb", &[("handler.py", bomb), ("kubefaas.toml", toml)]).0, 201);
    assert_eq!(server.invoke("bomb", json!({})).0, 504);
    assert_eq!(server.deploy_file("steady", "handler.py", "def handle(data):\n    return data\n").0, 201);
    assert_eq!(server.invoke("steady", json!({})).0, 200);
    assert_eq!(server.invoke("hungry", json!({"payload": "1"})).0, 200);

    let instance_pids = common::child_pids(server.pid());
    assert_eq!(instance_pids.len(), 2, "steady and hungry run one instance each");
    server.stop();
    for pid in instance_pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "instance {pid} stopped with the server");
    }
    for group in &groups {
        assert!(!group.exists(), "{} is removed", group.display());
    }
    let leftover: Vec<_> = std::fs::read_dir(server.data_dir.join("tmp")).unwrap().flatten().map(|entry| entry.path()).collect();
    assert!(leftover.is_empty(), "no upload or build is left half-written: {leftover:?}");
}
