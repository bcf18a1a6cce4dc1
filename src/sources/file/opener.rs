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
//!
//! When even this thread is too late (a loaded machine, a rotation every few milliseconds), the
//! generation it missed has already been renamed to a name no pattern matches (`app.log.1`), but
//! usually still exists. A rename away from a matched path names it: the thread opens the new name
//! unless that file was opened before, by either thread ([`Seen`]), and hands it over as a
//! generation of the path it was renamed from. Renames are handled before the patterns, so the
//! missed generation usually comes before the one that replaced it in the reading order; when the
//! rename reaches this thread after the next generation was opened, it comes after it.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use notify::event::{ModifyKind, RenameMode};
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

/// Files opened by the source (either thread) this many opens back are remembered, so that a
/// rename of one is not taken for a generation nobody opened.
const SEEN_CAPACITY: usize = 4096;

/// The files the source opened, the most recent [`SEEN_CAPACITY`], shared by both threads.
#[derive(Debug, Default)]
pub(super) struct Seen {
    ids: HashSet<FileId>,
    order: VecDeque<FileId>,
}

impl Seen {
    /// Remember `id`; false when it was already known.
    pub(super) fn insert(&mut self, id: FileId) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > SEEN_CAPACITY
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        true
    }
}

pub(super) type SharedSeen = Arc<Mutex<Seen>>;

pub(super) fn lock(seen: &SharedSeen) -> MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the watcher tells the thread: look at the patterns again, and a rename it saw whole.
enum Look {
    Layout,
    Renamed { from: PathBuf, to: PathBuf },
}

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
    pub(super) fn spawn(
        include: Vec<String>,
        seq: Arc<AtomicU64>,
        seen: SharedSeen,
    ) -> Option<Opener> {
        let (events_tx, events) = mpsc::channel::<Look>();
        let handler = move |event: notify::Result<Event>| match event {
            Ok(event) => match event.kind {
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                    if let [from, to] = &event.paths[..] {
                        let _ = events_tx.send(Look::Renamed {
                            from: from.clone(),
                            to: to.clone(),
                        });
                    }
                    let _ = events_tx.send(Look::Layout);
                }
                EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(_)) => {
                    let _ = events_tx.send(Look::Layout);
                }
                _ => {}
            },
            // An overflowed queue may have lost a creation.
            Err(_) => {
                let _ = events_tx.send(Look::Layout);
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
                run(&include, &events, &files_tx, &seq, &seen, &stop);
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
    events: &Receiver<Look>,
    files: &SyncSender<Opened>,
    seq: &AtomicU64,
    seen: &SharedSeen,
    stop: &CancellationToken,
) {
    // What each matched path named when it was last opened here.
    let mut known: HashMap<PathBuf, FileId> = HashMap::new();
    let mut renames = Vec::new();
    while !stop.is_cancelled() {
        let first = match events.recv_timeout(CANCEL_CHECK) {
            Ok(look) => look,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // A burst of events is one look.
        for look in std::iter::once(first).chain(events.try_iter()) {
            if let Look::Renamed { from, to } = look {
                renames.push((from, to));
            }
        }
        for (from, to) in renames.drain(..) {
            if !discover::matches(include, &from) || discover::matches(include, &to) {
                continue;
            }
            let Some((file, id)) = open_file(&to) else {
                continue;
            };
            if !lock(seen).insert(id) {
                continue;
            }
            debug!(from = %from.display(), to = %to.display(), "opened a generation renamed away before it was opened");
            let opened = Opened {
                path: from,
                file,
                id,
                seq: seq.fetch_add(1, Ordering::Relaxed),
            };
            if !hand_over(files, opened, stop) {
                return;
            }
        }
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
            let Some((file, id)) = open_file(&path) else {
                continue;
            };
            known.insert(path.clone(), id);
            lock(seen).insert(id);
            let opened = Opened {
                path,
                file,
                id,
                seq: seq.fetch_add(1, Ordering::Relaxed),
            };
            if !hand_over(files, opened, stop) {
                return;
            }
        }
    }
}

/// Open `path` if it is a regular file; the handle's identity is the truth (the path may have
/// changed since any stat).
fn open_file(path: &std::path::Path) -> Option<(File, FileId)> {
    let file = discover::open(path).ok()?;
    let meta = file.metadata().ok()?;
    meta.is_file().then(|| (file, discover::file_id(&meta)))
}

/// Give `opened` to the reading thread. It drains at every pass; wait for it rather than drop
/// the file, but never past a stop (the receiver lives until this thread is joined). False when
/// the thread should end.
fn hand_over(files: &SyncSender<Opened>, opened: Opened, stop: &CancellationToken) -> bool {
    let mut pending = opened;
    loop {
        match files.try_send(pending) {
            Ok(()) => return true,
            Err(TrySendError::Full(opened)) if !stop.is_cancelled() => {
                pending = opened;
                std::thread::sleep(FULL_RETRY);
            }
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Instant;

    use super::*;

    fn id_of(path: &std::path::Path) -> FileId {
        discover::file_id(&std::fs::metadata(path).expect("stat"))
    }

    /// A generation created and renamed away before the opener could look is still handed over,
    /// as a generation of the matched path.
    #[test]
    fn a_generation_renamed_away_before_it_was_opened_is_handed_over() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let opener = Opener::spawn(
            vec![log.to_str().unwrap().to_string()],
            Arc::default(),
            SharedSeen::default(),
        )
        .expect("a watcher");

        // Created, written and rotated away at once, then replaced: the way a fast
        // RotatingFileHandler does it.
        let mut first = std::fs::File::create(&log).unwrap();
        first.write_all(b"first generation\n").unwrap();
        drop(first);
        std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
        std::fs::write(&log, b"second generation\n").unwrap();
        let first_id = id_of(&dir.path().join("app.log.1"));
        let second_id = id_of(&log);

        let mut got: Vec<Opened> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(got.iter().any(|o| o.id == first_id) && got.iter().any(|o| o.id == second_id)) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "handed over only {got:?}");
            if let Ok(opened) = opener.files.recv_timeout(left) {
                got.push(opened);
            }
        }
        let first = got.iter().find(|o| o.id == first_id).unwrap();
        assert_eq!(first.path, log, "a generation of the matched path");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut &first.file, &mut text).unwrap();
        assert_eq!(text, "first generation\n");
        drop(opener);
    }

    /// The files opened lately are remembered, up to a bound, oldest forgotten first.
    #[test]
    fn seen_remembers_the_latest_files() {
        let mut seen = Seen::default();
        let id = |ino| FileId { dev: 1, ino };
        assert!(seen.insert(id(0)));
        assert!(!seen.insert(id(0)), "known already");
        for ino in 1..=SEEN_CAPACITY as u64 {
            assert!(seen.insert(id(ino)));
        }
        assert!(seen.insert(id(0)), "the oldest is forgotten past the bound");
        assert!(!seen.insert(id(SEEN_CAPACITY as u64)));
    }
}
