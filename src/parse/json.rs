//! JSON without a tree: writing strings and numbers straight into the output buffer, and checking
//! in one streaming pass that a record is a JSON object (noting the top-level keys we care about).
//!
//! Keeping the user's object as bytes and splicing enrichment before its closing brace ships it
//! exactly as written (no key reordering, no number reformatting), and costs one validation pass.

use std::fmt::{self, Write as _};

use serde::Deserializer as _;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Appends `s` as a JSON string literal, quotes included.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut run_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[run_start..i]);
        if short.is_empty() {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(short);
        }
        run_start = i + 1;
    }
    out.extend_from_slice(&bytes[run_start..]);
    out.push(b'"');
}

/// Appends `n` in decimal.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends `n` in lower-case hex, without leading zeros.
pub fn push_hex(out: &mut Vec<u8>, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1);
    for shift in (0..digits).rev() {
        out.push(HEX[((n >> (shift * 4)) & 0xf) as usize]);
    }
}

/// Scratch filled by [`scan_object`]; reused from record to record.
#[derive(Debug, Default)]
pub struct Scan {
    /// Per wanted key: its scalar value rendered as text; empty when absent, null or not a scalar
    /// (a partition key treats an empty value as missing anyway).
    pub values: Vec<String>,
    /// Per known key (e.g. enrichment keys): whether the object has it.
    pub known_present: Vec<bool>,
    /// Whether the object has any key at all.
    pub non_empty: bool,
}

impl Scan {
    fn reset(&mut self, wanted: usize, known: usize) {
        self.values.resize_with(wanted, String::new);
        for value in &mut self.values {
            value.clear();
        }
        self.known_present.clear();
        self.known_present.resize(known, false);
        self.non_empty = false;
    }
}

/// Checks that `data` is one JSON object (surrounding whitespace allowed). Records the text of the
/// scalar top-level values under `wanted` keys and which `known` keys are present.
///
/// Takes `&str`: serde_json does not check UTF-8 inside strings it skips, so the caller converts
/// (lossily) first and the payload is always valid UTF-8.
pub fn scan_object(
    data: &str,
    wanted: &[String],
    known: &[String],
    scan: &mut Scan,
) -> Result<(), serde_json::Error> {
    scan.reset(wanted.len(), known.len());
    let mut de = serde_json::Deserializer::from_str(data);
    (&mut de).deserialize_map(TopLevel {
        wanted,
        known,
        scan,
    })?;
    de.end()
}

/// A short reason for a record that is not a JSON object, for its `parse_error` field.
pub fn error_reason(error: &serde_json::Error) -> String {
    match error.classify() {
        serde_json::error::Category::Data => "not a JSON object".to_string(),
        _ => format!("invalid JSON: {error}"),
    }
}

struct TopLevel<'a> {
    wanted: &'a [String],
    known: &'a [String],
    scan: &'a mut Scan,
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let classify = KeyClass {
            wanted: self.wanted,
            known: self.known,
        };
        while let Some((wanted, known)) = map.next_key_seed(classify)? {
            self.scan.non_empty = true;
            if let Some(i) = known {
                self.scan.known_present[i] = true;
            }
            match wanted {
                Some(i) => {
                    let slot = &mut self.scan.values[i];
                    slot.clear();
                    if !map.next_value_seed(CaptureScalar(slot))? {
                        slot.clear();
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Looks a key up in the wanted and known lists without allocating it.
#[derive(Clone, Copy)]
struct KeyClass<'a> {
    wanted: &'a [String],
    known: &'a [String],
}

impl<'de> DeserializeSeed<'de> for KeyClass<'_> {
    type Value = (Option<usize>, Option<usize>);

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyClass<'_> {
    type Value = (Option<usize>, Option<usize>);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok((
            self.wanted.iter().position(|k| k == key),
            self.known.iter().position(|k| k == key),
        ))
    }
}

/// Renders a scalar value as text into the slot; false for null, arrays and objects.
struct CaptureScalar<'a>(&'a mut String);

impl<'de> DeserializeSeed<'de> for CaptureScalar<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CaptureScalar<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
        self.0.push_str(v);
        Ok(true)
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<bool, E> {
        self.0.push_str(if v { "true" } else { "false" });
        Ok(true)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<bool, E> {
        Ok(write!(self.0, "{v}").is_ok())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<bool, E> {
        Ok(write!(self.0, "{v}").is_ok())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<bool, E> {
        Ok(write!(self.0, "{v}").is_ok())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn escaped_strings_round_trip(s in "\\PC*|[\\x00-\\x1f\"\\\\]*") {
            let mut out = Vec::new();
            push_json_str(&mut out, &s);
            let back: String = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(back, s);
        }

        #[test]
        fn numbers_render(n in any::<u64>()) {
            let (mut dec, mut hex) = (Vec::new(), Vec::new());
            push_u64(&mut dec, n);
            push_hex(&mut hex, n);
            prop_assert_eq!(String::from_utf8(dec).unwrap(), n.to_string());
            prop_assert_eq!(String::from_utf8(hex).unwrap(), format!("{n:x}"));
        }
    }

    #[test]
    fn scan_captures_wanted_scalars_and_known_keys() {
        let wanted = vec![
            "user".to_string(),
            "n".to_string(),
            "nested".to_string(),
            "absent".to_string(),
        ];
        let known = vec!["host".to_string(), "id".to_string()];
        let mut scan = Scan::default();
        let data = r#" {"n": 12, "user": "kim \u00e9", "nested": {"a": [1]}, "host": null} "#;
        scan_object(data, &wanted, &known, &mut scan).unwrap();
        let values: Vec<Option<&str>> = scan
            .values
            .iter()
            .map(|v| Some(v.as_str()).filter(|s| !s.is_empty()))
            .collect();
        assert_eq!(values, [Some("kim é"), Some("12"), None, None]);
        assert_eq!(scan.known_present, [true, false]);
        assert!(scan.non_empty);

        for bad in [
            "[1]",
            "\"x\"",
            "{\"a\":1} x",
            "{\"a\":",
            "",
            "{\"a\":1,}",
            "{'a':1}",
        ] {
            assert!(
                scan_object(bad, &wanted, &known, &mut scan).is_err(),
                "{bad:?}"
            );
        }
        let not_object = scan_object("[1]", &wanted, &known, &mut scan).unwrap_err();
        assert_eq!(error_reason(&not_object), "not a JSON object");
    }
}
