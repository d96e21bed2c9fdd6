//! A well-formed answer (every VM unplaced) whose reasons are text no log should take: with
//! setting `mode` = `huge`, 6 MiB per reason (18 MiB for 3 VMs, past halo's limit per answer);
//! otherwise 100 KiB per reason with newlines and terminal escapes in it.
wit_bindgen::generate!({ path: "../../wit/0.1.0", world: "placement-engine" });
use exports::halo::policy::placement::Guest;
#[allow(unused_imports)]
use halo::policy::types::{Assignment, Placement, PlacementInput};
struct P;
export!(P);

use halo::policy::types::UnplacedVm;
impl Guest for P {
    fn place(input: PlacementInput) -> Result<Placement, String> {
        let huge = input.settings.iter().any(|s| s.key == "mode" && s.value == "huge");
        let reason = if huge {
            "z".repeat(6 << 20)
        } else {
            format!("declined\n2026-12-03T00:00:00Z ERROR halo: forged line\r\u{1b}[2J{}", "w".repeat(100 << 10))
        };
        let unplaced = input.vms.into_iter().map(|vm| UnplacedVm { vm: vm.name, reason: reason.clone() }).collect();
        Ok(Placement { assignments: vec![], unplaced })
    }
}
