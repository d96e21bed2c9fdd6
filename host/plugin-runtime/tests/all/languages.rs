//! Plugins written in Python (componentize-py) and JavaScript (componentize-js): the same
//! first-fit policy as the Rust example (written with `halo-plugin-sdk`) answers alike in all
//! three languages, and a misbehaving Python or JavaScript plugin is contained like a Rust one.
//! Both are 12–18 MB components that take seconds to compile; one runtime with an AOT cache
//! compiles each once.

use std::sync::{Arc, OnceLock};

use halo_plugin_runtime::{FailureKind, LoadedPlugin, Placement, Runtime, SandboxLimits};
use halo_policy::{PlacementInput, PlacementReason, RestartPriority, Setting};

use crate::{host, placement_input, plugin, vm};

/// One runtime for the whole file, its AOT cache in a temporary directory.
fn shared() -> Arc<Runtime> {
    static RUNTIME: OnceLock<(tempfile::TempDir, Arc<Runtime>)> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let cache = tempfile::tempdir().expect("cache dir");
            let runtime = Runtime::new(SandboxLimits::default(), Some(cache.path())).expect("runtime");
            (cache, Arc::new(runtime))
        })
        .1
        .clone()
}

fn load(which: &str) -> LoadedPlugin<Placement> {
    shared().load::<Placement>(&plugin(which)).unwrap_or_else(|e| panic!("{which} loads: {e}"))
}

/// The site example's input, as `halo plugin run` reads it.
fn example_input() -> PlacementInput {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/inputs/placement.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("example input")).expect("example input parses")
}

/// 40 VMs on 9 hosts with every rule in play: labels, datastores, anti-affinity, avoided
/// hosts, maintenance, vCPU limits, names that sort differently from their order.
fn busy_input() -> PlacementInput {
    let mut input = placement_input();
    input.reason = PlacementReason::Evacuation;
    input.vcpu_overcommit_percent = 150;
    input.hosts = (0..9)
        .map(|i| {
            let mut h = host(&format!("h{}", (i * 7) % 9), 4_000 + 1_500 * (i as u64 % 4));
            h.labels = if i % 3 == 0 { vec!["ssd".into()] } else { vec![] };
            h.datastores = if i % 4 == 3 { vec!["ds2".into()] } else { vec!["ds1".into(), "ds2".into()] };
            h.maintenance = i == 5;
            h.allocated_vcpus = (i % 5) as u32;
            h.anti_affinity_groups = if i == 1 { vec!["db".into()] } else { vec![] };
            h
        })
        .collect();
    input.vms = (0..40)
        .map(|i| {
            let mut v = vm(&format!("vm-{i:02}"), 256 + 512 * (i as u64 % 5));
            v.vcpus = 1 + (i % 4) as u32;
            v.priority = if i % 6 == 0 { RestartPriority::BestEffort } else { RestartPriority::Restart };
            v.required_host_labels = if i % 7 == 0 { vec!["ssd".into()] } else { vec![] };
            v.anti_affinity_group = (i % 5 == 0).then(|| "db".to_string());
            v.avoid_hosts = vec![format!("h{}", i % 9)];
            v.datastores = if i % 3 == 0 { vec!["ds2".into()] } else { vec!["ds1".into()] };
            v
        })
        .collect();
    input
}

#[test]
fn first_fit_in_rust_python_and_javascript_answers_alike() {
    let rust = load("example:first_fit_placement");
    let python = load("example:first_fit_py");
    let javascript = load("example:first_fit_js");
    let rt = shared();
    for (name, input) in [("example", example_input()), ("three VMs", placement_input()), ("busy", busy_input())] {
        let expected = rt.call(&rust, &input).unwrap_or_else(|e| panic!("{name}: Rust: {e}"));
        assert!(!expected.assignments.is_empty(), "{name}: the input places something");
        for (language, plugin) in [("Python", &python), ("JavaScript", &javascript)] {
            let answer = rt.call(plugin, &input).unwrap_or_else(|e| panic!("{name}: {language}: {e}"));
            assert_eq!(answer, expected, "{name}: {language} and Rust disagree");
        }
    }
    let busy = rt.call(&rust, &busy_input()).expect("busy");
    assert!(!busy.unplaced.is_empty() && busy.assignments.len() > 20, "the busy input is neither trivial nor hopeless");
}

#[test]
fn python_and_javascript_plugins_are_contained_like_any_plugin() {
    let rt = shared();
    let cases = [
        ("loop", FailureKind::Timeout, "CPU budget"),
        ("memory", FailureKind::MemoryExhausted, "memory cap"),
        ("crash", FailureKind::Trap, "unreachable"),
        ("refuse", FailureKind::Refused, "not on Tuesdays"),
        ("nonsense", FailureKind::InvalidAnswer, "unknown host `nowhere`"),
    ];
    for language in ["hostile_py", "hostile_js"] {
        let plugin = rt.load::<Placement>(&plugin(&format!("hostile:{language}"))).expect("loads");
        for (mode, kind, detail) in cases {
            let mut input = placement_input();
            input.settings = vec![Setting { key: "mode".into(), value: mode.into() }];
            let decision = rt.decide(Some(&plugin), &input);
            let failure = decision.failure().unwrap_or_else(|| panic!("{language} {mode}: expected a fallback"));
            // JavaScript catches its own out-of-memory and refuses: contained either way.
            let (kind, detail) = match (language, mode) {
                ("hostile_js", "memory") => (FailureKind::Refused, "out of memory"),
                _ => (kind, detail),
            };
            assert_eq!(failure.kind, kind, "{language} {mode}: {failure}");
            assert!(failure.detail.contains(detail), "{language} {mode}: {failure}");
            assert_eq!(decision.answer, halo_policy::placement::place_fallback(&input).0, "the built-in decides");
        }
        // Still usable after all that: a fresh instance per call.
        let answer = rt.call(&plugin, &placement_input()).expect("a valid answer after the failures");
        assert_eq!(answer.unplaced.len(), 3);
    }
}

#[test]
fn python_and_javascript_cannot_read_the_real_clock() {
    // Python (built with --stub-wasi) traps on any WASI call; JavaScript (built without the
    // clocks feature) reads the time its component was built, frozen: either way no decision
    // depends on when it runs.
    let rt = shared();
    let mut input = placement_input();
    input.settings = vec![Setting { key: "mode".into(), value: "clock".into() }];
    let python = rt.load::<Placement>(&plugin("hostile:hostile_py")).expect("loads");
    let failure = rt.call(&python, &input).expect_err("Python's clock is a trapping stub");
    assert_eq!(failure.kind, FailureKind::Trap, "{failure}");
    let javascript = rt.load::<Placement>(&plugin("hostile:hostile_js")).expect("loads");
    let first = rt.call(&javascript, &input).expect("answer");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let second = rt.call(&javascript, &input).expect("answer");
    assert_eq!(first, second, "the same input gives the same answer, whenever it runs");
}
