//! Shard leases: several `consume` replicas share a stream's shards through a lease table in the
//! KCL's schema, so that every shard is read by one replica at a time and a dead replica's shards
//! move to the others within the failover time.
//!
//! - [`Lease`] is one row (`leaseKey` = shard id, `leaseOwner`, `leaseCounter`, `checkpoint`,
//!   `checkpointSubSequenceNumber`, `ownerSwitchesSinceCheckpoint`, `parentShardId`), and
//!   [`LeaseStore`] the table: every write is conditional on the `leaseCounter` the writer last saw,
//!   so a replica that lost a lease can neither renew it nor move its checkpoint.
//! - `balance` decides what a replica takes: free and expired leases first, then at most one lease
//!   per round from the most loaded replica, asked for rather than stolen (graceful handoff).
//! - `engine` holds the leases of one replica: renews them (writing the checkpoint with the
//!   renewal), hands over the ones asked for after a final checkpoint, stops reading a shard before
//!   its lease could expire elsewhere, and releases everything at a graceful stop.
//! - `dynamo` is the DynamoDB table; `memory` an in-process table for the engine's tests.
//!
//! The table holds no timestamps: each replica judges expiry from a counter that has not moved for
//! the failover time on its own clock, so replicas need no clock agreement.

pub mod balance;
pub mod dynamo;
pub mod engine;
#[cfg(test)]
pub mod memory;
#[cfg(test)]
mod tests;

use std::future::Future;

use super::position::{Position, SequenceNumber};

/// The KCL's checkpoint sentinels.
pub const TRIM_HORIZON: &str = "TRIM_HORIZON";
pub const LATEST: &str = "LATEST";
pub const SHARD_END: &str = "SHARD_END";

/// Where a lease's shard was read and forwarded to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseCheckpoint {
    /// Nothing yet: start at the oldest record kept.
    TrimHorizon,
    /// Nothing yet: start at the tip.
    Latest,
    /// Forwarded through this user record.
    At(Position),
    /// The closed shard was forwarded to its end: its children may start.
    ShardEnd,
}

impl LeaseCheckpoint {
    /// The `checkpoint` and `checkpointSubSequenceNumber` attributes.
    pub fn to_attributes(&self) -> (&str, u64) {
        match self {
            LeaseCheckpoint::TrimHorizon => (TRIM_HORIZON, 0),
            LeaseCheckpoint::Latest => (LATEST, 0),
            LeaseCheckpoint::ShardEnd => (SHARD_END, 0),
            LeaseCheckpoint::At(position) => (position.sequence.as_str(), position.sub_sequence),
        }
    }

    /// Read the attributes back; an unknown sentinel (AT_TIMESTAMP from a KCL application) reads
    /// as TRIM_HORIZON, the safe side.
    pub fn from_attributes(checkpoint: &str, sub_sequence: u64) -> LeaseCheckpoint {
        match checkpoint {
            LATEST => LeaseCheckpoint::Latest,
            SHARD_END => LeaseCheckpoint::ShardEnd,
            text if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
                LeaseCheckpoint::At(Position {
                    sequence: SequenceNumber::new(text),
                    sub_sequence,
                })
            }
            _ => LeaseCheckpoint::TrimHorizon,
        }
    }

    pub fn is_shard_end(&self) -> bool {
        *self == LeaseCheckpoint::ShardEnd
    }
}

/// One row of the lease table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// `leaseKey`: the shard id.
    pub key: String,
    /// `leaseOwner`: the worker id of the replica holding it; none when free.
    pub owner: Option<String>,
    /// `leaseCounter`: bumped by every write that renews or moves the lease.
    pub counter: u64,
    pub checkpoint: LeaseCheckpoint,
    /// `ownerSwitchesSinceCheckpoint`.
    pub owner_switches: u64,
    /// `parentShardId`: the shard's parents (one after a split, two after a merge).
    pub parents: Vec<String>,
    /// `leaseRequestedBy` (not in the KCL's schema): a replica that asked the owner to hand it
    /// over. Writing it does not move the counter, so the owner's renewals go on.
    pub requested_by: Option<String>,
}

impl Lease {
    /// A new, free lease.
    pub fn new(key: &str, parents: Vec<String>, checkpoint: LeaseCheckpoint) -> Lease {
        Lease {
            key: key.to_string(),
            owner: None,
            counter: 0,
            checkpoint,
            owner_switches: 0,
            parents,
            requested_by: None,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A conditional write was refused: the lease moved on (another counter or owner), was
    /// deleted, or (on create) exists already.
    #[error("lease {0} changed")]
    Conflict(String),
    /// The table does not exist.
    #[error("lease table {0} does not exist (create it, or pass --create-lease-table)")]
    NoTable(String),
    /// Throttling, 5xx, timeouts: retried.
    #[error("lease table unavailable: {0}")]
    Unavailable(String),
    /// Access denied, invalid requests: an operator must act.
    #[error("lease table refused the call: {0}")]
    Refused(String),
}

impl StoreError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict(_))
    }

    pub fn is_retriable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// The lease table. Every write is conditional on the `leaseCounter` (and, for an owner's writes,
/// the `leaseOwner`) the caller last saw; a refused condition is [`StoreError::Conflict`].
pub trait LeaseStore: Send + Sync {
    /// Every lease, read consistently.
    fn list(&self) -> impl Future<Output = Result<Vec<Lease>, StoreError>> + Send;

    /// Create `lease` unless a lease with its key exists.
    fn create(&self, lease: &Lease) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Make `owner` the owner of a lease last seen at `counter` (free, expired, or held by a
    /// replica it is stolen from): counter + 1, owner switches + 1, any request cleared.
    fn take(
        &self,
        key: &str,
        counter: u64,
        owner: &str,
    ) -> impl Future<Output = Result<Lease, StoreError>> + Send;

    /// Renew a lease `owner` holds at `counter` (counter + 1), writing `checkpoint` with it when
    /// given. Returns the lease as written (with any request for it).
    fn renew(
        &self,
        key: &str,
        owner: &str,
        counter: u64,
        checkpoint: Option<&LeaseCheckpoint>,
    ) -> impl Future<Output = Result<Lease, StoreError>> + Send;

    /// Ask `holder`, which holds the lease at `counter`, to hand it to `requester`. The counter
    /// does not move.
    fn request(
        &self,
        key: &str,
        counter: u64,
        holder: &str,
        requester: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Give up a lease `owner` holds at `counter` after writing its final `checkpoint`: to `to`
    /// (a handoff), or to nobody.
    fn release(
        &self,
        key: &str,
        owner: &str,
        counter: u64,
        checkpoint: &LeaseCheckpoint,
        to: Option<&str>,
    ) -> impl Future<Output = Result<Lease, StoreError>> + Send;

    /// Delete a lease last seen at `counter` (a finished parent whose children have started).
    fn delete(
        &self,
        key: &str,
        counter: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}
