//! Real agents on the lab (issue 5, scenario 1): three hosts, each running `halo agent` in its
//! network namespace, its own libvirtd with real KVM guests, NFS for the datastore. host-2
//! crashes (processes killed, links down); its protected VMs must run again on the other
//! hosts, each exactly once — libvirt on every host is polled throughout, not only at the end.

#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use halo_lab::{Lab, LabSpec};
use halo_libvirt::{DomainState, Hypervisor, with_generation};

struct Agents(Vec<Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn config(lab: &Lab, host: usize, vms: &[(&str, usize)]) -> String {
    let mut toml = format!(
        "cluster = \"lab\"\nhost = \"host-{host}\"\nkey-file = \"{}\"\nnetworks = [\"A\", \"B\"]\nisolation-addresses = [\"{}\", \"{}\"]\n",
        lab.dir().join("cluster.key").display(),
        lab.gateway("A").expect("gw"),
        lab.gateway("B").expect("gw")
    );
    for h in 1..=lab.hosts() {
        toml.push_str(&format!(
            "\n[[hosts]]\nname = \"host-{h}\"\nmemory-mib = 2048\nvcpus = 8\naddresses = {{ A = \"{}\", B = \"{}\" }}\nlibvirt-uri = \"{}\"\n",
            lab.address(h, "A").expect("a"),
            lab.address(h, "B").expect("b"),
            lab.libvirt_tcp_uri(h).expect("uri")
        ));
    }
    toml.push_str(&format!(
        "\n[[datastores]]\nname = \"ds1\"\nnfs = {{ server = \"{}\", export = \"/ds1\", mount-port = {}, nfs-port = {} }}\n",
        lab.storage_address(),
        halo_lab::MOUNT_PORT,
        halo_lab::NFS_PORT
    ));
    toml.push_str(&format!("\n[libvirt]\nlocal-uri = \"{}\"\n", lab.libvirt_uri(host)));
    toml.push_str(
        "\n[timeouts]\nheartbeat-interval-ms = 250\ndatastore-interval-ms = 250\ndead-time-ms = 3000\nfence-timeout-ms = 2000\nisolation-time-ms = 1500\nelection-timeout-ms = 1000\nping-timeout-ms = 500\n",
    );
    for (vm, _) in vms {
        toml.push_str(&format!("\n[[vms]]\nname = \"{vm}\"\nmemory-mib = 64\nvcpus = 1\npriority = \"restart\"\n"));
    }
    toml
}

#[test]
fn agents_restart_the_vms_of_a_crashed_host_elsewhere_each_exactly_once() {
    let test = "agents_restart_the_vms_of_a_crashed_host_elsewhere_each_exactly_once";
    if !halo_lab::for_test(test) {
        return;
    }
    let lab = Lab::up(LabSpec::new(&format!("e{}", std::process::id() % 100_000), 3)).expect("lab");
    if let Err(e) = lab.nfs_start(&["ds1"]) {
        halo_lab::skip_for_test(test, &e.to_string());
        return;
    }
    for h in 1..=3 {
        lab.libvirt_start(h).expect("libvirtd");
    }
    let key = lab.dir().join("cluster.key");
    std::fs::write(&key, "6c61622d6b65792d6f662d68616c6f2d74657374732d33322d6279746573210a\n").expect("key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");

    // Three protected VMs: one on host-1, two on host-2; the protected-VM list on the datastore.
    let vms = [("vm-1", 1), ("vm-2", 2), ("vm-3", 2)];
    let list = lab.dir().join("exports/ds1/.halo/lab/vms");
    std::fs::create_dir_all(&list).expect("layout");
    let hv: BTreeMap<usize, Hypervisor> = (1..=3)
        .map(|h| (h, Hypervisor::connect_with_timeout(&lab.libvirt_uri(h), Duration::from_secs(10)).expect("libvirt")))
        .collect();
    for (vm, host) in vms {
        let xml = lab.tiny_guest_xml(vm, 64).expect("xml");
        let record = serde_json::json!({ "name": vm, "domain-xml": xml });
        std::fs::write(list.join(format!("{vm}.json")), record.to_string()).expect("protected list");
        hv[&host].define(&with_generation(&xml, 1)).expect("define");
        hv[&host].start(vm).expect("start");
    }

    // The agents, each in its host's namespace.
    let halo = env!("CARGO_BIN_EXE_halo");
    let mut agents = Agents(Vec::new());
    for h in 1..=3 {
        let path = lab.dir().join(format!("halo-{h}.toml"));
        std::fs::write(&path, config(&lab, h, &vms)).expect("config");
        let log = std::fs::File::create(lab.dir().join(format!("agent-{h}.log"))).expect("log");
        agents.0.push(
            Command::new("ip")
                .args(["netns", "exec", &lab.netns(h), halo, "agent", "--config"])
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("agent"),
        );
    }
    let logs = || {
        (1..=3)
            .map(|h| std::fs::read_to_string(lab.dir().join(format!("agent-{h}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !logs().iter().any(|l| l.contains("is master")) {
        assert!(Instant::now() < deadline, "no master elected:\n{}", logs().join("\n---\n"));
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3)); // heartbeats settle, datastore records advance

    // host-2 crashes.
    let crashed = Instant::now();
    lab.kill_host(2).expect("crash");
    let mut back: BTreeMap<&str, Duration> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while back.len() < 2 && Instant::now() < deadline {
        for (vm, _) in vms {
            let runners: Vec<usize> =
                [1, 3].into_iter().filter(|h| hv[h].state(vm).ok().flatten() == Some(DomainState::Running)).collect();
            assert!(runners.len() <= 1, "{vm} runs on hosts {runners:?} at once");
            if vm != "vm-1" && runners.len() == 1 {
                back.entry(vm).or_insert_with(|| crashed.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(back.len(), 2, "host-2's VMs did not come back: {back:?}\n{}", logs().join("\n---\n"));
    assert_eq!(hv[&1].state("vm-1").expect("state"), Some(DomainState::Running), "vm-1 never moved");
    println!("figure: host crash -> VM running on another host: {back:?}");
    // A little longer: still exactly once.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for (vm, _) in vms {
            let runners =
                [1, 3].into_iter().filter(|h| hv[h].state(vm).ok().flatten() == Some(DomainState::Running)).count();
            assert_eq!(runners, 1, "{vm}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
