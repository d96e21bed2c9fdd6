//! halo's default balancing policy as a WebAssembly component (world
//! `halo:policy/balancing-policy@0.1.2`): the very code of `halo_policy::balance::propose`,
//! which the agent also runs natively as its built-in fallback. It evens out the hosts' memory
//! and CPU shares by live migrations, each paying a cost, within the operator's rules.

#![deny(clippy::unwrap_used)]

wit_bindgen::generate!({ path: "../../wit/0.1.2", world: "balancing-policy" });

#[cfg(target_arch = "wasm32")]
#[path = "../../placement/src/bump.rs"]
mod bump;

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: bump::Bump = bump::Bump::new();

use exports::halo::policy::balancing as wit;
use halo_policy::Setting;
use halo_policy::balance::{self as policy, BalanceInput, RuleKind, Strength};

struct DefaultBalancing;

impl wit::Guest for DefaultBalancing {
    fn propose(input: wit::BalanceInput) -> Result<Vec<wit::BalanceMove>, String> {
        let moves = policy::propose(&from_wit(input));
        Ok(moves.into_iter().map(|m| wit::BalanceMove { vm: m.vm, to: m.to, reason: m.reason }).collect())
    }
}

fn from_wit(input: wit::BalanceInput) -> BalanceInput {
    BalanceInput {
        hosts: input
            .hosts
            .into_iter()
            .map(|h| policy::BalanceHost {
                memory_mib: h.memory_mib,
                vcpus: h.vcpus,
                threads: h.threads,
                takes: h.takes,
            })
            .collect(),
        host_names: input.host_names,
        vms: (0..input.vms.host.len())
            .map(|i| {
                let get = |list: &[u32]| list.get(i).copied().unwrap_or(0);
                policy::BalanceVm {
                    host: input.vms.host[i],
                    memory_mib: input.vms.memory_mib.get(i).copied().unwrap_or(0),
                    vcpus: get(&input.vms.vcpus),
                    cpu_percent: get(&input.vms.cpu_percent),
                    movable: input.vms.movable.get(i).copied().unwrap_or(false),
                }
            })
            .collect(),
        vm_names: Vec::new(),
        rules: input
            .rules
            .into_iter()
            .map(|r| policy::BalanceRule {
                name: r.name,
                kind: match r.kind {
                    wit::RuleKind::VmHost => RuleKind::VmHost,
                    wit::RuleKind::Together => RuleKind::Together,
                    wit::RuleKind::Apart => RuleKind::Apart,
                },
                strength: match r.strength {
                    wit::RuleStrength::Must => Strength::Must,
                    wit::RuleStrength::Should => Strength::Should,
                },
                vms: r.vms,
                hosts: r.hosts,
            })
            .collect(),
        threshold_percent: input.threshold_percent,
        cost_percent: input.cost_percent,
        max_moves: input.max_moves,
        vcpu_overcommit_percent: input.vcpu_overcommit_percent,
        settings: input.settings.into_iter().map(|s| Setting { key: s.key, value: s.value }).collect(),
    }
}

export!(DefaultBalancing);
