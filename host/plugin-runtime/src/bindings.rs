//! Host bindings of the three policy worlds, generated from `wit/0.1.0` (the contract version
//! this agent speaks). The `types` and `log` interfaces are generated once, with the
//! placement world, and shared by the other two.

#![allow(missing_docs)]

/// `halo:policy/placement-engine`; also owns the shared `types` and `log` bindings.
pub mod placement {
    wasmtime::component::bindgen!({ path: "../../wit/0.1.0", world: "placement-engine" });
}

/// `halo:policy/isolation-policy`.
pub mod isolation {
    wasmtime::component::bindgen!({
        path: "../../wit/0.1.0",
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
        path: "../../wit/0.1.0",
        world: "restart-policy",
        with: {
            "halo:policy/types": crate::bindings::placement::halo::policy::types,
            "halo:policy/log": crate::bindings::placement::halo::policy::log,
        },
    });
}

pub use placement::halo::policy::log;
pub use placement::halo::policy::types as wit;
