//! `halo`: the operator's and plugin author's command line.
//!
//! Today: `halo plugin check|run|bench` (the plugin author's harness), `halo sim` (the
//! deterministic simulator) and `halo demo` (a scripted cluster with the default plugins).
//! The agent and status commands come with the drivers.

#![forbid(unsafe_code)]

mod agent;
mod lab;
mod plugin;
mod sim;

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
    /// Run the deterministic cluster simulator: one seeded schedule with its timeline, or many with a summary.
    Sim(sim::SimArgs),
    /// A scripted cluster in the simulator with the real default plugins: crash, isolation, partition.
    Demo(sim::DemoArgs),
    /// Several hosts on this machine (root): namespaces, a libvirtd per host, an NFS server, faults.
    Lab(lab::LabArgs),
    /// The HA agent of this host.
    Agent(agent::AgentArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("HALO_LOG").unwrap_or_else(|_| {
            let agent = std::env::args().nth(1).is_some_and(|a| a == "agent");
            (if agent { "info" } else { "warn" }).into()
        }))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plugin(command) => plugin::run(command),
        Command::Sim(args) => sim::sim(args),
        Command::Demo(args) => sim::demo(args),
        Command::Lab(args) => lab::run(args),
        Command::Agent(args) => agent::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
