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
mod bulk;
pub mod cache;
pub mod compile;
mod convert;
pub mod error;
pub mod policies;
pub mod runtime;
pub mod sandbox;
pub mod slot;
pub mod world;

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
pub use world::{Balancing, Isolation, Placement, PolicyWorld, RestartOrder};
