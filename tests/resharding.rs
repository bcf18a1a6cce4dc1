//! Resharding during a run: the shipper aggregates (`--aggregate`) a file that is being appended
//! to while the stream's shards are split and then merged, against the in-repo endpoint
//! (`fake-kinesis --store`). Every line arrives, and aggregates stay shard-aligned once the
//! shipper has seen the new shards.
//!
//! How the endpoint counts misalignment: it routes a Kinesis record by the record's own partition
//! key (an aggregate's key is its first user record's), then checks each user record's key inside
//! the aggregate against that shard's hash key range; a user record outside the range is counted
//! in `misaligned_user_records` (the KCL would drop it). After a split, aggregates built from the
//! old map for the parent shard mix keys of both children: until the shipper learns of the split
//! (a PutRecords result names a shard it did not predict, and it refreshes its map with
//! ListShards) those aggregates are misaligned. That window is bounded by what was read before the
//! refresh, and this test checks exactly that: every misaligned user record is a line written
//! before the endpoint served the shipper a ListShards call after the split, and none after. A
//! merge cannot misalign anything (both parents' ranges lie inside the child's).

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;
use shipper::aggregate;
use shipper::compress;
use shipper::shard_map::{ShardRange, hash_key};

use common::fake::FakeKinesis;

const STREAM: &str = "reshard";
const DEADLINE: Duration = Duration::from_secs(90);

impl FakeKinesis {
    fn get(&self, path: &str) -> Value {
        self.admin("GET", path, "")
    }

    fn stats(&self) -> Stats {
        let value = self.get("/stats");
        let get = |name: &str| value[name].as_u64().unwrap();
        Stats {
            accepted: get("user_records_accepted"),
            misaligned: get("misaligned_user_records"),
            decode_errors: get("decode_errors"),
            control_calls: get("requests") - get("put_records_calls") - get("put_record_calls"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    accepted: u64,
    misaligned: u64,
    decode_errors: u64,
    /// API calls other than PutRecords/PutRecord: ListShards, DescribeStreamSummary, and the
    /// test's own SplitShard/MergeShards.
    control_calls: u64,
}

/// The shipper process with its log collected, stopped with SIGTERM at the end.
struct Shipper {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Shipper {
    fn start(log_file: &Path, data_dir: &Path, endpoint: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shipper"))
            .arg("tail")
            .arg(log_file)
            .args(["--stream", STREAM, "--endpoint-url", endpoint])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--aggregate", "--linger", "50ms"])
            .envs([
                ("AWS_ACCESS_KEY_ID", "test"),
                ("AWS_SECRET_ACCESS_KEY", "test"),
                ("AWS_REGION", "us-east-1"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
                ("RUST_LOG", "info"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shipper");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let collected = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = collected.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self { child, log }
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "shipper exited with {status}:\n{}",
                self.log.lock().unwrap()
            );
        }
    }

    fn stop(mut self) -> String {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let code = self.child.wait().unwrap().code();
        let log = self.log.lock().unwrap().clone();
        assert_eq!(code, Some(0), "{log}");
        log
    }
}

/// Appends numbered lines; the line number is unique, so the arrived set can be compared.
struct Writer {
    file: std::fs::File,
    next: usize,
}

impl Writer {
    fn line(number: usize) -> String {
        // Lengths vary so aggregates fill unevenly.
        format!(
            "[2026-11-22 10:00:00,000: INFO/ForkPoolWorker-{}] reshard line {number:06} {}",
            number % 4 + 1,
            "x".repeat(number * 7 % 90)
        )
    }

    fn write(&mut self, count: usize) -> std::ops::Range<usize> {
        let first = self.next;
        let text: String = (first..first + count)
            .map(|number| format!("{}\n", Self::line(number)))
            .collect();
        self.file.write_all(text.as_bytes()).unwrap();
        self.file.flush().unwrap();
        self.next += count;
        first..self.next
    }
}

/// Polls the endpoint until `done` holds, with a deadline; the shipper must stay up.
fn wait_until(
    endpoint: &FakeKinesis,
    shipper: &mut Shipper,
    what: &str,
    done: impl Fn(&Stats) -> bool,
) -> Stats {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let stats = endpoint.stats();
        if done(&stats) {
            return stats;
        }
        shipper.assert_running();
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; stats {stats:?}\n{}",
            shipper.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every shard the stream ever had (open and closed), by id.
async fn all_shards(client: &Client) -> HashMap<String, ShardRange> {
    let output = client
        .list_shards()
        .stream_name(STREAM)
        .send()
        .await
        .unwrap();
    output
        .shards()
        .iter()
        .map(|shard| {
            let range = shard.hash_key_range().unwrap();
            let range = ShardRange::from_decimal(
                shard.shard_id(),
                range.starting_hash_key(),
                range.ending_hash_key(),
            )
            .unwrap();
            (shard.shard_id().to_owned(), range)
        })
        .collect()
}

async fn open_shards(client: &Client) -> Vec<ShardRange> {
    let mut open: Vec<ShardRange> = client
        .list_shards()
        .stream_name(STREAM)
        .send()
        .await
        .unwrap()
        .shards()
        .iter()
        .filter(|shard| {
            shard
                .sequence_number_range()
                .is_some_and(|range| range.ending_sequence_number().is_none())
        })
        .map(|shard| {
            let range = shard.hash_key_range().unwrap();
            ShardRange::from_decimal(
                shard.shard_id(),
                range.starting_hash_key(),
                range.ending_hash_key(),
            )
            .unwrap()
        })
        .collect();
    open.sort_by_key(|range| range.start);
    open
}

/// One user record as stored by the endpoint, with where it landed.
struct Arrived {
    line: String,
    aligned: bool,
}

/// Every user record in `/records`, de-aggregated, with its alignment to the shard it is on.
fn arrived(endpoint: &FakeKinesis, shards: &HashMap<String, ShardRange>) -> Vec<Arrived> {
    let dump = endpoint.get(&format!("/records?stream={STREAM}"));
    let mut arrived = Vec::new();
    for record in dump["records"].as_array().unwrap() {
        let shard = &shards[record["shard_id"].as_str().unwrap()];
        let data = BASE64.decode(record["data"].as_str().unwrap()).unwrap();
        let data = match compress::Compression::detect(&data) {
            compress::Compression::None => data,
            _ => compress::decompress(&data, 64 << 20).unwrap(),
        };
        let users = if aggregate::is_aggregated(&data) {
            aggregate::deaggregate(&data).unwrap()
        } else {
            let key = record["partition_key"].as_str().unwrap().to_owned();
            vec![(key, data)]
        };
        for (key, data) in users {
            arrived.push(Arrived {
                line: String::from_utf8(data).unwrap(),
                aligned: shard.contains(hash_key(&key)),
            });
        }
    }
    arrived
}

fn line_number(line: &str) -> usize {
    let (_, rest) = line.split_once("reshard line ").expect("a test line");
    rest[..6].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_merge_during_a_run_keep_aggregates_aligned_and_lose_nothing() {
    let endpoint = FakeKinesis::start(&["--stream", STREAM, "--shards", "2", "--store"]);
    let client = endpoint.client();
    let dir = tempfile::tempdir().unwrap();
    let log_file = dir.path().join("worker.log");
    let mut writer = Writer {
        file: std::fs::File::create(&log_file).unwrap(),
        next: 0,
    };
    let mut shipper = Shipper::start(
        &log_file,
        &dir.path().join("data"),
        &format!("http://{}", endpoint.addr),
    );

    // Phase 1: two shards, steady state.
    let written = writer.write(2000).end;
    let stats = wait_until(&endpoint, &mut shipper, "phase 1 lines", |s| {
        s.accepted >= written as u64
    });
    assert_eq!(stats.misaligned, 0, "misaligned before any resharding");

    // Phase 2: split shard 0 while lines are being appended. A writer thread keeps appending;
    // the split happens once it is well under way.
    let before_split = writer.next;
    let appended = Arc::new(AtomicUsize::new(0));
    let background = {
        let appended = Arc::clone(&appended);
        let mut file = writer.file.try_clone().unwrap();
        let first = writer.next;
        std::thread::spawn(move || {
            for chunk in 0..20 {
                let text: String = (first + chunk * 50..first + (chunk + 1) * 50)
                    .map(|number| format!("{}\n", Writer::line(number)))
                    .collect();
                file.write_all(text.as_bytes()).unwrap();
                appended.fetch_add(50, Ordering::SeqCst);
                // Pacing the writer, not waiting for anything.
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let deadline = Instant::now() + DEADLINE;
    while appended.load(Ordering::SeqCst) < 300 {
        assert!(Instant::now() < deadline, "the writer thread stalled");
        std::thread::sleep(Duration::from_millis(1));
    }
    let parent = open_shards(&client).await.remove(0);
    let middle = parent.start + (parent.end - parent.start) / 2 + 1;
    client
        .split_shard()
        .stream_name(STREAM)
        .shard_to_split(&parent.shard_id)
        .new_starting_hash_key(middle.to_string())
        .send()
        .await
        .expect("SplitShard");
    let after_split = endpoint.stats();
    background.join().unwrap();
    writer.next += 1000;
    let written = writer.next;
    // The shipper has seen the new shards once it asked for them after the split.
    let stats = wait_until(
        &endpoint,
        &mut shipper,
        "phase 2 lines and a map refresh",
        |s| s.accepted >= written as u64 && s.control_calls > after_split.control_calls,
    );
    let refreshed_at_line = writer.next;
    let misaligned_at_split = stats.misaligned;
    eprintln!(
        "split: {misaligned_at_split} user records misaligned among the {} lines written around it",
        writer.next - before_split
    );

    // Phase 3: after the refresh, three open shards; nothing more may be misaligned.
    let written = writer.write(2000).end;
    let stats = wait_until(&endpoint, &mut shipper, "phase 3 lines", |s| {
        s.accepted >= written as u64
    });
    assert_eq!(
        stats.misaligned, misaligned_at_split,
        "aggregates built after the shipper refreshed its shard map are aligned"
    );

    // Phase 4: merge the upper child of the split with its upper neighbour.
    let open = open_shards(&client).await;
    assert_eq!(open.len(), 3, "{open:?}");
    client
        .merge_shards()
        .stream_name(STREAM)
        .shard_to_merge(&open[1].shard_id)
        .adjacent_shard_to_merge(&open[2].shard_id)
        .send()
        .await
        .expect("MergeShards");
    let after_merge = endpoint.stats();
    let written = writer.write(1000).end;
    let stats = wait_until(
        &endpoint,
        &mut shipper,
        "phase 4 lines and a map refresh",
        |s| s.accepted >= written as u64 && s.control_calls > after_merge.control_calls,
    );
    assert_eq!(
        stats.misaligned, misaligned_at_split,
        "a merge cannot misalign: both parents' ranges lie inside the child's"
    );

    // Phase 5: two open shards again.
    let written = writer.write(2000).end;
    let stats = wait_until(&endpoint, &mut shipper, "phase 5 lines", |s| {
        s.accepted >= written as u64
    });
    assert_eq!(stats.misaligned, misaligned_at_split);
    assert_eq!(stats.decode_errors, 0);
    assert_eq!(open_shards(&client).await.len(), 2);
    let log = shipper.stop();

    // The exact set of lines arrived (at least once each), and our own count of misaligned user
    // records matches the endpoint's: all of them are lines written before the refresh.
    let shards = all_shards(&client).await;
    let arrived = arrived(&endpoint, &shards);
    let lines: HashSet<usize> = arrived.iter().map(|user| line_number(&user.line)).collect();
    let expected: HashSet<usize> = (0..writer.next).collect();
    let missing: Vec<&usize> = expected.difference(&lines).take(10).collect();
    assert!(missing.is_empty(), "lines missing, e.g. {missing:?}\n{log}");
    assert_eq!(lines.len(), writer.next, "no line outside the written ones");
    for user in &arrived {
        assert_eq!(
            user.line,
            Writer::line(line_number(&user.line)),
            "line content"
        );
    }
    let misaligned: Vec<usize> = arrived
        .iter()
        .filter(|user| !user.aligned)
        .map(|user| line_number(&user.line))
        .collect();
    assert_eq!(misaligned.len() as u64, misaligned_at_split);
    assert!(
        misaligned
            .iter()
            .all(|&number| (before_split..refreshed_at_line).contains(&number)),
        "misaligned lines outside the split window {before_split}..{refreshed_at_line}: {misaligned:?}"
    );
}
