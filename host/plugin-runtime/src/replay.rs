//! Judging a candidate plugin against recorded decisions (`halo plugin replay`) and against the
//! policy in force as it decides (shadow mode): the same four verdicts either way.

use halo_policy as policy;

use crate::error::FailureKind;
use crate::runtime::{DecidedBy, Decision};

/// What a candidate made of one decision, compared with the answer that was acted on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "verdict", content = "detail")]
pub enum Verdict {
    /// The same answer.
    Same,
    /// A valid answer, but another one; the difference, for the operator.
    Different(String),
    /// An answer the runtime refused (it broke the contract); why.
    Invalid(String),
    /// No answer: the candidate trapped, ran out of time or memory, or refused; why.
    Failed(String),
}

impl Verdict {
    /// The verdict's wire name (`same`, `different`, `invalid`, `failed`).
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Same => "same",
            Verdict::Different(_) => "different",
            Verdict::Invalid(_) => "invalid",
            Verdict::Failed(_) => "failed",
        }
    }

    /// The candidate's `decision` against the `recorded` answer.
    pub fn of<A: Differ>(decision: &Decision<A>, recorded: &A) -> Self {
        match &decision.decided_by {
            DecidedBy::Plugin(_) => match decision.answer.difference(recorded) {
                None => Verdict::Same,
                Some(difference) => Verdict::Different(difference),
            },
            DecidedBy::BuiltIn { failure: Some(f) } if f.kind == FailureKind::InvalidAnswer => {
                Verdict::Invalid(f.detail.clone())
            }
            DecidedBy::BuiltIn { failure: Some(f) } => Verdict::Failed(format!("{}: {}", f.kind.as_str(), f.detail)),
            DecidedBy::BuiltIn { failure: None } => Verdict::Failed("no candidate plugin is loaded".into()),
        }
    }
}

/// How two answers of a world differ, in words (none: they are the same).
pub trait Differ {
    /// What `self` (the candidate's) does differently from `recorded`.
    fn difference(&self, recorded: &Self) -> Option<String>;
}

/// At most this many items named in one difference.
const NAMED: usize = 8;

fn listed(items: Vec<String>) -> String {
    let more = items.len().saturating_sub(NAMED);
    let mut text = items.into_iter().take(NAMED).collect::<Vec<_>>().join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

impl Differ for policy::Placement {
    fn difference(&self, recorded: &Self) -> Option<String> {
        let host = |p: &policy::Placement, vm: &str| p.assignments.iter().find(|a| a.vm == vm).map(|a| a.host.clone());
        let mut vms: Vec<&str> = recorded
            .assignments
            .iter()
            .map(|a| a.vm.as_str())
            .chain(recorded.unplaced.iter().map(|u| u.vm.as_str()))
            .collect();
        vms.sort_unstable();
        vms.dedup();
        let moved: Vec<String> = vms
            .iter()
            .filter_map(|vm| {
                let (was, now) = (host(recorded, vm), host(self, vm));
                (was != now).then(|| {
                    let show = |h: Option<String>| h.unwrap_or_else(|| "unplaced".into());
                    format!("{vm}: {} → {}", show(was), show(now))
                })
            })
            .collect();
        if !moved.is_empty() {
            return Some(format!("{} VM(s) placed differently: {}", moved.len(), listed(moved)));
        }
        (self != recorded).then(|| "the same hosts, in another order or with other reasons".into())
    }
}

impl Differ for Vec<policy::VmIsolationDecision> {
    fn difference(&self, recorded: &Self) -> Option<String> {
        let changed: Vec<String> = recorded
            .iter()
            .filter_map(|r| {
                let now = self.iter().find(|d| d.vm == r.vm).map(|d| d.action);
                (now != Some(r.action)).then(|| format!("{}: {:?} → {:?}", r.vm, r.action, now))
            })
            .collect();
        if !changed.is_empty() {
            return Some(format!("{} VM(s) handled differently: {}", changed.len(), listed(changed)));
        }
        (self != recorded).then(|| "the same actions, in another order".into())
    }
}

impl Differ for Result<Vec<policy::Wave>, policy::RestartError> {
    fn difference(&self, recorded: &Self) -> Option<String> {
        if self == recorded {
            return None;
        }
        let waves = |r: &Self| match r {
            Ok(waves) => waves.iter().map(|w| format!("[{}]", w.join(" "))).collect::<Vec<_>>().join(" "),
            Err(e) => format!("no waves ({e})"),
        };
        Some(format!("waves {} instead of {}", waves(self), waves(recorded)))
    }
}

impl Differ for Vec<policy::balance::BalanceMove> {
    fn difference(&self, recorded: &Self) -> Option<String> {
        let show = |moves: &Self| {
            let text: Vec<String> = moves.iter().map(|m| format!("VM #{} → host #{}", m.vm, m.to)).collect();
            if text.is_empty() { "no moves".to_string() } else { listed(text) }
        };
        let same = self.len() == recorded.len() && self.iter().zip(recorded).all(|(a, b)| a.vm == b.vm && a.to == b.to);
        (!same).then(|| format!("{} instead of {}", show(self), show(recorded)))
    }
}

#[cfg(test)]
mod tests {
    use halo_policy::{Assignment, Placement, UnplacedVm};

    use super::Differ;

    #[test]
    fn a_placement_difference_names_each_vm_that_went_elsewhere() {
        let recorded = Placement {
            assignments: vec![
                Assignment { vm: "a".into(), host: "h1".into() },
                Assignment { vm: "b".into(), host: "h2".into() },
            ],
            unplaced: vec![UnplacedVm { vm: "c".into(), reason: "full".into() }],
        };
        assert_eq!(recorded.difference(&recorded.clone()), None);
        let mut other = recorded.clone();
        other.assignments[1].host = "h3".into();
        other.unplaced.clear();
        other.assignments.push(Assignment { vm: "c".into(), host: "h1".into() });
        assert_eq!(
            other.difference(&recorded).as_deref(),
            Some("2 VM(s) placed differently: b: h2 → h3, c: unplaced → h1")
        );
    }
}
