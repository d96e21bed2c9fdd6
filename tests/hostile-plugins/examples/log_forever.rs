//! Calls `log` for ever with a 1 MiB message: its own instructions use little fuel (the host
//! copies the message), so only the wall-clock ceiling stops it.
wit_bindgen::generate!({ path: "../../wit/0.1.0", world: "placement-engine" });
use exports::halo::policy::placement::Guest;
#[allow(unused_imports)]
use halo::policy::types::{Assignment, Placement, PlacementInput};
struct P;
export!(P);

use halo::policy::log::{Level, log};
impl Guest for P {
    fn place(_input: PlacementInput) -> Result<Placement, String> {
        let long = "x".repeat(1 << 20);
        loop {
            log(Level::Info, &long);
        }
    }
}
