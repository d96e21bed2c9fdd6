//! The libvirt driver against real libvirtd + QEMU/KVM in the lab: each lab host runs its own
//! libvirtd; guests are tiny diskless VMs that halt their CPU. Root, libvirt and QEMU needed;
//! without them the tests print why they skip.

#![allow(missing_docs)]

use std::time::{Duration, Instant};

use halo_lab::{Lab, LabSpec};
use halo_libvirt::events::StopKind;
use halo_libvirt::{DomainState, Hypervisor, LibvirtError, LifecycleEvent, MigrationKind};

fn lab(test: &str, hosts: usize) -> Option<Lab> {
    if !halo_lab::for_test(test) {
        return None;
    }
    let name = format!("v{}-{}", std::process::id() % 100_000, test.chars().take(6).collect::<String>());
    let lab = Lab::up(LabSpec::new(&name, hosts)).expect("the lab comes up");
    for host in 1..=hosts {
        match lab.libvirt_start(host) {
            Ok(()) => {}
            Err(halo_lab::LabError::Unavailable(reason)) => {
                halo_lab::skip_for_test(test, &reason);
                return None;
            }
            Err(e) => panic!("libvirtd on host-{host}: {e}"),
        }
    }
    if !halo_lab::kvm_usable() {
        println!("note {test}: /dev/kvm is not usable, guests run under QEMU's TCG");
    }
    Some(lab)
}

const DEADLINE: Duration = Duration::from_secs(60);

fn connect(lab: &Lab, host: usize) -> Hypervisor {
    Hypervisor::connect_with_timeout(&lab.libvirt_uri(host), Duration::from_secs(10)).expect("connect")
}

/// Waits for the first event matching `want`, up to `within`.
fn wait_for(
    events: &std::sync::mpsc::Receiver<LifecycleEvent>,
    within: Duration,
    want: impl Fn(&LifecycleEvent) -> bool,
) -> Option<(LifecycleEvent, Duration)> {
    let started = Instant::now();
    while let Some(left) = within.checked_sub(started.elapsed()) {
        match events.recv_timeout(left) {
            Ok(e) if want(&e) => return Some((e, started.elapsed())),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
    None
}

#[test]
fn domains_start_stop_shut_down_and_a_killed_qemu_is_reported_as_failed() {
    let Some(lab) = lab("lifecycle", 1) else { return };
    let hv = connect(&lab, 1);
    let sub = hv.subscribe().expect("subscribe");
    let xml = lab.tiny_guest_xml("t-life", 64).expect("xml");
    assert_eq!(hv.define(&xml).expect("define"), "t-life");
    assert_eq!(hv.state("t-life").expect("state"), Some(DomainState::ShutOff));
    assert_eq!(hv.state("no-such-vm").expect("state"), None);

    let started = Instant::now();
    hv.start("t-life").expect("start");
    println!("figure: start of a 64 MiB guest took {:?}", started.elapsed());
    hv.start("t-life").expect("starting a running domain is fine");
    assert_eq!(hv.state("t-life").expect("state"), Some(DomainState::Running));
    assert!(
        wait_for(
            sub.events(),
            Duration::from_secs(5),
            |e| matches!(e, LifecycleEvent::Started { domain } if domain == "t-life")
        )
        .is_some()
    );
    let listed = hv.domains().expect("list");
    assert!(listed.iter().any(|d| d.name == "t-life" && d.state == DomainState::Running && d.persistent), "{listed:?}");

    // A hold pauses the guest and marks it in the live XML (an agent started later finds it
    // held); releasing lets it run and removes the mark. A pause not by halo has no mark.
    let held = |hv: &Hypervisor| halo_libvirt::held_by_halo(&hv.xml("t-life").expect("live xml"));
    let started = Instant::now();
    hv.hold("t-life").expect("hold");
    println!("figure: hold (pause and mark) took {:?}", started.elapsed());
    assert_eq!(hv.state("t-life").expect("state"), Some(DomainState::Paused));
    assert!(held(&hv), "the mark is in the live XML");
    hv.hold("t-life").expect("holding a held domain is fine");
    hv.release("t-life").expect("release");
    assert_eq!(hv.state("t-life").expect("state"), Some(DomainState::Running));
    assert!(!held(&hv), "released: no mark");
    hv.pause("t-life").expect("pause");
    assert!(!held(&hv), "paused by someone else: no mark");
    hv.resume("t-life").expect("resume");

    let started = Instant::now();
    hv.power_off("t-life").expect("power off");
    println!("figure: power off took {:?}", started.elapsed());
    hv.power_off("t-life").expect("powering off a stopped domain is fine");
    assert_eq!(hv.state("t-life").expect("state"), Some(DomainState::ShutOff));
    let (_, _) = wait_for(
        sub.events(),
        Duration::from_secs(5),
        |e| matches!(e, LifecycleEvent::Stopped { domain, how: StopKind::Destroyed } if domain == "t-life"),
    )
    .expect("a destroyed event");

    // The halting guest has no ACPI: the shutdown request goes unanswered, the grace runs out,
    // and it is powered off.
    hv.start("t-life").expect("start");
    let started = Instant::now();
    let by_itself = hv.shutdown("t-life", Duration::from_millis(1500)).expect("shutdown");
    assert!(!by_itself, "the halting guest cannot shut down by itself");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(hv.state("t-life").expect("state"), Some(DomainState::ShutOff));

    // The guest agent: none without a channel; with a channel but no agent in the guest (the
    // halting ROM runs none), no answer within the timeout.
    assert_eq!(hv.guest_agent_ping("t-life", Duration::from_secs(1)).expect("ping"), None);
    hv.power_off("t-life").expect("power off");
    let with_channel = xml.replace(
        "</devices>",
        "<controller type='virtio-serial' index='0'/><channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel></devices>",
    );
    hv.define(&with_channel).expect("redefine with a guest-agent channel");
    hv.start("t-life").expect("start");
    let started = Instant::now();
    assert_eq!(hv.guest_agent_ping("t-life", Duration::from_secs(2)).expect("ping"), Some(false));
    println!("figure: guest-agent ping without an agent answered 'no' after {:?}", started.elapsed());

    // QEMU killed: a crash, seen through the event loop.
    hv.start("t-life").expect("start");
    let pids = lab.pids_of(1, "guest=t-life").expect("pids");
    assert_eq!(pids.len(), 1, "one QEMU process: {pids:?}");
    while sub.events().try_recv().is_ok() {}
    nix_kill(pids[0]);
    let (_, took) = wait_for(
        sub.events(),
        Duration::from_secs(10),
        |e| matches!(e, LifecycleEvent::Stopped { domain, how: StopKind::Failed } if domain == "t-life"),
    )
    .expect("a failed event after QEMU was killed");
    println!("figure: QEMU killed -> Stopped/Failed event after {took:?}");
    assert_eq!(hv.state("t-life").expect("state"), Some(DomainState::ShutOff));
    hv.undefine("t-life").expect("undefine");
    assert_eq!(hv.state("t-life").expect("state"), None);

    // libvirtd killed with the host: the connection's close callback says so.
    lab.kill_host(1).expect("kill");
    let closed =
        wait_for(sub.events(), Duration::from_secs(10), |e| matches!(e, LifecycleEvent::ConnectionClosed { .. }));
    assert!(closed.is_some(), "the connection's end is reported");
}

fn nix_kill(pid: i32) {
    let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill");
    assert!(status.success());
}

#[test]
fn a_running_guest_migrates_live_and_a_migration_that_cannot_work_says_why() {
    let Some(lab) = lab("migrate", 2) else { return };
    let (a, b) = (connect(&lab, 1), connect(&lab, 2));
    let to_b = lab.libvirt_tcp_uri(2).expect("uri");
    let to_a = lab.libvirt_tcp_uri(1).expect("uri");
    let sub_b = b.subscribe().expect("subscribe");
    a.define(&lab.tiny_guest_xml("t-mig", 64).expect("xml")).expect("define");

    // Live migration of a powered-off VM is refused with the reason.
    let refused = a.migrate("t-mig", &b, &to_b, MigrationKind::Live, &[], DEADLINE).expect_err("refused");
    assert!(refused.to_string().contains("it is not running"), "{refused}");

    a.start("t-mig").expect("start");
    let report = a.migrate("t-mig", &b, &to_b, MigrationKind::Live, &[], DEADLINE).expect("live migration");
    println!("figure: live migration of a running 64 MiB guest took {:?}", report.took);
    assert_eq!(b.state("t-mig").expect("state"), Some(DomainState::Running), "running on the target");
    assert_eq!(a.state("t-mig").expect("state"), None, "gone from the source (undefined there)");
    // The guest kept running: on the target it was resumed, never booted and never stopped.
    let seen: Vec<LifecycleEvent> = sub_b.events().try_iter().collect();
    assert!(!seen.iter().any(|e| matches!(e, LifecycleEvent::Stopped { .. })), "{seen:?}");

    // A definition with another UUID replaces a powered-off one of the same name (a stale
    // copy), and is refused while that one runs.
    let with_uuid = |uuid: &str| {
        lab.tiny_guest_xml("t-uuid", 64).expect("xml").replacen("</name>", &format!("</name><uuid>{uuid}</uuid>"), 1)
    };
    a.define(&with_uuid("11111111-1111-1111-1111-111111111111")).expect("define");
    a.define(&with_uuid("22222222-2222-2222-2222-222222222222")).expect("a stale copy gives way");
    assert!(a.xml("t-uuid").expect("xml").contains("22222222-2222-2222-2222-222222222222"));
    a.start("t-uuid").expect("start");
    // A running domain's XML carries run-time details; its definition does not.
    let head = |xml: &str| xml.lines().next().unwrap_or_default().to_string();
    assert!(head(&a.xml("t-uuid").expect("xml")).contains(" id='"), "a running domain has an id");
    let definition = a.definition("t-uuid").expect("definition");
    assert!(!head(&definition).contains(" id='"), "{definition}");
    assert!(definition.contains("22222222-2222-2222-2222-222222222222"));
    let refused = a.define(&with_uuid("33333333-3333-3333-3333-333333333333")).expect_err("refused");
    assert!(refused.to_string().contains("runs here"), "{refused}");
    a.power_off("t-uuid").expect("power off");
    a.undefine("t-uuid").expect("undefine");

    // Back again, onto a host that still has a stale, powered-off definition of the VM (with
    // another UUID: a host back from a crash whose VMs were restarted elsewhere). The stale
    // definition gives way; then offline: power off on A, move the definition to B.
    a.define(&lab.tiny_guest_xml("t-mig", 64).expect("xml")).expect("stale definition on A");
    b.migrate("t-mig", &a, &to_a, MigrationKind::Live, &[], DEADLINE).expect("live migration back");
    assert_eq!(a.state("t-mig").expect("state"), Some(DomainState::Running));
    a.power_off("t-mig").expect("power off");
    let offline = a.migrate("t-mig", &b, &to_b, MigrationKind::Offline, &[], DEADLINE).expect("offline migration");
    println!("figure: offline migration took {:?}", offline.took);
    assert_eq!(b.state("t-mig").expect("state"), Some(DomainState::ShutOff));
    assert_eq!(a.state("t-mig").expect("state"), None);

    // A guest with its disk on the shared image directory migrates live, disk and all.
    let image = lab.make_image("t-shared", 16).expect("qemu-img");
    let images = lab.images_dir().expect("images");
    let with_shared_disk = lab.tiny_guest_with_disk_xml("t-shared", 64, &image).expect("xml");
    a.define(&with_shared_disk).expect("define");
    a.start("t-shared").expect("start");
    let shared = [images.to_string_lossy().into_owned()];
    let shared: Vec<&str> = shared.iter().map(String::as_str).collect();
    let report = a
        .migrate("t-shared", &b, &to_b, MigrationKind::Live, &shared, DEADLINE)
        .expect("live migration with a shared disk");
    println!("figure: live migration of a guest with a qcow2 disk on shared storage took {:?}", report.took);
    assert_eq!(b.state("t-shared").expect("state"), Some(DomainState::Running));
    b.power_off("t-shared").expect("power off");

    // Shared nothing: a disk on host-1's local storage, copied to host-2's (an empty image
    // of the same size waits there) while the guest runs.
    let local = lab.make_local_image(1, "t-copy", 16).expect("qemu-img");
    lab.make_local_image(2, "t-copy", 16).expect("qemu-img");
    let with_local_disk = lab.tiny_guest_with_disk_xml("t-copy", 64, &local).expect("xml");
    // A pattern on the source disk, to find on the copy.
    let qemu_io = |host: usize, command: &str| {
        let file = lab.local_images_dir(host).join("t-copy.qcow2");
        std::process::Command::new("qemu-io").args(["-f", "qcow2", "-c", command]).arg(&file).output().expect("qemu-io")
    };
    let wrote = qemu_io(1, "write -P 0xab 0 1M");
    assert!(wrote.status.success(), "{}", String::from_utf8_lossy(&wrote.stderr));
    a.define(&with_local_disk).expect("define");
    a.start("t-copy").expect("start");
    let refused = a.migrate("t-copy", &b, &to_b, MigrationKind::Live, &shared, DEADLINE).expect_err("not shared");
    assert!(refused.to_string().contains("not on storage both hosts see"), "{refused}");
    let report = a
        .migrate("t-copy", &b, &to_b, MigrationKind::LiveWithStorageCopy, &shared, DEADLINE)
        .expect("live migration with storage copy");
    println!("figure: live migration with storage copy of a 16 MiB disk took {:?}", report.took);
    assert_eq!(b.state("t-copy").expect("state"), Some(DomainState::Running));
    assert_eq!(a.state("t-copy").expect("state"), None);
    b.power_off("t-copy").expect("power off");
    let read = qemu_io(2, "read -P 0xab 0 1M");
    let said = String::from_utf8_lossy(&read.stdout).into_owned();
    assert!(read.status.success() && !said.contains("Pattern verification failed"), "the copy holds the data: {said}");

    // A disk only this host sees: refused before anything moves, and the reason names it.
    let rom = lab.hlt_rom().expect("rom");
    let with_disk = lab
        .tiny_guest_xml("t-disk", 64)
        .expect("xml")
        .replace("</devices>", &format!("<disk type='file' device='cdrom'><source file='{}'/><target dev='hdc' bus='ide'/><readonly/></disk></devices>", rom.display()));
    a.define(&with_disk).expect("define");
    a.start("t-disk").expect("start");
    match a.migrate("t-disk", &b, &to_b, MigrationKind::Live, &["/srv/shared"], DEADLINE) {
        Err(LibvirtError::MigrationRefused { reasons, .. }) => {
            assert!(reasons.iter().any(|r| r.contains("is not on storage both hosts see")), "{reasons:?}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(a.state("t-disk").expect("state"), Some(DomainState::Running), "nothing moved");

    // The target cut off on the migration network: libvirt's own reason comes back.
    lab.set_link(2, "M", false).expect("cut");
    let started = Instant::now();
    let failed =
        a.migrate("t-disk", &b, &to_b, MigrationKind::Live, &[rom.to_string_lossy().as_ref()], Duration::from_secs(5));
    let err = failed.expect_err("the target is unreachable");
    println!("figure: migration to a cut-off target failed after {:?}: {err}", started.elapsed());
    assert!(
        matches!(err, LibvirtError::Timeout { .. }) && err.to_string().contains("the VM stays on this host"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(8), "bounded by the deadline");
    assert_eq!(a.state("t-disk").expect("state"), Some(DomainState::Running), "the guest stays where it was");
    lab.set_link(2, "M", true).expect("heal");
}

#[test]
fn the_core_hypervisor_driver_starts_elsewhere_stops_and_migrates_with_the_generation() {
    use halo_core::drivers::HypervisorDriver;
    use halo_core::{Input, StopReason, VmState};
    use halo_libvirt::{HypervisorConfig, Hypervisors, generation_of};

    let Some(lab) = lab("driver", 2) else { return };
    let config = |me: usize| HypervisorConfig {
        me: Lab::host_name(me),
        // The test reaches every libvirt through its socket; the hosts reach each other over M.
        uris: (1..=2).map(|h| (Lab::host_name(h), lab.libvirt_uri(h))).collect(),
        migration_uris: (1..=2).map(|h| (Lab::host_name(h), lab.libvirt_tcp_uri(h).expect("uri"))).collect(),
        shared_storage: vec![],
        connect_timeout: Duration::from_secs(10),
        migration_deadline: DEADLINE,
        leases: None,
    };
    let catalog = std::sync::Arc::new(std::sync::Mutex::new(
        [("t-drv".to_string(), lab.tiny_guest_xml("t-drv", 64).expect("xml"))].into_iter().collect(),
    ));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let mut master = Hypervisors::new(config(1), std::sync::Arc::clone(&catalog), tx.clone(), rt.handle().clone());
    let mut on_two = Hypervisors::new(config(2), catalog, tx, rt.handle().clone());
    let mut next = || {
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), rx.recv()).await })
            .expect("in time")
            .expect("an input")
    };

    // The master (host-1) starts generation 3 on host-2.
    master.start_vm("host-2", "t-drv", 3);
    assert_eq!(next(), Input::StartResult { vm: "t-drv".into(), host: "host-2".into(), generation: 3, result: Ok(()) });
    let b = connect(&lab, 2);
    assert_eq!(b.state("t-drv").expect("state"), Some(DomainState::Running));
    assert_eq!(generation_of(&b.xml("t-drv").expect("xml")), Some(3), "the generation rides in the metadata");

    // host-2's own agent stops it (isolation response, no grace): reported with its generation.
    on_two.stop_vm("t-drv", StopReason::Isolation, 0);
    assert_eq!(
        next(),
        Input::VmState { vm: "t-drv".into(), generation: 3, state: VmState::StoppedByHalo(StopReason::Isolation) }
    );
    assert_eq!(b.state("t-drv").expect("state"), Some(DomainState::ShutOff));

    // Started on host-2 by its own agent: it also hears that it runs it.
    on_two.start_vm("host-2", "t-drv", 4);
    let first = next();
    let second = next();
    assert_eq!(first, Input::VmState { vm: "t-drv".into(), generation: 4, state: VmState::Running });
    assert_eq!(second, Input::StartResult { vm: "t-drv".into(), host: "host-2".into(), generation: 4, result: Ok(()) });

    // Maintenance: the master migrates it live from host-2 to host-1; the generation stays.
    master.migrate_vm("t-drv", "host-2", "host-1");
    assert_eq!(
        next(),
        Input::MigrateResult { vm: "t-drv".into(), from: "host-2".into(), to: "host-1".into(), result: Ok(()) }
    );
    let a = connect(&lab, 1);
    assert_eq!(a.state("t-drv").expect("state"), Some(DomainState::Running));
    assert_eq!(generation_of(&a.xml("t-drv").expect("xml")), Some(4));

    // What cannot be done is an answer, not silence.
    master.start_vm("host-9", "t-drv", 5);
    assert!(
        matches!(next(), Input::StartResult { result: Err(e), .. } if e.to_string().contains("no libvirt URI for host host-9"))
    );
    master.start_vm("host-2", "unknown-vm", 1);
    assert!(matches!(next(), Input::StartResult { result: Err(e), .. } if e.to_string().contains("no definition")));
}

#[test]
fn a_linux_guest_answers_its_agent_and_a_shutdown_inside_it_is_reported_as_the_guests() {
    let Some(lab) = lab("guestagent", 1) else { return };
    let xml = match lab.linux_guest_xml("t-linux") {
        Ok(xml) => xml,
        Err(halo_lab::LabError::Unavailable(reason)) => {
            halo_lab::skip_for_test("a_linux_guest_answers_its_agent", &reason);
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let hv = connect(&lab, 1);
    let sub = hv.subscribe().expect("subscribe");
    // The guest's console goes to a file in the lab (for a failing test's post-mortem).
    let console = lab.dir().join("linux-console.log");
    let xml = xml.replace(
        "</devices>",
        &format!("<serial type='file'><source path='{}'/><target port='0'/></serial></devices>", console.display()),
    );
    hv.define(&xml).expect("define");
    let started = Instant::now();
    hv.start("t-linux").expect("start");
    // The guest boots (TCG) and its agent comes up: "no" until then, then "yes".
    let mut answered = None;
    while started.elapsed() < Duration::from_secs(90) {
        if hv.guest_agent_ping("t-linux", Duration::from_secs(2)).expect("ping") == Some(true) {
            answered = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let answered = answered.expect("the guest agent answered");
    println!("figure: Linux guest started -> its guest agent answers after {answered:?}");

    // The guest shuts itself down (asked through its agent): libvirt says the guest did it.
    while sub.events().try_recv().is_ok() {}
    // The agent may not answer: it goes down with the guest.
    let asked = Instant::now();
    let _ = hv.guest_agent_command("t-linux", r#"{"execute":"guest-shutdown"}"#, Duration::from_secs(5));
    wait_for(
        sub.events(),
        Duration::from_secs(30),
        |e| matches!(e, LifecycleEvent::ShuttingDown { domain, by_guest: true } if domain == "t-linux"),
    )
    .expect("a shutdown started by the guest");
    let took = asked.elapsed();
    wait_for(
        sub.events(),
        Duration::from_secs(30),
        |e| matches!(e, LifecycleEvent::Stopped { domain, how: StopKind::Shutdown } if domain == "t-linux"),
    )
    .expect("then stopped by shutdown");
    println!("figure: guest-shutdown asked -> the guest's own shutdown reported after {took:?}");
    assert_eq!(hv.state("t-linux").expect("state"), Some(DomainState::ShutOff));
}

/// Issue 18: a host's load read from libvirt — its memory, each running guest's memory and,
/// from the second reading on, CPU use as a rate: a guest whose CPU spins (`jmp $` at the reset
/// vector) shows about one thread busy, one that halts about none.
#[test]
fn the_load_of_a_host_and_its_guests_is_read_with_cpu_rates() {
    let Some(lab) = lab("load", 1) else { return };
    let hv = connect(&lab, 1);
    let idle = lab.tiny_guest_xml("t-idle", 64).expect("xml");
    let rom = lab.hlt_rom().expect("rom");
    let spin_rom = lab.dir().join("spin.rom");
    let mut bytes = vec![0xF4u8; 65_536];
    bytes[0xFFF0..0xFFF2].copy_from_slice(&[0xEB, 0xFE]);
    std::fs::write(&spin_rom, bytes).expect("spin rom");
    let spin = idle.replace("t-idle", "t-spin").replace(&rom.display().to_string(), &spin_rom.display().to_string());
    for (name, xml) in [("t-idle", &idle), ("t-spin", &spin)] {
        hv.define(xml).expect("define");
        hv.start(name).expect("start");
    }
    let mut meter = halo_libvirt::LoadMeter::default();
    let first = meter.load(&hv.load_sample().expect("sample"), Instant::now());
    assert_eq!(first.cpu_percent, None, "no rate from one reading");
    assert!(
        first.memory_mib > 0 && first.free_memory_mib > 0 && first.free_memory_mib <= first.memory_mib,
        "{first:?}"
    );
    let names: Vec<&str> = first.vms.iter().map(|v| v.vm.as_str()).collect();
    assert_eq!(names, vec!["t-idle", "t-spin"]);
    assert!(first.vms.iter().all(|v| v.memory_mib > 0 && v.cpu_percent.is_none()), "{first:?}");
    std::thread::sleep(Duration::from_secs(2));
    let second = meter.load(&hv.load_sample().expect("sample"), Instant::now());
    let cpu = |vm: &str| second.vms.iter().find(|v| v.vm == vm).and_then(|v| v.cpu_percent).expect("a rate");
    println!(
        "figure: spinning guest {} %, halted guest {} %, host {:?} % of {} threads, {} of {} MiB free",
        cpu("t-spin"),
        cpu("t-idle"),
        second.cpu_percent,
        second.cpus,
        second.free_memory_mib,
        second.memory_mib
    );
    assert!((50..=130).contains(&cpu("t-spin")), "one vCPU spinning: {second:?}");
    assert!(cpu("t-idle") < 20, "halted: {second:?}");
    assert!(second.cpu_percent.is_some());
    for name in ["t-idle", "t-spin"] {
        hv.power_off(name).expect("power off");
    }
}

/// Issue 18, storage migration while running: a guest's disk is mirrored into another
/// directory with synchronous writes (the guest runs on), then either switched to the copy —
/// the live and the persistent definition name it, the data is there — or dropped, leaving
/// the guest on its old disk and no copy behind.
#[test]
fn a_running_guests_disk_moves_to_another_directory_and_a_dropped_copy_leaves_nothing() {
    let Some(lab) = lab("storage", 1) else { return };
    let hv = connect(&lab, 1);
    let image = lab.make_image("t-store", 64).expect("qemu-img");
    let pattern = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0xcd 0 4M"])
        .arg(&image)
        .output()
        .expect("qemu-io");
    assert!(pattern.status.success(), "{}", String::from_utf8_lossy(&pattern.stderr));
    let xml = lab.tiny_guest_with_disk_xml("t-store", 64, &image).expect("xml");
    hv.define(&xml).expect("define");
    hv.start("t-store").expect("start");
    let moved_dir = lab.images_dir().expect("images").join("moved");
    std::fs::create_dir_all(&moved_dir).expect("dir");
    let dir = moved_dir.to_string_lossy().into_owned();

    // Dropped: nothing changes, the copy is gone.
    let mut heard = Vec::new();
    let moved = hv.mirror_disks("t-store", &dir, |p| heard.push(p), DEADLINE).expect("mirrored");
    let new = moved_dir.join("t-store.qcow2");
    assert_eq!(moved, vec![(image.to_string_lossy().into_owned(), new.to_string_lossy().into_owned())]);
    assert!(hv.xml("t-store").expect("xml").contains("ready='yes'"), "the mirror is in step");
    hv.finish_mirrors("t-store", false).expect("dropped");
    assert!(!new.exists(), "the copy is removed");
    assert!(hv.xml("t-store").expect("xml").contains(&format!("file='{}'", image.display())));
    assert_eq!(hv.state("t-store").expect("state"), Some(DomainState::Running));

    // Switched: the guest runs on the copy, the persistent definition names it.
    let started = Instant::now();
    hv.mirror_disks("t-store", &dir, |_| {}, DEADLINE).expect("mirrored again");
    let mirrored = started.elapsed();
    hv.finish_mirrors("t-store", true).expect("switched");
    println!(
        "figure: storage move of a 64 MiB qcow2 disk (4 MiB written) of a running guest: mirrored in {mirrored:?}, switched in {:?}",
        started.elapsed() - mirrored
    );
    assert_eq!(hv.state("t-store").expect("state"), Some(DomainState::Running), "never stopped");
    let live = hv.xml("t-store").expect("xml");
    assert!(live.contains(&format!("file='{}'", new.display())) && !live.contains("<mirror"), "{live}");
    let persistent = hv.definition("t-store").expect("definition");
    assert!(persistent.contains(&format!("file='{}'", new.display())), "{persistent}");
    hv.power_off("t-store").expect("power off");
    let read = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "read -P 0xcd 0 4M"])
        .arg(&new)
        .output()
        .expect("qemu-io");
    let said = String::from_utf8_lossy(&read.stdout).into_owned();
    assert!(read.status.success() && !said.contains("Pattern verification failed"), "the copy holds the data: {said}");

    // Refused before anything moves: a target that holds the file already, a guest without a
    // file disk.
    hv.start("t-store").expect("start on the moved disk");
    let e = hv.mirror_disks("t-store", &dir, |_| {}, DEADLINE).expect_err("in that directory already");
    assert!(e.to_string().contains("is in") && e.to_string().contains("already"), "{e}");
    hv.define(&lab.tiny_guest_xml("t-nodisk", 64).expect("xml")).expect("define");
    hv.start("t-nodisk").expect("start");
    let e = hv.mirror_disks("t-nodisk", &dir, |_| {}, DEADLINE).expect_err("no disk");
    assert!(e.to_string().contains("has no file disk to move"), "{e}");
    assert_eq!(heard.last(), Some(&100), "progress is told: {heard:?}");
}
