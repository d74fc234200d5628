//! kubefaas: runs small scripts on demand. One binary is both the server
//! (`kubefaas serve`) and the command-line client of its HTTP API.

mod api;
mod builder;
mod cli;
mod config;
mod controller;
mod error;
mod metrics;
mod runtime;
mod serve;
mod store;
mod templates;
mod upload;

use clap::Parser;

/// mimalloc instead of the system allocator: each call makes many small,
/// short-lived allocations (headers, JSON maps), which it serves faster.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let command = cli::Cli::parse();
    match cli::run(command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
