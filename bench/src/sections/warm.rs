//! Warm call overhead: the same Python echo script invoked through the
//! controller, called directly over the instance protocol, and called
//! through nginx's TCP proxy. Both sides run the same number of instances,
//! each serving one call at a time.

use anyhow::Context;
use serde_json::json;

use super::{ECHO_PY, PYTHON_SHIM};
use crate::http::Connection;
use crate::instance::{CallTemplate, ConnectionPool, FrameConnection, ShimProcess};
use crate::load::{Caller, HttpCaller, PoolCaller, run_load};
use crate::nginx::Nginx;
use crate::plan::{Plan, Tools};
use crate::report::{Cell, Row, Target, Unit};
use crate::server::Server;
use crate::stats::PerRun;

const SECTION: &str = "1 warm call";
const SCRIPT: &str = "echo";
/// Design targets for the controller's overhead over a direct call.
const P50_OVERHEAD_TARGET: f64 = 100e-6;
const P99_OVERHEAD_TARGET: f64 = 1e-3;

/// p50, p99 and throughput of one way of calling, one value per run.
#[derive(Default, Clone)]
struct Figures {
    p50: PerRun,
    p99: PerRun,
    throughput: PerRun,
}

/// The direct instances and, when nginx is available, the proxied ones.
struct Baselines {
    direct: ConnectionPool,
    proxied: Result<ConnectionPool, String>,
    _processes: Vec<ShimProcess>,
    _nginx: Option<Nginx>,
}

pub async fn run(tools: &Tools, plan: &Plan) -> anyhow::Result<Vec<Row>> {
    // Both sides run the same number of instances, each serving one call at
    // a time. The long idle timeout keeps instances running between runs.
    let config = format!(
        "instance_concurrency = 1\nmax_instances_per_script = {}\nidle_timeout_seconds = 3600\n",
        plan.warm_instances
    );
    let server = Server::start(&tools.server, &config)?;
    let mut admin = Connection::open(server.address).await?;
    admin.deploy_file(SCRIPT, "handler.py", ECHO_PY).await?.expect_status(201, "deploying the echo script")?;

    let code_dir = tempfile::tempdir().context("creating a code dir for the direct instances")?;
    std::fs::write(code_dir.path().join("handler.py"), ECHO_PY).context("writing handler.py")?;
    let shim = server.shim_path("python", PYTHON_SHIM)?;
    let baselines = start_baselines(tools, plan, &shim, code_dir.path()).await?;

    let call = CallTemplate {
        payload: br#"{"order": 17, "items": [{"sku": "A-1", "quantity": 2}]}"#.to_vec(),
        variables: json!({"region": "eu"}),
    };
    let levels = plan.warm_concurrency.len();
    let mut controller = vec![Figures::default(); levels];
    let mut direct = vec![Figures::default(); levels];
    let mut proxied = vec![Figures::default(); levels];
    for run in 0..plan.runs {
        for (level, &concurrency) in plan.warm_concurrency.iter().enumerate() {
            eprintln!("warm call: run {}/{}, concurrency {concurrency}", run + 1, plan.runs);
            let warm_up = (2 * concurrency).max(20);
            let mut callers = HttpCaller::open(server.address, SCRIPT, &call, concurrency).await?;
            run_load(&mut callers, warm_up).await.context("warming up the controller")?;
            record(&mut controller[level], &mut callers, plan.warm_calls).await.context("calling through the controller")?;

            let mut callers = pool_callers(&baselines.direct, &call, concurrency);
            run_load(&mut callers, warm_up).await.context("warming up the direct instances")?;
            record(&mut direct[level], &mut callers, plan.warm_calls).await.context("calling the instances directly")?;

            if let Ok(pool) = &baselines.proxied {
                let mut callers = pool_callers(pool, &call, concurrency);
                run_load(&mut callers, warm_up).await.context("warming up nginx")?;
                record(&mut proxied[level], &mut callers, plan.warm_calls).await.context("calling through nginx")?;
            }
        }
    }

    let mut rows = Vec::new();
    for (level, &concurrency) in plan.warm_concurrency.iter().enumerate() {
        let via = format!("controller, c={concurrency}, {} calls/run", plan.warm_calls);
        rows.extend(figure_rows(&via, &controller[level], &direct[level], true));
    }
    match &baselines.proxied {
        Ok(_) => {
            for (level, &concurrency) in plan.warm_concurrency.iter().enumerate() {
                let via = format!("nginx stream proxy, c={concurrency}");
                rows.extend(figure_rows(&via, &proxied[level], &direct[level], false));
            }
        }
        Err(reason) => rows.push(Row::unavailable(SECTION, "nginx stream proxy", format!("skipped: {reason}"))),
    }
    Ok(rows)
}

async fn start_baselines(
    tools: &Tools,
    plan: &Plan,
    shim: &std::path::Path,
    code_dir: &std::path::Path,
) -> anyhow::Result<Baselines> {
    let mut processes = Vec::new();
    let mut direct = Vec::new();
    for _ in 0..plan.warm_instances {
        let process = ShimProcess::start_python(&tools.python, shim, code_dir, "handler.py")?;
        direct.push(FrameConnection::connect(process.address).await?);
        processes.push(process);
    }

    let (proxied, nginx) = match &tools.nginx {
        Err(reason) => (Err(reason.clone()), None),
        Ok(binary) => {
            let upstreams: Vec<ShimProcess> = (0..plan.warm_instances)
                .map(|_| ShimProcess::start_python(&tools.python, shim, code_dir, "handler.py"))
                .collect::<anyhow::Result<_>>()?;
            let addresses: Vec<_> = upstreams.iter().map(|process| process.address).collect();
            let nginx = Nginx::start(binary, &addresses)?;
            let mut connections = Vec::new();
            for address in &nginx.listen {
                connections.push(FrameConnection::connect(*address).await.context("connecting through nginx")?);
            }
            processes.extend(upstreams);
            (Ok(ConnectionPool::new(connections)), Some(nginx))
        }
    };
    Ok(Baselines { direct: ConnectionPool::new(direct), proxied, _processes: processes, _nginx: nginx })
}

fn pool_callers<'a>(pool: &'a ConnectionPool, call: &'a CallTemplate, concurrency: usize) -> Vec<PoolCaller<'a>> {
    (0..concurrency).map(|_| PoolCaller { pool, call }).collect()
}

async fn record<C: Caller>(figures: &mut Figures, callers: &mut [C], calls: usize) -> anyhow::Result<()> {
    let latencies = run_load(callers, calls).await?;
    figures.p50.push(latencies.p50());
    figures.p99.push(latencies.p99());
    figures.throughput.push(latencies.throughput());
    Ok(())
}

fn figure_rows(via: &str, measured: &Figures, direct: &Figures, with_targets: bool) -> Vec<Row> {
    let row = |figure: &str, measured: &PerRun, baseline: &PerRun, unit| {
        Row::new(
            SECTION,
            format!("{figure}, {via}"),
            Cell::values(measured.clone(), unit),
            Cell::values(baseline.clone(), unit),
        )
    };
    let mut p50 = row("p50", &measured.p50, &direct.p50, Unit::Time);
    let mut p99 = row("p99", &measured.p99, &direct.p99, Unit::Time);
    if with_targets {
        p50 = p50.with_target(Target::AboveBaselineAtMost(P50_OVERHEAD_TARGET));
        p99 = p99.with_target(Target::AboveBaselineAtMost(P99_OVERHEAD_TARGET));
    }
    vec![p50, p99, row("throughput", &measured.throughput, &direct.throughput, Unit::Rate)]
}
