//! The HTTP edge seen from raw sockets: the zero-copy hit path and hyper give one answer per
//! request (framing, repeated fields, bare LF, half-close, HTTP/1.0, pipelining, refusals);
//! no answer is cut short by the way a connection ends; stalled and idle clients do not lock
//! the site out; HEAD never downloads; only the site's networks are served.
//!
//! "Path A" is a request sent as the first one on a connection (a hit is then answered by the
//! zero-copy path); "path B" is the same request sent after a request that hands the connection
//! to hyper (`GET /api/status`).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;

const SMALL: &str = "lm-edge-small";
const BIG: &str = "lm-edge-big";
/// Big enough that a client that does not read stalls the server (loopback buffers hold a
/// few MiB) and that the end of an answer is still in flight when the server is done writing.
const BIG_BYTES: usize = 20 << 20;
/// Every answer the tests wait for must come within this (the old zero-copy path waited 30 s
/// on heads it could not frame).
const ANSWER: Duration = Duration::from_secs(5);

const TO_HYPER: &[u8] = b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n";

/// One request (or several, pipelined) and what the client does around it.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    /// Sent this long after `bytes` (a late pipelined request, a stray CRLF).
    late: Option<(Duration, Vec<u8>)>,
    /// Shut the write side after sending.
    half_close: bool,
    /// One entry per expected answer: (is it a HEAD, expected status).
    answers: Vec<(bool, u16)>,
    /// The server must close the connection after the answers.
    closes: bool,
}

impl Case {
    fn new(name: &'static str, bytes: impl Into<Vec<u8>>, answers: &[(bool, u16)]) -> Case {
        Case {
            name,
            bytes: bytes.into(),
            late: None,
            half_close: false,
            answers: answers.to_vec(),
            closes: false,
        }
    }
    fn closes(mut self) -> Case {
        self.closes = true;
        self
    }
    fn half_close(mut self) -> Case {
        self.half_close = true;
        self.closes = true;
        self
    }
    fn late(mut self, after: Duration, bytes: &[u8]) -> Case {
        self.late = Some((after, bytes.to_vec()));
        self
    }
}

/// Runs a case on a fresh connection, on path A (`via_hyper` false) or path B: the answers
/// (an error for the first one that did not come within [`ANSWER`]) and, for a case that
/// closes, whether the server closed the connection afterwards.
fn run(port: u16, c: &Case, via_hyper: bool) -> (Result<Vec<RawResponse>, String>, Option<bool>) {
    let mut conn = RawConn::connect(port);
    if via_hyper {
        conn.send(TO_HYPER);
        let r = conn.response(false, ANSWER).expect("status answer");
        assert_eq!(r.status, 200, "{}: the request that moves to hyper", c.name);
    }
    conn.send(&c.bytes);
    if let Some((after, late)) = &c.late {
        std::thread::sleep(*after);
        // The server may already have closed (it answered and is draining): ignore errors.
        let _ = std::io::Write::write_all(&mut conn.stream, late);
    }
    if c.half_close {
        conn.half_close();
    }
    let mut out = Vec::new();
    for (i, (head, _)) in c.answers.iter().enumerate() {
        match conn.response(*head, ANSWER) {
            Ok(r) => out.push(r),
            Err(e) => {
                return (
                    Err(format!("answer {i} did not come within {ANSWER:?}: {e}")),
                    None,
                );
            }
        }
    }
    let closed = c
        .closes
        .then(|| conn.closed_within(Duration::from_secs(4)) == Ok(true));
    (Ok(out), closed)
}

/// A short description of an answer (never its whole body).
fn summary(r: &RawResponse) -> String {
    format!(
        "{} {} {:?} body {} bytes{}",
        r.version,
        r.status,
        r.headers,
        r.body.len(),
        if r.complete { "" } else { " (cut short)" }
    )
}

/// Compares the answers of path A and path B to one case; returns what is wrong.
fn compare(c: &Case, small: &[u8], a: &[RawResponse], b: &[RawResponse]) -> Vec<String> {
    let mut bad = Vec::new();
    for (i, ((ra, rb), (head, want))) in a.iter().zip(b).zip(&c.answers).enumerate() {
        let mut check = |ok: bool, what: &str| {
            if !ok {
                bad.push(format!(
                    "{}: answer {i}: {what}\n    A: {}\n    B: {}",
                    c.name,
                    summary(ra),
                    summary(rb)
                ));
            }
        };
        check(ra.status == *want, &format!("expected status {want}"));
        check(ra.status == rb.status, "statuses differ");
        check(ra.version == rb.version, "versions differ");
        check(essentials(ra) == essentials(rb), "header fields differ");
        check(ra.complete && rb.complete, "cut short");
        check(ra.body == rb.body, "bodies differ");
        let is_file =
            ra.status == 200 && !head && ra.header("content-type") == Some("application/x-rpm");
        check(!is_file || ra.body == small, "not the whole file");
    }
    bad
}

/// The fields that must agree between the two paths.
fn essentials(r: &RawResponse) -> Vec<(String, Option<String>)> {
    [
        "content-length",
        "content-range",
        "content-type",
        "etag",
        "last-modified",
        "accept-ranges",
        "allow",
        "connection",
    ]
    .iter()
    .map(|h| (h.to_string(), r.header(h).map(str::to_string)))
    .collect()
}

fn site_with(extra: &str) -> Site {
    let extra = extra.to_string();
    Site::with(
        &[
            PkgSpec::new(SMALL, "1.0", 3000),
            PkgSpec::new(BIG, "1.0", BIG_BYTES),
        ],
        move |o| o.extra_toml = extra,
    )
}

/// Stores a package (a miss, then one hit to be sure) and returns its bytes.
fn warm(s: &Site, name: &str) -> Vec<u8> {
    let p = s.repo.package(name);
    for _ in 0..2 {
        let r = s.get_pkg(name);
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.complete);
    }
    std::fs::read(&p.path).unwrap()
}

#[test]
fn both_paths_give_the_same_answer_to_every_request() {
    let s = site_with("");
    let port = s.node.port();
    let small = warm(&s, SMALL);
    let f = format!("/test/{}", s.repo.package(SMALL).rel_path);
    let etag = s.get_pkg(SMALL).header("etag").unwrap().to_string();
    let lm = s
        .get_pkg(SMALL)
        .header("last-modified")
        .unwrap()
        .to_string();
    let len = small.len();
    let get = |extra: &str| format!("GET {f} HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
    let get_close = |extra: &str| get(&format!("{extra}Connection: close\r\n"));
    let ranges256: Vec<String> = (0..256).map(|i| format!("{}-{}", i * 3, i * 3)).collect();
    let pad = |n: usize| format!("X-Pad: {}\r\n", "p".repeat(n));
    // A head of exactly MAX_HEAD (16 KiB) bytes is served; one byte more is 431.
    let sized = |total: usize| {
        let base = get_close(&pad(0));
        get_close(&pad(total - base.len()))
    };
    assert_eq!(sized(16 * 1024).len(), 16 * 1024);
    let cases = vec![
        Case::new("plain GET", get(""), &[(false, 200)]),
        Case::new("GET, close", get_close(""), &[(false, 200)]).closes(),
        Case::new(
            "HEAD",
            format!("HEAD {f} HTTP/1.1\r\nHost: x\r\n\r\n"),
            &[(true, 200)],
        ),
        Case::new("one range", get("Range: bytes=100-199\r\n"), &[(false, 206)]),
        Case::new("suffix range", get("Range: bytes=-10\r\n"), &[(false, 206)]),
        Case::new(
            "two ranges",
            get("Range: bytes=0-3,1000-1009\r\n"),
            &[(false, 206)],
        ),
        Case::new(
            "256 one-byte ranges of a small file: the whole file",
            get(&format!("Range: bytes={}\r\n", ranges256.join(","))),
            &[(false, 200)],
        ),
        Case::new(
            "unsatisfiable range",
            get(&format!("Range: bytes={}-\r\n", len + 5)),
            &[(false, 416)],
        ),
        Case::new(
            "range with a stale If-Range",
            get("Range: bytes=0-9\r\nIf-Range: \"old\"\r\n"),
            &[(false, 200)],
        ),
        Case::new(
            "range with a matching If-Range",
            get(&format!("Range: bytes=0-9\r\nIf-Range: {etag}\r\n")),
            &[(false, 206)],
        ),
        Case::new(
            "If-None-Match",
            get(&format!("If-None-Match: {etag}\r\n")),
            &[(false, 304)],
        ),
        Case::new(
            "two If-None-Match lines, the match second",
            get(&format!(
                "If-None-Match: \"nope\"\r\nIf-None-Match: {etag}\r\n"
            )),
            &[(false, 304)],
        ),
        Case::new(
            "two If-None-Match lines, the match first",
            get(&format!(
                "If-None-Match: {etag}\r\nIf-None-Match: \"nope\"\r\n"
            )),
            &[(false, 304)],
        ),
        Case::new(
            "two Range lines: the whole file",
            get("Range: bytes=0-9\r\nRange: bytes=20-29\r\n"),
            &[(false, 200)],
        ),
        Case::new(
            "two Range lines, the other order",
            get("Range: bytes=20-29\r\nRange: bytes=0-9\r\n"),
            &[(false, 200)],
        ),
        Case::new(
            "two If-Modified-Since lines are ignored",
            get(&format!(
                "If-Modified-Since: {lm}\r\nIf-Modified-Since: {lm}\r\n"
            )),
            &[(false, 200)],
        ),
        Case::new(
            "If-Modified-Since",
            get(&format!("If-Modified-Since: {lm}\r\n")),
            &[(false, 304)],
        ),
        Case::new(
            "bare-LF head",
            format!("GET {f} HTTP/1.1\nHost: x\nConnection: close\n\n"),
            &[(false, 200)],
        )
        .closes(),
        Case::new(
            "head ended by LF CRLF, then a pipelined request",
            format!(
                "GET {f} HTTP/1.1\r\nHost: x\n\r\nGET {f} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            ),
            &[(false, 200), (false, 200)],
        )
        .closes(),
        Case::new(
            "three pipelined requests",
            format!(
                "HEAD {f} HTTP/1.1\r\nHost: x\r\n\r\n{}{}",
                get("Range: bytes=0-99\r\n"),
                get_close("")
            ),
            &[(true, 200), (false, 206), (false, 200)],
        )
        .closes(),
        Case::new(
            "HTTP/1.0, then a stray CRLF",
            format!("GET {f} HTTP/1.0\r\n\r\n"),
            &[(false, 200)],
        )
        .late(Duration::from_millis(100), b"\r\n")
        .closes(),
        Case::new(
            "HTTP/1.0 keep-alive, then HEAD",
            format!(
                "GET {f} HTTP/1.0\r\nConnection: keep-alive\r\n\r\nHEAD {f} HTTP/1.0\r\n\r\n"
            ),
            &[(false, 200), (true, 200)],
        )
        .closes(),
        Case::new(
            "Connection: close, then a late pipelined request",
            get_close(""),
            &[(false, 200)],
        )
        .late(Duration::from_millis(100), get("").as_bytes())
        .closes(),
        Case::new("half-closed after a hit", get(""), &[(false, 200)]).half_close(),
        Case::new(
            "half-closed after a 404",
            "GET /nosuchrepo/x.rpm HTTP/1.1\r\nHost: x\r\n\r\n",
            &[(false, 404)],
        )
        .half_close(),
        Case::new(
            // (a page of the node's own; the dashboard at / changes from one answer to the
            // next: its figures are live)
            "half-closed after a page of the node's own",
            "GET /setup/ HTTP/1.1\r\nHost: x\r\n\r\n",
            &[(false, 200)],
        )
        .half_close(),
        Case::new(
            "HTTP/1.1 without Host",
            format!("GET {f} HTTP/1.1\r\n\r\n"),
            &[(false, 400)],
        )
        .closes(),
        Case::new(
            "two Host lines",
            format!("GET {f} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            &[(false, 400)],
        )
        .closes(),
        Case::new(
            "HTTP/1.0 without Host",
            format!("GET {f} HTTP/1.0\r\n\r\n"),
            &[(false, 200)],
        )
        .closes(),
        Case::new(
            "HTTP/0.9",
            format!("GET {f}\r\n"),
            &[(false, 400)],
        )
        .closes(),
        Case::new(
            "malformed header line",
            format!("GET {f} HTTP/1.1\r\nHost x\r\n\r\n"),
            &[(false, 400)],
        )
        .closes(),
        Case::new("a head of exactly 16 KiB", sized(16 * 1024), &[(false, 200)]).closes(),
        Case::new(
            "a head one byte over 16 KiB",
            sized(16 * 1024 + 1),
            &[(false, 431)],
        )
        .closes(),
        Case::new(
            "a 20 KiB head",
            get_close(&pad(20 * 1024)),
            &[(false, 431)],
        )
        .closes(),
        Case::new(
            "a request target over 8 KiB",
            format!(
                "GET /test/{}.rpm HTTP/1.1\r\nHost: x\r\n\r\n",
                "a".repeat(9000)
            ),
            &[(false, 414)],
        )
        .closes(),
        Case::new(
            "POST",
            format!("POST {f} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
            &[(false, 405)],
        ),
        Case::new(
            "a traversal",
            "GET /test/%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
            &[(false, 400)],
        )
        .closes(),
    ];
    let zero_copy_before = s.node.status_json()["zero_copy_responses"]
        .as_u64()
        .unwrap();
    let mut bad = Vec::new();
    for c in &cases {
        let (a, a_closed) = run(port, c, false);
        let (b, b_closed) = run(port, c, true);
        match (&a, &b) {
            (Ok(a), Ok(b)) => bad.extend(compare(c, &small, a, b)),
            (a, b) => {
                for (path, r) in [("A", a), ("B", b)] {
                    if let Err(e) = r {
                        bad.push(format!("{} (path {path}): {e}", c.name));
                    }
                }
                continue;
            }
        }
        if a_closed != b_closed {
            bad.push(format!(
                "{}: A closed {a_closed:?}, B closed {b_closed:?}",
                c.name
            ));
        } else if c.closes && a_closed != Some(true) {
            bad.push(format!("{}: the connection was left open", c.name));
        }
    }
    assert!(
        bad.is_empty(),
        "{} problems in {} cases:\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n")
    );
    // A sanity check that path A did take the zero-copy path for hits.
    let zero_copy = s.node.status_json()["zero_copy_responses"]
        .as_u64()
        .unwrap();
    assert!(
        zero_copy >= zero_copy_before + 15,
        "zero-copy answers: {zero_copy_before} → {zero_copy}"
    );
}

/// A stored file of 20 MiB, answered on a connection that ends after it while the client
/// has sent more (a stray CRLF after an HTTP/1.0 request, a late pipelined request after
/// `Connection: close`): the whole body arrives, byte for byte, on both paths.
#[test]
fn answers_are_never_cut_short_by_the_end_of_a_connection() {
    let s = site_with("");
    let big = warm(&s, BIG);
    let sha = sha256_hex(&big);
    let f = format!("/test/{}", s.repo.package(BIG).rel_path);
    let cases = [
        (
            "HTTP/1.0 + stray CRLF",
            format!("GET {f} HTTP/1.0\r\n\r\n"),
            b"\r\n".to_vec(),
        ),
        (
            "Connection: close + late request",
            format!("GET {f} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            format!("GET {f} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
        ),
    ];
    for round in 0..2 {
        for (name, req, late) in &cases {
            for via_hyper in [false, true] {
                let mut conn = RawConn::connect(s.node.port());
                if via_hyper {
                    conn.send(TO_HYPER);
                    assert_eq!(conn.response(false, ANSWER).unwrap().status, 200);
                }
                conn.send(req.as_bytes());
                std::thread::sleep(Duration::from_millis(100));
                let _ = std::io::Write::write_all(&mut conn.stream, late);
                // Let the server fill the socket buffers before reading.
                std::thread::sleep(Duration::from_millis(300));
                let r = conn.response(false, Duration::from_secs(30)).unwrap();
                let path = if via_hyper { "B" } else { "A" };
                assert_eq!(r.status, 200, "{name} ({path}, round {round})");
                assert_eq!(r.content_length(), Some(big.len() as u64));
                assert!(
                    r.complete,
                    "{name} (path {path}, round {round}): {} of {} bytes, then {}",
                    r.body.len(),
                    big.len(),
                    if conn.reset { "a reset" } else { "EOF" }
                );
                assert_eq!(sha256_hex(&r.body), sha, "{name} ({path})");
                assert_eq!(conn.closed_within(Duration::from_secs(4)), Ok(true));
            }
        }
    }
}

/// `GET /api/status` from a fresh client, given at most 10 s.
fn fresh_status(s: &Site) -> Response {
    let url = format!("{}/api/status", s.node.url());
    s.node
        .try_request("GET", &url, &[], Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("a fresh client was not served within 10 s: {e}"))
}

/// Clients that ask for a big file and never read fill `max_connections`; each is dropped
/// once it has taken no data for `write_timeout_secs` (on both paths), and a fresh client is
/// served within that time plus a second. Idle clients (nothing sent, or half a head) are
/// dropped after `idle_timeout_secs` the same way.
#[test]
fn stalled_and_idle_clients_do_not_lock_the_site_out() {
    let s = site_with("[http]\nmax_connections = 4\nwrite_timeout_secs = 2\nidle_timeout_secs = 2");
    let big = warm(&s, BIG);
    let f = format!("/test/{}", s.repo.package(BIG).rel_path);
    let limit = Duration::from_secs(2 + 1);

    // Stalled readers: two on the zero-copy path, two on hyper's.
    let mut stalled: Vec<RawConn> = (0..4)
        .map(|i| {
            let mut c = RawConn::connect(s.node.port());
            if i % 2 == 1 {
                c.send(TO_HYPER);
                assert_eq!(c.response(false, ANSWER).unwrap().status, 200);
            }
            c.send(format!("GET {f} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
            c
        })
        .collect();
    let stalled_at = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let r = fresh_status(&s);
    let waited = t.elapsed();
    assert_eq!(r.status, 200);
    assert!(
        waited <= limit,
        "a fresh client waited {waited:?} while stalled readers held every slot"
    );
    // Reading would be progress: first give every stalled connection its full timeout.
    std::thread::sleep((limit + Duration::from_millis(300)).saturating_sub(stalled_at.elapsed()));
    for (i, c) in stalled.iter_mut().enumerate() {
        let got = c.drain(Duration::from_secs(10));
        assert!(
            got < big.len(),
            "stalled client {i} was not cut off ({got} bytes read)"
        );
    }

    // Idle clients: connected and silent, or stuck halfway through a head.
    let mut idle: Vec<RawConn> = (0..4).map(|_| RawConn::connect(s.node.port())).collect();
    idle[0].send(b"GET /api/status HTTP/1.1\r\nHo");
    idle[1].send(TO_HYPER);
    assert_eq!(idle[1].response(false, ANSWER).unwrap().status, 200);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let r = fresh_status(&s);
    let waited = t.elapsed();
    assert_eq!(r.status, 200);
    assert!(
        waited <= limit,
        "a fresh client waited {waited:?} while idle clients held every slot"
    );
    for (i, c) in idle.iter_mut().enumerate() {
        assert_eq!(
            c.closed_within(Duration::from_secs(4)),
            Ok(true),
            "idle client {i} still connected"
        );
    }
    assert!(
        s.node
            .log()
            .contains("closed a connection whose client took no data"),
        "the log says why stalled clients were dropped"
    );
}

/// Clients that shut their write side after sending (`nc -N`, socat) get their answers from
/// hyper too: status, metrics, 404s and misses.
#[test]
fn half_closed_clients_get_their_answers() {
    let s = site_with("");
    let p = s.repo.package(SMALL);
    let whole = std::fs::read(&p.path).unwrap();
    for (path, status) in [
        ("/api/status".to_string(), 200),
        ("/metrics".to_string(), 200),
        ("/test/Packages/nope-1-1.noarch.rpm".to_string(), 404),
        (format!("/test/{}", p.rel_path), 200), // a miss: streamed from upstream
    ] {
        let mut c = RawConn::connect(s.node.port());
        c.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        c.half_close();
        let r = c
            .response(false, ANSWER)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(r.status, status, "{path}");
        assert!(r.complete && !r.body.is_empty(), "{path}");
        if path.ends_with(".rpm") && status == 200 {
            assert_eq!(r.body, whole);
        }
        assert_eq!(c.closed_within(Duration::from_secs(4)), Ok(true), "{path}");
    }
}

fn methods_for(up: &Upstream, path_part: &str) -> Vec<String> {
    up.requests()
        .into_iter()
        .filter(|l| l.path.contains(path_part))
        .map(|l| l.method)
        .collect()
}

/// HEAD never makes the node download a body: a package metadata names is answered from
/// metadata (its size, and the ETag it will have), other files by a HEAD upstream, stored
/// files (even ones due for a freshness check) from the store. The miss that follows is
/// answered with the validators the stored file then keeps.
#[test]
fn head_never_downloads_and_misses_carry_validators() {
    let s = site_with("");
    let p = s.repo.package(SMALL);
    let url = |path: &str| format!("{}{path}", s.node.url());
    let head = |path: &str| http_request("HEAD", &url(path), &[], ANSWER);
    let pkg = format!("/test/{}", p.rel_path);
    let key = "RPM-GPG-KEY-lmedge";
    let key_text = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n";
    std::fs::write(s.repo.dir().join(key), key_text).unwrap();
    s.up.clear_log();

    // A package named by primary.xml: nothing goes upstream.
    let h = head(&pkg);
    assert!(
        s.up.requests().is_empty(),
        "HEAD of a package went upstream: {:?}",
        s.up.requests()
    );
    assert_eq!(h.status, 200);
    assert_eq!(h.content_length(), Some(p.size));
    assert!(h.body.is_empty());
    assert_eq!(h.header("accept-ranges"), Some("bytes"));
    let head_etag = h.header("etag").expect("an ETag from metadata").to_string();
    let h = http_request("HEAD", &url(&pkg), &[("Range", "bytes=0-9")], ANSWER);
    assert_eq!(h.status, 206);
    assert_eq!(
        h.header("content-range"),
        Some(&*format!("bytes 0-9/{}", p.size))
    );
    assert!(
        s.up.requests().is_empty(),
        "HEAD of a package went upstream: {:?}",
        s.up.requests()
    );

    // A file metadata does not name: a HEAD upstream, no GET.
    let h = head(&format!("/test/{key}"));
    assert_eq!(h.status, 200);
    assert_eq!(h.content_length(), Some(key_text.len() as u64));
    assert!(h.header("last-modified").is_some());
    assert_eq!(methods_for(&s.up, key), ["HEAD"]);
    let h = head("/test/Packages/nope-1-1.noarch.rpm");
    assert_eq!(h.status, 404);
    assert_eq!(methods_for(&s.up, "nope-1-1"), ["HEAD"]);

    // Stored files due for a check (freshness is 2 s here): no conditional GET either.
    assert_eq!(s.node.get(&format!("/test/{key}")).status, 200);
    std::thread::sleep(Duration::from_millis(3200));
    s.up.clear_log();
    assert_eq!(head(&format!("/test/{key}")).status, 200);
    let h = head("/test/repodata/repomd.xml");
    assert_eq!(h.status, 200);
    assert!(h.content_length().unwrap() > 0);
    assert!(
        s.up.requests().iter().all(|l| l.method == "HEAD"),
        "a GET went upstream for a HEAD: {:?}",
        s.up.requests()
    );

    // Now the download: the miss carries the ETag the HEAD said, Accept-Ranges and
    // Last-Modified; the stored file keeps the ETag.
    let r = s.node.get(&pkg);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("etag"), Some(&*head_etag), "{:?}", r.headers);
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert!(r.header("last-modified").is_some());
    assert_eq!(s.up.count(&p.rel_path), 1, "one download");
    let hit = s.node.get(&pkg);
    assert_eq!(hit.header("etag"), Some(&*head_etag));
    assert_eq!(hit.body, r.body);

    // A cold node (no snapshot yet): HEAD of repomd.xml is a HEAD upstream.
    let cold = Node::start(NodeOpts::new(&s.up.url()));
    s.up.clear_log();
    let h = http_request(
        "HEAD",
        &format!("{}/test/repodata/repomd.xml", cold.url()),
        &[],
        ANSWER,
    );
    assert_eq!(h.status, 200);
    assert_eq!(
        h.content_length(),
        Some(
            std::fs::metadata(s.repo.dir().join("repodata/repomd.xml"))
                .unwrap()
                .len()
        )
    );
    assert!(
        s.up.requests().iter().all(|l| l.method == "HEAD"),
        "{:?}",
        s.up.requests()
    );
}

/// `[http] allow` names the networks served; a client from elsewhere gets 403, logged once
/// per address per minute.
#[test]
fn clients_outside_the_allowed_networks_get_403() {
    let allowed: IpAddr = "127.0.0.2".parse().unwrap();
    let s = Site::with(&[PkgSpec::new(SMALL, "1.0", 3000)], |o| {
        o.extra_toml = "[http]\nallow = [\"127.0.0.2/32\"]".into();
        o.client_ip = Some(allowed);
    });
    let port = s.node.port();
    let node_addr = SocketAddr::from(([127, 0, 0, 1], port));
    for path in ["/api/status", "/test/repodata/repomd.xml"] {
        for _ in 0..3 {
            let mut c = RawConn::connect(port);
            c.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
            let r = c.response(false, ANSWER).unwrap();
            assert_eq!(r.status, 403, "{path} from 127.0.0.1");
            assert!(String::from_utf8_lossy(&r.body).contains("[http] allow"));
            assert_eq!(c.closed_within(Duration::from_secs(4)), Ok(true));
        }
    }
    // From the allowed address: served, also on the zero-copy path.
    let p = s.repo.package(SMALL);
    let whole = std::fs::read(&p.path).unwrap();
    for _ in 0..2 {
        let mut c = RawConn::over(connect_from(allowed, node_addr).unwrap());
        c.send(format!("GET /test/{} HTTP/1.1\r\nHost: x\r\n\r\n", p.rel_path).as_bytes());
        let r = c.response(false, ANSWER).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, whole);
    }
    let st = s.node.status_json();
    assert!(st["zero_copy_responses"].as_u64().unwrap() >= 1, "{st}");
    let log = s.node.log();
    assert_eq!(
        log.matches("refused an HTTP client").count(),
        1,
        "one log line per address per minute:\n{log}"
    );
    assert!(log.contains("127.0.0.1"));
}
