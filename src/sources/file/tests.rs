//! Behaviour of the file source on real files, driven by `poll` at explicit instants.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::rescan::Start;
use super::*;
use crate::ack::{AckToken, FileProgress, Registry, ack_all};

/// One emitted line, copied, with the token the pipeline would have taken.
pub(super) struct Got {
    pub path: PathBuf,
    pub data: Vec<u8>,
    pub start: u64,
    pub end: u64,
    pub kind: LineKind,
    pub file: Arc<FileProgress>,
    pub token: Option<AckToken>,
}

#[derive(Default)]
pub(super) struct Collect {
    pub lines: Vec<Got>,
}

impl LineSink for Collect {
    fn line(&mut self, line: Line<'_>) -> Result<(), Closed> {
        self.lines.push(Got {
            path: line.path.to_path_buf(),
            data: line.data.to_vec(),
            start: line.start,
            end: line.end,
            kind: line.kind,
            file: Arc::clone(line.file),
            token: Some(line.file.token(line.start, line.end)),
        });
        Ok(())
    }

    fn idle(&mut self, _now: Instant) -> Result<Option<Instant>, Closed> {
        Ok(None)
    }
}

impl Collect {
    fn data(&self) -> Vec<&[u8]> {
        self.lines.iter().map(|l| l.data.as_slice()).collect()
    }

    pub(super) fn take(&mut self) -> Vec<Got> {
        std::mem::take(&mut self.lines)
    }
}

pub(super) fn config(dir: &Path, pattern: &str) -> FileSourceConfig {
    FileSourceConfig {
        include: vec![dir.join(pattern).to_string_lossy().into_owned()],
        read_from: ReadFrom::Beginning,
        max_line_bytes: 1024,
        long_lines: LongLinePolicy::Split,
        partial_line_timeout: Duration::from_secs(1),
        rotate_wait: Duration::from_secs(5),
        rescan_interval: Duration::from_secs(1),
        read_buffer_bytes: 64,
        ..FileSourceConfig::default()
    }
}

/// Poll at `now` until a pass reads nothing.
pub(super) fn drain(source: &mut FileSource, sink: &mut dyn LineSink, now: Instant) {
    while source.poll(now, sink).unwrap().bytes_read > 0 {}
}

pub(super) fn append(path: &Path, bytes: &[u8]) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    file.write_all(bytes).unwrap();
}

fn secs(start: Instant, s: f64) -> Instant {
    start + Duration::from_secs_f64(s)
}

/// Ranges of each file are contiguous from `first` (per file, in emission order).
fn assert_contiguous(lines: &[Got], first: u64) {
    let mut next: Vec<(Arc<FileProgress>, u64)> = Vec::new();
    for line in lines {
        let slot = match next.iter_mut().find(|(f, _)| Arc::ptr_eq(f, &line.file)) {
            Some(slot) => slot,
            None => {
                next.push((Arc::clone(&line.file), first));
                next.last_mut().unwrap()
            }
        };
        assert_eq!(line.start, slot.1, "gap or overlap before {:?}", line.data);
        assert!(line.end > line.start);
        slot.1 = line.end;
    }
}

pub(super) fn new_source(config: FileSourceConfig) -> (FileSource, Arc<Registry>) {
    let registry = Arc::new(Registry::default());
    (
        FileSource::new(config, Arc::clone(&registry), Vec::new()),
        registry,
    )
}

#[test]
fn crlf_and_empty_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    append(&path, b"one\r\n\ntwo\n\r\n");
    let (mut source, _) = new_source(config(dir.path(), "*.log"));
    let mut sink = Collect::default();
    drain(&mut source, &mut sink, Instant::now());
    assert_eq!(sink.data(), [&b"one"[..], b"", b"two", b""]);
    let ranges: Vec<(u64, u64)> = sink.lines.iter().map(|l| (l.start, l.end)).collect();
    assert_eq!(ranges, [(0, 5), (5, 6), (6, 10), (10, 12)]);
    assert!(sink.lines.iter().all(|l| l.kind == LineKind::Complete));
    assert_eq!(sink.lines[0].path, path);
}

#[test]
fn last_line_without_newline_is_emitted_once_after_the_quiet_period() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    append(&path, b"first\nhalf");
    let (mut source, _) = new_source(config(dir.path(), "*.log"));
    let mut sink = Collect::default();
    let start = Instant::now();
    drain(&mut source, &mut sink, start);
    assert_eq!(sink.data(), [&b"first"[..]]);
    let outcome = source.poll(secs(start, 0.5), &mut sink).unwrap();
    assert_eq!(outcome.next_deadline, Some(secs(start, 1.0)));
    assert_eq!(sink.lines.len(), 1, "not quiet long enough yet");
    source.poll(secs(start, 1.0), &mut sink).unwrap();
    assert_eq!(sink.data(), [&b"first"[..], b"half"]);
    assert_eq!((sink.lines[1].start, sink.lines[1].end), (6, 10));
    assert_eq!(sink.lines[1].kind, LineKind::Partial);
    append(&path, b" more\nnext\n");
    drain(&mut source, &mut sink, secs(start, 1.2));
    source.poll(secs(start, 5.0), &mut sink).unwrap();
    assert_eq!(sink.data(), [&b"first"[..], b"half", b" more", b"next"]);
    assert_contiguous(&sink.lines, 0);
    assert_eq!(source.stats().partial_lines, 1);
}

#[test]
fn empty_file_is_opened_and_read_when_it_grows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    append(&path, b"");
    let (mut source, registry) = new_source(config(dir.path(), "*.log"));
    let mut sink = Collect::default();
    let start = Instant::now();
    drain(&mut source, &mut sink, start);
    source.poll(secs(start, 10.0), &mut sink).unwrap();
    assert!(sink.lines.is_empty());
    assert_eq!(source.stats().files_opened, 1);
    assert_eq!(registry.snapshot()[0].fingerprint.len, 0);
    append(&path, b"x\n");
    drain(&mut source, &mut sink, secs(start, 10.1));
    assert_eq!(sink.data(), [&b"x"[..]]);
    assert_eq!(registry.snapshot()[0].fingerprint.len, 2);
}

const BIG: usize = 5 * 1024 * 1024;

fn five_mib_line(policy: LongLinePolicy) -> (Collect, FileSourceStats) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let mut big: Vec<u8> = (0..BIG).map(|i| b'a' + (i % 26) as u8).collect();
    big.push(b'\n');
    big.extend_from_slice(b"short\n");
    append(&path, &big);
    let mut config = config(dir.path(), "*.log");
    config.max_line_bytes = 1000;
    config.read_buffer_bytes = 64 * 1024;
    config.long_lines = policy;
    let (mut source, _) = new_source(config);
    let mut sink = Collect::default();
    let now = Instant::now();
    loop {
        let outcome = source.poll(now, &mut sink).unwrap();
        for file in source.files.values() {
            assert!(file.reader().allocated() <= 1000 + 64 * 1024);
        }
        if outcome.bytes_read == 0 {
            break;
        }
    }
    assert_contiguous(&sink.lines, 0);
    assert_eq!(sink.lines.last().unwrap().end, BIG as u64 + 7);
    assert_eq!(sink.lines.last().unwrap().data, b"short");
    let first = sink.lines[0].data.clone();
    assert_eq!(first, big[..1000]);
    (sink, source.stats().clone())
}

#[test]
fn five_mib_line_is_split_into_fragments() {
    let (sink, stats) = five_mib_line(LongLinePolicy::Split);
    let pieces = &sink.lines[..sink.lines.len() - 1];
    assert_eq!(pieces.len(), BIG.div_ceil(1000));
    assert!(
        pieces[..pieces.len() - 1]
            .iter()
            .all(|l| l.kind == LineKind::Fragment)
    );
    assert_eq!(pieces.last().unwrap().kind, LineKind::Complete);
    assert!(pieces.iter().all(|l| l.data.len() <= 1000));
    let total: usize = pieces.iter().map(|l| l.data.len()).sum();
    assert_eq!(total, BIG);
    assert_eq!((stats.lines_split, stats.lines_truncated), (1, 0));
    assert_eq!(stats.lines, pieces.len() as u64 + 1);
}

#[test]
fn five_mib_line_is_truncated_once() {
    let (sink, stats) = five_mib_line(LongLinePolicy::Truncate);
    assert_eq!(sink.lines.len(), 2);
    let line = &sink.lines[0];
    assert_eq!(line.kind, LineKind::Truncated);
    assert_eq!((line.start, line.end), (0, BIG as u64 + 1));
    assert_eq!(line.data.len(), 1000);
    assert_eq!((stats.lines_truncated, stats.lines_split), (1, 0));
}

#[test]
fn nul_bytes_and_invalid_utf8_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    append(&dir.path().join("a.log"), b"a\0b\xff\xfe\n\0\n");
    let (mut source, _) = new_source(config(dir.path(), "*.log"));
    let mut sink = Collect::default();
    drain(&mut source, &mut sink, Instant::now());
    assert_eq!(sink.data(), [&b"a\0b\xff\xfe"[..], b"\0"]);
}

#[test]
fn unreadable_paths_are_skipped_counted_once_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let locked = dir.path().join("locked.log");
    append(&locked, b"secret\n");
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    // Root (CAP_DAC_OVERRIDE) reads through mode 000; the FIFO and dangling link below still
    // exercise the unreadable paths there.
    let privileged = fs::File::open(&locked).is_ok();
    let fifo = dir.path().join("pipe.log");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    symlink(dir.path().join("nowhere"), dir.path().join("dangling.log")).unwrap();
    let (mut source, _) = new_source(config(dir.path(), "*.log"));
    let mut sink = Collect::default();
    let start = Instant::now();
    for step in 0..4 {
        // Every pass rescans: a FIFO opened by mistake would block here forever.
        drain(&mut source, &mut sink, secs(start, f64::from(step)));
    }
    let stats = source.stats().clone();
    assert_eq!(stats.skipped_special, 1, "FIFO, once");
    assert_eq!(stats.vanished, 1, "dangling symlink, once");
    if privileged {
        assert_eq!(sink.data(), [&b"secret"[..]]);
    } else {
        assert!(sink.lines.is_empty());
        assert_eq!(
            stats.permission_denied, 1,
            "logged once, not at every rescan"
        );
    }
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o644)).unwrap();
    drain(&mut source, &mut sink, secs(start, 5.0));
    assert_eq!(sink.data(), [&b"secret"[..]]);
    assert_eq!(source.stats().files_opened, 1);
}

#[test]
fn directory_matching_the_glob_is_skipped_once() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("d.log")).unwrap();
    append(&dir.path().join("a.log"), b"x\n");
    let (mut source, _) = new_source(config(dir.path(), "*.log"));
    let mut sink = Collect::default();
    let start = Instant::now();
    for step in 0..3 {
        drain(&mut source, &mut sink, secs(start, f64::from(step)));
    }
    assert_eq!(source.stats().skipped_directories, 1);
    assert_eq!(sink.data(), [&b"x"[..]]);
}

#[test]
fn file_appearing_later_is_found_by_the_rescan_and_read_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    append(&dir.path().join("old.log"), b"before\n");
    let mut config = config(dir.path(), "*.log");
    config.read_from = ReadFrom::End;
    let (mut source, _) = new_source(config);
    let mut sink = Collect::default();
    let start = Instant::now();
    drain(&mut source, &mut sink, start);
    assert!(
        sink.lines.is_empty(),
        "read_from = End skips existing content"
    );
    append(&dir.path().join("new.log"), b"hello\n");
    append(&dir.path().join("old.log"), b"after\n");
    drain(&mut source, &mut sink, secs(start, 0.5));
    assert_eq!(sink.data(), [&b"after"[..]], "rescan not due yet");
    drain(&mut source, &mut sink, secs(start, 1.0));
    assert_eq!(sink.data(), [&b"after"[..], b"hello"]);
    assert_eq!(sink.lines[1].start, 0);
}

#[test]
fn symlink_retarget_is_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let pods = dir.path().join("pods");
    let containers = dir.path().join("containers");
    fs::create_dir_all(&pods).unwrap();
    fs::create_dir_all(&containers).unwrap();
    let link = containers.join("app.log");
    append(&pods.join("0.log"), b"a1\n");
    symlink(pods.join("0.log"), &link).unwrap();
    let (mut source, registry) = new_source(config(&containers, "*.log"));
    let mut sink = Collect::default();
    let start = Instant::now();
    drain(&mut source, &mut sink, start);
    // The writer finishes the old target, then the link moves to a new one.
    append(&pods.join("0.log"), b"a2\n");
    append(&pods.join("1.log"), b"b1\n");
    let tmp = containers.join(".app.log.tmp");
    symlink(pods.join("1.log"), &tmp).unwrap();
    fs::rename(&tmp, &link).unwrap();
    drain(&mut source, &mut sink, secs(start, 1.0));
    assert_eq!(sink.data(), [&b"a1"[..], b"a2", b"b1"]);
    assert!(sink.lines.iter().all(|l| l.path == link));
    assert_eq!(source.stats().rotations, 1);
    assert_contiguous(&sink.lines, 0);
    // The old target is drained until idle for rotate_wait, then retired.
    source.poll(secs(start, 5.9), &mut sink).unwrap();
    assert_eq!(source.stats().files_retired, 0);
    source.poll(secs(start, 6.0), &mut sink).unwrap();
    assert_eq!(source.stats().files_retired, 1);
    ack_all(sink.take().into_iter().filter_map(|l| l.token));
    let left = registry.snapshot();
    assert_eq!(left.len(), 1, "the retired file left the checkpoint");
    assert_eq!(left[0].offset, 3);
}

#[test]
fn rename_rotation_drains_the_old_file_then_reads_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    append(&path, b"1\n");
    let (mut source, _) = new_source(config(dir.path(), "*.log"));
    let mut sink = Collect::default();
    let start = Instant::now();
    drain(&mut source, &mut sink, start);
    fs::rename(&path, dir.path().join("app.log.1")).unwrap();
    append(&path, b"new\n");
    drain(&mut source, &mut sink, secs(start, 1.0));
    // The writer still had the old file open for a moment.
    append(&dir.path().join("app.log.1"), b"2\n");
    drain(&mut source, &mut sink, secs(start, 4.0));
    assert_eq!(sink.data(), [&b"1"[..], b"new", b"2"]);
    source.poll(secs(start, 8.9), &mut sink).unwrap();
    assert_eq!(source.stats().files_retired, 0, "idle only since 4.0");
    source.poll(secs(start, 9.0), &mut sink).unwrap();
    assert_eq!(source.stats().files_retired, 1);
    assert_eq!(source.stats().rotations, 1);
    assert_contiguous(&sink.lines, 0);
}

#[test]
fn copytruncate_restarts_the_file_at_zero_under_a_new_generation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    append(&path, b"first line\nsecond line\n");
    let (mut source, registry) = new_source(config(dir.path(), "*.log"));
    let mut sink = Collect::default();
    let start = Instant::now();
    drain(&mut source, &mut sink, start);
    let old = sink.take();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&path, b"x\n");
    drain(&mut source, &mut sink, secs(start, 0.1));
    assert_eq!(sink.data(), [&b"x"[..]]);
    assert_eq!((sink.lines[0].start, sink.lines[0].end), (0, 2));
    assert_eq!(source.stats().truncations, 1);
    // Late acks of the old content do not move the new generation.
    ack_all(old.into_iter().filter_map(|l| l.token));
    assert_eq!(registry.snapshot()[0].offset, 0);
    ack_all(sink.take().into_iter().filter_map(|l| l.token));
    assert_eq!(registry.snapshot()[0].offset, 2);
    // Truncated and rewritten past the old offset before the next pass: the fingerprint sees it.
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&path, b"rewritten longer\n");
    drain(&mut source, &mut sink, secs(start, 0.2));
    assert_eq!(sink.data(), [&b"rewritten longer"[..]]);
    assert_eq!(source.stats().truncations, 2);
}

#[test]
fn delete_drains_the_open_handle_and_a_recreated_file_starts_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    append(&path, b"a\n");
    let (mut source, _) = new_source(config(dir.path(), "*.log"));
    let mut sink = Collect::default();
    let start = Instant::now();
    drain(&mut source, &mut sink, start);
    let mut writer = OpenOptions::new().append(true).open(&path).unwrap();
    fs::remove_file(&path).unwrap();
    drain(&mut source, &mut sink, secs(start, 1.0));
    assert_eq!(source.stats().deletions, 1);
    writer.write_all(b"b\n").unwrap();
    drain(&mut source, &mut sink, secs(start, 2.0));
    append(&path, b"c\n");
    drain(&mut source, &mut sink, secs(start, 3.0));
    assert_eq!(sink.data(), [&b"a"[..], b"b", b"c"]);
    assert_eq!(sink.lines[2].start, 0);
    source.poll(secs(start, 7.0), &mut sink).unwrap();
    assert_eq!(source.stats().files_retired, 1);
}

#[test]
fn restart_resumes_at_the_checkpoint_and_spots_a_reused_inode() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.log");
    let b = dir.path().join("b.log");
    append(&a, b"a1\na2\n");
    append(&b, b"b1\n");
    let (mut source, registry) = new_source(config(dir.path(), "*.log"));
    let mut sink = Collect::default();
    drain(&mut source, &mut sink, Instant::now());
    ack_all(sink.take().into_iter().filter_map(|l| l.token));
    drop(source);
    let mut checkpoints = registry.snapshot();
    append(&a, b"a3\n");
    // b.log's checkpoint now names the same inode with other content.
    let b_checkpoint = checkpoints.iter_mut().find(|c| c.path == b).unwrap();
    b_checkpoint.fingerprint.crc32 ^= 1;
    let registry = Arc::new(Registry::default());
    let mut config = config(dir.path(), "*.log");
    config.read_from = ReadFrom::End;
    let mut source = FileSource::new(config, registry, checkpoints);
    drain(&mut source, &mut sink, Instant::now());
    let mut got: Vec<(&[u8], u64)> = sink.lines.iter().map(|l| (&l.data[..], l.start)).collect();
    got.sort();
    assert_eq!(got, [(&b"a3"[..], 6), (&b"b1"[..], 0)]);
}

#[test]
fn restart_finishes_a_file_rotated_while_down() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    append(&path, b"1\n2\n");
    let (mut source, registry) = new_source(config(dir.path(), "*.log"));
    let mut sink = Collect::default();
    drain(&mut source, &mut sink, Instant::now());
    // Only the first line was delivered before the shipper stopped.
    let mut lines = sink.take();
    lines[0].token.take().unwrap().ack();
    drop(source);
    let checkpoints = registry.snapshot();
    assert_eq!(checkpoints[0].offset, 2);
    append(&path, b"3\n");
    fs::rename(&path, dir.path().join("app.log.1")).unwrap();
    append(&path, b"new\n");
    let mut config = config(dir.path(), "*.log");
    config.read_from = ReadFrom::End;
    let registry = Arc::new(Registry::default());
    let mut source = FileSource::new(config, Arc::clone(&registry), checkpoints);
    let start = Instant::now();
    drain(&mut source, &mut sink, start);
    let mut got: Vec<(PathBuf, Vec<u8>, u64)> = sink
        .lines
        .iter()
        .map(|l| (l.path.clone(), l.data.clone(), l.start))
        .collect();
    got.sort();
    let rotated = dir.path().join("app.log.1");
    assert_eq!(
        got,
        [
            (path.clone(), b"new".to_vec(), 0),
            (rotated.clone(), b"2".to_vec(), 2),
            (rotated, b"3".to_vec(), 4)
        ]
    );
    source.poll(secs(start, 6.0), &mut sink).unwrap();
    assert_eq!(source.stats().files_retired, 1);
    ack_all(sink.take().into_iter().filter_map(|l| l.token));
    let left = registry.snapshot();
    assert_eq!(left.len(), 1);
    assert_eq!((left[0].path.clone(), left[0].offset), (path, 4));
}

#[test]
fn file_vanishing_between_stat_and_open_is_counted_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone.log");
    append(&path, b"x\n");
    let (mut source, _) = new_source(config(dir.path(), "*.log"));
    fs::remove_file(&path).unwrap();
    let now = Instant::now();
    let mut sink = Collect::default();
    for _ in 0..2 {
        source
            .open(
                &path,
                Start::Matched { first_scan: false },
                now,
                &mut sink,
                None,
            )
            .unwrap();
    }
    assert_eq!(source.stats().vanished, 1);
    assert_eq!(source.stats().files_opened, 0);
}

#[test]
fn closed_sink_stops_the_pass() {
    struct Refuse;
    impl LineSink for Refuse {
        fn line(&mut self, _: Line<'_>) -> Result<(), Closed> {
            Err(Closed)
        }
        fn idle(&mut self, _: Instant) -> Result<Option<Instant>, Closed> {
            Err(Closed)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    append(&dir.path().join("a.log"), b"x\n");
    let (mut source, _) = new_source(config(dir.path(), "*.log"));
    assert_eq!(source.poll(Instant::now(), &mut Refuse), Err(Closed));
    // `run` returns on its own when the sink is closed.
    source.run(tokio_util::sync::CancellationToken::new(), &mut Refuse);
}

#[test]
fn run_stops_when_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    append(&dir.path().join("a.log"), b"x\n");
    let (source, _) = new_source(config(dir.path(), "*.log"));
    let cancel = tokio_util::sync::CancellationToken::new();
    let stopper = cancel.clone();
    let handle = std::thread::spawn(move || {
        let mut sink = Collect::default();
        source.run(cancel, &mut sink);
        sink.data().len()
    });
    stopper.cancel();
    // Joins whether the cancellation came before or after the line was read.
    assert!(handle.join().unwrap() <= 1);
}
