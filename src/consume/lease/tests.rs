//! The lease engine against the in-memory table, with paused time: expiry, stealing, fencing,
//! handoff, parents before children, graceful stop, and no storms.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::engine::{Engine, NewLeases, ReaderStatus, Readers, Timing};
use super::memory::MemoryStore;
use super::{Lease, LeaseCheckpoint, LeaseStore};
use crate::consume::position::{Position, SequenceNumber};
use crate::consume::shards::ShardInfo;
use crate::telemetry::consume::ConsumeMetrics;

const FAILOVER: Duration = Duration::from_secs(10);
const STEP: Duration = Duration::from_millis(500);

/// A shard's reader as the tests drive it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FakeShard {
    from: LeaseCheckpoint,
    committed: Option<Position>,
    finished: bool,
    stopping: bool,
    stopped: bool,
}

/// Readers whose state the test sets; a graceful stop completes at once unless `slow_drain`.
#[derive(Debug, Clone, Default)]
struct FakeReaders {
    shards: Arc<Mutex<BTreeMap<String, FakeShard>>>,
    slow_drain: Arc<Mutex<bool>>,
}

impl FakeReaders {
    fn running(&self) -> Vec<String> {
        let shards = self.shards.lock().unwrap();
        shards
            .iter()
            .filter(|(_, s)| !s.stopping)
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn get(&self, shard: &str) -> Option<FakeShard> {
        self.shards.lock().unwrap().get(shard).cloned()
    }

    fn commit(&self, shard: &str, sequence: u64) {
        if let Some(s) = self.shards.lock().unwrap().get_mut(shard) {
            s.committed = Some(at(sequence));
        }
    }

    fn finish(&self, shard: &str) {
        if let Some(s) = self.shards.lock().unwrap().get_mut(shard) {
            s.finished = true;
        }
    }

    fn drain(&self) {
        for shard in self.shards.lock().unwrap().values_mut() {
            if shard.stopping {
                shard.stopped = true;
            }
        }
    }
}

impl Readers for FakeReaders {
    fn start(&mut self, shard: &str, from: &LeaseCheckpoint) {
        self.shards.lock().unwrap().insert(
            shard.to_string(),
            FakeShard {
                from: from.clone(),
                committed: None,
                finished: false,
                stopping: false,
                stopped: false,
            },
        );
    }

    fn stop(&mut self, shard: &str, now: bool) {
        let slow = *self.slow_drain.lock().unwrap();
        if let Some(s) = self.shards.lock().unwrap().get_mut(shard) {
            s.stopping = true;
            s.stopped |= now || !slow;
        }
    }

    fn status(&self, shard: &str) -> Option<ReaderStatus> {
        self.get(shard).map(|s| ReaderStatus {
            committed: s.committed,
            finished: s.finished,
            stopped: s.stopped,
        })
    }

    fn remove(&mut self, shard: &str) {
        self.shards.lock().unwrap().remove(shard);
    }
}

fn at(sequence: u64) -> Position {
    Position {
        sequence: SequenceNumber::new(&sequence.to_string()),
        sub_sequence: 0,
    }
}

fn shards(n: usize) -> Vec<ShardInfo> {
    (0..n)
        .map(|i| ShardInfo {
            shard_id: format!("shardId-{i:012}"),
            parents: Vec::new(),
            closed: false,
        })
        .collect()
}

struct Replica {
    engine: Engine<MemoryStore, FakeReaders>,
    readers: FakeReaders,
    metrics: Arc<ConsumeMetrics>,
}

impl Replica {
    fn new(store: &MemoryStore, id: &str) -> Replica {
        let readers = FakeReaders::default();
        let metrics = Arc::new(ConsumeMetrics::default());
        Replica {
            engine: Engine::new(
                store.clone(),
                readers.clone(),
                id.to_string(),
                Timing { failover: FAILOVER },
                NewLeases::TrimHorizon,
                Arc::clone(&metrics),
            ),
            readers,
            metrics,
        }
    }

    fn held(&self) -> usize {
        self.engine.held().len()
    }

    /// Lease moves into this replica.
    fn moves_in(&self) -> u64 {
        ConsumeMetrics::get(&self.metrics.leases_taken_total)
            + ConsumeMetrics::get(&self.metrics.leases_stolen_total)
            + ConsumeMetrics::get(&self.metrics.leases_received_total)
    }
}

/// Step every replica (in order) once, then let `STEP` pass.
async fn round(replicas: &mut [&mut Replica], listing: Option<&[ShardInfo]>) {
    for replica in replicas.iter_mut() {
        replica.engine.step(listing).await;
    }
    tokio::time::advance(STEP).await;
}

/// Every shard is read by exactly one replica, which holds its lease.
fn assert_each_shard_read_once(store: &MemoryStore, replicas: &[&Replica]) {
    let mut readers: HashMap<String, Vec<String>> = HashMap::new();
    for replica in replicas {
        for shard in replica.readers.running() {
            readers
                .entry(shard)
                .or_default()
                .push(replica.engine.worker_id().to_string());
        }
    }
    for lease in store.all() {
        if lease.checkpoint.is_shard_end() {
            continue;
        }
        let owner = lease.owner.clone().expect("every lease is owned");
        assert_eq!(
            readers.get(&lease.key).map(Vec::as_slice),
            Some([owner].as_slice()),
            "{}",
            lease.key
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_dead_replicas_leases_are_taken_once_expired() {
    let store = MemoryStore::default();
    let mut a = Replica::new(&store, "a");
    let mut b = Replica::new(&store, "b");
    let listing = shards(4);
    round(&mut [&mut a], Some(&listing)).await;
    assert_eq!(a.held(), 4);
    // a stops dead (no more steps); b joins and watches the counters stand still.
    let died = tokio::time::Instant::now();
    let mut taken_at = None;
    while taken_at.is_none() {
        round(&mut [&mut b], None).await;
        if b.held() == 4 {
            taken_at = Some(tokio::time::Instant::now());
        }
        // Before the failover time nothing expired: b only asked for a lease.
        if died.elapsed() < FAILOVER {
            assert_eq!(b.held(), 0);
        }
        assert!(died.elapsed() < FAILOVER * 2, "b took {} leases", b.held());
    }
    let waited = taken_at.unwrap() - died;
    assert!(
        waited >= FAILOVER
            && waited <= FAILOVER + Timing { failover: FAILOVER }.take_interval() + STEP,
        "{waited:?}"
    );
    assert_eq!(ConsumeMetrics::get(&b.metrics.leases_taken_total), 4);
    assert_each_shard_read_once(&store, &[&b]);
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_cannot_renew_stops_reading_before_others_may_take_over() {
    let store = MemoryStore::default();
    let mut a = Replica::new(&store, "a");
    let listing = shards(2);
    round(&mut [&mut a], Some(&listing)).await;
    assert_eq!(a.readers.running().len(), 2);
    let last_write = tokio::time::Instant::now();
    store.set_unavailable(true);
    while !a.readers.running().is_empty() {
        round(&mut [&mut a], None).await;
        assert!(
            last_write.elapsed() < FAILOVER,
            "still reading after the failover time"
        );
    }
    assert!(ConsumeMetrics::get(&a.metrics.lease_table_errors_total) > 0);
    assert_eq!(ConsumeMetrics::get(&a.metrics.leases_lost_total), 2);
    // Once the table is back, a takes its (expired) leases again and reads from the checkpoint.
    store.set_unavailable(false);
    for _ in 0..(2 * FAILOVER.as_millis() / STEP.as_millis()) {
        round(&mut [&mut a], None).await;
    }
    assert_eq!(a.held(), 2);
    assert_each_shard_read_once(&store, &[&a]);
}

#[tokio::test(start_paused = true)]
async fn a_stale_owner_cannot_move_the_checkpoint() {
    let store = MemoryStore::default();
    let mut a = Replica::new(&store, "a");
    let mut b = Replica::new(&store, "b");
    let listing = shards(1);
    let key = listing[0].shard_id.clone();
    round(&mut [&mut a], Some(&listing)).await;
    a.readers.commit(&key, 100);
    for _ in 0..8 {
        round(&mut [&mut a], None).await;
    }
    assert_eq!(
        store.get(&key).unwrap().checkpoint,
        LeaseCheckpoint::At(at(100))
    );
    // a is paused (SIGSTOP) past the failover time; b takes the lease and moves on.
    for _ in 0..(3 * FAILOVER.as_millis() / STEP.as_millis()) {
        round(&mut [&mut b], None).await;
    }
    assert_eq!(b.held(), 1);
    assert_eq!(
        b.readers.get(&key).unwrap().from,
        LeaseCheckpoint::At(at(100))
    );
    b.readers.commit(&key, 200);
    for _ in 0..8 {
        round(&mut [&mut b], None).await;
    }
    // a resumes with more forwarded: it notices and writes nothing.
    a.readers.commit(&key, 150);
    round(&mut [&mut a], None).await;
    assert_eq!(a.held(), 0);
    assert!(a.readers.running().is_empty());
    assert_eq!(ConsumeMetrics::get(&a.metrics.leases_lost_total), 1);
    assert_eq!(
        store.get(&key).unwrap().checkpoint,
        LeaseCheckpoint::At(at(200))
    );
    // The table refuses a write at a's old counter too.
    let stale = store.get(&key).unwrap().counter - 3;
    let refused = store
        .renew(&key, "a", stale, Some(&LeaseCheckpoint::At(at(150))))
        .await;
    assert!(refused.unwrap_err().is_conflict());
    assert_eq!(store.get(&key).unwrap().owner.as_deref(), Some("b"));
}

#[tokio::test(start_paused = true)]
async fn a_lease_asked_for_is_handed_over_after_its_final_checkpoint() {
    let store = MemoryStore::default();
    let mut a = Replica::new(&store, "a");
    let mut b = Replica::new(&store, "b");
    let listing = shards(2);
    round(&mut [&mut a], Some(&listing)).await;
    for (i, shard) in listing.iter().enumerate() {
        a.readers.commit(&shard.shard_id, 10 + i as u64);
    }
    *a.readers.slow_drain.lock().unwrap() = true;
    // b asks; a stops reading the shard asked for and keeps it while the forwarder drains.
    let mut asked = None;
    for _ in 0..40 {
        round(&mut [&mut b, &mut a], None).await;
        if let Some(shard) = a
            .readers
            .shards
            .lock()
            .unwrap()
            .iter()
            .find(|(_, s)| s.stopping)
        {
            asked = Some(shard.0.clone());
            break;
        }
    }
    let asked = asked.expect("a was asked for a lease");
    // Longer than the failover time, shorter than the handoff time.
    for _ in 0..(2 * FAILOVER.as_millis() / STEP.as_millis()) {
        round(&mut [&mut b, &mut a], None).await;
    }
    assert_eq!(b.held(), 0, "nothing moves before the forwarder drained");
    assert_eq!(store.get(&asked).unwrap().owner.as_deref(), Some("a"));
    // What the forwarder still acknowledged is in the final checkpoint b starts from.
    a.readers.commit(&asked, 99);
    a.readers.drain();
    for _ in 0..(FAILOVER.as_millis() / STEP.as_millis()) {
        round(&mut [&mut b, &mut a], None).await;
    }
    assert_eq!((a.held(), b.held()), (1, 1));
    assert_eq!(
        b.readers.get(&asked).unwrap().from,
        LeaseCheckpoint::At(at(99))
    );
    assert_eq!(ConsumeMetrics::get(&a.metrics.leases_handed_off_total), 1);
    assert_eq!(ConsumeMetrics::get(&b.metrics.leases_received_total), 1);
    assert_eq!(ConsumeMetrics::get(&b.metrics.leases_stolen_total), 0);
    assert_each_shard_read_once(&store, &[&a, &b]);
}

#[tokio::test(start_paused = true)]
async fn a_holder_that_never_hands_over_has_the_lease_stolen() {
    let store = MemoryStore::default();
    let mut a = Replica::new(&store, "a");
    let mut b = Replica::new(&store, "b");
    let listing = shards(2);
    round(&mut [&mut a], Some(&listing)).await;
    // a keeps renewing but its forwarder never drains.
    *a.readers.slow_drain.lock().unwrap() = true;
    for _ in 0..(5 * FAILOVER.as_millis() / STEP.as_millis()) {
        round(&mut [&mut b, &mut a], None).await;
    }
    assert_eq!(ConsumeMetrics::get(&b.metrics.leases_stolen_total), 1);
    assert_eq!((a.held(), b.held()), (1, 1));
    assert_eq!(ConsumeMetrics::get(&a.metrics.leases_lost_total), 1);
}

#[tokio::test(start_paused = true)]
async fn children_start_after_their_parent_and_the_parent_lease_goes_after_them() {
    let store = MemoryStore::default();
    let mut a = Replica::new(&store, "a");
    let parent = "shardId-000000000000".to_string();
    let children = ["shardId-000000000001", "shardId-000000000002"];
    let mut listing = vec![ShardInfo {
        shard_id: parent.clone(),
        parents: Vec::new(),
        closed: true,
    }];
    for child in children {
        listing.push(ShardInfo {
            shard_id: child.to_string(),
            parents: vec![parent.clone()],
            closed: false,
        });
    }
    for _ in 0..10 {
        round(&mut [&mut a], Some(&listing)).await;
    }
    assert_eq!(a.engine.held(), std::slice::from_ref(&parent));
    a.readers.commit(&parent, 500);
    a.readers.finish(&parent);
    for _ in 0..20 {
        round(&mut [&mut a], None).await;
    }
    assert_eq!(
        store.get(&parent).unwrap().checkpoint,
        LeaseCheckpoint::ShardEnd
    );
    assert_eq!(a.held(), 2);
    for child in children {
        assert_eq!(
            a.readers.get(child).unwrap().from,
            LeaseCheckpoint::TrimHorizon
        );
    }
    // The parent's lease stays until both children checkpointed, and is not created again.
    a.readers.commit(children[0], 600);
    for _ in 0..20 {
        round(&mut [&mut a], Some(&listing)).await;
    }
    assert!(store.get(&parent).is_some());
    a.readers.commit(children[1], 700);
    for _ in 0..20 {
        round(&mut [&mut a], Some(&listing)).await;
    }
    assert!(store.get(&parent).is_none());
    assert_eq!(store.all().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_graceful_stop_releases_after_the_final_checkpoint() {
    let store = MemoryStore::default();
    let mut a = Replica::new(&store, "a");
    let mut b = Replica::new(&store, "b");
    let listing = shards(3);
    round(&mut [&mut a], Some(&listing)).await;
    for shard in &listing {
        a.readers.commit(&shard.shard_id, 42);
    }
    a.engine.stop_reading();
    assert!(a.engine.drained());
    a.engine.release_all().await;
    for lease in store.all() {
        assert_eq!(lease.owner, None);
        assert_eq!(lease.checkpoint, LeaseCheckpoint::At(at(42)));
    }
    // b takes them all at its next round, without waiting for the failover time.
    round(&mut [&mut b], None).await;
    assert_eq!(b.held(), 3);
}

#[tokio::test(start_paused = true)]
async fn replicas_converge_to_a_fair_share_and_then_move_nothing() {
    let store = MemoryStore::default();
    let listing = shards(16);
    let mut replicas: Vec<Replica> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|id| Replica::new(&store, id))
        .collect();
    // One replica first (it takes everything), then four more join: 1 -> 5.
    round(&mut [&mut replicas[0]], Some(&listing)).await;
    assert_eq!(replicas[0].held(), 16);
    let mut settled = None;
    for i in 0..400 {
        // A different order each round, as real replicas' clocks drift.
        replicas.rotate_left(i % 3);
        let mut all: Vec<&mut Replica> = replicas.iter_mut().collect();
        round(&mut all, None).await;
        let counts: Vec<usize> = replicas.iter().map(Replica::held).collect();
        if counts.iter().all(|c| (3..=4).contains(c)) && settled.is_none() {
            settled = Some(replicas.iter().map(Replica::moves_in).sum::<u64>());
        }
    }
    let moves_at_settle = settled.expect("the replicas settled at 3 or 4 leases each");
    // 16 leases taken at first, then 12 moved to the newcomers (16 -> 4, 3, 3, 3, 3): the minimum.
    assert_eq!(moves_at_settle, 16 + 12);
    let moves: u64 = replicas.iter().map(Replica::moves_in).sum();
    assert_eq!(
        moves, moves_at_settle,
        "leases moved after the replicas settled"
    );
    let lost: u64 = replicas
        .iter()
        .map(|r| ConsumeMetrics::get(&r.metrics.leases_lost_total))
        .sum();
    assert_eq!(lost, 0);
    let refs: Vec<&Replica> = replicas.iter().collect();
    assert_each_shard_read_once(&store, &refs);
    // Back to one replica, gracefully: the survivor takes the rest, once each.
    for replica in replicas.iter_mut().skip(1) {
        replica.engine.stop_reading();
        replica.engine.release_all().await;
    }
    for _ in 0..10 {
        round(&mut [&mut replicas[0]], None).await;
    }
    assert_eq!(replicas[0].held(), 16);
}

#[tokio::test(start_paused = true)]
async fn new_leases_start_where_the_setting_says_on_first_fill_only() {
    let store = MemoryStore::default();
    let readers = FakeReaders::default();
    let mut engine = Engine::new(
        store.clone(),
        readers.clone(),
        "a".into(),
        Timing { failover: FAILOVER },
        NewLeases::Latest,
        Arc::new(ConsumeMetrics::default()),
    );
    let mut listing = shards(2);
    listing[1].closed = true;
    engine.step(Some(&listing)).await;
    assert_eq!(
        store.get(&listing[0].shard_id).unwrap().checkpoint,
        LeaseCheckpoint::Latest
    );
    assert_eq!(
        store.get(&listing[1].shard_id).unwrap().checkpoint,
        LeaseCheckpoint::ShardEnd
    );
    // A shard found later starts at its beginning.
    let later = ShardInfo {
        shard_id: "shardId-000000000009".into(),
        parents: vec![listing[1].shard_id.clone()],
        closed: false,
    };
    listing.push(later.clone());
    tokio::time::advance(STEP).await;
    engine.step(Some(&listing)).await;
    let lease: Lease = store.get(&later.shard_id).unwrap();
    assert_eq!(lease.checkpoint, LeaseCheckpoint::TrimHorizon);
    assert_eq!(
        readers.get(&later.shard_id).unwrap().from,
        LeaseCheckpoint::TrimHorizon
    );
}
