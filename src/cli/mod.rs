//! The command line: `serve` runs the server, every other command is a
//! client of the HTTP API.

mod client;
mod commands;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "kubefaas", version, about = "Run small scripts on demand")]
pub struct Cli {
    /// The server's base URL.
    #[arg(long, global = true, env = "KUBEFAAS_URL", default_value = "http://127.0.0.1:8080")]
    server: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller, builder and local runtime in this process.
    Serve {
        /// Address to listen on; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Folder for the metadata database, sources and build artifacts.
        #[arg(long, env = "KUBEFAAS_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// TOML file with server settings (see README).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Folder of extra templates, one sub-folder each, which add to or
        /// override the built-in ones.
        #[arg(long)]
        templates: Option<PathBuf>,
        /// Seconds without a call after which an instance is stopped.
        #[arg(long)]
        idle_timeout: Option<f64>,
        /// Seconds a call may take, including an instance's start.
        #[arg(long)]
        call_timeout: Option<f64>,
        /// Started instances kept waiting for a script, per template that
        /// supports it; 0 keeps none.
        #[arg(long, value_name = "COUNT")]
        prewarm: Option<usize>,
        /// Folder the cgroup hierarchies are mounted in.
        #[arg(long)]
        cgroup_root: Option<PathBuf>,
        /// Run instances without memory, PID and CPU limits if no usable
        /// cgroup hierarchy is found. Not for scripts you do not trust.
        #[arg(long)]
        allow_no_cgroups: bool,
    },
    /// Upload a file, folder or archive (.tar, .tar.gz, .tgz, .zip) as a new version.
    Deploy {
        path: PathBuf,
        /// Script name; defaults to the file or folder name.
        #[arg(long)]
        name: Option<String>,
        /// A secret environment variable, as NAME=VALUE, or NAME alone to take
        /// the value from this shell's environment; repeat for more. Secrets
        /// are kept across deploys until removed.
        #[arg(long = "secret", value_name = "NAME[=VALUE]")]
        secrets: Vec<String>,
        /// Removes a secret; repeat for more.
        #[arg(long = "remove-secret", value_name = "NAME")]
        removed_secrets: Vec<String>,
    },
    /// Invoke a script and print the payload it returned.
    Invoke {
        name: String,
        /// Payload: @FILE reads a file, - reads stdin, anything else is sent as is.
        #[arg(long)]
        data: Option<String>,
        /// A variable for this call, as KEY=VALUE; repeat for more.
        #[arg(long = "var", value_name = "KEY=VALUE")]
        variables: Vec<String>,
        /// A metadata entry, as KEY=VALUE; repeat for more.
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        meta: Vec<String>,
        /// Print the whole returned data object as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List scripts.
    Ls,
    /// Show a script, its versions and its last build.
    Show { name: String },
    /// Delete a script.
    Rm { name: String },
    /// Show a script's instance output, or its build log with --build.
    Logs {
        name: String,
        #[arg(long)]
        build: bool,
    },
    /// List templates.
    Templates,
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = client::Client::new(&cli.server);
    match cli.command {
        Command::Serve { listen, data_dir, config, templates, idle_timeout, call_timeout, prewarm, cgroup_root, allow_no_cgroups } => {
            let data_dir = match data_dir {
                Some(dir) => dir,
                None => default_data_dir()?,
            };
            crate::serve::serve(crate::serve::ServeOptions {
                listen,
                data_dir,
                config,
                templates_dir: templates,
                idle_timeout_seconds: idle_timeout,
                call_timeout_seconds: call_timeout,
                prewarm_instances_per_template: prewarm,
                cgroup_root,
                allow_no_cgroups,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Deploy { path, name, secrets, removed_secrets } => {
            commands::deploy(&client, &path, name, &secrets, &removed_secrets)
        }
        Command::Invoke { name, data, variables, meta, json } => {
            commands::invoke(&client, &name, data.as_deref(), &variables, &meta, json)
        }
        Command::Ls => commands::list(&client),
        Command::Show { name } => commands::show(&client, &name),
        Command::Rm { name } => commands::remove(&client, &name),
        Command::Logs { name, build } => commands::logs(&client, &name, build),
        Command::Templates => commands::templates(&client),
    }
}

fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return Ok(PathBuf::from(dir).join("kubefaas"));
    }
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow::anyhow!("HOME is not set: pass --data-dir"))?;
    Ok(PathBuf::from(home).join(".local/share/kubefaas"))
}
