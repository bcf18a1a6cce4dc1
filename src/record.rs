//! The unit that flows from sources to the sink.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use compact_str::CompactString;

use crate::ack::Acks;

/// One Kinesis record (a user record, or a KPL aggregate of several): the bytes to send, its partition key, and the token that acknowledges
/// the source bytes it came from once Kinesis has accepted it.
#[derive(Debug)]
pub struct Record {
    pub data: Bytes,
    /// Inline up to 24 bytes (a `{random}` key is 16): no allocation per line for the common key.
    pub partition_key: CompactString,
    pub ack: Acks,
    /// The shard this record is expected to land on, when a shard map is known (aggregates, and
    /// every record when rate control is on).
    pub shard: Option<Arc<str>>,
    /// User records inside: 1, or the count packed into an aggregate.
    pub user_records: u32,
    /// The partition key is random and nothing else: inside an aggregate, the record can share
    /// the key of another random-keyed record of the same shard.
    pub random_key: bool,
}

impl Record {
    /// Bytes this record counts against the PutRecords limits: data plus partition key (UTF-8).
    pub fn size(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }

    /// Gives the record its own copy of its data when it may be a slice of an [`Arena`] block.
    /// Done for a record that is retried: one record waiting out throttling or errors then holds
    /// its own bytes, not a whole block shared with records long delivered.
    pub fn unshare(&mut self) {
        if self.data.len() <= ARENA_RECORD_MAX_BYTES {
            self.data = Bytes::copy_from_slice(&self.data);
        }
    }
}

/// Size of one [`Arena`] block.
const ARENA_BLOCK_BYTES: usize = 64 * 1024;
/// Larger data is not copied into a block: it keeps its own allocation.
const ARENA_RECORD_MAX_BYTES: usize = ARENA_BLOCK_BYTES / 8;

/// Data for many records in one allocation. A small record's bytes are copied into the current
/// block and handed out as a slice sharing it, so a line costs a copy and a reference count rather
/// than an allocation on the reading thread and a free on the sending one. A block is freed when
/// the last of its records is dropped.
#[derive(Debug, Default)]
pub struct Arena {
    block: BytesMut,
}

impl Arena {
    /// The record data for `data`. A small one is copied into a block and `data` is left for
    /// reuse (emptied, with its capacity); a large one is moved, and `data` is left empty.
    pub fn take(&mut self, data: &mut Vec<u8>) -> Bytes {
        if data.len() > ARENA_RECORD_MAX_BYTES {
            return Bytes::from(std::mem::take(data));
        }
        let taken = self.copy(data);
        data.clear();
        taken
    }

    /// The record data for a copy of `data`: in a block when it is small, else on its own.
    pub fn copy(&mut self, data: &[u8]) -> Bytes {
        if data.len() > ARENA_RECORD_MAX_BYTES {
            return Bytes::copy_from_slice(data);
        }
        if self.block.capacity() - self.block.len() < data.len() {
            self.block = BytesMut::with_capacity(ARENA_BLOCK_BYTES);
        }
        self.block.extend_from_slice(data);
        self.block.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_data_shares_blocks_and_large_data_keeps_its_own() {
        let mut arena = Arena::default();
        let mut buffer = Vec::with_capacity(300);
        let mut taken = Vec::new();
        for i in 0..1000u32 {
            buffer
                .extend_from_slice(format!("line {i} {}", "x".repeat(i as usize % 200)).as_bytes());
            let expected = buffer.clone();
            let data = arena.take(&mut buffer);
            assert_eq!(data, expected);
            assert!(
                buffer.is_empty() && buffer.capacity() >= 300,
                "left for reuse"
            );
            taken.push((data, expected));
        }
        // Earlier slices are untouched by later ones, across blocks.
        for (data, expected) in &taken {
            assert_eq!(data, expected);
        }
        let distinct_blocks = taken
            .windows(2)
            .filter(|pair| {
                let end = pair[0].0.as_ptr() as usize + pair[0].0.len();
                end != pair[1].0.as_ptr() as usize
            })
            .count();
        assert!(
            (1..20).contains(&distinct_blocks),
            "about 100 KiB of lines in 64 KiB blocks, not one allocation each: {distinct_blocks}"
        );

        let mut large = vec![7u8; ARENA_RECORD_MAX_BYTES + 1];
        let pointer = large.as_ptr();
        let data = arena.take(&mut large);
        assert_eq!(data.as_ptr(), pointer, "moved, not copied");
        assert!(large.is_empty());
    }

    #[test]
    fn a_retried_record_lets_go_of_its_block() {
        let progress = crate::ack::FileProgress::new(
            crate::ack::FileId { dev: 0, ino: 0 },
            "/t".into(),
            crate::ack::Fingerprint::default(),
            0,
        );
        let mut arena = Arena::default();
        let mut record = |data: &[u8]| Record {
            data: arena.take(&mut data.to_vec()),
            partition_key: "k".into(),
            ack: progress.token(0, 1).into(),
            shard: None,
            user_records: 1,
            random_key: false,
        };
        let (mut first, second) = (record(b"first"), record(b"second"));
        let block_end = first.data.as_ptr() as usize + first.data.len();
        assert_eq!(block_end, second.data.as_ptr() as usize, "one block");
        first.unshare();
        assert_eq!(first.data, &b"first"[..]);
        assert_ne!(
            first.data.as_ptr() as usize + 5,
            second.data.as_ptr() as usize
        );
    }
}
