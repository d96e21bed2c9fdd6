//! UDP heartbeats on every management network.
//!
//! One socket per network, bound to this host's address on it (and to the network's interface
//! when one is configured: its packets then never take another network's link). `send`
//! encodes the core's heartbeat once and sends it to every peer's address on that network —
//! or, where the network has a broadcast address configured, once to that address, which every
//! host on the segment receives on a second socket bound to it (decision 0016: each host then
//! sends one packet per network and interval, however large the cluster). One receive task
//! drains every socket each [`RECEIVE_PACING`] (10 ms, on a grid the liveness thread's tick
//! shares, so a packet never wakes the thread by itself), decodes, checks that the packet came
//! from the sender's own address on that network and that it is newer than the last one
//! accepted from that sender there (the incarnation, then the sequence number: a replay is
//! dropped), and hands it on. Every drop is counted by reason; nothing is ever trusted half.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use halo_core::Heartbeat;
use tokio::sync::mpsc;

use crate::codec::{self, ClusterKey, DropReason, EncodeError, Membership};

/// One management network as this host sees it.
#[derive(Debug, Clone)]
pub struct NetworkEndpoints {
    /// The network's name (`A`, `B`).
    pub name: String,
    /// This host's address and port on it.
    pub bind: SocketAddr,
    /// Every peer's address and port on it.
    pub peers: Vec<(String, SocketAddr)>,
    /// The network's broadcast address and the port: heartbeats go once to it instead of to
    /// each peer, and are received on a socket bound to it. `None`: one packet per peer.
    pub broadcast: Option<SocketAddr>,
    /// The interface the network's sockets are bound to (`SO_BINDTODEVICE`): its packets go
    /// out and come in there only. `None`: wherever the routing table says.
    pub interface: Option<String>,
}

/// What the transport needs.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// The cluster's name (carried and checked in every packet).
    pub cluster: String,
    /// This host.
    pub me: String,
    /// The cluster's hosts in config order.
    pub membership: Membership,
    /// The cluster key.
    pub key: ClusterKey,
    /// The management networks.
    pub networks: Vec<NetworkEndpoints>,
}

/// A heartbeat accepted on a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The network it arrived on.
    pub network: String,
    /// The heartbeat (shared: the copy of the same heartbeat on another network is the same).
    pub heartbeat: Arc<Heartbeat>,
}

/// The transport could not start or send.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A socket could not be bound.
    #[error(
        "cannot listen for heartbeats on network {network} at {addr}: {source}; check the address in halo.toml is this host's on that network"
    )]
    Bind {
        /// Network.
        network: String,
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The broadcast address could not be bound: it is not this host's network's.
    #[error(
        "cannot listen for heartbeats on network {network}'s broadcast address {addr}: {source}; check `broadcast.{network}` in halo.toml is the broadcast address of this host's own address on {network} (e.g. 10.0.1.255 for 10.0.1.5/24)"
    )]
    BindBroadcast {
        /// Network.
        network: String,
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A network the core named is not configured.
    #[error("no management network named {0} is configured")]
    UnknownNetwork(String),
    /// The heartbeat cannot be encoded.
    #[error("heartbeat not sent: {0}")]
    Encode(#[from] EncodeError),
    /// Two networks were given the same name.
    #[error("management network {0} is configured twice")]
    DuplicateNetwork(String),
    /// The sockets given do not match the networks (one each, and a second one for a
    /// network with a broadcast address).
    #[error("network {0}: {1}")]
    Sockets(String, &'static str),
}

/// Counters (for metrics and tests).
#[derive(Debug, Default)]
pub struct TransportStats {
    sent: AtomicU64,
    send_errors: AtomicU64,
    accepted: AtomicU64,
    membership_mismatch: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    accepted_per_network: BTreeMap<String, AtomicU64>,
}

impl TransportStats {
    /// Packets sent.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Sends that failed (a link down, no route).
    pub fn send_errors(&self) -> u64 {
        self.send_errors.load(Ordering::Relaxed)
    }

    /// Heartbeats accepted.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Heartbeats accepted on one network.
    pub fn accepted_on(&self, network: &str) -> u64 {
        self.accepted_per_network.get(network).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Packets dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        DropReason::ALL.iter().position(|r| *r == reason).map_or(0, |i| self.dropped[i].load(Ordering::Relaxed))
    }

    /// Heartbeats whose acks were dropped because the sender indexes another host list.
    pub fn membership_mismatches(&self) -> u64 {
        self.membership_mismatch.load(Ordering::Relaxed)
    }

    fn count_drop(&self, reason: DropReason) {
        if let Some(i) = DropReason::ALL.iter().position(|r| *r == reason) {
            self.dropped[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How long a received heartbeat may wait in its socket's buffer: the receive task drains every
/// socket once per slot of this length, on a grid the liveness thread's own tick shares, so the
/// thread wakes once per slot however many peers send (it used to wake for every packet: at
/// 60 peers, ~500 times a second, most of an agent's CPU).
pub const RECEIVE_PACING: std::time::Duration = std::time::Duration::from_millis(10);

/// At most this many packets are taken from one socket per slot (the rest wait for the next):
/// a flood cannot keep the liveness thread in the receive loop.
const MAX_PER_SLOT: usize = 512;

/// What each heartbeat socket asks of the kernel for its receive buffer: a slot's packets of a
/// large cluster, and a stall's, fit (the kernel caps it at `net.core.rmem_max`).
const RECEIVE_BUFFER: usize = 4 << 20;

/// The running transport: sockets (not registered with the runtime's reactor: a packet does
/// not wake the thread), and one receive task that drains them on the pacing grid.
pub struct HeartbeatTransport {
    config: Arc<TransportConfig>,
    sockets: BTreeMap<String, Arc<std::net::UdpSocket>>,
    stats: Arc<TransportStats>,
    grid: std::time::Instant,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for HeartbeatTransport {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A UDP socket bound to `addr`, to the network's interface when one is configured (so the
/// network's packets leave and arrive only there: never over another network's link, whatever
/// the routing table says), with a large receive buffer.
fn bind_udp(addr: SocketAddr, interface: Option<&str>) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)?;
    if let Some(interface) = interface {
        socket.bind_device(Some(interface.as_bytes()))?;
    }
    // Best effort: the kernel's cap applies.
    let _ = socket.set_recv_buffer_size(RECEIVE_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Binds, for every network: a socket on this host's address (it sends and receives); one on
/// the network's broadcast address when one is configured (an error if it cannot be bound:
/// it is not this host's network's); else, where the interface holding this host's address
/// has a broadcast address, one on that — receive only, best effort — so that a host hears
/// peers that broadcast before it does so itself (a rolling change of `broadcast`, decision
/// 0016). A network with an `interface` has every socket bound to it. Plain sockets: call it
/// inside the network namespace they belong to.
pub fn bind_sockets(config: &TransportConfig) -> Result<Vec<(String, std::net::UdpSocket)>, TransportError> {
    let mut sockets = Vec::new();
    for network in &config.networks {
        let interface = network.interface.as_deref();
        let socket = bind_udp(network.bind, interface).map_err(|source| TransportError::Bind {
            network: network.name.clone(),
            addr: network.bind,
            source,
        })?;
        sockets.push((network.name.clone(), socket));
        if let Some(addr) = network.broadcast {
            let socket = bind_udp(addr, interface).map_err(|source| TransportError::BindBroadcast {
                network: network.name.clone(),
                addr,
                source,
            })?;
            sockets.push((network.name.clone(), socket));
        } else if let Some(ip) = interface_broadcast(network.bind.ip(), interface) {
            let addr = SocketAddr::new(ip.into(), network.bind.port());
            match bind_udp(addr, interface) {
                Ok(socket) => sockets.push((network.name.clone(), socket)),
                Err(error) => {
                    tracing::debug!(network = %network.name, %addr, "not listening for broadcast heartbeats: {error}")
                }
            }
        }
    }
    Ok(sockets)
}

/// The broadcast address of the interface that holds `ip` (`interface`, when given), if it
/// has one.
fn interface_broadcast(ip: IpAddr, name: Option<&str>) -> Option<std::net::Ipv4Addr> {
    let IpAddr::V4(ip) = ip else { return None };
    let addresses = nix::ifaddrs::getifaddrs().ok()?;
    for interface in addresses {
        let own = interface.address.as_ref().and_then(|a| a.as_sockaddr_in()).map(|a| a.ip());
        if own == Some(ip) && name.is_none_or(|name| interface.interface_name == name) {
            return interface.broadcast.as_ref().and_then(|b| b.as_sockaddr_in()).map(|b| b.ip()).filter(|b| *b != ip);
        }
    }
    None
}

/// Per (sender, network): the newest (incarnation, sequence) accepted.
type ReplayGuard = BTreeMap<(String, String), (u64, u64)>;

impl HeartbeatTransport {
    /// Binds the sockets ([`bind_sockets`]) and starts receiving; accepted heartbeats arrive
    /// on the returned channel. Must run inside a tokio runtime.
    pub fn bind(config: TransportConfig) -> Result<(Self, mpsc::Receiver<Received>), TransportError> {
        let sockets = bind_sockets(&config)?;
        Self::from_sockets(config, sockets)
    }

    /// Starts on sockets bound elsewhere (e.g. inside another network namespace, with
    /// [`bind_sockets`]): per network, first the one bound to this host's address (it sends),
    /// then any that only receive — the broadcast address's, required when the network has
    /// one configured.
    pub fn from_sockets(
        config: TransportConfig,
        sockets: Vec<(String, std::net::UdpSocket)>,
    ) -> Result<(Self, mpsc::Receiver<Received>), TransportError> {
        let mut accepted_per_network = BTreeMap::new();
        for network in &config.networks {
            if accepted_per_network.insert(network.name.clone(), AtomicU64::new(0)).is_some() {
                return Err(TransportError::DuplicateNetwork(network.name.clone()));
            }
            let given = sockets.iter().filter(|(n, _)| *n == network.name).count();
            let wanted = 1 + usize::from(network.broadcast.is_some());
            if given < wanted {
                return Err(TransportError::Sockets(
                    network.name.clone(),
                    if network.broadcast.is_some() {
                        "a network with a broadcast address needs two sockets: its own address's, then the broadcast address's"
                    } else {
                        "one socket is needed, bound to this host's address on it"
                    },
                ));
            }
        }
        let stats = Arc::new(TransportStats { accepted_per_network, ..TransportStats::default() });
        let config = Arc::new(config);
        let (tx, rx) = mpsc::channel(4096);
        let mut map: BTreeMap<String, Arc<std::net::UdpSocket>> = BTreeMap::new();
        let mut listeners = Vec::new();
        for (name, socket) in sockets {
            let bind_error = |source| TransportError::Bind {
                network: name.clone(),
                addr: socket.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
                source,
            };
            socket.set_nonblocking(true).map_err(bind_error)?;
            let addr = socket.local_addr().map_err(bind_error)?;
            let socket = Arc::new(socket);
            let endpoints = config.networks.iter().find(|n| n.name == name);
            let peers: BTreeMap<String, IpAddr> =
                endpoints.map(|n| n.peers.iter().map(|(h, a)| (h.clone(), a.ip())).collect()).unwrap_or_default();
            // The first socket of a network sends (and may send to its broadcast address);
            // our own broadcasts come back on the second one and are passed over.
            let sends = !map.contains_key(&name);
            if sends && endpoints.is_some_and(|n| n.broadcast.is_some()) {
                socket.set_broadcast(true).map_err(|source| TransportError::Bind {
                    network: name.clone(),
                    addr,
                    source,
                })?;
            }
            // Where this host's packets on the network come from.
            let own = if sends { Some(addr) } else { map.get(&name).and_then(|s| s.local_addr().ok()) };
            listeners.push(Listener { socket: Arc::clone(&socket), network: name.clone(), peers, own });
            if sends {
                map.insert(name, socket);
            }
        }
        let grid = std::time::Instant::now();
        let tasks = vec![tokio::spawn(receive(listeners, grid, Arc::clone(&config), Arc::clone(&stats), tx))];
        Ok((Self { config, sockets: map, stats, grid, tasks }, rx))
    }

    /// The start of the pacing grid: the receive task drains the sockets at `grid + k ×`
    /// [`RECEIVE_PACING`]. A periodic task of the same thread that ticks on this grid wakes
    /// with it, not in between.
    pub fn grid(&self) -> std::time::Instant {
        self.grid
    }

    /// Sends `heartbeat` to every peer on `network`; returns how many sends went out. A send
    /// that fails (link down) is counted, not an error: the core judges silence.
    pub async fn send(&self, network: &str, heartbeat: &Heartbeat) -> Result<usize, TransportError> {
        let socket = self.sockets.get(network).ok_or_else(|| TransportError::UnknownNetwork(network.to_string()))?;
        let endpoints = self
            .config
            .networks
            .iter()
            .find(|n| n.name == network)
            .ok_or_else(|| TransportError::UnknownNetwork(network.to_string()))?;
        let packet = codec::encode(heartbeat, &self.config.cluster, &self.config.membership, &self.config.key)?;
        let mut sent = 0;
        let broadcast = endpoints.broadcast.map(|addr| ("every host".to_string(), addr));
        let targets = match &broadcast {
            Some(target) => std::slice::from_ref(target),
            None => endpoints.peers.as_slice(),
        };
        for (peer, addr) in targets {
            let mut outcome = socket.send_to(&packet, addr);
            // A full send buffer (a burst to many peers): a moment, then once more.
            if outcome.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock) {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                outcome = socket.send_to(&packet, addr);
            }
            match outcome {
                Ok(_) => {
                    sent += 1;
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(network, peer, %addr, "heartbeat not sent: {error}");
                }
            }
        }
        Ok(sent)
    }

    /// The counters.
    pub fn stats(&self) -> &TransportStats {
        &self.stats
    }

    /// The local address of a network's socket.
    pub fn local_addr(&self, network: &str) -> Option<SocketAddr> {
        self.sockets.get(network).and_then(|s| s.local_addr().ok())
    }
}

/// One socket the receive task drains.
struct Listener {
    socket: Arc<std::net::UdpSocket>,
    network: String,
    /// Every peer's address on the network.
    peers: BTreeMap<String, IpAddr>,
    /// Where this host's own packets on the network come from.
    own: Option<SocketAddr>,
}

/// Drains every socket once per [`RECEIVE_PACING`] slot on the grid, and hands each accepted
/// heartbeat on.
async fn receive(
    listeners: Vec<Listener>,
    grid: std::time::Instant,
    config: Arc<TransportConfig>,
    stats: Arc<TransportStats>,
    tx: mpsc::Sender<Received>,
) {
    let mut guard = ReplayGuard::new();
    let copies = codec::CopyCache::default();
    // One byte more than a packet may have, so an oversized datagram is seen as such.
    let mut buf = vec![0u8; codec::MAX_PACKET + 1];
    let mut slot = tokio::time::interval_at(tokio::time::Instant::from_std(grid), RECEIVE_PACING);
    slot.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        slot.tick().await;
        for listener in &listeners {
            for _ in 0..MAX_PER_SLOT {
                let (len, from) = match listener.socket.recv_from(&mut buf) {
                    Ok(got) => got,
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(error) => {
                        tracing::debug!(network = %listener.network, "receive failed: {error}");
                        break;
                    }
                };
                let Some(received) = accept(listener, &buf[..len], from, &config, &stats, &mut guard, &copies) else {
                    continue;
                };
                if tx.send(received).await.is_err() {
                    return; // nobody listens any more
                }
            }
        }
    }
}

/// Decodes and checks one packet: from a member, at its own address on the network, newer
/// than the last accepted from it there. Every drop is counted.
fn accept(
    listener: &Listener,
    packet: &[u8],
    from: SocketAddr,
    config: &TransportConfig,
    stats: &TransportStats,
    guard: &mut ReplayGuard,
    copies: &codec::CopyCache,
) -> Option<Received> {
    if listener.own == Some(from) {
        return None; // our own broadcast, looped back
    }
    let network = &listener.network;
    let verdict = copies.decode(packet, &config.cluster, &config.membership, &config.key).and_then(|d| {
        let sender = &d.heartbeat.from;
        if *sender == config.me {
            return Err(DropReason::WrongSource); // our own packet reflected back
        }
        match listener.peers.get(sender) {
            Some(ip) if *ip == from.ip() => {}
            Some(_) => return Err(DropReason::WrongSource),
            None => return Err(DropReason::UnknownSender),
        }
        let key = (sender.clone(), network.clone());
        let now = (d.heartbeat.incarnation, d.heartbeat.seq);
        match guard.get(&key) {
            Some(last) if now <= *last => Err(DropReason::Replayed),
            _ => {
                guard.insert(key, now);
                Ok(d)
            }
        }
    });
    match verdict {
        Ok(decoded) => {
            if decoded.membership_mismatch {
                stats.membership_mismatch.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(network, sender = %decoded.heartbeat.from, "the sender's host list differs from ours: its acks are ignored; make halo.toml the same on every host");
            }
            stats.accepted.fetch_add(1, Ordering::Relaxed);
            if let Some(counter) = stats.accepted_per_network.get(network) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Some(Received { network: network.clone(), heartbeat: decoded.heartbeat })
        }
        Err(reason) => {
            stats.count_drop(reason);
            tracing::debug!(network, %from, "heartbeat dropped: {reason}");
            None
        }
    }
}
