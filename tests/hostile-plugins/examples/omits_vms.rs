//! Puts only the first VM in a wave and forgets the rest.
wit_bindgen::generate!({ path: "../../wit/0.1.0", world: "restart-policy" });
use exports::halo::policy::restart_order::Guest;
use halo::policy::types::{RestartError, RestartInput, Wave};
struct P;
export!(P);
impl Guest for P {
    fn plan_restart(input: RestartInput) -> Result<Vec<Wave>, RestartError> {
        Ok(input.vms.into_iter().take(1).map(|vm| vec![vm.name]).collect())
    }
}
