//! What nodes tell each other: the network heartbeat, the datastore heartbeat record and
//! the VM claim. Plain data (serde) so the drivers can encode them; the drivers
//! authenticate and bound them, the core trusts only what it can check.

use serde::{Deserialize, Serialize};

/// A VM a host reports running, with the generation it was started under.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VmReport {
    /// VM name.
    pub vm: String,
    /// Generation: raised by one at every restart elsewhere (the claim key).
    pub generation: u64,
}

/// A network heartbeat, sent by every host on every management network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Sender.
    pub from: String,
    /// Sender's sequence number, one more each interval.
    pub seq: u64,
    /// Changes whenever the sender's agent starts (after a reboot or an agent restart).
    pub incarnation: u64,
    /// The master the sender follows and its epoch.
    pub master: Option<(String, u64)>,
    /// Datastores the sender reaches (the election prefers more).
    pub datastores_reachable: u32,
    /// Datastores the sender lost (configured, not written within the fence timeout): no VM
    /// whose disks are there is placed on it. Absent from older agents' heartbeats.
    #[serde(default)]
    pub datastores_lost: Vec<String>,
    /// The sender's health (proactive HA). Absent from older agents' heartbeats.
    #[serde(default)]
    pub health: HostHealth,
    /// VMs running on the sender.
    pub vms: Vec<VmReport>,
    /// VMs the operator stopped through halo on the sender (not restarted).
    pub operator_stopped: Vec<String>,
    /// For each peer the sender hears: the highest sequence number heard from it, the peer
    /// named by its index in the cluster's host list (`ClusterConfig::hosts`, in its order).
    /// This makes liveness two-way: a host counts a peer as reached only when the peer heard
    /// it. Indices, not names: a 1,000-host cluster's heartbeat is read without a thousand
    /// allocations and lookups by name (decision 0016). A driver hands the core acks only from
    /// a sender that indexes the same host list (the codec compares a digest of it and drops
    /// the acks otherwise); an index beyond the list is ignored.
    pub acks: Vec<(u32, u64)>,
    /// Hosts in maintenance, as the sender's master decided (followers adopt it).
    pub maintenance: Vec<String>,
    /// The sender has HA disabled on itself (emergency disable).
    pub ha_disabled: bool,
    /// HA is switched off for the cluster in the sender's configuration in force: it would
    /// neither fence itself nor answer isolation if cut off now, so the master must not
    /// restart its VMs on the strength of its silence.
    pub ha_off: bool,
    /// VMs running on the sender that it would leave running if cut off (unprotected in its
    /// configuration in force): the master must not restart them on the strength of its
    /// silence, whatever its own configuration says now.
    pub unarmed: Vec<String>,
    /// VMs the sender stopped on its own (isolation response, fencing): the master may
    /// restart them. Also written to the datastore record.
    pub stopped: Vec<VmReport>,
    /// VMs the sender saw vanish from another host when that host's agent started anew
    /// (host, VM): gossip, so that a master that itself rebooted learns them too.
    pub vanished: Vec<(String, VmReport)>,
    /// Claims the sender knows of that no host has run yet (it won or lost them as master):
    /// gossip, so that a master that never learnt of one — elected after the claiming master
    /// stepped down or was reset — still carries the restart on (simulator seed 3898).
    /// Absent from older agents' heartbeats.
    #[serde(default)]
    pub claims: Vec<PendingClaim>,
    /// VMs paused on the sender by halo (held after a gap until their claim is settled) or
    /// by QEMU (an I/O error): the master moves none of them (simulator seed 14102: a held
    /// VM evacuated by a maintenance arrived paused where nothing would ever resume it).
    /// Absent from older agents' heartbeats.
    #[serde(default)]
    pub paused: Vec<String>,
}

/// A claim not run yet: generation `generation` of `vm` was claimed for `host`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PendingClaim {
    /// The VM.
    pub vm: String,
    /// The host it was claimed for.
    pub host: String,
    /// The generation claimed.
    pub generation: u64,
}

/// A host's health, as its health provider last reported it (proactive HA).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthState {
    /// Fine (also: no provider configured).
    #[default]
    Healthy,
    /// Works, but something is wrong (a redundant part failed, errors corrected).
    Degraded,
    /// About to fail (errors not corrected, a part failing that the host cannot run without).
    Failing,
}

impl HealthState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Failing => "failing",
        }
    }
}

/// A host's health and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HostHealth {
    /// The state.
    pub state: HealthState,
    /// Why (the provider's words; empty when healthy).
    #[serde(default)]
    pub reason: String,
}

/// A host's datastore heartbeat record (one per host per datastore).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatastoreRecord {
    /// The writing host.
    pub host: String,
    /// Advances at every write; judged only by advancing, on the reader's clock.
    pub counter: u64,
    /// The writer declared itself isolated.
    pub isolated: bool,
    /// VMs the writer stopped on its own (isolation response or fencing): the master may
    /// restart them.
    pub stopped: Vec<VmReport>,
}

/// A host's load as the master last read it from the host's libvirt (`Action::ReadLoad`):
/// what balancing and the operator need.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HostLoad {
    /// The host's memory, MiB (libvirt's node info).
    pub memory_mib: u64,
    /// Its free memory, MiB.
    pub free_memory_mib: u64,
    /// Its CPU threads.
    pub cpus: u32,
    /// CPU use of its running VMs together, percent of the host (100: every thread busy);
    /// `None` until two readings make a rate.
    pub cpu_percent: Option<u32>,
    /// Each running VM.
    pub vms: Vec<VmLoad>,
}

/// One running VM's load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct VmLoad {
    /// The VM.
    pub vm: String,
    /// CPU use over the last reading interval, percent of one thread (a VM with two busy
    /// vCPUs: 200); `None` until two readings make a rate.
    pub cpu_percent: Option<u32>,
    /// Memory in use, MiB (its QEMU's resident memory; its balloon size where that is not
    /// reported).
    pub memory_mib: u64,
}

/// What became of a fence, kept on every datastore (`fences/<host>.json`, the latest per
/// host): who asked, which device answered, the outcome, how long it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FenceRecord {
    /// The host fenced.
    pub host: String,
    /// The master that asked.
    pub master: String,
    /// Its epoch.
    pub epoch: u64,
    /// Asked by the operator (`halo host fence`), or by the master's failure detection.
    pub by_operator: bool,
    /// The device that confirmed the host is off, when one did.
    pub device: Option<String>,
    /// `off`, or why fencing failed.
    pub outcome: String,
    /// From the request to the answer, in milliseconds.
    pub took_ms: u64,
}

/// A claim on a VM: created atomically on a datastore before a restart, so that no two
/// masters start one VM (the key is the VM and the new generation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// VM.
    pub vm: String,
    /// The generation the restart creates (the old one + 1).
    pub generation: u64,
    /// The claiming master.
    pub master: String,
    /// Its epoch.
    pub epoch: u64,
    /// Where the VM is to start.
    pub host: String,
}

/// Why a start did not happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartError {
    /// The VM's storage lease (sanlock) is held by another host: the VM may still run there,
    /// or that host died and its lease has not expired yet. Nothing was started; trying again
    /// later is right and is not a failure of the target host.
    LeaseHeld(String),
    /// Any other failure.
    Failed(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LeaseHeld(why) | Self::Failed(why) => f.write_str(why),
        }
    }
}

impl From<String> for StartError {
    fn from(why: String) -> Self {
        Self::Failed(why)
    }
}

/// The result of an attempt to create a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClaimOutcome {
    /// Created: the claimer may start the VM.
    Won,
    /// Someone else's claim for the same VM and generation exists.
    Lost(Claim),
    /// The datastore could not be reached or answered badly: nothing may start.
    Failed(String),
}
