//! Wires the stages together and drives a graceful stop.
//!
//! ```text
//! file source thread (one per input) ─chunks─▶ batcher task ─batches─▶ send tasks (≤ concurrency)
//!        ▲ offsets from checkpoints                                         │ acks
//!        └──────────── checkpointer task ◀── ack registry ◀─────────────────┘
//! ```
//! All channels are bounded: when Kinesis is slow, request slots run out, the batcher stops reading,
//! the chunk channel fills, and the file source stops reading (it never blocks: it goes on finding
//! and opening files, so rotated files stay reachable through their descriptors). The files are
//! the buffer.

mod checkpointer;
pub mod pack;
pub mod records;
mod shards;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::ack::Registry;
use crate::batch::{self, Batch, Dispatch};
use crate::checkpoint;
use crate::config::{self, Config};
use crate::record::Record;
use crate::sinks::kinesis::{self, DeadLetter, RetryPolicy, SdkTransport, Sink};
use crate::sinks::stdout::StdoutSink;
use crate::sources::file::{FileSource, FileSourceConfig, LongLinePolicy, ReadFrom};
use crate::sources::socket::{self, SocketInput};
use crate::telemetry::Metrics;
use crate::telemetry::server::{self, Health};

use crate::parse::multiline::{self, JoinerConfig, Multiline};
use crate::parse::{Enrichment, Format, Formatter, Kubernetes, KubernetesEnvNames, TimeZone};
use crate::partition_key::Template;
use crate::shard_map::{ShardMap, ShardRange, SharedShardMap};
use crate::sinks::kinesis::ShardLimiter;
use pack::Packer;
use records::{RecordBuilder, RecordRules};

/// Chunks of records between the file sources and the batcher.
const CHUNK_CHANNEL_CAPACITY: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data dir {0} is in use by another shipper")]
    DataDirLocked(PathBuf),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::Error),
    #[error(
        "stream {stream} not found ({error}); create it or fix --stream, --region or --endpoint-url"
    )]
    StreamNotFound { stream: String, error: String },
    #[error("cannot start the file source thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Socket(#[from] socket::StartError),
}

impl Error {
    /// Bad usage or configuration (exit 64) rather than a runtime failure (exit 1).
    pub fn is_config(&self) -> bool {
        matches!(self, Error::Config(_))
    }
}

/// What a run did, for the stop summary and for tests.
#[derive(Debug)]
pub struct Summary {
    pub metrics: Arc<Metrics>,
    /// True when the grace period ran out with records still unacknowledged.
    pub grace_expired: bool,
}

/// Run until `shutdown` is cancelled, then drain within the grace period.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Summary, Error> {
    let metrics = Arc::new(Metrics::default());
    let registry = Arc::new(Registry::default());
    let (_lock, initial) = if config.dry_run {
        (None, Vec::new())
    } else {
        let lock = lock_data_dir(&config.data_dir)?;
        let initial = checkpoint::load(&config.data_dir)?
            .map(|c| c.files)
            .unwrap_or_default();
        (Some(lock), initial)
    };

    // The shard map: needed to aggregate, and to pace each shard. A dry run has no stream to ask,
    // so it packs as if the stream had one shard.
    let needs_shards = config.aggregate || (config.rate_limit && !config.dry_run);
    let shards = needs_shards.then(|| Arc::new(SharedShardMap::default()));
    let stop_refresher = CancellationToken::new();
    let sink = if config.dry_run {
        if let (Some(shards), Ok(one)) = (&shards, ShardMap::new(ShardRange::split_evenly(1))) {
            shards.set(one);
        }
        Output::Stdout(StdoutSink::new())
    } else {
        let client =
            kinesis::client::build(config.region.as_deref(), config.endpoint_url.as_deref())
                .await
                .map_err(|error| Error::Config(error.to_string()))?;
        kinesis::check_stream(&client, &config.stream)
            .await
            .map_err(|error| Error::StreamNotFound {
                stream: config.stream.clone(),
                error: error.to_string(),
            })?;
        let transport = SdkTransport::new(client, config.stream.clone(), config.cbor);
        let mut sink = Sink::new(
            transport.clone(),
            config.stream.clone(),
            RetryPolicy::default(),
            DeadLetter::new(&config.data_dir),
            Arc::clone(&metrics),
        )
        .with_concurrency(config.concurrency);
        if let Some(shards) = &shards {
            // Load the map before reading, so the first records are packed per shard; if Kinesis
            // cannot be asked yet, the refresher keeps trying and records go out unpacked meanwhile.
            shards::refresh(&transport, shards).await;
            tokio::spawn(shards::refresher(
                transport,
                Arc::clone(shards),
                stop_refresher.clone(),
            ));
            let limiter = config.rate_limit.then(|| Arc::new(ShardLimiter::default()));
            sink = sink.with_shards(Arc::clone(shards), limiter);
        }
        Output::Kinesis(Arc::new(sink))
    };

    let health = Arc::new(Health::new(
        Arc::clone(&metrics),
        (!config.dry_run).then(|| config.data_dir.clone()),
        Arc::clone(&registry),
    ));
    let stop_server = CancellationToken::new();
    if let Some(addr) = config.metrics_addr {
        server::serve(addr, Arc::clone(&health), stop_server.clone())
            .await
            .map_err(|error| {
                Error::Config(format!("cannot listen on metrics address {addr}: {error}"))
            })?;
        info!(%addr, "serving /metrics, /healthz and /readyz");
    }

    let stop_sources = CancellationToken::new();
    let (tx, rx) = mpsc::channel(CHUNK_CHANNEL_CAPACITY);
    let mut threads = Vec::new();
    let mut sockets = Vec::new();
    // A dry run keeps no state in the data dir: its spools live in a temporary directory.
    let dry_run_dir = config
        .dry_run
        .then(|| std::env::temp_dir().join(format!("shipper-dry-run-{}", std::process::id())));
    for (index, input) in config.inputs.iter().enumerate() {
        if let Some(url) = &input.socket {
            let state_dir = dry_run_dir.as_deref().unwrap_or(&config.data_dir);
            sockets.push(start_socket(
                &config,
                input,
                url,
                index,
                state_dir,
                &tx,
                &metrics,
                &stop_sources,
            )?);
            continue;
        }
        let source = FileSource::new(
            FileSourceConfig {
                include: input.paths.clone(),
                read_from: match input.read_from {
                    config::ReadFrom::Beginning => ReadFrom::Beginning,
                    config::ReadFrom::End => ReadFrom::End,
                },
                max_line_bytes: config.limits.max_data_bytes(),
                max_open_files: config.max_open_files,
                max_held_deleted_for: config.max_held_deleted_for,
                max_held_deleted_bytes: config.max_held_deleted_bytes,
                long_lines: match config.long_lines {
                    config::LongLinePolicy::Split => LongLinePolicy::Split,
                    config::LongLinePolicy::Truncate => LongLinePolicy::Truncate,
                },
                ..FileSourceConfig::default()
            },
            Arc::clone(&registry),
            initial.clone(),
        );
        let mut builder = RecordBuilder::new(
            tx.clone(),
            record_rules(&config, input)?,
            Arc::clone(&metrics),
        );
        let cancel = stop_sources.clone();
        let thread = std::thread::Builder::new()
            .name(format!("shipper-input-{index}"))
            .spawn(move || {
                source.run(cancel, &mut builder);
                // Whatever was read goes on to the batcher, pending multiline records included.
                let _ = builder.finish();
            })
            .map_err(Error::Thread)?;
        threads.push(thread);
    }
    drop(tx);
    info!(stream = %config.stream, inputs = config.inputs.len(), dry_run = config.dry_run, "shipper started");

    let sink = Arc::new(sink);
    let hard_stop = CancellationToken::new();
    let senders = TaskTracker::new();
    let batcher = {
        let mut dispatch = Dispatcher {
            sink: Arc::clone(&sink),
            senders: senders.clone(),
            hard_stop: hard_stop.clone(),
        };
        let (limits, linger) = (config.limits, config.linger);
        let max_aggregate_bytes = config.aggregate_max_bytes;
        let paced = config.rate_limit && !config.dry_run;
        let shard_budget = paced.then(kinesis::rate::batch_budget);
        let mut packer = Packer::new(
            config.aggregate,
            config.compress,
            shards.clone(),
            max_aggregate_bytes,
        );
        tokio::spawn(async move {
            batch::run(rx, limits, shard_budget, linger, &mut packer, &mut dispatch).await
        })
    };
    let checkpointer = (!config.dry_run).then(|| {
        let registry = Arc::clone(&registry);
        let dir = config.data_dir.clone();
        let stop = hard_stop.clone();
        let health = Arc::clone(&health);
        let interval = config.checkpoint_interval;
        let store = move |files| {
            let dir = dir.clone();
            async move {
                match tokio::task::spawn_blocking(move || checkpoint::store(&dir, files)).await {
                    Ok(result) => result.map_err(|error| error.to_string()),
                    Err(join_error) => Err(join_error.to_string()),
                }
            }
        };
        tokio::spawn(checkpointer::run(registry, interval, health, stop, store))
    });

    shutdown.cancelled().await;
    info!(grace_period = ?config.grace_period, "stopping: delivering what was read");
    stop_sources.cancel();
    let drain = async {
        for socket in &mut sockets {
            socket.stopped().await;
        }
        for thread in threads {
            // The thread ends once it sees the cancellation or its channel closes.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        let _ = batcher.await;
        senders.close();
        senders.wait().await;
    };
    let grace_expired = tokio::time::timeout(config.grace_period, drain)
        .await
        .is_err();
    if grace_expired {
        warn!(
            "grace period over with records in flight; they are not checkpointed and will be sent again after a restart"
        );
    }
    hard_stop.cancel();
    senders.close();
    senders.wait().await;
    for socket in sockets {
        socket.finish().await;
    }
    if let Some(dir) = dry_run_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    if let Some(checkpointer) = checkpointer {
        let _ = checkpointer.await;
        let files = registry.snapshot();
        let dir = config.data_dir.clone();
        match tokio::task::spawn_blocking(move || checkpoint::store(&dir, files)).await {
            Ok(Ok(())) => {}
            Ok(Err(store_error)) => {
                error!(error = %store_error, "cannot write the final checkpoint")
            }
            Err(join_error) => error!(error = %join_error, "checkpoint writer failed"),
        }
    }
    stop_server.cancel();
    stop_refresher.cancel();
    let counters = metrics.counters();
    info!(?counters, "shipper stopped");
    Ok(Summary {
        metrics,
        grace_expired,
    })
}

enum Output {
    Kinesis(Arc<Sink<SdkTransport>>),
    Stdout(StdoutSink),
}

impl Output {
    fn oversize(&self, record: Record) {
        match self {
            Output::Kinesis(sink) => sink.oversize(record),
            Output::Stdout(sink) => sink.send(Batch {
                bytes: record.size(),
                records: vec![record],
            }),
        }
    }
}

/// Hands each batch to its own send task once the sink has a request slot for it (at most
/// `concurrency` calls in flight); a dry run prints each batch in order instead.
struct Dispatcher {
    sink: Arc<Output>,
    senders: TaskTracker,
    hard_stop: CancellationToken,
}

impl Dispatch for Dispatcher {
    async fn batch(&mut self, batch: Batch) {
        let sink = match &*self.sink {
            Output::Stdout(stdout) => return stdout.send(batch),
            Output::Kinesis(sink) => sink,
        };
        let Some(slot) = sink.request_slot().await else {
            return;
        };
        let sink = Arc::clone(sink);
        let stop = self.hard_stop.clone();
        self.senders
            .spawn(async move { sink.send_in_slot(batch, slot, &stop).await });
    }

    async fn oversize(&mut self, record: Record) {
        self.sink.oversize(record);
    }
}

/// Create the data dir and take its lock file, so two shippers never share checkpoints.
fn lock_data_dir(dir: &Path) -> Result<File, Error> {
    match checkpoint::lock_data_dir(dir) {
        Ok(Some(lock)) => Ok(lock),
        Ok(None) => Err(Error::DataDirLocked(dir.to_path_buf())),
        Err(source) => Err(Error::DataDir {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Open a socket input's spool, bind its socket and start it. Decoded Python and syslog records
/// are JSON objects, built as `--format json`; lines keep the input's format, and are joined per
/// connection before the spool (so the builder behind it joins nothing).
#[allow(clippy::too_many_arguments)]
fn start_socket(
    config: &Config,
    input: &config::Input,
    url: &str,
    index: usize,
    state_dir: &Path,
    tx: &mpsc::Sender<Vec<Record>>,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
) -> Result<SocketInput, Error> {
    let parsed: socket::url::SocketUrl = url
        .parse()
        .map_err(|error: socket::url::UrlError| Error::Config(error.to_string()))?;
    let text_rules = record_rules(config, input)?;
    let joiner = text_rules.joiner.clone();
    let mut text_rules = text_rules;
    text_rules.joiner.multiline = Multiline::None;
    let envelope_input = config::Input {
        format: Format::Json.to_string(),
        multiline: "none".into(),
        ..input.clone()
    };
    let envelope_rules = record_rules(config, &envelope_input)?;
    let builders = [
        RecordBuilder::new(tx.clone(), envelope_rules, Arc::clone(metrics)),
        RecordBuilder::new(tx.clone(), text_rules, Arc::clone(metrics)),
    ];
    let socket_metrics = Arc::new(socket::metrics::SocketMetrics::new(url));
    metrics
        .sockets
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(Arc::clone(&socket_metrics));
    let settings = socket::listen::Settings {
        url: parsed,
        mode: config.socket_mode,
        max_connections: config.socket_max_connections,
        max_frame_bytes: config.limits.max_data_bytes(),
        joiner,
    };
    let spool = socket::SpoolSettings {
        dir: socket::spool_dir(state_dir, url),
        config: crate::spool::Config::with_max_bytes(config.spool_max_bytes),
        sync_interval: config.spool_sync_interval,
        ack_interval: config.checkpoint_interval,
    };
    Ok(SocketInput::start(
        settings,
        spool,
        builders,
        socket_metrics,
        index,
        stop.clone(),
    )?)
}

/// How one input's lines become records. The strings were checked by `Config`, so errors here
/// are reported as configuration errors too.
fn record_rules(config: &Config, input: &config::Input) -> Result<RecordRules, Error> {
    let bad = |error: String| Error::Config(error);
    let format: Format = input
        .format
        .parse()
        .map_err(|e: crate::parse::FormatError| bad(e.to_string()))?;
    let multiline: Multiline = input
        .multiline
        .parse()
        .map_err(|e: multiline::MultilineError| bad(e.to_string()))?;
    let template = Template::parse(&input.partition_key).map_err(|e| bad(e.to_string()))?;
    let zone = match config.timezone.as_deref() {
        Some(text) => text
            .parse()
            .map_err(|e: crate::parse::TimeZoneError| bad(e.to_string()))?,
        None => TimeZone::default(),
    };
    let host = gethostname::gethostname().into_string().ok();
    let kubernetes = Kubernetes::from_env(&KubernetesEnvNames::default());
    let fields = config
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let enrichment = Enrichment::new(host, kubernetes, fields);
    let formatter = Formatter::new(format, zone, enrichment, &template.field_names());
    let max_data_bytes = config.limits.max_data_bytes();
    // JSON envelopes escape and enrich what they carry: leave them room to grow.
    let max_joined_bytes = if format == Format::Raw {
        max_data_bytes
    } else {
        max_data_bytes / 2
    };
    let joiner = JoinerConfig {
        multiline,
        flush_timeout: multiline::DEFAULT_FLUSH_TIMEOUT,
        max_record_bytes: max_joined_bytes,
    };
    Ok(RecordRules {
        formatter,
        template,
        joiner,
        max_data_bytes,
        compress: config.compress,
    })
}
