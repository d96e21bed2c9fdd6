//! halo's default isolation response as a WebAssembly component (world
//! `halo:policy/isolation-policy@0.1.3`): the very code of `halo_policy::isolation`, which
//! the agent also runs natively as its built-in fallback. Written with `halo-plugin-sdk`.

#![deny(clippy::unwrap_used)]

use halo_plugin_sdk::policy;

struct DefaultIsolation;

impl halo_plugin_sdk::IsolationPolicy for DefaultIsolation {
    fn decide(input: policy::IsolationInput) -> Result<Vec<policy::VmIsolationDecision>, String> {
        policy::isolation::decide_isolation(&input)
    }
}

halo_plugin_sdk::export_isolation!(DefaultIsolation);
