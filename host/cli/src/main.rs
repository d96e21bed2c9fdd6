//! `halo`: the operator's and plugin author's command line.
//!
//! Today: `halo plugin check|run|bench`, the plugin author's harness. The agent, status and
//! demo commands come with the core and the drivers.

#![forbid(unsafe_code)]

mod plugin;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// halo: high availability for libvirt/KVM clusters, with policies as WebAssembly plugins.
#[derive(Parser)]
#[command(name = "halo", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check, run and benchmark policy plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("HALO_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plugin(command) => plugin::run(command),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
