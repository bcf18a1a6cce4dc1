//! Bad input through the real binary in dry-run mode (`--stdout`): each case has a documented
//! outcome, and none stops the shipper.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HUGE: usize = 5 * 1024 * 1024;

#[test]
fn bad_input_is_shipped_or_skipped_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(logs.join("directory.log")).unwrap();
    std::fs::write(logs.join("invalid-utf8.log"), b"bad \xff\xfe bytes\n").unwrap();
    std::fs::write(logs.join("nul.log"), b"nul\0inside\n").unwrap();
    std::fs::write(logs.join("crlf.log"), b"first\r\nsecond\r\n").unwrap();
    std::fs::write(logs.join("empty.log"), b"").unwrap();
    let huge_line: String = (0..HUGE).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    std::fs::write(
        logs.join("huge.log"),
        format!("{huge_line}\nafter the huge line\n"),
    )
    .unwrap();
    let unreadable = logs.join("unreadable.log");
    std::fs::write(&unreadable, b"secret line\n").unwrap();
    std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o000)).unwrap();
    // Root reads files whatever their mode: then the file is simply shipped.
    let root_reads_anything = std::fs::read(&unreadable).is_ok();

    let pattern = format!("{}/*.log", logs.display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_shipper"))
        .args([
            "tail",
            &pattern,
            "--stream",
            "dry",
            "--stdout",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let captured = common::Captured::start(&mut child);

    let expected: [&[u8]; 5] = [
        "bad \u{FFFD}\u{FFFD} bytes\n".as_bytes(),
        b"nul\0inside\n",
        b"first\nsecond\n",
        b"after the huge line\n",
        if root_reads_anything {
            b"secret line\n"
        } else {
            b"after the huge line\n"
        },
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = captured.stdout_so_far();
        if expected
            .iter()
            .all(|e| text.windows(e.len()).any(|w| w == *e))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "missing output; got {} bytes",
            text.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = child.wait().unwrap().code();
    let (text, log) = captured.finish();
    assert_eq!(code, Some(0), "{log}");

    let lines: Vec<&[u8]> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert!(!lines.iter().any(|l| l.ends_with(b"\r")), "CR removed");
    assert!(!text.windows(b"secret".len()).any(|w| w == b"secret") || root_reads_anything);
    // The huge line arrives whole, in parts no larger than a record's data.
    let parts: Vec<&[u8]> = lines
        .iter()
        .copied()
        .filter(|l| l.first().is_some_and(|b| b.is_ascii_lowercase()) && l.len() > 1000)
        .collect();
    assert!(
        parts.len() >= 5,
        "a 5 MiB line needs at least 5 records of 1 MiB"
    );
    assert!(parts.iter().all(|p| p.len() <= 1024 * 1024 - 1024));
    assert_eq!(parts.concat(), huge_line.as_bytes());
    assert!(log.contains("lossy_utf8_total\", 1"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}
