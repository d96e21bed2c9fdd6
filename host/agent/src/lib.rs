//! The halo agent. Today: its configuration — `halo.toml`, one typed struct, every mistake
//! reported at once with the key's path and what to do. Next (issue 5): wiring the core to the
//! drivers (`halo_core::drivers`) and the plugin runtime on tokio.

#![forbid(unsafe_code)]

pub mod config;
pub mod run;

pub use config::{AgentConfig, ConfigError};
pub use run::{StartError, run};
