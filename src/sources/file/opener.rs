//! The opener: a thread that opens new files the moment they appear, whatever the reading thread
//! is doing.
//!
//! A fast rotation (Python's `RotatingFileHandler` with a small `maxBytes`, a burst of logging)
//! can create a file, fill it, rename it to a name no pattern matches and delete it again within
//! tens of milliseconds. The reading thread may be in the middle of a pass for that long, so it
//! cannot be the one to notice: this thread does nothing but wait for the watcher's
//! create-and-rename events on the patterns' directories, expand the patterns, and open every
//! matched file it has not opened yet. The open descriptor keeps the file's content reachable
//! through any later rename or delete; the reading thread adopts it at its next pass.
//!
//! Each file opened gets the next number of a sequence shared with the reading thread, so
//! generations of one path are read in the order they appeared.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

use notify::event::ModifyKind;
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::discover;
use crate::ack::FileId;

/// Files opened but not yet adopted by the reading thread, at most. Past this, the opener waits
/// for the reading thread (which drains them at every pass) rather than holding ever more
/// descriptors.
const PENDING_OPENS: usize = 64;
/// How soon a full hand-over to the reading thread is tried again.
const FULL_RETRY: Duration = Duration::from_millis(2);
/// How often the thread looks at the cancellation while no event comes.
const CANCEL_CHECK: Duration = Duration::from_millis(100);

/// A file the opener opened: the path it was matched at, its handle and identity, and its place
/// in the reading order.
#[derive(Debug)]
pub(super) struct Opened {
    pub path: PathBuf,
    pub file: File,
    pub id: FileId,
    pub seq: u64,
}

/// The running opener; dropping it stops the thread.
pub(super) struct Opener {
    pub files: Receiver<Opened>,
    cancel: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Opener {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Opener {
    /// Start watching the directories of `include` (those that exist; the reading thread's
    /// periodic rescan covers the rest). `None` when no watcher can be had.
    pub(super) fn spawn(include: Vec<String>, seq: Arc<AtomicU64>) -> Option<Opener> {
        let (events_tx, events) = mpsc::channel::<()>();
        let handler = move |event: notify::Result<Event>| {
            let layout = match event.map(|event| event.kind) {
                Ok(EventKind::Create(_)) | Ok(EventKind::Modify(ModifyKind::Name(_))) => true,
                Ok(_) => false,
                // An overflowed queue may have lost a creation.
                Err(_) => true,
            };
            if layout {
                let _ = events_tx.send(());
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(watcher) => watcher,
            Err(error) => {
                warn!(%error, "file system watcher unavailable for opening new files early");
                return None;
            }
        };
        let dirs: BTreeSet<PathBuf> = include
            .iter()
            .filter_map(|pattern| discover::literal_dir(pattern))
            .collect();
        for dir in &dirs {
            if let Err(error) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                debug!(dir = %dir.display(), %error, "cannot watch directory for new files");
            }
        }
        let (files_tx, files) = mpsc::sync_channel(PENDING_OPENS);
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let thread = std::thread::Builder::new()
            .name("shipper-opener".into())
            .spawn(move || {
                // The watcher lives as long as the loop.
                let _watcher = watcher;
                run(&include, &events, &files_tx, &seq, &stop);
            });
        match thread {
            Ok(thread) => Some(Opener {
                files,
                cancel,
                thread: Some(thread),
            }),
            Err(error) => {
                warn!(%error, "cannot start the thread that opens new files early");
                None
            }
        }
    }
}

fn run(
    include: &[String],
    events: &Receiver<()>,
    files: &SyncSender<Opened>,
    seq: &AtomicU64,
    stop: &CancellationToken,
) {
    // What each matched path named when it was last opened here.
    let mut known: HashMap<PathBuf, FileId> = HashMap::new();
    while !stop.is_cancelled() {
        match events.recv_timeout(CANCEL_CHECK) {
            Ok(()) => {}
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        }
        // A burst of events is one look.
        while events.try_recv().is_ok() {}
        let paths = discover::expand_quietly(include);
        known.retain(|path, _| paths.contains(path));
        for path in paths {
            let Ok(meta) = discover::stat(&path) else {
                continue;
            };
            let id = discover::file_id(&meta);
            if known.get(&path) == Some(&id) {
                continue;
            }
            let Ok(file) = discover::open(&path) else {
                continue;
            };
            // The handle's identity is the truth: the path may have changed since the stat.
            let Ok(meta) = file.metadata() else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let id = discover::file_id(&meta);
            known.insert(path.clone(), id);
            let opened = Opened {
                path,
                file,
                id,
                seq: seq.fetch_add(1, Ordering::Relaxed),
            };
            // The reading thread drains at every pass; wait for it rather than drop the file,
            // but never past a stop (the receiver lives until this thread is joined).
            let mut pending = opened;
            loop {
                match files.try_send(pending) {
                    Ok(()) => break,
                    Err(TrySendError::Full(opened)) if !stop.is_cancelled() => {
                        pending = opened;
                        std::thread::sleep(FULL_RETRY);
                    }
                    Err(_) => return,
                }
            }
        }
    }
}
