use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::path::Path;

use proptest::prelude::*;

use super::*;

fn record(n: u64) -> Vec<u8> {
    format!(
        "{{\"n\":{n},\"pad\":\"{}\"}}",
        "x".repeat((n % 37) as usize)
    )
    .into_bytes()
}

/// Everything the reader hands out now, as (start, end, payload); skipped ranges as empty payloads
/// with `None`.
fn drain(reader: &mut Reader) -> Vec<(u64, u64, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    while reader
        .read(4096, |item| match item {
            Item::Entry {
                payload,
                start,
                end,
                ..
            } => out.push((start, end, Some(payload.to_vec()))),
            Item::Skipped { start, end } => out.push((start, end, None)),
        })
        .unwrap()
        > 0
    {}
    out
}

fn small() -> Config {
    Config {
        max_bytes: 1 << 20,
        segment_bytes: 1024,
    }
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".spool"))
        .collect();
    names.sort();
    names
}

#[test]
fn appended_records_are_read_back_in_order_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, recovery) = Spool::open(dir.path(), small()).unwrap();
    assert_eq!(recovery, Recovery::default());
    let mut reader = spool.reader(recovery.start);
    let records: Vec<Vec<u8>> = (0..200).map(record).collect();
    for chunk in records.chunks(7) {
        let appended = spool
            .append(chunk.iter().map(|r| (Kind::Envelope, r.as_slice())))
            .unwrap();
        assert_eq!(appended.entries, chunk.len() as u64);
    }
    assert!(segment_files(dir.path()).len() > 5, "small segments rotate");
    let read = drain(&mut reader);
    let payloads: Vec<Vec<u8>> = read.iter().filter_map(|(_, _, p)| p.clone()).collect();
    assert_eq!(payloads, records);
    // Ranges are contiguous from 0: acknowledging them all commits everything.
    let mut at = 0;
    for (start, end, _) in &read {
        assert_eq!(*start, at);
        at = *end;
    }
    assert_eq!(spool.stats().pending_entries, 200);
}

#[test]
fn release_deletes_covered_segments_and_restart_resumes_after_the_committed_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, recovery) = Spool::open(dir.path(), small()).unwrap();
    let mut reader = spool.reader(recovery.start);
    for n in 0..100 {
        let r = record(n);
        spool.append([(Kind::Text, r.as_slice())]).unwrap();
    }
    let read = drain(&mut reader);
    let before = segment_files(dir.path()).len();
    let committed = read[59].1;
    spool.release(committed).unwrap();
    assert!(
        segment_files(dir.path()).len() < before,
        "covered segments are deleted"
    );
    assert_eq!(spool.stats().pending_entries, 40);
    drop(reader);
    drop(spool); // a kill -9: no close, no sync

    let (spool, recovery) = Spool::open(dir.path(), small()).unwrap();
    assert_eq!(recovery.start, committed);
    assert_eq!(recovery.pending_entries, 40);
    assert_eq!(recovery.cuts, 0);
    let mut reader = spool.reader(recovery.start);
    let again: Vec<Vec<u8>> = drain(&mut reader)
        .into_iter()
        .filter_map(|(_, _, p)| p)
        .collect();
    assert_eq!(again, (60..100).map(record).collect::<Vec<_>>());
    // New entries go after the old ones.
    spool.append([(Kind::Text, &b"new"[..])]).unwrap();
    let next = drain(&mut reader);
    assert_eq!(next.len(), 1);
    assert!(next[0].0 >= recovery.end);
}

#[test]
fn a_torn_tail_and_a_corrupt_entry_are_cut_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        max_bytes: 1 << 20,
        segment_bytes: 1 << 20,
    };
    let (spool, _) = Spool::open(dir.path(), config).unwrap();
    for n in 0..10 {
        let r = record(n);
        spool.append([(Kind::Envelope, r.as_slice())]).unwrap();
    }
    drop(spool);
    let name = segment_files(dir.path()).pop().unwrap();
    let path = dir.path().join(&name);
    let len = fs::metadata(&path).unwrap().len();
    // Tear the last entry: three bytes short.
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let (spool, recovery) = Spool::open(dir.path(), config).unwrap();
    assert_eq!(recovery.cuts, 1);
    assert_eq!(recovery.pending_entries, 9);
    let mut reader = spool.reader(recovery.start);
    let read: Vec<Vec<u8>> = drain(&mut reader)
        .into_iter()
        .filter_map(|(_, _, p)| p)
        .collect();
    assert_eq!(read, (0..9).map(record).collect::<Vec<_>>());
    drop(reader);
    drop(spool);

    // Flip a payload byte of the fifth entry: it and what follows in its segment are cut; the
    // four before it survive.
    let mut bytes = fs::read(&path).unwrap();
    let mut at = SEGMENT_HEADER_BYTES as usize;
    for _ in 0..4 {
        at += entry::decode(&bytes[at..]).unwrap().len;
    }
    bytes[at + 12] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let (spool, recovery) = Spool::open(dir.path(), config).unwrap();
    assert_eq!(recovery.cuts, 1);
    assert_eq!(recovery.pending_entries, 4);
    let read: Vec<Vec<u8>> = drain(&mut spool.reader(recovery.start))
        .into_iter()
        .filter_map(|(_, _, p)| p)
        .collect();
    assert_eq!(read, (0..4).map(record).collect::<Vec<_>>());
}

#[test]
fn the_spool_keeps_its_identity_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = Spool::open(dir.path(), small()).unwrap();
    let id = first.id();
    drop(first);
    let (again, _) = Spool::open(dir.path(), small()).unwrap();
    assert_eq!(again.id(), id);
    let other = tempfile::tempdir().unwrap();
    let (other, _) = Spool::open(other.path(), small()).unwrap();
    assert_ne!(other.id(), id, "another spool has another identity");
}

#[test]
fn a_segment_with_a_bad_header_is_removed_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(entry::segment_path(dir.path(), 0), b"garbage").unwrap();
    let (_spool, recovery) = Spool::open(dir.path(), small()).unwrap();
    assert_eq!(recovery.bad_segments, 1);
    assert_eq!(recovery.pending_entries, 0);
}

#[test]
fn a_full_spool_refuses_new_records_and_takes_them_again_once_released() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        max_bytes: 4096,
        segment_bytes: 1024,
    };
    let (spool, recovery) = Spool::open(dir.path(), config).unwrap();
    let mut reader = spool.reader(recovery.start);
    let payload = vec![b'a'; 200];
    let mut appended = 0;
    let mut dropped = 0;
    for _ in 0..40 {
        let a = spool.append([(Kind::Text, payload.as_slice())]).unwrap();
        appended += a.entries;
        dropped += a.dropped;
    }
    assert!(dropped > 0 && appended > 0);
    assert!(spool.stats().disk_bytes <= config.max_bytes);
    let read = drain(&mut reader);
    assert_eq!(read.len() as u64, appended);
    spool.release(read.last().unwrap().1).unwrap();
    let a = spool.append([(Kind::Text, payload.as_slice())]).unwrap();
    assert_eq!(a.entries, 1, "space freed by release is used again");
}

#[test]
fn a_corrupt_acknowledgement_file_sends_everything_again() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path(), small()).unwrap();
    for n in 0..5 {
        let r = record(n);
        spool.append([(Kind::Text, r.as_slice())]).unwrap();
    }
    spool.release(10).unwrap();
    drop(spool);
    fs::write(dir.path().join(ACK_FILE), b"{not json").unwrap();
    let (_spool, recovery) = Spool::open(dir.path(), small()).unwrap();
    assert_eq!((recovery.start, recovery.pending_entries), (0, 5));
}

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<u16>),
    /// Acknowledge the read entries picked by these indexes (in this order).
    Ack(Vec<usize>),
    Sync,
    /// Stop the process without a sync (kill -9): every write so far survives.
    Kill,
    /// Lose power: bytes written since the last sync are lost, from a cut point in them.
    PowerLoss(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(0u16..600, 1..12).prop_map(Op::Append),
        3 => prop::collection::vec(any::<usize>(), 0..12).prop_map(Op::Ack),
        1 => Just(Op::Sync),
        1 => Just(Op::Kill),
        1 => any::<usize>().prop_map(Op::PowerLoss),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random appends, acknowledgements in random order, kills and power losses: after each
    /// recovery, every record not yet acknowledged is read again (except, after a power loss, the
    /// ones appended since the last sync), and nothing committed before the crash comes back.
    #[test]
    fn spool_survives_crashes(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { max_bytes: 1 << 22, segment_bytes: 2048 };
        let (mut spool, recovery) = Spool::open(dir.path(), config).unwrap();
        let mut reader = spool.reader(recovery.start);
        let mut progress = crate::ack::FileProgress::new(
            crate::ack::FileId { dev: u64::MAX, ino: 0 },
            dir.path().to_path_buf(),
            crate::ack::Fingerprint::default(),
            recovery.start,
        );
        let mut next_id: u64 = 0;
        // Record id -> payload, for every record appended and not known to be committed.
        let mut live: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        // Entries read and not yet acknowledged: (start, end, id).
        let mut unacked: Vec<(u64, u64, u64)> = Vec::new();
        // Record id -> the end of its entry, as last read.
        let mut ends: BTreeMap<u64, u64> = BTreeMap::new();
        // Sizes of the segment files at the last sync (what a power loss keeps).
        let mut synced: BTreeMap<String, u64> = BTreeMap::new();
        let sizes = |dir: &Path| -> BTreeMap<String, u64> {
            segment_files(dir).into_iter().map(|n| {
                let len = fs::metadata(dir.join(&n)).unwrap().len();
                (n, len)
            }).collect()
        };
        for op in ops {
            match op {
                Op::Append(lens) => {
                    let payloads: Vec<Vec<u8>> = lens.iter().map(|&len| {
                        let id = next_id;
                        next_id += 1;
                        let mut p = id.to_le_bytes().to_vec();
                        p.resize(8 + len as usize, (id % 251) as u8);
                        live.insert(id, p.clone());
                        p
                    }).collect();
                    let a = spool.append(payloads.iter().map(|p| (Kind::Text, p.as_slice()))).unwrap();
                    prop_assert_eq!(a.dropped, 0);
                    for item in drain(&mut reader) {
                        match item {
                            (start, end, Some(p)) => {
                                let id = u64::from_le_bytes(p[..8].try_into().unwrap());
                                prop_assert_eq!(live.get(&id), Some(&p));
                                ends.insert(id, end);
                                unacked.push((start, end, id));
                            }
                            (start, end, None) => progress.token(start, end).ack(),
                        }
                    }
                }
                Op::Ack(picks) => {
                    for pick in picks {
                        if unacked.is_empty() { break; }
                        let (start, end, _) = unacked.swap_remove(pick % unacked.len());
                        progress.token(start, end).ack();
                    }
                    spool.release(progress.committed()).unwrap();
                }
                Op::Sync => {
                    spool.sync().unwrap();
                    synced = sizes(dir.path());
                }
                Op::Kill | Op::PowerLoss(_) => {
                    let committed_before = spool.shared.lock().stored_ack;
                    if let Op::PowerLoss(cut) = op {
                        // Files not synced lose a random tail of their unsynced bytes.
                        for (name, len) in sizes(dir.path()) {
                            let keep = synced.get(&name).copied().unwrap_or(SEGMENT_HEADER_BYTES).min(len);
                            let lost = len - keep;
                            if lost > 0 {
                                let new_len = keep + (cut as u64 % (lost + 1));
                                OpenOptions::new().write(true).open(dir.path().join(&name)).unwrap().set_len(new_len).unwrap();
                            }
                        }
                    }
                    let power_loss = matches!(op, Op::PowerLoss(_));
                    drop(reader);
                    drop(spool);
                    let (s, recovery) = Spool::open(dir.path(), config).unwrap();
                    spool = s;
                    if !power_loss {
                        prop_assert_eq!(recovery.cuts, 0);
                    }
                    reader = spool.reader(recovery.start);
                    progress = crate::ack::FileProgress::new(
                        crate::ack::FileId { dev: u64::MAX, ino: 0 },
                        dir.path().to_path_buf(),
                        crate::ack::Fingerprint::default(),
                        recovery.start,
                    );
                    unacked.clear();
                    let mut seen = Vec::new();
                    for item in drain(&mut reader) {
                        match item {
                            (start, end, Some(p)) => {
                                let id = u64::from_le_bytes(p[..8].try_into().unwrap());
                                prop_assert_eq!(live.get(&id), Some(&p), "a record comes back only while not committed");
                                prop_assert!(end > committed_before || committed_before == u64::MAX);
                                seen.push(id);
                                ends.insert(id, end);
                                unacked.push((start, end, id));
                            }
                            (start, end, None) => progress.token(start, end).ack(),
                        }
                    }
                    // Records not returned were committed (or, after a power loss, appended after
                    // the last sync); either way they will never come back.
                    let seen_set: std::collections::BTreeSet<u64> = seen.iter().copied().collect();
                    if !power_loss {
                        // Without a power loss, the only records not read again are ones whose
                        // acknowledgement was stored.
                        for id in live.keys().filter(|id| !seen_set.contains(id)) {
                            prop_assert!(committed_before != u64::MAX && ends[id] <= committed_before, "record {} lost", id);
                        }
                    }
                    live.retain(|id, _| seen_set.contains(id));
                    synced = sizes(dir.path());
                }
            }
        }
    }
}
