//! [`StreamDecoder`]: one per stream connection; bytes in as they are read, records out.

use super::{
    DecodeError, Decoded, Framing, HEADROOM, Limits, kind, message_too_large, python_record,
    too_large,
};
use crate::sources::socket::syslog;

/// The framing of a connection once its first byte is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Undecided,
    Python,
    Syslog,
    Lines,
}

/// Whether a `\n` ends a syslog message (newline mode only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NewlineEnds {
    Yes,
    No,
    /// Not enough bytes after it yet.
    Undecided,
}

/// An RFC 6587 octet count at the start of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OctetCount {
    /// `len` bytes of message follow the `header` bytes (`123 `).
    Frame {
        len: u64,
        header: usize,
    },
    NeedMore,
    /// Not an octet count: the message is delimited.
    No,
}

/// Longest octet count accepted, in digits (beyond 10 it is not a count but text).
const MAX_COUNT_DIGITS: usize = 10;

/// Decodes one stream connection: feed it bytes as they are read.
#[derive(Debug)]
pub struct StreamDecoder {
    framing: Framing,
    limits: Limits,
    mode: Mode,
    buf: Vec<u8>,
    /// Bytes of the current message at the start of `buf` already searched for a terminator.
    scanned: usize,
    /// Bytes still to skip: the rest of an oversize length-prefixed or octet-counted frame.
    discard: u64,
    /// Skipping an oversize delimited syslog message up to its terminator.
    skip_to_terminator: bool,
    /// Syslog: this connection has ended a message with `\0`, so `\n` no longer ends one.
    nul_terminated: bool,
    /// Lines: the last thing emitted was a piece of a long line.
    line_continues: bool,
}

impl StreamDecoder {
    pub fn new(framing: Framing, limits: Limits) -> StreamDecoder {
        StreamDecoder {
            framing,
            limits,
            mode: Mode::Undecided,
            buf: Vec::new(),
            scanned: 0,
            discard: 0,
            skip_to_terminator: false,
            nul_terminated: false,
            line_continues: false,
        }
    }

    /// The framing in use: the configured one, or what `auto` chose (`Auto` until the first
    /// byte arrives).
    pub fn framing(&self) -> Framing {
        match self.mode {
            Mode::Undecided => self.framing,
            Mode::Python => Framing::Python,
            Mode::Syslog => Framing::Syslog,
            Mode::Lines => Framing::Lines,
        }
    }

    /// Bytes held for an incomplete record; never more than `max_frame_bytes` + [`HEADROOM`].
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn capacity(&self) -> usize {
        self.limits.max().saturating_add(HEADROOM)
    }

    /// Decodes what `bytes` completes; the rest is held for the next call.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<Result<Decoded, DecodeError>>) {
        while let Some(&first) = bytes.first() {
            if self.mode == Mode::Undecided {
                self.mode = match self.framing.resolve(first) {
                    Framing::Python => Mode::Python,
                    Framing::Syslog => Mode::Syslog,
                    Framing::Lines | Framing::Auto => Mode::Lines,
                };
            }
            // `process` leaves the buffer empty whenever it is skipping, so skipped bytes
            // come straight from the input and are never copied.
            if self.discard > 0 {
                let n = usize::try_from(self.discard).map_or(bytes.len(), |d| d.min(bytes.len()));
                bytes = &bytes[n..];
                self.discard -= n as u64;
                continue;
            }
            if self.skip_to_terminator {
                match self.find_terminator(bytes) {
                    Some(end) => {
                        bytes = &bytes[end + 1..];
                        self.skip_to_terminator = false;
                    }
                    None => bytes = &[],
                }
                continue;
            }
            let room = self.capacity().saturating_sub(self.buf.len());
            let n = room.min(bytes.len());
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            self.process(false, out);
            if n == 0 && self.buf.len() >= self.capacity() {
                // Unreachable by construction (a full buffer always holds a complete record or
                // an oversize one); dropping the bytes keeps memory bounded even so.
                out.push(Err(DecodeError::new(
                    kind::FRAME_TOO_LARGE,
                    "decoder buffer full",
                )));
                self.buf.clear();
                self.scanned = 0;
            }
        }
    }

    /// The connection has been quiet: emits a held partial record where the framing has no
    /// other end marker (a line; a syslog message on a connection that never used `\0`).
    pub fn flush_idle(&mut self, out: &mut Vec<Result<Decoded, DecodeError>>) {
        match self.mode {
            Mode::Lines => self.flush_line(out),
            Mode::Syslog if !self.nul_terminated && !self.buf.is_empty() => {
                if self.octet_count_start() {
                    return;
                }
                self.emit_syslog_rest(out);
            }
            _ => {}
        }
    }

    /// End of stream: decodes what is complete, reports an incomplete length-prefixed or
    /// octet-counted frame as `partial_frame`, and emits a final unterminated line or syslog
    /// message. The decoder is then empty and can be reused for a new connection.
    pub fn finish(&mut self, out: &mut Vec<Result<Decoded, DecodeError>>) {
        self.process(true, out);
        match self.mode {
            Mode::Python if !self.buf.is_empty() => {
                out.push(Err(DecodeError::new(
                    kind::PARTIAL_FRAME,
                    format!(
                        "stream ended {} bytes into a length-prefixed frame",
                        self.buf.len()
                    ),
                )));
            }
            Mode::Lines => self.flush_line(out),
            Mode::Syslog if !self.buf.is_empty() => {
                if self.octet_count_start() {
                    out.push(Err(DecodeError::new(
                        kind::PARTIAL_FRAME,
                        format!(
                            "stream ended {} bytes into an octet-counted message",
                            self.buf.len()
                        ),
                    )));
                } else {
                    self.emit_syslog_rest(out);
                }
            }
            _ => {}
        }
        *self = StreamDecoder::new(self.framing, self.limits);
    }

    /// Takes complete records out of the buffer. `eof`: no more bytes will come.
    fn process(&mut self, eof: bool, out: &mut Vec<Result<Decoded, DecodeError>>) {
        let consumed = match self.mode {
            Mode::Undecided => 0,
            Mode::Python => self.process_python(out),
            Mode::Syslog => self.process_syslog(eof, out),
            Mode::Lines => self.process_lines(out),
        };
        self.buf.drain(..consumed);
    }

    fn process_python(&mut self, out: &mut Vec<Result<Decoded, DecodeError>>) -> usize {
        let mut pos = 0;
        while let Some(prefix) = self.buf[pos..].first_chunk::<4>() {
            let len = u32::from_be_bytes(*prefix) as usize;
            if len > self.limits.max() {
                out.push(Err(too_large(len as u64, &self.limits)));
                pos += 4;
                pos += self.start_discard(len as u64, pos);
                continue;
            }
            let Some(frame) = self.buf.get(pos + 4..pos + 4 + len) else {
                break;
            };
            out.push(python_record(frame, &self.limits));
            pos += 4 + len;
        }
        pos
    }

    /// Starts skipping `len` bytes from `buf[pos..]`; returns how many of them the buffer holds.
    fn start_discard(&mut self, len: u64, pos: usize) -> usize {
        let held = (self.buf.len() - pos) as u64;
        let now = len.min(held);
        self.discard = len - now;
        now as usize
    }

    fn process_syslog(&mut self, eof: bool, out: &mut Vec<Result<Decoded, DecodeError>>) -> usize {
        let max = self.limits.max();
        let mut pos = 0;
        loop {
            if self.discard > 0 {
                break;
            }
            if self.skip_to_terminator {
                match self.find_terminator(&self.buf[pos..]) {
                    Some(end) => {
                        pos += end + 1;
                        self.skip_to_terminator = false;
                    }
                    None => {
                        pos = self.buf.len();
                        break;
                    }
                }
            }
            // Stray line ends between messages (`\0\n`, `\r\n` after an octet-counted frame).
            if self.scanned == 0 {
                while matches!(self.buf.get(pos), Some(b'\n' | b'\r')) {
                    pos += 1;
                }
            }
            let rest = &self.buf[pos..];
            if rest.is_empty() {
                break;
            }
            if self.scanned == 0 {
                match octet_count(rest) {
                    OctetCount::Frame { len, header } => {
                        if len > max as u64 {
                            out.push(Err(too_large(len, &self.limits)));
                            pos += header;
                            pos += self.start_discard(len, pos);
                            continue;
                        }
                        let len = len as usize;
                        match rest.get(header..header + len) {
                            Some(message) => {
                                out.push(syslog::decode(message));
                                pos += header + len;
                                continue;
                            }
                            None => break,
                        }
                    }
                    OctetCount::NeedMore if !eof => break,
                    OctetCount::NeedMore | OctetCount::No => {}
                }
            }
            // A delimited message: find its end, resuming where the last search stopped.
            let mut search = self.scanned;
            let end = loop {
                let hit = if self.nul_terminated {
                    memchr::memchr(0, &rest[search..])
                } else {
                    memchr::memchr2(0, b'\n', &rest[search..])
                };
                let Some(hit) = hit.map(|h| h + search) else {
                    break None;
                };
                if hit > max || rest[hit] == 0 {
                    break Some(hit);
                }
                match newline_ends(&rest[hit + 1..], eof) {
                    NewlineEnds::Yes => break Some(hit),
                    NewlineEnds::No => search = hit + 1,
                    NewlineEnds::Undecided => {
                        self.scanned = hit;
                        return pos;
                    }
                }
            };
            match end {
                Some(end) if end <= max => {
                    if rest[end] == 0 {
                        self.nul_terminated = true;
                    }
                    out.push(syslog_message(&rest[..end]));
                    pos += end + 1;
                    self.scanned = 0;
                }
                Some(_) => {
                    out.push(Err(message_too_large(&self.limits)));
                    pos += max;
                    self.skip_to_terminator = true;
                    self.scanned = 0;
                }
                None if rest.len() > max => {
                    out.push(Err(message_too_large(&self.limits)));
                    pos = self.buf.len();
                    self.skip_to_terminator = true;
                    self.scanned = 0;
                    break;
                }
                None => {
                    self.scanned = rest.len();
                    break;
                }
            }
        }
        pos
    }

    /// The end of the message being skipped in `bytes`: a `\0`, or a `\n` in newline mode.
    fn find_terminator(&self, bytes: &[u8]) -> Option<usize> {
        if self.nul_terminated {
            memchr::memchr(0, bytes)
        } else {
            memchr::memchr2(0, b'\n', bytes)
        }
    }

    /// The held bytes start an octet-counted frame (complete count, incomplete message).
    fn octet_count_start(&self) -> bool {
        self.scanned == 0 && matches!(octet_count(&self.buf), OctetCount::Frame { .. })
    }

    /// Emits everything held as one syslog message (idle flush, end of stream).
    fn emit_syslog_rest(&mut self, out: &mut Vec<Result<Decoded, DecodeError>>) {
        let rest = std::mem::take(&mut self.buf);
        self.scanned = 0;
        if rest.iter().all(|b| matches!(b, b'\n' | b'\r')) {
            return;
        }
        out.push(syslog_message(&rest));
    }

    fn process_lines(&mut self, out: &mut Vec<Result<Decoded, DecodeError>>) -> usize {
        let max = self.limits.max();
        let mut pos = 0;
        loop {
            let rest = &self.buf[pos..];
            let window = &rest[self.scanned..rest.len().min(max + 1)];
            match memchr::memchr(b'\n', window).map(|i| i + self.scanned) {
                Some(end) => {
                    let line = &rest[..end];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    // The `\n` right after a cut piece ends the line already emitted.
                    if !(self.line_continues && line.is_empty()) {
                        out.push(Ok(Decoded::Line(line.to_vec())));
                    }
                    self.line_continues = false;
                    pos += end + 1;
                    self.scanned = 0;
                }
                None if rest.len() > max => {
                    out.push(Ok(Decoded::Line(rest[..max].to_vec())));
                    self.line_continues = true;
                    pos += max;
                    self.scanned = 0;
                }
                None => {
                    self.scanned = rest.len();
                    break;
                }
            }
        }
        pos
    }

    fn flush_line(&mut self, out: &mut Vec<Result<Decoded, DecodeError>>) {
        if !self.buf.is_empty() {
            let line = self.buf.strip_suffix(b"\r").unwrap_or(&self.buf);
            if !(self.line_continues && line.is_empty()) {
                out.push(Ok(Decoded::Line(line.to_vec())));
            }
        }
        self.buf.clear();
        self.scanned = 0;
        self.line_continues = false;
    }
}

/// A delimited syslog message; empty ones (`\0\0`) are reported, not shipped.
fn syslog_message(message: &[u8]) -> Result<Decoded, DecodeError> {
    if message.iter().all(|b| matches!(b, b'\n' | b'\r' | b'\0')) {
        return Err(DecodeError::new(kind::EMPTY, "empty syslog message"));
    }
    syslog::decode(message)
}

/// `123 <` at the start of `bytes`: RFC 6587 octet counting.
fn octet_count(bytes: &[u8]) -> OctetCount {
    if !matches!(bytes.first(), Some(b'1'..=b'9')) {
        return OctetCount::No;
    }
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits > MAX_COUNT_DIGITS {
        return OctetCount::No;
    }
    match (bytes.get(digits), bytes.get(digits + 1)) {
        (None, _) | (Some(b' '), None) => OctetCount::NeedMore,
        // The framed message starts with its `<PRI>`: `2026 text` is text, not a count.
        (Some(b' '), Some(b'<')) => {
            let len = bytes[..digits]
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            OctetCount::Frame {
                len,
                header: digits + 1,
            }
        }
        _ => OctetCount::No,
    }
}

/// Whether a `\n` followed by `after` ends a syslog message in newline mode: only when a
/// `<PRI>` (1 to 3 digits) follows. At end of stream, a `\n` with nothing after it ends the
/// message and an incomplete `<PRI>` does not.
fn newline_ends(after: &[u8], eof: bool) -> NewlineEnds {
    let undecided = if eof {
        NewlineEnds::No
    } else {
        NewlineEnds::Undecided
    };
    match after.first() {
        None if eof => return NewlineEnds::Yes,
        None => return NewlineEnds::Undecided,
        Some(b'<') => {}
        Some(_) => return NewlineEnds::No,
    }
    for (i, &b) in after.iter().enumerate().skip(1).take(4) {
        match b {
            b'0'..=b'9' if i <= 3 => {}
            b'>' if i >= 2 => return NewlineEnds::Yes,
            _ => return NewlineEnds::No,
        }
    }
    if after.len() >= 5 {
        NewlineEnds::No
    } else {
        undecided
    }
}
