//! WIT ↔ policy types, one module per world; the `export_*!` macros call the `place`,
//! `decide`, `plan` and `propose` functions here.

use halo_policy as policy;

use crate::bindings::wit;

fn settings(list: Vec<wit::Setting>) -> Vec<policy::Setting> {
    list.into_iter().map(|s| policy::Setting { key: s.key, value: s.value }).collect()
}

fn priority(p: wit::RestartPriority) -> policy::RestartPriority {
    match p {
        wit::RestartPriority::Restart => policy::RestartPriority::Restart,
        wit::RestartPriority::BestEffort => policy::RestartPriority::BestEffort,
        wit::RestartPriority::Unprotected => policy::RestartPriority::Unprotected,
    }
}

fn vm_info(vm: wit::VmInfo) -> policy::VmInfo {
    policy::VmInfo {
        name: vm.name,
        priority: priority(vm.priority),
        order: vm.order,
        memory_mib: vm.memory_mib,
        vcpus: vm.vcpus,
        labels: vm.labels,
    }
}

fn reason(r: wit::PlacementReason) -> policy::PlacementReason {
    match r {
        wit::PlacementReason::Failover => policy::PlacementReason::Failover,
        wit::PlacementReason::Evacuation => policy::PlacementReason::Evacuation,
        wit::PlacementReason::Balance => policy::PlacementReason::Balance,
        wit::PlacementReason::AdmissionCheck => policy::PlacementReason::AdmissionCheck,
    }
}

/// `placement-engine`: everything named.
pub mod named {
    use super::*;

    /// The named input in the policy's form.
    pub fn input(input: wit::PlacementInput) -> policy::PlacementInput {
        policy::PlacementInput {
            reason: reason(input.reason),
            vms: input
                .vms
                .into_iter()
                .map(|vm| policy::VmToPlace {
                    name: vm.name,
                    memory_mib: vm.memory_mib,
                    vcpus: vm.vcpus,
                    priority: priority(vm.priority),
                    required_host_labels: vm.required_host_labels,
                    anti_affinity_group: vm.anti_affinity_group,
                    avoid_hosts: vm.avoid_hosts,
                    datastores: vm.datastores,
                })
                .collect(),
            hosts: input
                .hosts
                .into_iter()
                .map(|h| policy::CandidateHost {
                    name: h.name,
                    total_memory_mib: h.total_memory_mib,
                    free_memory_mib: h.free_memory_mib,
                    total_vcpus: h.total_vcpus,
                    allocated_vcpus: h.allocated_vcpus,
                    labels: h.labels,
                    datastores: h.datastores,
                    maintenance: h.maintenance,
                    anti_affinity_groups: h.anti_affinity_groups,
                })
                .collect(),
            vcpu_overcommit_percent: input.vcpu_overcommit_percent,
            settings: settings(input.settings),
        }
    }

    /// Runs `P` on a named input.
    pub fn place<P: crate::PlacementPolicy>(input: wit::PlacementInput) -> Result<wit::Placement, String> {
        let answer = P::place(self::input(input))?;
        Ok(wit::Placement {
            assignments: answer.assignments.into_iter().map(|a| wit::Assignment { vm: a.vm, host: a.host }).collect(),
            unplaced: answer.unplaced.into_iter().map(|u| wit::UnplacedVm { vm: u.vm, reason: u.reason }).collect(),
        })
    }
}

/// `columnar-placement-engine`: positions, as columns.
pub mod columnar {
    use policy::compact::{CompactHost, CompactInput, CompactPlacement, CompactVm, Relation};

    use super::*;
    use crate::bindings::columnar::exports::halo::policy::columnar_placement as cw;

    fn relation(r: cw::Relation) -> Relation {
        Relation { starts: r.starts, items: r.items }
    }

    /// The columnar input in the policy's compact form. A column shorter than `vms.vcpus`
    /// (or `hosts.total-vcpus`) reads as zeros; halo never sends one.
    pub fn input(input: cw::ColumnarInput) -> CompactInput {
        let groups = relation(input.vm_anti_affinity_group);
        let v = input.vms;
        let vms = (0..v.vcpus.len())
            .map(|i| CompactVm {
                memory_mib: v.memory_mib.get(i).copied().unwrap_or(0),
                vcpus: v.vcpus[i],
                priority: match v.priority.get(i) {
                    Some(1) => policy::RestartPriority::BestEffort,
                    Some(2) => policy::RestartPriority::Unprotected,
                    _ => policy::RestartPriority::Restart,
                },
                anti_affinity_group: groups.of(i).first().copied(),
            })
            .collect();
        let h = input.hosts;
        let hosts = (0..h.total_vcpus.len())
            .map(|i| CompactHost {
                total_memory_mib: h.total_memory_mib.get(i).copied().unwrap_or(0),
                free_memory_mib: h.free_memory_mib.get(i).copied().unwrap_or(0),
                total_vcpus: h.total_vcpus[i],
                allocated_vcpus: h.allocated_vcpus.get(i).copied().unwrap_or(0),
                maintenance: h.maintenance.get(i).copied().unwrap_or(true),
            })
            .collect();
        CompactInput {
            reason: reason(input.reason),
            vms,
            hosts,
            vm_required_labels: relation(input.vm_required_labels),
            vm_avoid_hosts: relation(input.vm_avoid_hosts),
            vm_datastores: relation(input.vm_datastores),
            host_labels: relation(input.host_labels),
            host_datastores: relation(input.host_datastores),
            host_anti_affinity_groups: relation(input.host_anti_affinity_groups),
            labels: input.labels,
            datastores: input.datastores,
            anti_affinity_groups: input.anti_affinity_groups,
            vcpu_overcommit_percent: input.vcpu_overcommit_percent,
            settings: settings(input.settings),
        }
    }

    /// The policy's compact answer as columns.
    pub fn answer(answer: CompactPlacement) -> cw::ColumnarPlacement {
        // Sized once: a growing pair of lists would copy both again and again.
        let mut assigned_vms = Vec::with_capacity(answer.assignments.len());
        let mut assigned_hosts = Vec::with_capacity(answer.assignments.len());
        for a in &answer.assignments {
            assigned_vms.push(a.vm);
            assigned_hosts.push(a.host);
        }
        cw::ColumnarPlacement {
            assigned_vms,
            assigned_hosts,
            unplaced: answer.unplaced.into_iter().map(|u| cw::Unplaced { vm: u.vm, reason: u.reason }).collect(),
        }
    }

    /// Runs `P` on a columnar input.
    pub fn place<P: crate::CompactPlacementPolicy>(input: cw::ColumnarInput) -> Result<cw::ColumnarPlacement, String> {
        P::place(self::input(input)).map(answer)
    }
}

/// `isolation-policy`.
pub mod isolation {
    use super::*;

    /// The isolation input in the policy's form.
    pub fn input(input: wit::IsolationInput) -> policy::IsolationInput {
        let s = input.situation;
        policy::IsolationInput {
            situation: policy::IsolationSituation {
                host: s.host,
                isolated_for_ms: s.isolated_for_ms,
                networks: s
                    .networks
                    .into_iter()
                    .map(|n| policy::NetworkStatus { name: n.name, link_up: n.link_up, peers_heard: n.peers_heard })
                    .collect(),
                datastores: s
                    .datastores
                    .into_iter()
                    .map(|d| policy::DatastoreStatus { name: d.name, reachable: d.reachable })
                    .collect(),
                isolation_addresses: s
                    .isolation_addresses
                    .into_iter()
                    .map(|a| policy::AddressStatus { address: a.address, answered: a.answered })
                    .collect(),
            },
            vms: input.vms.into_iter().map(vm_info).collect(),
            settings: settings(input.settings),
        }
    }

    /// Runs `P` on an isolation input.
    pub fn decide<P: crate::IsolationPolicy>(
        input: wit::IsolationInput,
    ) -> Result<Vec<wit::VmIsolationDecision>, String> {
        let answer = P::decide(self::input(input))?;
        Ok(answer
            .into_iter()
            .map(|d| wit::VmIsolationDecision {
                vm: d.vm,
                action: match d.action {
                    policy::IsolationAction::LeaveRunning => wit::IsolationAction::LeaveRunning,
                    policy::IsolationAction::PowerOff => wit::IsolationAction::PowerOff,
                    policy::IsolationAction::ShutDown(secs) => wit::IsolationAction::ShutDown(secs),
                },
            })
            .collect())
    }
}

/// `storage-response` (0.1.4).
pub mod storage {
    use super::*;
    use crate::bindings::storage::exports::halo::policy::storage_response as wit_storage;

    /// The storage input in the policy's form.
    pub fn input(input: wit_storage::StorageInput) -> policy::StorageInput {
        let s = input.situation;
        policy::StorageInput {
            situation: policy::StorageSituation {
                host: s.host,
                datastore: s.datastore,
                lost_for_ms: s.lost_for_ms,
                io_error: s.io_error,
                hosts_reaching: s.hosts_reaching,
            },
            vms: input.vms.into_iter().map(vm_info).collect(),
            settings: settings(input.settings),
        }
    }

    /// Runs `P` on a storage input.
    pub fn decide<P: crate::StoragePolicy>(
        input: wit_storage::StorageInput,
    ) -> Result<Vec<wit_storage::VmStorageDecision>, String> {
        let answer = P::decide_storage(self::input(input))?;
        Ok(answer
            .into_iter()
            .map(|d| wit_storage::VmStorageDecision {
                vm: d.vm,
                action: match d.response {
                    policy::StorageResponse::Leave => wit_storage::StorageAction::Leave,
                    policy::StorageResponse::ResumeWhenBack => wit_storage::StorageAction::ResumeWhenBack,
                    policy::StorageResponse::Restart(secs) => wit_storage::StorageAction::Restart(secs),
                },
            })
            .collect())
    }
}

/// `restart-policy`.
pub mod restart {
    use super::*;

    /// The restart input in the policy's form.
    pub fn input(input: wit::RestartInput) -> policy::RestartInput {
        policy::RestartInput {
            vms: input
                .vms
                .into_iter()
                .map(|vm| policy::VmToRestart {
                    name: vm.name,
                    priority: priority(vm.priority),
                    order: vm.order,
                    group: vm.group,
                    depends_on: vm.depends_on,
                })
                .collect(),
            settings: settings(input.settings),
        }
    }

    /// Runs `P` on a restart input.
    pub fn plan<P: crate::RestartPolicy>(input: wit::RestartInput) -> Result<Vec<wit::Wave>, wit::RestartError> {
        P::plan(self::input(input)).map_err(|e| match e {
            policy::RestartError::DependencyCycle(vms) => wit::RestartError::DependencyCycle(vms),
            policy::RestartError::Other(reason) => wit::RestartError::Other(reason),
        })
    }
}

/// `balancing-policy`.
pub mod balancing {
    use policy::balance::{BalanceInput, RuleKind, Strength};

    use super::*;
    use crate::bindings::balancing::exports::halo::policy::balancing as bw;

    /// The balancing input in the policy's form (VMs by position: `vm_names` stays empty).
    pub fn input(input: bw::BalanceInput) -> BalanceInput {
        let v = input.vms;
        BalanceInput {
            hosts: input
                .hosts
                .into_iter()
                .map(|h| policy::balance::BalanceHost {
                    memory_mib: h.memory_mib,
                    vcpus: h.vcpus,
                    threads: h.threads,
                    takes: h.takes,
                })
                .collect(),
            host_names: input.host_names,
            vms: (0..v.host.len())
                .map(|i| {
                    let get = |list: &[u32]| list.get(i).copied().unwrap_or(0);
                    policy::balance::BalanceVm {
                        host: v.host[i],
                        memory_mib: v.memory_mib.get(i).copied().unwrap_or(0),
                        vcpus: get(&v.vcpus),
                        cpu_percent: get(&v.cpu_percent),
                        movable: v.movable.get(i).copied().unwrap_or(false),
                    }
                })
                .collect(),
            vm_names: Vec::new(),
            rules: input
                .rules
                .into_iter()
                .map(|r| policy::balance::BalanceRule {
                    name: r.name,
                    kind: match r.kind {
                        bw::RuleKind::VmHost => RuleKind::VmHost,
                        bw::RuleKind::Together => RuleKind::Together,
                        bw::RuleKind::Apart => RuleKind::Apart,
                    },
                    strength: match r.strength {
                        bw::RuleStrength::Must => Strength::Must,
                        bw::RuleStrength::Should => Strength::Should,
                    },
                    vms: r.vms,
                    hosts: r.hosts,
                })
                .collect(),
            threshold_percent: input.threshold_percent,
            cost_percent: input.cost_percent,
            max_moves: input.max_moves,
            vcpu_overcommit_percent: input.vcpu_overcommit_percent,
            settings: settings(input.settings),
        }
    }

    /// Runs `P` on a balancing input.
    pub fn propose<P: crate::BalancingPolicy>(input: bw::BalanceInput) -> Result<Vec<bw::BalanceMove>, String> {
        let moves = P::propose(self::input(input))?;
        Ok(moves.into_iter().map(|m| bw::BalanceMove { vm: m.vm, to: m.to, reason: m.reason }).collect())
    }
}
