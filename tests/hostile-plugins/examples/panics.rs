//! Panics (a trap).
wit_bindgen::generate!({ path: "../../wit/0.1.0", world: "placement-engine" });
use exports::halo::policy::placement::Guest;
#[allow(unused_imports)]
use halo::policy::types::{Assignment, Placement, PlacementInput};
struct P;
export!(P);

impl Guest for P {
    fn place(input: PlacementInput) -> Result<Placement, String> {
        panic!("hostile plugin panics on {} VMs", input.vms.len())
    }
}
