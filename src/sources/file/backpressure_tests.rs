//! The file source while the pipeline is full: files are still found and opened (their
//! descriptors keep rotated and deleted content reachable), reading waits, rotated generations are
//! read oldest first, and the descriptor and deleted-file bounds count what they give up.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::tests::{Collect, append, config, drain};
use super::*;
use crate::ack::{Registry, ack_all};

/// A sink whose downstream is full until `open` is set: it still takes what is emitted (as the
/// record builder does), but says it is not ready, so the source must not read.
#[derive(Default)]
struct Gate {
    open: Arc<AtomicBool>,
    emitted: Arc<AtomicUsize>,
    inner: Collect,
    losses: Vec<Loss>,
}

impl LineSink for Gate {
    fn line(&mut self, line: Line<'_>) -> Result<(), Closed> {
        self.emitted.fetch_add(1, Ordering::SeqCst);
        self.inner.line(line)
    }
    fn idle(&mut self, now: Instant) -> Result<Option<Instant>, Closed> {
        self.inner.idle(now)
    }
    fn ready(&mut self) -> Result<bool, Closed> {
        Ok(self.open.load(Ordering::SeqCst))
    }
    fn lost(&mut self, loss: Loss) {
        self.losses.push(loss);
    }
}

impl Gate {
    fn sequence(&self) -> Vec<u64> {
        self.inner
            .lines
            .iter()
            .map(|l| {
                std::str::from_utf8(&l.data)
                    .unwrap()
                    .strip_prefix("line ")
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect()
    }
}

#[derive(Clone, Copy, Debug)]
enum Rotation {
    /// `app.log` → `app.log.N` (a name the pattern does not match), then a new `app.log`.
    Rename,
    /// `app.log` deleted, then a new `app.log`.
    DeleteRecreate,
}

/// Writes numbered lines to `app.log` and rotates it, as a logging handler does.
struct Writer {
    dir: PathBuf,
    path: PathBuf,
    next: u64,
    rotations: usize,
    /// Bytes written to each generation, oldest first.
    sizes: Vec<u64>,
}

impl Writer {
    fn new(dir: &Path) -> Writer {
        Writer {
            dir: dir.to_path_buf(),
            path: dir.join("app.log"),
            next: 0,
            rotations: 0,
            sizes: vec![0],
        }
    }

    fn write(&mut self, lines: u64) {
        let mut bytes = Vec::new();
        for _ in 0..lines {
            bytes.extend_from_slice(format!("line {}\n", self.next).as_bytes());
            self.next += 1;
        }
        append(&self.path, &bytes);
        *self.sizes.last_mut().unwrap() += bytes.len() as u64;
    }

    fn rotate(&mut self, how: Rotation) {
        self.rotations += 1;
        match how {
            Rotation::Rename => {
                let to = self.dir.join(format!("app.log.{}", self.rotations));
                fs::rename(&self.path, to).unwrap();
            }
            Rotation::DeleteRecreate => fs::remove_file(&self.path).unwrap(),
        }
        append(&self.path, b"");
        self.sizes.push(0);
    }
}

fn source(dir: &Path, max_open_files: usize) -> (FileSource, Arc<Registry>) {
    // A literal path: the rotated names are never matched, so only the descriptor keeps them.
    let mut config = config(dir, "app.log");
    config.max_open_files = max_open_files;
    config.read_buffer_bytes = 256;
    let registry = Arc::new(Registry::default());
    let source = FileSource::new(config, Arc::clone(&registry), Vec::new());
    (source, registry)
}

/// After each write and rotation the source polls as a watcher event makes it do, the gate
/// closed throughout; then the gate opens and everything is read.
struct Outcome {
    gate: Gate,
    source: FileSource,
    writer: Writer,
    _dir: tempfile::TempDir,
}

fn rotate_while_full(rotations: &[Rotation], max_open_files: usize) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = Writer::new(dir.path());
    let (mut source, _registry) = source(dir.path(), max_open_files);
    let mut gate = Gate::default();
    let start = Instant::now();
    let mut now = start;
    writer.write(25);
    source.poll(now, &mut gate).unwrap();
    for how in rotations {
        writer.write(25);
        writer.rotate(*how);
        writer.write(5);
        now += Duration::from_millis(50);
        source.request_rescan();
        source.poll(now, &mut gate).unwrap();
    }
    assert!(
        gate.inner.lines.is_empty(),
        "read while the pipeline was full"
    );
    gate.open.store(true, Ordering::SeqCst);
    // Read everything, then past the rotation wait so the old generations retire.
    for step in 0..4 {
        now += Duration::from_secs(step * 6);
        drain(&mut source, &mut gate, now);
    }
    Outcome {
        gate,
        source,
        writer,
        _dir: dir,
    }
}

fn assert_everything_in_order(gate: &Gate, writer: &Writer) {
    let got = gate.sequence();
    let expected: Vec<u64> = (0..writer.next).collect();
    assert_eq!(got, expected, "every line once, generations oldest first");
}

#[test]
fn rename_rotations_while_the_pipeline_is_full_lose_nothing() {
    let Outcome {
        gate,
        source,
        writer,
        ..
    } = rotate_while_full(&[Rotation::Rename; 20], 256);
    assert_everything_in_order(&gate, &writer);
    assert_eq!(source.stats().files_opened, 21);
    assert_eq!(source.stats().files_retired, 20);
    assert_eq!(source.stats().peak_open_files, 21);
    assert!(gate.losses.is_empty());
}

#[test]
fn delete_and_recreate_while_the_pipeline_is_full_loses_nothing() {
    let Outcome {
        gate,
        source,
        writer,
        ..
    } = rotate_while_full(&[Rotation::DeleteRecreate; 20], 256);
    assert_everything_in_order(&gate, &writer);
    assert_eq!(source.stats().files_retired, 20);
    assert!(gate.losses.is_empty());
}

#[test]
fn mixed_rotations_while_the_pipeline_is_full_lose_nothing() {
    let rotations: Vec<Rotation> = (0..20)
        .map(|i| {
            if i % 3 == 0 {
                Rotation::DeleteRecreate
            } else {
                Rotation::Rename
            }
        })
        .collect();
    let Outcome { gate, writer, .. } = rotate_while_full(&rotations, 256);
    assert_everything_in_order(&gate, &writer);
    assert!(gate.losses.is_empty());
}

#[test]
fn the_descriptor_bound_closes_the_oldest_rotated_files_and_counts_their_bytes() {
    let Outcome {
        gate,
        source,
        writer,
        ..
    } = rotate_while_full(&[Rotation::Rename; 10], 4);
    let stats = source.stats();
    // Eleven generations, four descriptors: the seven oldest were closed unread.
    assert_eq!(stats.files_closed_unread, 7);
    assert_eq!(stats.bytes_lost, writer.sizes[..7].iter().sum::<u64>());
    let expected: Vec<Loss> = writer.sizes[..7]
        .iter()
        .map(|&bytes| Loss {
            reason: LossReason::MaxOpenFiles,
            bytes,
        })
        .collect();
    assert_eq!(gate.losses, expected);
    assert!(stats.peak_open_files <= 4);
    // The four newest generations arrive whole and in order.
    // The first generation has 50 lines, the next ones 30.
    let first_kept = 50 + 30 * 6;
    let expected: Vec<u64> = (first_kept..writer.next).collect();
    assert_eq!(gate.sequence(), expected);
}

#[test]
fn a_new_file_waits_for_a_descriptor_when_every_open_file_still_has_its_name() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a.log", "b.log", "c.log"] {
        append(&dir.path().join(name), format!("{name}\n").as_bytes());
    }
    let mut config = config(dir.path(), "*.log");
    config.max_open_files = 2;
    let registry = Arc::new(Registry::default());
    let mut source = FileSource::new(config, registry, Vec::new());
    let mut sink = Collect::default();
    let now = Instant::now();
    drain(&mut source, &mut sink, now);
    assert_eq!(source.stats().files_opened, 2);
    assert_eq!(source.stats().opens_deferred, 1);
    assert_eq!(source.stats().files_closed_unread, 0);
    // When one goes away for good, the waiting file is opened and read.
    fs::remove_file(dir.path().join("a.log")).unwrap();
    for step in 1..4 {
        drain(&mut source, &mut sink, now + Duration::from_secs(step * 6));
    }
    let mut got: Vec<&[u8]> = sink.lines.iter().map(|l| l.data.as_slice()).collect();
    got.sort();
    assert_eq!(got, [&b"a.log"[..], b"b.log", b"c.log"]);
    assert_eq!(source.stats().bytes_lost, 0);
}

#[test]
fn deleted_files_are_held_within_their_byte_and_time_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = Writer::new(dir.path());
    let mut config = config(dir.path(), "app.log");
    // Room for about two deleted generations of 30 lines (about 270 bytes each).
    config.max_held_deleted_bytes = 600;
    config.max_held_deleted_for = Duration::from_secs(60);
    let registry = Arc::new(Registry::default());
    let mut source = FileSource::new(config, registry, Vec::new());
    let mut gate = Gate::default();
    let start = Instant::now();
    writer.write(0);
    source.poll(start, &mut gate).unwrap();
    for i in 0..4 {
        writer.write(30);
        writer.rotate(Rotation::DeleteRecreate);
        source.request_rescan();
        source
            .poll(start + Duration::from_millis(i), &mut gate)
            .unwrap();
    }
    // Four deleted generations of 270 to 300 bytes: the oldest two went over 600 bytes.
    let stats = source.stats().clone();
    assert_eq!(stats.files_closed_unread, 2, "{stats:?}");
    assert_eq!(stats.bytes_lost, writer.sizes[0] + writer.sizes[1]);
    assert!(
        gate.losses
            .iter()
            .all(|l| l.reason == LossReason::MaxHeldDeleted)
    );
    // The others are given up once held for a minute while the pipeline stays full.
    source
        .poll(start + Duration::from_secs(61), &mut gate)
        .unwrap();
    assert_eq!(source.stats().files_closed_unread, 4);
    assert_eq!(
        source.stats().bytes_lost,
        writer.sizes[..4].iter().sum::<u64>()
    );
    assert!(gate.inner.lines.is_empty());
}

#[test]
fn restart_reads_a_file_rotated_while_stopped_before_its_successor() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = Writer::new(dir.path());
    writer.write(10);
    let (mut source, registry) = source(dir.path(), 256);
    let mut sink = Collect::default();
    drain(&mut source, &mut sink, Instant::now());
    // Four lines delivered before the stop.
    let mut lines = sink.take();
    ack_all(lines.drain(..4).filter_map(|l| l.token));
    drop(source);
    let checkpoints = registry.snapshot();
    // While stopped: more lines, a rotation, a compressed older generation, and a new file.
    writer.write(10);
    writer.rotate(Rotation::Rename);
    fs::write(dir.path().join("app.log.2.gz"), b"\x1f\x8b not text").unwrap();
    writer.write(10);
    let registry = Arc::new(Registry::default());
    let mut config = config(dir.path(), "app.log");
    config.read_buffer_bytes = 16;
    let mut source = FileSource::new(config, registry, checkpoints);
    let mut sink = Gate::default();
    sink.open.store(true, Ordering::SeqCst);
    drain(&mut source, &mut sink, Instant::now());
    // From the checkpoint to the end of the rotated file, then the new one: in order.
    assert_eq!(sink.sequence(), (4..30).collect::<Vec<u64>>());
    assert_eq!(sink.inner.lines[0].path, dir.path().join("app.log.1"));
    assert_eq!(source.stats().checkpoints_lost, 0);
}

#[test]
fn run_opens_rotated_files_within_the_wait_while_the_pipeline_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = Writer::new(dir.path());
    writer.write(5);
    let mut config = config(dir.path(), "app.log");
    // Only watcher events make the source look again; the periodic rescan is far away.
    config.rescan_interval = Duration::from_secs(3600);
    let registry = Arc::new(Registry::default());
    let source = FileSource::new(config, Arc::clone(&registry), Vec::new());
    let gate = Gate::default();
    let open = Arc::clone(&gate.open);
    let emitted = Arc::clone(&gate.emitted);
    let cancel = tokio_util::sync::CancellationToken::new();
    let stop = cancel.clone();
    let thread = std::thread::spawn(move || {
        let mut gate = gate;
        source.run(cancel, &mut gate);
        gate
    });
    // Readiness signals, not timings: the registry holds one progress per opened generation,
    // and the gate counts what was emitted.
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what} never happened: {:?}",
                registry.snapshot()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait_for("first open", &|| registry.snapshot().len() == 1);
    for generation in 2..=21 {
        writer.write(20);
        writer.rotate(Rotation::Rename);
        wait_for("open after rotation", &|| {
            registry.snapshot().len() == generation
        });
    }
    writer.write(20);
    assert_eq!(emitted.load(Ordering::SeqCst), 0, "read while full");
    open.store(true, Ordering::SeqCst);
    let total = writer.next as usize;
    wait_for("every line read", &|| {
        emitted.load(Ordering::SeqCst) == total
    });
    stop.cancel();
    let gate = thread.join().unwrap();
    assert_everything_in_order(&gate, &writer);
}

#[test]
fn the_opener_opens_each_new_file_as_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = Writer::new(dir.path());
    let pattern = dir.path().join("app.log").to_string_lossy().into_owned();
    let seq = Arc::new(std::sync::atomic::AtomicU64::new(7));
    let opener = opener::Opener::spawn(vec![pattern], Arc::clone(&seq), Default::default())
        .expect("a watcher");
    let next = || {
        opener
            .files
            .recv_timeout(Duration::from_secs(30))
            .expect("an opened file")
    };
    writer.write(3);
    let first = next();
    writer.rotate(Rotation::Rename);
    let second = next();
    assert_eq!((first.seq, second.seq), (7, 8));
    assert_eq!(first.path, dir.path().join("app.log"));
    assert_ne!(first.id, second.id);
    // The descriptor still reads the first generation under its new name.
    let mut text = String::new();
    std::io::Read::read_to_string(&mut &first.file, &mut text).unwrap();
    assert_eq!(text, "line 0\nline 1\nline 2\n");
}

#[test]
fn a_file_the_opener_held_is_read_before_the_one_that_replaced_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = Writer::new(dir.path());
    writer.write(5);
    let (mut source, _registry) = source(dir.path(), 256);
    let mut gate = Gate::default();
    gate.open.store(true, Ordering::SeqCst);
    let now = Instant::now();
    drain(&mut source, &mut gate, now);
    // A generation appears, is opened by the opener, and is rotated away (then deleted) before
    // any pass of the source looks; the next generation has the path by then.
    writer.rotate(Rotation::Rename);
    writer.write(5);
    let path = dir.path().join("app.log");
    let file = discover::open(&path).unwrap();
    let id = discover::file_id(&file.metadata().unwrap());
    let seq = source.next_seq.fetch_add(1, Ordering::Relaxed);
    writer.rotate(Rotation::DeleteRecreate);
    writer.write(5);
    source.preopened.insert(
        id,
        opener::Opened {
            path,
            file,
            id,
            seq,
        },
    );
    source.request_rescan();
    for step in 0..3 {
        drain(&mut source, &mut gate, now + Duration::from_secs(step * 6));
    }
    assert_everything_in_order(&gate, &writer);
    assert_eq!(source.stats().files_opened, 3);
}
