//! Parser tests over the real Celery fixture, format tests, and property tests of the joiner.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::Value;

use super::*;
use crate::partition_key::{self, KeyRng, Template};

/// What the fixture's app (`scripts/celery_fixture/tasks.py`) runs: 80 tasks, each with a
/// `received` line and a `succeeded`/`raised unexpected` line; all but the 8 that fail unhandled
/// (`fetch_upstream`, `translate_text`) make one log call of their own.
const FIXTURE_TASKS: usize = 80;
const FIXTURE_TASK_LOG_CALLS: usize = 72;
/// Tracebacks the app logs: 4 `reconcile_ledger`, 4 chained `settle_payment` (two each), 4
/// `fetch_upstream` and 4 `translate_text`.
const FIXTURE_TRACEBACKS: usize = 20;
/// One `export_report` task in 20 logs a line of about 50 KiB.
const FIXTURE_LONG_LINES: usize = 4;

/// A line as the file source hands it over.
#[derive(Debug, Clone)]
struct Line {
    start: u64,
    content_end: u64,
    end: u64,
}

/// `tests/fixtures/celery/worker.log`, written by `scripts/celery-fixture.sh`.
fn fixture() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/celery/worker.log"
    );
    std::fs::read(path).unwrap_or_else(|e| panic!("the Celery fixture is missing at {path}: {e}"))
}

/// Records in the fixture: lines that start with the Celery prefix, counted without the parser.
fn fixture_records(file: &[u8], lines: &[Line]) -> usize {
    lines
        .iter()
        .filter(|l| looks_like_celery_line(content(file, l)))
        .count()
}

/// Splits at `\n` the way the file source does: lines without terminator, ranges with it.
fn split_lines(file: &[u8]) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut start = 0;
    while start < file.len() {
        let (content_end, end) = match memchr::memchr(b'\n', &file[start..]) {
            Some(i) => (start + i, start + i + 1),
            None => (file.len(), file.len()),
        };
        lines.push(Line {
            start: start as u64,
            content_end: content_end as u64,
            end: end as u64,
        });
        start = end;
    }
    lines
}

fn content<'a>(file: &'a [u8], line: &Line) -> &'a [u8] {
    &file[line.start as usize..line.content_end as usize]
}

/// Runs a joiner over all lines and flushes at the end.
fn join(
    file: &[u8],
    lines: &[Line],
    multiline: Multiline,
    max_record_bytes: usize,
) -> (Vec<Event>, Stats) {
    let mut joiner = Joiner::new(JoinerConfig {
        multiline,
        max_record_bytes,
        ..JoinerConfig::default()
    });
    let now = Instant::now();
    let mut events = Vec::new();
    for line in lines {
        joiner.push(content(file, line), line.start, line.end, now, &mut events);
    }
    events.extend(joiner.flush());
    (events, *joiner.stats())
}

/// The independent check: `[dddd-dd-dd dd:dd:dd,ddd: ` then `LEVEL/Process] `, using str methods.
fn looks_like_celery_line(line: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(line) else {
        return false;
    };
    let Some((stamp, rest)) = text.split_once(": ") else {
        return false;
    };
    let shape_ok = stamp.len() == 24
        && stamp.starts_with('[')
        && stamp.chars().enumerate().all(|(i, c)| match i {
            0 => c == '[',
            5 | 8 => c == '-',
            11 => c == ' ',
            14 | 17 => c == ':',
            20 => c == ',',
            _ => c.is_ascii_digit(),
        });
    let Some((level_process, _)) = rest.split_once("] ") else {
        return false;
    };
    shape_ok
        && level_process
            .split_once('/')
            .is_some_and(|(l, p)| !l.is_empty() && !p.is_empty())
}

fn text(event: &Event) -> &str {
    std::str::from_utf8(&event.data).expect("the fixture is UTF-8")
}

/// The `X` of a trailing `tail=X`, the marker the fixture's app puts at the end of a log call.
fn tail_marker(line: &str) -> Option<&str> {
    let (_, marker) = line.rsplit_once(" tail=")?;
    marker
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-')
        .then_some(marker)
}

/// True when `line` carries `mk=X` (and not `mk=X0`, a longer marker).
fn has_mark(line: &str, marker: &str) -> bool {
    let needle = format!("mk={marker}");
    line.match_indices(&needle)
        .any(|(i, _)| !line[i + needle.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

#[test]
fn fixture_record_count_matches_independent_count() {
    let file = fixture();
    let lines = split_lines(&file);
    let independent = fixture_records(&file, &lines);
    // The tasks' own lines, found by what the app writes, plus the worker's lines (start-up).
    let texts: Vec<&str> = lines
        .iter()
        .map(|l| std::str::from_utf8(content(&file, l)).unwrap())
        .filter(|t| looks_like_celery_line(t.as_bytes()))
        .collect();
    let task_lines = texts
        .iter()
        .filter(|t| t.contains("] tasks.") || t.contains("] Task tasks."))
        .count();
    assert_eq!(task_lines, 2 * FIXTURE_TASKS + FIXTURE_TASK_LOG_CALLS);
    assert!(
        texts
            .iter()
            .any(|t| t.contains(": INFO/MainProcess] w1@fixture ready."))
    );
    assert!(independent > task_lines, "{independent} records");
    let (events, stats) = join(&file, &lines, Multiline::Celery, DEFAULT_MAX_RECORD_BYTES);
    assert_eq!(events.len(), independent);
    assert_eq!(
        (stats.lines, stats.records, stats.records_split),
        (lines.len() as u64, independent as u64, 0)
    );
    assert!(
        events
            .iter()
            .all(|e| celery::has_prefix(&e.data) && !e.split)
    );
}

/// Checks every record of the fixture as a log call produced it, for a multiline mode.
fn assert_fixture_records_whole(multiline: Multiline) {
    let file = fixture();
    let lines = split_lines(&file);
    let (events, _) = join(&file, &lines, multiline, DEFAULT_MAX_RECORD_BYTES);
    assert_eq!(events.len(), fixture_records(&file, &lines));
    let mut tracebacks = 0;
    for event in &events {
        let record = text(event);
        let record_lines: Vec<&str> = record.split('\n').collect();
        let (first, last) = (record_lines[0], record_lines[record_lines.len() - 1]);
        assert!(
            looks_like_celery_line(first.as_bytes()),
            "record starts mid-record: {first:.120}"
        );
        // Every line of a record but the first is a continuation: no log call is swallowed.
        assert!(
            record_lines[1..]
                .iter()
                .all(|l| !looks_like_celery_line(l.as_bytes()))
        );
        // A multi-line log call ends with `tail=X` and starts with the line that has `mk=X`.
        if record_lines.len() > 1 {
            let marker =
                tail_marker(last).unwrap_or_else(|| panic!("record cut short: {last:.120}"));
            assert!(has_mark(first, marker), "{marker} not in {first:.200}");
        }
        for (i, line) in record_lines.iter().enumerate() {
            if line.starts_with("Traceback (most recent call last):") {
                tracebacks += 1;
                assert!(
                    first.contains(": ERROR/"),
                    "traceback not under its ERROR line: {first:.120}"
                );
                assert!(i > 0);
            }
        }
    }
    let in_file = lines
        .iter()
        .filter(|l| content(&file, l).starts_with(b"Traceback (most recent call last):"))
        .count();
    assert_eq!(in_file, FIXTURE_TRACEBACKS);
    assert_eq!(tracebacks, in_file, "every traceback of the fixture");
    // Every `tail=X` line is the last line of its record.
    for (i, line) in lines.iter().enumerate() {
        let line_text = std::str::from_utf8(content(&file, line)).unwrap();
        if tail_marker(line_text).is_some() {
            let event = events
                .iter()
                .find(|e| e.start <= line.start && line.end <= e.end)
                .unwrap();
            assert_eq!(
                event.end,
                line.end,
                "line {} does not end its record",
                i + 1
            );
        }
    }
}

#[test]
fn celery_mode_keeps_every_traceback_with_its_log_call() {
    assert_fixture_records_whole(Multiline::Celery);
}

#[test]
fn python_mode_keeps_tracebacks_whole() {
    assert_fixture_records_whole(Multiline::Python);
    let file = fixture();
    let lines = split_lines(&file);
    let (celery, _) = join(&file, &lines, Multiline::Celery, DEFAULT_MAX_RECORD_BYTES);
    let (python, _) = join(&file, &lines, Multiline::Python, DEFAULT_MAX_RECORD_BYTES);
    assert_eq!(python, celery);
}

#[test]
fn regex_mode_over_the_fixture() {
    let file = fixture();
    let lines = split_lines(&file);
    let (celery, _) = join(&file, &lines, Multiline::Celery, DEFAULT_MAX_RECORD_BYTES);
    let (regex, _) = join(
        &file,
        &lines,
        r"^\[\d{4}-".parse().unwrap(),
        DEFAULT_MAX_RECORD_BYTES,
    );
    assert_eq!(regex, celery);
    let (none, _) = join(&file, &lines, Multiline::None, DEFAULT_MAX_RECORD_BYTES);
    assert_eq!(none.len(), lines.len());
}

#[test]
fn fixture_records_are_byte_exact() {
    let file = fixture();
    let lines = split_lines(&file);
    // The long lines are about 50 KiB: under 52,000 bytes, so a larger cap splits nothing.
    let long: Vec<usize> = lines
        .iter()
        .map(|l| (l.content_end - l.start) as usize)
        .filter(|&n| n > 50_000)
        .collect();
    assert_eq!(long.len(), FIXTURE_LONG_LINES);
    assert!(long.iter().all(|&n| n < 52_000), "{long:?}");
    for cap in [DEFAULT_MAX_RECORD_BYTES, 4096, 1000] {
        let (events, stats) = join(&file, &lines, Multiline::Celery, cap);
        assert_covers_input(&file, &lines, &events, cap);
        assert_eq!(stats.records_split > 0, cap < 52_000, "cap {cap}");
    }
}

fn formatter(format: Format) -> (Formatter, FileContext) {
    let kubernetes = Kubernetes {
        pod: Some("worker-7d9f".into()),
        ..Kubernetes::default()
    };
    let enrichment = Enrichment::new(
        Some("vm".into()),
        kubernetes,
        vec![("env".into(), "prod".into())],
    );
    let file = FileContext::new(
        "/var/log/worker.log",
        FileIdentity {
            dev: 0x803,
            inode: 0x1234,
            fingerprint: 0xabcd,
        },
    );
    (
        Formatter::new(format, TimeZone::UTC, enrichment, &["tenant", "level"]),
        file,
    )
}

fn to_json(formatted: &Formatted) -> serde_json::Map<String, Value> {
    match serde_json::from_slice(&formatted.payload) {
        Ok(Value::Object(map)) => map,
        other => panic!(
            "not a JSON object: {other:?} {}",
            String::from_utf8_lossy(&formatted.payload)
        ),
    }
}

/// The fixture's task ids: task N has `uuid5(NAMESPACE, "task-N")` (see `tasks.py`).
const TASK_0: &str = "274bc088-3668-51f0-a216-e3b9ccfef8b2";
const TASK_1: &str = "95044db5-77af-503b-82b4-878020d1a5cb";
const TASK_2: &str = "80fdb844-ca31-5e3d-8f29-b184e6112ae3";
const TASK_4: &str = "5a3dd511-930f-5373-92a2-6ae3601aa8b2";
const TASK_6: &str = "ed68ba42-52cc-5ea3-a288-3b0f7eecc90f";
const TASK_8: &str = "648e0a03-a0c9-5644-b443-31e6bfbdc775";
const TASK_12: &str = "7f8ebabc-eb0f-50fa-a4ec-f1949d1afa06";

/// A formatted record of the fixture with the text it came from.
struct Sample {
    record: serde_json::Map<String, Value>,
    original: String,
}

/// The one record whose first line satisfies `matches`.
fn sample<'a>(samples: &'a [Sample], what: &str, matches: impl Fn(&str) -> bool) -> &'a Sample {
    let mut found = samples
        .iter()
        .filter(|s| matches(s.original.split('\n').next().unwrap_or_default()));
    let sample = found
        .next()
        .unwrap_or_else(|| panic!("no record for {what}"));
    assert!(found.next().is_none(), "more than one record for {what}");
    sample
}

/// The record of the log call marked `mk=X`.
fn marked<'a>(samples: &'a [Sample], marker: &str) -> &'a Sample {
    sample(samples, marker, |first| has_mark(first, marker))
}

/// The `Process` of `[... LEVEL/Process] `, read with str methods.
fn process_of(first_line: &str) -> &str {
    let (_, rest) = first_line.split_once('/').unwrap();
    rest.split_once("] ").unwrap().0
}

#[test]
fn celery_format_over_the_fixture() {
    let file = fixture();
    let lines = split_lines(&file);
    let (events, _) = join(&file, &lines, Multiline::Celery, DEFAULT_MAX_RECORD_BYTES);
    let (formatter, context) = formatter(Format::Celery);
    let mut stats = Stats::default();
    let mut fields = RecordFields::default();
    let mut samples = Vec::new();
    for event in events {
        let original = text(&event).to_string();
        let formatted = formatter.format(event, &context, &mut fields, &mut stats);
        assert!(!formatted.parse_error && !formatted.lossy_utf8);
        let record = to_json(&formatted);
        // The message is the record minus its prefix (and minus `NAME[ID]: ` in the task format).
        let message = record["message"].as_str().unwrap();
        assert!(original.ends_with(message), "{original:.120}");
        let key = Template::default().render(
            &formatter.key_fields(&context, &fields),
            &mut KeyRng::from_seed(1),
        );
        assert_eq!(
            record
                .get("task_id")
                .and_then(Value::as_str)
                .is_some_and(|id| id == key),
            record.contains_key("task_id")
        );
        samples.push(Sample { record, original });
    }
    assert_eq!(stats, Stats::default(), "no errors, nothing lossy");

    // The worker warns once per connection it sets up: the first warning is the sample.
    let hostname = samples
        .iter()
        .find(|s| {
            s.original
                .contains(": WARNING/MainProcess] No hostname was supplied.")
        })
        .expect("the hostname warning");
    let received = sample(&samples, "task 0 received", |first| {
        first.ends_with(&format!("] Task tasks.export_report[{TASK_0}] received"))
    });
    let succeeded = sample(&samples, "task 1 succeeded", |first| {
        first.contains(&format!(
            "] Task tasks.process_order[{TASK_1}] succeeded in 0."
        ))
    });
    let unexpected = sample(&samples, "task 6 raised", |first| {
        first.contains(&format!(
            "] Task tasks.fetch_upstream[{TASK_6}] raised unexpected: "
        ))
    });
    let order = marked(&samples, "fx-1");
    let ledger = marked(&samples, "fx-4");
    let template = marked(&samples, "fx-8");
    let chained = marked(&samples, "fx-12");
    assert!(std::ptr::eq(unexpected, marked(&samples, "fx-6")));

    // (sample, level, process, task_name, task_id, message starts with)
    let pool = |s: &Sample| process_of(&s.original).to_string();
    let received_message = format!("Task tasks.export_report[{TASK_0}] received");
    let succeeded_message = format!("Task tasks.process_order[{TASK_1}] succeeded in 0.");
    let unexpected_message =
        format!("Task tasks.fetch_upstream[{TASK_6}] raised unexpected: RuntimeError(");
    let expected = [
        (
            hostname,
            "WARNING",
            "MainProcess".to_string(),
            None,
            None,
            "No hostname was supplied.",
        ),
        (
            received,
            "INFO",
            "MainProcess".to_string(),
            Some("tasks.export_report"),
            Some(TASK_0),
            &*received_message,
        ),
        (
            order,
            "INFO",
            pool(order),
            Some("tasks.process_order"),
            Some(TASK_1),
            "order o-000001 processed",
        ),
        (
            succeeded,
            "INFO",
            pool(succeeded),
            Some("tasks.process_order"),
            Some(TASK_1),
            &*succeeded_message,
        ),
        (
            ledger,
            "ERROR",
            pool(ledger),
            Some("tasks.reconcile_ledger"),
            Some(TASK_4),
            "ledger reconciliation failed for batch 4",
        ),
        (
            unexpected,
            "ERROR",
            pool(unexpected),
            Some("tasks.fetch_upstream"),
            Some(TASK_6),
            &*unexpected_message,
        ),
        (
            template,
            "WARNING",
            pool(template),
            Some("tasks.render_template"),
            Some(TASK_8),
            "template invoice.html rendered with 2 warnings",
        ),
        (
            chained,
            "ERROR",
            pool(chained),
            Some("tasks.settle_payment"),
            Some(TASK_12),
            "settlement aborted for payout p-00012",
        ),
    ];
    for (sample, level, process, task_name, task_id, message) in expected {
        let record = &sample.record;
        let what = &sample.original[..sample.original.len().min(120)];
        let get = |k: &str| record.get(k).and_then(Value::as_str);
        assert!(
            process == "MainProcess" || process.starts_with("ForkPoolWorker-"),
            "{what}"
        );
        assert_eq!(
            (get("level"), get("process")),
            (Some(level), Some(&*process)),
            "{what}"
        );
        assert_eq!(
            (get("task_name"), get("task_id")),
            (task_name, task_id),
            "{what}"
        );
        assert!(
            get("message").unwrap().starts_with(message),
            "{what}: {:.100}",
            get("message").unwrap()
        );
        assert_eq!(
            (get("host"), get("pod"), get("env"), get("file")),
            (
                Some("vm"),
                Some("worker-7d9f"),
                Some("prod"),
                Some("/var/log/worker.log")
            )
        );
    }
    // `[2026-12-01 14:55:12,259: ` becomes `2026-12-01T14:55:12.259+00:00`.
    let stamp = &hostname.original[1..24];
    let ts = format!("{}T{}.{}+00:00", &stamp[..10], &stamp[11..19], &stamp[20..]);
    assert_eq!(hostname.record["ts"], ts);
    // The offset is where the record's first line starts in the file, found by its text.
    let first_line = ledger.original.split('\n').next().unwrap();
    let offset = memchr::memmem::find(&file, first_line.as_bytes()).unwrap();
    assert!(offset == 0 || file[offset - 1] == b'\n');
    assert_eq!(ledger.record["offset"], offset);
    assert_eq!(ledger.record["id"], format!("803-1234-abcd-{offset:x}"));

    // The three-line message and the tracebacks stay in their message, blank lines included.
    assert!(template.record["message"].as_str().unwrap().ends_with(
        " mk=fx-8\n    line 12: unknown filter 'money'\n    line 40: undefined variable 'user.tier' tail=fx-8"
    ));
    let chained = chained.record["message"].as_str().unwrap();
    assert!(chained.contains("KeyError: 'transaction_id'\n\nThe above exception was the direct cause of the following exception:\n\nTraceback (most recent call last):\n"));
    assert!(chained.ends_with(
        "\ntasks.LedgerError: 정산 실패 💥 거래 12: 게이트웨이 응답에 transaction_id 없음 tail=fx-12"
    ));
    let unexpected = unexpected.record["message"].as_str().unwrap();
    assert!(unexpected.contains("\nTraceback (most recent call last):\n"));
    assert!(unexpected.contains("\n                 ^^^^^^^^^^^^^^^^^^^^\n"));
    assert!(unexpected.ends_with(
        "\nRuntimeError: upstream inventory-service timed out after 30s (attempt 3/3) mk=fx-6 tail=fx-6"
    ));

    // Korean, emoji and the ~50 KiB lines come through intact.
    let korean = marked(&samples, "fx-2");
    assert_eq!(korean.record["task_id"], TASK_2);
    assert!(
        korean.record["message"]
            .as_str()
            .unwrap()
            .starts_with("알림 전송 완료 🎉✅ 김민수 님께 주문 확인 메시지를 보냈습니다")
    );
    for marker in ["fx-0", "fx-20", "fx-40", "fx-60"] {
        let Sample { record, original } = marked(&samples, marker);
        assert!(original.len() > 50_000 && !original.contains('\n'));
        let (_, after_task) = original.split_once("]: ").unwrap();
        assert_eq!(record["message"].as_str().unwrap(), after_task, "{marker}");
    }
    assert!(
        marked(&samples, "fx-20")
            .original
            .contains("데이터블록00000=값🙂")
    );
}

#[test]
fn celery_format_edge_cases() {
    let (formatter, file) = formatter(Format::Celery);
    let mut stats = Stats::default();
    let mut fields = RecordFields::default();
    let mut format = |data: &[u8], split: bool, part: u32| {
        let event = Event {
            data: data.to_vec(),
            start: 7,
            end: 8,
            lines: 1,
            split,
            part,
        };
        let formatted = formatter.format(event, &file, &mut fields, &mut stats);
        (
            to_json(&formatted),
            formatted.parse_error,
            formatted.lossy_utf8,
        )
    };
    let (record, error, _) = format(b"plain text, no prefix", false, 0);
    assert!(error);
    assert_eq!(
        (record["message"].as_str(), record["parse_error"].as_str()),
        (Some("plain text, no prefix"), Some("no celery prefix"))
    );
    let (record, error, lossy) = format(
        b"[2026-11-22 02:45:34,572: INFO/MainProcess] bad \xff byte \0",
        false,
        0,
    );
    assert!(!error && lossy);
    assert_eq!(record["message"], "bad \u{fffd} byte \0");
    let (record, error, _) = format(b"[2026-02-30 02:45:34,572: INFO/MainProcess] x", false, 0);
    assert!(error);
    assert_eq!(record["parse_error"], "invalid timestamp");
    let (record, _, _) = format(
        b"[2026-11-22 02:45:34,572: INFO/MainProcess] first part",
        true,
        0,
    );
    assert_eq!(
        (record["part"].as_u64(), record["last_part"].as_bool()),
        (Some(0), Some(false))
    );
    let (record, error, _) = format(b"middle of a message", false, 2);
    assert!(!error && !record.contains_key("parse_error"));
    assert_eq!(
        (record["part"].as_u64(), record["last_part"].as_bool()),
        (Some(2), Some(true))
    );
    assert_eq!((stats.celery_unparsed, stats.lossy_utf8), (2, 1));

    let zoned = Formatter::new(
        Format::Celery,
        "+09:00".parse().unwrap(),
        Enrichment::default(),
        &[],
    );
    let event = Event {
        data: b"[2026-11-22 02:45:34,572: INFO/MainProcess] x".to_vec(),
        start: 0,
        end: 1,
        lines: 1,
        split: false,
        part: 0,
    };
    let record = to_json(&zoned.format(event, &file, &mut fields, &mut stats));
    assert_eq!(record["ts"], "2026-11-22T02:45:34.572+09:00");
}

#[test]
fn json_format() {
    let (formatter, file) = formatter(Format::Json);
    let mut stats = Stats::default();
    let mut fields = RecordFields::default();
    let mut format = |data: &[u8]| {
        let event = Event {
            data: data.to_vec(),
            start: 42,
            end: 99,
            lines: 1,
            split: false,
            part: 0,
        };
        formatter.format(event, &file, &mut fields, &mut stats)
    };

    // A valid object keeps its bytes and key order; enrichment is appended; the user's keys win.
    let valid = format(br#"{"z": 1, "host": "mine", "a": {"b": [1, 2]}, "tenant": "acme"}  "#);
    let text = String::from_utf8(valid.payload.clone()).unwrap();
    assert!(
        text.starts_with(r#"{"z": 1, "host": "mine", "a": {"b": [1, 2]}, "tenant": "acme","#),
        "{text}"
    );
    assert_eq!(text.matches("\"host\"").count(), 1);
    let record = to_json(&valid);
    assert_eq!(
        (
            record["host"].as_str(),
            record["pod"].as_str(),
            record["env"].as_str()
        ),
        (Some("mine"), Some("worker-7d9f"), Some("prod"))
    );
    assert_eq!(
        (record["offset"].as_u64(), record["id"].as_str()),
        (Some(42), Some("803-1234-abcd-2a"))
    );
    assert!(!valid.parse_error);

    let empty = to_json(&format(b"{}"));
    assert_eq!(empty["file"], "/var/log/worker.log");

    for (input, reason) in [
        (
            &b"not json"[..],
            "invalid JSON: expected ident at line 1 column 2",
        ),
        (b"[1]", "not a JSON object"),
        (b"\"text\"", "not a JSON object"),
        (
            b"{\"a\": 1} trailing",
            "invalid JSON: trailing characters at line 1 column 10",
        ),
    ] {
        let wrapped = format(input);
        assert!(wrapped.parse_error);
        let record = to_json(&wrapped);
        assert_eq!(record["message"].as_str().unwrap().as_bytes(), input);
        assert_eq!(record["parse_error"], reason);
        assert_eq!(record["host"], "vm");
    }
    // Invalid UTF-8 inside an object: shipped as the object, with U+FFFD, counted as lossy.
    let lossy = format(b"{\"msg\": \"caf\xe9\"}");
    assert!(lossy.lossy_utf8 && !lossy.parse_error);
    assert_eq!(to_json(&lossy)["msg"], "caf\u{fffd}");
    assert_eq!((stats.json_parse_errors, stats.lossy_utf8), (4, 1));

    // `{field.NAME}` reads the record's top-level fields, then the static enrichment.
    let event = Event {
        data: br#"{"tenant": "acme", "task_id": 17}"#.to_vec(),
        start: 0,
        end: 1,
        lines: 1,
        split: false,
        part: 0,
    };
    formatter.format(event, &file, &mut fields, &mut stats);
    let keys = formatter.key_fields(&file, &fields);
    let render = |t: &str| {
        Template::parse(t)
            .unwrap()
            .render(&keys, &mut KeyRng::from_seed(1))
    };
    assert_eq!(
        render("{field.tenant}-{task_id}-{field.env}-{pod}"),
        "acme-17-prod-worker-7d9f"
    );
    assert_eq!(partition_key::Fields::task_name(&keys), None);
}

#[test]
fn raw_format_reports_lossy_utf8() {
    let (formatter, file) = formatter(Format::Raw);
    let mut stats = Stats::default();
    let mut fields = RecordFields::default();
    for (data, want, lossy) in [
        (&b"ok \0 \xea\xb9\x80"[..], "ok \0 김", false),
        (b"bad \xff", "bad \u{fffd}", true),
    ] {
        let event = Event {
            data: data.to_vec(),
            start: 0,
            end: 1,
            lines: 1,
            split: false,
            part: 0,
        };
        let formatted = formatter.format(event, &file, &mut fields, &mut stats);
        assert_eq!(
            (formatted.payload.as_slice(), formatted.lossy_utf8),
            (want.as_bytes(), lossy)
        );
    }
    assert_eq!(stats.lossy_utf8, 1);
}

#[test]
fn flush_timeout_and_deadline() {
    let mut joiner = Joiner::new(JoinerConfig {
        multiline: Multiline::Celery,
        ..JoinerConfig::default()
    });
    let t0 = Instant::now();
    let mut out = Vec::new();
    joiner.push(
        b"[2026-11-22 02:45:34,572: INFO/MainProcess] a",
        0,
        46,
        t0,
        &mut out,
    );
    joiner.push(b"  more", 46, 53, t0 + Duration::from_millis(500), &mut out);
    assert!(out.is_empty());
    assert_eq!(
        joiner.next_deadline(),
        Some(t0 + Duration::from_millis(1500))
    );
    assert_eq!(joiner.poll_timeout(t0 + Duration::from_millis(1499)), None);
    let event = joiner
        .poll_timeout(t0 + Duration::from_millis(1500))
        .unwrap();
    assert_eq!(
        (event.data.as_slice(), event.start, event.end, event.lines),
        (
            &b"[2026-11-22 02:45:34,572: INFO/MainProcess] a\n  more"[..],
            0,
            53,
            2
        )
    );
    assert_eq!(
        (
            joiner.next_deadline(),
            joiner.flush(),
            joiner.stats().flushed_on_timeout
        ),
        (None, None, 1)
    );
    // A continuation after the flush starts a record of its own rather than being lost.
    joiner.push(b"  late", 53, 60, t0, &mut out);
    assert_eq!(joiner.flush().map(|e| (e.start, e.end)), Some((53, 60)));
}

#[test]
fn multiline_parsing() {
    assert_eq!("none".parse::<Multiline>().unwrap(), Multiline::None);
    assert_eq!("python".parse::<Multiline>().unwrap(), Multiline::Python);
    assert_eq!("celery".parse::<Multiline>().unwrap(), Multiline::Celery);
    assert_eq!("^\\d".parse::<Multiline>().unwrap().to_string(), "^\\d");
    let error = "^[unclosed".parse::<Multiline>().unwrap_err().to_string();
    assert!(
        error.starts_with("invalid --multiline start-of-record regex \"^[unclosed\""),
        "{error}"
    );
    assert_eq!("celery".parse::<Format>(), Ok(Format::Celery));
    assert!("xml".parse::<Format>().is_err());
}

/// Checks the joiner's invariants against the input: ranges contiguous and covering every line,
/// each event's data exactly its range's bytes (terminators as `\n`, a record's last one dropped),
/// no event over the cap.
fn assert_covers_input(file: &[u8], lines: &[Line], events: &[Event], cap: usize) {
    let mut expected_start = 0;
    for event in events {
        assert_eq!(event.start, expected_start, "ranges are contiguous");
        assert!(
            event.data.len() <= cap.max(1),
            "event of {} bytes over the cap {cap}",
            event.data.len()
        );
        let mut expected = Vec::new();
        for line in lines {
            let (s, ce, e) = (
                line.start.max(event.start),
                line.content_end.min(event.end),
                line.end.min(event.end),
            );
            if s < ce {
                expected.extend_from_slice(&file[s as usize..ce as usize]);
            }
            // The terminator is in this event: a `\n`, unless it ends the record.
            if line.content_end.max(event.start) < e && (event.split || line.end != event.end) {
                expected.push(b'\n');
            }
        }
        assert_eq!(event.data, expected, "event {}..{}", event.start, event.end);
        expected_start = event.end;
    }
    assert_eq!(
        expected_start,
        lines.last().map_or(0, |l| l.end),
        "every line is covered"
    );
    assert!(
        !events.last().is_some_and(|e| e.split),
        "the last record is complete"
    );
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Step {
    Line(Vec<u8>, bool),
    Quiet,
}

fn line_strategy() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"[2026-11-22 02:45:34,572: INFO/MainProcess] ".to_vec()),
        Just(b"Traceback (most recent call last):".to_vec()),
        Just(b"  ".to_vec()),
        Just("정산 💥".as_bytes().to_vec()),
        Just(b"\xff\x00".to_vec()),
        "[a-z: ]{0,12}".prop_map(String::into_bytes),
    ];
    proptest::collection::vec(piece, 0..5).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn joining_loses_nothing_and_respects_the_cap(
        steps in proptest::collection::vec(
            prop_oneof![8 => (line_strategy(), any::<bool>()).prop_map(|(l, crlf)| Step::Line(l, crlf)), 1 => Just(Step::Quiet)],
            0..40,
        ),
        cap in prop_oneof![1usize..16, 16usize..200, Just(DEFAULT_MAX_RECORD_BYTES)],
        mode in 0..4usize,
        last_terminated in any::<bool>(),
    ) {
        let multiline = match mode {
            0 => Multiline::None,
            1 => Multiline::Python,
            2 => Multiline::Celery,
            _ => "^[a-c]".parse().unwrap(),
        };
        let mut joiner = Joiner::new(JoinerConfig { multiline, max_record_bytes: cap, flush_timeout: Duration::from_secs(1) });
        let (t0, mut now) = (Instant::now(), Duration::ZERO);
        let (mut file, mut lines, mut events) = (Vec::new(), Vec::new(), Vec::new());
        let count = steps.iter().filter(|s| matches!(s, Step::Line(..))).count();
        for step in &steps {
            match step {
                Step::Line(content, crlf) => {
                    let start = file.len() as u64;
                    file.extend_from_slice(content);
                    let content_end = file.len() as u64;
                    // The source never hands over an empty, unterminated last line (no bytes).
                    if lines.len() + 1 < count || last_terminated || content.is_empty() {
                        file.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
                    }
                    let line = Line { start, content_end, end: file.len() as u64 };
                    joiner.push(content, line.start, line.end, t0 + now, &mut events);
                    lines.push(line);
                }
                Step::Quiet => {
                    now += Duration::from_secs(2);
                    events.extend(joiner.poll_timeout(t0 + now));
                }
            }
        }
        events.extend(joiner.flush());
        assert_covers_input(&file, &lines, &events, cap);
        let stats = joiner.stats();
        prop_assert_eq!(stats.records, events.len() as u64);
        prop_assert_eq!(stats.split_parts, events.iter().filter(|e| e.split).count() as u64);
    }
}

#[test]
fn a_buffer_given_back_holds_the_next_record_and_nothing_of_its_past() {
    let mut joiner = Joiner::new(JoinerConfig {
        multiline: Multiline::Python,
        ..JoinerConfig::default()
    });
    let now = Instant::now();
    let mut events = Vec::new();
    let mut old = Vec::with_capacity(256);
    old.extend_from_slice(b"stale bytes of a record already shipped");
    let pointer = old.as_ptr();
    joiner.offer(&mut old);
    assert_eq!(old.capacity(), 0, "taken");
    joiner.push(
        b"Traceback (most recent call last):",
        0,
        35,
        now,
        &mut events,
    );
    // The joiner keeps one buffer in reserve: a second is taken, a third stays with the caller.
    let mut second = Vec::with_capacity(64);
    let second_pointer = second.as_ptr();
    joiner.offer(&mut second);
    assert_eq!(second.capacity(), 0, "taken");
    let mut third = Vec::with_capacity(64);
    joiner.offer(&mut third);
    assert_eq!(third.capacity(), 64, "kept by the caller");
    joiner.push(b"  File \"x.py\", line 1", 35, 57, now, &mut events);
    joiner.push(b"next record", 57, 69, now, &mut events);
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].data,
        b"Traceback (most recent call last):\n  File \"x.py\", line 1"
    );
    assert_eq!(
        events[0].data.as_ptr(),
        pointer,
        "built in the given buffer"
    );
    let next = joiner.flush().unwrap();
    assert_eq!(next.data, b"next record");
    assert_eq!(next.data.as_ptr(), second_pointer);
}
