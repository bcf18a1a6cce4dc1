//! Payload compression of Kinesis records, and bounded decompression.
//!
//! The shipper compresses each Kinesis record's payload (an aggregate or a lone record)
//! when asked. Only consumers that decompress can read it ([`decompress`] is for them, and for
//! the tests and the benchmark endpoint): the KCL, Lambda and Firehose's native Kinesis source
//! hand the compressed bytes to their user as is, which is why the default is
//! [`Compression::None`].
//!
//! [`decompress`] recognises the format by its magic bytes and never produces more than a
//! caller-given number of bytes: a small hostile record ("zip bomb") cannot exhaust memory.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

/// Gzip member header (RFC 1952, section 2.3.1: ID1 ID2).
pub const GZIP_MAGIC: [u8; 2] = [0x1F, 0x8B];
/// Zstandard frame magic number 0xFD2FB528, little-endian (RFC 8878, section 3.1.1).
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// Gzip level: the fastest, since the shipper compresses on the hot path.
const GZIP_LEVEL: u32 = 1;
/// zstd level 6, the first with lazy matching: on Celery-like aggregates it packs 7.6x where the
/// default level 3 packs 6.4x, and a shard's 1 MiB/s carries that many times the lines. It still
/// compresses about 80 MB/s on one core, ten times what one shard can take at that ratio.
const ZSTD_LEVEL: i32 = 6;
/// Smallest window limit we decode with: 8 MiB, the largest window any standard level
/// (1..=19, without long-distance matching) picks, so streamed frames of any producer
/// decode even under a small output bound.
const ZSTD_MIN_WINDOW_LOG: u32 = 23;
/// Zstandard's default largest window for decoding (ZSTD_WINDOWLOG_LIMIT_DEFAULT).
const ZSTD_MAX_WINDOW_LOG: u32 = 27;

/// How a Kinesis record's payload is compressed.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Zstd,
}

/// Why a payload could not be decompressed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("decompressed payload exceeds the limit of {max_output_bytes} bytes")]
    TooLarge { max_output_bytes: usize },
    #[error("corrupt {format} payload: {source}")]
    Corrupt {
        format: Compression,
        #[source]
        source: io::Error,
    },
}

/// A compression name other than `none`, `gzip` or `zstd`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("unknown compression {0:?}: expected none, gzip or zstd")]
pub struct UnknownCompression(pub String);

impl FromStr for Compression {
    type Err = UnknownCompression;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "none" => Ok(Self::None),
            "gzip" => Ok(Self::Gzip),
            "zstd" => Ok(Self::Zstd),
            other => Err(UnknownCompression(other.to_owned())),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        })
    }
}

impl Compression {
    /// The format `data` is in, judged by its leading magic bytes.
    pub fn detect(data: &[u8]) -> Self {
        if data.starts_with(&GZIP_MAGIC) {
            Self::Gzip
        } else if data.starts_with(&ZSTD_MAGIC) {
            Self::Zstd
        } else {
            Self::None
        }
    }

    /// Compresses `data` at a fast level; `None` returns a copy.
    pub fn compress(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::None => data.to_vec(),
            Self::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(
                    Vec::with_capacity(data.len() / 2 + 64),
                    flate2::Compression::new(GZIP_LEVEL),
                );
                // Writing into a Vec<u8> cannot fail, so neither can the encoder.
                encoder
                    .write_all(data)
                    .expect("gzip into memory cannot fail");
                encoder.finish().expect("gzip into memory cannot fail")
            }
            // Compressing a slice into memory at a valid level only fails on allocation
            // failure, which aborts anyway.
            Self::Zstd => zstd::bulk::compress(data, ZSTD_LEVEL).expect("zstd into memory"),
        }
    }
}

/// Decompresses gzip or zstd `data` (detected by magic bytes), or copies data that has no
/// known magic. Fails as soon as the output would exceed `max_output_bytes`; at most that
/// many bytes (plus one) are ever produced.
pub fn decompress(data: &[u8], max_output_bytes: usize) -> Result<Vec<u8>, Error> {
    let format = Compression::detect(data);
    let corrupt = |source| Error::Corrupt { format, source };
    match format {
        Compression::None if data.len() > max_output_bytes => {
            Err(Error::TooLarge { max_output_bytes })
        }
        Compression::None => Ok(data.to_vec()),
        // Concatenated gzip members are one valid stream (RFC 1952, section 2.2).
        Compression::Gzip => {
            read_bounded(flate2::read::MultiGzDecoder::new(data), max_output_bytes)
                .map_err(|error| error.or_corrupt(corrupt))
        }
        Compression::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(data).map_err(corrupt)?;
            // The window never needs to exceed the output; a larger one in a frame header
            // is refused instead of allocated.
            decoder
                .window_log_max(window_log_for(max_output_bytes))
                .map_err(corrupt)?;
            read_bounded(decoder, max_output_bytes).map_err(|error| error.or_corrupt(corrupt))
        }
    }
}

fn window_log_for(max_output_bytes: usize) -> u32 {
    let needed = usize::BITS - max_output_bytes.saturating_sub(1).leading_zeros();
    needed.clamp(ZSTD_MIN_WINDOW_LOG, ZSTD_MAX_WINDOW_LOG)
}

enum BoundedError {
    TooLarge(usize),
    Io(io::Error),
}

impl BoundedError {
    fn or_corrupt(self, corrupt: impl FnOnce(io::Error) -> Error) -> Error {
        match self {
            Self::TooLarge(max_output_bytes) => Error::TooLarge { max_output_bytes },
            Self::Io(source) => corrupt(source),
        }
    }
}

/// Reads at most `max + 1` bytes, so exceeding the bound is detected without ever
/// holding more than it.
fn read_bounded(reader: impl Read, max: usize) -> Result<Vec<u8>, BoundedError> {
    let mut out = Vec::new();
    reader
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(BoundedError::Io)?;
    if out.len() > max {
        return Err(BoundedError::TooLarge(max));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Compression; 3] = [Compression::None, Compression::Gzip, Compression::Zstd];

    #[test]
    fn names_round_trip() {
        for compression in ALL {
            assert_eq!(
                compression.to_string().parse::<Compression>(),
                Ok(compression)
            );
        }
        assert!("lz4".parse::<Compression>().is_err());
        assert_eq!(Compression::default(), Compression::None);
    }

    proptest! {
        #[test]
        fn round_trip(data in prop::collection::vec(any::<u8>(), 0..5000)) {
            for compression in [Compression::Gzip, Compression::Zstd] {
                let packed = compression.compress(&data);
                prop_assert_eq!(Compression::detect(&packed), compression);
                prop_assert_eq!(decompress(&packed, data.len()).unwrap(), data.clone());
            }
        }
    }

    #[test]
    fn plain_data_is_copied_within_the_bound() {
        assert_eq!(decompress(b"log line", 8).unwrap(), b"log line");
        assert!(matches!(
            decompress(b"log line", 7),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn bomb_is_refused_without_inflating_it() {
        // 100 MB of zeros compress to about a hundred kilobytes; the bound stops at 1 MiB.
        let zeros = vec![0u8; 100_000_000];
        for compression in [Compression::Gzip, Compression::Zstd] {
            let bomb = compression.compress(&zeros);
            assert!(bomb.len() < 1_000_000, "{compression}: {}", bomb.len());
            let result = decompress(&bomb, 1 << 20);
            assert!(matches!(
                result,
                Err(Error::TooLarge {
                    max_output_bytes: 1_048_576
                })
            ));
        }
    }

    #[test]
    fn exact_bound_is_accepted() {
        let data = vec![7u8; 4096];
        for compression in [Compression::Gzip, Compression::Zstd] {
            let packed = compression.compress(&data);
            assert_eq!(decompress(&packed, 4096).unwrap(), data);
            assert!(matches!(
                decompress(&packed, 4095),
                Err(Error::TooLarge { .. })
            ));
        }
    }

    #[test]
    fn truncated_input_is_corrupt() {
        let data = vec![1u8; 10_000];
        for compression in [Compression::Gzip, Compression::Zstd] {
            let packed = compression.compress(&data);
            let result = decompress(&packed[..packed.len() / 2], 1 << 20);
            assert!(
                matches!(result, Err(Error::Corrupt { .. })),
                "{compression}"
            );
        }
    }

    #[test]
    fn window_log_follows_the_bound() {
        assert_eq!(window_log_for(0), ZSTD_MIN_WINDOW_LOG);
        assert_eq!(window_log_for(1 << 24), 24);
        assert_eq!(window_log_for((1 << 24) + 1), 25);
        assert_eq!(window_log_for(usize::MAX), ZSTD_MAX_WINDOW_LOG);
    }
}
