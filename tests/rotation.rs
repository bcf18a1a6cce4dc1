//! Rotation while the shipper is behind, through the binary and the in-repo endpoint: files that
//! are created, written and rotated away while the pipeline is full are still found, opened and
//! shipped; the descriptor bound counts and logs what it gives up; Python's `RotatingFileHandler`
//! at full speed against a stream at the real per-shard limits loses nothing.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use common::fake::FakeKinesis;
use common::{Shipper, append_lines, http_get, line_numbers};

const STREAM: &str = "rotation";
const ARRIVAL: Duration = Duration::from_secs(120);
const EXIT: Duration = Duration::from_secs(30);
const FILE_OPENED: &str = "file opened";

/// Lines of the first generation: more than the pipeline holds (chunks, batches in flight and
/// parked), so the shipper is blocked on it while the next generations are written.
const FIRST_GENERATION: usize = 20_000;

fn start_shipper(fake: &FakeKinesis, log: &Path, data_dir: &Path, extra: &[&str]) -> Shipper {
    let endpoint = format!("http://{}", fake.addr);
    let mut args = vec![
        "tail",
        log.to_str().unwrap(),
        "--stream",
        STREAM,
        "--endpoint-url",
        &endpoint,
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--linger",
        "20ms",
    ];
    args.extend_from_slice(extra);
    Shipper::start(&args, &[])
}

/// Line numbers of every user record the endpoint accepted, and how often each came.
fn delivered(fake: &FakeKinesis) -> HashMap<usize, usize> {
    let dump = fake.admin("GET", &format!("/records?stream={STREAM}"), "");
    let texts: Vec<String> = dump["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let data = BASE64.decode(r["data"].as_str().unwrap()).unwrap();
            String::from_utf8(data).unwrap()
        })
        .collect();
    let mut counts = HashMap::new();
    for n in line_numbers(&texts) {
        *counts.entry(n).or_default() += 1;
    }
    counts
}

fn accepted(fake: &FakeKinesis) -> u64 {
    fake.admin("GET", "/stats", "")["user_records_accepted"]
        .as_u64()
        .unwrap()
}

/// Wait until the endpoint accepted `n` user records.
fn wait_accepted(fake: &FakeKinesis, n: u64) {
    let deadline = Instant::now() + ARRIVAL;
    while accepted(fake) < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} arrived",
            accepted(fake)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every number in `expected` arrived exactly once.
fn assert_each_once(fake: &FakeKinesis, expected: impl Iterator<Item = usize>) {
    let counts = delivered(fake);
    let missing: Vec<usize> = expected.filter(|n| !counts.contains_key(n)).collect();
    let duplicated = counts.values().filter(|&&c| c > 1).count();
    assert!(
        missing.is_empty(),
        "{} lines missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(duplicated, 0, "duplicates without a crash");
}

#[derive(Clone, Copy, Debug)]
enum Rotation {
    Rename,
    DeleteRecreate,
}

/// Writes generations of numbered lines to `app.log`, rotating between them.
struct Writer<'a> {
    dir: &'a Path,
    log: &'a Path,
    next: usize,
    rotations: usize,
    /// Bytes of each generation, oldest first.
    sizes: Vec<u64>,
}

impl Writer<'_> {
    fn new<'a>(dir: &'a Path, log: &'a Path) -> Writer<'a> {
        Writer {
            dir,
            log,
            next: 0,
            rotations: 0,
            sizes: vec![0],
        }
    }

    fn write(&mut self, lines: usize) {
        append_lines(self.log, self.next, self.next + lines);
        self.next += lines;
        *self.sizes.last_mut().unwrap() = std::fs::metadata(self.log).unwrap().len();
    }

    fn rotate(&mut self, how: Rotation) {
        self.rotations += 1;
        match how {
            Rotation::Rename => {
                let to = self.dir.join(format!("app.log.{}", self.rotations));
                std::fs::rename(self.log, to).unwrap();
            }
            Rotation::DeleteRecreate => std::fs::remove_file(self.log).unwrap(),
        }
        append_lines(self.log, 0, 0);
        self.sizes.push(0);
    }
}

/// Every PutRecords call fails while a writer rotates the file 20 times (each new file waited for
/// in the shipper's log); then the endpoint recovers and every line arrives once.
fn rotations_while_every_call_fails(modes: &[Rotation]) {
    let fake = FakeKinesis::start(&["--stream", STREAM, "--store", "--fail-http", "1.0"]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let mut writer = Writer::new(dir.path(), &log);
    writer.write(FIRST_GENERATION);
    // No pacing: the endpoint has no limits, and after it recovers the backlog goes at once.
    let mut shipper = start_shipper(&fake, &log, &dir.path().join("data"), &["--no-rate-limit"]);
    shipper.wait_log_count(FILE_OPENED, 1, EXIT);
    for (i, how) in modes.iter().enumerate() {
        writer.write(200);
        writer.rotate(*how);
        shipper.wait_log_count(FILE_OPENED, i + 2, EXIT);
    }
    writer.write(200);
    assert_eq!(accepted(&fake), 0, "every call was to fail");
    fake.admin("POST", "/faults", r#"{"fail_http": 0.0}"#);
    wait_accepted(&fake, writer.next as u64);
    assert_each_once(&fake, 0..writer.next);
    shipper.signal("TERM");
    let (code, _) = shipper.wait(EXIT);
    assert_eq!(code, Some(0));
}

#[test]
fn rename_rotations_during_an_outage_lose_nothing() {
    rotations_while_every_call_fails(&[Rotation::Rename; 20]);
}

#[test]
fn delete_and_recreate_during_an_outage_loses_nothing() {
    rotations_while_every_call_fails(&[Rotation::DeleteRecreate; 20]);
}

#[test]
fn mixed_rotations_during_an_outage_lose_nothing() {
    let modes: Vec<Rotation> = (0..20)
        .map(|i| {
            if i % 2 == 0 {
                Rotation::Rename
            } else {
                Rotation::DeleteRecreate
            }
        })
        .collect();
    rotations_while_every_call_fails(&modes);
}

fn metric(addr: &str, series: &str) -> u64 {
    let (status, text) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{text}");
    common::metric(&text, series)
}

#[test]
fn the_descriptor_bound_counts_and_logs_what_it_gives_up() {
    let fake = FakeKinesis::start(&["--stream", STREAM, "--store", "--fail-http", "1.0"]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let mut writer = Writer::new(dir.path(), &log);
    writer.write(FIRST_GENERATION);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut shipper = start_shipper(
        &fake,
        &log,
        &dir.path().join("data"),
        &[
            "--max-open-files",
            "4",
            "--metrics-addr",
            &addr,
            "--no-rate-limit",
        ],
    );
    shipper.wait_log_count(FILE_OPENED, 1, EXIT);
    let mut first_of_generation = vec![0];
    for i in 0..10 {
        writer.write(200);
        writer.rotate(Rotation::Rename);
        first_of_generation.push(writer.next);
        shipper.wait_log_count(FILE_OPENED, i + 2, EXIT);
    }
    writer.write(200);
    // Eleven generations, four descriptors: the seven oldest are closed, each logged at ERROR.
    let closing = "closing a file before it was read to its end";
    shipper.wait_log_count(closing, 7, EXIT);
    assert!(
        shipper
            .log
            .iter()
            .filter(|l| l.contains(closing))
            .all(|l| l.contains("ERROR") && l.contains("max_open_files")),
        "{:#?}",
        shipper.log
    );
    let lost = metric(
        &addr,
        "shipper_file_bytes_lost_total{reason=\"max_open_files\"}",
    );
    // Generations 1 to 6 were never read (the first one was still being read), and the unread
    // rest of the first one is lost too.
    let never_read: u64 = writer.sizes[1..7].iter().sum();
    let all_seven: u64 = writer.sizes[..7].iter().sum();
    assert!(
        lost > never_read && lost <= all_seven,
        "{lost} bytes lost, {never_read} never read, {all_seven} in the seven"
    );
    assert_eq!(metric(&addr, "shipper_files_closed_unread_total"), 7);
    // Still running: once the endpoint recovers, the four newest generations arrive whole.
    fake.admin("POST", "/faults", r#"{"fail_http": 0.0}"#);
    let kept = first_of_generation[7]..writer.next;
    let deadline = Instant::now() + ARRIVAL;
    loop {
        let arrived = delivered(&fake);
        if kept.clone().all(|n| arrived.contains_key(&n)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the kept generations never arrived"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    shipper.signal("TERM");
    let (code, _) = shipper.wait(EXIT);
    assert_eq!(code, Some(0));
}

/// Python's own handler, rotating every 16 KiB (keeping three backups, so older ones are deleted)
/// as fast as it can, while the shipper sends to two shards at the real per-shard limits.
#[test]
fn rotating_file_handler_against_a_throttled_stream_loses_nothing() {
    const LINES: usize = 30_000;
    let fake = FakeKinesis::start(&[
        "--stream",
        STREAM,
        "--shards",
        "2",
        "--shard-limits",
        "--store",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("worker.log");
    let mut shipper = start_shipper(&fake, &log, &dir.path().join("data"), &[]);
    shipper.wait_log("shipper started", EXIT);
    let script = r#"
import logging, logging.handlers, sys
handler = logging.handlers.RotatingFileHandler(sys.argv[1], maxBytes=16384, backupCount=3)
handler.setFormatter(logging.Formatter("%(message)s"))
log = logging.getLogger("worker")
log.addHandler(handler)
log.setLevel(logging.INFO)
log.propagate = False
for i in range(int(sys.argv[2])):
    log.info("line-%06d payload for line %d", i, i)
"#;
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(&log)
        .arg(LINES.to_string())
        .status()
        .expect("run python3");
    assert!(status.success());
    // Two shards take at most 2,000 records a second: the shipper is far behind the writer.
    assert!(
        accepted(&fake) < LINES as u64 / 2,
        "not behind: the test would prove nothing"
    );
    wait_accepted(&fake, LINES as u64);
    assert_each_once(&fake, 0..LINES);
    shipper.signal("TERM");
    let (code, log) = shipper.wait(EXIT);
    assert_eq!(code, Some(0));
    assert!(
        !log.iter().any(|l| l.contains("ERROR")),
        "{:#?}",
        log.iter()
            .filter(|l| l.contains("ERROR"))
            .collect::<Vec<_>>()
    );
}
