//! Every kind of event the core records, one enum with its wire name (the event log, the API,
//! alerts and the simulator's timeline show the wire name; code matches on the variant).

use serde::{Deserialize, Serialize};

macro_rules! event_kinds {
    ($($(#[doc = $doc:literal])* $variant:ident => $wire:literal,)*) => {
        /// What an [`Event`](super::Event) is about. The wire name (kebab-case) is stable:
        /// alert rules and scripts match on it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum EventKind {
            $($(#[doc = $doc])* #[serde(rename = $wire)] $variant,)*
        }

        impl EventKind {
            /// Every kind, in declaration order.
            pub const ALL: &[EventKind] = &[$(EventKind::$variant,)*];

            /// The wire name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $wire,)*
                }
            }
        }

        impl std::str::FromStr for EventKind {
            type Err = UnknownEventKind;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($wire => Ok(EventKind::$variant),)*
                    _ => Err(UnknownEventKind(s.to_string())),
                }
            }
        }
    };
}

event_kinds! {
    // A host's verdict, as the master judged it.
    /// A host answers again.
    HostRunning => "host-running",
    /// A host missed heartbeats; not judged yet.
    HostSuspect => "host-suspect",
    /// A host's agent is silent but the host answers ping: its VMs are left alone.
    HostAgentDown => "host-agent-down",
    /// A host failed on every proof: its protected VMs are restarted.
    HostFailed => "host-failed",
    /// A host is isolated (it writes so on its datastores).
    HostIsolated => "host-isolated",
    /// A host is in another partition.
    HostPartitioned => "host-partitioned",
    /// No datastore readable: nothing can be proven about a host.
    HostUnknown => "host-unknown",
    // This host's own view.
    /// This host cannot write one of its datastores (a failed or hung heartbeat write).
    DatastoreLost => "datastore-lost",
    /// This host writes a datastore again after losing it.
    DatastoreRegained => "datastore-regained",
    /// A host's health provider reports a new state (proactive HA): degraded or failing is
    /// an alert, healthy again an event.
    HostHealth => "host-health",
    /// The master quarantines a host for its health (no new VMs go there) or lifts it.
    HostQuarantine => "host-quarantine",
    /// This host's health provider failed (did not run, timed out, answered nonsense): its
    /// health stays as last reported.
    HealthProviderFailed => "health-provider-failed",
    /// VMs on this host lost the storage under their disks (their datastore is lost here, or
    /// QEMU paused them on an I/O error); the storage response (policy) says what follows.
    VmStorageLost => "vm-storage-lost",
    /// A VM's storage is back before its grace time ran out: resumed, nothing restarted.
    VmStorageRegained => "vm-storage-regained",
    /// A VM's storage stayed lost past its grace time and another host reaches it: powered
    /// off here to be restarted there.
    VmStorageRestart => "vm-storage-restart",
    /// A VM's storage stayed lost past its grace time but no host reaches it (or HA is off):
    /// not restarted, left waiting for the storage.
    VmStorageWaiting => "vm-storage-waiting",
    /// This host is alone on its networks (isolation check starts).
    Alone => "alone",
    /// This host declared itself isolated.
    Isolated => "isolated",
    /// This host's isolation ended.
    IsolationOver => "isolation-over",
    /// The isolation response was carried out for a VM.
    IsolationResponse => "isolation-response",
    /// The isolation response was not carried out (why in the message).
    IsolationResponseSkipped => "isolation-response-skipped",
    /// This host fenced itself: it stops its protected VMs.
    Fenced => "fenced",
    /// This host reaches the cluster again after fencing.
    Unfenced => "unfenced",
    /// This host's agent resumed after a gap.
    Resumed => "resumed",
    /// Protected VMs were paused after a long gap, until their claims are checked.
    VmsHeld => "vms-held",
    /// One VM was held (paused) after a gap.
    VmHeld => "vm-held",
    /// A held VM's claim still stands: it runs on.
    VmResumed => "vm-resumed",
    /// A held VM was restarted elsewhere meanwhile: this copy is powered off.
    VmSuperseded => "vm-superseded",
    /// No agent heard at all since the start.
    NoAgentHeard => "no-agent-heard",
    // Mastership.
    /// This host became master.
    MasterElected => "master-elected",
    /// This host stopped being master.
    MasterSteppedDown => "master-stepped-down",
    // Restarts.
    /// A VM runs again (restarted by halo).
    VmRestarted => "vm-restarted",
    /// A VM was restarted on the host it ran on.
    VmRestartedInPlace => "vm-restarted-in-place",
    /// A restart wave was planned.
    RestartWave => "restart-wave",
    /// A claim did not complete in time; claimed again.
    ClaimTimeout => "claim-timeout",
    /// A claim could not be written.
    ClaimFailed => "claim-failed",
    /// A claim was lost to a newer one.
    ClaimLost => "claim-lost",
    /// The host a VM was claimed for failed before running it.
    RestartTargetFailed => "restart-target-failed",
    /// A best-effort VM's start did not report back: not retried.
    RestartGaveUp => "restart-gave-up",
    /// A claim is superseded by a new generation for the same host.
    RestartSuperseded => "restart-superseded",
    /// A claim's host cannot be heard: waiting.
    RestartWaiting => "restart-waiting",
    /// A queued restart is dropped: the VM runs on a host this master hears now.
    RestartDropped => "restart-dropped",
    /// Restarts are suppressed (HA off, or a rule).
    RestartsSuppressed => "restarts-suppressed",
    /// The restart-order policy answered an error.
    RestartOrderError => "restart-order-error",
    /// No host has room for a VM.
    NoCapacity => "no-capacity",
    /// A *should* placement rule was broken because nothing else fit (`rules`).
    RuleBroken => "rule-broken",
    /// A balancing round started: its moves (`balance`).
    BalanceStarted => "balance-started",
    /// One balancing move (a live migration) started, or was dropped.
    BalanceMove => "balance-move",
    /// A balancing round ended, or found nothing to move.
    BalanceDone => "balance-done",
    /// `propose` mode: the cluster is out of balance; what `halo balance apply` would do.
    BalanceProposed => "balance-proposed",
    /// A storage move began: the VM's disks are mirrored to another directory.
    StorageMoveStarted => "storage-move-started",
    /// How far a storage move's copy is.
    StorageMoveProgress => "storage-move-progress",
    /// A VM runs on its moved disks now.
    StorageMoved => "storage-moved",
    /// A storage move failed; the VM runs on its old disks.
    StorageMoveFailed => "storage-move-failed",
    /// A VM failed to start on this host.
    StartFailed => "start-failed",
    /// A silent host is being powered off through its fence devices.
    FenceRequested => "fence-requested",
    /// A fence device confirmed a host is off: its VMs restart without the dead-time.
    HostFencedOff => "host-fenced",
    /// Fencing a host failed or was not allowed: it is judged by the dead-time.
    FenceFailed => "fence-failed",
    /// A fence device did not answer its status: fencing that host would fail.
    FenceDeviceFailed => "fence-device-failed",
    /// A fence device answers its status again.
    FenceDeviceOk => "fence-device-ok",
    /// A host was heard again while being fenced: the fence is called off.
    FenceCancelled => "fence-cancelled",
    /// A device said a host is off but the host still writes its datastore heartbeat.
    FenceContradicted => "fence-contradicted",
    /// A restart waits for the VM's storage lease (sanlock) another host holds.
    LeaseWait => "lease-wait",
    /// This host joined the cluster's sanlock lockspace (VM leases can be taken here).
    LeasesJoined => "leases-joined",
    /// VM leases are configured but this host cannot take them (the reason says why).
    LeasesUnavailable => "leases-unavailable",
    /// A VM keeps crashing: not restarted again for now.
    CrashLoop => "crash-loop",
    /// A protected VM is gone and cannot be restarted.
    VmLost => "vm-lost",
    /// A VM was stopped (by halo or on request).
    VmStopped => "vm-stopped",
    // Exclusivity.
    /// A protected VM runs on more than one host.
    VmDuplicate => "vm-duplicate",
    /// A protected VM runs on one host again.
    VmDuplicateResolved => "vm-duplicate-resolved",
    /// The operator asked halo to start a protected VM (`halo vm start`): a restart under a
    /// new claim is queued.
    VmStartRequested => "vm-start-requested",
    /// libvirt's hook asked whether a protected VM may start here: yes.
    VmStartAdmitted => "vm-start-admitted",
    /// libvirt's hook asked whether a VM may start here: no (the reason says why).
    VmStartRefused => "vm-start-refused",
    // Maintenance and migration.
    /// A host entered maintenance.
    MaintenanceEntered => "maintenance-entered",
    /// A host left maintenance.
    MaintenanceExited => "maintenance-exited",
    /// A maintenance request was refused.
    MaintenanceRefused => "maintenance-refused",
    /// A host in maintenance has no VMs left.
    HostEvacuated => "host-evacuated",
    /// A VM cannot leave a host in maintenance.
    EvacuationBlocked => "evacuation-blocked",
    /// A live migration started.
    MigrationStarted => "migration-started",
    /// A live migration completed.
    VmMigrated => "vm-migrated",
    /// A live migration failed.
    MigrationFailed => "migration-failed",
    // Capacity.
    /// The failover plan changed.
    FailoverPlan => "failover-plan",
    /// The cluster tolerates fewer host failures than its target.
    ToleranceBelowTarget => "tolerance-below-target",
    /// The cluster tolerates no host failure.
    ToleranceZero => "tolerance-zero",
    /// Protecting a VM leaves less room than the target.
    AdmissionWarning => "admission-warning",
    // Operators and configuration.
    /// An operator command was refused (why in the message).
    CommandRefused => "command-refused",
    /// An action asked through the API (who — the token's role — what, from where, the answer).
    ApiAction => "api-action",
    /// HA was switched on or off for the cluster.
    HaEnabled => "ha-enabled",
    /// HA was switched on or off for one host.
    HostHaDisabled => "host-ha-disabled",
    /// The cluster configuration changed at run time.
    ConfigChanged => "config-changed",
    // Plugins.
    /// A plugin failed; the built-in policy decided instead.
    PluginFailed => "plugin-failed",
    /// A plugin file was loaded or swapped in.
    PluginLoaded => "plugin-loaded",
    /// A new plugin file was refused; the old plugin stays in force.
    PluginLoadFailed => "plugin-load-failed",
}

/// A wire name no [`EventKind`] has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event kind `{0}`")]
pub struct UnknownEventKind(pub String);

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so `{:<22}` lines up a table.
        f.pad(self.as_str())
    }
}

impl PartialEq<str> for EventKind {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for EventKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl EventKind {
    /// Whether an event of this kind (with this severity) means the operator command that
    /// caused it was refused: the API answers 409 with its message.
    pub fn refuses_command(self, severity: super::Severity) -> bool {
        match self {
            EventKind::CommandRefused | EventKind::MaintenanceRefused => true,
            EventKind::EvacuationBlocked => severity == super::Severity::Alert,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EventKind;

    #[test]
    fn every_kind_has_one_wire_name_that_serde_and_from_str_agree_on() {
        let mut seen = std::collections::BTreeSet::new();
        for kind in EventKind::ALL {
            assert!(seen.insert(kind.as_str()), "{kind:?}: wire name used twice");
            let json = serde_json::to_string(kind).expect("serialize");
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<EventKind>(&json).expect("deserialize"), *kind);
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(*kind));
            let kebab = kind.as_str().bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
            assert!(kebab, "{kind:?}: `{}` is not kebab-case", kind.as_str());
        }
        assert!("host-exploded".parse::<EventKind>().is_err());
    }
}
