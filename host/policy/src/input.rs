//! Checks of a policy input before any policy sees it: names must be unique, or no answer
//! could be validated. Inputs come from the agent (trusted) and from files handed to
//! `halo plugin run` (not trusted), so both pass here.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use crate::types::{IsolationInput, PlacementInput, RestartInput};

/// Why an input cannot be decided on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    /// Two VMs share a name.
    #[error("VM `{0}` appears twice in the input")]
    DuplicateVm(String),
    /// Two hosts share a name.
    #[error("host `{0}` appears twice in the input")]
    DuplicateHost(String),
    /// An empty name.
    #[error("a {0} has an empty name")]
    EmptyName(&'static str),
    /// A position that names nothing (a balancing input's VMs, hosts and rules are positions).
    #[error("{what} names position {position}, but there are {len}")]
    BadPosition {
        /// Where the position is (`vms[3].host`).
        what: String,
        /// The position.
        position: u32,
        /// How many there are.
        len: usize,
    },
    /// A list of names that is not one per entry.
    #[error("{what} has {names} names for {entries} entries")]
    NameCount {
        /// Which list.
        what: &'static str,
        /// Names given.
        names: usize,
        /// Entries.
        entries: usize,
    },
}

fn unique<'a>(
    names: impl Iterator<Item = &'a str>,
    what: &'static str,
    dup: fn(String) -> InvalidInput,
) -> Result<(), InvalidInput> {
    let mut seen = BTreeSet::new();
    for name in names {
        if name.is_empty() {
            return Err(InvalidInput::EmptyName(what));
        }
        if !seen.insert(name) {
            return Err(dup(name.to_string()));
        }
    }
    Ok(())
}

/// Unique, non-empty VM names.
pub fn check_isolation_input(input: &IsolationInput) -> Result<(), InvalidInput> {
    unique(input.vms.iter().map(|v| v.name.as_str()), "VM", InvalidInput::DuplicateVm)
}

/// Unique, non-empty VM names.
pub fn check_storage_input(input: &crate::types::StorageInput) -> Result<(), InvalidInput> {
    unique(input.vms.iter().map(|v| v.name.as_str()), "VM", InvalidInput::DuplicateVm)
}

/// Unique, non-empty VM and host names.
pub fn check_placement_input(input: &PlacementInput) -> Result<(), InvalidInput> {
    unique(input.vms.iter().map(|v| v.name.as_str()), "VM", InvalidInput::DuplicateVm)?;
    unique(input.hosts.iter().map(|h| h.name.as_str()), "host", InvalidInput::DuplicateHost)
}

/// Unique, non-empty VM names.
pub fn check_restart_input(input: &RestartInput) -> Result<(), InvalidInput> {
    unique(input.vms.iter().map(|v| v.name.as_str()), "VM", InvalidInput::DuplicateVm)
}

/// A name → position map with a fixed hasher (deterministic, and no randomness source,
/// which a plugin sandbox would refuse). Later duplicates win; inputs are checked first.
pub fn name_index<'a>(names: impl Iterator<Item = &'a str>) -> HashMap<&'a str, usize, BuildHasherDefault<NameHasher>> {
    let mut index = HashMap::with_capacity_and_hasher(names.size_hint().0, BuildHasherDefault::default());
    for (i, name) in names.enumerate() {
        index.insert(name, i);
    }
    index
}

/// The hasher of [`name_index`]: FxHash's multiply-and-rotate over 8-byte words, several times
/// cheaper than SipHash on short names (validating a 10,000-VM answer looks up 20,000 names).
/// It is not built to resist chosen collisions, and needs not: the keys are the names of the
/// agent's own input; a plugin's answer only looks names up, each lookup one probe sequence.
#[derive(Debug, Default, Clone, Copy)]
pub struct NameHasher(u64);

impl NameHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut w = [0; 8];
            w.copy_from_slice(word);
            self.add(u64::from_le_bytes(w));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut w = [0; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    /// SplitMix64's finaliser: the multiply leaves the low bits depending only on the low
    /// bytes of the words (a common prefix such as `vm-0`), and the table indexes by low bits.
    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn name_index_finds_every_name_at_its_position() {
        let names: Vec<String> = (0..10_000).map(|i| format!("vm-{i:05}")).collect();
        let index = name_index(names.iter().map(String::as_str));
        assert_eq!(index.len(), names.len());
        for (i, name) in names.iter().enumerate() {
            assert_eq!(index.get(name.as_str()), Some(&i), "{name}");
        }
        assert_eq!(index.get("vm-10000"), None);
        assert_eq!(index.get(""), None);
    }

    #[test]
    fn name_hasher_spreads_names_with_a_common_prefix_over_the_low_bits() {
        // The table picks a bucket by the low bits: names alike but for their end must not
        // crowd into a few buckets (plain FxHash puts all of these into one).
        let hasher = BuildHasherDefault::<NameHasher>::default();
        let buckets: BTreeSet<u64> = (0..4096).map(|i| hasher.hash_one(format!("vm-{i:05}")) & 4095).collect();
        assert!(buckets.len() > 2400, "only {} of 4096 buckets used", buckets.len());
    }
}
