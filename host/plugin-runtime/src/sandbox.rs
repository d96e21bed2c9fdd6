//! The sandbox every plugin call runs in: one wasmtime `Engine` with the CPU budget (fuel
//! or epoch deadline) compiled in, a wall-clock ceiling on every call whichever budget (an
//! epoch deadline: fuel does not count time in host calls), the pooling allocator, a memory
//! cap per call, and the per-call store state (the `log` import, capped and charged).
//!
//! A plugin gets no WASI capability: WASI imports are defined as traps, so a plugin that
//! tries to read a clock, a file or randomness stops at once and the built-in policy
//! decides. A fresh `Store` is made for every call: wasmtime refuses further calls on a
//! store after a trap, and a fresh instance means no state leaks between decisions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::component::WasmStr;
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    StoreContextMut, Trap,
};

use crate::bindings::log;
use crate::error::{FailureKind, RuntimeError};

/// Fuel units granted per millisecond of CPU budget. Calibrated on this machine kind: tight
/// plugin code burns 1–2·10⁷ fuel per ms, so a budget of N ms lets a plugin run at most
/// about N ms, and the cut-off falls on the same instruction on every machine (replayable).
pub const FUEL_PER_MS: u64 = 10_000_000;

/// Length of one epoch tick (the wall-clock deadline of every call is counted in ticks).
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// With a fuel budget, a call also stops this long after its budget in wall-clock time: fuel
/// counts only the plugin's own instructions, not the time spent in host calls (copying a
/// log message, lifting an argument) or lost to a slow or busy machine. Part of the agent's
/// decision margin (`[plugins] cpu-budget-ms` + 100 ms must fit the fence timeout).
pub const WALL_SLACK_MS: u64 = 50;

/// Fuel charged for every call a plugin makes into halo (`log`), whatever it carries: the
/// host's own work (crossing the boundary, the line allowance, a log record) is not counted
/// by wasmtime's fuel, so it is charged here. 5,000 units are 0.5 µs of budget; a call that
/// is dropped (over the line allowance) costs about 0.17 µs in all here, boundary included
/// (`halo plugin bench` of the hostile `log_flood`: 20,000 calls in 3.4 ms).
pub const HOST_CALL_FUEL: u64 = 5_000;

/// Fuel charged per byte of a plugin's text the host reads (a log message that is kept is
/// validated whole, though at most [`MAX_LOG_LINE`] characters of it are kept).
pub const HOST_BYTE_FUEL: u64 = 4;

/// Most bytes a plugin may hand to halo in one go: its whole answer, or one log message.
/// wasmtime checks the length before it copies anything; more traps the call.
pub const MAX_TRANSFER_BYTES: usize = 16 << 20;

/// Bytes of a pooled linear memory (and table) kept mapped between calls. With the Linux
/// `PAGEMAP_SCAN` ioctl (kernel 6.7+) only the pages a call dirtied are reset to their initial
/// contents, so the next call neither page-faults them in nor pays an `madvise`; that was
/// half of a trivial call's cost. Without the ioctl wasmtime falls back to `memset` of this
/// much memory, which is why it stays small there ([`keep_resident`]).
pub const KEEP_RESIDENT: usize = 2 << 20;

/// With `PAGEMAP_SCAN`, a 10,000-VM placement's pages (≈ 5 MiB of columns, records and answer)
/// all stay resident: the columnar world's guest touches more memory than the 0.1.1 world did,
/// and re-faulting it cost ≈ 0.05x native (docs/performance.md, session 14).
pub const KEEP_RESIDENT_WITH_PAGEMAP_SCAN: usize = 8 << 20;

/// What to keep resident on this kernel: [`KEEP_RESIDENT_WITH_PAGEMAP_SCAN`] from Linux 6.7
/// on, where only dirtied pages are reset; [`KEEP_RESIDENT`] where every call would `memset`
/// all of it.
pub fn keep_resident() -> usize {
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
    match (numbers.next(), numbers.next()) {
        (Some(major), Some(minor)) if (major, minor) >= (6, 7) => KEEP_RESIDENT_WITH_PAGEMAP_SCAN,
        _ => KEEP_RESIDENT,
    }
}

/// Core module instances one plugin may have (a Python plugin built by componentize-py has 38).
pub const CORE_INSTANCES_PER_COMPONENT: u32 = 64;

/// How a call's CPU time is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuBudget {
    /// Fuel: deterministic (the same input stops at the same instruction everywhere).
    Fuel {
        /// Budget in milliseconds, converted with [`FUEL_PER_MS`].
        millis: u64,
    },
    /// Epoch deadline: wall-clock, not deterministic, slightly cheaper on some code.
    Epoch {
        /// Budget in milliseconds, rounded up to whole [`EPOCH_TICK`]s.
        millis: u64,
    },
}

impl CpuBudget {
    /// The budget in milliseconds.
    pub fn millis(self) -> u64 {
        match self {
            CpuBudget::Fuel { millis } | CpuBudget::Epoch { millis } => millis,
        }
    }

    /// The wall-clock time after which a call is stopped, whichever budget: the epoch
    /// budget itself, or a fuel budget plus [`WALL_SLACK_MS`].
    pub fn wall_ceiling_millis(self) -> u64 {
        match self {
            CpuBudget::Fuel { millis } => millis.saturating_add(WALL_SLACK_MS),
            CpuBudget::Epoch { millis } => millis,
        }
    }
}

impl std::fmt::Display for CpuBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CpuBudget::Fuel { millis } => write!(f, "{millis} ms of fuel ({} units)", millis * FUEL_PER_MS),
            CpuBudget::Epoch { millis } => write!(f, "{millis} ms wall-clock (epoch deadline)"),
        }
    }
}

/// Limits of every plugin call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLimits {
    /// CPU budget per call (default: 50 ms of fuel).
    pub cpu: CpuBudget,
    /// Linear memory cap per call in bytes (default 64 MiB).
    pub memory_bytes: usize,
    /// Log lines a plugin may write per call; further lines are dropped (default 64).
    pub log_lines_per_call: u32,
    /// Calls that may run at once (sizes the instance pool; default 64).
    pub concurrent_calls: u32,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            cpu: CpuBudget::Fuel { millis: 50 },
            memory_bytes: 64 << 20,
            log_lines_per_call: 64,
            concurrent_calls: 64,
        }
    }
}

/// Every engine setting that changes compiled code, for `limits`. The compile worker builds
/// its engine from this too (without the pooling allocator, which changes no code), so what it
/// compiles loads in the agent's engine.
pub fn engine_config(limits: &SandboxLimits) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // Every call has a wall-clock deadline (epochs); a fuel budget counts instructions too.
    config.epoch_interruption(true);
    if let CpuBudget::Fuel { .. } = limits.cpu {
        config.consume_fuel(true);
    }
    config
}

/// The engine and the thread that ticks its epoch (the wall-clock ceiling of every call).
pub struct Sandbox {
    engine: Engine,
    limits: SandboxLimits,
    activity: Arc<Activity>,
    ticker: Option<JoinHandle<()>>,
}

/// The calls in flight: the epoch only matters while one runs, so the ticker sleeps when there
/// is none (an idle agent's plugin thread used to wake 500 times a second for nothing).
#[derive(Default)]
struct Activity {
    calls: Mutex<usize>,
    changed: Condvar,
    stop: AtomicBool,
    /// The ticker's `/proc/self/task` entry (tests count its wake-ups).
    #[cfg(test)]
    task: std::sync::OnceLock<std::path::PathBuf>,
}

/// One call in flight (held by its store): the ticker runs while any exists.
struct ActiveCall(Arc<Activity>);

impl ActiveCall {
    fn start(activity: &Arc<Activity>) -> Self {
        let mut calls = activity.calls.lock().unwrap_or_else(|p| p.into_inner());
        *calls += 1;
        if *calls == 1 {
            activity.changed.notify_all();
        }
        Self(Arc::clone(activity))
    }
}

impl Drop for ActiveCall {
    fn drop(&mut self) {
        let mut calls = self.0.calls.lock().unwrap_or_else(|p| p.into_inner());
        *calls = calls.saturating_sub(1);
    }
}

impl Sandbox {
    /// Builds the engine for `limits`.
    pub fn new(limits: SandboxLimits) -> Result<Self, RuntimeError> {
        if limits.cpu.millis() == 0 {
            return Err(RuntimeError::Config("the CPU budget per call must be at least 1 ms".into()));
        }
        if limits.memory_bytes < (1 << 20) {
            return Err(RuntimeError::Config("the memory cap per call must be at least 1 MiB".into()));
        }
        let mut config = engine_config(&limits);
        let slots = limits.concurrent_calls.max(1);
        let mut pool = PoolingAllocationConfig::default();
        // A Rust plugin is 1–3 core instances; a Python one (componentize-py: the interpreter,
        // libc, its adapters) 38, a JavaScript one 3. Slots for core instances are address
        // space, not memory, until used.
        pool.total_component_instances(slots)
            .total_core_instances(slots * CORE_INSTANCES_PER_COMPONENT)
            .total_memories(slots * 2)
            .total_tables(slots * 4)
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(2)
            .max_tables_per_component(8)
            .max_memory_size(limits.memory_bytes)
            .linear_memory_keep_resident(keep_resident())
            .table_keep_resident(KEEP_RESIDENT)
            .pagemap_scan(Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| RuntimeError::Config(format!("wasmtime engine: {e:#}")))?;
        let activity = Arc::new(Activity::default());
        let ticker = Some(
            spawn_ticker(engine.clone(), Arc::clone(&activity))
                .map_err(|e| RuntimeError::Config(format!("cannot start the plugin epoch thread: {e}")))?,
        );
        Ok(Self { engine, limits, activity, ticker })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> SandboxLimits {
        self.limits
    }

    /// A fresh store for one call of `plugin`, with its budget set.
    pub fn store(&self, plugin: Arc<str>) -> Result<Store<CallState>, wasmtime::Error> {
        let state = CallState {
            plugin,
            memory_cap: self.limits.memory_bytes,
            memory_used: 0,
            table_elements: 0,
            memory_refused: false,
            log_lines_left: self.limits.log_lines_per_call,
            log_dropped: 0,
            host: HostUse::default(),
            _active: Some(ActiveCall::start(&self.activity)),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| state as &mut dyn ResourceLimiter);
        if let CpuBudget::Fuel { millis } = self.limits.cpu {
            store.set_fuel(millis.saturating_mul(FUEL_PER_MS))?;
        }
        store.set_hostcall_fuel(MAX_TRANSFER_BYTES);
        let tick = EPOCH_TICK.as_millis() as u64;
        store.set_epoch_deadline(self.limits.cpu.wall_ceiling_millis().div_ceil(tick));
        store.epoch_deadline_trap();
        Ok(store)
    }

    /// Names what stopped a call: budget, memory, or another trap.
    pub fn classify(&self, state: &CallState, error: &wasmtime::Error) -> (FailureKind, String) {
        let trap = error.downcast_ref::<Trap>();
        match trap {
            Some(Trap::Interrupt) if matches!(self.limits.cpu, CpuBudget::Fuel { .. }) => (
                FailureKind::Timeout,
                format!(
                    "ran past its wall-clock ceiling of {} ms (CPU budget {}, plus time in host calls such as `log`)",
                    self.limits.cpu.wall_ceiling_millis(),
                    self.limits.cpu
                ),
            ),
            Some(Trap::OutOfFuel) | Some(Trap::Interrupt) => {
                (FailureKind::Timeout, format!("used up its CPU budget of {}", self.limits.cpu))
            }
            _ if root_message(error).contains("fuel allocated for hostcalls has been exhausted") => (
                FailureKind::Trap,
                format!(
                    "handed halo more than {} MiB at once (its answer, or one log message); that is the limit per answer",
                    MAX_TRANSFER_BYTES >> 20
                ),
            ),
            _ if state.memory_refused => (
                FailureKind::MemoryExhausted,
                format!("asked for more than its memory cap of {} MiB", state.memory_cap >> 20),
            ),
            Some(Trap::StackOverflow) => (FailureKind::Trap, "stack overflow".into()),
            Some(Trap::MemoryOutOfBounds) => (
                FailureKind::Trap,
                "out-of-bounds memory access (in Rust plugins usually a stack overflow of the plugin's own stack)"
                    .into(),
            ),
            Some(trap) => (FailureKind::Trap, trap.to_string()),
            None => {
                let message = root_message(error);
                match message.split('`').nth(1).filter(|_| message.starts_with("unknown import: `wasi:")) {
                    Some(import) => (
                        FailureKind::Trap,
                        format!(
                            "called {import}, which halo denies: a plugin gets no clock, randomness, files, \
                             environment or network (a Rust panic ends here too: std reads RUST_BACKTRACE)"
                        ),
                    ),
                    None => (FailureKind::Trap, message),
                }
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(handle) = self.ticker.take() {
            self.activity.stop.store(true, Ordering::Relaxed);
            {
                let _calls = self.activity.calls.lock().unwrap_or_else(|p| p.into_inner());
                self.activity.changed.notify_all();
            }
            let _ = handle.join();
        }
    }
}

/// Advances the epoch every [`EPOCH_TICK`] while a call is in flight; waits otherwise. A
/// call's deadline counts ticks from its store's creation, so a pause while no call runs
/// shortens no call's ceiling.
fn spawn_ticker(engine: Engine, activity: Arc<Activity>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("halo-plugin-epoch".into()).spawn(move || {
        #[cfg(test)]
        if let Ok(me) = std::fs::read_link("/proc/thread-self") {
            let _ = activity.task.set(std::path::Path::new("/proc").join(me));
        }
        loop {
            {
                let mut calls = activity.calls.lock().unwrap_or_else(|p| p.into_inner());
                while *calls == 0 && !activity.stop.load(Ordering::Relaxed) {
                    calls = activity.changed.wait(calls).unwrap_or_else(|p| p.into_inner());
                }
            }
            if activity.stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(EPOCH_TICK);
            engine.increment_epoch();
        }
    })
}

/// The deepest cause of an error, on one line.
/// The first line of each cause that says something (wasmtime's outer layer is only the
/// backtrace header).
fn root_message(error: &wasmtime::Error) -> String {
    let parts: Vec<String> = error
        .chain()
        .map(|cause| cause.to_string().lines().next().unwrap_or_default().trim().to_string())
        .filter(|line| !line.is_empty() && !line.starts_with("error while executing at wasm backtrace"))
        .collect();
    let text = if parts.is_empty() { "trap without a message".to_string() } else { parts.join(": ") };
    text.chars().take(400).collect()
}

/// What one call's store holds.
pub struct CallState {
    plugin: Arc<str>,
    memory_cap: usize,
    /// Bytes of every linear memory of the call together (the cap is for all of them).
    memory_used: usize,
    /// Elements of every table of the call together.
    table_elements: usize,
    memory_refused: bool,
    log_lines_left: u32,
    log_dropped: u32,
    host: HostUse,
    /// Keeps the epoch ticking while this call's store lives.
    _active: Option<ActiveCall>,
}

/// What a call's host calls cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostUse {
    /// Calls the plugin made into halo.
    pub calls: u64,
    /// Time halo spent in them (measured).
    pub time: Duration,
    /// Fuel charged for them ([`HOST_CALL_FUEL`] per call, [`HOST_BYTE_FUEL`] per byte read).
    pub fuel: u64,
}

impl CallState {
    /// Log lines the plugin wrote past its per-call allowance.
    pub fn log_dropped(&self) -> u32 {
        self.log_dropped
    }

    /// What the call's host calls cost so far.
    pub fn host_use(&self) -> HostUse {
        self.host
    }
}

impl ResourceLimiter for CallState {
    /// The cap counts all of a call's memories together: a component with two memories gets
    /// no more than one with one.
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.memory_used.saturating_sub(current).saturating_add(desired);
        if total > self.memory_cap {
            self.memory_refused = true;
            return Ok(false);
        }
        self.memory_used = total;
        Ok(true)
    }

    /// At most [`MAX_TABLE_ELEMENTS`] elements in all of a call's tables together.
    fn table_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.table_elements.saturating_sub(current).saturating_add(desired);
        if total > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.table_elements = total;
        Ok(true)
    }
}

/// Table elements a call may have in all its tables together.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Longest log line kept from a plugin.
const MAX_LOG_LINE: usize = 1024;

/// At most `max` characters of a plugin's text on one line (escapes included): control characters (newlines,
/// carriage returns, terminal escapes) are written as escapes, so a plugin can neither forge a
/// log line nor drive an operator's terminal.
pub fn one_clean_line(text: &str, max: usize) -> String {
    let mut line = String::with_capacity(text.len().min(max));
    let mut kept = 0;
    for c in text.chars() {
        let escaped = c.is_control().then(|| c.escape_default());
        let width = escaped.clone().map_or(1, Iterator::count);
        if kept + width > max {
            break;
        }
        kept += width;
        match escaped {
            Some(escape) => line.extend(escape),
            None => line.push(c),
        }
    }
    line
}

/// The `log` import, under any compatible contract version. The message arrives as a
/// [`WasmStr`], a view into the plugin's memory: nothing is copied, a line past the allowance
/// is not even read, and at most [`MAX_LOG_LINE`] characters of a kept one reach the log.
/// Every call is charged fuel ([`HOST_CALL_FUEL`], plus [`HOST_BYTE_FUEL`] per byte read), so
/// time spent in the host counts against the call's budget like the plugin's own.
pub fn log_import(
    mut store: StoreContextMut<'_, CallState>,
    (level, message): (log::Level, WasmStr),
) -> wasmtime::Result<()> {
    let started = Instant::now();
    let mut read = 0_u64;
    if store.data().log_lines_left == 0 {
        store.data_mut().log_dropped = store.data().log_dropped.saturating_add(1);
    } else {
        let line = {
            let text = message.to_str(&store)?;
            read = text.len() as u64;
            one_clean_line(&text, MAX_LOG_LINE)
        };
        let state = store.data_mut();
        state.log_lines_left -= 1;
        let plugin = &*state.plugin;
        match level {
            log::Level::Debug => tracing::debug!(plugin, "{line}"),
            log::Level::Info => tracing::info!(plugin, "{line}"),
            log::Level::Warn => tracing::warn!(plugin, "{line}"),
            log::Level::Error => tracing::error!(plugin, "{line}"),
        }
    }
    let charge = HOST_CALL_FUEL.saturating_add(read.saturating_mul(HOST_BYTE_FUEL));
    // Without fuel (an epoch budget) the wall-clock deadline covers host time by itself.
    if let Ok(left) = store.get_fuel() {
        store.set_fuel(left.saturating_sub(charge))?;
    }
    let host = &mut store.data_mut().host;
    host.calls += 1;
    host.fuel = host.fuel.saturating_add(charge);
    host.time += started.elapsed();
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use wasmtime::ResourceLimiter;

    use super::{CallState, CpuBudget, Sandbox, SandboxLimits, one_clean_line};

    /// How often the epoch thread of `sandbox` has woken so far.
    fn ticker_wakeups(sandbox: &Sandbox) -> u64 {
        let task = sandbox.activity.task.get().expect("the ticker noted its task");
        let status = std::fs::read_to_string(task.join("status")).expect("its status");
        status
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    }

    #[test]
    fn the_epoch_ticks_only_while_a_call_is_in_flight() {
        let limits = SandboxLimits { cpu: CpuBudget::Epoch { millis: 50 }, ..SandboxLimits::default() };
        let sandbox = Sandbox::new(limits).expect("sandbox");
        let pause = std::time::Duration::from_millis(200);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let idle = ticker_wakeups(&sandbox);
        std::thread::sleep(pause);
        let after_idle = ticker_wakeups(&sandbox);
        assert!(after_idle - idle <= 2, "idle: {} wake-ups in 200 ms", after_idle - idle);
        let store = sandbox.store(Arc::from("p.wasm")).expect("store");
        std::thread::sleep(pause);
        let during = ticker_wakeups(&sandbox);
        // One tick every 2 ms: about 100 in 200 ms, however loaded the machine.
        assert!(during - after_idle >= 20, "a call in flight: only {} wake-ups in 200 ms", during - after_idle);
        drop(store);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let done = ticker_wakeups(&sandbox);
        std::thread::sleep(pause);
        assert!(ticker_wakeups(&sandbox) - done <= 2, "idle again after the call");
    }

    #[test]
    fn the_memory_cap_counts_every_memory_of_a_call_together() {
        let mib = 1 << 20;
        let mut state = CallState {
            plugin: Arc::from("two-memories.wasm"),
            memory_cap: 64 * mib,
            memory_used: 0,
            table_elements: 0,
            memory_refused: false,
            log_lines_left: 0,
            log_dropped: 0,
            host: super::HostUse::default(),
            _active: None,
        };
        // Two memories of 40 MiB each: the second is refused, though each alone fits.
        assert!(state.memory_growing(0, 40 * mib, None).expect("answer"));
        assert!(!state.memory_growing(0, 40 * mib, None).expect("answer"));
        assert!(state.memory_refused);
        // The first growing further within the cap is fine; what the second holds counts.
        assert!(state.memory_growing(40 * mib, 60 * mib, None).expect("answer"));
        assert!(state.memory_growing(0, 4 * mib, None).expect("answer"));
        assert!(!state.memory_growing(4 * mib, 5 * mib, None).expect("answer"));
        // Tables likewise.
        assert!(state.table_growing(0, 60_000, None).expect("answer"));
        assert!(!state.table_growing(0, 60_000, None).expect("answer"));
    }

    #[test]
    fn plugin_text_stays_on_one_line_without_terminal_escapes() {
        let forged = "placed\n2026-12-03T00:00:00Z ERROR halo: host-1 fences itself\r\u{1b}[2J";
        let clean = one_clean_line(forged, 1024);
        assert!(!clean.chars().any(char::is_control), "{clean:?}");
        assert!(clean.starts_with("placed\\n2026") && clean.contains("\\u{1b}[2J"), "{clean}");
        assert_eq!(one_clean_line("héllo wörld", 5), "héllo", "cut by characters, not bytes");
        assert_eq!(one_clean_line("a\nb", 3), "a\\n", "the escapes count towards the bound");
        assert_eq!(one_clean_line("a\nb", 2), "a", "an escape is never cut in half");
    }
}
