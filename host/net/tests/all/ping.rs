//! Isolation-address pings across namespaces: the gateway answers while the link is up, and
//! stops answering when it is cut; an address nobody has does not answer.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use halo_net::ping::ping_blocking;

#[test]
fn an_isolation_address_answers_until_the_link_is_cut() {
    let Some(lab) = crate::lab("ping", 1) else { return };
    let gateway = IpAddr::V4(lab.gateway("A").expect("gateway"));
    let nobody = IpAddr::V4(lab.unused_address("A").expect("address"));
    let answered = lab.enter(1, move || ping_blocking(gateway, Duration::from_secs(1))).expect("enter");
    assert!(answered.expect("ping works"), "the gateway answers");

    let started = Instant::now();
    let silent = lab.enter(1, move || ping_blocking(nobody, Duration::from_millis(500))).expect("enter");
    assert!(!silent.expect("ping works"), "nobody has that address");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(3), "the timeout bounds the wait: {waited:?}");

    lab.set_link(1, "A", false).expect("cut");
    let cut = lab.enter(1, move || ping_blocking(gateway, Duration::from_millis(500))).expect("enter");
    assert!(!cut.expect("ping works"), "a cut link: no answer");
    lab.set_link(1, "A", true).expect("heal");
    let back = lab.enter(1, move || ping_blocking(gateway, Duration::from_secs(1))).expect("enter");
    assert!(back.expect("ping works"), "healed: answers again");
}

#[test]
fn the_core_ping_driver_answers_with_inputs() {
    use halo_core::Input;
    use halo_core::drivers::PingDriver;
    use halo_core::node::PingTarget;

    let Some(lab) = crate::lab("pingdrv", 2) else { return };
    let peer = IpAddr::V4(lab.address(2, "A").expect("address"));
    let gateway = lab.gateway("A").expect("gateway").to_string();
    let ns = lab.netns(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(move || halo_lab::join_netns(&ns).expect("enter host-1"))
        .enable_all()
        .build()
        .expect("runtime");
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let peers = [("host-2".to_string(), peer)].into_iter().collect();
    let mut pinger = halo_net::Pinger::new(peers, Duration::from_millis(500), tx, rt.handle().clone());
    let mut next = || rt.block_on(async { rx.recv().await }).expect("an input");
    pinger.ping(&PingTarget::Host("host-2".into()));
    assert_eq!(next(), Input::PingResult { target: PingTarget::Host("host-2".into()), answered: true });
    pinger.ping(&PingTarget::IsolationAddress(gateway.clone()));
    assert_eq!(next(), Input::PingResult { target: PingTarget::IsolationAddress(gateway), answered: true });
    pinger.ping(&PingTarget::Host("host-7".into()));
    assert_eq!(
        next(),
        Input::PingResult { target: PingTarget::Host("host-7".into()), answered: false },
        "unknown host: no answer, said at once"
    );
    pinger.ping(&PingTarget::IsolationAddress("gw.example".into()));
    assert!(matches!(next(), Input::PingResult { answered: false, .. }), "not an address: no answer");
    lab.set_link(2, "A", false).expect("cut");
    pinger.ping(&PingTarget::Host("host-2".into()));
    assert_eq!(next(), Input::PingResult { target: PingTarget::Host("host-2".into()), answered: false });
}

/// A ping is several echo requests spread over its timeout: with the peer's firewall dropping
/// the first two of every three, the third is answered — one or two lost packets never read as
/// "no answer" (the master's fence waits for that "no").
#[test]
fn a_ping_survives_lost_echo_requests() {
    let Some(lab) = crate::lab("pinglost", 2) else { return };
    let peer = IpAddr::V4(lab.address(2, "A").expect("address"));
    // The peer's firewall (nftables, which the lab uses anyway): every third echo request
    // passes (the third, sixth, …), the others are dropped.
    let nft = |args: &[&str]| {
        let status = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.netns(2), "nft"])
            .args(args)
            .status()
            .expect("nft runs");
        assert!(status.success(), "nft {args:?}");
    };
    nft(&["add", "table", "inet", "halo_ping"]);
    nft(&["add", "chain", "inet", "halo_ping", "input", "{ type filter hook input priority 0; }"]);
    nft(&[
        "add",
        "rule",
        "inet",
        "halo_ping",
        "input",
        "icmp",
        "type",
        "echo-request",
        "numgen",
        "inc",
        "mod",
        "3",
        "!=",
        "2",
        "drop",
    ]);
    let timeout = Duration::from_millis(600);
    let started = Instant::now();
    let answered = lab.enter(1, move || ping_blocking(peer, timeout)).expect("enter");
    let took = started.elapsed();
    assert!(answered.expect("ping works"), "the third request is answered");
    assert!(took >= timeout * 2 / 3, "answered only after the third request went out: {took:?}");
    // Every request dropped: no answer, after the whole timeout.
    nft(&["flush", "chain", "inet", "halo_ping", "input"]);
    nft(&["add", "rule", "inet", "halo_ping", "input", "icmp", "type", "echo-request", "drop"]);
    let started = Instant::now();
    let silent = lab.enter(1, move || ping_blocking(peer, timeout)).expect("enter");
    assert!(!silent.expect("ping works"), "nothing answered");
    assert!(started.elapsed() >= timeout, "waited the whole timeout: {:?}", started.elapsed());
}
