//! Rescan: expand the globs, reconcile what the paths name now with the files already open, and
//! open new files at the right offset (checkpoint, `read_from`, or 0).
//!
//! Reconciliation, by identity (device + inode of the path's target):
//! - an open file still found at its path: nothing to do;
//! - an open file found at another matched path: renamed within the globs, keep reading;
//! - an open file no longer found: rotated away, deleted, or its symlink retargeted; it is
//!   detached and drained through its open handle (see `tracked`);
//! - a file not open yet: opened.

use std::collections::{HashMap, HashSet};
use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::{info, warn};

use super::discover::{self, Problem};
use super::fingerprint::{self, Check};
use super::opener::{self, Opened};
use super::tracked::TrackedFile;
use super::{Closed, FileSource, LineSink, LossReason, ReadFrom};
use crate::ack::{FileCheckpoint, FileId, FileProgress};

/// How a newly opened file was placed.
pub(super) enum Start {
    /// Found where it was matched, attached to that path.
    Matched { first_scan: bool },
    /// Found by its checkpoint under another name, after a rotation while the shipper was down.
    Renamed(FileCheckpoint),
    /// Opened by the opener at this path, which no longer names it: rotated away before a pass
    /// could look. Read from the start.
    Rotated,
}

impl FileSource {
    pub(super) fn rescan(&mut self, now: Instant, sink: &mut dyn LineSink) -> Result<(), Closed> {
        let first_scan = !self.started;
        self.started = true;
        let paths = discover::expand(&self.config.include, &mut self.problems, &mut self.stats);
        let matched: HashSet<PathBuf> = paths.iter().cloned().collect();
        let mut found: Vec<(PathBuf, FileId)> = Vec::new();
        let mut path_of: HashMap<FileId, PathBuf> = HashMap::new();
        for path in paths {
            match discover::stat(&path) {
                Ok(meta) => {
                    let id = discover::file_id(&meta);
                    // Two matched paths to one file (a link and its target): the first one wins.
                    if let std::collections::hash_map::Entry::Vacant(slot) = path_of.entry(id) {
                        slot.insert(path.clone());
                        found.push((path, id));
                    }
                }
                Err((problem, error)) => {
                    self.problems
                        .note(&path, problem, error.as_ref(), &mut self.stats)
                }
            }
        }
        self.problems.retain_matched(&matched);
        self.reconcile(now, &path_of);
        // Files rotated away while the shipper was down come first in the reading order: they
        // are older than whatever now has their name.
        if first_scan {
            self.recover_renamed(&path_of, now, sink)?;
        }
        for (path, id) in found {
            if !self.files.contains_key(&id) {
                let preopened = self.preopened.remove(&id);
                self.open(&path, Start::Matched { first_scan }, now, sink, preopened)?;
            }
        }
        // Opened by the opener, and no matched path names them any more: older generations than
        // whatever has their path now, so first in the reading order (their numbers are lower).
        let mut rotated: Vec<Opened> = self.preopened.drain().map(|(_, o)| o).collect();
        rotated.sort_by_key(|o| o.seq);
        for opened in rotated {
            if !self.files.contains_key(&opened.id) {
                let path = opened.path.clone();
                self.open(&path, Start::Rotated, now, sink, Some(opened))?;
            }
        }
        self.stats.peak_open_files = self.stats.peak_open_files.max(self.files.len() as u64);
        Ok(())
    }

    /// Follow open files whose path changed; detach those no path names any more.
    fn reconcile(&mut self, now: Instant, path_of: &HashMap<FileId, PathBuf>) {
        for (id, file) in self.files.iter_mut() {
            match path_of.get(id) {
                Some(path) if file.is_attached() && file.path() == path => {}
                Some(path) => {
                    info!(from = %file.path().display(), to = %path.display(), "file renamed");
                    if file.is_attached() {
                        self.stats.rotations += 1;
                    }
                    file.attach(path);
                    self.layout_version += 1;
                }
                None if file.is_attached() => {
                    let replaced = discover::stat(file.path()).is_ok();
                    if replaced {
                        self.stats.rotations += 1;
                        info!(path = %file.path().display(), "file rotated, draining the old one");
                    } else {
                        self.stats.deletions += 1;
                        info!(path = %file.path().display(), "file deleted or moved away, draining it");
                    }
                    file.detach(now);
                }
                None => {}
            }
        }
    }

    /// Startup: checkpoints whose file no path matches were probably renamed by a rotation while
    /// the shipper was down. Find them in their directory and finish reading them.
    fn recover_renamed(
        &mut self,
        path_of: &HashMap<FileId, PathBuf>,
        now: Instant,
        sink: &mut dyn LineSink,
    ) -> Result<(), Closed> {
        let lost: Vec<FileCheckpoint> = self
            .pending_checkpoints
            .values()
            .filter(|checkpoint| !path_of.contains_key(&checkpoint.id))
            .cloned()
            .collect();
        let mut renamed = Vec::new();
        for checkpoint in lost {
            self.pending_checkpoints.remove(&checkpoint.id);
            match discover::find_renamed(&checkpoint) {
                Some((path, modified)) => renamed.push((modified, path, checkpoint)),
                None => {
                    self.stats.checkpoints_lost += 1;
                    warn!(
                        path = %checkpoint.path.display(),
                        offset = checkpoint.offset,
                        "checkpointed file is gone; whatever it held past the checkpoint is lost"
                    );
                }
            }
        }
        // Oldest generation first.
        renamed.sort_by_key(|a| a.0);
        for (_, path, checkpoint) in renamed {
            self.open(&path, Start::Renamed(checkpoint), now, sink, None)?;
        }
        Ok(())
    }

    /// Make room for one more open file: close the oldest file that no path names any more
    /// (its unread rest is lost), or, when every open file still has its name, say no: the new
    /// file keeps its name too and is opened at a later rescan.
    fn make_room(&mut self, path: &Path, sink: &mut dyn LineSink) -> Result<bool, Closed> {
        if self.files.len() < self.config.max_open_files {
            return Ok(true);
        }
        let oldest_detached = self
            .files
            .iter()
            .filter(|(_, file)| !file.is_attached())
            .min_by_key(|(_, file)| file.seq())
            .map(|(id, _)| *id);
        match oldest_detached {
            Some(id) => {
                self.close_unread(id, LossReason::MaxOpenFiles, sink)?;
                Ok(true)
            }
            None => {
                self.stats.opens_deferred += 1;
                self.problems
                    .note(path, Problem::TooManyOpen, None, &mut self.stats);
                Ok(false)
            }
        }
    }

    /// Open `path` (or adopt the opener's handle for it), decide where to start it, and track it.
    pub(super) fn open(
        &mut self,
        path: &Path,
        start: Start,
        now: Instant,
        sink: &mut dyn LineSink,
        preopened: Option<Opened>,
    ) -> Result<(), Closed> {
        if !self.make_room(path, sink)? {
            return Ok(());
        }
        let (opened, seq) = match preopened {
            Some(opened) => (Ok(opened.file), Some(opened.seq)),
            None => (discover::open(path), None),
        };
        let file = match opened {
            Ok(file) => file,
            Err(error) => {
                let problem = Problem::from_error(&error);
                self.problems
                    .note(path, problem, Some(&error), &mut self.stats);
                return Ok(());
            }
        };
        // The handle's identity is the truth: the path may have changed since it was stat'ed.
        let meta: Metadata = match file.metadata() {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => {
                self.problems
                    .note(path, Problem::Special, None, &mut self.stats);
                return Ok(());
            }
            Err(error) => {
                let problem = Problem::from_error(&error);
                self.problems
                    .note(path, problem, Some(&error), &mut self.stats);
                return Ok(());
            }
        };
        let id = discover::file_id(&meta);
        if self.files.contains_key(&id) {
            return Ok(());
        }
        opener::lock(&self.seen).insert(id);
        let size = meta.len();
        let fingerprint = match fingerprint::compute(&file, size) {
            Ok(fingerprint) => fingerprint,
            Err(error) => {
                let problem = Problem::from_error(&error);
                self.problems
                    .note(path, problem, Some(&error), &mut self.stats);
                return Ok(());
            }
        };
        let (checkpoint, attached, first_scan, origin) = match start {
            Start::Rotated => (None, false, false, path.to_path_buf()),
            Start::Matched { first_scan } => (
                self.pending_checkpoints.remove(&id),
                true,
                first_scan,
                path.to_path_buf(),
            ),
            Start::Renamed(checkpoint) => {
                let origin = checkpoint.path.clone();
                (Some(checkpoint), false, false, origin)
            }
        };
        let (offset, how) = match checkpoint {
            Some(checkpoint) => match fingerprint::check(&file, size, checkpoint.fingerprint) {
                Ok(Check::Same | Check::Grew(_)) if checkpoint.offset <= size => {
                    (checkpoint.offset, "resumed from checkpoint")
                }
                Ok(_) if !attached => {
                    warn!(path = %path.display(), "renamed file no longer matches its checkpoint");
                    self.stats.checkpoints_lost += 1;
                    return Ok(());
                }
                // Same inode, other content: a reused inode or a rewrite while we were down.
                _ => (
                    0,
                    "checkpoint does not match the file, reading from the start",
                ),
            },
            None if first_scan
                && self.config.read_from == ReadFrom::End
                && !self.checkpoint_paths.contains(path) =>
            {
                (size, "existing file, reading from its end")
            }
            None => (0, "reading from the start"),
        };
        let progress = FileProgress::new(id, path.to_path_buf(), fingerprint, offset);
        let seq = seq.unwrap_or_else(|| self.next_seq.fetch_add(1, Ordering::Relaxed));
        let mut tracked = match TrackedFile::new(
            progress.clone(),
            seq,
            origin,
            path.to_path_buf(),
            file,
            offset,
            fingerprint,
            &self.config,
            now,
        ) {
            Ok(tracked) => tracked,
            Err(error) => {
                let problem = Problem::from_error(&error);
                self.problems
                    .note(path, problem, Some(&error), &mut self.stats);
                return Ok(());
            }
        };
        if !attached {
            tracked.detach(now);
        }
        self.registry.insert(progress);
        self.problems.clear(path);
        self.stats.files_opened += 1;
        self.layout_version += 1;
        info!(path = %path.display(), offset, size, how, "file opened");
        self.files.insert(id, tracked);
        Ok(())
    }
}
