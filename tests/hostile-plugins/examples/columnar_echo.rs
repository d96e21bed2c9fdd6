//! A probe rather than a hostile plugin: the columnar placement engine (contract 0.1.3),
//! written with `halo-plugin-sdk`, that places nothing and gives, as VM `i`'s reason, the VM
//! exactly as it arrived — memory, vCPUs, priority and anti-affinity group — and host `i` (or
//! `-` past the last host). The runtime lowers the columns with wasmtime's public API and the
//! SDK turns them back into the compact input; this shows both ends agree field by field.
use halo_plugin_sdk::policy::RestartPriority;
use halo_plugin_sdk::policy::compact::{CompactInput, CompactPlacement, CompactUnplaced};

struct P;

impl halo_plugin_sdk::CompactPlacementPolicy for P {
    fn place(input: CompactInput) -> Result<CompactPlacement, String> {
        let unplaced = input
            .vms
            .iter()
            .enumerate()
            .map(|(i, vm)| {
                let priority = match vm.priority {
                    RestartPriority::Restart => "restart",
                    RestartPriority::BestEffort => "best-effort",
                    RestartPriority::Unprotected => "unprotected",
                };
                let host = input.hosts.get(i).map_or("-".to_string(), |h| {
                    format!(
                        "{} {} {} {} {}",
                        h.total_memory_mib, h.free_memory_mib, h.total_vcpus, h.allocated_vcpus, h.maintenance
                    )
                });
                CompactUnplaced {
                    vm: i as u32,
                    reason: format!("{} {} {priority} {:?} | {host}", vm.memory_mib, vm.vcpus, vm.anti_affinity_group),
                }
            })
            .collect();
        Ok(CompactPlacement { assignments: vec![], unplaced })
    }
}

halo_plugin_sdk::export_compact_placement!(P);
