//! A balancing policy (contract 0.1.2) whose answer breaks the contract in the way its setting
//! `mode` names: `breaks-rule` (the first VM of the first rule joins the second one's host),
//! `no-room` (the last VM to the first host), `unknown-vm` (a VM position past the list),
//! `twice` (the first VM moved twice), `too-many` (one move more than `max-moves`), `loops`
//! (never answers).
wit_bindgen::generate!({ path: "../../wit/0.1.2", world: "balancing-policy" });
use exports::halo::policy::balancing::{BalanceInput, BalanceMove, Guest};
struct P;
export!(P);

fn to(vm: u32, host: u32) -> BalanceMove {
    BalanceMove { vm, to: host, reason: "hostile".into() }
}

impl Guest for P {
    fn propose(input: BalanceInput) -> Result<Vec<BalanceMove>, String> {
        let mode = input.settings.iter().find(|s| s.key == "mode").map(|s| s.value.clone()).unwrap_or_default();
        let hosts = input.hosts.len() as u32;
        let other = |vm: u32| (input.vms.host[vm as usize] + 2) % hosts.max(1);
        Ok(match mode.as_str() {
            "breaks-rule" => {
                let rule = input.rules.first().ok_or("no rule")?;
                let (a, b) = (rule.vms[0], rule.vms[1]);
                vec![to(a, input.vms.host[b as usize])]
            }
            "no-room" => vec![to(input.vms.host.len() as u32 - 1, 0)],
            "unknown-vm" => vec![to(input.vms.host.len() as u32, 0)],
            "twice" => vec![to(0, other(0)), to(0, other(0))],
            "too-many" => (0..=input.max_moves).map(|v| to(v, other(v))).collect(),
            "loops" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            other => return Err(format!("unknown mode {other:?}")),
        })
    }
}
