//! halo's default isolation response as a WebAssembly component (world
//! `halo:policy/isolation-policy@0.1.0`): the very code of `halo_policy::isolation`, which
//! the agent also runs natively as its built-in fallback.

#![deny(clippy::unwrap_used)]

wit_bindgen::generate!({ path: "../../wit/0.1.0", world: "isolation-policy" });

use halo::policy::types as wit;
use halo_policy as policy;

struct DefaultIsolation;

impl exports::halo::policy::isolation_response::Guest for DefaultIsolation {
    fn decide_isolation(input: wit::IsolationInput) -> Result<Vec<wit::VmIsolationDecision>, String> {
        let answer = policy::isolation::decide_isolation(&from_wit(input))?;
        Ok(answer
            .into_iter()
            .map(|d| wit::VmIsolationDecision {
                vm: d.vm,
                action: match d.action {
                    policy::IsolationAction::LeaveRunning => wit::IsolationAction::LeaveRunning,
                    policy::IsolationAction::PowerOff => wit::IsolationAction::PowerOff,
                    policy::IsolationAction::ShutDown(secs) => wit::IsolationAction::ShutDown(secs),
                },
            })
            .collect())
    }
}

fn from_wit(input: wit::IsolationInput) -> policy::IsolationInput {
    let s = input.situation;
    policy::IsolationInput {
        situation: policy::IsolationSituation {
            host: s.host,
            isolated_for_ms: s.isolated_for_ms,
            networks: s
                .networks
                .into_iter()
                .map(|n| policy::NetworkStatus { name: n.name, link_up: n.link_up, peers_heard: n.peers_heard })
                .collect(),
            datastores: s
                .datastores
                .into_iter()
                .map(|d| policy::DatastoreStatus { name: d.name, reachable: d.reachable })
                .collect(),
            isolation_addresses: s
                .isolation_addresses
                .into_iter()
                .map(|a| policy::AddressStatus { address: a.address, answered: a.answered })
                .collect(),
        },
        vms: input
            .vms
            .into_iter()
            .map(|vm| policy::VmInfo {
                name: vm.name,
                priority: match vm.priority {
                    wit::RestartPriority::Restart => policy::RestartPriority::Restart,
                    wit::RestartPriority::BestEffort => policy::RestartPriority::BestEffort,
                    wit::RestartPriority::Unprotected => policy::RestartPriority::Unprotected,
                },
                order: vm.order,
                memory_mib: vm.memory_mib,
                vcpus: vm.vcpus,
                labels: vm.labels,
            })
            .collect(),
        settings: input.settings.into_iter().map(|s| policy::Setting { key: s.key, value: s.value }).collect(),
    }
}

export!(DefaultIsolation);
