//! Burst: many concurrent calls to a script with no instance (built, but
//! scaled to zero), with the server's default pool settings. The baseline
//! is the same burst right after, when the instances are warm.

use std::time::Instant;

use bytes::Bytes;

use super::ECHO_PY;
use crate::http::Connection;
use crate::plan::{Plan, Tools};
use crate::report::{Cell, Row, Unit};
use crate::server::Server;
use crate::stats::{PerRun, percentile};

const SECTION: &str = "6 burst";

/// Per-run figures of one kind of burst.
#[derive(Default)]
struct BurstFigures {
    p50: PerRun,
    p99: PerRun,
    errors: PerRun,
}

pub async fn run(tools: &Tools, plan: &Plan) -> anyhow::Result<Vec<Row>> {
    let server = Server::start(&tools.server, "idle_timeout_seconds = 3600\n")?;
    let mut admin = Connection::open(server.address).await?;
    let mut cold = BurstFigures::default();
    let mut warm = BurstFigures::default();
    let mut instances = PerRun::default();
    let mut first_error = None;
    for run in 0..plan.runs {
        eprintln!("burst: run {}/{}, {} calls", run + 1, plan.runs, plan.burst_calls);
        // A new name per run with the same content: a cache hit, no instance.
        let script = format!("burst-{run}");
        admin.deploy_file(&script, "handler.py", ECHO_PY).await?.expect_status(201, "deploying the burst script")?;
        let mut connections = Vec::with_capacity(plan.burst_calls);
        for _ in 0..plan.burst_calls {
            connections.push(Connection::open(server.address).await?);
        }
        for (figures, temperature) in [(&mut cold, "cold"), (&mut warm, "warm")] {
            let (mut latencies, errors) = burst(&mut connections, &script).await;
            figures.p50.push(percentile(&mut latencies, 0.50));
            figures.p99.push(percentile(&mut latencies, 0.99));
            figures.errors.push(errors.len() as f64);
            if let Some(error) = errors.into_iter().next() {
                first_error.get_or_insert(format!("{temperature} burst: {error}"));
            }
            if temperature == "cold" {
                instances.push(admin.instances(&script).await? as f64);
            }
        }
    }
    if let Some(error) = first_error {
        eprintln!("burst: first failed call: {error}");
    }

    let calls = plan.burst_calls;
    let row = |figure: &str, measured: &PerRun, baseline: &PerRun, unit| {
        Row::new(
            SECTION,
            format!("{figure}, {calls} concurrent calls to a script with no instance; baseline the same burst warm"),
            Cell::values(measured.clone(), unit),
            Cell::values(baseline.clone(), unit),
        )
    };
    Ok(vec![
        row("p50", &cold.p50, &warm.p50, Unit::Time),
        row("p99", &cold.p99, &warm.p99, Unit::Time),
        row("failed calls", &cold.errors, &warm.errors, Unit::Count),
        Row::new(
            SECTION,
            "instances started by the cold burst (default settings: at most 4, one of them may be the prewarmed instance)",
            Cell::values(instances, Unit::Count),
            Cell::Empty,
        ),
    ])
}

/// Sends one call on every connection at once; returns the latencies of the
/// successful calls and a message per failed call.
async fn burst(connections: &mut [Connection], script: &str) -> (Vec<f64>, Vec<String>) {
    let body = Bytes::from_static(br#"{"payload": "burst"}"#);
    let calls = connections.iter_mut().map(|connection| {
        let body = body.clone();
        async move {
            let started = Instant::now();
            let response = connection.invoke(script, body).await?;
            let elapsed = started.elapsed().as_secs_f64();
            let reply = response.expect_status(200, "invoking during the burst")?.json()?;
            anyhow::ensure!(reply["payload"] == "burst", "the script returned {reply}");
            Ok(elapsed)
        }
    });
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    for result in futures::future::join_all(calls).await {
        match result {
            Ok(elapsed) => latencies.push(elapsed),
            Err(error) => errors.push(format!("{error:#}")),
        }
    }
    (latencies, errors)
}
