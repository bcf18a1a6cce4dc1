//! The packing stage, in the batcher task: gives each record the shard it is expected to land on,
//! packs user records of the same shard into KPL aggregates (`--aggregate`), and compresses each
//! Kinesis record's data (`--compress`).
//!
//! An aggregate only ever holds user records whose keys, as packed, hash to one shard of the current
//! map: the KCL drops user records outside the shard an aggregate arrived on. Random-keyed records
//! are packed under the aggregate's shared random key, which hashes there, whatever their own key.
//! Such records come from the record builder with no key at all: one is drawn here only for a
//! record that goes alone or opens an aggregate's shared key.
//! When the map changes, the open aggregates are closed and sent.
//!
//! A closed aggregate waits for others before its MD5 trailer is written: on a CPU that hashes
//! several messages at once ([`md5_lanes`]), up to that many are sealed together, which costs
//! about what sealing one does. Any other record that leaves the packer first sends the waiting
//! aggregates, so records leave in the order they were closed; a drain (linger, end of input, a
//! new shard map) sends them too, so none waits longer than an open aggregate would.

use std::sync::Arc;

use bytes::Bytes;

use crate::ack::Acks;
use crate::aggregate::{Aggregator, Finished, Framed, PushError};
use crate::batch::Stage;
use crate::compress::Compression;
use crate::md5_lanes;
use crate::partition_key::KeyRng;
use crate::record::Record;
use crate::shard_map::{ShardMap, SharedShardMap};

/// One open aggregate.
struct Open {
    aggregator: Aggregator,
    acks: Option<Acks>,
    /// The key its random-keyed records share: the first one's (it maps to this shard).
    random_key: Option<compact_str::CompactString>,
}

impl Open {
    fn new(max_bytes: usize) -> Open {
        Open {
            aggregator: Aggregator::new(max_bytes),
            acks: None,
            random_key: None,
        }
    }

    /// Random keys carry nothing but the shard they hash to: within one aggregate, one serves
    /// every record that has one, instead of a table of incompressible keys.
    fn push(&mut self, record: &Record) -> Result<(), PushError> {
        let key = match (&self.random_key, record.random_key) {
            (Some(shared), true) => shared,
            _ => &record.partition_key,
        };
        self.aggregator.try_push(key, &record.data)
    }

    /// Takes on the acknowledgements of a record it now holds.
    fn hold(&mut self, ack: Acks) {
        match &mut self.acks {
            Some(acks) => acks.extend(ack),
            None => self.acks = Some(ack),
        }
    }
}

/// A closed aggregate, its MD5 trailer not yet written.
struct Unsealed {
    partition_key: String,
    data: Framed,
    user_records: usize,
    ack: Acks,
    shard: Option<Arc<str>>,
}

/// Bytes of closed aggregates that may wait to be sealed together (with `--compress`, aggregates
/// of 512 KiB: four of them).
const MAX_UNSEALED_BYTES: usize = 2 * 1024 * 1024;

pub struct Packer {
    aggregate: bool,
    compress: Compression,
    /// Where the map comes from; none when neither aggregation nor rate control needs it.
    shards: Option<Arc<SharedShardMap>>,
    /// The map in use and its shard ids as shared strings (one allocation per map, not per record).
    map: Option<(Arc<ShardMap>, Vec<Arc<str>>)>,
    max_aggregate_bytes: usize,
    /// The open aggregate of each shard, by index in the map.
    open: Vec<Option<Open>>,
    /// A shard whose open aggregate has a shared random key: the next random-keyed records join
    /// it without hashing their own keys, until it is full. Random-keyed records so spread over
    /// the shards an aggregate at a time instead of a record at a time.
    random_shard: Option<usize>,
    /// Closed aggregates waiting to be sealed together.
    unsealed: Vec<Unsealed>,
    /// How many aggregates one MD5 pass seals on this CPU.
    lanes: usize,
    /// Draws the keys of random-keyed records that come without one and do not join an aggregate's
    /// shared key.
    rng: KeyRng,
}

impl Packer {
    pub fn new(
        aggregate: bool,
        compress: Compression,
        shards: Option<Arc<SharedShardMap>>,
        max_aggregate_bytes: usize,
    ) -> Packer {
        Packer {
            aggregate,
            compress,
            shards,
            map: None,
            max_aggregate_bytes,
            open: Vec::new(),
            random_shard: None,
            unsealed: Vec::new(),
            lanes: md5_lanes::lanes(),
            rng: KeyRng::new(),
        }
    }

    fn finish(&mut self, open: Open, shard: Option<Arc<str>>, out: &mut Vec<Record>) {
        let Some(ack) = open.acks else { return };
        match open.aggregator.finish_unsealed() {
            Finished::Empty => {}
            Finished::Single {
                partition_key,
                data,
            } => {
                self.seal_into(out);
                self.send(partition_key, data.into(), 1, ack, shard, out);
            }
            Finished::Aggregated {
                partition_key,
                data,
                user_records,
            } => {
                self.unsealed.push(Unsealed {
                    partition_key,
                    data,
                    user_records,
                    ack,
                    shard,
                });
                let bytes: usize = self.unsealed.iter().map(|u| u.data.len()).sum();
                if self.unsealed.len() >= self.lanes || bytes >= MAX_UNSEALED_BYTES {
                    self.seal_into(out);
                }
            }
        }
    }

    /// Writes the MD5 trailers of the waiting aggregates, all at once, and sends them.
    fn seal_into(&mut self, out: &mut Vec<Record>) {
        if self.unsealed.is_empty() {
            return;
        }
        let mut unsealed = std::mem::take(&mut self.unsealed);
        crate::aggregate::seal(&mut unsealed.iter_mut().map(|u| &mut u.data).collect::<Vec<_>>());
        for u in unsealed.drain(..) {
            let data = u.data.into_bytes();
            self.send(u.partition_key, data, u.user_records, u.ack, u.shard, out);
        }
        // Keep the vector's room for the next ones.
        self.unsealed = unsealed;
    }

    fn send(
        &self,
        partition_key: String,
        data: Bytes,
        user_records: usize,
        ack: Acks,
        shard: Option<Arc<str>>,
        out: &mut Vec<Record>,
    ) {
        out.push(Record {
            data: self.compressed(data),
            partition_key: partition_key.into(),
            ack,
            shard,
            user_records: u32::try_from(user_records).unwrap_or(u32::MAX),
            random_key: false,
        });
    }

    /// Sends a record that goes as it is; waiting aggregates go before it.
    fn pass_on(&mut self, mut record: Record, out: &mut Vec<Record>) {
        self.seal_into(out);
        record.data = self.compressed(std::mem::take(&mut record.data));
        out.push(record);
    }

    fn compressed(&self, data: Bytes) -> Bytes {
        match self.compress {
            Compression::None => data,
            other => other.compress(&data).into(),
        }
    }

    fn shard_id(&self, index: Option<usize>) -> Option<Arc<str>> {
        let (_, ids) = self.map.as_ref()?;
        index.and_then(|i| ids.get(i)).cloned()
    }

    fn drain_into(&mut self, out: &mut Vec<Record>) {
        self.random_shard = None;
        for index in 0..self.open.len() {
            if let Some(aggregate) = self.open[index].take() {
                let shard = self.shard_id(Some(index));
                self.finish(aggregate, shard, out);
            }
        }
        self.seal_into(out);
    }

    /// Adds a random-keyed record to the open aggregate that has a shared random key, under that
    /// key (which maps to the aggregate's shard, where the record's own key may not): no need to
    /// hash the record's key. Gives the record back when there is none or it is full (a full one
    /// is sent now); the record then goes by its own key.
    fn push_random(&mut self, record: Record, out: &mut Vec<Record>) -> Option<Record> {
        let Some(index) = self.random_shard else {
            return Some(record);
        };
        let Some(open) = self.open.get_mut(index).and_then(Option::as_mut) else {
            self.random_shard = None;
            return Some(record);
        };
        if open.random_key.is_some() && open.push(&record).is_ok() {
            open.hold(record.ack);
            return None;
        }
        self.random_shard = None;
        if let Some(full) = self.open[index].take() {
            let shard = self.shard_id(Some(index));
            self.finish(full, shard, out);
        }
        Some(record)
    }
}

impl Stage for Packer {
    fn begin(&mut self, out: &mut Vec<Record>) {
        let Some(shards) = &self.shards else { return };
        let Some(latest) = shards.get() else { return };
        if self
            .map
            .as_ref()
            .is_some_and(|(current, _)| Arc::ptr_eq(current, &latest))
        {
            return;
        }
        // Aggregates packed for the old map go out as they are, before records of the new one.
        self.drain_into(out);
        let ids: Vec<Arc<str>> = latest
            .shards()
            .iter()
            .map(|s| Arc::from(s.shard_id.as_str()))
            .collect();
        self.open = std::iter::repeat_with(|| None).take(ids.len()).collect();
        self.map = Some((latest, ids));
    }

    fn push(&mut self, record: Record, out: &mut Vec<Record>) {
        let mut record = if self.aggregate && record.random_key {
            match self.push_random(record, out) {
                Some(record) => record,
                None => return,
            }
        } else {
            record
        };
        if record.partition_key.is_empty() {
            // Its key was left to be drawn where it is needed: here.
            record.partition_key = self.rng.key();
        }
        let index = self
            .map
            .as_ref()
            .and_then(|(map, _)| map.index_for_key(&record.partition_key));
        record.shard = self.shard_id(index);
        let Some(index) = index.filter(|&i| self.aggregate && i < self.open.len()) else {
            self.pass_on(record, out);
            return;
        };
        let max_bytes = self.max_aggregate_bytes;
        let open = self.open[index].get_or_insert_with(|| Open::new(max_bytes));
        let mut pushed = open.push(&record);
        if pushed == Err(PushError::Full) {
            let full = std::mem::replace(open, Open::new(max_bytes));
            if self.random_shard == Some(index) {
                // Its shared random key went with it.
                self.random_shard = None;
            }
            let shard = record.shard.clone();
            self.finish(full, shard, out);
            if let Some(open) = self.open[index].as_mut() {
                pushed = open.push(&record);
            }
        }
        match (pushed, self.open[index].as_mut()) {
            (Ok(()), Some(open)) => {
                if record.random_key && open.random_key.is_none() {
                    open.random_key = Some(std::mem::take(&mut record.partition_key));
                    self.random_shard = Some(index);
                }
                open.hold(record.ack);
            }
            // Too large for any aggregate: it goes alone, as a plain record.
            _ => self.pass_on(record, out),
        }
    }

    fn drain(&mut self, out: &mut Vec<Record>) {
        self.drain_into(out);
    }

    fn is_empty(&self) -> bool {
        self.open.iter().all(Option::is_none) && self.unsealed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::{FileId, FileProgress, Fingerprint};
    use crate::shard_map::ShardRange;
    use std::collections::HashSet;

    fn packer(aggregate: bool, compress: Compression, shards: usize, max: usize) -> Packer {
        let map = ShardMap::new(ShardRange::split_evenly(shards)).unwrap();
        let mut packer = Packer::new(
            aggregate,
            compress,
            Some(Arc::new(SharedShardMap::fixed(map))),
            max,
        );
        // Keys the packer draws are the same in every run, so what a test counts of them is too.
        packer.rng = KeyRng::from_seed(11);
        packer
    }

    fn progress() -> Arc<FileProgress> {
        FileProgress::new(
            FileId { dev: 1, ino: 1 },
            "/a".into(),
            Fingerprint::default(),
            0,
        )
    }

    fn records(progress: &Arc<FileProgress>, n: u64) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                data: format!("line {i} {}", "한".repeat((i % 7) as usize)).into(),
                partition_key: format!("key-{}", i % 13).into(),
                ack: progress.token(i * 10, i * 10 + 10).into(),
                shard: None,
                user_records: 1,
                random_key: false,
            })
            .collect()
    }

    #[test]
    fn aggregates_hold_only_records_of_their_shard_and_round_trip() {
        for compress in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let progress = progress();
            let map = ShardMap::new(ShardRange::split_evenly(4)).unwrap();
            let mut packer = packer(true, compress, 4, 2048);
            let mut out = Vec::new();
            packer.begin(&mut out);
            for record in records(&progress, 500) {
                packer.push(record, &mut out);
            }
            packer.drain(&mut out);
            assert!(
                out.len() < 500 / 4,
                "{compress}: {} records for 500 lines",
                out.len()
            );
            let mut seen = Vec::new();
            let mut user_records = 0;
            for record in out {
                let shard = record
                    .shard
                    .clone()
                    .expect("every aggregate names its shard");
                let data = crate::compress::decompress(&record.data, 1 << 20).unwrap();
                let users =
                    crate::aggregate::deaggregate_or_single(&record.partition_key, &data).unwrap();
                assert_eq!(users.len() as u32, record.user_records);
                user_records += users.len();
                for (key, data) in users {
                    assert_eq!(
                        map.shard_for_key(&key),
                        Some(&*shard),
                        "{key} packed for the wrong shard"
                    );
                    seen.push(String::from_utf8(data).unwrap());
                }
                crate::ack::ack_all(record.ack);
            }
            assert_eq!(user_records, 500);
            let mut expected: Vec<String> = (0..500)
                .map(|i| format!("line {i} {}", "한".repeat(i % 7)))
                .collect();
            expected.sort();
            seen.sort();
            assert_eq!(seen, expected);
            assert_eq!(
                progress.committed(),
                5000,
                "every user record's range acknowledged"
            );
        }
    }

    #[test]
    fn closed_aggregates_are_sealed_together_and_leave_in_order() {
        let progress = progress();
        let mut packer = packer(true, Compression::None, 1, 1024);
        packer.lanes = 4;
        let mut out = Vec::new();
        packer.begin(&mut out);
        let record = |i: u64, len: usize| Record {
            data: format!("{i:04} {}", "x".repeat(len)).into(),
            partition_key: format!("key-{}", i % 3).into(),
            ack: progress.token(i * 10, i * 10 + 10).into(),
            shard: None,
            user_records: 1,
            random_key: false,
        };
        // Each aggregate holds about nine of these: nothing leaves until four are closed.
        let mut i = 0;
        let mut closed_at = Vec::new();
        while out.is_empty() {
            packer.push(record(i, 95), &mut out);
            closed_at.push(out.len());
            i += 1;
        }
        assert_eq!(out.len(), 4, "the first four aggregates leave together");
        assert!(i > 30, "only after {i} records");
        // Two more closed, then a record too large for any aggregate: it closes the open one
        // too, and the three go before it.
        while packer.unsealed.len() < 2 {
            packer.push(record(i, 95), &mut out);
            i += 1;
        }
        packer.push(record(i, 95), &mut out);
        i += 1;
        assert_eq!(out.len(), 4);
        assert!(!packer.is_empty());
        packer.push(record(i, 2000), &mut out);
        i += 1;
        assert_eq!(out.len(), 8);
        assert_eq!(out[6].user_records, 2);
        assert_eq!(out[7].user_records, 1);
        packer.push(record(i, 95), &mut out);
        i += 1;
        packer.drain(&mut out);
        assert!(packer.is_empty());

        // Every aggregate is whole (its MD5 checked), and the lines come out in input order.
        let mut lines = Vec::new();
        for record in out {
            let users =
                crate::aggregate::deaggregate_or_single(&record.partition_key, &record.data)
                    .unwrap();
            lines.extend(users.into_iter().map(|(_, data)| data[..4].to_vec()));
            crate::ack::ack_all(record.ack);
        }
        let expected: Vec<Vec<u8>> = (0..i).map(|n| format!("{n:04}").into_bytes()).collect();
        assert_eq!(lines, expected);
        assert_eq!(progress.committed(), i * 10);
    }

    #[test]
    fn without_aggregation_records_pass_with_their_shard() {
        let progress = progress();
        let mut packer = packer(false, Compression::None, 2, 2048);
        let mut out = Vec::new();
        packer.begin(&mut out);
        for record in records(&progress, 10) {
            packer.push(record, &mut out);
        }
        assert_eq!(out.len(), 10);
        assert!(packer.is_empty());
        assert!(out.iter().all(|r| r.shard.is_some() && r.user_records == 1));
    }

    #[test]
    fn a_record_left_without_a_key_gets_a_random_one_of_its_own() {
        for aggregate in [false, true] {
            let progress = progress();
            // Aggregates that hold one record each: every record goes alone, under its own key.
            let mut packer = packer(aggregate, Compression::None, 4, 32);
            let mut out = Vec::new();
            packer.begin(&mut out);
            for mut record in records(&progress, 200) {
                record.partition_key = Default::default();
                record.random_key = true;
                packer.push(record, &mut out);
            }
            packer.drain(&mut out);
            assert_eq!(out.len(), 200, "aggregate: {aggregate}");
            let keys: HashSet<_> = out.iter().map(|r| r.partition_key.clone()).collect();
            assert_eq!(keys.len(), 200, "every record has its own key");
            assert!(keys.iter().all(|key| key.len() == 16));
            let shards: HashSet<_> = out.iter().map(|r| r.shard.clone().unwrap()).collect();
            assert_eq!(shards.len(), 4, "they spread over the shards");
        }
    }

    #[test]
    fn random_keyed_records_share_one_key_per_aggregate() {
        // Large aggregates: every random-keyed record joins the first one that has a random key.
        // Small ones: they fill one aggregate after another, each on the shard of its own key.
        // Random keys come drawn already, or left empty for the packer to draw (as the record
        // builder leaves them).
        let cases = [(1 << 20, 1..=1), (2048, 10..=300)]
            .into_iter()
            .flat_map(|case| [(case.clone(), false), (case, true)]);
        for ((max, random_aggregates), deferred) in cases {
            let progress = progress();
            let map = ShardMap::new(ShardRange::split_evenly(4)).unwrap();
            let mut rng = KeyRng::from_seed(7);
            let mut packer = packer(true, Compression::None, 4, max);
            let mut out = Vec::new();
            packer.begin(&mut out);
            for i in 0..400u64 {
                // Every fourth record keeps a chosen key; the others have random ones.
                let chosen = i.is_multiple_of(4);
                let partition_key = if chosen {
                    format!("task-{i}")
                } else if deferred {
                    String::new()
                } else {
                    format!("{:016x}", rng.next_u64())
                };
                packer.push(
                    Record {
                        data: format!("line {i:03} {}", "x".repeat(40)).into(),
                        partition_key: partition_key.into(),
                        ack: progress.token(i * 10, i * 10 + 10).into(),
                        shard: None,
                        user_records: 1,
                        random_key: !chosen,
                    },
                    &mut out,
                );
            }
            packer.drain(&mut out);
            let (mut lines, mut with_random, mut shards_with_random) = (0, 0, HashSet::new());
            for record in out {
                let users =
                    crate::aggregate::deaggregate_or_single(&record.partition_key, &record.data)
                        .unwrap();
                let shard = record.shard.clone().unwrap();
                let mut random_keys = HashSet::new();
                for (key, data) in &users {
                    assert_eq!(map.shard_for_key(key), Some(&*shard), "{key}");
                    let i: u64 = String::from_utf8(data.clone()).unwrap()[5..8]
                        .parse()
                        .unwrap();
                    if i.is_multiple_of(4) {
                        assert_eq!(key, &format!("task-{i}"), "a chosen key is kept");
                    } else {
                        assert_eq!(key.len(), 16, "a random key: {key:?}");
                        random_keys.insert(key.clone());
                    }
                }
                assert!(
                    random_keys.len() <= 1,
                    "{max}: random keys not shared: {random_keys:?}"
                );
                if !random_keys.is_empty() {
                    with_random += 1;
                    shards_with_random.insert(shard);
                }
                lines += users.len();
                crate::ack::ack_all(record.ack);
            }
            assert_eq!(lines, 400);
            assert!(
                random_aggregates.contains(&with_random),
                "{max}: {with_random}"
            );
            if max == 2048 {
                assert_eq!(shards_with_random.len(), 4, "random-keyed records spread");
            }
            assert_eq!(progress.committed(), 4000);
        }
    }
}
