//! Independent decoder: the shipper's KPL aggregates, read by Amazon's Python de-aggregator
//! (`aws-kinesis-agg`, the library Lambda consumers use), give back every line and its partition
//! key, in order. `scripts/kpl_decode.py` drives the decoder and refuses any record that carries
//! the KPL magic bytes but does not de-aggregate cleanly (the package itself would silently pass
//! such a record through as one opaque record).
//!
//! The venv comes from `scripts/install-tools.sh` (idempotent; quick when already installed).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use prost::Message;
use serde_json::Value;
use shipper::aggregate::{self, Aggregator, Finished};
use shipper::compress::Compression;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's Python, after making sure the tools are installed (once per test binary).
fn python() -> PathBuf {
    static INSTALLED: OnceLock<PathBuf> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let status = Command::new(repo_root().join("scripts/install-tools.sh"))
                .status()
                .expect("run scripts/install-tools.sh");
            assert!(status.success(), "scripts/install-tools.sh failed");
            let python = repo_root().join(".tools/venv/bin/python");
            assert!(python.exists(), "{} is missing", python.display());
            python
        })
        .clone()
}

/// One user record as the Python decoder reports it.
#[derive(Debug, Clone, PartialEq)]
struct UserRecord {
    aggregated: bool,
    partition_key: Option<String>,
    data: Vec<u8>,
}

struct Decoded {
    kinesis_records: u64,
    user_records: Vec<UserRecord>,
}

/// Runs `scripts/kpl_decode.py` on `--stdout` output; `Err` holds its refusal.
fn decode(stdout_lines: &str, decompress: &str) -> Result<Decoded, String> {
    let mut child = Command::new(python())
        .arg(repo_root().join("scripts/kpl_decode.py"))
        .args(["--decompress", decompress])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kpl_decode.py");
    let mut stdin = child.stdin.take().unwrap();
    let input = stdout_lines.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        return Err(stderr);
    }
    let value: Value = serde_json::from_slice(&output.stdout).expect("decoder output is JSON");
    let user_records = value["user_records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| UserRecord {
            aggregated: user["aggregated"].as_bool().unwrap(),
            partition_key: user["partition_key"].as_str().map(str::to_owned),
            data: BASE64
                .decode(user["data_base64"].as_str().unwrap())
                .unwrap(),
        })
        .collect();
    Ok(Decoded {
        kinesis_records: value["kinesis_records"].as_u64().unwrap(),
        user_records,
    })
}

/// The way `--stdout` prints a binary record.
fn stdout_line(data: &[u8]) -> String {
    format!("base64:{}\n", BASE64.encode(data))
}

/// Celery-like lines with multi-byte text (accents, CJK, emoji), varied in length.
fn varied_lines(count: usize) -> Vec<String> {
    let tasks = ["billing.charge", "mail.send_welcome", "reports.build_pdf"];
    let texts = [
        "Task succeeded in 0.0312s: None",
        "Benachrichtigung für Jürgen gesendet",
        "処理が完了しました: 注文 4711",
        "retrying after ConnectionError 🙃 (attempt 2/5)",
        "résumé généré, 12 pages, coût 0,42 €",
        "",
    ];
    (0..count)
        .map(|i| {
            format!(
                "[2026-11-22 10:{:02}:{:02},{:03}: INFO/ForkPoolWorker-{}] {}[{:08x}-7c1e-4f0a-9b1d-{:012x}]: {} #{i}{}",
                i / 60 % 60,
                i % 60,
                (i * 37) % 1000,
                i % 4 + 1,
                tasks[i % tasks.len()],
                i * 2_654_435_761 % 0xffff_ffff,
                i * 97,
                texts[i % texts.len()],
                "·".repeat(i % 23),
            )
        })
        .collect()
}

/// Runs the real binary in dry-run mode on `log` until the decoder sees `expected` user records,
/// stops it with SIGTERM (exit 0), and returns everything it printed.
fn dry_run(
    log: &Path,
    data_dir: &Path,
    args: &[&str],
    decompress: &str,
    expected: usize,
) -> String {
    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_shipper"))
        .arg("tail")
        .arg(log)
        .args(["--stream", "dry", "--stdout", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shipper");
    let captured = common::Captured::start(&mut child);
    // Poll the independent decoder over the complete lines printed so far, with a deadline.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = String::from_utf8(captured.stdout_so_far()).expect("stdout is UTF-8");
        let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
        let seen = decode(complete, decompress).map_or(0, |decoded| decoded.user_records.len());
        if seen >= expected {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let (_, log_text) = captured.finish();
            panic!(
                "shipper exited with {status} after {seen} of {expected} user records: {log_text}"
            );
        }
        assert!(
            Instant::now() < deadline,
            "only {seen} of {expected} user records after 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = child.wait().unwrap().code();
    let (printed, log_text) = captured.finish();
    assert_eq!(code, Some(0), "{log_text}");
    String::from_utf8(printed).unwrap()
}

/// Checks one dry run's records: what the decoder returns is the input, in order, and the output
/// really was aggregated (several Kinesis records, most of them holding many user records).
fn assert_aggregated(decoded: &Decoded, expected: &[Vec<u8>]) {
    let data: Vec<&[u8]> = decoded
        .user_records
        .iter()
        .map(|user| &user.data[..])
        .collect();
    let expected: Vec<&[u8]> = expected.iter().map(Vec::as_slice).collect();
    assert_eq!(data.len(), expected.len(), "user record count");
    for (position, (got, want)) in data.iter().zip(&expected).enumerate() {
        assert_eq!(
            String::from_utf8_lossy(got),
            String::from_utf8_lossy(want),
            "user record {position}"
        );
    }
    let aggregated = decoded
        .user_records
        .iter()
        .filter(|user| user.aggregated)
        .count();
    assert!(
        aggregated * 10 >= expected.len() * 9,
        "only {aggregated} of {} user records came in aggregates",
        expected.len()
    );
    assert!(
        decoded.kinesis_records >= 2 && (decoded.kinesis_records as usize) < expected.len() / 4,
        "{} Kinesis records for {} lines",
        decoded.kinesis_records,
        expected.len()
    );
}

/// The first `base64:` line of a dry run that is an aggregate, and its bytes.
fn first_aggregate(printed: &str) -> Vec<u8> {
    printed
        .lines()
        .filter_map(|line| line.strip_prefix("base64:"))
        .map(|text| BASE64.decode(text).unwrap())
        .find(|data| aggregate::is_aggregated(data))
        .expect("an aggregate in the output")
}

/// A record the reference decoder would pass through silently (or cut short) is refused.
fn assert_corruptions_are_refused(aggregate_bytes: &[u8]) {
    assert!(decode(&stdout_line(aggregate_bytes), "none").is_ok());

    // A flipped bit in the protobuf body: the MD5 trailer no longer matches.
    let mut flipped = aggregate_bytes.to_vec();
    flipped[aggregate::MAGIC.len() + 3] ^= 0x01;
    let refusal = decode(&stdout_line(&flipped), "none")
        .err()
        .expect("refused");
    assert!(refusal.contains("did not de-aggregate"), "{refusal}");

    // A truncated protobuf body behind a valid MD5 trailer.
    let body = &aggregate_bytes[aggregate::MAGIC.len()..aggregate_bytes.len() - aggregate::MD5_LEN];
    let truncated = aggregate::frame(&body[..body.len() - 3]);
    assert!(decode(&stdout_line(&truncated), "none").is_err());

    // A well-formed protobuf whose record names a partition key the table does not hold.
    let mut message = aggregate::decode(aggregate_bytes).unwrap();
    let last = message.records.len() - 1;
    message.records[last].partition_key_index = message.partition_key_table.len() as u64 + 5;
    let bad_index = aggregate::frame(&message.encode_to_vec());
    let refusal = decode(&stdout_line(&bad_index), "none")
        .err()
        .expect("refused");
    assert!(refusal.contains("user records"), "{refusal}");
}

#[test]
fn library_aggregates_decode_with_the_reference_decoder() {
    let lines = varied_lines(300);
    let keys: Vec<String> = (0..lines.len())
        .map(|i| format!("task-{}", i % 7))
        .collect();
    let mut printed = String::new();
    let mut gzipped = String::new();
    let mut aggregator = Aggregator::new(8 * 1024);
    let mut emit = |finished: Finished| {
        let data = match finished {
            Finished::Aggregated { data, .. } => data.into_vec(),
            Finished::Single { data, .. } => data,
            Finished::Empty => return,
        };
        printed.push_str(&stdout_line(&data));
        gzipped.push_str(&stdout_line(&Compression::Gzip.compress(&data)));
    };
    for (key, line) in keys.iter().zip(&lines) {
        if aggregator.try_push(key, line.as_bytes()).is_err() {
            emit(std::mem::replace(&mut aggregator, Aggregator::new(8 * 1024)).finish());
            aggregator.try_push(key, line.as_bytes()).unwrap();
        }
    }
    emit(aggregator.finish());

    let expected: Vec<Vec<u8>> = lines.iter().map(|line| line.as_bytes().to_vec()).collect();
    for (text, decompress) in [(&printed, "none"), (&gzipped, "gzip")] {
        let decoded = decode(text, decompress).unwrap();
        assert_aggregated(&decoded, &expected);
        let got_keys: Vec<Option<String>> = decoded
            .user_records
            .iter()
            .map(|user| user.partition_key.clone())
            .collect();
        let want_keys: Vec<Option<String>> = keys.iter().cloned().map(Some).collect();
        assert_eq!(got_keys, want_keys);
    }
    assert_corruptions_are_refused(&first_aggregate(&printed));
}

#[test]
fn shipper_aggregates_raw_lines_that_the_reference_decoder_reads_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("worker.log");
    let lines = varied_lines(400);
    std::fs::write(
        &log,
        lines
            .iter()
            .map(|line| format!("{line}\n"))
            .collect::<String>(),
    )
    .unwrap();
    // Empty lines are acknowledged without being shipped.
    let expected: Vec<Vec<u8>> = lines
        .iter()
        .filter(|line| !line.is_empty())
        .map(|line| line.as_bytes().to_vec())
        .collect();
    let small = ["--aggregate", "--aggregate-max-bytes", "4096"];
    for (compress, decompress) in [("none", "none"), ("gzip", "gzip")] {
        let data_dir = dir.path().join(format!("data-{compress}"));
        let mut args = small.to_vec();
        args.extend(["--compress", compress]);
        let printed = dry_run(&log, &data_dir, &args, decompress, expected.len());
        let decoded = decode(&printed, decompress).unwrap();
        assert_aggregated(&decoded, &expected);
        // Raw records get random keys; each user record keeps its own inside the aggregate.
        for user in decoded.user_records.iter().filter(|user| user.aggregated) {
            let key = user.partition_key.as_deref().unwrap_or_default();
            assert!((1..=256).contains(&key.chars().count()), "key {key:?}");
        }
        let keys: std::collections::HashSet<_> = decoded
            .user_records
            .iter()
            .map(|user| user.partition_key.clone())
            .collect();
        assert!(keys.len() > 1, "random keys differ: {keys:?}");
        if compress == "none" {
            assert_corruptions_are_refused(&first_aggregate(&printed));
        } else {
            // A gzip aggregate whose protobuf body has one flipped bit is refused too.
            let mut lines: Vec<String> = printed.lines().map(str::to_owned).collect();
            let (position, mut plain) = lines
                .iter()
                .enumerate()
                .filter_map(|(position, line)| {
                    let data = BASE64.decode(line.strip_prefix("base64:")?).ok()?;
                    let plain = shipper::compress::decompress(&data, 64 << 20).ok()?;
                    aggregate::is_aggregated(&plain).then_some((position, plain))
                })
                .next()
                .expect("a gzip aggregate in the output");
            plain[aggregate::MAGIC.len() + 3] ^= 0x01;
            lines[position] = stdout_line(&Compression::Gzip.compress(&plain))
                .trim_end()
                .to_owned();
            let refusal = decode(&(lines.join("\n") + "\n"), "gzip")
                .err()
                .expect("refused");
            assert!(refusal.contains("did not de-aggregate"), "{refusal}");
        }
    }
}

#[test]
fn shipper_aggregates_keep_each_records_partition_key() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("tasks.log");
    // JSON records whose task id is the partition key; ids repeat, so the key table is shared.
    let texts = ["début", "完了", "naïve ✓", "ok", "Ωmega 🙂"];
    let records: Vec<(String, String)> = (0..300)
        .map(|i| {
            let task_id = format!("{:08x}-4b7e-{:04x}", i % 37 * 7919, i % 37);
            let message = format!("{} step {i}", texts[i % texts.len()]);
            (task_id, message)
        })
        .collect();
    let text: String = records
        .iter()
        .map(|(task_id, message)| {
            format!(
                "{}\n",
                serde_json::json!({ "task_id": task_id, "message": message })
            )
        })
        .collect();
    std::fs::write(&log, text).unwrap();
    for (compress, decompress) in [("none", "none"), ("gzip", "gzip")] {
        let data_dir = dir.path().join(format!("data-{compress}"));
        let args = [
            "--format",
            "json",
            "--partition-key",
            "{task_id}",
            "--aggregate",
            "--aggregate-max-bytes",
            "8192",
            "--compress",
            compress,
        ];
        let printed = dry_run(&log, &data_dir, &args, decompress, records.len());
        let decoded = decode(&printed, decompress).unwrap();
        assert_eq!(decoded.user_records.len(), records.len());
        for (position, (user, (task_id, message))) in
            decoded.user_records.iter().zip(&records).enumerate()
        {
            let value: Value = serde_json::from_slice(&user.data)
                .unwrap_or_else(|error| panic!("user record {position}: {error}"));
            assert_eq!(value["task_id"], task_id.as_str(), "record {position}");
            assert_eq!(value["message"], message.as_str(), "record {position}");
            if user.aggregated {
                assert_eq!(user.partition_key.as_deref(), Some(task_id.as_str()));
            }
        }
        let aggregated = decoded.user_records.iter().filter(|u| u.aggregated).count();
        assert!(
            aggregated * 10 >= records.len() * 9,
            "{aggregated} aggregated"
        );
    }
}
