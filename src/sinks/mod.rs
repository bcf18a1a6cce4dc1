//! Where records go: Kinesis, or standard output for a dry run.

pub mod kinesis;
pub mod stdout;
