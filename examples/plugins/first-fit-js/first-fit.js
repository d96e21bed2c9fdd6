// First fit in JavaScript: a site's placement engine (world `placement-engine`, contract 0.1.3).
//
// The same policy as the Rust example `examples/plugins/first-fit`: fill hosts in name order,
// first fit, honouring every rule of the input (maintenance, avoided hosts, labels, datastores,
// anti-affinity, memory and vCPUs). halo's tests check that both answer alike.
//
// Build (what `cargo xtask plugins` runs; the tools come from npm, `cargo xtask setup`):
//   jco componentize examples/plugins/first-fit-js/first-fit.js --wit wit/0.1.3 \
//       --world-name placement-engine --disable all -o target/wasm32-wasip2/plugin/first_fit_js.wasm
// Try:
//   halo plugin run target/wasm32-wasip2/plugin/first_fit_js.wasm --input examples/inputs/placement.json
//
// Memory sizes are `u64` in the contract, which JavaScript sees as BigInt; vCPUs are `u32`,
// plain numbers.

import { log } from "halo:policy/log@0.1.3";

// Byte order of the names' UTF-8, as Rust's and Python's sorts compare them.
function byName(a, b) {
  const x = new TextEncoder().encode(a.name);
  const y = new TextEncoder().encode(b.name);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    if (x[i] !== y[i]) return x[i] - y[i];
  }
  return x.length - y.length;
}

export const placement = {
  place(input) {
    const hosts = [...input.hosts].sort(byName);
    const free = hosts.map((h) => h.freeMemoryMib);
    const vcpus = hosts.map((h) => {
      const capacity = Math.floor((h.totalVcpus * input.vcpuOvercommitPercent) / 100);
      return Math.max(0, capacity - h.allocatedVcpus);
    });
    const groups = hosts.map((h) => [...h.antiAffinityGroups]);
    const assignments = [];
    const unplaced = [];
    for (const vm of input.vms) {
      const fits = (i) => {
        const h = hosts[i];
        return (
          !h.maintenance &&
          !vm.avoidHosts.includes(h.name) &&
          free[i] >= vm.memoryMib &&
          vcpus[i] >= vm.vcpus &&
          vm.requiredHostLabels.every((l) => h.labels.includes(l)) &&
          vm.datastores.every((d) => h.datastores.includes(d)) &&
          (vm.antiAffinityGroup === undefined || !groups[i].includes(vm.antiAffinityGroup))
        );
      };
      let chosen = -1;
      for (let i = 0; i < hosts.length; i++) {
        if (fits(i)) {
          chosen = i;
          break;
        }
      }
      if (chosen < 0) {
        unplaced.push({ vm: vm.name, reason: "first-fit: no host has room" });
        continue;
      }
      free[chosen] -= vm.memoryMib;
      vcpus[chosen] -= vm.vcpus;
      if (vm.antiAffinityGroup !== undefined) groups[chosen].push(vm.antiAffinityGroup);
      assignments.push({ vm: vm.name, host: hosts[chosen].name });
    }
    log("debug", `first-fit placed ${assignments.length} of ${input.vms.length} VMs`);
    return { assignments, unplaced };
  },
};
