//! PLACEHOLDER until the decoders land.
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Framing {
    #[default]
    Auto,
    Python,
    Syslog,
    Lines,
}

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
            other => Err(FramingError(other.into())),
        }
    }
}

pub struct Limits {
    pub max_frame_bytes: usize,
}

pub enum Decoded {
    Envelope {
        json: Vec<u8>,
        warning: Option<&'static str>,
    },
    Line(Vec<u8>),
}

#[derive(Debug)]
pub struct DecodeError {
    kind: &'static str,
}

impl DecodeError {
    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind)
    }
}

pub struct StreamDecoder {
    held: Vec<u8>,
}

impl StreamDecoder {
    pub fn new(_framing: Framing, _limits: Limits) -> Self {
        StreamDecoder { held: Vec::new() }
    }
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Result<Decoded, DecodeError>>) {
        self.held.extend_from_slice(bytes);
        while let Some(i) = self.held.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.held.drain(..=i).collect();
            out.push(Ok(Decoded::Line(line[..i].to_vec())));
        }
    }
    pub fn flush_idle(&mut self, out: &mut Vec<Result<Decoded, DecodeError>>) {
        if !self.held.is_empty() {
            out.push(Ok(Decoded::Line(std::mem::take(&mut self.held))));
        }
    }
    pub fn finish(&mut self, out: &mut Vec<Result<Decoded, DecodeError>>) {
        self.flush_idle(out);
    }
}

pub fn decode_datagram(
    _framing: Framing,
    datagram: &[u8],
    _limits: &Limits,
) -> Result<Decoded, DecodeError> {
    if datagram.is_empty() {
        return Err(DecodeError { kind: "empty" });
    }
    Ok(Decoded::Line(datagram.to_vec()))
}
