//! The agent at work: one task owns the node (the core) and the plugin policies; every driver
//! delivers its outcomes as inputs over one channel; a tick every 100 ms keeps time moving.
//!
//! Inputs: heartbeats from the transport, driver outcomes, libvirt lifecycle events (mapped to
//! VM states), ticks. Actions: carried out through the core's driver traits.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use halo_core::drivers::{
    DatastoreDriver, EventSink, FenceDriver, HeartbeatSender, HypervisorDriver, PingDriver, carry_out,
};
use halo_core::node::PingTarget;
use halo_core::{
    Claim, ClusterConfig, DatastoreRecord, Event, EventKind, Heartbeat, Input, Node, Severity, StopReason, VmState,
};
use halo_datastore::{Datastore, Datastores, Location, NfsTarget};
use halo_libvirt::{
    Hypervisor, HypervisorConfig, Hypervisors, LifecycleEvent, LifecycleStates, StateChange, generation_of,
    held_by_halo,
};
use halo_net::{ClusterKey, Membership, NetworkEndpoints, Pinger, TransportConfig};
use halo_plugin_runtime::compile::HALO_WORKER_ARGS;
use halo_plugin_runtime::policies::outcome;
use halo_plugin_runtime::{ChildCompiler, CompilePlace, PluginFiles, PluginPolicies, Runtime};

use crate::decisions::{DecisionLog, DecisionWorld, RecordSettings, Recorded};
use tokio::sync::mpsc;

use crate::config::{AgentConfig, ETCD_STORE};
use crate::events::{EventLog, LoggedEvent};
use crate::handle::{AgentHandle, Control, PluginStatus, ReloadOutcome, Snapshot};

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The cluster key.
    #[error(transparent)]
    Key(#[from] halo_net::KeyError),
    /// The liveness path (heartbeat sockets, watchdog device).
    #[error(transparent)]
    Liveness(#[from] crate::liveness::LivenessError),
    /// The configuration (normally caught by `AgentConfig::load`).
    #[error("configuration: {0}")]
    Config(String),
    /// The plugins.
    #[error("plugins: {0}")]
    Plugins(String),
    /// This host's libvirt.
    #[error("this host's libvirt: {0}")]
    Libvirt(String),
}

/// The plugin policies the loop decides with: shared with the blocking threads that compile
/// replaced plugin files (a slot swaps atomically; a decision takes a snapshot). Every decision
/// is handed to the decision log (recorded, and judged by a shadow candidate, off the loop).
struct AgentPolicies {
    policies: Arc<PluginPolicies>,
    shadows: Arc<PluginPolicies>,
    log: Arc<DecisionLog>,
}

impl halo_core::Policies for AgentPolicies {
    fn isolation(
        &mut self,
        input: &halo_policy::IsolationInput,
    ) -> halo_core::PolicyOutcome<Vec<halo_policy::VmIsolationDecision>> {
        let decision = self.policies.isolation.decide(input);
        self.log.record(&decision, Recorded::Isolation { input: input.clone(), answer: decision.answer.clone() });
        outcome(decision)
    }

    fn placement(&mut self, input: &halo_policy::PlacementInput) -> halo_core::PolicyOutcome<halo_policy::Placement> {
        let decision = self.policies.placement.decide(input);
        self.log.record(&decision, Recorded::Placement { input: input.clone(), answer: decision.answer.clone() });
        outcome(decision)
    }

    fn restart_order(
        &mut self,
        input: &halo_policy::RestartInput,
    ) -> halo_core::PolicyOutcome<Result<Vec<halo_policy::Wave>, halo_policy::RestartError>> {
        let decision = self.policies.restart_order.decide(input);
        self.log.record(&decision, Recorded::RestartOrder { input: input.clone(), answer: decision.answer.clone() });
        outcome(decision)
    }

    fn balance(
        &mut self,
        input: &halo_policy::balance::BalanceInput,
    ) -> halo_core::PolicyOutcome<Vec<halo_policy::balance::BalanceMove>> {
        let decision = self.policies.balancing.decide(input);
        self.log.record(&decision, Recorded::Balancing { input: input.clone(), answer: decision.answer.clone() });
        outcome(decision)
    }

    /// The isolation plugin's storage response (0.1.4), or the built-in one. Not recorded:
    /// storage decisions are rare, and their events say what was decided.
    fn storage(
        &mut self,
        input: &halo_policy::StorageInput,
    ) -> halo_core::PolicyOutcome<Vec<halo_policy::VmStorageDecision>> {
        outcome(self.policies.storage.decide(input))
    }
}

/// Every driver of this agent, behind the core's traits.
struct AgentDrivers {
    /// Heartbeats and datastore heartbeats go out on the liveness path: the core's latest are
    /// published to it.
    liveness: Arc<crate::liveness::Liveness>,
    datastores: Datastores,
    pings: Pinger,
    hypervisor: Hypervisors,
    host: String,
    events: Arc<EventLog>,
    /// Events recorded while an operator command is handled (its answer).
    capture: Option<Vec<Event>>,
    /// Every host's fence devices (from halo.toml), and where fence results go.
    fence_devices: Arc<BTreeMap<String, Vec<crate::fence::FenceDevice>>>,
    /// Fences under way, each with the flag that calls it off.
    fencing: Arc<Mutex<BTreeMap<String, Arc<std::sync::atomic::AtomicBool>>>>,
    /// The protected VMs' definitions the hypervisor driver starts VMs from (a storage move's
    /// new definition goes here as soon as a datastore took it).
    catalog: Arc<Mutex<BTreeMap<String, String>>>,
    inputs: mpsc::Sender<Input>,
    runtime: tokio::runtime::Handle,
    /// The decisions of the step under way: its events name them.
    decisions: Arc<DecisionLog>,
}

impl FenceDriver for AgentDrivers {
    /// On a blocking thread: the agents' calls take up to their timeouts each.
    fn fence_host(&mut self, host: &str) {
        let (devices, inputs, host) = (Arc::clone(&self.fence_devices), self.inputs.clone(), host.to_string());
        let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let fencing = Arc::clone(&self.fencing);
        fencing.lock().unwrap_or_else(|p| p.into_inner()).insert(host.clone(), Arc::clone(&cancelled));
        self.runtime.spawn_blocking(move || {
            let started = Instant::now();
            let result = crate::fence::fence(devices.get(&host).map(Vec::as_slice).unwrap_or_default(), &cancelled);
            fencing.lock().unwrap_or_else(|p| p.into_inner()).remove(&host);
            match &result {
                Ok(device) => {
                    tracing::warn!(host, "fenced: {device} confirms off ({:.2}s)", started.elapsed().as_secs_f64())
                }
                Err(why) if cancelled.load(std::sync::atomic::Ordering::Relaxed) => {
                    tracing::warn!(host, "fence called off ({:.2}s): {why}", started.elapsed().as_secs_f64())
                }
                Err(why) => {
                    tracing::error!(host, "ALERT fencing failed ({:.2}s): {why}", started.elapsed().as_secs_f64())
                }
            }
            let _ = inputs.blocking_send(Input::FenceResult { host, result });
        });
    }

    /// On a blocking thread: every device's `status`, in order.
    fn monitor_fence(&mut self, host: &str) {
        let (devices, inputs, host) = (Arc::clone(&self.fence_devices), self.inputs.clone(), host.to_string());
        self.runtime.spawn_blocking(move || {
            let devices: Vec<(String, Result<String, String>)> = devices
                .get(&host)
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|device| {
                    let answer = device.status().map(|power| match power {
                        crate::fence::Power::On => "on".to_string(),
                        crate::fence::Power::Off => "off".to_string(),
                    });
                    (device.name(), answer)
                })
                .collect();
            let _ = inputs.blocking_send(Input::FenceMonitored { host, devices });
        });
    }

    fn cancel_fence(&mut self, host: &str) {
        if let Some(flag) = self.fencing.lock().unwrap_or_else(|p| p.into_inner()).get(host) {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl HeartbeatSender for AgentDrivers {
    fn send_heartbeat(&mut self, _network: &str, heartbeat: &std::sync::Arc<Heartbeat>) {
        // The same heartbeat on every network: the liveness path sends it on each; at once,
        // outside its rate, when the VMs running here changed (the master compares them).
        self.liveness.publish(|state| {
            let changed = state.heartbeat.as_ref().is_some_and(|before| before.vms != heartbeat.vms);
            state.send_now |= changed;
            state.heartbeat = Some(Heartbeat::clone(heartbeat));
        });
    }
}

impl DatastoreDriver for AgentDrivers {
    fn write_record(&mut self, _datastore: &str, record: &DatastoreRecord) {
        // The same record on every datastore: the liveness path writes it on each.
        self.liveness.publish(|state| state.record = Some(record.clone()));
    }
    fn read_records(&mut self, datastore: &str) {
        self.datastores.read_records(datastore);
    }
    fn claim(&mut self, datastore: &str, claim: &Claim) {
        self.datastores.claim(datastore, claim);
    }
    fn check_claim(&mut self, vm: &str, generation: u64) {
        self.datastores.check_claim(vm, generation);
    }
    fn record_fence(&mut self, record: &halo_core::FenceRecord) {
        self.datastores.record_fence(record);
    }
    /// The datastores first, then this agent's catalog (what a restart starts the VM from
    /// here), before the core hears it is recorded.
    fn record_definition(&mut self, vm: &str, moved: &[(String, String)]) {
        let (write, inputs, catalog) =
            (self.datastores.rewrite_definition(vm, moved), self.inputs.clone(), Arc::clone(&self.catalog));
        let vm = vm.to_string();
        self.runtime.spawn(async move {
            let result = write.await;
            if let Ok(xml) = &result {
                catalog.lock().unwrap_or_else(|p| p.into_inner()).insert(vm.clone(), xml.clone());
            }
            let _ = inputs.send(Input::DefinitionRecorded { vm, result: result.map(drop) }).await;
        });
    }
}

impl PingDriver for AgentDrivers {
    fn ping(&mut self, target: &PingTarget) {
        self.pings.ping(target);
    }
}

impl HypervisorDriver for AgentDrivers {
    fn start_vm(&mut self, host: &str, vm: &str, generation: u64) {
        self.hypervisor.start_vm(host, vm, generation);
    }
    fn stop_vm(&mut self, vm: &str, reason: StopReason, grace_secs: u32) {
        self.hypervisor.stop_vm(vm, reason, grace_secs);
    }
    fn migrate_vm(&mut self, vm: &str, from: &str, to: &str) {
        self.hypervisor.migrate_vm(vm, from, to);
    }
    fn pause_vm(&mut self, vm: &str) {
        self.hypervisor.pause_vm(vm);
    }
    fn resume_vm(&mut self, vm: &str) {
        self.hypervisor.resume_vm(vm);
    }
    fn pause_copy(&mut self, host: &str, vm: &str) {
        self.hypervisor.pause_copy(host, vm);
    }
    fn read_load(&mut self, host: &str) {
        self.hypervisor.read_load(host);
    }
    fn copy_storage(&mut self, vm: &str, host: &str, dir: &str) {
        self.hypervisor.copy_storage(vm, host, dir);
    }
    fn finish_storage(&mut self, vm: &str, host: &str, pivot: bool) {
        self.hypervisor.finish_storage(vm, host, pivot);
    }
}

impl EventSink for AgentDrivers {
    fn record(&mut self, event: Event) {
        let trace = event.trace.as_deref().unwrap_or("");
        match event.severity {
            Severity::Info => tracing::info!(host = %self.host, kind = %event.kind, "{} {trace}", event.message),
            Severity::Warning => tracing::warn!(host = %self.host, kind = %event.kind, "{} {trace}", event.message),
            Severity::Alert => {
                tracing::error!(host = %self.host, kind = %event.kind, "ALERT {} {trace}", event.message)
            }
        }
        if let Some(capture) = self.capture.as_mut() {
            capture.push(event.clone());
        }
        let _: LoggedEvent = self.events.record_linked(event, self.decisions.step());
    }
}

/// How many driver outcomes may wait for the agent loop (drivers' tasks wait for room; the
/// liveness path never waits, it drops and counts).
const INPUT_QUEUE: usize = 16_384;

/// How many requests may wait for the agent loop (the API's, the catalog task's, reload
/// outcomes); beyond that the API answers "busy".
const CONTROL_QUEUE: usize = 256;

/// Starts the agent: connects its drivers, compiles its plugins, starts the liveness path.
/// Answers with the handle to the agent loop and the loop itself, to be awaited (it ends on
/// SIGTERM or SIGINT). Must run inside a multi-thread tokio runtime.
pub async fn start(
    config: &AgentConfig,
) -> Result<(AgentHandle, impl std::future::Future<Output = Result<(), StartError>> + use<>), StartError> {
    let runtime = tokio::runtime::Handle::current();
    let key = ClusterKey::from_file(&config.key_file)?;
    let me = config.host.clone();
    let cluster = config.cluster();
    let membership = Membership::new(config.hosts.iter().map(|h| h.name.clone()).collect());
    let my_entry = config
        .hosts
        .iter()
        .find(|h| h.name == me)
        .cloned()
        .ok_or_else(|| StartError::Config(format!("host `{me}` is not among the hosts")))?;
    let networks = config
        .networks
        .iter()
        .filter_map(|net| {
            let bind = SocketAddr::new(*my_entry.addresses.get(net)?, config.heartbeat_port);
            let peers = config
                .hosts
                .iter()
                .filter(|h| h.name != me)
                .filter_map(|h| Some((h.name.clone(), SocketAddr::new(*h.addresses.get(net)?, config.heartbeat_port))))
                .collect();
            let broadcast = config.broadcast.get(net).map(|ip| SocketAddr::new((*ip).into(), config.heartbeat_port));
            let interface = config.interfaces.get(net).cloned();
            Some(NetworkEndpoints { name: net.clone(), bind, peers, broadcast, interface })
        })
        .collect();
    let transport = TransportConfig { cluster: config.cluster.clone(), me: me.clone(), membership, key, networks };
    let (inputs, mut inputs_rx) = mpsc::channel::<Input>(INPUT_QUEUE);
    let (control, mut control_rx) = mpsc::channel::<Control>(CONTROL_QUEUE);
    let control_back = control.clone();

    // Datastores: opened on first use; their layout is made by the catalog task (retried while
    // a datastore does not answer), so a datastore that is down does not hold up the start.
    let mut stores = Vec::new();
    let mut liveness_stores = Vec::new();
    for ds in &config.datastores {
        let location = match (&ds.directory, &ds.nfs) {
            (Some(dir), _) => Location::Directory(dir.clone()),
            (None, Some(nfs)) => Location::Nfs(NfsTarget {
                server: nfs.server,
                export: nfs.export.clone(),
                mount_port: nfs.mount_port,
                nfs_port: nfs.nfs_port,
            }),
            (None, None) => continue, // refused by validation
        };
        let timeout = Duration::from_millis(ds.timeout_ms);
        // The liveness path writes the datastore heartbeats on connections of its own.
        liveness_stores.push(Datastore::unopened(&ds.name, location.clone(), &config.cluster, timeout));
        stores.push(Datastore::unopened(&ds.name, location, &config.cluster, timeout));
    }
    if config.coordination.etcd() {
        let location = Location::Etcd {
            endpoints: config.coordination.endpoints.clone(),
            lease_ttl: Duration::from_secs(config.coordination.lease_ttl_s),
        };
        let timeout = Duration::from_millis(config.coordination.timeout_ms);
        liveness_stores.push(Datastore::unopened(ETCD_STORE, location.clone(), &config.cluster, timeout));
        stores.push(Datastore::unopened(ETCD_STORE, location, &config.cluster, timeout));
    }
    let datastores = Datastores::new(stores, inputs.clone(), runtime.clone());
    let stores: Vec<Arc<Datastore>> = config.store_names().iter().filter_map(|d| datastores.get(d)).collect();
    let catalog: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let catalog_refresh = Arc::new(tokio::sync::Notify::new());
    for store in stores.iter().filter(|s| s.watches()) {
        runtime.spawn(watch_changes(Arc::clone(store), Arc::clone(&catalog_refresh)));
    }
    runtime.spawn(watch_catalog(
        stores.clone(),
        config.cluster(),
        Arc::clone(&catalog),
        Arc::clone(&catalog_refresh),
        control.clone(),
    ));

    let peers_first_network = config
        .hosts
        .iter()
        .filter_map(|h| Some((h.name.clone(), *h.addresses.get(config.networks.first()?)?)))
        .collect();
    let pings = Pinger::new(
        peers_first_network,
        Duration::from_millis(config.timeouts.ping_timeout_ms),
        inputs.clone(),
        runtime.clone(),
    )
    .via(config.networks.first().and_then(|n| config.interfaces.get(n)).cloned());
    let mut uris: BTreeMap<String, String> =
        config.hosts.iter().map(|h| (h.name.clone(), h.libvirt_uri.clone())).collect();
    uris.insert(me.clone(), config.libvirt.local_uri.clone());
    let hypervisor = Hypervisors::new(
        HypervisorConfig {
            me: me.clone(),
            uris,
            migration_uris: config
                .hosts
                .iter()
                .map(|h| (h.name.clone(), config.migration_uri(h).unwrap_or_else(|_| h.libvirt_uri.clone())))
                .collect(),
            shared_storage: config.libvirt.shared_storage.iter().map(|p| p.display().to_string()).collect(),
            connect_timeout: Duration::from_secs(5),
            migration_deadline: Duration::from_secs(120),
            leases: config.sanlock_leases(),
        },
        Arc::clone(&catalog),
        inputs.clone(),
        runtime.clone(),
    );
    let webhook = config.alerts.webhook_url.as_deref().and_then(|u| crate::client::parse_http_url(u).ok());
    let events = EventLog::new(config.alerts.event_log.clone(), webhook);
    runtime.spawn(crate::health::watch(config.health.clone(), inputs.clone(), Arc::clone(&events), me.clone()));
    // The plugins are compiled before the liveness path starts (later swaps compile on a
    // blocking thread, never on the agent loop).
    // Plugins compile in a child process of the agent's own executable (`halo`), under the
    // configured time and memory: a compile bomb is stopped there, never in the agent.
    let compiler = ChildCompiler::this_executable(&HALO_WORKER_ARGS, config.plugins.compile_limits())
        .map_err(|e| StartError::Plugins(format!("cannot find the agent's executable to compile plugins with: {e}")))?;
    let plugin_runtime = Arc::new(
        Runtime::new(config.plugins.limits(), config.plugins.cache_dir.as_deref())
            .map_err(|e| StartError::Plugins(e.to_string()))?
            .compile_at(CompilePlace::Child(compiler)),
    );
    // A plugin that does not load leaves its decision point on the built-in policy, with an
    // alert: a broken file must not keep HA from running on this host. Fixed, it is loaded by
    // the next reload poll.
    let (policies, failed) = PluginPolicies::load_or_builtin(
        &plugin_runtime,
        PluginFiles {
            isolation: config.plugins.isolation.as_deref(),
            placement: config.plugins.placement.as_deref(),
            restart_order: config.plugins.restart_order.as_deref(),
            balancing: config.plugins.balancing.as_deref(),
        },
    );
    let policies = Arc::new(policies);
    // Shadow candidates load like the plugins in force; one that does not load is an alert and
    // no shadow for that decision point.
    let (shadows, shadow_failed) = PluginPolicies::load_or_builtin(
        &plugin_runtime,
        PluginFiles {
            isolation: config.plugins.shadow_isolation.as_deref(),
            placement: config.plugins.shadow_placement.as_deref(),
            restart_order: config.plugins.shadow_restart_order.as_deref(),
            balancing: config.plugins.shadow_balancing.as_deref(),
        },
    );
    let shadows = Arc::new(shadows);
    let record = config.plugins.decisions_dir.clone().map(|dir| RecordSettings {
        dir,
        segment_bytes: config.plugins.decisions_segment_mib << 20,
        max_bytes: config.plugins.decisions_max_mib << 20,
    });
    let decision_log = DecisionLog::start(&me, events.run(), record, Arc::clone(&shadows))
        .map_err(|e| StartError::Plugins(format!("plugins.decisions-dir: cannot record decisions there: {e}")))?;
    let mut decide = AgentPolicies {
        policies: Arc::clone(&policies),
        shadows: Arc::clone(&shadows),
        log: Arc::clone(&decision_log),
    };
    let reloading = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if config.liveness.lock_memory {
        crate::liveness::lock_memory();
    }
    if config.watchdog.device.is_none() {
        tracing::warn!(
            "no host watchdog ([watchdog] device): if this agent dies and the host then loses its networks, \
             its VMs may run on while the cluster restarts them (docs/operator.md, \"The host watchdog\")"
        );
    }
    let t = config.timeouts;
    let (heartbeats_tx, mut heartbeats_rx) = mpsc::channel(4096);
    let liveness = Arc::new(crate::liveness::Liveness::start(
        crate::liveness::LivenessConfig {
            transport,
            heartbeat_interval: Duration::from_millis(t.heartbeat_interval_ms),
            datastore_interval: Duration::from_millis(t.datastore_interval_ms),
            fence_timeout: Duration::from_millis(t.fence_timeout_ms),
            stall_gap: Duration::from_millis(t.stall_gap_ms()),
            judge_grace: Duration::from_millis(t.judge_grace_ms()),
            datastores: liveness_stores,
            local_libvirt: config.libvirt.local_uri.clone(),
            realtime_priority: config.liveness.realtime_priority,
        },
        heartbeats_tx,
        inputs.clone(),
    )?);
    let mut drivers = AgentDrivers {
        liveness: Arc::clone(&liveness),
        datastores,
        pings,
        hypervisor,
        host: me.clone(),
        events: Arc::clone(&events),
        capture: None,
        fence_devices: Arc::new(config.hosts.iter().map(|h| (h.name.clone(), h.fence.clone())).collect()),
        fencing: Arc::new(Mutex::new(BTreeMap::new())),
        catalog: Arc::clone(&catalog),
        inputs: inputs.clone(),
        runtime: runtime.clone(),
        decisions: Arc::clone(&decision_log),
    };
    for (world, why) in failed {
        let message = format!("{world}: the plugin did not load, the built-in policy decides until it does: {why}");
        let kind = EventKind::PluginLoadFailed;
        drivers.record(Event { at: 0, node: me.clone(), severity: Severity::Alert, kind, message, trace: None });
    }
    for (world, why) in shadow_failed {
        let message = format!("{world}: the shadow candidate did not load, nothing runs in its shadow: {why}");
        let kind = EventKind::PluginLoadFailed;
        drivers.record(Event { at: 0, node: me.clone(), severity: Severity::Alert, kind, message, trace: None });
    }
    if let Some(leases) = config.sanlock_leases() {
        join_lockspace(leases, Arc::clone(&events), me.clone());
    }

    // This host's libvirt: what runs now, then its lifecycle events.
    let known: Arc<RwLock<BTreeSet<String>>> =
        Arc::new(RwLock::new(config.vms.iter().map(|v| v.name.clone()).collect()));
    let local_uri = config.libvirt.local_uri.clone();
    let local = Hypervisor::connect_with_timeout(&local_uri, Duration::from_secs(10))
        .map_err(|e| StartError::Libvirt(e.to_string()))?;
    report_running(&local, &read_set(&known), &inputs).map_err(StartError::Libvirt)?;
    let subscription = local.subscribe().map_err(|e| StartError::Libvirt(e.to_string()))?;
    {
        let inputs = inputs.clone();
        let known = Arc::clone(&known);
        std::thread::Builder::new()
            .name("libvirt-lifecycle".into())
            .spawn(move || forward_lifecycle(local, subscription, known, inputs))
            .map_err(|e| StartError::Libvirt(e.to_string()))?;
    }

    let incarnation = crate::events::unix_ms();
    let mut node = Node::new(&me, cluster, 0).with_incarnation(incarnation);
    let mut in_force = Arc::new(node.config().clone());
    let (snapshot_tx, snapshot_rx) = tokio::sync::watch::channel(Arc::new(Snapshot {
        status: node.status(),
        plugins: plugin_status(&policies, &shadows, &decision_log),
        config: Arc::clone(&in_force),
    }));
    let (published, published_shadows, published_log) =
        (Arc::clone(&policies), Arc::clone(&shadows), Arc::clone(&decision_log));
    let publish_snapshot = move |node: &Node, config: &Arc<ClusterConfig>| {
        let plugins = plugin_status(&published, &published_shadows, &published_log);
        snapshot_tx.send_replace(Arc::new(Snapshot { status: node.status(), plugins, config: Arc::clone(config) }));
    };
    let handle = AgentHandle {
        me: me.clone(),
        events,
        control,
        catalog_refresh,
        datastores: stores,
        liveness: liveness.stats_handle(),
        snapshot: snapshot_rx,
        decisions: Arc::clone(&decision_log.stats),
    };
    let host_watchdog = match &config.watchdog.device {
        Some(device) => Some(
            crate::watchdog::HostWatchdog::open(device)
                .map_err(|e| StartError::Config(format!("watchdog.device: {}: {e}", device.display())))?,
        ),
        None => None,
    };
    let cluster_name = config.cluster.clone();
    let agent_loop = async move {
        liveness.arm(host_watchdog);
        let mut stop = std::pin::pin!(stop_requested());
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        // After a stall, one tick — not a burst of the ones missed.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        // When the node was last fed (monotonic): a longer gap than the stall gap is told to the
        // node before anything else, so it does not judge from what it knew before (core `resume`).
        let mut last_fed: u64 = 0;
        tracing::info!(host = %me, cluster = %cluster_name, "halo agent running");
        loop {
            let input = tokio::select! {
                _ = tick.tick() => Input::Tick,
                Some(received) = heartbeats_rx.recv() => Input::Heartbeat { network: received.network.into(), heartbeat: received.heartbeat },
                Some(input) = inputs_rx.recv() => input,
                () = &mut stop => {
                    // A deliberate stop: the VMs stay (the others see "agent down").
                    tracing::info!(host = %me, "stopping on request; VMs stay where they run");
                    drop(drivers);
                    match Arc::try_unwrap(liveness) {
                        Ok(liveness) => liveness.stop(node.protected_here()),
                        Err(_) => tracing::error!("the liveness path is still shared; the host watchdog stays armed"),
                    }
                    return Ok(());
                }
                Some(request) = control_rx.recv() => {
                    let now = started.elapsed().as_millis() as u64;
                    decision_log.take_step();
                    resume_after_gap(&mut node, &mut decide, &mut drivers, &mut last_fed, now);
                    let context = ControlContext { known: &known, local_uri: &local_uri, inputs: &inputs, control: &control_back };
                    let applies = matches!(request, Control::Apply(_));
                    handle_control(request, now, &mut node, &mut decide, &mut drivers, &context);
                    if applies {
                        in_force = Arc::new(node.config().clone());
                    }
                    publish(&node, &liveness);
                    publish_snapshot(&node, &in_force);
                    continue;
                }
            };
            let is_tick = input == Input::Tick;
            let is_heartbeat = matches!(input, Input::Heartbeat { .. });
            let now = started.elapsed().as_millis() as u64;
            decision_log.take_step();
            resume_after_gap(&mut node, &mut decide, &mut drivers, &mut last_fed, now);
            for action in node.handle(now, input, &mut decide) {
                carry_out(action, &mut drivers);
            }
            // Heartbeats are most of the inputs (hosts × networks × 4 a second): after them only the
            // step is counted; what the core decided is published after every other input and tick.
            if is_heartbeat {
                liveness.progressed();
            } else {
                publish(&node, &liveness);
            }
            if is_tick {
                // The status costs O(hosts): every tick up to 32 hosts, then every hosts/16
                // ticks (every 0.8 s at 128 hosts, at most every second). Control requests
                // publish at once.
                if ticks.is_multiple_of(snapshot_every(node.config().hosts.len())) {
                    publish_snapshot(&node, &in_force);
                }
                ticks += 1;
                if ticks.is_multiple_of(20) && !reloading.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    // A replaced plugin file is compiled on a blocking thread and swapped in when
                    // ready (or refused, the old one staying); the loop only records the outcome.
                    let (policies, reloading, control) =
                        (Arc::clone(&policies), Arc::clone(&reloading), control_back.clone());
                    tokio::task::spawn_blocking(move || {
                        let results = reload_plugins(&policies, true);
                        reloading.store(false, std::sync::atomic::Ordering::SeqCst);
                        if !results.is_empty() {
                            let _ = control.blocking_send(Control::PluginsReloaded(results));
                        }
                    });
                }
            }
        }
    };
    Ok((handle, agent_loop))
}

/// Every how many ticks the API's status snapshot is refreshed in a cluster of `hosts`.
fn snapshot_every(hosts: usize) -> u64 {
    (hosts as u64 / 16).clamp(1, 10)
}

/// Feeds `Input::Resumed` when the node was not fed for the stall gap or longer (the process
/// was stopped, the host frozen, or one step took that long), then notes `now` as fed.
fn resume_after_gap(
    node: &mut Node,
    policies: &mut AgentPolicies,
    drivers: &mut AgentDrivers,
    last_fed: &mut u64,
    now: u64,
) {
    let gap = now.saturating_sub(*last_fed);
    *last_fed = now;
    if gap >= node.config().timeouts.stall_gap_ms() {
        tracing::warn!(host = %node.name(), gap_ms = gap, "the agent loop handled nothing for {gap} ms");
        // Acks of what the liveness path sent so far are not evidence of after the gap.
        let seq = drivers.liveness.sent_seq();
        for input in [Input::KeptAlive { seq }, Input::Resumed { gap_ms: gap }] {
            for action in node.handle(now, input, policies) {
                carry_out(action, drivers);
            }
        }
    }
}

/// Tells the liveness path what the core decided, and that the loop made a step.
fn publish(node: &Node, liveness: &crate::liveness::Liveness) {
    let (protected_here, fenced, armed) = (node.protected_here(), node.fenced(), node.fencing_armed());
    let (hosts, quorum_fencing) = (node.config().hosts.len(), node.config().ha.quorum_fencing);
    liveness.publish(|state| {
        state.protected_here = protected_here;
        state.fenced = fenced;
        state.fencing_armed = armed;
        state.hosts = hosts;
        state.quorum_fencing = quorum_fencing;
    });
    liveness.progressed();
}

/// SIGTERM or SIGINT.
async fn stop_requested() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// What a request of the API may need besides the node.
#[derive(Clone, Copy)]
struct ControlContext<'a> {
    known: &'a Arc<RwLock<BTreeSet<String>>>,
    local_uri: &'a str,
    inputs: &'a mpsc::Sender<Input>,
    /// Back to the loop (outcomes of work done off it).
    control: &'a mpsc::Sender<Control>,
}

/// Carries out one request of the API.
fn handle_control(
    request: Control,
    now: u64,
    node: &mut Node,
    policies: &mut AgentPolicies,
    drivers: &mut AgentDrivers,
    context: &ControlContext<'_>,
) {
    let ControlContext { known, local_uri, inputs, control: control_back } = *context;
    match request {
        Control::Command(command, reply) => {
            drivers.capture = Some(Vec::new());
            for action in node.handle(now, Input::Command(command), policies) {
                carry_out(action, drivers);
            }
            let _ = reply.send(drivers.capture.take().unwrap_or_default());
        }
        Control::WhatIf(failed, reply) => {
            let _ = reply.send(node.what_if(&failed, policies));
        }
        Control::BalancePlan(reply) => {
            let _ = reply.send(node.balance_proposal(policies));
        }
        Control::AdmitStart(request, claims, reply) => {
            let admission = node.admit_start(&request, claims);
            let severity = if admission.admit { Severity::Info } else { Severity::Alert };
            let kind = if admission.admit { EventKind::VmStartAdmitted } else { EventKind::VmStartRefused };
            // Every start of a protected VM the hook asked about, and every refusal, is on record.
            if !admission.admit || node.config().vm(&request.vm).is_some_and(|s| s.protected()) {
                let message = format!("libvirt hook: {}", admission.reason);
                let node = node.name().to_string();
                drivers.record(Event { at: now, node, severity, kind, message, trace: None });
            }
            let _ = reply.send(admission);
        }
        Control::Admit(spec, host, reply) => {
            let _ = reply.send(node.admit(&spec, host.as_deref(), policies));
        }
        Control::ReloadPlugins(reply) => {
            // Compiled on a blocking thread; the outcome comes back to be recorded.
            let (plugins, control) = (Arc::clone(&policies.policies), control_back.clone());
            tokio::task::spawn_blocking(move || {
                let results = reload_plugins(&plugins, false);
                let _ = control.blocking_send(Control::PluginsReloaded(results.clone()));
                let _ = reply.send(results);
            });
        }
        Control::Promote(world, reply) => {
            // The shadow's plugin is already compiled: moving it is instant, the loop may do it.
            let result = promote(&policies.policies, &policies.shadows, world);
            plugin_event(drivers, now, node.name(), world.wit_world(), result.clone());
            let _ = reply.send(result);
        }
        Control::PluginsReloaded(results) => {
            for (world, result) in results {
                plugin_event(drivers, now, node.name(), &world, result);
            }
        }
        Control::Audit(event) => drivers.record(*event),
        Control::Apply(config) => {
            let names: BTreeSet<String> = config.vms.iter().map(|v| v.name.clone()).collect();
            let added: BTreeSet<String> = {
                let mut known = known.write().unwrap_or_else(|p| p.into_inner());
                let added = names.difference(&known).cloned().collect();
                *known = names;
                added
            };
            for action in node.handle(now, Input::ConfigChanged(config), policies) {
                carry_out(action, drivers);
            }
            if !added.is_empty() {
                // A VM protected while it runs here: the core learns it runs here.
                let (uri, inputs) = (local_uri.to_string(), inputs.clone());
                tokio::task::spawn_blocking(move || {
                    match Hypervisor::connect_with_timeout(&uri, Duration::from_secs(5)) {
                        Ok(local) => {
                            if let Err(e) = report_running(&local, &added, &inputs) {
                                tracing::warn!("newly protected VMs: {e}");
                            }
                        }
                        Err(e) => tracing::warn!("newly protected VMs: this host's libvirt: {e}"),
                    }
                });
            }
        }
    }
}

/// Reloads every plugin slot with a file: all of them, or only those whose file changed.
fn reload_plugins(policies: &PluginPolicies, only_changed: bool) -> Vec<ReloadOutcome> {
    fn one<W: halo_plugin_runtime::PolicyWorld>(
        world: &str,
        slot: &halo_plugin_runtime::PluginSlot<W>,
        only_changed: bool,
    ) -> Option<ReloadOutcome> {
        let result = if only_changed { slot.reload_if_changed() } else { slot.reload() }?;
        let result = result
            .map(|i| format!("{} ({})", i.path.display(), &i.sha256[..12.min(i.sha256.len())]))
            .map_err(|e| e.to_string());
        Some((world.to_string(), result))
    }
    let isolation = one("isolation-policy", &policies.isolation, only_changed);
    // The storage response follows the isolation plugin (its `storage-response`, if any).
    let storage = isolation.as_ref().map(|_| {
        let result = policies.follow_isolation().map_err(|e| e.to_string()).map(|info| match info {
            Some(i) => format!("{} ({})", i.path.display(), &i.sha256[..12.min(i.sha256.len())]),
            None => "the built-in policy (the isolation plugin exports no storage-response)".to_string(),
        });
        ("storage-policy".to_string(), result)
    });
    [
        isolation,
        storage,
        one("placement-engine", &policies.placement, only_changed),
        one("restart-policy", &policies.restart_order, only_changed),
        one("balancing-policy", &policies.balancing, only_changed),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Puts the shadow candidate of `world` in force (until the agent restarts: `halo.toml` still
/// names the old file, which the operator changes to keep it).
fn promote(policies: &PluginPolicies, shadows: &PluginPolicies, world: DecisionWorld) -> Result<String, String> {
    let info = match world {
        DecisionWorld::Isolation => {
            let info = policies.isolation.promote_from(&shadows.isolation);
            if let Err(e) = policies.follow_isolation() {
                tracing::error!(
                    "the promoted isolation plugin's storage response does not load: {e}; the built-in one decides"
                );
            }
            info
        }
        DecisionWorld::Placement => policies.placement.promote_from(&shadows.placement),
        DecisionWorld::RestartOrder => policies.restart_order.promote_from(&shadows.restart_order),
        DecisionWorld::Balancing => policies.balancing.promote_from(&shadows.balancing),
    };
    match info {
        Some(i) => Ok(format!(
            "{} ({}), promoted from shadow; set [plugins] {} = \"{}\" in halo.toml to keep it after a restart",
            i.path.display(),
            &i.sha256[..12.min(i.sha256.len())],
            world.name(),
            i.path.display()
        )),
        None => Err(format!("no shadow candidate for {} is loaded ([plugins] shadow-{})", world.name(), world.name())),
    }
}

fn plugin_event(drivers: &mut AgentDrivers, now: u64, me: &str, world: &str, result: Result<String, String>) {
    let (severity, kind, message) = match result {
        Ok(what) => (Severity::Info, EventKind::PluginLoaded, format!("{world}: now {what}")),
        Err(why) => (
            Severity::Alert,
            EventKind::PluginLoadFailed,
            format!("{world}: the new file was refused, the old plugin stays in force: {why}"),
        ),
    };
    drivers.record(Event { at: now, node: me.to_string(), severity, kind, message, trace: None });
}

fn plugin_status(policies: &PluginPolicies, shadows: &PluginPolicies, log: &DecisionLog) -> Vec<PluginStatus> {
    fn one<W: halo_plugin_runtime::PolicyWorld>(
        world: DecisionWorld,
        slot: &halo_plugin_runtime::PluginSlot<W>,
        shadow: &halo_plugin_runtime::PluginSlot<W>,
        counts: &BTreeMap<DecisionWorld, crate::decisions::ShadowCount>,
    ) -> PluginStatus {
        let info = slot.info();
        let stats = slot.stats();
        PluginStatus {
            world: world.wit_world().to_string(),
            file: info.as_ref().map(|i| i.path.display().to_string()),
            sha256: info.map(|i| i.sha256),
            calls: stats.calls,
            fallbacks: stats.fallbacks,
            failures: stats.failures.iter().map(|(k, n)| (k.as_str().to_string(), *n)).collect(),
            seconds: stats.total_time.as_secs_f64(),
            reloads: stats.reloads,
            failed_reloads: stats.failed_reloads,
            shadow: shadow.info().map(|i| {
                let count = counts.get(&world).copied().unwrap_or_default();
                crate::handle::ShadowStatus {
                    file: i.path.display().to_string(),
                    sha256: i.sha256,
                    divergences: count.divergences(),
                    count,
                }
            }),
        }
    }
    let counts = log.stats.shadow();
    vec![
        one(DecisionWorld::Isolation, &policies.isolation, &shadows.isolation, &counts),
        one(DecisionWorld::Placement, &policies.placement, &shadows.placement, &counts),
        one(DecisionWorld::RestartOrder, &policies.restart_order, &shadows.restart_order, &counts),
        one(DecisionWorld::Balancing, &policies.balancing, &shadows.balancing, &counts),
    ]
}

fn read_set(set: &RwLock<BTreeSet<String>>) -> BTreeSet<String> {
    set.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Tells the core which of `vms` run on this host now, with their generation (or are held:
/// paused by a hold an earlier agent began).
fn report_running(local: &Hypervisor, vms: &BTreeSet<String>, inputs: &mpsc::Sender<Input>) -> Result<(), String> {
    for domain in local.domains().map_err(|e| e.to_string())? {
        if domain.state.is_active() && vms.contains(&domain.name) {
            let xml = local.xml(&domain.name).ok();
            let generation = xml.as_deref().and_then(generation_of).unwrap_or(1);
            // Paused by a hold an earlier agent did not settle: settled now, not taken for running.
            let paused = domain.state == halo_libvirt::DomainState::Paused;
            let held = paused && xml.as_deref().is_some_and(held_by_halo);
            // Paused by QEMU on an I/O error before this agent started: storage protection's.
            let io_error = paused && !held && local.paused_on_io_error(&domain.name).unwrap_or(false);
            let state = if held {
                VmState::Held
            } else if io_error {
                VmState::PausedOnIoError
            } else {
                VmState::Running
            };
            // At start and for newly protected VMs: a handful, into a queue with room.
            if let Err(e) = inputs.try_send(Input::VmState { vm: domain.name, generation, state }) {
                return Err(format!("the agent loop has no room for what runs here: {e}"));
            }
        }
    }
    Ok(())
}

/// The protected VMs' definitions and the run-time changes on the datastores, read every
/// second (and at once when the API changed something): the domain XML goes to the catalog
/// the hypervisor driver starts VMs from; VM settings and HA on/off are merged over
/// `halo.toml` and, when the result differs from what is in force, handed to the core. Of two
/// copies of one record on two datastores the higher revision wins.
async fn watch_catalog(
    stores: Vec<Arc<Datastore>>,
    base: ClusterConfig,
    catalog: Arc<Mutex<BTreeMap<String, String>>>,
    refresh: Arc<tokio::sync::Notify>,
    control: mpsc::Sender<Control>,
) {
    let mut laid_out = vec![false; stores.len()];
    let mut told = vec![false; stores.len()];
    let mut known: Vec<KnownCatalog> = stores.iter().map(|_| KnownCatalog::default()).collect();
    let mut in_force = base.clone();
    for round in 0_u64.. {
        let mut settings = halo_datastore::ClusterSettings::default();
        let mut reachable = vec![false; stores.len()];
        for ((((store, laid_out), told), known), reachable) in
            stores.iter().zip(laid_out.iter_mut()).zip(told.iter_mut()).zip(known.iter_mut()).zip(reachable.iter_mut())
        {
            // The layout is created once per datastore (retried while it fails), not every round.
            if !*laid_out {
                match store.ensure_layout().await {
                    Ok(()) => *laid_out = true,
                    Err(e) if !*told => {
                        *told = true;
                        tracing::error!(datastore = %store.name(), "{e}; retrying while running");
                    }
                    Err(_) => {}
                }
            }
            match known.refresh(store, round).await {
                Ok(_) => *reachable = true,
                Err(e) => tracing::debug!(datastore = %store.name(), "protected VMs: {e}"),
            }
            match store.settings().await {
                Ok(s) if s.revision >= settings.revision => settings = s,
                Ok(_) => {}
                Err(e) => tracing::debug!(datastore = %store.name(), "settings: {e}"),
            }
        }
        // The newest record of each VM among the datastores reached this round (by reference:
        // nothing is copied while nothing changed).
        let records = halo_core::settings::newest(
            known.iter().zip(&reachable).filter(|(_, reached)| **reached).flat_map(|(k, _)| &k.vms),
        );
        let read_any = reachable.contains(&true);
        {
            let mut c = catalog.lock().unwrap_or_else(|p| p.into_inner());
            for vm in records.values() {
                if c.get(&vm.name) != Some(&vm.domain_xml) {
                    c.insert(vm.name.clone(), vm.domain_xml.clone());
                }
            }
        }
        if read_any {
            let specs = records.values().filter_map(|r| r.spec.as_ref());
            let merged = halo_core::settings::merge(&base, specs, settings.ha_enabled);
            if merged != in_force {
                match merged.validate() {
                    Ok(()) => {
                        in_force = merged.clone();
                        if control.send(Control::Apply(Box::new(merged))).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::error!("the datastores' VM settings do not fit halo.toml, not applied: {e}"),
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = refresh.notified() => {}
        }
    }
}

/// Wakes the catalog task at every change of the protected VMs or the settings on a store that
/// has watches (etcd); a broken watch is set up again a second later.
async fn watch_changes(store: Arc<Datastore>, refresh: Arc<tokio::sync::Notify>) {
    let mut told = false;
    loop {
        if let Some(ended) = store.watch_catalog(&|| refresh.notify_one()).await {
            if !told {
                tracing::warn!(datastore = %store.name(), "{ended}; watching again (meanwhile the catalog is read every second)");
            }
            told = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One datastore's protected VMs as last read, and the catalog stamp they were read under:
/// each round costs one small read while nothing changed, instead of one per VM.
#[derive(Default)]
struct KnownCatalog {
    /// The stamp of the last full read (`Some(None)`: read while no stamp existed).
    stamp: Option<Option<String>>,
    vms: Vec<halo_datastore::ProtectedVm>,
    read_in_round: u64,
}

impl KnownCatalog {
    /// The datastore's protected VMs: the ones known when its stamp is unchanged (and the
    /// last full read is recent), else read again. An unreachable datastore is an error, as
    /// before: its VMs count for nothing this round.
    async fn refresh(
        &mut self,
        store: &Datastore,
        round: u64,
    ) -> Result<&[halo_datastore::ProtectedVm], halo_datastore::DatastoreError> {
        let stamp = store.catalog_stamp().await?;
        let fresh = round.saturating_sub(self.read_in_round) < halo_datastore::CATALOG_FULL_READ_ROUNDS;
        if self.stamp.as_ref() != Some(&stamp) || !fresh {
            let (vms, problems) = store.protected_vms().await?;
            for (name, problem) in &problems {
                let kept = self.vms.iter().any(|v| &v.name == name);
                tracing::error!(
                    datastore = %store.name(),
                    vm = %name,
                    "{problem}; {}",
                    if kept { "keeping the record read before" } else { "the VM is not protected from here" }
                );
            }
            let damaged: Vec<String> = problems.into_iter().map(|(name, _)| name).collect();
            self.vms = halo_core::settings::keep_read_before(&self.vms, vms, &damaged);
            self.stamp = Some(stamp);
            self.read_in_round = round;
        }
        Ok(&self.vms)
    }
}

/// This host's libvirt lifecycle events, as VM states (`halo_libvirt::states`), to the core;
/// only for the VMs halo knows.
fn forward_lifecycle(
    local: Hypervisor,
    subscription: halo_libvirt::Subscription,
    known: Arc<RwLock<BTreeSet<String>>>,
    inputs: mpsc::Sender<Input>,
) {
    let mut states = LifecycleStates::default();
    while let Ok(event) = subscription.events().recv() {
        if let LifecycleEvent::ConnectionClosed { reason } = event {
            tracing::error!(
                "this host's libvirt connection closed (reason {reason}); VM events stop until the agent restarts"
            );
            return;
        }
        let generation_of_domain =
            |domain: &str| local.xml(domain).ok().as_deref().and_then(generation_of).unwrap_or(1);
        let Some(StateChange { vm, generation, state }) = states.map(event, generation_of_domain) else {
            continue;
        };
        if !known.read().unwrap_or_else(|p| p.into_inner()).contains(&vm) {
            continue;
        }
        if inputs.blocking_send(Input::VmState { vm, generation, state }).is_err() {
            return;
        }
    }
}

/// Joins the cluster's sanlock lockspace on a thread of its own (seconds; up to a lease expiry
/// when this host id was held by this host before it crashed): until then this host's libvirt
/// refuses to start a VM with a lease, and the master places it elsewhere or tries again. A
/// failure is an alert, tried again every 10 s.
fn join_lockspace(leases: halo_libvirt::SanlockLeases, events: Arc<EventLog>, me: String) {
    let spawned = std::thread::Builder::new().name("sanlock-join".into()).spawn(move || {
        let started = std::time::Instant::now();
        let mut alerted = false;
        loop {
            let (severity, kind, message) = match leases.join() {
                Ok(joined) => (
                    Severity::Info,
                    EventKind::LeasesJoined,
                    format!(
                        "joined the sanlock lockspace {} as host id {}{} ({:.1}s); VM leases in {}, free {} s after a host's last renewal",
                        leases.lockspace,
                        leases.host_id,
                        if joined == halo_libvirt::leases::Joined::Already { ", joined before" } else { "" },
                        started.elapsed().as_secs_f64(),
                        leases.dir.display(),
                        leases.expiry_s()
                    ),
                ),
                Err(e) => {
                    let message = format!("VM leases: this host cannot join the sanlock lockspace ({e}); VMs with a lease cannot start here until it does; trying again every 10 s");
                    if !std::mem::replace(&mut alerted, true) {
                        events.record(Event { at: 0, node: me.clone(), severity: Severity::Alert, kind: EventKind::LeasesUnavailable, message: message.clone(), trace: None });
                    }
                    tracing::error!(host = %me, "ALERT {message}");
                    std::thread::sleep(Duration::from_secs(10));
                    continue;
                }
            };
            tracing::info!(host = %me, kind = %kind, "{message}");
            let _: LoggedEvent = events.record(Event { at: 0, node: me.clone(), severity, kind, message, trace: None });
            return;
        }
    });
    if let Err(e) = spawned {
        tracing::error!("ALERT cannot start the sanlock-join thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use halo_datastore::{CATALOG_FULL_READ_ROUNDS, Datastore, Location, ProtectedVm};

    use super::KnownCatalog;

    fn vm(name: &str, revision: u64) -> ProtectedVm {
        ProtectedVm {
            name: name.into(),
            domain_xml: format!("<domain><name>{name}</name></domain>"),
            spec: None,
            revision,
        }
    }

    fn names(vms: &[ProtectedVm]) -> Vec<(String, u64)> {
        vms.iter().map(|v| (v.name.clone(), v.revision)).collect()
    }

    #[tokio::test]
    async fn the_catalog_is_read_again_when_its_stamp_changes_and_every_thirty_rounds() {
        let dir = std::env::temp_dir().join(format!("halo-agent-catalog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let store = Datastore::open("ds1", Location::Directory(dir.clone()), "test", Duration::from_secs(2))
            .await
            .expect("open");
        let mut known = KnownCatalog::default();
        assert!(known.refresh(&store, 0).await.expect("read").is_empty());

        // Stored through the datastore (as the API does): seen in the very next round.
        store.put_protected_vm(&vm("db", 1)).await.expect("put");
        assert_eq!(names(known.refresh(&store, 1).await.expect("read")), [("db".to_string(), 1)]);
        store.put_protected_vm(&vm("db", 2)).await.expect("put");
        store.put_protected_vm(&vm("web", 1)).await.expect("put");
        assert_eq!(
            names(known.refresh(&store, 2).await.expect("read")),
            [("db".to_string(), 2), ("web".to_string(), 1)]
        );

        // A record removed behind the stamp's back (a writer that died before changing it, or
        // a hand edit) is not read again at once: the stamp says nothing changed...
        let records = dir.join(".halo/test/vms");
        std::fs::remove_file(records.join("web.json")).expect("remove behind the stamp");
        assert_eq!(known.refresh(&store, 3).await.expect("read").len(), 2, "unchanged stamp: no read");
        // ...until the periodic full read.
        let due = 2 + CATALOG_FULL_READ_ROUNDS;
        assert_eq!(known.refresh(&store, due - 1).await.expect("read").len(), 2);
        assert_eq!(names(known.refresh(&store, due).await.expect("read")), [("db".to_string(), 2)]);

        // A damaged record does not unprotect its VM: the version read before stays, and a
        // damaged record of a VM never read before is left out.
        std::fs::write(records.join("db.json"), b"{ not json").expect("damage the record");
        std::fs::write(records.join("new.json"), b"{ not json").expect("a damaged new record");
        store.put_protected_vm(&vm("web", 3)).await.expect("put");
        assert_eq!(
            names(known.refresh(&store, due + 1).await.expect("read")),
            [("db".to_string(), 2), ("web".to_string(), 3)]
        );
        std::fs::remove_file(records.join("new.json")).expect("remove the damaged record");
        store.remove_protected_vm("web").await.expect("remove");

        // Unprotecting changes the stamp: gone in the next round.
        store.remove_protected_vm("db").await.expect("remove");
        assert!(known.refresh(&store, due + 2).await.expect("read").is_empty());

        // An unreachable datastore is an error, not the VMs known from before.
        std::fs::remove_dir_all(&dir).expect("remove the datastore");
        assert!(known.refresh(&store, due + 3).await.is_err());
    }
}
