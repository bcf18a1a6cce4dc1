//! `shipper consume --lease-table`: one of several replicas sharing the stream's shards through
//! the lease table, with checkpoints in it. The lease engine (`lease::engine`) decides which shards
//! this replica reads; [`ShardTasks`] starts and stops their readers and forwarders.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::lease::LeaseCheckpoint;
use super::lease::dynamo::{self, DynamoStore};
use super::lease::engine::{Engine, NewLeases, ReaderStatus, Readers, Timing};
use super::progress::Progress;
use super::reader::Start;
use super::settings::{LeaseSettings, Settings, StartFrom};
use super::shards::{self, ShardInfo};
use super::{Error, Shared, spawn_shard};
use crate::telemetry::consume::ConsumeHealth;

/// How often the engine steps (renewals and table reads go at their own, slower pace).
const STEP_INTERVAL: Duration = Duration::from_millis(250);
/// How often the shard list is read again, to create the leases of new shards.
const LIST_INTERVAL: Duration = Duration::from_secs(10);

/// One running shard.
struct Running {
    progress: Arc<Progress>,
    stop: CancellationToken,
    hard_stop: CancellationToken,
    tracker: TaskTracker,
}

/// The readers and forwarders of the shards this replica holds.
pub struct ShardTasks {
    shared: Shared,
    running: HashMap<String, Running>,
}

impl Readers for ShardTasks {
    fn start(&mut self, shard: &str, from: &LeaseCheckpoint) {
        let (start, committed) = match from {
            LeaseCheckpoint::TrimHorizon => (Start::TrimHorizon, None),
            LeaseCheckpoint::Latest => (Start::Latest, None),
            LeaseCheckpoint::At(position) => {
                (Start::Resume(position.clone()), Some(position.clone()))
            }
            LeaseCheckpoint::ShardEnd => return,
        };
        let progress = Arc::new(Progress::new(committed));
        let stop = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        spawn_shard(
            &tracker,
            &self.shared,
            shard,
            start,
            Arc::clone(&progress),
            stop.clone(),
            hard_stop.clone(),
        );
        tracker.close();
        self.running.insert(
            shard.to_string(),
            Running {
                progress,
                stop,
                hard_stop,
                tracker,
            },
        );
    }

    fn stop(&mut self, shard: &str, now: bool) {
        if let Some(running) = self.running.get(shard) {
            running.stop.cancel();
            if now {
                running.hard_stop.cancel();
            }
        }
    }

    fn status(&self, shard: &str) -> Option<ReaderStatus> {
        let running = self.running.get(shard)?;
        let snapshot = running.progress.snapshot();
        Some(ReaderStatus {
            committed: snapshot.committed,
            finished: snapshot.finished,
            stopped: running.tracker.is_empty(),
        })
    }

    fn remove(&mut self, shard: &str) {
        self.running.remove(shard);
    }
}

impl ShardTasks {
    /// Every task (of held and dropped shards alike) has exited.
    fn all_exited(&self) -> bool {
        self.running.values().all(|r| r.tracker.is_empty())
    }

    fn stop_all_now(&self) {
        for running in self.running.values() {
            running.stop.cancel();
            running.hard_stop.cancel();
        }
    }
}

pub(crate) async fn run(
    settings: &Settings,
    leases: &LeaseSettings,
    shared: Shared,
    listing: Vec<ShardInfo>,
    health: &ConsumeHealth,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let timing = Timing {
        failover: leases.failover,
    };
    let client = dynamo::client(
        settings.region.as_deref(),
        leases.dynamodb_endpoint_url.as_deref(),
    )
    .await?;
    let metrics = Arc::clone(&shared.metrics);
    // One call retries for up to a renewal interval; the engine also bounds every call by the
    // hold limit of the leases it holds.
    let store = DynamoStore::new(
        client,
        &leases.table,
        timing.renew_interval(),
        Arc::clone(&metrics),
    );
    store.ensure_table(leases.create_table).await?;
    let kinesis = shared.context.client.clone();
    let new_leases = match settings.from {
        StartFrom::TrimHorizon => NewLeases::TrimHorizon,
        StartFrom::Latest => NewLeases::Latest,
    };
    let tasks = ShardTasks {
        shared,
        running: HashMap::new(),
    };
    let mut engine = Engine::new(
        store,
        tasks,
        leases.worker_id.clone(),
        timing,
        new_leases,
        metrics,
    );
    // Ready before the line that says so: the log line is what scripts and tests wait for.
    health.ready.store(true, Ordering::Relaxed);
    info!(stream = %settings.stream, delivery_stream = %settings.delivery_stream, shards = listing.len(), lease_table = %leases.table, worker_id = %leases.worker_id, failover = ?leases.failover, "consuming with leases");

    let mut listing = Some(listing);
    let mut last_listed = Instant::now();
    let mut ticker = tokio::time::interval(STEP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => break,
        }
        if listing.is_none() && last_listed.elapsed() >= LIST_INTERVAL {
            match shards::list(&kinesis, &settings.stream).await {
                Ok(shards) => listing = Some(shards),
                Err(error) => warn!(%error, "listshards failed; keeping the shards known"),
            }
            last_listed = Instant::now();
        }
        engine.step(listing.as_deref()).await;
        listing = None;
    }

    info!(grace_period = ?settings.grace_period, leases = engine.held().len(), "stopping: forwarding what was read, then releasing the leases");
    engine.stop_reading();
    let deadline = Instant::now() + settings.grace_period;
    while !engine.drained() && Instant::now() < deadline {
        tokio::time::sleep(STEP_INTERVAL).await;
        engine.step_draining().await;
    }
    if !engine.drained() {
        warn!(
            "grace period over; abandoning what is not forwarded (it stays ahead of the checkpoint)"
        );
        engine.stop_now();
    }
    engine.release_all().await;
    engine.readers().stop_all_now();
    let exit_deadline = Instant::now() + Duration::from_secs(5);
    while !engine.readers().all_exited() && Instant::now() < exit_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
