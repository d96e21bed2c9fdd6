//! Two watchdogs, both fed by the liveness path while the agent loop makes steps (a stalled
//! loop feeds neither; the host watchdog is written at most every [`FEED_EVERY`]):
//!
//! - systemd's service notification: `READY=1` once the agent runs, then `WATCHDOG=1`. With
//!   `WatchdogSec=` in the unit (examples/halo-agent.service) systemd kills and restarts an
//!   agent whose loop stalls. Without `NOTIFY_SOCKET` (not under systemd) nothing is sent.
//! - the host watchdog (`[watchdog] device`, e.g. `/dev/watchdog`): opening the device arms it;
//!   if the agent stops feeding it — the process died or hangs — the kernel resets the host
//!   after the device's timeout. This is what makes an agent that is gone safe: it can no
//!   longer fence, so its host must not outlive it by more than the fence timeout (the
//!   simulator assumes exactly this). A deliberate stop (SIGTERM, `systemctl stop`) disarms it
//!   with the magic close (`V`) — but only when no protected VM runs on the host (see [`leave`]).

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

/// The host watchdog device, armed while this value lives.
pub struct HostWatchdog {
    device: std::fs::File,
    path: std::path::PathBuf,
    last_fed: Option<Instant>,
}

/// The host watchdog is written at most this often (the liveness path asks every 10 ms; a
/// device's timeout is seconds). A stalled loop stops the feeding at most this much sooner,
/// so the host is reset no later than before.
pub const FEED_EVERY: Duration = Duration::from_millis(100);

impl HostWatchdog {
    /// Opens (and so arms) the device. Without blocking: a FIFO nobody reads (a lab watchdog
    /// that is not running) is an error at start (ENXIO), not a hang.
    pub fn open(path: &std::path::Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let device =
            std::fs::OpenOptions::new().write(true).custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits()).open(path)?;
        Ok(Self { device, path: path.to_path_buf(), last_fed: None })
    }

    /// Feeds it (any byte but `V`). A failure is logged: the reset it may lead to is the
    /// safe side.
    pub fn feed(&mut self) {
        use std::io::Write;
        let now = Instant::now();
        if self.last_fed.is_some_and(|at| now.duration_since(at) < FEED_EVERY) {
            return;
        }
        self.last_fed = Some(now);
        if let Err(e) = self.device.write_all(b"1").and_then(|()| self.device.flush()) {
            tracing::error!("host watchdog {}: {e}; the host may be reset", self.path.display());
        }
    }

    /// Disarms it (magic close) and closes it: for a deliberate stop only.
    pub fn disarm(mut self) {
        use std::io::Write;
        if let Err(e) = self.device.write_all(b"V").and_then(|()| self.device.flush()) {
            tracing::error!("host watchdog {}: cannot disarm: {e}; the host will be reset", self.path.display());
        }
    }
}

/// What a deliberate stop does with the host watchdog: disarm it when no protected VM runs
/// here; otherwise leave it armed — a host whose agent is gone cannot fence, so with protected
/// VMs it must not outlive its agent (the kernel resets it, the VMs are restarted elsewhere).
/// Stop an agent with protected VMs only after `halo host maintenance enter`.
pub fn leave(device: HostWatchdog, protected_here: &[&String]) {
    if protected_here.is_empty() {
        device.disarm();
    } else {
        tracing::error!(
            "stopping with protected VMs running here ({}): the host watchdog stays armed and resets \
             this host; put the host in maintenance before stopping its agent",
            protected_here.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
        );
        drop(device);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_watchdog_is_fed_then_disarmed_with_the_magic_close() {
        // A stand-in file: this machine has no /dev/watchdog (and no kernel modules for
        // softdog); the kernel side of it is not exercised here.
        let path = std::env::temp_dir().join(format!("halo-watchdog-{}", std::process::id()));
        std::fs::write(&path, b"").expect("file");
        let mut watchdog = HostWatchdog::open(&path).expect("open");
        watchdog.feed();
        watchdog.feed(); // within FEED_EVERY: not written again
        assert_eq!(std::fs::read(&path).expect("read"), b"1");
        std::thread::sleep(FEED_EVERY);
        watchdog.feed();
        watchdog.disarm();
        assert_eq!(std::fs::read(&path).expect("read"), b"11V");
        assert!(HostWatchdog::open(&path.with_extension("missing")).is_err());
        // A deliberate stop disarms only when no protected VM runs here.
        std::fs::write(&path, b"").expect("file");
        leave(HostWatchdog::open(&path).expect("open"), &[]);
        assert_eq!(std::fs::read(&path).expect("read"), b"V");
        std::fs::write(&path, b"").expect("file");
        let vm = "db".to_string();
        leave(HostWatchdog::open(&path).expect("open"), &[&vm]);
        assert_eq!(std::fs::read(&path).expect("read"), b"", "left armed: no magic close");
        let _ = std::fs::remove_file(&path);
    }

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
