//! halo's default isolation response as a WebAssembly component (world
//! `halo:policy/isolation-storage-policy@0.1.4`: the isolation response and the storage
//! response): the very code of `halo_policy::isolation`, which the agent also runs natively as
//! its built-in fallback. Written with `halo-plugin-sdk`.

#![deny(clippy::unwrap_used)]

use halo_plugin_sdk::policy;

struct DefaultIsolation;

impl halo_plugin_sdk::IsolationPolicy for DefaultIsolation {
    fn decide(input: policy::IsolationInput) -> Result<Vec<policy::VmIsolationDecision>, String> {
        policy::isolation::decide_isolation(&input)
    }
}

impl halo_plugin_sdk::StoragePolicy for DefaultIsolation {
    fn decide_storage(input: policy::StorageInput) -> Result<Vec<policy::VmStorageDecision>, String> {
        policy::isolation::decide_storage(&input)
    }
}

halo_plugin_sdk::export_isolation_and_storage!(DefaultIsolation);
