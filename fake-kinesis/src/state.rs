//! Streams, shards, counters and fault settings of the fake Kinesis endpoint.
//!
//! Everything on the PutRecords path is either an atomic counter or a short per-shard
//! lock, so many requests proceed in parallel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use shipper::shard_map::{ShardMap, ShardRange};

use crate::api::ApiError;
pub use crate::stats::{Faults, SeenData, Stats};
use crate::window::{SLOTS_PER_SECOND, Window, WindowModel};

/// Kinesis per-shard write limit, records per second (Kinesis Data Streams quotas).
pub const SHARD_RECORDS_PER_SECOND: u64 = 1000;
/// Kinesis per-shard write limit, bytes (data + partition key) per second (same source).
pub const SHARD_BYTES_PER_SECOND: u64 = 1 << 20;
/// Account id in ARNs and error messages; LocalStack uses the same placeholder.
pub const ACCOUNT_ID: &str = "000000000000";
/// Region in ARNs.
pub const REGION: &str = "us-east-1";

/// Locks a mutex, ignoring poisoning: counters and record lists stay usable after a
/// panicking request, which is what a test endpoint wants.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A Kinesis record kept for GetRecords (only with `--store`).
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub sequence_number: u64,
    pub arrival_seconds: f64,
    pub partition_key: String,
    pub data: bytes::Bytes,
}

#[derive(Debug)]
pub struct Shard {
    pub range: ShardRange,
    pub parent: Option<String>,
    pub adjacent_parent: Option<String>,
    pub starting_sequence_number: u64,
    /// Set (non-zero) when a split or merge closes the shard.
    ending_sequence_number: AtomicU64,
    window: Mutex<Window>,
    pub records: Mutex<Vec<StoredRecord>>,
}

impl Shard {
    pub fn new(range: ShardRange, starting_sequence_number: u64) -> Self {
        Self {
            range,
            parent: None,
            adjacent_parent: None,
            starting_sequence_number,
            ending_sequence_number: AtomicU64::new(0),
            window: Mutex::default(),
            records: Mutex::default(),
        }
    }

    pub fn id(&self) -> &str {
        &self.range.shard_id
    }

    /// The last sequence number of a closed shard; `None` while it is open.
    pub fn ending_sequence_number(&self) -> Option<u64> {
        Some(self.ending_sequence_number.load(Relaxed)).filter(|&number| number != 0)
    }

    fn close(&self, ending_sequence_number: u64) {
        self.ending_sequence_number
            .store(ending_sequence_number, Relaxed);
    }

    fn child(range: ShardRange, parents: (&str, Option<&str>), start: u64) -> Self {
        Self {
            parent: Some(parents.0.to_owned()),
            adjacent_parent: parents.1.map(str::to_owned),
            ..Self::new(range, start)
        }
    }

    /// Takes room for one record of `bytes` at slot `now` (tenths of a second since start), or
    /// says the shard's window is full; `share` of the limits is the caller's.
    pub fn admit(&self, model: WindowModel, now: u64, bytes: u64, share: f64) -> bool {
        lock(&self.window).admit(model, now, bytes, share)
    }
}

/// All shards of a stream (closed ones too, for ListShards) and a map of the open ones.
#[derive(Debug)]
pub struct Topology {
    pub shards: Vec<Arc<Shard>>,
    pub open: ShardMap,
    /// `open`'s index → index in `shards`.
    pub open_shards: Vec<Arc<Shard>>,
}

impl Topology {
    pub fn new(shards: Vec<Arc<Shard>>) -> Result<Self, String> {
        let open_ranges = shards
            .iter()
            .filter(|shard| shard.ending_sequence_number().is_none())
            .map(|shard| shard.range.clone())
            .collect();
        let open = ShardMap::new(open_ranges).map_err(|error| error.to_string())?;
        let open_shards = open
            .shards()
            .iter()
            .filter_map(|range| shards.iter().find(|shard| shard.id() == range.shard_id))
            .cloned()
            .collect();
        Ok(Self {
            shards,
            open,
            open_shards,
        })
    }

    pub fn shard(&self, shard_id: &str) -> Option<&Arc<Shard>> {
        self.shards.iter().find(|shard| shard.id() == shard_id)
    }

    pub fn open_shard_for_hash(&self, hash_key: u128) -> Option<&Arc<Shard>> {
        self.open
            .index_for_hash(hash_key)
            .map(|index| &self.open_shards[index])
    }
}

#[derive(Debug)]
pub struct Stream {
    pub name: String,
    pub arn: String,
    pub created_seconds: f64,
    pub topology: RwLock<Topology>,
    next_shard_number: AtomicU64,
}

impl Stream {
    fn next_shard_id(&self) -> String {
        format!(
            "shardId-{:012}",
            self.next_shard_number.fetch_add(1, Relaxed)
        )
    }

    fn open_shard(topology: &Topology, shard_id: &str) -> Result<Arc<Shard>, ApiError> {
        let shard = topology.shard(shard_id).ok_or_else(|| {
            ApiError::not_found(format!("Could not find shard {shard_id} in the stream"))
        })?;
        if shard.ending_sequence_number().is_some() {
            return Err(ApiError::invalid(format!("Shard {shard_id} is closed")));
        }
        Ok(Arc::clone(shard))
    }

    /// SplitShard: closes `shard_id` and opens two children meeting at `new_start`.
    pub fn split(&self, server: &Server, shard_id: &str, new_start: u128) -> Result<(), ApiError> {
        let mut topology = self
            .topology
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let parent = Self::open_shard(&topology, shard_id)?;
        if new_start <= parent.range.start || new_start > parent.range.end {
            return Err(ApiError::invalid(format!(
                "NewStartingHashKey {new_start} is not inside shard {shard_id}'s range"
            )));
        }
        let start = server.next_sequence();
        let halves = [
            (parent.range.start, new_start - 1),
            (new_start, parent.range.end),
        ];
        let mut shards = topology.shards.clone();
        for (low, high) in halves {
            let range = ShardRange {
                shard_id: self.next_shard_id(),
                start: low,
                end: high,
            };
            shards.push(Arc::new(Shard::child(range, (shard_id, None), start)));
        }
        parent.close(server.next_sequence());
        *topology = Topology::new(shards).map_err(ApiError::internal)?;
        Ok(())
    }

    /// MergeShards: closes two adjacent shards and opens one child covering both.
    pub fn merge(
        &self,
        server: &Server,
        shard_id: &str,
        adjacent_id: &str,
    ) -> Result<(), ApiError> {
        let mut topology = self
            .topology
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let shard = Self::open_shard(&topology, shard_id)?;
        let adjacent = Self::open_shard(&topology, adjacent_id)?;
        let (low, high) = if shard.range.start < adjacent.range.start {
            (&shard, &adjacent)
        } else {
            (&adjacent, &shard)
        };
        if low.range.end.checked_add(1) != Some(high.range.start) {
            return Err(ApiError::invalid(format!(
                "Shards {shard_id} and {adjacent_id} are not adjacent"
            )));
        }
        let range = ShardRange {
            shard_id: self.next_shard_id(),
            start: low.range.start,
            end: high.range.end,
        };
        let child = Shard::child(range, (shard_id, Some(adjacent_id)), server.next_sequence());
        let mut shards = topology.shards.clone();
        shards.push(Arc::new(child));
        let end = server.next_sequence();
        shard.close(end);
        adjacent.close(end);
        *topology = Topology::new(shards).map_err(ApiError::internal)?;
        Ok(())
    }
}

/// The whole endpoint's state.
pub struct Server {
    pub streams: RwLock<HashMap<String, Arc<Stream>>>,
    pub firehose: crate::firehose::DeliveryStreams,
    pub stats: Stats,
    pub faults: RwLock<Faults>,
    pub store: bool,
    pub seen: Option<SeenData>,
    pub max_record_bytes: usize,
    pub max_request_bytes: usize,
    /// How each shard counts its writes against the limits.
    pub window: WindowModel,
    /// What a PutRecords call in CBOR gets.
    pub cbor: CborMode,
    /// Bound for decompressing a received record while counting user records.
    pub max_decompressed_bytes: usize,
    sequence: AtomicU64,
    started: Instant,
}

pub struct ServerSettings {
    pub faults: Faults,
    pub store: bool,
    pub track_duplicates: bool,
    pub max_record_bytes: usize,
    pub max_request_bytes: usize,
    pub window: WindowModel,
    pub cbor: CborMode,
}

/// What a PutRecords call in CBOR gets: served, refused as a JSON-only endpoint refuses it, or
/// dropped unanswered (as an endpoint or proxy that cannot parse the body may do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CborMode {
    Serve,
    Refuse,
    Drop,
}

impl Server {
    pub fn new(settings: ServerSettings) -> Self {
        Self {
            streams: RwLock::default(),
            firehose: crate::firehose::DeliveryStreams::default(),
            stats: Stats::default(),
            faults: RwLock::new(settings.faults),
            store: settings.store,
            seen: settings.track_duplicates.then(SeenData::new),
            max_record_bytes: settings.max_record_bytes,
            max_request_bytes: settings.max_request_bytes,
            window: settings.window,
            cbor: settings.cbor,
            // Our own shipper compresses at fast levels; 64x the record limit leaves room.
            max_decompressed_bytes: settings.max_record_bytes.saturating_mul(64),
            sequence: AtomicU64::new(1),
            started: Instant::now(),
        }
    }

    pub fn faults(&self) -> Faults {
        *self.faults.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Next sequence number; increasing across the whole endpoint.
    pub fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Relaxed)
    }

    /// Tenths of a second since start, the clock of the per-shard windows.
    pub fn current_slot(&self) -> u64 {
        (self.started.elapsed().as_millis() / u128::from(1000 / SLOTS_PER_SECOND)) as u64
    }

    /// Seconds since start, the clock of the per-second counters.
    pub fn current_second(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    pub fn stream(&self, name: &str) -> Option<Arc<Stream>> {
        let streams = self.streams.read().unwrap_or_else(PoisonError::into_inner);
        streams.get(name).cloned()
    }

    /// Creates a stream whose `shard_count` shards split the hash space evenly.
    /// Returns false if it already exists.
    pub fn create_stream(&self, name: &str, shard_count: usize) -> bool {
        let mut streams = self.streams.write().unwrap_or_else(PoisonError::into_inner);
        if streams.contains_key(name) {
            return false;
        }
        let start = self.next_sequence();
        let shards = ShardRange::split_evenly(shard_count)
            .into_iter()
            .map(|range| Arc::new(Shard::new(range, start)))
            .collect();
        let topology = match Topology::new(shards) {
            Ok(topology) => topology,
            Err(_) => unreachable!("an even split never overlaps"),
        };
        let stream = Stream {
            name: name.to_owned(),
            arn: format!("arn:aws:kinesis:{REGION}:{ACCOUNT_ID}:stream/{name}"),
            created_seconds: now_seconds(),
            topology: RwLock::new(topology),
            next_shard_number: AtomicU64::new(shard_count as u64),
        };
        streams.insert(name.to_owned(), Arc::new(stream));
        true
    }

    pub fn reset(&self) {
        self.stats.reset();
        if let Some(seen) = &self.seen {
            seen.clear();
        }
    }
}

pub fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Server {
        Server::new(ServerSettings {
            faults: Faults::default(),
            store: false,
            track_duplicates: false,
            max_record_bytes: 1 << 20,
            max_request_bytes: 5 << 20,
            window: WindowModel::Fixed,
            cbor: CborMode::Serve,
        })
    }

    fn open_ids(stream: &Stream) -> Vec<String> {
        let topology = stream.topology.read().unwrap();
        topology
            .open
            .shards()
            .iter()
            .map(|range| range.shard_id.clone())
            .collect()
    }

    #[test]
    fn split_then_merge_keeps_the_space_covered() {
        let server = server();
        assert!(server.create_stream("s", 1));
        assert!(!server.create_stream("s", 1));
        let stream = server.stream("s").unwrap();
        stream
            .split(&server, "shardId-000000000000", 1 << 127)
            .unwrap();
        assert_eq!(
            open_ids(&stream),
            ["shardId-000000000001", "shardId-000000000002"]
        );
        assert!(
            stream.split(&server, "shardId-000000000000", 1).is_err(),
            "closed"
        );
        let error = stream
            .split(&server, "shardId-000000000001", 0)
            .unwrap_err();
        assert_eq!(error.kind, "InvalidArgumentException");
        stream
            .merge(&server, "shardId-000000000002", "shardId-000000000001")
            .unwrap();
        assert_eq!(open_ids(&stream), ["shardId-000000000003"]);
        let topology = stream.topology.read().unwrap();
        assert!(topology.open.covers_all_hash_keys());
        assert_eq!(topology.shards.len(), 4);
        let merged = topology.shard("shardId-000000000003").unwrap();
        assert_eq!(merged.parent.as_deref(), Some("shardId-000000000002"));
        assert_eq!(
            merged.adjacent_parent.as_deref(),
            Some("shardId-000000000001")
        );
    }

    #[test]
    fn shard_window_admits_up_to_the_limits_per_second() {
        let shard = Shard::new(ShardRange::split_evenly(1).remove(0), 1);
        let fixed = WindowModel::Fixed;
        let admitted = (0..2000)
            .filter(|_| shard.admit(fixed, 70, 10, 1.0))
            .count() as u64;
        assert_eq!(admitted, SHARD_RECORDS_PER_SECOND);
        assert!(shard.admit(fixed, 80, SHARD_BYTES_PER_SECOND, 1.0));
        assert!(!shard.admit(fixed, 80, 1, 1.0));
    }
}
