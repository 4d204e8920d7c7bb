//! [`Upstream`]: a real HTTP/1.1 file server on 127.0.0.1 standing in for an
//! RPM mirror, with a request log and fault injection settable at run time.
//!
//! Built on hyper 1 + hyper-util with its own tokio runtime on a background
//! thread; dropping the `Upstream` shuts it down. Serves files under `root`
//! (GET/HEAD; 404 otherwise) with Content-Length, Last-Modified, a strong
//! ETag, `If-None-Match` / `If-Modified-Since` (304), single `Range`s (206,
//! 416) and `If-Range`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

type Body = UnsyncBoxBody<Bytes, io::Error>;
type FrameStream = Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, io::Error>> + Send>>;

/// The HTML answered by [`Upstream::serve_html`].
pub const PORTAL_HTML: &str = "<!DOCTYPE html>\n<html><head><title>Hotel WiFi - Login</title></head>\n\
<body><h1>Welcome!</h1><p>Please accept the terms of use to access the internet.</p>\n\
<form method=\"post\" action=\"/login\"><button>Accept</button></form></body></html>\n";

/// Longest a stalled body (see [`Upstream::stall_after`]) is held open.
pub const MAX_STALL: Duration = Duration::from_secs(120);

/// One request as seen by the upstream.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    /// URI path (no query), as received (not percent-decoded).
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<String>,
    /// All request headers, names lowercased by hyper.
    pub headers: Vec<(String, String)>,
    pub status: u16,
    /// When the request head arrived.
    pub at: Instant,
}

#[derive(Debug, Clone)]
struct Rule {
    sub: String,
    bytes: u64,
    remaining: u32,
}

#[derive(Debug, Default)]
struct Faults {
    throttle: Option<u64>,
    cuts: Vec<Rule>,
    stalls: Vec<Rule>,
    fail_503: Vec<Rule>,
    html: Vec<String>,
    header_delay: Option<(String, Duration)>,
    /// Paths whose Range headers are ignored (a full 200 answer instead of 206).
    no_ranges: Vec<String>,
}

impl Faults {
    /// Consumes one use of the first live rule whose substring is in `path`.
    fn take(rules: &mut Vec<Rule>, path: &str) -> Option<u64> {
        let r = rules
            .iter_mut()
            .find(|r| r.remaining > 0 && path.contains(&r.sub))?;
        r.remaining -= 1;
        let bytes = r.bytes;
        rules.retain(|r| r.remaining > 0);
        Some(bytes)
    }
}

#[derive(Default)]
struct Shared {
    faults: Arc<Mutex<Faults>>,
    log: Mutex<Vec<Logged>>,
}

enum Cmd {
    SetDown(bool, std::sync::mpsc::Sender<()>),
    Shutdown,
}

/// A file server for `root` on `127.0.0.1:<port>` (or an address in a network namespace,
/// [`Upstream::start_in_netns`]).
pub struct Upstream {
    port: u16,
    /// The address it listens on (`127.0.0.1` unless started in a namespace).
    host: String,
    root: PathBuf,
    shared: Arc<Shared>,
    cmd: mpsc::UnboundedSender<Cmd>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    /// Serves `root` on a fresh port of 127.0.0.1.
    pub fn start(root: &Path) -> Upstream {
        Self::start_on(root, 0)
    }

    /// Serves `root` on `127.0.0.1:port` (0 = any free port).
    pub fn start_on(root: &Path, port: u16) -> Upstream {
        Self::start_at(root, SocketAddr::from(([127, 0, 0, 1], port)), None)
    }

    /// Serves `root` on `ip:port` inside the network namespace `ns` (an `ip netns` name): the
    /// server's thread enters `ns` (`setns`) before making its listener; accepted connections
    /// belong to the listener's namespace. Everything else (request log, faults, `set_down`)
    /// works as for [`Upstream::start`].
    pub fn start_in_netns(root: &Path, ns: &str, ip: Ipv4Addr, port: u16) -> Upstream {
        Self::start_at(root, SocketAddr::from((ip, port)), Some(ns.to_string()))
    }

    fn start_at(root: &Path, addr: SocketAddr, netns: Option<String>) -> Upstream {
        let root = root
            .canonicalize()
            .unwrap_or_else(|e| panic!("upstream root {}: {e}", root.display()));
        let shared = Arc::new(Shared::default());
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let thread = {
            let shared = shared.clone();
            let root = root.clone();
            std::thread::Builder::new()
                .name("upstream".into())
                .spawn(move || {
                    // Built before entering a namespace: building the first runtime of the
                    // process makes tokio's process-wide signal socketpair, which would
                    // otherwise live in (and keep alive) that namespace forever.
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .expect("upstream runtime");
                    // Sockets keep the namespace they were made in: the listener (and its
                    // re-binds after `set_down(false)`) is made on this thread, in `block_on`.
                    if let Some(ns) = &netns
                        && let Err(e) = super::netns::enter(ns)
                    {
                        let _ = port_tx.send(Err(e));
                        return;
                    }
                    rt.block_on(async move {
                        let listener = match bind(addr) {
                            Ok(l) => l,
                            Err(e) => {
                                let _ = port_tx.send(Err(e));
                                return;
                            }
                        };
                        let addr = listener.local_addr().unwrap();
                        let _ = port_tx.send(Ok(addr.port()));
                        run(listener, addr, root, shared, cmd_rx).await;
                    });
                    rt.shutdown_timeout(Duration::from_secs(2));
                })
                .unwrap()
        };
        let port = match port_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => panic!("upstream: bind {addr}: {e}"),
            Err(e) => panic!("upstream did not start: {e}"),
        };
        Upstream {
            port,
            host: addr.ip().to_string(),
            root,
            shared,
            cmd: cmd_tx,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>/` (`http://<ip>:<port>/` in a namespace).
    pub fn url(&self) -> String {
        format!("http://{}:{}/", self.host, self.port)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every request so far, in arrival order of completion of their heads.
    pub fn requests(&self) -> Vec<Logged> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Number of GET requests whose path contains `path_substring`.
    pub fn count(&self, path_substring: &str) -> usize {
        self.shared
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.method == "GET" && l.path.contains(path_substring))
            .count()
    }

    /// Number of requests of any method whose path contains `path_substring`.
    pub fn count_any(&self, path_substring: &str) -> usize {
        self.shared
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.path.contains(path_substring))
            .count()
    }

    pub fn clear_log(&self) {
        self.shared.log.lock().unwrap().clear();
    }

    /// Paces every response body to `bytes_per_sec` (None = full speed).
    /// Takes effect immediately, also for bodies already being sent.
    pub fn throttle(&self, bytes_per_sec: Option<u64>) {
        assert!(
            bytes_per_sec != Some(0),
            "throttle(Some(0)): use stall_after"
        );
        self.shared.faults.lock().unwrap().throttle = bytes_per_sec;
    }

    /// For the next `times` GETs whose path contains `path_substring`: full
    /// headers (real Content-Length) but the connection is dropped after
    /// `bytes` body bytes (or at the end of a shorter body).
    pub fn cut_after(&self, path_substring: &str, bytes: u64, times: u32) {
        self.shared.faults.lock().unwrap().cuts.push(Rule {
            sub: path_substring.into(),
            bytes,
            remaining: times,
        });
    }

    /// For the next `times` matching GETs: send `bytes` body bytes, then
    /// nothing (connection held open) until the client gives up, the server
    /// goes down or [`MAX_STALL`] passes.
    pub fn stall_after(&self, path_substring: &str, bytes: u64, times: u32) {
        self.shared.faults.lock().unwrap().stalls.push(Rule {
            sub: path_substring.into(),
            bytes,
            remaining: times,
        });
    }

    /// Answers 503 to the next `times` requests (any method) whose path
    /// contains `path_substring`.
    pub fn fail_503(&self, path_substring: &str, times: u32) {
        self.shared.faults.lock().unwrap().fail_503.push(Rule {
            sub: path_substring.into(),
            bytes: 0,
            remaining: times,
        });
    }

    /// While on, answers matching requests with 200 `text/html` (a
    /// captive-portal page, [`PORTAL_HTML`]) instead of the file.
    pub fn serve_html(&self, path_substring: &str, on: bool) {
        let mut f = self.shared.faults.lock().unwrap();
        f.html.retain(|s| s != path_substring);
        if on {
            f.html.push(path_substring.into());
        }
    }

    /// While on, Range requests for matching paths get the whole file with 200,
    /// as some mirrors and proxies do.
    pub fn ignore_ranges(&self, path_substring: &str, on: bool) {
        let mut f = self.shared.faults.lock().unwrap();
        f.no_ranges.retain(|s| s != path_substring);
        if on {
            f.no_ranges.push(path_substring.into());
        }
    }

    /// Delays the response head of matching requests by `delay` (None = off).
    pub fn delay_headers(&self, path_substring: &str, delay: Option<Duration>) {
        self.shared.faults.lock().unwrap().header_delay =
            delay.map(|d| (path_substring.to_string(), d));
    }

    /// Clears every fault (throttle, cuts, stalls, 503s, html, delays).
    pub fn clear_faults(&self) {
        *self.shared.faults.lock().unwrap() = Faults::default();
    }

    /// `true`: close the listener (new connections get ECONNREFUSED) and drop
    /// every open connection. `false`: listen again on the same port.
    /// Returns once done.
    pub fn set_down(&self, down: bool) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.cmd
            .send(Cmd::SetDown(down, tx))
            .expect("upstream thread is gone");
        rx.recv_timeout(Duration::from_secs(15))
            .expect("upstream did not acknowledge set_down");
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.cmd.send(Cmd::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(1024)
}

async fn bind_retry(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match bind(addr) {
            Ok(l) => return l,
            Err(e) if Instant::now() >= deadline => panic!("upstream: re-bind {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn accept(l: &Option<TcpListener>) -> io::Result<TcpStream> {
    match l {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

async fn run(
    listener: TcpListener,
    addr: SocketAddr,
    root: PathBuf,
    shared: Arc<Shared>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
) {
    let root = Arc::new(root);
    let mut listener = Some(listener);
    let mut conns: JoinSet<()> = JoinSet::new();
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                None | Some(Cmd::Shutdown) => break,
                Some(Cmd::SetDown(true, ack)) => {
                    listener = None;
                    conns.abort_all();
                    while conns.join_next().await.is_some() {}
                    let _ = ack.send(());
                }
                Some(Cmd::SetDown(false, ack)) => {
                    if listener.is_none() {
                        listener = Some(bind_retry(addr).await);
                    }
                    let _ = ack.send(());
                }
            },
            res = accept(&listener) => {
                if let Ok(stream) = res {
                    conns.spawn(serve_conn(stream, root.clone(), shared.clone()));
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

async fn serve_conn(stream: TcpStream, root: Arc<PathBuf>, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let svc = service_fn(move |req| {
        let root = root.clone();
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(req, &root, &shared).await) }
    });
    let _ = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

fn hdr(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_string())
}

async fn handle(req: Request<Incoming>, root: &Path, shared: &Shared) -> http::Response<Body> {
    let at = Instant::now();
    let path = req.uri().path().to_string();
    let h = req.headers();
    let mut entry = Logged {
        method: req.method().to_string(),
        path: path.clone(),
        range: hdr(h, "range"),
        if_range: hdr(h, "if-range"),
        if_none_match: hdr(h, "if-none-match"),
        if_modified_since: hdr(h, "if-modified-since"),
        headers: h
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect(),
        status: 0,
        at,
    };
    let delay = {
        let f = shared.faults.lock().unwrap();
        f.header_delay
            .as_ref()
            .filter(|(s, _)| path.contains(s.as_str()))
            .map(|(_, d)| *d)
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let resp = respond(&req, &entry, root, shared).await;
    entry.status = resp.status().as_u16();
    shared.log.lock().unwrap().push(entry);
    resp
}

fn simple(status: StatusCode, ctype: &str, body: &str) -> http::Response<Body> {
    http::Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, ctype)
        .header(header::CONTENT_LENGTH, body.len())
        .body(full(Bytes::from(body.to_string())))
        .unwrap()
}

fn full(b: Bytes) -> Body {
    Full::new(b)
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

async fn respond(
    req: &Request<Incoming>,
    e: &Logged,
    root: &Path,
    shared: &Shared,
) -> http::Response<Body> {
    let path = e.path.as_str();
    let is_head = req.method() == Method::HEAD;
    {
        let mut f = shared.faults.lock().unwrap();
        if Faults::take(&mut f.fail_503, path).is_some() {
            return simple(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "503 Service Unavailable (injected)\n",
            );
        }
        if f.html.iter().any(|s| path.contains(s.as_str())) {
            let mut r = simple(StatusCode::OK, "text/html; charset=utf-8", PORTAL_HTML);
            if is_head {
                *r.body_mut() = full(Bytes::new());
            }
            return r;
        }
    }
    if req.method() != Method::GET && !is_head {
        let mut r = simple(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, "GET, HEAD".parse().unwrap());
        return r;
    }
    let Some(file) = resolve(root, path) else {
        return simple(StatusCode::NOT_FOUND, "text/plain", "not found\n");
    };
    let Ok(meta) = tokio::fs::metadata(&file).await else {
        return simple(StatusCode::NOT_FOUND, "text/plain", "not found\n");
    };
    if !meta.is_file() {
        return simple(StatusCode::NOT_FOUND, "text/plain", "not found\n");
    }
    let len = meta.len();
    let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
    let mdur = mtime.duration_since(UNIX_EPOCH).unwrap_or_default();
    let etag = format!(
        "\"{:x}-{:x}-{:x}\"",
        mdur.as_secs(),
        mdur.subsec_nanos(),
        len
    );
    let last_modified = fmt_http_date(mdur.as_secs());

    let base = |status: StatusCode| {
        http::Response::builder()
            .status(status)
            .header(header::ETAG, etag.as_str())
            .header(header::LAST_MODIFIED, last_modified.as_str())
            .header(header::ACCEPT_RANGES, "bytes")
            .header(header::CONTENT_TYPE, content_type(path))
    };

    // Conditional GET: If-None-Match wins over If-Modified-Since.
    let not_modified = if let Some(inm) = &e.if_none_match {
        inm.trim() == "*"
            || inm
                .split(',')
                .any(|t| t.trim().trim_start_matches("W/") == etag)
    } else if let Some(ims) = e.if_modified_since.as_deref().and_then(parse_http_date) {
        mdur.as_secs() <= ims
    } else {
        false
    };
    if not_modified {
        return base(StatusCode::NOT_MODIFIED)
            .body(full(Bytes::new()))
            .unwrap();
    }

    // Range, subject to If-Range (strong match on ETag, or exact date).
    let ignore = {
        let f = shared.faults.lock().unwrap();
        f.no_ranges.iter().any(|s| e.path.contains(s.as_str()))
    };
    let mut range = e
        .range
        .as_deref()
        .filter(|_| !ignore)
        .map(|r| parse_range(r, len));
    if let (Some(_), Some(ir)) = (&range, &e.if_range) {
        let ir = ir.trim();
        let matches = if ir.starts_with('"') {
            ir == etag
        } else if ir.starts_with("W/") {
            false
        } else {
            ir == last_modified
        };
        if !matches {
            range = None;
        }
    }
    let (status, start, end) = match range {
        Some(RangeReq::Ok(s, end)) => (StatusCode::PARTIAL_CONTENT, s, end),
        Some(RangeReq::Unsatisfiable) => {
            return base(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .header(header::CONTENT_LENGTH, 0)
                .body(full(Bytes::new()))
                .unwrap();
        }
        Some(RangeReq::Ignore) | None => (StatusCode::OK, 0, len),
    };
    let mut builder = base(status).header(header::CONTENT_LENGTH, end - start);
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", end - 1),
        );
    }
    if is_head {
        return builder.body(full(Bytes::new())).unwrap();
    }
    let data = match tokio::fs::read(&file).await {
        Ok(d) => Bytes::from(d),
        Err(_) => return simple(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    };
    // The file may have changed between stat and read; never send more than
    // Content-Length promises.
    let end_in_data = (end as usize).min(data.len());
    let body = data.slice((start as usize).min(end_in_data)..end_in_data);
    let (cut, stall) = {
        let mut f = shared.faults.lock().unwrap();
        let cut = Faults::take(&mut f.cuts, path);
        let stall = if cut.is_none() {
            Faults::take(&mut f.stalls, path)
        } else {
            None
        };
        (cut, stall)
    };
    let stream = body_stream(body, cut, stall, shared.faults.clone());
    builder
        .body(StreamBody::new(stream).boxed_unsync())
        .unwrap()
}

enum RangeReq {
    /// [start, end) within the file.
    Ok(u64, u64),
    Unsatisfiable,
    /// Malformed or multi-range: serve the whole file.
    Ignore,
}

fn parse_range(v: &str, len: u64) -> RangeReq {
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return RangeReq::Ignore;
    };
    if spec.contains(',') {
        return RangeReq::Ignore;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReq::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix range: the last N bytes.
        let Ok(n) = b.parse::<u64>() else {
            return RangeReq::Ignore;
        };
        if n == 0 || len == 0 {
            return RangeReq::Unsatisfiable;
        }
        return RangeReq::Ok(len.saturating_sub(n), len);
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeReq::Ignore;
    };
    let end = if b.is_empty() {
        len
    } else {
        match b.parse::<u64>() {
            Ok(last) if last >= start => (last + 1).min(len),
            _ => return RangeReq::Ignore,
        }
    };
    if start >= len {
        return RangeReq::Unsatisfiable;
    }
    RangeReq::Ok(start, end)
}

fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(path)?;
    let mut p = root.to_path_buf();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => return None,
            s => p.push(s),
        }
    }
    Some(p)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit('.').next().unwrap_or("");
    match ext {
        "rpm" => "application/x-rpm",
        "xml" => "application/xml",
        "gz" => "application/gzip",
        "bz2" => "application/x-bzip2",
        "xz" => "application/x-xz",
        "zst" => "application/zstd",
        "html" => "text/html",
        "txt" => "text/plain",
        _ => "application/octet-stream",
    }
}

struct BodyState {
    data: Bytes,
    pos: usize,
    cut: Option<usize>,
    stall: Option<usize>,
    faults: Arc<Mutex<Faults>>,
    done: bool,
}

/// The response body: chunks paced by the current throttle, ending early with
/// an error (hyper then drops the connection) for a cut, or hanging for a stall.
fn body_stream(
    data: Bytes,
    cut: Option<u64>,
    stall: Option<u64>,
    faults: Arc<Mutex<Faults>>,
) -> FrameStream {
    let st = BodyState {
        pos: 0,
        cut: cut.map(|c| c.min(data.len() as u64) as usize),
        stall: stall.map(|c| c.min(data.len() as u64) as usize),
        data,
        faults,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        let limit = st
            .data
            .len()
            .min(st.cut.unwrap_or(usize::MAX))
            .min(st.stall.unwrap_or(usize::MAX));
        if st.pos >= limit {
            st.done = true;
            if st.cut.is_some() {
                // Let hyper flush the bytes already handed over, then fail the
                // body: hyper aborts the connection without a clean end.
                tokio::time::sleep(Duration::from_millis(30)).await;
                let err = io::Error::new(io::ErrorKind::ConnectionAborted, "injected cut");
                return Some((Err(err), st));
            }
            if st.stall.is_some() {
                tokio::time::sleep(MAX_STALL).await;
                let err = io::Error::new(io::ErrorKind::TimedOut, "injected stall ended");
                return Some((Err(err), st));
            }
            return None;
        }
        let rate = st.faults.lock().unwrap().throttle;
        let chunk = match rate {
            Some(r) => ((r / 20) as usize).clamp(512, 64 * 1024),
            None => 256 * 1024,
        }
        .min(limit - st.pos);
        if let Some(r) = rate {
            tokio::time::sleep(Duration::from_secs_f64(chunk as f64 / r as f64)).await;
        }
        let frame = Frame::data(st.data.slice(st.pos..st.pos + chunk));
        st.pos += chunk;
        Some((Ok(frame), st))
    }))
}

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Days since 1970-01-01 -> (year, month 1..=12, day 1..=31) (H. Hinnant).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds -> IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn fmt_http_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// IMF-fixdate -> Unix seconds (other HTTP date formats are not accepted).
pub fn parse_http_date(s: &str) -> Option<u64> {
    let s = s.trim();
    let (_, rest) = s.split_once(", ")?;
    let mut it = rest.split(' ');
    let d: u32 = it.next()?.parse().ok()?;
    let mon = it.next()?;
    let m = MONTHS.iter().position(|x| *x == mon)? as u32 + 1;
    let y: i64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':');
    let hh: u64 = hms.next()?.parse().ok()?;
    let mm: u64 = hms.next()?.parse().ok()?;
    let ss: u64 = hms.next()?.parse().ok()?;
    if it.next()? != "GMT" || hh > 23 || mm > 59 || ss > 60 || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, m, d);
    u64::try_from(days * 86_400)
        .ok()
        .map(|s| s + hh * 3600 + mm * 60 + ss)
}

/// `SystemTime` -> IMF-fixdate.
pub fn http_date(t: SystemTime) -> String {
    fmt_http_date(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs())
}
