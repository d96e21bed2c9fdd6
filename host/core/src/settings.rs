//! Run-time VM settings: what protecting or unprotecting a VM sets, and how the copies of
//! those settings on the datastores become the cluster configuration in force.
//!
//! Rules written once, here (the API and the agent's catalog task only carry them out):
//! - a protect request changes only what it names; the rest comes from the VM's spec in force
//!   (or the defaults for a VM halo did not know), memory and vCPUs from the domain;
//! - a VM whose domain cannot be protected (local disks, …) is refused, unless it is being
//!   unprotected;
//! - of two copies of one VM's record (two datastores), the higher revision wins;
//! - a damaged record never unprotects its VM: the copy read before stays in force.

use std::collections::BTreeMap;

use halo_policy::RestartPriority;
use serde::Deserialize;

use crate::config::{ClusterConfig, VmSpec};

/// What an operator asks to change when protecting (or unprotecting) a VM. Every field is
/// optional: what is not named stays as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ProtectRequest {
    /// `restart` or `best-effort` (unprotecting sets `unprotected`).
    pub priority: Option<RestartPriority>,
    /// Restart order: 0 first.
    pub order: Option<u32>,
    /// Restart group.
    pub group: Option<String>,
    /// VMs that must be up first.
    pub depends_on: Option<Vec<String>>,
    /// Host labels the VM needs.
    pub required_host_labels: Option<Vec<String>>,
    /// At most one VM of this group per host.
    pub anti_affinity_group: Option<String>,
    /// The datastores holding its disks (default: those its domain's disks are found on).
    pub datastores: Option<Vec<String>>,
}

impl ProtectRequest {
    /// The request that unprotects a VM (its other settings stay, for when it is protected
    /// again).
    pub fn unprotect() -> Self {
        ProtectRequest { priority: Some(RestartPriority::Unprotected), ..ProtectRequest::default() }
    }
}

/// What the VM's libvirt domain says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainFacts {
    /// Memory, MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Why the domain cannot be restarted on another host (empty: it can).
    pub problems: Vec<String>,
    /// The configured datastores its disks are on (found by the agent from the disks' NFS
    /// server and export).
    pub datastores: Vec<String>,
}

/// Why a protect request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtectError {
    /// `protect` with priority `unprotected`.
    #[error("priority `unprotected` is not a protection: unprotect the VM instead")]
    UnprotectedPriority,
    /// The domain cannot run on another host.
    #[error("{vm} cannot be protected: {}", problems.join("; "))]
    NotProtectable {
        /// The VM.
        vm: String,
        /// Why.
        problems: Vec<String>,
    },
    /// A dependency that is not another VM halo knows.
    #[error("depends-on: `{0}` is not another VM halo knows")]
    UnknownDependency(String),
}

/// The spec a protect (or unprotect) request sets for `vm`. `in_force` is the cluster
/// configuration the agent decides with now.
pub fn protection_spec(
    vm: &str,
    request: ProtectRequest,
    in_force: &ClusterConfig,
    domain: &DomainFacts,
    unprotecting: bool,
) -> Result<VmSpec, ProtectError> {
    if !unprotecting && request.priority == Some(RestartPriority::Unprotected) {
        return Err(ProtectError::UnprotectedPriority);
    }
    let existing = in_force.vms.iter().find(|v| v.name == vm);
    // Protecting a VM that is unprotected now (never protected, or unprotected earlier) without
    // naming a priority protects it as `restart`: a protect never leaves a VM unprotected.
    let priority = match request.priority.or(existing.map(|v| v.priority)) {
        Some(RestartPriority::Unprotected) if !unprotecting => RestartPriority::Restart,
        Some(priority) => priority,
        None => RestartPriority::Restart,
    };
    if priority != RestartPriority::Unprotected && !domain.problems.is_empty() {
        return Err(ProtectError::NotProtectable { vm: vm.to_string(), problems: domain.problems.clone() });
    }
    let depends_on = request.depends_on.or(existing.map(|v| v.depends_on.clone())).unwrap_or_default();
    if let Some(missing) = depends_on.iter().find(|d| d.as_str() == vm || !in_force.vms.iter().any(|v| v.name == **d)) {
        return Err(ProtectError::UnknownDependency(missing.clone()));
    }
    Ok(VmSpec {
        name: vm.to_string(),
        memory_mib: existing.map_or(domain.memory_mib, |v| v.memory_mib).max(1),
        vcpus: existing.map_or(domain.vcpus, |v| v.vcpus).max(1),
        priority,
        order: request.order.or(existing.map(|v| v.order)).unwrap_or(0),
        group: request.group.or(existing.and_then(|v| v.group.clone())),
        depends_on,
        required_host_labels: request
            .required_host_labels
            .or(existing.map(|v| v.required_host_labels.clone()))
            .unwrap_or_default(),
        anti_affinity_group: request.anti_affinity_group.or(existing.and_then(|v| v.anti_affinity_group.clone())),
        datastores: request
            .datastores
            .or_else(|| existing.map(|v| v.datastores.clone()).filter(|d| !d.is_empty()))
            .unwrap_or_else(|| domain.datastores.clone()),
    })
}

/// One copy of a VM's run-time record, as one datastore holds it.
pub trait RuntimeRecord {
    /// The VM.
    fn vm(&self) -> &str;
    /// Raised at every change: of two copies, the higher wins.
    fn revision(&self) -> u64;
    /// The settings it carries (`None`: protected with `halo.toml`'s entry).
    fn spec(&self) -> Option<&VmSpec>;
}

/// One datastore's records as read now, with the ones it could not read: a damaged record
/// keeps the copy read before (`previous`), so it never unprotects its VM; a damaged record
/// of a VM not read before is left out. Sorted by VM.
pub fn keep_read_before<R: RuntimeRecord + Clone>(previous: &[R], mut fresh: Vec<R>, damaged: &[String]) -> Vec<R> {
    for name in damaged {
        if !fresh.iter().any(|r| r.vm() == name) {
            fresh.extend(previous.iter().find(|r| r.vm() == name).cloned());
        }
    }
    fresh.sort_by(|a, b| a.vm().cmp(b.vm()));
    fresh
}

/// The newest copy of each VM's record among the copies given (several datastores'): the
/// higher revision wins; of equal revisions, the first seen.
pub fn newest<'a, R: RuntimeRecord>(copies: impl IntoIterator<Item = &'a R>) -> BTreeMap<&'a str, &'a R> {
    let mut newest: BTreeMap<&str, &R> = BTreeMap::new();
    for copy in copies {
        if newest.get(copy.vm()).is_none_or(|r| r.revision() < copy.revision()) {
            newest.insert(copy.vm(), copy);
        }
    }
    newest
}

/// `halo.toml`'s cluster (`base`) with the run-time changes over it: each spec takes the
/// place of its VM's entry (or adds the VM), and HA on/off when set.
pub fn merge<'a>(
    base: &ClusterConfig,
    specs: impl IntoIterator<Item = &'a VmSpec>,
    ha_enabled: Option<bool>,
) -> ClusterConfig {
    let mut merged = base.clone();
    for spec in specs {
        match merged.vms.iter_mut().find(|v| v.name == spec.name) {
            Some(v) => *v = spec.clone(),
            None => merged.vms.push(spec.clone()),
        }
    }
    if let Some(on) = ha_enabled {
        merged.ha.enabled = on;
    }
    merged
}

#[cfg(test)]
mod tests {
    use halo_policy::RestartPriority;

    use super::*;
    use crate::config::{ClusterConfig, HostSpec, VmSpec};

    fn spec(name: &str) -> VmSpec {
        VmSpec {
            name: name.into(),
            memory_mib: 1024,
            vcpus: 2,
            priority: RestartPriority::Restart,
            order: 3,
            group: Some("db".into()),
            depends_on: vec![],
            required_host_labels: vec!["ssd".into()],
            anti_affinity_group: Some("replicas".into()),
            datastores: vec![],
        }
    }

    fn cluster(vms: Vec<VmSpec>) -> ClusterConfig {
        let mut c = ClusterConfig {
            hosts: (1..=3)
                .map(|i| HostSpec {
                    name: format!("host-{i}"),
                    memory_mib: 8192,
                    vcpus: 8,
                    labels: vec![],
                    fenceable: false,
                    reserved: false,
                })
                .collect(),
            networks: vec!["A".into()],
            datastores: vec!["ds1".into()],
            isolation_addresses: vec![],
            vms,
            timeouts: Default::default(),
            ha: Default::default(),
            policy: Default::default(),
            rules: Vec::new(),
            balance: Default::default(),
            claim_store: None,
            names: Default::default(),
        };
        c.ha.enabled = true;
        c
    }

    fn domain() -> DomainFacts {
        DomainFacts { memory_mib: 512, vcpus: 1, problems: vec![], datastores: vec![] }
    }

    #[test]
    fn a_protect_request_changes_only_what_it_names() {
        let in_force = cluster(vec![spec("db"), spec("web")]);
        let request = ProtectRequest { order: Some(7), ..ProtectRequest::default() };
        let changed = protection_spec("db", request, &in_force, &domain(), false).expect("protect");
        assert_eq!(changed, VmSpec { order: 7, ..spec("db") }, "labels, group and anti-affinity stay");

        let unprotected = protection_spec("db", ProtectRequest::unprotect(), &in_force, &domain(), true).expect("ok");
        assert_eq!(unprotected, VmSpec { priority: RestartPriority::Unprotected, ..spec("db") });

        // Protected again without a priority (the page's button, `halo vm protect db`): restart.
        let in_force = cluster(vec![unprotected, spec("web")]);
        let again = protection_spec("db", ProtectRequest::default(), &in_force, &domain(), false).expect("protect");
        assert_eq!(again, spec("db"), "protected again as restart, the rest as it was");
    }

    #[test]
    fn a_new_vm_takes_the_defaults_and_its_domains_size() {
        let in_force = cluster(vec![spec("db")]);
        let request = ProtectRequest { depends_on: Some(vec!["db".into()]), ..ProtectRequest::default() };
        let new = protection_spec("web", request, &in_force, &domain(), false).expect("protect");
        assert_eq!((new.memory_mib, new.vcpus, new.priority, new.order), (512, 1, RestartPriority::Restart, 0));
        assert_eq!((new.group, new.depends_on, new.anti_affinity_group), (None, vec!["db".to_string()], None));
    }

    #[test]
    fn what_cannot_be_protected_is_refused_with_why() {
        let in_force = cluster(vec![spec("db")]);
        let local = DomainFacts { problems: vec!["disk /var/lib/x.qcow2 is not on shared storage".into()], ..domain() };
        let refused = protection_spec("web", ProtectRequest::default(), &in_force, &local, false);
        assert!(matches!(&refused, Err(ProtectError::NotProtectable { problems, .. }) if problems.len() == 1));
        // Unprotecting such a VM is always allowed.
        assert!(protection_spec("db", ProtectRequest::unprotect(), &in_force, &local, true).is_ok());

        let unprotected = ProtectRequest { priority: Some(RestartPriority::Unprotected), ..ProtectRequest::default() };
        assert_eq!(
            protection_spec("db", unprotected, &in_force, &domain(), false),
            Err(ProtectError::UnprotectedPriority)
        );
        for missing in ["nope", "web"] {
            let request = ProtectRequest { depends_on: Some(vec![missing.into()]), ..ProtectRequest::default() };
            let refused = protection_spec("web", request, &in_force, &domain(), false);
            assert_eq!(refused, Err(ProtectError::UnknownDependency(missing.into())), "itself or unknown");
        }
    }

    #[derive(Debug, Clone, PartialEq)]
    struct Copy(&'static str, u64, Option<VmSpec>);

    impl RuntimeRecord for Copy {
        fn vm(&self) -> &str {
            self.0
        }
        fn revision(&self) -> u64 {
            self.1
        }
        fn spec(&self) -> Option<&VmSpec> {
            self.2.as_ref()
        }
    }

    #[test]
    fn the_higher_revision_wins_and_a_damaged_record_never_unprotects() {
        let ds1 = vec![Copy("db", 5, None), Copy("web", 9, None)];
        let ds2 = vec![Copy("db", 7, None), Copy("web", 2, None)];
        let newest = newest(ds1.iter().chain(&ds2));
        assert_eq!(newest.values().map(|c| (c.0, c.1)).collect::<Vec<_>>(), [("db", 7), ("web", 9)]);

        // db's record is damaged on this read: the copy read before stays; a damaged record of
        // a VM never read before is left out; a VM whose record is gone is gone.
        let fresh = vec![Copy("web", 10, None)];
        let kept = keep_read_before(&ds1, fresh, &["db".into(), "new".into()]);
        assert_eq!(kept, vec![Copy("db", 5, None), Copy("web", 10, None)]);
        assert_eq!(keep_read_before(&ds1, vec![], &[]), vec![]);
    }

    #[test]
    fn run_time_specs_take_the_place_of_halo_toml_entries() {
        let base = cluster(vec![spec("db")]);
        let changed = VmSpec { priority: RestartPriority::BestEffort, ..spec("db") };
        let added = spec("web");
        let merged = merge(&base, [&changed, &added], Some(false));
        assert_eq!(merged.vms, vec![changed, added]);
        assert!(!merged.ha.enabled);
        assert_eq!(merge(&base, [], None), base, "nothing on the datastores: halo.toml as it is");
    }
}
