//! The default isolation response: what an isolated host does with its VMs.
//!
//! Rule: when at least one datastore is still reachable, the host can record there which VMs
//! it stopped, so the master can restart them safely: `restart`-priority VMs are powered
//! off, every other VM keeps running. When no datastore is reachable nobody could be told,
//! and every VM keeps running (self-fencing, decided by the core, covers that case).
//! Each part is configurable through the policy's settings.
//!
//! The same policy answers when a host loses the datastore under its VMs' disks (storage
//! protection, 0.1.4): by default `restart` and `best-effort` VMs wait
//! [`DEFAULT_STORAGE_GRACE_SECS`] for the storage and are then restarted where it is
//! reachable (vSphere's VM component protection "power off and restart", oVirt's `kill` for
//! highly available VMs); unprotected VMs wait and are resumed (oVirt's `auto-resume`).

use std::collections::BTreeMap;

use crate::settings::{PolicySettings, SettingError, parse_number};
use crate::types::{
    IsolationAction, IsolationInput, RestartPriority, StorageInput, StorageResponse, VmIsolationDecision,
    VmStorageDecision,
};

/// Longest shut-down grace a policy may ask for (validation bound).
pub const MAX_SHUTDOWN_GRACE_SECS: u32 = 3600;

/// How long a VM waits for lost storage before it is restarted elsewhere, by default: three
/// minutes, vSphere's default delay of VM component protection, long enough for an NFS
/// server to restart or fail over, short enough that a service is not down for long.
pub const DEFAULT_STORAGE_GRACE_SECS: u32 = 180;

/// Longest storage grace time a policy may ask for (validation bound).
pub const MAX_STORAGE_GRACE_SECS: u32 = 86_400;

/// What the default isolation policy does, per restart priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsolationConfig {
    /// Action for `restart` VMs (key `restart`).
    pub restart: ResponseKind,
    /// Action for `best-effort` VMs (key `best-effort`).
    pub best_effort: ResponseKind,
    /// Action for unprotected VMs (key `unprotected`).
    pub unprotected: ResponseKind,
    /// Grace time of `shut-down` (key `shutdown-grace-seconds`).
    pub shutdown_grace_secs: u32,
    /// Action for every VM when no datastore is reachable (key `when-datastores-unreachable`).
    pub when_datastores_unreachable: ResponseKind,
    /// Storage response for `restart` VMs (key `storage-restart`).
    pub storage_restart: StorageKind,
    /// Storage response for `best-effort` VMs (key `storage-best-effort`).
    pub storage_best_effort: StorageKind,
    /// Storage response for unprotected VMs (key `storage-unprotected`).
    pub storage_unprotected: StorageKind,
    /// Grace time of the storage response `restart` (key `storage-grace-seconds`).
    pub storage_grace_secs: u32,
}

/// A storage response without its grace time (a setting of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    /// `leave`.
    Leave,
    /// `resume`.
    Resume,
    /// `restart`.
    Restart,
}

impl StorageKind {
    fn parse(value: &str) -> Result<Self, String> {
        match value.trim() {
            "leave" => Ok(Self::Leave),
            "resume" => Ok(Self::Resume),
            "restart" => Ok(Self::Restart),
            _ => Err("expected leave, resume or restart".into()),
        }
    }

    fn response(self, grace_secs: u32) -> StorageResponse {
        match self {
            Self::Leave => StorageResponse::Leave,
            Self::Resume => StorageResponse::ResumeWhenBack,
            Self::Restart => StorageResponse::Restart(grace_secs),
        }
    }
}

/// An isolation response without its grace time (that is a setting of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseKind {
    /// `leave-running`.
    LeaveRunning,
    /// `power-off`.
    PowerOff,
    /// `shut-down`.
    ShutDown,
}

impl ResponseKind {
    fn parse(value: &str) -> Result<Self, String> {
        match value.trim() {
            "leave-running" => Ok(Self::LeaveRunning),
            "power-off" => Ok(Self::PowerOff),
            "shut-down" => Ok(Self::ShutDown),
            _ => Err("expected leave-running, power-off or shut-down".into()),
        }
    }

    fn action(self, grace_secs: u32) -> IsolationAction {
        match self {
            Self::LeaveRunning => IsolationAction::LeaveRunning,
            Self::PowerOff => IsolationAction::PowerOff,
            Self::ShutDown => IsolationAction::ShutDown(grace_secs),
        }
    }
}

impl Default for IsolationConfig {
    fn default() -> Self {
        Self {
            restart: ResponseKind::PowerOff,
            best_effort: ResponseKind::LeaveRunning,
            unprotected: ResponseKind::LeaveRunning,
            shutdown_grace_secs: 120,
            when_datastores_unreachable: ResponseKind::LeaveRunning,
            storage_restart: StorageKind::Restart,
            storage_best_effort: StorageKind::Restart,
            storage_unprotected: StorageKind::Resume,
            storage_grace_secs: DEFAULT_STORAGE_GRACE_SECS,
        }
    }
}

impl PolicySettings for IsolationConfig {
    const KEYS: &'static [&'static str] = &[
        "restart",
        "best-effort",
        "unprotected",
        "shutdown-grace-seconds",
        "when-datastores-unreachable",
        "storage-restart",
        "storage-best-effort",
        "storage-unprotected",
        "storage-grace-seconds",
    ];

    fn apply(&mut self, key: &str, value: &str) -> Result<bool, String> {
        match key {
            "restart" => self.restart = ResponseKind::parse(value)?,
            "best-effort" => self.best_effort = ResponseKind::parse(value)?,
            "unprotected" => self.unprotected = ResponseKind::parse(value)?,
            "when-datastores-unreachable" => self.when_datastores_unreachable = ResponseKind::parse(value)?,
            "storage-restart" => self.storage_restart = StorageKind::parse(value)?,
            "storage-best-effort" => self.storage_best_effort = StorageKind::parse(value)?,
            "storage-unprotected" => self.storage_unprotected = StorageKind::parse(value)?,
            "storage-grace-seconds" => {
                let secs: u32 = parse_number(value, "a whole number of seconds")?;
                if secs == 0 || secs > MAX_STORAGE_GRACE_SECS {
                    return Err(format!("expected 1 to {MAX_STORAGE_GRACE_SECS} seconds"));
                }
                self.storage_grace_secs = secs;
            }
            "shutdown-grace-seconds" => {
                let secs: u32 = parse_number(value, "a whole number of seconds")?;
                if secs == 0 || secs > MAX_SHUTDOWN_GRACE_SECS {
                    return Err(format!("expected 1 to {MAX_SHUTDOWN_GRACE_SECS} seconds"));
                }
                self.shutdown_grace_secs = secs;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// The default policy as the plugin runs it: settings read strictly, an error names each bad key.
pub fn decide_isolation(input: &IsolationInput) -> Result<Vec<VmIsolationDecision>, String> {
    let config = IsolationConfig::from_settings(&input.settings).map_err(|e| e.to_string())?;
    Ok(decide_isolation_with(&config, input))
}

/// The built-in fallback: bad settings keep their defaults (returned for the log).
pub fn decide_isolation_fallback(input: &IsolationInput) -> (Vec<VmIsolationDecision>, Vec<SettingError>) {
    let (config, problems) = IsolationConfig::from_settings_lenient(&input.settings);
    (decide_isolation_with(&config, input), problems)
}

/// The decision under an explicit config.
pub fn decide_isolation_with(config: &IsolationConfig, input: &IsolationInput) -> Vec<VmIsolationDecision> {
    let datastores_reachable = input.situation.any_datastore_reachable();
    input
        .vms
        .iter()
        .map(|vm| {
            let kind = if !datastores_reachable {
                config.when_datastores_unreachable
            } else {
                match vm.priority {
                    RestartPriority::Restart => config.restart,
                    RestartPriority::BestEffort => config.best_effort,
                    RestartPriority::Unprotected => config.unprotected,
                }
            };
            VmIsolationDecision { vm: vm.name.clone(), action: kind.action(config.shutdown_grace_secs) }
        })
        .collect()
}

/// The default storage decision as the plugin runs it: settings read strictly.
pub fn decide_storage(input: &StorageInput) -> Result<Vec<VmStorageDecision>, String> {
    let config = IsolationConfig::from_settings(&input.settings).map_err(|e| e.to_string())?;
    Ok(decide_storage_with(&config, input))
}

/// The built-in storage decision: bad settings keep their defaults (returned for the log).
pub fn decide_storage_fallback(input: &StorageInput) -> (Vec<VmStorageDecision>, Vec<SettingError>) {
    let (config, problems) = IsolationConfig::from_settings_lenient(&input.settings);
    (decide_storage_with(&config, input), problems)
}

/// The storage decision under an explicit config: per restart priority. Whether anybody
/// reaches the storage is the core's to check when the grace time is over (it never
/// restarts a VM nobody could run), not the policy's.
pub fn decide_storage_with(config: &IsolationConfig, input: &StorageInput) -> Vec<VmStorageDecision> {
    input
        .vms
        .iter()
        .map(|vm| {
            let kind = match vm.priority {
                RestartPriority::Restart => config.storage_restart,
                RestartPriority::BestEffort => config.storage_best_effort,
                RestartPriority::Unprotected => config.storage_unprotected,
            };
            VmStorageDecision { vm: vm.name.clone(), response: kind.response(config.storage_grace_secs) }
        })
        .collect()
}

/// Checks a storage answer against its input: every VM exactly once, grace times in bounds.
pub fn validate_storage(input: &StorageInput, answer: &[VmStorageDecision]) -> Result<(), InvalidIsolationAnswer> {
    every_vm_once(&input.vms, answer.iter().map(|d| d.vm.as_str()))?;
    for decision in answer {
        if let StorageResponse::Restart(secs) = decision.response
            && (secs == 0 || secs > MAX_STORAGE_GRACE_SECS)
        {
            return Err(InvalidIsolationAnswer::BadStorageGrace { vm: decision.vm.clone(), secs });
        }
    }
    Ok(())
}

/// An answer names every VM of the input exactly once (no other VM, none twice, none missing).
fn every_vm_once<'a>(
    vms: &[crate::types::VmInfo],
    answered: impl ExactSizeIterator<Item = &'a str>,
) -> Result<(), InvalidIsolationAnswer> {
    if answered.len() > vms.len() {
        return Err(InvalidIsolationAnswer::TooManyEntries { entries: answered.len(), vms: vms.len() });
    }
    let mut seen: BTreeMap<&str, bool> = vms.iter().map(|vm| (vm.name.as_str(), false)).collect();
    for vm in answered {
        match seen.get_mut(vm) {
            None => return Err(InvalidIsolationAnswer::UnknownVm(vm.to_string())),
            Some(true) => return Err(InvalidIsolationAnswer::DuplicateVm(vm.to_string())),
            Some(done) => *done = true,
        }
    }
    match seen.into_iter().find(|(_, done)| !done) {
        Some((vm, _)) => Err(InvalidIsolationAnswer::MissingVm(vm.to_string())),
        None => Ok(()),
    }
}

/// Why an isolation answer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidIsolationAnswer {
    /// The answer names a VM that is not on the host.
    #[error("names VM `{0}`, which is not on the isolated host")]
    UnknownVm(String),
    /// The answer decides a VM twice.
    #[error("decides VM `{0}` twice")]
    DuplicateVm(String),
    /// The answer leaves a VM without a decision.
    #[error("gives no decision for VM `{0}`")]
    MissingVm(String),
    /// More decisions than VMs.
    #[error("has {entries} decisions for {vms} VMs")]
    TooManyEntries {
        /// Decisions in the answer.
        entries: usize,
        /// VMs in the input.
        vms: usize,
    },
    /// A storage grace time out of bounds.
    #[error("asks a storage grace of {secs} s for VM `{vm}` (allowed: 1 to {MAX_STORAGE_GRACE_SECS})")]
    BadStorageGrace {
        /// The VM.
        vm: String,
        /// The grace asked for.
        secs: u32,
    },
    /// A grace time out of bounds.
    #[error("asks a shut-down grace of {secs} s for VM `{vm}` (allowed: 1 to {MAX_SHUTDOWN_GRACE_SECS})")]
    BadGrace {
        /// The VM.
        vm: String,
        /// The grace asked for.
        secs: u32,
    },
}

/// Checks an isolation answer against its input: every VM exactly once, sane grace times.
pub fn validate_isolation(
    input: &IsolationInput,
    answer: &[VmIsolationDecision],
) -> Result<(), InvalidIsolationAnswer> {
    every_vm_once(&input.vms, answer.iter().map(|d| d.vm.as_str()))?;
    for decision in answer {
        if let IsolationAction::ShutDown(secs) = decision.action
            && (secs == 0 || secs > MAX_SHUTDOWN_GRACE_SECS)
        {
            return Err(InvalidIsolationAnswer::BadGrace { vm: decision.vm.clone(), secs });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{DatastoreStatus, IsolationSituation, Setting, VmInfo};

    fn input(datastore_reachable: bool, settings: Vec<Setting>) -> IsolationInput {
        let vm = |name: &str, priority| VmInfo {
            name: name.into(),
            priority,
            order: 0,
            memory_mib: 512,
            vcpus: 1,
            labels: vec![],
        };
        IsolationInput {
            situation: IsolationSituation {
                host: "host-1".into(),
                isolated_for_ms: 5000,
                networks: vec![],
                datastores: vec![DatastoreStatus { name: "ds1".into(), reachable: datastore_reachable }],
                isolation_addresses: vec![],
            },
            vms: vec![
                vm("db", RestartPriority::Restart),
                vm("cache", RestartPriority::BestEffort),
                vm("scratch", RestartPriority::Unprotected),
            ],
            settings,
        }
    }

    fn actions(answer: &[VmIsolationDecision]) -> Vec<IsolationAction> {
        answer.iter().map(|d| d.action).collect()
    }

    #[test]
    fn restart_vms_are_powered_off_when_a_datastore_is_reachable() {
        let answer = decide_isolation(&input(true, vec![])).expect("default settings are valid");
        assert_eq!(
            actions(&answer),
            [IsolationAction::PowerOff, IsolationAction::LeaveRunning, IsolationAction::LeaveRunning]
        );
    }

    #[test]
    fn every_vm_keeps_running_when_no_datastore_is_reachable() {
        let answer = decide_isolation(&input(false, vec![])).expect("default settings are valid");
        assert!(actions(&answer).iter().all(|a| *a == IsolationAction::LeaveRunning));
    }

    #[test]
    fn settings_choose_shut_down_with_grace() {
        let settings = vec![Setting::new("best-effort", "shut-down"), Setting::new("shutdown-grace-seconds", "30")];
        let answer = decide_isolation(&input(true, settings)).expect("valid settings");
        assert_eq!(answer[1].action, IsolationAction::ShutDown(30));
    }

    #[test]
    fn bad_settings_are_all_reported_and_the_fallback_keeps_defaults() {
        let settings = vec![Setting::new("restart", "explode"), Setting::new("colour", "blue")];
        let err = decide_isolation(&input(true, settings.clone())).expect_err("bad settings");
        assert!(err.contains("`restart`") && err.contains("`colour`"), "{err}");
        let (answer, problems) = decide_isolation_fallback(&input(true, settings));
        assert_eq!(problems.len(), 2);
        assert_eq!(answer[0].action, IsolationAction::PowerOff);
    }

    fn storage_input(settings: Vec<Setting>) -> StorageInput {
        let base = input(true, settings);
        StorageInput {
            situation: crate::types::StorageSituation {
                host: "host-1".into(),
                datastore: "ds1".into(),
                lost_for_ms: 2000,
                io_error: false,
                hosts_reaching: vec!["host-2".into()],
            },
            vms: base.vms,
            settings: base.settings,
        }
    }

    #[test]
    fn storage_defaults_restart_protected_vms_after_three_minutes_and_resume_the_rest() {
        let answer = decide_storage(&storage_input(vec![])).expect("defaults are valid");
        let responses: Vec<StorageResponse> = answer.iter().map(|d| d.response).collect();
        assert_eq!(
            responses,
            [StorageResponse::Restart(180), StorageResponse::Restart(180), StorageResponse::ResumeWhenBack]
        );
        let settings = vec![
            Setting::new("storage-restart", "leave"),
            Setting::new("storage-best-effort", "resume"),
            Setting::new("storage-unprotected", "restart"),
            Setting::new("storage-grace-seconds", "20"),
        ];
        let answer = decide_storage(&storage_input(settings)).expect("valid settings");
        let responses: Vec<StorageResponse> = answer.iter().map(|d| d.response).collect();
        assert_eq!(responses, [StorageResponse::Leave, StorageResponse::ResumeWhenBack, StorageResponse::Restart(20)]);
        let err = decide_storage(&storage_input(vec![Setting::new("storage-grace-seconds", "0")])).expect_err("0 s");
        assert!(err.contains("storage-grace-seconds"), "{err}");
        // The isolation decision reads the same settings and accepts the storage keys.
        assert!(decide_isolation(&input(true, vec![Setting::new("storage-restart", "resume")])).is_ok());
    }

    #[test]
    fn storage_validation_refuses_unknown_missing_and_bad_grace() {
        let input = storage_input(vec![]);
        let good = decide_storage(&input).expect("valid");
        assert_eq!(validate_storage(&input, &good), Ok(()));
        let mut unknown = good.clone();
        unknown[0].vm = "ghost".into();
        assert_eq!(validate_storage(&input, &unknown), Err(InvalidIsolationAnswer::UnknownVm("ghost".into())));
        assert_eq!(validate_storage(&input, &good[..2]), Err(InvalidIsolationAnswer::MissingVm("scratch".into())));
        let mut grace = good;
        grace[0].response = StorageResponse::Restart(MAX_STORAGE_GRACE_SECS + 1);
        assert!(matches!(validate_storage(&input, &grace), Err(InvalidIsolationAnswer::BadStorageGrace { .. })));
    }

    #[test]
    fn validation_refuses_unknown_duplicate_missing_and_bad_grace() {
        let input = input(true, vec![]);
        let good = decide_isolation(&input).expect("valid");
        assert_eq!(validate_isolation(&input, &good), Ok(()));
        let mut unknown = good.clone();
        unknown[0].vm = "ghost".into();
        assert_eq!(validate_isolation(&input, &unknown), Err(InvalidIsolationAnswer::UnknownVm("ghost".into())));
        let mut dup = good.clone();
        dup[1].vm = "db".into();
        assert_eq!(validate_isolation(&input, &dup), Err(InvalidIsolationAnswer::DuplicateVm("db".into())));
        assert_eq!(validate_isolation(&input, &good[..2]), Err(InvalidIsolationAnswer::MissingVm("scratch".into())));
        let mut grace = good;
        grace[0].action = IsolationAction::ShutDown(0);
        assert!(matches!(validate_isolation(&input, &grace), Err(InvalidIsolationAnswer::BadGrace { .. })));
    }
}
