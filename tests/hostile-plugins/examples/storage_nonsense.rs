//! An isolation plugin of contract 0.1.4 (`isolation-storage-policy`, written with
//! `halo-plugin-sdk`) whose isolation answers are halo's own but whose storage answers are
//! nonsense: a decision for a VM that is not on the host, and a grace time of 0 s for every
//! other one (outside 1 to 86400). The agent must refuse each answer and decide with its
//! built-in storage response.
use halo_plugin_sdk::policy;

struct Nonsense;

impl halo_plugin_sdk::IsolationPolicy for Nonsense {
    fn decide(input: policy::IsolationInput) -> Result<Vec<policy::VmIsolationDecision>, String> {
        policy::isolation::decide_isolation(&input)
    }
}

impl halo_plugin_sdk::StoragePolicy for Nonsense {
    fn decide_storage(input: policy::StorageInput) -> Result<Vec<policy::VmStorageDecision>, String> {
        if input.situation.host == "ghost-host" {
            return Ok(vec![policy::VmStorageDecision {
                vm: "ghost".into(),
                response: policy::StorageResponse::ResumeWhenBack,
            }]);
        }
        Ok(input
            .vms
            .iter()
            .map(|vm| policy::VmStorageDecision { vm: vm.name.clone(), response: policy::StorageResponse::Restart(0) })
            .collect())
    }
}

halo_plugin_sdk::export_isolation_and_storage!(Nonsense);
