//! A placement engine built against a changed copy of contract 0.1.1 (its `assignment` record
//! has a third field) that still claims 0.1.1. The names all match; the types do not.
wit_bindgen::generate!({ path: "wit-changed-record", world: "placement-engine" });
use exports::halo::policy::placement::Guest;
use halo::policy::types::{Assignment, Placement, PlacementInput};
struct P;
export!(P);
impl Guest for P {
    fn place(input: PlacementInput) -> Result<Placement, String> {
        let host = input.hosts.first().map(|h| h.name.clone()).unwrap_or_default();
        let assignments =
            input.vms.into_iter().map(|vm| Assignment { vm: vm.name, host: host.clone(), weight: 1 }).collect();
        Ok(Placement { assignments, unplaced: vec![] })
    }
}
