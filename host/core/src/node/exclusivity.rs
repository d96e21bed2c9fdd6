//! Exclusivity: a protected VM runs on one host.
//!
//! halo never starts a VM twice itself (every start is under a claim won on a datastore), but
//! the claim binds only halo: an operator's `virsh create`, a script, libvirt-guests at boot
//! can start a second copy. Every host reports the protected VMs running on it in its
//! heartbeats; the master compares them on every evaluation. A protected VM reported by two
//! hosts is an alert at once, naming every copy. Then, by default (`[ha] on-duplicate =
//! "pause"`), every copy but the one halo keeps is paused — suspended, not destroyed, so an
//! operator can inspect it.
//!
//! **Which copy halo keeps:** the newest generation (a restart claims the next one, so an
//! older copy is one the cluster already replaced); among copies of the same generation, the
//! one this master saw first, by three heartbeat intervals at least (a copy that appears
//! beside a running one was started outside halo). When neither tells — a new master that
//! found both at once, copies first seen a heartbeat apart, or within a dead-time of
//! its election (the target of a live migration its predecessor ordered looks just like a
//! copy started beside the source) — halo pauses nothing and the alert says so: pausing the
//! wrong copy would stop a healthy VM.
//!
//! Not duplicates: a VM in a live migration this master ordered (both ends report it until
//! it completes), the stale report of a host a VM just left, and hosts the master no longer
//! hears (their last list is stale; their VMs are the failover's business).
//!
//! Proved by the tests below and the simulator's `outside` fault (a copy started beside a
//! running VM must be paused within a heartbeat interval plus the reporting delay).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Action, EventKind, Node, Severity};
use crate::Millis;
use crate::classify::Verdict;
use crate::config::OnDuplicate;

/// A protected VM found running on more than one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Duplicate {
    /// The VM.
    pub vm: String,
    /// Every host reporting it running, with the generation it runs there.
    pub copies: BTreeMap<String, u64>,
    /// The copy halo keeps (`None`: it cannot tell which one it started; nothing is paused).
    pub kept: Option<String>,
    /// The copies this master paused.
    pub paused: BTreeSet<String>,
    /// When this master found it.
    pub since: Millis,
}

/// When the master first saw each copy of a VM reported running: VM → host → when. By VM,
/// then host, so that the evaluation (ten a second) looks copies up by borrowed names and
/// allocates only for a copy it has not seen before.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct FirstSeen(BTreeMap<String, BTreeMap<String, Millis>>);

impl FirstSeen {
    /// When `vm`'s copy on `host` was first seen.
    pub fn get(&self, vm: &str, host: &str) -> Option<Millis> {
        self.0.get(vm).and_then(|hosts| hosts.get(host)).copied()
    }

    /// Records `vm`'s copy on `host` as seen since `since`, unless it was seen already.
    pub fn note(&mut self, vm: &str, host: &str, since: Millis) {
        match self.0.get_mut(vm) {
            Some(hosts) => {
                if !hosts.contains_key(host) {
                    hosts.insert(host.to_string(), since);
                }
            }
            None => {
                self.0.insert(vm.to_string(), BTreeMap::from([(host.to_string(), since)]));
            }
        }
    }

    /// Records `vm`'s copy on `host` as seen since `at` at the latest.
    pub fn lower(&mut self, vm: &str, host: &str, at: Millis) {
        let seen = self.0.entry(vm.to_string()).or_default().entry(host.to_string()).or_insert(at);
        *seen = (*seen).min(at);
    }

    /// Forgets `vm`'s copy on `host`; when it was first seen.
    pub fn remove(&mut self, vm: &str, host: &str) -> Option<Millis> {
        let hosts = self.0.get_mut(vm)?;
        let at = hosts.remove(host);
        if hosts.is_empty() {
            self.0.remove(vm);
        }
        at
    }

    /// The copies among `copies` not recorded yet. Both are sorted by VM: one walk through
    /// both, no lookup per copy (the evaluation runs ten times a second over every VM).
    fn unseen<'a>(&self, copies: &Copies<'a>) -> Vec<(&'a str, &'a str, u64)> {
        let mut unseen = Vec::new();
        let mut recorded = self.0.iter().peekable();
        for group in copies.by_vm() {
            let vm = group[0].0;
            while recorded.peek().is_some_and(|(v, _)| v.as_str() < vm) {
                recorded.next();
            }
            let hosts = recorded.peek().filter(|(v, _)| v.as_str() == vm).map(|(_, hosts)| *hosts);
            unseen.extend(group.iter().filter(|(_, host, _)| hosts.is_none_or(|h| !h.contains_key(*host))));
        }
        unseen
    }

    /// How many copies are recorded.
    fn len(&self) -> usize {
        self.0.values().map(BTreeMap::len).sum()
    }

    /// Keeps the copies `keep(vm, host)` says.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        self.0.retain(|vm, hosts| {
            hosts.retain(|host, _| keep(vm, host));
            !hosts.is_empty()
        });
    }
}

/// The protected VMs' copies reported running, sorted by VM, then host: (VM, host,
/// generation), borrowed from the peers' lists. The evaluation (ten a second, on 4,000 VMs
/// at 1,000 hosts) builds it and allocates no name for it.
struct Copies<'a>(Vec<(&'a str, &'a str, u64)>);

impl<'a> Copies<'a> {
    /// The copies of `vm`, by host.
    fn of(&self, vm: &str) -> &[(&'a str, &'a str, u64)] {
        let start = self.0.partition_point(|(v, _, _)| *v < vm);
        let end = start + self.0[start..].partition_point(|(v, _, _)| *v == vm);
        &self.0[start..end]
    }

    /// Whether `vm` is reported running on `host`.
    fn contains(&self, vm: &str, host: &str) -> bool {
        self.0.binary_search_by(|(v, h, _)| (*v, *h).cmp(&(vm, host))).is_ok()
    }

    /// The copies, one slice per VM.
    fn by_vm(&self) -> impl Iterator<Item = &[(&'a str, &'a str, u64)]> {
        self.0.chunk_by(|a, b| a.0 == b.0)
    }

    /// A VM's copies as host → generation.
    fn owned(copies: &[(&str, &str, u64)]) -> BTreeMap<String, u64> {
        copies.iter().map(|(_, h, g)| (h.to_string(), *g)).collect()
    }
}

/// Whether a peer's VM list says what runs there now: it runs (as far as this master
/// judges) and was heard itself lately — a host known alive only through others' acks may
/// have moved its VMs since (simulator seed 3913: a master back from isolation took halo's
/// copy, just migrated, for a duplicate of the one its stale list still showed on the
/// source, and paused it for good).
pub(super) fn list_is_current(peer: &super::Peer, now: Millis, dead_time: Millis) -> bool {
    peer.verdict.is_none_or(|v| v == Verdict::Running)
        && peer.heard_directly_at.is_some_and(|at| now.saturating_sub(at) < dead_time)
}

/// Where each protected VM is reported running now, by the hosts `peers` holds (their lists
/// while current) and by this node (`name`, `local_vms`); the hosts a VM just left in a
/// migration (`moved`) do not count.
fn copies<'a>(
    peers: &'a BTreeMap<String, super::Peer>,
    local_vms: &'a BTreeMap<String, u64>,
    name: &'a str,
    config: &crate::config::ClusterConfig,
    moved: Option<&BTreeMap<String, (String, Millis)>>,
    now: Millis,
) -> Copies<'a> {
    let just_left = |vm: &str, host: &str| moved.is_some_and(|m| m.get(vm).is_some_and(|(from, _)| from == host));
    let protected = |vm: &str| config.vm(vm).is_some_and(|s| s.protected());
    let dead_time = config.timeouts.dead_time_ms;
    let reported = peers.values().map(|p| p.vms.len()).sum::<usize>() + local_vms.len();
    let mut copies: Vec<(&str, &str, u64)> = Vec::with_capacity(reported);
    for (host, peer) in peers.iter().filter(|(_, p)| list_is_current(p, now, dead_time)) {
        copies.extend(
            peer.vms
                .iter()
                .filter(|r| protected(&r.vm) && !just_left(&r.vm, host))
                .map(|r| (r.vm.as_str(), host.as_str(), r.generation)),
        );
    }
    copies.extend(local_vms.iter().filter(|(vm, _)| protected(vm)).map(|(vm, g)| (vm.as_str(), name, *g)));
    // By VM and host; a host that named a VM twice: its last report counts (stable sort).
    copies.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    copies.dedup_by(|later, kept| {
        let same = (later.0, later.1) == (kept.0, kept.1);
        if same {
            kept.2 = later.2;
        }
        same
    });
    Copies(copies)
}

impl Node {
    /// Where each protected VM is reported running now, by the hosts this node hears and
    /// itself, with the generation on each host.
    pub(super) fn running_copies(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        let moved = self.master.as_ref().map(|m| &m.moved);
        let copies = copies(&self.peers, &self.local_vms, &self.name, &self.config, moved, self.now);
        copies.by_vm().map(|c| (c[0].0.to_string(), Copies::owned(c))).collect()
    }

    /// The protected VMs the master found running on more than one host.
    pub fn duplicates(&self) -> Vec<Duplicate> {
        self.master.as_ref().map(|m| m.duplicates.values().cloned().collect()).unwrap_or_default()
    }

    /// Finds protected VMs running on more than one host: alerts, and pauses the copies halo
    /// does not keep (module docs).
    pub(super) fn check_exclusivity(&mut self) {
        let (now, on_duplicate, acting) = (self.now, self.config.ha.on_duplicate, self.ha_enabled);
        let settle = self.config.timeouts.dead_time_ms;
        let moved = self.master.as_ref().map(|m| &m.moved);
        let copies = copies(&self.peers, &self.local_vms, &self.name, &self.config, moved, now);
        // A copy on a host not heard now (partitioned, suspect) keeps its first sighting while
        // that host's last list still names it: after a partition halo's own copy is the older
        // one (simulator seeds 2821 and 13800: an outside copy started on the other side was kept and
        // halo's paused for good).
        let mut unheard_copies: Vec<(&str, &str)> = self
            .peers
            .iter()
            .filter(|(_, p)| !list_is_current(p, now, settle))
            .flat_map(|(host, p)| p.vms.iter().map(move |r| (r.vm.as_str(), host.as_str())))
            .collect();
        unheard_copies.sort_unstable();
        let Some(master) = self.master.as_mut() else { return };
        // A copy of the generation claimed for its host counts from the claim: a master that
        // learnt of the claim before it saw the copy (a partition between) knows it is halo's.
        for (vm, host, generation) in master.first_seen.unseen(&copies) {
            let since = match self.claimed.get(vm) {
                Some((g, h, at)) if *g == generation && h == host => (*at).min(now),
                _ => now,
            };
            master.first_seen.note(vm, host, since);
        }
        // Every copy is recorded now: when nothing else is, nothing is to be forgotten.
        if master.first_seen.len() > copies.0.len() {
            master
                .first_seen
                .retain(|vm, host| copies.contains(vm, host) || unheard_copies.binary_search(&(vm, host)).is_ok());
        }
        let mut events: Vec<(Severity, EventKind, String)> = Vec::new();
        let mut pauses: Vec<(String, String)> = Vec::new();
        // Over when at most one copy is left and it is not one this master paused: a paused
        // copy left alone (halo's own copy was lost with its host) is no running VM, and the
        // failover must know it (`find_lost_vms`; simulator seed 10130).
        let over: Vec<String> = master
            .duplicates
            .iter()
            .filter(|(vm, d)| {
                let left = copies.of(vm);
                left.len() < 2 && !left.iter().any(|(_, host, _)| d.paused.contains(*host))
            })
            .map(|(vm, _)| vm.clone())
            .collect();
        for vm in over {
            master.duplicates.remove(&vm);
            let now_on = copies.of(&vm).first().map(|(_, host, _)| host.to_string());
            events.push((
                Severity::Info,
                EventKind::VmDuplicateResolved,
                match now_on {
                    Some(host) => format!("{vm} runs on one host again: {host}"),
                    None => format!("{vm} no longer runs on more than one host (on none now)"),
                },
            ));
        }
        // Two copies count once both were reported for three heartbeat intervals: a live
        // migration another master ran shows the VM on its source and its target for a
        // heartbeat or two (simulator seed 3913: a master back from isolation paused halo's
        // copy at its target on the source's last report).
        let confirm = 3 * self.config.timeouts.heartbeat_interval_ms;
        let confirmed = |c: &[(&str, &str, u64)]| {
            c.iter().all(|(vm, host, _)| {
                master.first_seen.get(vm, host).is_some_and(|at| now.saturating_sub(at) >= confirm)
            })
        };
        let duplicated: Vec<(String, BTreeMap<String, u64>)> = copies
            .by_vm()
            .filter(|c| c.len() > 1 && !master.migrating.contains(c[0].0) && confirmed(c))
            .map(|c| (c[0].0.to_string(), Copies::owned(c)))
            .collect();
        for (vm, hosts) in &duplicated {
            let known = master.duplicates.get(vm);
            if known.is_some_and(|d| d.copies == *hosts) {
                continue;
            }
            let mut paused = known.map(|d| d.paused.clone()).unwrap_or_default();
            paused.retain(|h| hosts.contains_key(h));
            // A copy this master paused is never the one kept (simulator seed 10403: halo's
            // copy moved by a maintenance was taken for the newcomer beside the paused one).
            let kept = known
                .and_then(|d| d.kept.clone())
                .filter(|k| hosts.contains_key(k))
                .or_else(|| keeper(vm, hosts, &master.first_seen, &paused, master.since + settle, confirm));
            let pause: Vec<String> = match (&kept, on_duplicate, acting) {
                (Some(kept), OnDuplicate::Pause, true) => {
                    hosts.keys().filter(|h| *h != kept && !paused.contains(*h)).cloned().collect()
                }
                _ => Vec::new(),
            };
            let first = |host: &str| master.first_seen.get(vm, host).unwrap_or(now);
            let described: Vec<String> = hosts
                .iter()
                .map(|(host, generation)| {
                    let age = now.saturating_sub(first(host)) as f64 / 1000.0;
                    format!("{host} (generation {generation}, seen running for {age:.1} s)")
                })
                .collect();
            let verdict = match (&kept, on_duplicate, acting) {
                (None, _, _) => "halo cannot tell which copy it started (it found them at once): it pauses none; \
                                 pause or destroy the extra copy by hand"
                    .to_string(),
                (Some(kept), OnDuplicate::Alert, _) => {
                    format!("halo's copy is the one on {kept}; [ha] on-duplicate = \"alert\": nothing paused")
                }
                (Some(kept), OnDuplicate::Pause, false) => {
                    format!("halo's copy is the one on {kept}; HA is off: nothing paused")
                }
                (Some(kept), OnDuplicate::Pause, true) => format!(
                    "halo keeps the copy on {kept} ({}) and pauses the one(s) on {} (suspended, not destroyed: inspect, \
                     then `virsh destroy` it there)",
                    why_kept(kept, hosts),
                    hosts.keys().filter(|h| *h != kept).cloned().collect::<Vec<_>>().join(", ")
                ),
            };
            events.push((
                Severity::Alert,
                EventKind::VmDuplicate,
                format!(
                    "{vm} runs on {} hosts: {}; a copy was started outside halo (libvirt does not say by whom); {verdict}",
                    hosts.len(),
                    described.join(" and ")
                ),
            ));
            for host in &pause {
                pauses.push((host.clone(), vm.clone()));
            }
            paused.extend(pause);
            let since = known.map_or(now, |d| d.since);
            master
                .duplicates
                .insert(vm.clone(), Duplicate { vm: vm.clone(), copies: hosts.clone(), kept, paused, since });
        }
        for (host, vm) in pauses {
            self.out.push(Action::PauseCopy { host, vm });
        }
        for (severity, kind, message) in events {
            self.record(severity, kind, message, None);
        }
    }
}

/// What libvirt's `qemu` hook asks before a domain starts on this host (`halo hook`): may it?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct StartRequest {
    /// The domain.
    pub vm: String,
    /// The generation in its definition (halo's metadata; 1 without).
    pub generation: u64,
}

/// The answer: admitted, or refused with a reason an operator reads in `virsh`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Admission {
    /// Whether the start may go ahead.
    pub admit: bool,
    /// Why (for a refusal: what to do instead).
    pub reason: String,
}

/// The claims on the datastore that bear on a start: of the definition's generation and the
/// next one (`Err`: the datastore could not say).
pub type ClaimsSeen = Result<(Option<crate::wire::Claim>, Option<crate::wire::Claim>), String>;

impl Node {
    /// Whether `request`'s domain may start on this host (the `qemu` hook's question): an
    /// unprotected VM always; a protected one only when no host this node hears runs it, no
    /// newer generation was claimed, and its generation's claim (if any) names this host.
    /// Live migrations are the hook's own business (they move the one copy).
    pub fn admit_start(&self, request: &StartRequest, claims: ClaimsSeen) -> Admission {
        let vm = &request.vm;
        let admit = |reason: String| Admission { admit: true, reason };
        let refuse = |reason: String| Admission {
            admit: false,
            reason: format!("halo refuses to start {vm} on {}: {reason}", self.name),
        };
        if !self.config.vm(vm).is_some_and(|s| s.protected()) {
            return admit(format!("{vm} is not protected by halo"));
        }
        // Hosts heard within the last two heartbeat intervals: a failed host's last report is
        // stale (the master waited the dead-time before restarting its VMs).
        let recent = 2 * self.config.timeouts.heartbeat_interval_ms;
        let elsewhere: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.heard_directly_at.is_some_and(|at| self.now.saturating_sub(at) <= recent))
            .filter(|(_, p)| p.vms.iter().any(|r| r.vm == *vm))
            .map(|(h, _)| h.clone())
            .collect();
        if !elsewhere.is_empty() {
            return refuse(format!(
                "it runs on {}; a protected VM runs on one host (use `halo vm migrate` to move it)",
                elsewhere.join(", ")
            ));
        }
        let (this, next) = match claims {
            Ok(claims) => claims,
            Err(why) => {
                return refuse(format!(
                    "its claims cannot be read ({why}); start it with `halo vm start` when the datastore answers"
                ));
            }
        };
        let generation = request.generation;
        if let Some(newer) = next {
            return refuse(format!(
                "generation {} of it was claimed for {}; this definition (generation {generation}) is stale",
                newer.generation, newer.host
            ));
        }
        match this {
            Some(claim) if claim.host != self.name => refuse(format!(
                "its claim (generation {generation}) is held by {}; start it with `halo vm start`",
                claim.host
            )),
            Some(_) => admit(format!("{} holds the claim of generation {generation}", self.name)),
            None => admit(format!("generation {generation} was never claimed and no host runs it")),
        }
    }
}

/// The copy halo keeps, never one it paused: the newest generation, then the copy seen
/// first; `None` if that leaves more than one.
/// `settled`: copies this master first saw before then count as seen at once — a master
/// elected a moment ago cannot tell a copy started outside halo from the target of a live
/// migration its predecessor ordered, which reports running at the handover (simulator seed
/// 83: a new master paused a migration's target, the source gone a moment later, and the VM
/// ran nowhere).
/// `apart`: a copy ran first only when it was seen this much before the others — copies on
/// hosts heard again after a partition are first seen a heartbeat apart, in the order their
/// heartbeats happened to arrive (simulator seed 365: halo's copy was paused for an outside
/// copy whose host's heartbeat came first, and the VM ran nowhere once that copy was gone).
fn keeper(
    vm: &str,
    hosts: &BTreeMap<String, u64>,
    first_seen: &FirstSeen,
    paused: &BTreeSet<String>,
    settled: Millis,
    apart: Millis,
) -> Option<String> {
    let hosts: BTreeMap<&String, u64> =
        hosts.iter().filter(|(h, _)| !paused.contains(*h)).map(|(h, g)| (h, *g)).collect();
    let newest = hosts.values().copied().max()?;
    let candidates: Vec<&String> = hosts.iter().filter(|(_, g)| **g == newest).map(|(h, _)| *h).collect();
    if let [only] = candidates.as_slice() {
        return Some((*only).clone());
    }
    let seen = |host: &String| first_seen.get(vm, host).unwrap_or(Millis::MAX).max(settled);
    let earliest = candidates.iter().map(|h| seen(h)).min()?;
    let firsts: Vec<&&String> = candidates.iter().filter(|h| seen(h) == earliest).collect();
    let [first] = firsts.as_slice() else { return None };
    let raw = |host: &String| first_seen.get(vm, host).unwrap_or(Millis::MAX);
    let before = raw(first).saturating_add(apart);
    candidates.iter().filter(|h| **h != **first).all(|h| raw(h) >= before).then(|| (**first).clone())
}

/// Why `kept` is the copy kept, for the alert.
fn why_kept(kept: &str, hosts: &BTreeMap<String, u64>) -> &'static str {
    let newest = hosts.get(kept).copied().unwrap_or(0);
    if hosts.iter().all(|(h, g)| h == kept || *g < newest) { "the newest generation" } else { "it ran first" }
}

#[cfg(test)]
mod tests {
    use super::super::tests::beat_with;
    use super::super::{Action, Input, Node, VmState};
    use super::*;
    use crate::config::tests::cluster;
    use crate::policies::BuiltinPolicies;
    use crate::wire::VmReport;

    fn on(vms: &[(&str, u64)]) -> Vec<VmReport> {
        vms.iter().map(|(vm, generation)| VmReport { vm: vm.to_string(), generation: *generation }).collect()
    }

    /// Runs host-1 from `from` to `to` (100 ms steps), host-2 and host-3 reporting what
    /// `vms(host, now)` says; returns every action.
    fn run(
        node: &mut Node,
        p: &mut BuiltinPolicies,
        from: Millis,
        to: Millis,
        vms: impl Fn(&str, Millis) -> Vec<VmReport>,
    ) -> Vec<Action> {
        let mut all = Vec::new();
        for now in (from..to).step_by(100) {
            let seq = now / 100 + 1;
            for peer in ["host-2", "host-3"] {
                all.extend(node.handle(now, beat_with(peer, seq, &[("host-1", seq)], vms(peer, now)), p));
            }
            all.extend(node.handle(now, Input::DatastoreWritten { datastore: "ds1".into(), ok: true }, p));
            all.extend(node.handle(now, Input::DatastoreRead { datastore: "ds1".into(), records: Ok(vec![]) }, p));
            all.extend(node.handle(now, Input::Tick, p));
        }
        all
    }

    /// host-1 master of three hosts, vm-1 running on host-2 (5 s).
    /// host-1 master (elected at 3 s), vm-1 on host-2, until 5 s — within a dead-time (12 s
    /// here) of the election.
    fn master_with_vm_on_host_2(config: crate::ClusterConfig) -> (Node, BuiltinPolicies) {
        let mut node = Node::new("host-1", config, 0);
        let mut p = BuiltinPolicies;
        run(&mut node, &mut p, 0, 5_000, |h, _| if h == "host-2" { on(&[("vm-1", 1)]) } else { vec![] });
        assert!(node.is_master());
        (node, p)
    }

    /// The same, until 16 s: the election a dead-time past.
    fn settled_master_with_vm_on_host_2(config: crate::ClusterConfig) -> (Node, BuiltinPolicies) {
        let (mut node, mut p) = master_with_vm_on_host_2(config);
        run(&mut node, &mut p, 5_000, 16_000, |h, _| if h == "host-2" { on(&[("vm-1", 1)]) } else { vec![] });
        assert!(node.is_master());
        (node, p)
    }

    fn pauses(actions: &[Action]) -> Vec<(String, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::PauseCopy { host, vm } => Some((host.clone(), vm.clone())),
                _ => None,
            })
            .collect()
    }

    fn events(actions: &[Action], kind: EventKind) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Record(e) if e.kind == kind => Some(e.message.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_copy_ran_first_only_when_seen_three_intervals_before_the_other() {
        let hosts: BTreeMap<String, u64> = [("host-2".to_string(), 1), ("host-3".to_string(), 1)].into();
        let apart = 750;
        let seen = |at_2: Millis, at_3: Millis| {
            let mut first_seen = FirstSeen::default();
            first_seen.note("vm-1", "host-2", at_2);
            first_seen.note("vm-1", "host-3", at_3);
            keeper("vm-1", &hosts, &first_seen, &BTreeSet::new(), 0, apart)
        };
        // Heard again after a partition, a heartbeat apart: a tie, nothing paused (seed 365).
        assert_eq!(seen(80_000, 80_200), None);
        assert_eq!(seen(80_300, 80_000), None);
        // Seen running long before the other: that one is halo's.
        assert_eq!(seen(10_000, 80_000).as_deref(), Some("host-2"));
        assert_eq!(seen(80_000, 80_000 - apart).as_deref(), Some("host-3"));
        // A newer generation decides whatever the sightings say.
        let newer: BTreeMap<String, u64> = [("host-2".to_string(), 1), ("host-3".to_string(), 2)].into();
        let mut first_seen = FirstSeen::default();
        first_seen.note("vm-1", "host-2", 80_000);
        first_seen.note("vm-1", "host-3", 80_100);
        assert_eq!(keeper("vm-1", &newer, &first_seen, &BTreeSet::new(), 0, apart).as_deref(), Some("host-3"));
    }

    #[test]
    fn a_copy_started_beside_a_running_vm_is_paused_and_alerted_once() {
        let (mut node, mut p) = settled_master_with_vm_on_host_2(cluster(3, 1));
        // host-3 starts reporting vm-1 too (the same generation: its XML was copied).
        let host_2_only = |h: &str, _| if h == "host-2" { on(&[("vm-1", 1)]) } else { vec![] };
        // Counted once both were reported for three heartbeat intervals (3 s here).
        let all = run(&mut node, &mut p, 16_000, 20_000, |_, _| on(&[("vm-1", 1)]));
        assert_eq!(pauses(&all), vec![("host-3".to_string(), "vm-1".to_string())], "only the newcomer, once");
        let alert = events(&all, EventKind::VmDuplicate);
        assert_eq!(alert.len(), 1, "{alert:?}");
        assert!(alert[0].contains("vm-1 runs on 2 hosts: host-2") && alert[0].contains("host-3"), "{}", alert[0]);
        assert!(
            alert[0].contains("keeps the copy on host-2 (it ran first) and pauses the one(s) on host-3"),
            "{}",
            alert[0]
        );
        let duplicates = node.duplicates();
        assert_eq!(duplicates.len(), 1);
        assert_eq!(duplicates[0].kept.as_deref(), Some("host-2"));
        assert_eq!(duplicates[0].paused.iter().cloned().collect::<Vec<_>>(), vec!["host-3".to_string()]);
        // The operator destroys the paused copy: host-3 reports it no more.
        let after = run(&mut node, &mut p, 20_000, 21_000, host_2_only);
        assert_eq!(events(&after, EventKind::VmDuplicateResolved), vec!["vm-1 runs on one host again: host-2"]);
        assert!(node.duplicates().is_empty());
        assert!(pauses(&after).is_empty());
    }

    #[test]
    fn the_newest_generation_is_kept_wherever_it_appeared() {
        let (mut node, mut p) = settled_master_with_vm_on_host_2(cluster(3, 1));
        let all = run(&mut node, &mut p, 16_000, 20_000, |h, _| on(&[("vm-1", if h == "host-3" { 2 } else { 1 })]));
        assert_eq!(pauses(&all), vec![("host-2".to_string(), "vm-1".to_string())]);
        assert!(events(&all, EventKind::VmDuplicate)[0].contains("(the newest generation)"));
    }

    #[test]
    fn a_copy_appearing_just_after_an_election_is_not_paused() {
        // The target of a live migration the previous master ordered reports running at the
        // handover, beside its source: a master elected a moment ago cannot tell it from a
        // copy started outside halo, so it pauses neither (simulator seed 83).
        let (mut node, mut p) = master_with_vm_on_host_2(cluster(3, 1));
        let all = run(&mut node, &mut p, 5_000, 9_000, |_, _| on(&[("vm-1", 1)]));
        assert!(pauses(&all).is_empty(), "{:?}", pauses(&all));
        let alert = events(&all, EventKind::VmDuplicate);
        assert!(alert.len() == 1 && alert[0].contains("cannot tell which copy it started"), "{alert:?}");
    }

    #[test]
    fn copies_found_at_once_are_alerted_and_none_is_paused() {
        // A master that finds both copies in the same evaluation cannot tell which is its own.
        let mut node = Node::new("host-1", cluster(3, 1), 0);
        let mut p = BuiltinPolicies;
        let all = run(&mut node, &mut p, 0, 8_000, |_, _| on(&[("vm-1", 1)]));
        assert!(node.is_master());
        assert!(pauses(&all).is_empty(), "{:?}", pauses(&all));
        let alert = events(&all, EventKind::VmDuplicate);
        assert_eq!(alert.len(), 1, "{alert:?}");
        assert!(alert[0].contains("cannot tell which copy it started"), "{}", alert[0]);
    }

    #[test]
    fn alert_only_pauses_nothing_and_a_copy_on_the_master_counts() {
        let mut config = cluster(3, 1);
        config.ha.on_duplicate = OnDuplicate::Alert;
        let (mut node, mut p) = settled_master_with_vm_on_host_2(config);
        // The copy appears on the master's own host.
        let running = Input::VmState { vm: "vm-1".into(), generation: 1, state: VmState::Running };
        let mut all = node.handle(16_000, running, &mut p);
        all.extend(run(
            &mut node,
            &mut p,
            16_000,
            20_000,
            |h, _| if h == "host-2" { on(&[("vm-1", 1)]) } else { vec![] },
        ));
        assert!(pauses(&all).is_empty());
        let alert = events(&all, EventKind::VmDuplicate);
        assert!(alert.len() == 1 && alert[0].contains("on-duplicate = \"alert\": nothing paused"), "{alert:?}");
        assert!(alert[0].contains("host-1") && alert[0].contains("host-2"), "{}", alert[0]);
    }

    #[test]
    fn the_hook_admits_only_a_start_halo_can_stand_behind() {
        // host-1; vm-1 runs on host-2; vm-2 runs nowhere.
        let mut node = Node::new("host-1", cluster(3, 2), 0);
        let mut p = BuiltinPolicies;
        run(&mut node, &mut p, 0, 2_000, |h, _| if h == "host-2" { on(&[("vm-1", 1)]) } else { vec![] });
        let ask = |vm: &str, generation| StartRequest { vm: vm.into(), generation };
        let claim = |generation, host: &str| crate::wire::Claim {
            vm: "vm-2".into(),
            generation,
            master: "host-3".into(),
            epoch: 1,
            host: host.into(),
        };
        let running = node.admit_start(&ask("vm-1", 1), Ok((None, None)));
        assert!(!running.admit && running.reason.contains("it runs on host-2"), "{running:?}");
        assert!(running.reason.starts_with("halo refuses to start vm-1 on host-1"), "{running:?}");
        assert!(node.admit_start(&ask("scratch", 1), Err("down".into())).admit, "an unprotected VM always starts");
        assert!(node.admit_start(&ask("vm-2", 1), Ok((None, None))).admit, "never claimed, runs nowhere");
        let held = node.admit_start(&ask("vm-2", 2), Ok((Some(claim(2, "host-3")), None)));
        assert!(!held.admit && held.reason.contains("is held by host-3"), "{held:?}");
        assert!(node.admit_start(&ask("vm-2", 2), Ok((Some(claim(2, "host-1")), None))).admit, "halo's own restart");
        let stale = node.admit_start(&ask("vm-2", 2), Ok((Some(claim(2, "host-1")), Some(claim(3, "host-3")))));
        assert!(!stale.admit && stale.reason.contains("generation 3 of it was claimed for host-3"), "{stale:?}");
        let unknown = node.admit_start(&ask("vm-2", 1), Err("datastore ds1 timed out".into()));
        assert!(!unknown.admit && unknown.reason.contains("cannot be read (datastore ds1 timed out)"), "{unknown:?}");
        // Once host-2 no longer reports it, it may start here.
        run(&mut node, &mut p, 2_000, 6_000, |_, _| vec![]);
        assert!(node.admit_start(&ask("vm-1", 1), Ok((None, None))).admit);
    }

    #[test]
    fn an_older_heartbeat_arriving_late_does_not_undo_a_newer_one() {
        let mut node = Node::new("host-1", cluster(3, 1), 0);
        let mut p = BuiltinPolicies;
        node.handle(100, beat_with("host-2", 10, &[], on(&[("vm-1", 1)])), &mut p);
        // Heartbeat 9 (sent before vm-1 arrived) on the other network, after 10.
        node.handle(110, beat_with("host-2", 9, &[], vec![]), &mut p);
        assert_eq!(node.running_copies().get("vm-1").map(|h| h.len()), Some(1), "host-2 still runs vm-1");
        node.handle(120, beat_with("host-2", 11, &[], vec![]), &mut p);
        assert!(!node.running_copies().contains_key("vm-1"), "a newer heartbeat still counts");
    }

    #[test]
    fn the_operator_starts_a_protected_vm_under_a_new_claim() {
        // vm-1 runs on host-2; vm-2 runs nowhere.
        let mut node = Node::new("host-1", cluster(3, 2), 0);
        let mut p = BuiltinPolicies;
        run(&mut node, &mut p, 0, 5_000, |h, _| if h == "host-2" { on(&[("vm-1", 1)]) } else { vec![] });
        assert!(node.is_master());
        let start = |vm: &str, on: Option<&str>| {
            Input::Command(super::super::Command::StartVm { vm: vm.into(), on: on.map(str::to_string) })
        };
        let refused = node.handle(5_000, start("vm-1", None), &mut p);
        assert_eq!(events(&refused, EventKind::CommandRefused), vec!["start vm-1: it runs on host-2 already"]);
        let refused = node.handle(5_000, start("nope", None), &mut p);
        assert_eq!(
            events(&refused, EventKind::CommandRefused),
            vec!["start nope: no VM named nope in the configuration"]
        );
        let mut all = node.handle(5_000, start("vm-2", Some("host-3")), &mut p);
        assert_eq!(events(&all, EventKind::VmStartRequested).len(), 1, "{all:?}");
        all.extend(run(
            &mut node,
            &mut p,
            5_000,
            5_500,
            |h, _| if h == "host-2" { on(&[("vm-1", 1)]) } else { vec![] },
        ));
        let claim = all
            .iter()
            .find_map(|a| match a {
                Action::Claim { claim, .. } => Some(claim.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("a claim: {all:?}"));
        assert_eq!((claim.vm.as_str(), claim.generation, claim.host.as_str()), ("vm-2", 2, "host-3"));
        let won = Input::ClaimResult { claim, outcome: crate::wire::ClaimOutcome::Won };
        let started = node.handle(5_500, won, &mut p);
        assert!(
            started
                .iter()
                .any(|a| matches!(a, Action::StartVm { host, vm, generation: 2 } if host == "host-3" && vm == "vm-2")),
            "{started:?}"
        );
        let done = Input::StartResult { vm: "vm-2".into(), host: "host-3".into(), generation: 2, result: Ok(()) };
        let done = node.handle(5_600, done, &mut p);
        let told = events(&done, EventKind::VmRestarted);
        assert!(told.len() == 1 && told[0].starts_with("vm-2 started on host-3 by the operator's request"), "{told:?}");
    }

    #[test]
    fn a_start_refused_for_a_held_storage_lease_is_tried_again_at_the_base_interval() {
        let mut node = Node::new("host-1", cluster(3, 2), 0);
        let mut p = BuiltinPolicies;
        let reports = |h: &str, _: u64| if h == "host-2" { on(&[("vm-1", 1)]) } else { vec![] };
        run(&mut node, &mut p, 0, 5_000, reports);
        let start = Input::Command(super::super::Command::StartVm { vm: "vm-2".into(), on: Some("host-3".into()) });
        let mut all = node.handle(5_000, start, &mut p);
        let claim_of = |actions: &[Action]| {
            actions.iter().find_map(|a| match a {
                Action::Claim { claim, .. } => Some(claim.clone()),
                _ => None,
            })
        };
        let (mut now, mut waits, mut generations) = (5_000, Vec::new(), Vec::new());
        // Six refusals in a row (a dead host's lease takes minutes to expire): each is tried
        // again at the base interval, never given up, the operator told once.
        for _ in 0..6 {
            let mut claim = claim_of(&all);
            while claim.is_none() {
                now += 100;
                assert!(now < 60_000, "no new claim");
                all = run(&mut node, &mut p, now - 100, now, reports);
                claim = claim_of(&all);
            }
            let claim = claim.unwrap_or_else(|| unreachable!());
            generations.push((claim.generation, now));
            let won = node.handle(
                now,
                Input::ClaimResult { claim: claim.clone(), outcome: crate::wire::ClaimOutcome::Won },
                &mut p,
            );
            assert!(won.iter().any(|a| matches!(a, Action::StartVm { .. })), "{won:?}");
            let held =
                crate::wire::StartError::LeaseHeld("Failed to acquire lock: Lease is held by another host".into());
            let refused = Input::StartResult {
                vm: "vm-2".into(),
                host: claim.host,
                generation: claim.generation,
                result: Err(held),
            };
            let out = node.handle(now, refused, &mut p);
            waits.extend(events(&out, EventKind::LeaseWait));
            assert!(events(&out, EventKind::StartFailed).is_empty(), "a held lease is not a failed start: {out:?}");
            all = Vec::new();
        }
        assert_eq!(waits.len(), 1, "told once: {waits:?}");
        assert!(waits[0].contains("vm-2: its storage lease is held by another host"), "{waits:?}");
        let gaps: Vec<u64> = generations.windows(2).map(|w| w[1].1 - w[0].1).collect();
        let base = node.config.timeouts.retry_backoff_ms;
        assert!(gaps.iter().all(|&g| g >= base && g <= base + 600), "no growing backoff: {gaps:?} (base {base})");
        assert!(
            generations.windows(2).all(|w| w[1].0 == w[0].0 + 1),
            "each try claims the next generation: {generations:?}"
        );
        // The same failure for any other reason backs off.
        let mut claim = None;
        while claim.is_none() {
            now += 100;
            claim = claim_of(&run(&mut node, &mut p, now - 100, now, reports));
        }
        let claim = claim.unwrap_or_else(|| unreachable!());
        node.handle(now, Input::ClaimResult { claim: claim.clone(), outcome: crate::wire::ClaimOutcome::Won }, &mut p);
        let failed = crate::wire::StartError::Failed("no such emulator".into());
        let out = node.handle(
            now,
            Input::StartResult {
                vm: "vm-2".into(),
                host: claim.host,
                generation: claim.generation,
                result: Err(failed),
            },
            &mut p,
        );
        assert_eq!(events(&out, EventKind::StartFailed).len(), 1, "{out:?}");
    }

    #[test]
    fn a_vm_stopped_outside_halo_leaves_the_host_but_halos_own_stop_is_not_taken_for_one() {
        let mut node = Node::new("host-1", cluster(3, 1), 0);
        let mut p = BuiltinPolicies;
        let running = || Input::VmState { vm: "vm-1".into(), generation: 1, state: VmState::Running };
        let outside = || Input::VmState { vm: "vm-1".into(), generation: 1, state: VmState::StoppedOutside };
        node.handle(0, running(), &mut p);
        let stopped = node.handle(100, outside(), &mut p);
        assert_eq!(
            events(&stopped, EventKind::VmStopped),
            vec!["vm-1 was stopped on host-1 outside halo (not restarted)"]
        );
        assert!(!node.status().vms[0].state.starts_with("running"), "{:?}", node.status().vms[0]);
        // halo's own stop (the operator's, through halo) is reported by the driver; libvirt's
        // destroy event for it says nothing more.
        node.handle(200, running(), &mut p);
        let stop = node.handle(300, Input::Command(super::super::Command::StopVm("vm-1".into())), &mut p);
        assert!(stop.iter().any(|a| matches!(a, Action::StopVm { .. })), "{stop:?}");
        assert!(events(&node.handle(400, outside(), &mut p), EventKind::VmStopped).is_empty());
    }
}
