//! [`RawConn`]: a client that writes exactly the bytes a test gives it on a real TCP
//! connection (pipelining, bare-LF heads, stray CRLFs, half-close, late requests) and reads the
//! answers one by one, framed by their `content-length` (or chunked, or close-delimited), so a
//! test sees exactly what the server sent and whether a body was cut short.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

/// One answer as it came off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    pub status: u16,
    /// Names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// False when the body ended (EOF, reset, time limit) before its framing said it would.
    pub complete: bool,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length").and_then(|v| v.parse().ok())
    }
}

/// Connects from a given local address (loopback has all of 127/8 to play with), so a test
/// can be a client of another address than 127.0.0.1.
pub fn connect_from(src: IpAddr, dst: SocketAddr) -> io::Result<TcpStream> {
    let (IpAddr::V4(src), SocketAddr::V4(dst)) = (src, dst) else {
        return Err(io::Error::other("connect_from: IPv4 only"));
    };
    let sin = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket syscalls on a descriptor this function owns; the sockaddr structs
    // live across the calls; the fd is handed to TcpStream (which closes it) or closed here.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let local = sin(src, 0);
        let remote = sin(*dst.ip(), dst.port());
        if libc::bind(fd, (&raw const local).cast(), len) != 0
            || libc::connect(fd, (&raw const remote).cast(), len) != 0
        {
            let e = io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
}

pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
    /// The reading side failed with an error (e.g. a reset), not a clean EOF.
    pub reset: bool,
}

impl RawConn {
    pub fn connect(port: u16) -> RawConn {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the node");
        Self::over(stream)
    }

    pub fn over(stream: TcpStream) -> RawConn {
        stream.set_nodelay(true).ok();
        RawConn {
            stream,
            buf: Vec::new(),
            pos: 0,
            eof: false,
            reset: false,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write request");
    }

    /// Shuts the write side: the server sees EOF after the requests sent so far.
    pub fn half_close(&mut self) {
        self.stream
            .shutdown(Shutdown::Write)
            .expect("shutdown(Write)");
    }

    fn fill(&mut self, deadline: Instant) -> io::Result<usize> {
        if self.eof {
            return Ok(0);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "time limit"));
        }
        self.stream.set_read_timeout(Some(deadline - now))?;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let mut tmp = vec![0u8; 256 * 1024];
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
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "time limit"));
                }
                Err(e) => {
                    self.eof = true;
                    self.reset = true;
                    return Err(e);
                }
            }
        }
    }

    fn avail(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Reads one answer. `head`: it answers a HEAD request (no body). Errors when no complete
    /// head arrives within `limit`.
    pub fn response(&mut self, head: bool, limit: Duration) -> io::Result<RawResponse> {
        let deadline = Instant::now() + limit;
        let mut head_bytes = None;
        // Bounded: every round reads at least one byte, or ends.
        for _ in 0..1_000_000 {
            if let Some(i) = find(self.avail(), b"\r\n\r\n") {
                head_bytes = Some(self.avail()[..i].to_vec());
                self.pos += i + 4;
                break;
            }
            if self.fill(deadline)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "closed before a complete answer head ({} bytes: {:?})",
                        self.avail().len(),
                        String::from_utf8_lossy(self.avail())
                    ),
                ));
            }
        }
        let head_bytes = head_bytes.ok_or_else(|| io::Error::other("no answer head"))?;
        let text = String::from_utf8_lossy(&head_bytes).into_owned();
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_string();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut r = RawResponse {
            version,
            status,
            headers,
            body: Vec::new(),
            complete: true,
        };
        if head || status == 304 || status == 204 || (100..200).contains(&status) {
            return Ok(r);
        }
        if r.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            r.complete = self.read_chunked(&mut r.body, deadline);
        } else if let Some(n) = r.content_length() {
            r.complete = self.read_n(n as usize, &mut r.body, deadline);
        } else {
            r.complete = self.read_to_end(&mut r.body, deadline);
        }
        Ok(r)
    }

    fn read_n(&mut self, n: usize, out: &mut Vec<u8>, deadline: Instant) -> bool {
        while out.len() < n {
            if self.pos == self.buf.len() && !matches!(self.fill(deadline), Ok(k) if k > 0) {
                return false;
            }
            let take = (n - out.len()).min(self.buf.len() - self.pos);
            out.extend_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
        }
        true
    }

    fn read_to_end(&mut self, out: &mut Vec<u8>, deadline: Instant) -> bool {
        for _ in 0..1_000_000 {
            out.extend_from_slice(self.avail());
            self.pos = self.buf.len();
            match self.fill(deadline) {
                Ok(0) => return !self.reset,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }

    fn line(&mut self, deadline: Instant) -> Option<String> {
        for _ in 0..100_000 {
            if let Some(i) = find(self.avail(), b"\r\n") {
                let l = String::from_utf8_lossy(&self.avail()[..i]).into_owned();
                self.pos += i + 2;
                return Some(l);
            }
            if !matches!(self.fill(deadline), Ok(k) if k > 0) {
                return None;
            }
        }
        None
    }

    fn read_chunked(&mut self, out: &mut Vec<u8>, deadline: Instant) -> bool {
        for _ in 0..1_000_000 {
            let Some(l) = self.line(deadline) else {
                return false;
            };
            let Ok(n) = usize::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16) else {
                return false;
            };
            if n == 0 {
                return self.line(deadline).is_some();
            }
            if !self.read_n(n, out, deadline) || self.line(deadline).as_deref() != Some("") {
                return false;
            }
        }
        false
    }

    /// Whether the server closed the connection (EOF or reset) within `limit`, with no
    /// further bytes; bytes that do arrive are returned as the error.
    pub fn closed_within(&mut self, limit: Duration) -> Result<bool, Vec<u8>> {
        let deadline = Instant::now() + limit;
        for _ in 0..100_000 {
            if !self.avail().is_empty() {
                return Err(self.avail().to_vec());
            }
            match self.fill(deadline) {
                Ok(0) => return Ok(true),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(false),
                Err(_) => return Ok(true),
            }
        }
        Ok(false)
    }

    /// Reads whatever arrives until EOF, a reset or `limit`; returns the byte count.
    pub fn drain(&mut self, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        let mut n = self.avail().len();
        self.pos = self.buf.len();
        for _ in 0..10_000_000 {
            match self.fill(deadline) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    n += k;
                    self.pos = self.buf.len();
                }
            }
        }
        n
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
