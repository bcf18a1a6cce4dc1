//! Globals turned into data: the allow-list, REDUCE/NEWOBJ/BUILD without executing anything,
//! and the text of datetimes, UUIDs and time deltas.

use super::machine::Machine;
use super::{DecodeError, Obj, Slot, invalid};

/// The allow-list of globals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Global {
    CodecsEncode,
    Bytes,
    Bytearray,
    Set,
    Frozenset,
    List,
    Tuple,
    Object,
    Reconstructor,
    DateTime,
    Date,
    Time,
    TimeDelta,
    TimeZone,
    Decimal,
    Uuid,
}

impl Global {
    fn resolve(module: &str, name: &str) -> Option<Global> {
        let builtins = matches!(module, "builtins" | "__builtin__");
        Some(match (module, name) {
            ("_codecs", "encode") => Global::CodecsEncode,
            (_, "bytes") if builtins => Global::Bytes,
            (_, "bytearray") if builtins => Global::Bytearray,
            (_, "set") if builtins => Global::Set,
            (_, "frozenset") if builtins => Global::Frozenset,
            (_, "list") if builtins => Global::List,
            (_, "tuple") if builtins => Global::Tuple,
            (_, "object") if builtins => Global::Object,
            ("copyreg" | "copy_reg", "_reconstructor") => Global::Reconstructor,
            ("datetime", "datetime") => Global::DateTime,
            ("datetime", "date") => Global::Date,
            ("datetime", "time") => Global::Time,
            ("datetime", "timedelta") => Global::TimeDelta,
            ("datetime", "timezone") => Global::TimeZone,
            ("decimal", "Decimal") => Global::Decimal,
            ("uuid", "UUID") => Global::Uuid,
            _ => return None,
        })
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            Global::CodecsEncode => "_codecs.encode",
            Global::Bytes => "builtins.bytes",
            Global::Bytearray => "builtins.bytearray",
            Global::Set => "builtins.set",
            Global::Frozenset => "builtins.frozenset",
            Global::List => "builtins.list",
            Global::Tuple => "builtins.tuple",
            Global::Object => "builtins.object",
            Global::Reconstructor => "copyreg._reconstructor",
            Global::DateTime => "datetime.datetime",
            Global::Date => "datetime.date",
            Global::Time => "datetime.time",
            Global::TimeDelta => "datetime.timedelta",
            Global::TimeZone => "datetime.timezone",
            Global::Decimal => "decimal.Decimal",
            Global::Uuid => "uuid.UUID",
        }
    }

    /// Classes whose instances are made through `__reduce__` arguments rather than state.
    fn is_value_type(self) -> bool {
        !matches!(self, Global::Object | Global::Uuid | Global::Reconstructor)
    }
}

impl Machine<'_> {
    pub(super) fn global(&mut self, module: &[u8], name: &[u8]) -> Result<Slot, DecodeError> {
        let module = String::from_utf8_lossy(module);
        let name = String::from_utf8_lossy(name);
        Ok(match Global::resolve(&module, &name) {
            Some(global) => self.alloc(Obj::Class(global)),
            None => {
                self.unsupported_global = true;
                self.alloc(Obj::Str(format!("<unsupported global {module}.{name}>")))
            }
        })
    }

    pub(super) fn tuple_items(&mut self, args: Slot) -> Result<Vec<Slot>, DecodeError> {
        let items = match self.obj(args) {
            Some(Obj::Tuple(items) | Obj::List(items)) => items.clone(),
            _ => return Err(invalid("arguments are not a tuple")),
        };
        self.spend(items.len())?;
        Ok(items)
    }

    fn str_of(&self, slot: Slot) -> Option<&str> {
        match self.obj(slot) {
            Some(Obj::Str(s)) => Some(s),
            _ => None,
        }
    }

    fn bytes_of(&self, slot: Slot) -> Option<&[u8]> {
        match self.obj(slot) {
            Some(Obj::Bytes(b)) => Some(b),
            _ => None,
        }
    }

    fn int_of(slot: Slot) -> Option<i64> {
        match slot {
            Slot::Int(n) => Some(n),
            Slot::Bool(b) => Some(i64::from(b)),
            _ => None,
        }
    }

    /// REDUCE: an allow-listed callable gives data; an unsupported one stays its marker.
    pub(super) fn call(&mut self, callable: Slot, args: &[Slot]) -> Result<Slot, DecodeError> {
        let global = match self.obj(callable) {
            Some(Obj::Class(global)) => *global,
            // The "<unsupported global ...>" marker stands for the call's result too.
            Some(Obj::Str(_)) => return Ok(callable),
            _ => return Err(invalid("REDUCE on something not a global")),
        };
        let obj = match (global, args) {
            (Global::CodecsEncode, [text, rest @ ..]) if rest.len() <= 1 => {
                let encoding = rest
                    .first()
                    .and_then(|e| self.str_of(*e))
                    .unwrap_or("utf-8");
                match self.str_of(*text) {
                    Some(text) => Obj::Bytes(encode(text, encoding)),
                    None => Obj::Instance(global),
                }
            }
            (Global::Bytes | Global::Bytearray, []) => Obj::Bytes(Vec::new()),
            (Global::Bytes | Global::Bytearray, [value]) => match self.bytes_of(*value) {
                Some(bytes) => Obj::Bytes(bytes.to_vec()),
                None => Obj::Instance(global),
            },
            (Global::Bytes | Global::Bytearray, [text, encoding]) => {
                match (self.str_of(*text), self.str_of(*encoding)) {
                    (Some(text), Some(encoding)) => Obj::Bytes(encode(text, encoding)),
                    _ => Obj::Instance(global),
                }
            }
            (Global::Set | Global::Frozenset | Global::List | Global::Tuple, []) => {
                Obj::List(Vec::new())
            }
            (Global::Set | Global::Frozenset | Global::List | Global::Tuple, [items]) => {
                let items = self.tuple_items(*items)?;
                Obj::List(items)
            }
            (Global::Reconstructor, [class, ..]) => return self.instantiate(*class, &[]),
            (Global::DateTime, [state, zone @ ..]) => self
                .bytes_of(*state)
                .and_then(|s| datetime_text(s, self.zone_of(zone)))
                .map_or(Obj::Instance(global), Obj::Str),
            (Global::Date, [state]) => self
                .bytes_of(*state)
                .and_then(date_text)
                .map_or(Obj::Instance(global), Obj::Str),
            (Global::Time, [state, zone @ ..]) => self
                .bytes_of(*state)
                .and_then(|s| time_text(s, self.zone_of(zone)))
                .map_or(Obj::Instance(global), Obj::Str),
            (Global::TimeDelta, [days, seconds, micros]) => {
                match (
                    Self::int_of(*days),
                    Self::int_of(*seconds),
                    Self::int_of(*micros),
                ) {
                    (Some(days), Some(seconds), Some(micros)) => Obj::TimeDelta {
                        days,
                        seconds,
                        micros,
                    },
                    _ => Obj::Instance(global),
                }
            }
            (Global::TimeZone, [delta, ..]) => match self.obj(*delta) {
                Some(Obj::TimeDelta { days, seconds, .. }) => Obj::TimeZone {
                    offset_seconds: days.saturating_mul(86_400).saturating_add(*seconds),
                },
                _ => Obj::Instance(global),
            },
            (Global::Decimal | Global::Uuid, [text]) => match self.str_of(*text) {
                Some(text) => Obj::Str(text.to_owned()),
                None => Obj::Instance(global),
            },
            _ => Obj::Instance(global),
        };
        Ok(self.alloc(obj))
    }

    /// NEWOBJ, OBJ, INST, `copyreg._reconstructor`: an instance of `class`, not constructed.
    pub(super) fn instantiate(&mut self, class: Slot, args: &[Slot]) -> Result<Slot, DecodeError> {
        match self.obj(class) {
            Some(Obj::Class(global)) if global.is_value_type() => self.call(class, args),
            Some(Obj::Class(global)) => {
                let global = *global;
                Ok(self.alloc(Obj::Instance(global)))
            }
            Some(Obj::Str(_)) => Ok(class),
            _ => Err(invalid("instance of something not a class")),
        }
    }

    /// BUILD: only a UUID's `{'int': N}` state is used; other state is dropped, never applied.
    pub(super) fn build(&mut self, target: Slot, state: Slot) {
        let Slot::Obj(index) = target else {
            return;
        };
        if !matches!(self.arena.get(index), Some(Obj::Instance(Global::Uuid))) {
            return;
        }
        let Some(Obj::Dict(pairs)) = self.obj(state) else {
            return;
        };
        let int = pairs
            .iter()
            .find(|(k, _)| self.str_of(*k) == Some("int"))
            .map(|(_, v)| *v);
        let value = match int {
            Some(Slot::Int(n)) => u128::try_from(n).ok(),
            Some(slot) => match self.obj(slot) {
                Some(Obj::BigInt(digits)) => digits.parse::<u128>().ok(),
                _ => None,
            },
            None => None,
        };
        if let Some(value) = value {
            self.arena[index] = Obj::Str(uuid_text(value));
        }
    }

    fn zone_of(&self, zone: &[Slot]) -> Option<i64> {
        match zone.first().and_then(|z| self.obj(*z)) {
            Some(Obj::TimeZone { offset_seconds }) => Some(*offset_seconds),
            _ => None,
        }
    }
}

/// `_codecs.encode(text, encoding)` for the encodings pickles use to carry bytes.
fn encode(text: &str, encoding: &str) -> Vec<u8> {
    match encoding.to_ascii_lowercase().as_str() {
        "latin1" | "latin-1" | "iso-8859-1" | "iso8859-1" => text
            .chars()
            .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
            .collect(),
        _ => text.as_bytes().to_vec(),
    }
}

fn uuid_text(n: u128) -> String {
    let hex = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// `+HH:MM` (`+HH:MM:SS` when seconds are set), as Python's `isoformat`.
pub(super) fn offset_text(offset_seconds: i64) -> String {
    let sign = if offset_seconds < 0 { '-' } else { '+' };
    let abs = offset_seconds.unsigned_abs();
    let (h, m, s) = (abs / 3600, abs / 60 % 60, abs % 60);
    if s == 0 {
        format!("{sign}{h:02}:{m:02}")
    } else {
        format!("{sign}{h:02}:{m:02}:{s:02}")
    }
}

/// `HH:MM:SS[.ffffff]` from hour, minute, second and microsecond bytes.
fn clock_text(b: &[u8]) -> String {
    let micros = u32::from(b[3]) << 16 | u32::from(b[4]) << 8 | u32::from(b[5]);
    let mut text = format!("{:02}:{:02}:{:02}", b[0] & 0x7f, b[1], b[2]);
    if micros != 0 {
        text.push_str(&format!(".{micros:06}"));
    }
    text
}

/// A pickled `datetime.date` state (4 bytes) as `YYYY-MM-DD`.
fn date_text(b: &[u8]) -> Option<String> {
    let b: &[u8; 4] = b.try_into().ok()?;
    let year = u16::from(b[0]) << 8 | u16::from(b[1]);
    Some(format!("{year:04}-{:02}-{:02}", b[2] & 0x7f, b[3]))
}

/// A pickled `datetime.datetime` state (10 bytes; the month's high bit is `fold`).
fn datetime_text(b: &[u8], zone: Option<i64>) -> Option<String> {
    if b.len() != 10 {
        return None;
    }
    let mut text = date_text(&b[..4])?;
    text.push('T');
    text.push_str(&clock_text(&b[4..]));
    if let Some(offset) = zone {
        text.push_str(&offset_text(offset));
    }
    Some(text)
}

/// A pickled `datetime.time` state (6 bytes; the hour's high bit is `fold`).
fn time_text(b: &[u8], zone: Option<i64>) -> Option<String> {
    if b.len() != 6 {
        return None;
    }
    let mut text = clock_text(b);
    if let Some(offset) = zone {
        text.push_str(&offset_text(offset));
    }
    Some(text)
}

/// `str(timedelta)`: `[-]D day[s], H:MM:SS[.ffffff]`.
pub(super) fn timedelta_text(days: i64, seconds: i64, micros: i64) -> String {
    let mut text = String::new();
    if days != 0 {
        let plural = if days.abs() == 1 { "" } else { "s" };
        text.push_str(&format!("{days} day{plural}, "));
    }
    text.push_str(&format!(
        "{}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    ));
    if micros != 0 {
        text.push_str(&format!(".{micros:06}"));
    }
    text
}
