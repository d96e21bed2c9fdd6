//! Prototype: a positional placement contract, measured end to end vs the same code natively.
#![allow(missing_docs, clippy::all)]
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::time::{Duration, Instant};

use halo_plugin_runtime::sandbox::{CallState, Sandbox};
use halo_plugin_runtime::{CpuBudget, SandboxLimits};
use halo_policy::input::NameHasher;
use halo_policy::{Assignment, CandidateHost, Placement, PlacementInput, PlacementReason, RestartPriority, UnplacedVm, VmToPlace};
use wasmtime::component::{Component, ComponentType, Lift, Linker, Lower};

#[derive(ComponentType, Lower, Clone, Copy)]
#[component(enum)]
#[repr(u8)]
enum Prio {
    #[component(name = "restart")]
    Restart,
    #[component(name = "best-effort")]
    BestEffort,
    #[component(name = "unprotected")]
    Unprotected,
}
fn prio(p: &Prio) -> u8 { *p as u8 }

#[derive(ComponentType, Lower)]
#[component(record)]
struct PVm<'a> {
    name: &'a str,
    #[component(name = "memory-mib")] memory_mib: u64,
    vcpus: u32,
    priority: Prio,
    #[component(name = "required-host-labels")] required_host_labels: &'a [u32],
    #[component(name = "anti-affinity-group")] anti_affinity_group: Option<u32>,
    #[component(name = "avoid-hosts")] avoid_hosts: &'a [u32],
    datastores: &'a [u32],
}
#[derive(ComponentType, Lower)]
#[component(record)]
struct PHost<'a> {
    name: &'a str,
    #[component(name = "total-memory-mib")] total_memory_mib: u64,
    #[component(name = "free-memory-mib")] free_memory_mib: u64,
    #[component(name = "total-vcpus")] total_vcpus: u32,
    #[component(name = "allocated-vcpus")] allocated_vcpus: u32,
    labels: &'a [u32],
    datastores: &'a [u32],
    maintenance: bool,
    #[component(name = "anti-affinity-groups")] anti_affinity_groups: &'a [u32],
}
#[derive(ComponentType, Lower)]
#[component(record)]
struct PIn<'a> {
    vms: Vec<PVm<'a>>,
    hosts: Vec<PHost<'a>>,
    labels: Vec<&'a str>,
    datastores: Vec<&'a str>,
    groups: Vec<&'a str>,
    #[component(name = "vcpu-overcommit-percent")] vcpu_overcommit_percent: u32,
}
type In<'a> = PIn<'a>;
#[derive(ComponentType, Lift)]
#[component(record)]
struct PAssign { vm: u32, host: u32 }
#[derive(ComponentType, Lift)]
#[component(record)]
struct PUnplaced { vm: u32, reason: String }
#[derive(ComponentType, Lift)]
#[component(record)]
struct PAnswer { assignments: Vec<PAssign>, unplaced: Vec<PUnplaced> }

include!("../../../plugins/proto/src/core.rs");
include!("../../../plugins/proto/src/core2.rs");
include!("../../../plugins/proto/src/core3.rs");
include!("../../../plugins/proto/src/core4.rs");

#[derive(ComponentType, Lower)]
#[component(record)]
struct CVm { #[component(name = "memory-mib")] memory_mib: u64, vcpus: u32, priority: Prio, #[component(name = "anti-affinity-group")] anti_affinity_group: Option<u32> }
#[derive(ComponentType, Lower)]
#[component(record)]
struct CHost { #[component(name = "total-memory-mib")] total_memory_mib: u64, #[component(name = "free-memory-mib")] free_memory_mib: u64, #[component(name = "total-vcpus")] total_vcpus: u32, #[component(name = "allocated-vcpus")] allocated_vcpus: u32, maintenance: bool }
#[derive(ComponentType, Lower)]
#[component(record)]
struct CIn {
    vms: Vec<CVm>, hosts: Vec<CHost>,
    #[component(name = "vm-labels")] vm_labels: Vec<(u32, u32)>,
    #[component(name = "vm-avoid")] vm_avoid: Vec<(u32, u32)>,
    #[component(name = "vm-datastores")] vm_datastores: Vec<(u32, u32)>,
    #[component(name = "host-labels")] host_labels: Vec<(u32, u32)>,
    #[component(name = "host-datastores")] host_datastores: Vec<(u32, u32)>,
    #[component(name = "host-groups")] host_groups: Vec<(u32, u32)>,
    #[component(name = "vcpu-overcommit-percent")] vcpu_overcommit_percent: u32,
}
fn columns(input: &PlacementInput) -> CIn {
    let mut hosts: Map = HashMap::default();
    for (i, h) in input.hosts.iter().enumerate() { hosts.insert(h.name.as_str(), i as u32); }
    let (mut lt, mut dt, mut gt): (Map, Map, Map) = Default::default();
    fn id<'a>(t: &mut Map<'a>, n: &'a str) -> u32 { let next = t.len() as u32; *t.entry(n).or_insert(next) }
    let mut c = CIn { vms: Vec::with_capacity(input.vms.len()), hosts: Vec::with_capacity(input.hosts.len()), vm_labels: vec![], vm_avoid: Vec::with_capacity(input.vms.len()), vm_datastores: Vec::with_capacity(input.vms.len()), host_labels: vec![], host_datastores: vec![], host_groups: vec![], vcpu_overcommit_percent: input.vcpu_overcommit_percent };
    for (i, h) in input.hosts.iter().enumerate() {
        let i = i as u32;
        c.hosts.push(CHost { total_memory_mib: h.total_memory_mib, free_memory_mib: h.free_memory_mib, total_vcpus: h.total_vcpus, allocated_vcpus: h.allocated_vcpus, maintenance: h.maintenance });
        for l in &h.labels { c.host_labels.push((i, id(&mut lt, l))); }
        for d in &h.datastores { c.host_datastores.push((i, id(&mut dt, d))); }
        for g in &h.anti_affinity_groups { c.host_groups.push((i, id(&mut gt, g))); }
    }
    for (v, vm) in input.vms.iter().enumerate() {
        let v = v as u32;
        c.vms.push(CVm { memory_mib: vm.memory_mib, vcpus: vm.vcpus, priority: match vm.priority { RestartPriority::Restart => Prio::Restart, RestartPriority::BestEffort => Prio::BestEffort, RestartPriority::Unprotected => Prio::Unprotected }, anti_affinity_group: vm.anti_affinity_group.as_deref().map(|g| id(&mut gt, g)) });
        for l in &vm.required_host_labels { c.vm_labels.push((v, id(&mut lt, l))); }
        for a in &vm.avoid_hosts { if let Some(&h) = hosts.get(a.as_str()) { c.vm_avoid.push((v, h)); } }
        for d in &vm.datastores { c.vm_datastores.push((v, id(&mut dt, d))); }
    }
    c
}
fn validate_columns(c: &CIn, a: &[PAssign], u: &[PUnplaced]) -> Result<(), String> {
    let (nv, nh) = (c.vms.len(), c.hosts.len());
    if a.len() + u.len() != nv { return Err("count".into()); }
    let mut seen = vec![false; nv];
    for v in a.iter().map(|x| x.vm).chain(u.iter().map(|x| x.vm)) {
        let s = seen.get_mut(v as usize).ok_or("unknown vm")?;
        if std::mem::replace(s, true) { return Err("twice".into()); }
    }
    let (vl, va, vd) = (Csr::new(nv, &c.vm_labels), Csr::new(nv, &c.vm_avoid), Csr::new(nv, &c.vm_datastores));
    let (hl, hd, hg) = (Csr::new(nh, &c.host_labels), Csr::new(nh, &c.host_datastores), Csr::new(nh, &c.host_groups));
    let mut free: Vec<u64> = c.hosts.iter().map(|h| h.free_memory_mib).collect();
    let mut vc: Vec<u64> = c.hosts.iter().map(|h| (u64::from(h.total_vcpus) * u64::from(c.vcpu_overcommit_percent) / 100).saturating_sub(u64::from(h.allocated_vcpus))).collect();
    let mut groups: std::collections::BTreeSet<(u32, u32)> = Default::default();
    for x in a {
        let h = c.hosts.get(x.host as usize).ok_or("unknown host")?;
        let (vm, i) = (&c.vms[x.vm as usize], x.host as usize);
        if h.maintenance || va.of(x.vm).contains(&x.host) || free[i] < vm.memory_mib || vc[i] < u64::from(vm.vcpus)
            || !vl.of(x.vm).iter().all(|l| hl.of(x.host).contains(l)) || !vd.of(x.vm).iter().all(|d| hd.of(x.host).contains(d))
            || vm.anti_affinity_group.is_some_and(|g| hg.of(x.host).contains(&g) || !groups.insert((x.host, g))) { return Err("refused".into()); }
        free[i] -= vm.memory_mib; vc[i] -= u64::from(vm.vcpus);
    }
    Ok(())
}


#[derive(ComponentType, Lower, Clone, Copy, Default)]
#[component(record)]
struct Span { start: u32, len: u32 }
#[derive(ComponentType, Lower)]
#[component(record)]
struct SVm { #[component(name = "memory-mib")] memory_mib: u64, vcpus: u32, priority: Prio, #[component(name = "anti-affinity-group")] anti_affinity_group: Option<u32>, #[component(name = "required-host-labels")] required_host_labels: Span, #[component(name = "avoid-hosts")] avoid_hosts: Span, datastores: Span }
#[derive(ComponentType, Lower)]
#[component(record)]
struct SHost { #[component(name = "total-memory-mib")] total_memory_mib: u64, #[component(name = "free-memory-mib")] free_memory_mib: u64, #[component(name = "total-vcpus")] total_vcpus: u32, #[component(name = "allocated-vcpus")] allocated_vcpus: u32, maintenance: bool, labels: Span, datastores: Span, #[component(name = "anti-affinity-groups")] anti_affinity_groups: Span }
#[derive(ComponentType, Lower)]
#[component(record)]
struct SIn<'a> { vms: Vec<SVm>, hosts: Vec<SHost>, positions: Vec<u32>, labels: Vec<&'a str>, datastores: Vec<&'a str>, groups: Vec<&'a str>, #[component(name = "vcpu-overcommit-percent")] vcpu_overcommit_percent: u32 }
fn spans(input: &PlacementInput) -> SIn<'_> {
    let n = input.vms.len();
    let mut hosts: Map = HashMap::with_capacity_and_hasher(input.hosts.len(), Default::default());
    for (i, h) in input.hosts.iter().enumerate() { hosts.insert(h.name.as_str(), i as u32); }
    let (mut lt, mut dt, mut gt): (Map, Map, Map) = Default::default();
    let mut c = SIn { vms: Vec::with_capacity(n), hosts: Vec::with_capacity(input.hosts.len()), positions: Vec::with_capacity(3 * n), labels: vec![], datastores: vec![], groups: vec![], vcpu_overcommit_percent: input.vcpu_overcommit_percent };
    fn id<'a>(t: &mut Map<'a>, list: &mut Vec<&'a str>, n: &'a str) -> u32 { let next = list.len() as u32; *t.entry(n).or_insert_with(|| { list.push(n); next }) }
    fn span<'a>(pos: &mut Vec<u32>, t: &mut Map<'a>, list: &mut Vec<&'a str>, names: &'a [String]) -> Span {
        let start = pos.len() as u32;
        for n in names { let i = id(t, list, n); pos.push(i); }
        Span { start, len: pos.len() as u32 - start }
    }
    for h in &input.hosts {
        let labels = span(&mut c.positions, &mut lt, &mut c.labels, &h.labels);
        let datastores = span(&mut c.positions, &mut dt, &mut c.datastores, &h.datastores);
        let anti_affinity_groups = span(&mut c.positions, &mut gt, &mut c.groups, &h.anti_affinity_groups);
        c.hosts.push(SHost { total_memory_mib: h.total_memory_mib, free_memory_mib: h.free_memory_mib, total_vcpus: h.total_vcpus, allocated_vcpus: h.allocated_vcpus, maintenance: h.maintenance, labels, datastores, anti_affinity_groups });
    }
    for vm in &input.vms {
        let required_host_labels = span(&mut c.positions, &mut lt, &mut c.labels, &vm.required_host_labels);
        let start = c.positions.len() as u32;
        for a in &vm.avoid_hosts { if let Some(&h) = hosts.get(a.as_str()) { c.positions.push(h); } }
        let avoid_hosts = Span { start, len: c.positions.len() as u32 - start };
        let datastores = span(&mut c.positions, &mut dt, &mut c.datastores, &vm.datastores);
        let anti_affinity_group = vm.anti_affinity_group.as_deref().map(|g| id(&mut gt, &mut c.groups, g));
        c.vms.push(SVm { memory_mib: vm.memory_mib, vcpus: vm.vcpus, priority: match vm.priority { RestartPriority::Restart => Prio::Restart, RestartPriority::BestEffort => Prio::BestEffort, RestartPriority::Unprotected => Prio::Unprotected }, anti_affinity_group, required_host_labels, avoid_hosts, datastores });
    }
    c
}
fn validate_spans(c: &SIn, a: &[PAssign], u: &[PUnplaced]) -> Result<(), String> {
    let of = |s: &Span| -> &[u32] { &c.positions[s.start as usize..][..s.len as usize] };
    if a.len() + u.len() != c.vms.len() { return Err("count".into()); }
    let mut seen = vec![false; c.vms.len()];
    for v in a.iter().map(|x| x.vm).chain(u.iter().map(|x| x.vm)) {
        let s = seen.get_mut(v as usize).ok_or("unknown vm")?;
        if std::mem::replace(s, true) { return Err("twice".into()); }
    }
    let mut free: Vec<u64> = c.hosts.iter().map(|h| h.free_memory_mib).collect();
    let mut vc: Vec<u64> = c.hosts.iter().map(|h| (u64::from(h.total_vcpus) * u64::from(c.vcpu_overcommit_percent) / 100).saturating_sub(u64::from(h.allocated_vcpus))).collect();
    let mut groups: Vec<Vec<u32>> = c.hosts.iter().map(|h| of(&h.anti_affinity_groups).to_vec()).collect();
    for x in a {
        let h = c.hosts.get(x.host as usize).ok_or("unknown host")?;
        let (vm, i) = (&c.vms[x.vm as usize], x.host as usize);
        if h.maintenance || of(&vm.avoid_hosts).contains(&x.host) || free[i] < vm.memory_mib || vc[i] < u64::from(vm.vcpus)
            || !of(&vm.required_host_labels).iter().all(|l| of(&h.labels).contains(l)) || !of(&vm.datastores).iter().all(|d| of(&h.datastores).contains(d))
            || vm.anti_affinity_group.is_some_and(|g| groups[i].contains(&g)) { return Err("refused".into()); }
        if let Some(g) = vm.anti_affinity_group { groups[i].push(g); }
        free[i] -= vm.memory_mib; vc[i] -= u64::from(vm.vcpus);
    }
    Ok(())
}

#[derive(ComponentType, Lower, Default)]
#[component(record)]
struct Rel { starts: Vec<u32>, items: Vec<u32> }
impl Rel {
    fn new() -> Rel { Rel { starts: vec![0], items: vec![] } }
    fn close(&mut self) { self.starts.push(self.items.len() as u32); }
}
#[derive(ComponentType, Lower)]
#[component(record)]
struct RVm { #[component(name = "memory-mib")] memory_mib: u64, vcpus: u32, priority: Prio, #[component(name = "anti-affinity-group")] anti_affinity_group: Option<u32> }
#[derive(ComponentType, Lower)]
#[component(record)]
struct RHost { #[component(name = "total-memory-mib")] total_memory_mib: u64, #[component(name = "free-memory-mib")] free_memory_mib: u64, #[component(name = "total-vcpus")] total_vcpus: u32, #[component(name = "allocated-vcpus")] allocated_vcpus: u32, maintenance: bool }
#[derive(ComponentType, Lower)]
#[component(record)]
struct RIn<'a> { vms: Vec<RVm>, hosts: Vec<RHost>,
  #[component(name = "vm-labels")] vm_labels: Rel, #[component(name = "vm-avoid")] vm_avoid: Rel, #[component(name = "vm-datastores")] vm_datastores: Rel,
  #[component(name = "host-labels")] host_labels: Rel, #[component(name = "host-datastores")] host_datastores: Rel, #[component(name = "host-groups")] host_groups: Rel,
  labels: Vec<&'a str>, datastores: Vec<&'a str>, groups: Vec<&'a str>, #[component(name = "vcpu-overcommit-percent")] vcpu_overcommit_percent: u32 }
fn rels(input: &PlacementInput) -> RIn<'_> {
    let n = input.vms.len();
    let mut hosts: Map = HashMap::with_capacity_and_hasher(input.hosts.len(), Default::default());
    for (i, h) in input.hosts.iter().enumerate() { hosts.insert(h.name.as_str(), i as u32); }
    let (mut lt, mut dt, mut gt): (Map, Map, Map) = Default::default();
    let mut c = RIn { vms: Vec::with_capacity(n), hosts: Vec::with_capacity(input.hosts.len()), vm_labels: Rel::new(), vm_avoid: Rel::new(), vm_datastores: Rel::new(), host_labels: Rel::new(), host_datastores: Rel::new(), host_groups: Rel::new(), labels: vec![], datastores: vec![], groups: vec![], vcpu_overcommit_percent: input.vcpu_overcommit_percent };
    fn id<'a>(t: &mut Map<'a>, list: &mut Vec<&'a str>, n: &'a str) -> u32 { let next = list.len() as u32; *t.entry(n).or_insert_with(|| { list.push(n); next }) }
    fn add<'a>(r: &mut Rel, t: &mut Map<'a>, list: &mut Vec<&'a str>, names: &'a [String]) { for n in names { let i = id(t, list, n); r.items.push(i); } r.close(); }
    for h in &input.hosts {
        add(&mut c.host_labels, &mut lt, &mut c.labels, &h.labels);
        add(&mut c.host_datastores, &mut dt, &mut c.datastores, &h.datastores);
        add(&mut c.host_groups, &mut gt, &mut c.groups, &h.anti_affinity_groups);
        c.hosts.push(RHost { total_memory_mib: h.total_memory_mib, free_memory_mib: h.free_memory_mib, total_vcpus: h.total_vcpus, allocated_vcpus: h.allocated_vcpus, maintenance: h.maintenance });
    }
    for vm in &input.vms {
        add(&mut c.vm_labels, &mut lt, &mut c.labels, &vm.required_host_labels);
        for a in &vm.avoid_hosts { if let Some(&h) = hosts.get(a.as_str()) { c.vm_avoid.items.push(h); } }
        c.vm_avoid.close();
        add(&mut c.vm_datastores, &mut dt, &mut c.datastores, &vm.datastores);
        let anti_affinity_group = vm.anti_affinity_group.as_deref().map(|g| id(&mut gt, &mut c.groups, g));
        c.vms.push(RVm { memory_mib: vm.memory_mib, vcpus: vm.vcpus, priority: match vm.priority { RestartPriority::Restart => Prio::Restart, RestartPriority::BestEffort => Prio::BestEffort, RestartPriority::Unprotected => Prio::Unprotected }, anti_affinity_group });
    }
    c
}
fn validate_rel(c: &RIn, a: &[PAssign], u: &[PUnplaced]) -> Result<(), String> {
    if a.len() + u.len() != c.vms.len() { return Err("count".into()); }
    let mut seen = vec![false; c.vms.len()];
    for v in a.iter().map(|x| x.vm).chain(u.iter().map(|x| x.vm)) {
        let s = seen.get_mut(v as usize).ok_or("unknown vm")?;
        if std::mem::replace(s, true) { return Err("twice".into()); }
    }
    let mut free: Vec<u64> = c.hosts.iter().map(|h| h.free_memory_mib).collect();
    let mut vc: Vec<u64> = c.hosts.iter().map(|h| (u64::from(h.total_vcpus) * u64::from(c.vcpu_overcommit_percent) / 100).saturating_sub(u64::from(h.allocated_vcpus))).collect();
    let mut groups: Vec<Vec<u32>> = (0..c.hosts.len()).map(|i| rel_of(&c.host_groups, i as u32).to_vec()).collect();
    for x in a {
        let h = c.hosts.get(x.host as usize).ok_or("unknown host")?;
        let (vm, i) = (&c.vms[x.vm as usize], x.host as usize);
        if h.maintenance || rel_of(&c.vm_avoid, x.vm).contains(&x.host) || free[i] < vm.memory_mib || vc[i] < u64::from(vm.vcpus)
            || !rel_of(&c.vm_labels, x.vm).iter().all(|l| rel_of(&c.host_labels, x.host).contains(l)) || !rel_of(&c.vm_datastores, x.vm).iter().all(|d| rel_of(&c.host_datastores, x.host).contains(d))
            || vm.anti_affinity_group.is_some_and(|g| groups[i].contains(&g)) { return Err("refused".into()); }
        if let Some(g) = vm.anti_affinity_group { groups[i].push(g); }
        free[i] -= vm.memory_mib; vc[i] -= u64::from(vm.vcpus);
    }
    Ok(())
}

type Map<'a> = HashMap<&'a str, u32, BuildHasherDefault<NameHasher>>;
/// Interned lists: one arena, ranges per field.
struct Arena { ids: Vec<u32> }
fn intern_into<'a>(names: &'a [String], table: &mut Map<'a>, list: &mut Vec<&'a str>, arena: &mut Arena) -> (usize, usize) {
    let start = arena.ids.len();
    for n in names {
        let next = list.len() as u32;
        let id = *table.entry(n.as_str()).or_insert_with(|| { list.push(n.as_str()); next });
        arena.ids.push(id);
    }
    (start, arena.ids.len())
}

fn positional<'a>(input: &'a PlacementInput, arena: &mut Arena, tables: &mut (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>)) -> Vec<[(usize, usize); 4]> {
    // ranges per VM: labels, avoid, datastores, (group as 1-elem)
    let mut hosts: Map = HashMap::default();
    for (i, h) in input.hosts.iter().enumerate() { hosts.insert(h.name.as_str(), i as u32); }
    let (mut lt, mut dt, mut gt): (Map, Map, Map) = Default::default();
    let mut ranges = Vec::with_capacity(input.vms.len() + input.hosts.len());
    for h in &input.hosts {
        let l = intern_into(&h.labels, &mut lt, &mut tables.0, arena);
        let d = intern_into(&h.datastores, &mut dt, &mut tables.1, arena);
        let g = intern_into(&h.anti_affinity_groups, &mut gt, &mut tables.2, arena);
        ranges.push([l, d, g, (0, 0)]);
    }
    for vm in &input.vms {
        let l = intern_into(&vm.required_host_labels, &mut lt, &mut tables.0, arena);
        let start = arena.ids.len();
        for a in &vm.avoid_hosts { if let Some(&i) = hosts.get(a.as_str()) { arena.ids.push(i); } }
        let av = (start, arena.ids.len());
        let d = intern_into(&vm.datastores, &mut dt, &mut tables.1, arena);
        let g = match vm.anti_affinity_group.as_deref() { Some(g) => { let next = tables.2.len() as u32; let id = *gt.entry(g).or_insert_with(|| { tables.2.push(g); next }); (id as usize, 1) } None => (0, 0) };
        ranges.push([l, av, d, g]);
    }
    ranges
}

fn build<'a>(input: &'a PlacementInput, ids: &'a [u32], ranges: &[[(usize, usize); 4]], tables: (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>)) -> PIn<'a> {
    let h = input.hosts.len();
    let s = |r: (usize, usize)| &ids[r.0..r.1];
    PIn {
        hosts: input.hosts.iter().zip(&ranges[..h]).map(|(x, r)| PHost { name: &x.name, total_memory_mib: x.total_memory_mib, free_memory_mib: x.free_memory_mib, total_vcpus: x.total_vcpus, allocated_vcpus: x.allocated_vcpus, labels: s(r[0]), datastores: s(r[1]), maintenance: x.maintenance, anti_affinity_groups: s(r[2]) }).collect(),
        vms: input.vms.iter().zip(&ranges[h..]).map(|(v, r)| PVm { name: &v.name, memory_mib: v.memory_mib, vcpus: v.vcpus, priority: match v.priority { RestartPriority::Restart => Prio::Restart, RestartPriority::BestEffort => Prio::BestEffort, RestartPriority::Unprotected => Prio::Unprotected }, required_host_labels: s(r[0]), anti_affinity_group: (r[3].1 == 1).then_some(r[3].0 as u32), avoid_hosts: s(r[1]), datastores: s(r[2]) }).collect(),
        labels: tables.0, datastores: tables.1, groups: tables.2,
        vcpu_overcommit_percent: input.vcpu_overcommit_percent,
    }
}

fn names_out(input: &PlacementInput, a: &[(u32, u32)], u: &[u32]) -> Placement {
    Placement {
        assignments: a.iter().map(|&(v, h)| Assignment { vm: input.vms[v as usize].name.clone(), host: input.hosts[h as usize].name.clone() }).collect(),
        unplaced: u.iter().map(|&v| UnplacedVm { vm: input.vms[v as usize].name.clone(), reason: "no host fits".into() }).collect(),
    }
}

/// Positional validation: each VM once, host in range, rules, cumulative capacity.
fn validate(p: &PIn, a: &[PAssign], u: &[PUnplaced]) -> Result<(), String> {
    if a.len() + u.len() != p.vms.len() { return Err("count".into()); }
    let mut seen = vec![false; p.vms.len()];
    for v in a.iter().map(|x| x.vm).chain(u.iter().map(|x| x.vm)) {
        let s = seen.get_mut(v as usize).ok_or("unknown vm")?;
        if std::mem::replace(s, true) { return Err("twice".into()); }
    }
    let mut free: Vec<u64> = p.hosts.iter().map(|h| h.free_memory_mib).collect();
    let mut vc: Vec<u64> = p.hosts.iter().map(|h| (u64::from(h.total_vcpus) * u64::from(p.vcpu_overcommit_percent) / 100).saturating_sub(u64::from(h.allocated_vcpus))).collect();
    let mut groups: std::collections::BTreeSet<(u32, u32)> = Default::default();
    for x in a {
        let (vm, h) = (&p.vms[x.vm as usize], p.hosts.get(x.host as usize).ok_or("unknown host")?);
        let i = x.host as usize;
        if h.maintenance || vm.avoid_hosts.contains(&x.host) || free[i] < vm.memory_mib || vc[i] < u64::from(vm.vcpus)
            || !vm.required_host_labels.iter().all(|l| h.labels.contains(l)) || !vm.datastores.iter().all(|d| h.datastores.contains(d))
            || vm.anti_affinity_group.is_some_and(|g| h.anti_affinity_groups.contains(&g) || !groups.insert((x.host, g))) { return Err("refused".into()); }
        free[i] -= vm.memory_mib; vc[i] -= u64::from(vm.vcpus);
    }
    Ok(())
}

fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut t: Vec<Duration> = (0..runs).map(|_| { let s = Instant::now(); f(); s.elapsed() }).collect();
    t.sort(); t[t.len() / 2]
}
struct Lcg(u64);
impl Lcg { fn next(&mut self, n: u64) -> u64 { self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (self.0 >> 33) % n } }
fn big(vms: usize, hosts: usize) -> PlacementInput {
    let mut rng = Lcg(42);
    let hosts: Vec<CandidateHost> = (0..hosts).map(|i| CandidateHost { name: format!("host-{i:04}"), total_memory_mib: 262_144, free_memory_mib: 65_536 + rng.next(131_072), total_vcpus: 64, allocated_vcpus: rng.next(64) as u32, labels: if i % 10 == 0 { vec!["gpu".into()] } else { vec![] }, datastores: vec!["ds1".into(), format!("ds{}", 2 + i % 4)], maintenance: i % 97 == 0, anti_affinity_groups: vec![] }).collect();
    let vms: Vec<VmToPlace> = (0..vms).map(|i| VmToPlace { name: format!("vm-{i:05}"), memory_mib: [1024, 2048, 4096, 8192, 16384][rng.next(5) as usize], vcpus: 1 + rng.next(8) as u32, priority: if i % 4 == 0 { RestartPriority::BestEffort } else { RestartPriority::Restart }, required_host_labels: if i % 50 == 0 { vec!["gpu".into()] } else { vec![] }, anti_affinity_group: (i % 20 == 0).then(|| format!("aa-{}", i % 200)), avoid_hosts: vec![format!("host-{:04}", rng.next(hosts.len() as u64))], datastores: vec!["ds1".into()] }).collect();
    PlacementInput { reason: PlacementReason::Failover, vms, hosts, vcpu_overcommit_percent: 400, settings: vec![] }
}

fn main() {
    let input = big(10_000, 1_000);
    let current = median(9, || { std::hint::black_box(halo_policy::placement::place_fallback(&input)); });
    let native = median(9, || {
        let mut arena = Arena { ids: Vec::new() };
        let mut tables = Default::default();
        let ranges = positional(&input, &mut arena, &mut tables);
        let p = build(&input, &arena.ids, &ranges, tables);
        let (a, u) = place(&p);
        std::hint::black_box(names_out(&input, &a, &u));
    });
    let intern = median(9, || {
        let mut arena = Arena { ids: Vec::new() };
        let mut tables = Default::default();
        let ranges = positional(&input, &mut arena, &mut tables);
        std::hint::black_box(build(&input, &arena.ids, &ranges, tables));
    });
    let (core_t, out_t) = {
        let mut arena = Arena { ids: Vec::new() };
        let mut tables = Default::default();
        let ranges = positional(&input, &mut arena, &mut tables);
        let p = build(&input, &arena.ids, &ranges, tables);
        let (a, u) = place(&p);
        (median(9, || { std::hint::black_box(place(&p)); }), median(9, || { std::hint::black_box(names_out(&input, &a, &u)); }))
    };
    println!("intern {:.2} core {:.2} names-out {:.2}", intern.as_secs_f64()*1e3, core_t.as_secs_f64()*1e3, out_t.as_secs_f64()*1e3);
    let sandbox = Sandbox::new(SandboxLimits { cpu: CpuBudget::Fuel { millis: 2000 }, ..SandboxLimits::default() }).expect("sandbox");
    let path = "/tmp/prof-target/wasm32-wasip2/plugin/proto.wasm";
    let component = Component::from_file(sandbox.engine(), path).expect("component");
    let mut linker: Linker<CallState> = Linker::new(sandbox.engine());
    linker.define_unknown_imports_as_traps(&component).expect("traps");
    let pre = linker.instantiate_pre(&component).expect("pre");
    let iface = component.get_export_index(None, "halo:proto/positional@0.1.0").expect("iface");
    let func = component.get_export_index(Some(&iface), "place").expect("func");
    let mut run = |pct: u32| -> Option<Placement> {
        let mut arena = Arena { ids: Vec::new() };
        let mut tables = Default::default();
        let ranges = positional(&input, &mut arena, &mut tables);
        let mut p = build(&input, &arena.ids, &ranges, tables);
        p.vcpu_overcommit_percent = pct;
        let mut store = sandbox.store(Arc::from("proto")).expect("store");
        let instance = pre.instantiate(&mut store).expect("inst");
        let f = instance.get_typed_func::<(&PIn<'_>,), (Result<PAnswer, String>,)>(&mut store, &func).expect("typed");
        let (ans,) = f.call(&mut store, (&p,)).expect("call");
        let ans = ans.ok()?;
        validate(&p, &ans.assignments, &ans.unplaced).expect("valid");
        let a: Vec<(u32, u32)> = ans.assignments.iter().map(|x| (x.vm, x.host)).collect();
        let u: Vec<u32> = ans.unplaced.iter().map(|x| x.vm).collect();
        Some(names_out(&input, &a, &u))
    };


    let rfunc = component.get_export_index(Some(&iface), "place-rel").expect("func");
    let rnative = median(9, || {
        let c = rels(&input);
        let (a, u) = place_rel(&c);
        std::hint::black_box(names_out(&input, &a, &u));
    });
    let rrun = |pct: u32| -> Option<Placement> {
        let mut c = rels(&input);
        c.vcpu_overcommit_percent = pct;
        let mut store = sandbox.store(Arc::from("proto")).expect("store");
        let instance = pre.instantiate(&mut store).expect("inst");
        let f = instance.get_typed_func::<(&RIn<'_>,), (Result<PAnswer, String>,)>(&mut store, &rfunc).expect("typed");
        let (ans,) = f.call(&mut store, (&c,)).expect("call");
        let ans = ans.ok()?;
        validate_rel(&c, &ans.assignments, &ans.unplaced).expect("valid");
        let a: Vec<(u32, u32)> = ans.assignments.iter().map(|x| (x.vm, x.host)).collect();
        let u: Vec<u32> = ans.unplaced.iter().map(|x| x.vm).collect();
        Some(names_out(&input, &a, &u))
    };
    let rfirst = rrun(400).expect("answer");
    if std::env::var_os("LOOP_REL").is_some() { for _ in 0..600 { std::hint::black_box(rrun(400)); } return; }
    for _ in 0..3 {
    let rwasm = median(9, || { std::hint::black_box(rrun(400)); });
    let rcross = median(9, || { std::hint::black_box(rrun(0)); });
    let rint = median(9, || { std::hint::black_box(rels(&input)); });
    println!("rel: native {:.2} ms | wasm {:.2} ms ({:.2}x its native, {:.2}x current native) | crossing+rels {:.2} ms | rels alone {:.2} | placed {}",
        rnative.as_secs_f64() * 1e3, rwasm.as_secs_f64() * 1e3, rwasm.as_secs_f64() / rnative.as_secs_f64(), rwasm.as_secs_f64() / current.as_secs_f64(), rcross.as_secs_f64() * 1e3, rint.as_secs_f64()*1e3, rfirst.assignments.len());
    }
    let sfunc = component.get_export_index(Some(&iface), "place-spans").expect("func");
    let snative = median(9, || {
        let c = spans(&input);
        let (a, u) = place_spans(&c);
        std::hint::black_box(names_out(&input, &a, &u));
    });
    let srun = |pct: u32| -> Option<Placement> {
        let mut c = spans(&input);
        c.vcpu_overcommit_percent = pct;
        let mut store = sandbox.store(Arc::from("proto")).expect("store");
        let instance = pre.instantiate(&mut store).expect("inst");
        let f = instance.get_typed_func::<(&SIn<'_>,), (Result<PAnswer, String>,)>(&mut store, &sfunc).expect("typed");
        let (ans,) = f.call(&mut store, (&c,)).expect("call");
        let ans = ans.ok()?;
        validate_spans(&c, &ans.assignments, &ans.unplaced).expect("valid");
        let a: Vec<(u32, u32)> = ans.assignments.iter().map(|x| (x.vm, x.host)).collect();
        let u: Vec<u32> = ans.unplaced.iter().map(|x| x.vm).collect();
        Some(names_out(&input, &a, &u))
    };
    let sfirst = srun(400).expect("answer");
    for _ in 0..3 {
    let swasm = median(9, || { std::hint::black_box(srun(400)); });
    let scross = median(9, || { std::hint::black_box(srun(0)); });
    let sint = median(9, || { std::hint::black_box(spans(&input)); });
    println!("spans: native {:.2} ms | wasm {:.2} ms ({:.2}x its native, {:.2}x current native) | crossing+spans {:.2} ms | spans alone {:.2} | placed {}",
        snative.as_secs_f64() * 1e3, swasm.as_secs_f64() * 1e3, swasm.as_secs_f64() / snative.as_secs_f64(), swasm.as_secs_f64() / current.as_secs_f64(), scross.as_secs_f64() * 1e3, sint.as_secs_f64()*1e3, sfirst.assignments.len());
    }
    if std::env::var_os("ONLY_SPANS").is_some() { return; }
    let cfunc = component.get_export_index(Some(&iface), "place-columns").expect("func");
    let cnative = median(9, || {
        let c = columns(&input);
        let (a, u) = place_columns(&c);
        std::hint::black_box(names_out(&input, &a, &u));
    });
    let crun = |pct: u32| -> Option<Placement> {
        let mut c = columns(&input);
        c.vcpu_overcommit_percent = pct;
        let mut store = sandbox.store(Arc::from("proto")).expect("store");
        let instance = pre.instantiate(&mut store).expect("inst");
        let f = instance.get_typed_func::<(&CIn,), (Result<PAnswer, String>,)>(&mut store, &cfunc).expect("typed");
        let (ans,) = f.call(&mut store, (&c,)).expect("call");
        let ans = ans.ok()?;
        validate_columns(&c, &ans.assignments, &ans.unplaced).expect("valid");
        let a: Vec<(u32, u32)> = ans.assignments.iter().map(|x| (x.vm, x.host)).collect();
        let u: Vec<u32> = ans.unplaced.iter().map(|x| x.vm).collect();
        Some(names_out(&input, &a, &u))
    };
    let cfirst = crun(400).expect("answer");
    let cwasm = median(9, || { std::hint::black_box(crun(400)); });
    let ccross = median(9, || { std::hint::black_box(crun(0)); });
    println!("columns: native {:.2} ms | wasm {:.2} ms ({:.2}x its native, {:.2}x current native) | crossing+columns {:.2} ms | placed {}",
        cnative.as_secs_f64() * 1e3, cwasm.as_secs_f64() * 1e3, cwasm.as_secs_f64() / cnative.as_secs_f64(), cwasm.as_secs_f64() / current.as_secs_f64(), ccross.as_secs_f64() * 1e3, cfirst.assignments.len());
    let first = run(400).expect("answer");
    println!("placed {} unplaced {}", first.assignments.len(), first.unplaced.len());
    let wasm = median(9, || { std::hint::black_box(run(400)); });
    let crossing = median(9, || { std::hint::black_box(run(0)); });
    println!("current native {:.2} ms | positional native {:.2} ms | positional wasm {:.2} ms ({:.2}x positional native, {:.2}x current native) | crossing+intern {:.2} ms",
        current.as_secs_f64() * 1e3, native.as_secs_f64() * 1e3, wasm.as_secs_f64() * 1e3, wasm.as_secs_f64() / native.as_secs_f64(), wasm.as_secs_f64() / current.as_secs_f64(), crossing.as_secs_f64() * 1e3);
}
