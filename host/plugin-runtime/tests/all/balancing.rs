//! The balancing world (contract 0.1.2): the default plugin agrees with the built-in policy it
//! is compiled from, and every answer that breaks the contract is refused with its reason
//! while the built-in policy's answer is used.

use halo_plugin_runtime::{Balancing, DecidedBy, FailureKind, PluginFiles, PluginPolicies};
use halo_policy::Setting;
use halo_policy::balance::{self, BalanceHost, BalanceInput, BalanceRule, BalanceVm, RuleKind, Strength};

use crate::{plugin, runtime};

/// Three hosts; host-1 carries five VMs, the others one each; vm-1 and vm-6 must stay apart.
fn piled() -> BalanceInput {
    let mut hosts = vec![BalanceHost { memory_mib: 4096, vcpus: 8, threads: 4, takes: true }; 3];
    hosts[0].memory_mib = 2816;
    let on = [0, 0, 0, 0, 0, 1, 2];
    BalanceInput {
        hosts,
        host_names: vec!["host-1".into(), "host-2".into(), "host-3".into()],
        vms: on
            .iter()
            .enumerate()
            .map(|(i, &host)| BalanceVm { host, memory_mib: 512, vcpus: 1, cpu_percent: 40 * i as u32, movable: true })
            .collect(),
        vm_names: (1..=on.len()).map(|i| format!("vm-{i}")).collect(),
        rules: vec![BalanceRule {
            name: "db-apart".into(),
            kind: RuleKind::Apart,
            strength: Strength::Must,
            vms: vec![0, 5],
            hosts: vec![],
        }],
        threshold_percent: 10,
        cost_percent: 1,
        max_moves: 4,
        vcpu_overcommit_percent: 100,
        settings: Vec::new(),
    }
}

#[test]
fn the_default_balancing_plugin_agrees_with_the_built_in_policy() {
    let runtime = runtime();
    let plugin = runtime.load::<Balancing>(&plugin("default:balancing")).expect("loads");
    assert_eq!(plugin.info().world, "balancing-policy");
    assert_eq!(plugin.info().export, "halo:policy/balancing@0.1.4");
    for input in [piled(), balance::skewed_input(1000, 10_000), balance::skewed_input(3, 2)] {
        let decision = runtime.decide(Some(&plugin), &input);
        assert!(matches!(decision.decided_by, DecidedBy::Plugin(_)), "{:?}", decision.decided_by);
        assert_eq!(decision.answer, balance::propose(&input), "the plugin is the built-in policy");
    }
    let moves = runtime.decide(Some(&plugin), &piled()).answer;
    assert!(!moves.is_empty() && !moves.iter().any(|m| m.vm == 0 && m.to == 1), "vm-1 joins vm-6: {moves:?}");
}

#[test]
fn a_balancing_answer_that_breaks_the_contract_is_refused_with_its_reason() {
    let runtime = runtime();
    let plugin = runtime.load::<Balancing>(&plugin("hostile:balance_bad_moves")).expect("loads");
    for (mode, kind, why) in [
        ("breaks-rule", FailureKind::InvalidAnswer, "move 1 (vm-1 to host-2): it breaks rule db-apart (must apart)"),
        ("no-room", FailureKind::InvalidAnswer, "move 1 (vm-7 to host-1): the target has no room"),
        ("unknown-vm", FailureKind::InvalidAnswer, "no VM at position 7"),
        ("twice", FailureKind::InvalidAnswer, "the VM moves twice"),
        ("too-many", FailureKind::InvalidAnswer, "5 moves, at most 4 allowed"),
        ("loops", FailureKind::Timeout, ""),
        ("", FailureKind::Refused, "unknown mode"),
    ] {
        let mut input = piled();
        input.settings = vec![Setting { key: "mode".into(), value: mode.into() }];
        let decision = runtime.decide(Some(&plugin), &input);
        let failure = decision.failure().unwrap_or_else(|| panic!("{mode}: accepted {:?}", decision.answer));
        assert_eq!(failure.kind, kind, "{mode}: {failure}");
        assert!(failure.detail.contains(why), "{mode}: {failure}");
        assert_eq!(decision.answer, balance::propose(&input), "{mode}: the built-in policy decided");
    }
}

#[test]
fn the_agent_s_balancing_slot_carries_a_failure_to_the_core() {
    let runtime = runtime();
    let files = PluginFiles { balancing: Some(&plugin("hostile:balance_bad_moves")), ..PluginFiles::default() };
    let mut policies = PluginPolicies::load(&runtime, files).expect("loads");
    let mut input = piled();
    input.settings = vec![Setting { key: "mode".into(), value: "twice".into() }];
    let outcome = halo_core::Policies::balance(&mut policies, &input);
    let reason = outcome.fallback_reason.expect("a fallback");
    assert!(reason.contains("balance_bad_moves") && reason.contains("moves twice"), "{reason}");
    assert_eq!(outcome.answer, balance::propose(&input));
    let stats = policies.balancing.stats();
    assert_eq!((stats.calls, stats.fallbacks), (1, 1), "{stats:?}");
}

/// The worked example of docs/plugins.md: a site's balancing plugin written from the WIT file
/// alone, which levels memory and never moves a VM a rule names.
#[test]
fn the_memory_leveler_example_levels_memory_within_the_contract() {
    let runtime = runtime();
    let plugin = runtime.load::<Balancing>(&plugin("example:memory_leveler_balancing")).expect("loads");
    let input = piled();
    let decision = runtime.decide(Some(&plugin), &input);
    assert!(matches!(decision.decided_by, DecidedBy::Plugin(_)), "{:?}", decision.decided_by);
    let moves = decision.answer;
    assert!(!moves.is_empty(), "host-1 is 91 % full, the others 12 %");
    assert!(moves.iter().all(|m| m.vm != 0 && m.vm != 5), "never a VM a rule names: {moves:?}");
    assert!(moves[0].reason.starts_with("memory: host-1 is 78 points fuller than host-2"), "{}", moves[0].reason);
    let spread = |input: &BalanceInput, moves: &[balance::BalanceMove]| {
        let mut used = vec![0u64; input.hosts.len()];
        for (v, vm) in input.vms.iter().enumerate() {
            let host = moves.iter().find(|m| m.vm as usize == v).map_or(vm.host, |m| m.to);
            used[host as usize] += vm.memory_mib;
        }
        let shares: Vec<f64> =
            used.iter().zip(&input.hosts).map(|(u, h)| 100.0 * *u as f64 / h.memory_mib as f64).collect();
        shares.iter().copied().fold(f64::MIN, f64::max) - shares.iter().copied().fold(f64::MAX, f64::min)
    };
    assert!(spread(&input, &moves) < 40.0, "{} → {}: {moves:?}", spread(&input, &[]), spread(&input, &moves));
    // Its setting: VMs under 1 GiB are not worth moving (all are 512 MiB here); nonsense is an
    // error, and the built-in policy decides.
    let mut input = piled();
    input.settings = vec![Setting { key: "min-vm-mib".into(), value: "1024".into() }];
    assert!(runtime.decide(Some(&plugin), &input).answer.is_empty());
    input.settings = vec![Setting { key: "min-vm-mib".into(), value: "lots".into() }];
    let decision = runtime.decide(Some(&plugin), &input);
    assert_eq!(decision.failure().map(|f| f.kind), Some(FailureKind::Refused));
}
