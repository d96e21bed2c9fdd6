//! The core's [`HeartbeatSender`] and [`PingDriver`] on the real network: sends and pings run
//! as tasks on the agent's runtime; a ping's outcome comes back as an input of the node.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use halo_core::drivers::{HeartbeatSender, PingDriver};
use halo_core::node::PingTarget;
use halo_core::{Heartbeat, Input};
use tokio::runtime::Handle;
use tokio::sync::mpsc::Sender;

use crate::HeartbeatTransport;

/// Sends the core's heartbeats through the transport.
pub struct Heartbeats {
    transport: Arc<HeartbeatTransport>,
    runtime: Handle,
}

impl Heartbeats {
    /// Sends through `transport`, on `runtime`.
    pub fn new(transport: Arc<HeartbeatTransport>, runtime: Handle) -> Self {
        Self { transport, runtime }
    }
}

impl HeartbeatSender for Heartbeats {
    fn send_heartbeat(&mut self, network: &str, heartbeat: &std::sync::Arc<Heartbeat>) {
        let (transport, network, heartbeat) = (Arc::clone(&self.transport), network.to_string(), heartbeat.clone());
        self.runtime.spawn(async move {
            if let Err(e) = transport.send(&network, &heartbeat).await {
                tracing::error!(network, "{e}");
            }
        });
    }
}

/// Pings peers (by their management address) and isolation addresses.
pub struct Pinger {
    peers: BTreeMap<String, IpAddr>,
    /// The first network's interface, when bound to one: peers are pinged out of it.
    interface: Option<String>,
    timeout: Duration,
    inputs: Sender<Input>,
    runtime: Handle,
}

impl Pinger {
    /// Pings with `timeout`; a peer is pinged at its address in `peers` (its management
    /// address on the first network).
    pub fn new(peers: BTreeMap<String, IpAddr>, timeout: Duration, inputs: Sender<Input>, runtime: Handle) -> Self {
        Self { peers, interface: None, timeout, inputs, runtime }
    }

    /// Pings peers out of `interface` (the first network's) only; isolation addresses are
    /// reached as the routing table says.
    pub fn via(mut self, interface: Option<String>) -> Self {
        self.interface = interface;
        self
    }
}

impl PingDriver for Pinger {
    fn ping(&mut self, target: &PingTarget) {
        let address = match target {
            PingTarget::Host(host) => {
                self.peers.get(host).copied().ok_or_else(|| format!("no address for host {host}"))
            }
            PingTarget::IsolationAddress(text) => {
                text.parse::<IpAddr>().map_err(|_| format!("isolation address `{text}` is not an IP address"))
            }
        };
        let interface = matches!(target, PingTarget::Host(_)).then(|| self.interface.clone()).flatten();
        let (inputs, target, timeout) = (self.inputs.clone(), target.clone(), self.timeout);
        let Ok(address) = address.map_err(|e| tracing::error!("{e}; counted as no answer")) else {
            self.runtime.spawn(async move { inputs.send(Input::PingResult { target, answered: false }).await });
            return;
        };
        self.runtime.spawn(async move {
            let answered = match crate::ping::ping_via(address, timeout, interface).await {
                Ok(answered) => answered,
                Err(e) => {
                    tracing::error!(%address, "{e}; counted as no answer");
                    false
                }
            };
            let _ = inputs.send(Input::PingResult { target, answered }).await;
        });
    }
}
