//! The HTTP side: `GET`/`HEAD /{repo}/{path}`, `/api/status`, `/metrics`, `/` (the dashboard,
//! rendered by `dashboard` from the status in the language the request asks for), the client
//! set-up paths (`/setup/…`, `/mirrorlist/…`, made by `setup`) and the bundle API
//! (`/api/bundle/…`, answered by `admin`).
//!
//! Each connection starts on a zero-copy path: the request head is read and parsed here with
//! httparse (the parser hyper uses, with the same settings, so a head ends where hyper would end
//! it, bare-LF lines included), and a request that is a plain hit on a stored blob (whole file,
//! one range, 304 or 416) is answered with `sendfile(2)`, headers included in the same write
//! batch. The first request that is anything else (a miss, a refresh due, several ranges, a
//! body, a head that does not parse, is too large or is refused) hands the connection, with the
//! bytes already read, to hyper for the rest of its life, so every error answer (400, 414,
//! 431, 405, …) comes from hyper's side. Both paths read the request's fields with [`respond::read_fields`] and take their
//! answer from `respond`, so they agree on every header.
//!
//! Bounds, the same on both paths: request heads are at most [`MAX_HEAD`] bytes (431 beyond)
//! and request targets [`respond::MAX_URI`] (414); a connection must complete each request head
//! within `http.idle_timeout_secs` of opening or of its previous answer; a connection whose
//! client takes no bytes for `http.write_timeout_secs` is dropped, freeing its slot;
//! connections are capped by `http.max_connections`; bodies are streamed from files in fixed
//! chunks, so a slow client holds one chunk, not the file. A connection that ends after an
//! answer is closed gracefully (write side shut, unread input drained for at most [`LINGER`]),
//! so the kernel never resets it and destroys the end of the answer; only a body that failed
//! verification (or a client that stopped reading) ends in a reset.
//!
//! Who may connect: clients from `http.allow` (by default loopback and the private,
//! link-local and unique-local networks); others get 403. Invariant 5: only configured repos
//! are served and request paths are checked by `paths` before any I/O. A HEAD request never
//! starts a download: it is answered from the store, the metadata, or a HEAD upstream. Errors
//! map to status codes in [`ServeError::status`].
//!
//! Whether a request is a hit is [`lookup::find`]'s answer (the same the peer server and the
//! snapshot refresh get), from one read transaction: a hit goes out on the zero-copy
//! path; an alias (the same bytes under another path) is listed by the fetch layer
//! (`Fetcher::list`), then served; a stale mutable file is asked upstream (the transfer
//! confirms its row on a 304); a miss starts or joins a transfer. This module writes no index
//! rows; it only notes accesses (`Store::touch`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::{Method, Request, Response, StatusCode, Version, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::config::Config;
use crate::fetch::{FetchError, Fetcher, Finished, Item, Phase, Transfer};
use crate::lookup::{self, Expect, Found, Held, Lookup};
use crate::paths::{self, PathError, PathKind, RepoPath};
use crate::repodata::ChecksumAlgo;
use crate::respond::{self, BOUNDARY, Conditions, FileInfo, HeadError, Plan};
use crate::setup::SetupError;
use crate::snapshot::{SnapshotError, Snapshots};
use crate::stats::Stats;
use crate::store::{Expected, PathEntry, Store, now_secs};
use crate::upstream::HeadInfo;

/// What the HTTP layer needs of a node, and nothing more: the config, the store, metadata
/// snapshots, the miss path, the counters, and the two reports. (`node` builds it; this module
/// does not know how a node is wired.)
pub struct Site {
    pub cfg: Config,
    pub store: Store,
    pub snapshots: Arc<Snapshots>,
    pub fetcher: Arc<Fetcher>,
    pub stats: Arc<Stats>,
    pub report: Arc<dyn Report>,
    /// The bundle commands on a running node (`/api/bundle/…`).
    pub admin: Arc<crate::admin::Admin>,
}

/// The node's own reports, rendered when asked for.
pub trait Report: Send + Sync {
    /// The `/api/status` document.
    fn status(&self) -> serde_json::Value;
    /// The `/metrics` page (Prometheus text format).
    fn metrics(&self) -> String;
}

/// Largest request head (request line and header fields) accepted, on both paths.
pub const MAX_HEAD: usize = 16 * 1024;
/// Header fields per request (hyper's own limit; more is a 431).
const MAX_HEADERS: usize = 100;
/// hyper's read/write buffer limit per connection (heads are capped at [`MAX_HEAD`] before).
const HYPER_BUF: usize = 64 * 1024;
/// How long a connection that is closing after its last answer keeps reading (and dropping)
/// what the client still sends, so that unread input does not make the kernel reset the
/// connection and destroy the end of the answer.
pub const LINGER: Duration = Duration::from_secs(2);
/// At most this much unread input is drained while closing.
const LINGER_BYTES: usize = 1 << 20;
const CHUNK: usize = 256 * 1024;
/// Refused clients are logged at most once per address in this period...
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);
/// ...and at most this many addresses are remembered.
const REFUSAL_LOG_MAX: usize = 1024;

type Body = UnsyncBoxBody<Bytes, io::Error>;

/// Why a request was not answered with content. Mapped to a status in one place.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("refused: {0}")]
    BadPath(#[from] PathError),
    #[error("{0}")]
    BadHead(#[from] HeadError),
    #[error("this node serves the clients of its own site only (see [http] allow)")]
    Forbidden,
    #[error("no such repository or file")]
    NotFound,
    #[error("only GET and HEAD are served")]
    Method,
    #[error("{0}")]
    Fetch(FetchError),
    #[error("metadata: {0}")]
    Snapshot(SnapshotError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServeError {
    pub fn status(&self) -> StatusCode {
        match self {
            ServeError::BadPath(PathError::Empty) => StatusCode::NOT_FOUND,
            ServeError::BadPath(_) => StatusCode::BAD_REQUEST,
            ServeError::BadHead(HeadError::Host) => StatusCode::BAD_REQUEST,
            ServeError::BadHead(HeadError::UriTooLong) => StatusCode::URI_TOO_LONG,
            ServeError::Forbidden => StatusCode::FORBIDDEN,
            ServeError::NotFound => StatusCode::NOT_FOUND,
            ServeError::Method => StatusCode::METHOD_NOT_ALLOWED,
            ServeError::Fetch(e) | ServeError::Snapshot(SnapshotError::Fetch { source: e, .. }) => {
                if e.is_not_found() {
                    StatusCode::NOT_FOUND
                } else if e.is_uplink_down() {
                    StatusCode::GATEWAY_TIMEOUT
                } else if e.is_disk_full() {
                    StatusCode::INSUFFICIENT_STORAGE
                } else if matches!(e, FetchError::Store(_)) {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::BAD_GATEWAY
                }
            }
            ServeError::Snapshot(SnapshotError::Unavailable) => StatusCode::GATEWAY_TIMEOUT,
            ServeError::Snapshot(_) => StatusCode::BAD_GATEWAY,
            ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn response(&self, stats: &Stats) -> Response<Body> {
        let status = self.status();
        match status {
            StatusCode::NOT_FOUND => Stats::inc(&stats.not_found),
            StatusCode::BAD_REQUEST
            | StatusCode::METHOD_NOT_ALLOWED
            | StatusCode::URI_TOO_LONG
            | StatusCode::FORBIDDEN => Stats::inc(&stats.refused),
            _ => {}
        }
        let mut r = text(status, format!("{self}\n"));
        if matches!(self, ServeError::Method) {
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        }
        if matches!(status, StatusCode::BAD_REQUEST | StatusCode::URI_TOO_LONG) {
            // A client that sends such heads is not worth keeping a connection for.
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        r
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn empty() -> Body {
    full(Bytes::new())
}

/// The per-connection time limits of `[http]`.
#[derive(Debug, Clone, Copy)]
struct Limits {
    write: Duration,
    idle: Duration,
}

/// Accepts connections until `shutdown` turns true.
pub async fn serve(listener: TcpListener, node: Arc<Site>, shutdown: &mut watch::Receiver<bool>) {
    let limit = Arc::new(Semaphore::new(node.cfg.http.max_connections));
    let allow = node.cfg.http.allow_list();
    let refusals = Arc::new(RefusalLog::default());
    let limits = Limits {
        write: node.cfg.http.write_timeout(),
        idle: node.cfg.http.idle_timeout(),
    };
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        if !allow.allows(peer.ip()) {
            if refusals.first_in_a_while(peer.ip()) {
                tracing::warn!(
                    client = %peer.ip(),
                    "refused an HTTP client from outside the site's networks (403); if it belongs to the site, add its network to [http] allow (logged once a minute per address)"
                );
            }
            tokio::spawn(async move {
                refuse(stream, &node, limits).await;
                drop(permit);
            });
            continue;
        }
        tokio::spawn(async move {
            connection(stream, peer, node, limits).await;
            drop(permit);
        });
    }
}

/// When each refused address was last logged: one line per address per minute, a bounded map.
#[derive(Default)]
struct RefusalLog(Mutex<HashMap<IpAddr, Instant>>);

impl RefusalLog {
    fn first_in_a_while(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let Ok(mut m) = self.0.lock() else {
            return false;
        };
        if m.get(&ip)
            .is_some_and(|t| now.duration_since(*t) < REFUSAL_LOG_EVERY)
        {
            return false;
        }
        if m.len() >= REFUSAL_LOG_MAX && !m.contains_key(&ip) {
            m.retain(|_, t| now.duration_since(*t) < REFUSAL_LOG_EVERY);
            if m.len() >= REFUSAL_LOG_MAX {
                return false;
            }
        }
        m.insert(ip, now);
        true
    }
}

/// Answers a client outside `http.allow` with 403 at once (whatever it asks), then closes.
async fn refuse(mut stream: TcpStream, node: &Site, limits: Limits) {
    let e = ServeError::Forbidden;
    Stats::inc(&node.stats.refused);
    let status = e.status();
    let body = format!("{e}\n");
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if send_all(&stream, head.as_bytes(), false, limits.write)
        .await
        .is_ok()
    {
        close_gracefully(&mut stream).await;
    }
}

/// Ends a connection after its last answer without destroying it: shuts the write side (the
/// client sees the end of the answer, then FIN), then reads and drops what the client still
/// sends (a stray CRLF, a late pipelined request) until it closes, for at most [`LINGER`].
/// Closing with unread input would make Linux send RST, and a client that has not read the
/// whole answer yet would lose its end.
async fn close_gracefully(stream: &mut TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut sink = vec![0u8; 16 * 1024];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}

/// Ends a connection with a reset: for a client that stopped reading (its unsent data is
/// dropped at once instead of lingering in the kernel) and for an answer that must not look
/// complete (a body that failed verification).
fn abort(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Looks a request path up in the store only (no upstream, no writes): see [`lookup`].
fn look_up(node: &Site, repo: &str, path: &RepoPath) -> Result<Lookup, ServeError> {
    let view = node.store.view().map_err(store_err)?;
    lookup::find(
        &view,
        repo,
        path,
        Expect::Index,
        now_secs(),
        node.snapshots.freshness(),
    )
    .map_err(store_err)
}

/// Opens a stored blob. Its ETag is made of its SHA-256 (what metadata names, so a file
/// streamed before it was stored carried the same ETag), else of its BLAKE3.
fn open_hit(node: &Site, held: &Held, name: &str) -> Option<(File, FileInfo)> {
    let f = File::open(node.store.blob_path(&held.blob)).ok()?;
    let len = f.metadata().ok()?.len();
    let tag: &[u8] = held.sha256.as_ref().map_or(&held.blob, |d| d);
    Some((f, FileInfo::new(tag, len, held.modified, name)))
}

// ---------------------------------------------------------------- zero-copy path

enum Head {
    /// A complete head of this many bytes, within [`MAX_HEAD`].
    Complete(usize),
    /// Something hyper must answer: a head that does not parse, is too large, or has more
    /// fields than the zero-copy path reads.
    Hyper,
    /// The client went away, or took longer than the idle timeout.
    Closed,
}

/// Reads until `buf` starts with a complete request head, exactly as hyper would frame it.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: tokio::time::Instant,
) -> Head {
    loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match httparse::Request::new(&mut headers).parse(buf) {
                Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => return Head::Complete(n),
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
                // Too large, malformed (HTTP/0.9, bad tokens) or too many fields: hyper answers
                // 431 or 400 at once, from the same bytes.
                _ => return Head::Hyper,
            }
        }
        buf.reserve(4096);
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            // EOF (mid-head too: hyper would answer nothing either), an error, or idle too long.
            _ => return Head::Closed,
        }
    }
}

async fn connection(mut stream: TcpStream, peer: SocketAddr, node: Arc<Site>, limits: Limits) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let deadline = tokio::time::Instant::now() + limits.idle;
        let head_len = match read_head(&mut stream, &mut buf, deadline).await {
            Head::Complete(n) => n,
            Head::Hyper => break,
            Head::Closed => return,
        };
        match fast_path(&node, &stream, &buf[..head_len], limits.write).await {
            Fast::Served { keep_alive: true } => {
                buf.drain(..head_len);
            }
            Fast::Served { keep_alive: false } => {
                close_gracefully(&mut stream).await;
                return;
            }
            Fast::Broken(e) => {
                if e.kind() == io::ErrorKind::TimedOut {
                    tracing::info!(
                        client = %peer,
                        secs = limits.write.as_secs(),
                        "closed a connection whose client took no data (http.write_timeout_secs)"
                    );
                } else {
                    tracing::debug!(client = %peer, error = %e, "client went away mid-answer");
                }
                abort(stream);
                return;
            }
            Fast::NotMine => break,
        }
    }
    // The address the client reached us at (set-up files name it when Host cannot be used).
    let local = stream.local_addr().unwrap_or(node.cfg.node.http_listen);
    let home = Arc::new(Mutex::new(None));
    let io = TokioIo::new(Io::new(buf, stream, limits.write, home.clone()));
    let svc = hyper::service::service_fn(move |req| {
        let node = node.clone();
        async move { Ok::<_, Infallible>(handle(node, req, local, peer).await) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle)
        .max_header_size(MAX_HEAD)
        .max_buf_size(HYPER_BUF)
        .keep_alive(true)
        .half_close(true)
        .serve_connection(io, svc)
        .await;
    // The connection future (and the Io in it) is gone: the socket is back in `home`.
    let Some(back) = home.lock().ok().and_then(|mut h| h.take()) else {
        return;
    };
    match result {
        Ok(()) => close_gracefully(&mut { back.stream }).await,
        // hyper answered the head with 400/414/431 itself: let the client read it.
        Err(e) if e.is_parse() || e.is_parse_too_large() => {
            tracing::debug!(client = %peer, error = %e, "malformed request");
            close_gracefully(&mut { back.stream }).await;
        }
        Err(e) if e.is_timeout() => {
            tracing::debug!(client = %peer, "connection idle too long; closed");
        }
        Err(e) => {
            if back.write_timed_out {
                tracing::info!(
                    client = %peer,
                    secs = limits.write.as_secs(),
                    "closed a connection whose client took no data (http.write_timeout_secs)"
                );
            } else {
                tracing::debug!(client = %peer, error = %e, "connection ended with an error");
            }
            abort(back.stream);
        }
    }
}

enum Fast {
    Served {
        keep_alive: bool,
    },
    /// The client went away, stopped reading, or the socket failed mid-answer.
    Broken(io::Error),
    /// Not a plain hit: hyper takes over.
    NotMine,
}

async fn fast_path(node: &Site, stream: &TcpStream, head: &[u8], write_timeout: Duration) -> Fast {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return Fast::NotMine;
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Fast::NotMine;
    };
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Fast::NotMine,
    };
    // A target hyper would refuse is hyper's to answer.
    if http::Uri::try_from(target).is_err() {
        return Fast::NotMine;
    }
    let http11 = version == 1;
    let Ok(fields) = respond::read_fields(
        http11,
        target,
        req.headers.iter().map(|h| (h.name, h.value)),
    ) else {
        return Fast::NotMine;
    };
    if fields.special {
        return Fast::NotMine;
    }
    let path_only = target.split('?').next().unwrap_or(target);
    let Ok((repo, path)) = paths::parse_request_path(path_only) else {
        return Fast::NotMine;
    };
    if node.cfg.repo(&repo).is_none() {
        return Fast::NotMine;
    }
    // Only a plain hit: an alias is listed under its path first, on hyper's side.
    let Ok(Lookup {
        found: Found::Hit(held),
        ..
    }) = look_up(node, &repo, &path)
    else {
        return Fast::NotMine;
    };
    let Some((file, info)) = open_hit(node, &held, path.file_name()) else {
        return Fast::NotMine;
    };
    let plan = respond::plan(&fields.conditions, &info);
    let body = match &plan {
        Plan::Full => Some(0..info.len),
        Plan::Single(r) => Some(r.clone()),
        Plan::Multi(_) => return Fast::NotMine,
        Plan::NotModified | Plan::Unsatisfiable => None,
    };
    let keep_alive = fields.persistent(http11);
    let status = plan.status();
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = String::with_capacity(320);
    // hyper answers an HTTP/1.0 request as HTTP/1.0: so do we.
    out.push_str(if http11 { "HTTP/1.1 " } else { "HTTP/1.0 " });
    out.push_str(&status.to_string());
    out.push(' ');
    out.push_str(reason);
    out.push_str("\r\ndate: ");
    out.push_str(&httpdate::fmt_http_date(SystemTime::now()));
    out.push_str("\r\n");
    for (k, v) in respond::fields(&plan, &info) {
        out.push_str(k);
        out.push_str(": ");
        out.push_str(&v);
        out.push_str("\r\n");
    }
    // As hyper does: HTTP/1.1 says when it closes, HTTP/1.0 when it does not.
    match (http11, keep_alive) {
        (true, false) => out.push_str("connection: close\r\n"),
        (false, true) => out.push_str("connection: keep-alive\r\n"),
        _ => {}
    }
    out.push_str("\r\n");
    Stats::inc(&node.stats.requests);
    Stats::inc(&node.stats.hits);
    Stats::inc(&node.stats.zero_copy_responses);
    node.store.touch(&held.blob);
    let body = body.filter(|r| !head_only && r.end > r.start);
    if let Err(e) = send_all(stream, out.as_bytes(), body.is_some(), write_timeout).await {
        return Fast::Broken(e);
    }
    if let Some(r) = body {
        // Counted as it is handed to the kernel, like hyper's bodies are as they are produced:
        // a client that has the last byte must never read a count without it.
        Stats::add(&node.stats.bytes_served, r.end - r.start);
        if let Err(e) = sendfile_all(stream, &file, r, write_timeout).await {
            return Fast::Broken(e);
        }
    }
    Fast::Served { keep_alive }
}

/// Waits until the socket takes bytes again, for at most `limit`.
async fn writable(stream: &TcpStream, limit: Duration) -> io::Result<()> {
    match tokio::time::timeout(limit, stream.writable()).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client took no data within the write timeout",
        )),
    }
}

/// Writes all of `bytes`; `more` tells the kernel a body follows (MSG_MORE), so headers and
/// the start of the body leave in the same segment. Fails if the client takes nothing for
/// `limit`.
async fn send_all(
    stream: &TcpStream,
    mut bytes: &[u8],
    more: bool,
    limit: Duration,
) -> io::Result<()> {
    let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    while !bytes.is_empty() {
        let sent = stream.try_io(Interest::WRITABLE, || {
            // SAFETY: the pointer and length describe a live slice; the fd is the open socket.
            let r = unsafe {
                libc::send(
                    stream.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    flags,
                )
            };
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(r as usize)
            }
        });
        match sent {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => writable(stream, limit).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends `r` of `file` on the socket with sendfile(2): no copy through user space. Fails if
/// the client takes nothing for `limit`.
async fn sendfile_all(
    stream: &TcpStream,
    file: &File,
    r: Range<u64>,
    limit: Duration,
) -> io::Result<()> {
    let mut off = r.start as libc::off_t;
    let end = r.end as libc::off_t;
    while off < end {
        let sent = stream.try_io(Interest::WRITABLE, || {
            let count = ((end - off) as usize).min(1 << 30);
            // SAFETY: both fds are open for the duration; `off` is a valid off_t the call updates.
            let r =
                unsafe { libc::sendfile(stream.as_raw_fd(), file.as_raw_fd(), &mut off, count) };
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(r as usize)
            }
        });
        match sent {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "blob shorter than its length",
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => writable(stream, limit).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The socket, handed back by [`Io`] when hyper is done with it.
struct Returned {
    stream: TcpStream,
    /// The connection ended because the client took no data for the write timeout.
    write_timed_out: bool,
}

/// The connection as hyper sees it: first the bytes the zero-copy path already read, then the
/// socket; a write that makes no progress for the write timeout fails (hyper then drops the
/// connection). When hyper drops it, the socket goes back to `home`, so the connection can be
/// closed gracefully.
struct Io {
    pre: Vec<u8>,
    at: usize,
    stream: Option<TcpStream>,
    write_timeout: Duration,
    /// Armed when a write could make no progress; reset by any progress.
    stall: Pin<Box<tokio::time::Sleep>>,
    stalled: bool,
    timed_out: bool,
    home: Arc<Mutex<Option<Returned>>>,
}

impl Io {
    fn new(
        pre: Vec<u8>,
        stream: TcpStream,
        write_timeout: Duration,
        home: Arc<Mutex<Option<Returned>>>,
    ) -> Self {
        Self {
            pre,
            at: 0,
            stream: Some(stream),
            write_timeout,
            stall: Box::pin(tokio::time::sleep(write_timeout)),
            stalled: false,
            timed_out: false,
            home,
        }
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    /// Progress (or an error): disarm the stall timer.
    fn wrote(
        &mut self,
        r: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if r.is_ready() {
            self.stalled = false;
            return r;
        }
        if !self.stalled {
            self.stalled = true;
            let at = tokio::time::Instant::now() + self.write_timeout;
            self.stall.as_mut().reset(at);
        }
        if self.stall.as_mut().poll(cx).is_ready() {
            self.timed_out = true;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no data within the write timeout",
            )));
        }
        Poll::Pending
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take()
            && let Ok(mut h) = self.home.lock()
        {
            *h = Some(Returned {
                stream,
                write_timed_out: self.timed_out,
            });
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.pre.len() {
            let n = (this.pre.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.pre[this.at..this.at + n]);
            this.at += n;
            if this.at == this.pre.len() {
                this.pre = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        match this.stream() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = match this.stream() {
            Ok(s) => Pin::new(s).poll_write(cx, buf),
            Err(e) => return Poll::Ready(Err(e)),
        };
        this.wrote(r, cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = match this.stream() {
            Ok(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Err(e) => return Poll::Ready(Err(e)),
        };
        this.wrote(r, cx)
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

// ---------------------------------------------------------------- hyper path

async fn handle(
    node: Arc<Site>,
    req: Request<Incoming>,
    local: SocketAddr,
    peer: SocketAddr,
) -> Response<Body> {
    Stats::inc(&node.stats.requests);
    let target = req.uri().to_string();
    let fields = match respond::read_fields(
        req.version() == Version::HTTP_11,
        &target,
        req.headers()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes())),
    ) {
        Ok(f) => f,
        Err(e) => {
            let e = ServeError::BadHead(e);
            tracing::debug!(target, error = %e, "request refused");
            return e.response(&node.stats);
        }
    };
    let path = req.uri().path().to_string();
    if let Some(tail) = path.strip_prefix("/api/bundle/") {
        // The command line asks over loopback (or this host's own address), never the LAN.
        if !(peer.ip().is_loopback() || peer.ip() == local.ip()) {
            return ServeError::Forbidden.response(&node.stats);
        }
        return bundle_api(&node, tail, req).await;
    }
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return ServeError::Method.response(&node.stats);
    }
    let mut resp = match path.as_str() {
        "/" => {
            let field = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
            let choice = crate::dashboard::i18n::choose(
                req.uri().query(),
                field(header::COOKIE),
                field(header::ACCEPT_LANGUAGE),
            );
            let node2 = node.clone();
            match tokio::task::spawn_blocking(move || {
                crate::dashboard::page(&node2.report.status(), choice)
            })
            .await
            {
                Ok(page) => dashboard_response(page),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "dashboard failed\n".into(),
                ),
            }
        }
        "/api/status" => {
            let node2 = node.clone();
            let body = tokio::task::spawn_blocking(move || node2.report.status().to_string())
                .await
                .unwrap_or_else(|_| "{}".into());
            let mut r = Response::new(full(body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        "/metrics" => {
            let node2 = node.clone();
            let body = tokio::task::spawn_blocking(move || node2.report.metrics())
                .await
                .unwrap_or_default();
            let mut r = Response::new(full(body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        p if crate::setup::serves(p) => setup_answer(&node, &req, p, local),
        _ => {
            let c = &fields.conditions;
            let answer = if head {
                head_request(&node, &path, c).await
            } else {
                repo_request(&node, &path, c).await
            };
            match answer {
                Ok(r) => r,
                Err(e) => {
                    Stats::inc(&node.stats.answer_errors);
                    if matches!(
                        e.status(),
                        StatusCode::BAD_GATEWAY
                            | StatusCode::INTERNAL_SERVER_ERROR
                            | StatusCode::INSUFFICIENT_STORAGE
                    ) {
                        tracing::warn!(path, error = %e, "request failed");
                    } else {
                        tracing::debug!(path, error = %e, "request refused");
                    }
                    e.response(&node.stats)
                }
            }
        }
    };
    if head {
        *resp.body_mut() = empty();
    }
    resp
}

/// Largest request body of the bundle API (a few paths in JSON).
const MAX_API_BODY: usize = 64 * 1024;

/// `/api/bundle/…`: read a small JSON body, let `admin` answer.
async fn bundle_api(node: &Site, tail: &str, req: Request<Incoming>) -> Response<Body> {
    let post = req.method() == Method::POST;
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    let body = if post {
        match http_body_util::Limited::new(req.into_body(), MAX_API_BODY)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
        }
    } else {
        Bytes::new()
    };
    let (status, json) = node.admin.handle(post, tail, auth.as_deref(), &body);
    let mut r = Response::new(full(json.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// `/setup/…` and `/mirrorlist/…` (see `setup`): made for the address the client used.
fn setup_answer(
    node: &Site,
    req: &Request<Incoming>,
    path: &str,
    local: SocketAddr,
) -> Response<Body> {
    let host = req.headers().get(header::HOST).map(|v| v.as_bytes());
    let peers = node
        .fetcher
        .peers()
        .map(|p| p.live_http())
        .unwrap_or_default();
    match crate::setup::answer(&node.cfg, path, host, local, &peers) {
        Ok(page) => {
            let mut r = Response::new(full(page.body));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(page.content_type),
            );
            // Made for this request (its Host, the peers live now): never from a cache.
            h.insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            r
        }
        Err(e) => {
            tracing::debug!(path, error = %e, "set-up request refused");
            match e {
                SetupError::BadPath(p) => ServeError::BadPath(p),
                SetupError::NotFound | SetupError::NoRepo => ServeError::NotFound,
            }
            .response(&node.stats)
        }
    }
}

fn store_err(e: crate::store::StoreError) -> ServeError {
    ServeError::Internal(e.to_string())
}

/// A request path of a configured repo (anything else is 404).
fn configured_path(node: &Site, raw: &str) -> Result<(String, RepoPath), ServeError> {
    let (repo, path) = paths::parse_request_path(raw)?;
    if node.cfg.repo(&repo).is_none() {
        return Err(ServeError::NotFound);
    }
    Ok((repo, path))
}

async fn repo_request(
    node: &Arc<Site>,
    raw: &str,
    c: &Conditions<'_>,
) -> Result<Response<Body>, ServeError> {
    let (repo, path) = configured_path(node, raw)?;
    let name = path.file_name().to_string();
    if let PathKind::RepoMd { tree } | PathKind::RepoMdCompanion { tree, .. } = path.kind() {
        // The snapshot module decides which snapshot is served (refreshing it when due).
        let suffix = companion(&path);
        let s = node
            .snapshots
            .current(&repo, &tree)
            .await
            .map_err(ServeError::Snapshot)?;
        if suffix.is_some_and(|x| !s.companions.iter().any(|(c, _)| c == x)) {
            return Err(ServeError::NotFound);
        }
        let view = node.store.view().map_err(store_err)?;
        let held = lookup::in_snapshot(&view, &s, suffix).map_err(store_err)?;
        drop(view);
        return match held.and_then(|h| serve_stored(node, &h, &name, c, false)) {
            Some(r) => Ok(r),
            None if suffix.is_some() => Err(ServeError::NotFound),
            None => Err(ServeError::Internal(
                "the snapshot's repomd.xml is missing from the store: run `lanmirror verify`"
                    .into(),
            )),
        };
    }
    let l = look_up(node, &repo, &path)?;
    match &l.found {
        Found::Hit(held) => {
            if let Some(r) = serve_stored(node, held, &name, c, false) {
                return Ok(r);
            }
            // Gone since the lookup (evicted): fetched again below.
        }
        Found::Alias(held) => {
            // The same bytes under another path (e.g. /9/ and /9.6/): the fetch layer lists
            // them under this one too, so its next request is a plain hit.
            if let Err(e) = node.fetcher.list(format!("{repo}/{path}"), held).await {
                tracing::warn!(repo, path = %path, error = %e, "could not list stored bytes under another path; served all the same");
            }
            if let Some(r) = serve_stored(node, held, &name, c, false) {
                return Ok(r);
            }
        }
        Found::Revalidate { held, entry } => {
            return revalidate(node, &repo, path, held, entry, c).await;
        }
        Found::Miss => {}
    }
    let t = node.fetcher.start(Item {
        repo,
        path,
        expected: l.expected.clone(),
        publish: true,
        revalidate: None,
        site: true,
        class: crate::uplink::Class::Interactive,
    });
    stream_transfer(node, t, &name, c, l.expected.as_ref()).await
}

/// `Some(".asc")` for `repodata/repomd.xml.asc` and the like; none for any other path.
fn companion(path: &RepoPath) -> Option<&'static str> {
    match path.kind() {
        PathKind::RepoMdCompanion { suffix, .. } => Some(suffix),
        _ => None,
    }
}

/// A HEAD request. It never starts a download: it is answered from what is stored (even a
/// copy due for a freshness check, or the same bytes under another path), else from metadata
/// (the size `primary.xml` names), else by a HEAD request upstream.
async fn head_request(
    node: &Arc<Site>,
    raw: &str,
    c: &Conditions<'_>,
) -> Result<Response<Body>, ServeError> {
    let (repo, path) = configured_path(node, raw)?;
    let name = path.file_name().to_string();
    let l = look_up(node, &repo, &path)?;
    if let Found::Hit(held) | Found::Alias(held) | Found::Revalidate { held, .. } = &l.found
        && let Some(r) = serve_stored(node, held, &name, c, true)
    {
        return Ok(r);
    }
    match path.kind() {
        PathKind::RepoMdCompanion { tree, suffix } => {
            if let Some(s) = node
                .store
                .snapshot(&format!("{repo}/{tree}"))
                .map_err(store_err)?
                && !s.companions.iter().any(|(x, _)| x == suffix)
            {
                // The snapshot says the tree has no such companion.
                return Err(ServeError::NotFound);
            }
        }
        PathKind::RepoMd { .. } => {}
        _ => {
            if let Some(exp) = &l.expected
                && let Some(len) = exp.size
            {
                let info = FileInfo::with(len, metadata_etag(Some(exp)), now_secs(), &name);
                return Ok(unstored_answer(&info, c));
            }
        }
    }
    let up = node
        .fetcher
        .upstream()
        .head(&repo, &path)
        .await
        .map_err(|e| ServeError::Fetch(FetchError::Upstream(e)))?;
    tracing::debug!(repo, path = %path, "HEAD answered from a HEAD upstream");
    Ok(upstream_head_answer(&up, &name, c))
}

/// The ETag a file gets once stored, when metadata already says it: made of its SHA-256.
fn metadata_etag(expected: Option<&Expected>) -> Option<String> {
    expected
        .filter(|e| e.checksum.algo == ChecksumAlgo::Sha256)
        .map(|e| respond::etag(&e.checksum.digest))
}

/// The head of an answer about a file that is not stored (HEAD only: no body).
fn unstored_answer(info: &FileInfo, c: &Conditions<'_>) -> Response<Body> {
    let plan = respond::plan(c, info);
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::from_u16(plan.status()).unwrap_or(StatusCode::OK);
    for (k, v) in respond::fields(&plan, info) {
        if let Ok(v) = header::HeaderValue::from_str(&v) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

/// What a HEAD upstream said, as our answer: its size and validators.
fn upstream_head_answer(up: &HeadInfo, name: &str, c: &Conditions<'_>) -> Response<Body> {
    let modified = up
        .last_modified
        .as_deref()
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(now_secs, |d| d.as_secs());
    match up.len {
        Some(len) => unstored_answer(&FileInfo::with(len, up.etag.clone(), modified, name), c),
        None => {
            let mut r = Response::new(empty());
            let h = r.headers_mut();
            if let Ok(v) = header::HeaderValue::from_str(respond::content_type(name)) {
                h.insert(header::CONTENT_TYPE, v);
            }
            if let Some(v) = up
                .etag
                .as_deref()
                .and_then(|v| header::HeaderValue::from_str(v).ok())
            {
                h.insert(header::ETAG, v);
            }
            if let Ok(v) = header::HeaderValue::from_str(&httpdate::fmt_http_date(
                std::time::UNIX_EPOCH + Duration::from_secs(modified),
            )) {
                h.insert(header::LAST_MODIFIED, v);
            }
            r
        }
    }
}

/// A mutable file whose stored copy (`held`, listed as `entry`) is older than the freshness
/// window: asked upstream with its validators. A 304 confirms it (the transfer moves the row's
/// check time); when upstream cannot be asked the stored copy is served as stale.
async fn revalidate(
    node: &Arc<Site>,
    repo: &str,
    path: RepoPath,
    held: &Held,
    entry: &PathEntry,
    c: &Conditions<'_>,
) -> Result<Response<Body>, ServeError> {
    let name = path.file_name().to_string();
    if node.fetcher.upstream().is_offline(repo) {
        Stats::inc(&node.stats.stale_served);
        return serve_stored(node, held, &name, c, false).ok_or(ServeError::NotFound);
    }
    let t = node.fetcher.start(Item {
        repo: repo.to_string(),
        path,
        expected: None,
        publish: true,
        revalidate: Some((entry.etag.clone(), entry.last_modified.clone())),
        site: false,
        class: crate::uplink::Class::Interactive,
    });
    match t.started().await {
        Phase::NotModified => {
            let confirmed = Held {
                modified: now_secs(),
                ..held.clone()
            };
            serve_stored(node, &confirmed, &name, c, false).ok_or(ServeError::NotFound)
        }
        Phase::Failed(err) if !err.is_not_found() => {
            Stats::inc(&node.stats.stale_served);
            tracing::debug!(repo, error = %err, "revalidation failed; serving the stored copy");
            serve_stored(node, held, &name, c, false).ok_or(ServeError::Fetch(err))
        }
        _ => stream_transfer(node, t, &name, c, None).await,
    }
}

/// Answers from a running transfer: bytes as they arrive for a plain GET; ranged and
/// conditional requests wait for the stored file. The streamed answer carries the validators
/// it can know now: the ETag the file will have once stored (from the SHA-256 metadata names),
/// `Last-Modified` of now (when this node got it), and `Accept-Ranges`.
async fn stream_transfer(
    node: &Arc<Site>,
    t: Arc<Transfer>,
    name: &str,
    c: &Conditions<'_>,
    expected: Option<&Expected>,
) -> Result<Response<Body>, ServeError> {
    let total = match t.started().await {
        Phase::Failed(e) => return Err(ServeError::Fetch(e)),
        Phase::Streaming { total, .. }
            if c.range.is_none() && c.if_none_match.is_none() && c.if_modified_since.is_none() =>
        {
            total
        }
        _ => match t.wait().await.map_err(ServeError::Fetch)? {
            Finished::Stored(d) => {
                let held = match node.store.blob_meta(&d.blob) {
                    Ok(Some(m)) => Held::of(&m, now_secs()),
                    // Passed through (never indexed): its file stays in place for a while.
                    _ => Held {
                        blob: d.blob,
                        size: d.size,
                        modified: now_secs(),
                        sha256: None,
                    },
                };
                return serve_stored(node, &held, name, c, false)
                    .ok_or_else(|| ServeError::Internal("stored file vanished".into()));
            }
            Finished::NotModified => {
                return Err(ServeError::Internal("unexpected 304 from a fetch".into()));
            }
        },
    };
    let stats = node.stats.clone();
    let body = t.clone().reader(node.store.clone()).inspect_ok(move |b| {
        Stats::add(&stats.bytes_served, b.len() as u64);
        Stats::add(&stats.streamed_bytes, b.len() as u64);
    });
    let body = tally(node.stats.clone(), t, body);
    let mut r = Response::new(stream_body(body));
    let h = r.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(respond::content_type(name)) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Some(n) = total {
        h.insert(header::CONTENT_LENGTH, header::HeaderValue::from(n));
    }
    h.insert(
        header::ACCEPT_RANGES,
        header::HeaderValue::from_static("bytes"),
    );
    if let Some(v) = metadata_etag(expected).and_then(|v| header::HeaderValue::from_str(&v).ok()) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = header::HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now())) {
        h.insert(header::LAST_MODIFIED, v);
    }
    Ok(r)
}

/// Counts a streamed answer by where its transfer's bytes came from, once the client has the
/// whole body: as the chunk that completes the file is handed on (the reader releases a file's
/// last byte only once the transfer is stored, so its source is known then), or at the end of
/// a body of unknown length. A body that fails counts as an error; one the client drops, as
/// nothing.
fn tally(
    stats: Arc<Stats>,
    t: Arc<Transfer>,
    body: impl Stream<Item = io::Result<Bytes>> + Send + 'static,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
    const OPEN: u8 = 0;
    const COUNTED: u8 = 1;
    // Counted once, by whoever gets there first.
    let state = Arc::new(AtomicU8::new(OPEN));
    let sent = Arc::new(AtomicU64::new(0));
    let first = |state: &AtomicU8| {
        state
            .compare_exchange(OPEN, COUNTED, Relaxed, Relaxed)
            .is_ok()
    };
    let (state2, sent2, stats2, t2) = (state.clone(), sent.clone(), stats.clone(), t.clone());
    let body = body.inspect(move |r| match r {
        Ok(b) => {
            let total = sent2.fetch_add(b.len() as u64, Relaxed) + b.len() as u64;
            if let Some(d) = t2.done()
                && total >= d.size
                && first(&state2)
            {
                stats2.answered(d.source, total);
            }
        }
        Err(_) => {
            if first(&state2) {
                Stats::inc(&stats2.answer_errors);
            }
        }
    });
    let end = futures_util::stream::once(async move {
        if let Ok(Finished::Stored(d)) = t.wait().await
            && first(&state)
        {
            stats.answered(d.source, sent.load(Relaxed));
        }
        None
    })
    .filter_map(futures_util::future::ready);
    body.chain(end)
}

fn stream_body(s: impl Stream<Item = io::Result<Bytes>> + Send + 'static) -> Body {
    StreamBody::new(s.map_ok(Frame::data)).boxed_unsync()
}

/// Answers from a stored blob; `None` when its file is gone (the caller treats that as a miss).
fn serve_stored(
    node: &Site,
    held: &Held,
    name: &str,
    c: &Conditions<'_>,
    head: bool,
) -> Option<Response<Body>> {
    let (file, info) = open_hit(node, held, name)?;
    let plan = respond::plan(c, &info);
    let body = if head {
        empty()
    } else {
        let file = Arc::new(file);
        match &plan {
            Plan::Full => stream_body(file_range(file, 0..info.len)),
            Plan::Single(r) => stream_body(file_range(file, r.clone())),
            Plan::Multi(rs) => {
                let parts: Vec<_> = rs
                    .iter()
                    .map(|r| {
                        let hdr =
                            crate::range::part_header(BOUNDARY, info.content_type, r, info.len);
                        futures_util::stream::once(async move { Ok(Bytes::from(hdr)) })
                            .chain(file_range(file.clone(), r.clone()))
                            .boxed()
                    })
                    .chain(std::iter::once(
                        futures_util::stream::once(async {
                            Ok(Bytes::from(crate::range::closing(BOUNDARY)))
                        })
                        .boxed(),
                    ))
                    .collect();
                stream_body(futures_util::stream::iter(parts).flatten())
            }
            Plan::NotModified | Plan::Unsatisfiable => empty(),
        }
    };
    Stats::inc(&node.stats.hits);
    if !head {
        Stats::add(&node.stats.bytes_served, plan.body_len(&info));
    }
    node.store.touch(&held.blob);
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(plan.status()).unwrap_or(StatusCode::OK);
    for (k, v) in respond::fields(&plan, &info) {
        if let Ok(v) = header::HeaderValue::from_str(&v) {
            r.headers_mut().insert(k, v);
        }
    }
    Some(r)
}
/// A byte range of a file as a stream of chunks read on the blocking pool.
fn file_range(
    file: Arc<File>,
    r: Range<u64>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    futures_util::stream::try_unfold((file, r.start, r.end), |(file, off, end)| async move {
        if off >= end {
            return Ok(None);
        }
        let want = ((end - off) as usize).min(CHUNK);
        let f = file.clone();
        let buf = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; want];
            let n = f.read_at(&mut buf, off)?;
            buf.truncate(n);
            Ok::<_, io::Error>(buf)
        })
        .await
        .map_err(io::Error::other)??;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "blob shorter than its length",
            ));
        }
        let next = off + buf.len() as u64;
        Ok(Some((Bytes::from(buf), (file, next, end))))
    })
}

/// The dashboard page (see `dashboard`): HTML in the chosen language, never cached (its
/// figures are live), varying with the language the browser asks for.
fn dashboard_response(page: crate::dashboard::Page) -> Response<Body> {
    let mut r = Response::new(full(page.html));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    h.insert(
        header::VARY,
        header::HeaderValue::from_static("Accept-Language, Cookie"),
    );
    if let Ok(v) = header::HeaderValue::from_str(page.lang) {
        h.insert(header::CONTENT_LANGUAGE, v);
    }
    if let Some(v) = page
        .set_cookie
        .and_then(|c| header::HeaderValue::from_str(&c).ok())
    {
        h.insert(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limits README.md states are the ones in the code.
    #[test]
    fn readme_states_the_limits_in_the_code() {
        let readme = include_str!("../README.md");
        let d = crate::config::HttpConfig::default();
        for want in [
            format!("**{} KiB** at most", MAX_HEAD / 1024),
            format!("at most\n  **{MAX_HEADERS}** header fields"),
            format!("(the URI) **{} KiB**", respond::MAX_URI / 1024),
            format!(
                "`http.idle_timeout_secs`\n  (**{} s**)",
                d.idle_timeout_secs
            ),
            format!("`http.write_timeout_secs` (**{} s**)", d.write_timeout_secs),
            format!("for up to **{} s**", LINGER.as_secs()),
            format!("Up to {} ranges", crate::range::MAX_RANGES),
            format!("| `http.write_timeout_secs` | `{}` |", d.write_timeout_secs),
            format!("| `http.idle_timeout_secs` | `{}` |", d.idle_timeout_secs),
            format!("| `http.max_connections` | `{}` |", d.max_connections),
        ] {
            assert!(readme.contains(&want), "README.md does not say {want:?}");
        }
        for net in crate::config::DEFAULT_ALLOW
            .iter()
            .filter(|n| !n.starts_with("127.") && **n != "::1/128")
        {
            assert!(
                readme.contains(&format!("`{net}`")),
                "README.md omits {net}"
            );
        }
    }
}
