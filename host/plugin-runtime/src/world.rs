//! The policy worlds as one trait, so loading, calling, validating and falling back
//! are written once. Each world names its exported interface, how to call it, how to check
//! its answer and what the built-in policy answers.

use halo_policy as policy;
use halo_policy::input::InvalidInput;
use wasmtime::Store;
use wasmtime::component::{ComponentExportIndex, InstancePre};

use crate::bindings;
use crate::convert;
use crate::sandbox::CallState;

/// A call's outcome: the validated answer, or why there is none.
pub type CallAnswer<A> = Result<A, Rejected>;

/// Why a plugin that ran to the end gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// The plugin refused (its own `Err(reason)`).
    Refused(String),
    /// The answer broke the contract (validation's reason).
    Invalid(String),
}

/// A named world's call outcome: the plugin's refusal kept, the answer validated.
fn validated<W: PolicyWorld>(input: &W::Input, answer: Result<W::Answer, String>) -> CallAnswer<W::Answer> {
    let answer = answer.map_err(Rejected::Refused)?;
    W::validate(input, &answer).map_err(Rejected::Invalid)?;
    Ok(answer)
}

/// One decision point of the contract.
pub trait PolicyWorld: Send + Sync + 'static {
    /// The world's name in WIT (`placement-engine`): the decision point.
    const WORLD: &'static str;
    /// The interfaces a plugin for this decision may export, the main one first (`placement`,
    /// `compact-placement`).
    const INTERFACES: &'static [&'static str];
    /// The bindgen-prepared instance.
    type Pre: Send + Sync + 'static;
    /// The decision's input.
    type Input: Sync;
    /// The decision's answer.
    type Answer: Send + std::fmt::Debug + 'static;

    /// Checks the export names and types of a prepared instance; `export` is the exported
    /// interface the load-time check found (`halo:policy/placement@0.1.0`).
    fn prepare(pre: InstancePre<CallState>, export: &str) -> wasmtime::Result<Self::Pre>;
    /// Instantiates once without calling (a load-time check).
    fn instantiate_only(pre: &Self::Pre, store: &mut Store<CallState>) -> wasmtime::Result<()>;
    /// The world of a plugin exporting `export` (one of [`Self::INTERFACES`]).
    fn world(_export: &str) -> &'static str {
        Self::WORLD
    }
    /// Runs the plugin once in a fresh instance and validates its answer.
    fn call(
        pre: &Self::Pre,
        store: &mut Store<CallState>,
        input: &Self::Input,
    ) -> wasmtime::Result<CallAnswer<Self::Answer>>;
    /// Refuses inputs no answer could be checked against (duplicate names).
    fn check_input(input: &Self::Input) -> Result<(), InvalidInput>;
    /// Checks an answer (in the named form) against its input.
    fn validate(input: &Self::Input, answer: &Self::Answer) -> Result<(), String>;
    /// The built-in policy's answer, with any problems it noticed in the settings.
    fn fallback(input: &Self::Input) -> (Self::Answer, Vec<String>);
}

/// `isolation-policy`.
pub struct Isolation;

impl PolicyWorld for Isolation {
    const WORLD: &'static str = "isolation-policy";
    const INTERFACES: &'static [&'static str] = &["isolation-response"];
    type Pre = bindings::isolation::IsolationPolicyPre<CallState>;
    type Input = policy::IsolationInput;
    type Answer = Vec<policy::VmIsolationDecision>;

    fn prepare(pre: InstancePre<CallState>, _export: &str) -> wasmtime::Result<Self::Pre> {
        Self::Pre::new(pre)
    }

    fn instantiate_only(pre: &Self::Pre, store: &mut Store<CallState>) -> wasmtime::Result<()> {
        pre.instantiate(store).map(drop)
    }

    fn call(
        pre: &Self::Pre,
        store: &mut Store<CallState>,
        input: &Self::Input,
    ) -> wasmtime::Result<CallAnswer<Self::Answer>> {
        let instance = pre.instantiate(&mut *store)?;
        let answer =
            instance.halo_policy_isolation_response().call_decide_isolation(store, &convert::isolation_input(input))?;
        Ok(validated::<Self>(input, answer.map(convert::isolation_answer)))
    }

    fn check_input(input: &Self::Input) -> Result<(), InvalidInput> {
        policy::input::check_isolation_input(input)
    }

    fn validate(input: &Self::Input, answer: &Self::Answer) -> Result<(), String> {
        policy::isolation::validate_isolation(input, answer).map_err(|e| e.to_string())
    }

    fn fallback(input: &Self::Input) -> (Self::Answer, Vec<String>) {
        let (answer, problems) = policy::isolation::decide_isolation_fallback(input);
        (answer, problems.iter().map(ToString::to_string).collect())
    }
}

/// `storage-policy` (new in 0.1.4): the storage response, from a plugin that exports it alone
/// or beside the isolation response (`isolation-storage-policy`, what `[plugins] isolation`
/// names).
pub struct Storage;

impl PolicyWorld for Storage {
    const WORLD: &'static str = "storage-policy";
    const INTERFACES: &'static [&'static str] = &["storage-response"];
    type Pre = bindings::storage::StoragePolicyPre<CallState>;
    type Input = policy::StorageInput;
    type Answer = Vec<policy::VmStorageDecision>;

    fn prepare(pre: InstancePre<CallState>, _export: &str) -> wasmtime::Result<Self::Pre> {
        Self::Pre::new(pre)
    }

    fn instantiate_only(pre: &Self::Pre, store: &mut Store<CallState>) -> wasmtime::Result<()> {
        pre.instantiate(store).map(drop)
    }

    fn call(
        pre: &Self::Pre,
        store: &mut Store<CallState>,
        input: &Self::Input,
    ) -> wasmtime::Result<CallAnswer<Self::Answer>> {
        let instance = pre.instantiate(&mut *store)?;
        let answer =
            instance.halo_policy_storage_response().call_decide_storage(store, &convert::storage_input(input))?;
        Ok(validated::<Self>(input, answer.map(convert::storage_answer)))
    }

    fn check_input(input: &Self::Input) -> Result<(), InvalidInput> {
        policy::input::check_storage_input(input)
    }

    fn validate(input: &Self::Input, answer: &Self::Answer) -> Result<(), String> {
        policy::isolation::validate_storage(input, answer).map_err(|e| e.to_string())
    }

    fn fallback(input: &Self::Input) -> (Self::Answer, Vec<String>) {
        let (answer, problems) = policy::isolation::decide_storage_fallback(input);
        (answer, problems.iter().map(ToString::to_string).collect())
    }
}

/// `placement-engine`, `compact-placement-engine` or `columnar-placement-engine`: the
/// agent's placement decision, taken by a plugin of any of them.
pub struct Placement;

/// Which placement world a plugin serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlacementShape {
    /// `placement` (0.1.0): everything named.
    Named,
    /// `compact-placement` (0.1.1): positions, VMs and hosts as lists of records.
    Compact,
    /// `columnar-placement` (0.1.3): positions, VMs, hosts and assignments as columns.
    Columnar,
}

/// The placement world prepared: the bindings' checks done, and the `place` function's index,
/// which the call uses with the borrowing input types of [`convert`].
pub struct PlacementPre {
    pre: InstancePre<CallState>,
    place: ComponentExportIndex,
    shape: PlacementShape,
}

/// The exports of a compact and of a columnar placement plugin.
const COMPACT_INTERFACE: &str = "compact-placement";
const COLUMNAR_INTERFACE: &str = "columnar-placement";

fn shape(export: &str) -> PlacementShape {
    if export.starts_with(&format!("halo:policy/{COLUMNAR_INTERFACE}@")) {
        PlacementShape::Columnar
    } else if export.starts_with(&format!("halo:policy/{COMPACT_INTERFACE}@")) {
        PlacementShape::Compact
    } else {
        PlacementShape::Named
    }
}

type NamedPlace<'a> = (Result<bindings::wit::Placement, String>,);
type CompactPlace = (Result<bindings::wit_compact::CompactPlacement, String>,);
type ColumnarPlace = (Result<convert::ColumnarAnswer, String>,);

impl PolicyWorld for Placement {
    const WORLD: &'static str = "placement-engine";
    const INTERFACES: &'static [&'static str] = &["placement", COMPACT_INTERFACE, COLUMNAR_INTERFACE];
    type Pre = PlacementPre;
    type Input = policy::PlacementInput;
    type Answer = policy::Placement;

    fn prepare(pre: InstancePre<CallState>, export: &str) -> wasmtime::Result<Self::Pre> {
        let shape = shape(export);
        // The generated bindings find the exports; their types are checked by
        // `instantiate_only`, which every load runs.
        match shape {
            PlacementShape::Named => drop(bindings::placement::PlacementEnginePre::new(pre.clone())?),
            PlacementShape::Compact => drop(bindings::compact::CompactPlacementEnginePre::new(pre.clone())?),
            PlacementShape::Columnar => drop(bindings::columnar::ColumnarPlacementEnginePre::new(pre.clone())?),
        }
        let component = pre.component();
        let interface =
            component.get_export_index(None, export).ok_or_else(|| wasmtime::format_err!("no export {export}"))?;
        let place = component
            .get_export_index(Some(&interface), "place")
            .ok_or_else(|| wasmtime::format_err!("no function `place` in the placement export"))?;
        Ok(PlacementPre { pre, place, shape })
    }

    fn world(export: &str) -> &'static str {
        match shape(export) {
            PlacementShape::Named => Self::WORLD,
            PlacementShape::Compact => "compact-placement-engine",
            PlacementShape::Columnar => "columnar-placement-engine",
        }
    }

    /// Also checks `place` against the exact types a call uses (every record, field, case
    /// and list of its input and answer): a plugin built against a changed copy of the
    /// contract that claims the right version is refused here, not at every call.
    fn instantiate_only(pre: &Self::Pre, store: &mut Store<CallState>) -> wasmtime::Result<()> {
        let instance = pre.pre.instantiate(&mut *store)?;
        let place = &pre.place;
        match pre.shape {
            PlacementShape::Named => instance
                .get_typed_func::<(&convert::PlacementInputRef<'_>,), NamedPlace<'_>>(&mut *store, place)
                .map(drop),
            PlacementShape::Compact => {
                instance.get_typed_func::<(&convert::CompactInputRef<'_>,), CompactPlace>(&mut *store, place).map(drop)
            }
            PlacementShape::Columnar => instance
                .get_typed_func::<(&convert::ColumnarInputRef<'_>,), ColumnarPlace>(&mut *store, place)
                .map(drop),
        }
    }

    fn call(
        pre: &Self::Pre,
        store: &mut Store<CallState>,
        input: &Self::Input,
    ) -> wasmtime::Result<CallAnswer<Self::Answer>> {
        let instance = pre.pre.instantiate(&mut *store)?;
        let place = &pre.place;
        if pre.shape == PlacementShape::Named {
            let place =
                instance.get_typed_func::<(&convert::PlacementInputRef<'_>,), NamedPlace<'_>>(&mut *store, place)?;
            let (answer,) = place.call(&mut *store, (&convert::placement_input(input),))?;
            return Ok(validated::<Self>(input, answer.map(convert::placement_answer)));
        }
        // The compact worlds: positions cross, the answer is checked in positions and only
        // then named (no name lookups, no second validation).
        let compact = policy::compact::CompactInput::from_named(input);
        let answer = if pre.shape == PlacementShape::Compact {
            let place =
                instance.get_typed_func::<(&convert::CompactInputRef<'_>,), CompactPlace>(&mut *store, place)?;
            let (answer,) = place.call(&mut *store, (&convert::compact_input(&compact),))?;
            answer.map(convert::compact_answer).map_err(Rejected::Refused)
        } else {
            let place =
                instance.get_typed_func::<(&convert::ColumnarInputRef<'_>,), ColumnarPlace>(&mut *store, place)?;
            let (answer,) = place.call(&mut *store, (&convert::columnar_input(&compact),))?;
            match answer {
                Ok(answer) => convert::columnar_answer(answer).map_err(Rejected::Invalid),
                Err(reason) => Err(Rejected::Refused(reason)),
            }
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(rejected) => return Ok(Err(rejected)),
        };
        Ok(match policy::placement::validate_compact(input, &compact, &answer) {
            Ok(()) => Ok(answer.to_named(input)),
            Err(invalid) => Err(Rejected::Invalid(invalid.to_string())),
        })
    }

    fn check_input(input: &Self::Input) -> Result<(), InvalidInput> {
        policy::input::check_placement_input(input)
    }

    fn validate(input: &Self::Input, answer: &Self::Answer) -> Result<(), String> {
        policy::placement::validate_placement(input, answer).map_err(|e| e.to_string())
    }

    fn fallback(input: &Self::Input) -> (Self::Answer, Vec<String>) {
        let (answer, problems) = policy::placement::place_fallback(input);
        (answer, problems.iter().map(ToString::to_string).collect())
    }
}

/// `restart-policy`. A dependency cycle is an answer (the agent reports it); only
/// `restart-error::other` counts as the plugin refusing.
pub struct RestartOrder;

impl PolicyWorld for RestartOrder {
    const WORLD: &'static str = "restart-policy";
    const INTERFACES: &'static [&'static str] = &["restart-order"];
    type Pre = bindings::restart::RestartPolicyPre<CallState>;
    type Input = policy::RestartInput;
    type Answer = Result<Vec<policy::Wave>, policy::RestartError>;

    fn prepare(pre: InstancePre<CallState>, _export: &str) -> wasmtime::Result<Self::Pre> {
        Self::Pre::new(pre)
    }

    fn instantiate_only(pre: &Self::Pre, store: &mut Store<CallState>) -> wasmtime::Result<()> {
        pre.instantiate(store).map(drop)
    }

    fn call(
        pre: &Self::Pre,
        store: &mut Store<CallState>,
        input: &Self::Input,
    ) -> wasmtime::Result<CallAnswer<Self::Answer>> {
        let instance = pre.instantiate(&mut *store)?;
        let answer = instance.halo_policy_restart_order().call_plan_restart(store, &convert::restart_input(input))?;
        let answer = match convert::restart_answer(answer) {
            Err(policy::RestartError::Other(reason)) => Err(reason),
            other => Ok(other),
        };
        Ok(validated::<Self>(input, answer))
    }

    fn check_input(input: &Self::Input) -> Result<(), InvalidInput> {
        policy::input::check_restart_input(input)
    }

    fn validate(input: &Self::Input, answer: &Self::Answer) -> Result<(), String> {
        policy::restart::validate_restart(input, answer).map_err(|e| e.to_string())
    }

    fn fallback(input: &Self::Input) -> (Self::Answer, Vec<String>) {
        (policy::restart::plan_restart_fallback(input), Vec::new())
    }
}

/// `balancing-policy` (new in 0.1.2): the moves that would balance the hosts.
pub struct Balancing;

impl PolicyWorld for Balancing {
    const WORLD: &'static str = "balancing-policy";
    const INTERFACES: &'static [&'static str] = &["balancing"];
    type Pre = bindings::balancing::BalancingPolicyPre<CallState>;
    type Input = policy::balance::BalanceInput;
    type Answer = Vec<policy::balance::BalanceMove>;

    fn prepare(pre: InstancePre<CallState>, _export: &str) -> wasmtime::Result<Self::Pre> {
        Self::Pre::new(pre)
    }

    fn instantiate_only(pre: &Self::Pre, store: &mut Store<CallState>) -> wasmtime::Result<()> {
        pre.instantiate(store).map(drop)
    }

    fn call(
        pre: &Self::Pre,
        store: &mut Store<CallState>,
        input: &Self::Input,
    ) -> wasmtime::Result<CallAnswer<Self::Answer>> {
        let instance = pre.instantiate(&mut *store)?;
        let answer = instance.halo_policy_balancing().call_propose(store, &convert::balance_input(input))?;
        Ok(validated::<Self>(input, answer.map(convert::balance_answer)))
    }

    fn check_input(input: &Self::Input) -> Result<(), InvalidInput> {
        policy::balance::check_input(input)
    }

    fn validate(input: &Self::Input, answer: &Self::Answer) -> Result<(), String> {
        policy::balance::validate_moves(input, answer).map_err(|e| e.to_string())
    }

    fn fallback(input: &Self::Input) -> (Self::Answer, Vec<String>) {
        (policy::balance::propose(input), Vec::new())
    }
}
