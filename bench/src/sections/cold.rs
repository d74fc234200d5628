//! Cold start from a cached build: the time from an invoke of a script with
//! no instance (scaled to zero after its idle window) to its reply, against
//! starting the bare interpreter on the same machine. One server keeps no
//! prewarmed instances, so each start runs the interpreter; the other has
//! the default prewarmed instance per template, which the start takes.

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
/// The servers' idle window in this section: short, so scripts scale to
/// zero between samples. The server checks for idle instances every quarter
/// of the window.
const IDLE_TIMEOUT_SECONDS: f64 = 0.3;
/// The design target for Python: at most twice a bare interpreter start.
const PYTHON_RATIO_TARGET: f64 = 2.0;
/// The design target for Python with a prewarmed instance.
const PREWARMED_TARGET: f64 = 10e-3;
/// How long a server may take to stop an idle instance and refill its
/// prewarmed ones.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

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
    bare: PerRun,
    cold: PerRun,
    prewarmed: PerRun,
}

/// A server and the number of child processes it has when idle.
struct ColdServer {
    server: Server,
    admin: Connection,
    idle_children: usize,
}

pub async fn run(tools: &Tools, plan: &Plan) -> anyhow::Result<Vec<Row>> {
    let mut languages = vec![Language {
        name: "Python",
        script: "cold-python",
        file_name: "handler.py",
        source: ECHO_PY,
        interpreter: tools.python.clone(),
        bare_arguments: &["-c", "pass"],
        template_env: PYTHON_TEMPLATE_ENV,
        bare: PerRun::default(),
        cold: PerRun::default(),
        prewarmed: PerRun::default(),
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
            bare: PerRun::default(),
            cold: PerRun::default(),
            prewarmed: PerRun::default(),
        });
    }
    let idle = format!("idle_timeout_seconds = {IDLE_TIMEOUT_SECONDS}\n");
    let mut without_prewarm =
        ColdServer::start(tools, &format!("{idle}prewarm_instances_per_template = 0\n"), &languages).await?;
    let mut with_prewarm = ColdServer::start(tools, &idle, &languages).await?;

    // The first round fills the page cache and is not recorded.
    for run in 0..=plan.cold_runs {
        for language in &mut languages {
            eprintln!("cold start: {} run {run}/{}", language.name, plan.cold_runs);
            let bare = time_bare_start(language)?;
            let cold = without_prewarm.time_cold_invoke(language.script).await?;
            let prewarmed = with_prewarm.time_cold_invoke(language.script).await?;
            if run > 0 {
                language.bare.push(bare);
                language.cold.push(cold);
                language.prewarmed.push(prewarmed);
            }
        }
    }

    let mut rows = Vec::new();
    for language in &languages {
        let bare_command = format!("{} {}", language.interpreter.display(), language.bare_arguments.join(" "));
        let baseline = format!("baseline `{bare_command}` in the same environment");
        let mut cold = Row::new(
            SECTION,
            format!("{}: invoke with no instance until its reply, no prewarmed instances; {baseline}", language.name),
            Cell::values(language.cold.clone(), Unit::Time),
            Cell::values(language.bare.clone(), Unit::Time),
        );
        let mut prewarmed = Row::new(
            SECTION,
            format!("{}: the same, taking a prewarmed instance (default settings); {baseline}", language.name),
            Cell::values(language.prewarmed.clone(), Unit::Time),
            Cell::values(language.bare.clone(), Unit::Time),
        );
        if language.name == "Python" {
            cold = cold.with_target(Target::RatioAtMost(PYTHON_RATIO_TARGET));
            prewarmed = prewarmed.with_target(Target::AtMost(PREWARMED_TARGET));
        }
        rows.push(cold);
        rows.push(prewarmed);
    }
    if let Err(reason) = &tools.node {
        rows.push(Row::unavailable(SECTION, "Node: invoke with no instance", format!("skipped: {reason}")));
    }
    Ok(rows)
}

impl ColdServer {
    /// Starts a server, deploys every language's script and waits until its
    /// prewarmed instances, if any, have started.
    async fn start(tools: &Tools, config: &str, languages: &[Language]) -> anyhow::Result<ColdServer> {
        let server = Server::start(&tools.server, config)?;
        let mut admin = Connection::open(server.address).await?;
        for language in languages {
            admin
                .deploy_file(language.script, language.file_name, language.source)
                .await?
                .expect_status(201, "deploying the cold start script")?;
        }
        let idle_children = wait_until_stable(&server).await?;
        Ok(ColdServer { server, admin, idle_children })
    }

    /// Waits until `script` has no instance and the server is back to its
    /// idle set of processes, then times one invoke on a connection opened
    /// before the clock starts.
    async fn time_cold_invoke(&mut self, script: &str) -> anyhow::Result<f64> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while self.admin.instances(script).await? > 0 || self.server.child_count() != self.idle_children {
            if Instant::now() > deadline {
                bail!(
                    "{script} still had instances, or the server {} child processes instead of {}, {SETTLE_TIMEOUT:?} after its idle window",
                    self.server.child_count(),
                    self.idle_children
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let mut connection = Connection::open(self.server.address).await?;
        let body = Bytes::from_static(br#"{"payload": "cold"}"#);
        let started = Instant::now();
        let response = connection.invoke(script, body).await?;
        let elapsed = started.elapsed().as_secs_f64();
        let reply = response.expect_status(200, "invoking a script with no instance")?.json()?;
        anyhow::ensure!(reply["payload"] == "cold", "the script returned {reply}");
        Ok(elapsed)
    }
}

/// Waits until the server's number of child processes has not changed for
/// half a second, and returns it: the prewarmed instances it keeps.
async fn wait_until_stable(server: &Server) -> anyhow::Result<usize> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut count = server.child_count();
    let mut unchanged_since = Instant::now();
    while unchanged_since.elapsed() < Duration::from_millis(500) {
        if Instant::now() > deadline {
            bail!("the server's child processes kept changing for {SETTLE_TIMEOUT:?} after it started");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = server.child_count();
        if now != count {
            count = now;
            unchanged_since = Instant::now();
        }
    }
    Ok(count)
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
