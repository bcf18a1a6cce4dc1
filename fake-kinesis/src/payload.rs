//! Counting the user records inside an accepted Kinesis record: decompress (bounded),
//! de-aggregate, and check that an aggregate's user records belong to its shard.

use std::sync::atomic::Ordering::Relaxed;

use shipper::aggregate::{self, AggregatedRecord};
use shipper::compress::{self, Compression};
use shipper::shard_map::{ShardRange, hash_key, parse_hash_key};

use crate::state::Server;

/// What one Kinesis record carried.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inspection {
    pub user_records: u64,
    pub user_bytes: u64,
    pub misaligned: u64,
    pub duplicates: u64,
    pub decode_error: bool,
}

/// Counts the user records in `data`, received on `shard`, into the server's stats.
pub fn account(server: &Server, shard: &ShardRange, data: &[u8]) {
    let inspection = inspect(server, shard, data);
    let stats = &server.stats;
    stats
        .user_records_accepted
        .fetch_add(inspection.user_records, Relaxed);
    stats
        .user_bytes_accepted
        .fetch_add(inspection.user_bytes, Relaxed);
    stats
        .misaligned_user_records
        .fetch_add(inspection.misaligned, Relaxed);
    stats
        .duplicate_user_records
        .fetch_add(inspection.duplicates, Relaxed);
    stats
        .decode_errors
        .fetch_add(u64::from(inspection.decode_error), Relaxed);
}

pub fn inspect(server: &Server, shard: &ShardRange, data: &[u8]) -> Inspection {
    let decompressed;
    let payload = match Compression::detect(data) {
        Compression::None => data,
        Compression::Gzip | Compression::Zstd => {
            match compress::decompress(data, server.max_decompressed_bytes) {
                Ok(bytes) => {
                    decompressed = bytes;
                    &decompressed[..]
                }
                Err(_) => return decode_error(),
            }
        }
    };
    let is_duplicate = |user_data: &[u8]| {
        server
            .seen
            .as_ref()
            .is_some_and(|seen| seen.is_duplicate(user_data))
    };
    if !payload.starts_with(&aggregate::MAGIC) {
        return Inspection {
            user_records: 1,
            user_bytes: payload.len() as u64,
            duplicates: u64::from(is_duplicate(payload)),
            ..Inspection::default()
        };
    }
    let Ok(aggregated) = aggregate::decode(payload) else {
        return decode_error();
    };
    let in_shard = key_alignment(&aggregated, shard);
    let mut inspection = Inspection::default();
    for record in &aggregated.records {
        inspection.user_records += 1;
        inspection.user_bytes += record.data.len() as u64;
        inspection.duplicates += u64::from(is_duplicate(&record.data));
        // `decode` checked partition key indexes; explicit hash key indexes are looked
        // up defensively.
        let explicit = record
            .explicit_hash_key_index
            .and_then(|index| in_shard.explicit.get(index as usize).copied());
        let aligned = explicit.unwrap_or(in_shard.keys[record.partition_key_index as usize]);
        inspection.misaligned += u64::from(!aligned);
    }
    inspection
}

fn decode_error() -> Inspection {
    Inspection {
        decode_error: true,
        ..Inspection::default()
    }
}

/// Whether each table entry of an aggregate hashes into `shard`, computed once per key.
struct Alignment {
    keys: Vec<bool>,
    explicit: Vec<bool>,
}

fn key_alignment(aggregated: &AggregatedRecord, shard: &ShardRange) -> Alignment {
    Alignment {
        keys: aggregated
            .partition_key_table
            .iter()
            .map(|key| shard.contains(hash_key(key)))
            .collect(),
        explicit: aggregated
            .explicit_hash_key_table
            .iter()
            .map(|key| parse_hash_key(key).is_ok_and(|hash| shard.contains(hash)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Faults, ServerSettings};
    use shipper::aggregate::{Aggregator, Finished};

    fn server(track_duplicates: bool) -> Server {
        Server::new(ServerSettings {
            faults: Faults::default(),
            store: false,
            track_duplicates,
            max_record_bytes: 1 << 20,
            max_request_bytes: 5 << 20,
            window: crate::window::WindowModel::Fixed,
            cbor: crate::state::CborMode::Serve,
        })
    }

    fn aggregate(records: &[(&str, &[u8])]) -> Vec<u8> {
        let mut aggregator = Aggregator::new(1 << 20);
        for (key, data) in records {
            aggregator.try_push(key, data).unwrap();
        }
        match aggregator.finish() {
            Finished::Aggregated { data, .. } => data.into_vec(),
            other => panic!("expected an aggregate, got {other:?}"),
        }
    }

    #[test]
    fn counts_plain_aggregated_and_compressed_records() {
        let server = server(false);
        let everything = ShardRange::split_evenly(1).remove(0);
        let plain = inspect(&server, &everything, b"one line");
        assert_eq!((plain.user_records, plain.user_bytes), (1, 8));
        let packed = aggregate(&[("a", b"x"), ("b", b"yy"), ("a", b"zzz")]);
        let aggregated = inspect(&server, &everything, &packed);
        assert_eq!((aggregated.user_records, aggregated.user_bytes), (3, 6));
        for compression in [Compression::Gzip, Compression::Zstd] {
            let squeezed = inspect(&server, &everything, &compression.compress(&packed));
            assert_eq!(squeezed, aggregated);
        }
        let mut corrupt = packed.clone();
        corrupt[6] ^= 1;
        assert!(inspect(&server, &everything, &corrupt).decode_error);
    }

    #[test]
    fn flags_user_records_outside_the_shard() {
        let server = server(false);
        let halves = ShardRange::split_evenly(2);
        // md5("a") = 0x0cc1..., lower half; md5("b") = 0x92eb..., upper half.
        let packed = aggregate(&[("a", b"1"), ("b", b"2"), ("a", b"3")]);
        assert_eq!(inspect(&server, &halves[0], &packed).misaligned, 1);
        assert_eq!(inspect(&server, &halves[1], &packed).misaligned, 2);
    }

    #[test]
    fn counts_duplicates_when_tracking() {
        let server = server(true);
        let everything = ShardRange::split_evenly(1).remove(0);
        assert_eq!(inspect(&server, &everything, b"line 1").duplicates, 0);
        let packed = aggregate(&[("k", b"line 1"), ("k", b"line 2")]);
        assert_eq!(inspect(&server, &everything, &packed).duplicates, 1);
    }
}
