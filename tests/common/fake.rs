//! The in-repo Kinesis endpoint (`fake-kinesis`, its own crate in the workspace) as a child
//! process of a test.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use aws_sdk_kinesis::Client;

/// The endpoint process, killed when the test ends however it ends.
pub struct FakeKinesis {
    pub child: Child,
    /// `host:port` it listens on.
    pub addr: String,
    /// `host:port` of its TLS listener, when started with `--tls-cert` and `--tls-key`.
    pub tls_addr: Option<String>,
}

impl FakeKinesis {
    /// Start it on a free loopback port with extra `args`, and wait for its address line (and the
    /// TLS listener's, when `args` name a certificate).
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(binary())
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn fake-kinesis");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stdout = BufReader::new(stdout);
        let mut read = |prefix: &str| {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("read an address line");
            line.trim()
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
                .to_owned()
        };
        let addr = read("listening on ");
        let tls_addr = args
            .contains(&"--tls-cert")
            .then(|| read("tls listening on "));
        Self {
            child,
            addr,
            tls_addr,
        }
    }

    /// An SDK client for it, with the SDK's retries off so every injected failure is seen.
    pub fn client(&self) -> Client {
        let credentials =
            aws_sdk_kinesis::config::Credentials::new("test", "test", None, None, "tests");
        let config = aws_sdk_kinesis::config::Builder::new()
            .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
            .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
            .endpoint_url(format!("http://{}", self.addr))
            .credentials_provider(credentials)
            .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled())
            .build();
        Client::from_conf(config)
    }
}

impl Drop for FakeKinesis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `fake-kinesis` binary, built once per test process with the cargo and into the target dir
/// (and profile) of the test itself: it is a workspace member the shipper's tests do not depend on,
/// so cargo does not build it for them.
pub fn binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let shipper = PathBuf::from(env!("CARGO_BIN_EXE_shipper"));
            let profile_dir = shipper.parent().expect("the binary's directory");
            let target_dir = profile_dir.parent().expect("the target directory");
            let mut build = Command::new(option_env!("CARGO").unwrap_or("cargo"));
            build
                .args(["build", "--quiet", "-p", "fake-kinesis", "--target-dir"])
                .arg(target_dir)
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            // The variables cargo set for this test describe the shipper's test build; left in,
            // some build scripts see them change and rebuild their crates for both builds.
            for (name, _) in std::env::vars() {
                if name.starts_with("CARGO_") && name != "CARGO_HOME" && name != "CARGO_TARGET_DIR"
                {
                    build.env_remove(name);
                }
            }
            if profile_dir
                .file_name()
                .is_some_and(|name| name == "release")
            {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo build -p fake-kinesis");
            assert!(status.success(), "cargo build -p fake-kinesis failed");
            profile_dir.join("fake-kinesis")
        })
        .clone()
}

impl FakeKinesis {
    /// `METHOD path` on the admin API (`/stats`, `/faults`, `/records?stream=S`), as JSON.
    pub fn admin(&self, method: &str, path: &str, body: &str) -> serde_json::Value {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.addr).expect("connect to the fake");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: fake\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("send an admin request");
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .expect("read the admin answer");
        let response = String::from_utf8(response).expect("a UTF-8 answer");
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP answer");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
        serde_json::from_str(body).expect("a JSON body")
    }
}
