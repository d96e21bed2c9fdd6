//! What the core's actions need from the world, as small traits: one per driver. Each has two
//! implementations — the real one in its driver crate (`halo-net`, `halo-datastore`,
//! `halo-libvirt`) and the simulated one in `halo-sim` — and [`carry_out`] hands every action
//! to the right one, so the agent and the simulator execute actions the same way.
//!
//! A driver never answers by returning: it delivers the outcome later as an [`Input`] of the
//! node (`DatastoreWritten`, `ClaimResult`, `PingResult`, `StartResult`, `VmState`, …) through
//! whatever channel it was built with. That is how real I/O behaves (it takes time, it may
//! never come back) and how the simulator schedules it; the core stays free of both.
//!
//! [`Input`]: crate::Input

use crate::node::{Action, Event, PingTarget, StopReason};
use crate::wire::{Claim, DatastoreRecord, Heartbeat};

/// Sends heartbeats on a management network (answers come as `Input::Heartbeat` on the
/// peers).
pub trait HeartbeatSender {
    /// Sends `heartbeat` to every peer on `network`.
    fn send_heartbeat(&mut self, network: &str, heartbeat: &std::sync::Arc<Heartbeat>);
}

/// The datastores: heartbeat records and claims.
pub trait DatastoreDriver {
    /// Writes this host's record; answers `Input::DatastoreWritten`.
    fn write_record(&mut self, datastore: &str, record: &DatastoreRecord);
    /// Reads every host's record; answers `Input::DatastoreRead`.
    fn read_records(&mut self, datastore: &str);
    /// Takes a claim atomically; answers `Input::ClaimResult`.
    fn claim(&mut self, datastore: &str, claim: &Claim);
    /// Looks a claim up on every datastore; answers `Input::ClaimChecked`.
    fn check_claim(&mut self, vm: &str, generation: u64);
    /// Keeps a fence's record on every datastore (no answer).
    fn record_fence(&mut self, record: &crate::wire::FenceRecord);
    /// Records `vm`'s definition with its disks' paths changed (old → new) on every datastore;
    /// answers `Input::DefinitionRecorded`.
    fn record_definition(&mut self, vm: &str, moved: &[(String, String)]);
}

/// Pings; answers `Input::PingResult`.
pub trait PingDriver {
    /// Pings a peer's management address or an isolation address.
    fn ping(&mut self, target: &PingTarget);
}

/// The hypervisor: starts (on this host or, for the master, on another), stops, migrations.
pub trait HypervisorDriver {
    /// Starts `vm` on `host` under `generation`; answers `Input::StartResult` (and the host
    /// that runs it reports `Input::VmState` running).
    fn start_vm(&mut self, host: &str, vm: &str, generation: u64);
    /// Stops `vm` on this host (after `grace_secs` of guest shutdown, then power off);
    /// answers `Input::VmState` with `StoppedByHalo(reason)`.
    fn stop_vm(&mut self, vm: &str, reason: StopReason, grace_secs: u32);
    /// Live-migrates `vm` from `from` to `to`; answers `Input::MigrateResult`.
    fn migrate_vm(&mut self, vm: &str, from: &str, to: &str);
    /// Pauses `vm` on this host (no answer: a failure is logged and alerted by the driver).
    fn pause_vm(&mut self, vm: &str);
    /// Lets a paused `vm` on this host run again (no answer, as for a pause).
    fn resume_vm(&mut self, vm: &str);
    /// Pauses the copy of `vm` on `host` (no answer: the host's next reports and the alert
    /// tell; a failure is logged and alerted by the driver).
    fn pause_copy(&mut self, host: &str, vm: &str);
    /// Reads `host`'s load from its libvirt; answers `Input::LoadRead`.
    fn read_load(&mut self, host: &str);
    /// Mirrors `vm`'s disks on `host` into `dir`, writes synchronous, until in step; answers
    /// `Input::StorageCopied` (after `Input::StorageProgress` on the way).
    fn copy_storage(&mut self, vm: &str, host: &str, dir: &str);
    /// Switches `vm` on `host` to its mirrored copies and keeps the new definition (`pivot`),
    /// or drops the mirror; answers `Input::StorageFinished`.
    fn finish_storage(&mut self, vm: &str, host: &str, pivot: bool);
}

/// Fence devices (a host's BMC, a PDU): power a host off and confirm it is off.
pub trait FenceDriver {
    /// Powers `host` off through its devices in order until one confirms it is off; answers
    /// `Input::FenceResult`.
    fn fence_host(&mut self, host: &str);
    /// Calls off a fence of `host` under way (its agents are killed); no answer.
    fn cancel_fence(&mut self, host: &str);
    /// Asks `host`'s devices for its power state; answers `Input::FenceMonitored`.
    fn monitor_fence(&mut self, host: &str);
}

/// Where events go: the event log, alerts.
pub trait EventSink {
    /// Records an event (and raises it when it is an alert).
    fn record(&mut self, event: Event);
}

/// Every driver a node needs.
pub trait Drivers: HeartbeatSender + DatastoreDriver + PingDriver + HypervisorDriver + FenceDriver + EventSink {}

impl<T: HeartbeatSender + DatastoreDriver + PingDriver + HypervisorDriver + FenceDriver + EventSink> Drivers for T {}

/// Hands one action to the driver that carries it out.
pub fn carry_out(action: Action, drivers: &mut impl Drivers) {
    match action {
        Action::SendHeartbeat { network, heartbeat } => drivers.send_heartbeat(&network, &heartbeat),
        Action::WriteDatastore { datastore, record } => drivers.write_record(&datastore, &record),
        Action::ReadDatastore { datastore } => drivers.read_records(&datastore),
        Action::Ping { target } => drivers.ping(&target),
        Action::Claim { datastore, claim } => drivers.claim(&datastore, &claim),
        Action::StartVm { host, vm, generation } => drivers.start_vm(&host, &vm, generation),
        Action::StopVm { vm, reason, grace_secs } => drivers.stop_vm(&vm, reason, grace_secs),
        Action::MigrateVm { vm, from, to } => drivers.migrate_vm(&vm, &from, &to),
        Action::PauseVm { vm } => drivers.pause_vm(&vm),
        Action::ResumeVm { vm } => drivers.resume_vm(&vm),
        Action::PauseCopy { host, vm } => drivers.pause_copy(&host, &vm),
        Action::CheckClaim { vm, generation } => drivers.check_claim(&vm, generation),
        Action::FenceHost { host } => drivers.fence_host(&host),
        Action::CancelFence { host } => drivers.cancel_fence(&host),
        Action::MonitorFence { host } => drivers.monitor_fence(&host),
        Action::ReadLoad { host } => drivers.read_load(&host),
        Action::CopyStorage { vm, host, dir } => drivers.copy_storage(&vm, &host, &dir),
        Action::RecordDefinition { vm, moved } => drivers.record_definition(&vm, &moved),
        Action::FinishStorage { vm, host, pivot } => drivers.finish_storage(&vm, &host, pivot),
        Action::RecordFence { record } => drivers.record_fence(&record),
        Action::Record(event) => drivers.record(event),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Severity;

    /// Records which driver method each action reached.
    #[derive(Default)]
    struct Calls(Vec<String>);

    impl HeartbeatSender for Calls {
        fn send_heartbeat(&mut self, network: &str, heartbeat: &std::sync::Arc<Heartbeat>) {
            self.0.push(format!("heartbeat {network} {}", heartbeat.seq));
        }
    }
    impl DatastoreDriver for Calls {
        fn write_record(&mut self, datastore: &str, record: &DatastoreRecord) {
            self.0.push(format!("write {datastore} {}", record.counter));
        }
        fn read_records(&mut self, datastore: &str) {
            self.0.push(format!("read {datastore}"));
        }
        fn claim(&mut self, datastore: &str, claim: &Claim) {
            self.0.push(format!("claim {datastore} {}@{}", claim.vm, claim.generation));
        }
        fn check_claim(&mut self, vm: &str, generation: u64) {
            self.0.push(format!("check claim {vm}@{generation}"));
        }
        fn record_fence(&mut self, record: &crate::wire::FenceRecord) {
            self.0.push(format!("fence record {}", record.host));
        }
        fn record_definition(&mut self, vm: &str, moved: &[(String, String)]) {
            self.0.push(format!("definition {vm} {}", moved.len()));
        }
    }
    impl FenceDriver for Calls {
        fn fence_host(&mut self, host: &str) {
            self.0.push(format!("fence {host}"));
        }
        fn cancel_fence(&mut self, host: &str) {
            self.0.push(format!("cancel fence {host}"));
        }
        fn monitor_fence(&mut self, host: &str) {
            self.0.push(format!("monitor fence {host}"));
        }
    }
    impl PingDriver for Calls {
        fn ping(&mut self, target: &PingTarget) {
            self.0.push(format!("ping {target:?}"));
        }
    }
    impl HypervisorDriver for Calls {
        fn start_vm(&mut self, host: &str, vm: &str, generation: u64) {
            self.0.push(format!("start {vm}@{generation} on {host}"));
        }
        fn stop_vm(&mut self, vm: &str, reason: StopReason, grace_secs: u32) {
            self.0.push(format!("stop {vm} {reason:?} {grace_secs}"));
        }
        fn migrate_vm(&mut self, vm: &str, from: &str, to: &str) {
            self.0.push(format!("migrate {vm} {from}->{to}"));
        }
        fn pause_vm(&mut self, vm: &str) {
            self.0.push(format!("pause {vm}"));
        }
        fn resume_vm(&mut self, vm: &str) {
            self.0.push(format!("resume {vm}"));
        }
        fn pause_copy(&mut self, host: &str, vm: &str) {
            self.0.push(format!("pause {vm} on {host}"));
        }
        fn read_load(&mut self, host: &str) {
            self.0.push(format!("load of {host}"));
        }
        fn copy_storage(&mut self, vm: &str, host: &str, dir: &str) {
            self.0.push(format!("copy {vm} on {host} to {dir}"));
        }
        fn finish_storage(&mut self, vm: &str, host: &str, pivot: bool) {
            self.0.push(format!("finish {vm} on {host} pivot {pivot}"));
        }
    }
    impl EventSink for Calls {
        fn record(&mut self, event: Event) {
            self.0.push(format!("event {}", event.kind));
        }
    }

    #[test]
    fn every_action_reaches_its_driver() {
        let claim = Claim { vm: "db".into(), generation: 2, master: "h1".into(), epoch: 1, host: "h2".into() };
        let actions = vec![
            Action::ReadDatastore { datastore: "ds1".into() },
            Action::Claim { datastore: "ds1".into(), claim },
            Action::StartVm { host: "h2".into(), vm: "db".into(), generation: 2 },
            Action::StopVm { vm: "web".into(), reason: StopReason::Isolation, grace_secs: 30 },
            Action::MigrateVm { vm: "web".into(), from: "h1".into(), to: "h3".into() },
            Action::PauseVm { vm: "web".into() },
            Action::ResumeVm { vm: "web".into() },
            Action::PauseCopy { host: "h3".into(), vm: "web".into() },
            Action::CheckClaim { vm: "web".into(), generation: 3 },
            Action::CopyStorage { vm: "web".into(), host: "h1".into(), dir: "/new".into() },
            Action::RecordDefinition { vm: "web".into(), moved: vec![("/a".into(), "/new/a".into())] },
            Action::FinishStorage { vm: "web".into(), host: "h1".into(), pivot: true },
            Action::Ping { target: PingTarget::IsolationAddress("10.0.0.1".into()) },
            Action::WriteDatastore {
                datastore: "ds1".into(),
                record: DatastoreRecord { counter: 7, ..Default::default() },
            },
            Action::Record(Event {
                at: 0,
                node: "h1".into(),
                severity: Severity::Info,
                kind: crate::EventKind::VmRestarted,
                message: String::new(),
                trace: None,
            }),
        ];
        let mut calls = Calls::default();
        for action in actions {
            carry_out(action, &mut calls);
        }
        assert_eq!(
            calls.0,
            vec![
                "read ds1",
                "claim ds1 db@2",
                "start db@2 on h2",
                "stop web Isolation 30",
                "migrate web h1->h3",
                "pause web",
                "resume web",
                "pause web on h3",
                "check claim web@3",
                "copy web on h1 to /new",
                "definition web 1",
                "finish web on h1 pivot true",
                "ping IsolationAddress(\"10.0.0.1\")",
                "write ds1 7",
                "event vm-restarted",
            ]
        );
    }
}
