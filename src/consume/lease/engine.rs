//! The leases of one replica: taking, renewing (with the checkpoint), handing over, losing and
//! releasing them, and starting and stopping the shards' readers to match.
//!
//! The engine is driven by its caller: [`Engine::renew_round`] every [`Timing::renew_interval`] and
//! [`Engine::take_round`] every [`Timing::take_interval`], both from [`Engine::step`]. It does no
//! Kinesis I/O; the [`Readers`] it is given read and forward the shards.
//!
//! Safety: the instant a renewal is *sent* is when the lease was last known to be ours; other
//! replicas start their expiry clock no earlier than when they see that write. A replica that has
//! not renewed for [`Timing::hold_limit`] (less than the failover time) stops reading the shard
//! at once, before any other replica can judge the lease expired; and a write from a replica that
//! lost its lease is refused by the counter condition.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::balance::{self, Action, Observer, Pending};
use super::{Lease, LeaseCheckpoint, LeaseStore, StoreError};
use crate::consume::position::Position;
use crate::consume::shards::ShardInfo;
use crate::telemetry::consume::ConsumeMetrics;

/// The KCL's default failover time.
pub const DEFAULT_FAILOVER: Duration = Duration::from_secs(10);

/// The engine's clocks, all derived from the failover time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// A lease whose counter has not moved for this long is expired.
    pub failover: Duration,
}

impl Timing {
    /// Renewals: three per failover time, so two can fail before the hold limit.
    pub fn renew_interval(&self) -> Duration {
        self.failover / 3
    }

    /// Reads of the whole table (expiry, balancing).
    pub fn take_interval(&self) -> Duration {
        self.failover / 2
    }

    /// Without a successful renewal for this long, a replica stops reading the shard: a quarter
    /// of the failover time before another replica could take it.
    pub fn hold_limit(&self) -> Duration {
        self.failover - self.failover / 4
    }

    /// A holder that has not handed over a lease it was asked for within this long (a replica of
    /// an older version, or one stuck draining) has it taken.
    pub fn handoff_timeout(&self) -> Duration {
        self.failover * 3
    }
}

/// What the engine needs from the shards' readers.
pub trait Readers {
    /// Start reading `shard` after `from` (never [`LeaseCheckpoint::ShardEnd`]).
    fn start(&mut self, shard: &str, from: &LeaseCheckpoint);
    /// Stop reading `shard`: `now` drops what is not forwarded (it stays ahead of the
    /// checkpoint); otherwise what was read is forwarded first.
    fn stop(&mut self, shard: &str, now: bool);
    /// How far `shard` was forwarded; `None` when it is not running.
    fn status(&self, shard: &str) -> Option<ReaderStatus>;
    /// Forget a stopped shard.
    fn remove(&mut self, shard: &str);
}

/// One running shard, as its reader and forwarder left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderStatus {
    /// The last user record forwarded with every one before it.
    pub committed: Option<Position>,
    /// Read and forwarded to the end of the closed shard.
    pub finished: bool,
    /// The reader and forwarder have exited.
    pub stopped: bool,
}

/// A lease this replica holds.
#[derive(Debug)]
struct Held {
    counter: u64,
    /// The checkpoint in the table.
    checkpoint: LeaseCheckpoint,
    /// When the last successful renewal was sent.
    renewed: Instant,
    /// Handing over to this replica: reading stopped, waiting for the forwarder to drain.
    handoff_to: Option<String>,
}

/// Where new leases start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewLeases {
    /// At the oldest record kept.
    TrimHorizon,
    /// At the tip, for open shards listed when the table is first filled; closed shards then
    /// count as finished. Shards found later start at their beginning.
    Latest,
}

pub struct Engine<S, R> {
    store: S,
    readers: R,
    worker_id: String,
    timing: Timing,
    metrics: Arc<ConsumeMetrics>,
    held: BTreeMap<String, Held>,
    observer: Observer,
    pending: Option<(Pending, Instant)>,
    new_leases: NewLeases,
    /// The table had no lease when this replica first read it (--from latest applies).
    first_fill: Option<bool>,
    last_renew: Option<Instant>,
    last_take: Option<Instant>,
}

impl<S: LeaseStore, R: Readers> Engine<S, R> {
    pub fn new(
        store: S,
        readers: R,
        worker_id: String,
        timing: Timing,
        new_leases: NewLeases,
        metrics: Arc<ConsumeMetrics>,
    ) -> Self {
        Engine {
            store,
            readers,
            worker_id,
            timing,
            metrics,
            held: BTreeMap::new(),
            observer: Observer::default(),
            pending: None,
            new_leases,
            first_fill: None,
            last_renew: None,
            last_take: None,
        }
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    pub fn readers(&self) -> &R {
        &self.readers
    }

    pub fn readers_mut(&mut self) -> &mut R {
        &mut self.readers
    }

    /// The shards whose leases this replica holds.
    pub fn held(&self) -> Vec<String> {
        self.held.keys().cloned().collect()
    }

    /// Renew when due, then read the table and balance when due (with `listing`, when given, to
    /// create the leases of new shards). Call it often (every second or faster).
    pub async fn step(&mut self, listing: Option<&[ShardInfo]>) {
        let now = Instant::now();
        if self.renew_due(now) {
            self.renew_round().await;
        } else {
            self.drop_overdue();
            self.finish_handoffs().await;
        }
        if listing.is_some()
            || self
                .last_take
                .is_none_or(|t| now.duration_since(t) >= self.timing.take_interval())
        {
            self.last_take = Some(now);
            self.take_round(listing).await;
        }
    }

    /// Stop reading every shard whose lease was not renewed within the hold limit: it may be
    /// taken elsewhere soon, and nothing may be written for it any more.
    fn drop_overdue(&mut self) {
        let now = Instant::now();
        let overdue: Vec<String> = self
            .held
            .iter()
            .filter(|(_, held)| now.duration_since(held.renewed) >= self.timing.hold_limit())
            .map(|(key, _)| key.clone())
            .collect();
        for key in overdue {
            warn!(shard_id = %key, hold_limit = ?self.timing.hold_limit(), "lease not renewed in time; stopping the shard");
            self.lose(&key);
        }
    }

    /// When the first held lease reaches its hold limit: no table call may outlast it, so that a
    /// call stuck in retries cannot keep a shard read past its limit.
    fn call_deadline(&self) -> Instant {
        self.held
            .values()
            .map(|held| held.renewed + self.timing.hold_limit())
            .min()
            .unwrap_or_else(|| Instant::now() + self.timing.failover)
    }

    /// Run a table call, bounded by [`Engine::call_deadline`].
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout_at(self.call_deadline(), call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(
                "no answer before a lease's hold limit".into(),
            )),
        }
    }

    fn lose(&mut self, key: &str) {
        self.held.remove(key);
        self.readers.stop(key, true);
        ConsumeMetrics::add(&self.metrics.leases_lost_total, 1);
        self.set_held_gauge();
    }

    fn set_held_gauge(&self) {
        self.metrics
            .leases_held
            .store(self.held.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// The checkpoint the shard's reader reached, when it moved past what the table holds.
    fn checkpoint_to_write(&self, key: &str, held: &Held) -> Option<LeaseCheckpoint> {
        let status = self.readers.status(key)?;
        let current = if status.finished {
            LeaseCheckpoint::ShardEnd
        } else {
            LeaseCheckpoint::At(status.committed?)
        };
        (current != held.checkpoint).then_some(current)
    }

    /// Renew every lease held, writing checkpoints that moved; begin the handoffs asked for,
    /// release finished shards.
    pub async fn renew_round(&mut self) {
        self.drop_overdue();
        let keys: Vec<String> = self.held.keys().cloned().collect();
        for key in keys {
            let Some(held) = self.held.get(&key) else {
                continue;
            };
            if held.handoff_to.is_some() {
                // Keep it alive while the forwarder drains.
                let counter = held.counter;
                self.renew_one(&key, counter, None).await;
                continue;
            }
            let checkpoint = self.checkpoint_to_write(&key, held);
            let counter = held.counter;
            if checkpoint
                .as_ref()
                .is_some_and(LeaseCheckpoint::is_shard_end)
            {
                self.release_one(&key, LeaseCheckpoint::ShardEnd, None)
                    .await;
                continue;
            }
            let Some(lease) = self.renew_one(&key, counter, checkpoint.as_ref()).await else {
                continue;
            };
            if let Some(requester) = lease.requested_by
                && requester != self.worker_id
                && let Some(held) = self.held.get_mut(&key)
            {
                info!(shard_id = %key, to = %requester, "lease asked for; handing it over after forwarding what was read");
                held.handoff_to = Some(requester);
                self.readers.stop(&key, false);
            }
        }
        self.finish_handoffs().await;
    }

    /// One renewal; `None` when it failed (a lost lease is dropped).
    async fn renew_one(
        &mut self,
        key: &str,
        counter: u64,
        checkpoint: Option<&LeaseCheckpoint>,
    ) -> Option<Lease> {
        let sent = Instant::now();
        match self
            .call(self.store.renew(key, &self.worker_id, counter, checkpoint))
            .await
        {
            Ok(lease) => {
                if let Some(held) = self.held.get_mut(key) {
                    held.counter = lease.counter;
                    held.renewed = sent;
                    held.checkpoint = lease.checkpoint.clone();
                }
                Some(lease)
            }
            Err(StoreError::Conflict(_)) => {
                info!(shard_id = %key, "lease lost to another replica; stopping the shard");
                self.lose(key);
                None
            }
            Err(error) => {
                ConsumeMetrics::add(&self.metrics.lease_table_errors_total, 1);
                warn!(shard_id = %key, %error, "cannot renew the lease; retrying");
                None
            }
        }
    }

    /// Hand over the leases whose shards stopped, after their final checkpoint.
    async fn finish_handoffs(&mut self) {
        let ready: Vec<(String, String)> = self
            .held
            .iter()
            .filter_map(|(key, held)| {
                let to = held.handoff_to.clone()?;
                self.readers
                    .status(key)
                    .is_none_or(|s| s.stopped)
                    .then(|| (key.clone(), to))
            })
            .collect();
        for (key, to) in ready {
            let checkpoint = self.final_checkpoint(&key);
            if self.release_one(&key, checkpoint, Some(&to)).await {
                ConsumeMetrics::add(&self.metrics.leases_handed_off_total, 1);
            }
        }
    }

    fn final_checkpoint(&self, key: &str) -> LeaseCheckpoint {
        let Some(held) = self.held.get(key) else {
            return LeaseCheckpoint::TrimHorizon;
        };
        self.checkpoint_to_write(key, held)
            .unwrap_or_else(|| held.checkpoint.clone())
    }

    /// Write the final checkpoint and give the lease up; true when written.
    async fn release_one(
        &mut self,
        key: &str,
        checkpoint: LeaseCheckpoint,
        to: Option<&str>,
    ) -> bool {
        let Some(held) = self.held.get(key) else {
            return false;
        };
        if Instant::now().duration_since(held.renewed) >= self.timing.hold_limit() {
            self.lose(key);
            return false;
        }
        let counter = held.counter;
        match self
            .call(
                self.store
                    .release(key, &self.worker_id, counter, &checkpoint, to),
            )
            .await
        {
            Ok(_) => {
                match (to, checkpoint.is_shard_end()) {
                    (Some(to), _) => {
                        info!(shard_id = %key, to, "lease handed over")
                    }
                    (None, true) => info!(shard_id = %key, "shard finished; lease released"),
                    (None, false) => info!(shard_id = %key, "lease released"),
                }
                self.held.remove(key);
                self.readers.stop(key, true);
                self.readers.remove(key);
                self.set_held_gauge();
                true
            }
            Err(StoreError::Conflict(_)) => {
                info!(shard_id = %key, "lease lost to another replica; stopping the shard");
                self.lose(key);
                false
            }
            Err(error) => {
                ConsumeMetrics::add(&self.metrics.lease_table_errors_total, 1);
                warn!(shard_id = %key, %error, "cannot release the lease; retrying");
                false
            }
        }
    }

    /// Read the table: create the leases of new shards, clean up finished parents, take over
    /// leases handed to this replica, and balance.
    pub async fn take_round(&mut self, listing: Option<&[ShardInfo]>) {
        let mut leases = match self.call(self.store.list()).await {
            Ok(leases) => leases,
            Err(error) => {
                ConsumeMetrics::add(&self.metrics.lease_table_errors_total, 1);
                warn!(%error, "cannot read the lease table; retrying");
                return;
            }
        };
        let now = Instant::now();
        self.observer.observe(&leases, now);
        let first_fill = *self.first_fill.get_or_insert(leases.is_empty());
        if let Some(listing) = listing
            && self.create_leases(listing, &leases, first_fill).await
        {
            self.first_fill = Some(false);
            match self.call(self.store.list()).await {
                Ok(listed) => {
                    leases = listed;
                    self.observer.observe(&leases, now);
                }
                Err(error) => {
                    ConsumeMetrics::add(&self.metrics.lease_table_errors_total, 1);
                    warn!(%error, "cannot read the lease table; retrying");
                    return;
                }
            }
        }
        self.clean_up_parents(&leases).await;
        self.adopt(&leases).await;
        let expired = self.observer.expired(&leases, self.timing.failover, now);
        if let Some((pending, since)) = &mut self.pending {
            pending.overdue = now.duration_since(*since) >= self.timing.handoff_timeout();
            let moved = leases
                .iter()
                .find(|l| l.key == pending.key)
                .is_none_or(|l| l.owner.as_deref() != Some(pending.holder.as_str()));
            if moved {
                self.pending = None;
            }
        }
        let actions = balance::plan(
            &leases,
            &expired,
            &self.worker_id,
            self.pending.as_ref().map(|(p, _)| p),
        );
        for action in actions {
            self.act(action).await;
        }
    }

    /// Create a lease for every listed shard that has none; true when one was created. A shard
    /// whose descendant has a lease was read and cleaned up already.
    async fn create_leases(
        &mut self,
        listing: &[ShardInfo],
        leases: &[Lease],
        first_fill: bool,
    ) -> bool {
        let existing: HashSet<&str> = leases.iter().map(|l| l.key.as_str()).collect();
        let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
        for shard in listing {
            for parent in &shard.parents {
                children
                    .entry(parent.as_str())
                    .or_default()
                    .push(&shard.shard_id);
            }
        }
        let has_leased_descendant = |shard: &str| {
            let mut stack = vec![shard];
            let mut seen = HashSet::new();
            while let Some(current) = stack.pop() {
                for child in children.get(current).into_iter().flatten() {
                    if existing.contains(child) {
                        return true;
                    }
                    if seen.insert(*child) {
                        stack.push(child);
                    }
                }
            }
            false
        };
        let mut created = false;
        for shard in listing {
            if existing.contains(shard.shard_id.as_str()) || has_leased_descendant(&shard.shard_id)
            {
                continue;
            }
            let checkpoint = match (self.new_leases, first_fill, shard.closed) {
                (NewLeases::Latest, true, true) => LeaseCheckpoint::ShardEnd,
                (NewLeases::Latest, true, false) => LeaseCheckpoint::Latest,
                _ => LeaseCheckpoint::TrimHorizon,
            };
            let lease = Lease::new(&shard.shard_id, shard.parents.clone(), checkpoint);
            match self.call(self.store.create(&lease)).await {
                Ok(()) => created = true,
                // Another replica created it first.
                Err(StoreError::Conflict(_)) => created = true,
                Err(error) => {
                    ConsumeMetrics::add(&self.metrics.lease_table_errors_total, 1);
                    warn!(shard_id = %shard.shard_id, %error, "cannot create the lease; retrying");
                }
            }
        }
        created
    }

    /// Delete the leases of finished, free parents once each of their children has a checkpoint
    /// past its start.
    async fn clean_up_parents(&mut self, leases: &[Lease]) {
        for parent in leases
            .iter()
            .filter(|l| l.owner.is_none() && l.checkpoint.is_shard_end())
        {
            let children: Vec<&Lease> = leases
                .iter()
                .filter(|l| l.parents.contains(&parent.key))
                .collect();
            let started = !children.is_empty()
                && children.iter().all(|c| {
                    matches!(
                        c.checkpoint,
                        LeaseCheckpoint::At(_) | LeaseCheckpoint::ShardEnd
                    )
                });
            if started {
                match self
                    .call(self.store.delete(&parent.key, parent.counter))
                    .await
                {
                    Ok(()) => info!(shard_id = %parent.key, "finished parent's lease deleted"),
                    Err(StoreError::Conflict(_)) => {}
                    Err(error) => {
                        ConsumeMetrics::add(&self.metrics.lease_table_errors_total, 1);
                        warn!(shard_id = %parent.key, %error, "cannot delete the lease; retrying");
                    }
                }
            }
        }
    }

    /// Start reading the leases the table says are this replica's but that it does not hold: a
    /// handoff to it, or its own leases from before a restart under the same worker id.
    async fn adopt(&mut self, leases: &[Lease]) {
        for lease in leases {
            if lease.owner.as_deref() != Some(self.worker_id.as_str())
                || self.held.contains_key(&lease.key)
                || lease.checkpoint.is_shard_end()
            {
                continue;
            }
            let sent = Instant::now();
            match self
                .call(
                    self.store
                        .renew(&lease.key, &self.worker_id, lease.counter, None),
                )
                .await
            {
                Ok(renewed) => {
                    info!(shard_id = %lease.key, "lease received");
                    if self
                        .pending
                        .as_ref()
                        .is_some_and(|(p, _)| p.key == lease.key)
                    {
                        self.pending = None;
                    }
                    ConsumeMetrics::add(&self.metrics.leases_received_total, 1);
                    self.hold(renewed, sent);
                }
                Err(StoreError::Conflict(_)) => {}
                Err(error) => {
                    ConsumeMetrics::add(&self.metrics.lease_table_errors_total, 1);
                    warn!(shard_id = %lease.key, %error, "cannot renew the lease; retrying");
                }
            }
        }
    }

    fn hold(&mut self, lease: Lease, renewed: Instant) {
        // A reader left over from an earlier hold of the same shard is stopped first.
        self.readers.stop(&lease.key, true);
        self.readers.remove(&lease.key);
        self.readers.start(&lease.key, &lease.checkpoint);
        self.held.insert(
            lease.key.clone(),
            Held {
                counter: lease.counter,
                checkpoint: lease.checkpoint,
                renewed,
                handoff_to: None,
            },
        );
        self.set_held_gauge();
    }

    async fn act(&mut self, action: Action) {
        let (key, counter, from, stolen) = match action {
            Action::Take { key, counter, from } => (key, counter, from, false),
            Action::Steal { key, counter, from } => (key, counter, Some(from), true),
            Action::Request {
                key,
                counter,
                holder,
            } => {
                self.request(key, counter, holder).await;
                return;
            }
        };
        let sent = Instant::now();
        match self
            .call(self.store.take(&key, counter, &self.worker_id))
            .await
        {
            Ok(lease) => {
                match &from {
                    Some(from) if stolen => {
                        ConsumeMetrics::add(&self.metrics.leases_stolen_total, 1);
                        info!(shard_id = %key, from = %from, "lease taken from a replica that did not hand it over");
                    }
                    Some(from) => {
                        ConsumeMetrics::add(&self.metrics.leases_taken_total, 1);
                        info!(shard_id = %key, from = %from, "expired lease taken");
                    }
                    None => {
                        ConsumeMetrics::add(&self.metrics.leases_taken_total, 1);
                        info!(shard_id = %key, "free lease taken");
                    }
                }
                if stolen {
                    self.pending = None;
                }
                self.hold(lease, sent);
            }
            Err(StoreError::Conflict(_)) => {}
            Err(error) => {
                ConsumeMetrics::add(&self.metrics.lease_table_errors_total, 1);
                warn!(shard_id = %key, %error, "cannot take the lease; retrying");
            }
        }
    }

    async fn request(&mut self, key: String, counter: u64, holder: String) {
        match self
            .call(self.store.request(&key, counter, &holder, &self.worker_id))
            .await
        {
            Ok(()) => {
                info!(shard_id = %key, from = %holder, "lease asked for");
                self.pending = Some((
                    Pending {
                        key,
                        holder,
                        overdue: false,
                    },
                    Instant::now(),
                ));
            }
            Err(StoreError::Conflict(_)) => {}
            Err(error) => {
                ConsumeMetrics::add(&self.metrics.lease_table_errors_total, 1);
                warn!(shard_id = %key, %error, "cannot ask for the lease; retrying");
            }
        }
    }

    /// Stop reading every shard (forwarding what was read); then call [`Engine::drained`] and
    /// [`Engine::step_draining`] until drained, and [`Engine::release_all`].
    pub fn stop_reading(&mut self) {
        let keys: Vec<String> = self.held.keys().cloned().collect();
        for key in keys {
            self.readers.stop(&key, false);
        }
    }

    /// Stop every shard at once (the grace period is over).
    pub fn stop_now(&mut self) {
        let keys: Vec<String> = self.held.keys().cloned().collect();
        for key in keys {
            self.readers.stop(&key, true);
        }
    }

    /// Every held shard's reader and forwarder have exited.
    pub fn drained(&self) -> bool {
        self.held
            .keys()
            .all(|key| self.readers.status(key).is_none_or(|s| s.stopped))
    }

    /// Whether a renewal round is due at `now`; if so, it counts as started.
    fn renew_due(&mut self, now: Instant) -> bool {
        let due = self
            .last_renew
            .is_none_or(|t| now.duration_since(t) >= self.timing.renew_interval());
        if due {
            self.last_renew = Some(now);
        }
        due
    }

    /// Keep the leases renewed (and checkpointed) while the shards drain.
    pub async fn step_draining(&mut self) {
        let now = Instant::now();
        if self.renew_due(now) {
            self.renew_round().await;
        } else {
            self.drop_overdue();
        }
    }

    /// Write each lease's final checkpoint and release it, so other replicas take it at once.
    pub async fn release_all(&mut self) {
        let keys: Vec<String> = self.held.keys().cloned().collect();
        for key in keys {
            let checkpoint = self.final_checkpoint(&key);
            self.release_one(&key, checkpoint, None).await;
        }
    }
}
