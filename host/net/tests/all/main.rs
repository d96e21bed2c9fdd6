//! The network drivers against the real thing: UDP between network namespaces of a lab built
//! for the test (root needed; without it each test prints why it skips), and ICMP to the lab's
//! gateways.

#![allow(missing_docs)]

mod heartbeats;
mod ping;

use halo_lab::{Lab, LabSpec};

/// A lab for one test, or `None` (with the reason printed) where this machine cannot build one.
pub fn lab(test: &str, hosts: usize) -> Option<Lab> {
    if !halo_lab::for_test(test) {
        return None;
    }
    // One lab per test (tests run in parallel); every lab uses the same private /24 inside
    // its own namespaces, with no route out.
    let name = format!("t{}-{}", std::process::id() % 100_000, test.chars().take(6).collect::<String>());
    Some(Lab::up(LabSpec::new(&name, hosts)).expect("the lab comes up"))
}

/// [`lab`] in the shared layout: every network on the whole /24, a host with one address on
/// all of them.
pub fn shared_lab(test: &str, hosts: usize) -> Option<Lab> {
    if !halo_lab::for_test(test) {
        return None;
    }
    let name = format!("t{}-{}", std::process::id() % 100_000, test.chars().take(6).collect::<String>());
    Some(Lab::up(LabSpec::new(&name, hosts).with_layout(halo_lab::Layout::Shared)).expect("the lab comes up"))
}
