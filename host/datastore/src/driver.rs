//! The core's [`DatastoreDriver`] on real datastores: each request runs as a task on the
//! agent's runtime and its outcome comes back as an input of the node (over the agent's
//! bounded input queue: a task waits for room, the caller never does).

use std::collections::BTreeMap;
use std::sync::Arc;

use halo_core::drivers::DatastoreDriver;
use halo_core::{Claim, ClaimOutcome, DatastoreRecord, Input};
use tokio::runtime::Handle;
use tokio::sync::mpsc::Sender;

use crate::Datastore;

/// The datastores of one agent, by name.
pub struct Datastores {
    stores: BTreeMap<String, Arc<Datastore>>,
    inputs: Sender<Input>,
    runtime: Handle,
}

impl Datastores {
    /// `stores` (opened), delivering outcomes to `inputs`, running on `runtime`.
    pub fn new(stores: Vec<Datastore>, inputs: Sender<Input>, runtime: Handle) -> Self {
        let stores = stores.into_iter().map(|s| (s.name().to_string(), Arc::new(s))).collect();
        Self { stores, inputs, runtime }
    }

    /// One datastore, for the agent's own use (isolation records, protected VMs).
    pub fn get(&self, name: &str) -> Option<Arc<Datastore>> {
        self.stores.get(name).cloned()
    }

    fn store(&self, name: &str) -> Result<Arc<Datastore>, String> {
        self.stores.get(name).cloned().ok_or_else(|| format!("no datastore named {name} is configured"))
    }
}

impl DatastoreDriver for Datastores {
    fn write_record(&mut self, datastore: &str, record: &DatastoreRecord) {
        let (inputs, name, record) = (self.inputs.clone(), datastore.to_string(), record.clone());
        let Ok(store) = self.store(datastore) else {
            self.runtime
                .spawn(async move { inputs.send(Input::DatastoreWritten { datastore: name, ok: false }).await });
            return;
        };
        self.runtime.spawn(async move {
            let ok = match store.write_heartbeat(&record).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(datastore = %name, "{e}");
                    false
                }
            };
            let _ = inputs.send(Input::DatastoreWritten { datastore: name, ok }).await;
        });
    }

    fn record_fence(&mut self, record: &halo_core::FenceRecord) {
        for (name, store) in &self.stores {
            let (name, store, record) = (name.clone(), Arc::clone(store), record.clone());
            self.runtime.spawn(async move {
                if let Err(e) = store.put_fence_record(&record).await {
                    tracing::warn!(datastore = %name, host = %record.host, "could not keep the fence record: {e}");
                }
            });
        }
    }

    fn read_records(&mut self, datastore: &str) {
        let (inputs, name) = (self.inputs.clone(), datastore.to_string());
        let store = match self.store(datastore) {
            Ok(store) => store,
            Err(e) => {
                self.runtime
                    .spawn(async move { inputs.send(Input::DatastoreRead { datastore: name, records: Err(e) }).await });
                return;
            }
        };
        self.runtime.spawn(async move {
            let records = match store.read_heartbeats().await {
                Ok((records, problems)) => {
                    for problem in problems {
                        tracing::warn!(datastore = %name, "{problem}");
                    }
                    Ok(records)
                }
                Err(e) => Err(e.to_string()),
            };
            let _ = inputs.send(Input::DatastoreRead { datastore: name, records }).await;
        });
    }

    fn claim(&mut self, datastore: &str, claim: &Claim) {
        let (inputs, claim) = (self.inputs.clone(), claim.clone());
        let store = match self.store(datastore) {
            Ok(store) => store,
            Err(e) => {
                let outcome = ClaimOutcome::Failed(e);
                self.runtime.spawn(async move { inputs.send(Input::ClaimResult { claim, outcome }).await });
                return;
            }
        };
        self.runtime.spawn(async move {
            let began = std::time::Instant::now();
            let outcome = store.claim(&claim).await;
            tracing::debug!("claim {}@{}: {:.3}s", claim.vm, claim.generation, began.elapsed().as_secs_f64());
            let _ = inputs.send(Input::ClaimResult { claim, outcome }).await;
        });
    }

    /// Every datastore is asked (a claim lives on the one its master could read): the claim
    /// found anywhere, else `None` when every datastore answered, else the first error.
    fn check_claim(&mut self, vm: &str, generation: u64) {
        let (inputs, vm) = (self.inputs.clone(), vm.to_string());
        let stores: Vec<Arc<Datastore>> = self.stores.values().cloned().collect();
        self.runtime.spawn(async move {
            let mut holder = Ok(None);
            for store in stores {
                match store.read_claim(&vm, generation).await {
                    Ok(Some(claim)) => {
                        holder = Ok(Some(claim));
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => holder = holder.and(Err(e.to_string())),
                }
            }
            let _ = inputs.send(Input::ClaimChecked { vm, generation, holder }).await;
        });
    }
}
