//! A probe rather than a hostile plugin: a compact placement engine (contract 0.1.1) that
//! places nothing and gives, as VM `i`'s reason, the VM exactly as it arrived — memory, vCPUs,
//! priority and anti-affinity group — and host `i` (or `-` past the last host). The runtime
//! lowers both lists with its own bulk code; this shows every field lands where the canonical
//! ABI puts it.
wit_bindgen::generate!({ path: "../../wit/0.1.1", world: "compact-placement-engine" });
use exports::halo::policy::compact_placement::{CompactInput, CompactPlacement, CompactUnplaced, Guest};
use halo::policy::types::RestartPriority;
struct P;
export!(P);

impl Guest for P {
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
