//! The halo agent: `halo.toml` (one typed struct, every mistake reported at once with the
//! key's path), the core on tokio with the real drivers and the plugin runtime (`run`), the
//! handle the API reaches the agent loop through (`handle`), the HTTP API with the status
//! page and `/metrics` (`api`), the event log with the alert webhook
//! (`events`), systemd's watchdog (`watchdog`), and the small HTTP client the CLI uses too
//! (`client`).

#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod config;
pub mod decisions;
pub mod events;
pub mod fence;
pub mod handle;
pub mod health;
pub mod liveness;
pub mod run;
pub mod tls;
pub mod watchdog;

pub use config::{AgentConfig, ConfigError};
pub use handle::{AgentHandle, NotTaken};
pub use run::StartError;

/// Runs the agent until SIGTERM or SIGINT: starts the agent loop, serves the API (when
/// `[api]` is set) through the loop's handle, then runs the loop. Must run inside a
/// multi-thread tokio runtime.
pub async fn run(config: AgentConfig) -> Result<(), StartError> {
    let (handle, agent_loop) = run::start(&config).await?;
    if config.api.is_some() {
        api::serve(handle, std::sync::Arc::new(config))
            .await
            .map_err(|e| StartError::Config(format!("api.listen: {e}")))?;
    }
    agent_loop.await
}
