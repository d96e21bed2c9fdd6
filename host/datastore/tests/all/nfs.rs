//! The NFS backend against the lab's NFS server (nfs-ganesha), from the lab's hosts: the
//! common behaviour, two hosts racing for claims, the server stopped and started again, one
//! host's storage traffic blocked.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use halo_core::ClaimOutcome;
use halo_datastore::{Datastore, DatastoreError, Location, NfsTarget};
use halo_lab::{Lab, LabSpec};

use crate::{TIMEOUT, behaves_like_a_datastore, claim, record};

/// A runtime whose threads live in host `host`'s network namespace: every connection its
/// tasks open comes from that host.
pub fn host_runtime(lab: &Lab, host: usize) -> tokio::runtime::Runtime {
    let ns = lab.netns(host);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(move || halo_lab::join_netns(&ns).expect("enter the host's namespace"))
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn on<T: Send + 'static>(rt: &tokio::runtime::Runtime, f: impl Future<Output = T> + Send + 'static) -> T {
    rt.block_on(rt.spawn(f)).expect("task")
}

fn target(lab: &Lab) -> Location {
    Location::Nfs(NfsTarget {
        server: IpAddr::V4(lab.storage_address()),
        export: "/ds1".into(),
        mount_port: Some(halo_lab::MOUNT_PORT),
        nfs_port: Some(halo_lab::NFS_PORT),
    })
}

fn lab_with_nfs(test: &str) -> Option<Lab> {
    if !halo_lab::for_test(test) {
        return None;
    }
    let name = format!("d{}-{}", std::process::id() % 100_000, test.chars().take(6).collect::<String>());
    let lab = Lab::up(LabSpec::new(&name, 2)).expect("the lab comes up");
    match lab.nfs_start(&["ds1"]) {
        Ok(()) => Some(lab),
        Err(halo_lab::LabError::Unavailable(reason)) => {
            halo_lab::skip_for_test(test, &reason);
            None
        }
        Err(e) => panic!("the NFS server did not start: {e}"),
    }
}

#[test]
fn an_nfs_datastore_works_races_survives_a_server_restart_and_a_blocked_host() {
    let Some(lab) = lab_with_nfs("nfs") else { return };
    let (rt1, rt2) = (host_runtime(&lab, 1), host_runtime(&lab, 2));
    let location = target(&lab);
    let open = |rt: &tokio::runtime::Runtime| {
        let location = location.clone();
        Arc::new(on(rt, async move { Datastore::open("ds1", location, "lab", TIMEOUT).await }).expect("open over NFS"))
    };
    let (ds1, ds2) = (open(&rt1), open(&rt2));

    // The common behaviour, over NFS.
    let d = Arc::clone(&ds1);
    on(&rt1, async move { behaves_like_a_datastore(&d).await });

    // Heartbeats written by host-1 advance as host-2 reads them.
    for counter in 10..13 {
        let d = Arc::clone(&ds1);
        on(&rt1, async move { d.write_heartbeat(&record("host-1", counter)).await }).expect("write");
        let d = Arc::clone(&ds2);
        let (records, _) = on(&rt2, async move { d.read_heartbeats().await }).expect("read");
        assert!(records.contains(&record("host-1", counter)), "{records:?}");
    }

    // Two hosts race for the same claims: exactly one wins each.
    let race = |rt: &tokio::runtime::Runtime, ds: &Arc<Datastore>, master: &'static str| {
        let ds = Arc::clone(ds);
        rt.spawn(async move {
            let mut outcomes = Vec::new();
            for generation in 1..=30 {
                outcomes.push(ds.claim(&claim("vm-race", generation, master)).await);
            }
            outcomes
        })
    };
    let (a, b) = (race(&rt1, &ds1, "host-1"), race(&rt2, &ds2, "host-2"));
    let a = rt1.block_on(a).expect("task");
    let b = rt2.block_on(b).expect("task");
    for (generation, (x, y)) in a.iter().zip(&b).enumerate() {
        let won = [x, y].iter().filter(|o| ***o == ClaimOutcome::Won).count();
        assert_eq!(won, 1, "generation {}: {x:?} / {y:?}", generation + 1);
        assert!([x, y].iter().all(|o| matches!(o, ClaimOutcome::Won | ClaimOutcome::Lost(_))), "{x:?} / {y:?}");
    }

    // The server stops: writes fail within the timeout, and say so.
    lab.nfs_stop().expect("stop");
    let d = Arc::clone(&ds1);
    let started = Instant::now();
    let failed = on(&rt1, async move { d.write_heartbeat(&record("host-1", 20)).await });
    let took = started.elapsed();
    assert!(matches!(failed, Err(DatastoreError::Timeout { .. } | DatastoreError::Io { .. })), "{failed:?}");
    assert!(took < TIMEOUT + Duration::from_millis(500), "bounded by the timeout: {took:?}");
    let d = Arc::clone(&ds1);
    let refused = on(&rt1, async move { d.claim(&claim("vm-down", 1, "host-1")).await });
    assert!(matches!(refused, ClaimOutcome::Failed(_)), "no claim without the datastore: {refused:?}");

    // It comes back: the same datastore objects reconnect, and what was written is still there.
    lab.nfs_start(&["ds1"]).expect("restart");
    let d = Arc::clone(&ds1);
    on(&rt1, async move { d.write_heartbeat(&record("host-1", 21)).await }).expect("write after the restart");
    let d = Arc::clone(&ds2);
    let holder = on(&rt2, async move { d.read_claim("vm-race", 1).await }).expect("read");
    assert!(holder.is_some(), "claims survive a server restart");
    let d = Arc::clone(&ds2);
    let again = on(&rt2, async move { d.claim(&claim("vm-race", 1, "host-2")).await });
    assert!(matches!(again, ClaimOutcome::Lost(_)), "a claim stays taken after a restart: {again:?}");

    // host-2's storage traffic is blocked: its writes time out, host-1's still work.
    lab.block_storage(2, true).expect("block");
    let d = Arc::clone(&ds2);
    let started = Instant::now();
    let blocked = on(&rt2, async move { d.write_heartbeat(&record("host-2", 1)).await });
    assert!(blocked.is_err(), "{blocked:?}");
    assert!(started.elapsed() < TIMEOUT + Duration::from_millis(500));
    let d = Arc::clone(&ds1);
    on(&rt1, async move { d.write_heartbeat(&record("host-1", 22)).await }).expect("host-1 unaffected");
    lab.block_storage(2, false).expect("unblock");
    let d = Arc::clone(&ds2);
    on(&rt2, async move { d.write_heartbeat(&record("host-2", 2)).await }).expect("host-2 back");
    lab.nfs_stop().expect("stop");
}
