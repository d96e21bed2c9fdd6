//! The core's decision points answered by plugins (`PluginPolicies`), driven by the real
//! core in the simulator: a host crash with the default plugins, and with a hostile
//! placement plugin, whose failures the core turns into alerts while the built-in policy
//! keeps restarting VMs (invariant 5: plugin failures are contained).

use halo_core::{EventKind, Policies, PolicyOutcome};
use halo_plugin_runtime::{PluginFiles, PluginPolicies};
use halo_sim::scenario::demo_cluster;
use halo_sim::{Fault, Outcome, Schedule, Sim, SimOptions};

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
