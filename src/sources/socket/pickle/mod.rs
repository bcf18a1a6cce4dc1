//! A safe decoder for the pickles Python's `SocketHandler` and `DatagramHandler` send:
//! `pickle.dumps(record.__dict__, 1)`. Plain data only; nothing is ever executed.
//!
//! The opcodes of protocols 0 to 5 that plain data needs are accepted: dicts, lists, tuples,
//! sets (decoded as lists), str, bytes, ints (binary, text `INT`/`LONG`, `LONG1`/`LONG4`),
//! floats, bools, None, marks, the memo, `PROTO`, `FRAME`, `STOP`. Persistent ids, extension
//! registry codes and out-of-band buffers are refused (`pickle_opcode`).
//!
//! Globals are looked up in a small allow-list and turned into data, never called:
//! `_codecs.encode(text, 'latin1')` (how protocols 0–2 carry bytes) gives the bytes;
//! `datetime`/`date`/`time`/`timedelta`/`timezone`, `decimal.Decimal` and `uuid.UUID` give their
//! usual text (`2026-11-22T02:45:34.572123+00:00`, `1.10`, `12345678-1234-...`); the builtin
//! containers give lists. Anything else, `os.system` included, becomes the string
//! `"<unsupported global os.system>"` where its result would be, and the record reports the
//! warning `pickle_global`: the record still ships, and nothing runs.
//!
//! Work and memory are bounded: the caller caps the frame; values live in a flat arena, so the
//! memo shares them instead of copying; turning the arena into a [`Value`] tree counts every node
//! it copies against a node budget, with bounded nesting and bounded total text, so a 300-byte
//! pickle of 40 nested `[a, a]` (2^40 leaves) fails at once with `pickle_budget`. Text integers
//! are limited in digits, binary ones in bytes.

mod machine;
mod objects;
mod text;

use super::framing::{DecodeError, Limits, kind};
use machine::Machine;
use objects::{Global, offset_text, timedelta_text};
pub(crate) use text::lossy_utf8;

/// Deepest nesting of MARKs while decoding, and of containers in the result.
const MAX_DEPTH: usize = 64;
/// Longest text integer (`INT`, `LONG`) in digits.
const MAX_INT_DIGITS: usize = 1000;
/// Longest `LONG1`/`LONG4` integer in bytes (about 1,200 decimal digits).
const MAX_LONG_BYTES: usize = 512;
/// Longest text float, module or global name, or memo index line.
const MAX_SHORT_LINE: usize = 256;
/// Node budget bounds: the budget is `max_frame_bytes / 8` within these.
const MIN_NODES: usize = 4096;
const MAX_NODES: usize = 131_072;
/// Text and bytes in the result never exceed `max(2 × max_frame_bytes, this)`.
const MIN_OUTPUT_BYTES: usize = 64 * 1024;

/// A decoded value: plain data.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer outside `i64`: decimal digits, with a leading `-` when negative.
    BigInt(String),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    /// Lists, sets and frozensets.
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// Keys in pickle order (a well-formed pickle has no duplicates).
    Dict(Vec<(Value, Value)>),
}

/// A decoded LogRecord dict.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub fields: Vec<(Value, Value)>,
    /// `pickle_global` when a global outside the allow-list was replaced (it wins), else
    /// `invalid_utf8` when text had to be replaced.
    pub warning: Option<&'static str>,
}

/// Decodes one pickle (without its length prefix) whose top level is a dict.
pub fn decode(frame: &[u8], limits: &Limits) -> Result<Record, DecodeError> {
    if frame.len() > limits.max_frame_bytes {
        return Err(DecodeError::new(
            kind::FRAME_TOO_LARGE,
            format!(
                "pickle of {} bytes is over the limit of {} bytes",
                frame.len(),
                limits.max_frame_bytes
            ),
        ));
    }
    let max_nodes = (limits.max_frame_bytes / 8).clamp(MIN_NODES, MAX_NODES);
    let mut machine = Machine {
        data: frame,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: Vec::new(),
        memo_count: 0,
        arena: Vec::new(),
        shared: Vec::new(),
        spent: 0,
        max_nodes,
        unsupported_global: false,
        lossy_text: false,
    };
    let top = machine.run()?;
    let mut build = Build {
        arena: &mut machine.arena,
        shared: &machine.shared,
        nodes: 0,
        max_nodes,
        bytes: 0,
        max_bytes: limits
            .max_frame_bytes
            .saturating_mul(2)
            .max(MIN_OUTPUT_BYTES),
    };
    let fields = match build.value(top, 0, false)? {
        Value::Dict(fields) => fields,
        _ => {
            return Err(DecodeError::new(
                kind::PICKLE_NOT_DICT,
                "the pickle's top level is not a dict",
            ));
        }
    };
    let warning = if machine.unsupported_global {
        Some(kind::PICKLE_GLOBAL)
    } else if machine.lossy_text {
        Some(kind::INVALID_UTF8)
    } else {
        None
    };
    Ok(Record { fields, warning })
}

fn truncated() -> DecodeError {
    DecodeError::new(
        kind::PICKLE_TRUNCATED,
        "the pickle ends before its STOP opcode",
    )
}

fn invalid(detail: &str) -> DecodeError {
    DecodeError::new(kind::PICKLE_INVALID, format!("malformed pickle: {detail}"))
}

fn over_budget(detail: &str) -> DecodeError {
    DecodeError::new(kind::PICKLE_BUDGET, format!("pickle over budget: {detail}"))
}

/// A value on the stack, in the memo or in a container: scalars inline, the rest in the arena.
#[derive(Debug, Clone, Copy)]
enum Slot {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Obj(usize),
}

#[derive(Debug)]
enum Obj {
    Str(String),
    Bytes(Vec<u8>),
    BigInt(String),
    List(Vec<Slot>),
    Tuple(Vec<Slot>),
    Dict(Vec<(Slot, Slot)>),
    /// An allow-listed global, not called.
    Class(Global),
    /// An object of an allow-listed class whose state is not rendered.
    Instance(Global),
    TimeDelta {
        days: i64,
        seconds: i64,
        micros: i64,
    },
    TimeZone {
        offset_seconds: i64,
    },
}

/// Turns arena slots into a [`Value`] tree within the node, depth and byte budgets.
struct Build<'a> {
    arena: &'a mut [Obj],
    shared: &'a [bool],
    nodes: usize,
    max_nodes: usize,
    bytes: usize,
    max_bytes: usize,
}

impl Build<'_> {
    /// `within_shared`: reached through a shared container, so this is shared too (it is met again
    /// on the container's next visit).
    fn value(
        &mut self,
        slot: Slot,
        depth: usize,
        within_shared: bool,
    ) -> Result<Value, DecodeError> {
        self.nodes += 1;
        if self.nodes > self.max_nodes {
            return Err(over_budget(
                "too many values (shared references expand too far)",
            ));
        }
        if depth > MAX_DEPTH {
            return Err(over_budget("values nested too deeply"));
        }
        let index = match slot {
            Slot::None => return Ok(Value::None),
            Slot::Bool(b) => return Ok(Value::Bool(b)),
            Slot::Int(n) => return Ok(Value::Int(n)),
            Slot::Float(f) => return Ok(Value::Float(f)),
            Slot::Obj(index) => index,
        };
        let shared = within_shared || self.shared.get(index).copied().unwrap_or(true);
        let Some(obj) = self.arena.get_mut(index) else {
            return Err(invalid("dangling reference"));
        };
        // What is referenced once is moved out of the arena; what is shared is copied.
        let owned = |text: &mut String| {
            if shared {
                text.clone()
            } else {
                std::mem::take(text)
            }
        };
        let taken = match obj {
            Obj::Str(s) => Taken::Str(owned(s)),
            Obj::BigInt(digits) => Taken::BigInt(owned(digits)),
            Obj::Bytes(b) => Taken::Bytes(if shared { b.clone() } else { std::mem::take(b) }),
            Obj::List(items) => Taken::List(take_or_copy(items, shared)),
            Obj::Tuple(items) => Taken::Tuple(take_or_copy(items, shared)),
            Obj::Dict(pairs) => Taken::Dict(take_or_copy(pairs, shared)),
            Obj::Class(global) | Obj::Instance(global) => {
                Taken::Str(format!("<{}>", global.label()))
            }
            Obj::TimeDelta {
                days,
                seconds,
                micros,
            } => Taken::Str(timedelta_text(*days, *seconds, *micros)),
            Obj::TimeZone { offset_seconds } => Taken::Str(if *offset_seconds == 0 {
                "UTC".to_string()
            } else {
                format!("UTC{}", offset_text(*offset_seconds))
            }),
        };
        Ok(match taken {
            Taken::Str(text) => {
                self.count_bytes(text.len())?;
                Value::Str(text)
            }
            Taken::BigInt(digits) => {
                self.count_bytes(digits.len())?;
                Value::BigInt(digits)
            }
            Taken::Bytes(bytes) => {
                self.count_bytes(bytes.len())?;
                Value::Bytes(bytes)
            }
            Taken::List(items) => Value::List(self.items(&items, depth, shared)?),
            Taken::Tuple(items) => Value::Tuple(self.items(&items, depth, shared)?),
            Taken::Dict(pairs) => {
                let mut out = Vec::with_capacity(pairs.len().min(self.max_nodes));
                for (k, v) in pairs {
                    out.push((
                        self.value(k, depth + 1, shared)?,
                        self.value(v, depth + 1, shared)?,
                    ));
                }
                Value::Dict(out)
            }
        })
    }

    fn items(
        &mut self,
        items: &[Slot],
        depth: usize,
        shared: bool,
    ) -> Result<Vec<Value>, DecodeError> {
        let mut out = Vec::with_capacity(items.len().min(self.max_nodes));
        for item in items {
            out.push(self.value(*item, depth + 1, shared)?);
        }
        Ok(out)
    }

    fn count_bytes(&mut self, n: usize) -> Result<(), DecodeError> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.max_bytes {
            return Err(over_budget("decoded text too large"));
        }
        Ok(())
    }
}

/// An arena entry on its way into a [`Value`].
enum Taken {
    Str(String),
    BigInt(String),
    Bytes(Vec<u8>),
    List(Vec<Slot>),
    Tuple(Vec<Slot>),
    Dict(Vec<(Slot, Slot)>),
}

fn take_or_copy<T: Copy>(items: &mut Vec<T>, shared: bool) -> Vec<T> {
    if shared {
        items.clone()
    } else {
        std::mem::take(items)
    }
}
