//! Batching records into PutRecords requests: the Kinesis limits, and the linger timer.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::record::Record;

/// PutRecords accepts at most 500 records per request (Kinesis API reference, PutRecords).
pub const MAX_RECORDS_PER_REQUEST: usize = 500;
/// A PutRecords request carries at most 5 MiB, counting data and partition keys (PutRecords).
pub const MAX_BYTES_PER_REQUEST: usize = 5 * 1024 * 1024;
/// One record carries at most 1 MiB, data plus partition key, unless the stream's maximum record
/// size was raised (Kinesis quotas: "maximum size of a data blob ... 1 MiB").
pub const MAX_BYTES_PER_RECORD: usize = 1024 * 1024;
/// Streams with a raised record size accept records and requests up to 10 MiB (UpdateMaxRecordSize).
pub const RAISED_MAX_BYTES: usize = 10 * 1024 * 1024;
/// A partition key is 1 to 256 Unicode characters (PutRecordsRequestEntry.PartitionKey); in UTF-8
/// that is at most 1024 bytes, which is what a record reserves for its key.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;
pub const MAX_PARTITION_KEY_BYTES: usize = 4 * MAX_PARTITION_KEY_CHARS;

/// The limits one batch keeps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub max_records: usize,
    pub max_bytes: usize,
    pub max_record_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_records: MAX_RECORDS_PER_REQUEST,
            max_bytes: MAX_BYTES_PER_REQUEST,
            max_record_bytes: MAX_BYTES_PER_RECORD,
        }
    }
}

impl Limits {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_RECORDS_PER_REQUEST).contains(&self.max_records) {
            return Err(format!(
                "max_batch_records {} is not in 1..=500",
                self.max_records
            ));
        }
        let smallest_record = MAX_PARTITION_KEY_BYTES + 1024;
        if !(smallest_record..=RAISED_MAX_BYTES).contains(&self.max_record_bytes) {
            return Err(format!(
                "max_record_bytes {} is not in {smallest_record}..={RAISED_MAX_BYTES}",
                self.max_record_bytes
            ));
        }
        if !(self.max_record_bytes..=RAISED_MAX_BYTES).contains(&self.max_bytes) {
            return Err(format!(
                "max_batch_bytes {} is not in max_record_bytes ({})..={RAISED_MAX_BYTES}",
                self.max_bytes, self.max_record_bytes
            ));
        }
        Ok(())
    }

    /// The most data bytes a record may carry, leaving room for the longest partition key.
    pub fn max_data_bytes(&self) -> usize {
        self.max_record_bytes - MAX_PARTITION_KEY_BYTES
    }
}

/// Records bound for one PutRecords request.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<Record>,
    /// Data plus partition key bytes of all records.
    pub bytes: usize,
}

/// Accumulates records and cuts batches at the limits.
#[derive(Debug)]
pub struct Batcher {
    limits: Limits,
    current: Batch,
    /// With rate control: what one batch may carry per shard, and what the open batch carries.
    shard_budget: Option<ShardBudget>,
    per_shard: std::collections::HashMap<std::sync::Arc<str>, (usize, usize)>,
}

/// The most one request may carry for one shard. A request carrying more than a shard takes in a
/// fraction of a second gets throttled however well requests are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardBudget {
    pub max_records: usize,
    pub max_bytes: usize,
}

/// What became of a record given to [`Batcher::push`].
#[derive(Debug)]
pub enum Pushed {
    /// Added to the open batch.
    Added,
    /// The open batch was full: here it is; the record starts the next one.
    Full(Batch),
    /// The record alone is over the per-record limit and was not added.
    Oversize(Record),
}

impl Batcher {
    pub fn new(limits: Limits) -> Self {
        Batcher {
            limits,
            current: Batch::default(),
            shard_budget: None,
            per_shard: std::collections::HashMap::new(),
        }
    }

    /// Also cut a batch when one shard's share would pass `budget` (records without a shard are
    /// not counted).
    pub fn with_shard_budget(mut self, budget: Option<ShardBudget>) -> Self {
        self.shard_budget = budget;
        self
    }

    fn fits_shard(&self, record: &Record, size: usize) -> bool {
        let (Some(budget), Some(shard)) = (self.shard_budget, &record.shard) else {
            return true;
        };
        let (records, bytes) = self.per_shard.get(shard).copied().unwrap_or_default();
        records == 0 || (records < budget.max_records && bytes + size <= budget.max_bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.current.records.is_empty()
    }

    pub fn push(&mut self, record: Record) -> Pushed {
        let size = record.size();
        if size > self.limits.max_record_bytes {
            return Pushed::Oversize(record);
        }
        let fits = self.current.records.len() < self.limits.max_records
            && self.current.bytes + size <= self.limits.max_bytes
            && self.fits_shard(&record, size);
        let full = if fits { None } else { self.take() };
        if let (Some(_), Some(shard)) = (self.shard_budget, &record.shard) {
            let entry = self
                .per_shard
                .entry(std::sync::Arc::clone(shard))
                .or_default();
            entry.0 += 1;
            entry.1 += size;
        }
        self.current.bytes += size;
        self.current.records.push(record);
        match full {
            Some(batch) => Pushed::Full(batch),
            None => Pushed::Added,
        }
    }

    /// The open batch, if it has any record.
    pub fn take(&mut self) -> Option<Batch> {
        if self.current.records.is_empty() {
            None
        } else {
            self.per_shard.clear();
            // The next batch starts with room for as many records as this one had: at a steady
            // rate it fills without growing (a full batch of 500 would otherwise grow 9 times,
            // copying its records each time).
            let next = Batch {
                records: Vec::with_capacity(self.current.records.len()),
                bytes: 0,
            };
            Some(std::mem::replace(&mut self.current, next))
        }
    }
}

/// A stage between the record chunks and the batcher that may hold records back (aggregation).
pub trait Stage {
    /// Called before each chunk; may release held records into `out`.
    fn begin(&mut self, out: &mut Vec<Record>);
    /// Take a record; records ready to batch go to `out`.
    fn push(&mut self, record: Record, out: &mut Vec<Record>);
    /// Release everything held (linger elapsed, or the input ended).
    fn drain(&mut self, out: &mut Vec<Record>);
    fn is_empty(&self) -> bool;
}

/// A stage that holds nothing back.
#[derive(Debug, Default)]
pub struct Passthrough;

impl Stage for Passthrough {
    fn begin(&mut self, _out: &mut Vec<Record>) {}
    fn push(&mut self, record: Record, out: &mut Vec<Record>) {
        out.push(record);
    }
    fn drain(&mut self, _out: &mut Vec<Record>) {}
    fn is_empty(&self) -> bool {
        true
    }
}

/// Where batches and rejected records go.
pub trait Dispatch {
    /// Send a batch; waits while the sink has no room (this is what pauses reading).
    fn batch(&mut self, batch: Batch) -> impl Future<Output = ()> + Send;
    /// A record over the per-record limit.
    fn oversize(&mut self, record: Record) -> impl Future<Output = ()> + Send;
}

/// Read record chunks until the channel closes, passing them through `stage`, and send a batch when
/// it is full or when its first record has waited `linger`. What is held is sent when the input
/// ends.
pub async fn run(
    mut input: mpsc::Receiver<Vec<Record>>,
    limits: Limits,
    shard_budget: Option<ShardBudget>,
    linger: Duration,
    stage: &mut impl Stage,
    dispatch: &mut impl Dispatch,
) {
    let mut batcher = Batcher::new(limits).with_shard_budget(shard_budget);
    let mut deadline: Option<Instant> = None;
    let mut ready = Vec::new();
    loop {
        let chunk = match deadline {
            Some(at) => tokio::select! {
                chunk = input.recv() => chunk,
                () = tokio::time::sleep_until(at) => {
                    deadline = None;
                    stage.drain(&mut ready);
                    add(&mut batcher, &mut ready, dispatch).await;
                    if let Some(batch) = batcher.take() {
                        dispatch.batch(batch).await;
                    }
                    continue;
                }
            },
            None => input.recv().await,
        };
        let Some(chunk) = chunk else { break };
        stage.begin(&mut ready);
        for record in chunk {
            stage.push(record, &mut ready);
        }
        if add(&mut batcher, &mut ready, dispatch).await {
            deadline = Some(Instant::now() + linger);
        }
        if deadline.is_none() && !(batcher.is_empty() && stage.is_empty()) {
            deadline = Some(Instant::now() + linger);
        }
    }
    stage.drain(&mut ready);
    add(&mut batcher, &mut ready, dispatch).await;
    if let Some(batch) = batcher.take() {
        dispatch.batch(batch).await;
    }
}

/// Move `ready` records into the batcher, dispatching full batches; true when one was dispatched
/// (the linger timer then starts again for the records left).
async fn add(batcher: &mut Batcher, ready: &mut Vec<Record>, dispatch: &mut impl Dispatch) -> bool {
    let mut dispatched = false;
    for record in ready.drain(..) {
        match batcher.push(record) {
            Pushed::Added => {}
            Pushed::Full(batch) => {
                dispatched = true;
                dispatch.batch(batch).await;
            }
            Pushed::Oversize(record) => dispatch.oversize(record).await,
        }
    }
    dispatched
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::{FileId, FileProgress, Fingerprint};
    use proptest::prelude::*;
    use std::sync::Arc;

    fn progress() -> Arc<FileProgress> {
        FileProgress::new(
            FileId { dev: 0, ino: 0 },
            "/t".into(),
            Fingerprint::default(),
            0,
        )
    }

    fn record(progress: &Arc<FileProgress>, offset: u64, data_len: usize, key: &str) -> Record {
        Record {
            data: vec![b'x'; data_len].into(),
            partition_key: key.into(),
            ack: progress.token(offset, offset + 1).into(),
            shard: None,
            user_records: 1,
            random_key: false,
        }
    }

    proptest! {
        /// Whatever the record sizes and keys (multi-byte too), no batch breaks a limit, and every
        /// record comes out exactly once, in order.
        #[test]
        fn batches_never_exceed_a_limit(
            sizes in proptest::collection::vec((0usize..300_000, "[a-zé한😀]{1,256}"), 1..200),
            max_records in 1usize..=500,
            max_bytes in (MAX_BYTES_PER_RECORD..=2 * MAX_BYTES_PER_RECORD),
        ) {
            let limits = Limits { max_records, max_bytes, max_record_bytes: MAX_BYTES_PER_RECORD };
            let p = progress();
            let mut batcher = Batcher::new(limits);
            let mut batches = Vec::new();
            for (i, (len, key)) in sizes.iter().enumerate() {
                match batcher.push(record(&p, i as u64, *len, key)) {
                    Pushed::Added => {}
                    Pushed::Full(batch) => batches.push(batch),
                    Pushed::Oversize(_) => prop_assert!(false, "no record here is over 1 MiB"),
                }
            }
            batches.extend(batcher.take());
            let mut seen = 0u64;
            for batch in &batches {
                prop_assert!(!batch.records.is_empty());
                prop_assert!(batch.records.len() <= max_records);
                let bytes: usize = batch.records.iter().map(|r| r.data.len() + r.partition_key.len()).sum();
                prop_assert_eq!(bytes, batch.bytes);
                prop_assert!(bytes <= max_bytes);
                for r in &batch.records {
                    prop_assert!(r.size() <= MAX_BYTES_PER_RECORD);
                    prop_assert_eq!(r.ack.first().unwrap().range().0, seen);
                    seen += 1;
                }
            }
            prop_assert_eq!(seen as usize, sizes.len());
        }
    }

    #[test]
    fn a_shard_budget_cuts_batches_per_shard() {
        let p = progress();
        let budget = ShardBudget {
            max_records: 1000,
            max_bytes: 250,
        };
        let mut batcher = Batcher::new(Limits::default()).with_shard_budget(Some(budget));
        let mut full = Vec::new();
        for i in 0..6u64 {
            let mut r = record(&p, i, 99, "k");
            // Two shards, alternating: each may take two 100-byte records per batch.
            r.shard = Some(std::sync::Arc::from(if i % 2 == 0 { "a" } else { "b" }));
            if let Pushed::Full(batch) = batcher.push(r) {
                full.push(batch.records.len());
            }
        }
        full.extend(batcher.take().map(|b| b.records.len()));
        assert_eq!(full, vec![4, 2]);
    }

    #[test]
    fn a_batch_after_a_full_one_fills_without_growing() {
        let p = progress();
        let mut batcher = Batcher::new(Limits::default());
        let mut full = Vec::new();
        for i in 0..1001u64 {
            if let Pushed::Full(batch) = batcher.push(record(&p, i, 10, "k")) {
                full.push(batch);
            }
        }
        let [first, second] = full.as_slice() else {
            panic!("expected two full batches, got {}", full.len());
        };
        assert_eq!((first.records.len(), second.records.len()), (500, 500));
        // The second batch was given room for 500 when the first was cut, so it never grew.
        assert_eq!(second.records.capacity(), 500);
        let open = batcher.take().expect("the 1001st record");
        assert_eq!((open.records.len(), open.records.capacity()), (1, 500));
    }

    #[test]
    fn oversize_record_is_given_back() {
        let p = progress();
        let mut batcher = Batcher::new(Limits::default());
        let big = record(&p, 0, MAX_BYTES_PER_RECORD, "k");
        assert!(matches!(batcher.push(big), Pushed::Oversize(_)));
        assert!(batcher.is_empty());
    }

    #[test]
    fn limits_are_validated() {
        assert!(Limits::default().validate().is_ok());
        assert!(
            Limits {
                max_records: 0,
                ..Limits::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            Limits {
                max_records: 501,
                ..Limits::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            Limits {
                max_bytes: 100,
                ..Limits::default()
            }
            .validate()
            .is_err()
        );
        let raised = Limits {
            max_records: 500,
            max_bytes: RAISED_MAX_BYTES,
            max_record_bytes: RAISED_MAX_BYTES,
        };
        assert!(raised.validate().is_ok());
        assert!(
            Limits {
                max_bytes: RAISED_MAX_BYTES + 1,
                ..raised
            }
            .validate()
            .is_err()
        );
    }

    #[derive(Default)]
    struct Collect {
        batches: Vec<(Instant, usize)>,
    }

    impl Dispatch for Collect {
        async fn batch(&mut self, batch: Batch) {
            self.batches.push((Instant::now(), batch.records.len()));
        }
        async fn oversize(&mut self, _record: Record) {}
    }

    #[tokio::test(start_paused = true)]
    async fn linger_sends_a_partial_batch_after_the_delay() {
        let (tx, rx) = mpsc::channel(4);
        let p = progress();
        let start = Instant::now();
        let task = tokio::spawn(async move {
            let mut collect = Collect::default();
            run(
                rx,
                Limits::default(),
                None,
                Duration::from_millis(200),
                &mut Passthrough,
                &mut collect,
            )
            .await;
            collect
        });
        tx.send(vec![record(&p, 0, 10, "k"), record(&p, 1, 10, "k")])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send(vec![record(&p, 2, 10, "k")]).await.unwrap();
        drop(tx);
        let collect = task.await.unwrap();
        assert_eq!(collect.batches.len(), 2);
        assert_eq!(collect.batches[0].1, 2);
        assert_eq!(collect.batches[0].0 - start, Duration::from_millis(200));
        assert_eq!(
            collect.batches[1].1, 1,
            "the input's end flushes the rest at once"
        );
        assert_eq!(collect.batches[1].0 - start, Duration::from_secs(1));
    }
}
