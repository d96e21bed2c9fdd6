//! Proactive HA (vSphere's proactive HA, Pacemaker's node health): a host that says it is
//! failing is emptied before it fails. Each host's agent runs the site's health provider and
//! feeds its answer (`Input::HealthReported`); the host tells the cluster in its heartbeats.
//! The master answers per `ha.on-degraded` / `ha.on-failing`:
//!
//! - `quarantine`: no new VMs go there — balancing, evacuations and migrations "to the
//!   cluster" avoid it; a failover still may when nothing else fits; its VMs stay;
//! - `maintenance`: evacuated by live migration exactly as an operator's maintenance (within
//!   the failover plan: refused, with an alert, when the rest could not absorb a failure; tried
//!   again every [`RETRY_MS`]), and taken back into service once it reports healthy.
//!
//! Guests are never stopped for health: evacuation is live migration only.

use super::{EventKind, Node, Severity};
use crate::Millis;
use crate::config::HealthResponse;
use crate::policies::Policies;
use crate::wire::{HealthState, HostHealth};

/// How often a maintenance refused for health (the plan would not hold) is tried again.
pub(super) const RETRY_MS: Millis = 30_000;

impl Node {
    /// This host's provider answered.
    pub(super) fn on_health(&mut self, health: HostHealth) {
        if health == self.health {
            return;
        }
        let severity = if health.state == HealthState::Healthy { Severity::Info } else { Severity::Alert };
        let reason = if health.reason.is_empty() { "no reason given".to_string() } else { health.reason.clone() };
        self.record(
            severity,
            EventKind::HostHealth,
            format!("{} reports its health {} ({reason})", self.name, health.state.as_str()),
            None,
        );
        self.health = health;
        self.next_heartbeat = self.now; // told at once
    }

    /// A host's health as this node knows it (its own; a peer's from its last heartbeat).
    pub fn health_of(&self, host: &str) -> HostHealth {
        if host == self.name {
            self.health.clone()
        } else {
            self.peers.get(host).map(|p| p.health.clone()).unwrap_or_default()
        }
    }

    fn health_response(&self, state: HealthState) -> HealthResponse {
        match state {
            HealthState::Healthy => HealthResponse::Ignore,
            HealthState::Degraded => self.config.ha.on_degraded,
            HealthState::Failing => self.config.ha.on_failing,
        }
    }

    /// Whether no new VM goes to `host` for its health (quarantined, or due for a maintenance
    /// the plan refused so far).
    pub(super) fn quarantined(&self, host: &str) -> bool {
        self.health_response(self.health_of(host).state) != HealthResponse::Ignore
    }

    /// The master's answer to every host's health.
    pub(super) fn watch_health(&mut self, policies: &mut dyn Policies) {
        let hosts: Vec<String> = self.config.hosts.iter().map(|h| h.name.clone()).collect();
        for host in hosts {
            if host != self.name && !self.heard_lately(&host) {
                continue; // a silent host is for failure detection, not for health
            }
            let health = self.health_of(&host);
            let response = self.health_response(health.state);
            let ours = self.health_maintenance.get(&host).copied();
            match response {
                HealthResponse::Maintenance if self.maintenance.contains(&host) => {
                    // In maintenance already (ours, a predecessor's, or the operator's): ours
                    // to end once healthy.
                    self.health_maintenance.insert(host, None);
                }
                HealthResponse::Maintenance => {
                    if ours.flatten().is_some_and(|at| self.now.saturating_sub(at) < RETRY_MS) {
                        continue;
                    }
                    self.record(
                        Severity::Alert,
                        EventKind::HostQuarantine,
                        format!(
                            "{host} reports it is {} ({}): evacuating it by live migration (ha.on-{} = maintenance)",
                            health.state.as_str(),
                            health.reason,
                            health.state.as_str()
                        ),
                        None,
                    );
                    self.enter_maintenance(&host, policies);
                    let entered = self.maintenance.contains(&host);
                    self.health_maintenance.insert(host, if entered { None } else { Some(self.now) });
                }
                HealthResponse::Quarantine | HealthResponse::Ignore => {
                    if ours.is_some() {
                        self.health_maintenance.remove(&host);
                        if self.maintenance.contains(&host) {
                            self.record(
                                Severity::Info,
                                EventKind::HostQuarantine,
                                format!(
                                    "{host} reports it is {} again: taken out of the maintenance its health put it in",
                                    health.state.as_str()
                                ),
                                None,
                            );
                            self.exit_maintenance(&host);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::beat_with;
    use super::super::{Action, Input};
    use super::*;
    use crate::config::tests::cluster;
    use crate::policies::BuiltinPolicies;
    use crate::wire::VmReport;

    /// host-1 master; host-2 runs vm-1 and reports `health` from `from` on. Returns every
    /// action up to `until`.
    fn run(node: &mut Node, health: &HostHealth, from: Millis, until: Millis, vm_on_2: bool) -> Vec<Action> {
        let mut all = Vec::new();
        for now in (node.now..until).step_by(250) {
            let seq = now / 250 + 1;
            let vms = if vm_on_2 { vec![VmReport { vm: "vm-1".into(), generation: 1 }] } else { vec![] };
            let mut from_2 = beat_with("host-2", seq, &[("host-1", seq)], vms);
            if let Input::Heartbeat { heartbeat, .. } = &mut from_2
                && now >= from
            {
                std::sync::Arc::make_mut(heartbeat).health = health.clone();
            }
            for input in [
                Input::Tick,
                from_2,
                beat_with("host-3", seq, &[("host-1", seq)], vec![]),
                Input::DatastoreWritten { datastore: "ds1".into(), ok: true },
            ] {
                all.extend(node.handle(now, input, &mut BuiltinPolicies));
            }
        }
        all
    }

    fn failing() -> HostHealth {
        HostHealth { state: HealthState::Failing, reason: "DIMM B2: uncorrected errors".into() }
    }

    #[test]
    fn a_failing_host_is_evacuated_live_and_taken_back_when_healthy() {
        let mut node = Node::new("host-1", cluster(3, 2), 0);
        run(&mut node, &HostHealth::default(), 0, 5_000, true);
        assert!(node.is_master());
        let all = run(&mut node, &failing(), 5_000, 8_000, true);
        assert!(node.maintenance().contains("host-2"), "in maintenance for its health");
        let moved =
            all.iter().any(|a| matches!(a, Action::MigrateVm { vm, from, .. } if vm == "vm-1" && from == "host-2"));
        assert!(moved, "vm-1 live-migrated away: {all:?}");
        assert!(!all.iter().any(|a| matches!(a, Action::StopVm { .. })), "no guest stopped");
        let told = all.iter().any(
            |a| matches!(a, Action::Record(e) if e.kind == EventKind::HostQuarantine && e.message.contains("DIMM B2")),
        );
        assert!(told, "the reason is in the event");
        // Healthy again: back in service.
        run(&mut node, &HostHealth::default(), 8_000, 10_000, false);
        assert!(!node.maintenance().contains("host-2"), "back in service");
    }

    #[test]
    fn a_degraded_host_takes_no_new_vms_but_keeps_its_own() {
        let mut node = Node::new("host-1", cluster(3, 2), 0);
        run(&mut node, &HostHealth::default(), 0, 5_000, true);
        let degraded = HostHealth { state: HealthState::Degraded, reason: "PSU 2 lost".into() };
        let all = run(&mut node, &degraded, 5_000, 8_000, true);
        assert!(!node.maintenance().contains("host-2"));
        assert!(!all.iter().any(|a| matches!(a, Action::MigrateVm { .. } | Action::StopVm { .. })), "{all:?}");
        assert!(node.quarantined("host-2") && !node.quarantined("host-3"));
        let input = node.placement_input(halo_policy::PlacementReason::Evacuation, &[("vm-2".into(), "host-3".into())]);
        let host_2 = input.hosts.iter().find(|h| h.name == "host-2").expect("host-2 listed");
        assert!(host_2.maintenance, "an evacuation does not go to a quarantined host");
        let input = node.placement_input(halo_policy::PlacementReason::Failover, &[("vm-2".into(), "host-3".into())]);
        assert!(!input.hosts.iter().any(|h| h.name == "host-2" && h.maintenance), "a failover still may");
    }

    #[test]
    fn this_hosts_own_health_is_an_alert_once_and_travels_in_its_heartbeat() {
        let mut node = Node::new("host-1", cluster(3, 2), 0);
        let out = node.handle(100, Input::HealthReported(failing()), &mut BuiltinPolicies);
        let alerts: Vec<_> = out
            .iter()
            .filter(
                |a| matches!(a, Action::Record(e) if e.kind == EventKind::HostHealth && e.severity == Severity::Alert),
            )
            .collect();
        assert_eq!(alerts.len(), 1, "{out:?}");
        assert!(
            out.iter().any(|a| matches!(a, Action::SendHeartbeat { heartbeat, .. } if heartbeat.health == failing()))
        );
        let again = node.handle(200, Input::HealthReported(failing()), &mut BuiltinPolicies);
        assert!(!again.iter().any(|a| matches!(a, Action::Record(e) if e.kind == EventKind::HostHealth)));
    }
}
