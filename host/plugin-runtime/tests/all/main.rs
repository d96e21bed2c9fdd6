//! Integration tests of the plugin runtime against real components: the default plugins,
//! the hostile ones in `tests/hostile-plugins` and the example in `examples/plugins`.
//! They need the plugins built (`cargo xtask plugins`, run by `cargo xtask test`); a
//! missing plugin fails the test with that instruction rather than skipping.

#![allow(missing_docs)]

mod balancing;
mod hostile;
mod hot_swap;
mod languages;
mod loading;
mod policies;

use std::path::PathBuf;
use std::sync::Arc;

use halo_plugin_runtime::{Runtime, SandboxLimits};
use halo_policy::{
    CandidateHost, DatastoreStatus, IsolationInput, IsolationSituation, PlacementInput, PlacementReason, RestartInput,
    RestartPriority, VmInfo, VmToPlace, VmToRestart,
};

/// A built plugin: `default:NAME` (plugins/), `hostile:NAME` or `example:NAME`.
pub fn plugin(which: &str) -> PathBuf {
    let root = std::env::var_os("HALO_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/wasm32-wasip2"));
    let path = match which.split_once(':') {
        Some(("default", name)) => root.join("plugin").join(format!("halo_plugin_{name}.wasm")),
        Some(("hostile", name)) => root.join("plugin/examples").join(format!("{name}.wasm")),
        Some(("example", name)) => root.join("plugin").join(format!("{name}.wasm")),
        _ => panic!("bad plugin spec {which}"),
    };
    assert!(path.is_file(), "{} is missing: build the plugins first with `cargo xtask plugins`", path.display());
    path
}

pub fn runtime() -> Arc<Runtime> {
    Arc::new(Runtime::new(SandboxLimits::default(), None).expect("runtime"))
}

pub fn host(name: &str, free: u64) -> CandidateHost {
    CandidateHost {
        name: name.into(),
        total_memory_mib: 16_384,
        free_memory_mib: free,
        total_vcpus: 8,
        allocated_vcpus: 0,
        labels: vec![],
        datastores: vec!["ds1".into()],
        maintenance: false,
        anti_affinity_groups: vec![],
    }
}

pub fn vm(name: &str, memory: u64) -> VmToPlace {
    VmToPlace {
        name: name.into(),
        memory_mib: memory,
        vcpus: 1,
        priority: RestartPriority::Restart,
        required_host_labels: vec![],
        anti_affinity_group: None,
        avoid_hosts: vec!["failed".into()],
        datastores: vec!["ds1".into()],
    }
}

/// Three VMs, three hosts with different free memory: best fit and first fit disagree.
pub fn placement_input() -> PlacementInput {
    PlacementInput {
        reason: PlacementReason::Failover,
        vms: vec![vm("a", 3000), vm("b", 2000), vm("c", 1000)],
        hosts: vec![host("h1", 8000), host("h2", 3500), host("h3", 2500), host("failed", 16_000)],
        vcpu_overcommit_percent: 400,
        settings: vec![],
    }
}

pub fn restart_input() -> RestartInput {
    let vm = |name: &str, order, deps: &[&str]| VmToRestart {
        name: name.into(),
        priority: RestartPriority::Restart,
        order,
        group: None,
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
    };
    RestartInput { vms: vec![vm("sql", 0, &["dhcp"]), vm("dhcp", 1, &[]), vm("web", 1, &["sql"])], settings: vec![] }
}

pub fn isolation_input() -> IsolationInput {
    let vm = |name: &str, priority| VmInfo {
        name: name.into(),
        priority,
        order: 0,
        memory_mib: 512,
        vcpus: 1,
        labels: vec![],
    };
    IsolationInput {
        situation: IsolationSituation {
            host: "h1".into(),
            isolated_for_ms: 10_000,
            networks: vec![],
            datastores: vec![DatastoreStatus { name: "ds1".into(), reachable: true }],
            isolation_addresses: vec![],
        },
        vms: vec![vm("db", RestartPriority::Restart), vm("cache", RestartPriority::BestEffort)],
        settings: vec![],
    }
}
