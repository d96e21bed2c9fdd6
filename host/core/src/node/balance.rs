//! The master balances (issue 18): `halo balance plan` asks for a proposal
//! (`crate::balance::propose`: the balancing plugin or the built-in policy), `halo balance apply` carries one out, and in `auto` mode the
//! master looks every interval. Moves are live migrations, at most `max-concurrent` at once,
//! each re-checked when it starts (the VM still where it was, the target in contact). Nothing
//! moves while a failover, a maintenance or a fence is under way; a proposal that would lower
//! the failover plan's tolerance below its target is cut until it does not.

use std::collections::{BTreeMap, VecDeque};

use super::fence::Fence;
use super::{Action, EventKind, Node, Severity, Verdict};
use crate::balance::{BalanceHost, BalanceMode, BalanceVm, Move, Proposal};
use crate::policies::Policies;

/// What the master keeps of balancing.
#[derive(Debug, Clone, Default)]
pub(super) struct Balancing {
    /// Moves still to start, in order.
    queue: VecDeque<Move>,
    /// Moves started and not finished (VM → move).
    running: BTreeMap<String, Move>,
    /// When each VM was last moved by balancing.
    moved_at: BTreeMap<String, crate::Millis>,
    /// `auto`/`propose`: when the master looks next.
    next_look: crate::Millis,
    /// `propose`: the imbalance was told (not again until it falls below the threshold).
    told: bool,
    /// A round was started and its end is not said yet.
    in_round: bool,
    /// When balancing last had to wait (a failover, a fence, a host out of contact, …): it
    /// starts moves again only after the cluster stayed calm for [`SETTLE_DEAD_TIMES`]
    /// dead-times.
    unsettled_at: crate::Millis,
}

/// How long the cluster must stay calm, in dead-times, before balancing moves VMs again: a
/// failover's restarts, a master's election, a host back from a cut all settle first (the
/// simulator, seed 131: balancing right after a failover, a returning master took its moves
/// for VMs started twice).
pub const SETTLE_DEAD_TIMES: u64 = 4;

impl Node {
    /// What balancing would move now (master only; `None` elsewhere). Nothing is changed.
    pub fn balance_proposal(&self, policies: &mut dyn Policies) -> Option<Proposal> {
        let master = self.master.as_ref()?;
        let settings = self.config.balance;
        let window = settings.window_ms;
        let hosts: Vec<BalanceHost> = self
            .config
            .hosts
            .iter()
            .map(|h| {
                let alive =
                    h.name == self.name || self.peers.get(&h.name).is_some_and(|p| p.verdict == Some(Verdict::Running));
                BalanceHost {
                    name: h.name.clone(),
                    memory_mib: h.memory_mib,
                    vcpus: h.vcpus,
                    threads: self.load.get(&h.name).map_or(0, |(_, l)| l.cpus),
                    takes: alive && self.heard_lately(&h.name) && !h.reserved && !self.maintenance.contains(&h.name),
                }
            })
            .collect();
        let cpu: BTreeMap<&str, u32> = self
            .load
            .values()
            .flat_map(|(_, l)| l.vms.iter().filter_map(|v| Some((v.vm.as_str(), v.cpu_percent?))))
            .collect();
        let copies = self.running_copies();
        let vms: Vec<BalanceVm> = self
            .reported_locations()
            .into_iter()
            .filter_map(|(vm, host)| {
                let spec = self.config.vm(&vm)?;
                let busy = master.migrating.contains(&vm)
                    || self.storage.contains_key(&vm)
                    || master.restarts.contains_key(&vm)
                    || copies.get(&vm).is_some_and(|c| c.len() > 1)
                    || self.balancing.moved_at.get(&vm).is_some_and(|at| self.now.saturating_sub(*at) < window);
                Some(BalanceVm {
                    cpu_percent: cpu.get(vm.as_str()).copied().unwrap_or(0),
                    memory_mib: spec.memory_mib,
                    vcpus: spec.vcpus,
                    movable: !busy,
                    name: vm,
                    host,
                })
            })
            .collect();
        let context = crate::balance::ProposalContext {
            rules: &self.config.rules,
            settings: &settings,
            vcpu_overcommit_percent: self.config.ha.vcpu_overcommit_percent,
            plugin_settings: &self.config.policy.balance,
        };
        let mut proposal = crate::balance::propose(&hosts, &vms, context, policies);
        // The failover plan must keep its target: cut the proposal until it does.
        let target = self.config.ha.host_failures_to_tolerate;
        let before = master.plan.as_ref().map_or(0, |p| p.tolerates);
        if !proposal.moves.is_empty() && before >= target {
            let usage = self.host_usage(halo_policy::PlacementReason::AdmissionCheck);
            let available = usage.iter().map(|u| u.host.clone()).filter(|h| !self.maintenance.contains(h)).collect();
            while !proposal.moves.is_empty() {
                let mut locations = self.reported_locations();
                for m in &proposal.moves {
                    locations.insert(m.vm.clone(), m.to.clone());
                }
                let plan =
                    crate::capacity::failover_plan(&self.config, &locations, &available, &self.maintenance, policies);
                if plan.tolerates >= target {
                    break;
                }
                proposal.moves.pop();
                proposal.imbalance_after = proposal.moves.last().map_or(proposal.imbalance, |m| m.imbalance_after);
            }
        }
        Some(proposal)
    }

    /// `halo balance apply`: the moves of a proposal now, whatever the mode.
    pub(super) fn balance_apply(&mut self, policies: &mut dyn Policies) {
        if self.master.is_none() {
            let master = self.master_view.as_ref().map_or("nobody yet".to_string(), |(m, _)| m.clone());
            return self.record(
                Severity::Warning,
                EventKind::CommandRefused,
                format!("balance: ask the master ({master})"),
                None,
            );
        }
        if !self.balancing.queue.is_empty() || !self.balancing.running.is_empty() {
            return self.record(
                Severity::Warning,
                EventKind::CommandRefused,
                "balance: a round is under way".into(),
                None,
            );
        }
        let Some(proposal) = self.balance_proposal(policies) else { return };
        self.plugin_failed_alert(&proposal);
        self.start_round(proposal, "the operator asked");
    }

    fn start_round(&mut self, proposal: Proposal, why: &str) {
        if proposal.moves.is_empty() {
            self.record(
                Severity::Info,
                EventKind::BalanceDone,
                format!(
                    "balanced: nothing to move ({why}; imbalance {:.1} points, threshold {:.0})",
                    proposal.imbalance, proposal.threshold
                ),
                None,
            );
            return;
        }
        let moves: Vec<String> = proposal.moves.iter().map(|m| format!("{} {} → {}", m.vm, m.from, m.to)).collect();
        self.record(
            Severity::Info,
            EventKind::BalanceStarted,
            format!(
                "balancing ({why}): imbalance {:.1} → {:.1} points by {} move(s): {}",
                proposal.imbalance,
                proposal.imbalance_after,
                moves.len(),
                moves.join(", ")
            ),
            None,
        );
        self.balancing.queue = proposal.moves.into();
        self.balancing.in_round = true;
    }

    /// The `plugin-failed` alert of a proposal the built-in policy made because the plugin
    /// failed.
    fn plugin_failed_alert(&mut self, proposal: &Proposal) {
        if let Some(reason) = &proposal.plugin_failed {
            self.record(
                Severity::Alert,
                EventKind::PluginFailed,
                format!("balancing plugin failed, built-in policy decided: {reason}"),
                None,
            );
        }
    }

    /// Whether `m` may start now, with the moves in flight (`running` and `starting`) counted
    /// on both their hosts and every copy of a VM on its host: no *must* rule broken at any
    /// instant of the migrations, and room on the target for everything that is or is
    /// arriving there.
    fn allowed_now(&self, m: &Move, starting: &[Move]) -> Result<(), String> {
        if self.paused_on(&m.vm, &m.from) {
            return Err(format!("it is paused on {}", m.from));
        }
        // Every copy counts (a VM started outside halo as well runs on two hosts).
        let mut at: BTreeMap<String, Vec<String>> =
            self.reported_locations().into_iter().map(|(vm, host)| (vm, vec![host])).collect();
        for (vm, copies) in self.running_copies() {
            let hosts = at.entry(vm).or_default();
            for host in copies.into_keys() {
                if !hosts.contains(&host) {
                    hosts.push(host);
                }
            }
        }
        let in_flight = self.balancing.running.values().chain(starting);
        for f in in_flight.clone() {
            at.entry(f.vm.clone()).or_default().push(f.to.clone());
        }
        if let Some(rule) = self
            .config
            .rules
            .iter()
            .find(|r| r.strength == crate::rules::Strength::Must && !r.kept_everywhere(&m.vm, &m.to, &at))
        {
            return Err(format!("it would break rule {} while the moves in flight run", rule.name));
        }
        let memory = |vm: &str| self.config.vm(vm).map_or(0, |v| v.memory_mib);
        let on_target: u64 = at.iter().filter(|(_, hosts)| hosts.contains(&m.to)).map(|(vm, _)| memory(vm)).sum();
        let room = self.config.host(&m.to).map_or(0, |h| h.memory_mib);
        if on_target + memory(&m.vm) > room {
            return Err(format!("{} has no room for it until the moves in flight end", m.to));
        }
        Ok(())
    }

    /// Why balancing waits now, if it does: a failover, a maintenance or a fence under way.
    fn balance_paused(&self) -> Option<&'static str> {
        let master = self.master.as_ref()?;
        // Only a master whose view of the cluster is authoritative moves VMs for balance: a
        // minority master's migration moves a VM where the majority's master does not see it
        // (simulator seed 477: a partition's minority master migrated a VM off a host the
        // majority then declared dead, and the VM was restarted beside itself).
        if master.suppressed.is_some() {
            return Some("this master restarts nothing now (isolated, fenced, in a minority or past the blast radius)");
        }
        // Every host either heard now or known dead, and the view settled: a master elected a
        // moment ago (in a partition, say) still holds its peers' old verdicts for up to the
        // dead-time.
        let unsettled = self.config.hosts.iter().any(|h| {
            let verdict = self.peers.get(&h.name).and_then(|p| p.verdict);
            !self.maintenance.contains(&h.name)
                && verdict != Some(Verdict::Failed)
                && !(self.heard_lately(&h.name) && (h.name == self.name || verdict == Some(Verdict::Running)))
        });
        if unsettled {
            return Some("a host is out of contact and not known to be dead");
        }
        if self.now.saturating_sub(master.since) < self.config.timeouts.dead_time_ms {
            return Some("this master was elected less than a dead-time ago");
        }
        if !master.restarts.is_empty() {
            return Some("a failover is under way");
        }
        if !master.evacuating.is_empty() {
            return Some("a maintenance is under way");
        }
        if self.peers.values().any(|p| matches!(p.fence, Fence::Asked { .. } | Fence::Confirmed { .. })) {
            return Some("a fence is under way");
        }
        None
    }

    /// Every master step: finished moves noted, new ones started, `auto`/`propose` looks.
    pub(super) fn continue_balancing(&mut self, policies: &mut dyn Policies) {
        let Some(master) = self.master.as_ref() else { return };
        // Moves that ended (the migration's outcome is its own event).
        let ended: Vec<String> =
            self.balancing.running.keys().filter(|vm| !master.migrating.contains(*vm)).cloned().collect();
        for vm in ended {
            self.balancing.running.remove(&vm);
            self.balancing.moved_at.insert(vm, self.now);
        }
        if self.balance_paused().is_some() {
            self.balancing.unsettled_at = self.now;
            return;
        }
        if self.now.saturating_sub(self.balancing.unsettled_at) < SETTLE_DEAD_TIMES * self.config.timeouts.dead_time_ms
        {
            return;
        }
        let settings = self.config.balance;
        let mut started = Vec::new();
        while self.balancing.running.len() + started.len() < settings.max_concurrent as usize {
            let Some(m) = self.balancing.queue.pop_front() else { break };
            let now_at = self.reported_locations().get(&m.vm).cloned();
            let in_flight = self.master.as_ref().is_some_and(|ms| ms.migrating.contains(&m.vm));
            if now_at.as_deref() != Some(m.from.as_str()) || in_flight || !self.heard_lately(&m.to) {
                self.record(
                    Severity::Info,
                    EventKind::BalanceMove,
                    format!("{}: move to {} dropped (it moved, or {} is out of contact)", m.vm, m.to, m.to),
                    None,
                );
                continue;
            }
            // The proposal is a sequence; migrations run side by side. A move that needs an
            // earlier one finished (a VM it must stay apart from still leaving the target, the
            // room it needs not yet free) waits for the moves in flight; with none in flight
            // it is dropped.
            if let Err(why) = self.allowed_now(&m, &started) {
                if self.balancing.running.is_empty() && started.is_empty() {
                    self.record(
                        Severity::Info,
                        EventKind::BalanceMove,
                        format!("{}: move to {} dropped: {why}", m.vm, m.to),
                        None,
                    );
                    continue;
                }
                self.balancing.queue.push_front(m);
                break;
            }
            started.push(m);
        }
        for m in started {
            if let Some(master) = self.master.as_mut() {
                master.migrating.insert(m.vm.clone());
            }
            self.record(
                Severity::Info,
                EventKind::BalanceMove,
                format!("{}: live migration {} → {} (balance: {})", m.vm, m.from, m.to, m.reason),
                None,
            );
            self.out.push(Action::MigrateVm { vm: m.vm.clone(), from: m.from.clone(), to: m.to.clone() });
            self.balancing.running.insert(m.vm.clone(), m);
        }
        let round_over = self.balancing.queue.is_empty() && self.balancing.running.is_empty();
        if round_over && std::mem::take(&mut self.balancing.in_round) {
            self.balancing.next_look = self.now + settings.interval_ms;
            self.record(Severity::Info, EventKind::BalanceDone, "balancing round done".into(), None);
        }
        if !round_over || settings.mode == BalanceMode::Off || self.now < self.balancing.next_look {
            return;
        }
        self.balancing.next_look = self.now + settings.interval_ms;
        let Some(proposal) = self.balance_proposal(policies) else { return };
        self.plugin_failed_alert(&proposal);
        let over = proposal.imbalance >= proposal.threshold && !proposal.moves.is_empty();
        match settings.mode {
            BalanceMode::Auto if over => self.start_round(proposal, "auto"),
            BalanceMode::Propose if over && !self.balancing.told => {
                self.balancing.told = true;
                let moves: Vec<String> =
                    proposal.moves.iter().map(|m| format!("{} {} → {}", m.vm, m.from, m.to)).collect();
                self.record(
                    Severity::Warning,
                    EventKind::BalanceProposed,
                    format!(
                        "the cluster is out of balance (imbalance {:.1} points, threshold {:.0}): `halo balance apply` would move {}",
                        proposal.imbalance,
                        proposal.threshold,
                        moves.join(", ")
                    ),
                    None,
                );
            }
            _ if !over => self.balancing.told = false,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::beat_with;
    use super::super::{Command, Input};
    use super::*;
    use crate::config::tests::cluster;
    use crate::policies::BuiltinPolicies;
    use crate::wire::VmReport;

    #[test]
    fn every_vm_on_one_host_is_spread_two_migrations_at_a_time() {
        let (kinds, _) = spread(None);
        assert_eq!(kinds.first(), Some(&EventKind::BalanceStarted), "{kinds:?}");
        assert_eq!(kinds.iter().filter(|k| **k == EventKind::BalanceMove).count(), 4, "{kinds:?}");
        assert_eq!(kinds.last(), Some(&EventKind::BalanceDone), "{kinds:?}");
    }

    #[test]
    fn in_auto_mode_the_master_balances_by_itself_and_in_propose_mode_it_says_so() {
        let (kinds, _) = spread(Some(BalanceMode::Auto));
        assert_eq!(kinds.iter().filter(|k| **k == EventKind::BalanceMove).count(), 4, "{kinds:?}");
        let (kinds, at) = spread(Some(BalanceMode::Propose));
        assert_eq!(kinds, vec![EventKind::BalanceProposed], "said once, nothing moved");
        assert!(at.values().all(|h| h == "host-2"), "{at:?}");
    }

    /// host-1 is master; all six VMs run on host-2; host-3 is empty. With `mode` the master
    /// looks by itself (every 5 s); without, the operator applies at 5 s (the moves start once
    /// the cluster stayed calm for four dead-times of 12 s). Returns the balancing events and
    /// where the VMs run after two minutes.
    fn spread(mode: Option<BalanceMode>) -> (Vec<EventKind>, BTreeMap<String, String>) {
        spread_with(mode, &mut BuiltinPolicies)
    }

    /// A balancing plugin that fails every time: the built-in policy's answer, with the reason.
    struct FailingPlugin;

    impl Policies for FailingPlugin {
        fn isolation(
            &mut self,
            input: &halo_policy::IsolationInput,
        ) -> crate::PolicyOutcome<Vec<halo_policy::VmIsolationDecision>> {
            BuiltinPolicies.isolation(input)
        }
        fn placement(&mut self, input: &halo_policy::PlacementInput) -> crate::PolicyOutcome<halo_policy::Placement> {
            BuiltinPolicies.placement(input)
        }
        fn restart_order(
            &mut self,
            input: &halo_policy::RestartInput,
        ) -> crate::PolicyOutcome<Result<Vec<halo_policy::Wave>, halo_policy::RestartError>> {
            BuiltinPolicies.restart_order(input)
        }
        fn balance(
            &mut self,
            input: &halo_policy::balance::BalanceInput,
        ) -> crate::PolicyOutcome<Vec<halo_policy::balance::BalanceMove>> {
            let answer = BuiltinPolicies.balance(input).answer;
            crate::PolicyOutcome { answer, fallback_reason: Some("plugin `x.wasm` trapped".into()) }
        }
    }

    #[test]
    fn a_proposal_is_cut_where_it_would_lower_the_failover_plans_tolerance_below_its_target() {
        // Hosts of 4096 MiB. host-1 (master) runs `big` (3000 MiB) alone, host-2 is empty,
        // host-3 runs four VMs of 700 MiB. Even memory would move two of those to host-2 — and
        // then neither host-2 nor host-3 could take `big` if host-1 failed (2696 MiB free
        // each): the cluster would tolerate no failure, below the target of one. The proposal
        // keeps its first move only.
        let proposal = |target: u32| {
            let mut config = cluster(3, 5);
            for host in &mut config.hosts {
                host.memory_mib = 4096;
            }
            config.vms[0].memory_mib = 3000;
            for vm in &mut config.vms[1..] {
                vm.memory_mib = 700;
            }
            config.ha.host_failures_to_tolerate = target;
            let mut node = Node::new("host-1", config, 0);
            let mut p = BuiltinPolicies;
            let on_3: Vec<VmReport> = (2..=5).map(|i| VmReport { vm: format!("vm-{i}"), generation: 1 }).collect();
            for now in (0..30_000).step_by(250) {
                let seq = now / 250 + 1;
                for input in [
                    Input::Tick,
                    beat_with("host-2", seq, &[("host-1", seq)], vec![]),
                    beat_with("host-3", seq, &[("host-1", seq)], on_3.clone()),
                    Input::DatastoreWritten { datastore: "ds1".into(), ok: true },
                    Input::VmState { vm: "vm-1".into(), generation: 1, state: super::super::VmState::Running },
                ] {
                    node.handle(now, input, &mut p);
                }
            }
            assert!(node.is_master());
            node.balance_proposal(&mut p).expect("master")
        };
        let free = proposal(0);
        let moved = |p: &Proposal| p.moves.iter().map(|m| format!("{} → {}", m.vm, m.to)).collect::<Vec<_>>();
        assert_eq!(moved(&free), vec!["vm-2 → host-2", "vm-3 → host-2"], "{free:?}");
        // With the target of one: the second move goes (host-2 keeps 3396 MiB free for `big`).
        let kept = proposal(1);
        assert_eq!(moved(&kept), vec!["vm-2 → host-2"], "{kept:?}");
        assert_eq!(kept.imbalance_after, kept.moves[0].imbalance_after);
    }

    #[test]
    fn a_failing_balancing_plugin_raises_an_alert_and_the_built_in_policy_balances() {
        let (kinds, _) = spread_with(None, &mut FailingPlugin);
        assert_eq!(kinds.first(), Some(&EventKind::PluginFailed), "{kinds:?}");
        assert_eq!(kinds.iter().filter(|k| **k == EventKind::BalanceMove).count(), 4, "{kinds:?}");
    }

    fn spread_with(mode: Option<BalanceMode>, p: &mut dyn Policies) -> (Vec<EventKind>, BTreeMap<String, String>) {
        let mut config = cluster(3, 6);
        if let Some(mode) = mode {
            config.balance.mode = mode;
            config.balance.interval_ms = 5_000;
        }
        let mut node = Node::new("host-1", config, 0);
        let mut at: BTreeMap<String, String> = (1..=6).map(|i| (format!("vm-{i}"), "host-2".to_string())).collect();
        let report = |at: &BTreeMap<String, String>, host: &str| -> Vec<VmReport> {
            at.iter().filter(|(_, h)| *h == host).map(|(vm, _)| VmReport { vm: vm.clone(), generation: 1 }).collect()
        };
        let mut all = Vec::new();
        let mut in_flight: Vec<(String, String, String)> = Vec::new();
        for now in (0..120_000).step_by(250) {
            let seq = now / 250 + 1;
            let mut inputs = vec![
                Input::Tick,
                beat_with("host-2", seq, &[("host-1", seq)], report(&at, "host-2")),
                beat_with("host-3", seq, &[("host-1", seq)], report(&at, "host-3")),
                Input::DatastoreWritten { datastore: "ds1".into(), ok: true },
            ];
            for i in 1..=6 {
                let vm = format!("vm-{i}");
                if at[&vm] == "host-1" {
                    inputs.push(Input::VmState { vm, generation: 1, state: super::super::VmState::Running });
                }
            }
            if now == 5_000 && mode.is_none() {
                inputs.push(Input::Command(Command::BalanceApply));
            }
            // Migrations finish a second after they start.
            if now % 1000 == 0 {
                for (vm, from, to) in in_flight.drain(..) {
                    at.insert(vm.clone(), to.clone());
                    inputs.push(Input::MigrateResult { vm, from, to, result: Ok(()) });
                }
            }
            for input in inputs {
                for action in node.handle(now, input, p) {
                    if let Action::MigrateVm { vm, from, to } = &action {
                        assert!(in_flight.len() < 2, "at most two at once: {in_flight:?} + {vm}");
                        in_flight.push((vm.clone(), from.clone(), to.clone()));
                    }
                    all.push((now, action));
                }
            }
        }
        assert!(node.is_master());
        let kinds: Vec<EventKind> = all
            .iter()
            .filter_map(|(_, a)| match a {
                Action::Record(e) if e.kind.as_str().starts_with("balance") || e.kind == EventKind::PluginFailed => {
                    Some(e.kind)
                }
                _ => None,
            })
            .collect();
        if mode != Some(BalanceMode::Propose) {
            let per_host = |h: &str| at.values().filter(|x| *x == h).count();
            assert_eq!((per_host("host-1"), per_host("host-2"), per_host("host-3")), (2, 2, 2), "{at:?}");
            // Balanced now: another apply moves nothing.
            let again = node.handle(120_000, Input::Command(Command::BalanceApply), p);
            assert!(again.iter().all(|a| !matches!(a, Action::MigrateVm { .. })), "{again:?}");
        }
        (kinds, at)
    }
}
