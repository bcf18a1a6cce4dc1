//! The checkpointer: writes the files' committed offsets soon after they move, and never when
//! nothing moved.
//!
//! It sleeps on the registry's change signal. The first change after a quiet spell is written at
//! once; changes that follow within `interval` of a write are coalesced into one write at the end
//! of it. So a `kill -9` resends at most about `interval` of acknowledged sending, a busy shipper
//! writes at most `1 / interval` times a second, and an idle one writes nothing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::ack::{FileCheckpoint, Registry};
use crate::telemetry::server::Health;

/// How often the loop proves it is alive to `/healthz`, whether or not it writes.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Write the checkpoints whenever they changed, at most once per `interval`, until `stop`.
/// `store` writes one snapshot; a failed write is retried at the next change or heartbeat.
pub async fn run<S, F>(
    registry: Arc<Registry>,
    interval: Duration,
    health: Arc<Health>,
    stop: CancellationToken,
    mut store: S,
) where
    S: FnMut(Vec<FileCheckpoint>) -> F,
    F: Future<Output = Result<(), String>>,
{
    let mut last: Option<Vec<FileCheckpoint>> = None;
    let mut last_write: Option<Instant> = None;
    let mut retry = false;
    loop {
        let heartbeat = tokio::time::sleep(HEARTBEAT);
        tokio::select! {
            () = registry.changed() => {}
            () = heartbeat, if !retry => {
                health.beat();
                continue;
            }
            () = tokio::time::sleep(HEARTBEAT), if retry => {}
            () = stop.cancelled() => return,
        }
        health.beat();
        // Coalesce: no sooner than `interval` after the last write.
        if let Some(at) = last_write {
            tokio::select! {
                () = tokio::time::sleep_until(at + interval) => {}
                () = stop.cancelled() => return,
            }
        }
        let files = registry.snapshot();
        if last.as_ref() == Some(&files) {
            retry = false;
            continue;
        }
        last_write = Some(Instant::now());
        match store(files.clone()).await {
            Ok(()) => {
                last = Some(files);
                retry = false;
            }
            Err(error) => {
                warn!(%error, "cannot write checkpoints; retrying");
                retry = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::ack::{FileId, FileProgress, Fingerprint};

    /// Each write's time and the offset it wrote.
    type Writes = Arc<Mutex<Vec<(Instant, u64)>>>;

    fn start(interval: Duration) -> (Arc<Registry>, Arc<FileProgress>, Writes, CancellationToken) {
        let registry = Arc::new(Registry::default());
        let progress = FileProgress::new(
            FileId { dev: 1, ino: 2 },
            "/var/log/a.log".into(),
            Fingerprint::default(),
            0,
        );
        registry.insert(Arc::clone(&progress));
        let writes: Writes = Arc::default();
        let stop = CancellationToken::new();
        let health = Arc::new(Health::new(Arc::default(), None, Arc::clone(&registry)));
        let recorded = Arc::clone(&writes);
        tokio::spawn(run(
            Arc::clone(&registry),
            interval,
            health,
            stop.clone(),
            move |files: Vec<FileCheckpoint>| {
                recorded
                    .lock()
                    .unwrap()
                    .push((Instant::now(), files[0].offset));
                async { Ok(()) }
            },
        ));
        (registry, progress, writes, stop)
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_acknowledgement_is_written_within_the_interval_and_nothing_while_idle() {
        let interval = Duration::from_millis(100);
        let (_registry, progress, writes, stop) = start(interval);
        settle().await;
        // The registration itself is written once.
        assert_eq!(writes.lock().unwrap().len(), 1);

        // Idle: a minute passes, nothing is written.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(writes.lock().unwrap().len(), 1);

        // An acknowledgement after a quiet spell is on disk at once.
        let acked_at = Instant::now();
        progress.token(0, 10).ack();
        settle().await;
        let (at, offset) = *writes.lock().unwrap().last().unwrap();
        assert_eq!(offset, 10);
        assert!(
            at - acked_at <= interval,
            "written {:?} after",
            at - acked_at
        );

        // A burst of acknowledgements is coalesced: one more write, within the interval.
        let burst_at = Instant::now();
        for end in (20..=100).step_by(10) {
            progress.token(end - 10, end).ack();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(interval * 2).await;
        let writes_now = writes.lock().unwrap().clone();
        let after_burst: Vec<_> = writes_now.iter().filter(|(at, _)| *at > burst_at).collect();
        assert!(
            (1..=2).contains(&after_burst.len()),
            "burst of 9 acks wrote {after_burst:?}"
        );
        let (last_at, last_offset) = *writes_now.last().unwrap();
        assert_eq!(last_offset, 100);
        let last_ack = burst_at + Duration::from_millis(5 * 8);
        assert!(last_at - last_ack <= interval);
        // Never two writes closer than the interval.
        assert!(
            writes_now
                .windows(2)
                .all(|w| w[1].0 - w[0].0 >= interval || w[0].1 == 0),
            "{writes_now:?}"
        );

        // Idle again: nothing more.
        let count = writes_now.len();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(writes.lock().unwrap().len(), count);
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn an_acknowledgement_that_does_not_move_the_checkpoint_writes_nothing() {
        let (_registry, progress, writes, stop) = start(Duration::from_millis(100));
        settle().await;
        let before = writes.lock().unwrap().len();
        // Beyond a gap: acknowledged, but the committed offset stays at 0.
        progress.token(50, 60).ack();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(writes.lock().unwrap().len(), before);
        stop.cancel();
    }
}
