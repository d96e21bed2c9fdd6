//! Hands `log` one 20 MiB message (inside its 64 MiB memory cap), then answers sensibly.
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
        log(Level::Info, &"y".repeat(20 << 20));
        let unplaced = input.vms.into_iter().map(|vm| UnplacedVm { vm: vm.name, reason: "declined".into() }).collect();
        Ok(Placement { assignments: vec![], unplaced })
    }
}
