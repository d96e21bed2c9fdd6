//! `halo hook qemu …`: libvirt's `qemu` hook (`/etc/libvirt/hooks/qemu` runs
//! `halo hook --config /etc/halo/halo.toml qemu "$@"`; `halo hook --install` writes it).
//!
//! libvirt calls the hook before a domain starts (`prepare begin`, the domain XML on standard
//! input) and waits for it; a non-zero exit refuses the start, and what the hook wrote on
//! standard error is the error `virsh` shows. The hook asks this host's agent
//! (`POST /api/v1/admission`), which decides in the core (`Node::admit_start`): a protected VM
//! starts only where halo's claim allows and when no host runs it. A live migration's
//! destination (`migrate begin`, then `prepare begin` for the incoming domain) is admitted:
//! a migration moves the one copy. Bounded: the agent has 5 s to answer.
//!
//! When the agent does not answer, a domain halo knows as protected — named protected in
//! halo.toml, or carrying halo's generation metadata (halo started it once) — is refused, with
//! a message that says why; any other domain starts. Without a halo.toml there is no halo on
//! this host and every domain starts.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::Args;
use serde_json::{Value, json};

/// Where the hook notes an incoming migration between its `migrate` and `prepare` calls.
const INCOMING: &str = "/run/libvirt/halo-hook";

/// An incoming migration's note is honoured this long.
const INCOMING_FOR: Duration = Duration::from_secs(300);

/// The longest domain XML read from libvirt.
const MAX_XML: u64 = 16 << 20;

/// `halo hook`.
#[derive(Args)]
pub struct HookArgs {
    /// This host's agent config (its `[api]` and its VMs).
    #[arg(long, default_value = "/etc/halo/halo.toml")]
    config: PathBuf,
    /// Write the hook script to /etc/libvirt/hooks/qemu (restart libvirtd afterwards: it looks
    /// for hooks when it starts) instead of running as the hook.
    #[arg(long)]
    install: bool,
    /// What libvirt passes: `qemu <domain> <operation> <sub-operation> <extra>`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// The hook script for `halo` at `program` with `config`.
pub fn script(program: &Path, config: &Path) -> String {
    format!(
        "#!/bin/sh\n# halo: refuses to start a protected VM that halo's claims do not allow here (docs/operator.md).\nexec '{}' hook --config '{}' qemu \"$@\"\n",
        program.display(),
        config.display()
    )
}

/// Runs the hook (or installs it).
pub fn run(args: HookArgs) -> anyhow::Result<ExitCode> {
    if args.install {
        let program = std::env::current_exe().context("this executable")?;
        let path = Path::new("/etc/libvirt/hooks/qemu");
        std::fs::create_dir_all("/etc/libvirt/hooks").context("/etc/libvirt/hooks")?;
        std::fs::write(path, script(&program, &args.config)).with_context(|| path.display().to_string())?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
        outln!("{} written; restart libvirtd (systemctl restart libvirtd) so that it calls it", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let (driver, domain, operation, sub) = match args.args.as_slice() {
        [driver, domain, operation, sub, ..] => (driver.as_str(), domain.as_str(), operation.as_str(), sub.as_str()),
        // Not a call this hook knows: never stand in libvirt's way.
        _ => return Ok(ExitCode::SUCCESS),
    };
    // libvirt writes the XML for some operations: always read it, bounded, so it never blocks.
    let mut xml = String::new();
    let _ = std::io::stdin().take(MAX_XML).read_to_string(&mut xml);
    if driver != "qemu" {
        return Ok(ExitCode::SUCCESS);
    }
    let note = Path::new(INCOMING).join(domain.replace('/', "_"));
    match (operation, sub) {
        ("migrate", "begin") => {
            // Noted for the `prepare` that follows on this (the destination) host.
            let _ = std::fs::create_dir_all(INCOMING);
            let _ = std::fs::write(&note, b"");
            Ok(ExitCode::SUCCESS)
        }
        ("prepare", "begin") => {
            let incoming = std::fs::metadata(&note)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|at| SystemTime::now().duration_since(at).ok())
                .is_some_and(|age| age < INCOMING_FOR);
            let _ = std::fs::remove_file(&note);
            if incoming {
                return Ok(ExitCode::SUCCESS);
            }
            Ok(match admit(&args.config, domain, &xml) {
                Ok(()) => ExitCode::SUCCESS,
                Err(why) => {
                    eprintln!("{why}");
                    ExitCode::from(1)
                }
            })
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Asks this host's agent whether `domain` may start; the refusal is the message.
fn admit(config_path: &Path, domain: &str, xml: &str) -> Result<(), String> {
    let generation = halo_libvirt::generation_of(xml);
    let Ok(config) = halo_agent::AgentConfig::load(config_path) else {
        // No (readable) halo.toml: halo does not run here.
        return Ok(());
    };
    let asked = ask_agent(&config, config_path, domain, generation.unwrap_or(1));
    match asked {
        Ok(answer) if answer.get("admit").and_then(Value::as_bool) == Some(true) => Ok(()),
        Ok(answer) => Err(answer.get("reason").and_then(Value::as_str).unwrap_or("halo refuses the start").to_string()),
        Err(e) => {
            let named =
                config.vms.iter().any(|v| v.name == domain && v.priority != halo_policy::RestartPriority::Unprotected);
            if named || generation.is_some() {
                Err(format!(
                    "halo refuses to start {domain}: this host's halo agent does not answer ({e:#}), and {domain} is \
                     protected by halo; start the agent (systemctl start halo-agent), then start the VM with `halo vm \
                     start {domain}` or let halo restart it"
                ))
            } else {
                Ok(())
            }
        }
    }
}

fn ask_agent(config: &halo_agent::AgentConfig, path: &Path, domain: &str, generation: u64) -> anyhow::Result<Value> {
    let (address, token_file, trust) = crate::ops::api_endpoint(config, path)?;
    let token = crate::ops::read_token(&token_file)?;
    let tls = trust.map(|ca| halo_agent::tls::TlsClient::trusting(&ca)).transpose().map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let body = json!({ "vm": domain, "generation": generation }).to_string().into_bytes();
    let response = runtime.block_on(halo_agent::client::request(
        &address,
        tls.as_ref(),
        "POST",
        "/api/v1/admission",
        Some(&token),
        Some(body),
        &[],
        Duration::from_secs(5),
    ))?;
    anyhow::ensure!(response.status == 200, "HTTP {}: {}", response.status, String::from_utf8_lossy(&response.body));
    Ok(serde_json::from_slice(&response.body)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_script_runs_this_hook_with_the_config() {
        let script =
            super::script(std::path::Path::new("/usr/local/bin/halo"), std::path::Path::new("/etc/halo/halo.toml"));
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("exec '/usr/local/bin/halo' hook --config '/etc/halo/halo.toml' qemu \"$@\""));
    }
}
