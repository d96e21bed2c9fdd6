//! Write halo policy plugins in plain Rust.
//!
//! A plugin decides one thing for the agent: where VMs go (placement), what an isolated host
//! does with its VMs (isolation), in which waves VMs restart (restart order), which live
//! migrations even out the hosts (balancing). With this crate a plugin author implements one
//! trait on halo's own policy types ([`policy`], the very types halo's built-in policies use)
//! and exports it with one macro; the crate does the WIT bindings (contract `wit/0.1.3`), the
//! conversions and the export.
//!
//! ```ignore
//! use halo_plugin_sdk::policy::compact::{CompactInput, CompactPlacement};
//!
//! struct MyPlacement;
//!
//! impl halo_plugin_sdk::CompactPlacementPolicy for MyPlacement {
//!     fn place(input: CompactInput) -> Result<CompactPlacement, String> {
//!         halo_plugin_sdk::policy::placement::place_compact(&input)
//!     }
//! }
//!
//! halo_plugin_sdk::export_compact_placement!(MyPlacement);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2` (crate type `cdylib`); the
//! `.wasm` in `target/wasm32-wasip2/release/` is the plugin. `halo plugin check FILE` says
//! whether an agent takes it, `halo plugin run FILE --input JSON` runs one decision.
//!
//! | trait | macro | world it exports |
//! |---|---|---|
//! | [`PlacementPolicy`] | [`export_placement!`] | `placement-engine` (names: easiest) |
//! | [`CompactPlacementPolicy`] | [`export_compact_placement!`] | `columnar-placement-engine` (positions: fastest) |
//! | [`IsolationPolicy`] | [`export_isolation!`] | `isolation-policy` |
//! | [`RestartPolicy`] | [`export_restart_order!`] | `restart-policy` |
//! | [`BalancingPolicy`] | [`export_balancing!`] | `balancing-policy` |
//!
//! A plugin is a pure function of its input. halo grants it no clock, randomness, file,
//! environment or network: such a call stops the decision and halo's built-in policy decides.
//! Use `BTreeMap` or a fixed hasher rather than `HashMap::new()` (its seed is randomness), and
//! [`log`] rather than printing.

pub mod bindings;
mod convert;

pub use halo_policy as policy;

#[doc(hidden)]
pub use convert::{balancing, columnar, isolation, named, restart, storage};

/// Writes a line to the agent's log, tagged with the plugin's file name (at most 64 lines a
/// decision are kept, each cut at 1,024 characters).
pub fn log(level: Level, message: &str) {
    bindings::placement::halo::policy::log::log(level, message);
}

pub use bindings::placement::halo::policy::log::Level;

/// The placement decision on names (`placement-engine`): the easiest to write; for inputs of
/// thousands of VMs, [`CompactPlacementPolicy`] crosses into the sandbox much faster.
pub trait PlacementPolicy {
    /// Every VM of the input either assigned to a host or listed as unplaced with a reason;
    /// an `Err` makes the agent use its built-in policy (and say why).
    fn place(input: policy::PlacementInput) -> Result<policy::Placement, String>;
}

/// The placement decision on positions (`columnar-placement-engine`): VMs, hosts, labels,
/// datastores and groups are named by their position in the input's lists.
pub trait CompactPlacementPolicy {
    /// Every VM of the input either assigned to a host or listed as unplaced with a reason;
    /// an `Err` makes the agent use its built-in policy (and say why).
    fn place(input: policy::compact::CompactInput) -> Result<policy::compact::CompactPlacement, String>;
}

/// What an isolated host does with its VMs (`isolation-policy`).
pub trait IsolationPolicy {
    /// One decision per VM of the input.
    fn decide(input: policy::IsolationInput) -> Result<Vec<policy::VmIsolationDecision>, String>;
}

/// What a host does with VMs whose storage it lost (`storage-response`, new in 0.1.4);
/// exported beside an [`IsolationPolicy`] with [`export_isolation_and_storage!`].
pub trait StoragePolicy {
    /// One decision per VM of the input.
    fn decide_storage(input: policy::StorageInput) -> Result<Vec<policy::VmStorageDecision>, String>;
}

/// In which waves VMs restart (`restart-policy`).
pub trait RestartPolicy {
    /// The waves, first to last; a dependency cycle is an answer (the agent reports it),
    /// `RestartError::Other` makes the agent use its built-in policy.
    fn plan(input: policy::RestartInput) -> Result<Vec<policy::Wave>, policy::RestartError>;
}

/// Which live migrations would even out the hosts (`balancing-policy`).
pub trait BalancingPolicy {
    /// The moves, in order; the agent checks each before any migration starts.
    fn propose(input: policy::balance::BalanceInput) -> Result<Vec<policy::balance::BalanceMove>, String>;
}

/// Exports a [`PlacementPolicy`] as the plugin's `placement-engine` world.
#[macro_export]
macro_rules! export_placement {
    ($policy:ty) => {
        const _: () = {
            struct HaloExport;
            impl $crate::bindings::placement::exports::halo::policy::placement::Guest for HaloExport {
                fn place(
                    input: $crate::bindings::wit::PlacementInput,
                ) -> ::core::result::Result<$crate::bindings::wit::Placement, ::std::string::String> {
                    $crate::named::place::<$policy>(input)
                }
            }
    $crate::bindings::placement::export_placement_world!(HaloExport with_types_in $crate::bindings::placement);
        };
    };
}

/// Exports a [`CompactPlacementPolicy`] as the plugin's `columnar-placement-engine` world.
#[macro_export]
macro_rules! export_compact_placement {
    ($policy:ty) => {
        const _: () = {
            struct HaloExport;
            impl $crate::bindings::columnar::exports::halo::policy::columnar_placement::Guest for HaloExport {
                fn place(
                    input: $crate::bindings::columnar::exports::halo::policy::columnar_placement::ColumnarInput,
                ) -> ::core::result::Result<
                    $crate::bindings::columnar::exports::halo::policy::columnar_placement::ColumnarPlacement,
                    ::std::string::String,
                > {
                    $crate::columnar::place::<$policy>(input)
                }
            }
    $crate::bindings::columnar::export_columnar_world!(HaloExport with_types_in $crate::bindings::columnar);
        };
    };
}

/// Exports an [`IsolationPolicy`] as the plugin's `isolation-policy` world.
#[macro_export]
macro_rules! export_isolation {
    ($policy:ty) => {
        const _: () = {
            struct HaloExport;
            impl $crate::bindings::isolation::exports::halo::policy::isolation_response::Guest for HaloExport {
                fn decide_isolation(
                    input: $crate::bindings::wit::IsolationInput,
                ) -> ::core::result::Result<
                    ::std::vec::Vec<$crate::bindings::wit::VmIsolationDecision>,
                    ::std::string::String,
                > {
                    $crate::isolation::decide::<$policy>(input)
                }
            }
    $crate::bindings::isolation::export_isolation_world!(HaloExport with_types_in $crate::bindings::isolation);
        };
    };
}

/// Exports a [`StoragePolicy`] as the plugin's `storage-response` (0.1.4). Beside
/// [`export_isolation!`] the component is of the world `isolation-storage-policy`:
/// `[plugins] isolation` names it, and the agent asks it both decisions.
#[macro_export]
macro_rules! export_storage {
    ($policy:ty) => {
        const _: () = {
            struct HaloExport;
            impl $crate::bindings::storage::exports::halo::policy::storage_response::Guest for HaloExport {
                fn decide_storage(
                    input: $crate::bindings::storage::exports::halo::policy::storage_response::StorageInput,
                ) -> ::core::result::Result<
                    ::std::vec::Vec<
                        $crate::bindings::storage::exports::halo::policy::storage_response::VmStorageDecision,
                    >,
                    ::std::string::String,
                > {
                    $crate::storage::decide::<$policy>(input)
                }
            }
    $crate::bindings::storage::export_storage_world!(HaloExport with_types_in $crate::bindings::storage);
        };
    };
}

/// Exports a type that is both an [`IsolationPolicy`] and a [`StoragePolicy`]: the world
/// `isolation-storage-policy` (0.1.4).
#[macro_export]
macro_rules! export_isolation_and_storage {
    ($policy:ty) => {
        $crate::export_isolation!($policy);
        $crate::export_storage!($policy);
    };
}

/// Exports a [`RestartPolicy`] as the plugin's `restart-policy` world.
#[macro_export]
macro_rules! export_restart_order {
    ($policy:ty) => {
        const _: () = {
            struct HaloExport;
            impl $crate::bindings::restart::exports::halo::policy::restart_order::Guest for HaloExport {
                fn plan_restart(
                    input: $crate::bindings::wit::RestartInput,
                ) -> ::core::result::Result<
                    ::std::vec::Vec<$crate::bindings::wit::Wave>,
                    $crate::bindings::wit::RestartError,
                > {
                    $crate::restart::plan::<$policy>(input)
                }
            }
    $crate::bindings::restart::export_restart_world!(HaloExport with_types_in $crate::bindings::restart);
        };
    };
}

/// Exports a [`BalancingPolicy`] as the plugin's `balancing-policy` world.
#[macro_export]
macro_rules! export_balancing {
    ($policy:ty) => {
        const _: () = {
            struct HaloExport;
            impl $crate::bindings::balancing::exports::halo::policy::balancing::Guest for HaloExport {
                fn propose(
                    input: $crate::bindings::balancing::exports::halo::policy::balancing::BalanceInput,
                ) -> ::core::result::Result<
                    ::std::vec::Vec<$crate::bindings::balancing::exports::halo::policy::balancing::BalanceMove>,
                    ::std::string::String,
                > {
                    $crate::balancing::propose::<$policy>(input)
                }
            }
    $crate::bindings::balancing::export_balancing_world!(HaloExport with_types_in $crate::bindings::balancing);
        };
    };
}
