//! Balancing (issue 18): which live migrations would even out the hosts' load, within the
//! placement rules. The cluster's state, by name, becomes the balancing policy's input (contract
//! 0.1.2 `balancing`, positions); the policy — a plugin, or the built-in one
//! (`halo_policy::balance::propose`) when there is none or it fails — answers moves, which come
//! back named, each with the imbalance after it as halo measures it. The master carries them
//! out (`node::balance`).
//!
//! Hosts that take no VMs (out of contact, in maintenance, reserved for failover) take no part,
//! nor do VMs moved within the window.

use std::collections::BTreeMap;

use halo_policy::Setting;
use halo_policy::balance::{self as policy, BalanceInput, BalanceRule, Loads};
use serde::{Deserialize, Serialize};

use crate::Millis;
use crate::policies::Policies;
use crate::rules::Rule;

/// What balancing does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BalanceMode {
    /// Nothing (`halo balance plan` still says what would move; `apply` does it).
    #[default]
    Off,
    /// Like `off`, and the master raises `balance-proposed` when the imbalance passes the
    /// threshold.
    Propose,
    /// The master moves VMs itself every interval while the imbalance passes the threshold.
    Auto,
}

/// `[balance]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct BalanceSettings {
    /// `off`, `propose` or `auto`.
    pub mode: BalanceMode,
    /// Nothing moves while the imbalance (percentage points) is below this.
    pub threshold_percent: u32,
    /// A move must lower the imbalance by at least this much (percentage points).
    pub cost_percent: u32,
    /// At most this many moves per round.
    pub max_moves: u32,
    /// At most this many migrations at once.
    pub max_concurrent: u32,
    /// `auto`/`propose`: how often the master looks.
    pub interval_ms: Millis,
    /// A VM moved by balancing is not moved again by it for this long.
    pub window_ms: Millis,
}

impl Default for BalanceSettings {
    fn default() -> Self {
        Self {
            mode: BalanceMode::Off,
            threshold_percent: 10,
            cost_percent: 1,
            max_moves: 8,
            max_concurrent: 2,
            interval_ms: 60_000,
            window_ms: 600_000,
        }
    }
}

impl BalanceSettings {
    /// Problems, each with its key path.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut range = |key: &str, value: u64, low: u64, high: u64| {
            if !(low..=high).contains(&value) {
                problems.push(format!("balance.{key}: {value} is outside {low} … {high}"));
            }
        };
        range("threshold-percent", self.threshold_percent.into(), 1, 100);
        range("cost-percent", self.cost_percent.into(), 0, 100);
        range("max-moves", self.max_moves.into(), 1, 1000);
        range("max-concurrent", self.max_concurrent.into(), 1, 16);
        range("interval-ms", self.interval_ms, 1000, 86_400_000);
        range("window-ms", self.window_ms, 0, 86_400_000);
        problems
    }
}

/// A host as balancing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceHost {
    /// Its name.
    pub name: String,
    /// Memory for VMs, MiB.
    pub memory_mib: u64,
    /// vCPUs for VMs (before overcommit).
    pub vcpus: u32,
    /// CPU threads (for CPU use; 0: no reading).
    pub threads: u32,
    /// It may receive VMs and its VMs may move (in contact, not in maintenance, not reserved).
    pub takes: bool,
}

/// A VM as balancing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceVm {
    /// Its name.
    pub name: String,
    /// Where it runs.
    pub host: String,
    /// Configured memory, MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Measured CPU use, percent of one thread (0 without a reading).
    pub cpu_percent: u32,
    /// Balancing may move it (not moved within the window, not being moved or restarted).
    pub movable: bool,
}

/// One proposed move.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Move {
    /// The VM.
    pub vm: String,
    /// From.
    pub from: String,
    /// To.
    pub to: String,
    /// Why, for the operator: the two hosts' shares before.
    pub reason: String,
    /// The imbalance after this move, percentage points.
    pub imbalance_after: f64,
}

/// What balancing proposes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Proposal {
    /// The imbalance now, percentage points (memory and CPU spreads summed).
    pub imbalance: f64,
    /// After the moves.
    pub imbalance_after: f64,
    /// The threshold it is compared with.
    pub threshold: f64,
    /// The moves, in order.
    pub moves: Vec<Move>,
    /// Why the balancing plugin's answer was not used (the built-in policy's is), if it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_failed: Option<String>,
}

/// What the proposal is made from, besides the hosts and VMs.
#[derive(Debug, Clone, Copy)]
pub struct ProposalContext<'a> {
    /// The operator's rules.
    pub rules: &'a [Rule],
    /// `[balance]`.
    pub settings: &'a BalanceSettings,
    /// Most vCPUs per host, percent of its vCPUs.
    pub vcpu_overcommit_percent: u32,
    /// The balancing plugin's own settings (`[policy] balance`).
    pub plugin_settings: &'a [Setting],
}

/// The policy's input for `hosts` and `vms`: names become positions; VMs on unknown hosts and
/// rule members that are not running are left out.
pub fn input(hosts: &[BalanceHost], vms: &[BalanceVm], context: ProposalContext<'_>) -> BalanceInput {
    let host_at: BTreeMap<&str, u32> = hosts.iter().enumerate().map(|(i, h)| (h.name.as_str(), i as u32)).collect();
    let vms: Vec<(&BalanceVm, u32)> = vms.iter().filter_map(|vm| Some((vm, *host_at.get(vm.host.as_str())?))).collect();
    let named: BTreeMap<&str, ()> = context.rules.iter().flat_map(|r| r.vms.iter().map(|v| (v.as_str(), ()))).collect();
    let vm_at: BTreeMap<&str, u32> = vms
        .iter()
        .enumerate()
        .filter(|(_, (vm, _))| named.contains_key(vm.name.as_str()))
        .map(|(i, (vm, _))| (vm.name.as_str(), i as u32))
        .collect();
    BalanceInput {
        hosts: hosts
            .iter()
            .map(|h| policy::BalanceHost {
                memory_mib: h.memory_mib,
                vcpus: h.vcpus,
                threads: h.threads,
                takes: h.takes,
            })
            .collect(),
        host_names: hosts.iter().map(|h| h.name.clone()).collect(),
        vm_names: vms.iter().map(|(vm, _)| vm.name.clone()).collect(),
        vms: vms
            .iter()
            .map(|&(vm, host)| policy::BalanceVm {
                host,
                memory_mib: vm.memory_mib,
                vcpus: vm.vcpus,
                cpu_percent: vm.cpu_percent,
                movable: vm.movable,
            })
            .collect(),
        rules: context
            .rules
            .iter()
            .map(|r| BalanceRule {
                name: r.name.clone(),
                kind: r.kind,
                strength: r.strength,
                vms: r.vms.iter().filter_map(|v| vm_at.get(v.as_str()).copied()).collect(),
                hosts: r.hosts.iter().filter_map(|h| host_at.get(h.as_str()).copied()).collect(),
            })
            .collect(),
        threshold_percent: context.settings.threshold_percent,
        cost_percent: context.settings.cost_percent,
        max_moves: context.settings.max_moves,
        vcpu_overcommit_percent: context.vcpu_overcommit_percent,
        settings: context.plugin_settings.to_vec(),
    }
}

/// Proposes moves for `hosts` and `vms`: the balancing policy (`policies`) decides, and its
/// moves come back named, each with the imbalance after it.
pub fn propose(
    hosts: &[BalanceHost],
    vms: &[BalanceVm],
    context: ProposalContext<'_>,
    policies: &mut dyn Policies,
) -> Proposal {
    let input = input(hosts, vms, context);
    let mut loads = Loads::of(&input);
    let imbalance = loads.imbalance();
    let threshold = f64::from(context.settings.threshold_percent);
    let outcome = policies.balance(&input);
    let mut moves = Vec::new();
    for m in outcome.answer {
        let from = input.host_name(loads.at(m.vm));
        loads.apply(m.vm, m.to);
        moves.push(Move {
            vm: input.vm_name(m.vm),
            from,
            to: input.host_name(m.to),
            reason: m.reason,
            imbalance_after: loads.imbalance(),
        });
    }
    let imbalance_after = loads.imbalance();
    Proposal { imbalance, imbalance_after, threshold, moves, plugin_failed: outcome.fallback_reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::{BuiltinPolicies, PolicyOutcome};
    use crate::rules::{RuleKind, Strength};

    fn hosts(n: usize) -> Vec<BalanceHost> {
        (1..=n)
            .map(|i| BalanceHost { name: format!("host-{i}"), memory_mib: 4096, vcpus: 16, threads: 8, takes: true })
            .collect()
    }

    fn vm(name: &str, host: &str, memory_mib: u64, cpu_percent: u32) -> BalanceVm {
        BalanceVm { name: name.into(), host: host.into(), memory_mib, vcpus: 1, cpu_percent, movable: true }
    }

    fn context<'a>(rules: &'a [Rule], settings: &'a BalanceSettings) -> ProposalContext<'a> {
        ProposalContext { rules, settings, vcpu_overcommit_percent: 400, plugin_settings: &[] }
    }

    #[test]
    fn names_become_positions_and_the_moves_come_back_named() {
        let vms: Vec<BalanceVm> = (1..=6).map(|i| vm(&format!("vm-{i}"), "host-1", 512, 0)).collect();
        let rules = vec![Rule {
            name: "home".into(),
            kind: RuleKind::VmHost,
            strength: Strength::Must,
            vms: vec!["vm-1".into(), "vm-9".into()],
            hosts: vec!["host-1".into(), "host-7".into()],
        }];
        let settings = BalanceSettings::default();
        let i = input(&hosts(3), &vms, context(&rules, &settings));
        assert_eq!(i.rules[0].vms, vec![0], "vm-9 does not run: left out");
        assert_eq!(i.rules[0].hosts, vec![0], "host-7 is no host: left out");
        let p = propose(&hosts(3), &vms, context(&rules, &settings), &mut BuiltinPolicies);
        assert_eq!(p.moves.len(), 4, "{p:?}");
        assert!(p.moves.iter().all(|m| m.from == "host-1" && m.vm != "vm-1"), "{p:?}");
        assert!(p.imbalance > 30.0 && p.imbalance_after < 1.0 && p.plugin_failed.is_none(), "{p:?}");
        let last = p.moves.last().map(|m| m.imbalance_after);
        assert_eq!(last, Some(p.imbalance_after));
    }

    /// A policy that answers a fixed outcome.
    struct Fixed(PolicyOutcome<Vec<policy::BalanceMove>>);

    impl Policies for Fixed {
        fn isolation(
            &mut self,
            input: &halo_policy::IsolationInput,
        ) -> PolicyOutcome<Vec<halo_policy::VmIsolationDecision>> {
            BuiltinPolicies.isolation(input)
        }
        fn placement(&mut self, input: &halo_policy::PlacementInput) -> PolicyOutcome<halo_policy::Placement> {
            BuiltinPolicies.placement(input)
        }
        fn restart_order(
            &mut self,
            input: &halo_policy::RestartInput,
        ) -> PolicyOutcome<Result<Vec<halo_policy::Wave>, halo_policy::RestartError>> {
            BuiltinPolicies.restart_order(input)
        }
        fn balance(&mut self, _input: &BalanceInput) -> PolicyOutcome<Vec<policy::BalanceMove>> {
            self.0.clone()
        }
    }

    #[test]
    fn a_plugin_s_moves_and_its_failure_are_carried_through() {
        let vms = vec![vm("vm-1", "host-1", 512, 0), vm("vm-2", "host-2", 512, 0)];
        let settings = BalanceSettings::default();
        let answer = vec![policy::BalanceMove { vm: 1, to: 2, reason: "my reason".into() }];
        let mut plugin = Fixed(PolicyOutcome { answer, fallback_reason: Some("it trapped".into()) });
        let p = propose(&hosts(3), &vms, context(&[], &settings), &mut plugin);
        assert_eq!(p.plugin_failed.as_deref(), Some("it trapped"));
        let m = &p.moves[0];
        assert_eq!(
            (m.vm.as_str(), m.from.as_str(), m.to.as_str(), m.reason.as_str()),
            ("vm-2", "host-2", "host-3", "my reason")
        );
    }
}
