//! The decoders of the socket input: bytes from a stream connection or a datagram → records.
//! Pure code, no I/O: the listeners feed bytes in and take [`framing::Decoded`] records out.
//!
//! - [`framing`]: where records begin and end (`auto`, `python`, `syslog`, `lines`), bounded
//!   buffers, errors and warnings with stable kinds.
//! - [`pickle`]: the pickles of Python's `SocketHandler`/`DatagramHandler`, decoded as data with
//!   bounded work; nothing is executed.
//! - [`envelope`]: a LogRecord dict → the JSON envelope (the celery envelope's keys and more).
//! - [`syslog`]: RFC 5424, RFC 3164 and Python's `SysLogHandler` → the same kind of envelope.

pub mod envelope;
pub mod framing;
pub mod pickle;
pub mod syslog;

#[cfg(test)]
mod tests;
