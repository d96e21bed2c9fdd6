//! Faults and the schedules of them a seed produces.

use serde::Serialize;

use crate::Rng;
use halo_core::Millis;

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
}

impl FaultKind {
    /// The name used on the command line.
    pub fn family(&self) -> &'static str {
        match self {
            FaultKind::HostCrash { .. } => "crash",
            FaultKind::AgentCrash { .. } => "agent",
            FaultKind::Isolate { .. } => "isolate",
            FaultKind::Partition { .. } => "partition",
            FaultKind::OneWayCut { .. } => "oneway",
            FaultKind::Loss { .. } => "loss",
            FaultKind::DatastoreDown { .. } => "datastore",
            FaultKind::DatastoreCut { .. } => "dscut",
            FaultKind::VmCrash { .. } => "vmcrash",
        }
    }

    /// Every family name.
    pub const FAMILIES: [&'static str; 9] =
        ["crash", "agent", "isolate", "partition", "oneway", "loss", "datastore", "dscut", "vmcrash"];
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
            FaultKind::OneWayCut { network, from, to } => write!(f, "network {network}: {from} → {to} cut one way"),
            FaultKind::Loss { network, percent } => write!(f, "network {network}: {percent}% loss"),
            FaultKind::DatastoreDown { datastore } => write!(f, "datastore {datastore} server down"),
            FaultKind::DatastoreCut { host, datastore } => write!(f, "{host} loses datastore {datastore}"),
            FaultKind::VmCrash { vm } => write!(f, "{vm} crashes"),
        }
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

/// The faults of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Schedule {
    /// In time order.
    pub faults: Vec<Fault>,
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
        faults.sort_by_key(|f| f.at);
        Self { faults }
    }
}
