//! `shipper` tails log files and ships every line to Amazon Kinesis Data Streams, at least once.
//!
//! Module map (data flows top to bottom):
//! - `cli`, `config`: what the user typed, and the validated settings the core runs on.
//! - `sources::file`: glob discovery, file identity, rotation and truncation, line reading.
//! - `parse`: multiline joining and record formats (raw, json, celery). No I/O.
//! - `partition_key`: partition key templates.
//! - `record`: the unit that flows through the pipeline, with its acknowledgement token.
//! - `batch`: PutRecords limits and linger. `aggregate`, `compress`: KPL aggregation, payload compression.
//! - `shard_map`: partition key → hash key → shard.
//! - `md5_lanes`: MD5 of several aggregates at once (SIMD); the only module with `unsafe`.
//! - `sinks::kinesis`: PutRecords, per-entry results, retry classification, dead letters.
//! - `ack`: ordered acknowledgement per file; `checkpoint`: durable, atomic offsets.
//! - `pipeline`: wires the stages together and drives shutdown.
//! - `consume`: `shipper consume`, Kinesis shards → de-aggregate/decompress → `sinks::firehose`.
//! - `telemetry`: tracing setup and counters.
#![deny(unsafe_code)]

pub mod ack;
pub mod aggregate;
pub mod batch;
pub mod checkpoint;
pub mod cli;
pub mod compress;
pub mod config;
pub mod consume;
pub mod md5_lanes;
pub mod parse;
pub mod partition_key;
pub mod pipeline;

pub mod record;
pub mod shard_map;
pub mod sinks;
pub mod sources;
pub mod spool;
pub mod telemetry;
