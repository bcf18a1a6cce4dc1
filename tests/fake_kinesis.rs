//! The in-repo Kinesis endpoint (`fake-kinesis`) spoken to by the real aws-sdk-kinesis
//! client: if the SDK can create, list, put, fail and read back against it, the shipper's
//! benchmarks and fault tests exercise the same code paths as against Kinesis.

mod common;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{
    PutRecordsRequestEntry, ShardFilter, ShardFilterType, ShardIteratorType,
};
use shipper::aggregate::{self, Aggregator, Finished};
use shipper::compress::{self, Compression};
use shipper::shard_map::{ShardMap, ShardRange};

use std::time::{Duration, Instant};

use common::fake::FakeKinesis;
use common::{Shipper, append_lines, tail_args};

fn entry(key: &str, data: &[u8]) -> PutRecordsRequestEntry {
    PutRecordsRequestEntry::builder()
        .partition_key(key)
        .data(Blob::new(data))
        .build()
        .unwrap()
}

async fn shard_map(client: &Client, stream: &str) -> ShardMap {
    let shards = client
        .list_shards()
        .stream_name(stream)
        .shard_filter(
            ShardFilter::builder()
                .r#type(ShardFilterType::AtLatest)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let ranges = shards
        .shards()
        .iter()
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
    ShardMap::new(ranges).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_puts_and_reads_back_plain_and_aggregated_records() {
    let fake = FakeKinesis::start(&["--stream", "logs", "--shards", "2", "--store"]);
    let client = fake.client();

    let summary = client
        .describe_stream_summary()
        .stream_name("logs")
        .send()
        .await
        .unwrap();
    let summary = summary.stream_description_summary().unwrap();
    assert_eq!(summary.open_shard_count(), 2);
    let map = shard_map(&client, "logs").await;
    assert_eq!(map.len(), 2);
    assert!(map.covers_all_hash_keys());

    let mut entries: Vec<_> = (0..10)
        .map(|n| entry(&format!("key-{n}"), format!("line {n}").as_bytes()))
        .collect();
    let mut aggregator = Aggregator::new(1 << 20);
    for n in 0..5 {
        aggregator
            .try_push("agg", format!("aggregated {n}").as_bytes())
            .unwrap();
    }
    let Finished::Aggregated {
        partition_key,
        data,
        ..
    } = aggregator.finish()
    else {
        panic!("five records make an aggregate");
    };
    entries.push(entry(&partition_key, &Compression::Gzip.compress(&data)));
    let keys: Vec<String> = entries
        .iter()
        .map(|e| e.partition_key().unwrap_or_default().to_owned())
        .collect();

    let output = client
        .put_records()
        .stream_name("logs")
        .set_records(Some(entries))
        .send()
        .await
        .unwrap();
    assert_eq!(output.failed_record_count(), Some(0));
    for (key, result) in keys.iter().zip(output.records()) {
        assert_eq!(result.shard_id(), map.shard_for_key(key), "{key}");
        assert!(result.sequence_number().is_some());
    }

    let mut user_records = Vec::new();
    for shard in map.shards() {
        let iterator = client
            .get_shard_iterator()
            .stream_name("logs")
            .shard_id(&shard.shard_id)
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap();
        let records = client
            .get_records()
            .shard_iterator(iterator.shard_iterator().unwrap())
            .send()
            .await
            .unwrap();
        assert!(records.next_shard_iterator().is_some());
        for record in records.records() {
            let payload = compress::decompress(record.data().as_ref(), 1 << 20).unwrap();
            let users = aggregate::deaggregate_or_single(
                record.partition_key().unwrap_or_default(),
                &payload,
            )
            .unwrap();
            user_records.extend(
                users
                    .into_iter()
                    .map(|(_, data)| String::from_utf8(data).unwrap()),
            );
        }
    }
    user_records.sort();
    let mut expected: Vec<String> = (0..10).map(|n| format!("line {n}")).collect();
    expected.extend((0..5).map(|n| format!("aggregated {n}")));
    expected.sort();
    assert_eq!(user_records, expected);

    let stats = fake.admin("GET", "/stats", "");
    assert_eq!(stats["kinesis_records_accepted"], 11);
    assert_eq!(stats["user_records_accepted"], 15);
    assert_eq!(stats["misaligned_user_records"], 0);
    assert_eq!(stats["decode_errors"], 0);
    let dump = fake.admin("GET", "/records?stream=logs", "");
    assert_eq!(dump["records"].as_array().unwrap().len(), 11);
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_parses_entry_failures_and_request_errors() {
    let fake = FakeKinesis::start(&["--stream", "logs"]);
    let client = fake.client();
    let put = |entries: Vec<PutRecordsRequestEntry>, stream: &'static str| {
        client
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries))
            .send()
    };

    fake.admin("POST", "/faults", r#"{"fail_records": 1.0}"#);
    let output = put(vec![entry("a", b"1"), entry("b", b"2")], "logs")
        .await
        .unwrap();
    assert_eq!(output.failed_record_count(), Some(2));
    for result in output.records() {
        let code = result.error_code().unwrap();
        assert!(
            ["ProvisionedThroughputExceededException", "InternalFailure"].contains(&code),
            "{code}"
        );
        assert!(result.error_message().is_some());
        assert!(result.sequence_number().is_none());
    }

    fake.admin(
        "POST",
        "/faults",
        r#"{"fail_records": 0.0, "fail_http": 1.0}"#,
    );
    let error = put(vec![entry("a", b"1")], "logs").await.unwrap_err();
    assert_eq!(error.code(), Some("InternalFailure"));
    assert_eq!(error.raw_response().map(|r| r.status().as_u16()), Some(500));
    fake.admin("POST", "/faults", r#"{"fail_http": 0.0}"#);

    let error = put(vec![entry("a", b"1")], "missing").await.unwrap_err();
    assert!(error.into_service_error().is_resource_not_found_exception());
    let too_many = (0..501).map(|n| entry(&n.to_string(), b"x")).collect();
    let error = put(too_many, "logs").await.unwrap_err();
    assert_eq!(error.code(), Some("ValidationException"));
    let long_key = "k".repeat(257);
    let error = put(vec![entry(&long_key, b"x")], "logs").await.unwrap_err();
    assert_eq!(error.code(), Some("ValidationException"));
    let big = vec![b'x'; 1 << 20];
    let error = put(vec![entry("k", &big)], "logs").await.unwrap_err();
    assert!(error.into_service_error().is_invalid_argument_exception());
    let almost_big = vec![b'x'; 1_000_000];
    let oversized = (0..6).map(|n| entry(&n.to_string(), &almost_big)).collect();
    let error = put(oversized, "logs").await.unwrap_err();
    assert!(error.into_service_error().is_invalid_argument_exception());

    let stats = fake.admin("GET", "/stats", "");
    assert_eq!(stats["failed_entries_injected"], 2);
    assert_eq!(stats["http_5xx_injected"], 1);
    assert_eq!(stats["user_records_accepted"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn shard_limits_throttle_entries_and_resharding_keeps_routing() {
    let fake = FakeKinesis::start(&["--stream", "unused"]);
    let client = fake.client();
    client
        .create_stream()
        .stream_name("one")
        .shard_count(1)
        .send()
        .await
        .unwrap();
    fake.admin("POST", "/faults", r#"{"shard_limits": true}"#);

    // 500 x 10 KiB is about 5 MiB offered to a 1 MiB/s shard in one call, which spans at
    // most two one-second windows: at most 2 MiB can pass.
    let data = vec![b'x'; 10 * 1024];
    let entries = (0..500).map(|n| entry(&n.to_string(), &data)).collect();
    let output = client
        .put_records()
        .stream_name("one")
        .set_records(Some(entries))
        .send()
        .await
        .unwrap();
    let throttled = output
        .records()
        .iter()
        .filter(|r| r.error_code() == Some("ProvisionedThroughputExceededException"))
        .count();
    assert!(throttled >= 500 - 2 * 102, "throttled {throttled}");
    assert_eq!(output.failed_record_count(), Some(throttled as i32));
    let stats = fake.admin("GET", "/stats", "");
    assert_eq!(stats["throttled"], throttled);
    fake.admin("POST", "/faults", r#"{"shard_limits": false}"#);

    let before = shard_map(&client, "one").await;
    let shard = before.shards()[0].shard_id.clone();
    client
        .split_shard()
        .stream_name("one")
        .shard_to_split(&shard)
        .new_starting_hash_key((1u128 << 127).to_string())
        .send()
        .await
        .unwrap();
    let all = client
        .list_shards()
        .stream_name("one")
        .send()
        .await
        .unwrap();
    assert_eq!(all.shards().len(), 3);
    let after = shard_map(&client, "one").await;
    assert_eq!(after.len(), 2);
    assert!(after.covers_all_hash_keys());
    let keys: Vec<String> = (0..20).map(|n| format!("key-{n}")).collect();
    let entries = keys.iter().map(|key| entry(key, b"line")).collect();
    let output = client
        .put_records()
        .stream_name("one")
        .set_records(Some(entries))
        .send()
        .await
        .unwrap();
    for (key, result) in keys.iter().zip(output.records()) {
        assert_eq!(result.shard_id(), after.shard_for_key(key));
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1, made with the `openssl` command (which
/// Debian's ca-certificates, needed by the shipper's HTTPS client anyway, depends on).
fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let output = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // An end-entity certificate: rustls refuses a CA certificate as a server's.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl to make a test certificate");
    assert!(
        output.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (cert, key)
}

fn accepted(fake: &FakeKinesis) -> u64 {
    fake.admin("GET", "/stats", "")["user_records_accepted"]
        .as_u64()
        .expect("a count of accepted records")
}

/// Kinesis is HTTPS only. The shipper reaches an HTTPS endpoint whose certificate it trusts through
/// SSL_CERT_FILE and delivers every line; without that, the certificate is refused and nothing is
/// sent.
#[test]
fn the_shipper_ships_over_https_and_checks_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let fake = FakeKinesis::start(&[
        "--stream",
        "logs",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let tls_port = fake
        .tls_addr
        .as_deref()
        .and_then(|addr| addr.rsplit(':').next())
        .expect("a TLS address")
        .to_owned();
    let endpoint = format!("https://localhost:{tls_port}");
    let log = dir.path().join("worker.log");
    append_lines(&log, 0, 1000);
    let run = |data: &str, env: &[(&str, &str)]| {
        let data_dir = dir.path().join(data);
        let args = tail_args(
            log.to_str().unwrap(),
            "logs",
            &endpoint,
            data_dir.to_str().unwrap(),
            &[],
        );
        Shipper::start(&args, env)
    };

    // Not trusted: the handshake fails and nothing arrives.
    let mut untrusted = run("untrusted", &[]);
    untrusted.wait_log("certificate", Duration::from_secs(30));
    untrusted.signal("TERM");
    let (code, _) = untrusted.wait(Duration::from_secs(30));
    assert_eq!(
        accepted(&fake),
        0,
        "records got through an untrusted TLS endpoint"
    );
    assert!(code.is_some(), "the shipper did not stop");

    // Trusted through SSL_CERT_FILE: every line arrives.
    let mut trusted = run("trusted", &[("SSL_CERT_FILE", cert.to_str().unwrap())]);
    trusted.wait_log("shipper started", Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(60);
    while accepted(&fake) < 1000 {
        assert!(
            Instant::now() < deadline,
            "only {} of 1000 lines arrived over HTTPS",
            accepted(&fake)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(accepted(&fake), 1000);
    trusted.signal("TERM");
    let (code, _) = trusted.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0));
}

/// Ships 100 lines to `fake` with no keys and no profile files in the shipper's environment (a
/// developer's ~/.aws would come first in the chain), only `env`; returns the endpoint's counts
/// once every line arrived and the shipper stopped cleanly.
fn ship_without_keys(
    fake: &FakeKinesis,
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> serde_json::Value {
    let log = dir.join("worker.log");
    append_lines(&log, 0, 100);
    let (data_dir, none) = (dir.join("data"), dir.join("no-such-file"));
    let endpoint = format!("http://{}", fake.addr);
    let args = tail_args(
        log.to_str().unwrap(),
        "logs",
        &endpoint,
        data_dir.to_str().unwrap(),
        &[],
    );
    let mut env = env.to_vec();
    env.push(("AWS_CONFIG_FILE", none.to_str().unwrap()));
    env.push(("AWS_SHARED_CREDENTIALS_FILE", none.to_str().unwrap()));
    let removed = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"];
    let mut shipper = Shipper::start_without(&args, &env, &removed);
    shipper.wait_log("shipper started", Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(60);
    while accepted(fake) < 100 {
        assert!(
            Instant::now() < deadline,
            "only {} of 100 lines arrived",
            accepted(fake)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    shipper.signal("TERM");
    let (code, _) = shipper.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0));
    fake.admin("GET", "/stats", "")
}

/// On EKS with IRSA a pod has no keys, only a web identity token and a role: the shipper gets
/// temporary credentials from STS's AssumeRoleWithWebIdentity and signs every call with them.
#[test]
fn the_shipper_ships_with_credentials_from_a_web_identity() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeKinesis::start(&["--stream", "logs"]);
    let endpoint = format!("http://{}", fake.addr);
    let token = dir.path().join("token");
    std::fs::write(&token, "eyJ.web-identity.token").unwrap();
    let stats = ship_without_keys(
        &fake,
        dir.path(),
        &[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap()),
            ("AWS_ROLE_ARN", "arn:aws:iam::000000000000:role/shipper"),
            ("AWS_ROLE_SESSION_NAME", "shipper-test"),
            ("AWS_ENDPOINT_URL_STS", &endpoint),
        ],
    );
    // STS is served on the same address, so its calls are among `requests`.
    let sts_calls = stats["web_identity_calls"].as_u64().unwrap();
    assert_signed_by(&stats, "web_identity_calls", sts_calls);
}

/// With EKS Pod Identity (or on ECS) a pod has no keys, only a credentials endpoint and a token
/// file: the shipper gets temporary credentials from that endpoint and signs every call with them.
#[test]
fn the_shipper_ships_with_credentials_from_the_container_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeKinesis::start(&["--stream", "logs"]);
    let credentials = format!("http://{}/credentials", fake.addr);
    let token = dir.path().join("token");
    std::fs::write(&token, "pod-identity-token").unwrap();
    let stats = ship_without_keys(
        &fake,
        dir.path(),
        &[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &credentials),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                token.to_str().unwrap(),
            ),
        ],
    );
    assert_signed_by(&stats, "container_credentials_calls", 0);
}

/// The credentials source counted as `source` was called, and every Kinesis call (describe, list
/// shards, puts: `requests` less the `other` ones) was signed with the session token it handed out.
fn assert_signed_by(stats: &serde_json::Value, source: &str, other: u64) {
    assert!(stats[source].as_u64().unwrap() >= 1, "{stats}");
    let calls = stats["requests"].as_u64().unwrap() - other;
    assert!(calls >= 3, "{stats}");
    assert_eq!(
        stats["requests_with_session_token"].as_u64().unwrap(),
        calls,
        "{stats}"
    );
}

/// PutRecords goes in CBOR to an endpoint that speaks it, every call, and the code and message
/// of a failed call's CBOR error reach the sink. An endpoint that speaks only
/// JSON refuses the first CBOR calls (one per request slot at most), or closes their connections
/// without an answer; the shipper sends those records again in JSON, says so once, and sends only
/// JSON from then on. `--no-cbor` sends JSON from the start. Every line arrives each time, once.
#[test]
fn put_records_go_in_cbor_or_in_json_to_an_endpoint_without_it() {
    const LINES: usize = 3000;
    const CONCURRENCY: u64 = 4;
    for (fake_args, shipper_args) in [
        (&[][..], &[][..]),
        (&["--no-cbor"][..], &[][..]),
        (&["--drop-cbor"][..], &[][..]),
        (&[][..], &["--no-cbor"][..]),
    ] {
        let case = format!("endpoint {fake_args:?}, shipper {shipper_args:?}");
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["--stream", "logs", "--shards", "2", "--track-duplicates"];
        args.extend_from_slice(fake_args);
        let fake = FakeKinesis::start(&args);
        let cbor_endpoint = fake_args.is_empty() && shipper_args.is_empty();
        if cbor_endpoint {
            // Some calls fail whole (HTTP 500): their CBOR errors must reach the sink as codes.
            fake.admin("POST", "/faults", r#"{"fail_http": 0.2}"#);
        }
        let log = dir.path().join("worker.log");
        append_lines(&log, 0, LINES);
        let (endpoint, data_dir) = (format!("http://{}", fake.addr), dir.path().join("data"));
        // Small requests, so that there are many of them after the first.
        let mut args = tail_args(
            log.to_str().unwrap(),
            "logs",
            &endpoint,
            data_dir.to_str().unwrap(),
            &["--max-batch-records", "50", "--concurrency", "4"],
        );
        args.extend_from_slice(shipper_args);
        let mut shipper = Shipper::start(&args, &[]);
        shipper.wait_log("shipper started", Duration::from_secs(30));
        let deadline = Instant::now() + Duration::from_secs(60);
        while accepted(&fake) < LINES as u64 {
            assert!(
                Instant::now() < deadline,
                "{case}: only {} of {LINES} lines arrived",
                accepted(&fake)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        shipper.signal("TERM");
        let (code, log) = shipper.wait(Duration::from_secs(30));
        assert_eq!(code, Some(0), "{case}");
        let stats = fake.admin("GET", "/stats", "");
        let count = |name: &str| stats[name].as_u64().unwrap();
        assert_eq!(
            count("user_records_accepted"),
            LINES as u64,
            "{case}: {stats}"
        );
        assert_eq!(count("duplicate_user_records"), 0, "{case}: {stats}");
        let calls = count("put_records_calls");
        assert!(calls >= (LINES / 50) as u64, "{case}: {stats}");
        let said = log
            .iter()
            .filter(|line| line.contains("sending JSON from now on"))
            .count();
        match (fake_args, shipper_args) {
            ([], []) => {
                assert_eq!(count("cbor_requests"), calls, "{case}: {stats}");
                let accepted = log
                    .iter()
                    .filter(|line| line.contains("accepts PutRecords in CBOR"))
                    .count();
                assert_eq!(accepted, 1, "{case}: {log:#?}");
                assert!(count("http_5xx_injected") > 0, "{case}: {stats}");
                assert!(
                    log.iter()
                        .any(|line| line.contains("InternalFailure: Internal service failure")),
                    "{case}: the injected failures' code and message: {log:#?}"
                );
                assert_eq!(count("invalid_requests"), 0, "{case}: {stats}");
                assert_eq!(said, 0, "{case}");
            }
            (["--no-cbor"], []) => {
                let refused = count("invalid_requests");
                assert!(
                    (1..=CONCURRENCY).contains(&refused),
                    "{case}: {refused} CBOR calls refused: {stats}"
                );
                assert_eq!(said, 1, "{case}: {log:#?}");
            }
            (["--drop-cbor"], []) => {
                let dropped = count("cbor_calls_dropped");
                assert!(
                    (1..=CONCURRENCY).contains(&dropped),
                    "{case}: {dropped} CBOR calls dropped: {stats}"
                );
                assert_eq!(count("cbor_requests"), 0, "{case}: {stats}");
                assert_eq!(count("invalid_requests"), 0, "{case}: {stats}");
                assert_eq!(said, 1, "{case}: {log:#?}");
            }
            _ => {
                assert_eq!(count("cbor_requests"), 0, "{case}: {stats}");
                assert_eq!(count("invalid_requests"), 0, "{case}: {stats}");
                assert_eq!(said, 0, "{case}");
            }
        }
    }
}
