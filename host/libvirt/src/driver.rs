//! The core's [`HypervisorDriver`] on real libvirt: starts (here, or — for the master — on
//! another host's libvirt), stops with a grace time, live migrations. Every request runs on a
//! blocking thread of the agent's runtime; its outcome comes back as an input of the node.
//!
//! A VM's generation travels in its domain XML (`<metadata><halo:vm generation='N'/>`), so
//! the host that runs it — and its agent after a restart — knows which generation it runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use halo_core::drivers::HypervisorDriver;
use halo_core::{Input, StopReason, VmState};
use tokio::runtime::Handle;
use tokio::sync::mpsc::Sender;

use crate::{Hypervisor, MigrationKind};

/// The longest a storage move's copy may take before it is dropped.
pub const STORAGE_COPY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(4 * 3600);

/// The XML namespace of halo's domain metadata.
pub const HALO_XMLNS: &str = "https://halo.invalid/xmlns/vm/1";

/// `xml` with halo's metadata saying `generation` (any earlier halo metadata replaced).
pub fn with_generation(xml: &str, generation: u64) -> String {
    let element = format!("<halo:vm xmlns:halo='{HALO_XMLNS}' generation='{generation}'/>");
    let mut xml = xml.to_string();
    if let Some(start) = xml.find("<halo:vm ")
        && let Some(len) = xml[start..].find("/>")
    {
        xml.replace_range(start..start + len + 2, &element);
        return xml;
    }
    if let Some(at) = xml.find("<metadata>") {
        xml.insert_str(at + "<metadata>".len(), &element);
    } else if let Some(at) = xml.rfind("</domain>") {
        xml.insert_str(at, &format!("<metadata>{element}</metadata>"));
    }
    xml
}

/// The generation in halo's metadata of a domain's XML: the `generation` attribute of the
/// element `vm` in halo's namespace (whatever its prefix and quotes) under `<metadata>`.
pub fn generation_of(xml: &str) -> Option<u64> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let metadata = doc.root_element().children().find(|n| n.has_tag_name("metadata"))?;
    let vm = metadata.children().find(|n| n.has_tag_name((HALO_XMLNS, "vm")))?;
    vm.attribute("generation")?.trim().parse().ok()
}

/// The XML namespace of the mark a hold puts in a paused domain's live metadata.
pub const HALO_HOLD_XMLNS: &str = "https://halo.invalid/xmlns/hold/1";

/// Whether a domain's (live) XML carries halo's hold mark: paused by halo after a gap, not
/// settled yet.
pub fn held_by_halo(xml: &str) -> bool {
    let Ok(doc) = roxmltree::Document::parse(xml) else { return false };
    doc.root_element()
        .children()
        .find(|n| n.has_tag_name("metadata"))
        .is_some_and(|m| m.children().any(|n| n.has_tag_name((HALO_HOLD_XMLNS, "hold"))))
}

/// How this agent reaches every host's libvirt.
#[derive(Debug, Clone)]
pub struct HypervisorConfig {
    /// This host.
    pub me: String,
    /// Per host: the URI this agent opens to manage that host's domains.
    pub uris: BTreeMap<String, String>,
    /// Per host: the URI a source libvirtd uses to reach that host for a migration.
    pub migration_uris: BTreeMap<String, String>,
    /// Paths every host sees (disks under them migrate live without copying).
    pub shared_storage: Vec<String>,
    /// Opening a connection gives up after this.
    pub connect_timeout: Duration,
    /// A migration is aborted after this.
    pub migration_deadline: Duration,
    /// VM leases on shared storage (sanlock), when the site uses them: every VM halo starts
    /// carries its lease.
    pub leases: Option<crate::SanlockLeases>,
}

/// The hypervisor driver of one agent.
pub struct Hypervisors {
    config: Arc<HypervisorConfig>,
    catalog: Arc<Mutex<BTreeMap<String, String>>>,
    inputs: Sender<Input>,
    runtime: Handle,
    /// Per host: its last load reading, for rates.
    meters: Arc<Mutex<BTreeMap<String, crate::LoadMeter>>>,
}

impl Hypervisors {
    /// A driver; `catalog` maps each protected VM to its domain XML (the protected-VM list on
    /// the datastore; the agent keeps it current).
    pub fn new(
        config: HypervisorConfig,
        catalog: Arc<Mutex<BTreeMap<String, String>>>,
        inputs: Sender<Input>,
        runtime: Handle,
    ) -> Self {
        Self { config: Arc::new(config), catalog, inputs, runtime, meters: Arc::default() }
    }

    /// Runs `act` on `vm` of this host's libvirt on a blocking thread; a failure is logged as an
    /// alert (a pause or resume has no answer for the core).
    fn on_this_host(
        &self,
        vm: &str,
        what: &'static str,
        act: fn(&Hypervisor, &str) -> Result<(), crate::LibvirtError>,
    ) {
        let (config, vm) = (Arc::clone(&self.config), vm.to_string());
        self.runtime.spawn_blocking(move || {
            match Self::connect(&config, &config.me).and_then(|hv| act(&hv, &vm).map_err(|e| e.to_string())) {
                Ok(()) => tracing::warn!(vm, "{what}: done"),
                Err(e) => tracing::error!(vm, "ALERT could not {what} the VM: {e}"),
            }
        });
    }

    fn connect(config: &HypervisorConfig, host: &str) -> Result<Hypervisor, String> {
        let uri =
            config.uris.get(host).ok_or_else(|| format!("no libvirt URI for host {host} in the configuration"))?;
        Hypervisor::connect_with_timeout(uri, config.connect_timeout).map_err(|e| e.to_string())
    }
}

impl HypervisorDriver for Hypervisors {
    fn start_vm(&mut self, host: &str, vm: &str, generation: u64) {
        let (config, inputs) = (Arc::clone(&self.config), self.inputs.clone());
        let xml = self.catalog.lock().unwrap_or_else(|p| p.into_inner()).get(vm).cloned();
        let (host, vm) = (host.to_string(), vm.to_string());
        self.runtime.spawn_blocking(move || {
            let result = (|| {
                let xml = xml.ok_or_else(|| format!("{vm} has no definition in the protected-VM list"))?;
                let began = std::time::Instant::now();
                let hv = Self::connect(&config, &host)?;
                let connected = began.elapsed();
                let mut xml = with_generation(&xml, generation);
                if let Some(leases) = &config.leases {
                    leases.ensure_lease(&vm).map_err(|e| format!("{vm}'s lease: {e}"))?;
                    xml = leases.with_lease(&xml, &vm);
                }
                hv.define(&xml).map_err(|e| e.to_string())?;
                let defined = began.elapsed();
                let started = hv.start(&vm).map_err(|e| crate::leases::start_error(e.to_string()));
                tracing::debug!(
                    "start {vm} on {host}: connect {:.3}s, define {:.3}s, start {:.3}s",
                    connected.as_secs_f64(),
                    (defined - connected).as_secs_f64(),
                    (began.elapsed() - defined).as_secs_f64()
                );
                started
            })();
            if result.is_ok() && host == config.me {
                let _ = inputs.blocking_send(Input::VmState { vm: vm.clone(), generation, state: VmState::Running });
            }
            let _ = inputs.blocking_send(Input::StartResult { vm, host, generation, result });
        });
    }

    fn stop_vm(&mut self, vm: &str, reason: StopReason, grace_secs: u32) {
        let (config, inputs, vm) = (Arc::clone(&self.config), self.inputs.clone(), vm.to_string());
        self.runtime.spawn_blocking(move || {
            let stopped = (|| {
                let hv = Self::connect(&config, &config.me)?;
                let generation = hv.xml(&vm).ok().as_deref().and_then(generation_of).unwrap_or(0);
                let paused = hv.state(&vm).ok().flatten() == Some(crate::DomainState::Paused);
                if grace_secs == 0 {
                    hv.power_off(&vm).map_err(|e| e.to_string())?;
                } else {
                    hv.shutdown(&vm, Duration::from_secs(u64::from(grace_secs))).map_err(|e| e.to_string())?;
                }
                Ok::<(u64, bool), String>((generation, paused))
            })();
            match stopped {
                Ok((generation, paused)) => {
                    // A paused copy (the core knows whether it holds it, or the master paused it
                    // as one started outside halo) is told apart.
                    let state = if paused && reason != StopReason::Operator {
                        VmState::StoppedWhilePaused(reason)
                    } else {
                        VmState::StoppedByHalo(reason)
                    };
                    let _ = inputs.blocking_send(Input::VmState { vm, generation, state });
                }
                // Not stopped: nothing is reported, so nothing is restarted elsewhere.
                Err(e) => tracing::error!(vm, "could not stop the VM ({reason:?}): {e}"),
            }
        });
    }

    fn pause_vm(&mut self, vm: &str) {
        self.on_this_host(vm, "pause", Hypervisor::hold);
    }

    fn resume_vm(&mut self, vm: &str) {
        self.on_this_host(vm, "resume", Hypervisor::release);
    }

    /// A plain libvirt suspend, without halo's hold mark: the copy stays paused for the
    /// operator to inspect; no agent settles or resumes it.
    fn pause_copy(&mut self, host: &str, vm: &str) {
        let (config, host, vm) = (Arc::clone(&self.config), host.to_string(), vm.to_string());
        self.runtime.spawn_blocking(move || {
            match Self::connect(&config, &host).and_then(|hv| hv.pause(&vm).map_err(|e| e.to_string())) {
                Ok(()) => tracing::warn!(vm, host, "paused the copy halo does not keep"),
                Err(e) => tracing::error!(vm, host, "ALERT could not pause the copy on {host}: {e}"),
            }
        });
    }

    fn read_load(&mut self, host: &str) {
        let (config, inputs, meters) = (Arc::clone(&self.config), self.inputs.clone(), Arc::clone(&self.meters));
        let host = host.to_string();
        self.runtime.spawn_blocking(move || {
            let sample = Self::connect(&config, &host).and_then(|hv| hv.load_sample().map_err(|e| e.to_string()));
            let load = sample.map(|sample| {
                let mut meters = meters.lock().unwrap_or_else(|p| p.into_inner());
                meters.entry(host.clone()).or_default().load(&sample, std::time::Instant::now())
            });
            if let Err(e) = &load {
                tracing::debug!(host, "load: {e}");
            }
            let _ = inputs.blocking_send(Input::LoadRead { host, load });
        });
    }

    /// On a blocking thread: mirroring takes as long as the disks take to copy. Progress is
    /// told at most every two seconds.
    fn copy_storage(&mut self, vm: &str, host: &str, dir: &str) {
        let (config, inputs) = (Arc::clone(&self.config), self.inputs.clone());
        let (vm, host, dir) = (vm.to_string(), host.to_string(), dir.to_string());
        self.runtime.spawn_blocking(move || {
            let (mut told, mut last) = (std::time::Instant::now(), 0);
            let result = Self::connect(&config, &host).and_then(|hv| {
                let progress = |percent: u32| {
                    if percent != last && percent < 100 && told.elapsed() >= std::time::Duration::from_secs(2) {
                        (told, last) = (std::time::Instant::now(), percent);
                        let _ = inputs.blocking_send(Input::StorageProgress { vm: vm.clone(), percent });
                    }
                };
                hv.mirror_disks(&vm, &dir, progress, STORAGE_COPY_DEADLINE).map_err(|e| e.to_string())
            });
            let _ = inputs.blocking_send(Input::StorageCopied { vm, result });
        });
    }

    fn finish_storage(&mut self, vm: &str, host: &str, pivot: bool) {
        let (config, inputs) = (Arc::clone(&self.config), self.inputs.clone());
        let (vm, host) = (vm.to_string(), host.to_string());
        self.runtime.spawn_blocking(move || {
            let result =
                Self::connect(&config, &host).and_then(|hv| hv.finish_mirrors(&vm, pivot).map_err(|e| e.to_string()));
            let _ = inputs.blocking_send(Input::StorageFinished { vm, pivot, result });
        });
    }

    fn migrate_vm(&mut self, vm: &str, from: &str, to: &str) {
        let (config, inputs) = (Arc::clone(&self.config), self.inputs.clone());
        let (vm, from, to) = (vm.to_string(), from.to_string(), to.to_string());
        self.runtime.spawn_blocking(move || {
            let result = (|| {
                let source = Self::connect(&config, &from)?;
                let target = Self::connect(&config, &to)?;
                let uri = config.migration_uris.get(&to).ok_or_else(|| format!("no migration URI for host {to}"))?;
                let shared: Vec<&str> = config.shared_storage.iter().map(String::as_str).collect();
                source
                    .migrate(&vm, &target, uri, MigrationKind::Live, &shared, config.migration_deadline)
                    .map(drop)
                    .map_err(|e| e.to_string())
            })();
            let _ = inputs.blocking_send(Input::MigrateResult { vm, from, to, result });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hold_mark_is_found_only_in_halos_namespace_under_metadata() {
        let marked = format!("<domain><metadata><h:hold xmlns:h=\"{HALO_HOLD_XMLNS}\"/></metadata></domain>");
        assert!(held_by_halo(&marked));
        let libvirt_style = format!("<domain><metadata><hold xmlns='{HALO_HOLD_XMLNS}'/></metadata></domain>");
        assert!(held_by_halo(&libvirt_style));
        for unmarked in [
            "<domain><metadata><hold/></metadata></domain>".to_string(),
            format!("<domain><devices><hold xmlns='{HALO_HOLD_XMLNS}'/></devices></domain>"),
            with_generation("<domain><name>db</name></domain>", 2),
            "not xml".to_string(),
        ] {
            assert!(!held_by_halo(&unmarked), "{unmarked}");
        }
    }

    #[test]
    fn the_generation_rides_in_the_domain_metadata() {
        let bare = "<domain type='kvm'><name>db</name></domain>";
        let three = with_generation(bare, 3);
        assert_eq!(generation_of(&three), Some(3));
        assert_eq!(generation_of(&with_generation(&three, 4)), Some(4));
        assert_eq!(with_generation(&three, 4).matches("<halo:vm").count(), 1);
        let other = "<domain><metadata><app:x xmlns:app='u'/></metadata></domain>";
        let tagged = with_generation(other, 9);
        assert!(tagged.contains("<app:x"));
        assert_eq!(generation_of(&tagged), Some(9));
        assert_eq!(generation_of(bare), None);
        // As libvirt gives it back (double quotes, other attribute order, another prefix).
        let back = format!("<domain><metadata><h:vm xmlns:h=\"{HALO_XMLNS}\" generation=\"12\"/></metadata></domain>");
        assert_eq!(generation_of(&back), Some(12));
        // Only halo's namespace counts, and only under <metadata>.
        assert_eq!(
            generation_of("<domain><metadata><halo:vm xmlns:halo='other' generation='5'/></metadata></domain>"),
            None
        );
        assert_eq!(generation_of("<domain><description>generation='7'</description></domain>"), None);
    }
}
