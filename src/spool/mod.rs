//! The socket input's disk spool: a size-bounded, segmented, crash-safe log of received records.
//!
//! A record read from a socket is appended here before it goes anywhere else; the pipeline reads
//! it back from the spool. Acknowledgements from Kinesis advance a committed offset over a
//! contiguous prefix (the same rule as file checkpoints, through [`crate::ack::FileProgress`]),
//! which is stored in `acked.json`; a segment is deleted once all of it is committed. On start,
//! everything after the committed offset is read again.
//!
//! Durability:
//! - An append is one `write` of whole entries to the active segment, before the records are
//!   handed on. A killed process (`kill -9`) loses nothing that was appended: the bytes are in the
//!   kernel's page cache.
//! - Segments are `fdatasync`ed in batches ([`Spool::sync`], every `--spool-sync-interval`), so a
//!   power loss can cost the records appended since the last sync.
//! - Each entry has a length and a CRC-32. At start-up a torn or corrupt tail is cut off and
//!   counted; a corrupt entry inside an older segment cuts the rest of that segment. Neither is
//!   fatal.
//! - When the spool holds `max_bytes`, new records are refused (the caller counts and logs them);
//!   the sender is never blocked.
//!
//! See `entry` for the file layout.

pub mod entry;
mod reader;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, VERSION};
pub use entry::Kind;
use entry::{Bad, SEGMENT_HEADER_BYTES};
pub use reader::{Item, Reader};

/// The file holding the committed offset.
const ACK_FILE: &str = "acked.json";
/// The file holding the spool's identity: 16 hex digits, random, made when the spool is.
const ID_FILE: &str = "spool-id";
/// Once this many appends are waiting for acknowledgement, appends within [`AGE_SAMPLE`] of each
/// other share one sample: the pending count gets coarser, memory stays small in a long outage.
const EXACT_SAMPLES: usize = 4096;
const AGE_SAMPLE: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Most bytes on disk, segment headers included.
    pub max_bytes: u64,
    /// A segment is closed and a new one started once it holds this many bytes.
    pub segment_bytes: u64,
}

impl Config {
    /// Segments of an eighth of the limit, between 64 KiB and 16 MiB: small enough that deleting
    /// acknowledged segments frees space early, large enough that there are few files.
    pub fn with_max_bytes(max_bytes: u64) -> Config {
        Config {
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(64 * 1024, 16 * 1024 * 1024),
        }
    }
}

/// What opening the spool found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The first offset to read: the committed offset, moved to an entry boundary.
    pub start: u64,
    /// Where new entries go.
    pub end: u64,
    /// Entries left to send from before the restart.
    pub pending_entries: u64,
    /// Torn or corrupt bytes cut off.
    pub cut_bytes: u64,
    /// Places where bytes were cut (one per torn tail or corrupt entry).
    pub cuts: u64,
    /// Segment files with an unreadable header, removed.
    pub bad_segments: u64,
}

/// What an append did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Appended {
    pub entries: u64,
    pub bytes: u64,
    /// Entries refused because the spool was full.
    pub dropped: u64,
    pub dropped_bytes: u64,
}

/// The spool's state for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub disk_bytes: u64,
    /// Entries appended and not yet acknowledged (an entry of a partly acknowledged append counts
    /// until the whole append is).
    pub pending_entries: u64,
    /// Age of the oldest unacknowledged append.
    pub oldest_pending: Option<Duration>,
    pub segments: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckFile {
    version: u32,
    acked: u64,
}

struct Segment {
    base: u64,
    /// Entry bytes (the file is `SEGMENT_HEADER_BYTES` longer).
    len: u64,
}

impl Segment {
    fn end(&self) -> u64 {
        self.base + self.len
    }
}

/// Appends not yet acknowledged, for the pending count and the oldest age.
struct AgeSample {
    end: u64,
    entries: u64,
    at: Instant,
}

struct State {
    /// Oldest first; the last one is the active segment.
    segments: VecDeque<Segment>,
    active: Arc<File>,
    /// Offset after the last appended entry: readers may read up to here.
    end: u64,
    disk_bytes: u64,
    /// Files written since the last sync (closed segments; the active one is `dirty`).
    unsynced: Vec<Arc<File>>,
    dirty: bool,
    /// A segment file was created or deleted since the last directory sync.
    dir_dirty: bool,
    samples: VecDeque<AgeSample>,
    pending_entries: u64,
    /// The committed offset last written to the ack file.
    stored_ack: u64,
    closed: bool,
    scratch: Vec<u8>,
}

pub(crate) struct Shared {
    dir: PathBuf,
    id: u64,
    config: Config,
    state: Mutex<State>,
    grew: Condvar,
    /// Signalled on every append, for the task that syncs (it sleeps while nothing is written).
    appended: tokio::sync::Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is only changed by code that cannot panic halfway; keep using it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A spool directory, open for appending and reading. Cheap to clone.
#[derive(Clone)]
pub struct Spool {
    shared: Arc<Shared>,
}

impl Spool {
    /// Open (or create) the spool in `dir`, recovering from a crash: segments below the committed
    /// offset are deleted, a torn or corrupt tail is cut, and a new active segment is started.
    pub fn open(dir: &Path, config: Config) -> io::Result<(Spool, Recovery)> {
        fs::create_dir_all(dir)?;
        let id = load_or_make_id(dir)?;
        let acked = match checkpoint::load_versioned::<AckFile>(dir, ACK_FILE) {
            Ok(Some(file)) => Some(file.acked),
            Ok(None) => None,
            Err(error) => {
                // Without a committed offset everything still on disk is sent again: duplicates,
                // never loss.
                tracing::error!(dir = %dir.display(), %error, "spool acknowledgement file unreadable; sending everything in the spool again");
                None
            }
        };
        let mut recovery = Recovery::default();
        let mut bases = Vec::new();
        for item in fs::read_dir(dir)? {
            let item = item?;
            if let Some(base) = item.file_name().to_str().and_then(entry::segment_base) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        let acked_or_first = acked.unwrap_or_else(|| bases.first().copied().unwrap_or(0));

        let mut segments = VecDeque::new();
        let mut start: Option<u64> = None;
        let mut disk_bytes = 0;
        for base in bases {
            let path = entry::segment_path(dir, base);
            let bytes = fs::read(&path)?;
            if entry::parse_segment_header(&bytes) != Some(base) {
                recovery.bad_segments += 1;
                recovery.cut_bytes += bytes.len() as u64;
                tracing::warn!(path = %path.display(), "spool segment with an unreadable header removed");
                fs::remove_file(&path)?;
                continue;
            }
            let body = &bytes[SEGMENT_HEADER_BYTES as usize..];
            if base + body.len() as u64 <= acked_or_first {
                fs::remove_file(&path)?;
                continue;
            }
            let mut at = 0usize;
            let mut pending = 0;
            while at < body.len() {
                match entry::decode(&body[at..]) {
                    Ok(decoded) => {
                        let offset = base + at as u64;
                        if offset >= acked_or_first {
                            pending += 1;
                            start.get_or_insert(offset);
                        }
                        at += decoded.len;
                    }
                    Err(bad) => {
                        let cut = body.len() - at;
                        recovery.cuts += 1;
                        recovery.cut_bytes += cut as u64;
                        tracing::warn!(
                            path = %path.display(),
                            offset = at,
                            bytes = cut,
                            kind = if bad == Bad::Incomplete { "torn" } else { "corrupt" },
                            "spool entries cut off after a crash"
                        );
                        let file = OpenOptions::new().write(true).open(&path)?;
                        file.set_len(SEGMENT_HEADER_BYTES + at as u64)?;
                        file.sync_all()?;
                        break;
                    }
                }
            }
            if at == 0 {
                fs::remove_file(&path)?;
                continue;
            }
            recovery.pending_entries += pending;
            disk_bytes += SEGMENT_HEADER_BYTES + at as u64;
            segments.push_back(Segment {
                base,
                len: at as u64,
            });
        }
        let data_end = segments.back().map_or(0, Segment::end);
        let end = data_end.max(acked_or_first);
        recovery.start = start.unwrap_or(end);
        recovery.end = end;

        let active = create_segment(dir, end)?;
        disk_bytes += SEGMENT_HEADER_BYTES;
        segments.push_back(Segment { base: end, len: 0 });
        File::open(dir)?.sync_all()?;

        let mut samples = VecDeque::new();
        if recovery.pending_entries > 0 {
            samples.push_back(AgeSample {
                end: data_end,
                entries: recovery.pending_entries,
                at: Instant::now(),
            });
        }
        let state = State {
            segments,
            active: Arc::new(active),
            end,
            disk_bytes,
            unsynced: Vec::new(),
            dirty: false,
            dir_dirty: false,
            samples,
            pending_entries: recovery.pending_entries,
            stored_ack: acked.unwrap_or(u64::MAX),
            closed: false,
            scratch: Vec::new(),
        };
        let spool = Spool {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                id,
                config,
                state: Mutex::new(state),
                grew: Condvar::new(),
                appended: tokio::sync::Notify::new(),
            }),
        };
        Ok((spool, recovery))
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// A random number made when the spool was created and kept with it: with an entry's offset
    /// it names the entry uniquely, across restarts and across pods.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Append `records` in order, each as one entry, with one write. Records that do not fit
    /// under the size limit are refused (counted in the result); the rest are appended. An I/O
    /// error refuses the whole call's records.
    pub fn append<'a>(
        &self,
        records: impl IntoIterator<Item = (Kind, &'a [u8])>,
    ) -> io::Result<Appended> {
        let config = self.shared.config;
        let mut state = self.shared.lock();
        let state = &mut *state;
        let mut scratch = std::mem::take(&mut state.scratch);
        scratch.clear();
        let mut result = Appended::default();
        let mut outcome = Ok(());
        // Entries encoded in `scratch` and not written yet.
        let mut in_scratch = 0;
        for (kind, payload) in records {
            let len = entry::encoded_len(payload.len());
            if state.disk_bytes + scratch.len() as u64 + len > config.max_bytes
                || payload.len() + 1 > entry::MAX_ENTRY_BYTES
            {
                result.dropped += 1;
                result.dropped_bytes += payload.len() as u64;
                continue;
            }
            let active_len = state.segments.back().map_or(0, |s| s.len) + scratch.len() as u64;
            if active_len > 0 && active_len + len > config.segment_bytes {
                // Write what this call holds to the active segment, then start the next one.
                let written = self.write(state, &mut scratch, in_scratch, &mut result);
                in_scratch = 0;
                if let Err(error) = written {
                    outcome = Err(error);
                    break;
                }
                if let Err(error) = self.rotate(state) {
                    outcome = Err(error);
                    break;
                }
                if state.disk_bytes + len > config.max_bytes {
                    result.dropped += 1;
                    result.dropped_bytes += payload.len() as u64;
                    continue;
                }
            }
            entry::encode(kind, payload, &mut scratch);
            in_scratch += 1;
            result.entries += 1;
            result.bytes += len;
        }
        if outcome.is_ok() {
            outcome = self.write(state, &mut scratch, in_scratch, &mut result);
        }
        state.scratch = scratch;
        outcome.map(|()| result)
    }

    /// Write the `entries` encoded in `scratch` to the active segment and publish them.
    fn write(
        &self,
        state: &mut State,
        scratch: &mut Vec<u8>,
        entries: u64,
        result: &mut Appended,
    ) -> io::Result<()> {
        if scratch.is_empty() {
            return Ok(());
        }
        if let Err(error) = (&*state.active).write_all(scratch) {
            // A partial write leaves a torn entry, which the next start-up cuts off; start a new
            // segment so later appends do not land behind it.
            result.entries -= entries;
            result.dropped += entries;
            result.dropped_bytes += scratch.len() as u64;
            scratch.clear();
            let _ = self.rotate_after_error(state);
            return Err(error);
        }
        let written = scratch.len() as u64;
        scratch.clear();
        if let Some(active) = state.segments.back_mut() {
            active.len += written;
        }
        state.end += written;
        state.disk_bytes += written;
        state.dirty = true;
        state.pending_entries += entries;
        let now = Instant::now();
        let coarse = state.samples.len() >= EXACT_SAMPLES;
        match state.samples.back_mut() {
            Some(last) if coarse && now.duration_since(last.at) < AGE_SAMPLE => {
                last.end = state.end;
                last.entries += entries;
            }
            _ => state.samples.push_back(AgeSample {
                end: state.end,
                entries,
                at: now,
            }),
        }
        self.shared.grew.notify_all();
        self.shared.appended.notify_one();
        Ok(())
    }

    /// Completes once something was appended since the last time it completed.
    pub async fn appended(&self) {
        self.shared.appended.notified().await
    }

    fn rotate(&self, state: &mut State) -> io::Result<()> {
        let file = create_segment(&self.shared.dir, state.end)?;
        let old = std::mem::replace(&mut state.active, Arc::new(file));
        if state.dirty {
            state.unsynced.push(old);
        }
        state.dirty = true;
        state.dir_dirty = true;
        state.disk_bytes += SEGMENT_HEADER_BYTES;
        state.segments.push_back(Segment {
            base: state.end,
            len: 0,
        });
        Ok(())
    }

    /// After a failed write the active segment's length on disk is unknown: leave a gap of one
    /// byte so the next segment's base differs, and start it.
    fn rotate_after_error(&self, state: &mut State) -> io::Result<()> {
        state.end += 1;
        self.rotate(state)
    }

    /// Make what was appended durable (`fdatasync` of the segments written since the last call,
    /// and of the directory when segments were created). Called every `--spool-sync-interval`.
    pub fn sync(&self) -> io::Result<()> {
        let (files, dir_dirty) = {
            let mut state = self.shared.lock();
            if !state.dirty && state.unsynced.is_empty() && !state.dir_dirty {
                return Ok(());
            }
            let mut files = std::mem::take(&mut state.unsynced);
            if state.dirty {
                files.push(Arc::clone(&state.active));
            }
            state.dirty = false;
            (files, std::mem::take(&mut state.dir_dirty))
        };
        for file in files {
            file.sync_data()?;
        }
        if dir_dirty {
            File::open(&self.shared.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Everything before `committed` is delivered: store it, then delete the segments it covers.
    pub fn release(&self, committed: u64) -> Result<(), checkpoint::Error> {
        let stored = self.shared.lock().stored_ack;
        if stored == committed {
            return Ok(());
        }
        // Stored before deleting: a crash in between leaves segments below the committed offset,
        // which the next start-up deletes.
        checkpoint::store_versioned(
            &self.shared.dir,
            ACK_FILE,
            &AckFile {
                version: VERSION,
                acked: committed,
            },
        )?;
        let mut doomed = Vec::new();
        {
            let mut state = self.shared.lock();
            state.stored_ack = committed;
            while state.segments.len() > 1 && state.segments[0].end() <= committed {
                if let Some(segment) = state.segments.pop_front() {
                    state.disk_bytes -= SEGMENT_HEADER_BYTES + segment.len;
                    doomed.push(segment.base);
                }
            }
            while let Some(sample) = state.samples.front() {
                if sample.end > committed {
                    break;
                }
                state.pending_entries -= sample.entries;
                state.samples.pop_front();
            }
            if !doomed.is_empty() {
                state.dir_dirty = true;
            }
        }
        for base in doomed {
            let path = entry::segment_path(&self.shared.dir, base);
            if let Err(source) = fs::remove_file(&path)
                && source.kind() != io::ErrorKind::NotFound
            {
                return Err(checkpoint::Error::Write { path, source });
            }
        }
        Ok(())
    }

    pub fn stats(&self) -> Stats {
        let state = self.shared.lock();
        Stats {
            disk_bytes: state.disk_bytes,
            pending_entries: state.pending_entries,
            oldest_pending: state.samples.front().map(|s| s.at.elapsed()),
            segments: state.segments.len() as u64,
        }
    }

    /// A reader starting at `offset` (the recovery's `start`).
    pub fn reader(&self, offset: u64) -> Reader {
        Reader::new(Arc::clone(&self.shared), offset)
    }

    /// No more appends: readers see the end once they have read everything.
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.grew.notify_all();
    }
}

fn load_or_make_id(dir: &Path) -> io::Result<u64> {
    let path = dir.join(ID_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => match u64::from_str_radix(text.trim(), 16) {
            Ok(id) => return Ok(id),
            Err(_) => {
                tracing::warn!(path = %path.display(), "spool identity unreadable; making a new one")
            }
        },
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let id: u64 = rand::random();
    let temp = dir.join(format!("{ID_FILE}.tmp"));
    let mut file = File::create(&temp)?;
    writeln!(file, "{id:016x}")?;
    file.sync_all()?;
    fs::rename(&temp, &path)?;
    File::open(dir)?.sync_all()?;
    Ok(id)
}

fn create_segment(dir: &Path, base: u64) -> io::Result<File> {
    let path = entry::segment_path(dir, base);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    file.write_all(&entry::segment_header(base))?;
    Ok(file)
}
