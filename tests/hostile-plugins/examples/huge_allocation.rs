//! Asks for 1 GiB (the memory cap must stop it).
wit_bindgen::generate!({ path: "../../wit/0.1.0", world: "placement-engine" });
use exports::halo::policy::placement::Guest;
#[allow(unused_imports)]
use halo::policy::types::{Assignment, Placement, PlacementInput};
struct P;
export!(P);

impl Guest for P {
    fn place(_input: PlacementInput) -> Result<Placement, String> {
        let big = vec![7u8; 1 << 30];
        std::hint::black_box(&big);
        Err("unreachable".into())
    }
}
