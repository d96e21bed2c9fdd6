//! The host's own side: isolation detection and response, self-fencing, VM monitoring and
//! the operator's stop.
//!
//! Fencing is what makes a restart elsewhere safe when a host is cut off without a
//! datastore: a host that for `fence-timeout` reaches neither a quorum of peers (two-way:
//! they acknowledge our heartbeats) nor any datastore stops its protected VMs. The master
//! declares a host failed only after the longer dead-time, so the VMs are down by then.

use halo_policy::{
    AddressStatus, DatastoreStatus, IsolationAction, IsolationInput, IsolationSituation, NetworkStatus, VmInfo,
};

use super::{Action, Command, EventKind, Isolation, Node, PingTarget, Severity, StopReason, VmState};
use crate::Millis;
use crate::policies::Policies;
use crate::wire::VmReport;

/// Whether this host, reaching `reached` peers (two-way) of a cluster of `hosts`, is in a
/// quorum: more than half of the hosts, itself included.
pub fn has_quorum(reached: usize, hosts: usize) -> bool {
    2 * (reached + 1) > hosts
}

/// The fence rule, written once: a host that reaches no quorum and no datastore (or no quorum
/// at all, with quorum fencing) must stop its protected VMs. The core's fence watch applies it
/// to the node's evidence; the agent's liveness path applies it to its own when the agent loop
/// is busy (`halo-agent`'s `liveness`). Proved by
/// `tests::a_cut_off_host_fences_before_the_dead_time`.
pub fn must_fence(reached: usize, hosts: usize, datastore_ok: bool, quorum_fencing: bool) -> bool {
    must_fence_counting(|| reached, hosts, datastore_ok, quorum_fencing)
}

/// [`must_fence`], counting the peers reached only when the answer depends on them (the
/// liveness path asks every 10 ms; the count walks every peer).
pub fn must_fence_counting(
    reached: impl FnOnce() -> usize,
    hosts: usize,
    datastore_ok: bool,
    quorum_fencing: bool,
) -> bool {
    hosts > 1 && (!datastore_ok || quorum_fencing) && !has_quorum(reached(), hosts)
}

impl Node {
    /// The last time another agent was heard directly, or the start (or the last resume:
    /// silence before a gap is not silence, see `resume`).
    fn last_agent_heard(&self) -> u64 {
        let heard = self
            .peers
            .values()
            .filter_map(|p| p.heard_directly_at)
            .max()
            .unwrap_or(self.started_at)
            .max(self.started_at);
        self.since_resume(heard)
    }

    pub(super) fn watch_isolation(&mut self, policies: &mut dyn Policies) {
        if self.peers.is_empty() {
            return; // a one-host cluster is never isolated
        }
        let t = self.config.timeouts;
        let silent_for = self.now.saturating_sub(self.last_agent_heard());
        match self.isolation.clone() {
            Isolation::Connected => {
                if silent_for >= t.isolation_time_ms {
                    let pending: std::collections::BTreeSet<String> =
                        self.config.isolation_addresses.iter().cloned().collect();
                    for address in &pending {
                        self.out.push(Action::Ping { target: PingTarget::IsolationAddress(address.clone()) });
                    }
                    self.isolation = Isolation::Pinging { since: self.now, pending, answered: false };
                    self.record(
                        Severity::Warning,
                        EventKind::NoAgentHeard,
                        format!(
                            "{} hears no other agent for {:.1}s; pinging its isolation addresses",
                            self.name,
                            silent_for as f64 / 1000.0
                        ),
                        None,
                    );
                }
            }
            Isolation::Pinging { since, pending, answered } => {
                if silent_for < t.isolation_time_ms {
                    self.isolation = Isolation::Connected;
                } else if answered {
                    self.isolation = Isolation::Lonely { since: self.now };
                    self.record(
                        Severity::Alert,
                        EventKind::Alone,
                        format!("{} hears no agent but an isolation address answers: its network works, the other agents are down", self.name),
                        None,
                    );
                } else if pending.is_empty() || self.now.saturating_sub(since) >= t.ping_timeout_ms {
                    self.declare_isolated(policies);
                }
            }
            Isolation::Lonely { since } => {
                if silent_for < t.isolation_time_ms {
                    self.isolation = Isolation::Connected;
                } else if self.now.saturating_sub(since) >= t.isolation_time_ms {
                    self.isolation = Isolation::Connected; // ping again
                }
            }
            Isolation::Isolated { since } => {
                if silent_for < t.isolation_time_ms {
                    self.isolation = Isolation::Connected;
                    self.record(
                        Severity::Info,
                        EventKind::IsolationOver,
                        format!(
                            "{} hears other agents again after {:.1}s of isolation",
                            self.name,
                            self.now.saturating_sub(since) as f64 / 1000.0
                        ),
                        None,
                    );
                }
            }
        }
    }

    fn declare_isolated(&mut self, policies: &mut dyn Policies) {
        self.isolation = Isolation::Isolated { since: self.now };
        let silent_for = self.now.saturating_sub(self.last_agent_heard());
        let window = self.config.timeouts.fence_timeout_ms;
        let situation = IsolationSituation {
            host: self.name.clone(),
            isolated_for_ms: silent_for,
            networks: self
                .config
                .networks
                .iter()
                .map(|n| NetworkStatus { name: n.clone(), link_up: true, peers_heard: 0 })
                .collect(),
            datastores: self
                .config
                .datastores
                .iter()
                .map(|d| DatastoreStatus {
                    name: d.clone(),
                    reachable: self.ds_write_ok_at.get(d).is_some_and(|&at| self.now.saturating_sub(at) < window),
                })
                .collect(),
            isolation_addresses: self
                .config
                .isolation_addresses
                .iter()
                .map(|a| AddressStatus { address: a.clone(), answered: false })
                .collect(),
        };
        let vms: Vec<VmInfo> =
            self.local_vms.keys().filter_map(|vm| self.config.vm(vm)).map(crate::config::VmSpec::info).collect();
        self.record(
            Severity::Alert,
            EventKind::Isolated,
            format!(
                "{} is isolated: no agent heard for {:.1}s and no isolation address answers; asking the isolation policy about {} VM(s)",
                self.name,
                silent_for as f64 / 1000.0,
                vms.len()
            ),
            None,
        );
        if self.ha_disabled_here || !self.ha_enabled {
            self.record(
                Severity::Warning,
                EventKind::IsolationResponseSkipped,
                "HA is disabled here: VMs left running".into(),
                None,
            );
            return;
        }
        let input = IsolationInput { situation, vms, settings: self.config.policy.isolation.clone() };
        let outcome = policies.isolation(&input);
        if let Some(reason) = outcome.fallback_reason {
            self.record(
                Severity::Alert,
                EventKind::PluginFailed,
                format!("isolation plugin failed, built-in policy decided: {reason}"),
                None,
            );
        }
        for decision in outcome.answer {
            if !self.local_vms.contains_key(&decision.vm) {
                continue;
            }
            let grace_secs = match decision.action {
                IsolationAction::LeaveRunning => continue,
                IsolationAction::PowerOff => 0,
                IsolationAction::ShutDown(secs) => secs,
            };
            self.record(
                Severity::Warning,
                EventKind::IsolationResponse,
                format!(
                    "{}: {} {} (isolation response)",
                    self.name,
                    if grace_secs == 0 {
                        "powering off".to_string()
                    } else {
                        format!("shutting down ({grace_secs}s grace)")
                    },
                    decision.vm
                ),
                None,
            );
            self.out.push(Action::StopVm { vm: decision.vm, reason: StopReason::Isolation, grace_secs });
        }
    }

    pub(super) fn watch_fencing(&mut self) {
        if self.peers.is_empty() || self.ha_disabled_here || !self.ha_enabled {
            return;
        }
        let window = self.config.timeouts.fence_timeout_ms;
        let since_start = self.now.saturating_sub(self.started_at);
        // A freshly started agent has no proof of contact yet, and its host may have been
        // silent for up to the watchdog timeout (= the fence timeout) before it started: its
        // grace is only what is left of the dead-time (found by simulator seed 622).
        let t = self.config.timeouts;
        let grace = t.dead_time_ms.saturating_sub(t.fence_timeout_ms + 2 * t.heartbeat_interval_ms);
        // Just resumed after a gap: the evidence was dropped; a round of heartbeats first.
        let starting = since_start < grace || self.resuming();
        let datastore_ok = self.datastores_reachable() > 0;
        let reached = self
            .peers
            .values()
            .filter(|p| p.ack_advanced_at.is_some_and(|at| self.now.saturating_sub(at) < window))
            .count();
        let hosts = self.config.hosts.len();
        if !starting {
            // Fenceable: cut off for the detection time less an interval, hold (`fence`).
            let hold = t.fence_after_ms();
            let recent = |at: &Millis| self.now.saturating_sub(*at) < hold;
            let reached_recently =
                self.peers.values().filter(|p| p.ack_advanced_at.as_ref().is_some_and(recent)).count();
            let datastore_recently = self.ds_write_ok_at.values().any(recent);
            self.hold_when_cut_off(has_quorum(reached_recently, hosts), datastore_recently);
        }
        let must_fence = !starting && must_fence(reached, hosts, datastore_ok, self.config.ha.quorum_fencing);
        if must_fence && !self.fenced {
            self.fenced = true;
            let protected: Vec<String> =
                self.local_vms.keys().filter(|vm| self.config.vm(vm).is_some_and(|s| s.protected())).cloned().collect();
            self.record(
                Severity::Alert,
                EventKind::Fenced,
                format!(
                    "{} fences itself: it reaches {reached} of {} peer(s) (quorum needs more than half of {hosts} hosts) and {}; stopping {} protected VM(s) so they can be restarted elsewhere",
                    self.name,
                    hosts - 1,
                    if datastore_ok { "a datastore (quorum fencing is on)" } else { "no datastore" },
                    protected.len()
                ),
                None,
            );
            for vm in protected {
                self.out.push(Action::StopVm { vm, reason: StopReason::Fence, grace_secs: 0 });
            }
        } else if !must_fence && self.fenced {
            self.fenced = false;
            self.record(Severity::Info, EventKind::Unfenced, format!("{} reaches the cluster again", self.name), None);
        }
    }

    pub(super) fn on_ping(&mut self, target: PingTarget, answered: bool) {
        match target {
            PingTarget::IsolationAddress(address) => {
                if let Isolation::Pinging { pending, answered: any, .. } = &mut self.isolation {
                    pending.remove(&address);
                    *any |= answered;
                }
            }
            PingTarget::Host(host) => self.on_host_ping(&host, answered),
        }
    }

    pub(super) fn on_vm_state(&mut self, vm: &str, generation: u64, state: VmState) {
        self.note_generation(vm, generation);
        if state != VmState::PausedOnIoError {
            self.note_io_paused(vm, false);
        }
        match state {
            VmState::PausedOnIoError => {
                // Still here, holding its disks: not running anywhere else.
                if self.local_vms.insert(vm.to_string(), generation) != Some(generation) {
                    self.next_heartbeat = self.now;
                }
                self.note_io_paused(vm, true);
            }
            VmState::Running => {
                if self.claims_seen.get(vm).is_some_and(|(_, g, _)| generation >= *g) {
                    self.claims_seen.remove(vm);
                }
                self.note_io_paused(vm, false);
                self.stopping.remove(vm);
                // A VM that arrived is told to the others at once (the master compares every
                // host's list: a copy started outside halo is found a heartbeat sooner).
                if self.local_vms.insert(vm.to_string(), generation) != Some(generation) {
                    self.next_heartbeat = self.now;
                }
                self.stopped.retain(|r| r.vm != vm);
                // Started again (by the operator, with libvirt): protected again.
                self.operator_stopped.remove(vm);
                // A fenced host runs no protected VM: one that arrives now (a live migration
                // that completed after the host was cut off, a start by hand) is stopped like
                // the others, so the cluster can restart it (simulator, seed 10068).
                if self.fenced && self.config.vm(vm).is_some_and(|s| s.protected()) {
                    self.record(
                        Severity::Alert,
                        EventKind::Fenced,
                        format!("{vm} came up on {} while it is fenced: stopping it", self.name),
                        None,
                    );
                    self.out.push(Action::StopVm { vm: vm.to_string(), reason: StopReason::Fence, grace_secs: 0 });
                }
            }
            VmState::Held => self.found_held(vm, generation),
            VmState::StoppedOutside => {
                // halo's own stops are reported by its driver (with the reason); this is
                // someone else's: not restarted, no longer here.
                if !self.stopping.contains(vm) && self.local_vms.remove(vm).is_some() {
                    self.record(
                        Severity::Warning,
                        EventKind::VmStopped,
                        format!("{vm} was stopped on {} outside halo (not restarted)", self.name),
                        None,
                    );
                }
            }
            VmState::StoppedByHalo(StopReason::Operator) => {
                self.stopping.remove(vm);
                self.local_vms.remove(vm);
                self.operator_stopped.insert(vm.to_string());
                // Told at once: a host that dies before its next heartbeat would otherwise
                // leave the master thinking the VM ran there, and it would be restarted against
                // the operator's stop (simulator seeds 11637, 13999, 15175).
                self.next_heartbeat = self.now;
                self.record(
                    Severity::Info,
                    EventKind::VmStopped,
                    format!("{vm} stopped by the operator on {} (unprotected)", self.name),
                    None,
                );
            }
            VmState::StoppedWhilePaused(reason) if !self.held.contains_key(vm) => {
                // A paused copy this host does not hold is one the master paused as started
                // outside halo: its stop proves nothing about the VM, whose own copy runs
                // elsewhere (simulator seed 10616, conservative: a fenced host's outside copy
                // was recorded as stopped and the VM restarted beside the running one). halo's
                // own copy, running, is recorded as always (seed 363).
                self.stopping.remove(vm);
                self.local_vms.remove(vm);
                self.record(
                    Severity::Warning,
                    EventKind::VmStopped,
                    format!(
                        "{vm} stopped on {} ({reason:?}): the paused copy started outside halo; not recorded for a restart",
                        self.name
                    ),
                    None,
                );
            }
            VmState::StoppedByHalo(reason) | VmState::StoppedWhilePaused(reason) => {
                self.stopping.remove(vm);
                // The record carries the generation this host ran: a lower one would be taken
                // for an old stop and never restarted.
                let generation = self.local_vms.remove(vm).map_or(generation, |ran| ran.max(generation));
                self.stopped.push(VmReport { vm: vm.to_string(), generation });
                let why = match reason {
                    StopReason::Fence => "fencing",
                    StopReason::Storage => "storage response",
                    _ => "isolation response",
                };
                self.record(
                    Severity::Warning,
                    EventKind::VmStopped,
                    format!("{vm} stopped on {} ({why}); recorded for the master to restart", self.name),
                    None,
                );
            }
            VmState::MigratedAway => {
                self.local_vms.remove(vm);
            }
            VmState::Crashed | VmState::GuestShutdown => {
                if self.local_vms.remove(vm).is_none() {
                    return;
                }
                self.restart_locally(vm, generation, state);
            }
        }
    }

    /// Records `vm` as stopped by this host (one record per VM), for the master to restart.
    fn record_stop(&mut self, vm: &str, generation: u64) {
        self.stopped.retain(|r| r.vm != vm);
        self.stopped.push(VmReport { vm: vm.to_string(), generation });
    }

    /// VM monitoring: a protected VM that stopped without halo asking is started again here,
    /// at most `restart-limit` times per window.
    fn restart_locally(&mut self, vm: &str, generation: u64, state: VmState) {
        let how = if state == VmState::Crashed { "crashed" } else { "was shut down inside the guest" };
        let protected = self.config.vm(vm).is_some_and(|s| s.protected());
        if !protected || self.operator_stopped.contains(vm) {
            self.record(
                Severity::Info,
                EventKind::VmStopped,
                format!("{vm} {how} on {} (not protected: left stopped)", self.name),
                None,
            );
            return;
        }
        if self.fenced || self.isolated() || !self.ha_enabled || self.ha_disabled_here {
            // Recorded as stopped by its host: the master restarts it once it may (HA on
            // again, this host heard again), instead of nobody ever (simulator seed 13009:
            // a crash just after HA was switched on again, before this host learnt it).
            self.record_stop(vm, generation);
            self.record(
                Severity::Warning,
                EventKind::VmStopped,
                format!(
                    "{vm} {how} on {}; not restarted here (host cut off or HA off): recorded for the master to restart",
                    self.name
                ),
                None,
            );
            return;
        }
        // Another host runs it (under this generation or a later one): this was a second copy
        // — one started outside halo and paused by the master, which then crashed (simulator
        // seed 11058, conservative) — and starting it here would run the VM twice.
        if let Some(other) = self
            .peers
            .iter()
            .find(|(_, p)| p.vms.iter().any(|r| r.vm == vm && r.generation >= generation))
            .map(|(name, _)| name.clone())
        {
            // Recorded as stopped all the same: if the other copy is one the master paused as
            // started outside halo, the master restarts the VM (it counts no paused copy as
            // running); if it runs, the record changes nothing (simulator seed 2375).
            self.record_stop(vm, generation);
            self.record(
                Severity::Warning,
                EventKind::VmStopped,
                format!("{vm} {how} on {}; not restarted here: it runs on {other}", self.name),
                None,
            );
            return;
        }
        let window = self.config.ha.restart_window_ms;
        let now = self.now;
        let history = self.crashes.entry(vm.to_string()).or_default();
        history.retain(|&at| now.saturating_sub(at) < window);
        if history.len() as u32 >= self.config.ha.restart_limit {
            let count = history.len();
            self.record(
                Severity::Alert,
                EventKind::CrashLoop,
                format!(
                    "{vm} {how} on {} for the {}th time within {}s: left stopped (restart limit)",
                    self.name,
                    count + 1,
                    window / 1000
                ),
                None,
            );
            return;
        }
        history.push(now);
        self.record(
            Severity::Warning,
            EventKind::VmRestartedInPlace,
            format!("{vm} {how} on {}; starting it again there", self.name),
            None,
        );
        self.out.push(Action::StartVm { host: self.name.clone(), vm: vm.to_string(), generation });
    }

    pub(super) fn on_command(&mut self, command: Command, policies: &mut dyn Policies) {
        match command {
            Command::StopVm(vm) => {
                if self.local_vms.contains_key(&vm) {
                    self.operator_stopped.insert(vm.clone());
                    self.out.push(Action::StopVm { vm, reason: StopReason::Operator, grace_secs: 0 });
                } else {
                    self.record(
                        Severity::Warning,
                        EventKind::CommandRefused,
                        format!("stop {vm}: it does not run on {}", self.name),
                        None,
                    );
                }
            }
            Command::SetHaEnabled(on) => {
                self.set_ha_enabled(on);
                self.record(
                    Severity::Warning,
                    EventKind::HaEnabled,
                    format!("HA {} for the cluster", if on { "enabled" } else { "disabled" }),
                    None,
                );
            }
            Command::SetHostHaDisabled(off) => {
                self.ha_disabled_here = off;
                self.record(
                    Severity::Warning,
                    EventKind::HostHaDisabled,
                    format!("HA {} on {}", if off { "disabled (emergency)" } else { "enabled again" }, self.name),
                    None,
                );
            }
            Command::EnterMaintenance(host) => self.enter_maintenance(&host, policies),
            Command::ExitMaintenance(host) => self.exit_maintenance(&host),
            Command::MigrateVm { vm, to } => self.migrate_one(&vm, to.as_deref(), policies),
            Command::StartVm { vm, on } => self.start_one(&vm, on.as_deref()),
            Command::FenceHost { host, force } => self.fence_on_request(&host, force),
            Command::BalanceApply => self.balance_apply(policies),
            Command::MoveStorage { vm, dir } => self.move_storage(&vm, &dir),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{beat, tick_until};
    use super::*;
    use crate::Input;
    use crate::config::tests::cluster;
    use crate::policies::BuiltinPolicies;

    #[test]
    fn a_cut_off_host_fences_before_the_dead_time() {
        let mut config = cluster(3, 2);
        // The isolation response leaves VMs running: only fencing may stop them.
        config.policy.isolation = ["restart", "when-datastores-unreachable"]
            .iter()
            .map(|k| halo_policy::Setting { key: k.to_string(), value: "leave-running".into() })
            .collect();
        let t = config.timeouts;
        let mut node = Node::new("host-1", config, 0);
        node.handle(
            0,
            Input::VmState { vm: "vm-1".into(), generation: 1, state: VmState::Running },
            &mut BuiltinPolicies,
        );
        // Two peers heard and acknowledging us, datastore writes fine, until 10 s.
        let mut now = 0;
        while now < 10_000 {
            now += 500;
            for peer in ["host-2", "host-3"] {
                node.handle(now, beat(peer, now / 500, &[("host-1", now / 1000)]), &mut BuiltinPolicies);
            }
            node.handle(now, Input::DatastoreWritten { datastore: "ds1".into(), ok: true }, &mut BuiltinPolicies);
        }
        assert!(!node.fenced());
        // Then silence everywhere: nothing heard, datastore writes fail.
        let actions = tick_until(&mut node, now, now + t.dead_time_ms, |a| matches!(a, Action::StopVm { .. }));
        // (The last contact was the heartbeat at `now`.)
        let (at, action) = actions.expect("it fences");
        assert_eq!(action, Action::StopVm { vm: "vm-1".into(), reason: StopReason::Fence, grace_secs: 0 });
        assert!(at - now <= t.fence_timeout_ms + 100, "fenced {} ms after the cut", at - now);
        assert!(at - now + 2 * t.heartbeat_interval_ms <= t.dead_time_ms);

        // A protected VM that arrives while fenced (a live migration that completed after the
        // cut) is stopped at once too; an unprotected one is left alone.
        for (vm, stopped) in [("vm-2", true), ("scratch", false)] {
            let arrived = Input::VmState { vm: vm.into(), generation: 1, state: VmState::Running };
            let actions = node.handle(at + 500, arrived, &mut BuiltinPolicies);
            let stop = Action::StopVm { vm: vm.into(), reason: StopReason::Fence, grace_secs: 0 };
            assert_eq!(actions.contains(&stop), stopped, "{vm}: {actions:?}");
        }
    }

    #[test]
    fn a_lost_datastore_is_an_alert_at_once_and_its_return_an_event() {
        let config = cluster(3, 2);
        let window = config.timeouts.fence_timeout_ms;
        let mut node = Node::new("host-1", config, 0);
        let written = |node: &mut Node, now: u64, ok: bool| -> Vec<(EventKind, Severity)> {
            node.handle(now, Input::DatastoreWritten { datastore: "ds1".into(), ok }, &mut BuiltinPolicies)
                .into_iter()
                .filter_map(|a| match a {
                    Action::Record(e) if matches!(e.kind, EventKind::DatastoreLost | EventKind::DatastoreRegained) => {
                        Some((e.kind, e.severity))
                    }
                    _ => None,
                })
                .collect()
        };
        assert!(written(&mut node, 500, true).is_empty(), "a good write says nothing");
        let me = |node: &Node| node.status().hosts.into_iter().find(|h| h.name == "host-1").expect("this host");
        assert_eq!((me(&node).datastores_reached, me(&node).datastores_configured), (Some(1), 1));
        // A failure reported within a datastore interval of a good write is of a write issued
        // before it (a timeout that ran out after the path came back): not news.
        assert!(written(&mut node, 900, false).is_empty(), "a stale failure");
        // One failed write: an alert at once, once.
        assert_eq!(written(&mut node, 1_500, false), vec![(EventKind::DatastoreLost, Severity::Alert)]);
        assert!(written(&mut node, 2_000, false).is_empty(), "not again while it stays lost");
        // Back: an event.
        assert_eq!(written(&mut node, 2_500, true), vec![(EventKind::DatastoreRegained, Severity::Info)]);
        // A write that hangs reports nothing: lost once the fence timeout passes without one.
        let silent = node.handle(2_500 + window, Input::Tick, &mut BuiltinPolicies);
        let lost: Vec<&Action> =
            silent.iter().filter(|a| matches!(a, Action::Record(e) if e.kind == EventKind::DatastoreLost)).collect();
        assert_eq!(lost.len(), 1, "{silent:?}");
        assert_eq!(me(&node).datastores_reached, Some(0));
    }

    #[test]
    fn a_host_with_a_datastore_does_not_fence() {
        let config = cluster(3, 2);
        let mut node = Node::new("host-1", config, 0);
        node.handle(
            0,
            Input::VmState { vm: "vm-1".into(), generation: 1, state: VmState::Running },
            &mut BuiltinPolicies,
        );
        for now in (0..40_000).step_by(500) {
            node.handle(now, Input::DatastoreWritten { datastore: "ds1".into(), ok: true }, &mut BuiltinPolicies);
        }
        assert!(!node.fenced());
        assert!(node.isolated(), "no agent heard and no isolation address answered");
    }

    #[test]
    fn a_crashing_vm_is_restarted_in_place_until_the_limit() {
        let config = cluster(1, 1);
        let mut node = Node::new("host-1", config, 0);
        let mut starts = 0;
        for i in 0..5 {
            node.handle(
                i * 1000,
                Input::VmState { vm: "vm-1".into(), generation: 1, state: VmState::Running },
                &mut BuiltinPolicies,
            );
            let actions = node.handle(
                i * 1000 + 500,
                Input::VmState { vm: "vm-1".into(), generation: 1, state: VmState::Crashed },
                &mut BuiltinPolicies,
            );
            starts += actions.iter().filter(|a| matches!(a, Action::StartVm { .. })).count();
        }
        assert_eq!(starts, 3, "restart limit 3 per window");
    }

    #[test]
    fn an_operator_stop_is_not_undone() {
        let config = cluster(1, 1);
        let mut node = Node::new("host-1", config, 0);
        node.handle(
            0,
            Input::VmState { vm: "vm-1".into(), generation: 1, state: VmState::Running },
            &mut BuiltinPolicies,
        );
        let stop = node.handle(10, Input::Command(Command::StopVm("vm-1".into())), &mut BuiltinPolicies);
        assert!(stop.contains(&Action::StopVm { vm: "vm-1".into(), reason: StopReason::Operator, grace_secs: 0 }));
        let after = node.handle(
            20,
            Input::VmState { vm: "vm-1".into(), generation: 1, state: VmState::GuestShutdown },
            &mut BuiltinPolicies,
        );
        assert!(!after.iter().any(|a| matches!(a, Action::StartVm { .. })));
        // The operator starts it again (with libvirt): it is protected again, a crash restarts it.
        node.handle(
            30,
            Input::VmState { vm: "vm-1".into(), generation: 1, state: VmState::Running },
            &mut BuiltinPolicies,
        );
        let crash = node.handle(
            40,
            Input::VmState { vm: "vm-1".into(), generation: 1, state: VmState::Crashed },
            &mut BuiltinPolicies,
        );
        assert!(crash.iter().any(|a| matches!(a, Action::StartVm { vm, .. } if vm == "vm-1")), "{crash:?}");
    }
}
