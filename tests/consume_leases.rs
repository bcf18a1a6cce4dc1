//! Several `shipper consume` replicas sharing a stream's shards through a DynamoDB lease table
//! (moto's server), reading Kinesis and forwarding to Firehose through the in-repo endpoint
//! (`fake-kinesis`): settling, `kill -9`, scaling 1 -> 3 -> 1, and a replica paused past the
//! failover time. Every wait polls observable state (the lease table, the replicas' metrics,
//! what Firehose accepted) against a deadline.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use base64::Engine;

use common::Shipper;
use common::fake::FakeKinesis;
use common::moto::{self, Moto, Row};

const DELIVERY: &str = "archive";
const STREAM: &str = "logs";
const TABLE: &str = "logs-leases";
const SHARDS: usize = 8;
/// Short, so the tests run in seconds; renewals go every third of it.
const FAILOVER: Duration = Duration::from_secs(4);
const FAILOVER_FLAG: &str = "4s";

fn line(i: usize) -> String {
    format!("line-{i:06} key=k{} payload for line {i}", i % 64)
}

async fn put_lines(client: &Client, range: std::ops::Range<usize>) {
    let entries = range
        .map(|i| (format!("k{}", i % 64), line(i).into_bytes()))
        .collect();
    common::put_records(client, STREAM, entries).await;
}

/// The lines Firehose accepted, in order.
fn firehose_lines(fake: &FakeKinesis) -> Vec<String> {
    let dump = fake.admin("GET", &format!("/firehose?stream={DELIVERY}"), "");
    let bytes: Vec<u8> = dump["records"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|data| {
            base64::engine::general_purpose::STANDARD
                .decode(data.as_str().unwrap())
                .unwrap()
        })
        .collect();
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Wait until every line `0..n` reached Firehose; returns every line received.
fn wait_delivered(fake: &FakeKinesis, n: usize, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let lines = firehose_lines(fake);
        let distinct: HashSet<&String> = lines.iter().collect();
        if distinct.len() >= n {
            let expected: HashSet<String> = (0..n).map(line).collect();
            let got: HashSet<String> = lines.iter().cloned().collect();
            assert_eq!(got, expected, "exactly the lines put");
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} lines reached Firehose in {timeout:?}",
            distinct.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn duplicates(lines: &[String]) -> usize {
    lines.len() - lines.iter().collect::<HashSet<_>>().len()
}

/// GET /metrics, or `None` while the endpoint is not up.
fn scrape(addr: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

fn metric(text: &str, name: &str) -> u64 {
    common::metric(text, &format!("shipper_consume_{name}"))
}

/// One replica: its process, worker id, metrics address, data dir.
struct Replica {
    id: String,
    shipper: Shipper,
    metrics_addr: String,
    _dir: tempfile::TempDir,
}

impl Replica {
    fn metrics(&self) -> Option<String> {
        scrape(&self.metrics_addr)
    }

    fn get(&self, name: &str) -> u64 {
        let text = self.metrics().expect("the replica serves metrics");
        metric(&text, name)
    }

    /// Leases moved into this replica so far.
    fn moves_in(&self) -> u64 {
        self.get("leases_taken_total")
            + self.get("leases_received_total")
            + self.get("leases_stolen_total")
    }

    fn stop(self) -> Vec<String> {
        self.shipper.signal("TERM");
        let (code, log) = self.shipper.wait(Duration::from_secs(40));
        assert_eq!(code, Some(0), "exit code of {}; log: {log:#?}", self.id);
        log
    }
}

struct Fleet {
    fake: FakeKinesis,
    moto: Moto,
    dynamodb: aws_sdk_dynamodb::Client,
}

impl Fleet {
    /// The endpoints, and the lease table created.
    fn start() -> Fleet {
        let fleet = Fleet::without_table();
        moto::create_lease_table(&fleet.moto.endpoint, TABLE);
        fleet
    }

    fn without_table() -> Fleet {
        let fake = FakeKinesis::start(&[
            "--stream",
            STREAM,
            "--shards",
            &SHARDS.to_string(),
            "--store",
            "--delivery-stream",
            DELIVERY,
        ]);
        let moto = Moto::start();
        let dynamodb = moto.client();
        Fleet {
            fake,
            moto,
            dynamodb,
        }
    }

    /// `shipper consume` on the fleet's stream, endpoint and lease table: the flags every
    /// consumer of these tests shares.
    fn consume_args<'a>(&'a self, endpoint: &'a str, data_dir: &'a str) -> Vec<&'a str> {
        vec![
            "consume",
            "--stream",
            STREAM,
            "--delivery-stream",
            DELIVERY,
            "--endpoint-url",
            endpoint,
            "--firehose-endpoint-url",
            endpoint,
            "--data-dir",
            data_dir,
            "--lease-table",
            TABLE,
            "--dynamodb-endpoint-url",
            &self.moto.endpoint,
        ]
    }

    fn replica(&self, id: &str) -> Replica {
        let endpoint = format!("http://{}", self.fake.addr);
        let dir = tempfile::tempdir().unwrap();
        let metrics_addr = format!("127.0.0.1:{}", moto::free_port());
        let mut args = self.consume_args(&endpoint, dir.path().to_str().unwrap());
        args.extend([
            "--create-lease-table",
            "--worker-id",
            id,
            "--lease-failover",
            FAILOVER_FLAG,
            "--metrics-addr",
            &metrics_addr,
            // Every resent line shows as a duplicate.
            "--dedupe-window",
            "0",
            "--grace-period",
            "20s",
        ]);
        Replica {
            id: id.to_string(),
            shipper: Shipper::start(&args, &[]),
            metrics_addr,
            _dir: dir,
        }
    }

    async fn leases(&self) -> Vec<Row> {
        moto::leases(&self.dynamodb, TABLE).await
    }

    /// Wait until the table has every shard's lease owned, each replica of `replicas` holding
    /// between `low` and `high` (by the table and by its own gauge alike).
    async fn wait_settled(
        &self,
        replicas: &[&Replica],
        low: usize,
        high: usize,
        timeout: Duration,
    ) -> BTreeMap<String, usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let rows = self.leases().await;
            let mut counts: BTreeMap<String, usize> =
                replicas.iter().map(|r| (r.id.clone(), 0)).collect();
            let mut all_owned = rows.len() == SHARDS;
            for row in &rows {
                match &row.owner {
                    Some(owner) => *counts.entry(owner.clone()).or_default() += 1,
                    None => all_owned = false,
                }
            }
            let gauges_agree = replicas.iter().all(|r| {
                r.metrics()
                    .is_some_and(|m| metric(&m, "leases_held") as usize == counts[&r.id])
            });
            let fair =
                counts.len() == replicas.len() && counts.values().all(|c| (low..=high).contains(c));
            if all_owned && fair && gauges_agree {
                return counts;
            }
            assert!(
                Instant::now() < deadline,
                "not settled within {timeout:?}: {counts:?}; table {rows:#?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_share_eight_shards_once_each_and_deliver_everything() {
    let fleet = Fleet::start();
    let kinesis = fleet.fake.client();
    put_lines(&kinesis, 0..2000).await;
    let replicas: Vec<Replica> = ["r0", "r1", "r2"]
        .iter()
        .map(|id| fleet.replica(id))
        .collect();
    let refs: Vec<&Replica> = replicas.iter().collect();
    let counts = fleet
        .wait_settled(&refs, 2, 3, Duration::from_secs(90))
        .await;
    assert_eq!(counts.values().sum::<usize>(), SHARDS);
    put_lines(&kinesis, 2000..4000).await;
    let lines = wait_delivered(&fleet.fake, 4000, Duration::from_secs(90));
    // Fresh leases start at the shards' beginning and move only by handoff: nothing twice.
    assert_eq!(duplicates(&lines), 0);
    let stolen: u64 = replicas.iter().map(|r| r.get("leases_stolen_total")).sum();
    let lost: u64 = replicas.iter().map(|r| r.get("leases_lost_total")).sum();
    assert_eq!((stolen, lost), (0, 0));
    for replica in replicas {
        replica.stop();
    }
    // A graceful stop releases every lease after its final checkpoint.
    let rows = fleet.leases().await;
    assert!(rows.iter().all(|r| r.owner.is_none()), "{rows:#?}");
    assert!(
        rows.iter()
            .all(|r| r.checkpoint.bytes().all(|b| b.is_ascii_digit())),
        "{rows:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_moves_the_dead_replicas_shards_within_the_failover_time_and_loses_nothing() {
    let fleet = Fleet::start();
    let kinesis = fleet.fake.client();
    let mut replicas: Vec<Replica> = ["r0", "r1", "r2"]
        .iter()
        .map(|id| fleet.replica(id))
        .collect();
    let refs: Vec<&Replica> = replicas.iter().collect();
    fleet
        .wait_settled(&refs, 2, 3, Duration::from_secs(90))
        .await;
    put_lines(&kinesis, 0..3000).await;
    wait_delivered(&fleet.fake, 3000, Duration::from_secs(90));
    put_lines(&kinesis, 3000..4000).await;

    let mut victim = replicas.remove(1);
    let held_by_victim: Vec<String> = fleet
        .leases()
        .await
        .into_iter()
        .filter(|r| r.owner.as_deref() == Some(victim.id.as_str()))
        .map(|r| r.key)
        .collect();
    victim.shipper.signal("KILL");
    let killed = Instant::now();
    let _ = victim.shipper.child.wait();
    let deadline = killed + Duration::from_secs(30);
    loop {
        let rows = fleet.leases().await;
        let moved = rows.iter().all(|r| {
            r.owner
                .as_deref()
                .is_some_and(|o| o == replicas[0].id || o == replicas[1].id)
        });
        if moved {
            break;
        }
        assert!(Instant::now() < deadline, "{rows:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settle = killed.elapsed();
    eprintln!(
        "shards of the killed replica ({held_by_victim:?}) taken {settle:?} after kill -9 (failover {FAILOVER:?})"
    );
    // Expiry is judged from a counter that stood still for the failover time, as seen by the
    // survivors' table reads (every half of it): up to one interval passes before a read sees the
    // last counter, and expiry is decided at the first read the failover time after that one,
    // which may fall one interval later. So: the failover time plus two read intervals, plus one
    // more for the table scans and conditional writes of three replicas on a 2-core machine
    // that is running the other lease tests too.
    let bound = FAILOVER + FAILOVER / 2 * 3;
    assert!(settle <= bound, "took {settle:?}, more than {bound:?}");
    let taken: u64 = replicas.iter().map(|r| r.get("leases_taken_total")).sum();
    assert!(taken >= held_by_victim.len() as u64);

    put_lines(&kinesis, 4000..5000).await;
    let lines = wait_delivered(&fleet.fake, 5000, Duration::from_secs(90));
    // Duplicates: at most what the killed replica forwarded past its last checkpoint.
    let dups = duplicates(&lines);
    eprintln!("duplicates after kill -9: {dups}");
    assert!(dups <= 2000, "{dups} duplicates");
    for replica in replicas {
        replica.stop();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_1_3_1_moves_the_fewest_leases_and_sends_nothing_twice() {
    let fleet = Fleet::start();
    let kinesis = fleet.fake.client();
    let r0 = fleet.replica("r0");
    fleet
        .wait_settled(&[&r0], SHARDS, SHARDS, Duration::from_secs(60))
        .await;
    put_lines(&kinesis, 0..2000).await;
    wait_delivered(&fleet.fake, 2000, Duration::from_secs(60));
    assert_eq!(r0.moves_in(), SHARDS as u64);

    // 1 -> 3, while records flow.
    let r1 = fleet.replica("r1");
    let r2 = fleet.replica("r2");
    put_lines(&kinesis, 2000..4000).await;
    let counts = fleet
        .wait_settled(&[&r0, &r1, &r2], 2, 3, Duration::from_secs(90))
        .await;
    let to_newcomers = (counts["r1"] + counts["r2"]) as u64;
    // The newcomers' leases left r0 once each, by handoff, and none came back. Between the
    // newcomers one more move can happen when the second one starts after the first took its
    // share of a smaller fleet: close to the minimum, no storm.
    assert_eq!(r0.moves_in(), SHARDS as u64);
    assert_eq!(r0.get("leases_handed_off_total"), to_newcomers);
    let newcomer_moves = r1.moves_in() + r2.moves_in();
    assert!(
        (to_newcomers..=to_newcomers + 2).contains(&newcomer_moves),
        "{newcomer_moves} moves for {to_newcomers} leases"
    );
    // Settled means settled: a few more balancing rounds move nothing.
    let before: u64 = r0.moves_in() + r1.moves_in() + r2.moves_in();
    let watch_until = Instant::now() + FAILOVER * 2;
    while Instant::now() < watch_until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now: u64 = r0.moves_in() + r1.moves_in() + r2.moves_in();
        assert_eq!(now, before, "a lease moved after the replicas settled");
    }
    wait_delivered(&fleet.fake, 4000, Duration::from_secs(60));

    // 3 -> 1: graceful stops release; r0 takes each lease once.
    r1.stop();
    r2.stop();
    fleet
        .wait_settled(&[&r0], SHARDS, SHARDS, Duration::from_secs(60))
        .await;
    assert_eq!(r0.moves_in(), SHARDS as u64 + to_newcomers);
    put_lines(&kinesis, 4000..6000).await;
    let lines = wait_delivered(&fleet.fake, 6000, Duration::from_secs(60));
    assert_eq!(duplicates(&lines), 0, "planned moves send nothing twice");
    assert_eq!(
        r0.get("leases_stolen_total") + r0.get("leases_lost_total"),
        0
    );
    r0.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_paused_past_the_failover_time_notices_and_moves_no_checkpoint() {
    let fleet = Fleet::start();
    let kinesis = fleet.fake.client();
    let r0 = fleet.replica("r0");
    let mut r1 = fleet.replica("r1");
    fleet
        .wait_settled(&[&r0, &r1], 4, 4, Duration::from_secs(90))
        .await;
    put_lines(&kinesis, 0..2000).await;
    wait_delivered(&fleet.fake, 2000, Duration::from_secs(60));
    let lost_before = r1.get("leases_lost_total");

    r1.shipper.signal("STOP");
    put_lines(&kinesis, 2000..4000).await;
    // r0 takes every lease once r1's counters stood still for the failover time.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = fleet.leases().await;
        if rows.iter().all(|r| r.owner.as_deref() == Some("r0")) {
            break;
        }
        assert!(Instant::now() < deadline, "{rows:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_delivered(&fleet.fake, 4000, Duration::from_secs(60));
    let table_before_resume = fleet.leases().await;

    r1.shipper.signal("CONT");
    // It notices on its own clock, for each of its 4 leases, before writing anything.
    r1.shipper
        .wait_log_count("lease not renewed in time", 4, Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(10);
    while r1.get("leases_lost_total") < lost_before + 4 {
        assert!(
            Instant::now() < deadline,
            "r1 did not count its lost leases"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // r1 wrote nothing for the leases it lost: no checkpoint went back to where r1 had it.
    let table_after = fleet.leases().await;
    for (before, after) in table_before_resume.iter().zip(&table_after) {
        assert_eq!(before.key, after.key);
        assert!(after.counter >= before.counter, "{before:?} -> {after:?}");
        assert!(
            sequence_order(&after.checkpoint, &before.checkpoint).is_ge(),
            "checkpoint moved back: {before:?} -> {after:?}"
        );
    }
    let noticed = r1
        .shipper
        .log
        .iter()
        .position(|l| l.contains("lease not renewed in time"))
        .unwrap();
    assert!(
        !r1.shipper.log[noticed..]
            .iter()
            .any(|l| l.contains("lease handed over") || l.contains("lease released")),
        "r1 wrote to a lease it had lost"
    );
    // It rejoins: the fleet settles again, and nothing is lost.
    fleet
        .wait_settled(&[&r0, &r1], 4, 4, Duration::from_secs(90))
        .await;
    put_lines(&kinesis, 4000..5000).await;
    wait_delivered(&fleet.fake, 5000, Duration::from_secs(60));
    r1.stop();
    r0.stop();
}

/// Order two checkpoints (decimal sequence numbers of any length).
fn sequence_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_lease_table_is_a_clear_error_without_create_lease_table() {
    let fleet = Fleet::without_table();
    let endpoint = format!("http://{}", fleet.fake.addr);
    let dir = tempfile::tempdir().unwrap();
    let consumer = Shipper::start(
        &fleet.consume_args(&endpoint, dir.path().to_str().unwrap()),
        &[],
    );
    let (code, log) = consumer.wait(Duration::from_secs(60));
    assert_eq!(code, Some(64), "{log:#?}");
    assert!(
        log.iter().any(|l| l.contains(&format!(
            "lease table {TABLE} does not exist (create it, or pass --create-lease-table)"
        ))),
        "{log:#?}"
    );
    assert!(fleet.leases().await.is_empty());
}
