use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::sinks::error::SendError;

/// A transport that fails entries by a script of per-call outcomes, and records what it accepted.
#[derive(Default)]
struct Scripted {
    /// Per call: `Err` for a whole-call failure, or which entries fail (by position in the call).
    script: Mutex<Vec<Result<Vec<bool>, SendError>>>,
    accepted: Mutex<Vec<Bytes>>,
    calls: Mutex<Vec<usize>>,
}

impl Transport for Scripted {
    async fn put_record_batch(&self, records: &[Bytes]) -> Result<Vec<EntryResult>, SendError> {
        self.calls.lock().unwrap().push(records.len());
        let next = {
            let mut script = self.script.lock().unwrap();
            if script.is_empty() {
                Ok(vec![false; records.len()])
            } else {
                script.remove(0)
            }
        };
        let fails = next?;
        let mut results = Vec::new();
        for (i, record) in records.iter().enumerate() {
            if fails.get(i).copied().unwrap_or(false) {
                results.push(EntryResult::Failed {
                    code: "ServiceUnavailableException".into(),
                    message: "slow down".into(),
                });
            } else {
                self.accepted.lock().unwrap().push(record.clone());
                results.push(EntryResult::Delivered);
            }
        }
        Ok(results)
    }
}

fn sink(script: Vec<Result<Vec<bool>, SendError>>) -> Sink<Scripted> {
    let transport = Scripted {
        script: Mutex::new(script),
        ..Scripted::default()
    };
    let policy = RetryPolicy::new(Duration::from_millis(10), Duration::from_millis(100)).unwrap();
    Sink::new(transport, "d".into(), policy, Arc::default(), 2)
}

fn records(n: usize) -> Vec<Bytes> {
    (0..n).map(|i| Bytes::from(format!("r{i}\n"))).collect()
}

#[tokio::test(start_paused = true)]
async fn only_failed_entries_are_sent_again() {
    let sink = sink(vec![
        Ok(vec![false, true, false, true]),
        Err(SendError {
            class: ErrorClass::Transient,
            code: "ServiceUnavailableException".into(),
            message: "503".into(),
        }),
        Ok(vec![true, false]),
    ]);
    let outcomes = sink
        .send(&records(4), &CancellationToken::new())
        .await
        .unwrap();
    assert!(outcomes.iter().all(|o| *o == Delivery::Delivered));
    let mut accepted = sink.transport.accepted.lock().unwrap().clone();
    accepted.sort();
    assert_eq!(accepted, records(4), "each record accepted exactly once");
    assert_eq!(*sink.transport.calls.lock().unwrap(), [4, 2, 2, 1]);
    assert_eq!(
        sink.metrics.failed_by_code(),
        [("ServiceUnavailableException".to_string(), 4)]
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_refusals_are_handed_back() {
    let sink = sink(vec![Err(SendError {
        class: ErrorClass::Permanent,
        code: "ResourceNotFoundException".into(),
        message: "gone".into(),
    })]);
    let outcomes = sink
        .send(&records(2), &CancellationToken::new())
        .await
        .unwrap();
    assert!(outcomes.iter().all(
        |o| matches!(o, Delivery::Refused { code, .. } if code == "ResourceNotFoundException")
    ));
}

#[tokio::test(start_paused = true)]
async fn a_stop_abandons_what_is_not_delivered() {
    let failing = SendError {
        class: ErrorClass::Transient,
        code: "ServiceUnavailableException".into(),
        message: "503".into(),
    };
    let sink = sink(vec![Err(failing.clone()); 1000]);
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        stopper.cancel();
    });
    assert_eq!(sink.send(&records(3), &stop).await, None);
}
