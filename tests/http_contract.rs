//! The HTTP contract seen from a client's socket: headers, ranges, conditional requests,
//! refusals, bounds. Run against hits (the zero-copy path) and the hyper path alike.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn site() -> Site {
    Site::new(&[PkgSpec::new("lm-http", "1.0", 300_000)])
}

/// Sends raw bytes, returns the raw answer (until close or `limit` bytes).
fn raw(port: u16, request: &[u8], limit: usize) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while out.len() < limit {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

#[test]
fn whole_ranged_multipart_and_unsatisfiable_answers() {
    let s = site();
    let p = s.repo.package("lm-http");
    let path = format!("/test/{}", p.rel_path);
    let whole = std::fs::read(&p.path).unwrap();
    // Twice: the miss (hyper path), then the hit (zero-copy path).
    for _ in 0..2 {
        let r = s.node.get(&path);
        assert_eq!(r.status, 200);
        assert_eq!(r.content_length(), Some(p.size));
        assert_eq!(r.body, whole);
    }
    let r = s.node.get(&path);
    assert!(r.header("etag").is_some() && r.header("last-modified").is_some());
    assert_eq!(r.header("accept-ranges"), Some("bytes"));

    let r = s.node.get_with(&path, &[("Range", "bytes=100-199")]);
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(&*format!("bytes 100-199/{}", p.size))
    );
    assert_eq!(r.body, &whole[100..200]);
    // librepo must not see a capitalised Content-Length on a 206 (see notes/dnf-protocol.md).
    assert!(
        r.headers.iter().any(|(k, _)| k == "content-length"),
        "{:?}",
        r.headers
    );

    let r = s.node.get_with(&path, &[("Range", "bytes=-10")]);
    assert_eq!(r.body, &whole[whole.len() - 10..]);

    let r = s.node.get_with(&path, &[("Range", "bytes=0-3,1000-1009")]);
    assert_eq!(r.status, 206);
    let ct = r.header("content-type").unwrap().to_string();
    let boundary = ct.split("boundary=").nth(1).expect("multipart boundary");
    assert_eq!(r.content_length(), Some(r.body.len() as u64));
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(
        text.matches(&format!("--{boundary}")).count(),
        3,
        "two parts and a close"
    );
    assert!(text.contains(&format!("bytes 1000-1009/{}", p.size)));
    let at = r.body.windows(4).rposition(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(&r.body[at..at + 10], &whole[1000..1010]);

    let r = s
        .node
        .get_with(&path, &[("Range", &format!("bytes={}-", p.size + 5))]);
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(&*format!("bytes */{}", p.size))
    );

    // If-Range with a stale validator: the whole file.
    let r = s
        .node
        .get_with(&path, &[("Range", "bytes=0-9"), ("If-Range", "\"old\"")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len() as u64, p.size);
}

#[test]
fn head_and_conditional_requests() {
    let s = site();
    let p = s.repo.package("lm-http");
    let path = format!("/test/{}", p.rel_path);
    let r = http_request(
        "HEAD",
        &format!("{}{path}", s.node.url()),
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.content_length(), Some(p.size));
    assert!(r.body.is_empty());
    s.node.get(&path); // the miss streams; validators come with stored answers
    let r = s.node.get(&path);
    let etag = r.header("etag").unwrap().to_string();
    let lm = r.header("last-modified").unwrap().to_string();
    // dnf never sends conditionals: a plain GET is never 304.
    assert_eq!(s.node.get(&path).status, 200);
    assert_eq!(
        s.node.get_with(&path, &[("If-None-Match", &etag)]).status,
        304
    );
    assert_eq!(
        s.node.get_with(&path, &[("If-Modified-Since", &lm)]).status,
        304
    );
    assert_eq!(
        s.node.get_with(&path, &[("If-None-Match", "\"x\"")]).status,
        200
    );
    let r = s.node.get("/test/repodata/repomd.xml");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("<repomd"));
}

#[test]
fn paths_leaving_the_repo_are_refused_before_any_io() {
    let s = site();
    s.up.clear_log();
    for bad in [
        "/test/../etc/passwd",
        "/test/%2e%2e/%2e%2e/etc/passwd",
        "/test/Packages/..%2f..%2fetc%2fpasswd",
        "/test/a%00.rpm",
        "/test/a%5c..%5cb.rpm",
        "/test/%252e%252e/%252e%252e/etc/passwd",
        "/test/Packages/a.rpm%3Fx=1",
        "/test/Packages/a.rpm%23frag",
    ] {
        let out = raw(
            s.node.port(),
            format!("GET {bad} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
            1 << 16,
        );
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 400"), "{bad}: {text}");
    }
    assert!(
        s.up.requests().is_empty(),
        "nothing went upstream: {:?}",
        s.up.requests()
    );
    for missing in ["/other/x.rpm", "/", "/test/"] {
        let r = s.node.get(missing);
        assert!(
            r.status == 404 || (missing == "/" && r.status == 200),
            "{missing}: {}",
            r.status
        );
    }
    let r = http_request(
        "POST",
        &format!("{}/test/x.rpm", s.node.url()),
        &[],
        Duration::from_secs(5),
    );
    assert_eq!(r.status, 405);
    // An absolute-form target (forward-proxy style) is not proxied anywhere.
    let out = raw(
        s.node.port(),
        b"GET http://127.0.0.1:1/x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        1 << 16,
    );
    assert!(!String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    assert!(s.up.requests().is_empty());
}

#[test]
fn oversized_heads_are_refused_and_keep_alive_works() {
    let s = site();
    let p = s.repo.package("lm-http");
    let huge = format!(
        "GET /test/{} HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n",
        p.rel_path,
        "a".repeat(40_000)
    );
    let out = raw(s.node.port(), huge.as_bytes(), 1 << 16);
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // Three pipelined requests on one connection: three answers.
    let one = format!("HEAD /test/{} HTTP/1.1\r\nhost: x\r\n\r\n", p.rel_path);
    let req = format!("{one}{one}GET /api/status HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let out = raw(s.node.port(), req.as_bytes(), 1 << 20);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text}");
}

#[test]
fn status_and_metrics_report_the_work() {
    let s = site();
    let p = s.repo.package("lm-http");
    s.node.get(&format!("/test/{}", p.rel_path));
    s.node.get(&format!("/test/{}", p.rel_path));
    let st = s.node.status_json();
    assert!(st["hits"].as_u64().unwrap() >= 1, "{st}");
    assert!(st["misses"].as_u64().unwrap() >= 2, "{st}");
    assert!(
        st["bytes_fetched_upstream"].as_u64().unwrap() >= p.size,
        "{st}"
    );
    assert!(st["bytes_served"].as_u64().unwrap() >= 2 * p.size, "{st}");
    assert_eq!(st["in_flight_transfers"], 0);
    let snap = &st["repos"][0]["snapshots"][0];
    assert!(
        snap["revision"].is_string() && snap["age_secs"].is_u64(),
        "{st}"
    );
    let m = s.node.get("/metrics");
    assert_eq!(m.status, 200);
    let text = m.text();
    assert!(text.contains("# TYPE lanmirror_hits_total counter"));
    assert!(
        text.lines()
            .any(|l| l.starts_with("lanmirror_upstream_bytes_total ") && !l.ends_with(" 0"))
    );
    assert!(
        text.contains("lanmirror_snapshot_age_seconds{tree=\"test/\"}"),
        "{text}"
    );
}

#[test]
fn status_command_and_verify_refusing_a_running_node() {
    let s = site();
    let out = std::process::Command::new(common::node::node_bin())
        .args(["status", "--json", "--config"])
        .arg(s.node.config_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["repos"][0]["name"], "test");
    // Without --json: the dashboard as a table (its own test is in dashboard.rs).
    let out = std::process::Command::new(common::node::node_bin())
        .args(["status", "--url", &s.node.url()])
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Repositories") && text.contains("test"),
        "{text}"
    );
    // verify needs the store to itself: a clear refusal while the node runs.
    let (ok, report) = s.node.verify();
    assert!(!ok);
    assert!(report.contains("stop it first"), "{report}");
}

#[test]
fn cold_node_with_upstream_down_says_so() {
    let node = Node::start(NodeOpts::new(&format!("http://127.0.0.1:{}/", free_port())));
    let r = node.get("/test/repodata/repomd.xml");
    assert_eq!(r.status, 504, "{}", r.text());
    let r = node.get("/test/repodata/repomd.xml");
    assert_eq!(r.status, 504);
    assert!(r.text().contains("unreachable"), "{}", r.text());
    let r = node.get("/test/Packages/x-1-1.noarch.rpm");
    assert_eq!(r.status, 504, "{}", r.text());
}

/// zchunk's own downloader, a real multi-range client: it reuses the chunks of an old file and
/// fetches only the missing ones with `206 multipart/byteranges` requests (up to 256 ranges
/// each), failing if the server answers ranges with the whole file.
#[test]
fn zckdl_fetches_only_missing_chunks_through_the_node() {
    let dir = temp();
    let mirror = dir.path().join("mirror");
    let work = dir.path().join("work");
    std::fs::create_dir_all(mirror.join("repodata")).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    // Two versions of a text file, a few lines apart, as zchunk files.
    let mut lines: Vec<String> = (0..20_000)
        .map(|i| {
            format!(
                "line {i} {}\n",
                hex(&payload_bytes("zck", "1", 24)[(i % 8)..][..16])
            )
        })
        .collect();
    std::fs::write(work.join("old.txt"), lines.concat()).unwrap();
    lines[5000] = "changed\n".into();
    lines[15000] = "changed too\n".into();
    std::fs::write(work.join("new.txt"), lines.concat()).unwrap();
    for f in ["old.txt", "new.txt"] {
        let st = std::process::Command::new("zck")
            .arg(f)
            .current_dir(&work)
            .status()
            .expect(
                "zck (Debian package zchunk) must be installed: ./scripts/test-all installs it",
            );
        assert!(st.success());
    }
    let new = std::fs::read(work.join("new.txt.zck")).unwrap();
    let name = format!("{}-filelists.xml.zck", sha256_hex(&new));
    std::fs::write(mirror.join("repodata").join(&name), &new).unwrap();
    let up = Upstream::start(&mirror);
    let node = Node::start(NodeOpts::new(&up.url()));
    let url = format!("{}/test/repodata/{name}", node.url());

    // Twice: first on a cold node (the ranges wait for the stored file), then on hits.
    for round in 0..2 {
        let out_dir = work.join(format!("round{round}"));
        std::fs::create_dir_all(&out_dir).unwrap();
        let out = std::process::Command::new("zckdl")
            .args(["--fail-no-ranges", "-v", "-s"])
            .arg(work.join("old.txt.zck"))
            .arg(&url)
            .current_dir(&out_dir)
            .output()
            .unwrap();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "round {round}: {log}");
        assert_eq!(
            std::fs::read(out_dir.join(&name)).unwrap(),
            new,
            "round {round}"
        );
    }
    assert_eq!(
        up.count(&name),
        1,
        "one upstream download: {:?}",
        up.requests()
    );
    let st = node.status_json();
    assert!(
        st["bytes_served"].as_u64().unwrap() < 2 * new.len() as u64,
        "only missing chunks were sent twice: {st}"
    );
}

/// `http.max_connections` bounds the connections served at once: further ones wait (in the
/// kernel's accept queue) and are served as soon as a slot frees.
#[test]
fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let site = Site::with(&[PkgSpec::new("lm-conn", "1.0", 10_000)], |o| {
        o.extra_toml = "[http]\nmax_connections = 2".into();
    });
    let port = site.node.port();
    // Site::with's own request is done; hold both slots with idle connections.
    let idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(("127.0.0.1", port)).unwrap();
    third
        .write_all(b"GET /api/status HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        third.read(&mut buf).is_err(),
        "a third connection was served while two held the only slots"
    );
    drop(idle);
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = third.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}
