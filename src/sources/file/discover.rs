//! Finding files: glob expansion, sorting matched paths into files and problems, and looking for a
//! checkpointed file that was renamed away while the shipper was down.
//!
//! A path's problem (permission denied, a directory, a FIFO, a dangling symlink...) is logged and
//! counted once, when it first appears or changes, not at every rescan; it is forgotten when the
//! path opens or stops matching. A pattern that matches no file yet is logged once at WARN (a new
//! user's typo would otherwise be silent), and its first file once at INFO.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tracing::{debug, info, warn};

use super::FileSourceStats;
use crate::ack::{FileCheckpoint, FileId};

/// Why a matched path is not being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Problem {
    /// Gone between listing and opening, or a dangling symlink.
    Vanished,
    PermissionDenied,
    Directory,
    /// FIFO, socket, device.
    Special,
    /// Every descriptor the source may hold is taken by a file that still has its name.
    TooManyOpen,
    Other(io::ErrorKind),
}

impl Problem {
    pub(super) fn from_error(error: &io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::NotFound => Problem::Vanished,
            io::ErrorKind::PermissionDenied => Problem::PermissionDenied,
            kind => Problem::Other(kind),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Problems {
    by_path: HashMap<PathBuf, Problem>,
    /// Per include pattern: whether a file has matched it yet.
    patterns: HashMap<String, PatternState>,
}

/// What has been said about one include pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PatternState {
    /// Nothing matched it yet; the WARN was logged.
    Waiting,
    /// A file matched it; the INFO was logged. Said once: files come and go under a glob.
    Matched,
}

impl Problems {
    /// Record `problem` for `path`; log and count it unless it was already known.
    pub(super) fn note(
        &mut self,
        path: &Path,
        problem: Problem,
        detail: Option<&io::Error>,
        stats: &mut FileSourceStats,
    ) {
        if self.by_path.get(path) == Some(&problem) {
            return;
        }
        self.by_path.insert(path.to_path_buf(), problem);
        let path = path.display();
        let error = detail.map(ToString::to_string).unwrap_or_default();
        match problem {
            Problem::Vanished => {
                stats.vanished += 1;
                debug!(%path, %error, "matched path vanished before it could be opened");
            }
            Problem::PermissionDenied => {
                stats.permission_denied += 1;
                warn!(%path, %error, "permission denied, retrying at each rescan");
            }
            Problem::Directory => {
                stats.skipped_directories += 1;
                debug!(%path, "skipping a directory matched by the globs");
            }
            Problem::Special => {
                stats.skipped_special += 1;
                debug!(%path, "skipping a path that is not a regular file");
            }
            Problem::TooManyOpen => {
                warn!(
                    %path,
                    "not opening the file yet: every descriptor --max-open-files allows is taken by a file that is still being written; retrying at each rescan"
                );
            }
            Problem::Other(_) => {
                stats.open_errors += 1;
                warn!(%path, %error, "cannot open matched file, retrying at each rescan");
            }
        }
    }

    pub(super) fn clear(&mut self, path: &Path) {
        self.by_path.remove(path);
    }

    /// Forget problems of paths that no longer match.
    pub(super) fn retain_matched(&mut self, matched: &HashSet<PathBuf>) {
        self.by_path.retain(|path, _| matched.contains(path));
    }

    /// Note what `pattern` matched at this scan: the first time, a WARN when no file matches it
    /// (the shipper keeps looking at every rescan); later, an INFO when a file first does.
    fn note_matches(&mut self, pattern: &str, matched: &[PathBuf]) {
        let state = self.patterns.get(pattern).copied();
        if state == Some(PatternState::Matched) {
            return;
        }
        // A directory or a dangling link matched by the glob is not a file to read.
        match matched.iter().find(|path| stat(path).is_ok()) {
            Some(path) => {
                info!(%pattern, path = %path.display(), "a file matches the pattern");
                self.patterns
                    .insert(pattern.to_string(), PatternState::Matched);
            }
            None if state.is_none() => {
                warn!(
                    %pattern,
                    "nothing matches the pattern yet; the shipper keeps looking for it"
                );
                self.patterns
                    .insert(pattern.to_string(), PatternState::Waiting);
            }
            None => {}
        }
    }
}

/// True when `pattern` holds glob syntax.
fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// What one pattern matches now, and the errors met on the way (a directory that could not be
/// read). A literal path matches when an entry exists at it (a dangling symlink is reported by
/// the caller's stat).
fn expand_pattern(
    pattern: &str,
) -> Result<(Vec<PathBuf>, Vec<glob::GlobError>), glob::PatternError> {
    if !is_glob(pattern) {
        let path = PathBuf::from(pattern);
        let exists = fs::symlink_metadata(&path).is_ok();
        return Ok((if exists { vec![path] } else { Vec::new() }, Vec::new()));
    }
    let (mut paths, mut errors) = (Vec::new(), Vec::new());
    for entry in glob::glob(pattern)? {
        match entry {
            Ok(path) => paths.push(path),
            Err(error) => errors.push(error),
        }
    }
    Ok((paths, errors))
}

/// Every path the patterns match now, sorted and deduplicated; problems are noted.
pub(super) fn expand(
    include: &[String],
    problems: &mut Problems,
    stats: &mut FileSourceStats,
) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for pattern in include {
        match expand_pattern(pattern) {
            Ok((matched, errors)) => {
                for error in errors {
                    // A directory on the way could not be read.
                    let path = error.path().to_path_buf();
                    let io_error: io::Error = error.into();
                    problems.note(
                        &path,
                        Problem::from_error(&io_error),
                        Some(&io_error),
                        stats,
                    );
                }
                problems.note_matches(pattern, &matched);
                paths.extend(matched);
            }
            Err(error) => {
                let io_error = io::Error::new(io::ErrorKind::InvalidInput, error.to_string());
                problems.note(
                    Path::new(pattern),
                    Problem::Other(io::ErrorKind::InvalidInput),
                    Some(&io_error),
                    stats,
                );
            }
        }
    }
    paths.sort();
    paths.dedup();
    paths
}

/// Whether `path` is one the patterns name (whether or not it exists now).
pub(super) fn matches(include: &[String], path: &Path) -> bool {
    include.iter().any(|pattern| {
        if is_glob(pattern) {
            glob::Pattern::new(pattern).is_ok_and(|glob| glob.matches_path(path))
        } else {
            Path::new(pattern) == path
        }
    })
}

/// The same paths as [`expand`], noting nothing (for the opener thread; the source reports).
pub(super) fn expand_quietly(include: &[String]) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = include
        .iter()
        .filter_map(|pattern| expand_pattern(pattern).ok())
        .flat_map(|(matched, _)| matched)
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

pub(super) fn file_id(meta: &Metadata) -> FileId {
    FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    }
}

/// Follow symlinks and classify: a regular file's metadata, or why it is skipped.
pub(super) fn stat(path: &Path) -> Result<Metadata, (Problem, Option<io::Error>)> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(meta),
        Ok(meta) if meta.is_dir() => Err((Problem::Directory, None)),
        Ok(_) => Err((Problem::Special, None)),
        Err(error) => Err((Problem::from_error(&error), Some(error))),
    }
}

/// Open for reading without ever blocking: if the path was swapped for a FIFO after it was
/// stat'ed, a plain open would wait for a writer.
pub(super) fn open(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true);
    options.custom_flags(O_NONBLOCK);
    options.open(path)
}

// O_NONBLOCK as Linux defines it on the architectures this runs on (the libc crate is not a
// dependency); it has no effect on reads of regular files.
#[cfg(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "x86",
        target_arch = "arm"
    )
))]
const O_NONBLOCK: i32 = 0o4000;
// Elsewhere no flag: the stat before the open already keeps FIFOs out.
#[cfg(not(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "x86",
        target_arch = "arm"
    )
)))]
const O_NONBLOCK: i32 = 0;

/// Names of compressed rotations (`app.log.2.gz`): not text, never read; compressing also makes
/// a new inode, so such a name cannot be the checkpointed file anyway.
const COMPRESSED_SUFFIXES: [&str; 6] = [".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip"];

fn is_compressed_name(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    COMPRESSED_SUFFIXES
        .iter()
        .any(|suffix| name.ends_with(suffix))
}

/// Look for the file of `checkpoint` next to its old path (and next to the symlink target, when
/// the path is a link): a rotation renamed it while the shipper was down. Returns its path and
/// when it was last modified (older generations are read first).
pub(super) fn find_renamed(checkpoint: &FileCheckpoint) -> Option<(PathBuf, SystemTime)> {
    let mut dirs = Vec::new();
    if let Some(parent) = checkpoint.path.parent() {
        dirs.push(parent.to_path_buf());
    }
    if let Ok(real) = fs::canonicalize(&checkpoint.path)
        && let Some(parent) = real.parent()
        && !dirs.iter().any(|d| d == parent)
    {
        dirs.push(parent.to_path_buf());
    }
    for dir in dirs {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if is_compressed_name(&entry.path()) {
                continue;
            }
            // Not following symlinks: the checkpointed inode is the file itself.
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_file() && file_id(&meta) == checkpoint.id {
                let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                return Some((entry.path(), modified));
            }
        }
    }
    None
}

/// The deepest directory of `pattern` without glob syntax, for the watcher.
pub(super) fn literal_dir(pattern: &str) -> Option<PathBuf> {
    let path = Path::new(pattern);
    let mut literal = PathBuf::new();
    for component in path.components() {
        if is_glob(&component.as_os_str().to_string_lossy()) {
            return Some(literal);
        }
        literal.push(component);
    }
    // A literal file path: watch its directory.
    path.parent().map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_dir_stops_at_the_first_glob_component() {
        assert_eq!(
            literal_dir("/var/log/pods/*/*/0.log"),
            Some(PathBuf::from("/var/log/pods"))
        );
        assert_eq!(
            literal_dir("/var/log/worker/*.log"),
            Some(PathBuf::from("/var/log/worker"))
        );
        assert_eq!(literal_dir("/a/b.log"), Some(PathBuf::from("/a")));
    }

    #[test]
    fn a_pattern_is_waiting_until_a_file_matches_it() {
        let dir = tempfile::tempdir().unwrap();
        let glob = format!("{}/*.log", dir.path().display());
        let literal = format!("{}/app.txt", dir.path().display());
        let include = [glob.clone(), literal.clone()];
        let mut problems = Problems::default();
        let mut stats = FileSourceStats::default();
        let state = |problems: &Problems, pattern: &str| problems.patterns.get(pattern).copied();

        expand(&include, &mut problems, &mut stats);
        assert_eq!(state(&problems, &glob), Some(PatternState::Waiting));
        assert_eq!(state(&problems, &literal), Some(PatternState::Waiting));
        // A directory matched by the glob is not a file.
        fs::create_dir(dir.path().join("old.log")).unwrap();
        expand(&include, &mut problems, &mut stats);
        assert_eq!(state(&problems, &glob), Some(PatternState::Waiting));

        fs::write(dir.path().join("worker.log"), b"x\n").unwrap();
        expand(&include, &mut problems, &mut stats);
        assert_eq!(state(&problems, &glob), Some(PatternState::Matched));
        assert_eq!(state(&problems, &literal), Some(PatternState::Waiting));
        // Matched stays matched when the file goes away: files come and go under a glob.
        fs::remove_file(dir.path().join("worker.log")).unwrap();
        fs::write(&literal, b"y\n").unwrap();
        expand(&include, &mut problems, &mut stats);
        assert_eq!(state(&problems, &glob), Some(PatternState::Matched));
        assert_eq!(state(&problems, &literal), Some(PatternState::Matched));
    }

    #[test]
    fn a_problem_is_counted_once_until_it_changes() {
        let mut problems = Problems::default();
        let mut stats = FileSourceStats::default();
        let path = Path::new("/x");
        for _ in 0..3 {
            problems.note(path, Problem::PermissionDenied, None, &mut stats);
        }
        assert_eq!(stats.permission_denied, 1);
        problems.note(path, Problem::Vanished, None, &mut stats);
        problems.clear(path);
        problems.note(path, Problem::PermissionDenied, None, &mut stats);
        assert_eq!((stats.permission_denied, stats.vanished), (2, 1));
    }
}
