//! A columnar placement engine (contract 0.1.3) whose two assignment columns differ in length:
//! every VM in `assigned-vms`, one host fewer in `assigned-hosts`.
wit_bindgen::generate!({ path: "../../wit/0.1.3", world: "columnar-placement-engine" });
use exports::halo::policy::columnar_placement::{ColumnarInput, ColumnarPlacement, Guest};
struct P;
export!(P);

impl Guest for P {
    fn place(input: ColumnarInput) -> Result<ColumnarPlacement, String> {
        let vms = input.vms.vcpus.len() as u32;
        let hosts = (input.hosts.total_vcpus.len() as u32).max(1);
        let mut assigned_hosts: Vec<u32> = (0..vms).map(|vm| vm % hosts).collect();
        assigned_hosts.pop();
        Ok(ColumnarPlacement { assigned_vms: (0..vms).collect(), assigned_hosts, unplaced: vec![] })
    }
}
