//! An append-only dead-letter file: one JSON object per line, fsynced before the caller may treat
//! the entries as handled, so nothing refused is dropped silently and an operator can replay it.
//! Each sink writes its own entry shape (`sinks::kinesis::dead_letter`, `consume`).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

#[derive(Debug)]
pub struct DeadLetterFile {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl DeadLetterFile {
    /// The file `name` in `data_dir`, opened (created) on the first write.
    pub fn new(data_dir: &Path, name: &str) -> DeadLetterFile {
        DeadLetterFile {
            path: data_dir.join(name),
            file: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append `entries`, one JSON line each, and fsync. Only once this returns Ok are they safe.
    pub fn append<T: Serialize>(&self, entries: impl IntoIterator<Item = T>) -> io::Result<()> {
        let mut buffer = Vec::new();
        for entry in entries {
            serde_json::to_writer(&mut buffer, &entry)?;
            buffer.push(b'\n');
        }
        let mut guard = self
            .file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if guard.is_none() {
            *guard = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        // Just filled above when it was empty.
        let file = guard
            .as_mut()
            .ok_or_else(|| io::Error::other("dead-letter file not open"))?;
        file.write_all(&buffer)?;
        file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_one_json_line_per_entry() {
        let dir = tempfile::tempdir().unwrap();
        let file = DeadLetterFile::new(dir.path(), "dl.jsonl");
        file.append([serde_json::json!({"a": 1})]).unwrap();
        file.append([serde_json::json!({"b": 2}), serde_json::json!({"c": 3})])
            .unwrap();
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n");
    }
}
