//! Where one record ends and the next begins, on a stream connection ([`StreamDecoder`]) or in a
//! datagram ([`decode_datagram`]), and the decoder each record goes to.
//!
//! - `python`: a 4-byte big-endian length, then that many bytes of pickle (`SocketHandler`,
//!   `DatagramHandler`). A length over the limit is reported once and exactly that many bytes are
//!   skipped as they arrive, never buffered, so the stream stays in sync and a 4 GiB prefix costs
//!   no memory.
//! - `syslog`: RFC 6587 octet counting when a message starts with `COUNT <` (`123 <14>...`); else a
//!   message ends at `\0` (what Python's `SysLogHandler` appends). A `\n` ends a message only
//!   while the connection has never used `\0`, and only when a `<PRI>` follows it (or at idle flush
//!   and end of stream): `<14>a\n<14>b\n` splits in two, while Python's `<11>boom\nTraceback...\0`
//!   keeps its traceback whole. A message over the limit is reported and skipped up to its
//!   terminator.
//! - `lines`: text split on `\n`, a trailing `\r` dropped. A line longer than the limit is emitted
//!   in pieces of exactly the limit, so nothing is lost; the caller's `--multiline` joins them.
//! - `auto`: chosen from a connection's (or datagram's) first byte: `<` is syslog, printable text
//!   (`{`, letters, digits, UTF-8) is lines, anything else (`\0`, the high byte of a length) python.
//!
//! Memory: a stream decoder holds at most `max_frame_bytes` + [`HEADROOM`] bytes; input is copied
//! into the buffer only as far as that allows, and complete records are taken out before more is
//! copied. No input makes it panic.

use std::fmt;
use std::str::FromStr;

mod stream;

pub use stream::StreamDecoder;

use super::{envelope, pickle, syslog};

/// Stable labels of decode errors and warnings, for the `kind` label of a metric.
pub mod kind {
    /// A frame (length prefix, octet count or delimited message) over `max_frame_bytes`.
    pub const FRAME_TOO_LARGE: &str = "frame_too_large";
    /// The stream ended inside a length-prefixed or octet-counted frame.
    pub const PARTIAL_FRAME: &str = "partial_frame";
    /// A datagram whose length prefix does not match its size.
    pub const LENGTH_MISMATCH: &str = "length_mismatch";
    /// A frame or message with no content (a zero length, a lone `\0`, an empty datagram).
    pub const EMPTY: &str = "empty";
    /// The pickle ended before its STOP opcode.
    pub const PICKLE_TRUNCATED: &str = "pickle_truncated";
    /// An opcode plain data does not need (or an unknown one).
    pub const PICKLE_OPCODE: &str = "pickle_opcode";
    /// The pickle needs more nodes, nesting, digits or output than the budget allows.
    pub const PICKLE_BUDGET: &str = "pickle_budget";
    /// The pickle is not a dict (a LogRecord's `__dict__`).
    pub const PICKLE_NOT_DICT: &str = "pickle_not_dict";
    /// A malformed pickle: stack underflow, a missing MARK or memo entry, a wrong operand type.
    pub const PICKLE_INVALID: &str = "pickle_invalid";

    /// Warning: a global outside the allow-list, shipped as `"<unsupported global mod.name>"`.
    pub const PICKLE_GLOBAL: &str = "pickle_global";
    /// Warning: invalid UTF-8 (or a lone surrogate) was replaced with U+FFFD.
    pub const INVALID_UTF8: &str = "invalid_utf8";
    /// Warning: a syslog message without a valid `<PRI>`, shipped as `message` alone.
    pub const SYSLOG_PRI: &str = "syslog_pri";
}

/// Bytes a stream decoder may hold beyond `max_frame_bytes`: a length prefix, an octet count and
/// its space, or the few bytes after a `\n` that decide whether it ends a syslog message.
pub const HEADROOM: usize = 16;

/// `?framing=`: how a socket's bytes are cut into records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    #[default]
    Auto,
    Python,
    Syslog,
    Lines,
}

/// A framing value that is not `auto`, `python`, `syslog` or `lines`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid framing {0:?}: expected auto, python, syslog or lines")]
pub struct FramingError(pub String);

impl FromStr for Framing {
    type Err = FramingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Framing::Auto),
            "python" => Ok(Framing::Python),
            "syslog" => Ok(Framing::Syslog),
            "lines" => Ok(Framing::Lines),
            other => Err(FramingError(other.to_string())),
        }
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Framing::Auto => "auto",
            Framing::Python => "python",
            Framing::Syslog => "syslog",
            Framing::Lines => "lines",
        })
    }
}

impl Framing {
    /// The framing `Auto` stands for when a connection or datagram starts with `first`.
    pub fn resolve(self, first: u8) -> Framing {
        match self {
            Framing::Auto => match first {
                b'<' => Framing::Syslog,
                b'\t' | b'\n' | b'\r' | 0x20..=0x7e | 0xc2..=0xf4 => Framing::Lines,
                _ => Framing::Python,
            },
            other => other,
        }
    }
}

/// Size limits of one socket (`--max-record-bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame accepted: a pickle's length, a syslog message, a line (before splitting).
    pub max_frame_bytes: usize,
}

impl Limits {
    /// At least one byte, so that splitting long lines always makes progress.
    fn max(&self) -> usize {
        self.max_frame_bytes.max(1)
    }
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A finished one-line JSON object (python and syslog framings), and at most one warning
    /// kind (see [`kind`]) when something had to be replaced.
    Envelope {
        json: Vec<u8>,
        warning: Option<&'static str>,
    },
    /// Raw text of the `lines` framing, without its `\n` (the caller applies `--format` and
    /// `--multiline`).
    Line(Vec<u8>),
}

/// A frame that could not be decoded; [`DecodeError::kind`] is one of the labels in [`kind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct DecodeError {
    kind: &'static str,
    detail: String,
}

impl DecodeError {
    pub(crate) fn new(kind: &'static str, detail: impl Into<String>) -> DecodeError {
        DecodeError {
            kind,
            detail: detail.into(),
        }
    }

    /// A stable snake_case label, for metrics.
    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

fn too_large(len: u64, limits: &Limits) -> DecodeError {
    DecodeError::new(
        kind::FRAME_TOO_LARGE,
        format!(
            "frame of {len} bytes is over the limit of {} bytes",
            limits.max()
        ),
    )
}

fn message_too_large(limits: &Limits) -> DecodeError {
    DecodeError::new(
        kind::FRAME_TOO_LARGE,
        format!(
            "syslog message longer than the limit of {} bytes",
            limits.max()
        ),
    )
}

/// A pickle frame (without its length prefix) → the JSON envelope.
fn python_record(frame: &[u8], limits: &Limits) -> Result<Decoded, DecodeError> {
    if frame.is_empty() {
        return Err(DecodeError::new(kind::EMPTY, "zero-length pickle frame"));
    }
    let record = pickle::decode(frame, limits)?;
    Ok(Decoded::Envelope {
        json: envelope::log_record(&record.fields),
        warning: record.warning,
    })
}

/// Decodes one datagram: one datagram is one record.
pub fn decode_datagram(
    framing: Framing,
    datagram: &[u8],
    limits: &Limits,
) -> Result<Decoded, DecodeError> {
    let Some(&first) = datagram.first() else {
        return Err(DecodeError::new(kind::EMPTY, "empty datagram"));
    };
    match framing.resolve(first) {
        Framing::Python => {
            let Some((prefix, frame)) = datagram.split_first_chunk::<4>() else {
                return Err(DecodeError::new(
                    kind::LENGTH_MISMATCH,
                    format!(
                        "datagram of {} bytes is shorter than a length prefix",
                        datagram.len()
                    ),
                ));
            };
            let len = u32::from_be_bytes(*prefix) as usize;
            if len > limits.max() {
                return Err(too_large(len as u64, limits));
            }
            if len != frame.len() {
                return Err(DecodeError::new(
                    kind::LENGTH_MISMATCH,
                    format!(
                        "length prefix says {len} bytes, the datagram carries {}",
                        frame.len()
                    ),
                ));
            }
            python_record(frame, limits)
        }
        Framing::Syslog => {
            if datagram.len() > limits.max() {
                return Err(too_large(datagram.len() as u64, limits));
            }
            syslog::decode(datagram)
        }
        Framing::Lines | Framing::Auto => {
            if datagram.len() > limits.max() {
                return Err(too_large(datagram.len() as u64, limits));
            }
            let line = datagram.strip_suffix(b"\n").unwrap_or(datagram);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            Ok(Decoded::Line(line.to_vec()))
        }
    }
}
