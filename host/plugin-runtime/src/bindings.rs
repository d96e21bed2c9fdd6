//! Host bindings of the policy worlds, generated from `wit/0.1.4` (the contract version this
//! agent speaks; it only adds to 0.1.3, 0.1.2, 0.1.1 and 0.1.0, whose plugins link against it
//! unchanged). The `types`
//! and `log` interfaces are generated once, with the placement world, and shared by the others.

#![allow(missing_docs)]

/// `halo:policy/placement-engine`; also owns the shared `types` and `log` bindings.
pub mod placement {
    wasmtime::component::bindgen!({ path: "../../wit/0.1.4", world: "placement-engine" });
}

/// `halo:policy/isolation-policy`.
pub mod isolation {
    wasmtime::component::bindgen!({
        path: "../../wit/0.1.4",
        world: "isolation-policy",
        with: {
            "halo:policy/types": crate::bindings::placement::halo::policy::types,
            "halo:policy/log": crate::bindings::placement::halo::policy::log,
        },
    });
}

/// `halo:policy/restart-policy`.
pub mod restart {
    wasmtime::component::bindgen!({
        path: "../../wit/0.1.4",
        world: "restart-policy",
        with: {
            "halo:policy/types": crate::bindings::placement::halo::policy::types,
            "halo:policy/log": crate::bindings::placement::halo::policy::log,
        },
    });
}

/// `halo:policy/compact-placement-engine` (new in 0.1.1).
pub mod compact {
    wasmtime::component::bindgen!({
        path: "../../wit/0.1.4",
        world: "compact-placement-engine",
        with: {
            "halo:policy/types": crate::bindings::placement::halo::policy::types,
            "halo:policy/log": crate::bindings::placement::halo::policy::log,
        },
    });
}

/// `halo:policy/columnar-placement-engine` (new in 0.1.3). The call itself uses the borrowing
/// types of `convert`; these bindings check the export at load time.
pub mod columnar {
    wasmtime::component::bindgen!({
        path: "../../wit/0.1.4",
        world: "columnar-placement-engine",
        with: {
            "halo:policy/types": crate::bindings::placement::halo::policy::types,
            "halo:policy/log": crate::bindings::placement::halo::policy::log,
        },
    });
}

/// `halo:policy/balancing-policy` (new in 0.1.2).
pub mod balancing {
    wasmtime::component::bindgen!({
        path: "../../wit/0.1.4",
        world: "balancing-policy",
        with: {
            "halo:policy/types": crate::bindings::placement::halo::policy::types,
            "halo:policy/log": crate::bindings::placement::halo::policy::log,
        },
    });
}

/// `halo:policy/storage-policy` (new in 0.1.4): the storage response, exported alone or beside
/// the isolation response (`isolation-storage-policy`).
pub mod storage {
    wasmtime::component::bindgen!({
        path: "../../wit/0.1.4",
        world: "storage-policy",
        with: {
            "halo:policy/types": crate::bindings::placement::halo::policy::types,
            "halo:policy/log": crate::bindings::placement::halo::policy::log,
        },
    });
}

pub use balancing::exports::halo::policy::balancing as wit_balancing;
pub use columnar::exports::halo::policy::columnar_placement as wit_columnar;
pub use compact::exports::halo::policy::compact_placement as wit_compact;
pub use placement::halo::policy::log;
pub use placement::halo::policy::types as wit;
pub use storage::exports::halo::policy::storage_response as wit_storage;
