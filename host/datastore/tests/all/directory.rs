//! The directory backend on this machine's filesystem.

use std::path::PathBuf;
use std::sync::Arc;

use halo_core::ClaimOutcome;
use halo_datastore::{Datastore, DatastoreError, Location};

use crate::{TIMEOUT, behaves_like_a_datastore, claim, record};

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("halo-ds-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

#[test]
fn a_directory_datastore_keeps_heartbeats_claims_and_records() {
    let dir = scratch("basics");
    runtime().block_on(async {
        let ds = Datastore::open("ds1", Location::Directory(dir.clone()), "prod", TIMEOUT).await.expect("open");
        behaves_like_a_datastore(&ds).await;
    });
    // The documented layout.
    for path in [
        ".halo/prod/hosts/host-1.json",
        ".halo/prod/claims/web-1@2.json",
        ".halo/prod/isolation/host-3/db@4.json",
        ".halo/prod/fences/host-2.json",
    ] {
        assert!(dir.join(path).is_file(), "{path}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn racing_writers_for_one_claim_exactly_one_wins() {
    let dir = scratch("race");
    let rt = runtime();
    let ds =
        Arc::new(rt.block_on(Datastore::open("ds1", Location::Directory(dir.clone()), "prod", TIMEOUT)).expect("open"));
    for generation in 1..=50 {
        let outcomes: Vec<ClaimOutcome> = rt.block_on(async {
            let tasks: Vec<_> = (1..=4)
                .map(|m| {
                    let ds = Arc::clone(&ds);
                    tokio::spawn(async move { ds.claim(&claim("vm-race", generation, &format!("host-{m}"))).await })
                })
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.push(t.await.expect("task"));
            }
            all
        });
        let won = outcomes.iter().filter(|o| **o == ClaimOutcome::Won).count();
        assert_eq!(won, 1, "generation {generation}: {outcomes:?}");
        let holder = rt.block_on(ds.read_claim("vm-race", generation)).expect("read").expect("exists");
        for o in &outcomes {
            if let ClaimOutcome::Lost(h) = o {
                assert_eq!(*h, holder, "every loser sees the winner's claim");
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_record_halo_did_not_write_is_reported_not_trusted() {
    let dir = scratch("bad");
    runtime().block_on(async {
        let ds = Datastore::open("ds1", Location::Directory(dir.clone()), "prod", TIMEOUT).await.expect("open");
        ds.write_heartbeat(&record("host-1", 7)).await.expect("write");
        let hosts = dir.join(".halo/prod/hosts");
        std::fs::write(hosts.join("host-2.json"), b"{ not json").expect("write");
        std::fs::write(hosts.join("host-3.json"), serde_json_record("host-4")).expect("write");
        let (records, problems) = ds.read_heartbeats().await.expect("read");
        assert_eq!(records, vec![record("host-1", 7)], "the good record is still read");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().all(|p| matches!(p, DatastoreError::BadRecord { .. })));
        assert!(problems.iter().any(|p| p.to_string().contains("names host host-4")), "{problems:?}");

        // The same for protected VMs: each bad record is named with its VM, the rest is read.
        let good =
            halo_datastore::ProtectedVm { name: "db".into(), domain_xml: "<domain/>".into(), spec: None, revision: 1 };
        ds.put_protected_vm(&good).await.expect("put");
        let vms = dir.join(".halo/prod/vms");
        std::fs::write(vms.join("web.json"), b"{ not json").expect("write");
        let mut other = serde_json::to_value(&good).expect("json");
        other["name"] = "mail".into();
        std::fs::write(vms.join("files.json"), other.to_string()).expect("write");
        let (read, problems) = ds.protected_vms().await.expect("read");
        assert_eq!(read, vec![good], "the good record is still read");
        let mut named: Vec<&str> = problems.iter().map(|(vm, _)| vm.as_str()).collect();
        named.sort_unstable();
        assert_eq!(named, ["files", "web"], "{problems:?}");
        assert!(problems.iter().any(|(_, p)| p.to_string().contains("names VM mail")), "{problems:?}");
    });
    let _ = std::fs::remove_dir_all(dir);
}

fn serde_json_record(host: &str) -> Vec<u8> {
    format!(r#"{{"host":"{host}","counter":1,"isolated":false,"stopped":[]}}"#).into_bytes()
}

#[test]
fn a_missing_directory_is_a_clear_error() {
    let result = runtime().block_on(Datastore::open(
        "ds9",
        Location::Directory(PathBuf::from("/proc/version/not-a-dir")),
        "prod",
        TIMEOUT,
    ));
    let error = result.err().expect("refused");
    assert!(error.to_string().starts_with("datastore ds9: create the layout:"), "{error}");
}

#[test]
fn the_core_driver_delivers_outcomes_as_inputs() {
    use halo_core::drivers::{DatastoreDriver as _, carry_out};
    use halo_core::{Action, Input};
    use halo_datastore::Datastores;

    let dir = scratch("driver");
    let rt = runtime();
    let ds = rt.block_on(Datastore::open("ds1", Location::Directory(dir.clone()), "prod", TIMEOUT)).expect("open");
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let mut drivers = Datastores::new(vec![ds], tx, rt.handle().clone());
    drivers.write_record("ds1", &record("host-1", 4));
    let next = |rx: &mut tokio::sync::mpsc::Receiver<Input>| rt.block_on(async { rx.recv().await }).expect("an input");
    assert_eq!(next(&mut rx), Input::DatastoreWritten { datastore: "ds1".into(), ok: true });
    drivers.read_records("ds1");
    assert_eq!(next(&mut rx), Input::DatastoreRead { datastore: "ds1".into(), records: Ok(vec![record("host-1", 4)]) });
    let c = claim("db", 2, "host-1");
    drivers.claim("ds1", &c);
    assert_eq!(next(&mut rx), Input::ClaimResult { claim: c.clone(), outcome: ClaimOutcome::Won });
    // Through the core's dispatcher: the same claim again is lost to itself.
    struct Only<'a>(&'a mut Datastores);
    impl halo_core::drivers::HeartbeatSender for Only<'_> {
        fn send_heartbeat(&mut self, _: &str, _: &std::sync::Arc<halo_core::Heartbeat>) {}
    }
    impl halo_core::drivers::DatastoreDriver for Only<'_> {
        fn write_record(&mut self, d: &str, r: &halo_core::DatastoreRecord) {
            self.0.write_record(d, r)
        }
        fn read_records(&mut self, d: &str) {
            self.0.read_records(d)
        }
        fn claim(&mut self, d: &str, c: &halo_core::Claim) {
            self.0.claim(d, c)
        }
        fn check_claim(&mut self, vm: &str, generation: u64) {
            self.0.check_claim(vm, generation)
        }
        fn record_fence(&mut self, record: &halo_core::FenceRecord) {
            self.0.record_fence(record)
        }
        fn record_definition(&mut self, vm: &str, moved: &[(String, String)]) {
            self.0.record_definition(vm, moved)
        }
    }
    impl halo_core::drivers::PingDriver for Only<'_> {
        fn ping(&mut self, _: &halo_core::node::PingTarget) {}
    }
    impl halo_core::drivers::HypervisorDriver for Only<'_> {
        fn start_vm(&mut self, _: &str, _: &str, _: u64) {}
        fn stop_vm(&mut self, _: &str, _: halo_core::StopReason, _: u32) {}
        fn migrate_vm(&mut self, _: &str, _: &str, _: &str) {}
        fn pause_vm(&mut self, _: &str) {}
        fn resume_vm(&mut self, _: &str) {}
        fn pause_copy(&mut self, _: &str, _: &str) {}
        fn read_load(&mut self, _: &str) {}
        fn copy_storage(&mut self, _: &str, _: &str, _: &str) {}
        fn finish_storage(&mut self, _: &str, _: &str, _: bool) {}
    }
    impl halo_core::drivers::FenceDriver for Only<'_> {
        fn fence_host(&mut self, _: &str) {}
        fn cancel_fence(&mut self, _: &str) {}
        fn monitor_fence(&mut self, _: &str) {}
    }
    impl halo_core::drivers::EventSink for Only<'_> {
        fn record(&mut self, _: halo_core::Event) {}
    }
    carry_out(Action::Claim { datastore: "ds1".into(), claim: c.clone() }, &mut Only(&mut drivers));
    assert_eq!(next(&mut rx), Input::ClaimResult { claim: c.clone(), outcome: ClaimOutcome::Lost(c.clone()) });
    // A claim looked up (a host resuming after a stall): found, or known not to exist.
    carry_out(Action::CheckClaim { vm: "db".into(), generation: 2 }, &mut Only(&mut drivers));
    assert_eq!(next(&mut rx), Input::ClaimChecked { vm: "db".into(), generation: 2, holder: Ok(Some(c)) });
    drivers.check_claim("db", 3);
    assert_eq!(next(&mut rx), Input::ClaimChecked { vm: "db".into(), generation: 3, holder: Ok(None) });
    // An unknown datastore is an answer too, never silence.
    drivers.read_records("ds9");
    assert!(
        matches!(next(&mut rx), Input::DatastoreRead { records: Err(e), .. } if e.contains("no datastore named ds9"))
    );
    // A storage move's new definition: the disk path rewritten, the revision raised; a VM
    // the datastores do not hold, or a path its definition does not name, is an error.
    let store = drivers.get("ds1").expect("ds1");
    let old = halo_datastore::ProtectedVm {
        name: "db".into(),
        domain_xml: "<domain><devices><disk type='file'><source file='/a/db.qcow2'/></disk></devices></domain>".into(),
        spec: None,
        revision: 5,
    };
    rt.block_on(store.put_protected_vm(&old)).expect("stored");
    let moved = vec![("/a/db.qcow2".to_string(), "/b/db.qcow2".to_string())];
    carry_out(Action::RecordDefinition { vm: "db".into(), moved: moved.clone() }, &mut Only(&mut drivers));
    assert_eq!(next(&mut rx), Input::DefinitionRecorded { vm: "db".into(), result: Ok(()) });
    let (records, _) = rt.block_on(store.protected_vms()).expect("read");
    let db = records.iter().find(|r| r.name == "db").expect("db");
    assert!(db.domain_xml.contains("file='/b/db.qcow2'") && db.revision > 5, "{db:?}");
    drivers.record_definition("db", &moved);
    assert!(
        matches!(next(&mut rx), Input::DefinitionRecorded { result: Err(e), .. } if e.contains("names no disk /a/db.qcow2"))
    );
    drivers.record_definition("nope", &moved);
    assert!(
        matches!(next(&mut rx), Input::DefinitionRecorded { result: Err(e), .. } if e.contains("no datastore holds nope"))
    );
    let _ = std::fs::remove_dir_all(dir);
}
