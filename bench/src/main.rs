//! kubefaas-bench: measures kubefaas against baselines taken in the same
//! run and prints one Markdown table. Progress goes to stderr, the table to
//! stdout.

mod child;
mod http;
mod instance;
mod load;
mod nginx;
mod plan;
mod report;
mod sections;
mod server;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

use plan::{Plan, Tools};
use report::Row;

/// The time one section may take before it is abandoned, so a server that
/// stops responding cannot keep the harness running. A full section takes
/// under a minute on 2 cores, and the limits leave room for a busy machine.
const FULL_SECTION_LIMIT: Duration = Duration::from_secs(20 * 60);
const QUICK_SECTION_LIMIT: Duration = Duration::from_secs(5 * 60);

#[derive(Parser)]
#[command(about = "Measures kubefaas against its baselines and prints one Markdown table")]
struct Options {
    /// Tiny counts: checks that every step runs, in a few seconds. Its
    /// numbers are not meaningful.
    #[arg(long)]
    quick: bool,
    /// Repeats of the warm call, scale and burst measurements (default: 7, or 2 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// The kubefaas binary to benchmark (default: `kubefaas` next to this binary).
    #[arg(long)]
    server: Option<PathBuf>,
    /// Concurrency levels of the warm call section (default: 1,8,64).
    #[arg(long, value_delimiter = ',')]
    warm_concurrency: Vec<usize>,
    /// Sections to run, by name: warm, cold, builds, scale, upload, burst
    /// (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Section>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    Warm,
    Cold,
    Builds,
    Scale,
    Upload,
    Burst,
}

impl Section {
    const ALL: [Section; 6] = [Section::Warm, Section::Cold, Section::Builds, Section::Scale, Section::Upload, Section::Burst];

    fn title(self) -> &'static str {
        match self {
            Section::Warm => "1 warm call",
            Section::Cold => "2 cold start",
            Section::Builds => "3 builds",
            Section::Scale => "4 scale",
            Section::Upload => "5 upload",
            Section::Burst => "6 burst",
        }
    }

    async fn run(self, tools: &Tools, plan: &Plan) -> anyhow::Result<Vec<Row>> {
        match self {
            Section::Warm => sections::warm::run(tools, plan).await,
            Section::Cold => sections::cold::run(tools, plan).await,
            Section::Builds => sections::builds::run(tools, plan).await,
            Section::Scale => sections::scale::run(tools, plan).await,
            Section::Upload => sections::upload::run(tools, plan).await,
            Section::Burst => sections::burst::run(tools, plan).await,
        }
    }
}

fn main() -> ExitCode {
    let options = Options::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> anyhow::Result<ExitCode> {
    let mut plan = if options.quick { Plan::quick() } else { Plan::full() };
    if let Some(runs) = options.runs {
        anyhow::ensure!(runs >= 1, "--runs must be at least 1");
        plan.runs = runs;
    }
    if !options.warm_concurrency.is_empty() {
        anyhow::ensure!(!options.warm_concurrency.contains(&0), "--warm-concurrency levels must be at least 1");
        plan.warm_concurrency = options.warm_concurrency;
    }
    let tools = find_tools(options.server)?;

    let selected: Vec<Section> = if options.only.is_empty() { Section::ALL.to_vec() } else { options.only };
    let mut rows: Vec<Row> = Vec::new();
    let mut failed = false;
    for section in selected {
        let started = std::time::Instant::now();
        let limit = if options.quick { QUICK_SECTION_LIMIT } else { FULL_SECTION_LIMIT };
        let result = match tokio::time::timeout(limit, section.run(&tools, &plan)).await {
            Ok(result) => result,
            Err(_) => Err(anyhow::anyhow!("the section did not finish within {limit:?}")),
        };
        match result {
            Ok(section_rows) => rows.extend(section_rows),
            Err(error) => {
                failed = true;
                eprintln!("{} failed: {error:#}", section.title());
                rows.push(Row::unavailable(section.title(), "every figure", format!("failed: {error:#}")));
            }
        }
        eprintln!("{} took {:.1} s", section.title(), started.elapsed().as_secs_f64());
    }
    print!("{}", report::render_table(&rows));
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn find_tools(server: Option<PathBuf>) -> anyhow::Result<Tools> {
    let server = match server {
        Some(path) => path,
        None => std::env::current_exe()
            .context("finding this program's path")?
            .with_file_name("kubefaas"),
    };
    if !server.is_file() {
        bail!(
            "the server binary {} does not exist: build it with `cargo build --release` (or pass --server PATH)",
            server.display()
        );
    }
    let python = resolve_executable("python3", &["-c", "import sys; print(sys.executable)"])
        .map_err(|reason| anyhow::anyhow!("{reason}"))?;
    let node = resolve_executable("node", &["-e", "console.log(process.execPath)"]);
    Ok(Tools { server, python, node, nginx: nginx::find_nginx() })
}

/// Asks an interpreter for the path of its real executable, skipping
/// wrappers such as pyenv's shims, as the server does.
fn resolve_executable(command: &str, arguments: &[&str]) -> Result<PathBuf, String> {
    let output = std::process::Command::new(command)
        .args(arguments)
        .output()
        .map_err(|error| format!("{command} could not be started: {error}"))?;
    if !output.status.success() {
        return Err(format!("{command} exited with {}", output.status));
    }
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if path.is_file() { Ok(path) } else { Err(format!("{command} named {} as its executable", path.display())) }
}
