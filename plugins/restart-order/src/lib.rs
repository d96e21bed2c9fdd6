//! halo's default restart policy as a WebAssembly component (world
//! `halo:policy/restart-policy@0.1.3`): the very code of `halo_policy::restart`, which the
//! agent also runs natively as its built-in fallback. Written with `halo-plugin-sdk`.

#![deny(clippy::unwrap_used)]

use halo_plugin_sdk::policy;

struct DefaultRestartOrder;

impl halo_plugin_sdk::RestartPolicy for DefaultRestartOrder {
    fn plan(input: policy::RestartInput) -> Result<Vec<policy::Wave>, policy::RestartError> {
        policy::restart::plan_restart(&input)
    }
}

halo_plugin_sdk::export_restart_order!(DefaultRestartOrder);
