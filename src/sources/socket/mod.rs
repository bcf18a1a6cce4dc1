//! `--socket URL`: records sent by Python's logging handlers (or any syslog or line sender) over
//! a local socket, spooled to disk before they go on.
//!
//! ```text
//! listener task ─decode─▶ spool (disk) ─▶ spool reader thread ─▶ record builders ─▶ batcher ...
//!                           ▲ sync, release                                              │ acks
//!                           └──────────────── keeper task ◀── spool progress ◀───────────┘
//! ```
//! The listener never waits for the pipeline: it appends to the spool and reads on. The spool
//! reader hands entries to the record builders only while they have room, like the file source.
//! Acknowledgements advance the spool's committed offset over a contiguous prefix, through the
//! same [`FileProgress`] a file uses; the keeper stores it and deletes delivered segments.
//!
//! The decoders are pure code, no I/O: the listeners feed bytes in and take
//! [`framing::Decoded`] records out.
//! - [`framing`]: where records begin and end (`auto`, `python`, `syslog`, `lines`), bounded
//!   buffers, errors and warnings with stable kinds.
//! - [`pickle`]: the pickles of Python's `SocketHandler`/`DatagramHandler`, decoded as data with
//!   bounded work; nothing is executed.
//! - [`envelope`]: a LogRecord dict → the JSON envelope (the celery envelope's keys and more).
//! - [`syslog`]: RFC 5424, RFC 3164 and Python's `SysLogHandler` → the same kind of envelope.

pub mod envelope;
pub mod framing;
pub mod listen;
pub mod metrics;
pub mod pickle;
pub mod syslog;
pub mod url;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::ack::{FileId, FileProgress, Fingerprint};
use crate::pipeline::records::RecordBuilder;
use crate::sources::file::{Line, LineKind, LineSink};
use crate::spool::{self, Item, Kind, Spool};
use listen::{Context, Settings};
use metrics::SocketMetrics;

/// Most spool bytes read at once.
const READ_BYTES: usize = 256 * 1024;
/// How often a pipeline that is full is asked again.
const READY_POLL: Duration = Duration::from_millis(5);
/// Longest the spool reader sleeps with nothing to read (an append wakes it at once; the builders
/// hand on what they hold as soon as a read comes back empty, so this only bounds idle checks).
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// One socket input's settings besides the listener's.
pub struct SpoolSettings {
    pub dir: PathBuf,
    pub config: spool::Config,
    /// How often appended records are fsynced.
    pub sync_interval: Duration,
    /// How often the committed offset is stored (when it moved).
    pub ack_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("socket {url}: cannot open the spool in {dir}: {source}")]
    Spool {
        url: String,
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Bind(#[from] listen::BindError),
    #[error("socket {url}: cannot start the spool reader thread: {source}")]
    Thread { url: String, source: std::io::Error },
}

/// A running socket input.
pub struct SocketInput {
    url: String,
    spool: Spool,
    progress: Arc<FileProgress>,
    listener: tokio::task::JoinHandle<()>,
    reader: Option<JoinHandle<()>>,
    keeper: tokio::task::JoinHandle<()>,
    stop_keeper: CancellationToken,
}

/// The spool directory of a socket: named after its address (not its framing), so changing the
/// framing keeps the records spooled before.
pub fn spool_dir(data_dir: &Path, url: &str) -> PathBuf {
    let address = url.split('?').next().unwrap_or(url);
    let mut slug: String = address
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    slug.truncate(80);
    let hash = crc32fast::hash(address.as_bytes());
    data_dir.join("spool").join(format!("{slug}-{hash:08x}"))
}

impl SocketInput {
    /// Open the spool, bind the socket and start reading both. `envelopes` builds records from
    /// decoded Python and syslog records (JSON objects), `text` from lines (`--format`).
    /// `stop` stops the listener and the spool reader; [`SocketInput::finish`] ends the rest.
    pub fn start(
        settings: Settings,
        spool_settings: SpoolSettings,
        builders: [RecordBuilder; 2],
        metrics: Arc<SocketMetrics>,
        index: usize,
        stop: CancellationToken,
    ) -> Result<SocketInput, StartError> {
        let url = settings.url.text.clone();
        let (spool, recovery) =
            Spool::open(&spool_settings.dir, spool_settings.config).map_err(|source| {
                StartError::Spool {
                    url: url.clone(),
                    dir: spool_settings.dir.clone(),
                    source,
                }
            })?;
        SocketMetrics::add(&metrics.spool_cut_bytes_total, recovery.cut_bytes);
        if recovery.cut_bytes > 0 {
            warn!(socket = %url, bytes = recovery.cut_bytes, cuts = recovery.cuts, "cut torn or corrupt entries off the spool");
        }
        if recovery.pending_entries > 0 {
            info!(socket = %url, records = recovery.pending_entries, "sending records spooled before the restart");
        }
        let _ = metrics.spool.set(spool.clone());
        let bound = listen::bind(&settings)?;
        info!(socket = %url, spool = %spool_settings.dir.display(), "listening");

        // The spool's progress is not a file's: it lives outside the checkpoint registry, under
        // an identity no file has (no device is numbered u64::MAX). With the entry's offset it
        // also makes each record's `id`, unique across restarts and pods.
        let progress = FileProgress::new(
            FileId {
                dev: u64::MAX,
                ino: spool.id(),
            },
            PathBuf::from(&url),
            Fingerprint::default(),
            recovery.start,
        );
        let context = Arc::new(Context::new(spool.clone(), Arc::clone(&metrics), &settings));
        let listener = tokio::spawn(listen::serve(
            bound,
            context,
            settings.max_connections,
            stop.clone(),
        ));
        let reader = {
            let reader = spool.reader(recovery.start);
            let progress = Arc::clone(&progress);
            let stop = stop.clone();
            let path = PathBuf::from(&url);
            std::thread::Builder::new()
                .name(format!("shipper-socket-{index}"))
                .spawn(move || read_spool(reader, progress, path, builders, stop))
                .map_err(|source| StartError::Thread {
                    url: url.clone(),
                    source,
                })?
        };
        let stop_keeper = CancellationToken::new();
        let keeper = tokio::spawn(keep(
            spool.clone(),
            Arc::clone(&progress),
            spool_settings.sync_interval,
            spool_settings.ack_interval,
            stop_keeper.clone(),
        ));
        Ok(SocketInput {
            url,
            spool,
            progress,
            listener,
            reader: Some(reader),
            keeper,
            stop_keeper,
        })
    }

    /// After `stop`: wait for the listener (its last records are spooled) and the spool reader
    /// (what it read is handed on).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.listener).await;
        if let Some(reader) = self.reader.take() {
            let _ = tokio::task::spawn_blocking(move || reader.join()).await;
        }
    }

    /// After the pipeline drained: store the final committed offset and sync the spool.
    pub async fn finish(self) {
        self.stop_keeper.cancel();
        let _ = self.keeper.await;
        let spool = self.spool.clone();
        let committed = self.progress.committed();
        let url = self.url.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(error) = spool.sync() {
                error!(socket = %url, %error, "cannot sync the spool");
            }
            if let Err(error) = spool.release(committed) {
                error!(socket = %url, %error, "cannot store the spool's committed offset");
            }
            spool.close();
        })
        .await;
    }
}

/// The spool reader thread: entries → record builders, while they have room.
fn read_spool(
    mut reader: spool::Reader,
    progress: Arc<FileProgress>,
    path: PathBuf,
    mut builders: [RecordBuilder; 2],
    stop: CancellationToken,
) {
    let mut closed = false;
    while !stop.is_cancelled() && !closed {
        let ready = builders
            .iter_mut()
            .try_fold(true, |all, b| b.ready().map(|r| all && r));
        match ready {
            Err(_) => break,
            Ok(false) => {
                closed = idle(&mut builders);
                std::thread::sleep(READY_POLL);
                continue;
            }
            Ok(true) => {}
        }
        let read_at = Instant::now();
        let read = reader.read(READ_BYTES, |item| match item {
            Item::Entry {
                kind,
                payload,
                start,
                end,
            } => {
                let builder = &mut builders[match kind {
                    Kind::Envelope => 0,
                    Kind::Text => 1,
                }];
                let line = Line {
                    file: &progress,
                    path: &path,
                    data: payload,
                    start,
                    end,
                    kind: LineKind::Complete,
                    read_at,
                };
                if builder.line(line).is_err() {
                    closed = true;
                }
            }
            Item::Skipped { start, end } => progress.token(start, end).ack(),
        });
        match read {
            Ok(0) => {
                closed |= idle(&mut builders);
                reader.wait(IDLE_WAIT);
            }
            Ok(_) => {}
            Err(error) => {
                error!(path = %path.display(), %error, "cannot read the spool; trying again in a second");
                closed |= idle(&mut builders);
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    for builder in &mut builders {
        let _ = builder.finish();
    }
}

/// Let the builders hand on what they hold; true when the pipeline is gone.
fn idle(builders: &mut [RecordBuilder; 2]) -> bool {
    let now = Instant::now();
    builders.iter_mut().any(|b| b.idle(now).is_err())
}

/// Sync the spool `sync_interval` after an append, and store the committed offset (deleting
/// delivered segments) `ack_interval` after it moved. Sleeps while neither happens, so an idle
/// socket costs no wake-ups.
async fn keep(
    spool: Spool,
    progress: Arc<FileProgress>,
    sync_interval: Duration,
    ack_interval: Duration,
    stop: CancellationToken,
) {
    let moved = Arc::new(tokio::sync::Notify::new());
    progress.watch(Arc::clone(&moved));
    let mut released = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = spool.appended() => {}
            _ = moved.notified() => {}
        }
        // Let a burst of appends and acknowledgements gather into one sync and one store.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(sync_interval.min(ack_interval)) => {}
        }
        let committed = progress.committed();
        let release = released != Some(committed);
        let spool = spool.clone();
        let result = tokio::task::spawn_blocking(move || {
            let synced = spool.sync();
            let stored = if release {
                spool.release(committed).map_err(|e| e.to_string())
            } else {
                Ok(())
            };
            (synced, stored)
        })
        .await;
        let path = progress.checkpoint().path;
        match result {
            Ok((synced, stored)) => {
                if let Err(error) = synced {
                    error!(spool = %path.display(), %error, "cannot sync the spool");
                }
                match stored {
                    Ok(()) => released = Some(committed),
                    Err(error) => {
                        error!(spool = %path.display(), %error, "cannot store the spool's committed offset")
                    }
                }
            }
            Err(join_error) => error!(%join_error, "spool keeper failed"),
        }
    }
}
