//! Tests of the socket decoders. Fixtures in `tests/fixtures/socket/` are what Python 3.11's
//! logging handlers put on the wire, captured by `scripts/socket_fixtures.py`.

use proptest::prelude::*;
use serde_json::Value as Json;

use super::framing::{
    DecodeError, Decoded, Framing, HEADROOM, Limits, StreamDecoder, decode_datagram, kind,
};
use super::{pickle, syslog};

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/socket/",
            $name
        ))
    };
}

const SOCKET_HANDLER: &[u8] = fixture!("socket_handler.bin");
const SOCKET_HANDLER_JSONL: &[u8] = fixture!("socket_handler.jsonl");
const DATAGRAM_HANDLER: &[u8] = fixture!("datagram_handler.bin");
const DATAGRAM_HANDLER_JSONL: &[u8] = fixture!("datagram_handler.jsonl");
const PROTOCOLS: &[u8] = fixture!("protocols.bin");
const PROTOCOLS_JSONL: &[u8] = fixture!("protocols.jsonl");
const SYSLOG_HANDLER: &[u8] = fixture!("syslog_handler.bin");
const SYSLOG_HANDLER_JSONL: &[u8] = fixture!("syslog_handler.jsonl");
const MEMO_BOMB: &[u8] = fixture!("memo_bomb.pickle");
const EVIL_GLOBAL: &[u8] = fixture!("evil_global.bin");

const MIB: Limits = Limits {
    max_frame_bytes: 1024 * 1024,
};

type Out = Vec<Result<Decoded, DecodeError>>;

fn jsonl(data: &[u8]) -> Vec<Json> {
    data.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

/// Feeds `data` cut at `cuts` (sorted offsets), then finishes; checks the buffer bound after
/// every call.
fn decode_split(framing: Framing, limits: Limits, data: &[u8], cuts: &[usize]) -> Out {
    let mut decoder = StreamDecoder::new(framing, limits);
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
        let cut = cut.clamp(start, data.len());
        decoder.feed(&data[start..cut], &mut out);
        assert!(decoder.buffered() <= limits.max_frame_bytes.max(1) + HEADROOM);
        start = cut;
    }
    decoder.finish(&mut out);
    assert_eq!(decoder.buffered(), 0);
    out
}

fn decode_whole(framing: Framing, limits: Limits, data: &[u8]) -> Out {
    decode_split(framing, limits, data, &[])
}

/// The JSON, raw bytes and warning of an envelope; panics on anything else.
fn envelope(result: &Result<Decoded, DecodeError>) -> (Json, &[u8], Option<&'static str>) {
    match result {
        Ok(Decoded::Envelope { json, warning }) => {
            assert!(!json.contains(&b'\n'), "raw newline in {json:?}");
            let value = serde_json::from_slice(json)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(json)));
            (value, json.as_slice(), *warning)
        }
        other => panic!("expected an envelope, got {other:?}"),
    }
}

fn kinds(out: &Out) -> Vec<&'static str> {
    out.iter()
        .map(|r| match r {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        })
        .collect()
}

/// Length-prefixed frames of a python stream.
fn frames(mut data: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    while let Some(prefix) = data.first_chunk::<4>() {
        let len = u32::from_be_bytes(*prefix) as usize;
        frames.push(&data[..4 + len]);
        data = &data[4 + len..];
    }
    frames
}

/// Compares an envelope with what Python knew about the record.
fn assert_matches_python(got: &Json, raw: &[u8], expected: &Json) {
    for (key, value) in expected.as_object().unwrap() {
        assert_eq!(
            &got[key],
            value,
            "key {key} of {}",
            String::from_utf8_lossy(raw)
        );
    }
    // Key order of the envelope.
    let order = [
        "ts",
        "level",
        "logger",
        "process",
        "processName",
        "thread",
        "threadName",
        "task_name",
        "task_id",
        "message",
        "exception",
        "stack_info",
        "pathname",
        "lineno",
        "funcName",
    ];
    let text = String::from_utf8_lossy(raw);
    let positions: Vec<usize> = order
        .iter()
        .filter_map(|k| text.find(&format!("\"{k}\":")))
        .collect();
    assert!(positions.is_sorted(), "key order in {text}");
    for dropped in [
        "args",
        "exc_info",
        "msecs",
        "relativeCreated",
        "filename",
        "module",
        "levelno",
        "created",
        "msg",
        "name",
        "levelname",
        "exc_text",
    ] {
        assert!(got.get(dropped).is_none(), "{dropped} in {text}");
    }
}

#[test]
fn socket_handler_records_decode_as_python_knew_them() {
    let expected = jsonl(SOCKET_HANDLER_JSONL);
    let out = decode_whole(Framing::Auto, MIB, SOCKET_HANDLER);
    assert_eq!(out.len(), expected.len());
    for (result, expected) in out.iter().zip(&expected) {
        let (got, raw, _) = envelope(result);
        assert_matches_python(&got, raw, expected);
    }
    let records: Vec<_> = out.iter().map(envelope).collect();

    // Korean and emoji, then the traceback whole.
    assert_eq!(records[0].0["message"], "안녕하세요 세계 🎉 café");
    let exception = records[1].0["exception"].as_str().unwrap();
    assert!(exception.starts_with("Traceback (most recent call last):\n"));
    assert!(exception.ends_with("ZeroDivisionError: division by zero"));
    assert_eq!(records[1].0["message"], "charge failed for order-17");
    assert_eq!(records[2].0["message"], "3 items left");
    assert_eq!(records[3].0["message"].as_str().unwrap().len(), 50 * 1024);
    assert!(records[0].0["thread"].as_u64().unwrap() > 1 << 31);
    assert_eq!(
        records[0].0["task_id"],
        "5f0c7a4e-6d0e-4c53-9f2b-0c1d2e3f4a5b"
    );

    // `extra=` values.
    let (extra, raw, warning) = &records[4];
    assert_eq!(*warning, None);
    let raw = String::from_utf8_lossy(raw);
    assert!(raw.contains("\"big\":1180591620717411303424"), "{raw}");
    assert!(raw.contains("\"neg\":-36893488147419103232"), "{raw}");
    assert_eq!(extra["n"], 1);
    assert_eq!(extra["ok"], true);
    assert_eq!(extra["f"], 1.5);
    assert_eq!(extra["when"], "2026-11-22T02:45:34.572123");
    assert_eq!(extra["b"], "\u{fffd}");
    // The extra `task_id` was replaced by the filter's (a record attribute, not a duplicate).
    assert_eq!(raw.matches("\"task_id\"").count(), 1);

    let (nested, _, warning) = &records[5];
    assert_eq!(*warning, None);
    assert_eq!(
        nested["nested"],
        serde_json::json!({"a": [1, [2, 3]], "none": null, "k": "v"})
    );
    assert_eq!(nested["nan"], "NaN");
    assert_eq!(nested["inf"], "-Infinity");
    assert_eq!(nested["empty"], serde_json::json!([]));
    assert_eq!(nested["amount"], "1.10");
    assert_eq!(nested["uid"], "12345678-1234-5678-1234-567812345678");
    assert_eq!(nested["when_utc"], "2026-01-02T03:04:05+00:00");
    assert_eq!(nested["day"], "2026-11-22");

    let stack = records[6].0["stack_info"].as_str().unwrap();
    assert!(
        stack.starts_with("Stack (most recent call last):\n"),
        "{stack}"
    );
    // The lone surrogate is replaced, and said so.
    assert_eq!(records[7].2, Some(kind::INVALID_UTF8));
    assert_eq!(records[7].0["message"], "lone \u{fffd} surrogate");
}

#[test]
fn socket_handler_stream_split_anywhere_decodes_the_same() {
    let whole = decode_whole(Framing::Python, MIB, SOCKET_HANDLER);
    for step in [1, 3, 4, 5, 1000, 4096, 65536] {
        let cuts: Vec<usize> = (step..SOCKET_HANDLER.len()).step_by(step).collect();
        assert_eq!(
            decode_split(Framing::Python, MIB, SOCKET_HANDLER, &cuts),
            whole,
            "step {step}"
        );
    }
}

#[test]
fn datagram_handler_datagrams_decode() {
    let expected = jsonl(DATAGRAM_HANDLER_JSONL);
    let datagrams = frames(DATAGRAM_HANDLER);
    assert_eq!(datagrams.len(), expected.len());
    for (datagram, expected) in datagrams.iter().zip(&expected) {
        for framing in [Framing::Auto, Framing::Python] {
            let result = decode_datagram(framing, datagram, &MIB);
            let (got, raw, warning) = envelope(&result);
            assert_eq!(warning, None);
            assert_matches_python(&got, raw, expected);
        }
    }
    let result = decode_datagram(Framing::Auto, datagrams[1], &MIB);
    let exception = envelope(&result).0["exception"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(exception.ends_with("KeyError: 'missing'"), "{exception}");
}

#[test]
fn every_pickle_protocol_decodes_to_the_same_envelope() {
    let expected = &jsonl(PROTOCOLS_JSONL)[0];
    let out = decode_whole(Framing::Python, MIB, PROTOCOLS);
    assert_eq!(out.len(), 6);
    let first = envelope(&out[0]);
    for result in &out {
        let (got, raw, warning) = envelope(result);
        assert_eq!(warning, None);
        assert_matches_python(&got, raw, expected);
        assert_eq!(raw, first.1, "protocols differ");
    }
    let got = first.0;
    assert_eq!(got["ok"], false);
    assert_eq!(got["t"], serde_json::json!([1, "two", null]));
    assert_eq!(got["neg"], -5);
    assert_eq!(got["f"], -0.25);
    assert_eq!(got["raw"], "\u{0}\u{1}\u{fffd}");
    assert_eq!(got["s"], serde_json::json!(["x"]));
    assert_eq!(got["when"], "2026-11-22T02:45:34");
    assert!(String::from_utf8_lossy(first.1).contains("\"big\":1267650600228229401496703205376"));
}

#[test]
fn syslog_handler_stream_keeps_tracebacks_whole() {
    let expected = jsonl(SYSLOG_HANDLER_JSONL);
    let whole = decode_whole(Framing::Auto, MIB, SYSLOG_HANDLER);
    assert_eq!(whole.len(), expected.len());
    let levels = ["INFO", "WARNING", "ERROR", "CRITICAL", "DEBUG"];
    for ((result, expected), level) in whole.iter().zip(&expected).zip(levels) {
        let (got, _, warning) = envelope(result);
        assert_eq!(warning, None);
        assert_eq!(got["message"], expected["message"]);
        assert_eq!(got["level"], level);
        assert_eq!(got["facility"], "user");
        assert!(got.get("ts").is_none() && got.get("host").is_none());
    }
    for step in [1, 2, 7, 100] {
        let cuts: Vec<usize> = (step..SYSLOG_HANDLER.len()).step_by(step).collect();
        assert_eq!(
            decode_split(Framing::Syslog, MIB, SYSLOG_HANDLER, &cuts),
            whole
        );
    }
    // The same bytes as datagrams (what SysLogHandler sends over UDP and unix datagram sockets).
    for (datagram, result) in SYSLOG_HANDLER.split_inclusive(|b| *b == 0).zip(&whole) {
        assert_eq!(&decode_datagram(Framing::Auto, datagram, &MIB), result);
    }
}

#[test]
fn memo_bomb_fails_fast_on_the_budget() {
    assert!(MEMO_BOMB.len() < 1024);
    let error = pickle::decode(MEMO_BOMB, &MIB).unwrap_err();
    assert_eq!(error.kind(), kind::PICKLE_BUDGET);
    // The same inside a dict, framed, on a stream.
    let mut pickle = b"}(Vbomb\n".to_vec();
    pickle.extend_from_slice(&MEMO_BOMB[..MEMO_BOMB.len() - 1]);
    pickle.extend_from_slice(b"u.");
    let mut frame = (pickle.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&pickle);
    assert_eq!(
        kinds(&decode_whole(Framing::Auto, MIB, &frame)),
        [kind::PICKLE_BUDGET]
    );
}

#[test]
fn unsupported_globals_ship_as_markers_and_nothing_runs() {
    let result = decode_datagram(Framing::Auto, EVIL_GLOBAL, &MIB);
    let (got, _, warning) = envelope(&result);
    assert_eq!(warning, Some(kind::PICKLE_GLOBAL));
    assert_eq!(got["payload"], "<unsupported global posix.system>");
    assert_eq!(got["message"], "evil");

    // GLOBAL os system + REDUCE, inside a dict and at the top.
    let record = pickle::decode(b"}(Vx\ncos\nsystem\n(Vecho hi\ntRu.", &MIB).unwrap();
    assert_eq!(record.warning, Some(kind::PICKLE_GLOBAL));
    assert_eq!(
        record.fields,
        [(
            pickle::Value::Str("x".into()),
            pickle::Value::Str("<unsupported global os.system>".into())
        )]
    );
    let top = pickle::decode(b"cos\nsystem\n(Vecho hi\ntR.", &MIB).unwrap_err();
    assert_eq!(top.kind(), kind::PICKLE_NOT_DICT);
    // BUILD and NEWOBJ on an unsupported class apply nothing.
    let built = pickle::decode(
        b"\x80\x02}X\x01\x00\x00\x00xcevil\nThing\n)\x81}X\x01\x00\x00\x00aK\x01sbs.",
        &MIB,
    )
    .unwrap();
    assert_eq!(
        built.fields[0].1,
        pickle::Value::Str("<unsupported global evil.Thing>".into())
    );
}

#[test]
fn truncated_pickles_fail_at_every_cut_point() {
    for frame in frames(PROTOCOLS) {
        let pickle = &frame[4..];
        assert!(pickle::decode(pickle, &MIB).is_ok());
        for cut in 0..pickle.len() {
            let error = pickle::decode(&pickle[..cut], &MIB).unwrap_err();
            assert_eq!(error.kind(), kind::PICKLE_TRUNCATED, "cut at {cut}");
        }
    }
}

#[test]
fn a_stream_cut_short_reports_a_partial_frame() {
    let all = frames(SOCKET_HANDLER);
    let ends: Vec<usize> = all
        .iter()
        .scan(0, |end, f| {
            *end += f.len();
            Some(*end)
        })
        .collect();
    for cut in (0..SOCKET_HANDLER.len())
        .step_by(997)
        .chain(ends.iter().map(|e| e - 1))
    {
        let out = decode_whole(Framing::Python, MIB, &SOCKET_HANDLER[..cut]);
        let complete = ends.iter().filter(|&&e| e <= cut).count();
        assert!(out[..complete].iter().all(|r| r.is_ok()));
        let at_boundary = cut == 0 || ends.contains(&cut);
        let tail: Vec<_> = kinds(&out)[complete..].to_vec();
        if at_boundary {
            assert!(tail.is_empty());
        } else {
            assert_eq!(tail, [kind::PARTIAL_FRAME], "cut at {cut}");
        }
    }
}

#[test]
fn oversize_length_prefixes_are_skipped_without_buffering() {
    let limits = Limits {
        max_frame_bytes: 1000,
    };
    let record = frames(DATAGRAM_HANDLER)[0];
    // A frame one byte over the limit, its body, then a good frame: the stream stays in sync.
    let mut data = 1001u32.to_be_bytes().to_vec();
    data.extend(std::iter::repeat_n(b'x', 1001));
    data.extend_from_slice(record);
    for step in [1, 10, 999, 5000] {
        let cuts: Vec<usize> = (step..data.len()).step_by(step).collect();
        let out = decode_split(Framing::Python, limits, &data, &cuts);
        assert_eq!(kinds(&out), [kind::FRAME_TOO_LARGE, "ok"], "step {step}");
    }
    // A 4 GiB prefix: reported once, then everything after it is skipped, never held.
    let mut decoder = StreamDecoder::new(Framing::Auto, MIB);
    let mut out = Vec::new();
    decoder.feed(&[0xff, 0xff, 0xff, 0xff], &mut out);
    let chunk = vec![0u8; 64 * 1024];
    for _ in 0..64 {
        decoder.feed(&chunk, &mut out);
        assert_eq!(decoder.buffered(), 0);
    }
    decoder.finish(&mut out);
    assert_eq!(kinds(&out), [kind::FRAME_TOO_LARGE]);
    let error = decode_datagram(Framing::Auto, &[0xff, 0xff, 0xff, 0xff, 0x80], &MIB);
    assert_eq!(error.unwrap_err().kind(), kind::FRAME_TOO_LARGE);
}

#[test]
fn bad_datagrams_are_errors() {
    let record = frames(DATAGRAM_HANDLER)[0];
    let cases: &[(&[u8], &str)] = &[
        (b"", kind::EMPTY),
        (b"\0\0\0", kind::LENGTH_MISMATCH),
        (b"\0\0\0\0", kind::EMPTY),
        (&record[..record.len() - 1], kind::LENGTH_MISMATCH),
        (b"\0\0\0\x01}", kind::PICKLE_TRUNCATED),
        (b"\0\0\0\x02N.", kind::PICKLE_NOT_DICT),
        (b"\0\0\0\x03}P.", kind::PICKLE_OPCODE),
    ];
    for (datagram, expected) in cases {
        let error = decode_datagram(Framing::Auto, datagram, &MIB).unwrap_err();
        assert_eq!(error.kind(), *expected, "{datagram:?}: {error}");
    }
    let mut long = record.to_vec();
    long.push(0);
    let error = decode_datagram(Framing::Python, &long, &MIB).unwrap_err();
    assert_eq!(error.kind(), kind::LENGTH_MISMATCH);
    assert!(
        error
            .to_string()
            .starts_with("length_mismatch: length prefix says")
    );
    let small = Limits { max_frame_bytes: 4 };
    for framing in [Framing::Syslog, Framing::Lines] {
        let error = decode_datagram(framing, b"<14>hello", &small).unwrap_err();
        assert_eq!(error.kind(), kind::FRAME_TOO_LARGE);
    }
}

#[test]
fn nul_only_and_empty_input() {
    let nuls = [0u8; 12];
    // Auto sees a length prefix: three zero-length frames.
    assert_eq!(
        kinds(&decode_whole(Framing::Auto, MIB, &nuls)),
        [kind::EMPTY; 3]
    );
    assert_eq!(
        kinds(&decode_whole(Framing::Syslog, MIB, &nuls)),
        [kind::EMPTY; 12]
    );
    assert_eq!(
        decode_whole(Framing::Lines, MIB, &nuls),
        [Ok(Decoded::Line(nuls.to_vec()))]
    );
    for framing in [
        Framing::Auto,
        Framing::Python,
        Framing::Syslog,
        Framing::Lines,
    ] {
        assert!(decode_whole(framing, MIB, b"").is_empty());
        assert_eq!(
            decode_datagram(framing, b"", &MIB).unwrap_err().kind(),
            kind::EMPTY
        );
    }
}

#[test]
fn pickle_budgets_and_malformed_input() {
    let deep = [vec![b'('; 100], vec![b'.']].concat();
    let long_int = [b"}(Vn\nL".as_slice(), &[b'7'; 5000], b"L\nu."].concat();
    let long4 = [b"}(Vn\n\x8b".as_slice(), &u32::MAX.to_le_bytes()[..], b"u."].concat();
    let nested = [vec![b']'; 100], vec![b'a'; 99], b".".to_vec()].concat();
    let cases: &[(&[u8], &str)] = &[
        (&deep, kind::PICKLE_BUDGET),
        (&long_int, kind::PICKLE_BUDGET),
        (&long4, kind::PICKLE_INVALID),
        (&nested, kind::PICKLE_BUDGET),
        (b"\x80\x06}.", kind::PICKLE_OPCODE),
        (b"}(Vx\nP1\nu.", kind::PICKLE_OPCODE),
        (b"\x82\x01.", kind::PICKLE_OPCODE),
        (b"h\x05.", kind::PICKLE_INVALID),
        (b"}a.", kind::PICKLE_INVALID),
        (b"}(Nu.", kind::PICKLE_INVALID),
        (b"u.", kind::PICKLE_INVALID),
        (b"0.", kind::PICKLE_INVALID),
        (b"K\x01R.", kind::PICKLE_INVALID),
        (b"", kind::PICKLE_TRUNCATED),
        (b"}", kind::PICKLE_TRUNCATED),
        (b"I12", kind::PICKLE_TRUNCATED),
        (b"X\xff\xff\xff\xff", kind::PICKLE_TRUNCATED),
    ];
    for (pickle, expected) in cases {
        let error = pickle::decode(pickle, &MIB).unwrap_err();
        assert_eq!(error.kind(), *expected, "{pickle:?}: {error}");
    }
    // Output bounded: one 40 KiB string referenced 200 times exceeds 2 × a 64 KiB frame limit.
    let mut shared = b"}(Vs\n(X\x00\xa0\x00\x00".to_vec();
    shared.extend(std::iter::repeat_n(b'a', 40 * 1024));
    shared.extend_from_slice(b"q\x01");
    shared.extend(std::iter::repeat_n(b"h\x01".as_slice(), 199).flatten());
    shared.extend_from_slice(b"lu.");
    let limits = Limits {
        max_frame_bytes: 64 * 1024,
    };
    assert_eq!(
        pickle::decode(&shared, &limits).unwrap_err().kind(),
        kind::PICKLE_BUDGET
    );
    let too_big = pickle::decode(
        &shared,
        &Limits {
            max_frame_bytes: 10,
        },
    )
    .unwrap_err();
    assert_eq!(too_big.kind(), kind::FRAME_TOO_LARGE);
}

#[test]
fn pickle_text_opcodes_and_integers() {
    // Protocol 0 text: INT bools, text LONG, FLOAT, raw-unicode-escape, the memo by text index.
    let pickle = b"(dp0\nVa\np1\nI01\nsVb\nL-123456789012345678901234567890L\nsVc\nF-1.25\nsVd\nV\\u00e9\\U0001f389\\ud800\np2\nsVe\ng2\nsVf\nI00\ns.";
    let record = pickle::decode(pickle, &MIB).unwrap();
    assert_eq!(record.warning, Some(kind::INVALID_UTF8));
    use pickle::Value::*;
    let values: Vec<_> = record.fields.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(
        values,
        [
            Bool(true),
            BigInt("-123456789012345678901234567890".into()),
            Float(-1.25),
            Str("é🎉\u{fffd}".into()),
            Str("é🎉\u{fffd}".into()),
            Bool(false),
        ]
    );
    // LONG1 beyond 128 bits, negative; BININT, BININT2, LONG4.
    let mut big = b"}(Va\n\x8a\x11".to_vec();
    big.extend_from_slice(&[0; 16]);
    big.push(0x80);
    big.extend_from_slice(b"Vb\nJ\xff\xff\xff\xffVc\nM\xff\xffVd\n\x8b\x01\x00\x00\x00\x80u.");
    let record = pickle::decode(&big, &MIB).unwrap();
    let values: Vec<_> = record.fields.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(
        values,
        [
            BigInt("-43556142965880123323311949751266331066368".into()),
            Int(-1),
            Int(65535),
            Int(-128),
        ]
    );
}

#[test]
fn syslog_messages_table() {
    // 2026-01-01: a December message belongs to the year before.
    let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:30:00Z")
        .unwrap()
        .to_utc();
    let cases: &[(&[u8], &str, Option<&str>)] = &[
        (
            b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \xef\xbb\xbf'su root' failed",
            r#"{"ts":"2003-10-11T22:14:15.003+00:00","level":"CRITICAL","facility":"auth","host":"mymachine.example.com","app":"su","msgid":"ID47","message":"'su root' failed"}"#,
            None,
        ),
        (
            br#"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - [ex@32473 iut="3" x="a\]b"][y@1 z="w"] hi there"#,
            r#"{"ts":"2003-08-24T12:14:15.000+00:00","level":"NOTICE","facility":"local4","host":"192.0.2.1","app":"myproc","procid":"8710","structured_data":"[ex@32473 iut=\"3\" x=\"a\\]b\"][y@1 z=\"w\"]","message":"hi there"}"#,
            None,
        ),
        (
            b"<13>1 - - - - - -",
            r#"{"level":"NOTICE","facility":"user","message":""}"#,
            None,
        ),
        (
            b"<38>Dec 31 23:59:58 web1 sshd[4242]: Accepted key\n",
            r#"{"ts":"2025-12-31T23:59:58.000+00:00","level":"INFO","facility":"auth","host":"web1","app":"sshd","procid":"4242","message":"Accepted key"}"#,
            None,
        ),
        (
            b"<13>Jan  1 00:10:00 cron: job ran",
            r#"{"ts":"2026-01-01T00:10:00.000+00:00","level":"NOTICE","facility":"user","app":"cron","message":"job ran"}"#,
            None,
        ),
        (
            b"<86>2026-11-22T02:45:34.572+09:00 host1 app: hi",
            r#"{"ts":"2026-11-21T17:45:34.572+00:00","level":"INFO","facility":"authpriv","host":"host1","app":"app","message":"hi"}"#,
            None,
        ),
        (
            b"<11>worker: ERROR boom\nTraceback (most recent call last):\n  File \"x\"\nValueError: x\x00",
            r#"{"level":"ERROR","facility":"user","message":"worker: ERROR boom\nTraceback (most recent call last):\n  File \"x\"\nValueError: x"}"#,
            None,
        ),
        (
            b"<191>local7 debug",
            r#"{"level":"DEBUG","facility":"local7","message":"local7 debug"}"#,
            None,
        ),
        (
            b"<0>",
            r#"{"level":"EMERGENCY","facility":"kern","message":""}"#,
            None,
        ),
        (
            b"no pri here\r\n",
            r#"{"message":"no pri here"}"#,
            Some(kind::SYSLOG_PRI),
        ),
        (
            b"<192>too big",
            r#"{"message":"<192>too big"}"#,
            Some(kind::SYSLOG_PRI),
        ),
        (
            b"<14>bad \xff byte",
            r#"{"level":"INFO","facility":"user","message":"bad \ufffd byte"}"#,
            Some(kind::INVALID_UTF8),
        ),
    ];
    for (input, expected, expected_warning) in cases {
        let Ok(Decoded::Envelope { json, warning }) = syslog::decode_at(input, now) else {
            panic!("{input:?}");
        };
        let got: Json = serde_json::from_slice(&json).unwrap();
        let want: Json = serde_json::from_str(expected).unwrap();
        assert_eq!(got, want, "{}", String::from_utf8_lossy(input));
        // Same key order as the expectation.
        let keys = |text: &str| {
            let value: serde_json::Map<String, Json> = serde_json::from_str(text).unwrap();
            let mut keys: Vec<(usize, String)> = value
                .keys()
                .map(|k| (text.find(&format!("\"{k}\":")).unwrap(), k.clone()))
                .collect();
            keys.sort();
            keys.into_iter().map(|(_, k)| k).collect::<Vec<_>>()
        };
        assert_eq!(keys(&String::from_utf8_lossy(&json)), keys(expected));
        assert_eq!(warning, *expected_warning);
    }
    assert_eq!(
        syslog::decode_at(b"\0\n", now).unwrap_err().kind(),
        kind::EMPTY
    );
}

fn messages(out: &Out) -> Vec<String> {
    out.iter()
        .map(|r| match r {
            Ok(Decoded::Envelope { json, .. }) => {
                let value: Json = serde_json::from_slice(json).unwrap();
                value["message"].as_str().unwrap().to_string()
            }
            Ok(Decoded::Line(line)) => String::from_utf8_lossy(line).into_owned(),
            Err(e) => format!("error {}", e.kind()),
        })
        .collect()
}

#[test]
fn syslog_stream_framings() {
    let cases: &[(&[u8], &[&str])] = &[
        // Newline-terminated senders.
        (b"<14>a\n<14>b\n", &["a", "b"]),
        (b"<14>a\r\n<14>b", &["a", "b"]),
        // Python's SysLogHandler on a stream: a traceback keeps its newlines.
        (
            b"<11>boom\nTraceback\n  File\n<x\x00<14>next\x00<14>n2\nmore\x00",
            &["boom\nTraceback\n  File\n<x", "next", "n2\nmore"],
        ),
        // Once a connection used `\0`, `\n` never ends a message.
        (b"<14>a\x00<14>b\n<14>c\x00", &["a", "b\n<14>c"]),
        // RFC 6587 octet counting, with and without stray newlines between frames.
        (b"7 <14>a\nb8 <14>hi\0x\n", &["a\nb", "hi\0x"]),
        (b"5 <14>a5 <14>b", &["a", "b"]),
        // Digits that are not a count start a delimited message.
        (b"2026 text\n", &["2026 text"]),
        // NULs between messages are counted as empty.
        (b"<14>a\x00\x00<14>b\x00", &["a", "error empty", "b"]),
        // At the end: a final unterminated message ships; a partial octet frame does not.
        (b"<14>last", &["last"]),
        (b"<14>a\x0010 <14>ab", &["a", "error partial_frame"]),
    ];
    for (input, expected) in cases {
        let whole = decode_whole(Framing::Syslog, MIB, input);
        assert_eq!(
            messages(&whole),
            *expected,
            "{}",
            String::from_utf8_lossy(input)
        );
        for cut in 0..input.len() {
            assert_eq!(decode_split(Framing::Syslog, MIB, input, &[cut]), whole);
        }
    }
    // Too long: reported, skipped to its terminator, and the stream goes on.
    let limits = Limits { max_frame_bytes: 8 };
    let input = b"<14>0123456789\x00<14>ok\x0099 <14>toolong<14>x\x00";
    let out = decode_whole(Framing::Syslog, limits, input);
    assert_eq!(
        messages(&out),
        ["error frame_too_large", "ok", "error frame_too_large"]
    );
    let input = b"<14>0123456789\n<14>ok\n";
    assert_eq!(
        messages(&decode_whole(Framing::Syslog, limits, input)),
        ["error frame_too_large", "ok"]
    );
}

#[test]
fn idle_flush_emits_what_has_no_other_end() {
    let mut out = Vec::new();
    let mut syslog = StreamDecoder::new(Framing::Auto, MIB);
    syslog.feed(b"<14>a\n", &mut out);
    assert!(out.is_empty());
    syslog.flush_idle(&mut out);
    assert_eq!(messages(&out), ["a"]);
    assert_eq!(syslog.framing(), Framing::Syslog);

    // A NUL-terminated connection waits for its `\0`; so does an octet-counted frame.
    out.clear();
    let mut syslog = StreamDecoder::new(Framing::Syslog, MIB);
    syslog.feed(b"<14>a\x00<14>b\n", &mut out);
    syslog.flush_idle(&mut out);
    assert_eq!(messages(&out), ["a"]);
    syslog.feed(b"c\x00", &mut out);
    assert_eq!(messages(&out), ["a", "b\nc"]);
    out.clear();
    let mut counted = StreamDecoder::new(Framing::Syslog, MIB);
    counted.feed(b"7 <14>a", &mut out);
    counted.flush_idle(&mut out);
    assert!(out.is_empty());
    counted.feed(b"bc", &mut out);
    assert_eq!(messages(&out), ["abc"]);

    out.clear();
    let mut lines = StreamDecoder::new(Framing::Auto, MIB);
    lines.feed(b"{\"a\":1}\n{\"b\"", &mut out);
    lines.flush_idle(&mut out);
    lines.feed(b":2}\n", &mut out);
    assert_eq!(messages(&out), ["{\"a\":1}", "{\"b\"", ":2}"]);
    assert_eq!(lines.framing(), Framing::Lines);

    // A python frame is only ever complete or partial.
    out.clear();
    let mut python = StreamDecoder::new(Framing::Auto, MIB);
    python.feed(&SOCKET_HANDLER[..10], &mut out);
    python.flush_idle(&mut out);
    assert!(out.is_empty());
    python.finish(&mut out);
    assert_eq!(kinds(&out), [kind::PARTIAL_FRAME]);
}

#[test]
fn lines_framing() {
    let limits = Limits { max_frame_bytes: 4 };
    let cases: &[(&[u8], &[&str])] = &[
        (b"ab\ncd\r\n\nef", &["ab", "cd", "", "ef"]),
        // Longer than the limit: pieces of exactly the limit; the `\n` right after a piece
        // ends the line rather than making an empty one.
        (b"abcdefghij\n", &["abcd", "efgh", "ij"]),
        (b"abcd\nabcdefgh\r\nx", &["abcd", "abcd", "efgh", "x"]),
        (b"\xff\xfe\n", &["\u{fffd}\u{fffd}"]),
    ];
    for (input, expected) in cases {
        let whole = decode_whole(Framing::Lines, limits, input);
        assert_eq!(
            messages(&whole),
            *expected,
            "{}",
            String::from_utf8_lossy(input)
        );
        for cut in 0..input.len() {
            assert_eq!(decode_split(Framing::Lines, limits, input, &[cut]), whole);
        }
    }
    assert_eq!(
        decode_datagram(Framing::Auto, b"hello\nworld\r\n", &MIB),
        Ok(Decoded::Line(b"hello\nworld".to_vec()))
    );
}

#[test]
fn framing_names() {
    for framing in [
        Framing::Auto,
        Framing::Python,
        Framing::Syslog,
        Framing::Lines,
    ] {
        assert_eq!(framing.to_string().parse::<Framing>(), Ok(framing));
    }
    let error = "json".parse::<Framing>().unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid framing \"json\": expected auto, python, syslog or lines"
    );
    assert_eq!(Framing::Auto.resolve(b'<'), Framing::Syslog);
    assert_eq!(Framing::Auto.resolve(b'{'), Framing::Lines);
    assert_eq!(Framing::Auto.resolve("한".as_bytes()[0]), Framing::Lines);
    assert_eq!(Framing::Auto.resolve(0), Framing::Python);
    assert_eq!(Framing::Auto.resolve(0xff), Framing::Python);
    assert_eq!(Framing::Lines.resolve(0), Framing::Lines);
}

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        Just(Framing::Auto),
        Just(Framing::Python),
        Just(Framing::Syslog),
        Just(Framing::Lines),
    ]
}

/// Sorted cut points within `len`.
fn cuts(len: usize, raw: Vec<usize>) -> Vec<usize> {
    let mut cuts: Vec<usize> = raw.into_iter().map(|c| c % (len + 1)).collect();
    cuts.sort_unstable();
    cuts
}

/// Syslog message text: no `\0`, and no `\n` followed by `<` (which would end it in newline mode).
fn syslog_text() -> impl Strategy<Value = String> {
    "[a-z][a-z <>0-9\n한🎉]{0,40}".prop_map(|s| {
        let s = s.replace("\n<", "\n ");
        s.trim_end_matches(['\n', '\r']).to_string()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_bytes_any_split_never_panic_and_stay_bounded(
        framing in framing(),
        data in proptest::collection::vec(any::<u8>(), 0..3000),
        raw_cuts in proptest::collection::vec(any::<usize>(), 0..20),
        max in 1usize..600,
        idle in any::<bool>(),
    ) {
        let limits = Limits { max_frame_bytes: max };
        let cuts = cuts(data.len(), raw_cuts);
        let mut decoder = StreamDecoder::new(framing, limits);
        let mut out = Vec::new();
        let mut start = 0;
        for &cut in &cuts {
            decoder.feed(&data[start..cut], &mut out);
            prop_assert!(decoder.buffered() <= max + HEADROOM);
            if idle {
                decoder.flush_idle(&mut out);
            }
            start = cut;
        }
        decoder.feed(&data[start..], &mut out);
        prop_assert!(decoder.buffered() <= max + HEADROOM);
        decoder.finish(&mut out);
        for result in &out {
            match result {
                Ok(Decoded::Envelope { json, .. }) => {
                    prop_assert!(!json.contains(&b'\n'));
                    prop_assert!(serde_json::from_slice::<Json>(json).is_ok());
                }
                Ok(Decoded::Line(line)) => prop_assert!(line.len() <= max),
                Err(error) => prop_assert!(!error.kind().is_empty()),
            }
        }
        let _ = decode_datagram(framing, &data, &limits);
    }

    #[test]
    fn pickles_with_damage_never_panic(
        frame_index in 0usize..6,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let mut pickle = frames(PROTOCOLS)[frame_index][4..].to_vec();
        for (at, byte) in flips {
            let at = at % pickle.len();
            pickle[at] = byte;
        }
        if let Ok(record) = pickle::decode(&pickle, &MIB) {
            let json = super::envelope::log_record(&record.fields);
            prop_assert!(serde_json::from_slice::<Json>(&json).is_ok());
        }
    }

    #[test]
    fn python_frames_split_anywhere_decode_the_same(
        raw_cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let data = [PROTOCOLS, SOCKET_HANDLER, DATAGRAM_HANDLER].concat();
        let whole = decode_whole(Framing::Auto, MIB, &data);
        prop_assert_eq!(whole.len(), 6 + 8 + 2);
        let split = decode_split(Framing::Auto, MIB, &data, &cuts(data.len(), raw_cuts));
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn syslog_streams_split_anywhere_decode_the_same(
        texts in proptest::collection::vec(syslog_text(), 1..8),
        style in 0u8..3,
        raw_cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let mut data = Vec::new();
        for text in &texts {
            let message = format!("<14>{text}");
            match style {
                0 => data.extend_from_slice(format!("{message}\0").as_bytes()),
                1 => data.extend_from_slice(format!("{}\n", message.replace('\n', " ")).as_bytes()),
                _ => data.extend_from_slice(format!("{} {message}", message.len()).as_bytes()),
            }
        }
        // `auto` reads a leading digit as text: octet counting needs `framing=syslog`.
        let framing = if style == 2 { Framing::Syslog } else { Framing::Auto };
        let whole = decode_whole(framing, MIB, &data);
        let expected: Vec<String> = texts
            .iter()
            .map(|t| if style == 1 { t.replace('\n', " ").trim_end().to_string() } else { t.clone() })
            .collect();
        let mut got = messages(&whole);
        if style == 1 {
            got.iter_mut().for_each(|m| *m = m.trim_end().to_string());
        }
        prop_assert_eq!(got, expected);
        let split = decode_split(framing, MIB, &data, &cuts(data.len(), raw_cuts));
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn lines_split_anywhere_decode_the_same(
        lines in proptest::collection::vec("[^\n\r]{0,30}", 1..10),
        max in 1usize..40,
        raw_cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let data = lines.iter().map(|l| format!("{l}\n")).collect::<String>().into_bytes();
        let limits = Limits { max_frame_bytes: max };
        let whole = decode_whole(Framing::Lines, limits, &data);
        // Pieces put back together are the lines.
        let mut joined = Vec::new();
        let mut current = Vec::new();
        for result in &whole {
            let Ok(Decoded::Line(piece)) = result else { panic!("{result:?}") };
            prop_assert!(piece.len() <= max);
            current.extend_from_slice(piece);
            if piece.len() < max {
                joined.push(String::from_utf8(std::mem::take(&mut current)).unwrap());
            }
        }
        if !current.is_empty() {
            joined.push(String::from_utf8(current).unwrap());
        }
        let expected: Vec<String> = lines.clone();
        if lines.iter().all(|l| l.len() % max != 0 || l.is_empty()) {
            prop_assert_eq!(joined, expected);
        }
        let split = decode_split(Framing::Lines, limits, &data, &cuts(data.len(), raw_cuts));
        prop_assert_eq!(split, whole);
    }
}

#[test]
fn envelope_rules() {
    use super::envelope::log_record;
    use pickle::Value as V;
    let s = |t: &str| V::Str(t.to_string());
    let fields = vec![
        (s("msg"), s("first")),
        (s("created"), V::Int(0)),
        (s("levelname"), s("INFO")),
        (s("msg"), s("last wins")),
        (s("taskName"), V::None),
        (s("level"), s("an extra named like an envelope key")),
        (V::Int(7), V::Float(f64::NAN)),
        (s("huge"), V::BigInt("9".repeat(400))),
        (s("exc_text"), V::None),
        (s("msecs"), V::Float(1.0)),
    ];
    let json = log_record(&fields);
    assert_eq!(
        String::from_utf8(json).unwrap(),
        format!(
            r#"{{"ts":"1970-01-01T00:00:00.000+00:00","level":"INFO","message":"last wins","extra_level":"an extra named like an envelope key","7":"NaN","huge":"{}"}}"#,
            "9".repeat(400)
        )
    );
    let json = log_record(&[(s("taskName"), s("Task-1")), (s("created"), s("bad"))]);
    assert_eq!(json, br#"{"taskName":"Task-1"}"#);
}

#[test]
fn values_met_twice_through_the_memo_are_whole_both_times() {
    // pickle.dumps({'msg': 'm', 'l1': a, 'l2': a, 'd1': d, 'd2': [d, d]}, 1) with
    // a = ['xxx', 'y'] and d = {'k': 'v'}: the second `a` and both `d`s are memo references.
    let hex = "7d71002858030000006d7367710158010000006d710258020000006c3171035d7104285803000000787878\
               710558010000007971066558020000006c32710768045802000000643171087d710958010000006b710a\
               580100000076710b7358020000006432710c5d710d286809680965752e";
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let limits = Limits {
        max_frame_bytes: 1 << 20,
    };
    let record = pickle::decode(&bytes, &limits).unwrap();
    let json: Json = serde_json::from_slice(&super::envelope::log_record(&record.fields)).unwrap();
    assert_eq!(json["l1"], serde_json::json!(["xxx", "y"]));
    assert_eq!(json["l2"], serde_json::json!(["xxx", "y"]));
    assert_eq!(json["d1"], serde_json::json!({"k": "v"}));
    assert_eq!(json["d2"], serde_json::json!([{"k": "v"}, {"k": "v"}]));
}
