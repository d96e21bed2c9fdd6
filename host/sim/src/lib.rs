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

pub use faults::{Fault, FaultKind, FaultParseError, FenceDevice, Schedule, parse_duration};
pub use halo_core::Millis;
pub use world::{Outcome, PlanSnapshot, Sim, SimOptions, TimelineEntry, TimelineKind};

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

/// Median, 95th percentile and maximum of some durations (nearest rank), or `None` when
/// there are none.
pub fn percentiles(values: &[Millis]) -> Option<Percentiles> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = |p: usize| sorted[((sorted.len() * p).div_ceil(100)).saturating_sub(1).min(sorted.len() - 1)];
    Some(Percentiles { count: sorted.len(), p50: rank(50), p95: rank(95), max: sorted[sorted.len() - 1] })
}

/// See [`percentiles`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Percentiles {
    /// How many values.
    pub count: usize,
    /// Median.
    pub p50: Millis,
    /// 95th percentile.
    pub p95: Millis,
    /// Largest.
    pub max: Millis,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        assert_eq!(percentiles(&[]), None);
        let p = percentiles(&[5, 1, 4, 2, 3]).expect("values");
        assert_eq!((p.count, p.p50, p.p95, p.max), (5, 3, 5, 5));
        let hundred: Vec<Millis> = (1..=100).collect();
        let p = percentiles(&hundred).expect("values");
        assert_eq!((p.p50, p.p95, p.max), (50, 95, 100));
    }
}
