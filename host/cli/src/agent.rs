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
    /// Write a self-signed TLS pair for the API into DIR (`api.crt`, and `api.key` mode 0600)
    /// naming every host's API address (and this machine's loopback), then exit: copy both to
    /// every host and set `[api] cert-file` and `key-file`. Existing files are not overwritten.
    #[arg(long, value_name = "DIR", conflicts_with = "check")]
    make_cert: Option<PathBuf>,
}

/// Runs the agent (until the process is stopped).
pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &args.make_cert {
        return make_cert(&args.config, dir);
    }
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

/// `halo agent --make-cert DIR`.
fn make_cert(config_path: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let config = AgentConfig::load_unchecked(config_path)?;
    anyhow::ensure!(config.api.is_some(), "{}: no [api] section: the agent serves no API", config_path.display());
    let mut names: Vec<String> = config.api_addresses().values().map(|a| a.ip().to_string()).collect();
    names.extend(config.hosts.iter().map(|h| h.name.clone()));
    names.extend(["127.0.0.1".to_string(), "::1".to_string(), "localhost".to_string()]);
    names.sort();
    names.dedup();
    let (cert, key) = halo_agent::tls::make_cert(&names).map_err(anyhow::Error::msg)?;
    let (cert_file, key_file) = (dir.join("api.crt"), dir.join("api.key"));
    for (file, content, mode) in [(&key_file, key, 0o600), (&cert_file, cert, 0o644)] {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(file)
            .with_context(|| format!("{}: not written (remove it first to make a new pair)", file.display()))?;
        out.write_all(content.as_bytes()).with_context(|| format!("{}", file.display()))?;
    }
    outln!("wrote {} and {} (self-signed, for {})", cert_file.display(), key_file.display(), names.join(", "));
    outln!(
        "copy both to every host, then in [api]:\n  cert-file = \"{}\"\n  key-file = \"{}\"",
        cert_file.display(),
        key_file.display()
    );
    Ok(ExitCode::SUCCESS)
}
