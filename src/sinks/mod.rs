//! Where records go: Kinesis, Firehose, or standard output for a dry run.
//!
//! `error` (classifying AWS error codes), `retry` (the backoff policy) and `dead_letter` (the
//! append-only file of refused records) are shared by the Kinesis and Firehose sinks.

pub mod dead_letter;
pub mod error;
pub mod firehose;
pub mod kinesis;
pub mod retry;
pub mod stdout;
