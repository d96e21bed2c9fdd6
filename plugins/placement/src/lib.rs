//! halo's default placement engine as a WebAssembly component (world
//! `halo:policy/columnar-placement-engine@0.1.3`): the very code of `halo_policy::placement`,
//! which the agent also runs natively as its built-in fallback. Written with
//! `halo-plugin-sdk`.
//!
//! It serves the columnar world: VMs, hosts, labels, datastores and groups arrive as positions,
//! every field of the VMs and hosts as one flat list of numbers, which a 10,000-VM placement
//! crosses into the sandbox far faster than the named `placement-engine` input
//! (docs/performance.md).

#![deny(clippy::unwrap_used)]

#[cfg(target_arch = "wasm32")]
mod bump;

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: bump::Bump = bump::Bump::new();

use halo_plugin_sdk::policy::compact::{CompactInput, CompactPlacement};
use halo_plugin_sdk::policy::placement;

struct DefaultPlacement;

impl halo_plugin_sdk::CompactPlacementPolicy for DefaultPlacement {
    fn place(input: CompactInput) -> Result<CompactPlacement, String> {
        placement::place_compact(&input)
    }
}

halo_plugin_sdk::export_compact_placement!(DefaultPlacement);
