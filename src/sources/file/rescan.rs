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
use std::time::Instant;

use tracing::{info, warn};

use super::discover::{self, Problem};
use super::fingerprint::{self, Check};
use super::tracked::TrackedFile;
use super::{FileSource, ReadFrom};
use crate::ack::{FileCheckpoint, FileId, FileProgress};

/// How a newly opened file was placed.
pub(super) enum Start {
    /// Found where it was matched, attached to that path.
    Matched { first_scan: bool },
    /// Found by its checkpoint under another name, after a rotation while the shipper was down.
    Renamed(FileCheckpoint),
}

impl FileSource {
    pub(super) fn rescan(&mut self, now: Instant) {
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
        for (path, id) in found {
            if !self.files.contains_key(&id) {
                self.open(&path, Start::Matched { first_scan }, now);
            }
        }
        if first_scan {
            self.recover_renamed(&path_of, now);
        }
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
    fn recover_renamed(&mut self, path_of: &HashMap<FileId, PathBuf>, now: Instant) {
        let lost: Vec<FileCheckpoint> = self
            .pending_checkpoints
            .values()
            .filter(|checkpoint| !path_of.contains_key(&checkpoint.id))
            .cloned()
            .collect();
        for checkpoint in lost {
            self.pending_checkpoints.remove(&checkpoint.id);
            match discover::find_renamed(&checkpoint) {
                Some(path) => self.open(&path, Start::Renamed(checkpoint), now),
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
    }

    /// Open `path`, decide where to start it, and track it.
    pub(super) fn open(&mut self, path: &Path, start: Start, now: Instant) {
        let file = match discover::open(path) {
            Ok(file) => file,
            Err(error) => {
                let problem = Problem::from_error(&error);
                self.problems
                    .note(path, problem, Some(&error), &mut self.stats);
                return;
            }
        };
        // The handle's identity is the truth: the path may have changed since it was stat'ed.
        let meta: Metadata = match file.metadata() {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => {
                self.problems
                    .note(path, Problem::Special, None, &mut self.stats);
                return;
            }
            Err(error) => {
                let problem = Problem::from_error(&error);
                self.problems
                    .note(path, problem, Some(&error), &mut self.stats);
                return;
            }
        };
        let id = discover::file_id(&meta);
        if self.files.contains_key(&id) {
            return;
        }
        let size = meta.len();
        let fingerprint = match fingerprint::compute(&file, size) {
            Ok(fingerprint) => fingerprint,
            Err(error) => {
                let problem = Problem::from_error(&error);
                self.problems
                    .note(path, problem, Some(&error), &mut self.stats);
                return;
            }
        };
        let (checkpoint, attached, first_scan) = match start {
            Start::Matched { first_scan } => {
                (self.pending_checkpoints.remove(&id), true, first_scan)
            }
            Start::Renamed(checkpoint) => (Some(checkpoint), false, false),
        };
        let (offset, how) = match checkpoint {
            Some(checkpoint) => match fingerprint::check(&file, size, checkpoint.fingerprint) {
                Ok(Check::Same | Check::Grew(_)) if checkpoint.offset <= size => {
                    (checkpoint.offset, "resumed from checkpoint")
                }
                Ok(_) if !attached => {
                    warn!(path = %path.display(), "renamed file no longer matches its checkpoint");
                    self.stats.checkpoints_lost += 1;
                    return;
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
        let mut tracked = match TrackedFile::new(
            progress.clone(),
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
                return;
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
    }
}
