//! The policy types: a plain-Rust mirror of the WIT package `halo:policy` (`wit/0.1.0`).
//!
//! The agent and the built-in policies work with these types; the plugin runtime converts
//! them to and from the WIT bindings. Their JSON form (used by `halo plugin run --input`)
//! uses the WIT names (kebab-case), so an input file reads like the contract.

use serde::{Deserialize, Serialize};

/// One key/value pair of a plugin's own settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setting {
    /// The setting's name.
    pub key: String,
    /// Its value, as written in the config.
    pub value: String,
}

impl Setting {
    /// A setting from a key and a value.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self { key: key.into(), value: value.into() }
    }
}

/// How important it is that a VM runs again after its host is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPriority {
    /// Restarted after a host failure, retried until capacity exists.
    Restart,
    /// Restarted once, after every `restart` VM.
    BestEffort,
    /// Never restarted by halo.
    Unprotected,
}

/// A VM as the isolation policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct VmInfo {
    /// The libvirt domain name, unique in the cluster.
    pub name: String,
    /// Restart priority.
    pub priority: RestartPriority,
    /// Restart order: 0 starts first.
    #[serde(default)]
    pub order: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Free-form labels.
    #[serde(default)]
    pub labels: Vec<String>,
}

/// One management network as the isolated host sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NetworkStatus {
    /// The network's name in the config.
    pub name: String,
    /// Whether the host's own link on it is up.
    pub link_up: bool,
    /// Peer agents heard on it within the dead-time.
    pub peers_heard: u32,
}

/// One datastore as the isolated host sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DatastoreStatus {
    /// The datastore's name in the config.
    pub name: String,
    /// Whether the host can still write its heartbeat there.
    pub reachable: bool,
}

/// One isolation address and whether it answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AddressStatus {
    /// The address pinged.
    pub address: String,
    /// Whether it answered the last ping.
    pub answered: bool,
}

/// What the isolated host knows about how it is cut off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct IsolationSituation {
    /// The isolated host.
    pub host: String,
    /// Milliseconds since it last heard any agent.
    pub isolated_for_ms: u64,
    /// Its management networks.
    #[serde(default)]
    pub networks: Vec<NetworkStatus>,
    /// Its datastores.
    #[serde(default)]
    pub datastores: Vec<DatastoreStatus>,
    /// Its isolation addresses.
    #[serde(default)]
    pub isolation_addresses: Vec<AddressStatus>,
}

impl IsolationSituation {
    /// Whether at least one datastore is still reachable (the master can then be told
    /// through the datastore which VMs this host stopped).
    pub fn any_datastore_reachable(&self) -> bool {
        self.datastores.iter().any(|d| d.reachable)
    }
}

/// Input of the isolation policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct IsolationInput {
    /// How the host is cut off.
    pub situation: IsolationSituation,
    /// Every VM running on the isolated host.
    pub vms: Vec<VmInfo>,
    /// The plugin's settings.
    #[serde(default)]
    pub settings: Vec<Setting>,
}

/// What to do with one VM of an isolated host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IsolationAction {
    /// Keep it running.
    LeaveRunning,
    /// Power it off at once.
    PowerOff,
    /// Ask the guest to shut down; power off after this many seconds.
    ShutDown(u32),
}

/// The decision for one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct VmIsolationDecision {
    /// The VM.
    pub vm: String,
    /// What to do with it.
    pub action: IsolationAction,
}

/// What a host knows about a datastore that holds VMs' disks and that it lost (new in 0.1.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StorageSituation {
    /// The host that lost it (the one asking).
    pub host: String,
    /// The datastore.
    pub datastore: String,
    /// Milliseconds since the host last wrote it (0 when only an I/O error is known).
    pub lost_for_ms: u64,
    /// A VM of the input is paused on an I/O error (QEMU stopped it: its disk failed a
    /// request), not only stalled.
    #[serde(default)]
    pub io_error: bool,
    /// The other hosts that reach the datastore now, as last heard (a restart can only go
    /// there; empty: nobody could run the VMs, a restart is never done).
    #[serde(default)]
    pub hosts_reaching: Vec<String>,
}

/// Input of the isolation policy's storage decision: the VMs of one host whose disks are
/// on a datastore the host lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StorageInput {
    /// What was lost.
    pub situation: StorageSituation,
    /// The VMs on the host with disks there.
    pub vms: Vec<VmInfo>,
    /// The isolation policy's settings.
    #[serde(default)]
    pub settings: Vec<Setting>,
}

/// What to do with one VM whose storage is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StorageResponse {
    /// Leave it as it is (stalled or paused); halo does nothing, not even resume it.
    Leave,
    /// Wait for the storage; resume it if it was paused on an I/O error once it is back.
    ResumeWhenBack,
    /// Wait this many seconds for the storage; if it is still lost then and another host
    /// reaches it, power the VM off here and restart it there. Back in time: resumed.
    Restart(u32),
}

/// The storage decision for one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct VmStorageDecision {
    /// The VM.
    pub vm: String,
    /// What to do with it.
    pub response: StorageResponse,
}

/// Why a placement is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlacementReason {
    /// Restart VMs of a lost host.
    Failover,
    /// Move VMs off a host entering maintenance.
    Evacuation,
    /// Improve the spread.
    Balance,
    /// Check a planned action against the failover plan.
    AdmissionCheck,
}

/// A VM that needs a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct VmToPlace {
    /// The VM.
    pub name: String,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Restart priority.
    pub priority: RestartPriority,
    /// Labels the chosen host must carry.
    #[serde(default)]
    pub required_host_labels: Vec<String>,
    /// At most one VM of this group per host.
    #[serde(default)]
    pub anti_affinity_group: Option<String>,
    /// Hosts it must not go to.
    #[serde(default)]
    pub avoid_hosts: Vec<String>,
    /// Datastores holding its disks.
    #[serde(default)]
    pub datastores: Vec<String>,
}

/// A host that may receive VMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CandidateHost {
    /// The host.
    pub name: String,
    /// Memory in MiB.
    pub total_memory_mib: u64,
    /// Memory not yet used by VMs, in MiB.
    pub free_memory_mib: u64,
    /// Physical CPU threads.
    pub total_vcpus: u32,
    /// vCPUs of the VMs already on it.
    #[serde(default)]
    pub allocated_vcpus: u32,
    /// Its labels.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Datastores it reaches.
    #[serde(default)]
    pub datastores: Vec<String>,
    /// In maintenance: takes no VM.
    #[serde(default)]
    pub maintenance: bool,
    /// Anti-affinity groups already present on it.
    #[serde(default)]
    pub anti_affinity_groups: Vec<String>,
}

/// Input of the placement engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PlacementInput {
    /// Why.
    pub reason: PlacementReason,
    /// VMs to place.
    pub vms: Vec<VmToPlace>,
    /// Candidate hosts.
    pub hosts: Vec<CandidateHost>,
    /// Most vCPUs per host in percent of its threads.
    #[serde(default = "default_overcommit")]
    pub vcpu_overcommit_percent: u32,
    /// The plugin's settings.
    #[serde(default)]
    pub settings: Vec<Setting>,
}

fn default_overcommit() -> u32 {
    crate::placement::DEFAULT_VCPU_OVERCOMMIT_PERCENT
}

/// One VM placed on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Assignment {
    /// The VM.
    pub vm: String,
    /// Its host.
    pub host: String,
}

/// A VM that could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct UnplacedVm {
    /// The VM.
    pub vm: String,
    /// Why, for the operator.
    pub reason: String,
}

/// The placement engine's answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Placement {
    /// Placed VMs.
    pub assignments: Vec<Assignment>,
    /// VMs without a host.
    pub unplaced: Vec<UnplacedVm>,
}

/// A VM to restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct VmToRestart {
    /// The VM.
    pub name: String,
    /// Restart priority.
    pub priority: RestartPriority,
    /// 0 starts first.
    #[serde(default)]
    pub order: u32,
    /// Its group, if any.
    #[serde(default)]
    pub group: Option<String>,
    /// VMs or groups that must be up before it starts.
    #[serde(default)]
    pub depends_on: Vec<String>,
}

/// Input of the restart policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RestartInput {
    /// VMs to restart.
    pub vms: Vec<VmToRestart>,
    /// The plugin's settings.
    #[serde(default)]
    pub settings: Vec<Setting>,
}

/// VM names started together.
pub type Wave = Vec<String>;

/// Why the restart policy gives no waves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartError {
    /// These VMs depend on each other in a circle.
    DependencyCycle(Vec<String>),
    /// Any other reason.
    Other(String),
}

impl std::fmt::Display for RestartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestartError::DependencyCycle(vms) => {
                write!(f, "dependency cycle: {} -> {}", vms.join(" -> "), vms.first().map_or("", String::as_str))
            }
            RestartError::Other(reason) => f.write_str(reason),
        }
    }
}
