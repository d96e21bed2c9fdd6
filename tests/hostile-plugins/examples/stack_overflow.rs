//! Recurses without end (a stack overflow trap).
wit_bindgen::generate!({ path: "../../wit/0.1.0", world: "restart-policy" });
use exports::halo::policy::restart_order::Guest;
use halo::policy::types::{RestartError, RestartInput, Wave};
struct P;
export!(P);
#[allow(unconditional_recursion)]
fn deeper(n: u64, pad: [u64; 64]) -> u64 {
    let pad = std::hint::black_box(pad);
    pad[(n % 64) as usize] + deeper(n + 1, pad)
}
impl Guest for P {
    fn plan_restart(_input: RestartInput) -> Result<Vec<Wave>, RestartError> {
        Err(RestartError::Other(deeper(0, [1; 64]).to_string()))
    }
}
