//! The operator's commands: `halo status`, `halo vm …`, `halo host maintenance …`,
//! `halo migrate`, `halo plan`, `halo events`, `halo ha`, `halo plugin reload`. Each talks to
//! the local agent's API (address and token from `/etc/halo/halo.toml`, or `--api` and
//! `--token-file`); the agent forwards writes to the master. Long actions (evacuation,
//! migration) show their progress until done, unless `--no-wait`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// Where the agent's API is.
#[derive(Args, Clone)]
pub struct ApiArgs {
    /// The agent's config: its `[api]` gives the address and the token file.
    #[arg(long, default_value = "/etc/halo/halo.toml")]
    config: PathBuf,
    /// The API address (HOST:PORT) instead of the config's.
    #[arg(long)]
    api: Option<String>,
    /// The token file instead of the config's.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Speak TLS to --api and trust the certificate(s) in this PEM file (with a config whose
    /// [api] serves TLS: its ca-file, or its cert-file).
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

struct Agent {
    address: String,
    token: String,
    /// TLS, verifying the agent's certificate (the config's [api] serves TLS, or --ca-file).
    tls: Option<halo_agent::tls::TlsClient>,
    /// One small runtime for every request of this command.
    runtime: tokio::runtime::Runtime,
}

impl ApiArgs {
    fn agent(&self) -> anyhow::Result<Agent> {
        let (address, token_file, trust) = match (&self.api, &self.token_file) {
            (Some(a), Some(t)) => (a.clone(), t.clone(), self.ca_file.clone()),
            _ => {
                let config = halo_agent::AgentConfig::load(&self.config)
                    .with_context(|| "give --api and --token-file, or a config with [api]".to_string())?;
                let (listen, token_file, trust) = api_endpoint(&config, &self.config)?;
                (
                    self.api.clone().unwrap_or(listen),
                    self.token_file.clone().unwrap_or(token_file),
                    self.ca_file.clone().or(trust),
                )
            }
        };
        let token = read_token(&token_file)?;
        let tls = trust
            .map(|ca| halo_agent::tls::TlsClient::trusting(&ca))
            .transpose()
            .map_err(|e| anyhow::anyhow!("--ca-file / [api] ca-file: {e}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Agent { address, token, tls, runtime })
    }
}

/// Where this host's agent answers (`[api] listen`, an unspecified address as localhost), its
/// token file and, when it serves TLS, the certificate file to trust, from its config (read
/// from `path`).
pub(crate) fn api_endpoint(
    config: &halo_agent::AgentConfig,
    path: &Path,
) -> anyhow::Result<(String, PathBuf, Option<PathBuf>)> {
    let api =
        config.api.clone().with_context(|| format!("{}: no [api] section: the agent serves no API", path.display()))?;
    let mut listen = api.listen;
    if listen.ip().is_unspecified() {
        listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let trust = config.api_trust_file();
    Ok((listen.to_string(), api.token_file, trust))
}

/// The API token in `path`.
pub(crate) fn read_token(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path).with_context(|| format!("token file {}", path.display()))?.trim().to_string())
}

impl Agent {
    /// One request; a non-2xx answer is an error with the API's message.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (status, value) = self.call_any(method, path, body)?;
        if !(200..300).contains(&status) {
            let message = value.get("error").and_then(Value::as_str).unwrap_or("(no message)");
            bail!("{} (HTTP {})", message, status);
        }
        Ok(value)
    }

    /// One request; the status and the answer, whatever the status.
    fn call_any(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<(u16, Value)> {
        let response = self.runtime.block_on(halo_agent::client::request(
            &self.address,
            self.tls.as_ref(),
            method,
            path,
            Some(&self.token),
            body.map(|b| b.to_string().into_bytes()),
            &[],
            Duration::from_secs(30),
        ))?;
        let value: Value = serde_json::from_slice(&response.body)
            .unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(&response.body).trim().to_string() }));
        Ok((response.status, value))
    }
}

/// Prints rows as aligned columns under a header.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        outln!("{}", text.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_uppercase()).collect());
    for row in rows {
        line(row);
    }
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(Value::Array(a)) => {
            a.iter().map(|x| x.as_str().map_or_else(|| x.to_string(), String::from)).collect::<Vec<_>>().join(",")
        }
        Some(other) => other.to_string(),
    }
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn print_json(v: &Value) -> anyhow::Result<ExitCode> {
    outln!("{}", serde_json::to_string_pretty(v)?);
    Ok(ExitCode::SUCCESS)
}

/// `halo status`.
#[derive(Args)]
pub struct StatusArgs {
    /// Print the API's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let s = args.api.agent()?.call("GET", "/api/v1/status", None)?;
    if args.json {
        return print_json(&s);
    }
    outln!(
        "answered by {}; master {} (epoch {}); HA {}{}",
        text(&s, "host"),
        text(&s, "master"),
        text(&s, "epoch"),
        if s.get("ha-enabled").and_then(Value::as_bool) == Some(false) { "DISABLED" } else { "on" },
        match s.get("plan") {
            Some(p) if !p.is_null() =>
                format!("; tolerates {} host failure(s) (target {})", text(p, "tolerates"), text(p, "target")),
            _ => String::new(),
        }
    );
    outln!();
    table(
        &["host", "state", "vms", "load", "fence devices", "notes"],
        list(&s, "hosts")
            .iter()
            .map(|h| {
                let mut notes = Vec::new();
                if h.get("master").and_then(Value::as_bool) == Some(true) {
                    notes.push("master".to_string());
                }
                if h.get("maintenance").and_then(Value::as_bool) == Some(true) {
                    notes.push("maintenance".into());
                }
                if h.get("ha-disabled").and_then(Value::as_bool) == Some(true) {
                    notes.push("HA disabled".into());
                }
                let reached = h.get("datastores-reached").and_then(Value::as_u64);
                let configured = h.get("datastores-configured").and_then(Value::as_u64).unwrap_or(0);
                if let Some(reached) = reached.filter(|r| *r < configured) {
                    let lost: Vec<&str> = list(h, "datastores-lost").iter().filter_map(Value::as_str).collect();
                    if lost.is_empty() {
                        notes.push(format!("DATASTORES {reached}/{configured}"));
                    } else {
                        notes.push(format!("DATASTORES {reached}/{configured} ({} lost)", lost.join(", ")));
                    }
                }
                let health = h.get("health").cloned().unwrap_or_default();
                let state = text(&health, "state");
                if !state.is_empty() && state != "healthy" {
                    notes.push(format!("HEALTH {state}: {}", text(&health, "reason")));
                }
                if h.get("quarantined").and_then(Value::as_bool) == Some(true)
                    && h.get("maintenance").and_then(Value::as_bool) != Some(true)
                {
                    notes.push("quarantined".into());
                }
                let stalled: Vec<&str> = list(h, "storage-lost-vms").iter().filter_map(Value::as_str).collect();
                if !stalled.is_empty() {
                    notes.push(format!("STORAGE LOST: {}", stalled.join(", ")));
                }
                vec![
                    text(h, "name"),
                    text(h, "state"),
                    list(h, "vms").len().to_string(),
                    host_load(h),
                    fence_health(h),
                    notes.join(", "),
                ]
            })
            .collect(),
    );
    outln!();
    vm_table(list(&s, "vms"));
    // Shadow candidates run on every agent; the one asked reports its own tally.
    if let Ok(plugins) = args.api.agent()?.call("GET", "/api/v1/plugins", None) {
        for p in list(&plugins, "plugins") {
            if let Some(shadow) = p.get("shadow").filter(|s| !s.is_null()) {
                outln!(
                    "shadow {} (on the agent asked): {} — {} decisions, {} divergent ({} different, {} invalid, {} failed)",
                    text(p, "world"),
                    text(shadow, "file"),
                    text(shadow, "decisions"),
                    text(shadow, "divergences"),
                    text(shadow, "different"),
                    text(shadow, "invalid"),
                    text(shadow, "failed")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A host's fence devices as the master last asked them: `-` when it has none (or this node
/// is not the master, which alone asks them), else each device `ok (on)` or `FAILED: why`.
fn fence_health(host: &Value) -> String {
    let devices = list(host, "fence");
    if devices.is_empty() {
        return "-".into();
    }
    devices
        .iter()
        .map(|d| {
            let (device, detail) = (text(d, "device"), text(d, "detail"));
            if d.get("ok").and_then(Value::as_bool) == Some(true) {
                format!("{device}: ok ({detail})")
            } else {
                format!("{device}: FAILED: {detail}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A host's load as the master last read it: `cpu 3 %, 12000 MiB free`; `-` without a reading
/// (not the master, or not read yet).
fn host_load(host: &Value) -> String {
    let Some(load) = host.get("load").filter(|l| l.is_object()) else { return "-".into() };
    let cpu = load.get("cpu-percent").and_then(Value::as_u64).map_or("cpu ?".to_string(), |c| format!("cpu {c} %"));
    format!("{cpu}, {} MiB free", text(load, "free-memory-mib"))
}

/// A VM's load: `25 %, 700 MiB`.
fn vm_load(vm: &Value) -> String {
    let Some(load) = vm.get("load").filter(|l| l.is_object()) else { return "-".into() };
    let cpu = load.get("cpu-percent").and_then(Value::as_u64).map_or("?".to_string(), |c| format!("{c} %"));
    format!("{cpu}, {} MiB", text(load, "memory-mib"))
}

fn vm_table(vms: &[Value]) {
    table(
        &["vm", "host", "priority", "order", "depends-on", "restart", "load"],
        vms.iter()
            .map(|v| {
                let copies: Vec<&str> = list(v, "copies").iter().filter_map(Value::as_str).collect();
                let host = match text(v, "state").as_str() {
                    "running" => text(v, "host"),
                    // A copy started outside halo: every host that runs one.
                    _ if copies.len() > 1 => format!("TWICE: {}", copies.join(" + ")),
                    state => state.to_string(),
                };
                let restart = v
                    .get("restart")
                    .and_then(|r| r.get("state"))
                    .map(|s| match s {
                        Value::Object(m) => m.keys().next().cloned().unwrap_or_default(),
                        other => other.as_str().unwrap_or("").to_string(),
                    })
                    .unwrap_or_default();
                vec![
                    text(v, "name"),
                    host,
                    text(v, "priority"),
                    text(v, "order"),
                    text(v, "depends-on"),
                    restart,
                    vm_load(v),
                ]
            })
            .collect(),
    );
}

/// `halo vm …`.
#[derive(Subcommand)]
pub enum VmCommand {
    /// Every VM halo knows: where it runs, its protection.
    List {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Protect a VM (or change its priority, order, dependencies), after the admission check.
    Protect {
        /// The VM (libvirt domain name).
        vm: String,
        /// `restart` (default) or `best-effort`.
        #[arg(long)]
        priority: Option<String>,
        /// Restart order (0 first).
        #[arg(long)]
        order: Option<u32>,
        /// VMs that must be up first (comma-separated).
        #[arg(long, value_delimiter = ',')]
        depends_on: Option<Vec<String>>,
        /// Restart group.
        #[arg(long)]
        group: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Unprotect a VM: HA leaves it alone.
    Unprotect {
        /// The VM.
        vm: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Why a VM can or cannot be protected.
    Diagnose {
        /// The VM.
        vm: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Start a protected VM that runs nowhere, under a new claim (libvirt's hook refuses a
    /// start halo did not claim).
    Start {
        /// The VM.
        vm: String,
        /// The host (default: where the placement policy puts it).
        #[arg(long)]
        on: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Stop a VM through halo: powered off, not restarted.
    Stop {
        /// The VM.
        vm: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

pub fn vm(command: VmCommand) -> anyhow::Result<ExitCode> {
    match command {
        VmCommand::List { json, api } => {
            let vms = api.agent()?.call("GET", "/api/v1/vms", None)?;
            if json {
                return print_json(&vms);
            }
            vm_table(vms.as_array().map_or(&[], Vec::as_slice));
        }
        VmCommand::Protect { vm, priority, order, depends_on, group, api } => {
            let mut body = serde_json::Map::new();
            if let Some(p) = priority {
                body.insert("priority".into(), json!(p));
            }
            if let Some(o) = order {
                body.insert("order".into(), json!(o));
            }
            if let Some(d) = depends_on {
                body.insert("depends-on".into(), json!(d));
            }
            if let Some(g) = group {
                body.insert("group".into(), json!(g));
            }
            let answer = api.agent()?.call("POST", &format!("/api/v1/vms/{vm}/protect"), Some(Value::Object(body)))?;
            let spec = answer.get("vm").cloned().unwrap_or_default();
            let datastores = list(&spec, "datastores");
            outln!(
                "{vm} protected: priority {}, order {}, on {}{}",
                text(&spec, "priority"),
                text(&spec, "order"),
                text(&answer, "host"),
                if datastores.is_empty() {
                    String::new()
                } else {
                    let names: Vec<&str> = datastores.iter().filter_map(|d| d.as_str()).collect();
                    format!(", disks on datastore {} (storage protection watches it)", names.join(", "))
                }
            );
            if let Some(w) = answer.get("warning").and_then(Value::as_str) {
                outln!("warning: {w}");
            }
        }
        VmCommand::Unprotect { vm, api } => {
            api.agent()?.call("POST", &format!("/api/v1/vms/{vm}/unprotect"), Some(json!({})))?;
            outln!("{vm} unprotected: HA leaves it alone");
        }
        VmCommand::Diagnose { vm, json, api } => {
            let d = api.agent()?.call("GET", &format!("/api/v1/vms/{vm}/diagnose"), None)?;
            if json {
                return print_json(&d);
            }
            outln!(
                "{vm}: on {} ({}), {} MiB, {} vCPU(s), {}",
                text(&d, "host"),
                if d.get("running").and_then(Value::as_bool) == Some(true) { "running" } else { "defined" },
                text(&d, "memory-mib"),
                text(&d, "vcpus"),
                if d.get("protected").and_then(Value::as_bool) == Some(true) { "protected" } else { "not protected" }
            );
            let problems = list(&d, "problems");
            if problems.is_empty() {
                outln!("can be protected: every host can start it");
                return Ok(ExitCode::SUCCESS);
            }
            outln!("cannot be protected:");
            for p in problems {
                outln!("  - {}", p.as_str().unwrap_or_default());
            }
            return Ok(ExitCode::FAILURE);
        }
        VmCommand::Start { vm, on, api } => {
            api.agent()?.call("POST", &format!("/api/v1/vms/{vm}/start"), Some(json!({ "on": on })))?;
            outln!("{vm}: the master starts it under a new claim (see halo events)");
        }
        VmCommand::Stop { vm, api } => {
            api.agent()?.call("POST", &format!("/api/v1/vms/{vm}/stop"), Some(json!({})))?;
            outln!("{vm} stopped by the operator: halo does not restart it");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `halo host …`.
#[derive(Subcommand)]
pub enum HostCommand {
    /// Maintenance: `enter` live-migrates every VM away; `exit` takes VMs again.
    Maintenance {
        /// `enter` or `exit`.
        #[arg(value_parser = ["enter", "exit"])]
        action: String,
        /// The host.
        host: String,
        /// Return once the master accepted it (do not follow the evacuation).
        #[arg(long)]
        no_wait: bool,
        /// Give up following after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Power a host off through its fence devices (the master asks them in order); its VMs
    /// restart elsewhere once a device confirms it is off. Refused while the host is heard
    /// (it runs) unless --force.
    Fence {
        /// The host.
        host: String,
        /// Even though the host is heard: its running VMs stop with it.
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Ask a host's fence devices for its power state (`status`, read only) from this
    /// machine, with the configuration's devices: does fencing work before it is needed?
    FenceTest {
        /// The host.
        host: String,
        /// The agent's config (its `[[hosts.fence]]`).
        #[arg(long, default_value = "/etc/halo/halo.toml")]
        config: PathBuf,
    },
}

pub fn host(command: HostCommand) -> anyhow::Result<ExitCode> {
    let (action, host, no_wait, timeout, api) = match command {
        HostCommand::Maintenance { action, host, no_wait, timeout, api } => (action, host, no_wait, timeout, api),
        HostCommand::Fence { host, force, yes, api } => return fence(&host, force, yes, &api),
        HostCommand::FenceTest { host, config } => return fence_test(&host, &config),
    };
    let agent = api.agent()?;
    let enter = action == "enter";
    let since = EventsSeen::now(&agent)?;
    agent.call("POST", &format!("/api/v1/hosts/{host}/maintenance"), Some(json!({ "enter": enter })))?;
    if !enter {
        outln!("{host} is back in service");
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{host} enters maintenance");
    if no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    let from = format!(" from {host} to ");
    follow(&agent, since, Duration::from_secs(timeout), |event| match event.0.as_str() {
        "vm-migrated" | "migration-started" if event.1.contains(&from) => Step::Show,
        "host-evacuated" if event.1.contains(&host) => Step::Done,
        "migration-failed" | "evacuation-blocked" | "maintenance-refused" => Step::Fail,
        _ => Step::Skip,
    })
}

fn fence(host: &str, force: bool, yes: bool, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    if !yes {
        use std::io::IsTerminal as _;
        if !std::io::stdin().is_terminal() {
            anyhow::bail!("halo host fence powers {host} off: confirm with --yes (standard input is not a terminal)");
        }
        eprint!("Power {host} off through its fence devices? Every VM running there stops. [y/N] ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            outln!("not fenced");
            return Ok(ExitCode::from(1));
        }
    }
    let agent = api.agent()?;
    let since = EventsSeen::now(&agent)?;
    agent.call("POST", &format!("/api/v1/hosts/{host}/fence"), Some(json!({ "force": force })))?;
    outln!("{host}: the master powers it off through its fence devices");
    let (on, off) = (format!("{host}: powered off"), format!("{host}: fencing failed"));
    follow(&agent, since, Duration::from_secs(120), |event| match event.0.as_str() {
        "host-fenced" if event.1.starts_with(&on) => Step::Done,
        "fence-failed" if event.1.starts_with(&off) => Step::Fail,
        _ => Step::Skip,
    })
}

fn fence_test(host: &str, config: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = halo_agent::AgentConfig::load(config)?;
    let entry = config.hosts.iter().find(|h| h.name == host).with_context(|| format!("no host named {host}"))?;
    if entry.fence.is_empty() {
        anyhow::bail!("{host} has no fence device in the configuration ([[hosts.fence]])");
    }
    let mut ok = true;
    for (i, device) in entry.fence.iter().enumerate() {
        let started = std::time::Instant::now();
        let status = device.status();
        let took = started.elapsed().as_secs_f64();
        match status {
            Ok(power) => outln!(
                "level {}: {}: {host} is {} ({took:.2} s)",
                i + 1,
                device.name(),
                match power {
                    halo_agent::fence::Power::On => "on",
                    halo_agent::fence::Power::Off => "off",
                }
            ),
            Err(why) => {
                ok = false;
                outln!("level {}: {}: FAILED ({took:.2} s): {why}", i + 1, device.name());
            }
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `halo migrate VM [HOST]`.
#[derive(Args)]
pub struct MigrateArgs {
    /// The VM.
    vm: String,
    /// The target host; without it, to the cluster: the placement policy chooses (the host it
    /// runs on excluded).
    #[arg(conflicts_with = "storage")]
    host: Option<String>,
    /// Move the VM's disks instead, while it runs, into this directory (absolute, seen by
    /// every host; the disks keep their file names). The VM stays on its host.
    #[arg(long, value_name = "DIR")]
    storage: Option<String>,
    /// Return once the master started it.
    #[arg(long)]
    no_wait: bool,
    /// Give up following after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    #[command(flatten)]
    api: ApiArgs,
}

pub fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &args.storage {
        return move_storage(&args, dir);
    }
    let agent = args.api.agent()?;
    let since = EventsSeen::now(&agent)?;
    agent.call("POST", &format!("/api/v1/vms/{}/migrate", args.vm), Some(json!({ "host": args.host })))?;
    let target = args.host.as_deref().unwrap_or("the cluster");
    outln!("{}: live migration to {target} asked", args.vm);
    if args.no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    let vm = args.vm.clone();
    let to = args.host.as_ref().map(|h| format!(" to {h}"));
    let refused = format!("migrate {vm} to ");
    follow(&agent, since, Duration::from_secs(args.timeout), |event| match event.0.as_str() {
        // Where it goes (the placement policy's choice, without a host).
        "migration-started" if event.1.starts_with(&format!("{vm}: ")) => Step::Show,
        "vm-migrated"
            if event.1.starts_with(&format!("{vm} ")) && to.as_ref().is_none_or(|to| event.1.ends_with(to)) =>
        {
            Step::Done
        }
        "migration-failed" if event.1.starts_with(&format!("{vm}:")) => Step::Fail,
        "command-refused" if event.1.starts_with(&refused) => Step::Fail,
        _ => Step::Skip,
    })
}

/// `halo migrate VM --storage DIR`: the copy's progress, then where the VM's disks are.
fn move_storage(args: &MigrateArgs, dir: &str) -> anyhow::Result<ExitCode> {
    if !dir.starts_with('/') {
        anyhow::bail!("--storage {dir}: give an absolute directory that every host sees");
    }
    let agent = args.api.agent()?;
    let since = EventsSeen::now(&agent)?;
    agent.call("POST", &format!("/api/v1/vms/{}/storage", args.vm), Some(json!({ "path": dir })))?;
    outln!("{}: moving its disks to {dir} asked (the guest keeps running)", args.vm);
    if args.no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    let vm = args.vm.clone();
    let refused = format!("move storage of {vm}: ");
    follow(&agent, since, Duration::from_secs(args.timeout), |event| match event.0.as_str() {
        "storage-move-started" | "storage-move-progress" if event.1.starts_with(&format!("{vm}: ")) => Step::Show,
        "storage-moved" if event.1.starts_with(&format!("{vm} ")) => Step::Done,
        "storage-move-failed" if event.1.starts_with(&format!("{vm}: ")) => Step::Fail,
        "command-refused" if event.1.starts_with(&refused) => Step::Fail,
        _ => Step::Skip,
    })
}

enum Step {
    Skip,
    Show,
    Done,
    Fail,
}

/// Which of the cluster's events happened before an action: the newest event number of each
/// agent (numbers only grow within an agent's run), and the wall clock for agents that had no
/// event to show then (unreachable, or just started). Comparing numbers rather than clocks
/// means a host whose clock is off neither hides the event that ends the action nor passes an
/// old one off as new.
struct EventsSeen {
    /// The newest event id seen of each agent, with the run it belongs to.
    newest: BTreeMap<String, (u64, u64)>,
    unix_ms: u64,
}

impl EventsSeen {
    fn now(agent: &Agent) -> anyhow::Result<Self> {
        let unix_ms = halo_agent::events::unix_ms();
        let events = agent.call("GET", "/api/v1/events?cluster=true&limit=500", None)?;
        let mut newest: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for e in list(&events, "events") {
            let (run, id) = (number(e, "run"), number(e, "id"));
            let entry = newest.entry(text(e, "node")).or_insert((run, 0));
            // The newest run of the agent, and its newest event.
            *entry = (*entry).max((run, id));
        }
        Ok(Self { newest, unix_ms })
    }

    /// Whether event `id` of `node`'s run `run`, stamped `unix_ms` by that node, came after.
    /// An agent restarted since (a newer run) numbers its events from 1 again: all of them are new.
    fn is_new(&self, node: &str, run: u64, id: u64, unix_ms: u64) -> bool {
        match self.newest.get(node) {
            Some(&(seen_run, newest)) if run == seen_run => id > newest,
            Some(&(seen_run, _)) => run > seen_run,
            None => unix_ms >= self.unix_ms,
        }
    }
}

fn number(e: &Value, key: &str) -> u64 {
    e.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Prints the cluster's events that came after `seen` as they come, until one ends the
/// action. An agent restarted meanwhile numbers its events from 1 again under a new run:
/// those count as new.
fn follow(
    agent: &Agent,
    seen: EventsSeen,
    timeout: Duration,
    judge: impl Fn(&(String, String)) -> Step,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut shown = std::collections::BTreeSet::new();
    while started.elapsed() < timeout {
        let events = agent.call("GET", "/api/v1/events?cluster=true&limit=500", None)?;
        for e in list(&events, "events") {
            let (node, run, id) = (text(e, "node"), number(e, "run"), number(e, "id"));
            if !seen.is_new(&node, run, id, number(e, "unix-ms")) {
                continue;
            }
            if !shown.insert((node, run, id)) {
                continue;
            }
            let kind = text(e, "kind");
            let message = text(e, "message");
            match judge(&(kind, message.clone())) {
                Step::Skip => {}
                Step::Show => outln!("  {message}"),
                Step::Done => {
                    outln!("  {message}");
                    return Ok(ExitCode::SUCCESS);
                }
                Step::Fail => {
                    eprintln!("  {message}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("still not done after {} s (halo events shows what happens)", timeout.as_secs())
}

/// `halo plan`.
#[derive(Args)]
pub struct PlanArgs {
    /// What if these hosts failed now (comma-separated)?
    #[arg(long, value_delimiter = ',')]
    fail: Vec<String>,
    /// Print the API's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

pub fn plan(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let query = if args.fail.is_empty() { String::new() } else { format!("?fail={}", args.fail.join(",")) };
    let answer = args.api.agent()?.call("GET", &format!("/api/v1/plan{query}"), None)?;
    if args.json {
        return print_json(&answer);
    }
    match answer.get("plan") {
        Some(p) if !p.is_null() => {
            outln!(
                "the cluster tolerates {} host failure(s); target {}{}",
                text(p, "tolerates"),
                text(p, "target"),
                if p.get("overcommitted").and_then(Value::as_bool) == Some(true) { " — OVERCOMMITTED" } else { "" }
            );
            for pair in list(p, "unplaceable") {
                outln!("  cannot place {}", pair.as_array().map_or(String::new(), |a| format!("{a:?}")));
            }
        }
        _ => outln!("no failover plan yet (the master computes it)"),
    }
    if let Some(w) = answer.get("what-if").filter(|w| !w.is_null()) {
        outln!("if {} failed now:", text(w, "failed"));
        let pairs = |key: &str| -> Vec<Vec<String>> {
            list(w, key)
                .iter()
                .filter_map(|p| p.as_array())
                .map(|a| a.iter().map(|x| x.as_str().unwrap_or("").to_string()).collect())
                .collect()
        };
        let placed = pairs("placed");
        let unplaced = pairs("unplaced");
        if !placed.is_empty() {
            table(&["vm", "restarted on"], placed);
        }
        if !unplaced.is_empty() {
            table(&["vm", "not restarted because"], unplaced);
        }
        for vm in list(w, "lost") {
            outln!("  {} stays down (not protected)", vm.as_str().unwrap_or(""));
        }
        if list(w, "placed").is_empty() && list(w, "unplaced").is_empty() {
            outln!("  no protected VM runs there");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `halo events`.
#[derive(Args)]
pub struct EventsArgs {
    /// Alerts only.
    #[arg(long)]
    alerts: bool,
    /// At most this many (the newest).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Only this agent's events (default: every reachable agent's, merged).
    #[arg(long)]
    local: bool,
    /// Print the API's JSON.
    #[arg(long)]
    json: bool,
    /// The failovers instead: one line each (from the host's last heartbeat to its last VM
    /// running again).
    #[arg(long, conflicts_with_all = ["alerts", "local"])]
    incidents: bool,
    /// One failover, step by step, with the time each step took.
    #[arg(long, value_name = "N", conflicts_with_all = ["alerts", "local", "incidents"])]
    incident: Option<u32>,
    #[command(flatten)]
    api: ApiArgs,
}

/// `halo events --incidents` / `--incident N`.
fn incidents(args: &EventsArgs) -> anyhow::Result<ExitCode> {
    let answer = args.api.agent()?.call("GET", "/api/v1/incidents", None)?;
    let all = list(&answer, "incidents");
    let clock = |ms: u64| {
        let secs = ms / 1000;
        format!("{:02}:{:02}:{:02}.{:03}", (secs / 3600) % 24, (secs / 60) % 60, secs % 60, ms % 1000)
    };
    let number = |v: &Value, key: &str| v.get(key).and_then(Value::as_u64);
    let Some(n) = args.incident else {
        if args.json {
            return print_json(&answer);
        }
        if all.is_empty() {
            outln!("no failover in the cluster's recent events");
        }
        for i in all {
            let took =
                number(i, "took-ms").map_or("still under way".to_string(), |ms| format!("{:.1} s", ms as f64 / 1e3));
            outln!(
                "{:>3}  {}  {} {}: {} VM(s), {} running again, {took}",
                text(i, "id"),
                clock(number(i, "began-at").unwrap_or(0)),
                text(i, "host"),
                text(i, "verdict"),
                list(i, "vms").len(),
                list(i, "restarted").len()
            );
        }
        return Ok(ExitCode::SUCCESS);
    };
    let Some(incident) = all.iter().find(|i| number(i, "id") == Some(u64::from(n))) else {
        bail!(
            "no incident {n} in the cluster's recent events ({} known; `halo events --incidents` lists them)",
            all.len()
        );
    };
    if args.json {
        return print_json(incident);
    }
    outln!(
        "incident {n}: {} {} at {}, VMs {}",
        text(incident, "host"),
        text(incident, "verdict"),
        clock(number(incident, "began-at").unwrap_or(0)),
        list(incident, "vms").iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")
    );
    let mut previous = 0;
    for step in list(incident, "steps") {
        let after = number(step, "after-ms").unwrap_or(0);
        outln!(
            "  +{:>6.1}s (+{:>4.1}s)  {:<22} {}",
            after as f64 / 1e3,
            after.saturating_sub(previous) as f64 / 1e3,
            text(step, "kind"),
            text(step, "message")
        );
        previous = after;
    }
    match number(incident, "took-ms") {
        Some(ms) => outln!("took {:.1} s from the last heartbeat to the last VM running again", ms as f64 / 1e3),
        None => outln!("still under way: not every VM runs again"),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn events(args: EventsArgs) -> anyhow::Result<ExitCode> {
    if args.incidents || args.incident.is_some() {
        return incidents(&args);
    }
    let path = format!(
        "/api/v1/{}?limit={}&cluster={}",
        if args.alerts { "alerts" } else { "events" },
        args.limit,
        !args.local
    );
    let answer = args.api.agent()?.call("GET", &path, None)?;
    if args.json {
        return print_json(&answer);
    }
    for e in list(&answer, "events") {
        let secs = e.get("unix-ms").and_then(Value::as_u64).unwrap_or(0) / 1000;
        let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
        outln!(
            "{h:02}:{m:02}:{s:02} {:<8} {:<7} {:<22} {}",
            text(e, "node"),
            text(e, "severity"),
            text(e, "kind"),
            text(e, "message")
        );
        if let Some(trace) = e.get("trace").and_then(Value::as_str) {
            outln!("{:>40}why: {trace}", "");
        }
        let decisions: Vec<String> =
            list(e, "decisions").iter().filter_map(Value::as_u64).map(|d| d.to_string()).collect();
        if !decisions.is_empty() {
            outln!(
                "{:>40}policy decision(s) {} of run {} (in {}'s decisions-dir)",
                "",
                decisions.join(", "),
                text(e, "run"),
                text(e, "node")
            );
        }
    }
    let unreachable = list(&answer, "unreachable");
    if !unreachable.is_empty() {
        eprintln!("(no answer from {})", unreachable.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

/// `halo ha enable|disable`.
#[derive(Args)]
pub struct HaArgs {
    /// `enable` or `disable`.
    #[arg(value_parser = ["enable", "disable"])]
    action: String,
    #[command(flatten)]
    api: ApiArgs,
}

pub fn ha(args: HaArgs) -> anyhow::Result<ExitCode> {
    let enabled = args.action == "enable";
    args.api.agent()?.call("POST", "/api/v1/ha", Some(json!({ "enabled": enabled })))?;
    outln!("HA {} for the cluster", if enabled { "enabled" } else { "disabled" });
    Ok(ExitCode::SUCCESS)
}

/// `halo balance …`.
#[derive(Subcommand)]
pub enum BalanceCommand {
    /// What balancing would move now, and why (the master's proposal; nothing moves).
    Plan {
        /// The proposal as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Move it now (live migrations, a few at a time), following until the round is done.
    Apply {
        /// Return once the master started.
        #[arg(long)]
        no_wait: bool,
        /// Give up following after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        #[command(flatten)]
        api: ApiArgs,
    },
}

pub fn balance(command: BalanceCommand) -> anyhow::Result<ExitCode> {
    match command {
        BalanceCommand::Plan { json, api } => {
            let answer = api.agent()?.call("GET", "/api/v1/balance", None)?;
            if json {
                return print_json(&answer);
            }
            let p = answer.get("proposal").cloned().unwrap_or_default();
            let number = |key: &str| p.get(key).and_then(Value::as_f64).unwrap_or(0.0);
            outln!(
                "mode {}; imbalance {:.1} points (threshold {:.0}){}",
                text(&answer, "mode"),
                number("imbalance"),
                number("threshold"),
                if list(&p, "moves").is_empty() {
                    "; nothing to move".to_string()
                } else {
                    format!("; after these moves {:.1}", number("imbalance-after"))
                }
            );
            let rows: Vec<Vec<String>> = list(&p, "moves")
                .iter()
                .map(|m| vec![text(m, "vm"), text(m, "from"), text(m, "to"), text(m, "reason")])
                .collect();
            if !rows.is_empty() {
                table(&["vm", "from", "to", "why"], rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        BalanceCommand::Apply { no_wait, timeout, api } => {
            let agent = api.agent()?;
            let since = EventsSeen::now(&agent)?;
            agent.call("POST", "/api/v1/balance/apply", Some(json!({})))?;
            outln!("balancing asked of the master");
            if no_wait {
                return Ok(ExitCode::SUCCESS);
            }
            follow(&agent, since, Duration::from_secs(timeout), |event| match event.0.as_str() {
                "balance-started" | "balance-move" | "vm-migrated" => Step::Show,
                "balance-done" => Step::Done,
                "migration-failed" => Step::Show,
                _ => Step::Skip,
            })
        }
    }
}

/// `halo plugin reload`.
pub fn reload(api: &ApiArgs) -> anyhow::Result<ExitCode> {
    let agent = api.agent()?;
    let answer = agent.call("POST", "/api/v1/plugins/reload", Some(json!({})));
    let answer = match answer {
        Ok(a) => a,
        Err(e) => bail!("{e}"),
    };
    if let Some(hosts) = answer.get("hosts").and_then(Value::as_object) {
        for (host, results) in hosts {
            let results = results.as_array().map_or(&[][..], Vec::as_slice);
            if results.is_empty() {
                outln!("{host}: no plugin files (built-in policies)");
            }
            for r in results {
                outln!("{host}: {}: {}", text(r, "world"), text(r, "detail"));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `halo plugin promote WORLD`.
pub fn promote(api: &ApiArgs, world: &str) -> anyhow::Result<ExitCode> {
    let Some(world) = halo_agent::decisions::DecisionWorld::parse(world) else {
        bail!("unknown decision point `{world}`: one of isolation, placement, restart-order, balancing");
    };
    let agent = api.agent()?;
    // 409 carries the per-host outcome too.
    let (status, answer) = agent.call_any("POST", "/api/v1/plugins/promote", Some(json!({ "world": world })))?;
    if answer.get("hosts").is_none() {
        let message = answer.get("error").and_then(Value::as_str).unwrap_or("(no message)");
        bail!("{message} (HTTP {status})");
    }
    let mut all_ok = (200..300).contains(&status);
    if let Some(hosts) = answer.get("hosts").and_then(Value::as_object) {
        for (host, r) in hosts {
            let ok = r.get("ok").and_then(Value::as_bool) == Some(true);
            all_ok &= ok;
            outln!("{host}: {}{}", if ok { "" } else { "NOT PROMOTED: " }, text(r, "detail"));
        }
    }
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_new_by_their_agents_numbers_whatever_the_clocks_say() {
        let seen = EventsSeen {
            newest: BTreeMap::from([("host-1".into(), (500, 40)), ("host-2".into(), (600, 7))]),
            unix_ms: 1_000_000,
        };
        // host-1's clock is 5 s behind: its next event is new although stamped before.
        assert!(seen.is_new("host-1", 500, 41, 995_000));
        // host-2's clock is 5 s ahead: its old event is old although stamped after.
        assert!(!seen.is_new("host-2", 600, 7, 1_005_000));
        assert!(!seen.is_new("host-2", 600, 3, 1_005_000));
        assert!(seen.is_new("host-2", 600, 8, 1_005_000));
        // An agent that showed nothing before: judged by the clock.
        assert!(seen.is_new("host-3", 700, 1, 1_000_000));
        assert!(!seen.is_new("host-3", 700, 2, 999_999));
    }

    #[test]
    fn a_restarted_agent_numbering_from_one_again_is_still_followed() {
        let seen = EventsSeen { newest: BTreeMap::from([("host-1".into(), (500, 40))]), unix_ms: 1_000_000 };
        // host-1 restarted during the command: run 900, ids from 1.
        assert!(seen.is_new("host-1", 900, 1, 1_002_000));
        assert!(seen.is_new("host-1", 900, 2, 1_002_001));
        // Events of an older run that only now show up (another agent's merge) are old.
        assert!(!seen.is_new("host-1", 400, 90, 1_003_000));
    }
}
