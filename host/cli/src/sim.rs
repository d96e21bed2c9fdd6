//! `halo sim` and `halo demo`: the deterministic simulator from the command line.
//!
//! `sim` runs one seeded schedule and prints its timeline, or many and prints a summary;
//! `demo` runs a scripted cluster with the real default plugins loaded through the plugin
//! runtime, and tells a newcomer what halo does. Both exit non-zero when an invariant broke.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use halo_core::{BuiltinPolicies, ClusterConfig, Policies};
use halo_plugin_runtime::{PluginFiles, PluginPolicies, Runtime, SandboxLimits, StatsSnapshot};
use halo_sim::scenario::{Backend, cluster, demo_cluster, random_case_on};
use halo_sim::{Fault, FaultKind, Millis, Outcome, Schedule, Sim, SimOptions, percentiles};
use serde::Serialize;

/// `halo sim`.
#[derive(Args)]
pub struct SimArgs {
    /// Run this seed and print its timeline.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run the seeds A..B (B excluded) and print a summary.
    #[arg(long, value_name = "A..B")]
    seeds: Option<String>,
    /// Hosts (default: 3–16, drawn from the seed).
    #[arg(long)]
    hosts: Option<usize>,
    /// VMs (default: 2–5 per host, drawn from the seed).
    #[arg(long)]
    vms: Option<usize>,
    /// Simulated run length, e.g. 200s or 5m.
    #[arg(long, default_value = "200s", value_parser = parse_millis)]
    duration: Millis,
    /// Fault families the random schedule draws from (comma-separated; the default is every
    /// family, as the tests and CI draw them, so a seed they name replays here).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "crash,agent,isolate,partition,link,oneway,loss,datastore,dscut,vmcrash,pause,freeze,maint,migrate,stop,priority,haoff,outside,fence,balance"
    )]
    faults: Vec<String>,
    /// Worker threads for --seeds (default: one per core). With --plugins the seeds run on
    /// one thread (one set of plugins).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: Option<u16>,
    /// Simulate hosts without a watchdog: a paused agent or a frozen host is never reset and
    /// resumes where it stopped (what the lab's `--no-watchdog` runs).
    #[arg(long)]
    no_watchdog: bool,
    /// An exact fault instead of a random schedule (repeatable): KIND:ARGS@START[/DURATION],
    /// e.g. crash:host-2@10s/60s, isolate:host-3@20s, partition:host-1+host-2@30s/40s.
    #[arg(long = "fault", value_name = "SPEC")]
    fault: Vec<Fault>,
    /// Keep routine events (heartbeat verdicts, every step) in the timeline.
    #[arg(long)]
    verbose: bool,
    /// Print the signals behind each verdict.
    #[arg(long)]
    traces: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Decide with the plugins in this directory (the default plugins' file names) instead
    /// of the built-in policies.
    #[arg(long, value_name = "DIR")]
    plugins: Option<PathBuf>,
    /// Start from the conservative timeouts (1 s heartbeats, 12 s dead-time; what the tests
    /// run for seeds from 10,000 on) instead of the defaults; --timeout still applies.
    #[arg(long)]
    conservative: bool,
    /// Set a timeout of the simulated cluster (repeatable), as in halo.toml's [timeouts]:
    /// e.g. `--timeout heartbeat-interval-ms=250 --timeout dead-time-ms=3000`.
    #[arg(long = "timeout", value_name = "KEY=MS")]
    timeouts: Vec<String>,
    /// The coordination backend: `datastore` (claims on the datastore `ds1`) or `etcd` (claims
    /// on a simulated etcd beside `ds1`, which the storage faults also hit; what the tests run
    /// for seeds from 20,000 on).
    #[arg(long, default_value = "datastore")]
    backend: Backend,
}

/// Applies `KEY=MS` settings to the timeouts (keys and checks as in the config file).
fn apply_timeouts(config: &mut ClusterConfig, settings: &[String]) -> anyhow::Result<()> {
    if settings.is_empty() {
        return Ok(());
    }
    let mut value = serde_json::to_value(config.timeouts)?;
    for setting in settings {
        let (key, ms) = setting.split_once('=').with_context(|| format!("--timeout `{setting}`: write KEY=MS"))?;
        let ms: u64 =
            ms.trim().parse().with_context(|| format!("--timeout `{setting}`: `{ms}` is not a number of ms"))?;
        value[key.trim()] = serde_json::json!(ms);
    }
    config.timeouts = serde_json::from_value(value).map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
    config.validate().map_err(|e| anyhow::anyhow!("{e}"))
}

/// `halo demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Where the default plugins are (default: next to the halo binary's build, then
    /// /usr/lib/halo/plugins).
    #[arg(long, value_name = "DIR")]
    plugins: Option<PathBuf>,
    /// Use the built-in policies instead of the plugins.
    #[arg(long, conflicts_with = "plugins")]
    builtin: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_millis(text: &str) -> Result<Millis, String> {
    halo_sim::parse_duration(text)
        .filter(|&ms| ms > 0)
        .ok_or_else(|| format!("`{text}` is not a positive time like 200s, 5m or 1500ms"))
}

const PLUGIN_FILES: [&str; 4] = [
    "halo_plugin_isolation.wasm",
    "halo_plugin_placement.wasm",
    "halo_plugin_restart_order.wasm",
    "halo_plugin_balancing.wasm",
];

/// The default plugins' directory: the given one, else the build tree next to this binary
/// (`target/release/halo` → `target/wasm32-wasip2/plugin`), else the installed one.
fn plugin_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir.to_path_buf());
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(target) = exe.parent().and_then(Path::parent)
    {
        candidates.push(target.join("wasm32-wasip2/plugin"));
    }
    candidates.push(PathBuf::from("/usr/lib/halo/plugins"));
    candidates.iter().find(|d| PLUGIN_FILES.iter().all(|f| d.join(f).is_file())).cloned().with_context(|| {
        format!(
            "the default plugins were not found in {}; build them with `cargo xtask plugins`, pass --plugins DIR, or use --builtin",
            candidates.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" or ")
        )
    })
}

fn load_plugins(dir: &Path) -> anyhow::Result<PluginPolicies> {
    for file in PLUGIN_FILES {
        if !dir.join(file).is_file() {
            bail!("{} is missing (build the default plugins with `cargo xtask plugins`)", dir.join(file).display());
        }
    }
    let compile = crate::plugin::child_compiler(halo_plugin_runtime::CompileLimits::default())?;
    let runtime = Arc::new(Runtime::new(SandboxLimits::default(), None)?.compile_at(compile));
    let files = PluginFiles {
        isolation: Some(&dir.join(PLUGIN_FILES[0])),
        placement: Some(&dir.join(PLUGIN_FILES[1])),
        restart_order: Some(&dir.join(PLUGIN_FILES[2])),
        balancing: Some(&dir.join(PLUGIN_FILES[3])),
    };
    // As in the agent: a plugin that does not load leaves the built-in policy in its place.
    let (policies, failed) = PluginPolicies::load_or_builtin(&runtime, files);
    for (world, why) in failed {
        eprintln!("warning: {world}: the plugin did not load, the built-in policy decides instead: {why}");
    }
    Ok(policies)
}

fn parse_range(text: &str) -> anyhow::Result<std::ops::Range<u64>> {
    let (a, b) = text.split_once("..").with_context(|| format!("--seeds `{text}`: write A..B, e.g. 0..2000"))?;
    let a: u64 = a.trim().parse().with_context(|| format!("--seeds `{text}`: `{a}` is not a number"))?;
    let b: u64 = b.trim().parse().with_context(|| format!("--seeds `{text}`: `{b}` is not a number"))?;
    if b <= a {
        bail!("--seeds `{text}`: the range is empty (B must be greater than A)");
    }
    if b - a > 1_000_000 {
        bail!("--seeds `{text}`: at most 1,000,000 seeds per run");
    }
    Ok(a..b)
}

/// Runs `halo sim`.
pub fn sim(args: SimArgs) -> anyhow::Result<ExitCode> {
    for family in &args.faults {
        if !FaultKind::FAMILIES.contains(&family.as_str()) {
            bail!("--faults: unknown family `{family}`; the families are {}", FaultKind::FAMILIES.join(", "));
        }
    }
    if args.hosts.is_some_and(|h| !(1..=1_000).contains(&h)) {
        bail!("--hosts must be between 1 and 1000");
    }
    if args.vms.is_some_and(|v| v > 100_000) {
        bail!("--vms must be at most 100000");
    }
    let mut plugins = match &args.plugins {
        Some(dir) => Some(load_plugins(dir)?),
        None => None,
    };
    let mut builtin = BuiltinPolicies;
    let policies: &mut dyn Policies = match plugins.as_mut() {
        Some(p) => p,
        None => &mut builtin,
    };
    let families: Vec<&str> = args.faults.iter().map(String::as_str).collect();
    match (&args.seeds, args.seed) {
        (Some(range), _) => {
            if !args.fault.is_empty() {
                bail!("--fault runs one schedule: use it with --seed, not --seeds");
            }
            many(&args, parse_range(range)?, &families, policies)
        }
        (None, seed) => one(&args, seed.unwrap_or(1), &families, policies),
    }
}

fn case(args: &SimArgs, seed: u64, families: &[&str]) -> anyhow::Result<(ClusterConfig, Schedule)> {
    let (mut config, schedule) = explicit_or_random(args, seed, families)?;
    if args.conservative {
        config.timeouts = halo_core::Timeouts::CONSERVATIVE;
    }
    apply_timeouts(&mut config, &args.timeouts)?;
    Ok((config, schedule))
}

fn explicit_or_random(args: &SimArgs, seed: u64, families: &[&str]) -> anyhow::Result<(ClusterConfig, Schedule)> {
    if args.fault.is_empty() {
        return Ok(random_case_on(args.backend, seed, args.hosts, args.vms, families, args.duration));
    }
    let hosts = args.hosts.unwrap_or(4);
    let mut config = cluster(hosts, args.vms.unwrap_or(hosts * 3));
    args.backend.apply(&mut config);
    let names = |list: &mut dyn Iterator<Item = String>| list.collect::<Vec<_>>();
    let host_names = names(&mut config.hosts.iter().map(|h| h.name.clone()));
    let vm_names = names(&mut config.vms.iter().map(|v| v.name.clone()));
    let mut faults = args.fault.clone();
    for fault in &faults {
        let unknown = fault.unknown_names(&host_names, &config.networks, &config.datastores, &vm_names);
        if !unknown.is_empty() {
            bail!(
                "--fault {}: no {} in the simulated cluster (hosts host-1..host-{hosts}, networks {}, datastores {}, VMs vm-001..)",
                fault.kind,
                unknown.join(", no "),
                config.networks.join(", "),
                config.datastores.join(", ")
            );
        }
        if fault.at >= args.duration {
            bail!(
                "--fault {}: starts at {} ms, after the run ends (--duration {} ms)",
                fault.kind,
                fault.at,
                args.duration
            );
        }
    }
    faults.sort_by_key(|f| f.at);
    Ok((config, Schedule { faults, ..Schedule::default() }))
}

fn one(args: &SimArgs, seed: u64, families: &[&str], policies: &mut dyn Policies) -> anyhow::Result<ExitCode> {
    let (config, schedule) = case(args, seed, families)?;
    config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let (hosts, vms) = (config.hosts.len(), config.vms.len());
    let mut opts = SimOptions::new(seed, args.duration);
    opts.verbose = args.verbose;
    opts.watchdog = !args.no_watchdog;
    let started = Instant::now();
    let outcome = Sim::new(config, schedule, opts, policies).run();
    let wall = started.elapsed();
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        outln!("seed {seed}: {hosts} hosts, {vms} VMs, {} s simulated", args.duration / 1000);
        for fault in &outcome.schedule.faults {
            outln!("  fault at {:>6.1}s for {:>5.1}s: {}", secs(fault.at), secs(fault.duration), fault.kind);
        }
        outln!();
        crate::write_out(format_args!("{}", outcome.render(args.traces)));
        outln!();
        summary_line(&outcome, wall.as_secs_f64());
    }
    Ok(if outcome.clean() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn secs(ms: Millis) -> f64 {
    ms as f64 / 1000.0
}

fn summary_line(outcome: &Outcome, wall_secs: f64) {
    let latency = percentiles(&outcome.failover_latencies).map_or("no restarts".to_string(), |p| {
        format!("{} restart(s), lost → running p50 {:.1}s, max {:.1}s", p.count, secs(p.p50), secs(p.max))
    });
    outln!("{latency}; {} steps in {:.2}s of CPU", outcome.steps, wall_secs);
    if outcome.clean() {
        outln!("every invariant held (never twice, proof before restart, never evict, every protected VM runs again)");
    }
    for v in outcome.violations.iter().chain(&outcome.liveness_violations) {
        outln!("{v}");
    }
}

#[derive(Serialize)]
struct Summary {
    schedules: u64,
    seconds: f64,
    schedules_per_second: f64,
    safety_violations: Vec<u64>,
    liveness_violations: Vec<u64>,
    failover_latency_ms: Option<halo_sim::Percentiles>,
}

/// One seed's result in a `--seeds` run.
struct SeedResult {
    seed: u64,
    violations: Vec<String>,
    liveness: bool,
    latencies: Vec<Millis>,
}

fn many(
    args: &SimArgs,
    range: std::ops::Range<u64>,
    families: &[&str],
    policies: &mut dyn Policies,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let count = range.end - range.start;
    let run = |seed: u64, policies: &mut dyn Policies| -> anyhow::Result<SeedResult> {
        let (config, schedule) = case(args, seed, families)?;
        let mut opts = SimOptions::new(seed, args.duration);
        opts.watchdog = !args.no_watchdog;
        let outcome = Sim::new(config, schedule, opts, policies).run();
        Ok(SeedResult {
            seed,
            violations: outcome.violations,
            liveness: !outcome.liveness_violations.is_empty(),
            latencies: outcome.failover_latencies,
        })
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = args.jobs.map_or(cores, usize::from).min(count as usize).max(1);
    let mut results: Vec<SeedResult> = if args.plugins.is_some() || jobs == 1 {
        range.map(|seed| run(seed, policies)).collect::<anyhow::Result<_>>()?
    } else {
        // Each seed's run is deterministic whichever thread runs it; the built-in policies
        // hold no state, so every worker has its own.
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..jobs as u64)
                .map(|w| {
                    let (run, range) = (&run, range.clone());
                    scope.spawn(move || {
                        (range.start + w..range.end)
                            .step_by(jobs)
                            .map(|seed| run(seed, &mut BuiltinPolicies))
                            .collect::<anyhow::Result<Vec<_>>>()
                    })
                })
                .collect();
            let mut all = Vec::new();
            for worker in workers {
                all.extend(worker.join().map_err(|_| anyhow::anyhow!("a simulator worker panicked"))??);
            }
            anyhow::Ok(all)
        })?
    };
    results.sort_by_key(|r| r.seed);
    let (mut safety, mut liveness, mut latencies) = (Vec::new(), Vec::new(), Vec::new());
    for result in results {
        if !result.violations.is_empty() {
            safety.push(result.seed);
            if !args.json {
                eprintln!("seed {}: {}", result.seed, result.violations.join("; "));
            }
        }
        if result.liveness {
            liveness.push(result.seed);
        }
        latencies.extend(result.latencies);
    }
    let seconds = started.elapsed().as_secs_f64();
    let summary = Summary {
        schedules: count,
        seconds,
        schedules_per_second: count as f64 / seconds.max(1e-9),
        failover_latency_ms: percentiles(&latencies),
        safety_violations: safety,
        liveness_violations: liveness,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        outln!(
            "{} schedules in {:.1}s ({:.1} schedules/s, {} worker(s))",
            summary.schedules,
            summary.seconds,
            summary.schedules_per_second,
            if args.plugins.is_some() { 1 } else { jobs }
        );
        if let Some(p) = summary.failover_latency_ms {
            outln!(
                "failover (VM lost → running elsewhere): {} restarts, p50 {:.1}s, p95 {:.1}s, max {:.1}s",
                p.count,
                secs(p.p50),
                secs(p.p95),
                secs(p.max)
            );
        }
        outln!("safety violated on {} seed(s): {:?}", summary.safety_violations.len(), summary.safety_violations);
        outln!("liveness violated on {} seed(s): {:?}", summary.liveness_violations.len(), summary.liveness_violations);
        if !summary.safety_violations.is_empty() || !summary.liveness_violations.is_empty() {
            outln!("replay one with: halo sim --seed N");
        }
    }
    let clean = summary.safety_violations.is_empty() && summary.liveness_violations.is_empty();
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The demo's script: (time, fault, duration, what the act shows).
fn demo_script() -> Vec<(Fault, &'static str)> {
    let fault = |spec: &str| spec.parse::<Fault>().expect("the demo's own fault specs are valid");
    vec![
        (
            fault("crash:host-2@15s/30s"),
            "host-2 loses power. The others stop hearing it on both networks, its datastore heartbeat stops, it does not answer ping: after the dead-time it is failed, and its protected VMs are restarted elsewhere, in the restart policy's waves, on the hosts the placement plugin picks. It boots again 30 s later, empty.",
        ),
        (
            fault("isolate:host-3@65s/40s"),
            "host-3 loses both management networks, but still reaches the datastore. It hears no agent and no isolation address: it declares itself isolated and asks the isolation plugin, which powers off its `restart` VMs and records that on the datastore. The master sees the record and restarts them elsewhere; the best-effort VM is left running.",
        ),
        (
            fault("partition:host-1+host-2@125s/30s"),
            "The cluster splits 2|2, both halves still reach the datastore. Each side sees the other's datastore heartbeats: partitioned, not failed. Nothing is restarted and no VM runs twice.",
        ),
    ]
}

#[derive(Serialize)]
struct DemoReport<'a> {
    policies: String,
    config: &'a ClusterConfig,
    outcome: &'a Outcome,
    plugin_calls: Vec<(&'static str, StatsView)>,
}

#[derive(Serialize)]
struct StatsView {
    calls: u64,
    plugin_answers: u64,
    fallbacks: u64,
}

impl From<StatsSnapshot> for StatsView {
    fn from(s: StatsSnapshot) -> Self {
        Self { calls: s.calls, plugin_answers: s.plugin_answers, fallbacks: s.fallbacks }
    }
}

/// Runs `halo demo`.
pub fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let mut plugins = if args.builtin { None } else { Some(load_plugins(&plugin_dir(args.plugins.as_deref())?)?) };
    let policies_text = match &plugins {
        Some(p) => {
            let name = |info: Option<halo_plugin_runtime::PluginInfo>| info.map_or("?".into(), |i| i.name);
            format!(
                "plugins loaded through the plugin runtime (sandboxed WebAssembly): isolation {}, placement {}, restart order {}, balancing {}",
                name(p.isolation.info()),
                name(p.placement.info()),
                name(p.restart_order.info()),
                name(p.balancing.info())
            )
        }
        None => "the built-in policies (native; --builtin)".to_string(),
    };
    let config = demo_cluster();
    config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let script = demo_script();
    let duration = 175_000;
    let mut opts = SimOptions::new(7, duration);
    opts.plan_snapshots = vec![
        (12_000, "before the faults".to_string()),
        (60_000, "after host-2's VMs were restarted (host-2 back, empty)".to_string()),
        (170_000, "at the end".to_string()),
    ];
    let schedule = Schedule { faults: script.iter().map(|(f, _)| f.clone()).collect(), ..Schedule::default() };
    let mut builtin = BuiltinPolicies;
    let policies: &mut dyn Policies = match plugins.as_mut() {
        Some(p) => p,
        None => &mut builtin,
    };
    let started = Instant::now();
    let outcome = Sim::new(config.clone(), schedule, opts, policies).run();
    let wall = started.elapsed();
    let calls = plugins.as_ref().map_or_else(Vec::new, |p| {
        vec![
            ("isolation", p.isolation.stats().into()),
            ("placement", p.placement.stats().into()),
            ("restart-order", p.restart_order.stats().into()),
            ("balancing", p.balancing.stats().into()),
        ]
    });
    if args.json {
        let report = DemoReport { policies: policies_text, config: &config, outcome: &outcome, plugin_calls: calls };
        outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(if outcome.clean() { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    print_demo(&config, &script, &outcome, &policies_text, &calls, wall.as_secs_f64());
    Ok(if outcome.clean() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_demo(
    config: &ClusterConfig,
    script: &[(Fault, &str)],
    outcome: &Outcome,
    policies: &str,
    calls: &[(&str, StatsView)],
    wall_secs: f64,
) {
    outln!("halo demo — a simulated cluster running the real HA core on every host");
    outln!("policies: {policies}");
    let t = config.timeouts;
    outln!(
        "timeouts: heartbeat every {}s on networks {}, dead-time {}s, fence timeout {}s, isolation after {}s\n",
        secs(t.heartbeat_interval_ms),
        config.networks.join(" and "),
        secs(t.dead_time_ms),
        secs(t.fence_timeout_ms),
        secs(t.isolation_time_ms)
    );
    outln!("{:<12} {:<12} {:>5} {:>7}  {:<10} depends on", "VM", "priority", "order", "memory", "starts on");
    let n = config.hosts.len();
    for (i, vm) in config.vms.iter().enumerate() {
        outln!(
            "{:<12} {:<12} {:>5} {:>5}Mi  {:<10} {}",
            vm.name,
            priority_name(vm.priority),
            vm.order,
            vm.memory_mib,
            config.hosts[i % n].name,
            vm.depends_on.join(", ")
        );
    }
    let mut plans = outcome.plans.iter().peekable();
    let mut acts = script.iter().enumerate().peekable();
    outln!();
    for entry in &outcome.timeline {
        while let Some(snapshot) = plans.next_if(|p| p.at <= entry.at) {
            print_plan(snapshot);
        }
        if matches!(entry.kind, halo_sim::TimelineKind::Fault(_))
            && let Some((i, (_, story))) = acts.next_if(|(_, (f, _))| f.at <= entry.at)
        {
            outln!("\n== act {}: {}", i + 1, entry.message.trim_start_matches("FAULT: "));
            outln!("   {}\n", wrap(story, 90, "   "));
        }
        let mark = match entry.severity {
            halo_core::Severity::Info => ' ',
            halo_core::Severity::Warning => '!',
            halo_core::Severity::Alert => '*',
        };
        outln!("{:>7.1}s {mark} {:<7} {:<19} {}", secs(entry.at), entry.source, entry.kind, entry.message);
    }
    for snapshot in plans {
        print_plan(snapshot);
    }
    outln!();
    if !calls.is_empty() {
        let text: Vec<String> = calls
            .iter()
            .map(|(w, s)| {
                format!(
                    "{w} {} call(s), {} answered by the plugin, {} fallback(s)",
                    s.calls, s.plugin_answers, s.fallbacks
                )
            })
            .collect();
        outln!("plugin decisions: {}", text.join("; "));
    }
    let restarted = outcome.timeline.iter().filter(|e| e.kind == halo_core::EventKind::VmRestarted).count();
    if let Some(p) = percentiles(&outcome.failover_latencies) {
        outln!(
            "{restarted} VM restart(s); VM lost → running elsewhere: p50 {:.1}s, max {:.1}s",
            secs(p.p50),
            secs(p.max)
        );
    }
    outln!(
        "{} s of cluster time simulated in {:.2} s; {}",
        secs(outcome.timeline.last().map_or(0, |e| e.at)),
        wall_secs,
        if outcome.clean() {
            "every invariant held: no VM ran twice, nothing restarted without proof, every protected VM runs again"
                .to_string()
        } else {
            format!("INVARIANTS BROKEN: {:?} {:?}", outcome.violations, outcome.liveness_violations)
        }
    );
}

fn priority_name(priority: halo_policy::RestartPriority) -> &'static str {
    match priority {
        halo_policy::RestartPriority::Restart => "restart",
        halo_policy::RestartPriority::BestEffort => "best-effort",
        halo_policy::RestartPriority::Unprotected => "unprotected",
    }
}

fn print_plan(snapshot: &halo_sim::PlanSnapshot) {
    let Some(plan) = &snapshot.plan else {
        outln!("\n   [failover plan {}: no master to ask]", snapshot.label);
        return;
    };
    outln!(
        "\n   [failover plan {} — master {}: the cluster tolerates {} host failure(s), target {}{}; memory in use {} MiB of {} MiB]",
        snapshot.label,
        snapshot.master.as_deref().unwrap_or("?"),
        plan.tolerates,
        plan.target,
        if plan.overcommitted { ", OVERCOMMITTED" } else { "" },
        plan.cluster.memory_mib(),
        plan.hosts.iter().map(|h| h.memory_mib).sum::<u64>()
    );
    let per_host: Vec<String> =
        plan.hosts.iter().map(|h| format!("{} {}/{} MiB", h.host, h.used.memory_mib(), h.memory_mib)).collect();
    outln!("   [{}]\n", per_host.join(", "));
}

fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = 0;
    for word in text.split_whitespace() {
        if line > 0 && line + word.len() + 1 > width {
            out.push('\n');
            out.push_str(indent);
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += word.len();
    }
    out
}
