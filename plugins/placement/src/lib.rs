//! halo's default placement engine as a WebAssembly component (world
//! `halo:policy/placement-engine@0.1.0`): the very code of `halo_policy::placement`, which
//! the agent also runs natively as its built-in fallback.

#![deny(clippy::unwrap_used)]

wit_bindgen::generate!({ path: "../../wit/0.1.0", world: "placement-engine" });

#[cfg(target_arch = "wasm32")]
mod bump;

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: bump::Bump = bump::Bump::new();

use halo::policy::types as wit;
use halo_policy as policy;

struct DefaultPlacement;

impl exports::halo::policy::placement::Guest for DefaultPlacement {
    fn place(input: wit::PlacementInput) -> Result<wit::Placement, String> {
        let answer = policy::placement::place(&from_wit(input))?;
        Ok(wit::Placement {
            assignments: answer.assignments.into_iter().map(|a| wit::Assignment { vm: a.vm, host: a.host }).collect(),
            unplaced: answer.unplaced.into_iter().map(|u| wit::UnplacedVm { vm: u.vm, reason: u.reason }).collect(),
        })
    }
}

fn priority(p: wit::RestartPriority) -> policy::RestartPriority {
    match p {
        wit::RestartPriority::Restart => policy::RestartPriority::Restart,
        wit::RestartPriority::BestEffort => policy::RestartPriority::BestEffort,
        wit::RestartPriority::Unprotected => policy::RestartPriority::Unprotected,
    }
}

fn from_wit(input: wit::PlacementInput) -> policy::PlacementInput {
    policy::PlacementInput {
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
    }
}

export!(DefaultPlacement);
