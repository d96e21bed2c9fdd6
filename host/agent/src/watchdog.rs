//! systemd's service notification: `READY=1` once the agent runs, then `WATCHDOG=1` from the
//! agent loop itself at every tick. With `WatchdogSec=` in the unit (examples/halo-agent.service)
//! systemd kills and restarts an agent whose loop stalls — a stalled loop would neither send
//! heartbeats nor fence. Without `NOTIFY_SOCKET` (not under systemd) this does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// The notification socket, if systemd gave one.
pub struct Watchdog {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    last: std::cell::Cell<Option<Instant>>,
}

/// How often `WATCHDOG=1` is sent at most.
const EVERY: Duration = Duration::from_millis(500);

impl Watchdog {
    /// From `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
    pub fn from_env() -> Self {
        let socket = std::env::var("NOTIFY_SOCKET").ok().and_then(|path| {
            let address = if let Some(name) = path.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?
            } else {
                std::os::unix::net::SocketAddr::from_pathname(&path).ok()?
            };
            let socket = UnixDatagram::unbound().ok()?;
            socket.set_nonblocking(true).ok()?;
            Some((socket, address))
        });
        Self { socket, last: std::cell::Cell::new(None) }
    }

    fn send(&self, message: &str) {
        if let Some((socket, address)) = &self.socket
            && let Err(e) = socket.send_to_addr(message.as_bytes(), address)
        {
            tracing::warn!("systemd notification `{message}`: {e}");
        }
    }

    /// The agent is up.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// The loop is alive (rate-limited).
    pub fn alive(&self) {
        let now = Instant::now();
        if self.last.get().is_none_or(|at| now.duration_since(at) >= EVERY) {
            self.last.set(Some(now));
            self.send("WATCHDOG=1");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_and_watchdog_reach_the_notify_socket() {
        let path = std::env::temp_dir().join(format!("halo-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path).expect("bind");
        receiver.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let address = std::os::unix::net::SocketAddr::from_pathname(&path).expect("address");
        let watchdog =
            Watchdog { socket: Some((UnixDatagram::unbound().expect("socket"), address)), last: Default::default() };
        watchdog.ready();
        watchdog.alive();
        watchdog.alive(); // rate-limited: not sent
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).expect("READY");
        assert_eq!(&buf[..n], b"READY=1");
        let n = receiver.recv(&mut buf).expect("WATCHDOG");
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        receiver.set_nonblocking(true).expect("nonblocking");
        assert!(receiver.recv(&mut buf).is_err(), "the second alive() within 500 ms is not sent");
        let _ = std::fs::remove_file(&path);
    }
}
