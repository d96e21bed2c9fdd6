//! Proactive HA's health provider (`[health]` in halo.toml): an executable the site names,
//! run every `interval-ms` off the liveness path (a task of the agent's runtime, bounded by
//! `timeout-ms`, killed when it overruns), whose JSON on standard output says how the host is:
//!
//! ```json
//! { "status": "degraded", "reason": "PSU 2 lost",
//!   "checks": [ { "name": "psu-2", "status": "failing", "detail": "no input" } ] }
//! ```
//!
//! `status` is `healthy`, `degraded` or `failing`; without it the worst of the `checks`
//! counts (each `status` the same words; `[health] checks` maps a check's name to the state
//! this site gives it, whatever the provider said); `reason` and the checks' details are for
//! people. A
//! provider that fails (does not start, exits non-zero, overruns, prints anything else) leaves
//! the host's health as it was and raises `health-provider-failed` once per kind of failure:
//! a broken provider never evacuates a host. The core (`node::health`) decides what the
//! cluster does with the health.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use halo_core::{Event, EventKind, HealthState, HostHealth, Input, Severity};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::events::EventLog;

/// The most of a provider's output read.
const MAX_OUTPUT: usize = 64 * 1024;

/// `[health]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct HealthEntry {
    /// The provider (none: no proactive HA on this host; it counts as healthy).
    pub provider: Option<PathBuf>,
    /// Its arguments.
    pub args: Vec<String>,
    /// How often it runs.
    pub interval_ms: u64,
    /// How long one run may take.
    pub timeout_ms: u64,
    /// The state this site gives a check, by the check's name (`"ecc-corrected" = "healthy"`,
    /// `"psu-2" = "failing"`): the provider's word for it is replaced.
    pub checks: BTreeMap<String, HealthState>,
}

impl Default for HealthEntry {
    fn default() -> Self {
        Self { provider: None, args: Vec::new(), interval_ms: 10_000, timeout_ms: 5_000, checks: BTreeMap::new() }
    }
}

impl HealthEntry {
    /// What is wrong with it, for the config check.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(provider) = &self.provider
            && !provider.is_absolute()
        {
            problems.push(format!("health.provider: `{}` must be an absolute path", provider.display()));
        }
        if self.interval_ms < 1_000 {
            problems.push("health.interval-ms: at least 1000".into());
        }
        if self.timeout_ms == 0 || self.timeout_ms > self.interval_ms {
            problems.push("health.timeout-ms: more than 0 and at most health.interval-ms".into());
        }
        problems
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    #[serde(default)]
    status: Option<HealthState>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    checks: Vec<Check>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Check {
    name: String,
    status: HealthState,
    #[serde(default)]
    detail: Option<String>,
}

/// A provider's output as a health, or what is wrong with it; `overrides` gives checks the
/// state this site wants for them.
pub fn parse_report(output: &[u8], overrides: &BTreeMap<String, HealthState>) -> Result<HostHealth, String> {
    if output.len() > MAX_OUTPUT {
        return Err(format!("it printed more than {MAX_OUTPUT} bytes"));
    }
    let mut report: Report = serde_json::from_slice(output).map_err(|e| {
        format!("its output is not the documented JSON ({e}); expected {{\"status\": \"healthy|degraded|failing\", \"reason\": …, \"checks\": […]}}")
    })?;
    for check in &mut report.checks {
        if let Some(state) = overrides.get(&check.name) {
            check.status = *state;
        }
    }
    let worst = report.checks.iter().map(|c| c.status).max();
    let state = match (report.status, worst) {
        (Some(state), _) => state,
        (None, Some(worst)) => worst,
        (None, None) => return Err("its output has neither a status nor checks".into()),
    };
    let reason = report.reason.filter(|r| !r.trim().is_empty()).unwrap_or_else(|| {
        report
            .checks
            .iter()
            .filter(|c| c.status != HealthState::Healthy)
            .map(|c| match &c.detail {
                Some(d) => format!("{} {}: {d}", c.name, c.status.as_str()),
                None => format!("{} {}", c.name, c.status.as_str()),
            })
            .collect::<Vec<_>>()
            .join("; ")
    });
    let reason: String = reason.chars().filter(|c| !c.is_control()).take(200).collect();
    Ok(HostHealth { state, reason })
}

/// Runs the provider once.
pub async fn run_provider(entry: &HealthEntry, provider: &PathBuf) -> Result<HostHealth, String> {
    let child = tokio::process::Command::new(provider)
        .args(&entry.args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{} does not start: {e}", provider.display()))?;
    let output = tokio::time::timeout(Duration::from_millis(entry.timeout_ms), child.wait_with_output())
        .await
        .map_err(|_| format!("{} did not answer within {} ms (killed)", provider.display(), entry.timeout_ms))?
        .map_err(|e| format!("{}: {e}", provider.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or("").chars().take(200).collect::<String>();
        return Err(format!(
            "{} failed ({}){}",
            provider.display(),
            output.status,
            if last.is_empty() { String::new() } else { format!(": {last}") }
        ));
    }
    parse_report(&output.stdout, &entry.checks).map_err(|e| format!("{}: {e}", provider.display()))
}

/// The provider's loop: every interval, its answer to the core; a failure an event (once per
/// kind of failure, until it answers again).
pub async fn watch(entry: HealthEntry, inputs: mpsc::Sender<Input>, events: Arc<EventLog>, me: String) {
    let Some(provider) = entry.provider.clone() else { return };
    let mut failing: Option<String> = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(entry.interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match run_provider(&entry, &provider).await {
            Ok(health) => {
                failing = None;
                if inputs.send(Input::HealthReported(health)).await.is_err() {
                    return;
                }
            }
            Err(why) => {
                // One event per kind of failure (the message without its numbers).
                let kind: String = why.chars().filter(|c| !c.is_ascii_digit()).collect();
                if failing.as_deref() != Some(kind.as_str()) {
                    failing = Some(kind);
                    let message = format!("health provider: {why}; the host's health stays as last reported");
                    tracing::error!(host = %me, "ALERT {message}");
                    events.record(Event {
                        at: 0,
                        node: me.clone(),
                        severity: Severity::Alert,
                        kind: EventKind::HealthProviderFailed,
                        message,
                        trace: None,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_read_strictly_and_the_worst_check_counts() {
        let none = BTreeMap::new();
        let h = parse_report(br#"{"status":"failing","reason":"DIMM B2"}"#, &none).expect("valid");
        assert_eq!(h, HostHealth { state: HealthState::Failing, reason: "DIMM B2".into() });
        let checks =
            br#"{"checks":[{"name":"psu-1","status":"healthy"},{"name":"psu-2","status":"degraded","detail":"no input"}]}"#;
        let h = parse_report(checks, &none).expect("valid");
        assert_eq!(h, HostHealth { state: HealthState::Degraded, reason: "psu-2 degraded: no input".into() });
        assert_eq!(parse_report(br#"{"status":"healthy"}"#, &none).expect("valid").state, HealthState::Healthy);
        // The site's word for a check replaces the provider's.
        let site = BTreeMap::from([("psu-2".to_string(), HealthState::Failing)]);
        assert_eq!(parse_report(checks, &site).expect("valid").state, HealthState::Failing);
        let site = BTreeMap::from([("psu-2".to_string(), HealthState::Healthy)]);
        assert_eq!(parse_report(checks, &site).expect("valid").state, HealthState::Healthy);
        for bad in [&br#"{"status":"on fire"}"#[..], b"{}", b"not json", br#"{"status":"healthy","extra":1}"#] {
            assert!(parse_report(bad, &none).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(parse_report(&vec![b' '; MAX_OUTPUT + 1], &none).is_err());
    }

    #[test]
    fn a_provider_that_fails_overruns_or_answers_is_told_apart() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let dir = std::env::temp_dir().join(format!("halo-health-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let script = |name: &str, body: &str| {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            path
        };
        let entry = HealthEntry { timeout_ms: 500, ..HealthEntry::default() };
        runtime.block_on(async {
            let good = script("good", r#"echo '{"status":"degraded","reason":"fan 3"}'"#);
            assert_eq!(run_provider(&entry, &good).await.map(|h| h.state), Ok(HealthState::Degraded));
            let slow = script("slow", "sleep 5");
            let began = std::time::Instant::now();
            let e = run_provider(&entry, &slow).await.expect_err("overruns");
            assert!(e.contains("within 500 ms") && began.elapsed() < Duration::from_secs(3), "{e}");
            let broken = script("broken", "echo 'sensor bus error' >&2; exit 3");
            let e = run_provider(&entry, &broken).await.expect_err("fails");
            assert!(e.contains("sensor bus error"), "{e}");
            let e = run_provider(&entry, &dir.join("missing")).await.expect_err("missing");
            assert!(e.contains("does not start"), "{e}");
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
