//! Never answers: loops forever (the CPU budget must stop it).
wit_bindgen::generate!({ path: "../../wit/0.1.0", world: "placement-engine" });
use exports::halo::policy::placement::Guest;
#[allow(unused_imports)]
use halo::policy::types::{Assignment, Placement, PlacementInput};
struct P;
export!(P);

impl Guest for P {
    fn place(_input: PlacementInput) -> Result<Placement, String> {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}
