// Column layout best fit: shared textually by the guest and the native bench.
pub struct Csr { start: Vec<u32>, items: Vec<u32> }
impl Csr {
    pub fn new(n: usize, pairs: &[(u32, u32)]) -> Csr {
        let mut start = vec![0u32; n + 1];
        for &(o, _) in pairs { start[o as usize + 1] += 1; }
        for i in 0..n { start[i + 1] += start[i]; }
        // pairs come sorted by owner (the host sends them so)
        Csr { start, items: pairs.iter().map(|&(_, x)| x).collect() }
    }
    fn of(&self, i: u32) -> &[u32] { &self.items[self.start[i as usize] as usize..self.start[i as usize + 1] as usize] }
}

pub fn place_columns(c: &CIn) -> (Vec<(u32, u32)>, Vec<u32>) {
    use std::collections::BTreeSet;
    let (nv, nh) = (c.vms.len(), c.hosts.len());
    let vl = Csr::new(nv, &c.vm_labels);
    let va = Csr::new(nv, &c.vm_avoid);
    let vd = Csr::new(nv, &c.vm_datastores);
    let hl = Csr::new(nh, &c.host_labels);
    let hd = Csr::new(nh, &c.host_datastores);
    let hg = Csr::new(nh, &c.host_groups);
    struct Room { free: u64, vcpus_left: u64, groups: BTreeSet<u32> }
    let mut rooms: Vec<Room> = c.hosts.iter().enumerate().map(|(i, h)| Room {
        free: h.free_memory_mib,
        vcpus_left: (u64::from(h.total_vcpus) * u64::from(c.vcpu_overcommit_percent) / 100).saturating_sub(u64::from(h.allocated_vcpus)),
        groups: hg.of(i as u32).iter().copied().collect(),
    }).collect();
    let mut by_free: BTreeSet<(u64, u32)> = c.hosts.iter().enumerate().filter(|(_, h)| !h.maintenance).map(|(i, h)| (h.free_memory_mib, i as u32)).collect();
    let mut order: Vec<u32> = (0..nv as u32).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&c.vms[a as usize], &c.vms[b as usize]);
        prio(&x.priority).cmp(&prio(&y.priority)).then(y.memory_mib.cmp(&x.memory_mib)).then(y.vcpus.cmp(&x.vcpus)).then(a.cmp(&b))
    });
    let mut assigned = Vec::with_capacity(nv);
    let mut unplaced = Vec::new();
    for v in order {
        let vm = &c.vms[v as usize];
        let chosen = by_free.range((vm.memory_mib, 0)..).map(|&(_, i)| i).find(|&i| {
            let r = &rooms[i as usize];
            let h = &c.hosts[i as usize];
            r.free >= vm.memory_mib && r.vcpus_left >= u64::from(vm.vcpus) && !h.maintenance
                && !va.of(v).contains(&i)
                && vl.of(v).iter().all(|l| hl.of(i).contains(l))
                && vd.of(v).iter().all(|d| hd.of(i).contains(d))
                && !vm.anti_affinity_group.is_some_and(|g| r.groups.contains(&g))
        });
        match chosen {
            Some(i) => {
                let r = &mut rooms[i as usize];
                by_free.remove(&(r.free, i));
                r.free -= vm.memory_mib;
                r.vcpus_left -= u64::from(vm.vcpus);
                if let Some(g) = vm.anti_affinity_group { r.groups.insert(g); }
                by_free.insert((r.free, i));
                assigned.push((v, i));
            }
            None => unplaced.push(v),
        }
    }
    (assigned, unplaced)
}
