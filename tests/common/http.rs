//! A tiny blocking HTTP/1.1 client over `std::net::TcpStream`.
//!
//! One request per connection (`Connection: close`). Handles Content-Length,
//! chunked and close-delimited bodies; a body cut short by the peer (EOF before
//! the announced length, a reset, or the time limit) yields `complete: false`
//! with whatever bytes arrived.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Default overall time limit of [`http_get`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names keep the exact case in which they were received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// False when the body ended before its announced end (Content-Length not
    /// reached, no terminating chunk, reset, or time limit hit).
    pub complete: bool,
    /// How long the whole exchange took.
    pub elapsed: Duration,
}

impl Response {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of headers with this name (case-insensitive).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
    }
}

/// GET `url` (must be `http://host:port/path`) with extra request headers.
/// Panics if the connection cannot be made or no response head arrives.
pub fn http_get(url: &str, extra_headers: &[(&str, &str)]) -> Response {
    http_request("GET", url, extra_headers, DEFAULT_TIMEOUT)
}

/// Like [`http_get`] with any method and an overall time limit.
pub fn http_request(
    method: &str,
    url: &str,
    extra_headers: &[(&str, &str)],
    timeout: Duration,
) -> Response {
    match try_http_request(method, url, extra_headers, timeout) {
        Ok(r) => r,
        Err(e) => panic!("{method} {url} failed: {e}"),
    }
}

/// Like [`http_request`] but returns the error when connecting fails or no
/// complete response head arrives (e.g. `ConnectionRefused`).
pub fn try_http_request(
    method: &str,
    url: &str,
    extra_headers: &[(&str, &str)],
    timeout: Duration,
) -> io::Result<Response> {
    try_http_request_from(None, method, url, extra_headers, timeout)
}

/// Like [`try_http_request`], connecting from the local address `src` when given (see
/// [`super::raw::connect_from`]).
pub fn try_http_request_from(
    src: Option<std::net::IpAddr>,
    method: &str,
    url: &str,
    extra_headers: &[(&str, &str)],
    timeout: Duration,
) -> io::Result<Response> {
    let start = Instant::now();
    let deadline = start + timeout;
    let (hostport, path) = split_url(url)?;
    let addr = hostport
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("cannot resolve {hostport}")))?;
    let stream = match src {
        Some(ip) => super::raw::connect_from(ip, addr)?,
        None => TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(10)))?,
    };
    stream.set_nodelay(true).ok();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {hostport}\r\n");
    let has = |n: &str| extra_headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    if !has("connection") {
        req.push_str("Connection: close\r\n");
    }
    if !has("user-agent") {
        req.push_str("User-Agent: lanmirror-test-kit\r\n");
    }
    for (k, v) in extra_headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
        pos: 0,
        deadline,
        eof: false,
    };
    conn.stream.write_all(req.as_bytes())?;

    // Response head (skipping interim 1xx responses).
    let (status, headers) = loop {
        let head = conn.read_head()?;
        let (status, headers) = parse_head(&head)?;
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        break (status, headers);
    };
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.trim().to_string())
    };
    let mut body = Vec::new();
    let complete = if method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304 {
        true
    } else if get("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        conn.read_chunked(&mut body)
    } else if let Some(cl) = get("content-length") {
        let len: usize = cl
            .parse()
            .map_err(|_| io::Error::other(format!("bad Content-Length {cl:?}")))?;
        conn.read_n(len, &mut body)
    } else {
        conn.read_to_end(&mut body)
    };
    Ok(Response {
        status,
        headers,
        body,
        complete,
        elapsed: start.elapsed(),
    })
}

/// Splits `http://host:port/path?q` into (`host:port`, `/path?q`).
fn split_url(url: &str) -> io::Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| io::Error::other(format!("only http:// URLs are supported: {url}")))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    Ok((hostport, path.to_string()))
}

fn parse_head(head: &[u8]) -> io::Result<(u16, Vec<(String, String)>)> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(io::Error::other(format!("bad status line {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| io::Error::other(format!("bad header line {line:?}")))?;
        headers.push((k.to_string(), v.trim().to_string()));
    }
    Ok((status, headers))
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    deadline: Instant,
    eof: bool,
}

impl Conn {
    /// Reads more bytes into the buffer; Ok(0) at EOF. Errors on time limit.
    fn fill(&mut self) -> io::Result<usize> {
        if self.eof {
            return Ok(0);
        }
        let now = Instant::now();
        if now >= self.deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "time limit"));
        }
        self.stream
            .set_read_timeout(Some((self.deadline - now).max(Duration::from_millis(1))))?;
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let mut tmp = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(0);
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock) => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "time limit"));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn avail(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn read_head(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = find(self.avail(), b"\r\n\r\n") {
                let head = self.avail()[..i].to_vec();
                self.pos += i + 4;
                return Ok(head);
            }
            if self.avail().len() > 256 * 1024 {
                return Err(io::Error::other("response head too large"));
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a complete response head ({} bytes received)",
                        self.avail().len()
                    ),
                ));
            }
        }
    }

    /// Reads exactly `n` body bytes; false if the stream ended or failed first.
    fn read_n(&mut self, n: usize, out: &mut Vec<u8>) -> bool {
        while out.len() < n {
            if self.pos == self.buf.len() {
                match self.fill() {
                    Ok(0) | Err(_) => return false,
                    Ok(_) => {}
                }
            }
            let take = (n - out.len()).min(self.buf.len() - self.pos);
            out.extend_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
        }
        true
    }

    fn read_to_end(&mut self, out: &mut Vec<u8>) -> bool {
        loop {
            out.extend_from_slice(self.avail());
            self.pos = self.buf.len();
            match self.fill() {
                Ok(0) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }

    fn read_line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = find(self.avail(), b"\r\n") {
                let line = String::from_utf8_lossy(&self.avail()[..i]).into_owned();
                self.pos += i + 2;
                return Some(line);
            }
            match self.fill() {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    fn read_chunked(&mut self, out: &mut Vec<u8>) -> bool {
        // Bounded: each iteration consumes at least one line of input.
        for _ in 0..10_000_000 {
            let Some(line) = self.read_line() else {
                return false;
            };
            let size_str = line.split(';').next().unwrap_or("").trim();
            let Ok(size) = usize::from_str_radix(size_str, 16) else {
                return false;
            };
            if size == 0 {
                // Trailers until an empty line.
                for _ in 0..1000 {
                    match self.read_line() {
                        Some(l) if l.is_empty() => return true,
                        Some(_) => {}
                        None => return false,
                    }
                }
                return false;
            }
            let mut chunk = Vec::with_capacity(size);
            if !self.read_n(size, &mut chunk) {
                out.extend_from_slice(&chunk);
                return false;
            }
            out.extend_from_slice(&chunk);
            match self.read_line() {
                Some(l) if l.is_empty() => {}
                _ => return false,
            }
        }
        false
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
