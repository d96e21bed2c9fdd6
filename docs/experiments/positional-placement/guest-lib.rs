wit_bindgen::generate!({ path: "../../wit/proto", world: "proto" });
mod bump;
#[global_allocator]
static ALLOCATOR: bump::Bump = bump::Bump::new();
use exports::halo::proto::positional::{Guest, Input as In, Cinput as CIn, Sinput as SIn, Span, Rinput as RIn, Rel, Answer, Assignment, Unplaced, RestartPriority};
fn prio(p: &RestartPriority) -> u8 { match p { RestartPriority::Restart => 0, RestartPriority::BestEffort => 1, RestartPriority::Unprotected => 2 } }
include!("core.rs");
include!("core2.rs");
include!("core3.rs");
include!("core4.rs");
struct P;
impl Guest for P {
    fn place(input: In) -> Result<Answer, String> {
        if input.vcpu_overcommit_percent == 0 { return Err("refused".into()); }
        let (a, u) = place(&input);
        Ok(Answer {
            assignments: a.into_iter().map(|(vm, host)| Assignment { vm, host }).collect(),
            unplaced: u.into_iter().map(|vm| Unplaced { vm, reason: "no host fits".into() }).collect(),
        })
    }
    fn place_rel(input: RIn) -> Result<Answer, String> {
        if input.vcpu_overcommit_percent == 0 { return Err("refused".into()); }
        let (a, u) = place_rel(&input);
        Ok(Answer {
            assignments: a.into_iter().map(|(vm, host)| Assignment { vm, host }).collect(),
            unplaced: u.into_iter().map(|vm| Unplaced { vm, reason: "no host fits".into() }).collect(),
        })
    }
    fn place_spans(input: SIn) -> Result<Answer, String> {
        if input.vcpu_overcommit_percent == 0 { return Err("refused".into()); }
        let (a, u) = place_spans(&input);
        Ok(Answer {
            assignments: a.into_iter().map(|(vm, host)| Assignment { vm, host }).collect(),
            unplaced: u.into_iter().map(|vm| Unplaced { vm, reason: "no host fits".into() }).collect(),
        })
    }
    fn place_columns(input: CIn) -> Result<Answer, String> {
        if input.vcpu_overcommit_percent == 0 { return Err("refused".into()); }
        let (a, u) = place_columns(&input);
        Ok(Answer {
            assignments: a.into_iter().map(|(vm, host)| Assignment { vm, host }).collect(),
            unplaced: u.into_iter().map(|vm| Unplaced { vm, reason: "no host fits".into() }).collect(),
        })
    }
}
export!(P);
