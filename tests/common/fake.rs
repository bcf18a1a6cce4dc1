//! The in-repo Kinesis endpoint (`fake-kinesis`) as a child process of a test.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use aws_sdk_kinesis::Client;

/// The endpoint process, killed when the test ends however it ends.
pub struct FakeKinesis {
    pub child: Child,
    /// `host:port` it listens on.
    pub addr: String,
}

impl FakeKinesis {
    /// Start it on a free loopback port with extra `args`, and wait for its address line.
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fake-kinesis"))
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn fake-kinesis");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the address line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self { child, addr }
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
