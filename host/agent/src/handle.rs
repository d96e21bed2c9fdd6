//! The agent loop as an actor: [`AgentHandle`] is all the API (and anything else outside the
//! loop) uses. Reads come from what the loop published last (a watch channel, never queued
//! behind the loop); requests go over a bounded queue, and one the loop cannot take at once is
//! answered [`NotTaken`] instead of waiting.

use std::collections::BTreeMap;
use std::sync::Arc;

use halo_core::capacity::AdmissionVerdict;
use halo_core::node::{Admission, ClaimsSeen, ClusterStatus, StartRequest, WhatIf};
use halo_core::{ClusterConfig, Command, Event, VmSpec};
use halo_datastore::Datastore;
use tokio::sync::{mpsc, oneshot, watch};

use crate::events::EventLog;
use crate::liveness::LivenessStats;

/// One decision point's plugin and counters.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PluginStatus {
    /// `isolation-policy`, `placement-engine`, `restart-policy`, `balancing-policy`.
    pub world: String,
    /// The plugin file in force (`None`: the built-in policy).
    pub file: Option<String>,
    /// Its SHA-256.
    pub sha256: Option<String>,
    /// Decisions asked for.
    pub calls: u64,
    /// Decisions the built-in policy gave instead.
    pub fallbacks: u64,
    /// Failures by kind.
    pub failures: BTreeMap<String, u64>,
    /// Time spent deciding, seconds.
    pub seconds: f64,
    /// Loads and swaps, and the ones that failed.
    pub reloads: u64,
    /// Loads that failed (the old plugin stayed in force).
    pub failed_reloads: u64,
    /// The shadow candidate beside it, if one is loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowStatus>,
}

/// A shadow candidate and its tally against the policy in force.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ShadowStatus {
    /// The candidate's file.
    pub file: String,
    /// Its SHA-256.
    pub sha256: String,
    /// Its verdicts so far.
    #[serde(flatten)]
    pub count: crate::decisions::ShadowCount,
    /// Different, invalid or failed together.
    pub divergences: u64,
}

/// What the agent loop published last: the node's picture, the plugins' counters and the
/// cluster configuration in force.
#[derive(Clone)]
pub struct Snapshot {
    /// What the node knows.
    pub status: ClusterStatus,
    /// Each decision point's plugin and counters.
    pub plugins: Vec<PluginStatus>,
    /// `halo.toml`'s cluster with the datastores' run-time changes, as the node decides with
    /// it now (shared: replaced only when it changes).
    pub config: Arc<ClusterConfig>,
}

/// The outcome of reloading one decision point's plugin file: what is in force now, or why
/// the new file was refused (the old plugin stays).
pub type ReloadOutcome = (String, Result<String, String>);

/// A request to the agent loop, with where its answer goes.
pub(crate) enum Control {
    /// An operator command; answered with the events it caused.
    Command(Command, oneshot::Sender<Vec<Event>>),
    /// "What if these hosts failed" (master only).
    WhatIf(Vec<String>, oneshot::Sender<Option<WhatIf>>),
    /// What balancing would move now (master only).
    BalancePlan(oneshot::Sender<Option<halo_core::balance::Proposal>>),
    /// The admission check for protecting a VM running on a host (master only).
    Admit(Box<VmSpec>, Option<String>, oneshot::Sender<Option<AdmissionVerdict>>),
    /// May a domain start on this host (the libvirt `qemu` hook); the claims read before.
    AdmitStart(Box<StartRequest>, ClaimsSeen, oneshot::Sender<Admission>),
    /// Reload every plugin file now; answered per decision point.
    ReloadPlugins(oneshot::Sender<Vec<ReloadOutcome>>),
    /// Put the shadow candidate of a decision point in force; answered with what is in force
    /// now or why nothing changed.
    Promote(crate::decisions::DecisionWorld, oneshot::Sender<Result<String, String>>),
    /// Plugin files were reloaded off the loop (the outcome, to be recorded as events).
    PluginsReloaded(Vec<ReloadOutcome>),
    /// The cluster config merged with the datastores' run-time changes differs from the one
    /// in force.
    Apply(Box<ClusterConfig>),
    /// An API action to record in the event log (who asked, what, the answer).
    Audit(Box<Event>),
}

/// Why the agent loop did not take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotTaken {
    /// Its queue is full: it is that far behind.
    #[error("the agent is busy: its request queue is full; ask again in a moment")]
    Busy,
    /// It is stopping (or stopped) and answers nothing more.
    #[error("the agent is stopping")]
    Stopping,
}

/// How to reach the agent loop, and what it published. Cheap to clone.
#[derive(Clone)]
/// (Built by the agent loop, which owns the other ends.)
pub struct AgentHandle {
    pub(crate) me: String,
    pub(crate) control: mpsc::Sender<Control>,
    pub(crate) snapshot: watch::Receiver<Arc<Snapshot>>,
    pub(crate) events: Arc<EventLog>,
    pub(crate) catalog_refresh: Arc<tokio::sync::Notify>,
    pub(crate) datastores: Vec<Arc<Datastore>>,
    pub(crate) liveness: Arc<LivenessStats>,
    pub(crate) decisions: Arc<crate::decisions::DecisionStats>,
}

impl AgentHandle {
    /// This host.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Records an API action in the event log (waits for room in the loop's queue, at most a
    /// second; a record that finds none is logged here instead, never dropped silently).
    pub async fn audit(&self, event: Event) {
        let message = event.message.clone();
        let sent =
            tokio::time::timeout(std::time::Duration::from_secs(1), self.control.send(Control::Audit(Box::new(event))))
                .await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::warn!("audit record not taken by the agent loop (busy or stopping): {message}");
        }
    }

    /// What the loop published last (every 100 ms, and after every request it handled).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.borrow())
    }

    /// The decision record's counters.
    pub fn decision_stats(&self) -> Arc<crate::decisions::DecisionStats> {
        Arc::clone(&self.decisions)
    }

    /// The event log.
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// The datastores (for the API's writes of run-time changes).
    pub fn datastores(&self) -> &[Arc<Datastore>] {
        &self.datastores
    }

    /// The liveness path's figures.
    pub fn liveness(&self) -> &LivenessStats {
        &self.liveness
    }

    /// Has the datastores' run-time changes read again now (after the API wrote one).
    pub fn refresh_catalog(&self) {
        self.catalog_refresh.notify_one();
    }

    /// Runs an operator command; answers with the events it caused.
    pub async fn command(&self, command: Command) -> Result<Vec<Event>, NotTaken> {
        self.ask(|tx| Control::Command(command, tx)).await
    }

    /// "What if these hosts failed now" (`None`: this agent is not the master).
    pub async fn what_if(&self, failed: Vec<String>) -> Result<Option<WhatIf>, NotTaken> {
        self.ask(|tx| Control::WhatIf(failed, tx)).await
    }

    /// What balancing would move now (`None`: this agent is not the master).
    pub async fn balance_plan(&self) -> Result<Option<halo_core::balance::Proposal>, NotTaken> {
        self.ask(Control::BalancePlan).await
    }

    /// The admission check for protecting `spec` on `host` (`None`: not the master).
    pub async fn admit(&self, spec: VmSpec, host: Option<String>) -> Result<Option<AdmissionVerdict>, NotTaken> {
        self.ask(|tx| Control::Admit(Box::new(spec), host, tx)).await
    }

    /// Whether a domain may start on this host (the libvirt `qemu` hook's question, asked by
    /// `halo hook`): for a protected VM its claims are read first, off the loop and bounded by
    /// the datastore timeout; then the loop decides (`Node::admit_start`).
    pub async fn admit_start(&self, request: StartRequest) -> Result<Admission, NotTaken> {
        let protected = self.snapshot().config.vm(&request.vm).is_some_and(|s| s.protected());
        let claims = if protected {
            read_claims(&self.datastores, &request.vm, request.generation).await
        } else {
            Ok((None, None))
        };
        self.ask(|tx| Control::AdmitStart(Box::new(request), claims, tx)).await
    }

    /// Reloads every plugin file now (compiled off the loop); answers per decision point.
    pub async fn reload_plugins(&self) -> Result<Vec<ReloadOutcome>, NotTaken> {
        self.ask(Control::ReloadPlugins).await
    }

    /// Puts the shadow candidate of `world` in force on this agent.
    pub async fn promote(&self, world: crate::decisions::DecisionWorld) -> Result<Result<String, String>, NotTaken> {
        self.ask(|reply| Control::Promote(world, reply)).await
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Control) -> Result<T, NotTaken> {
        let (tx, rx) = oneshot::channel();
        self.control.try_send(make(tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => NotTaken::Busy,
            mpsc::error::TrySendError::Closed(_) => NotTaken::Stopping,
        })?;
        // Dropped unanswered only when the loop ends.
        rx.await.map_err(|_| NotTaken::Stopping)
    }
}

/// The claims of `vm` for `generation` and the next one, from whichever datastore holds them
/// (a claim is created on one). A datastore that cannot answer makes the answer unknown,
/// unless a newer claim was found anyway (the start is refused then in any case).
async fn read_claims(stores: &[Arc<Datastore>], vm: &str, generation: u64) -> ClaimsSeen {
    let (mut this, mut next, mut problems) = (None, None, Vec::new());
    for store in stores {
        for (g, slot) in [(generation, &mut this), (generation + 1, &mut next)] {
            match store.read_claim(vm, g).await {
                Ok(Some(claim)) => *slot = Some(claim),
                Ok(None) => {}
                Err(e) => problems.push(e.to_string()),
            }
        }
    }
    if next.is_none() && !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok((this, next))
}

/// A handle with no agent loop behind it (tests): host `me` of `config`, what it asks arrives
/// on the receiver (its queue holds `queue`).
#[cfg(test)]
pub(crate) fn detached(me: &str, config: ClusterConfig, queue: usize) -> (AgentHandle, mpsc::Receiver<Control>) {
    let (control, rx) = mpsc::channel(queue);
    let status = halo_core::Node::new(me, config.clone(), 0).status();
    let snapshot = Arc::new(Snapshot { status, plugins: vec![], config: Arc::new(config) });
    let (_tx, snapshot) = watch::channel(snapshot);
    let handle = AgentHandle {
        me: me.into(),
        control,
        snapshot,
        events: crate::events::EventLog::new(None, None),
        catalog_refresh: Arc::default(),
        datastores: vec![],
        liveness: Arc::default(),
        decisions: Arc::default(),
    };
    (handle, rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(queue: usize) -> (AgentHandle, mpsc::Receiver<Control>) {
        detached("h1", config(), queue)
    }

    fn config() -> ClusterConfig {
        ClusterConfig {
            hosts: vec![halo_core::HostSpec {
                name: "h1".into(),
                memory_mib: 1024,
                vcpus: 2,
                labels: vec![],
                fenceable: false,
                reserved: false,
            }],
            networks: vec!["A".into()],
            datastores: vec![],
            isolation_addresses: vec![],
            vms: vec![],
            timeouts: Default::default(),
            ha: Default::default(),
            policy: Default::default(),
            rules: Vec::new(),
            balance: Default::default(),
            claim_store: None,
            names: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_full_queue_answers_busy_and_a_gone_loop_answers_stopping() {
        let (handle, mut rx) = handle(1);
        // The loop answers the first request...
        let answering = tokio::spawn(async move {
            if let Some(Control::WhatIf(failed, tx)) = rx.recv().await {
                let _ = tx.send(Some(WhatIf { failed, placed: vec![], unplaced: vec![], lost: vec![] }));
            }
            rx
        });
        let answer = handle.what_if(vec!["h2".into()]).await.expect("taken");
        assert_eq!(answer.map(|w| w.failed), Some(vec!["h2".to_string()]));
        let rx = answering.await.expect("the loop");
        // ...then stops taking: one request fills the queue, the next is refused at once.
        let waiting = {
            let handle = handle.clone();
            tokio::spawn(async move { handle.reload_plugins().await })
        };
        tokio::task::yield_now().await;
        while rx.is_empty() {
            tokio::task::yield_now().await;
        }
        assert_eq!(handle.command(Command::SetHaEnabled(false)).await.err(), Some(NotTaken::Busy));
        drop(rx);
        assert_eq!(waiting.await.expect("task").err(), Some(NotTaken::Stopping), "dropped unanswered");
        assert_eq!(handle.admit(config_vm(), None).await.err(), Some(NotTaken::Stopping));
    }

    fn config_vm() -> VmSpec {
        VmSpec {
            name: "vm".into(),
            memory_mib: 1,
            vcpus: 1,
            priority: halo_policy::RestartPriority::Restart,
            order: 0,
            group: None,
            depends_on: vec![],
            required_host_labels: vec![],
            anti_affinity_group: None,
            datastores: vec![],
        }
    }
}
