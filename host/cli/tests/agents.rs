//! Real agents on the lab (issue 5's scenarios 1, 3, 4 and 5): three hosts, each running
//! `halo agent` in its network namespace, its own libvirtd with real KVM guests, NFS for the
//! datastore. libvirt on every host is polled throughout every scenario, not only at the end:
//! a VM must never run on two hosts.

#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::process::Child;
use std::time::{Duration, Instant};

use halo_lab::{Lab, LabSpec};
use halo_libvirt::{DomainState, Hypervisor, with_generation};

/// Four protected VMs: one on host-1, two on host-2, one on host-3.
const VMS: [(&str, usize); 4] = [("vm-1", 1), ("vm-2", 2), ("vm-3", 2), ("vm-4", 3)];

struct Cluster {
    lab: Lab,
    hv: BTreeMap<usize, Hypervisor>,
    agents: BTreeMap<usize, Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.agents.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Cluster {
    /// The lab, the VMs running where `VMS` says, an agent on every host, a master elected.
    fn up(test: &str) -> Option<Self> {
        if !halo_lab::for_test(test) {
            return None;
        }
        let lab = Lab::up(LabSpec::new(&format!("e{}", std::process::id() % 100_000), 3)).expect("lab");
        if let Err(e) = lab.nfs_start(&["ds1"]) {
            halo_lab::skip_for_test(test, &e.to_string());
            return None;
        }
        for h in 1..=3 {
            lab.libvirt_start(h).expect("libvirtd");
        }
        let hv: BTreeMap<usize, Hypervisor> = (1..=3)
            .map(|h| {
                (h, Hypervisor::connect_with_timeout(&lab.libvirt_uri(h), Duration::from_secs(10)).expect("libvirt"))
            })
            .collect();
        for (vm, host) in VMS {
            let xml = lab.tiny_guest_xml(vm, 64).expect("xml");
            lab.protect(vm, &xml).expect("protected list");
            hv[&host].define(&with_generation(&xml, 1)).expect("define");
            hv[&host].start(vm).expect("start");
        }
        let mut cluster = Self { lab, hv, agents: BTreeMap::new() };
        for h in 1..=3 {
            cluster.start_agent(h);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster.logs().contains("is master") {
            assert!(Instant::now() < deadline, "no master elected:\n{}", cluster.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(3)); // heartbeats settle, datastore records advance
        Some(cluster)
    }

    fn start_agent(&mut self, h: usize) {
        let vms: Vec<&str> = VMS.iter().map(|(vm, _)| *vm).collect();
        let config = self.lab.agent_config(h, &vms, &halo_lab::FAST_TIMEOUTS).expect("config");
        let child = self.lab.start_agent(h, std::path::Path::new(env!("CARGO_BIN_EXE_halo")), &config).expect("agent");
        self.agents.insert(h, child);
    }

    fn logs(&self) -> String {
        (1..=3)
            .map(|h| std::fs::read_to_string(self.lab.dir().join(format!("agent-{h}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    /// The hosts (among `alive`) that run `vm` now.
    fn runners(&self, vm: &str, alive: &[usize]) -> Vec<usize> {
        alive.iter().copied().filter(|h| self.hv[h].state(vm).ok().flatten() == Some(DomainState::Running)).collect()
    }
}

impl Cluster {
    /// Polls for `how_long`: every VM runs exactly where `placement` says, on no other host.
    fn holds(&self, placement: &BTreeMap<&'static str, usize>, how_long: Duration, scenario: &str) {
        let until = Instant::now() + how_long;
        while Instant::now() < until {
            for (vm, host) in placement {
                let runners = self.runners(vm, &[1, 2, 3]);
                assert_eq!(runners, vec![*host], "{scenario}: {vm} should run on host-{host} only\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// After a fault on `faulted`: its VMs must run again on another host (`alive` lists where
    /// to look; libvirt of every host in `observe` is polled), each VM on at most one host at
    /// every poll, the other VMs never moving. Updates `placement`; returns how long each took.
    fn recovers(
        &self,
        placement: &mut BTreeMap<&'static str, usize>,
        faulted: usize,
        observe: &[usize],
        started: Instant,
        scenario: &str,
    ) -> BTreeMap<&'static str, Duration> {
        let victims: Vec<&'static str> = placement.iter().filter(|(_, h)| **h == faulted).map(|(vm, _)| *vm).collect();
        let mut back = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(40);
        while back.len() < victims.len() && Instant::now() < deadline {
            for (vm, host) in placement.iter_mut() {
                let runners = self.runners(vm, observe);
                assert!(runners.len() <= 1, "{scenario}: {vm} runs on hosts {runners:?} at once\n{}", self.logs());
                if victims.contains(vm) {
                    if let [new] = runners[..]
                        && new != faulted
                    {
                        *host = new;
                        back.entry(*vm).or_insert_with(|| started.elapsed());
                    }
                } else {
                    assert_eq!(runners, vec![*host], "{scenario}: {vm} must not move\n{}", self.logs());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            back.len(),
            victims.len(),
            "{scenario}: {victims:?} did not all come back: {back:?}\n{}",
            self.logs()
        );
        back
    }
}

#[test]
fn agents_on_the_lab_keep_every_vm_running_exactly_once() {
    let Some(mut cluster) = Cluster::up("agents_on_the_lab_keep_every_vm_running_exactly_once") else { return };
    let mut placement: BTreeMap<&'static str, usize> = VMS.iter().map(|(vm, h)| (*vm, *h)).collect();

    // Scenario 5: management network A cut on host-2 only: nothing happens.
    cluster.lab.set_link(2, "A", false).expect("cut A");
    cluster.holds(&placement, Duration::from_secs(8), "A cut");
    cluster.lab.set_link(2, "A", true).expect("heal A");

    // Scenario 3: partition 2|1 with NFS reachable from both sides: no restart, nothing twice.
    cluster.lab.partition(&[vec![1, 2], vec![3]]).expect("partition");
    cluster.holds(&placement, Duration::from_secs(10), "partition 1,2 | 3");
    cluster.lab.heal_partition().expect("heal");
    cluster.holds(&placement, Duration::from_secs(3), "partition healed");

    // Scenario 4: the agent of host-3 killed, the host fine (answers ping): agent down, its VM is
    // not restarted. Then it comes back and rejoins without touching the VM it finds running.
    if let Some(mut agent) = cluster.agents.remove(&3) {
        let _ = agent.kill();
        let _ = agent.wait();
    }
    cluster.holds(&placement, Duration::from_secs(8), "agent of host-3 down");
    cluster.start_agent(3);
    cluster.holds(&placement, Duration::from_secs(4), "agent of host-3 back");

    // Scenario 2: host-3 isolated (both management links down: no agent, no isolation address)
    // with its datastore reachable: it powers its VM off and records it; the master restarts it
    // elsewhere; never twice (host-3's libvirt is watched too).
    let started = Instant::now();
    cluster.lab.set_link(3, "A", false).expect("cut");
    cluster.lab.set_link(3, "B", false).expect("cut");
    let took = cluster.recovers(&mut placement, 3, &[1, 2, 3], started, "host-3 isolated");
    println!("figure: isolation -> VM running elsewhere: {took:?}");
    cluster.lab.set_link(3, "A", true).expect("heal");
    cluster.lab.set_link(3, "B", true).expect("heal");
    cluster.holds(&placement, Duration::from_secs(4), "isolation healed");

    // Scenario 1b: host-1 cut from everything (management and storage): it stops its VMs
    // itself before the others' dead-time ends, then they run elsewhere; never two copies.
    let started = Instant::now();
    for net in ["A", "B", "M"] {
        cluster.lab.set_link(1, net, false).expect("cut");
    }
    let took = cluster.recovers(&mut placement, 1, &[1, 2, 3], started, "host-1 cut off");
    println!("figure: network and storage cut -> VM running elsewhere: {took:?}");
    assert!(cluster.logs().contains("fences itself"), "host-1 fenced:\n{}", cluster.logs());
    for net in ["A", "B", "M"] {
        cluster.lab.set_link(1, net, true).expect("heal");
    }
    cluster.holds(&placement, Duration::from_secs(5), "host-1 back");

    // Scenario 6: a VM crashes (its QEMU killed): started again on its own host.
    let (vm, host) = placement.iter().next().map(|(v, h)| (*v, *h)).expect("a VM");
    let pids = cluster.lab.pids_of(host, &format!("guest={vm}")).expect("pids");
    assert_eq!(pids.len(), 1, "{vm} has one QEMU on host-{host}");
    let crashed = Instant::now();
    std::process::Command::new("kill").args(["-9", &pids[0].to_string()]).status().expect("kill");
    let mut seen_down = false;
    loop {
        let runners = cluster.runners(vm, &[1, 2, 3]);
        assert!(runners.is_empty() || runners == vec![host], "{vm} restarted in place only: {runners:?}");
        seen_down |= runners.is_empty();
        let fresh = cluster.lab.pids_of(host, &format!("guest={vm}")).unwrap_or_default();
        if runners == vec![host] && !fresh.is_empty() && fresh != pids {
            break;
        }
        assert!(
            crashed.elapsed() < Duration::from_secs(20),
            "{vm} was not restarted after its crash\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("figure: VM crash -> running again on its host after {:?} (seen down: {seen_down})", crashed.elapsed());
    cluster.holds(&placement, Duration::from_secs(3), "after the VM crash");

    // Scenario 1: host-2 crashes (processes killed, links down): its VMs run again on the
    // other hosts, each exactly once; the others never move.
    let crashed = Instant::now();
    cluster.lab.kill_host(2).expect("crash");
    let took = cluster.recovers(&mut placement, 2, &[1, 3], crashed, "host-2 crashed");
    println!("figure: host crash -> VM running on another host: {took:?}");
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for (vm, host) in &placement {
            assert_eq!(cluster.runners(vm, &[1, 3]), vec![*host], "{vm} exactly once\n{}", cluster.logs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Scenario 9: host-2 boots again (empty) and rejoins; then the master itself (host-1, the
    // smallest name with a datastore) crashes: a new master within seconds, and host-1's VMs
    // run again elsewhere.
    cluster.lab.boot_host(2).expect("boot");
    // Our own connection to host-2's libvirt died with it.
    let fresh =
        Hypervisor::connect_with_timeout(&cluster.lab.libvirt_uri(2), Duration::from_secs(10)).expect("libvirt");
    cluster.hv.insert(2, fresh);
    cluster.start_agent(2);
    cluster.holds(&placement, Duration::from_secs(5), "host-2 back, empty");
    let crashed = Instant::now();
    cluster.lab.kill_host(1).expect("crash the master");
    let took = cluster.recovers(&mut placement, 1, &[2, 3], crashed, "the master crashed");
    println!("figure: master crash -> its VMs running elsewhere: {took:?}");
    let logs = cluster.logs();
    assert!(
        logs.contains("host-2 is master") || logs.contains("host-3 is master"),
        "a new master was elected:\n{logs}"
    );
}
