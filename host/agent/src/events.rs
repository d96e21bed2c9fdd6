//! The agent's event log: every event of the core, numbered and stamped with the wall clock,
//! kept in memory (the last [`KEPT`]) for the API, appended to a JSON-lines file when
//! configured, counted by kind for `/metrics`, and every alert POSTed to the webhook.
//!
//! Nothing here may block the agent loop: the file is written by a task of its own, and the
//! webhook by one task per alert with a bounded timeout (an alert that cannot be delivered is
//! logged and counted, never retried forever).

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use halo_core::{Event, EventKind, Severity};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Events kept in memory.
pub const KEPT: usize = 2_000;

/// One event as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LoggedEvent {
    /// Number within this agent's run (starts at 1).
    pub id: u64,
    /// This agent's run: its start, ms since the Unix epoch. A restarted agent numbers its
    /// events from 1 again under a new run, so (node, run, id) names an event for good.
    #[serde(default)]
    pub run: u64,
    /// Wall clock, ms since the Unix epoch.
    pub unix_ms: u64,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
    /// The policy decisions (ids in this run's decision record) made in the step that caused
    /// it: `halo plugin replay` and the records name them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<u64>,
}

/// The log.
pub struct EventLog {
    inner: Mutex<Inner>,
    run: u64,
    file: Option<mpsc::UnboundedSender<String>>,
    webhook: Option<(String, String)>,
    /// Alerts the webhook did not take.
    pub webhook_failures: AtomicU64,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    recent: VecDeque<LoggedEvent>,
    by_kind: BTreeMap<(EventKind, Severity), u64>,
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl EventLog {
    /// A log; `file` (JSON lines, appended) and `webhook` (`(address, path)`) are optional.
    /// Must be called inside a tokio runtime when `file` is given.
    pub fn new(file: Option<PathBuf>, webhook: Option<(String, String)>) -> Arc<Self> {
        let file = file.map(|path| {
            let (tx, mut rx) = mpsc::unbounded_channel::<String>();
            tokio::task::spawn_blocking(move || {
                let mut out = match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        tracing::error!("event log {}: {e}; events are kept in memory only", path.display());
                        None
                    }
                };
                while let Some(line) = rx.blocking_recv() {
                    if let Some(f) = out.as_mut()
                        && let Err(e) = writeln!(f, "{line}")
                    {
                        tracing::error!("event log {}: {e}", path.display());
                    }
                }
            });
            tx
        });
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            run: unix_ms(),
            file,
            webhook,
            webhook_failures: AtomicU64::new(0),
        })
    }

    /// This agent's run (its start, ms since the Unix epoch).
    pub fn run(&self) -> u64 {
        self.run
    }

    /// Records one event (and sends it on).
    pub fn record(self: &Arc<Self>, event: Event) -> LoggedEvent {
        self.record_linked(event, Vec::new())
    }

    /// Records one event caused by the policy decisions `decisions` (and sends it on).
    pub fn record_linked(self: &Arc<Self>, event: Event, decisions: Vec<u64>) -> LoggedEvent {
        let logged = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.next_id += 1;
            let logged = LoggedEvent { id: inner.next_id, run: self.run, unix_ms: unix_ms(), event, decisions };
            *inner.by_kind.entry((logged.event.kind, logged.event.severity)).or_default() += 1;
            inner.recent.push_back(logged.clone());
            while inner.recent.len() > KEPT {
                inner.recent.pop_front();
            }
            logged
        };
        let post = logged.event.severity == Severity::Alert && self.webhook.is_some();
        if self.file.is_none() && !post {
            return logged;
        }
        let line = serde_json::to_string(&logged).unwrap_or_default();
        if let Some(file) = &self.file {
            let _ = file.send(line.clone());
        }
        if post && let Some((address, path)) = self.webhook.clone() {
            let log = Arc::clone(self);
            tokio::spawn(async move {
                let sent = crate::client::request(
                    &address,
                    None,
                    "POST",
                    &path,
                    None,
                    Some(line.into_bytes()),
                    &[],
                    Duration::from_secs(5),
                )
                .await;
                let failed = match sent {
                    Ok(r) if (200..300).contains(&r.status) => None,
                    Ok(r) => Some(format!("HTTP {}", r.status)),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(why) = failed {
                    log.webhook_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("alert webhook http://{address}{path}: {why}");
                }
            });
        }
        logged
    }

    /// Events after `since` (an id), at most `limit`, oldest first; only alerts if asked.
    pub fn list(&self, since: u64, limit: usize, alerts_only: bool) -> Vec<LoggedEvent> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let matching: Vec<&LoggedEvent> = inner
            .recent
            .iter()
            .filter(|e| e.id > since && (!alerts_only || e.event.severity == Severity::Alert))
            .collect();
        let skip = matching.len().saturating_sub(limit);
        matching.into_iter().skip(skip).cloned().collect()
    }

    /// Counts by (kind, severity) since the start.
    pub fn counts(&self) -> Vec<((EventKind, Severity), u64)> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.by_kind.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, severity: Severity) -> Event {
        Event { at: 0, node: "h1".into(), severity, kind, message: kind.to_string(), trace: None }
    }

    #[tokio::test]
    async fn events_are_numbered_kept_bounded_written_and_counted() {
        let dir = std::env::temp_dir().join(format!("halo-events-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("events.jsonl");
        let log = EventLog::new(Some(file.clone()), None);
        for i in 0..(KEPT + 5) {
            let severity = if i % 100 == 0 { Severity::Alert } else { Severity::Info };
            let kind = if severity == Severity::Alert { EventKind::HostFailed } else { EventKind::VmRestarted };
            log.record(event(kind, severity));
        }
        let last = log.list(0, 10, false);
        assert_eq!(last.len(), 10);
        assert_eq!(last[9].id, (KEPT + 5) as u64);
        assert_eq!(log.list(0, usize::MAX, false).len(), KEPT, "only the last KEPT are kept");
        assert!(log.list(0, usize::MAX, true).iter().all(|e| e.event.severity == Severity::Alert));
        assert_eq!(log.list((KEPT + 3) as u64, 100, false).len(), 2);
        let counts: BTreeMap<_, _> = log.counts().into_iter().collect();
        assert_eq!(counts[&(EventKind::HostFailed, Severity::Alert)], 21);
        drop(log);
        // The writer task drains what was sent, then ends with the channel.
        let mut lines = 0;
        for _ in 0..50 {
            lines = std::fs::read_to_string(&file).map(|t| t.lines().count()).unwrap_or(0);
            if lines == KEPT + 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(lines, KEPT + 5);
        let first: LoggedEvent =
            serde_json::from_str(std::fs::read_to_string(&file).expect("log").lines().next().expect("a line"))
                .expect("a line is an event");
        assert_eq!((first.id, first.event.kind.as_str()), (1, "host-failed"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A webhook receiver on loopback: answers every request with `status`, hands over the
    /// request text.
    async fn receiver(status: u16) -> (String, mpsc::UnboundedReceiver<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then Content-Length bytes of body.
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&request).to_string());
                let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = stream.write_all(reply.as_bytes()).await;
            }
        });
        (address, rx)
    }

    #[tokio::test]
    async fn every_alert_is_posted_to_the_webhook_and_failures_are_counted() {
        let (address, mut requests) = receiver(200).await;
        let log = EventLog::new(None, Some((address, "/hook".into())));
        log.record(event(EventKind::VmRestarted, Severity::Info));
        log.record(event(EventKind::HostFailed, Severity::Alert));
        let request =
            tokio::time::timeout(Duration::from_secs(5), requests.recv()).await.expect("in time").expect("a POST");
        assert!(request.starts_with("POST /hook HTTP/1.1"), "{request}");
        let body = request.split("\r\n\r\n").nth(1).expect("a body");
        let posted: LoggedEvent = serde_json::from_str(body).expect("the alert as JSON");
        assert_eq!((posted.id, posted.event.kind.as_str()), (2, "host-failed"));
        // Only the alert was posted.
        assert!(tokio::time::timeout(Duration::from_millis(300), requests.recv()).await.is_err());
        assert_eq!(log.webhook_failures.load(Ordering::Relaxed), 0);

        // A receiver that answers 500, and one that is not there: counted, the agent goes on.
        let (address, mut requests) = receiver(500).await;
        let log = EventLog::new(None, Some((address, "/hook".into())));
        log.record(event(EventKind::HostFailed, Severity::Alert));
        let _ = tokio::time::timeout(Duration::from_secs(5), requests.recv()).await.expect("in time");
        let unreachable = EventLog::new(None, Some(("127.0.0.1:9".into(), "/".into())));
        unreachable.record(event(EventKind::HostFailed, Severity::Alert));
        for _ in 0..100 {
            if log.webhook_failures.load(Ordering::Relaxed) == 1
                && unreachable.webhook_failures.load(Ordering::Relaxed) == 1
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "failures not counted: {} and {}",
            log.webhook_failures.load(Ordering::Relaxed),
            unreachable.webhook_failures.load(Ordering::Relaxed)
        );
    }
}
