//! Ready-made clusters for the simulator, the demo and the tests.

use halo_core::config::{HaSettings, PolicySettings, Timeouts};
use halo_core::{ClusterConfig, HostSpec, VmSpec};
use halo_policy::RestartPriority;

/// `hosts` hosts of 32 GiB / 32 vCPUs and `vms` VMs of 1–4 GiB (every 4th best-effort, every
/// 10th unprotected), two networks, one datastore, two isolation addresses.
pub fn cluster(hosts: usize, vms: usize) -> ClusterConfig {
    ClusterConfig {
        hosts: (1..=hosts)
            .map(|i| HostSpec { name: format!("host-{i}"), memory_mib: 32_768, vcpus: 32, labels: vec![] })
            .collect(),
        networks: vec!["A".into(), "B".into()],
        datastores: vec!["ds1".into()],
        isolation_addresses: vec!["gw-A".into(), "gw-B".into()],
        vms: (1..=vms)
            .map(|i| VmSpec {
                name: format!("vm-{i:03}"),
                memory_mib: 1024 << (i % 3),
                vcpus: 1 + (i % 4) as u32,
                priority: if i % 10 == 0 {
                    RestartPriority::Unprotected
                } else if i % 4 == 0 {
                    RestartPriority::BestEffort
                } else {
                    RestartPriority::Restart
                },
                order: (i % 3) as u32,
                group: None,
                depends_on: vec![],
                required_host_labels: vec![],
                anti_affinity_group: None,
            })
            .collect(),
        timeouts: Timeouts::default(),
        ha: HaSettings::default(),
        policy: PolicySettings::default(),
    }
}
