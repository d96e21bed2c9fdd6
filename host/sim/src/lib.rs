//! The deterministic cluster simulator: N hosts, each running the real [`halo_core::Node`],
//! over a simulated clock, networks (loss, delay, partitions, one-way cuts, link loss),
//! datastores (per-host reachability, latency, server restarts), hypervisors (VM start
//! time, crashes) and host faults (crash, reboot, agent crash with a watchdog, isolation).
//!
//! Faults come from a seed; the same seed replays the same run exactly (one RNG, ordered
//! maps, an event queue ordered by time then insertion). After every step the invariants of
//! the brief are checked; a violation carries the seed and the event trace.

#![forbid(unsafe_code)]

mod faults;
pub mod scenario;
mod world;

pub use faults::{Fault, FaultKind, Schedule};
pub use world::{Outcome, Sim, SimOptions, TimelineEntry};

/// SplitMix64: small, fast, and the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// True with `percent` % probability.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
