//! Power fencing (issue 17): a second, positive proof that a host is dead — its BMC or PDU
//! says it is **off** — so its VMs restart without waiting out the dead-time.
//!
//! - **Who and when.** Only a master that may restart at all (not isolated or fenced itself,
//!   its partition at least half the hosts) fences, never more hosts at once than the
//!   blast-radius limit allows, and only a host with fence devices (`HostSpec::fenceable`)
//!   that has been silent on every network **and** every datastore for the detection time
//!   (`Timeouts::fence_after_ms`: the detection time, 1 s, less a heartbeat interval) and does not answer ping (pinged early, so the answer
//!   is in by then). A host alive on storage is in another partition, and one that answers ping
//!   has a stopped or hung agent (its VMs may run): neither is fenced (as without fencing, their
//!   VMs are not restarted; a hung host's watchdog resets it).
//! - **The proof.** Once a device confirms the host is off (`Input::FenceResult`), the host
//!   counts as failed — its VMs are claimed and restarted at once — if the datastores agree:
//!   read since the fence was asked for, its counter has not advanced since. A counter that
//!   advances after "off" means the device lied (or powered off something else): an alert,
//!   and the host is judged by the dead-time path as before. A fence that fails or is not
//!   confirmed falls back to the dead-time path too, with an alert.
//! - **A device that lies about a host cut off from everything** cannot be caught by the
//!   datastores (the host cannot write). Such a host has paused its protected VMs by then: a
//!   fenceable host that reaches no quorum and no datastore for the detection time less a
//!   heartbeat interval holds them (libvirt suspend, as after a stall), so the copy the master
//!   starts never runs beside a running one; at the fence timeout it fences itself as before,
//!   and if contact comes back first each held VM runs again once no newer claim exists.

use super::{Action, EventKind, Node, Severity, Verdict};
use crate::Millis;
use crate::classify::PingSignal;

/// What a host's fence devices answered to `status`, in order: each device's name and the
/// power state it reported (`on`/`off`), or why it failed.
pub type DeviceAnswers = Vec<(String, Result<String, String>)>;

/// Where a master is with fencing a peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) enum Fence {
    /// Not fenced.
    #[default]
    None,
    /// Asked the devices to power it off.
    Asked {
        /// When.
        at: Millis,
        /// By the operator (`halo host fence`): not called off when the host is heard.
        by_operator: bool,
    },
    /// A device confirmed it is off.
    Confirmed {
        /// When it was asked.
        asked: Millis,
        /// Which device.
        device: String,
    },
    /// Not fenced (failed, unconfirmed, contradicted by the datastores): judged by the
    /// dead-time until it is heard again.
    GaveUp,
}

impl Node {
    /// The master: fences every fenceable peer silent on every network and datastore for the
    /// detection time, within the limits.
    pub(super) fn watch_fence_triggers(&mut self) {
        let t = self.config.timeouts;
        let hosts = self.config.hosts.len();
        if !self.may_fence() {
            return;
        }
        let busy = self
            .peers
            .values()
            .filter(|p| {
                p.verdict == Some(Verdict::Failed) || matches!(p.fence, Fence::Asked { .. } | Fence::Confirmed { .. })
            })
            .count();
        let mut allowed = (self.config.ha.blast_radius_percent as usize * hosts / 100).saturating_sub(busy);
        let candidates: Vec<String> = self
            .peers
            .iter()
            // Its kernel does not answer ping either: a host whose agent is stopped or hung
            // (its VMs may run) is never fenced on the fast path — a device that wrongly says
            // "off" must not restart VMs that run.
            .filter(|(name, p)| {
                p.fence == Fence::None
                    && p.ping == PingSignal::NoAnswer
                    && self.config.host(name).is_some_and(|h| h.fenceable)
            })
            .filter(|(name, _)| {
                self.signals(name).is_some_and(|s| {
                    // (A counter is seen to advance up to a read interval after it was
                    // written: its silence is counted from then.)
                    // Silent on both together: one alive in another partition whose datastore
                    // writes stopped later (its agent stalled) is left to the dead-time
                    // (simulator seed 417).
                    s.datastores_readable
                        && s.silent_for(t.fence_after_ms())
                        && s.datastore_silent_for(t.fence_after_ms().saturating_sub(t.datastore_interval_ms))
                        && s.silent_together(2 * t.datastore_interval_ms + t.heartbeat_interval_ms)
                })
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in candidates {
            if allowed == 0 {
                if self.fence_limit_told.insert(name.clone()) {
                    self.record(
                        Severity::Alert,
                        EventKind::FenceFailed,
                        format!(
                            "{name}: not fenced — more hosts are silent at once than the blast-radius limit of {}% allows; judged by the dead-time",
                            self.config.ha.blast_radius_percent
                        ),
                        None,
                    );
                }
                continue;
            }
            allowed -= 1;
            if let Some(peer) = self.peers.get_mut(&name) {
                peer.fence = Fence::Asked { at: self.now, by_operator: false };
            }
            let trace = self.signals(&name).map(|s| s.trace());
            self.record(
                Severity::Warning,
                EventKind::FenceRequested,
                format!(
                    "{name}: silent on every network and datastore for {:.2}s: powering it off through its fence devices",
                    t.fence_after_ms() as f64 / 1000.0
                ),
                trace,
            );
            self.out.push(Action::FenceHost { host: name });
        }
    }

    /// The master asks every other host's fence devices for its power state every monitor
    /// interval.
    pub(super) fn monitor_fences(&mut self) {
        if self.master.is_none() || self.now < self.fence_monitor_due {
            return;
        }
        self.fence_monitor_due = self.now + self.config.timeouts.fence_monitor_interval_ms;
        let hosts: Vec<String> =
            self.config.hosts.iter().filter(|h| h.fenceable && h.name != self.name).map(|h| h.name.clone()).collect();
        for host in hosts {
            self.out.push(Action::MonitorFence { host });
        }
    }

    /// A host's devices answered `status`: an alert for each that fails now and did not
    /// before (fencing that host would fail: better known before it is needed); a note for
    /// each that answers again.
    pub(super) fn on_fence_monitored(&mut self, host: &str, devices: DeviceAnswers) {
        let before = self.fence_health.get(host).cloned().unwrap_or_default();
        let failed_before = |device: &str| before.iter().any(|(d, r)| d == device && r.is_err());
        let mut events = Vec::new();
        for (device, result) in &devices {
            match result {
                Err(why) if !failed_before(device) => events.push((
                    Severity::Alert,
                    EventKind::FenceDeviceFailed,
                    format!("{host}: fence device {device} does not answer its status ({why}): fencing {host} would fail; fix it before it is needed"),
                )),
                Ok(power) if failed_before(device) => events.push((
                    Severity::Info,
                    EventKind::FenceDeviceOk,
                    format!("{host}: fence device {device} answers again (power {power})"),
                )),
                _ => {}
            }
        }
        self.fence_health.insert(host.to_string(), devices);
        for (severity, kind, message) in events {
            self.record(severity, kind, message, None);
        }
    }

    /// Whether this master may fence: not isolated or fenced itself, and its partition — the
    /// peers whose verdict is still "running", which at the detection time includes those just
    /// fallen silent — at least half the hosts. (What keeps a master cut off from the others
    /// from fencing them is the datastore: it sees them alive there.)
    fn may_fence(&self) -> bool {
        if self.master.is_none() || !self.ha_enabled || self.isolated() || self.fenced {
            return false;
        }
        let accounted = 1 + self.peers.values().filter(|p| p.verdict == Some(Verdict::Running)).count();
        2 * accounted >= self.config.hosts.len()
    }

    /// A fence finished: `Ok(device)` confirmed off, `Err(why)` not. Its record goes to every
    /// datastore.
    pub(super) fn on_fence_result(&mut self, host: &str, result: Result<String, String>) {
        let now = self.now;
        let epoch = self.master.as_ref().map_or(0, |m| m.epoch);
        let Some(peer) = self.peers.get_mut(host) else { return };
        let Fence::Asked { at: asked, by_operator } = peer.fence else { return };
        let record = crate::wire::FenceRecord {
            host: host.to_string(),
            master: self.name.clone(),
            epoch,
            by_operator,
            device: result.as_ref().ok().cloned(),
            outcome: match &result {
                Ok(_) => "off".to_string(),
                Err(why) => why.clone(),
            },
            took_ms: now.saturating_sub(asked),
        };
        self.out.push(Action::RecordFence { record });
        let Some(peer) = self.peers.get_mut(host) else { return };
        match result {
            Ok(device) => {
                peer.fence = Fence::Confirmed { asked, device: device.clone() };
                // What the status shows of the device is its answer now, not the last monitor's.
                if let Some(answers) = self.fence_health.get_mut(host) {
                    for (_, answer) in answers.iter_mut().filter(|(name, _)| *name == device) {
                        *answer = Ok("off".to_string());
                    }
                }
                self.record(
                    Severity::Alert,
                    EventKind::HostFencedOff,
                    format!(
                        "{host}: powered off — {device} confirms it is off ({:.2}s); its VMs are restarted once the datastores agree",
                        now.saturating_sub(asked) as f64 / 1000.0
                    ),
                    None,
                );
            }
            Err(why) => {
                peer.fence = Fence::GaveUp;
                self.record(
                    Severity::Alert,
                    EventKind::FenceFailed,
                    format!("{host}: fencing failed ({why}); judged by the dead-time instead (no ping answer, silent on every datastore)"),
                    None,
                );
            }
        }
    }

    /// The verdict on a peer a device confirmed off: failed once a datastore read since the
    /// fence was asked shows its counter still; contradicted (the device lied) when the counter
    /// advanced since.
    pub(super) fn fenced_verdict(&mut self, name: &str) -> Option<Verdict> {
        let peer = self.peers.get(name)?;
        let Fence::Confirmed { asked, device } = peer.fence.clone() else { return None };
        let signals = self.signals(name)?;
        // Not before its watchdog would have reset it: a device may say "off" wrongly, and a
        // host whose agent died (or hangs) holds nothing — its VMs run until the watchdog
        // fires, at most the fence timeout after the last feed, which came at most an interval
        // after its last heartbeat (simulator seed 1985: frozen a second, its agent crashed
        // meanwhile, a lying device, and its VMs restarted while they still ran).
        let t = self.config.timeouts;
        let watchdog = t.fence_timeout_ms + t.heartbeat_interval_ms;
        if !signals.silent_for(t.detection_time_ms.max(watchdog)) {
            return None;
        }
        let advanced_since = signals.datastores.iter().any(|d| d.advanced_at.is_some_and(|at| at > asked));
        if advanced_since {
            if let Some(peer) = self.peers.get_mut(name) {
                peer.fence = Fence::GaveUp;
            }
            self.record(
                Severity::Alert,
                EventKind::FenceContradicted,
                format!(
                    "{name}: {device} said it is off, but it still writes its datastore heartbeat: not restarted on the device's word; check the device (it may power off another machine)"
                ),
                Some(signals.trace()),
            );
            return None;
        }
        let read_since = self.ds_read_ok_at.is_some_and(|at| at > asked);
        read_since.then_some(Verdict::Failed)
    }

    /// A peer heard again: whatever fencing said of it is over.
    /// A fence still under way is called off: a device that answers late (a BMC unreachable
    /// until now) must not power off a host that came back.
    pub(super) fn fence_heard(&mut self, name: &str) {
        let Some(peer) = self.peers.get_mut(name) else { return };
        if matches!(peer.fence, Fence::None | Fence::Asked { by_operator: true, .. }) {
            return;
        }
        let asked = matches!(peer.fence, Fence::Asked { .. });
        peer.fence = Fence::None;
        self.fence_limit_told.remove(name);
        if asked {
            self.record(
                Severity::Warning,
                EventKind::FenceCancelled,
                format!("{name}: heard again while being fenced: the fence is called off"),
                None,
            );
            self.out.push(Action::CancelFence { host: name.to_string() });
        }
    }

    /// The operator's `halo host fence HOST [--force]` (the master): the host must have fence
    /// devices, must not be this master, and unless `force` must be silent for the detection
    /// time (a running host is not powered off by mistake).
    pub(super) fn fence_on_request(&mut self, host: &str, force: bool) {
        let refuse = |node: &mut Self, why: String| {
            node.record(Severity::Warning, EventKind::CommandRefused, format!("fence {host}: {why}"), None)
        };
        if self.master.is_none() {
            let master = self.master_view.as_ref().map_or("nobody yet".to_string(), |(m, _)| m.clone());
            return refuse(self, format!("ask the master ({master})"));
        }
        if host == self.name {
            return refuse(self, "this is the master: ask it from another host once a new master is elected".into());
        }
        if !self.config.host(host).is_some_and(|h| h.fenceable) {
            return refuse(self, format!("{host} has no fence device in the configuration"));
        }
        let Some(peer) = self.peers.get(host) else { return refuse(self, format!("no host named {host}")) };
        if matches!(peer.fence, Fence::Asked { .. }) {
            return refuse(self, "a fence of it is under way".into());
        }
        let heard = self.signals(host).is_some_and(|s| !s.silent_for(self.config.timeouts.detection_time_ms));
        if heard && !force {
            return refuse(
                self,
                format!("{host} is heard (it runs): its VMs would stop; add --force to power it off all the same"),
            );
        }
        if let Some(peer) = self.peers.get_mut(host) {
            peer.fence = Fence::Asked { at: self.now, by_operator: true };
        }
        self.record(
            Severity::Alert,
            EventKind::FenceRequested,
            format!(
                "{host}: powered off through its fence devices at the operator's request{}",
                if heard { " (forced: it was heard)" } else { "" }
            ),
            None,
        );
        self.out.push(Action::FenceHost { host: host.to_string() });
    }

    /// This host (fenceable, HA on): cut off from every quorum and datastore for the detection
    /// time less a heartbeat interval, it holds its protected VMs — a device that wrongly says
    /// it is off must not let the master's copy run beside them.
    pub(super) fn hold_when_cut_off(&mut self, reached_quorum: bool, datastore_ok: bool) {
        if reached_quorum || datastore_ok || self.fenced || !self.config.host(&self.name).is_some_and(|h| h.fenceable) {
            return;
        }
        let t = self.config.timeouts;
        let to_hold = self.unheld_protected_vms();
        let why = format!(
            "cut off from every peer and datastore for {:.2}s, the master may fence this host and restart them",
            t.fence_after_ms() as f64 / 1000.0
        );
        self.hold_with_alert(to_hold, &why);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::beat_with;
    use super::super::{Input, PingTarget};
    use super::*;
    use crate::config::tests::cluster;
    use crate::policies::BuiltinPolicies;
    use crate::wire::{ClaimOutcome, DatastoreRecord, VmReport};

    /// host-1 (master) hears host-2 (running vm-1, fenceable) and host-3 until 5 s (conservative
    /// timeouts: a heartbeat and a datastore read a second, detection 4 s, dead-time 12 s). After
    /// that host-2's datastore counter advances when `ds(now)`; a fence is answered by `fence`
    /// at once. Returns every action with its time until `until`.
    fn crash(
        until: u64,
        fenceable: bool,
        ds: impl Fn(u64) -> bool,
        fence: impl Fn() -> Result<String, String>,
    ) -> Vec<(u64, Action)> {
        crash_answering(until, fenceable, ds, fence, |_| false)
    }

    /// [`crash`], host-2 answering a ping sent at `now` when `answers(now)`.
    fn crash_answering(
        until: u64,
        fenceable: bool,
        ds: impl Fn(u64) -> bool,
        fence: impl Fn() -> Result<String, String>,
        answers: impl Fn(u64) -> bool,
    ) -> Vec<(u64, Action)> {
        let mut config = cluster(3, 2);
        config.hosts[1].fenceable = fenceable;
        let mut node = Node::new("host-1", config, 0);
        let mut p = BuiltinPolicies;
        let (cut, mut counter, mut all) = (5_000, 0, Vec::new());
        for now in (0..until).step_by(100) {
            let mut inputs = vec![Input::Tick];
            if now % 1000 == 0 {
                let seq = now / 1000 + 1;
                inputs.push(beat_with("host-3", seq, &[("host-1", seq)], vec![]));
                if now < cut {
                    inputs.push(beat_with(
                        "host-2",
                        seq,
                        &[("host-1", seq)],
                        vec![VmReport { vm: "vm-1".into(), generation: 1 }],
                    ));
                }
                inputs.push(Input::DatastoreWritten { datastore: "ds1".into(), ok: true });
                if now < cut || ds(now) {
                    counter += 1;
                }
                let records = vec![
                    DatastoreRecord { host: "host-2".into(), counter, isolated: false, stopped: vec![] },
                    DatastoreRecord { host: "host-3".into(), counter: now, isolated: false, stopped: vec![] },
                ];
                inputs.push(Input::DatastoreRead { datastore: "ds1".into(), records: Ok(records) });
            }
            let mut queue: std::collections::VecDeque<Input> = inputs.into();
            let mut handled = 0;
            while let Some(input) = queue.pop_front() {
                handled += 1;
                assert!(handled < 1_000, "a loop at {now}: {:?}", &all[all.len().saturating_sub(8)..]);
                for action in node.handle(now, input, &mut p) {
                    match &action {
                        Action::Ping { target: PingTarget::Host(h) } => {
                            let answered = answers(now);
                            queue.push_back(Input::PingResult { target: PingTarget::Host(h.clone()), answered });
                        }
                        Action::Claim { claim, .. } => {
                            queue.push_back(Input::ClaimResult { claim: claim.clone(), outcome: ClaimOutcome::Won });
                        }
                        Action::FenceHost { host } => {
                            queue.push_back(Input::FenceResult { host: host.clone(), result: fence() });
                        }
                        _ => {}
                    }
                    all.push((now, action));
                }
            }
        }
        all
    }

    fn first(all: &[(u64, Action)], what: impl Fn(&Action) -> bool) -> Option<u64> {
        all.iter().find(|(_, a)| what(a)).map(|(at, _)| *at)
    }

    fn kinds(all: &[(u64, Action)]) -> Vec<EventKind> {
        all.iter()
            .filter_map(|(_, a)| match a {
                Action::Record(e) => Some(e.kind),
                _ => None,
            })
            .collect()
    }

    fn claimed(a: &Action) -> bool {
        matches!(a, Action::Claim { claim, .. } if claim.vm == "vm-1")
    }

    #[test]
    fn a_confirmed_fence_restarts_at_once_instead_of_after_the_dead_time() {
        let t = cluster(3, 2).timeouts;
        let fenced = crash(30_000, true, |_| false, || Ok("fence_redfish 10.0.0.9".into()));
        let asked = first(&fenced, |a| matches!(a, Action::FenceHost { host } if host == "host-2")).expect("fenced");
        // Last heard at 4 s: silent on the network for the detection time (and the datastore
        // for it less a read interval).
        assert_eq!(asked, 4_000 + t.fence_after_ms(), "{fenced:?}");
        let restart = first(&fenced, claimed).expect("restarted");
        // Not before its watchdog would have reset it (the fence timeout after its last feed,
        // an interval after its last heartbeat): a device may say "off" wrongly.
        let watchdog = 4_000 + t.fence_timeout_ms + t.heartbeat_interval_ms;
        assert!(restart >= watchdog, "claimed before the watchdog bound: {restart}");
        assert!(restart <= watchdog.max(asked) + 1_000, "claimed at the next datastore read after both: {restart}");
        assert!(restart < 4_000 + t.dead_time_ms, "before the dead-time: {restart}");
        assert!(kinds(&fenced).contains(&EventKind::HostFencedOff), "{:?}", kinds(&fenced));
        let record = fenced.iter().find_map(|(_, a)| match a {
            Action::RecordFence { record } => Some(record.clone()),
            _ => None,
        });
        let record = record.expect("a fence record for the datastores");
        assert_eq!(
            (record.host.as_str(), record.master.as_str(), record.outcome.as_str()),
            ("host-2", "host-1", "off")
        );
        assert_eq!(record.device.as_deref(), Some("fence_redfish 10.0.0.9"));
        // Without a device: the dead-time.
        let plain = crash(30_000, false, |_| false, || unreachable!("not fenceable"));
        let dead_time = first(&plain, claimed).expect("restarted");
        assert!(dead_time >= 4_000 + t.dead_time_ms, "{dead_time}");
        assert!(first(&plain, |a| matches!(a, Action::FenceHost { .. })).is_none());
        println!("restart claimed {restart} ms with a fence, {dead_time} ms without (crash at 4-5 s)");
    }

    #[test]
    fn a_host_whose_agent_died_just_before_it_is_fenced_once_its_ping_goes_unanswered() {
        // host-2's agent is silent from 5 s; its kernel answers pings until 7.5 s (it dies
        // then). The early ping (at 7 s) is answered; an answer is good for a ping timeout
        // only while the host stays silent, so it is asked again and the fence follows the
        // first unanswered ping — not the answer going stale after half the dead-time.
        let t = cluster(3, 2).timeouts;
        let dies = 7_500;
        let all = crash_answering(30_000, true, |_| false, || Ok("fence_redfish".into()), |now| now < dies);
        let asked = first(&all, |a| matches!(a, Action::FenceHost { host } if host == "host-2")).expect("fenced");
        assert!(asked > dies, "not while it answers: {asked}");
        assert!(asked <= dies + 2 * t.ping_timeout_ms, "fenced after one unanswered ping: {asked}");
        assert!(first(&all, claimed).is_some_and(|at| at < 4_000 + t.dead_time_ms), "before the dead-time");
        // An agent that stays down (the kernel answers on): never fenced, pinged on, and its
        // verdict does not flap.
        let down = crash_answering(30_000, true, |_| false, || Ok("fence_redfish".into()), |_| true);
        assert!(first(&down, |a| matches!(a, Action::FenceHost { .. })).is_none());
        let pings = down.iter().filter(|(_, a)| matches!(a, Action::Ping { .. })).count();
        assert!(pings >= 10, "asked again and again while silent: {pings}");
        let agent_down = kinds(&down).iter().filter(|k| **k == EventKind::HostAgentDown).count();
        assert_eq!(agent_down, 1, "{:?}", kinds(&down));
    }

    #[test]
    fn never_more_hosts_are_fenced_at_once_than_the_blast_radius_allows() {
        // Six hosts, three of them crash at once: the master's partition (3 of 6) may restart,
        // the blast radius (34 %) lets it fence two; the third is left to the dead-time.
        let mut config = cluster(6, 6);
        config.ha.blast_radius_percent = 34;
        for host in &mut config.hosts {
            host.fenceable = true;
        }
        let mut node = Node::new("host-1", config, 0);
        let mut p = BuiltinPolicies;
        let mut all = Vec::new();
        for now in (0..12_000).step_by(100) {
            let mut inputs = vec![Input::Tick];
            if now % 1000 == 0 {
                let seq = now / 1000 + 1;
                let alive: &[&str] = if now < 5_000 {
                    &["host-2", "host-3", "host-4", "host-5", "host-6"]
                } else {
                    &["host-2", "host-3"]
                };
                for peer in alive {
                    inputs.push(beat_with(peer, seq, &[("host-1", seq)], vec![]));
                }
                inputs.push(Input::DatastoreWritten { datastore: "ds1".into(), ok: true });
                let records = ["host-2", "host-3", "host-4", "host-5", "host-6"]
                    .map(|h| DatastoreRecord {
                        host: h.into(),
                        counter: if alive.contains(&h) { now } else { 4_000 },
                        isolated: false,
                        stopped: vec![],
                    })
                    .to_vec();
                inputs.push(Input::DatastoreRead { datastore: "ds1".into(), records: Ok(records) });
            }
            let mut queue: std::collections::VecDeque<Input> = inputs.into();
            while let Some(input) = queue.pop_front() {
                for action in node.handle(now, input, &mut p) {
                    if let Action::Ping { target } = &action {
                        queue.push_back(Input::PingResult { target: target.clone(), answered: false });
                    }
                    all.push((now, action));
                }
            }
        }
        let fenced: Vec<&str> = all
            .iter()
            .filter_map(|(_, a)| match a {
                Action::FenceHost { host } => Some(host.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(fenced.len(), 2, "{fenced:?}");
        let told = all.iter().any(|(_, a)| matches!(a, Action::Record(e) if e.kind == EventKind::FenceFailed && e.message.contains("blast-radius")));
        assert!(told, "{:?}", kinds(&all));
    }

    #[test]
    fn a_failed_fence_falls_back_to_the_dead_time() {
        let t = cluster(3, 2).timeouts;
        let all = crash(30_000, true, |_| false, || Err("fence_redfish: connection timed out".into()));
        assert!(kinds(&all).contains(&EventKind::FenceFailed), "{:?}", kinds(&all));
        assert!(
            all.iter().any(|(_, a)| matches!(a, Action::RecordFence { record } if record.device.is_none() && record.outcome.contains("timed out"))),
            "the failure is recorded too"
        );
        assert!(first(&all, claimed).expect("restarted") >= 4_000 + t.dead_time_ms);
        assert_eq!(all.iter().filter(|(_, a)| matches!(a, Action::FenceHost { .. })).count(), 1, "asked once");
    }

    #[test]
    fn a_host_alive_on_storage_is_never_fenced_and_a_device_contradicted_by_the_datastore_restarts_nothing() {
        // Alive on storage (another partition): never fenced, never restarted.
        let partition = crash(30_000, true, |_| true, || Ok("lying".into()));
        assert!(first(&partition, |a| matches!(a, Action::FenceHost { .. })).is_none());
        assert!(first(&partition, claimed).is_none());
        // Silent on storage until fenced, then writing again: the device said "off" wrongly.
        let t = cluster(3, 2).timeouts;
        let lied = crash(30_000, true, |now| now > 4_000 + t.fence_after_ms(), || Ok("lying".into()));
        assert!(first(&lied, |a| matches!(a, Action::FenceHost { .. })).is_some());
        assert!(kinds(&lied).contains(&EventKind::FenceContradicted), "{:?}", kinds(&lied));
        assert!(first(&lied, claimed).is_none(), "nothing restarted on a contradicted device's word");
    }

    #[test]
    fn a_fence_device_that_fails_its_status_is_an_alert_before_it_is_needed() {
        let mut config = cluster(3, 2);
        config.hosts[1].fenceable = true;
        let t = config.timeouts;
        let mut node = Node::new("host-1", config, 0);
        let mut p = BuiltinPolicies;
        let mut all = Vec::new();
        let mut answers = [
            Ok("on".to_string()),
            Err("connection refused".to_string()),
            Err("timed out".to_string()),
            Ok("on".to_string()),
        ]
        .into_iter();
        for now in (0..4 * t.fence_monitor_interval_ms).step_by(500) {
            let seq = now / 500 + 1;
            let mut inputs = vec![Input::Tick];
            for peer in ["host-2", "host-3"] {
                inputs.push(beat_with(peer, seq, &[("host-1", seq)], vec![]));
            }
            inputs.push(Input::DatastoreWritten { datastore: "ds1".into(), ok: true });
            let records = ["host-2", "host-3"]
                .map(|h| DatastoreRecord { host: h.into(), counter: seq, isolated: false, stopped: vec![] })
                .to_vec();
            inputs.push(Input::DatastoreRead { datastore: "ds1".into(), records: Ok(records) });
            for input in inputs {
                for action in node.handle(now, input, &mut p) {
                    if let Action::MonitorFence { host } = &action {
                        assert_eq!(host, "host-2", "only hosts with devices");
                        let devices =
                            vec![("fence_redfish 10.0.0.9".to_string(), answers.next().expect("four checks"))];
                        all.extend(node.handle(now, Input::FenceMonitored { host: host.clone(), devices }, &mut p));
                    }
                    all.push(action);
                }
            }
        }
        let events: Vec<(EventKind, String)> = all
            .iter()
            .filter_map(|a| match a {
                Action::Record(e) if matches!(e.kind, EventKind::FenceDeviceFailed | EventKind::FenceDeviceOk) => {
                    Some((e.kind, e.message.clone()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(events.len(), 2, "one alert when it fails, one note when it answers again: {events:?}");
        assert!(
            events[0].0 == EventKind::FenceDeviceFailed && events[0].1.contains("connection refused"),
            "{events:?}"
        );
        assert_eq!(events[1].0, EventKind::FenceDeviceOk);
        let status = node.status();
        let host2 = status.hosts.iter().find(|h| h.name == "host-2").expect("host-2");
        assert_eq!(host2.fence.len(), 1);
        assert!(host2.fence[0].ok && host2.fence[0].detail == "on", "{:?}", host2.fence);
        // The operator powers host-2 off (forced: it is heard); the status shows the device's
        // confirmation, not the last monitor's "on".
        let now = 4 * t.fence_monitor_interval_ms;
        let command = crate::node::Command::FenceHost { host: "host-2".into(), force: true };
        let asked = node.handle(now, Input::Command(command), &mut p);
        assert!(asked.iter().any(|a| matches!(a, Action::FenceHost { host } if host == "host-2")), "{asked:?}");
        let result = Ok("fence_redfish 10.0.0.9".to_string());
        node.handle(now + 200, Input::FenceResult { host: "host-2".into(), result }, &mut p);
        let status = node.status();
        let host2 = status.hosts.iter().find(|h| h.name == "host-2").expect("host-2");
        assert!(host2.fence[0].ok && host2.fence[0].detail == "off", "{:?}", host2.fence);
    }

    #[test]
    fn a_host_that_answers_ping_is_never_fenced() {
        // Silent everywhere but its kernel answers: its agent is stopped or hung, its VMs may
        // run. A device would be asked to power off a running host; a lying one would let the
        // master restart running VMs. Neither happens; the dead-time path says "agent down".
        let mut config = cluster(3, 2);
        config.hosts[1].fenceable = true;
        let mut node = Node::new("host-1", config, 0);
        let mut p = BuiltinPolicies;
        let mut all = Vec::new();
        for now in (0..30_000).step_by(100) {
            let mut inputs = vec![Input::Tick];
            if now % 1000 == 0 {
                let seq = now / 1000 + 1;
                inputs.push(beat_with("host-3", seq, &[("host-1", seq)], vec![]));
                if now < 5_000 {
                    let vms = vec![VmReport { vm: "vm-1".into(), generation: 1 }];
                    inputs.push(beat_with("host-2", seq, &[("host-1", seq)], vms));
                }
                inputs.push(Input::DatastoreWritten { datastore: "ds1".into(), ok: true });
                let records = vec![
                    DatastoreRecord {
                        host: "host-2".into(),
                        counter: now.min(4_000),
                        isolated: false,
                        stopped: vec![],
                    },
                    DatastoreRecord { host: "host-3".into(), counter: now, isolated: false, stopped: vec![] },
                ];
                inputs.push(Input::DatastoreRead { datastore: "ds1".into(), records: Ok(records) });
            }
            let mut queue: std::collections::VecDeque<Input> = inputs.into();
            while let Some(input) = queue.pop_front() {
                for action in node.handle(now, input, &mut p) {
                    if let Action::Ping { target } = &action {
                        queue.push_back(Input::PingResult { target: target.clone(), answered: true });
                    }
                    all.push((now, action));
                }
            }
        }
        assert!(first(&all, |a| matches!(a, Action::Ping { .. })).is_some_and(|at| at < 4_000 + 4_000), "pinged early");
        assert!(first(&all, |a| matches!(a, Action::FenceHost { .. })).is_none(), "{:?}", kinds(&all));
        assert!(first(&all, claimed).is_none());
        assert!(kinds(&all).contains(&EventKind::HostAgentDown), "{:?}", kinds(&all));
    }

    #[test]
    fn a_host_heard_again_while_being_fenced_calls_the_fence_off_and_a_late_answer_is_ignored() {
        let mut config = cluster(3, 2);
        config.hosts[1].fenceable = true;
        let t = config.timeouts;
        let mut node = Node::new("host-1", config, 0);
        let mut p = BuiltinPolicies;
        let mut counter = 0;
        let mut all = Vec::new();
        for now in (0..20_000).step_by(100) {
            let mut inputs = vec![Input::Tick];
            if now % 1000 == 0 {
                let seq = now / 1000 + 1;
                inputs.push(beat_with("host-3", seq, &[("host-1", seq)], vec![]));
                // Silent from 5 s to 11 s (a BMC that hangs meanwhile), then heard again.
                if !(5_000..11_000).contains(&now) {
                    counter += 1;
                    let vms = vec![VmReport { vm: "vm-1".into(), generation: 1 }];
                    inputs.push(beat_with("host-2", seq, &[("host-1", seq)], vms));
                }
                inputs.push(Input::DatastoreWritten { datastore: "ds1".into(), ok: true });
                let records = vec![
                    DatastoreRecord { host: "host-2".into(), counter, isolated: false, stopped: vec![] },
                    DatastoreRecord { host: "host-3".into(), counter: now, isolated: false, stopped: vec![] },
                ];
                inputs.push(Input::DatastoreRead { datastore: "ds1".into(), records: Ok(records) });
            }
            if now == 12_000 {
                // The device answers at last: too late.
                inputs.push(Input::FenceResult { host: "host-2".into(), result: Ok("slow-bmc".into()) });
            }
            for input in inputs {
                all.extend(node.handle(now, input, &mut p).into_iter().map(|a| (now, a)));
            }
        }
        let asked = first(&all, |a| matches!(a, Action::FenceHost { .. })).expect("fenced");
        // (Its ping is never answered here: "no answer" once the ping timeout passed.)
        assert!((4_000 + t.fence_after_ms()..=4_000 + t.fence_after_ms() + 200).contains(&asked), "{asked}");
        let cancelled =
            first(&all, |a| matches!(a, Action::CancelFence { host } if host == "host-2")).expect("called off");
        assert_eq!(cancelled, 11_000, "called off when heard again");
        assert!(kinds(&all).contains(&EventKind::FenceCancelled));
        assert!(!kinds(&all).contains(&EventKind::HostFencedOff), "the late answer is ignored");
        assert!(first(&all, claimed).is_none(), "nothing restarted: {:?}", kinds(&all));
    }

    #[test]
    fn a_fenceable_host_cut_off_from_everything_holds_its_vms_before_it_could_be_fenced() {
        for fenceable in [true, false] {
            let mut config = cluster(3, 2);
            config.hosts[0].fenceable = fenceable;
            let t = config.timeouts;
            let mut node = Node::new("host-1", config, 0);
            let mut p = BuiltinPolicies;
            node.handle(
                0,
                Input::VmState { vm: "vm-1".into(), generation: 1, state: super::super::VmState::Running },
                &mut p,
            );
            let mut now = 0;
            while now < 10_000 {
                now += 500;
                for peer in ["host-2", "host-3"] {
                    node.handle(now, beat_with(peer, now / 500, &[("host-1", now / 1000)], vec![]), &mut p);
                }
                node.handle(now, Input::DatastoreWritten { datastore: "ds1".into(), ok: true }, &mut p);
            }
            let cut = now;
            let mut all = Vec::new();
            while now < cut + t.fence_timeout_ms + 200 {
                now += 100;
                all.extend(node.handle(now, Input::Tick, &mut p).into_iter().map(|a| (now, a)));
            }
            let paused = first(&all, |a| matches!(a, Action::PauseVm { vm } if vm == "vm-1"));
            let stopped = first(&all, |a| matches!(a, Action::StopVm { vm, .. } if vm == "vm-1")).expect("fences");
            if fenceable {
                let paused = paused.expect("held");
                assert!(
                    paused - cut <= t.detection_time_ms - t.heartbeat_interval_ms + 100,
                    "held {} ms after the cut",
                    paused - cut
                );
                assert!(paused < stopped, "held before it fences itself");
            } else {
                assert!(paused.is_none(), "a host without fence devices only fences: {all:?}");
            }
        }
    }
}
