//! From user records to Firehose: the [`Packer`] turns one shard's user records into Firehose
//! records and batches within the PutRecordBatch limits, registering each Firehose record with the
//! shard's [`Progress`]; [`forward`] sends a shard's batches one after another (so its records
//! reach Firehose in order) and acknowledges them once Firehose accepted them.
//!
//! With the newline delimiter, user records are packed into Firehose records of up to
//! [`PACKED_RECORD_BYTES`], each line ending with a newline: S3 receives the same bytes as with one
//! Firehose record per line (Firehose concatenates records), in far fewer entries. With no
//! delimiter, each user record is one Firehose record, as it was.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::error;

use super::dead_letters::DeadLetters;
use super::position::Position;
use super::progress::{Progress, Ticket};
use super::settings::Delimiter;
use crate::sinks::firehose::{
    Delivery, MAX_BATCH_RECORDS, MAX_RECORD_BYTES, SdkTransport, Sink, Transport,
};
use crate::telemetry::consume::ConsumeMetrics;

/// Firehose records packed up to this many bytes of lines: large enough that a call of 1 MiB is a
/// few entries, small enough that a failed entry resends little.
pub const PACKED_RECORD_BYTES: usize = 128 * 1024;
/// Most data bytes in one PutRecordBatch call we send (Firehose takes 4 MiB): each call in flight
/// is held about three times over (our copy, the SDK's, its base64 JSON body).
pub const BATCH_BYTES: usize = 1 << 20;

/// A batch for one PutRecordBatch call, all of one shard.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<Bytes>,
    /// Per record: its ticket in the shard's progress, its last user record, how many user records.
    pub tickets: Vec<Ticket>,
    pub last_positions: Vec<Position>,
    pub user_records: Vec<u64>,
    pub bytes: usize,
}

pub struct Packer {
    delimiter: Delimiter,
    progress: Arc<Progress>,
    batch_bytes: usize,
    record: Vec<u8>,
    record_users: u64,
    /// The last user record covered by the open record (or, with none open, by the next one):
    /// dropped user records are covered by the record after them.
    last: Option<Position>,
    batch: Batch,
}

impl Packer {
    pub fn new(delimiter: Delimiter, progress: Arc<Progress>) -> Packer {
        Packer::with_batch_bytes(delimiter, progress, BATCH_BYTES)
    }

    pub fn with_batch_bytes(
        delimiter: Delimiter,
        progress: Arc<Progress>,
        batch_bytes: usize,
    ) -> Packer {
        Packer {
            delimiter,
            progress,
            batch_bytes,
            record: Vec::new(),
            record_users: 0,
            last: None,
            batch: Batch::default(),
        }
    }

    /// The largest user record that fits a Firehose record with its delimiter.
    pub fn max_user_bytes(delimiter: Delimiter) -> usize {
        match delimiter {
            Delimiter::Newline => MAX_RECORD_BYTES - 1,
            Delimiter::None => MAX_RECORD_BYTES,
        }
    }

    /// Add a user record (at most [`Packer::max_user_bytes`]); returns a batch when one is full.
    pub fn push(&mut self, position: Position, data: &[u8]) -> Option<Batch> {
        let mut full = None;
        let needed = match self.delimiter {
            Delimiter::Newline => data.len() + usize::from(!data.ends_with(b"\n")),
            Delimiter::None => data.len(),
        };
        let packs = self.delimiter == Delimiter::Newline;
        if !self.record.is_empty()
            && (!packs || self.record.len() + needed > PACKED_RECORD_BYTES.max(needed))
        {
            full = self.close_record();
        }
        self.record.extend_from_slice(data);
        if needed > data.len() {
            self.record.push(b'\n');
        }
        self.record_users += 1;
        self.last = Some(position);
        if !packs {
            full = full.or(self.close_record());
        }
        full
    }

    /// A user record that will not be sent (a duplicate, or dead-lettered): the next Firehose
    /// record covers it, so the checkpoint passes it only once everything before it is forwarded.
    pub fn skip(&mut self, position: Position) {
        self.last = Some(position);
    }

    /// Close the open record and hand over what is batched, however small.
    pub fn flush(&mut self) -> Vec<Batch> {
        let mut batches: Vec<Batch> = self.close_record().into_iter().collect();
        if let Some(last) = self.last.take() {
            // Only skipped user records since the last Firehose record: nothing to wait for.
            self.progress.register(last, true);
        }
        if !self.batch.records.is_empty() {
            batches.push(std::mem::take(&mut self.batch));
        }
        batches
    }

    /// Move the open record into the batch; returns the previous batch if the record did not fit.
    fn close_record(&mut self) -> Option<Batch> {
        if self.record.is_empty() {
            return None;
        }
        let record = std::mem::take(&mut self.record);
        let last = self.last.take()?;
        let mut full = None;
        if !self.batch.records.is_empty()
            && (self.batch.records.len() == MAX_BATCH_RECORDS
                || self.batch.bytes + record.len() > self.batch_bytes)
        {
            full = Some(std::mem::take(&mut self.batch));
        }
        let ticket = self.progress.register(last.clone(), false);
        self.batch.bytes += record.len();
        self.batch.records.push(Bytes::from(record));
        self.batch.tickets.push(ticket);
        self.batch.last_positions.push(last);
        self.batch
            .user_records
            .push(std::mem::take(&mut self.record_users));
        full
    }
}

/// Send `shard`'s batches in order until the channel closes (its reader stopped) or `hard_stop`.
pub async fn forward(
    shard_id: Arc<str>,
    mut batches: mpsc::Receiver<Batch>,
    sink: Arc<Sink<SdkTransport>>,
    progress: Arc<Progress>,
    dead_letters: Arc<DeadLetters>,
    metrics: Arc<ConsumeMetrics>,
    hard_stop: CancellationToken,
) {
    forward_with(
        shard_id,
        &mut batches,
        &sink,
        &progress,
        &dead_letters,
        &metrics,
        &hard_stop,
    )
    .await;
}

pub async fn forward_with<T: Transport>(
    shard_id: Arc<str>,
    batches: &mut mpsc::Receiver<Batch>,
    sink: &Sink<T>,
    progress: &Progress,
    dead_letters: &DeadLetters,
    metrics: &ConsumeMetrics,
    hard_stop: &CancellationToken,
) {
    loop {
        let batch = tokio::select! {
            batch = batches.recv() => match batch {
                Some(batch) => batch,
                None => return,
            },
            () = hard_stop.cancelled() => return,
        };
        let Some(outcomes) = sink.send(&batch.records, hard_stop).await else {
            return;
        };
        let mut acked = Vec::with_capacity(batch.tickets.len());
        let (mut users, mut bytes) = (0, 0);
        for (index, outcome) in outcomes.into_iter().enumerate() {
            match outcome {
                Delivery::Delivered => {
                    users += batch.user_records[index];
                    bytes += batch.records[index].len() as u64;
                    acked.push(batch.tickets[index]);
                }
                Delivery::Refused { code, message } => {
                    let written = dead_letters.write_forwarding(
                        &shard_id,
                        &batch.last_positions[index],
                        &code,
                        &message,
                        &batch.records[index],
                    );
                    match written {
                        Ok(()) => {
                            ConsumeMetrics::add(
                                &metrics.dead_lettered_total,
                                batch.user_records[index],
                            );
                            acked.push(batch.tickets[index]);
                        }
                        // Not acknowledged: the checkpoint stays before it, a restart reads it again.
                        Err(io_error) => {
                            error!(shard_id = %shard_id, error = %io_error, "cannot write the dead-letter file; the records stay unacknowledged")
                        }
                    }
                }
            }
        }
        ConsumeMetrics::add(&metrics.user_records_forwarded_total, users);
        ConsumeMetrics::add(&metrics.user_bytes_forwarded_total, bytes);
        metrics.shard(&shard_id, |stats| stats.user_records_forwarded += users);
        progress.ack(acked);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consume::position::SequenceNumber;
    use proptest::prelude::*;

    fn position(n: u64) -> Position {
        Position {
            sequence: SequenceNumber::new(&(100 + n).to_string()),
            sub_sequence: 0,
        }
    }

    fn drain(packer: &mut Packer, records: &[Vec<u8>], skip_every: usize) -> Vec<Batch> {
        let mut batches = Vec::new();
        for (i, data) in records.iter().enumerate() {
            if skip_every > 0 && i % skip_every == skip_every - 1 {
                packer.skip(position(i as u64));
            } else {
                batches.extend(packer.push(position(i as u64), data));
            }
        }
        batches.extend(packer.flush());
        batches
    }

    proptest! {
        /// Batches keep within the PutRecordBatch limits, records within the record limit, and
        /// together they carry every line once, in order, each ending with a newline.
        #[test]
        fn batches_respect_the_limits_and_keep_every_line(
            sizes in prop::collection::vec(0usize..300_000, 1..60),
            batch_bytes in (MAX_RECORD_BYTES..=4 << 20),
            skip_every in 0usize..5,
        ) {
            let records: Vec<Vec<u8>> = sizes.iter().enumerate()
                .map(|(i, &n)| { let mut r = vec![b'a' + (i % 26) as u8; n]; r.truncate(n); r })
                .collect();
            let progress = Arc::new(Progress::new(None));
            let mut packer = Packer::with_batch_bytes(Delimiter::Newline, Arc::clone(&progress), batch_bytes);
            let batches = drain(&mut packer, &records, skip_every);
            let mut all = Vec::new();
            for batch in &batches {
                prop_assert!(!batch.records.is_empty());
                prop_assert!(batch.records.len() <= MAX_BATCH_RECORDS);
                prop_assert!(batch.bytes <= batch_bytes.max(MAX_RECORD_BYTES));
                prop_assert_eq!(batch.bytes, batch.records.iter().map(Bytes::len).sum::<usize>());
                for record in &batch.records {
                    prop_assert!(record.len() <= MAX_RECORD_BYTES);
                    all.extend_from_slice(record);
                }
            }
            let mut expected = Vec::new();
            for (i, record) in records.iter().enumerate() {
                if skip_every == 0 || i % skip_every != skip_every - 1 {
                    expected.extend_from_slice(record);
                    expected.push(b'\n');
                }
            }
            prop_assert_eq!(all, expected);
            // Acknowledging every record commits the last user record, skipped or not.
            for batch in &batches {
                progress.ack(batch.tickets.iter().copied());
            }
            prop_assert_eq!(progress.snapshot().committed, Some(position(records.len() as u64 - 1)));
            prop_assert_eq!(progress.snapshot().in_flight, 0);
        }
    }

    #[test]
    fn without_a_delimiter_each_user_record_is_a_firehose_record() {
        let progress = Arc::new(Progress::new(None));
        let mut packer = Packer::new(Delimiter::None, progress);
        let records: Vec<Vec<u8>> = (0..1200).map(|i| format!("r{i}").into_bytes()).collect();
        let batches = drain(&mut packer, &records, 0);
        let counts: Vec<usize> = batches.iter().map(|b| b.records.len()).collect();
        assert_eq!(counts, [500, 500, 200]);
        assert_eq!(batches[0].records[7].as_ref(), b"r7");
    }
}
