//! End-to-end tests: the real binary, real Python and Node instances, driven
//! through the CLI and the HTTP API as a user would.

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{Server, child_pids, examples_dir};
use serde_json::json;

const ECHO_PY: &str = "\
def handle(data):
    data['meta']['seen'] = 'yes'
    return data
";

const ECHO_JS: &str = "\
module.exports = async function (data) {
  data.meta.seen = 'yes';
  return data;
};
";

const ECHO_PHP: &str = "<?php
function handle($data) {
    $data['meta']['seen'] = 'yes';
    return $data;
}
";

const ECHO_RB: &str = "\
def handle(data)
  data['meta']['seen'] = 'yes'
  data
end
";

/// (name prefix, file name, echo script) for every built-in template.
const ECHO_SCRIPTS: [(&str, &str, &str); 4] = [
    ("py", "handler.py", ECHO_PY),
    ("js", "index.js", ECHO_JS),
    ("php", "script.php", ECHO_PHP),
    ("rb", "handler.rb", ECHO_RB),
];

#[test]
fn examples_return_expected_output() {
    // The server's defaults, prewarmed instances included.
    let server = Server::builder().prewarm(None).start();
    for example in ["order-to-warehouse", "csv-to-json", "filter-products", "invoice-totals"] {
        let dir = examples_dir().join(example);
        let deployed = server.cli_ok(&["deploy", dir.to_str().unwrap()]);
        assert!(deployed.starts_with(&format!("deployed {example} version 1")), "deploy output: {deployed}");

        let payload = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|entry| entry.path())
            .find(|path| path.file_stem().is_some_and(|stem| stem == "payload"))
            .expect("example has a payload file");
        let mut args = vec!["invoke".to_string(), example.to_string(), format!("--data=@{}", payload.display())];
        for line in std::fs::read_to_string(dir.join("vars")).unwrap().lines().filter(|line| !line.is_empty()) {
            args.push(format!("--var={line}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = server.cli_ok(&args);
        let expected = std::fs::read_to_string(dir.join("expected-output.json")).unwrap();
        assert_eq!(output, expected, "output of example {example}");
    }
}

#[test]
fn script_error_keeps_instance_serving() {
    let server = Server::start();
    let script = "\
def handle(data):
    if data['payload'] == 'fail':
        raise ValueError('cannot process order 17')
    data['payload'] = 'fine'
    return data
";
    assert_eq!(server.deploy_file("flaky", "handler.py", script).0, 201);

    let (status, body) = server.invoke("flaky", json!({"payload": "fail"}));
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["kind"], "script_error");
    assert_eq!(body["error"]["message"], "ValueError: cannot process order 17");
    let traceback = body["error"]["traceback"].as_str().unwrap();
    assert!(traceback.contains("line 3, in handle"), "the traceback names the line: {traceback}");

    let (status, body) = server.invoke("flaky", json!({"payload": "ok"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], "fine");
    assert_eq!(server.instances("flaky"), 1, "the same instance keeps serving");

    let logs = server.cli_ok(&["logs", "flaky"]);
    assert!(logs.contains("ValueError: cannot process order 17"), "traceback in logs: {logs}");
}

#[test]
fn node_script_error_keeps_instance_serving() {
    let server = Server::start();
    let script = "\
module.exports = function (data) {
  if (data.payload === 'fail') throw new RangeError('quantity out of range');
  data.payload = 'fine';
  return data;
};
";
    assert_eq!(server.deploy_file("flaky-node", "index.js", script).0, 201);
    let (status, body) = server.invoke("flaky-node", json!({"payload": "fail"}));
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["kind"], "script_error");
    assert_eq!(body["error"]["message"], "RangeError: quantity out of range");
    let (status, body) = server.invoke("flaky-node", json!({"payload": "x"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], "fine");
}

#[test]
fn php_and_ruby_script_errors() {
    let server = Server::start();
    let php = "<?php
function handle($data) {
    echo \"printed by php\\n\";
    if ($data['payload'] === 'fail') {
        throw new InvalidArgumentException('invalid order 9');
    }
    $data['payload'] = strtoupper($data['payload']);
    return $data;
}
";
    let ruby = "\
def handle(data)
  puts 'printed by ruby'
  raise ArgumentError, 'invalid order 9' if data['payload'] == 'fail'
  data['payload'] = data['payload'].upcase
  data
end
";
    for (name, file, script, error_type) in [
        ("upper-php", "script.php", php, "InvalidArgumentException"),
        ("upper-rb", "handler.rb", ruby, "ArgumentError"),
    ] {
        assert_eq!(server.deploy_file(name, file, script).0, 201);
        let (status, body) = server.invoke(name, json!({"payload": "fail"}));
        assert_eq!(status, 500, "{name}: {body}");
        assert_eq!(body["error"]["kind"], "script_error");
        assert_eq!(body["error"]["message"], format!("{error_type}: invalid order 9"));
        let (status, body) = server.invoke(name, json!({"payload": "abc"}));
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body["payload"], "ABC", "{name}");
        server.wait_until(Duration::from_secs(5), "the printed line reaches the logs", || {
            server.cli_ok(&["logs", name]).contains("stdout: printed by")
        });
    }
}

#[test]
fn data_object_fields_pass_through() {
    let server = Server::start();
    for (language, file, script) in ECHO_SCRIPTS {
        let name = &format!("echo-{language}");
        assert_eq!(server.deploy_file(name, file, script).0, 201);
        let request = json!({
            "payload": "{\"a\": 1}",
            "variables": {"region": "eu"},
            "meta": {"trace": "t-1"},
            "flow": {"step": 3, "nested": {"x": [1, 2]}},
        });
        let (status, body) = server.invoke(name, request);
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body["payload"], "{\"a\": 1}", "{name}");
        assert_eq!(body["variables"], json!({"region": "eu"}), "{name}");
        assert_eq!(body["meta"], json!({"trace": "t-1", "seen": "yes"}), "{name}");
        assert_eq!(body["flow"], json!({"step": 3, "nested": {"x": [1, 2]}}), "{name}");
        assert_eq!(body["logs"], json!([]), "{name}");

        let (status, body) = server.invoke(name, json!({}));
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body["payload"], serde_json::Value::Null, "{name}: a null payload stays null");
    }
}

#[test]
fn binary_payload_round_trips_unchanged() {
    let server = Server::start();
    let bytes: Vec<u8> = b"\x00start\xff\xfe\x00middle\xc3\x28end\x00".iter().copied().chain(0..=255u8).collect();
    for (language, file, script) in ECHO_SCRIPTS {
        let name = &format!("bin-{language}");
        assert_eq!(server.deploy_file(name, file, script).0, 201);
        let (status, body) = server.invoke(name, json!({"payload_base64": BASE64.encode(&bytes)}));
        assert_eq!(status, 200, "{name}: {body}");
        assert!(body.get("payload").is_none(), "{name}: invalid UTF-8 comes back as payload_base64");
        let returned = BASE64.decode(body["payload_base64"].as_str().unwrap()).unwrap();
        assert_eq!(returned, bytes, "{name}");

        let text = "nul \u{0} inside, ünïcödé, emoji 🚀";
        let (status, body) = server.invoke(name, json!({"payload": text}));
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body["payload"], text, "{name}");
    }

    // The CLI reads the payload from a file and writes the returned bytes as they are.
    let dir = tempfile::tempdir().unwrap();
    let payload_file = dir.path().join("payload.bin");
    std::fs::write(&payload_file, &bytes).unwrap();
    let output = server.cli(&["invoke", "bin-py", &format!("--data=@{}", payload_file.display())]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.stdout, bytes);
}

/// Payloads larger than the socket buffers between the server and an
/// instance, both ways: the server must wait for buffer space while the
/// instance reads, and read a reply that arrives in many parts.
#[test]
fn large_payload_round_trips_unchanged() {
    let server = Server::start();
    let bytes: Vec<u8> = (0..12 * 1024 * 1024u32).map(|index| (index.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let text: String = (0..6 * 1024 * 1024u32).map(|index| char::from(b'a' + (index % 26) as u8)).collect();
    for (language, file, script) in &ECHO_SCRIPTS[..2] {
        let name = &format!("large-{language}");
        assert_eq!(server.deploy_file(name, file, script).0, 201);

        let (status, body) = server.invoke(name, json!({"payload_base64": BASE64.encode(&bytes)}));
        assert_eq!(status, 200, "{name}: {}", body["error"]);
        let returned = BASE64.decode(body["payload_base64"].as_str().unwrap()).unwrap();
        assert_eq!(returned.len(), bytes.len(), "{name}");
        assert!(returned == bytes, "{name}: the binary payload changed");

        let (status, body) = server.invoke(name, json!({"payload": text}));
        assert_eq!(status, 200, "{name}: {}", body["error"]);
        assert!(body["payload"] == text.as_str(), "{name}: the text payload changed");
        assert_eq!(body["meta"]["seen"], "yes", "{name}");
    }
}

#[test]
fn printed_output_stays_out_of_result() {
    let server = Server::start();
    let python = "\
import sys
def handle(data):
    print('to stdout')
    print('to stderr', file=sys.stderr)
    data['payload'] = 'result'
    data['logs'] = ['one', 'two']
    return data
";
    let node = "\
module.exports = async (data) => {
  console.log('to stdout');
  console.error('to stderr');
  return { payload: 'result', logs: ['one', 'two'] };
};
";
    for (name, file, script) in [("noisy-py", "handler.py", python), ("noisy-js", "index.js", node)] {
        assert_eq!(server.deploy_file(name, file, script).0, 201);
        let (status, body) = server.invoke(name, json!({"payload": "in"}));
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body["payload"], "result", "{name}");
        assert_eq!(body["logs"], json!(["one", "two"]), "{name}");

        let output = server.cli(&["invoke", name, "--data", "in"]);
        assert_eq!(String::from_utf8_lossy(&output.stdout), "result", "{name}: CLI prints only the payload");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("log: one"), "{name}: {stderr}");
        assert!(stderr.contains("log: two"), "{name}: {stderr}");

        server.wait_until(Duration::from_secs(5), "the printed lines reach the logs", || {
            let logs = server.cli_ok(&["logs", name]);
            logs.contains("stdout: to stdout") && logs.contains("stderr: to stderr")
        });
    }
}

#[test]
fn unknown_script_is_not_found() {
    let server = Server::start();
    let (status, body) = server.invoke("no-such-script", json!({"payload": "x"}));
    assert_eq!(status, 404);
    assert_eq!(body["error"]["kind"], "not_found");
    assert_eq!(server.request("GET", "/v1/scripts/no-such-script", None).0, 404);
    assert_eq!(server.request("DELETE", "/v1/scripts/no-such-script", None).0, 404);

    let output = server.cli(&["invoke", "no-such-script"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not_found: script \"no-such-script\" not found"), "{stderr}");
}

#[test]
fn bad_name_is_invalid_request() {
    let server = Server::start();
    for name in ["Upper", "under_score", "-dash", "a.b"] {
        let (status, body) = server.deploy_file(name, "handler.py", ECHO_PY);
        assert_eq!(status, 400, "deploy {name}: {body}");
        assert_eq!(body["error"]["kind"], "invalid_request");
        let (status, body) = server.invoke(name, json!({}));
        assert_eq!(status, 400, "invoke {name}: {body}");
        assert_eq!(body["error"]["kind"], "invalid_request");
    }
    let long = "a".repeat(64);
    assert_eq!(server.deploy_file(&long, "handler.py", ECHO_PY).0, 400);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("handler.py");
    std::fs::write(&file, ECHO_PY).unwrap();
    let output = server.cli(&["deploy", file.to_str().unwrap(), "--name", "Bad Name"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid script name \"Bad Name\""), "{stderr}");
    assert!(!stderr.contains("uploading"), "rejected before the upload: {stderr}");
}

#[test]
fn malformed_requests_are_invalid() {
    let server = Server::start();
    assert_eq!(server.deploy_file("echo", "handler.py", ECHO_PY).0, 201);

    let response = server.http().post(format!("{}/v1/scripts/echo/invoke", server.url)).body("{not json").send().unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: serde_json::Value = response.json().unwrap();
    assert_eq!(body["error"]["kind"], "invalid_request");

    for request in [
        json!({"payload": 5}),
        json!({"variables": {"n": 1}}),
        json!({"payload_base64": "***"}),
        json!({"payload": "a", "payload_base64": "YQ=="}),
        json!({"flow": "text"}),
        json!({"unknown_field": true}),
    ] {
        let (status, body) = server.invoke("echo", request.clone());
        assert_eq!(status, 400, "{request}: {body}");
        assert_eq!(body["error"]["kind"], "invalid_request", "{request}");
    }

    let (status, body) = server.deploy_file("odd", "notes.txt", "hello");
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("no template runs \"notes.txt\""), "{body}");

    let response = server.http().put(format!("{}/v1/scripts/raw", server.url)).body("x").send().unwrap();
    assert_eq!(response.status().as_u16(), 400);

    let response = server.http().get(format!("{}/v1/scripts/echo/invoke", server.url)).send().unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let body: serde_json::Value = response.json().unwrap();
    assert_eq!(body["error"]["kind"], "invalid_request");
}

#[test]
fn import_failure_is_crashed_with_error_output() {
    let server = Server::start();
    assert_eq!(server.deploy_file("broken", "handler.py", "import not_a_real_module\n").0, 201);
    let (status, body) = server.invoke("broken", json!({"payload": "x"}));
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["kind"], "crashed");
    assert_eq!(body["error"]["exit_code"], 1);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("No module named 'not_a_real_module'"), "{message}");
    assert!(body["error"]["stderr_tail"].as_str().unwrap().contains("Traceback"), "{body}");

    assert_eq!(server.deploy_file("broken-js", "index.js", "module.exports = function (data) {\n").0, 201);
    let (status, body) = server.invoke("broken-js", json!({"payload": "x"}));
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["kind"], "crashed");
    assert!(body["error"]["stderr_tail"].as_str().unwrap().contains("SyntaxError"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("SyntaxError"), "{body}");
}

#[test]
fn crash_during_call_gives_exit_code() {
    let server = Server::start();
    let script = "\
import os
def handle(data):
    if data['payload'] == 'exit':
        os._exit(3)
    return data
";
    assert_eq!(server.deploy_file("exits", "handler.py", script).0, 201);
    let (status, body) = server.invoke("exits", json!({"payload": "exit"}));
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["kind"], "crashed");
    assert_eq!(body["error"]["exit_code"], 3);
    let (status, body) = server.invoke("exits", json!({"payload": "stay"}));
    assert_eq!(status, 200, "a new instance serves the next call: {body}");
}

#[test]
fn call_timeout_replaces_the_instance() {
    let server = Server::builder().arg("--call-timeout").arg("2").start();
    let script = "\
import time
def handle(data):
    if data['payload'] == 'slow':
        time.sleep(60)
    return data
";
    assert_eq!(server.deploy_file("sleepy", "handler.py", script).0, 201);
    assert_eq!(server.invoke("sleepy", json!({"payload": "warm"})).0, 200);
    let (status, body) = server.invoke("sleepy", json!({"payload": "slow"}));
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["kind"], "timeout");
    assert_eq!(body["error"]["timeout_seconds"], 2.0);
    let (status, body) = server.invoke("sleepy", json!({"payload": "quick"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], "quick");
}

#[test]
fn deploy_restart_invoke_without_rebuild() {
    let mut server = Server::start();
    let dir = examples_dir().join("filter-products");
    server.cli_ok(&["deploy", dir.to_str().unwrap()]);
    let (_, before) = server.request("GET", "/v1/scripts/filter-products", None);
    let args = ["invoke", "filter-products", "--data", "{\"products\": []}", "--var", "category=outdoor"];
    let first = server.cli_ok(&args);
    let instance_pids = child_pids(server.pid());
    assert_eq!(instance_pids.len(), 1, "one instance runs");

    let data_dir = server.data_dir.clone();
    let _keep = server.keep_data_dir();
    server.stop();
    for pid in instance_pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "instance {pid} stopped with the server");
    }

    let server = Server::builder().data_dir(&data_dir).start();
    assert_eq!(server.cli_ok(&args), first);
    let (_, after) = server.request("GET", "/v1/scripts/filter-products", None);
    assert_eq!(after["build"], before["build"], "the build was not run again");
    assert_eq!(after["version"], 1);
    assert!(server.cli_ok(&["ls"]).contains("filter-products"));
}

#[test]
fn idle_instance_scales_to_zero_and_back() {
    let server = Server::builder().arg("--idle-timeout").arg("0.5").start();
    assert_eq!(server.deploy_file("idle", "handler.py", ECHO_PY).0, 201);
    assert_eq!(server.instances("idle"), 0, "deploy starts no instance");

    let (status, _) = server.invoke("idle", json!({"payload": "1"}));
    assert_eq!(status, 200);
    let first_pids = child_pids(server.pid());
    assert_eq!(first_pids.len(), 1);

    server.wait_until(Duration::from_secs(10), "the idle instance stops", || server.instances("idle") == 0);
    server.wait_until(Duration::from_secs(5), "the instance process exits", || child_pids(server.pid()).is_empty());

    let (status, body) = server.invoke("idle", json!({"payload": "2"}));
    assert_eq!(status, 200);
    assert_eq!(body["payload"], "2");
    assert_eq!(server.instances("idle"), 1);
    assert_ne!(child_pids(server.pid()), first_pids, "a new process serves the call");
}

#[test]
fn concurrent_first_calls_wait_for_start() {
    let server = Server::start();
    assert_eq!(server.deploy_file("cold", "index.js", ECHO_JS).0, 201);
    let results: Vec<(u16, serde_json::Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let server = &server;
                scope.spawn(move || server.invoke("cold", json!({"payload": format!("call {i}")})))
            })
            .collect();
        handles.into_iter().map(|handle| handle.join().unwrap()).collect()
    });
    for (i, (status, body)) in results.iter().enumerate() {
        assert_eq!(*status, 200, "call {i}: {body}");
        assert_eq!(body["payload"], format!("call {i}"));
    }
    assert!(server.instances("cold") <= 4, "instances stay within the per-script maximum");
}

#[test]
fn redeploy_serves_new_version_and_rm_deletes() {
    let server = Server::start();
    let v1 = "def handle(data):\n    data['payload'] = 'v1'\n    return data\n";
    let v2 = "def handle(data):\n    data['payload'] = 'v2'\n    return data\n";
    assert_eq!(server.deploy_file("versioned", "handler.py", v1).0, 201);
    assert_eq!(server.invoke("versioned", json!({})).1["payload"], "v1");
    let (status, body) = server.deploy_file("versioned", "handler.py", v2);
    assert_eq!(status, 201);
    assert_eq!(body["version"], 2);
    assert_eq!(server.invoke("versioned", json!({})).1["payload"], "v2");

    let show = server.cli_ok(&["show", "versioned"]);
    assert!(show.contains("version:    2"), "{show}");

    assert_eq!(server.cli_ok(&["rm", "versioned"]), "deleted versioned\n");
    assert_eq!(server.invoke("versioned", json!({})).0, 404);
    server.wait_until(Duration::from_secs(5), "the deleted script's instances stop", || child_pids(server.pid()).is_empty());

    // The same name with new code never serves the old code.
    assert_eq!(server.deploy_file("versioned", "handler.py", v1).0, 201);
    assert_eq!(server.invoke("versioned", json!({})).1["payload"], "v1");
}

#[test]
fn upload_limits_and_unsafe_archives_are_rejected() {
    let server = Server::builder().config("max_script_bytes = 4096\n").start();
    let (status, body) = server.deploy_file("big", "handler.py", &"#".repeat(4097));
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["kind"], "too_large");

    let mut archive = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    let contents = b"def handle(data):\n    return data\n";
    header.set_size(contents.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    // set_path rejects "..", so the name is written into the raw header.
    header.as_old_mut().name[..13].copy_from_slice(b"../handler.py");
    header.set_cksum();
    archive.append(&header, &contents[..]).unwrap();
    let bytes = archive.into_inner().unwrap();
    let response = server
        .http()
        .put(format!("{}/v1/scripts/escape", server.url))
        .header("content-type", "application/x-tar")
        .body(bytes)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: serde_json::Value = response.json().unwrap();
    assert_eq!(body["error"]["kind"], "invalid_request");
    assert!(body["error"]["message"].as_str().unwrap().contains("outside"), "{body}");
    assert_eq!(server.request("GET", "/v1/scripts/escape", None).0, 404, "nothing was deployed");
}

#[test]
fn invalid_settings_stop_server_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let cases = [
        ("server_threads = 0\n", "server_threads must be at least 1"),
        ("instance_concurrency = 0\n", "instance_concurrency must be at least 1"),
        ("max_instances = 4\n", "unknown field `max_instances`"),
    ];
    for (toml, expected) in cases {
        std::fs::write(&config, toml).unwrap();
        let output = std::process::Command::new(common::BINARY)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{toml}: the server started");
        assert!(stderr.contains(expected), "{toml}: {stderr}");
        assert!(stderr.contains(&config.display().to_string()), "{toml}: the message names the file: {stderr}");
    }
}

/// Counts the stored sources (one folder per content hash).
fn stored_sources(server: &Server) -> usize {
    std::fs::read_dir(server.data_dir.join("sources")).unwrap().count()
}

#[test]
fn unused_sources_are_removed() {
    let mut server = Server::start();
    let script = "def handle(data):\n    return data\n";
    assert_eq!(server.deploy_file("first", "handler.py", script).0, 201);
    assert_eq!(server.deploy_file("second", "handler.py", script).0, 201);
    assert_eq!(stored_sources(&server), 1, "identical uploads share one source");

    assert_eq!(server.request("DELETE", "/v1/scripts/first", None).0, 200);
    assert_eq!(stored_sources(&server), 1, "the second script still names the source");
    assert_eq!(server.invoke("second", json!({"payload": "x"})).0, 200);
    assert_eq!(server.request("DELETE", "/v1/scripts/second", None).0, 200);
    assert_eq!(stored_sources(&server), 0, "no script names the source any more");

    assert_eq!(server.deploy_file("third", "handler.py", script).0, 201);
    let (status, body) = server.invoke("third", json!({"payload": "back"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], "back");

    // A failed redeploy records no version, so its source is unused. The
    // collection that runs when the server starts removes it.
    let failing = [("handler.py", script), ("requirements.txt", "kubefaas-no-such-package-xyz==1.0\n")];
    assert_eq!(server.deploy_folder("third", &failing).0, 422);
    assert_eq!(stored_sources(&server), 2);
    let data_dir = server.data_dir.clone();
    let _keep = server.keep_data_dir();
    server.stop();
    let server = Server::builder().data_dir(&data_dir).start();
    server.wait_until(Duration::from_secs(10), "the failed redeploy's source is removed", || stored_sources(&server) == 1);
    assert_eq!(server.invoke("third", json!({"payload": "still"})).1["payload"], "still");
}
