//! Checks of a policy input before any policy sees it: names must be unique, or no answer
//! could be validated. Inputs come from the agent (trusted) and from files handed to
//! `halo plugin run` (not trusted), so both pass here.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, DefaultHasher};

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
pub fn name_index<'a>(
    names: impl Iterator<Item = &'a str>,
) -> HashMap<&'a str, usize, BuildHasherDefault<DefaultHasher>> {
    let mut index = HashMap::default();
    for (i, name) in names.enumerate() {
        index.insert(name, i);
    }
    index
}
