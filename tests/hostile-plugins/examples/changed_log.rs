//! A restart policy built against a changed copy of contract 0.1.1 (the log `level` enum has
//! a fifth case) that still claims 0.1.1: the import's type differs from the one halo provides.
wit_bindgen::generate!({ path: "wit-changed-log", world: "restart-policy" });
use exports::halo::policy::restart_order::Guest;
use halo::policy::log::{Level, log};
use halo::policy::types::{RestartError, RestartInput, Wave};
struct P;
export!(P);
impl Guest for P {
    fn plan_restart(input: RestartInput) -> Result<Vec<Wave>, RestartError> {
        log(Level::Fatal, "planning");
        Ok(vec![input.vms.into_iter().map(|vm| vm.name).collect()])
    }
}
