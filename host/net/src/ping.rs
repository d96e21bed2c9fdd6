//! ICMP echo to an address, with a timeout: how a host that hears no agent tells "I am cut
//! off" from "the others are gone" (isolation addresses), and how the master tells "agent
//! down" from "failed" (a peer's management address).
//!
//! As root a raw ICMP socket is used; otherwise the unprivileged datagram ICMP socket where
//! `net.ipv4.ping_group_range` allows it. A reply counts only when it comes from the
//! address pinged and carries this request's identifier and sequence number. IPv4 only.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// A ping could not be made at all (not: no answer).
#[derive(Debug, thiserror::Error)]
pub enum PingError {
    /// No ICMP socket could be opened.
    #[error("cannot open an ICMP socket ({0}); run the agent as root or allow its group in net.ipv4.ping_group_range")]
    Socket(std::io::Error),
    /// The address family is not supported.
    #[error("{0}: only IPv4 isolation addresses are supported")]
    Unsupported(IpAddr),
    /// Sending failed for another reason than the network being unreachable.
    #[error("sending the echo request to {0} failed: {1}")]
    Send(IpAddr, std::io::Error),
    /// The socket could not be bound to the interface.
    #[error("cannot ping out of interface {0}: {1} (check `interfaces` in halo.toml)")]
    Interface(String, std::io::Error),
    /// The blocking task died.
    #[error("ping task failed: {0}")]
    Task(String),
}

static SEQUENCE: AtomicU16 = AtomicU16::new(1);

/// Echo requests per ping, spread over its timeout.
pub const TRIES: u32 = 3;

/// Pings `target` and waits up to `timeout` for an answer: `Ok(true)` answered, `Ok(false)` no
/// answer (or the network is unreachable). Up to [`TRIES`] echo requests go out, spread over
/// the timeout (at 0, ⅓ and ⅔ of it), and an answer to any of them counts: one lost packet
/// never reads as "no answer" (a fence waits for this "no").
pub async fn ping(target: IpAddr, timeout: Duration) -> Result<bool, PingError> {
    ping_via(target, timeout, None).await
}

/// [`ping`] out of `interface` only (`SO_BINDTODEVICE`), when one is given: the answer says
/// whether the target is reachable over that link, not over whichever the routing table
/// picks.
pub async fn ping_via(target: IpAddr, timeout: Duration, interface: Option<String>) -> Result<bool, PingError> {
    tokio::task::spawn_blocking(move || ping_blocking_via(target, timeout, interface.as_deref()))
        .await
        .map_err(|e| PingError::Task(e.to_string()))?
}

/// [`ping`] without the runtime.
pub fn ping_blocking(target: IpAddr, timeout: Duration) -> Result<bool, PingError> {
    ping_blocking_via(target, timeout, None)
}

/// [`ping_via`] without the runtime.
pub fn ping_blocking_via(target: IpAddr, timeout: Duration, interface: Option<&str>) -> Result<bool, PingError> {
    let IpAddr::V4(v4) = target else { return Err(PingError::Unsupported(target)) };
    let (socket, raw) = match Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)) {
        Ok(s) => (s, true),
        Err(_) => (Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4)).map_err(PingError::Socket)?, false),
    };
    if let Some(interface) = interface {
        socket.bind_device(Some(interface.as_bytes())).map_err(|e| PingError::Interface(interface.to_string(), e))?;
    }
    let id = (std::process::id() as u16) ^ 0x4841;
    let to = SocketAddr::new(IpAddr::V4(v4), 0);
    // Connected: the kernel hands us only packets from the address pinged.
    if let Err(error) = socket.connect(&to.into()) {
        return match error.raw_os_error() {
            Some(errno) if is_unreachable(errno) => Ok(false),
            _ => Err(PingError::Send(target, error)),
        };
    }
    let started = Instant::now();
    let deadline = started + timeout;
    let mut sent: Vec<u16> = Vec::new();
    let mut buf = [0u8; 1500];
    loop {
        // The next request is due at `tries × timeout / TRIES`.
        let tries = sent.len() as u32;
        let next_due = (tries < TRIES).then(|| started + timeout * tries / TRIES);
        if next_due.is_some_and(|due| Instant::now() >= due) {
            let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
            if let Err(error) = socket.send(&echo_request(id, seq)) {
                return match error.raw_os_error() {
                    // The network is not there: that is an answer ("no").
                    Some(errno) if is_unreachable(errno) => Ok(false),
                    _ => Err(PingError::Send(target, error)),
                };
            }
            sent.push(seq);
            continue;
        }
        let wake = next_due.map_or(deadline, |due| due.min(deadline));
        let left = wake.saturating_duration_since(Instant::now());
        if left.is_zero() {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            continue;
        }
        // (At least 1 ms: a timeout that rounds to 0 µs would mean "wait for ever".)
        socket.set_read_timeout(Some(left.max(Duration::from_millis(1)))).map_err(PingError::Socket)?;
        let len = match (&socket).read(&mut buf) {
            Ok(len) => len,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error().is_some_and(is_unreachable) => return Ok(false),
            Err(e) => return Err(PingError::Socket(e)),
        };
        let bytes = &buf[..len];
        let icmp = if raw {
            // A raw socket hands over the IP header too.
            let header = usize::from(bytes.first().copied().unwrap_or(0) & 0x0f) * 4;
            match bytes.get(header..) {
                Some(icmp) => icmp,
                None => continue,
            }
        } else {
            bytes
        };
        // Echo reply: type 0, code 0; the datagram socket rewrites the identifier itself.
        if icmp.len() >= 8 && icmp[0] == 0 && icmp[1] == 0 {
            let got_id = u16::from_be_bytes([icmp[4], icmp[5]]);
            let got_seq = u16::from_be_bytes([icmp[6], icmp[7]]);
            if sent.contains(&got_seq) && (!raw || got_id == id) {
                return Ok(true);
            }
        }
    }
}

fn is_unreachable(errno: i32) -> bool {
    // ENETDOWN (100), ENETUNREACH (101), EHOSTUNREACH (113) on Linux.
    matches!(errno, 100 | 101 | 113)
}

/// An ICMP echo request with a small payload and its checksum.
fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut packet = vec![8, 0, 0, 0];
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(b"halo isolation check");
    let sum = checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
    packet
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], chunk.get(1).copied().unwrap_or(0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_of_a_request_verifies() {
        let packet = echo_request(0x1234, 7);
        assert_eq!(checksum(&packet), 0, "a packet including its checksum sums to zero");
        assert_eq!(&packet[4..8], &[0x12, 0x34, 0, 7]);
    }
}
