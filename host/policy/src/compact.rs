//! The compact placement input and answer (contract 0.1.1's `compact-placement`): VMs, hosts,
//! labels, datastores and anti-affinity groups named by their position in the input's lists,
//! every relation kept as compressed rows of positions.
//!
//! The default placement engine decides on this form, natively (the built-in policy) and as a
//! plugin: a 10,000-VM input crosses into the sandbox as a dozen flat lists instead of about
//! 76,000 strings and lists, and rules compare numbers instead of names. The agent's input
//! stays named ([`PlacementInput`]); [`CompactInput::from_named`] turns it into this form and
//! [`CompactPlacement::to_named`] turns the answer back.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use crate::input::{NameHasher, name_index};
use crate::types::{Assignment, Placement, PlacementInput, PlacementReason, RestartPriority, Setting, UnplacedVm};

/// A relation from each VM (or host) to positions in a list of the input, as compressed rows:
/// the positions of entry `i` are `items[starts[i]..starts[i + 1]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Where each entry's positions start in `items`, plus the end: one more than entries.
    pub starts: Vec<u32>,
    /// The positions of all entries, one after the other.
    pub items: Vec<u32>,
}

impl Default for Relation {
    fn default() -> Self {
        Self { starts: vec![0], items: Vec::new() }
    }
}

impl Relation {
    /// The positions of entry `i`; none for an entry the relation does not have.
    #[inline(always)]
    pub fn of(&self, i: usize) -> &[u32] {
        match self.starts.get(i..i + 2) {
            Some(&[start, end]) => self.items.get(start as usize..end as usize).unwrap_or_default(),
            _ => &[],
        }
    }

    /// Entries (VMs or hosts) the relation covers.
    pub fn entries(&self) -> usize {
        self.starts.len().saturating_sub(1)
    }

    /// Appends the next entry with `positions`.
    pub fn push(&mut self, positions: impl IntoIterator<Item = u32>) {
        self.items.extend(positions);
        self.starts.push(u32::try_from(self.items.len()).unwrap_or(u32::MAX));
    }

    /// Whether every entry's range lies inside `items` and `starts` never decreases.
    fn well_formed(&self, entries: usize) -> bool {
        self.entries() == entries
            && self.starts.first() == Some(&0)
            && self.starts.windows(2).all(|w| w[0] <= w[1])
            && self.starts.last().is_some_and(|&end| end as usize == self.items.len())
    }
}

/// A VM that needs a host (position in [`CompactInput::vms`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactVm {
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Restart priority.
    pub priority: RestartPriority,
    /// Position in [`CompactInput::anti_affinity_groups`].
    pub anti_affinity_group: Option<u32>,
}

/// A host that may receive VMs (position in [`CompactInput::hosts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactHost {
    /// Memory in MiB.
    pub total_memory_mib: u64,
    /// Memory not yet used by VMs, in MiB.
    pub free_memory_mib: u64,
    /// Physical CPU threads.
    pub total_vcpus: u32,
    /// vCPUs of the VMs already on it.
    pub allocated_vcpus: u32,
    /// In maintenance: takes no VM.
    pub maintenance: bool,
}

impl CompactHost {
    /// The most vCPUs this host may carry under `overcommit_percent`.
    pub fn vcpu_capacity(&self, overcommit_percent: u32) -> u64 {
        u64::from(self.total_vcpus) * u64::from(overcommit_percent) / 100
    }
}

/// Input of the compact placement engine (WIT `compact-input`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactInput {
    /// Why.
    pub reason: PlacementReason,
    /// VMs to place.
    pub vms: Vec<CompactVm>,
    /// Candidate hosts.
    pub hosts: Vec<CompactHost>,
    /// Per VM: labels the host must carry (positions in `labels`).
    pub vm_required_labels: Relation,
    /// Per VM: hosts it must not go to (positions in `hosts`).
    pub vm_avoid_hosts: Relation,
    /// Per VM: datastores holding its disks (positions in `datastores`).
    pub vm_datastores: Relation,
    /// Per host: its labels.
    pub host_labels: Relation,
    /// Per host: datastores it reaches.
    pub host_datastores: Relation,
    /// Per host: anti-affinity groups already present on it.
    pub host_anti_affinity_groups: Relation,
    /// Label names.
    pub labels: Vec<String>,
    /// Datastore names.
    pub datastores: Vec<String>,
    /// Anti-affinity group names.
    pub anti_affinity_groups: Vec<String>,
    /// Most vCPUs per host in percent of its threads.
    pub vcpu_overcommit_percent: u32,
    /// The plugin's settings.
    pub settings: Vec<Setting>,
}

/// Names → positions in one of the input's name lists, filled as names are met.
struct Table<'a> {
    index: HashMap<&'a str, u32, BuildHasherDefault<NameHasher>>,
    names: Vec<String>,
}

impl<'a> Table<'a> {
    fn new() -> Self {
        Self { index: HashMap::default(), names: Vec::new() }
    }

    fn position(&mut self, name: &'a str) -> u32 {
        let next = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        *self.index.entry(name).or_insert_with(|| {
            self.names.push(name.to_string());
            next
        })
    }
}

/// A position in one of the input's lists as the contract carries it.
pub(crate) fn position(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

impl CompactInput {
    /// The compact form of `input`: VMs and hosts keep their order (VM `i` is `input.vms[i]`);
    /// labels, datastores and groups are numbered as first met, hosts first. An avoided host
    /// that is not a candidate is left out (it could not be chosen anyway).
    pub fn from_named(input: &PlacementInput) -> Self {
        let hosts_by_name = name_index(input.hosts.iter().map(|h| h.name.as_str()));
        let (mut labels, mut datastores, mut groups) = (Table::new(), Table::new(), Table::new());
        let mut compact = CompactInput {
            reason: input.reason,
            vms: Vec::with_capacity(input.vms.len()),
            hosts: Vec::with_capacity(input.hosts.len()),
            vm_required_labels: Relation::default(),
            vm_avoid_hosts: Relation::default(),
            vm_datastores: Relation::default(),
            host_labels: Relation::default(),
            host_datastores: Relation::default(),
            host_anti_affinity_groups: Relation::default(),
            labels: Vec::new(),
            datastores: Vec::new(),
            anti_affinity_groups: Vec::new(),
            vcpu_overcommit_percent: input.vcpu_overcommit_percent,
            settings: input.settings.clone(),
        };
        for host in &input.hosts {
            compact.hosts.push(CompactHost {
                total_memory_mib: host.total_memory_mib,
                free_memory_mib: host.free_memory_mib,
                total_vcpus: host.total_vcpus,
                allocated_vcpus: host.allocated_vcpus,
                maintenance: host.maintenance,
            });
            compact.host_labels.push(host.labels.iter().map(|l| labels.position(l)));
            compact.host_datastores.push(host.datastores.iter().map(|d| datastores.position(d)));
            compact.host_anti_affinity_groups.push(host.anti_affinity_groups.iter().map(|g| groups.position(g)));
        }
        for vm in &input.vms {
            compact.vms.push(CompactVm {
                memory_mib: vm.memory_mib,
                vcpus: vm.vcpus,
                priority: vm.priority,
                anti_affinity_group: vm.anti_affinity_group.as_deref().map(|g| groups.position(g)),
            });
            compact.vm_required_labels.push(vm.required_host_labels.iter().map(|l| labels.position(l)));
            compact
                .vm_avoid_hosts
                .push(vm.avoid_hosts.iter().filter_map(|h| hosts_by_name.get(h.as_str())).map(|&i| position(i)));
            compact.vm_datastores.push(vm.datastores.iter().map(|d| datastores.position(d)));
        }
        compact.labels = labels.names;
        compact.datastores = datastores.names;
        compact.anti_affinity_groups = groups.names;
        compact
    }

    /// Whether every relation covers every VM (host) with ranges inside its items, and every
    /// position points into its list. Inputs made by [`CompactInput::from_named`] always are;
    /// the rules of [`crate::placement`] treat a malformed relation as empty.
    pub fn well_formed(&self) -> bool {
        let in_range = |r: &Relation, len: usize| r.items.iter().all(|&p| (p as usize) < len);
        let (vms, hosts) = (self.vms.len(), self.hosts.len());
        [&self.vm_required_labels, &self.vm_avoid_hosts, &self.vm_datastores].iter().all(|r| r.well_formed(vms))
            && [&self.host_labels, &self.host_datastores, &self.host_anti_affinity_groups]
                .iter()
                .all(|r| r.well_formed(hosts))
            && in_range(&self.vm_required_labels, self.labels.len())
            && in_range(&self.host_labels, self.labels.len())
            && in_range(&self.vm_avoid_hosts, hosts)
            && in_range(&self.vm_datastores, self.datastores.len())
            && in_range(&self.host_datastores, self.datastores.len())
            && in_range(&self.host_anti_affinity_groups, self.anti_affinity_groups.len())
            && self
                .vms
                .iter()
                .all(|vm| vm.anti_affinity_group.is_none_or(|g| (g as usize) < self.anti_affinity_groups.len()))
    }
}

/// VM `vm` placed on host `host` (positions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactAssignment {
    /// Position of the VM.
    pub vm: u32,
    /// Position of the host.
    pub host: u32,
}

/// VM `vm` (position) not placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactUnplaced {
    /// Position of the VM.
    pub vm: u32,
    /// Why, for the operator.
    pub reason: String,
}

/// The compact placement engine's answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompactPlacement {
    /// Placed VMs.
    pub assignments: Vec<CompactAssignment>,
    /// VMs without a host.
    pub unplaced: Vec<CompactUnplaced>,
}

impl CompactPlacement {
    /// The named answer for `input` (the input this answer's positions refer to). An entry
    /// whose position is out of range is left out: call it on a validated answer only
    /// ([`crate::placement::validate_compact`]), which refuses those.
    pub fn to_named(&self, input: &PlacementInput) -> Placement {
        let vm = |i: u32| input.vms.get(i as usize).map(|vm| vm.name.clone());
        let host = |i: u32| input.hosts.get(i as usize).map(|h| h.name.clone());
        Placement {
            assignments: self
                .assignments
                .iter()
                .filter_map(|a| Some(Assignment { vm: vm(a.vm)?, host: host(a.host)? }))
                .collect(),
            unplaced: self
                .unplaced
                .iter()
                .filter_map(|u| Some(UnplacedVm { vm: vm(u.vm)?, reason: u.reason.clone() }))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{CandidateHost, VmToPlace};

    fn host(name: &str, labels: &[&str], datastores: &[&str], groups: &[&str]) -> CandidateHost {
        CandidateHost {
            name: name.into(),
            total_memory_mib: 8192,
            free_memory_mib: 4096,
            total_vcpus: 8,
            allocated_vcpus: 2,
            labels: labels.iter().map(|s| s.to_string()).collect(),
            datastores: datastores.iter().map(|s| s.to_string()).collect(),
            maintenance: false,
            anti_affinity_groups: groups.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn vm(name: &str, labels: &[&str], avoid: &[&str], datastores: &[&str], group: Option<&str>) -> VmToPlace {
        VmToPlace {
            name: name.into(),
            memory_mib: 1024,
            vcpus: 2,
            priority: RestartPriority::Restart,
            required_host_labels: labels.iter().map(|s| s.to_string()).collect(),
            anti_affinity_group: group.map(str::to_string),
            avoid_hosts: avoid.iter().map(|s| s.to_string()).collect(),
            datastores: datastores.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn from_named_numbers_names_and_keeps_every_relation() {
        let input = PlacementInput {
            reason: PlacementReason::Evacuation,
            vms: vec![
                vm("a", &["gpu"], &["h2", "gone"], &["ds2"], Some("web")),
                vm("b", &[], &[], &["ds1", "ds3"], None),
            ],
            hosts: vec![host("h1", &["gpu", "ssd"], &["ds1", "ds2"], &[]), host("h2", &[], &["ds1"], &["web"])],
            vcpu_overcommit_percent: 300,
            settings: vec![Setting::new("strategy", "spread")],
        };
        let c = CompactInput::from_named(&input);
        assert!(c.well_formed());
        assert_eq!(c.labels, ["gpu", "ssd"]);
        assert_eq!(c.datastores, ["ds1", "ds2", "ds3"]);
        assert_eq!(c.anti_affinity_groups, ["web"]);
        assert_eq!(c.host_labels.of(0), [0, 1]);
        assert_eq!(c.host_labels.of(1), [] as [u32; 0]);
        assert_eq!(c.host_datastores.of(1), [0]);
        assert_eq!(c.host_anti_affinity_groups.of(1), [0]);
        assert_eq!(c.vm_required_labels.of(0), [0]);
        // `gone` is no candidate: left out.
        assert_eq!(c.vm_avoid_hosts.of(0), [1]);
        assert_eq!(c.vm_datastores.of(1), [0, 2]);
        assert_eq!(c.vms[0].anti_affinity_group, Some(0));
        assert_eq!(c.vms[1].anti_affinity_group, None);
        assert_eq!((c.vms.len(), c.hosts.len(), c.vcpu_overcommit_percent), (2, 2, 300));
        assert_eq!(c.hosts[0].allocated_vcpus, 2);
        assert_eq!(c.settings, input.settings);
        // Beyond the last entry, a relation has nothing.
        assert_eq!(c.vm_datastores.of(2), [] as [u32; 0]);

        let answer = CompactPlacement {
            assignments: vec![CompactAssignment { vm: 1, host: 1 }],
            unplaced: vec![CompactUnplaced { vm: 0, reason: "no".into() }],
        };
        let named = answer.to_named(&input);
        assert_eq!(named.assignments, [Assignment { vm: "b".into(), host: "h2".into() }]);
        assert_eq!(named.unplaced, [UnplacedVm { vm: "a".into(), reason: "no".into() }]);
    }

    #[test]
    fn malformed_relations_are_seen_and_read_as_empty() {
        let mut c = CompactInput::from_named(&PlacementInput {
            reason: PlacementReason::Failover,
            vms: vec![vm("a", &[], &[], &["ds1"], None)],
            hosts: vec![host("h1", &[], &["ds1"], &[])],
            vcpu_overcommit_percent: 400,
            settings: vec![],
        });
        assert!(c.well_formed());
        c.vm_datastores.starts = vec![0, 5];
        assert!(!c.well_formed());
        assert_eq!(c.vm_datastores.of(0), [] as [u32; 0]);
        c.vm_datastores.starts = vec![0, 1];
        c.vm_datastores.items = vec![7];
        assert!(!c.well_formed(), "a datastore position past the list");
        c.vm_datastores.items = vec![0];
        c.vms[0].anti_affinity_group = Some(0);
        assert!(!c.well_formed(), "a group position past the list");
    }
}
