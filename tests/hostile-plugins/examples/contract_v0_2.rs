//! A placement engine built against contract 0.2.0 (this agent speaks 0.1.0).
wit_bindgen::generate!({ path: "wit-0.2.0", world: "placement-engine" });
use exports::halo::policy::placement::Guest;
use halo::policy::types::{Placement, PlacementInput};
struct P;
export!(P);
impl Guest for P {
    fn place(_input: PlacementInput) -> Result<Placement, String> {
        Ok(Placement { assignments: vec![], unplaced: vec![] })
    }
}
