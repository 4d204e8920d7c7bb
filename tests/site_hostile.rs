//! A site member that lies or stalls, and strangers that flood: real node processes, a real
//! upstream test server, real repositories (rpmbuild + createrepo_c), and a scripted peer that
//! holds the site key (`common::hostile::HostilePeer`) or a second real node.
//!
//! What each test shows (see DESIGN.md invariants 6, 8 and 9):
//! - `rollback_…`: a peer offering older metadata, under a huge claimed revision or its true
//!   one, never moves a node back, even when the node cannot reach upstream.
//! - `freeze_…`: a peer offering the node's own snapshot does not stop upstream updates from
//!   being served within two freshness windows (nor does its leaving).
//! - `trickled_package_…`: a holder and a fetcher that send one byte every 2 s are put aside
//!   within the size-derived deadline; the client gets the exact file from upstream, once.
//! - `trickled_repomd_…`: a peer trickling a newer repomd.xml never makes repomd.xml requests
//!   hang nor keeps the tree's refresh from upstream once it is back.
//! - `site_snapshot_…`: an honest newer snapshot from another node is taken when upstream is
//!   unreachable on a keyed site, shown as unconfirmed; on a keyless site only with trust_lan.
//! - `stranger_flood_…`: hundreds of keyless connections pushing data do not grow the node's
//!   memory nor slow its HTTP side, and their strings never forge log lines.
//! - `peer_strings_…`: what peers say (refusal reasons, close reasons, error messages, bad
//!   frames) never starts a log line of its own.
//! - `admitted_peers_…`: a member of the site gets at most 4 connections, 64 streams each,
//!   and 10 s to send a request.
//!
//! Each test failed on 601cc00 (protocol v1), run with a v1 port of the kit (ALPN
//! lanmirror/1, `snapshot_info` with the v1 fields); see the hostile-tests branch report.

mod common;

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::hostile::*;
use common::*;
use lanmirror::peer::NodeId;
use lanmirror::peer::wire::{self, Request, Response};

/// `[metadata] freshness_secs` of every node here.
const FRESH: u64 = 3;
/// The rendezvous key by which protocol v1 (601cc00) chose the node every other node took a
/// tree's snapshot from; grinding the hostile peer to win it makes the old code ask it.
const OLD_SNAPSHOT_KEY: &str = "snapshot:test/";
const REPOMD: &str = "/test/repodata/repomd.xml";
const SITE: &str = "hostile-test";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Why the test cannot run here, if it cannot.
fn missing_tools() -> Option<String> {
    for t in ["rpmbuild", "createrepo_c"] {
        let ok = std::process::Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            return Some(format!("{t} is not installed"));
        }
    }
    None
}

macro_rules! need_tools {
    () => {
        if let Some(why) = missing_tools() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

fn keyed_site(dir: &std::path::Path) -> SiteSpec {
    SiteSpec {
        name: SITE.into(),
        key_file: Some(write_site_key(dir)),
    }
}

fn keyless_site() -> SiteSpec {
    SiteSpec {
        name: SITE.into(),
        key_file: None,
    }
}

fn node_opts(up: &Upstream, site: &SiteSpec, base: PathBuf, peers: Vec<String>) -> NodeOpts {
    let mut o = NodeOpts::new(&up.url());
    o.freshness_secs = FRESH;
    o.site = Some(site.name.clone());
    o.site_key_file = site.key_file.clone();
    o.base_dir = Some(base);
    o.peers = peers;
    o
}

/// GET repomd.xml with a time limit (panics if no answer at all).
fn get_repomd(n: &Node) -> HttpResponse {
    let url = format!("{}{REPOMD}", n.url());
    n.try_request("GET", &url, &[], secs(20))
        .unwrap_or_else(|e| panic!("GET {url}: {e}\n{}", n.log_tail(30)))
}

type HttpResponse = common::Response;

/// Polls repomd.xml until it is `want`; the time it took, or None after `limit`.
fn wait_serving(n: &Node, want: &[u8], limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let every = Duration::from_millis(200);
    for _ in 0..(limit.as_millis() / every.as_millis() + 2) {
        let r = get_repomd(n);
        if r.status == 200 && r.body == want {
            return Some(t0.elapsed());
        }
        if t0.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(every);
    }
    None
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Publishes a new snapshot upstream (a package added, createrepo_c --update), making sure its
/// revision (createrepo_c writes the time of the run) is greater than the current one.
fn publish(repo: &mut RpmRepo, spec: PkgSpec) -> Vec<u8> {
    let old: u64 = revision_of(&fs::read(repo.repomd_path()).unwrap())
        .parse()
        .unwrap();
    for _ in 0..40 {
        if now_secs() > old {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    repo.add(&spec);
    let new = fs::read(repo.repomd_path()).unwrap();
    let rev: u64 = revision_of(&new).parse().unwrap();
    assert!(rev > old, "new revision {rev} is not above {old}");
    new
}

fn healthy_peers(n: &Node) -> usize {
    n.status_json()["peers"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|p| p["healthy"] == true).count())
}

fn wait_healthy(n: &Node, want: usize) {
    let ok = wait_until(secs(20), Duration::from_millis(100), || {
        healthy_peers(n) == want
    });
    assert!(
        ok,
        "node has not {want} healthy peers: {}\n{}",
        n.status_json()["peers"],
        n.log_tail(40)
    );
}

/// The node's status entry for the one tree of repo `test`.
fn snap_status(n: &Node) -> serde_json::Value {
    n.status_json()["repos"][0]["snapshots"][0].clone()
}

/// The node's status entry for peer `id`.
fn peer_entry(n: &Node, id: NodeId) -> serde_json::Value {
    let st = n.status_json();
    st["peers"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["id"] == id.to_string()).cloned())
        .unwrap_or_else(|| panic!("no peer {id} in {}", st["peers"]))
}

fn last_error(n: &Node, id: NodeId) -> String {
    peer_entry(n, id)["last_error"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Upstream published R1 then R2 and the node (keyed site) serves R2. Upstream goes away. One
/// peer offers the genuine R1 repomd.xml (and its files) claiming revision 99999999999, another
/// claims R1's true revision. Over five freshness windows the node serves R2 byte for byte,
/// never R1; the peers were asked (only once upstream was gone), and the liar is put aside.
#[test]
fn rollback_older_metadata_from_a_peer_is_never_taken() {
    need_tools!();
    let dir = temp();
    let mut repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[PkgSpec::new("ha-a", "1.0", 40_000)],
    );
    let up = Upstream::start(repo.dir());
    let site = keyed_site(dir.path());
    let base = dir.path().join("node");
    let node_id = node_identity(&base);
    let modest = HostilePeer::start(&site);
    let liar = HostilePeer::start_winning(&site, &[OLD_SNAPSHOT_KEY.into()], &[node_id, modest.id]);
    // The liar is a static peer; the modest one dials in and is dialled back.
    let node = Node::start(node_opts(&up, &site, base, vec![liar.addr()]));
    let quic: SocketAddr = node.status_json()["quic_listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let welcome = modest.dial(quic);
    assert!(
        matches!(welcome, Ok(Response::Welcome { .. })),
        "{welcome:?}"
    );
    wait_healthy(&node, 2);
    let r1 = fs::read(repo.repomd_path()).unwrap();
    let r1_files = repodata_files(repo.dir());
    assert_eq!(get_repomd(&node).body, r1);
    let r2 = publish(&mut repo, PkgSpec::new("ha-b", "1.0", 40_000));
    let took = wait_serving(&node, &r2, secs(3 * FRESH + 5));
    assert!(took.is_some(), "R2 not served\n{}", node.log_tail(30));
    let asked_while_up = liar.count("snapshot") + modest.count("snapshot");

    liar.offer_snapshot("99999999999", &r1, &[]);
    liar.hold_repodata(&r1_files);
    modest.offer_snapshot(&revision_of(&r1), &r1, &[]);
    modest.hold_repodata(&r1_files);
    up.set_down(true);
    let t0 = Instant::now();
    let mut answers = 0;
    for _ in 0..100 {
        if t0.elapsed() >= secs(5 * FRESH) {
            break;
        }
        let r = get_repomd(&node);
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            r.body != r1,
            "ROLLBACK: the node serves R1 again {:?} after upstream went away\n{}",
            t0.elapsed(),
            node.log_tail(40)
        );
        assert_eq!(r.body, r2, "the node serves neither R1 nor R2");
        answers += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "MEASURED rollback: {answers} repomd.xml answers over {:?}, all R2; snapshot requests: liar {}, modest {}",
        t0.elapsed(),
        liar.count("snapshot"),
        modest.count("snapshot")
    );
    assert!(
        liar.count("snapshot") >= 1 && modest.count("snapshot") >= 1,
        "the node never asked the site for a snapshot with upstream down: {:?} / {:?}\n{}",
        liar.seen(),
        modest.seen(),
        node.log_tail(40)
    );
    assert_eq!(
        modest.count("get"),
        0,
        "an offer not newer than ours was copied: {:?}",
        modest.seen()
    );
    let st = snap_status(&node);
    assert_eq!(st["revision"], revision_of(&r2), "{st}");
    assert_eq!(st["stale"], true, "{st}");
    assert_eq!(st["source"], "upstream", "{st}");
    let why = last_error(&node, liar.id);
    assert!(
        why.contains("revision"),
        "the liar is not put aside for its claim: {why:?}"
    );
    assert!(
        peer_entry(&node, liar.id)["put_aside_secs"]
            .as_u64()
            .unwrap_or(0)
            > 0
    );
    assert!(
        node.log().contains("not taking that node's metadata"),
        "{}",
        node.log_tail(30)
    );
    assert_eq!(
        asked_while_up, 0,
        "the node asked peers for their snapshot while upstream was reachable"
    );
}

/// A peer offers the node's own current snapshot (same revision) all along. Upstream publishes
/// R2: the node serves it within two freshness windows and says fresh, from upstream. The peer
/// leaves; upstream publishes R3: the same.
#[test]
fn freeze_a_peer_offering_our_snapshot_never_holds_back_upstream_updates() {
    need_tools!();
    let dir = temp();
    let mut repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[PkgSpec::new("hb-a", "1.0", 40_000)],
    );
    let up = Upstream::start(repo.dir());
    let site = keyed_site(dir.path());
    let base = dir.path().join("node");
    let node_id = node_identity(&base);
    let peer = HostilePeer::start_winning(&site, &[OLD_SNAPSHOT_KEY.into()], &[node_id]);
    let node = Node::start(node_opts(&up, &site, base, vec![peer.addr()]));
    wait_healthy(&node, 1);
    let r1 = fs::read(repo.repomd_path()).unwrap();
    assert_eq!(get_repomd(&node).body, r1);
    peer.offer_snapshot(&revision_of(&r1), &r1, &[]);
    peer.hold_repodata(&repodata_files(repo.dir()));
    // One refresh with the offer in place before anything changes upstream.
    std::thread::sleep(secs(FRESH + 1));
    assert_eq!(get_repomd(&node).body, r1);

    let window2 = secs(2 * FRESH) + Duration::from_millis(900);
    let r2 = publish(&mut repo, PkgSpec::new("hb-b", "1.0", 40_000));
    let took = wait_serving(&node, &r2, window2);
    eprintln!("MEASURED freeze: R2 served {took:?} after publication (peer present)");
    assert!(
        took.is_some(),
        "FROZEN: R2 not served within two freshness windows while the peer offers R1\n{}",
        node.log_tail(40)
    );
    let st = snap_status(&node);
    assert_eq!(st["stale"], false, "{st}");
    assert_eq!(st["source"], "upstream", "{st}");
    assert_eq!(st["confirmed_upstream"], true, "{st}");
    assert_eq!(
        peer.count("snapshot"),
        0,
        "the node asked a peer for its snapshot though upstream was reachable"
    );

    drop(peer);
    assert!(
        wait_until(secs(20), Duration::from_millis(200), || healthy_peers(
            &node
        ) == 0),
        "{}",
        node.status_json()["peers"]
    );
    let r3 = publish(&mut repo, PkgSpec::new("hb-c", "1.0", 40_000));
    let took = wait_serving(&node, &r3, window2);
    eprintln!("MEASURED freeze: R3 served {took:?} after publication (peer gone)");
    assert!(took.is_some(), "R3 not served\n{}", node.log_tail(40));
    let st = snap_status(&node);
    assert_eq!(st["stale"], false, "{st}");
    assert_eq!(st["source"], "upstream", "{st}");
}

/// The peer says it holds one package (and serves a `Get` of it) and is the fetcher of
/// another (and answers the `Fetch`), but sends each body one byte every 2 s. Both client GETs
/// complete byte for byte within 15 s + size / min rate (+ margin: 40 s); the peer is put aside
/// "too slow"; each package crossed the uplink exactly once.
#[test]
fn trickled_package_goes_on_from_upstream_within_the_deadline() {
    need_tools!();
    let dir = temp();
    let repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[
            PkgSpec::new("hc-get", "1.0", 100_000),
            PkgSpec::new("hc-fetch", "1.0", 100_000),
        ],
    );
    let up = Upstream::start(repo.dir());
    let site = keyed_site(dir.path());
    let base = dir.path().join("node");
    let node_id = node_identity(&base);
    let (pget, pfetch) = (repo.package("hc-get"), repo.package("hc-fetch"));
    let peer =
        HostilePeer::start_winning(&site, &[format!("test/{}", pfetch.rel_path)], &[node_id]);
    let node = Node::start(node_opts(&up, &site, base, vec![peer.addr()]));
    wait_healthy(&node, 1);
    assert_eq!(get_repomd(&node).status, 200);
    peer.hold(&fs::read(&pget.path).unwrap());
    peer.fetchable(&pfetch.rel_path, &fs::read(&pfetch.path).unwrap());
    peer.script(|s| {
        s.have = HaveMode::Held;
        s.trickle_get = Some(secs(2));
        s.trickle_fetch = Some(secs(2));
    });
    up.clear_log();

    let results: Vec<(String, std::io::Result<HttpResponse>, Duration)> = std::thread::scope(|s| {
        let hs: Vec<_> = [&pget, &pfetch]
            .into_iter()
            .map(|p| {
                let node = &node;
                s.spawn(move || {
                    let url = format!("{}/test/{}", node.url(), p.rel_path);
                    let t = Instant::now();
                    let r = node.try_request("GET", &url, &[], secs(50));
                    (p.name.clone(), r, t.elapsed())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((name, r, took), p) in results.iter().zip([&pget, &pfetch]) {
        eprintln!(
            "MEASURED trickle: {name} ({} bytes) answered in {took:?}",
            p.size
        );
        let r = r
            .as_ref()
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", node.log_tail(40)));
        assert_eq!(r.status, 200, "{name}");
        assert!(
            r.complete,
            "{name}: the client's transfer did not complete ({} of {} bytes in {took:?})\n{}",
            r.body.len(),
            p.size,
            node.log_tail(40)
        );
        assert_eq!(sha256_hex(&r.body), p.sha256_hex, "{name}: wrong bytes");
        let limit =
            lanmirror::peer::transfer_deadline(p.size, lanmirror::peer::DOWNLOADER_MIN_RATE)
                + secs(15);
        assert!(
            *took < secs(40) && *took < limit,
            "{name} took {took:?}\n{}",
            node.log_tail(30)
        );
    }
    let seen = peer.seen();
    assert!(
        seen.iter().any(
            |s| s.kind == "get" && s.detail.starts_with(&format!("sha256:{}", pget.sha256_hex))
        ),
        "the holder was never asked: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|s| s.kind == "download" && s.detail.starts_with(&pfetch.rel_path)),
        "the fetcher was never asked: {seen:?}"
    );
    let st = node.status_json();
    eprintln!(
        "MEASURED trickle: peer_too_slow = {}, last_error = {:?}",
        st["peer_too_slow"],
        last_error(&node, peer.id)
    );
    assert!(
        st["peer_too_slow"].as_u64().unwrap_or(0) >= 1,
        "{}",
        st["peer_too_slow"]
    );
    let entry = peer_entry(&node, peer.id);
    assert!(
        entry["put_aside_secs"].as_u64().unwrap_or(0) > 0,
        "the trickling peer is not put aside: {entry}"
    );
    assert!(
        last_error(&node, peer.id).starts_with("too slow"),
        "status must say why the peer is put aside (last_error starting \"too slow\"): {entry}"
    );
    for p in [&pget, &pfetch] {
        assert_eq!(up.count(&p.file_name), 1, "{}: {:?}", p.name, up.requests());
    }
}

/// Upstream is gone and a peer offers a genuine newer snapshot but sends its repomd.xml one
/// byte every 2 s. repomd.xml requests keep being answered (the old snapshot, within a few
/// seconds), status says stale, the peer is put aside "too slow", and once upstream is back
/// with new metadata the node serves it (the tree's refresh lock was not held).
#[test]
fn trickled_repomd_never_holds_the_tree() {
    need_tools!();
    let dir = temp();
    let mut repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[PkgSpec::new("hd-a", "1.0", 40_000)],
    );
    let up = Upstream::start(repo.dir());
    let site = keyed_site(dir.path());
    let base = dir.path().join("node");
    let node_id = node_identity(&base);
    let peer = HostilePeer::start_winning(&site, &[OLD_SNAPSHOT_KEY.into()], &[node_id]);
    let node = Node::start(node_opts(&up, &site, base, vec![peer.addr()]));
    wait_healthy(&node, 1);
    let r1 = fs::read(repo.repomd_path()).unwrap();
    assert_eq!(get_repomd(&node).body, r1);

    up.set_down(true);
    let r2 = publish(&mut repo, PkgSpec::new("hd-b", "1.0", 40_000));
    peer.offer_snapshot(&revision_of(&r2), &r2, &[]);
    peer.hold_repodata(&repodata_files(repo.dir()));
    peer.script(|s| s.trickle_get = Some(secs(2)));

    let t0 = Instant::now();
    let mut worst = Duration::ZERO;
    let mut answers = 0;
    let mut aside = false;
    for _ in 0..200 {
        let r = get_repomd(&node);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.body, r1, "not the snapshot in service");
        assert!(
            r.elapsed < secs(8),
            "a repomd.xml request took {:?}\n{}",
            r.elapsed,
            node.log_tail(30)
        );
        worst = worst.max(r.elapsed);
        answers += 1;
        if peer.count("get") >= 1 && last_error(&node, peer.id).starts_with("too slow") {
            aside = true;
            break;
        }
        if t0.elapsed() > secs(40) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "MEASURED trickled repomd: {answers} answers, slowest {worst:?}; peer put aside after {:?}: {aside}",
        t0.elapsed()
    );
    assert!(
        peer.count("get") >= 1,
        "the node never tried the offer: {:?}\n{}",
        peer.seen(),
        node.log_tail(30)
    );
    assert!(
        aside,
        "the trickling peer was not put aside as too slow within 40 s: {}\n{}",
        peer_entry(&node, peer.id),
        node.log_tail(30)
    );
    let st = snap_status(&node);
    assert_eq!(st["stale"], true, "{st}");
    assert_eq!(st["revision"], revision_of(&r1), "{st}");
    assert!(node.status_json()["peer_too_slow"].as_u64().unwrap_or(0) >= 1);

    // Upstream comes back with newer metadata. The node retries upstream after its offline
    // back-off (30 s after its last failed attempt), then within a freshness window.
    let r3 = publish(&mut repo, PkgSpec::new("hd-c", "1.0", 40_000));
    up.set_down(false);
    let limit = secs(30 + 2 * FRESH + 3);
    let took = wait_serving(&node, &r3, limit);
    eprintln!("MEASURED trickled repomd: R3 served {took:?} after upstream came back");
    assert!(
        took.is_some(),
        "R3 not served within {limit:?} of upstream's return: the tree is held\n{}",
        node.log_tail(40)
    );
    let st = snap_status(&node);
    assert_eq!(st["stale"], false, "{st}");
    assert_eq!(st["source"], "upstream", "{st}");
}

/// Two real nodes, N and M, in front of one upstream. Both serve R1; upstream publishes R2 and
/// only M is asked (it confirms with upstream and takes R2). Upstream goes away. Returns the
/// pieces for the two tests below.
struct TwoNodes {
    n: Node,
    m: Node,
    up: Upstream,
    repo: RpmRepo,
    r1: Vec<u8>,
    r2: Vec<u8>,
    _mdir: tempfile::TempDir,
    dir: tempfile::TempDir,
}

fn two_nodes_then_upstream_gone(keyed: bool) -> TwoNodes {
    let dir = temp();
    let mut repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[PkgSpec::new("he-a", "1.0", 40_000)],
    );
    let up = Upstream::start(repo.dir());
    let site = if keyed {
        keyed_site(dir.path())
    } else {
        keyless_site()
    };
    let nbase = dir.path().join("n");
    let n_id = node_identity(&nbase);
    // M is the tree's snapshot fetcher for protocol v1.
    let (mdir, _) = grind(&[OLD_SNAPSHOT_KEY.into()], &[n_id]);
    let nq = free_port();
    let mut no = node_opts(&up, &site, nbase, vec![]);
    no.quic_listen = format!("127.0.0.1:{nq}");
    let n = Node::start(no);
    let m = Node::start(node_opts(
        &up,
        &site,
        mdir.path().to_path_buf(),
        vec![format!("127.0.0.1:{nq}")],
    ));
    wait_healthy(&n, 1);
    wait_healthy(&m, 1);
    let r1 = fs::read(repo.repomd_path()).unwrap();
    assert_eq!(get_repomd(&n).body, r1);
    assert_eq!(get_repomd(&m).body, r1);
    let r2 = publish(&mut repo, PkgSpec::new("he-b", "1.0", 40_000));
    assert!(
        wait_serving(&m, &r2, secs(3 * FRESH + 5)).is_some(),
        "{}",
        m.log_tail(30)
    );
    // M holds R2's new package too (a client of M installed it).
    m.assert_serves(&repo.package("he-b"));
    up.set_down(true);
    up.clear_log();
    TwoNodes {
        n,
        m,
        up,
        repo,
        r1,
        r2,
        _mdir: mdir,
        dir,
    }
}

/// Keyed site: N cannot reach upstream; M's newer snapshot is taken, every file it names
/// verified, and N says so: source "site", not confirmed upstream, stale.
#[test]
fn site_snapshot_is_taken_unconfirmed_on_a_keyed_site_when_upstream_is_gone() {
    need_tools!();
    let t = two_nodes_then_upstream_gone(true);
    let took = wait_serving(&t.n, &t.r2, secs(30));
    eprintln!("MEASURED site snapshot (keyed): R2 from M served by N after {took:?}");
    assert!(
        took.is_some(),
        "N did not take M's newer snapshot\n{}",
        t.n.log_tail(40)
    );
    let st = snap_status(&t.n);
    assert_eq!(st["revision"], revision_of(&t.r2), "{st}");
    assert_eq!(st["source"], "site", "{st}");
    assert_eq!(st["confirmed_upstream"], false, "{st}");
    assert_eq!(st["stale"], true, "{st}");
    assert!(
        t.n.log().contains("from the site, not confirmed upstream"),
        "{}",
        t.n.log_tail(30)
    );
    // What the new snapshot names is usable: R2's new package, from M, byte for byte.
    t.n.assert_serves(&t.repo.package("he-b"));
    assert_eq!(t.up.requests().len(), 0, "upstream is down");
    let _ = (&t.m, &t.r1, &t.dir);
}

/// Keyless site without trust_lan: N keeps its own (stale) R1 and never takes M's R2. With
/// `trust_lan = true` (after a restart) it does, shown as from the site.
#[test]
fn site_snapshot_is_not_taken_on_a_keyless_site_unless_trust_lan() {
    need_tools!();
    let mut t = two_nodes_then_upstream_gone(false);
    let t0 = Instant::now();
    let mut answers = 0;
    for _ in 0..100 {
        if t0.elapsed() >= secs(4 * FRESH) {
            break;
        }
        let r = get_repomd(&t.n);
        assert_eq!(r.status, 200);
        assert!(
            r.body != t.r2,
            "a keyless node took another node's snapshot after {:?}\n{}",
            t0.elapsed(),
            t.n.log_tail(30)
        );
        assert_eq!(r.body, t.r1);
        answers += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "MEASURED keyless: {answers} answers over {:?}, all R1",
        t0.elapsed()
    );
    let st = snap_status(&t.n);
    assert_eq!(st["source"], "upstream", "{st}");
    assert_eq!(st["stale"], true, "{st}");
    assert!(
        !t.n.log().contains("from the site, not confirmed upstream"),
        "{}",
        t.n.log_tail(30)
    );

    // trust_lan = true under [node]: now it may.
    t.n.stop();
    let cfg = fs::read_to_string(t.n.config_path()).unwrap();
    assert!(cfg.starts_with("[node]\n"), "{cfg}");
    fs::write(
        t.n.config_path(),
        cfg.replacen("[node]\n", "[node]\ntrust_lan = true\n", 1),
    )
    .unwrap();
    t.n.start_again();
    wait_healthy(&t.n, 1);
    let took = wait_serving(&t.n, &t.r2, secs(30));
    eprintln!("MEASURED keyless + trust_lan: R2 taken after {took:?}");
    assert!(took.is_some(), "{}", t.n.log_tail(40));
    let st = snap_status(&t.n);
    assert_eq!(st["source"], "site", "{st}");
    assert_eq!(st["confirmed_upstream"], false, "{st}");
    let _ = (&t.m, &t.up, &t.repo, &t.dir);
}

/// What a stranger did, as seen from its side.
#[derive(Debug)]
enum Outcome {
    /// Refused before any handshake (the node keeps no state for it).
    RefusedEarly,
    Failed(String),
    /// `Refused` answer to its hello.
    Refused(String),
    Answered(String),
    /// Bytes the node's flow control let it write.
    Pushed(u64),
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Opens every stream it can and pushes up to 64 MiB without ever finishing a hello.
    Pusher,
    /// A hello with another site id holding a newline and a fake log line.
    ForeignSite,
    /// The right site id, no proof.
    NoProof,
    /// The right site id, a made-up proof.
    WrongProof,
}

const FLOOD_PUSH: u64 = 64 << 20;

async fn stranger(
    ep: quinn::Endpoint,
    cc: quinn::ClientConfig,
    target: SocketAddr,
    kind: Kind,
    site_id: String,
    abort: Arc<AtomicBool>,
) -> Outcome {
    let conn = match tokio::time::timeout(
        secs(6),
        match ep.connect_with(cc, target, "lanmirror") {
            Ok(c) => c,
            Err(e) => return Outcome::Failed(e.to_string()),
        },
    )
    .await
    {
        Err(_) => return Outcome::Failed("handshake timed out".into()),
        Ok(Err(e)) if e.to_string().contains("refused") => return Outcome::RefusedEarly,
        Ok(Err(e)) => return Outcome::Failed(e.to_string()),
        Ok(Ok(c)) => c,
    };
    let hello = |site_id: String, proof: Option<String>| {
        wire::encode(&Request::Hello {
            site_id,
            http_port: 1,
            quic_port: 1,
            proof,
        })
        .unwrap()
    };
    match kind {
        Kind::ForeignSite => {
            say(&conn, hello("x\nFAKE LOG LINE: admitted node".into(), None)).await
        }
        Kind::NoProof => say(&conn, hello(site_id, None)).await,
        Kind::WrongProof => say(&conn, hello(site_id, Some("00".repeat(32)))).await,
        Kind::Pusher => push(&conn, abort).await,
    }
}

/// Sends one frame on a new stream and reads the answer.
async fn say(conn: &quinn::Connection, frame: Vec<u8>) -> Outcome {
    let io = async {
        let (mut s, mut r) = conn.open_bi().await.map_err(|e| e.to_string())?;
        s.write_all(&frame).await.map_err(|e| e.to_string())?;
        let _ = s.finish();
        read_frame::<Response>(&mut r).await
    };
    match tokio::time::timeout(secs(7), io).await {
        Ok(Ok(Response::Refused { reason })) => Outcome::Refused(reason),
        Ok(Ok(other)) => Outcome::Answered(format!("{other:?}")),
        Ok(Err(e)) => Outcome::Failed(e),
        Err(_) => Outcome::Failed("no answer".into()),
    }
}

/// The first stream announces a frame of the largest size and never completes it; then every
/// other stream the node allows (bidirectional, unidirectional) and a datagram; then up to
/// [`FLOOD_PUSH`] bytes over all of them; the connection is held open for 6 s in all.
async fn push(conn: &quinn::Connection, abort: Arc<AtomicBool>) -> Outcome {
    let deadline = tokio::time::Instant::now() + secs(6);
    let Ok(Ok((mut s1, r1))) = tokio::time::timeout(secs(2), conn.open_bi()).await else {
        return Outcome::Failed("no stream".into());
    };
    let mut head = (wire::MAX_FRAME as u32).to_be_bytes().to_vec();
    head.extend_from_slice(&[b'{'; 1024]);
    if !matches!(
        tokio::time::timeout(secs(2), s1.write_all(&head)).await,
        Ok(Ok(()))
    ) {
        return Outcome::Failed("could not start".into());
    }
    let mut receivers = vec![r1];
    let mut streams = vec![(s1, wire::MAX_FRAME as u64 - 1025)];
    for _ in 0..3 {
        match tokio::time::timeout(Duration::from_millis(300), conn.open_bi()).await {
            Ok(Ok((s, r))) => {
                receivers.push(r);
                streams.push((s, 16 << 20));
            }
            _ => break,
        }
    }
    if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(300), conn.open_uni()).await {
        streams.push((s, 16 << 20));
    }
    let _ = conn.send_datagram(Bytes::from_static(b"datagram from a stranger"));
    let chunk = Bytes::from(vec![0x5a; 64 * 1024]);
    let pushes = streams.into_iter().map(|(mut s, quota)| {
        let (chunk, abort) = (chunk.clone(), abort.clone());
        async move {
            let mut sent = 0u64;
            for _ in 0..(quota / chunk.len() as u64 + 1) {
                if sent >= quota.min(FLOOD_PUSH) || abort.load(Ordering::Relaxed) {
                    break;
                }
                let n = (quota - sent).min(chunk.len() as u64) as usize;
                match tokio::time::timeout_at(deadline, s.write_chunk(chunk.slice(..n))).await {
                    Ok(Ok(())) => sent += n as u64,
                    _ => break,
                }
            }
            // Kept, not dropped: dropping would finish the stream.
            (sent, s)
        }
    });
    let (sent, _senders): (Vec<u64>, Vec<_>) = futures_util::future::join_all(pushes)
        .await
        .into_iter()
        .unzip();
    let total: u64 = sent.iter().sum();
    // Hold the connection (and the node's place for it) until the deadline.
    for _ in 0..100 {
        if abort.load(Ordering::Relaxed) || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(receivers);
    Outcome::Pushed(total)
}

/// Samples a process's RSS every 50 ms while `run` runs; returns (run's result, peak kB).
fn with_rss_peak<T>(
    pid: u32,
    abort_over_kb: u64,
    abort: &AtomicBool,
    run: impl FnOnce() -> T,
) -> (T, u64) {
    let stop = AtomicBool::new(false);
    let peak = AtomicU64::new(0);
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..12_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let kb = rss_kb(pid).unwrap_or(0);
                peak.fetch_max(kb, Ordering::Relaxed);
                if kb > abort_over_kb {
                    // Safety for code without bounds: stop pushing before the machine suffers.
                    abort.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let out = run();
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        out
    });
    (out, peak.load(Ordering::Relaxed))
}

/// 200 QUIC connections from strangers without the site key, from 8 loopback addresses over
/// 4 s: half push data on every stream they can open without finishing a hello, the others
/// send hellos with a foreign site id holding a newline, no proof, or a wrong proof. The
/// node's RSS stays within 64 MiB of idle, `/api/status` answers within 2 s throughout, no log
/// line is forged, and refusals are logged at most once a minute per address.
#[test]
fn stranger_flood_is_bounded_and_never_forges_log_lines() {
    let dir = temp();
    fs::create_dir_all(dir.path().join("mirror")).unwrap();
    let up = Upstream::start(&dir.path().join("mirror"));
    let site = keyed_site(dir.path());
    let node = Node::start(node_opts(&up, &site, dir.path().join("node"), vec![]));
    let pid = node.pid().unwrap();
    let quic: SocketAddr = node.status_json()["quic_listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let site_id = site.auth().site_id;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let abort = Arc::new(AtomicBool::new(false));

    // One foreign hello alone from its own address: its refusal is the one logged for that
    // address, escaped.
    let lone = rt.block_on(async {
        let (ep, cc) = stranger_endpoint(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 20)));
        stranger(
            ep,
            cc,
            quic,
            Kind::ForeignSite,
            site_id.clone(),
            abort.clone(),
        )
        .await
    });
    assert!(matches!(lone, Outcome::Refused(_)), "{lone:?}");
    assert!(
        wait_until(secs(5), Duration::from_millis(100), || node
            .log()
            .contains(r"x\nFAKE LOG LINE")),
        "the foreign site id is not in the log, escaped\n{}",
        node.log_tail(20)
    );

    for _ in 0..5 {
        let _ = node.get("/api/status");
    }
    let idle = (0..20)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            rss_kb(pid).unwrap_or(0)
        })
        .max()
        .unwrap();

    let slowest_status = AtomicU64::new(0);
    let status_fail = AtomicU64::new(0);
    let status_n = AtomicU64::new(0);
    let flood_done = AtomicBool::new(false);
    let t0 = Instant::now();
    let (outcomes, peak) = with_rss_peak(pid, idle + (1 << 20), &abort, || {
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..200 {
                    if flood_done.load(Ordering::Relaxed) {
                        break;
                    }
                    let url = format!("{}/api/status", node.url());
                    match try_http_request("GET", &url, &[], secs(2)) {
                        Ok(r) if r.status == 200 && r.complete => {
                            slowest_status
                                .fetch_max(r.elapsed.as_millis() as u64, Ordering::Relaxed);
                        }
                        _ => {
                            status_fail.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    status_n.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(250));
                }
            });
            let outcomes = rt.block_on(async {
                let eps: Vec<_> = (0..8u8)
                    .map(|i| stranger_endpoint(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i))))
                    .collect();
                let mut tasks = Vec::new();
                for i in 0..200usize {
                    if abort.load(Ordering::Relaxed) {
                        break;
                    }
                    let (ep, cc) = eps[i % 8].clone();
                    let kind = match i % 6 {
                        0..=2 => Kind::Pusher,
                        3 => Kind::ForeignSite,
                        4 => Kind::NoProof,
                        _ => Kind::WrongProof,
                    };
                    let (site_id, abort) = (site_id.clone(), abort.clone());
                    tasks.push(tokio::spawn(async move {
                        let o = tokio::time::timeout(
                            secs(10),
                            stranger(ep, cc, quic, kind, site_id, abort),
                        )
                        .await
                        .unwrap_or(Outcome::Failed("stranger took too long".into()));
                        (kind, o)
                    }));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let mut out = Vec::new();
                for t in tasks {
                    if let Ok(o) = t.await {
                        out.push(o);
                    }
                }
                out
            });
            flood_done.store(true, Ordering::Relaxed);
            outcomes
        })
    });
    let took = t0.elapsed();
    drop(rt);

    let count = |f: &dyn Fn(&Outcome) -> bool| outcomes.iter().filter(|(_, o)| f(o)).count();
    let early = count(&|o| matches!(o, Outcome::RefusedEarly));
    let refused = count(&|o| matches!(o, Outcome::Refused(_)));
    let answered: Vec<_> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Answered(_)))
        .collect();
    let pushed: Vec<u64> = outcomes
        .iter()
        .filter_map(|(_, o)| match o {
            Outcome::Pushed(n) => Some(*n),
            _ => None,
        })
        .collect();
    let max_pushed = pushed.iter().copied().max().unwrap_or(0);
    let mut reasons: Vec<String> = outcomes
        .iter()
        .filter_map(|(k, o)| match o {
            Outcome::Failed(e) => Some(format!("{k:?}: {e}")),
            Outcome::Refused(r) => Some(format!("{k:?} refused: {r}")),
            Outcome::Answered(a) => Some(format!("{k:?} ANSWERED: {a}")),
            _ => None,
        })
        .collect();
    reasons.sort();
    reasons.dedup();
    eprintln!("MEASURED flood outcomes: {reasons:#?}");
    let grew_mib = peak.saturating_sub(idle) as f64 / 1024.0;
    eprintln!(
        "MEASURED flood: {} connections in {took:?}; refused before handshake {early}, refused hello {refused}, \
         pushers that got a stream {} (most bytes one could write: {max_pushed}), other {}; \
         RSS idle {idle} kB, peak {peak} kB (+{grew_mib:.1} MiB); /api/status: {} answers, slowest {} ms, {} failed",
        outcomes.len(),
        pushed.len(),
        outcomes.len() - early - refused - pushed.len(),
        status_n.load(Ordering::Relaxed),
        slowest_status.load(Ordering::Relaxed),
        status_fail.load(Ordering::Relaxed),
    );
    assert!(answered.is_empty(), "a stranger was answered: {answered:?}");
    assert!(
        !abort.load(Ordering::Relaxed),
        "the node's RSS passed idle + 1 GiB: flood stopped early (peak {peak} kB, idle {idle} kB)"
    );
    assert!(
        peak < idle + 64 * 1024,
        "RSS grew by {grew_mib:.1} MiB under the flood (idle {idle} kB, peak {peak} kB)"
    );
    assert!(
        max_pushed <= (wire::MAX_FRAME + (128 << 10)) as u64,
        "a stranger could make the node take {max_pushed} bytes before admission"
    );
    assert_eq!(
        status_fail.load(Ordering::Relaxed),
        0,
        "/api/status failed or took over 2 s during the flood"
    );
    assert!(slowest_status.load(Ordering::Relaxed) < 2000);

    let log = node.log();
    let refusal_lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("DEBUG") && l.contains("refused"))
        .collect();
    eprintln!("MEASURED flood: refusal log lines: {refusal_lines:#?}");
    let forged: Vec<&str> = log
        .lines()
        .filter(|l| l.trim_start().starts_with("FAKE LOG LINE"))
        .collect();
    assert!(forged.is_empty(), "forged log lines: {forged:?}");
    for i in 2..=9u8 {
        let addr = format!("127.0.0.{i}");
        let lines = log
            .lines()
            .filter(|l| !l.contains("DEBUG") && l.contains("refused") && l.contains(&addr))
            .count();
        assert!(
            lines <= 2,
            "{lines} refusal log lines for {addr} in {took:?} (once a minute per address)"
        );
    }
    let mut node = node;
    assert!(node.is_running());
    assert_eq!(node.get("/api/status").status, 200);
}

/// Strings that peers and strangers control reach the log: a dialled stranger's refusal
/// reason, a member's error message and connection-close reason, a stranger's malformed frame.
/// None may start a line of its own (a newline in them would let anyone on the LAN write fake
/// log lines, e.g. a fake "new metadata snapshot in service").
#[test]
fn peer_strings_never_forge_log_lines() {
    need_tools!();
    let dir = temp();
    let repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[PkgSpec::new("hg-a", "1.0", 40_000)],
    );
    let up = Upstream::start(repo.dir());
    let site = keyed_site(dir.path());
    // A stranger the node dials (as it would one that advertised itself on mDNS).
    let refuser = HostilePeer::start(&keyless_site());
    refuser.script(|s| s.refuse = Some("no\nFORGED-REFUSAL line".into()));
    // Members of the site.
    let liar = HostilePeer::start(&site);
    liar.script(|s| {
        s.have = HaveMode::Everything;
        s.fail_transfers = Some("busy\nFORGED-ERROR line".into());
    });
    let leaver = HostilePeer::start(&site);
    leaver.script(|s| {
        s.close_after_welcome = Some((secs(1), "later\nFORGED-LEAVE line".into()));
    });
    let node = Node::start(node_opts(
        &up,
        &site,
        dir.path().join("node"),
        vec![refuser.addr(), liar.addr(), leaver.addr()],
    ));
    assert!(wait_until(secs(20), Duration::from_millis(100), || {
        // Static entries carry no id until their first connection: absent means not yet.
        node.status_json()["peers"].as_array().is_some_and(|a| {
            a.iter()
                .any(|p| p["id"] == liar.id.to_string() && p["healthy"] == true)
        })
    }));
    assert_eq!(get_repomd(&node).status, 200);
    node.assert_serves(&repo.package("hg-a"));
    // A stranger's frame whose message kind holds a newline.
    let quic: SocketAddr = node.status_json()["quic_listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let frame = {
        let body = br#"{"t":"x\nFORGED-FRAME line"}"#;
        [&(body.len() as u32).to_be_bytes()[..], body].concat()
    };
    rt.block_on(async {
        let (ep, cc) = stranger_endpoint(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 30)));
        if let Ok(c) = ep.connect_with(cc, quic, "lanmirror")
            && let Ok(Ok(conn)) = tokio::time::timeout(secs(5), c).await
        {
            let _ = say(&conn, frame).await;
        }
    });
    drop(rt);
    let markers = [
        "FORGED-REFUSAL",
        "FORGED-ERROR",
        "FORGED-LEAVE",
        "FORGED-FRAME",
    ];
    // Let the dialled ones be tried (and the leaver leave) at least once.
    wait_until(secs(10), Duration::from_millis(200), || {
        let log = node.log();
        markers.iter().all(|m| log.contains(m))
    });
    let log = node.log();
    let mut report = Vec::new();
    for m in markers {
        let forged: Vec<&str> = log
            .lines()
            .filter(|l| l.trim_start().starts_with(m))
            .collect();
        if !log.contains(m) {
            let dials: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("cannot use peer") || l.contains("connection closed"))
                .collect();
            report.push(format!(
                "{m}: never reached the log (path not exercised); dial lines: {dials:#?}"
            ));
        } else if !forged.is_empty() {
            let host = log
                .lines()
                .collect::<Vec<_>>()
                .windows(2)
                .find(|w| w[1].trim_start().starts_with(m))
                .map(|w| w[0].to_string())
                .unwrap_or_default();
            report.push(format!("{m}: forged line {:?} after {host:?}", forged[0]));
        }
    }
    assert!(report.is_empty(), "log injection:\n{}", report.join("\n"));
}

/// Admission also bounds a member of the site: at most 4 connections per node id, 64 streams
/// at once per connection (the hello's included), and 10 s to send a whole request on a
/// stream it opened.
#[test]
fn admitted_peers_are_bounded_too() {
    let dir = temp();
    fs::create_dir_all(dir.path().join("mirror")).unwrap();
    let up = Upstream::start(&dir.path().join("mirror"));
    let site = keyed_site(dir.path());
    let node = Node::start(node_opts(&up, &site, dir.path().join("node"), vec![]));
    let quic: SocketAddr = node.status_json()["quic_listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let member = HostilePeer::start(&site);
    let mut conns = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..6 {
        match member.dial_conn(quic) {
            Ok((c, a)) => {
                conns.push(c);
                answers.push(format!("{a:?}"));
            }
            Err(e) => answers.push(e),
        }
    }
    let welcomed = answers.iter().filter(|a| a.starts_with("Welcome")).count();
    eprintln!("MEASURED admitted: 6 connections from one node id: {answers:#?}");
    assert_eq!(welcomed, 4, "{answers:#?}");
    assert!(
        answers[4..].iter().all(|a| a.contains("already has 4")),
        "{answers:#?}"
    );

    // 64 streams at once, not 65.
    let conn = conns[0].clone();
    let (opened, blocked) = member.block_on(async {
        let mut held = Vec::new();
        for _ in 0..64 {
            match tokio::time::timeout(secs(2), conn.open_bi()).await {
                Ok(Ok((mut s, r))) => {
                    // Start a request (its first byte) so the stream exists at the node.
                    let _ = s.write_all(&[0]).await;
                    held.push((s, r));
                }
                _ => break,
            }
        }
        let blocked = tokio::time::timeout(Duration::from_millis(1500), conn.open_bi())
            .await
            .is_err();
        (held.len(), blocked)
    });
    eprintln!("MEASURED admitted: streams opened at once {opened}, 65th blocked: {blocked}");
    // 64 in all: the hello's stream may still hold one of them.
    assert!(
        (63..=64).contains(&opened),
        "{opened} streams opened at once"
    );
    assert!(blocked, "a 65th stream opened at once");

    // A request that never completes loses its stream within about 10 s.
    let conn = conns[1].clone();
    let (took, got) = member.block_on(async {
        let t = Instant::now();
        let (mut s, mut r) = conn.open_bi().await.expect("stream");
        s.write_all(&[0, 0, 0, 40, b'{']).await.expect("write");
        let got = tokio::time::timeout(secs(25), r.read_to_end(1 << 16)).await;
        (t.elapsed(), format!("{got:?}"))
    });
    eprintln!("MEASURED admitted: unfinished request ended after {took:?}: {got}");
    assert!(
        took >= secs(8) && took < secs(15),
        "unfinished request ended after {took:?}: {got}"
    );
    assert!(got.contains("Err") || got.contains("reset"), "{got}");
    let mut node = node;
    assert!(node.is_running());
}
