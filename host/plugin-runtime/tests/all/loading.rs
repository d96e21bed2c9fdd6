//! Load-time checks: world, contract version, not-a-component, and the AOT cache.

use halo_plugin_runtime::{Isolation, LoadError, Placement, RestartOrder, Runtime, SandboxLimits};
use halo_policy::compact::CompactInput;
use halo_policy::{CandidateHost, RestartPriority, VmToPlace};

use crate::{isolation_input, placement_input, plugin, restart_input, runtime};

#[test]
fn default_plugins_load_and_agree_with_the_built_in_policies() {
    let rt = runtime();
    let isolation = rt.load::<Isolation>(&plugin("default:isolation")).expect("isolation plugin");
    assert_eq!(isolation.info().export, "halo:policy/isolation-response@0.1.4");
    let input = isolation_input();
    assert_eq!(
        rt.call(&isolation, &input).expect("answer"),
        halo_policy::isolation::decide_isolation_fallback(&input).0
    );

    let placement = rt.load::<Placement>(&plugin("default:placement")).expect("placement plugin");
    assert_eq!(placement.info().export, "halo:policy/columnar-placement@0.1.4");
    assert_eq!(placement.info().world, "columnar-placement-engine");
    let input = placement_input();
    let answer = rt.call(&placement, &input).expect("answer");
    assert_eq!(answer, halo_policy::placement::place_fallback(&input).0);
    assert!(answer.assignments.iter().all(|a| a.host != "failed"), "never the failed host");

    let restart = rt.load::<RestartOrder>(&plugin("default:restart_order")).expect("restart plugin");
    let input = restart_input();
    let waves = rt.call(&restart, &input).expect("answer").expect("no cycle");
    assert_eq!(waves, vec![vec!["dhcp".to_string()], vec!["sql".into()], vec!["web".into()]]);
}

#[test]
fn a_plugin_of_another_world_is_refused_with_its_exports_named() {
    let err = runtime().load::<Placement>(&plugin("default:restart_order")).err().expect("wrong world");
    assert!(matches!(err, LoadError::WrongWorld { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("halo:policy/restart-order@0.1.4"), "{text}");
    assert!(
        text.contains(
            "must export halo:policy/placement@0.1.4 or halo:policy/compact-placement@0.1.4 or halo:policy/columnar-placement@0.1.4"
        ),
        "{text}"
    );
}

#[test]
fn a_named_placement_plugin_built_against_0_1_0_still_loads_and_agrees() {
    // Contract 0.1.1 only adds: the named world of 0.1.0 keeps working, through the same
    // validation, and the same policy gives the same answer in either world.
    let rt = runtime();
    let named = rt.load::<Placement>(&plugin("hostile:named_default_placement")).expect("0.1.0 plugin");
    assert_eq!(named.info().export, "halo:policy/placement@0.1.0");
    assert_eq!(named.info().world, "placement-engine");
    let compact = rt.load::<Placement>(&plugin("default:placement")).expect("placement plugin");
    let mut input = placement_input();
    for (i, vm) in input.vms.iter_mut().enumerate() {
        vm.anti_affinity_group = (i % 2 == 0).then(|| "pair".to_string());
    }
    input.hosts[1].labels = vec!["ssd".into()];
    input.vms[2].required_host_labels = vec!["ssd".into()];
    let expected = halo_policy::placement::place_fallback(&input).0;
    assert_eq!(rt.call(&named, &input).expect("named answer"), expected);
    assert_eq!(rt.call(&compact, &input).expect("compact answer"), expected);
    assert!(!expected.unplaced.is_empty() || expected.assignments.len() == 3);
}

#[test]
fn the_compact_and_columnar_inputs_reach_the_plugin_intact() {
    // The probe plugins give back each VM and host as they saw them: the compact world (0.1.1,
    // lists of records) through wasmtime's derived code, the columnar world (0.1.3) through
    // wasmtime's lists of numbers and the SDK's conversion back. Extremes of every field,
    // every priority, with and without an anti-affinity group, more VMs than one memory page
    // holds.
    let rt = runtime();
    for (probe, world) in
        [("hostile:compact_echo", "compact-placement-engine"), ("hostile:columnar_echo", "columnar-placement-engine")]
    {
        let echo = rt.load::<Placement>(&plugin(probe)).expect("echo plugin");
        assert_eq!(echo.info().world, world);
        echo_intact(&rt, &echo, probe);
    }
}

fn echo_intact(rt: &Runtime, echo: &halo_plugin_runtime::LoadedPlugin<Placement>, probe: &str) {
    let mut input = placement_input();
    let memories = [0, 1, 4096, u64::from(u32::MAX) + 1, u64::MAX - 1, u64::MAX];
    let vcpus = [0, 1, 7, u32::MAX];
    let priorities = [RestartPriority::Restart, RestartPriority::BestEffort, RestartPriority::Unprotected];
    input.vms = (0..3000)
        .map(|i| VmToPlace {
            name: format!("vm-{i}"),
            memory_mib: memories[i % memories.len()],
            vcpus: vcpus[i % vcpus.len()],
            priority: priorities[i % priorities.len()],
            required_host_labels: vec![],
            anti_affinity_group: (i % 5 != 0).then(|| format!("group-{}", i % 7)),
            avoid_hosts: vec![],
            datastores: vec![],
        })
        .collect();
    let totals = [0, 1, u64::from(u32::MAX), u64::MAX];
    let counts = [0, 1, 64, u32::MAX];
    input.hosts = (0..1200)
        .map(|i| CandidateHost {
            name: format!("host-{i}"),
            total_memory_mib: totals[i % totals.len()],
            free_memory_mib: totals[(i / 4) % totals.len()],
            total_vcpus: counts[i % counts.len()],
            allocated_vcpus: counts[(i / 3) % counts.len()],
            labels: vec![],
            datastores: vec![],
            maintenance: i % 3 == 0,
            anti_affinity_groups: vec![],
        })
        .collect();
    let answer = rt.call(echo, &input).expect("echo answer");
    assert!(answer.assignments.is_empty());
    assert_eq!(answer.unplaced.len(), input.vms.len());
    let compact = CompactInput::from_named(&input);
    for (i, (unplaced, vm)) in answer.unplaced.iter().zip(&compact.vms).enumerate() {
        let priority = match vm.priority {
            RestartPriority::Restart => "restart",
            RestartPriority::BestEffort => "best-effort",
            RestartPriority::Unprotected => "unprotected",
        };
        let host = compact.hosts.get(i).map_or("-".to_string(), |h| {
            format!(
                "{} {} {} {} {}",
                h.total_memory_mib, h.free_memory_mib, h.total_vcpus, h.allocated_vcpus, h.maintenance
            )
        });
        let sent = format!("{} {} {priority} {:?} | {host}", vm.memory_mib, vm.vcpus, vm.anti_affinity_group);
        assert_eq!(unplaced.reason, sent, "{probe}: VM {}", unplaced.vm);
    }
    assert!(compact.vms.iter().any(|vm| vm.anti_affinity_group == Some(6)), "groups past the first arrive too");
}

#[test]
fn a_plugin_of_another_contract_version_is_refused() {
    let err = runtime().load::<Placement>(&plugin("hostile:contract_v0_2")).err().expect("wrong version");
    assert_eq!(
        err.to_string(),
        format!(
            "plugin {} exports halo:policy/placement@0.2.0, this agent speaks 0.1.4; rebuild the plugin against wit/0.1.4",
            plugin("hostile:contract_v0_2").display()
        )
    );
}

#[test]
fn a_plugin_whose_types_differ_from_the_contract_it_claims_is_refused_at_load() {
    // Names and version right, a record with a third field: refused at load (it used to load
    // and then fail every call).
    let err = runtime().load::<Placement>(&plugin("hostile:changed_record")).err().expect("changed record");
    assert!(matches!(err, LoadError::WrongTypes { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("claims contract 0.1.1 but its types differ from it"), "{text}");
    assert!(text.contains("expected record of 2 fields, found 3 fields"), "{text}");
    // An import of another type (the log level with a fifth case).
    let err = runtime().load::<RestartOrder>(&plugin("hostile:changed_log")).err().expect("changed import");
    assert!(matches!(err, LoadError::WrongTypes { .. }), "{err}");
    assert!(err.to_string().contains("expected enum of 4 names, found 5 names"), "{err}");
    // Hot-swapped in, it is refused and the plugin in force stays.
    let slot =
        halo_plugin_runtime::PluginSlot::<Placement>::load(runtime(), &plugin("default:placement")).expect("loads");
    assert!(slot.swap_to(&plugin("hostile:changed_record")).is_err());
    assert_eq!(slot.info().map(|i| i.name.to_string()), Some("halo_plugin_placement.wasm".to_string()));
    let decision = slot.decide(&placement_input());
    assert!(decision.failure().is_none(), "{:?}", decision.decided_by);
}

#[test]
fn the_structural_check_refuses_before_compiling_and_names_the_figure() {
    let started = std::time::Instant::now();
    let loaded = runtime().load::<Placement>(&plugin("default:placement")).map(drop);
    assert!(loaded.is_ok(), "within the default limits: {loaded:?}");
    let limits = halo_plugin_runtime::CodeLimits { nesting: 10, ..Default::default() };
    let strict = Runtime::new(SandboxLimits::default(), None).expect("runtime").code_limits(limits);
    let err = strict.load::<Placement>(&plugin("default:placement")).err().expect("past the limit");
    assert!(matches!(err, LoadError::TooComplex { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("its deepest nesting of blocks is") && text.contains("more than the 10 allowed"), "{text}");
    println!("figure: load and refusal took {:?}", started.elapsed());
}

#[test]
fn files_that_are_not_components_are_refused() {
    let dir = std::env::temp_dir().join(format!("halo-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let cases: [(&str, &[u8]); 3] = [
        ("text.wasm", b"hello, I am not wasm"),
        // A core module (not a component): magic + version 1.
        ("core.wasm", b"\0asm\x01\0\0\0"),
        ("truncated.wasm", b"\0asm\x0d\0\x01\0\x01"),
    ];
    for (name, bytes) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write");
        let err = runtime().load::<Placement>(&path).err().expect("refused");
        assert!(matches!(err, LoadError::NotAComponent { .. }), "{name}: {err}");
    }
    let missing = runtime().load::<Placement>(&dir.join("absent.wasm")).err().expect("refused");
    assert!(matches!(missing, LoadError::Read { .. }), "{missing}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_aot_cache_is_used_and_a_foreign_cwasm_is_never_loaded() {
    let dir = std::env::temp_dir().join(format!("halo-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = Runtime::new(SandboxLimits::default(), Some(&dir)).expect("runtime");
    let first = rt.load::<Placement>(&plugin("default:placement")).expect("compiles");
    assert!(!first.info().from_cache);
    let second = rt.load::<Placement>(&plugin("default:placement")).expect("from cache");
    assert!(second.info().from_cache);
    assert_eq!(rt.call(&second, &placement_input()), rt.call(&first, &placement_input()));
    // A precompiled artifact handed over as a plugin is refused before any deserialization.
    let artifact = std::fs::read_dir(&dir)
        .expect("cache dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("an artifact was written");
    let err = rt.load::<Placement>(&artifact).err().expect("a .cwasm is not a plugin");
    assert!(err.to_string().contains("never a precompiled .cwasm"), "{err}");
    // A cache directory others can write is refused.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let refused = Runtime::new(SandboxLimits::default(), Some(&dir)).err().expect("unsafe cache dir");
    assert!(refused.to_string().contains("writable by group or others"), "{refused}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_fifo_a_device_or_a_directory_is_refused_at_once_not_read() {
    let dir = std::env::temp_dir().join(format!("halo-special-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let fifo = dir.join("plugin.wasm");
    let _ = std::fs::remove_file(&fifo);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let rt = runtime();
    for path in [fifo.as_path(), std::path::Path::new("/dev/zero"), dir.as_path()] {
        let started = std::time::Instant::now();
        let err = match rt.load::<Placement>(path) {
            Ok(_) => panic!("{} loaded", path.display()),
            Err(e) => e,
        };
        assert!(matches!(err, LoadError::Read { .. }), "{}: {err}", path.display());
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{}: refused at once", path.display());
    }
    // The bound holds for a regular file too.
    let big = dir.join("big.wasm");
    std::fs::write(&big, vec![0u8; 4096]).expect("write");
    assert!(matches!(
        halo_plugin_runtime::read_bounded(&big, 1024),
        Err(halo_plugin_runtime::ReadError::TooLarge(4096))
    ));
    assert_eq!(halo_plugin_runtime::read_bounded(&big, 4096).expect("fits").len(), 4096);
    let _ = std::fs::remove_dir_all(&dir);
}
