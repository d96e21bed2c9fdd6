//! halo's default placement engine as a WebAssembly component (world
//! `halo:policy/compact-placement-engine@0.1.1`): the very code of `halo_policy::placement`,
//! which the agent also runs natively as its built-in fallback.
//!
//! It serves the compact world: VMs, hosts, labels, datastores and groups arrive as positions
//! in a few flat lists, which a 10,000-VM placement crosses into the sandbox about ten times
//! faster than the named `placement-engine` input (docs/performance.md).

#![deny(clippy::unwrap_used)]

wit_bindgen::generate!({ path: "../../wit/0.1.1", world: "compact-placement-engine" });

#[cfg(target_arch = "wasm32")]
mod bump;

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: bump::Bump = bump::Bump::new();

use exports::halo::policy::compact_placement as wit;
use halo::policy::types as wit_types;
use halo_policy as policy;
use halo_policy::compact::{CompactHost, CompactInput, CompactVm, Relation};

struct DefaultPlacement;

impl wit::Guest for DefaultPlacement {
    fn place(input: wit::CompactInput) -> Result<wit::CompactPlacement, String> {
        let answer = policy::placement::place_compact(&from_wit(input))?;
        Ok(wit::CompactPlacement {
            assignments: answer
                .assignments
                .into_iter()
                .map(|a| wit::CompactAssignment { vm: a.vm, host: a.host })
                .collect(),
            unplaced: answer
                .unplaced
                .into_iter()
                .map(|u| wit::CompactUnplaced { vm: u.vm, reason: u.reason })
                .collect(),
        })
    }
}

fn priority(p: wit_types::RestartPriority) -> policy::RestartPriority {
    match p {
        wit_types::RestartPriority::Restart => policy::RestartPriority::Restart,
        wit_types::RestartPriority::BestEffort => policy::RestartPriority::BestEffort,
        wit_types::RestartPriority::Unprotected => policy::RestartPriority::Unprotected,
    }
}

fn relation(r: wit::Relation) -> Relation {
    Relation { starts: r.starts, items: r.items }
}

fn from_wit(input: wit::CompactInput) -> CompactInput {
    CompactInput {
        reason: match input.reason {
            wit_types::PlacementReason::Failover => policy::PlacementReason::Failover,
            wit_types::PlacementReason::Evacuation => policy::PlacementReason::Evacuation,
            wit_types::PlacementReason::Balance => policy::PlacementReason::Balance,
            wit_types::PlacementReason::AdmissionCheck => policy::PlacementReason::AdmissionCheck,
        },
        vms: input
            .vms
            .into_iter()
            .map(|vm| CompactVm {
                memory_mib: vm.memory_mib,
                vcpus: vm.vcpus,
                priority: priority(vm.priority),
                anti_affinity_group: vm.anti_affinity_group,
            })
            .collect(),
        hosts: input
            .hosts
            .into_iter()
            .map(|h| CompactHost {
                total_memory_mib: h.total_memory_mib,
                free_memory_mib: h.free_memory_mib,
                total_vcpus: h.total_vcpus,
                allocated_vcpus: h.allocated_vcpus,
                maintenance: h.maintenance,
            })
            .collect(),
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
        settings: input.settings.into_iter().map(|s| policy::Setting { key: s.key, value: s.value }).collect(),
    }
}

export!(DefaultPlacement);
