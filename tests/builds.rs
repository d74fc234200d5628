//! Build tests: real dependencies from PyPI and npm, the layered cache, and
//! failed builds, through the real server.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{S3Server, Server, ServerBuilder};

/// Where the server under test stores its artifacts.
#[derive(Clone, Copy, Debug)]
enum StoreKind {
    Local,
    S3,
}

/// Starts a server with the counting template and the given artifact
/// store; the S3 server, if any, must outlive the returned server.
fn start_counting_server(store: StoreKind, templates: &Path) -> (Option<S3Server>, Server) {
    let builder = Server::builder().arg("--templates").arg(templates.to_str().unwrap());
    match store {
        StoreKind::Local => (None, builder.start()),
        StoreKind::S3 => {
            let s3 = S3Server::start();
            let server = with_s3(builder, &s3).start();
            (Some(s3), server)
        }
    }
}

fn with_s3(builder: ServerBuilder, s3: &S3Server) -> ServerBuilder {
    builder.config(&s3.config()).env("AWS_ACCESS_KEY_ID", "test").env("AWS_SECRET_ACCESS_KEY", "test")
}
use serde_json::json;

const ECHO: &str = "def handle(data):\n    return data\n";

/// Writes a folder with the given files and returns its path.
fn script_folder(root: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, contents) in files {
        std::fs::write(dir.join(file), contents).unwrap();
    }
    dir
}

fn deploy(server: &Server, dir: &Path, name: &str) -> (u16, serde_json::Value) {
    let mut archive = tar::Builder::new(Vec::new());
    archive.append_dir_all(".", dir).unwrap();
    let response = server
        .http()
        .put(format!("{}/v1/scripts/{name}", server.url))
        .header("content-type", "application/x-tar")
        .body(archive.into_inner().unwrap())
        .send()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap())
}

/// Writes a template whose dependency step appends a line to `counter`, so
/// a test can count how often the step ran. It reuses the python shim.
fn counting_templates(root: &Path, counter: &Path) -> PathBuf {
    let dir = root.join("templates/counting");
    std::fs::create_dir_all(&dir).unwrap();
    let shim = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/python/shim.py")).unwrap();
    std::fs::write(dir.join("shim.py"), shim).unwrap();
    let description = format!(
        r#"name = "counting"
version = "1"
extensions = ["count"]
entry = "handler.py"
shim = "shim.py"

[interpreter]
command = "python3"
resolve = ["-c", "import sys; print(sys.executable)"]

[dependencies]
file = "deps.txt"
steps = [["sh", "-c", "echo step >> {counter} && mkdir -p lib && sed 's/^/VALUE = /' deps.txt > lib/deps.py"]]

[run]
args = ["-u", "{{shim}}"]
env = {{ PYTHONPATH = "{{dependencies}}/lib" }}
"#,
        counter = counter.display()
    );
    std::fs::write(dir.join("template.toml"), description).unwrap();
    root.join("templates")
}

const COUNTING_HANDLER: &str = "\
import deps
def handle(data):
    data['payload'] = f'{PREFIX}{deps.VALUE}'
    return data
";

fn counting_handler(prefix: &str) -> String {
    COUNTING_HANDLER.replace("{PREFIX}", prefix)
}

fn step_runs(counter: &Path) -> usize {
    std::fs::read_to_string(counter).map(|text| text.lines().count()).unwrap_or(0)
}

#[test]
fn python_dependency_from_pypi() {
    let server = Server::start();
    let temp = tempfile::tempdir().unwrap();
    let handler = "\
from tabulate import tabulate
import json
def handle(data):
    rows = json.loads(data['payload'])
    data['payload'] = tabulate(rows, headers='keys', tablefmt='github')
    return data
";
    let dir = script_folder(temp.path(), "table", &[("handler.py", handler), ("requirements.txt", "tabulate==0.9.0\n")]);
    let output = server.cli(&["deploy", dir.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "deployed table version 1 (template python)\n");
    let progress = String::from_utf8_lossy(&output.stderr);
    assert!(progress.contains("s] dependencies: $ "), "plain progress lines: {progress}");
    assert!(progress.contains("pip install"), "plain progress lines: {progress}");
    let (status, body) = server.invoke("table", json!({"payload": "[{\"sku\": \"A-1\", \"qty\": 2}]"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], "| sku   |   qty |\n|-------|-------|\n| A-1   |     2 |");
    let log = server.cli_ok(&["logs", "table", "--build"]);
    assert!(log.contains("Successfully installed tabulate-0.9.0"), "{log}");
}

#[test]
fn node_dependency_from_npm() {
    let server = Server::start();
    let temp = tempfile::tempdir().unwrap();
    let index = "\
const isNumber = require('is-number');
module.exports = async (data) => {
  data.payload = JSON.stringify(JSON.parse(data.payload).map((value) => isNumber(value)));
  return data;
};
";
    let package = r#"{"name": "checks", "version": "1.0.0", "dependencies": {"is-number": "7.0.0"}}"#;
    let dir = script_folder(temp.path(), "checks", &[("index.js", index), ("package.json", package)]);
    let (status, body) = deploy(&server, &dir, "checks");
    assert_eq!(status, 201, "{body}");
    let (status, body) = server.invoke("checks", json!({"payload": "[1, \"2\", \"x\", null]"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], "[true,true,false,false]");
}

#[test]
fn cache_hit_runs_no_build_step_local() {
    cache_hit_runs_no_build_step(StoreKind::Local);
}

#[test]
fn cache_hit_runs_no_build_step_s3() {
    cache_hit_runs_no_build_step(StoreKind::S3);
}

fn cache_hit_runs_no_build_step(store: StoreKind) {
    let temp = tempfile::tempdir().unwrap();
    let counter = temp.path().join("counter");
    let templates = counting_templates(temp.path(), &counter);
    let (_s3, server) = start_counting_server(store, &templates);
    let dir = script_folder(temp.path(), "app", &[("handler.py", &counting_handler("a:")), ("deps.txt", "1"), ("kubefaas.toml", "template = \"counting\"\n")]);

    let (status, body) = deploy(&server, &dir, "first");
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["build"]["outcome"], "built");
    assert_eq!(step_runs(&counter), 1);

    for name in ["second", "first"] {
        let (status, body) = deploy(&server, &dir, name);
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["build"]["outcome"], "cache_hit", "{name}");
    }
    assert_eq!(step_runs(&counter), 1, "a cache hit runs no build step");
    assert_eq!(server.invoke("second", json!({})).1["payload"], "a:1");
}

#[test]
fn code_change_reuses_dependency_layer_local() {
    code_change_reuses_dependency_layer(StoreKind::Local);
}

#[test]
fn code_change_reuses_dependency_layer_s3() {
    code_change_reuses_dependency_layer(StoreKind::S3);
}

fn code_change_reuses_dependency_layer(store: StoreKind) {
    let temp = tempfile::tempdir().unwrap();
    let counter = temp.path().join("counter");
    let templates = counting_templates(temp.path(), &counter);
    let (_s3, server) = start_counting_server(store, &templates);

    let dir = script_folder(temp.path(), "app", &[("handler.py", &counting_handler("a:")), ("deps.txt", "1"), ("kubefaas.toml", "template = \"counting\"\n")]);
    assert_eq!(deploy(&server, &dir, "app").0, 201);
    assert_eq!(server.invoke("app", json!({})).1["payload"], "a:1");

    let dir = script_folder(temp.path(), "app", &[("handler.py", &counting_handler("b:")), ("deps.txt", "1"), ("kubefaas.toml", "template = \"counting\"\n")]);
    let (status, body) = deploy(&server, &dir, "app");
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["build"]["outcome"], "built");
    assert_eq!(step_runs(&counter), 1, "a code-only change reuses the dependency layer");
    assert_eq!(server.invoke("app", json!({})).1["payload"], "b:1");
    let log = server.cli_ok(&["logs", "app", "--build"]);
    assert!(log.contains("dependencies: layer"), "{log}");
    assert!(log.contains("reused"), "{log}");

    // Another script with the same dependency file shares the layer.
    let other = script_folder(temp.path(), "other", &[("handler.py", &counting_handler("c:")), ("deps.txt", "1"), ("kubefaas.toml", "template = \"counting\"\n")]);
    assert_eq!(deploy(&server, &other, "other").0, 201);
    assert_eq!(step_runs(&counter), 1, "scripts with the same dependencies share the layer");

    let dir = script_folder(temp.path(), "app", &[("handler.py", &counting_handler("b:")), ("deps.txt", "2"), ("kubefaas.toml", "template = \"counting\"\n")]);
    assert_eq!(deploy(&server, &dir, "app").0, 201);
    assert_eq!(step_runs(&counter), 2, "a changed dependency file rebuilds the layer");
    assert_eq!(server.invoke("app", json!({})).1["payload"], "b:2");
}

#[test]
fn concurrent_deploys_build_once_local() {
    concurrent_deploys_build_once(StoreKind::Local);
}

#[test]
fn concurrent_deploys_build_once_s3() {
    concurrent_deploys_build_once(StoreKind::S3);
}

fn concurrent_deploys_build_once(store: StoreKind) {
    let temp = tempfile::tempdir().unwrap();
    let counter = temp.path().join("counter");
    let templates = counting_templates(temp.path(), &counter);
    let (_s3, server) = start_counting_server(store, &templates);
    let dir = script_folder(temp.path(), "app", &[("handler.py", &counting_handler("x:")), ("deps.txt", "7"), ("kubefaas.toml", "template = \"counting\"\n")]);
    let outcomes: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let (server, dir) = (&server, &dir);
                scope.spawn(move || {
                    let (status, body) = deploy(server, dir, &format!("copy-{i}"));
                    assert_eq!(status, 201, "{body}");
                    body["build"]["outcome"].as_str().unwrap().to_string()
                })
            })
            .collect();
        handles.into_iter().map(|handle| handle.join().unwrap()).collect()
    });
    assert_eq!(step_runs(&counter), 1, "one build for six concurrent deploys");
    assert_eq!(outcomes.iter().filter(|outcome| *outcome == "built").count(), 1, "{outcomes:?}");
    for i in 0..6 {
        assert_eq!(server.invoke(&format!("copy-{i}"), json!({})).1["payload"], "x:7");
    }
}

#[test]
fn broken_dependency_file_fails_the_build_local() {
    broken_dependency_file_fails_the_build(StoreKind::Local);
}

#[test]
fn broken_dependency_file_fails_the_build_s3() {
    broken_dependency_file_fails_the_build(StoreKind::S3);
}

fn broken_dependency_file_fails_the_build(store: StoreKind) {
    let s3 = matches!(store, StoreKind::S3).then(S3Server::start);
    let server = match &s3 {
        Some(s3) => with_s3(Server::builder(), s3).start(),
        None => Server::start(),
    };
    let temp = tempfile::tempdir().unwrap();
    let dir = script_folder(
        temp.path(),
        "broken-deps",
        &[("handler.py", "def handle(data):\n    return data\n"), ("requirements.txt", "kubefaas-no-such-package-xyz==1.0\n")],
    );
    let (status, body) = deploy(&server, &dir, "broken-deps");
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["kind"], "build_failed");
    let tail = body["error"]["log_tail"].as_str().unwrap();
    assert!(tail.contains("No matching distribution found for kubefaas-no-such-package-xyz==1.0"), "{tail}");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("the build failed: ERROR:"), "{body}");

    let (status, body) = server.invoke("broken-deps", json!({}));
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["kind"], "build_failed");
    let listing = server.cli_ok(&["ls"]);
    let row = listing.lines().find(|line| line.starts_with("broken-deps")).expect("the script is listed");
    assert!(row.contains(" failed "), "ls shows the failed build: {row}");

    let log = server.cli_ok(&["logs", "broken-deps", "--build"]);
    assert!(log.contains("$ "), "the whole log has the step: {log}");
    assert!(log.contains("pip install"), "the whole log has the step: {log}");

    let output = server.cli(&["deploy", dir.to_str().unwrap()]);
    assert!(!output.status.success(), "deploy exits non-zero on a failed build");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("build_failed"), "{stderr}");
    assert!(stderr.contains("No matching distribution"), "{stderr}");

    if let Some(s3) = &s3 {
        let keys = s3.keys();
        assert!(keys.iter().all(|key| !key.starts_with("artifacts/")), "no manifest for a failed build: {keys:?}");
    }

    // A failed redeploy of a working script leaves the working version serving.
    let fixed = script_folder(temp.path(), "fixed", &[("handler.py", "def handle(data):\n    data['payload'] = 'fixed'\n    return data\n")]);
    assert_eq!(deploy(&server, &fixed, "broken-deps").0, 201);
    let (status, body) = deploy(&server, &dir, "broken-deps");
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["serving_version"], 2);
    let (status, body) = server.invoke("broken-deps", json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], "fixed");
    let output = server.cli(&["deploy", dir.to_str().unwrap(), "--name", "broken-deps"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--- build log ---"), "the failed build's log: {stderr}");
    assert!(stderr.contains("pip install"), "the failed build's log: {stderr}");
    assert!(stderr.contains("version 2 of broken-deps keeps serving"), "{stderr}");

    let leftovers: Vec<_> = std::fs::read_dir(server.data_dir.join("tmp")).unwrap().flatten().map(|entry| entry.path()).collect();
    assert!(leftovers.is_empty(), "a failed build leaves nothing behind: {leftovers:?}");
    let dependency_layers = server.data_dir.join("layers/dependencies");
    let layers: Vec<_> = std::fs::read_dir(&dependency_layers).map(|dir| dir.flatten().count()).into_iter().collect();
    assert!(layers.iter().all(|count| *count == 0), "no half-built dependency layer: {layers:?}");
}

#[test]
fn s3_store_serves_a_second_server_without_building() {
    let temp = tempfile::tempdir().unwrap();
    let counter = temp.path().join("counter");
    let templates = counting_templates(temp.path(), &counter);
    let s3 = S3Server::start();
    let dir = script_folder(temp.path(), "app", &[("handler.py", &counting_handler("s3:")), ("deps.txt", "5"), ("kubefaas.toml", "template = \"counting\"\n")]);

    let first = with_s3(Server::builder().arg("--templates").arg(templates.to_str().unwrap()), &s3).start();
    assert_eq!(deploy(&first, &dir, "app").0, 201);
    drop(first);
    let keys = s3.keys();
    assert_eq!(keys.iter().filter(|key| key.starts_with("artifacts/")).count(), 1, "{keys:?}");
    assert_eq!(keys.iter().filter(|key| key.starts_with("layers/dependencies/")).count(), 1, "{keys:?}");
    assert_eq!(keys.iter().filter(|key| key.starts_with("layers/code/")).count(), 1, "{keys:?}");

    // A second server with an empty data dir downloads the layers instead of building.
    let second = with_s3(Server::builder().arg("--templates").arg(templates.to_str().unwrap()), &s3).start();
    let (status, body) = deploy(&second, &dir, "app");
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["build"]["outcome"], "cache_hit");
    assert_eq!(step_runs(&counter), 1);
    assert_eq!(second.invoke("app", json!({})).1["payload"], "s3:5");
}

#[test]
fn go_script_is_compiled_and_served() {
    let server = Server::start();
    let handler = r#"package main

import (
	"errors"
	"strings"
)

func handle(data *Data) error {
	text := string(data.Payload)
	if text == "fail" {
		return errors.New("cannot ship to the moon")
	}
	data.Payload = []byte(strings.ToUpper(text))
	data.Meta["lang"] = "go"
	data.Logs = append(data.Logs, "uppercased "+data.Variables["order"])
	return nil
}
"#;
    let (status, body) = server.deploy_file("upper-go", "handler.go", handler);
    assert_eq!(status, 201, "{body}");
    let (status, body) = server.invoke("upper-go", json!({"payload": "hello", "variables": {"order": "17"}}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], "HELLO");
    assert_eq!(body["meta"], json!({"lang": "go"}));
    assert_eq!(body["logs"], json!(["uppercased 17"]));

    let (status, body) = server.invoke("upper-go", json!({"payload": "fail"}));
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["kind"], "script_error");
    assert_eq!(body["error"]["message"], "error: cannot ship to the moon");

    let broken = "package main\nfunc handle(data *Data) error { return nil ";
    let (status, body) = server.deploy_file("broken-go", "handler.go", broken);
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["kind"], "build_failed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("syntax error"), "the compiler's message: {message}");
}

/// Returns whether any process on the machine runs `sleep` with `argument`.
fn sleep_running(argument: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        cmdline == format!("sleep\0{argument}\0").into_bytes()
    })
}

#[test]
fn cancelled_build_leaves_nothing_behind() {
    let temp = tempfile::tempdir().unwrap();
    let template_dir = temp.path().join("templates/slow");
    std::fs::create_dir_all(&template_dir).unwrap();
    let shim = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/python/shim.py")).unwrap();
    std::fs::write(template_dir.join("shim.py"), shim).unwrap();
    let description = r#"name = "slow"
version = "1"
extensions = ["slow"]
entry = "handler.py"
shim = "shim.py"

[interpreter]
command = "python3"
resolve = ["-c", "import sys; print(sys.executable)"]

[dependencies]
file = "deps.txt"
steps = [["sh", "-c", "mkdir -p lib && echo partial > lib/partial.py && sleep 31.25"]]

[run]
args = ["-u", "{shim}"]
"#;
    std::fs::write(template_dir.join("template.toml"), description).unwrap();
    let server = Server::builder().arg("--templates").arg(temp.path().join("templates").to_str().unwrap()).start();
    let dir = script_folder(
        temp.path(),
        "app",
        &[("handler.py", ECHO), ("deps.txt", "1"), ("kubefaas.toml", "template = \"slow\"\n")],
    );

    let mut archive = tar::Builder::new(Vec::new());
    archive.append_dir_all(".", &dir).unwrap();
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    let sent = client
        .put(format!("{}/v1/scripts/app", server.url))
        .header("content-type", "application/x-tar")
        .body(archive.into_inner().unwrap())
        .send();
    assert!(sent.is_err(), "the client gives up while the step runs");

    server.wait_until(Duration::from_secs(10), "the cancelled build's folders are removed", || {
        std::fs::read_dir(server.data_dir.join("tmp")).unwrap().next().is_none()
    });
    server.wait_until(Duration::from_secs(10), "the build step's processes are killed", || !sleep_running("31.25"));
    let layers = std::fs::read_dir(server.data_dir.join("layers/dependencies")).map(|dir| dir.count()).unwrap_or(0);
    assert_eq!(layers, 0, "no dependency layer from the cancelled build");
    assert_eq!(server.request("GET", "/v1/scripts/app", None).0, 404, "no version was recorded");
}
