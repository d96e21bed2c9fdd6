//! A coordination store on etcd (decision 0017): the same records as on a datastore, as keys
//! under `/halo/<cluster>/`, spoken over etcd's public gRPC API with the `etcd-client` crate.
//!
//! - A host's heartbeat record (`hosts/<host>.json`) is put **under a lease** of this agent:
//!   when the host stops renewing it (it died, or lost etcd), etcd deletes the record after the
//!   lease's time to live. The record's counter still says when the host last wrote, as on a
//!   datastore; the lease keeps dead hosts from lingering.
//! - A name that must be created once (a claim, `claims/<vm>@<generation>.json`) is created
//!   in one transaction: *if the key's create revision is 0, put it*. etcd is linearizable, so
//!   of any number of racing creators on any members exactly one transaction succeeds.
//! - Reads are linearizable (etcd's default): a member cut from its quorum answers nothing
//!   rather than something old.
//! - The protected-VM catalog and the run-time settings are keys; [`EtcdStore::watch`] wakes
//!   a reader when one changes.
//!
//! The client connects on first use, on the runtime that uses it (the liveness thread has its
//! own), and is dropped after a failure so the next operation starts on a new connection.

use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use tokio::sync::Mutex;

use crate::{MAX_FILE, StoreError};

/// An etcd cluster, seen as a store.
pub struct EtcdStore {
    endpoints: Vec<String>,
    /// `/halo/<cluster>/`: every key starts with it.
    prefix: String,
    /// The heartbeat lease's time to live.
    lease_ttl: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    client: Option<Client>,
    /// The heartbeat lease and when it was last renewed.
    lease: Option<(i64, Instant)>,
}

fn transport(e: &etcd_client::Error) -> StoreError {
    StoreError::Transport(format!("etcd: {e}"))
}

impl EtcdStore {
    /// The store of the cluster whose keys start with `prefix`, on `endpoints` (`http://HOST:PORT`).
    pub fn new(endpoints: Vec<String>, prefix: String, lease_ttl: Duration) -> Self {
        Self { endpoints, prefix, lease_ttl, state: Mutex::default() }
    }

    fn key(&self, path: &str) -> String {
        format!("{}{path}", self.prefix)
    }

    async fn client(&self) -> Result<Client, StoreError> {
        let mut state = self.state.lock().await;
        if let Some(client) = &state.client {
            return Ok(client.clone());
        }
        // Every request is bounded by the datastore's own timeout around it; these keep a
        // dead member from holding a request longer than that.
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1));
        let client = Client::connect(&self.endpoints, Some(options)).await.map_err(|e| transport(&e))?;
        state.client = Some(client.clone());
        Ok(client)
    }

    pub(crate) async fn ensure_dir(&self, _dir: &str) -> Result<(), StoreError> {
        // Keys need no directories; asking for one checks that the cluster answers.
        self.client()
            .await?
            .get(self.key(""), Some(GetOptions::new().with_count_only()))
            .await
            .map_err(|e| transport(&e))?;
        Ok(())
    }

    /// A put replaces the whole value at once. Heartbeat records go under the lease.
    pub(crate) async fn write_atomic(&self, path: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        if !path.starts_with("hosts/") {
            client.put(self.key(path), bytes, None).await.map_err(|e| transport(&e))?;
            return Ok(());
        }
        let lease = self.lease(&mut client).await?;
        match client.put(self.key(path), bytes.clone(), Some(PutOptions::new().with_lease(lease))).await {
            Ok(_) => Ok(()),
            // The lease ran out (this host was away longer than its time to live): a new one.
            Err(e) if e.to_string().contains("lease not found") => {
                self.state.lock().await.lease = None;
                let lease = self.lease(&mut client).await?;
                client
                    .put(self.key(path), bytes, Some(PutOptions::new().with_lease(lease)))
                    .await
                    .map_err(|e| transport(&e))?;
                Ok(())
            }
            Err(e) => Err(transport(&e)),
        }
    }

    /// The heartbeat lease: granted once, renewed when a third of its time to live has passed.
    async fn lease(&self, client: &mut Client) -> Result<i64, StoreError> {
        let ttl = i64::try_from(self.lease_ttl.as_secs().max(2)).unwrap_or(60);
        let held = self.state.lock().await.lease;
        match held {
            Some((id, renewed)) if renewed.elapsed() < self.lease_ttl / 3 => Ok(id),
            Some((id, _)) => {
                let (mut keeper, mut answers) = client.lease_keep_alive(id).await.map_err(|e| transport(&e))?;
                keeper.keep_alive().await.map_err(|e| transport(&e))?;
                let answer = answers.message().await.map_err(|e| transport(&e))?;
                if answer.is_some_and(|a| a.ttl() > 0) {
                    self.state.lock().await.lease = Some((id, Instant::now()));
                    return Ok(id);
                }
                // Expired: the next put says "lease not found" unless a new one is taken now.
                let granted = client.lease_grant(ttl, None).await.map_err(|e| transport(&e))?;
                self.state.lock().await.lease = Some((granted.id(), Instant::now()));
                Ok(granted.id())
            }
            None => {
                let granted = client.lease_grant(ttl, None).await.map_err(|e| transport(&e))?;
                self.state.lock().await.lease = Some((granted.id(), Instant::now()));
                Ok(granted.id())
            }
        }
    }

    /// One transaction: put the key if it was never created; else `Exists`.
    pub(crate) async fn create_new(&self, path: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let key = self.key(path);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, bytes, None)]);
        let answer = self.client().await?.txn(txn).await.map_err(|e| transport(&e))?;
        if answer.succeeded() { Ok(()) } else { Err(StoreError::Exists) }
    }

    pub(crate) async fn read(&self, path: &str) -> Result<Vec<u8>, StoreError> {
        let answer = self.client().await?.get(self.key(path), None).await.map_err(|e| transport(&e))?;
        let kv = answer.kvs().first().ok_or(StoreError::NotFound)?;
        if kv.value().len() > MAX_FILE {
            return Err(StoreError::Other(format!("larger than {MAX_FILE} bytes")));
        }
        Ok(kv.value().to_vec())
    }

    /// The names right under `dir` (a deeper key gives its first part), sorted.
    pub(crate) async fn list(&self, dir: &str) -> Result<Vec<String>, StoreError> {
        let under = self.key(&format!("{dir}/"));
        let answer = self
            .client()
            .await?
            .get(under.clone(), Some(GetOptions::new().with_prefix().with_keys_only()))
            .await
            .map_err(|e| transport(&e))?;
        let mut names: Vec<String> = answer
            .kvs()
            .iter()
            .filter_map(|kv| {
                let rest = kv.key().strip_prefix(under.as_bytes())?;
                let first = rest.split(|&b| b == b'/').next()?;
                String::from_utf8(first.to_vec()).ok().filter(|n| !n.is_empty())
            })
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Every value right under `dir`, by name, in one request (the heartbeat records).
    pub(crate) async fn read_dir(&self, dir: &str) -> Result<Vec<(String, Result<Vec<u8>, StoreError>)>, StoreError> {
        let under = self.key(&format!("{dir}/"));
        let answer = self
            .client()
            .await?
            .get(under.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| transport(&e))?;
        Ok(answer
            .kvs()
            .iter()
            .filter_map(|kv| {
                let name = String::from_utf8(kv.key().strip_prefix(under.as_bytes())?.to_vec()).ok()?;
                if name.contains('/') {
                    return None;
                }
                let value = if kv.value().len() > MAX_FILE {
                    Err(StoreError::Other(format!("larger than {MAX_FILE} bytes")))
                } else {
                    Ok(kv.value().to_vec())
                };
                Some((name, value))
            })
            .collect())
    }

    pub(crate) async fn remove(&self, path: &str) -> Result<(), StoreError> {
        let answer = self.client().await?.delete(self.key(path), None).await.map_err(|e| transport(&e))?;
        if answer.deleted() == 0 { Err(StoreError::NotFound) } else { Ok(()) }
    }

    /// After a failure: the next operation connects anew (the lease is kept: it lives in etcd).
    pub(crate) async fn reset(&self) {
        self.state.lock().await.client = None;
    }

    /// Watches every key under `dirs` and calls `changed` on every change; returns when the
    /// watch ends (the connection broke) with why.
    pub(crate) async fn watch(&self, dirs: &[&str], changed: &(dyn Fn() + Sync)) -> StoreError {
        let mut client = match self.client().await {
            Ok(client) => client,
            Err(e) => return e,
        };
        let mut streams = Vec::new();
        for dir in dirs {
            match client.watch(self.key(dir), Some(WatchOptions::new().with_prefix())).await {
                Ok(stream) => streams.push(stream),
                Err(e) => return transport(&e),
            }
        }
        let mut all = merged(streams);
        loop {
            match all.recv().await {
                Some(Ok(())) => changed(),
                Some(Err(e)) => return e,
                None => return StoreError::Transport("etcd: the watch ended".into()),
            }
        }
    }
}

/// The watch streams' events as one channel (`Ok` per response, `Err` when one breaks).
fn merged(streams: Vec<etcd_client::WatchStream>) -> tokio::sync::mpsc::Receiver<Result<(), StoreError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for mut stream in streams {
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                let event = match stream.message().await {
                    Ok(Some(answer)) if answer.canceled() => Err(StoreError::Transport("etcd: watch canceled".into())),
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err(StoreError::Transport("etcd: the watch ended".into())),
                    Err(e) => Err(transport(&e)),
                };
                let end = event.is_err();
                if tx.send(event).await.is_err() || end {
                    return;
                }
            }
        });
    }
    rx
}
