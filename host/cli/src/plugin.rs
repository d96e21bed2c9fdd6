//! `halo plugin check|run|bench`: the plugin author's test harness.
//!
//! `check` loads a plugin the way the agent does and prints what it is; `run` makes one
//! decision from a JSON input (the WIT types, field names in kebab-case) and prints the
//! validated answer; `bench` measures calls per second. Every failure (not a component,
//! wrong world or version, trap, timeout, memory, invalid answer) is one clear line and a
//! non-zero exit.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use halo_agent::decisions::{DecisionWorld, Recorded};
use halo_plugin_runtime::replay::{Differ, Verdict};
use halo_plugin_runtime::{
    Balancing, ChildCompiler, CompileLimits, CompilePlace, CompiledPlugin, CpuBudget, Isolation, LoadedPlugin,
    Placement, PluginInfo, PolicyWorld, RestartOrder, Runtime, SandboxLimits,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

/// Plugin subcommands.
#[derive(Subcommand)]
pub enum PluginCommand {
    /// Load a plugin as the agent would and print its world, contract version, exports, size and load time.
    Check {
        /// The plugin (.wasm component).
        file: PathBuf,
        #[command(flatten)]
        opts: Opts,
    },
    /// Run one decision on a JSON input and print the validated answer as JSON.
    Run {
        /// The plugin (.wasm component).
        file: PathBuf,
        /// The input, as JSON in the plugin's WIT types.
        #[arg(long)]
        input: PathBuf,
        /// Run the agent's built-in policy on the input instead of FILE's (same answer as the default plugins).
        #[arg(long)]
        builtin: bool,
        #[command(flatten)]
        opts: Opts,
    },
    /// Measure calls per second and per-call latency on a JSON input.
    Bench {
        /// The plugin (.wasm component).
        file: PathBuf,
        /// The input, as JSON in the plugin's WIT types.
        #[arg(long)]
        input: PathBuf,
        /// Stop after this many calls.
        #[arg(long, default_value_t = 100_000)]
        iterations: u64,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        #[command(flatten)]
        opts: Opts,
    },
    /// Run a candidate plugin on recorded decisions (`[plugins] decisions-dir`) and print, per
    /// decision, same / different (and how) / invalid / failed, then a summary. Exits 1 when any
    /// answer was invalid or failed.
    Replay {
        /// The candidate plugin (.wasm component).
        file: PathBuf,
        /// The directory of decision records (an agent's `decisions-dir`, or a copy of it).
        #[arg(long)]
        records: PathBuf,
        #[command(flatten)]
        opts: Opts,
    },
    /// Put the shadow candidate of a decision point in force on the running agents (this
    /// host's and its peers'), until they restart.
    Promote {
        /// The decision point: isolation, placement, restart-order, balancing.
        world: String,
        #[command(flatten)]
        api: crate::ops::ApiArgs,
    },
    /// Make the running agents load their plugin files again now (this host's and its peers').
    Reload {
        #[command(flatten)]
        api: crate::ops::ApiArgs,
    },
    /// Internal: the compile worker halo starts to compile a plugin under time and memory limits.
    #[command(hide = true)]
    CompileWorker {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// Options shared by the plugin subcommands.
#[derive(Args, Clone)]
pub struct Opts {
    /// The world to load the plugin as (default: the one it exports).
    #[arg(long, value_enum)]
    world: Option<World>,
    /// CPU budget per call in milliseconds.
    #[arg(long, default_value_t = 50)]
    cpu_ms: u64,
    /// How the CPU budget is enforced: fuel (deterministic) or epoch (wall clock).
    #[arg(long, value_enum, default_value_t = BudgetKind::Fuel)]
    budget: BudgetKind,
    /// Memory cap per call in MiB.
    #[arg(long, default_value_t = 64)]
    memory_mib: usize,
    /// Cache compiled plugins in this directory (AOT).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Wall-clock limit of compiling the plugin, in seconds (it compiles in a child process).
    #[arg(long, default_value_t = 60)]
    compile_timeout_s: u64,
    /// Memory limit of compiling the plugin, in MiB.
    #[arg(long, default_value_t = 2048)]
    compile_memory_mib: u64,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum World {
    #[value(name = "isolation-policy")]
    Isolation,
    #[value(name = "placement-engine")]
    Placement,
    #[value(name = "restart-policy")]
    Restart,
    #[value(name = "balancing-policy")]
    Balancing,
}

#[derive(Clone, Copy, ValueEnum)]
enum BudgetKind {
    Fuel,
    Epoch,
}

impl Opts {
    fn runtime(&self) -> anyhow::Result<Runtime> {
        if self.memory_mib == 0 || self.memory_mib > 4096 {
            bail!("--memory-mib must be between 1 and 4096, not {}", self.memory_mib);
        }
        let millis = self.cpu_ms;
        let cpu = match self.budget {
            BudgetKind::Fuel => CpuBudget::Fuel { millis },
            BudgetKind::Epoch => CpuBudget::Epoch { millis },
        };
        if !(1..=3600).contains(&self.compile_timeout_s) {
            bail!("--compile-timeout-s must be between 1 and 3600, not {}", self.compile_timeout_s);
        }
        if !(256..=65_536).contains(&self.compile_memory_mib) {
            bail!("--compile-memory-mib must be between 256 and 65536, not {}", self.compile_memory_mib);
        }
        let limits = SandboxLimits { cpu, memory_bytes: self.memory_mib << 20, ..SandboxLimits::default() };
        let compile = CompileLimits {
            deadline: Duration::from_secs(self.compile_timeout_s),
            memory_bytes: self.compile_memory_mib << 20,
        };
        Ok(Runtime::new(limits, self.cache_dir.as_deref())?.compile_at(child_compiler(compile)?))
    }
}

/// Plugins are compiled in a child process of this same executable, under `limits`.
pub fn child_compiler(limits: CompileLimits) -> anyhow::Result<CompilePlace> {
    let child = ChildCompiler::this_executable(&halo_plugin_runtime::compile::HALO_WORKER_ARGS, limits)
        .context("cannot find this executable to compile plugins in a child process")?;
    Ok(CompilePlace::Child(child))
}

/// Runs a plugin subcommand.
pub fn run(command: PluginCommand) -> anyhow::Result<ExitCode> {
    let (file, opts) = match &command {
        PluginCommand::Reload { api } => return crate::ops::reload(api),
        PluginCommand::Promote { world, api } => return crate::ops::promote(api, world),
        PluginCommand::CompileWorker { args } => {
            return Ok(match halo_plugin_runtime::compile_worker(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(why) => {
                    eprintln!("{why}");
                    ExitCode::from(1)
                }
            });
        }
        PluginCommand::Check { file, opts }
        | PluginCommand::Replay { file, opts, .. }
        | PluginCommand::Run { file, opts, .. }
        | PluginCommand::Bench { file, opts, .. } => (file.clone(), opts.clone()),
    };
    let runtime = opts.runtime()?;
    // Compiled once; the world is read from its exports unless given.
    let compiled = runtime.compile(&file)?;
    let world = match opts.world {
        Some(world) => world,
        None => detect_world(&compiled, &file)?,
    };
    match world {
        World::Isolation => run_world::<Isolation>(&runtime, compiled, command),
        World::Placement => run_world::<Placement>(&runtime, compiled, command),
        World::Restart => run_world::<RestartOrder>(&runtime, compiled, command),
        World::Balancing => run_world::<Balancing>(&runtime, compiled, command),
    }
}

/// The world a plugin exports, from its export names; an error names what it exports.
fn detect_world(compiled: &CompiledPlugin, file: &Path) -> anyhow::Result<World> {
    let exports = compiled.exports();
    let exports_interface =
        |interface: &str| exports.iter().any(|e| e.starts_with(&format!("halo:policy/{interface}@")));
    let worlds = [
        (World::Isolation, Isolation::INTERFACES),
        (World::Placement, Placement::INTERFACES),
        (World::Restart, RestartOrder::INTERFACES),
        (World::Balancing, Balancing::INTERFACES),
    ];
    let known: Vec<String> =
        worlds.iter().flat_map(|(_, interfaces)| interfaces.iter().map(|i| format!("halo:policy/{i}"))).collect();
    worlds
        .into_iter()
        .find(|(_, interfaces)| interfaces.iter().any(|i| exports_interface(i)))
        .map(|(world, _)| world)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "plugin {} exports {}; a halo plugin exports one of {}",
                file.display(),
                if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") },
                known.join(", ")
            )
        })
}

/// A world's input and acted-on answer in a decision record.
trait FromRecord: PolicyWorld {
    /// The decision point's name in records.
    const RECORDED: DecisionWorld;
    /// The input and the answer, if `record` is of this world.
    fn take(record: &Recorded) -> Option<(&Self::Input, &Self::Answer)>;
}

impl FromRecord for Isolation {
    const RECORDED: DecisionWorld = DecisionWorld::Isolation;
    fn take(record: &Recorded) -> Option<(&Self::Input, &Self::Answer)> {
        match record {
            Recorded::Isolation { input, answer } => Some((input, answer)),
            _ => None,
        }
    }
}

impl FromRecord for Placement {
    const RECORDED: DecisionWorld = DecisionWorld::Placement;
    fn take(record: &Recorded) -> Option<(&Self::Input, &Self::Answer)> {
        match record {
            Recorded::Placement { input, answer } => Some((input, answer)),
            _ => None,
        }
    }
}

impl FromRecord for RestartOrder {
    const RECORDED: DecisionWorld = DecisionWorld::RestartOrder;
    fn take(record: &Recorded) -> Option<(&Self::Input, &Self::Answer)> {
        match record {
            Recorded::RestartOrder { input, answer } => Some((input, answer)),
            _ => None,
        }
    }
}

impl FromRecord for Balancing {
    const RECORDED: DecisionWorld = DecisionWorld::Balancing;
    fn take(record: &Recorded) -> Option<(&Self::Input, &Self::Answer)> {
        match record {
            Recorded::Balancing { input, answer } => Some((input, answer)),
            _ => None,
        }
    }
}

/// `halo plugin replay`: the candidate on every recorded decision of its world.
fn replay<W: FromRecord>(runtime: &Runtime, compiled: CompiledPlugin, records: &Path) -> anyhow::Result<ExitCode>
where
    W::Answer: Differ,
{
    if !records.is_dir() {
        bail!("--records {}: not a directory (an agent's [plugins] decisions-dir)", records.display());
    }
    let read = halo_agent::decisions::read_records(records)
        .map_err(|e| anyhow::anyhow!("--records {}: {e}", records.display()))?;
    let (all, bad) = (read.records, read.bad);
    for b in &bad {
        eprintln!("warning: {}: not a decision record ({}); skipped", b.place, b.error);
    }
    let plugin = runtime.prepare::<W>(compiled)?;
    let name = plugin.info().name.to_string();
    let mut tally: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut seen = 0;
    for record in &all {
        let Some((input, answer)) = W::take(&record.decision) else { continue };
        seen += 1;
        let decision = runtime.decide(Some(&plugin), input);
        let verdict = Verdict::of(&decision, answer);
        *tally.entry(verdict.name()).or_default() += 1;
        let detail = match &verdict {
            Verdict::Same => String::new(),
            Verdict::Different(d) | Verdict::Invalid(d) | Verdict::Failed(d) => format!(": {d}"),
        };
        outln!(
            "decision {} of {} (run {}, {} ms, decided by {}): {}{detail}",
            record.id,
            record.node,
            record.run,
            record.unix_ms,
            record.decided_by,
            verdict.name(),
        );
    }
    if seen == 0 {
        bail!(
            "no recorded {} decisions in {} ({} records of other decision points); nothing to replay {name} on",
            W::RECORDED.name(),
            records.display(),
            all.len()
        );
    }
    let count = |v: &str| tally.get(v).copied().unwrap_or(0);
    outln!(
        "{name} on {seen} recorded {} decision(s): {} same, {} different, {} invalid, {} failed{}",
        W::RECORDED.name(),
        count("same"),
        count("different"),
        count("invalid"),
        count("failed"),
        if read.repeats.is_empty() {
            String::new()
        } else {
            format!(" ({} repeats of an unchanged decision not run again)", read.repeats.len())
        }
    );
    Ok(if count("invalid") + count("failed") > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn run_world<W>(runtime: &Runtime, compiled: CompiledPlugin, command: PluginCommand) -> anyhow::Result<ExitCode>
where
    W: PolicyWorld + FromRecord,
    W::Input: DeserializeOwned,
    W::Answer: Serialize + Differ,
{
    match command {
        PluginCommand::Reload { .. } | PluginCommand::Promote { .. } | PluginCommand::CompileWorker { .. } => {
            unreachable!("handled before the plugin is loaded")
        }
        PluginCommand::Replay { records, .. } => replay::<W>(runtime, compiled, &records),
        PluginCommand::Check { .. } => {
            let plugin = runtime.prepare::<W>(compiled)?;
            print_info(plugin.info(), runtime);
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Run { input, builtin, .. } => {
            let input: W::Input = read_input::<W>(&input)?;
            if builtin {
                let (answer, problems) = W::fallback(&input);
                for problem in problems {
                    eprintln!("warning: {problem} (default used)");
                }
                outln!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(ExitCode::SUCCESS);
            }
            let plugin = runtime.prepare::<W>(compiled)?;
            match runtime.call(&plugin, &input) {
                Ok(answer) => {
                    outln!("{}", serde_json::to_string_pretty(&answer)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(failure) => {
                    eprintln!("error: plugin `{}` {} — {}", failure.plugin, failure.kind.as_str(), failure.detail);
                    eprintln!("(in the agent, the built-in policy would decide instead and an alert would be raised)");
                    Ok(ExitCode::from(3))
                }
            }
        }
        PluginCommand::Bench { input, iterations, seconds, .. } => {
            let input: W::Input = read_input::<W>(&input)?;
            let plugin = runtime.prepare::<W>(compiled)?;
            bench(runtime, &plugin, &input, iterations, seconds)
        }
    }
}

/// The largest input file `halo plugin run|bench` reads.
const MAX_INPUT_BYTES: u64 = 256 << 20;

fn read_input<W: PolicyWorld>(path: &Path) -> anyhow::Result<W::Input>
where
    W::Input: DeserializeOwned,
{
    // A regular file, read with a bound (a FIFO or /dev/zero is refused at once).
    let bytes = halo_plugin_runtime::read_bounded(path, MAX_INPUT_BYTES)
        .with_context(|| format!("cannot read input {} (at most {MAX_INPUT_BYTES} bytes)", path.display()))?;
    let text = String::from_utf8(bytes).with_context(|| format!("input {} is not UTF-8 text", path.display()))?;
    let input: W::Input = serde_json::from_str(&text)
        .with_context(|| format!("input {} is not a valid {} input", path.display(), W::WORLD))?;
    W::check_input(&input).with_context(|| format!("input {}", path.display()))?;
    Ok(input)
}

fn print_info(info: &PluginInfo, runtime: &Runtime) {
    outln!("plugin:     {}", info.path.display());
    outln!("world:      halo:policy/{}", info.world);
    outln!("export:     {}", info.export);
    let version = info.export.rsplit('@').next().unwrap_or_default();
    outln!("contract:   {version} (this agent speaks {})", halo_plugin_runtime::CONTRACT_VERSION);
    outln!("exports:    {}", info.exports.join(", "));
    outln!("wasi:       {} imports, all denied (calling one traps)", info.denied_imports.len());
    outln!("size:       {} bytes", info.size);
    outln!("code:       {}", info.complexity);
    outln!("sha256:     {}", info.sha256);
    outln!(
        "load time:  {:.1} ms{}",
        info.load_time.as_secs_f64() * 1e3,
        if info.from_cache { " (from the AOT cache)" } else { "" }
    );
    let limits = runtime.limits();
    outln!("limits:     CPU {}, memory {} MiB per call", limits.cpu, limits.memory_bytes >> 20);
}

fn bench<W: PolicyWorld>(
    runtime: &Runtime,
    plugin: &LoadedPlugin<W>,
    input: &W::Input,
    iterations: u64,
    seconds: f64,
) -> anyhow::Result<ExitCode> {
    if !(seconds > 0.0 && seconds <= 3600.0) {
        bail!("--seconds must be between 0 and 3600");
    }
    let limit = Duration::from_secs_f64(seconds);
    // One call first: a failing plugin is reported, not benchmarked.
    if let Err(failure) = runtime.call(plugin, input) {
        bail!("{failure}");
    }
    let mut samples: Vec<Duration> = Vec::new();
    let mut usage = Vec::new();
    let started = Instant::now();
    while (samples.len() as u64) < iterations.max(1) && started.elapsed() < limit {
        let t = Instant::now();
        let (answer, used) = runtime.call_measured(plugin, input);
        answer.map_err(|f| anyhow::anyhow!("{f}"))?;
        samples.push(t.elapsed());
        usage.push(used);
    }
    let total = started.elapsed();
    samples.sort();
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    outln!("plugin:        {} ({})", plugin.info().name, plugin.info().world);
    outln!("calls:         {} in {:.2} s", samples.len(), total.as_secs_f64());
    outln!("calls/s:       {:.0}", samples.len() as f64 / total.as_secs_f64());
    outln!(
        "latency:       min {:?}  p50 {:?}  p99 {:?}  max {:?}",
        samples[0],
        pct(0.5),
        pct(0.99),
        samples[samples.len() - 1]
    );
    // Host calls (`log`) are charged against the budget like the plugin's own instructions.
    let n = usage.len().max(1) as u64;
    let host_calls = usage.iter().map(|u| u.host.calls).sum::<u64>() / n;
    let host_time = usage.iter().map(|u| u.host.time).sum::<Duration>() / n as u32;
    let host_fuel = usage.iter().map(|u| u.host.fuel).sum::<u64>() / n;
    let dropped = usage.iter().map(|u| u64::from(u.log_dropped)).sum::<u64>() / n;
    outln!(
        "host calls:    {host_calls} per call (log; {dropped} over the line allowance), host time {host_time:?} per call, charged {host_fuel} units of fuel"
    );
    let budget = runtime.limits().cpu;
    match usage.iter().map(|u| u.fuel).collect::<Option<Vec<u64>>>() {
        Some(fuel) => {
            let mean = fuel.iter().sum::<u64>() / n;
            let granted = budget.millis().saturating_mul(halo_plugin_runtime::sandbox::FUEL_PER_MS);
            outln!(
                "budget used:   {mean} units of fuel per call, host calls included ({:.1} % of {budget})",
                mean as f64 * 100.0 / granted.max(1) as f64
            );
        }
        None => outln!("budget used:   {budget}; host time counts against the deadline"),
    }
    outln!("(each call: fresh store and instance, input converted, answer validated)");
    Ok(ExitCode::SUCCESS)
}
