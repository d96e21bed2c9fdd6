//! Placement rules and reserved failover hosts (issue 18), for every placement — failover,
//! evacuation, "to the cluster", the operator's start, the failover plan — whatever policy
//! (plugin or built-in) answers.
//!
//! - **Rules** (`[[rules]]`): VM–host (`vm-host`: the VMs on these hosts), VM–VM `together`
//!   (on one host) and `apart` (never two on one host), each `must` or `should`. A *must* is
//!   never broken: a VM that has no host keeping it stays down with the rule named. A *should*
//!   is broken only when nothing else fits, and then reported ([`Placed::broken`]).
//! - **Reserved failover hosts** (`reserved = true` on a host): kept free of VMs — no
//!   evacuation, migration or operator start goes there — and used first at failover.
//!
//! How, with any policy: the rules become the placement input's constraints (`avoid-hosts`),
//! which the plugin runtime's validator enforces on every plugin answer, and the placement
//! runs in stages — with the *should* rules held as *must*, then with the *must* rules alone,
//! and at each strength the reserved hosts alone first (failover), then every host — each
//! stage placing what the one before left, on what capacity is left. A stage's answer is checked again here in order (two VMs
//! of an `apart` rule placed in one answer see each other only then): a VM it would put
//! against a rule goes to the next round of the same stage, which knows where the other went.
//! Without rules and reserved hosts this is one policy call, as before.

use std::collections::{BTreeMap, BTreeSet};

use halo_policy::{Assignment, Placement, PlacementInput, PlacementReason, UnplacedVm};
use serde::{Deserialize, Serialize};

use crate::config::ClusterConfig;
use crate::policies::{Policies, PolicyOutcome};

pub use halo_policy::balance::{RuleKind, Strength};

/// One placement rule (`[[rules]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Rule {
    /// Its name, in every message about it.
    pub name: String,
    /// What it binds.
    pub kind: RuleKind,
    /// `must` or `should`.
    pub strength: Strength,
    /// The VMs.
    pub vms: Vec<String>,
    /// The hosts (`vm-host` only).
    #[serde(default)]
    pub hosts: Vec<String>,
}

impl Rule {
    fn describe(&self) -> String {
        let what = match self.kind {
            RuleKind::VmHost => format!("on {}", self.hosts.join(", ")),
            RuleKind::Together => "together".to_string(),
            RuleKind::Apart => "apart".to_string(),
        };
        format!("rule {} ({} {}: {})", self.name, self.strength.as_str(), what, self.vms.join(", "))
    }

    /// Hosts `vm` may not go to under this rule, given where the others are (`at`); `None`
    /// when the rule does not bind it. `candidates` are every host it could go to.
    fn avoid(&self, vm: &str, at: &BTreeMap<String, String>, candidates: &[String]) -> Option<BTreeSet<String>> {
        if !self.vms.iter().any(|v| v == vm) {
            return None;
        }
        let others = self.vms.iter().filter(|v| *v != vm).filter_map(|v| at.get(v)).collect();
        Some(self.avoid_beside(others, candidates))
    }

    /// Hosts of `candidates` a VM of this rule may not go to while the rule's other VMs run on
    /// `others`.
    fn avoid_beside(&self, others: BTreeSet<&String>, candidates: &[String]) -> BTreeSet<String> {
        match self.kind {
            RuleKind::VmHost => candidates.iter().filter(|h| !self.hosts.contains(h)).cloned().collect(),
            RuleKind::Apart => others.into_iter().cloned().collect(),
            RuleKind::Together if others.is_empty() => BTreeSet::new(),
            RuleKind::Together => candidates.iter().filter(|h| !others.contains(h)).cloned().collect(),
        }
    }

    /// Whether `vm` on `host` keeps this rule, the others being where `at` says.
    fn kept(&self, vm: &str, host: &str, at: &BTreeMap<String, String>, candidates: &[String]) -> bool {
        self.avoid(vm, at, candidates).is_none_or(|avoid| !avoid.contains(host))
    }

    /// The same, with a VM counted on every host it is on (`at`: a migration's two ends, every
    /// copy of a VM started twice).
    pub(crate) fn kept_everywhere(&self, vm: &str, host: &str, at: &BTreeMap<String, Vec<String>>) -> bool {
        if !self.vms.iter().any(|v| v == vm) {
            return true;
        }
        let others = self.vms.iter().filter(|v| *v != vm).filter_map(|v| at.get(v)).flatten().collect();
        !self.avoid_beside(others, &[host.to_string()]).contains(host)
    }
}

/// Problems of a config's rules and reserved hosts, each with its key path (for
/// [`ClusterConfig::validate`]).
pub fn problems(config: &ClusterConfig) -> Vec<String> {
    let mut problems = Vec::new();
    let hosts: BTreeSet<&str> = config.hosts.iter().map(|h| h.name.as_str()).collect();
    let vms: BTreeSet<&str> = config.vms.iter().map(|v| v.name.as_str()).collect();
    let mut names = BTreeSet::new();
    for (i, rule) in config.rules.iter().enumerate() {
        let key = format!("rules[{i}]");
        if rule.name.is_empty() {
            problems.push(format!("{key}.name: a rule needs a name (messages name it)"));
        } else if !names.insert(rule.name.as_str()) {
            problems.push(format!("{key}.name: `{}` names two rules", rule.name));
        }
        for vm in rule.vms.iter().filter(|v| !vms.contains(v.as_str())) {
            problems.push(format!("{key}.vms: `{vm}` is not a VM of the configuration"));
        }
        for host in rule.hosts.iter().filter(|h| !hosts.contains(h.as_str())) {
            problems.push(format!("{key}.hosts: `{host}` is not a host of the configuration"));
        }
        match rule.kind {
            RuleKind::VmHost if rule.hosts.is_empty() => {
                problems.push(format!("{key}.hosts: a vm-host rule names at least one host"))
            }
            RuleKind::VmHost if rule.vms.is_empty() => {
                problems.push(format!("{key}.vms: a vm-host rule names at least one VM"))
            }
            RuleKind::Together | RuleKind::Apart if rule.vms.len() < 2 => {
                problems.push(format!("{key}.vms: a {} rule names at least two VMs", rule.kind.as_str()))
            }
            RuleKind::Together | RuleKind::Apart if !rule.hosts.is_empty() => problems
                .push(format!("{key}.hosts: only a vm-host rule names hosts (this is a {} rule)", rule.kind.as_str())),
            _ => {}
        }
    }
    // Conflicts between *must* rules.
    let musts: Vec<&Rule> = config.rules.iter().filter(|r| r.strength == Strength::Must).collect();
    for (i, a) in musts.iter().enumerate() {
        for b in &musts[i + 1..] {
            let shared: Vec<&String> = a.vms.iter().filter(|v| b.vms.contains(v)).collect();
            let conflict = match (a.kind, b.kind) {
                // Two VMs both together and apart.
                (RuleKind::Together, RuleKind::Apart) | (RuleKind::Apart, RuleKind::Together) => {
                    (shared.len() >= 2).then(|| format!("{} must be together and apart", join(&shared)))
                }
                // One VM on two sets of hosts with none in common.
                (RuleKind::VmHost, RuleKind::VmHost) => (!shared.is_empty()
                    && !a.hosts.iter().any(|h| b.hosts.contains(h)))
                .then(|| format!("{} must run on {} and on {}", join(&shared), a.hosts.join(", "), b.hosts.join(", "))),
                _ => None,
            };
            if let Some(why) = conflict {
                problems.push(format!("rules `{}` and `{}` conflict: {why}", a.name, b.name));
            }
        }
    }
    // Together with host rules that leave them no common host.
    for together in musts.iter().filter(|r| r.kind == RuleKind::Together) {
        let mut common: Option<BTreeSet<&String>> = None;
        let mut by = Vec::new();
        for host_rule in musts.iter().filter(|r| r.kind == RuleKind::VmHost) {
            if host_rule.vms.iter().any(|v| together.vms.contains(v)) {
                let set: BTreeSet<&String> = host_rule.hosts.iter().collect();
                common = Some(common.map_or(set.clone(), |c| c.intersection(&set).copied().collect()));
                by.push(host_rule.name.as_str());
            }
        }
        if common.is_some_and(|c| c.is_empty()) {
            problems.push(format!(
                "rules `{}` and `{}` conflict: the VMs that must be together have no host in common",
                together.name,
                by.join("`, `")
            ));
        }
    }
    for host in config.hosts.iter().filter(|h| h.reserved) {
        if config.hosts.iter().all(|h| h.reserved) {
            problems.push(format!("hosts: `{}` is reserved, and so is every host: VMs have nowhere to run", host.name));
            break;
        }
    }
    problems
}

fn join(names: &[&String]) -> String {
    names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" and ")
}

/// A placement under the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The answer (every VM asked for: assigned or unplaced with its reason).
    pub outcome: PolicyOutcome<Placement>,
    /// *Should* rules the answer breaks because nothing else fit: (VM, the rule described).
    pub broken: Vec<(String, String)>,
}

/// Places `input.vms` under `config`'s rules and reserved hosts; `running` says where every
/// other VM runs (or is being started) now.
pub fn place(
    config: &ClusterConfig,
    input: &PlacementInput,
    running: &BTreeMap<String, String>,
    policies: &mut dyn Policies,
) -> Placed {
    let reserved: BTreeSet<String> = config.hosts.iter().filter(|h| h.reserved).map(|h| h.name.clone()).collect();
    let names: BTreeSet<&str> = input.vms.iter().map(|v| v.name.as_str()).collect();
    let binds = |vm: &str, strength: Strength| {
        config.rules.iter().any(|r| r.strength == strength && r.vms.iter().any(|v| v == vm))
    };
    let any_rule = input.vms.iter().any(|v| binds(&v.name, Strength::Must) || binds(&v.name, Strength::Should));
    // (The failover plan's admission check is about a failover too.)
    let failover = matches!(input.reason, PlacementReason::Failover | PlacementReason::AdmissionCheck);
    let reserved_here = input.hosts.iter().any(|h| reserved.contains(&h.name));
    if !any_rule && !reserved_here {
        return Placed { outcome: policies.placement(input), broken: Vec::new() };
    }
    let any_should = input.vms.iter().any(|v| binds(&v.name, Strength::Should));
    // (reserved hosts only, should rules held): the stages, in order — the rules kept as far
    // as they can be first, and at each strength the reserved hosts first.
    let mut stages = Vec::new();
    for should in if any_should { vec![true, false] } else { vec![false] } {
        if failover && reserved_here {
            stages.push((true, should));
        }
        stages.push((false, should));
    }
    let candidates: Vec<String> = input.hosts.iter().map(|h| h.name.clone()).collect();
    let mut at: BTreeMap<String, String> =
        running.iter().filter(|(vm, _)| !names.contains(vm.as_str())).map(|(v, h)| (v.clone(), h.clone())).collect();
    let mut hosts = input.hosts.clone();
    let mut remaining: Vec<halo_policy::VmToPlace> = input.vms.clone();
    let mut assignments: Vec<Assignment> = Vec::new();
    let mut reasons: BTreeMap<String, String> = BTreeMap::new();
    let mut fallback_reason = None;
    for (reserved_only, should) in stages {
        // Rounds: a VM set back for a rule its own answer broke is placed again, knowing
        // where the others went (at most one round per VM).
        for _ in 0..=input.vms.len() {
            if remaining.is_empty() {
                break;
            }
            let mut stage_input = input.clone();
            stage_input.hosts = hosts.clone();
            stage_input.vms = remaining
                .iter()
                .map(|vm| {
                    let mut vm = vm.clone();
                    let mut avoid: BTreeSet<String> = vm.avoid_hosts.iter().cloned().collect();
                    for rule in config.rules.iter().filter(|r| r.strength == Strength::Must || should) {
                        avoid.extend(rule.avoid(&vm.name, &at, &candidates).unwrap_or_default());
                    }
                    if reserved_only {
                        avoid.extend(candidates.iter().filter(|h| !reserved.contains(*h)).cloned());
                    } else if !failover {
                        avoid.extend(reserved.iter().cloned());
                    }
                    vm.avoid_hosts = avoid.into_iter().collect();
                    vm
                })
                .collect();
            let outcome = policies.placement(&stage_input);
            fallback_reason = fallback_reason.or(outcome.fallback_reason);
            let mut set_back = Vec::new();
            for a in outcome.answer.assignments {
                let broken = config
                    .rules
                    .iter()
                    .filter(|r| r.strength == Strength::Must || should)
                    .find(|r| !r.kept(&a.vm, &a.host, &at, &candidates));
                if let Some(rule) = broken {
                    reasons.insert(a.vm.clone(), format!("{} would be broken on {}", rule.describe(), a.host));
                    set_back.push(a.vm);
                    continue;
                }
                if let (Some(host), Some(spec)) =
                    (hosts.iter_mut().find(|h| h.name == a.host), stage_input.vms.iter().find(|v| v.name == a.vm))
                {
                    host.free_memory_mib = host.free_memory_mib.saturating_sub(spec.memory_mib);
                    host.allocated_vcpus = host.allocated_vcpus.saturating_add(spec.vcpus);
                    if let Some(group) = &spec.anti_affinity_group {
                        host.anti_affinity_groups.push(group.clone());
                    }
                }
                at.insert(a.vm.clone(), a.host.clone());
                reasons.remove(&a.vm);
                assignments.push(a);
            }
            for u in outcome.answer.unplaced {
                let rule = config
                    .rules
                    .iter()
                    .filter(|r| r.vms.contains(&u.vm) && (r.strength == Strength::Must || should))
                    .map(Rule::describe)
                    .collect::<Vec<_>>();
                let reason =
                    if rule.is_empty() { u.reason } else { format!("{} (under {})", u.reason, rule.join("; ")) };
                reasons.insert(u.vm, reason);
            }
            let placed: BTreeSet<&str> = assignments.iter().map(|a| a.vm.as_str()).collect();
            remaining.retain(|vm| !placed.contains(vm.name.as_str()));
            if set_back.is_empty() {
                break;
            }
        }
    }
    let unplaced = remaining
        .iter()
        .map(|vm| UnplacedVm {
            vm: vm.name.clone(),
            reason: reasons.remove(&vm.name).unwrap_or_else(|| "no host keeps its rules".into()),
        })
        .collect();
    let broken = assignments
        .iter()
        .filter_map(|a| {
            let rule = config
                .rules
                .iter()
                .filter(|r| r.strength == Strength::Should)
                .find(|r| !r.kept(&a.vm, &a.host, &at, &candidates))?;
            Some((a.vm.clone(), rule.describe()))
        })
        .collect();
    Placed { outcome: PolicyOutcome { answer: Placement { assignments, unplaced }, fallback_reason }, broken }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::cluster;
    use crate::policies::BuiltinPolicies;

    fn rule(name: &str, kind: RuleKind, strength: Strength, vms: &[&str], hosts: &[&str]) -> Rule {
        Rule {
            name: name.into(),
            kind,
            strength,
            vms: vms.iter().map(|v| v.to_string()).collect(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        }
    }

    /// `config`'s VMs `vms` placed at `reason` on every host (none failed), the others running
    /// where `running` says.
    fn placed(config: &ClusterConfig, reason: PlacementReason, vms: &[&str], running: &[(&str, &str)]) -> Placed {
        let usage: Vec<crate::capacity::HostUsage> = config
            .hosts
            .iter()
            .map(|h| crate::capacity::HostUsage {
                host: h.name.clone(),
                memory_mib: h.memory_mib,
                vcpus: h.vcpus,
                used: Default::default(),
                maintenance: false,
            })
            .collect();
        let mut usage = usage;
        for (vm, host) in running {
            if let (Some(spec), Some(u)) = (config.vm(vm), usage.iter_mut().find(|u| u.host == *host)) {
                u.used.add(spec);
            }
        }
        let input = PlacementInput {
            reason,
            vms: vms.iter().filter_map(|vm| Some(crate::capacity::to_place(config.vm(vm)?, ""))).collect(),
            hosts: usage.iter().map(|u| crate::capacity::candidate(config, u, vec![])).collect(),
            vcpu_overcommit_percent: config.ha.vcpu_overcommit_percent,
            settings: vec![],
        };
        let running: BTreeMap<String, String> = running.iter().map(|(v, h)| (v.to_string(), h.to_string())).collect();
        place(config, &input, &running, &mut BuiltinPolicies)
    }

    fn host_of(p: &Placed, vm: &str) -> Option<String> {
        p.outcome.answer.assignments.iter().find(|a| a.vm == vm).map(|a| a.host.clone())
    }

    #[test]
    fn a_must_apart_rule_holds_even_when_the_vm_stays_down() {
        // Three hosts; vm-1 and vm-2 must be apart, vm-2 runs on host-2, host-3 is full (vm-3
        // takes all of it): vm-1 may go only to host-1.
        let mut config = cluster(3, 3);
        config.vms[2].memory_mib = config.hosts[2].memory_mib;
        config.rules = vec![rule("db", RuleKind::Apart, Strength::Must, &["vm-1", "vm-2"], &[])];
        let p = placed(&config, PlacementReason::Failover, &["vm-1"], &[("vm-2", "host-2"), ("vm-3", "host-3")]);
        assert_eq!(host_of(&p, "vm-1").as_deref(), Some("host-1"), "{p:?}");
        // host-1 failed (not a candidate): nowhere keeps the rule; it stays down, the rule named.
        let mut input_config = config.clone();
        input_config.hosts.retain(|h| h.name != "host-1");
        let p = placed(&input_config, PlacementReason::Failover, &["vm-1"], &[("vm-2", "host-2"), ("vm-3", "host-3")]);
        assert!(host_of(&p, "vm-1").is_none(), "{p:?}");
        let reason = &p.outcome.answer.unplaced[0].reason;
        assert!(reason.contains("rule db (must apart: vm-1, vm-2)"), "{reason}");
    }

    #[test]
    fn a_should_rule_is_broken_only_when_nothing_else_fits_and_reported() {
        let mut config = cluster(3, 3);
        config.vms[2].memory_mib = config.hosts[2].memory_mib;
        config.rules = vec![rule("web", RuleKind::Apart, Strength::Should, &["vm-1", "vm-2"], &[])];
        let p = placed(&config, PlacementReason::Failover, &["vm-1"], &[("vm-2", "host-2"), ("vm-3", "host-3")]);
        assert_eq!(host_of(&p, "vm-1").as_deref(), Some("host-1"), "kept while it can be: {p:?}");
        assert!(p.broken.is_empty());
        let mut two = config.clone();
        two.hosts.retain(|h| h.name != "host-1");
        let p = placed(&two, PlacementReason::Failover, &["vm-1"], &[("vm-2", "host-2"), ("vm-3", "host-3")]);
        assert_eq!(host_of(&p, "vm-1").as_deref(), Some("host-2"), "broken when nothing else fits: {p:?}");
        assert_eq!(p.broken, vec![("vm-1".to_string(), "rule web (should apart: vm-1, vm-2)".to_string())]);
    }

    #[test]
    fn two_vms_of_an_apart_rule_placed_at_once_never_share_a_host() {
        let mut config = cluster(3, 4);
        config.rules = vec![rule("pair", RuleKind::Apart, Strength::Must, &["vm-1", "vm-2", "vm-3"], &[])];
        let p = placed(&config, PlacementReason::Failover, &["vm-1", "vm-2", "vm-3"], &[]);
        let hosts: BTreeSet<String> = ["vm-1", "vm-2", "vm-3"].iter().filter_map(|vm| host_of(&p, vm)).collect();
        assert_eq!(hosts.len(), 3, "{p:?}");
    }

    #[test]
    fn together_and_vm_host_rules_choose_the_host() {
        let mut config = cluster(3, 3);
        config.rules = vec![
            rule("app", RuleKind::Together, Strength::Must, &["vm-1", "vm-2"], &[]),
            rule("lic", RuleKind::VmHost, Strength::Must, &["vm-3"], &["host-3"]),
        ];
        let p = placed(&config, PlacementReason::Evacuation, &["vm-1", "vm-3"], &[("vm-2", "host-2")]);
        assert_eq!(host_of(&p, "vm-1").as_deref(), Some("host-2"), "{p:?}");
        assert_eq!(host_of(&p, "vm-3").as_deref(), Some("host-3"), "{p:?}");
    }

    #[test]
    fn reserved_hosts_take_the_failover_first_and_nothing_else() {
        let mut config = cluster(3, 3);
        config.hosts[2].reserved = true;
        let p = placed(&config, PlacementReason::Failover, &["vm-1", "vm-2"], &[]);
        assert_eq!(host_of(&p, "vm-1").as_deref(), Some("host-3"), "{p:?}");
        assert_eq!(host_of(&p, "vm-2").as_deref(), Some("host-3"), "{p:?}");
        // Full: the rest of the failover goes to the other hosts.
        config.vms[0].memory_mib = config.hosts[2].memory_mib;
        let p = placed(&config, PlacementReason::Failover, &["vm-1", "vm-2"], &[]);
        assert_eq!(host_of(&p, "vm-1").as_deref(), Some("host-3"), "{p:?}");
        assert!(host_of(&p, "vm-2").is_some_and(|h| h != "host-3"), "{p:?}");
        // Not at an evacuation (nor a migration, nor a start).
        let p = placed(&config, PlacementReason::Evacuation, &["vm-2"], &[]);
        assert!(host_of(&p, "vm-2").is_some_and(|h| h != "host-3"), "{p:?}");
    }

    #[test]
    fn conflicting_rules_are_refused_with_their_names() {
        let mut config = cluster(3, 3);
        config.rules = vec![
            rule("a", RuleKind::Together, Strength::Must, &["vm-1", "vm-2"], &[]),
            rule("b", RuleKind::Apart, Strength::Must, &["vm-1", "vm-2", "vm-3"], &[]),
            rule("c", RuleKind::VmHost, Strength::Must, &["vm-3"], &["host-1"]),
            rule("d", RuleKind::VmHost, Strength::Must, &["vm-3"], &["host-2"]),
            rule("e", RuleKind::Apart, Strength::Should, &["vm-1", "vm-9"], &[]),
            rule("f", RuleKind::VmHost, Strength::Must, &["vm-1"], &[]),
        ];
        let problems = problems(&config);
        let all = problems.join("\n");
        assert!(all.contains("rules `a` and `b` conflict: vm-1 and vm-2 must be together and apart"), "{all}");
        assert!(all.contains("rules `c` and `d` conflict: vm-3 must run on host-1 and on host-2"), "{all}");
        assert!(all.contains("rules[4].vms: `vm-9` is not a VM"), "{all}");
        assert!(all.contains("rules[5].hosts: a vm-host rule names at least one host"), "{all}");
        // A should beside a must is not a conflict.
        config.rules = vec![
            rule("a", RuleKind::Together, Strength::Should, &["vm-1", "vm-2"], &[]),
            rule("b", RuleKind::Apart, Strength::Must, &["vm-1", "vm-2"], &[]),
        ];
        assert!(super::problems(&config).is_empty(), "{:?}", super::problems(&config));
    }
}
