//! halo's brain: everything that decides, without I/O.
//!
//! A [`Node`] is the HA logic of one host. It is fed `(now, input)` — a heartbeat received,
//! a datastore record read, a ping result, a VM state, an action's result, an operator
//! command, a timer tick — and answers with [`Action`]s for the drivers to carry out (send a
//! heartbeat, write the datastore heartbeat, ping, claim a VM, start or stop a VM, migrate,
//! record an event). The agent, the simulator and the unit tests drive the very same code.
//!
//! This crate must never do I/O, read a clock, sleep, spawn or use randomness: the clock is
//! the `now` it is given, so a run replays exactly from its inputs. `cargo tree -p halo-core`
//! shows only `halo-policy`, `serde` and `thiserror`.

#![forbid(unsafe_code)]

pub mod balance;
pub mod capacity;
pub mod classify;
pub mod config;
pub mod disks;
pub mod drivers;
pub mod incidents;
pub mod node;
pub mod policies;
pub mod rules;
pub mod settings;
pub mod wire;

pub use classify::{Signals, Trace, Verdict};
pub use config::{ClusterConfig, ConfigErrors, HaSettings, HealthResponse, HostSpec, OnDuplicate, Timeouts, VmSpec};
pub use node::{Action, Command, Duplicate, Event, EventKind, Input, Node, Severity, StopReason, VmState};
pub use policies::{BuiltinPolicies, Policies, PolicyOutcome};
pub use wire::{
    Claim, ClaimOutcome, DatastoreRecord, FenceRecord, HealthState, Heartbeat, HostHealth, HostLoad, PendingClaim,
    StartError, VmLoad, VmReport,
};

/// Milliseconds on the clock of the node that is fed (monotonic; never compared across hosts).
pub type Millis = u64;
