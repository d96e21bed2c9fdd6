//! `halo agent --config /etc/halo/halo.toml`: the HA agent of this host.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use halo_agent::AgentConfig;

/// `halo agent`.
#[derive(Args)]
pub struct AgentArgs {
    /// The configuration.
    #[arg(long, default_value = "/etc/halo/halo.toml")]
    config: PathBuf,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
}

/// Runs the agent (until the process is stopped).
pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let config = AgentConfig::load(&args.config)?;
    if args.check {
        outln!(
            "{}: valid ({} hosts, {} VMs, this host {})",
            args.config.display(),
            config.hosts.len(),
            config.vms.len(),
            config.host
        );
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(halo_agent::run(config));
    // Background work (the event log's writer, libvirt's event thread) ends with the process.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result?;
    Ok(ExitCode::SUCCESS)
}
