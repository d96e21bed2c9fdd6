//! The liveness path under load (issue 14): heartbeats of one host, sent by its liveness path on
//! real UDP (loopback) and timed where a peer receives them, while
//!
//! - the "agent loop" calls hostile placement plugins back to back, in turn (issue 15's
//!   classes: an endless loop, endless `log` calls of 1 MiB and of 1 byte, a 20 MiB log
//!   message, an 18 MiB answer, a 1 GiB allocation), each call running to its CPU budget of
//!   1.9 s or its limit, publishing a heartbeat and a step after each, exactly as the agent
//!   loop does, and
//! - every 3 s a new component replaces the plugin file and is compiled as the agent's reload
//!   does (on a blocking thread, in halo's compile worker when `target/release/halo` is
//!   built): in turn a 20 MB component slow to compile (`halo_lab::slow_plugin`), blocks
//!   nested 50,000 deep (refused before compiling) and 200 functions of loops nested 900 deep
//!   (stopped at a 5 s compile deadline).
//!
//! Both cores are busy the whole time. Goal: p99 of the interval between heartbeats at the
//! peer ≤ 1.5 × the configured 250 ms. Prints the figures; `cargo xtask bench` runs it.
//! Bounded: 40 s of load.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use halo_agent::liveness::{Liveness, LivenessConfig};
use halo_core::Heartbeat;
use halo_net::{ClusterKey, HeartbeatTransport, Membership, NetworkEndpoints, TransportConfig};
use halo_plugin_runtime::compile::HALO_WORKER_ARGS;
use halo_plugin_runtime::{
    ChildCompiler, CompileLimits, CompilePlace, CpuBudget, Placement, PluginSlot, Runtime, SandboxLimits,
};

const INTERVAL: Duration = Duration::from_millis(250);
const LOAD: Duration = Duration::from_secs(40);
const BUDGET_MS: u64 = 1_900;
const COMPONENT_BYTES: usize = 20 << 20;
/// Of it, code: about 2.5 s of compile on one core here.
const COMPONENT_CODE: usize = 256 << 10;
const SWAP_EVERY: Duration = Duration::from_secs(3);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn transport(me: &str, addresses: &BTreeMap<&str, SocketAddr>) -> TransportConfig {
    TransportConfig {
        cluster: "bench".into(),
        me: me.into(),
        membership: Membership::new(addresses.keys().map(|h| h.to_string()).collect()),
        key: ClusterKey::new(b"a bench key that is 32 bytes lon").expect("32 bytes"),
        networks: vec![NetworkEndpoints {
            name: "A".into(),
            bind: addresses[me],
            peers: addresses.iter().filter(|(h, _)| **h != me).map(|(h, a)| (h.to_string(), *a)).collect(),
            broadcast: None,
            interface: None,
        }],
    }
}

fn body(seq: u64) -> Heartbeat {
    Heartbeat {
        from: "host-1".into(),
        seq,
        incarnation: 1,
        master: None,
        datastores_reachable: 1,
        datastores_lost: vec![],
        health: Default::default(),
        vms: vec![],
        operator_stopped: vec![],
        acks: vec![],
        maintenance: vec![],
        ha_disabled: false,
        ha_off: false,
        unarmed: vec![],
        stopped: vec![],
        vanished: vec![],
        claims: vec![],
        paused: vec![],
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let hostile = root().join("target/wasm32-wasip2/plugin/examples/infinite_loop.wasm");
    if !hostile.exists() {
        eprintln!("{} is missing: run `cargo xtask plugins` first", hostile.display());
        std::process::exit(2);
    }
    let input: halo_policy::PlacementInput = serde_json::from_str(
        &std::fs::read_to_string(root().join("examples/inputs/placement.json")).expect("example input"),
    )
    .expect("the example placement input");
    let scratch = std::env::temp_dir().join(format!("halo-liveness-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let plugin_file = scratch.join("placement.wasm");
    std::fs::copy(&hostile, &plugin_file).expect("the plugin file");

    let limits = SandboxLimits { cpu: CpuBudget::Fuel { millis: BUDGET_MS }, ..SandboxLimits::default() };
    let halo = root().join("target/release/halo");
    let place = if halo.is_file() {
        println!("compiling in halo's compile worker ({}), deadline 5 s", halo.display());
        CompilePlace::Child(ChildCompiler {
            program: halo,
            args: HALO_WORKER_ARGS.iter().map(Into::into).collect(),
            limits: CompileLimits { deadline: Duration::from_secs(5), ..CompileLimits::default() },
        })
    } else {
        println!("target/release/halo is not built: compiling in this process (no compile deadline)");
        CompilePlace::InProcess
    };
    let runtime = Arc::new(Runtime::new(limits, None).expect("runtime").compile_at(place));
    let slot = Arc::new(PluginSlot::<Placement>::load(Arc::clone(&runtime), &plugin_file).expect("the plugin loads"));
    // The hostile plugins the loop takes turns with (the slot above is the one hot-swapped).
    let hostile_slots: Vec<PluginSlot<Placement>> =
        ["log_forever", "log_tiny_forever", "log_huge_message", "huge_reasons", "huge_allocation"]
            .iter()
            .map(|name| {
                let file = root().join(format!("target/wasm32-wasip2/plugin/examples/{name}.wasm"));
                PluginSlot::<Placement>::load(Arc::clone(&runtime), &file).expect("a hostile plugin loads")
            })
            .collect();
    let mut huge = input.clone();
    huge.settings = vec![halo_policy::Setting::new("mode", "huge")];

    let addresses: BTreeMap<&str, SocketAddr> = ["host-1", "host-2"]
        .into_iter()
        .map(|h| (h, UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("a loopback port")))
        .collect();
    let (heartbeats_tx, mut heartbeats_rx) = tokio::sync::mpsc::channel(4096);
    let (inputs_tx, _inputs_rx) = tokio::sync::mpsc::channel(1024);
    let liveness = Arc::new(
        Liveness::start(
            LivenessConfig {
                transport: transport("host-1", &addresses),
                heartbeat_interval: INTERVAL,
                datastore_interval: INTERVAL,
                fence_timeout: Duration::from_millis(2_000),
                stall_gap: 2 * INTERVAL,
                judge_grace: 2 * INTERVAL,
                datastores: vec![],
                local_libvirt: "test:///default".into(),
                realtime_priority: 10,
            },
            heartbeats_tx,
            inputs_tx,
        )
        .expect("the liveness path starts"),
    );
    liveness.publish(|s| {
        s.heartbeat = Some(body(1));
        s.hosts = 2;
    });
    liveness.arm(None);

    let stop = Arc::new(AtomicBool::new(false));
    // The agent loop: one decision after another, each to its budget.
    let decisions = Arc::new(AtomicU64::new(0));
    let agent_loop = {
        let (slot, liveness, stop, decisions) =
            (Arc::clone(&slot), Arc::clone(&liveness), Arc::clone(&stop), Arc::clone(&decisions));
        std::thread::spawn(move || {
            let mut seq = 1;
            let mut longest = Duration::ZERO;
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let turn = seq as usize % (hostile_slots.len() + 1);
                let decision = match turn.checked_sub(1).map(|i| &hostile_slots[i]) {
                    None => slot.decide(&input),
                    Some(hostile) => hostile.decide(&huge),
                };
                longest = longest.max(started.elapsed());
                assert!(decision.failure().is_some(), "every hostile plugin is stopped, the built-in policy answers");
                seq += 1;
                liveness.publish(|s| s.heartbeat = Some(body(seq)));
                liveness.progressed();
                decisions.fetch_add(1, Ordering::Relaxed);
            }
            longest
        })
    };
    // The hot swaps: a new 20 MB component every 3 s, compiled on a thread of its own.
    let swapper = {
        let (slot, stop, plugin_file) = (Arc::clone(&slot), Arc::clone(&stop), plugin_file.clone());
        std::thread::spawn(move || {
            let compiling = Arc::new(AtomicBool::new(false));
            let compiles: Arc<std::sync::Mutex<Vec<Duration>>> = Arc::default();
            let mut salt = 0;
            let mut next = Instant::now() + Duration::from_secs(1);
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
                if Instant::now() < next || compiling.swap(true, Ordering::SeqCst) {
                    continue;
                }
                next = Instant::now() + SWAP_EVERY;
                salt += 1;
                let fresh = plugin_file.with_extension("new");
                let component = match salt % 3 {
                    1 => halo_lab::slow_plugin::component(COMPONENT_BYTES, COMPONENT_CODE, salt),
                    2 => halo_lab::compile_bomb::nested_blocks(50_000),
                    _ => halo_lab::compile_bomb::nested_loops(200, 900, salt as i32),
                };
                std::fs::write(&fresh, component).expect("write");
                std::fs::rename(&fresh, &plugin_file).expect("replace the plugin file");
                let (slot, compiling, compiles) = (Arc::clone(&slot), Arc::clone(&compiling), Arc::clone(&compiles));
                std::thread::spawn(move || {
                    let started = Instant::now();
                    let refused = matches!(slot.reload_if_changed(), Some(Err(_)));
                    assert!(refused, "a component that is not a placement plugin, or a compile bomb, is refused");
                    compiles.lock().expect("compiles").push(started.elapsed());
                    compiling.store(false, Ordering::SeqCst);
                });
            }
            while compiling.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
            compiles.lock().expect("compiles").clone()
        })
    };

    // host-2 receives and times host-1's heartbeats.
    let receiver = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let arrivals: Vec<Instant> = receiver.block_on(async {
        let (_peer, mut heard) = HeartbeatTransport::bind(transport("host-2", &addresses)).expect("host-2 binds");
        let mut arrivals = Vec::new();
        let until = tokio::time::Instant::now() + LOAD;
        loop {
            tokio::select! {
                Some(_) = heard.recv() => arrivals.push(Instant::now()),
                () = tokio::time::sleep_until(until) => break,
            }
        }
        arrivals
    });
    stop.store(true, Ordering::SeqCst);
    while heartbeats_rx.try_recv().is_ok() {}
    let longest_decision = agent_loop.join().expect("the agent loop");
    let compiles = swapper.join().expect("the swapper");

    let mut intervals: Vec<u64> = arrivals.windows(2).map(|w| w[1].duration_since(w[0]).as_millis() as u64).collect();
    intervals.sort_unstable();
    let (p50, p99, max) =
        (percentile(&intervals, 0.5), percentile(&intervals, 0.99), intervals.last().copied().unwrap_or(0));
    let goal = INTERVAL.as_millis() as u64 * 3 / 2;
    let stats = liveness.stats();
    println!(
        "liveness under load ({} s): {} heartbeats received, interval (configured {} ms) p50 {p50} ms, p99 {p99} ms, max {max} ms — goal p99 <= {goal} ms: {}",
        LOAD.as_secs(),
        arrivals.len(),
        INTERVAL.as_millis(),
        if p99 <= goal { "met" } else { "NOT met" }
    );
    println!(
        "  meanwhile: {} placement decisions to their {BUDGET_MS} ms budget (longest {:.2} s), {} heartbeats re-sent while the loop was busy, {} compiles or refusals (20 MiB component, nesting bomb, slow bomb in turn: {:?}), watchdog starved {} time(s)",
        decisions.load(Ordering::Relaxed),
        longest_decision.as_secs_f64(),
        stats.keepalives.load(Ordering::Relaxed),
        compiles.len(),
        compiles.iter().map(|d| format!("{:.1} s", d.as_secs_f64())).collect::<Vec<_>>(),
        stats.starved.load(Ordering::Relaxed),
    );
    let _ = std::fs::remove_dir_all(&scratch);
    if let Ok(liveness) = Arc::try_unwrap(liveness) {
        liveness.stop(vec![]);
    }
}
