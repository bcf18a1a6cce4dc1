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
mod reader;
mod rescan;
mod tracked;
mod watch;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

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
        let rescan_due = self.rescan_requested || self.next_rescan.is_none_or(|at| now >= at);
        if rescan_due {
            self.rescan_requested = false;
            self.next_rescan = Some(now + self.config.rescan_interval);
            self.rescan(now);
        }
        let budget = self.config.read_buffer_bytes * READS_PER_FILE_PER_POLL;
        let mut bytes_read = 0;
        let mut next_deadline = self.next_rescan;
        let mut retired = Vec::new();
        for (id, file) in self.files.iter_mut() {
            let step = file.poll(now, rescan_due, budget, &self.config, sink, &mut self.stats)?;
            bytes_read += step.bytes_read;
            match step.next {
                FileStep::Retire => retired.push(*id),
                FileStep::WakeAt(at) => next_deadline = earliest(next_deadline, Some(at)),
                FileStep::Wait => {}
            }
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
    pub fn run(mut self, cancel: CancellationToken, sink: &mut dyn LineSink) {
        // The token has no blocking wait, so the idle wait is cut into slices this long; it bounds
        // how late a cancellation is noticed.
        const CANCEL_CHECK: Duration = Duration::from_millis(100);
        let mut wakeup = watch::Wakeup::new();
        let mut watched_version = None;
        while !cancel.is_cancelled() {
            let now = Instant::now();
            let Ok(outcome) = self.poll(now, sink) else {
                return;
            };
            if outcome.bytes_read > 0 {
                continue;
            }
            if watched_version != Some(self.layout_version) {
                wakeup.watch(self.watch_dirs());
                watched_version = Some(self.layout_version);
            }
            let Ok(downstream) = sink.idle(now) else {
                return;
            };
            let timeout = earliest(outcome.next_deadline, downstream)
                .map_or(CANCEL_CHECK, |at| {
                    at.saturating_duration_since(Instant::now())
                })
                .min(CANCEL_CHECK);
            if wakeup.wait(timeout) == watch::Wake::Layout {
                self.request_rescan();
            }
        }
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
