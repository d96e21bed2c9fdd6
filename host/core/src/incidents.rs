//! Failovers as incidents: every host the master declared failed (or isolated), from the
//! host's last signs of life to the last of its VMs running again, as steps with their times —
//! so an operator sees where the seconds went. Built from the events alone (their times, and
//! the signal ages in a verdict's trace, which are rounded to 0.1 s), on the read side: it
//! decides nothing.
//!
//! An incident opens at a verdict `host-failed` or `host-isolated` (a `host-suspect` just
//! before it is its first step); its VMs are those the master then reports `vm-lost` from that
//! host; it is over when each of them is `vm-restarted` (or given up). Restart waves, claim
//! problems and capacity shortages that name one of its VMs are steps of it.

use serde::{Deserialize, Serialize};

use crate::{EventKind, Millis};

/// One event as the incidents are built from it (in time order; `at` in ms on one clock).
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    /// When.
    pub at: Millis,
    /// What.
    pub kind: EventKind,
    /// Its message.
    pub message: &'a str,
    /// Its trace (a verdict's signals).
    pub trace: Option<&'a str>,
}

/// What a step of an incident is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    /// The last heartbeat heard from the host on a network (`what`: the network).
    LastHeartbeat,
    /// The host's datastore record last advanced (`what`: the datastore).
    LastDatastoreRecord,
    /// The master found the host silent everywhere.
    Suspect,
    /// The host did not answer ping (at the verdict).
    NoPingAnswer,
    /// The master's verdict (`what`: `failed` or `isolated`).
    Verdict,
    /// One of the host's VMs queued for restart (`what`: the VM).
    VmLost,
    /// A restart wave placed one of its VMs (`what`: the VM; the message names the target).
    RestartWave,
    /// A claim or start of one of its VMs did not go through at once (`what`: the VM).
    Setback,
    /// One of its VMs runs again (`what`: the VM).
    VmRestarted,
    /// One of its VMs will not be restarted (`what`: the VM).
    GaveUp,
}

/// One step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Step {
    /// When (the events' clock).
    pub at: Millis,
    /// Since the incident's first step.
    pub after_ms: Millis,
    /// What.
    pub kind: StepKind,
    /// The network, datastore, verdict or VM it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub what: Option<String>,
    /// The event's message (or the trace's words for a signal).
    pub message: String,
}

/// One failover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Incident {
    /// Its number, from 1 in the order they began.
    pub id: u32,
    /// The host.
    pub host: String,
    /// The master's verdict: `failed` or `isolated`.
    pub verdict: String,
    /// The first step (the host's last sign of life).
    pub began_at: Millis,
    /// When the last of its VMs ran again (or was given up); `None` while some are pending.
    pub ended_at: Option<Millis>,
    /// The VMs lost with the host.
    pub vms: Vec<String>,
    /// Those running again.
    pub restarted: Vec<String>,
    /// Every step, in time order.
    pub steps: Vec<Step>,
}

impl Incident {
    /// From the first step to the last VM running again.
    pub fn took_ms(&self) -> Option<Millis> {
        self.ended_at.map(|end| end.saturating_sub(self.began_at))
    }

    fn open(&self) -> bool {
        self.ended_at.is_none()
    }

    fn push(&mut self, at: Millis, kind: StepKind, what: Option<&str>, message: &str) {
        self.steps.push(Step { at, after_ms: 0, kind, what: what.map(String::from), message: message.to_string() });
    }

    /// The VMs running again or given up.
    fn finished(&self) -> Vec<String> {
        self.vms
            .iter()
            .filter(|vm| {
                self.steps.iter().any(|s| {
                    matches!(s.kind, StepKind::VmRestarted | StepKind::GaveUp) && s.what.as_deref() == Some(vm.as_str())
                })
            })
            .cloned()
            .collect()
    }

    /// Sorts the steps, measures them from the first, closes the incident when every VM is
    /// accounted for.
    fn settle(&mut self) {
        let done = self.finished();
        self.steps.sort_by_key(|s| s.at);
        self.began_at = self.steps.first().map_or(self.began_at, |s| s.at);
        for step in &mut self.steps {
            step.after_ms = step.at.saturating_sub(self.began_at);
        }
        if !self.vms.is_empty() && self.vms.iter().all(|vm| done.contains(vm)) {
            self.ended_at =
                self.steps.iter().rev().find(|s| s.what.as_ref().is_some_and(|w| done.contains(w))).map(|s| s.at);
        }
    }
}

/// The host a verdict event is about (`host-2: failed — …`).
fn verdict_host(message: &str) -> Option<&str> {
    message.split_once(':').map(|(host, _)| host.trim())
}

/// The signals of a verdict's trace with their ages (`net A: 3.1s ago`, `ds ds1: counter 34
/// advanced 3.1s ago`): (kind, network or datastore, ms ago).
fn signals(trace: &str) -> Vec<(StepKind, String, Millis)> {
    let ago = |text: &str| -> Option<Millis> {
        let seconds: f64 = text.trim().strip_suffix("s ago")?.parse().ok()?;
        Some((seconds * 1000.0).round() as Millis)
    };
    let mut found = Vec::new();
    for part in trace.split([';', ',']) {
        let part = part.trim();
        let part = part.split_once(": ").filter(|(head, _)| !head.contains(' ')).map_or(part, |(_, rest)| rest);
        if let Some(rest) = part.strip_prefix("net ")
            && let Some((network, age)) = rest.split_once(": ")
            && let Some(ms) = ago(age)
        {
            found.push((StepKind::LastHeartbeat, network.to_string(), ms));
        } else if let Some(rest) = part.strip_prefix("ds ")
            && let Some((datastore, rest)) = rest.split_once(": ")
            && let Some((_, age)) = rest.split_once(" advanced ")
            && let Some(ms) = ago(age)
        {
            found.push((StepKind::LastDatastoreRecord, datastore.to_string(), ms));
        }
    }
    found
}

/// The incidents in `events` (in time order), oldest first.
pub fn incidents(events: &[Seen]) -> Vec<Incident> {
    let mut all: Vec<Incident> = Vec::new();
    let mut suspect: Vec<(String, Millis, String)> = Vec::new();
    // Hosts heard running again since their last incident: a verdict for one of them is a new
    // failure; for any other it is the same failure judged again (e.g. after a datastore
    // came back with its stale record).
    let mut back: Vec<String> = Vec::new();
    for e in events {
        let vm_first = || e.message.split_whitespace().next().map(|w| w.trim_end_matches(':'));
        match e.kind {
            EventKind::HostSuspect => {
                if let Some(host) = verdict_host(e.message) {
                    suspect.retain(|(h, _, _)| h != host);
                    suspect.push((host.to_string(), e.at, e.message.to_string()));
                }
            }
            EventKind::HostRunning => {
                if let Some(host) = verdict_host(e.message) {
                    suspect.retain(|(h, _, _)| h != host);
                    back.retain(|h| h != host);
                    back.push(host.to_string());
                }
            }
            EventKind::HostFailed | EventKind::HostIsolated => {
                let Some(host) = verdict_host(e.message) else { continue };
                if all.iter().any(|i| i.host == host) && !back.iter().any(|h| h == host) {
                    suspect.retain(|(h, _, _)| h != host);
                    continue; // the same failure, judged again
                }
                back.retain(|h| h != host);
                let verdict = if e.kind == EventKind::HostFailed { "failed" } else { "isolated" };
                let mut incident = Incident {
                    id: all.len() as u32 + 1,
                    host: host.to_string(),
                    verdict: verdict.to_string(),
                    began_at: e.at,
                    ended_at: None,
                    vms: Vec::new(),
                    restarted: Vec::new(),
                    steps: Vec::new(),
                };
                for (kind, what, ms) in e.trace.map(signals).unwrap_or_default() {
                    let words = match kind {
                        StepKind::LastHeartbeat => format!("last heartbeat from {host} on network {what}"),
                        _ => format!("{host}'s record on datastore {what} last advanced"),
                    };
                    incident.push(e.at.saturating_sub(ms), kind, Some(&what), &words);
                }
                if let Some(i) = suspect.iter().position(|(h, _, _)| h == host) {
                    let (_, at, message) = suspect.remove(i);
                    incident.push(at, StepKind::Suspect, None, &message);
                }
                if e.trace.is_some_and(|t| t.contains("no ping answer")) {
                    incident.push(e.at, StepKind::NoPingAnswer, None, &format!("{host} does not answer ping"));
                }
                incident.push(e.at, StepKind::Verdict, Some(verdict), e.message);
                all.push(incident);
            }
            EventKind::VmLost => {
                // `vm-002 lost from host-2 (its host failed); restart queued`
                let (Some(vm), Some(from)) = (vm_first(), e.message.split(" lost from ").nth(1)) else { continue };
                let from = from.split_whitespace().next().unwrap_or_default();
                if let Some(incident) = all.iter_mut().rev().find(|i| i.open() && i.host == from) {
                    if !incident.vms.iter().any(|v| v == vm) {
                        incident.vms.push(vm.to_string());
                    }
                    incident.push(e.at, StepKind::VmLost, Some(vm), e.message);
                }
            }
            EventKind::RestartWave => {
                // `restart wave: vm-006 → host-1, vm-002 → host-3`
                let placed = e.message.strip_prefix("restart wave: ").unwrap_or_default();
                for pair in placed.split(", ") {
                    let Some((vm, target)) = pair.split_once(" → ") else { continue };
                    if let Some(incident) = all.iter_mut().find(|i| i.open() && i.vms.iter().any(|v| v == vm)) {
                        incident.push(e.at, StepKind::RestartWave, Some(vm), &format!("restart wave: {vm} → {target}"));
                    }
                }
            }
            EventKind::RestartWaiting if e.message.contains(" wait for a restart (") => {
                // `2 VM(s) wait for a restart (vm-2, vm-3): …`
                let listed = e.message.split_once(" wait for a restart (").and_then(|(_, rest)| rest.split_once(')'));
                let vms: Vec<&str> = listed.map(|(vms, _)| vms.split(", ").collect()).unwrap_or_default();
                for incident in all.iter_mut().filter(|i| i.open() && i.vms.iter().any(|v| vms.contains(&v.as_str()))) {
                    incident.push(e.at, StepKind::Setback, None, e.message);
                }
            }
            EventKind::VmRestarted
            | EventKind::RestartWaiting
            | EventKind::ClaimFailed
            | EventKind::ClaimLost
            | EventKind::ClaimTimeout
            | EventKind::StartFailed
            | EventKind::RestartTargetFailed
            | EventKind::NoCapacity
            | EventKind::RestartGaveUp => {
                let Some(vm) = vm_first() else { continue };
                let Some(incident) = all.iter_mut().find(|i| i.open() && i.vms.iter().any(|v| v == vm)) else {
                    continue;
                };
                let kind = match e.kind {
                    EventKind::VmRestarted => StepKind::VmRestarted,
                    EventKind::RestartGaveUp => StepKind::GaveUp,
                    _ => StepKind::Setback,
                };
                incident.push(e.at, kind, Some(vm), e.message);
                if kind == StepKind::VmRestarted {
                    incident.restarted.push(vm.to_string());
                }
                if matches!(kind, StepKind::VmRestarted | StepKind::GaveUp) {
                    incident.settle();
                }
            }
            _ => {}
        }
    }
    for incident in all.iter_mut().filter(|i| i.open()) {
        incident.settle();
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(at: Millis, kind: EventKind, message: &'static str, trace: Option<&'static str>) -> Seen<'static> {
        Seen { at, kind, message, trace }
    }

    #[test]
    fn a_crash_is_one_incident_from_the_last_heartbeat_to_the_last_restart() {
        let trace = "host-2: net A: 3.1s ago, net B: 3.0s ago; seq advanced 3.1s ago; ds ds1: counter 34 advanced 2.9s ago; no ping answer";
        let events = [
            seen(1_000, EventKind::MasterElected, "host-1 is master", None),
            seen(12_900, EventKind::HostSuspect, "host-2: suspect", Some("…; ping pending")),
            seen(13_000, EventKind::HostFailed, "host-2: failed — its protected VMs will be restarted", Some(trace)),
            seen(13_000, EventKind::VmLost, "vm-002 lost from host-2 (its host failed); restart queued", None),
            seen(13_000, EventKind::VmLost, "vm-006 lost from host-2 (its host failed); restart queued", None),
            seen(13_000, EventKind::RestartWave, "restart wave: vm-006 → host-1", None),
            seen(13_500, EventKind::VmRestarted, "vm-006 runs on host-1 (restarted by this master)", None),
            seen(13_500, EventKind::RestartWave, "restart wave: vm-002 → host-3", None),
            seen(13_700, EventKind::ClaimFailed, "vm-002: the claim failed: datastore ds1 timed out", None),
            seen(14_000, EventKind::VmRestarted, "vm-002 runs on host-3 (restarted by this master)", None),
            seen(20_000, EventKind::VmRestarted, "vm-009 runs on host-1 (started by the operator)", None),
        ];
        let found = incidents(&events);
        assert_eq!(found.len(), 1, "{found:#?}");
        let i = &found[0];
        assert_eq!((i.id, i.host.as_str(), i.verdict.as_str()), (1, "host-2", "failed"));
        assert_eq!(i.vms, ["vm-002", "vm-006"]);
        assert_eq!(i.restarted, ["vm-006", "vm-002"]);
        assert_eq!(i.began_at, 9_900, "net A's last heartbeat, 3.1 s before the verdict");
        assert_eq!((i.ended_at, i.took_ms()), (Some(14_000), Some(4_100)));
        let kinds: Vec<(Millis, StepKind, Option<&str>)> =
            i.steps.iter().map(|s| (s.after_ms, s.kind, s.what.as_deref())).collect();
        assert_eq!(
            kinds,
            [
                (0, StepKind::LastHeartbeat, Some("A")),
                (100, StepKind::LastHeartbeat, Some("B")),
                (200, StepKind::LastDatastoreRecord, Some("ds1")),
                (3_000, StepKind::Suspect, None),
                (3_100, StepKind::NoPingAnswer, None),
                (3_100, StepKind::Verdict, Some("failed")),
                (3_100, StepKind::VmLost, Some("vm-002")),
                (3_100, StepKind::VmLost, Some("vm-006")),
                (3_100, StepKind::RestartWave, Some("vm-006")),
                (3_600, StepKind::VmRestarted, Some("vm-006")),
                (3_600, StepKind::RestartWave, Some("vm-002")),
                (3_800, StepKind::Setback, Some("vm-002")),
                (4_100, StepKind::VmRestarted, Some("vm-002")),
            ]
        );
    }

    #[test]
    fn a_suspect_that_recovers_is_no_incident_and_an_open_one_has_no_end() {
        let events = [
            seen(1_000, EventKind::HostSuspect, "host-3: suspect", None),
            seen(1_500, EventKind::HostRunning, "host-3: running", None),
            seen(5_000, EventKind::HostFailed, "host-3: failed — its protected VMs will be restarted", None),
            seen(5_000, EventKind::VmLost, "vm-1 lost from host-3 (its host failed); restart queued", None),
            seen(
                5_100,
                EventKind::RestartWaiting,
                "1 VM(s) wait for a restart (vm-1): the claim store etcd could not be written lately; a claim must be taken before a start",
                None,
            ),
            seen(6_000, EventKind::NoCapacity, "vm-1: no host has room", None),
            // Judged again (its stale record came back with the store): the same incident.
            seen(7_000, EventKind::HostSuspect, "host-3: suspect", None),
            seen(8_000, EventKind::HostFailed, "host-3: failed — its protected VMs will be restarted", None),
        ];
        let found = incidents(&events);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].ended_at, None, "vm-1 still waits");
        assert!(!found[0].steps.iter().any(|s| s.kind == StepKind::Suspect), "the earlier suspicion was cleared");
        let setbacks: Vec<Millis> =
            found[0].steps.iter().filter(|s| s.kind == StepKind::Setback).map(|s| s.at).collect();
        assert_eq!(setbacks, [5_100, 6_000]);
        // Heard running again, then failed: a second incident.
        let mut again = events.to_vec();
        again.push(seen(9_000, EventKind::HostRunning, "host-3: running", None));
        again.push(seen(20_000, EventKind::HostFailed, "host-3: failed — its protected VMs will be restarted", None));
        assert_eq!(incidents(&again).len(), 2);
    }
}
