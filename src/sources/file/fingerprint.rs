//! File fingerprints: a CRC-32 of a file's first bytes (up to [`FINGERPRINT_MAX_BYTES`]).
//!
//! Device + inode say which file a handle or checkpoint refers to, but an inode is reused once a
//! file is deleted, and a copytruncate rewrites the same inode. The fingerprint tells those apart:
//! it grows with the file up to its maximum length, and at each step the old prefix must still
//! match. Reads use `pread`, so a handle's read position is never disturbed.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::ack::Fingerprint;

/// How many leading bytes a fingerprint covers at most.
pub(super) const FINGERPRINT_MAX_BYTES: usize = 256;

/// What a file's first bytes say about a known fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Check {
    /// The file still starts with the fingerprinted bytes and covers no more of them.
    Same,
    /// The prefix still matches and the file grew: the longer fingerprint.
    Grew(Fingerprint),
    /// Different content (or shorter than the fingerprint): the fingerprint of what is there now.
    Changed(Fingerprint),
}

pub(super) fn of_bytes(bytes: &[u8]) -> Fingerprint {
    Fingerprint {
        // At most FINGERPRINT_MAX_BYTES (256), so it fits.
        len: bytes.len().min(FINGERPRINT_MAX_BYTES) as u32,
        crc32: crc32fast::hash(&bytes[..bytes.len().min(FINGERPRINT_MAX_BYTES)]),
    }
}

/// The fingerprint of `file`'s first `min(size, 256)` bytes.
pub(super) fn compute(file: &File, size: u64) -> io::Result<Fingerprint> {
    let mut buf = [0u8; FINGERPRINT_MAX_BYTES];
    let got = read_prefix(file, wanted(size), &mut buf)?;
    Ok(of_bytes(&buf[..got]))
}

/// Compare `file` (whose size is `size`) with `known`.
pub(super) fn check(file: &File, size: u64, known: Fingerprint) -> io::Result<Check> {
    let mut buf = [0u8; FINGERPRINT_MAX_BYTES];
    let got = read_prefix(file, wanted(size), &mut buf)?;
    let known_len = known.len as usize;
    if got < known_len || crc32fast::hash(&buf[..known_len]) != known.crc32 {
        return Ok(Check::Changed(of_bytes(&buf[..got])));
    }
    if got > known_len {
        Ok(Check::Grew(of_bytes(&buf[..got])))
    } else {
        Ok(Check::Same)
    }
}

fn wanted(size: u64) -> usize {
    usize::try_from(size).map_or(FINGERPRINT_MAX_BYTES, |size| {
        size.min(FINGERPRINT_MAX_BYTES)
    })
}

/// Read up to `want` bytes from offset 0; fewer if the file is shorter (it may shrink meanwhile).
fn read_prefix(
    file: &File,
    want: usize,
    buf: &mut [u8; FINGERPRINT_MAX_BYTES],
) -> io::Result<usize> {
    let mut got = 0;
    while got < want {
        match file.read_at(&mut buf[got..want], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn grows_with_the_file_then_detects_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = std::fs::File::create(&path).unwrap();
        let reader = std::fs::File::open(&path).unwrap();
        let empty = compute(&reader, 0).unwrap();
        assert_eq!(empty.len, 0);
        file.write_all(b"hello\n").unwrap();
        let Check::Grew(six) = check(&reader, 6, empty).unwrap() else {
            panic!("expected growth")
        };
        assert_eq!(six.len, 6);
        file.write_all(&[b'x'; 600]).unwrap();
        let Check::Grew(full) = check(&reader, 606, six).unwrap() else {
            panic!("expected growth")
        };
        assert_eq!(full.len as usize, FINGERPRINT_MAX_BYTES);
        assert_eq!(check(&reader, 606, full).unwrap(), Check::Same);
        // Rewrite the first byte: same inode, different file.
        reader.read_at(&mut [0u8; 1], 0).unwrap();
        let writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        writer.write_at(b"J", 0).unwrap();
        assert!(matches!(
            check(&reader, 606, full).unwrap(),
            Check::Changed(_)
        ));
        // Shorter than the fingerprint: changed.
        writer.set_len(3).unwrap();
        assert!(matches!(check(&reader, 3, six).unwrap(), Check::Changed(f) if f.len == 3));
    }
}
