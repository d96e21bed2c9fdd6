//! Compiling a plugin within limits.
//!
//! Code can be pathological for the compiler: a component of a few hundred KiB whose blocks
//! nest 50,000 deep took 107 s to compile here, one of 4 MiB 195 s and 5.9 GiB. Two fences:
//!
//! 1. **Before compiling**, [`measure`] walks every function of every core module in the
//!    component (wasmparser; no code generated) and [`Complexity::check`] refuses what is past
//!    the [`CodeLimits`], naming the measured figure: nesting depth, function size, locals,
//!    call sites, functions, code in all.
//! 2. **The compile itself** runs in a child process ([`CompilePlace::Child`]): the same
//!    executable, started with the hidden `compile-worker` arguments, limits its own address
//!    space (`RLIMIT_AS`) and CPU time (`RLIMIT_CPU`) before it compiles, and the parent kills
//!    it at the wall-clock deadline. An overrun is refused with a clear message and never
//!    touches the process that asked (the agent keeps its plugin in force and its heartbeats).
//!
//! The child writes the compiled artifact into a private directory (mode 0700, made by the
//! parent) and the parent loads it: machine code this executable produced, as with the AOT
//! cache (`cache`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wasmparser::{Operator, Parser, Payload};

use crate::sandbox::{CpuBudget, SandboxLimits};

/// Structural limits checked before a plugin is compiled. Figures from this machine kind
/// (single-threaded Cranelift, `halo plugin` and `cargo test` measure them): blocks nested
/// 1,000 deep compile in 0.13 s, 10,000 deep in 5.6 s, 50,000 deep in 107 s; one function of
/// 240 KB in 0.2 s, of 960 KB in 7.8 s; 100,000 call sites in one function in 2 s and 317 MB.
/// halo's own plugins stay far below each limit (`halo plugin check` prints their figures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeLimits {
    /// Deepest nesting of blocks, loops and ifs in one function.
    pub nesting: u32,
    /// Largest function body, bytes.
    pub function_bytes: u64,
    /// Most locals of one function.
    pub locals: u64,
    /// Most call instructions in one function.
    pub calls_per_function: u64,
    /// Functions in all modules together.
    pub functions: u64,
    /// Code bytes in all modules together.
    pub code_bytes: u64,
}

impl Default for CodeLimits {
    fn default() -> Self {
        Self {
            nesting: 1_000,
            function_bytes: 1 << 20,
            locals: 10_000,
            calls_per_function: 100_000,
            functions: 200_000,
            code_bytes: 32 << 20,
        }
    }
}

/// What [`measure`] found: the largest figure of each kind over all functions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Complexity {
    /// Core modules in the component.
    pub modules: u64,
    /// Functions with a body, all modules together.
    pub functions: u64,
    /// Code bytes, all modules together.
    pub code_bytes: u64,
    /// Deepest nesting in any function.
    pub nesting: u32,
    /// Largest function body, bytes.
    pub function_bytes: u64,
    /// Most locals of any function.
    pub locals: u64,
    /// Most call instructions in any function.
    pub calls_per_function: u64,
}

impl Complexity {
    /// The first limit this component is past, as a sentence naming the figure and the limit.
    pub fn check(&self, limits: &CodeLimits) -> Result<(), String> {
        let over = |what: &str, found: u64, limit: u64| {
            Err(format!("{what} is {found}, more than the {limit} allowed (refused before compiling)"))
        };
        if self.nesting > limits.nesting {
            return over("its deepest nesting of blocks", u64::from(self.nesting), u64::from(limits.nesting));
        }
        if self.function_bytes > limits.function_bytes {
            return over("its largest function in bytes", self.function_bytes, limits.function_bytes);
        }
        if self.locals > limits.locals {
            return over("the most locals of one function", self.locals, limits.locals);
        }
        if self.calls_per_function > limits.calls_per_function {
            return over("the most call sites in one function", self.calls_per_function, limits.calls_per_function);
        }
        if self.functions > limits.functions {
            return over("its number of functions", self.functions, limits.functions);
        }
        if self.code_bytes > limits.code_bytes {
            return over("its code in bytes", self.code_bytes, limits.code_bytes);
        }
        Ok(())
    }
}

impl std::fmt::Display for Complexity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} functions in {} module(s), {} bytes of code; at most: nesting {}, {} bytes, {} locals, {} call sites \
             in one function",
            self.functions,
            self.modules,
            self.code_bytes,
            self.nesting,
            self.function_bytes,
            self.locals,
            self.calls_per_function
        )
    }
}

/// Walks every function body of every core module in `bytes` (a component or a module),
/// without generating code. Stops at the first function past `limits` (the figures are then
/// those up to it), and walks no function larger than the limit, so a hostile file costs
/// little more than reading it.
pub fn measure(bytes: &[u8], limits: &CodeLimits) -> Result<Complexity, String> {
    let mut found = Complexity::default();
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| format!("not a valid WebAssembly component: {e}"))?;
        match payload {
            Payload::ModuleSection { .. } => found.modules += 1,
            Payload::Version { encoding: wasmparser::Encoding::Module, .. } if found.modules == 0 => found.modules = 1,
            Payload::CodeSectionEntry(body) => {
                let size = body.range().len() as u64;
                found.functions += 1;
                found.code_bytes += size;
                found.function_bytes = found.function_bytes.max(size);
                let mut locals = 0_u64;
                for entry in body.get_locals_reader().map_err(|e| format!("a function's locals: {e}"))? {
                    let (count, _) = entry.map_err(|e| format!("a function's locals: {e}"))?;
                    locals = locals.saturating_add(u64::from(count));
                }
                found.locals = found.locals.max(locals);
                if found.check(limits).is_err() {
                    return Ok(found);
                }
                // At most `function_bytes` (1 MiB) to walk: linear, and exact figures.
                let (nesting, calls) = walk(&body)?;
                found.nesting = found.nesting.max(nesting);
                found.calls_per_function = found.calls_per_function.max(calls);
                if found.check(limits).is_err() {
                    return Ok(found);
                }
            }
            _ => {}
        }
    }
    Ok(found)
}

/// The deepest nesting and the call sites of one function body.
fn walk(body: &wasmparser::FunctionBody<'_>) -> Result<(u32, u64), String> {
    let mut reader = body.get_operators_reader().map_err(|e| format!("a function's code: {e}"))?;
    let (mut depth, mut deepest, mut calls) = (0_u32, 0_u32, 0_u64);
    while !reader.eof() {
        match reader.read().map_err(|e| format!("a function's code: {e}"))? {
            Operator::Block { .. }
            | Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::TryTable { .. }
            | Operator::Try { .. } => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            Operator::End => depth = depth.saturating_sub(1),
            Operator::Call { .. }
            | Operator::CallIndirect { .. }
            | Operator::ReturnCall { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::CallRef { .. }
            | Operator::ReturnCallRef { .. } => calls += 1,
            _ => {}
        }
    }
    Ok((deepest, calls))
}

/// The arguments that make the `halo` executable the compile worker (a hidden subcommand).
pub const HALO_WORKER_ARGS: [&str; 2] = ["plugin", "compile-worker"];

/// Time and memory one compile may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileLimits {
    /// Wall-clock time, after which the compile is killed (default 60 s).
    pub deadline: Duration,
    /// Address space of the compiling process (default 2 GiB).
    pub memory_bytes: u64,
}

impl Default for CompileLimits {
    fn default() -> Self {
        Self { deadline: Duration::from_secs(60), memory_bytes: 2 << 30 }
    }
}

/// Where plugins are compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompilePlace {
    /// On the calling thread, bounded only by the structural check (tests and tools that
    /// embed the runtime; never the agent).
    InProcess,
    /// In a child process under [`CompileLimits`].
    Child(ChildCompiler),
}

/// How to start the compile worker: `program` with `args`, then the worker's own arguments
/// (which [`compile_worker`] reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildCompiler {
    /// The executable (the agent's own).
    pub program: PathBuf,
    /// Arguments that select the worker (`plugin compile-worker` for `halo`).
    pub args: Vec<OsString>,
    /// Time and memory of one compile.
    pub limits: CompileLimits,
}

impl ChildCompiler {
    /// The running executable as the worker, selected by `args`.
    pub fn this_executable(args: &[&str], limits: CompileLimits) -> std::io::Result<Self> {
        Ok(Self { program: std::env::current_exe()?, args: args.iter().map(OsString::from).collect(), limits })
    }
}

/// Why a compile in the child gave no artifact.
#[derive(Debug)]
pub(crate) enum ChildFailure {
    /// It overran its time or memory, or could not be run (one sentence).
    Limit(String),
    /// The compiler refused the code (its one-line reason).
    Invalid(String),
}

/// Compiles `bytes` (already measured) in a child process under `child.limits`; returns the
/// artifact.
pub(crate) fn in_child(child: &ChildCompiler, sandbox: SandboxLimits, bytes: &[u8]) -> Result<Vec<u8>, ChildFailure> {
    use ChildFailure::{Invalid, Limit};
    let dir = tempfile::Builder::new()
        .prefix("halo-compile-")
        .tempdir()
        .map_err(|e| Limit(format!("cannot make a private directory to compile in: {e}")))?;
    let input = dir.path().join("plugin.wasm");
    let output = dir.path().join("plugin.cwasm");
    std::fs::write(&input, bytes).map_err(|e| Limit(format!("cannot write {}: {e}", input.display())))?;
    let limits = child.limits;
    let (kind, millis) = match sandbox.cpu {
        CpuBudget::Fuel { millis } => ("fuel", millis),
        CpuBudget::Epoch { millis } => ("epoch", millis),
    };
    let mut command = Command::new(&child.program);
    command
        .args(&child.args)
        .arg(kind)
        .arg(millis.to_string())
        .arg(sandbox.memory_bytes.to_string())
        .arg(limits.memory_bytes.to_string())
        .arg(limits.deadline.as_secs().saturating_add(1).to_string())
        .arg(&input)
        .arg(&output)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut process = command.spawn().map_err(|e| Limit(format!("cannot start the compiler process: {e}")))?;
    let stderr = process.stderr.take();
    // Read what it says on a thread of its own, so a chatty child never blocks on the pipe.
    let said = std::thread::spawn(move || {
        use std::io::Read as _;
        let mut text = String::new();
        if let Some(stderr) = stderr {
            let _ = stderr.take(4096).read_to_string(&mut text);
        }
        text
    });
    let status = loop {
        match process.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= limits.deadline => {
                // Our own child, by its handle (its pid).
                let _ = process.kill();
                let _ = process.wait();
                return Err(Limit(format!(
                    "took longer than its compile deadline of {} s; it was stopped",
                    limits.deadline.as_secs()
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(Limit(format!("cannot wait for the compiler process: {e}"))),
        }
    };
    let said = said.join().unwrap_or_default();
    let said = said.lines().find(|l| !l.trim().is_empty()).unwrap_or_default().trim().to_string();
    if status.success() {
        return std::fs::read(&output).map_err(|e| Limit(format!("the compiler process left no artifact: {e}")));
    }
    use std::os::unix::process::ExitStatusExt as _;
    let mib = limits.memory_bytes >> 20;
    Err(match status.signal() {
        Some(signal) if signal == nix::sys::signal::Signal::SIGXCPU as i32 => Limit(format!(
            "used more CPU time than its compile deadline of {} s; it was stopped",
            limits.deadline.as_secs()
        )),
        _ if said.contains("memory allocation") || said.contains("out of memory") => {
            Limit(format!("needed more than its compile memory of {mib} MiB; it was stopped"))
        }
        Some(signal) => Limit(format!(
            "the compiler process died of signal {signal} (compile memory {mib} MiB; a compile that runs out of memory \
             ends this way)"
        )),
        None if said.is_empty() => Limit(format!("the compiler process failed ({status})")),
        None => Invalid(crate::sandbox::one_clean_line(&said, 400)),
    })
}

/// The compile worker: what the child process runs. `args` are the worker's own arguments:
/// `fuel|epoch <budget-ms> <memory-cap-bytes> <address-space-bytes> <cpu-seconds> <in> <out>`.
/// It limits itself first, then compiles `in` for an engine like the agent's and writes the
/// artifact to `out`. The error is one sentence for the parent to pass on.
pub fn compile_worker(args: &[OsString]) -> Result<(), String> {
    let text: Vec<&str> = args.iter().map(|a| a.to_str().unwrap_or("")).collect();
    let [kind, millis, memory, address_space, cpu_seconds, input, output] = text.as_slice() else {
        return Err(format!("the compile worker takes 7 arguments, not {}", args.len()));
    };
    let number =
        |name: &str, value: &str| value.parse::<u64>().map_err(|_| format!("{name} `{value}` is not a number"));
    let millis = number("the budget", millis)?;
    let cpu = match *kind {
        "fuel" => CpuBudget::Fuel { millis },
        "epoch" => CpuBudget::Epoch { millis },
        other => return Err(format!("budget kind `{other}` is neither fuel nor epoch")),
    };
    let memory_bytes = usize::try_from(number("the memory cap", memory)?).map_err(|e| e.to_string())?;
    let address_space = number("the address space", address_space)?;
    let cpu_seconds = number("the CPU time", cpu_seconds)?;
    use nix::sys::resource::{Resource, setrlimit};
    setrlimit(Resource::RLIMIT_AS, address_space, address_space)
        .map_err(|e| format!("cannot limit the compiler's memory: {e}"))?;
    setrlimit(Resource::RLIMIT_CPU, cpu_seconds, cpu_seconds)
        .map_err(|e| format!("cannot limit the compiler's CPU time: {e}"))?;
    let limits = SandboxLimits { cpu, memory_bytes, ..SandboxLimits::default() };
    let engine = wasmtime::Engine::new(&crate::sandbox::engine_config(&limits))
        .map_err(|e| format!("wasmtime engine: {e:#}"))?;
    let bytes = std::fs::read(input).map_err(|e| format!("cannot read {input}: {e}"))?;
    let artifact = engine.precompile_component(&bytes).map_err(|e| format!("{e:#}"))?;
    std::fs::write(output, artifact).map_err(|e| format!("cannot write {output}: {e}"))
}

/// Loads an artifact the compile worker wrote.
#[allow(unsafe_code)]
pub(crate) fn load_artifact(
    engine: &wasmtime::Engine,
    artifact: &[u8],
) -> wasmtime::Result<wasmtime::component::Component> {
    // SAFETY: `artifact` was written by this same executable's compile worker (started by
    // `in_child` with the program the agent runs as) into a directory only this user can
    // write (a fresh `tempfile` directory, mode 0700), from bytes this process handed it.
    // wasmtime still checks the header (version, engine settings) and refuses a mismatch.
    unsafe { wasmtime::component::Component::deserialize(engine, artifact) }
}
