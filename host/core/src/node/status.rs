//! What a node knows, as one serialisable picture: the API, the CLI's `halo status` and the
//! status page all read this. Pure reads of the node, plus the "what if these hosts failed"
//! question, which asks the placement policy like a real failover would.

use std::collections::BTreeSet;

use halo_policy::{PlacementReason, RestartPriority};
use serde::{Deserialize, Serialize};

use super::master::Restart;
use super::{Isolation, Node};
use crate::Millis;
use crate::capacity::{self, AdmissionVerdict, FailoverPlan};
use crate::classify::{Signals, Verdict};
use crate::config::VmSpec;
use crate::policies::Policies;

/// The cluster as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterStatus {
    /// The node answering.
    pub host: String,
    /// The master it follows, and its epoch.
    pub master: Option<String>,
    /// The master's epoch.
    pub epoch: u64,
    /// HA on for the cluster.
    pub ha_enabled: bool,
    /// Emergency HA disable of this host.
    pub host_ha_disabled: bool,
    /// This host fenced itself.
    pub fenced: bool,
    /// This host's isolation state: `connected`, `checking`, `lonely`, `isolated`.
    pub isolation: String,
    /// Hosts in maintenance.
    pub maintenance: Vec<String>,
    /// Every host.
    pub hosts: Vec<HostStatus>,
    /// Every VM halo knows.
    pub vms: Vec<VmStatus>,
    /// The failover plan (from the master; `None` elsewhere).
    pub plan: Option<FailoverPlan>,
}

/// One host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HostStatus {
    /// Name.
    pub name: String,
    /// `running`, `suspect`, `agent down`, `failed`, `isolated`, `partitioned`, `unknown` (the
    /// master's verdict); `heard` / `silent` on other nodes; `this host` for the node itself.
    pub state: String,
    /// Whether this is the master.
    pub master: bool,
    /// In maintenance.
    pub maintenance: bool,
    /// HA disabled on it (emergency switch).
    pub ha_disabled: bool,
    /// Milliseconds since a heartbeat arrived from it directly, per network (`None`: never).
    pub heartbeat_age_ms: Vec<(String, Option<Millis>)>,
    /// The signals behind the verdict, one line (master only).
    pub trace: Option<String>,
    /// The same signals, structured (master only).
    pub signals: Option<Signals>,
    /// VMs it reports running.
    pub vms: Vec<String>,
    /// Its fence devices as the master last asked them (master only; none: no device, or not
    /// asked yet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fence: Vec<FenceDeviceHealth>,
    /// Datastores it wrote within the fence timeout (its own count, or as its last heartbeat
    /// said), of `datastores_configured`; none: never heard.
    pub datastores_reached: Option<u32>,
    /// Datastores in the configuration.
    pub datastores_configured: u32,
    /// The datastores it lost (its own, or as its last heartbeat said).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datastores_lost: Vec<String>,
    /// Its health as its provider last reported it (proactive HA).
    #[serde(default)]
    pub health: crate::wire::HostHealth,
    /// No new VMs go there for its health.
    #[serde(default)]
    pub quarantined: bool,
    /// VMs on it whose storage is lost (storage protection), with the response decided.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub storage_lost_vms: Vec<String>,
    /// Its load as the master last read it from its libvirt, and how old that reading is, ms
    /// (master only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<HostLoadStatus>,
}

/// A host's load reading (`HostStatus::load`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HostLoadStatus {
    /// How old the reading is, ms.
    pub age_ms: Millis,
    /// What was read.
    #[serde(flatten)]
    pub load: crate::wire::HostLoad,
}

/// One fence device's last answer to `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FenceDeviceHealth {
    /// The device (its agent and address).
    pub device: String,
    /// Whether it answered.
    pub ok: bool,
    /// The power state it reported (`on`/`off`), or why it failed.
    pub detail: String,
}

/// One VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct VmStatus {
    /// Name.
    pub name: String,
    /// `running`, `running on more than one host` (see `copies`), `restarting` (the master
    /// is on it), `stopped by operator`, `down` (a
    /// protected VM running nowhere this node hears of, no restart under way) or
    /// `not running` (unprotected).
    pub state: String,
    /// Where it runs, as reported (`None`: nowhere that this node hears of).
    pub host: Option<String>,
    /// Its generation there.
    pub generation: Option<u64>,
    /// Restart priority.
    pub priority: RestartPriority,
    /// Protected (restarted by HA).
    pub protected: bool,
    /// Restart order.
    pub order: u32,
    /// Restart group.
    pub group: Option<String>,
    /// VMs that must be up first.
    pub depends_on: Vec<String>,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Stopped by the operator through halo (not restarted).
    pub operator_stopped: bool,
    /// A restart in progress (master only).
    pub restart: Option<Restart>,
    /// Every host that reports it running, when that is more than one (a copy started
    /// outside halo; `exclusivity`); empty otherwise.
    pub copies: Vec<String>,
    /// Its load where it runs, as the master last read it (master only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<crate::wire::VmLoad>,
}

/// The answer to "what if these hosts failed now".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct WhatIf {
    /// The hosts assumed failed.
    pub failed: Vec<String>,
    /// Protected VMs that would be restarted, and where.
    pub placed: Vec<(String, String)>,
    /// Protected VMs that could not be placed, with the reason.
    pub unplaced: Vec<(String, String)>,
    /// Unprotected VMs that would stay down.
    pub lost: Vec<String>,
}

impl Node {
    /// Everything this node knows, for the operator.
    pub fn status(&self) -> ClusterStatus {
        let master_name = self.master_view.as_ref().map(|(m, _)| m.clone());
        let mut hosts = Vec::new();
        let mut where_runs: std::collections::BTreeMap<String, (String, u64)> = Default::default();
        for spec in &self.config.hosts {
            let name = &spec.name;
            let is_master = master_name.as_deref() == Some(name.as_str());
            if *name == self.name {
                for (vm, g) in &self.local_vms {
                    where_runs.insert(vm.clone(), (name.clone(), *g));
                }
                hosts.push(HostStatus {
                    name: name.clone(),
                    state: "this host".into(),
                    master: is_master,
                    maintenance: self.maintenance.contains(name),
                    ha_disabled: self.ha_disabled_here,
                    heartbeat_age_ms: Vec::new(),
                    trace: None,
                    signals: None,
                    vms: self.local_vms.keys().cloned().collect(),
                    fence: Vec::new(),
                    datastores_reached: Some(self.datastores_reachable()),
                    datastores_configured: self.config.datastores.len() as u32,
                    datastores_lost: self.ds_lost.iter().cloned().collect(),
                    health: self.health.clone(),
                    quarantined: self.quarantined(name),
                    storage_lost_vms: self.storage_lost.keys().cloned().collect(),
                    load: self.load_status(name),
                });
                continue;
            }
            let Some(peer) = self.peers.get(name) else { continue };
            if peer.verdict != Some(Verdict::Failed) {
                for r in &peer.vms {
                    where_runs.entry(r.vm.clone()).or_insert((name.clone(), r.generation));
                }
            }
            let heard = peer
                .heard_directly_at
                .is_some_and(|at| self.now.saturating_sub(at) < self.config.timeouts.dead_time_ms);
            let state = match peer.verdict {
                Some(v) => v.as_str().to_string(),
                None if heard => "heard".into(),
                None => "silent".into(),
            };
            let signals = self.master.as_ref().and_then(|_| self.signals(name));
            hosts.push(HostStatus {
                name: name.clone(),
                state,
                master: is_master,
                maintenance: self.maintenance.contains(name),
                ha_disabled: peer.ha_disabled,
                heartbeat_age_ms: self
                    .config
                    .networks
                    .iter()
                    .map(|n| (n.clone(), peer.networks.get(n).map(|at| self.now.saturating_sub(*at))))
                    .collect(),
                trace: signals.as_ref().map(Signals::trace),
                signals,
                vms: Vec::new(), // filled below: where each VM runs now
                fence: self
                    .fence_health
                    .get(name)
                    .map(|devices| {
                        devices
                            .iter()
                            .map(|(device, result)| FenceDeviceHealth {
                                device: device.clone(),
                                ok: result.is_ok(),
                                detail: match result {
                                    Ok(power) | Err(power) => power.clone(),
                                },
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                datastores_reached: peer.heard_directly_at.map(|_| peer.datastores_reachable),
                datastores_configured: self.config.datastores.len() as u32,
                datastores_lost: peer.datastores_lost.clone(),
                health: peer.health.clone(),
                quarantined: self.quarantined(name),
                storage_lost_vms: Vec::new(),
                load: self.load_status(name),
            });
        }
        // A host lists the VMs that run there now: a failed host's last report names VMs that
        // were restarted elsewhere since, and a VM reported by two hosts (mid-migration) is
        // listed once.
        // A protected VM running on more than one host (a copy started outside halo) is listed
        // on every host that reports it.
        let copies: std::collections::BTreeMap<String, Vec<String>> = self
            .running_copies()
            .into_iter()
            .filter(|(_, hosts)| hosts.len() > 1)
            .map(|(vm, hosts)| (vm, hosts.into_keys().collect()))
            .collect();
        for host in hosts.iter_mut() {
            host.vms = where_runs.iter().filter(|(_, (h, _))| *h == host.name).map(|(vm, _)| vm.clone()).collect();
            for (vm, on) in &copies {
                if on.contains(&host.name) && !host.vms.contains(vm) {
                    host.vms.push(vm.clone());
                }
            }
            host.vms.sort();
            if matches!(host.state.as_str(), "failed") {
                host.vms.clear();
            }
        }
        let operator_stopped: BTreeSet<&String> =
            self.operator_stopped.iter().chain(self.peers.values().flat_map(|p| p.operator_stopped.iter())).collect();
        let vms = self
            .config
            .vms
            .iter()
            .map(|spec| {
                let at = where_runs.get(&spec.name);
                let restart = self.master.as_ref().and_then(|m| m.restarts.get(&spec.name).cloned());
                let stopped = operator_stopped.contains(&spec.name);
                let on = copies.get(&spec.name).cloned().unwrap_or_default();
                let state = match (at, &restart) {
                    (Some(_), _) if on.len() > 1 => "running on more than one host",
                    (Some(_), _) => "running",
                    (None, Some(_)) => "restarting",
                    (None, None) if stopped => "stopped by operator",
                    (None, None) if spec.protected() => "down",
                    (None, None) => "not running",
                };
                VmStatus {
                    name: spec.name.clone(),
                    state: state.to_string(),
                    host: at.map(|(h, _)| h.clone()),
                    generation: at.map(|(_, g)| *g),
                    priority: spec.priority,
                    protected: spec.protected(),
                    order: spec.order,
                    group: spec.group.clone(),
                    depends_on: spec.depends_on.clone(),
                    memory_mib: spec.memory_mib,
                    vcpus: spec.vcpus,
                    operator_stopped: stopped,
                    restart,
                    copies: on,
                    load: at.and_then(|(h, _)| {
                        self.load.get(h).and_then(|(_, l)| l.vms.iter().find(|v| v.vm == spec.name).cloned())
                    }),
                }
            })
            .collect();
        ClusterStatus {
            host: self.name.clone(),
            master: master_name,
            epoch: self.master_view.as_ref().map_or(0, |(_, e)| *e),
            ha_enabled: self.ha_enabled,
            host_ha_disabled: self.ha_disabled_here,
            fenced: self.fenced,
            isolation: match self.isolation {
                Isolation::Connected => "connected",
                Isolation::Pinging { .. } => "checking",
                Isolation::Lonely { .. } => "lonely",
                Isolation::Isolated { .. } => "isolated",
            }
            .into(),
            maintenance: self.maintenance.iter().cloned().collect(),
            hosts,
            vms,
            plan: self.master.as_ref().and_then(|m| m.plan.clone()),
        }
    }

    /// What the placement policy would do with the VMs of `failed` if those hosts failed now
    /// (master only: `None` elsewhere). Nothing is changed.
    pub fn what_if(&self, failed: &[String], policies: &mut dyn Policies) -> Option<WhatIf> {
        self.master.as_ref()?;
        let failed_set: BTreeSet<&String> = failed.iter().collect();
        let locations = self.reported_locations();
        let mut lost = Vec::new();
        let mut evacuees = Vec::new();
        for (vm, host) in &locations {
            if !failed_set.contains(host) {
                continue;
            }
            match self.config.vm(vm) {
                Some(spec) if spec.protected() => evacuees.push((vm.clone(), host.clone())),
                _ => lost.push(vm.clone()),
            }
        }
        let mut input = self.placement_input(PlacementReason::Failover, &evacuees);
        input.hosts.retain(|h| !failed_set.contains(&h.name));
        let answer = crate::rules::place(&self.config, &input, &locations, policies).outcome.answer;
        Some(WhatIf {
            failed: failed.to_vec(),
            placed: answer.assignments.into_iter().map(|a| (a.vm, a.host)).collect(),
            unplaced: answer.unplaced.into_iter().map(|u| (u.vm, u.reason)).collect(),
            lost,
        })
    }
}

impl Node {
    /// Would protecting (or re-prioritising) `spec`, running on `host`, keep the failover
    /// plan? Master only (`None` elsewhere); nothing is changed.
    pub fn admit(&self, spec: &VmSpec, host: Option<&str>, policies: &mut dyn Policies) -> Option<AdmissionVerdict> {
        let master = self.master.as_ref()?;
        let before = master.plan.as_ref().map_or(0, |p| p.tolerates);
        let mut config = self.config.clone();
        config.vms.retain(|v| v.name != spec.name);
        config.vms.push(spec.clone());
        let mut locations = self.reported_locations();
        if let Some(host) = host {
            locations.insert(spec.name.clone(), host.to_string());
        }
        let available: BTreeSet<String> = self
            .host_usage(PlacementReason::AdmissionCheck)
            .into_iter()
            .map(|u| u.host)
            .filter(|h| !self.maintenance.contains(h))
            .collect();
        let (verdict, _) = capacity::admission_check(
            &config,
            (&locations, &available, &self.maintenance),
            before,
            &format!("protecting {}", spec.name),
            policies,
        );
        Some(verdict)
    }
}

impl Node {
    /// `host`'s last load reading and its age (master only).
    fn load_status(&self, host: &str) -> Option<HostLoadStatus> {
        self.master.as_ref()?;
        let (at, load) = self.load.get(host)?;
        Some(HostLoadStatus { age_ms: self.now.saturating_sub(*at), load: load.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::cluster;
    use crate::node::tests::tick_until;
    use crate::policies::BuiltinPolicies;
    use crate::{Input, VmState};

    #[test]
    fn a_lone_master_reports_itself_its_vms_and_a_plan() {
        let mut config = cluster(1, 2);
        config.ha.host_failures_to_tolerate = 0;
        let mut node = Node::new("host-1", config, 0);
        let mut p = BuiltinPolicies;
        node.handle(0, Input::VmState { vm: "vm-1".into(), generation: 3, state: VmState::Running }, &mut p);
        tick_until(&mut node, 0, 20_000, |_| false);
        let status = node.status();
        assert_eq!(status.master.as_deref(), Some("host-1"));
        assert_eq!(status.hosts.len(), 1);
        assert!(status.hosts[0].master);
        assert_eq!(status.hosts[0].vms, ["vm-1"]);
        let vm1 = status.vms.iter().find(|v| v.name == "vm-1").expect("vm-1 listed");
        assert_eq!((vm1.host.as_deref(), vm1.generation, vm1.state.as_str()), (Some("host-1"), Some(3), "running"));
        let vm2 = status.vms.iter().find(|v| v.name == "vm-2").expect("vm-2 listed");
        assert_eq!(vm2.host, None);
        assert!(vm2.state == "down" || vm2.state == "restarting", "{}", vm2.state);
        assert!(status.plan.is_some(), "the master keeps a plan");
        // One host: nothing to fail over to.
        let what_if = node.what_if(&["host-1".into()], &mut p).expect("master answers");
        assert_eq!(what_if.placed, vec![]);
        assert_eq!(what_if.unplaced.len(), 1, "{what_if:?}");
        // A 1 GiB VM fits the lone host (no failures to tolerate).
        let mut spec = node.config().vms[0].clone();
        spec.name = "vm-new".into();
        assert_eq!(node.admit(&spec, Some("host-1"), &mut p), Some(AdmissionVerdict::Admitted));
    }
}
