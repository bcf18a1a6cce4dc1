//! `fake-kinesis`: a fast Kinesis-compatible HTTP endpoint on loopback, for benchmarks and
//! fault tests of the shipper.
//!
//! Speaks the awsJson1_1 protocol that aws-sdk-kinesis uses (`POST /` with
//! `X-Amz-Target: Kinesis_20131202.<Operation>`): CreateStream, DeleteStream,
//! DescribeStreamSummary, DescribeStream, ListShards, SplitShard, MergeShards, PutRecords,
//! PutRecord, GetShardIterator, GetRecords; and Firehose's PutRecordBatch (Direct PUT). It counts
//! accepted user records after decompressing and de-aggregating each Kinesis record, can enforce
//! the per-shard write limits (counted in fixed one-second windows or a sliding one, `--window`),
//! and injects per-entry failures, HTTP 500s and latency. Admin endpoints: `GET /stats`,
//! `GET /stats/seconds`, `POST /stats/reset`, `GET|POST /faults`, `GET /records?stream=S`.
//!
//! The first line on stdout is `listening on ADDR`, so a test can bind port 0 and read it. With
//! `--tls-cert` and `--tls-key` the same endpoint is also served over TLS on `--tls-addr`, and the
//! second line is `tls listening on ADDR`.

mod admin;
mod api;
mod cbor;
mod credentials;
mod firehose;
mod payload;
mod put;
mod read;
mod state;
mod stats;
mod tls;
mod window;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use clap::Parser;

use state::{CborMode, Faults, Server, ServerSettings};

/// Default per-record limit, data + partition key (PutRecords API reference: 1 MiB).
const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;
/// Default per-request limit, data + partition keys (PutRecords API reference: 5 MiB).
const DEFAULT_MAX_REQUEST_BYTES: usize = 5 << 20;

#[derive(Debug, Parser)]
#[command(about = "Kinesis-compatible test endpoint with fault injection")]
struct Args {
    /// Address to listen on; port 0 picks a free port (printed on the first line).
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Name of the stream created at start.
    #[arg(long, default_value = "shipper")]
    stream: String,
    /// Shards of that stream, splitting the hash key space evenly.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    shards: u16,
    /// Enforce 1000 records/s and 1 MiB/s per shard; excess entries fail with
    /// ProvisionedThroughputExceededException.
    #[arg(long)]
    shard_limits: bool,
    /// How a shard counts its writes against those limits: in fixed one-second windows, or over
    /// the last second in ten 100 ms slots (stricter for bursty senders).
    #[arg(long, value_enum, default_value_t = window::WindowModel::Fixed)]
    window: window::WindowModel,
    /// Probability that one PutRecords entry fails (throughput exceeded or internal failure).
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    fail_records: f64,
    /// Probability that a whole PutRecords/PutRecord call answers HTTP 500 InternalFailure.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    fail_http: f64,
    /// Delay added before answering every API call.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Serve PutRecords in JSON only, refusing a CBOR body as a JSON-only endpoint does (400
    /// SerializationException, in JSON).
    #[arg(long)]
    no_cbor: bool,
    /// Serve PutRecords in JSON only, and close the connection of a CBOR call without answering
    /// (as an endpoint or proxy that cannot parse the body may do).
    #[arg(long, conflicts_with = "no_cbor")]
    drop_cbor: bool,
    /// Keep accepted records for GetRecords and /records (memory grows with the data).
    #[arg(long)]
    store: bool,
    /// Count user records whose data was seen before (memory grows by ~16 bytes a record).
    #[arg(long)]
    track_duplicates: bool,
    /// Per-record limit, data + partition key (raise to 10 MiB to model a raised stream).
    #[arg(long, default_value_t = DEFAULT_MAX_RECORD_BYTES)]
    max_record_bytes: usize,
    /// Per-request limit, data + partition keys.
    #[arg(long, default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// A Firehose delivery stream created at start (repeatable).
    #[arg(long = "delivery-stream", value_name = "NAME")]
    delivery_streams: Vec<String>,
    /// Probability that one Firehose PutRecordBatch entry fails with ServiceUnavailableException.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    fail_firehose_records: f64,
    /// Probability that a whole PutRecordBatch call answers HTTP 503.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    fail_firehose_http: f64,
    /// Probability that a GetRecords call answers ExpiredIteratorException.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    expire_iterators: f64,
    /// Worker threads (default: one per available core).
    #[arg(long)]
    threads: Option<usize>,
    /// PEM certificate chain: serve the endpoint over TLS too, on --tls-addr.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Address of the TLS listener (printed on the second line).
    #[arg(long, default_value = "127.0.0.1:0")]
    tls_addr: SocketAddr,
}

fn probability(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|error| format!("{error}"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not a probability in 0..=1"))
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("building the runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let server = Arc::new(Server::new(ServerSettings {
        faults: Faults {
            fail_records: args.fail_records,
            fail_http: args.fail_http,
            latency_ms: args.latency_ms,
            shard_limits: args.shard_limits,
            fail_firehose_records: args.fail_firehose_records,
            fail_firehose_http: args.fail_firehose_http,
            expire_iterators: args.expire_iterators,
            other_writer_share: 0.0,
        },
        store: args.store,
        track_duplicates: args.track_duplicates,
        max_record_bytes: args.max_record_bytes,
        max_request_bytes: args.max_request_bytes,
        window: args.window,
        cbor: if args.drop_cbor {
            CborMode::Drop
        } else if args.no_cbor {
            CborMode::Refuse
        } else {
            CborMode::Serve
        },
    }));
    server.create_stream(&args.stream, usize::from(args.shards));
    for name in &args.delivery_streams {
        server.firehose.create(name);
    }

    // Base64 grows data by 4/3; JSON framing and keys add a little more.
    let body_limit = args.max_request_bytes.saturating_mul(2).max(1 << 20);
    let app = Router::new()
        .route("/", post(api::handle))
        .route("/credentials", get(credentials::container))
        .route("/stats", get(admin::stats))
        .route("/stats/seconds", get(admin::seconds))
        .route("/stats/reset", post(admin::reset))
        .route("/faults", get(admin::faults).post(admin::set_faults))
        .route("/records", get(admin::records))
        .route("/firehose", get(admin::firehose_records))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(server);

    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {addr}").context("writing the address")?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let listener = tokio::net::TcpListener::bind(args.tls_addr)
                .await
                .with_context(|| format!("binding {}", args.tls_addr))?;
            let tls_addr = listener.local_addr().context("reading the bound address")?;
            writeln!(stdout, "tls listening on {tls_addr}").context("writing the address")?;
            Some(tls::TlsListener::new(listener, cert, key)?)
        }
        _ => None,
    };
    stdout.flush().context("flushing stdout")?;
    drop(stdout);

    let plain = axum::serve(listener, app.clone()).with_graceful_shutdown(shutdown_signal());
    match tls {
        None => plain.await.context("serving"),
        Some(tls) => {
            let secure = axum::serve(tls, app).with_graceful_shutdown(shutdown_signal());
            tokio::try_join!(plain, secure).context("serving")?;
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(terminate) => terminate,
            Err(_) => return interrupt.await.unwrap_or_default(),
        };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
}
