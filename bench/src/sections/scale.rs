//! Scale: call latency and server memory with many registered scripts. One
//! server per level runs side by side, and the runs go round the servers,
//! so noise on the machine falls on every level alike.

use std::cell::Cell as SharedCounter;

use serde_json::json;

use super::ECHO_PY;
use crate::http::Connection;
use crate::instance::CallTemplate;
use crate::load::{Caller, HttpCaller, run_load};
use crate::plan::{Plan, Tools};
use crate::report::{Cell, Row, Target, Unit};
use crate::server::Server;
use crate::stats::PerRun;

const SECTION: &str = "4 scale";
/// The design target at the largest level: within 10 % of the smallest.
const LATENCY_RATIO_TARGET: f64 = 1.10;
/// Uploads in flight while registering scripts.
const REGISTER_CONCURRENCY: usize = 8;
/// The script every level calls; all scripts have the same content.
const CALLED_SCRIPT: &str = "scale-00000";

struct Level {
    scripts: usize,
    server: Server,
    p50: PerRun,
    p99: PerRun,
    resident: PerRun,
}

pub async fn run(tools: &Tools, plan: &Plan) -> anyhow::Result<Vec<Row>> {
    let mut levels = Vec::new();
    for &scripts in &plan.scale_levels {
        let server = Server::start(&tools.server, "idle_timeout_seconds = 3600\n")?;
        register(&server, scripts).await?;
        levels.push(Level { scripts, server, p50: PerRun::default(), p99: PerRun::default(), resident: PerRun::default() });
    }

    let call = CallTemplate { payload: b"{\"order\": 17}".to_vec(), variables: json!({}) };
    for run in 0..plan.runs {
        for level in &mut levels {
            eprintln!("scale: run {}/{}, {} scripts", run + 1, plan.runs, level.scripts);
            let mut callers = HttpCaller::open(level.server.address, CALLED_SCRIPT, &call, 1).await?;
            run_load(&mut callers, 50).await?;
            let latencies = run_load(&mut callers, plan.scale_calls).await?;
            level.p50.push(latencies.p50());
            level.p99.push(latencies.p99());
            level.resident.push(level.server.memory()?.resident as f64);
        }
    }

    let (baseline, others) = levels.split_first().expect("at least one scale level");
    let largest = others.last().map(|level| level.scripts);
    let mut rows = Vec::new();
    for level in others {
        let describe = |figure: &str| {
            format!("{figure} with {} scripts, {} calls/run; baseline {} scripts", level.scripts, plan.scale_calls, baseline.scripts)
        };
        let mut p50 = Row::new(
            SECTION,
            describe("call p50"),
            Cell::values(level.p50.clone(), Unit::Time),
            Cell::values(baseline.p50.clone(), Unit::Time),
        );
        if Some(level.scripts) == largest {
            p50 = p50.with_target(Target::RatioAtMost(LATENCY_RATIO_TARGET));
        }
        rows.push(p50);
        rows.push(Row::new(
            SECTION,
            describe("call p99"),
            Cell::values(level.p99.clone(), Unit::Time),
            Cell::values(baseline.p99.clone(), Unit::Time),
        ));
        rows.push(Row::new(
            SECTION,
            format!("server VmRSS with {} scripts; baseline {} scripts", level.scripts, baseline.scripts),
            Cell::values(level.resident.clone(), Unit::Bytes),
            Cell::values(baseline.resident.clone(), Unit::Bytes),
        ));
    }
    Ok(rows)
}

/// Deploys `count` scripts with the same content, several uploads at a
/// time, and invokes the first so it has a warm instance.
async fn register(server: &Server, count: usize) -> anyhow::Result<()> {
    eprintln!("scale: registering {count} scripts");
    let next = SharedCounter::new(0);
    let mut callers = Vec::new();
    for _ in 0..REGISTER_CONCURRENCY.min(count) {
        callers.push(Registrar { connection: Connection::open(server.address).await?, next: &next });
    }
    run_load(&mut callers, count).await?;
    Ok(())
}

/// Deploys the next script of the numbered series on each call.
struct Registrar<'a> {
    connection: Connection,
    next: &'a SharedCounter<usize>,
}

impl Caller for Registrar<'_> {
    async fn call(&mut self) -> anyhow::Result<()> {
        let index = self.next.get();
        self.next.set(index + 1);
        let name = format!("scale-{index:05}");
        self.connection.deploy_file(&name, "handler.py", ECHO_PY).await?.expect_status(201, "registering a script")?;
        Ok(())
    }
}
