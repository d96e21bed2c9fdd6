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
