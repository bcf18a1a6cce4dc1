//! Binding a `--socket` and reading it without pause: every frame is decoded and appended to the
//! spool as it arrives, whatever the pipeline behind the spool is doing.

use std::fs;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net as std_unix;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, UdpSocket, UnixDatagram, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use super::framing::{self, DecodeError, Decoded, Framing, StreamDecoder};
use super::metrics::{SocketMetrics, Throttled};
use super::url::{Endpoint, SocketUrl};
use crate::parse::multiline::{Joiner, JoinerConfig, Multiline};
use crate::spool::{Kind, Spool};

/// Bytes read from a stream connection at a time.
const READ_BYTES: usize = 32 * 1024;
/// A connection quiet this long hands over a line it holds without its terminator.
const IDLE_FLUSH: Duration = Duration::from_millis(200);
/// Datagrams taken in one go (one spool write) when several are waiting.
const DATAGRAM_BATCH: usize = 256;
static DECODE_LOG: Throttled = Throttled::new(Duration::from_secs(10));
static SPOOL_FULL_LOG: Throttled = Throttled::new(Duration::from_secs(10));

/// How one socket's frames become spool entries.
pub struct Settings {
    pub url: SocketUrl,
    /// File mode of a socket created at a path.
    pub mode: u32,
    pub max_connections: usize,
    /// Most bytes in one frame (`--max-record-bytes`).
    pub max_frame_bytes: usize,
    /// Joining for the `lines` framing, per connection.
    pub joiner: JoinerConfig,
}

/// A bound socket, before it is served.
pub enum Bound {
    Stream(StreamListener, Option<OwnedPath>),
    Datagram(DatagramSocket, Option<OwnedPath>),
}

pub enum StreamListener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

pub enum DatagramSocket {
    Unix(UnixDatagram),
    Udp(UdpSocket),
}

/// A socket file this process created: removed at stop while it is still the same file.
pub struct OwnedPath {
    path: PathBuf,
    ino: u64,
}

impl Drop for OwnedPath {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.ino() == self.ino => {
                if let Err(error) = fs::remove_file(&self.path) {
                    warn!(path = %self.path.display(), %error, "cannot remove the socket file");
                }
            }
            // Replaced by someone else since, or already gone: not ours to remove.
            _ => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("socket {url}: {path} is in use by another process (a connect to it succeeded)")]
    InUse { url: String, path: PathBuf },
    #[error("socket {url}: {path} exists and is not a socket; remove it or choose another path")]
    NotASocket { url: String, path: PathBuf },
    #[error("socket {url}: cannot listen: {source}")]
    Io { url: String, source: io::Error },
}

/// Bind the socket. A socket file left at the path by a process that is gone is replaced; one
/// with a live listener, or a file that is not a socket, is an error.
pub fn bind(settings: &Settings) -> Result<Bound, BindError> {
    let url = &settings.url;
    let io_error = |source: io::Error| BindError::Io {
        url: url.text.clone(),
        source,
    };
    match &url.endpoint {
        Endpoint::Unix(path) => {
            clear_stale(url, path, false)?;
            let listener = std_unix::UnixListener::bind(path).map_err(io_error)?;
            let owned = own(path, settings.mode).map_err(io_error)?;
            listener.set_nonblocking(true).map_err(io_error)?;
            let listener = UnixListener::from_std(listener).map_err(io_error)?;
            Ok(Bound::Stream(StreamListener::Unix(listener), Some(owned)))
        }
        Endpoint::UnixAbstract(name) => {
            let addr = std_unix::SocketAddr::from_abstract_name(name).map_err(io_error)?;
            let listener = std_unix::UnixListener::bind_addr(&addr).map_err(io_error)?;
            listener.set_nonblocking(true).map_err(io_error)?;
            let listener = UnixListener::from_std(listener).map_err(io_error)?;
            Ok(Bound::Stream(StreamListener::Unix(listener), None))
        }
        Endpoint::Unixgram(path) => {
            clear_stale(url, path, true)?;
            let socket = std_unix::UnixDatagram::bind(path).map_err(io_error)?;
            let owned = own(path, settings.mode).map_err(io_error)?;
            socket.set_nonblocking(true).map_err(io_error)?;
            let socket = UnixDatagram::from_std(socket).map_err(io_error)?;
            Ok(Bound::Datagram(DatagramSocket::Unix(socket), Some(owned)))
        }
        Endpoint::UnixgramAbstract(name) => {
            let addr = std_unix::SocketAddr::from_abstract_name(name).map_err(io_error)?;
            let socket = std_unix::UnixDatagram::bind_addr(&addr).map_err(io_error)?;
            socket.set_nonblocking(true).map_err(io_error)?;
            let socket = UnixDatagram::from_std(socket).map_err(io_error)?;
            Ok(Bound::Datagram(DatagramSocket::Unix(socket), None))
        }
        Endpoint::Tcp(addr) => {
            let listener = std::net::TcpListener::bind(addr).map_err(io_error)?;
            listener.set_nonblocking(true).map_err(io_error)?;
            let listener = TcpListener::from_std(listener).map_err(io_error)?;
            Ok(Bound::Stream(StreamListener::Tcp(listener), None))
        }
        Endpoint::Udp(addr) => {
            let socket = std::net::UdpSocket::bind(addr).map_err(io_error)?;
            socket.set_nonblocking(true).map_err(io_error)?;
            let socket = UdpSocket::from_std(socket).map_err(io_error)?;
            Ok(Bound::Datagram(DatagramSocket::Udp(socket), None))
        }
    }
}

/// Remove a socket file nobody listens on (a connect is refused); refuse anything else.
fn clear_stale(url: &SocketUrl, path: &Path, datagram: bool) -> Result<(), BindError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(|source| BindError::Io {
                    url: url.text.clone(),
                    source,
                })?;
            }
            return Ok(());
        }
        Err(source) => {
            return Err(BindError::Io {
                url: url.text.clone(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket {
            url: url.text.clone(),
            path: path.to_path_buf(),
        });
    }
    let probe = if datagram {
        std_unix::UnixDatagram::unbound().and_then(|s| s.connect(path))
    } else {
        std_unix::UnixStream::connect(path).map(drop)
    };
    match probe {
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
            info!(path = %path.display(), "replacing a stale socket file");
            fs::remove_file(path).map_err(|source| BindError::Io {
                url: url.text.clone(),
                source,
            })
        }
        _ => Err(BindError::InUse {
            url: url.text.clone(),
            path: path.to_path_buf(),
        }),
    }
}

fn own(path: &Path, mode: u32) -> io::Result<OwnedPath> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(OwnedPath {
        path: path.to_path_buf(),
        ino: fs::symlink_metadata(path)?.ino(),
    })
}

/// What every connection of one socket shares.
pub struct Context {
    pub spool: Spool,
    pub metrics: Arc<SocketMetrics>,
    pub framing: Framing,
    pub max_frame_bytes: usize,
    pub joiner: JoinerConfig,
}

impl Context {
    pub fn new(spool: Spool, metrics: Arc<SocketMetrics>, settings: &Settings) -> Context {
        Context {
            spool,
            metrics,
            framing: settings.url.framing,
            max_frame_bytes: settings.max_frame_bytes,
            joiner: settings.joiner.clone(),
        }
    }

    fn limits(&self) -> framing::Limits {
        framing::Limits {
            max_frame_bytes: self.max_frame_bytes,
        }
    }

    /// Count a frame that could not be decoded.
    fn rejected(&self, error: &DecodeError) {
        self.metrics.decode_error(error.kind());
        if let Some(held) = DECODE_LOG.check() {
            warn!(socket = %self.metrics.url, kind = error.kind(), %error, similar_held_back = held, "dropped a frame that could not be decoded");
        }
    }

    /// Append decoded records to the spool, counting what it refuses.
    fn spool(&self, records: &[(Kind, Vec<u8>)]) {
        if records.is_empty() {
            return;
        }
        let wanted = records.len() as u64;
        match self
            .spool
            .append(records.iter().map(|(kind, data)| (*kind, data.as_slice())))
        {
            Ok(appended) => {
                SocketMetrics::add(&self.metrics.records_total, appended.entries);
                if appended.dropped > 0 {
                    self.dropped(appended.dropped, appended.dropped_bytes, None);
                }
            }
            Err(error) => {
                let bytes = records.iter().map(|(_, d)| d.len() as u64).sum();
                self.dropped(wanted, bytes, Some(error));
            }
        }
    }

    fn dropped(&self, records: u64, bytes: u64, error: Option<io::Error>) {
        SocketMetrics::add(&self.metrics.spool_dropped_total, records);
        SocketMetrics::add(&self.metrics.spool_dropped_bytes_total, bytes);
        if let Some(held) = SPOOL_FULL_LOG.check() {
            match error {
                None => {
                    error!(socket = %self.metrics.url, records, bytes, similar_held_back = held, "spool full (--spool-max-bytes): dropped received records")
                }
                Some(error) => {
                    error!(socket = %self.metrics.url, records, bytes, %error, similar_held_back = held, "cannot write to the spool: dropped received records")
                }
            }
        }
    }
}

/// Turns one sender's decoded frames into spool entries (joining lines when asked).
struct Framer {
    joiner: Option<Joiner>,
    offset: u64,
    events: Vec<crate::parse::multiline::Event>,
}

impl Framer {
    fn new(config: &JoinerConfig, stream: bool) -> Framer {
        let joins = stream && config.multiline != Multiline::None;
        Framer {
            joiner: joins.then(|| Joiner::new(config.clone())),
            offset: 0,
            events: Vec::new(),
        }
    }

    fn take(
        &mut self,
        context: &Context,
        decoded: Vec<Result<Decoded, DecodeError>>,
        out: &mut Vec<(Kind, Vec<u8>)>,
    ) {
        for item in decoded {
            match item {
                Ok(Decoded::Envelope { json, warning }) => {
                    if let Some(kind) = warning {
                        context.metrics.decode_warning(kind);
                    }
                    out.push((Kind::Envelope, json));
                }
                Ok(Decoded::Line(line)) => match &mut self.joiner {
                    None => out.push((Kind::Text, line)),
                    Some(joiner) => {
                        let start = self.offset;
                        self.offset += line.len() as u64 + 1;
                        joiner.push(&line, start, self.offset, Instant::now(), &mut self.events);
                        out.extend(self.events.drain(..).map(|e| (Kind::Text, e.data)));
                    }
                },
                Err(error) => context.rejected(&error),
            }
        }
    }

    /// Records whose joining window has passed; `end` hands over everything held.
    fn flush(&mut self, end: bool, out: &mut Vec<(Kind, Vec<u8>)>) {
        if let Some(joiner) = &mut self.joiner {
            let event = if end {
                joiner.flush()
            } else {
                joiner.poll_timeout(Instant::now())
            };
            out.extend(event.map(|e| (Kind::Text, e.data)));
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.joiner.as_ref().and_then(Joiner::next_deadline)
    }
}

/// Serve a bound socket until `stop`: accept and read connections, or receive datagrams.
pub async fn serve(
    bound: Bound,
    context: Arc<Context>,
    max_connections: usize,
    stop: CancellationToken,
) {
    match bound {
        Bound::Stream(listener, owned) => {
            serve_stream(listener, context, max_connections, stop).await;
            drop(owned);
        }
        Bound::Datagram(socket, owned) => {
            serve_datagrams(socket, context, stop).await;
            drop(owned);
        }
    }
}

async fn serve_stream(
    listener: StreamListener,
    context: Arc<Context>,
    max_connections: usize,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let connections = TaskTracker::new();
    loop {
        let accepted: io::Result<Box<dyn ConnectionRead>> = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = accept(&listener) => accepted,
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(error) => {
                // Out of descriptors or memory: wait a moment rather than spin.
                warn!(socket = %context.metrics.url, %error, "accept failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        SocketMetrics::add(&context.metrics.connections_total, 1);
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            SocketMetrics::add(&context.metrics.connections_refused_total, 1);
            if let Some(held) = DECODE_LOG.check() {
                warn!(socket = %context.metrics.url, max_connections, similar_held_back = held, "too many connections (--socket-max-connections): closed a new one");
            }
            drop(stream);
            continue;
        };
        let context = Arc::clone(&context);
        let stop = stop.clone();
        connections.spawn(async move {
            SocketMetrics::add(&context.metrics.connections_active, 1);
            read_connection(stream, &context, stop).await;
            context
                .metrics
                .connections_active
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            drop(permit);
        });
    }
    connections.close();
    connections.wait().await;
}

/// A stream connection, read as bytes.
trait ConnectionRead: tokio::io::AsyncRead + Unpin + Send {}
impl<T: tokio::io::AsyncRead + Unpin + Send> ConnectionRead for T {}

async fn accept(listener: &StreamListener) -> io::Result<Box<dyn ConnectionRead>> {
    Ok(match listener {
        StreamListener::Unix(listener) => Box::new(listener.accept().await?.0),
        StreamListener::Tcp(listener) => {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            Box::new(stream)
        }
    })
}

async fn read_connection(
    mut stream: Box<dyn ConnectionRead>,
    context: &Context,
    stop: CancellationToken,
) {
    let mut decoder = StreamDecoder::new(context.framing, context.limits());
    let mut framer = Framer::new(&context.joiner, true);
    let mut buf = vec![0u8; READ_BYTES];
    let mut decoded = Vec::new();
    let mut records = Vec::new();
    loop {
        // A connection that holds nothing back sleeps until it is readable: idle senders (a
        // prefork pool's children) cost no wake-ups.
        let holds = decoder.buffered() > 0 || framer.next_deadline().is_some();
        let wake = framer.next_deadline().map_or(IDLE_FLUSH, |at| {
            at.saturating_duration_since(Instant::now()).min(IDLE_FLUSH)
        });
        let read = tokio::select! {
            _ = stop.cancelled() => break,
            read = async {
                if holds {
                    tokio::time::timeout(wake, stream.read(&mut buf)).await
                } else {
                    Ok(stream.read(&mut buf).await)
                }
            } => read,
        };
        match read {
            Err(_quiet) => {
                decoder.flush_idle(&mut decoded);
                framer.take(context, std::mem::take(&mut decoded), &mut records);
                framer.flush(false, &mut records);
            }
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                SocketMetrics::add(&context.metrics.bytes_total, n as u64);
                decoder.feed(&buf[..n], &mut decoded);
                framer.take(context, std::mem::take(&mut decoded), &mut records);
            }
            Ok(Err(error)) => {
                debug!(socket = %context.metrics.url, %error, "connection read failed");
                break;
            }
        }
        context.spool(&records);
        records.clear();
    }
    decoder.finish(&mut decoded);
    framer.take(context, decoded, &mut records);
    framer.flush(true, &mut records);
    context.spool(&records);
}

async fn serve_datagrams(socket: DatagramSocket, context: Arc<Context>, stop: CancellationToken) {
    // One byte more than the largest frame: a datagram that fills the buffer was cut by the
    // kernel, so it is known to be over the limit and is dropped whole, never shipped truncated.
    let mut buf = vec![0u8; context.max_frame_bytes + 5];
    let limits = context.limits();
    let mut framer = Framer::new(&context.joiner, false);
    let mut records = Vec::new();
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => break,
            received = recv(&socket, &mut buf) => received,
        };
        let mut received = Some(first);
        let mut taken = 0;
        while let Some(result) = received.take() {
            match result {
                Ok(n) if n >= buf.len() => {
                    SocketMetrics::add(&context.metrics.oversize_total, 1);
                    SocketMetrics::add(&context.metrics.bytes_total, n as u64);
                    if let Some(held) = DECODE_LOG.check() {
                        warn!(socket = %context.metrics.url, max_record_bytes = context.max_frame_bytes, similar_held_back = held, "dropped a datagram over the record limit");
                    }
                }
                Ok(n) => {
                    SocketMetrics::add(&context.metrics.bytes_total, n as u64);
                    let decoded = framing::decode_datagram(context.framing, &buf[..n], &limits);
                    framer.take(&context, vec![decoded], &mut records);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    warn!(socket = %context.metrics.url, %error, "receive failed");
                    break;
                }
            }
            taken += 1;
            if taken < DATAGRAM_BATCH {
                received = Some(try_recv(&socket, &mut buf));
            }
        }
        context.spool(&records);
        records.clear();
    }
}

async fn recv(socket: &DatagramSocket, buf: &mut [u8]) -> io::Result<usize> {
    match socket {
        DatagramSocket::Unix(socket) => socket.recv(buf).await,
        DatagramSocket::Udp(socket) => socket.recv(buf).await,
    }
}

fn try_recv(socket: &DatagramSocket, buf: &mut [u8]) -> io::Result<usize> {
    match socket {
        DatagramSocket::Unix(socket) => socket.try_recv(buf),
        DatagramSocket::Udp(socket) => socket.try_recv(buf),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool;
    use std::io::Write;

    fn settings(url: &str) -> Settings {
        Settings {
            url: url.parse().unwrap(),
            mode: 0o660,
            max_connections: 2,
            max_frame_bytes: 1024,
            joiner: JoinerConfig::default(),
        }
    }

    #[tokio::test]
    async fn a_stale_socket_file_is_replaced_a_live_one_and_other_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sock");
        let url = format!("unix://{}", path.display());

        // Left by a process that is gone: nobody accepts on it.
        drop(std_unix::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let bound = bind(&settings(&url)).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);

        // Live: a second shipper must not take it over.
        let error = bind(&settings(&url)).err().unwrap().to_string();
        assert!(error.contains("in use by another process"), "{error}");
        drop(bound);
        assert!(!path.exists(), "removed when the listener is dropped");

        fs::write(&path, b"not a socket").unwrap();
        let error = bind(&settings(&url)).err().unwrap().to_string();
        assert!(error.contains("is not a socket"), "{error}");
        assert!(path.exists(), "a regular file is left alone");
    }

    #[tokio::test]
    async fn the_socket_file_is_removed_at_stop_only_while_it_is_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dgram.sock");
        let url = format!("unixgram://{}", path.display());
        let bound = bind(&settings(&url)).unwrap();
        // Someone replaced it meanwhile.
        fs::remove_file(&path).unwrap();
        let other = std_unix::UnixDatagram::bind(&path).unwrap();
        drop(bound);
        assert!(
            path.exists(),
            "another process's socket file is not removed"
        );
        drop(other);
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sock");
        let url = format!("unix://{}?framing=lines", path.display());
        let settings = settings(&url);
        let (spool, _) = Spool::open(
            &dir.path().join("spool"),
            spool::Config::with_max_bytes(1 << 20),
        )
        .unwrap();
        let metrics = Arc::new(SocketMetrics::new(&url));
        let context = Arc::new(Context::new(spool, Arc::clone(&metrics), &settings));
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(bind(&settings).unwrap(), context, 2, stop.clone()));
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut client = std_unix::UnixStream::connect(&path).unwrap();
            client.write_all(b"hello\n").unwrap();
            held.push(client);
        }
        // Both are being read before the third arrives.
        while metrics
            .records_total
            .load(std::sync::atomic::Ordering::Relaxed)
            < 2
        {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut third = std_unix::UnixStream::connect(&path).unwrap();
        let mut buf = [0u8; 1];
        // The shipper closes it at once: reading sees the end.
        let read = tokio::task::spawn_blocking(move || std::io::Read::read(&mut third, &mut buf))
            .await
            .unwrap();
        assert!(matches!(read, Ok(0) | Err(_)));
        assert_eq!(
            metrics
                .connections_refused_total
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(
            metrics
                .connections_active
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        stop.cancel();
        server.await.unwrap();
        assert!(!path.exists());
    }
}
