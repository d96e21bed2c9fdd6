//! Capacity: the failover plan for `host-failures-to-tolerate`, the maximum number of host
//! failures the cluster survives, overcommit, memory and vCPUs by priority, and the
//! admission check.
//!
//! The plan asks the placement policy where the `restart` VMs of the k worst hosts (the
//! ones carrying the most `restart` memory) would go if they failed at once. Trying every
//! combination of k hosts is exponential; the worst-k rule is the one XenServer documents
//! for its planner and is exact when VMs are alike. The maximum is found by bisection
//! (failing more of the worst hosts never needs less room).

use std::collections::{BTreeMap, BTreeSet};

use halo_policy::{CandidateHost, PlacementInput, PlacementReason, RestartPriority, VmToPlace};
use serde::{Deserialize, Serialize};

use crate::config::{Admission, ClusterConfig, VmSpec};
use crate::policies::Policies;

/// Memory and vCPUs, by restart priority.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Usage {
    /// `restart` VMs: memory MiB.
    pub restart_mib: u64,
    /// `best-effort` VMs: memory MiB.
    pub best_effort_mib: u64,
    /// Unprotected VMs: memory MiB.
    pub unprotected_mib: u64,
    /// All VMs: vCPUs.
    pub vcpus: u64,
}

impl Usage {
    pub(crate) fn add(&mut self, vm: &VmSpec) {
        match vm.priority {
            RestartPriority::Restart => self.restart_mib += vm.memory_mib,
            RestartPriority::BestEffort => self.best_effort_mib += vm.memory_mib,
            RestartPriority::Unprotected => self.unprotected_mib += vm.memory_mib,
        }
        self.vcpus += u64::from(vm.vcpus);
    }

    /// All memory in use.
    pub fn memory_mib(&self) -> u64 {
        self.restart_mib + self.best_effort_mib + self.unprotected_mib
    }
}

/// One host's load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HostUsage {
    /// Host.
    pub host: String,
    /// Memory for VMs, MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// In use.
    pub used: Usage,
    /// In maintenance (takes no VMs).
    pub maintenance: bool,
}

/// The failover plan and what it says about the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FailoverPlan {
    /// `host-failures-to-tolerate`.
    pub target: u32,
    /// Host failures the cluster survives now (all `restart` VMs placed).
    pub tolerates: u32,
    /// `tolerates < target`: the plan cannot be kept.
    pub overcommitted: bool,
    /// The hosts assumed to fail for the target, and where their `restart` VMs would go.
    pub plan: Vec<(String, String)>,
    /// `restart` VMs the plan for the target cannot place, with the reason.
    pub unplaceable: Vec<(String, String)>,
    /// Usage per host.
    pub hosts: Vec<HostUsage>,
    /// Usage of the cluster.
    pub cluster: Usage,
    /// Hosts using more memory than they have.
    pub memory_overcommitted_hosts: Vec<String>,
}

/// (VM, host) or (VM, reason) pairs.
type Pairs = Vec<(String, String)>;

/// Where VMs run now: VM → host.
pub type Locations = BTreeMap<String, String>;

/// Computes the failover plan. `available` are the hosts that can take VMs (alive, not in
/// maintenance); VMs on other hosts are left out of the plan (they are being handled).
pub fn failover_plan(
    config: &ClusterConfig,
    locations: &Locations,
    available: &BTreeSet<String>,
    maintenance: &BTreeSet<String>,
    policies: &mut dyn Policies,
) -> FailoverPlan {
    let specs: BTreeMap<&str, &VmSpec> = config.vms.iter().map(|v| (v.name.as_str(), v)).collect();
    let mut hosts: Vec<HostUsage> = config
        .hosts
        .iter()
        .map(|h| HostUsage {
            host: h.name.clone(),
            memory_mib: h.memory_mib,
            vcpus: h.vcpus,
            used: Usage::default(),
            maintenance: maintenance.contains(&h.name),
        })
        .collect();
    let index: BTreeMap<String, usize> = hosts.iter().enumerate().map(|(i, h)| (h.host.clone(), i)).collect();
    let mut cluster = Usage::default();
    for (vm, host) in locations {
        if let (Some(spec), Some(&i)) = (specs.get(vm.as_str()), index.get(host)) {
            hosts[i].used.add(spec);
            cluster.add(spec);
        }
    }
    let memory_overcommitted_hosts =
        hosts.iter().filter(|h| h.used.memory_mib() > h.memory_mib).map(|h| h.host.clone()).collect();

    // The worst hosts first: most `restart` memory, then name.
    let mut worst: Vec<&HostUsage> = hosts.iter().filter(|h| available.contains(&h.host)).collect();
    worst.sort_by(|a, b| b.used.restart_mib.cmp(&a.used.restart_mib).then(a.host.cmp(&b.host)));
    let worst: Vec<String> = worst.iter().map(|h| h.host.clone()).collect();

    let mut attempt = |k: usize| -> (bool, Pairs, Pairs) {
        let failed: BTreeSet<&str> = worst.iter().take(k).map(String::as_str).collect();
        let input = plan_input(config, locations, &hosts, available, &failed, &specs);
        if input.vms.is_empty() {
            return (true, vec![], vec![]);
        }
        if input.hosts.is_empty() {
            let unplaced = input.vms.iter().map(|v| (v.name.clone(), "no host left".to_string())).collect();
            return (false, vec![], unplaced);
        }
        // Under the placement rules, from where the VMs of the surviving hosts run.
        let running: Locations = locations
            .iter()
            .filter(|(_, h)| !failed.contains(h.as_str()))
            .map(|(v, h)| (v.clone(), h.clone()))
            .collect();
        let answer = crate::rules::place(config, &input, &running, policies).outcome.answer;
        let assigned = answer.assignments.into_iter().map(|a| (a.vm, a.host)).collect();
        let unplaced: Vec<(String, String)> = answer.unplaced.into_iter().map(|u| (u.vm, u.reason)).collect();
        (unplaced.is_empty(), assigned, unplaced)
    };

    // Bisection for the largest k that places everything (k = 0 always does).
    let (mut good, mut bad) = (0usize, worst.len());
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        if attempt(mid).0 { good = mid } else { bad = mid }
    }
    if bad == worst.len() && !worst.is_empty() && attempt(bad).0 {
        good = bad;
    }
    let target = config.ha.host_failures_to_tolerate;
    let (_, plan, unplaceable) = attempt((target as usize).min(worst.len()));
    FailoverPlan {
        target,
        tolerates: good as u32,
        overcommitted: (good as u32) < target,
        plan,
        unplaceable,
        hosts,
        cluster,
        memory_overcommitted_hosts,
    }
}

fn plan_input(
    config: &ClusterConfig,
    locations: &Locations,
    hosts: &[HostUsage],
    available: &BTreeSet<String>,
    failed: &BTreeSet<&str>,
    specs: &BTreeMap<&str, &VmSpec>,
) -> PlacementInput {
    let mut groups: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (vm, host) in locations {
        if let Some(group) = specs.get(vm.as_str()).and_then(|s| s.anti_affinity_group.as_ref()) {
            groups.entry(host.as_str()).or_default().push(group.clone());
        }
    }
    let vms = locations
        .iter()
        .filter(|(_, host)| failed.contains(host.as_str()))
        .filter_map(|(vm, host)| specs.get(vm.as_str()).map(|s| (s, host)))
        .filter(|(s, _)| s.priority == RestartPriority::Restart)
        .map(|(s, host)| to_place(s, host))
        .collect();
    let candidates = hosts
        .iter()
        .filter(|h| available.contains(&h.host) && !failed.contains(h.host.as_str()) && !h.maintenance)
        .map(|h| candidate(config, h, groups.get(h.host.as_str()).cloned().unwrap_or_default()))
        .collect();
    PlacementInput {
        reason: PlacementReason::AdmissionCheck,
        vms,
        hosts: candidates,
        vcpu_overcommit_percent: config.ha.vcpu_overcommit_percent,
        settings: config.policy.placement.clone(),
    }
}

/// A VM as the placement policy sees it.
pub fn to_place(spec: &VmSpec, avoid: &str) -> VmToPlace {
    VmToPlace {
        name: spec.name.clone(),
        memory_mib: spec.memory_mib,
        vcpus: spec.vcpus,
        priority: spec.priority,
        required_host_labels: spec.required_host_labels.clone(),
        anti_affinity_group: spec.anti_affinity_group.clone(),
        avoid_hosts: vec![avoid.to_string()],
        datastores: spec.datastores.clone(),
    }
}

/// A host as the placement policy sees it.
pub fn candidate(config: &ClusterConfig, usage: &HostUsage, anti_affinity_groups: Vec<String>) -> CandidateHost {
    let labels = config.host(&usage.host).map(|h| h.labels.clone()).unwrap_or_default();
    CandidateHost {
        name: usage.host.clone(),
        total_memory_mib: usage.memory_mib,
        free_memory_mib: usage.memory_mib.saturating_sub(usage.used.memory_mib()),
        total_vcpus: usage.vcpus,
        allocated_vcpus: u32::try_from(usage.used.vcpus).unwrap_or(u32::MAX),
        labels,
        datastores: config.datastores.clone(),
        maintenance: usage.maintenance,
        anti_affinity_groups,
    }
}

/// The result of an admission check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdmissionVerdict {
    /// The plan still holds.
    Admitted,
    /// The plan would break; done anyway (admission = warn), with the warning.
    Warned(String),
    /// The plan would break; refused (admission = refuse), with the reason.
    Refused(String),
}

/// Checks whether a change (given as the locations and maintenance set after it) keeps the
/// failover plan; `what` names the change for the message.
pub fn admission_check(
    config: &ClusterConfig,
    after: (&Locations, &BTreeSet<String>, &BTreeSet<String>),
    before_tolerates: u32,
    what: &str,
    policies: &mut dyn Policies,
) -> (AdmissionVerdict, FailoverPlan) {
    let (locations, available, maintenance) = after;
    let plan = failover_plan(config, locations, available, maintenance, policies);
    if plan.tolerates >= plan.target || plan.tolerates >= before_tolerates {
        return (AdmissionVerdict::Admitted, plan);
    }
    let why = format!(
        "{what} would lower the host failures the cluster tolerates from {before_tolerates} to {} (target {})",
        plan.tolerates, plan.target
    );
    let verdict = match config.ha.admission {
        Admission::Warn => AdmissionVerdict::Warned(why),
        Admission::Refuse => AdmissionVerdict::Refused(why),
    };
    (verdict, plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::cluster;
    use crate::policies::BuiltinPolicies;

    fn spread(config: &ClusterConfig) -> Locations {
        config
            .vms
            .iter()
            .enumerate()
            .map(|(i, vm)| (vm.name.clone(), config.hosts[i % config.hosts.len()].name.clone()))
            .collect()
    }

    fn all_hosts(config: &ClusterConfig) -> BTreeSet<String> {
        config.hosts.iter().map(|h| h.name.clone()).collect()
    }

    #[test]
    fn four_hosts_half_full_tolerate_two_failures() {
        // 4 hosts × 16 GiB, 32 VMs × 1 GiB: 8 GiB per host. Losing 2 leaves 2 hosts with
        // 16 GiB of room for 16 GiB of VMs; losing 3 leaves 8 GiB for 24.
        let config = cluster(4, 32);
        let plan =
            failover_plan(&config, &spread(&config), &all_hosts(&config), &BTreeSet::new(), &mut BuiltinPolicies);
        assert_eq!(plan.tolerates, 2);
        assert!(!plan.overcommitted);
        assert_eq!(plan.cluster.restart_mib, 32 * 1024);
        assert_eq!(plan.plan.len(), 8, "the target (1 host) moves its 8 VMs");
    }

    #[test]
    fn a_full_cluster_is_overcommitted_and_names_what_it_cannot_place() {
        let config = cluster(2, 32);
        let plan =
            failover_plan(&config, &spread(&config), &all_hosts(&config), &BTreeSet::new(), &mut BuiltinPolicies);
        assert_eq!(plan.tolerates, 0);
        assert!(plan.overcommitted);
        assert_eq!(plan.unplaceable.len(), 16);
    }

    #[test]
    fn admission_refuses_maintenance_that_breaks_the_plan() {
        let mut config = cluster(3, 24);
        config.ha.admission = Admission::Refuse;
        let locations = spread(&config);
        let before = failover_plan(&config, &locations, &all_hosts(&config), &BTreeSet::new(), &mut BuiltinPolicies);
        assert_eq!(before.tolerates, 1);
        // host-1 in maintenance: its 8 VMs go to the two others (16 GiB each → 12 GiB used).
        let mut moved = locations.clone();
        for (i, host) in moved.values_mut().filter(|h| *h == "host-1").enumerate() {
            *host = if i % 2 == 0 { "host-2".into() } else { "host-3".into() };
        }
        let available: BTreeSet<String> = ["host-2".to_string(), "host-3".to_string()].into();
        let maintenance: BTreeSet<String> = ["host-1".to_string()].into();
        let (verdict, after) = admission_check(
            &config,
            (&moved, &available, &maintenance),
            before.tolerates,
            "host-1 entering maintenance",
            &mut BuiltinPolicies,
        );
        assert_eq!(after.tolerates, 0);
        assert!(matches!(&verdict, AdmissionVerdict::Refused(why) if why.contains("from 1 to 0")), "{verdict:?}");
    }
}
