//! `halo`: the operator's and plugin author's command line.
//!
//! The agent (`halo agent`), the operator's commands against the local agent's API
//! (`halo status`, `vm`, `host`, `migrate`, `plan`, `events`, `ha`, `plugin reload`), the
//! plugin author's harness (`halo plugin check|run|bench`), the deterministic simulator
//! (`halo sim`, `halo demo`) and the lab (`halo lab`).

#![forbid(unsafe_code)]

/// `println!` that ends the program quietly when stdout is closed (`halo … | head`) instead
/// of panicking, and with an error when stdout fails otherwise.
macro_rules! outln {
    () => {
        $crate::write_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod agent;
mod hook;
mod lab;
mod ops;
mod plugin;
mod sim;

use std::io::Write as _;
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
    /// Hosts and VMs of the cluster, from the local agent.
    Status(ops::StatusArgs),
    /// VMs: list, protect, unprotect, diagnose, stop.
    #[command(subcommand)]
    Vm(ops::VmCommand),
    /// Hosts: maintenance.
    #[command(subcommand)]
    Host(ops::HostCommand),
    /// Live-migrate a VM to a host.
    Migrate(ops::MigrateArgs),
    /// The failover plan; --fail H1,H2: what would happen if those hosts failed now.
    Plan(ops::PlanArgs),
    /// Events and alerts, with the why of every verdict.
    Events(ops::EventsArgs),
    /// HA on or off for the whole cluster.
    Ha(ops::HaArgs),
    /// Balancing: what would move and why (plan), or move it now (apply).
    #[command(subcommand)]
    Balance(ops::BalanceCommand),
    /// libvirt's qemu hook: refuses to start a protected VM that halo's claims do not allow on this host.
    Hook(hook::HookArgs),
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
        Command::Status(args) => ops::status(args),
        Command::Vm(command) => ops::vm(command),
        Command::Host(command) => ops::host(command),
        Command::Migrate(args) => ops::migrate(args),
        Command::Plan(args) => ops::plan(args),
        Command::Events(args) => ops::events(args),
        Command::Ha(args) => ops::ha(args),
        Command::Balance(command) => ops::balance(command),
        Command::Hook(args) => hook::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes to stdout for [`outln!`]: a reader that went away (`EPIPE`) ends the program with
/// success, as `head` expects of the programs it reads; any other failure is an error.
pub(crate) fn write_out(text: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(error) = out.write_fmt(text).and_then(|()| out.flush()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {error}");
        std::process::exit(1);
    }
}
