//! Retry and acknowledgement behaviour of the sink, against a scripted transport.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::ack::{FileId, FileProgress, Fingerprint};

/// Answers each call with the next scripted outcome, recording which records it was sent.
#[derive(Default)]
struct Scripted {
    outcomes: Mutex<VecDeque<Result<Vec<EntryResult>, SendError>>>,
    calls: Mutex<Vec<Vec<Vec<u8>>>>,
}

impl Transport for Arc<Scripted> {
    async fn put_records(&self, records: &[Record]) -> Result<Vec<EntryResult>, SendError> {
        self.calls
            .lock()
            .unwrap()
            .push(records.iter().map(|r| r.data.to_vec()).collect());
        let next = self.outcomes.lock().unwrap().pop_front();
        next.unwrap_or_else(|| Ok(vec![EntryResult::Delivered; records.len()]))
    }

    async fn list_shards(&self) -> Result<Vec<crate::shard_map::ShardRange>, SendError> {
        Ok(crate::shard_map::ShardRange::split_evenly(2))
    }
}

fn failed(code: &str) -> EntryResult {
    EntryResult::Failed {
        code: code.into(),
        message: "scripted".into(),
    }
}

fn request_error(class: ErrorClass, code: &str) -> SendError {
    SendError {
        class,
        code: code.into(),
        message: "scripted".into(),
    }
}

struct Fixture {
    transport: Arc<Scripted>,
    sink: Sink<Arc<Scripted>>,
    progress: Arc<FileProgress>,
    metrics: Arc<Metrics>,
    dir: tempfile::TempDir,
}

fn fixture(outcomes: Vec<Result<Vec<EntryResult>, SendError>>) -> Fixture {
    let transport = Arc::new(Scripted {
        outcomes: Mutex::new(outcomes.into()),
        ..Scripted::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let sink = Sink::new(
        Arc::clone(&transport),
        "test-stream".into(),
        RetryPolicy::default(),
        DeadLetter::new(dir.path()),
        Arc::clone(&metrics),
    );
    let progress = FileProgress::new(
        FileId { dev: 1, ino: 1 },
        "/w.log".into(),
        Fingerprint::default(),
        0,
    );
    Fixture {
        transport,
        sink,
        progress,
        metrics,
        dir,
    }
}

/// Records "r0".."rN", each covering 10 bytes of the file; their data shares one block, as the
/// record builder makes it (retried records copy theirs out).
fn batch(progress: &Arc<FileProgress>, n: usize) -> Batch {
    let mut arena = crate::record::Arena::default();
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            data: arena.take(&mut format!("r{i}").into_bytes()),
            partition_key: "k".into(),
            ack: progress.token(i as u64 * 10, i as u64 * 10 + 10).into(),
            shard: None,
            user_records: 1,
            random_key: false,
        })
        .collect();
    let bytes = records.iter().map(Record::size).sum();
    Batch { records, bytes }
}

#[tokio::test(start_paused = true)]
async fn only_failed_entries_are_retried_until_delivered() {
    let f = fixture(vec![
        Ok(vec![
            EntryResult::Delivered,
            failed("ProvisionedThroughputExceededException"),
            failed("InternalFailure"),
        ]),
        Ok(vec![
            failed("ProvisionedThroughputExceededException"),
            EntryResult::Delivered,
        ]),
    ]);
    f.sink
        .send(batch(&f.progress, 3), &CancellationToken::new())
        .await;
    let calls = f.transport.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![
            vec![b"r0".to_vec(), b"r1".to_vec(), b"r2".to_vec()],
            vec![b"r1".to_vec(), b"r2".to_vec()],
            vec![b"r1".to_vec()],
        ]
    );
    assert_eq!(f.progress.committed(), 30);
    assert_eq!(Metrics::get(&f.metrics.records_sent_total), 3);
    assert_eq!(Metrics::get(&f.metrics.records_retried_total), 3);
    assert_eq!(Metrics::get(&f.metrics.throttled_total), 2);
}

#[tokio::test(start_paused = true)]
async fn checkpoint_waits_for_a_retried_head_entry() {
    let f = fixture(vec![Ok(vec![
        failed("InternalFailure"),
        EntryResult::Delivered,
    ])]);
    let stop = CancellationToken::new();
    let progress = Arc::clone(&f.progress);
    // Cancel during the backoff sleep: the second record is acknowledged, the first is not.
    let sending = f.sink.send(batch(&f.progress, 2), &stop);
    tokio::pin!(sending);
    tokio::select! {
        () = &mut sending => panic!("finished despite a failed entry"),
        () = tokio::time::sleep(Duration::from_millis(1)) => {}
    }
    assert_eq!(
        progress.committed(),
        0,
        "the delivered record is past a gap"
    );
    stop.cancel();
    sending.await;
    assert_eq!(progress.committed(), 0);
}

#[tokio::test(start_paused = true)]
async fn whole_call_failures_retry_without_limit() {
    let mut outcomes = Vec::new();
    for _ in 0..25 {
        outcomes.push(Err(request_error(ErrorClass::Transient, "InternalFailure")));
        outcomes.push(Err(request_error(
            ErrorClass::Throttled,
            "ProvisionedThroughputExceededException",
        )));
    }
    let f = fixture(outcomes);
    f.sink
        .send(batch(&f.progress, 2), &CancellationToken::new())
        .await;
    assert_eq!(f.transport.calls.lock().unwrap().len(), 51);
    assert_eq!(f.progress.committed(), 20);
    assert_eq!(
        Metrics::get(&f.metrics.put_records_failed_requests_total),
        50
    );
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_endpoint_counts_what_waits_until_it_answers() {
    // Connection refused for a while (the backoff grows to 30 s), then a partly failed answer.
    let mut outcomes: Vec<_> = (0..8)
        .map(|_| Err(request_error(ErrorClass::Transient, "DispatchFailure")))
        .collect();
    outcomes.push(Ok(vec![EntryResult::Delivered, failed("InternalFailure")]));
    let f = fixture(outcomes);
    let stop = CancellationToken::new();
    let sending = f.sink.send(batch(&f.progress, 2), &stop);
    tokio::pin!(sending);
    tokio::select! {
        () = &mut sending => panic!("delivered while unreachable"),
        () = tokio::time::sleep(Duration::from_millis(50)) => {}
    }
    assert_eq!(f.sink.outage().waiting(), (2, 1));
    sending.await;
    assert_eq!(f.transport.calls.lock().unwrap().len(), 10);
    assert_eq!(f.progress.committed(), 20);
    assert_eq!(f.sink.outage().waiting(), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_batch_abandoned_at_a_stop_leaves_the_count() {
    // Unreachable for as many attempts as the wait below can hold (a retry's delay is random
    // and may be shorter than the wait).
    let f = fixture(
        (0..100)
            .map(|_| Err(request_error(ErrorClass::Transient, "Timeout")))
            .collect(),
    );
    let stop = CancellationToken::new();
    let sending = f.sink.send(batch(&f.progress, 3), &stop);
    tokio::pin!(sending);
    tokio::select! {
        () = &mut sending => panic!("delivered while unreachable"),
        () = tokio::time::sleep(Duration::from_millis(1)) => {}
    }
    assert_eq!(f.sink.outage().waiting(), (3, 1));
    stop.cancel();
    sending.await;
    assert_eq!(f.sink.outage().waiting(), (0, 0));
    assert_eq!(f.progress.committed(), 0);
}

#[tokio::test(start_paused = true)]
async fn permanent_failures_go_to_the_dead_letter_file_and_are_acknowledged() {
    let f = fixture(vec![
        Ok(vec![
            failed("KMSDisabledException"),
            EntryResult::Delivered,
            failed("InternalFailure"),
        ]),
        Err(request_error(
            ErrorClass::Permanent,
            "AccessDeniedException",
        )),
    ]);
    f.sink
        .send(batch(&f.progress, 3), &CancellationToken::new())
        .await;
    assert_eq!(
        f.progress.committed(),
        30,
        "dead-lettered records no longer hold the checkpoint"
    );
    let text = std::fs::read_to_string(f.dir.path().join(dead_letter::FILE_NAME)).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["error_code"], "KMSDisabledException");
    assert_eq!(lines[0]["data"], "r0");
    assert_eq!(lines[0]["start"], 0);
    assert_eq!(lines[1]["error_code"], "AccessDeniedException");
    assert_eq!(lines[1]["data"], "r2");
    assert_eq!(lines[1]["file"], "/w.log");
    assert_eq!(Metrics::get(&f.metrics.records_dead_lettered_total), 2);
}

#[tokio::test(start_paused = true)]
async fn binary_records_are_dead_lettered_as_base64() {
    let f = fixture(vec![Ok(vec![failed("KMSNotFoundException")])]);
    let record = Record {
        data: vec![0xff, 0x00, 0xfe].into(),
        partition_key: "k".into(),
        ack: f.progress.token(0, 4).into(),
        shard: None,
        user_records: 1,
        random_key: false,
    };
    f.sink
        .send(
            Batch {
                bytes: record.size(),
                records: vec![record],
            },
            &CancellationToken::new(),
        )
        .await;
    let text = std::fs::read_to_string(f.dir.path().join(dead_letter::FILE_NAME)).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(line["data_base64"], "/wD+");
    assert!(line.get("data").is_none());
}

#[tokio::test(start_paused = true)]
async fn unwritable_dead_letter_file_leaves_records_unacknowledged() {
    let f = fixture(vec![Ok(vec![failed("AccessDeniedException")])]);
    // A directory where the file should be makes every write fail.
    std::fs::create_dir(f.dir.path().join(dead_letter::FILE_NAME)).unwrap();
    f.sink
        .send(batch(&f.progress, 1), &CancellationToken::new())
        .await;
    assert_eq!(f.progress.committed(), 0);
    assert_eq!(Metrics::get(&f.metrics.records_dead_lettered_total), 0);
}

/// A batch of records named `{prefix}0`.., covering 10 bytes each of `progress`.
fn named_batch(progress: &Arc<FileProgress>, prefix: &str, n: usize) -> Batch {
    let mut batch = batch(progress, n);
    for (i, record) in batch.records.iter_mut().enumerate() {
        record.data = format!("{prefix}{i}").into();
    }
    batch
}

fn new_progress(ino: u64) -> Arc<FileProgress> {
    FileProgress::new(
        FileId { dev: 1, ino },
        format!("/{ino}.log").into(),
        Fingerprint::default(),
        0,
    )
}

/// Two batches through a sink of one request slot, the first starting first; returns the calls.
async fn two_batches(first_outcome: Vec<EntryResult>) -> Vec<Vec<Vec<u8>>> {
    let f = fixture(vec![Ok(first_outcome)]);
    let sink = f.sink.with_concurrency(1);
    let (a, b) = (new_progress(10), new_progress(11));
    let stop = CancellationToken::new();
    tokio::join!(
        sink.send(named_batch(&a, "a", 2), &stop),
        sink.send(named_batch(&b, "b", 1), &stop),
    );
    assert_eq!((a.committed(), b.committed()), (20, 10), "all delivered");
    f.transport.calls.lock().unwrap().clone()
}

#[tokio::test(start_paused = true)]
async fn a_partly_failed_batch_waits_without_its_slot() {
    let calls = two_batches(vec![EntryResult::Delivered, failed("InternalFailure")]).await;
    assert_eq!(
        calls,
        vec![
            vec![b"a0".to_vec(), b"a1".to_vec()],
            vec![b"b0".to_vec()],
            vec![b"a1".to_vec()],
        ],
        "the second batch went out while the first waited to retry"
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_that_delivered_nothing_keeps_its_slot() {
    let calls = two_batches(vec![failed("InternalFailure"), failed("InternalFailure")]).await;
    assert_eq!(
        calls,
        vec![
            vec![b"a0".to_vec(), b"a1".to_vec()],
            vec![b"a0".to_vec(), b"a1".to_vec()],
            vec![b"b0".to_vec()],
        ],
        "nothing else is sent while the stream delivers nothing"
    );
}
