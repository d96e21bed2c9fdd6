//! The core's decision points answered by plugins (`PluginPolicies`), driven by the real
//! core in the simulator: a host crash with the default plugins, and with a hostile
//! placement plugin, whose failures the core turns into alerts while the built-in policy
//! keeps restarting VMs (invariant 5: plugin failures are contained).

use halo_core::{EventKind, Policies, PolicyOutcome};
use halo_plugin_runtime::{PluginFiles, PluginPolicies};
use halo_sim::scenario::demo_cluster;
use halo_sim::{Fault, Outcome, Schedule, Sim, SimOptions};

use halo_policy::{RestartPriority, VmInfo};

use crate::{placement_input, plugin, runtime};

fn crash_host_2(policies: &mut dyn Policies) -> Outcome {
    let fault: Fault = "crash:host-2@15s/600s".parse().expect("valid fault");
    Sim::new(
        demo_cluster(),
        Schedule { faults: vec![fault], ..Schedule::default() },
        SimOptions::new(11, 60_000),
        policies,
    )
    .run()
}

fn kinds(outcome: &Outcome, kind: EventKind) -> usize {
    outcome.timeline.iter().filter(|e| e.kind == kind).count()
}

#[test]
fn the_default_plugins_decide_a_failover_in_the_simulator() {
    let runtime = runtime();
    let files = PluginFiles {
        isolation: Some(&plugin("default:isolation")),
        placement: Some(&plugin("default:placement")),
        restart_order: Some(&plugin("default:restart_order")),
        balancing: Some(&plugin("default:balancing")),
    };
    let mut policies = PluginPolicies::load(&runtime, files).expect("default plugins load");
    let outcome = crash_host_2(&mut policies);
    assert!(outcome.clean(), "{:?} {:?}\n{}", outcome.violations, outcome.liveness_violations, outcome.render(false));
    // host-2 ran dns-1, web-1 (restart) and batch (best-effort): three restarts, three waves
    // (dns-1 order 0, web-1 order 2, then best-effort).
    assert_eq!(kinds(&outcome, EventKind::VmRestarted), 3, "{}", outcome.render(false));
    assert_eq!(kinds(&outcome, EventKind::RestartWave), 3, "{}", outcome.render(false));
    assert_eq!(kinds(&outcome, EventKind::PluginFailed), 0);
    let placement = policies.placement.stats();
    assert!(placement.calls > 0 && placement.fallbacks == 0, "{placement:?}");
    let restart = policies.restart_order.stats();
    assert!(restart.calls >= 3 && restart.plugin_answers == restart.calls, "{restart:?}");
}

#[test]
fn a_hostile_placement_plugin_is_contained_and_vms_still_restart() {
    for hostile in ["panics", "unknown_host", "infinite_loop", "places_twice"] {
        let runtime = runtime();
        let files = PluginFiles { placement: Some(&plugin(&format!("hostile:{hostile}"))), ..PluginFiles::default() };
        let mut policies = PluginPolicies::load(&runtime, files).expect("a hostile plugin still loads");
        let outcome = crash_host_2(&mut policies);
        assert!(outcome.clean(), "{hostile}: {:?} {:?}", outcome.violations, outcome.liveness_violations);
        assert_eq!(kinds(&outcome, EventKind::VmRestarted), 3, "{hostile}:\n{}", outcome.render(false));
        let alerts: Vec<&str> =
            outcome.timeline.iter().filter(|e| e.kind == EventKind::PluginFailed).map(|e| e.message.as_str()).collect();
        assert!(!alerts.is_empty(), "{hostile}: no plugin-failed alert");
        assert!(alerts.iter().all(|m| m.contains(hostile)), "{hostile}: the alert names the plugin: {alerts:?}");
        let stats = policies.placement.stats();
        assert_eq!(stats.plugin_answers, 0, "{hostile}: {stats:?}");
        assert_eq!(stats.fallbacks, stats.calls, "{hostile}: {stats:?}");
    }
}

#[test]
fn a_fallback_carries_the_plugins_failure_as_its_reason() {
    let runtime = runtime();
    let files = PluginFiles { placement: Some(&plugin("hostile:panics")), ..PluginFiles::default() };
    let mut policies = PluginPolicies::load(&runtime, files).expect("loads");
    let PolicyOutcome { answer, fallback_reason } = policies.placement(&placement_input());
    let reason = fallback_reason.expect("a fallback reason");
    assert!(reason.contains("panics") && reason.contains("trapped"), "{reason}");
    assert_eq!(answer, halo_policy::placement::place_fallback(&placement_input()).0);
    // An empty slot is the built-in policy, and no fallback.
    let mut builtin = PluginPolicies::builtin(&runtime);
    assert_eq!(builtin.placement(&placement_input()).fallback_reason, None);
}

fn storage_input(host: &str) -> halo_policy::StorageInput {
    halo_policy::StorageInput {
        situation: halo_policy::StorageSituation {
            host: host.into(),
            datastore: "ds1".into(),
            lost_for_ms: 4_000,
            io_error: false,
            hosts_reaching: vec!["host-2".into()],
        },
        vms: ["db", "cache", "scratch"]
            .iter()
            .zip([RestartPriority::Restart, RestartPriority::BestEffort, RestartPriority::Unprotected])
            .map(|(name, priority)| VmInfo {
                name: name.to_string(),
                priority,
                order: 0,
                memory_mib: 512,
                vcpus: 1,
                labels: vec![],
            })
            .collect(),
        settings: vec![halo_policy::Setting::new("storage-grace-seconds", "30")],
    }
}

#[test]
fn the_isolation_plugin_answers_the_storage_response_when_it_exports_one() {
    let runtime = runtime();
    // The default isolation plugin (0.1.4) exports both: its storage answer is halo's own.
    let default = plugin("default:isolation");
    let policies = PluginPolicies::load(&runtime, PluginFiles { isolation: Some(&default), ..PluginFiles::default() })
        .expect("loads");
    assert!(policies.storage.plugin().is_some(), "the storage slot follows the isolation plugin");
    let input = storage_input("host-1");
    let decision = policies.storage.decide(&input);
    assert!(decision.failure().is_none() && matches!(decision.decided_by, halo_plugin_runtime::DecidedBy::Plugin(_)));
    assert_eq!(decision.answer, halo_policy::isolation::decide_storage(&input).expect("valid"));
    assert_eq!(decision.answer[0].response, halo_policy::StorageResponse::Restart(30));
    // An isolation plugin of an earlier contract (0.1.0, isolation only): the built-in
    // storage response decides, without any failure.
    let old = plugin("hostile:million_entries");
    let policies =
        PluginPolicies::load(&runtime, PluginFiles { isolation: Some(&old), ..PluginFiles::default() }).expect("loads");
    assert!(policies.storage.plugin().is_none());
    let decision = policies.storage.decide(&input);
    assert!(decision.failure().is_none(), "no plugin, no failure");
    assert_eq!(decision.answer, halo_policy::isolation::decide_storage(&input).expect("valid"));
}

#[test]
fn nonsense_storage_answers_are_refused_and_the_built_in_response_decides() {
    let runtime = runtime();
    let nonsense = plugin("hostile:storage_nonsense");
    let policies = PluginPolicies::load(&runtime, PluginFiles { isolation: Some(&nonsense), ..PluginFiles::default() })
        .expect("loads");
    for host in ["host-1", "ghost-host"] {
        let input = storage_input(host);
        let decision = policies.storage.decide(&input);
        let failure = decision.failure().map(ToString::to_string).unwrap_or_default();
        assert!(failure.contains("grace") || failure.contains("ghost"), "{host}: {failure}");
        assert_eq!(decision.answer, halo_policy::isolation::decide_storage_fallback(&input).0, "{host}");
    }
    // Its isolation answers are fine and stay its own.
    let isolation = policies.isolation.decide(&crate::isolation_input());
    assert!(isolation.failure().is_none());
}
