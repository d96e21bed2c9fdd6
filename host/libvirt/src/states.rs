//! libvirt's lifecycle events as the VM states the core takes. A stop halo asked for is
//! reported by the driver itself; here what happened as libvirt saw it: a start (with the
//! generation in the domain's metadata), a crash, QEMU dying, a shutdown the guest started,
//! a migration away, a stop by someone else (the core tells halo's own from it). Pure: the caller reads the generation of a started domain.

use std::collections::{BTreeMap, BTreeSet};

use halo_core::VmState;

use crate::events::{LifecycleEvent, StopKind};

/// What one host's event stream said so far (shutdowns the guest began, the generation each
/// domain started with).
#[derive(Debug, Default)]
pub struct LifecycleStates {
    guest_shutdowns: BTreeSet<String>,
    /// Domains QEMU paused on an I/O error (a resume of one of them is news to the core; any
    /// other resume is halo's own, or a migration's, and says nothing new).
    io_paused: BTreeSet<String>,
    generations: BTreeMap<String, u64>,
}

/// One VM's new state for the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// The domain.
    pub vm: String,
    /// The generation it ran with (1 when its metadata has none).
    pub generation: u64,
    /// Its state now.
    pub state: VmState,
}

impl LifecycleStates {
    /// The state change `event` means for the core, if any. `generation_of` reads the
    /// generation of a domain that just started. `ConnectionClosed` means nothing here: the
    /// caller decides what a closed connection means.
    pub fn map(&mut self, event: LifecycleEvent, generation_of: impl FnOnce(&str) -> u64) -> Option<StateChange> {
        let (vm, state) = match event {
            LifecycleEvent::Started { domain } => {
                let generation = generation_of(&domain);
                self.generations.insert(domain.clone(), generation);
                self.guest_shutdowns.remove(&domain);
                (domain, VmState::Running)
            }
            LifecycleEvent::ShuttingDown { domain, by_guest } => {
                if by_guest {
                    self.guest_shutdowns.insert(domain);
                }
                return None;
            }
            LifecycleEvent::Stopped { domain, how } => {
                let by_guest = self.guest_shutdowns.remove(&domain);
                let state = match how {
                    StopKind::Crashed | StopKind::Failed => VmState::Crashed,
                    StopKind::Shutdown if by_guest => VmState::GuestShutdown,
                    StopKind::Migrated => VmState::MigratedAway,
                    // Destroyed, saved, a shutdown the host asked for: not a failure to act
                    // on. halo's driver reports its own stops itself (the core knows them);
                    // someone else's means the VM no longer runs here.
                    StopKind::Destroyed | StopKind::Shutdown | StopKind::Other => VmState::StoppedOutside,
                };
                (domain, state)
            }
            LifecycleEvent::Crashed { domain } => (domain, VmState::Crashed),
            LifecycleEvent::PausedOnIoError { domain } => {
                self.io_paused.insert(domain.clone());
                (domain, VmState::PausedOnIoError)
            }
            LifecycleEvent::Resumed { domain } => {
                if !self.io_paused.remove(&domain) {
                    return None;
                }
                (domain, VmState::Running)
            }
            LifecycleEvent::ConnectionClosed { .. } => return None,
        };
        if !matches!(state, VmState::PausedOnIoError) {
            self.io_paused.remove(&vm);
        }
        let generation = self.generations.get(&vm).copied().unwrap_or(1);
        Some(StateChange { vm, generation, state })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(domain: &str) -> LifecycleEvent {
        LifecycleEvent::Started { domain: domain.into() }
    }

    fn stopped(domain: &str, how: StopKind) -> LifecycleEvent {
        LifecycleEvent::Stopped { domain: domain.into(), how }
    }

    #[test]
    fn a_start_carries_its_generation_into_later_states() {
        let mut states = LifecycleStates::default();
        let change = states.map(started("db"), |_| 7).expect("a start");
        assert_eq!((change.generation, change.state), (7, VmState::Running));
        let crash = states.map(stopped("db", StopKind::Failed), |_| unreachable!()).expect("QEMU died");
        assert_eq!((crash.generation, crash.state), (7, VmState::Crashed));
        // A domain never seen starting: generation 1.
        let crash = states.map(LifecycleEvent::Crashed { domain: "web".into() }, |_| 9).expect("crash");
        assert_eq!((crash.vm.as_str(), crash.generation), ("web", 1));
    }

    #[test]
    fn only_a_shutdown_the_guest_began_is_a_guest_shutdown() {
        let mut states = LifecycleStates::default();
        let _ = states.map(started("db"), |_| 1);
        let by_guest = LifecycleEvent::ShuttingDown { domain: "db".into(), by_guest: true };
        assert_eq!(states.map(by_guest, |_| 1), None);
        assert_eq!(states.map(stopped("db", StopKind::Shutdown), |_| 1).map(|c| c.state), Some(VmState::GuestShutdown));
        // The next shutdown, asked by the host (halo or an operator): a stop from outside
        // the guest, never a restart.
        let outside = Some(VmState::StoppedOutside);
        let _ = states.map(started("db"), |_| 2);
        let by_host = LifecycleEvent::ShuttingDown { domain: "db".into(), by_guest: false };
        assert_eq!(states.map(by_host, |_| 1), None);
        assert_eq!(states.map(stopped("db", StopKind::Shutdown), |_| 1).map(|c| c.state), outside);
        // A guest shutdown begun before a restart does not make a later host shutdown a guest's.
        let _ = states.map(LifecycleEvent::ShuttingDown { domain: "db".into(), by_guest: true }, |_| 1);
        let _ = states.map(started("db"), |_| 3);
        assert_eq!(states.map(stopped("db", StopKind::Shutdown), |_| 1).map(|c| c.state), outside);
    }

    #[test]
    fn migrations_crashes_and_the_rest() {
        let mut states = LifecycleStates::default();
        let state = |states: &mut LifecycleStates, how| states.map(stopped("db", how), |_| 1).map(|c| c.state);
        assert_eq!(state(&mut states, StopKind::Migrated), Some(VmState::MigratedAway));
        assert_eq!(state(&mut states, StopKind::Crashed), Some(VmState::Crashed));
        assert_eq!(state(&mut states, StopKind::Destroyed), Some(VmState::StoppedOutside));
        assert_eq!(state(&mut states, StopKind::Other), Some(VmState::StoppedOutside));
        assert_eq!(states.map(LifecycleEvent::ConnectionClosed { reason: 2 }, |_| 1), None);
    }

    #[test]
    fn an_io_error_pause_and_its_resume_are_news_other_resumes_are_not() {
        let mut states = LifecycleStates::default();
        let _ = states.map(started("db"), |_| 4);
        let resumed = |states: &mut LifecycleStates| {
            states.map(LifecycleEvent::Resumed { domain: "db".into() }, |_| 1).map(|c| (c.generation, c.state))
        };
        assert_eq!(resumed(&mut states), None, "halo's own resume of a hold says nothing new");
        let paused = states.map(LifecycleEvent::PausedOnIoError { domain: "db".into() }, |_| 1);
        assert_eq!(paused.map(|c| (c.generation, c.state)), Some((4, VmState::PausedOnIoError)));
        assert_eq!(resumed(&mut states), Some((4, VmState::Running)));
        assert_eq!(resumed(&mut states), None, "once");
    }
}
