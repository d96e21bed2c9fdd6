//! The liveness path: what must happen on time however busy the rest of the agent is —
//! heartbeats on every management network, the datastore heartbeats, feeding the watchdogs,
//! and the fence watch. It runs on a thread of its own with its own (single-threaded) tokio
//! runtime, owns the heartbeat sockets and its own datastore connections, and never waits on
//! a policy decision, a plugin compile, libvirt or the API. Where the system allows it the
//! thread runs at real-time priority (`[liveness] realtime-priority`), as corosync's and sbd's
//! do.
//!
//! What the agent loop (the core) decides reaches it as [`NodeState`], published after every
//! step: the latest heartbeat and datastore record the core produced, the protected VMs
//! running here, whether the core fenced. The liveness path sends the latest heartbeat every
//! heartbeat interval, numbered by itself (a busy loop's last heartbeat goes out again under
//! a new number: the peers keep hearing this host, whose VMs run on), with acknowledgements of
//! what it heard itself; it writes the latest record every datastore interval under a counter
//! of its own. Everything it receives and every write's outcome goes on to the core.
//!
//! Invariants:
//! - **The watchdogs are fed only while the agent loop makes progress** (a step within the
//!   fence timeout): a loop that hangs gets the host reset, as a dead agent does; a loop busy
//!   with a decision does not (the plugin CPU budget is checked to fit, `config`).
//! - **It fences when the loop cannot**: with the loop busy, it applies the core's fence rule
//!   (`halo_core::node::must_fence`) to its own evidence — acknowledgements of heartbeats it
//!   sent, its own datastore writes — and powers the protected VMs off on a fencer thread of
//!   its own, telling the core afterwards. Evidence from before one of its own gaps (the
//!   whole process was stopped) never counts, as in the core's `resume`.
//!
//! Proved by `tests::heartbeats_and_fencing_go_on_while_the_loop_is_busy` (real UDP on
//! loopback, the loop blocked for seconds) and the liveness benchmark
//! (`benches/liveness.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use halo_core::{DatastoreRecord, Heartbeat, Input, StopReason, VmState};
use halo_datastore::Datastore;
use halo_net::transport::RECEIVE_PACING;
use halo_net::{HeartbeatTransport, Membership, Received, TransportConfig};
use tokio::sync::mpsc;

use crate::watchdog::{HostWatchdog, Watchdog};

/// What the liveness path needs to know at start.
pub struct LivenessConfig {
    /// The heartbeat transport (bound on the liveness thread).
    pub transport: TransportConfig,
    /// Heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Datastore heartbeat interval.
    pub datastore_interval: Duration,
    /// The fence timeout (also: how long the agent loop may go without a step).
    pub fence_timeout: Duration,
    /// A tick of the liveness thread this late is a gap of its own (the process was stopped).
    pub stall_gap: Duration,
    /// After a gap or the start: no fencing for this long.
    pub judge_grace: Duration,
    /// This host's datastores (the liveness path's own connections).
    pub datastores: Vec<Datastore>,
    /// This host's libvirt (the fencer's).
    pub local_libvirt: String,
    /// Real-time (SCHED_FIFO) priority of the thread; 0: normal scheduling.
    pub realtime_priority: u8,
}

/// What the agent loop tells the liveness path after every step.
#[derive(Debug, Clone, Default)]
pub struct NodeState {
    /// The latest heartbeat the core produced (its number is replaced when sent).
    pub heartbeat: Option<Heartbeat>,
    /// The latest datastore record the core produced (its counter is replaced).
    pub record: Option<DatastoreRecord>,
    /// The protected VMs running here.
    pub protected_here: Vec<String>,
    /// The core fenced this host.
    pub fenced: bool,
    /// The core may fence (HA on here and for the cluster, other hosts exist).
    pub fencing_armed: bool,
    /// Hosts in the cluster.
    pub hosts: usize,
    /// Quorum fencing is on.
    pub quorum_fencing: bool,
    /// Send the latest heartbeat now, outside the fixed rate (once): the VMs running here
    /// changed, and the master compares every host's list (a copy started outside halo is
    /// paused that much sooner). The fixed-rate schedule is not moved.
    pub send_now: bool,
}

/// Figures of the liveness path (for `/metrics`, tests and the benchmark).
#[derive(Debug, Default)]
pub struct LivenessStats {
    /// Heartbeats sent (one per interval, on every network).
    pub heartbeats: AtomicU64,
    /// Of them, sent while the agent loop had produced nothing newer (it was busy).
    pub keepalives: AtomicU64,
    /// Received heartbeats and datastore write outcomes the agent loop had no room for
    /// (dropped; it is far behind).
    pub forward_drops: AtomicU64,
    /// Times the liveness path fenced on its own.
    pub fences: AtomicU64,
    /// Times the watchdogs were not fed because the agent loop made no step.
    pub starved: AtomicU64,
    /// The longest time between two heartbeat rounds, microseconds (gaps of the whole
    /// process aside: those are `Input::Resumed`).
    pub longest_interval_us: AtomicU64,
    /// Heartbeat rounds later than 1.5 heartbeat intervals after the one before.
    pub late_rounds: AtomicU64,
}

/// The running liveness path.
pub struct Liveness {
    state: Arc<Mutex<NodeState>>,
    /// Milliseconds since `epoch` of the agent loop's last step.
    progress: Arc<AtomicU64>,
    sent_seq: Arc<AtomicU64>,
    epoch: Instant,
    stats: Arc<LivenessStats>,
    stop: Arc<AtomicBool>,
    /// The protected VMs to leave the host watchdog armed for, on a deliberate stop.
    leaving: Arc<Mutex<Option<Vec<String>>>>,
    /// The watchdogs, handed over when the agent loop starts (`arm`).
    arming: Arc<Mutex<Option<Armed>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The watchdogs the liveness path feeds once the agent loop runs.
struct Armed {
    host: Option<HostWatchdog>,
    systemd: Watchdog,
}

/// Why the liveness path could not start.
#[derive(Debug, thiserror::Error)]
pub enum LivenessError {
    /// The heartbeat sockets.
    #[error(transparent)]
    Transport(#[from] halo_net::TransportError),
    /// The thread or its runtime.
    #[error("the liveness thread: {0}")]
    Thread(String),
}

impl Liveness {
    /// Starts the liveness thread: binds the heartbeat sockets on it, opens the watchdog.
    /// Received heartbeats go to `heartbeats` (the agent loop), write outcomes and the
    /// fencer's stops to `inputs`.
    pub fn start(
        config: LivenessConfig,
        heartbeats: mpsc::Sender<Received>,
        inputs: mpsc::Sender<Input>,
    ) -> Result<Self, LivenessError> {
        let state = Arc::new(Mutex::new(NodeState::default()));
        let progress = Arc::new(AtomicU64::new(0));
        let sent_seq = Arc::new(AtomicU64::new(0));
        let stats = Arc::new(LivenessStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let leaving = Arc::new(Mutex::new(None));
        let epoch = Instant::now();
        let arming = Arc::new(Mutex::new(None));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), LivenessError>>();
        let shared = Shared {
            state: Arc::clone(&state),
            progress: Arc::clone(&progress),
            sent_seq: Arc::clone(&sent_seq),
            stats: Arc::clone(&stats),
            stop: Arc::clone(&stop),
            leaving: Arc::clone(&leaving),
            arming: Arc::clone(&arming),
            epoch,
        };
        let thread = std::thread::Builder::new()
            .name("halo-liveness".into())
            .spawn(move || {
                if config.realtime_priority > 0 {
                    set_realtime(config.realtime_priority);
                }
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(LivenessError::Thread(e.to_string())));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let (transport, received) = match HeartbeatTransport::bind(config.transport.clone()) {
                        Ok(bound) => bound,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.into()));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    run(config, transport, received, heartbeats, inputs, shared).await;
                });
            })
            .map_err(|e| LivenessError::Thread(e.to_string()))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(LivenessError::Thread("ended before it started".into())),
        }
        Ok(Self { state, progress, sent_seq, epoch, stats, stop, leaving, arming, thread: Some(thread) })
    }

    /// The agent loop starts: from now on the liveness path feeds the host watchdog (if any)
    /// and systemd's, while the loop makes steps; systemd hears `READY=1`.
    pub fn arm(&self, host_watchdog: Option<HostWatchdog>) {
        self.progressed();
        let systemd = Watchdog::from_env();
        systemd.ready();
        *self.arming.lock().unwrap_or_else(|p| p.into_inner()) = Some(Armed { host: host_watchdog, systemd });
    }

    /// Publishes what the core decided (after a step).
    pub fn publish(&self, update: impl FnOnce(&mut NodeState)) {
        update(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The agent loop made a step.
    pub fn progressed(&self) {
        self.progress.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// The sequence number of the last heartbeat sent.
    pub fn sent_seq(&self) -> u64 {
        self.sent_seq.load(Ordering::Relaxed)
    }

    /// The figures.
    pub fn stats(&self) -> &LivenessStats {
        &self.stats
    }

    /// The figures, to keep (the API's `/metrics`).
    pub fn stats_handle(&self) -> Arc<LivenessStats> {
        Arc::clone(&self.stats)
    }

    /// A deliberate stop: heartbeats end; the host watchdog is disarmed unless protected VMs
    /// run here (`watchdog::leave`).
    pub fn stop(mut self, protected_here: Vec<String>) {
        *self.leaving.lock().unwrap_or_else(|p| p.into_inner()) = Some(protected_here);
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Liveness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

struct Shared {
    state: Arc<Mutex<NodeState>>,
    progress: Arc<AtomicU64>,
    sent_seq: Arc<AtomicU64>,
    stats: Arc<LivenessStats>,
    stop: Arc<AtomicBool>,
    leaving: Arc<Mutex<Option<Vec<String>>>>,
    arming: Arc<Mutex<Option<Armed>>>,
    epoch: Instant,
}

/// The evidence the liveness path judges by: its own. Peers by their index in the host list
/// (what acks carry).
#[derive(Default)]
struct Evidence {
    /// Index in the host list by name.
    index: BTreeMap<String, u32>,
    /// This host's index.
    me: Option<u32>,
    /// Per peer: (its incarnation, the highest sequence number heard from it directly).
    heard: BTreeMap<u32, (u64, u64)>,
    /// Per peer: the highest of our numbers it acknowledged, and when that advanced.
    acked: BTreeMap<u32, (u64, Option<Instant>)>,
    /// Per datastore: the last successful write.
    written: BTreeMap<String, Instant>,
    /// Acknowledgements of numbers up to this one were sent before our last gap.
    floor: u64,
    /// No fencing before this (the start, a gap).
    judge_from: Option<Instant>,
}

impl Evidence {
    fn new(membership: &Membership, me: &str, judge_from: Instant) -> Self {
        let index: BTreeMap<String, u32> =
            (0..membership.len()).filter_map(|i| Some((membership.host(i)?.to_string(), i as u32))).collect();
        Self { me: index.get(me).copied(), index, judge_from: Some(judge_from), ..Self::default() }
    }

    fn heard(&mut self, heartbeat: &Heartbeat, now: Instant) {
        // The transport accepts members only.
        let Some(&from) = self.index.get(&heartbeat.from) else { return };
        let entry = self.heard.entry(from).or_insert((heartbeat.incarnation, 0));
        if entry.0 != heartbeat.incarnation {
            *entry = (heartbeat.incarnation, 0);
        }
        entry.1 = entry.1.max(heartbeat.seq);
        if let Some(&(_, ack)) = heartbeat.acks.iter().find(|(host, _)| Some(*host) == self.me) {
            let acked = self.acked.entry(from).or_insert((0, None));
            if ack > acked.0 && ack > self.floor {
                *acked = (ack, Some(now));
            }
        }
    }

    /// After a gap of our own: nothing known before it is evidence any more.
    fn gap(&mut self, sent: u64, now: Instant, grace: Duration) {
        self.floor = sent;
        for acked in self.acked.values_mut() {
            acked.1 = None;
        }
        self.written.clear();
        self.judge_from = Some(now + grace);
    }

    fn reached(&self, window: Duration, now: Instant) -> usize {
        self.acked.values().filter(|(_, at)| at.is_some_and(|at| now.duration_since(at) < window)).count()
    }

    fn datastore_ok(&self, window: Duration, now: Instant) -> bool {
        self.written.values().any(|&at| now.duration_since(at) < window)
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    config: LivenessConfig,
    transport: HeartbeatTransport,
    mut received: mpsc::Receiver<Received>,
    forward: mpsc::Sender<Received>,
    inputs: mpsc::Sender<Input>,
    shared: Shared,
) {
    let me = config.transport.me.clone();
    let networks: Vec<String> = config.transport.networks.iter().map(|n| n.name.clone()).collect();
    let mut armed: Option<Armed> = None;
    let fencer = Fencer::start(config.local_libvirt.clone(), inputs.clone());
    let datastores: Vec<Arc<Datastore>> = config.datastores.into_iter().map(Arc::new).collect();
    let (written_tx, mut written_rx) = mpsc::channel::<(String, bool)>(64);
    let mut evidence = Evidence::new(&config.transport.membership, &me, Instant::now() + config.fence_timeout);
    // Every 10 ms, on the transport's receive grid: the thread wakes once for both.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::from_std(transport.grid()), RECEIVE_PACING);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_tick = Instant::now();
    let mut next_heartbeat = Instant::now();
    let mut next_write = Instant::now();
    let mut last_round: Option<Instant> = None;
    let mut seq: u64 = 0;
    let mut last_body: u64 = 0;
    let mut ds_counter: u64 = 0;
    let mut fenced_at: Option<Instant> = None;
    let mut verdict_since: Option<Instant> = None;
    let mut starving = false;
    while !shared.stop.load(Ordering::SeqCst) {
        tokio::select! {
            _ = tick.tick() => {}
            Some(got) = received.recv() => {
                evidence.heard(&got.heartbeat, Instant::now());
                let mut got = got;
                // Acknowledgements of our heartbeats from before our own gap say nothing of now
                // (the heartbeat is shared: copied only when one must be changed).
                let stale = |host: u32, ack: u64| Some(host) == evidence.me && ack <= evidence.floor && ack != 0;
                if got.heartbeat.acks.iter().any(|&(host, ack)| stale(host, ack)) {
                    for (host, ack) in &mut std::sync::Arc::make_mut(&mut got.heartbeat).acks {
                        if stale(*host, *ack) {
                            *ack = 0;
                        }
                    }
                }
                if forward.try_send(got).is_err() {
                    shared.stats.forward_drops.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            Some((datastore, ok)) = written_rx.recv() => {
                if ok {
                    evidence.written.insert(datastore.clone(), Instant::now());
                }
                // Never waits: an outcome the agent loop has no room for is dropped (the
                // next write's follows within an interval).
                if inputs.try_send(Input::DatastoreWritten { datastore, ok }).is_err() {
                    shared.stats.forward_drops.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
        }
        let now = Instant::now();
        if now.duration_since(last_tick) >= config.stall_gap {
            // The whole process was stopped (or starved): start judging afresh.
            tracing::warn!(host = %me, gap_ms = now.duration_since(last_tick).as_millis() as u64, "the liveness thread resumes after a gap");
            evidence.gap(seq, now, config.judge_grace);
            // The loop was stopped with us: it gets its fence timeout from now for a step.
            shared.progress.store(shared.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            next_heartbeat = now;
            next_write = now;
            last_round = None;
        }
        last_tick = now;

        // Heartbeats: the core's latest, under our own number, with what we heard ourselves.
        let urgent = std::mem::take(&mut shared.state.lock().unwrap_or_else(|p| p.into_inner()).send_now);
        if (now >= next_heartbeat || urgent)
            && let Some(mut heartbeat) = latest(&shared.state, |s| s.heartbeat.clone())
        {
            // At a fixed rate (not "now + interval": that would drift by the tick each round);
            // an urgent one in between leaves the rate alone.
            if now >= next_heartbeat {
                next_heartbeat += config.heartbeat_interval;
                if next_heartbeat <= now {
                    next_heartbeat = now + config.heartbeat_interval;
                }
            }
            let fresh = heartbeat.seq != last_body;
            last_body = heartbeat.seq;
            seq += 1;
            heartbeat.seq = seq;
            // What we heard directly, of each peer's current incarnation, is what we ack.
            for (host, ack) in &mut heartbeat.acks {
                if let Some(&(_, heard)) = evidence.heard.get(host) {
                    *ack = heard;
                }
            }
            // Peers the core had not heard yet (the acks are in index order, as the core
            // writes them).
            let before = heartbeat.acks.len();
            for (&host, &(_, heard)) in &evidence.heard {
                if heard > 0 && heartbeat.acks[..before].binary_search_by_key(&host, |(h, _)| *h).is_err() {
                    heartbeat.acks.push((host, heard));
                }
            }
            for network in &networks {
                if let Err(e) = transport.send(network, &heartbeat).await {
                    tracing::error!(network, "{e}");
                }
            }
            shared.sent_seq.store(seq, Ordering::Relaxed);
            shared.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
            if !fresh {
                shared.stats.keepalives.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(last) = last_round {
                let took = now.duration_since(last);
                shared.stats.longest_interval_us.fetch_max(took.as_micros() as u64, Ordering::Relaxed);
                if took > config.heartbeat_interval * 3 / 2 {
                    shared.stats.late_rounds.fetch_add(1, Ordering::Relaxed);
                }
            }
            last_round = Some(now);
        }

        // Datastore heartbeats: the core's latest record under our own counter; each write on
        // a task of this runtime (bounded by the datastore's timeout), its outcome to both.
        if now >= next_write
            && let Some(mut record) = latest(&shared.state, |s| s.record.clone())
        {
            next_write += config.datastore_interval;
            if next_write <= now {
                next_write = now + config.datastore_interval;
            }
            ds_counter += 1;
            record.counter = ds_counter;
            for store in &datastores {
                let (store, record, tx) = (Arc::clone(store), record.clone(), written_tx.clone());
                tokio::spawn(async move {
                    let ok = match store.write_heartbeat(&record).await {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(datastore = %store.name(), "{e}");
                            false
                        }
                    };
                    let _ = tx.send((store.name().to_string(), ok)).await;
                });
            }
        }

        // The watchdogs: fed while the agent loop makes steps (from its start on).
        if armed.is_none() {
            armed = shared.arming.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
        let loop_age = Duration::from_millis(
            (shared.epoch.elapsed().as_millis() as u64).saturating_sub(shared.progress.load(Ordering::Relaxed)),
        );
        if armed.is_none() {
            // The agent is still starting: nothing to feed yet, nothing to fence for.
            continue;
        } else if loop_age < config.fence_timeout {
            if starving {
                starving = false;
                tracing::warn!(host = %me, "the agent loop makes steps again: feeding the watchdog");
            }
            if let Some(armed) = armed.as_mut() {
                armed.systemd.alive();
                if let Some(device) = armed.host.as_mut() {
                    device.feed();
                }
            }
        } else if !starving {
            starving = true;
            shared.stats.starved.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                host = %me,
                "ALERT the agent loop made no step for {} ms: the watchdogs are no longer fed (the host is reset if it stays so)",
                loop_age.as_millis()
            );
        }

        // The fence watch, for when the loop is busy: the core's rule on our own evidence.
        let (armed_core, fenced, hosts, quorum_fencing) =
            latest(&shared.state, |s| (s.fencing_armed, s.fenced, s.hosts, s.quorum_fencing));
        let judging = evidence.judge_from.is_none_or(|from| now >= from);
        let must = judging
            && armed_core
            && !fenced
            && halo_core::node::must_fence_counting(
                || evidence.reached(config.fence_timeout, now),
                hosts,
                evidence.datastore_ok(config.fence_timeout, now),
                quorum_fencing,
            );
        if !must {
            verdict_since = None;
            continue;
        }
        let since = *verdict_since.get_or_insert(now);
        // A loop that makes steps fences itself on the same evidence within its evaluation
        // interval; only a busy one is stood in for.
        let busy = loop_age >= Duration::from_millis(200);
        let done_recently = fenced_at.is_some_and(|at| now.duration_since(at) < config.fence_timeout);
        if busy && now.duration_since(since) >= Duration::from_millis(100) && !done_recently {
            fenced_at = Some(now);
            let protected = latest(&shared.state, |s| s.protected_here.clone());
            shared.stats.fences.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                host = %me,
                "ALERT the host lost its quorum and datastores while the agent loop was busy ({} ms): the liveness path fences, stopping {} protected VM(s)",
                loop_age.as_millis(),
                protected.len()
            );
            fencer.fence(protected);
        }
    }
    let leaving = shared.leaving.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let (Some(device), Some(protected)) = (armed.and_then(|a| a.host), leaving) {
        let protected: Vec<&String> = protected.iter().collect();
        crate::watchdog::leave(device, &protected);
    }
}

/// What the loop published last, read under the lock and copied out: only what is due (this
/// runs every 10 ms; the lock is never held across a send).
fn latest<T>(state: &Mutex<NodeState>, read: impl FnOnce(&NodeState) -> T) -> T {
    read(&state.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Powers protected VMs off for the liveness path, on a thread of its own (libvirt can be
/// slow); tells the core each stop as the hypervisor driver does.
struct Fencer {
    requests: std::sync::mpsc::Sender<Vec<String>>,
}

impl Fencer {
    fn start(uri: String, inputs: mpsc::Sender<Input>) -> Self {
        let (requests, rx) = std::sync::mpsc::channel::<Vec<String>>();
        let spawned = std::thread::Builder::new().name("halo-fencer".into()).spawn(move || {
            while let Ok(vms) = rx.recv() {
                let hv = match halo_libvirt::Hypervisor::connect_with_timeout(&uri, Duration::from_secs(2)) {
                    Ok(hv) => hv,
                    Err(e) => {
                        tracing::error!("ALERT fencing: this host's libvirt: {e}; the VMs could not be stopped");
                        continue;
                    }
                };
                for vm in vms {
                    let generation = hv.xml(&vm).ok().as_deref().and_then(halo_libvirt::generation_of).unwrap_or(0);
                    let paused = hv.state(&vm).ok().flatten() == Some(halo_libvirt::DomainState::Paused);
                    match hv.power_off(&vm) {
                        Ok(()) => {
                            let state = if paused {
                                VmState::StoppedWhilePaused(StopReason::Fence)
                            } else {
                                VmState::StoppedByHalo(StopReason::Fence)
                            };
                            // The loop learns the stop when it has room; it also sees the VM
                            // gone from libvirt's events.
                            if let Err(e) = inputs.try_send(Input::VmState { vm, generation, state }) {
                                tracing::error!("fencing: the agent loop has no room for a stop it did: {e}");
                            }
                        }
                        Err(e) => tracing::error!(vm, "ALERT fencing: could not stop the VM: {e}"),
                    }
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!("ALERT the fencer thread could not start: {e}; fencing rests on the agent loop");
        }
        Self { requests }
    }

    fn fence(&self, vms: Vec<String>) {
        let _ = self.requests.send(vms);
    }
}

/// Real-time priority for the calling thread, where the system allows it.
fn set_realtime(priority: u8) {
    use thread_priority::{
        RealtimeThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    let value = match ThreadPriorityValue::try_from(priority) {
        Ok(value) => value,
        Err(e) => {
            tracing::warn!("liveness.realtime-priority {priority}: {e}; normal scheduling");
            return;
        }
    };
    let policy = ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo);
    match set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Crossplatform(value), policy) {
        Ok(()) => tracing::info!("the liveness thread runs at real-time priority {priority} (SCHED_FIFO)"),
        Err(e) => tracing::warn!(
            "the liveness thread keeps normal scheduling: real-time priority {priority} not permitted ({e:?}); \
             under heavy load its heartbeats may be late (docs/operator.md, \"The liveness path\")"
        ),
    }
}

/// Locks the agent's memory (`mlockall`), where permitted: a heartbeat must never wait for a
/// page to come back from swap.
pub fn lock_memory() {
    use nix::sys::mman::{MlockAllFlags, mlockall};
    match mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
        Ok(()) => tracing::info!("the agent's memory is locked (mlockall)"),
        Err(e) => tracing::warn!(
            "the agent's memory is not locked ({e}): under memory pressure a heartbeat may wait for a page \
             (raise RLIMIT_MEMLOCK, e.g. LimitMEMLOCK=infinity in the unit, or set liveness.lock-memory = false)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, UdpSocket};

    use halo_net::{ClusterKey, Membership, NetworkEndpoints};

    use super::*;

    const HOSTS: [&str; 3] = ["host-1", "host-2", "host-3"];

    fn key() -> ClusterKey {
        ClusterKey::new(b"a test key that is 32 bytes long").expect("32 bytes")
    }

    fn free_port() -> SocketAddr {
        UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("a free loopback port")
    }

    fn transport(me: &str, addresses: &BTreeMap<&str, SocketAddr>) -> TransportConfig {
        TransportConfig {
            cluster: "test".into(),
            me: me.into(),
            membership: Membership::new(HOSTS.iter().map(|h| h.to_string()).collect()),
            key: key(),
            networks: vec![NetworkEndpoints {
                name: "A".into(),
                bind: addresses[me],
                peers: addresses.iter().filter(|(h, _)| **h != me).map(|(h, a)| (h.to_string(), *a)).collect(),
                broadcast: None,
                interface: None,
            }],
        }
    }

    fn body(from: &str, seq: u64, acks: Vec<(u32, u64)>) -> Heartbeat {
        Heartbeat {
            from: from.into(),
            seq,
            incarnation: 7,
            master: None,
            datastores_reachable: 0,
            datastores_lost: vec![],
            health: Default::default(),
            vms: vec![],
            operator_stopped: vec![],
            acks,
            maintenance: vec![],
            ha_disabled: false,
            ha_off: false,
            unarmed: vec![],
            stopped: vec![],
            vanished: vec![],
            claims: vec![],
            paused: vec![],
        }
    }

    /// host-1's liveness path on real UDP (loopback), host-2 a real transport in this test,
    /// host-3 silent. The "agent loop" makes a step only every 400 ms (busy with decisions)
    /// and, later, none at all.
    #[test]
    fn heartbeats_and_fencing_go_on_while_the_loop_is_busy() {
        let addresses: BTreeMap<&str, SocketAddr> = HOSTS.iter().map(|h| (*h, free_port())).collect();
        let dir = std::env::temp_dir().join(format!("halo-liveness-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let device = dir.join("watchdog");
        std::fs::write(&device, b"").expect("a stand-in watchdog device");
        let (heartbeats_tx, mut heartbeats_rx) = mpsc::channel(4096);
        let (inputs_tx, _inputs_rx) = mpsc::channel(1024);
        let liveness = Liveness::start(
            LivenessConfig {
                transport: transport("host-1", &addresses),
                heartbeat_interval: Duration::from_millis(50),
                datastore_interval: Duration::from_millis(50),
                fence_timeout: Duration::from_millis(1_000),
                stall_gap: Duration::from_millis(100),
                judge_grace: Duration::from_millis(100),
                datastores: vec![],
                local_libvirt: "test:///nonexistent-for-the-fencer".into(),
                realtime_priority: 0,
            },
            heartbeats_tx,
            inputs_tx,
        )
        .expect("liveness starts");
        liveness.publish(|s| {
            s.heartbeat = Some(body("host-1", 1, vec![]));
            s.protected_here = vec!["vm-1".into()];
            s.fencing_armed = true;
            s.hosts = 3;
        });
        liveness.arm(Some(HostWatchdog::open(&device).expect("the stand-in device")));

        // host-2: a real transport; it acknowledges what it hears from host-1.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let (peer, mut from_host_1) = runtime
            .block_on(async { HeartbeatTransport::bind(transport("host-2", &addresses)).expect("host-2 binds") });
        let mut heard: Vec<(Instant, u64)> = Vec::new();
        let mut peer_seq = 0;
        let mut talk = |until: Duration, peer_talks: bool, heard: &mut Vec<(Instant, u64)>, peer_seq: &mut u64| {
            let started = Instant::now();
            let mut last_step = Instant::now();
            while started.elapsed() < until {
                runtime.block_on(async {
                    let deadline = tokio::time::sleep(Duration::from_millis(25));
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            Some(got) = from_host_1.recv() => heard.push((Instant::now(), got.heartbeat.seq)),
                            () = &mut deadline => break,
                        }
                    }
                    if peer_talks {
                        *peer_seq += 1;
                        let ack = heard.last().map_or(0, |h| h.1);
                        let _ = peer.send("A", &body("host-2", *peer_seq, vec![(0, ack)])).await;
                    }
                });
                // The agent loop: one step every 400 ms.
                if last_step.elapsed() >= Duration::from_millis(400) {
                    liveness.progressed();
                    last_step = Instant::now();
                }
            }
        };

        // 3 s with the loop busy: heartbeats every 50 ms regardless, host-2 acks them.
        talk(Duration::from_secs(3), true, &mut heard, &mut peer_seq);
        let gaps: Vec<u128> = heard.windows(2).map(|w| w[1].0.duration_since(w[0].0).as_millis()).collect();
        assert!(heard.len() >= 45, "heard {} heartbeats in 3 s", heard.len());
        assert!(gaps.iter().all(|&g| g < 150), "gaps between heartbeats (ms): {gaps:?}");
        assert!(heard.windows(2).all(|w| w[1].1 > w[0].1), "numbers rise");
        assert!(liveness.stats().keepalives.load(Ordering::Relaxed) > 40, "the same body under new numbers");
        assert_eq!(liveness.stats().fences.load(Ordering::Relaxed), 0, "host-2 acks: quorum");
        // Received heartbeats went on to the loop.
        assert!(heartbeats_rx.try_recv().is_ok(), "forwarded");
        assert_eq!(liveness.stats().starved.load(Ordering::Relaxed), 0);

        // host-2 falls silent (host-1 cut off, no datastore): the busy loop cannot fence; the
        // liveness path does, once the fence timeout passed without an ack.
        let cut = Instant::now();
        talk(Duration::from_millis(1_600), false, &mut heard, &mut peer_seq);
        assert_eq!(
            liveness.stats().fences.load(Ordering::Relaxed),
            1,
            "fenced once, {:?} after the cut",
            cut.elapsed()
        );

        // The loop stops making steps: after the fence timeout the watchdog is fed no more.
        let fed = std::fs::metadata(&device).expect("device").len();
        std::thread::sleep(Duration::from_millis(1_300));
        let starved_at = std::fs::metadata(&device).expect("device").len();
        std::thread::sleep(Duration::from_millis(300));
        assert!(starved_at > fed, "fed while the loop was young");
        assert_eq!(std::fs::metadata(&device).expect("device").len(), starved_at, "not fed any more");
        assert_eq!(liveness.stats().starved.load(Ordering::Relaxed), 1);
        liveness.stop(vec![]);
        assert!(std::fs::read(&device).expect("device").ends_with(b"V"), "a deliberate stop disarms");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
