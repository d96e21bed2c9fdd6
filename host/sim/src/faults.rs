//! Faults and the schedules of them a seed produces.

use serde::Serialize;
use std::collections::BTreeMap;

use crate::Rng;
use halo_core::Millis;
use halo_policy::RestartPriority;

/// One kind of fault (field names say what they are).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[allow(missing_docs)]
pub enum FaultKind {
    /// The host dies (power loss); it boots again after the duration, without VMs.
    HostCrash { host: String },
    /// The agent dies; its supervisor restarts it after the duration. The watchdog resets the
    /// host if the agent stays down for the fence timeout.
    AgentCrash { host: String },
    /// The host's links go down on every network; with `datastores` its datastore path too.
    Isolate { host: String, datastores: bool },
    /// The cluster splits: `side` on one side, the rest on the other (every network).
    Partition { side: Vec<String> },
    /// One host's link on one management network goes down (the others stay up).
    LinkDown { host: String, network: String },
    /// One direction of one network between two hosts is cut.
    OneWayCut { network: String, from: String, to: String },
    /// Random loss on a network, percent.
    Loss { network: String, percent: u64 },
    /// The datastore server is down (restarts after the duration).
    DatastoreDown { datastore: String },
    /// One host loses its path to a datastore.
    DatastoreCut { host: String, datastore: String },
    /// A VM crashes (QEMU dies).
    VmCrash { vm: String },
    /// The agent's process is stopped (SIGSTOP, a stalled loop): it handles nothing, its VMs
    /// run on; what arrives meanwhile is handled on resume, after `Input::Resumed`. The
    /// watchdog resets the host if the pause reaches the fence timeout (unless the run has
    /// no watchdog).
    AgentPause { host: String },
    /// The whole host freezes (kernel, agent and VMs): it answers nothing, its VMs do not
    /// execute. To the others it is dead; a hardware watchdog resets it after the fence
    /// timeout (unless the run has no watchdog); otherwise it resumes where it stopped.
    HostFreeze { host: String },
    /// The operator puts a host into maintenance (the command goes to the master, which
    /// evacuates it); it leaves maintenance after the duration.
    Maintenance { host: String },
    /// The operator live-migrates a VM to a host (the command goes to the master).
    Migrate { vm: String, to: String },
    /// The operator stops a VM through halo (the command goes to the host it runs on): it
    /// stays stopped, and HA does not restart it.
    OperatorStop { vm: String },
    /// The operator changes a VM's restart priority: a run-time change each host applies
    /// when its catalog task next reads a datastore (within a second, hosts at different
    /// moments); set back after the duration.
    Priority { vm: String, priority: RestartPriority },
    /// The operator switches HA off for the cluster (a run-time change, like `Priority`); on
    /// again after the duration.
    HaOff,
    /// A copy of a running protected VM is started on `host` outside halo (`virsh create` of
    /// its XML, the same generation). halo must notice and pause it (not the copy it started);
    /// after the duration the operator destroys the extra copy.
    StartOutside { vm: String, host: String },
}

impl FaultKind {
    /// The name used on the command line.
    pub fn family(&self) -> &'static str {
        match self {
            FaultKind::HostCrash { .. } => "crash",
            FaultKind::AgentCrash { .. } => "agent",
            FaultKind::Isolate { .. } => "isolate",
            FaultKind::Partition { .. } => "partition",
            FaultKind::LinkDown { .. } => "link",
            FaultKind::OneWayCut { .. } => "oneway",
            FaultKind::Loss { .. } => "loss",
            FaultKind::DatastoreDown { .. } => "datastore",
            FaultKind::DatastoreCut { .. } => "dscut",
            FaultKind::VmCrash { .. } => "vmcrash",
            FaultKind::AgentPause { .. } => "pause",
            FaultKind::HostFreeze { .. } => "freeze",
            FaultKind::Maintenance { .. } => "maint",
            FaultKind::Migrate { .. } => "migrate",
            FaultKind::OperatorStop { .. } => "stop",
            FaultKind::Priority { .. } => "priority",
            FaultKind::HaOff => "haoff",
            FaultKind::StartOutside { .. } => "outside",
        }
    }

    /// Whether this is an operator's action rather than a fault.
    pub fn by_operator(&self) -> bool {
        Self::OPERATIONS.contains(&self.family())
    }

    /// Every family name.
    pub const FAMILIES: [&'static str; 20] = [
        "crash",
        "agent",
        "isolate",
        "partition",
        "link",
        "oneway",
        "loss",
        "datastore",
        "dscut",
        "vmcrash",
        "pause",
        "freeze",
        "maint",
        "migrate",
        "stop",
        "priority",
        "haoff",
        "outside",
        "fence",
        "balance",
    ];

    /// Not faults but equipment and settings: fence devices on every host
    /// (`Schedule::draw_fence_devices`), balancing in `auto` mode with placement rules and a
    /// reserved host (`scenario::random_case`), each drawn on a generator of its own, so that
    /// every seed's faults stay what they were.
    pub const DEVICES: [&'static str; 2] = ["fence", "balance"];

    /// The stall families: drawn on a generator of their own, after the others, so that every
    /// seed's schedule of the other families stays what it was before they existed (the seeds
    /// cited in comments and docs still replay).
    pub const STALLS: [&'static str; 2] = ["pause", "freeze"];

    /// The operator's actions: drawn on a generator of their own too (after the stalls), for
    /// the same reason.
    pub const OPERATIONS: [&'static str; 5] = ["maint", "migrate", "stop", "priority", "haoff"];

    /// Starts outside halo: drawn on a generator of their own too (after the operators').
    pub const OUTSIDE: [&'static str; 1] = ["outside"];
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FaultKind::HostCrash { host } => write!(f, "{host} crashes"),
            FaultKind::AgentCrash { host } => write!(f, "the agent on {host} crashes"),
            FaultKind::Isolate { host, datastores: true } => {
                write!(f, "{host} is cut off from every network and datastore")
            }
            FaultKind::Isolate { host, datastores: false } => {
                write!(f, "{host} is cut off from every management network")
            }
            FaultKind::Partition { side } => write!(f, "partition: {} | the rest", side.join(", ")),
            FaultKind::LinkDown { host, network } => write!(f, "{host} loses its link on network {network}"),
            FaultKind::OneWayCut { network, from, to } => write!(f, "network {network}: {from} → {to} cut one way"),
            FaultKind::Loss { network, percent } => write!(f, "network {network}: {percent}% loss"),
            FaultKind::DatastoreDown { datastore } => write!(f, "datastore {datastore} server down"),
            FaultKind::DatastoreCut { host, datastore } => write!(f, "{host} loses datastore {datastore}"),
            FaultKind::VmCrash { vm } => write!(f, "{vm} crashes"),
            FaultKind::AgentPause { host } => write!(f, "the agent on {host} is paused"),
            FaultKind::HostFreeze { host } => write!(f, "{host} freezes whole"),
            FaultKind::Maintenance { host } => write!(f, "the operator puts {host} into maintenance"),
            FaultKind::Migrate { vm, to } => write!(f, "the operator migrates {vm} to {to}"),
            FaultKind::OperatorStop { vm } => write!(f, "the operator stops {vm}"),
            FaultKind::Priority { vm, priority } => {
                write!(f, "the operator sets {vm}'s restart priority to {}", priority_name(*priority))
            }
            FaultKind::HaOff => write!(f, "the operator switches HA off"),
            FaultKind::StartOutside { vm, host } => write!(f, "a copy of {vm} is started on {host} outside halo"),
        }
    }
}

fn priority_name(priority: RestartPriority) -> &'static str {
    match priority {
        RestartPriority::Restart => "restart",
        RestartPriority::BestEffort => "best-effort",
        RestartPriority::Unprotected => "unprotected",
    }
}

/// A fault at a time, lasting a while.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    /// Start.
    pub at: Millis,
    /// Duration (ignored for VM crashes).
    pub duration: Millis,
    /// What.
    pub kind: FaultKind,
}

/// How a simulated host's fence device behaves when the master asks it to power the host off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FenceDevice {
    /// Powers the host off and confirms, 0.3 s after it is asked.
    Confirms,
    /// Powers it off and confirms after 5 s.
    Slow,
    /// Does not answer: fails after 1 s.
    Fails,
    /// Says "off" after 0.3 s and does nothing.
    Lies,
}

impl FenceDevice {
    /// Its name in schedules.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirms => "confirms",
            Self::Slow => "slow",
            Self::Fails => "fails",
            Self::Lies => "lies",
        }
    }
}

/// The faults of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Schedule {
    /// In time order.
    pub faults: Vec<Fault>,
    /// Hosts with a fence device, and how it behaves (none: every host is proved dead by the
    /// dead-time alone).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fence_devices: BTreeMap<String, FenceDevice>,
}

impl Schedule {
    /// Fence devices for one schedule in two, drawn on a generator of their own (`seed`), so the
    /// faults of a seed stay what they were: every host gets one, each confirming (most),
    /// slow, failing or lying.
    pub fn draw_fence_devices(&mut self, seed: u64, hosts: &[String]) {
        let mut rng = Rng::new(seed ^ 0x000F_E4CE);
        if rng.below(2) == 0 {
            return;
        }
        for host in hosts {
            let device = match rng.below(10) {
                0..=5 => FenceDevice::Confirms,
                6 => FenceDevice::Slow,
                7 => FenceDevice::Fails,
                _ => FenceDevice::Lies,
            };
            self.fence_devices.insert(host.clone(), device);
        }
    }
}

impl Schedule {
    /// A random schedule: 1–4 faults of the allowed families within the first 60 % of the
    /// run; everything heals before the last 40 %, when every protected VM must run again.
    pub fn random(
        rng: &mut Rng,
        hosts: &[String],
        vms: &[String],
        networks: &[String],
        datastores: &[String],
        families: &[&str],
        duration: Millis,
    ) -> Self {
        let mut faults = Vec::new();
        let stall_families: Vec<&str> = families.iter().copied().filter(|f| FaultKind::STALLS.contains(f)).collect();
        let operations: Vec<&str> = families.iter().copied().filter(|f| FaultKind::OPERATIONS.contains(f)).collect();
        let outside = families.contains(&"outside");
        let families: Vec<&str> = families
            .iter()
            .copied()
            .filter(|f| {
                !FaultKind::STALLS.contains(f)
                    && !FaultKind::OPERATIONS.contains(f)
                    && !FaultKind::OUTSIDE.contains(f)
                    && !FaultKind::DEVICES.contains(f)
            })
            .collect();
        let mut starts = Rng::new(rng.clone().next_u64() ^ 0x0075_1DE0_0075_1DE0);
        let mut stalls = Rng::new(rng.clone().next_u64() ^ 0x57A1_1ED0_57A1_1ED0);
        let mut ops = Rng::new(rng.clone().next_u64() ^ 0x0BE2_A70E_0BE2_A70E);
        let count = rng.between(1, 4);
        let window = duration * 6 / 10;
        let pick = |rng: &mut Rng, list: &[String]| list[rng.below(list.len() as u64) as usize].clone();
        for _ in 0..count {
            if families.is_empty() {
                break;
            }
            let family = families[rng.below(families.len() as u64) as usize];
            let at = rng.between(5_000, window.max(5_000));
            let duration = rng.between(2_000, 40_000).min(window.saturating_sub(at).max(1_000) + 20_000);
            let kind = match family {
                "crash" => FaultKind::HostCrash { host: pick(rng, hosts) },
                "agent" => FaultKind::AgentCrash { host: pick(rng, hosts) },
                "isolate" => FaultKind::Isolate { host: pick(rng, hosts), datastores: rng.chance(50) },
                "partition" => {
                    let size = rng.between(1, (hosts.len() as u64 / 2).max(1)) as usize;
                    let mut side: Vec<String> = hosts.to_vec();
                    for i in 0..side.len() {
                        let j = i + rng.below((side.len() - i) as u64) as usize;
                        side.swap(i, j);
                    }
                    side.truncate(size);
                    side.sort();
                    FaultKind::Partition { side }
                }
                "link" => FaultKind::LinkDown { host: pick(rng, hosts), network: pick(rng, networks) },
                "oneway" => {
                    let from = pick(rng, hosts);
                    let mut to = pick(rng, hosts);
                    if to == from {
                        to = hosts.iter().find(|h| **h != from).cloned().unwrap_or(to);
                    }
                    FaultKind::OneWayCut { network: pick(rng, networks), from, to }
                }
                "loss" => FaultKind::Loss { network: pick(rng, networks), percent: rng.between(10, 60) },
                "datastore" => FaultKind::DatastoreDown { datastore: pick(rng, datastores) },
                "dscut" => FaultKind::DatastoreCut { host: pick(rng, hosts), datastore: pick(rng, datastores) },
                _ => FaultKind::VmCrash { vm: pick(rng, vms) },
            };
            faults.push(Fault { at, duration, kind });
        }
        // Stalls: one in two schedules gets one, lasting around the thresholds that matter
        // (the stall gap, the hold gap, the fence timeout) or far past them.
        if !stall_families.is_empty() && stalls.chance(50) {
            let family = stall_families[stalls.below(stall_families.len() as u64) as usize];
            let at = stalls.between(5_000, window.max(5_000));
            let duration = match stalls.below(4) {
                0 => stalls.between(300, 1_500),
                1 => stalls.between(1_500, 2_500),
                2 => stalls.between(2_500, 12_000),
                _ => stalls.between(12_000, 20_000),
            };
            let host = pick(&mut stalls, hosts);
            let kind = if family == "pause" { FaultKind::AgentPause { host } } else { FaultKind::HostFreeze { host } };
            faults.push(Fault { at, duration, kind });
        }
        // Operators: one in two schedules gets one or two of their actions, among the faults.
        if !operations.is_empty() && ops.chance(50) {
            for _ in 0..ops.between(1, 2) {
                let family = operations[ops.below(operations.len() as u64) as usize];
                let at = ops.between(5_000, window.max(5_000));
                let duration = ops.between(3_000, 30_000).min(window.saturating_sub(at).max(1_000) + 20_000);
                let kind = match family {
                    "maint" => FaultKind::Maintenance { host: pick(&mut ops, hosts) },
                    "migrate" => FaultKind::Migrate { vm: pick(&mut ops, vms), to: pick(&mut ops, hosts) },
                    "stop" => FaultKind::OperatorStop { vm: pick(&mut ops, vms) },
                    "priority" => {
                        let priority =
                            [RestartPriority::Restart, RestartPriority::BestEffort, RestartPriority::Unprotected]
                                [ops.below(3) as usize];
                        FaultKind::Priority { vm: pick(&mut ops, vms), priority }
                    }
                    _ => FaultKind::HaOff,
                };
                faults.push(Fault { at, duration, kind });
            }
        }
        // Copies started outside halo: one in four schedules, lasting long enough to be seen.
        if outside && starts.chance(25) {
            let at = starts.between(5_000, window.max(5_000));
            let duration = starts.between(8_000, 30_000);
            let kind = FaultKind::StartOutside { vm: pick(&mut starts, vms), host: pick(&mut starts, hosts) };
            faults.push(Fault { at, duration, kind });
        }
        faults.sort_by_key(|f| f.at);
        Self { faults, fence_devices: BTreeMap::new() }
    }
}

/// A fault written on the command line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fault `{spec}`: {problem} (write KIND:ARGS@START[/DURATION], e.g. crash:host-2@10s/60s; kinds: {kinds})", kinds = FAULT_SYNTAX)]
pub struct FaultParseError {
    /// What was given.
    pub spec: String,
    /// What is wrong with it.
    pub problem: String,
}

const FAULT_SYNTAX: &str = "crash:HOST, agent:HOST, isolate:HOST, isolate-all:HOST, partition:HOST+HOST..., \
link:HOST:NET, oneway:NET:FROM:TO, loss:NET:PERCENT, datastore:DS, dscut:HOST:DS, vmcrash:VM, pause:HOST, \
freeze:HOST; the operator's: maint:HOST, migrate:VM:HOST, stop:VM, priority:VM:PRIORITY, haoff; \
outside:VM:HOST (a copy started outside halo)";

/// `10s`, `1500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Option<Millis> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else {
        (text, 1_000)
    };
    let value: f64 = number.parse().ok()?;
    if !value.is_finite() || !(0.0..=1e9).contains(&value) {
        return None;
    }
    Some((value * scale as f64).round() as Millis)
}

impl std::str::FromStr for Fault {
    type Err = FaultParseError;

    /// `KIND:ARGS@START[/DURATION]` (duration 30 s when left out).
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let fail = |problem: &str| FaultParseError { spec: spec.to_string(), problem: problem.to_string() };
        let (what, when) = spec.split_once('@').ok_or_else(|| fail("no start time after `@`"))?;
        let (start, duration) = match when.split_once('/') {
            Some((start, duration)) => (start, Some(duration)),
            None => (when, None),
        };
        let at = parse_duration(start).ok_or_else(|| fail("the start is not a time like 10s"))?;
        let duration = match duration {
            Some(d) => {
                parse_duration(d).filter(|&d| d > 0).ok_or_else(|| fail("the duration is not a time like 60s"))?
            }
            None => 30_000,
        };
        let mut parts = what.split(':');
        let family = parts.next().unwrap_or_default();
        let args: Vec<&str> = parts.collect();
        if args.iter().any(|a| a.trim().is_empty()) {
            return Err(fail("an argument is empty"));
        }
        let want = |n: usize| -> Result<(), FaultParseError> {
            if args.len() == n {
                Ok(())
            } else {
                Err(fail(&format!("`{family}` takes {n} argument(s), got {}", args.len())))
            }
        };
        let arg = |i: usize| args[i].trim().to_string();
        let kind = match family {
            "crash" => want(1).map(|()| FaultKind::HostCrash { host: arg(0) })?,
            "agent" => want(1).map(|()| FaultKind::AgentCrash { host: arg(0) })?,
            "isolate" => want(1).map(|()| FaultKind::Isolate { host: arg(0), datastores: false })?,
            "isolate-all" => want(1).map(|()| FaultKind::Isolate { host: arg(0), datastores: true })?,
            "partition" => {
                want(1)?;
                let side: Vec<String> = args[0].split('+').map(|h| h.trim().to_string()).collect();
                if side.iter().any(String::is_empty) {
                    return Err(fail("a host name in the partition is empty"));
                }
                FaultKind::Partition { side }
            }
            "link" => want(2).map(|()| FaultKind::LinkDown { host: arg(0), network: arg(1) })?,
            "oneway" => want(3).map(|()| FaultKind::OneWayCut { network: arg(0), from: arg(1), to: arg(2) })?,
            "loss" => {
                want(2)?;
                let percent: u64 = args[1]
                    .trim()
                    .parse()
                    .ok()
                    .filter(|p| *p <= 100)
                    .ok_or_else(|| fail("loss is a percent, 0 to 100"))?;
                FaultKind::Loss { network: arg(0), percent }
            }
            "datastore" => want(1).map(|()| FaultKind::DatastoreDown { datastore: arg(0) })?,
            "dscut" => want(2).map(|()| FaultKind::DatastoreCut { host: arg(0), datastore: arg(1) })?,
            "vmcrash" => want(1).map(|()| FaultKind::VmCrash { vm: arg(0) })?,
            "pause" => want(1).map(|()| FaultKind::AgentPause { host: arg(0) })?,
            "freeze" => want(1).map(|()| FaultKind::HostFreeze { host: arg(0) })?,
            "maint" => want(1).map(|()| FaultKind::Maintenance { host: arg(0) })?,
            "migrate" => want(2).map(|()| FaultKind::Migrate { vm: arg(0), to: arg(1) })?,
            "stop" => want(1).map(|()| FaultKind::OperatorStop { vm: arg(0) })?,
            "priority" => {
                want(2)?;
                let priority = match args[1].trim() {
                    "restart" => RestartPriority::Restart,
                    "best-effort" => RestartPriority::BestEffort,
                    "unprotected" => RestartPriority::Unprotected,
                    _ => return Err(fail("the priority is restart, best-effort or unprotected")),
                };
                FaultKind::Priority { vm: arg(0), priority }
            }
            "haoff" => want(0).map(|()| FaultKind::HaOff)?,
            "outside" => want(2).map(|()| FaultKind::StartOutside { vm: arg(0), host: arg(1) })?,
            other => return Err(fail(&format!("unknown kind `{other}`"))),
        };
        Ok(Fault { at, duration, kind })
    }
}

impl Fault {
    /// The names of hosts, networks, datastores and VMs this fault mentions that `known` does
    /// not hold (a typo on the command line must not silently inject nothing).
    pub fn unknown_names(
        &self,
        hosts: &[String],
        networks: &[String],
        datastores: &[String],
        vms: &[String],
    ) -> Vec<String> {
        let mut unknown = Vec::new();
        let mut check = |name: &str, list: &[String], what: &str| {
            if !list.iter().any(|n| n == name) {
                unknown.push(format!("{what} `{name}`"));
            }
        };
        match &self.kind {
            FaultKind::HostCrash { host }
            | FaultKind::AgentCrash { host }
            | FaultKind::Isolate { host, .. }
            | FaultKind::AgentPause { host }
            | FaultKind::HostFreeze { host }
            | FaultKind::Maintenance { host } => check(host, hosts, "host"),
            FaultKind::Migrate { vm, to: host } | FaultKind::StartOutside { vm, host } => {
                check(vm, vms, "VM");
                check(host, hosts, "host");
            }
            FaultKind::OperatorStop { vm } | FaultKind::Priority { vm, .. } => check(vm, vms, "VM"),
            FaultKind::HaOff => {}
            FaultKind::Partition { side } => side.iter().for_each(|h| check(h, hosts, "host")),
            FaultKind::OneWayCut { network, from, to } => {
                check(network, networks, "network");
                check(from, hosts, "host");
                check(to, hosts, "host");
            }
            FaultKind::LinkDown { host, network } => {
                check(host, hosts, "host");
                check(network, networks, "network");
            }
            FaultKind::Loss { network, .. } => check(network, networks, "network"),
            FaultKind::DatastoreDown { datastore } => check(datastore, datastores, "datastore"),
            FaultKind::DatastoreCut { host, datastore } => {
                check(host, hosts, "host");
                check(datastore, datastores, "datastore");
            }
            FaultKind::VmCrash { vm } => check(vm, vms, "VM"),
        }
        unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_read_from_their_command_line_form() {
        let f: Fault = "crash:host-2@10s/60s".parse().expect("valid");
        assert_eq!(f, Fault { at: 10_000, duration: 60_000, kind: FaultKind::HostCrash { host: "host-2".into() } });
        let f: Fault = "partition:host-1+host-2@1.5s".parse().expect("valid");
        assert_eq!(f.at, 1_500);
        assert_eq!(f.duration, 30_000);
        assert_eq!(f.kind, FaultKind::Partition { side: vec!["host-1".into(), "host-2".into()] });
        let f: Fault = "loss:A:30@2m/500ms".parse().expect("valid");
        assert_eq!((f.at, f.duration), (120_000, 500));
        assert_eq!(f.kind, FaultKind::Loss { network: "A".into(), percent: 30 });
        let f: Fault = "priority:vm-001:best-effort@5s".parse().expect("valid");
        assert_eq!(f.kind, FaultKind::Priority { vm: "vm-001".into(), priority: RestartPriority::BestEffort });
        assert!(f.kind.by_operator());
        let f: Fault = "haoff@5s/10s".parse().expect("valid");
        assert_eq!((f.kind, f.duration), (FaultKind::HaOff, 10_000));
        let f: Fault = "migrate:vm-001:host-3@5s".parse().expect("valid");
        assert_eq!(f.kind, FaultKind::Migrate { vm: "vm-001".into(), to: "host-3".into() });
    }

    #[test]
    fn a_bad_fault_says_what_is_wrong() {
        for (spec, says) in [
            ("crash:host-2", "no start time"),
            ("crash:host-2@soon", "not a time"),
            ("crash:host-2@1s/0s", "duration"),
            ("crash@1s", "takes 1 argument"),
            ("flood:A@1s", "unknown kind `flood`"),
            ("loss:A:300@1s", "percent"),
            ("priority:vm-001:urgent@1s", "restart, best-effort or unprotected"),
            ("haoff:now@1s", "takes 0 argument"),
            ("partition:host-1+@1s", "empty"),
            ("crash:@1s", "empty"),
            ("crash:host-1@-5s", "not a time"),
        ] {
            let error = spec.parse::<Fault>().expect_err(spec).to_string();
            assert!(error.contains(says), "{spec}: {error}");
            assert!(error.contains(spec), "{spec}: {error}");
        }
    }

    #[test]
    fn unknown_names_in_a_fault_are_listed() {
        let hosts = vec!["host-1".to_string(), "host-2".to_string()];
        let f: Fault = "oneway:C:host-1:host-9@1s".parse().expect("valid");
        let unknown = f.unknown_names(&hosts, &["A".into()], &["ds1".into()], &[]);
        assert_eq!(unknown, vec!["network `C`".to_string(), "host `host-9`".to_string()]);
    }
}
