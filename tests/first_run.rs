//! What a new user sees on a first run, through the real binary: a missing stream names every way
//! to give one, a pattern that matches nothing says so (and says when a file turns up), and an
//! endpoint that cannot be reached says for how long and what waits. No AWS: the first two stop
//! before any call or run as a dry run, the third talks to a closed local port.

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

const EXIT_USAGE: i32 = 64;

/// A backstop for a regression that makes a line never appear: the test fails instead of hanging
/// the suite. Not a timing assertion: the lines come within seconds.
const BACKSTOP: Duration = Duration::from_secs(120);

/// The shipper with no `SHIPPER_*` or `AWS_*` settings from whoever runs the tests.
fn shipper(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shipper"));
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    for (name, _) in std::env::vars_os() {
        let name_text = name.to_string_lossy();
        if name_text.starts_with("SHIPPER_") || name_text.starts_with("AWS_") {
            command.env_remove(name);
        }
    }
    command
}

/// A running shipper whose stdout and stderr arrive line by line.
struct Running {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    seen: Vec<String>,
}

/// Send each line of `stream` to the returned receiver, until EOF.
fn lines_of(stream: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Running {
    fn start(command: &mut Command) -> Running {
        let mut child = command.spawn().expect("start the shipper");
        let stdout = lines_of(child.stdout.take().expect("piped stdout"));
        let stderr = lines_of(child.stderr.take().expect("piped stderr"));
        Running {
            child,
            stdout,
            stderr,
            seen: Vec::new(),
        }
    }

    /// Wait for the next stdout line that is `expected`.
    fn wait_for_stdout(&mut self, expected: &str) {
        loop {
            match self.stdout.recv_timeout(BACKSTOP) {
                Ok(line) if line == expected => return,
                Ok(_) => {}
                Err(error) => panic!("no {expected:?} on stdout ({error})"),
            }
        }
    }

    /// Wait for a new stderr line that contains every one of `parts`, and return it.
    fn wait_for(&mut self, parts: &[&str]) -> String {
        let matches = |line: &str| parts.iter().all(|part| line.contains(part));
        loop {
            match self.stderr.recv_timeout(BACKSTOP) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Err(error) => panic!(
                    "no line with {parts:?} ({error}); stderr so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// SIGTERM, wait for the exit, and return every stderr line.
    fn stop(mut self) -> Vec<String> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        self.child.wait().expect("wait for the shipper");
        // The reader thread ends at EOF, once the process is gone.
        let rest: Vec<String> = self.stderr.iter().collect();
        let mut seen = std::mem::take(&mut self.seen);
        seen.extend(rest);
        seen
    }
}

/// A failed assertion must not leave the shipper running.
impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn a_missing_stream_names_every_way_to_give_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    std::fs::write(&log, "hello\n").unwrap();
    let output = shipper(&["tail", log.to_str().unwrap()])
        .output()
        .expect("run the shipper");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(EXIT_USAGE), "{stderr}");
    for way in [
        "missing setting stream",
        "--stream NAME",
        "SHIPPER_STREAM",
        "config file",
    ] {
        assert!(stderr.contains(way), "{way:?} not in {stderr}");
    }
}

#[test]
fn a_glob_that_matches_nothing_warns_once_and_says_when_a_file_appears() {
    let dir = tempfile::tempdir().unwrap();
    let pattern = format!("{}/*.log", dir.path().display());
    let mut running = Running::start(&mut shipper(&[
        "tail",
        &pattern,
        "--stream",
        "first-run",
        "--stdout",
    ]));
    let warning = running.wait_for(&["WARN", "nothing matches", "keeps looking"]);
    assert!(warning.contains(&format!("pattern={pattern}")), "{warning}");

    // Only now, with the warning out, does a file appear.
    let log = dir.path().join("worker.log");
    std::fs::write(&log, "first line\n").unwrap();
    let found = running.wait_for(&["INFO", "a file matches the pattern"]);
    assert!(found.contains(&format!("pattern={pattern}")), "{found}");
    assert!(
        found.contains(&format!("path={}", log.display())),
        "{found}"
    );
    running.wait_for_stdout("first line");
    // Another file, found by a later rescan: by then the pattern was looked at again, and the
    // warning and the notice are not repeated.
    std::fs::write(dir.path().join("other.log"), "second file\n").unwrap();
    running.wait_for_stdout("second file");

    let lines = running.stop();
    let warnings = lines
        .iter()
        .filter(|line| line.contains("nothing matches"))
        .count();
    assert_eq!(warnings, 1, "{lines:#?}");
    let infos = lines
        .iter()
        .filter(|line| line.contains("a file matches the pattern"))
        .count();
    assert_eq!(infos, 1, "once per pattern: {lines:#?}");
}

/// A local port nothing listens on: bound by the OS, then released.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The first report comes after `FIRST_WARNING_AFTER` (10 s) of failed calls, so this test takes
/// about that long; later reports come at most once a minute, which is not waited for here.
#[test]
fn an_unreachable_endpoint_says_how_long_and_what_waits() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    std::fs::write(&log, "one\ntwo\nthree\n").unwrap();
    let data = dir.path().join("data");
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let mut command = shipper(&[
        "tail",
        log.to_str().unwrap(),
        "--stream",
        "first-run",
        "--endpoint-url",
        &endpoint,
        "--region",
        "us-east-1",
        "--data-dir",
        path_str(&data),
        "--grace-period",
        "1s",
    ]);
    command
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let mut running = Running::start(&mut command);
    let warning = running.wait_for(&["WARN", "kinesis endpoint unreachable for"]);
    // How long (at least 10 s: the backoff decides which failed call is the first after that)
    // and how much: the file's three lines, in one request.
    let (_, after) = warning
        .split_once("unreachable_for=")
        .expect("the duration field");
    let unreachable_for = after.split(' ').next().unwrap();
    let seconds = unreachable_for
        .strip_suffix('s')
        .and_then(|s| s.parse::<u64>().ok());
    assert!(
        seconds.is_some_and(|s| s >= 10) || unreachable_for.ends_with('m'),
        "{warning}"
    );
    assert!(
        warning.contains("3 records waiting to be sent (in 1 batch)"),
        "{warning}"
    );
    assert!(warning.contains("records_waiting=3"), "{warning}");
    assert!(warning.contains("DispatchFailure"), "{warning}");
    running.stop();
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}
