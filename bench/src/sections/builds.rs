//! Builds: deploying identical content again (a build cache hit) against an
//! HTTP request that does no work, and a fresh build against a cache hit.
//! Builds with dependencies are in `dependencies`.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use super::{ECHO_PY, dependencies};
use crate::http::{Connection, Response};
use crate::plan::{Plan, Tools};
use crate::report::{Cell, Row, Target, Unit};
use crate::server::Server;
use crate::stats::PerRun;

pub const SECTION: &str = "3 builds";
/// The design target for a build cache hit.
const CACHE_HIT_TARGET: f64 = 10e-3;
/// Requests per run for the cheap figures; each run keeps their median.
const SAMPLES_PER_RUN: usize = 5;

pub async fn run(tools: &Tools, plan: &Plan) -> anyhow::Result<Vec<Row>> {
    let server = Server::start(&tools.server, "")?;
    let mut connection = Connection::open(server.address).await?;
    deploy(&mut connection, "build-cached", ECHO_PY.as_bytes(), None).await?;

    let mut no_op = PerRun::default();
    let mut cache_hit = PerRun::default();
    let mut fresh = PerRun::default();
    // The first round warms up the connection and the server and is not recorded.
    for run in 0..=plan.build_runs {
        eprintln!("builds: run {run}/{}", plan.build_runs);
        let mut no_op_samples = PerRun::default();
        let mut cache_hit_samples = PerRun::default();
        for _ in 0..SAMPLES_PER_RUN {
            let started = Instant::now();
            connection.get("/v1/healthz").await?.expect_status(200, "GET /v1/healthz")?;
            no_op_samples.push(started.elapsed().as_secs_f64());
            cache_hit_samples.push(deploy(&mut connection, "build-cached", ECHO_PY.as_bytes(), Some("cache_hit")).await?);
        }
        let source = format!("{ECHO_PY}# fresh build {run} at {}\n", unique_suffix());
        let fresh_build = deploy(&mut connection, "build-fresh", source.as_bytes(), Some("built")).await?;
        if run > 0 {
            no_op.push(no_op_samples.median());
            cache_hit.push(cache_hit_samples.median());
            fresh.push(fresh_build);
        }
    }

    let mut rows = vec![
        Row::new(
            SECTION,
            format!("cache hit: deploy identical content again (median of {SAMPLES_PER_RUN}/run); baseline GET /v1/healthz"),
            Cell::values(cache_hit.clone(), Unit::Time),
            Cell::values(no_op, Unit::Time),
        )
        .with_target(Target::AtMost(CACHE_HIT_TARGET)),
        Row::new(
            SECTION,
            "fresh build: deploy changed code, no dependencies; baseline the cache hit",
            Cell::values(fresh, Unit::Time),
            Cell::values(cache_hit, Unit::Time),
        ),
    ];
    rows.extend(dependencies::run(tools, plan, &mut connection).await?);
    Ok(rows)
}

/// Deploys `source` as `handler.py` and returns the request's duration,
/// checking the build outcome when `expected_outcome` is given.
async fn deploy(
    connection: &mut Connection,
    name: &str,
    source: &[u8],
    expected_outcome: Option<&str>,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let response = connection.deploy_file(name, "handler.py", source.to_vec()).await?;
    let elapsed = started.elapsed().as_secs_f64();
    check_outcome(response, expected_outcome)?;
    Ok(elapsed)
}

/// Checks a deploy response: created, with the expected build outcome.
pub fn check_outcome(response: Response, expected_outcome: Option<&str>) -> anyhow::Result<()> {
    let body = response.expect_status(201, "deploying")?.json()?;
    if let Some(expected) = expected_outcome {
        let outcome = &body["build"]["outcome"];
        anyhow::ensure!(outcome == expected, "the build outcome is {outcome} instead of {expected:?}: {body}");
    }
    Ok(())
}

/// Returns a value that differs between calls and between benchmark runs,
/// so a "fresh" source is never one the server has built before.
pub fn unique_suffix() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_nanos()).unwrap_or_default();
    format!("{nanos}-{}", std::process::id())
}

/// Adds up the sizes of the regular files under `dir`.
pub fn tree_size(dir: &std::path::Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let file_type = entry.file_type().with_context(|| format!("reading {}", entry.path().display()))?;
        if file_type.is_dir() {
            total += tree_size(&entry.path())?;
        } else if file_type.is_file() {
            total += entry.metadata().with_context(|| format!("reading {}", entry.path().display()))?.len();
        }
    }
    Ok(total)
}
