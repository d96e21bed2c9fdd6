//! A datastore on a mounted directory (a cluster filesystem, or an NFS mount the operator
//! made). Blocking filesystem calls run on tokio's blocking pool; the caller's timeout bounds
//! the wait (a call stuck in a hung mount keeps its thread, never the agent).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{MAX_FILE, StoreError};

static TEMP: AtomicU64 = AtomicU64::new(0);

/// The directory store.
pub struct DirStore {
    base: PathBuf,
}

fn other(e: &std::io::Error) -> StoreError {
    match e.kind() {
        std::io::ErrorKind::NotFound => StoreError::NotFound,
        std::io::ErrorKind::AlreadyExists => StoreError::Exists,
        _ => StoreError::Other(e.to_string()),
    }
}

/// A temporary name next to `path` (starts with a dot: never listed, never a record name).
fn temp_of(path: &Path) -> PathBuf {
    let n = TEMP.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

impl DirStore {
    /// A store rooted at `base` (the cluster's directory on the datastore).
    pub fn new(base: PathBuf) -> Self {
        Self { base }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(PathBuf) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let base = self.base.clone();
        tokio::task::spawn_blocking(move || f(base)).await.map_err(|e| StoreError::Other(e.to_string()))?
    }

    pub(crate) async fn ensure_dir(&self, dir: &str) -> Result<(), StoreError> {
        let dir = dir.to_string();
        self.blocking(move |base| std::fs::create_dir_all(base.join(dir)).map_err(|e| other(&e))).await
    }

    /// Write a temporary file, sync it, rename it over the name: readers see the old record
    /// or the new one, never half of one.
    pub(crate) async fn write_atomic(&self, path: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let path = path.to_string();
        self.blocking(move |base| {
            let target = base.join(path);
            let temp = temp_of(&target);
            let written = write_synced(&temp, &bytes).and_then(|()| std::fs::rename(&temp, &target));
            if written.is_err() {
                let _ = std::fs::remove_file(&temp);
            }
            written.map_err(|e| other(&e))
        })
        .await
    }

    /// Write a temporary file, then hard-link it to the name: `link(2)` fails if the name
    /// exists, so exactly one creator wins, and the name never exists without its content.
    pub(crate) async fn create_new(&self, path: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let path = path.to_string();
        self.blocking(move |base| {
            let target = base.join(path);
            let temp = temp_of(&target);
            let linked = write_synced(&temp, &bytes).and_then(|()| std::fs::hard_link(&temp, &target));
            let _ = std::fs::remove_file(&temp);
            linked.map_err(|e| other(&e))
        })
        .await
    }

    pub(crate) async fn read(&self, path: &str) -> Result<Vec<u8>, StoreError> {
        let path = path.to_string();
        self.blocking(move |base| {
            let file = std::fs::File::open(base.join(path)).map_err(|e| other(&e))?;
            let mut bytes = Vec::new();
            file.take(MAX_FILE as u64 + 1).read_to_end(&mut bytes).map_err(|e| other(&e))?;
            if bytes.len() > MAX_FILE {
                return Err(StoreError::Other(format!("larger than {MAX_FILE} bytes")));
            }
            Ok(bytes)
        })
        .await
    }

    pub(crate) async fn list(&self, dir: &str) -> Result<Vec<String>, StoreError> {
        let dir = dir.to_string();
        self.blocking(move |base| {
            let mut names = Vec::new();
            for entry in std::fs::read_dir(base.join(dir)).map_err(|e| other(&e))? {
                let name = entry.map_err(|e| other(&e))?.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') {
                    names.push(name);
                }
            }
            names.sort();
            Ok(names)
        })
        .await
    }

    pub(crate) async fn remove(&self, path: &str) -> Result<(), StoreError> {
        let path = path.to_string();
        self.blocking(move |base| std::fs::remove_file(base.join(path)).map_err(|e| other(&e))).await
    }
}
