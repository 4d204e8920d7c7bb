//! What goes wrong in the field, made to happen: a node killed mid-download, upstreams that cut
//! bodies, answer 503, lie about content or serve a captive portal, a blob rotting on disk.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn partial_bytes(node: &Node) -> u64 {
    std::fs::read_dir(node.data_dir().join("partial"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// `kill -9` in the middle of a slow download; after a restart the download resumes with a
/// Range request, dnf installs a correct package and `lanmirror verify` passes.
#[test]
fn kill9_mid_download_then_restart_resumes_and_verifies() {
    let spec = PkgSpec::new("lm-big", "1.0", 6 << 20);
    let Site {
        up, mut node, dir, ..
    } = Site::new(std::slice::from_ref(&spec));

    up.throttle(Some(1 << 20));
    let url = format!("{}/test/Packages/{}", node.url(), spec.file_name());
    let client = std::thread::spawn(move || http_get(&url, &[]));
    assert!(
        wait_until(
            Duration::from_secs(20),
            Duration::from_millis(50),
            || partial_bytes(&node) > 1 << 20
        ),
        "download never got going"
    );
    node.kill9();
    let cut = client.join().unwrap();
    assert!(
        !cut.complete,
        "a killed node cannot have completed the answer"
    );
    let kept = partial_bytes(&node);
    assert!(
        kept > 1 << 20,
        "partial download kept across the crash: {kept}"
    );

    up.throttle(None);
    up.clear_log();
    node.restart();
    let c = Dnf::new(&dir.path().join("c"), &node.repo_url("test"));
    c.install(&["lm-big"]).assert_success();
    assert_eq!(c.payload_size("lm-big"), Some(6 << 20));
    let resumed: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with(".rpm"))
        .collect();
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    let range = resumed[0]
        .range
        .clone()
        .expect("resumed with a Range request");
    let from: u64 = range
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(from >= 1 << 20, "resumed from {from}");
    assert!(resumed[0].if_range.is_some(), "If-Range guards the resume");
    assert_eq!(partial_bytes(&node), 0, "partial file consumed");

    node.stop();
    let (ok, report) = node.verify();
    assert!(ok, "verify after crash and resume: {report}");
}

/// An upstream that drops the connection mid-body, twice: clients still get complete,
/// correct packages.
#[test]
fn bodies_cut_midway_still_give_complete_packages() {
    let site = Site::new(&[
        PkgSpec::new("lm-cut-a", "1.0", 1 << 20),
        PkgSpec::new("lm-cut-b", "1.0", 1 << 20),
    ]);
    let (up, repo) = (&site.up, &site.repo);
    up.cut_after(".rpm", 300_000, 3);
    let c = site.client("c");
    c.install(&["lm-cut-a", "lm-cut-b"]).assert_success();
    assert_eq!(c.payload_size("lm-cut-a"), Some(1 << 20));
    assert_eq!(c.payload_size("lm-cut-b"), Some(1 << 20));
    let ranged = up
        .requests()
        .iter()
        .filter(|r| r.path.ends_with(".rpm") && r.range.is_some())
        .count();
    assert!(
        ranged >= 3,
        "cuts were resumed with Range: {:?}",
        up.requests()
    );
    // And a direct download matches upstream byte for byte.
    let p = repo.package("lm-cut-b");
    let r = site.get_pkg("lm-cut-b");
    assert_eq!(sha256_hex(&r.body), p.sha256_hex);
}

/// A mirror that ignores Range: after a cut, the resume gets a 200 with the whole file; the
/// node restarts from zero and still stores a correct package.
#[test]
fn a_200_answer_to_a_resume_restarts_cleanly_from_zero() {
    let Site {
        repo,
        up,
        node,
        dir: _dir,
    } = Site::new(&[PkgSpec::new("lm-norange", "1.0", 1 << 20)]);
    let p = repo.package("lm-norange");
    up.cut_after(".rpm", 400_000, 1);
    up.ignore_ranges(".rpm", true);
    let r = node.get(&format!("/test/{}", p.rel_path));
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(sha256_hex(&r.body), p.sha256_hex);
    let reqs: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with(".rpm"))
        .collect();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert!(reqs[1].range.is_some(), "the node asked to resume");
    assert_eq!(
        reqs[1].status, 200,
        "the mirror answered with the whole file"
    );
    assert!(node.log().contains("restarting from zero"));
    node.get("/api/status");
    let (blobs, size) = (node.blob_files(), p.size);
    assert!(
        blobs
            .iter()
            .any(|b| std::fs::metadata(b).unwrap().len() == size),
        "stored at its real size, not {size} + a partial prefix"
    );
}

/// An upstream that stops sending mid-body without closing: after the read timeout the node
/// resumes with a Range request and the client gets the whole, correct file.
#[test]
fn a_stalled_body_is_resumed_after_the_read_timeout() {
    let Site {
        repo,
        up,
        node,
        dir: _dir,
    } = Site::with(&[PkgSpec::new("lm-stall", "1.0", 1 << 20)], |o| {
        o.read_timeout_secs = 1
    });
    let p = repo.package("lm-stall");
    up.stall_after(".rpm", 200_000, 1);
    let r = node.get(&format!("/test/{}", p.rel_path));
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(sha256_hex(&r.body), p.sha256_hex);
    let reqs: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with(".rpm"))
        .collect();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[1].range.as_deref(), Some("bytes=200000-"));
}

/// A blob corrupted on disk (same size, other bytes) is found by `verify`, removed, and
/// fetched again on the next request.
#[test]
fn corrupted_blob_is_detected_by_verify_and_refetched() {
    let Site {
        repo,
        up,
        mut node,
        dir: _dir,
    } = Site::new(&[PkgSpec::new("lm-rot", "1.0", 500_000)]);
    let p = repo.package("lm-rot");
    assert_eq!(node.get(&format!("/test/{}", p.rel_path)).status, 200);
    node.stop();
    let (ok, report) = node.verify();
    assert!(ok, "{report}");

    let blob = node
        .blob_files()
        .into_iter()
        .find(|f| std::fs::metadata(f).unwrap().len() == p.size)
        .expect("the package's blob");
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[1000] ^= 0x55;
    std::fs::write(&blob, &bytes).unwrap();
    let (ok, report) = node.verify();
    assert!(!ok, "verify must fail on a corrupted blob: {report}");
    assert!(report.contains("BAD"), "{report}");
    assert!(!blob.exists(), "bad blob removed");
    let (ok, report) = node.verify();
    assert!(ok, "second verify is clean: {report}");

    node.restart();
    up.clear_log();
    node.assert_serves(&p);
    assert_eq!(
        up.count(&p.file_name),
        1,
        "fetched again after verify removed it"
    );
}

/// Upstream sends bytes that do not match primary.xml: the client's transfer is aborted (never
/// a clean end), nothing is stored, and the next request tries upstream again.
#[test]
fn lying_upstream_aborts_the_client_and_stores_nothing() {
    let Site {
        repo,
        up,
        node,
        dir: _dir,
    } = Site::new(&[PkgSpec::new("lm-liar", "1.0", 700_000)]);
    let p = repo.package("lm-liar");
    // Same size, RPM magic intact, different bytes.
    let mut bytes = std::fs::read(&p.path).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&p.path, &bytes).unwrap();
    let blobs_before = node.blob_files().len();

    let r = node.get(&format!("/test/{}", p.rel_path));
    assert!(
        !(r.status == 200 && r.complete),
        "a body failing verification must not end cleanly (status {}, {} bytes)",
        r.status,
        r.body.len()
    );
    assert_eq!(node.blob_files().len(), blobs_before, "nothing stored");
    let st = node.status_json();
    assert_eq!(st["verify_failures"], 1, "{st}");
    assert!(node.log().contains("verification failed"));
    // Not cached as a failure either: the next request goes upstream again.
    let r = node.get(&format!("/test/{}", p.rel_path));
    assert!(!(r.status == 200 && r.complete));
    assert_eq!(up.count(&p.file_name), 2);
}

/// A captive portal answering 200 text/html for packages and metadata is refused and never
/// stored; once it goes away, the real files come through.
#[test]
fn captive_portal_html_is_refused_and_never_stored() {
    let dir = temp();
    let repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[PkgSpec::new("lm-portal", "1.0", 100_000)],
    );
    let p = repo.package("lm-portal");
    let up = Upstream::start(repo.dir());
    let node = Node::start(NodeOpts::new(&up.url()));
    up.serve_html("/", true);
    let r = node.get("/test/repodata/repomd.xml");
    assert_ne!(
        r.status,
        200,
        "portal page served as repomd.xml: {}",
        r.text()
    );
    let r = node.get(&format!("/test/{}", p.rel_path));
    assert_ne!(r.status, 200, "portal page served as a package");
    assert!(node.blob_files().is_empty(), "{:?}", node.blob_files());
    assert!(node.log().contains("captive portal"));

    up.serve_html("/", false);
    // The failed metadata refresh is not retried within the freshness window (2 s).
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(node.get("/test/repodata/repomd.xml").status, 200);
    node.assert_serves(&p);
}

/// 503s are retried; a 404 upstream is a 404 to the client and is not cached as content.
#[test]
fn upstream_503_is_retried_and_404_passes_through() {
    let Site {
        repo,
        up,
        node,
        dir: _dir,
    } = Site::new(&[PkgSpec::new("lm-flaky", "1.0", 100_000)]);
    let p = repo.package("lm-flaky");
    up.fail_503(".rpm", 2);
    node.assert_serves(&p);
    assert_eq!(up.count(&p.file_name), 3);

    let r = node.get("/test/Packages/not-there-1.0-1.noarch.rpm");
    assert_eq!(r.status, 404);
    std::fs::copy(
        &p.path,
        repo.dir().join("Packages/not-there-1.0-1.noarch.rpm"),
    )
    .unwrap();
    let r = node.get("/test/Packages/not-there-1.0-1.noarch.rpm");
    assert_eq!(r.status, 200, "a 404 is not remembered");
}

/// The first bytes reach the client while the upstream transfer is still running (streaming,
/// not store-then-forward), and a client that hangs up does not cancel the transfer.
#[test]
fn misses_stream_and_survive_client_disconnect() {
    let Site {
        repo,
        up,
        node,
        dir: _dir,
    } = Site::new(&[PkgSpec::new("lm-stream", "1.0", 3 << 20)]);
    let p = repo.package("lm-stream");
    up.throttle(Some(1 << 20));

    let mut s = TcpStream::connect(("127.0.0.1", node.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /test/{} HTTP/1.1\r\nhost: x\r\n\r\n", p.rel_path).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while got.len() < 300_000 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    let st = node.status_json();
    assert_eq!(
        st["in_flight_transfers"], 1,
        "bytes arrived while the upstream transfer was still running: {st}"
    );
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    drop(s);

    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            node.status_json()["in_flight_transfers"] == 0
        }),
        "transfer did not finish"
    );
    up.throttle(None);
    node.assert_serves(&p);
    assert_eq!(
        up.count(&p.file_name),
        1,
        "the disconnect did not cancel the transfer"
    );
}

/// A partial download left on disk that no longer fits (longer than the file the metadata
/// names): the node drops it and downloads from zero, without first asking upstream for a range
/// past the end, instead of failing forever.
#[test]
fn an_unusable_partial_file_is_dropped() {
    let Site {
        repo,
        up,
        mut node,
        dir: _dir,
    } = Site::new(&[PkgSpec::new("lm-odd", "1.0", 300_000)]);
    let p = repo.package("lm-odd");
    let etag = http_get(&format!("{}{}", up.url(), p.rel_path), &[])
        .header("etag")
        .unwrap()
        .to_string();
    node.stop();
    let key = format!("test/{}", p.rel_path);
    let name = hex(&blake3::hash(key.as_bytes()).as_bytes()[..16]);
    let partial = node.data_dir().join("partial");
    std::fs::write(
        partial.join(format!("{name}.part")),
        vec![7u8; p.size as usize + 10],
    )
    .unwrap();
    std::fs::write(
        partial.join(format!("{name}.meta")),
        serde_json::json!({ "etag": etag, "last_modified": null }).to_string(),
    )
    .unwrap();
    node.restart();
    up.clear_log();
    node.assert_serves(&p);
    let statuses: Vec<u16> = up
        .requests()
        .iter()
        .filter(|r| r.path.ends_with(".rpm"))
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![200], "{:?}", up.requests());
}

/// Bytes that cannot be what the name says (an ".rpm" without the RPM lead): a clean 502 that
/// says why, never a 200 that gets cut, and nothing stored.
#[test]
fn a_body_that_is_not_what_its_name_says_is_a_clean_error() {
    let site = Site::new(&[PkgSpec::new("lm-real", "1.0", 10_000)]);
    let fake = site.repo.dir().join("Packages/fake-1.0-1.noarch.rpm");
    std::fs::write(&fake, payload_bytes("fake", "1", 200_000)).unwrap();
    let blobs = site.node.blob_files().len();
    let r = site.node.get("/test/Packages/fake-1.0-1.noarch.rpm");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.complete);
    assert!(r.text().contains("not an RPM package"), "{}", r.text());
    assert_eq!(site.node.blob_files().len(), blobs);
    assert!(
        !site.node.log().contains("captive portal"),
        "not called HTML"
    );
}

/// `verify` removed a corrupted repomd.xml: the node fetches the tree's metadata again instead
/// of failing on the missing file.
#[test]
fn a_snapshot_with_missing_files_is_fetched_again() {
    let Site {
        up,
        mut node,
        dir: _dir,
        ..
    } = Site::new(&[PkgSpec::new("lm-md", "1.0", 10_000)]);
    let repomd = node.get("/test/repodata/repomd.xml").body;
    node.stop();
    let blob = node
        .blob_files()
        .into_iter()
        .find(|b| std::fs::read(b).unwrap() == repomd)
        .expect("repomd.xml's blob");
    let mut bytes = repomd.clone();
    bytes[10] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let (ok, report) = node.verify();
    assert!(!ok, "{report}");
    node.restart();
    let r = node.get("/test/repodata/repomd.xml");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, repomd);
    let refetched = up
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/repomd.xml"))
        .count();
    assert_eq!(refetched, 1, "{:?}", up.requests());
}

/// A blob file lost while the node was down (a crash after a disk problem, a careless
/// cleanup): start-up recovery drops its rows, the node starts and fetches it again; and
/// `verify` counts such a loss as something bad.
#[test]
fn a_blob_lost_while_stopped_is_recovered_at_start() {
    let Site {
        repo,
        up,
        mut node,
        dir: _dir,
    } = Site::new(&[PkgSpec::new("lm-lost", "1.0", 100_000)]);
    let p = repo.package("lm-lost");
    let blob_of_package = |node: &Node| {
        node.blob_files()
            .into_iter()
            .find(|b| std::fs::metadata(b).unwrap().len() == p.size)
            .expect("the package's blob")
    };
    assert_eq!(node.get(&format!("/test/{}", p.rel_path)).status, 200);
    node.stop();
    std::fs::remove_file(blob_of_package(&node)).unwrap();
    node.restart();
    assert!(
        node.log().contains("start-up recovery"),
        "{}",
        node.log_tail(10)
    );
    up.clear_log();
    node.assert_serves(&p);
    assert_eq!(up.count(&p.file_name), 1);

    node.stop();
    std::fs::write(blob_of_package(&node), b"short").unwrap();
    let (ok, report) = node.verify();
    assert!(!ok, "a lost blob is something bad: {report}");
    assert!(report.contains("BAD"), "{report}");
}

/// The file changes upstream while a client is mid-way, and the mirror answers the resume with
/// the whole new file: the client that got the old beginning is cut off (never handed a
/// spliced file as complete); the next client gets the new file whole.
#[test]
fn a_file_changing_mid_transfer_is_never_spliced() {
    let site = Site::new(&[PkgSpec::new("lm-any", "1.0", 10_000)]);
    let img = site.repo.dir().join("images/boot.img");
    std::fs::create_dir_all(img.parent().unwrap()).unwrap();
    std::fs::write(&img, payload_bytes("boot", "1", 1 << 20)).unwrap();
    let new = payload_bytes("boot", "2", 1 << 20);
    site.up.throttle(Some(512 << 10));
    site.up.cut_after("boot.img", 300_000, 1);
    site.up.ignore_ranges("boot.img", true);
    let url = format!("{}/test/images/boot.img", site.node.url());
    let r = std::thread::scope(|s| {
        let client = s.spawn(|| http_get(&url, &[]));
        assert!(
            wait_until(Duration::from_secs(10), Duration::from_millis(10), || {
                partial_bytes(&site.node) > 100_000
            }),
            "download never got going"
        );
        std::fs::write(&img, &new).unwrap();
        client.join().unwrap()
    });
    assert!(
        !(r.status == 200 && r.complete),
        "old beginning + new rest handed out as a complete file"
    );
    site.up.throttle(None);
    let r = site.node.get("/test/images/boot.img");
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(r.body, new);
}

/// A node stopped after a download's last byte but before its install leaves a complete part
/// file: after a restart it is checked against the metadata and installed, with no upstream
/// request for it. A complete-length part file with the wrong bytes is dropped and the file is
/// fetched whole (no Range past its end, no 416).
#[test]
fn a_complete_partial_file_is_installed_without_fetching_again() {
    let Site {
        repo,
        up,
        mut node,
        dir: _dir,
    } = Site::new(&[
        PkgSpec::new("lm-held", "1.0", 2 << 20),
        PkgSpec::new("lm-held-bad", "1.0", 300_000),
    ]);
    // The metadata names both packages' checksums and sizes.
    assert_eq!(node.get("/test/repodata/repomd.xml").status, 200);
    node.stop();
    let plant = |name: &str, bytes: Vec<u8>| {
        let p = repo.package(name);
        let key = format!("test/{}", p.rel_path);
        let part = hex(&blake3::hash(key.as_bytes()).as_bytes()[..16]);
        let dir = node.data_dir().join("partial");
        std::fs::write(dir.join(format!("{part}.part")), bytes).unwrap();
        let meta = serde_json::json!({ "checksum": format!("sha256:{}", p.sha256_hex) });
        std::fs::write(dir.join(format!("{part}.meta")), meta.to_string()).unwrap();
        p
    };
    let good = repo.package("lm-held");
    let good = plant(
        "lm-held",
        std::fs::read(repo.dir().join(&good.rel_path)).unwrap(),
    );
    let bad = repo.package("lm-held-bad");
    let bad = plant("lm-held-bad", vec![0x5a; bad.size as usize]);
    node.restart();
    up.clear_log();
    node.assert_serves(&good);
    assert_eq!(
        up.count(&good.file_name),
        0,
        "went upstream for a file it held whole: {:?}",
        up.requests()
    );
    assert_eq!(node.status_json()["bytes_fetched_upstream"], 0);
    node.assert_serves(&bad);
    let asked: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with(&bad.file_name))
        .map(|r| (r.status, r.range))
        .collect();
    assert_eq!(asked, vec![(200, None)], "{:?}", up.requests());
    assert!(
        node.log().contains("already held from an earlier download"),
        "{}",
        node.log_tail(30)
    );
    node.stop();
    let (ok, report) = node.verify();
    assert!(ok, "{report}");
}
