//! The command line: only what the user typed. `config` turns it into validated settings.
//!
//! Every option is optional here so that a config file (`shipper run --config`) can supply it;
//! precedence is flag, then `SHIPPER_*` environment variable, then config file, then default.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "shipper",
    version,
    about = "Ship log files to Amazon Kinesis Data Streams, at least once"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ship files (paths or glob patterns) to a Kinesis stream.
    Tail(TailArgs),
    /// The same as `tail`, configured from a TOML file (flags and SHIPPER_* variables override it);
    /// a file with a [consume] table runs `consume` instead.
    Run(RunArgs),
    /// Read every shard of a Kinesis stream and forward each record to a Firehose delivery stream.
    Consume(ConsumeArgs),
    /// Check a config file and print the effective settings; exit 0 when valid, 64 when not.
    Validate(ValidateArgs),
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Files to ship: paths or glob patterns (quote globs so the shell leaves them alone). None
    /// are needed when --socket is given.
    #[arg(required_unless_present = "sockets", value_name = "PATH|GLOB")]
    pub paths: Vec<String>,
    #[command(flatten)]
    pub options: Options,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The TOML config file.
    #[arg(long, env = "SHIPPER_CONFIG", value_name = "FILE")]
    pub config: PathBuf,
    #[command(flatten)]
    pub options: Options,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub options: crate::consume::settings::ConsumeOptions,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The TOML config file to check.
    #[arg(long, env = "SHIPPER_CONFIG", value_name = "FILE")]
    pub config: PathBuf,
    #[command(flatten)]
    pub options: Options,
}

/// Settings shared by `tail`, `run` and `validate`.
#[derive(Debug, Args, Default, Clone)]
pub struct Options {
    /// Name of the Kinesis data stream to write to.
    #[arg(long, env = "SHIPPER_STREAM", value_name = "NAME")]
    pub stream: Option<String>,
    /// AWS region. Defaults to the standard AWS chain (AWS_REGION, profile, IMDS).
    #[arg(long, env = "SHIPPER_REGION")]
    pub region: Option<String>,
    /// Kinesis endpoint, e.g. http://127.0.0.1:4566 for LocalStack. AWS_ENDPOINT_URL_KINESIS and
    /// AWS_ENDPOINT_URL are honoured when this is not set.
    #[arg(long, env = "SHIPPER_ENDPOINT_URL", value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// Directory for checkpoints and the dead-letter file (default /var/lib/shipper).
    #[arg(long, env = "SHIPPER_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where to start files that have no checkpoint and exist at start-up: beginning or end
    /// (default beginning). Files that appear later are always read from their beginning.
    #[arg(long, env = "SHIPPER_READ_FROM", value_name = "beginning|end")]
    pub read_from: Option<String>,
    /// Record format: raw (the line as it is), json (one JSON object per record), celery (Celery's
    /// log format parsed into a JSON envelope). Default raw.
    #[arg(long, env = "SHIPPER_FORMAT", value_name = "raw|json|celery")]
    pub format: Option<String>,
    /// Multiline joining: none, python (tracebacks), celery (lines without the Celery prefix continue
    /// the record above), or a regular expression matching the first line of a record.
    #[arg(
        long,
        env = "SHIPPER_MULTILINE",
        value_name = "none|python|celery|REGEX"
    )]
    pub multiline: Option<String>,
    /// Partition key template: literal text and {task_id}, {task_name}, {host}, {pod}, {file},
    /// {random}, {field.NAME}, with fallbacks such as {task_id|random}.
    #[arg(long, env = "SHIPPER_PARTITION_KEY", value_name = "TEMPLATE")]
    pub partition_key: Option<String>,
    /// Timezone of the timestamps in Celery logs, as a fixed offset (+02:00) or UTC (the default).
    #[arg(long, env = "SHIPPER_TIMEZONE", value_name = "OFFSET")]
    pub timezone: Option<String>,
    /// Static field added to json and celery records (repeatable): --field env=prod.
    #[arg(long = "field", value_name = "KEY=VALUE")]
    pub fields: Vec<String>,
    /// Compress each record's data: none (default), gzip or zstd. Only consumers that decompress
    /// (such as `shipper consume`) can read compressed records; the KCL, Lambda and Firehose cannot.
    #[arg(long, env = "SHIPPER_COMPRESS", value_name = "none|gzip|zstd")]
    pub compress: Option<String>,
    /// Pack user records that hash to the same shard into KPL aggregated records (readable by the
    /// KCL, Lambda and Firehose), lifting the 1,000 records/s per shard cap.
    #[arg(long, env = "SHIPPER_AGGREGATE")]
    pub aggregate: bool,
    /// Largest aggregate, before compression (default 64 KiB; 512 KiB with --compress).
    #[arg(long, env = "SHIPPER_AGGREGATE_MAX_BYTES", value_name = "BYTES")]
    pub aggregate_max_bytes: Option<usize>,
    /// Turn off per-shard rate control (on by default: each shard is paced at 1,000 records/s and
    /// 1 MiB/s, and slowed down when Kinesis throttles it).
    #[arg(long, env = "SHIPPER_NO_RATE_LIMIT")]
    pub no_rate_limit: bool,
    /// Send PutRecords as JSON (data in base64) instead of CBOR (data as raw bytes). CBOR is the
    /// default and is dropped by itself for an endpoint that does not accept it.
    #[arg(long, env = "SHIPPER_NO_CBOR")]
    pub no_cbor: bool,
    /// How long a record may wait for more records before its batch is sent (default 200ms).
    #[arg(long, env = "SHIPPER_LINGER", value_name = "DURATION")]
    pub linger: Option<String>,
    /// Most records in one PutRecords request (1..=500, default 500).
    #[arg(long, env = "SHIPPER_MAX_BATCH_RECORDS", value_name = "N")]
    pub max_batch_records: Option<usize>,
    /// Most bytes (data plus partition keys) in one PutRecords request (default 1 MiB, or
    /// --max-record-bytes if larger; Kinesis allows 5 MiB, 10 MiB for streams whose limit was
    /// raised).
    #[arg(long, env = "SHIPPER_MAX_BATCH_BYTES", value_name = "BYTES")]
    pub max_batch_bytes: Option<usize>,
    /// Most bytes in one record, data plus partition key (default 1 MiB, the Kinesis limit).
    /// Longer lines are split (or truncated, see --long-lines).
    #[arg(long, env = "SHIPPER_MAX_RECORD_BYTES", value_name = "BYTES")]
    pub max_record_bytes: Option<usize>,
    /// What to do with a line longer than a record can hold: split (default) or truncate.
    #[arg(long, env = "SHIPPER_LONG_LINES", value_name = "split|truncate")]
    pub long_lines: Option<String>,
    /// PutRecords requests in flight at once (default 4).
    #[arg(long, env = "SHIPPER_CONCURRENCY", value_name = "N")]
    pub concurrency: Option<usize>,
    /// How long a stop (SIGTERM, SIGINT) may take to deliver what was read (default 25s).
    #[arg(long, env = "SHIPPER_GRACE_PERIOD", value_name = "DURATION")]
    pub grace_period: Option<String>,
    /// Most files held open at once (default 256). Rotated-away files are read through their open
    /// descriptor; when a new file needs one and all are taken, the oldest rotated-away file is
    /// closed and its unread bytes are counted as lost.
    #[arg(long, env = "SHIPPER_MAX_OPEN_FILES", value_name = "N")]
    pub max_open_files: Option<usize>,
    /// Longest a deleted file is held open to finish reading it (default 1h); its disk space is
    /// freed only when it is closed.
    #[arg(long, env = "SHIPPER_MAX_HELD_DELETED_FOR", value_name = "DURATION")]
    pub max_held_deleted_for: Option<String>,
    /// Most bytes of deleted files held open in all (default 1 GiB); past it the oldest is closed
    /// and its unread bytes are counted as lost.
    #[arg(long, env = "SHIPPER_MAX_HELD_DELETED_BYTES", value_name = "BYTES")]
    pub max_held_deleted_bytes: Option<u64>,
    /// How soon acknowledged progress is written to the checkpoint file (default 100ms). Written
    /// only when it moved; a crash resends what was acknowledged since the last write.
    #[arg(long, env = "SHIPPER_CHECKPOINT_INTERVAL", value_name = "DURATION")]
    pub checkpoint_interval: Option<String>,
    /// Listen for records on a local socket (repeatable): unix:///PATH, unixgram:///PATH,
    /// unix://@NAME and unixgram://@NAME (Linux abstract names), tcp://127.0.0.1:PORT,
    /// udp://127.0.0.1:PORT; add ?framing=auto|python|syslog|lines (default auto). Python's
    /// SocketHandler, DatagramHandler and SysLogHandler need nothing else.
    #[arg(long = "socket", value_name = "URL")]
    pub sockets: Vec<String>,
    /// Let tcp:// and udp:// sockets listen on addresses other than loopback.
    #[arg(long, env = "SHIPPER_SOCKET_ALLOW_REMOTE")]
    pub socket_allow_remote: bool,
    /// File mode of socket files created at a path, in octal (default 0660).
    #[arg(long, env = "SHIPPER_SOCKET_MODE", value_name = "OCTAL")]
    pub socket_mode: Option<String>,
    /// Most connections open at once on each stream socket (default 1024); more are closed at
    /// once and counted.
    #[arg(long, env = "SHIPPER_SOCKET_MAX_CONNECTIONS", value_name = "N")]
    pub socket_max_connections: Option<usize>,
    /// Most bytes each socket's spool may take on disk (default 256 MiB). When full, newly
    /// received records are dropped, counted and logged; senders are never blocked.
    #[arg(long, env = "SHIPPER_SPOOL_MAX_BYTES", value_name = "BYTES")]
    pub spool_max_bytes: Option<u64>,
    /// How often spooled records are flushed to the disk with fdatasync (default 100ms). A crash
    /// of the process loses nothing spooled; a power loss can lose this much.
    #[arg(long, env = "SHIPPER_SPOOL_SYNC_INTERVAL", value_name = "DURATION")]
    pub spool_sync_interval: Option<String>,
    /// Print records to standard output instead of sending them (a dry run: no AWS calls, no
    /// checkpoints).
    #[arg(long, env = "SHIPPER_STDOUT")]
    pub stdout: bool,
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address, e.g. 127.0.0.1:9090.
    /// Off by default.
    #[arg(long, env = "SHIPPER_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// The shipper's own log format: text (default) or json. Filter with RUST_LOG.
    #[arg(long, env = "SHIPPER_LOG_FORMAT", value_name = "text|json")]
    pub log_format: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tail_takes_paths_and_flags() {
        let cli = Cli::try_parse_from([
            "shipper",
            "tail",
            "/var/log/*.log",
            "b.log",
            "--stream",
            "s",
            "--linger",
            "1s",
            "--stdout",
        ])
        .unwrap();
        let Command::Tail(args) = cli.command else {
            panic!("not tail")
        };
        assert_eq!(args.paths, ["/var/log/*.log", "b.log"]);
        assert_eq!(args.options.stream.as_deref(), Some("s"));
        assert_eq!(args.options.linger.as_deref(), Some("1s"));
        assert!(args.options.stdout);
    }

    #[test]
    fn tail_takes_sockets_without_paths() {
        let cli = Cli::try_parse_from([
            "shipper",
            "tail",
            "--socket",
            "unix:///run/shipper/log.sock",
            "--socket",
            "udp://127.0.0.1:5140",
            "--stream",
            "s",
        ])
        .unwrap();
        let Command::Tail(args) = cli.command else {
            panic!("not tail")
        };
        assert!(args.paths.is_empty());
        assert_eq!(args.options.sockets.len(), 2);
    }

    #[test]
    fn tail_without_paths_is_a_usage_error() {
        let error = Cli::try_parse_from(["shipper", "tail", "--stream", "s"]).unwrap_err();
        assert_eq!(
            error.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
    }
}
