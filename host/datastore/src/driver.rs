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

    /// Rewrites `vm`'s recorded definition with its disks moved (old → new): the newest
    /// record among the datastores, its revision raised, written back to every datastore.
    /// The new definition when at least one datastore took it.
    pub fn rewrite_definition(
        &self,
        vm: &str,
        moved: &[(String, String)],
    ) -> impl std::future::Future<Output = Result<String, String>> + Send + 'static {
        let stores: Vec<Arc<Datastore>> = self.stores.values().cloned().collect();
        let (vm, moved) = (vm.to_string(), moved.to_vec());
        async move {
            let mut newest: Option<crate::ProtectedVm> = None;
            let mut failures = Vec::new();
            for store in &stores {
                match store.protected_vms().await {
                    Ok((records, _)) => {
                        if let Some(record) = records.into_iter().find(|r| r.name == vm)
                            && newest.as_ref().is_none_or(|n| record.revision > n.revision)
                        {
                            newest = Some(record);
                        }
                    }
                    Err(e) => failures.push(e.to_string()),
                }
            }
            let Some(mut record) = newest else {
                return Err(format!("no datastore holds {vm}'s definition {}", failures.join("; ")));
            };
            record.domain_xml = halo_core::disks::with_disks_moved(&record.domain_xml, &moved)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            record.revision = now.max(record.revision + 1);
            let mut written = 0;
            for store in &stores {
                match store.put_protected_vm(&record).await {
                    Ok(()) => written += 1,
                    Err(e) => failures.push(e.to_string()),
                }
            }
            if written == 0 {
                return Err(format!("no datastore took {vm}'s new definition: {}", failures.join("; ")));
            }
            for failure in failures {
                tracing::warn!(vm, "a datastore missed the new definition: {failure}");
            }
            Ok(record.domain_xml)
        }
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

    fn record_definition(&mut self, vm: &str, moved: &[(String, String)]) {
        let (inputs, name, write) = (self.inputs.clone(), vm.to_string(), self.rewrite_definition(vm, moved));
        self.runtime.spawn(async move {
            let result = write.await.map(drop);
            let _ = inputs.send(Input::DefinitionRecorded { vm: name, result }).await;
        });
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
