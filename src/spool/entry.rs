//! The on-disk layout of spool segments and entries.
//!
//! A segment file is named after its base offset (`00000000000000000000.spool`, twenty digits) and
//! starts with a 16-byte header: the magic `SHSPOOL` and a format byte, then the base offset (u64,
//! little-endian), which must match the name. Entries follow back to back:
//!
//! ```text
//! length u32 LE | crc32 u32 LE | kind u8 | payload (length - 1 bytes)
//! ```
//!
//! `length` counts the kind byte and the payload; the CRC-32 (IEEE) covers the same bytes. Offsets
//! are logical: the entry area of a segment covers `[base, base + file length - 16)`, and the next
//! segment's base is where the previous one ended (or later, when a corrupt tail was cut).

use std::path::{Path, PathBuf};

/// Bytes before the first entry of a segment.
pub const SEGMENT_HEADER_BYTES: u64 = 16;
/// Bytes of an entry besides its payload: length, checksum and kind.
pub const ENTRY_OVERHEAD: usize = 9;
const MAGIC: &[u8; 8] = b"SHSPOOL\x01";
/// No entry is longer than this; a length field above it is corruption, not a record.
pub const MAX_ENTRY_BYTES: usize = 64 * 1024 * 1024;
const SUFFIX: &str = ".spool";

/// What an entry holds, so the reader knows how to turn it into a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A finished JSON object (a decoded Python or syslog record).
    Envelope = 1,
    /// Text to be formatted by the input's `--format` (the `lines` framing).
    Text = 2,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Envelope),
            2 => Some(Kind::Text),
            _ => None,
        }
    }
}

pub fn segment_header(base: u64) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..].copy_from_slice(&base.to_le_bytes());
    header
}

/// The base offset a segment header names, when it is a valid header.
pub fn parse_segment_header(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < SEGMENT_HEADER_BYTES as usize || &bytes[..8] != MAGIC {
        return None;
    }
    Some(u64::from_le_bytes(bytes[8..16].try_into().ok()?))
}

pub fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}{SUFFIX}"))
}

/// The base offset in a segment file's name, or None for any other file.
pub fn segment_base(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Append one encoded entry to `out`.
pub fn encode(kind: Kind, payload: &[u8], out: &mut Vec<u8>) {
    let length = (payload.len() + 1) as u32;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind as u8]);
    crc.update(payload);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(payload);
}

/// Bytes an entry of `payload_len` takes in a segment.
pub fn encoded_len(payload_len: usize) -> u64 {
    (ENTRY_OVERHEAD + payload_len) as u64
}

/// One entry decoded from a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    pub kind: Kind,
    pub payload: &'a [u8],
    /// Bytes the entry took, header included.
    pub len: usize,
}

/// Why bytes at some position are not an entry.
#[derive(Debug, PartialEq, Eq)]
pub enum Bad {
    /// The buffer ends inside the entry: more bytes may complete it (or, at the end of a segment
    /// after a crash, it is a torn write).
    Incomplete,
    /// A length out of range, a checksum that does not match, or an unknown kind.
    Corrupt,
}

/// Decode the entry at the start of `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Decoded<'_>, Bad> {
    if bytes.len() < 8 {
        return Err(Bad::Incomplete);
    }
    let length = u32::from_le_bytes(bytes[..4].try_into().map_err(|_| Bad::Corrupt)?) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().map_err(|_| Bad::Corrupt)?);
    if length == 0 || length > MAX_ENTRY_BYTES {
        return Err(Bad::Corrupt);
    }
    let Some(body) = bytes.get(8..8 + length) else {
        return Err(Bad::Incomplete);
    };
    if crc32fast::hash(body) != crc {
        return Err(Bad::Corrupt);
    }
    let kind = Kind::from_byte(body[0]).ok_or(Bad::Corrupt)?;
    Ok(Decoded {
        kind,
        payload: &body[1..],
        len: 8 + length,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_checksums_catch_flips() {
        let mut out = Vec::new();
        encode(Kind::Envelope, b"{\"message\":\"hi\"}", &mut out);
        encode(Kind::Text, b"", &mut out);
        let first = decode(&out).unwrap();
        assert_eq!(first.kind, Kind::Envelope);
        assert_eq!(first.payload, b"{\"message\":\"hi\"}");
        assert_eq!(first.len as u64, encoded_len(16));
        let second = decode(&out[first.len..]).unwrap();
        assert_eq!((second.kind, second.payload), (Kind::Text, &b""[..]));

        for cut in 0..first.len {
            assert_eq!(decode(&out[..cut]), Err(Bad::Incomplete), "cut at {cut}");
        }
        for i in 4..first.len {
            let mut flipped = out.clone();
            flipped[i] ^= 0x40;
            assert_eq!(decode(&flipped), Err(Bad::Corrupt), "flip at {i}");
        }
    }

    #[test]
    fn insane_lengths_are_corrupt_not_incomplete() {
        let mut bytes = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert_eq!(decode(&bytes), Err(Bad::Corrupt));
        bytes[..4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode(&bytes), Err(Bad::Corrupt));
    }

    #[test]
    fn segment_names_and_headers() {
        let path = segment_path(Path::new("/d"), 42);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "00000000000000000042.spool");
        assert_eq!(segment_base(name), Some(42));
        assert_eq!(segment_base("42.spool"), None);
        assert_eq!(segment_base("00000000000000000042.spool.tmp"), None);
        assert_eq!(parse_segment_header(&segment_header(42)), Some(42));
        assert_eq!(parse_segment_header(b"SHSPOOL\x02\0\0\0\0\0\0\0\0"), None);
    }
}
