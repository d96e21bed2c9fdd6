//! The default restart policy: waves by `order` (0 first), `restart` before `best-effort`,
//! and dependencies first.
//!
//! Each VM's class is `(priority, order)`. A VM that others depend on is promoted to the
//! earliest class among those that need it ("dependencies first": the DHCP server of order 1
//! starts before the order-0 SQL server that needs it). Classes start one after another;
//! inside a class, a VM starts one wave after the last of its dependencies. A dependency
//! names a VM or a group (every VM of the group); a name that is not in the restart set is
//! taken as already satisfied (that VM is not being restarted, so it runs or is not halo's).

use std::collections::{BTreeMap, BTreeSet};

use crate::types::{RestartError, RestartInput, RestartPriority, VmToRestart, Wave};

/// The restart set with every dependency resolved to VM indices.
pub struct DependencyGraph<'a> {
    vms: &'a [VmToRestart],
    /// `deps[v]`: the VMs `v` waits for.
    deps: Vec<BTreeSet<usize>>,
    index: BTreeMap<&'a str, usize>,
}

impl<'a> DependencyGraph<'a> {
    /// Resolves names and groups of `vms`.
    pub fn new(vms: &'a [VmToRestart]) -> Self {
        let index: BTreeMap<&str, usize> = vms.iter().enumerate().map(|(i, vm)| (vm.name.as_str(), i)).collect();
        let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, vm) in vms.iter().enumerate() {
            if let Some(group) = vm.group.as_deref() {
                groups.entry(group).or_default().push(i);
            }
        }
        let deps = vms
            .iter()
            .enumerate()
            .map(|(me, vm)| {
                let mut deps = BTreeSet::new();
                for name in &vm.depends_on {
                    if let Some(&i) = index.get(name.as_str()) {
                        deps.insert(i);
                    } else if let Some(members) = groups.get(name.as_str()) {
                        deps.extend(members.iter().copied().filter(|&m| m != me));
                    }
                }
                deps
            })
            .collect();
        Self { vms, deps, index }
    }

    /// The VMs `v` waits for.
    pub fn deps(&self, v: usize) -> &BTreeSet<usize> {
        &self.deps[v]
    }

    /// The index of a VM by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Dependencies before dependants, or the first cycle found (each VM depends on the next,
    /// the last on the first).
    pub fn topological_order(&self) -> Result<Vec<usize>, Vec<String>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Open,
            Done,
        }
        let mut mark = vec![Mark::New; self.vms.len()];
        let mut order = Vec::with_capacity(self.vms.len());
        for start in 0..self.vms.len() {
            if mark[start] != Mark::New {
                continue;
            }
            // Iterative DFS: (vm, its deps not yet visited).
            let mut stack: Vec<(usize, Vec<usize>)> = vec![(start, self.deps[start].iter().copied().collect())];
            mark[start] = Mark::Open;
            while let Some((v, pending)) = stack.last_mut() {
                let v = *v;
                match pending.pop() {
                    Some(d) => match mark[d] {
                        Mark::New => {
                            mark[d] = Mark::Open;
                            stack.push((d, self.deps[d].iter().copied().collect()));
                        }
                        Mark::Open => {
                            let from = stack.iter().position(|(s, _)| *s == d).unwrap_or(0);
                            return Err(stack[from..].iter().map(|(s, _)| self.vms[*s].name.clone()).collect());
                        }
                        Mark::Done => {}
                    },
                    None => {
                        mark[v] = Mark::Done;
                        order.push(v);
                        stack.pop();
                    }
                }
            }
        }
        Ok(order)
    }
}

/// The default policy, as the plugin runs it.
pub fn plan_restart(input: &RestartInput) -> Result<Vec<Wave>, RestartError> {
    if let Some(setting) = input.settings.first() {
        return Err(RestartError::Other(format!(
            "setting `{}`: unknown key; the default restart policy takes no settings",
            setting.key
        )));
    }
    plan_restart_fallback(input)
}

/// The built-in fallback (settings are ignored: the default policy has none).
pub fn plan_restart_fallback(input: &RestartInput) -> Result<Vec<Wave>, RestartError> {
    let vms = &input.vms;
    let graph = DependencyGraph::new(vms);
    let topo = graph.topological_order().map_err(RestartError::DependencyCycle)?;
    let class = |v: usize| (vms[v].priority, vms[v].order);
    // Promote dependencies to the earliest class of their dependants: walk dependants first.
    let mut effective: Vec<(RestartPriority, u32)> = (0..vms.len()).map(class).collect();
    for &v in topo.iter().rev() {
        for &d in graph.deps(v) {
            if effective[v] < effective[d] {
                effective[d] = effective[v];
            }
        }
    }
    // Level inside the class: one after the latest same-class dependency.
    let mut level = vec![0usize; vms.len()];
    for &v in &topo {
        level[v] =
            graph.deps(v).iter().filter(|&&d| effective[d] == effective[v]).map(|&d| level[d] + 1).max().unwrap_or(0);
    }
    let mut by_class: BTreeMap<(RestartPriority, u32), BTreeMap<usize, Vec<usize>>> = BTreeMap::new();
    for v in 0..vms.len() {
        by_class.entry(effective[v]).or_default().entry(level[v]).or_default().push(v);
    }
    let waves = by_class
        .into_values()
        .flat_map(BTreeMap::into_values)
        .map(|mut wave| {
            wave.sort_by(|&a, &b| vms[a].order.cmp(&vms[b].order).then(vms[a].name.cmp(&vms[b].name)));
            wave.into_iter().map(|v| vms[v].name.clone()).collect()
        })
        .collect();
    Ok(waves)
}

/// Why a restart answer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRestartPlan {
    /// A wave names a VM not in the input.
    #[error("names VM `{0}`, which is not being restarted")]
    UnknownVm(String),
    /// A VM is in two waves (or twice in one).
    #[error("starts VM `{0}` twice")]
    DuplicateVm(String),
    /// A VM of the input is in no wave.
    #[error("leaves VM `{0}` out of every wave")]
    MissingVm(String),
    /// A VM starts no later than one it depends on.
    #[error("starts VM `{vm}` in wave {vm_wave} but its dependency `{dependency}` only in wave {dependency_wave}")]
    DependencyViolated {
        /// The dependant.
        vm: String,
        /// Its wave (0-based).
        vm_wave: usize,
        /// The VM it waits for.
        dependency: String,
        /// That VM's wave.
        dependency_wave: usize,
    },
    /// A reported cycle that is not one (or not a simple one: a VM named twice).
    #[error("reports a dependency cycle [{}] that does not exist (or names a VM twice)", some_names(.0))]
    NoSuchCycle(Vec<String>),
    /// More entries than VMs.
    #[error("has {entries} entries for {vms} VMs")]
    TooManyEntries {
        /// Entries in the answer.
        entries: usize,
        /// VMs in the input.
        vms: usize,
    },
}

/// At most the first eight of a plugin's names, for a message (an answer may name millions).
fn some_names(names: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut text: String = names.iter().take(SHOWN).map(String::as_str).collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(", … ({} in all)", names.len()));
    }
    text
}

/// Checks a restart answer: every VM in exactly one wave, each after its dependencies; a
/// reported cycle must really be one, and a simple one (each VM once).
pub fn validate_restart(
    input: &RestartInput,
    answer: &Result<Vec<Wave>, RestartError>,
) -> Result<(), InvalidRestartPlan> {
    let graph = DependencyGraph::new(&input.vms);
    match answer {
        Ok(waves) => validate_waves(&graph, input, waves),
        Err(RestartError::Other(_)) => Ok(()),
        Err(RestartError::DependencyCycle(cycle)) => {
            let indices: Option<Vec<usize>> = cycle.iter().map(|name| graph.index_of(name)).collect();
            let real = indices.is_some_and(|ix| {
                let simple = ix.len() <= input.vms.len()
                    && ix.iter().collect::<std::collections::BTreeSet<_>>().len() == ix.len();
                !ix.is_empty() && simple && (0..ix.len()).all(|k| graph.deps(ix[k]).contains(&ix[(k + 1) % ix.len()]))
            });
            if real { Ok(()) } else { Err(InvalidRestartPlan::NoSuchCycle(cycle.clone())) }
        }
    }
}

fn validate_waves(graph: &DependencyGraph<'_>, input: &RestartInput, waves: &[Wave]) -> Result<(), InvalidRestartPlan> {
    let entries: usize = waves.iter().map(Vec::len).sum::<usize>().max(waves.len());
    if entries > input.vms.len() {
        return Err(InvalidRestartPlan::TooManyEntries { entries, vms: input.vms.len() });
    }
    let mut wave_of: Vec<Option<usize>> = vec![None; input.vms.len()];
    for (w, wave) in waves.iter().enumerate() {
        for name in wave {
            let v = graph.index_of(name).ok_or_else(|| InvalidRestartPlan::UnknownVm(name.clone()))?;
            if wave_of[v].replace(w).is_some() {
                return Err(InvalidRestartPlan::DuplicateVm(name.clone()));
            }
        }
    }
    let mut placed = Vec::with_capacity(input.vms.len());
    for (v, w) in wave_of.iter().enumerate() {
        placed.push(w.ok_or_else(|| InvalidRestartPlan::MissingVm(input.vms[v].name.clone()))?);
    }
    for (v, &vm_wave) in placed.iter().enumerate() {
        for &d in graph.deps(v) {
            if placed[d] >= vm_wave {
                return Err(InvalidRestartPlan::DependencyViolated {
                    vm: input.vms[v].name.clone(),
                    vm_wave,
                    dependency: input.vms[d].name.clone(),
                    dependency_wave: placed[d],
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vm(name: &str, priority: RestartPriority, order: u32, group: Option<&str>, deps: &[&str]) -> VmToRestart {
        VmToRestart {
            name: name.into(),
            priority,
            order,
            group: group.map(Into::into),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn plan(vms: Vec<VmToRestart>) -> Result<Vec<Wave>, RestartError> {
        let input = RestartInput { vms, settings: vec![] };
        let answer = plan_restart(&input);
        assert_eq!(validate_restart(&input, &answer), Ok(()), "{answer:?}");
        answer
    }

    use RestartPriority::{BestEffort, Restart};

    #[test]
    fn waves_follow_order_and_priority() {
        let waves = plan(vec![
            vm("be0", BestEffort, 0, None, &[]),
            vm("r1", Restart, 1, None, &[]),
            vm("r0", Restart, 0, None, &[]),
        ])
        .expect("no cycle");
        assert_eq!(waves, vec![vec!["r0"], vec!["r1"], vec!["be0"]]);
    }

    #[test]
    fn a_dependency_starts_first_even_with_a_later_order() {
        let waves = plan(vec![
            vm("sql", Restart, 0, None, &["dhcp"]),
            vm("dhcp", Restart, 1, None, &[]),
            vm("web", Restart, 0, None, &[]),
        ])
        .expect("no cycle");
        assert_eq!(waves, vec![vec!["web", "dhcp"], vec!["sql"]]);
    }

    #[test]
    fn a_group_dependency_waits_for_every_member() {
        let waves = plan(vec![
            vm("app", Restart, 0, None, &["db"]),
            vm("db-1", Restart, 0, Some("db"), &[]),
            vm("db-2", Restart, 0, Some("db"), &[]),
        ])
        .expect("no cycle");
        assert_eq!(waves, vec![vec!["db-1", "db-2"], vec!["app"]]);
    }

    #[test]
    fn unknown_dependencies_count_as_running() {
        let waves = plan(vec![vm("app", Restart, 0, None, &["not-restarted"])]).expect("no cycle");
        assert_eq!(waves, vec![vec!["app"]]);
    }

    #[test]
    fn a_cycle_is_named_in_dependency_order() {
        let err = plan(vec![
            vm("a", Restart, 0, None, &["b"]),
            vm("b", Restart, 0, None, &["c"]),
            vm("c", Restart, 0, None, &["a"]),
            vm("d", Restart, 0, None, &[]),
        ])
        .expect_err("cycle");
        let RestartError::DependencyCycle(cycle) = err else { panic!("expected a cycle, got {err:?}") };
        assert_eq!(cycle.len(), 3);
        assert!(cycle.contains(&"a".to_string()) && !cycle.contains(&"d".to_string()));
    }

    #[test]
    fn validation_refuses_missing_duplicate_early_and_false_cycles() {
        let input = RestartInput {
            vms: vec![vm("db", Restart, 0, None, &[]), vm("app", Restart, 0, None, &["db"])],
            settings: vec![],
        };
        let check = |waves: Vec<Vec<&str>>| {
            let waves = waves.into_iter().map(|w| w.into_iter().map(String::from).collect()).collect();
            validate_restart(&input, &Ok(waves))
        };
        assert_eq!(check(vec![vec!["db"], vec!["app"]]), Ok(()));
        assert!(matches!(check(vec![vec!["db", "app"]]), Err(InvalidRestartPlan::DependencyViolated { .. })));
        assert!(matches!(check(vec![vec!["db"]]), Err(InvalidRestartPlan::MissingVm(_))));
        assert!(matches!(check(vec![vec!["db"], vec!["app", "db"]]), Err(InvalidRestartPlan::TooManyEntries { .. })));
        assert!(matches!(
            check(vec![vec!["db"], vec!["app"], vec!["x"]]),
            Err(InvalidRestartPlan::TooManyEntries { .. })
        ));
        assert!(matches!(check(vec![vec!["db"], vec!["ghost"]]), Err(InvalidRestartPlan::UnknownVm(_))));
        let false_cycle = Err(RestartError::DependencyCycle(vec!["db".into(), "app".into()]));
        assert!(matches!(validate_restart(&input, &false_cycle), Err(InvalidRestartPlan::NoSuchCycle(_))));
    }

    #[test]
    fn a_real_cycle_repeated_is_refused_and_quoted_briefly() {
        let input = RestartInput {
            vms: vec![
                vm("a", Restart, 0, None, &["b"]),
                vm("b", Restart, 0, None, &["a"]),
                vm("c", Restart, 0, None, &[]),
            ],
            settings: vec![],
        };
        let once = Err(RestartError::DependencyCycle(vec!["a".into(), "b".into()]));
        assert_eq!(validate_restart(&input, &once), Ok(()));
        let repeated: Vec<String> = ["a", "b"].iter().cycle().take(2_000_000).map(|s| s.to_string()).collect();
        let err = validate_restart(&input, &Err(RestartError::DependencyCycle(repeated))).expect_err("refused");
        let message = err.to_string();
        assert!(message.len() < 200 && message.contains("2000000 in all"), "{message}");
    }

    proptest! {
        #[test]
        fn default_plan_is_valid_for_random_graphs(
            specs in prop::collection::vec((0u32..4, any::<bool>(), 0usize..3, prop::collection::vec(0usize..30, 0..3)), 1..30)
        ) {
            let vms: Vec<VmToRestart> = specs.iter().enumerate().map(|(i, (order, be, group, deps))| VmToRestart {
                name: format!("vm{i}"),
                priority: if *be { BestEffort } else { Restart },
                order: *order,
                group: (*group > 0).then(|| format!("g{group}")),
                // Only earlier VMs: acyclic by construction, except group edges which may cycle.
                depends_on: deps.iter().filter(|&&d| d < i).map(|d| format!("vm{d}")).collect(),
            }).collect();
            let input = RestartInput { vms, settings: vec![] };
            let answer = plan_restart(&input);
            prop_assert!(answer.is_ok());
            prop_assert_eq!(validate_restart(&input, &answer), Ok(()));
        }

        #[test]
        fn any_cycle_reported_is_real(
            deps in prop::collection::vec(prop::collection::vec(0usize..8, 0..3), 1..8)
        ) {
            let vms: Vec<VmToRestart> = deps.iter().enumerate().map(|(i, d)| VmToRestart {
                name: format!("vm{i}"),
                priority: Restart,
                order: 0,
                group: None,
                depends_on: d.iter().map(|d| format!("vm{d}")).collect(),
            }).collect();
            let input = RestartInput { vms, settings: vec![] };
            let answer = plan_restart(&input);
            prop_assert_eq!(validate_restart(&input, &answer), Ok(()));
        }
    }
}
