//! The four decision points a site may plug its own policy into, as the core sees them.
//!
//! The agent and the demo implement [`Policies`] with the plugin runtime (a plugin's answer
//! is validated there and replaced by the built-in policy when it fails); the simulator and
//! the unit tests use [`BuiltinPolicies`], the same default policies compiled natively. An
//! answer that comes from a fallback carries the reason, and the core raises an alert.

use halo_policy::balance::{BalanceInput, BalanceMove};
use halo_policy::{
    IsolationInput, Placement, PlacementInput, RestartError, RestartInput, StorageInput, VmIsolationDecision,
    VmStorageDecision, Wave,
};

/// A policy's answer and, when the plugin failed and the built-in policy answered instead,
/// why (for the alert).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyOutcome<T> {
    /// The (validated) answer.
    pub answer: T,
    /// Set when a plugin failed and the built-in policy decided.
    pub fallback_reason: Option<String>,
}

impl<T> PolicyOutcome<T> {
    /// An answer of the plugin itself (or of the built-in policy when no plugin is set).
    pub fn plain(answer: T) -> Self {
        Self { answer, fallback_reason: None }
    }
}

/// The decision points. Implementations must return answers that passed the validators of
/// `halo-policy`; the core still never acts on a VM or host it does not know.
pub trait Policies {
    /// What an isolated host does with its VMs.
    fn isolation(&mut self, input: &IsolationInput) -> PolicyOutcome<Vec<VmIsolationDecision>>;
    /// Where VMs go.
    fn placement(&mut self, input: &PlacementInput) -> PolicyOutcome<Placement>;
    /// In which waves VMs restart.
    fn restart_order(&mut self, input: &RestartInput) -> PolicyOutcome<Result<Vec<Wave>, RestartError>>;
    /// Which live migrations would balance the hosts.
    fn balance(&mut self, input: &BalanceInput) -> PolicyOutcome<Vec<BalanceMove>>;
    /// What a host does with VMs whose datastore it lost (the isolation policy's storage
    /// decision). By default the built-in one: an isolation plugin of a contract before 0.1.4
    /// has none.
    fn storage(&mut self, input: &StorageInput) -> PolicyOutcome<Vec<VmStorageDecision>> {
        PolicyOutcome::plain(halo_policy::isolation::decide_storage_fallback(input).0)
    }
}

/// The built-in default policies, native.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuiltinPolicies;

impl Policies for BuiltinPolicies {
    fn isolation(&mut self, input: &IsolationInput) -> PolicyOutcome<Vec<VmIsolationDecision>> {
        PolicyOutcome::plain(halo_policy::isolation::decide_isolation_fallback(input).0)
    }

    fn placement(&mut self, input: &PlacementInput) -> PolicyOutcome<Placement> {
        PolicyOutcome::plain(halo_policy::placement::place_fallback(input).0)
    }

    fn restart_order(&mut self, input: &RestartInput) -> PolicyOutcome<Result<Vec<Wave>, RestartError>> {
        PolicyOutcome::plain(halo_policy::restart::plan_restart_fallback(input))
    }

    fn balance(&mut self, input: &BalanceInput) -> PolicyOutcome<Vec<BalanceMove>> {
        PolicyOutcome::plain(halo_policy::balance::propose(input))
    }
}
