//! The simulated world and the invariant checks.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use halo_core::capacity::FailoverPlan;
use halo_core::drivers::{
    DatastoreDriver, EventSink, FenceDriver, HeartbeatSender, HypervisorDriver, PingDriver, carry_out,
};
use halo_core::node::PingTarget;
use halo_core::{
    Action, Claim, ClaimOutcome, ClusterConfig, Command, DatastoreRecord, Event, EventKind, Heartbeat, Input, Millis,
    Node, Policies, Severity, StopReason, VmState,
};
use serde::Serialize;

use crate::Rng;
use crate::faults::{Fault, FaultKind, FenceDevice, Schedule};

/// Tunables of a run.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Seed.
    pub seed: u64,
    /// Run length.
    pub duration: Millis,
    /// Network delay, ms (each message: 1..=this).
    pub max_delay: Millis,
    /// Datastore operation latency, ms.
    pub datastore_latency: Millis,
    /// VM start time, ms.
    pub vm_start: Millis,
    /// Keep Info events in the timeline.
    pub verbose: bool,
    /// When to ask the master for its failover plan, with a label (for the demo).
    pub plan_snapshots: Vec<(Millis, String)>,
    /// Every host has a watchdog (the default, as the core assumes): a host whose agent
    /// stops feeding it for the fence timeout (crashed, paused, or the host frozen) is reset.
    /// Off models a site without one (the lab with `--no-watchdog`).
    pub watchdog: bool,
}

impl SimOptions {
    /// Defaults for a seed and a length.
    pub fn new(seed: u64, duration: Millis) -> Self {
        Self {
            seed,
            duration,
            max_delay: 5,
            datastore_latency: 3,
            vm_start: 500,
            verbose: false,
            plan_snapshots: Vec::new(),
            watchdog: true,
        }
    }
}

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineEntry {
    /// Simulated time.
    pub at: Millis,
    /// Who: a host, or `sim` for faults and invariant checks.
    pub source: String,
    /// Severity.
    pub severity: Severity,
    /// What it is: a host's event, or the simulator's own.
    pub kind: TimelineKind,
    /// Message.
    pub message: String,
    /// The signals behind a verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// What a timeline entry is; shown (and serialized) by its wire name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineKind {
    /// An event a host's core recorded.
    Event(EventKind),
    /// A fault began (`fault-<family>`).
    Fault(&'static str),
    /// A fault ended.
    FaultHealed,
    /// A crashed host booted again.
    HostBooted,
    /// A crashed agent was started again.
    AgentRestarted,
    /// A watchdog reset a host.
    Watchdog,
    /// A safety or liveness invariant was broken.
    InvariantViolated,
}

impl std::fmt::Display for TimelineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TimelineKind::Event(kind) => f.pad(kind.as_str()),
            TimelineKind::Fault(family) => f.pad(&format!("fault-{family}")),
            TimelineKind::FaultHealed => f.pad("fault-healed"),
            TimelineKind::HostBooted => f.pad("host-booted"),
            TimelineKind::AgentRestarted => f.pad("agent-restarted"),
            TimelineKind::Watchdog => f.pad("watchdog"),
            TimelineKind::InvariantViolated => f.pad("invariant-violated"),
        }
    }
}

impl Serialize for TimelineKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl From<EventKind> for TimelineKind {
    fn from(kind: EventKind) -> Self {
        TimelineKind::Event(kind)
    }
}

impl PartialEq<EventKind> for TimelineKind {
    fn eq(&self, other: &EventKind) -> bool {
        *self == TimelineKind::Event(*other)
    }
}

/// The master's failover plan at one moment of a run.
#[derive(Debug, Clone, Serialize)]
pub struct PlanSnapshot {
    /// Simulated time.
    pub at: Millis,
    /// What the moment is (given in [`SimOptions::plan_snapshots`]).
    pub label: String,
    /// The master asked (the one with the highest epoch), if there was one.
    pub master: Option<String>,
    /// Its plan.
    pub plan: Option<FailoverPlan>,
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Seed.
    pub seed: u64,
    /// The faults injected.
    pub schedule: Schedule,
    /// Safety invariant violations (1 never twice, 2 proof before restart, 4 never evict).
    pub violations: Vec<String>,
    /// Liveness invariant violations (3: every protected VM runs again when capacity exists).
    pub liveness_violations: Vec<String>,
    /// Every event.
    pub timeline: Vec<TimelineEntry>,
    /// Host crash → VM running elsewhere, per restarted VM, ms.
    pub failover_latencies: Vec<Millis>,
    /// Events processed.
    pub steps: u64,
    /// The failover plans asked for in [`SimOptions::plan_snapshots`].
    pub plans: Vec<PlanSnapshot>,
    /// Hosts in the cluster.
    pub hosts: usize,
    /// VMs in the cluster.
    pub vms: usize,
}

impl Outcome {
    /// The failovers of the run as incidents (`halo_core::incidents`), from every host's events
    /// on the simulator's one clock.
    pub fn incidents(&self) -> Vec<halo_core::incidents::Incident> {
        let seen: Vec<halo_core::incidents::Seen> = self
            .timeline
            .iter()
            .filter_map(|e| match e.kind {
                TimelineKind::Event(kind) => {
                    Some(halo_core::incidents::Seen { at: e.at, kind, message: &e.message, trace: e.trace.as_deref() })
                }
                _ => None,
            })
            .collect();
        halo_core::incidents::incidents(&seen)
    }

    /// The timeline as text, one line per entry: time, source, kind, message (and the
    /// verdict's trace, indented, with `traces`).
    pub fn render(&self, traces: bool) -> String {
        let mut text = String::new();
        for e in &self.timeline {
            let mark = match e.severity {
                Severity::Info => ' ',
                Severity::Warning => '!',
                Severity::Alert => '*',
            };
            text.push_str(&format!(
                "{:>8.1}s {mark} {:<8} {:<22} {}\n",
                e.at as f64 / 1000.0,
                e.source,
                e.kind,
                e.message
            ));
            if traces && let Some(trace) = &e.trace {
                for line in trace.lines() {
                    text.push_str(&format!("{:>42}{line}\n", ""));
                }
            }
        }
        text
    }

    /// Whether every invariant held (safety and liveness).
    pub fn clean(&self) -> bool {
        self.violations.is_empty() && self.liveness_violations.is_empty()
    }
}

#[derive(Debug)]
enum Ev {
    Tick(usize),
    Deliver(usize, u64, Box<Input>),
    VmUp {
        host: usize,
        boot: u64,
        vm: String,
        generation: u64,
        reply: Option<(usize, u64)>,
    },
    VmDown {
        host: usize,
        vm: String,
        reason: StopReason,
    },
    Migrated {
        vm: String,
        from: usize,
        to: usize,
        master: (usize, u64),
    },
    FaultStart(usize),
    FaultEnd(usize),
    AgentRestart(usize, u64),
    Watchdog(usize, u64),
    /// The watchdog of a host whose agent was paused or frozen at (agent epoch, stall start).
    StallWatchdog(usize, u64, Millis),
    Reboot(usize, u64),
    PlanSnapshot(String),
    /// An operator command, to the agent it goes to (retried each second while there is
    /// none that can take it, until `until`).
    Operate {
        command: Command,
        until: Millis,
    },
    /// Host `h`'s catalog task reads the run-time changes of `version` (stale versions are
    /// skipped: it applies only the newest).
    Apply(usize, u64),
    /// A fence device finished: it powered `target` off (or not) and answers the master.
    Fenced {
        master: (usize, u64),
        target: usize,
        power_off: bool,
        result: Result<String, String>,
    },
}

/// What the operator did, as the simulator knows it (its truth, not any node's view): the
/// checker judges the nodes' actions against it.
#[derive(Default)]
struct Operator {
    /// Hosts the operator put into maintenance and has not taken out.
    maintenance: BTreeSet<String>,
    /// The VM whose migration the operator is asking for right now.
    migrating: Option<String>,
    /// VMs the operator stopped through halo.
    stopped: BTreeSet<String>,
    /// VMs the end-of-run liveness check leaves alone: their priority was lowered at some
    /// point, or they were down when HA was switched on again (HA does not start a VM that
    /// was down before it was protected).
    exempt: BTreeSet<String>,
    /// The version of the run-time changes (`Sim::config` holds the newest).
    version: u64,
    /// A VM's priority before the operator changed it (by fault index).
    priority_before: BTreeMap<usize, halo_policy::RestartPriority>,
    /// VMs a master just announced a balancing move of (`balance-move`: "VM: live migration
    /// …"): the migration that follows is balancing's, which `[balance] mode = "auto"` allows.
    balancing: BTreeSet<String>,
}

struct SimHost {
    name: String,
    up: bool,
    boot: u64,
    node: Option<Node>,
    agent_epoch: u64,
    vms: BTreeMap<String, u64>,
    /// VMs paused by the agent (they do not execute).
    paused: BTreeSet<String>,
    /// The whole host is frozen: nothing on it executes or answers.
    frozen: bool,
    /// The agent handles nothing since then (paused, or its host frozen); what arrives waits.
    stalled: Option<Millis>,
    backlog: Vec<Input>,
}

impl SimHost {
    /// Whether `vm` executes here now (not paused, not frozen).
    fn executes(&self, vm: &str) -> bool {
        self.vms.contains_key(vm) && !self.paused.contains(vm) && !self.frozen
    }
}

/// A copy of a VM started outside halo (the `outside` fault).
#[derive(Debug, Clone, Copy)]
struct OutsideCopy {
    /// The copy's host.
    copy: usize,
    /// The host of the copy halo started.
    legit: usize,
    /// When it started.
    since: Millis,
    /// Since when the two hosts hear each other (`None`: they do not now).
    visible_since: Option<Millis>,
    /// Whether the VM was protected when the copy started.
    protected_at_start: bool,
}

#[derive(Default)]
struct Store {
    records: BTreeMap<String, halo_core::DatastoreRecord>,
    claims: BTreeMap<(String, u64), halo_core::Claim>,
    fences: BTreeMap<String, halo_core::FenceRecord>,
    down: bool,
    cut: BTreeSet<String>,
    /// etcd: a record is dropped this long after its host's last write (its lease).
    lease: Option<Millis>,
    /// When each host last wrote its record (for the lease).
    written: BTreeMap<String, Millis>,
}

/// An event in the queue: the earliest first, and among events due at the same time the one
/// pushed first (`seq`), so that a seed replays exactly.
struct Queued {
    at: Millis,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Queued {}

impl Ord for Queued {
    /// Reversed: `BinaryHeap` pops the greatest.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A simulated cluster.
pub struct Sim<'p> {
    opts: SimOptions,
    config: ClusterConfig,
    policies: &'p mut dyn Policies,
    now: Millis,
    seq: u64,
    queue: BinaryHeap<Queued>,
    rng: Rng,
    hosts: Vec<SimHost>,
    index: BTreeMap<String, usize>,
    link_down: BTreeSet<(String, usize)>,
    cuts: BTreeSet<(String, usize, usize)>,
    loss: BTreeMap<String, u64>,
    stores: BTreeMap<String, Store>,
    schedule: Schedule,
    timeline: Vec<TimelineEntry>,
    violations: Vec<String>,
    liveness: Vec<String>,
    /// Why a VM last stopped: by its own host (isolation/fence) or with its host.
    stopped_by_host: BTreeSet<String>,
    lost_at: BTreeMap<String, Millis>,
    latencies: Vec<Millis>,
    crash_counts: BTreeMap<String, u32>,
    /// VMs that crashed and have not run since, with the host they crashed on: if that host
    /// dies too, they count as lost with it (seed 10570: a VM crashed while its host's agent
    /// was down, then the watchdog reset the host; restarting it elsewhere was right).
    crashed_on: BTreeMap<String, usize>,
    last_host: BTreeMap<String, usize>,
    steps: u64,
    plans: Vec<PlanSnapshot>,
    operator: Operator,
    /// Copies of VMs started outside halo, per VM.
    outside: BTreeMap<String, OutsideCopy>,
    /// Fences the master called off (master, target): the device does nothing more.
    fence_cancelled: BTreeSet<(usize, usize)>,
    /// Hosts a lying device said were off (their VMs count as lost for the proof rule: halo
    /// had a device's word, the one kind of proof a lying device can fake).
    lied_off: BTreeSet<usize>,
}

impl<'p> Sim<'p> {
    /// A cluster from `config` with its VMs spread over the hosts in order (VM i on host
    /// i mod n), under `schedule`.
    pub fn new(config: ClusterConfig, schedule: Schedule, opts: SimOptions, policies: &'p mut dyn Policies) -> Self {
        let hosts: Vec<SimHost> = config
            .hosts
            .iter()
            .map(|h| SimHost {
                name: h.name.clone(),
                up: true,
                boot: 1,
                node: Some(Node::new(&h.name, config.clone(), 0)),
                agent_epoch: 1,
                vms: BTreeMap::new(),
                paused: BTreeSet::new(),
                frozen: false,
                stalled: None,
                backlog: Vec::new(),
            })
            .collect();
        let index = hosts.iter().enumerate().map(|(i, h)| (h.name.clone(), i)).collect();
        let stores = config
            .datastores
            .iter()
            .map(|d| {
                let lease = (d == crate::scenario::ETCD_STORE).then_some(crate::scenario::ETCD_LEASE_MS);
                (d.clone(), Store { lease, ..Store::default() })
            })
            .collect();
        let rng = Rng::new(opts.seed.wrapping_mul(31).wrapping_add(7));
        let mut sim = Self {
            opts,
            config,
            policies,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            rng,
            hosts,
            index,
            link_down: BTreeSet::new(),
            cuts: BTreeSet::new(),
            loss: BTreeMap::new(),
            stores,
            schedule,
            timeline: Vec::new(),
            violations: Vec::new(),
            liveness: Vec::new(),
            stopped_by_host: BTreeSet::new(),
            lost_at: BTreeMap::new(),
            latencies: Vec::new(),
            crash_counts: BTreeMap::new(),
            crashed_on: BTreeMap::new(),
            last_host: BTreeMap::new(),
            steps: 0,
            plans: Vec::new(),
            operator: Operator::default(),
            outside: BTreeMap::new(),
            fence_cancelled: BTreeSet::new(),
            lied_off: BTreeSet::new(),
        };
        // VMs start where they belong, generation 1; hosts with room only.
        let mut free: Vec<u64> = sim.config.hosts.iter().map(|h| h.memory_mib).collect();
        let n = sim.hosts.len();
        for (i, vm) in sim.config.vms.clone().iter().enumerate() {
            if let Some(h) = (0..n).map(|k| (i + k) % n).find(|&h| free[h] >= vm.memory_mib) {
                free[h] -= vm.memory_mib;
                sim.hosts[h].vms.insert(vm.name.clone(), 1);
                sim.last_host.insert(vm.name.clone(), h);
                sim.deliver(h, 0, Input::VmState { vm: vm.name.clone(), generation: 1, state: VmState::Running });
            }
        }
        for h in 0..n {
            // Spread the ticks so hosts are not in lock-step.
            let offset = sim.rng.below(100);
            sim.push(offset, Ev::Tick(h));
        }
        for (at, label) in sim.opts.plan_snapshots.clone() {
            sim.push(at, Ev::PlanSnapshot(label));
        }
        for i in 0..sim.schedule.faults.len() {
            let at = sim.schedule.faults[i].at;
            sim.push(at, Ev::FaultStart(i));
        }
        sim
    }

    fn push(&mut self, at: Millis, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued { at, seq: self.seq, ev });
    }

    fn deliver(&mut self, host: usize, delay: Millis, input: Input) {
        let agent = self.hosts[host].agent_epoch;
        self.push(self.now + delay, Ev::Deliver(host, agent, Box::new(input)));
    }

    fn note(&mut self, severity: Severity, kind: TimelineKind, message: String) {
        self.timeline.push(TimelineEntry { at: self.now, source: "sim".into(), severity, kind, message, trace: None });
    }

    fn violation(&mut self, what: String) {
        let message = format!("INVARIANT VIOLATED (seed {}): {what}", self.opts.seed);
        self.note(Severity::Alert, TimelineKind::InvariantViolated, message.clone());
        self.violations.push(message);
    }

    /// Runs to the end and checks the end-of-run invariants.
    pub fn run(mut self) -> Outcome {
        while let Some(Queued { at, ev, .. }) = self.queue.pop() {
            if at > self.opts.duration {
                break;
            }
            self.now = at;
            self.steps += 1;
            self.step(ev);
        }
        self.check_eventually_running();
        Outcome {
            seed: self.opts.seed,
            schedule: self.schedule,
            violations: self.violations,
            liveness_violations: self.liveness,
            timeline: self.timeline,
            failover_latencies: self.latencies,
            steps: self.steps,
            plans: self.plans,
            hosts: self.hosts.len(),
            vms: self.config.vms.len(),
        }
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Tick(h) => {
                if self.hosts[h].node.is_some() && self.hosts[h].stalled.is_none() {
                    self.feed(h, Input::Tick);
                }
                self.push(self.now + 100, Ev::Tick(h));
            }
            Ev::Deliver(h, agent, input) => {
                if self.hosts[h].agent_epoch == agent && self.hosts[h].node.is_some() {
                    if self.hosts[h].stalled.is_some() {
                        self.hosts[h].backlog.push(*input);
                    } else {
                        self.feed(h, *input);
                    }
                }
            }
            Ev::VmUp { host, boot, vm, generation, reply } => self.vm_up(host, boot, vm, generation, reply),
            Ev::VmDown { host, vm, reason } => {
                let was_paused = self.hosts[host].paused.remove(&vm);
                self.forget_outside_copy(&vm, host);
                if let Some(generation) = self.hosts[host].vms.remove(&vm) {
                    let elsewhere = self.hosts.iter().any(|other| other.executes(&vm));
                    if matches!(reason, StopReason::Isolation | StopReason::Fence | StopReason::Storage) && !elsewhere {
                        self.stopped_by_host.insert(vm.clone());
                        self.lost_at.entry(vm.clone()).or_insert(self.now);
                    }
                    // Stopped by the operator and running nowhere: a master that never learnt
                    // of the stop (the host was cut off, or died before telling) restarts it
                    // against the operator's wish, but never beside a running copy (simulator
                    // seeds 11637, 15175; docs/simulator.md, known gaps).
                    if reason == StopReason::Operator && !elsewhere {
                        self.stopped_by_host.insert(vm.clone());
                    }
                    let state = if was_paused && reason != StopReason::Operator {
                        VmState::StoppedWhilePaused(reason)
                    } else {
                        VmState::StoppedByHalo(reason)
                    };
                    self.deliver(host, 0, Input::VmState { vm, generation, state });
                }
            }
            Ev::Migrated { vm, from, to, master } => {
                let ok = self.hosts[from].up && self.hosts[to].up && self.hosts[from].vms.contains_key(&vm);
                let result = if ok {
                    let generation = self.hosts[from].vms.remove(&vm).unwrap_or(1);
                    self.hosts[to].vms.insert(vm.clone(), generation);
                    // A paused domain arrives paused (libvirt keeps its state).
                    if self.hosts[from].paused.remove(&vm) {
                        self.hosts[to].paused.insert(vm.clone());
                    }
                    // Either copy of a VM started outside halo may be moved (seed 14350).
                    if let Some(entry) = self.outside.get_mut(&vm) {
                        if entry.copy == from {
                            entry.copy = to;
                        } else if entry.legit == from {
                            entry.legit = to;
                        }
                    }
                    self.last_host.insert(vm.clone(), to);
                    self.deliver(from, 0, Input::VmState { vm: vm.clone(), generation, state: VmState::MigratedAway });
                    self.deliver(to, 0, Input::VmState { vm: vm.clone(), generation, state: VmState::Running });
                    Ok(())
                } else {
                    Err("source or destination went away".to_string())
                };
                let (from_name, to_name) = (self.hosts[from].name.clone(), self.hosts[to].name.clone());
                if self.hosts[master.0].agent_epoch == master.1 {
                    self.deliver(master.0, 1, Input::MigrateResult { vm, from: from_name, to: to_name, result });
                }
            }
            Ev::Reboot(h, boot) => {
                if self.hosts[h].boot == boot && !self.hosts[h].up {
                    self.boot_host(h);
                    self.note(
                        Severity::Info,
                        TimelineKind::HostBooted,
                        format!("{} booted again (after a watchdog reset or a fence)", self.hosts[h].name),
                    );
                }
            }
            Ev::PlanSnapshot(label) => self.snapshot_plan(label),
            Ev::Fenced { master, target, power_off, result } => {
                if self.fence_cancelled.remove(&(master.0, target)) {
                    return;
                }
                let name = self.hosts[target].name.clone();
                if power_off && self.hosts[target].up {
                    self.crash_host(target);
                    self.note(
                        Severity::Warning,
                        TimelineKind::Fault("fenced"),
                        format!("{name} powered off by its fence device"),
                    );
                    let boot = self.hosts[target].boot;
                    self.push(self.now + 10_000, Ev::Reboot(target, boot));
                } else if result.is_ok() && !power_off {
                    self.lied_off.insert(target);
                }
                if self.hosts[master.0].agent_epoch == master.1 {
                    self.deliver(master.0, 0, Input::FenceResult { host: name, result });
                }
            }
            Ev::Operate { command, until } => self.operate(command, until),
            Ev::Apply(h, version) => {
                if version != self.operator.version || !self.hosts[h].up || self.hosts[h].node.is_none() {
                    return; // a newer change follows, or the agent starts with the newest
                }
                let reads_a_datastore = self.config.datastores.iter().any(|d| self.store_reachable(d, h));
                if reads_a_datastore {
                    self.deliver(h, 0, Input::ConfigChanged(Box::new(self.config.clone())));
                } else {
                    self.push(self.now + 1_000, Ev::Apply(h, version));
                }
            }
            Ev::FaultStart(i) => {
                self.fault(i, true);
                self.update_outside_visibility();
            }
            Ev::FaultEnd(i) => {
                self.fault(i, false);
                self.update_outside_visibility();
            }
            Ev::AgentRestart(h, epoch) => {
                if self.hosts[h].up && self.hosts[h].agent_epoch == epoch && self.hosts[h].node.is_none() {
                    self.start_agent(h);
                    self.note(
                        Severity::Info,
                        TimelineKind::AgentRestarted,
                        format!("the agent on {} is back", self.hosts[h].name),
                    );
                }
            }
            Ev::StallWatchdog(h, epoch, since) => {
                if self.hosts[h].up && self.hosts[h].agent_epoch == epoch && self.hosts[h].stalled == Some(since) {
                    self.watchdog_reset(h, "not fed while stalled");
                }
            }
            Ev::Watchdog(h, epoch) => {
                if self.hosts[h].up && self.hosts[h].agent_epoch == epoch && self.hosts[h].node.is_none() {
                    self.watchdog_reset(h, "the agent stayed down");
                }
            }
        }
    }

    /// The watchdog resets host `h` (`why` it was not fed); it boots 5 s later, empty.
    fn watchdog_reset(&mut self, h: usize, why: &str) {
        let message = format!("{}: {why}; the watchdog resets the host", self.hosts[h].name);
        self.note(Severity::Alert, TimelineKind::Watchdog, message);
        self.crash_host(h);
        let boot = self.hosts[h].boot;
        self.push(self.now + 5_000, Ev::Reboot(h, boot));
    }

    /// Asks the master with the highest epoch for its failover plan.
    fn snapshot_plan(&mut self, label: String) {
        let master = (0..self.hosts.len())
            .filter(|&h| self.hosts[h].node.as_ref().is_some_and(Node::is_master))
            .max_by_key(|&h| self.hosts[h].node.as_ref().and_then(|n| n.master().map(|(_, e)| *e)));
        let (name, plan) = match master {
            Some(h) => {
                let name = self.hosts[h].name.clone();
                let plan = self.hosts[h].node.as_mut().and_then(|n| n.failover_plan(self.policies));
                (Some(name), plan)
            }
            None => (None, None),
        };
        self.plans.push(PlanSnapshot { at: self.now, label, master: name, plan });
    }

    fn start_agent(&mut self, h: usize) {
        let host = &mut self.hosts[h];
        host.agent_epoch += 1;
        host.stalled = None;
        host.backlog.clear();
        host.node = Some(Node::new(&host.name, self.config.clone(), self.now));
        // A VM paused by the hold of the agent before carries halo's mark: reported held.
        let vms: Vec<(String, u64, VmState)> = host
            .vms
            .iter()
            .map(|(v, g)| (v.clone(), *g, if host.paused.contains(v) { VmState::Held } else { VmState::Running }))
            .collect();
        for (vm, generation, state) in vms {
            self.deliver(h, 0, Input::VmState { vm, generation, state });
        }
    }

    fn crash_host(&mut self, h: usize) {
        let mut lost: Vec<String> = self.hosts[h].vms.keys().cloned().collect();
        lost.extend(self.crashed_on.iter().filter(|(_, on)| **on == h).map(|(vm, _)| vm.clone()));
        for vm in lost {
            self.lost_at.entry(vm).or_insert(self.now);
        }
        // A copy started outside halo here dies with the host (simulator seed 2718: its end
        // took away the copy halo later migrated here).
        self.outside.retain(|_, o| o.copy != h);
        let host = &mut self.hosts[h];
        host.up = false;
        host.node = None;
        host.vms.clear();
        host.paused.clear();
        host.frozen = false;
        host.stalled = None;
        host.backlog.clear();
        host.boot += 1;
        host.agent_epoch += 1;
    }

    fn boot_host(&mut self, h: usize) {
        let host = &mut self.hosts[h];
        if host.up {
            return;
        }
        host.up = true;
        self.start_agent(h);
    }

    /// Feeds a host's node and carries out its actions.
    fn feed(&mut self, h: usize, input: Input) {
        let Some(node) = self.hosts[h].node.as_mut() else { return };
        let actions = node.handle(self.now, input, self.policies);
        for action in actions {
            self.act(h, action);
        }
    }

    fn path(&self, network: &str, from: usize, to: usize) -> bool {
        self.hosts[from].up
            && self.hosts[to].up
            && !self.hosts[from].frozen
            && !self.hosts[to].frozen
            && !self.link_is_down(network, from)
            && !self.link_is_down(network, to)
            && !self.cuts.iter().any(|(n, f, t)| *f == from && *t == to && n == network)
    }

    /// Whether `host`'s link to `network` is down (no allocation: this runs for every
    /// heartbeat to every host).
    fn link_is_down(&self, network: &str, host: usize) -> bool {
        self.link_down.iter().any(|(n, h)| *h == host && n == network)
    }

    /// Whether `a` and `b` hear each other (both ways, on some network).
    fn connected(&self, a: usize, b: usize) -> bool {
        self.any_path(a, b) && self.any_path(b, a)
    }

    fn any_path(&self, from: usize, to: usize) -> bool {
        self.config.networks.iter().any(|n| self.path(n, from, to))
    }

    fn store_reachable(&self, datastore: &str, h: usize) -> bool {
        self.stores.get(datastore).is_some_and(|s| !s.down && !s.cut.contains(&self.hosts[h].name))
            && self.hosts[h].up
            && !self.hosts[h].frozen
    }

    fn act(&mut self, h: usize, action: Action) {
        carry_out(action, &mut HostDrivers { sim: self, h });
    }

    fn record(&mut self, event: Event) {
        if event.severity == Severity::Info
            && !self.opts.verbose
            && !matches!(
                event.kind,
                EventKind::VmRestarted
                    | EventKind::RestartWave
                    | EventKind::MasterElected
                    | EventKind::FailoverPlan
                    | EventKind::VmMigrated
                    | EventKind::HostEvacuated
                    | EventKind::MaintenanceEntered
            )
        {
            return;
        }
        self.timeline.push(TimelineEntry {
            at: event.at,
            source: event.node,
            severity: event.severity,
            kind: TimelineKind::Event(event.kind),
            message: event.message,
            trace: event.trace,
        });
    }

    fn vm_up(&mut self, host: usize, boot: u64, vm: String, generation: u64, reply: Option<(usize, u64)>) {
        let host_name = self.hosts[host].name.clone();
        let result = if !self.hosts[host].up || self.hosts[host].boot != boot {
            Err(format!("{host_name} went down"))
        } else {
            // Invariant 1: never two runners.
            if let Some(other) = self.hosts.iter().find(|h| h.name != host_name && h.executes(&vm)) {
                let other = other.name.clone();
                self.violation(format!("{vm} started on {host_name} while it runs on {other}"));
            }
            // Invariant 2: a restart elsewhere needs proof of death or a recorded stop.
            let elsewhere = self.last_host.get(&vm).is_some_and(|&last| last != host);
            let lied = self.last_host.get(&vm).is_some_and(|last| self.lied_off.contains(last));
            // A VM that crashed runs nowhere: its host may record it for the master when it
            // could not restart it itself (cut off, HA off).
            let crashed = self.crashed_on.contains_key(&vm);
            if elsewhere && !self.lost_at.contains_key(&vm) && !self.stopped_by_host.contains(&vm) && !lied && !crashed
            {
                self.violation(format!(
                    "{vm} restarted on {host_name} without its host being dead or having stopped it"
                ));
            }
            self.hosts[host].vms.insert(vm.clone(), generation);
            self.last_host.insert(vm.clone(), host);
            self.stopped_by_host.remove(&vm);
            self.crashed_on.remove(&vm);
            if let Some(lost) = self.lost_at.remove(&vm) {
                self.latencies.push(self.now - lost);
            }
            self.deliver(host, 0, Input::VmState { vm: vm.clone(), generation, state: VmState::Running });
            Ok(())
        };
        if let Some((master, epoch)) = reply
            && self.hosts[master].agent_epoch == epoch
            && self.any_path(host, master)
        {
            self.deliver(
                master,
                2,
                Input::StartResult {
                    vm,
                    host: host_name,
                    generation,
                    result: result.map_err(halo_core::StartError::Failed),
                },
            );
        }
    }

    fn fault(&mut self, i: usize, start: bool) {
        let Fault { duration, kind, .. } = self.schedule.faults[i].clone();
        if start {
            self.note(Severity::Alert, TimelineKind::Fault(kind.family()), format!("FAULT: {kind}"));
            if !matches!(kind, FaultKind::VmCrash { .. }) {
                self.push(self.now + duration, Ev::FaultEnd(i));
            }
        } else {
            self.note(Severity::Info, TimelineKind::FaultHealed, format!("healed: {kind}"));
        }
        let host = |s: &Self, name: &str| s.index.get(name).copied();
        match kind {
            FaultKind::HostCrash { host: name } => {
                if let Some(h) = host(self, &name) {
                    if start { self.crash_host(h) } else { self.boot_host(h) }
                }
            }
            FaultKind::AgentCrash { host: name } => {
                if let Some(h) = host(self, &name)
                    && start
                    && self.hosts[h].up
                    && self.hosts[h].node.is_some()
                {
                    self.hosts[h].node = None;
                    let epoch = self.hosts[h].agent_epoch;
                    self.push(self.now + duration, Ev::AgentRestart(h, epoch));
                    self.push(self.now + self.config.timeouts.fence_timeout_ms, Ev::Watchdog(h, epoch));
                }
            }
            FaultKind::Isolate { host: name, datastores } => {
                if let Some(h) = host(self, &name) {
                    for n in self.config.networks.clone() {
                        if start {
                            self.link_down.insert((n, h))
                        } else {
                            self.link_down.remove(&(n, h))
                        };
                    }
                    if datastores {
                        for store in self.stores.values_mut() {
                            if start {
                                store.cut.insert(name.clone())
                            } else {
                                store.cut.remove(&name)
                            };
                        }
                    }
                }
            }
            FaultKind::Partition { side } => {
                let side: BTreeSet<usize> = side.iter().filter_map(|n| host(self, n)).collect();
                for n in self.config.networks.clone() {
                    for &a in &side {
                        for b in (0..self.hosts.len()).filter(|b| !side.contains(b)) {
                            for key in [(n.clone(), a, b), (n.clone(), b, a)] {
                                if start {
                                    self.cuts.insert(key)
                                } else {
                                    self.cuts.remove(&key)
                                };
                            }
                        }
                    }
                }
            }
            FaultKind::LinkDown { host: name, network } => {
                if let Some(h) = host(self, &name) {
                    if start {
                        self.link_down.insert((network, h))
                    } else {
                        self.link_down.remove(&(network, h))
                    };
                }
            }
            FaultKind::OneWayCut { network, from, to } => {
                if let (Some(a), Some(b)) = (host(self, &from), host(self, &to)) {
                    if start {
                        self.cuts.insert((network, a, b))
                    } else {
                        self.cuts.remove(&(network, a, b))
                    };
                }
            }
            FaultKind::Loss { network, percent } => {
                if start {
                    self.loss.insert(network, percent)
                } else {
                    self.loss.remove(&network)
                };
            }
            FaultKind::DatastoreDown { datastore } => {
                if let Some(store) = self.stores.get_mut(&datastore) {
                    store.down = start;
                }
            }
            FaultKind::DatastoreCut { host: name, datastore } => {
                if let Some(store) = self.stores.get_mut(&datastore) {
                    if start {
                        store.cut.insert(name)
                    } else {
                        store.cut.remove(&name)
                    };
                }
            }
            FaultKind::AgentPause { host: name } => {
                if let Some(h) = host(self, &name) {
                    if start { self.stall(h) } else { self.resume(h) }
                }
            }
            FaultKind::HostFreeze { host: name } => {
                if let Some(h) = host(self, &name) {
                    if start && self.hosts[h].up {
                        self.hosts[h].frozen = true;
                        // To the others it is dead in every signal: its VMs count as lost.
                        for vm in self.hosts[h].vms.keys().cloned().collect::<Vec<_>>() {
                            self.lost_at.entry(vm).or_insert(self.now);
                        }
                        self.stall(h);
                    } else if !start && self.hosts[h].frozen {
                        self.hosts[h].frozen = false;
                        self.resume(h);
                    }
                }
            }
            FaultKind::Maintenance { host: name } => {
                let command = if start { Command::EnterMaintenance(name) } else { Command::ExitMaintenance(name) };
                // Exiting is retried until the end: a host left in maintenance takes no VMs.
                let until = if start { self.now + duration } else { self.opts.duration };
                self.operate(command, until);
            }
            FaultKind::Migrate { vm, to } => {
                if start {
                    // Drawn to the host it runs on already: the operator migrates it "to the
                    // cluster" instead (the placement policy chooses).
                    let there = self.hosts.iter().any(|h| h.name == to && h.vms.contains_key(&vm));
                    let to = (!there).then_some(to);
                    self.operate(Command::MigrateVm { vm, to }, self.now + duration);
                }
            }
            FaultKind::OperatorStop { vm } => {
                if start {
                    self.operate(Command::StopVm(vm), self.now + duration);
                }
            }
            FaultKind::Priority { vm, priority } => {
                let Some(spec) = self.config.vms.iter_mut().find(|v| v.name == vm) else { return };
                if start {
                    self.operator.priority_before.insert(i, spec.priority);
                    spec.priority = priority;
                    if priority != halo_policy::RestartPriority::Restart {
                        self.operator.exempt.insert(vm);
                    }
                } else if let Some(before) = self.operator.priority_before.remove(&i) {
                    spec.priority = before;
                }
                self.change_config();
            }
            FaultKind::HaOff => {
                self.config.ha.enabled = !start;
                if !start {
                    let down: Vec<String> = self
                        .config
                        .vms
                        .iter()
                        .filter(|v| !self.hosts.iter().any(|h| h.vms.contains_key(&v.name)))
                        .map(|v| v.name.clone())
                        .collect();
                    self.operator.exempt.extend(down);
                }
                self.change_config();
            }
            FaultKind::StartOutside { vm, host: name } => {
                if start {
                    self.start_outside(&vm, &name);
                } else {
                    self.end_outside(&vm);
                }
            }
            FaultKind::VmCrash { vm } => {
                if let Some(h) = self.hosts.iter().position(|x| x.vms.contains_key(&vm)) {
                    self.forget_outside_copy(&vm, h);
                    let generation = self.hosts[h].vms.remove(&vm).unwrap_or(1);
                    *self.crash_counts.entry(vm.clone()).or_default() += 1;
                    self.crashed_on.insert(vm.clone(), h);
                    self.deliver(h, 200, Input::VmState { vm, generation, state: VmState::Crashed });
                }
            }
        }
    }

    /// A copy of `vm` (running on exactly one host) is started on `name` (or the next host up
    /// when that is where it runs) by someone else: the same generation, as from its XML.
    fn start_outside(&mut self, vm: &str, name: &str) {
        let running: Vec<usize> = (0..self.hosts.len()).filter(|&h| self.hosts[h].executes(vm)).collect();
        let ([legit], Some(&asked)) = (running.as_slice(), self.index.get(name)) else {
            self.note(Severity::Info, TimelineKind::FaultHealed, format!("{vm} does not run on one host: no copy"));
            return;
        };
        let usable = |x: &SimHost| x.up && !x.frozen && !x.vms.contains_key(vm);
        let n = self.hosts.len();
        let Some(h) = (0..n).map(|k| (asked + k) % n).find(|&h| h != *legit && usable(&self.hosts[h])) else {
            return;
        };
        let generation = self.hosts[*legit].vms.get(vm).copied().unwrap_or(1);
        self.hosts[h].vms.insert(vm.to_string(), generation);
        let copy = OutsideCopy {
            copy: h,
            legit: *legit,
            since: self.now,
            visible_since: self.connected(h, *legit).then_some(self.now),
            protected_at_start: self.config.vm(vm).is_some_and(|spec| spec.protected()),
        };
        self.outside.insert(vm.to_string(), copy);
        // Its agent hears of it from libvirt, as of any start.
        self.deliver(h, 0, Input::VmState { vm: vm.to_string(), generation, state: VmState::Running });
    }

    /// After a fault began or ended: since when the hosts of each copy started outside halo
    /// and of halo's copy hear each other.
    fn update_outside_visibility(&mut self) {
        let now = self.now;
        let pairs: Vec<(String, bool)> =
            self.outside.iter().map(|(vm, o)| (vm.clone(), self.connected(o.copy, o.legit))).collect();
        for (vm, connected) in pairs {
            if let Some(entry) = self.outside.get_mut(&vm) {
                entry.visible_since = if connected { entry.visible_since.or(Some(now)) } else { None };
            }
        }
    }

    /// The copy of `vm` started outside halo on `host`, if that is where it was, is gone.
    fn forget_outside_copy(&mut self, vm: &str, host: usize) {
        if self.outside.get(vm).is_some_and(|o| o.copy == host) {
            self.outside.remove(vm);
        }
    }

    /// The end of an outside start: halo must have noticed it (an alert since it began) if
    /// both copies still run; then the operator destroys the extra copy.
    fn end_outside(&mut self, vm: &str) {
        let Some(OutsideCopy { copy: h, legit, since, visible_since, protected_at_start }) = self.outside.remove(vm)
        else {
            return;
        };
        // Two hosts on either side of a partition: no master hears both, none can notice
        // (simulator seed 1264: a false positive). After they meet again the master needs a
        // few heartbeats to see both copies and three more intervals to be sure (seed 11930).
        let interval = self.config.timeouts.heartbeat_interval_ms;
        let visible = visible_since.is_some_and(|t| self.now.saturating_sub(t) > 6 * interval + self.opts.max_delay);
        let both = self.hosts[h].executes(vm) && self.hosts[legit].executes(vm) && visible;
        let alerted = self.timeline.iter().any(|e| {
            e.at >= since
                && e.kind == TimelineKind::Event(EventKind::VmDuplicate)
                && e.message.starts_with(&format!("{vm} runs on"))
        });
        // Only protected VMs are halo's business (their protection as configured now).
        // (and were, when the copy started: protected only meanwhile, a master may not have had
        // the three heartbeat intervals it counts before a duplicate is one; seed 14514).
        let protected = protected_at_start && self.config.vm(vm).is_some_and(|spec| spec.protected());
        if both && !alerted && protected {
            let (copy, other) = (self.hosts[h].name.clone(), self.hosts[legit].name.clone());
            self.violation(format!(
                "the copy of {vm} started outside halo on {copy} ran beside {other}'s for {} ms unnoticed",
                self.now - since
            ));
        }
        // The operator destroys the extra copy only while the other still exists: with halo's
        // copy gone meanwhile (its host reset), the copy left is the VM (simulator seed 14990).
        if !self.hosts[legit].vms.contains_key(vm)
            && self.hosts.iter().all(|x| x.name == self.hosts[h].name || !x.vms.contains_key(vm))
        {
            // Paused by a master as the extra copy, it stays paused: resuming it is the
            // operator's call once halo's copy is known gone (resumed at once here, it ran
            // beside halo's restart, seed 1680), and a master elected since does not know it
            // paused it (seed 3300: a known gap, docs/simulator.md) — not counted as down.
            if self.hosts[h].paused.contains(vm) {
                self.operator.exempt.insert(vm.to_string());
            }
            self.note(
                Severity::Info,
                TimelineKind::FaultHealed,
                format!("the copy of {vm} on {} is the only one left: the operator keeps it", self.hosts[h].name),
            );
            return;
        }
        if let Some(generation) = self.hosts[h].vms.remove(vm) {
            self.hosts[h].paused.remove(vm);
            self.deliver(h, 0, Input::VmState { vm: vm.to_string(), generation, state: VmState::StoppedOutside });
        }
    }

    /// Hands an operator command to the agent that takes it (as the API routes it): the
    /// master for maintenance and migrations, the VM's host for a stop. While none can take
    /// it (no master, or it is down or stalled), asked again each second until `until`.
    fn operate(&mut self, command: Command, until: Millis) {
        let able = |x: &SimHost| x.up && x.node.is_some() && x.stalled.is_none();
        let target = match &command {
            Command::StopVm(vm) => self.hosts.iter().position(|x| able(x) && x.executes(vm)),
            _ => self.hosts.iter().position(|x| able(x) && x.node.as_ref().is_some_and(Node::is_master)),
        };
        let Some(h) = target else {
            if self.now + 1_000 <= until {
                self.push(self.now + 1_000, Ev::Operate { command, until });
            }
            return;
        };
        match &command {
            Command::EnterMaintenance(host) => {
                self.operator.maintenance.insert(host.clone());
            }
            Command::ExitMaintenance(host) => {
                self.operator.maintenance.remove(host);
            }
            Command::MigrateVm { vm, .. } => self.operator.migrating = Some(vm.clone()),
            Command::StopVm(vm) => {
                self.operator.stopped.insert(vm.clone());
            }
            Command::StartVm { vm, .. } => {
                self.operator.stopped.remove(vm);
            }
            Command::SetHaEnabled(_)
            | Command::SetHostHaDisabled(_)
            | Command::FenceHost { .. }
            | Command::BalanceApply
            | Command::MoveStorage { .. } => {}
        }
        self.feed(h, Input::Command(command));
        self.operator.migrating = None;
    }

    /// The operator's run-time change (in `config`) reaches each host when its catalog task
    /// next reads a datastore: within a second, at a different moment on each host.
    fn change_config(&mut self) {
        self.operator.version += 1;
        for h in 0..self.hosts.len() {
            let delay = self.rng.below(1_000);
            self.push(self.now + delay, Ev::Apply(h, self.operator.version));
        }
    }

    /// The agent of `h` stops handling anything (paused, or its host frozen).
    fn stall(&mut self, h: usize) {
        if !self.hosts[h].up || self.hosts[h].node.is_none() || self.hosts[h].stalled.is_some() {
            return;
        }
        self.hosts[h].stalled = Some(self.now);
        if self.opts.watchdog {
            let epoch = self.hosts[h].agent_epoch;
            self.push(self.now + self.config.timeouts.fence_timeout_ms, Ev::StallWatchdog(h, epoch, self.now));
        }
    }

    /// The agent of `h` runs again: it is told the gap first, then handles what waited; the
    /// VMs of the host execute again — unless its node paused them at once, each one that
    /// runs elsewhere meanwhile now runs twice (invariant 1).
    fn resume(&mut self, h: usize) {
        let Some(since) = self.hosts[h].stalled.take() else { return };
        let gap = self.now - since;
        self.feed(h, Input::Resumed { gap_ms: gap });
        for input in std::mem::take(&mut self.hosts[h].backlog) {
            if self.hosts[h].stalled.is_none() && self.hosts[h].node.is_some() {
                self.feed(h, input);
            }
        }
        let here: Vec<String> = self.hosts[h].vms.keys().filter(|vm| self.hosts[h].executes(vm)).cloned().collect();
        for vm in here {
            // A copy started outside halo is not one halo restarted meanwhile: whether halo
            // noticed it is `end_outside`'s invariant (simulator seed 13066: an unprotected
            // VM's outside copy, which halo leaves alone, beside a host that stalled).
            let outside = self.outside.get(&vm).map(|o| (o.copy, o.legit));
            let restarted_elsewhere = |o: usize| {
                outside.is_none_or(|(copy, legit)| !((o == copy && h == legit) || (o == legit && h == copy)))
            };
            if let Some(other) =
                self.hosts.iter().enumerate().find(|(o, x)| *o != h && x.executes(&vm) && restarted_elsewhere(*o))
            {
                let (name, other) = (self.hosts[h].name.clone(), other.1.name.clone());
                self.violation(format!("{vm} runs on {name} again after a {gap} ms stall while it runs on {other}"));
            }
        }
    }

    /// Invariant 3: at the end (faults healed), every protected VM runs when capacity exists.
    fn check_eventually_running(&mut self) {
        // A VM left paused (a hold never settled) does not run.
        let running: BTreeSet<String> =
            self.hosts.iter().flat_map(|h| h.vms.keys().filter(|vm| h.executes(vm)).cloned()).collect();
        let up: Vec<usize> = (0..self.hosts.len()).filter(|&h| self.hosts[h].up).collect();
        let mut free: BTreeMap<usize, u64> = up
            .iter()
            .map(|&h| {
                let used: u64 = self.hosts[h].vms.keys().filter_map(|v| self.config.vm(v)).map(|s| s.memory_mib).sum();
                (h, self.config.hosts[h].memory_mib.saturating_sub(used))
            })
            .collect();
        let missing: Vec<halo_core::VmSpec> = self
            .config
            .vms
            .iter()
            .filter(|v| v.priority == halo_policy::RestartPriority::Restart && !running.contains(&v.name))
            .filter(|v| !self.operator.stopped.contains(&v.name) && !self.operator.exempt.contains(&v.name))
            .filter(|v| self.crash_counts.get(&v.name).copied().unwrap_or(0) < self.config.ha.restart_limit)
            .cloned()
            .collect();
        for vm in missing {
            // Is there room for it? (first fit on memory, like the plan)
            if let Some((_, room)) = free.iter_mut().find(|(_, room)| **room >= vm.memory_mib) {
                *room -= vm.memory_mib;
                let message = format!(
                    "LIVENESS VIOLATED (seed {}): {} (restart priority) is not running at the end although a host has room for it",
                    self.opts.seed, vm.name
                );
                self.note(Severity::Alert, TimelineKind::InvariantViolated, message.clone());
                self.liveness.push(message);
            }
        }
    }
}

/// The simulated drivers of host `h`: what its node's actions do in the simulated world.
struct HostDrivers<'s, 'p> {
    sim: &'s mut Sim<'p>,
    h: usize,
}

impl HeartbeatSender for HostDrivers<'_, '_> {
    fn send_heartbeat(&mut self, network: &str, heartbeat: &std::sync::Arc<Heartbeat>) {
        let (s, h) = (&mut *self.sim, self.h);
        let loss = s.loss.get(network).copied().unwrap_or(0);
        // One copy, shared by every host it reaches (a heartbeat is read, never changed).
        let network: std::sync::Arc<str> = network.into();
        for to in 0..s.hosts.len() {
            if to == h || !s.path(&network, h, to) || (loss > 0 && s.rng.chance(loss)) {
                continue;
            }
            let delay = s.rng.between(1, s.opts.max_delay);
            s.deliver(to, delay, Input::Heartbeat { network: network.clone(), heartbeat: heartbeat.clone() });
        }
    }
}

impl DatastoreDriver for HostDrivers<'_, '_> {
    fn write_record(&mut self, datastore: &str, record: &DatastoreRecord) {
        let (s, h) = (&mut *self.sim, self.h);
        let ok = s.store_reachable(datastore, h);
        if ok && let Some(store) = s.stores.get_mut(datastore) {
            store.records.insert(record.host.clone(), record.clone());
            if store.lease.is_some() {
                store.written.insert(record.host.clone(), s.now);
            }
        }
        let delay = if ok { s.opts.datastore_latency } else { 1_000 };
        s.deliver(h, delay, Input::DatastoreWritten { datastore: datastore.to_string(), ok });
    }

    fn read_records(&mut self, datastore: &str) {
        let (s, h) = (&mut *self.sim, self.h);
        let records = if s.store_reachable(datastore, h) {
            let store = &s.stores[datastore];
            let live = |host: &String| match store.lease {
                Some(lease) => store.written.get(host).is_some_and(|&at| s.now.saturating_sub(at) < lease),
                None => true,
            };
            Ok(store.records.iter().filter(|(host, _)| live(host)).map(|(_, r)| r.clone()).collect())
        } else {
            Err(format!("datastore {datastore} not reachable"))
        };
        let delay = if records.is_ok() { s.opts.datastore_latency } else { 1_000 };
        s.deliver(h, delay, Input::DatastoreRead { datastore: datastore.to_string(), records });
    }

    fn claim(&mut self, datastore: &str, claim: &Claim) {
        let (s, h) = (&mut *self.sim, self.h);
        let outcome = if !s.store_reachable(datastore, h) {
            ClaimOutcome::Failed(format!("datastore {datastore} not reachable"))
        } else {
            let store = s.stores.get_mut(datastore).expect("known datastore");
            match store.claims.get(&(claim.vm.clone(), claim.generation)) {
                Some(existing) => ClaimOutcome::Lost(existing.clone()),
                None => {
                    store.claims.insert((claim.vm.clone(), claim.generation), claim.clone());
                    ClaimOutcome::Won
                }
            }
        };
        let latency = s.opts.datastore_latency;
        s.deliver(h, latency, Input::ClaimResult { claim: claim.clone(), outcome });
    }

    /// Kept on every reachable datastore (nothing reads it in the simulator).
    fn record_fence(&mut self, record: &halo_core::FenceRecord) {
        let (s, h) = (&mut *self.sim, self.h);
        let reachable: Vec<String> = s.stores.keys().filter(|d| s.store_reachable(d, h)).cloned().collect();
        for name in reachable {
            if let Some(store) = s.stores.get_mut(&name) {
                store.fences.insert(record.host.clone(), record.clone());
            }
        }
    }

    fn record_definition(&mut self, vm: &str, _moved: &[(String, String)]) {
        let (s, h) = (&mut *self.sim, self.h);
        let result = Err("the simulator keeps no definitions".to_string());
        s.deliver(h, 50, Input::DefinitionRecorded { vm: vm.to_string(), result });
    }

    fn check_claim(&mut self, vm: &str, generation: u64) {
        let (s, h) = (&mut *self.sim, self.h);
        let key = (vm.to_string(), generation);
        let mut holder = Ok(None);
        for (name, store) in &s.stores {
            if !s.store_reachable(name, h) {
                holder = holder.and(Err(format!("datastore {name} not reachable")));
                continue;
            }
            if let Some(claim) = store.claims.get(&key) {
                holder = Ok(Some(claim.clone()));
                break;
            }
        }
        let latency = s.opts.datastore_latency;
        s.deliver(h, latency, Input::ClaimChecked { vm: vm.to_string(), generation, holder });
    }
}

impl FenceDriver for HostDrivers<'_, '_> {
    /// The host's simulated device (`Schedule::fence_devices`): it powers the host off (a
    /// crash, as a BMC cuts the power) and confirms, slowly or not, fails, or lies. The master
    /// reaches it whatever its networks (a BMC network of its own).
    fn fence_host(&mut self, host: &str) {
        let (s, h) = (&mut *self.sim, self.h);
        let Some(&target) = s.index.get(host) else { return };
        let device = s.schedule.fence_devices.get(host).copied();
        let master = (h, s.hosts[h].agent_epoch);
        let (delay, power_off, result) = match device {
            None => (100, false, Err(format!("{host} has no fence device in the simulator"))),
            Some(FenceDevice::Confirms) => (300, true, Ok("sim-bmc".to_string())),
            Some(FenceDevice::Slow) => (5_000, true, Ok("sim-bmc (slow)".to_string())),
            Some(FenceDevice::Fails) => (1_000, false, Err("sim-bmc: no answer".to_string())),
            Some(FenceDevice::Lies) => (300, false, Ok("sim-bmc (lying)".to_string())),
        };
        s.push(s.now + delay, Ev::Fenced { master, target, power_off, result });
    }

    fn cancel_fence(&mut self, host: &str) {
        let (s, h) = (&mut *self.sim, self.h);
        if let Some(&target) = s.index.get(host) {
            s.fence_cancelled.insert((h, target));
        }
    }

    fn monitor_fence(&mut self, host: &str) {
        let (s, h) = (&mut *self.sim, self.h);
        let Some(&target) = s.index.get(host) else { return };
        let answer = match s.schedule.fence_devices.get(host) {
            None => return,
            Some(FenceDevice::Fails) => Err("sim-bmc: no answer".to_string()),
            Some(FenceDevice::Lies) => Ok("off".to_string()),
            Some(_) => Ok(if s.hosts[target].up { "on" } else { "off" }.to_string()),
        };
        let devices = vec![("sim-bmc".to_string(), answer)];
        s.deliver(h, 300, Input::FenceMonitored { host: host.to_string(), devices });
    }
}

impl HostDrivers<'_, '_> {
    /// `Action::ReadLoad`: the host's libvirt, reached like a start, answers with its VMs'
    /// configured memory (no CPU use is simulated).
    fn load_of(&mut self, host: &str) {
        let (s, h) = (&mut *self.sim, self.h);
        let Some(&to) = s.index.get(host) else { return };
        let load = if (to == h || s.any_path(h, to)) && s.hosts[to].up && !s.hosts[to].frozen {
            let memory_mib = s.config.hosts[to].memory_mib;
            let vms: Vec<halo_core::VmLoad> = s.hosts[to]
                .vms
                .keys()
                .map(|vm| halo_core::VmLoad {
                    vm: vm.clone(),
                    cpu_percent: Some(0),
                    memory_mib: s.config.vm(vm).map_or(0, |v| v.memory_mib),
                })
                .collect();
            let used: u64 = vms.iter().map(|v| v.memory_mib).sum();
            Ok(halo_core::HostLoad {
                memory_mib,
                free_memory_mib: memory_mib.saturating_sub(used),
                cpus: s.config.hosts[to].vcpus,
                cpu_percent: Some(0),
                vms,
            })
        } else {
            Err(format!("{host}: libvirt unreachable"))
        };
        s.deliver(h, 50, Input::LoadRead { host: host.to_string(), load });
    }
}

impl PingDriver for HostDrivers<'_, '_> {
    fn ping(&mut self, target: &PingTarget) {
        let (s, h) = (&mut *self.sim, self.h);
        let answered = match target {
            PingTarget::Host(name) => s
                .index
                .get(name)
                .is_some_and(|&to| s.config.networks.iter().any(|n| s.path(n, h, to) && s.path(n, to, h))),
            PingTarget::IsolationAddress(address) => {
                let network = address.strip_prefix("gw-").unwrap_or(address);
                !s.link_is_down(network, h)
            }
        };
        let delay = if answered { 2 } else { 1_000 };
        s.deliver(h, delay, Input::PingResult { target: target.clone(), answered });
    }
}

impl HypervisorDriver for HostDrivers<'_, '_> {
    fn start_vm(&mut self, host: &str, vm: &str, generation: u64) {
        let (s, h) = (&mut *self.sim, self.h);
        let Some(&to) = s.index.get(host) else { return };
        if (to != h && !s.any_path(h, to)) || s.hosts[to].node.is_none() {
            return; // the request is lost (no path, or no agent to carry it out); the master times out
        }
        let boot = s.hosts[to].boot;
        let reply = Some((h, s.hosts[h].agent_epoch));
        let at = s.now + s.opts.vm_start;
        s.push(at, Ev::VmUp { host: to, boot, vm: vm.to_string(), generation, reply });
    }

    fn stop_vm(&mut self, vm: &str, reason: StopReason, grace_secs: u32) {
        let (s, h) = (&mut *self.sim, self.h);
        let delay = 200 + Millis::from(grace_secs.min(5)) * 1000;
        s.push(s.now + delay, Ev::VmDown { host: h, vm: vm.to_string(), reason });
    }

    fn migrate_vm(&mut self, vm: &str, from: &str, to: &str) {
        let (s, h) = (&mut *self.sim, self.h);
        let (Some(&f), Some(&t)) = (s.index.get(from), s.index.get(to)) else { return };
        // Invariant 4: HA moves a running VM only off a host the operator put into maintenance
        // (and not taken out since), or when the operator asked for that very migration.
        let asked = s.operator.migrating.as_deref() == Some(vm);
        // Balancing moves VMs by itself only in `auto` mode (or at the operator's `apply`), never
        // onto a reserved failover host, never against a *must* rule.
        let balancing = s.operator.balancing.remove(vm);
        if balancing {
            if s.config.balance.mode != halo_core::balance::BalanceMode::Auto {
                s.violation(format!("{vm}: a balancing move from {from} to {to} while balancing is not in auto mode"));
            }
            if s.config.host(to).is_some_and(|spec| spec.reserved) {
                s.violation(format!("{vm}: balancing moved it onto {to}, a reserved failover host"));
            }
            let partners: Vec<String> = s
                .config
                .rules
                .iter()
                .filter(|r| {
                    r.strength == halo_core::rules::Strength::Must
                        && r.kind == halo_core::rules::RuleKind::Apart
                        && r.vms.iter().any(|v| v == vm)
                })
                .flat_map(|r| r.vms.iter().filter(|v| *v != vm).cloned())
                .collect();
            if let Some(partner) = partners.iter().find(|p| s.hosts[t].vms.contains_key(p.as_str())) {
                s.violation(format!(
                    "{vm}: balancing moved it onto {to}, where {partner} runs: a must-apart rule broken"
                ));
            }
        }
        if !asked && !balancing && !s.operator.maintenance.contains(from) {
            s.violation(format!(
                "{vm} migrated off {from}, which the operator did not put into maintenance: HA must never move \
                 a running VM to make room"
            ));
        }
        let master = (h, s.hosts[h].agent_epoch);
        s.push(s.now + 800, Ev::Migrated { vm: vm.to_string(), from: f, to: t, master });
    }

    fn pause_vm(&mut self, vm: &str) {
        let host = &mut self.sim.hosts[self.h];
        if host.vms.contains_key(vm) {
            host.paused.insert(vm.to_string());
        }
    }

    fn pause_copy(&mut self, host: &str, vm: &str) {
        let (s, h) = (&mut *self.sim, self.h);
        let Some(&to) = s.index.get(host) else { return };
        // Reached like a start: over a path, carried out by the host's libvirt (no agent needed).
        if (to != h && !s.any_path(h, to)) || !s.hosts[to].up {
            return;
        }
        // halo keeps the copy it started: pausing that one while the outside copy runs on
        // stops a healthy VM and leaves the intruder.
        if let Some(&OutsideCopy { copy, legit, .. }) = s.outside.get(vm)
            && to == legit
            && s.hosts[copy].executes(vm)
            && s.hosts[legit].vms.get(vm) == s.hosts[copy].vms.get(vm)
        {
            let (kept, paused) = (s.hosts[copy].name.clone(), s.hosts[legit].name.clone());
            s.violation(format!(
                "halo paused its own copy of {vm} on {paused} and kept the one started outside on {kept}"
            ));
        }
        if s.hosts[to].vms.contains_key(vm) {
            s.hosts[to].paused.insert(vm.to_string());
        }
    }

    fn read_load(&mut self, host: &str) {
        self.load_of(host);
    }

    /// The simulated hosts have no disks: a storage move's copy is refused (its guest runs on).
    fn copy_storage(&mut self, vm: &str, host: &str, _dir: &str) {
        let (s, h) = (&mut *self.sim, self.h);
        let result = Err(format!("{host}: the simulator has no disks to copy"));
        s.deliver(h, 50, Input::StorageCopied { vm: vm.to_string(), result });
    }

    fn finish_storage(&mut self, vm: &str, _host: &str, pivot: bool) {
        let (s, h) = (&mut *self.sim, self.h);
        let result = Err("the simulator has no disks".to_string());
        s.deliver(h, 50, Input::StorageFinished { vm: vm.to_string(), pivot, result });
    }

    fn resume_vm(&mut self, vm: &str) {
        let h = self.h;
        if !self.sim.hosts[h].paused.contains(vm) {
            return;
        }
        if let Some(other) = self.sim.hosts.iter().enumerate().find(|(o, x)| *o != h && x.executes(vm)) {
            let (name, other) = (self.sim.hosts[h].name.clone(), other.1.name.clone());
            self.sim.violation(format!("{vm} resumed on {name} while it runs on {other}"));
        }
        self.sim.hosts[h].paused.remove(vm);
    }
}

impl EventSink for HostDrivers<'_, '_> {
    fn record(&mut self, event: Event) {
        if event.kind == halo_core::EventKind::BalanceMove
            && let Some((vm, _)) = event.message.split_once(": live migration ")
        {
            self.sim.operator.balancing.insert(vm.to_string());
        }
        self.sim.record(event);
    }
}
