//! `halo.toml`: what one agent needs to know — the cluster (its hosts with their addresses on
//! every management network, the datastores, the isolation addresses, the VMs), this host, the
//! cluster key, the plugins, the timeouts.
//!
//! Plain data with a validation step ([`AgentConfig::load`]): a file that does not parse is
//! refused with the line and the key; a file that parses is checked as a whole and every
//! problem is reported at once, each with its key path (`hosts[2].addresses.B`) and what to do.
//! The cluster part is handed to the core as a [`ClusterConfig`], whose own checks (timeouts
//! that could let a VM run twice, duplicate names) are reported the same way.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use halo_core::config::{HaSettings, PolicySettings, Timeouts};
use halo_core::{ClusterConfig, HostSpec, VmSpec};
use halo_plugin_runtime::{CompileLimits, CpuBudget, SandboxLimits};
use serde::Deserialize;

/// What a decision may not use of the fence timeout: conversion, validation and the step
/// around the plugin call.
pub const DECISION_MARGIN_MS: u64 = 100;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AgentConfig {
    /// The cluster's name (in every heartbeat; datastores keep `.halo/<cluster>/`).
    pub cluster: String,
    /// This host: one of `hosts`.
    pub host: String,
    /// The cluster key (mode 0600, at least 32 bytes), the same on every host.
    pub key_file: PathBuf,
    /// UDP port of the heartbeats on every network.
    #[serde(default = "default_port")]
    pub heartbeat_port: u16,
    /// The management networks, by name (`A`, `B`).
    pub networks: Vec<String>,
    /// Addresses a host that hears no agent pings to tell isolation from a lonely cluster.
    #[serde(default)]
    pub isolation_addresses: Vec<IpAddr>,
    /// Per management network, its IPv4 broadcast address: heartbeats go once to it instead
    /// of once to every peer, so a host sends one packet per network and interval however
    /// large the cluster (decision 0016). For clusters of more than a few dozen hosts whose
    /// hosts share each network's segment. Absent: one packet per peer.
    #[serde(default)]
    pub broadcast: BTreeMap<String, std::net::Ipv4Addr>,
    /// Per management network, this host's interface on it (e.g. `{ A = "eno1", B = "eno2" }`):
    /// the network's heartbeat sockets are bound to it (`SO_BINDTODEVICE`), and so are the
    /// pings of peers on the first network, so a network's packets never leave by another
    /// network's link whatever the routing table says — the redundancy of two networks holds
    /// even when their subnets overlap or a route points elsewhere. Absent: the routing table
    /// decides.
    #[serde(default)]
    pub interfaces: BTreeMap<String, String>,
    /// Every host of the cluster (this one too).
    pub hosts: Vec<HostEntry>,
    /// The datastores.
    #[serde(default)]
    pub datastores: Vec<DatastoreEntry>,
    /// Where the cluster coordinates: the datastores (default) or etcd (decision 0017).
    #[serde(default)]
    pub coordination: CoordinationEntry,
    /// How this agent reaches libvirt.
    #[serde(default)]
    pub libvirt: LibvirtEntry,
    /// Policy plugins (none: the built-in policy decides).
    #[serde(default)]
    pub plugins: PluginEntry,
    /// Timeouts (defaults: see `halo_core::config::Timeouts`).
    #[serde(default)]
    pub timeouts: Timeouts,
    /// HA settings.
    #[serde(default)]
    pub ha: HaSettings,
    /// The plugins' own settings.
    #[serde(default)]
    pub policy: PolicySettings,
    /// The VMs halo knows.
    #[serde(default)]
    pub vms: Vec<VmSpec>,
    /// Placement rules (`[[rules]]`: VM–host, VMs together or apart; `must` or `should`).
    #[serde(default)]
    pub rules: Vec<halo_core::rules::Rule>,
    /// Balancing (`[balance]`: mode, threshold, limits).
    #[serde(default)]
    pub balance: halo_core::balance::BalanceSettings,
    /// The HTTP API, the status page and `/metrics` (absent: not served).
    #[serde(default)]
    pub api: Option<ApiEntry>,
    /// Where events and alerts go besides the agent's own log.
    #[serde(default)]
    pub alerts: AlertsEntry,
    /// The host watchdog.
    #[serde(default)]
    pub watchdog: WatchdogEntry,
    /// The liveness path: real-time priority, locked memory.
    #[serde(default)]
    pub liveness: LivenessEntry,
    /// VM leases on shared storage (sanlock): none by default.
    #[serde(default)]
    pub leases: LeasesEntry,
    /// Proactive HA's health provider.
    #[serde(default)]
    pub health: crate::health::HealthEntry,
}

/// VM leases on shared storage (`[leases]`): with `kind = "sanlock"`, libvirt's sanlock lock
/// manager takes a lease per protected VM before QEMU runs, so no tool can start it twice; a
/// restart after a host failure waits until that host's leases expired (8 × io-timeout-s + 60
/// s after its last renewal). docs/operator.md, "VM leases".
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct LeasesEntry {
    /// `none` (default) or `sanlock`.
    pub kind: LeaseKind,
    /// The lease directory, mounted at this path on every host (NFS, a cluster file system).
    pub dir: Option<PathBuf>,
    /// This host's sanlock host id (1 … 2000), different on every host sharing `dir`.
    pub host_id: Option<u16>,
    /// sanlock's io timeout in seconds (1 … 60, default 10, sanlock's own): a host's leases
    /// expire 8 × this + 60 s after its last renewal.
    pub io_timeout_s: u32,
    /// The lockspace's name (default: the cluster's name).
    pub lockspace: Option<String>,
    /// The sanlock daemon's run directory (default `/run/sanlock`).
    pub sanlock_run_dir: Option<PathBuf>,
}

impl Default for LeasesEntry {
    fn default() -> Self {
        Self {
            kind: LeaseKind::None,
            dir: None,
            host_id: None,
            io_timeout_s: 10,
            lockspace: None,
            sanlock_run_dir: None,
        }
    }
}

/// Which VM leases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseKind {
    /// None: exclusivity rests on halo's claims, the libvirt hook and detection.
    #[default]
    None,
    /// sanlock leases through libvirt's sanlock lock manager.
    Sanlock,
}

/// The liveness path (heartbeats, datastore heartbeats, watchdog, fence watch on a thread of
/// their own; `liveness`): how much the system is asked to favour it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct LivenessEntry {
    /// SCHED_FIFO priority of the liveness thread (1–99; 0: normal scheduling). Where the
    /// system does not permit it the agent warns and runs on.
    pub realtime_priority: u8,
    /// Lock the agent's memory (`mlockall`) so a heartbeat never waits for swap; where not
    /// permitted the agent warns and runs on.
    pub lock_memory: bool,
}

impl Default for LivenessEntry {
    fn default() -> Self {
        Self { realtime_priority: 10, lock_memory: true }
    }
}

/// The host watchdog: a device that resets the host when the agent stops feeding it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct WatchdogEntry {
    /// The device (`/dev/watchdog`); its timeout must not exceed the fence timeout (set it
    /// with the driver, e.g. `modprobe softdog soft_margin=2`). Absent: no host watchdog, and
    /// a warning at start.
    pub device: Option<PathBuf>,
}

/// The HTTP API of this agent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ApiEntry {
    /// Address and port to listen on (e.g. `0.0.0.0:7401`).
    pub listen: std::net::SocketAddr,
    /// The admin token (one line, at least 16 characters, mode 0600), the same on every host:
    /// every read and every action; agents forward writes to the master with it.
    pub token_file: PathBuf,
    /// A read-only token (same form, another file): the status page, `/metrics` and every read,
    /// refused (403) on every action. For dashboards and monitoring.
    #[serde(default)]
    pub read_token_file: Option<PathBuf>,
    /// TLS: the certificate (PEM; the same file on every host can name every host's API
    /// address, as `halo agent --make-cert` writes it).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// TLS: the certificate's private key (PEM, mode 0600).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// What clients (the CLI, agents forwarding to the master) trust: a CA or the cluster's
    /// certificate (default: `cert-file`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Serve plain HTTP, without TLS: only on a trusted management network, and only when said.
    #[serde(default)]
    pub plain_http: bool,
}

/// Events and alerts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct AlertsEntry {
    /// Every event appended here as one JSON line (absent: kept in memory only).
    pub event_log: Option<PathBuf>,
    /// Every alert POSTed here as JSON (`http://` only; put a relay in front for TLS).
    pub webhook_url: Option<String>,
}

fn default_port() -> u16 {
    7400
}

/// One host.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HostEntry {
    /// Its name.
    pub name: String,
    /// Memory for VMs, MiB.
    pub memory_mib: u64,
    /// vCPUs for VMs.
    pub vcpus: u32,
    /// Labels VMs may require.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Its address on every management network.
    pub addresses: BTreeMap<String, IpAddr>,
    /// How the master reaches its libvirt (`qemu+tcp://…/system`).
    pub libvirt_uri: String,
    /// How another host's libvirtd reaches it for a migration (default: `libvirt-uri`).
    #[serde(default)]
    pub migration_uri: Option<String>,
    /// Its agent's API (default: its address on the first network, the port of `api.listen`).
    #[serde(default)]
    pub api_address: Option<std::net::SocketAddr>,
    /// Its fence devices, tried in this order (levels: its BMC, then a PDU): a master powers it
    /// off through them once it has been silent for the detection time, and restarts its VMs
    /// as soon as one confirms it is off. None: it is proved dead by the dead-time alone.
    #[serde(default)]
    pub fence: Vec<crate::fence::FenceDevice>,
    /// A reserved failover host: kept free of VMs, used first at failover.
    #[serde(default)]
    pub reserved: bool,
}

/// The name the etcd cluster has among the stores the core writes heartbeat records to.
pub const ETCD_STORE: &str = "etcd";

/// The coordination backend (`[coordination] backend`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CoordinationBackend {
    /// Heartbeat records, claims, the protected VMs and the settings on the datastores.
    #[default]
    Datastore,
    /// The same on an etcd cluster: heartbeat records under leases, claims as transactions,
    /// the protected VMs and settings as watched keys. The datastores (if any) still carry
    /// heartbeat records, but never a claim.
    Etcd,
}

/// `[coordination]`: where claims, liveness records, the protected VMs and the settings live.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct CoordinationEntry {
    /// `datastore` (default) or `etcd`.
    pub backend: CoordinationBackend,
    /// The etcd members' client URLs (`http://10.0.0.11:2379`), every member of the cluster.
    pub endpoints: Vec<String>,
    /// Every etcd request gives up after this (default 1 s; at most the fence timeout).
    pub timeout_ms: u64,
    /// etcd deletes a host's heartbeat record this long after its last renewal (default 10 s,
    /// at least 2).
    pub lease_ttl_s: u64,
}

impl Default for CoordinationEntry {
    fn default() -> Self {
        Self { backend: CoordinationBackend::Datastore, endpoints: Vec::new(), timeout_ms: 1_000, lease_ttl_s: 10 }
    }
}

impl CoordinationEntry {
    /// Whether etcd is the backend.
    pub fn etcd(&self) -> bool {
        self.backend == CoordinationBackend::Etcd
    }

    fn problems(&self, datastores: &[DatastoreEntry], fence_timeout_ms: u64, problems: &mut Vec<String>) {
        if !self.etcd() {
            if !self.endpoints.is_empty() {
                problems.push(
                    "coordination.endpoints: only read with backend = \"etcd\"; set the backend or remove them".into(),
                );
            }
            if datastores.is_empty() {
                problems.push(
                    "datastores: none configured; without a datastore no VM is ever restarted (claims live there; or use [coordination] backend = \"etcd\")".into(),
                );
            }
            return;
        }
        if self.endpoints.is_empty() {
            problems.push("coordination.endpoints: backend = \"etcd\" needs the members' client URLs, e.g. [\"http://10.0.0.11:2379\"]".into());
        }
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let well_formed =
                endpoint.strip_prefix("http://").and_then(|rest| rest.rsplit_once(':')).is_some_and(|(host, port)| {
                    !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
                });
            if endpoint.starts_with("https://") {
                problems.push(format!(
                    "coordination.endpoints[{i}]: `{endpoint}`: TLS to etcd is not supported yet; use http:// on a management network"
                ));
            } else if !well_formed {
                problems.push(format!("coordination.endpoints[{i}]: `{endpoint}` is not http://HOST:PORT"));
            }
        }
        if self.timeout_ms == 0 || self.timeout_ms > fence_timeout_ms {
            problems.push(format!(
                "coordination.timeout-ms: {} must be between 1 and timeouts.fence-timeout-ms ({fence_timeout_ms}): a claim \
                 in flight must have landed or failed when a resuming host looks its claims up",
                self.timeout_ms
            ));
        }
        if !(2..=3_600).contains(&self.lease_ttl_s) {
            problems.push(format!("coordination.lease-ttl-s: {} must be between 2 and 3600", self.lease_ttl_s));
        }
        if let Some(i) = datastores.iter().position(|d| d.name == ETCD_STORE) {
            problems.push(format!(
                "datastores[{i}]: the name `{ETCD_STORE}` is the etcd backend's among the stores; rename the datastore"
            ));
        }
    }
}

/// One datastore: a mounted directory or an NFSv3 export.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DatastoreEntry {
    /// Its name.
    pub name: String,
    /// A mounted directory.
    #[serde(default)]
    pub directory: Option<PathBuf>,
    /// An NFSv3 export, spoken by the agent itself.
    #[serde(default)]
    pub nfs: Option<NfsEntry>,
    /// Every operation gives up after this (default 2 s).
    #[serde(default = "default_datastore_timeout")]
    pub timeout_ms: u64,
}

fn default_datastore_timeout() -> u64 {
    2_000
}

/// An NFSv3 export.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NfsEntry {
    /// The server.
    pub server: IpAddr,
    /// The export's path.
    pub export: String,
    /// MOUNT port (default: ask the portmapper).
    #[serde(default)]
    pub mount_port: Option<u16>,
    /// NFS port (default: ask the portmapper).
    #[serde(default)]
    pub nfs_port: Option<u16>,
}

/// libvirt on this host.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct LibvirtEntry {
    /// This host's own libvirt.
    pub local_uri: String,
    /// Paths every host sees (disks there migrate live without a copy; a VM to protect must
    /// have its disks there).
    pub shared_storage: Vec<PathBuf>,
    /// How another host's libvirtd reaches a host for a migration, for every host without its
    /// own `migration-uri`: `{name}` is the host's name, `{address.NET}` its address on network
    /// NET (e.g. `qemu+tcp://{address.M}/system`). Default: the host's `libvirt-uri`.
    pub migration_uri_template: Option<String>,
}

impl Default for LibvirtEntry {
    fn default() -> Self {
        Self { local_uri: "qemu:///system".into(), shared_storage: Vec::new(), migration_uri_template: None }
    }
}

/// Plugin files per decision point, and the limits every plugin call runs under.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct PluginEntry {
    /// The isolation-policy plugin.
    pub isolation: Option<PathBuf>,
    /// The placement-engine plugin.
    pub placement: Option<PathBuf>,
    /// The restart-policy plugin.
    pub restart_order: Option<PathBuf>,
    /// The balancing-policy plugin.
    pub balancing: Option<PathBuf>,
    /// CPU budget per call in milliseconds (1 … 10000).
    pub cpu_budget_ms: u64,
    /// How the budget is enforced: `fuel` (deterministic: the same input stops at the same
    /// instruction everywhere, decision record 0001) or `epoch` (wall clock).
    pub cpu_budget: BudgetKind,
    /// Linear memory cap per call in MiB (1 … 4096).
    pub memory_mib: u64,
    /// Where compiled plugins are cached (absolute; created mode 0700, refused if others can
    /// write it): a plugin loads in well under a millisecond instead of ≈ 150 ms of compiling.
    /// None: compile at every load.
    pub cache_dir: Option<PathBuf>,
    /// Wall-clock limit of compiling one plugin, in seconds (1 … 3600, default 60). Plugins
    /// compile in a child process; one that overruns is refused and the previous policy stays.
    pub compile_timeout_s: u64,
    /// Memory limit of compiling one plugin, in MiB (256 … 65536, default 2048).
    pub compile_memory_mib: u64,
    /// Shadow candidates: run beside the policy in force on every real decision, off the
    /// liveness path and the agent loop, never acted on; their divergences are counted and
    /// recorded. `halo plugin promote WORLD` puts one in force.
    pub shadow_isolation: Option<PathBuf>,
    /// The shadow placement-engine plugin.
    pub shadow_placement: Option<PathBuf>,
    /// The shadow restart-policy plugin.
    pub shadow_restart_order: Option<PathBuf>,
    /// The shadow balancing-policy plugin.
    pub shadow_balancing: Option<PathBuf>,
    /// Where every policy decision is recorded (absolute; created mode 0700) for `halo plugin
    /// replay`. None: decisions are not recorded.
    pub decisions_dir: Option<PathBuf>,
    /// All recorded decisions together, compressed, in MiB (1 … 65536, default 64): the oldest
    /// go first.
    pub decisions_max_mib: u64,
    /// A segment of the record is compressed when it reaches this many MiB (1 … max, default 4).
    pub decisions_segment_mib: u64,
}

/// How a plugin call's CPU budget is enforced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BudgetKind {
    /// Fuel: deterministic.
    #[default]
    Fuel,
    /// Epoch deadline: wall clock.
    Epoch,
}

impl Default for PluginEntry {
    fn default() -> Self {
        let limits = SandboxLimits::default();
        let compile = CompileLimits::default();
        Self {
            isolation: None,
            placement: None,
            restart_order: None,
            balancing: None,
            cpu_budget_ms: limits.cpu.millis(),
            cpu_budget: BudgetKind::Fuel,
            memory_mib: (limits.memory_bytes >> 20) as u64,
            cache_dir: None,
            compile_timeout_s: compile.deadline.as_secs(),
            compile_memory_mib: compile.memory_bytes >> 20,
            shadow_isolation: None,
            shadow_placement: None,
            shadow_restart_order: None,
            shadow_balancing: None,
            decisions_dir: None,
            decisions_max_mib: 64,
            decisions_segment_mib: 4,
        }
    }
}

impl PluginEntry {
    /// The sandbox limits these settings give.
    pub fn limits(&self) -> SandboxLimits {
        let millis = self.cpu_budget_ms;
        let cpu = match self.cpu_budget {
            BudgetKind::Fuel => CpuBudget::Fuel { millis },
            BudgetKind::Epoch => CpuBudget::Epoch { millis },
        };
        SandboxLimits { cpu, memory_bytes: (self.memory_mib as usize) << 20, ..SandboxLimits::default() }
    }

    /// The time and memory one plugin compile may take.
    pub fn compile_limits(&self) -> CompileLimits {
        CompileLimits {
            deadline: std::time::Duration::from_secs(self.compile_timeout_s),
            memory_bytes: self.compile_memory_mib << 20,
        }
    }
}

/// Why a config was refused: every problem, each with its key path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {detail}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        detail: String,
    },
    /// Not valid TOML, or a key or value halo does not know.
    #[error("{path}: {detail}")]
    Parse {
        /// The file.
        path: String,
        /// toml's message: line, column, key.
        detail: String,
    },
    /// Parsed, but wrong.
    #[error("{path}: {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        path: String,
        /// Every problem.
        problems: Vec<String>,
    },
}

impl AgentConfig {
    /// Reads, parses and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: shown.clone(),
            detail: format!("{e} (give the config with --config, e.g. /etc/halo/halo.toml)"),
        })?;
        Self::parse(&text, &shown)
    }

    /// Reads `path` without checking it as a whole (for `halo agent --make-cert`, which writes
    /// files the checks look for).
    pub fn load_unchecked(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: shown.clone(), detail: e.to_string() })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: shown, detail: e.to_string() })
    }

    /// Parses and checks `text` (read from `path`, for the messages).
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let config: AgentConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_string(), detail: e.to_string() })?;
        let problems = config.problems();
        if problems.is_empty() { Ok(config) } else { Err(ConfigError::Invalid { path: path.to_string(), problems }) }
    }

    /// The stores heartbeat records are written to, as the core names them: the datastores,
    /// and `etcd` last with the etcd backend.
    pub fn store_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.datastores.iter().map(|d| d.name.clone()).collect();
        if self.coordination.etcd() {
            names.push(ETCD_STORE.to_string());
        }
        names
    }

    /// The cluster as the core sees it.
    pub fn cluster(&self) -> ClusterConfig {
        ClusterConfig {
            hosts: self
                .hosts
                .iter()
                .map(|h| HostSpec {
                    name: h.name.clone(),
                    memory_mib: h.memory_mib,
                    vcpus: h.vcpus,
                    labels: h.labels.clone(),
                    fenceable: !h.fence.is_empty(),
                    reserved: h.reserved,
                })
                .collect(),
            networks: self.networks.clone(),
            datastores: self.store_names(),
            isolation_addresses: self.isolation_addresses.iter().map(ToString::to_string).collect(),
            vms: self.vms.clone(),
            timeouts: self.timeouts,
            ha: self.ha.clone(),
            policy: self.policy.clone(),
            rules: self.rules.clone(),
            balance: self.balance,
            claim_store: self.coordination.etcd().then(|| ETCD_STORE.to_string()),
            names: Default::default(),
        }
    }

    /// Every problem, each with its key path and what to do.
    fn problems(&self) -> Vec<String> {
        let mut problems = self.health.problems();
        let name_ok = |n: &str| {
            !n.is_empty() && n.len() <= 64 && n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !name_ok(&self.cluster) {
            problems.push(format!("cluster: `{}` is not a name (letters, digits, - _ .; at most 64)", self.cluster));
        }
        if !self.hosts.iter().any(|h| h.name == self.host) {
            let names: Vec<&str> = self.hosts.iter().map(|h| h.name.as_str()).collect();
            problems.push(format!(
                "host: `{}` is not one of the hosts ({}); set it to this machine's entry in [[hosts]]",
                self.host,
                names.join(", ")
            ));
        }
        if self.heartbeat_port == 0 {
            problems.push("heartbeat-port: must not be 0".into());
        }
        for (network, address) in &self.broadcast {
            if !self.networks.contains(network) {
                problems.push(format!(
                    "broadcast.{network}: there is no management network {network} (networks = {:?})",
                    self.networks
                ));
            }
            if address.is_unspecified() || address.is_loopback() || address.is_multicast() {
                problems.push(format!(
                    "broadcast.{network}: {address} is not a broadcast address; give the network's own (e.g. 10.0.1.255 for 10.0.1.0/24)"
                ));
            }
            if let Some(host) = self.hosts.iter().find(|h| h.addresses.get(network) == Some(&IpAddr::V4(*address))) {
                problems.push(format!(
                    "broadcast.{network}: {address} is {}'s own address on {network}, not the network's broadcast address",
                    host.name
                ));
            }
        }
        for (network, interface) in &self.interfaces {
            if !self.networks.contains(network) {
                problems.push(format!(
                    "interfaces.{network}: there is no management network {network} (networks = {:?})",
                    self.networks
                ));
            }
            // Linux interface names: 1-15 bytes, no slash, no white space.
            if interface.is_empty()
                || interface.len() > 15
                || interface.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
            {
                problems.push(format!(
                    "interfaces.{network}: `{interface}` is not an interface name (1-15 characters, no `/`, `:` or space; e.g. eno1)"
                ));
            }
        }
        // Per address: which host has it, on which network, under which key.
        let mut seen_addresses: BTreeMap<IpAddr, (usize, &str, String)> = BTreeMap::new();
        // One host may use one address on two networks only when each of them is bound to its
        // own interface (the networks' subnets then overlap; the binding keeps them apart).
        let apart = |a: &str, b: &str| match (self.interfaces.get(a), self.interfaces.get(b)) {
            (Some(x), Some(y)) => x != y,
            _ => false,
        };
        for (i, host) in self.hosts.iter().enumerate() {
            let key = format!("hosts[{i}]");
            if !name_ok(&host.name) {
                problems.push(format!("{key}.name: `{}` is not a host name", host.name));
            }
            for network in &self.networks {
                match host.addresses.get(network) {
                    None => problems.push(format!(
                        "{key}.addresses.{network}: {} has no address on management network {network}; add it (every host needs one on every network)",
                        host.name
                    )),
                    Some(address) => match seen_addresses.get(address) {
                        Some((h, other_network, _)) if *h == i && apart(other_network, network) => {}
                        Some((h, _, other)) if *h == i => problems.push(format!(
                            "{key}.addresses.{network}: {address} is also {other}; one host may have one address on two networks only when `interfaces` binds each network to its own interface"
                        )),
                        Some((_, _, other)) => problems.push(format!("{key}.addresses.{network}: {address} is also {other}")),
                        None => {
                            seen_addresses.insert(*address, (i, network, format!("{key}.addresses.{network}")));
                        }
                    },
                }
            }
            for network in host.addresses.keys().filter(|n| !self.networks.contains(n)) {
                problems.push(format!(
                    "{key}.addresses.{network}: there is no management network {network} (networks = {:?})",
                    self.networks
                ));
            }
            if !host.libvirt_uri.contains("://") {
                problems.push(format!(
                    "{key}.libvirt-uri: `{}` is not a libvirt URI (qemu+tcp://HOST/system)",
                    host.libvirt_uri
                ));
            }
        }
        for (i, ds) in self.datastores.iter().enumerate() {
            let key = format!("datastores[{i}]");
            match (&ds.directory, &ds.nfs) {
                (None, None) => problems.push(format!(
                    "{key}: `{}` needs either directory = \"/path\" or nfs = {{ server, export }}",
                    ds.name
                )),
                (Some(_), Some(_)) => {
                    problems.push(format!("{key}: `{}` has both a directory and nfs; keep one", ds.name))
                }
                (Some(dir), None) if !dir.is_absolute() => {
                    problems.push(format!("{key}.directory: {} must be an absolute path", dir.display()))
                }
                (None, Some(nfs)) if !nfs.export.starts_with('/') => {
                    problems.push(format!("{key}.nfs.export: `{}` must start with /", nfs.export))
                }
                _ => {}
            }
            if ds.timeout_ms == 0 || ds.timeout_ms > 60_000 {
                problems.push(format!("{key}.timeout-ms: {} must be between 1 and 60000", ds.timeout_ms));
            }
        }
        self.coordination.problems(&self.datastores, self.timeouts.fence_timeout_ms, &mut problems);
        if !(1..=10_000).contains(&self.plugins.cpu_budget_ms) {
            problems.push(format!(
                "plugins.cpu-budget-ms: {} must be between 1 and 10000 (default 50)",
                self.plugins.cpu_budget_ms
            ));
        }
        let fence = self.timeouts.fence_timeout_ms;
        if self.plugins.cpu_budget_ms + DECISION_MARGIN_MS > fence {
            problems.push(format!(
                "plugins.cpu-budget-ms: {} ms does not fit the fence timeout (timeouts.fence-timeout-ms = {fence} ms) \
                 less {DECISION_MARGIN_MS} ms: the agent loop waits for a decision, and a loop without a step for the \
                 fence timeout is taken for hung (the watchdog is no longer fed); lower the budget or raise the fence timeout",
                self.plugins.cpu_budget_ms
            ));
        }
        for (i, ds) in self.datastores.iter().enumerate() {
            if ds.timeout_ms > fence {
                problems.push(format!(
                    "datastores[{i}].timeout-ms: {} ms exceeds timeouts.fence-timeout-ms ({fence} ms): a host resuming \
                     after a stall looks its claims up a fence timeout later, by when every claim in flight must have \
                     landed or failed",
                    ds.timeout_ms
                ));
            }
        }
        if self.liveness.realtime_priority > 99 {
            problems.push(format!(
                "liveness.realtime-priority: {} must be between 0 (off) and 99",
                self.liveness.realtime_priority
            ));
        }
        if let Some(dir) = &self.plugins.cache_dir
            && !dir.is_absolute()
        {
            problems.push(format!("plugins.cache-dir: {} must be an absolute path", dir.display()));
        }
        if !(1..=3600).contains(&self.plugins.compile_timeout_s) {
            problems.push(format!(
                "plugins.compile-timeout-s: {} must be between 1 and 3600 (default 60)",
                self.plugins.compile_timeout_s
            ));
        }
        if !(256..=65_536).contains(&self.plugins.compile_memory_mib) {
            problems.push(format!(
                "plugins.compile-memory-mib: {} must be between 256 and 65536 (default 2048)",
                self.plugins.compile_memory_mib
            ));
        }
        if !(1..=4096).contains(&self.plugins.memory_mib) {
            problems.push(format!(
                "plugins.memory-mib: {} must be between 1 and 4096 (default 64)",
                self.plugins.memory_mib
            ));
        }
        if let Some(dir) = &self.plugins.decisions_dir
            && !dir.is_absolute()
        {
            problems.push(format!("plugins.decisions-dir: {} must be an absolute path", dir.display()));
        }
        if !(1..=65_536).contains(&self.plugins.decisions_max_mib) {
            problems.push(format!(
                "plugins.decisions-max-mib: {} must be between 1 and 65536 (default 64)",
                self.plugins.decisions_max_mib
            ));
        }
        if !(1..=self.plugins.decisions_max_mib.max(1)).contains(&self.plugins.decisions_segment_mib) {
            problems.push(format!(
                "plugins.decisions-segment-mib: {} must be between 1 and decisions-max-mib ({}; default 4)",
                self.plugins.decisions_segment_mib, self.plugins.decisions_max_mib
            ));
        }
        for (key, path) in [
            ("plugins.isolation", &self.plugins.isolation),
            ("plugins.placement", &self.plugins.placement),
            ("plugins.restart-order", &self.plugins.restart_order),
            ("plugins.balancing", &self.plugins.balancing),
            ("plugins.shadow-isolation", &self.plugins.shadow_isolation),
            ("plugins.shadow-placement", &self.plugins.shadow_placement),
            ("plugins.shadow-restart-order", &self.plugins.shadow_restart_order),
            ("plugins.shadow-balancing", &self.plugins.shadow_balancing),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                problems.push(format!(
                    "{key}: {} does not exist; remove the key to use the built-in policy",
                    path.display()
                ));
            }
        }
        if let Some(api) = &self.api {
            match std::fs::read_to_string(&api.token_file) {
                Err(e) => problems.push(format!(
                    "api.token-file: {}: {e}; write a random token there (e.g. `head -c 24 /dev/urandom | base64 > {0}`)",
                    api.token_file.display()
                )),
                Ok(token) if token.trim().len() < 16 || token.trim().contains(char::is_whitespace) => {
                    problems.push(format!(
                        "api.token-file: {}: the token must be one word of at least 16 characters",
                        api.token_file.display()
                    ))
                }
                Ok(_) => {}
            }
            match (&api.cert_file, &api.key_file, api.plain_http) {
                (None, None, false) => problems.push(
                    "api: serve TLS (cert-file and key-file; `halo agent --config FILE --make-cert DIR` writes a self-signed pair \
                     naming every host's API address) or say plain-http = true (a trusted management network only)"
                        .into(),
                ),
                (Some(_), Some(_), true) => {
                    problems.push("api.plain-http: true beside cert-file and key-file; keep one (TLS or plain HTTP)".into())
                }
                (Some(cert), Some(key), false) => {
                    if let Err(e) = crate::tls::server_config(cert, key) {
                        problems.push(format!("api.cert-file / api.key-file: {e}"));
                    }
                }
                (Some(_), None, _) => problems.push("api.key-file: cert-file needs its key-file".into()),
                (None, Some(_), _) => problems.push("api.cert-file: key-file needs its cert-file".into()),
                (None, None, true) => {}
            }
            if let Some(trust) = self.api_trust_file()
                && let Err(e) = crate::tls::TlsClient::trusting(&trust)
            {
                problems.push(format!("api.ca-file: {e}"));
            }
            if let Some(file) = &api.read_token_file {
                match std::fs::read_to_string(file) {
                    Err(e) => problems.push(format!(
                        "api.read-token-file: {}: {e}; write a random token there (e.g. `head -c 24 /dev/urandom | base64 > {0}`) or remove the key",
                        file.display()
                    )),
                    Ok(token) if token.trim().len() < 16 || token.trim().contains(char::is_whitespace) => problems.push(
                        format!("api.read-token-file: {}: the token must be one word of at least 16 characters", file.display()),
                    ),
                    Ok(token) if Some(token.trim().to_string()) == self.api_token() => problems.push(format!(
                        "api.read-token-file: {}: the read-only token is the admin token (api.token-file); give it its own",
                        file.display()
                    )),
                    Ok(_) => {}
                }
            }
        }
        if let Some(device) = &self.watchdog.device
            && !device.exists()
        {
            problems.push(format!(
                "watchdog.device: {} does not exist; load a watchdog driver (a hardware one, or `modprobe softdog soft_margin=2`) or remove the key",
                device.display()
            ));
        }
        for host in &self.hosts {
            if let Err(why) = self.migration_uri(host) {
                problems.push(format!("libvirt.migration-uri-template: {why}"));
                break;
            }
        }
        if let Some(url) = &self.alerts.webhook_url
            && let Err(why) = crate::client::parse_http_url(url)
        {
            problems.push(format!("alerts.webhook-url: {why}"));
        }
        for (i, host) in self.hosts.iter().enumerate() {
            for (j, device) in host.fence.iter().enumerate() {
                if let Err(why) = device.check() {
                    problems.push(format!("hosts[{i}].fence[{j}]: {why}"));
                }
            }
        }
        if self.leases.kind == LeaseKind::Sanlock {
            if self.leases.dir.is_none() {
                problems.push("leases.dir: missing; the lease directory every host mounts at the same path".into());
            }
            if self.leases.host_id.is_none() {
                problems.push(
                    "leases.host-id: missing; this host's sanlock host id (1 … 2000), different on every host".into(),
                );
            }
            if let Some(leases) = self.sanlock_leases()
                && let Err(why) = leases.check()
            {
                problems.push(format!("leases: {why}"));
            }
        } else if self.leases != (LeasesEntry { kind: self.leases.kind, ..LeasesEntry::default() }) {
            problems
                .push("leases: settings without `kind = \"sanlock\"` would be ignored; add it or remove them".into());
        }
        if let Err(errors) = self.cluster().validate() {
            problems.extend(errors.0);
        }
        problems
    }

    /// The configured datastores a domain's disks lie on: an NFS disk on a datastore's server
    /// under its export, a file under a datastore's directory (what storage protection and
    /// placement take as the VM's datastores).
    pub fn datastores_of_disks(&self, xml: &str) -> Vec<String> {
        let mut found: Vec<String> = Vec::new();
        for disk in halo_libvirt::disk_locations(xml) {
            let on = self.datastores.iter().find(|d| match (&disk, &d.nfs, &d.directory) {
                (halo_libvirt::DiskSource::Nfs { server, path }, Some(nfs), _) => {
                    nfs.server.to_string() == *server && Path::new(path).starts_with(&nfs.export)
                }
                (halo_libvirt::DiskSource::Path(path), _, Some(dir)) => Path::new(path).starts_with(dir),
                _ => false,
            });
            if let Some(d) = on
                && !found.contains(&d.name)
            {
                found.push(d.name.clone());
            }
        }
        found
    }

    /// The sanlock leases this host takes, when `[leases] kind = "sanlock"` and its settings
    /// hold (the loader reports them otherwise).
    pub fn sanlock_leases(&self) -> Option<halo_libvirt::SanlockLeases> {
        if self.leases.kind != LeaseKind::Sanlock {
            return None;
        }
        Some(halo_libvirt::SanlockLeases {
            dir: self.leases.dir.clone()?,
            lockspace: self.leases.lockspace.clone().unwrap_or_else(|| self.cluster.clone()),
            host_id: self.leases.host_id?,
            io_timeout_s: self.leases.io_timeout_s,
            run_dir: self.leases.sanlock_run_dir.clone(),
        })
    }

    /// The URI another host's libvirtd reaches `host` at for a migration: its own
    /// `migration-uri`, else the template filled in, else its `libvirt-uri`.
    pub fn migration_uri(&self, host: &HostEntry) -> Result<String, String> {
        if let Some(uri) = &host.migration_uri {
            return Ok(uri.clone());
        }
        let Some(template) = &self.libvirt.migration_uri_template else { return Ok(host.libvirt_uri.clone()) };
        let mut out = String::new();
        let mut rest = template.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let close = rest[open..].find('}').ok_or_else(|| format!("`{template}`: a `{{` without `}}`"))? + open;
            let key = &rest[open + 1..close];
            let value = match key.strip_prefix("address.") {
                _ if key == "name" => host.name.clone(),
                Some(net) => host
                    .addresses
                    .get(net)
                    .ok_or_else(|| format!("`{template}`: {} has no address on network {net}", host.name))?
                    .to_string(),
                None => {
                    return Err(format!(
                        "`{template}`: unknown placeholder {{{key}}} (use {{name}} or {{address.NET}})"
                    ));
                }
            };
            out.push_str(&value);
            rest = &rest[close + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Every host's API address, this one too (none without `[api]`).
    pub fn api_addresses(&self) -> BTreeMap<String, std::net::SocketAddr> {
        let Some(api) = &self.api else { return BTreeMap::new() };
        self.hosts
            .iter()
            .filter_map(|h| {
                let address = h.api_address.or_else(|| {
                    let ip = h.addresses.get(self.networks.first()?)?;
                    Some(std::net::SocketAddr::new(*ip, api.listen.port()))
                })?;
                Some((h.name.clone(), address))
            })
            .collect()
    }

    /// The API token (after [`AgentConfig::load`] checked it).
    pub fn api_token(&self) -> Option<String> {
        let api = self.api.as_ref()?;
        std::fs::read_to_string(&api.token_file).ok().map(|t| t.trim().to_string())
    }

    /// The file of certificates clients trust when the API serves TLS (`ca-file`, else
    /// `cert-file`); `None` for plain HTTP.
    pub fn api_trust_file(&self) -> Option<PathBuf> {
        let api = self.api.as_ref()?;
        api.cert_file.as_ref()?;
        api.ca_file.clone().or_else(|| api.cert_file.clone())
    }

    /// The API's read-only token, if one is configured (after [`AgentConfig::load`] checked it).
    pub fn api_read_token(&self) -> Option<String> {
        let file = self.api.as_ref()?.read_token_file.as_ref()?;
        std::fs::read_to_string(file).ok().map(|t| t.trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
cluster = "lab"
host = "host-1"
key-file = "/etc/halo/cluster.key"
networks = ["A", "B"]
isolation-addresses = ["10.213.37.1", "10.213.37.65"]

[[hosts]]
name = "host-1"
memory-mib = 4096
vcpus = 4
addresses = { A = "10.213.37.2", B = "10.213.37.66" }
libvirt-uri = "qemu+tcp://10.213.37.130/system"

[[hosts]]
name = "host-2"
memory-mib = 4096
vcpus = 4
addresses = { A = "10.213.37.3", B = "10.213.37.67" }
libvirt-uri = "qemu+tcp://10.213.37.131/system"

[[datastores]]
name = "ds1"
nfs = { server = "10.213.37.190", export = "/ds1", mount-port = 20048, nfs-port = 2049 }

[timeouts]
heartbeat-interval-ms = 250
dead-time-ms = 3000
fence-timeout-ms = 2000
isolation-time-ms = 1500
election-timeout-ms = 1000
ping-timeout-ms = 500

[[vms]]
name = "db"
memory-mib = 64
vcpus = 1
priority = "restart"
"#;

    #[test]
    fn a_good_config_parses_and_hands_the_core_its_cluster() {
        let config = AgentConfig::parse(GOOD, "halo.toml").expect("valid");
        assert_eq!(config.heartbeat_port, 7400);
        assert_eq!(config.datastores[0].timeout_ms, 2_000);
        let cluster = config.cluster();
        assert_eq!(cluster.hosts.len(), 2);
        assert_eq!(cluster.isolation_addresses, vec!["10.213.37.1".to_string(), "10.213.37.65".to_string()]);
        assert_eq!(cluster.timeouts.dead_time_ms, 3_000);
        assert_eq!(
            cluster.timeouts.start_timeout_ms,
            Timeouts::default().start_timeout_ms,
            "unset keys keep their defaults"
        );
    }

    #[test]
    fn every_mistake_is_reported_at_once_with_its_key() {
        let bad = GOOD
            .replace("host = \"host-1\"", "host = \"host-9\"")
            .replace(
                "addresses = { A = \"10.213.37.3\", B = \"10.213.37.67\" }",
                "addresses = { A = \"10.213.37.2\", C = \"10.0.0.1\" }",
            )
            .replace("fence-timeout-ms = 2000", "fence-timeout-ms = 2900")
            .replace(
                "nfs = { server = \"10.213.37.190\", export = \"/ds1\", mount-port = 20048, nfs-port = 2049 }",
                "directory = \"relative/dir\"",
            );
        let error = AgentConfig::parse(&bad, "halo.toml").expect_err("invalid");
        let text = error.to_string();
        for needle in [
            "host: `host-9` is not one of the hosts (host-1, host-2)",
            "hosts[1].addresses.B: host-2 has no address on management network B",
            "hosts[1].addresses.A: 10.213.37.2 is also hosts[0].addresses.A",
            "hosts[1].addresses.C: there is no management network C",
            "datastores[0].directory: relative/dir must be an absolute path",
            "timeouts.fence-timeout-ms: 2900 ms + two heartbeat intervals",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
        }
        let ConfigError::Invalid { problems, .. } = error else { panic!("not a validation error") };
        assert_eq!(problems.len(), 6, "{problems:#?}");
    }

    #[test]
    fn interfaces_are_taken_per_network_and_let_one_host_keep_one_address_on_both() {
        let with = |line: &str, shared: bool| {
            let mut text = GOOD.replace("networks = [\"A\", \"B\"]\n", &format!("networks = [\"A\", \"B\"]\n{line}\n"));
            if shared {
                // One subnet for both networks: each host has one address on A and B.
                text = text
                    .replace(
                        r#"{ A = "10.213.37.2", B = "10.213.37.66" }"#,
                        r#"{ A = "10.213.37.2", B = "10.213.37.2" }"#,
                    )
                    .replace(
                        r#"{ A = "10.213.37.3", B = "10.213.37.67" }"#,
                        r#"{ A = "10.213.37.3", B = "10.213.37.3" }"#,
                    );
            }
            text
        };
        let bound = r#"interfaces = { A = "eth-a", B = "eth-b" }"#;
        let config = AgentConfig::parse(&with(bound, true), "halo.toml").expect("valid");
        assert_eq!(config.interfaces.get("B").map(String::as_str), Some("eth-b"));
        assert!(AgentConfig::parse(GOOD, "halo.toml").expect("valid").interfaces.is_empty(), "none by default");
        // One address on two networks without (or with the same) interface: refused.
        for line in ["", r#"interfaces = { A = "eth0", B = "eth0" }"#] {
            let text = AgentConfig::parse(&with(line, true), "halo.toml").expect_err("invalid").to_string();
            assert!(
                text.contains("hosts[0].addresses.B: 10.213.37.2 is also hosts[0].addresses.A; one host may have one address on two networks only when `interfaces` binds each network to its own interface"),
                "{text}"
            );
        }
        // Two hosts with one address: refused, bound or not.
        let twice = with(bound, true)
            .replace(r#"{ A = "10.213.37.3", B = "10.213.37.3" }"#, r#"{ A = "10.213.37.2", B = "10.213.37.3" }"#);
        let text = AgentConfig::parse(&twice, "halo.toml").expect_err("invalid").to_string();
        assert!(text.contains("hosts[1].addresses.A: 10.213.37.2 is also hosts[0].addresses.A"), "{text}");
        let bad = with(r#"interfaces = { C = "eth-c", A = "", B = "a/b" }"#, false);
        let text = AgentConfig::parse(&bad, "halo.toml").expect_err("invalid").to_string();
        for needle in [
            "interfaces.C: there is no management network C",
            "interfaces.A: `` is not an interface name",
            "interfaces.B: `a/b` is not an interface name",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
        }
    }

    #[test]
    fn broadcast_addresses_are_taken_per_network_and_checked() {
        assert!(GOOD.contains("networks = [\"A\", \"B\"]\n"));
        let with =
            |line: &str| GOOD.replace("networks = [\"A\", \"B\"]\n", &format!("networks = [\"A\", \"B\"]\n{line}\n"));
        let config =
            AgentConfig::parse(&with(r#"broadcast = { A = "10.213.37.63", B = "10.213.37.127" }"#), "halo.toml")
                .expect("valid");
        assert_eq!(config.broadcast.get("B").map(ToString::to_string).as_deref(), Some("10.213.37.127"));
        assert!(AgentConfig::parse(GOOD, "halo.toml").expect("valid").broadcast.is_empty(), "none by default");
        let bad = with(r#"broadcast = { C = "10.0.0.255", A = "10.213.37.2", B = "127.0.0.1" }"#);
        let text = AgentConfig::parse(&bad, "halo.toml").expect_err("invalid").to_string();
        for needle in [
            "broadcast.C: there is no management network C",
            "broadcast.A: 10.213.37.2 is host-1's own address on A",
            "broadcast.B: 127.0.0.1 is not a broadcast address",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
        }
        let v6 = with(r#"broadcast = { A = "fe80::1" }"#);
        assert!(AgentConfig::parse(&v6, "halo.toml").is_err(), "IPv4 only");
    }

    #[test]
    fn the_etcd_backend_adds_the_claim_store_and_is_checked() {
        let plain = AgentConfig::parse(GOOD, "halo.toml").expect("valid");
        assert_eq!(plain.coordination.backend, CoordinationBackend::Datastore, "the datastores by default");
        assert_eq!((plain.cluster().datastores, plain.cluster().claim_store), (vec!["ds1".to_string()], None));

        let etcd =
            "[coordination]\nbackend = \"etcd\"\nendpoints = [\"http://10.213.37.189:2379\", \"http://etcd-2:2379\"]\n";
        let config = AgentConfig::parse(&format!("{GOOD}\n{etcd}"), "halo.toml").expect("valid");
        let cluster = config.cluster();
        assert_eq!(cluster.datastores, ["ds1", ETCD_STORE], "heartbeat records on both");
        assert_eq!(cluster.claim_store.as_deref(), Some(ETCD_STORE), "claims on etcd only");
        assert_eq!((config.coordination.timeout_ms, config.coordination.lease_ttl_s), (1_000, 10));

        let no_datastores = GOOD.replace(
            "[[datastores]]\nname = \"ds1\"\nnfs = { server = \"10.213.37.190\", export = \"/ds1\", mount-port = 20048, nfs-port = 2049 }\n",
            "",
        );
        assert_ne!(no_datastores, GOOD);
        let text = AgentConfig::parse(&no_datastores, "halo.toml").expect_err("no store").to_string();
        assert!(text.contains("datastores: none configured"), "{text}");
        let only_etcd =
            AgentConfig::parse(&format!("{no_datastores}\n{etcd}"), "halo.toml").expect("etcd alone is enough");
        assert_eq!(only_etcd.cluster().datastores, [ETCD_STORE]);

        let bad = "[coordination]\nbackend = \"etcd\"\nendpoints = [\"https://e1:2379\", \"e2:2379\", \"http://e3\"]\ntimeout-ms = 999999\nlease-ttl-s = 1\n";
        let text = AgentConfig::parse(&format!("{GOOD}\n{bad}"), "halo.toml").expect_err("invalid").to_string();
        for needle in [
            "coordination.endpoints[0]: `https://e1:2379`: TLS to etcd is not supported yet",
            "coordination.endpoints[1]: `e2:2379` is not http://HOST:PORT",
            "coordination.endpoints[2]: `http://e3` is not http://HOST:PORT",
            "coordination.timeout-ms: 999999 must be between 1 and timeouts.fence-timeout-ms",
            "coordination.lease-ttl-s: 1 must be between 2 and 3600",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
        }
        let text = AgentConfig::parse(&format!("{GOOD}\n[coordination]\nbackend = \"etcd\"\n"), "halo.toml")
            .expect_err("no endpoints")
            .to_string();
        assert!(text.contains("coordination.endpoints: backend = \"etcd\" needs"), "{text}");
        let text =
            AgentConfig::parse(&format!("{GOOD}\n[coordination]\nendpoints = [\"http://e1:2379\"]\n"), "halo.toml")
                .expect_err("endpoints without the backend")
                .to_string();
        assert!(text.contains("coordination.endpoints: only read with backend = \"etcd\""), "{text}");
        let text = AgentConfig::parse(&format!("{GOOD}\n[coordination]\nbackend = \"zookeeper\"\n"), "halo.toml")
            .expect_err("unknown backend")
            .to_string();
        assert!(text.contains("unknown variant `zookeeper`, expected `datastore` or `etcd`"), "{text}");
        let clash = GOOD.replace("name = \"ds1\"", "name = \"etcd\"");
        let text = AgentConfig::parse(&format!("{clash}\n{etcd}"), "halo.toml").expect_err("name clash").to_string();
        assert!(text.contains("datastores[0]: the name `etcd` is the etcd backend's"), "{text}");
    }

    #[test]
    fn a_read_only_token_is_its_own_and_checked_like_the_admin_token() {
        let dir = tempfile::tempdir().expect("dir");
        let write = |name: &str, token: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, token).expect("token");
            path.display().to_string()
        };
        let admin = write("admin", "admin-token-0123456789\n");
        let api = |read: Option<String>| {
            let read = read.map(|r| format!("read-token-file = \"{r}\"\n")).unwrap_or_default();
            format!("{GOOD}\n[api]\nlisten = \"127.0.0.1:7401\"\ntoken-file = \"{admin}\"\nplain-http = true\n{read}")
        };
        let config = AgentConfig::parse(&api(None), "halo.toml").expect("no read-only token: fine");
        assert_eq!(config.api_read_token(), None);
        let config =
            AgentConfig::parse(&api(Some(write("read", "reader-token-0123456789"))), "halo.toml").expect("valid");
        assert_eq!(config.api_read_token().as_deref(), Some("reader-token-0123456789"));
        for (file, needle) in [
            (write("short", "short"), "the token must be one word of at least 16 characters"),
            (write("same", "admin-token-0123456789"), "the read-only token is the admin token"),
            (dir.path().join("missing").display().to_string(), "api.read-token-file"),
        ] {
            let text = AgentConfig::parse(&api(Some(file)), "halo.toml").expect_err("refused").to_string();
            assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
        }
    }

    #[test]
    fn the_api_serves_tls_or_says_plain_http_and_its_files_are_checked() {
        let dir = tempfile::tempdir().expect("dir");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path.display().to_string()
        };
        let token = write("token", "admin-token-0123456789");
        let (cert, key) = crate::tls::make_cert(&["10.213.37.2".into()]).expect("pair");
        let (cert, key) = (write("api.crt", &cert), write("api.key", &key));
        let api = |lines: &str| format!("{GOOD}\n[api]\nlisten = \"0.0.0.0:7401\"\ntoken-file = \"{token}\"\n{lines}");
        let tls = AgentConfig::parse(&api(&format!("cert-file = \"{cert}\"\nkey-file = \"{key}\"\n")), "halo.toml")
            .expect("TLS");
        assert_eq!(
            tls.api_trust_file().map(|p| p.display().to_string()),
            Some(cert.clone()),
            "trusts its own certificate"
        );
        let plain = AgentConfig::parse(&api("plain-http = true\n"), "halo.toml").expect("plain, said");
        assert_eq!(plain.api_trust_file(), None);
        let garbage = write("garbage", "not a certificate");
        for (lines, needle) in [
            (String::new(), "api: serve TLS (cert-file and key-file; `halo agent --config FILE --make-cert DIR`"),
            (format!("cert-file = \"{cert}\"\n"), "api.key-file: cert-file needs its key-file"),
            (
                format!("cert-file = \"{cert}\"\nkey-file = \"{key}\"\nplain-http = true\n"),
                "keep one (TLS or plain HTTP)",
            ),
            (format!("cert-file = \"{garbage}\"\nkey-file = \"{key}\"\n"), "no certificate in it"),
            (
                format!("cert-file = \"{cert}\"\nkey-file = \"{key}\"\nca-file = \"/nonexistent/ca.pem\"\n"),
                "api.ca-file: /nonexistent/ca.pem",
            ),
        ] {
            let text = AgentConfig::parse(&api(&lines), "halo.toml").expect_err("refused").to_string();
            assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
        }
    }

    #[test]
    fn plugin_limits_default_to_the_runtimes_and_are_checked() {
        let config = AgentConfig::parse(GOOD, "halo.toml").expect("valid");
        assert_eq!(config.plugins.limits(), SandboxLimits::default(), "50 ms of fuel, 64 MiB");
        let tuned = format!("{GOOD}\n[plugins]\ncpu-budget-ms = 400\ncpu-budget = \"epoch\"\nmemory-mib = 256\n");
        let plugins = AgentConfig::parse(&tuned, "halo.toml").expect("valid").plugins;
        assert_eq!(plugins.compile_limits(), CompileLimits::default(), "60 s and 2 GiB to compile");
        let limits = plugins.limits();
        assert_eq!(limits.cpu, CpuBudget::Epoch { millis: 400 });
        assert_eq!(limits.memory_bytes, 256 << 20);
        let bad = format!(
            "{GOOD}\n[plugins]\ncpu-budget-ms = 0\nmemory-mib = 8192\ncache-dir = \"cache\"\ncompile-timeout-s = 0\ncompile-memory-mib = 100\n"
        );
        let text = AgentConfig::parse(&bad, "halo.toml").expect_err("out of range").to_string();
        assert!(text.contains("plugins.compile-timeout-s: 0 must be between 1 and 3600 (default 60)"), "{text}");
        assert!(
            text.contains("plugins.compile-memory-mib: 100 must be between 256 and 65536 (default 2048)"),
            "{text}"
        );
        assert!(text.contains("plugins.cpu-budget-ms: 0 must be between 1 and 10000"), "{text}");
        assert!(text.contains("plugins.memory-mib: 8192 must be between 1 and 4096"), "{text}");
        assert!(text.contains("plugins.cache-dir: cache must be an absolute path"), "{text}");
        let kind = format!("{GOOD}\n[plugins]\ncpu-budget = \"wall\"\n");
        let text = AgentConfig::parse(&kind, "halo.toml").expect_err("unknown kind").to_string();
        assert!(text.contains("unknown variant `wall`"), "{text}");
    }

    #[test]
    fn a_typo_or_a_bad_value_names_the_line_and_the_key() {
        let typo =
            GOOD.replace("vcpus = 4\naddresses = { A = \"10.213.37.2\"", "vcpu = 4\naddresses = { A = \"10.213.37.2\"");
        let error = AgentConfig::parse(&typo, "halo.toml").expect_err("unknown key").to_string();
        assert!(error.contains("unknown field `vcpu`") && error.contains("line"), "{error}");
        let bad_ip = GOOD.replace("\"10.213.37.190\"", "\"storage-box\"");
        let error = AgentConfig::parse(&bad_ip, "halo.toml").expect_err("not an address").to_string();
        assert!(error.contains("invalid IP address") || error.contains("IP"), "{error}");
        assert!(error.starts_with("halo.toml:"), "{error}");
        let missing = AgentConfig::load(Path::new("/nonexistent/halo.toml")).expect_err("missing").to_string();
        assert!(missing.contains("--config"), "{missing}");
    }
}

#[cfg(test)]
mod migration_uris {
    use super::*;

    fn config(template: &str) -> Result<AgentConfig, ConfigError> {
        let key = std::env::temp_dir().join(format!("halo-mig-key-{}", std::process::id()));
        std::fs::write(&key, [7u8; 32]).expect("key");
        let text = format!(
            "cluster = \"c\"\nhost = \"h1\"\nkey-file = \"{}\"\nnetworks = [\"A\", \"M\"]\n\
             [[hosts]]\nname = \"h1\"\nmemory-mib = 1024\nvcpus = 2\naddresses = {{ A = \"10.0.0.1\", M = \"10.0.1.1\" }}\nlibvirt-uri = \"qemu+tcp://10.0.0.1/system\"\n\
             [[hosts]]\nname = \"h2\"\nmemory-mib = 1024\nvcpus = 2\naddresses = {{ A = \"10.0.0.2\", M = \"10.0.1.2\" }}\nlibvirt-uri = \"qemu+tcp://10.0.0.2/system\"\nmigration-uri = \"qemu+ssh://h2/system\"\n\
             [[datastores]]\nname = \"ds\"\ndirectory = \"/srv/ds\"\n\
             [libvirt]\nmigration-uri-template = \"{template}\"\n",
            key.display()
        );
        AgentConfig::parse(&text, "halo.toml")
    }

    #[test]
    fn the_template_fills_in_every_host_without_its_own_uri() {
        let c = config("qemu+tcp://{address.M}/system?name={name}").expect("valid");
        assert_eq!(c.migration_uri(&c.hosts[0]).as_deref(), Ok("qemu+tcp://10.0.1.1/system?name=h1"));
        assert_eq!(c.migration_uri(&c.hosts[1]).as_deref(), Ok("qemu+ssh://h2/system"), "its own wins");
        let Err(ConfigError::Invalid { problems, .. }) = config("qemu+tcp://{address.B}/system") else {
            panic!("an unknown network is refused")
        };
        assert!(
            problems.iter().any(|p| p.contains("libvirt.migration-uri-template") && p.contains("network B")),
            "{problems:?}"
        );
        let Err(ConfigError::Invalid { problems, .. }) = config("qemu+tcp://{ip}/system") else {
            panic!("an unknown placeholder is refused")
        };
        assert!(problems.iter().any(|p| p.contains("unknown placeholder {ip}")), "{problems:?}");
    }
}

#[cfg(test)]
mod example {
    use super::*;

    /// examples/halo.toml with its token file replaced by one of our own (`tag` keeps tests
    /// apart); the token file's path, to remove.
    fn example(tag: &str) -> (String, std::path::PathBuf) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/halo.toml");
        let text = std::fs::read_to_string(&path).expect("examples/halo.toml");
        // The example's token file is on the operator's machine; here one of our own.
        let token = std::env::temp_dir().join(format!("halo-example-token-{tag}-{}", std::process::id()));
        std::fs::write(&token, "0123456789abcdef0123\n").expect("token");
        let (cert, key) = crate::tls::make_cert(&["127.0.0.1".into()]).expect("a pair");
        let (cert_file, key_file) = (token.with_extension("crt"), token.with_extension("key"));
        std::fs::write(&cert_file, cert).expect("cert");
        std::fs::write(&key_file, key).expect("key");
        let text = text
            .replace("/etc/halo/api.token", &token.display().to_string())
            .replace("/etc/halo/api.crt", &cert_file.display().to_string())
            .replace("/etc/halo/api.key", &key_file.display().to_string());
        (text, token)
    }

    #[test]
    fn the_example_config_is_valid() {
        let (text, token) = example("a");
        let config = AgentConfig::parse(&text, "examples/halo.toml").expect("examples/halo.toml is valid");
        assert_eq!(config.api_token().as_deref(), Some("0123456789abcdef0123"));
        assert_eq!(config.api_addresses().len(), 3);
        let _ = std::fs::remove_file(&token);
        assert_eq!(config.cluster().hosts.len(), 3);
        assert_eq!(config.vms.len(), 3);
        assert_eq!(config.liveness, LivenessEntry { realtime_priority: 10, lock_memory: true });
    }

    #[test]
    fn a_budget_or_datastore_timeout_that_does_not_fit_the_fence_timeout_is_refused() {
        let (text, token) = example("b");
        let base = AgentConfig::parse(&text, "halo.toml").expect("valid");
        let fence = base.timeouts.fence_timeout_ms;
        let mut config = base.clone();
        config.plugins.cpu_budget_ms = fence - DECISION_MARGIN_MS;
        assert!(config.problems().is_empty(), "{:?}", config.problems());
        config.plugins.cpu_budget_ms = fence - DECISION_MARGIN_MS + 1;
        config.datastores[0].timeout_ms = fence + 1;
        config.liveness.realtime_priority = 100;
        let problems = config.problems();
        assert!(problems.iter().any(|p| p.starts_with("plugins.cpu-budget-ms") && p.contains("fence")), "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("datastores[0].timeout-ms")), "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("liveness.realtime-priority")), "{problems:?}");
        let _ = std::fs::remove_file(&token);
    }

    #[test]
    fn a_domains_disks_name_their_datastores() {
        let (text, token) = example("disks");
        let mut config = AgentConfig::parse(&text, "example").expect("valid");
        let _ = std::fs::remove_file(&token);
        config.datastores.push(DatastoreEntry {
            name: "local-dir".into(),
            directory: Some("/srv/vms".into()),
            nfs: None,
            timeout_ms: 2_000,
        });
        let xml = "<domain><devices>\
            <disk type='network'><source protocol='nfs' name='ds1/a/vm.qcow2'><host name='10.213.37.190'/></source></disk>\
            <disk type='network'><source protocol='nfs' name='ds10/vm.qcow2'><host name='10.213.37.190'/></source></disk>\
            <disk type='file'><source file='/srv/vms/x.img'/></disk>\
            <disk type='file'><source file='/srv/vms/y.img'/></disk></devices></domain>";
        // `ds10` is not under export `/ds1`: paths match by component.
        assert_eq!(config.datastores_of_disks(xml), ["ds1", "local-dir"]);
        assert!(config.datastores_of_disks("<domain/>").is_empty());
    }

    #[test]
    fn leases_are_checked_with_their_key_paths() {
        let (text, token) = example("c");
        assert!(AgentConfig::parse(&text, "halo.toml").expect("valid").sanlock_leases().is_none(), "off by default");
        let with = |table: &str| AgentConfig::parse(&format!("{text}\n[leases]\n{table}\n"), "halo.toml");
        let errors = |table: &str| with(table).map(|_| ()).expect_err("refused").to_string();
        let missing = errors("kind = \"sanlock\"");
        assert!(missing.contains("leases.dir: missing") && missing.contains("leases.host-id: missing"), "{missing}");
        let bad = errors("kind = \"sanlock\"\ndir = \"leases\"\nhost-id = 2001\nio-timeout-s = 0");
        assert!(bad.contains("absolute"), "{bad}");
        let ignored = errors("dir = \"/srv/leases\"");
        assert!(ignored.contains("kind = \"sanlock\""), "{ignored}");
        assert!(errors("kind = \"flock\"").contains("flock"), "an unknown kind is named");
        let config = with("kind = \"sanlock\"\ndir = \"/srv/leases\"\nhost-id = 7").expect("valid");
        let leases = config.sanlock_leases().expect("sanlock");
        assert_eq!((leases.host_id, leases.io_timeout_s, leases.lockspace.as_str()), (7, 10, config.cluster.as_str()));
        assert_eq!(leases.expiry_s(), 140);
        let _ = std::fs::remove_file(&token);
    }
}
