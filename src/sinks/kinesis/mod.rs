//! Kinesis sink.
