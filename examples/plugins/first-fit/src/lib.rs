//! An example of a site's own placement engine, written with `halo-plugin-sdk`: fill hosts in
//! name order, first fit, honouring every rule of the input (maintenance, avoided hosts,
//! labels, datastores, anti-affinity, memory and vCPUs). The same policy is written in Python
//! (`examples/plugins/first-fit-py`) and JavaScript (`examples/plugins/first-fit-js`); the
//! tests check that all three answer alike.
//!
//! Build: `cargo build --release --target wasm32-wasip2 -p first-fit-placement`
//! Try:   `halo plugin run target/wasm32-wasip2/release/first_fit_placement.wasm --input examples/inputs/placement.json`

use halo_plugin_sdk::policy::{Assignment, Placement, PlacementInput, UnplacedVm};
use halo_plugin_sdk::{Level, log};

struct FirstFit;

impl halo_plugin_sdk::PlacementPolicy for FirstFit {
    fn place(input: PlacementInput) -> Result<Placement, String> {
        let mut hosts: Vec<_> = input.hosts.iter().collect();
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
        let mut free: Vec<u64> = hosts.iter().map(|h| h.free_memory_mib).collect();
        let mut vcpus: Vec<u64> = hosts
            .iter()
            .map(|h| {
                (u64::from(h.total_vcpus) * u64::from(input.vcpu_overcommit_percent) / 100)
                    .saturating_sub(u64::from(h.allocated_vcpus))
            })
            .collect();
        let mut groups: Vec<Vec<String>> = hosts.iter().map(|h| h.anti_affinity_groups.clone()).collect();
        let mut answer = Placement { assignments: vec![], unplaced: vec![] };
        for vm in &input.vms {
            let fits = |i: usize| {
                let h = hosts[i];
                !h.maintenance
                    && !vm.avoid_hosts.contains(&h.name)
                    && free[i] >= vm.memory_mib
                    && vcpus[i] >= u64::from(vm.vcpus)
                    && vm.required_host_labels.iter().all(|l| h.labels.contains(l))
                    && vm.datastores.iter().all(|d| h.datastores.contains(d))
                    && vm.anti_affinity_group.as_ref().is_none_or(|g| !groups[i].contains(g))
            };
            match (0..hosts.len()).find(|&i| fits(i)) {
                Some(i) => {
                    free[i] -= vm.memory_mib;
                    vcpus[i] -= u64::from(vm.vcpus);
                    if let Some(g) = &vm.anti_affinity_group {
                        groups[i].push(g.clone());
                    }
                    answer.assignments.push(Assignment { vm: vm.name.clone(), host: hosts[i].name.clone() });
                }
                None => answer
                    .unplaced
                    .push(UnplacedVm { vm: vm.name.clone(), reason: "first-fit: no host has room".into() }),
            }
        }
        log(Level::Debug, &format!("first-fit placed {} of {} VMs", answer.assignments.len(), input.vms.len()));
        Ok(answer)
    }
}

halo_plugin_sdk::export_placement!(FirstFit);
