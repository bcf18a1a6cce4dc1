//! One open file: its handle, its line reader, its identity checks and its timers.
//!
//! A tracked file is *attached* while a matched path names it. Once detached (the path was
//! renamed away, deleted, or a symlink retargeted), the open handle is still read to the end,
//! since the writer may append for a moment; when it has been idle at its end for `rotate_wait`
//! the file is retired: its progress learns the final offset and the handle is closed.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, error, info, warn};

use super::fingerprint::{self, Check};
use super::reader::{Emitter, LineReader};
use super::{Closed, FileSourceConfig, FileSourceStats, LineSink, Loss, LossReason};
use crate::ack::{FileProgress, Fingerprint};

/// What a file needs after a pass.
pub(super) enum FileStep {
    /// Nothing timed: wait for data.
    Wait,
    /// A timer (partial line, rotation) fires then.
    WakeAt(Instant),
    /// Read to its end and idle long enough after detaching: close it.
    Retire,
}

pub(super) struct FilePoll {
    pub bytes_read: u64,
    /// The file was read to its end in this pass.
    pub at_end: bool,
    pub next: FileStep,
}

pub(super) struct TrackedFile {
    progress: Arc<FileProgress>,
    /// Order of opening: older generations of one path are read before newer ones.
    seq: u64,
    /// The path the file was first found at; generations of one origin are read in `seq` order.
    origin: PathBuf,
    /// The path the file was found at (the link, for a symlink).
    path: PathBuf,
    /// Directory of the file itself (the symlink target's), for the watcher.
    real_dir: Option<PathBuf>,
    file: File,
    reader: LineReader,
    fingerprint: Fingerprint,
    last_size: u64,
    /// No name links to the file any more: it holds disk space until it is closed.
    deleted: bool,
    /// When bytes last arrived (or the file was opened).
    last_data_at: Instant,
    /// When the path stopped naming this file.
    detached_at: Option<Instant>,
    /// A read or stat error is logged once until the file reads again.
    error_logged: bool,
}

impl TrackedFile {
    /// `file` is positioned nowhere in particular: the reader seeks it to `offset`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        progress: Arc<FileProgress>,
        seq: u64,
        origin: PathBuf,
        path: PathBuf,
        mut file: File,
        offset: u64,
        fingerprint: Fingerprint,
        config: &FileSourceConfig,
        now: Instant,
    ) -> io::Result<Self> {
        file.seek(SeekFrom::Start(offset))?;
        let real_dir = std::fs::canonicalize(&path)
            .ok()
            .and_then(|real| real.parent().map(Path::to_path_buf));
        Ok(TrackedFile {
            progress,
            seq,
            origin,
            path,
            real_dir,
            file,
            reader: LineReader::new(
                offset,
                config.max_line_bytes,
                config.read_buffer_bytes,
                config.long_lines,
            ),
            fingerprint,
            last_size: offset,
            deleted: false,
            last_data_at: now,
            detached_at: None,
            error_logged: false,
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn is_attached(&self) -> bool {
        self.detached_at.is_none()
    }

    /// Reading or inspecting the file keeps failing: it is not waited for.
    pub(super) fn is_failing(&self) -> bool {
        self.error_logged
    }

    pub(super) fn seq(&self) -> u64 {
        self.seq
    }

    pub(super) fn origin(&self) -> &Path {
        &self.origin
    }

    /// When the path stopped naming the file, if it did.
    pub(super) fn detached_at(&self) -> Option<Instant> {
        self.detached_at
    }

    /// Deleted (no link left) and still held open: the disk space it takes, as last seen.
    pub(super) fn held_deleted_bytes(&self) -> Option<u64> {
        self.deleted.then_some(self.last_size)
    }

    /// Close the file before its end: emit what the reader holds, let the progress end where
    /// reading stopped, and return how many bytes are given up.
    pub(super) fn give_up(
        mut self,
        sink: &mut dyn LineSink,
        stats: &mut FileSourceStats,
    ) -> Result<u64, Closed> {
        self.emitter(sink, stats).flush()?;
        let end = self.reader.read_offset();
        let size = self
            .file
            .metadata()
            .map_or(self.last_size, |meta| meta.len());
        self.progress.retire(end);
        Ok(size.saturating_sub(end))
    }

    pub(super) fn watch_dirs(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .into_iter()
            .chain(self.real_dir.clone())
    }

    #[cfg(test)]
    pub(super) fn reader(&self) -> &LineReader {
        &self.reader
    }

    /// The path no longer names this file: drain it, then retire it.
    pub(super) fn detach(&mut self, now: Instant) {
        if self.detached_at.is_none() {
            self.detached_at = Some(now);
        }
    }

    /// A matched path names this file again (renamed within the globs, or back).
    pub(super) fn attach(&mut self, path: &Path) {
        self.detached_at = None;
        if self.path != path {
            self.path = path.to_path_buf();
            self.progress.set_path(path);
        }
    }

    /// One pass: check identity and size, read up to `budget` bytes (none unless `may_read`, and
    /// only while the sink is ready), fire timers.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn poll(
        &mut self,
        now: Instant,
        verify: bool,
        budget: usize,
        may_read: bool,
        config: &FileSourceConfig,
        sink: &mut dyn LineSink,
        stats: &mut FileSourceStats,
    ) -> Result<FilePoll, Closed> {
        self.check_identity(verify, sink, stats)?;
        let (bytes_read, at_end) = if may_read {
            self.read_available(budget, sink, stats)?
        } else {
            (0, false)
        };
        if bytes_read > 0 {
            self.last_data_at = now;
        }
        let mut next = None;
        // A line without its newline is only final once the file's end was reached and stayed
        // quiet: while reading is paused (or the budget ran out) the rest may be right behind it.
        if self.reader.has_pending() && at_end {
            let due = self.last_data_at + config.partial_line_timeout;
            if now >= due {
                self.emitter(sink, stats).flush()?;
            } else {
                next = Some(due);
            }
        }
        if let Some(detached_at) = self.detached_at {
            let due = self.last_data_at.max(detached_at) + config.rotate_wait;
            if at_end && now >= due {
                self.emitter(sink, stats).flush()?;
                let end = self.reader.read_offset();
                self.progress.retire(end);
                info!(path = %self.path.display(), offset = end, "file retired");
                return Ok(FilePoll {
                    bytes_read: bytes_read as u64,
                    at_end,
                    next: FileStep::Retire,
                });
            }
            next = Some(next.map_or(due, |at: Instant| at.min(due)));
        }
        Ok(FilePoll {
            bytes_read: bytes_read as u64,
            at_end,
            next: next.map_or(FileStep::Wait, FileStep::WakeAt),
        })
    }

    fn emitter<'a>(
        &'a mut self,
        sink: &'a mut dyn LineSink,
        stats: &'a mut FileSourceStats,
    ) -> Flusher<'a> {
        Flusher {
            reader: &mut self.reader,
            out: Emitter {
                progress: &self.progress,
                path: &self.path,
                sink,
                stats,
                read_at: Instant::now(),
            },
        }
    }

    /// Notice a truncation (size below what was read) or a rewrite (first bytes changed), and
    /// grow the fingerprint while the file is shorter than its maximum.
    fn check_identity(
        &mut self,
        verify: bool,
        sink: &mut dyn LineSink,
        stats: &mut FileSourceStats,
    ) -> Result<(), Closed> {
        let size = match self.file.metadata() {
            Ok(meta) => {
                self.deleted = meta.nlink() == 0;
                meta.len()
            }
            Err(error) => {
                self.note_error(&error, stats);
                return Ok(());
            }
        };
        let changed = if size < self.reader.read_offset() {
            Some("truncated")
        } else if verify || size != self.last_size {
            match fingerprint::check(&self.file, size, self.fingerprint) {
                Ok(Check::Same) => None,
                Ok(Check::Grew(grown)) => {
                    self.fingerprint = grown;
                    self.progress.set_fingerprint(grown);
                    None
                }
                Ok(Check::Changed(_)) => Some("rewritten"),
                Err(error) => {
                    self.note_error(&error, stats);
                    None
                }
            }
        } else {
            None
        };
        let unread_before = self.last_size.saturating_sub(self.reader.read_offset());
        self.last_size = size;
        if let Some(how) = changed {
            if how == "truncated" && unread_before > 0 {
                // Written, then truncated away before it could be read: only the copy has it.
                stats.bytes_lost += unread_before;
                error!(
                    path = %self.path.display(),
                    bytes_lost = unread_before,
                    "file truncated before it was read to its end; those bytes are only in the copy"
                );
                sink.lost(Loss {
                    reason: LossReason::TruncatedUnread,
                    bytes: unread_before,
                });
            }
            self.restart_from_zero(how, size, sink, stats)?;
        }
        Ok(())
    }

    /// Copytruncate (or a rewrite of the same inode): read the file again from 0 under a new
    /// generation of its progress.
    ///
    /// Lines the writer appended after our last read and before the truncation are lost: they
    /// only exist in the copy, which the globs usually do not match. That race belongs to
    /// copytruncate itself; rename rotation does not have it.
    fn restart_from_zero(
        &mut self,
        how: &'static str,
        size: u64,
        sink: &mut dyn LineSink,
        stats: &mut FileSourceStats,
    ) -> Result<(), Closed> {
        // What was read before belongs to the old generation: emit it before the reset, so its
        // tokens are taken under that generation.
        self.emitter(sink, stats).flush()?;
        let fingerprint = fingerprint::compute(&self.file, size).unwrap_or_default();
        info!(
            path = %self.path.display(),
            offset = self.reader.read_offset(),
            size,
            how,
            "file truncated, reading it again from the start"
        );
        stats.truncations += 1;
        self.progress.reset(fingerprint, 0);
        self.fingerprint = fingerprint;
        self.reader.reset(0);
        if let Err(error) = self.file.seek(SeekFrom::Start(0)) {
            self.note_error(&error, stats);
        }
        Ok(())
    }

    /// Read until the end of the file or `budget` bytes. Returns the bytes read and whether the
    /// end was reached.
    fn read_available(
        &mut self,
        budget: usize,
        sink: &mut dyn LineSink,
        stats: &mut FileSourceStats,
    ) -> Result<(usize, bool), Closed> {
        let mut total = 0;
        let mut out = Emitter {
            progress: &self.progress,
            path: &self.path,
            sink,
            stats,
            read_at: Instant::now(),
        };
        while total < budget {
            if !out.sink.ready()? {
                return Ok((total, false));
            }
            match self.file.read(self.reader.spare()) {
                Ok(0) => return Ok((total, true)),
                Ok(n) => {
                    total += n;
                    out.read_at = Instant::now();
                    out.stats.bytes += n as u64;
                    self.error_logged = false;
                    self.reader.consume(n, &mut out)?;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    if !self.error_logged {
                        self.error_logged = true;
                        out.stats.read_errors += 1;
                        warn!(path = %self.path.display(), %error, "read failed, will retry");
                    }
                    return Ok((total, false));
                }
            }
        }
        Ok((total, false))
    }

    fn note_error(&mut self, error: &io::Error, stats: &mut FileSourceStats) {
        if self.error_logged {
            debug!(path = %self.path.display(), %error, "file still failing");
            return;
        }
        self.error_logged = true;
        stats.read_errors += 1;
        warn!(path = %self.path.display(), %error, "inspecting open file failed, will retry");
    }
}

/// The reader and an emitter borrowed together from one tracked file.
struct Flusher<'a> {
    reader: &'a mut LineReader,
    out: Emitter<'a>,
}

impl Flusher<'_> {
    fn flush(mut self) -> Result<(), Closed> {
        self.reader.flush(&mut self.out)
    }
}
