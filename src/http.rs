//! The HTTP side: `GET`/`HEAD /{repo}/{path}`, `/api/status`, `/metrics` and `/`.
//!
//! Each connection starts on a zero-copy path: the request head is read and parsed here
//! (httparse), and a request that is a plain hit on a stored blob (whole file, one range, 304 or
//! 416) is answered with `sendfile(2)`, headers included in the same write batch. The first
//! request that is anything else (a miss, a refresh due, several ranges, a body, a malformed
//! head) hands the connection, with the bytes already read, to hyper for the rest of its life.
//! Both paths take their answer from `respond`, so they agree on every header.
//!
//! Bounds: request heads are at most [`MAX_HEAD`] bytes on the zero-copy path (431 beyond) and
//! [`HYPER_BUF`] once hyper has the connection; connections are capped by
//! `http.max_connections`; bodies are streamed from files in fixed chunks, so a slow client
//! holds one chunk, not the file. Invariant 5: only configured repos are served and request paths
//! are checked by `paths` before any I/O. Errors map to status codes in [`ServeError::status`].

use std::convert::Infallible;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::Interest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::fetch::{FetchError, Finished, Item, Phase, Transfer};
use crate::hash::{self, BlobId};
use crate::node::Node;
use crate::paths::{self, PathError, PathKind, RepoPath};
use crate::respond::{self, BOUNDARY, Conditions, FileInfo, Plan};
use crate::snapshot::{SnapshotError, needs_check};
use crate::stats::Stats;
use crate::store::{PathEntry, now_secs};

/// Largest request head accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// hyper's read/write buffer limit (and so its request head limit) per connection.
pub const HYPER_BUF: usize = 64 * 1024;
/// How long a client may take to send a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an idle keep-alive connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const CHUNK: usize = 256 * 1024;

type Body = UnsyncBoxBody<Bytes, io::Error>;

/// Why a request was not answered with content. Mapped to a status in one place.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("refused: {0}")]
    BadPath(#[from] PathError),
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
            StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED => Stats::inc(&stats.refused),
            _ => {}
        }
        let mut r = text(status, format!("{self}\n"));
        if matches!(self, ServeError::Method) {
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
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

/// Accepts connections until `shutdown` turns true.
pub async fn serve(listener: TcpListener, node: Arc<Node>, shutdown: &mut watch::Receiver<bool>) {
    let limit = Arc::new(Semaphore::new(node.cfg.http.max_connections));
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let (stream, _) = tokio::select! {
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
        tokio::spawn(async move {
            connection(stream, node).await;
            drop(permit);
        });
    }
}

/// A hit that can be answered without asking anyone: the blob and when it was stored/confirmed.
struct Hit {
    blob: BlobId,
    modified: u64,
}

/// Looks a path up in the store only (no upstream): a fresh snapshot file, a stored path, or
/// a blob with the checksum metadata names for the path.
fn stored_hit(node: &Node, repo: &str, path: &RepoPath) -> Option<Hit> {
    match path.kind() {
        PathKind::RepoMd { tree } => {
            let s = node.snapshots.fresh(repo, &tree)?;
            Some(Hit {
                blob: hash::parse_blob_id(&s.repomd)?,
                modified: s.fetched_at,
            })
        }
        PathKind::RepoMdCompanion { tree, suffix } => {
            let s = node.snapshots.fresh(repo, &tree)?;
            let (_, b) = s.companions.iter().find(|(x, _)| x == suffix)?;
            Some(Hit {
                blob: hash::parse_blob_id(b)?,
                modified: s.fetched_at,
            })
        }
        kind => {
            let key = format!("{repo}/{path}");
            if pinned_by_snapshot(path) {
                // Simple-named metadata changes in place upstream: serve the bytes the
                // snapshot in service names, by checksum, never a newer upstream copy.
                if let Ok(Some(exp)) = node.store.expected(&key) {
                    let blob = node.store.blob_by_checksum(&exp.checksum).ok()??;
                    return Some(Hit {
                        blob,
                        modified: node.store.blob_meta(&blob).ok()??.stored_at,
                    });
                }
            }
            if let Ok(Some(e)) = node.store.path_entry(&key) {
                let fresh = kind == PathKind::Immutable
                    || !needs_check(e.checked_at, now_secs(), node.snapshots.freshness());
                return fresh.then_some(Hit {
                    blob: e.blob,
                    modified: e.checked_at,
                });
            }
            None
        }
    }
}

/// Metadata files with simple (not checksum-prefixed) names: `repodata/primary.xml.gz` and
/// the like. What they must be comes from the snapshot, not from their upstream freshness.
fn pinned_by_snapshot(path: &RepoPath) -> bool {
    path.kind() == PathKind::Mutable && path.parent_dir().ends_with("repodata/")
}

fn open_hit(node: &Node, hit: &Hit, name: &str) -> Option<(File, FileInfo)> {
    let f = File::open(node.store.blob_path(&hit.blob)).ok()?;
    let len = f.metadata().ok()?.len();
    Some((f, FileInfo::new(&hit.blob, len, hit.modified, name)))
}

// ---------------------------------------------------------------- zero-copy path

enum Head {
    Complete(usize),
    Closed,
    TooLarge,
}

async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>, first: bool) -> io::Result<Head> {
    let mut scanned: usize = 0;
    // One deadline for the whole head (a byte every few seconds does not keep a slot), and
    // a longer one for an idle keep-alive connection before its next request starts.
    let mut deadline =
        tokio::time::Instant::now() + if first { HEAD_TIMEOUT } else { IDLE_TIMEOUT };
    loop {
        if let Some(i) = buf[scanned.saturating_sub(3)..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
        {
            return Ok(Head::Complete(scanned.saturating_sub(3) + i + 4));
        }
        scanned = buf.len();
        if buf.len() >= MAX_HEAD {
            return Ok(Head::TooLarge);
        }
        if !first && !buf.is_empty() {
            deadline = deadline.min(tokio::time::Instant::now() + HEAD_TIMEOUT);
        }
        buf.reserve(4096);
        let n = match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(r) => r?,
            Err(_) => return Ok(Head::Closed),
        };
        if n == 0 {
            return Ok(Head::Closed);
        }
    }
}

async fn connection(mut stream: TcpStream, node: Arc<Node>) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut first = true;
    loop {
        let head_len = match read_head(&mut stream, &mut buf, first).await {
            Ok(Head::Complete(n)) => n,
            Ok(Head::TooLarge) => {
                let _ = send_all(&stream, b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n", false).await;
                return;
            }
            Ok(Head::Closed) | Err(_) => return,
        };
        first = false;
        match fast_path(&node, &stream, &buf[..head_len]).await {
            Fast::Served { keep_alive: true } => {
                buf.drain(..head_len);
            }
            Fast::Served { keep_alive: false } | Fast::Broken => return,
            Fast::NotMine => break,
        }
    }
    let io = TokioIo::new(Rewind {
        pre: buf,
        at: 0,
        inner: stream,
    });
    let svc = hyper::service::service_fn(move |req| {
        let node = node.clone();
        async move { Ok::<_, Infallible>(handle(node, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(HYPER_BUF)
        .keep_alive(true)
        .serve_connection(io, svc);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

enum Fast {
    Served {
        keep_alive: bool,
    },
    /// The client went away or the socket failed mid-answer.
    Broken,
    /// Not a plain hit: hyper takes over.
    NotMine,
}

async fn fast_path(node: &Node, stream: &TcpStream, head: &[u8]) -> Fast {
    let mut headers = [httparse::EMPTY_HEADER; 48];
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
    let mut c = Conditions::default();
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    for h in req.headers.iter() {
        let v = std::str::from_utf8(h.value).ok();
        let n = h.name;
        if n.eq_ignore_ascii_case("range") {
            c.range = v;
        } else if n.eq_ignore_ascii_case("if-range") {
            c.if_range = v;
        } else if n.eq_ignore_ascii_case("if-none-match") {
            c.if_none_match = v;
        } else if n.eq_ignore_ascii_case("if-modified-since") {
            c.if_modified_since = v;
        } else if n.eq_ignore_ascii_case("connection") {
            let v = v.unwrap_or("").to_ascii_lowercase();
            conn_close |= v.contains("close");
            conn_keep_alive |= v.contains("keep-alive");
        } else if n.eq_ignore_ascii_case("transfer-encoding")
            || n.eq_ignore_ascii_case("expect")
            || n.eq_ignore_ascii_case("upgrade")
            || (n.eq_ignore_ascii_case("content-length") && h.value != b"0")
        {
            return Fast::NotMine;
        }
    }
    let path_only = target.split('?').next().unwrap_or(target);
    let Ok((repo, path)) = paths::parse_request_path(path_only) else {
        return Fast::NotMine;
    };
    if node.cfg.repo(&repo).is_none() {
        return Fast::NotMine;
    }
    let Some(hit) = stored_hit(node, &repo, &path) else {
        return Fast::NotMine;
    };
    let Some((file, info)) = open_hit(node, &hit, path.file_name()) else {
        return Fast::NotMine;
    };
    let plan = respond::plan(&c, &info);
    let body = match &plan {
        Plan::Full => Some(0..info.len),
        Plan::Single(r) => Some(r.clone()),
        Plan::Multi(_) => return Fast::NotMine,
        Plan::NotModified | Plan::Unsatisfiable => None,
    };
    let keep_alive = if version == 1 {
        !conn_close
    } else {
        conn_keep_alive && !conn_close
    };
    let status = plan.status();
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = String::with_capacity(320);
    out.push_str("HTTP/1.1 ");
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
    if !keep_alive {
        out.push_str("connection: close\r\n");
    } else if version == 0 {
        out.push_str("connection: keep-alive\r\n");
    }
    out.push_str("\r\n");
    Stats::inc(&node.stats.requests);
    Stats::inc(&node.stats.hits);
    Stats::inc(&node.stats.zero_copy_responses);
    node.store.touch(&hit.blob);
    let body = body.filter(|r| !head_only && r.end > r.start);
    if send_all(stream, out.as_bytes(), body.is_some())
        .await
        .is_err()
    {
        return Fast::Broken;
    }
    if let Some(r) = body {
        let n = r.end - r.start;
        if sendfile_all(stream, &file, r).await.is_err() {
            return Fast::Broken;
        }
        Stats::add(&node.stats.bytes_served, n);
    }
    Fast::Served { keep_alive }
}

/// Writes all of `bytes`; `more` tells the kernel a body follows (MSG_MORE), so headers and
/// the start of the body leave in the same segment.
async fn send_all(stream: &TcpStream, mut bytes: &[u8], more: bool) -> io::Result<()> {
    let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    while !bytes.is_empty() {
        let n = stream
            .async_io(Interest::WRITABLE, || {
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
            })
            .await?;
        bytes = &bytes[n..];
    }
    Ok(())
}

/// Sends `r` of `file` on the socket with sendfile(2): no copy through user space.
async fn sendfile_all(stream: &TcpStream, file: &File, r: Range<u64>) -> io::Result<()> {
    let mut off = r.start as libc::off_t;
    let end = r.end as libc::off_t;
    while off < end {
        let n = stream
            .async_io(Interest::WRITABLE, || {
                let count = ((end - off) as usize).min(1 << 30);
                // SAFETY: both fds are open for the duration; `off` is a valid off_t the call updates.
                let r = unsafe {
                    libc::sendfile(stream.as_raw_fd(), file.as_raw_fd(), &mut off, count)
                };
                if r < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(r as usize)
                }
            })
            .await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "blob shorter than its length",
            ));
        }
    }
    Ok(())
}

/// An IO that first yields bytes already read, then reads from the socket.
struct Rewind {
    pre: Vec<u8>,
    at: usize,
    inner: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.pre.len() {
            let n = (self.pre.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.pre[at..at + n]);
            self.at += n;
            if self.at == self.pre.len() {
                self.pre = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

// ---------------------------------------------------------------- hyper path

/// Owned copies of the request fields [`Conditions`] borrows.
#[derive(Default, Clone)]
struct OwnedConditions {
    head: bool,
    range: Option<String>,
    if_range: Option<String>,
    if_none_match: Option<String>,
    if_modified_since: Option<String>,
}

impl OwnedConditions {
    fn from_headers(head: bool, h: &HeaderMap) -> Self {
        let get =
            |n: header::HeaderName| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        Self {
            head,
            range: get(header::RANGE),
            if_range: get(header::IF_RANGE),
            if_none_match: get(header::IF_NONE_MATCH),
            if_modified_since: get(header::IF_MODIFIED_SINCE),
        }
    }
    fn borrow(&self) -> Conditions<'_> {
        Conditions {
            range: self.range.as_deref(),
            if_range: self.if_range.as_deref(),
            if_none_match: self.if_none_match.as_deref(),
            if_modified_since: self.if_modified_since.as_deref(),
        }
    }
}

async fn handle(node: Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    Stats::inc(&node.stats.requests);
    let path = req.uri().path().to_string();
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return ServeError::Method.response(&node.stats);
    }
    let mut resp = match path.as_str() {
        "/" => {
            let mut r = Response::new(full(DASHBOARD));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        "/api/status" => {
            let node2 = node.clone();
            let body = tokio::task::spawn_blocking(move || node2.status().to_string())
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
            let body = tokio::task::spawn_blocking(move || node2.metrics())
                .await
                .unwrap_or_default();
            let mut r = Response::new(full(body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        _ => {
            let conds = OwnedConditions::from_headers(head, req.headers());
            match repo_request(&node, &path, conds).await {
                Ok(r) => r,
                Err(e) => {
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

async fn repo_request(
    node: &Arc<Node>,
    raw: &str,
    c: OwnedConditions,
) -> Result<Response<Body>, ServeError> {
    let (repo, path) = paths::parse_request_path(raw)?;
    if node.cfg.repo(&repo).is_none() {
        return Err(ServeError::NotFound);
    }
    let name = path.file_name().to_string();
    match path.kind() {
        PathKind::RepoMd { tree } => {
            let s = node
                .snapshots
                .current(&repo, &tree)
                .await
                .map_err(ServeError::Snapshot)?;
            let blob = hash::parse_blob_id(&s.repomd)
                .ok_or_else(|| ServeError::Internal("bad snapshot row".into()))?;
            serve_stored(
                node,
                &Hit {
                    blob,
                    modified: s.fetched_at,
                },
                &name,
                &c,
            )
            .ok_or_else(|| {
                ServeError::Internal(
                    "the snapshot's repomd.xml is missing from the store: run `lanmirror verify`"
                        .into(),
                )
            })
        }
        PathKind::RepoMdCompanion { tree, suffix } => {
            let s = node
                .snapshots
                .current(&repo, &tree)
                .await
                .map_err(ServeError::Snapshot)?;
            let (_, b) = s
                .companions
                .iter()
                .find(|(x, _)| x == suffix)
                .ok_or(ServeError::NotFound)?;
            let blob = hash::parse_blob_id(b)
                .ok_or_else(|| ServeError::Internal("bad snapshot row".into()))?;
            serve_stored(
                node,
                &Hit {
                    blob,
                    modified: s.fetched_at,
                },
                &name,
                &c,
            )
            .ok_or(ServeError::NotFound)
        }
        kind => {
            if let Some(hit) = stored_hit(node, &repo, &path)
                && let Some(r) = serve_stored(node, &hit, &name, &c)
            {
                return Ok(r);
            }
            let key = format!("{repo}/{path}");
            let store_err = |e: crate::store::StoreError| ServeError::Internal(e.to_string());
            let entry = node.store.path_entry(&key).map_err(store_err)?;
            let expected = node.store.expected(&key).map_err(store_err)?;
            let pinned = pinned_by_snapshot(&path) && expected.is_some();
            if kind == PathKind::Mutable
                && !pinned
                && let Some(e) = entry
            {
                return revalidate(node, &repo, path, e, &c).await;
            }
            // The same bytes may be stored under another path (e.g. /9/ and /9.6/).
            if let Some(exp) = &expected
                && let Some(blob) = node
                    .store
                    .blob_by_checksum(&exp.checksum)
                    .map_err(store_err)?
                && node.store.blob_path(&blob).exists()
            {
                let now = now_secs();
                let mut b = crate::store::Batch::new();
                b.set_path(
                    key,
                    PathEntry {
                        blob,
                        checked_at: now,
                        etag: None,
                        last_modified: None,
                    },
                );
                node.store.commit(b).await.map_err(store_err)?;
                if let Some(r) = serve_stored(
                    node,
                    &Hit {
                        blob,
                        modified: now,
                    },
                    &name,
                    &c,
                ) {
                    return Ok(r);
                }
            }
            let t = node.fetcher.start(Item {
                repo,
                path,
                expected,
                publish: true,
                revalidate: None,
                site: true,
            });
            stream_transfer(node, t, &name, &c).await
        }
    }
}

/// A mutable file whose stored copy is older than the freshness window.
async fn revalidate(
    node: &Arc<Node>,
    repo: &str,
    path: RepoPath,
    e: PathEntry,
    c: &OwnedConditions,
) -> Result<Response<Body>, ServeError> {
    let name = path.file_name().to_string();
    let key = format!("{repo}/{path}");
    let stale = Hit {
        blob: e.blob,
        modified: e.checked_at,
    };
    if node.fetcher.upstream().is_offline(repo) {
        Stats::inc(&node.stats.stale_served);
        return serve_stored(node, &stale, &name, c).ok_or(ServeError::NotFound);
    }
    let t = node.fetcher.start(Item {
        repo: repo.to_string(),
        path,
        expected: None,
        publish: true,
        revalidate: Some((e.etag.clone(), e.last_modified.clone())),
        site: false,
    });
    match t.started().await {
        Phase::NotModified => {
            let mut b = crate::store::Batch::new();
            let now = now_secs();
            b.set_path(
                key,
                PathEntry {
                    checked_at: now,
                    ..e
                },
            );
            node.store
                .commit(b)
                .await
                .map_err(|e| ServeError::Internal(e.to_string()))?;
            serve_stored(
                node,
                &Hit {
                    blob: stale.blob,
                    modified: now,
                },
                &name,
                c,
            )
            .ok_or(ServeError::NotFound)
        }
        Phase::Failed(err) if !err.is_not_found() => {
            Stats::inc(&node.stats.stale_served);
            tracing::debug!(repo, error = %err, "revalidation failed; serving the stored copy");
            serve_stored(node, &stale, &name, c).ok_or(ServeError::Fetch(err))
        }
        _ => stream_transfer(node, t, &name, c).await,
    }
}

/// Answers from a running transfer: bytes as they arrive for a plain GET; ranged and
/// conditional requests wait for the stored file.
async fn stream_transfer(
    node: &Arc<Node>,
    t: Arc<Transfer>,
    name: &str,
    c: &OwnedConditions,
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
                return serve_stored(
                    node,
                    &Hit {
                        blob: d.blob,
                        modified: now_secs(),
                    },
                    name,
                    c,
                )
                .ok_or_else(|| ServeError::Internal("stored file vanished".into()));
            }
            Finished::NotModified => {
                return Err(ServeError::Internal("unexpected 304 from a fetch".into()));
            }
        },
    };
    let stats = node.stats.clone();
    let body = t
        .reader(node.store.clone())
        .inspect_ok(move |b| Stats::add(&stats.bytes_served, b.len() as u64));
    // HEAD: `handle` swaps the body for an empty one; the stream is never polled.
    let mut r = Response::new(stream_body(body));
    let h = r.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(respond::content_type(name)) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Some(n) = total {
        h.insert(header::CONTENT_LENGTH, header::HeaderValue::from(n));
    }
    Ok(r)
}

fn stream_body(s: impl Stream<Item = io::Result<Bytes>> + Send + 'static) -> Body {
    StreamBody::new(s.map_ok(Frame::data)).boxed_unsync()
}

/// Answers from a stored blob; `None` when its file is gone (the caller treats that as a miss).
fn serve_stored(node: &Node, hit: &Hit, name: &str, c: &OwnedConditions) -> Option<Response<Body>> {
    let (file, info) = open_hit(node, hit, name)?;
    let plan = respond::plan(&c.borrow(), &info);
    let file = Arc::new(file);
    let body = match &plan {
        Plan::Full => stream_body(file_range(file, 0..info.len)),
        Plan::Single(r) => stream_body(file_range(file, r.clone())),
        Plan::Multi(rs) => {
            let parts: Vec<_> = rs
                .iter()
                .map(|r| {
                    let hdr = crate::range::part_header(BOUNDARY, info.content_type, r, info.len);
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
    };
    Stats::inc(&node.stats.hits);
    if !c.head {
        Stats::add(&node.stats.bytes_served, plan.body_len(&info));
    }
    node.store.touch(&hit.blob);
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

const DASHBOARD: &str = "<!doctype html><html><head><meta charset=utf-8><title>lanmirror</title></head>\
<body><h1>lanmirror</h1><p>This node caches RPM repositories for the site. \
Point dnf at <code>http://THIS-HOST:PORT/&lt;repo&gt;/…</code>.</p>\
<p><a href=\"/api/status\">status (JSON)</a> · <a href=\"/metrics\">metrics (Prometheus)</a></p></body></html>\n";
