"""First fit in Python: a site's placement engine (world `placement-engine`, contract 0.1.3).

The same policy as the Rust example `examples/plugins/first-fit`: fill hosts in name order,
first fit, honouring every rule of the input (maintenance, avoided hosts, labels, datastores,
anti-affinity, memory and vCPUs). halo's tests check that both answer alike.

Build (what `cargo xtask plugins` runs; `pip install componentize-py` first):
    componentize-py -d wit/0.1.3 -w placement-engine componentize app \
        -p examples/plugins/first-fit-py -o target/wasm32-wasip2/plugin/first_fit_py.wasm
Try:
    halo plugin run target/wasm32-wasip2/plugin/first_fit_py.wasm --input examples/inputs/placement.json
"""

from wit_world import exports
from wit_world.imports import types
from wit_world.imports.log import Level, log


class Placement(exports.Placement):
    def place(self, input: types.PlacementInput) -> types.Placement:
        hosts = sorted(input.hosts, key=lambda h: h.name.encode())
        free = [h.free_memory_mib for h in hosts]
        vcpus = [
            max(0, h.total_vcpus * input.vcpu_overcommit_percent // 100 - h.allocated_vcpus)
            for h in hosts
        ]
        groups = [list(h.anti_affinity_groups) for h in hosts]
        assignments = []
        unplaced = []
        for vm in input.vms:
            def fits(i: int) -> bool:
                h = hosts[i]
                return (
                    not h.maintenance
                    and h.name not in vm.avoid_hosts
                    and free[i] >= vm.memory_mib
                    and vcpus[i] >= vm.vcpus
                    and all(label in h.labels for label in vm.required_host_labels)
                    and all(d in h.datastores for d in vm.datastores)
                    and (vm.anti_affinity_group is None or vm.anti_affinity_group not in groups[i])
                )

            chosen = next((i for i in range(len(hosts)) if fits(i)), None)
            if chosen is None:
                unplaced.append(types.UnplacedVm(vm=vm.name, reason="first-fit: no host has room"))
                continue
            free[chosen] -= vm.memory_mib
            vcpus[chosen] -= vm.vcpus
            if vm.anti_affinity_group is not None:
                groups[chosen].append(vm.anti_affinity_group)
            assignments.append(types.Assignment(vm=vm.name, host=hosts[chosen].name))
        log(Level.DEBUG, f"first-fit placed {len(assignments)} of {len(input.vms)} VMs")
        return types.Placement(assignments=assignments, unplaced=unplaced)
