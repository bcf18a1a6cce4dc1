//! Shared helpers for the integration tests: LocalStack, streams, the shipper process, reading back.
#![allow(dead_code)]

pub mod fake;
pub mod moto;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::types::ShardIteratorType;

pub const REGION: &str = "us-east-1";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Start LocalStack on `port` (once per port per test binary) with extra environment, and return
/// its endpoint. The start script is idempotent and reuses a running instance.
pub fn localstack(port: u16, env: &[(&str, &str)]) -> String {
    static STARTED: OnceLock<Mutex<Vec<u16>>> = OnceLock::new();
    let started = STARTED.get_or_init(|| Mutex::new(Vec::new()));
    let mut started = started.lock().unwrap_or_else(|p| p.into_inner());
    if !started.contains(&port) {
        let status = Command::new(repo_root().join("localstack/start.sh"))
            .env("LOCALSTACK_PORT", port.to_string())
            .envs(env.iter().copied())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .expect("run localstack/start.sh");
        assert!(
            status.success(),
            "localstack/start.sh failed for port {port}"
        );
        started.push(port);
    }
    format!("http://127.0.0.1:{port}")
}

pub fn default_localstack() -> String {
    localstack(4566, &[])
}

pub fn aws_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", REGION),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}

pub async fn client(endpoint: &str) -> Client {
    let credentials =
        aws_sdk_kinesis::config::Credentials::new("test", "test", None, None, "tests");
    let config = aws_sdk_kinesis::config::Builder::new()
        .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
        .region(aws_sdk_kinesis::config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(credentials)
        .build();
    Client::from_conf(config)
}

/// A stream name no other test uses.
pub fn unique_stream(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// Delete streams that earlier test processes created (`unique_stream` names carry the process
/// id): LocalStack is reused between runs, and its account allows 100 shards in all.
async fn delete_leftover_streams(client: &Client) {
    let own = std::process::id().to_string();
    let Ok(listed) = client.list_streams().limit(1000).send().await else {
        return;
    };
    for name in listed.stream_names() {
        let parts: Vec<&str> = name.rsplitn(3, '-').collect();
        let from_a_test = parts.len() == 3
            && parts[0].bytes().all(|b| b.is_ascii_digit())
            && parts[1].bytes().all(|b| b.is_ascii_digit());
        if from_a_test && parts[1] != own {
            let _ = client
                .delete_stream()
                .stream_name(name)
                .enforce_consumer_deletion(true)
                .send()
                .await;
        }
    }
}

pub async fn create_stream(client: &Client, name: &str, shards: i32) {
    static CLEANED: Mutex<bool> = Mutex::new(false);
    let first = !std::mem::replace(
        &mut *CLEANED.lock().unwrap_or_else(|p| p.into_inner()),
        true,
    );
    if first {
        delete_leftover_streams(client).await;
    }
    // Deletions free their shards a moment later: retry while the shard limit is still reached.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client
            .create_stream()
            .stream_name(name)
            .shard_count(shards)
            .send()
            .await
        {
            Ok(_) => break,
            Err(error) => {
                let limited = error
                    .as_service_error()
                    .is_some_and(|e| e.is_limit_exceeded_exception());
                assert!(
                    limited && Instant::now() < deadline,
                    "create stream {name}: {error:?}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let summary = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await;
        let active = summary.ok().and_then(|s| {
            s.stream_description_summary()
                .map(|d| d.stream_status().as_str() == "ACTIVE")
        });
        if active == Some(true) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stream {name} did not become ACTIVE"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One record read back: its shard and data.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub shard: String,
    pub key: String,
    pub data: Vec<u8>,
}

/// Reads every shard of a stream from the start, keeping its place between calls.
pub struct StreamReader {
    client: Client,
    stream: String,
    iterators: HashMap<String, Option<String>>,
    pub records: Vec<ReadRecord>,
    /// Sequence numbers already read: LocalStack's Kinesis can hand out a NextShardIterator that
    /// does not move past the shard's last record, which then comes back on every call.
    seen: std::collections::HashSet<String>,
}

impl StreamReader {
    pub async fn new(client: &Client, stream: &str) -> StreamReader {
        let shards = client
            .list_shards()
            .stream_name(stream)
            .send()
            .await
            .expect("list shards");
        let mut iterators = HashMap::new();
        for shard in shards.shards() {
            let iterator = client
                .get_shard_iterator()
                .stream_name(stream)
                .shard_id(shard.shard_id())
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await
                .expect("get shard iterator");
            iterators.insert(
                shard.shard_id().to_string(),
                iterator.shard_iterator().map(String::from),
            );
        }
        StreamReader {
            client: client.clone(),
            stream: stream.to_string(),
            iterators,
            records: Vec::new(),
            seen: std::collections::HashSet::new(),
        }
    }

    /// Read what arrived since the last call.
    pub async fn poll(&mut self) {
        for (shard, iterator) in self.iterators.iter_mut() {
            while let Some(current) = iterator.clone() {
                let output = match self
                    .client
                    .get_records()
                    .shard_iterator(&current)
                    .limit(10_000)
                    .send()
                    .await
                {
                    Ok(output) => output,
                    Err(error) => panic!("get records on {}: {error:?}", self.stream),
                };
                let mut got = 0;
                for record in output.records() {
                    if !self.seen.insert(record.sequence_number().to_string()) {
                        continue;
                    }
                    got += 1;
                    self.records.push(ReadRecord {
                        shard: shard.clone(),
                        key: record.partition_key().unwrap_or_default().to_string(),
                        data: record.data().as_ref().to_vec(),
                    });
                }
                *iterator = output.next_shard_iterator().map(String::from);
                if got == 0 {
                    break;
                }
            }
        }
    }

    /// Poll until at least `n` records arrived, or panic after `timeout`.
    pub async fn wait_for(&mut self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.poll().await;
            if self.records.len() >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} records arrived in {timeout:?}",
                self.records.len()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub fn texts(&self) -> Vec<String> {
        self.records
            .iter()
            .map(|r| String::from_utf8_lossy(&r.data).into_owned())
            .collect()
    }
}

/// A running shipper process whose log lines are collected.
pub struct Shipper {
    pub child: Child,
    log_rx: mpsc::Receiver<String>,
    pub log: Vec<String>,
}

impl Shipper {
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Shipper {
        Shipper::start_without(args, env, &[])
    }

    /// [`Shipper::start`], with the variables `removed` taken out of its environment (say, the
    /// access keys of [`aws_env`], to have it find credentials another way).
    pub fn start_without(args: &[&str], env: &[(&str, &str)], removed: &[&str]) -> Shipper {
        let mut command = Command::new(env!("CARGO_BIN_EXE_shipper"));
        command.args(args).envs(aws_env()).envs(env.iter().copied());
        for name in removed {
            command.env_remove(name);
        }
        let mut child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shipper");
        let (tx, log_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("shipper: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Shipper {
            child,
            log_rx,
            log: Vec::new(),
        }
    }

    /// Wait for a log line containing `needle`.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> String {
        if let Some(line) = self.log.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log_rx.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line containing {needle:?} within {timeout:?}; log: {:#?}",
                    self.log
                ),
            }
        }
    }

    /// Wait until `count` log lines contain `needle`.
    pub fn wait_log_count(&mut self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.log.iter().filter(|l| l.contains(needle)).count() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log_rx.recv_timeout(left) {
                Ok(line) => self.log.push(line),
                Err(_) => panic!(
                    "fewer than {count} log lines containing {needle:?} within {timeout:?}; log: {:#?}",
                    self.log
                ),
            }
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Wait for the process to exit and return its code.
    pub fn wait(mut self, timeout: Duration) -> (Option<i32>, Vec<String>) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while let Ok(line) = self.log_rx.recv_timeout(Duration::from_secs(1)) {
                    self.log.push(line);
                }
                return (status.code(), self.log);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "shipper did not exit within {timeout:?}; log: {:#?}",
                    self.log
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Append numbered lines `from..to` to `path`: "line-000042 <payload>".
/// `shipper tail PATH --stream STREAM --endpoint-url ENDPOINT --data-dir DATA_DIR`, then `extra`.
pub fn tail_args<'a>(
    path: &'a str,
    stream: &'a str,
    endpoint: &'a str,
    data_dir: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "tail",
        path,
        "--stream",
        stream,
        "--endpoint-url",
        endpoint,
        "--data-dir",
        data_dir,
    ];
    args.extend_from_slice(extra);
    args
}

pub fn append_lines(path: &Path, from: usize, to: usize) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let mut text = String::new();
    for i in from..to {
        text.push_str(&format!("line-{i:06} payload for line {i}\n"));
    }
    file.write_all(text.as_bytes()).unwrap();
    file.sync_all().unwrap();
}

/// The line numbers found in records, in arrival order.
pub fn line_numbers(texts: &[String]) -> Vec<usize> {
    texts
        .iter()
        .filter_map(|t| t.strip_prefix("line-")?.get(..6)?.parse().ok())
        .collect()
}

/// What most LocalStack tests start from: a fresh stream, and a temp dir with a log file path and a
/// data dir. Keep `dir` bound: dropping it removes the directory.
pub struct Fixture {
    pub endpoint: String,
    pub client: Client,
    pub stream: String,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    pub data_dir: PathBuf,
}

impl Fixture {
    pub async fn new(prefix: &str, shards: i32, log_name: &str) -> Fixture {
        let endpoint = default_localstack();
        let client = client(&endpoint).await;
        let stream = unique_stream(prefix);
        create_stream(&client, &stream, shards).await;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(log_name);
        let data_dir = dir.path().join("data");
        Fixture {
            endpoint,
            client,
            stream,
            dir,
            log,
            data_dir,
        }
    }
}

/// A child's standard output collected as it arrives, and its standard error collected to the end,
/// each on a thread so neither pipe fills up and blocks the child.
pub struct Captured {
    stdout: std::sync::Arc<Mutex<Vec<u8>>>,
    stdout_thread: std::thread::JoinHandle<()>,
    stderr_thread: std::thread::JoinHandle<String>,
}

impl Captured {
    /// Take the child's piped stdout and stderr.
    pub fn start(child: &mut Child) -> Captured {
        use std::io::Read;
        let stdout = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut out = child.stdout.take().expect("piped stdout");
        let collected = std::sync::Arc::clone(&stdout);
        let stdout_thread = std::thread::spawn(move || {
            let mut buffer = [0u8; 65536];
            while let Ok(n) = out.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                collected.lock().unwrap().extend_from_slice(&buffer[..n]);
            }
        });
        let mut err = child.stderr.take().expect("piped stderr");
        let stderr_thread = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        Captured {
            stdout,
            stdout_thread,
            stderr_thread,
        }
    }

    /// What the child printed so far.
    pub fn stdout_so_far(&self) -> Vec<u8> {
        self.stdout.lock().unwrap().clone()
    }

    /// Once the child has exited: everything it printed, and its whole stderr.
    pub fn finish(self) -> (Vec<u8>, String) {
        self.stdout_thread.join().unwrap();
        let stderr = self.stderr_thread.join().unwrap();
        let stdout = self.stdout.lock().unwrap().clone();
        (stdout, stderr)
    }
}

/// GET a path from a shipper's metrics endpoint: (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the series `name` (with its labels, if any) in a Prometheus text body.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no metric {name} in {text}"))
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll a shipper's metrics until `check` holds for the series `name`, or panic after `timeout`
/// with the last value.
pub fn wait_metric(addr: &str, name: &str, timeout: Duration, check: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, body) = http_get(addr, "/metrics");
        let value = metric(&body, name);
        if check(value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed at {value} for {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// PutRecords of `(partition key, data)` entries to `stream`, in calls of 200; every entry must
/// be accepted.
pub async fn put_records(client: &Client, stream: &str, entries: Vec<(String, Vec<u8>)>) {
    use aws_sdk_kinesis::primitives::Blob;
    use aws_sdk_kinesis::types::PutRecordsRequestEntry;
    for chunk in entries.chunks(200) {
        let records = chunk
            .iter()
            .map(|(key, data)| {
                PutRecordsRequestEntry::builder()
                    .partition_key(key)
                    .data(Blob::new(data.clone()))
                    .build()
                    .unwrap()
            })
            .collect();
        let output = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(records))
            .send()
            .await
            .unwrap();
        assert!(output.records().iter().all(|r| r.error_code().is_none()));
    }
}
