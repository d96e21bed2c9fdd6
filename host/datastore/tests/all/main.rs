//! The datastore driver against the real thing: a directory on this machine's filesystem, and
//! the lab's NFS server (nfs-ganesha) reached from the lab's hosts over TCP (root needed;
//! without it, or without nfs-ganesha, the NFS tests print why they skip), and a three-member
//! etcd cluster in the lab's namespaces (the etcd backend; without etcd it prints why it skips).

#![allow(missing_docs)]

mod directory;
mod etcd;
mod nfs;

use std::time::Duration;

use halo_core::{Claim, ClaimOutcome, DatastoreRecord, VmReport};
use halo_datastore::{ClusterSettings, Datastore, IsolationRecord, ProtectedVm};

pub const TIMEOUT: Duration = Duration::from_secs(2);

pub fn record(host: &str, counter: u64) -> DatastoreRecord {
    DatastoreRecord {
        host: host.into(),
        counter,
        isolated: counter.is_multiple_of(2),
        stopped: vec![VmReport { vm: "db".into(), generation: counter }],
    }
}

pub fn claim(vm: &str, generation: u64, master: &str) -> Claim {
    Claim { vm: vm.into(), generation, master: master.into(), epoch: 3, host: format!("target-of-{master}") }
}

/// What every backend must do, run against one datastore.
pub async fn behaves_like_a_datastore(ds: &Datastore) {
    // Heartbeats advance and are read back whole.
    for counter in 1..=5 {
        ds.write_heartbeat(&record("host-1", counter)).await.expect("write");
    }
    ds.write_heartbeat(&record("host/2 with odd name", 9)).await.expect("write");
    let (records, problems) = ds.read_heartbeats().await.expect("read");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(records, vec![record("host-1", 5), record("host/2 with odd name", 9)]);

    // A fence record: the latest per host, read back whole.
    assert_eq!(ds.fence_record("host-2").await.expect("read"), None);
    for (device, outcome) in
        [(None, "fence_redfish: no answer within 10 s (killed)"), (Some("fence_redfish 10.0.0.9"), "off")]
    {
        let fence = halo_core::FenceRecord {
            host: "host-2".into(),
            master: "host-1".into(),
            epoch: 3,
            by_operator: false,
            device: device.map(String::from),
            outcome: outcome.into(),
            took_ms: 250,
        };
        ds.put_fence_record(&fence).await.expect("write");
        assert_eq!(ds.fence_record("host-2").await.expect("read"), Some(fence));
    }

    // A claim: the first wins, the second loses to the first's holder.
    let first = claim("web-1", 2, "host-1");
    assert_eq!(ds.claim(&first).await, ClaimOutcome::Won);
    assert_eq!(ds.claim(&claim("web-1", 2, "host-2")).await, ClaimOutcome::Lost(first.clone()));
    assert_eq!(ds.claim(&claim("web-1", 3, "host-2")).await, ClaimOutcome::Won, "the next generation is free");
    assert_eq!(ds.read_claim("web-1", 2).await.expect("read"), Some(first));
    assert_eq!(ds.read_claim("web-1", 9).await.expect("read"), None);

    // Isolation records and protected VMs.
    let stop = IsolationRecord {
        host: "host-3".into(),
        vm: "db".into(),
        generation: 4,
        reason: "isolation".into(),
        at_unix_ms: 1,
    };
    ds.record_isolation(&stop).await.expect("record");
    assert_eq!(ds.isolation_records("host-3").await.expect("read"), vec![stop.clone()]);
    assert!(ds.isolation_records("host-9").await.expect("read").is_empty());
    let vm = ProtectedVm {
        name: "db".into(),
        domain_xml: "<domain type='kvm'><name>db</name></domain>".into(),
        spec: None,
        revision: 1,
    };
    // The catalog stamp changes with every change of the protected VMs, and only then.
    assert_eq!(ds.catalog_stamp().await.expect("stamp"), None, "no VM was ever protected here");
    ds.put_protected_vm(&vm).await.expect("put");
    let after_put = ds.catalog_stamp().await.expect("stamp");
    assert!(after_put.is_some(), "storing a VM sets the stamp");
    assert_eq!(ds.protected_vms().await.expect("list"), (vec![vm.clone()], vec![]));
    ds.write_heartbeat(&record("host-1", 6)).await.expect("write");
    ds.record_isolation(&IsolationRecord { generation: 5, ..stop.clone() }).await.expect("record");
    assert_eq!(ds.catalog_stamp().await.expect("stamp"), after_put, "heartbeats and other records leave it");
    ds.put_protected_vm(&ProtectedVm { revision: 2, ..vm.clone() }).await.expect("put again");
    let after_update = ds.catalog_stamp().await.expect("stamp");
    assert_ne!(after_update, after_put, "storing it again changes the stamp");
    ds.remove_protected_vm("db").await.expect("remove");
    let after_remove = ds.catalog_stamp().await.expect("stamp");
    assert_ne!(after_remove, after_update, "removing changes the stamp");
    ds.remove_protected_vm("db").await.expect("removing twice is fine");
    assert_eq!(ds.protected_vms().await.expect("list"), (vec![], vec![]));
    assert_eq!(ds.settings().await.expect("no settings yet"), ClusterSettings::default());
    let settings = ClusterSettings { ha_enabled: Some(false), revision: 7 };
    ds.put_settings(&settings).await.expect("put settings");
    assert_eq!(ds.settings().await.expect("settings"), settings);
}
