//! Not hostile: a valid placement policy that differs from halo's on purpose, for the replay
//! and shadow tests. Written with `halo-plugin-sdk`: every VM to the eligible host with the
//! most free memory, ties to the host listed last — where the built-in best fit takes the
//! least free host, ties to the one listed first. With two or more eligible hosts the two
//! always disagree.
use halo_plugin_sdk::policy::{Assignment, Placement, PlacementInput, UnplacedVm};

struct WorstFit;

impl halo_plugin_sdk::PlacementPolicy for WorstFit {
    fn place(input: PlacementInput) -> Result<Placement, String> {
        let hosts = &input.hosts;
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
                let h = &hosts[i];
                !h.maintenance
                    && !vm.avoid_hosts.contains(&h.name)
                    && free[i] >= vm.memory_mib
                    && vcpus[i] >= u64::from(vm.vcpus)
                    && vm.required_host_labels.iter().all(|l| h.labels.contains(l))
                    && vm.datastores.iter().all(|d| h.datastores.contains(d))
                    && vm.anti_affinity_group.as_ref().is_none_or(|g| !groups[i].contains(g))
            };
            // `max_by_key` keeps the last of equal keys: ties go to the host listed last.
            match (0..hosts.len()).filter(|&i| fits(i)).max_by_key(|&i| free[i]) {
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
                    .push(UnplacedVm { vm: vm.name.clone(), reason: "worst-fit: no host has room".into() }),
            }
        }
        Ok(answer)
    }
}

halo_plugin_sdk::export_placement!(WorstFit);
