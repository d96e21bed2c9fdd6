//! halo's network drivers.
//!
//! - [`codec`]: the heartbeat on the wire — versioned, bounded, authenticated (HMAC-SHA256
//!   under the cluster key); every malformed, forged, foreign, oversized or replayed packet is
//!   dropped with its reason and counted, never trusted.
//! - [`transport`]: UDP on every management network: sends the core's heartbeats to every
//!   peer, receives, checks source address and replays, hands accepted heartbeats on.
//! - [`ping`]: ICMP echo to isolation addresses (and peers' management addresses), with a
//!   timeout.
//!
//! Nothing here decides: what a heartbeat or a silent network means is the core's business.

#![forbid(unsafe_code)]

pub mod codec;
pub mod driver;
pub mod ping;
pub mod transport;

pub use codec::{ClusterKey, DropReason, KeyError, Membership};
pub use driver::{Heartbeats, Pinger};
pub use transport::{
    HeartbeatTransport, NetworkEndpoints, Received, TransportConfig, TransportError, TransportStats, bind_sockets,
};
