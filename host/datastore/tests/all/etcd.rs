//! The etcd backend against a real three-member etcd cluster (Debian's etcd-server) in the
//! lab's namespaces, reached from the lab's hosts: the common behaviour, claims raced from three
//! hosts, a host's record dropped with its lease, watches, one member lost, the quorum lost and
//! regained, one host cut from etcd.

use std::sync::Arc;
use std::time::{Duration, Instant};

use halo_core::ClaimOutcome;
use halo_datastore::{Datastore, Location, ProtectedVm};
use halo_lab::{Lab, LabSpec};

use crate::nfs::{host_runtime, on};
use crate::{TIMEOUT, behaves_like_a_datastore, claim, record};

fn lab_with_etcd(test: &str) -> Option<Lab> {
    if !halo_lab::for_test(test) {
        return None;
    }
    let name = format!("e{}-{}", std::process::id() % 100_000, test.chars().take(6).collect::<String>());
    let lab = Lab::up(LabSpec::new(&name, 3)).expect("the lab comes up");
    match lab.etcd_start() {
        Ok(()) => Some(lab),
        Err(halo_lab::LabError::Unavailable(reason)) if !reason.contains("did not take a write") => {
            halo_lab::skip_for_test(test, &reason);
            None
        }
        Err(e) => panic!("etcd did not start: {e}"),
    }
}

fn location(lab: &Lab, lease_ttl: Duration) -> Location {
    Location::Etcd { endpoints: lab.etcd_endpoints(), lease_ttl }
}

/// Every host claims generations `generations` of one VM at the same moment: the outcomes,
/// per generation, in host order.
fn race(
    stores: &[(tokio::runtime::Runtime, Arc<Datastore>)],
    vm: &'static str,
    generations: std::ops::Range<u64>,
) -> Vec<Vec<ClaimOutcome>> {
    let barrier = Arc::new(std::sync::Barrier::new(stores.len()));
    let handles: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(i, (rt, store))| {
            let (store, barrier, generations) = (Arc::clone(store), Arc::clone(&barrier), generations.clone());
            let handle = rt.handle().clone();
            std::thread::spawn(move || {
                let mut outcomes = Vec::new();
                for generation in generations {
                    barrier.wait();
                    let store = Arc::clone(&store);
                    let master = format!("host-{}", i + 1);
                    outcomes.push(
                        handle
                            .block_on(handle.spawn(async move { store.claim(&claim(vm, generation, &master)).await }))
                            .expect("task"),
                    );
                }
                outcomes
            })
        })
        .collect();
    let per_host: Vec<Vec<ClaimOutcome>> = handles.into_iter().map(|h| h.join().expect("racer")).collect();
    (0..per_host[0].len()).map(|g| per_host.iter().map(|outcomes| outcomes[g].clone()).collect()).collect()
}

/// Exactly one `Won` per generation, every other outcome `Lost` to the winner's claim or
/// `Failed` (never a second winner). The number of generations decided.
fn one_winner_each(outcomes: &[Vec<ClaimOutcome>], vm: &str, first: u64) -> usize {
    let mut decided = 0;
    for (g, round) in outcomes.iter().enumerate() {
        let winners: Vec<usize> =
            round.iter().enumerate().filter(|(_, o)| **o == ClaimOutcome::Won).map(|(i, _)| i).collect();
        assert!(winners.len() <= 1, "generation {}: two winners {winners:?}: {round:?}", first + g as u64);
        if let [winner] = winners[..] {
            decided += 1;
            let held = claim(vm, first + g as u64, &format!("host-{}", winner + 1));
            for outcome in round.iter().filter(|o| **o != ClaimOutcome::Won) {
                assert!(
                    *outcome == ClaimOutcome::Lost(held.clone()) || matches!(outcome, ClaimOutcome::Failed(_)),
                    "generation {}: {outcome:?} beside winner {held:?}",
                    first + g as u64
                );
            }
        } else {
            assert!(
                round.iter().all(|o| matches!(o, ClaimOutcome::Failed(_))),
                "generation {}: nobody won but someone lost: {round:?}",
                first + g as u64
            );
        }
    }
    decided
}

#[test]
fn an_etcd_store_works_races_survives_a_lost_member_and_takes_nothing_without_a_quorum() {
    let Some(lab) = lab_with_etcd("etcd") else { return };
    let stores: Vec<(tokio::runtime::Runtime, Arc<Datastore>)> = (1..=3)
        .map(|host| {
            let rt = host_runtime(&lab, host);
            let location = location(&lab, Duration::from_secs(2));
            let store =
                on(&rt, async move { Datastore::open("etcd", location, "lab", TIMEOUT).await }).expect("open etcd");
            (rt, Arc::new(store))
        })
        .collect();

    // The common behaviour, on etcd.
    let d = Arc::clone(&stores[0].1);
    on(&stores[0].0, async move { behaves_like_a_datastore(&d).await });

    // Three hosts race for 30 generations: exactly one winner each, the others see it.
    let outcomes = race(&stores, "race", 1..31);
    assert_eq!(one_winner_each(&outcomes, "race", 1), 30, "every claim was decided: {outcomes:?}");
    let winners: std::collections::BTreeSet<usize> =
        outcomes.iter().filter_map(|r| r.iter().position(|o| *o == ClaimOutcome::Won)).collect();
    println!("etcd race: 30 generations, 3 hosts, winners among hosts {winners:?}");

    // A watch wakes at a change of the protected VMs.
    let woken = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (w, d) = (Arc::clone(&woken), Arc::clone(&stores[1].1));
    stores[1].0.spawn(async move {
        let wake = move || {
            w.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        };
        d.watch_catalog(&wake).await
    });
    std::thread::sleep(Duration::from_millis(500));
    let vm = ProtectedVm { name: "watched".into(), domain_xml: "<domain/>".into(), spec: None, revision: 1 };
    let d = Arc::clone(&stores[0].1);
    let began = Instant::now();
    on(&stores[0].0, async move { d.put_protected_vm(&vm).await }).expect("put");
    while woken.load(std::sync::atomic::Ordering::SeqCst) == 0 && began.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(woken.load(std::sync::atomic::Ordering::SeqCst) > 0, "the watch saw the new VM");
    println!("etcd watch: woken {:.1} ms after the put", began.elapsed().as_secs_f64() * 1e3);

    // A host that stops renewing its lease loses its record after the time to live (2 s).
    let (rt, d) = (&stores[2].0, Arc::clone(&stores[2].1));
    on(rt, async move { d.write_heartbeat(&record("host-3", 1)).await }).expect("write");
    let d = Arc::clone(&stores[0].1);
    let (records, _) = on(&stores[0].0, async move { d.read_heartbeats().await }).expect("read");
    assert!(records.iter().any(|r| r.host == "host-3"), "{records:?}");
    let silent = Instant::now();
    let gone = loop {
        let d = Arc::clone(&stores[0].1);
        let (records, _) = on(&stores[0].0, async move { d.read_heartbeats().await }).expect("read");
        if !records.iter().any(|r| r.host == "host-3") {
            break silent.elapsed();
        }
        assert!(silent.elapsed() < Duration::from_secs(10), "host-3's record outlived its lease: {records:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(gone >= Duration::from_millis(1_500), "removed after {gone:?}, before its lease ran out");
    println!("etcd lease: a silent host's record gone after {:.1} s (ttl 2 s)", gone.as_secs_f64());

    // One member lost: within a few seconds claims are decided again, one winner each.
    lab.etcd_stop(1).expect("stop member 1");
    let began = Instant::now();
    let mut first = 100;
    loop {
        let outcomes = race(&stores, "member-lost", first..first + 5);
        let decided = one_winner_each(&outcomes, "member-lost", first);
        first += 5;
        if decided == 5 {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(20), "no claim decided 20 s after a member was lost");
    }
    println!("etcd: one member lost, claims decided again after {:.1} s", began.elapsed().as_secs_f64());

    // The quorum lost: nothing is won, every claim fails within the timeout, reads say so.
    lab.etcd_stop(2).expect("stop member 2");
    let began = Instant::now();
    let outcomes = race(&stores, "no-quorum", 1..4);
    assert_eq!(one_winner_each(&outcomes, "no-quorum", 1), 0, "{outcomes:?}");
    assert!(began.elapsed() < TIMEOUT * 3 * 2, "three rounds of claims took {:?}", began.elapsed());
    let d = Arc::clone(&stores[0].1);
    let read = on(&stores[0].0, async move { d.read_claim("race", 1).await });
    assert!(read.is_err(), "without a quorum a read answers nothing old: {read:?}");
    let d = Arc::clone(&stores[0].1);
    let written = on(&stores[0].0, async move { d.write_heartbeat(&record("host-1", 50)).await });
    assert!(written.is_err(), "without a quorum a heartbeat record is not taken: {written:?}");

    // The members back: the claims taken before are there, new ones are decided.
    lab.etcd_member_start(1).expect("start member 1");
    lab.etcd_member_start(2).expect("start member 2");
    lab.etcd_wait(Duration::from_secs(30)).expect("the quorum is back");
    let began = Instant::now();
    loop {
        let d = Arc::clone(&stores[1].1);
        if let Ok(Some(held)) = on(&stores[1].0, async move { d.read_claim("race", 1).await }) {
            assert_eq!(held.vm, "race");
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(20), "the old claims did not come back");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Host-1 cut from etcd: its operations fail within the timeout, host-2's go on.
    lab.block_etcd(1, true).expect("block host-1");
    let d = Arc::clone(&stores[0].1);
    let began = Instant::now();
    let outcome = on(&stores[0].0, async move { d.claim(&claim("cut", 1, "host-1")).await });
    assert!(matches!(outcome, ClaimOutcome::Failed(_)), "{outcome:?}");
    assert!(began.elapsed() < TIMEOUT + Duration::from_secs(1), "a cut host waited {:?}", began.elapsed());
    let outcome = claim_until_decided(&stores[1], "host-2");
    assert_eq!(outcome, ClaimOutcome::Won, "host-2 still reaches etcd");
    lab.block_etcd(1, false).expect("unblock host-1");
    let outcome = claim_until_decided(&stores[0], "host-1");
    assert_eq!(outcome, ClaimOutcome::Lost(claim("cut", 1, "host-2")), "host-1 back sees host-2's claim");
}

/// `master` claims `cut@1` from its host until the claim is decided (not `Failed`), at most 20 s.
fn claim_until_decided(store: &(tokio::runtime::Runtime, Arc<Datastore>), master: &'static str) -> ClaimOutcome {
    let began = Instant::now();
    loop {
        let d = Arc::clone(&store.1);
        let outcome = on(&store.0, async move { d.claim(&claim("cut", 1, master)).await });
        if !matches!(outcome, ClaimOutcome::Failed(_)) || began.elapsed() > Duration::from_secs(20) {
            return outcome;
        }
    }
}
