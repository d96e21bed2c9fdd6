//! halo's default restart policy as a WebAssembly component (world
//! `halo:policy/restart-policy@0.1.0`): the very code of `halo_policy::restart`, which the
//! agent also runs natively as its built-in fallback.

#![deny(clippy::unwrap_used)]

wit_bindgen::generate!({ path: "../../wit/0.1.0", world: "restart-policy" });

use halo::policy::types as wit;
use halo_policy as policy;

struct DefaultRestartOrder;

impl exports::halo::policy::restart_order::Guest for DefaultRestartOrder {
    fn plan_restart(input: wit::RestartInput) -> Result<Vec<wit::Wave>, wit::RestartError> {
        let input = policy::RestartInput {
            vms: input
                .vms
                .into_iter()
                .map(|vm| policy::VmToRestart {
                    name: vm.name,
                    priority: match vm.priority {
                        wit::RestartPriority::Restart => policy::RestartPriority::Restart,
                        wit::RestartPriority::BestEffort => policy::RestartPriority::BestEffort,
                        wit::RestartPriority::Unprotected => policy::RestartPriority::Unprotected,
                    },
                    order: vm.order,
                    group: vm.group,
                    depends_on: vm.depends_on,
                })
                .collect(),
            settings: input.settings.into_iter().map(|s| policy::Setting { key: s.key, value: s.value }).collect(),
        };
        policy::restart::plan_restart(&input).map_err(|e| match e {
            policy::RestartError::DependencyCycle(vms) => wit::RestartError::DependencyCycle(vms),
            policy::RestartError::Other(reason) => wit::RestartError::Other(reason),
        })
    }
}

export!(DefaultRestartOrder);
