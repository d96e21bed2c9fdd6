//! halo's default balancing policy as a WebAssembly component (world
//! `halo:policy/balancing-policy@0.1.3`): the very code of `halo_policy::balance::propose`,
//! which the agent also runs natively as its built-in fallback. It evens out the hosts' memory
//! and CPU shares by live migrations, each paying a cost, within the operator's rules. Written
//! with `halo-plugin-sdk`.

#![deny(clippy::unwrap_used)]

#[cfg(target_arch = "wasm32")]
#[path = "../../placement/src/bump.rs"]
mod bump;

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: bump::Bump = bump::Bump::new();

use halo_plugin_sdk::policy::balance::{self, BalanceInput, BalanceMove};

struct DefaultBalancing;

impl halo_plugin_sdk::BalancingPolicy for DefaultBalancing {
    fn propose(input: BalanceInput) -> Result<Vec<BalanceMove>, String> {
        Ok(balance::propose(&input))
    }
}

halo_plugin_sdk::export_balancing!(DefaultBalancing);
