//! Builds with dependencies: a fresh build that installs a dependency file
//! and a code-only change over those cached dependencies, against the
//! package manager's own install of the same file. A server that rejects
//! or ignores the dependency file gets "not available yet" rows instead.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;

use super::builds::{SECTION, check_outcome, tree_size, unique_suffix};
use crate::http::Connection;
use crate::plan::{Plan, Tools};
use crate::report::{Cell, Row, Target, Unit};
use crate::stats::PerRun;

/// The design target for a code-only change over cached dependencies.
const CODE_CHANGE_TARGET: f64 = 300e-3;
/// Package manager installs per set; each takes seconds, so fewer than `runs`.
const MAX_INSTALL_RUNS: usize = 3;

/// A dependency file and a script that uses it. Adding a language is
/// adding an entry to [`DEPENDENCY_SETS`].
struct DependencySet {
    template: &'static str,
    script: &'static str,
    manifest_file: &'static str,
    /// Chosen to install 50 MB or more, the size the design target names.
    manifest: &'static str,
    entry_file: &'static str,
    /// Returns the dependency's version as the payload, which proves it was installed.
    entry: &'static str,
    expected_payload: &'static str,
    /// The package manager's own install of `manifest_file` in the given folder.
    install: fn(&Tools, &Path) -> Command,
}

const DEPENDENCY_SETS: &[DependencySet] = &[DependencySet {
    template: "python",
    script: "deps-python",
    manifest_file: "requirements.txt",
    manifest: "numpy==1.26.4\n",
    entry_file: "handler.py",
    entry: "import numpy\n\ndef handle(data):\n    data['payload'] = numpy.__version__\n    return data\n",
    expected_payload: "1.26.4",
    install: pip_install,
}];

fn pip_install(tools: &Tools, dir: &Path) -> Command {
    let mut command = Command::new(&tools.python);
    command
        .args(["-m", "pip", "install", "--quiet", "--no-input", "--disable-pip-version-check"])
        .arg("--root-user-action=ignore")
        .arg("--target")
        .arg(dir.join("installed"))
        .arg("-r")
        .arg(dir.join("requirements.txt"));
    command
}

pub async fn run(tools: &Tools, plan: &Plan, connection: &mut Connection) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for set in DEPENDENCY_SETS {
        let figure = format!("{} dependencies ({})", set.template, set.manifest_file);
        match probe(set, connection).await? {
            Probe::Unavailable(reason) => {
                for what in ["fresh build", "code-only change over cached dependencies"] {
                    let row = Row::unavailable(SECTION, format!("{what}, {figure}"), format!("not available yet: {reason}"));
                    rows.push(if what == "fresh build" { row } else { row.with_target(Target::AtMost(CODE_CHANGE_TARGET)).in_unit(Unit::Time) });
                }
            }
            Probe::Built { seconds } => rows.extend(measure(tools, plan, set, connection, &figure, seconds).await?),
        }
    }
    Ok(rows)
}

enum Probe {
    Unavailable(String),
    /// The server installed the dependencies; the first build took this long.
    Built { seconds: f64 },
}

/// Deploys the set once and calls it, to learn whether the server installs
/// dependency files.
async fn probe(set: &DependencySet, connection: &mut Connection) -> anyhow::Result<Probe> {
    eprintln!("builds: checking whether the server installs {}", set.manifest_file);
    let entry = set.entry.to_string();
    let started = Instant::now();
    let response = deploy(set, connection, &entry).await?;
    let seconds = started.elapsed().as_secs_f64();
    if response.status != 201 {
        let body = response.json().unwrap_or_default();
        return Ok(Probe::Unavailable(format!(
            "the server rejected {}: {}",
            set.manifest_file,
            first_line(body["error"]["message"].as_str().unwrap_or("no message"))
        )));
    }
    let response = connection.invoke(set.script, Bytes::from_static(b"{}")).await?;
    let body = response.json().unwrap_or_default();
    if response.status != 200 || body["payload"] != set.expected_payload {
        let failure = body["error"]["message"].as_str().map(first_line).unwrap_or_else(|| body.to_string());
        return Ok(Probe::Unavailable(format!(
            "the server accepts {} but does not install it (the call failed: {failure})",
            set.manifest_file
        )));
    }
    Ok(Probe::Built { seconds })
}

async fn measure(
    tools: &Tools,
    plan: &Plan,
    set: &DependencySet,
    connection: &mut Connection,
    figure: &str,
    first_build: f64,
) -> anyhow::Result<Vec<Row>> {
    let mut install = PerRun::default();
    let mut installed_bytes = 0;
    for run in 0..plan.runs.min(MAX_INSTALL_RUNS) {
        eprintln!("builds: {} install {}", set.manifest_file, run + 1);
        let dir = tempfile::tempdir().context("creating a folder for the package manager's install")?;
        std::fs::write(dir.path().join(set.manifest_file), set.manifest).context("writing the dependency file")?;
        let started = Instant::now();
        let status = (set.install)(tools, dir.path()).status().context("starting the package manager")?;
        install.push(started.elapsed().as_secs_f64());
        if !status.success() {
            bail!("the package manager's install of {} exited with {status}", set.manifest_file);
        }
        installed_bytes = tree_size(dir.path())?;
    }

    let mut code_change = PerRun::default();
    for run in 0..install.runs() {
        eprintln!("builds: code-only change {}", run + 1);
        let entry = format!("{}# change {}\n", set.entry, unique_suffix());
        let started = Instant::now();
        let response = deploy(set, connection, &entry).await?;
        code_change.push(started.elapsed().as_secs_f64());
        check_outcome(response, Some("built"))?;
    }

    let size = crate::report::format_value(installed_bytes as f64, Unit::Bytes);
    let baseline = "; baseline the package manager's own install";
    Ok(vec![
        Row::new(
            SECTION,
            format!("fresh build, {figure}, {size} installed{baseline}"),
            Cell::values(crate::stats::PerRun(vec![first_build]), Unit::Time),
            Cell::values(install.clone(), Unit::Time),
        ),
        Row::new(
            SECTION,
            format!("code-only change over cached dependencies, {figure}{baseline}"),
            Cell::values(code_change, Unit::Time),
            Cell::values(install, Unit::Time),
        )
        .with_target(Target::AtMost(CODE_CHANGE_TARGET)),
    ])
}

async fn deploy(set: &DependencySet, connection: &mut Connection, entry: &str) -> anyhow::Result<crate::http::Response> {
    let files: [(&str, &[u8]); 2] = [(set.manifest_file, set.manifest.as_bytes()), (set.entry_file, entry.as_bytes())];
    connection.deploy_folder(set.script, &files).await
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("");
    let mut short: String = line.chars().take(160).collect();
    if short.len() < line.len() {
        short.push('…');
    }
    short
}
