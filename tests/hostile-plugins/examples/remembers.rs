//! Tries to carry state from one decision to the next: it answers normally on its first call
//! in an instance and refuses on any later one. The runtime gives every call a fresh instance
//! with memory reset to its initial image, so it must never see a second call.
wit_bindgen::generate!({ path: "../../wit/0.1.0", world: "placement-engine" });
use exports::halo::policy::placement::Guest;
use halo::policy::types::{Placement, PlacementInput, UnplacedVm};
use std::sync::atomic::{AtomicU32, Ordering};
struct P;
export!(P);

static CALLS: AtomicU32 = AtomicU32::new(0);
static mut SCRATCH: [u8; 4096] = [0; 4096];

impl Guest for P {
    fn place(input: PlacementInput) -> Result<Placement, String> {
        let seen = CALLS.fetch_add(1, Ordering::SeqCst);
        // A heap allocation and a write to a static buffer: both must be gone next call.
        let leftover = unsafe { SCRATCH[0] };
        unsafe { SCRATCH[0] = 0xAB };
        if seen > 0 || leftover != 0 {
            return Err(format!("state leaked: call {seen} of this instance, scratch {leftover:#x}"));
        }
        let unplaced = input.vms.into_iter().map(|vm| UnplacedVm { vm: vm.name, reason: "declined".into() }).collect();
        Ok(Placement { assignments: vec![], unplaced })
    }
}
