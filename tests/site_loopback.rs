//! Several real nodes on 127.0.0.1 joined by static peers (`[discovery] peers`, mDNS off): the
//! peer protocol and the site's policies — one upstream download per site, repomd.xml checked
//! by each node itself but the files it names fetched once per site, holders, the fetcher,
//! admission by site key, bad bytes from a peer, a fetcher that dies; and site trust: a node
//! whose uplink breaks freezes nobody, static peers are pinned to their first node id, and a
//! node without a site key says so. The real-LAN version (namespaces, mDNS) is `site_lan.rs`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// N nodes in front of one upstream, each listing every other as a static peer.
struct LoopSite {
    nodes: Vec<Node>,
}

impl LoopSite {
    fn start(n: usize, up: &Upstream, tweak: impl Fn(usize, &mut NodeOpts)) -> LoopSite {
        let quic: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let nodes = (0..n)
            .map(|i| {
                let mut o = NodeOpts::new(&up.url());
                o.quic_listen = format!("127.0.0.1:{}", quic[i]);
                o.peers = (0..n)
                    .filter(|j| *j != i)
                    .map(|j| format!("127.0.0.1:{}", quic[j]))
                    .collect();
                o.freshness_secs = 60;
                tweak(i, &mut o);
                Node::start(o)
            })
            .collect();
        LoopSite { nodes }
    }

    /// Every node loads its metadata snapshot at the same moment (as dnf's first request does),
    /// so packages are checked against primary.xml.
    fn load_metadata(&self) {
        std::thread::scope(|s| {
            for n in &self.nodes {
                s.spawn(move || {
                    let r = n.get("/test/repodata/repomd.xml");
                    assert_eq!(r.status, 200, "{}", n.log_tail(20));
                });
            }
        });
    }

    /// Waits until every node counts `want` healthy peers.
    fn wait_joined(&self, want: usize) {
        for n in &self.nodes {
            let ok = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
                healthy_peers(n) == want
            });
            assert!(
                ok,
                "node did not join: {}\n{}",
                n.status_json(),
                n.log_tail(40)
            );
        }
    }
}

fn stat(n: &Node, k: &str) -> u64 {
    n.status_json()[k].as_u64().unwrap_or(0)
}

/// Upstream requests for repomd.xml itself (not its .asc/.key).
fn repomd_count(up: &Upstream) -> usize {
    up.requests()
        .iter()
        .filter(|r| r.path.ends_with("/repomd.xml"))
        .count()
}

fn write_key(dir: &Path, name: &str, secret: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    write_private(&p, secret);
    p
}

/// A package one node fetched is served to another node's dnf client from the site, with no
/// new upstream request. Each node checks repomd.xml with upstream itself (freshness is each
/// node's own, DESIGN invariant 8), but the metadata files it names cross the uplink once for
/// the site.
#[test]
fn second_node_gets_packages_and_metadata_from_the_site() {
    let dir = temp();
    let repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[
            PkgSpec::new("lp-a", "1.0", 1 << 20),
            PkgSpec::new("lp-b", "1.0", 300_000).requires("lp-a"),
        ],
    );
    let up = Upstream::start(repo.dir());
    let mut site = LoopSite::start(2, &up, |_, _| {});
    site.wait_joined(1);
    let (a, b) = (&site.nodes[0], &site.nodes[1]);

    Dnf::new(&dir.path().join("ca"), &a.repo_url("test"))
        .install(&["lp-b"])
        .assert_success();
    assert_eq!(up.count(".rpm"), 2, "{:?}", up.requests());
    let repomd_before = repomd_count(&up);
    let meta_files = repo.metadata_files();
    let meta_before: Vec<usize> = meta_files.iter().map(|f| up.count(f)).collect();
    up.clear_log();

    let cb = Dnf::new(&dir.path().join("cb"), &b.repo_url("test"));
    cb.install(&["lp-b"]).assert_success();
    assert_eq!(cb.payload_size("lp-a"), Some(1 << 20));
    assert_eq!(
        up.count(".rpm"),
        0,
        "node B went upstream for packages A holds: {:?}",
        up.requests()
    );
    // Each package crossed the uplink once for the site, whichever node was its fetcher, and
    // reached the other node over QUIC.
    let both = |k: &str| stat(a, k) + stat(b, k);
    let sizes = repo.package("lp-a").size + repo.package("lp-b").size;
    assert!(
        both("from_peers") >= 2,
        "{}\n{}",
        a.status_json(),
        b.status_json()
    );
    assert!(both("bytes_from_peers") >= sizes, "{}", b.status_json());
    assert!(both("bytes_to_peers") >= sizes, "{}", a.status_json());
    // Metadata: each node asked upstream for repomd.xml itself, once; every file it names
    // crossed the uplink at most once for the site (B took the rest from A or the fetcher).
    assert_eq!(
        repomd_before + repomd_count(&up),
        2,
        "each node checks repomd.xml upstream exactly once: {:?}",
        up.requests()
    );
    for (f, before) in meta_files.iter().zip(meta_before) {
        assert!(
            before + up.count(f) <= 1,
            "{f} crossed the uplink more than once for the site: {:?}",
            up.requests()
        );
    }
    // B stored what it served: it can serve alone now.
    site.nodes[0].stop();
    let b = &site.nodes[1];
    let r = b.get(&format!("/test/{}", repo.package("lp-a").rel_path));
    assert_eq!(r.status, 200);
    assert_eq!(sha256_hex(&r.body), repo.package("lp-a").sha256_hex);
    assert_eq!(up.count(".rpm"), 0);
}

/// Three cold nodes whose clients all ask at the same moment: exactly one upstream download
/// per package for the whole site; repomd.xml checked by each node itself (invariant 8), the
/// files it names fetched once for the site.
#[test]
fn three_cold_nodes_download_each_package_once() {
    let dir = temp();
    let repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[
            PkgSpec::new("lc-a", "1.0", 3 << 20),
            PkgSpec::new("lc-b", "1.0", 2 << 20),
        ],
    );
    let up = Upstream::start(repo.dir());
    let site = LoopSite::start(3, &up, |_, _| {});
    site.wait_joined(2);
    site.load_metadata();
    assert_eq!(
        repomd_count(&up),
        3,
        "each node checks repomd.xml upstream exactly once: {:?}",
        up.requests()
    );
    for f in repo.metadata_files() {
        assert!(
            up.count(&f) <= 1,
            "{f} crossed the uplink more than once for the site: {:?}",
            up.requests()
        );
    }
    up.throttle(Some(4 << 20));
    let pkgs = ["lc-a", "lc-b"];
    std::thread::scope(|s| {
        for (i, n) in site.nodes.iter().enumerate() {
            for p in pkgs {
                let pkg = repo.package(p);
                s.spawn(move || {
                    let r = n.get(&format!("/test/{}", pkg.rel_path));
                    assert_eq!(r.status, 200, "node {i} {p}");
                    assert_eq!(sha256_hex(&r.body), pkg.sha256_hex, "node {i} {p}");
                });
            }
        }
    });
    for p in pkgs {
        assert_eq!(
            up.count(&repo.package(p).file_name),
            1,
            "{p} crossed the uplink more than once: {:?}",
            up.requests()
        );
    }
    let unique: u64 = pkgs.iter().map(|p| repo.package(p).size).sum();
    let fetched: u64 = site
        .nodes
        .iter()
        .map(|n| stat(n, "bytes_fetched_upstream"))
        .sum();
    // Every metadata file once, plus repomd.xml once more for each of the two other nodes.
    let repomd = std::fs::metadata(repo.repomd_path()).unwrap().len();
    let meta: u64 = repo
        .metadata_files()
        .iter()
        .map(|f| std::fs::metadata(repo.dir().join(f)).map_or(0, |m| m.len()))
        .sum();
    assert!(
        fetched <= unique + meta + 2 * repomd + 8192,
        "upstream bytes {fetched} > unique {unique} + metadata {meta} + two more repomd.xml"
    );
}

/// A node with another site key is refused both ways, says why, and its client still works
/// through upstream.
#[test]
fn a_node_with_the_wrong_site_key_is_refused() {
    let dir = temp();
    let repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[PkgSpec::new("lk-a", "1.0", 200_000)],
    );
    let up = Upstream::start(repo.dir());
    let good = write_key(dir.path(), "good.key", "0123456789abcdef-the-site-secret\n");
    let bad = write_key(
        dir.path(),
        "bad.key",
        "some-other-secret-0123456789abcdef\n",
    );
    let site = LoopSite::start(3, &up, |i, o| {
        o.site_key_file = Some(if i == 2 { bad.clone() } else { good.clone() });
    });
    site.wait_joined_subset(&[0, 1], 1);
    let intruder = &site.nodes[2];
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(healthy_peers(intruder), 0, "{}", intruder.status_json());
    assert_eq!(
        healthy_peers(&site.nodes[0]),
        1,
        "{}",
        site.nodes[0].status_json()
    );
    assert!(
        stat(intruder, "peers_refused") >= 1,
        "{}",
        intruder.status_json()
    );
    assert!(
        intruder.log().contains("site key"),
        "{}",
        intruder.log_tail(30)
    );
    assert!(
        site.nodes[0].log().contains("site key"),
        "{}",
        site.nodes[0].log_tail(30)
    );

    // The members share; the intruder gets nothing from them.
    let pkg = repo.package("lk-a");
    assert_eq!(site.nodes[0].assert_serves(&pkg).status, 200);
    up.clear_log();
    assert_eq!(intruder.assert_serves(&pkg).status, 200);
    assert_eq!(
        up.count(&pkg.file_name),
        1,
        "the intruder must use upstream"
    );
    assert_eq!(stat(intruder, "from_peers"), 0);
}

impl LoopSite {
    fn wait_joined_subset(&self, which: &[usize], want: usize) {
        for &i in which {
            let n = &self.nodes[i];
            let ok = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
                healthy_peers(n) == want
            });
            assert!(
                ok,
                "node {i} did not join: {}\n{}",
                n.status_json(),
                n.log_tail(40)
            );
        }
    }
}

/// A holder whose stored copy went bad: the asking node detects it, puts the peer aside, gets
/// the file from the next source, and never stores or completes the bad bytes.
#[test]
fn bad_bytes_from_a_peer_are_detected_and_never_served() {
    let dir = temp();
    let repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[PkgSpec::new("lx-a", "1.0", 2 << 20)],
    );
    let up = Upstream::start(repo.dir());
    // A alone first, so that it (and not B, as the site's downloader) holds the package.
    let qa = free_port();
    let mut oa = NodeOpts::new(&up.url());
    oa.quic_listen = format!("127.0.0.1:{qa}");
    let a = Node::start(oa);
    let pkg = repo.package("lx-a");
    assert_eq!(a.get("/test/repodata/repomd.xml").status, 200);
    a.assert_serves(&pkg);
    // Rot one byte of A's blob, same size.
    let blob = a
        .blob_files()
        .into_iter()
        .find(|f| std::fs::metadata(f).is_ok_and(|m| m.len() == pkg.size))
        .expect("A's blob");
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&blob, &bytes).unwrap();
    let mut ob = NodeOpts::new(&up.url());
    ob.peers = vec![format!("127.0.0.1:{qa}")];
    let b = Node::start(ob);
    assert!(wait_until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || healthy_peers(&b) == 1
    ));
    // Only B lists A; A, dialled and admitted, dials back (README: one side is enough).
    assert!(wait_until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || healthy_peers(&a) == 1
    ));
    assert_eq!(b.get("/test/repodata/repomd.xml").status, 200);
    up.clear_log();

    // The client of the bad transfer is cut off (never a complete wrong file); asking again
    // gives the right bytes.
    let url = format!("/test/{}", pkg.rel_path);
    let first = b.get(&url);
    assert!(
        first.body.len() < pkg.size as usize || sha256_hex(&first.body) == pkg.sha256_hex,
        "B completed a response with bad bytes"
    );
    let r = b.get(&url);
    assert_eq!(r.status, 200);
    assert_eq!(sha256_hex(&r.body), pkg.sha256_hex, "B served bad bytes");
    assert!(stat(&b, "peer_verify_failures") >= 1, "{}", b.status_json());
    assert!(
        b.log().contains("failed verification"),
        "{}",
        b.log_tail(30)
    );
    assert_eq!(up.count(&pkg.file_name), 1, "B fell back to upstream");
    // B stored only the good bytes.
    let stored: Vec<_> = b
        .blob_files()
        .into_iter()
        .filter(|f| std::fs::metadata(f).is_ok_and(|m| m.len() == pkg.size))
        .collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(
        sha256_hex(&std::fs::read(&stored[0]).unwrap()),
        pkg.sha256_hex
    );
    let peers = b.status_json()["peers"].clone();
    assert!(
        peers[0]["put_aside_secs"].as_u64().unwrap_or(0) > 0,
        "A must be put aside: {peers}"
    );
}

/// The fetcher of an item dies mid-site: the others notice and go upstream directly
/// (availability beats strictness), and keep serving what they hold.
#[test]
fn a_dead_fetcher_does_not_stop_the_site() {
    let dir = temp();
    let repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[
            PkgSpec::new("ld-a", "1.0", 500_000),
            PkgSpec::new("ld-b", "1.0", 500_000),
            PkgSpec::new("ld-c", "1.0", 500_000),
        ],
    );
    let up = Upstream::start(repo.dir());
    let mut site = LoopSite::start(2, &up, |_, _| {});
    site.wait_joined(1);
    site.load_metadata();
    let a = repo.package("ld-a");
    site.nodes[1].assert_serves(&a);
    site.nodes[0].kill9();
    // Everything: what B holds, and what nobody holds (the fetcher may have been A).
    for p in ["ld-a", "ld-b", "ld-c"] {
        let pkg = repo.package(p);
        let r = site.nodes[1].get(&format!("/test/{}", pkg.rel_path));
        assert_eq!(r.status, 200, "{p}: {}", site.nodes[1].log_tail(20));
        assert_eq!(sha256_hex(&r.body), pkg.sha256_hex);
    }
    let ok = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        healthy_peers(&site.nodes[1]) == 0
    });
    assert!(ok, "{}", site.nodes[1].status_json());
}

/// Readers of a transfer whose bytes came from a peer that then fails verification are cut at
/// once, not when the next source has re-downloaded the whole file; a client that joins after
/// that follows the next source and gets the right file.
#[test]
fn readers_of_bad_peer_bytes_are_cut_at_once_and_late_joiners_are_served() {
    let dir = temp();
    let repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[PkgSpec::new("lr-a", "1.0", 6 << 20)],
    );
    let up = Upstream::start(repo.dir());
    let qa = free_port();
    let mut oa = NodeOpts::new(&up.url());
    oa.quic_listen = format!("127.0.0.1:{qa}");
    let a = Node::start(oa);
    let pkg = repo.package("lr-a");
    assert_eq!(a.get("/test/repodata/repomd.xml").status, 200);
    a.assert_serves(&pkg);
    let blob = a
        .blob_files()
        .into_iter()
        .find(|f| std::fs::metadata(f).is_ok_and(|m| m.len() == pkg.size))
        .expect("A's blob");
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x55;
    std::fs::write(&blob, &bytes).unwrap();
    let mut ob = NodeOpts::new(&up.url());
    ob.peers = vec![format!("127.0.0.1:{qa}")];
    let b = Node::start(ob);
    assert!(wait_until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || healthy_peers(&b) == 1
    ));
    assert_eq!(b.get("/test/repodata/repomd.xml").status, 200);
    up.clear_log();
    // The re-download from upstream takes about 6 s.
    up.throttle(Some(1 << 20));
    let url = format!("{}/test/{}", b.url(), pkg.rel_path);
    let joined_before = stat(&b, "joined_transfers");
    let started = std::time::Instant::now();
    let first: Vec<Response> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3).map(|_| s.spawn(|| http_get(&url, &[]))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let cut_after = started.elapsed();
    for r in &first {
        assert!(
            !r.complete || sha256_hex(&r.body) == pkg.sha256_hex,
            "a reader completed with bad bytes"
        );
    }
    assert!(
        first.iter().all(|r| !r.complete),
        "every reader of the bad bytes is cut: {:?}",
        first
            .iter()
            .map(|r| (r.status, r.body.len(), r.complete))
            .collect::<Vec<_>>()
    );
    assert!(
        cut_after < Duration::from_secs(4),
        "readers were cut only after {cut_after:?}, not when the peer's bytes failed"
    );
    // A client that joins now follows the upstream transfer from byte 0.
    let late = http_get(&url, &[]);
    assert_eq!(late.status, 200);
    assert!(late.complete, "the late joiner was cut");
    assert_eq!(sha256_hex(&late.body), pkg.sha256_hex);
    assert!(
        stat(&b, "joined_transfers") >= joined_before + 3,
        "the late client must have joined the running transfer: {}",
        b.status_json()
    );
    assert_eq!(up.count(&pkg.file_name), 1, "{:?}", up.requests());
    assert!(stat(&b, "peer_verify_failures") >= 1, "{}", b.status_json());
}

/// A peer that speaks garbage: each bad request gets an error answer on its own stream (or the
/// stream is closed), the connection and the node carry on, and a path that leaves its repo or
/// names an unconfigured repo is refused before any I/O.
#[test]
fn hostile_peer_messages_get_errors_and_never_hurt_the_node() {
    use lanmirror::peer::{Identity, Role, SiteAuth, wire};
    let dir = temp();
    let repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[PkgSpec::new("lh-a", "1.0", 100_000)],
    );
    let up = Upstream::start(repo.dir());
    let q = free_port();
    let mut o = NodeOpts::new(&up.url());
    o.quic_listen = format!("127.0.0.1:{q}");
    let node = Node::start(o);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let me = Identity::load_or_create(dir.path()).unwrap();
    let answers: Vec<Result<wire::Response, String>> = rt.block_on(async {
        let tls = me.client_tls(None).unwrap();
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
        let conn = ep
            .connect(format!("127.0.0.1:{q}").parse().unwrap(), "lanmirror")
            .unwrap()
            .await
            .unwrap();
        let site = SiteAuth::new("default", None);
        let exported = SiteAuth::exported(&conn).unwrap();
        let hello = wire::Request::Hello {
            site_id: site.site_id.clone(),
            http_port: 1,
            quic_port: 1,
            proof: site.proof(&exported, Role::Dialler),
        };
        let mut out = Vec::new();
        let upstream = lanmirror::config::RepoConfig {
            name: "test".into(),
            urls: vec![up.url()],
            mirrorlists: vec![],
        }
        .upstream_id();
        let frames: Vec<Vec<u8>> = vec![
            wire::encode(&hello).unwrap(),
            // A length far over the limit, then nothing.
            (u32::MAX).to_be_bytes().to_vec(),
            // Malformed JSON.
            [&6u32.to_be_bytes()[..], b"{oops}"].concat(),
            // An unknown message kind.
            [&11u32.to_be_bytes()[..], br#"{"t":"zap"}"#].concat(),
            // A second hello.
            wire::encode(&hello).unwrap(),
            // A path that leaves its repo; an unconfigured repo; a mutable file.
            wire::encode(&wire::Request::Download {
                repo: "test".into(),
                upstream: upstream.clone(),
                path: "../../etc/passwd".into(),
                checksum: None,
                size: None,
                offset: 0,
                background: false,
            })
            .unwrap(),
            wire::encode(&wire::Request::Download {
                repo: "nope".into(),
                upstream: upstream.clone(),
                path: "Packages/x.rpm".into(),
                checksum: None,
                size: None,
                offset: 0,
                background: false,
            })
            .unwrap(),
            wire::encode(&wire::Request::Download {
                repo: "test".into(),
                upstream: upstream.clone(),
                path: "repodata/repomd.xml".into(),
                checksum: None,
                size: None,
                offset: 0,
                background: false,
            })
            .unwrap(),
            wire::encode(&wire::Request::Get {
                checksum: "blake3:00".into(),
                offset: u64::MAX,
            })
            .unwrap(),
            // Still a working connection after all that.
            wire::encode(&wire::Request::Have {
                checksums: vec!["sha256:zz".into()],
            })
            .unwrap(),
            // A repo of the same name with other upstream URLs: refused, for a download and a
            // snapshot alike.
            wire::encode(&wire::Request::Download {
                repo: "test".into(),
                upstream: "0000000000000000".into(),
                path: "Packages/x.rpm".into(),
                checksum: None,
                size: None,
                offset: 0,
                background: false,
            })
            .unwrap(),
            wire::encode(&wire::Request::Snapshot {
                repo: "test".into(),
                upstream: "0000000000000000".into(),
                tree: "".into(),
            })
            .unwrap(),
        ];
        for f in frames {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let _ = send.write_all(&f).await;
            let _ = send.finish();
            let got = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20))
                .await
                .map_err(|_| "timeout".to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .and_then(|b| wire::decode_frame::<wire::Response>(&b).map_err(|e| e.to_string()));
            out.push(got);
        }
        conn.close(0u32.into(), b"done");
        out
    });
    assert!(
        matches!(answers[0], Ok(wire::Response::Welcome { .. })),
        "{:?}",
        answers[0]
    );
    for (i, a) in answers.iter().enumerate().skip(1).take(8) {
        assert!(
            matches!(a, Ok(wire::Response::Error { .. }) | Err(_)),
            "frame {i} got {a:?}"
        );
    }
    for i in [5, 6, 7] {
        assert!(
            matches!(
                &answers[i],
                Ok(wire::Response::Error {
                    kind: wire::ErrorKind::BadRequest,
                    ..
                })
            ),
            "frame {i}: {:?}",
            answers[i]
        );
    }
    assert_eq!(
        answers[9],
        Ok(wire::Response::Holding { have: vec![false] })
    );
    for i in [10, 11] {
        match &answers[i] {
            Ok(wire::Response::Error {
                kind: wire::ErrorKind::BadRequest,
                message,
            }) => assert!(
                message.contains("other upstream URLs"),
                "frame {i}: {message}"
            ),
            other => panic!("frame {i}: {other:?}"),
        }
    }
    assert_eq!(up.requests().len(), 0, "nothing reached upstream");
    assert_eq!(node.get("/api/status").status, 200, "node still up");
}

/// Nodes of another site (another `[node] site` name) do not mix, even when one lists the
/// other as a static peer: both sides refuse, and say why.
#[test]
fn nodes_of_another_site_do_not_mix() {
    let dir = temp();
    let repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[PkgSpec::new("lo-a", "1.0", 100_000)],
    );
    let up = Upstream::start(repo.dir());
    let site = LoopSite::start(2, &up, |i, o| {
        o.site = Some(if i == 0 { "school" } else { "clinic" }.into());
    });
    let ok = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        site.nodes.iter().all(|n| stat(n, "peers_refused") >= 1)
    });
    assert!(
        ok,
        "{}\n{}",
        site.nodes[0].status_json(),
        site.nodes[1].status_json()
    );
    for n in &site.nodes {
        assert_eq!(healthy_peers(n), 0, "{}", n.status_json());
        assert!(n.log().contains("another site"), "{}", n.log_tail(20));
    }
    assert_ne!(
        site.nodes[0].status_json()["site_id"],
        site.nodes[1].status_json()["site_id"]
    );
}

// ---- Site trust: freshness is each node's own, static peers are pinned, open sites warn ----

/// The upstream URL of the trust tests' repo. It resolves nowhere: each node reaches it only
/// through its own HTTP proxy ([`own_uplink`]), so every node of the site configures the very
/// same `[[repo]] urls` (nodes share a repo only when those agree) while each has an uplink of
/// its own that a test can cut.
const UPLINK_URL: &str = "http://upstream.lanmirror.invalid/";

/// Gives a node its own uplink: `proxy` (a kit upstream server serving the repo; it answers an
/// absolute-form proxy request by its path) as `HTTP_PROXY` for [`UPLINK_URL`]. Stopping that
/// server (`set_down(true)`) cuts this node off upstream, and only this node.
fn own_uplink(o: &mut NodeOpts, proxy: &Upstream) {
    o.repos = vec![RepoCfg::new("test", &[UPLINK_URL])];
    for k in ["HTTP_PROXY", "http_proxy"] {
        o.env.push((k.into(), proxy.url()));
    }
    for k in ["NO_PROXY", "no_proxy"] {
        o.env.push((k.into(), String::new()));
    }
}

/// The `<revision>` of a repomd.xml.
fn revision_of(repomd: &[u8]) -> String {
    let s = String::from_utf8_lossy(repomd);
    let from = s.find("<revision>").expect("repomd.xml has a <revision>") + "<revision>".len();
    let to = from + s[from..].find("</revision>").expect("</revision>");
    s[from..to].trim().to_string()
}

/// The one snapshot of repo `test` in a node's `/api/status`.
fn snapshot_status(n: &Node) -> serde_json::Value {
    let st = n.status_json();
    let snaps = st["repos"][0]["snapshots"].clone();
    assert_eq!(
        snaps.as_array().map(Vec::len),
        Some(1),
        "one tree expected: {st}"
    );
    snaps[0].clone()
}

fn node_id_of(n: &Node) -> String {
    n.status_json()["node_id"]
        .as_str()
        .expect("/api/status has node_id")
        .to_string()
}

/// Uplink loss on the node that, before issue 8, was the site's metadata fetcher for the tree
/// (rendezvous of `snapshot:{repo}/{tree}`): the other node of a keyed site still confirms
/// repomd.xml with its own upstream and serves new metadata within two freshness windows; the
/// cut node never claims a freshness it does not have, and takes the new metadata from the site
/// (unconfirmed, stale) since it cannot reach upstream. dnf clients of both see the new package.
#[test]
fn uplink_loss_on_the_snapshot_source_does_not_freeze_the_site() {
    use lanmirror::peer::{NodeId, rendezvous};
    use std::time::Instant;
    const FRESH: u64 = 5;
    let dir = temp();
    let mut repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[PkgSpec::new("lu-a", "1.0", 300_000)],
    );
    // Each node's own uplink, both serving the same mirror directory.
    let ups = [Upstream::start(repo.dir()), Upstream::start(repo.dir())];
    let key = write_key(
        dir.path(),
        "site.key",
        "lu-site-secret-0123456789abcdef-0123456789\n",
    );
    let quic = [free_port(), free_port()];
    let nodes: Vec<Node> = (0..2)
        .map(|i| {
            let mut o = NodeOpts::new(UPLINK_URL);
            own_uplink(&mut o, &ups[i]);
            o.quic_listen = format!("127.0.0.1:{}", quic[i]);
            o.peers = vec![format!("127.0.0.1:{}", quic[1 - i])];
            o.site_key_file = Some(key.clone());
            o.freshness_secs = FRESH;
            Node::start(o)
        })
        .collect();
    let site = LoopSite { nodes };
    site.wait_joined(1);
    for n in &site.nodes {
        assert_eq!(n.status_json()["site_key"], true);
    }
    // Warm both: metadata and a package each, each node's metadata through its own uplink.
    site.load_metadata();
    let a = repo.package("lu-a");
    for n in &site.nodes {
        n.assert_serves(&a);
    }
    for (i, up) in ups.iter().enumerate() {
        assert!(
            up.count("/repodata/repomd.xml") >= 1,
            "node {i} did not check repomd.xml through its own uplink: {:?}",
            up.requests()
        );
    }
    let old_repomd = std::fs::read(repo.repomd_path()).unwrap();
    let old_rev = revision_of(&old_repomd);
    let tree = snapshot_status(&site.nodes[0])["tree"]
        .as_str()
        .expect("tree")
        .to_string();
    let ids: Vec<NodeId> = site
        .nodes
        .iter()
        .map(|n| NodeId::parse(&node_id_of(n)).expect("a node id"))
        .collect();
    let winner = rendezvous(&format!("snapshot:test/{tree}"), ids.iter().copied()).unwrap();
    let cut = ids.iter().position(|id| *id == winner).unwrap();
    let ok = 1 - cut;
    let (cn, on) = (&site.nodes[cut], &site.nodes[ok]);
    eprintln!("node {cut} was the tree's snapshot fetcher (rendezvous); cutting its uplink");

    // Cut that node's uplink (connections refused), then publish new metadata upstream.
    ups[cut].set_down(true);
    let cut_at = Instant::now();
    std::thread::sleep(Duration::from_millis(1100)); // createrepo_c's revision is in seconds
    let new_pkg = repo.add(&PkgSpec::new("lu-new", "1.0", 250_000));
    let published = Instant::now();
    let new_repomd = std::fs::read(repo.repomd_path()).unwrap();
    let new_rev = revision_of(&new_repomd);
    assert_ne!(old_rev, new_rev, "createrepo_c gave the same revision");

    // Whatever the cut node says about its metadata must be true, at every look.
    let honest = |s: &serde_json::Value| {
        let since_cut = cut_at.elapsed().as_secs();
        let rev = s["revision"].as_str().unwrap_or_default();
        // Its own upstream has not confirmed anything since the cut.
        assert!(
            s["checked_secs_ago"].as_u64().unwrap_or(0) + 1 >= since_cut,
            "the cut node's check time moved though it cannot reach upstream: {s}"
        );
        if rev == new_rev {
            assert_eq!(s["source"], "site", "{s}");
            assert_eq!(s["confirmed_upstream"], false, "{s}");
            assert_eq!(s["stale"], true, "{s}");
        } else {
            assert_eq!(rev, old_rev, "{s}");
            if since_cut > FRESH {
                assert_eq!(s["stale"], true, "old metadata past its window: {s}");
            }
        }
    };

    // The working node: new repomd.xml, byte for byte, within two freshness windows.
    let mut served_new = None;
    let got = wait_until(
        Duration::from_secs(4 * FRESH),
        Duration::from_millis(250),
        || {
            honest(&snapshot_status(cn));
            let r = on.get("/test/repodata/repomd.xml");
            assert_eq!(r.status, 200, "{}", r.text());
            if r.body == new_repomd {
                served_new.get_or_insert(published.elapsed());
                true
            } else {
                false
            }
        },
    );
    assert!(
        got,
        "the working node still serves revision {} {}s after new metadata was published (its \
         own uplink works): {}\n{}",
        revision_of(&on.get("/test/repodata/repomd.xml").body),
        published.elapsed().as_secs(),
        on.status_json(),
        on.log_tail(40)
    );
    let took = served_new.unwrap();
    eprintln!("working node served the new repomd.xml {took:?} after it was published");
    assert!(
        took <= Duration::from_secs(2 * FRESH),
        "new metadata took {took:?}, more than two freshness windows"
    );
    let s = snapshot_status(on);
    assert_eq!(s["revision"], new_rev.as_str(), "{s}");
    assert_eq!(s["stale"], false, "{s}");
    assert_eq!(s["source"], "upstream", "{s}");
    assert_eq!(s["confirmed_upstream"], true, "{s}");

    // A dnf client of the working node sees and installs the new package.
    let co = Dnf::new(&dir.path().join("co"), &on.repo_url("test"));
    co.install(&["lu-new"]).assert_success();
    assert_eq!(
        co.payload_size("lu-new"),
        Some(new_pkg.payload_bytes as u64)
    );

    // The cut node: honest throughout, and it takes the newer metadata from the site (it is a
    // keyed site and its own upstream is unreachable) within a bounded time.
    let mut from_site = None;
    let got = wait_until(Duration::from_secs(45), Duration::from_millis(500), || {
        let r = cn.get("/test/repodata/repomd.xml");
        assert_eq!(r.status, 200, "{}", r.text());
        let s = snapshot_status(cn);
        honest(&s);
        if r.body == new_repomd {
            assert_eq!(s["revision"], new_rev.as_str(), "{s}");
            from_site.get_or_insert(published.elapsed());
            true
        } else {
            assert_eq!(r.body, old_repomd, "the cut node served a third repomd.xml");
            false
        }
    });
    assert!(
        got,
        "the cut node never took the site's newer metadata: {}\n{}",
        cn.status_json(),
        cn.log_tail(40)
    );
    eprintln!(
        "cut node served the site's new repomd.xml {:?} after it was published",
        from_site.unwrap()
    );
    let s = snapshot_status(cn);
    honest(&s);
    assert_eq!(s["source"], "site", "{s}");
    assert!(
        cn.log().contains("not confirmed upstream"),
        "{}",
        cn.log_tail(30)
    );
    // Its clients get the new package too, from the site.
    let before = stat(cn, "from_peers");
    let cc = Dnf::new(&dir.path().join("cc"), &cn.repo_url("test"));
    cc.install(&["lu-new"]).assert_success();
    assert_eq!(
        cc.payload_size("lu-new"),
        Some(new_pkg.payload_bytes as u64)
    );
    assert!(stat(cn, "from_peers") > before, "{}", cn.status_json());
    honest(&snapshot_status(cn));
    // And the working node never took anything but its own upstream's word.
    let s = snapshot_status(on);
    assert_eq!(s["source"], "upstream", "{s}");

    // The uplink comes back: the cut node's own upstream confirms what the site gave it, and
    // only then does it say fresh (after the upstream client's offline back-off, 30 s).
    ups[cut].clear_log();
    ups[cut].set_down(false);
    let back = Instant::now();
    let confirmed = wait_until(
        Duration::from_secs(30 + 4 * FRESH),
        Duration::from_millis(500),
        || {
            let r = cn.get("/test/repodata/repomd.xml");
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.body, new_repomd, "the cut node went back");
            let s = snapshot_status(cn);
            if s["confirmed_upstream"] == true {
                assert_eq!(s["source"], "upstream", "{s}");
                assert_eq!(s["stale"], false, "{s}");
                true
            } else {
                assert_eq!(s["source"], "site", "{s}");
                assert_eq!(s["stale"], true, "{s}");
                false
            }
        },
    );
    assert!(
        confirmed,
        "the cut node's upstream is back but it never confirmed its metadata: {}\n{}",
        cn.status_json(),
        cn.log_tail(30)
    );
    eprintln!(
        "cut node confirmed the site's metadata upstream {:?} after its uplink came back",
        back.elapsed()
    );
    assert!(
        ups[cut].count("/repodata/repomd.xml") >= 1,
        "confirmed without asking its own upstream: {:?}",
        ups[cut].requests()
    );
}

/// A static peer is pinned to the node id it showed at first contact: another node answering
/// later at that address (a fresh data dir, so a new key) is refused, counted and logged.
#[test]
fn a_static_peer_is_pinned_to_its_first_node_id() {
    use std::time::Instant;
    let dir = temp();
    let repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[PkgSpec::new("lp-pin", "1.0", 50_000)],
    );
    let up = Upstream::start(repo.dir());
    let (qa, qb) = (free_port(), free_port());
    let mut oa = NodeOpts::new(&up.url());
    oa.quic_listen = format!("127.0.0.1:{qa}");
    oa.peers = vec![format!("127.0.0.1:{qb}")];
    let a = Node::start(oa);
    let mut ob = NodeOpts::new(&up.url());
    ob.quic_listen = format!("127.0.0.1:{qb}");
    let mut b = Node::start(ob.clone());
    let joined = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        healthy_peers(&a) == 1
    });
    assert!(joined, "{}\n{}", a.status_json(), a.log_tail(30));
    let id_b = node_id_of(&b);
    let refused_before = stat(&a, "peers_refused");
    assert_eq!(refused_before, 0, "{}", a.status_json());

    // B goes; another machine (new key) takes its address and QUIC port, and lists A itself:
    // A refuses it both ways (its dial, and B''s hello claiming the pinned address).
    b.stop();
    let mut ob2 = ob;
    ob2.peers = vec![format!("127.0.0.1:{qa}")];
    let b2 = Node::start(ob2);
    let id_b2 = node_id_of(&b2);
    assert_ne!(id_b, id_b2, "a fresh data dir must give a new node id");
    let started = Instant::now();
    let refused = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        stat(&a, "peers_refused") > refused_before && a.log().contains(&format!("node id {id_b2}"))
    });
    assert!(
        refused,
        "A did not refuse the new node at its pinned static peer's address within 30 s: {}\n{}",
        a.status_json(),
        a.log_tail(40)
    );
    eprintln!(
        "A refused the impostor {:?} after it started",
        started.elapsed()
    );
    let log = a.log();
    let line = log
        .lines()
        .find(|l| l.contains(&format!("node id {id_b2}")))
        .unwrap();
    assert!(line.contains("node id") && line.contains(&id_b), "{line}");
    // It stays out.
    for _ in 0..12 {
        let st = a.status_json();
        let peers = st["peers"].as_array().cloned().unwrap_or_default();
        assert!(
            peers.iter().all(|p| p["healthy"] == false),
            "A admitted the impostor: {st}"
        );
        assert!(
            !peers.iter().any(|p| p["id"] == id_b2.as_str()),
            "A lists the impostor's id: {st}"
        );
        let entry = peers
            .iter()
            .find(|p| p["addr"] == format!("127.0.0.1:{qb}").as_str())
            .unwrap_or_else(|| panic!("A lost its static peer entry: {st}"));
        assert_eq!(entry["via"], "static", "{st}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let st = a.status_json();
    let entry = &st["peers"][0];
    assert!(
        entry["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("node id")),
        "{st}"
    );
    assert_eq!(healthy_peers(&b2), 0, "{}", b2.status_json());
    let told = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        b2.status_json()["peers"].as_array().is_some_and(|p| {
            p.iter().any(|p| {
                p["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("static peer"))
            })
        })
    });
    assert!(told, "B' was not refused by A: {}", b2.status_json());
    assert!(
        a.log().contains("this node's static peer at"),
        "{}",
        a.log_tail(30)
    );
}

/// A node without a site key says so: a WARN line at start-up and `warnings` in its status; a
/// keyed node says nothing of the kind.
#[test]
fn a_node_without_a_site_key_warns() {
    let dir = temp();
    let repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[PkgSpec::new("lw-a", "1.0", 50_000)],
    );
    let up = Upstream::start(repo.dir());
    let open = Node::start(NodeOpts::new(&up.url()));
    let mut ok = NodeOpts::new(&up.url());
    ok.site_key_file = Some(write_key(
        dir.path(),
        "k",
        "lw-secret-0123456789abcdef-0123456789\n",
    ));
    let keyed = Node::start(ok);

    let st = open.status_json();
    assert_eq!(st["site_key"], false, "{st}");
    let warnings = st["warnings"]
        .as_array()
        .unwrap_or_else(|| panic!("/api/status has no warnings list: {st}"));
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .is_some_and(|w| w.contains("site key") && w.contains("any host on this LAN"))),
        "{st}"
    );
    let log = open.log();
    assert!(
        log.lines()
            .any(|l| l.contains(" WARN ") && l.contains("no site key")),
        "no WARN line saying \"no site key\":\n{}",
        open.log_tail(30)
    );

    let st = keyed.status_json();
    assert_eq!(st["site_key"], true, "{st}");
    assert_eq!(st["warnings"], serde_json::json!([]), "{st}");
    assert!(
        !keyed.log().contains("no site key"),
        "{}",
        keyed.log_tail(30)
    );
}
