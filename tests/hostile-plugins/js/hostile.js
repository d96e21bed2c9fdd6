// A JavaScript placement plugin that misbehaves the way its setting `mode` names: `loop` (runs
// forever), `memory` (asks for 1 GiB), `clock` (reads the clock), `crash` (an uncaught
// exception), `refuse` (the contract's error), `nonsense` (every VM on a host that is not in
// the input). Without a mode it answers validly (every VM unplaced). The runtime must contain
// each like a Rust plugin's misdeed.

export const placement = {
  place(input) {
    const mode = (input.settings.find((s) => s.key === "mode") || { value: "" }).value;
    const declined = (reason) => ({ assignments: [], unplaced: input.vms.map((v) => ({ vm: v.name, reason })) });
    switch (mode) {
      case "loop":
        for (;;) {}
      case "memory": {
        const hog = new Uint8Array(1 << 30);
        hog.fill(1);
        return declined(String(hog.length));
      }
      case "clock":
        return declined(String(Date.now()));
      case "crash":
        throw new TypeError("a bug in the plugin");
      case "refuse":
        throw "not on Tuesdays";
      case "nonsense":
        return { assignments: input.vms.map((v) => ({ vm: v.name, host: "nowhere" })), unplaced: [] };
      default:
        return declined("declined");
    }
  },
};
