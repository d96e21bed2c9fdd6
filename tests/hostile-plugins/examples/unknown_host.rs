//! Places every VM on a host that does not exist.
wit_bindgen::generate!({ path: "../../wit/0.1.0", world: "placement-engine" });
use exports::halo::policy::placement::Guest;
use halo::policy::types::{Assignment, Placement, PlacementInput};
struct P;
export!(P);

impl Guest for P {
    fn place(input: PlacementInput) -> Result<Placement, String> {
        let assignments =
            input.vms.into_iter().map(|vm| Assignment { vm: vm.name, host: "no-such-host".into() }).collect();
        Ok(Placement { assignments, unplaced: vec![] })
    }
}
