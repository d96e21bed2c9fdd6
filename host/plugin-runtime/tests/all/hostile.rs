//! Every hostile plugin yields a clear failure and the built-in policy's answer; the
//! process survives and the next call works.

use halo_plugin_runtime::{DecidedBy, FailureKind, Isolation, Placement, PluginSlot, PolicyWorld, RestartOrder};

use crate::{isolation_input, placement_input, plugin, restart_input, runtime};

/// Loads `name` for `W`, decides on `input`, and checks the fallback answered with `kind`.
fn falls_back<W: PolicyWorld>(name: &str, input: &W::Input, kind: FailureKind, detail: &str) -> W::Answer
where
    W::Answer: PartialEq,
{
    let slot = PluginSlot::<W>::load(runtime(), &plugin(&format!("hostile:{name}"))).expect("hostile plugin loads");
    let decision = slot.decide(input);
    let failure =
        decision.failure().unwrap_or_else(|| panic!("{name}: expected a fallback, got {:?}", decision.decided_by));
    assert_eq!(failure.kind, kind, "{name}: {failure}");
    assert!(failure.detail.contains(detail), "{name}: `{}` should mention `{detail}`", failure.detail);
    assert!(failure.to_string().contains(name), "the message names the plugin: {failure}");
    // What reaches logs, events and terminals: a bounded prefix on one line.
    let detail = &failure.detail;
    assert!(detail.chars().count() <= halo_plugin_runtime::runtime::MAX_FAILURE_DETAIL, "{name}: {}", detail.len());
    assert!(!detail.chars().any(char::is_control), "{name}: {detail:?}");
    let (expected, _) = W::fallback(input);
    assert_eq!(decision.answer, expected, "{name}: the built-in policy's answer is used");
    assert_eq!(W::validate(input, &decision.answer), Ok(()));
    // The slot keeps working: a second call fails the same way, not worse.
    assert_eq!(slot.decide(input).failure().map(|f| f.kind), Some(kind));
    let stats = slot.stats();
    assert_eq!((stats.calls, stats.fallbacks, stats.plugin_answers), (2, 2, 0));
    assert_eq!(stats.failures.iter().find(|(k, _)| *k == kind).map(|(_, n)| *n), Some(2));
    decision.answer
}

#[test]
fn infinite_loop_is_stopped_by_the_cpu_budget() {
    let started = std::time::Instant::now();
    falls_back::<Placement>("infinite_loop", &placement_input(), FailureKind::Timeout, "CPU budget");
    // Two calls of a 50 ms budget: far below a second even on a loaded machine.
    assert!(started.elapsed().as_secs() < 10, "the budget did not stop the loop promptly");
}

#[test]
fn a_one_gib_allocation_hits_the_memory_cap() {
    falls_back::<Placement>("huge_allocation", &placement_input(), FailureKind::MemoryExhausted, "64 MiB");
}

#[test]
fn a_panic_is_a_trap() {
    falls_back::<Placement>("panics", &placement_input(), FailureKind::Trap, "halo denies");
}

#[test]
fn reading_the_clock_is_denied() {
    falls_back::<Placement>("reads_clock", &placement_input(), FailureKind::Trap, "wasi:clocks/wall-clock");
}

#[test]
fn a_stack_overflow_is_a_trap() {
    let _ = falls_back::<RestartOrder>("stack_overflow", &restart_input(), FailureKind::Trap, "stack overflow");
}

#[test]
fn unknown_hosts_are_refused() {
    falls_back::<Placement>(
        "unknown_host",
        &placement_input(),
        FailureKind::InvalidAnswer,
        "unknown host `no-such-host`",
    );
}

#[test]
fn a_vm_placed_twice_is_refused() {
    falls_back::<Placement>("places_twice", &placement_input(), FailureKind::InvalidAnswer, "entries for 3 VMs");
}

#[test]
fn exceeding_capacity_is_refused() {
    let mut input = placement_input();
    input.hosts.rotate_right(1); // the failed host first
    falls_back::<Placement>("exceeds_capacity", &input, FailureKind::InvalidAnswer, "is to be avoided");
    input.hosts.insert(0, crate::host("tiny", 4000));
    falls_back::<Placement>("exceeds_capacity", &input, FailureKind::InvalidAnswer, "short of");
}

#[test]
fn compact_answers_with_bad_positions_are_refused_and_named() {
    let input = |mode: &str| {
        let mut input = placement_input();
        input.settings = vec![halo_policy::Setting::new("mode", mode)];
        input
    };
    // placement_input has hosts h1, h2, h3, failed (4) and VMs a, b, c.
    falls_back::<Placement>(
        "compact_bad_positions",
        &input("unknown-host"),
        FailureKind::InvalidAnswer,
        "puts VM `a` on unknown host `#4`",
    );
    falls_back::<Placement>(
        "compact_bad_positions",
        &input("twice"),
        FailureKind::InvalidAnswer,
        "places VM `a` twice",
    );
    falls_back::<Placement>(
        "compact_bad_positions",
        &input("missing"),
        FailureKind::InvalidAnswer,
        "says nothing about VM `c`",
    );
    falls_back::<Placement>(
        "compact_bad_positions",
        &input("million"),
        FailureKind::InvalidAnswer,
        "has 1000000 entries for 3 VMs",
    );
}

#[test]
fn columnar_assignments_of_different_lengths_are_refused() {
    // Three VMs in `assigned-vms`, two hosts in `assigned-hosts`: no pairing is guessed.
    falls_back::<Placement>(
        "columnar_uneven",
        &placement_input(),
        FailureKind::InvalidAnswer,
        "assigns 3 VMs to 2 hosts: `assigned-vms` and `assigned-hosts` must be equally long",
    );
}

#[test]
fn a_million_entries_are_refused_without_harm() {
    // 16 MiB of records: refused by the transfer limit before anything is copied.
    falls_back::<Isolation>("million_entries", &isolation_input(), FailureKind::Trap, "more than 16 MiB");
}

#[test]
fn waves_missing_a_vm_are_refused() {
    let _ = falls_back::<RestartOrder>("omits_vms", &restart_input(), FailureKind::InvalidAnswer, "out of every wave");
}

#[test]
fn a_plugin_refusing_to_decide_falls_back() {
    falls_back::<Placement>("refuses", &placement_input(), FailureKind::Refused, "Tuesdays");
}

#[test]
fn a_log_flood_is_capped_and_the_answer_still_checked() {
    let slot = PluginSlot::<Placement>::load(runtime(), &plugin("hostile:log_flood")).expect("loads");
    let decision = slot.decide(&placement_input());
    // It declines every VM: a valid answer, so it stands.
    assert_eq!(decision.decided_by, DecidedBy::Plugin("log_flood.wasm".into()));
    assert_eq!(decision.answer.unplaced.len(), 3);
}

#[test]
fn endless_log_loops_are_stopped_by_the_budget_host_calls_included() {
    // 1 MiB or 1 byte per call: the plugin's own instructions between calls are few; what
    // stops it is the fuel every host call is charged (or, on a busy machine, the wall-clock
    // ceiling of budget + 50 ms, whichever comes first: both say "CPU budget").
    for name in ["log_forever", "log_tiny_forever"] {
        let started = std::time::Instant::now();
        falls_back::<Placement>(name, &placement_input(), FailureKind::Timeout, "CPU budget");
        let took = started.elapsed();
        println!("figure: two calls of {name} stopped after {took:?}");
        assert!(took < std::time::Duration::from_secs(2), "{name}: stopped near its budget: {took:?}");
    }
}

#[test]
fn host_calls_are_charged_to_the_budget() {
    use halo_plugin_runtime::sandbox::{HOST_BYTE_FUEL, HOST_CALL_FUEL};
    let runtime = runtime();
    let plugin = runtime.load::<Placement>(&plugin("hostile:log_flood")).expect("loads");
    let (answer, usage) = runtime.call_measured(&plugin, &placement_input());
    assert!(answer.is_ok(), "{answer:?}");
    // 20,000 calls of 4,000 bytes; the first 64 are kept (read whole), the rest dropped unread.
    assert_eq!(usage.host.calls, 20_000);
    assert_eq!(usage.log_dropped, 20_000 - 64);
    assert_eq!(usage.host.fuel, 20_000 * HOST_CALL_FUEL + 64 * 4_000 * HOST_BYTE_FUEL);
    let fuel = usage.fuel.expect("a fuel budget");
    assert!(fuel > usage.host.fuel, "the charge is part of the fuel used: {fuel} vs {}", usage.host.fuel);
    // The charge covers the time the host really spent (measured), with room to spare.
    let charged =
        std::time::Duration::from_nanos(usage.host.fuel / (halo_plugin_runtime::sandbox::FUEL_PER_MS / 1_000_000));
    println!("figure: log_flood host time {:?}, charged as {charged:?} of budget", usage.host.time);
}

#[test]
fn more_than_the_transfer_limit_at_once_is_refused_before_it_is_copied() {
    // One 20 MiB log message.
    falls_back::<Placement>("log_huge_message", &placement_input(), FailureKind::Trap, "more than 16 MiB");
    // A well-formed answer of 18 MiB of reasons.
    let mut input = placement_input();
    input.settings = vec![halo_policy::Setting::new("mode", "huge")];
    falls_back::<Placement>("huge_reasons", &input, FailureKind::Trap, "more than 16 MiB");
}

#[test]
fn reasons_in_an_answer_are_cut_and_kept_on_one_line() {
    let slot = PluginSlot::<Placement>::load(runtime(), &plugin("hostile:huge_reasons")).expect("loads");
    let decision = slot.decide(&placement_input());
    assert_eq!(decision.decided_by, DecidedBy::Plugin("huge_reasons.wasm".into()));
    assert_eq!(decision.answer.unplaced.len(), 3);
    for unplaced in &decision.answer.unplaced {
        let reason = &unplaced.reason;
        assert!(reason.chars().count() <= halo_plugin_runtime::MAX_REASON_CHARS, "{}", reason.len());
        assert!(!reason.chars().any(char::is_control), "{reason:?}");
        assert!(reason.starts_with("declined\\n2026"), "{reason}");
    }
}

#[test]
fn no_state_survives_from_one_decision_to_the_next() {
    // The pool keeps dirtied pages resident and resets them (PAGEMAP_SCAN); a plugin that
    // counts its calls in a static must still see every call as its first.
    let slot = PluginSlot::<Placement>::load(runtime(), &plugin("hostile:remembers")).expect("loads");
    for call in 0..50 {
        let decision = slot.decide(&placement_input());
        assert_eq!(decision.decided_by, DecidedBy::Plugin("remembers.wasm".into()), "call {call}");
    }
}

#[test]
fn two_memories_share_one_memory_cap() {
    // A component that instantiates one core module twice; each instance has its own linear
    // memory and grows it by 40 MiB when it starts (trapping if the grow is refused): each
    // alone fits the 64 MiB cap, both together do not. Instantiated in a call's store, as
    // every decision is. (The pooling allocator already refuses a module with two memories.)
    use wasm_encoder::{
        BlockType, CodeSection, Component, Function, FunctionSection, InstanceSection, Instruction, MemorySection,
        MemoryType, Module, ModuleSection, StartSection, TypeSection,
    };
    let mut types = TypeSection::new();
    types.ty().function([], []);
    let mut functions = FunctionSection::new();
    functions.function(0);
    let mut memories = MemorySection::new();
    memories.memory(MemoryType { minimum: 1, maximum: None, memory64: false, shared: false, page_size_log2: None });
    let mut body = Function::new([]);
    body.instruction(&Instruction::I32Const(640)); // 40 MiB of 64 KiB pages
    body.instruction(&Instruction::MemoryGrow(0));
    body.instruction(&Instruction::I32Const(-1));
    body.instruction(&Instruction::I32Eq);
    body.instruction(&Instruction::If(BlockType::Empty));
    body.instruction(&Instruction::Unreachable);
    body.instruction(&Instruction::End);
    body.instruction(&Instruction::End);
    let mut code = CodeSection::new();
    code.function(&body);
    let mut module = Module::new();
    module
        .section(&types)
        .section(&functions)
        .section(&memories)
        .section(&StartSection { function_index: 0 })
        .section(&code);
    let mut instances = InstanceSection::new();
    for _ in 0..2 {
        instances.instantiate(0, Vec::<(&str, wasm_encoder::ModuleArg)>::new());
    }
    let mut component = Component::new();
    component.section(&ModuleSection(&module)).section(&instances);
    let bytes = component.finish();

    let sandbox =
        halo_plugin_runtime::sandbox::Sandbox::new(halo_plugin_runtime::SandboxLimits::default()).expect("sandbox");
    let component = wasmtime::component::Component::new(sandbox.engine(), &bytes).expect("compiles");
    let linker = wasmtime::component::Linker::new(sandbox.engine());
    let mut store = sandbox.store("two-memories.wasm".into()).expect("store");
    let Err(error) = linker.instantiate(&mut store, &component) else { panic!("the second grow must be refused") };
    let (kind, detail) = sandbox.classify(store.data(), &error);
    assert_eq!(kind, FailureKind::MemoryExhausted, "{detail}");
    assert!(detail.contains("memory cap of 64 MiB"), "{detail}");
    // One memory of 40 MiB alone is fine: the same module with the cap raised to 128 MiB.
    let roomy = halo_plugin_runtime::sandbox::Sandbox::new(halo_plugin_runtime::SandboxLimits {
        memory_bytes: 128 << 20,
        ..Default::default()
    })
    .expect("sandbox");
    let component = wasmtime::component::Component::new(roomy.engine(), &bytes).expect("compiles");
    let mut store = roomy.store("two-memories.wasm".into()).expect("store");
    assert!(wasmtime::component::Linker::new(roomy.engine()).instantiate(&mut store, &component).is_ok());
}
