//! The command line and the config file, through the real binary: the example configs validate,
//! mistakes exit 64 and name what is wrong, flags beat `SHIPPER_*` variables beat the file, and
//! the help lists every documented flag. No network: `validate` and the refusals stop before any
//! AWS call.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const EXIT_USAGE: i32 = 64;

/// A backstop for a regression that makes a command run instead of refusing: the process is
/// killed and the test fails, instead of hanging the suite. Not a timing assertion.
const DEADLINE: Duration = Duration::from_secs(60);

/// The flags the README's option table and docs/configuration.md document, with their variable.
const DOCUMENTED_FLAGS: &[(&str, Option<&str>)] = &[
    ("--stream", Some("SHIPPER_STREAM")),
    ("--region", Some("SHIPPER_REGION")),
    ("--endpoint-url", Some("SHIPPER_ENDPOINT_URL")),
    ("--data-dir", Some("SHIPPER_DATA_DIR")),
    ("--read-from", Some("SHIPPER_READ_FROM")),
    ("--format", Some("SHIPPER_FORMAT")),
    ("--multiline", Some("SHIPPER_MULTILINE")),
    ("--partition-key", Some("SHIPPER_PARTITION_KEY")),
    ("--timezone", Some("SHIPPER_TIMEZONE")),
    ("--field", None),
    ("--compress", Some("SHIPPER_COMPRESS")),
    ("--metrics-addr", Some("SHIPPER_METRICS_ADDR")),
    ("--linger", Some("SHIPPER_LINGER")),
    ("--max-batch-records", Some("SHIPPER_MAX_BATCH_RECORDS")),
    ("--max-batch-bytes", Some("SHIPPER_MAX_BATCH_BYTES")),
    ("--max-record-bytes", Some("SHIPPER_MAX_RECORD_BYTES")),
    ("--long-lines", Some("SHIPPER_LONG_LINES")),
    ("--concurrency", Some("SHIPPER_CONCURRENCY")),
    ("--grace-period", Some("SHIPPER_GRACE_PERIOD")),
    ("--stdout", Some("SHIPPER_STDOUT")),
    ("--log-format", Some("SHIPPER_LOG_FORMAT")),
    ("--max-open-files", Some("SHIPPER_MAX_OPEN_FILES")),
    (
        "--max-held-deleted-for",
        Some("SHIPPER_MAX_HELD_DELETED_FOR"),
    ),
    (
        "--max-held-deleted-bytes",
        Some("SHIPPER_MAX_HELD_DELETED_BYTES"),
    ),
    ("--checkpoint-interval", Some("SHIPPER_CHECKPOINT_INTERVAL")),
];

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run the shipper with `args` and only the `SHIPPER_*` variables given in `env`, so settings in
/// the environment of whoever runs the tests cannot leak in.
fn shipper(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shipper"));
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SHIPPER_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    let mut child = command.spawn().expect("start the shipper binary");
    // Read both pipes on their own threads so a chatty process cannot block on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).map(|_| text)
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("shipper {args:?} did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        code: status.code().expect("the shipper exited by a signal"),
        stdout: stdout.join().unwrap().unwrap(),
        stderr: stderr.join().unwrap().unwrap(),
    }
}

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_path("examples"))
        .expect("read examples/")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

/// A config file in a fresh directory; the directory lives as long as the returned guard.
fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shipper.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn validate(path: &Path, flags: &[&str], env: &[(&str, &str)]) -> Output {
    let path = path.to_str().unwrap();
    let mut args = vec!["validate", "--config", path];
    args.extend_from_slice(flags);
    shipper(&args, env)
}

/// The settings `validate` printed, which must be TOML.
fn settings(output: &Output) -> toml::Table {
    assert_eq!(
        output.code, 0,
        "validate failed: {}{}",
        output.stdout, output.stderr
    );
    output
        .stdout
        .parse()
        .unwrap_or_else(|error| panic!("validate printed no TOML ({error}): {}", output.stdout))
}

fn string_at<'a>(table: &'a toml::Table, key: &str) -> &'a str {
    table
        .get(key)
        .and_then(|value| value.as_str())
        .unwrap_or_else(|| panic!("no string {key} in {table}"))
}

fn inputs(table: &toml::Table) -> Vec<&toml::Table> {
    table
        .get("inputs")
        .and_then(|value| value.as_array())
        .unwrap_or_else(|| panic!("no inputs in {table}"))
        .iter()
        .map(|input| input.as_table().unwrap())
        .collect()
}

#[test]
fn every_example_validates_and_prints_its_settings() {
    let files = examples();
    let names: Vec<_> = files
        .iter()
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in ["minimal.toml", "shipper.toml"] {
        assert!(names.iter().any(|name| name == expected), "{names:?}");
    }
    for path in &files {
        let written: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
        assert!(
            !written.contains_key("aggregate"),
            "{}: aggregation is not available in this version",
            path.display()
        );
        let printed = settings(&validate(path, &[], &[]));
        assert_eq!(
            string_at(&printed, "stream"),
            string_at(&written, "stream"),
            "{}",
            path.display()
        );
        let written_inputs = written.get("input").and_then(|v| v.as_array()).unwrap();
        let printed_inputs = inputs(&printed);
        assert_eq!(
            printed_inputs.len(),
            written_inputs.len(),
            "{}",
            path.display()
        );
        for (printed, written) in printed_inputs.iter().zip(written_inputs) {
            assert_eq!(printed.get("paths"), written.get("paths"));
            for key in ["format", "multiline", "partition_key", "read_from"] {
                assert!(printed.contains_key(key), "{}: no {key}", path.display());
            }
        }
        assert!(printed.contains_key("limits"), "{}", path.display());
    }
}

#[test]
fn the_celery_example_has_a_celery_input_a_json_input_and_a_socket() {
    let printed = settings(&validate(&repo_path("examples/shipper.toml"), &[], &[]));
    let inputs = inputs(&printed);
    assert_eq!(inputs.len(), 3, "{printed}");
    assert_eq!(
        string_at(inputs[2], "socket"),
        "unix:///run/shipper/shipper.sock"
    );
    assert_eq!(string_at(inputs[0], "format"), "celery");
    assert_eq!(string_at(inputs[0], "multiline"), "celery");
    assert_eq!(string_at(inputs[1], "format"), "json");
    assert_eq!(string_at(inputs[1], "read_from"), "end");
    assert_eq!(string_at(&printed, "linger"), "200ms");
    assert_eq!(string_at(&printed, "grace_period"), "25s");
    assert_eq!(string_at(&printed, "metrics_addr"), "127.0.0.1:9090");
    let fields = printed.get("fields").and_then(|v| v.as_table()).unwrap();
    assert_eq!(
        fields.get("service").and_then(|v| v.as_str()),
        Some("billing-worker")
    );
}

#[test]
fn an_unknown_key_exits_64_naming_the_key_and_its_line() {
    let cases = [
        (
            "stream = \"s\"\nlingr_ms = 5\n[[input]]\npaths = [\"a.log\"]\n",
            "lingr_ms",
            "line 2",
        ),
        (
            "stream = \"s\"\n\n[[input]]\npaths = [\"a.log\"]\nfromat = \"json\"\n",
            "fromat",
            "line 5",
        ),
    ];
    for (text, key, line) in cases {
        let (_dir, path) = config_file(text);
        let output = validate(&path, &[], &[]);
        assert_eq!(output.code, EXIT_USAGE, "{key}: {}", output.stderr);
        assert!(output.stdout.is_empty(), "{key}: printed {}", output.stdout);
        assert!(
            output.stderr.contains(&format!("unknown field `{key}`")),
            "{key}: {}",
            output.stderr
        );
        assert!(output.stderr.contains(line), "{key}: {}", output.stderr);
    }
}

#[test]
fn a_bad_value_exits_64_naming_the_setting() {
    let input = "[[input]]\npaths = [\"a.log\"]\n";
    let cases = [
        ("format = \"xml\"", "invalid setting format"),
        ("linger_ms = \"soon\"", "linger_ms"),
        ("read_from = \"middle\"", "invalid setting read_from"),
        ("compress = \"lz4\"", "invalid setting compress"),
        ("concurrency = 0", "invalid setting concurrency"),
        ("long_lines = \"wrap\"", "invalid setting long_lines"),
        ("log_format = \"xml\"", "invalid setting log_format"),
        (
            "metrics_addr = \"localhost\"",
            "invalid setting metrics_addr",
        ),
        ("timezone = \"Mars/Olympus\"", "invalid setting timezone"),
        ("max_batch_records = 501", "max_batch_records"),
    ];
    for (line, named) in cases {
        let (_dir, path) = config_file(&format!("stream = \"s\"\n{line}\n{input}"));
        let output = validate(&path, &[], &[]);
        assert_eq!(output.code, EXIT_USAGE, "{line}: {}", output.stderr);
        assert!(
            output.stdout.is_empty(),
            "{line}: printed {}",
            output.stdout
        );
        assert!(output.stderr.contains(named), "{line}: {}", output.stderr);
    }
    // A type mistake is reported by the TOML parser, at its line.
    let (_dir, path) = config_file(&format!("stream = \"s\"\nlinger_ms = \"soon\"\n{input}"));
    let output = validate(&path, &[], &[]);
    assert!(output.stderr.contains("line 2"), "{}", output.stderr);
    // An input's own bad value is refused too.
    let (_dir, path) =
        config_file("stream = \"s\"\n[[input]]\npaths = [\"a.log\"]\nformat = \"xml\"\n");
    let output = validate(&path, &[], &[]);
    assert_eq!(output.code, EXIT_USAGE, "{}", output.stderr);
    assert!(
        output.stderr.contains("invalid setting format"),
        "{}",
        output.stderr
    );
}

#[test]
fn a_missing_or_unreadable_file_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let output = validate(&dir.path().join("absent.toml"), &[], &[]);
    assert_eq!(output.code, EXIT_USAGE, "{}", output.stderr);
    assert!(output.stderr.contains("absent.toml"), "{}", output.stderr);

    let (_dir, path) = config_file("stream = \"s\"\n");
    let output = validate(&path, &[], &[]);
    assert_eq!(output.code, EXIT_USAGE, "{}", output.stderr);
    assert!(output.stderr.contains("input"), "{}", output.stderr);
}

#[test]
fn flags_beat_environment_beat_input_table_beat_file() {
    let (_dir, path) = config_file(
        "stream = \"from-file\"\nformat = \"json\"\n\
         [[input]]\npaths = [\"a.log\"]\n\
         [[input]]\npaths = [\"b.log\"]\nformat = \"celery\"\n",
    );
    let formats = |printed: &toml::Table| -> Vec<String> {
        inputs(printed)
            .iter()
            .map(|input| string_at(input, "format").to_string())
            .collect()
    };

    // The file alone: the input's own table beats the top level.
    let printed = settings(&validate(&path, &[], &[]));
    assert_eq!(string_at(&printed, "stream"), "from-file");
    assert_eq!(formats(&printed), ["json", "celery"]);

    // The environment beats the file, the input tables included.
    let env = [("SHIPPER_STREAM", "from-env"), ("SHIPPER_FORMAT", "raw")];
    let printed = settings(&validate(&path, &[], &env));
    assert_eq!(string_at(&printed, "stream"), "from-env");
    assert_eq!(formats(&printed), ["raw", "raw"]);

    // A flag beats the environment.
    let flags = ["--stream", "from-flag", "--format", "celery"];
    let printed = settings(&validate(&path, &flags, &env));
    assert_eq!(string_at(&printed, "stream"), "from-flag");
    assert_eq!(formats(&printed), ["celery", "celery"]);

    // A bad value in the environment is refused like one in the file.
    let output = validate(&path, &[], &[("SHIPPER_FORMAT", "xml")]);
    assert_eq!(output.code, EXIT_USAGE, "{}", output.stderr);
    assert!(
        output.stderr.contains("invalid setting format"),
        "{}",
        output.stderr
    );
}

#[test]
fn tail_without_a_stream_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let glob = dir.path().join("*.log");
    let data_dir = dir.path().join("data");
    let output = shipper(
        &[
            "tail",
            glob.to_str().unwrap(),
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(output.code, EXIT_USAGE, "{}", output.stderr);
    assert!(output.stderr.contains("stream"), "{}", output.stderr);
    assert!(
        !data_dir.exists(),
        "the data dir was created before the refusal"
    );
}

#[test]
fn an_unknown_flag_exits_64() {
    let output = shipper(&["tail", "a.log", "--stream", "s", "--strem", "x"], &[]);
    assert_eq!(output.code, EXIT_USAGE, "{}", output.stderr);
    assert!(output.stderr.contains("--strem"), "{}", output.stderr);
}

#[test]
fn help_exits_0_and_lists_every_documented_flag() {
    let output = shipper(&["--help"], &[]);
    assert_eq!(output.code, 0, "{}", output.stderr);
    for command in ["tail", "run", "validate"] {
        assert!(
            output.stdout.contains(command),
            "{command}: {}",
            output.stdout
        );
    }

    let output = shipper(&["tail", "--help"], &[]);
    assert_eq!(output.code, 0, "{}", output.stderr);
    for (flag, variable) in DOCUMENTED_FLAGS {
        assert!(
            output.stdout.contains(&format!("{flag} "))
                || output.stdout.contains(&format!("{flag}\n")),
            "tail --help does not mention {flag}:\n{}",
            output.stdout
        );
        if let Some(variable) = variable {
            assert!(
                output.stdout.contains(variable),
                "tail --help does not mention {variable}"
            );
        }
    }

    for command in ["run", "validate"] {
        let output = shipper(&[command, "--help"], &[]);
        assert_eq!(output.code, 0, "{command}: {}", output.stderr);
        assert!(
            output.stdout.contains("--config"),
            "{command}: {}",
            output.stdout
        );
        assert!(
            output.stdout.contains("SHIPPER_CONFIG"),
            "{command}: {}",
            output.stdout
        );
    }
}

/// Every flag `tail --help` lists is described in docs/configuration.md, so a new flag cannot
/// ship undocumented.
#[test]
fn configuration_docs_cover_every_flag() {
    let docs = std::fs::read_to_string(repo_path("docs/configuration.md")).unwrap();
    let output = shipper(&["tail", "--help"], &[]);
    assert_eq!(output.code, 0, "{}", output.stderr);
    let flags: Vec<&str> = output
        .stdout
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == ']')
        .filter(|word| {
            word.starts_with("--")
                && word.len() > 2
                && word[2..]
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '-')
        })
        .collect();
    assert!(flags.len() >= DOCUMENTED_FLAGS.len(), "{flags:?}");
    for flag in flags {
        if flag == "--help" {
            continue;
        }
        assert!(
            docs.contains(&format!("`{flag}")),
            "docs/configuration.md does not describe {flag}"
        );
    }
}
