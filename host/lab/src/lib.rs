//! The lab: N "hosts" on one machine, the way `kind` lets people try Kubernetes on one box.
//!
//! Each host is a network namespace with an address on each management network (A, B) and on
//! the migration/storage network (M). The networks are bridges in a switch namespace.
//! Every address lies in one private /24 (default `10.213.37.0/24`); there is no route out of
//! the lab. Two layouts ([`Layout`]):
//!
//! - **split** (up to 60 hosts): the /24 is split in /26s, A `.0/26`, B `.64/26`, M `.128/26`,
//!   P `.192/26`; each bridge carries its network's gateway address, which the hosts use as
//!   isolation address;
//! - **shared** (61 to 200 hosts, or asked for): every network spans the whole /24 on its own
//!   segment and a host has the same address on each (`.2`, `.3`, …). The agents bind A's and B's
//!   heartbeats to their interfaces (`interfaces` in halo.toml), so they never cross another
//!   network's link; everything else goes over M (the hosts' routes to the /24 over A and B have
//!   higher metrics; the BMCs on P have host routes). The gateway `.1` is on M only.
//!
//! Faults are real: a link is cut by taking the host's port on the bridge down. `down()`
//! removes every namespace whose name carries the lab's prefix, so it also cleans up after a
//! crashed test or lab (the namespaces are found by name, not by memory).
//!
//! What this never does: touch an interface, namespace or process it did not create.

#![forbid(unsafe_code)]

pub mod bmc;
pub mod compile_bomb;
pub mod etcd;
mod guest;
pub mod slow_plugin;
pub mod watchdog;

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The management networks and the migration/storage network, in address order.
pub const NETWORKS: [&str; 3] = ["A", "B", "M"];

/// What went wrong in the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
    /// A command could not be started.
    #[error("cannot run `{command}`: {source} (install iproute2)")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// The lab cannot run on this machine.
    #[error("the lab cannot run here: {0}")]
    Unavailable(String),
    /// A bad request (unknown host or network, too many hosts).
    #[error("{0}")]
    Invalid(String),
    /// Entering a namespace failed.
    #[error("cannot enter network namespace {netns}: {detail}")]
    Enter {
        /// The namespace.
        netns: String,
        /// Why.
        detail: String,
    },
}

/// The most hosts of a lab in the split layout.
pub const SPLIT_MAX_HOSTS: usize = 60;
/// The most hosts of a lab in the shared layout.
pub const SHARED_MAX_HOSTS: usize = 200;

/// Above this many agents a lab's cluster runs with [`LARGE_TIMEOUTS`]: at the default 250 ms
/// interval, more agents' heartbeats alone need more than a 2-core machine
/// (docs/performance.md, "Scale, part 6").
pub const DEFAULT_TIMEOUTS_MAX_AGENTS: usize = 64;

/// The fence timeout of [`LARGE_TIMEOUTS`] (a lab watchdog waits as long).
pub const LARGE_FENCE_TIMEOUT_MS: u64 = 8_000;

/// The `[timeouts]` of a lab of more than [`DEFAULT_TIMEOUTS_MAX_AGENTS`] agents: every
/// interval four times the default (heartbeats and datastore records every second, as
/// vSphere's FDM sends them), the rules between them kept.
pub const LARGE_TIMEOUTS: [&str; 7] = [
    "heartbeat-interval-ms = 1000",
    "datastore-interval-ms = 1000",
    "dead-time-ms = 12000",
    "election-timeout-ms = 4000",
    "isolation-time-ms = 6000",
    "fence-timeout-ms = 8000",
    "detection-time-ms = 4000",
];

/// How a lab lays out its addresses in its /24 (the crate's documentation has both).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// A /26 per network: up to 60 hosts.
    #[default]
    Split,
    /// Every network on the whole /24, a host with one address on all: up to 200 hosts.
    Shared,
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LabSpec {
    /// The lab's name (namespaces are named `halo-NAME-…`).
    pub name: String,
    /// How many hosts (1–60 split, 1–200 shared).
    pub hosts: usize,
    /// The first three octets of the lab's /24.
    pub subnet: [u8; 3],
    /// The address layout.
    #[serde(default)]
    pub layout: Layout,
}

impl LabSpec {
    /// `hosts` hosts in the default /24: split up to 60 hosts, shared above.
    pub fn new(name: &str, hosts: usize) -> Self {
        let layout = if hosts > SPLIT_MAX_HOSTS { Layout::Shared } else { Layout::Split };
        Self { name: name.to_string(), hosts, subnet: [10, 213, 37], layout }
    }

    /// The same, in `layout`.
    pub fn with_layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }
}

/// A running lab. Dropping it takes it down.
#[derive(Debug)]
pub struct Lab {
    spec: LabSpec,
    down: bool,
    keep: bool,
}

fn run(program: &str, args: &[&str]) -> Result<String, LabError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| LabError::Spawn { command: command.clone(), source })?;
    if !out.status.success() {
        return Err(LabError::Command { command, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String, LabError> {
    run("ip", args)
}

/// Puts `address` (with its prefix) on `dev` in namespace `ns` and brings `dev` up. With
/// `route`, the address gets no prefix route of its own and `ip route add ROUTE…` is added
/// instead (the shared layout's one address on several links).
pub(crate) fn address_up(ns: &str, dev: &str, address: &str, route: Option<&[&str]>) -> Result<(), LabError> {
    let mut add = vec!["-n", ns, "addr", "add", address, "brd", "+", "dev", dev];
    if route.is_some() {
        add.push("noprefixroute");
    }
    ip(&add)?;
    ip(&["-n", ns, "link", "set", dev, "up"])?;
    if let Some(route) = route {
        let mut args = vec!["-n", ns, "route", "add"];
        args.extend_from_slice(route);
        ip(&args)?;
    }
    Ok(())
}

/// Whether the lab can run here: root, iproute2, and network namespaces. The `Err` says what
/// is missing (tests print it when they skip). Probed once per process, with a namespace name
/// no other probe uses (tests run in parallel).
pub fn available() -> Result<(), String> {
    static PROBE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    PROBE
        .get_or_init(|| {
            if !nix::unistd::geteuid().is_root() {
                return Err("not root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)".into());
            }
            if which("ip").is_none() {
                return Err("iproute2 is missing (apt-get install iproute2)".into());
            }
            let probe = format!("halo-probe-{}-{:?}", std::process::id(), std::thread::current().id())
                .replace(['(', ')', ' '], "");
            let _ = ip(&["netns", "del", &probe]);
            ip(&["netns", "add", &probe]).map_err(|e| format!("cannot create a network namespace: {e}"))?;
            ip(&["netns", "del", &probe]).map_err(|e| e.to_string())?;
            Ok(())
        })
        .clone()
}

/// For tests: whether a test that needs the lab can run. Where it cannot, the test is skipped
/// with the reason printed — unless `HALO_REQUIRE_LAB=1` (CI sets it), where a missing
/// capability fails the test instead: a lab test must never pass by skipping where it should
/// have run.
pub fn for_test(test: &str) -> bool {
    match available() {
        Ok(()) => true,
        Err(reason) if std::env::var("HALO_REQUIRE_LAB").is_ok_and(|v| v == "1") => {
            panic!("{test} needs the lab, and HALO_REQUIRE_LAB=1, but: {reason}")
        }
        Err(reason) => {
            println!("SKIP {test}: {reason}");
            eprintln!("SKIP {test}: {reason}");
            false
        }
    }
}

/// For tests: a part of the lab (libvirt, the NFS server) is missing: skip with the reason
/// printed, or fail when `HALO_REQUIRE_LAB=1`.
pub fn skip_for_test(test: &str, reason: &str) {
    if std::env::var("HALO_REQUIRE_LAB").is_ok_and(|v| v == "1") {
        panic!("{test} needs the lab, and HALO_REQUIRE_LAB=1, but: {reason}");
    }
    println!("SKIP {test}: {reason}");
    eprintln!("SKIP {test}: {reason}");
}

impl Lab {
    /// Builds the lab; a lab of the same name left behind is removed first.
    pub fn up(spec: LabSpec) -> Result<Self, LabError> {
        let most = match spec.layout {
            Layout::Split => SPLIT_MAX_HOSTS,
            Layout::Shared => SHARED_MAX_HOSTS,
        };
        if spec.hosts == 0 || spec.hosts > most {
            return Err(LabError::Invalid(format!(
                "a lab has 1 to {SPLIT_MAX_HOSTS} hosts (or up to {SHARED_MAX_HOSTS} in the shared layout), not {}",
                spec.hosts
            )));
        }
        if spec.name.is_empty()
            || spec.name.len() > 20
            || !spec.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(LabError::Invalid(format!("lab name `{}`: 1-20 letters, digits or dashes", spec.name)));
        }
        remove_namespaces(&format!("halo-{}-", spec.name))?;
        let _ = std::fs::remove_dir_all(Self::dir_of(&spec.name));
        let lab = Self { spec, down: false, keep: false };
        lab.build()?;
        std::fs::create_dir_all(lab.dir()).map_err(|e| LabError::Invalid(format!("{}: {e}", lab.dir().display())))?;
        let state = serde_json::to_vec_pretty(&lab.spec).map_err(|e| LabError::Invalid(e.to_string()))?;
        std::fs::write(lab.dir().join("lab.json"), state).map_err(|e| LabError::Invalid(e.to_string()))?;
        Ok(lab)
    }

    fn build(&self) -> Result<(), LabError> {
        let sw = self.switch();
        let prefix = self.prefix();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        // A switch does not run the IP firewall on the frames it forwards (where the kernel's
        // br_netfilter is loaded it would, for every broadcast to every port).
        for table in ["iptables", "ip6tables", "arptables"] {
            let _ =
                run("ip", &["netns", "exec", &sw, "sysctl", "-qw", &format!("net.bridge.bridge-nf-call-{table}=0")]);
        }
        for (n, network) in NETWORKS.iter().enumerate() {
            let bridge = format!("br-{}", network.to_lowercase());
            ip(&["-n", &sw, "link", "add", &bridge, "type", "bridge"])?;
            // Shared: the gateway is on M only (one address on several bridges of one
            // namespace would answer over whichever the routing table picks).
            if self.spec.layout == Layout::Split || *network == "M" {
                ip(&["-n", &sw, "addr", "add", &format!("{}/{prefix}", self.gateway_at(n)), "dev", &bridge])?;
            }
            ip(&["-n", &sw, "link", "set", &bridge, "up"])?;
        }
        // The storage namespace: the NFS server, on the M network.
        let storage = self.storage();
        ip(&["netns", "add", &storage])?;
        ip(&["-n", &storage, "link", "set", "lo", "up"])?;
        ip(&["link", "add", "eth-m", "netns", &storage, "type", "veth", "peer", "name", "st-m", "netns", &sw])?;
        ip(&["-n", &sw, "link", "set", "st-m", "master", "br-m"])?;
        ip(&["-n", &sw, "link", "set", "st-m", "up"])?;
        ip(&["-n", &storage, "addr", "add", &format!("{}/{prefix}", self.storage_address()), "dev", "eth-m"])?;
        ip(&["-n", &storage, "link", "set", "eth-m", "up"])?;
        let [a, b, c] = self.spec.subnet;
        let whole = format!("{a}.{b}.{c}.0/24");
        for host in 1..=self.spec.hosts {
            let ns = self.netns(host);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            if self.spec.layout == Layout::Shared {
                // A packet for this host's address may come in on any of its links (a peer's
                // heartbeat on A, while the route back is over M): no reverse-path filter.
                for key in ["all", "default"] {
                    run("ip", &["netns", "exec", &ns, "sysctl", "-qw", &format!("net.ipv4.conf.{key}.rp_filter=0")])?;
                }
            }
            for (n, network) in NETWORKS.iter().enumerate() {
                let inner = Self::interface(network);
                let port = self.port(host, network);
                ip(&["link", "add", &inner, "netns", &ns, "type", "veth", "peer", "name", &port, "netns", &sw])?;
                ip(&["-n", &sw, "link", "set", &port, "master", &format!("br-{}", network.to_lowercase())])?;
                ip(&["-n", &sw, "link", "set", &port, "up"])?;
                let address = format!("{}/{prefix}", self.address_at(host, n));
                if self.spec.layout == Layout::Shared && *network != "M" {
                    // Shared: M's route is the one unbound traffic takes; A's and B's come
                    // after it, for sockets bound to their interface.
                    let metric = (100 + n).to_string();
                    address_up(&ns, &inner, &address, Some(&[&whole, "dev", &inner, "metric", &metric]))?;
                } else {
                    address_up(&ns, &inner, &address, None)?;
                }
            }
        }
        self.build_power_network()
    }

    /// The switch namespace (bridges and gateways).
    pub fn switch(&self) -> String {
        format!("halo-{}-sw", self.spec.name)
    }

    /// The storage namespace (the NFS server).
    pub fn storage(&self) -> String {
        format!("halo-{}-storage", self.spec.name)
    }

    /// The storage server's address (on M).
    pub fn storage_address(&self) -> Ipv4Addr {
        let [a, b, c] = self.spec.subnet;
        Ipv4Addr::new(a, b, c, self.service_octet(190))
    }

    /// The last octet of a lab service (storage, etcd, BMCs) that has `split` in the split
    /// layout: the shared layout keeps the top of the /24 for them (`split + 60`).
    pub(crate) fn service_octet(&self, split: u8) -> u8 {
        match self.spec.layout {
            Layout::Split => split,
            Layout::Shared => split + 60,
        }
    }

    /// The address layout.
    pub fn layout(&self) -> Layout {
        self.spec.layout
    }

    /// The `[timeouts]` lines its agents run with: none (the defaults) up to
    /// [`DEFAULT_TIMEOUTS_MAX_AGENTS`] hosts, [`LARGE_TIMEOUTS`] above.
    pub fn agent_timeouts(&self) -> &'static [&'static str] {
        if self.spec.hosts > DEFAULT_TIMEOUTS_MAX_AGENTS { &LARGE_TIMEOUTS } else { &[] }
    }

    /// The `[liveness]` table its agents run with (empty: the defaults). `unlocked`: without
    /// `mlockall` (a locked agent holds ≈ 175 MB resident). Above
    /// [`DEFAULT_TIMEOUTS_MAX_AGENTS`] the liveness threads run without real-time priority:
    /// 128 of them on two cores starve the kernel's softirq thread and the lab's packets are
    /// dropped for everyone for seconds (docs/lab.md); a real host runs one.
    pub fn agent_liveness(&self, unlocked: bool) -> String {
        let large = self.spec.hosts > DEFAULT_TIMEOUTS_MAX_AGENTS;
        let mut table = String::new();
        if unlocked || large {
            table.push_str("\n[liveness]\n");
        }
        if unlocked {
            table.push_str("lock-memory = false\n");
        }
        if large {
            table.push_str("realtime-priority = 0\n");
        }
        table
    }

    /// The fence timeout its agents run with when not the default ([`Lab::agent_timeouts`]).
    pub fn agent_fence_timeout_ms(&self) -> Option<u64> {
        (self.spec.hosts > DEFAULT_TIMEOUTS_MAX_AGENTS).then_some(LARGE_FENCE_TIMEOUT_MS)
    }

    /// The prefix length of every address.
    pub(crate) fn prefix(&self) -> u8 {
        match self.spec.layout {
            Layout::Split => 26,
            Layout::Shared => 24,
        }
    }

    /// The lab's own directory (NFS exports, configs, logs); removed by `down`.
    pub fn dir(&self) -> PathBuf {
        Self::dir_of(&self.spec.name)
    }

    fn dir_of(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("halo-lab-{name}"))
    }

    /// The lab named `name` that an earlier `up` left running (for the `halo lab` command).
    /// Dropping it leaves it running; `down` removes it.
    pub fn attach(name: &str) -> Result<Self, LabError> {
        let state = Self::dir_of(name).join("lab.json");
        let bytes = std::fs::read(&state).map_err(|e| {
            LabError::Invalid(format!(
                "no lab named `{name}` is up ({}: {e}); start one with `halo lab up`",
                state.display()
            ))
        })?;
        let spec: LabSpec = serde_json::from_slice(&bytes)
            .map_err(|e| LabError::Invalid(format!("{}: not a lab state file: {e}", state.display())))?;
        let lab = Self { spec, down: false, keep: true };
        if !PathBuf::from("/run/netns").join(lab.switch()).exists() {
            return Err(LabError::Invalid(format!(
                "lab `{name}` is recorded but its namespaces are gone; run `halo lab down` then `halo lab up`"
            )));
        }
        Ok(lab)
    }

    /// Removes whatever a lab named `name` left behind (namespaces, processes in them, its
    /// directory), recorded or not.
    pub fn remove(name: &str) -> Result<(), LabError> {
        // Watchdog processes `halo lab up` left running (recorded by pid; only ours end).
        watchdog::stop_recorded(&Self::dir_of(name));
        let removed = remove_namespaces(&format!("halo-{name}-"));
        let _ = std::fs::remove_dir_all(Self::dir_of(name));
        removed
    }

    /// Leaves the lab running when this value is dropped (the `halo lab up` command).
    pub fn keep(mut self) -> Self {
        self.keep = true;
        self
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Host `host`'s namespace (hosts count from 1).
    pub fn netns(&self, host: usize) -> String {
        format!("halo-{}-host-{host}", self.spec.name)
    }

    /// The name of host `host` (`host-1`…).
    pub fn host_name(host: usize) -> String {
        format!("host-{host}")
    }

    /// Hosts in the lab.
    pub fn hosts(&self) -> usize {
        self.spec.hosts
    }

    /// The first three octets of the lab's /24.
    pub fn subnet(&self) -> [u8; 3] {
        self.spec.subnet
    }

    fn port(&self, host: usize, network: &str) -> String {
        format!("h{host}-{}", network.to_lowercase())
    }

    fn network_index(network: &str) -> Result<usize, LabError> {
        NETWORKS.iter().position(|n| n.eq_ignore_ascii_case(network)).ok_or_else(|| {
            LabError::Invalid(format!("no network `{network}` in the lab (it has {})", NETWORKS.join(", ")))
        })
    }

    fn check_host(&self, host: usize) -> Result<(), LabError> {
        if host == 0 || host > self.spec.hosts {
            return Err(LabError::Invalid(format!("no host {host} in the lab (hosts 1..={})", self.spec.hosts)));
        }
        Ok(())
    }

    /// The first address of network `n`'s range (`.0` shared).
    fn base(&self, n: usize) -> usize {
        match self.spec.layout {
            Layout::Split => 64 * n,
            Layout::Shared => 0,
        }
    }

    fn gateway_at(&self, n: usize) -> Ipv4Addr {
        let [a, b, c] = self.spec.subnet;
        Ipv4Addr::new(a, b, c, (self.base(n) + 1) as u8)
    }

    fn address_at(&self, host: usize, n: usize) -> Ipv4Addr {
        let [a, b, c] = self.spec.subnet;
        Ipv4Addr::new(a, b, c, (self.base(n) + 1 + host) as u8)
    }

    /// The last address of network `n`'s range (its broadcast address).
    fn last_at(&self, n: usize) -> usize {
        match self.spec.layout {
            Layout::Split => 64 * n + 63,
            Layout::Shared => 255,
        }
    }

    /// Host `host`'s address on `network`.
    pub fn address(&self, host: usize, network: &str) -> Result<Ipv4Addr, LabError> {
        self.check_host(host)?;
        Ok(self.address_at(host, Self::network_index(network)?))
    }

    /// The gateway of `network` (an isolation address: answers while the host's link is up).
    /// Shared layout: `.1` for every network, on M (reached over M).
    pub fn gateway(&self, network: &str) -> Result<Ipv4Addr, LabError> {
        Ok(self.gateway_at(Self::network_index(network)?))
    }

    /// The broadcast address of `network` (the last of its range: every host on it hears it).
    pub fn broadcast(&self, network: &str) -> Result<Ipv4Addr, LabError> {
        let [a, b, c] = self.spec.subnet;
        Ok(Ipv4Addr::new(a, b, c, self.last_at(Self::network_index(network)?) as u8))
    }

    /// An address on `network` that nobody in the lab has (the next to last of its range).
    pub fn unused_address(&self, network: &str) -> Result<Ipv4Addr, LabError> {
        let [a, b, c] = self.spec.subnet;
        Ok(Ipv4Addr::new(a, b, c, (self.last_at(Self::network_index(network)?) - 1) as u8))
    }

    /// Host `host`'s interface on `network` (`eth-a`, …), as its `interfaces` names it.
    pub fn interface(network: &str) -> String {
        format!("eth-{}", network.to_lowercase())
    }

    /// Cuts (`up = false`) or restores host `host`'s link on `network`, on the switch side
    /// (as a pulled cable: the host's own interface stays configured).
    pub fn set_link(&self, host: usize, network: &str, up: bool) -> Result<(), LabError> {
        self.check_host(host)?;
        Self::network_index(network)?;
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.switch(), "link", "set", &self.port(host, network), state]).map(drop)
    }

    /// Runs a command in host `host`'s namespace and returns its output.
    pub fn exec(&self, host: usize, program: &str, args: &[&str]) -> Result<String, LabError> {
        self.check_host(host)?;
        let ns = self.netns(host);
        let mut all = vec!["netns", "exec", ns.as_str(), program];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `f` on a thread inside host `host`'s network namespace (sockets it creates stay
    /// there) and returns what it returns.
    pub fn enter<T: Send + 'static>(&self, host: usize, f: impl FnOnce() -> T + Send + 'static) -> Result<T, LabError> {
        self.check_host(host)?;
        enter_netns(&self.netns(host), f)
    }

    /// Removes the lab (idempotent).
    pub fn down(&mut self) -> Result<(), LabError> {
        if self.down {
            return Ok(());
        }
        self.down = true;
        Self::remove(&self.spec.name)
    }

    /// Starts the NFS server (nfs-ganesha with its VFS backend, and rpcbind, which ganesha
    /// registers with) in the storage namespace, exporting `exports` (created under the lab's
    /// directory) as `/NAME`, NFSv3 over TCP, MOUNT on port 20048 and NFS on 2049. Waits until
    /// both ports answer. Restarting keeps the exported files.
    pub fn nfs_start(&self, exports: &[&str]) -> Result<(), LabError> {
        if which("ganesha.nfsd").is_none() || which("rpcbind").is_none() {
            return Err(LabError::Unavailable(
                "the NFS server needs nfs-ganesha, nfs-ganesha-vfs and rpcbind (apt-get install nfs-ganesha nfs-ganesha-vfs rpcbind)".into(),
            ));
        }
        self.nfs_stop()?;
        let dir = self.dir().join("nfs");
        let mut config = format!(
            "NFS_CORE_PARAM {{ Protocols = 3; NFS_Port = {NFS_PORT}; MNT_Port = {MOUNT_PORT}; Bind_addr = {}; Enable_NLM = false; Enable_RQUOTA = false; Mount_Path_Pseudo = true; }}\nNFSV4 {{ Graceless = true; }}\nLOG {{ Default_Log_Level = WARN; }}\n",
            self.storage_address()
        );
        for (i, export) in exports.iter().enumerate() {
            if export.is_empty() || !export.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(LabError::Invalid(format!("export name `{export}`: letters, digits, - and _ only")));
            }
            let path = self.dir().join("exports").join(export);
            std::fs::create_dir_all(&path).map_err(|e| LabError::Invalid(format!("{}: {e}", path.display())))?;
            config.push_str(&format!(
                "EXPORT {{ Export_Id = {}; Path = {}; Pseudo = /{export}; Protocols = 3; Transports = TCP; Access_Type = RW; Squash = No_Root_Squash; SecType = sys; FSAL {{ Name = VFS; }} }}\n",
                i + 1,
                path.display()
            ));
        }
        std::fs::create_dir_all(&dir).map_err(|e| LabError::Invalid(format!("{}: {e}", dir.display())))?;
        let conf = dir.join("ganesha.conf");
        std::fs::write(&conf, config).map_err(|e| LabError::Invalid(format!("{}: {e}", conf.display())))?;
        // A private /run for rpcbind and ganesha (their sockets and pid files must not meet the
        // machine's own, or another lab's).
        let script = format!(
            "mount -t tmpfs tmpfs /run && mkdir -p /run/rpcbind /var/run/ganesha && rpcbind -w && exec ganesha.nfsd -F -f {} -L {} -p /run/ganesha.pid",
            conf.display(),
            dir.join("ganesha.log").display()
        );
        let storage = self.storage();
        Command::new("ip")
            .args(["netns", "exec", &storage, "unshare", "--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|source| LabError::Spawn { command: "ganesha.nfsd".into(), source })
            .map(|mut child| std::thread::spawn(move || child.wait()))?;
        let address = self.storage_address();
        let up = enter_netns(&storage, move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while std::time::Instant::now() < deadline {
                let answers = |port| {
                    std::net::TcpStream::connect_timeout(&(address, port).into(), std::time::Duration::from_millis(200))
                        .is_ok()
                };
                if answers(NFS_PORT) && answers(MOUNT_PORT) {
                    return true;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            false
        })?;
        if !up {
            let log = std::fs::read_to_string(dir.join("ganesha.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            return Err(LabError::Unavailable(format!(
                "the NFS server did not come up within 60 s; its log ends: {}",
                tail.join(" | ")
            )));
        }
        Ok(())
    }

    /// Whether the NFS server runs (any process in the storage namespace).
    pub fn nfs_running(&self) -> bool {
        ip(&["netns", "pids", &self.storage()]).is_ok_and(|p| p.split_whitespace().next().is_some())
    }

    /// The exports `nfs_start` was last given.
    pub fn nfs_exports(&self) -> Vec<String> {
        std::fs::read_dir(self.dir().join("exports"))
            .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned())).collect())
            .unwrap_or_default()
    }

    /// Stops the NFS server (and its rpcbind): every process of the storage namespace, which
    /// the lab started.
    pub fn nfs_stop(&self) -> Result<(), LabError> {
        kill_all_in(&self.storage())
    }

    /// Blocks (`blocked = true`) or unblocks host `host`'s traffic to the storage server, with
    /// nftables in the storage namespace (the host keeps its networks; only storage is lost).
    pub fn block_storage(&self, host: usize, blocked: bool) -> Result<(), LabError> {
        self.check_host(host)?;
        let storage = self.storage();
        let source = self.address_at(host, 2).to_string();
        if blocked {
            nft(&storage, "add table inet halo_lab")?;
            nft(&storage, "add chain inet halo_lab input { type filter hook input priority 0 ; policy accept ; }")?;
            nft(&storage, &format!("add rule inet halo_lab input ip saddr {source} drop comment \"host-{host}\""))?;
        } else {
            delete_rules(&storage, "inet halo_lab input", &format!("host-{host}"))?;
        }
        Ok(())
    }
}

/// The libvirt side of the lab: one libvirtd per host.
impl Lab {
    fn host_dir(&self, host: usize) -> PathBuf {
        self.dir().join(format!("host-{host}"))
    }

    /// A 64 KiB ROM that halts the CPU (`cli; hlt; jmp` at the reset vector): a guest that runs
    /// at 0 % CPU and live-migrates, with no disk. Written once per lab; the same path on every
    /// host.
    pub fn hlt_rom(&self) -> Result<PathBuf, LabError> {
        let path = self.dir().join("hlt.rom");
        if !path.is_file() {
            let mut rom = vec![0xF4u8; 65_536];
            rom[0xFFF0..0xFFF4].copy_from_slice(&[0xFA, 0xF4, 0xEB, 0xFD]);
            std::fs::create_dir_all(self.dir())
                .map_err(|e| LabError::Invalid(format!("{}: {e}", self.dir().display())))?;
            std::fs::write(&path, rom).map_err(|e| LabError::Invalid(format!("{}: {e}", path.display())))?;
        }
        Ok(path)
    }

    /// The domain XML of a tiny diskless guest that runs the halt ROM (KVM where `/dev/kvm`
    /// is usable, QEMU's TCG otherwise).
    pub fn tiny_guest_xml(&self, name: &str, memory_mib: u64) -> Result<String, LabError> {
        let rom = self.hlt_rom()?;
        let kind = if kvm_usable() { "kvm" } else { "qemu" };
        Ok(format!(
            "<domain type='{kind}'><name>{name}</name><memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type><loader readonly='yes' type='rom'>{}</loader></os>\
             <on_crash>destroy</on_crash><devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>",
            rom.display()
        ))
    }

    /// [`Self::tiny_guest_xml`] with one qcow2 disk (`vda`, virtio, no host cache) on `image`.
    pub fn tiny_guest_with_disk_xml(&self, name: &str, memory_mib: u64, image: &Path) -> Result<String, LabError> {
        Ok(self.tiny_guest_xml(name, memory_mib)?.replace(
            "</devices>",
            &format!(
                "<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/><source file='{}'/><target dev='vda' bus='virtio'/></disk></devices>",
                image.display()
            ),
        ))
    }

    /// The directory every host sees for VM disk images (shared storage).
    pub fn images_dir(&self) -> Result<PathBuf, LabError> {
        let dir = self.dir().join("images");
        std::fs::create_dir_all(&dir).map_err(|e| LabError::Invalid(format!("{}: {e}", dir.display())))?;
        Ok(dir)
    }

    /// Makes a small qcow2 image in the shared image directory (`qemu-img create`).
    pub fn make_image(&self, name: &str, size_mib: u64) -> Result<PathBuf, LabError> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(LabError::Invalid(format!("image name `{name}`: letters, digits, - and _ only")));
        }
        let path = self.images_dir()?.join(format!("{name}.qcow2"));
        run("qemu-img", &["create", "-q", "-f", "qcow2", &path.to_string_lossy(), &format!("{size_mib}M")])?;
        Ok(path)
    }

    /// Host `host`'s local image directory as this machine sees it (the host sees it at
    /// [`LOCAL_IMAGES`]).
    pub fn local_images_dir(&self, host: usize) -> PathBuf {
        self.host_dir(host).join("local")
    }

    /// Makes a qcow2 image on host `host`'s own local storage (seen by that host, and by its
    /// QEMU, at [`LOCAL_IMAGES`]`/NAME.qcow2`; no other host sees it). Returns the path as the
    /// host sees it.
    pub fn make_local_image(&self, host: usize, name: &str, size_mib: u64) -> Result<PathBuf, LabError> {
        self.check_host(host)?;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(LabError::Invalid(format!("image name `{name}`: letters, digits, - and _ only")));
        }
        let dir = self.host_dir(host).join("local");
        std::fs::create_dir_all(&dir).map_err(|e| LabError::Invalid(format!("{}: {e}", dir.display())))?;
        let file = format!("{name}.qcow2");
        run("qemu-img", &["create", "-q", "-f", "qcow2", &dir.join(&file).to_string_lossy(), &format!("{size_mib}M")])?;
        Ok(PathBuf::from(LOCAL_IMAGES).join(file))
    }

    /// The domain XML of a small Linux guest (Debian's kernel, busybox, the QEMU guest agent
    /// on its virtio-serial channel) that answers guest-agent pings and powers itself off on
    /// `guest-shutdown`. It runs under QEMU's TCG: this machine's nested KVM hangs early in
    /// that kernel's boot. Its assets are built once per machine (`apt-get download`).
    pub fn linux_guest_xml(&self, name: &str) -> Result<String, LabError> {
        let (kernel, initrd) = guest::linux_guest()?;
        Ok(format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{}</kernel><initrd>{}</initrd><cmdline>console=ttyS0 quiet</cmdline></os>\
             <features><acpi/><apic/></features><on_crash>destroy</on_crash><devices><emulator>/usr/bin/qemu-system-x86_64</emulator>\
             <controller type='virtio-serial' index='0'/><channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
             </devices></domain>",
            kernel.display(),
            initrd.display()
        ))
    }

    /// Makes a qcow2 image on the lab's NFS datastore `ds1` (in its export directory, as the
    /// server serves it); returns its path on the server (`/ds1/images/NAME.qcow2`).
    pub fn make_nfs_image(&self, name: &str, size_mib: u64) -> Result<String, LabError> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(LabError::Invalid(format!("image name `{name}`: letters, digits, - and _ only")));
        }
        let dir = self.dir().join("exports/ds1/images");
        std::fs::create_dir_all(&dir).map_err(|e| LabError::Invalid(format!("{}: {e}", dir.display())))?;
        let file = dir.join(format!("{name}.qcow2"));
        run("qemu-img", &["create", "-q", "-f", "qcow2", &file.to_string_lossy(), &format!("{size_mib}M")])?;
        Ok(format!("/ds1/images/{name}.qcow2"))
    }

    /// Where a guest's serial console is written (appended across starts, on every host).
    pub fn console_log(&self, name: &str) -> PathBuf {
        self.dir().join(format!("console-{name}.log"))
    }

    /// [`Self::linux_guest_xml`] with its disk on the lab's NFS server through QEMU's own NFS
    /// client (`qemu-block-extra`; no kernel mount on any host): `<disk type='network'>`,
    /// protocol `nfs`, the image at `path` (from [`Self::make_nfs_image`]); QEMU pauses the
    /// guest on an I/O error (`error_policy='stop'`). The guest writes a counter to the disk
    /// and prints it on its serial console ([`Self::console_log`]).
    pub fn linux_guest_with_nfs_disk_xml(&self, name: &str, path: &str) -> Result<String, LabError> {
        let disk = format!(
            "<disk type='network' device='disk'><driver name='qemu' type='qcow2' error_policy='stop' rerror_policy='stop'/>\
             <source protocol='nfs' name='{}'><host name='{}'/></source><target dev='vda' bus='virtio'/></disk>\
             <serial type='file'><source path='{}' append='on'/><target port='0'/></serial>",
            path,
            self.storage_address(),
            self.console_log(name).display()
        );
        Ok(self.linux_guest_xml(name)?.replace("</devices>", &format!("{disk}</devices>")))
    }

    /// The counter values a guest printed on its console so far (see [`Self::linux_guest_with_nfs_disk_xml`]),
    /// in order, and the values it found on its disk at each boot.
    pub fn guest_counter(&self, name: &str) -> (Vec<u64>, Vec<u64>) {
        let log = std::fs::read_to_string(self.console_log(name)).unwrap_or_default();
        let (mut values, mut boots) = (Vec::new(), Vec::new());
        for line in log.lines() {
            let line = line.trim();
            if let Some(n) = line.strip_prefix("halo-counter-boot ").and_then(|n| n.trim().parse().ok()) {
                boots.push(n);
            } else if let Some(n) = line.strip_prefix("halo-counter ").and_then(|n| n.trim().parse().ok()) {
                values.push(n);
            }
        }
        (values, boots)
    }

    /// Where host `host`'s libvirt answers from this machine's own namespace (its unix socket;
    /// works even while the host's networks are cut).
    pub fn libvirt_uri(&self, host: usize) -> String {
        format!("qemu:///system?socket={}", self.host_dir(host).join("run/libvirt-sock").display())
    }

    /// Host `host`'s libvirt over TCP on the migration network, as the other hosts reach it.
    pub fn libvirt_tcp_uri(&self, host: usize) -> Result<String, LabError> {
        Ok(format!("qemu+tcp://{}/system", self.address(host, "M")?))
    }

    /// Starts host `host`'s own libvirtd: its own configuration, run, state, cache and log
    /// directories (bind mounts in a private mount namespace), its own host UUID, listening
    /// on its migration address, under `tini -s` (a subreaper, so killed QEMU processes are
    /// reaped at once). Waits until it answers.
    pub fn libvirt_start(&self, host: usize) -> Result<(), LabError> {
        self.check_host(host)?;
        for program in ["libvirtd", "qemu-system-x86_64", "tini"] {
            if which(program).is_none() {
                return Err(LabError::Unavailable(format!(
                    "{program} is missing (apt-get install libvirt-daemon-system libvirt-daemon-driver-qemu qemu-system-x86 tini)"
                )));
            }
        }
        let dir = self.host_dir(host);
        let io = |e: std::io::Error| LabError::Invalid(format!("{}: {e}", dir.display()));
        for sub in ["etc", "run", "lib", "cache", "log", "local"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(io)?;
        }
        let _ = std::fs::remove_file(dir.join("run/libvirt-sock"));
        // The packaged configuration first (drivers, hooks), then ours over it.
        copy_dir("/etc/libvirt", &dir.join("etc")).map_err(io)?;
        let address = self.address(host, "M")?;
        std::fs::write(
            dir.join("etc/libvirtd.conf"),
            format!(
                "listen_tls = 0\nlisten_tcp = 1\nlisten_addr = \"{address}\"\nauth_tcp = \"none\"\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\nhost_uuid = \"{}\"\nkeepalive_interval = 1\nkeepalive_count = 3\n",
                self.host_uuid(host)
            ),
        )
        .map_err(io)?;
        std::fs::write(
            dir.join("etc/qemu.conf"),
            format!(
                "stdio_handler = \"file\"\ncgroup_controllers = [ ]\nsecurity_driver = \"none\"\nuser = \"root\"\ngroup = \"root\"\nmigration_address = \"{address}\"\nmigration_host = \"{address}\"\n"
            ),
        )
        .map_err(io)?;
        // sanlock VM leases, when the lab uses them (`use_sanlock`): libvirt's sanlock lock
        // manager, talking to this host's own sanlock daemon (its run directory per host).
        let sanlock = self.uses_sanlock();
        if sanlock {
            let mut qemu = std::fs::read_to_string(dir.join("etc/qemu.conf")).map_err(io)?;
            qemu.push_str("lock_manager = \"sanlock\"\n");
            std::fs::write(dir.join("etc/qemu.conf"), qemu).map_err(io)?;
            std::fs::write(
                dir.join("etc/qemu-sanlock.conf"),
                "auto_disk_leases = 0\nrequire_lease_for_disks = 0\nuser = \"root\"\ngroup = \"root\"\n",
            )
            .map_err(io)?;
            let run = self.sanlock_run_dir(host);
            std::fs::create_dir_all(&run).map_err(io)?;
            for stale in ["sanlock.sock", "sanlock.pid"] {
                let _ = std::fs::remove_file(run.join(stale));
            }
        }
        // halo's libvirt hook, when the lab uses one (`use_hook`): libvirtd looks for hooks when
        // it starts, so it is written before.
        if let Ok(halo) = std::fs::read_to_string(self.dir().join("hook-program")) {
            let hooks = dir.join("etc/hooks");
            std::fs::create_dir_all(&hooks).map_err(io)?;
            let config = self.dir().join(format!("halo-{host}.toml"));
            let script = format!(
                "#!/bin/sh\n# halo's qemu hook (lab host-{host}).\nexec '{}' hook --config '{}' qemu \"$@\"\n",
                halo.trim(),
                config.display()
            );
            std::fs::write(hooks.join("qemu"), script).map_err(io)?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(hooks.join("qemu"), std::fs::Permissions::from_mode(0o755)).map_err(io)?;
        } else {
            let _ = std::fs::remove_file(dir.join("etc/hooks/qemu"));
        }
        // Seed QEMU's capabilities cache: the first start takes 0.5 s instead of 1.3 s.
        let _ = copy_dir("/var/cache/libvirt/qemu", &dir.join("cache/qemu"));
        for target in
            ["/etc/libvirt", "/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt", LOCAL_IMAGES]
        {
            std::fs::create_dir_all(target).map_err(|e| LabError::Invalid(format!("{target}: {e}")))?;
        }
        let d = dir.display();
        // sanlock's daemon in the foreground (its log in the host's directory), without wdmd
        // (the lab has no watchdog device) and unprivileged (no rlimits raised: a container
        // may not); libvirtd is started once its socket answers, with the same run directory.
        let sanlock_start = if sanlock {
            let run = self.sanlock_run_dir(host);
            let run = run.display();
            format!(
                "SANLOCK_PRIVILEGED=0 SANLOCK_RUN_DIR={run} sanlock daemon -D -w 0 -U root -G root -h 0 -l 0 -e host-{host} >{d}/sanlock.log 2>&1 & i=0; while [ ! -S {run}/sanlock.sock ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; export SANLOCK_RUN_DIR={run}; "
            )
        } else {
            String::new()
        };
        let script = format!(
            "{sanlock_start}hostname host-{host} && mount --bind {d}/etc /etc/libvirt && mount --bind {d}/run /run/libvirt && mount --bind {d}/lib /var/lib/libvirt && mount --bind {d}/cache /var/cache/libvirt && mount --bind {d}/log /var/log/libvirt && mount --bind {d}/local {LOCAL_IMAGES} && exec tini -s -- libvirtd --listen --pid-file /run/libvirt/libvirtd.pid"
        );
        let log = std::fs::File::create(dir.join("libvirtd.out")).map_err(io)?;
        let ns = self.netns(host);
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "unshare",
                "--mount",
                "--uts",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(io)?)
            .stderr(log)
            .spawn()
            .map_err(|source| LabError::Spawn { command: "libvirtd".into(), source })
            .map(|mut child| std::thread::spawn(move || child.wait()))?;
        let socket = dir.join("run/libvirt-sock");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = std::fs::read_to_string(dir.join("libvirtd.out")).unwrap_or_default();
        Err(LabError::Unavailable(format!(
            "libvirtd on host-{host} did not answer within 30 s: {}",
            out.lines().last().unwrap_or("")
        )))
    }

    fn host_uuid(&self, host: usize) -> String {
        let [a, b, c] = self.spec.subnet;
        format!("6861{a:02x}{b:02x}-{c:02x}00-4000-8000-{host:012x}")
    }

    /// Every libvirtd started from now on calls `halo hook` (the executable `halo`) before a
    /// domain starts, as `halo hook --install` sets a real host up, with the host's agent
    /// config (`<lab>/halo-N.toml`; until an agent is started there is none, and the hook
    /// admits every start).
    pub fn use_hook(&self, halo: &std::path::Path) -> Result<(), LabError> {
        let path = self.dir().join("hook-program");
        std::fs::write(&path, halo.display().to_string())
            .map_err(|e| LabError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Every libvirtd started from now on takes sanlock VM leases (libvirt's sanlock lock
    /// manager, `lock_manager = "sanlock"`), each host with a sanlock daemon of its own
    /// (started with its libvirtd, ended with its host); the lease directory is
    /// [`Lab::leases_dir`], shared by every host as a lease directory on NFS would be. Agent
    /// configs made from now on say `[leases] kind = "sanlock"`, host id N for host-N, an io
    /// timeout of 1 s (leases of a dead host free after 68 s).
    pub fn use_sanlock(&self) -> Result<(), LabError> {
        if which("sanlock").is_none() {
            return Err(LabError::Unavailable("sanlock is missing (apt-get install sanlock libvirt-sanlock)".into()));
        }
        if !std::path::Path::new("/usr/lib/libvirt/libvirt_sanlock_helper").exists() {
            return Err(LabError::Unavailable(
                "libvirt's sanlock lock manager is missing (apt-get install libvirt-sanlock)".into(),
            ));
        }
        let path = self.dir().join("sanlock");
        std::fs::write(&path, "on\n").map_err(|e| LabError::Invalid(format!("{}: {e}", path.display())))?;
        let leases = self.leases_dir();
        std::fs::create_dir_all(&leases).map_err(|e| LabError::Invalid(format!("{}: {e}", leases.display())))
    }

    /// Whether libvirtd started from now on takes sanlock leases ([`Lab::use_sanlock`]).
    pub fn uses_sanlock(&self) -> bool {
        self.dir().join("sanlock").exists()
    }

    /// The lease directory every host sees (sanlock's lockspace and one lease per VM).
    pub fn leases_dir(&self) -> PathBuf {
        self.dir().join("leases")
    }

    /// Host `host`'s sanlock run directory (its daemon's socket; `SANLOCK_RUN_DIR`).
    pub fn sanlock_run_dir(&self, host: usize) -> PathBuf {
        self.host_dir(host).join("sanlock-run")
    }

    /// Host `host`'s hook script, to change or take away while its libvirtd runs (libvirtd
    /// runs whatever the file holds when it calls it).
    pub fn hook_script(&self, host: usize) -> std::path::PathBuf {
        self.host_dir(host).join("etc/hooks/qemu")
    }

    /// A host crash (power loss): its links go down, so nothing of it is heard and its kernel
    /// stops answering pings, then every process of host `host` is killed (libvirtd, QEMU, an
    /// agent). Links first, as power loss silences everything at once: killed first, the
    /// processes take 0.1–0.3 s to go while the kernel still answers pings, and a ping answered
    /// then is a host whose agent died before it. Its files stay; [`Lab::boot_host`] brings it
    /// back, empty.
    pub fn kill_host(&self, host: usize) -> Result<(), LabError> {
        self.check_host(host)?;
        for network in NETWORKS {
            self.set_link(host, network, false)?;
        }
        kill_all_in(&self.netns(host))
    }

    /// Freezes (`frozen = true`: SIGSTOP) or thaws (SIGCONT) every process of host `host` —
    /// its agent, libvirtd, QEMU: the host as a hung kernel or a paused nested VM leaves it.
    /// Its kernel still answers pings; cut its links for a host that answers nothing.
    pub fn freeze_host(&self, host: usize, frozen: bool) -> Result<(), LabError> {
        self.check_host(host)?;
        let signal = if frozen { nix::sys::signal::Signal::SIGSTOP } else { nix::sys::signal::Signal::SIGCONT };
        let pids = ip(&["netns", "pids", &self.netns(host)]).unwrap_or_default();
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
        Ok(())
    }

    /// Boots a killed host: links up, its libvirtd started (no VMs run).
    pub fn boot_host(&self, host: usize) -> Result<(), LabError> {
        for network in NETWORKS {
            self.set_link(host, network, true)?;
        }
        self.libvirt_start(host)
    }

    /// The process ids in host `host`'s namespace whose command line contains `pattern`.
    pub fn pids_of(&self, host: usize, pattern: &str) -> Result<Vec<i32>, LabError> {
        self.check_host(host)?;
        let list = ip(&["netns", "pids", &self.netns(host)]).unwrap_or_default();
        Ok(list
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(pattern))
                    .unwrap_or(false)
            })
            .collect())
    }
}

/// The port of the agents' API on the lab hosts.
pub const API_PORT: u16 = 7401;

/// Agents on the lab hosts.
impl Lab {
    /// The cluster key of the lab's agents (written once, mode 0600).
    pub fn cluster_key(&self) -> Result<PathBuf, LabError> {
        self.secret("cluster.key", 32)
    }

    /// The API token of the lab's agents (written once, mode 0600), and the token itself.
    pub fn api_token(&self) -> Result<(PathBuf, String), LabError> {
        let path = self.secret("api.token", 16)?;
        let token = std::fs::read_to_string(&path)
            .map_err(|e| LabError::Invalid(format!("{}: {e}", path.display())))?
            .trim()
            .to_string();
        Ok((path, token))
    }

    /// A file of `bytes` random bytes in hex in the lab's directory (written once, mode 0600).
    fn secret(&self, name: &str, bytes: usize) -> Result<PathBuf, LabError> {
        let path = self.dir().join(name);
        if !path.is_file() {
            let mut random = vec![0u8; bytes];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
                .map_err(|e| LabError::Invalid(format!("/dev/urandom: {e}")))?;
            let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
            std::fs::write(&path, format!("{hex}\n"))
                .map_err(|e| LabError::Invalid(format!("{}: {e}", path.display())))?;
        }
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| LabError::Invalid(format!("{}: {e}", path.display())))?;
        Ok(path)
    }

    /// Host `host`'s agent API address (`ADDRESS:PORT` on network A).
    pub fn api_address(&self, host: usize) -> Result<String, LabError> {
        Ok(format!("{}:{API_PORT}", self.address(host, "A")?))
    }

    /// The `halo.toml` of host `host`'s agent: the lab's addresses (heartbeats broadcast on A
    /// and B: one packet per network and interval, each bound to the host's interface on its
    /// network), the NFS datastore `ds1`,
    /// every host's libvirt, the shared image directory, the API on network A with the lab's
    /// token, an event log per host, `vms` as `restart` VMs of 64 MiB, and `timeouts` (lines
    /// of the `[timeouts]` table, e.g. `dead-time-ms = 12000`; none: the defaults).
    pub fn agent_config(&self, host: usize, vms: &[&str], timeouts: &[&str]) -> Result<String, LabError> {
        self.check_host(host)?;
        let mut isolation = vec![self.gateway("A")?];
        if self.gateway("B")? != isolation[0] {
            isolation.push(self.gateway("B")?);
        }
        let isolation: Vec<String> = isolation.iter().map(|a| format!("\"{a}\"")).collect();
        // Each network's heartbeats bound to the host's interface on it: in the shared layout
        // the only thing that keeps A's and B's packets on their own links.
        let mut toml = format!(
            "cluster = \"lab\"\nhost = \"host-{host}\"\nkey-file = \"{}\"\nnetworks = [\"A\", \"B\"]\nisolation-addresses = [{}]\nbroadcast = {{ A = \"{}\", B = \"{}\" }}\ninterfaces = {{ A = \"{}\", B = \"{}\" }}\n",
            self.cluster_key()?.display(),
            isolation.join(", "),
            self.broadcast("A")?,
            self.broadcast("B")?,
            Self::interface("A"),
            Self::interface("B")
        );
        let bmcs = self.bmc_dir().join("ready").exists();
        for h in 1..=self.hosts() {
            toml.push_str(&format!(
                "\n[[hosts]]\nname = \"host-{h}\"\nmemory-mib = 2048\nvcpus = 8\naddresses = {{ A = \"{}\", B = \"{}\" }}\nlibvirt-uri = \"{}\"\n",
                self.address(h, "A")?,
                self.address(h, "B")?,
                self.libvirt_tcp_uri(h)?
            ));
            // The lab's BMCs (`start_bmcs`): each host's as its fence device, through Debian's
            // fence_redfish.
            if bmcs {
                toml.push_str(&format!(
                    "\n[[hosts.fence]]\nagent = \"fence_redfish\"\npassword-file = \"{}\"\ntimeout-s = 10\noptions = {{ ip = \"{}\", ipport = \"{}\", username = \"admin\", ssl_insecure = \"1\", systems_uri = \"/redfish/v1/Systems/host-{h}\" }}\n",
                    self.bmc_password_file().display(),
                    self.bmc_address(),
                    self.bmc_port(h)
                ));
            }
        }
        toml.push_str(&format!(
            "\n[[datastores]]\nname = \"ds1\"\nnfs = {{ server = \"{}\", export = \"/ds1\", mount-port = {MOUNT_PORT}, nfs-port = {NFS_PORT} }}\n",
            self.storage_address()
        ));
        if self.uses_etcd() {
            let endpoints: Vec<String> = self.etcd_endpoints().iter().map(|e| format!("\"{e}\"")).collect();
            toml.push_str(&format!("\n[coordination]\nbackend = \"etcd\"\nendpoints = [{}]\n", endpoints.join(", ")));
        }
        toml.push_str(&format!(
            "\n[libvirt]\nlocal-uri = \"{}\"\nshared-storage = [\"{}\"]\n",
            self.libvirt_uri(host),
            self.images_dir()?.display()
        ));
        toml.push_str(&format!(
            "\n[api]\nlisten = \"{}\"\ntoken-file = \"{}\"\nplain-http = true\n",
            self.api_address(host)?,
            self.api_token()?.0.display()
        ));
        toml.push_str(&format!(
            "\n[alerts]\nevent-log = \"{}\"\n",
            self.dir().join(format!("events-{host}.jsonl")).display()
        ));
        if self.uses_sanlock() {
            toml.push_str(&format!(
                "\n[leases]\nkind = \"sanlock\"\ndir = \"{}\"\nhost-id = {host}\nio-timeout-s = 1\nsanlock-run-dir = \"{}\"\n",
                self.leases_dir().display(),
                self.sanlock_run_dir(host).display()
            ));
        }
        // Proactive HA: every lab host's health provider reads the file a test writes
        // (`set_health`); no file, healthy.
        // Each check forks a shell: every second in small labs, every 10 s in large ones.
        let interval_ms = if self.spec.layout == Layout::Shared { 10_000 } else { 1_000 };
        toml.push_str(&format!(
            "\n[health]\nprovider = \"{}\"\nargs = [\"{}\"]\ninterval-ms = {interval_ms}\ntimeout-ms = 1000\n",
            self.health_provider()?.display(),
            self.health_file(host).display()
        ));
        toml.push_str("\n[timeouts]\n");
        for line in timeouts {
            toml.push_str(line);
            toml.push('\n');
        }
        for vm in vms {
            toml.push_str(&format!("\n[[vms]]\nname = \"{vm}\"\nmemory-mib = 64\nvcpus = 1\npriority = \"restart\"\n"));
        }
        Ok(toml)
    }

    /// The lab's health provider (a shell script: prints the file it is given, or a healthy
    /// report when there is none).
    pub fn health_provider(&self) -> Result<PathBuf, LabError> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir().join("health-provider.sh");
        if !path.is_file() {
            std::fs::create_dir_all(self.dir()).map_err(|e| LabError::Invalid(format!("{e}")))?;
            std::fs::write(
                &path,
                "#!/bin/sh\nif [ -f \"$1\" ]; then cat \"$1\"; else echo '{\"status\": \"healthy\"}'; fi\n",
            )
            .map_err(|e| LabError::Invalid(format!("{}: {e}", path.display())))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| LabError::Invalid(format!("{}: {e}", path.display())))?;
        }
        Ok(path)
    }

    /// The file host `host`'s health provider reports.
    pub fn health_file(&self, host: usize) -> PathBuf {
        self.dir().join(format!("health-host-{host}.json"))
    }

    /// What host `host`'s health provider reports from now on (the provider's JSON; `None`:
    /// healthy).
    pub fn set_health(&self, host: usize, report: Option<&str>) -> Result<(), LabError> {
        let path = self.health_file(host);
        match report {
            Some(json) => {
                std::fs::write(&path, json).map_err(|e| LabError::Invalid(format!("{}: {e}", path.display())))
            }
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(LabError::Invalid(format!("{}: {e}", path.display())))
                }
                _ => Ok(()),
            },
        }
    }

    /// Puts a VM on the datastore's protected-VM list (written into the NFS export, as the
    /// server serves it).
    pub fn protect(&self, vm: &str, domain_xml: &str) -> Result<(), LabError> {
        let list = self.dir().join("exports/ds1/.halo/lab/vms");
        std::fs::create_dir_all(&list).map_err(|e| LabError::Invalid(format!("{}: {e}", list.display())))?;
        let record = serde_json::json!({ "name": vm, "domain-xml": domain_xml });
        std::fs::write(list.join(format!("{vm}.json")), record.to_string())
            .map_err(|e| LabError::Invalid(format!("{vm}: {e}")))?;
        // A new catalog stamp, as halo's own protect writes: running agents read the list
        // again at once instead of at their next full read.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        std::fs::write(list.with_file_name("vms.stamp"), format!("lab-{}.{:09}", now.as_secs(), now.subsec_nanos()))
            .map_err(|e| LabError::Invalid(format!("catalog stamp: {e}")))
    }

    /// Starts `halo agent --config <lab>/halo-N.toml` in host `host`'s namespace, its output
    /// appended to `<lab>/agent-N.log`; returns the process.
    pub fn start_agent(
        &self,
        host: usize,
        halo: &std::path::Path,
        config: &str,
    ) -> Result<std::process::Child, LabError> {
        self.check_host(host)?;
        let path = self.dir().join(format!("halo-{host}.toml"));
        std::fs::write(&path, config).map_err(|e| LabError::Invalid(format!("{}: {e}", path.display())))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join(format!("agent-{host}.log")))
            .map_err(|e| LabError::Invalid(format!("agent log: {e}")))?;
        Command::new("ip")
            .args(["netns", "exec", &self.netns(host)])
            .arg(halo)
            .args(["agent", "--config"])
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| LabError::Spawn { command: "halo agent".into(), source })
    }
}

/// Whether `/dev/kvm` can be opened for writing.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

fn copy_dir(from: &str, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&entry.path().to_string_lossy(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Network faults on the bridges (nftables in the switch namespace).
impl Lab {
    fn bridge_rules(&self) -> Result<(), LabError> {
        let sw = self.switch();
        nft(&sw, "add table bridge halo_lab")?;
        nft(&sw, "add chain bridge halo_lab forward { type filter hook forward priority 0 ; policy accept ; }")?;
        Ok(())
    }

    fn delete_rules(&self, comment: &str) -> Result<(), LabError> {
        delete_rules(&self.switch(), "bridge halo_lab forward", comment)
    }

    /// Partitions the hosts into `groups` on the management networks A and B: no frame
    /// crosses between groups (the migration/storage network M stays whole, so both sides
    /// still reach the datastores; each host still reaches its gateways). Replaces an earlier
    /// partition.
    pub fn partition(&self, groups: &[Vec<usize>]) -> Result<(), LabError> {
        for host in groups.iter().flatten() {
            self.check_host(*host)?;
        }
        self.heal_partition()?;
        self.bridge_rules()?;
        let sw = self.switch();
        for (i, a) in groups.iter().enumerate() {
            for b in groups.iter().skip(i + 1) {
                for net in ["a", "b"] {
                    let ports = |g: &Vec<usize>| g.iter().map(|h| format!("h{h}-{net}")).collect::<Vec<_>>().join(", ");
                    for (from, to) in [(ports(a), ports(b)), (ports(b), ports(a))] {
                        nft(
                            &sw,
                            &format!(
                                "add rule bridge halo_lab forward iifname {{ {from} }} oifname {{ {to} }} drop comment \"partition\""
                            ),
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Heals a partition.
    pub fn heal_partition(&self) -> Result<(), LabError> {
        self.delete_rules("partition")
    }

    /// Drops `percent` % of the frames entering network `network` from the hosts, at random
    /// (this kernel has no netem; nftables' `numgen random` stands in).
    pub fn loss(&self, network: &str, percent: u32) -> Result<(), LabError> {
        Self::network_index(network)?;
        if percent == 0 || percent > 100 {
            return Err(LabError::Invalid(format!("loss is 1 to 100 %, not {percent}")));
        }
        let net = network.to_lowercase();
        self.heal_loss(network)?;
        self.bridge_rules()?;
        // Every host's port on that bridge (nft wildcards only match a trailing `*`).
        let ports = (1..=self.spec.hosts).map(|h| format!("h{h}-{net}")).collect::<Vec<_>>().join(", ");
        let rule = if percent == 100 {
            format!("add rule bridge halo_lab forward iifname {{ {ports} }} drop comment \"loss-{net}\"")
        } else {
            format!(
                "add rule bridge halo_lab forward iifname {{ {ports} }} numgen random mod 100 < {percent} drop comment \"loss-{net}\""
            )
        };
        nft(&self.switch(), &rule).map(drop)
    }

    /// Ends the loss on a network.
    pub fn heal_loss(&self, network: &str) -> Result<(), LabError> {
        Self::network_index(network)?;
        self.delete_rules(&format!("loss-{}", network.to_lowercase()))
    }
}

/// Where each lab host sees its own local disk images (a different directory per host).
pub const LOCAL_IMAGES: &str = "/var/lib/halo-lab-local";

/// The NFS server's MOUNT port in the lab.
pub const MOUNT_PORT: u16 = 20048;
/// The NFS server's NFS port in the lab.
pub const NFS_PORT: u16 = 2049;

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|dir| PathBuf::from(dir).join(program))
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].iter().map(|d| PathBuf::from(d).join(program)))
        .find(|p| p.is_file())
}

/// Deletes the rules of `chain` (`FAMILY TABLE CHAIN`) in `netns` that carry `comment`.
fn delete_rules(netns: &str, chain: &str, comment: &str) -> Result<(), LabError> {
    let listing = nft(netns, &format!("-a list chain {chain}")).unwrap_or_default();
    for line in listing.lines().filter(|l| l.contains(&format!("comment \"{comment}\""))) {
        if let Some(handle) = line.rsplit("# handle ").next().map(str::trim) {
            nft(netns, &format!("delete rule {chain} handle {handle}"))?;
        }
    }
    Ok(())
}

fn nft(netns: &str, rule: &str) -> Result<String, LabError> {
    if which("nft").is_none() {
        return Err(LabError::Unavailable("nftables is missing (apt-get install nftables)".into()));
    }
    let mut args = vec!["netns", "exec", netns, "nft"];
    let words: Vec<&str> = rule.split_whitespace().collect();
    args.extend(words);
    ip(&args)
}

/// Kills every process in a namespace the lab made, by id, and waits until they are gone.
fn kill_all_in(netns: &str) -> Result<(), LabError> {
    let Ok(pids) = ip(&["netns", "pids", netns]) else { return Ok(()) };
    let pids: Vec<i32> = pids.split_whitespace().filter_map(|p| p.parse().ok()).collect();
    for &pid in &pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        let left = ip(&["netns", "pids", netns]).unwrap_or_default();
        if left.split_whitespace().next().is_none() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(error) = self.down() {
            eprintln!("halo lab {}: could not remove everything: {error}", self.spec.name);
        }
    }
}

/// Moves the calling thread into the named network namespace (for a runtime's worker
/// threads: `tokio::runtime::Builder::on_thread_start`).
pub fn join_netns(netns: &str) -> Result<(), LabError> {
    let path = PathBuf::from("/run/netns").join(netns);
    let file = std::fs::File::open(&path)
        .map_err(|e| LabError::Enter { netns: netns.to_string(), detail: format!("{}: {e}", path.display()) })?;
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| LabError::Enter { netns: netns.to_string(), detail: e.to_string() })
}

/// Runs `f` on a thread inside the named network namespace.
pub fn enter_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T, LabError> {
    let path = PathBuf::from("/run/netns").join(netns);
    let file = std::fs::File::open(&path)
        .map_err(|e| LabError::Enter { netns: netns.to_string(), detail: format!("{}: {e}", path.display()) })?;
    let name = netns.to_string();
    std::thread::spawn(move || {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| LabError::Enter { netns: name, detail: e.to_string() })?;
        Ok(f())
    })
    .join()
    .map_err(|_| LabError::Enter { netns: netns.to_string(), detail: "the thread panicked".into() })?
}

/// Deletes every namespace whose name starts with `prefix`, ending the processes inside
/// first (the lab started them: its namespaces hold nothing else).
fn remove_namespaces(prefix: &str) -> Result<(), LabError> {
    let list = ip(&["netns", "list"])?;
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        if !name.starts_with(prefix) {
            continue;
        }
        if let Ok(pids) = ip(&["netns", "pids", name]) {
            for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        ip(&["netns", "del", name])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{LARGE_FENCE_TIMEOUT_MS, LARGE_TIMEOUTS, Lab, LabSpec, Layout};

    #[test]
    fn large_labs_get_the_large_timeouts_and_their_fence_timeout_is_the_one_they_say() {
        assert!(LARGE_TIMEOUTS.contains(&format!("fence-timeout-ms = {LARGE_FENCE_TIMEOUT_MS}").as_str()));
        assert_eq!(LabSpec::new("x", 60).layout, Layout::Split);
        assert_eq!(LabSpec::new("x", 61).layout, Layout::Shared);
        let lab = |hosts| Lab { spec: LabSpec::new("x", hosts), down: true, keep: true };
        assert!(lab(64).agent_timeouts().is_empty() && lab(64).agent_fence_timeout_ms().is_none());
        assert_eq!(lab(65).agent_timeouts(), &LARGE_TIMEOUTS);
        assert_eq!(lab(128).agent_fence_timeout_ms(), Some(LARGE_FENCE_TIMEOUT_MS));
    }
}
