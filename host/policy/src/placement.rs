//! The default placement engine: best-fit decreasing on memory, with a vCPU overcommit
//! limit, required host labels, anti-affinity groups, datastore reachability, maintenance
//! hosts and each VM's avoided hosts (never the failed host).
//!
//! VMs are placed `restart` before `best-effort`, larger before smaller; each goes to the
//! eligible host that is left with the least free memory (setting `strategy = "spread"`
//! picks the most free memory instead). Hosts are kept in an index ordered by free memory,
//! so a placement of `v` VMs on `h` hosts costs about `v log h` when hosts are alike.
//! The answer is deterministic: ties go to the host listed first.

use std::collections::{BTreeMap, BTreeSet};

use crate::settings::PolicySettings;
use crate::settings::SettingError;
use crate::types::{Assignment, CandidateHost, Placement, PlacementInput, UnplacedVm, VmToPlace};

/// vCPU overcommit used when the input gives none: 4 vCPUs per thread.
pub const DEFAULT_VCPU_OVERCOMMIT_PERCENT: u32 = 400;

/// Which eligible host a VM goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// The host left with the least free memory (packs hosts, keeps large holes free).
    #[default]
    BestFit,
    /// The host with the most free memory (spreads load).
    Spread,
}

/// Settings of the default placement engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlacementConfig {
    /// Key `strategy`: `best-fit` or `spread`.
    pub strategy: Strategy,
}

impl PolicySettings for PlacementConfig {
    const KEYS: &'static [&'static str] = &["strategy"];

    fn apply(&mut self, key: &str, value: &str) -> Result<bool, String> {
        match key {
            "strategy" => {
                self.strategy = match value.trim() {
                    "best-fit" => Strategy::BestFit,
                    "spread" => Strategy::Spread,
                    _ => return Err("expected best-fit or spread".into()),
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// The default engine as the plugin runs it: settings read strictly.
pub fn place(input: &PlacementInput) -> Result<Placement, String> {
    let config = PlacementConfig::from_settings(&input.settings).map_err(|e| e.to_string())?;
    Ok(place_with(&config, input))
}

/// The built-in fallback: bad settings keep their defaults (returned for the log).
pub fn place_fallback(input: &PlacementInput) -> (Placement, Vec<SettingError>) {
    let (config, problems) = PlacementConfig::from_settings_lenient(&input.settings);
    (place_with(&config, input), problems)
}

/// What is left on a host while placing.
struct HostRoom<'a> {
    host: &'a CandidateHost,
    free_memory_mib: u64,
    vcpus_left: u64,
    groups: BTreeSet<&'a str>,
}

impl<'a> HostRoom<'a> {
    /// The room of every candidate host before anything is placed.
    fn all(input: &'a PlacementInput) -> Vec<Self> {
        input
            .hosts
            .iter()
            .map(|host| HostRoom {
                host,
                free_memory_mib: host.free_memory_mib,
                vcpus_left: host
                    .vcpu_capacity(input.vcpu_overcommit_percent)
                    .saturating_sub(u64::from(host.allocated_vcpus)),
                groups: host.anti_affinity_groups.iter().map(String::as_str).collect(),
            })
            .collect()
    }

    /// Whether `vm` may go here: `refusal(vm).is_none()`, with the vCPU test before the names
    /// (memory is already filtered by the index of hosts by free memory).
    fn takes(&self, vm: &VmToPlace) -> bool {
        self.vcpus_left >= u64::from(vm.vcpus) && self.refusal(vm).is_none()
    }

    /// The first rule that keeps `vm` off this host, in the order the operator is told.
    fn refusal(&self, vm: &VmToPlace) -> Option<Refusal> {
        if self.host.maintenance {
            return Some(Refusal::Maintenance);
        }
        if vm.avoid_hosts.contains(&self.host.name) {
            return Some(Refusal::Avoided);
        }
        if self.free_memory_mib < vm.memory_mib {
            return Some(Refusal::Memory);
        }
        if self.vcpus_left < u64::from(vm.vcpus) {
            return Some(Refusal::Vcpus);
        }
        if !vm.required_host_labels.iter().all(|l| self.host.labels.contains(l)) {
            return Some(Refusal::Labels);
        }
        if !vm.datastores.iter().all(|d| self.host.datastores.contains(d)) {
            return Some(Refusal::Datastores);
        }
        if vm.anti_affinity_group.as_deref().is_some_and(|g| self.groups.contains(g)) {
            return Some(Refusal::AntiAffinity);
        }
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Refusal {
    Maintenance,
    Avoided,
    Memory,
    Vcpus,
    Labels,
    Datastores,
    AntiAffinity,
}

impl Refusal {
    fn describe(self, vm: &VmToPlace) -> String {
        match self {
            Refusal::Maintenance => "in maintenance".into(),
            Refusal::Avoided => "to be avoided".into(),
            Refusal::Memory => format!("short of {} MiB free memory", vm.memory_mib),
            Refusal::Vcpus => format!("short of {} vCPUs under the overcommit limit", vm.vcpus),
            Refusal::Labels => format!("missing labels [{}]", vm.required_host_labels.join(", ")),
            Refusal::Datastores => format!("not reaching datastores [{}]", vm.datastores.join(", ")),
            Refusal::AntiAffinity => format!(
                "already running a VM of anti-affinity group `{}`",
                vm.anti_affinity_group.as_deref().unwrap_or_default()
            ),
        }
    }
}

/// The order VMs are placed in: `restart` first, then larger memory, then more vCPUs, then name.
fn placement_order(vms: &[VmToPlace]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..vms.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&vms[a], &vms[b]);
        a.priority
            .cmp(&b.priority)
            .then(b.memory_mib.cmp(&a.memory_mib))
            .then(b.vcpus.cmp(&a.vcpus))
            .then_with(|| a.name.cmp(&b.name))
    });
    order
}

/// The decision under an explicit config.
pub fn place_with(config: &PlacementConfig, input: &PlacementInput) -> Placement {
    let mut rooms = HostRoom::all(input);
    // (free memory, host index) of every host that may take VMs at all.
    let mut by_free: BTreeSet<(u64, usize)> = rooms
        .iter()
        .enumerate()
        .filter(|(_, room)| !room.host.maintenance)
        .map(|(i, room)| (room.free_memory_mib, i))
        .collect();

    let mut answer = Placement::default();
    for vm_index in placement_order(&input.vms) {
        let vm = &input.vms[vm_index];
        let chosen = {
            let mut fitting = by_free.range((vm.memory_mib, 0)..).map(|&(_, i)| i);
            match config.strategy {
                Strategy::BestFit => fitting.find(|&i| rooms[i].takes(vm)),
                Strategy::Spread => fitting.rev().find(|&i| rooms[i].takes(vm)),
            }
        };
        match chosen {
            Some(i) => {
                let room = &mut rooms[i];
                by_free.remove(&(room.free_memory_mib, i));
                room.free_memory_mib -= vm.memory_mib;
                room.vcpus_left -= u64::from(vm.vcpus);
                if let Some(group) = vm.anti_affinity_group.as_deref() {
                    room.groups.insert(group);
                }
                by_free.insert((room.free_memory_mib, i));
                answer.assignments.push(Assignment { vm: vm.name.clone(), host: room.host.name.clone() });
            }
            None => answer.unplaced.push(UnplacedVm { vm: vm.name.clone(), reason: why_unplaced(vm, &rooms) }),
        }
    }
    answer
}

/// A sentence for the operator: how many hosts refused the VM, grouped by cause.
fn why_unplaced(vm: &VmToPlace, rooms: &[HostRoom<'_>]) -> String {
    if rooms.is_empty() {
        return "no candidate hosts".into();
    }
    let mut causes: BTreeMap<Refusal, usize> = BTreeMap::new();
    for room in rooms {
        if let Some(refusal) = room.refusal(vm) {
            *causes.entry(refusal).or_default() += 1;
        }
    }
    let parts: Vec<String> = causes
        .into_iter()
        .map(|(refusal, n)| format!("{n} {} {}", if n == 1 { "host" } else { "hosts" }, refusal.describe(vm)))
        .collect();
    format!("no host fits ({} MiB, {} vCPUs): {}", vm.memory_mib, vm.vcpus, parts.join(", "))
}

/// Why a placement answer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPlacement {
    /// An assignment or unplaced entry names a VM not in the input.
    #[error("names VM `{0}`, which was not asked for")]
    UnknownVm(String),
    /// A VM appears twice across assignments and unplaced entries.
    #[error("places VM `{0}` twice")]
    DuplicateVm(String),
    /// A VM of the input is in neither list.
    #[error("says nothing about VM `{0}`")]
    MissingVm(String),
    /// An assignment names a host not among the candidates.
    #[error("puts VM `{vm}` on unknown host `{host}`")]
    UnknownHost {
        /// The VM.
        vm: String,
        /// The host named.
        host: String,
    },
    /// An assignment breaks a rule of the input.
    #[error("puts VM `{vm}` on host `{host}`, which is {why}")]
    Refused {
        /// The VM.
        vm: String,
        /// The host.
        host: String,
        /// The broken rule.
        why: String,
    },
    /// The answer has more entries than VMs asked for.
    #[error("has {entries} entries for {vms} VMs")]
    TooManyEntries {
        /// Entries in the answer.
        entries: usize,
        /// VMs in the input.
        vms: usize,
    },
}

/// Checks a placement answer: every VM exactly once; each assignment on a known host that
/// is not in maintenance, not avoided, carries the labels, reaches the datastores, keeps
/// anti-affinity, and stays within memory and the vCPU overcommit limit, cumulatively.
pub fn validate_placement(input: &PlacementInput, answer: &Placement) -> Result<(), InvalidPlacement> {
    let entries = answer.assignments.len() + answer.unplaced.len();
    if entries > input.vms.len() {
        return Err(InvalidPlacement::TooManyEntries { entries, vms: input.vms.len() });
    }
    let vm_index = crate::input::name_index(input.vms.iter().map(|vm| vm.name.as_str()));
    let host_index = crate::input::name_index(input.hosts.iter().map(|h| h.name.as_str()));
    let mut rooms = HostRoom::all(input);
    let mut seen = vec![false; input.vms.len()];
    let mut position = |name: &str| -> Result<usize, InvalidPlacement> {
        let &i = vm_index.get(name).ok_or_else(|| InvalidPlacement::UnknownVm(name.to_string()))?;
        if std::mem::replace(&mut seen[i], true) {
            return Err(InvalidPlacement::DuplicateVm(name.to_string()));
        }
        Ok(i)
    };
    // Each VM name is looked up once: the assignments' positions are kept for the rules.
    let assigned: Vec<usize> = answer.assignments.iter().map(|a| position(&a.vm)).collect::<Result<_, _>>()?;
    for unplaced in &answer.unplaced {
        position(&unplaced.vm)?;
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(InvalidPlacement::MissingVm(input.vms[i].name.clone()));
    }
    for (assignment, &i) in answer.assignments.iter().zip(&assigned) {
        let vm = &input.vms[i];
        let room = host_index
            .get(assignment.host.as_str())
            .map(|&h| &mut rooms[h])
            .ok_or_else(|| InvalidPlacement::UnknownHost { vm: vm.name.clone(), host: assignment.host.clone() })?;
        if let Some(refusal) = room.refusal(vm) {
            return Err(InvalidPlacement::Refused {
                vm: vm.name.clone(),
                host: assignment.host.clone(),
                why: refusal.describe(vm),
            });
        }
        room.free_memory_mib -= vm.memory_mib;
        room.vcpus_left -= u64::from(vm.vcpus);
        if let Some(group) = vm.anti_affinity_group.as_deref() {
            room.groups.insert(group);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{PlacementReason, RestartPriority};
    use proptest::prelude::{TestCaseError, any, prop, prop_assert, prop_assert_eq, proptest};
    use proptest::strategy::Strategy as _;

    pub(crate) fn host(name: &str, free: u64, vcpus: u32) -> CandidateHost {
        CandidateHost {
            name: name.into(),
            total_memory_mib: free,
            free_memory_mib: free,
            total_vcpus: vcpus,
            allocated_vcpus: 0,
            labels: vec![],
            datastores: vec!["ds1".into()],
            maintenance: false,
            anti_affinity_groups: vec![],
        }
    }

    pub(crate) fn vm(name: &str, memory: u64, vcpus: u32) -> VmToPlace {
        VmToPlace {
            name: name.into(),
            memory_mib: memory,
            vcpus,
            priority: RestartPriority::Restart,
            required_host_labels: vec![],
            anti_affinity_group: None,
            avoid_hosts: vec![],
            datastores: vec!["ds1".into()],
        }
    }

    fn input(vms: Vec<VmToPlace>, hosts: Vec<CandidateHost>) -> PlacementInput {
        PlacementInput { reason: PlacementReason::Failover, vms, hosts, vcpu_overcommit_percent: 100, settings: vec![] }
    }

    fn host_of<'a>(p: &'a Placement, vm: &str) -> Option<&'a str> {
        p.assignments.iter().find(|a| a.vm == vm).map(|a| a.host.as_str())
    }

    #[test]
    fn best_fit_picks_the_tightest_host_and_spread_the_emptiest() {
        let input = input(vec![vm("a", 1000, 1)], vec![host("big", 8000, 8), host("snug", 1500, 8)]);
        let best = place(&input).expect("valid");
        assert_eq!(host_of(&best, "a"), Some("snug"));
        let mut spread_input = input.clone();
        spread_input.settings = vec![crate::types::Setting::new("strategy", "spread")];
        assert_eq!(host_of(&place(&spread_input).expect("valid"), "a"), Some("big"));
    }

    #[test]
    fn larger_vms_go_first_so_everything_fits() {
        // Smallest-first would put `s` on h1 and then `l` fits nowhere.
        let input = input(vec![vm("s", 1000, 1), vm("l", 3000, 1)], vec![host("h1", 3000, 4), host("h2", 1000, 4)]);
        let answer = place(&input).expect("valid");
        assert!(answer.unplaced.is_empty(), "{answer:?}");
        assert_eq!(validate_placement(&input, &answer), Ok(()));
    }

    #[test]
    fn rules_are_honoured_and_refusals_explained() {
        let mut gpu_vm = vm("gpu", 100, 1);
        gpu_vm.required_host_labels = vec!["gpu".into()];
        let mut avoid = vm("avoid", 100, 1);
        avoid.avoid_hosts = vec!["h1".into(), "h2".into()];
        let mut g1 = vm("g1", 100, 1);
        g1.anti_affinity_group = Some("web".into());
        let mut g2 = g1.clone();
        g2.name = "g2".into();
        let mut h2 = host("h2", 10_000, 8);
        h2.maintenance = true;
        let answer = place(&input(vec![gpu_vm, avoid, g1, g2], vec![host("h1", 10_000, 8), h2])).expect("valid");
        assert_eq!(host_of(&answer, "g1"), Some("h1"));
        let reason = |name: &str| answer.unplaced.iter().find(|u| u.vm == name).map(|u| u.reason.clone());
        assert!(reason("gpu").is_some_and(|r| r.contains("missing labels [gpu]")), "{answer:?}");
        assert!(reason("avoid").is_some_and(|r| r.contains("to be avoided") && r.contains("maintenance")));
        assert!(reason("g2").is_some_and(|r| r.contains("anti-affinity group `web`")));
    }

    #[test]
    fn vcpu_overcommit_limits_placement() {
        let mut input = input(vec![vm("a", 10, 4), vm("b", 10, 4)], vec![host("h", 10_000, 2)]);
        input.vcpu_overcommit_percent = 400; // 8 vCPUs
        assert_eq!(place(&input).expect("valid").assignments.len(), 2);
        input.vcpu_overcommit_percent = 300; // 6 vCPUs
        assert_eq!(place(&input).expect("valid").assignments.len(), 1);
    }

    #[test]
    fn validation_catches_each_kind_of_bad_answer() {
        let input = input(vec![vm("a", 600, 1), vm("b", 600, 1)], vec![host("h1", 1000, 4), host("h2", 1000, 4)]);
        let assign = |pairs: &[(&str, &str)]| Placement {
            assignments: pairs.iter().map(|(v, h)| Assignment { vm: v.to_string(), host: h.to_string() }).collect(),
            unplaced: vec![],
        };
        assert_eq!(validate_placement(&input, &assign(&[("a", "h1"), ("b", "h2")])), Ok(()));
        assert!(matches!(
            validate_placement(&input, &assign(&[("a", "h1"), ("b", "h1")])),
            Err(InvalidPlacement::Refused { .. })
        ));
        assert!(matches!(
            validate_placement(&input, &assign(&[("a", "h1"), ("b", "nowhere")])),
            Err(InvalidPlacement::UnknownHost { .. })
        ));
        assert!(matches!(
            validate_placement(&input, &assign(&[("a", "h1"), ("a", "h2")])),
            Err(InvalidPlacement::DuplicateVm(_))
        ));
        assert!(matches!(validate_placement(&input, &assign(&[("a", "h1")])), Err(InvalidPlacement::MissingVm(_))));
        assert!(matches!(
            validate_placement(&input, &assign(&[("a", "h1"), ("ghost", "h2")])),
            Err(InvalidPlacement::UnknownVm(_))
        ));
    }

    fn arb_input() -> impl proptest::strategy::Strategy<Value = PlacementInput> {
        let vms = prop::collection::vec((1u64..4000, 1u32..8, any::<bool>(), 0usize..4, 0usize..3), 0..40);
        let hosts = prop::collection::vec((0u64..16_000, 1u32..16, any::<bool>(), any::<bool>()), 0..8);
        (vms, hosts, 100u32..500).prop_map(|(vms, hosts, pct)| {
            let hosts: Vec<CandidateHost> = hosts
                .into_iter()
                .enumerate()
                .map(|(i, (free, vcpus, gpu, maintenance))| CandidateHost {
                    labels: if gpu { vec!["gpu".into()] } else { vec![] },
                    maintenance,
                    ..host(&format!("h{i}"), free, vcpus)
                })
                .collect();
            let vms = vms
                .into_iter()
                .enumerate()
                .map(|(i, (mem, vcpus, gpu, group, avoid))| VmToPlace {
                    required_host_labels: if gpu { vec!["gpu".into()] } else { vec![] },
                    anti_affinity_group: (group > 0).then(|| format!("g{group}")),
                    avoid_hosts: vec![format!("h{avoid}")],
                    priority: if i % 3 == 0 { RestartPriority::BestEffort } else { RestartPriority::Restart },
                    ..vm(&format!("vm{i}"), mem, vcpus)
                })
                .collect();
            PlacementInput { vcpu_overcommit_percent: pct, ..input(vms, hosts) }
        })
    }

    proptest! {
        #[test]
        fn default_placement_always_passes_validation(input in arb_input()) {
            for strategy in ["best-fit", "spread"] {
                let mut input = input.clone();
                input.settings = vec![crate::types::Setting::new("strategy", strategy)];
                let answer = place(&input).map_err(TestCaseError::fail)?;
                prop_assert_eq!(validate_placement(&input, &answer), Ok(()));
            }
        }

        #[test]
        fn an_unplaced_vm_fits_on_no_host_after_placement(input in arb_input()) {
            let answer = place(&input).map_err(TestCaseError::fail)?;
            // Re-run validation with each unplaced VM moved onto each host: every one must be refused.
            for unplaced in &answer.unplaced {
                for host in &input.hosts {
                    let mut attempt = answer.clone();
                    attempt.unplaced.retain(|u| u.vm != unplaced.vm);
                    attempt.assignments.push(Assignment { vm: unplaced.vm.clone(), host: host.name.clone() });
                    prop_assert!(validate_placement(&input, &attempt).is_err());
                }
            }
        }
    }
}
