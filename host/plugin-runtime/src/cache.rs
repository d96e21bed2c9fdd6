//! The compiled-plugin cache: AOT artifacts (`.cwasm`) keyed by the plugin file's SHA-256 and
//! the engine's compatibility hash (wasmtime version and every setting that changes code,
//! such as fuel).
//!
//! Deserializing an artifact runs machine code without re-checking it, so the cache only
//! ever reads artifacts this process kind wrote itself: the directory must be owned by the
//! agent's user and writable by nobody else (checked when it is opened), names are derived
//! from hashes, and a user-supplied `.cwasm` is never accepted as a plugin.

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::error::LoadError;

/// A directory of AOT-compiled plugins.
#[derive(Debug, Clone)]
pub struct AotCache {
    dir: PathBuf,
}

impl AotCache {
    /// Opens (creating, mode 0700) the cache directory and checks nobody else can write it.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, LoadError> {
        let dir = dir.into();
        let fail = |reason: String| LoadError::Cache { dir: dir.clone(), reason };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| fail(format!("cannot create it: {e}")))?;
        let meta = fs::metadata(&dir).map_err(|e| fail(format!("cannot inspect it: {e}")))?;
        if meta.permissions().mode() & 0o022 != 0 {
            return Err(fail("it is writable by group or others; run `chmod 700` on it or pick another".into()));
        }
        // Owned by us: compare with a file we create there ourselves.
        let probe = dir.join(".owner-probe");
        fs::write(&probe, b"").map_err(|e| fail(format!("cannot write in it: {e}")))?;
        let ours = fs::metadata(&probe).map(|m| m.uid());
        let _ = fs::remove_file(&probe);
        match ours {
            Ok(uid) if uid == meta.uid() => Ok(Self { dir }),
            Ok(_) => Err(fail("it belongs to another user; halo only runs code it compiled itself".into())),
            Err(e) => Err(fail(format!("cannot inspect it: {e}"))),
        }
    }

    /// The artifact path for `sha256` under `engine`.
    fn artifact(&self, engine: &Engine, sha256: &str) -> PathBuf {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        self.dir.join(format!("{sha256}-{:016x}.cwasm", hasher.finish()))
    }

    /// The component for `bytes`: from the cache when present and valid, otherwise
    /// compiled and stored. Returns whether it came from the cache.
    /// `precompile` makes the artifact when the cache has none (in a child process, for the
    /// agent).
    pub fn load(
        &self,
        engine: &Engine,
        bytes: &[u8],
        sha256: &str,
        precompile: impl FnOnce(&[u8]) -> Result<Vec<u8>, LoadError>,
    ) -> Result<(Component, bool), LoadError> {
        let artifact = self.artifact(engine, sha256);
        if artifact.is_file() {
            match deserialize(engine, &artifact) {
                Ok(component) => return Ok((component, true)),
                Err(e) => {
                    tracing::warn!(artifact = %artifact.display(), "discarding unusable cached plugin: {e:#}");
                    let _ = fs::remove_file(&artifact);
                }
            }
        }
        let compiled = precompile(bytes)?;
        if let Err(e) = self.store(&artifact, &compiled) {
            tracing::warn!(dir = %self.dir.display(), "cannot write the plugin cache: {e}");
        }
        let component = deserialize(engine, &artifact).map_err(|e| LoadError::Cache {
            dir: self.dir.clone(),
            reason: format!("the artifact just written does not load: {e:#}"),
        })?;
        Ok((component, false))
    }

    fn store(&self, artifact: &Path, compiled: &[u8]) -> std::io::Result<()> {
        let tmp = artifact.with_extension(format!("tmp{}", std::process::id()));
        let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        file.write_all(compiled)?;
        file.sync_all()?;
        fs::rename(&tmp, artifact)
    }
}

/// Loads an artifact this cache wrote.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, artifact: &Path) -> wasmtime::Result<Component> {
    // SAFETY: `artifact` lies in a cache directory checked by `AotCache::open` to be owned by
    // this user and writable by nobody else, under a name derived from the SHA-256 of the
    // plugin and the engine's compatibility hash; only `AotCache::store` writes there, with
    // the output of `Engine::precompile_component`. wasmtime still checks the header
    // (version, engine settings) and refuses a mismatch.
    unsafe { Component::deserialize_file(engine, artifact) }
}
