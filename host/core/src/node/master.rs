//! What only the master does: classify every host, restart the VMs of failed hosts and the
//! VMs recorded as stopped by their own host, keep the failover plan, evacuate hosts for
//! maintenance.
//!
//! A restart goes: wait → placement (placement policy) → claim (atomic create of
//! `(vm, generation + 1)` on a datastore) → start. Only a won claim leads to a start, so two
//! masters (two partitions, or an old and a new master) never start one VM. Waves come from
//! the restart policy: the next wave is dispatched only when nothing of the previous one is
//! still claiming or starting. `restart` VMs are retried with backoff until capacity
//! appears; `best-effort` VMs get one try, after every `restart` VM had its first.

use std::collections::{BTreeMap, BTreeSet};

use halo_policy::{PlacementInput, PlacementReason, RestartInput, RestartPriority, VmToRestart};
use serde::{Deserialize, Serialize};

use super::{Action, EventKind, Node, Severity};
use crate::Millis;
use crate::capacity::{self, FailoverPlan, HostUsage, Locations, Usage};
use crate::classify::{DatastoreSignal, PingSignal, Signals, Verdict};
use crate::policies::{Policies, PolicyOutcome};
use crate::wire::{Claim, ClaimOutcome, DatastoreRecord, StartError};

/// Where one restart stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartState {
    /// Waiting for its turn (or for capacity, after `not_before`).
    Waiting {
        /// Not before this time.
        not_before: Millis,
    },
    /// The claim is being created.
    Claiming {
        /// Target host.
        host: String,
        /// Since.
        since: Millis,
    },
    /// Starting on a host.
    Starting {
        /// Target host.
        host: String,
        /// Since.
        since: Millis,
    },
    /// Another master's claim won; waiting to see it run.
    ClaimedElsewhere {
        /// Its target host.
        host: String,
        /// Since.
        since: Millis,
    },
    /// Given up (best-effort without room, start timed out): alert raised.
    GaveUp,
}

/// One VM to restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Restart {
    /// The host it was lost from (empty: started by the operator, `halo vm start`).
    pub from: String,
    /// The generation it ran under there; the restart claims the next.
    pub generation: u64,
    /// When it was found lost.
    pub since: Millis,
    /// Attempts so far.
    pub attempts: u32,
    /// State.
    pub state: RestartState,
    /// The host the next claim must name. Set when a claim for a live host was taken but
    /// the VM never showed up there: that start may still be under way, so the claim that
    /// supersedes it names the same host (one domain per host; see `watch_restarts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<String>,
    /// Whether the operator was told this restart waits (alert once).
    #[serde(default)]
    pub waiting_reported: bool,
    /// Whether the operator was told this restart waits for a storage lease (once).
    #[serde(default)]
    pub lease_wait_reported: bool,
}

impl Restart {
    /// A restart found at `since`, of a VM that ran under `generation` on `from`, in `state`.
    fn new(from: String, generation: u64, since: Millis, state: RestartState) -> Self {
        Self {
            from,
            generation,
            since,
            attempts: 0,
            state,
            pinned: None,
            waiting_reported: false,
            lease_wait_reported: false,
        }
    }
}

/// A VM's restart priority (unprotected when the configuration does not know it).
fn priority_of(config: &crate::config::ClusterConfig, vm: &str) -> RestartPriority {
    config.vm(vm).map_or(RestartPriority::Unprotected, |s| s.priority)
}

/// The longest an unchanged cluster keeps its failover plan without planning again.
const PLAN_MAX_AGE: Millis = 30_000;

/// The master's own state, rebuilt from heartbeats and datastore records on takeover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterState {
    /// Epoch of this mastership.
    pub epoch: u64,
    /// Master since.
    pub since: Millis,
    /// VMs being restarted.
    pub restarts: BTreeMap<String, Restart>,
    /// The last failover plan.
    pub plan: Option<FailoverPlan>,
    plan_due: Millis,
    pub(super) suppressed: Option<String>,
    pub(super) evacuating: BTreeSet<String>,
    pub(super) migrating: BTreeSet<String>,
    /// VMs that just left a host by live migration (from, when): a heartbeat of that host sent
    /// before it saw them leave must not move them again.
    pub(super) moved: BTreeMap<String, (String, Millis)>,
    /// When this master first saw each (VM, host) reported running (`exclusivity`).
    pub(super) first_seen: super::exclusivity::FirstSeen,
    /// Protected VMs found running on more than one host (`exclusivity`).
    pub(super) duplicates: BTreeMap<String, super::exclusivity::Duplicate>,
    /// Restarts wait because no claim can be taken (said once per episode).
    #[serde(default)]
    pub(super) claims_blocked: bool,
}

impl MasterState {
    pub(super) fn new(epoch: u64, now: Millis) -> Self {
        Self {
            epoch,
            since: now,
            restarts: BTreeMap::new(),
            plan: None,
            plan_due: now,
            suppressed: None,
            evacuating: BTreeSet::new(),
            migrating: BTreeSet::new(),
            moved: BTreeMap::new(),
            first_seen: Default::default(),
            duplicates: BTreeMap::new(),
            claims_blocked: false,
        }
    }
}

impl Node {
    pub(super) fn on_datastore_read(&mut self, datastore: &str, records: Result<Vec<DatastoreRecord>, String>) {
        if self.master.is_none() {
            return;
        }
        let Ok(records) = records else { return };
        self.ds_read_ok_at = Some(self.now);
        for record in records {
            let now = self.now;
            let Some(peer) = self.peers.get_mut(&record.host) else { continue };
            let entry = peer.datastores.entry(datastore.to_string()).or_insert((record.counter, now));
            if record.counter != entry.0 {
                *entry = (record.counter, now);
            }
            peer.declared_isolated = record.isolated;
            peer.ds_stopped = record.stopped;
        }
    }

    pub(super) fn on_host_ping(&mut self, host: &str, answered: bool) {
        if let Some(peer) = self.peers.get_mut(host)
            && (peer.ping == PingSignal::Pending || peer.ping_refresh)
        {
            peer.ping = if answered { PingSignal::Answered } else { PingSignal::NoAnswer };
            peer.ping_at = self.now;
            peer.ping_refresh = false;
        }
    }

    /// The master read a datastore within half the dead-time (else storage says nothing).
    fn datastores_readable(&self) -> bool {
        self.ds_read_ok_at.is_some_and(|at| self.now.saturating_sub(at) < self.config.timeouts.dead_time_ms / 2)
    }

    pub(super) fn signals(&self, host: &str) -> Option<Signals> {
        let peer = self.peers.get(host)?;
        let t = self.config.timeouts;
        Some(Signals {
            host: host.to_string(),
            now: self.now,
            dead_time_ms: t.dead_time_ms,
            // Silence before this node's own last gap is not the peer's silence (`resume`).
            networks: self
                .config
                .networks
                .iter()
                .map(|n| (n.clone(), peer.networks.get(n).map(|&at| self.since_resume(at))))
                .collect(),
            seq_advanced_at: peer
                .seq_advanced_at
                .or(self.master.as_ref().map(|m| m.since))
                .map(|at| self.since_resume(at)),
            datastores: self
                .config
                .datastores
                .iter()
                .map(|d| DatastoreSignal {
                    datastore: d.clone(),
                    counter: peer.datastores.get(d).map(|e| e.0),
                    advanced_at: peer.datastores.get(d).map(|e| self.since_resume(e.1)),
                })
                .collect(),
            datastores_readable: self.datastores_readable(),
            ping: peer.ping,
            declared_isolated: peer.declared_isolated,
            ping_timeout_ms: t.ping_timeout_ms,
        })
    }

    fn classify_peers(&mut self) {
        let t = self.config.timeouts;
        let names: Vec<String> = self.peers.keys().cloned().collect();
        for name in names {
            let Some(signals) = self.signals(&name) else { continue };
            // A ping answer is only good for a while: an agent-down host may die later.
            let peer = &self.peers[&name];
            let stale_ping = match peer.ping {
                PingSignal::Answered => self.now.saturating_sub(peer.ping_at) > t.dead_time_ms / 2,
                PingSignal::Pending => self.now.saturating_sub(peer.ping_at) > t.ping_timeout_ms,
                _ => false,
            };
            if stale_ping && let Some(peer) = self.peers.get_mut(&name) {
                peer.ping = if peer.ping == PingSignal::Pending { PingSignal::NoAnswer } else { PingSignal::NotAsked };
            }
            let Some(signals) = (if stale_ping { self.signals(&name) } else { Some(signals) }) else { continue };
            let (verdict, ping_now) = signals.classify();
            // A host with fence devices is pinged early, so that whether its kernel answers is
            // known by the detection time (a fence needs no answer: `fence`).
            let fenceable = self.config.host(&name).is_some_and(|h| h.fenceable);
            // (On network silence alone: datastore counters are seen a read interval late.)
            let fence_lead = fenceable
                && signals.datastores_readable
                && signals.silent_for(t.fence_after_ms().saturating_sub(t.ping_timeout_ms));
            // A device confirmed it off and the datastores agree: failed now (`fence`). Heard
            // again since (it booted), fencing is over.
            let fenced = if signals.silent_for(t.fence_after_ms()) {
                self.fenced_verdict(&name)
            } else {
                self.fence_heard(&name);
                None
            };
            let verdict = fenced.unwrap_or(verdict);
            let Some(peer) = self.peers.get_mut(&name) else { continue };
            if !signals.nearly_dead() && !fence_lead {
                peer.ping = PingSignal::NotAsked;
                peer.ping_refresh = false;
            }
            let ping_now = ping_now || (fence_lead && peer.ping == PingSignal::NotAsked);
            if ping_now {
                peer.ping = PingSignal::Pending;
                peer.ping_at = self.now;
                self.out.push(Action::Ping { target: super::PingTarget::Host(name.clone()) });
            } else if fence_lead
                && peer.ping == PingSignal::Answered
                && !peer.ping_refresh
                && self.now.saturating_sub(peer.ping_at) >= t.ping_timeout_ms
            {
                // Still silent after answering: is it still there? (Its verdict stays until
                // the new answer: no flapping for a host whose agent is down.)
                peer.ping_refresh = true;
                self.out.push(Action::Ping { target: super::PingTarget::Host(name.clone()) });
            }
            let before = peer.verdict.replace(verdict);
            if before != Some(verdict) && (before.is_some() || verdict != Verdict::Running) {
                let (severity, kind) = match verdict {
                    Verdict::Running => (Severity::Info, EventKind::HostRunning),
                    Verdict::Suspect => (Severity::Warning, EventKind::HostSuspect),
                    Verdict::AgentDown => (Severity::Alert, EventKind::HostAgentDown),
                    Verdict::Failed => (Severity::Alert, EventKind::HostFailed),
                    Verdict::Isolated => (Severity::Alert, EventKind::HostIsolated),
                    Verdict::Partitioned => (Severity::Alert, EventKind::HostPartitioned),
                    Verdict::Unknown => (Severity::Alert, EventKind::HostUnknown),
                };
                let what = match verdict {
                    Verdict::AgentDown => " — its VMs are not restarted (they may still run); restart its agent",
                    Verdict::Failed => " — its protected VMs will be restarted",
                    Verdict::Isolated | Verdict::Partitioned => " — its VMs are not restarted",
                    Verdict::Unknown => " — no datastore readable: nothing is restarted",
                    _ => "",
                };
                self.record(severity, kind, format!("{name}: {}{what}", verdict.as_str()), Some(signals.trace()));
            }
        }
    }

    /// Every [`super::LOAD_INTERVAL_MS`] the master reads the load of every host in contact
    /// (itself included) from its libvirt; a host out of contact keeps its last reading.
    fn read_load(&mut self) {
        if self.now < self.load_due {
            return;
        }
        self.load_due = self.now + super::LOAD_INTERVAL_MS;
        let hosts: Vec<String> =
            self.config.hosts.iter().map(|h| h.name.clone()).filter(|h| self.heard_lately(h)).collect();
        for host in hosts {
            self.out.push(Action::ReadLoad { host });
        }
    }

    /// A host's load was read (or could not be: the last reading stays, the failure is logged
    /// by the driver).
    pub(super) fn on_load(&mut self, host: &str, load: Result<crate::wire::HostLoad, String>) {
        if self.master.is_none() || self.config.host(host).is_none() {
            return;
        }
        if let Ok(load) = load {
            self.load.insert(host.to_string(), (self.now, load));
        }
    }

    pub(super) fn master_step(&mut self, policies: &mut dyn Policies) {
        self.classify_peers();
        self.watch_fence_triggers();
        self.monitor_fences();
        self.read_load();
        // Always, HA on or off (off: alerts only).
        self.check_exclusivity();
        if !self.ha_enabled {
            return;
        }
        if self.restart_allowed() {
            self.find_lost_vms();
        }
        self.watch_restarts();
        self.dispatch(policies);
        self.continue_evacuations(policies);
        self.continue_balancing(policies);
        let due = self.master.as_ref().is_some_and(|m| self.now >= m.plan_due);
        if due {
            self.refresh_plan(policies, false);
        }
    }

    /// The blast-radius limit and the quorum rule. A master restarts only when its own
    /// partition (itself and the peers it hears) holds at least half of the hosts: then any
    /// other partition is at most half, not a quorum, so its hosts without a datastore
    /// fenced (and those with one are visibly alive and never restarted). Counting peers
    /// seen only on a datastore would be wrong: they may sit in the other partition (found
    /// by simulator seed 235).
    fn restart_allowed(&mut self) -> bool {
        let hosts = self.config.hosts.len();
        let verdicts: Vec<Verdict> = self.peers.values().filter_map(|p| p.verdict).collect();
        let failed = verdicts.iter().filter(|v| **v == Verdict::Failed).count();
        let accounted = 1 + verdicts.iter().filter(|v| **v == Verdict::Running).count();
        let problem = if self.isolated() || self.fenced {
            Some(format!(
                "this master ({}) is {}: it restarts nothing until it hears the cluster again",
                self.name,
                if self.fenced { "fenced" } else { "isolated" }
            ))
        } else if failed * 100 > self.config.ha.blast_radius_percent as usize * hosts {
            Some(format!(
                "{failed} of {hosts} hosts look failed at once, more than the blast-radius limit of {}%: this master suspects itself and restarts nothing",
                self.config.ha.blast_radius_percent
            ))
        } else if 2 * accounted < hosts {
            // Also for VMs stopped by their host: those are safe to restart under a claim,
            // but a minority master mostly cannot reach the hosts it would pick, and its
            // claims would only hold up the majority's master (seed 1531).
            Some(format!(
                "this master's partition holds only {accounted} of {hosts} hosts: the others could be a larger partition, so nothing is restarted"
            ))
        } else {
            None
        };
        let Some(master) = self.master.as_mut() else { return false };
        let changed = master.suppressed != problem;
        master.suppressed = problem.clone();
        if changed && let Some(problem) = problem {
            self.record(Severity::Alert, EventKind::RestartsSuppressed, problem, None);
        }
        self.master.as_ref().is_some_and(|m| m.suppressed.is_none())
    }

    /// Protected VMs of failed hosts, and VMs their own host recorded as stopped.
    fn find_lost_vms(&mut self) {
        let mut lost: Vec<(String, String, u64, &'static str)> = Vec::new();
        for (host, peer) in &self.peers {
            if peer.ha_disabled {
                continue;
            }
            // A host that is not armed (HA off there, as last heard) may run on, cut off.
            if peer.verdict == Some(Verdict::Failed) && !peer.ha_off {
                for report in peer.vms.iter().filter(|r| !peer.unarmed.contains(&r.vm)) {
                    lost.push((report.vm.clone(), host.clone(), report.generation, "its host failed"));
                }
            }
            for report in peer.stopped.iter().chain(peer.ds_stopped.iter()) {
                lost.push((report.vm.clone(), host.clone(), report.generation, "its host stopped it"));
            }
        }
        // This master's own host may have stopped VMs too (isolation or fencing before it
        // became master again; seed 289 left one down).
        for report in &self.stopped {
            lost.push((report.vm.clone(), self.name.clone(), report.generation, "this host stopped it"));
        }
        // A host whose agent started anew and no longer reports a VM lost it (rebooted).
        for (vm, (host, generation)) in &self.vanished {
            lost.push((vm.clone(), host.clone(), *generation, "it vanished when its host restarted"));
        }
        if lost.is_empty() {
            // The common case: no set of every running VM to build at every evaluation.
            self.carry_on_claims();
            return;
        }

        // Running now: reported by hosts we hear. A silent host's last list is stale; its
        // stop record (or the claim) is what counts for it. A copy this master paused (a
        // duplicate started outside halo) does not run: when halo's own copy is lost, the VM
        // is restarted (simulator seed 10130, conservative timeouts).
        let paused_copy = |vm: &str, host: &str| {
            self.master.as_ref().is_some_and(|m| m.duplicates.get(vm).is_some_and(|d| d.paused.contains(host)))
        };
        let running: BTreeSet<&str> = self
            .peers
            .iter()
            .filter(|(_, p)| p.verdict.is_none_or(|v| v == Verdict::Running))
            .flat_map(|(host, p)| p.vms.iter().filter(move |r| !paused_copy(&r.vm, host)).map(|r| r.vm.as_str()))
            .chain(self.local_vms.keys().filter(|vm| !paused_copy(vm, &self.name)).map(String::as_str))
            .collect();
        let mut new: Vec<(String, String, u64, &'static str)> = Vec::new();
        for (vm, from, generation, why) in lost {
            // (Listed twice when its host's heartbeat and datastore record both name it.)
            if new.iter().any(|(v, ..)| *v == vm) {
                continue;
            }
            let Some(spec) = self.config.vm(&vm) else { continue };
            let current = self.generations.get(&vm).copied().unwrap_or(generation);
            let Some(master) = self.master.as_ref() else { return };
            if !spec.protected()
                || generation < current
                || running.contains(vm.as_str())
                || master.restarts.contains_key(&vm)
                || self.peers.values().any(|p| p.operator_stopped.contains(&vm))
                || self.operator_stopped.contains(&vm)
            {
                // (Stopped by the operator on this master's own host too: simulator seed 12384,
                // an operator stop right after this agent restarted looked like a VM that
                // vanished in the restart.)
                continue;
            }
            new.push((vm, from, generation, why));
        }
        for (vm, from, generation, why) in new {
            self.record(
                Severity::Warning,
                EventKind::VmLost,
                format!("{vm} lost from {from} ({why}); restart queued"),
                None,
            );
            let now = self.now;
            let Some(master) = self.master.as_mut() else { return };
            master.restarts.insert(vm, Restart::new(from, generation, now, RestartState::Waiting { not_before: now }));
        }
        self.carry_on_claims();
    }

    /// A claim taken (by this node or another master) that no host has run yet: its master
    /// may have stepped down before the start, and the VM's older records no longer count
    /// (their generation is below the claim's), so no other rule restarts it. Carried on as a
    /// restart waiting for that claim — `watch_restarts` supersedes it on the same host after
    /// the start timeout, or elsewhere once that host failed. Simulator seed 531 (a VM
    /// claimed by a master that stepped down at once) stayed down without it.
    fn carry_on_claims(&mut self) {
        if self.claims_seen.is_empty() {
            return;
        }
        let running: BTreeSet<&str> = self
            .peers
            .values()
            .flat_map(|p| p.vms.iter().map(|r| r.vm.as_str()))
            .chain(self.local_vms.keys().map(String::as_str))
            .collect();
        let mut carried = Vec::new();
        for (vm, (host, generation, learned)) in &self.claims_seen {
            let Some(master) = self.master.as_ref() else { return };
            let newer_known = self.generations.get(vm).is_some_and(|g| g > generation);
            if *generation == 0
                || newer_known
                || running.contains(vm.as_str())
                || master.restarts.contains_key(vm)
                || !self.config.vm(vm).is_some_and(|s| s.protected())
                || self.operator_stopped.contains(vm)
                || self.peers.values().any(|p| p.operator_stopped.contains(vm))
            {
                continue;
            }
            carried.push((vm.clone(), host.clone(), *generation, *learned));
        }
        for (vm, host, generation, learned) in carried {
            self.record(
                Severity::Warning,
                EventKind::VmLost,
                format!(
                    "{vm}: generation {generation} was claimed for {host} but has not run anywhere; this master carries the restart on"
                ),
                None,
            );
            let now = self.now;
            let Some(master) = self.master.as_mut() else { return };
            let state = RestartState::ClaimedElsewhere { host: host.clone(), since: learned };
            master.restarts.insert(vm, Restart::new(host, generation - 1, now, state));
        }
    }

    /// Timeouts of claims and starts; targets that failed meanwhile.
    ///
    /// The rule that keeps a VM on one host while restarts go wrong: a claim `(vm, g)` names
    /// one host, and generation `g` runs there or nowhere. When the VM does not show up:
    /// - the named host is proven failed → the restart goes on with a claim for `g + 1`,
    ///   placed anywhere (nothing runs on a dead host);
    /// - the named host is alive and heard, but does not report the VM after the start
    ///   timeout → the start may still be under way (or was lost); the restart goes on with a
    ///   claim for `g + 1` **pinned to the same host**, so the late start and the new one
    ///   meet on one host, where libvirt keeps a single domain;
    /// - the named host is not heard (partitioned, isolated, agent down) → wait, and say so.
    ///
    /// `restart` VMs are never given up on; only `best-effort` ones are (after one try).
    /// Proved by `master::tests::a_claim_for_a_host_that_never_started_the_vm_is_superseded_on_that_host`
    /// and the simulator's random schedules (seed 260 stayed down before this rule).
    fn watch_restarts(&mut self) {
        // Nothing under way (nearly always): nothing to build the cluster's picture for.
        if self.master.as_ref().is_none_or(|m| m.restarts.is_empty()) {
            return;
        }
        let t = self.config.timeouts;
        let now = self.now;
        let failed: BTreeSet<String> =
            self.peers.iter().filter(|(_, p)| p.verdict == Some(Verdict::Failed)).map(|(n, _)| n.clone()).collect();
        let window = t.dead_time_ms / 2;
        let mut alive: BTreeSet<String> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.verdict.is_none_or(|v| v == Verdict::Running)
                    && p.heard_directly_at.is_some_and(|at| now.saturating_sub(at) < window)
            })
            .map(|(n, _)| n.clone())
            .collect();
        alive.insert(self.name.clone());
        let running: BTreeMap<String, (String, u64)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.verdict != Some(Verdict::Failed))
            .flat_map(|(h, p)| p.vms.iter().map(move |r| (r.vm.clone(), (h.clone(), r.generation))))
            .chain(self.local_vms.iter().map(|(vm, g)| (vm.clone(), (self.name.clone(), *g))))
            .collect();
        let best_effort: BTreeSet<String> = self
            .config
            .vms
            .iter()
            .filter(|v| v.priority == RestartPriority::BestEffort)
            .map(|v| v.name.clone())
            .collect();
        let mut events = Vec::new();
        let Some(master) = self.master.as_mut() else { return };
        master.restarts.retain(|vm, r| {
            let claimed = r.generation + 1;
            let (host, since) = match &r.state {
                RestartState::ClaimedElsewhere { host, since }
                | RestartState::Starting { host, since }
                | RestartState::Claiming { host, since } => (host.clone(), *since),
                _ => return true,
            };
            let timed_out = now.saturating_sub(since) > t.start_timeout_ms;
            if let Some((on, g)) = running.get(vm)
                && *g >= claimed
            {
                // Running under the claimed generation or a later one: done, whoever started
                // it (another master, or our own start whose result was lost).
                let by = if matches!(r.state, RestartState::ClaimedElsewhere { .. }) { "another master" } else { "this master" };
                let what = if r.from.is_empty() { "started at the operator's request" } else { "restarted" };
                events.push((Severity::Info, EventKind::VmRestarted, format!("{vm} runs on {on} ({what} by {by})")));
                return false;
            }
            if matches!(r.state, RestartState::Claiming { .. }) {
                if timed_out {
                    // The claim's outcome is unknown: claim the same generation again; if the
                    // first attempt landed, the answer names us and the start goes ahead.
                    events.push((Severity::Warning, EventKind::ClaimTimeout, format!("{vm}: the claim did not complete within {}s; claiming again", t.start_timeout_ms / 1000)));
                    r.state = RestartState::Waiting { not_before: now };
                }
                return true;
            }
            if failed.contains(&host) {
                events.push((Severity::Warning, EventKind::RestartTargetFailed, format!("{vm}: {host} failed before it ran the VM (generation {claimed}); restarting it elsewhere under generation {}", claimed + 1)));
                r.from = host;
                r.generation = claimed;
                r.pinned = None;
                r.state = RestartState::Waiting { not_before: now };
                return true;
            }
            if !timed_out {
                return true;
            }
            if alive.contains(&host) {
                if best_effort.contains(vm) && r.attempts > 0 && matches!(r.state, RestartState::Starting { .. }) {
                    events.push((Severity::Alert, EventKind::RestartGaveUp, format!("{vm}: best-effort, its start on {host} did not report back within {}s; not retried", t.start_timeout_ms / 1000)));
                    r.state = RestartState::GaveUp;
                    return true;
                }
                events.push((Severity::Warning, EventKind::RestartSuperseded, format!("{vm}: {host} has not run generation {claimed} within {}s; claiming generation {} for {host} again (never for another host while it lives)", t.start_timeout_ms / 1000, claimed + 1)));
                r.generation = claimed;
                r.pinned = Some(host);
                r.state = RestartState::Waiting { not_before: now };
            } else if !r.waiting_reported {
                r.waiting_reported = true;
                events.push((Severity::Alert, EventKind::RestartWaiting, format!("{vm}: generation {claimed} is claimed for {host}, which this master cannot hear; waiting until {host} is heard again or proven failed")));
            }
            true
        });
        for (severity, kind, message) in events {
            self.record(severity, kind, message, None);
        }
    }

    /// Where VMs run as hosts last reported them (peers' heartbeats and this host).
    pub(super) fn reported_locations(&self) -> Locations {
        let mut locations: Locations = BTreeMap::new();
        for (host, peer) in &self.peers {
            for r in &peer.vms {
                locations.insert(r.vm.clone(), host.clone());
            }
        }
        for vm in self.local_vms.keys() {
            locations.insert(vm.clone(), self.name.clone());
        }
        locations
    }

    /// Free capacity per host as this master sees it, for placement.
    /// The hosts that can take VMs as this master sees them: the peers alive within the
    /// dead-time and judged running, and itself unless fenced or isolated.
    fn usable_hosts(&self) -> impl Iterator<Item = &String> {
        let window = self.config.timeouts.dead_time_ms;
        let itself = (!self.fenced && !self.isolated()).then_some(&self.name);
        self.live_peers(window)
            .filter(|(_, p)| p.verdict.is_none_or(|v| v == Verdict::Running))
            .map(|(n, _)| n)
            .chain(itself)
    }

    pub(super) fn host_usage(&self, reason: PlacementReason) -> Vec<HostUsage> {
        let usable: BTreeSet<String> = self.usable_hosts().cloned().collect();
        let mut locations = self.reported_locations();
        if let Some(master) = &self.master {
            for (vm, r) in &master.restarts {
                if let RestartState::Claiming { host, .. } | RestartState::Starting { host, .. } = &r.state {
                    locations.insert(vm.clone(), host.clone());
                }
            }
        }
        let mut usage: Vec<HostUsage> = self
            .config
            .hosts
            .iter()
            .filter(|h| usable.contains(&h.name))
            .map(|h| HostUsage {
                host: h.name.clone(),
                memory_mib: h.memory_mib,
                vcpus: h.vcpus,
                used: Usage::default(),
                maintenance: (self.maintenance.contains(&h.name) && reason != PlacementReason::AdmissionCheck)
                    || (self.quarantined(&h.name)
                        && matches!(reason, PlacementReason::Balance | PlacementReason::Evacuation)),
            })
            .collect();
        for (vm, host) in &locations {
            if let (Some(u), Some(spec)) = (usage.iter_mut().find(|u| u.host == *host), self.config.vm(vm)) {
                match spec.priority {
                    RestartPriority::Restart => u.used.restart_mib += spec.memory_mib,
                    RestartPriority::BestEffort => u.used.best_effort_mib += spec.memory_mib,
                    RestartPriority::Unprotected => u.used.unprotected_mib += spec.memory_mib,
                }
                u.used.vcpus += u64::from(spec.vcpus);
            }
        }
        usage
    }

    pub(super) fn placement_input(&self, reason: PlacementReason, vms: &[(String, String)]) -> PlacementInput {
        let usage = self.host_usage(reason);
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (host, peer) in &self.peers {
            for r in &peer.vms {
                if let Some(g) = self.config.vm(&r.vm).and_then(|s| s.anti_affinity_group.clone()) {
                    groups.entry(host.clone()).or_default().push(g);
                }
            }
        }
        // A host that holds another copy of a VM (one this master paused: started outside
        // halo) can take no start or migration of it: libvirt refuses a second domain of the
        // same name (simulator seed 10403: a maintenance moved a VM onto its paused copy).
        let copies = self.running_copies();
        PlacementInput {
            reason,
            vms: vms
                .iter()
                .filter_map(|(vm, avoid)| {
                    let mut place = capacity::to_place(self.config.vm(vm)?, avoid);
                    for host in copies.get(vm).into_iter().flat_map(|h| h.keys()) {
                        if !place.avoid_hosts.contains(host) {
                            place.avoid_hosts.push(host.clone());
                        }
                    }
                    Some(place)
                })
                .collect(),
            hosts: usage
                .iter()
                .map(|u| {
                    let mut host =
                        capacity::candidate(&self.config, u, groups.get(&u.host).cloned().unwrap_or_default());
                    host.datastores = self.datastores_of(&u.host);
                    host
                })
                .collect(),
            vcpu_overcommit_percent: self.config.ha.vcpu_overcommit_percent,
            settings: self.config.policy.placement.clone(),
        }
    }

    /// Where every VM runs or is being started now, as placement rules see it.
    fn placed_now(&self) -> BTreeMap<String, String> {
        let mut at = self.reported_locations();
        if let Some(master) = &self.master {
            for (vm, r) in &master.restarts {
                if let RestartState::Claiming { host, .. } | RestartState::Starting { host, .. } = &r.state {
                    at.insert(vm.clone(), host.clone());
                }
            }
        }
        at
    }

    /// Places `vms` (each with the host it leaves) for `reason` under the rules and reserved
    /// hosts (`rules::place`); a *should* rule broken because nothing else fit is an event.
    pub(super) fn place(
        &mut self,
        reason: PlacementReason,
        vms: &[(String, String)],
        policies: &mut dyn Policies,
    ) -> PolicyOutcome<halo_policy::Placement> {
        let input = self.placement_input(reason, vms);
        self.place_input(&input, policies)
    }

    /// [`Node::place`] of a ready input.
    pub(super) fn place_input(
        &mut self,
        input: &halo_policy::PlacementInput,
        policies: &mut dyn Policies,
    ) -> PolicyOutcome<halo_policy::Placement> {
        let placed = crate::rules::place(&self.config, input, &self.placed_now(), policies);
        if let Some(reason) = &placed.outcome.fallback_reason {
            self.record(
                Severity::Alert,
                EventKind::PluginFailed,
                format!("placement plugin failed, built-in policy decided: {reason}"),
                None,
            );
        }
        for (vm, rule) in placed.broken {
            let host = placed.outcome.answer.assignments.iter().find(|a| a.vm == vm).map_or("?", |a| a.host.as_str());
            self.record(
                Severity::Warning,
                EventKind::RuleBroken,
                format!("{vm} goes to {host} against {rule}: nothing else fits"),
                None,
            );
        }
        placed.outcome
    }

    /// Drops the queued restarts (not yet claimed) of VMs that a host this master hears now
    /// reports running — any copy but one this master paused: starting one would run the VM
    /// twice. A restart is queued on what the master knew then; a master back from a cut
    /// queues one before it hears the others again (simulator seed 14319, conservative
    /// timeouts: a copy started outside halo ran on host-3 while the master, back from a
    /// cut, restarted the VM its own host had stopped). Which copy stays is the duplicate
    /// watch's business, never a second start.
    fn drop_restarts_of_running_vms(&mut self) {
        let Some(master) = self.master.as_ref() else { return };
        let (now, window) = (self.now, self.config.timeouts.dead_time_ms);
        let paused = |vm: &str, host: &str| master.duplicates.get(vm).is_some_and(|d| d.paused.contains(host));
        let mut running: Vec<(String, String)> = Vec::new();
        for vm in
            master.restarts.iter().filter(|(_, r)| matches!(r.state, RestartState::Waiting { .. })).map(|(vm, _)| vm)
        {
            let on = self
                .peers
                .iter()
                .filter(|(_, p)| super::exclusivity::list_is_current(p, now, window))
                .find(|(host, p)| p.vms.iter().any(|r| r.vm == *vm) && !paused(vm, host))
                .map(|(host, _)| host.clone())
                .or_else(|| (self.local_vms.contains_key(vm) && !paused(vm, &self.name)).then(|| self.name.clone()));
            if let Some(on) = on {
                running.push((vm.clone(), on));
            }
        }
        for (vm, on) in running {
            if let Some(master) = self.master.as_mut() {
                master.restarts.remove(&vm);
            }
            self.record(
                Severity::Warning,
                EventKind::RestartDropped,
                format!("{vm} runs on {on}: its queued restart is dropped (a second copy is never started)"),
                None,
            );
        }
    }

    /// Starts the next wave when nothing is in flight.
    fn dispatch(&mut self, policies: &mut dyn Policies) {
        let now = self.now;
        let Some(master) = self.master.as_ref() else { return };
        let in_flight = master
            .restarts
            .values()
            .any(|r| matches!(r.state, RestartState::Claiming { .. } | RestartState::Starting { .. }));
        if in_flight || master.restarts.is_empty() {
            return;
        }
        self.drop_restarts_of_running_vms();
        let Some(master) = self.master.as_ref() else { return };
        let ready: Vec<String> = master
            .restarts
            .iter()
            .filter(|(_, r)| matches!(r.state, RestartState::Waiting { not_before } if not_before <= now))
            .map(|(vm, _)| vm.clone())
            .collect();
        let restart_first_try_pending = master.restarts.iter().any(|(vm, r)| {
            priority_of(&self.config, vm) == RestartPriority::Restart
                && r.attempts == 0
                && matches!(r.state, RestartState::Waiting { .. })
        });
        let ready: Vec<String> = if ready.iter().any(|vm| priority_of(&self.config, vm) == RestartPriority::Restart) {
            ready.into_iter().filter(|vm| priority_of(&self.config, vm) == RestartPriority::Restart).collect()
        } else if restart_first_try_pending {
            return;
        } else {
            ready
        };
        if ready.is_empty() {
            return;
        }
        let Some(datastore) = self.readable_datastore() else {
            // Said once until claims can be taken again: an operator sees why nothing starts.
            let newly = self.master.as_mut().is_some_and(|m| !std::mem::replace(&mut m.claims_blocked, true));
            if newly {
                let why = match &self.config.claim_store {
                    Some(store) => format!("the claim store {store} could not be written lately"),
                    None => "no datastore could be written lately".to_string(),
                };
                let message = format!(
                    "{} VM(s) wait for a restart ({}): {why}; a claim must be taken before a start",
                    ready.len(),
                    ready.join(", ")
                );
                self.record(Severity::Alert, EventKind::RestartWaiting, message, None);
            }
            return;
        };
        if let Some(m) = self.master.as_mut() {
            m.claims_blocked = false;
        }
        // Waves from the restart policy.
        let in_set: BTreeSet<&str> = ready.iter().map(String::as_str).collect();
        let input = RestartInput {
            vms: ready
                .iter()
                .filter_map(|vm| self.config.vm(vm))
                .map(|s| VmToRestart {
                    name: s.name.clone(),
                    priority: s.priority,
                    order: s.order,
                    group: s.group.clone(),
                    depends_on: s.depends_on.iter().filter(|d| in_set.contains(d.as_str())).cloned().collect(),
                })
                .collect(),
            settings: self.config.policy.restart.clone(),
        };
        let outcome = policies.restart_order(&input);
        if let Some(reason) = outcome.fallback_reason {
            self.record(
                Severity::Alert,
                EventKind::PluginFailed,
                format!("restart-order plugin failed, built-in policy decided: {reason}"),
                None,
            );
        }
        let wave: Vec<String> = match outcome.answer {
            Ok(waves) => waves.into_iter().find(|w| !w.is_empty()).unwrap_or_default(),
            Err(error) => {
                self.record(
                    Severity::Alert,
                    EventKind::RestartOrderError,
                    format!("restart order: {error}; restarting by priority only"),
                    None,
                );
                ready.clone()
            }
        };
        let Some(master) = self.master.as_ref() else { return };
        // A restart pinned to a host (see `watch_restarts`) goes there; placement decides
        // for the others.
        let mut pinned = Vec::new();
        let mut to_place = Vec::new();
        for vm in wave {
            let Some(r) = master.restarts.get(&vm) else { continue };
            match &r.pinned {
                Some(host) => pinned.push(halo_policy::Assignment { vm: vm.clone(), host: host.clone() }),
                None => to_place.push((vm.clone(), r.from.clone())),
            }
        }
        if pinned.is_empty() && to_place.is_empty() {
            return;
        }
        // A failover's VMs may go to reserved hosts first; an operator's start (no `from`)
        // may not.
        let (failover, started): (Vec<_>, Vec<_>) = to_place.into_iter().partition(|(_, from)| !from.is_empty());
        let mut placement = halo_policy::Placement::default();
        for (reason, vms) in [(PlacementReason::Failover, failover), (PlacementReason::Balance, started)] {
            if vms.is_empty() {
                continue;
            }
            let placed = self.place(reason, &vms, policies);
            placement.assignments.extend(placed.answer.assignments);
            placement.unplaced.extend(placed.answer.unplaced);
        }
        placement.assignments.extend(pinned);
        let epoch = self.master.as_ref().map_or(0, |m| m.epoch);
        let t = self.config.timeouts;
        let mut claims = Vec::new();
        let mut records = Vec::new();
        if !placement.assignments.is_empty() {
            let placed: Vec<String> = placement.assignments.iter().map(|a| format!("{} → {}", a.vm, a.host)).collect();
            records.push((Severity::Info, EventKind::RestartWave, format!("restart wave: {}", placed.join(", "))));
        }
        let Some(master) = self.master.as_mut() else { return };
        for assignment in placement.assignments {
            let Some(r) = master.restarts.get_mut(&assignment.vm) else { continue };
            r.attempts += 1;
            r.state = RestartState::Claiming { host: assignment.host.clone(), since: now };
            claims.push(Claim {
                vm: assignment.vm,
                generation: r.generation + 1,
                master: self.name.clone(),
                epoch,
                host: assignment.host,
            });
        }
        for unplaced in placement.unplaced {
            let Some(r) = master.restarts.get_mut(&unplaced.vm) else { continue };
            r.attempts += 1;
            if priority_of(&self.config, &unplaced.vm) == RestartPriority::Restart {
                let backoff = (t.retry_backoff_ms << r.attempts.min(16).saturating_sub(1)).min(t.retry_backoff_max_ms);
                r.state = RestartState::Waiting { not_before: now + backoff };
                if r.attempts == 1 {
                    records.push((
                        Severity::Alert,
                        EventKind::NoCapacity,
                        format!(
                            "{}: no host can take it ({}); retrying until capacity appears",
                            unplaced.vm, unplaced.reason
                        ),
                    ));
                }
            } else {
                r.state = RestartState::GaveUp;
                records.push((
                    Severity::Alert,
                    EventKind::NoCapacity,
                    format!("{}: best-effort, no host can take it ({}); not retried", unplaced.vm, unplaced.reason),
                ));
            }
        }
        for (severity, kind, message) in records {
            self.record(severity, kind, message, None);
        }
        for claim in claims {
            self.out.push(Action::Claim { datastore: datastore.clone(), claim });
        }
    }

    fn readable_datastore(&self) -> Option<String> {
        let readable =
            self.ds_read_ok_at.is_some_and(|at| self.now.saturating_sub(at) < self.config.timeouts.dead_time_ms / 2);
        if !readable {
            return None;
        }
        let window = self.config.timeouts.fence_timeout_ms;
        let written = |d: &&String| self.ds_write_ok_at.get(*d).is_some_and(|&at| self.now.saturating_sub(at) < window);
        // With a claim store (etcd) claims go there or nowhere: two masters must never claim
        // on two different stores.
        match &self.config.claim_store {
            Some(store) => Some(store).filter(written).cloned(),
            None => self.config.datastores.iter().find(written).cloned(),
        }
    }

    pub(super) fn on_claim(&mut self, claim: Claim, outcome: ClaimOutcome) {
        let now = self.now;
        let Some(master) = self.master.as_mut() else { return };
        let Some(r) = master.restarts.get_mut(&claim.vm) else { return };
        if !matches!(&r.state, RestartState::Claiming { host, .. } if *host == claim.host)
            || r.generation + 1 != claim.generation
        {
            return;
        }
        if matches!(outcome, ClaimOutcome::Won | ClaimOutcome::Lost(_)) {
            let holder = match &outcome {
                ClaimOutcome::Lost(holder) => holder.host.clone(),
                _ => claim.host.clone(),
            };
            self.note_claim(&claim.vm, claim.generation, &holder);
            self.claims_seen.insert(claim.vm.clone(), (holder, claim.generation, now));
        }
        let Some(master) = self.master.as_mut() else { return };
        let Some(r) = master.restarts.get_mut(&claim.vm) else { return };
        match outcome {
            ClaimOutcome::Won => {
                r.state = RestartState::Starting { host: claim.host.clone(), since: now };
                self.out.push(Action::StartVm { host: claim.host, vm: claim.vm, generation: claim.generation });
            }
            // Our own claim from an attempt whose answer was lost (same master, epoch and
            // host): it is ours to start.
            ClaimOutcome::Lost(holder) if holder == claim => {
                r.state = RestartState::Starting { host: claim.host.clone(), since: now };
                self.out.push(Action::StartVm { host: claim.host, vm: claim.vm, generation: claim.generation });
            }
            ClaimOutcome::Lost(holder) => {
                r.state = RestartState::ClaimedElsewhere { host: holder.host.clone(), since: now };
                let message = format!(
                    "{}: generation {} already claimed by {} (epoch {}) for {}; not started here",
                    claim.vm, claim.generation, holder.master, holder.epoch, holder.host
                );
                self.note_generation(&claim.vm, claim.generation);
                self.record(Severity::Warning, EventKind::ClaimLost, message, None);
            }
            ClaimOutcome::Failed(why) => {
                r.state = RestartState::Waiting { not_before: now + self.config.timeouts.retry_backoff_ms };
                self.record(
                    Severity::Warning,
                    EventKind::ClaimFailed,
                    format!("{}: claim failed ({why}); retrying", claim.vm),
                    None,
                );
            }
        }
    }

    pub(super) fn on_start(&mut self, vm: &str, host: &str, generation: u64, result: Result<(), StartError>) {
        let now = self.now;
        let t = self.config.timeouts;
        let Some(master) = self.master.as_mut() else { return };
        let Some(r) = master.restarts.get(vm) else { return };
        if !matches!(&r.state, RestartState::Starting { host: h, .. } if h == host) {
            return;
        }
        let lost_for = now.saturating_sub(r.since);
        match result {
            Ok(()) => {
                let from = r.from.clone();
                master.restarts.remove(vm);
                self.note_generation(vm, generation);
                // Our view moves with it now, so a host that dies before its next heartbeat
                // takes the VM with it in our books too (the heartbeats confirm).
                if let Some(peer) = self.peers.get_mut(host) {
                    peer.vms.retain(|r| r.vm != vm);
                    peer.vms.push(crate::wire::VmReport { vm: vm.to_string(), generation });
                }
                self.record(
                    Severity::Info,
                    EventKind::VmRestarted,
                    if from.is_empty() {
                        format!(
                            "{vm} started on {host} by the operator's request ({:.1}s after it)",
                            lost_for as f64 / 1000.0
                        )
                    } else {
                        format!(
                            "{vm} restarted on {host} (from {from}, {:.1}s after it was found lost)",
                            lost_for as f64 / 1000.0
                        )
                    },
                    None,
                );
            }
            Err(StartError::LeaseHeld(why)) => {
                // The storage lease refused the start: another host holds it (its copy may still
                // run, or it died and the lease has not expired). Not the target's failure and
                // not an attempt: tried again at the base interval, best-effort VMs too, until
                // the lease is free or the VM is seen running.
                let Some(r) = master.restarts.get_mut(vm) else { return };
                r.generation = generation;
                r.attempts = r.attempts.saturating_sub(1);
                r.state = RestartState::Waiting { not_before: now + t.retry_backoff_ms };
                if !std::mem::replace(&mut r.lease_wait_reported, true) {
                    let message = format!(
                        "{vm}: its storage lease is held by another host ({why}); waiting for the lease to be released or to expire, trying every {:.0}s",
                        t.retry_backoff_ms as f64 / 1000.0
                    );
                    self.record(Severity::Warning, EventKind::LeaseWait, message, None);
                }
            }
            Err(StartError::Failed(why)) => {
                let restart = self.config.vm(vm).is_some_and(|s| s.priority == RestartPriority::Restart);
                let Some(r) = master.restarts.get_mut(vm) else { return };
                // The claim for `generation` is spent; the next attempt claims the one after.
                r.generation = generation;
                r.from = host.to_string();
                r.pinned = None;
                let message = if restart {
                    let backoff =
                        (t.retry_backoff_ms << r.attempts.min(16).saturating_sub(1)).min(t.retry_backoff_max_ms);
                    r.state = RestartState::Waiting { not_before: now + backoff };
                    format!("{vm}: start on {host} failed ({why}); retrying in {:.0}s", backoff as f64 / 1000.0)
                } else {
                    r.state = RestartState::GaveUp;
                    format!("{vm}: start on {host} failed ({why}); best-effort, not retried")
                };
                self.record(Severity::Alert, EventKind::StartFailed, message, None);
            }
        }
    }

    fn refresh_plan(&mut self, policies: &mut dyn Policies, force: bool) {
        // The same inputs give the same plan: computing it places every VM for every failure
        // count tried, so an unchanged cluster is not planned again — but at least every
        // `PLAN_MAX_AGE` (a placement plugin swapped at run time plans differently), and
        // always when asked (`failover_plan`). Unchanged: the same fingerprint.
        let fingerprint = self.plan_fingerprint();
        let planned = self.master.as_ref().is_some_and(|m| m.plan.is_some());
        if let Some((previous, at)) = self.plan_inputs
            && !force
            && planned
            && previous == fingerprint
            && self.now.saturating_sub(at) < PLAN_MAX_AGE
        {
            if let Some(master) = self.master.as_mut() {
                master.plan_due = self.now + 5 * self.config.timeouts.heartbeat_interval_ms;
            }
            return;
        }
        let usage = self.host_usage(PlacementReason::AdmissionCheck);
        let available: BTreeSet<String> =
            usage.iter().filter(|u| !self.maintenance.contains(&u.host)).map(|u| u.host.clone()).collect();
        let locations = self.reported_locations();
        let plan = capacity::failover_plan(&self.config, &locations, &available, &self.maintenance, policies);
        self.plan_inputs = Some((fingerprint, self.now));
        let previous = self.master.as_ref().and_then(|m| m.plan.as_ref()).map(|p| p.tolerates);
        if previous != Some(plan.tolerates) {
            let (severity, kind) = if plan.tolerates == 0 {
                (Severity::Alert, EventKind::ToleranceZero)
            } else if plan.overcommitted {
                (Severity::Alert, EventKind::ToleranceBelowTarget)
            } else {
                (Severity::Info, EventKind::FailoverPlan)
            };
            self.record(
                severity,
                kind,
                format!(
                    "failover plan: the cluster tolerates {} host failure(s) (target {}){}",
                    plan.tolerates,
                    plan.target,
                    if plan.overcommitted { " — overcommitted" } else { "" }
                ),
                None,
            );
        }
        let Some(master) = self.master.as_mut() else { return };
        master.plan = Some(plan);
        master.plan_due = self.now + 5 * self.config.timeouts.heartbeat_interval_ms;
    }

    /// What the failover plan is computed from, besides the policies, as one number: where
    /// the VMs are reported, which hosts can take VMs (`host_usage`'s usable hosts), the
    /// maintenance set and the configuration's epoch.
    fn plan_fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = rustc_hash::FxHasher::default();
        for (name, p) in &self.peers {
            name.hash(&mut h);
            p.vms.len().hash(&mut h);
            for r in &p.vms {
                r.vm.hash(&mut h);
            }
        }
        self.local_vms.len().hash(&mut h);
        for vm in self.local_vms.keys() {
            vm.hash(&mut h);
        }
        for host in self.usable_hosts() {
            host.hash(&mut h);
        }
        self.maintenance.hash(&mut h);
        self.config_epoch.hash(&mut h);
        h.finish()
    }

    /// The failover plan now (master only), recomputed.
    pub fn failover_plan(&mut self, policies: &mut dyn Policies) -> Option<FailoverPlan> {
        self.master.as_ref()?;
        self.refresh_plan(policies, true);
        self.master.as_ref().and_then(|m| m.plan.clone())
    }

    pub(super) fn enter_maintenance(&mut self, host: &str, policies: &mut dyn Policies) {
        if self.master.is_none() {
            let master = self.master_view.as_ref().map_or("nobody yet".to_string(), |(m, _)| m.clone());
            self.record(
                Severity::Warning,
                EventKind::CommandRefused,
                format!("maintenance of {host}: ask the master ({master})"),
                None,
            );
            return;
        }
        if self.config.host(host).is_none() {
            self.record(
                Severity::Warning,
                EventKind::CommandRefused,
                format!("maintenance: no host named {host}"),
                None,
            );
            return;
        }
        // Admission: would the plan hold without this host?
        let before = self.failover_plan(policies).map_or(0, |p| p.tolerates);
        let mut after_maintenance = self.maintenance.clone();
        after_maintenance.insert(host.to_string());
        let usage = self.host_usage(PlacementReason::AdmissionCheck);
        let available: BTreeSet<String> =
            usage.iter().map(|u| u.host.clone()).filter(|h| !after_maintenance.contains(h)).collect();
        let locations = self.reported_locations();
        let evacuees: Vec<(String, String)> =
            locations.iter().filter(|(_, h)| *h == host).map(|(vm, h)| (vm.clone(), h.clone())).collect();
        let moved = {
            let input = self.placement_input(PlacementReason::AdmissionCheck, &evacuees);
            let answer = crate::rules::place(&self.config, &input, &locations, policies).outcome.answer;
            let mut moved = locations.clone();
            for a in answer.assignments {
                moved.insert(a.vm, a.host);
            }
            moved
        };
        let (verdict, _) = capacity::admission_check(
            &self.config,
            (&moved, &available, &after_maintenance),
            before,
            &format!("{host} entering maintenance"),
            policies,
        );
        match verdict {
            capacity::AdmissionVerdict::Refused(why) => {
                self.record(Severity::Alert, EventKind::MaintenanceRefused, why, None);
                return;
            }
            capacity::AdmissionVerdict::Warned(why) => {
                self.record(Severity::Alert, EventKind::AdmissionWarning, why, None)
            }
            capacity::AdmissionVerdict::Admitted => {}
        }
        self.maintenance.insert(host.to_string());
        let Some(master) = self.master.as_mut() else { return };
        master.evacuating.insert(host.to_string());
        master.plan_due = self.now;
        self.record(
            Severity::Info,
            EventKind::MaintenanceEntered,
            format!("{host} enters maintenance: evacuating {} VM(s)", evacuees.len()),
            None,
        );
    }

    pub(super) fn exit_maintenance(&mut self, host: &str) {
        if self.master.is_none() {
            self.record(
                Severity::Warning,
                EventKind::CommandRefused,
                format!("maintenance of {host}: ask the master"),
                None,
            );
            return;
        }
        self.maintenance.remove(host);
        if let Some(m) = self.master.as_mut() {
            m.evacuating.remove(host);
            m.plan_due = self.now; // the plan counts the host again at once
        }
        self.record(Severity::Info, EventKind::MaintenanceExited, format!("{host} is back in service"), None);
    }

    /// The operator moves one VM live to `to` (master only). Refused, with the reason as a
    /// `command-refused` event, when the VM is not known to run anywhere, is moving already, or
    /// the target is not a live host outside maintenance.
    pub(super) fn migrate_one(&mut self, vm: &str, to: Option<&str>, policies: &mut dyn Policies) {
        let target = to.map_or_else(|| "the cluster".to_string(), str::to_string);
        let refuse = |node: &mut Self, why: String| {
            node.record(Severity::Warning, EventKind::CommandRefused, format!("migrate {vm} to {target}: {why}"), None)
        };
        let Some(master) = self.master.as_ref() else {
            let master = self.master_view.as_ref().map_or("nobody yet".to_string(), |(m, _)| m.clone());
            return refuse(self, format!("ask the master ({master})"));
        };
        if master.migrating.contains(vm) {
            return refuse(self, "it is being migrated already".into());
        }
        if let Some(why) = self.moves_barred() {
            return refuse(self, format!("not now: {why}"));
        }
        if self.storage_moving(vm) {
            return refuse(self, "its disks are being moved".into());
        }
        if let Some(copies) = self.running_copies().get(vm).filter(|c| c.len() > 1) {
            let hosts: Vec<&String> = copies.keys().collect();
            return refuse(
                self,
                format!(
                    "it runs on {} hosts ({}): a copy was started outside halo; settle that first",
                    hosts.len(),
                    hosts.iter().map(|h| h.as_str()).collect::<Vec<_>>().join(", ")
                ),
            );
        }
        let Some(from) = self.reported_locations().get(vm).cloned() else {
            return refuse(self, "it runs on no host this master hears".into());
        };
        if self.paused_on(vm, &from) {
            return refuse(
                self,
                format!("it is paused on {from} (held after a gap until its claim is settled, or on an I/O error)"),
            );
        }
        let to = match to {
            Some(to) => to.to_string(),
            // To the cluster: the placement policy chooses among the hosts in contact now.
            None => {
                let outcome = self.place(PlacementReason::Balance, &[(vm.to_string(), from.clone())], policies);
                match outcome.answer.assignments.into_iter().find(|a| a.vm == vm) {
                    Some(a) if a.host != from && self.heard_lately(&a.host) => a.host,
                    Some(a) if a.host == from => {
                        return refuse(self, "the placement policy keeps it where it is".into());
                    }
                    Some(a) => {
                        return refuse(self, format!("the placement policy chose {}, not in contact now", a.host));
                    }
                    None => {
                        let why = outcome.answer.unplaced.into_iter().find(|u| u.vm == vm).map(|u| u.reason);
                        return refuse(
                            self,
                            format!("no host can take it ({})", why.unwrap_or_else(|| "not placed".into())),
                        );
                    }
                }
            }
        };
        let to = to.as_str();
        if from == to {
            return refuse(self, format!("it runs on {to} already"));
        }
        if self.config.host(to).is_none() {
            return refuse(self, format!("no host named {to}"));
        }
        if self.maintenance.contains(to) {
            return refuse(self, format!("{to} is in maintenance"));
        }
        let alive = to == self.name || self.peers.get(to).is_some_and(|p| p.verdict == Some(Verdict::Running));
        if !alive {
            return refuse(self, format!("{to} is not running (see halo status)"));
        }
        if !self.heard_lately(to) {
            return refuse(self, format!("{to} has not been heard in the last few heartbeats; try again when it is"));
        }
        let Some(master) = self.master.as_mut() else { return };
        master.migrating.insert(vm.to_string());
        self.record(Severity::Info, EventKind::MigrationStarted, format!("{vm}: live migration {from} → {to}"), None);
        self.out.push(Action::MigrateVm { vm: vm.to_string(), from, to: to.to_string() });
    }

    /// `halo vm start`: a protected VM that runs nowhere is started under a claim for its
    /// next generation, like a restart (on `on`, or where the placement policy puts it).
    pub(super) fn start_one(&mut self, vm: &str, on: Option<&str>) {
        let refuse = |node: &mut Self, why: String| {
            node.record(Severity::Warning, EventKind::CommandRefused, format!("start {vm}: {why}"), None)
        };
        let Some(master) = self.master.as_ref() else {
            let master = self.master_view.as_ref().map_or("nobody yet".to_string(), |(m, _)| m.clone());
            return refuse(self, format!("ask the master ({master})"));
        };
        if master.restarts.contains_key(vm) {
            return refuse(self, "a restart of it is under way".into());
        }
        let Some(spec) = self.config.vm(vm) else {
            return refuse(self, format!("no VM named {vm} in the configuration"));
        };
        if !spec.protected() {
            return refuse(self, "it is not protected: start it with libvirt (virsh start)".into());
        }
        if let Some(hosts) = self.running_copies().get(vm) {
            let hosts: Vec<&str> = hosts.keys().map(String::as_str).collect();
            return refuse(self, format!("it runs on {} already", hosts.join(", ")));
        }
        if let Some(host) = on {
            if self.config.host(host).is_none() {
                return refuse(self, format!("no host named {host}"));
            }
            if self.maintenance.contains(host) {
                return refuse(self, format!("{host} is in maintenance"));
            }
            if !self.heard_lately(host) {
                return refuse(self, format!("{host} has not been heard in the last few heartbeats"));
            }
        }
        let generation = self.generations.get(vm).copied().unwrap_or(1);
        let now = self.now;
        let Some(master) = self.master.as_mut() else { return };
        master.restarts.insert(
            vm.to_string(),
            Restart {
                pinned: on.map(str::to_string),
                ..Restart::new(String::new(), generation, now, RestartState::Waiting { not_before: now })
            },
        );
        self.record(
            Severity::Info,
            EventKind::VmStartRequested,
            format!(
                "{vm}: started by the operator, under a claim for generation {} ({})",
                generation + 1,
                on.map_or("where the placement policy puts it".to_string(), |h| format!("on {h}"))
            ),
            None,
        );
    }

    /// Whether `host` is this node, or was heard directly and acknowledged this node within
    /// the last three heartbeat intervals: a VM is moved live only to a host that is in
    /// contact now (a verdict can still say "running" seconds after a host was cut off;
    /// found by the simulator, conservative timeouts, seed 10068).
    /// Why this master must not move running VMs now, if it must not: its view is not the
    /// cluster's — it is isolated, fenced, in a minority or past the blast radius (restarts are
    /// suppressed), or a host has just gone silent and its state is not known yet (a master in
    /// the smaller side of a fresh partition still holds its peers' old verdicts). A migration
    /// then would move a VM where the master that acts on the cluster does not see it
    /// (simulator seed 477).
    pub(super) fn moves_barred(&self) -> Option<String> {
        let master = self.master.as_ref()?;
        if let Some(why) = &master.suppressed {
            return Some(why.clone());
        }
        let silent = self.config.hosts.iter().find(|h| {
            let verdict = self.peers.get(&h.name).and_then(|p| p.verdict);
            !self.maintenance.contains(&h.name)
                && !self.heard_lately(&h.name)
                && matches!(verdict, None | Some(Verdict::Running | Verdict::Suspect | Verdict::Unknown))
        })?;
        Some(format!("{} has gone silent and its state is not known yet", silent.name))
    }

    pub(super) fn heard_lately(&self, host: &str) -> bool {
        let window = 3 * self.config.timeouts.heartbeat_interval_ms;
        let recent = |at: Option<Millis>| at.is_some_and(|at| self.now.saturating_sub(at) <= window);
        host == self.name
            || self.peers.get(host).is_some_and(|p| recent(p.heard_directly_at) && recent(p.ack_advanced_at))
    }

    /// Live-migrates the VMs of hosts in maintenance, a few at a time.
    fn continue_evacuations(&mut self, policies: &mut dyn Policies) {
        let (now, settle) = (self.now, self.config.timeouts.dead_time_ms);
        let Some(master) = self.master.as_mut() else { return };
        master.moved.retain(|_, (_, at)| now.saturating_sub(*at) < settle);
        if master.evacuating.is_empty() || !master.migrating.is_empty() {
            return;
        }
        if self.moves_barred().is_some() {
            return;
        }
        let Some(master) = self.master.as_mut() else { return };
        let evacuating: Vec<String> = master.evacuating.iter().cloned().collect();
        let moved = master.moved.clone();
        for host in evacuating {
            let just_left = |vm: &String| moved.get(vm).is_some_and(|(from, _)| *from == host);
            let vms: Vec<(String, String)> = if host == self.name {
                self.local_vms.keys().map(|vm| (vm.clone(), host.clone())).collect()
            } else {
                self.peers
                    .get(&host)
                    .map(|p| p.vms.iter().filter(|r| !just_left(&r.vm)).map(|r| (r.vm.clone(), host.clone())).collect())
                    .unwrap_or_default()
            };
            // A paused VM waits here until it runs again (or is stopped): moved paused, it
            // would stay paused where it lands (simulator seed 14102).
            let vms: Vec<(String, String)> = if vms.is_empty() {
                vms
            } else {
                let movable: Vec<(String, String)> =
                    vms.iter().filter(|(vm, host)| !self.paused_on(vm, host)).cloned().collect();
                if movable.is_empty() {
                    continue;
                }
                movable
            };
            if vms.is_empty() {
                if let Some(master) = self.master.as_mut() {
                    master.evacuating.remove(&host);
                }
                self.record(
                    Severity::Info,
                    EventKind::HostEvacuated,
                    format!("{host} is evacuated: safe to stop"),
                    None,
                );
                continue;
            }
            let outcome = self.place(PlacementReason::Evacuation, &vms, policies);
            // Only to a host in contact now; the others wait for the next round.
            let in_contact: Vec<_> =
                outcome.answer.assignments.into_iter().filter(|a| self.heard_lately(&a.host)).collect();
            for a in in_contact {
                let Some(master) = self.master.as_mut() else { return };
                master.migrating.insert(a.vm.clone());
                self.out.push(Action::MigrateVm { vm: a.vm, from: host.clone(), to: a.host });
            }
            for u in outcome.answer.unplaced {
                self.record(
                    Severity::Alert,
                    EventKind::EvacuationBlocked,
                    format!("{}: cannot leave {host} ({})", u.vm, u.reason),
                    None,
                );
            }
            return;
        }
    }

    pub(super) fn on_migrate(&mut self, vm: &str, from: &str, to: &str, result: Result<(), String>) {
        let now = self.now;
        let Some(master) = self.master.as_mut() else { return };
        master.migrating.remove(vm);
        match result {
            Ok(()) => {
                master.moved.insert(vm.to_string(), (from.to_string(), now));
                // halo's copy of a duplicated VM moved: the copy kept moves with it.
                if let Some(duplicate) = master.duplicates.get_mut(vm)
                    && duplicate.kept.as_deref() == Some(from)
                {
                    duplicate.kept = Some(to.to_string());
                }
                // The copy that arrived is the one that ran before: a copy started outside
                // halo meanwhile elsewhere is the newcomer (simulator seed 2819: halo's copy,
                // just moved by an evacuation, was taken for the new one and paused for good).
                if let Some(at) = master.first_seen.remove(vm, from) {
                    master.first_seen.lower(vm, to, at);
                }
                // The claim's host is where the VM ran when claimed: its copy now runs on `to`
                // (simulator seed 1902: a copy started outside halo on the claim's host after
                // the VM left it was taken for halo's).
                if let Some((_, host, _)) = self.claimed.get_mut(vm)
                    && host == from
                {
                    *host = to.to_string();
                }
                // Our view moves with it now; the next heartbeats confirm.
                let generation =
                    self.peers.get(from).and_then(|p| p.vms.iter().find(|r| r.vm == vm)).map(|r| r.generation);
                if let Some(peer) = self.peers.get_mut(from) {
                    peer.vms.retain(|r| r.vm != vm);
                }
                if let (Some(peer), Some(generation)) = (self.peers.get_mut(to), generation) {
                    peer.vms.push(crate::wire::VmReport { vm: vm.to_string(), generation });
                }
                self.record(
                    Severity::Info,
                    EventKind::VmMigrated,
                    format!("{vm} migrated live from {from} to {to}"),
                    None,
                )
            }
            Err(why) => self.record(
                Severity::Alert,
                EventKind::MigrationFailed,
                format!("{vm}: migration {from} → {to} failed: {why}"),
                None,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::beat_with;
    use super::super::{Command, Input, Node, PingTarget};
    use super::*;
    use crate::config::tests::cluster;
    use crate::policies::BuiltinPolicies;
    use crate::wire::VmReport;

    #[test]
    fn a_heartbeat_sent_before_a_vm_left_does_not_move_it_again() {
        // host-1 is master; host-2 enters maintenance with vm-1 and vm-2, both moved at once.
        // vm-1's migration reports success, then a heartbeat host-2 sent before it saw vm-1
        // leave still lists it, then vm-2's migration ends (seen on the lab: vm-1 was moved a
        // second time, which failed, and `halo host maintenance enter` reported a failure).
        let mut node = Node::new("host-1", cluster(3, 2), 0);
        let mut p = BuiltinPolicies;
        let both =
            || vec![VmReport { vm: "vm-1".into(), generation: 1 }, VmReport { vm: "vm-2".into(), generation: 1 }];
        let mut all: Vec<Action> = Vec::new();
        for now in (0..5_000).step_by(100) {
            let seq = now / 100 + 1;
            node.handle(now, beat_with("host-2", seq, &[("host-1", seq)], both()), &mut p);
            node.handle(now, beat_with("host-3", seq, &[("host-1", seq)], vec![]), &mut p);
            node.handle(now, Input::DatastoreWritten { datastore: "ds1".into(), ok: true }, &mut p);
            node.handle(now, Input::Tick, &mut p);
        }
        assert!(node.is_master());
        let enter = Input::Command(super::super::Command::EnterMaintenance("host-2".into()));
        all.extend(node.handle(5_000, enter, &mut p));
        all.extend(node.handle(5_100, Input::Tick, &mut p));
        let target = |all: &[Action], vm: &str| {
            all.iter().find_map(|a| match a {
                Action::MigrateVm { vm: v, to, .. } if v == vm => Some(to.clone()),
                _ => None,
            })
        };
        let (Some(to1), Some(to2)) = (target(&all, "vm-1"), target(&all, "vm-2")) else {
            panic!("both VMs move at once: {all:?}")
        };
        let result = |vm: &str, to: &str| Input::MigrateResult {
            vm: vm.into(),
            from: "host-2".into(),
            to: to.into(),
            result: Ok(()),
        };
        all.extend(node.handle(5_900, result("vm-1", &to1), &mut p));
        all.extend(node.handle(5_950, beat_with("host-2", 80, &[("host-1", 80)], both()), &mut p));
        all.extend(node.handle(6_000, Input::Tick, &mut p));
        all.extend(node.handle(6_050, result("vm-2", &to2), &mut p));
        for now in (6_100..7_000).step_by(100) {
            all.extend(node.handle(now, Input::Tick, &mut p));
        }
        let kinds: Vec<&str> = all
            .iter()
            .filter_map(|a| match a {
                Action::Record(e) => Some(e.kind.as_str()),
                _ => None,
            })
            .collect();
        let moves = all.iter().filter(|a| matches!(a, Action::MigrateVm { .. })).count();
        assert_eq!(moves, 2, "no VM moved twice: {all:?}");
        assert!(!kinds.iter().any(|k| matches!(*k, "evacuation-blocked" | "migration-failed")), "{kinds:?}");
        assert!(kinds.contains(&"host-evacuated"), "host-2 is evacuated: {kinds:?}");
    }

    #[test]
    fn a_queued_restart_is_dropped_when_a_host_heard_now_runs_the_vm() {
        // vm-1 runs on host-2, which stops it (and says so); the master cannot claim (no
        // datastore read lately), so the restart waits; host-3 then reports vm-1 running (a
        // copy started there by hand). No claim may follow when the datastore is back
        // (simulator seed 14319 ran it twice).
        let mut node = Node::new("host-1", cluster(3, 1), 0);
        let mut p = BuiltinPolicies;
        let vm1 = || vec![VmReport { vm: "vm-1".into(), generation: 1 }];
        let mut all: Vec<Action> = Vec::new();
        for now in (0..24_000).step_by(100) {
            let seq = now / 100 + 1;
            let mut from_2 = beat_with("host-2", seq, &[("host-1", seq)], if now < 12_000 { vm1() } else { vec![] });
            if now >= 12_000
                && let Input::Heartbeat { heartbeat, .. } = &mut from_2
            {
                std::sync::Arc::make_mut(heartbeat).stopped = vm1();
            }
            all.extend(node.handle(now, from_2, &mut p));
            let on_3 = if now >= 13_000 { vm1() } else { vec![] };
            all.extend(node.handle(now, beat_with("host-3", seq, &[("host-1", seq)], on_3), &mut p));
            // The datastore answers until 5 s and again from 16 s.
            let datastore = !(5_000..16_000).contains(&now);
            all.extend(node.handle(now, Input::DatastoreWritten { datastore: "ds1".into(), ok: datastore }, &mut p));
            if datastore {
                all.extend(node.handle(
                    now,
                    Input::DatastoreRead { datastore: "ds1".into(), records: Ok(vec![]) },
                    &mut p,
                ));
            }
            all.extend(node.handle(now, Input::Tick, &mut p));
        }
        let kinds: Vec<EventKind> = all
            .iter()
            .filter_map(|a| match a {
                Action::Record(e) => Some(e.kind),
                _ => None,
            })
            .collect();
        assert!(kinds.contains(&EventKind::VmLost), "the stop was seen: {kinds:?}");
        assert!(kinds.contains(&EventKind::RestartDropped), "{kinds:?}");
        let claims: Vec<&Action> =
            all.iter().filter(|a| matches!(a, Action::Claim { .. } | Action::StartVm { .. })).collect();
        assert!(claims.is_empty(), "no second copy: {claims:?}");
    }

    /// The built-in policies, counting the placements asked for.
    #[derive(Default)]
    struct CountingPolicies(usize);

    impl Policies for CountingPolicies {
        fn isolation(
            &mut self,
            input: &halo_policy::IsolationInput,
        ) -> crate::policies::PolicyOutcome<Vec<halo_policy::VmIsolationDecision>> {
            BuiltinPolicies.isolation(input)
        }
        fn placement(
            &mut self,
            input: &halo_policy::PlacementInput,
        ) -> crate::policies::PolicyOutcome<halo_policy::Placement> {
            self.0 += 1;
            BuiltinPolicies.placement(input)
        }
        fn restart_order(
            &mut self,
            input: &halo_policy::RestartInput,
        ) -> crate::policies::PolicyOutcome<Result<Vec<halo_policy::Wave>, halo_policy::RestartError>> {
            BuiltinPolicies.restart_order(input)
        }
        fn balance(
            &mut self,
            input: &halo_policy::balance::BalanceInput,
        ) -> crate::policies::PolicyOutcome<Vec<halo_policy::balance::BalanceMove>> {
            BuiltinPolicies.balance(input)
        }
    }

    #[test]
    fn an_unchanged_cluster_is_not_planned_again_but_a_change_or_its_age_plans_it_at_once() {
        let mut node = Node::new("host-1", cluster(3, 2), 0);
        let mut p = CountingPolicies::default();
        let vms = |host: &str| match host {
            "host-2" => vec![VmReport { vm: "vm-1".into(), generation: 1 }],
            _ => vec![VmReport { vm: "vm-2".into(), generation: 1 }],
        };
        let run = |node: &mut Node, p: &mut CountingPolicies, from: u64, to: u64| {
            for now in (from..to).step_by(100) {
                let seq = now / 100 + 1;
                for peer in ["host-2", "host-3"] {
                    // At 20 s vm-2 moves from host-3 to host-2.
                    let mut list = vms(peer);
                    if now >= 20_000 {
                        list = if peer == "host-2" { [vms("host-2"), vms("host-3")].concat() } else { vec![] };
                    }
                    node.handle(now, beat_with(peer, seq, &[("host-1", seq)], list), p);
                }
                node.handle(now, Input::DatastoreWritten { datastore: "ds1".into(), ok: true }, p);
                node.handle(now, Input::Tick, p);
            }
        };
        run(&mut node, &mut p, 0, 5_000);
        assert!(node.is_master() && node.master.as_ref().is_some_and(|m| m.plan.is_some()), "planned");
        // Unchanged for 10 s: refreshed eight times, planned never.
        let before = p.0;
        run(&mut node, &mut p, 5_000, 15_000);
        assert_eq!(p.0, before, "an unchanged cluster is not placed again");
        // A VM moved: planned at the next refresh.
        let refresh = 5 * node.config.timeouts.heartbeat_interval_ms;
        let planned = 20_000 + refresh + 1_000;
        run(&mut node, &mut p, 15_000, planned);
        assert!(p.0 > before, "a move plans again");
        // Unchanged again: planned again once it is PLAN_MAX_AGE old.
        let after_move = p.0;
        let aged = 20_000 + PLAN_MAX_AGE;
        run(&mut node, &mut p, planned, aged - refresh);
        assert_eq!(p.0, after_move, "unchanged since the move");
        run(&mut node, &mut p, aged - refresh, aged + 2 * refresh + 1_000);
        assert!(p.0 > after_move, "planned again at its age (a plugin swapped meanwhile plans differently)");
        // Asked for (the API, a maintenance's admission): always planned.
        let asked = p.0;
        assert!(node.failover_plan(&mut p).is_some());
        assert!(p.0 > asked, "planned when asked");
    }

    /// host-1 (master) hears host-2 and host-3 until `cut`; host-2 runs vm-1. After the cut
    /// host-2's signals are `net`/`ds`/`ping`; returns every action until 40 s.
    fn after_cut(net: bool, ds: bool, ping: bool, claim: impl Fn(&Claim) -> ClaimOutcome) -> Vec<Action> {
        after_cut_until(40_000, net, ds, ping, claim)
    }

    /// [`after_cut`] for `until` ms. Starts are never answered and host-3 never reports vm-1.
    fn after_cut_until(
        until: u64,
        net: bool,
        ds: bool,
        ping: bool,
        claim: impl Fn(&Claim) -> ClaimOutcome,
    ) -> Vec<Action> {
        after_cut_on(cluster(3, 2), &["ds1"], until, net, ds, ping, claim)
    }

    /// [`after_cut_until`] with `config`, whose stores `written` are written (and read) well.
    fn after_cut_on(
        config: crate::ClusterConfig,
        written: &[&str],
        until: u64,
        net: bool,
        ds: bool,
        ping: bool,
        claim: impl Fn(&Claim) -> ClaimOutcome,
    ) -> Vec<Action> {
        let mut node = Node::new("host-1", config, 0);
        let mut p = BuiltinPolicies;
        let cut = 5_000;
        let mut counter = 0;
        let mut all = Vec::new();
        for now in (0..until).step_by(100) {
            let mut inputs = vec![Input::Tick];
            if now % 1000 == 0 {
                let seq = now / 1000 + 1;
                inputs.push(beat_with("host-3", seq, &[("host-1", seq)], vec![]));
                if now < cut || net {
                    let vms = vec![VmReport { vm: "vm-1".into(), generation: 1 }];
                    inputs.push(beat_with("host-2", seq, &[("host-1", seq)], vms));
                }
                for store in written {
                    inputs.push(Input::DatastoreWritten { datastore: store.to_string(), ok: true });
                }
                if now < cut || ds {
                    counter += 1;
                }
                let records = vec![
                    DatastoreRecord { host: "host-2".into(), counter, isolated: false, stopped: vec![] },
                    DatastoreRecord { host: "host-3".into(), counter: now, isolated: false, stopped: vec![] },
                ];
                for store in written {
                    inputs.push(Input::DatastoreRead { datastore: store.to_string(), records: Ok(records.clone()) });
                }
            }
            let mut queue: std::collections::VecDeque<Input> = inputs.into();
            while let Some(input) = queue.pop_front() {
                for action in node.handle(now, input, &mut p) {
                    match &action {
                        Action::Ping { target: PingTarget::Host(h) } => {
                            queue.push_back(Input::PingResult { target: PingTarget::Host(h.clone()), answered: ping });
                        }
                        Action::Claim { claim: c, .. } => {
                            queue.push_back(Input::ClaimResult { claim: c.clone(), outcome: claim(c) });
                        }
                        _ => {}
                    }
                    all.push(action);
                }
            }
        }
        all
    }

    /// host-1 (master) and host-3 hear host-2 (running vm-1) until 5 s. HA is off from 2 s
    /// until `ha_on_at`, on every host that hears it; host-2 says so in its heartbeats (it
    /// cannot learn HA is on again once cut off, so it never fences). `heard_after_on`: host-2
    /// is heard once more, saying HA is on, just after it was switched on, then falls silent.
    /// `unarmed`: host-2 says vm-1 is unprotected in its configuration (it would leave it
    /// running when cut off), whatever the master's says.
    fn cut_while_ha_off(ha_on_at: u64, heard_after_on: bool, unarmed: bool) -> Vec<Action> {
        let config = cluster(3, 2);
        let mut node = Node::new("host-1", config.clone(), 0);
        let mut p = BuiltinPolicies;
        let mut all = Vec::new();
        let with_ha = |on: bool| {
            let mut c = config.clone();
            c.ha.enabled = on;
            Input::ConfigChanged(Box::new(c))
        };
        let beat = |from: &str, seq: u64, vms: Vec<VmReport>, ha_off: bool| {
            let mut input = beat_with(from, seq, &[("host-1", seq)], vms);
            if let Input::Heartbeat { heartbeat, .. } = &mut input {
                std::sync::Arc::make_mut(heartbeat).ha_off = ha_off;
                if unarmed && heartbeat.from == "host-2" {
                    std::sync::Arc::make_mut(heartbeat).unarmed = vec!["vm-1".into()];
                }
            }
            input
        };
        for now in (0..40_000).step_by(100) {
            let mut inputs = vec![Input::Tick];
            if now == 2_000 {
                inputs.push(with_ha(false));
            }
            if now == ha_on_at {
                inputs.push(with_ha(true));
            }
            let ha_off = (2_000..ha_on_at).contains(&now);
            if now % 1000 == 0 {
                let seq = now / 1000 + 1;
                inputs.push(beat("host-3", seq, vec![], ha_off));
                let vm1 = vec![VmReport { vm: "vm-1".into(), generation: 1 }];
                if now < 5_000 {
                    inputs.push(beat("host-2", seq, vm1, ha_off));
                } else if heard_after_on && now == ha_on_at {
                    inputs.push(beat("host-2", seq, vm1, false));
                }
                inputs.push(Input::DatastoreWritten { datastore: "ds1".into(), ok: true });
                let records = vec![
                    DatastoreRecord {
                        host: "host-2".into(),
                        counter: now.min(5_000),
                        isolated: false,
                        stopped: vec![],
                    },
                    DatastoreRecord { host: "host-3".into(), counter: now, isolated: false, stopped: vec![] },
                ];
                inputs.push(Input::DatastoreRead { datastore: "ds1".into(), records: Ok(records) });
            }
            for input in inputs {
                for action in node.handle(now, input, &mut p) {
                    if let Action::Ping { target: PingTarget::Host(h) } = &action {
                        let answer = Input::PingResult { target: PingTarget::Host(h.clone()), answered: false };
                        all.extend(node.handle(now, answer, &mut p));
                    }
                    if let Action::Claim { claim, .. } = &action {
                        let answer = Input::ClaimResult { claim: claim.clone(), outcome: ClaimOutcome::Won };
                        all.extend(node.handle(now, answer, &mut p));
                    }
                    all.push(action);
                }
            }
        }
        all
    }

    #[test]
    fn a_host_cut_off_while_ha_was_off_keeps_its_vms_when_ha_comes_back() {
        let all = cut_while_ha_off(20_000, false, false);
        assert!(starts(&all).is_empty(), "host-2 never learnt HA is on, so it did not fence: {:?}", starts(&all));
        // Heard saying HA is on again, it is armed: its failure after that restarts vm-1.
        let all = cut_while_ha_off(20_000, true, false);
        assert_eq!(starts(&all).first().map(|s| s.1.as_str()), Some("vm-1"), "{all:?}");
    }

    #[test]
    fn a_vm_its_host_holds_unprotected_is_not_restarted_when_that_host_falls_silent() {
        // HA on throughout (switched off and on at once at 2 s); host-2 last said vm-1 is
        // unprotected there: it did not stop vm-1 when it was cut off.
        let all = cut_while_ha_off(2_000, false, true);
        assert!(starts(&all).is_empty(), "{:?}", starts(&all));
        let all = cut_while_ha_off(2_000, false, false);
        assert_eq!(starts(&all).first().map(|s| s.1.as_str()), Some("vm-1"), "armed: restarted {all:?}");
    }

    #[test]
    fn a_vm_is_moved_live_only_to_a_host_heard_lately() {
        // host-1 is master; host-2 runs vm-1 and vm-2; host-3 falls silent at 5 s (its verdict
        // still says running for a dead-time).
        let mut node = Node::new("host-1", cluster(3, 2), 0);
        let mut p = BuiltinPolicies;
        let vm1 = || vec![VmReport { vm: "vm-1".into(), generation: 1 }, VmReport { vm: "vm-2".into(), generation: 1 }];
        let mut asked = |node: &mut Node, now: u64, vm: &str| {
            let command = Input::Command(Command::MigrateVm { vm: vm.into(), to: Some("host-3".into()) });
            node.handle(now, command, &mut p)
        };
        let mut p2 = BuiltinPolicies;
        let mut outcome = Vec::new();
        for now in (0..9_000).step_by(250) {
            let seq = now / 250 + 1;
            let mut inputs = vec![Input::Tick, beat_with("host-2", seq, &[("host-1", seq)], vm1())];
            if now < 5_000 {
                inputs.push(beat_with("host-3", seq, &[("host-1", seq)], vec![]));
            }
            inputs.push(Input::DatastoreWritten { datastore: "ds1".into(), ok: true });
            for input in inputs {
                let _ = node.handle(now, input, &mut p2);
            }
            if now == 4_500 {
                outcome.push(asked(&mut node, now, "vm-1"));
            }
            if now == 8_500 {
                outcome.push(asked(&mut node, now, "vm-2"));
            }
        }
        let moved = |actions: &[Action]| actions.iter().any(|a| matches!(a, Action::MigrateVm { .. }));
        assert!(node.is_master());
        assert!(moved(&outcome[0]), "host-3 in contact: moved {:?}", outcome[0]);
        let refused = outcome[1].iter().any(|a| {
            matches!(a, Action::Record(e) if e.kind == EventKind::CommandRefused && e.message.contains("host-3 has gone silent"))
        });
        // Silent for 3.5 s, more than three heartbeat intervals (1 s each here), less than the
        // dead-time (12 s): its verdict still says running, so nothing moves anywhere until its
        // state is known (the master might be on the smaller side of a fresh partition).
        assert!(!moved(&outcome[1]) && refused, "host-3 silent: refused {:?}", outcome[1]);
    }

    #[test]
    fn a_vm_migrated_to_the_cluster_goes_where_the_placement_policy_puts_it() {
        // host-1 is master and runs vm-3; host-2 runs vm-1 and vm-2; host-3 is empty. vm-1 "to
        // the cluster" goes to a host in contact other than host-2; with every other host in
        // maintenance it is refused with the policy's reason.
        let mut node = Node::new("host-1", cluster(3, 3), 0);
        let mut p = BuiltinPolicies;
        let on2 = || vec![VmReport { vm: "vm-1".into(), generation: 1 }, VmReport { vm: "vm-2".into(), generation: 1 }];
        let mut asked = Vec::new();
        for now in (0..6_000).step_by(250) {
            let seq = now / 250 + 1;
            let mut inputs = vec![
                Input::Tick,
                beat_with("host-2", seq, &[("host-1", seq)], on2()),
                beat_with("host-3", seq, &[("host-1", seq)], vec![]),
                Input::DatastoreWritten { datastore: "ds1".into(), ok: true },
            ];
            if now == 4_000 {
                inputs.push(Input::Command(Command::MigrateVm { vm: "vm-1".into(), to: None }));
            }
            if now == 5_000 {
                inputs.push(Input::Command(Command::EnterMaintenance("host-3".into())));
                inputs.push(Input::Command(Command::EnterMaintenance("host-1".into())));
            }
            if now == 5_500 {
                inputs.push(Input::Command(Command::MigrateVm { vm: "vm-2".into(), to: None }));
            }
            for input in inputs {
                let command = matches!(input, Input::Command(Command::MigrateVm { .. }));
                let actions = node.handle(now, input, &mut p);
                if command {
                    asked.push(actions);
                }
            }
        }
        assert!(node.is_master());
        let to = asked[0].iter().find_map(|a| match a {
            Action::MigrateVm { vm, from, to } if vm == "vm-1" && from == "host-2" => Some(to.clone()),
            _ => None,
        });
        assert!(to.as_deref().is_some_and(|to| to != "host-2"), "moved off host-2: {:?}", asked[0]);
        let refused = asked[1].iter().any(|a| {
            matches!(a, Action::Record(e) if e.kind == EventKind::CommandRefused && e.message.starts_with("migrate vm-2 to the cluster: no host can take it"))
        });
        assert!(refused, "nowhere to go: {:?}", asked[1]);
    }

    #[test]
    fn the_master_reads_every_host_s_load_and_shows_it() {
        // host-1 is master; host-2 runs vm-1; host-3 falls silent at 15 s.
        let mut node = Node::new("host-1", cluster(3, 2), 0);
        let mut p = BuiltinPolicies;
        let mut reads = Vec::new();
        for now in (0..32_000).step_by(250) {
            let seq = now / 250 + 1;
            let mut inputs = vec![
                Input::Tick,
                beat_with("host-2", seq, &[("host-1", seq)], vec![VmReport { vm: "vm-1".into(), generation: 1 }]),
                Input::DatastoreWritten { datastore: "ds1".into(), ok: true },
            ];
            if now < 15_000 {
                inputs.push(beat_with("host-3", seq, &[("host-1", seq)], vec![]));
            }
            for input in inputs {
                for action in node.handle(now, input, &mut p) {
                    if let Action::ReadLoad { host } = action {
                        reads.push((now, host));
                    }
                }
            }
            if now == 20_000 {
                let load = crate::wire::HostLoad {
                    memory_mib: 16_384,
                    free_memory_mib: 12_000,
                    cpus: 8,
                    cpu_percent: Some(3),
                    vms: vec![crate::wire::VmLoad { vm: "vm-1".into(), cpu_percent: Some(25), memory_mib: 700 }],
                };
                let _ = node.handle(now, Input::LoadRead { host: "host-2".into(), load: Ok(load) }, &mut p);
                let _ = node.handle(now, Input::LoadRead { host: "host-3".into(), load: Err("down".into()) }, &mut p);
            }
        }
        assert!(node.is_master());
        let at = |t: u64| reads.iter().filter(|(now, _)| *now == t).map(|(_, h)| h.as_str()).collect::<Vec<_>>();
        let first = reads.first().map(|(t, _)| *t).expect("reads");
        assert_eq!(at(first), vec!["host-1", "host-2", "host-3"], "{reads:?}");
        let later: Vec<&str> = reads.iter().filter(|(t, _)| *t > 20_000).map(|(_, h)| h.as_str()).collect();
        assert!(!later.is_empty() && !later.contains(&"host-3"), "a silent host is not read: {reads:?}");
        let status = node.status();
        let host2 = status.hosts.iter().find(|h| h.name == "host-2").expect("host-2");
        let load = host2.load.as_ref().expect("host-2's load");
        assert_eq!((load.load.free_memory_mib, load.age_ms), (12_000, 31_750 - 20_000));
        let vm1 = status.vms.iter().find(|v| v.name == "vm-1").expect("vm-1");
        assert_eq!(vm1.load.as_ref().and_then(|l| l.cpu_percent), Some(25));
        assert!(status.hosts.iter().find(|h| h.name == "host-3").is_some_and(|h| h.load.is_none()));
    }

    fn starts(actions: &[Action]) -> Vec<(String, String, u64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::StartVm { host, vm, generation } => Some((host.clone(), vm.clone(), *generation)),
                _ => None,
            })
            .collect()
    }

    fn kinds(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Record(e) => Some(e.kind.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_failed_host_is_declared_after_the_dead_time_and_its_vm_restarted_under_a_claim() {
        let actions = after_cut(false, false, false, |_| ClaimOutcome::Won);
        let claims: Vec<&Claim> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Claim { claim, .. } => Some(claim),
                _ => None,
            })
            .collect();
        assert_eq!(
            claims.len(),
            1,
            "{:#?}",
            actions.iter().filter(|a| matches!(a, Action::Record(_))).collect::<Vec<_>>()
        );
        assert_eq!((claims[0].vm.as_str(), claims[0].generation), ("vm-1", 2));
        let started = starts(&actions);
        assert_eq!(
            started.len(),
            1,
            "{:#?}",
            &actions[..]
                .iter()
                .filter(|a| !matches!(
                    a,
                    Action::SendHeartbeat { .. } | Action::WriteDatastore { .. } | Action::ReadDatastore { .. }
                ))
                .collect::<Vec<_>>()
        );
        assert_ne!(started[0].0, "host-2", "never the failed host");
        assert!(kinds(&actions).contains(&"host-failed".to_string()));
    }

    /// The etcd backend (decision 0017): claims go to the claim store and nowhere else, and
    /// while it cannot be written nothing is claimed or started, however well the datastores do.
    #[test]
    fn with_a_claim_store_claims_go_there_or_nowhere() {
        let mut config = cluster(3, 2);
        config.datastores.push("etcd".into());
        config.claim_store = Some("etcd".into());
        config.validate().expect("a claim store among the datastores is valid");
        let actions =
            after_cut_on(config.clone(), &["ds1", "etcd"], 40_000, false, false, false, |_| ClaimOutcome::Won);
        let on: Vec<&str> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Claim { datastore, .. } => Some(datastore.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(on, ["etcd"], "one claim, on etcd");
        assert_eq!(starts(&actions).len(), 1);

        let actions = after_cut_on(config.clone(), &["ds1"], 40_000, false, false, false, |_| ClaimOutcome::Won);
        assert!(claims(&actions).is_empty(), "etcd not written: no claim on ds1 instead");
        assert!(starts(&actions).is_empty());
        assert!(kinds(&actions).contains(&"host-failed".to_string()), "the failure is still seen");

        config.claim_store = Some("nowhere".into());
        let problems = config.validate().expect_err("an unknown claim store");
        assert!(problems.0.iter().any(|p| p.starts_with("claim-store: `nowhere`")), "{problems:?}");
    }

    #[test]
    fn a_lost_claim_never_starts_a_vm() {
        let actions = after_cut(false, false, false, |c| {
            ClaimOutcome::Lost(Claim { master: "host-3".into(), epoch: 9, ..c.clone() })
        });
        assert!(starts(&actions).is_empty());
        assert!(kinds(&actions).contains(&"claim-lost".to_string()));
    }

    #[test]
    fn partitioned_and_agent_down_hosts_are_never_restarted() {
        // Datastore heartbeat alive: partitioned.
        let partitioned = after_cut(false, true, false, |_| ClaimOutcome::Won);
        assert!(starts(&partitioned).is_empty());
        assert!(kinds(&partitioned).contains(&"host-partitioned".to_string()));
        // Nothing but ping: agent down.
        let agent_down = after_cut(false, false, true, |_| ClaimOutcome::Won);
        assert!(starts(&agent_down).is_empty());
        assert!(kinds(&agent_down).contains(&"host-agent-down".to_string()));
        // Network alive: nothing at all.
        let running = after_cut(true, false, false, |_| ClaimOutcome::Won);
        assert!(starts(&running).is_empty());
        assert!(!kinds(&running).iter().any(|k| k.starts_with("host-")), "{:?}", kinds(&running));
    }

    fn claims(actions: &[Action]) -> Vec<Claim> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Claim { claim, .. } => Some(claim.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_claim_for_a_host_that_never_started_the_vm_is_superseded_on_that_host() {
        // Another master won generation 2 for host-3, which lives but never runs vm-1.
        let actions = after_cut_until(90_000, false, false, false, |c| {
            if c.generation == 2 {
                ClaimOutcome::Lost(Claim { master: "host-9".into(), epoch: 9, host: "host-3".into(), ..c.clone() })
            } else {
                ClaimOutcome::Won
            }
        });
        let claims = claims(&actions);
        assert!(claims.len() >= 2, "{claims:?}\n{:?}", kinds(&actions));
        assert_eq!(claims[0].generation, 2);
        // The claim that supersedes it is the next generation, and names host-3 again: the
        // lost start may still happen there, never on a second host.
        assert_eq!((claims[1].generation, claims[1].host.as_str()), (3, "host-3"));
        assert!(starts(&actions).iter().all(|(host, _, _)| host == "host-3"), "{:?}", starts(&actions));
        assert!(kinds(&actions).contains(&"restart-superseded".to_string()));
    }

    #[test]
    fn a_start_that_never_reports_is_retried_on_the_same_host_not_elsewhere() {
        let actions = after_cut_until(90_000, false, false, false, |_| ClaimOutcome::Won);
        let started = starts(&actions);
        assert!(started.len() >= 2, "{started:?}");
        assert!(started.iter().all(|(host, _, _)| *host == started[0].0), "{started:?}");
        assert_eq!(started[1].2, started[0].2 + 1, "each start under its own claim: {started:?}");
        assert!(!kinds(&actions).contains(&"restart-gave-up".to_string()), "a restart VM is never given up");
    }
}
