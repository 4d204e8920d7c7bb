//! Exercises the integration-test kit (tests/common) without the node:
//! real rpms + createrepo_c, the upstream server and its faults, the blocking
//! HTTP client, and dnf installing straight from the upstream.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::upstream::{PORTAL_HTML, fmt_http_date, parse_http_date};
use common::*;

const KIB: usize = 1024;

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("lm-kit-")
        .tempdir()
        .unwrap()
}

/// A served directory with one file `files/<name>` of `len` known bytes.
fn served_file(dir: &std::path::Path, name: &str, len: usize) -> Vec<u8> {
    let data = payload_bytes(name, "file", len);
    std::fs::create_dir_all(dir.join("files")).unwrap();
    std::fs::write(dir.join("files").join(name), &data).unwrap();
    data
}

#[test]
fn dnf_installs_from_upstream_repo() {
    let t = tmp();
    let repo = RpmRepo::create(
        &t.path().join("mirror"),
        &[
            PkgSpec::new("lmk-base", "1.0", 64 * KIB),
            PkgSpec::new("lmk-app", "2.1", 300 * KIB).requires("lmk-base"),
        ],
    );
    let pkgs = repo.packages();
    assert_eq!(pkgs.len(), 2);
    for p in &pkgs {
        assert!(p.path.is_file());
        assert_eq!(p.rel_path, format!("Packages/{}", p.file_name));
        let data = std::fs::read(&p.path).unwrap();
        assert_eq!(data.len() as u64, p.size);
        assert_eq!(sha256_hex(&data), p.sha256_hex);
        // Incompressible payload, uncompressed rpm payload: size ≈ payload.
        assert!(p.size >= p.payload_bytes as u64, "{p:?}");
        assert!(p.size < p.payload_bytes as u64 + 64 * 1024, "{p:?}");
    }
    assert!(repo.repomd_path().is_file());

    let up = Upstream::start(repo.dir());
    let dnf = Dnf::new(&t.path().join("client"), &up.url());
    let out = dnf.install(&["lmk-app"]);
    out.assert_success();
    assert!(dnf.is_installed("lmk-app"), "{}", out.combined());
    assert!(dnf.is_installed("lmk-base"), "dependency not installed");
    assert!(!dnf.is_installed("lmk-nonexistent"));
    assert_eq!(
        dnf.installed_nevra("lmk-app").as_deref(),
        Some("lmk-app-2.1-1.noarch")
    );
    let installed = std::fs::read(dnf.payload_path("lmk-app")).unwrap();
    assert_eq!(installed, payload_bytes("lmk-app", "2.1", 300 * KIB));
    assert_eq!(dnf.payload_size("lmk-base"), Some(64 * KIB as u64));

    assert!(up.count("repomd.xml") >= 1, "{:?}", up.requests());
    assert_eq!(up.count("Packages/lmk-app-2.1-1.noarch.rpm"), 1);
    assert_eq!(up.count("Packages/lmk-base-1.0-1.noarch.rpm"), 1);
    assert!(up.count("primary.xml") >= 1);

    // A second client fails cleanly when the upstream is down.
    up.set_down(true);
    let dnf2 = Dnf::new(&t.path().join("client2"), &up.url());
    let out2 = dnf2.install(&["lmk-base"]);
    assert!(!out2.success, "dnf succeeded with upstream down");
    assert!(!dnf2.is_installed("lmk-base"));
}

#[test]
fn repo_add_rewrites_repodata_and_remove_works() {
    let t = tmp();
    let mut repo = RpmRepo::create(
        &t.path().join("m"),
        &[PkgSpec::new("lmk-one", "1.0", 10 * KIB)],
    );
    let md_before = repo.metadata_files();
    assert!(
        md_before.iter().any(|f| f.ends_with("-primary.xml.gz")),
        "{md_before:?}"
    );
    for f in &md_before {
        assert!(repo.dir().join(f).is_file(), "{f} missing");
    }
    let repomd_before = std::fs::read(repo.repomd_path()).unwrap();

    let added = repo.add(&PkgSpec::new("lmk-two", "1.0", 20 * KIB).release("3"));
    assert_eq!(added.file_name, "lmk-two-1.0-3.noarch.rpm");
    assert!(repo.dir().join(&added.rel_path).is_file());
    assert_eq!(repo.packages().len(), 2);
    assert_ne!(std::fs::read(repo.repomd_path()).unwrap(), repomd_before);
    let md_after = repo.metadata_files();
    let primary_before = md_before
        .iter()
        .find(|f| f.contains("primary.xml"))
        .unwrap();
    assert!(
        !md_after.contains(primary_before),
        "primary unchanged after add"
    );
    assert!(
        !repo.dir().join(primary_before).exists(),
        "old primary not deleted"
    );
    for f in &md_after {
        assert!(repo.dir().join(f).is_file(), "{f} missing");
    }

    repo.remove("lmk-one");
    assert_eq!(repo.packages().len(), 1);
    assert!(
        !repo
            .dir()
            .join("Packages/lmk-one-1.0-1.noarch.rpm")
            .exists()
    );
    assert_eq!(repo.package("lmk-two"), added);
}

#[test]
fn rpm_builds_are_reproducible_and_cached() {
    let t = tmp();
    let spec = PkgSpec::new("lmk-repro", "0.1", 5000).requires("lmk-base >= 1.0");
    let a = build_rpm(&spec, &t.path().join("a"));
    let b = build_rpm(&spec, &t.path().join("b"));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let other = build_rpm(&PkgSpec::new("lmk-repro", "0.2", 5000), &t.path().join("c"));
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&other).unwrap());
    // Requires made it into the header.
    let out = std::process::Command::new("rpm")
        .args(["-qp", "--requires"])
        .arg(&a)
        .output()
        .unwrap();
    let req = String::from_utf8_lossy(&out.stdout);
    assert!(req.contains("lmk-base >= 1.0"), "{req}");
    assert!(build_cache().is_dir());
    // Payloads differ per name/version and do not compress.
    assert_ne!(payload_bytes("a", "1", 64), payload_bytes("a", "2", 64));
    assert_eq!(payload_bytes("a", "1", 100), payload_bytes("a", "1", 100));
}

#[test]
fn time_three_one_mib_packages() {
    // Reported in the test output; uses the cache unless LANMIRROR_NO_RPM_CACHE=1.
    let t = tmp();
    let start = Instant::now();
    let repo = RpmRepo::create(
        t.path(),
        &[
            PkgSpec::new("lmk-big1", "1.0", 1024 * KIB),
            PkgSpec::new("lmk-big2", "1.0", 1024 * KIB),
            PkgSpec::new("lmk-big3", "1.0", 1024 * KIB),
        ],
    );
    let took = start.elapsed();
    eprintln!("repo of 3 x 1 MiB packages built in {took:?}");
    assert_eq!(repo.packages().len(), 3);
    assert!(took < Duration::from_secs(60));
}

#[test]
fn get_head_conditional_and_ranges() {
    let t = tmp();
    let data = served_file(t.path(), "f.bin", 100 * KIB);
    let up = Upstream::start(t.path());
    let url = format!("{}files/f.bin", up.url());

    let r = http_get(&url, &[]);
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(r.body, data);
    assert_eq!(r.content_length(), Some(data.len() as u64));
    let etag = r.header("etag").unwrap().to_string();
    let lm = r.header("last-modified").unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert!(parse_http_date(&lm).is_some(), "{lm}");
    assert_eq!(r.header("Accept-Ranges"), Some("bytes"));

    let h = http_request("HEAD", &url, &[], Duration::from_secs(10));
    assert_eq!(h.status, 200);
    assert_eq!(h.content_length(), Some(data.len() as u64));
    assert!(h.body.is_empty());
    assert_eq!(h.header("etag"), Some(etag.as_str()));

    let r = http_get(&url, &[("If-None-Match", &etag)]);
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    let r = http_get(&url, &[("If-None-Match", "\"nope\"")]);
    assert_eq!(r.status, 200);
    let r = http_get(&url, &[("If-Modified-Since", &lm)]);
    assert_eq!(r.status, 304);
    let old = fmt_http_date(parse_http_date(&lm).unwrap() - 10);
    let r = http_get(&url, &[("If-Modified-Since", &old)]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), data.len());

    let r = http_get(&url, &[("Range", "bytes=1000-")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, data[1000..]);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 1000-{}/{}", data.len() - 1, data.len()).as_str())
    );
    let r = http_get(&url, &[("Range", "bytes=10-19")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, data[10..20]);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 10-19/{}", data.len()).as_str())
    );
    let r = http_get(&url, &[("Range", "bytes=-5")]);
    assert_eq!(
        (r.status, r.body.as_slice()),
        (206, &data[data.len() - 5..])
    );
    let r = http_get(&url, &[("Range", "bytes=999999-")]);
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{}", data.len()).as_str())
    );

    let r = http_get(&url, &[("Range", "bytes=50-"), ("If-Range", &etag)]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, data[50..]);
    let r = http_get(&url, &[("Range", "bytes=50-"), ("If-Range", &lm)]);
    assert_eq!(r.status, 206);
    let r = http_get(&url, &[("Range", "bytes=50-"), ("If-Range", "\"stale\"")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, data);

    // Changing the file changes the validators.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(t.path().join("files/f.bin"), b"new content").unwrap();
    let r = http_get(&url, &[("If-None-Match", &etag)]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"new content");
    assert_ne!(r.header("etag"), Some(etag.as_str()));

    assert_eq!(
        http_get(&format!("{}files/missing", up.url()), &[]).status,
        404
    );
    assert_eq!(
        http_get(&format!("{}files/../../etc/passwd", up.url()), &[]).status,
        404
    );
    assert_eq!(http_get(&format!("{}files", up.url()), &[]).status, 404);

    let log = up.requests();
    let ranged: Vec<_> = log
        .iter()
        .filter(|l| l.if_range.as_deref() == Some("\"stale\""))
        .collect();
    assert_eq!(ranged.len(), 1);
    assert_eq!(ranged[0].range.as_deref(), Some("bytes=50-"));
    assert_eq!(ranged[0].status, 200);
    assert!(log.iter().any(|l| l.method == "HEAD"));
    assert!(
        log.iter()
            .any(|l| l.status == 304 && l.if_none_match.is_some())
    );
    assert_eq!(
        up.count("f.bin"),
        log.iter()
            .filter(|l| l.method == "GET" && l.path.contains("f.bin"))
            .count()
    );
    up.clear_log();
    assert!(up.requests().is_empty());
    assert_eq!(up.count(""), 0);
}

#[test]
fn cut_after_gives_incomplete_body() {
    let t = tmp();
    let data = served_file(t.path(), "big.bin", 512 * KIB);
    let up = Upstream::start(t.path());
    let url = format!("{}files/big.bin", up.url());

    up.cut_after("big.bin", 5000, 2);
    for _ in 0..2 {
        let r = http_get(&url, &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.content_length(), Some(data.len() as u64));
        assert!(!r.complete, "cut body reported complete");
        assert_eq!(r.body.len(), 5000);
        assert_eq!(r.body, data[..5000]);
    }
    let r = http_get(&url, &[]);
    assert!(r.complete);
    assert_eq!(r.body, data);

    // A cut applies to range requests too (bytes counted from the range start).
    up.cut_after("big.bin", 100, 1);
    let r = http_get(&url, &[("Range", "bytes=1000-")]);
    assert_eq!(r.status, 206);
    assert!(!r.complete);
    assert_eq!(r.body, data[1000..1100]);

    // Non-matching paths are untouched.
    served_file(t.path(), "other.bin", 10 * KIB);
    up.cut_after("big.bin", 10, 1);
    assert!(http_get(&format!("{}files/other.bin", up.url()), &[]).complete);
}

#[test]
fn stall_after_holds_the_body() {
    let t = tmp();
    let data = served_file(t.path(), "s.bin", 64 * KIB);
    let up = Upstream::start(t.path());
    up.stall_after("s.bin", 1234, 1);
    let r = http_request(
        "GET",
        &format!("{}files/s.bin", up.url()),
        &[],
        Duration::from_millis(700),
    );
    assert_eq!(r.status, 200);
    assert!(!r.complete);
    assert_eq!(r.body, data[..1234]);
    assert!(r.elapsed >= Duration::from_millis(650), "{:?}", r.elapsed);
}

#[test]
fn fail_503_then_recovers() {
    let t = tmp();
    let data = served_file(t.path(), "x.bin", 3 * KIB);
    let up = Upstream::start(t.path());
    let url = format!("{}files/x.bin", up.url());
    up.fail_503("x.bin", 2);
    assert_eq!(http_get(&url, &[]).status, 503);
    assert_eq!(
        http_request("HEAD", &url, &[], Duration::from_secs(5)).status,
        503
    );
    let r = http_get(&url, &[]);
    assert_eq!((r.status, r.body == data), (200, true));
    let statuses: Vec<u16> = up.requests().iter().map(|l| l.status).collect();
    assert_eq!(statuses, vec![503, 503, 200]);
}

#[test]
fn serve_html_captive_portal() {
    let t = tmp();
    let data = served_file(t.path(), "x.rpm", 3 * KIB);
    let up = Upstream::start(t.path());
    let url = format!("{}files/x.rpm", up.url());
    assert_eq!(
        http_get(&url, &[]).header("content-type"),
        Some("application/x-rpm")
    );
    up.serve_html(".rpm", true);
    let r = http_get(&url, &[]);
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert_eq!(r.text(), PORTAL_HTML);
    // Even for a missing file and a conditional request.
    assert_eq!(http_get(&format!("{}nope.rpm", up.url()), &[]).status, 200);
    up.serve_html(".rpm", false);
    let r = http_get(&url, &[]);
    assert_eq!(r.body, data);
}

#[test]
fn throttle_paces_the_body() {
    let t = tmp();
    let data = served_file(t.path(), "t.bin", 200 * KIB);
    let up = Upstream::start(t.path());
    let url = format!("{}files/t.bin", up.url());

    up.throttle(Some(400 * 1024));
    let r = http_get(&url, &[]);
    assert!(r.complete);
    assert_eq!(r.body, data);
    assert!(r.elapsed >= Duration::from_millis(400), "{:?}", r.elapsed);
    assert!(r.elapsed < Duration::from_secs(5), "{:?}", r.elapsed);

    up.throttle(None);
    let r = http_get(&url, &[]);
    assert_eq!(r.body, data);
    assert!(r.elapsed < Duration::from_millis(300), "{:?}", r.elapsed);

    // Throttle + cut combine.
    up.throttle(Some(1024 * 1024));
    up.cut_after("t.bin", 30 * 1024, 1);
    let r = http_get(&url, &[]);
    assert!(!r.complete);
    assert_eq!(r.body, data[..30 * 1024]);
    up.clear_faults();
}

#[test]
fn set_down_refuses_then_comes_back_on_same_port() {
    let t = tmp();
    let data = served_file(t.path(), "d.bin", 400 * KIB);
    let up = Upstream::start(t.path());
    let port = up.port();
    let url = format!("{}files/d.bin", up.url());
    assert_eq!(http_get(&url, &[]).status, 200);

    // An in-flight slow download is dropped when the server goes down.
    up.throttle(Some(100 * 1024));
    let u2 = url.clone();
    let inflight = std::thread::spawn(move || http_get(&u2, &[]));
    assert!(wait_until(
        Duration::from_secs(5),
        Duration::from_millis(10),
        || up.count("d.bin") == 2
    ));
    std::thread::sleep(Duration::from_millis(100));
    up.set_down(true);
    let r = inflight.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(!r.complete);
    assert!(r.body.len() < data.len());
    up.throttle(None);

    for _ in 0..3 {
        let err = try_http_request("GET", &url, &[], Duration::from_secs(2)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    }
    up.set_down(true); // idempotent
    up.set_down(false);
    assert_eq!(up.port(), port);
    let r = http_get(&url, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, data);
    up.set_down(false); // idempotent
    assert_eq!(http_get(&url, &[]).status, 200);
}

#[test]
fn keep_alive_and_many_concurrent_connections() {
    let t = tmp();
    let data = served_file(t.path(), "k.bin", 20 * KIB);
    let up = Upstream::start(t.path());

    // Two requests on one connection.
    let mut s = TcpStream::connect(("127.0.0.1", up.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /files/k.bin HTTP/1.1\r\nHost: x\r\n\r\nGET /files/k.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let heads = all.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count();
    assert_eq!(heads, 2);
    assert!(all.len() > 2 * data.len());

    let url = format!("{}files/k.bin", up.url());
    let handles: Vec<_> = (0..64)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || http_get(&url, &[]))
        })
        .collect();
    for h in handles {
        let r = h.join().unwrap();
        assert!(r.complete && r.status == 200);
        assert_eq!(r.body, data);
    }
    assert_eq!(up.count("k.bin"), 66);
}

/// The kit's HTTP client against canned raw responses.
#[test]
fn http_client_chunked_and_early_close() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let canned: Vec<&'static [u8]> = vec![
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Mixed-Case: Yes\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\n\r\nclose-delimited",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno",
    ];
    let n = canned.len();
    let server = std::thread::spawn(move || {
        for body in canned {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            s.write_all(body).unwrap();
        }
    });
    let url = format!("http://127.0.0.1:{port}/x");
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(http_get(&url, &[("X-Test", "1")]));
    }
    server.join().unwrap();
    assert_eq!(
        (got[0].complete, got[0].text().as_str()),
        (true, "hello world")
    );
    assert_eq!(got[0].headers[1].0, "X-Mixed-Case");
    assert_eq!(got[0].header("x-mixed-case"), Some("Yes"));
    assert_eq!((got[1].complete, got[1].text().as_str()), (false, "hel"));
    assert_eq!((got[2].complete, got[2].text().as_str()), (false, "abc"));
    assert_eq!(
        (got[3].complete, got[3].text().as_str()),
        (true, "close-delimited")
    );
    assert_eq!((got[4].status, got[4].text().as_str()), (404, "no"));
}

#[test]
fn http_dates_round_trip() {
    assert_eq!(fmt_http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(
        parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
        Some(784_111_777)
    );
    assert_eq!(fmt_http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(fmt_http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
    for s in [0u64, 86_399, 951_782_400, 1_700_000_000, 4_102_444_800] {
        assert_eq!(parse_http_date(&fmt_http_date(s)), Some(s));
    }
    assert_eq!(parse_http_date("garbage"), None);
}

#[test]
fn node_config_renders_valid_toml() {
    let mut o = NodeOpts::new("http://127.0.0.1:1234/");
    o.repos.push(RepoCfg::new(
        "two",
        &["http://127.0.0.1:1/a/", "http://127.0.0.1:2/b/"],
    ));
    o.freshness_secs = 7;
    o.peers = vec!["127.0.0.1:9".into()];
    let text = o.to_toml(4321, std::path::Path::new("/tmp/x \"q\"/data"));
    let v: toml::Value = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(v["node"]["data_dir"].as_str(), Some("/tmp/x \"q\"/data"));
    assert_eq!(v["node"]["http_listen"].as_str(), Some("127.0.0.1:4321"));
    assert_eq!(v["node"]["quic_listen"].as_str(), Some("127.0.0.1:0"));
    assert_eq!(v["discovery"]["mdns"].as_bool(), Some(false));
    assert_eq!(v["discovery"]["peers"][0].as_str(), Some("127.0.0.1:9"));
    assert_eq!(v["metadata"]["freshness_secs"].as_integer(), Some(7));
    assert_eq!(v["upstream"]["connect_timeout_secs"].as_integer(), Some(2));
    assert_eq!(v["upstream"]["read_timeout_secs"].as_integer(), Some(5));
    assert_eq!(v["upstream"]["retries"].as_integer(), Some(3));
    let repos = v["repo"].as_array().unwrap();
    assert_eq!(repos.len(), 2);
    assert_eq!(repos[0]["name"].as_str(), Some("test"));
    assert_eq!(repos[0]["urls"][0].as_str(), Some("http://127.0.0.1:1234/"));
    assert_eq!(repos[1]["urls"].as_array().unwrap().len(), 2);

    let a = free_port();
    let b = free_port();
    assert_ne!(a, b);
    assert!((20_000..32_000).contains(&a) && (20_000..32_000).contains(&b));
}

/// A stand-in for `lanmirror` (python3 ships with dnf) so the `Node` helper
/// can be tested before and independently of the real node.
const FAKE_NODE: &str = r#"#!/usr/bin/env python3
import http.server, json, os, re, signal, sys
mode, cfg = sys.argv[1], sys.argv[3]
text = open(cfg).read()
listen = re.search(r'^http_listen = "([^"]+)"', text, re.M).group(1)
data = re.search(r'^data_dir = "([^"]+)"', text, re.M).group(1)
if mode == "verify":
    if os.path.exists(os.path.join(data, "CORRUPT")):
        print("bad blob: CORRUPT"); sys.exit(1)
    print("all good"); sys.exit(0)
if os.environ.get("FAKE_FAIL"):
    print("fake node: refusing to start", file=sys.stderr, flush=True); sys.exit(3)
print("fake node starting on", listen, file=sys.stderr, flush=True)
d = os.path.join(data, "blobs", "ab"); os.makedirs(d, exist_ok=True)
open(os.path.join(d, "ab" + "0" * 62), "w").write("x")
open(os.path.join(d, "not-a-blob"), "w").write("x")
def term(*_):
    print("fake node: got SIGTERM", file=sys.stderr, flush=True); os._exit(0)
signal.signal(signal.SIGTERM, term)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"ok": True, "pid": os.getpid()}).encode() if self.path == "/api/status" else b"nope"
        self.send_response(200 if self.path == "/api/status" else 404)
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
host, port = listen.rsplit(":", 1)
http.server.ThreadingHTTPServer((host, int(port)), H).serve_forever()
"#;

#[test]
fn node_helper_drives_a_stand_in_node() {
    use std::os::unix::fs::PermissionsExt;
    let t = tmp();
    let bin = t.path().join("fake-lanmirror");
    std::fs::write(&bin, FAKE_NODE).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut opts = NodeOpts::new("http://127.0.0.1:9/");
    opts.bin = Some(bin.clone());
    opts.base_dir = Some(t.path().join("node"));
    let mut node = Node::start(opts.clone());
    assert_eq!(node.data_dir(), t.path().join("node/data"));
    assert_eq!(node.log_path(), t.path().join("node/node.log"));
    assert!(node.is_running());
    let st = node.status_json();
    assert_eq!(st["ok"], true);
    let pid1 = node.pid().unwrap();
    assert_eq!(st["pid"], pid1);
    assert_eq!(node.get("/test/x").status, 404);
    assert_eq!(node.repo_url("test"), format!("{}/test/", node.url()));
    let blobs = node.blob_files();
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    assert!(node.log().contains("fake node starting"));

    node.kill9();
    assert!(!node.is_running());
    let err = try_http_request("GET", &node.url(), &[], Duration::from_secs(2)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    node.start_again();
    assert_ne!(node.pid().unwrap(), pid1);
    node.restart();
    assert!(node.log().contains("fake node: got SIGTERM"));
    assert_eq!(node.log().matches("===== test kit: start #").count(), 3);
    assert!(node.log_tail(2).contains("fake node starting"));

    assert_eq!(node.verify(), (true, "all good\n".to_string()));
    std::fs::write(node.data_dir().join("CORRUPT"), b"").unwrap();
    let (ok, report) = node.verify();
    assert!(!ok && report.contains("bad blob"), "{report}");
    assert!(node.stop().unwrap().success());
    assert!(node.stop().is_none());
    drop(node);

    // A node that dies during startup fails fast with its log in the message.
    let mut bad = opts;
    bad.base_dir = Some(t.path().join("bad"));
    bad.env.push(("FAKE_FAIL".into(), "1".into()));
    let start = Instant::now();
    let err = std::panic::catch_unwind(|| Node::start(bad)).unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("node exited during startup"), "{msg}");
    assert!(msg.contains("refusing to start"), "{msg}");
    assert!(start.elapsed() < Duration::from_secs(10));
}
