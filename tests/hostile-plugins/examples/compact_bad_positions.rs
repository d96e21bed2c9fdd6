//! A compact placement engine (contract 0.1.1) whose answer breaks the contract in the way its
//! setting `mode` names: `unknown-host` (a host position past the list), `twice` (the first VM
//! assigned and also unplaced, the last left out), `missing` (the last VM left out),
//! `million` (1,000,000 assignments).
wit_bindgen::generate!({ path: "../../wit/0.1.1", world: "compact-placement-engine" });
use exports::halo::policy::compact_placement::{
    CompactAssignment, CompactInput, CompactPlacement, CompactUnplaced, Guest,
};
struct P;
export!(P);

impl Guest for P {
    fn place(input: CompactInput) -> Result<CompactPlacement, String> {
        let mode = input.settings.iter().find(|s| s.key == "mode").map(|s| s.value.clone()).unwrap_or_default();
        let hosts = input.hosts.len() as u32;
        let mut answer = CompactPlacement {
            assignments: (0..input.vms.len() as u32)
                .map(|vm| CompactAssignment { vm, host: vm % hosts.max(1) })
                .collect(),
            unplaced: vec![],
        };
        match mode.as_str() {
            "unknown-host" => answer.assignments[0].host = hosts,
            "twice" => {
                answer.assignments.pop();
                answer.unplaced.push(CompactUnplaced { vm: 0, reason: "and placed".into() });
            }
            "missing" => {
                answer.assignments.pop();
            }
            "million" => {
                answer.assignments = (0..1_000_000).map(|vm| CompactAssignment { vm, host: 0 }).collect();
            }
            other => return Err(format!("unknown mode {other:?}")),
        }
        Ok(answer)
    }
}
