//! Writes 20,000 long log lines, then answers sensibly (nothing placed, each VM explained).
wit_bindgen::generate!({ path: "../../wit/0.1.0", world: "placement-engine" });
use exports::halo::policy::placement::Guest;
#[allow(unused_imports)]
use halo::policy::types::{Assignment, Placement, PlacementInput};
struct P;
export!(P);

use halo::policy::log::{Level, log};
use halo::policy::types::UnplacedVm;
impl Guest for P {
    fn place(input: PlacementInput) -> Result<Placement, String> {
        let long = "x".repeat(4000);
        for _ in 0..20_000 {
            log(Level::Info, &long);
        }
        let unplaced = input.vms.into_iter().map(|vm| UnplacedVm { vm: vm.name, reason: "declined".into() }).collect();
        Ok(Placement { assignments: vec![], unplaced })
    }
}
