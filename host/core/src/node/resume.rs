//! Judging after a gap: a node that was not fed for a while (its agent stopped, its host
//! frozen, its loop stalled) must not judge anything from what it knew before the gap.
//!
//! The silence it would see on resuming is its own absence. So on `Input::Resumed`:
//!
//! - **Evidence before the gap is dropped.** Acks of heartbeats sent before the gap no longer
//!   count toward a quorum, datastore writes before it no longer prove a reachable datastore,
//!   and silence (of peers, for isolation and for the master's verdicts) is counted from the
//!   resume, never from before it. Heartbeats and datastore records go out at once.
//! - **No fencing within [`Timeouts::judge_grace_ms`] of the resume**: one heartbeat round to
//!   hear the peers again and have them acknowledge a heartbeat sent after the gap. A gap
//!   shorter than [`Timeouts::hold_gap_ms`] plus that grace still ends inside the fence
//!   timeout, so a host that really is cut off still stops its VMs before the dead-time.
//! - **After a longer gap its protected VMs are paused at once** (`Action::PauseVm`, libvirt
//!   suspend: milliseconds, nothing lost): for that long the cluster may have found the host
//!   failed and restarted them elsewhere. Each paused VM is *held* until it is settled:
//!   powered off as soon as a newer generation is seen running elsewhere, or when a claim for
//!   its next generation exists on a datastore; resumed when no such claim exists, looked up
//!   no sooner than the fence timeout after the resume (a claim in flight when the host came
//!   back has landed or failed by then — datastore timeouts are shorter, `halo.toml` checks
//!   it) and only while the master acknowledges heartbeats sent after the resume (so it can
//!   no longer find this host failed). A datastore that cannot say keeps the VM paused.
//!   A held VM of a host that fences is stopped by the fencing.
//!
//! Proved by `tests::a_healthy_host_resuming_from_a_long_stall_stops_nothing`,
//! `tests::a_resumed_copy_is_powered_off_when_a_newer_claim_exists` and the simulator's
//! agent-pause and host-freeze faults (invariant: a VM never *runs*, paused or frozen aside,
//! on two hosts).

use std::collections::BTreeMap;

use super::{Action, EventKind, Node, Severity, StopReason};
use crate::Millis;
use crate::config::Timeouts;
use crate::wire::Claim;

/// A protected VM paused after a long gap, until its claim is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Hold {
    /// The generation this host runs.
    generation: u64,
    /// A claim lookup is out.
    checking: bool,
    /// No lookup before this.
    next_check: Millis,
    /// A failed lookup was reported already.
    told: bool,
    /// No newer claim exists; the claim of its own generation is being looked up (a copy whose
    /// generation was claimed for another host is not halo's: it is never resumed).
    own: bool,
}

impl Timeouts {
    /// A gap at least this long is a stall: the agent feeds `Input::Resumed` (two heartbeat
    /// intervals: the agent ticks every 100 ms, so this never happens in normal running).
    pub fn stall_gap_ms(&self) -> Millis {
        2 * self.heartbeat_interval_ms
    }

    /// After a resume, no fencing for this long: one round of heartbeats to be heard and
    /// acknowledged again (two heartbeat intervals).
    pub fn judge_grace_ms(&self) -> Millis {
        2 * self.heartbeat_interval_ms
    }

    /// A gap at least this long pauses the protected VMs on resume: with the judging grace
    /// after it, the fence timeout could have passed, so the cluster may have restarted them.
    pub fn hold_gap_ms(&self) -> Millis {
        self.fence_timeout_ms.saturating_sub(self.judge_grace_ms())
    }
}

impl Node {
    /// The VMs paused after a gap, with the generation each runs.
    pub fn held_vms(&self) -> BTreeMap<String, u64> {
        self.held.iter().map(|(vm, hold)| (vm.clone(), hold.generation)).collect()
    }

    /// `at` if it is evidence of now: not older than the last resume.
    pub(super) fn since_resume(&self, at: Millis) -> Millis {
        self.resumed_at.map_or(at, |resumed| at.max(resumed))
    }

    /// Still inside the grace after a resume (no fencing).
    pub(super) fn resuming(&self) -> bool {
        self.resumed_at.is_some_and(|at| self.now.saturating_sub(at) < self.config.timeouts.judge_grace_ms())
    }

    pub(super) fn on_resumed(&mut self, gap_ms: Millis) {
        let t = self.config.timeouts;
        self.resumed_at = Some(self.now);
        // Only acks of heartbeats sent from now on count toward a quorum.
        let sent = self.seq;
        for peer in self.peers.values_mut() {
            peer.acked_our_seq = peer.acked_our_seq.max(sent);
            peer.ack_advanced_at = None;
        }
        self.ds_write_ok_at.clear();
        self.ds_read_ok_at = None;
        self.next_heartbeat = self.now;
        self.next_datastore = self.now;
        self.next_evaluation = self.now;
        // A host with fence devices may have been fenced and its VMs restarted as soon as the
        // detection time passed (a device that wrongly said "off"): it holds after a gap that
        // long less an interval (simulator seed 270).
        let fenceable = self.config.host(&self.name).is_some_and(|h| h.fenceable);
        let hold_gap = if fenceable { t.hold_gap_ms().min(t.fence_after_ms()) } else { t.hold_gap_ms() };
        let hold = gap_ms >= hold_gap && self.ha_enabled && !self.ha_disabled_here;
        let to_hold = if hold { self.unheld_protected_vms() } else { Vec::new() };
        self.record(
            Severity::Warning,
            EventKind::Resumed,
            format!(
                "{} resumes after {:.1}s in which it handled nothing: it judges peers and itself only on evidence from now on{}",
                self.name,
                gap_ms as f64 / 1000.0,
                if to_hold.is_empty() { String::new() } else { format!("; pausing {} protected VM(s)", to_hold.len()) }
            ),
            None,
        );
        self.hold_with_alert(
            to_hold,
            &format!("the cluster may have restarted them during the {:.1}s gap", gap_ms as f64 / 1000.0),
        );
    }

    /// The protected VMs running here that are not held yet, with their generations.
    pub(super) fn unheld_protected_vms(&self) -> Vec<(String, u64)> {
        self.local_vms
            .iter()
            .filter(|(vm, _)| !self.held.contains_key(*vm))
            .filter(|(vm, _)| self.config.vm(vm).is_some_and(|s| s.protected()))
            .map(|(vm, g)| (vm.clone(), *g))
            .collect()
    }

    /// Holds `vms` (see [`Node::hold`]) with the alert `vms-held` saying `why`.
    pub(super) fn hold_with_alert(&mut self, vms: Vec<(String, u64)>, why: &str) {
        if vms.is_empty() {
            return;
        }
        let names: Vec<&str> = vms.iter().map(|(vm, _)| vm.as_str()).collect();
        self.record(
            Severity::Alert,
            EventKind::VmsHeld,
            format!(
                "{}: {} paused — {why}; each runs again once no newer claim exists, or is powered off",
                self.name,
                names.join(", ")
            ),
            None,
        );
        self.hold(vms);
    }

    /// Pauses `vms` (with the generation each runs) and holds them until settled: no claim
    /// lookup before a fence timeout from now.
    pub(super) fn hold(&mut self, vms: Vec<(String, u64)>) {
        let next_check = self.now + self.config.timeouts.fence_timeout_ms;
        for (vm, generation) in vms {
            self.out.push(Action::PauseVm { vm: vm.clone() });
            self.held.insert(vm, Hold { generation, checking: false, next_check, told: false, own: false });
        }
    }

    /// A VM found paused by a hold an earlier agent of this host began: held again, and
    /// settled like any hold (looked up no sooner than the fence timeout from now: how long
    /// this host was without an agent is not known).
    pub(super) fn found_held(&mut self, vm: &str, generation: u64) {
        self.local_vms.insert(vm.to_string(), generation);
        self.stopped.retain(|r| r.vm != vm);
        let next_check = self.now + self.config.timeouts.fence_timeout_ms;
        self.held.insert(vm.to_string(), Hold { generation, checking: false, next_check, told: false, own: false });
        self.record(
            Severity::Warning,
            EventKind::VmHeld,
            format!(
                "{vm} is paused on {} by a hold an earlier agent began: it runs again once no newer claim exists, or is powered off",
                self.name
            ),
            None,
        );
    }

    /// The master acknowledges a heartbeat sent after the resume (or this node is master).
    fn master_hears_us(&self) -> bool {
        if self.master.is_some() {
            return true;
        }
        let Some((master, _)) = &self.master_view else { return false };
        self.peers.get(master).is_some_and(|p| p.ack_advanced_at.is_some())
    }

    /// Each held VM: powered off when a newer generation runs or is claimed, resumed when no
    /// newer claim exists, kept paused while that cannot be told.
    pub(super) fn settle_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let vms: Vec<String> = self.held.keys().cloned().collect();
        for vm in vms {
            let Some(hold) = self.held.get(&vm).cloned() else { continue };
            if self.local_vms.get(&vm) != Some(&hold.generation) {
                // Stopped (by fencing, the operator) or gone meanwhile: nothing to settle.
                self.held.remove(&vm);
                continue;
            }
            let newer = self.generations.get(&vm).is_some_and(|&g| g > hold.generation);
            if newer {
                let known = self.generations.get(&vm).copied().unwrap_or_default();
                self.power_off_held(&vm, format!("generation {known} runs elsewhere"));
                continue;
            }
            if self.fenced || hold.checking || self.now < hold.next_check || !self.master_hears_us() {
                continue;
            }
            if let Some(h) = self.held.get_mut(&vm) {
                h.checking = true;
            }
            self.out.push(Action::CheckClaim { vm, generation: hold.generation + 1 });
        }
    }

    /// The claim of a held VM's own generation: a copy of a generation claimed for another
    /// host was started outside halo (and paused by the master as such): it stays paused;
    /// otherwise it runs again.
    fn on_own_claim_checked(&mut self, vm: &str, holder: Result<Option<Claim>, String>) {
        let (now, backoff, window) =
            (self.now, self.config.timeouts.retry_backoff_ms, self.config.timeouts.election_timeout_ms);
        let Some(hold) = self.held.get_mut(vm) else { return };
        hold.checking = false;
        hold.own = false;
        let held_generation = hold.generation;
        // What the peers heard since the gap say: is the VM running elsewhere, and does the
        // host its generation was claimed for still run it? A VM moved here by a live
        // migration keeps its generation and its claim, which names the host it left
        // (simulator seeds 849 and 1554: such a VM stayed paused for good).
        let resumed_at = self.resumed_at;
        let fresh = |p: &super::Peer| {
            p.heard_directly_at.is_some_and(|at| resumed_at.is_none_or(|r| at > r) && now.saturating_sub(at) < window)
        };
        // Another host runs it (this generation or a later one): heard since the gap, this
        // copy is the extra one — the master may have paused it as started outside halo before
        // the gap (simulator seed 1370: resumed beside halo's); on an older list, asked later.
        let lists_it = |p: &super::Peer| p.vms.iter().any(|r| r.vm == vm && r.generation >= held_generation);
        let runs_elsewhere = self.peers.iter().find(|(_, p)| fresh(p) && lists_it(p)).map(|(n, _)| n.clone());
        let maybe_elsewhere = self.peers.values().any(|p| !fresh(p) && lists_it(p));
        let moved_here =
            |claim: &Claim| self.peers.get(&claim.host).is_some_and(|p| fresh(p) && !p.vms.iter().any(|r| r.vm == vm));
        match holder {
            Ok(claim) if runs_elsewhere.is_some() => {
                // Kept paused, and asked again later: which copy is halo's only the master
                // knows; when the other one goes (destroyed by the operator), this one runs
                // again (simulator seed 10665: halo's own copy, held after a gap beside the
                // one started outside, which the master had paused, stayed paused for good).
                let Some(hold) = self.held.get_mut(vm) else { return };
                hold.next_check = now + backoff;
                if std::mem::replace(&mut hold.told, true) {
                    return;
                }
                let other = runs_elsewhere.unwrap_or_default();
                let why = match claim {
                    Some(claim) if claim.host != self.name => {
                        format!("its generation {} was claimed for {}", claim.generation, claim.host)
                    }
                    _ => format!("it runs on {other}"),
                };
                self.record(
                    Severity::Alert,
                    EventKind::VmHeld,
                    format!(
                        "{vm} stays paused on {}: {why} — this copy may not be halo's (inspect both; it runs again here when the other is gone, or `virsh destroy` it)",
                        self.name
                    ),
                    None,
                );
            }
            // Not known yet — the claim's host, or a host listing it, not heard since the gap:
            // asked again later.
            Ok(claim) if maybe_elsewhere || claim.as_ref().is_some_and(|c| c.host != self.name && !moved_here(c)) => {
                if let Some(hold) = self.held.get_mut(vm) {
                    hold.next_check = now + backoff;
                }
            }
            Ok(claim) => {
                self.held.remove(vm);
                if claim.is_some_and(|c| c.host != self.name) {
                    self.record(
                        Severity::Info,
                        EventKind::VmResumed,
                        format!(
                            "{vm}: its generation {held_generation} was claimed for another host, which no longer runs it (moved here live)"
                        ),
                        None,
                    );
                }
                self.out.push(Action::ResumeVm { vm: vm.to_string() });
                self.record(
                    Severity::Info,
                    EventKind::VmResumed,
                    format!("{vm} runs again on {}: no newer claim exists", self.name),
                    None,
                );
            }
            Err(why) => self.lookup_failed(vm, &why),
        }
    }

    /// A held VM's claim could not be looked up: it stays paused, asked again after the retry
    /// backoff; said once.
    fn lookup_failed(&mut self, vm: &str, why: &str) {
        let (now, backoff) = (self.now, self.config.timeouts.retry_backoff_ms);
        let Some(hold) = self.held.get_mut(vm) else { return };
        hold.next_check = now + backoff;
        if !std::mem::replace(&mut hold.told, true) {
            self.record(
                Severity::Warning,
                EventKind::VmHeld,
                format!("{vm} stays paused on {}: its claim cannot be looked up ({why}); retrying", self.name),
                None,
            );
        }
    }

    pub(super) fn on_claim_checked(&mut self, vm: &str, generation: u64, holder: Result<Option<Claim>, String>) {
        let Some(hold) = self.held.get_mut(vm) else { return };
        if !hold.checking {
            return;
        }
        if hold.own && generation == hold.generation {
            return self.on_own_claim_checked(vm, holder);
        }
        if generation != hold.generation + 1 || hold.own {
            return;
        }
        hold.checking = false;
        match holder {
            Ok(Some(claim)) => {
                self.note_generation(vm, claim.generation);
                self.power_off_held(
                    vm,
                    format!(
                        "generation {} was claimed by {} (epoch {}) for {}",
                        claim.generation, claim.master, claim.epoch, claim.host
                    ),
                );
            }
            Ok(None) => {
                // No newer claim: is this copy the one its own generation was claimed for?
                hold.checking = true;
                hold.own = true;
                let own = hold.generation;
                self.out.push(Action::CheckClaim { vm: vm.to_string(), generation: own });
            }
            Err(why) => self.lookup_failed(vm, &why),
        }
    }

    fn power_off_held(&mut self, vm: &str, why: String) {
        self.held.remove(vm);
        self.record(
            Severity::Alert,
            EventKind::VmSuperseded,
            format!("{vm}: {why} while {} was stalled; powering off the paused copy here", self.name),
            None,
        );
        self.out.push(Action::StopVm { vm: vm.to_string(), reason: StopReason::Fence, grace_secs: 0 });
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{beat, beat_with};
    use super::*;
    use crate::config::tests::cluster;
    use crate::node::{Input, VmState};
    use crate::policies::BuiltinPolicies;
    use crate::wire::VmReport;

    fn kinds(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Record(e) => Some(e.kind.to_string()),
                Action::PauseVm { vm } => Some(format!("pause {vm}")),
                Action::ResumeVm { vm } => Some(format!("resume {vm}")),
                Action::StopVm { vm, .. } => Some(format!("stop {vm}")),
                Action::CheckClaim { vm, generation } => Some(format!("check {vm}@{generation}")),
                _ => None,
            })
            .collect()
    }

    /// host-3 in a 3-host cluster with 2 protected VMs, hearing host-1 (the master) and
    /// host-2 until `until`, acking our heartbeats; returns the node and host-3's seq then.
    fn running_node(until: Millis) -> (Node, u64) {
        let mut config = cluster(3, 2);
        config.timeouts = Timeouts::default();
        let mut node = Node::new("host-3", config.clone(), 0);
        let mut p = BuiltinPolicies;
        for vm in config.vms.iter().map(|v| v.name.clone()).take(2) {
            node.handle(0, Input::VmState { vm, generation: 1, state: VmState::Running }, &mut p);
        }
        let mut now = 0;
        let mut seq = 0;
        while now <= until {
            for a in node.handle(now, Input::Tick, &mut p) {
                if let Action::SendHeartbeat { heartbeat, .. } = a {
                    seq = heartbeat.seq;
                }
            }
            let n = now / 100 + 1;
            node.handle(now, master_beat(n, seq), &mut p);
            node.handle(now, beat("host-2", n, &[("host-3", seq)]), &mut p);
            node.handle(now, Input::DatastoreWritten { datastore: "ds1".into(), ok: true }, &mut p);
            now += 100;
        }
        (node, seq)
    }

    fn master_beat(n: u64, acked: u64) -> Input {
        let mut input = beat("host-1", n, &[("host-3", acked)]);
        if let Input::Heartbeat { heartbeat, .. } = &mut input {
            std::sync::Arc::make_mut(heartbeat).master = Some(("host-1".into(), 1));
        }
        input
    }

    fn vm_names(node: &Node) -> Vec<String> {
        node.local_vms().keys().cloned().collect()
    }

    #[test]
    fn a_healthy_host_resuming_from_a_long_stall_stops_nothing() {
        let (mut node, _) = running_node(5_000);
        assert_eq!(node.master().map(|(m, _)| m.as_str()), Some("host-1"));
        let vms = vm_names(&node);
        let mut p = BuiltinPolicies;
        // 15 s in which nothing was handled: the agent was stopped.
        let resumed = 20_000;
        let actions = node.handle(resumed, Input::Resumed { gap_ms: 15_000 }, &mut p);
        let seen = kinds(&actions);
        assert!(seen.contains(&"resumed".to_string()), "{seen:?}");
        for vm in &vms {
            assert!(seen.contains(&format!("pause {vm}")), "a long gap pauses {vm}: {seen:?}");
        }
        // The same instant, the stale silence must not fence (the bug of issue 14).
        let actions = node.handle(resumed, Input::Tick, &mut p);
        assert!(!kinds(&actions).iter().any(|k| k == "fenced" || k.starts_with("stop")), "{:?}", kinds(&actions));
        // Heartbeats go out at once; the peers acknowledge the new ones.
        let mut sent = 0;
        let mut all = Vec::new();
        let mut now = resumed;
        while now <= resumed + 4_000 {
            let actions = node.handle(now, Input::Tick, &mut p);
            for a in &actions {
                if let Action::SendHeartbeat { heartbeat, .. } = a {
                    sent = heartbeat.seq;
                }
            }
            all.extend(kinds(&actions));
            let n = 100 + now / 100;
            all.extend(kinds(&node.handle(now + 20, master_beat(n, sent), &mut p)));
            all.extend(kinds(&node.handle(now + 20, beat("host-2", n, &[("host-3", sent)]), &mut p)));
            all.extend(kinds(&node.handle(
                now + 30,
                Input::DatastoreWritten { datastore: "ds1".into(), ok: true },
                &mut p,
            )));
            now += 100;
        }
        assert!(!all.iter().any(|k| k == "fenced" || k.starts_with("stop")), "{all:?}");
        // The claims are looked up no sooner than the fence timeout after the resume.
        for vm in &vms {
            assert!(all.contains(&format!("check {vm}@2")), "{all:?}");
        }
        let mut resumed_now = Vec::new();
        for vm in &vms {
            // No newer claim; then its own generation's claim: none (it was never restarted).
            let answer = Input::ClaimChecked { vm: vm.clone(), generation: 2, holder: Ok(None) };
            let own = kinds(&node.handle(now, answer, &mut p));
            assert_eq!(own, vec![format!("check {vm}@1")], "its own generation next");
            let answer = Input::ClaimChecked { vm: vm.clone(), generation: 1, holder: Ok(None) };
            resumed_now.extend(kinds(&node.handle(now, answer, &mut p)));
        }
        for vm in &vms {
            assert!(resumed_now.contains(&format!("resume {vm}")), "{resumed_now:?}");
        }
        assert!(node.held_vms().is_empty());
        assert_eq!(vm_names(&node), vms, "the same VMs run here");
    }

    #[test]
    fn a_resumed_copy_is_powered_off_when_a_newer_claim_exists() {
        let (mut node, _) = running_node(3_000);
        let vms = vm_names(&node);
        let mut p = BuiltinPolicies;
        node.handle(15_000, Input::Resumed { gap_ms: 12_000 }, &mut p);
        assert_eq!(node.held_vms().len(), vms.len());
        // A claim lookup that fails keeps the VM paused.
        let mut now = 15_000;
        let mut sent = 0;
        let mut checks = Vec::new();
        while now <= 19_000 {
            for a in node.handle(now, Input::Tick, &mut p) {
                match a {
                    Action::SendHeartbeat { heartbeat, .. } => sent = heartbeat.seq,
                    Action::CheckClaim { vm, generation } => checks.push((vm, generation)),
                    _ => {}
                }
            }
            node.handle(now + 10, master_beat(200 + now / 100, sent), &mut p);
            node.handle(now + 10, Input::DatastoreWritten { datastore: "ds1".into(), ok: true }, &mut p);
            now += 100;
        }
        assert!(checks.iter().all(|(_, g)| *g == 2) && checks.len() == vms.len(), "{checks:?}");
        let first = &vms[0];
        let failed = Input::ClaimChecked { vm: first.clone(), generation: 2, holder: Err("ds1 timed out".into()) };
        let seen = kinds(&node.handle(now, failed, &mut p));
        assert!(seen.contains(&"vm-held".to_string()) && !seen.iter().any(|k| k.starts_with("resume")), "{seen:?}");
        // The claim for generation 2 exists: powered off, never resumed.
        let claim =
            Claim { vm: vms[1].clone(), generation: 2, master: "host-1".into(), epoch: 1, host: "host-2".into() };
        let answer = Input::ClaimChecked { vm: vms[1].clone(), generation: 2, holder: Ok(Some(claim)) };
        let seen = kinds(&node.handle(now, answer, &mut p));
        assert!(seen.contains(&format!("stop {}", vms[1])) && seen.contains(&"vm-superseded".to_string()), "{seen:?}");
        assert!(!seen.iter().any(|k| k.starts_with("resume")));
        // A newer generation reported running elsewhere powers the other one off at once.
        let report = VmReport { vm: first.clone(), generation: 2 };
        let mut seen =
            kinds(&node.handle(now + 50, beat_with("host-2", 500, &[("host-3", sent)], vec![report]), &mut p));
        seen.extend(kinds(&node.handle(now + 100, Input::Tick, &mut p)));
        assert!(seen.contains(&format!("stop {first}")), "{seen:?}");
        assert!(node.held_vms().is_empty());
    }

    #[test]
    fn a_vm_an_earlier_agent_held_is_settled_not_taken_for_running() {
        // A fresh agent on host-3 finds vm-1 paused with halo's hold mark (its predecessor
        // paused it after a gap and died before settling it): held again, looked up after the
        // fence timeout once the master hears this host, and resumed when no newer claim exists
        // and its own generation was claimed for this host — not when it was claimed for
        // another that still runs it (a copy started outside halo, which the master paused);
        // when that host runs it no more, it was moved here live (simulator seed 849).
        let settled = |own_host: &str, master_runs_it: bool| {
            let (mut node, _) = running_node(2_000);
            let mut p = BuiltinPolicies;
            let seen = kinds(&node.handle(
                2_000,
                Input::VmState { vm: "vm-9".into(), generation: 4, state: VmState::Held },
                &mut p,
            ));
            assert!(seen.contains(&"vm-held".to_string()), "{seen:?}");
            assert_eq!(node.held_vms().get("vm-9"), Some(&4));
            assert_eq!(node.local_vms().get("vm-9"), Some(&4), "it is here (paused)");
            let (mut now, mut sent, mut all) = (2_000, 0, Vec::new());
            while now <= 2_000 + node.config().timeouts.fence_timeout_ms + 500 {
                for a in node.handle(now, Input::Tick, &mut p) {
                    if let Action::SendHeartbeat { heartbeat, .. } = &a {
                        sent = heartbeat.seq;
                    }
                    all.push(a);
                }
                let mut beat = master_beat(100 + now / 100, sent);
                if master_runs_it && let Input::Heartbeat { heartbeat, .. } = &mut beat {
                    std::sync::Arc::make_mut(heartbeat).vms = vec![VmReport { vm: "vm-9".into(), generation: 4 }];
                }
                node.handle(now + 10, beat, &mut p);
                node.handle(now + 10, Input::DatastoreWritten { datastore: "ds1".into(), ok: true }, &mut p);
                now += 100;
            }
            let checks: Vec<String> = kinds(&all).into_iter().filter(|k| k.starts_with("check")).collect();
            assert_eq!(checks, vec!["check vm-9@5".to_string()], "one lookup, of the next generation");
            assert!(!kinds(&all).iter().any(|k| k.starts_with("resume") || k.starts_with("stop")), "{:?}", kinds(&all));
            let answer = Input::ClaimChecked { vm: "vm-9".into(), generation: 5, holder: Ok(None) };
            let seen = kinds(&node.handle(now, answer, &mut p));
            assert_eq!(seen, vec!["check vm-9@4".to_string()], "then its own generation's claim");
            let claim =
                Claim { vm: "vm-9".into(), generation: 4, master: "host-1".into(), epoch: 1, host: own_host.into() };
            let answer = Input::ClaimChecked { vm: "vm-9".into(), generation: 4, holder: Ok(Some(claim)) };
            let seen = kinds(&node.handle(now, answer, &mut p));
            // Settled, or (another host runs it) still held and asked about again later.
            assert_eq!(node.held_vms().is_empty(), !master_runs_it, "{:?}", node.held_vms());
            seen
        };
        let seen = settled("host-3", false);
        assert!(seen.contains(&"resume vm-9".to_string()), "claimed for this host: {seen:?}");
        let seen = settled("host-1", true);
        assert!(!seen.iter().any(|k| k.starts_with("resume") || k.starts_with("stop")), "{seen:?}");
        assert!(seen.contains(&"vm-held".to_string()), "stays paused while host-1 runs it, said so: {seen:?}");
        let seen = settled("host-1", false);
        assert!(seen.contains(&"resume vm-9".to_string()), "moved here live: {seen:?}");
    }

    #[test]
    fn the_liveness_paths_number_before_a_resume_judges_nothing() {
        // The agent tells the node how far its liveness path numbered, right before the gap:
        // that alone must not judge from the stale evidence (it once fenced here).
        let (mut node, _) = running_node(5_000);
        let mut p = BuiltinPolicies;
        let seen = kinds(&node.handle(20_000, Input::KeptAlive { seq: 500 }, &mut p));
        assert!(seen.is_empty(), "{seen:?}");
        let seen = kinds(&node.handle(20_000, Input::Resumed { gap_ms: 15_000 }, &mut p));
        assert!(!seen.iter().any(|k| k == "fenced" || k.starts_with("stop")), "{seen:?}");
        // Acks up to the number given count for nothing after the gap.
        let seen = kinds(&node.handle(20_010, master_beat(900, 500), &mut p));
        assert!(seen.is_empty() || !seen.contains(&"fenced".to_string()));
        let peer = &node.peers["host-1"];
        assert!(peer.ack_advanced_at.is_none(), "an ack of a number sent before the gap: {}", peer.acked_our_seq);
        node.handle(20_020, master_beat(901, 501), &mut p);
        let peer = &node.peers["host-1"];
        assert_eq!(peer.ack_advanced_at, Some(20_020), "an ack of a number sent after it: {}", peer.acked_our_seq);
    }

    #[test]
    fn a_short_stall_pauses_nothing_and_a_cut_off_host_still_fences_before_the_dead_time() {
        let (mut node, _) = running_node(3_000);
        let mut p = BuiltinPolicies;
        let t = node.config().timeouts;
        let gap = t.hold_gap_ms() - 100;
        let resumed = 3_000 + gap;
        let seen = kinds(&node.handle(resumed, Input::Resumed { gap_ms: gap }, &mut p));
        assert!(!seen.iter().any(|k| k.starts_with("pause")), "{seen:?}");
        // Nothing is heard any more (cut off): fenced after the grace, and the whole silence
        // (from before the gap) stays within the fence timeout.
        let fenced = super::super::tests::tick_until(
            &mut node,
            resumed,
            resumed + 3_000,
            |a| matches!(a, Action::Record(e) if e.kind == "fenced"),
        );
        let (at, _) = fenced.expect("fences");
        assert!(at >= resumed + t.judge_grace_ms(), "not within the grace: {at}");
        assert!(at - 3_000 <= t.fence_timeout_ms + 100, "silence {} ms before fencing", at - 3_000);
    }
}
