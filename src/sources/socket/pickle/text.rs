//! Integers and text of pickles: text and binary integers within their digit budgets,
//! protocol 0's raw-unicode-escape, and UTF-8 that Python wrote with lone surrogates.

use super::machine::Machine;
use super::{DecodeError, MAX_INT_DIGITS, MAX_LONG_BYTES, Obj, Slot, invalid, over_budget};

impl Machine<'_> {
    /// Digits of a text `INT` or `LONG`.
    pub(super) fn int_text(&mut self, digits: &[u8]) -> Result<Slot, DecodeError> {
        let text = std::str::from_utf8(digits).map_err(|_| invalid("bad integer"))?;
        let text = text.trim();
        let (negative, unsigned) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("bad integer"));
        }
        if unsigned.len() > MAX_INT_DIGITS {
            return Err(over_budget("integer too long"));
        }
        if let Ok(n) = text.parse::<i64>() {
            return Ok(Slot::Int(n));
        }
        let significant = unsigned.trim_start_matches('0');
        let mut big = String::with_capacity(significant.len() + 1);
        if negative {
            big.push('-');
        }
        big.push_str(significant);
        Ok(self.alloc(Obj::BigInt(big)))
    }

    /// A little-endian two's complement integer (`LONG1`, `LONG4`).
    pub(super) fn long_bytes(&mut self, bytes: &[u8]) -> Result<Slot, DecodeError> {
        if bytes.len() > MAX_LONG_BYTES {
            return Err(over_budget("integer too long"));
        }
        let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
        if bytes.len() <= 16 {
            let mut array = [if negative { 0xff } else { 0 }; 16];
            array[..bytes.len()].copy_from_slice(bytes);
            let n = i128::from_le_bytes(array);
            return Ok(match i64::try_from(n) {
                Ok(n) => Slot::Int(n),
                Err(_) => self.alloc(Obj::BigInt(n.to_string())),
            });
        }
        // Magnitude of the two's complement value, as 32-bit limbs, then decimal.
        let mut magnitude: Vec<u8> = bytes.to_vec();
        if negative {
            let mut carry = true;
            for b in &mut magnitude {
                *b = !*b;
                if carry {
                    let (sum, overflow) = b.overflowing_add(1);
                    *b = sum;
                    carry = overflow;
                }
            }
        }
        let mut limbs: Vec<u32> = magnitude
            .chunks(4)
            .map(|c| {
                let mut array = [0u8; 4];
                array[..c.len()].copy_from_slice(c);
                u32::from_le_bytes(array)
            })
            .collect();
        Ok(self.alloc(Obj::BigInt(limbs_to_decimal(&mut limbs, negative))))
    }

    /// Protocol 0 text: latin-1 bytes with `\uXXXX` and `\UXXXXXXXX` escapes.
    pub(super) fn raw_unicode_escape(&mut self, line: &[u8]) -> String {
        let mut text = String::with_capacity(line.len());
        let mut i = 0;
        while i < line.len() {
            let escape = match line.get(i..i + 2) {
                Some(b"\\u") => Some(4),
                Some(b"\\U") => Some(8),
                _ => None,
            };
            let code = escape.and_then(|n| {
                let hex = std::str::from_utf8(line.get(i + 2..i + 2 + n)?).ok()?;
                u32::from_str_radix(hex, 16).ok().map(|c| (c, n))
            });
            match code {
                Some((c, n)) => {
                    text.push(char::from_u32(c).unwrap_or_else(|| {
                        self.lossy_text = true;
                        char::REPLACEMENT_CHARACTER
                    }));
                    i += 2 + n;
                }
                None => {
                    text.push(char::from(line[i]));
                    i += 1;
                }
            }
        }
        text
    }
}

/// UTF-8 with invalid sequences replaced by U+FFFD; a surrogate that Python wrote with
/// `surrogatepass` (`ED A0..BF xx`) becomes one U+FFFD, not three.
pub(crate) fn lossy_utf8(mut bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() + 2);
    loop {
        match std::str::from_utf8(bytes) {
            Ok(valid) => {
                text.push_str(valid);
                return text;
            }
            Err(error) => {
                let (valid, rest) = bytes.split_at(error.valid_up_to());
                text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                text.push(char::REPLACEMENT_CHARACTER);
                let skip = match rest {
                    [0xed, 0xa0..=0xbf, 0x80..=0xbf, ..] => 3,
                    _ => error.error_len().unwrap_or(rest.len()).max(1),
                };
                bytes = &rest[skip.min(rest.len())..];
            }
        }
    }
}

/// Decimal text of a magnitude given as little-endian 32-bit limbs (consumed).
fn limbs_to_decimal(limbs: &mut Vec<u32>, negative: bool) -> String {
    const CHUNK: u64 = 1_000_000_000;
    let mut chunks = Vec::new();
    while limbs.last() == Some(&0) {
        limbs.pop();
    }
    while !limbs.is_empty() {
        let mut remainder = 0u64;
        for limb in limbs.iter_mut().rev() {
            let current = (remainder << 32) | u64::from(*limb);
            *limb = (current / CHUNK) as u32;
            remainder = current % CHUNK;
        }
        chunks.push(remainder as u32);
        while limbs.last() == Some(&0) {
            limbs.pop();
        }
    }
    let mut text = String::new();
    if negative {
        text.push('-');
    }
    match chunks.split_last() {
        None => text.push('0'),
        Some((most, rest)) => {
            text.push_str(&most.to_string());
            for chunk in rest.iter().rev() {
                text.push_str(&format!("{chunk:09}"));
            }
        }
    }
    text
}
