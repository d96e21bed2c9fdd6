//! The lab's watchdog: a stand-in for a host's hardware watchdog, kept **outside** the host
//! (in the root namespace), so that freezing or killing the host's processes cannot stop it —
//! as a watchdog chip does not stop when the host's kernel hangs.
//!
//! Each host gets a FIFO, `<lab>/watchdog-N`, which the agent's `[watchdog] device` names. The
//! agent writes to it as to `/dev/watchdog`: any byte feeds it, a `V` disarms it (the magic
//! close). It arms at the first byte. When it is armed and not fed for its timeout, the
//! watchdog resets the host: every process in the host's namespace is killed (its agent,
//! libvirtd, QEMU) and its links go down, as [`Lab::kill_host`](crate::Lab::kill_host) does;
//! `halo lab heal boot N` brings the host back.
//!
//! It never touches anything but the host it watches: the FIFO, the processes in that
//! host's namespace and that host's switch ports.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{Lab, LabError};

/// What a reset of one host takes: its namespace and its switch ports.
#[derive(Debug, Clone)]
pub struct ResetTarget {
    /// The host's name (`host-2`), for the log line.
    pub host: String,
    /// Its network namespace.
    pub netns: String,
    /// The switch namespace and the host's ports on it.
    pub switch: String,
    /// The host's ports on the switch.
    pub ports: Vec<String>,
}

impl ResetTarget {
    /// Kills every process of the host and takes its links down.
    pub fn reset(&self) {
        let _ = crate::kill_all_in(&self.netns);
        for port in &self.ports {
            let _ = crate::ip(&["-n", &self.switch, "link", "set", port, "down"]);
        }
    }
}

/// A running watchdog of one host (a thread of this process); stopped when dropped.
pub struct LabWatchdog {
    device: PathBuf,
    stop: Arc<AtomicBool>,
    fired: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LabWatchdog {
    /// The FIFO to give the agent as `[watchdog] device`.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// Whether it reset the host.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

impl Drop for LabWatchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Lab {
    /// The FIFO of host `host`'s watchdog.
    pub fn watchdog_device(&self, host: usize) -> PathBuf {
        self.dir().join(format!("watchdog-{host}"))
    }

    /// What resetting host `host` takes.
    pub fn reset_target(&self, host: usize) -> Result<ResetTarget, LabError> {
        self.check_host(host)?;
        Ok(ResetTarget {
            host: Self::host_name(host),
            netns: self.netns(host),
            switch: self.switch(),
            ports: crate::NETWORKS.iter().map(|n| self.port(host, n)).collect(),
        })
    }

    /// Starts host `host`'s watchdog with `timeout` on a thread of this process (see the
    /// module): the FIFO is made, the agent can open it at once.
    pub fn start_watchdog(&self, host: usize, timeout: Duration) -> Result<LabWatchdog, LabError> {
        let target = self.reset_target(host)?;
        let device = self.watchdog_device(host);
        let mut fifo = open_fifo(&device)?;
        let (stop, fired) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (s, f) = (Arc::clone(&stop), Arc::clone(&fired));
        let thread = std::thread::Builder::new()
            .name(format!("lab-watchdog-{host}"))
            .spawn(move || {
                // It keeps watching after a reset, as a watchdog chip does: the host's next agent
                // (after `halo lab heal boot`) opens the same device and arms it again.
                while watch(&mut fifo, timeout, &s) {
                    f.store(true, Ordering::SeqCst);
                    eprintln!("lab watchdog: {} not fed for {} ms: resetting it", target.host, timeout.as_millis());
                    target.reset();
                }
            })
            .map_err(|source| LabError::Spawn { command: "lab watchdog".into(), source })?;
        Ok(LabWatchdog { device, stop, fired, thread: Some(thread) })
    }
}

/// Records the process that runs host `host`'s watchdog (`halo lab up`), so that
/// `halo lab down` ends it.
pub fn record_process(lab_dir: &Path, host: usize, pid: u32) -> Result<(), LabError> {
    let path = lab_dir.join(format!("watchdog-{host}.pid"));
    std::fs::write(&path, pid.to_string()).map_err(|e| LabError::Invalid(format!("{}: {e}", path.display())))
}

/// Ends the watchdog processes recorded in `lab_dir` — each only if its command line still is
/// a lab watchdog's (a pid may have been reused since).
pub fn stop_recorded(lab_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(lab_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !(name.starts_with("watchdog-") && name.ends_with(".pid")) {
            continue;
        }
        let Some(pid) = std::fs::read_to_string(entry.path()).ok().and_then(|t| t.trim().parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("watchdog-run") && cmdline.contains(&lab_dir.display().to_string()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        let _ = std::fs::remove_file(entry.path());
    }
}

/// Makes (or reuses) the FIFO and opens it for reading without blocking (read-write: it never
/// sees an end of file when the agent closes it, and the agent's open never waits).
pub fn open_fifo(device: &Path) -> Result<std::fs::File, LabError> {
    if !device.exists() {
        nix::unistd::mkfifo(device, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| LabError::Invalid(format!("{}: mkfifo: {e}", device.display())))?;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(device)
        .map_err(|e| LabError::Invalid(format!("{}: {e}", device.display())))
}

/// Watches the FIFO until it must fire (`true`: armed and not fed for `timeout`; call again to
/// go on watching, disarmed until the next byte) or `stop`.
pub fn watch(fifo: &mut std::fs::File, timeout: Duration, stop: &AtomicBool) -> bool {
    let mut armed = false;
    let mut fed = Instant::now();
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::SeqCst) {
        match fifo.read(&mut buf) {
            Ok(n) if n > 0 => {
                fed = Instant::now();
                // The magic close: a `V` as the last byte disarms it until the next feed.
                armed = buf[n - 1] != b'V';
            }
            _ => {}
        }
        if armed && fed.elapsed() >= timeout {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_watchdog_fires_only_when_armed_and_starved() {
        let dir = std::env::temp_dir().join(format!("halo-lab-watchdog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let device = dir.join("watchdog-1");
        let mut fifo = open_fifo(&device).expect("fifo");
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let watcher = std::thread::spawn(move || (watch(&mut fifo, Duration::from_millis(300), &s), fifo));
        // Not armed: no byte yet, nothing fires.
        std::thread::sleep(Duration::from_millis(500));
        assert!(!watcher.is_finished(), "fired before it was armed");
        let mut agent = std::fs::OpenOptions::new().write(true).open(&device).expect("the agent opens it");
        for _ in 0..8 {
            agent.write_all(b"1").expect("feed");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(!watcher.is_finished(), "fed every 100 ms: it must not fire");
        // Disarmed by the magic close: silence is fine.
        agent.write_all(b"V").expect("disarm");
        std::thread::sleep(Duration::from_millis(500));
        assert!(!watcher.is_finished(), "disarmed");
        // Armed again, then starved: it fires.
        agent.write_all(b"1").expect("feed");
        let started = Instant::now();
        let (fired, mut fifo) = watcher.join().expect("join");
        assert!(fired, "fires");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(290), "not before its timeout: {took:?}");
        // It watches on after a reset: disarmed until the host's next agent feeds it.
        let s = Arc::clone(&stop);
        let again = std::thread::spawn(move || watch(&mut fifo, Duration::from_millis(300), &s));
        std::thread::sleep(Duration::from_millis(500));
        assert!(!again.is_finished(), "disarmed after firing");
        agent.write_all(b"1").expect("the next agent feeds it");
        assert!(again.join().expect("join"), "armed again, starved again: fires again");
        stop.store(true, Ordering::SeqCst);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
