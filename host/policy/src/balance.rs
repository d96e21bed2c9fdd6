//! Balancing (contract 0.1.2, `balancing`): which live migrations would even out the hosts'
//! load, within the operator's placement rules. The default policy ([`propose`]), its
//! validator ([`validate_moves`]) and the load arithmetic both share ([`Loads`]).
//!
//! VMs and hosts are positions in the input's lists, as the plugin receives them. The load of
//! a host is two shares: memory (its VMs' configured memory over the host's) and CPU (its VMs'
//! measured CPU use over the host's threads; none where no reading exists yet). The imbalance
//! is the standard deviation of each share across the hosts that take VMs, in percentage
//! points, summed. Greedy, as DRS does: the move that lowers the imbalance most — a VM of one
//! of the most loaded hosts to a host it fits on, keeping every rule — is taken, up to
//! `max-moves`, if it narrows the gap between its two hosts by at least `cost-percent` points
//! (so small gains cause no migration, whatever the cluster's size); nothing moves while the
//! imbalance is below `threshold-percent`.

use serde::{Deserialize, Serialize};

use crate::Setting;
use crate::input::InvalidInput;

/// What a placement rule binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleKind {
    /// The VMs run on the rule's hosts.
    VmHost,
    /// The VMs run on one host.
    Together,
    /// No two of the VMs run on one host.
    Apart,
}

impl RuleKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::VmHost => "vm-host",
            RuleKind::Together => "together",
            RuleKind::Apart => "apart",
        }
    }
}

/// How hard a rule binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strength {
    /// Never broken: a VM stays down rather.
    Must,
    /// Broken only when nothing else fits, and reported.
    Should,
}

impl Strength {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Strength::Must => "must",
            Strength::Should => "should",
        }
    }
}

/// A host as balancing sees it; its position in [`BalanceInput::hosts`] is its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BalanceHost {
    /// Memory for VMs, MiB.
    pub memory_mib: u64,
    /// vCPUs for VMs (before overcommit).
    pub vcpus: u32,
    /// CPU threads (for CPU use; 0: no reading).
    pub threads: u32,
    /// It may receive VMs and its VMs may move (in contact, not in maintenance, not reserved).
    pub takes: bool,
}

/// A running VM as balancing sees it; its position in [`BalanceInput::vms`] is its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BalanceVm {
    /// Where it runs (a position in [`BalanceInput::hosts`]).
    pub host: u32,
    /// Configured memory, MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Measured CPU use, percent of one thread (0 without a reading).
    pub cpu_percent: u32,
    /// Balancing may move it (not moved within the window, not being moved or restarted).
    pub movable: bool,
}

/// A placement rule on positions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BalanceRule {
    /// The rule's name, for messages.
    pub name: String,
    /// What it binds.
    pub kind: RuleKind,
    /// `must` or `should`.
    pub strength: Strength,
    /// Positions in [`BalanceInput::vms`].
    pub vms: Vec<u32>,
    /// Positions in [`BalanceInput::hosts`] (`vm-host` only).
    #[serde(default)]
    pub hosts: Vec<u32>,
}

/// Input of the balancing policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BalanceInput {
    /// The hosts.
    pub hosts: Vec<BalanceHost>,
    /// The hosts' names (same positions; may be left out of a JSON input).
    #[serde(default)]
    pub host_names: Vec<String>,
    /// The running VMs.
    pub vms: Vec<BalanceVm>,
    /// The VMs' names (same positions). Not handed to plugins (ten thousand strings would
    /// cost more to cross than the decision): the agent's messages use them.
    #[serde(default)]
    pub vm_names: Vec<String>,
    /// The rules.
    #[serde(default)]
    pub rules: Vec<BalanceRule>,
    /// Nothing moves while the imbalance is below this (percentage points).
    pub threshold_percent: u32,
    /// The least gain that pays for one migration (percentage points).
    pub cost_percent: u32,
    /// At most this many moves.
    pub max_moves: u32,
    /// Most vCPUs a host may carry, in percent of its `vcpus`.
    pub vcpu_overcommit_percent: u32,
    /// The plugin's own settings.
    #[serde(default)]
    pub settings: Vec<Setting>,
}

impl BalanceInput {
    /// The name of VM `vm` (its position when out of range or unnamed).
    pub fn vm_name(&self, vm: u32) -> String {
        self.vm_names.get(vm as usize).cloned().unwrap_or_else(|| format!("VM #{vm}"))
    }

    /// The name of host `host` (its position when out of range or unnamed).
    pub fn host_name(&self, host: u32) -> String {
        self.host_names.get(host as usize).cloned().unwrap_or_else(|| format!("host #{host}"))
    }

    /// Per VM, the rules (positions in [`Self::rules`]) naming it.
    fn rules_of(&self) -> Vec<Vec<usize>> {
        let mut of = vec![Vec::new(); self.vms.len()];
        for (r, rule) in self.rules.iter().enumerate() {
            for &vm in &rule.vms {
                if let Some(list) = of.get_mut(vm as usize)
                    && !list.contains(&r)
                {
                    list.push(r);
                }
            }
        }
        of
    }
}

/// Refuses an input whose positions name nothing, or whose name lists are not one per entry
/// (no answer could be checked against it).
pub fn check_input(input: &BalanceInput) -> Result<(), InvalidInput> {
    let names = |what, names: usize, entries: usize| {
        if names == 0 || names == entries { Ok(()) } else { Err(InvalidInput::NameCount { what, names, entries }) }
    };
    names("host-names", input.host_names.len(), input.hosts.len())?;
    names("vm-names", input.vm_names.len(), input.vms.len())?;
    let within = |what: &dyn Fn() -> String, position: u32, len: usize| {
        if (position as usize) < len { Ok(()) } else { Err(InvalidInput::BadPosition { what: what(), position, len }) }
    };
    for (i, vm) in input.vms.iter().enumerate() {
        within(&|| format!("vms[{i}].host"), vm.host, input.hosts.len())?;
    }
    for (r, rule) in input.rules.iter().enumerate() {
        for &vm in &rule.vms {
            within(&|| format!("rules[{r}].vms"), vm, input.vms.len())?;
        }
        for &host in &rule.hosts {
            within(&|| format!("rules[{r}].hosts"), host, input.hosts.len())?;
        }
    }
    Ok(())
}

/// One move: VM `vm` to host `to` (positions), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BalanceMove {
    /// The VM (a position in [`BalanceInput::vms`]).
    pub vm: u32,
    /// The target host (a position in [`BalanceInput::hosts`]).
    pub to: u32,
    /// Why, for the operator.
    pub reason: String,
}

/// Running sums of one share across hosts: its mean and standard deviation in O(1).
#[derive(Debug, Clone, Copy)]
struct Spread {
    n: f64,
    sum: f64,
    squares: f64,
}

impl Spread {
    fn of(values: impl Iterator<Item = f64>) -> Self {
        let mut s = Spread { n: 0.0, sum: 0.0, squares: 0.0 };
        for v in values {
            s.n += 1.0;
            s.sum += v;
            s.squares += v * v;
        }
        s
    }

    fn deviation(&self) -> f64 {
        if self.n < 1.0 {
            return 0.0;
        }
        let mean = self.sum / self.n;
        (self.squares / self.n - mean * mean).max(0.0).sqrt()
    }

    /// With two values changed.
    fn with(&self, changes: [(f64, f64); 2]) -> Self {
        let mut s = *self;
        for (old, new) in changes {
            s.sum += new - old;
            s.squares += new * new - old * old;
        }
        s
    }
}

/// Percent of `part` in `whole` (0 when there is no whole).
fn share(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { 100.0 * part / whole } else { 0.0 }
}

/// The hosts' load under an input, changed move by move.
#[derive(Debug, Clone)]
pub struct Loads<'a> {
    input: &'a BalanceInput,
    /// Per host: memory, CPU percent and vCPUs of its VMs.
    mem: Vec<u64>,
    cpu: Vec<u64>,
    vcpus: Vec<u64>,
    /// Per VM: where it is.
    at: Vec<u32>,
    mem_spread: Spread,
    cpu_spread: Spread,
}

impl<'a> Loads<'a> {
    /// The load as the input has it (VMs on hosts out of range count nowhere).
    pub fn of(input: &'a BalanceInput) -> Self {
        let n = input.hosts.len();
        let (mut mem, mut cpu, mut vcpus) = (vec![0u64; n], vec![0u64; n], vec![0u64; n]);
        for vm in &input.vms {
            if let Some(h) = input.hosts.get(vm.host as usize).map(|_| vm.host as usize) {
                mem[h] += vm.memory_mib;
                cpu[h] += u64::from(vm.cpu_percent);
                vcpus[h] += u64::from(vm.vcpus);
            }
        }
        let mut loads = Loads {
            input,
            mem,
            cpu,
            vcpus,
            at: input.vms.iter().map(|vm| vm.host).collect(),
            mem_spread: Spread::of(std::iter::empty()),
            cpu_spread: Spread::of(std::iter::empty()),
        };
        let takers = || (0..n).filter(|&h| input.hosts[h].takes);
        loads.mem_spread = Spread::of(takers().map(|h| loads.mem_share(h, loads.mem[h])));
        loads.cpu_spread = Spread::of(takers().map(|h| loads.cpu_share(h, loads.cpu[h])));
        loads
    }

    fn mem_share(&self, host: usize, used: u64) -> f64 {
        share(used as f64, self.input.hosts[host].memory_mib as f64)
    }

    fn cpu_share(&self, host: usize, used: u64) -> f64 {
        share(used as f64, f64::from(self.input.hosts[host].threads) * 100.0)
    }

    /// The imbalance now, percentage points (memory and CPU spreads summed).
    pub fn imbalance(&self) -> f64 {
        self.mem_spread.deviation() + self.cpu_spread.deviation()
    }

    /// Host `host`'s memory and CPU shares now, percent.
    pub fn shares(&self, host: u32) -> (f64, f64) {
        let h = host as usize;
        (self.mem_share(h, self.mem[h]), self.cpu_share(h, self.cpu[h]))
    }

    /// Where VM `vm` is now.
    pub fn at(&self, vm: u32) -> u32 {
        self.at[vm as usize]
    }

    /// Whether `vm` fits on `to` (memory and vCPUs under the overcommit), as things are now.
    fn fits(&self, vm: usize, to: usize) -> bool {
        let v = &self.input.vms[vm];
        let host = &self.input.hosts[to];
        let vcpu_limit = u64::from(host.vcpus) * u64::from(self.input.vcpu_overcommit_percent) / 100;
        self.mem[to] + v.memory_mib <= host.memory_mib && self.vcpus[to] + u64::from(v.vcpus) <= vcpu_limit
    }

    /// Moves VM `vm` to `to` (both in range; its host and `to` take VMs).
    pub fn apply(&mut self, vm: u32, to: u32) {
        let (v, to) = (&self.input.vms[vm as usize], to as usize);
        let from = self.at[vm as usize] as usize;
        let (m, c) = (v.memory_mib, u64::from(v.cpu_percent));
        let mem_changes = [
            (self.mem_share(from, self.mem[from]), self.mem_share(from, self.mem[from] - m)),
            (self.mem_share(to, self.mem[to]), self.mem_share(to, self.mem[to] + m)),
        ];
        let cpu_changes = [
            (self.cpu_share(from, self.cpu[from]), self.cpu_share(from, self.cpu[from] - c)),
            (self.cpu_share(to, self.cpu[to]), self.cpu_share(to, self.cpu[to] + c)),
        ];
        self.mem_spread = self.mem_spread.with(mem_changes);
        self.cpu_spread = self.cpu_spread.with(cpu_changes);
        self.mem[from] -= m;
        self.mem[to] += m;
        self.cpu[from] -= c;
        self.cpu[to] += c;
        self.vcpus[from] -= u64::from(v.vcpus);
        self.vcpus[to] += u64::from(v.vcpus);
        self.at[vm as usize] = to as u32;
    }

    /// Whether `vm` on `host` keeps `rule`, the other VMs being where they are now.
    fn kept(&self, rule: &BalanceRule, vm: u32, host: u32) -> bool {
        let mut others = rule.vms.iter().filter(|&&v| v != vm).filter_map(|&v| self.at.get(v as usize));
        match rule.kind {
            RuleKind::VmHost => rule.hosts.contains(&host),
            RuleKind::Apart => others.all(|&h| h != host),
            RuleKind::Together => {
                let mut any = false;
                for &h in others {
                    if h == host {
                        return true;
                    }
                    any = true;
                }
                !any
            }
        }
    }

    /// The first rule `vm` on `to` breaks: a *must* it would not keep, or a *should* it keeps
    /// where it is now and would not keep there.
    fn broken(&self, rules: &[usize], vm: u32, to: u32) -> Option<&'a BalanceRule> {
        let input = self.input;
        rules.iter().map(|&r| &input.rules[r]).find(|rule| {
            !self.kept(rule, vm, to) && (rule.strength == Strength::Must || self.kept(rule, vm, self.at(vm)))
        })
    }
}

/// Each move is sought from the three most loaded hosts to this many least loaded.
const TARGETS: usize = 16;

/// The default balancing policy: up to `max-moves` moves, greedy, each the one that lowers
/// the imbalance most and pays its cost; none while the imbalance is below the threshold.
pub fn propose(input: &BalanceInput) -> Vec<BalanceMove> {
    let mut loads = Loads::of(input);
    let takers: Vec<usize> = (0..input.hosts.len()).filter(|&h| input.hosts[h].takes).collect();
    if loads.imbalance() < f64::from(input.threshold_percent) || takers.len() < 2 {
        return Vec::new();
    }
    let rules_of = input.rules_of();
    // Per host: its movable VMs.
    let mut on: Vec<Vec<u32>> = vec![Vec::new(); input.hosts.len()];
    for (v, vm) in input.vms.iter().enumerate() {
        if vm.movable && input.hosts.get(vm.host as usize).is_some_and(|h| h.takes) {
            on[vm.host as usize].push(v as u32);
        }
    }
    let cost = f64::from(input.cost_percent).max(1e-6);
    let mut moves = Vec::new();
    let mut order = takers;
    for _ in 0..input.max_moves {
        // The most loaded hosts first (a few: the best move leaves one of them).
        let load = |h: usize| {
            let (m, c) = loads.shares(h as u32);
            m + c
        };
        order.sort_by(|&a, &b| load(b).total_cmp(&load(a)));
        // (score: how much the sum of squared shares drops; gain: how much the gap between
        // the two hosts narrows, in percentage points, which must pay the cost.)
        let mut best: Option<(f64, u32, usize, usize)> = None;
        for &from in order.iter().take(3) {
            let (mf, cf) = loads.shares(from as u32);
            for &v in &on[from] {
                let vm = &input.vms[v as usize];
                let mf2 = loads.mem_share(from, loads.mem[from] - vm.memory_mib);
                let cf2 = loads.cpu_share(from, loads.cpu[from] - u64::from(vm.cpu_percent));
                for &to in order.iter().rev().take(TARGETS) {
                    if to == from || !loads.fits(v as usize, to) {
                        continue;
                    }
                    let (mt, ct) = loads.shares(to as u32);
                    let mt2 = loads.mem_share(to, loads.mem[to] + vm.memory_mib);
                    let ct2 = loads.cpu_share(to, loads.cpu[to] + u64::from(vm.cpu_percent));
                    let gain = ((mf - mt) - (mf2 - mt2).abs()) + ((cf - ct) - (cf2 - ct2).abs());
                    if gain < cost {
                        continue;
                    }
                    // The sum of squares drops by this (the mean does not change).
                    let score =
                        (mf * mf + mt * mt - mf2 * mf2 - mt2 * mt2) + (cf * cf + ct * ct - cf2 * cf2 - ct2 * ct2);
                    if best.is_none_or(|(s, ..)| score > s + 1e-9)
                        && loads.broken(&rules_of[v as usize], v, to as u32).is_none()
                    {
                        best = Some((score, v, from, to));
                    }
                }
            }
        }
        let Some((_, v, from, to)) = best else { break };
        let ((mf, cf), (mt, ct)) = (loads.shares(from as u32), loads.shares(to as u32));
        let reason = format!(
            "{} memory {mf:.0} %, CPU {cf:.0} % → {} memory {mt:.0} %, CPU {ct:.0} %",
            input.host_name(from as u32),
            input.host_name(to as u32)
        );
        loads.apply(v, to as u32);
        // Moved once per round: it leaves the lists.
        on[from].retain(|&x| x != v);
        moves.push(BalanceMove { vm: v, to: to as u32, reason });
    }
    moves
}

/// Why a balancing answer is refused: the first move that breaks the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBalance {
    /// More moves than `max-moves`.
    #[error("{moves} moves, at most {max} allowed")]
    TooMany {
        /// How many.
        moves: usize,
        /// The limit.
        max: u32,
    },
    /// One move is wrong.
    #[error("move {index} ({what}): {why}")]
    Move {
        /// Its position in the answer, from 1.
        index: usize,
        /// The move, named.
        what: String,
        /// What is wrong.
        why: String,
    },
}

/// Checks a balancing answer against its input: every move's VM exists, may move and moves
/// once; its target exists, takes VMs, is not where the VM runs and has room, counting the
/// moves before it; no *must* rule is broken and no *should* rule the VM keeps before its move;
/// at most `max-moves` moves.
pub fn validate_moves(input: &BalanceInput, moves: &[BalanceMove]) -> Result<(), InvalidBalance> {
    if moves.len() > input.max_moves as usize {
        return Err(InvalidBalance::TooMany { moves: moves.len(), max: input.max_moves });
    }
    let rules_of = input.rules_of();
    let mut loads = Loads::of(input);
    let mut moved = vec![false; input.vms.len()];
    for (i, m) in moves.iter().enumerate() {
        let what = format!("{} to {}", input.vm_name(m.vm), input.host_name(m.to));
        let bad = |why: String| InvalidBalance::Move { index: i + 1, what: what.clone(), why };
        let (vm, to) = (m.vm as usize, m.to as usize);
        let Some(v) = input.vms.get(vm) else {
            return Err(bad(format!("no VM at position {vm} (the input has {})", input.vms.len())));
        };
        let Some(target) = input.hosts.get(to) else {
            return Err(bad(format!("no host at position {to} (the input has {})", input.hosts.len())));
        };
        if std::mem::replace(&mut moved[vm], true) {
            return Err(bad("the VM moves twice".into()));
        }
        if !v.movable {
            return Err(bad("the VM may not move now (moved lately, migrating or restarting)".into()));
        }
        if !input.hosts.get(v.host as usize).is_some_and(|h| h.takes) {
            return Err(bad(format!("its host {} takes part in no balancing", input.host_name(v.host))));
        }
        if !target.takes {
            return Err(bad("the target takes no VMs (out of contact, in maintenance or reserved)".into()));
        }
        if loads.at(m.vm) == m.to {
            return Err(bad("the VM runs there already".into()));
        }
        if !loads.fits(vm, to) {
            return Err(bad("the target has no room for it (memory or vCPUs)".into()));
        }
        if let Some(rule) = loads.broken(&rules_of[vm], m.vm, m.to) {
            return Err(bad(format!(
                "it breaks rule {} ({} {})",
                rule.name,
                rule.strength.as_str(),
                rule.kind.as_str()
            )));
        }
        loads.apply(m.vm, m.to);
    }
    Ok(())
}

/// A skewed cluster for benchmarks and tests: `hosts` hosts of 256 GiB and 64 threads, `vms`
/// VMs of 2 GiB with CPU use from 0 to 120 %, a quarter spread evenly, the rest on the first
/// tenth of the hosts.
pub fn skewed_input(hosts: usize, vms: usize) -> BalanceInput {
    let crowded = (hosts / 10).max(1);
    BalanceInput {
        hosts: vec![BalanceHost { memory_mib: 262_144, vcpus: 64, threads: 64, takes: true }; hosts],
        host_names: (0..hosts).map(|i| format!("h{i}")).collect(),
        vms: (0..vms)
            .map(|i| BalanceVm {
                host: (if i % 4 == 0 { i % hosts } else { i % crowded }) as u32,
                memory_mib: 2048,
                vcpus: 1,
                cpu_percent: (i % 7) as u32 * 20,
                movable: true,
            })
            .collect(),
        vm_names: (0..vms).map(|i| format!("v{i}")).collect(),
        rules: Vec::new(),
        threshold_percent: 10,
        cost_percent: 1,
        max_moves: 8,
        vcpu_overcommit_percent: 400,
        settings: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(hosts: usize, vms: &[(u32, u64, u32)]) -> BalanceInput {
        BalanceInput {
            hosts: vec![BalanceHost { memory_mib: 4096, vcpus: 16, threads: 8, takes: true }; hosts],
            host_names: (1..=hosts).map(|i| format!("host-{i}")).collect(),
            vms: vms
                .iter()
                .map(|&(host, memory_mib, cpu_percent)| BalanceVm {
                    host,
                    memory_mib,
                    vcpus: 1,
                    cpu_percent,
                    movable: true,
                })
                .collect(),
            vm_names: (1..=vms.len()).map(|i| format!("vm-{i}")).collect(),
            rules: Vec::new(),
            threshold_percent: 10,
            cost_percent: 1,
            max_moves: 8,
            vcpu_overcommit_percent: 400,
            settings: Vec::new(),
        }
    }

    fn to_counts(moves: &[BalanceMove], hosts: usize) -> Vec<usize> {
        (0..hosts as u32).map(|h| moves.iter().filter(|m| m.to == h).count()).collect()
    }

    #[test]
    fn every_vm_on_one_host_is_spread_over_the_others() {
        let i = input(3, &[(0, 512, 0); 6]);
        assert!(Loads::of(&i).imbalance() > 30.0);
        let moves = propose(&i);
        assert_eq!(to_counts(&moves, 3), vec![0, 2, 2], "{moves:?}");
        validate_moves(&i, &moves).expect("the default policy's answer is valid");
        let mut loads = Loads::of(&i);
        for m in &moves {
            loads.apply(m.vm, m.to);
        }
        assert!(loads.imbalance() < 1.0);
        assert!(moves[0].reason.starts_with("host-1 memory 75 %"), "{}", moves[0].reason);
    }

    #[test]
    fn a_balanced_cluster_and_small_gains_move_nothing() {
        assert!(propose(&input(3, &[(0, 512, 0), (1, 512, 0), (2, 600, 0)])).is_empty());
        // Over the threshold (host-1 55 %, host-2 25 %), but the best move (vm-1, 25 %) narrows
        // the gap from 30 to 20 points only: moved when that pays the cost, not otherwise.
        let mut i = input(2, &[(0, 1024, 0), (0, 1229, 0), (1, 1024, 0)]);
        i.cost_percent = 15;
        assert!(Loads::of(&i).imbalance() >= 10.0 && propose(&i).is_empty());
        i.cost_percent = 5;
        assert_eq!(propose(&i).iter().map(|m| m.vm).collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn cpu_load_counts_and_rules_are_kept() {
        // Memory even, CPU all on host-1: the busy VMs spread.
        let mut i = input(2, &[(0, 512, 300), (0, 512, 300), (1, 512, 0), (1, 512, 0)]);
        let moves = propose(&i);
        assert!(!moves.is_empty() && i.vms[moves[0].vm as usize].host == 0, "{moves:?}");
        // vm-1 and vm-3 must stay apart, vm-2 must stay on host-1: what moves keeps that.
        i.rules = vec![
            BalanceRule {
                name: "apart".into(),
                kind: RuleKind::Apart,
                strength: Strength::Must,
                vms: vec![0, 2],
                hosts: vec![],
            },
            BalanceRule {
                name: "home".into(),
                kind: RuleKind::VmHost,
                strength: Strength::Must,
                vms: vec![1],
                hosts: vec![0],
            },
        ];
        let moves = propose(&i);
        assert!(moves.iter().all(|m| m.vm != 0 && m.vm != 1), "{moves:?}");
        validate_moves(&i, &moves).expect("valid");
        // The validator refuses exactly what the policy avoided.
        let bad = [BalanceMove { vm: 0, to: 1, reason: String::new() }];
        let e = validate_moves(&i, &bad).expect_err("vm-1 next to vm-3");
        assert_eq!(e.to_string(), "move 1 (vm-1 to host-2): it breaks rule apart (must apart)");
    }

    #[test]
    fn a_should_rule_kept_now_is_not_broken_and_one_broken_already_does_not_pin() {
        let mut i = input(2, &[(0, 512, 0), (0, 512, 0), (0, 512, 0), (0, 512, 0)]);
        i.rules = vec![BalanceRule {
            name: "pair".into(),
            kind: RuleKind::Together,
            strength: Strength::Should,
            vms: vec![0, 1],
            hosts: vec![],
        }];
        let moves = propose(&i);
        assert_eq!(moves.len(), 2, "{moves:?}");
        assert!(moves.iter().all(|m| m.vm >= 2), "the pair stays together: {moves:?}");
        // Apart already (vm-2 on host-2): vm-1 may move anywhere, the rule is not kept anyway.
        i.vms[1].host = 1;
        let ok = [BalanceMove { vm: 0, to: 1, reason: String::new() }];
        validate_moves(&i, &ok).expect("joining its partner is fine");
        i.vms[1].host = 0;
        let e = validate_moves(&i, &ok).expect_err("splits the pair");
        assert!(e.to_string().contains("breaks rule pair (should together)"), "{e}");
    }

    #[test]
    fn hosts_that_take_no_vms_and_vms_moved_lately_stay_out() {
        let mut i = input(3, &[(0, 512, 0); 4]);
        i.hosts[2].takes = false; // reserved, say
        i.vms[0].movable = false;
        let moves = propose(&i);
        assert_eq!(moves.len(), 2, "{moves:?}");
        assert!(moves.iter().all(|m| m.to == 1 && m.vm != 0), "{moves:?}");
    }

    #[test]
    fn the_validator_names_each_broken_promise() {
        let mut i = input(3, &[(0, 3000, 0), (0, 512, 0), (1, 3000, 0)]);
        i.hosts[2].takes = false;
        i.vms[1].movable = false;
        i.max_moves = 2;
        let m = |vm, to| BalanceMove { vm, to, reason: "x".into() };
        let cases: [(&[BalanceMove], &str); 7] = [
            (&[m(0, 1), m(0, 1), m(0, 1)], "3 moves, at most 2 allowed"),
            (&[m(9, 1)], "no VM at position 9"),
            (&[m(0, 7)], "no host at position 7"),
            (&[m(0, 0)], "the VM runs there already"),
            (&[m(1, 1)], "may not move now"),
            (&[m(0, 2)], "the target takes no VMs"),
            (&[m(0, 1)], "no room for it"),
        ];
        for (moves, why) in cases {
            let e = validate_moves(&i, moves).expect_err(why).to_string();
            assert!(e.contains(why), "{e} / {why}");
        }
        // Room counts the moves before: vm-3 leaves host-2, then vm-1 fits there.
        validate_moves(&i, &[m(2, 0), m(0, 1)]).expect_err("host-1 is full with vm-3 back on it");
        let mut roomy = i.clone();
        roomy.hosts[0].memory_mib = 8192;
        validate_moves(&roomy, &[m(2, 0), m(0, 1)]).expect("host-2 freed first");
        let e = validate_moves(&roomy, &[m(2, 0), m(2, 1)]).expect_err("twice").to_string();
        assert!(e.starts_with("move 2 (vm-3 to host-2): the VM moves twice"), "{e}");
    }

    #[test]
    fn a_thousand_hosts_and_ten_thousand_vms_are_proposed_for_quickly() {
        let i = skewed_input(1000, 10_000);
        let started = std::time::Instant::now();
        let moves = propose(&i);
        let took = started.elapsed();
        let mut loads = Loads::of(&i);
        let before = loads.imbalance();
        for m in &moves {
            loads.apply(m.vm, m.to);
        }
        println!(
            "figure: balancing proposal for 1,000 hosts × 10,000 VMs (default policy, native): {took:?}, {} moves, imbalance {before:.1} → {:.1}",
            moves.len(),
            loads.imbalance()
        );
        assert_eq!(moves.len(), 8, "{moves:?}");
        assert!(loads.imbalance() < before);
        validate_moves(&i, &moves).expect("valid");
    }
}
