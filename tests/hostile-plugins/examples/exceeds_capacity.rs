//! Puts every VM on the first host, whatever its free memory.
wit_bindgen::generate!({ path: "../../wit/0.1.0", world: "placement-engine" });
use exports::halo::policy::placement::Guest;
use halo::policy::types::{Assignment, Placement, PlacementInput};
struct P;
export!(P);

impl Guest for P {
    fn place(input: PlacementInput) -> Result<Placement, String> {
        let host = input.hosts.first().map(|h| h.name.clone()).unwrap_or_default();
        let assignments = input.vms.into_iter().map(|vm| Assignment { vm: vm.name, host: host.clone() }).collect();
        Ok(Placement { assignments, unplaced: vec![] })
    }
}
