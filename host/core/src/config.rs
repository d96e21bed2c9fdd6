//! The cluster's configuration as plain data, and its validation.
//!
//! Validation reports every problem at once, each with the key's path, and refuses timeouts
//! that would make a restart unsafe: a host must fence itself strictly before the others'
//! dead-time runs out, or a VM could run twice.

use halo_policy::{RestartPriority, Setting};
use serde::{Deserialize, Serialize};

use crate::Millis;

/// One host of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HostSpec {
    /// Unique host name.
    pub name: String,
    /// Memory available to VMs, MiB.
    pub memory_mib: u64,
    /// vCPUs available to VMs (before overcommit).
    pub vcpus: u32,
    /// Labels VMs may require.
    #[serde(default)]
    pub labels: Vec<String>,
    /// The host has fence devices (its BMC, a PDU): a master may power it off once it has
    /// been silent on every network and datastore for the detection time, and restart its
    /// VMs as soon as the device confirms it is off (`fence`).
    #[serde(default)]
    pub fenceable: bool,
    /// A reserved failover host: kept free of VMs (no evacuation, migration or operator start
    /// goes there) and used first at failover (`rules`).
    #[serde(default)]
    pub reserved: bool,
}

/// One VM halo knows about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct VmSpec {
    /// Unique VM name (the libvirt domain name).
    pub name: String,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Restart priority; `unprotected` VMs are never restarted.
    pub priority: RestartPriority,
    /// Restart order: 0 first.
    #[serde(default)]
    pub order: u32,
    /// Restart group (started in the same wave).
    #[serde(default)]
    pub group: Option<String>,
    /// VMs that must be up before this one.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Host labels this VM needs.
    #[serde(default)]
    pub required_host_labels: Vec<String>,
    /// At most one VM of a group per host.
    #[serde(default)]
    pub anti_affinity_group: Option<String>,
    /// The datastores holding its disks (names of `datastores`): it runs only on a host that
    /// reaches them, and a host that loses one applies the storage response to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datastores: Vec<String>,
}

impl VmSpec {
    /// The VM as the isolation policy sees it (isolation and storage decisions).
    pub fn info(&self) -> halo_policy::VmInfo {
        halo_policy::VmInfo {
            name: self.name.clone(),
            priority: self.priority,
            order: self.order,
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
            labels: vec![],
        }
    }

    /// Whether HA restarts this VM.
    pub fn protected(&self) -> bool {
        self.priority != RestartPriority::Unprotected
    }
}

/// Timeouts of failure detection, isolation and fencing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Timeouts {
    /// Network heartbeat period, per network.
    pub heartbeat_interval_ms: Millis,
    /// Datastore heartbeat period (write by every host, read by the master).
    pub datastore_interval_ms: Millis,
    /// A host silent this long on every network and on every datastore is pinged; if it does
    /// not answer it is failed and its VMs are restarted.
    pub dead_time_ms: Millis,
    /// A peer heard within this time counts for the master election (master loss → a new
    /// master after this much silence).
    pub election_timeout_ms: Millis,
    /// A host that hears no agent at all for this long pings its isolation addresses.
    pub isolation_time_ms: Millis,
    /// A host that reaches neither a quorum of peers nor a datastore for this long stops its
    /// protected VMs. Must be shorter than the dead-time by at least two heartbeat intervals.
    pub fence_timeout_ms: Millis,
    /// A ping without an answer after this long counts as no answer.
    pub ping_timeout_ms: Millis,
    /// A start that has not reported back after this long counts as failed.
    pub start_timeout_ms: Millis,
    /// A host with fence devices silent this long on every network and every datastore is
    /// powered off through them; once a device confirms it is off its VMs are restarted at
    /// once, without waiting out the dead-time. Such a host, when it reaches no quorum and no
    /// datastore for this long less a heartbeat interval, pauses its protected VMs (so a
    /// device that says "off" wrongly never lets a VM run twice).
    pub detection_time_ms: Millis,
    /// How often the master asks every fence device for its host's power state (`status`): a
    /// device that fails it raises an alert before it is needed.
    pub fence_monitor_interval_ms: Millis,
    /// First retry delay for a `restart` VM that could not be placed or started; doubles.
    pub retry_backoff_ms: Millis,
    /// Upper bound of the retry delay.
    pub retry_backoff_max_ms: Millis,
}

impl Timeouts {
    /// A fenceable host silent this long (the detection time less one heartbeat interval) is
    /// powered off: the fence call overlaps the last interval of the detection time, after
    /// which its VMs restart if a device confirmed it off. A host cut off from everything holds
    /// its VMs at the same point — before any restart can come.
    pub fn fence_after_ms(&self) -> Millis {
        self.detection_time_ms.saturating_sub(self.heartbeat_interval_ms)
    }

    /// One heartbeat a second, a 12 s dead-time: for clusters whose management network or
    /// datastores have pauses of seconds (the defaults before decision 0005). The unit tests
    /// and the simulator's matrix use it: they feed heartbeats once a second.
    pub const CONSERVATIVE: Timeouts = Timeouts {
        heartbeat_interval_ms: 1_000,
        datastore_interval_ms: 1_000,
        dead_time_ms: 12_000,
        election_timeout_ms: 3_000,
        isolation_time_ms: 5_000,
        fence_timeout_ms: 9_000,
        ping_timeout_ms: 1_000,
        start_timeout_ms: 30_000,
        detection_time_ms: 4_000,
        fence_monitor_interval_ms: 60_000,
        retry_backoff_ms: 2_000,
        retry_backoff_max_ms: 60_000,
    };
}

/// The defaults detect a dead host in 3 s (decision 0005: halo's safety does not rest on the
/// dead-time — claims and self-fencing do — so it can be short; `halo sim` and the lab show what
/// longer values cost).
impl Default for Timeouts {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 250,
            datastore_interval_ms: 250,
            dead_time_ms: 3_000,
            election_timeout_ms: 1_000,
            isolation_time_ms: 1_500,
            fence_timeout_ms: 2_000,
            ping_timeout_ms: 500,
            start_timeout_ms: 30_000,
            detection_time_ms: 1_000,
            fence_monitor_interval_ms: 60_000,
            retry_backoff_ms: 2_000,
            retry_backoff_max_ms: 60_000,
        }
    }
}

/// Admission control: what happens to an action that would break the failover plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Admission {
    /// Do it, with a warning.
    Warn,
    /// Refuse it.
    Refuse,
}

/// Cluster-wide HA settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct HaSettings {
    /// HA on for the cluster.
    pub enabled: bool,
    /// Host failures the failover plan must survive.
    pub host_failures_to_tolerate: u32,
    /// A master that sees more than this share of hosts failed at once suspects itself and
    /// does not restart.
    pub blast_radius_percent: u32,
    /// Admission control for protect / start / enter maintenance.
    pub admission: Admission,
    /// vCPU overcommit allowed, percent of a host's vCPUs.
    pub vcpu_overcommit_percent: u32,
    /// A protected VM that crashes more than this often within the window is left stopped.
    pub restart_limit: u32,
    /// The window of the restart limit.
    pub restart_window_ms: Millis,
    /// Fence also when a quorum of peers is unreachable even if a datastore is reachable.
    pub quorum_fencing: bool,
    /// What the master does with a protected VM it finds running on more than one host
    /// (started outside halo): always an alert; by default the copy halo does not keep is
    /// paused.
    pub on_duplicate: OnDuplicate,
    /// What the master does with a host its health provider reports degraded (proactive HA).
    pub on_degraded: HealthResponse,
    /// What the master does with a host its health provider reports failing.
    pub on_failing: HealthResponse,
}

/// What proactive HA does with a host that reports it is degraded or failing (vSphere's
/// proactive HA in its mixed mode: quarantine for moderate, maintenance for severe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthResponse {
    /// Only events and status.
    Ignore,
    /// No new VMs go there (balancing, evacuations and migrations to the cluster avoid it;
    /// a failover still may, when nothing else fits); its VMs stay.
    Quarantine,
    /// Evacuated by live migration as for maintenance (within the failover plan), taken back
    /// into service when it reports healthy again.
    Maintenance,
}

/// What the master does with the extra copies of a protected VM running on two hosts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnDuplicate {
    /// Pause every copy but the one halo keeps (not destroyed: an operator inspects it).
    #[default]
    Pause,
    /// Only raise the alert.
    Alert,
}

impl Default for HaSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            host_failures_to_tolerate: 1,
            blast_radius_percent: 50,
            admission: Admission::Warn,
            vcpu_overcommit_percent: 400,
            restart_limit: 3,
            restart_window_ms: 600_000,
            quorum_fencing: false,
            on_duplicate: OnDuplicate::Pause,
            on_degraded: HealthResponse::Quarantine,
            on_failing: HealthResponse::Maintenance,
        }
    }
}

/// Settings handed to each policy plugin (key/value pairs, the plugin's own).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct PolicySettings {
    /// For the isolation policy.
    pub isolation: Vec<Setting>,
    /// For the placement engine.
    pub placement: Vec<Setting>,
    /// For the restart policy.
    pub restart: Vec<Setting>,
    /// For the balancing policy.
    pub balance: Vec<Setting>,
}

/// The whole cluster as every node knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClusterConfig {
    /// The hosts.
    pub hosts: Vec<HostSpec>,
    /// Management networks heartbeats run on (e.g. `A`, `B`).
    pub networks: Vec<String>,
    /// Datastores heartbeats and claims are written to.
    pub datastores: Vec<String>,
    /// The one store claims are taken on, when the coordination backend is etcd (decision
    /// 0017): a linearizable store, so claims never go to a datastore. `None` (the datastore
    /// backend): the first datastore this node wrote to lately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_store: Option<String>,
    /// Addresses an isolated host pings to tell isolation from a lonely cluster.
    pub isolation_addresses: Vec<String>,
    /// The VMs.
    pub vms: Vec<VmSpec>,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// HA settings.
    #[serde(default)]
    pub ha: HaSettings,
    /// Policy settings.
    #[serde(default)]
    pub policy: PolicySettings,
    /// Placement rules (`rules`).
    #[serde(default)]
    pub rules: Vec<crate::rules::Rule>,
    /// Balancing (`balance`).
    #[serde(default)]
    pub balance: crate::balance::BalanceSettings,
    /// Where each host and VM is in the lists, by name (not configured: built on first use).
    #[serde(skip)]
    pub names: NameIndex,
}

/// The positions of the hosts and VMs in a [`ClusterConfig`] by name, built on its first
/// lookup: a 1,000-host, 4,000-VM cluster looks names up on every evaluation, and a search
/// through the lists made that quadratic. Not part of the configuration: always equal, never
/// (de)serialized. A lookup checks the name it finds, so lists changed after the index was
/// built are still answered right (by a search).
#[derive(Clone, Default)]
pub struct NameIndex(std::sync::OnceLock<NameMaps>);

#[derive(Clone)]
struct NameMaps {
    hosts: rustc_hash::FxHashMap<String, usize>,
    vms: rustc_hash::FxHashMap<String, usize>,
}

impl PartialEq for NameIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for NameIndex {}

impl std::fmt::Debug for NameIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NameIndex")
    }
}

/// Every problem of a config, each with its key's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the cluster config has {} problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

impl ClusterConfig {
    /// Checks the whole config and reports every problem at once.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut problems = Vec::new();
        let t = &self.timeouts;
        if self.hosts.is_empty() {
            problems.push("hosts: at least one host is needed".to_string());
        }
        if self.networks.is_empty() {
            problems.push("networks: at least one management network is needed".to_string());
        }
        duplicates("hosts", self.hosts.iter().map(|h| h.name.as_str()), &mut problems);
        duplicates("networks", self.networks.iter().map(String::as_str), &mut problems);
        duplicates("datastores", self.datastores.iter().map(String::as_str), &mut problems);
        duplicates("vms", self.vms.iter().map(|v| v.name.as_str()), &mut problems);
        if let Some(store) = self.claim_store.as_ref().filter(|s| !self.datastores.contains(s)) {
            problems
                .push(format!("claim-store: `{store}` is not one of the datastores ({})", self.datastores.join(", ")));
        }
        for vm in &self.vms {
            for datastore in vm.datastores.iter().filter(|d| !self.datastores.contains(d)) {
                problems.push(format!(
                    "vms.{}.datastores: `{datastore}` is not a configured datastore ({})",
                    vm.name,
                    if self.datastores.is_empty() {
                        "none is configured".to_string()
                    } else {
                        self.datastores.join(", ")
                    }
                ));
            }
        }
        for (key, value) in [
            ("timeouts.heartbeat-interval-ms", t.heartbeat_interval_ms),
            ("timeouts.datastore-interval-ms", t.datastore_interval_ms),
            ("timeouts.ping-timeout-ms", t.ping_timeout_ms),
            ("timeouts.start-timeout-ms", t.start_timeout_ms),
            ("timeouts.retry-backoff-ms", t.retry_backoff_ms),
            ("timeouts.fence-monitor-interval-ms", t.fence_monitor_interval_ms),
        ] {
            if value == 0 {
                problems.push(format!("{key}: must be more than 0"));
            }
        }
        if t.fence_timeout_ms + 2 * t.heartbeat_interval_ms > t.dead_time_ms {
            problems.push(format!(
                "timeouts.fence-timeout-ms: {} ms + two heartbeat intervals ({} ms) must not exceed \
                 timeouts.dead-time-ms ({} ms): a cut-off host must stop its VMs before the others \
                 restart them, or a VM could run twice",
                t.fence_timeout_ms,
                2 * t.heartbeat_interval_ms,
                t.dead_time_ms
            ));
        }
        if t.detection_time_ms < 3 * t.heartbeat_interval_ms || t.detection_time_ms >= t.fence_timeout_ms {
            problems.push(format!(
                "timeouts.detection-time-ms: {} ms must be at least three heartbeat intervals ({} ms) and shorter than timeouts.fence-timeout-ms ({} ms)",
                t.detection_time_ms,
                3 * t.heartbeat_interval_ms,
                t.fence_timeout_ms
            ));
        }
        if t.isolation_time_ms >= t.fence_timeout_ms {
            problems.push(format!(
                "timeouts.isolation-time-ms: {} ms must be shorter than timeouts.fence-timeout-ms ({} ms)",
                t.isolation_time_ms, t.fence_timeout_ms
            ));
        }
        if t.election_timeout_ms < 2 * t.heartbeat_interval_ms {
            problems.push(format!(
                "timeouts.election-timeout-ms: {} ms must be at least two heartbeat intervals ({} ms)",
                t.election_timeout_ms,
                2 * t.heartbeat_interval_ms
            ));
        }
        if t.datastore_interval_ms * 3 > t.dead_time_ms {
            problems.push("timeouts.datastore-interval-ms: at most a third of the dead-time".to_string());
        }
        if t.retry_backoff_max_ms < t.retry_backoff_ms {
            problems.push("timeouts.retry-backoff-max-ms: must be at least timeouts.retry-backoff-ms".to_string());
        }
        if self.ha.blast_radius_percent == 0 || self.ha.blast_radius_percent > 100 {
            problems.push("ha.blast-radius-percent: must be 1..=100".to_string());
        }
        if self.ha.vcpu_overcommit_percent < 100 {
            problems.push("ha.vcpu-overcommit-percent: must be at least 100".to_string());
        }
        if self.ha.host_failures_to_tolerate as usize >= self.hosts.len().max(1) {
            problems.push(format!(
                "ha.host-failures-to-tolerate: {} with {} host(s); at most {}",
                self.ha.host_failures_to_tolerate,
                self.hosts.len(),
                self.hosts.len().saturating_sub(1)
            ));
        }
        let names: std::collections::BTreeSet<&str> = self.vms.iter().map(|v| v.name.as_str()).collect();
        for (i, vm) in self.vms.iter().enumerate() {
            if vm.memory_mib == 0 {
                problems.push(format!("vms[{i}] ({}).memory-mib: must be more than 0", vm.name));
            }
            for dep in &vm.depends_on {
                if !names.contains(dep.as_str()) {
                    problems.push(format!("vms[{i}] ({}).depends-on: no VM named `{dep}`", vm.name));
                }
            }
        }
        problems.extend(crate::rules::problems(self));
        problems.extend(self.balance.problems());
        if problems.is_empty() { Ok(()) } else { Err(ConfigErrors(problems)) }
    }

    /// The spec of VM `name`.
    pub fn vm(&self, name: &str) -> Option<&VmSpec> {
        let index = self.name_maps().vms.get(name).and_then(|&i| self.vms.get(i)).filter(|v| v.name == name);
        index.or_else(|| self.vms.iter().find(|v| v.name == name))
    }

    /// The spec of host `name`.
    pub fn host(&self, name: &str) -> Option<&HostSpec> {
        self.host_index(name).and_then(|i| self.hosts.get(i))
    }

    /// The position of host `name` in `hosts`.
    pub fn host_index(&self, name: &str) -> Option<usize> {
        let index =
            self.name_maps().hosts.get(name).copied().filter(|&i| self.hosts.get(i).is_some_and(|h| h.name == name));
        index.or_else(|| self.hosts.iter().position(|h| h.name == name))
    }

    fn name_maps(&self) -> &NameMaps {
        self.names.0.get_or_init(|| NameMaps {
            hosts: self.hosts.iter().enumerate().map(|(i, h)| (h.name.clone(), i)).collect(),
            vms: self.vms.iter().enumerate().map(|(i, v)| (v.name.clone(), i)).collect(),
        })
    }
}

fn duplicates<'a>(key: &str, names: impl Iterator<Item = &'a str>, problems: &mut Vec<String>) {
    let mut seen = std::collections::BTreeSet::new();
    for name in names {
        if name.is_empty() {
            problems.push(format!("{key}: a name is empty"));
        } else if !seen.insert(name) {
            problems.push(format!("{key}: `{name}` appears twice"));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn cluster(hosts: usize, vms: usize) -> ClusterConfig {
        ClusterConfig {
            hosts: (1..=hosts)
                .map(|i| HostSpec {
                    name: format!("host-{i}"),
                    memory_mib: 16_384,
                    vcpus: 16,
                    labels: vec![],
                    fenceable: false,
                    reserved: false,
                })
                .collect(),
            networks: vec!["A".into(), "B".into()],
            datastores: vec!["ds1".into()],
            isolation_addresses: vec!["gw-A".into(), "gw-B".into()],
            vms: (1..=vms)
                .map(|i| VmSpec {
                    name: format!("vm-{i}"),
                    memory_mib: 1024,
                    vcpus: 1,
                    priority: RestartPriority::Restart,
                    order: 0,
                    group: None,
                    depends_on: vec![],
                    required_host_labels: vec![],
                    anti_affinity_group: None,
                    datastores: vec![],
                })
                .collect(),
            timeouts: Timeouts::CONSERVATIVE,
            ha: HaSettings::default(),
            policy: PolicySettings::default(),
            rules: Vec::new(),
            balance: Default::default(),
            claim_store: None,
            names: Default::default(),
        }
    }

    #[test]
    fn the_default_config_is_valid() {
        assert_eq!(cluster(4, 12).validate(), Ok(()));
        let mut config = cluster(4, 12);
        config.timeouts = Timeouts::default();
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn a_fence_timeout_reaching_the_dead_time_is_refused_with_every_other_problem() {
        let mut config = cluster(2, 2);
        config.timeouts.fence_timeout_ms = 11_000;
        config.vms[1].name = "vm-1".into();
        config.vms[0].depends_on = vec!["nope".into()];
        let problems = config.validate().expect_err("refused").0;
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].contains("vms: `vm-1` appears twice"), "{problems:#?}");
        assert!(problems.iter().any(|p| p.starts_with("timeouts.fence-timeout-ms") && p.contains("run twice")));
        assert!(problems.iter().any(|p| p.contains("no VM named `nope`")));
    }
}
