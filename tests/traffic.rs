//! Traffic tests: bursts, idleness races, deletes and redeploys under load,
//! a full queue, concurrent calls per instance, raw HTTP functions, call
//! records and metrics, through the real server.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::Server;
use serde_json::{Value, json};

const ECHO_PY: &str = "def handle(data):\n    return data\n";

/// Sleeps for the seconds in the payload, then returns `tag`.
fn sleeper(tag: &str) -> String {
    format!("import time\ndef handle(data):\n    time.sleep(float(data['payload'] or 0))\n    data['payload'] = '{tag}'\n    return data\n")
}

/// Reads /metrics with a Prometheus text-format parser and returns each
/// sample's value by metric name and sorted labels.
fn metrics(server: &Server) -> HashMap<String, f64> {
    let text = server.http().get(format!("{}/metrics", server.url)).send().unwrap().text().unwrap();
    let lines = text.lines().map(|line| Ok(line.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format");
    let mut samples = HashMap::new();
    for sample in scrape.samples {
        let mut labels: Vec<String> = sample.labels.iter().map(|(key, value)| format!("{key}={value}")).collect();
        labels.sort();
        let value = match sample.value {
            prometheus_parse::Value::Counter(value)
            | prometheus_parse::Value::Gauge(value)
            | prometheus_parse::Value::Untyped(value) => value,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |bucket| bucket.count),
            prometheus_parse::Value::Summary(_) => continue,
        };
        samples.insert(format!("{}{{{}}}", sample.metric, labels.join(",")), value);
    }
    samples
}

/// Sends an invoke request on a raw connection and closes the connection
/// after `wait`, without reading the reply.
fn invoke_and_hang_up(server: &Server, name: &str, body: Value, wait: Duration) {
    use std::io::Write;

    let address = server.url.trim_start_matches("http://");
    let body = body.to_string();
    let mut connection = std::net::TcpStream::connect(address).unwrap();
    write!(
        connection,
        "POST /v1/scripts/{name}/invoke HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    std::thread::sleep(wait);
    drop(connection);
}

fn concurrent<T: Send>(count: usize, call: impl Fn(usize) -> T + Sync) -> Vec<T> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count).map(|i| scope.spawn({
            let call = &call;
            move || call(i)
        })).collect();
        handles.into_iter().map(|handle| handle.join().unwrap()).collect()
    })
}

#[test]
fn cold_burst_of_200_calls_builds_once() {
    let mut server = Server::builder().config("max_instances_per_script = 4\n").start();
    assert_eq!(server.deploy_file("burst", "handler.py", ECHO_PY).0, 201);

    // Restart without the built artifact, so the burst itself must build.
    let data_dir = server.data_dir.clone();
    let _keep = server.keep_data_dir();
    server.stop();
    std::fs::remove_dir_all(data_dir.join("store")).unwrap();
    std::fs::remove_dir_all(data_dir.join("layers")).unwrap();
    let server = Server::builder().data_dir(&data_dir).config("max_instances_per_script = 4\n").start();

    let results = concurrent(200, |i| server.invoke("burst", json!({"payload": format!("call {i}")})));
    for (i, (status, body)) in results.iter().enumerate() {
        assert_eq!(*status, 200, "call {i}: {body}");
        assert_eq!(body["payload"], format!("call {i}"));
    }
    let samples = metrics(&server);
    assert_eq!(samples.get("kubefaas_builds_total{outcome=built}"), Some(&1.0), "{samples:?}");
    let cold_starts = samples["kubefaas_cold_starts_total{script=burst}"];
    assert!((1.0..=4.0).contains(&cold_starts), "instances started: {cold_starts}");
    assert!(server.instances("burst") <= 4);
    assert_eq!(samples["kubefaas_calls_total{outcome=ok,script=burst}"], 200.0);
}

#[test]
fn call_during_scale_down_is_served() {
    let server = Server::builder().arg("--idle-timeout").arg("0.3").start();
    assert_eq!(server.deploy_file("edge", "handler.py", ECHO_PY).0, 201);
    // Calls spaced around the idle window land before, during and after
    // the instance is stopped; none may be lost.
    for i in 0..24 {
        let (status, body) = server.invoke("edge", json!({"payload": format!("{i}")}));
        assert_eq!(status, 200, "call {i}: {body}");
        assert_eq!(body["payload"], format!("{i}"));
        std::thread::sleep(Duration::from_millis(240 + (i % 6) * 20));
    }
}

#[test]
fn delete_lets_calls_in_flight_finish() {
    let server = Server::builder().config("max_instances_per_script = 2\n").start();
    assert_eq!(server.deploy_file("doomed", "handler.py", &sleeper("done")).0, 201);
    assert_eq!(server.deploy_file("bystander", "handler.py", ECHO_PY).0, 201);
    assert_eq!(server.invoke("doomed", json!({"payload": "0"})).0, 200);

    let results = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..4).map(|_| scope.spawn(|| server.invoke("doomed", json!({"payload": "1.5"})))).collect();
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(server.request("DELETE", "/v1/scripts/doomed", None).0, 200);
        let (status, body) = server.invoke("bystander", json!({"payload": "still here"}));
        assert_eq!(status, 200, "other scripts are unaffected: {body}");
        assert_eq!(body["payload"], "still here");
        calls.into_iter().map(|call| call.join().unwrap()).collect::<Vec<_>>()
    });
    let mut finished = 0;
    for (status, body) in &results {
        match status {
            200 => {
                assert_eq!(body["payload"], "done");
                finished += 1;
            }
            404 => assert_eq!(body["error"]["kind"], "not_found", "{body}"),
            other => panic!("a call in flight during delete ended with {other}: {body}"),
        }
    }
    assert!(finished >= 2, "the calls already running finish: {results:?}");
    assert_eq!(server.invoke("doomed", json!({})).0, 404);
    server.wait_until(Duration::from_secs(10), "the deleted script's instances stop", || {
        common::child_pids(server.pid()).len() <= 1
    });
    let series: Vec<String> = metrics(&server).into_keys().filter(|key| key.contains("doomed")).collect();
    assert!(series.is_empty(), "the deleted script has no metrics left: {series:?}");
    assert!(metrics(&server).keys().any(|key| key.contains("bystander")));
}

#[test]
fn redeploy_serves_new_calls_the_new_version() {
    let server = Server::builder().config("max_instances_per_script = 2\n").start();
    assert_eq!(server.deploy_file("moving", "handler.py", &sleeper("v1")).0, 201);
    assert_eq!(server.invoke("moving", json!({"payload": "0"})).1["payload"], "v1");
    std::thread::scope(|scope| {
        let in_flight = scope.spawn(|| server.invoke("moving", json!({"payload": "1.5"})));
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(server.deploy_file("moving", "handler.py", &sleeper("v2")).0, 201);
        let (status, body) = server.invoke("moving", json!({"payload": "0"}));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["payload"], "v2", "new calls get the new version");
        let (status, body) = in_flight.join().unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["payload"], "v1", "the call in flight finishes on the old version");
    });
}

#[test]
fn full_queue_answers_overloaded() {
    let server = Server::builder()
        .config("max_instances_per_script = 1\nmax_waiting_calls_per_script = 2\n")
        .start();
    assert_eq!(server.deploy_file("narrow", "handler.py", &sleeper("ok")).0, 201);
    assert_eq!(server.invoke("narrow", json!({"payload": "0"})).0, 200);
    let results = concurrent(8, |_| {
        let response = server
            .http()
            .post(format!("{}/v1/scripts/narrow/invoke", server.url))
            .json(&json!({"payload": "1"}))
            .send()
            .unwrap();
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").map(|value| value.to_str().unwrap().to_string());
        let body: Value = response.json().unwrap();
        (status, retry_after, body)
    });
    let overloaded: Vec<_> = results.iter().filter(|(status, _, _)| *status == 503).collect();
    let served = results.iter().filter(|(status, _, _)| *status == 200).count();
    assert!(!overloaded.is_empty(), "8 calls on 1 instance with 2 places in the queue: {results:?}");
    assert!(served >= 3, "the running call and the queued ones are served: {results:?}");
    assert_eq!(served + overloaded.len(), 8, "{results:?}");
    for (_, retry_after, body) in overloaded {
        assert_eq!(body["error"]["kind"], "overloaded");
        assert_eq!(retry_after.as_deref(), Some("1"));
    }
}

/// A caller that disconnects does not free its instance early: the call
/// runs on, so the next caller gets another instance, and the first
/// instance takes calls again once its reply is in.
#[test]
fn disconnected_caller_keeps_instance_busy() {
    let server = Server::builder().config("max_instances_per_script = 2\n").start();
    let script = "\
import time, uuid
INSTANCE = uuid.uuid4().hex
def handle(data):
    time.sleep(float(data['payload'] or 0))
    data['payload'] = INSTANCE
    return data
";
    assert_eq!(server.deploy_file("marked", "handler.py", script).0, 201);
    let (status, body) = server.invoke("marked", json!({"payload": "0"}));
    assert_eq!(status, 200, "{body}");
    let first = body["payload"].as_str().unwrap().to_string();

    invoke_and_hang_up(&server, "marked", json!({"payload": "2"}), Duration::from_millis(300));

    let (status, body) = server.invoke("marked", json!({"payload": "0"}));
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["payload"], first.as_str(), "the first instance still runs the abandoned call");
    assert_eq!(server.instances("marked"), 2);

    server.wait_until(Duration::from_secs(10), "the first instance serves again", || {
        let results = concurrent(2, |_| server.invoke("marked", json!({"payload": "0.3"})));
        results.iter().all(|(status, _)| *status == 200)
            && results.iter().any(|(_, body)| body["payload"] == first.as_str())
    });

    let (status, body) = server.request("GET", "/v1/scripts/marked/logs", None);
    assert_eq!(status, 200);
    let cancelled: Vec<_> = body["calls"].as_array().unwrap().iter().filter(|call| call["outcome"] == "cancelled").collect();
    assert_eq!(cancelled.len(), 1, "the abandoned call is recorded: {body}");
    assert_eq!(cancelled[0]["logs"], json!(["the caller disconnected before the reply"]));
    assert_eq!(metrics(&server)["kubefaas_calls_total{outcome=cancelled,script=marked}"], 1.0);
}

/// A caller that disconnects while its payload is still being written to
/// the instance leaves the connection out of step, so the instance is
/// replaced: the call it was running fails, and the next call is served.
#[test]
fn disconnect_during_frame_write_replaces_instance() {
    let server = Server::builder().config("max_instances_per_script = 1\ninstance_concurrency = 2\n").start();
    // A blocked event loop reads nothing, so a large frame cannot be written whole.
    let script = "\
module.exports = async (data) => {
  if (data.payload === 'block') {
    const end = Date.now() + 2000;
    while (Date.now() < end) {}
  }
  return data;
};
";
    assert_eq!(server.deploy_file("blocking", "index.js", script).0, 201);
    assert_eq!(server.invoke("blocking", json!({"payload": "warm"})).0, 200);

    std::thread::scope(|scope| {
        let blocked = scope.spawn(|| server.invoke("blocking", json!({"payload": "block"})));
        std::thread::sleep(Duration::from_millis(300));
        let large = "y".repeat(20 * 1024 * 1024);
        invoke_and_hang_up(&server, "blocking", json!({"payload": large}), Duration::from_millis(500));
        let (status, body) = blocked.join().unwrap();
        assert_eq!(status, 502, "the running call fails with its instance: {body}");
        assert_eq!(body["error"]["kind"], "crashed");
    });

    let (status, body) = server.invoke("blocking", json!({"payload": "after"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], "after");
    let (_, logs) = server.request("GET", "/v1/scripts/blocking/logs", None);
    let outcomes: Vec<&str> = logs["calls"].as_array().unwrap().iter().map(|call| call["outcome"].as_str().unwrap()).collect();
    assert!(outcomes.contains(&"cancelled"), "{outcomes:?}");
}

/// Callers that disconnect while queued for an instance leave the queue:
/// they do not fill it for the callers after them.
#[test]
fn abandoned_queued_calls_leave_queue() {
    let server = Server::builder()
        .config("max_instances_per_script = 1\nmax_waiting_calls_per_script = 2\n")
        .start();
    assert_eq!(server.deploy_file("narrow", "handler.py", &sleeper("ok")).0, 201);
    assert_eq!(server.invoke("narrow", json!({"payload": "0"})).0, 200);

    std::thread::scope(|scope| {
        let busy = scope.spawn(|| server.invoke("narrow", json!({"payload": "1.5"})));
        std::thread::sleep(Duration::from_millis(300));
        for _ in 0..2 {
            invoke_and_hang_up(&server, "narrow", json!({"payload": "0"}), Duration::from_millis(200));
        }
        let (status, body) = busy.join().unwrap();
        assert_eq!(status, 200, "{body}");
    });

    server.wait_until(Duration::from_secs(5), "the queue is empty", || {
        metrics(&server)["kubefaas_queue_length{script=narrow}"] == 0.0
    });
    let results = concurrent(3, |_| server.invoke("narrow", json!({"payload": "0.2"})));
    for (status, body) in &results {
        assert_eq!(*status, 200, "a call and two queued ones fit: {body}");
    }
}

#[test]
fn instance_serves_concurrent_calls() {
    let server = Server::builder()
        .config("max_instances_per_script = 1\ninstance_concurrency = 4\n")
        .start();
    let python = "\
import threading, time
lock = threading.Lock()
active = 0
def handle(data):
    global active
    with lock:
        active += 1
        seen = active
    time.sleep(0.5)
    with lock:
        active -= 1
    data['payload'] = str(seen)
    return data
";
    let node = "\
let active = 0;
module.exports = async (data) => {
  active += 1;
  const seen = active;
  await new Promise((resolve) => setTimeout(resolve, 500));
  active -= 1;
  data.payload = String(seen);
  return data;
};
";
    for (name, file, script) in [("parallel-py", "handler.py", python), ("parallel-js", "index.js", node)] {
        assert_eq!(server.deploy_file(name, file, script).0, 201);
        assert_eq!(server.invoke(name, json!({})).0, 200);
        let results = concurrent(4, |_| server.invoke(name, json!({})));
        let max_seen = results
            .iter()
            .map(|(status, body)| {
                assert_eq!(*status, 200, "{body}");
                body["payload"].as_str().unwrap().parse::<u32>().unwrap()
            })
            .max()
            .unwrap();
        assert!(max_seen > 1, "{name}: calls overlapped in one instance (max active {max_seen})");
        assert_eq!(server.instances(name), 1, "{name}");
    }
}

#[test]
fn raw_http_round_trips() {
    let server = Server::start();
    let python = "\
def handle(data):
    request = data['http']
    body = data['payload']
    if isinstance(body, str):
        body = body.encode()
    data['payload'] = bytes(reversed(body))
    data['response'] = {
        'status': 201 if request['method'] == 'PUT' else 200,
        'headers': {
            'content-type': 'application/x-reversed',
            'x-method': request['method'],
            'x-path': request['path'],
            'x-query': request['query'],
            'x-client': request['headers'].get('x-client', ''),
        },
    }
    return data
";
    let node = "\
module.exports = async (data) => {
  const request = data.http;
  const body = Buffer.isBuffer(data.payload) ? data.payload : Buffer.from(data.payload, 'utf8');
  data.payload = Buffer.from(body).reverse();
  data.response = {
    status: request.method === 'PUT' ? 201 : 200,
    headers: {
      'content-type': 'application/x-reversed',
      'x-method': request.method,
      'x-path': request.path,
      'x-query': request.query,
      'x-client': request.headers['x-client'] || '',
    },
  };
  return data;
};
";
    let body: Vec<u8> = (0..=255u8).chain(b"\x00tail\xff".iter().copied()).cycle().take(300_000).collect();
    let reversed: Vec<u8> = body.iter().rev().copied().collect();
    for (name, file, script) in [("reverse-py", "handler.py", python), ("reverse-js", "index.js", node)] {
        assert_eq!(server.deploy_file(name, file, script).0, 201);
        for method in ["POST", "PUT", "PATCH", "DELETE", "GET"] {
            let sent = if method == "GET" { Vec::new() } else { body.clone() };
            let response = server
                .http()
                .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), format!("{}/v1/http/{name}/orders/17?full=1&x=%20y", server.url))
                .header("x-client", "test-suite")
                .body(sent.clone())
                .send()
                .unwrap();
            let expected_status = if method == "PUT" { 201 } else { 200 };
            assert_eq!(response.status().as_u16(), expected_status, "{name} {method}");
            let headers = response.headers().clone();
            assert_eq!(headers["content-type"], "application/x-reversed", "{name} {method}");
            assert_eq!(headers["x-method"], method, "{name}");
            assert_eq!(headers["x-path"], "/orders/17", "{name}");
            assert_eq!(headers["x-query"], "full=1&x=%20y", "{name}");
            assert_eq!(headers["x-client"], "test-suite", "{name}");
            assert!(headers.contains_key("kubefaas-call-id"), "{name}");
            let expected: Vec<u8> = sent.iter().rev().copied().collect();
            assert_eq!(response.bytes().unwrap().to_vec(), expected, "{name} {method}: binary body reversed");
        }
        let response = server.http().post(format!("{}/v1/http/{name}", server.url)).body(body.clone()).send().unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.bytes().unwrap().to_vec(), reversed, "{name}: the root path works");
    }

    // A script that returns the data object as it came does not echo the
    // request's headers, and the server frames the body itself.
    assert_eq!(server.deploy_file("echo-http", "handler.py", ECHO_PY).0, 201);
    let response = server
        .http()
        .post(format!("{}/v1/http/echo-http/x", server.url))
        .header("x-client", "test-suite")
        .body("{\"x\": 1}")
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(!response.headers().contains_key("x-client"), "{:?}", response.headers());
    assert_eq!(response.headers()["content-length"], "8");
    assert_eq!(response.text().unwrap(), "{\"x\": 1}");

    let bad_status = "def handle(data):\n    data['response'] = {'status': 42}\n    return data\n";
    assert_eq!(server.deploy_file("bad-status", "handler.py", bad_status).0, 201);
    let response = server.http().get(format!("{}/v1/http/bad-status/", server.url)).send().unwrap();
    assert_eq!(response.status().as_u16(), 500);
    let error: Value = response.json().unwrap();
    assert_eq!(error["error"]["kind"], "script_error");
    let response = server.http().get(format!("{}/v1/http/no-such-script/x", server.url)).send().unwrap();
    assert_eq!(response.status().as_u16(), 404);
}

#[test]
fn call_records_and_metrics() {
    let server = Server::builder().config("call_records_per_script = 3\n").start();
    let script = "\
def handle(data):
    if data['payload'] == 'fail':
        raise RuntimeError('card declined')
    data['logs'] = ['handled ' + data['payload']]
    return data
";
    assert_eq!(server.deploy_file("recorded", "handler.py", script).0, 201);
    let mut ids = Vec::new();
    for payload in ["a", "b", "fail", "c", "d"] {
        let response = server
            .http()
            .post(format!("{}/v1/scripts/recorded/invoke", server.url))
            .json(&json!({"payload": payload}))
            .send()
            .unwrap();
        let id = response.headers()["kubefaas-call-id"].to_str().unwrap().to_string();
        assert!(!ids.contains(&id), "call ids are unique");
        ids.push(id);
    }

    let (status, body) = server.request("GET", "/v1/scripts/recorded/logs", None);
    assert_eq!(status, 200);
    let calls = body["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 3, "only the newest calls are kept: {body}");
    assert_eq!(calls[0]["id"], ids[2]);
    assert_eq!(calls[0]["outcome"], "script_error");
    assert_eq!(calls[0]["logs"], json!(["RuntimeError: card declined"]));
    assert_eq!(calls[2]["id"], ids[4]);
    assert_eq!(calls[2]["outcome"], "ok");
    assert_eq!(calls[2]["logs"], json!(["handled d"]));
    let logs = server.cli_ok(&["logs", "recorded"]);
    assert!(logs.contains(&ids[4]), "{logs}");
    assert!(logs.contains("handled d"), "{logs}");

    let samples = metrics(&server);
    assert_eq!(samples["kubefaas_calls_total{outcome=ok,script=recorded}"], 4.0, "{samples:?}");
    assert_eq!(samples["kubefaas_calls_total{outcome=script_error,script=recorded}"], 1.0);
    assert_eq!(samples["kubefaas_call_duration_seconds_count{script=recorded}"], 5.0);
    assert_eq!(samples["kubefaas_cold_starts_total{script=recorded}"], 1.0);
    assert_eq!(samples["kubefaas_instances{script=recorded}"], 1.0);
    assert_eq!(samples["kubefaas_queue_length{script=recorded}"], 0.0);
    assert_eq!(samples["kubefaas_builds_total{outcome=built}"], 1.0);

    // Unknown scripts create no series.
    assert_eq!(server.invoke("never-deployed", json!({})).0, 404);
    assert!(!metrics(&server).keys().any(|key| key.contains("never-deployed")));
}

#[test]
fn prewarmed_instances_take_cold_starts() {
    let temp = tempfile::tempdir().unwrap();
    let log = temp.path().join("server.log");
    let server = Server::builder().prewarm(Some(1)).stderr_file(&log).start();
    let python = "import os\ndef handle(data):\n    data['payload'] = 'py ' + data['payload'] + ' ' + os.environ['REGION']\n    return data\n";
    let node = "module.exports = (data) => ({ payload: `js ${data.payload} ${process.env.REGION}` });\n";
    for (name, file, script) in [("warm-py", "handler.py", python), ("warm-js", "index.js", node)] {
        let (status, body) = server.deploy_folder(name, &[(file, script), ("kubefaas.toml", "[env]\nREGION = \"eu\"\n")]);
        assert_eq!(status, 201, "{body}");
    }
    server.wait_until(Duration::from_secs(10), "the prewarmed instances are ready", || {
        std::fs::read_to_string(&log).unwrap_or_default().matches("script=prewarmed-").count() >= 2
    });
    let (status, body) = server.invoke("warm-py", json!({"payload": "a"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], "py a eu");
    let (status, body) = server.invoke("warm-js", json!({"payload": "b"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], "js b eu");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("prewarmed instance took the script"), "{text}");
    assert!(text.contains("script=warm-py"), "{text}");
    assert!(text.contains("script=warm-js"), "{text}");

    // A script that fails to load in a prewarmed instance fails as it would in a new one.
    assert_eq!(server.deploy_file("warm-broken", "handler.py", "import not_a_module\n").0, 201);
    server.wait_until(Duration::from_secs(10), "a prewarmed python instance is ready again", || {
        std::fs::read_to_string(&log).unwrap_or_default().matches("script=prewarmed-python").count() >= 2
    });
    let (status, body) = server.invoke("warm-broken", json!({}));
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["kind"], "crashed");
    assert!(body["error"]["message"].as_str().unwrap().contains("No module named 'not_a_module'"), "{body}");
}

#[test]
fn prewarm_pool_of_zero_works() {
    let server = Server::builder().prewarm(None).config("prewarm_instances_per_template = 0\n").start();
    assert_eq!(server.deploy_file("cold-only", "handler.py", ECHO_PY).0, 201);
    let (status, body) = server.invoke("cold-only", json!({"payload": "x"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], "x");
    assert_eq!(common::child_pids(server.pid()).len(), 1, "only the script's own instance runs");
}
