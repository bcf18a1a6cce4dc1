//! Bytes to lines: one file's read buffer, newline search and the long-line policy.
//!
//! The caller reads into [`LineReader::spare`] and hands the count to [`LineReader::consume`],
//! which emits every line it completes. Lines borrow the buffer (no allocation per line). The
//! buffer never grows past `max_line_bytes + read_buffer_bytes`: a line longer than
//! `max_line_bytes` is split into fragments, or truncated with the rest dropped as it is read.
//!
//! Offsets: `line_start` is the first byte not yet covered by an emitted line, and everything
//! before it has been emitted, so the emitted ranges are contiguous. The file offset of a buffered
//! byte `i` is `read_offset - (tail - i)`, which stays true when truncation drops bytes because
//! dropped bytes always precede the bytes still to be scanned.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use memchr::memchr;

use super::{Closed, FileSourceStats, Line, LineKind, LineSink, LongLinePolicy};
use crate::ack::FileProgress;

/// Where emitted lines go, and what they are counted in.
pub(super) struct Emitter<'a> {
    pub progress: &'a Arc<FileProgress>,
    pub path: &'a Path,
    pub sink: &'a mut dyn LineSink,
    pub stats: &'a mut FileSourceStats,
    /// When the bytes being consumed were read.
    pub read_at: Instant,
}

impl Emitter<'_> {
    fn line(&mut self, data: &[u8], start: u64, end: u64, kind: LineKind) -> Result<(), Closed> {
        self.stats.lines += 1;
        match kind {
            LineKind::Partial => self.stats.partial_lines += 1,
            LineKind::Truncated => self.stats.lines_truncated += 1,
            LineKind::Complete | LineKind::Fragment => {}
        }
        self.sink.line(Line {
            file: self.progress,
            path: self.path,
            data,
            start,
            end,
            kind,
            read_at: self.read_at,
        })
    }
}

pub(super) struct LineReader {
    /// Grows on demand up to `capacity`; `buf[head..tail]` is the unemitted data.
    buf: Vec<u8>,
    head: usize,
    tail: usize,
    /// `buf[head..scanned]` is known to hold no newline.
    scanned: usize,
    line_start: u64,
    read_offset: u64,
    max_line: usize,
    read_chunk: usize,
    capacity: usize,
    policy: LongLinePolicy,
    /// Truncate policy, line over the limit: `buf[head..head + max_line]` is the kept prefix and
    /// later bytes are dropped until the newline.
    truncating: bool,
    /// Split policy: a fragment of the current line has been emitted.
    splitting: bool,
}

impl LineReader {
    pub(super) fn new(
        offset: u64,
        max_line: usize,
        read_chunk: usize,
        policy: LongLinePolicy,
    ) -> Self {
        LineReader {
            buf: Vec::new(),
            head: 0,
            tail: 0,
            scanned: 0,
            line_start: offset,
            read_offset: offset,
            max_line,
            read_chunk,
            capacity: max_line + read_chunk,
            policy,
            truncating: false,
            splitting: false,
        }
    }

    /// The next file offset to read from.
    pub(super) fn read_offset(&self) -> u64 {
        self.read_offset
    }

    /// Bytes held for a line not yet emitted.
    pub(super) fn has_pending(&self) -> bool {
        self.truncating || self.tail > self.head
    }

    /// Bytes of buffer allocated, for the memory bound.
    #[cfg(test)]
    pub(super) fn allocated(&self) -> usize {
        self.buf.capacity()
    }

    /// Forget everything and read from `offset` (truncation).
    pub(super) fn reset(&mut self, offset: u64) {
        self.head = 0;
        self.tail = 0;
        self.scanned = 0;
        self.line_start = offset;
        self.read_offset = offset;
        self.truncating = false;
        self.splitting = false;
    }

    /// Room for the next read (never empty).
    pub(super) fn spare(&mut self) -> &mut [u8] {
        if self.head > 0 && self.buf.len() - self.tail < self.read_chunk {
            self.buf.copy_within(self.head..self.tail, 0);
            self.tail -= self.head;
            self.scanned -= self.head;
            self.head = 0;
        }
        let want = (self.tail + self.read_chunk).min(self.capacity);
        if self.buf.len() < want {
            // One read's worth normally; a line longer than that gets the whole bound at once
            // rather than growing (and copying) a read at a time.
            let size = if want <= self.read_chunk {
                want
            } else {
                self.capacity
            };
            self.buf.reserve_exact(size - self.buf.len());
            self.buf.resize(size, 0);
        }
        // After `consume` at most `max_line + 1` bytes are pending (or `max_line` when
        // truncating), and `read_chunk >= 2`, so at least one byte is free.
        &mut self.buf[self.tail..want]
    }

    /// `n` bytes were read into [`Self::spare`]: emit every line they complete.
    pub(super) fn consume(&mut self, n: usize, out: &mut Emitter<'_>) -> Result<(), Closed> {
        self.tail += n;
        self.read_offset += n as u64;
        while let Some(i) = memchr(b'\n', &self.buf[self.scanned..self.tail]) {
            self.finish_line(self.scanned + i, out)?;
        }
        self.scanned = self.tail;
        self.bound_pending(out)?;
        if self.head == self.tail && self.buf.len() > self.read_chunk {
            // A long line is done: give its memory back.
            self.buf.truncate(self.read_chunk);
            self.buf.shrink_to_fit();
        }
        if self.head == self.tail {
            self.head = 0;
            self.tail = 0;
            self.scanned = 0;
        }
        Ok(())
    }

    /// Emit what is pending as the end of its line (quiet file, retirement, truncation).
    pub(super) fn flush(&mut self, out: &mut Emitter<'_>) -> Result<(), Closed> {
        if self.truncating {
            let data = &self.buf[self.head..self.head + self.max_line];
            out.line(data, self.line_start, self.read_offset, LineKind::Truncated)?;
        } else if self.tail > self.head {
            let data = &self.buf[self.head..self.tail];
            out.line(data, self.line_start, self.read_offset, LineKind::Partial)?;
        }
        self.reset(self.read_offset);
        Ok(())
    }

    fn offset_of(&self, index: usize) -> u64 {
        self.read_offset - (self.tail - index) as u64
    }

    /// The line ends with the newline at `buf[newline]`.
    fn finish_line(&mut self, newline: usize, out: &mut Emitter<'_>) -> Result<(), Closed> {
        let end = self.offset_of(newline) + 1;
        if self.truncating {
            let data = &self.buf[self.head..self.head + self.max_line];
            out.line(data, self.line_start, end, LineKind::Truncated)?;
        } else {
            let mut data_end = newline;
            if data_end > self.head && self.buf[data_end - 1] == b'\r' {
                data_end -= 1;
            }
            if data_end - self.head > self.max_line && self.policy == LongLinePolicy::Truncate {
                let data = &self.buf[self.head..self.head + self.max_line];
                out.line(data, self.line_start, end, LineKind::Truncated)?;
            } else {
                while data_end - self.head > self.max_line {
                    self.emit_fragment(out)?;
                }
                let data = &self.buf[self.head..data_end];
                out.line(data, self.line_start, end, LineKind::Complete)?;
            }
        }
        self.head = newline + 1;
        self.scanned = self.head;
        self.line_start = end;
        self.truncating = false;
        self.splitting = false;
        Ok(())
    }

    /// No newline in `buf[head..tail]`: keep what is pending within `max_line + 1` bytes.
    fn bound_pending(&mut self, out: &mut Emitter<'_>) -> Result<(), Closed> {
        if self.truncating {
            self.tail = self.head + self.max_line;
            self.scanned = self.tail;
            return Ok(());
        }
        loop {
            let pending = self.tail - self.head;
            // A line of exactly `max_line` bytes followed by "\r" may still end with "\n": hold it.
            let over = pending > self.max_line + 1
                || (pending == self.max_line + 1 && self.buf[self.tail - 1] != b'\r');
            if !over {
                return Ok(());
            }
            match self.policy {
                LongLinePolicy::Split => self.emit_fragment(out)?,
                LongLinePolicy::Truncate => {
                    self.truncating = true;
                    self.tail = self.head + self.max_line;
                    self.scanned = self.tail;
                    return Ok(());
                }
            }
        }
    }

    /// Emit the first `max_line` pending bytes as a fragment (the buffer maps contiguously onto
    /// the file here: nothing is dropped under the split policy).
    fn emit_fragment(&mut self, out: &mut Emitter<'_>) -> Result<(), Closed> {
        if !self.splitting {
            self.splitting = true;
            out.stats.lines_split += 1;
        }
        let end = self.line_start + self.max_line as u64;
        let data = &self.buf[self.head..self.head + self.max_line];
        out.line(data, self.line_start, end, LineKind::Fragment)?;
        self.head += self.max_line;
        self.line_start = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::{FileId, Fingerprint};
    use std::time::Instant;

    struct Lines(Vec<(Vec<u8>, u64, u64, LineKind)>);

    impl LineSink for Lines {
        fn line(&mut self, line: Line<'_>) -> Result<(), Closed> {
            self.0
                .push((line.data.to_vec(), line.start, line.end, line.kind));
            Ok(())
        }
        fn idle(&mut self, _: Instant) -> Result<Option<Instant>, Closed> {
            Ok(None)
        }
    }

    /// Feed `input` in chunks of `chunk` bytes; return the lines and the reader.
    fn feed(input: &[u8], chunk: usize, max: usize, policy: LongLinePolicy) -> Lines {
        let progress = FileProgress::new(
            FileId { dev: 0, ino: 0 },
            "/f".into(),
            Fingerprint::default(),
            0,
        );
        let mut stats = FileSourceStats::default();
        let mut sink = Lines(Vec::new());
        let mut reader = LineReader::new(0, max, chunk, policy);
        let mut rest = input;
        while !rest.is_empty() {
            let spare = reader.spare();
            let n = spare.len().min(rest.len());
            spare[..n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            let mut out = Emitter {
                progress: &progress,
                path: Path::new("/f"),
                sink: &mut sink,
                stats: &mut stats,
                read_at: Instant::now(),
            };
            reader.consume(n, &mut out).unwrap();
            assert!(reader.allocated() <= max + chunk);
        }
        let mut out = Emitter {
            progress: &progress,
            path: Path::new("/f"),
            sink: &mut sink,
            stats: &mut stats,
            read_at: Instant::now(),
        };
        reader.flush(&mut out).unwrap();
        sink
    }

    fn assert_contiguous(lines: &Lines, total: usize) {
        let mut at = 0;
        for (_, start, end, _) in &lines.0 {
            assert_eq!(*start, at);
            assert!(end > start);
            at = *end;
        }
        assert_eq!(at, total as u64);
    }

    #[test]
    fn every_chunk_size_gives_the_same_lines() {
        let input = b"a\r\n\nlonger line here\r\n0123456789abc\nend";
        for chunk in 2..input.len() + 2 {
            let got = feed(input, chunk, 10, LongLinePolicy::Split);
            assert_contiguous(&got, input.len());
            let data: Vec<&[u8]> = got.0.iter().map(|l| l.0.as_slice()).collect();
            assert_eq!(
                data,
                [
                    &b"a"[..],
                    b"",
                    b"longer lin",
                    b"e here",
                    b"0123456789",
                    b"abc",
                    b"end"
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn a_full_length_crlf_line_is_not_split_whatever_the_chunking() {
        let input = b"0123456789\r\nx\n";
        for chunk in 2..input.len() + 2 {
            let got = feed(input, chunk, 10, LongLinePolicy::Split);
            assert_eq!(
                got.0[0],
                (b"0123456789".to_vec(), 0, 12, LineKind::Complete)
            );
            assert_eq!(got.0.len(), 2, "chunk {chunk}");
        }
    }

    #[test]
    fn truncate_keeps_the_prefix_and_covers_the_whole_line() {
        let input = b"0123456789abcdef\nok\n";
        for chunk in 2..input.len() + 2 {
            let got = feed(input, chunk, 4, LongLinePolicy::Truncate);
            assert_eq!(
                got.0,
                [
                    (b"0123".to_vec(), 0, 17, LineKind::Truncated),
                    (b"ok".to_vec(), 17, 20, LineKind::Complete)
                ],
                "chunk {chunk}"
            );
        }
    }
}
