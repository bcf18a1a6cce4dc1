//! The dry-run sink (`--stdout`): prints each record as it would be sent, one per line, and
//! acknowledges it. Records that are not UTF-8 text on one line (binary data, or text containing a
//! newline) are printed as `base64:` followed by their bytes in base64, so every record is one line.

use std::io::{self, Write};

use base64::Engine;

use crate::ack;
use crate::batch::Batch;

#[derive(Debug, Default)]
pub struct StdoutSink;

impl StdoutSink {
    pub fn new() -> Self {
        StdoutSink
    }

    pub fn send(&self, batch: Batch) {
        let mut out = Vec::with_capacity(batch.bytes + batch.records.len());
        for record in &batch.records {
            render(&record.data, &mut out);
        }
        let mut stdout = io::stdout().lock();
        // A closed stdout (e.g. piped into `head`) ends the dry run's usefulness, not correctness.
        let _ = stdout.write_all(&out).and_then(|()| stdout.flush());
        ack::ack_all(batch.records.into_iter().flat_map(|record| record.ack));
    }
}

fn render(data: &[u8], out: &mut Vec<u8>) {
    match std::str::from_utf8(data) {
        Ok(text) if !text.contains('\n') => out.extend_from_slice(data),
        _ => {
            out.extend_from_slice(b"base64:");
            out.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(data)
                    .as_bytes(),
            );
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn one_line_per_record() {
        let cases: [(&[u8], &str); 3] = [
            (b"plain line", "plain line\n"),
            (b"two\nlines", "base64:dHdvCmxpbmVz\n"),
            (&[0xff, 0x00], "base64:/wA=\n"),
        ];
        for (data, expected) in cases {
            let mut out = Vec::new();
            render(data, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }
}
