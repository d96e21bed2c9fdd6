//! Conversions between the policy types (`halo_policy`) and the WIT bindings. Inputs go in
//! by reference (the agent keeps its copy); answers come out by value.

use halo_policy as policy;

use wasmtime::component::{ComponentType, Lift, Lower};

use crate::bindings::{wit, wit_balancing, wit_columnar, wit_compact, wit_storage};

fn settings(s: &[policy::Setting]) -> Vec<wit::Setting> {
    s.iter().map(|s| wit::Setting { key: s.key.clone(), value: s.value.clone() }).collect()
}

fn priority(p: policy::RestartPriority) -> wit::RestartPriority {
    match p {
        policy::RestartPriority::Restart => wit::RestartPriority::Restart,
        policy::RestartPriority::BestEffort => wit::RestartPriority::BestEffort,
        policy::RestartPriority::Unprotected => wit::RestartPriority::Unprotected,
    }
}

/// The isolation input in WIT form.
pub fn isolation_input(input: &policy::IsolationInput) -> wit::IsolationInput {
    let s = &input.situation;
    wit::IsolationInput {
        situation: wit::IsolationSituation {
            host: s.host.clone(),
            isolated_for_ms: s.isolated_for_ms,
            networks: s
                .networks
                .iter()
                .map(|n| wit::NetworkStatus { name: n.name.clone(), link_up: n.link_up, peers_heard: n.peers_heard })
                .collect(),
            datastores: s
                .datastores
                .iter()
                .map(|d| wit::DatastoreStatus { name: d.name.clone(), reachable: d.reachable })
                .collect(),
            isolation_addresses: s
                .isolation_addresses
                .iter()
                .map(|a| wit::AddressStatus { address: a.address.clone(), answered: a.answered })
                .collect(),
        },
        vms: input.vms.iter().map(vm_info).collect(),
        settings: settings(&input.settings),
    }
}

fn vm_info(vm: &policy::VmInfo) -> wit::VmInfo {
    wit::VmInfo {
        name: vm.name.clone(),
        priority: priority(vm.priority),
        order: vm.order,
        memory_mib: vm.memory_mib,
        vcpus: vm.vcpus,
        labels: vm.labels.clone(),
    }
}

/// The storage input in WIT form (0.1.4).
pub fn storage_input(input: &policy::StorageInput) -> wit_storage::StorageInput {
    let s = &input.situation;
    wit_storage::StorageInput {
        situation: wit_storage::StorageSituation {
            host: s.host.clone(),
            datastore: s.datastore.clone(),
            lost_for_ms: s.lost_for_ms,
            io_error: s.io_error,
            hosts_reaching: s.hosts_reaching.clone(),
        },
        vms: input.vms.iter().map(vm_info).collect(),
        settings: settings(&input.settings),
    }
}

/// The storage answer in policy form.
pub fn storage_answer(answer: Vec<wit_storage::VmStorageDecision>) -> Vec<policy::VmStorageDecision> {
    answer
        .into_iter()
        .map(|d| policy::VmStorageDecision {
            vm: d.vm,
            response: match d.action {
                wit_storage::StorageAction::Leave => policy::StorageResponse::Leave,
                wit_storage::StorageAction::ResumeWhenBack => policy::StorageResponse::ResumeWhenBack,
                wit_storage::StorageAction::Restart(secs) => policy::StorageResponse::Restart(secs),
            },
        })
        .collect()
}

/// Longest reason kept from a plugin's answer, in characters.
pub const MAX_REASON_CHARS: usize = 512;

/// A reason from a plugin's answer as halo keeps it: at most [`MAX_REASON_CHARS`] characters
/// on one line, control characters escaped (it reaches logs, events, the API and terminals).
pub fn reason(text: String) -> String {
    if text.len() <= MAX_REASON_CHARS && !text.chars().any(char::is_control) {
        text
    } else {
        crate::sandbox::one_clean_line(&text, MAX_REASON_CHARS)
    }
}

/// The isolation answer in policy form.
pub fn isolation_answer(answer: Vec<wit::VmIsolationDecision>) -> Vec<policy::VmIsolationDecision> {
    answer
        .into_iter()
        .map(|d| policy::VmIsolationDecision {
            vm: d.vm,
            action: match d.action {
                wit::IsolationAction::LeaveRunning => policy::IsolationAction::LeaveRunning,
                wit::IsolationAction::PowerOff => policy::IsolationAction::PowerOff,
                wit::IsolationAction::ShutDown(secs) => policy::IsolationAction::ShutDown(secs),
            },
        })
        .collect()
}

/// The placement input as the plugin receives it (`placement-input` of the contract), lowered
/// straight from the agent's own values: a placement can name thousands of VMs, and copying
/// each name, label and datastore into WIT values first cost as much as the guest's lifting.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct PlacementInputRef<'a> {
    reason: wit::PlacementReason,
    vms: Vec<VmToPlaceRef<'a>>,
    hosts: Vec<CandidateHostRef<'a>>,
    #[component(name = "vcpu-overcommit-percent")]
    vcpu_overcommit_percent: u32,
    settings: Vec<SettingRef<'a>>,
}

#[derive(ComponentType, Lower)]
#[component(record)]
pub struct VmToPlaceRef<'a> {
    name: &'a str,
    #[component(name = "memory-mib")]
    memory_mib: u64,
    vcpus: u32,
    priority: wit::RestartPriority,
    #[component(name = "required-host-labels")]
    required_host_labels: &'a [String],
    #[component(name = "anti-affinity-group")]
    anti_affinity_group: Option<&'a str>,
    #[component(name = "avoid-hosts")]
    avoid_hosts: &'a [String],
    datastores: &'a [String],
}

#[derive(ComponentType, Lower)]
#[component(record)]
pub struct CandidateHostRef<'a> {
    name: &'a str,
    #[component(name = "total-memory-mib")]
    total_memory_mib: u64,
    #[component(name = "free-memory-mib")]
    free_memory_mib: u64,
    #[component(name = "total-vcpus")]
    total_vcpus: u32,
    #[component(name = "allocated-vcpus")]
    allocated_vcpus: u32,
    labels: &'a [String],
    datastores: &'a [String],
    maintenance: bool,
    #[component(name = "anti-affinity-groups")]
    anti_affinity_groups: &'a [String],
}

#[derive(ComponentType, Lower)]
#[component(record)]
pub struct SettingRef<'a> {
    key: &'a str,
    value: &'a str,
}

fn setting_refs(settings: &[policy::Setting]) -> Vec<SettingRef<'_>> {
    settings.iter().map(|s| SettingRef { key: &s.key, value: &s.value }).collect()
}

fn placement_reason(reason: policy::PlacementReason) -> wit::PlacementReason {
    match reason {
        policy::PlacementReason::Failover => wit::PlacementReason::Failover,
        policy::PlacementReason::Evacuation => wit::PlacementReason::Evacuation,
        policy::PlacementReason::Balance => wit::PlacementReason::Balance,
        policy::PlacementReason::AdmissionCheck => wit::PlacementReason::AdmissionCheck,
    }
}

/// The placement input in WIT form, borrowing every string and list from `input`.
pub fn placement_input(input: &policy::PlacementInput) -> PlacementInputRef<'_> {
    PlacementInputRef {
        reason: placement_reason(input.reason),
        vms: input
            .vms
            .iter()
            .map(|vm| VmToPlaceRef {
                name: &vm.name,
                memory_mib: vm.memory_mib,
                vcpus: vm.vcpus,
                priority: priority(vm.priority),
                required_host_labels: &vm.required_host_labels,
                anti_affinity_group: vm.anti_affinity_group.as_deref(),
                avoid_hosts: &vm.avoid_hosts,
                datastores: &vm.datastores,
            })
            .collect(),
        hosts: input
            .hosts
            .iter()
            .map(|h| CandidateHostRef {
                name: &h.name,
                total_memory_mib: h.total_memory_mib,
                free_memory_mib: h.free_memory_mib,
                total_vcpus: h.total_vcpus,
                allocated_vcpus: h.allocated_vcpus,
                labels: &h.labels,
                datastores: &h.datastores,
                maintenance: h.maintenance,
                anti_affinity_groups: &h.anti_affinity_groups,
            })
            .collect(),
        vcpu_overcommit_percent: input.vcpu_overcommit_percent,
        settings: setting_refs(&input.settings),
    }
}

/// The placement answer in policy form.
pub fn placement_answer(answer: wit::Placement) -> policy::Placement {
    policy::Placement {
        assignments: answer.assignments.into_iter().map(|a| policy::Assignment { vm: a.vm, host: a.host }).collect(),
        unplaced: answer
            .unplaced
            .into_iter()
            .map(|u| policy::UnplacedVm { vm: u.vm, reason: reason(u.reason) })
            .collect(),
    }
}

/// The compact placement input as the plugin receives it (`compact-input`, contract 0.1.1),
/// lowered from the agent's [`policy::compact::CompactInput`]: the relations' lists of
/// positions are borrowed, VMs and hosts copied into their WIT records.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct CompactInputRef<'a> {
    reason: wit::PlacementReason,
    vms: Vec<wit_compact::CompactVm>,
    hosts: Vec<wit_compact::CompactHost>,
    #[component(name = "vm-required-labels")]
    vm_required_labels: RelationRef<'a>,
    #[component(name = "vm-avoid-hosts")]
    vm_avoid_hosts: RelationRef<'a>,
    #[component(name = "vm-datastores")]
    vm_datastores: RelationRef<'a>,
    #[component(name = "host-labels")]
    host_labels: RelationRef<'a>,
    #[component(name = "host-datastores")]
    host_datastores: RelationRef<'a>,
    #[component(name = "host-anti-affinity-groups")]
    host_anti_affinity_groups: RelationRef<'a>,
    labels: &'a [String],
    datastores: &'a [String],
    #[component(name = "anti-affinity-groups")]
    anti_affinity_groups: &'a [String],
    #[component(name = "vcpu-overcommit-percent")]
    vcpu_overcommit_percent: u32,
    settings: Vec<SettingRef<'a>>,
}

#[derive(ComponentType, Lower)]
#[component(record)]
pub struct RelationRef<'a> {
    starts: &'a [u32],
    items: &'a [u32],
}

fn relation(r: &policy::compact::Relation) -> RelationRef<'_> {
    RelationRef { starts: &r.starts, items: &r.items }
}

/// The compact placement input in WIT form, borrowing its lists from `input`.
pub fn compact_input(input: &policy::compact::CompactInput) -> CompactInputRef<'_> {
    CompactInputRef {
        reason: placement_reason(input.reason),
        vms: input
            .vms
            .iter()
            .map(|vm| wit_compact::CompactVm {
                memory_mib: vm.memory_mib,
                vcpus: vm.vcpus,
                priority: priority(vm.priority),
                anti_affinity_group: vm.anti_affinity_group,
            })
            .collect(),
        hosts: input
            .hosts
            .iter()
            .map(|h| wit_compact::CompactHost {
                total_memory_mib: h.total_memory_mib,
                free_memory_mib: h.free_memory_mib,
                total_vcpus: h.total_vcpus,
                allocated_vcpus: h.allocated_vcpus,
                maintenance: h.maintenance,
            })
            .collect(),
        vm_required_labels: relation(&input.vm_required_labels),
        vm_avoid_hosts: relation(&input.vm_avoid_hosts),
        vm_datastores: relation(&input.vm_datastores),
        host_labels: relation(&input.host_labels),
        host_datastores: relation(&input.host_datastores),
        host_anti_affinity_groups: relation(&input.host_anti_affinity_groups),
        labels: &input.labels,
        datastores: &input.datastores,
        anti_affinity_groups: &input.anti_affinity_groups,
        vcpu_overcommit_percent: input.vcpu_overcommit_percent,
        settings: setting_refs(&input.settings),
    }
}

/// The compact placement answer (contract 0.1.1) in the policy's form.
pub fn compact_answer(answer: wit_compact::CompactPlacement) -> policy::compact::CompactPlacement {
    policy::compact::CompactPlacement {
        assignments: answer
            .assignments
            .into_iter()
            .map(|a| policy::compact::CompactAssignment { vm: a.vm, host: a.host })
            .collect(),
        unplaced: compact_unplaced(answer.unplaced),
    }
}

fn compact_unplaced(list: Vec<wit_compact::CompactUnplaced>) -> Vec<policy::compact::CompactUnplaced> {
    list.into_iter().map(|u| policy::compact::CompactUnplaced { vm: u.vm, reason: reason(u.reason) }).collect()
}

/// The VMs as columns (`vm-columns`, contract 0.1.3).
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct VmColumns {
    #[component(name = "memory-mib")]
    memory_mib: Vec<u64>,
    vcpus: Vec<u32>,
    priority: Vec<u8>,
}

/// The hosts as columns (`host-columns`, contract 0.1.3).
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct HostColumns {
    #[component(name = "total-memory-mib")]
    total_memory_mib: Vec<u64>,
    #[component(name = "free-memory-mib")]
    free_memory_mib: Vec<u64>,
    #[component(name = "total-vcpus")]
    total_vcpus: Vec<u32>,
    #[component(name = "allocated-vcpus")]
    allocated_vcpus: Vec<u32>,
    maintenance: Vec<bool>,
}

/// The columnar placement input as the plugin receives it (`columnar-input`, contract 0.1.3):
/// every list is a list of numbers, which wasmtime copies in one go; the relations and names
/// are borrowed from the compact input.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct ColumnarInputRef<'a> {
    reason: wit::PlacementReason,
    vms: VmColumns,
    hosts: HostColumns,
    #[component(name = "vm-anti-affinity-group")]
    vm_anti_affinity_group: RelationOwned,
    #[component(name = "vm-required-labels")]
    vm_required_labels: RelationRef<'a>,
    #[component(name = "vm-avoid-hosts")]
    vm_avoid_hosts: RelationRef<'a>,
    #[component(name = "vm-datastores")]
    vm_datastores: RelationRef<'a>,
    #[component(name = "host-labels")]
    host_labels: RelationRef<'a>,
    #[component(name = "host-datastores")]
    host_datastores: RelationRef<'a>,
    #[component(name = "host-anti-affinity-groups")]
    host_anti_affinity_groups: RelationRef<'a>,
    labels: &'a [String],
    datastores: &'a [String],
    #[component(name = "anti-affinity-groups")]
    anti_affinity_groups: &'a [String],
    #[component(name = "vcpu-overcommit-percent")]
    vcpu_overcommit_percent: u32,
    settings: Vec<SettingRef<'a>>,
}

/// A relation built for the crossing (the VMs' anti-affinity groups, which the compact input
/// keeps beside each VM).
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct RelationOwned {
    starts: Vec<u32>,
    items: Vec<u32>,
}

/// A restart priority as the columnar world carries it: the index of its case in the WIT enum.
fn priority_index(p: policy::RestartPriority) -> u8 {
    match p {
        policy::RestartPriority::Restart => 0,
        policy::RestartPriority::BestEffort => 1,
        policy::RestartPriority::Unprotected => 2,
    }
}

/// The columnar placement input in WIT form, borrowing what it can from `input`.
pub fn columnar_input(input: &policy::compact::CompactInput) -> ColumnarInputRef<'_> {
    let vms = &input.vms;
    let hosts = &input.hosts;
    let mut groups = policy::compact::Relation::default();
    for vm in vms {
        groups.push(vm.anti_affinity_group);
    }
    ColumnarInputRef {
        reason: placement_reason(input.reason),
        vms: VmColumns {
            memory_mib: vms.iter().map(|vm| vm.memory_mib).collect(),
            vcpus: vms.iter().map(|vm| vm.vcpus).collect(),
            priority: vms.iter().map(|vm| priority_index(vm.priority)).collect(),
        },
        hosts: HostColumns {
            total_memory_mib: hosts.iter().map(|h| h.total_memory_mib).collect(),
            free_memory_mib: hosts.iter().map(|h| h.free_memory_mib).collect(),
            total_vcpus: hosts.iter().map(|h| h.total_vcpus).collect(),
            allocated_vcpus: hosts.iter().map(|h| h.allocated_vcpus).collect(),
            maintenance: hosts.iter().map(|h| h.maintenance).collect(),
        },
        vm_anti_affinity_group: RelationOwned { starts: groups.starts, items: groups.items },
        vm_required_labels: relation(&input.vm_required_labels),
        vm_avoid_hosts: relation(&input.vm_avoid_hosts),
        vm_datastores: relation(&input.vm_datastores),
        host_labels: relation(&input.host_labels),
        host_datastores: relation(&input.host_datastores),
        host_anti_affinity_groups: relation(&input.host_anti_affinity_groups),
        labels: &input.labels,
        datastores: &input.datastores,
        anti_affinity_groups: &input.anti_affinity_groups,
        vcpu_overcommit_percent: input.vcpu_overcommit_percent,
        settings: setting_refs(&input.settings),
    }
}

/// `columnar-placement` (the plugin's answer, contract 0.1.3), lifted by wasmtime: the two
/// columns of numbers in one copy each.
#[derive(ComponentType, Lift)]
#[component(record)]
pub struct ColumnarAnswer {
    #[component(name = "assigned-vms")]
    assigned_vms: Vec<u32>,
    #[component(name = "assigned-hosts")]
    assigned_hosts: Vec<u32>,
    unplaced: Vec<wit_columnar::Unplaced>,
}

impl ColumnarAnswer {
    /// An answer as a plugin would give it (for the fuzz target).
    pub fn new(assigned_vms: Vec<u32>, assigned_hosts: Vec<u32>, unplaced: Vec<(u32, String)>) -> Self {
        Self {
            assigned_vms,
            assigned_hosts,
            unplaced: unplaced.into_iter().map(|(vm, reason)| wit_columnar::Unplaced { vm, reason }).collect(),
        }
    }
}

/// The columnar answer in the policy's form, or why it is not one (columns of different
/// lengths).
pub fn columnar_answer(answer: ColumnarAnswer) -> Result<policy::compact::CompactPlacement, String> {
    if answer.assigned_vms.len() != answer.assigned_hosts.len() {
        return Err(format!(
            "the answer assigns {} VMs to {} hosts: `assigned-vms` and `assigned-hosts` must be equally long",
            answer.assigned_vms.len(),
            answer.assigned_hosts.len()
        ));
    }
    Ok(policy::compact::CompactPlacement {
        assignments: answer
            .assigned_vms
            .into_iter()
            .zip(answer.assigned_hosts)
            .map(|(vm, host)| policy::compact::CompactAssignment { vm, host })
            .collect(),
        unplaced: answer
            .unplaced
            .into_iter()
            .map(|u| policy::compact::CompactUnplaced { vm: u.vm, reason: reason(u.reason) })
            .collect(),
    })
}

/// The restart input in WIT form.
pub fn restart_input(input: &policy::RestartInput) -> wit::RestartInput {
    wit::RestartInput {
        vms: input
            .vms
            .iter()
            .map(|vm| wit::VmToRestart {
                name: vm.name.clone(),
                priority: priority(vm.priority),
                order: vm.order,
                group: vm.group.clone(),
                depends_on: vm.depends_on.clone(),
            })
            .collect(),
        settings: settings(&input.settings),
    }
}

/// The restart answer in policy form.
pub fn restart_answer(
    answer: Result<Vec<wit::Wave>, wit::RestartError>,
) -> Result<Vec<policy::Wave>, policy::RestartError> {
    answer.map_err(|e| match e {
        wit::RestartError::DependencyCycle(vms) => policy::RestartError::DependencyCycle(vms),
        wit::RestartError::Other(reason) => policy::RestartError::Other(reason),
    })
}

/// The balancing input in WIT form (contract 0.1.2); the VMs' names stay with the agent.
pub fn balance_input(input: &policy::balance::BalanceInput) -> wit_balancing::BalanceInput {
    use policy::balance::{RuleKind, Strength};
    wit_balancing::BalanceInput {
        hosts: input
            .hosts
            .iter()
            .map(|h| wit_balancing::BalanceHost {
                memory_mib: h.memory_mib,
                vcpus: h.vcpus,
                threads: h.threads,
                takes: h.takes,
            })
            .collect(),
        host_names: input.host_names.clone(),
        vms: wit_balancing::BalanceVms {
            host: input.vms.iter().map(|v| v.host).collect(),
            memory_mib: input.vms.iter().map(|v| v.memory_mib).collect(),
            vcpus: input.vms.iter().map(|v| v.vcpus).collect(),
            cpu_percent: input.vms.iter().map(|v| v.cpu_percent).collect(),
            movable: input.vms.iter().map(|v| v.movable).collect(),
        },
        rules: input
            .rules
            .iter()
            .map(|r| wit_balancing::BalanceRule {
                name: r.name.clone(),
                kind: match r.kind {
                    RuleKind::VmHost => wit_balancing::RuleKind::VmHost,
                    RuleKind::Together => wit_balancing::RuleKind::Together,
                    RuleKind::Apart => wit_balancing::RuleKind::Apart,
                },
                strength: match r.strength {
                    Strength::Must => wit_balancing::RuleStrength::Must,
                    Strength::Should => wit_balancing::RuleStrength::Should,
                },
                vms: r.vms.clone(),
                hosts: r.hosts.clone(),
            })
            .collect(),
        threshold_percent: input.threshold_percent,
        cost_percent: input.cost_percent,
        max_moves: input.max_moves,
        vcpu_overcommit_percent: input.vcpu_overcommit_percent,
        settings: settings(&input.settings),
    }
}

/// The balancing answer in policy form (reasons made one clean line).
pub fn balance_answer(answer: Vec<wit_balancing::BalanceMove>) -> Vec<policy::balance::BalanceMove> {
    answer.into_iter().map(|m| policy::balance::BalanceMove { vm: m.vm, to: m.to, reason: reason(m.reason) }).collect()
}
