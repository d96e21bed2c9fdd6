//! The agent at work: one task owns the node (the core) and the plugin policies; every driver
//! delivers its outcomes as inputs over one channel; a tick every 100 ms keeps time moving.
//!
//! Inputs: heartbeats from the transport, driver outcomes, libvirt lifecycle events (mapped to
//! VM states), ticks. Actions: carried out through the core's driver traits.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use halo_core::drivers::{DatastoreDriver, EventSink, HeartbeatSender, HypervisorDriver, PingDriver, carry_out};
use halo_core::node::PingTarget;
use halo_core::{Claim, DatastoreRecord, Event, Heartbeat, Input, Node, Severity, StopReason, VmState};
use halo_datastore::{Datastore, Datastores, Location, NfsTarget};
use halo_libvirt::events::StopKind;
use halo_libvirt::{Hypervisor, HypervisorConfig, Hypervisors, LifecycleEvent, generation_of};
use halo_net::{ClusterKey, HeartbeatTransport, Heartbeats, Membership, NetworkEndpoints, Pinger, TransportConfig};
use halo_plugin_runtime::{PluginFiles, PluginPolicies, Runtime, SandboxLimits};
use tokio::sync::mpsc;

use crate::config::AgentConfig;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The cluster key.
    #[error(transparent)]
    Key(#[from] halo_net::KeyError),
    /// The heartbeat sockets.
    #[error(transparent)]
    Transport(#[from] halo_net::TransportError),
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

/// Every driver of this agent, behind the core's traits.
struct AgentDrivers {
    heartbeats: Heartbeats,
    datastores: Datastores,
    pings: Pinger,
    hypervisor: Hypervisors,
    host: String,
}

impl HeartbeatSender for AgentDrivers {
    fn send_heartbeat(&mut self, network: &str, heartbeat: &Heartbeat) {
        self.heartbeats.send_heartbeat(network, heartbeat);
    }
}

impl DatastoreDriver for AgentDrivers {
    fn write_record(&mut self, datastore: &str, record: &DatastoreRecord) {
        self.datastores.write_record(datastore, record);
    }
    fn read_records(&mut self, datastore: &str) {
        self.datastores.read_records(datastore);
    }
    fn claim(&mut self, datastore: &str, claim: &Claim) {
        self.datastores.claim(datastore, claim);
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
    }
}

/// Runs the agent until the process ends. Must run inside a multi-thread tokio runtime.
pub async fn run(config: AgentConfig) -> Result<(), StartError> {
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
        .ok_or_else(|| StartError::Plugins("host missing".into()))?;
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
            Some(NetworkEndpoints { name: net.clone(), bind, peers })
        })
        .collect();
    let (transport, mut heartbeats_rx) = HeartbeatTransport::bind(TransportConfig {
        cluster: config.cluster.clone(),
        me: me.clone(),
        membership,
        key,
        networks,
    })?;
    let transport = Arc::new(transport);
    let (inputs, mut inputs_rx) = mpsc::unbounded_channel::<Input>();

    // Datastores: opened now if they answer, otherwise retried in the background.
    let mut stores = Vec::new();
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
        let store = Datastore::unopened(&ds.name, location, &config.cluster, Duration::from_millis(ds.timeout_ms));
        if let Err(e) = store.ensure_layout().await {
            tracing::error!(datastore = %ds.name, "{e}; retrying while running");
        }
        stores.push(store);
    }
    let datastores = Datastores::new(stores, inputs.clone(), runtime.clone());
    let catalog: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    {
        let stores: Vec<Arc<Datastore>> = config.datastores.iter().filter_map(|d| datastores.get(&d.name)).collect();
        let catalog = Arc::clone(&catalog);
        runtime.spawn(async move {
            // The layout is created once per datastore (retried while it fails), not every round.
            let mut laid_out = vec![false; stores.len()];
            loop {
                for (store, laid_out) in stores.iter().zip(laid_out.iter_mut()) {
                    if !*laid_out {
                        *laid_out = store.ensure_layout().await.is_ok();
                    }
                    match store.protected_vms().await {
                        Ok(vms) => {
                            let mut c = catalog.lock().unwrap_or_else(|p| p.into_inner());
                            for vm in vms {
                                c.insert(vm.name, vm.domain_xml);
                            }
                        }
                        Err(e) => tracing::debug!(datastore = %store.name(), "protected VMs: {e}"),
                    }
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
    }

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
    );
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
                .map(|h| (h.name.clone(), h.migration_uri.clone().unwrap_or_else(|| h.libvirt_uri.clone())))
                .collect(),
            shared_storage: config.libvirt.shared_storage.iter().map(|p| p.display().to_string()).collect(),
            connect_timeout: Duration::from_secs(5),
            migration_deadline: Duration::from_secs(120),
        },
        Arc::clone(&catalog),
        inputs.clone(),
        runtime.clone(),
    );
    let mut drivers = AgentDrivers {
        heartbeats: Heartbeats::new(Arc::clone(&transport), runtime.clone()),
        datastores,
        pings,
        hypervisor,
        host: me.clone(),
    };

    let plugin_runtime =
        Arc::new(Runtime::new(SandboxLimits::default(), None).map_err(|e| StartError::Plugins(e.to_string()))?);
    let mut policies = PluginPolicies::load(
        &plugin_runtime,
        PluginFiles {
            isolation: config.plugins.isolation.as_deref(),
            placement: config.plugins.placement.as_deref(),
            restart_order: config.plugins.restart_order.as_deref(),
        },
    )
    .map_err(|e| StartError::Plugins(e.to_string()))?;

    // This host's libvirt: what runs now, then its lifecycle events.
    let known: BTreeSet<String> = config.vms.iter().map(|v| v.name.clone()).collect();
    let local_uri = config.libvirt.local_uri.clone();
    let local = Hypervisor::connect_with_timeout(&local_uri, Duration::from_secs(10))
        .map_err(|e| StartError::Libvirt(e.to_string()))?;
    for domain in local.domains().map_err(|e| StartError::Libvirt(e.to_string()))? {
        if domain.state.is_active() && known.contains(&domain.name) {
            let generation = local.xml(&domain.name).ok().as_deref().and_then(generation_of).unwrap_or(1);
            let _ = inputs.send(Input::VmState { vm: domain.name, generation, state: VmState::Running });
        }
    }
    let subscription = local.subscribe().map_err(|e| StartError::Libvirt(e.to_string()))?;
    {
        let inputs = inputs.clone();
        std::thread::Builder::new()
            .name("libvirt-lifecycle".into())
            .spawn(move || forward_lifecycle(local, subscription, known, inputs))
            .map_err(|e| StartError::Libvirt(e.to_string()))?;
    }

    let incarnation =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let mut node = Node::new(&me, cluster, 0).with_incarnation(incarnation);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tracing::info!(host = %me, cluster = %config.cluster, "halo agent running");
    loop {
        let input = tokio::select! {
            _ = tick.tick() => Input::Tick,
            Some(received) = heartbeats_rx.recv() => Input::Heartbeat { network: received.network, heartbeat: received.heartbeat },
            Some(input) = inputs_rx.recv() => input,
        };
        let now = started.elapsed().as_millis() as u64;
        for action in node.handle(now, input, &mut policies) {
            carry_out(action, &mut drivers);
        }
    }
}

/// libvirt's lifecycle events of this host as VM states for the core. A stop halo asked for
/// is reported by the driver itself; here only what happened without halo: a crash, QEMU
/// dying, a shutdown the guest started, a migration away.
fn forward_lifecycle(
    local: Hypervisor,
    subscription: halo_libvirt::Subscription,
    known: BTreeSet<String>,
    inputs: mpsc::UnboundedSender<Input>,
) {
    let mut guest_shutdowns: BTreeSet<String> = BTreeSet::new();
    let mut generations: BTreeMap<String, u64> = BTreeMap::new();
    while let Ok(event) = subscription.events().recv() {
        let (vm, state) = match event {
            LifecycleEvent::Started { domain } => {
                let generation = local.xml(&domain).ok().as_deref().and_then(generation_of).unwrap_or(1);
                generations.insert(domain.clone(), generation);
                (domain, VmState::Running)
            }
            LifecycleEvent::ShuttingDown { domain, by_guest } => {
                if by_guest {
                    guest_shutdowns.insert(domain);
                }
                continue;
            }
            LifecycleEvent::Stopped { domain, how } => {
                let state = match how {
                    StopKind::Crashed | StopKind::Failed => VmState::Crashed,
                    StopKind::Shutdown if guest_shutdowns.remove(&domain) => VmState::GuestShutdown,
                    StopKind::Migrated => VmState::MigratedAway,
                    _ => continue,
                };
                (domain, state)
            }
            LifecycleEvent::Crashed { domain } => (domain, VmState::Crashed),
            LifecycleEvent::ConnectionClosed { reason } => {
                tracing::error!(
                    "this host's libvirt connection closed (reason {reason}); VM events stop until the agent restarts"
                );
                return;
            }
        };
        if !known.contains(&vm) {
            continue;
        }
        let generation = generations.get(&vm).copied().unwrap_or(1);
        if inputs.send(Input::VmState { vm, generation, state }).is_err() {
            return;
        }
    }
}
