//! Turning one Kinesis record into its user records: decompression (gzip or zstd, recognised by
//! their magic bytes, with a bound on the output), then KPL de-aggregation (magic and MD5
//! verified), then per user record decompression again (producers that compress each record).
//! No I/O here.
//!
//! A record that carries the aggregation magic but does not verify (wrong MD5, bad protobuf) is a
//! plain record, as the KCL treats it: a producer may send data that happens to start with those
//! four bytes. It is counted. Records that cannot be decompressed, or whose user records are larger
//! than Firehose takes, are rejected for the dead-letter file.

use crate::aggregate;
use crate::compress::{self, Compression};

/// Largest Firehose record (PutRecordBatch API reference: 1,000 KiB), the delimiter included.
pub const FIREHOSE_MAX_RECORD_BYTES: usize = 1000 * 1024;
/// Most bytes a compressed Kinesis record may expand to: the largest record Kinesis takes (10 MiB
/// on a stream whose limit was raised), so that no producer's honest aggregate is refused while a
/// decompression bomb stops there.
pub const MAX_DECOMPRESSED_BYTES: usize = 10 << 20;

/// Why a record or user record cannot be forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub code: &'static str,
    pub message: String,
}

/// The user records of one Kinesis record, in order: the index is the sub-sequence number.
#[derive(Debug, Default)]
pub struct Unpacked {
    pub records: Vec<Result<Vec<u8>, Reject>>,
    /// The record had the aggregation magic but did not verify, and is forwarded as a plain record.
    pub invalid_aggregate: bool,
}

/// Unpack `data`; `max_user_bytes` is the largest user record that can be forwarded.
pub fn unpack(data: &[u8], max_user_bytes: usize) -> Unpacked {
    let payload = match decompress(data) {
        Ok(payload) => payload,
        Err(reject) => {
            return Unpacked {
                records: vec![Err(reject)],
                invalid_aggregate: false,
            };
        }
    };
    let mut unpacked = Unpacked::default();
    let users: Vec<Vec<u8>> = if aggregate::is_aggregated(&payload) {
        match aggregate::decode(&payload) {
            Ok(decoded) => decoded.records.into_iter().map(|r| r.data).collect(),
            Err(_) => {
                unpacked.invalid_aggregate = true;
                vec![payload.into_owned()]
            }
        }
    } else {
        vec![payload.into_owned()]
    };
    unpacked.records = users
        .into_iter()
        .map(|user| {
            let user = if Compression::detect(&user) == Compression::None {
                user
            } else {
                decompress(&user)?.into_owned()
            };
            if user.len() > max_user_bytes {
                return Err(Reject {
                    code: "RecordTooLarge",
                    message: format!(
                        "{} bytes, over the {max_user_bytes} a Firehose record can take",
                        user.len()
                    ),
                });
            }
            Ok(user)
        })
        .collect();
    unpacked
}

fn decompress(data: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, Reject> {
    if Compression::detect(data) == Compression::None {
        return Ok(std::borrow::Cow::Borrowed(data));
    }
    compress::decompress(data, MAX_DECOMPRESSED_BYTES)
        .map(std::borrow::Cow::Owned)
        .map_err(|error| Reject {
            code: match error {
                compress::Error::TooLarge { .. } => "DecompressedTooLarge",
                _ => "CorruptCompression",
            },
            message: error.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{Aggregator, Finished};
    use proptest::prelude::*;

    fn aggregate(records: &[Vec<u8>]) -> Vec<u8> {
        let mut aggregator = Aggregator::new(1 << 20);
        for (i, data) in records.iter().enumerate() {
            aggregator
                .try_push(&format!("key-{}", i % 3), data)
                .unwrap();
        }
        match aggregator.finish() {
            Finished::Aggregated { data, .. } => data.into_vec(),
            Finished::Single { data, .. } => data,
            Finished::Empty => Vec::new(),
        }
    }

    fn ok(unpacked: Unpacked) -> Vec<Vec<u8>> {
        unpacked.records.into_iter().map(Result::unwrap).collect()
    }

    proptest! {
        /// What our aggregator packs (and compresses), unpack gives back in order.
        #[test]
        fn round_trip_with_our_aggregator(
            // User data that starts with a compression magic is taken for compressed (the
            // ambiguity of magic bytes, tested below); the round trip is about everything else.
            records in prop::collection::vec(
                prop::collection::vec(any::<u8>(), 1..200).prop_map(|mut record| {
                    if Compression::detect(&record) != Compression::None {
                        record[0] ^= 0x80;
                    }
                    record
                }),
                2..40,
            ),
            compression in prop::sample::select(vec![Compression::None, Compression::Gzip, Compression::Zstd]),
        ) {
            let packed = compression.compress(&aggregate(&records));
            let unpacked = unpack(&packed, FIREHOSE_MAX_RECORD_BYTES);
            prop_assert!(!unpacked.invalid_aggregate);
            prop_assert_eq!(ok(unpacked), records);
        }
    }

    #[test]
    fn bad_input_is_rejected_or_plain_never_a_panic() {
        let good = aggregate(&[b"a".to_vec(), b"b".to_vec()]);
        let mut wrong_md5 = good.clone();
        *wrong_md5.last_mut().unwrap() ^= 0xff;
        let unpacked = unpack(&wrong_md5, FIREHOSE_MAX_RECORD_BYTES);
        assert!(unpacked.invalid_aggregate);
        assert_eq!(ok(unpacked), [wrong_md5.clone()]);

        let mut corrupt = aggregate::MAGIC.to_vec();
        corrupt.extend_from_slice(&[0xff; 40]);
        assert!(unpack(&corrupt, FIREHOSE_MAX_RECORD_BYTES).invalid_aggregate);

        let bomb = Compression::Zstd.compress(&vec![0u8; MAX_DECOMPRESSED_BYTES + 1]);
        let rejected = unpack(&bomb, FIREHOSE_MAX_RECORD_BYTES).records;
        assert_eq!(rejected.len(), 1);
        assert_eq!(
            rejected[0].as_ref().unwrap_err().code,
            "DecompressedTooLarge"
        );

        let mut broken_gzip = Compression::Gzip.compress(b"hello hello hello");
        broken_gzip.truncate(8);
        let rejected = unpack(&broken_gzip, FIREHOSE_MAX_RECORD_BYTES).records;
        assert_eq!(rejected[0].as_ref().unwrap_err().code, "CorruptCompression");

        let big = vec![b'x'; FIREHOSE_MAX_RECORD_BYTES + 1];
        let mixed = aggregate(&[b"small".to_vec(), big]);
        let records = unpack(&mixed, FIREHOSE_MAX_RECORD_BYTES).records;
        assert_eq!(records[0].as_deref().unwrap(), b"small");
        assert_eq!(records[1].as_ref().unwrap_err().code, "RecordTooLarge");

        let binary: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        assert_eq!(ok(unpack(&binary, FIREHOSE_MAX_RECORD_BYTES)), [binary]);
    }
}
