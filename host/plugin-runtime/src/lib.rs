//! halo's plugin runtime: loads policy plugins (WebAssembly components of the
//! `halo:policy` contract), runs each decision sandboxed, validates the answer, and lets the
//! built-in policy decide whenever a plugin traps, runs out of time or memory, refuses, or
//! answers nonsense. The agent never dies of a plugin.
//!
//! - [`sandbox`]: the engine, CPU budget (fuel by default), memory cap, no WASI capability.
//! - [`runtime`]: load-time checks (world, contract version, imports) and one decision.
//! - [`slot`]: the plugin in force per world, hot-swapped atomically.
//! - [`cache`]: AOT-compiled plugins, only ever the agent's own artifacts.
//! - [`compile`]: the structural check before compiling, and compiling in a limited child.
//! - [`world`]: the worlds behind one trait.
//! - [`policies`]: the core's decision points answered by the slots.

#![deny(unsafe_code)]

mod bindings;
pub mod cache;
pub mod compile;
mod convert;
pub mod error;
pub mod policies;
pub mod replay;
pub mod runtime;
pub mod sandbox;
pub mod slot;
pub mod world;

/// Entry points for the fuzz targets in `host/plugin-runtime/fuzz` (not an API).
#[doc(hidden)]
pub mod fuzzing {
    use halo_policy as policy;

    /// What the runtime makes of a columnar plugin's answer to `input`: the columns paired,
    /// checked in positions, named; or why it is refused.
    pub fn judge_columnar_answer(
        input: &policy::PlacementInput,
        assigned_vms: Vec<u32>,
        assigned_hosts: Vec<u32>,
        unplaced: Vec<(u32, String)>,
    ) -> Result<policy::Placement, String> {
        let compact = policy::compact::CompactInput::from_named(input);
        let answer = crate::convert::columnar_answer(crate::convert::ColumnarAnswer::new(
            assigned_vms,
            assigned_hosts,
            unplaced,
        ))?;
        policy::placement::validate_compact(input, &compact, &answer).map_err(|e| e.to_string())?;
        Ok(answer.to_named(input))
    }
}

pub use compile::{ChildCompiler, CodeLimits, CompileLimits, CompilePlace, Complexity, compile_worker};
pub use convert::MAX_REASON_CHARS;
pub use error::{FailureKind, LoadError, PluginFailure, RuntimeError};
pub use policies::{PluginFiles, PluginPolicies};
pub use runtime::{
    CONTRACT_VERSION, CallUsage, CompiledPlugin, DecidedBy, Decision, LoadedPlugin, PluginInfo, ReadError, Runtime,
    read_bounded,
};
pub use sandbox::{CpuBudget, HostUse, SandboxLimits};
pub use slot::{PluginSlot, StatsSnapshot};
pub use world::{Balancing, Isolation, Placement, PolicyWorld, RestartOrder, Storage};
