//! One host's HA logic as a state machine: `handle(now, input, policies) -> actions`.
//!
//! Every host runs a [`Node`]. Each node sends heartbeats on every management network and
//! writes its datastore heartbeat; it tracks every peer (sequence numbers, acks, reported
//! VMs) and elects a master deterministically. The host's own side — isolation detection,
//! the isolation response, self-fencing, VM monitoring — lives in `host_side`; what only the
//! master does — classification, restarts, maintenance — lives in `master`.
//!
//! Safety rules enforced here (each proved by a named test and checked by the simulator):
//! - a VM is started elsewhere only after a claim on the datastore for its next generation
//!   was won (`master::tests::a_lost_claim_never_starts_a_vm`);
//! - only a failed host's VMs or VMs their own host recorded as stopped are restarted
//!   (`master::tests::partitioned_and_agent_down_hosts_are_never_restarted`);
//! - a host that reaches neither a quorum nor a datastore stops its protected VMs before the
//!   dead-time (`host_side::tests::a_cut_off_host_fences_before_the_dead_time`);
//! - no running VM is ever stopped or moved to make room: the core emits `StopVm` only for
//!   isolation, fencing and operator requests, `MigrateVm` only for maintenance.

mod balance;
mod event_kind;
mod exclusivity;
mod fence;
pub use fence::DeviceAnswers;
mod host_side;
mod master;

pub use event_kind::{EventKind, UnknownEventKind};
pub use exclusivity::{Admission, ClaimsSeen, Duplicate, StartRequest};
pub use host_side::{has_quorum, must_fence, must_fence_counting};
mod health;
mod resume;
mod status;
mod storage;
mod vm_storage;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Millis;
use crate::classify::{PingSignal, Verdict};
use crate::config::ClusterConfig;
use crate::policies::Policies;
use crate::wire::{Claim, ClaimOutcome, DatastoreRecord, Heartbeat, PendingClaim, VmReport};

pub use master::{MasterState, Restart, RestartState};
pub use status::{ClusterStatus, FenceDeviceHealth, HostLoadStatus, HostStatus, VmStatus, WhatIf};

/// Why halo stopped a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    /// The operator asked (the VM is unprotected until started again through halo).
    Operator,
    /// The isolation response.
    Isolation,
    /// Self-fencing.
    Fence,
    /// The storage response: the VM's datastore stayed lost here past its grace time while
    /// another host reaches it (it is restarted there).
    Storage,
}

/// A VM's state as the local hypervisor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    /// Running.
    Running,
    /// Paused by QEMU on an I/O error of one of its disks (libvirt's `paused`, reason
    /// `ioerror`): it still holds its disks here, it is not running anywhere else.
    PausedOnIoError,
    /// It crashed (QEMU died).
    Crashed,
    /// The guest shut itself down.
    GuestShutdown,
    /// halo stopped it.
    StoppedByHalo(StopReason),
    /// It left this host by live migration.
    MigratedAway,
    /// halo stopped it while it was paused and not held by this host (a copy the master
    /// paused as one started outside halo): stopped like `StoppedByHalo`, but never recorded
    /// for a restart — halo's own copy runs elsewhere.
    StoppedWhilePaused(StopReason),
    /// Someone else stopped it (destroyed, saved, shut down by the host, not by the guest):
    /// not a failure to act on, not restarted; it no longer runs here.
    StoppedOutside,
    /// It is here, paused by a hold an earlier agent of this host began after a gap and did
    /// not settle (the agent found halo's mark on the paused domain when it started): settled
    /// as any hold (core `resume`), never taken for running or left paused.
    Held,
}

/// What an address to ping is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PingTarget {
    /// A peer host's management address (the master asks: is it alive?).
    Host(String),
    /// An isolation address (a host asks: am I cut off?).
    IsolationAddress(String),
}

/// Operator commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Command {
    /// Stop a VM on this host and unprotect it.
    StopVm(String),
    /// Put a host into maintenance (to the master): evacuate it.
    EnterMaintenance(String),
    /// Bring a host back from maintenance (to the master).
    ExitMaintenance(String),
    /// HA on or off for the cluster (to every node).
    SetHaEnabled(bool),
    /// Emergency disable of HA on this host: no fencing, no isolation response, and the
    /// master does not restart its VMs.
    SetHostHaDisabled(bool),
    /// Live-migrate one VM (to the master).
    MigrateVm {
        /// The VM.
        vm: String,
        /// The target host; none: "to the cluster", where the placement policy puts it (as
        /// for an evacuation, the host it runs on excluded).
        to: Option<String>,
    },
    /// Carry out a balancing proposal now (to the master): `halo balance apply`.
    BalanceApply,
    /// Move a running VM's disks to another directory every host sees (to the master):
    /// `halo migrate VM --storage DIR`.
    MoveStorage {
        /// The VM.
        vm: String,
        /// The target directory (absolute).
        dir: String,
    },
    /// Start a protected VM that runs nowhere, under a new claim (to the master): the way to
    /// start one by hand, since libvirt's hook refuses an unclaimed start.
    StartVm {
        /// The VM.
        vm: String,
        /// The host to start it on (none: where the placement policy puts it).
        on: Option<String>,
    },
    /// Power a host off through its fence devices (to the master): refused while it is heard
    /// unless `force`. Once a device confirms it is off and the datastores agree, its VMs are
    /// restarted as for any failed host.
    FenceHost {
        /// The host.
        host: String,
        /// Even though it is heard (it runs): its VMs stop with it and restart elsewhere.
        force: bool,
    },
}

/// An input to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// Time passed (drivers tick at least every 100 ms).
    Tick,
    /// A heartbeat arrived on a network.
    Heartbeat {
        /// The network (shared as well: the simulator names it once per heartbeat sent).
        #[serde(with = "shared_name")]
        network: Arc<str>,
        /// The heartbeat (shared: one received heartbeat is read, never changed, and the
        /// simulator hands one to every host it reaches).
        #[serde(with = "shared_heartbeat")]
        heartbeat: Arc<Heartbeat>,
    },
    /// A datastore heartbeat write finished.
    DatastoreWritten {
        /// Datastore.
        datastore: String,
        /// Whether it was written.
        ok: bool,
    },
    /// The records of a datastore were read (master).
    DatastoreRead {
        /// Datastore.
        datastore: String,
        /// The records, or why they could not be read.
        records: Result<Vec<DatastoreRecord>, String>,
    },
    /// A ping finished.
    PingResult {
        /// What was pinged.
        target: PingTarget,
        /// Whether it answered.
        answered: bool,
    },
    /// The local hypervisor reports a VM's state.
    VmState {
        /// VM.
        vm: String,
        /// Its generation.
        generation: u64,
        /// State.
        state: VmState,
    },
    /// A claim attempt finished.
    ClaimResult {
        /// The claim.
        claim: Claim,
        /// Its outcome.
        outcome: ClaimOutcome,
    },
    /// A start the master asked for finished.
    StartResult {
        /// VM.
        vm: String,
        /// Host.
        host: String,
        /// Generation started.
        generation: u64,
        /// Done, or why not.
        result: Result<(), crate::wire::StartError>,
    },
    /// How far a storage move's copy is.
    StorageProgress {
        /// VM.
        vm: String,
        /// Percent copied.
        percent: u32,
    },
    /// A storage move's mirror is in step (the disks' paths, old → new), or the copy failed
    /// and was dropped.
    StorageCopied {
        /// VM.
        vm: String,
        /// The paths, or why not.
        result: Result<Vec<(String, String)>, String>,
    },
    /// A VM's definition was recorded on the datastores (at least one), or on none.
    DefinitionRecorded {
        /// VM.
        vm: String,
        /// Done, or why not.
        result: Result<(), String>,
    },
    /// A storage move's host switched the guest to the copies (`pivot`) or dropped the mirror.
    StorageFinished {
        /// VM.
        vm: String,
        /// Switched (or dropped).
        pivot: bool,
        /// Done, or why not.
        result: Result<(), String>,
    },
    /// A live migration finished.
    MigrateResult {
        /// VM.
        vm: String,
        /// From.
        from: String,
        /// To.
        to: String,
        /// Done, or why not.
        result: Result<(), String>,
    },
    /// An operator command.
    Command(Command),
    /// The node was not fed for `gap_ms` (the agent's process was stopped, its host frozen,
    /// or its loop stalled): the agent measures its own gaps on a monotonic clock and feeds
    /// this first, before anything that queued meanwhile. What was known before the gap is
    /// not evidence of now (see `resume`).
    Resumed {
        /// How long nothing was handled.
        gap_ms: Millis,
    },
    /// The agent's liveness path sent heartbeats on this node's behalf while the node was
    /// busy, up to sequence number `seq`: the node numbers its next heartbeat above it.
    KeptAlive {
        /// The last sequence number sent.
        seq: u64,
    },
    /// This host's health provider answered (proactive HA): its health now.
    HealthReported(crate::wire::HostHealth),
    /// A host's load, read from its libvirt (`Action::ReadLoad`), or why it could not be.
    LoadRead {
        /// The host.
        host: String,
        /// What was read.
        load: Result<crate::wire::HostLoad, String>,
    },
    /// A host's fence devices answered `status` (`Action::MonitorFence`): per device, in
    /// order, its name and the power state it reports (`on`/`off`) or why it failed.
    FenceMonitored {
        /// The host.
        host: String,
        /// Per device.
        devices: fence::DeviceAnswers,
    },
    /// A fence finished (`Action::FenceHost`).
    FenceResult {
        /// The host.
        host: String,
        /// The device that confirmed the host is off, or why none did.
        result: Result<String, String>,
    },
    /// A claim was looked up (`Action::CheckClaim`).
    ClaimChecked {
        /// VM.
        vm: String,
        /// The generation asked about.
        generation: u64,
        /// The claim if it exists, `None` if no datastore holds it, or why it could not be
        /// told (a datastore did not answer).
        holder: Result<Option<Claim>, String>,
    },
    /// A new cluster configuration (already validated by the caller, the same on every host):
    /// hosts added are tracked from now on, hosts removed are forgotten, VMs and timeouts
    /// take effect at once. Boxed: the rest of the inputs are small.
    ConfigChanged(Box<ClusterConfig>),
}

/// How bad an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// Normal operation.
    Info,
    /// Worth a look.
    Warning,
    /// An alert: raised to the operator (webhook, message list).
    Alert,
}

/// Something that happened, for the event log, the timeline and alerts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When (the node's clock).
    pub at: Millis,
    /// The node that recorded it.
    pub node: String,
    /// Severity.
    pub severity: Severity,
    /// What it is about (its wire name is stable, e.g. `host-failed`, `vm-restarted`).
    pub kind: EventKind,
    /// What happened, for people.
    pub message: String,
    /// The signals behind a verdict, when there is one.
    pub trace: Option<String>,
}

/// What a node asks its drivers to do.
// `SendHeartbeat` is the largest variant and by far the commonest action (hosts × networks a
// second): boxing it would add an allocation to every heartbeat to save bytes on the rare ones.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Send a heartbeat on a network.
    SendHeartbeat {
        /// Network.
        network: String,
        /// Heartbeat (one, shared by every network it is sent on).
        #[serde(with = "shared_heartbeat")]
        heartbeat: std::sync::Arc<Heartbeat>,
    },
    /// Write this host's datastore heartbeat record.
    WriteDatastore {
        /// Datastore.
        datastore: String,
        /// The record.
        record: DatastoreRecord,
    },
    /// Read every host's record on a datastore (master).
    ReadDatastore {
        /// Datastore.
        datastore: String,
    },
    /// Ping an address.
    Ping {
        /// What.
        target: PingTarget,
    },
    /// Create a claim atomically on a datastore; only a won claim may lead to a start.
    Claim {
        /// Datastore.
        datastore: String,
        /// The claim.
        claim: Claim,
    },
    /// Start a VM on a host (the master restarting it, or a host restarting its own crashed VM).
    StartVm {
        /// Host.
        host: String,
        /// VM.
        vm: String,
        /// Generation to start it under.
        generation: u64,
    },
    /// Stop a VM on this host.
    StopVm {
        /// VM.
        vm: String,
        /// Why.
        reason: StopReason,
        /// Seconds of guest shutdown before power off (0: power off at once).
        grace_secs: u32,
    },
    /// Live-migrate a VM.
    MigrateVm {
        /// VM.
        vm: String,
        /// From.
        from: String,
        /// To.
        to: String,
    },
    /// Mirror a running VM's disks into `dir` on `host`, writes synchronous, until in step;
    /// answers `Input::StorageCopied` (and `Input::StorageProgress` on the way).
    CopyStorage {
        /// VM.
        vm: String,
        /// Where it runs.
        host: String,
        /// The target directory.
        dir: String,
    },
    /// Record a VM's definition with its disks' paths changed (old → new) on every datastore;
    /// answers `Input::DefinitionRecorded`.
    RecordDefinition {
        /// VM.
        vm: String,
        /// The paths, old → new.
        moved: Vec<(String, String)>,
    },
    /// Switch the guest to its mirrored copies and keep the new definition on the host
    /// (`pivot`), or drop the mirror; answers `Input::StorageFinished`.
    FinishStorage {
        /// VM.
        vm: String,
        /// Where it runs.
        host: String,
        /// Switch (or drop).
        pivot: bool,
    },
    /// Pause a VM on this host (libvirt suspend: its guest stops executing, nothing is lost).
    PauseVm {
        /// VM.
        vm: String,
    },
    /// Power a host off through its fence devices (master); answers `Input::FenceResult`.
    FenceHost {
        /// The host.
        host: String,
    },
    /// Keep what became of a fence on every datastore (no answer; a failed write is logged).
    RecordFence {
        /// The record.
        record: crate::wire::FenceRecord,
    },
    /// Read a host's load from its libvirt (master, every [`LOAD_INTERVAL_MS`]); answers
    /// `Input::LoadRead`.
    ReadLoad {
        /// The host.
        host: String,
    },
    /// Ask a host's fence devices for its power state (read only); answers
    /// `Input::FenceMonitored`.
    MonitorFence {
        /// The host.
        host: String,
    },
    /// Call off a fence under way (the host was heard again); its result, if any, is ignored.
    CancelFence {
        /// The host.
        host: String,
    },
    /// Pause a copy of a VM on another host (or this one): a protected VM found running on
    /// two hosts, the copy halo does not keep (libvirt suspend, reached like a start).
    PauseCopy {
        /// The host of the copy.
        host: String,
        /// VM.
        vm: String,
    },
    /// Let a paused VM on this host run again.
    ResumeVm {
        /// VM.
        vm: String,
    },
    /// Look up whether a claim for `(vm, generation)` exists on any datastore; answers
    /// `Input::ClaimChecked`.
    CheckClaim {
        /// VM.
        vm: String,
        /// Generation.
        generation: u64,
    },
    /// Record an event (and raise it when it is an alert).
    Record(Event),
}

/// What a node knows of a peer.
#[derive(Debug, Clone, Default)]
struct Peer {
    /// Its index in the configuration's host list (acks name hosts by index).
    index: usize,
    /// Highest sequence number heard (directly or through acks).
    seq: u64,
    /// When it advanced.
    seq_advanced_at: Option<Millis>,
    /// When a heartbeat arrived directly from it (any network).
    heard_directly_at: Option<Millis>,
    /// Per network: last direct heartbeat.
    networks: BTreeMap<String, Millis>,
    /// Highest sequence number of ours it acknowledged, and when that advanced.
    acked_our_seq: u64,
    ack_advanced_at: Option<Millis>,
    /// From its last heartbeat.
    datastores_reachable: u32,
    datastores_lost: Vec<String>,
    /// Its health, from its last heartbeat.
    health: crate::wire::HostHealth,
    /// Per datastore it reports writing: since when, without a break (`vm_storage`).
    reaching_since: BTreeMap<String, Millis>,
    master: Option<(String, u64)>,
    vms: Vec<VmReport>,
    stopped: Vec<VmReport>,
    operator_stopped: Vec<String>,
    ha_disabled: bool,
    /// Its last heartbeat said HA is off in its configuration (or HA was switched on here
    /// since, and it has not been heard saying it is on too).
    ha_off: bool,
    /// VMs running there that it would leave running if cut off (unprotected there, as last
    /// heard; or protected here since, and it has not been heard saying so too).
    unarmed: BTreeSet<String>,
    /// Datastore view (master): counter and when it advanced, per datastore.
    datastores: BTreeMap<String, (u64, Millis)>,
    declared_isolated: bool,
    ds_stopped: Vec<VmReport>,
    /// Its agent's incarnation, when it last restarted, and what it ran before.
    incarnation: Option<u64>,
    /// First sequence number of its new incarnation, while what it ran before is unsettled.
    restart_first_seq: Option<u64>,
    vms_before_restart: Vec<VmReport>,
    /// Sequence number of the last heartbeat received directly (its VM list is `vms`).
    direct_seq: u64,
    /// VMs paused there (held, or by an I/O error), from its last heartbeat.
    paused: Vec<String>,
    /// The master's ping of it since it fell silent.
    ping: PingSignal,
    ping_at: Millis,
    /// An answer is being confirmed (a fenceable host still silent: an answer is good for a
    /// ping timeout only, so a host whose agent died just before it does is fenced without
    /// waiting for the answer to go stale); the result replaces the answer.
    ping_refresh: bool,
    verdict: Option<Verdict>,
    /// Fencing it (master).
    fence: fence::Fence,
}

/// The isolation state of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Isolation {
    /// Hears other agents (or is alone by configuration).
    Connected,
    /// Hears no agent; pinging the isolation addresses.
    Pinging { since: Millis, pending: BTreeSet<String>, answered: bool },
    /// An isolation address answered: the network is there but no agent is; rechecked later.
    Lonely { since: Millis },
    /// Isolated: the isolation response was applied.
    Isolated { since: Millis },
}

/// One host's HA state machine.
pub struct Node {
    name: String,
    config: ClusterConfig,
    started_at: Millis,
    seq: u64,
    next_heartbeat: Millis,
    next_datastore: Millis,
    ds_counter: u64,
    ds_write_ok_at: BTreeMap<String, Millis>,
    /// Datastores this host reported lost (an alert each) and not regained since.
    ds_lost: BTreeSet<String>,
    ds_read_ok_at: Option<Millis>,
    peers: BTreeMap<String, Peer>,
    /// Per host of the configuration, by its index in `config.hosts`: its peer's `seq` (0 for
    /// this node). Kept flat, beside `peers`, so that a heartbeat's acks — one per host — are
    /// checked without a lookup by name; only an ack that advances a peer goes to `peers`.
    seqs: Vec<u64>,
    /// This node's index in `config.hosts` (acks name hosts by index).
    index: Option<usize>,
    local_vms: BTreeMap<String, u64>,
    operator_stopped: BTreeSet<String>,
    stopped: Vec<VmReport>,
    crashes: BTreeMap<String, Vec<Millis>>,
    isolation: Isolation,
    fenced: bool,
    ha_enabled: bool,
    ha_disabled_here: bool,
    maintenance: BTreeSet<String>,
    generations: BTreeMap<String, u64>,
    master_view: Option<(String, u64)>,
    max_epoch: u64,
    /// The master's state: exists only while this node is elected (created on election,
    /// dropped on stepping down); the master's work takes it with `let Some(..) else`, never
    /// `expect`.
    master: Option<MasterState>,
    vanished: BTreeMap<String, (String, u64)>,
    incarnation: u64,
    out: Vec<Action>,
    now: Millis,
    next_evaluation: Millis,
    /// When this node last resumed after a gap: evidence older than this is not evidence.
    resumed_at: Option<Millis>,
    /// Protected VMs paused after a long gap, until their claim is confirmed.
    held: BTreeMap<String, resume::Hold>,
    /// Hosts the operator was told the blast-radius limit kept from being fenced.
    fence_limit_told: BTreeSet<String>,
    /// The last answer of every host's fence devices to `status` (master).
    fence_health: BTreeMap<String, fence::DeviceAnswers>,
    /// When the master next asks them.
    fence_monitor_due: Millis,
    /// Every host's load as the master last read it, and when (master).
    load: BTreeMap<String, (Millis, crate::wire::HostLoad)>,
    /// When the master next reads the hosts' load.
    load_due: Millis,
    /// Balancing (master).
    balancing: balance::Balancing,
    /// Storage moves this node started as master, carried to their end even if it steps down
    /// meanwhile (VM → move): a mirror must be switched or dropped by whoever knows where its
    /// definition was recorded.
    storage: BTreeMap<String, storage::StorageMove>,
    /// VMs this node asked its driver to stop and whose stop it has not heard of yet: libvirt
    /// reports halo's own power-off as a stop from outside too.
    stopping: BTreeSet<String>,
    /// VMs here that QEMU paused on an I/O error (until they run again or leave).
    io_paused: BTreeSet<String>,
    /// VMs here whose storage is lost, and what the storage response decided (`vm_storage`).
    storage_lost: BTreeMap<String, vm_storage::Episode>,
    /// This host's health, as its provider last reported it.
    health: crate::wire::HostHealth,
    /// Hosts the master put into maintenance for their health (taken out when healthy), and
    /// when it last tried a refused one.
    health_maintenance: BTreeMap<String, Option<Millis>>,
    /// Claims this node learned of (won, or found taken by another master), per VM: the host
    /// named, the generation, when — until a host reports that generation (or a later one).
    /// Kept across mastership: a claim whose master stepped down before starting the VM is
    /// carried on by the next one (`master::find_lost_vms`).
    claims_seen: BTreeMap<String, (String, u64, Millis)>,
    /// The newest claim this node learnt of per VM (generation, host, when), kept after it
    /// ran: a copy of that generation on that host is halo's, however late a master saw it
    /// (`exclusivity`; simulator seed 2505).
    claimed: BTreeMap<String, (u64, String, Millis)>,
    /// Raised at every configuration change (`master::plan_fingerprint`).
    config_epoch: u64,
    /// The fingerprint of what the master's last failover plan was computed from, and when
    /// (`master::refresh_plan`).
    plan_inputs: Option<(u64, Millis)>,
}

/// Serde for a shared heartbeat: written as the heartbeat itself (serde's `rc` feature would
/// change serde for every crate of the build, wasmtime's too).
mod shared_heartbeat {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::wire::Heartbeat;

    pub fn serialize<S: Serializer>(heartbeat: &Arc<Heartbeat>, serializer: S) -> Result<S::Ok, S::Error> {
        heartbeat.as_ref().serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Arc<Heartbeat>, D::Error> {
        Heartbeat::deserialize(deserializer).map(Arc::new)
    }
}

/// Serde for a shared name: written as the string.
mod shared_name {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(name: &Arc<str>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(name)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Arc<str>, D::Error> {
        String::deserialize(deserializer).map(Arc::from)
    }
}

/// Sets `to` to `from` unless they are equal already (no allocation in the common case of a
/// heartbeat saying what the last one said).
fn replace_if_changed<T: Clone + PartialEq>(to: &mut Vec<T>, from: &[T]) -> bool {
    if to.as_slice() == from {
        return false;
    }
    to.clear();
    to.extend_from_slice(from);
    true
}

/// Raises the highest generation known of `vm` to `generation` (allocates only for a VM
/// seen the first time: this runs for every VM of every heartbeat).
fn note_generation(generations: &mut BTreeMap<String, u64>, vm: &str, generation: u64) {
    match generations.get_mut(vm) {
        Some(known) => *known = (*known).max(generation),
        None => {
            generations.insert(vm.to_string(), generation);
        }
    }
}

/// How often the master reads every host's load from its libvirt (`Action::ReadLoad`).
pub const LOAD_INTERVAL_MS: Millis = 10_000;

/// How often the whole-cluster evaluation (election, isolation, fencing, classification,
/// restarts) runs: at every tick, and the drivers tick every 100 ms. A verdict is at most
/// this late, far inside the two heartbeat intervals between the fence deadline and the
/// dead-time; should the ticks be late, heartbeats trigger it when it is this overdue.
const EVALUATION_INTERVAL: Millis = 100;

impl Node {
    /// A node for host `name`, started at `now`. The config must have passed validation.
    pub fn new(name: &str, config: ClusterConfig, now: Millis) -> Self {
        let peers = config
            .hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| h.name != name)
            .map(|(index, h)| (h.name.clone(), Peer { index, ..Peer::default() }))
            .collect();
        let ha_enabled = config.ha.enabled;
        let seqs = vec![0; config.hosts.len()];
        let index = config.host_index(name);
        Self {
            name: name.to_string(),
            config,
            seqs,
            index,
            started_at: now,
            seq: 0,
            next_heartbeat: now,
            next_datastore: now,
            ds_counter: 0,
            ds_write_ok_at: BTreeMap::new(),
            ds_lost: BTreeSet::new(),
            ds_read_ok_at: None,
            peers,
            local_vms: BTreeMap::new(),
            operator_stopped: BTreeSet::new(),
            stopped: Vec::new(),
            crashes: BTreeMap::new(),
            isolation: Isolation::Connected,
            fenced: false,
            ha_enabled,
            ha_disabled_here: false,
            maintenance: BTreeSet::new(),
            generations: BTreeMap::new(),
            master_view: None,
            max_epoch: 0,
            master: None,
            vanished: BTreeMap::new(),
            incarnation: now,
            out: Vec::new(),
            now,
            next_evaluation: now,
            resumed_at: None,
            held: BTreeMap::new(),
            fence_limit_told: BTreeSet::new(),
            fence_health: BTreeMap::new(),
            fence_monitor_due: 0,
            load: BTreeMap::new(),
            load_due: 0,
            balancing: balance::Balancing::default(),
            storage: BTreeMap::new(),
            stopping: BTreeSet::new(),
            io_paused: BTreeSet::new(),
            storage_lost: BTreeMap::new(),
            health: crate::wire::HostHealth::default(),
            health_maintenance: BTreeMap::new(),
            claims_seen: BTreeMap::new(),
            claimed: BTreeMap::new(),
            config_epoch: 0,
            plan_inputs: None,
        }
    }

    /// Sets the incarnation announced in heartbeats (default: the start time). The agent
    /// gives a value that differs at every start, even across reboots.
    pub fn with_incarnation(mut self, incarnation: u64) -> Self {
        self.incarnation = incarnation;
        self
    }

    /// This host's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The master this node follows and its epoch.
    pub fn master(&self) -> Option<&(String, u64)> {
        self.master_view.as_ref()
    }

    /// Whether this node is the master.
    pub fn is_master(&self) -> bool {
        self.master.is_some()
    }

    /// The master state, when this node is master.
    pub fn master_state(&self) -> Option<&MasterState> {
        self.master.as_ref()
    }

    /// The master's verdict on each peer (empty unless master).
    pub fn verdicts(&self) -> BTreeMap<String, Verdict> {
        self.peers.iter().filter_map(|(n, p)| p.verdict.map(|v| (n.clone(), v))).collect()
    }

    /// VMs running here, with their generation.
    pub fn local_vms(&self) -> &BTreeMap<String, u64> {
        &self.local_vms
    }

    /// Whether this host fenced itself.
    pub fn fenced(&self) -> bool {
        self.fenced
    }

    /// Whether this node may fence now: HA on for the cluster and here, other hosts exist.
    pub fn fencing_armed(&self) -> bool {
        self.ha_enabled && !self.ha_disabled_here && !self.peers.is_empty()
    }

    /// The protected VMs running here (what fencing would stop).
    pub fn protected_here(&self) -> Vec<String> {
        self.local_vms.keys().filter(|vm| self.config.vm(vm).is_some_and(|s| s.protected())).cloned().collect()
    }

    /// Whether this host declared itself isolated.
    pub fn isolated(&self) -> bool {
        matches!(self.isolation, Isolation::Isolated { .. })
    }

    /// Hosts in maintenance, as this node knows.
    pub fn maintenance(&self) -> &BTreeSet<String> {
        &self.maintenance
    }

    /// The cluster config.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Feeds one input at `now` (never earlier than the last `now`) and returns the actions.
    pub fn handle(&mut self, now: Millis, input: Input, policies: &mut dyn Policies) -> Vec<Action> {
        self.now = now.max(self.now);
        if let Input::KeptAlive { seq } = input {
            // Only a number moves: no heartbeat, no judging (a `Resumed` may follow, whose
            // evidence rules the judging after a gap).
            self.seq = self.seq.max(seq);
            return Vec::new();
        }
        // The whole-cluster evaluation runs at every tick (the drivers tick every 100 ms) and
        // at once after every input that is news. Heartbeats and the datastore heartbeats'
        // reads and writes are the bulk of the inputs (hosts x networks, and four per
        // datastore, a second): they only update what is known and are judged at the next
        // tick — unless the ticks are overdue (`EVALUATION_INTERVAL` past the last), or a
        // peer is heard again after a silence (a fence under way is called off at once).
        let periodic =
            matches!(input, Input::Heartbeat { .. } | Input::DatastoreWritten { .. } | Input::DatastoreRead { .. });
        let overdue = self.now >= self.next_evaluation + EVALUATION_INTERVAL;
        let mut evaluate = !periodic || overdue;
        match input {
            Input::Tick => {}
            Input::KeptAlive { .. } => {} // handled above
            Input::Heartbeat { network, heartbeat } => evaluate |= self.on_heartbeat(&network, &heartbeat),
            Input::DatastoreWritten { datastore, ok } => self.on_datastore_written(datastore, ok),
            Input::DatastoreRead { datastore, records } => self.on_datastore_read(&datastore, records),
            Input::PingResult { target, answered } => self.on_ping(target, answered),
            Input::VmState { vm, generation, state } => self.on_vm_state(&vm, generation, state),
            Input::ClaimResult { claim, outcome } => self.on_claim(claim, outcome),
            Input::StartResult { vm, host, generation, result } => self.on_start(&vm, &host, generation, result),
            Input::MigrateResult { vm, from, to, result } => self.on_migrate(&vm, &from, &to, result),
            Input::StorageProgress { vm, percent } => self.on_storage_progress(&vm, percent),
            Input::StorageCopied { vm, result } => self.on_storage_copied(&vm, result),
            Input::DefinitionRecorded { vm, result } => self.on_definition_recorded(&vm, result),
            Input::StorageFinished { vm, pivot, result } => self.on_storage_finished(&vm, pivot, result),
            Input::Command(command) => self.on_command(command, policies),
            Input::ConfigChanged(config) => self.on_config(*config),
            Input::Resumed { gap_ms } => self.on_resumed(gap_ms),
            Input::ClaimChecked { vm, generation, holder } => self.on_claim_checked(&vm, generation, holder),
            Input::FenceResult { host, result } => self.on_fence_result(&host, result),
            Input::FenceMonitored { host, devices } => self.on_fence_monitored(&host, devices),
            Input::LoadRead { host, load } => self.on_load(&host, load),
            Input::HealthReported(health) => self.on_health(health),
        }
        self.check_datastore_silence();
        self.step(policies, evaluate);
        #[cfg(debug_assertions)]
        self.check_seqs();
        for action in &self.out {
            if let Action::StopVm { vm, .. } = action {
                self.stopping.insert(vm.clone());
            }
        }
        std::mem::take(&mut self.out)
    }

    /// `seqs` is the peers' `seq` by index, and 0 for this node (debug builds check it after
    /// every input).
    #[cfg(debug_assertions)]
    fn check_seqs(&self) {
        let expected: Vec<u64> =
            self.config.hosts.iter().map(|h| self.peers.get(&h.name).map_or(0, |p| p.seq)).collect();
        assert_eq!(self.seqs, expected, "{}: the flat copy of the peers' numbers drifted", self.name);
        for (name, peer) in &self.peers {
            assert_eq!(self.config.hosts.get(peer.index).map(|h| h.name.as_str()), Some(name.as_str()));
        }
    }

    /// A datastore write's outcome. A failed write is an alert at once (the operator learns
    /// that a host lost its datastore before it matters); the first good write after it an
    /// event. Neither changes a decision: the failure matrix reads `ds_write_ok_at` as before.
    fn on_datastore_written(&mut self, datastore: String, ok: bool) {
        if ok {
            self.ds_write_ok_at.insert(datastore.clone(), self.now);
            if self.ds_lost.remove(&datastore) {
                self.record(
                    Severity::Info,
                    EventKind::DatastoreRegained,
                    format!("{} writes datastore {datastore} again", self.name),
                    None,
                );
            }
        } else if self
            .ds_write_ok_at
            .get(&datastore)
            .is_some_and(|&at| self.now.saturating_sub(at) < self.config.timeouts.datastore_interval_ms)
        {
            // A write was good within the last interval: this failure is of a write issued
            // before it (its timeout ran out after the path came back), not news.
        } else if self.ds_lost.insert(datastore.clone()) {
            let reached = self.datastores_reachable();
            self.record(
                Severity::Alert,
                EventKind::DatastoreLost,
                format!(
                    "{} cannot write its heartbeat record on datastore {datastore} ({reached} of {} datastore(s) still written within the fence timeout)",
                    self.name,
                    self.config.datastores.len()
                ),
                None,
            );
        }
    }

    /// A datastore written once but not since the fence timeout (a write that hangs reports
    /// nothing): lost, as if a write had failed.
    fn check_datastore_silence(&mut self) {
        let window = self.config.timeouts.fence_timeout_ms;
        let silent: Vec<String> = self
            .ds_write_ok_at
            .iter()
            .filter(|(d, at)| self.now.saturating_sub(**at) >= window && !self.ds_lost.contains(*d))
            .map(|(d, _)| d.clone())
            .collect();
        for datastore in silent {
            self.ds_lost.insert(datastore.clone());
            self.record(
                Severity::Alert,
                EventKind::DatastoreLost,
                format!(
                    "{} has not written its heartbeat record on datastore {datastore} for {} ms (the fence timeout)",
                    self.name, window
                ),
                None,
            );
        }
    }

    fn on_config(&mut self, config: ClusterConfig) {
        let names: BTreeSet<String> = config.hosts.iter().map(|h| h.name.clone()).filter(|n| *n != self.name).collect();
        self.peers.retain(|name, _| names.contains(name));
        for (index, host) in config.hosts.iter().enumerate().filter(|(_, h)| h.name != self.name) {
            self.peers.entry(host.name.clone()).or_default().index = index;
        }
        self.set_ha_enabled(config.ha.enabled);
        // A VM protected now that was not: no peer counts as armed for it until heard saying
        // it is protected there too (same reason as `set_ha_enabled`; seed 2296).
        for spec in config.vms.iter().filter(|s| s.protected()) {
            if !self.config.vm(&spec.name).is_some_and(|s| s.protected()) {
                for peer in self.peers.values_mut() {
                    peer.unarmed.insert(spec.name.clone());
                }
            }
        }
        let (hosts, vms) = (config.hosts.len(), config.vms.len());
        // Acks index the host list: the flat copy of the peers' numbers follows it.
        self.seqs = config.hosts.iter().map(|h| self.peers.get(&h.name).map_or(0, |p| p.seq)).collect();
        self.index = config.host_index(&self.name);
        self.config = config;
        self.config_epoch += 1;
        self.record(
            Severity::Info,
            EventKind::ConfigChanged,
            format!("configuration in force: {hosts} host(s), {vms} VM(s)"),
            None,
        );
    }

    /// HA on or off for the cluster, as this node knows it. Switched on again: no peer counts
    /// as armed (fencing itself when cut off) until it is heard saying HA is on there too. A
    /// host cut off while HA was off cannot learn it is on again, so it does not fence, and
    /// restarting its VMs would run them twice (simulator, conservative timeouts, seed 10358).
    fn set_ha_enabled(&mut self, on: bool) {
        if on && !self.ha_enabled {
            for peer in self.peers.values_mut() {
                peer.ha_off = true;
            }
        }
        self.ha_enabled = on;
    }

    /// The periodic work after an input: heartbeats and datastore writes when due, then
    /// (when `evaluate`) election, isolation, fencing and the master's work.
    fn step(&mut self, policies: &mut dyn Policies, evaluate: bool) {
        let t = self.config.timeouts;
        if self.now >= self.next_heartbeat {
            self.next_heartbeat = self.now + t.heartbeat_interval_ms;
            self.send_heartbeats();
        }
        if self.now >= self.next_datastore {
            self.next_datastore = self.now + t.datastore_interval_ms;
            self.write_datastores();
        }
        if !evaluate {
            return;
        }
        self.next_evaluation = self.now + EVALUATION_INTERVAL;
        self.elect();
        self.watch_isolation(policies);
        self.watch_fencing();
        self.watch_vm_storage(policies);
        self.settle_held();
        if self.master.is_some() {
            self.watch_health(policies);
            self.master_step(policies);
        }
    }

    fn record(&mut self, severity: Severity, kind: EventKind, message: String, trace: Option<String>) {
        self.out.push(Action::Record(Event { at: self.now, node: self.name.clone(), severity, kind, message, trace }));
    }

    fn send_heartbeats(&mut self) {
        self.seq += 1;
        let acks = self.seqs.iter().enumerate().filter(|(_, seq)| **seq > 0).map(|(i, seq)| (i as u32, *seq)).collect();
        let mut vms: Vec<VmReport> =
            self.local_vms.iter().map(|(vm, &generation)| VmReport { vm: vm.clone(), generation }).collect();
        vms.sort();
        let heartbeat = Heartbeat {
            from: self.name.clone(),
            seq: self.seq,
            incarnation: self.incarnation,
            master: self.master_view.clone(),
            datastores_reachable: self.datastores_reachable(),
            datastores_lost: self.ds_lost.iter().cloned().collect(),
            health: self.health.clone(),
            vms,
            operator_stopped: self.operator_stopped.iter().cloned().collect(),
            acks,
            maintenance: self.maintenance.iter().cloned().collect(),
            ha_disabled: self.ha_disabled_here,
            ha_off: !self.ha_enabled,
            unarmed: self
                .local_vms
                .keys()
                .filter(|vm| !self.config.vm(vm).is_some_and(|s| s.protected()))
                .cloned()
                .collect(),
            stopped: self.stopped.clone(),
            vanished: self
                .vanished
                .iter()
                .map(|(vm, (host, generation))| (host.clone(), VmReport { vm: vm.clone(), generation: *generation }))
                .collect(),
            claims: self
                .claims_seen
                .iter()
                .map(|(vm, (host, generation, _))| PendingClaim {
                    vm: vm.clone(),
                    host: host.clone(),
                    generation: *generation,
                })
                .collect(),
            paused: self.held.keys().chain(self.io_paused.iter()).cloned().collect(),
        };
        let heartbeat = std::sync::Arc::new(heartbeat);
        for network in &self.config.networks {
            self.out.push(Action::SendHeartbeat { network: network.clone(), heartbeat: heartbeat.clone() });
        }
    }

    fn datastores_reachable(&self) -> u32 {
        let window = self.config.timeouts.fence_timeout_ms;
        self.ds_write_ok_at.values().filter(|&&at| self.now.saturating_sub(at) < window).count() as u32
    }

    fn write_datastores(&mut self) {
        self.ds_counter += 1;
        let record = DatastoreRecord {
            host: self.name.clone(),
            counter: self.ds_counter,
            isolated: self.isolated(),
            stopped: self.stopped.clone(),
        };
        for datastore in &self.config.datastores {
            self.out.push(Action::WriteDatastore { datastore: datastore.clone(), record: record.clone() });
            if self.master.is_some() {
                self.out.push(Action::ReadDatastore { datastore: datastore.clone() });
            }
        }
    }

    /// Takes in a heartbeat; whether its sender is heard again after a silence (more than
    /// two heartbeat intervals, or never before): news for the evaluation.
    fn on_heartbeat(&mut self, network: &str, hb: &Heartbeat) -> bool {
        if hb.from == self.name || !self.config.networks.iter().any(|n| n == network) {
            return false;
        }
        let now = self.now;
        let silence = 2 * self.config.timeouts.heartbeat_interval_ms;
        let Some(peer) = self.peers.get_mut(&hb.from) else {
            return false; // not a member of this cluster: ignored (the driver already authenticated it)
        };
        let news = peer.heard_directly_at.is_none_or(|at| now.saturating_sub(at) > silence);
        self.take_heartbeat(network, hb);
        news
    }

    fn take_heartbeat(&mut self, network: &str, hb: &Heartbeat) {
        let now = self.now;
        let Some(peer) = self.peers.get_mut(&hb.from) else { return };
        match peer.networks.get_mut(network) {
            Some(at) => *at = now,
            None => {
                peer.networks.insert(network.to_string(), now);
            }
        }
        peer.heard_directly_at = Some(now);
        // An older heartbeat of the same incarnation arriving after a newer one (another
        // network, or an extra heartbeat sent at once when the peer's VMs changed): proof the
        // peer and that network live, but what it says is out of date — it must not undo what
        // the newer one said (a copy started outside halo vanished from the lab's status).
        if peer.incarnation == Some(hb.incarnation) && hb.seq < peer.direct_seq {
            return;
        }
        let previous_direct = std::mem::replace(&mut peer.direct_seq, hb.seq);
        let index = peer.index;
        // The peer's number when it changes here (for `seqs`).
        let mut seq_now = None;
        // The same heartbeat again, on another network: it says nothing the first copy did
        // not (a host sends the same heartbeat on every network under one number); that the
        // network lives is noted above. Half of all heartbeats: they are not read again.
        if peer.incarnation == Some(hb.incarnation) && hb.seq == previous_direct {
            return;
        }
        if peer.incarnation != Some(hb.incarnation) {
            // The peer's agent started anew: VMs it reported before and does not report now
            // are gone (a reboot takes them; a mere agent restart finds them again).
            if peer.incarnation.is_some() {
                peer.restart_first_seq = Some(hb.seq);
                // A second restart before the first settled keeps what the first one lost
                // (a host that rebooted twice in a row; seed 400).
                let reported = std::mem::take(&mut peer.vms);
                for report in reported {
                    peer.vms_before_restart.retain(|r| r.vm != report.vm);
                    peer.vms_before_restart.push(report);
                }
            }
            peer.incarnation = Some(hb.incarnation);
            peer.seq = hb.seq;
            peer.seq_advanced_at = Some(now);
            peer.acked_our_seq = 0;
            seq_now = Some(peer.seq);
        } else if hb.seq > peer.seq || hb.seq > previous_direct || peer.seq_advanced_at.is_none() {
            // A new heartbeat heard directly is always progress, even when a third party's
            // ack from the peer's previous incarnation pushed `seq` higher (a rebooted host
            // looked partitioned for a dead-time).

            peer.seq = peer.seq.max(hb.seq);
            peer.seq_advanced_at = Some(now);
            seq_now = Some(peer.seq);
        }
        let me = self.index;
        if let Some(&(_, acked)) = hb.acks.iter().find(|(i, _)| me == Some(*i as usize))
            && acked > peer.acked_our_seq
        {
            peer.acked_our_seq = acked;
            peer.ack_advanced_at = Some(now);
        }
        peer.datastores_reachable = hb.datastores_reachable;
        replace_if_changed(&mut peer.datastores_lost, &hb.datastores_lost);
        if peer.health != hb.health {
            peer.health = hb.health.clone();
        }
        let reaching = hb.datastores_reachable > 0;
        peer.reaching_since
            .retain(|d, _| reaching && !peer.datastores_lost.contains(d) && self.config.datastores.contains(d));
        if reaching {
            for d in self.config.datastores.iter().filter(|d| !peer.datastores_lost.contains(d)) {
                if !peer.reaching_since.contains_key(d) {
                    peer.reaching_since.insert(d.clone(), now);
                }
            }
        }
        if peer.master != hb.master {
            peer.master = hb.master.clone();
        }
        peer.ha_disabled = hb.ha_disabled;
        peer.ha_off = hb.ha_off;
        if !peer.unarmed.iter().eq(hb.unarmed.iter()) {
            peer.unarmed = hb.unarmed.iter().cloned().collect();
        }
        let reports_changed =
            replace_if_changed(&mut peer.vms, &hb.vms) | replace_if_changed(&mut peer.stopped, &hb.stopped);
        replace_if_changed(&mut peer.operator_stopped, &hb.operator_stopped);
        replace_if_changed(&mut peer.paused, &hb.paused);
        // A VM this host's operator stopped runs again elsewhere (`halo vm start`): protected
        // again, as when it is started here.
        for report in &peer.vms {
            self.operator_stopped.remove(&report.vm);
        }
        if let Some(seq) = seq_now
            && let Some(flat) = self.seqs.get_mut(index)
        {
            *flat = seq;
        }
        // Acks tell us who the sender hears: third-party liveness evidence. Most say nothing
        // new (the peer's heartbeat came directly first): the flat copy answers those.
        for &(i, seq) in &hb.acks {
            let i = i as usize;
            if me == Some(i) || self.seqs.get(i).is_none_or(|known| seq <= *known) {
                continue;
            }
            if let Some(host) = self.config.hosts.get(i)
                && let Some(other) = self.peers.get_mut(&host.name)
                && seq > other.seq
            {
                other.seq = seq;
                other.seq_advanced_at = Some(now);
                self.seqs[i] = seq;
            }
        }
        if let Some((_, epoch)) = &hb.master {
            self.max_epoch = self.max_epoch.max(*epoch);
        }
        // Followers adopt the maintenance set of the master they follow.
        if hb.master.as_ref().is_some_and(|(m, _)| *m == hb.from)
            && self.master.is_none()
            && !self.maintenance.iter().eq(hb.maintenance.iter())
        {
            self.maintenance = hb.maintenance.iter().cloned().collect();
        }
        // Claims not run yet that the sender knows of and this node does not (a newer
        // generation than any it knows of the VM): carried on when this node is master.
        for claim in &hb.claims {
            let known = self.generations.get(&claim.vm).copied().unwrap_or(0);
            let seen = self.claims_seen.get(&claim.vm).map_or(0, |(_, g, _)| *g);
            if claim.generation > known
                && claim.generation > seen
                && self.config.vm(&claim.vm).is_some()
                && (claim.host == self.name || self.peers.contains_key(&claim.host))
            {
                self.claims_seen.insert(claim.vm.clone(), (claim.host.clone(), claim.generation, now));
                self.note_claim(&claim.vm, claim.generation, &claim.host);
            }
        }
        for (host, report) in &hb.vanished {
            if self.config.vm(&report.vm).is_some() && (*host == self.name || self.peers.contains_key(host)) {
                let known = self.generations.get(&report.vm).copied().unwrap_or(0);
                if report.generation >= known {
                    self.vanished.insert(report.vm.clone(), (host.clone(), report.generation));
                }
            }
        }
        // Generations only grow, so an unchanged list teaches nothing new; a claim learned
        // since is checked against every list.
        if (reports_changed || !self.claims_seen.is_empty())
            && let Some(peer) = self.peers.get(&hb.from)
        {
            for report in peer.vms.iter().chain(peer.stopped.iter()) {
                note_generation(&mut self.generations, &report.vm, report.generation);
                if self.claims_seen.get(&report.vm).is_some_and(|(_, g, _)| report.generation >= *g) {
                    self.claims_seen.remove(&report.vm);
                }
            }
        }
        self.note_vanished(&hb.from);
        self.prune_stopped();
    }

    /// VMs a restarted peer no longer reports once it had time to list them: three heartbeats
    /// of its new incarnation received directly (time alone is not enough — a peer cut off
    /// right after its first heartbeat never sent a complete list; simulator seed 860).
    /// Forgotten when the VM runs again under a newer generation.
    fn note_vanished(&mut self, sender: &str) {
        let mut found = Vec::new();
        if let Some(peer) = self.peers.get_mut(sender)
            && peer.restart_first_seq.is_some_and(|first| peer.direct_seq >= first + 3)
        {
            for report in std::mem::take(&mut peer.vms_before_restart) {
                if !peer.vms.iter().any(|r| r.vm == report.vm) {
                    found.push((report.vm, (sender.to_string(), report.generation)));
                }
            }
            peer.restart_first_seq = None;
        }
        self.vanished.extend(found);
        if self.vanished.is_empty() {
            return; // the common case: nothing to prune, no per-heartbeat scan of every VM
        }
        let generations = &self.generations;
        // Reported running under the vanished generation or a later one. An older report is
        // a silent peer's stale list (seed 1531: an isolated host's last heartbeat still
        // listed VMs that had since been restarted elsewhere and lost again). Only the
        // vanished VMs are looked up (few), not every VM of every peer.
        let mut running: BTreeMap<&str, u64> = BTreeMap::new();
        for report in self.peers.values().flat_map(|p| p.vms.iter()) {
            if let Some((vm, _)) = self.vanished.get_key_value(report.vm.as_str()) {
                let g = running.entry(vm.as_str()).or_insert(report.generation);
                *g = (*g).max(report.generation);
            }
        }
        let running: BTreeMap<String, u64> = running.into_iter().map(|(vm, g)| (vm.to_string(), g)).collect();
        self.vanished.retain(|vm, (_, g)| {
            generations.get(vm).is_none_or(|k| k <= g) && running.get(vm.as_str()).is_none_or(|r| r < g)
        });
        for vm in self.local_vms.keys() {
            self.vanished.remove(vm);
        }
    }

    fn note_generation(&mut self, vm: &str, generation: u64) {
        note_generation(&mut self.generations, vm, generation);
    }

    /// Our stop records are dropped once the VM runs again under a newer generation, as a
    /// host reports it (here or a peer). A newer generation only claimed is not enough: its
    /// master may step down before the start, and a master that never learnt of the claim
    /// must still find the VM lost (simulator seed 3634).
    fn prune_stopped(&mut self) {
        if self.stopped.is_empty() {
            return;
        }
        let (peers, local) = (&self.peers, &self.local_vms);
        let runs_newer = |r: &VmReport| {
            local.get(&r.vm).is_some_and(|&g| g > r.generation)
                || peers.values().any(|p| p.vms.iter().any(|v| v.vm == r.vm && v.generation > r.generation))
        };
        self.stopped.retain(|r| !runs_newer(r));
    }

    /// Peers whose sequence advanced within `window`.
    fn live_peers(&self, window: Millis) -> impl Iterator<Item = (&String, &Peer)> {
        self.peers.iter().filter(move |(_, p)| p.seq_advanced_at.is_some_and(|at| self.now.saturating_sub(at) < window))
    }

    /// Remembers the newest claim learnt of `vm`.
    fn note_claim(&mut self, vm: &str, generation: u64, host: &str) {
        if self.claimed.get(vm).is_none_or(|(g, _, _)| *g < generation) {
            self.claimed.insert(vm.to_string(), (generation, host.to_string(), self.now));
        }
    }

    /// Whether `vm` is paused on `host` (held after a gap, or by an I/O error): not moved.
    fn paused_on(&self, vm: &str, host: &str) -> bool {
        if host == self.name {
            return self.held.contains_key(vm) || self.io_paused.contains(vm);
        }
        self.peers.get(host).is_some_and(|p| p.paused.iter().any(|v| v == vm))
    }

    /// The deterministic election: among this host and the peers heard within the election
    /// timeout, the one reaching the most datastores, then the smallest name.
    fn elect(&mut self) {
        if self.resuming() {
            return; // after a gap: hear the peers again before electing anyone (`resume`)
        }
        let window = self.config.timeouts.election_timeout_ms;
        if self.now.saturating_sub(self.started_at) < window && self.master_view.is_none() {
            // Just started: listen for a while before anyone is elected.
            return;
        }
        let me = (self.datastores_reachable(), std::cmp::Reverse(self.name.as_str()));
        let best = self
            .live_peers(window)
            .filter(|(_, p)| !p.ha_disabled)
            .map(|(n, p)| (p.datastores_reachable, std::cmp::Reverse(n.as_str())))
            .chain(std::iter::once(me))
            .max()
            .map(|(_, std::cmp::Reverse(n))| n.to_string());
        let Some(winner) = best else { return };
        if winner == self.name {
            if self.master.is_none() {
                self.max_epoch += 1;
                let epoch = self.max_epoch;
                self.master = Some(MasterState::new(epoch, self.now));
                self.master_view = Some((self.name.clone(), epoch));
                let members = 1 + self.live_peers(window).count();
                self.record(
                    Severity::Info,
                    EventKind::MasterElected,
                    format!("{} is master (epoch {epoch}, {members} host(s) in its partition)", self.name),
                    None,
                );
            }
        } else {
            if self.master.take().is_some() {
                self.record(
                    Severity::Info,
                    EventKind::MasterSteppedDown,
                    format!("{} follows {winner} now", self.name),
                    None,
                );
                for peer in self.peers.values_mut() {
                    peer.verdict = None;
                    peer.datastores.clear();
                }
            }
            let epoch = self.peers.get(&winner).and_then(|p| p.master.as_ref()).map_or(0, |(_, e)| *e);
            self.master_view = Some((winner, epoch));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::policies::BuiltinPolicies;

    /// The index of `host-N` in the test clusters' host list (`config::tests::cluster`).
    pub(crate) fn index_of(host: &str) -> u32 {
        host.strip_prefix("host-")
            .and_then(|n| n.parse::<u32>().ok())
            .and_then(|n| n.checked_sub(1))
            .unwrap_or_else(|| panic!("test acks name hosts host-1, host-2, ...: {host}"))
    }

    /// A heartbeat from `from` on network A with sequence `seq`, acknowledging `acks`.
    pub(crate) fn beat(from: &str, seq: u64, acks: &[(&str, u64)]) -> Input {
        beat_with(from, seq, acks, vec![])
    }

    pub(crate) fn beat_with(from: &str, seq: u64, acks: &[(&str, u64)], vms: Vec<VmReport>) -> Input {
        Input::Heartbeat {
            network: "A".into(),
            heartbeat: Arc::new(Heartbeat {
                from: from.into(),
                seq,
                incarnation: 0,
                master: None,
                datastores_reachable: 1,
                datastores_lost: vec![],
                health: Default::default(),
                vms,
                operator_stopped: vec![],
                acks: acks.iter().map(|(h, s)| (index_of(h), *s)).collect(),
                maintenance: vec![],
                ha_disabled: false,
                ha_off: false,
                unarmed: vec![],
                stopped: vec![],
                vanished: vec![],
                claims: vec![],
                paused: vec![],
            }),
        }
    }

    /// Ticks every 100 ms from `from` to `to` and returns the first action matching `want`.
    pub(crate) fn tick_until(
        node: &mut Node,
        from: Millis,
        to: Millis,
        mut want: impl FnMut(&Action) -> bool,
    ) -> Option<(Millis, Action)> {
        let mut now = from;
        while now <= to {
            for action in node.handle(now, Input::Tick, &mut BuiltinPolicies) {
                if want(&action) {
                    return Some((now, action));
                }
            }
            now += 100;
        }
        None
    }
}

#[cfg(test)]
mod config_change_tests {
    use super::tests::beat;
    use super::*;
    use crate::config::tests::cluster;
    use crate::policies::BuiltinPolicies;

    fn acked(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .find_map(|a| match a {
                Action::SendHeartbeat { heartbeat, .. } => {
                    Some(heartbeat.acks.iter().map(|(i, _)| format!("host-{}", i + 1)).collect())
                }
                _ => None,
            })
            .unwrap_or_default()
    }

    #[test]
    fn a_host_added_by_a_config_change_is_heard_and_a_removed_one_forgotten() {
        let mut node = Node::new("host-1", cluster(3, 2), 0);
        let mut p = BuiltinPolicies;
        node.handle(0, beat("host-4", 1, &[]), &mut p);
        let actions = node.handle(1_000, Input::Tick, &mut p);
        assert!(!acked(&actions).contains(&"host-4".to_string()), "not a member yet");

        let actions = node.handle(1_100, Input::ConfigChanged(Box::new(cluster(4, 2))), &mut p);
        assert!(actions.iter().any(|a| matches!(a, Action::Record(e) if e.kind == "config-changed")));
        node.handle(1_200, beat("host-4", 2, &[]), &mut p);
        let actions = node.handle(2_000, Input::Tick, &mut p);
        assert!(acked(&actions).contains(&"host-4".to_string()), "heard now: {:?}", acked(&actions));

        node.handle(2_100, Input::ConfigChanged(Box::new(cluster(3, 2))), &mut p);
        let actions = node.handle(3_000, Input::Tick, &mut p);
        assert!(!acked(&actions).contains(&"host-4".to_string()), "removed: forgotten");
        assert_eq!(node.config().hosts.len(), 3);
    }
}

#[cfg(test)]
mod election_tests {
    use proptest::prelude::*;

    use super::{Action, Input, Node, PingTarget};
    use crate::config::Timeouts;
    use crate::config::tests::cluster;
    use crate::policies::BuiltinPolicies;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Election convergence: hosts that all hear each other, started at different moments
        /// and reaching their datastore or not, end up following one master, and exactly one
        /// of them is master: the one reaching the most datastores, then the smallest name.
        #[test]
        fn hosts_that_hear_each_other_follow_one_master(
            hosts in 2usize..7,
            starts in proptest::collection::vec(0u64..3_000, 7),
            datastore in proptest::collection::vec(any::<bool>(), 7),
        ) {
            let mut config = cluster(hosts, 0);
            config.timeouts = Timeouts::default();
            let names: Vec<String> = config.hosts.iter().map(|h| h.name.clone()).collect();
            let mut nodes: Vec<Node> = names.iter().map(|n| Node::new(n, config.clone(), 0)).collect();
            let mut p = BuiltinPolicies;
            // What is sent in one round of 50 ms arrives in the next; a host not started yet
            // hears nothing.
            let mut mail: Vec<(usize, Input)> = Vec::new();
            for now in (0..12_000u64).step_by(50) {
                let delivered = std::mem::take(&mut mail);
                for (i, node) in nodes.iter_mut().enumerate() {
                    if now < starts[i] {
                        continue;
                    }
                    let mut inputs = vec![Input::Tick];
                    inputs.extend(delivered.iter().filter(|(to, _)| *to == i).map(|(_, input)| input.clone()));
                    for input in inputs {
                        for action in node.handle(now, input, &mut p) {
                            match action {
                                Action::SendHeartbeat { network, heartbeat } => {
                                    let network: std::sync::Arc<str> = network.into();
                                    for to in (0..names.len()).filter(|to| *to != i) {
                                        let network = network.clone();
                                        mail.push((to, Input::Heartbeat { network, heartbeat: heartbeat.clone() }));
                                    }
                                }
                                Action::WriteDatastore { datastore: ds, .. } => {
                                    mail.push((i, Input::DatastoreWritten { datastore: ds, ok: datastore[i] }));
                                }
                                Action::Ping { target } => {
                                    let answered = matches!(target, PingTarget::Host(_));
                                    mail.push((i, Input::PingResult { target, answered }));
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
            let masters: Vec<&str> = nodes.iter().filter(|n| n.is_master()).map(|n| n.name()).collect();
            prop_assert_eq!(masters.len(), 1, "exactly one master: {:?}", masters);
            let followed: Vec<Option<&str>> = nodes.iter().map(|n| n.master().map(|(m, _)| m.as_str())).collect();
            prop_assert!(followed.iter().all(|m| *m == Some(masters[0])), "all follow {}: {:?}", masters[0], followed);
            let best = names
                .iter()
                .enumerate()
                .max_by_key(|(i, n)| (datastore[*i], std::cmp::Reverse((*n).clone())))
                .map(|(_, n)| n.as_str());
            prop_assert_eq!(Some(masters[0]), best, "the host reaching a datastore, then the smallest name");
        }
    }
}
