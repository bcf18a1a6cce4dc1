//! moto's server as the DynamoDB endpoint of a test: installed by `localstack/moto.sh` (once per
//! test process), started on a free loopback port, killed when the test ends however it ends.

use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;

pub struct Moto {
    pub child: Child,
    pub endpoint: String,
}

fn moto_server() -> String {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let output = Command::new(super::repo_root().join("localstack/moto.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run localstack/moto.sh");
        assert!(output.status.success(), "localstack/moto.sh failed");
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    })
    .clone()
}

pub use super::free_port;

/// Create a lease table (the KCL's key schema, on-demand) with boto3 from moto's venv, before
/// the replicas start, so each test starts from one known table.
pub fn create_lease_table(endpoint: &str, table: &str) {
    const SCRIPT: &str = r#"
import sys, boto3
client = boto3.client("dynamodb", endpoint_url=sys.argv[1], region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
client.create_table(TableName=sys.argv[2], BillingMode="PAY_PER_REQUEST",
                    KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
                    AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}])
"#;
    let python = std::path::PathBuf::from(moto_server()).with_file_name("python");
    let status = Command::new(python)
        .args(["-c", SCRIPT, endpoint, table])
        .status()
        .expect("run moto's python");
    assert!(status.success(), "create the lease table {table}");
}

/// moto's server, one request at a time. `moto_server` serves requests on threads, and then
/// checks a write's condition and applies the write without a lock: two replicas taking one
/// lease at the same moment could both succeed, which DynamoDB never allows. Served one at a
/// time, every conditional write is atomic, as in DynamoDB.
const SERVE_ONE_AT_A_TIME: &str = r#"
import os, sys
os.environ.setdefault("MOTO_PORT", sys.argv[2])
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
run_simple(sys.argv[1], int(sys.argv[2]), DomainDispatcherApplication(create_backend_app), threaded=False)
"#;

impl Moto {
    pub fn start() -> Moto {
        let python = std::path::PathBuf::from(moto_server()).with_file_name("python");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let port = free_port();
            let mut child = Command::new(&python)
                .args(["-c", SERVE_ONE_AT_A_TIME, "127.0.0.1", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn moto_server");
            let endpoint = format!("http://127.0.0.1:{port}");
            // Ready once it answers HTTP; a port taken in the meantime makes it exit: try another.
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Moto { child, endpoint };
                }
                assert!(Instant::now() < deadline, "moto_server did not start");
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(Instant::now() < deadline, "moto_server did not start");
        }
    }

    pub fn client(&self) -> Client {
        let credentials =
            aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "tests");
        let config = aws_sdk_dynamodb::config::Builder::new()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new(super::REGION))
            .endpoint_url(&self.endpoint)
            .credentials_provider(credentials)
            .build();
        Client::from_conf(config)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One row of a lease table, as the tests read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub key: String,
    pub owner: Option<String>,
    pub counter: u64,
    pub checkpoint: String,
}

/// Every row of `table` (empty while the table does not exist).
pub async fn leases(client: &Client, table: &str) -> Vec<Row> {
    let Ok(output) = client
        .scan()
        .table_name(table)
        .consistent_read(true)
        .send()
        .await
    else {
        return Vec::new();
    };
    let text = |item: &std::collections::HashMap<String, AttributeValue>, name: &str| {
        item.get(name).and_then(|v| v.as_s().ok()).cloned()
    };
    let mut rows: Vec<Row> = output
        .items()
        .iter()
        .map(|item| Row {
            key: text(item, "leaseKey").unwrap_or_default(),
            owner: text(item, "leaseOwner"),
            counter: item
                .get("leaseCounter")
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse().ok())
                .unwrap_or_default(),
            checkpoint: text(item, "checkpoint").unwrap_or_default(),
        })
        .collect();
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    rows
}
