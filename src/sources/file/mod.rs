//! File source: tails the files matched by a set of paths and globs and hands every line to a
//! [`LineSink`], with the byte range it came from so deliveries can be acknowledged in order.
//!
//! The source runs on one dedicated blocking thread. [`FileSource::poll`] does one non-blocking pass
//! (rescan the globs when due, check each open file's identity and size, read what is new, fire the
//! partial-line and rotation timers); [`FileSource::run`] loops over it and sleeps on a `notify`
//! watcher between passes. The watcher is only a hint: the periodic rescan is the truth.
//!
//! Files are known by device and inode ([`FileId`]) plus a checksum of their first bytes
//! ([`Fingerprint`]), so a reused inode or a truncated-and-rewritten file is not mistaken for the one
//! a checkpoint was taken on. A file whose path stops naming it (rename rotation, deletion, symlink
//! retarget) is read to its end through the handle already open, then retired once it has been
//! idle for `rotate_wait`.
//!
//! Byte ranges: every byte read from a file generation is covered by exactly one emitted [`Line`],
//! in order and without gaps, newlines and dropped bytes included. The ack tracker advances a
//! checkpoint only over contiguous acknowledged ranges, so a gap would wedge it forever.
//!
//! Map: `discover` (globs, path problems, checkpoint recovery), `fingerprint`, `reader` (bytes to
//! lines), `tracked` (one open file), `rescan` (reconciling paths with open files), `watch` (notify).

mod discover;
mod fingerprint;
mod opener;
mod reader;
mod rescan;
mod tracked;
mod watch;

#[cfg(test)]
mod backpressure_tests;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::ack::{FileCheckpoint, FileId, FileProgress, Registry};

use self::discover::Problems;
use self::tracked::{FileStep, TrackedFile};

/// Where to start a file that exists when the source starts and has no checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadFrom {
    #[default]
    Beginning,
    /// Skip what the file holds at startup; ship only what is appended afterwards.
    End,
}

/// What to do with a line longer than `max_line_bytes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LongLinePolicy {
    /// Emit pieces of `max_line_bytes` as [`LineKind::Fragment`]; the last piece ends the line.
    #[default]
    Split,
    /// Emit the first `max_line_bytes` once as [`LineKind::Truncated`], its range covering the
    /// whole line; the rest of the line is read and dropped.
    Truncate,
}

pub const DEFAULT_MAX_OPEN_FILES: usize = 256;
pub const DEFAULT_MAX_HELD_DELETED_FOR: Duration = Duration::from_secs(3600);
pub const DEFAULT_MAX_HELD_DELETED_BYTES: u64 = 1024 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct FileSourceConfig {
    /// Literal paths or glob patterns, e.g. `/var/log/worker/*.log`.
    pub include: Vec<String>,
    /// Where to start a file that exists at startup and has no checkpoint. Files that appear
    /// later are always read from the beginning.
    pub read_from: ReadFrom,
    /// Longest line emitted as one piece (at least 1).
    pub max_line_bytes: usize,
    pub long_lines: LongLinePolicy,
    /// A last line without a newline is emitted as [`LineKind::Partial`] once its file has been
    /// quiet this long. Its bytes are never emitted again: what is appended later starts a new line.
    pub partial_line_timeout: Duration,
    /// A file rotated away or deleted is read until it has been idle at its end this long, then
    /// retired.
    pub rotate_wait: Duration,
    /// How often the globs are expanded again.
    pub rescan_interval: Duration,
    /// Size of one read (at least 2). Memory per file stays below
    /// `max_line_bytes + read_buffer_bytes`.
    pub read_buffer_bytes: usize,
    /// Most files held open at once (at least 1). When a new file needs a descriptor and every one
    /// is taken, the oldest rotated-away file is closed and its unread rest counted as lost; a
    /// file that still has its name is not lost by waiting, so it is opened later instead.
    pub max_open_files: usize,
    /// A deleted file is held open (its disk space with it) for at most this long ...
    pub max_held_deleted_for: Duration,
    /// ... and deleted files held open take at most this many bytes in all; past either, the
    /// oldest is closed and its unread rest counted as lost.
    pub max_held_deleted_bytes: u64,
}

impl Default for FileSourceConfig {
    fn default() -> Self {
        FileSourceConfig {
            include: Vec::new(),
            read_from: ReadFrom::Beginning,
            max_line_bytes: 1024 * 1024,
            long_lines: LongLinePolicy::Split,
            partial_line_timeout: Duration::from_secs(1),
            rotate_wait: Duration::from_secs(5),
            rescan_interval: Duration::from_secs(1),
            read_buffer_bytes: 64 * 1024,
            max_open_files: DEFAULT_MAX_OPEN_FILES,
            max_held_deleted_for: DEFAULT_MAX_HELD_DELETED_FOR,
            max_held_deleted_bytes: DEFAULT_MAX_HELD_DELETED_BYTES,
        }
    }
}

/// How a [`Line`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineKind {
    /// Ended by a newline.
    Complete,
    /// No newline arrived before the file went quiet (or was retired or truncated).
    Partial,
    /// A `max_line_bytes` piece of a longer line; more of the same line follows. The last piece of
    /// a split line is `Complete` (or `Partial`).
    Fragment,
    /// The first `max_line_bytes` of a longer line; the range covers the whole line.
    Truncated,
}

/// One line, borrowed from the source's read buffer.
#[derive(Debug)]
pub struct Line<'a> {
    pub file: &'a Arc<FileProgress>,
    /// The path the file was matched under (for a symlink, the link, not its target).
    pub path: &'a Path,
    /// The line without its `"\n"` or `"\r\n"`.
    pub data: &'a [u8],
    /// Byte range `[start, end)` in the file, newline (and dropped bytes) included.
    pub start: u64,
    pub end: u64,
    pub kind: LineKind,
    /// When the read that completed the line returned (one clock read per read, not per line):
    /// the multiline joiner's flush timeout counts from it.
    pub read_at: Instant,
}

/// The downstream is gone: the source stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line sink closed")]
pub struct Closed;

/// Where lines go.
///
/// `line` must take the line's acknowledgement token (`line.file.token(start, end)`) before it
/// returns: a truncation seen on the next pass starts a new generation of the file, and a token
/// taken after that would acknowledge bytes of the old content under the new generation.
pub trait LineSink {
    /// Err(Closed) means downstream is gone: stop.
    fn line(&mut self, line: Line<'_>) -> Result<(), Closed>;
    /// Called before the source waits for more data. Returns the downstream's own next deadline
    /// (e.g. a multiline flush timer) so the source wakes for it.
    fn idle(&mut self, now: Instant) -> Result<Option<Instant>, Closed>;
    /// Whether the downstream takes more lines now. While it does not, the source reads nothing
    /// more but goes on finding, opening and checking files: the open files are the buffer.
    /// `line` must still accept what comes while not ready (the end of a read, a rotated file's
    /// last partial line); the source asks before every read, so that stays small.
    fn ready(&mut self) -> Result<bool, Closed> {
        Ok(true)
    }
    /// Wait up to `timeout` for the downstream to become ready; returns whether it is.
    fn wait_ready(&mut self, timeout: Duration) -> Result<bool, Closed> {
        let _ = timeout;
        self.ready()
    }
    /// Bytes of a file were given up without being read (see [`Loss`]).
    fn lost(&mut self, loss: Loss) {
        let _ = loss;
    }
}

/// Why the unread rest of a file was given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LossReason {
    /// More files had to be held open than `max_open_files` allows.
    MaxOpenFiles,
    /// A deleted file was held open longer, or held more bytes, than `max_held_deleted` allows.
    MaxHeldDeleted,
    /// Copytruncate emptied the file before all of it was read: those bytes exist only in the
    /// copy.
    TruncatedUnread,
}

impl LossReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LossReason::MaxOpenFiles => "max_open_files",
            LossReason::MaxHeldDeleted => "max_held_deleted",
            LossReason::TruncatedUnread => "truncated_unread",
        }
    }
}

/// Bytes of one file that were never read and never will be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loss {
    pub reason: LossReason,
    pub bytes: u64,
}

/// What one [`FileSource::poll`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollOutcome {
    /// Bytes read in this pass. When non-zero, more may be waiting: poll again at once.
    pub bytes_read: u64,
    /// The next time a timer (rescan, partial line, rotation) is due.
    pub next_deadline: Option<Instant>,
}

/// Plain counters, for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileSourceStats {
    pub files_opened: u64,
    pub files_retired: u64,
    /// A path that named an open file now names another one (rename rotation, symlink retarget),
    /// or the open file moved to another matched path.
    pub rotations: u64,
    /// An open file's path vanished (deleted, or renamed out of the globs with nothing new yet).
    pub deletions: u64,
    /// Copytruncate or a rewrite of the same inode: the file is read again from 0.
    pub truncations: u64,
    /// Lines emitted (every piece counts).
    pub lines: u64,
    /// Bytes read.
    pub bytes: u64,
    pub partial_lines: u64,
    /// Long lines split into fragments (one per original line).
    pub lines_split: u64,
    pub lines_truncated: u64,
    pub read_errors: u64,
    /// Opening or inspecting a matched path failed for a reason other than those below.
    pub open_errors: u64,
    pub permission_denied: u64,
    /// A matched path vanished before it could be opened (or is a dangling symlink).
    pub vanished: u64,
    pub skipped_directories: u64,
    /// FIFOs, sockets, devices: never opened (opening a FIFO would block the source).
    pub skipped_special: u64,
    /// A checkpoint whose file could not be found again at startup.
    pub checkpoints_lost: u64,
    /// Files closed before their end (descriptor or deleted-file bounds), and the bytes given up
    /// with them and with truncations that came before the bytes were read.
    pub files_closed_unread: u64,
    pub bytes_lost: u64,
    /// A new file waited for a descriptor (every one held by a file that still has its name).
    pub opens_deferred: u64,
    /// Most files held open at once.
    pub peak_open_files: u64,
}

/// Longest a file is read in one pass before the others get their turn.
const READS_PER_FILE_PER_POLL: usize = 16;

/// Tails files; see the module documentation.
pub struct FileSource {
    config: FileSourceConfig,
    registry: Arc<Registry>,
    /// Open files, attached to a matched path or draining after rotation/deletion.
    files: BTreeMap<FileId, TrackedFile>,
    /// Checkpoints from the last run whose file has not been opened yet.
    pending_checkpoints: HashMap<FileId, FileCheckpoint>,
    /// Paths of the startup checkpoints: a file found at one of them without its own checkpoint
    /// replaced a checkpointed file while the shipper was down, so it is read from 0.
    checkpoint_paths: HashSet<PathBuf>,
    problems: Problems,
    next_rescan: Option<Instant>,
    rescan_requested: bool,
    started: bool,
    /// Bumped when the set of open files changes, so `run` knows to update its watches.
    layout_version: u64,
    /// The next file's place in the reading order, shared with the opener.
    next_seq: Arc<AtomicU64>,
    /// The thread that opens new files as they appear (while `run` runs), and the files it
    /// opened that no pass has adopted yet.
    opener: Option<opener::Opener>,
    preopened: HashMap<FileId, opener::Opened>,
    /// Every file opened lately, by this thread or the opener.
    seen: opener::SharedSeen,
    stats: FileSourceStats,
}

impl FileSource {
    pub fn new(
        mut config: FileSourceConfig,
        registry: Arc<Registry>,
        initial: Vec<FileCheckpoint>,
    ) -> Self {
        // The reader needs room for one byte past a full line (a held "\r") plus a read.
        config.max_line_bytes = config.max_line_bytes.max(1);
        config.read_buffer_bytes = config.read_buffer_bytes.max(2);
        config.max_open_files = config.max_open_files.max(1);
        let checkpoint_paths = initial.iter().map(|c| c.path.clone()).collect();
        let pending_checkpoints = initial.into_iter().map(|c| (c.id, c)).collect();
        FileSource {
            config,
            registry,
            files: BTreeMap::new(),
            pending_checkpoints,
            checkpoint_paths,
            problems: Problems::default(),
            next_rescan: None,
            rescan_requested: false,
            started: false,
            layout_version: 0,
            next_seq: Arc::default(),
            opener: None,
            preopened: HashMap::new(),
            seen: opener::SharedSeen::default(),
            stats: FileSourceStats::default(),
        }
    }

    pub fn stats(&self) -> &FileSourceStats {
        &self.stats
    }

    /// Rescan the globs on the next poll, whatever the interval says (a watcher saw a file
    /// created, removed or renamed).
    pub fn request_rescan(&mut self) {
        self.rescan_requested = true;
    }

    /// One pass without blocking: rescan the globs if due, check identity and truncation of the
    /// open files, read what is new from each, emit lines, fire timers. Deterministic given `now`.
    pub fn poll(&mut self, now: Instant, sink: &mut dyn LineSink) -> Result<PollOutcome, Closed> {
        self.take_preopened();
        let rescan_due = self.rescan_requested || self.next_rescan.is_none_or(|at| now >= at);
        if rescan_due {
            self.rescan_requested = false;
            self.next_rescan = Some(now + self.config.rescan_interval);
            self.rescan(now, sink)?;
        }
        let budget = self.config.read_buffer_bytes * READS_PER_FILE_PER_POLL;
        let mut bytes_read = 0;
        let mut next_deadline = self.next_rescan;
        let mut retired = Vec::new();
        // Oldest first; a file waits while an older generation of its path has unread bytes, so
        // rotated files are read in the order they were written, each to its end.
        let mut order: Vec<(u64, FileId)> =
            self.files.iter().map(|(id, f)| (f.seq(), *id)).collect();
        order.sort_unstable();
        let mut unfinished: Vec<PathBuf> = Vec::new();
        for (_, id) in order {
            let Some(file) = self.files.get_mut(&id) else {
                continue;
            };
            let may_read = !unfinished.iter().any(|origin| origin == file.origin());
            let step = file.poll(
                now,
                rescan_due,
                budget,
                may_read,
                &self.config,
                sink,
                &mut self.stats,
            )?;
            bytes_read += step.bytes_read;
            if !step.at_end && may_read && !file.is_failing() {
                unfinished.push(file.origin().to_path_buf());
            }
            match step.next {
                FileStep::Retire => retired.push(id),
                FileStep::WakeAt(at) => next_deadline = earliest(next_deadline, Some(at)),
                FileStep::Wait => {}
            }
        }
        if let Some(at) = self.bound_held_deleted(now, sink)? {
            next_deadline = earliest(next_deadline, Some(at));
        }
        for id in retired {
            self.files.remove(&id);
            self.layout_version += 1;
            self.stats.files_retired += 1;
        }
        Ok(PollOutcome {
            bytes_read,
            next_deadline,
        })
    }

    /// The blocking loop: poll while data keeps coming; when idle, call `sink.idle` and wait for a
    /// watcher event or the next deadline, whichever comes first. Returns when `cancel` is
    /// cancelled or the sink is closed.
    ///
    /// The loop never blocks on the sink. While the sink is full it reads nothing, but a watcher
    /// event still starts a rescan at once, so a file created and rotated away meanwhile is opened
    /// (and its content kept reachable by the descriptor) within milliseconds.
    pub fn run(mut self, cancel: CancellationToken, sink: &mut dyn LineSink) {
        // The token has no blocking wait, so the idle wait is cut into slices this long; it bounds
        // how late a cancellation is noticed.
        const CANCEL_CHECK: Duration = Duration::from_millis(100);
        // While the sink is full: how often it is asked again (watcher events end a wait at once),
        // and how often the open files are checked without an event.
        const FULL_CHECK: Duration = Duration::from_millis(5);
        const FULL_POLL: Duration = Duration::from_millis(100);
        let mut wakeup = watch::Wakeup::new();
        // The patterns' directories are watched before the first scan, so nothing created
        // while that scan runs goes unnoticed until the next periodic rescan.
        wakeup.watch(self.watch_dirs());
        self.opener = opener::Opener::spawn(
            self.config.include.clone(),
            Arc::clone(&self.next_seq),
            Arc::clone(&self.seen),
        );
        let mut watched_version = None;
        while !cancel.is_cancelled() {
            let now = Instant::now();
            let Ok(outcome) = self.poll(now, sink) else {
                return;
            };
            if watched_version != Some(self.layout_version) {
                wakeup.watch(self.watch_dirs());
                watched_version = Some(self.layout_version);
            }
            let Ok(ready) = sink.ready() else {
                return;
            };
            if outcome.bytes_read > 0 && ready {
                // Busy reading: still look at the watcher between passes, so a file that lives
                // for milliseconds (a fast rotation) is opened before it is renamed or deleted.
                if wakeup.layout_changed() {
                    self.request_rescan();
                }
                continue;
            }
            let Ok(downstream) = sink.idle(now) else {
                return;
            };
            let deadline = earliest(outcome.next_deadline, downstream);
            if !ready {
                let until = earliest(deadline, Some(now + FULL_POLL)).unwrap_or(now);
                loop {
                    let left = until.saturating_duration_since(Instant::now());
                    if wakeup.wait(left.min(FULL_CHECK)) == watch::Wake::Layout {
                        self.request_rescan();
                        break;
                    }
                    match sink.ready() {
                        Ok(true) => break,
                        Ok(false) if Instant::now() >= until || cancel.is_cancelled() => break,
                        Ok(false) => {}
                        Err(Closed) => return,
                    }
                }
                continue;
            }
            let timeout = deadline
                .map_or(CANCEL_CHECK, |at| {
                    at.saturating_duration_since(Instant::now())
                })
                .min(CANCEL_CHECK);
            if wakeup.wait(timeout) == watch::Wake::Layout {
                self.request_rescan();
            }
        }
    }

    /// Files the opener opened since the last pass: the rescan places them.
    fn take_preopened(&mut self) {
        let Some(opener) = &self.opener else {
            return;
        };
        for opened in opener.files.try_iter() {
            if !self.files.contains_key(&opened.id) {
                self.preopened.insert(opened.id, opened);
                self.rescan_requested = true;
            }
        }
    }

    /// Close deleted files held too long or holding too much disk, oldest first. Returns when
    /// the next one would be due.
    fn bound_held_deleted(
        &mut self,
        now: Instant,
        sink: &mut dyn LineSink,
    ) -> Result<Option<Instant>, Closed> {
        let mut held: Vec<(u64, FileId, Instant, u64)> = self
            .files
            .iter()
            .filter_map(|(id, file)| {
                let bytes = file.held_deleted_bytes()?;
                Some((file.seq(), *id, file.detached_at()?, bytes))
            })
            .collect();
        if held.is_empty() {
            return Ok(None);
        }
        held.sort_unstable();
        let mut total: u64 = held.iter().map(|h| h.3).sum();
        let mut next = None;
        for (_, id, detached_at, bytes) in held {
            let expires = detached_at + self.config.max_held_deleted_for;
            if total > self.config.max_held_deleted_bytes || now >= expires {
                self.close_unread(id, LossReason::MaxHeldDeleted, sink)?;
                total -= bytes;
            } else {
                next = earliest(next, Some(expires));
            }
        }
        Ok(next)
    }

    /// Close a file before its end and count what is given up.
    fn close_unread(
        &mut self,
        id: FileId,
        reason: LossReason,
        sink: &mut dyn LineSink,
    ) -> Result<(), Closed> {
        let Some(file) = self.files.remove(&id) else {
            return Ok(());
        };
        let path = file.path().to_path_buf();
        let bytes = file.give_up(sink, &mut self.stats)?;
        self.layout_version += 1;
        self.stats.files_closed_unread += 1;
        self.stats.bytes_lost += bytes;
        error!(
            path = %path.display(),
            bytes_lost = bytes,
            reason = reason.as_str(),
            "closing a file before it was read to its end; its unread bytes are lost"
        );
        sink.lost(Loss { reason, bytes });
        Ok(())
    }

    /// Directories worth watching: the literal part of each pattern, and where the open files
    /// (and their symlink targets) live.
    fn watch_dirs(&self) -> BTreeSet<PathBuf> {
        let mut dirs: BTreeSet<PathBuf> = self
            .config
            .include
            .iter()
            .filter_map(|pattern| discover::literal_dir(pattern))
            .collect();
        for file in self.files.values() {
            dirs.extend(file.watch_dirs());
        }
        dirs
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}
