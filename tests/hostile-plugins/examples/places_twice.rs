//! Places the first VM on two hosts.
wit_bindgen::generate!({ path: "../../wit/0.1.0", world: "placement-engine" });
use exports::halo::policy::placement::Guest;
use halo::policy::types::{Assignment, Placement, PlacementInput};
struct P;
export!(P);

impl Guest for P {
    fn place(input: PlacementInput) -> Result<Placement, String> {
        let mut assignments: Vec<Assignment> = Vec::new();
        for (i, vm) in input.vms.iter().enumerate() {
            let host = input.hosts[i % input.hosts.len()].name.clone();
            assignments.push(Assignment { vm: vm.name.clone(), host });
        }
        if let (Some(first), Some(host)) = (input.vms.first(), input.hosts.last()) {
            assignments.push(Assignment { vm: first.name.clone(), host: host.name.clone() });
        }
        Ok(Placement { assignments, unplaced: vec![] })
    }
}
