//! Storage migration while running (issue 18, the seeds' Storage vMotion): `halo migrate VM
//! --storage DIR` moves a running VM's disks to another directory every host sees, while the
//! guest keeps running. The master drives it; the VM's host copies.
//!
//! The order is what keeps it safe. The host mirrors every disk into `DIR` with **synchronous
//! writes** (each guest write lands on both copies before it completes), so once the mirror
//! is in step the two copies are the same at every instant. Only then does the master record
//! the new definition on the datastores (what a failover starts the VM from), and only once
//! that is recorded does the host switch the guest to the copies (pivot) and keep the new
//! definition. A crash anywhere leaves a definition whose disks hold every write: before the
//! record, the old disks (the mirror is abandoned); between record and pivot, either (they
//! are the same); after, the new. A failure undoes in the same spirit: the old definition is
//! recorded again *while the mirror is still in step*, and only then is the mirror dropped.
//!
//! Only a master starts a move; the node that started it carries it to its end even if it
//! stops being master meanwhile (cut off from the datastore, say): it alone knows whether the
//! new definition was recorded, so it alone can tell a switch from a drop. An agent that
//! restarts mid-way leaves the mirror in step (safe: both copies hold every write) for the
//! operator to settle (docs/operator.md).

use serde::{Deserialize, Serialize};

use super::{Action, EventKind, Node, Severity};

/// Where a storage move is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum StorageStep {
    /// The host mirrors the disks (`Action::CopyStorage`).
    Copying,
    /// The mirror is in step; the new definition is being recorded.
    Recording,
    /// Recorded; the host switches the guest to the copies.
    Pivoting,
    /// Failed after the mirror was in step: the old definition is being recorded again.
    Reverting {
        /// Why it failed.
        why: String,
    },
    /// The mirror is being dropped (the guest stays on its old disks).
    Aborting {
        /// Why.
        why: String,
    },
}

/// One storage move the master drives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) struct StorageMove {
    host: String,
    dir: String,
    step: StorageStep,
    /// The disks' paths, old → new (known once the mirror is in step).
    moved: Vec<(String, String)>,
}

/// Whether `dir` may be a storage move's target: an absolute path, no `..`, no control
/// characters, no quotes (it goes into domain XML).
fn dir_problem(dir: &str) -> Option<&'static str> {
    if !dir.starts_with('/') {
        Some("it is not an absolute path")
    } else if dir.split('/').any(|part| part == "..") {
        Some("it contains `..`")
    } else if dir.chars().any(|c| c.is_control() || c == '\'' || c == '"' || c == '<' || c == '&') {
        Some("it contains control characters, quotes, `<` or `&`")
    } else if dir.len() > 4096 {
        Some("it is longer than 4096 bytes")
    } else {
        None
    }
}

impl Node {
    /// Whether a storage move of `vm` is under way (its VM must not migrate meanwhile).
    pub(super) fn storage_moving(&self, vm: &str) -> bool {
        self.storage.contains_key(vm)
    }

    /// `halo migrate VM --storage DIR` (master).
    pub(super) fn move_storage(&mut self, vm: &str, dir: &str) {
        let refuse = |node: &mut Node, why: String| {
            node.record(Severity::Warning, EventKind::CommandRefused, format!("move storage of {vm}: {why}"), None);
        };
        if self.master.is_none() {
            let master = self.master_view.as_ref().map_or("nobody yet".to_string(), |(m, _)| m.clone());
            return refuse(self, format!("ask the master ({master})"));
        }
        if self.config.vm(vm).is_none() {
            return refuse(self, "halo does not know this VM (protect it first)".into());
        }
        if let Some(why) = dir_problem(dir) {
            return refuse(self, format!("target {dir}: {why}"));
        }
        let copies = self.running_copies();
        let hosts: Vec<String> = copies.get(vm).map(|c| c.keys().cloned().collect()).unwrap_or_default();
        let [host] = hosts.as_slice() else {
            return refuse(self, format!("it runs on {} hosts; it must run on exactly one", hosts.len()));
        };
        let Some(master) = self.master.as_ref() else { return };
        if master.migrating.contains(vm) || master.restarts.contains_key(vm) || self.storage.contains_key(vm) {
            return refuse(self, "it is being migrated, restarted or moved already".into());
        }
        if !self.heard_lately(host) {
            return refuse(self, format!("{host} has not been heard in the last few heartbeats"));
        }
        let host = host.clone();
        self.storage.insert(
            vm.to_string(),
            StorageMove { host: host.clone(), dir: dir.to_string(), step: StorageStep::Copying, moved: Vec::new() },
        );
        self.record(
            Severity::Info,
            EventKind::StorageMoveStarted,
            format!("{vm}: copying its disks to {dir} on {host} (the guest keeps running)"),
            None,
        );
        self.out.push(Action::CopyStorage { vm: vm.to_string(), host, dir: dir.to_string() });
    }

    /// How far the copy is (from the host's driver).
    pub(super) fn on_storage_progress(&mut self, vm: &str, percent: u32) {
        if self.storage.get(vm).is_some_and(|s| s.step == StorageStep::Copying) {
            self.record(Severity::Info, EventKind::StorageMoveProgress, format!("{vm}: {percent} % copied"), None);
        }
    }

    /// The mirror is in step (`Ok`: the disks' paths, old → new), or the copy failed and was
    /// dropped by the host.
    pub(super) fn on_storage_copied(&mut self, vm: &str, result: Result<Vec<(String, String)>, String>) {
        let Some(moving) = self.storage.get_mut(vm).filter(|s| s.step == StorageStep::Copying) else { return };
        match result {
            Ok(moved) => {
                moving.moved = moved.clone();
                moving.step = StorageStep::Recording;
                let paths: Vec<String> = moved.iter().map(|(_, new)| new.clone()).collect();
                self.record(
                    Severity::Info,
                    EventKind::StorageMoveProgress,
                    format!(
                        "{vm}: 100 % copied, the copies in step ({}); recording the new definition",
                        paths.join(", ")
                    ),
                    None,
                );
                self.out.push(Action::RecordDefinition { vm: vm.to_string(), moved });
            }
            Err(why) => {
                let dir = moving.dir.clone();
                self.storage.remove(vm);
                self.record(
                    Severity::Alert,
                    EventKind::StorageMoveFailed,
                    format!("{vm}: moving its disks to {dir} failed, it runs on its old disks: {why}"),
                    None,
                );
            }
        }
    }

    /// The definition was recorded on the datastores (or on none).
    pub(super) fn on_definition_recorded(&mut self, vm: &str, result: Result<(), String>) {
        let Some(moving) = self.storage.get_mut(vm) else { return };
        let host = moving.host.clone();
        match (moving.step.clone(), result) {
            (StorageStep::Recording, Ok(())) => {
                moving.step = StorageStep::Pivoting;
                self.out.push(Action::FinishStorage { vm: vm.to_string(), host, pivot: true });
            }
            (StorageStep::Recording, Err(why)) => {
                // Nothing recorded: the old definition stands; the mirror can go.
                moving.step = StorageStep::Aborting { why: format!("no datastore took the new definition: {why}") };
                self.out.push(Action::FinishStorage { vm: vm.to_string(), host, pivot: false });
            }
            (StorageStep::Reverting { why }, Ok(())) => {
                moving.step = StorageStep::Aborting { why };
                self.out.push(Action::FinishStorage { vm: vm.to_string(), host, pivot: false });
            }
            (StorageStep::Reverting { why }, Err(again)) => {
                // The new definition may still be in force somewhere: the mirror stays in step
                // (both copies hold every write) until the operator settles it.
                self.storage.remove(vm);
                self.record(
                    Severity::Alert,
                    EventKind::StorageMoveFailed,
                    format!(
                        "{vm}: switching to the copies failed ({why}) and the old definition could not be recorded again ({again}); the disks stay mirrored in step — run `halo migrate {vm} --storage` again or settle it with `virsh blockjob`"
                    ),
                    None,
                );
            }
            _ => {}
        }
    }

    /// The host switched the guest to the copies (`pivot`), or dropped the mirror.
    pub(super) fn on_storage_finished(&mut self, vm: &str, pivot: bool, result: Result<(), String>) {
        let Some(moving) = self.storage.get_mut(vm) else { return };
        match (moving.step.clone(), pivot, result) {
            (StorageStep::Pivoting, true, Ok(())) => {
                let dir = moving.dir.clone();
                let paths: Vec<String> = moving.moved.iter().map(|(_, new)| new.clone()).collect();
                self.storage.remove(vm);
                self.record(
                    Severity::Info,
                    EventKind::StorageMoved,
                    format!("{vm} runs on its disks in {dir} now ({}), never stopped", paths.join(", ")),
                    None,
                );
            }
            (StorageStep::Pivoting, true, Err(why)) => {
                // The mirror is still in step: record the old definition first, then drop it.
                let back: Vec<(String, String)> =
                    moving.moved.iter().map(|(old, new)| (new.clone(), old.clone())).collect();
                moving.step = StorageStep::Reverting { why: format!("the switch to the copies failed: {why}") };
                self.out.push(Action::RecordDefinition { vm: vm.to_string(), moved: back });
            }
            (StorageStep::Aborting { why }, false, result) => {
                let dir = moving.dir.clone();
                self.storage.remove(vm);
                let dropped = match result {
                    Ok(()) => "the mirror is dropped".to_string(),
                    Err(e) => format!("dropping the mirror failed too ({e}); check `virsh blockjob`"),
                };
                self.record(
                    Severity::Alert,
                    EventKind::StorageMoveFailed,
                    format!("{vm}: moving its disks to {dir} failed, it runs on its old disks ({dropped}): {why}"),
                    None,
                );
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::beat_with;
    use super::super::{Command, Input};
    use super::*;
    use crate::config::tests::cluster;
    use crate::policies::BuiltinPolicies;
    use crate::wire::VmReport;

    /// host-1 is master; vm-1 runs on host-2. Returns the node after a few beats.
    fn master() -> Node {
        let mut node = Node::new("host-1", cluster(3, 2), 0);
        let mut p = BuiltinPolicies;
        for now in (0..5_000).step_by(250) {
            let seq = now / 250 + 1;
            let vms = vec![VmReport { vm: "vm-1".into(), generation: 1 }];
            for input in [
                Input::Tick,
                beat_with("host-2", seq, &[("host-1", seq)], vms),
                beat_with("host-3", seq, &[("host-1", seq)], vec![]),
                Input::DatastoreWritten { datastore: "ds1".into(), ok: true },
            ] {
                node.handle(now, input, &mut p);
            }
        }
        assert!(node.is_master());
        node
    }

    fn step(node: &mut Node, input: Input) -> (Vec<Action>, Vec<(EventKind, String)>) {
        let actions = node.handle(5_000, input, &mut BuiltinPolicies);
        let events = actions
            .iter()
            .filter_map(|a| match a {
                Action::Record(e) => Some((e.kind, e.message.clone())),
                _ => None,
            })
            .collect();
        (actions.into_iter().filter(|a| !matches!(a, Action::Record(_))).collect(), events)
    }

    /// The storage actions among `actions`.
    fn storage(actions: Vec<Action>) -> Vec<Action> {
        actions
            .into_iter()
            .filter(|a| {
                matches!(a, Action::CopyStorage { .. } | Action::RecordDefinition { .. } | Action::FinishStorage { .. })
            })
            .collect()
    }

    fn moved() -> Vec<(String, String)> {
        vec![("/old/vm-1.qcow2".into(), "/new/vm-1.qcow2".into())]
    }

    fn command(dir: &str) -> Input {
        Input::Command(Command::MoveStorage { vm: "vm-1".into(), dir: dir.into() })
    }

    #[test]
    fn a_storage_move_records_the_new_definition_before_the_switch() {
        let mut node = master();
        let (actions, events) = step(&mut node, command("/new"));
        assert_eq!(events[0].0, EventKind::StorageMoveStarted, "{events:?}");
        assert!(
            actions.contains(&Action::CopyStorage { vm: "vm-1".into(), host: "host-2".into(), dir: "/new".into() }),
            "{actions:?}"
        );
        // Busy: a second move and a live migration are refused meanwhile.
        let (_, events) = step(&mut node, command("/other"));
        assert!(
            events.iter().any(|(k, m)| *k == EventKind::CommandRefused && m.contains("moved already")),
            "{events:?}"
        );
        let (actions, _) = step(&mut node, Input::StorageCopied { vm: "vm-1".into(), result: Ok(moved()) });
        assert_eq!(storage(actions), vec![Action::RecordDefinition { vm: "vm-1".into(), moved: moved() }]);
        let (actions, _) = step(&mut node, Input::DefinitionRecorded { vm: "vm-1".into(), result: Ok(()) });
        assert_eq!(
            storage(actions),
            vec![Action::FinishStorage { vm: "vm-1".into(), host: "host-2".into(), pivot: true }]
        );
        let (_, events) = step(&mut node, Input::StorageFinished { vm: "vm-1".into(), pivot: true, result: Ok(()) });
        assert_eq!(events[0].0, EventKind::StorageMoved, "{events:?}");
        assert!(!node.storage_moving("vm-1"));
    }

    #[test]
    fn a_failed_switch_records_the_old_definition_again_before_the_mirror_is_dropped() {
        let mut node = master();
        step(&mut node, command("/new"));
        step(&mut node, Input::StorageCopied { vm: "vm-1".into(), result: Ok(moved()) });
        step(&mut node, Input::DefinitionRecorded { vm: "vm-1".into(), result: Ok(()) });
        let (actions, events) =
            step(&mut node, Input::StorageFinished { vm: "vm-1".into(), pivot: true, result: Err("boom".into()) });
        let back = vec![("/new/vm-1.qcow2".to_string(), "/old/vm-1.qcow2".to_string())];
        assert_eq!(storage(actions), vec![Action::RecordDefinition { vm: "vm-1".into(), moved: back }], "{events:?}");
        let (actions, _) = step(&mut node, Input::DefinitionRecorded { vm: "vm-1".into(), result: Ok(()) });
        assert_eq!(
            storage(actions),
            vec![Action::FinishStorage { vm: "vm-1".into(), host: "host-2".into(), pivot: false }]
        );
        let (_, events) = step(&mut node, Input::StorageFinished { vm: "vm-1".into(), pivot: false, result: Ok(()) });
        assert_eq!(events[0].0, EventKind::StorageMoveFailed);
        assert!(events[0].1.contains("runs on its old disks") && events[0].1.contains("boom"), "{events:?}");
        // Nothing recorded at all: the mirror is dropped at once.
        step(&mut node, command("/new"));
        step(&mut node, Input::StorageCopied { vm: "vm-1".into(), result: Ok(moved()) });
        let (actions, _) =
            step(&mut node, Input::DefinitionRecorded { vm: "vm-1".into(), result: Err("NFS down".into()) });
        assert_eq!(
            storage(actions),
            vec![Action::FinishStorage { vm: "vm-1".into(), host: "host-2".into(), pivot: false }]
        );
    }

    #[test]
    fn bad_targets_and_unknown_or_absent_vms_are_refused() {
        let mut node = master();
        for (input, why) in [
            (command("relative/dir"), "not an absolute path"),
            (command("/a/../b"), "contains `..`"),
            (command("/a'b"), "quotes"),
            (Input::Command(Command::MoveStorage { vm: "nope".into(), dir: "/x".into() }), "does not know"),
            (Input::Command(Command::MoveStorage { vm: "vm-2".into(), dir: "/x".into() }), "runs on 0 hosts"),
        ] {
            let (actions, events) = step(&mut node, input);
            assert!(!actions.iter().any(|a| matches!(a, Action::CopyStorage { .. })), "{actions:?}");
            assert!(
                events.iter().any(|(k, m)| *k == EventKind::CommandRefused && m.contains(why)),
                "{why}: {events:?}"
            );
        }
    }
}
