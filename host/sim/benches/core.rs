//! Benchmarks of the HA core and the simulator (issue 3). They print figures; they assert
//! nothing about time. `cargo xtask bench` runs them; the figures go to docs/performance.md.
//!
//! - the master processing heartbeats of 1,000 hosts on 2 networks at 1 Hz (each carrying
//!   its VM list and 999 acks) plus 1,000 datastore records a second: CPU per simulated second;
//! - the failover plan and the maximum tolerable failures for 64 hosts / 8,000 VMs and
//!   256 hosts / 25,000 VMs (built-in best-fit placement);
//! - the failover latency (host crash → VM running elsewhere) with the default timeouts,
//!   over many seeded single-crash runs;
//! - random schedules per second (mixed faults, 3–16 hosts).

#![allow(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use halo_core::capacity::{self, Locations};
use halo_core::{BuiltinPolicies, ClusterConfig, DatastoreRecord, Heartbeat, Input, Node, VmReport};
use halo_sim::scenario::{cluster, random_case};
use halo_sim::{Fault, FaultKind, Rng, Schedule, Sim, SimOptions, percentiles};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only scale` (or heartbeats, plan, failover, schedules): one part.
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).map(String::as_str);
    let run = |part: &str| only.is_none_or(|o| o == part);
    if run("scale") {
        for hosts in [64, 256, 1_000] {
            scale(hosts, if quick { 2 } else { 5 });
        }
    }
    if run("heartbeats") {
        heartbeats(if quick { 3 } else { 10 });
    }
    if run("plan") {
        plan(64, 8_000, 512 * 1024, 256);
        plan(256, 25_000, 384 * 1024, 192);
    }
    if run("failover") {
        failover_latency(if quick { 20 } else { 200 });
    }
    if run("schedules") {
        schedules(if quick { 20 } else { 200 });
    }
}

/// `peer`'s heartbeat number `seq` in a cluster of `names` whose master is the first: its VMs,
/// and (as today) an ack for every other host.
fn follower_heartbeat(
    names: &[String],
    peer: &String,
    seq: u64,
    per_host: &BTreeMap<&str, Vec<VmReport>>,
) -> Heartbeat {
    Heartbeat {
        from: peer.clone(),
        seq,
        incarnation: 1,
        master: Some((names[0].clone(), 1)),
        datastores_reachable: 1,
        vms: per_host.get(peer.as_str()).cloned().unwrap_or_default(),
        acks: names.iter().enumerate().filter(|(_, n)| *n != peer).map(|(i, _)| (i as u32, seq)).collect(),
        ..Heartbeat::default()
    }
}

/// VMs spread over the hosts in order (VM i on host i mod n).
fn spread(config: &ClusterConfig) -> Locations {
    let n = config.hosts.len();
    config.vms.iter().enumerate().map(|(i, vm)| (vm.name.clone(), config.hosts[i % n].name.clone())).collect()
}

fn heartbeats(seconds: u64) {
    let hosts = 1_000;
    let config = cluster(hosts, hosts * 4);
    let locations = spread(&config);
    let mut per_host: BTreeMap<&str, Vec<VmReport>> = BTreeMap::new();
    for (vm, host) in &locations {
        per_host.entry(host).or_default().push(VmReport { vm: vm.clone(), generation: 1 });
    }
    let names: Vec<String> = config.hosts.iter().map(|h| h.name.clone()).collect();
    let mut node = Node::new(&names[0], config.clone(), 0);
    let mut policies = BuiltinPolicies;
    // Warm up: elect host-1 (it has the smallest name) and settle.
    let mut inputs_total = 0u64;
    let mut busy = std::time::Duration::ZERO;
    let total_seconds = seconds + 5;
    for second in 0..total_seconds {
        let now = second * 1_000;
        // What the transport would have decoded this second (not timed).
        let mut arrived = Vec::with_capacity(2 * names.len());
        for peer in &names[1..] {
            let heartbeat = follower_heartbeat(&names, peer, second + 1, &per_host);
            for network in ["A", "B"] {
                arrived.push(Input::Heartbeat {
                    network: network.into(),
                    heartbeat: std::sync::Arc::new(heartbeat.clone()),
                });
            }
        }
        let records: Vec<DatastoreRecord> = names
            .iter()
            .map(|h| DatastoreRecord { host: h.clone(), counter: second + 1, isolated: false, stopped: vec![] })
            .collect();
        let started = Instant::now();
        // Spread over the second as they would arrive.
        let count = arrived.len() as u64;
        for (i, input) in arrived.into_iter().enumerate() {
            node.handle(now + i as u64 * 1_000 / count, input, &mut policies);
            inputs_total += 1;
        }
        node.handle(now + 999, Input::DatastoreWritten { datastore: "ds1".into(), ok: true }, &mut policies);
        node.handle(now + 999, Input::DatastoreRead { datastore: "ds1".into(), records: Ok(records) }, &mut policies);
        for tick in 0..10 {
            node.handle(now + tick * 100, Input::Tick, &mut policies);
        }
        if second >= 5 {
            busy += started.elapsed();
        }
    }
    assert!(node.is_master(), "host-1 should be master");
    let per_second = busy.as_secs_f64() / seconds as f64;
    println!(
        "heartbeats: master of {hosts} hosts x 2 networks at 1 Hz (each with {} acks): {:.1} ms CPU per simulated second ({:.1}% of one core; {} inputs, decoding not included)",
        hosts - 1,
        per_second * 1e3,
        per_second * 100.0,
        inputs_total
    );
}

/// Issue 21: what one host sends and what the master spends, at `hosts` hosts with the
/// default timeouts (a heartbeat every 250 ms on 2 networks, a datastore record every 250 ms),
/// 4 VMs a host. Every heartbeat is encoded and authenticated with the real wire codec
/// (`halo-net`); the master's figure is decoding (HMAC check) plus the core, per second.
fn scale(hosts: usize, seconds: u64) {
    let config = cluster(hosts, hosts * 4);
    let t = config.timeouts;
    let names: Vec<String> = config.hosts.iter().map(|h| h.name.clone()).collect();
    let locations = spread(&config);
    let mut per_host: BTreeMap<&str, Vec<VmReport>> = BTreeMap::new();
    for (vm, host) in &locations {
        per_host.entry(host).or_default().push(VmReport { vm: vm.clone(), generation: 1 });
    }
    let membership = halo_net::Membership::new(names.clone());
    let key = halo_net::ClusterKey::new(&[7; 32]).expect("a 32-byte key");
    let networks = config.networks.len() as u64;
    let per_second = 1_000 / t.heartbeat_interval_ms;
    let heartbeat_of = |peer: &String, seq: u64| follower_heartbeat(&names, peer, seq, &per_host);
    let packet = halo_net::codec::encode(&heartbeat_of(&names[1], 1), "bench", &membership, &key).expect("encodes");
    // Every host sends its heartbeat to every other host on every network — one packet per
    // peer, or one to the network's broadcast address (`broadcast` in halo.toml).
    let packets_per_host = (hosts as u64 - 1) * networks * per_second;
    let bytes_per_host = packets_per_host * packet.len() as u64;
    let broadcast_packets = networks * per_second;
    let broadcast_bytes = broadcast_packets * packet.len() as u64;

    let mut node = Node::new(&names[0], config.clone(), 0);
    let mut policies = BuiltinPolicies;
    let mut busy = std::time::Duration::ZERO;
    let warm_up = 3;
    let intervals = (seconds + warm_up) * per_second;
    let mut received = 0u64;
    let mut next_tick: u64 = 0;
    // As the transport decodes: the second network's copy of a heartbeat is not parsed again.
    let copies = halo_net::codec::CopyCache::default();
    for interval in 0..intervals {
        let now = interval * t.heartbeat_interval_ms;
        let seq = interval + 1;
        // What arrives in one interval, encoded by its senders (not timed).
        let mut packets = Vec::with_capacity(2 * hosts);
        for peer in &names[1..] {
            let bytes = halo_net::codec::encode(&heartbeat_of(peer, seq), "bench", &membership, &key).expect("encodes");
            for network in &config.networks {
                packets.push((network.clone(), bytes.clone()));
            }
        }
        let records: Vec<DatastoreRecord> = names
            .iter()
            .map(|h| DatastoreRecord { host: h.clone(), counter: seq, isolated: false, stopped: vec![] })
            .collect();
        let started = Instant::now();
        let count = packets.len() as u64;
        // The agent ticks every 100 ms, between the heartbeats.
        let mut tick = |node: &mut Node, at: u64, policies: &mut BuiltinPolicies| {
            while next_tick <= at {
                node.handle(next_tick, Input::Tick, policies);
                next_tick += 100;
            }
        };
        for (i, (network, bytes)) in packets.into_iter().enumerate() {
            let decoded = copies.decode(&bytes, "bench", &membership, &key).expect("decodes");
            let input = Input::Heartbeat { network: network.into(), heartbeat: decoded.heartbeat };
            let at = now + i as u64 * t.heartbeat_interval_ms / count;
            tick(&mut node, at, &mut policies);
            node.handle(at, input, &mut policies);
            received += u64::from(interval >= warm_up * per_second);
        }
        let end = now + t.heartbeat_interval_ms - 1;
        node.handle(end, Input::DatastoreWritten { datastore: "ds1".into(), ok: true }, &mut policies);
        node.handle(end, Input::DatastoreRead { datastore: "ds1".into(), records: Ok(records) }, &mut policies);
        tick(&mut node, end, &mut policies);
        if interval >= warm_up * per_second {
            busy += started.elapsed();
        }
    }
    assert!(node.is_master(), "host-1 should be master");
    let cpu = busy.as_secs_f64() / seconds as f64;
    println!(
        "scale, {hosts} hosts (all-to-all heartbeats, {} ms interval, 2 networks): a host sends {packets_per_host} packets/s of {} bytes = {:.1} KB/s one per peer, {broadcast_packets} packets/s = {:.1} KB/s by broadcast; the master receives {} heartbeats/s and spends {:.1} ms CPU per second on them and the datastore records ({:.1}% of one core, decoding included)",
        t.heartbeat_interval_ms,
        packet.len(),
        bytes_per_host as f64 / 1e3,
        broadcast_bytes as f64 / 1e3,
        received / seconds,
        cpu * 1e3,
        cpu * 100.0
    );
}

fn plan(hosts: usize, vms: usize, memory_mib: u64, vcpus: u32) {
    let mut config = cluster(hosts, vms);
    for h in &mut config.hosts {
        h.memory_mib = memory_mib;
        h.vcpus = vcpus;
    }
    let locations = spread(&config);
    let available: BTreeSet<String> = config.hosts.iter().map(|h| h.name.clone()).collect();
    let maintenance = BTreeSet::new();
    let mut runs = Vec::new();
    let mut tolerates = 0;
    for _ in 0..3 {
        let started = Instant::now();
        let plan = capacity::failover_plan(&config, &locations, &available, &maintenance, &mut BuiltinPolicies);
        runs.push(started.elapsed().as_secs_f64());
        tolerates = plan.tolerates;
    }
    runs.sort_by(f64::total_cmp);
    println!(
        "failover plan + max tolerable failures: {hosts} hosts / {vms} VMs ({} GiB hosts): median {:.0} ms of 3 (tolerates {tolerates})",
        memory_mib / 1024,
        runs[1] * 1e3
    );
}

fn failover_latency(runs: u64) {
    let mut latencies = Vec::new();
    let mut unclean = 0;
    let started = Instant::now();
    for seed in 0..runs {
        let mut rng = Rng::new(seed);
        let hosts = 4 + rng.below(5) as usize;
        let config = cluster(hosts, hosts * 4);
        let victim = format!("host-{}", 1 + rng.below(hosts as u64));
        let at = 10_000 + rng.below(5_000);
        let fault = Fault { at, duration: 1_000_000, kind: FaultKind::HostCrash { host: victim } };
        let outcome = Sim::new(
            config,
            Schedule { faults: vec![fault], ..Schedule::default() },
            SimOptions::new(seed, 60_000),
            &mut BuiltinPolicies,
        )
        .run();
        if !outcome.clean() {
            unclean += 1;
        }
        latencies.extend(outcome.failover_latencies);
    }
    let p = percentiles(&latencies).expect("restarts happened");
    println!(
        "failover latency (simulated, default timeouts: dead-time {} s), host crash -> VM running elsewhere (restart waves by order), {runs} runs of 4-8 hosts: {} restarts, p50 {:.2} s, p95 {:.2} s, max {:.2} s ({unclean} runs broke an invariant; {:.1} s wall)",
        halo_core::config::Timeouts::default().dead_time_ms as f64 / 1e3,
        p.count,
        p.p50 as f64 / 1e3,
        p.p95 as f64 / 1e3,
        p.max as f64 / 1e3,
        started.elapsed().as_secs_f64()
    );
}

fn schedules(count: u64) {
    let families: Vec<&str> = FaultKind::FAMILIES.to_vec();
    let started = Instant::now();
    let mut steps = 0;
    for seed in 0..count {
        let (config, schedule) = random_case(seed, None, None, &families, 200_000);
        steps += Sim::new(config, schedule, SimOptions::new(seed, 200_000), &mut BuiltinPolicies).run().steps;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "random schedules (200 s simulated, 3-16 hosts, mixed faults): {count} in {secs:.1} s = {:.1} schedules/s, {:.0} k events/s",
        count as f64 / secs,
        steps as f64 / secs / 1e3
    );
}
