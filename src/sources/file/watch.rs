//! Wake-ups from the file system: a `notify` watcher on the directories of the patterns and of
//! the open files.
//!
//! Events are hints only: they end the idle wait early, and a create, remove or rename asks for a
//! rescan. The periodic rescan stays the truth, so a watcher that fails (inotify limits, a
//! directory that does not exist yet) costs latency, never data.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

use notify::event::ModifyKind;
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tracing::{debug, warn};

/// Why the wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wake {
    Timeout,
    /// Data changed in a watched directory.
    Data,
    /// Files were created, removed or renamed: rescan.
    Layout,
}

pub(super) struct Wakeup {
    watcher: Option<RecommendedWatcher>,
    events: Receiver<Wake>,
    watched: BTreeSet<PathBuf>,
}

impl Wakeup {
    pub(super) fn new() -> Self {
        let (sender, events) = mpsc::channel();
        let handler = move |event: notify::Result<Event>| {
            let wake = match event.map(|event| event.kind) {
                Ok(EventKind::Create(_) | EventKind::Remove(_))
                | Ok(EventKind::Modify(ModifyKind::Name(_))) => Wake::Layout,
                Ok(EventKind::Access(_)) => return,
                Ok(_) => Wake::Data,
                // An overflowed queue may have lost a rename: rescan.
                Err(_) => Wake::Layout,
            };
            // The receiver is gone only when the source stopped.
            let _ = sender.send(wake);
        };
        let watcher = match notify::recommended_watcher(handler) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                warn!(%error, "file system watcher unavailable, relying on periodic rescans");
                None
            }
        };
        Wakeup {
            watcher,
            events,
            watched: BTreeSet::new(),
        }
    }

    /// Watch exactly `dirs` (non-recursively).
    pub(super) fn watch(&mut self, dirs: BTreeSet<PathBuf>) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        for gone in self.watched.difference(&dirs) {
            // Fails when the directory was deleted, which also removed the watch.
            let _ = watcher.unwatch(gone);
        }
        let mut watched = BTreeSet::new();
        for dir in dirs {
            if self.watched.contains(&dir) {
                watched.insert(dir);
                continue;
            }
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watched.insert(dir);
                }
                Err(error) => debug!(dir = %dir.display(), %error, "cannot watch directory"),
            }
        }
        self.watched = watched;
    }

    /// Whether files were created, removed or renamed since the last look, without waiting
    /// (between reads, while data keeps coming).
    pub(super) fn layout_changed(&mut self) -> bool {
        let mut layout = false;
        while let Ok(wake) = self.events.try_recv() {
            layout |= wake == Wake::Layout;
        }
        layout
    }

    /// Wait up to `timeout` for an event; drain the others so a burst wakes once.
    pub(super) fn wait(&mut self, timeout: Duration) -> Wake {
        let first = match self.events.recv_timeout(timeout) {
            Ok(wake) => wake,
            Err(RecvTimeoutError::Timeout) => return Wake::Timeout,
            Err(RecvTimeoutError::Disconnected) => {
                // No watcher (its sender was dropped): a plain sleep.
                std::thread::sleep(timeout);
                return Wake::Timeout;
            }
        };
        let mut wake = first;
        while let Ok(next) = self.events.try_recv() {
            if next == Wake::Layout {
                wake = Wake::Layout;
            }
        }
        wake
    }
}
