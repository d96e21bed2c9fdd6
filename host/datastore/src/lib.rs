//! The datastore driver: what halo keeps on shared storage, on a mounted directory or on an
//! NFSv3 export the agent speaks to itself (no kernel mount, no root needed for it).
//!
//! Layout under `.halo/<cluster>/` (documented in `docs/datastores.md`):
//!
//! | path | what | written |
//! |---|---|---|
//! | `hosts/<host>.json` | the host's datastore heartbeat: counter, isolated, VMs it stopped | every interval, by the host (temp file + rename) |
//! | `claims/<vm>@<generation>.json` | the claim before a restart: master, epoch, target host | once, atomically: exactly one creator wins |
//! | `isolation/<host>/<vm>@<generation>.json` | "host X powered off VM Y at …" | by an isolated or fencing host |
//! | `vms/<vm>.json` | a protected VM and its domain XML, so any host can start it | by the master |
//!
//! A claim is created atomically *with its content*: the claim is written to a temporary file
//! first and then hard-linked to its name (`link(2)`, or the NFSv3 LINK procedure), which
//! fails when the name exists; the loser reads the winner's claim. Exactly one of any number
//! of racing creators wins (tested against the real NFS server and the real filesystem).
//!
//! Every operation has a timeout: a hung server makes the operation fail with
//! [`DatastoreError::Timeout`] and never blocks the agent's other work. Names are encoded for
//! file names (anything but `[A-Za-z0-9_-]` becomes `%XX`), and what is read is bounded and
//! parsed defensively: a bad file is reported, never trusted.

#![forbid(unsafe_code)]

mod dir;
mod driver;
mod etcd;
mod nfs;

use std::path::PathBuf;
use std::time::Duration;

use halo_core::{Claim, ClaimOutcome, DatastoreRecord};
use serde::{Deserialize, Serialize};

pub use dir::DirStore;
pub use driver::Datastores;
pub use etcd::EtcdStore;
pub use nfs::{NfsStore, NfsTarget};

/// Largest file halo reads from a datastore.
pub const MAX_FILE: usize = 4 * 1024 * 1024;

/// What went wrong on a datastore.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatastoreError {
    /// The operation did not finish in time.
    #[error("datastore {datastore}: {operation} timed out after {millis} ms")]
    Timeout {
        /// Datastore.
        datastore: String,
        /// What was being done.
        operation: String,
        /// The timeout.
        millis: u64,
    },
    /// The storage answered with an error.
    #[error("datastore {datastore}: {operation}: {detail}")]
    Io {
        /// Datastore.
        datastore: String,
        /// What was being done.
        operation: String,
        /// The error.
        detail: String,
    },
    /// A file holds something halo did not write (or a newer version's format).
    #[error("datastore {datastore}: {path} is not a valid halo record: {detail}")]
    BadRecord {
        /// Datastore.
        datastore: String,
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
}

/// A store's own error, before it is tied to a datastore and an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The name exists already (for `create_new`).
    Exists,
    /// The name does not exist.
    NotFound,
    /// The connection failed (reset, broken pipe, garbled reply): worth one retry on a new one.
    Transport(String),
    /// Anything else.
    Other(String),
}

/// Where a datastore is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A mounted directory.
    Directory(PathBuf),
    /// An NFSv3 export.
    Nfs(NfsTarget),
    /// An etcd cluster (the coordination backend `etcd`, decision 0017).
    Etcd {
        /// Its members' client URLs (`http://HOST:2379`).
        endpoints: Vec<String>,
        /// How long etcd keeps a host's heartbeat record after its last renewal.
        lease_ttl: Duration,
    },
}

/// An isolation record: what a host did to one of its VMs on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct IsolationRecord {
    /// The host.
    pub host: String,
    /// The VM.
    pub vm: String,
    /// The generation it ran under.
    pub generation: u64,
    /// `isolation` or `fence`.
    pub reason: String,
    /// When, on the host's wall clock (for people; never compared across hosts).
    pub at_unix_ms: u64,
}

/// A protected VM as every host can start it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ProtectedVm {
    /// The libvirt domain name.
    pub name: String,
    /// The libvirt domain XML.
    pub domain_xml: String,
    /// What halo does with it (priority, order, …), when set through the API; it takes the
    /// place of the VM's entry in `halo.toml` on every host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<halo_core::VmSpec>,
    /// Raised at every change (the writer's wall clock, ms): of two copies on two datastores,
    /// the higher wins.
    #[serde(default)]
    pub revision: u64,
}

impl halo_core::settings::RuntimeRecord for ProtectedVm {
    fn vm(&self) -> &str {
        &self.name
    }
    fn revision(&self) -> u64 {
        self.revision
    }
    fn spec(&self) -> Option<&halo_core::VmSpec> {
        self.spec.as_ref()
    }
}

/// Cluster-wide settings changed at run time through the API (they override `halo.toml`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClusterSettings {
    /// HA on or off for the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha_enabled: Option<bool>,
    /// Raised at every change, like [`ProtectedVm::revision`].
    #[serde(default)]
    pub revision: u64,
}

/// The primitive operations of a store, on paths relative to the cluster's directory.
enum Store {
    Dir(DirStore),
    Nfs(Box<NfsStore>),
    Etcd(Box<EtcdStore>),
}

impl Store {
    async fn ensure_dir(&self, dir: &str) -> Result<(), StoreError> {
        match self {
            Store::Dir(s) => s.ensure_dir(dir).await,
            Store::Nfs(s) => s.ensure_dir(dir).await,
            Store::Etcd(s) => s.ensure_dir(dir).await,
        }
    }

    async fn write_atomic(&self, path: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        match self {
            Store::Dir(s) => s.write_atomic(path, bytes).await,
            Store::Nfs(s) => s.write_atomic(path, bytes).await,
            Store::Etcd(s) => s.write_atomic(path, bytes).await,
        }
    }

    async fn create_new(&self, path: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        match self {
            Store::Dir(s) => s.create_new(path, bytes).await,
            Store::Nfs(s) => s.create_new(path, bytes).await,
            Store::Etcd(s) => s.create_new(path, bytes).await,
        }
    }

    async fn read(&self, path: &str) -> Result<Vec<u8>, StoreError> {
        match self {
            Store::Dir(s) => s.read(path).await,
            Store::Nfs(s) => s.read(path).await,
            Store::Etcd(s) => s.read(path).await,
        }
    }

    async fn list(&self, dir: &str) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Dir(s) => s.list(dir).await,
            Store::Nfs(s) => s.list(dir).await,
            Store::Etcd(s) => s.list(dir).await,
        }
    }

    async fn remove(&self, path: &str) -> Result<(), StoreError> {
        match self {
            Store::Dir(s) => s.remove(path).await,
            Store::Nfs(s) => s.remove(path).await,
            Store::Etcd(s) => s.remove(path).await,
        }
    }

    /// Every file right under `dir` with its content (etcd: one request; else a list and a
    /// read per file; a file removed meanwhile is left out).
    async fn read_dir(&self, dir: &str) -> Result<Vec<(String, Result<Vec<u8>, StoreError>)>, StoreError> {
        if let Store::Etcd(s) = self {
            return s.read_dir(dir).await;
        }
        let mut files = Vec::new();
        for name in self.list(dir).await? {
            match self.read(&format!("{dir}/{name}")).await {
                Ok(bytes) => files.push((name, Ok(bytes))),
                Err(StoreError::NotFound) => {} // removed meanwhile
                Err(e) => files.push((name, Err(e))),
            }
        }
        Ok(files)
    }

    /// After a failure or timeout: drop connections so the next operation starts clean.
    async fn reset(&self) {
        match self {
            Store::Nfs(s) => s.reset().await,
            Store::Etcd(s) => s.reset().await,
            Store::Dir(_) => {}
        }
    }
}

/// One datastore of one cluster.
pub struct Datastore {
    name: String,
    store: Store,
    timeout: Duration,
}

/// A name as a file name: `[A-Za-z0-9_-]` kept, every other byte `%XX`.
pub fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The inverse of [`encode_name`]; `None` for a name halo did not encode.
pub fn decode_name(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// The file whose content changes with every change of the protected VMs (see
/// [`Datastore::catalog_stamp`]).
const CATALOG_STAMP: &str = "vms.stamp";

/// How many polls of an unchanged catalog stamp a reader trusts before it reads every VM record
/// again anyway (at one poll a second: every 30 s). That bounds how long a record stays unseen
/// when its writer died before changing the stamp, or when files were copied in by hand.
pub const CATALOG_FULL_READ_ROUNDS: u64 = 30;

impl Datastore {
    /// Opens datastore `name` at `location` for `cluster`: creates the layout if missing.
    /// Every operation (this one too) is bounded by `timeout`.
    pub async fn open(
        name: &str,
        location: Location,
        cluster: &str,
        timeout: Duration,
    ) -> Result<Self, DatastoreError> {
        let datastore = Self::unopened(name, location, cluster, timeout);
        datastore.ensure_layout().await?;
        Ok(datastore)
    }

    /// The datastore without touching the storage (an agent starting while the storage is down
    /// keeps running; [`Datastore::ensure_layout`] is retried, and operations fail until the
    /// layout exists).
    pub fn unopened(name: &str, location: Location, cluster: &str, timeout: Duration) -> Self {
        let base = format!(".halo/{}", encode_name(cluster));
        let store = match location {
            Location::Directory(dir) => Store::Dir(DirStore::new(dir.join(&base))),
            Location::Nfs(target) => Store::Nfs(Box::new(NfsStore::new(target, base))),
            Location::Etcd { endpoints, lease_ttl } => {
                Store::Etcd(Box::new(EtcdStore::new(endpoints, format!("/halo/{}/", encode_name(cluster)), lease_ttl)))
            }
        };
        Self { name: name.to_string(), store, timeout }
    }

    /// Creates the layout if missing.
    pub async fn ensure_layout(&self) -> Result<(), DatastoreError> {
        self.bounded("create the layout", async {
            for dir in ["", "hosts", "claims", "isolation", "vms", "fences"] {
                self.store.ensure_dir(dir).await?;
            }
            Ok(())
        })
        .await
    }

    /// The datastore's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn bounded<T>(
        &self,
        operation: &str,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, DatastoreError> {
        self.bounded_or_absent(operation, work).await?.ok_or_else(|| DatastoreError::Io {
            datastore: self.name.clone(),
            operation: operation.to_string(),
            detail: "not found".into(),
        })
    }

    /// [`Datastore::bounded`] where a missing name is an answer (`None`), not an error.
    async fn bounded_or_absent<T>(
        &self,
        operation: &str,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<Option<T>, DatastoreError> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(value)) => Ok(Some(value)),
            Ok(Err(StoreError::NotFound)) => Ok(None),
            Ok(Err(error)) => {
                self.store.reset().await;
                Err(DatastoreError::Io {
                    datastore: self.name.clone(),
                    operation: operation.to_string(),
                    detail: match error {
                        StoreError::Exists => "exists already".into(),
                        StoreError::NotFound => "not found".into(),
                        StoreError::Other(detail) | StoreError::Transport(detail) => detail,
                    },
                })
            }
            Err(_) => {
                self.store.reset().await;
                Err(DatastoreError::Timeout {
                    datastore: self.name.clone(),
                    operation: operation.to_string(),
                    millis: self.timeout.as_millis() as u64,
                })
            }
        }
    }

    fn parse<T: for<'de> Deserialize<'de>>(&self, path: &str, bytes: &[u8]) -> Result<T, DatastoreError> {
        serde_json::from_slice(bytes).map_err(|e| DatastoreError::BadRecord {
            datastore: self.name.clone(),
            path: path.to_string(),
            detail: e.to_string(),
        })
    }

    fn json<T: Serialize>(value: &T) -> Vec<u8> {
        // The record types serialize to JSON without failure (no maps with non-string keys).
        serde_json::to_vec(value).unwrap_or_default()
    }

    /// Whether changes can be watched (etcd) rather than polled (a datastore).
    pub fn watches(&self) -> bool {
        matches!(self.store, Store::Etcd(_))
    }

    /// etcd: watches the protected VMs and the settings and calls `changed` at every change,
    /// until the watch breaks; returns why. A datastore has no watches: `None` at once (it is
    /// polled).
    pub async fn watch_catalog(&self, changed: &(dyn Fn() + Sync)) -> Option<DatastoreError> {
        let Store::Etcd(store) = &self.store else { return None };
        let ended = store.watch(&["vms", "settings.json"], changed).await;
        store.reset().await;
        Some(DatastoreError::Io {
            datastore: self.name.clone(),
            operation: "watch the protected VMs".into(),
            detail: format!("{ended:?}"),
        })
    }

    /// Writes this host's heartbeat record (whole, atomically).
    pub async fn write_heartbeat(&self, record: &DatastoreRecord) -> Result<(), DatastoreError> {
        let path = format!("hosts/{}.json", encode_name(&record.host));
        self.bounded("write the heartbeat", self.store.write_atomic(&path, Self::json(record))).await
    }

    /// Reads every host's heartbeat record. A record that cannot be read or parsed is left
    /// out and returned among the problems (the others are still good).
    pub async fn read_heartbeats(&self) -> Result<(Vec<DatastoreRecord>, Vec<DatastoreError>), DatastoreError> {
        let raw = self
            .bounded("read the heartbeats", async {
                let files = self.store.read_dir("hosts").await?;
                Ok(files
                    .into_iter()
                    .filter(|(name, _)| name.ends_with(".json"))
                    .map(|(name, bytes)| (format!("hosts/{name}"), bytes))
                    .collect::<Vec<_>>())
            })
            .await?;
        let mut records = Vec::new();
        let mut problems = Vec::new();
        for (path, bytes) in raw {
            let parsed = match bytes {
                Ok(bytes) => self.parse::<DatastoreRecord>(&path, &bytes),
                Err(e) => Err(DatastoreError::BadRecord {
                    datastore: self.name.clone(),
                    path: path.clone(),
                    detail: format!("{e:?}"),
                }),
            };
            match parsed {
                Ok(record)
                    if Some(encode_name(&record.host))
                        == path.strip_prefix("hosts/").and_then(|p| p.strip_suffix(".json")).map(String::from) =>
                {
                    records.push(record)
                }
                Ok(record) => problems.push(DatastoreError::BadRecord {
                    datastore: self.name.clone(),
                    path,
                    detail: format!("it names host {} (not its file name)", record.host),
                }),
                Err(e) => problems.push(e),
            }
        }
        records.sort_by(|a, b| a.host.cmp(&b.host));
        Ok((records, problems))
    }

    /// Takes the claim `(vm, generation)`: `Won` if this call created it, `Lost(holder)` if
    /// it existed, `Failed` if the datastore could not say (then nothing may start).
    pub async fn claim(&self, claim: &Claim) -> ClaimOutcome {
        let path = format!("claims/{}@{}.json", encode_name(&claim.vm), claim.generation);
        let created = tokio::time::timeout(self.timeout, self.store.create_new(&path, Self::json(claim))).await;
        match created {
            Ok(Ok(())) => ClaimOutcome::Won,
            Ok(Err(StoreError::Exists)) => {
                match self.bounded("read the existing claim", self.store.read(&path)).await {
                    Ok(bytes) => match self.parse::<Claim>(&path, &bytes) {
                        Ok(holder) => ClaimOutcome::Lost(holder),
                        Err(e) => ClaimOutcome::Failed(e.to_string()),
                    },
                    Err(e) => ClaimOutcome::Failed(e.to_string()),
                }
            }
            Ok(Err(e)) => {
                self.store.reset().await;
                ClaimOutcome::Failed(format!("datastore {}: claim {path}: {e:?}", self.name))
            }
            Err(_) => {
                self.store.reset().await;
                ClaimOutcome::Failed(format!(
                    "datastore {}: claim {path} timed out after {} ms (its outcome is unknown)",
                    self.name,
                    self.timeout.as_millis()
                ))
            }
        }
    }

    /// Reads a claim, if it exists.
    pub async fn read_claim(&self, vm: &str, generation: u64) -> Result<Option<Claim>, DatastoreError> {
        let path = format!("claims/{}@{generation}.json", encode_name(vm));
        // A failed attempt reset the connection (it may have died with a server restart):
        // one more on a fresh one.
        let read = match self.bounded_or_absent("read a claim", self.store.read(&path)).await {
            Err(_) => self.bounded_or_absent("read a claim", self.store.read(&path)).await,
            answer => answer,
        };
        match read? {
            Some(bytes) => self.parse(&path, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Records that a host stopped a VM on its own.
    pub async fn record_isolation(&self, record: &IsolationRecord) -> Result<(), DatastoreError> {
        let dir = format!("isolation/{}", encode_name(&record.host));
        let path = format!("{dir}/{}@{}.json", encode_name(&record.vm), record.generation);
        self.bounded("record an isolation stop", async {
            self.store.ensure_dir(&dir).await?;
            self.store.write_atomic(&path, Self::json(record)).await
        })
        .await
    }

    /// The isolation records of a host.
    pub async fn isolation_records(&self, host: &str) -> Result<Vec<IsolationRecord>, DatastoreError> {
        let dir = format!("isolation/{}", encode_name(host));
        let files = self
            .bounded("read isolation records", async {
                let names = match self.store.list(&dir).await {
                    Ok(names) => names,
                    Err(StoreError::NotFound) => return Ok(Vec::new()),
                    Err(e) => return Err(e),
                };
                let mut files = Vec::new();
                for name in names.into_iter().filter(|n| n.ends_with(".json")) {
                    let path = format!("{dir}/{name}");
                    files.push((path.clone(), self.store.read(&path).await?));
                }
                Ok(files)
            })
            .await?;
        files.iter().map(|(path, bytes)| self.parse(path, bytes)).collect()
    }

    /// Stores a protected VM's definition, then changes the catalog stamp.
    pub async fn put_protected_vm(&self, vm: &ProtectedVm) -> Result<(), DatastoreError> {
        let path = format!("vms/{}.json", encode_name(&vm.name));
        self.bounded("store a protected VM", self.store.write_atomic(&path, Self::json(vm))).await?;
        self.restamp_catalog().await
    }

    /// Removes a protected VM's definition (unprotect), then changes the catalog stamp.
    pub async fn remove_protected_vm(&self, name: &str) -> Result<(), DatastoreError> {
        let path = format!("vms/{}.json", encode_name(name));
        // As in `read_claim`: once more on a fresh connection after a failure.
        match self.bounded_or_absent("remove a protected VM", self.store.remove(&path)).await {
            Err(_) => self.bounded_or_absent("remove a protected VM", self.store.remove(&path)).await.map(drop)?,
            answer => answer.map(drop)?,
        }
        self.restamp_catalog().await
    }

    /// The catalog stamp: a token that changes whenever a protected VM is stored or removed
    /// here (`None` while none ever was). Agents poll it instead of reading every VM record
    /// each second, and read the records again only when it changed. The order makes that
    /// safe: a writer writes the record, then the stamp; a reader reads the stamp, then the
    /// records — a record written after the reader's listing is always followed by a stamp
    /// the reader has not seen yet. A writer that dies between the two leaves its record
    /// unseen until the readers' periodic full read ([`CATALOG_FULL_READ_ROUNDS`]).
    pub async fn catalog_stamp(&self) -> Result<Option<String>, DatastoreError> {
        match self.bounded_or_absent("read the catalog stamp", self.store.read(CATALOG_STAMP)).await? {
            Some(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            None => Ok(None),
        }
    }

    async fn restamp_catalog(&self) -> Result<(), DatastoreError> {
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let stamp = format!(
            "{}.{:09}-{}-{}",
            now.as_secs(),
            now.subsec_nanos(),
            std::process::id(),
            WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        self.bounded("change the catalog stamp", self.store.write_atomic(CATALOG_STAMP, stamp.into_bytes())).await
    }

    /// Keeps what became of a fence of `record.host` (the latest per host, whole, atomically),
    /// with the wall-clock time it was written.
    pub async fn put_fence_record(&self, record: &halo_core::FenceRecord) -> Result<(), DatastoreError> {
        let path = format!("fences/{}.json", encode_name(&record.host));
        let written = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut value = serde_json::to_value(record).unwrap_or(serde_json::Value::Null);
        if let Some(map) = value.as_object_mut() {
            map.insert("written-at-unix-ms".into(), serde_json::json!(written.as_millis() as u64));
        }
        let bytes = serde_json::to_vec_pretty(&value).unwrap_or_default();
        // (A datastore laid out by an older agent has no `fences` yet.)
        self.bounded("store a fence record", async {
            self.store.ensure_dir("fences").await?;
            self.store.write_atomic(&path, bytes).await
        })
        .await
    }

    /// The latest fence record of `host`, if any.
    pub async fn fence_record(&self, host: &str) -> Result<Option<halo_core::FenceRecord>, DatastoreError> {
        let path = format!("fences/{}.json", encode_name(host));
        match self.bounded_or_absent("read a fence record", self.store.read(&path)).await? {
            Some(bytes) => self.parse(&path, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Stores the cluster's run-time settings (whole, atomically).
    pub async fn put_settings(&self, settings: &ClusterSettings) -> Result<(), DatastoreError> {
        self.bounded("store the cluster settings", self.store.write_atomic("settings.json", Self::json(settings))).await
    }

    /// The cluster's run-time settings (defaults when none were stored).
    pub async fn settings(&self) -> Result<ClusterSettings, DatastoreError> {
        match self.bounded_or_absent("read the cluster settings", self.store.read("settings.json")).await? {
            Some(bytes) => self.parse("settings.json", &bytes),
            None => Ok(ClusterSettings::default()),
        }
    }

    /// Every protected VM's definition. A record that cannot be read or parsed, or that names
    /// another VM than its file, is left out and returned among the problems with the VM its
    /// file name says (the others are still good); a record removed meanwhile is just gone.
    pub async fn protected_vms(&self) -> Result<(Vec<ProtectedVm>, Vec<(String, DatastoreError)>), DatastoreError> {
        let raw = self
            .bounded("read the protected VMs", async {
                let mut files = Vec::new();
                for name in self.store.list("vms").await?.into_iter().filter(|n| n.ends_with(".json")) {
                    let path = format!("vms/{name}");
                    match self.store.read(&path).await {
                        Ok(bytes) => files.push((name, path, Ok(bytes))),
                        Err(StoreError::NotFound) => {} // unprotected meanwhile
                        Err(e) => files.push((name, path, Err(e))),
                    }
                }
                Ok(files)
            })
            .await?;
        let mut vms = Vec::new();
        let mut problems = Vec::new();
        for (file, path, bytes) in raw {
            let encoded = file.trim_end_matches(".json");
            let vm = decode_name(encoded).unwrap_or_else(|| encoded.to_string());
            let bad =
                |detail: String| DatastoreError::BadRecord { datastore: self.name.clone(), path: path.clone(), detail };
            match bytes.map_err(|e| bad(format!("{e:?}"))).and_then(|b| self.parse::<ProtectedVm>(&path, &b)) {
                Ok(record) if record.name == vm => vms.push(record),
                Ok(record) => problems.push((vm, bad(format!("it names VM {} (not its file name)", record.name)))),
                Err(e) => problems.push((vm, e)),
            }
        }
        vms.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((vms, problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_for_files_and_back() {
        for name in ["vm-1", "web_2", "a.b", "../etc/passwd", "größe", "x y%z", ""] {
            let encoded = encode_name(name);
            assert!(encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'%'));
            assert!(!encoded.contains('/') && !encoded.contains('.'));
            assert_eq!(decode_name(&encoded).as_deref(), Some(name));
        }
        assert_eq!(decode_name("bad.name"), None);
        assert_eq!(decode_name("%Z1"), None);
    }
}
