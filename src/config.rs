//! Settings: the config file's serde structs, merged with the command line, validated into
//! [`Config`], the only form the core sees.
//!
//! Precedence, highest first: command-line flag, `SHIPPER_*` environment variable (clap reads both),
//! the input's own table in the config file, the file's top level, the built-in default.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::batch::{self, Limits};
use crate::cli::Options;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/shipper";
pub const DEFAULT_LINGER: Duration = Duration::from_millis(200);
/// Below Kubernetes' default termination grace period of 30 s, so a drain finishes before SIGKILL.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(25);
pub const DEFAULT_CONCURRENCY: usize = 4;
/// Requests of up to 1 MiB, below the 5 MiB PutRecords allows: each request in flight is held
/// about three times over (the records kept for retries, the SDK's copy, its base64 JSON body), so
/// four 5 MiB requests alone would take 60 MiB. Larger requests do not ship faster: at 1 MiB the
/// per-request cost (signing, HTTP) is already a small share of the bytes' own.
pub const DEFAULT_BATCH_BYTES: usize = 1024 * 1024;
/// An aggregate of up to 64 KiB (before compression), close to the KPL's 50 KiB: hundreds of log
/// lines per Kinesis record, far past what lifts the 1,000 records/s per shard cap; small enough
/// that a shard's 1 MiB/s is shared by many records a second (smooth pacing, short waits) and that
/// a consumer de-aggregating it holds little in memory.
pub const DEFAULT_AGGREGATE_MAX_BYTES: usize = 64 * 1024;
/// With `--compress`, an aggregate of up to 512 KiB before compression. Compression is for streams
/// whose shards' 1 MiB/s is the limit, and a compressor finds more to share in a larger aggregate:
/// on Celery-like lines zstd packs a 512 KiB aggregate 7.6x, a 64 KiB one 6.4x. Compressed it is
/// still a fraction of the 1 MiB record limit and of a shard's second; a consumer holds 512 KiB per
/// record while it de-aggregates; `--linger` still bounds how long a line waits.
pub const DEFAULT_COMPRESSED_AGGREGATE_MAX_BYTES: usize = 512 * 1024;
pub use crate::sources::file::{
    DEFAULT_MAX_HELD_DELETED_BYTES, DEFAULT_MAX_HELD_DELETED_FOR, DEFAULT_MAX_OPEN_FILES,
};
/// Acknowledged progress reaches the checkpoint file this soon: a `kill -9` resends at most about
/// this much of full-speed sending. A write (temp file, fsync, rename) costs about a millisecond,
/// so ten a second is a small share even on slow disks; an idle shipper writes nothing.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);
/// Below this, fsyncs would cost more than the duplicates they save.
pub const MIN_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(10);
/// Socket files may be written by the owner and the group (the worker's containers run with a
/// shared group, or as the same user), no one else.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
pub const DEFAULT_SOCKET_MAX_CONNECTIONS: usize = 1024;
/// A socket's spool holds up to 256 MiB: at 200-byte records, over a million records, or minutes
/// of a busy worker's logs while Kinesis is out.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Room for a few segments of the smallest size.
pub const MIN_SPOOL_MAX_BYTES: u64 = 1024 * 1024;
/// A power loss can cost the records spooled in the last 100 ms; a sync costs about a millisecond.
pub const DEFAULT_SPOOL_SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// Room kept below the record limit for compression framing around an aggregate.
pub const AGGREGATE_COMPRESSION_SLACK: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting {name}: {message}")]
    Invalid { name: &'static str, message: String },
    #[error("missing setting {0}")]
    Missing(&'static str),
}

fn invalid(name: &'static str, message: impl fmt::Display) -> Error {
    Error::Invalid {
        name,
        message: message.to_string(),
    }
}

/// Where to start a file that has no checkpoint and exists at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    Beginning,
    End,
}

impl fmt::Display for ReadFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReadFrom::Beginning => "beginning",
            ReadFrom::End => "end",
        })
    }
}

/// What to do with a line longer than a record can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongLinePolicy {
    /// Ship it in several records, each with a part of the line.
    Split,
    /// Ship the first part only.
    Truncate,
}

impl fmt::Display for LongLinePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LongLinePolicy::Split => "split",
            LongLinePolicy::Truncate => "truncate",
        })
    }
}

/// The config file, as written. Durations carry their unit in the key name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub stream: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub read_from: Option<String>,
    pub format: Option<String>,
    pub multiline: Option<String>,
    pub partition_key: Option<String>,
    pub timezone: Option<String>,
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    pub linger_ms: Option<u64>,
    pub max_batch_records: Option<usize>,
    pub max_batch_bytes: Option<usize>,
    pub max_record_bytes: Option<usize>,
    pub long_lines: Option<String>,
    pub concurrency: Option<usize>,
    pub grace_period_ms: Option<u64>,
    pub log_format: Option<String>,
    pub metrics_addr: Option<String>,
    pub compress: Option<String>,
    #[serde(default)]
    pub aggregate: bool,
    pub aggregate_max_bytes: Option<usize>,
    pub rate_limit: Option<bool>,
    pub cbor: Option<bool>,
    pub max_open_files: Option<usize>,
    pub max_held_deleted_for_ms: Option<u64>,
    pub max_held_deleted_bytes: Option<u64>,
    pub checkpoint_interval_ms: Option<u64>,
    #[serde(default)]
    pub socket_allow_remote: bool,
    pub socket_mode: Option<String>,
    pub socket_max_connections: Option<usize>,
    pub spool_max_bytes: Option<u64>,
    pub spool_sync_interval_ms: Option<u64>,
    /// File inputs, each with its own paths and optionally its own format, multiline and key.
    #[serde(default, rename = "input")]
    pub inputs: Vec<FileInput>,
    /// With this table, `shipper run` runs the consumer (`shipper consume`) instead.
    pub consume: Option<crate::consume::settings::ConsumeFile>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileInput {
    #[serde(default)]
    pub paths: Vec<String>,
    /// A socket to listen on instead of paths (`unix:///run/shipper/log.sock`, ...).
    pub socket: Option<String>,
    pub format: Option<String>,
    pub multiline: Option<String>,
    pub partition_key: Option<String>,
    pub read_from: Option<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|error| Error::Parse {
            path: path.to_path_buf(),
            message: error.to_string(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// One validated input: which files, and how their lines become records.
#[derive(Debug, Clone, Serialize)]
pub struct Input {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// A socket input (`--socket`) instead of files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    #[serde(serialize_with = "display")]
    pub read_from: ReadFrom,
    pub format: String,
    pub multiline: String,
    pub partition_key: String,
}

impl Input {
    /// Parse the format, multiline rule and key template once, so a mistake is a config error.
    fn check(&self) -> Result<(), Error> {
        self.format
            .parse::<crate::parse::Format>()
            .map_err(|error| invalid("format", error))?;
        self.multiline
            .parse::<crate::parse::multiline::Multiline>()
            .map_err(|error| invalid("multiline", error))?;
        crate::partition_key::Template::parse(&self.partition_key)
            .map_err(|error| invalid("partition_key", error))?;
        Ok(())
    }
}

/// Validated settings.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub stream: String,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub data_dir: PathBuf,
    pub inputs: Vec<Input>,
    pub timezone: Option<String>,
    pub fields: BTreeMap<String, String>,
    pub limits: Limits,
    #[serde(serialize_with = "display")]
    pub long_lines: LongLinePolicy,
    #[serde(serialize_with = "humantime_ser")]
    pub linger: Duration,
    pub concurrency: usize,
    #[serde(serialize_with = "humantime_ser")]
    pub grace_period: Duration,
    pub dry_run: bool,
    pub log_format: LogFormat,
    pub metrics_addr: Option<std::net::SocketAddr>,
    #[serde(serialize_with = "display")]
    pub compress: crate::compress::Compression,
    pub aggregate: bool,
    pub aggregate_max_bytes: usize,
    pub rate_limit: bool,
    /// PutRecords in CBOR when the endpoint accepts it (else JSON).
    pub cbor: bool,
    pub max_open_files: usize,
    #[serde(serialize_with = "humantime_ser")]
    pub max_held_deleted_for: Duration,
    pub max_held_deleted_bytes: u64,
    #[serde(serialize_with = "humantime_ser")]
    pub checkpoint_interval: Duration,
    pub socket_allow_remote: bool,
    #[serde(serialize_with = "octal")]
    pub socket_mode: u32,
    pub socket_max_connections: usize,
    pub spool_max_bytes: u64,
    #[serde(serialize_with = "humantime_ser")]
    pub spool_sync_interval: Duration,
}

fn octal<S: serde::Serializer>(value: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{value:04o}"))
}

fn display<T: fmt::Display, S: serde::Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

fn humantime_ser<S: serde::Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*value))
}

fn parse_duration(name: &'static str, text: &str) -> Result<Duration, Error> {
    humantime::parse_duration(text).map_err(|error| invalid(name, format!("{text:?}: {error}")))
}

fn parse_read_from(text: &str) -> Result<ReadFrom, Error> {
    match text {
        "beginning" => Ok(ReadFrom::Beginning),
        "end" => Ok(ReadFrom::End),
        other => Err(invalid(
            "read_from",
            format!("{other:?}: expected beginning or end"),
        )),
    }
}

impl Config {
    /// Whether any input is a socket. A socket input decodes what it receives on the async
    /// runtime (a file input reads and builds records on a thread of its own).
    pub fn has_socket_inputs(&self) -> bool {
        self.inputs.iter().any(|input| input.socket.is_some())
    }

    /// Build the settings for `shipper tail PATHS` (no config file).
    pub fn from_tail(paths: Vec<String>, options: &Options) -> Result<Config, Error> {
        let inputs = if paths.is_empty() {
            Vec::new()
        } else {
            vec![FileInput {
                paths,
                ..FileInput::default()
            }]
        };
        let file = FileConfig {
            inputs,
            ..FileConfig::default()
        };
        Config::merge(file, options)
    }

    /// Merge a config file with the command line (which wins) and validate the result.
    pub fn merge(file: FileConfig, options: &Options) -> Result<Config, Error> {
        let stream = options
            .stream
            .clone()
            .or(file.stream)
            .ok_or(Error::Missing(
                "stream: name it with --stream NAME, the SHIPPER_STREAM environment variable, \
                 or stream = \"NAME\" in the config file",
            ))?;
        if stream.is_empty() || stream.len() > 128 {
            return Err(invalid("stream", "a stream name has 1 to 128 characters"));
        }
        let read_from = options
            .read_from
            .clone()
            .or(file.read_from)
            .unwrap_or("beginning".into());
        let format = options
            .format
            .clone()
            .or(file.format)
            .unwrap_or("raw".into());
        let multiline = options.multiline.clone().or(file.multiline);
        let partition_key = options
            .partition_key
            .clone()
            .or(file.partition_key)
            .unwrap_or(crate::partition_key::DEFAULT_TEMPLATE.into());
        let mut file_inputs = file.inputs;
        file_inputs.extend(options.sockets.iter().map(|url| FileInput {
            socket: Some(url.clone()),
            ..FileInput::default()
        }));
        if file_inputs.is_empty() {
            return Err(Error::Missing(
                "input (paths, --socket, or an [[input]] table with paths or a socket)",
            ));
        }
        let allow_remote = options.socket_allow_remote || file.socket_allow_remote;
        let mut inputs = Vec::new();
        for input in file_inputs {
            match (&input.socket, input.paths.is_empty()) {
                (None, true) => {
                    return Err(invalid(
                        "input.paths",
                        "an input needs at least one path or glob, or a socket",
                    ));
                }
                (Some(_), false) => {
                    return Err(invalid(
                        "input",
                        "an input has either paths or a socket, not both",
                    ));
                }
                (Some(url), true) => {
                    let parsed: crate::sources::socket::url::SocketUrl =
                        url.parse().map_err(|error| invalid("socket", error))?;
                    parsed
                        .check_remote(allow_remote)
                        .map_err(|error| invalid("socket", error))?;
                }
                (None, false) => {}
            }
            let pick = |flag: &Option<String>, own: Option<String>, top: &String| {
                flag.clone().or(own).unwrap_or_else(|| top.clone())
            };
            let format = pick(&options.format, input.format, &format);
            // Celery records continue on every line without the Celery prefix, so joining is the
            // natural default there; other formats default to one record per line.
            let default_multiline = if format == "celery" { "celery" } else { "none" };
            let multiline = options
                .multiline
                .clone()
                .or(input.multiline)
                .or(multiline.clone())
                .unwrap_or(default_multiline.into());
            let input = Input {
                paths: input.paths,
                socket: input.socket,
                read_from: parse_read_from(&pick(&options.read_from, input.read_from, &read_from))?,
                format,
                multiline,
                partition_key: pick(&options.partition_key, input.partition_key, &partition_key),
            };
            input.check()?;
            inputs.push(input);
        }
        if let Some(zone) = options.timezone.as_deref().or(file.timezone.as_deref()) {
            zone.parse::<crate::parse::TimeZone>()
                .map_err(|error| invalid("timezone", error))?;
        }
        let mut fields = file.fields;
        for field in &options.fields {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| invalid("field", format!("{field:?}: expected KEY=VALUE")))?;
            if crate::parse::enrich::RECORD_KEYS.contains(&key) {
                return Err(invalid(
                    "field",
                    format!("{key:?} is set per record and cannot be a static field"),
                ));
            }
            fields.insert(key.to_string(), value.to_string());
        }
        let linger = match (&options.linger, file.linger_ms) {
            (Some(text), _) => parse_duration("linger", text)?,
            (None, Some(ms)) => Duration::from_millis(ms),
            (None, None) => DEFAULT_LINGER,
        };
        let grace_period = match (&options.grace_period, file.grace_period_ms) {
            (Some(text), _) => parse_duration("grace_period", text)?,
            (None, Some(ms)) => Duration::from_millis(ms),
            (None, None) => DEFAULT_GRACE_PERIOD,
        };
        let max_record_bytes = options
            .max_record_bytes
            .or(file.max_record_bytes)
            .unwrap_or(batch::MAX_BYTES_PER_RECORD);
        let limits = Limits {
            max_records: options
                .max_batch_records
                .or(file.max_batch_records)
                .unwrap_or(batch::MAX_RECORDS_PER_REQUEST),
            max_bytes: options
                .max_batch_bytes
                .or(file.max_batch_bytes)
                .unwrap_or(DEFAULT_BATCH_BYTES.max(max_record_bytes)),
            max_record_bytes,
        };
        limits
            .validate()
            .map_err(|message| invalid("limits", message))?;
        let long_lines = match options.long_lines.clone().or(file.long_lines).as_deref() {
            None | Some("split") => LongLinePolicy::Split,
            Some("truncate") => LongLinePolicy::Truncate,
            Some(other) => {
                return Err(invalid(
                    "long_lines",
                    format!("{other:?}: expected split or truncate"),
                ));
            }
        };
        let concurrency = options
            .concurrency
            .or(file.concurrency)
            .unwrap_or(DEFAULT_CONCURRENCY);
        if !(1..=64).contains(&concurrency) {
            return Err(invalid(
                "concurrency",
                format!("{concurrency}: expected 1 to 64"),
            ));
        }
        let log_format = match options.log_format.clone().or(file.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(invalid(
                    "log_format",
                    format!("{other:?}: expected text or json"),
                ));
            }
        };
        let metrics_addr = match options.metrics_addr.clone().or(file.metrics_addr) {
            None => None,
            Some(text) => Some(
                text.parse()
                    .map_err(|error| invalid("metrics_addr", format!("{text:?}: {error}")))?,
            ),
        };
        let compress = match options.compress.clone().or(file.compress) {
            None => crate::compress::Compression::None,
            Some(text) => text
                .parse()
                .map_err(|error| invalid("compress", format!("{text:?}: {error}")))?,
        };
        let aggregate = options.aggregate || file.aggregate;
        let aggregate_ceiling = limits.max_data_bytes() - AGGREGATE_COMPRESSION_SLACK;
        // The default shrinks to fit a lowered record limit; a value asked for must fit as is.
        let aggregate_max_bytes = options
            .aggregate_max_bytes
            .or(file.aggregate_max_bytes)
            .unwrap_or(
                match compress {
                    crate::compress::Compression::None => DEFAULT_AGGREGATE_MAX_BYTES,
                    _ => DEFAULT_COMPRESSED_AGGREGATE_MAX_BYTES,
                }
                .min(aggregate_ceiling),
            );
        if !(1024..=aggregate_ceiling).contains(&aggregate_max_bytes) {
            return Err(invalid(
                "aggregate_max_bytes",
                format!(
                    "{aggregate_max_bytes} is not in 1024..={aggregate_ceiling} (the record limit less room for the key)"
                ),
            ));
        }
        let rate_limit = !options.no_rate_limit && file.rate_limit.unwrap_or(true);
        let cbor = !options.no_cbor && file.cbor.unwrap_or(true);
        let max_open_files = options
            .max_open_files
            .or(file.max_open_files)
            .unwrap_or(DEFAULT_MAX_OPEN_FILES);
        if max_open_files == 0 {
            return Err(invalid("max_open_files", "0: expected at least 1"));
        }
        let max_held_deleted_for =
            match (&options.max_held_deleted_for, file.max_held_deleted_for_ms) {
                (Some(text), _) => parse_duration("max_held_deleted_for", text)?,
                (None, Some(ms)) => Duration::from_millis(ms),
                (None, None) => DEFAULT_MAX_HELD_DELETED_FOR,
            };
        let max_held_deleted_bytes = options
            .max_held_deleted_bytes
            .or(file.max_held_deleted_bytes)
            .unwrap_or(DEFAULT_MAX_HELD_DELETED_BYTES);
        let checkpoint_interval = match (&options.checkpoint_interval, file.checkpoint_interval_ms)
        {
            (Some(text), _) => parse_duration("checkpoint_interval", text)?,
            (None, Some(ms)) => Duration::from_millis(ms),
            (None, None) => DEFAULT_CHECKPOINT_INTERVAL,
        };
        if checkpoint_interval < MIN_CHECKPOINT_INTERVAL {
            return Err(invalid(
                "checkpoint_interval",
                format!("{checkpoint_interval:?}: expected at least {MIN_CHECKPOINT_INTERVAL:?}"),
            ));
        }
        let socket_mode = match options.socket_mode.clone().or(file.socket_mode) {
            None => DEFAULT_SOCKET_MODE,
            Some(text) => u32::from_str_radix(text.trim_start_matches("0o"), 8)
                .ok()
                .filter(|mode| *mode <= 0o777)
                .ok_or_else(|| {
                    invalid(
                        "socket_mode",
                        format!("{text:?}: expected an octal mode such as 0660"),
                    )
                })?,
        };
        let socket_max_connections = options
            .socket_max_connections
            .or(file.socket_max_connections)
            .unwrap_or(DEFAULT_SOCKET_MAX_CONNECTIONS);
        if socket_max_connections == 0 {
            return Err(invalid("socket_max_connections", "expected at least 1"));
        }
        let spool_max_bytes = options
            .spool_max_bytes
            .or(file.spool_max_bytes)
            .unwrap_or(DEFAULT_SPOOL_MAX_BYTES);
        if spool_max_bytes < MIN_SPOOL_MAX_BYTES {
            return Err(invalid(
                "spool_max_bytes",
                format!("{spool_max_bytes}: expected at least {MIN_SPOOL_MAX_BYTES}"),
            ));
        }
        let spool_sync_interval = match (&options.spool_sync_interval, file.spool_sync_interval_ms)
        {
            (Some(text), _) => parse_duration("spool_sync_interval", text)?,
            (None, Some(ms)) => Duration::from_millis(ms),
            (None, None) => DEFAULT_SPOOL_SYNC_INTERVAL,
        };
        if spool_sync_interval.is_zero() {
            return Err(invalid("spool_sync_interval", "expected more than 0"));
        }
        Ok(Config {
            socket_allow_remote: allow_remote,
            socket_mode,
            socket_max_connections,
            spool_max_bytes,
            spool_sync_interval,
            max_open_files,
            max_held_deleted_for,
            max_held_deleted_bytes,
            checkpoint_interval,
            aggregate,
            aggregate_max_bytes,
            rate_limit,
            cbor,
            compress,
            metrics_addr,
            stream,
            region: options.region.clone().or(file.region),
            endpoint_url: options.endpoint_url.clone().or(file.endpoint_url),
            data_dir: options
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or(DEFAULT_DATA_DIR.into()),
            inputs,
            timezone: options.timezone.clone().or(file.timezone),
            fields,
            limits,
            long_lines,
            linger,
            concurrency,
            grace_period,
            dry_run: options.stdout,
            log_format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            stream: Some("s".into()),
            ..Options::default()
        }
    }

    #[test]
    fn tail_defaults() {
        let config = Config::from_tail(vec!["a.log".into()], &options()).unwrap();
        assert_eq!(config.stream, "s");
        assert_eq!(config.linger, DEFAULT_LINGER);
        assert_eq!(config.grace_period, DEFAULT_GRACE_PERIOD);
        assert_eq!(config.limits.max_records, 500);
        assert_eq!(config.inputs[0].format, "raw");
        assert_eq!(config.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn socket_inputs_are_told_from_file_inputs() {
        let files = Config::from_tail(vec!["a.log".into()], &options()).unwrap();
        assert!(!files.has_socket_inputs());
        let with_socket = Options {
            sockets: vec!["tcp://127.0.0.1:5140".into()],
            ..options()
        };
        let both = Config::from_tail(vec!["a.log".into()], &with_socket).unwrap();
        assert!(both.has_socket_inputs());
    }

    #[test]
    fn stream_is_required() {
        let error = Config::from_tail(vec!["a.log".into()], &Options::default()).unwrap_err();
        assert!(error.to_string().contains("stream"), "{error}");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases: Vec<(Options, &str)> = vec![
            (
                Options {
                    linger: Some("soon".into()),
                    ..options()
                },
                "linger",
            ),
            (
                Options {
                    read_from: Some("middle".into()),
                    ..options()
                },
                "read_from",
            ),
            (
                Options {
                    max_batch_records: Some(501),
                    ..options()
                },
                "limits",
            ),
            (
                Options {
                    max_batch_bytes: Some(10),
                    ..options()
                },
                "limits",
            ),
            (
                Options {
                    concurrency: Some(0),
                    ..options()
                },
                "concurrency",
            ),
            (
                Options {
                    fields: vec!["novalue".into()],
                    ..options()
                },
                "field",
            ),
            (
                Options {
                    aggregate_max_bytes: Some(10),
                    ..options()
                },
                "aggregate",
            ),
            (
                Options {
                    compress: Some("lz4".into()),
                    ..options()
                },
                "compress",
            ),
        ];
        for (options, name) in cases {
            let error = Config::from_tail(vec!["a.log".into()], &options).unwrap_err();
            assert!(error.to_string().contains(name), "{name}: {error}");
        }
    }

    #[test]
    fn aggregate_default_depends_on_compression_and_fits_the_record_limit() {
        let max = |options: Options| {
            Config::from_tail(vec!["a.log".into()], &options)
                .unwrap()
                .aggregate_max_bytes
        };
        assert_eq!(max(options()), DEFAULT_AGGREGATE_MAX_BYTES);
        let zstd = Options {
            compress: Some("zstd".into()),
            ..options()
        };
        assert_eq!(max(zstd.clone()), DEFAULT_COMPRESSED_AGGREGATE_MAX_BYTES);
        let small_records = Options {
            max_record_bytes: Some(256 * 1024),
            ..zstd.clone()
        };
        assert_eq!(
            max(small_records.clone()),
            256 * 1024 - crate::batch::MAX_PARTITION_KEY_BYTES - AGGREGATE_COMPRESSION_SLACK
        );
        let asked = Options {
            aggregate_max_bytes: Some(300 * 1024),
            ..small_records
        };
        assert!(Config::from_tail(vec!["a.log".into()], &asked).is_err());
        let asked = Options {
            aggregate_max_bytes: Some(8192),
            ..zstd
        };
        assert_eq!(max(asked), 8192);
    }

    #[test]
    fn flag_beats_input_beats_top_level() {
        let file: FileConfig = toml::from_str(
            r#"
            stream = "from-file"
            format = "json"
            linger_ms = 50
            [[input]]
            paths = ["a.log"]
            [[input]]
            paths = ["b.log"]
            format = "celery"
            "#,
        )
        .unwrap();
        let config = Config::merge(file, &Options::default()).unwrap();
        assert_eq!(config.stream, "from-file");
        assert_eq!(config.linger, Duration::from_millis(50));
        assert_eq!(config.inputs[0].format, "json");
        assert_eq!(config.inputs[1].format, "celery");

        let file: FileConfig =
            toml::from_str("stream = \"f\"\n[[input]]\npaths = [\"b.log\"]\nformat = \"celery\"\n")
                .unwrap();
        let flags = Options {
            format: Some("raw".into()),
            stream: Some("flag".into()),
            ..Options::default()
        };
        let config = Config::merge(file, &flags).unwrap();
        assert_eq!(config.stream, "flag");
        assert_eq!(config.inputs[0].format, "raw");
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shipper.toml");
        std::fs::write(&path, "stream = \"s\"\nlingr_ms = 5\n").unwrap();
        let error = FileConfig::load(&path).unwrap_err().to_string();
        assert!(error.contains("lingr_ms"), "{error}");
        assert!(error.contains("line 2"), "{error}");
    }

    #[test]
    fn sockets_are_inputs_from_flags_or_the_file() {
        let flags = Options {
            sockets: vec!["unix:///run/shipper/log.sock".into()],
            ..options()
        };
        let config = Config::from_tail(Vec::new(), &flags).unwrap();
        assert_eq!(config.inputs.len(), 1);
        assert_eq!(
            config.inputs[0].socket.as_deref(),
            Some("unix:///run/shipper/log.sock")
        );
        assert_eq!(config.socket_mode, 0o660);
        assert_eq!(config.spool_max_bytes, DEFAULT_SPOOL_MAX_BYTES);

        let file: FileConfig = toml::from_str(
            "stream = \"s\"\nsocket_mode = \"0600\"\nspool_sync_interval_ms = 50\n\
             [[input]]\nsocket = \"udp://127.0.0.1:5140?framing=syslog\"\n\
             [[input]]\npaths = [\"a.log\"]\n",
        )
        .unwrap();
        let config = Config::merge(file, &Options::default()).unwrap();
        assert_eq!(config.inputs.len(), 2);
        assert_eq!(config.socket_mode, 0o600);
        assert_eq!(config.spool_sync_interval, Duration::from_millis(50));
    }

    #[test]
    fn socket_mistakes_are_configuration_errors() {
        let merge = |toml: &str, flags: &Options| {
            let file: FileConfig = toml::from_str(toml).unwrap();
            Config::merge(file, flags)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let both = merge(
            "stream = \"s\"\n[[input]]\npaths = [\"a\"]\nsocket = \"unix:///x\"\n",
            &options(),
        );
        assert!(both.unwrap_err().contains("not both"));
        let remote = merge(
            "stream = \"s\"\n[[input]]\nsocket = \"tcp://0.0.0.0:5140\"\n",
            &options(),
        );
        assert!(remote.unwrap_err().contains("--socket-allow-remote"));
        let allowed = Options {
            socket_allow_remote: true,
            ..options()
        };
        assert!(
            merge(
                "stream = \"s\"\n[[input]]\nsocket = \"tcp://0.0.0.0:5140\"\n",
                &allowed
            )
            .is_ok()
        );
        let nothing = merge("stream = \"s\"\n", &options());
        assert!(nothing.unwrap_err().contains("--socket"));
        for (flag, wanted) in [
            (
                Options {
                    socket_mode: Some("999".into()),
                    ..options()
                },
                "socket_mode",
            ),
            (
                Options {
                    spool_max_bytes: Some(1000),
                    ..options()
                },
                "spool_max_bytes",
            ),
            (
                Options {
                    sockets: vec!["http://x".into()],
                    ..options()
                },
                "unknown scheme",
            ),
        ] {
            let error = Config::from_tail(vec!["a.log".into()], &flag)
                .unwrap_err()
                .to_string();
            assert!(error.contains(wanted), "{error}");
        }
    }
}
