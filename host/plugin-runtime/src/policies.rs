//! The core's decision points ([`halo_core::Policies`]) answered by plugins.
//!
//! Each decision goes through the plugin slot of its world: the plugin's answer when it is
//! valid, the built-in policy's otherwise. A fallback carries the plugin's failure as its
//! reason, and the core turns that into a `plugin-failed` alert — so a plugin that traps,
//! loops, eats memory or answers nonsense never stops a decision, and never goes unnoticed.

use std::path::Path;
use std::sync::Arc;

use halo_core::{Policies, PolicyOutcome};
use halo_policy::balance::{BalanceInput, BalanceMove};
use halo_policy::{
    IsolationInput, Placement as PlacementAnswer, PlacementInput, RestartError, RestartInput, StorageInput,
    VmIsolationDecision, VmStorageDecision, Wave,
};

use crate::error::LoadError;
use crate::runtime::{Decision, Runtime};
use crate::slot::PluginSlot;
use crate::world::{Balancing, Isolation, Placement, PolicyWorld, RestartOrder, Storage};

/// One slot per decision point; an empty slot means the built-in policy decides.
pub struct PluginPolicies {
    /// The isolation response.
    pub isolation: PluginSlot<Isolation>,
    /// The placement engine.
    pub placement: PluginSlot<Placement>,
    /// The restart order.
    pub restart_order: PluginSlot<RestartOrder>,
    /// Balancing.
    pub balancing: PluginSlot<Balancing>,
    /// The storage response: the isolation plugin's, when it exports one (contract 0.1.4,
    /// world `isolation-storage-policy`); the built-in policy's otherwise.
    pub storage: PluginSlot<Storage>,
}

/// Which plugin file serves which decision point (none: the built-in policy).
#[derive(Debug, Clone, Copy, Default)]
pub struct PluginFiles<'a> {
    /// The isolation-policy plugin.
    pub isolation: Option<&'a Path>,
    /// The placement-engine plugin.
    pub placement: Option<&'a Path>,
    /// The restart-policy plugin.
    pub restart_order: Option<&'a Path>,
    /// The balancing-policy plugin.
    pub balancing: Option<&'a Path>,
}

impl PluginPolicies {
    /// Every decision point on its built-in policy.
    pub fn builtin(runtime: &Arc<Runtime>) -> Self {
        Self {
            isolation: PluginSlot::builtin(Arc::clone(runtime)),
            placement: PluginSlot::builtin(Arc::clone(runtime)),
            restart_order: PluginSlot::builtin(Arc::clone(runtime)),
            balancing: PluginSlot::builtin(Arc::clone(runtime)),
            storage: PluginSlot::builtin(Arc::clone(runtime)),
        }
    }

    /// The storage slot follows the isolation slot: the isolation plugin in force answers the
    /// storage response too when it exports `storage-response`; otherwise (a plugin of an
    /// earlier contract, or none) the built-in policy does. Returns the storage plugin loaded,
    /// if any; any load failure other than "does not export it" is returned too.
    pub fn follow_isolation(&self) -> Result<Option<crate::PluginInfo>, LoadError> {
        let Some(path) = self.isolation.watched().filter(|_| self.isolation.plugin().is_some()) else {
            self.storage.unload();
            return Ok(None);
        };
        match self.storage.swap_to(&path) {
            Ok(info) => Ok(Some(info)),
            Err(LoadError::WrongWorld { .. }) => {
                self.storage.unload();
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The plugins of `files` loaded, each that loads; one that fails leaves its decision point
    /// on the built-in policy (watching its file: fixed, it is loaded by the next reload) and
    /// is returned with its world and why, for an alert. What an agent and the simulator start
    /// with: a broken plugin file must not keep HA from running.
    pub fn load_or_builtin(runtime: &Arc<Runtime>, files: PluginFiles<'_>) -> (Self, Vec<(&'static str, LoadError)>) {
        let policies = Self::builtin(runtime);
        let mut failed = Vec::new();
        if let Some(path) = files.isolation
            && let Err(e) = policies.isolation.swap_to(path)
        {
            failed.push((Isolation::WORLD, e));
        }
        if files.isolation.is_some()
            && let Err(e) = policies.follow_isolation()
        {
            failed.push((Storage::WORLD, e));
        }
        if let Some(path) = files.placement
            && let Err(e) = policies.placement.swap_to(path)
        {
            failed.push((Placement::WORLD, e));
        }
        if let Some(path) = files.restart_order
            && let Err(e) = policies.restart_order.swap_to(path)
        {
            failed.push((RestartOrder::WORLD, e));
        }
        if let Some(path) = files.balancing
            && let Err(e) = policies.balancing.swap_to(path)
        {
            failed.push((Balancing::WORLD, e));
        }
        (policies, failed)
    }

    /// The plugins of `files` loaded; the first that fails to load is the error.
    pub fn load(runtime: &Arc<Runtime>, files: PluginFiles<'_>) -> Result<Self, LoadError> {
        let policies = Self::builtin(runtime);
        if let Some(path) = files.isolation {
            policies.isolation.swap_to(path)?;
            policies.follow_isolation()?;
        }
        if let Some(path) = files.placement {
            policies.placement.swap_to(path)?;
        }
        if let Some(path) = files.restart_order {
            policies.restart_order.swap_to(path)?;
        }
        if let Some(path) = files.balancing {
            policies.balancing.swap_to(path)?;
        }
        Ok(policies)
    }
}

/// A decision as the core takes it: the answer, and the plugin's failure as the fallback's reason.
pub fn outcome<A>(decision: Decision<A>) -> PolicyOutcome<A> {
    let fallback_reason = decision.failure().map(ToString::to_string);
    PolicyOutcome { answer: decision.answer, fallback_reason }
}

/// A decision needs only a shared reference (each slot takes a snapshot of its plugin), so the
/// policies can be shared with the threads that reload plugin files (the agent).
impl Policies for &PluginPolicies {
    fn isolation(&mut self, input: &IsolationInput) -> PolicyOutcome<Vec<VmIsolationDecision>> {
        outcome(self.isolation.decide(input))
    }

    fn placement(&mut self, input: &PlacementInput) -> PolicyOutcome<PlacementAnswer> {
        outcome(self.placement.decide(input))
    }

    fn restart_order(&mut self, input: &RestartInput) -> PolicyOutcome<Result<Vec<Wave>, RestartError>> {
        outcome(self.restart_order.decide(input))
    }

    fn balance(&mut self, input: &BalanceInput) -> PolicyOutcome<Vec<BalanceMove>> {
        outcome(self.balancing.decide(input))
    }

    fn storage(&mut self, input: &StorageInput) -> PolicyOutcome<Vec<VmStorageDecision>> {
        outcome(self.storage.decide(input))
    }
}

impl Policies for PluginPolicies {
    fn isolation(&mut self, input: &IsolationInput) -> PolicyOutcome<Vec<VmIsolationDecision>> {
        (&*self).isolation(input)
    }

    fn placement(&mut self, input: &PlacementInput) -> PolicyOutcome<PlacementAnswer> {
        (&*self).placement(input)
    }

    fn restart_order(&mut self, input: &RestartInput) -> PolicyOutcome<Result<Vec<Wave>, RestartError>> {
        (&*self).restart_order(input)
    }

    fn balance(&mut self, input: &BalanceInput) -> PolicyOutcome<Vec<BalanceMove>> {
        (&*self).balance(input)
    }

    fn storage(&mut self, input: &StorageInput) -> PolicyOutcome<Vec<VmStorageDecision>> {
        (&*self).storage(input)
    }
}
