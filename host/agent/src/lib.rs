//! The halo agent: `halo.toml` (one typed struct, every mistake reported at once with the
//! key's path), the core on tokio with the real drivers and the plugin runtime (`run`), the
//! HTTP API with the status page and `/metrics` (`api`), the event log with the alert webhook
//! (`events`), systemd's watchdog (`watchdog`), and the small HTTP client the CLI uses too
//! (`client`).

#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod config;
pub mod events;
pub mod liveness;
pub mod run;
pub mod watchdog;

pub use config::{AgentConfig, ConfigError};
pub use run::{StartError, run};
