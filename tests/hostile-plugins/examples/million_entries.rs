//! Answers an isolation question with 1,000,000 decisions.
wit_bindgen::generate!({ path: "../../wit/0.1.0", world: "isolation-policy" });
use exports::halo::policy::isolation_response::Guest;
use halo::policy::types::{IsolationAction, IsolationInput, VmIsolationDecision};
struct P;
export!(P);
impl Guest for P {
    fn decide_isolation(_input: IsolationInput) -> Result<Vec<VmIsolationDecision>, String> {
        Ok((0..1_000_000)
            .map(|_| VmIsolationDecision { vm: String::new(), action: IsolationAction::PowerOff })
            .collect())
    }
}
