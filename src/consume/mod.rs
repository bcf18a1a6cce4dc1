//! `shipper consume`: reads every shard of a Kinesis stream and forwards each user record through a
//! Firehose delivery stream (Direct PUT), at least once, with checkpoints in the data dir.
//!
//! Per shard, a reader task (`reader`: GetRecords, `unpack`, `dedupe`, `forward::Packer`) and a
//! forwarder task (`forward::forward`: PutRecordBatch through `sinks::firehose`) joined by a
//! bounded channel; `progress` tracks what Firehose acknowledged; this module's coordinator lists
//! the shards (`shards`), starts each one once its parents are finished, and writes the
//! checkpoints (`position`) every second and at stop.

pub mod dead_letters;
pub mod dedupe;
pub mod forward;
pub mod lease;
mod leased;
pub mod position;
pub mod progress;
pub mod reader;
pub mod settings;
pub mod shards;
pub mod unpack;

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::checkpoint;
use crate::sinks::error::SendError;
use crate::sinks::firehose::{self, SdkTransport};
use crate::sinks::kinesis::client::ClientError;
use crate::sinks::retry::RetryPolicy;
use crate::telemetry::consume::{ConsumeHealth, ConsumeMetrics};

use dead_letters::DeadLetters;
use position::ShardCheckpoint;
use progress::Progress;
use reader::{Context, Start};
use settings::{Settings, StartFrom};

/// How often checkpoints are written (when they changed).
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// How often the shard list is read again (and at once when a shard finishes).
const LIST_INTERVAL: Duration = Duration::from_secs(10);
/// Batches waiting between a shard's reader and its forwarder: with the one being sent and the
/// one being packed, three per shard (about 3 MiB) are held at most.
const BATCHES_PER_SHARD: usize = 1;
/// PutRecordBatch calls in flight at once, over all shards (each shard has at most one).
const CALLS_IN_FLIGHT: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("cannot read stream {stream}: {error}")]
    Stream { stream: String, error: SendError },
    #[error("cannot use delivery stream {delivery_stream}: {error}")]
    DeliveryStream {
        delivery_stream: String,
        error: SendError,
    },
    #[error("data dir {0} is used by another shipper (its lock file is held)")]
    DataDirLocked(PathBuf),
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::Error),
    #[error("{0}")]
    LeaseTable(#[from] lease::StoreError),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

impl Error {
    /// Errors an operator fixes in the settings (exit 64).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Error::Client(ClientError::NoRegion) | Error::LeaseTable(lease::StoreError::NoTable(_))
        )
    }
}

/// What a run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub user_records_forwarded: u64,
    pub dead_lettered: u64,
    pub duplicates_dropped: u64,
}

/// One shard the coordinator knows.
struct ShardState {
    checkpoint: ShardCheckpoint,
    progress: Option<Arc<Progress>>,
}

/// Run the consumer until `shutdown`, then forward what was read within the grace period, write
/// the checkpoints and return.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<Summary, Error> {
    let _lock = lock_data_dir(&settings.data_dir)?;
    let kinesis = crate::sinks::kinesis::client::build(
        settings.region.as_deref(),
        settings.endpoint_url.as_deref(),
    )
    .await?;
    let firehose_client = firehose::client::build(
        settings.region.as_deref(),
        settings.firehose_endpoint_url.as_deref(),
    )
    .await?;
    let listing = shards::list(&kinesis, &settings.stream)
        .await
        .map_err(|error| Error::Stream {
            stream: settings.stream.clone(),
            error,
        })?;
    let transport = SdkTransport::new(firehose_client, settings.delivery_stream.clone());
    transport
        .check_delivery_stream()
        .await
        .map_err(|error| Error::DeliveryStream {
            delivery_stream: settings.delivery_stream.clone(),
            error,
        })?;
    let metrics = Arc::new(ConsumeMetrics::default());
    let health = Arc::new(ConsumeHealth {
        metrics: Arc::clone(&metrics),
        ..ConsumeHealth::default()
    });
    let server_stop = CancellationToken::new();
    if let Some(addr) = settings.metrics_addr {
        crate::telemetry::consume::serve(addr, Arc::clone(&health), server_stop.clone())
            .await
            .map_err(|source| Error::Metrics { addr, source })?;
    }
    let retry = RetryPolicy::default();
    let sink = Arc::new(firehose::Sink::new(
        transport,
        settings.delivery_stream.clone(),
        retry,
        Arc::clone(&metrics),
        CALLS_IN_FLIGHT,
    ));
    let dead_letters = Arc::new(DeadLetters::new(&settings.data_dir, &settings.stream));
    let context = Arc::new(Context {
        client: kinesis.clone(),
        stream: settings.stream.clone(),
        delimiter: settings.delimiter,
        dedupe_window: settings.dedupe_window,
        retry,
        metrics: Arc::clone(&metrics),
        dead_letters: Arc::clone(&dead_letters),
    });
    let shared = Shared {
        context,
        sink,
        dead_letters,
        metrics: Arc::clone(&metrics),
    };
    match &settings.leases {
        Some(leases) => {
            leased::run(&settings, leases, shared, listing, &health, shutdown).await?;
        }
        None => {
            run_with_checkpoint_file(&settings, shared, &kinesis, listing, &health, shutdown)
                .await?
        }
    }
    server_stop.cancel();
    let summary = Summary {
        user_records_forwarded: ConsumeMetrics::get(&metrics.user_records_forwarded_total),
        dead_lettered: ConsumeMetrics::get(&metrics.dead_lettered_total),
        duplicates_dropped: ConsumeMetrics::get(&metrics.duplicates_dropped_total),
    };
    info!(
        user_records_forwarded = summary.user_records_forwarded,
        dead_lettered = summary.dead_lettered,
        duplicates_dropped = summary.duplicates_dropped,
        "stopped"
    );
    Ok(summary)
}

/// What every shard's tasks share.
pub(crate) struct Shared {
    pub context: Arc<Context>,
    pub sink: Arc<firehose::Sink<SdkTransport>>,
    pub dead_letters: Arc<DeadLetters>,
    pub metrics: Arc<ConsumeMetrics>,
}

/// Start a shard's reader and forwarder on `tracker`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn_shard(
    tracker: &TaskTracker,
    shared: &Shared,
    shard_id: &str,
    start: Start,
    progress: Arc<Progress>,
    stop: CancellationToken,
    hard_stop: CancellationToken,
) {
    let (tx, rx) = mpsc::channel(BATCHES_PER_SHARD);
    let shard_id: Arc<str> = Arc::from(shard_id);
    tracker.spawn(reader::read_shard(
        Arc::clone(&shared.context),
        Arc::clone(&shard_id),
        start,
        Arc::clone(&progress),
        tx,
        stop,
        hard_stop.clone(),
    ));
    tracker.spawn(forward::forward(
        shard_id,
        rx,
        Arc::clone(&shared.sink),
        progress,
        Arc::clone(&shared.dead_letters),
        Arc::clone(&shared.metrics),
        hard_stop,
    ));
}

/// One replica reading every shard, with checkpoints in the data dir.
async fn run_with_checkpoint_file(
    settings: &Settings,
    shared: Shared,
    kinesis: &aws_sdk_kinesis::Client,
    listing: Vec<shards::ShardInfo>,
    health: &ConsumeHealth,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let mut known: BTreeMap<String, ShardState> =
        position::load(&settings.data_dir, &settings.stream)?
            .into_iter()
            .map(|checkpoint| {
                (
                    checkpoint.shard_id.clone(),
                    ShardState {
                        checkpoint,
                        progress: None,
                    },
                )
            })
            .collect();
    // A first run (no checkpoints) applies --from to the shards listed now; every shard found
    // later is new and starts at its beginning.
    let mut first_run = known.is_empty();
    let checkpoints = known.len();
    if first_run && settings.from == StartFrom::Latest {
        // A first run from the tip: closed shards without a checkpoint hold only the past.
        let closed_unread: Vec<String> = listing
            .iter()
            .filter(|s| s.closed && !known.contains_key(&s.shard_id))
            .map(|s| s.shard_id.clone())
            .collect();
        for shard_id in closed_unread {
            known.insert(
                shard_id.clone(),
                ShardState {
                    checkpoint: ShardCheckpoint {
                        shard_id,
                        sequence_number: None,
                        sub_sequence_number: 0,
                        finished: true,
                    },
                    progress: None,
                },
            );
        }
    }
    // Ready before the line that says so: the log line is what scripts and tests wait for.
    health.ready.store(true, Ordering::Relaxed);
    info!(stream = %settings.stream, delivery_stream = %settings.delivery_stream, shards = listing.len(), checkpoints, "consuming");
    let Shared {
        context,
        sink,
        dead_letters,
        metrics,
    } = shared;

    let tracker = TaskTracker::new();
    let hard_stop = CancellationToken::new();
    let mut listing = Some(listing);
    let mut last_listed = Instant::now();
    let mut stored: Vec<ShardCheckpoint> = Vec::new();
    let mut ticker = tokio::time::interval(CHECKPOINT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => break,
        }
        let newly_finished = write_checkpoints(settings, &mut known, &mut stored, &metrics).await;
        if listing.is_none() && (newly_finished || last_listed.elapsed() >= LIST_INTERVAL) {
            match shards::list(kinesis, &settings.stream).await {
                Ok(shards) => listing = Some(shards),
                Err(error) => warn!(error = %error, "listshards failed; keeping the shards known"),
            }
            last_listed = Instant::now();
        }
        if let Some(shards) = listing.take() {
            let finished: HashSet<String> = known
                .values()
                .filter(|s| s.checkpoint.finished)
                .map(|s| s.checkpoint.shard_id.clone())
                .collect();
            let running: HashSet<String> = known
                .values()
                .filter(|s| s.progress.is_some())
                .map(|s| s.checkpoint.shard_id.clone())
                .collect();
            for shard in shards::startable(&shards, &finished, &running) {
                let existing = known.get(&shard.shard_id).map(|s| s.checkpoint.clone());
                let start = match existing.as_ref().and_then(ShardCheckpoint::position) {
                    Some(position) => Start::Resume(position),
                    None if first_run && settings.from == StartFrom::Latest => Start::Latest,
                    None => Start::TrimHorizon,
                };
                let progress = Arc::new(Progress::new(
                    existing.as_ref().and_then(ShardCheckpoint::position),
                ));
                spawn_shard(
                    &tracker,
                    &Shared {
                        context: Arc::clone(&context),
                        sink: Arc::clone(&sink),
                        dead_letters: Arc::clone(&dead_letters),
                        metrics: Arc::clone(&metrics),
                    },
                    &shard.shard_id,
                    start,
                    Arc::clone(&progress),
                    shutdown.clone(),
                    hard_stop.clone(),
                );
                known.insert(
                    shard.shard_id.clone(),
                    ShardState {
                        checkpoint: existing.unwrap_or(ShardCheckpoint {
                            shard_id: shard.shard_id.clone(),
                            sequence_number: None,
                            sub_sequence_number: 0,
                            finished: false,
                        }),
                        progress: Some(progress),
                    },
                );
            }
            first_run = false;
        }
    }

    info!(grace_period = ?settings.grace_period, "stopping: forwarding what was read");
    tracker.close();
    let drained = tokio::time::timeout(settings.grace_period, tracker.wait())
        .await
        .is_ok();
    if !drained {
        warn!(
            "grace period over; abandoning what is not forwarded (it stays ahead of the checkpoint)"
        );
        hard_stop.cancel();
        tracker.wait().await;
    }
    write_checkpoints(settings, &mut known, &mut stored, &metrics).await;
    Ok(())
}

/// Write the checkpoints if they changed; true when a shard became finished (its children may
/// now start). A shard counts as finished only once that is on disk.
async fn write_checkpoints(
    settings: &Settings,
    known: &mut BTreeMap<String, ShardState>,
    stored: &mut Vec<ShardCheckpoint>,
    metrics: &ConsumeMetrics,
) -> bool {
    let mut current = Vec::with_capacity(known.len());
    let mut finishing = Vec::new();
    for (shard_id, state) in known.iter() {
        let mut checkpoint = state.checkpoint.clone();
        if let Some(progress) = &state.progress {
            let snapshot = progress.snapshot();
            if let Some(position) = snapshot.committed {
                checkpoint.sequence_number = Some(position.sequence.as_str().to_string());
                checkpoint.sub_sequence_number = position.sub_sequence;
            }
            if snapshot.finished && !checkpoint.finished {
                checkpoint.finished = true;
                finishing.push(shard_id.clone());
            }
        }
        current.push(checkpoint);
    }
    if current == *stored {
        return false;
    }
    let dir = settings.data_dir.clone();
    let stream = settings.stream.clone();
    let to_store = current.clone();
    let written =
        tokio::task::spawn_blocking(move || position::store(&dir, &stream, to_store)).await;
    match written {
        Ok(Ok(())) => {
            *stored = current;
            for (shard_id, state) in known.iter_mut() {
                if let Some(checkpoint) = stored.iter().find(|c| &c.shard_id == shard_id) {
                    state.checkpoint = checkpoint.clone();
                }
                if finishing.contains(shard_id) {
                    state.progress = None;
                }
            }
            ConsumeMetrics::add(&metrics.shards_finished_total, finishing.len() as u64);
            !finishing.is_empty()
        }
        Ok(Err(error)) => {
            error!(error = %error, "cannot write the checkpoints; retrying");
            false
        }
        Err(error) => {
            error!(error = %error, "checkpoint task failed; retrying");
            false
        }
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
