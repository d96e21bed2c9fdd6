//! Plugin runtime benchmark (prints figures; not a test). Needs the plugins built:
//! `cargo xtask plugins` (the default plugins, and the test plugins for the named-world line).
//!
//! Run: `cargo bench -p halo-plugin-runtime --bench plugins`. Figures go to docs/performance.md.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use halo_plugin_runtime::{
    Balancing, CpuBudget, LoadedPlugin, Placement, PluginFiles, PluginPolicies, RestartOrder, Runtime, SandboxLimits,
};
use halo_policy::compact::CompactInput;
use halo_policy::{
    CandidateHost, PlacementInput, PlacementReason, RestartInput, RestartPriority, VmToPlace, VmToRestart,
};

fn plugin(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/wasm32-wasip2/plugin");
    let path = root.join(name);
    if !path.is_file() {
        eprintln!("{} is missing: build the plugins first (cargo xtask plugins)", path.display());
        std::process::exit(2);
    }
    path
}

/// Median of `runs` timings of `f`.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut t: Vec<Duration> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    t[t.len() / 2]
}

/// A deterministic generator (no randomness crate, same input every run).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn big_placement(vms: usize, hosts: usize) -> PlacementInput {
    let mut rng = Lcg(42);
    let hosts: Vec<CandidateHost> = (0..hosts)
        .map(|i| CandidateHost {
            name: format!("host-{i:04}"),
            total_memory_mib: 262_144,
            free_memory_mib: 65_536 + rng.next(131_072),
            total_vcpus: 64,
            allocated_vcpus: rng.next(64) as u32,
            labels: if i % 10 == 0 { vec!["gpu".into()] } else { vec![] },
            datastores: vec!["ds1".into(), format!("ds{}", 2 + i % 4)],
            maintenance: i % 97 == 0,
            anti_affinity_groups: vec![],
        })
        .collect();
    let vms: Vec<VmToPlace> = (0..vms)
        .map(|i| VmToPlace {
            name: format!("vm-{i:05}"),
            memory_mib: [1024, 2048, 4096, 8192, 16384][rng.next(5) as usize],
            vcpus: 1 + rng.next(8) as u32,
            priority: if i % 4 == 0 { RestartPriority::BestEffort } else { RestartPriority::Restart },
            required_host_labels: if i % 50 == 0 { vec!["gpu".into()] } else { vec![] },
            anti_affinity_group: (i % 20 == 0).then(|| format!("aa-{}", i % 200)),
            avoid_hosts: vec![format!("host-{:04}", rng.next(hosts.len() as u64))],
            datastores: vec!["ds1".into()],
        })
        .collect();
    PlacementInput { reason: PlacementReason::Failover, vms, hosts, vcpu_overcommit_percent: 400, settings: vec![] }
}

fn balancing(rounds: usize, middle: &dyn Fn(&[f64]) -> f64) {
    use halo_core::balance::{BalanceHost, BalanceSettings, BalanceVm, ProposalContext};
    use halo_core::{BuiltinPolicies, Policies};
    let input = halo_policy::balance::skewed_input(1000, 10_000);
    let hosts: Vec<BalanceHost> = input
        .hosts
        .iter()
        .zip(&input.host_names)
        .map(|(h, name)| BalanceHost {
            name: name.clone(),
            memory_mib: h.memory_mib,
            vcpus: h.vcpus,
            threads: h.threads,
            takes: h.takes,
        })
        .collect();
    let vms: Vec<BalanceVm> = input
        .vms
        .iter()
        .zip(&input.vm_names)
        .map(|(v, name)| BalanceVm {
            name: name.clone(),
            host: input.host_names[v.host as usize].clone(),
            memory_mib: v.memory_mib,
            vcpus: v.vcpus,
            cpu_percent: v.cpu_percent,
            movable: v.movable,
        })
        .collect();
    let settings = BalanceSettings::default();
    let context =
        ProposalContext { rules: &[], settings: &settings, vcpu_overcommit_percent: 400, plugin_settings: &[] };
    let runtime = Arc::new(
        Runtime::new(SandboxLimits { cpu: CpuBudget::Fuel { millis: 2000 }, ..SandboxLimits::default() }, None)
            .expect("runtime"),
    );
    let files = PluginFiles { balancing: Some(&plugin("halo_plugin_balancing.wasm")), ..PluginFiles::default() };
    let mut plugins = PluginPolicies::load(&runtime, files).expect("the balancing plugin loads");
    let native_proposal = halo_core::balance::propose(&hosts, &vms, context, &mut BuiltinPolicies);
    let plugin_proposal = halo_core::balance::propose(&hosts, &vms, context, &mut plugins);
    assert_eq!(native_proposal, plugin_proposal, "the plugin and the built-in policy must agree");
    assert!(plugins.balance(&input).fallback_reason.is_none(), "the plugin answered");
    let refuser = runtime.load::<Balancing>(&plugin("examples/balance_bad_moves.wasm")).expect("load");
    let plugin = runtime.load::<Balancing>(&plugin("halo_plugin_balancing.wasm")).expect("load");
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        f();
        start.elapsed().as_secs_f64()
    };
    let (mut native_whole, mut wasm_whole, mut native_call, mut wasm_call) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        native_whole.push(time(&mut || {
            std::hint::black_box(halo_core::balance::propose(&hosts, &vms, context, &mut BuiltinPolicies));
        }));
        wasm_whole.push(time(&mut || {
            std::hint::black_box(halo_core::balance::propose(&hosts, &vms, context, &mut plugins));
        }));
        native_call.push(time(&mut || {
            std::hint::black_box(halo_policy::balance::propose(&input));
        }));
        wasm_call.push(time(&mut || {
            std::hint::black_box(runtime.call(&plugin, &input).expect("call"));
        }));
    }
    // The input crossing alone: a plugin that refuses right after lifting its input.
    let crossing = median(15, || {
        let _ = std::hint::black_box(runtime.call(&refuser, &input));
    });
    let moves = halo_policy::balance::propose(&input);
    let validation = median(15, || {
        halo_policy::balance::validate_moves(&input, &moves).expect("the built-in answer is valid");
    });
    let ratio = |w: &[f64], n: &[f64]| middle(&w.iter().zip(n).map(|(w, n)| w / n).collect::<Vec<_>>());
    println!(
        "\nbalancing proposal, 1,000 hosts × 10,000 VMs, {} moves (median of {rounds} rounds taken in turn)",
        native_proposal.moves.len()
    );
    println!("  as the master asks (names included):");
    println!("    native (built-in)      : {:>7.2} ms", middle(&native_whole) * 1e3);
    println!(
        "    plugin, fuel 2 s budget: {:>7.2} ms  ({:.2}x native, memory cap 64 MiB)",
        middle(&wasm_whole) * 1e3,
        ratio(&wasm_whole, &native_whole)
    );
    println!("  the policy call alone (positions):");
    println!("    native (built-in)      : {:>7.2} ms", middle(&native_call) * 1e3);
    println!(
        "    plugin, fuel 2 s budget: {:>7.2} ms  ({:.2}x native: crossing, the policy in the sandbox, validation)",
        middle(&wasm_call) * 1e3,
        ratio(&wasm_call, &native_call)
    );
    println!(
        "    of which, crossing     : {:>7.2} ms  (instantiate, lower, lift in the guest)",
        crossing.as_secs_f64() * 1e3
    );
    println!("    of which, validation   : {:>7.2} ms  (the host checks every move)", validation.as_secs_f64() * 1e3);
}

fn main() {
    let restart_wasm = plugin("halo_plugin_restart_order.wasm");
    let placement_wasm = plugin("halo_plugin_placement.wasm");
    println!("# halo plugin runtime benchmark\n");

    // 1. Overhead of one decision: fresh store + instance, trivial input, answer validated.
    let trivial = RestartInput {
        vms: vec![VmToRestart {
            name: "vm".into(),
            priority: RestartPriority::Restart,
            order: 0,
            group: None,
            depends_on: vec![],
        }],
        settings: vec![],
    };
    for (label, cpu) in [("fuel", CpuBudget::Fuel { millis: 50 }), ("epoch", CpuBudget::Epoch { millis: 50 })] {
        let runtime = Runtime::new(SandboxLimits { cpu, ..SandboxLimits::default() }, None).expect("runtime");
        let plugin = runtime.load::<RestartOrder>(&restart_wasm).expect("load");
        for _ in 0..2000 {
            runtime.call(&plugin, &trivial).expect("call").expect("no cycle");
        }
        let n = 20_000;
        let per_call = median(5, || {
            for _ in 0..n {
                runtime.call(&plugin, &trivial).expect("call").expect("no cycle");
            }
        }) / n;
        println!("trivial decision (restart-policy, 1 VM), {label:5}: {:>7.2} µs/call", per_call.as_secs_f64() * 1e6);
    }

    // 2. Placement of 10,000 VMs on 1,000 hosts: WASM with limits on vs native. The builds
    // take turns, ROUNDS rounds of one decision each, so drift in the machine's speed (other
    // load, frequency) hits all alike; each figure is the median of its rounds, the ratio
    // the median of the per-round ratios.
    const ROUNDS: usize = 31;
    let input = big_placement(10_000, 1_000);
    let placed = halo_policy::placement::place_fallback(&input).0;
    println!(
        "\nplacement 10,000 VMs on 1,000 hosts ({} placed, {} unplaced; median of {ROUNDS} rounds taken in turn)",
        placed.assignments.len(),
        placed.unplaced.len()
    );
    let named_wasm = plugin("examples/named_default_placement.wasm");
    let builds: Vec<(&str, Runtime, LoadedPlugin<Placement>)> = [
        ("wasm, fuel 2 s budget  ", CpuBudget::Fuel { millis: 2000 }, &placement_wasm),
        ("wasm, epoch 2 s budget ", CpuBudget::Epoch { millis: 2000 }, &placement_wasm),
        ("named world 0.1.0, fuel", CpuBudget::Fuel { millis: 2000 }, &named_wasm),
    ]
    .into_iter()
    .map(|(label, cpu, file)| {
        let runtime = Runtime::new(SandboxLimits { cpu, ..SandboxLimits::default() }, None).expect("runtime");
        let plugin = runtime.load::<Placement>(file).expect("load");
        let answer = runtime.call(&plugin, &input).expect("wasm placement");
        if answer != placed {
            let host = |p: &halo_policy::Placement, vm: &str| {
                p.assignments.iter().find(|a| a.vm == vm).map(|a| a.host.clone())
            };
            let differ: Vec<String> = placed
                .assignments
                .iter()
                .map(|a| a.vm.as_str())
                .chain(placed.unplaced.iter().map(|u| u.vm.as_str()))
                .filter(|vm| host(&answer, vm) != host(&placed, vm))
                .take(5)
                .map(|vm| format!("{vm}: plugin {:?}, built-in {:?}", host(&answer, vm), host(&placed, vm)))
                .collect();
            let reasons: Vec<(String, String)> = answer
                .unplaced
                .iter()
                .zip(&placed.unplaced)
                .filter(|(a, b)| a != b)
                .take(2)
                .map(|(a, b)| (format!("{a:?}"), format!("{b:?}")))
                .collect();
            let order = answer.assignments.len() == placed.assignments.len()
                && answer.assignments.iter().zip(&placed.assignments).any(|(a, b)| a != b);
            panic!(
                "{label}: the plugin and the built-in policy disagree: hosts {differ:?}, unplaced {reasons:?}, order differs: {order}"
            );
        }
        (label, runtime, plugin)
    })
    .collect();
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        f();
        start.elapsed().as_secs_f64()
    };
    let mut native_times = Vec::new();
    let mut wasm_times = vec![Vec::new(); builds.len()];
    for _ in 0..ROUNDS {
        native_times.push(time(&mut || {
            std::hint::black_box(halo_policy::placement::place_fallback(&input));
        }));
        for ((_, runtime, plugin), times) in builds.iter().zip(&mut wasm_times) {
            times.push(time(&mut || {
                std::hint::black_box(runtime.call(plugin, &input).expect("call"));
            }));
        }
    }
    let middle = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let native = Duration::from_secs_f64(middle(&native_times));
    println!("  native (built-in)        : {:>7.2} ms", native.as_secs_f64() * 1e3);
    for ((label, _, plugin), times) in builds.iter().zip(&wasm_times) {
        let ratios: Vec<f64> = times.iter().zip(&native_times).map(|(w, n)| w / n).collect();
        println!(
            "  {label}  : {:>7.2} ms  ({:.2}x native, memory cap 64 MiB; {})",
            middle(times) * 1e3,
            middle(&ratios),
            plugin.info().world
        );
    }

    // 2b. Where the WASM time goes: the input crossing alone (the same plugin, given a setting
    // it refuses, returns right after lifting the input: converting the agent's input to the
    // compact form, instantiation, lowering, lifting in the guest) and the host's validation
    // of the answer (in positions, as the runtime checks a compact plugin's answer).
    let runtime =
        Runtime::new(SandboxLimits { cpu: CpuBudget::Fuel { millis: 2000 }, ..SandboxLimits::default() }, None)
            .expect("runtime");
    let plugin = runtime.load::<Placement>(&placement_wasm).expect("load");
    let refused = PlacementInput {
        settings: vec![halo_policy::Setting { key: "strategy".into(), value: "none".into() }],
        ..input.clone()
    };
    assert!(runtime.call(&plugin, &refused).is_err(), "the plugin must refuse an unknown strategy");
    let crossing = median(7, || {
        let _ = std::hint::black_box(runtime.call(&plugin, &refused));
    });
    let compact = CompactInput::from_named(&input);
    let positions = halo_policy::placement::place_compact_with(&Default::default(), &compact);
    let validation = median(7, || {
        halo_policy::placement::validate_compact(&input, &compact, &positions).expect("the built-in answer is valid");
    });
    let conversions = median(7, || {
        let compact = CompactInput::from_named(&input);
        std::hint::black_box(positions.to_named(&input));
        std::hint::black_box(compact);
    });
    println!(
        "  of which, input crossing : {:>7.2} ms  ({:.2}x native: compact form, instantiate, lower, lift in the guest)",
        crossing.as_secs_f64() * 1e3,
        crossing.as_secs_f64() / native.as_secs_f64()
    );
    println!(
        "  of which, validation     : {:>7.2} ms  ({:.2}x native: the host checks every assignment)",
        validation.as_secs_f64() * 1e3,
        validation.as_secs_f64() / native.as_secs_f64()
    );
    println!(
        "  names <-> positions      : {:>7.2} ms  ({:.2}x native: in both the native and the WASM figure)",
        conversions.as_secs_f64() * 1e3,
        conversions.as_secs_f64() / native.as_secs_f64()
    );

    // 2c. Balancing (contract 0.1.2): 1,000 hosts, 10,000 VMs skewed onto a tenth of the hosts,
    // 8 moves. As the master asks for it (`halo_core::balance::propose`: names to positions,
    // the policy, the moves named again with the imbalance after each), and the policy call
    // alone on positions; the builds take turns as above.
    balancing(ROUNDS, &middle);

    // 3. Cold load with and without the AOT cache.
    let dir = std::env::temp_dir().join(format!("halo-bench-cache-{}", std::process::id()));
    let runtime = Arc::new(Runtime::new(SandboxLimits::default(), Some(&dir)).expect("runtime"));
    let first = runtime.load::<Placement>(&placement_wasm).expect("load");
    let cached = median(5, || {
        let p = runtime.load::<Placement>(&placement_wasm).expect("load");
        assert!(p.info().from_cache);
    });
    let plain = Runtime::new(SandboxLimits::default(), None).expect("runtime");
    let compile = median(3, || {
        plain.load::<Placement>(&placement_wasm).expect("load");
    });
    println!("\ncold load of the placement plugin ({} KiB)", first.info().size / 1024);
    println!("  compile (no cache)       : {:>7.2} ms", compile.as_secs_f64() * 1e3);
    println!("  first load, filling cache: {:>7.2} ms", first.info().load_time.as_secs_f64() * 1e3);
    println!("  from the AOT cache       : {:>7.2} ms", cached.as_secs_f64() * 1e3);
    let _ = std::fs::remove_dir_all(&dir);

    // 4. The same first-fit policy in Rust (halo-plugin-sdk), Python and JavaScript.
    languages();
}

/// `vms` VMs on `hosts` hosts, names and rules as a site has them, for the first-fit examples.
fn first_fit_input(vms: usize, hosts: usize) -> PlacementInput {
    PlacementInput {
        reason: PlacementReason::Failover,
        vms: (0..vms)
            .map(|i| VmToPlace {
                name: format!("vm-{i:05}"),
                memory_mib: 512 + 512 * (i as u64 % 4),
                vcpus: 1 + (i % 4) as u32,
                priority: RestartPriority::Restart,
                required_host_labels: if i % 10 == 0 { vec!["ssd".into()] } else { vec![] },
                anti_affinity_group: (i % 25 == 0).then(|| format!("group-{}", i % 3)),
                avoid_hosts: vec![format!("host-{:04}", i % hosts)],
                datastores: vec!["ds1".into()],
            })
            .collect(),
        hosts: (0..hosts)
            .map(|i| CandidateHost {
                name: format!("host-{i:04}"),
                total_memory_mib: 65_536,
                free_memory_mib: 24_576,
                total_vcpus: 32,
                allocated_vcpus: 8,
                labels: if i % 2 == 0 { vec!["ssd".into()] } else { vec![] },
                datastores: vec!["ds1".into()],
                maintenance: i % 17 == 16,
                anti_affinity_groups: vec![],
            })
            .collect(),
        vcpu_overcommit_percent: 400,
        settings: vec![],
    }
}

fn languages() {
    println!(
        "
the first-fit example in three languages (examples/plugins/first-fit*), fuel budget 10 s"
    );
    let example: PlacementInput = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/inputs/placement.json"),
        )
        .expect("example input"),
    )
    .expect("example input parses");
    let big = first_fit_input(1_000, 100);
    let limits = SandboxLimits { cpu: CpuBudget::Fuel { millis: 10_000 }, ..SandboxLimits::default() };
    let mut answers = Vec::new();
    for (language, file) in [
        ("Rust (SDK)", "first_fit_placement.wasm"),
        ("Python", "first_fit_py.wasm"),
        ("JavaScript", "first_fit_js.wasm"),
    ] {
        let path = plugin(file);
        let dir = std::env::temp_dir().join(format!("halo-bench-lang-{}-{file}", std::process::id()));
        let runtime = Runtime::new(limits, Some(&dir)).expect("runtime");
        let first = runtime.load::<Placement>(&path).expect("load");
        let cached = median(5, || {
            let p = runtime.load::<Placement>(&path).expect("load");
            assert!(p.info().from_cache);
        });
        let small = median(21, || {
            std::hint::black_box(runtime.call(&first, &example).expect("example decision"));
        });
        let large = median(5, || {
            std::hint::black_box(runtime.call(&first, &big).expect("1,000-VM decision"));
        });
        answers.push(runtime.call(&first, &big).expect("1,000-VM decision"));
        println!(
            "  {language:<11}: {:>6.1} MB, load {:>8.1} ms compiling ({:>6.2} ms from the AOT cache), decision: example {:>7.3} ms, 1,000 VMs on 100 hosts {:>8.2} ms",
            first.info().size as f64 / 1e6,
            first.info().load_time.as_secs_f64() * 1e3,
            cached.as_secs_f64() * 1e3,
            small.as_secs_f64() * 1e3,
            large.as_secs_f64() * 1e3,
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "the three languages disagree on the 1,000-VM input");
    let placed = answers.first().map_or(0, |a| a.assignments.len());
    println!("  (all three answer alike: {placed} of 1,000 placed)");
}
