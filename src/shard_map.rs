//! Partition key → 128-bit hash key → shard, as Kinesis routes records.
//!
//! Kinesis hashes a partition key's UTF-8 bytes with MD5 and reads the digest as a
//! big-endian unsigned 128-bit integer; the record goes to the open shard whose
//! `HashKeyRange` (inclusive on both ends) contains it. The shipper keeps a [`ShardMap`]
//! so an aggregate only holds user records bound for one shard.
//!
//! The map is built from ListShards output converted by the caller: hash keys arrive as
//! decimal strings ([`parse_hash_key`], [`ShardRange::from_decimal`]), and the caller
//! passes **open shards only** (no `EndingSequenceNumber`): closed parents of a split or
//! merge overlap their children and take no writes. Overlapping ranges are rejected; gaps
//! are allowed (a hash in a gap has no shard, which tells the caller to refresh the map).

use md5::{Digest, Md5};

/// Largest hash key: Kinesis hash keys span 0..=2^128 - 1 (API reference, HashKeyRange).
pub const MAX_HASH_KEY: u128 = u128::MAX;

/// The hash key Kinesis derives from a partition key: MD5 of its UTF-8 bytes, big-endian.
pub fn hash_key(partition_key: &str) -> u128 {
    u128::from_be_bytes(Md5::digest(partition_key.as_bytes()).into())
}

/// Why a shard map could not be built.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("hash key {0:?} is not a decimal number in 0..=2^128-1")]
    BadHashKey(String),
    #[error("shard {shard_id} starts at {start} after it ends at {end}")]
    EmptyRange {
        shard_id: String,
        start: u128,
        end: u128,
    },
    #[error("shards {first} and {second} overlap: pass open shards only")]
    Overlap { first: String, second: String },
}

/// Parses a hash key as ListShards returns it: a decimal string.
pub fn parse_hash_key(decimal: &str) -> Result<u128, Error> {
    // `u128::from_str` accepts a leading '+', which Kinesis never sends; be strict.
    if decimal.is_empty() || !decimal.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::BadHashKey(decimal.to_owned()));
    }
    decimal
        .parse()
        .map_err(|_| Error::BadHashKey(decimal.to_owned()))
}

/// One open shard and its inclusive hash key range.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShardRange {
    pub shard_id: String,
    pub start: u128,
    /// Inclusive, like Kinesis's `EndingHashKey`.
    pub end: u128,
}

impl ShardRange {
    /// A range from ListShards' decimal `StartingHashKey` and `EndingHashKey`.
    pub fn from_decimal(
        shard_id: impl Into<String>,
        starting_hash_key: &str,
        ending_hash_key: &str,
    ) -> Result<Self, Error> {
        Ok(Self {
            shard_id: shard_id.into(),
            start: parse_hash_key(starting_hash_key)?,
            end: parse_hash_key(ending_hash_key)?,
        })
    }

    pub fn contains(&self, hash_key: u128) -> bool {
        self.start <= hash_key && hash_key <= self.end
    }

    /// `count` ranges splitting the whole hash key space evenly (the last takes the
    /// remainder), named like Kinesis names a new stream's shards. `count` 0 gives none.
    pub fn split_evenly(count: usize) -> Vec<ShardRange> {
        if count == 0 {
            return Vec::new();
        }
        let step = MAX_HASH_KEY / count as u128;
        (0..count)
            .map(|index| {
                let start = step * index as u128;
                let end = if index + 1 == count {
                    MAX_HASH_KEY
                } else {
                    start + step - 1
                };
                ShardRange {
                    shard_id: format!("shardId-{index:012}"),
                    start,
                    end,
                }
            })
            .collect()
    }
}

/// Open shards sorted by hash key range, for lookups by binary search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardMap {
    ranges: Vec<ShardRange>,
}

impl ShardMap {
    /// Builds a map from open shards in any order. Fails on an inverted or overlapping
    /// range; gaps are allowed.
    pub fn new(mut ranges: Vec<ShardRange>) -> Result<Self, Error> {
        ranges.sort_by_key(|range| range.start);
        for range in &ranges {
            if range.start > range.end {
                return Err(Error::EmptyRange {
                    shard_id: range.shard_id.clone(),
                    start: range.start,
                    end: range.end,
                });
            }
        }
        for pair in ranges.windows(2) {
            if pair[1].start <= pair[0].end {
                return Err(Error::Overlap {
                    first: pair[0].shard_id.clone(),
                    second: pair[1].shard_id.clone(),
                });
            }
        }
        Ok(Self { ranges })
    }

    /// The shards, sorted by starting hash key. Indexes returned by lookups refer here.
    pub fn shards(&self) -> &[ShardRange] {
        &self.ranges
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether every hash key belongs to some shard.
    pub fn covers_all_hash_keys(&self) -> bool {
        let (Some(first), Some(last)) = (self.ranges.first(), self.ranges.last()) else {
            return false;
        };
        first.start == 0
            && last.end == MAX_HASH_KEY
            && self
                .ranges
                .windows(2)
                .all(|pair| pair[0].end + 1 == pair[1].start)
    }

    /// Index of the shard containing `hash_key`, or `None` if it falls in a gap.
    pub fn index_for_hash(&self, hash_key: u128) -> Option<usize> {
        // First range starting after the hash; the candidate is the one before it.
        let after = self.ranges.partition_point(|range| range.start <= hash_key);
        let index = after.checked_sub(1)?;
        self.ranges[index].contains(hash_key).then_some(index)
    }

    /// Index of the shard a record with this partition key goes to.
    pub fn index_for_key(&self, partition_key: &str) -> Option<usize> {
        self.index_for_hash(hash_key(partition_key))
    }

    /// Id of the shard a record with this partition key goes to.
    pub fn shard_for_key(&self, partition_key: &str) -> Option<&str> {
        self.shard_for_hash(hash_key(partition_key))
    }

    /// Id of the shard containing `hash_key`.
    pub fn shard_for_hash(&self, hash_key: u128) -> Option<&str> {
        self.index_for_hash(hash_key)
            .map(|index| self.ranges[index].shard_id.as_str())
    }

    /// Index of the shard with this id.
    pub fn index_of(&self, shard_id: &str) -> Option<usize> {
        self.ranges
            .iter()
            .position(|range| range.shard_id == shard_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hash_key_is_big_endian_md5() {
        // md5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(hash_key(""), 0xd41d8cd98f00b204e9800998ecf8427e);
        assert_eq!(hash_key("a"), 0x0cc175b9c0f1b6a831c399e269772661);
    }

    #[test]
    fn parses_decimal_hash_keys() {
        assert_eq!(parse_hash_key("0"), Ok(0));
        assert_eq!(
            parse_hash_key("340282366920938463463374607431768211455"),
            Ok(MAX_HASH_KEY)
        );
        for bad in [
            "",
            "+1",
            "-1",
            "1e3",
            "340282366920938463463374607431768211456",
            " 1",
        ] {
            assert!(parse_hash_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lookup_in_two_shards_from_list_shards_strings() {
        let map = ShardMap::new(vec![
            ShardRange::from_decimal(
                "shardId-000000000001",
                "170141183460469231731687303715884105728",
                "340282366920938463463374607431768211455",
            )
            .unwrap(),
            ShardRange::from_decimal(
                "shardId-000000000000",
                "0",
                "170141183460469231731687303715884105727",
            )
            .unwrap(),
        ])
        .unwrap();
        assert!(map.covers_all_hash_keys());
        assert_eq!(map.shard_for_hash(0), Some("shardId-000000000000"));
        assert_eq!(map.shard_for_hash(1 << 127), Some("shardId-000000000001"));
        assert_eq!(
            map.shard_for_hash((1 << 127) - 1),
            Some("shardId-000000000000")
        );
        // md5("a") starts with 0x0c: lower half.
        assert_eq!(map.shard_for_key("a"), Some("shardId-000000000000"));
        assert_eq!(map.index_of("shardId-000000000001"), Some(1));
    }

    #[test]
    fn gaps_have_no_shard_and_overlaps_are_refused() {
        let map = ShardMap::new(vec![ShardRange {
            shard_id: "s".into(),
            start: 10,
            end: 20,
        }])
        .unwrap();
        assert_eq!(map.index_for_hash(9), None);
        assert_eq!(map.index_for_hash(10), Some(0));
        assert_eq!(map.index_for_hash(20), Some(0));
        assert_eq!(map.index_for_hash(21), None);
        assert!(!map.covers_all_hash_keys());
        let overlapping = vec![
            ShardRange {
                shard_id: "parent".into(),
                start: 0,
                end: 100,
            },
            ShardRange {
                shard_id: "child".into(),
                start: 50,
                end: 100,
            },
        ];
        assert!(matches!(
            ShardMap::new(overlapping),
            Err(Error::Overlap { .. })
        ));
        let inverted = vec![ShardRange {
            shard_id: "x".into(),
            start: 5,
            end: 4,
        }];
        assert!(matches!(
            ShardMap::new(inverted),
            Err(Error::EmptyRange { .. })
        ));
        assert_eq!(ShardMap::default().shard_for_key("k"), None);
    }

    /// Ranges covering the whole space, cut at the given points.
    fn cover(mut cuts: Vec<u128>) -> Vec<ShardRange> {
        cuts.retain(|&cut| cut > 0);
        cuts.sort_unstable();
        cuts.dedup();
        let mut starts = vec![0];
        starts.extend(cuts);
        (0..starts.len())
            .map(|index| ShardRange {
                shard_id: format!("shard-{index}"),
                start: starts[index],
                end: starts.get(index + 1).map_or(MAX_HASH_KEY, |next| next - 1),
            })
            .collect()
    }

    proptest! {
        #[test]
        fn every_hash_maps_to_exactly_one_shard(
            cuts in prop::collection::vec(any::<u128>(), 0..20),
            probes in prop::collection::vec(any::<u128>(), 1..50),
            keys in prop::collection::vec(".{1,20}", 1..20),
        ) {
            let mut ranges = cover(cuts);
            let boundaries: Vec<u128> =
                ranges.iter().flat_map(|range| [range.start, range.end]).collect();
            ranges.reverse(); // order of input must not matter
            let map = ShardMap::new(ranges).unwrap();
            prop_assert!(map.covers_all_hash_keys());
            let key_hashes = keys.iter().map(|key| hash_key(key));
            for probe in probes.into_iter().chain(boundaries).chain(key_hashes) {
                let containing: Vec<usize> = (0..map.len())
                    .filter(|&index| map.shards()[index].contains(probe))
                    .collect();
                prop_assert_eq!(containing.len(), 1);
                prop_assert_eq!(map.index_for_hash(probe), Some(containing[0]));
            }
        }

        #[test]
        fn even_split_covers_the_space(count in 1usize..300) {
            let map = ShardMap::new(ShardRange::split_evenly(count)).unwrap();
            prop_assert_eq!(map.len(), count);
            prop_assert!(map.covers_all_hash_keys());
        }
    }
}

/// The current shard map, shared by the stage that packs records per shard, the sink that notices
/// when a record landed elsewhere, and the task that refreshes the map from ListShards.
#[derive(Debug, Default)]
pub struct SharedShardMap {
    current: std::sync::RwLock<Option<std::sync::Arc<ShardMap>>>,
    stale: tokio::sync::Notify,
}

impl SharedShardMap {
    /// A map that never changes (a dry run packs everything as if the stream had one shard).
    pub fn fixed(map: ShardMap) -> SharedShardMap {
        let shared = SharedShardMap::default();
        shared.set(map);
        shared
    }

    pub fn get(&self) -> Option<std::sync::Arc<ShardMap>> {
        // A poisoned lock still holds a whole Arc: keep using it.
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn set(&self, map: ShardMap) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(std::sync::Arc::new(map));
    }

    /// Ask the refresher for a new map now (a record landed on an unexpected shard).
    pub fn mark_stale(&self) {
        self.stale.notify_one();
    }

    /// Wait until someone marks the map stale.
    pub async fn stale(&self) {
        self.stale.notified().await;
    }
}
