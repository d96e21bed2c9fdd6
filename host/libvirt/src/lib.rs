//! The hypervisor driver: libvirt (QEMU/KVM) through the `virt` crate.
//!
//! [`Hypervisor`] is one connection to one host's libvirtd: list domains with their state,
//! define from XML, start, power off, shut down with a grace time (then power off), live
//! migration peer-to-peer over the migration network (shared storage, storage copy, or offline
//! for a powered-off VM) with its prerequisites checked first, and lifecycle events through
//! libvirt's event loop ([`events`]).
//!
//! Every call blocks (libvirt's API does): the agent runs them off its async runtime, and
//! opening a connection has its own timeout ([`Hypervisor::connect_with_timeout`]), since
//! connecting to a cut host can hang for over a minute. Starting a running domain and powering
//! off a stopped one succeed (idempotent): a repeated request never fails for having been done.

pub mod driver;
pub mod events;
pub mod leases;
pub mod states;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt::domain::{Domain, MigrateParameters};
use virt::sys;

/// libvirt's `VIR_DOMAIN_METADATA_ELEMENT` (the `virt-sys` bindings do not export it).
const METADATA_ELEMENT: i32 = 2;

pub use driver::{HypervisorConfig, Hypervisors, generation_of, held_by_halo, with_generation};
pub use events::{LifecycleEvent, Subscription};
pub use leases::{LeaseError, SanlockLeases};
pub use states::{LifecycleStates, StateChange};

/// What went wrong, with what and on which domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LibvirtError {
    /// A libvirt call failed.
    #[error("libvirt {uri}: {operation}{}: {message}", domain.as_ref().map(|d| format!(" of {d}")).unwrap_or_default())]
    Call {
        /// The connection.
        uri: String,
        /// What was asked.
        operation: String,
        /// The domain, if any.
        domain: Option<String>,
        /// libvirt's message.
        message: String,
    },
    /// No answer in time.
    #[error("libvirt {uri}: {operation} did not finish within {millis} ms")]
    Timeout {
        /// The connection.
        uri: String,
        /// What was asked.
        operation: String,
        /// The limit.
        millis: u64,
    },
    /// A migration's prerequisites are not met.
    #[error("cannot migrate {domain} to {target}: {}", reasons.join("; "))]
    MigrationRefused {
        /// The domain.
        domain: String,
        /// The target.
        target: String,
        /// Every prerequisite that failed.
        reasons: Vec<String>,
    },
    /// Input that libvirt cannot take (a NUL byte in a name or XML).
    #[error("{0}")]
    Invalid(String),
}

/// A domain's state, as halo needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DomainState {
    /// Running (or blocked, or paused: the domain exists on this host and holds its disks).
    Running,
    /// Paused.
    Paused,
    /// Shutting down.
    ShuttingDown,
    /// Shut off (defined, not running).
    ShutOff,
    /// Crashed.
    Crashed,
    /// Anything else libvirt reports.
    Other,
}

impl DomainState {
    fn from_raw(state: sys::virDomainState) -> Self {
        match state {
            sys::VIR_DOMAIN_RUNNING | sys::VIR_DOMAIN_BLOCKED => DomainState::Running,
            sys::VIR_DOMAIN_PAUSED | sys::VIR_DOMAIN_PMSUSPENDED => DomainState::Paused,
            sys::VIR_DOMAIN_SHUTDOWN => DomainState::ShuttingDown,
            sys::VIR_DOMAIN_SHUTOFF => DomainState::ShutOff,
            sys::VIR_DOMAIN_CRASHED => DomainState::Crashed,
            _ => DomainState::Other,
        }
    }

    /// Whether a QEMU process exists for it (it could write its disks).
    pub fn is_active(self) -> bool {
        matches!(self, DomainState::Running | DomainState::Paused | DomainState::ShuttingDown)
    }
}

/// One domain on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainStatus {
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: DomainState,
    /// Whether it is defined persistently.
    pub persistent: bool,
}

/// A raw load reading of a host ([`Hypervisor::load_sample`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadSample {
    /// The host's memory, KiB.
    pub memory_kib: u64,
    /// Its free memory, bytes.
    pub free_bytes: u64,
    /// Its CPU threads.
    pub cpus: u32,
    /// Its running domains.
    pub vms: Vec<DomainLoad>,
}

/// One running domain in a [`LoadSample`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainLoad {
    /// Its name.
    pub name: String,
    /// CPU time used since it started, ns.
    pub cpu_time_ns: u64,
    /// Memory in use, KiB.
    pub memory_kib: u64,
}

/// Turns a host's successive [`LoadSample`]s into a [`halo_core::HostLoad`]: CPU use is the
/// CPU time a domain used between two readings over the time between them.
#[derive(Debug, Default)]
pub struct LoadMeter {
    last: Option<(std::time::Instant, BTreeMap<String, u64>)>,
}

impl LoadMeter {
    /// The load from `sample`, read at `at`.
    pub fn load(&mut self, sample: &LoadSample, at: std::time::Instant) -> halo_core::HostLoad {
        let elapsed_ns = self.last.as_ref().map(|(then, _)| at.saturating_duration_since(*then).as_nanos() as u64);
        let percent = |name: &str, now_ns: u64| -> Option<u32> {
            let (_, before) = self.last.as_ref()?;
            let used = now_ns.checked_sub(*before.get(name)?)?;
            let elapsed = elapsed_ns.filter(|e| *e > 0)?;
            Some(u32::try_from(used.saturating_mul(100) / elapsed).unwrap_or(u32::MAX))
        };
        let vms: Vec<halo_core::VmLoad> = sample
            .vms
            .iter()
            .map(|d| halo_core::VmLoad {
                vm: d.name.clone(),
                cpu_percent: percent(&d.name, d.cpu_time_ns),
                memory_mib: d.memory_kib / 1024,
            })
            .collect();
        let cpu_percent = (self.last.is_some() && sample.cpus > 0).then(|| {
            let sum: u64 = vms.iter().filter_map(|v| v.cpu_percent).map(u64::from).sum();
            u32::try_from(sum / u64::from(sample.cpus)).unwrap_or(u32::MAX)
        });
        self.last = Some((at, sample.vms.iter().map(|d| (d.name.clone(), d.cpu_time_ns)).collect()));
        halo_core::HostLoad {
            memory_mib: sample.memory_kib / 1024,
            free_memory_mib: sample.free_bytes / (1024 * 1024),
            cpus: sample.cpus,
            cpu_percent,
            vms,
        }
    }
}

/// How a VM moves to another host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationKind {
    /// Live, its disks on storage both hosts see.
    Live,
    /// Live, copying its disks (nothing shared).
    LiveWithStorageCopy,
    /// A powered-off VM: its definition moves.
    Offline,
}

/// What a finished migration took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Wall time of the migration call.
    pub took: Duration,
}

/// A connection to one host's libvirtd.
pub struct Hypervisor {
    conn: Connect,
    uri: String,
}

impl Drop for Hypervisor {
    fn drop(&mut self) {
        if let Err(e) = self.conn.close() {
            tracing::debug!(uri = %self.uri, "closing the libvirt connection: {e}");
        }
    }
}

fn c_safe(what: &str, text: &str) -> Result<(), LibvirtError> {
    if text.contains('\0') {
        return Err(LibvirtError::Invalid(format!("{what} contains a NUL byte")));
    }
    Ok(())
}

impl Hypervisor {
    /// Opens a connection (blocking; see [`Hypervisor::connect_with_timeout`]). The event loop
    /// is registered first, so lifecycle events and keepalives work on every connection.
    pub fn connect(uri: &str) -> Result<Self, LibvirtError> {
        c_safe("the libvirt URI", uri)?;
        events::init();
        let conn = Connect::open(Some(uri)).map_err(|e| LibvirtError::Call {
            uri: uri.to_string(),
            operation: "connect".into(),
            domain: None,
            message: e.message().to_string(),
        })?;
        // Keepalive: a dead peer is noticed in ~3 s (the close callback fires).
        let _ = conn.set_keep_alive(1, 3);
        Ok(Self { conn, uri: uri.to_string() })
    }

    /// Opens a connection on a helper thread and gives up after `timeout` (the thread is left
    /// to finish on its own; its connection is closed when it does).
    pub fn connect_with_timeout(uri: &str, timeout: Duration) -> Result<Self, LibvirtError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let owned = uri.to_string();
        std::thread::spawn(move || {
            let _ = tx.send(Self::connect(&owned));
        });
        rx.recv_timeout(timeout).unwrap_or_else(|_| {
            Err(LibvirtError::Timeout {
                uri: uri.to_string(),
                operation: "connect".into(),
                millis: timeout.as_millis() as u64,
            })
        })
    }

    /// The URI this connection was opened with.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn fail(&self, operation: &str, domain: Option<&str>, e: &virt::error::Error) -> LibvirtError {
        LibvirtError::Call {
            uri: self.uri.clone(),
            operation: operation.to_string(),
            domain: domain.map(str::to_string),
            message: e.message().to_string(),
        }
    }

    fn domain(&self, name: &str) -> Result<Domain, LibvirtError> {
        c_safe("a domain name", name)?;
        Domain::lookup_by_name(&self.conn, name).map_err(|e| self.fail("look up", Some(name), &e))
    }

    /// Whether the connection is alive.
    pub fn is_alive(&self) -> bool {
        self.conn.is_alive().unwrap_or(false)
    }

    /// Every domain on the host with its state.
    pub fn domains(&self) -> Result<Vec<DomainStatus>, LibvirtError> {
        let all = self.conn.list_all_domains(0).map_err(|e| self.fail("list domains", None, &e))?;
        let mut out = Vec::with_capacity(all.len());
        for d in all {
            let name = d.get_name().map_err(|e| self.fail("read a domain's name", None, &e))?;
            let (state, _) = d.get_state().map_err(|e| self.fail("read the state", Some(&name), &e))?;
            let persistent = d.is_persistent().unwrap_or(false);
            out.push(DomainStatus { name, state: DomainState::from_raw(state), persistent });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// What the host and its running domains use now: a raw reading, turned into rates by
    /// [`LoadMeter`].
    pub fn load_sample(&self) -> Result<LoadSample, LibvirtError> {
        let node = self.conn.get_node_info().map_err(|e| self.fail("read the node info", None, &e))?;
        let free = self.conn.get_free_memory().map_err(|e| self.fail("read the free memory", None, &e))?;
        let running = self
            .conn
            .list_all_domains(sys::VIR_CONNECT_LIST_DOMAINS_RUNNING)
            .map_err(|e| self.fail("list domains", None, &e))?;
        let mut vms = Vec::with_capacity(running.len());
        for d in running {
            let Ok(name) = d.get_name() else { continue };
            // A domain that stopped between the list and the read is skipped.
            let Ok(info) = d.get_info() else { continue };
            // Resident memory of its QEMU where libvirt reports it (KiB), else the balloon.
            let rss = d
                .memory_stats(0)
                .ok()
                .and_then(|stats| stats.iter().find(|s| s.tag == sys::VIR_DOMAIN_MEMORY_STAT_RSS).map(|s| s.val));
            vms.push(DomainLoad { name, cpu_time_ns: info.cpu_time, memory_kib: rss.unwrap_or(info.memory) });
        }
        vms.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(LoadSample { memory_kib: node.memory, free_bytes: free, cpus: node.cpus, vms })
    }

    /// A domain's state, or `None` when the host does not know it.
    pub fn state(&self, name: &str) -> Result<Option<DomainState>, LibvirtError> {
        Ok(self.raw_state(name)?.map(|(state, _)| DomainState::from_raw(state)))
    }

    /// libvirt's state and reason of a domain (`None`: no such domain).
    fn raw_state(&self, name: &str) -> Result<Option<(sys::virDomainState, i32)>, LibvirtError> {
        c_safe("a domain name", name)?;
        match Domain::lookup_by_name(&self.conn, name) {
            Ok(d) => d.get_state().map(Some).map_err(|e| self.fail("read the state", Some(name), &e)),
            Err(e) if e.code() == virt::error::ErrorNumber::NoDomain => Ok(None),
            Err(e) => Err(self.fail("look up", Some(name), &e)),
        }
    }

    /// Whether the domain is paused because QEMU stopped it on an I/O error (libvirt's state
    /// `paused`, reason `ioerror`).
    pub fn paused_on_io_error(&self, name: &str) -> Result<bool, LibvirtError> {
        Ok(self.raw_state(name)?.is_some_and(|(state, reason)| {
            state == sys::VIR_DOMAIN_PAUSED && u32::try_from(reason).ok() == Some(sys::VIR_DOMAIN_PAUSED_IOERROR)
        }))
    }

    /// Defines (or redefines) a domain from its XML; returns its name. libvirt refuses a
    /// second UUID for a name it knows, so: a definition without a UUID keeps the UUID the host
    /// already has for that name; a definition with another UUID replaces a powered-off one (a
    /// stale copy: a host back from a crash whose VMs were restarted elsewhere since) and is
    /// refused while that other domain runs.
    pub fn define(&self, xml: &str) -> Result<String, LibvirtError> {
        c_safe("the domain XML", xml)?;
        let mut xml = xml.to_string();
        if let Some(name) = element_text(&xml, "name").map(str::to_string) {
            match element_text(&xml, "uuid") {
                Some(wanted) => self.make_way(&name, wanted)?,
                None => {
                    if let Ok(existing) = self.xml(&name)
                        && let Some(uuid) = element_text(&existing, "uuid")
                    {
                        xml = xml.replacen("</name>", &format!("</name><uuid>{uuid}</uuid>"), 1);
                    }
                }
            }
        }
        let d = Domain::define_xml(&self.conn, &xml).map_err(|e| self.fail("define", None, &e))?;
        d.get_name().map_err(|e| self.fail("read a domain's name", None, &e))
    }

    /// Makes room for domain `name` with `uuid` here: another definition of that name (another
    /// UUID) that is powered off is a stale copy — a host back from a crash or a fence keeps the
    /// definitions of VMs restarted elsewhere since — and is removed; one that runs is refused
    /// (libvirt allows one UUID per name).
    fn make_way(&self, name: &str, uuid: &str) -> Result<(), LibvirtError> {
        let Ok(existing) = self.xml(name) else { return Ok(()) };
        let Some(have) = element_text(&existing, "uuid") else { return Ok(()) };
        if have.trim() == uuid.trim() {
            return Ok(());
        }
        if self.state(name)?.is_some_and(DomainState::is_active) {
            return Err(LibvirtError::Invalid(format!(
                "libvirt {}: {name}: a different domain of that name (uuid {have}) runs here",
                self.uri
            )));
        }
        self.undefine(name)
    }

    /// The domain's XML.
    pub fn xml(&self, name: &str) -> Result<String, LibvirtError> {
        self.domain(name)?.get_xml_desc(0).map_err(|e| self.fail("read the XML", Some(name), &e))
    }

    /// The domain's persistent definition (what it boots with next, without the run-time
    /// details of a running domain: ids, assigned ports, aliases): what another host defines.
    pub fn definition(&self, name: &str) -> Result<String, LibvirtError> {
        self.domain(name)?
            .get_xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
            .map_err(|e| self.fail("read the definition", Some(name), &e))
    }

    /// Mirrors every file disk of running domain `name` into `dir` (same file names), each
    /// guest write landing on both copies before it completes (synchronous writes), and
    /// returns once every copy is in step: the disks' paths, old → new. The guest runs on its
    /// old disks meanwhile. `progress` hears the percent copied. On any failure, or past
    /// `deadline`, the mirrors are dropped and the copies removed: nothing changed.
    pub fn mirror_disks(
        &self,
        name: &str,
        dir: &str,
        mut progress: impl FnMut(u32),
        deadline: Duration,
    ) -> Result<Vec<(String, String)>, LibvirtError> {
        c_safe("the target directory", dir)?;
        let d = self.domain(name)?;
        let live = d.get_xml_desc(0).map_err(|e| self.fail("read the XML", Some(name), &e))?;
        let disks = file_disks(&live).map_err(LibvirtError::Invalid)?;
        if disks.is_empty() {
            return Err(LibvirtError::Invalid(format!("{name} has no file disk to move")));
        }
        let mut moved = Vec::new();
        for disk in &disks {
            if disk.mirror.is_some() {
                return Err(LibvirtError::Invalid(format!("{name}: {} is being copied already", disk.target)));
            }
            let file = std::path::Path::new(&disk.source)
                .file_name()
                .ok_or_else(|| LibvirtError::Invalid(format!("{name}: disk {} has no file name", disk.source)))?;
            let dest = std::path::Path::new(dir).join(file).to_string_lossy().to_string();
            if dest == disk.source {
                return Err(LibvirtError::Invalid(format!("{name}: {} is in {dir} already", disk.source)));
            }
            if std::path::Path::new(&dest).exists() {
                return Err(LibvirtError::Invalid(format!("{name}: {dest} exists; halo does not overwrite it")));
            }
            moved.push((disk.source.clone(), dest));
        }
        let flags = sys::VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB | sys::VIR_DOMAIN_BLOCK_COPY_SYNCHRONOUS_WRITES;
        let mut started: Vec<&str> = Vec::new();
        let outcome = (|| {
            for (disk, (_, dest)) in disks.iter().zip(&moved) {
                let format = disk.format.as_deref().unwrap_or("raw");
                let xml = format!("<disk type='file'><source file='{dest}'/><driver type='{format}'/></disk>");
                events::block_copy(&d, &disk.target, &xml, flags)
                    .map_err(|e| self.fail(&format!("copy {} to {dest}", disk.target), Some(name), &e))?;
                started.push(&disk.target);
            }
            let begun = Instant::now();
            loop {
                let (mut copied, mut total) = (0u64, 0u64);
                for target in &started {
                    match events::block_job(&d, target).map_err(|e| self.fail("read a copy job", Some(name), &e))? {
                        Some((cur, end)) => {
                            copied += cur;
                            total += end;
                        }
                        None => {
                            return Err(LibvirtError::Invalid(format!("{name}: the copy of {target} ended by itself")));
                        }
                    }
                }
                progress((copied.min(total) * 100).checked_div(total).map_or(0, |p| p as u32));
                // In step: libvirt marks each mirror ready (QEMU's job reached the end and
                // mirrors every write now).
                let live = d.get_xml_desc(0).map_err(|e| self.fail("read the XML", Some(name), &e))?;
                let ready = file_disks(&live).map_err(LibvirtError::Invalid)?;
                if started.iter().all(|t| ready.iter().any(|x| x.target == *t && x.mirror_ready)) {
                    return Ok(());
                }
                if begun.elapsed() > deadline {
                    return Err(LibvirtError::Timeout {
                        uri: self.uri.clone(),
                        operation: format!("mirroring the disks of {name}"),
                        millis: deadline.as_millis() as u64,
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })();
        if let Err(e) = outcome {
            for target in &started {
                let _ = events::block_job_abort(&d, target, 0);
            }
            self.wait_for_no_jobs(&d, &started);
            for (_, dest) in &moved {
                let _ = std::fs::remove_file(dest);
            }
            return Err(e);
        }
        Ok(moved)
    }

    /// Ends the mirrors of running domain `name`: with `pivot` the guest switches to the
    /// copies and the persistent definition names them; without, the mirrors are dropped and
    /// the copies removed (the guest stays on its old disks).
    pub fn finish_mirrors(&self, name: &str, pivot: bool) -> Result<(), LibvirtError> {
        let d = self.domain(name)?;
        let live = d.get_xml_desc(0).map_err(|e| self.fail("read the XML", Some(name), &e))?;
        let disks = file_disks(&live).map_err(LibvirtError::Invalid)?;
        let mirrored: Vec<(&FileDisk, &str)> = disks.iter().filter_map(|x| Some((x, x.mirror.as_deref()?))).collect();
        if mirrored.is_empty() {
            return Err(LibvirtError::Invalid(format!("{name} has no disk being copied")));
        }
        let inactive = self.definition(name)?;
        let flags = if pivot { sys::VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT } else { 0 };
        for (disk, _) in &mirrored {
            events::block_job_abort(&d, &disk.target, flags).map_err(|e| {
                let what = if pivot { "switch to the copy of" } else { "drop the copy of" };
                self.fail(&format!("{what} {}", disk.target), Some(name), &e)
            })?;
        }
        let targets: Vec<&str> = mirrored.iter().map(|(x, _)| x.target.as_str()).collect();
        self.wait_for_no_jobs(&d, &targets);
        if pivot {
            let moved: Vec<(String, String)> =
                mirrored.iter().map(|(x, mirror)| (x.source.clone(), mirror.to_string())).collect();
            let xml = halo_core::disks::with_disks_moved(&inactive, &moved).map_err(LibvirtError::Invalid)?;
            self.define(&xml)?;
        } else {
            for (_, mirror) in &mirrored {
                let _ = std::fs::remove_file(mirror);
            }
        }
        Ok(())
    }

    /// Waits (up to 30 s) until no block job runs on `targets`.
    fn wait_for_no_jobs(&self, d: &Domain, targets: &[&str]) {
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until && targets.iter().any(|t| events::block_job(d, t).ok().flatten().is_some()) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Removes a domain's definition (it must be shut off).
    pub fn undefine(&self, name: &str) -> Result<(), LibvirtError> {
        self.domain(name)?.undefine().map_err(|e| self.fail("undefine", Some(name), &e))
    }

    /// Starts a defined domain; a running one is left alone.
    pub fn start(&self, name: &str) -> Result<(), LibvirtError> {
        let d = self.domain(name)?;
        if d.is_active().unwrap_or(false) {
            return Ok(());
        }
        d.create().map(drop).map_err(|e| self.fail("start", Some(name), &e))
    }

    /// Powers a domain off at once; a stopped one is left alone.
    pub fn power_off(&self, name: &str) -> Result<(), LibvirtError> {
        let d = self.domain(name)?;
        if !d.is_active().unwrap_or(true) {
            return Ok(());
        }
        match d.destroy() {
            Ok(()) => Ok(()),
            Err(_) if !d.is_active().unwrap_or(true) => Ok(()), // it stopped meanwhile
            Err(e) => Err(self.fail("power off", Some(name), &e)),
        }
    }

    /// Pauses a running domain (its vCPUs stop; memory and devices stay): milliseconds, and
    /// nothing is lost. A paused one is left alone.
    pub fn pause(&self, name: &str) -> Result<(), LibvirtError> {
        let d = self.domain(name)?;
        if self.state(name)? == Some(DomainState::Paused) {
            return Ok(());
        }
        d.suspend().map(drop).map_err(|e| self.fail("pause", Some(name), &e))
    }

    /// Lets a paused domain run again; a running one is left alone.
    pub fn resume(&self, name: &str) -> Result<(), LibvirtError> {
        let d = self.domain(name)?;
        if self.state(name)? != Some(DomainState::Paused) {
            return Ok(());
        }
        d.resume().map(drop).map_err(|e| self.fail("resume", Some(name), &e))
    }

    /// Pauses a domain for a hold (the core's `PauseVm`) and marks it so in its live metadata
    /// (`<halo:hold/>` in [`driver::HALO_HOLD_XMLNS`]): an agent that starts while the VM is
    /// still paused finds the mark and settles the hold (`VmState::Held`), instead of taking
    /// the VM for running or leaving it paused for good.
    pub fn hold(&self, name: &str) -> Result<(), LibvirtError> {
        self.pause(name)?;
        let d = self.domain(name)?;
        let mark = format!("<hold xmlns='{}'/>", driver::HALO_HOLD_XMLNS);
        d.set_metadata(
            METADATA_ELEMENT,
            Some(&mark),
            Some("halo"),
            Some(driver::HALO_HOLD_XMLNS),
            sys::VIR_DOMAIN_AFFECT_LIVE,
        )
        .map(drop)
        .map_err(|e| self.fail("mark held", Some(name), &e))
    }

    /// Lets a held domain run again and removes the mark (a mark left behind on a running
    /// domain means nothing: only a paused domain with the mark is held).
    pub fn release(&self, name: &str) -> Result<(), LibvirtError> {
        self.resume(name)?;
        let d = self.domain(name)?;
        if let Err(e) =
            d.set_metadata(METADATA_ELEMENT, None, None, Some(driver::HALO_HOLD_XMLNS), sys::VIR_DOMAIN_AFFECT_LIVE)
        {
            tracing::warn!(domain = name, "the hold mark stays on the running domain: {}", e.message());
        }
        Ok(())
    }

    /// Asks the guest to shut down and powers it off if it has not stopped after `grace`.
    /// Returns whether the guest stopped by itself.
    pub fn shutdown(&self, name: &str, grace: Duration) -> Result<bool, LibvirtError> {
        let d = self.domain(name)?;
        if !d.is_active().unwrap_or(true) {
            return Ok(true);
        }
        if let Err(e) = d.shutdown() {
            tracing::info!(domain = name, "the guest refused the shutdown request ({}); powering off", e.message());
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !d.is_active().unwrap_or(true) {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.power_off(name)?;
        Ok(false)
    }

    /// Checks what a migration of `name` to `target` needs: the target answers, its CPU can run
    /// what this host's CPU runs, it has the memory free, and the disks are where the target
    /// sees them (`shared_prefixes`: paths both hosts see) unless the storage is copied.
    /// Every failed prerequisite is named.
    pub fn check_migration(
        &self,
        name: &str,
        target: &Hypervisor,
        kind: MigrationKind,
        shared_prefixes: &[&str],
    ) -> Result<(), LibvirtError> {
        self.check(name, target, kind, shared_prefixes).map(drop)
    }

    /// [`Hypervisor::check_migration`], returning the domain's disks.
    fn check(
        &self,
        name: &str,
        target: &Hypervisor,
        kind: MigrationKind,
        shared_prefixes: &[&str],
    ) -> Result<Vec<String>, LibvirtError> {
        let d = self.domain(name)?;
        let mut reasons = Vec::new();
        let active = d.is_active().unwrap_or(false);
        match kind {
            MigrationKind::Offline if active => {
                reasons.push("it is running: an offline migration needs it powered off".to_string())
            }
            MigrationKind::Live | MigrationKind::LiveWithStorageCopy if !active => {
                reasons.push("it is not running: use an offline migration".to_string())
            }
            _ => {}
        }
        if !target.is_alive() {
            reasons.push(format!("the target libvirt ({}) does not answer", target.uri));
        } else {
            // CPU: the target must run what this host's CPU offers guests.
            if let Ok(caps) = self.conn.get_capabilities()
                && let Some(cpu) = host_cpu_xml(&caps)
            {
                match target.conn.compare_cpu(&cpu, 0) {
                    Ok(sys::VIR_CPU_COMPARE_INCOMPATIBLE) => {
                        reasons.push("the target's CPU is not compatible with this host's".to_string())
                    }
                    Ok(_) => {}
                    Err(e) => reasons.push(format!("the target could not compare CPUs: {}", e.message())),
                }
            }
            if active {
                let need = d.get_info().map(|i| i.max_mem * 1024).unwrap_or(0);
                match target.conn.get_free_memory() {
                    Ok(free) if free < need => {
                        reasons.push(format!("the target has {} MiB free, the VM needs {} MiB", free >> 20, need >> 20))
                    }
                    Ok(_) => {}
                    Err(e) => reasons.push(format!("the target's free memory is unknown: {}", e.message())),
                }
            }
            if target.state(name).ok().flatten().is_some_and(DomainState::is_active) {
                reasons.push("a domain of that name already runs on the target".to_string());
            }
        }
        let xml = d.get_xml_desc(0).map_err(|e| self.fail("read the XML", Some(name), &e))?;
        let disks = disk_sources(&xml);
        if kind != MigrationKind::LiveWithStorageCopy {
            for disk in &disks {
                if !on_shared_path(disk, shared_prefixes) {
                    reasons.push(format!("disk {disk} is not on storage both hosts see (migrate with storage copy)"));
                }
            }
        }
        if reasons.is_empty() {
            Ok(disks)
        } else {
            Err(LibvirtError::MigrationRefused { domain: name.to_string(), target: target.uri.clone(), reasons })
        }
    }

    /// Migrates `name` to `target` (peer to peer: this host's libvirtd talks to the target's
    /// at `target_uri`, as seen from this host), after checking the prerequisites. The domain
    /// is defined on the target and undefined here. A migration still running after `deadline`
    /// is aborted (the VM stays on this host) and reported as a timeout — a target that
    /// vanished mid-way would otherwise hold the call for as long as TCP retries (over a
    /// minute).
    pub fn migrate(
        &self,
        name: &str,
        target: &Hypervisor,
        target_uri: &str,
        kind: MigrationKind,
        shared_prefixes: &[&str],
        deadline: Duration,
    ) -> Result<MigrationReport, LibvirtError> {
        c_safe("the target URI", target_uri)?;
        let disks = self.check(name, target, kind, shared_prefixes)?;
        let d = self.domain(name)?;
        // A stale definition of the same name on the target would make libvirt refuse
        // ("already exists with uuid …"): it gives way to the running copy here.
        if kind != MigrationKind::Offline {
            let uuid = d.get_uuid_string().map_err(|e| self.fail("read the UUID", Some(name), &e))?;
            target.make_way(name, &uuid)?;
        }
        let mut flags = sys::VIR_MIGRATE_PEER2PEER | sys::VIR_MIGRATE_PERSIST_DEST | sys::VIR_MIGRATE_UNDEFINE_SOURCE;
        flags |= match kind {
            MigrationKind::Live => sys::VIR_MIGRATE_LIVE,
            MigrationKind::LiveWithStorageCopy => sys::VIR_MIGRATE_LIVE | sys::VIR_MIGRATE_NON_SHARED_DISK,
            MigrationKind::Offline => sys::VIR_MIGRATE_OFFLINE,
        };
        // libvirt calls a disk on a filesystem it does not know as shared (NFS, GFS2, …)
        // unsafe to migrate live. halo checked above that every disk lies under a path the
        // operator declared shared (`shared_prefixes`), so it vouches for them.
        if kind == MigrationKind::Live && !disks.is_empty() {
            flags |= sys::VIR_MIGRATE_UNSAFE;
        }
        let started = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        let (job, uri) = (d.clone(), target_uri.to_string());
        std::thread::spawn(move || {
            let result = job.migrate_to_uri3(Some(&uri), MigrateParameters::default(), flags);
            let _ = tx.send(result.map_err(|e| e.message().to_string()));
        });
        match rx.recv_timeout(deadline) {
            Ok(Ok(())) => Ok(MigrationReport { took: started.elapsed() }),
            Ok(Err(message)) => Err(LibvirtError::Call {
                uri: self.uri.clone(),
                operation: format!("migrate to {target_uri}"),
                domain: Some(name.to_string()),
                message,
            }),
            Err(_) => {
                let aborted = events::abort_job(&d);
                Err(LibvirtError::Timeout {
                    uri: self.uri.clone(),
                    operation: format!(
                        "migration of {name} to {target_uri} ({}; the VM stays on this host)",
                        if aborted { "aborted" } else { "still connecting to the target, left to fail" }
                    ),
                    millis: deadline.as_millis() as u64,
                })
            }
        }
    }

    /// Pings the QEMU guest agent: `None` when the domain has no guest-agent channel (no
    /// agent to ask), `Some(true)` when the agent answered within `timeout`, `Some(false)`
    /// when it did not (not installed, not started yet, or the guest hangs). A VM counts as
    /// up by its guest agent only when the operator asked for it.
    pub fn guest_agent_ping(&self, name: &str, timeout: Duration) -> Result<Option<bool>, LibvirtError> {
        let d = self.domain(name)?;
        let xml = d.get_xml_desc(0).map_err(|e| self.fail("read the XML", Some(name), &e))?;
        if !xml.contains("org.qemu.guest_agent.0") {
            return Ok(None);
        }
        if !d.is_active().unwrap_or(false) {
            return Ok(Some(false));
        }
        let seconds = i32::try_from(timeout.as_secs().max(1)).unwrap_or(i32::MAX);
        match d.qemu_agent_command(r#"{"execute":"guest-ping"}"#, seconds, 0) {
            Ok(answer) => Ok(Some(answer.contains("\"return\""))),
            Err(e) => {
                tracing::debug!(domain = name, "guest agent: {}", e.message());
                Ok(Some(false))
            }
        }
    }

    /// Sends a command to the QEMU guest agent (JSON, e.g. `{"execute":"guest-info"}`) and
    /// returns its answer.
    pub fn guest_agent_command(&self, name: &str, command: &str, timeout: Duration) -> Result<String, LibvirtError> {
        c_safe("the guest-agent command", command)?;
        let d = self.domain(name)?;
        let seconds = i32::try_from(timeout.as_secs().max(1)).unwrap_or(i32::MAX);
        d.qemu_agent_command(command, seconds, 0).map_err(|e| self.fail("guest-agent command", Some(name), &e))
    }

    /// Subscribes to the lifecycle events of every domain on this host.
    pub fn subscribe(&self) -> Result<Subscription, LibvirtError> {
        events::subscribe(&self.conn).map_err(|message| LibvirtError::Call {
            uri: self.uri.clone(),
            operation: "subscribe to lifecycle events".into(),
            domain: None,
            message,
        })
    }
}

/// The text of the first `<tag>…</tag>`.
pub(crate) fn element_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(&xml[start..end])
}

/// The `<cpu>…</cpu>` element of the capabilities' `<host>`.
fn host_cpu_xml(capabilities: &str) -> Option<String> {
    let host = &capabilities[capabilities.find("<host>")?..];
    let start = host.find("<cpu>")?;
    let end = host[start..].find("</cpu>")? + start + "</cpu>".len();
    Some(host[start..end].to_string())
}

/// The `file` or `dev` sources of a domain's disks (network disks have neither: any host
/// reaches them). An XML that cannot be parsed has none (its other readers say why).
fn disk_sources(xml: &str) -> Vec<String> {
    let Ok(doc) = roxmltree::Document::parse(xml) else { return Vec::new() };
    doc.root_element()
        .children()
        .filter(|n| n.has_tag_name("devices"))
        .flat_map(|d| d.children())
        .filter(|n| n.has_tag_name("disk"))
        .filter_map(|disk| disk.children().find(|n| n.has_tag_name("source")))
        .filter_map(|source| source.attribute("file").or_else(|| source.attribute("dev")).map(str::to_string))
        .collect()
}

/// A disk on NFS, as the domain names it: `<disk type='network'><source protocol='nfs'
/// name='EXPORT/PATH'><host name='SERVER'/></source>` (QEMU's own NFS client,
/// `nfs://SERVER/EXPORT/PATH`), or a file under a directory (`file='/PATH'`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// A network disk on NFS: the server as named, and the path on it (with a leading `/`).
    Nfs {
        /// The server (address or name).
        server: String,
        /// The path on the server, export first.
        path: String,
    },
    /// A file or block device on this host's file system.
    Path(String),
}

/// Every disk source of a domain's XML (network disks of other protocols are left out).
pub fn disk_locations(xml: &str) -> Vec<DiskSource> {
    let Ok(doc) = roxmltree::Document::parse(xml) else { return Vec::new() };
    doc.root_element()
        .children()
        .filter(|n| n.has_tag_name("devices"))
        .flat_map(|d| d.children())
        .filter(|n| n.has_tag_name("disk"))
        .filter_map(|disk| disk.children().find(|n| n.has_tag_name("source")))
        .filter_map(|source| {
            if source.attribute("protocol") == Some("nfs") {
                let server = source.children().find(|n| n.has_tag_name("host"))?.attribute("name")?.to_string();
                let name = source.attribute("name")?;
                let path = if name.starts_with('/') { name.to_string() } else { format!("/{name}") };
                return Some(DiskSource::Nfs { server, path });
            }
            source.attribute("file").or_else(|| source.attribute("dev")).map(|p| DiskSource::Path(p.to_string()))
        })
        .collect()
}

/// Whether `path` lies under one of `shared` — by path components: `/srv/shared2/a` is not
/// under `/srv/shared`.
fn on_shared_path(path: &str, shared: &[&str]) -> bool {
    shared.iter().any(|p| std::path::Path::new(path).starts_with(p))
}

/// What a domain's XML says about protecting it: its size, and every reason another host
/// could not start it (`halo vm diagnose`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protectability {
    /// Memory, MiB (`<memory>`).
    pub memory_mib: u64,
    /// vCPUs (`<vcpu>`).
    pub vcpus: u32,
    /// Why it cannot run elsewhere; empty when it can.
    pub problems: Vec<String>,
}

/// Reads a domain's XML for [`Protectability`]: disks outside `shared_prefixes` (paths every
/// host sees), host devices passed through, and local-only devices all tie a VM to its host.
pub fn protectability(xml: &str, shared_paths: &[&str]) -> Protectability {
    let doc = match roxmltree::Document::parse(xml) {
        Ok(doc) => doc,
        Err(e) => {
            return Protectability { memory_mib: 0, vcpus: 0, problems: vec![format!("its XML cannot be read: {e}")] };
        }
    };
    let domain = doc.root_element();
    let mut problems = Vec::new();
    let devices: Vec<roxmltree::Node> =
        domain.children().filter(|n| n.has_tag_name("devices")).flat_map(|d| d.children()).collect();
    // A network disk (nfs://, rbd, iSCSI) is reached from any host; a file or block device only
    // when it lies under a shared path.
    for path in disk_sources(xml) {
        if !on_shared_path(&path, shared_paths) {
            problems.push(format!(
                "disk {path} is not on a shared datastore (libvirt.shared-storage: {})",
                if shared_paths.is_empty() { "none declared".to_string() } else { shared_paths.join(", ") }
            ));
        }
    }
    if devices.iter().any(|n| n.has_tag_name("hostdev")) {
        problems.push("a host device is passed through (<hostdev>): no other host has it".to_string());
    }
    if devices.iter().any(|n| n.has_tag_name("filesystem")) {
        problems.push("a host directory is shared into it (<filesystem>)".to_string());
    }
    if devices.iter().any(|n| n.has_tag_name("interface") && n.attribute("type") == Some("vhostuser")) {
        problems.push("a vhost-user interface is bound to this host".to_string());
    }
    let child = |tag: &str| domain.children().find(|n| n.has_tag_name(tag));
    let memory_mib = child("memory")
        .and_then(|m| Some((m.text()?.trim().parse::<u64>().ok()?, m.attribute("unit").unwrap_or("KiB"))))
        .and_then(|(value, unit)| mib(value, unit))
        .unwrap_or(0);
    let vcpus = child("vcpu").and_then(|v| v.text()?.trim().parse::<u32>().ok()).unwrap_or(1);
    if memory_mib == 0 {
        problems.push("its XML states no memory size".to_string());
    }
    Protectability { memory_mib, vcpus, problems }
}

/// A libvirt memory size in MiB (units as libvirt's `<memory unit=…>`; KiB when absent).
fn mib(value: u64, unit: &str) -> Option<u64> {
    let bytes_per: u64 = match unit {
        "b" | "bytes" => 1,
        "KB" => 1_000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        _ => return None,
    };
    Some(value.checked_mul(bytes_per)? >> 20)
}

/// One file disk of a domain, as its XML says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileDisk {
    /// The guest's name for it (`vda`).
    target: String,
    /// Its image.
    source: String,
    /// The image format (`qcow2`, `raw`).
    format: Option<String>,
    /// Where a copy job mirrors it, if one does.
    mirror: Option<String>,
    /// The mirror is in step.
    mirror_ready: bool,
}

/// The file disks (`device='disk'`) of domain XML `xml`.
fn file_disks(xml: &str) -> Result<Vec<FileDisk>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("the domain XML does not parse: {e}"))?;
    fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
        node.children().find(|c| c.has_tag_name(tag))
    }
    Ok(doc
        .descendants()
        .filter(|n| n.has_tag_name("disk") && n.parent().is_some_and(|p| p.has_tag_name("devices")))
        .filter(|n| n.attribute("type") == Some("file") && n.attribute("device").unwrap_or("disk") == "disk")
        .filter_map(|n| {
            let source = child(n, "source")?.attribute("file")?.to_string();
            let target = child(n, "target")?.attribute("dev")?.to_string();
            let format = child(n, "driver").and_then(|d| d.attribute("type")).map(str::to_string);
            let mirror = child(n, "mirror");
            let mirror_file = mirror.and_then(|m| {
                m.attribute("file").or_else(|| child(m, "source").and_then(|s| s.attribute("file"))).map(str::to_string)
            });
            let ready = mirror.and_then(|m| m.attribute("ready")) == Some("yes");
            Some(FileDisk { target, source, format, mirror: mirror_file, mirror_ready: ready })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfs_and_file_disks_are_told_apart() {
        let xml = "<domain><devices><disk type='network' device='disk'><driver name='qemu' type='qcow2'/>\
                   <source protocol='nfs' name='ds1/vm-1.qcow2'><host name='10.0.0.9'/></source><target dev='vda'/></disk>\
                   <disk type='file'><source file='/srv/a.img'/></disk>\
                   <disk type='network'><source protocol='rbd' name='pool/x'><host name='ceph'/></source></disk></devices></domain>";
        assert_eq!(
            disk_locations(xml),
            [
                DiskSource::Nfs { server: "10.0.0.9".into(), path: "/ds1/vm-1.qcow2".into() },
                DiskSource::Path("/srv/a.img".into())
            ]
        );
        assert!(disk_locations("<domain").is_empty());
    }

    #[test]
    fn disk_sources_and_the_host_cpu_are_found_in_xml() {
        let caps = "<capabilities><host><uuid>x</uuid><cpu><arch>x86_64</arch><model>Skylake</model></cpu></host><guest><cpu>no</cpu></guest></capabilities>";
        assert_eq!(host_cpu_xml(caps).as_deref(), Some("<cpu><arch>x86_64</arch><model>Skylake</model></cpu>"));
        assert_eq!(host_cpu_xml("<capabilities/>"), None);
    }

    #[test]
    fn protectability_names_every_tie_to_the_host() {
        let shared = "<domain><memory unit='KiB'>262144</memory><vcpu placement='static'>2</vcpu><devices>\
                      <disk type='file'><source file='/srv/shared/a.qcow2'/></disk></devices></domain>";
        let p = protectability(shared, &["/srv/shared"]);
        assert_eq!((p.memory_mib, p.vcpus), (256, 2));
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        let local = "<domain><memory unit='MiB'>512</memory><vcpu>1</vcpu><devices>\
                     <disk type='file'><source file='/var/lib/libvirt/images/b.qcow2'/></disk>\
                     <hostdev mode='subsystem' type='pci'/></devices></domain>";
        let p = protectability(local, &["/srv/shared"]);
        assert_eq!((p.memory_mib, p.vcpus), (512, 1));
        assert_eq!(p.problems.len(), 2, "{:?}", p.problems);
        assert!(p.problems[0].contains("/var/lib/libvirt/images/b.qcow2"));
        assert!(p.problems[1].contains("hostdev"));
    }

    #[test]
    fn disk_sources_are_read_from_the_devices() {
        let xml = "<domain><devices><disk type='file'><source file='/var/lib/halo/a.qcow2'/></disk>\
                   <disk type='block'><source dev=\"/dev/sdb\"/></disk></devices></domain>";
        assert_eq!(disk_sources(xml), vec!["/var/lib/halo/a.qcow2".to_string(), "/dev/sdb".to_string()]);
        assert!(disk_sources("<domain/>").is_empty());
        assert!(
            on_shared_path("/srv/shared/a", &["/srv/shared"]) && on_shared_path("/srv/shared/a", &["/srv/shared/"])
        );
        assert!(!on_shared_path("/srv/shared2/a", &["/srv/shared"]));
    }

    #[test]
    fn protectability_reads_xml_as_xml_and_paths_as_paths() {
        // <memoryBacking> before <memory>, double quotes, GiB, a disk under a sibling of the
        // shared path, a block device, a network disk (QEMU's own NFS client).
        let xml = r#"<domain type="kvm"><memoryBacking><hugepages/></memoryBacking>
            <memory unit="GiB">2</memory><currentMemory unit="KiB">1048576</currentMemory><vcpu>4</vcpu>
            <devices>
              <disk type="file"><source file="/srv/shared2/a.qcow2"/></disk>
              <disk type="block"><source dev="/srv/shared/lun0"/></disk>
              <disk type="network"><source protocol="nfs" name="/ds1/b.qcow2"><host name="10.0.0.9"/></source></disk>
              <interface type="vhostuser"/>
            </devices></domain>"#;
        let p = protectability(xml, &["/srv/shared"]);
        assert_eq!((p.memory_mib, p.vcpus), (2048, 4));
        assert_eq!(p.problems.len(), 2, "{:?}", p.problems);
        assert!(p.problems[0].contains("/srv/shared2/a.qcow2"), "a prefix of the name is not the path");
        assert!(p.problems[1].contains("vhost-user"));
        assert!(protectability(r#"<domain><memory unit="MB">1000</memory></domain>"#, &[]).problems.is_empty());
        let broken = protectability("<domain><memory>", &[]);
        assert!(broken.problems[0].contains("cannot be read"), "{:?}", broken.problems);
    }
}
