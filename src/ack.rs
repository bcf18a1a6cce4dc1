//! Ordered acknowledgement per file.
//!
//! Every record carries an [`AckToken`] naming its file and the byte range `[start, end)` it came from.
//! The byte ranges a file's reader hands out are contiguous: together they cover every byte read,
//! newlines and skipped bytes included. Kinesis acknowledges records in any order; a file's committed
//! offset only advances over the contiguous prefix of acknowledged ranges. The committed offset is what
//! the checkpointer writes, so a restart resumes after the last byte that is known to be delivered.
//!
//! A copytruncate rotation restarts a file at offset 0 under a new *generation*: acknowledgements that
//! arrive late for the old generation are ignored.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// A file's identity on its file system: device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// Checksum of a file's first `len` bytes, to tell a reused inode (or a truncated and rewritten file)
/// from the file the checkpoint was taken on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint {
    pub len: u32,
    pub crc32: u32,
}

/// What the checkpointer persists for one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheckpoint {
    pub path: PathBuf,
    #[serde(flatten)]
    pub id: FileId,
    pub fingerprint: Fingerprint,
    /// First byte not yet known to be delivered.
    pub offset: u64,
}

/// Delivery progress of one file. Shared by the file's reader (which hands out tokens), the sink
/// (which acknowledges them) and the checkpointer (which reads the committed offset).
#[derive(Debug)]
pub struct FileProgress {
    id: FileId,
    state: Mutex<ProgressState>,
    /// The registry's change signal, once the file is registered: the checkpointer wakes on it.
    changed: OnceLock<Arc<Notify>>,
}

#[derive(Debug)]
struct ProgressState {
    path: PathBuf,
    fingerprint: Fingerprint,
    generation: u64,
    committed: u64,
    /// Acknowledged ranges beyond `committed`, keyed by start.
    acked: BTreeMap<u64, u64>,
    /// Set when the reader has let go of the file for good (rotated away or deleted, and read to the
    /// end): once everything up to `retired_at` is committed, the file leaves the checkpoint.
    retired_at: Option<u64>,
}

impl FileProgress {
    pub fn new(id: FileId, path: PathBuf, fingerprint: Fingerprint, offset: u64) -> Arc<Self> {
        Arc::new(FileProgress {
            id,
            changed: OnceLock::new(),
            state: Mutex::new(ProgressState {
                path,
                fingerprint,
                generation: 0,
                committed: offset,
                acked: BTreeMap::new(),
                retired_at: None,
            }),
        })
    }

    pub fn id(&self) -> FileId {
        self.id
    }

    fn lock(&self) -> MutexGuard<'_, ProgressState> {
        // A poisoned lock only means another thread panicked while holding it; the state itself
        // is a plain offset map that is never left half-updated, so keep using it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A token for the bytes `[start, end)` of the current generation.
    pub fn token(self: &Arc<Self>, start: u64, end: u64) -> AckToken {
        let generation = self.lock().generation;
        AckToken {
            progress: Arc::clone(self),
            generation,
            start,
            end,
        }
    }

    /// The current generation: it changes when the file is read again from a new start.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// A token for `[start, end)` of a given generation (one read earlier with `generation`), for
    /// records assembled over several lines while the file may have been reset.
    pub fn token_in(self: &Arc<Self>, generation: u64, start: u64, end: u64) -> AckToken {
        AckToken {
            progress: Arc::clone(self),
            generation,
            start,
            end,
        }
    }

    /// The file was truncated (copytruncate) or rewritten: start again at `offset` under a new
    /// generation. Tokens handed out before are ignored when they are acknowledged.
    pub fn reset(&self, fingerprint: Fingerprint, offset: u64) {
        let mut state = self.lock();
        state.generation += 1;
        state.committed = offset;
        state.acked.clear();
        state.fingerprint = fingerprint;
        state.retired_at = None;
        drop(state);
        self.signal();
    }

    pub fn set_path(&self, path: &Path) {
        let mut state = self.lock();
        if state.path != path {
            state.path = path.to_path_buf();
            drop(state);
            self.signal();
        }
    }

    pub fn set_fingerprint(&self, fingerprint: Fingerprint) {
        self.lock().fingerprint = fingerprint;
        self.signal();
    }

    /// The reader has read this file up to `end` and will read no more of it.
    pub fn retire(&self, end: u64) {
        self.lock().retired_at = Some(end);
        self.signal();
    }

    /// Signal `changed` whenever this progress moves, for a progress kept outside a [`Registry`]
    /// (a socket's spool). Set once; a later call is ignored.
    pub fn watch(&self, changed: Arc<Notify>) {
        let _ = self.changed.set(changed);
    }

    /// Tell the checkpointer that this file's checkpoint changed. A permit is stored when it is
    /// not waiting, so a burst of changes wakes it once.
    fn signal(&self) {
        if let Some(changed) = self.changed.get() {
            changed.notify_one();
        }
    }

    /// True once a retired file has every byte it was read up to acknowledged.
    pub fn is_finished(&self) -> bool {
        let state = self.lock();
        state.retired_at.is_some_and(|end| state.committed >= end)
    }

    pub fn committed(&self) -> u64 {
        self.lock().committed
    }

    pub fn checkpoint(&self) -> FileCheckpoint {
        let state = self.lock();
        FileCheckpoint {
            path: state.path.clone(),
            id: self.id,
            fingerprint: state.fingerprint,
            offset: state.committed,
        }
    }

    fn acknowledge(&self, generation: u64, start: u64, end: u64) {
        let mut state = self.lock();
        if generation != state.generation || end <= state.committed {
            return;
        }
        if start > state.committed {
            let slot = state.acked.entry(start).or_insert(end);
            *slot = (*slot).max(end);
            return;
        }
        // The range touches the committed prefix: advance, then absorb what it now reaches.
        state.committed = end;
        while let Some((&next_start, &next_end)) = state.acked.first_key_value() {
            if next_start > state.committed {
                break;
            }
            state.acked.pop_first();
            state.committed = state.committed.max(next_end);
        }
        drop(state);
        self.signal();
    }
}

/// The right to acknowledge one range of one file. Acknowledging consumes it; dropping it without
/// acknowledging leaves the range undelivered (it is read again after a restart).
#[derive(Debug)]
pub struct AckToken {
    progress: Arc<FileProgress>,
    generation: u64,
    start: u64,
    end: u64,
}

impl AckToken {
    pub fn range(&self) -> (u64, u64) {
        (self.start, self.end)
    }

    pub fn file(&self) -> &Arc<FileProgress> {
        &self.progress
    }

    /// Extend this token by `next` when it continues the same range of the same file generation,
    /// so one lock covers a run of records. Gives `next` back when it does not continue this one.
    pub fn merge(&mut self, next: AckToken) -> Result<(), AckToken> {
        if Arc::ptr_eq(&self.progress, &next.progress)
            && self.generation == next.generation
            && self.end == next.start
        {
            self.end = next.end;
            Ok(())
        } else {
            Err(next)
        }
    }

    pub fn ack(self) {
        self.progress
            .acknowledge(self.generation, self.start, self.end);
    }
}

/// The acknowledgements one Kinesis record carries: one token for a plain record, several for a
/// KPL aggregate (one run per file range it packs).
#[derive(Debug)]
pub enum Acks {
    One(AckToken),
    Many(Vec<AckToken>),
}

impl From<AckToken> for Acks {
    fn from(token: AckToken) -> Acks {
        Acks::One(token)
    }
}

impl Acks {
    /// The first token, for reports (the dead-letter file names the first file range).
    pub fn first(&self) -> Option<&AckToken> {
        match self {
            Acks::One(token) => Some(token),
            Acks::Many(tokens) => tokens.first(),
        }
    }

    /// Add every token of `other`.
    pub fn extend(&mut self, other: Acks) {
        for token in other {
            self.push(token);
        }
    }

    /// Add a token, merging it into the last one when it continues that range.
    pub fn push(&mut self, token: AckToken) {
        let last = match self {
            Acks::One(last) => Some(last),
            Acks::Many(tokens) => tokens.last_mut(),
        };
        let token = match last {
            Some(last) => match last.merge(token) {
                Ok(()) => return,
                Err(token) => token,
            },
            None => token,
        };
        match self {
            Acks::Many(tokens) => tokens.push(token),
            Acks::One(_) => {
                if let Acks::One(first) = std::mem::replace(self, Acks::Many(Vec::with_capacity(4)))
                {
                    *self = Acks::Many(vec![first, token]);
                }
            }
        }
    }
}

impl IntoIterator for Acks {
    type Item = AckToken;
    type IntoIter = std::iter::Chain<std::option::IntoIter<AckToken>, std::vec::IntoIter<AckToken>>;

    fn into_iter(self) -> Self::IntoIter {
        match self {
            Acks::One(token) => Some(token).into_iter().chain(Vec::new()),
            Acks::Many(tokens) => None.into_iter().chain(tokens),
        }
    }
}

/// Acknowledge a run of tokens, merging neighbours so each file is locked once per run.
pub fn ack_all(tokens: impl IntoIterator<Item = AckToken>) {
    let mut current: Option<AckToken> = None;
    for token in tokens {
        current = Some(match current {
            None => token,
            Some(mut run) => match run.merge(token) {
                Ok(()) => run,
                Err(token) => {
                    run.ack();
                    token
                }
            },
        });
    }
    if let Some(run) = current {
        run.ack();
    }
}

/// Every file whose progress is tracked, for the checkpointer.
#[derive(Debug, Default)]
pub struct Registry {
    files: Mutex<HashMap<FileId, Arc<FileProgress>>>,
    /// Signalled whenever a registered file's checkpoint may have changed.
    changed: Arc<Notify>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<FileId, Arc<FileProgress>>> {
        // See FileProgress::lock: the map is never left half-updated.
        self.files
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Track `progress`, replacing a file of the same identity (a reused inode).
    pub fn insert(&self, progress: Arc<FileProgress>) {
        // A progress belongs to one registry; set once, so a second insert keeps the first.
        let _ = progress.changed.set(Arc::clone(&self.changed));
        self.lock().insert(progress.id(), progress);
        self.changed.notify_one();
    }

    /// Completes once some checkpoint changed since the last time it completed.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    pub fn get(&self, id: FileId) -> Option<Arc<FileProgress>> {
        self.lock().get(&id).cloned()
    }

    pub fn remove(&self, id: FileId) {
        self.lock().remove(&id);
    }

    /// The checkpoint of every tracked file, dropping retired files that are fully delivered.
    pub fn snapshot(&self) -> Vec<FileCheckpoint> {
        let mut files = self.lock();
        files.retain(|_, progress| !progress.is_finished());
        let mut out: Vec<FileCheckpoint> = files.values().map(|p| p.checkpoint()).collect();
        out.sort_by(|a, b| a.path.cmp(&b.path).then(a.id.cmp(&b.id)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn progress() -> Arc<FileProgress> {
        FileProgress::new(
            FileId { dev: 1, ino: 2 },
            "/x.log".into(),
            Fingerprint::default(),
            0,
        )
    }

    #[test]
    fn committed_waits_for_the_gap() {
        let p = progress();
        let a = p.token(0, 10);
        let b = p.token(10, 25);
        let c = p.token(25, 30);
        c.ack();
        assert_eq!(p.committed(), 0);
        a.ack();
        assert_eq!(p.committed(), 10);
        b.ack();
        assert_eq!(p.committed(), 30);
    }

    #[test]
    fn acks_of_an_old_generation_are_ignored() {
        let p = progress();
        let old = p.token(0, 100);
        p.reset(Fingerprint { len: 3, crc32: 9 }, 0);
        old.ack();
        assert_eq!(p.committed(), 0);
        p.token(0, 5).ack();
        assert_eq!(p.committed(), 5);
    }

    #[test]
    fn merge_joins_only_contiguous_ranges_of_one_file() {
        let p = progress();
        let q = FileProgress::new(
            FileId { dev: 1, ino: 3 },
            "/y.log".into(),
            Fingerprint::default(),
            0,
        );
        let mut run = p.token(0, 4);
        assert!(run.merge(p.token(4, 8)).is_ok());
        assert!(run.merge(p.token(9, 10)).is_err());
        assert!(run.merge(q.token(8, 10)).is_err());
        assert_eq!(run.range(), (0, 8));
    }

    #[test]
    fn acks_merge_neighbours_and_acknowledge_all() {
        let p = progress();
        let mut acks = Acks::from(p.token(0, 5));
        acks.push(p.token(5, 9));
        acks.push(p.token(12, 20));
        assert!(matches!(&acks, Acks::Many(tokens) if tokens.len() == 2));
        assert_eq!(acks.first().map(AckToken::range), Some((0, 9)));
        ack_all(acks);
        assert_eq!(p.committed(), 9, "9..12 was never handed out");
    }

    #[test]
    fn retired_file_leaves_the_snapshot_once_delivered() {
        let registry = Registry::default();
        let p = progress();
        registry.insert(Arc::clone(&p));
        let t = p.token(0, 7);
        p.retire(7);
        assert_eq!(registry.snapshot().len(), 1);
        t.ack();
        assert!(registry.snapshot().is_empty());
    }

    proptest! {
        /// Random out-of-order acknowledgement of a random subset: the committed offset is the end of
        /// the longest acknowledged prefix.
        #[test]
        fn committed_is_the_largest_contiguous_prefix(
            lengths in proptest::collection::vec(1u64..50, 1..60),
            order in any::<proptest::sample::Index>(),
            acked_mask in proptest::collection::vec(any::<bool>(), 60),
            seed in any::<u64>(),
        ) {
            let p = progress();
            let mut ranges = Vec::new();
            let mut offset = 0;
            for len in &lengths {
                ranges.push((offset, offset + len));
                offset += len;
            }
            let mut tokens: Vec<(usize, AckToken)> =
                ranges.iter().enumerate().map(|(i, &(s, e))| (i, p.token(s, e))).collect();
            // Deterministic shuffle from the seed.
            let mut state = seed ^ order.index(1000) as u64;
            for i in (1..tokens.len()).rev() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                tokens.swap(i, (state >> 33) as usize % (i + 1));
            }
            let mut acked = vec![false; ranges.len()];
            let tokens: Vec<AckToken> = tokens
                .into_iter()
                .filter(|(i, _)| acked_mask[*i])
                .map(|(i, t)| { acked[i] = true; t })
                .collect();
            ack_all(tokens);
            let prefix = acked.iter().take_while(|a| **a).count();
            let expected = if prefix == 0 { 0 } else { ranges[prefix - 1].1 };
            prop_assert_eq!(p.committed(), expected);
        }
    }
}
