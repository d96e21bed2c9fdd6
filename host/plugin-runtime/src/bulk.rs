//! The compact placement world's big lists, crossed in one pass (decision record 0008).
//!
//! wasmtime 48's derived `Lower` and `Lift` move a list of records one field at a time and
//! look the guest's memory up again for every field: 40,000 lookups for the VMs of a
//! 10,000-VM decision, 20,000 for its answer. The types here keep the derived code for
//! everything but lists — the type check (at load and per call), a record on its own — and
//! override only wasmtime's list hooks (`Lower::linear_store_list_to_memory`, and for the
//! answer the record's `Lift::linear_lift_from_memory`): they take the list's bytes once and
//! read or write each record at the canonical ABI's field offsets, computed with wasmtime's
//! own `CanonicalAbiInfo::next_field32_size`. The bytes are those the derived code reads and
//! writes; the test `the_compact_input_reaches_the_plugin_intact` (a probe plugin gives back
//! every VM and host as it arrived) and the placement tests against the built-in policy check
//! it.

use std::mem::MaybeUninit;

use halo_policy as policy;
use wasmtime::component::__internal::{
    CanonicalAbiInfo, ComponentVariant, InstanceType, InterfaceType, LiftContext, LowerContext,
};
use wasmtime::component::{ComponentType, Lift, Lower};

use crate::bindings::{wit, wit_compact};

/// A record type lowered in bulk when in a list: the tuple struct `$name` wraps the derived
/// `$fields`, and `$store(record, out)` writes one record into its `SIZE32` bytes.
macro_rules! lowered_in_bulk {
    ($(#[$doc:meta])* $name:ident($fields:ty), $what:literal, $store:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy)]
        pub struct $name(pub $fields);

        // SAFETY: the ABI, the flat form and the type check are exactly the derived type's.
        #[allow(unsafe_code)]
        unsafe impl ComponentType for $name {
            type Lower = <$fields as ComponentType>::Lower;
            const ABI: CanonicalAbiInfo = <$fields as ComponentType>::ABI;

            fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
                <$fields as ComponentType>::typecheck(ty, types)
            }
        }

        // SAFETY: one record is lowered by the derived code; a list writes the same bytes
        // (the canonical ABI's layout, offsets computed as the derived code computes them)
        // inside the range wasmtime allocated in the guest for the list.
        #[allow(unsafe_code)]
        unsafe impl Lower for $name {
            fn linear_lower_to_flat<T>(
                &self,
                cx: &mut LowerContext<'_, T>,
                ty: InterfaceType,
                dst: &mut MaybeUninit<Self::Lower>,
            ) -> wasmtime::Result<()> {
                self.0.linear_lower_to_flat(cx, ty, dst)
            }

            fn linear_lower_to_memory<T>(
                &self,
                cx: &mut LowerContext<'_, T>,
                ty: InterfaceType,
                offset: usize,
            ) -> wasmtime::Result<()> {
                self.0.linear_lower_to_memory(cx, ty, offset)
            }

            fn linear_store_list_to_memory<T>(
                cx: &mut LowerContext<'_, T>,
                _ty: InterfaceType,
                offset: usize,
                items: &[Self],
            ) -> wasmtime::Result<()> {
                let size = Self::SIZE32;
                let bytes = items.len().checked_mul(size);
                let Some(dst) = bytes.and_then(|bytes| cx.as_slice_mut().get_mut(offset..)?.get_mut(..bytes)) else {
                    wasmtime::bail!("the list of {} does not fit the plugin's memory", $what);
                };
                let store = $store;
                for (item, out) in items.iter().zip(dst.chunks_exact_mut(size)) {
                    store(&item.0, out);
                }
                Ok(())
            }
        }
    };
}

/// The offset of each next field of a record, by the canonical ABI.
struct Fields(usize);

impl Fields {
    fn new() -> Self {
        Self(0)
    }

    fn next<T: ComponentType>(&mut self) -> usize {
        T::ABI.next_field32_size(&mut self.0)
    }
}

fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    out[at..at + bytes.len()].copy_from_slice(bytes);
}

/// `compact-vm` as wasmtime's derive lowers it, field by field.
#[derive(ComponentType, Lower, Clone, Copy)]
#[component(record)]
pub struct CompactVmFields {
    #[component(name = "memory-mib")]
    pub memory_mib: u64,
    pub vcpus: u32,
    pub priority: wit::RestartPriority,
    #[component(name = "anti-affinity-group")]
    pub anti_affinity_group: Option<u32>,
}

lowered_in_bulk!(
    /// `compact-vm`, a list of them lowered in one pass.
    CompactVmAbi(CompactVmFields),
    "VMs",
    {
        let mut fields = Fields::new();
        let memory_mib = fields.next::<u64>();
        let vcpus = fields.next::<u32>();
        let priority = fields.next::<wit::RestartPriority>();
        let group = fields.next::<Option<u32>>();
        let group_value = group + <Option<u32> as ComponentVariant>::PAYLOAD_OFFSET32;
        move |vm: &CompactVmFields, out: &mut [u8]| {
            put(out, memory_mib, &vm.memory_mib.to_le_bytes());
            put(out, vcpus, &vm.vcpus.to_le_bytes());
            // An enum of three cases is one byte: the case's index in the WIT declaration.
            out[priority] = match vm.priority {
                wit::RestartPriority::Restart => 0,
                wit::RestartPriority::BestEffort => 1,
                wit::RestartPriority::Unprotected => 2,
            };
            match vm.anti_affinity_group {
                None => out[group] = 0,
                Some(g) => {
                    out[group] = 1;
                    put(out, group_value, &g.to_le_bytes());
                }
            }
        }
    }
);

/// `compact-host` as wasmtime's derive lowers it, field by field.
#[derive(ComponentType, Lower, Clone, Copy)]
#[component(record)]
pub struct CompactHostFields {
    #[component(name = "total-memory-mib")]
    pub total_memory_mib: u64,
    #[component(name = "free-memory-mib")]
    pub free_memory_mib: u64,
    #[component(name = "total-vcpus")]
    pub total_vcpus: u32,
    #[component(name = "allocated-vcpus")]
    pub allocated_vcpus: u32,
    pub maintenance: bool,
}

lowered_in_bulk!(
    /// `compact-host`, a list of them lowered in one pass.
    CompactHostAbi(CompactHostFields),
    "hosts",
    {
        let mut fields = Fields::new();
        let total_memory_mib = fields.next::<u64>();
        let free_memory_mib = fields.next::<u64>();
        let total_vcpus = fields.next::<u32>();
        let allocated_vcpus = fields.next::<u32>();
        let maintenance = fields.next::<bool>();
        move |host: &CompactHostFields, out: &mut [u8]| {
            put(out, total_memory_mib, &host.total_memory_mib.to_le_bytes());
            put(out, free_memory_mib, &host.free_memory_mib.to_le_bytes());
            put(out, total_vcpus, &host.total_vcpus.to_le_bytes());
            put(out, allocated_vcpus, &host.allocated_vcpus.to_le_bytes());
            out[maintenance] = u8::from(host.maintenance);
        }
    }
);

/// `compact-placement` (the plugin's answer) as wasmtime's derive lifts it.
#[derive(ComponentType, Lift)]
#[component(record)]
pub struct CompactPlacementFields {
    assignments: Vec<wit_compact::CompactAssignment>,
    unplaced: Vec<wit_compact::CompactUnplaced>,
}

/// `compact-placement`, its list of assignments lifted in one pass (the unplaced VMs, few and
/// each with a string, by the derived code), straight into the policy's form.
pub struct CompactPlacementAbi(pub policy::compact::CompactPlacement);

impl From<CompactPlacementFields> for CompactPlacementAbi {
    fn from(answer: CompactPlacementFields) -> Self {
        Self(policy::compact::CompactPlacement {
            assignments: answer
                .assignments
                .into_iter()
                .map(|a| policy::compact::CompactAssignment { vm: a.vm, host: a.host })
                .collect(),
            unplaced: unplaced(answer.unplaced),
        })
    }
}

fn unplaced(list: Vec<wit_compact::CompactUnplaced>) -> Vec<policy::compact::CompactUnplaced> {
    list.into_iter()
        .map(|u| policy::compact::CompactUnplaced { vm: u.vm, reason: crate::convert::reason(u.reason) })
        .collect()
}

// SAFETY: the ABI, the flat form and the type check are exactly the derived type's.
#[allow(unsafe_code)]
unsafe impl ComponentType for CompactPlacementAbi {
    type Lower = <CompactPlacementFields as ComponentType>::Lower;
    const ABI: CanonicalAbiInfo = <CompactPlacementFields as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <CompactPlacementFields as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: reads only guest memory inside the bounds checked here, as `WasmList::new` checks
// them (in bounds, aligned, charged to the call's host-copy allowance).
#[allow(unsafe_code)]
unsafe impl Lift for CompactPlacementAbi {
    fn linear_lift_from_flat(cx: &mut LiftContext<'_>, ty: InterfaceType, src: &Self::Lower) -> wasmtime::Result<Self> {
        CompactPlacementFields::linear_lift_from_flat(cx, ty, src).map(Self::from)
    }

    fn linear_lift_from_memory(cx: &mut LiftContext<'_>, ty: InterfaceType, bytes: &[u8]) -> wasmtime::Result<Self> {
        let InterfaceType::Record(record) = ty else {
            wasmtime::bail!("the placement answer is not a record");
        };
        let mut fields = Fields::new();
        let assignments_at = fields.next::<Vec<wit_compact::CompactAssignment>>();
        let unplaced_at = fields.next::<Vec<wit_compact::CompactUnplaced>>();
        let unplaced_ty = match cx.types[record].fields.get(1) {
            Some(field) => field.ty,
            None => wasmtime::bail!("the placement answer has no list of unplaced VMs"),
        };
        let pair = <Vec<wit_compact::CompactAssignment> as ComponentType>::SIZE32;
        let not_placed = Vec::<wit_compact::CompactUnplaced>::linear_lift_from_memory(
            cx,
            unplaced_ty,
            &bytes[unplaced_at..unplaced_at + pair],
        )?;
        // The assignments: a pointer and a length, then `len` records of two `u32`s.
        let word = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let (ptr, len) = (word(assignments_at), word(assignments_at + 4));
        let mut record_fields = Fields::new();
        let vm_at = record_fields.next::<u32>();
        let host_at = record_fields.next::<u32>();
        let size = <wit_compact::CompactAssignment as ComponentType>::SIZE32;
        let align = <wit_compact::CompactAssignment as ComponentType>::ALIGN32 as usize;
        let end = len.checked_mul(size).and_then(|n| ptr.checked_add(n));
        if end.is_none_or(|end| end > cx.memory().len()) {
            wasmtime::bail!("list pointer/length out of bounds of memory");
        }
        cx.consume_fuel_array(len, size_of::<policy::compact::CompactAssignment>())?;
        if ptr % align != 0 {
            wasmtime::bail!("list pointer is not aligned");
        }
        let memory = &cx.memory()[ptr..ptr + len * size];
        let assignments = memory
            .chunks_exact(size)
            .map(|a| {
                let at = |i: usize| u32::from_le_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
                policy::compact::CompactAssignment { vm: at(vm_at), host: at(host_at) }
            })
            .collect();
        Ok(Self(policy::compact::CompactPlacement { assignments, unplaced: unplaced(not_placed) }))
    }
}
