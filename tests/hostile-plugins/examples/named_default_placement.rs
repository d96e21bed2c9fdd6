//! Not hostile: halo's default placement engine built for the named world of contract 0.1.0
//! (`placement-engine`), as a plugin written before 0.1.1 would be. The runtime's tests check it
//! still loads and agrees with the built-in policy; the benchmark compares it with the compact
//! default plugin.
wit_bindgen::generate!({ path: "../../wit/0.1.0", world: "placement-engine" });

#[cfg(target_arch = "wasm32")]
#[path = "../../../plugins/placement/src/bump.rs"]
mod bump;
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: bump::Bump = bump::Bump::new();

use exports::halo::policy::placement::Guest;
use halo::policy::types as wit;
use halo_policy as policy;
struct P;
export!(P);

fn priority(p: wit::RestartPriority) -> policy::RestartPriority {
    match p {
        wit::RestartPriority::Restart => policy::RestartPriority::Restart,
        wit::RestartPriority::BestEffort => policy::RestartPriority::BestEffort,
        wit::RestartPriority::Unprotected => policy::RestartPriority::Unprotected,
    }
}

impl Guest for P {
    fn place(input: wit::PlacementInput) -> Result<wit::Placement, String> {
        let input = policy::PlacementInput {
            reason: match input.reason {
                wit::PlacementReason::Failover => policy::PlacementReason::Failover,
                wit::PlacementReason::Evacuation => policy::PlacementReason::Evacuation,
                wit::PlacementReason::Balance => policy::PlacementReason::Balance,
                wit::PlacementReason::AdmissionCheck => policy::PlacementReason::AdmissionCheck,
            },
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
            settings: input.settings.into_iter().map(|s| policy::Setting { key: s.key, value: s.value }).collect(),
        };
        let answer = policy::placement::place(&input)?;
        Ok(wit::Placement {
            assignments: answer.assignments.into_iter().map(|a| wit::Assignment { vm: a.vm, host: a.host }).collect(),
            unplaced: answer.unplaced.into_iter().map(|u| wit::UnplacedVm { vm: u.vm, reason: u.reason }).collect(),
        })
    }
}
