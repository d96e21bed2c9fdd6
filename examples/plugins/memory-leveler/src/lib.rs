//! A site's own balancing policy, written from `wit/0.1.2/policy.wit` alone (docs/plugins.md,
//! "Worked example: a balancing plugin"): it levels **memory only** — CPU readings are left
//! aside — by moving one VM at a time from the host whose memory is fullest (in percent) to
//! the emptiest, as long as that narrows their gap by at least `cost-percent` points. It never
//! moves a VM that any rule names (the simplest way to keep every rule), and it answers no
//! moves while the spread between the fullest and the emptiest host is below the threshold.
//!
//! Setting: `min-vm-mib` (default 0): VMs smaller than this are not worth a migration.

wit_bindgen::generate!({ path: "../../../wit/0.1.2", world: "balancing-policy" });

use exports::halo::policy::balancing::{BalanceInput, BalanceMove, Guest};

struct MemoryLeveler;

impl Guest for MemoryLeveler {
    fn propose(input: BalanceInput) -> Result<Vec<BalanceMove>, String> {
        let min_vm_mib = match input.settings.iter().find(|s| s.key == "min-vm-mib") {
            Some(s) => s.value.parse::<u64>().map_err(|_| format!("min-vm-mib: `{}` is not a number", s.value))?,
            None => 0,
        };
        let (hosts, vms) = (&input.hosts, &input.vms);
        let count = vms.host.len();
        // Memory in use per host, and vCPUs, as the moves so far leave them.
        let mut used = vec![0u64; hosts.len()];
        let mut vcpus = vec![0u64; hosts.len()];
        for v in 0..count {
            used[vms.host[v] as usize] += vms.memory_mib[v];
            vcpus[vms.host[v] as usize] += u64::from(vms.vcpus[v]);
        }
        let ruled: Vec<bool> = (0..count as u32).map(|vm| input.rules.iter().any(|r| r.vms.contains(&vm))).collect();
        let share = |h: usize, used: u64| 100.0 * used as f64 / hosts[h].memory_mib.max(1) as f64;
        let takers: Vec<usize> = (0..hosts.len()).filter(|&h| hosts[h].takes).collect();
        let mut moved = vec![false; count];
        let mut moves = Vec::new();
        while moves.len() < input.max_moves as usize {
            let by_share = |a: &&usize, b: &&usize| share(**a, used[**a]).total_cmp(&share(**b, used[**b]));
            let (Some(&full), Some(&empty)) = (takers.iter().max_by(by_share), takers.iter().min_by(by_share)) else {
                break;
            };
            let gap = share(full, used[full]) - share(empty, used[empty]);
            if full == empty || gap < f64::from(input.threshold_percent) {
                break;
            }
            let limit = u64::from(hosts[empty].vcpus) * u64::from(input.vcpu_overcommit_percent) / 100;
            // The VM whose move leaves the two hosts closest.
            let best = (0..count)
                .filter(|&v| {
                    vms.host[v] as usize == full
                        && vms.movable[v]
                        && !moved[v]
                        && !ruled[v]
                        && vms.memory_mib[v] >= min_vm_mib
                        && used[empty] + vms.memory_mib[v] <= hosts[empty].memory_mib
                        && vcpus[empty] + u64::from(vms.vcpus[v]) <= limit
                })
                .map(|v| {
                    let m = vms.memory_mib[v];
                    let after = (share(full, used[full] - m) - share(empty, used[empty] + m)).abs();
                    (v, gap - after)
                })
                .filter(|&(_, gain)| gain >= f64::from(input.cost_percent).max(0.001))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            let Some((v, gain)) = best else { break };
            let name = |h: usize| input.host_names.get(h).cloned().unwrap_or_else(|| format!("host #{h}"));
            moves.push(BalanceMove {
                vm: v as u32,
                to: empty as u32,
                reason: format!(
                    "memory: {} is {gap:.0} points fuller than {}; this move closes {gain:.0}",
                    name(full),
                    name(empty)
                ),
            });
            used[full] -= vms.memory_mib[v];
            used[empty] += vms.memory_mib[v];
            vcpus[full] -= u64::from(vms.vcpus[v]);
            vcpus[empty] += u64::from(vms.vcpus[v]);
            moved[v] = true;
        }
        Ok(moves)
    }
}

export!(MemoryLeveler);
