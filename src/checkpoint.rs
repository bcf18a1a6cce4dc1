//! Durable checkpoints: one versioned JSON file in the data dir, replaced atomically.
//!
//! Writing goes to `checkpoints.json.tmp`, is fsynced, renamed over `checkpoints.json`, and the
//! directory is fsynced, so a crash at any moment leaves either the old or the new file whole. A
//! leftover temp file is ignored (it is the write that did not finish). A file that does not parse,
//! or has a version this build does not know, is an error that names the file: resetting silently
//! would resend or skip whole log files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ack::FileCheckpoint;

pub const FILE_NAME: &str = "checkpoints.json";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read checkpoint file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "checkpoint file {path} is corrupt ({source}); move it away to start over (files will be read again from --read-from)"
    )]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("checkpoint file {path} has version {found}, this build reads version {VERSION}")]
    UnknownVersion { path: PathBuf, found: u32 },
    #[error("cannot write checkpoint file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoints {
    pub version: u32,
    pub files: Vec<FileCheckpoint>,
}

#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

/// Load the checkpoints from `dir`; `Ok(None)` when there are none yet.
/// Create the data dir and take its lock file, so two processes never share its state. `None`
/// when another process holds the lock; the returned file holds it until dropped.
pub fn lock_data_dir(dir: &Path) -> io::Result<Option<File>> {
    fs::create_dir_all(dir)?;
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    match lock.try_lock() {
        Ok(()) => Ok(Some(lock)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(source)) => Err(source),
    }
}

pub fn load(dir: &Path) -> Result<Option<Checkpoints>, Error> {
    load_versioned(dir, FILE_NAME)
}

/// Replace the checkpoints in `dir` with `files`, atomically and durably.
pub fn store(dir: &Path, files: Vec<FileCheckpoint>) -> Result<(), Error> {
    let checkpoints = Checkpoints {
        version: VERSION,
        files,
    };
    store_versioned(dir, FILE_NAME, &checkpoints)
}

/// Load the versioned JSON file `name` in `dir` (its `version` field must be [`VERSION`]);
/// `Ok(None)` when it does not exist. Shared by every kind of checkpoint file.
pub fn load_versioned<T: DeserializeOwned>(dir: &Path, name: &str) -> Result<Option<T>, Error> {
    let path = dir.join(name);
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::Read { path, source }),
    };
    let version: VersionOnly = serde_json::from_slice(&text).map_err(|source| Error::Corrupt {
        path: path.clone(),
        source,
    })?;
    if version.version != VERSION {
        return Err(Error::UnknownVersion {
            path,
            found: version.version,
        });
    }
    let value = serde_json::from_slice(&text).map_err(|source| Error::Corrupt { path, source })?;
    Ok(Some(value))
}

/// Replace the file `name` in `dir` with `value` as JSON, atomically and durably: a temp file
/// (`name.tmp`), fsync, rename, fsync of the directory.
pub fn store_versioned<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), Error> {
    let temp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let write = || -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)?;
        serde_json::to_writer_pretty(&mut file, value)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        fs::rename(&temp, &path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|source| Error::Write { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::{FileId, Fingerprint};

    fn sample() -> Vec<FileCheckpoint> {
        vec![FileCheckpoint {
            path: "/var/log/worker.log".into(),
            id: FileId {
                dev: 64769,
                ino: 1234,
            },
            fingerprint: Fingerprint {
                len: 256,
                crc32: 0xdead_beef,
            },
            offset: 4096,
        }]
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        store(dir.path(), sample()).unwrap();
        let loaded = load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.version, VERSION);
        assert_eq!(loaded.files, sample());
        assert!(!dir.path().join(format!("{FILE_NAME}.tmp")).exists());
    }

    #[test]
    fn leftover_temp_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), sample()).unwrap();
        fs::write(
            dir.path().join(format!("{FILE_NAME}.tmp")),
            b"{\"version\": 1, \"fi",
        )
        .unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().files, sample());
        store(dir.path(), vec![]).unwrap();
        assert!(load(dir.path()).unwrap().unwrap().files.is_empty());
    }

    #[test]
    fn truncated_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), sample()).unwrap();
        let full = fs::read(dir.path().join(FILE_NAME)).unwrap();
        fs::write(dir.path().join(FILE_NAME), &full[..full.len() / 2]).unwrap();
        let error = load(dir.path()).unwrap_err();
        assert!(matches!(error, Error::Corrupt { .. }), "{error}");
        assert!(error.to_string().contains(FILE_NAME), "{error}");
    }

    #[test]
    fn unknown_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(FILE_NAME),
            br#"{"version": 7, "files": [], "future": true}"#,
        )
        .unwrap();
        let error = load(dir.path()).unwrap_err();
        assert!(
            matches!(error, Error::UnknownVersion { found: 7, .. }),
            "{error}"
        );
    }
}
