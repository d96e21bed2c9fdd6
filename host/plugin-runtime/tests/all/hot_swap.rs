//! Hot swap: a replaced plugin file takes over atomically; a broken one leaves the old in
//! force; concurrent calls never fail or see a half-loaded plugin.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use halo_plugin_runtime::{DecidedBy, Placement, PluginFiles, PluginPolicies, PluginSlot};

use crate::{placement_input, plugin, runtime};

/// A private copy of a plugin file, replaced the way an operator would (write + rename).
fn install(from: &std::path::Path, to: &std::path::Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).expect("copy plugin");
    std::fs::rename(&tmp, to).expect("rename plugin");
}

#[test]
fn replacing_the_file_swaps_the_policy_and_a_broken_file_keeps_the_old_one() {
    let dir = std::env::temp_dir().join(format!("halo-swap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("placement.wasm");
    install(&plugin("default:placement"), &path);
    let slot = PluginSlot::<Placement>::load(runtime(), &path).expect("loads");
    let input = placement_input();
    let best_fit = slot.decide(&input);
    assert_eq!(best_fit.decided_by, DecidedBy::Plugin("placement.wasm".into()));
    assert!(slot.reload_if_changed().is_none(), "unchanged file: no reload");

    install(&plugin("example:first_fit_placement"), &path);
    let info = slot.reload_if_changed().expect("changed").expect("new plugin loads");
    assert_eq!(info.world, "placement-engine");
    let first_fit = slot.decide(&input);
    assert_ne!(first_fit.answer, best_fit.answer, "the new policy decides");
    assert_eq!(first_fit.decided_by, DecidedBy::Plugin("placement.wasm".into()));

    // A broken replacement: refused with the reason, the first-fit plugin stays in force.
    std::fs::write(dir.join("broken.new"), b"garbage").expect("write");
    std::fs::rename(dir.join("broken.new"), &path).expect("rename");
    let err = slot.reload_if_changed().expect("changed").expect_err("refused");
    assert!(err.to_string().contains("not a WebAssembly file"), "{err}");
    assert_eq!(slot.decide(&input).answer, first_fit.answer);
    assert!(slot.reload_if_changed().is_none(), "a broken file is reported once");
    assert_eq!(slot.stats().failed_reloads, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_plugin_that_fails_to_load_at_start_leaves_the_built_in_policy_until_its_file_is_fixed() {
    let dir = std::env::temp_dir().join(format!("halo-start-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let broken = dir.join("placement.wasm");
    std::fs::write(&broken, b"not a plugin").expect("write");
    let restart = plugin("default:restart_order");
    let files =
        PluginFiles { isolation: None, placement: Some(&broken), restart_order: Some(&restart), balancing: None };
    let (policies, failed) = PluginPolicies::load_or_builtin(&runtime(), files);
    let worlds: Vec<&str> = failed.iter().map(|(w, _)| *w).collect();
    assert_eq!(worlds, ["placement-engine"], "only the broken one fails: {failed:?}");
    assert!(failed[0].1.to_string().contains("not a WebAssembly file"), "{}", failed[0].1);
    let input = placement_input();
    assert_eq!(policies.placement.decide(&input).decided_by, DecidedBy::BuiltIn { failure: None });
    assert!(policies.restart_order.info().is_some(), "the good plugin is in force");
    assert!(policies.placement.reload_if_changed().is_none(), "the broken file is reported once");
    // Fixed: the next poll loads it.
    install(&plugin("default:placement"), &broken);
    let info = policies.placement.reload_if_changed().expect("changed").expect("loads now");
    assert!(info.world.ends_with("placement-engine"), "{}", info.world);
    assert_eq!(policies.placement.decide(&input).decided_by, DecidedBy::Plugin("placement.wasm".into()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hot_swap_under_concurrent_calls_never_fails_a_call() {
    let rt = runtime();
    let slot = Arc::new(PluginSlot::<Placement>::load(rt, &plugin("default:placement")).expect("loads"));
    let input = placement_input();
    let best_fit = slot.decide(&input).answer;
    let first_fit = {
        let other = PluginSlot::<Placement>::load(runtime(), &plugin("example:first_fit_placement")).expect("loads");
        other.decide(&input).answer
    };
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let (slot, stop, calls, input) = (slot.clone(), stop.clone(), calls.clone(), input.clone());
            let (best_fit, first_fit) = (best_fit.clone(), first_fit.clone());
            std::thread::spawn(move || {
                // Bounded: at most 20,000 calls per thread.
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let decision = slot.decide(&input);
                    assert!(matches!(decision.decided_by, DecidedBy::Plugin(_)), "{:?}", decision.decided_by);
                    assert!(decision.answer == best_fit || decision.answer == first_fit, "a half-swapped answer");
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for i in 0..10 {
        let next = if i % 2 == 0 { "example:first_fit_placement" } else { "default:placement" };
        slot.swap_to(&plugin(next)).expect("swap");
    }
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.join().expect("no caller panicked");
    }
    let stats = slot.stats();
    assert_eq!(stats.fallbacks, 0);
    assert_eq!(stats.reloads, 11);
    assert!(calls.load(Ordering::Relaxed) > 0);
}
