//! The consumer's settings: its command line (`shipper consume`), its `[consume]` table in the
//! config file (`shipper run --config`), and the validated [`Settings`] the consumer runs on.
//! Precedence as for `tail`: flag, `SHIPPER_*` variable, config file, default.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::config::{DEFAULT_DATA_DIR, DEFAULT_GRACE_PERIOD, Error, FileConfig, LogFormat};

/// How long a record's `id` is remembered to drop a resent copy.
pub const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// `shipper consume` options: only what the user typed.
#[derive(Debug, Args, Default, Clone)]
pub struct ConsumeOptions {
    /// Name (or ARN) of the Kinesis data stream to read.
    #[arg(long, env = "SHIPPER_STREAM", value_name = "NAME")]
    pub stream: Option<String>,
    /// Name of the Firehose delivery stream (Direct PUT) to forward to.
    #[arg(long, env = "SHIPPER_DELIVERY_STREAM", value_name = "NAME")]
    pub delivery_stream: Option<String>,
    /// AWS region. Defaults to the standard AWS chain (AWS_REGION, profile, IMDS).
    #[arg(long, env = "SHIPPER_REGION")]
    pub region: Option<String>,
    /// Kinesis endpoint. AWS_ENDPOINT_URL_KINESIS and AWS_ENDPOINT_URL are honoured when unset.
    #[arg(long, env = "SHIPPER_ENDPOINT_URL", value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// Firehose endpoint. AWS_ENDPOINT_URL_FIREHOSE and AWS_ENDPOINT_URL are honoured when unset.
    #[arg(long, env = "SHIPPER_FIREHOSE_ENDPOINT_URL", value_name = "URL")]
    pub firehose_endpoint_url: Option<String>,
    /// Directory for the checkpoints (consume-<stream>.json) and dead letters.
    #[arg(long, env = "SHIPPER_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where a shard without a checkpoint starts: trim-horizon (default, the oldest record kept)
    /// or latest (only records written from now on). Shards created later start at their beginning.
    #[arg(long, env = "SHIPPER_FROM", value_name = "trim-horizon|latest")]
    pub from: Option<String>,
    /// What ends each record in S3: newline (default; Firehose adds no separator) or none.
    #[arg(long, env = "SHIPPER_DELIMITER", value_name = "newline|none")]
    pub delimiter: Option<String>,
    /// Drop a record whose JSON `id` was forwarded within this window (default 15m; 0 turns it off).
    #[arg(long, env = "SHIPPER_DEDUPE_WINDOW", value_name = "DURATION")]
    pub dedupe_window: Option<String>,
    /// Serve /metrics, /healthz and /readyz on this address. Off by default.
    #[arg(long, env = "SHIPPER_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// How long a stop (SIGTERM, SIGINT) may take to forward what was read (default 25s).
    #[arg(long, env = "SHIPPER_GRACE_PERIOD", value_name = "DURATION")]
    pub grace_period: Option<String>,
    /// The shipper's own log format: text (default) or json.
    #[arg(long, env = "SHIPPER_LOG_FORMAT", value_name = "text|json")]
    pub log_format: Option<String>,
    /// DynamoDB table of shard leases and checkpoints (the KCL's schema), shared by every replica
    /// reading the stream. Without it, one replica reads every shard, with checkpoints in the data
    /// dir.
    #[arg(long, env = "SHIPPER_LEASE_TABLE", value_name = "NAME")]
    pub lease_table: Option<String>,
    /// Create the lease table (on-demand billing) when it does not exist.
    #[arg(long, env = "SHIPPER_CREATE_LEASE_TABLE")]
    pub create_lease_table: bool,
    /// This replica's name in the lease table (default: POD_NAME, else the host name).
    #[arg(long, env = "SHIPPER_WORKER_ID", value_name = "NAME")]
    pub worker_id: Option<String>,
    /// A lease whose counter has not moved for this long is taken by another replica (default 10s).
    #[arg(long, env = "SHIPPER_LEASE_FAILOVER", value_name = "DURATION")]
    pub lease_failover: Option<String>,
    /// DynamoDB endpoint. AWS_ENDPOINT_URL_DYNAMODB and AWS_ENDPOINT_URL are honoured when unset.
    #[arg(long, env = "SHIPPER_DYNAMODB_ENDPOINT_URL", value_name = "URL")]
    pub dynamodb_endpoint_url: Option<String>,
}

/// The `[consume]` table of the config file; the stream, region, endpoint, data dir, metrics
/// address, grace period and log format come from the file's top level.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumeFile {
    pub delivery_stream: Option<String>,
    pub firehose_endpoint_url: Option<String>,
    pub from: Option<String>,
    pub delimiter: Option<String>,
    pub dedupe_window_ms: Option<u64>,
    pub lease_table: Option<String>,
    pub create_lease_table: Option<bool>,
    pub worker_id: Option<String>,
    pub lease_failover_ms: Option<u64>,
    pub dynamodb_endpoint_url: Option<String>,
}

/// Where a shard without a checkpoint starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    TrimHorizon,
    Latest,
}

impl fmt::Display for StartFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StartFrom::TrimHorizon => "trim-horizon",
            StartFrom::Latest => "latest",
        })
    }
}

/// What follows each user record in what Firehose delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delimiter {
    /// A newline after each record that does not already end with one; user records are packed
    /// into Firehose records of many lines.
    Newline,
    /// Nothing: one Firehose record per user record, as it was.
    None,
}

impl fmt::Display for Delimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Delimiter::Newline => "newline",
            Delimiter::None => "none",
        })
    }
}

/// Validated consumer settings.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub stream: String,
    pub delivery_stream: String,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub firehose_endpoint_url: Option<String>,
    pub data_dir: PathBuf,
    #[serde(serialize_with = "display")]
    pub from: StartFrom,
    #[serde(serialize_with = "display")]
    pub delimiter: Delimiter,
    #[serde(serialize_with = "humantime_ser")]
    pub dedupe_window: Duration,
    pub metrics_addr: Option<SocketAddr>,
    #[serde(serialize_with = "humantime_ser")]
    pub grace_period: Duration,
    pub log_format: LogFormat,
    /// Shard leases in DynamoDB; none: one replica, checkpoints in the data dir.
    pub leases: Option<LeaseSettings>,
}

/// Where and how a replica shares the stream's shards.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseSettings {
    pub table: String,
    pub create_table: bool,
    pub worker_id: String,
    #[serde(serialize_with = "humantime_ser")]
    pub failover: Duration,
    pub dynamodb_endpoint_url: Option<String>,
}

/// The shortest failover time: renewals go every third of it, and each DynamoDB call needs time.
pub const MIN_LEASE_FAILOVER: Duration = Duration::from_secs(1);

/// The worker id when none is given: the pod's name, else the host name.
fn default_worker_id() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned())
}

fn display<T: fmt::Display, S: serde::Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

fn humantime_ser<S: serde::Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*value))
}

fn invalid(name: &'static str, message: impl fmt::Display) -> Error {
    Error::Invalid {
        name,
        message: message.to_string(),
    }
}

fn duration(name: &'static str, text: &str) -> Result<Duration, Error> {
    humantime::parse_duration(text).map_err(|error| invalid(name, format!("{text:?}: {error}")))
}

impl Settings {
    /// `shipper consume` with flags (and `SHIPPER_*` variables) only.
    pub fn from_options(options: &ConsumeOptions) -> Result<Settings, Error> {
        Settings::merge(options, FileConfig::default(), ConsumeFile::default())
    }

    /// `shipper run --config` with a `[consume]` table: the file, overridden by `options` (the
    /// flags `run` shares with `consume`).
    pub fn from_file(
        mut file: FileConfig,
        run_options: &crate::cli::Options,
    ) -> Result<Settings, Error> {
        let table = file.consume.take().unwrap_or_default();
        let options = ConsumeOptions {
            stream: run_options.stream.clone(),
            region: run_options.region.clone(),
            endpoint_url: run_options.endpoint_url.clone(),
            data_dir: run_options.data_dir.clone(),
            metrics_addr: run_options.metrics_addr.clone(),
            grace_period: run_options.grace_period.clone(),
            log_format: run_options.log_format.clone(),
            ..ConsumeOptions::default()
        };
        Settings::merge(&options, file, table)
    }

    fn merge(
        options: &ConsumeOptions,
        file: FileConfig,
        table: ConsumeFile,
    ) -> Result<Settings, Error> {
        let stream = options
            .stream
            .clone()
            .or(file.stream)
            .ok_or(Error::Missing("stream"))?;
        if stream.is_empty() || stream.len() > 2048 {
            return Err(invalid(
                "stream",
                "a stream name or ARN is 1 to 2048 characters",
            ));
        }
        let delivery_stream = options
            .delivery_stream
            .clone()
            .or(table.delivery_stream)
            .ok_or(Error::Missing("delivery_stream"))?;
        if delivery_stream.is_empty() || delivery_stream.len() > 64 {
            return Err(invalid(
                "delivery_stream",
                "a delivery stream name has 1 to 64 characters",
            ));
        }
        let from = match options.from.clone().or(table.from).as_deref() {
            None | Some("trim-horizon") => StartFrom::TrimHorizon,
            Some("latest") => StartFrom::Latest,
            Some(other) => {
                return Err(invalid(
                    "from",
                    format!("{other:?}: expected trim-horizon or latest"),
                ));
            }
        };
        let delimiter = match options.delimiter.clone().or(table.delimiter).as_deref() {
            None | Some("newline") => Delimiter::Newline,
            Some("none") => Delimiter::None,
            Some(other) => {
                return Err(invalid(
                    "delimiter",
                    format!("{other:?}: expected newline or none"),
                ));
            }
        };
        let dedupe_window = match (&options.dedupe_window, table.dedupe_window_ms) {
            (Some(text), _) if text.trim() == "0" => Duration::ZERO,
            (Some(text), _) => duration("dedupe_window", text)?,
            (None, Some(ms)) => Duration::from_millis(ms),
            (None, None) => DEFAULT_DEDUPE_WINDOW,
        };
        let grace_period = match (&options.grace_period, file.grace_period_ms) {
            (Some(text), _) => duration("grace_period", text)?,
            (None, Some(ms)) => Duration::from_millis(ms),
            (None, None) => DEFAULT_GRACE_PERIOD,
        };
        let metrics_addr = match options.metrics_addr.clone().or(file.metrics_addr) {
            None => None,
            Some(text) => Some(
                text.parse()
                    .map_err(|error| invalid("metrics_addr", format!("{text:?}: {error}")))?,
            ),
        };
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
        let leases = match options.lease_table.clone().or(table.lease_table) {
            None => None,
            Some(name) => {
                if name.len() < 3 || name.len() > 255 {
                    return Err(invalid(
                        "lease_table",
                        "a DynamoDB table name has 3 to 255 characters",
                    ));
                }
                let failover = match (&options.lease_failover, table.lease_failover_ms) {
                    (Some(text), _) => duration("lease_failover", text)?,
                    (None, Some(ms)) => Duration::from_millis(ms),
                    (None, None) => super::lease::engine::DEFAULT_FAILOVER,
                };
                if failover < MIN_LEASE_FAILOVER {
                    return Err(invalid(
                        "lease_failover",
                        format!("at least {MIN_LEASE_FAILOVER:?}"),
                    ));
                }
                let worker_id = options
                    .worker_id
                    .clone()
                    .or(table.worker_id)
                    .unwrap_or_else(default_worker_id);
                if worker_id.is_empty() {
                    return Err(invalid("worker_id", "empty"));
                }
                Some(LeaseSettings {
                    table: name,
                    create_table: options.create_lease_table
                        || table.create_lease_table.unwrap_or(false),
                    worker_id,
                    failover,
                    dynamodb_endpoint_url: options
                        .dynamodb_endpoint_url
                        .clone()
                        .or(table.dynamodb_endpoint_url),
                })
            }
        };
        Ok(Settings {
            leases,
            stream,
            delivery_stream,
            region: options.region.clone().or(file.region),
            endpoint_url: options.endpoint_url.clone().or(file.endpoint_url),
            firehose_endpoint_url: options
                .firehose_endpoint_url
                .clone()
                .or(table.firehose_endpoint_url),
            data_dir: options
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or(DEFAULT_DATA_DIR.into()),
            from,
            delimiter,
            dedupe_window,
            metrics_addr,
            grace_period,
            log_format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ConsumeOptions {
        ConsumeOptions {
            stream: Some("s".into()),
            delivery_stream: Some("d".into()),
            ..ConsumeOptions::default()
        }
    }

    #[test]
    fn defaults() {
        let settings = Settings::from_options(&options()).unwrap();
        assert_eq!(settings.from, StartFrom::TrimHorizon);
        assert_eq!(settings.delimiter, Delimiter::Newline);
        assert_eq!(settings.dedupe_window, DEFAULT_DEDUPE_WINDOW);
        assert_eq!(settings.grace_period, DEFAULT_GRACE_PERIOD);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases = [
            (
                ConsumeOptions {
                    delivery_stream: None,
                    ..options()
                },
                "delivery_stream",
            ),
            (
                ConsumeOptions {
                    stream: None,
                    ..options()
                },
                "stream",
            ),
            (
                ConsumeOptions {
                    from: Some("middle".into()),
                    ..options()
                },
                "from",
            ),
            (
                ConsumeOptions {
                    delimiter: Some("tab".into()),
                    ..options()
                },
                "delimiter",
            ),
            (
                ConsumeOptions {
                    dedupe_window: Some("soon".into()),
                    ..options()
                },
                "dedupe_window",
            ),
        ];
        for (options, name) in cases {
            let error = Settings::from_options(&options).unwrap_err();
            assert!(error.to_string().contains(name), "{name}: {error}");
        }
        let off = ConsumeOptions {
            dedupe_window: Some("0".into()),
            ..options()
        };
        assert_eq!(
            Settings::from_options(&off).unwrap().dedupe_window,
            Duration::ZERO
        );
    }

    #[test]
    fn the_example_config_is_valid() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/consume/shipper.toml");
        let file = FileConfig::load(&path).unwrap();
        let settings = Settings::from_file(file, &crate::cli::Options::default()).unwrap();
        assert_eq!(settings.delivery_stream, "worker-logs-s3");
        assert_eq!(settings.dedupe_window, DEFAULT_DEDUPE_WINDOW);
        assert_eq!(settings.log_format, LogFormat::Json);
    }

    #[test]
    fn lease_settings() {
        assert!(Settings::from_options(&options()).unwrap().leases.is_none());
        let leased = ConsumeOptions {
            lease_table: Some("worker-logs-leases".into()),
            worker_id: Some("pod-a".into()),
            lease_failover: Some("20s".into()),
            ..options()
        };
        let leases = Settings::from_options(&leased).unwrap().leases.unwrap();
        assert_eq!(leases.table, "worker-logs-leases");
        assert_eq!(leases.worker_id, "pod-a");
        assert_eq!(leases.failover, Duration::from_secs(20));
        assert!(!leases.create_table);
        let too_short = ConsumeOptions {
            lease_failover: Some("100ms".into()),
            ..leased
        };
        let error = Settings::from_options(&too_short).unwrap_err();
        assert!(error.to_string().contains("lease_failover"), "{error}");
        let file: FileConfig = toml::from_str(
            "stream = \"s\"\n[consume]\ndelivery_stream = \"d\"\nlease_table = \"t-leases\"\ncreate_lease_table = true\nlease_failover_ms = 5000\n",
        )
        .unwrap();
        let leases = Settings::from_file(file, &crate::cli::Options::default())
            .unwrap()
            .leases
            .unwrap();
        assert!(leases.create_table);
        assert_eq!(leases.failover, Duration::from_secs(5));
        assert!(!leases.worker_id.is_empty());
    }

    #[test]
    fn consume_table_in_the_config_file() {
        let file: FileConfig = toml::from_str(
            "stream = \"s\"\n[consume]\ndelivery_stream = \"d\"\nfrom = \"latest\"\ndelimiter = \"none\"\n",
        )
        .unwrap();
        let settings = Settings::from_file(file, &crate::cli::Options::default()).unwrap();
        assert_eq!(
            (settings.stream.as_str(), settings.delivery_stream.as_str()),
            ("s", "d")
        );
        assert_eq!(settings.from, StartFrom::Latest);
        assert_eq!(settings.delimiter, Delimiter::None);
    }
}
