//! `shipper consume` against the in-repo endpoint (`fake-kinesis`, Kinesis and Firehose in one):
//! faults on both sides, restarts and `kill -9`, resharding during a run, and bad records.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use base64::Engine;
use serde_json::Value;
use shipper::aggregate::{Aggregator, Finished};
use shipper::compress::Compression;

use common::fake::FakeKinesis;
use common::{Shipper, free_port};

const DELIVERY: &str = "archive";
const STREAM: &str = "logs";

/// One admin call over plain HTTP/1.1, as JSON.
fn admin(fake: &FakeKinesis, path: &str) -> Value {
    let mut stream = std::net::TcpStream::connect(&fake.addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: fake\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
    serde_json::from_str(body).unwrap()
}

/// Every Firehose record the delivery stream accepted, in order.
fn firehose_records(fake: &FakeKinesis) -> Vec<Vec<u8>> {
    let dump = admin(fake, &format!("/firehose?stream={DELIVERY}"));
    dump["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|data| {
            base64::engine::general_purpose::STANDARD
                .decode(data.as_str().unwrap())
                .unwrap()
        })
        .collect()
}

/// The lines that reached Firehose, in order.
fn firehose_lines(fake: &FakeKinesis) -> Vec<String> {
    let bytes: Vec<u8> = firehose_records(fake).concat();
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Poll Firehose until `done` holds for its lines, or panic after `timeout`.
fn wait_lines(
    fake: &FakeKinesis,
    timeout: Duration,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let lines = firehose_lines(fake);
        if done(&lines) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "firehose has {} lines after {timeout:?}",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn distinct(lines: &[String]) -> usize {
    lines.iter().collect::<std::collections::HashSet<_>>().len()
}

fn duplicates(lines: &[String]) -> usize {
    lines.len() - distinct(lines)
}

fn line(i: usize) -> String {
    format!("line-{i:06} key=k{} payload for line {i}", i % 40)
}

fn key(i: usize) -> String {
    format!("k{}", i % 40)
}

/// Put lines `range` on the stream: as plain records, or as KPL aggregates of one key each
/// (compressed with `compression`), in line order per key.
async fn put_lines(
    client: &Client,
    range: std::ops::Range<usize>,
    aggregate: bool,
    compression: Compression,
) {
    let mut entries = Vec::new();
    if aggregate {
        let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for i in range {
            by_key.entry(key(i)).or_default().push(i);
        }
        for (key, lines) in by_key {
            for chunk in lines.chunks(37) {
                let mut aggregator = Aggregator::new(512 * 1024);
                for &i in chunk {
                    aggregator.try_push(&key, line(i).as_bytes()).unwrap();
                }
                let data = match aggregator.finish() {
                    Finished::Aggregated { data, .. } => data.into_vec(),
                    Finished::Single { data, .. } => data,
                    Finished::Empty => continue,
                };
                entries.push((key.clone(), compression.compress(&data)));
            }
        }
    } else {
        for i in range {
            entries.push((key(i), compression.compress(line(i).as_bytes())));
        }
    }
    common::put_records(client, STREAM, entries).await;
}

fn consume(fake: &FakeKinesis, data_dir: &Path, extra: &[&str]) -> Shipper {
    let endpoint = format!("http://{}", fake.addr);
    let mut args = vec![
        "consume",
        "--stream",
        STREAM,
        "--delivery-stream",
        DELIVERY,
        "--endpoint-url",
        &endpoint,
        "--firehose-endpoint-url",
        &endpoint,
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--grace-period",
        "20s",
    ];
    args.extend_from_slice(extra);
    Shipper::start(&args, &[])
}

fn stop(consumer: Shipper) -> Vec<String> {
    consumer.signal("TERM");
    let (code, log) = consumer.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0), "consume exit code; log: {log:#?}");
    log
}

fn stats(fake: &FakeKinesis) -> Value {
    admin(fake, "/stats")
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_entries_5xx_and_expired_iterators_lose_nothing_and_resend_nothing() {
    let fake = FakeKinesis::start(&[
        "--stream",
        STREAM,
        "--shards",
        "4",
        "--store",
        "--delivery-stream",
        DELIVERY,
        "--fail-firehose-records",
        "0.3",
        "--fail-firehose-http",
        "0.1",
        // A third of the GetRecords calls: a run makes a few dozen, so some always expire.
        "--expire-iterators",
        "0.3",
    ]);
    let client = fake.client();
    put_lines(&client, 0..3000, true, Compression::Zstd).await;
    put_lines(&client, 3000..4500, true, Compression::None).await;
    put_lines(&client, 4500..6000, false, Compression::None).await;
    let dir = tempfile::tempdir().unwrap();
    // No delimiter: one Firehose record per line, so that many entries fail and are retried.
    let consumer = consume(
        &fake,
        dir.path(),
        &["--delimiter", "none", "--dedupe-window", "0"],
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while firehose_records(&fake).len() < 6000 {
        assert!(
            Instant::now() < deadline,
            "not every line arrived: {}",
            stats(&fake)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Expiries are drawn at random per GetRecords call: when the data went through without one,
    // the idle polls that follow draw more, and each must resume at the checkpoint too.
    while stats(&fake)["expired_iterators_injected"].as_u64().unwrap() == 0 {
        assert!(Instant::now() < deadline, "no iterator expired");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = stop(consumer);
    let records: Vec<String> = firehose_records(&fake)
        .into_iter()
        .map(|r| String::from_utf8(r).unwrap())
        .collect();
    let stats = stats(&fake);
    let mut expected: Vec<String> = (0..6000).map(line).collect();
    let mut got = records.clone();
    got.sort();
    expected.sort();
    assert_eq!(
        got.len(),
        6000,
        "{} records for 6000 lines ({} duplicates); stats {stats}",
        records.len(),
        records.len() - distinct(&records)
    );
    assert_eq!(got, expected, "every line exactly once");
    assert!(
        stats["failed_entries_injected"].as_u64().unwrap() > 100,
        "{stats}"
    );
    assert!(stats["http_5xx_injected"].as_u64().unwrap() > 0, "{stats}");
    assert!(
        stats["expired_iterators_injected"].as_u64().unwrap() > 0,
        "{stats}"
    );
    assert!(
        log.iter().any(|l| l.contains("shard iterator expired")),
        "the expiry was seen and handled"
    );
    let checkpoints: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join(format!("consume-{STREAM}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(
        checkpoints["shards"].as_array().unwrap().len(),
        4,
        "{checkpoints}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_restart_resends_nothing_and_kill_9_resends_a_bounded_window() {
    let fake = FakeKinesis::start(&[
        "--stream",
        STREAM,
        "--shards",
        "2",
        "--store",
        "--delivery-stream",
        DELIVERY,
    ]);
    let client = fake.client();
    let dir = tempfile::tempdir().unwrap();

    let first = consume(&fake, dir.path(), &[]);
    put_lines(&client, 0..3000, true, Compression::Zstd).await;
    wait_lines(&fake, Duration::from_secs(60), |l| distinct(l) >= 3000);
    stop(first);

    let second = consume(&fake, dir.path(), &[]);
    put_lines(&client, 3000..6000, true, Compression::Gzip).await;
    let lines = wait_lines(&fake, Duration::from_secs(60), |l| distinct(l) >= 6000);
    assert_eq!(duplicates(&lines), 0, "a graceful restart resends nothing");

    put_lines(&client, 6000..9000, true, Compression::Zstd).await;
    // Kill in the middle: once part of the last wave reached Firehose.
    wait_lines(&fake, Duration::from_secs(60), |l| distinct(l) > 6000);
    let mut second = second;
    second.child.kill().unwrap();
    second.child.wait().unwrap();

    let third = consume(&fake, dir.path(), &[]);
    let lines = wait_lines(&fake, Duration::from_secs(60), |l| distinct(l) >= 9000);
    stop(third);
    let lines = {
        let final_lines = firehose_lines(&fake);
        assert!(final_lines.len() >= lines.len());
        final_lines
    };
    let mut expected: Vec<String> = (0..9000).map(line).collect();
    expected.sort();
    let mut unique: Vec<String> = lines.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique, expected, "every line arrived");
    // Checkpoints are written every second: at the kill, the last one may still be before the
    // end of the second wave, which was forwarded just before the third. Everything since the
    // graceful stop (whose final checkpoint covers the first wave exactly) is the bound.
    let resent = duplicates(&lines);
    assert!(
        resent <= 6000,
        "kill -9 resent {resent} lines, more than was forwarded since the graceful stop (6000)"
    );
    eprintln!("kill -9 in the middle: {resent} of 9000 lines arrived twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn resharding_keeps_parents_before_children_for_every_key() {
    let fake = FakeKinesis::start(&[
        "--stream",
        STREAM,
        "--shards",
        "2",
        "--store",
        "--delivery-stream",
        DELIVERY,
    ]);
    let client = fake.client();
    put_lines(&client, 0..2000, false, Compression::None).await;
    // Split the first shard before the consumer starts: parent and children both hold records.
    client
        .split_shard()
        .stream_name(STREAM)
        .shard_to_split("shardId-000000000000")
        .new_starting_hash_key((1u128 << 126).to_string())
        .send()
        .await
        .unwrap();
    put_lines(&client, 2000..4000, true, Compression::Zstd).await;
    let dir = tempfile::tempdir().unwrap();
    let consumer = consume(&fake, dir.path(), &[]);
    wait_lines(&fake, Duration::from_secs(60), |l| distinct(l) >= 4000);
    // Merge during the run: the upper child of the split with the second original shard.
    client
        .merge_shards()
        .stream_name(STREAM)
        .shard_to_merge("shardId-000000000003")
        .adjacent_shard_to_merge("shardId-000000000001")
        .send()
        .await
        .unwrap();
    put_lines(&client, 4000..6000, false, Compression::None).await;
    let lines = wait_lines(&fake, Duration::from_secs(90), |l| distinct(l) >= 6000);
    let log = stop(consumer);
    assert_eq!(duplicates(&lines), 0);
    // For each key, lines arrive in the order they were written: a child's never before its
    // parent's.
    let mut last_by_key: HashMap<String, usize> = HashMap::new();
    for text in &lines {
        let number: usize = text[5..11].parse().unwrap();
        let key = key(number);
        if let Some(previous) = last_by_key.insert(key.clone(), number) {
            assert!(
                previous < number,
                "key {key}: line {number} after line {previous}"
            );
        }
    }
    let finished = log
        .iter()
        .filter(|l| l.contains("shard read to its end"))
        .count();
    assert!(
        finished >= 3,
        "the split parent and both merged parents finished: {log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_records_are_dead_lettered_or_forwarded_never_fatal() {
    let fake = FakeKinesis::start(&[
        "--stream",
        STREAM,
        "--shards",
        "1",
        "--store",
        "--delivery-stream",
        DELIVERY,
    ]);
    let client = fake.client();
    let mut aggregator = Aggregator::new(1 << 20);
    aggregator.try_push("k", b"inside an aggregate").unwrap();
    aggregator.try_push("k", b"with a wrong checksum").unwrap();
    let Finished::Aggregated {
        data: wrong_md5, ..
    } = aggregator.finish()
    else {
        panic!("two records aggregate")
    };
    let mut wrong_md5 = wrong_md5.into_vec();
    *wrong_md5.last_mut().unwrap() ^= 0xff;
    let mut corrupt = shipper::aggregate::MAGIC.to_vec();
    corrupt.extend_from_slice(&[0x0a, 0xff, 0xff, 0xff, 0x01, 0x02]);
    corrupt.extend_from_slice(&[0u8; 16]);
    let bomb = |compression: Compression| compression.compress(&vec![0u8; 64 << 20]);
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut big_inside = Aggregator::new(4 << 20);
    big_inside.try_push("k", b"small neighbour").unwrap();
    big_inside.try_push("k", &vec![b'y'; 1100 * 1024]).unwrap();
    let Finished::Aggregated {
        data: big_inside, ..
    } = big_inside.finish()
    else {
        panic!("two records aggregate")
    };
    let big_inside = big_inside.into_vec();
    let mut entries = vec![
        ("k".to_string(), corrupt),
        ("k".to_string(), wrong_md5),
        ("k".to_string(), bomb(Compression::Gzip)),
        ("k".to_string(), bomb(Compression::Zstd)),
        ("k".to_string(), random),
        ("k".to_string(), vec![b'x'; 1000 * 1024 + 1]),
        ("k".to_string(), Compression::Zstd.compress(&big_inside)),
    ];
    for i in 0..100 {
        entries.push(("k".to_string(), format!("good-{i:03}").into_bytes()));
    }
    common::put_records(&client, STREAM, entries).await;
    let dir = tempfile::tempdir().unwrap();
    let consumer = consume(&fake, dir.path(), &[]);
    let pid = consumer.child.id();
    wait_lines(&fake, Duration::from_secs(60), |l| {
        l.iter().filter(|l| l.starts_with("good-")).count() >= 100
    });
    let peak_kib = peak_rss_kib(pid);
    let log = stop(consumer);
    let dead: Vec<Value> = std::fs::read_to_string(dir.path().join("consume-dead-letter.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut codes: Vec<&str> = dead
        .iter()
        .map(|e| e["error_code"].as_str().unwrap())
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            "DecompressedTooLarge",
            "DecompressedTooLarge",
            "RecordTooLarge",
            "RecordTooLarge"
        ],
        "{dead:#?}"
    );
    assert!(
        dead.iter()
            .all(|e| e["shard_id"] == "shardId-000000000000" && e["sequence_number"].is_string())
    );
    let lines = firehose_lines(&fake);
    assert!(
        lines.iter().any(|l| l == "small neighbour"),
        "the oversize record's neighbour passes"
    );
    let stopped = log
        .iter()
        .map(|l| plain(l))
        .find(|l| l.contains(" stopped "))
        .unwrap();
    assert!(stopped.contains("dead_lettered=4"), "{stopped}");
    // Two records with the aggregation magic that do not verify are forwarded as plain records.
    let forwarded = firehose_records(&fake).concat();
    let magic = shipper::aggregate::MAGIC;
    assert_eq!(
        forwarded
            .windows(magic.len())
            .filter(|w| *w == magic)
            .count(),
        2
    );
    // Bounded decompression: a 64 MiB bomb never sits in memory (the bound is 10 MiB).
    assert!(peak_kib < 200 * 1024, "peak RSS {peak_kib} KiB");
}

/// A log line without its colour codes.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Peak resident memory of a process (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_stream_or_delivery_stream_is_a_clear_error() {
    let fake = FakeKinesis::start(&["--stream", STREAM, "--delivery-stream", DELIVERY]);
    let endpoint = format!("http://{}", fake.addr);
    let dir = tempfile::tempdir().unwrap();
    let run = |stream: &str, delivery: &str| {
        let consumer = Shipper::start(
            &[
                "consume",
                "--stream",
                stream,
                "--delivery-stream",
                delivery,
                "--endpoint-url",
                &endpoint,
                "--firehose-endpoint-url",
                &endpoint,
                "--data-dir",
                dir.path().to_str().unwrap(),
            ],
            &[],
        );
        consumer.wait(Duration::from_secs(30))
    };
    let (code, log) = run("nope", DELIVERY);
    assert_eq!(code, Some(1), "{log:#?}");
    assert!(
        log.iter()
            .any(|l| l.contains("error: cannot read stream nope: ResourceNotFoundException")),
        "{log:#?}"
    );
    let (code, log) = run(STREAM, "nope");
    assert_eq!(code, Some(1), "{log:#?}");
    assert!(
        log.iter().any(
            |l| l.contains("error: cannot use delivery stream nope: ResourceNotFoundException")
        ),
        "{log:#?}"
    );
    let (code, log) = run(STREAM, "");
    assert_eq!(code, Some(64), "{log:#?}");
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn resent_ids_are_dropped_and_metrics_are_served() {
    let fake = FakeKinesis::start(&[
        "--stream",
        STREAM,
        "--shards",
        "2",
        "--store",
        "--delivery-stream",
        DELIVERY,
    ]);
    let client = fake.client();
    let record = |i: usize| format!(r#"{{"id": "w1-{i}", "message": "task {i} done"}}"#);
    // 300 records with an id, 100 of them sent again (as a producer does after a crash), and 50
    // without an id sent twice: those are not duplicates the consumer can tell.
    let mut entries: Vec<(String, Vec<u8>)> =
        (0..300).map(|i| (key(i), record(i).into_bytes())).collect();
    entries.extend((200..300).map(|i| (key(i), record(i).into_bytes())));
    for _ in 0..2 {
        entries.extend((0..50).map(|i| (key(i), format!("no id {i}").into_bytes())));
    }
    common::put_records(&client, STREAM, entries).await;
    let dir = tempfile::tempdir().unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let mut consumer = consume(&fake, dir.path(), &["--metrics-addr", &metrics_addr]);
    consumer.wait_log("consuming", Duration::from_secs(30));
    assert_eq!(http_get(&metrics_addr, "/readyz").0, 200);
    let lines = wait_lines(&fake, Duration::from_secs(60), |l| l.len() >= 400);
    let (status, metrics) = http_get(&metrics_addr, "/metrics");
    stop(consumer);
    assert_eq!(status, 200);
    let with_id = lines.iter().filter(|l| l.starts_with('{')).count();
    assert_eq!(with_id, 300, "each id once");
    assert_eq!(lines.len(), 400, "records without an id pass untouched");
    for expected in [
        "shipper_consume_duplicates_dropped_total 100",
        "shipper_consume_user_records_forwarded_total 400",
        "shipper_consume_records_read_total 500",
    ] {
        assert!(
            metrics.lines().any(|l| l == expected),
            "{expected} not in\n{metrics}"
        );
    }
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "shipper_consume_millis_behind_latest{shard_id=\"shardId-000000000001\"}"
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn from_latest_skips_what_the_stream_held_before() {
    let fake = FakeKinesis::start(&[
        "--stream",
        STREAM,
        "--shards",
        "2",
        "--store",
        "--delivery-stream",
        DELIVERY,
    ]);
    let client = fake.client();
    put_lines(&client, 0..100, false, Compression::None).await;
    let dir = tempfile::tempdir().unwrap();
    let consumer = consume(&fake, dir.path(), &["--from", "latest"]);
    // Readiness: both shards have their iterator once each has made a GetRecords call.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats(&fake)["get_records_calls"].as_u64().unwrap() < 2 {
        assert!(Instant::now() < deadline, "no GetRecords calls");
        std::thread::sleep(Duration::from_millis(50));
    }
    put_lines(&client, 100..200, false, Compression::None).await;
    let lines = wait_lines(&fake, Duration::from_secs(60), |l| l.len() >= 100);
    stop(consumer);
    let mut expected: Vec<String> = (100..200).map(line).collect();
    expected.sort();
    let mut got = firehose_lines(&fake);
    got.sort();
    assert_eq!(
        got,
        expected,
        "only the records written after the start ({} lines seen)",
        lines.len()
    );
}
