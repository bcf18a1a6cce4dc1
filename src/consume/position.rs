//! Where a shard was read to: Kinesis sequence numbers, positions of user records within them, and
//! the consumer's checkpoint file (`consume-<stream>.json` in the data dir).

use std::cmp::Ordering;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, VERSION};

/// A Kinesis sequence number: a decimal string of up to 128 digits, too large for an integer.
/// Numbers without leading zeros order by length, then digit by digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SequenceNumber(pub Arc<str>);

impl SequenceNumber {
    pub fn new(text: &str) -> SequenceNumber {
        SequenceNumber(Arc::from(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (
            self.0.trim_start_matches('0'),
            other.0.trim_start_matches('0'),
        );
        a.len().cmp(&b.len()).then_with(|| a.cmp(b))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One user record's place in a shard: the Kinesis record's sequence number and the user record's
/// index in its aggregate (0 for a record that is not aggregated), as the KCL counts them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub sequence: SequenceNumber,
    pub sub_sequence: u64,
}

/// Drops the user records a resumed shard already forwarded: reading restarts at the checkpoint's
/// sequence number (AT_SEQUENCE_NUMBER), and every user record at or before its sub-sequence
/// number is dropped, so a half-forwarded aggregate is not sent twice.
#[derive(Debug, Clone, Default)]
pub struct ResumeFilter {
    through: Option<Position>,
}

impl ResumeFilter {
    pub fn new(checkpoint: Option<Position>) -> ResumeFilter {
        ResumeFilter {
            through: checkpoint,
        }
    }

    /// Whether the user record at `position` is still to be forwarded.
    pub fn keep(&mut self, position: &Position) -> bool {
        match &self.through {
            Some(through) if position <= through => false,
            Some(_) => {
                // Positions only grow from here: stop comparing.
                self.through = None;
                true
            }
            None => true,
        }
    }
}

/// One shard's entry in the checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardCheckpoint {
    pub shard_id: String,
    /// The last user record forwarded, with every one before it; none when nothing was yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_number: Option<String>,
    #[serde(default)]
    pub sub_sequence_number: u64,
    /// The shard is closed and was forwarded to its end: its children may start.
    #[serde(default)]
    pub finished: bool,
}

impl ShardCheckpoint {
    pub fn position(&self) -> Option<Position> {
        self.sequence_number.as_deref().map(|sequence| Position {
            sequence: SequenceNumber::new(sequence),
            sub_sequence: self.sub_sequence_number,
        })
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumeCheckpoints {
    pub version: u32,
    pub stream: String,
    pub shards: Vec<ShardCheckpoint>,
}

/// The checkpoint file of `stream`; `/` and other characters unsafe in a file name (a stream ARN)
/// become `_`.
pub fn file_name(stream: &str) -> String {
    let safe: String = stream
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("consume-{safe}.json")
}

pub fn load(dir: &Path, stream: &str) -> Result<Vec<ShardCheckpoint>, checkpoint::Error> {
    let loaded: Option<ConsumeCheckpoints> = checkpoint::load_versioned(dir, &file_name(stream))?;
    Ok(loaded.map(|file| file.shards).unwrap_or_default())
}

pub fn store(
    dir: &Path,
    stream: &str,
    shards: Vec<ShardCheckpoint>,
) -> Result<(), checkpoint::Error> {
    let file = ConsumeCheckpoints {
        version: VERSION,
        stream: stream.to_string(),
        shards,
    };
    checkpoint::store_versioned(dir, &file_name(stream), &file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_order_numerically() {
        let numbers = [
            "9",
            "10",
            "49590338271490256608559692538361571095921575989136588898",
            "49590338271490256608559692538361571095921575989136588899",
            "149590338271490256608559692538361571095921575989136588898",
        ];
        for pair in numbers.windows(2) {
            assert!(
                SequenceNumber::new(pair[0]) < SequenceNumber::new(pair[1]),
                "{pair:?}"
            );
        }
        let position = |s: &str, sub| Position {
            sequence: SequenceNumber::new(s),
            sub_sequence: sub,
        };
        assert!(position("10", 5) < position("11", 0));
        assert!(position("10", 5) < position("10", 6));
    }

    #[test]
    fn a_resumed_aggregate_skips_what_was_forwarded() {
        let at = |s: &str, sub| Position {
            sequence: SequenceNumber::new(s),
            sub_sequence: sub,
        };
        // Checkpoint inside an aggregate: sub-sequences 0..=2 of record 500 were forwarded.
        let mut filter = ResumeFilter::new(Some(at("500", 2)));
        let kept: Vec<Position> = [
            at("500", 0),
            at("500", 1),
            at("500", 2),
            at("500", 3),
            at("500", 4),
            at("501", 0),
        ]
        .into_iter()
        .filter(|p| filter.keep(p))
        .collect();
        assert_eq!(kept, [at("500", 3), at("500", 4), at("501", 0)]);
        // A plain record checkpointed whole is dropped entirely; no checkpoint keeps everything.
        let mut filter = ResumeFilter::new(Some(at("700", 0)));
        assert!(!filter.keep(&at("700", 0)));
        assert!(filter.keep(&at("701", 0)));
        assert!(ResumeFilter::new(None).keep(&at("1", 0)));
    }

    #[test]
    fn checkpoints_round_trip_in_their_own_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            load(dir.path(), "arn:aws:kinesis:x:1:stream/s")
                .unwrap()
                .is_empty()
        );
        let shards = vec![ShardCheckpoint {
            shard_id: "shardId-000000000001".into(),
            sequence_number: Some("12345".into()),
            sub_sequence_number: 7,
            finished: true,
        }];
        store(dir.path(), "arn:aws:kinesis:x:1:stream/s", shards.clone()).unwrap();
        assert!(
            dir.path()
                .join("consume-arn_aws_kinesis_x_1_stream_s.json")
                .exists()
        );
        assert_eq!(
            load(dir.path(), "arn:aws:kinesis:x:1:stream/s").unwrap(),
            shards
        );
        assert_eq!(
            shards[0].position().unwrap(),
            Position {
                sequence: SequenceNumber::new("12345"),
                sub_sequence: 7
            }
        );
    }
}
