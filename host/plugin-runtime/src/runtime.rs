//! Loading plugins and running one decision: check the component (world, contract version,
//! imports), prepare it once, then per call a fresh store and instance, the answer
//! validated, and the built-in policy deciding whenever the plugin does not.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};

use crate::cache::AotCache;
use crate::compile::{self, ChildFailure, CodeLimits, CompilePlace, Complexity};
use crate::error::{FailureKind, LoadError, PluginFailure, RuntimeError};
use crate::sandbox::{CallState, HostUse, Sandbox, SandboxLimits, log_import};
use crate::world::{PolicyWorld, Rejected};

/// The contract version this agent speaks (`wit/0.1.4`; plugins built against 0.1.0 to 0.1.3
/// load too).
pub const CONTRACT_VERSION: &str = "0.1.4";

/// Largest plugin file accepted.
pub const MAX_PLUGIN_BYTES: u64 = 64 << 20;

/// Longest failure detail kept (characters): it may quote the plugin's text.
pub const MAX_FAILURE_DETAIL: usize = 600;

/// Why [`read_bounded`] read nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// It could not be opened or read, or is not a regular file.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// It is larger than allowed (its size, or at least that).
    #[error("{0} bytes, more than allowed")]
    TooLarge(u64),
}

/// Reads a regular file of at most `max` bytes. Opened without blocking and checked on the
/// open descriptor, so a FIFO, a device (`/dev/zero`) or a directory is refused at once
/// instead of blocking or reading without end, even if the path is swapped meanwhile.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits()).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(ReadError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, a device or a directory)",
        )));
    }
    if meta.len() > max {
        return Err(ReadError::TooLarge(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge(bytes.len() as u64));
    }
    Ok(bytes)
}

/// What is known about a loaded plugin (shown by `halo plugin check`).
#[derive(Debug, Clone)]
pub struct PluginInfo {
    /// The plugin's name: its file name.
    pub name: Arc<str>,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// File size in bytes.
    pub size: u64,
    /// The world it serves.
    pub world: &'static str,
    /// The exported interface, with version (`halo:policy/placement@0.1.0`).
    pub export: String,
    /// Everything the component exports.
    pub exports: Vec<String>,
    /// WASI imports it has; each traps if called.
    pub denied_imports: Vec<String>,
    /// Time to compile (or load from the cache), check and prepare it.
    pub load_time: Duration,
    /// Whether the compiled code came from the AOT cache.
    pub from_cache: bool,
    /// Its code's structure, as measured before compiling.
    pub complexity: Complexity,
}

/// A plugin file read and compiled, not yet checked against a world.
pub struct CompiledPlugin {
    path: PathBuf,
    component: Component,
    sha256: String,
    size: u64,
    exports: Vec<String>,
    imports: Vec<String>,
    from_cache: bool,
    complexity: Complexity,
    started: Instant,
}

impl CompiledPlugin {
    /// Everything the component exports (`halo:policy/placement@0.1.0`, …).
    pub fn exports(&self) -> &[String] {
        &self.exports
    }
}

/// A plugin ready to be called: checked and prepared once, instantiated fresh per call.
pub struct LoadedPlugin<W: PolicyWorld> {
    info: PluginInfo,
    pre: W::Pre,
}

impl<W: PolicyWorld> LoadedPlugin<W> {
    /// What is known about it.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }
}

/// Who answered a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecidedBy {
    /// The plugin, and its answer passed validation.
    Plugin(Arc<str>),
    /// The built-in policy; `failure` says why the plugin did not (none: no plugin loaded).
    BuiltIn {
        /// The plugin's failure, if a plugin was asked.
        failure: Option<PluginFailure>,
    },
}

/// One decision and how it came about.
#[derive(Debug)]
pub struct Decision<A> {
    /// The answer the agent acts on (always valid).
    pub answer: A,
    /// Who gave it.
    pub decided_by: DecidedBy,
    /// Problems the built-in policy found in the settings (it used defaults for those keys).
    pub settings_problems: Vec<String>,
    /// Time spent, plugin and fallback together.
    pub elapsed: Duration,
}

impl<A> Decision<A> {
    /// The plugin failure that made the built-in policy decide, if any.
    pub fn failure(&self) -> Option<&PluginFailure> {
        match &self.decided_by {
            DecidedBy::BuiltIn { failure } => failure.as_ref(),
            DecidedBy::Plugin(_) => None,
        }
    }
}

/// What one plugin call used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallUsage {
    /// Fuel used in all, the host calls' charge included (none under an epoch budget).
    pub fuel: Option<u64>,
    /// The calls the plugin made into halo, their time and their charge.
    pub host: HostUse,
    /// Log lines dropped over the per-call allowance.
    pub log_dropped: u32,
}

/// The plugin runtime: the sandbox, the AOT cache and where plugins are compiled.
pub struct Runtime {
    sandbox: Sandbox,
    cache: Option<AotCache>,
    place: CompilePlace,
    code_limits: CodeLimits,
}

impl Runtime {
    /// A runtime with `limits`, caching compiled plugins in `cache_dir` when given.
    pub fn new(limits: SandboxLimits, cache_dir: Option<&Path>) -> Result<Self, RuntimeError> {
        let sandbox = Sandbox::new(limits)?;
        let cache = cache_dir.map(AotCache::open).transpose().map_err(|e| RuntimeError::Config(e.to_string()))?;
        Ok(Self { sandbox, cache, place: CompilePlace::InProcess, code_limits: CodeLimits::default() })
    }

    /// Compiles plugins at `place` (the agent: a child process under time and memory limits).
    pub fn compile_at(mut self, place: CompilePlace) -> Self {
        self.place = place;
        self
    }

    /// Refuses, before compiling, code past `limits` (default: [`CodeLimits::default`]).
    pub fn code_limits(mut self, limits: CodeLimits) -> Self {
        self.code_limits = limits;
        self
    }

    /// Where plugins are compiled.
    pub fn compile_place(&self) -> &CompilePlace {
        &self.place
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> SandboxLimits {
        self.sandbox.limits()
    }

    /// Loads the plugin at `path` for world `W`, checking everything a call will rely on.
    pub fn load<W: PolicyWorld>(&self, path: &Path) -> Result<LoadedPlugin<W>, LoadError> {
        self.prepare(self.compile(path)?)
    }

    /// Reads and compiles (or takes from the AOT cache) the plugin at `path`, world unchecked.
    pub fn compile(&self, path: &Path) -> Result<CompiledPlugin, LoadError> {
        let started = Instant::now();
        let read_err = |source| LoadError::Read { path: path.to_path_buf(), source };
        let bytes = match read_bounded(path, MAX_PLUGIN_BYTES) {
            Ok(bytes) => bytes,
            Err(ReadError::TooLarge(size)) => {
                return Err(LoadError::NotAComponent {
                    path: path.to_path_buf(),
                    reason: format!("{size} bytes, more than the {MAX_PLUGIN_BYTES} allowed"),
                });
            }
            Err(ReadError::Io(e)) => return Err(read_err(e)),
        };
        let size = bytes.len() as u64;
        if bytes.starts_with(b"\x7fELF") || !bytes.starts_with(b"\0asm") {
            return Err(LoadError::NotAComponent {
                path: path.to_path_buf(),
                reason: "not a WebAssembly file (a plugin is the .wasm component, never a precompiled .cwasm)".into(),
            });
        }
        let sha256 = hex(&Sha256::digest(&bytes));
        let engine = self.sandbox.engine();
        // Structure first: pathological code is refused before any compile is spent on it.
        let complexity = compile::measure(&bytes, &self.code_limits)
            .map_err(|reason| LoadError::NotAComponent { path: path.to_path_buf(), reason })?;
        complexity
            .check(&self.code_limits)
            .map_err(|reason| LoadError::TooComplex { path: path.to_path_buf(), reason })?;
        let not_a_component = |reason: String| LoadError::NotAComponent { path: path.to_path_buf(), reason };
        let precompile = |bytes: &[u8]| -> Result<Vec<u8>, LoadError> {
            match &self.place {
                CompilePlace::InProcess => {
                    engine.precompile_component(bytes).map_err(|e| not_a_component(format!("{e:#}")))
                }
                CompilePlace::Child(child) => {
                    compile::in_child(child, self.sandbox.limits(), bytes).map_err(|failure| match failure {
                        ChildFailure::Limit(reason) => LoadError::Compile { path: path.to_path_buf(), reason },
                        ChildFailure::Invalid(reason) => not_a_component(reason),
                    })
                }
            }
        };
        let (component, from_cache) = match (&self.cache, &self.place) {
            (Some(cache), _) => cache.load(engine, &bytes, &sha256, precompile)?,
            (None, CompilePlace::InProcess) => {
                (Component::new(engine, &bytes).map_err(|e| not_a_component(format!("{e:#}")))?, false)
            }
            (None, CompilePlace::Child(_)) => {
                let artifact = precompile(&bytes)?;
                let component = compile::load_artifact(engine, &artifact)
                    .map_err(|e| not_a_component(format!("the compiled artifact does not load: {e:#}")))?;
                (component, false)
            }
        };
        let ty = component.component_type();
        let exports: Vec<String> = ty.exports(engine).map(|(name, _)| name.to_string()).collect();
        let imports: Vec<String> = ty.imports(engine).map(|(name, _)| name.to_string()).collect();
        Ok(CompiledPlugin {
            path: path.to_path_buf(),
            component,
            sha256,
            size,
            exports,
            imports,
            from_cache,
            complexity,
            started,
        })
    }

    /// Checks a compiled plugin against world `W` and prepares it for calls.
    pub fn prepare<W: PolicyWorld>(&self, compiled: CompiledPlugin) -> Result<LoadedPlugin<W>, LoadError> {
        let CompiledPlugin { path, component, sha256, size, exports, imports, from_cache, complexity, started } =
            compiled;
        let path = path.as_path();
        let engine = self.sandbox.engine();
        let export = check_export::<W>(path, &exports)?;
        let denied_imports = check_imports(path, &imports)?;

        // A type that differs from the contract the plugin claims (a changed record, another
        // enum case) is named as such: the plugin was built against an edited contract.
        let instantiate_err = |e: wasmtime::Error| {
            let reason = crate::sandbox::one_clean_line(&format!("{e:#}"), MAX_FAILURE_DETAIL);
            if reason.contains("type mismatch") {
                let claims = export.rsplit('@').next().unwrap_or(CONTRACT_VERSION).to_string();
                LoadError::WrongTypes { path: path.to_path_buf(), claims, reason }
            } else {
                LoadError::Instantiate { path: path.to_path_buf(), reason }
            }
        };
        let mut linker: Linker<CallState> = Linker::new(engine);
        // `log` under the contract version this agent speaks and under the exact version a
        // plugin built against an older compatible contract imports (`halo:policy/log@0.1.0`):
        // the trap stubs below would otherwise take that name (they match exactly, before any
        // version matching).
        let own = format!("halo:policy/log@{CONTRACT_VERSION}");
        let mut logs = vec![own.as_str()];
        logs.extend(imports.iter().map(String::as_str).filter(|i| i.starts_with("halo:policy/log@") && *i != own));
        for import in logs {
            linker.instance(import).and_then(|mut i| i.func_wrap("log", log_import)).map_err(instantiate_err)?;
        }
        linker.define_unknown_imports_as_traps(&component).map_err(instantiate_err)?;
        let pre = W::prepare(linker.instantiate_pre(&component).map_err(instantiate_err)?, &export)
            .map_err(instantiate_err)?;
        let name: Arc<str> = path.file_name().map_or_else(|| "plugin".into(), |n| n.to_string_lossy().into());
        // A throwaway instance checks the export types and that instantiation works at all.
        let mut store = self.sandbox.store(name.clone()).map_err(instantiate_err)?;
        W::instantiate_only(&pre, &mut store).map_err(instantiate_err)?;
        let info = PluginInfo {
            name,
            path: path.to_path_buf(),
            sha256,
            size,
            world: W::world(&export),
            export,
            exports,
            denied_imports,
            load_time: started.elapsed(),
            from_cache,
            complexity,
        };
        Ok(LoadedPlugin { info, pre })
    }

    /// Runs `plugin` once on `input` and validates the answer; no fallback.
    pub fn call<W: PolicyWorld>(&self, plugin: &LoadedPlugin<W>, input: &W::Input) -> Result<W::Answer, PluginFailure> {
        self.call_measured(plugin, input).0
    }

    /// [`Runtime::call`], and what the call used (fuel, host calls, host time).
    pub fn call_measured<W: PolicyWorld>(
        &self,
        plugin: &LoadedPlugin<W>,
        input: &W::Input,
    ) -> (Result<W::Answer, PluginFailure>, CallUsage) {
        // The detail may quote the plugin's own text (an error answer, names in an invalid
        // answer): at most a prefix, on one line, reaches a log, an event, the API or a terminal.
        let fail = |kind, detail: String| PluginFailure {
            plugin: plugin.info.name.to_string(),
            world: W::WORLD,
            kind,
            detail: crate::sandbox::one_clean_line(&detail, MAX_FAILURE_DETAIL),
        };
        let mut store = match self.sandbox.store(plugin.info.name.clone()) {
            Ok(store) => store,
            Err(e) => return (Err(fail(FailureKind::Instantiate, format!("{e:#}"))), CallUsage::default()),
        };
        let fuel_before = store.get_fuel().ok();
        let outcome = W::call(&plugin.pre, &mut store, input);
        let state = store.data();
        let usage = CallUsage {
            fuel: fuel_before.zip(store.get_fuel().ok()).map(|(before, after)| before.saturating_sub(after)),
            host: state.host_use(),
            log_dropped: state.log_dropped(),
        };
        if usage.log_dropped > 0 {
            tracing::warn!(plugin = %plugin.info.name, dropped = usage.log_dropped, "plugin log lines dropped (over the per-call allowance)");
        }
        let result = match outcome {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(Rejected::Invalid(why))) => Err(fail(FailureKind::InvalidAnswer, why)),
            Ok(Err(Rejected::Refused(reason))) => Err(fail(FailureKind::Refused, reason)),
            Err(error) => {
                let (kind, detail) = self.sandbox.classify(state, &error);
                Err(fail(kind, detail))
            }
        };
        (result, usage)
    }

    /// One decision: the plugin's validated answer, or the built-in policy's with the reason.
    /// The input must have passed `W::check_input`.
    pub fn decide<W: PolicyWorld>(&self, plugin: Option<&LoadedPlugin<W>>, input: &W::Input) -> Decision<W::Answer> {
        let started = Instant::now();
        let failure = match plugin.map(|p| (p, self.call(p, input))) {
            Some((p, Ok(answer))) => {
                return Decision {
                    answer,
                    decided_by: DecidedBy::Plugin(p.info.name.clone()),
                    settings_problems: Vec::new(),
                    elapsed: started.elapsed(),
                };
            }
            Some((_, Err(failure))) => {
                tracing::warn!(plugin = %failure.plugin, world = W::WORLD, kind = failure.kind.as_str(), "{failure}");
                Some(failure)
            }
            None => None,
        };
        let (answer, settings_problems) = W::fallback(input);
        Decision { answer, decided_by: DecidedBy::BuiltIn { failure }, settings_problems, elapsed: started.elapsed() }
    }
}

/// Finds one of the world's interfaces among the exports and checks its version.
fn check_export<W: PolicyWorld>(path: &Path, exports: &[String]) -> Result<String, LoadError> {
    for interface in W::INTERFACES {
        let prefix = format!("halo:policy/{interface}@");
        let Some(export) = exports.iter().find(|e| e.starts_with(&prefix)) else { continue };
        let version = &export[prefix.len()..];
        return if semver_compatible(version, CONTRACT_VERSION) {
            Ok(export.clone())
        } else {
            Err(LoadError::WrongVersion {
                path: path.to_path_buf(),
                interface,
                found: version.to_string(),
                speaks: CONTRACT_VERSION,
            })
        };
    }
    let halo: Vec<&str> = exports.iter().map(String::as_str).filter(|e| e.starts_with("halo:policy/")).collect();
    let found = if halo.is_empty() {
        format!("is not a halo policy plugin (it exports {})", list_or_nothing(exports))
    } else {
        format!("exports {}, which is another world", halo.join(", "))
    };
    let interfaces: Vec<String> = W::INTERFACES.iter().map(|i| format!("halo:policy/{i}@{CONTRACT_VERSION}")).collect();
    Err(LoadError::WrongWorld {
        path: path.to_path_buf(),
        found,
        expected: W::WORLD,
        interfaces: interfaces.join(" or "),
    })
}

fn list_or_nothing(items: &[String]) -> String {
    if items.is_empty() { "nothing".into() } else { items.join(", ") }
}

/// Allows `halo:policy/log` and `halo:policy/types` of a compatible version; WASI imports are
/// allowed to link but trap when called. Returns the WASI imports.
fn check_imports(path: &Path, imports: &[String]) -> Result<Vec<String>, LoadError> {
    let mut denied = Vec::new();
    for import in imports {
        if import.starts_with("wasi:") {
            denied.push(import.clone());
            continue;
        }
        let allowed = ["halo:policy/log@", "halo:policy/types@"].iter().any(|prefix| {
            import.strip_prefix(prefix).is_some_and(|version| semver_compatible(version, CONTRACT_VERSION))
        });
        if !allowed {
            return Err(LoadError::ForbiddenImport { path: path.to_path_buf(), import: import.clone() });
        }
    }
    Ok(denied)
}

/// Semver compatibility as wasmtime links it: same major, and for 0.x the same minor.
pub fn semver_compatible(version: &str, speaks: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let core = v.split(['-', '+']).next()?;
        let mut parts = core.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        parts.next()?.parse::<u64>().ok()?;
        Some((major, minor))
    };
    match (parse(version), parse(speaks)) {
        (Some((0, a)), Some((0, b))) => a == b,
        (Some((a, _)), Some((b, _))) => a == b,
        _ => false,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
