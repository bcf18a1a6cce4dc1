//! End-to-end tests against LocalStack's Kinesis with the real AWS SDK: what the shipper sends is
//! read back with GetRecords. LocalStack is started by `localstack/start.sh` (idempotent).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;

const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(180);
const EXIT_TIMEOUT: Duration = Duration::from_secs(40);

fn count(numbers: &[usize]) -> BTreeMap<usize, usize> {
    let mut counts = BTreeMap::new();
    for n in numbers {
        *counts.entry(*n).or_default() += 1;
    }
    counts
}

fn checkpoint_offsets(data_dir: &std::path::Path) -> Vec<u64> {
    let text = std::fs::read_to_string(data_dir.join("checkpoints.json")).expect("checkpoint file");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["version"], 1);
    json["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn ships_every_line_in_file_order_per_shard_and_stops_cleanly() {
    let endpoint = default_localstack();
    let client = client(&endpoint).await;
    let stream = unique_stream("order");
    create_stream(&client, &stream, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("worker.log");
    append_lines(&log, 0, 2000);
    let data_dir = dir.path().join("data");
    let (log_s, data_s) = (log.to_str().unwrap(), data_dir.to_str().unwrap());

    let mut shipper = Shipper::start(
        &tail_args(log_s, &stream, &endpoint, data_s, &["--concurrency", "1"]),
        &[],
    );
    shipper.wait_log("shipper started", Duration::from_secs(30));
    let mut reader = StreamReader::new(&client, &stream).await;
    reader.wait_for(2000, ARRIVAL_TIMEOUT).await;

    shipper.signal("TERM");
    let (code, log_lines) = shipper.wait(EXIT_TIMEOUT);
    assert_eq!(code, Some(0), "{log_lines:#?}");
    assert_eq!(
        checkpoint_offsets(&data_dir),
        vec![std::fs::metadata(&log).unwrap().len()]
    );

    reader.poll().await;
    let numbers = line_numbers(&reader.texts());
    assert_eq!(
        count(&numbers).keys().copied().collect::<Vec<_>>(),
        (0..2000).collect::<Vec<_>>()
    );
    assert_eq!(numbers.len(), 2000, "no duplicates without failures");
    let shards: BTreeSet<&str> = reader.records.iter().map(|r| r.shard.as_str()).collect();
    assert_eq!(shards.len(), 2, "random keys spread over both shards");
    for shard in shards {
        let in_shard: Vec<usize> = reader
            .records
            .iter()
            .filter(|r| r.shard == shard)
            .filter_map(|r| {
                line_numbers(&[String::from_utf8_lossy(&r.data).into_owned()])
                    .first()
                    .copied()
            })
            .collect();
        assert!(
            in_shard.windows(2).all(|w| w[0] < w[1]),
            "shard {shard} out of file order"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_resumes_at_the_checkpoint_without_loss_or_duplicates() {
    let Fixture {
        endpoint,
        client,
        stream,
        dir: _dir,
        log,
        data_dir,
    } = Fixture::new("restart", 1, "worker.log").await;
    let (log_s, data_s) = (log.to_str().unwrap(), data_dir.to_str().unwrap());
    append_lines(&log, 0, 600);

    let mut first = Shipper::start(&tail_args(log_s, &stream, &endpoint, data_s, &[]), &[]);
    first.wait_log("shipper started", Duration::from_secs(30));
    let mut reader = StreamReader::new(&client, &stream).await;
    reader.wait_for(200, ARRIVAL_TIMEOUT).await;
    first.signal("TERM");
    let (code, log_lines) = first.wait(EXIT_TIMEOUT);
    assert_eq!(code, Some(0));
    assert!(
        log_lines
            .iter()
            .any(|line| line.contains("the endpoint accepts PutRecords in CBOR")),
        "{log_lines:#?}"
    );

    // The first run sent PutRecords in CBOR (the default); the second sends JSON, so both
    // protocols are read back here.
    append_lines(&log, 600, 1000);
    let mut second = Shipper::start(
        &tail_args(log_s, &stream, &endpoint, data_s, &["--no-cbor"]),
        &[],
    );
    second.wait_log("shipper started", Duration::from_secs(30));
    reader.wait_for(1000, ARRIVAL_TIMEOUT).await;
    second.signal("TERM");
    assert_eq!(second.wait(EXIT_TIMEOUT).0, Some(0));
    reader.poll().await;
    let counts = count(&line_numbers(&reader.texts()));
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (0..1000).collect::<Vec<_>>()
    );
    assert!(
        counts.values().all(|n| *n == 1),
        "a graceful stop checkpoints exactly what was delivered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_while_writing_loses_nothing() {
    let Fixture {
        endpoint,
        client,
        stream,
        dir: _dir,
        log,
        data_dir,
    } = Fixture::new("rotate", 2, "app.log").await;
    let (log_s, data_s) = (
        log.to_str().unwrap().to_string(),
        data_dir.to_str().unwrap().to_string(),
    );
    append_lines(&log, 0, 1);

    let mut shipper = Shipper::start(&tail_args(&log_s, &stream, &endpoint, &data_s, &[]), &[]);
    shipper.wait_log("shipper started", Duration::from_secs(30));
    // Rename rotation every 150 lines, keeping one rotated file, as logrotate or Python's
    // RotatingFileHandler do; the rotated name is not matched by the shipper's path.
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for block in 0..10 {
                let from = 1 + block * 150;
                for i in (from..from + 150).step_by(10) {
                    append_lines(&log, i, i + 10);
                    std::thread::sleep(Duration::from_millis(5));
                }
                std::fs::rename(&log, log.with_extension("log.1")).unwrap();
            }
            append_lines(&log, 1501, 1510);
        })
    };
    writer.join().unwrap();
    let mut reader = StreamReader::new(&client, &stream).await;
    reader.wait_for(1510, ARRIVAL_TIMEOUT).await;
    shipper.signal("TERM");
    assert_eq!(shipper.wait(EXIT_TIMEOUT).0, Some(0));
    let counts = count(&line_numbers(&reader.texts()));
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (0..1510).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn half_the_calls_throttled_still_delivers_everything() {
    // A LocalStack of its own, where every PutRecords fails with probability 0.5 (each entry then
    // carries ProvisionedThroughputExceededException while FailedRecordCount says 1).
    let endpoint = localstack(4567, &[("KINESIS_ERROR_PROBABILITY", "0.5")]);
    let client = client(&endpoint).await;
    let stream = unique_stream("throttle");
    // CreateStream may itself be refused there: retry it.
    let mut created = false;
    for _ in 0..50 {
        if client
            .create_stream()
            .stream_name(&stream)
            .shard_count(1)
            .send()
            .await
            .is_ok()
        {
            created = true;
            break;
        }
    }
    assert!(created, "could not create the stream");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("worker.log");
    let data_dir = dir.path().join("data");
    append_lines(&log, 0, 400);
    let (log_s, data_s) = (log.to_str().unwrap(), data_dir.to_str().unwrap());
    let mut shipper = Shipper::start(
        &tail_args(
            log_s,
            &stream,
            &endpoint,
            data_s,
            &["--max-batch-records", "50"],
        ),
        &[],
    );
    shipper.wait_log("shipper started", Duration::from_secs(90));
    let mut reader = loop {
        // GetShardIterator may be refused too; the reader retries on the next loop.
        let listed = client.list_shards().stream_name(&stream).send().await;
        if listed.is_ok() {
            break StreamReader::new(&client, &stream).await;
        }
    };
    reader.wait_for(400, ARRIVAL_TIMEOUT).await;
    shipper.signal("TERM");
    let (code, log_lines) = shipper.wait(EXIT_TIMEOUT);
    assert_eq!(code, Some(0));
    let counts = count(&line_numbers(&reader.texts()));
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (0..400).collect::<Vec<_>>()
    );
    let summary = log_lines
        .iter()
        .find(|l| l.contains("shipper stopped"))
        .expect("stop summary");
    assert!(summary.contains("throttled_total"), "{summary}");
    assert!(
        !summary.contains("(\"throttled_total\", 0)"),
        "throttling was injected: {summary}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_stream_is_a_clear_error() {
    let endpoint = default_localstack();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("worker.log");
    append_lines(&log, 0, 3);
    let data_dir = dir.path().join("data");
    let shipper = Shipper::start(
        &tail_args(
            log.to_str().unwrap(),
            "no-such-stream",
            &endpoint,
            data_dir.to_str().unwrap(),
            &[],
        ),
        &[],
    );
    let (code, log_lines) = shipper.wait(EXIT_TIMEOUT);
    assert_eq!(code, Some(1));
    let text = log_lines.join("\n");
    assert!(text.contains("stream no-such-stream not found"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_while_shipping_then_restart_loses_nothing() {
    let Fixture {
        endpoint,
        client,
        stream,
        dir: _dir,
        log,
        data_dir,
    } = Fixture::new("crash", 2, "worker.log").await;
    let (log_s, data_s) = (log.to_str().unwrap(), data_dir.to_str().unwrap());
    append_lines(&log, 0, 1500);

    let mut first = Shipper::start(
        &tail_args(
            log_s,
            &stream,
            &endpoint,
            data_s,
            &["--max-batch-records", "100"],
        ),
        &[],
    );
    first.wait_log("shipper started", Duration::from_secs(30));
    let mut reader = StreamReader::new(&client, &stream).await;
    reader.wait_for(300, ARRIVAL_TIMEOUT).await;
    first.signal("KILL");
    let (code, _) = first.wait(EXIT_TIMEOUT);
    assert_eq!(code, None, "killed by a signal");
    append_lines(&log, 1500, 1600);

    let mut second = Shipper::start(&tail_args(log_s, &stream, &endpoint, data_s, &[]), &[]);
    second.wait_log("shipper started", Duration::from_secs(30));
    reader.wait_for(1600, ARRIVAL_TIMEOUT).await;
    second.signal("TERM");
    assert_eq!(second.wait(EXIT_TIMEOUT).0, Some(0));
    reader.poll().await;
    let counts = count(&line_numbers(&reader.texts()));
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (0..1600).collect::<Vec<_>>(),
        "every line arrived"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_was_shipped_and_readiness_follows_the_data_dir() {
    let Fixture {
        endpoint,
        client,
        stream,
        dir,
        log,
        data_dir,
    } = Fixture::new("metrics", 1, "worker.log").await;
    append_lines(&log, 0, 300);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (log_s, data_s) = (log.to_str().unwrap(), data_dir.to_str().unwrap());
    let mut shipper = Shipper::start(
        &tail_args(
            log_s,
            &stream,
            &endpoint,
            data_s,
            &["--metrics-addr", &addr],
        ),
        &[],
    );
    shipper.wait_log("serving /metrics", Duration::from_secs(30));
    let (status, body) = http_get(&addr, "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"data_dir_writable\":true"), "{body}");
    assert_eq!(http_get(&addr, "/healthz").0, 200);

    let mut reader = StreamReader::new(&client, &stream).await;
    reader.wait_for(300, ARRIVAL_TIMEOUT).await;
    let (_, text) = http_get(&addr, "/metrics");
    assert_eq!(metric(&text, "shipper_lines_read_total"), 300);
    assert_eq!(metric(&text, "shipper_records_sent_total"), 300);
    assert_eq!(metric(&text, "shipper_records_dead_lettered_total"), 0);
    let expected_bytes: u64 = reader.records.iter().map(|r| r.data.len() as u64).sum();
    assert_eq!(metric(&text, "shipper_bytes_sent_total"), expected_bytes);

    let (_, body) = http_get(&addr, "/readyz");
    assert!(body.contains("\"kinesis\":\"reachable\""), "{body}");

    // A data dir that cannot be written (replaced by a file) makes the shipper not ready.
    std::fs::rename(&data_dir, dir.path().join("data-moved")).unwrap();
    std::fs::write(&data_dir, b"not a directory").unwrap();
    let (status, body) = http_get(&addr, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"data_dir_writable\":false"), "{body}");
    shipper.signal("TERM");
    shipper.wait(EXIT_TIMEOUT);
}

/// A line that starts a Celery record: `[YYYY-MM-DD HH:MM:SS,mmm: ...`.
fn prefixed(line: &str) -> bool {
    line.starts_with("[20") && line.get(24..25) == Some(":")
}

/// The Celery fixture shipped with `--format celery`, stopped and restarted in the middle of a
/// traceback: every record comes back as a JSON envelope, task ids where the line had one, and
/// no line of the file is missing.
#[tokio::test(flavor = "multi_thread")]
async fn celery_fixture_arrives_as_whole_records_across_a_restart_mid_traceback() {
    let fixture =
        std::fs::read(repo_root().join("tests/fixtures/celery/worker.log")).expect("fixture");
    let text = String::from_utf8_lossy(&fixture).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    // Cut just after the first line of a traceback, so the record is incomplete at the stop.
    let cut_line = lines
        .iter()
        .position(|l| l.starts_with("Traceback"))
        .expect("a traceback")
        + 1;
    let cut: usize = lines[..cut_line].iter().map(|l| l.len() + 1).sum();
    let expected_records = lines.iter().filter(|l| prefixed(l)).count();

    let Fixture {
        endpoint,
        client,
        stream,
        dir: _dir,
        log,
        data_dir,
    } = Fixture::new("celery", 2, "worker.log").await;
    std::fs::write(&log, &fixture[..cut]).unwrap();
    let (log_s, data_s) = (log.to_str().unwrap(), data_dir.to_str().unwrap());
    let extra = ["--format", "celery"];
    let mut first = Shipper::start(&tail_args(log_s, &stream, &endpoint, data_s, &extra), &[]);
    first.wait_log("shipper started", Duration::from_secs(30));
    let mut reader = StreamReader::new(&client, &stream).await;
    let records_before_cut = lines[..cut_line].iter().filter(|l| prefixed(l)).count();
    // The last record (waiting for the rest of its traceback) goes out at the stop at the latest.
    reader
        .wait_for(records_before_cut - 1, ARRIVAL_TIMEOUT)
        .await;
    first.signal("TERM");
    assert_eq!(first.wait(EXIT_TIMEOUT).0, Some(0));

    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut file, &fixture[cut..]).unwrap();
    let mut second = Shipper::start(&tail_args(log_s, &stream, &endpoint, data_s, &extra), &[]);
    second.wait_log("shipper started", Duration::from_secs(30));
    // One more record than the file has prefixed lines: the traceback's rest, after the restart.
    reader.wait_for(expected_records + 1, ARRIVAL_TIMEOUT).await;
    second.signal("TERM");
    assert_eq!(second.wait(EXIT_TIMEOUT).0, Some(0));
    reader.poll().await;

    let records: Vec<serde_json::Value> = reader
        .texts()
        .iter()
        .map(|t| serde_json::from_str(t).expect("a JSON envelope"))
        .collect();
    assert_eq!(records.len(), expected_records + 1);
    let mut messages = String::new();
    let mut by_offset: Vec<&serde_json::Value> = records.iter().collect();
    by_offset.sort_by_key(|r| r["offset"].as_u64().unwrap());
    for record in &by_offset {
        messages.push_str(record["message"].as_str().unwrap());
        messages.push('\n');
        let message = record["message"].as_str().unwrap();
        if let Some(rest) = message.strip_prefix("Task ") {
            let id = rest
                .split('[')
                .nth(1)
                .and_then(|s| s.split(']').next())
                .unwrap();
            assert_eq!(record["task_id"].as_str(), Some(id), "{record}");
        }
    }
    let with_task_id = records.iter().filter(|r| r["task_id"].is_string()).count();
    assert!(
        with_task_id > 100,
        "task ids are extracted ({with_task_id})"
    );
    // Every continuation line of the file (traceback lines included) arrived inside some record.
    for line in lines
        .iter()
        .filter(|l| !prefixed(l) && !l.trim().is_empty())
    {
        assert!(messages.contains(line), "missing line {line:?}");
    }
}

/// `--aggregate --compress gzip` against LocalStack: every line arrives inside gzip-compressed KPL
/// aggregates, and every user record sits in an aggregate read from the shard its key hashes to.
#[tokio::test(flavor = "multi_thread")]
async fn aggregated_and_compressed_records_arrive_whole_and_shard_aligned() {
    let Fixture {
        endpoint,
        client,
        stream,
        dir: _dir,
        log,
        data_dir,
    } = Fixture::new("aggregate", 2, "worker.log").await;
    append_lines(&log, 0, 3000);
    let (log_s, data_s) = (log.to_str().unwrap(), data_dir.to_str().unwrap());
    let extra = [
        "--aggregate",
        "--compress",
        "gzip",
        "--partition-key",
        "{random}",
    ];
    let mut shipper = Shipper::start(&tail_args(log_s, &stream, &endpoint, data_s, &extra), &[]);
    shipper.wait_log("shipper started", Duration::from_secs(30));

    let listed = client
        .list_shards()
        .stream_name(&stream)
        .send()
        .await
        .unwrap();
    let ranges: Vec<shipper::shard_map::ShardRange> = listed
        .shards()
        .iter()
        .map(|s| {
            let range = s.hash_key_range().unwrap();
            shipper::shard_map::ShardRange::from_decimal(
                s.shard_id(),
                range.starting_hash_key(),
                range.ending_hash_key(),
            )
            .unwrap()
        })
        .collect();
    let map = shipper::shard_map::ShardMap::new(ranges).unwrap();

    let mut reader = StreamReader::new(&client, &stream).await;
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + ARRIVAL_TIMEOUT;
    while lines.len() < 3000 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of 3000 lines arrived",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        reader.poll().await;
        lines.clear();
        for record in &reader.records {
            assert_eq!(&record.data[..2], &[0x1f, 0x8b], "gzip data");
            let data = shipper::compress::decompress(&record.data, 16 << 20).unwrap();
            let users = shipper::aggregate::deaggregate_or_single(&record.key, &data).unwrap();
            for (key, data) in users {
                assert_eq!(
                    map.shard_for_key(&key),
                    Some(record.shard.as_str()),
                    "user record on the wrong shard"
                );
                lines.push(String::from_utf8(data).unwrap());
            }
        }
    }
    assert!(
        reader.records.len() < 100,
        "{} Kinesis records for 3000 lines: aggregated",
        reader.records.len()
    );
    shipper.signal("TERM");
    let (code, log_lines) = shipper.wait(EXIT_TIMEOUT);
    assert_eq!(code, Some(0));
    let counts = count(&line_numbers(&lines));
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (0..3000).collect::<Vec<_>>()
    );
    let summary = log_lines
        .iter()
        .find(|l| l.contains("shipper stopped"))
        .unwrap();
    assert!(
        summary.contains("(\"records_sent_total\", 3000)"),
        "user records counted: {summary}"
    );
}
