"""A Python placement plugin that misbehaves the way its setting `mode` names: `loop` (runs
forever), `memory` (asks for 1 GiB), `clock` (reads the wall clock, a WASI call), `crash` (an
uncaught exception), `refuse` (the contract's error), `nonsense` (every VM on a host that is
not in the input). Without a mode it answers validly (every VM unplaced). The runtime must
contain each like a Rust plugin's misdeed."""

import time

from wit_world import exports
from wit_world.imports import types
from componentize_py_types import Err


class Placement(exports.Placement):
    def place(self, input: types.PlacementInput) -> types.Placement:
        mode = next((s.value for s in input.settings if s.key == "mode"), "")
        if mode == "loop":
            n = 0
            while True:
                n += 1
        if mode == "memory":
            hog = bytearray(1 << 30)
            return types.Placement(assignments=[], unplaced=[types.UnplacedVm(vm=v.name, reason=str(len(hog))) for v in input.vms])
        if mode == "clock":
            return types.Placement(assignments=[], unplaced=[types.UnplacedVm(vm=v.name, reason=str(time.time())) for v in input.vms])
        if mode == "crash":
            raise ValueError("a bug in the plugin")
        if mode == "refuse":
            raise Err("not on Tuesdays")
        if mode == "nonsense":
            return types.Placement(assignments=[types.Assignment(vm=v.name, host="nowhere") for v in input.vms], unplaced=[])
        return types.Placement(assignments=[], unplaced=[types.UnplacedVm(vm=v.name, reason="declined") for v in input.vms])
