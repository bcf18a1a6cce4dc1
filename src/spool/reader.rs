//! Reading the spool back, behind the writer.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use super::Shared;
use super::entry::{self, Bad, Kind, SEGMENT_HEADER_BYTES};

/// What a read found, in offset order.
#[derive(Debug, PartialEq, Eq)]
pub enum Item<'a> {
    Entry {
        kind: Kind,
        payload: &'a [u8],
        start: u64,
        end: u64,
    },
    /// Offsets with no readable entry (a cut corrupt tail, or bytes that went bad on disk after
    /// start-up): nothing to send, but they must be acknowledged for the committed offset to pass.
    Skipped { start: u64, end: u64 },
}

/// Follows the spool from an offset. One per spool; it keeps its own file handle.
pub struct Reader {
    shared: Arc<Shared>,
    position: u64,
    file: Option<(u64, File)>,
    buf: Vec<u8>,
}

/// Where the reader's position lies.
enum Place {
    /// In the segment at `base`, whose entries end at `end` for now.
    In { base: u64, end: u64 },
    /// Nothing to read at the position; the next readable offset is `next`.
    Gap { next: u64 },
    /// Caught up with the writer.
    AtEnd,
}

impl Reader {
    pub(super) fn new(shared: Arc<Shared>, position: u64) -> Reader {
        Reader {
            shared,
            position,
            file: None,
            buf: Vec::new(),
        }
    }

    /// The offset of the next entry to read.
    pub fn position(&self) -> u64 {
        self.position
    }

    fn place(&self) -> Place {
        let state = self.shared.lock();
        if self.position >= state.end {
            return Place::AtEnd;
        }
        for segment in &state.segments {
            if self.position < segment.base {
                return Place::Gap { next: segment.base };
            }
            if self.position < segment.end() {
                return Place::In {
                    base: segment.base,
                    end: segment.end(),
                };
            }
        }
        // Past every segment but before the end: only a failed write leaves this (a gap of one
        // byte before the next segment, which is then the last one).
        Place::Gap { next: state.end }
    }

    /// Read up to about `max_bytes` of entries available now (at least one whole entry when there
    /// is one), passing each to `each` in order. Returns how many items it passed.
    pub fn read(&mut self, max_bytes: usize, mut each: impl FnMut(Item<'_>)) -> io::Result<usize> {
        let (base, end) = match self.place() {
            Place::AtEnd => return Ok(0),
            Place::Gap { next } => {
                each(Item::Skipped {
                    start: self.position,
                    end: next,
                });
                self.position = next;
                return Ok(1);
            }
            Place::In { base, end } => (base, end),
        };
        if self.file.as_ref().is_none_or(|(open, _)| *open != base) {
            let path = entry::segment_path(&self.shared.dir, base);
            self.file = Some((base, File::open(path)?));
        }
        let Some((_, file)) = &self.file else {
            return Ok(0);
        };
        let available = (end - self.position) as usize;
        let at = SEGMENT_HEADER_BYTES + (self.position - base);
        let mut want = available.min(max_bytes.max(entry::ENTRY_OVERHEAD));
        loop {
            self.buf.resize(want, 0);
            file.read_exact_at(&mut self.buf, at)?;
            match entry::decode(&self.buf) {
                Err(Bad::Incomplete) if want < available => {
                    // A long entry: read all of it (its length field is in the buffer now).
                    let length = u32::from_le_bytes(self.buf[..4].try_into().unwrap_or_default());
                    want = (8 + length as usize).min(available).max(want + 1);
                }
                _ => break,
            }
        }
        let mut offset = 0usize;
        let mut items = 0;
        while offset < self.buf.len() {
            match entry::decode(&self.buf[offset..]) {
                Ok(decoded) => {
                    let start = self.position + offset as u64;
                    each(Item::Entry {
                        kind: decoded.kind,
                        payload: decoded.payload,
                        start,
                        end: start + decoded.len as u64,
                    });
                    offset += decoded.len;
                    items += 1;
                }
                Err(Bad::Incomplete) if offset > 0 => break,
                Err(_) => {
                    // Whole entries are written in one call and published after it, so this is
                    // damage on disk: skip the rest of the segment.
                    tracing::error!(
                        segment = base,
                        offset = self.position + offset as u64,
                        "corrupt spool entry; skipping the rest of its segment"
                    );
                    let start = self.position + offset as u64;
                    each(Item::Skipped { start, end });
                    self.position = end;
                    return Ok(items + 1);
                }
            }
        }
        self.position += offset as u64;
        Ok(items)
    }

    /// Wait until there is something past the position, the spool is closed, or `timeout` passes.
    /// Returns true when there is something to read.
    pub fn wait(&self, timeout: Duration) -> bool {
        let state = self.shared.lock();
        if state.end > self.position {
            return true;
        }
        if state.closed {
            return false;
        }
        let (state, _) = self
            .shared
            .grew
            .wait_timeout_while(state, timeout, |state| {
                state.end <= self.position && !state.closed
            })
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.end > self.position
    }

    /// True once the spool is closed and everything in it was read.
    pub fn is_done(&self) -> bool {
        let state = self.shared.lock();
        state.closed && self.position >= state.end
    }
}
