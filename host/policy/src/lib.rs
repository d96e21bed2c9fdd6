//! halo's policies without I/O: the policy types (a mirror of the WIT contract), the three
//! default policies (isolation response, placement, restart order, balancing) and the validators that
//! every plugin answer passes before the agent acts on it.
//!
//! The default plugins in `plugins/` are these very functions compiled to WebAssembly, and
//! the plugin runtime's built-in fallback is the same code compiled natively: one policy,
//! written once. This crate must never do I/O, read a clock or use randomness: a decision is
//! a pure function of its input, so it can be replayed.

#![forbid(unsafe_code)]

pub mod balance;
pub mod compact;
pub mod input;
pub mod isolation;
pub mod placement;
pub mod restart;
pub mod settings;
mod sorted;
pub mod types;

pub use types::*;
