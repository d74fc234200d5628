//! Cold start from a cached build: the time from an invoke of a script with
//! no instance (scaled to zero after its idle window) to its reply, against
//! starting the bare interpreter on the same machine.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;

use super::{ECHO_JS, ECHO_PY};
use crate::http::Connection;
use crate::instance::{PYTHON_TEMPLATE_ENV, instance_environment};
use crate::plan::{Plan, Tools};
use crate::report::{Cell, Row, Target, Unit};
use crate::server::Server;
use crate::stats::PerRun;

const SECTION: &str = "2 cold start";
/// The server's idle window in this section: short, so scripts scale to
/// zero between samples. The server checks for idle instances every quarter
/// of the window.
const IDLE_TIMEOUT_SECONDS: f64 = 0.3;
/// The design target for Python: at most twice a bare interpreter start.
const PYTHON_RATIO_TARGET: f64 = 2.0;
/// The design target with a prewarmed instance pool.
const PREWARMED_TARGET: f64 = 10e-3;

struct Language {
    name: &'static str,
    script: &'static str,
    file_name: &'static str,
    source: &'static str,
    interpreter: PathBuf,
    /// Arguments that make the interpreter start and exit at once.
    bare_arguments: &'static [&'static str],
    /// The template's environment variables, which instances get too.
    template_env: &'static [(&'static str, &'static str)],
    cold: PerRun,
    bare: PerRun,
}

pub async fn run(tools: &Tools, plan: &Plan) -> anyhow::Result<Vec<Row>> {
    let server = Server::start(&tools.server, &format!("idle_timeout_seconds = {IDLE_TIMEOUT_SECONDS}\n"))?;
    let mut admin = Connection::open(server.address).await?;
    let mut languages = vec![Language {
        name: "Python",
        script: "cold-python",
        file_name: "handler.py",
        source: ECHO_PY,
        interpreter: tools.python.clone(),
        bare_arguments: &["-c", "pass"],
        template_env: PYTHON_TEMPLATE_ENV,
        cold: PerRun::default(),
        bare: PerRun::default(),
    }];
    if let Ok(node) = &tools.node {
        languages.push(Language {
            name: "Node",
            script: "cold-node",
            file_name: "index.js",
            source: ECHO_JS,
            interpreter: node.clone(),
            bare_arguments: &["-e", "0"],
            template_env: &[],
            cold: PerRun::default(),
            bare: PerRun::default(),
        });
    }
    for language in &languages {
        admin
            .deploy_file(language.script, language.file_name, language.source)
            .await?
            .expect_status(201, "deploying the cold start script")?;
    }

    // The first round fills the page cache and is not recorded.
    for run in 0..=plan.cold_runs {
        for language in &mut languages {
            eprintln!("cold start: {} run {run}/{}", language.name, plan.cold_runs);
            let bare = time_bare_start(language)?;
            wait_until_scaled_to_zero(&mut admin, language.script).await?;
            let cold = time_cold_invoke(&server, language.script).await?;
            if run > 0 {
                language.bare.push(bare);
                language.cold.push(cold);
            }
        }
    }

    let mut rows = Vec::new();
    for language in languages {
        let bare_command = format!("{} {}", language.interpreter.display(), language.bare_arguments.join(" "));
        let mut row = Row::new(
            SECTION,
            format!("{}: invoke with no instance until its reply; baseline `{bare_command}` in the same environment", language.name),
            Cell::values(language.cold, Unit::Time),
            Cell::values(language.bare, Unit::Time),
        );
        if language.name == "Python" {
            row = row.with_target(Target::RatioAtMost(PYTHON_RATIO_TARGET));
        }
        rows.push(row);
    }
    if let Err(reason) = &tools.node {
        rows.push(Row::unavailable(SECTION, "Node: invoke with no instance", format!("skipped: {reason}")));
    }
    for name in ["Python", "Node"] {
        rows.push(
            Row::unavailable(SECTION, format!("{name}: with a prewarmed instance pool"), "not implemented: the server has no prewarmed pool yet")
                .with_target(Target::AtMost(PREWARMED_TARGET))
                .in_unit(Unit::Time),
        );
    }
    Ok(rows)
}

/// Times a bare interpreter start in the environment an instance gets.
fn time_bare_start(language: &Language) -> anyhow::Result<f64> {
    let mut command = std::process::Command::new(&language.interpreter);
    command.args(language.bare_arguments);
    instance_environment(&mut command, language.template_env);
    let started = Instant::now();
    let status = command
        .status()
        .with_context(|| format!("starting {}", language.interpreter.display()))?;
    let elapsed = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("{} {} exited with {status}", language.interpreter.display(), language.bare_arguments.join(" "));
    }
    Ok(elapsed)
}

/// Waits until the server has stopped every instance of `script`, then a
/// little longer so the stopped process is gone too.
async fn wait_until_scaled_to_zero(admin: &mut Connection, script: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin.instances(script).await? > 0 {
        if Instant::now() > deadline {
            bail!("{script} still had instances 10 s after its idle window of {IDLE_TIMEOUT_SECONDS} s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

/// Times one invoke on a fresh connection, opened before the clock starts.
async fn time_cold_invoke(server: &Server, script: &str) -> anyhow::Result<f64> {
    let mut connection = Connection::open(server.address).await?;
    let body = Bytes::from_static(br#"{"payload": "cold"}"#);
    let started = Instant::now();
    let response = connection.invoke(script, body).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let reply = response.expect_status(200, "invoking a script with no instance")?.json()?;
    anyhow::ensure!(reply["payload"] == "cold", "the script returned {reply}");
    Ok(elapsed)
}
