//! Storage protection (vSphere's VM component protection, oVirt's resume behaviour): what a
//! host does with its VMs when the storage under their disks is lost while the host itself
//! is fine — its networks up, its peers heard.
//!
//! A VM's storage is lost here when a datastore holding its disks (`vms.datastores`) is lost
//! on this host (a failed or hung heartbeat write there, `datastore-lost`), or when QEMU
//! paused it on an I/O error. The isolation policy's storage decision (contract 0.1.4) says
//! per VM what follows: *leave* it, *resume* it when the storage is back, or *restart* it
//! elsewhere after a grace time. Rules kept here, whatever the policy says:
//!
//! - storage back within the grace time: the VM is resumed (if QEMU paused it), never
//!   restarted;
//! - a restart happens only while another host heard lately reports that it reaches the
//!   datastore; when none does (the storage is gone for everyone) the VM waits here, and runs
//!   on when the storage returns;
//! - the grace time is never shorter than the dead-time: by then every peer that lost the
//!   same datastore has said so in its heartbeats (it declares a datastore lost within the
//!   fence timeout of its last write), so "reaches it" is not stale evidence;
//! - a restart is a power-off here first (`StopReason::Storage`); only once libvirt reports
//!   the VM stopped is it recorded for the master, which claims it and starts it on a host
//!   that reaches the datastore (placement requires the VM's datastores). QEMU's NFS client
//!   lives in user space, so a power-off succeeds even with requests stuck on the lost
//!   server. A VM never runs on two hosts.

use halo_policy::{StorageInput, StorageResponse, StorageSituation};

use super::{Action, EventKind, Node, Severity, StopReason};
use crate::Millis;
use crate::policies::Policies;

/// How often a VM paused on an I/O error is asked to resume while its storage looks fine
/// (a disk that fails again pauses it again).
const RESUME_RETRY_MS: Millis = 10_000;

/// One VM whose storage is lost here, and what the storage response decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Episode {
    /// The datastore lost (`None`: only an I/O error is known, on a disk outside halo's
    /// datastores).
    datastore: Option<String>,
    /// When it began.
    since: Millis,
    /// The policy's answer.
    response: StorageResponse,
    /// Powered off here to be restarted elsewhere.
    stopping: bool,
    /// The operator was told that the VM waits (once per reason).
    told_waiting: Option<String>,
    /// When a resume was last asked.
    resumed_at: Option<Millis>,
    /// Since when the storage looks fine again while the episode waits to see the VM stay
    /// running; lost again meanwhile is a new outage, timed from then.
    fine_since: Option<Millis>,
}

impl Node {
    /// The hosts other than this one, heard lately, not in maintenance, that have reported
    /// writing `datastore` for at least the fence timeout (for `None`, nobody: an unknown
    /// disk is not known to be reachable anywhere). The steadiness matters when storage lost
    /// everywhere returns: the peers' reports of it must not beat this host's own next write
    /// into a restart (the VM resumes here instead).
    pub(super) fn hosts_reaching(&self, datastore: Option<&str>) -> Vec<String> {
        let Some(datastore) = datastore else { return Vec::new() };
        let steady = self.config.timeouts.fence_timeout_ms;
        self.peers
            .iter()
            .filter(|(name, peer)| {
                self.heard_lately(name)
                    && !self.maintenance.contains(*name)
                    && peer.datastores_reachable > 0
                    && peer.reaching_since.get(datastore).is_some_and(|&at| self.now.saturating_sub(at) >= steady)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The datastores `host` writes, as this node knows (its own; a peer's from its last
    /// heartbeat): every configured one but those it reported lost.
    pub(super) fn datastores_of(&self, host: &str) -> Vec<String> {
        let lost: Vec<&String> = if host == self.name {
            self.ds_lost.iter().collect()
        } else {
            self.peers.get(host).map(|p| p.datastores_lost.iter().collect()).unwrap_or_default()
        };
        self.config.datastores.iter().filter(|d| !lost.contains(d)).cloned().collect()
    }

    /// A VM's storage state changed here (QEMU paused it on an I/O error, or it runs again).
    pub(super) fn note_io_paused(&mut self, vm: &str, paused: bool) {
        if paused {
            self.io_paused.insert(vm.to_string());
        } else {
            self.io_paused.remove(vm);
        }
    }

    /// Starts episodes for VMs that lost their storage, and carries each one on: resume when
    /// the storage is back, restart elsewhere after the grace time.
    pub(super) fn watch_vm_storage(&mut self, policies: &mut dyn Policies) {
        self.storage_lost.retain(|vm, _| self.local_vms.contains_key(vm));
        if self.fenced || self.isolated() {
            return; // the isolation response and fencing rule this host's VMs now
        }
        self.start_episodes(policies);
        let vms: Vec<String> = self.storage_lost.keys().cloned().collect();
        for vm in vms {
            self.carry_episode(&vm);
        }
    }

    fn start_episodes(&mut self, policies: &mut dyn Policies) {
        // Per datastore lost (or `None`: an I/O error elsewhere), the VMs it takes.
        let mut groups: std::collections::BTreeMap<Option<String>, Vec<String>> = Default::default();
        for vm in self.local_vms.keys() {
            if self.storage_lost.contains_key(vm) || self.stopping.contains(vm) {
                continue;
            }
            let Some(spec) = self.config.vm(vm) else { continue };
            let lost = spec.datastores.iter().find(|d| self.ds_lost.contains(*d)).cloned();
            if lost.is_some() || self.io_paused.contains(vm) {
                groups.entry(lost.or_else(|| spec.datastores.first().cloned())).or_default().push(vm.clone());
            }
        }
        for (datastore, vms) in groups {
            let lost_for_ms = datastore
                .as_ref()
                .and_then(|d| self.ds_write_ok_at.get(d))
                .map_or(0, |&at| self.now.saturating_sub(at));
            let input = StorageInput {
                situation: StorageSituation {
                    host: self.name.clone(),
                    datastore: datastore.clone().unwrap_or_default(),
                    lost_for_ms,
                    io_error: vms.iter().any(|vm| self.io_paused.contains(vm)),
                    hosts_reaching: self.hosts_reaching(datastore.as_deref()),
                },
                vms: vms.iter().filter_map(|vm| self.config.vm(vm)).map(crate::config::VmSpec::info).collect(),
                settings: self.config.policy.isolation.clone(),
            };
            let outcome = policies.storage(&input);
            if let Some(reason) = &outcome.fallback_reason {
                self.record(
                    Severity::Alert,
                    EventKind::PluginFailed,
                    format!("isolation plugin failed on a storage decision, built-in policy decided: {reason}"),
                    None,
                );
            }
            let mut told = Vec::new();
            for vm in &vms {
                // The validator saw every VM answered; a VM missing anyway waits (safe).
                let response =
                    outcome.answer.iter().find(|d| d.vm == *vm).map_or(StorageResponse::ResumeWhenBack, |d| d.response);
                told.push(format!("{vm}: {}", self.describe(response)));
                self.storage_lost.insert(
                    vm.clone(),
                    Episode {
                        datastore: datastore.clone(),
                        since: self.now,
                        response,
                        stopping: false,
                        told_waiting: None,
                        resumed_at: None,
                        fine_since: None,
                    },
                );
            }
            let what = match (&datastore, input.situation.io_error) {
                (Some(d), _) if self.ds_lost.contains(d) => format!("datastore {d} is lost here"),
                (_, true) => "QEMU paused on an I/O error".to_string(),
                _ => "storage lost".to_string(),
            };
            self.record(
                Severity::Alert,
                EventKind::VmStorageLost,
                format!(
                    "{}: the storage under {} VM(s) is lost ({what}; reached by {}); storage response: {}",
                    self.name,
                    vms.len(),
                    if input.situation.hosts_reaching.is_empty() {
                        "no other host".to_string()
                    } else {
                        input.situation.hosts_reaching.join(", ")
                    },
                    told.join("; ")
                ),
                None,
            );
        }
    }

    fn describe(&self, response: StorageResponse) -> String {
        match response {
            StorageResponse::Leave => "leave it as it is".to_string(),
            StorageResponse::ResumeWhenBack => "wait, resume when the storage is back".to_string(),
            StorageResponse::Restart(secs) => {
                format!("wait {} s, then restart it where the storage is reachable", self.grace_ms(secs).div_ceil(1000))
            }
        }
    }

    /// A grace time as the core applies it: never shorter than the dead-time.
    fn grace_ms(&self, secs: u32) -> Millis {
        (Millis::from(secs) * 1000).max(self.config.timeouts.dead_time_ms)
    }

    fn carry_episode(&mut self, vm: &str) {
        let Some(episode) = self.storage_lost.get(vm).cloned() else { return };
        let datastore_back = episode.datastore.as_ref().is_none_or(|d| !self.ds_lost.contains(d));
        let paused = self.io_paused.contains(vm);
        let lost_for = self.now.saturating_sub(episode.since);
        if episode.stopping {
            return; // powered off for a restart elsewhere: the stop ends it
        }
        if datastore_back && !paused {
            // Resumed a moment ago: it must stay running for a retry interval before the
            // episode ends (a disk that still fails pauses it again at once: the same episode,
            // not a new alert every retry).
            if episode.resumed_at.is_some_and(|at| self.now.saturating_sub(at) < RESUME_RETRY_MS) {
                if let Some(e) = self.storage_lost.get_mut(vm) {
                    e.fine_since.get_or_insert(self.now);
                }
                return;
            }
            self.storage_lost.remove(vm);
            self.record(
                Severity::Info,
                EventKind::VmStorageRegained,
                format!(
                    "{vm}: its storage is back on {} after {:.1} s; it runs on here, nothing restarted",
                    self.name,
                    lost_for as f64 / 1000.0
                ),
                None,
            );
            return;
        }
        if episode.fine_since.is_some() && datastore_back {
            // Paused again right after a resume: the disk still fails; the same episode.
            if let Some(e) = self.storage_lost.get_mut(vm) {
                e.fine_since = None;
            }
        } else if episode.fine_since.is_some() {
            // The datastore looked fine and is lost again: a new outage, its grace time from now.
            if let Some(e) = self.storage_lost.get_mut(vm) {
                e.fine_since = None;
                e.since = self.now;
                e.told_waiting = None;
            }
            self.record(
                Severity::Alert,
                EventKind::VmStorageLost,
                format!("{vm}: its storage is lost again on {} right after it came back; a new grace time", self.name),
                None,
            );
            return;
        }
        if datastore_back && paused && episode.response != StorageResponse::Leave {
            let due = episode.resumed_at.is_none_or(|at| self.now.saturating_sub(at) >= RESUME_RETRY_MS);
            if due {
                if let Some(e) = self.storage_lost.get_mut(vm) {
                    e.resumed_at = Some(self.now);
                }
                self.record(
                    Severity::Info,
                    EventKind::VmStorageRegained,
                    format!(
                        "{vm}: its storage is back on {} after {:.1} s; resuming it (paused on an I/O error)",
                        self.name,
                        lost_for as f64 / 1000.0
                    ),
                    None,
                );
                self.out.push(Action::ResumeVm { vm: vm.to_string() });
            }
            // A disk that still fails pauses it again; within the grace time it is tried
            // again, after it a restart is considered below.
            if !matches!(episode.response, StorageResponse::Restart(_)) {
                return;
            }
        }
        let StorageResponse::Restart(secs) = episode.response else { return };
        if lost_for < self.grace_ms(secs) {
            return;
        }
        let reaching = self.hosts_reaching(episode.datastore.as_deref());
        let protected = self.config.vm(vm).is_some_and(|s| s.protected());
        let why_not = if !self.ha_enabled || self.ha_disabled_here {
            Some("HA is off".to_string())
        } else if !protected {
            Some("it is not protected".to_string())
        } else if reaching.is_empty() {
            Some(match &episode.datastore {
                Some(d) => format!("no other host reaches datastore {d}"),
                None => "its failing disk is on no datastore halo watches".to_string(),
            })
        } else {
            None
        };
        match why_not {
            Some(why) => {
                if episode.told_waiting.as_deref() != Some(why.as_str()) {
                    if let Some(e) = self.storage_lost.get_mut(vm) {
                        e.told_waiting = Some(why.clone());
                    }
                    self.record(
                        Severity::Alert,
                        EventKind::VmStorageWaiting,
                        format!(
                            "{vm}: storage lost on {} for {:.0} s, past its grace time, but {why}: not restarted; it waits here for the storage",
                            self.name,
                            lost_for as f64 / 1000.0
                        ),
                        None,
                    );
                }
            }
            None => {
                if let Some(e) = self.storage_lost.get_mut(vm) {
                    e.stopping = true;
                }
                self.record(
                    Severity::Warning,
                    EventKind::VmStorageRestart,
                    format!(
                        "{vm}: storage lost on {} for {:.0} s (grace time over); powering it off here to restart it where the storage is reachable ({})",
                        self.name,
                        lost_for as f64 / 1000.0,
                        reaching.join(", ")
                    ),
                    None,
                );
                self.out.push(Action::StopVm { vm: vm.to_string(), reason: StopReason::Storage, grace_secs: 0 });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::beat;
    use super::super::{Action, Input, VmState};
    use super::*;
    use crate::config::tests::cluster;
    use crate::policies::BuiltinPolicies;

    /// host-1 with vm-1 on datastore ds1, grace 20 s; peers host-2 and host-3.
    fn node() -> Node {
        node_with(vec![halo_policy::Setting::new("storage-grace-seconds", "20")])
    }

    fn node_with(settings: Vec<halo_policy::Setting>) -> Node {
        let mut config = cluster(3, 2);
        config.vms[0].datastores = vec!["ds1".into()];
        config.policy.isolation = settings;
        let mut node = Node::new("host-1", config, 0);
        node.handle(
            0,
            Input::VmState { vm: "vm-1".into(), generation: 1, state: VmState::Running },
            &mut BuiltinPolicies,
        );
        node
    }

    /// One 500 ms step: both peers heard (reporting `peers_lost` as their lost datastores),
    /// this host's write of ds1 `ok`.
    fn step(node: &mut Node, now: Millis, ok: bool, peers_lost: &[&str]) -> Vec<Action> {
        let mut out = Vec::new();
        for peer in ["host-2", "host-3"] {
            let mut input = beat(peer, now / 500, &[("host-1", now / 500)]);
            if let Input::Heartbeat { heartbeat, .. } = &mut input {
                std::sync::Arc::make_mut(heartbeat).datastores_lost =
                    peers_lost.iter().map(|d| d.to_string()).collect();
            }
            out.extend(node.handle(now, input, &mut BuiltinPolicies));
        }
        out.extend(node.handle(now, Input::DatastoreWritten { datastore: "ds1".into(), ok }, &mut BuiltinPolicies));
        out
    }

    fn kinds(actions: &[Action]) -> Vec<EventKind> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Record(e) if e.kind.as_str().starts_with("vm-storage") => Some(e.kind),
                _ => None,
            })
            .collect()
    }

    fn stops(actions: &[Action]) -> Vec<&Action> {
        actions.iter().filter(|a| matches!(a, Action::StopVm { .. })).collect()
    }

    #[test]
    fn storage_back_within_the_grace_time_restarts_nothing() {
        let mut node = node();
        let mut seen = Vec::new();
        let mut now = 0;
        while now < 30_000 {
            now += 500;
            seen.extend(step(&mut node, now, true, &[]));
        }
        assert!(kinds(&seen).is_empty(), "nothing lost yet: {seen:?}");
        // Lost for 15 s (shorter than the grace time), then back.
        while now < 45_000 {
            now += 500;
            seen.extend(step(&mut node, now, false, &[]));
        }
        while now < 90_000 {
            now += 500;
            seen.extend(step(&mut node, now, true, &[]));
        }
        assert_eq!(kinds(&seen), [EventKind::VmStorageLost, EventKind::VmStorageRegained]);
        assert!(stops(&seen).is_empty(), "{seen:?}");
        let lost = seen.iter().find_map(|a| match a {
            Action::Record(e) if e.kind == EventKind::VmStorageLost => Some(e.clone()),
            _ => None,
        });
        let lost = lost.expect("an alert");
        assert_eq!(lost.severity, Severity::Alert);
        assert!(lost.message.contains("host-2, host-3") && lost.message.contains("restart"), "{}", lost.message);
    }

    #[test]
    fn storage_lost_past_the_grace_time_powers_off_here_for_a_restart_where_it_is_reached() {
        let mut node = node();
        let grace = (20_000).max(node.config().timeouts.dead_time_ms);
        let mut now = 0;
        while now < 5_000 {
            now += 500;
            step(&mut node, now, true, &[]);
        }
        let (lost_at, mut seen) = (now + 500, Vec::new());
        while now < lost_at + grace + 2_000 {
            now += 500;
            let out = step(&mut node, now, false, &["ds1"][..0]);
            if !stops(&out).is_empty() {
                assert!(now - lost_at >= grace, "stopped {} ms after the loss", now - lost_at);
            }
            seen.extend(out);
        }
        assert_eq!(stops(&seen), [&Action::StopVm { vm: "vm-1".into(), reason: StopReason::Storage, grace_secs: 0 }]);
        assert_eq!(kinds(&seen), [EventKind::VmStorageLost, EventKind::VmStorageRestart]);
        // Stopped: recorded for the master to restart (in the next heartbeat's `stopped`).
        let out = node.handle(
            now,
            Input::VmState { vm: "vm-1".into(), generation: 1, state: VmState::StoppedByHalo(StopReason::Storage) },
            &mut BuiltinPolicies,
        );
        assert!(out.is_empty() || !stops(&out).iter().any(|_| true));
        let out = super::super::tests::tick_until(
            &mut node,
            now,
            now + 2_000,
            |a| matches!(a, Action::SendHeartbeat { heartbeat, .. } if heartbeat.stopped.iter().any(|r| r.vm == "vm-1")),
        );
        assert!(out.is_some(), "vm-1 reported stopped for a restart");
        // And this host says it lost ds1: no placement puts a ds1 VM here.
        assert_eq!(node.datastores_of("host-1"), Vec::<String>::new());
    }

    #[test]
    fn storage_lost_everywhere_restarts_nothing_and_the_vm_waits() {
        let mut node = node();
        let mut now = 0;
        while now < 5_000 {
            now += 500;
            step(&mut node, now, true, &[]);
        }
        let mut seen = Vec::new();
        while now < 120_000 {
            now += 500;
            seen.extend(step(&mut node, now, false, &["ds1"]));
        }
        assert!(stops(&seen).is_empty(), "{seen:?}");
        assert_eq!(kinds(&seen), [EventKind::VmStorageLost, EventKind::VmStorageWaiting], "told once");
        while now < 125_000 {
            now += 500;
            seen.extend(step(&mut node, now, true, &[]));
        }
        assert_eq!(kinds(&seen).last(), Some(&EventKind::VmStorageRegained));
        assert!(stops(&seen).is_empty());
    }

    #[test]
    fn a_vm_paused_on_an_io_error_is_resumed_when_its_storage_is_fine() {
        // `resume`: tried again and again, never restarted (with `restart` it would be, after
        // its grace time, where the datastore is reached).
        let mut node = node_with(vec![halo_policy::Setting::new("storage-restart", "resume")]);
        let mut now = 0;
        while now < 5_000 {
            now += 500;
            step(&mut node, now, true, &[]);
        }
        let out = node.handle(
            now,
            Input::VmState { vm: "vm-1".into(), generation: 1, state: VmState::PausedOnIoError },
            &mut BuiltinPolicies,
        );
        assert_eq!(kinds(&out), [EventKind::VmStorageLost, EventKind::VmStorageRegained]);
        assert!(out.contains(&Action::ResumeVm { vm: "vm-1".into() }), "{out:?}");
        assert!(node.local_vms().contains_key("vm-1"), "a paused VM is still here");
        // Paused again at once: not asked again within the retry interval.
        let out = step(&mut node, now + 500, true, &[]);
        assert!(!out.contains(&Action::ResumeVm { vm: "vm-1".into() }));
        let mut again = None;
        let mut t = now + 500;
        while t < now + 12_000 && again.is_none() {
            t += 500;
            if step(&mut node, t, true, &[]).contains(&Action::ResumeVm { vm: "vm-1".into() }) {
                again = Some(t);
            }
        }
        let again = again.expect("asked again after the retry interval");
        assert!(again - now >= RESUME_RETRY_MS, "asked again after {} ms", again - now);
        // Running again, then paused again at once (the disk still fails): the same episode,
        // no new alert.
        let running = |node: &mut Node, at: Millis, state: VmState| {
            node.handle(at, Input::VmState { vm: "vm-1".into(), generation: 1, state }, &mut BuiltinPolicies)
        };
        assert!(kinds(&running(&mut node, again + 200, VmState::Running)).is_empty(), "not over yet");
        assert!(kinds(&running(&mut node, again + 400, VmState::PausedOnIoError)).is_empty(), "no second alert");
        // Resumed once more, and it stays running for a retry interval: the episode ends.
        let ended = |actions: &[Action]| {
            actions.iter().any(|a| {
                matches!(a, Action::Record(e) if e.kind == EventKind::VmStorageRegained && e.message.contains("nothing restarted"))
            })
        };
        let (mut t, mut resumed_at, mut ended_at) = (again + 400, None, None);
        while t < again + 40_000 && ended_at.is_none() {
            t += 500;
            let out = step(&mut node, t, true, &[]);
            if out.contains(&Action::ResumeVm { vm: "vm-1".into() }) {
                resumed_at = Some(t);
                running(&mut node, t + 100, VmState::Running);
            } else if ended(&out) {
                ended_at = Some(t);
            }
        }
        let (resumed_at, ended_at) = (resumed_at.expect("resumed again"), ended_at.expect("the episode ended"));
        assert!(ended_at - resumed_at >= RESUME_RETRY_MS, "ended {} ms after the resume", ended_at - resumed_at);
    }

    #[test]
    fn storage_lost_again_right_after_it_came_back_gets_a_whole_grace_time() {
        let mut node = node();
        let mut now = 0;
        while now < 30_000 {
            now += 500;
            step(&mut node, now, true, &[]);
        }
        // Paused on an I/O error, resumed at once, running again.
        node.handle(
            now,
            Input::VmState { vm: "vm-1".into(), generation: 1, state: VmState::PausedOnIoError },
            &mut BuiltinPolicies,
        );
        node.handle(
            now + 100,
            Input::VmState { vm: "vm-1".into(), generation: 1, state: VmState::Running },
            &mut BuiltinPolicies,
        );
        let resumed = now;
        while now < resumed + 5_000 {
            now += 500;
            step(&mut node, now, true, &[]);
        }
        let grace = 20_000u64.max(node.config().timeouts.dead_time_ms);
        // 5 s after the resume (the episode still watching the VM run), the datastore is
        // lost: a new outage, not the rest of the old one's grace.
        let mut seen = Vec::new();
        let lost_at = now;
        while now < lost_at + grace + 3_000 {
            now += 500;
            let out = step(&mut node, now, false, &[]);
            if !stops(&out).is_empty() {
                assert!(now - lost_at >= grace, "restarted {} ms into the new outage", now - lost_at);
            }
            seen.extend(out);
        }
        assert!(
            seen.iter().any(|a| matches!(a, Action::Record(e) if e.kind == EventKind::VmStorageLost && e.message.contains("lost again"))),
            "{seen:?}"
        );
        assert_eq!(stops(&seen).len(), 1, "restarted once the new grace time ran out");
    }
}
