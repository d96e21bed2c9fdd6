//! Any columnar placement answer — columns of any lengths, any positions, repeats, gaps and
//! reasons of any bytes — is paired, judged and named without a panic, and whatever is
//! accepted places every VM of the input exactly once on a host of the input. No code of the
//! runtime reads guest memory by hand any more (decision 0014): the answer's bytes are lifted
//! by wasmtime; this is what halo does with them next.
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run columnar_answer` in `host/plugin-runtime` (docs/fuzzing.md).

#![no_main]

use halo_policy::{CandidateHost, PlacementInput, PlacementReason, RestartPriority, VmToPlace};
use libfuzzer_sys::fuzz_target;

fn input(vms: usize, hosts: usize) -> PlacementInput {
    PlacementInput {
        reason: PlacementReason::Failover,
        vms: (0..vms)
            .map(|i| VmToPlace {
                name: format!("vm-{i}"),
                memory_mib: 256,
                vcpus: 1,
                priority: RestartPriority::Restart,
                required_host_labels: vec![],
                anti_affinity_group: (i % 3 == 0).then(|| "g".to_string()),
                avoid_hosts: vec![],
                datastores: vec![],
            })
            .collect(),
        hosts: (0..hosts)
            .map(|i| CandidateHost {
                name: format!("host-{i}"),
                total_memory_mib: 4096,
                free_memory_mib: 1024,
                total_vcpus: 4,
                allocated_vcpus: 0,
                labels: vec![],
                datastores: vec![],
                maintenance: i == 1,
                anti_affinity_groups: vec![],
            })
            .collect(),
        vcpu_overcommit_percent: 200,
        settings: vec![],
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&shape, rest)) = data.split_first() else { return };
    let input = input(usize::from(shape & 7), usize::from(shape >> 5));
    let words: Vec<u32> = rest.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) % 12).collect();
    let third = words.len() / 3;
    let (vms, rest) = words.split_at(third);
    let (hosts, unplaced) = rest.split_at(third.min(rest.len()).saturating_sub(usize::from(shape & 1)));
    let unplaced = unplaced.iter().map(|&vm| (vm, String::from_utf8_lossy(data).into_owned())).collect();
    if let Ok(placement) =
        halo_plugin_runtime::fuzzing::judge_columnar_answer(&input, vms.to_vec(), hosts.to_vec(), unplaced)
    {
        let mut named: Vec<&str> = placement.assignments.iter().map(|a| a.vm.as_str()).collect();
        named.extend(placement.unplaced.iter().map(|u| u.vm.as_str()));
        named.sort_unstable();
        let mut expected: Vec<&str> = input.vms.iter().map(|v| v.name.as_str()).collect();
        expected.sort_unstable();
        assert_eq!(named, expected, "every VM exactly once");
        assert!(placement.assignments.iter().all(|a| input.hosts.iter().any(|h| h.name == a.host && !h.maintenance)));
    }
});
