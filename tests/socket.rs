//! The socket input with real Python senders (`tests/python/socket_sender.py`: the standard
//! library's SocketHandler, DatagramHandler and SysLogHandler), read back from LocalStack; and the
//! spool through outages, `kill -9`, a full spool and a torn tail, against the in-repo endpoint
//! with injected failures.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;

use common::fake::FakeKinesis;
use common::{Fixture, Shipper, StreamReader, free_port, http_get, metric, repo_root, wait_metric};

const READY: Duration = Duration::from_secs(30);
const ARRIVAL: Duration = Duration::from_secs(120);
const EXIT: Duration = Duration::from_secs(30);

/// Run the Python sender to the end: `count` records through `handler` to `address`.
fn send(handler: &str, address: &str, count: usize, tag: &str, plain: bool) {
    let mut command = Command::new("python3");
    command
        .arg(repo_root().join("tests/python/socket_sender.py"))
        .args([handler, address, &count.to_string(), tag]);
    if plain {
        command.arg("--plain");
    }
    let output = command.output().expect("run python3");
    assert!(
        output.status.success(),
        "{handler} sender failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("Logging error"),
        "{handler} sender could not send: {stderr}"
    );
}

/// Parsed records by sender tag, then `seq`; every copy kept.
fn by_sender(texts: &[String]) -> BTreeMap<String, BTreeMap<u64, Vec<Value>>> {
    let mut out: BTreeMap<String, BTreeMap<u64, Vec<Value>>> = BTreeMap::new();
    for text in texts {
        let record: Value = serde_json::from_str(text)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {text:.200}"));
        let (tag, seq) = match (&record["sender"], &record["seq"]) {
            (Value::String(tag), Value::Number(seq)) => (tag.clone(), seq.as_u64().unwrap()),
            // Syslog records carry neither as fields: `sender.TAG: ... seq=N` in the message.
            _ => {
                let message = record["message"].as_str().unwrap_or_default();
                let tag = message
                    .strip_prefix("sender.")
                    .and_then(|m| m.split(':').next())
                    .unwrap_or_else(|| panic!("no sender in {text:.200}"))
                    .to_string();
                let seq = message
                    .split("seq=")
                    .nth(1)
                    .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("no seq in {text:.200}"));
                (tag, seq)
            }
        };
        out.entry(tag)
            .or_default()
            .entry(seq)
            .or_default()
            .push(record);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn python_handlers_reach_kinesis_one_record_per_call_with_tracebacks_whole() {
    let fixture = Fixture::new("socket", 2, "unused.log").await;
    let dir = fixture.dir.path();
    let (tcp, udp, syslog_udp) = (free_port(), free_port(), free_port());
    let abstract_name = format!("shipper-test-{}", std::process::id());
    let senders: Vec<(String, String, String)> = vec![
        (
            "socket-tcp".into(),
            format!("tcp://127.0.0.1:{tcp}"),
            format!("127.0.0.1:{tcp}"),
        ),
        (
            "socket-unix".into(),
            format!("unix://{}", dir.join("log.sock").display()),
            dir.join("log.sock").display().to_string(),
        ),
        (
            "datagram-udp".into(),
            format!("udp://127.0.0.1:{udp}"),
            format!("127.0.0.1:{udp}"),
        ),
        (
            "datagram-unix".into(),
            format!("unixgram://@{abstract_name}"),
            format!("@{abstract_name}"),
        ),
        (
            "syslog-unix".into(),
            format!("unixgram://{}", dir.join("syslog.sock").display()),
            dir.join("syslog.sock").display().to_string(),
        ),
        (
            "syslog-udp".into(),
            format!("udp://127.0.0.1:{syslog_udp}?framing=syslog"),
            format!("127.0.0.1:{syslog_udp}"),
        ),
    ];
    let data_dir = fixture.data_dir.to_str().unwrap().to_string();
    let mut args = vec![
        "tail".to_string(),
        "--stream".into(),
        fixture.stream.clone(),
        "--endpoint-url".into(),
        fixture.endpoint.clone(),
        "--data-dir".into(),
        data_dir,
        "--linger".into(),
        "20ms".into(),
        "--partition-key".into(),
        "{field.sender|random}".into(),
    ];
    for (_, url, _) in &senders {
        args.extend(["--socket".to_string(), url.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut shipper = Shipper::start(&args, &[]);
    shipper.wait_log("shipper started", READY);

    const COUNT: usize = 40;
    for (handler, _, address) in &senders {
        send(handler, address, COUNT, handler, false);
    }
    let mut reader = StreamReader::new(&fixture.client, &fixture.stream).await;
    reader.wait_for(COUNT * senders.len(), ARRIVAL).await;
    let records = by_sender(&reader.texts());

    for (handler, _, _) in &senders {
        let got = records
            .get(handler)
            .unwrap_or_else(|| panic!("nothing from {handler}"));
        let seqs: Vec<u64> = got.keys().copied().collect();
        assert_eq!(seqs, (0..COUNT as u64).collect::<Vec<_>>(), "{handler}");
        for (seq, copies) in got {
            assert_eq!(
                copies.len(),
                1,
                "{handler} seq {seq} arrived {} times",
                copies.len()
            );
        }
        let failed = &got[&0][0];
        let korean = &got[&1][0];
        let big = &got[&2][0];
        assert_eq!(failed["level"], "ERROR", "{handler}: {failed}");
        assert_eq!(korean["level"], "WARNING", "{handler}");
        if handler.starts_with("syslog") {
            // The formatter puts the traceback inside the syslog message, whole.
            let message = failed["message"].as_str().unwrap();
            assert!(
                message.contains("failed seq=0\nTraceback (most recent call last):\n")
                    && message
                        .trim_end()
                        .ends_with("ZeroDivisionError: division by zero"),
                "{handler}: {message}"
            );
            assert_eq!(failed["facility"], "user", "{handler}");
            assert!(
                korean["message"]
                    .as_str()
                    .unwrap()
                    .ends_with("한국어 로그 🚀✨ seq=1"),
                "{handler}: {korean}"
            );
        } else {
            assert_eq!(failed["message"], "failed seq=0", "{handler}");
            let exception = failed["exception"].as_str().unwrap();
            assert!(
                exception.starts_with("Traceback (most recent call last):\n")
                    && exception.contains("1 / 0")
                    && exception.ends_with("ZeroDivisionError: division by zero"),
                "{handler}: {exception}"
            );
            assert_eq!(failed["logger"], format!("sender.{handler}"));
            assert!(
                failed["ts"].as_str().unwrap().ends_with("+00:00"),
                "{failed}"
            );
            assert_eq!(korean["message"], "한국어 로그 🚀✨ seq=1", "{handler}");
            assert_eq!(big["n"], 7, "{handler}: extra fields");
            assert_eq!(big["ok"], true);
            assert_eq!(big["ratio"], 0.5);
            assert_eq!(big["items"], serde_json::json!(["a", 1, null]));
            assert!(big["lineno"].as_u64().is_some() && big["funcName"] == "main");
        }
        let text = big["message"].as_str().unwrap();
        assert!(
            text.contains(&"x".repeat(50 * 1024)),
            "{handler}: the 50 KiB message is whole"
        );
    }
    // Every record has its own id (spool identity + offset), which consumers dedupe on.
    let ids: BTreeSet<String> = reader
        .texts()
        .iter()
        .map(|t| {
            serde_json::from_str::<Value>(t).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), COUNT * senders.len());
    // The partition key template reads the records' fields.
    assert!(reader.records.iter().any(|r| r.key == "socket-tcp"));

    shipper.signal("TERM");
    let (code, log) = shipper.wait(EXIT);
    assert_eq!(code, Some(0), "{log:#?}");
    assert!(
        !dir.join("log.sock").exists(),
        "the socket file is removed at stop"
    );
}

/// The in-repo endpoint, and a shipper listening on a unix socket with metrics.
struct Outage {
    fake: FakeKinesis,
    dir: tempfile::TempDir,
    metrics: String,
}

const STREAM: &str = "socket";

impl Outage {
    fn new() -> Outage {
        let fake = FakeKinesis::start(&["--stream", STREAM, "--store"]);
        Outage {
            fake,
            dir: tempfile::tempdir().unwrap(),
            metrics: format!("127.0.0.1:{}", free_port()),
        }
    }

    fn socket(&self) -> String {
        self.dir.path().join("log.sock").display().to_string()
    }

    fn start(&self, extra: &[&str]) -> Shipper {
        let endpoint = format!("http://{}", self.fake.addr);
        let socket = format!("unix://{}", self.socket());
        let data_dir = self.dir.path().join("data");
        let mut args = vec![
            "tail",
            "--socket",
            &socket,
            "--stream",
            STREAM,
            "--endpoint-url",
            &endpoint,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--linger",
            "20ms",
            "--metrics-addr",
            &self.metrics,
            "--no-rate-limit",
        ];
        args.extend_from_slice(extra);
        let mut shipper = Shipper::start(&args, &[]);
        shipper.wait_log("shipper started", READY);
        shipper
    }

    fn fail_everything(&self, on: bool) {
        let rate = if on { 1.0 } else { 0.0 };
        self.fake
            .admin("POST", "/faults", &format!("{{\"fail_http\": {rate}}}"));
    }

    fn series(&self, name: &str) -> String {
        format!(
            "shipper_socket_{name}{{socket=\"unix://{}\"}}",
            self.socket()
        )
    }

    /// `seq` of every record the endpoint accepted, with how often each came.
    fn delivered(&self) -> BTreeMap<u64, usize> {
        let dump = self
            .fake
            .admin("GET", &format!("/records?stream={STREAM}"), "");
        let mut out = BTreeMap::new();
        for record in dump["records"].as_array().unwrap() {
            let data = BASE64.decode(record["data"].as_str().unwrap()).unwrap();
            let value: Value = serde_json::from_slice(&data).unwrap();
            *out.entry(value["seq"].as_u64().unwrap()).or_default() += 1;
        }
        out
    }

    fn wait_delivered(&self, want: &BTreeSet<u64>) {
        let deadline = std::time::Instant::now() + ARRIVAL;
        loop {
            let got: BTreeSet<u64> = self.delivered().into_keys().collect();
            if got.is_superset(want) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {} records delivered; first missing {:?}",
                got.intersection(want).count(),
                want.len(),
                want.difference(&got).next()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn an_outage_is_absorbed_by_the_spool_and_every_record_arrives_after_it() {
    let outage = Outage::new();
    outage.fail_everything(true);
    let shipper = outage.start(&[]);
    const COUNT: usize = 100_000;
    // SocketHandler drops a record whenever a send times out (1 s): every record arriving after
    // the outage proves the shipper read on all through it.
    send("socket-unix", &outage.socket(), COUNT, "outage", true);
    let received = wait_metric(
        &outage.metrics,
        &outage.series("records_total"),
        ARRIVAL,
        |n| n >= COUNT as u64,
    );
    assert_eq!(received, COUNT as u64);
    let (_, body) = http_get(&outage.metrics, "/metrics");
    assert_eq!(metric(&body, &outage.series("spool_records")), COUNT as u64);
    assert!(metric(&body, &outage.series("spool_bytes")) > COUNT as u64 * 100);
    assert_eq!(metric(&body, "shipper_records_sent_total"), 0);
    // Memory stays bounded while the spool holds every record: the pipeline holds a few chunks.
    let peak = peak_rss_kib(shipper.child.id());
    assert!(peak < 200 * 1024, "peak RSS {peak} KiB during the outage");

    outage.fail_everything(false);
    outage.wait_delivered(&(0..COUNT as u64).collect());
    wait_metric(
        &outage.metrics,
        &outage.series("spool_records"),
        ARRIVAL,
        |n| n == 0,
    );
    shipper.signal("TERM");
    let (code, log) = shipper.wait(EXIT);
    assert_eq!(code, Some(0), "{log:#?}");
}

#[test]
fn kill_9_while_spooling_through_an_outage_loses_nothing() {
    let outage = Outage::new();
    outage.fail_everything(true);
    let shipper = outage.start(&[]);
    const COUNT: usize = 20_000;
    send("socket-unix", &outage.socket(), COUNT, "kill", true);
    wait_metric(
        &outage.metrics,
        &outage.series("records_total"),
        ARRIVAL,
        |n| n >= COUNT as u64,
    );
    shipper.signal("KILL");
    let _ = shipper.wait(EXIT);

    outage.fail_everything(false);
    let mut shipper = outage.start(&[]);
    shipper.wait_log("sending records spooled before the restart", READY);
    outage.wait_delivered(&(0..COUNT as u64).collect());
    // More after the restart go the same way.
    send("socket-unix", &outage.socket(), 10, "after", true);
    wait_metric(
        &outage.metrics,
        &outage.series("records_total"),
        ARRIVAL,
        |n| n >= 10,
    );
    shipper.signal("TERM");
    let (code, log) = shipper.wait(EXIT);
    assert_eq!(code, Some(0), "{log:#?}");
}

#[test]
fn a_full_spool_drops_and_counts_new_records_and_delivers_the_ones_before() {
    let outage = Outage::new();
    outage.fail_everything(true);
    let mut shipper = outage.start(&["--spool-max-bytes", "1048576"]);
    const COUNT: usize = 20_000;
    send("socket-unix", &outage.socket(), COUNT, "full", true);
    let dropped = wait_metric(
        &outage.metrics,
        &outage.series("spool_dropped_total"),
        ARRIVAL,
        |n| n > 0,
    );
    let (_, body) = http_get(&outage.metrics, "/metrics");
    let kept = metric(&body, &outage.series("records_total"));
    let dropped = metric(&body, &outage.series("spool_dropped_total")).max(dropped);
    assert_eq!(
        kept + dropped,
        COUNT as u64,
        "every record is kept or counted"
    );
    assert!(metric(&body, &outage.series("spool_bytes")) <= 1_048_576);
    shipper.wait_log("spool full", READY);

    outage.fail_everything(false);
    // The spool keeps the oldest records and refuses the newest.
    outage.wait_delivered(&(0..kept).collect());
    let delivered = outage.delivered();
    assert_eq!(
        delivered.len() as u64,
        kept,
        "only what was spooled is sent"
    );
    shipper.signal("TERM");
    let (code, log) = shipper.wait(EXIT);
    assert_eq!(code, Some(0), "{log:#?}");
}

/// The newest spool segment that holds entries.
fn newest_segment(spool_root: &Path) -> std::path::PathBuf {
    let spool = std::fs::read_dir(spool_root)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut segments: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "spool") && std::fs::metadata(p).unwrap().len() > 16
        })
        .collect();
    segments.sort();
    segments.pop().unwrap()
}

#[test]
fn a_torn_spool_tail_is_cut_and_counted_and_the_records_before_it_arrive() {
    let outage = Outage::new();
    outage.fail_everything(true);
    let shipper = outage.start(&[]);
    send("socket-unix", &outage.socket(), 100, "torn", true);
    wait_metric(
        &outage.metrics,
        &outage.series("records_total"),
        ARRIVAL,
        |n| n >= 100,
    );
    shipper.signal("KILL");
    let _ = shipper.wait(EXIT);

    // A crash in the middle of writing the last record.
    let segment = newest_segment(&outage.dir.path().join("data/spool"));
    let len = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 5)
        .unwrap();

    outage.fail_everything(false);
    let mut shipper = outage.start(&[]);
    shipper.wait_log("cut torn or corrupt entries off the spool", READY);
    outage.wait_delivered(&(0..99).collect());
    let (_, body) = http_get(&outage.metrics, "/metrics");
    assert!(metric(&body, &outage.series("spool_cut_bytes_total")) > 0);
    assert!(
        !outage.delivered().contains_key(&99),
        "the torn record is gone"
    );
    shipper.signal("TERM");
    let (code, log) = shipper.wait(EXIT);
    assert_eq!(code, Some(0), "{log:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_celery_worker_logs_through_the_filter_and_every_task_record_carries_its_task() {
    let fixture = Fixture::new("celery-socket", 1, "unused.log").await;
    let socket = fixture.dir.path().join("shipper.sock");
    let url = format!("unix://{}", socket.display());
    let mut shipper = Shipper::start(
        &[
            "tail",
            "--socket",
            &url,
            "--stream",
            &fixture.stream,
            "--endpoint-url",
            &fixture.endpoint,
            "--data-dir",
            fixture.data_dir.to_str().unwrap(),
            "--linger",
            "20ms",
        ],
        &[],
    );
    shipper.wait_log("shipper started", READY);
    let output = Command::new(repo_root().join("scripts/celery-socket.sh"))
        .arg(&socket)
        .arg(fixture.dir.path().join("celery"))
        .output()
        .expect("run scripts/celery-socket.sh");
    assert!(
        output.status.success(),
        "celery-socket.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let task_ids: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(task_ids.len(), 9, "the script's task ids");

    // Every task logs at least two records of its own; wait until each has them.
    let mut reader = StreamReader::new(&fixture.client, &fixture.stream).await;
    let deadline = std::time::Instant::now() + ARRIVAL;
    let per_task = loop {
        reader.poll().await;
        let mut per_task: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for text in reader.texts() {
            let record: Value = serde_json::from_str(&text).unwrap();
            if let Some(id) = record["task_id"].as_str() {
                per_task.entry(id.to_string()).or_default().push(record);
            }
        }
        if task_ids
            .iter()
            .all(|id| per_task.get(id).is_some_and(|r| r.len() >= 2))
        {
            break per_task;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "records per task: {:?}",
            per_task
                .iter()
                .map(|(k, v)| (k, v.len()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for id in &task_ids {
        let records = &per_task[id];
        assert!(
            records.iter().all(|r| r["task_name"]
                .as_str()
                .is_some_and(|name| name.starts_with("tasks."))),
            "{records:#?}"
        );
    }
    // The failing tasks' tracebacks arrive whole, with their task.
    let tracebacks = per_task
        .values()
        .flatten()
        .filter(|r| {
            r["exception"]
                .as_str()
                .is_some_and(|e| e.starts_with("Traceback (most recent call last):"))
        })
        .count();
    assert!(tracebacks >= 3, "{tracebacks} tracebacks");
    shipper.signal("TERM");
    let (code, log) = shipper.wait(EXIT);
    assert_eq!(code, Some(0), "{log:#?}");
}

/// Garbage for every framing, written by Python over real sockets (see the test below).
const GARBAGE: &str = r#"
import os, pickle, random, socket, struct, sys
unix_python, udp_port, unixgram_syslog, tcp_port, marker = sys.argv[1:6]

def frame(obj):
    data = pickle.dumps(obj, 1)
    return struct.pack(">L", len(data)) + data

class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + marker,))

bomb = []
for _ in range(40):
    bomb = [bomb, bomb]

def stream(path_or_port, payload):
    if isinstance(path_or_port, int):
        s = socket.create_connection(("127.0.0.1", path_or_port))
    else:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path_or_port)
    s.sendall(payload)
    s.close()

rng = random.Random(7)
# Random bytes on an auto-framed TCP socket.
stream(int(tcp_port), bytes(rng.getrandbits(8) for _ in range(65536)))
# On the python-framed unix socket: a memo bomb, a record that tries to run os.system, a frame
# over the limit, then a frame cut short by the end of the connection.
stream(unix_python, frame({"msg": "bomb", "x": bomb}))
stream(unix_python, frame({"msg": "evil", "levelname": "ERROR", "extra": Evil()}))
stream(unix_python, struct.pack(">L", 4 * 1024 * 1024 * 1024 - 1) + b"\x00" * 70000)
stream(unix_python, frame({"msg": "cut"})[:-3])
stream(unix_python, b"\x00" * 4096)
# Datagrams: over the limit, NUL only, invalid UTF-8.
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.sendto(b"x" * 20000, ("127.0.0.1", int(udp_port)))
u.sendto(b"\x00" * 100, ("127.0.0.1", int(udp_port)))
u.sendto(b"caf\xe9 \xff\xfe line", ("127.0.0.1", int(udp_port)))
g = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
g.sendto(b"<14>bad \xff utf-8\x00", unixgram_syslog)
g.sendto(b"\x00\x00\x00", unixgram_syslog)
g.sendto(b"", unixgram_syslog)
"#;

#[test]
fn bad_input_on_every_framing_is_counted_and_the_shipper_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let unix_python = dir.path().join("python.sock");
    let unixgram_syslog = dir.path().join("syslog.sock");
    let (udp, tcp) = (free_port(), free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let marker = dir.path().join("executed");
    let urls = [
        format!("unix://{}?framing=python", unix_python.display()),
        format!("udp://127.0.0.1:{udp}"),
        format!("unixgram://{}?framing=syslog", unixgram_syslog.display()),
        format!("tcp://127.0.0.1:{tcp}"),
    ];
    let data_dir = dir.path().join("data");
    let mut args = vec![
        "tail",
        "--stream",
        "unused",
        "--stdout",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--max-record-bytes",
        "16384",
        "--metrics-addr",
        &metrics,
        "--linger",
        "20ms",
    ];
    for url in &urls {
        args.extend(["--socket", url.as_str()]);
    }
    let mut shipper = Shipper::start(&args, &[]);
    let printed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        use std::io::Read;
        let mut out = shipper.child.stdout.take().unwrap();
        let printed = std::sync::Arc::clone(&printed);
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n @ 1..) = out.read(&mut buf) {
                printed.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    shipper.wait_log("shipper started", READY);

    let output = Command::new("python3")
        .args(["-c", GARBAGE])
        .arg(&unix_python)
        .arg(udp.to_string())
        .arg(&unixgram_syslog)
        .arg(tcp.to_string())
        .arg(&marker)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // And then a good record.
    send(
        "socket-unix",
        unix_python.to_str().unwrap(),
        1,
        "after-garbage",
        true,
    );

    let series = |name: &str, url: &str| format!("shipper_socket_{name}{{socket=\"{url}\"}}");
    let errors = |url: &str, kind: &str| {
        let (_, body) = http_get(&metrics, "/metrics");
        let name =
            format!("shipper_socket_decode_errors_total{{socket=\"{url}\",kind=\"{kind}\"}}");
        body.lines()
            .find_map(|l| l.strip_prefix(&name)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    wait_metric(&metrics, &series("records_total", &urls[0]), ARRIVAL, |n| {
        n >= 2
    });
    wait_metric(
        &metrics,
        &series("oversize_total", &urls[1]),
        ARRIVAL,
        |n| n == 1,
    );
    for kind in ["pickle_budget", "frame_too_large", "partial_frame"] {
        assert!(errors(&urls[0], kind) >= 1, "{kind} on {}", urls[0]);
    }
    let deadline = std::time::Instant::now() + ARRIVAL;
    loop {
        let printed = String::from_utf8_lossy(&printed.lock().unwrap()).to_string();
        if printed.contains("after-garbage") && printed.contains("unsupported global") {
            assert!(printed.contains("bad \u{fffd} utf-8"), "{printed:.2000}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{printed:.4000}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!marker.exists(), "a pickle ran a command");
    let peak = peak_rss_kib(shipper.child.id());
    assert!(peak < 200 * 1024, "peak RSS {peak} KiB");
    shipper.signal("TERM");
    let (code, log) = shipper.wait(EXIT);
    assert_eq!(code, Some(0), "{log:#?}");
    reader.join().unwrap();
}
