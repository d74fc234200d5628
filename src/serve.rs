//! `kubefaas serve`: the controller, the builder and the local runtime in
//! one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::builder::Builder;
use crate::builder::artifact_store::ArtifactStore;
use crate::config::Config;
use crate::controller::{Controller, DataPaths};
use crate::runtime::cgroup::{CgroupPlacement, Cgroups};
use crate::runtime::local::LocalRuntime;
use crate::runtime::sandbox::Sandbox;
use crate::store::Store;
use crate::templates::Templates;

pub struct ServeOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub config: Option<PathBuf>,
    pub templates_dir: Option<PathBuf>,
    pub idle_timeout_seconds: Option<f64>,
    pub call_timeout_seconds: Option<f64>,
    pub prewarm_instances_per_template: Option<usize>,
    pub cgroup_root: Option<PathBuf>,
    pub allow_no_cgroups: bool,
}

pub fn serve(options: ServeOptions) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = load_config(&options)?;
    // Fewer threads mean fewer hand-offs between them on each call (see
    // `Config::server_threads`).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.server_threads())
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(options, config))
}

/// Reads the config file and applies the command-line options over it.
fn load_config(options: &ServeOptions) -> anyhow::Result<Config> {
    let mut config = Config::load(options.config.as_deref())?;
    if let Some(seconds) = options.idle_timeout_seconds {
        config.idle_timeout_seconds = seconds;
    }
    if let Some(count) = options.prewarm_instances_per_template {
        config.prewarm_instances_per_template = count;
    }
    if let Some(seconds) = options.call_timeout_seconds {
        config.call_timeout_seconds = seconds;
    }
    if let Some(root) = &options.cgroup_root {
        config.cgroup_root = root.clone();
    }
    config.allow_no_cgroups |= options.allow_no_cgroups;
    config.validate().with_context(|| match &options.config {
        Some(path) => format!("invalid settings from {} and the command line", path.display()),
        None => "invalid settings from the command line".to_string(),
    })?;
    Ok(config)
}

async fn run(options: ServeOptions, config: Config) -> anyhow::Result<()> {
    let sandbox = Sandbox::detect(None)?;
    tracing::info!(bwrap = %sandbox.bwrap().display(), user_namespace = sandbox.user_namespace(), "instance sandbox ready");

    let paths = DataPaths { root: options.data_dir.clone() };
    prepare_data_dir(&paths)?;
    let store = Arc::new(Store::open(&paths.database()).with_context(|| {
        format!("opening the metadata database {} (is another server using this data dir?)", paths.database().display())
    })?);
    let templates = Templates::load(&paths.templates(), options.templates_dir.as_deref())?;
    let artifact_store = ArtifactStore::open(&config.artifact_store, &paths.artifact_store())
        .context("opening the artifact store")?;
    tracing::info!(store = artifact_store.description(), "artifact store ready");
    let builder = Builder::new(artifact_store, store.clone(), paths.layers(), paths.temp(), config.build_step_timeout())
        .with_context(|| format!("creating {}", paths.layers().display()))?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("listening on {}", options.listen))?;
    let address = listener.local_addr().context("reading the listening address")?;

    // Created last, so that no earlier failure leaves a cgroup behind.
    let cgroups = setup_cgroups(&config)?;
    let runtime = Arc::new(LocalRuntime::new(sandbox, cgroups).context("starting the instance spawner thread")?);
    let controller = Arc::new(Controller::new(config, paths, store, templates, builder, runtime));
    tokio::spawn(controller.clone().run_idle_reaper());
    tokio::spawn(controller.clone().run_garbage_collector());
    controller.start_prewarming();

    tracing::info!(%address, data_dir = %options.data_dir.display(), "kubefaas serving");
    // Scripts and tests that start the server read this line to find the port.
    println!("kubefaas listening on http://{address}");

    axum::serve(listener, crate::api::router(controller.clone()))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    tracing::info!("shutting down: stopping instances");
    controller.shutdown().await;
    Ok(())
}

/// Creates the server's cgroup, or returns None when the host has no usable
/// hierarchy and the operator allowed running without limits.
fn setup_cgroups(config: &Config) -> anyhow::Result<Option<Cgroups>> {
    let self_cgroup = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let placement = CgroupPlacement {
        root: &config.cgroup_root,
        self_cgroup: &self_cgroup,
        parent: config.cgroup_parent.as_deref(),
        server_pid: std::process::id(),
    };
    match Cgroups::setup(&placement) {
        Ok(cgroups) => {
            tracing::info!(
                version = %cgroups.version(),
                groups = ?cgroups.server_groups(),
                "instance cgroups ready"
            );
            Ok(Some(cgroups))
        }
        Err(error) if config.allow_no_cgroups => {
            let warning = format!(
                "WARNING: instances run WITHOUT memory, PID and CPU limits (allow_no_cgroups is set): {error}"
            );
            eprintln!("{warning}");
            tracing::warn!("{warning}");
            Ok(None)
        }
        Err(error) => Err(anyhow::Error::new(error).context(
            "instances cannot get memory, PID and CPU limits; fix the cgroup setup, or pass --allow-no-cgroups to run scripts without limits",
        )),
    }
}

/// Creates the data dir's folders and empties `tmp`, which holds only
/// uploads and builds that a previous run did not finish.
fn prepare_data_dir(paths: &DataPaths) -> anyhow::Result<()> {
    let temp = paths.temp();
    if temp.exists() {
        std::fs::remove_dir_all(&temp).with_context(|| format!("emptying {}", temp.display()))?;
    }
    for dir in [paths.root.clone(), paths.sources(), paths.layers(), paths.templates(), temp] {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
