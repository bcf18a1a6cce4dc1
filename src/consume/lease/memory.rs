//! An in-process lease table with the same conditions as the DynamoDB one, for the engine's
//! tests; it can be made unavailable and counts its calls.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{Lease, LeaseCheckpoint, LeaseStore, StoreError};

#[derive(Debug, Default)]
struct Table {
    leases: BTreeMap<String, Lease>,
    unavailable: bool,
    calls: u64,
}

/// Clones share one table.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    table: Arc<Mutex<Table>>,
}

impl MemoryStore {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, Lease>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.calls += 1;
        if table.unavailable {
            return Err(StoreError::Unavailable("ServiceUnavailable".into()));
        }
        f(&mut table.leases)
    }

    pub fn set_unavailable(&self, unavailable: bool) {
        self.table.lock().unwrap().unavailable = unavailable;
    }

    pub fn calls(&self) -> u64 {
        self.table.lock().unwrap().calls
    }

    pub fn get(&self, key: &str) -> Option<Lease> {
        self.table.lock().unwrap().leases.get(key).cloned()
    }

    pub fn all(&self) -> Vec<Lease> {
        self.table
            .lock()
            .unwrap()
            .leases
            .values()
            .cloned()
            .collect()
    }

    pub fn put(&self, lease: Lease) {
        self.table
            .lock()
            .unwrap()
            .leases
            .insert(lease.key.clone(), lease);
    }
}

fn owned<'a>(
    leases: &'a mut BTreeMap<String, Lease>,
    key: &str,
    counter: u64,
    owner: Option<&str>,
) -> Result<&'a mut Lease, StoreError> {
    match leases.get_mut(key) {
        Some(lease)
            if lease.counter == counter
                && owner.is_none_or(|o| lease.owner.as_deref() == Some(o)) =>
        {
            Ok(lease)
        }
        _ => Err(StoreError::Conflict(key.to_string())),
    }
}

impl LeaseStore for MemoryStore {
    async fn list(&self) -> Result<Vec<Lease>, StoreError> {
        self.with(|leases| Ok(leases.values().cloned().collect()))
    }

    async fn create(&self, lease: &Lease) -> Result<(), StoreError> {
        self.with(|leases| {
            if leases.contains_key(&lease.key) {
                return Err(StoreError::Conflict(lease.key.clone()));
            }
            leases.insert(lease.key.clone(), lease.clone());
            Ok(())
        })
    }

    async fn take(&self, key: &str, counter: u64, owner: &str) -> Result<Lease, StoreError> {
        self.with(|leases| {
            let lease = owned(leases, key, counter, None)?;
            lease.owner = Some(owner.to_string());
            lease.counter += 1;
            lease.owner_switches += 1;
            lease.requested_by = None;
            Ok(lease.clone())
        })
    }

    async fn renew(
        &self,
        key: &str,
        owner: &str,
        counter: u64,
        checkpoint: Option<&LeaseCheckpoint>,
    ) -> Result<Lease, StoreError> {
        self.with(|leases| {
            let lease = owned(leases, key, counter, Some(owner))?;
            lease.counter += 1;
            if let Some(checkpoint) = checkpoint {
                lease.checkpoint = checkpoint.clone();
                lease.owner_switches = 0;
            }
            Ok(lease.clone())
        })
    }

    async fn request(
        &self,
        key: &str,
        counter: u64,
        holder: &str,
        requester: &str,
    ) -> Result<(), StoreError> {
        self.with(|leases| {
            let lease = owned(leases, key, counter, Some(holder))?;
            lease.requested_by = Some(requester.to_string());
            Ok(())
        })
    }

    async fn release(
        &self,
        key: &str,
        owner: &str,
        counter: u64,
        checkpoint: &LeaseCheckpoint,
        to: Option<&str>,
    ) -> Result<Lease, StoreError> {
        self.with(|leases| {
            let lease = owned(leases, key, counter, Some(owner))?;
            lease.counter += 1;
            lease.checkpoint = checkpoint.clone();
            lease.owner = to.map(str::to_string);
            lease.owner_switches = u64::from(to.is_some());
            lease.requested_by = None;
            Ok(lease.clone())
        })
    }

    async fn delete(&self, key: &str, counter: u64) -> Result<(), StoreError> {
        self.with(|leases| {
            owned(leases, key, counter, None)?;
            leases.remove(key);
            Ok(())
        })
    }
}
