// Spans best fit: fixed-size records, relations as spans into one shared position list.
pub fn place_spans(c: &SIn) -> (Vec<(u32, u32)>, Vec<u32>) {
    use std::collections::BTreeSet;
    let of = |s: &Span| -> &[u32] { &c.positions[s.start as usize..][..s.len as usize] };
    struct Room { free: u64, vcpus_left: u64, groups: Vec<u32> }
    let mut rooms: Vec<Room> = c.hosts.iter().map(|h| Room {
        free: h.free_memory_mib,
        vcpus_left: (u64::from(h.total_vcpus) * u64::from(c.vcpu_overcommit_percent) / 100).saturating_sub(u64::from(h.allocated_vcpus)),
        groups: of(&h.anti_affinity_groups).to_vec(),
    }).collect();
    let mut by_free: BTreeSet<(u64, u32)> = c.hosts.iter().enumerate().filter(|(_, h)| !h.maintenance).map(|(i, h)| (h.free_memory_mib, i as u32)).collect();
    let mut order: Vec<u32> = (0..c.vms.len() as u32).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&c.vms[a as usize], &c.vms[b as usize]);
        prio(&x.priority).cmp(&prio(&y.priority)).then(y.memory_mib.cmp(&x.memory_mib)).then(y.vcpus.cmp(&x.vcpus)).then(a.cmp(&b))
    });
    let mut assigned = Vec::with_capacity(c.vms.len());
    let mut unplaced = Vec::new();
    for v in order {
        let vm = &c.vms[v as usize];
        let chosen = by_free.range((vm.memory_mib, 0)..).map(|&(_, i)| i).find(|&i| {
            let r = &rooms[i as usize];
            let h = &c.hosts[i as usize];
            r.vcpus_left >= u64::from(vm.vcpus) && !h.maintenance
                && !of(&vm.avoid_hosts).contains(&i)
                && of(&vm.required_host_labels).iter().all(|l| of(&h.labels).contains(l))
                && of(&vm.datastores).iter().all(|d| of(&h.datastores).contains(d))
                && !vm.anti_affinity_group.is_some_and(|g| r.groups.contains(&g))
        });
        match chosen {
            Some(i) => {
                let r = &mut rooms[i as usize];
                by_free.remove(&(r.free, i));
                r.free -= vm.memory_mib;
                r.vcpus_left -= u64::from(vm.vcpus);
                if let Some(g) = vm.anti_affinity_group { r.groups.push(g); }
                by_free.insert((r.free, i));
                assigned.push((v, i));
            }
            None => unplaced.push(v),
        }
    }
    (assigned, unplaced)
}
