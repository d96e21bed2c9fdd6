//! A plugin slot: the plugin currently in force for one world, swapped atomically.
//!
//! Calls take a snapshot (`Arc`) of the current plugin and run without holding any lock, so
//! a swap never waits for a call and a call never sees a half-loaded plugin. A new file is
//! fully loaded and checked before it replaces the old one; if it fails, the old one stays
//! in force and the error says why.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::error::{FailureKind, LoadError};
use crate::runtime::{DecidedBy, Decision, LoadedPlugin, PluginInfo, Runtime};
use crate::world::PolicyWorld;

/// Counters of one slot (for metrics and alerts).
#[derive(Debug, Default)]
pub struct SlotStats {
    calls: AtomicU64,
    plugin_answers: AtomicU64,
    fallbacks: AtomicU64,
    failures: [AtomicU64; FailureKind::ALL.len()],
    nanos: AtomicU64,
    reloads: AtomicU64,
    failed_reloads: AtomicU64,
}

/// A copy of a slot's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Decisions asked for.
    pub calls: u64,
    /// Decisions the plugin gave (valid).
    pub plugin_answers: u64,
    /// Decisions the built-in policy gave.
    pub fallbacks: u64,
    /// Plugin failures by kind.
    pub failures: Vec<(FailureKind, u64)>,
    /// Total time spent deciding.
    pub total_time: Duration,
    /// Successful loads and swaps.
    pub reloads: u64,
    /// Loads that failed (the old plugin stayed).
    pub failed_reloads: u64,
}

/// How a plugin file was last seen, to notice a replacement.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp { modified: meta.modified().ok(), len: meta.len(), inode: meta.ino() })
}

/// The plugin in force for world `W`, or none (the built-in policy decides).
pub struct PluginSlot<W: PolicyWorld> {
    runtime: Arc<Runtime>,
    current: RwLock<Option<Arc<LoadedPlugin<W>>>>,
    path: Mutex<Option<(PathBuf, Option<FileStamp>)>>,
    stats: SlotStats,
}

impl<W: PolicyWorld> PluginSlot<W> {
    /// An empty slot: the built-in policy decides until a plugin is loaded.
    pub fn builtin(runtime: Arc<Runtime>) -> Self {
        Self { runtime, current: RwLock::new(None), path: Mutex::new(None), stats: SlotStats::default() }
    }

    /// A slot with the plugin at `path` in force.
    pub fn load(runtime: Arc<Runtime>, path: &Path) -> Result<Self, LoadError> {
        let slot = Self::builtin(runtime);
        slot.swap_to(path)?;
        Ok(slot)
    }

    /// The plugin in force, if any.
    pub fn plugin(&self) -> Option<Arc<LoadedPlugin<W>>> {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// What is known about the plugin in force.
    pub fn info(&self) -> Option<PluginInfo> {
        self.plugin().map(|p| p.info().clone())
    }

    /// Loads `path` and, if it loads and checks, puts it in force (and watches that path).
    pub fn swap_to(&self, path: &Path) -> Result<PluginInfo, LoadError> {
        let seen = stamp(path);
        match self.runtime.load::<W>(path) {
            Ok(plugin) => {
                let info = plugin.info().clone();
                *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(plugin));
                *self.path.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((path.to_path_buf(), seen));
                self.stats.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(plugin = %info.name, world = W::WORLD, sha256 = %info.sha256, "plugin in force");
                Ok(info)
            }
            Err(error) => {
                // Remember the stamp anyway, so a broken file is reported once, not every poll;
                // a slot that watched no file yet watches this one (a plugin that failed to load
                // at start is loaded when its file is fixed).
                let mut watched = self.path.lock().unwrap_or_else(|p| p.into_inner());
                match &mut *watched {
                    Some((watching, stamp)) if watching == path => *stamp = seen,
                    Some(_) => {}
                    None => *watched = Some((path.to_path_buf(), seen)),
                }
                self.stats.failed_reloads.fetch_add(1, Ordering::Relaxed);
                tracing::error!(world = W::WORLD, "{error}; the previous policy stays in force");
                Err(error)
            }
        }
    }

    /// The file this slot watches (its plugin's, or one that failed to load), if any.
    pub fn watched(&self) -> Option<PathBuf> {
        self.path.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(p, _)| p.clone())
    }

    /// Reloads the watched file (an operator's explicit reload).
    pub fn reload(&self) -> Option<Result<PluginInfo, LoadError>> {
        let path = self.path.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(p, _)| p.clone())?;
        Some(self.swap_to(&path))
    }

    /// Reloads the watched file if it changed since it was last loaded (call periodically).
    pub fn reload_if_changed(&self) -> Option<Result<PluginInfo, LoadError>> {
        let (path, last) = self.path.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
        let now = stamp(&path);
        if now.is_none() || now == last {
            return None;
        }
        Some(self.swap_to(&path))
    }

    /// Puts the plugin of `shadow` in force here (already compiled and checked: nothing is
    /// loaded again) and watches its file; `shadow` is emptied. None when `shadow` has no plugin.
    pub fn promote_from(&self, shadow: &PluginSlot<W>) -> Option<PluginInfo> {
        let plugin = shadow.plugin()?;
        let watched = shadow.path.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let info = plugin.info().clone();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(plugin);
        *self.path.lock().unwrap_or_else(|p| p.into_inner()) = watched;
        self.stats.reloads.fetch_add(1, Ordering::Relaxed);
        shadow.unload();
        tracing::info!(plugin = %info.name, world = W::WORLD, sha256 = %info.sha256, "shadow plugin promoted: in force");
        Some(info)
    }

    /// Goes back to the built-in policy.
    pub fn unload(&self) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = None;
        *self.path.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// One decision: the plugin's validated answer or the built-in policy's.
    pub fn decide(&self, input: &W::Input) -> Decision<W::Answer> {
        let plugin = self.plugin();
        let decision = self.runtime.decide(plugin.as_deref(), input);
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.stats.nanos.fetch_add(u64::try_from(decision.elapsed.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        match &decision.decided_by {
            DecidedBy::Plugin(_) => self.stats.plugin_answers.fetch_add(1, Ordering::Relaxed),
            DecidedBy::BuiltIn { failure } => {
                if let Some(failure) = failure {
                    let i = FailureKind::ALL.iter().position(|k| *k == failure.kind).unwrap_or(0);
                    self.stats.failures[i].fetch_add(1, Ordering::Relaxed);
                }
                self.stats.fallbacks.fetch_add(1, Ordering::Relaxed)
            }
        };
        decision
    }

    /// The slot's counters.
    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.stats;
        StatsSnapshot {
            calls: s.calls.load(Ordering::Relaxed),
            plugin_answers: s.plugin_answers.load(Ordering::Relaxed),
            fallbacks: s.fallbacks.load(Ordering::Relaxed),
            failures: FailureKind::ALL.iter().zip(&s.failures).map(|(k, n)| (*k, n.load(Ordering::Relaxed))).collect(),
            total_time: Duration::from_nanos(s.nanos.load(Ordering::Relaxed)),
            reloads: s.reloads.load(Ordering::Relaxed),
            failed_reloads: s.failed_reloads.load(Ordering::Relaxed),
        }
    }
}
