//! The runtime's errors: why a plugin did not load, and why a call fell back to the
//! built-in policy.

use std::path::PathBuf;

/// Why a plugin file was not loaded. The previous plugin (or the built-in policy) stays in force.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("plugin {path}: cannot read it: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a WebAssembly component wasmtime accepts.
    #[error("plugin {path}: not a valid WebAssembly component: {reason}")]
    NotAComponent {
        /// The file.
        path: PathBuf,
        /// wasmtime's reason.
        reason: String,
    },
    /// The code is past a structural limit (nesting, function size, …), checked before any
    /// compile is spent on it.
    #[error("plugin {path}: refused: {reason}")]
    TooComplex {
        /// The file.
        path: PathBuf,
        /// The figure and the limit.
        reason: String,
    },
    /// Compiling it overran its time or memory, or the compiler process failed.
    #[error("plugin {path}: compile refused: {reason}")]
    Compile {
        /// The file.
        path: PathBuf,
        /// What overran, with the limit.
        reason: String,
    },
    /// The component exports another world than the one asked for.
    #[error("plugin {path}: {found}; a {expected} plugin must export {interfaces}")]
    WrongWorld {
        /// The file.
        path: PathBuf,
        /// What it does export.
        found: String,
        /// The world asked for.
        expected: &'static str,
        /// The interfaces, with version, a plugin of that world may export (`halo:policy/placement@0.1.1`).
        interfaces: String,
    },
    /// The component was built against an incompatible contract version.
    #[error(
        "plugin {path} exports halo:policy/{interface}@{found}, this agent speaks {speaks}; rebuild the plugin against wit/{speaks}"
    )]
    WrongVersion {
        /// The file.
        path: PathBuf,
        /// The interface.
        interface: &'static str,
        /// The version it exports.
        found: String,
        /// The version this agent speaks.
        speaks: &'static str,
    },
    /// The component imports something a policy plugin may not have.
    #[error(
        "plugin {path} imports `{import}`, which halo does not provide: a policy plugin may import only halo:policy/log (WASI imports are denied)"
    )]
    ForbiddenImport {
        /// The file.
        path: PathBuf,
        /// The import.
        import: String,
    },
    /// The names match the contract the plugin claims, its types do not (it was built
    /// against an edited copy of the contract).
    #[error(
        "plugin {path} claims contract {claims} but its types differ from it: {reason}; rebuild it against wit/{claims} unchanged"
    )]
    WrongTypes {
        /// The file.
        path: PathBuf,
        /// The contract version it claims.
        claims: String,
        /// wasmtime's comparison.
        reason: String,
    },
    /// Linking or a trial instantiation failed (mismatched types, start function trapped).
    #[error("plugin {path}: cannot be instantiated: {reason}")]
    Instantiate {
        /// The file.
        path: PathBuf,
        /// wasmtime's reason.
        reason: String,
    },
    /// The compiled-artifact cache failed (the plugin is still loaded by compiling it).
    #[error("plugin cache {dir}: {reason}")]
    Cache {
        /// The cache directory.
        dir: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// A runtime that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Limits or engine settings are wrong.
    #[error("plugin runtime: {0}")]
    Config(String),
}

/// The kind of a plugin failure, for counting and alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// It used up its CPU budget.
    Timeout,
    /// It asked for more memory than its cap.
    MemoryExhausted,
    /// It trapped (panic, unreachable, stack overflow, a denied WASI call).
    Trap,
    /// It answered with an error of its own.
    Refused,
    /// Its answer broke the contract (unknown names, a VM twice, capacity exceeded, …).
    InvalidAnswer,
    /// A fresh instance could not be made.
    Instantiate,
}

impl FailureKind {
    /// Every kind, in a stable order (for metrics).
    pub const ALL: [FailureKind; 6] = [
        FailureKind::Timeout,
        FailureKind::MemoryExhausted,
        FailureKind::Trap,
        FailureKind::Refused,
        FailureKind::InvalidAnswer,
        FailureKind::Instantiate,
    ];

    /// A short name for metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::MemoryExhausted => "memory",
            FailureKind::Trap => "trap",
            FailureKind::Refused => "refused",
            FailureKind::InvalidAnswer => "invalid-answer",
            FailureKind::Instantiate => "instantiate",
        }
    }
}

/// Why a plugin's answer was not used; the built-in policy decided instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugin `{plugin}` ({world}) {}: {detail}; the built-in policy decided instead", describe(*.kind))]
pub struct PluginFailure {
    /// The plugin's name (its file name).
    pub plugin: String,
    /// The world it serves.
    pub world: &'static str,
    /// What kind of failure.
    pub kind: FailureKind,
    /// The details, for the operator.
    pub detail: String,
}

fn describe(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Timeout => "ran out of time",
        FailureKind::MemoryExhausted => "ran out of memory",
        FailureKind::Trap => "trapped",
        FailureKind::Refused => "refused to decide",
        FailureKind::InvalidAnswer => "gave an invalid answer",
        FailureKind::Instantiate => "could not be instantiated",
    }
}
