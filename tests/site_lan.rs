//! The real-LAN tier: a site of `lanmirror` nodes, each in its own network namespace on a
//! Linux bridge, finding each other by mDNS alone (no static peers) and talking QUIC across real
//! interfaces, with the upstream behind a rate-limited link and Debian's dnf as the client inside
//! each node's namespace. The kit is `tests/common/netns.rs` ([`Lan`], [`LanSite`]).
//!
//! Needs root and iproute2 (`ip`, `tc`); skipped with a printed reason otherwise (never as
//! root with `ip` present). Traffic stays on loopback and in namespaces made here; every test is
//! bounded by a [`Watchdog`] besides the kit's own time limits.

mod common;

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::netns::{self, UPSTREAM_PORT};
use common::*;
use serde_json::Value;

const MIB: usize = 1 << 20;
/// How long mDNS discovery may take for the whole site.
const DISCOVERY: Duration = Duration::from_secs(20);

/// The site for a test, or None (printed reason) when the tier cannot run here.
fn site(test: &str, n: usize, opts: LanOpts) -> Option<LanSite> {
    if let Some(why) = netns::unavailable_reason() {
        eprintln!("SKIPPED {test}: {why}");
        return None;
    }
    Some(LanSite::new(n, opts))
}

fn lan_opts(pkgs: Vec<PkgSpec<'static>>) -> LanOpts<'static> {
    LanOpts {
        pkgs,
        ..Default::default()
    }
}

/// A counter of `/api/status` (panics with the status when it is missing).
fn num(st: &Value, key: &str) -> u64 {
    st[key]
        .as_u64()
        .unwrap_or_else(|| panic!("/api/status has no counter {key:?}: {st}"))
}

fn node_id(st: &Value) -> String {
    let id = st["node_id"]
        .as_str()
        .unwrap_or_else(|| panic!("/api/status has no node_id: {st}"));
    assert!(!id.is_empty(), "empty node_id: {st}");
    id.to_string()
}

/// Ids of the peers `/api/status` lists as healthy.
fn healthy_peers(st: &Value) -> Vec<String> {
    st["peers"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p["healthy"] == true)
                .filter_map(|p| p["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The upstream's request log, one `METHOD path status` per line, for failure messages.
fn upstream_log(up: &Upstream) -> String {
    up.requests()
        .iter()
        .map(|l| format!("\n  {} {} {}", l.method, l.path, l.status))
        .collect()
}

/// Every node's status, for failure messages.
fn statuses(site: &LanSite) -> String {
    (0..site.nodes.len())
        .map(|i| format!("node {}: {}", i + 1, site.status(i)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until each of `nodes` lists every other one of them as a healthy peer.
fn wait_site_formed(site: &LanSite, nodes: &[usize], timeout: Duration) -> bool {
    let ids: Vec<String> = nodes.iter().map(|&i| node_id(&site.status(i))).collect();
    wait_until(timeout, Duration::from_millis(250), || {
        nodes.iter().zip(&ids).all(|(&i, me)| {
            let healthy = healthy_peers(&site.status(i));
            ids.iter()
                .filter(|id| *id != me)
                .all(|id| healthy.contains(id))
        })
    })
}

fn assert_site_formed(site: &LanSite, nodes: &[usize]) {
    assert!(
        wait_site_formed(site, nodes, DISCOVERY),
        "nodes {nodes:?} did not all see each other as healthy peers within {DISCOVERY:?}\n{}",
        statuses(site)
    );
}

/// SHA-256 of the payload a kit package installs.
fn payload_sha(pkg: &BuiltPkg) -> String {
    sha256_hex(&payload_bytes(&pkg.name, &pkg.version, pkg.payload_bytes))
}

/// The client installed `pkg` with exactly the built payload.
fn assert_installed(c: &Dnf, pkg: &BuiltPkg) {
    let data = fs::read(c.payload_path(&pkg.name))
        .unwrap_or_else(|e| panic!("{} not installed: {e}", pkg.name));
    assert_eq!(sha256_hex(&data), payload_sha(pkg), "{} payload", pkg.name);
}

fn names(pkgs: &[BuiltPkg]) -> Vec<&str> {
    pkgs.iter().map(|p| p.name.as_str()).collect()
}

/// Runs `f` in a thread inside the namespace held open by `fd` (one that may have no name
/// any more).
fn in_netns_fd<T: Send>(fd: &File, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: a valid namespace fd; setns only changes this thread's namespace.
            let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    })
}

/// Sends mDNS-group datagrams from namespace `from` until namespace `to` (joined on `to_ip`)
/// receives one; bounded to 5 s. Proves the bridge and the multicast routes carry mDNS.
fn multicast_crosses(from: &str, to: &str, to_ip: Ipv4Addr) -> bool {
    let group = Ipv4Addr::new(224, 0, 0, 251);
    let got = AtomicBool::new(false);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            in_netns(to, || {
                let sock = UdpSocket::bind("0.0.0.0:5353").expect("bind 5353");
                sock.join_multicast_v4(&group, &to_ip).expect("join group");
                sock.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                ready_tx.send(()).unwrap();
                let deadline = Instant::now() + Duration::from_secs(5);
                let mut buf = [0u8; 64];
                for _ in 0..50 {
                    if let Ok((n, _)) = sock.recv_from(&mut buf)
                        && &buf[..n] == b"lmt-probe"
                    {
                        got.store(true, Ordering::SeqCst);
                        return;
                    }
                    if Instant::now() >= deadline {
                        return;
                    }
                }
            })
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("receiver ready");
        in_netns(from, || {
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..20 {
                if got.load(Ordering::SeqCst) {
                    break;
                }
                let _ = sock.send_to(b"lmt-probe", SocketAddrV4::new(group, 5353));
                std::thread::sleep(Duration::from_millis(200));
            }
        });
    });
    got.load(Ordering::SeqCst)
}

/// The harness itself (works without peers): bridge, namespaces, multicast across the bridge,
/// the rate limit, an upstream and one node in namespaces, dnf in the node's namespace; then
/// nothing is left behind once the site is dropped.
#[test]
fn harness_builds_a_lan_and_removes_it() {
    if let Some(why) = netns::unavailable_reason() {
        eprintln!("SKIPPED harness_builds_a_lan_and_removes_it: {why}");
        return;
    }
    let _wd = Watchdog::new(
        "harness_builds_a_lan_and_removes_it",
        Duration::from_secs(240),
    );
    let rate_bits_per_sec = 16_000_000.0;
    let (prefix, made, bridge_fd) = {
        let site = LanSite::new(
            1,
            LanOpts {
                pkgs: vec![PkgSpec::new("lml-h", "1.0", 2 * MIB)],
                uplink_rate: Some("16mbit".into()),
                mdns: false,
                ..Default::default()
            },
        );
        let prefix = site.lan.prefix().to_string();
        let made = site.lan.namespaces();
        assert_eq!(made.len(), 3, "bridge, up, n1: {made:?}");
        let listed = netns::netns_list();
        for ns in &made {
            assert!(ns.starts_with(&prefix), "{ns}");
            assert!(
                listed.contains(ns),
                "{ns} not in `ip netns list`: {listed:?}"
            );
        }
        let bridge_fd = File::open(format!("{}/{}", netns::NETNS_DIR, site.lan.bridge_ns()))
            .expect("open the bridge namespace");

        // Layout: the bridge with one port per host; each host with lo, lan0, its address and
        // the multicast route; the upstream's link shaped.
        let mut br_links = netns::links_in(site.lan.bridge_ns());
        br_links.sort();
        assert_eq!(br_links, ["br0", "lo", "p1", "p2"]);
        let n1 = &site.nodes[0].host;
        let up = &site.up_host;
        for h in [n1, up] {
            let mut links = netns::links_in(&h.ns);
            links.sort();
            assert_eq!(links, ["lan0", "lo"], "{}", h.ns);
            let addrs = netns::ip(&["-n", &h.ns, "-o", "-4", "addr", "show"]);
            assert!(addrs.contains(&format!("{}/24", h.ip)), "{addrs}");
            assert!(addrs.contains("127.0.0.1/8"), "lo is up: {addrs}");
            let routes = netns::ip(&["-n", &h.ns, "route", "show"]);
            assert!(routes.contains("224.0.0.0/4 dev lan0"), "{routes}");
        }
        let qdisc = netns::tc(&["-n", &up.ns, "qdisc", "show", "dev", "lan0"]);
        assert!(qdisc.contains("tbf") && qdisc.contains("16Mbit"), "{qdisc}");
        // Nothing in the test's own namespace.
        let root_links = netns::ip(&["-o", "link", "show"]);
        assert!(!root_links.contains(&prefix), "{root_links}");
        let root_addrs = netns::ip(&["-o", "-4", "addr", "show"]);
        assert!(
            !root_addrs.contains(&format!("10.213.{}.", n1.ip.octets()[2])),
            "{root_addrs}"
        );

        assert!(
            multicast_crosses(&up.ns, &n1.ns, n1.ip),
            "an mDNS-group datagram from {} did not reach {}",
            up.ns,
            n1.ns
        );

        // The uplink is slow: 2 MiB straight from the upstream, from the node's namespace.
        let pkg = site.repo.package("lml-h");
        let url = format!("http://{}:{UPSTREAM_PORT}/{}", up.ip, pkg.rel_path);
        let r = in_netns(&n1.ns, || http_get(&url, &[]));
        assert!(r.status == 200 && r.complete, "{url}: {}", r.status);
        assert_eq!(sha256_hex(&r.body), pkg.sha256_hex);
        let floor = Duration::from_secs_f64(0.7 * pkg.size as f64 * 8.0 / rate_bits_per_sec);
        assert!(
            r.elapsed >= floor,
            "{} bytes in {:?} through a 16mbit link (expected ≥ {floor:?})",
            pkg.size,
            r.elapsed
        );
        assert_eq!(site.up.count(&pkg.file_name), 1);
        site.up.clear_log();

        // dnf in the node's namespace, through the node (which runs in that namespace too).
        let node = site.node(0);
        assert_eq!(node.netns(), Some(n1.ns.as_str()));
        assert_eq!(node.url(), "http://127.0.0.1:7700");
        let c = site.client(0, "c1");
        c.install(&["lml-h"]).assert_success();
        assert_installed(&c, &pkg);
        assert_eq!(
            site.up.count(&pkg.file_name),
            1,
            "{}",
            upstream_log(&site.up)
        );
        assert!(site.holds(0, &pkg));
        let st = site.status(0);
        assert!(num(&st, "misses") >= 1, "{st}");
        // The node's config has what the tier needs.
        let toml = fs::read_to_string(node.config_path()).unwrap();
        assert!(toml.contains("http_listen = \"0.0.0.0:7700\""), "{toml}");
        assert!(toml.contains("quic_listen = \"0.0.0.0:7701\""), "{toml}");
        assert!(toml.contains(&format!("\"{}\"", site.up.url())), "{toml}");
        assert!(toml.contains("peers = []"), "{toml}");
        (prefix, made, bridge_fd)
    };

    // Dropped: no namespace of ours is left, and the bridge (still held open here) has lost every
    // port, which happens only once the host namespaces are really gone (no process left in them).
    let listed = netns::netns_list();
    assert!(
        !listed.iter().any(|n| n.starts_with(&prefix)),
        "left behind: {listed:?} (made {made:?})"
    );
    for ns in &made {
        assert!(!std::path::Path::new(netns::NETNS_DIR).join(ns).exists());
    }
    let root_links = netns::ip(&["-o", "link", "show"]);
    assert!(!root_links.contains(&prefix), "{root_links}");
    let mut links = Vec::new();
    let gone = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        links = in_netns_fd(&bridge_fd, || {
            netns::ip(&["-o", "link", "show"])
                .lines()
                .filter_map(|l| l.split(": ").nth(1))
                .map(|n| n.split('@').next().unwrap().to_string())
                .collect::<Vec<_>>()
        });
        links.iter().all(|l| l == "lo" || l == "br0")
    });
    assert!(gone, "bridge ports left after clean-up: {links:?}");
}

/// Site test 1: Three nodes find each other by mDNS alone: each lists the two others as healthy
/// peers.
#[test]
fn three_nodes_find_each_other_by_mdns() {
    let _wd = Watchdog::new(
        "three_nodes_find_each_other_by_mdns",
        Duration::from_secs(180),
    );
    let Some(site) = site(
        "three_nodes_find_each_other_by_mdns",
        3,
        lan_opts(vec![PkgSpec::new("lml-d", "1.0", 100_000)]),
    ) else {
        return;
    };
    let ids: Vec<String> = (0..3).map(|i| node_id(&site.status(i))).collect();
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );
    assert_site_formed(&site, &[0, 1, 2]);
    for i in 0..3 {
        let st = site.status(i);
        assert_eq!(st["mdns"], true, "{st}");
        let peers = st["peers"].as_array().unwrap();
        assert!(
            !peers.iter().any(|p| p["id"] == ids[i].as_str()),
            "a node lists itself: {st}"
        );
        for j in (0..3).filter(|&j| j != i) {
            let p = peers
                .iter()
                .find(|p| p["id"] == ids[j].as_str())
                .unwrap_or_else(|| panic!("node {} misses node {}: {st}", i + 1, j + 1));
            // "mdns", or "incoming" when the other side's mDNS found us first; never "static".
            assert_ne!(p["via"], "static", "no static peers are configured: {st}");
            assert!(p["via"].is_string(), "{st}");
            let addr = p["addr"].as_str().unwrap_or_default();
            assert!(
                addr.contains(&site.nodes[j].host.ip.to_string()),
                "node {}'s address is {}, not {addr:?}: {st}",
                j + 1,
                site.nodes[j].host.ip
            );
        }
    }
}

/// Site test 2: A package installed through node 1 is then installed through a node that does not
/// hold it, with no new upstream request for it: the bytes came from the site.
#[test]
fn a_package_fetched_once_is_served_from_the_site() {
    let _wd = Watchdog::new(
        "a_package_fetched_once_is_served_from_the_site",
        Duration::from_secs(300),
    );
    let Some(site) = site(
        "a_package_fetched_once_is_served_from_the_site",
        3,
        lan_opts(vec![PkgSpec::new("lml-a", "1.0", 2 * MIB)]),
    ) else {
        return;
    };
    assert_site_formed(&site, &[0, 1, 2]);
    let pkg = site.repo.package("lml-a");
    let c1 = site.client(0, "c1");
    c1.install(&["lml-a"]).assert_success();
    assert_installed(&c1, &pkg);
    assert_eq!(
        site.up.count(&pkg.file_name),
        1,
        "{}",
        upstream_log(&site.up)
    );
    assert!(site.holds(0, &pkg), "node 1 served it and keeps it");
    // The site's fetcher for this package may be node 2 or 3 and keep a copy; take a node that
    // holds none, so the bytes must cross the LAN.
    let other = (1..3)
        .find(|&i| !site.holds(i, &pkg))
        .expect("nodes 2 and 3 both hold a package only node 1 was asked for");
    let before = num(&site.status(other), "from_peers");
    let c2 = site.client(other, "c2");
    c2.install(&["lml-a"]).assert_success();
    assert_installed(&c2, &pkg);
    assert_eq!(
        site.up.count(&pkg.file_name),
        1,
        "node {} went upstream: {}",
        other + 1,
        upstream_log(&site.up)
    );
    let st = site.status(other);
    assert!(num(&st, "from_peers") > before, "{st}");
    assert!(num(&st, "bytes_from_peers") >= pkg.size, "{st}");
    assert!(site.holds(other, &pkg), "node {} stored it", other + 1);
}

/// Site test 3: Three cold nodes whose clients install the same packages at once, over a slow
/// uplink: exactly one upstream GET per package for the whole site.
#[test]
fn simultaneous_cold_nodes_fetch_each_package_once() {
    let _wd = Watchdog::new(
        "simultaneous_cold_nodes_fetch_each_package_once",
        Duration::from_secs(300),
    );
    let Some(site) = site(
        "simultaneous_cold_nodes_fetch_each_package_once",
        3,
        LanOpts {
            pkgs: vec![
                PkgSpec::new("lml-x", "1.0", 3 * MIB),
                PkgSpec::new("lml-y", "1.0", 2 * MIB),
                PkgSpec::new("lml-z", "1.0", MIB),
            ],
            // 6 MiB at 10 Mbit/s: about 5 s of transfers, so the three nodes' requests overlap.
            uplink_rate: Some("10mbit".into()),
            ..Default::default()
        },
    ) else {
        return;
    };
    assert_site_formed(&site, &[0, 1, 2]);
    let pkgs = site.repo.packages();
    let clients: Vec<Dnf> = (0..3).map(|i| site.client(i, &format!("c{i}"))).collect();
    let outs: Vec<DnfOutput> = std::thread::scope(|s| {
        let hs: Vec<_> = clients
            .iter()
            .map(|c| s.spawn(|| c.install(&names(&pkgs))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (o, c) in outs.iter().zip(&clients) {
        o.assert_success();
        for p in &pkgs {
            assert_installed(c, p);
        }
    }
    for p in &pkgs {
        assert_eq!(
            site.up.count(&p.file_name),
            1,
            "{}: {}\n{}",
            p.file_name,
            upstream_log(&site.up),
            statuses(&site)
        );
    }
    let from_peers: u64 = (0..3).map(|i| num(&site.status(i), "from_peers")).sum();
    assert!(
        from_peers >= 2 * pkgs.len() as u64,
        "each package reached two nodes from the site: {}",
        statuses(&site)
    );
}

/// Site test 4: One node killed with SIGKILL and no uplink: the two others still serve everything
/// the site held, to fresh clients.
#[test]
fn site_survives_a_killed_node_without_uplink() {
    let _wd = Watchdog::new(
        "site_survives_a_killed_node_without_uplink",
        Duration::from_secs(480),
    );
    let Some(mut site) = site(
        "site_survives_a_killed_node_without_uplink",
        3,
        lan_opts(vec![
            PkgSpec::new("lml-k1", "1.0", MIB),
            PkgSpec::new("lml-k2", "1.0", 2 * MIB),
            PkgSpec::new("lml-k3", "1.0", 500_000),
        ]),
    ) else {
        return;
    };
    assert_site_formed(&site, &[0, 1, 2]);
    let pkgs = site.repo.packages();
    // Node 1's client installs everything, node 2's then gets it from the site; node 3's client
    // only loads metadata (node 3 may still hold packages it fetched as the site's downloader).
    site.client(0, "c1").install(&names(&pkgs)).assert_success();
    site.client(1, "c2").install(&names(&pkgs)).assert_success();
    site.client(2, "c3").makecache().assert_success();
    for p in &pkgs {
        assert!(site.holds(1, p), "node 2 stores {}", p.name);
    }
    let lacking: Vec<&str> = pkgs
        .iter()
        .filter(|p| !site.holds(2, p))
        .map(|p| p.name.as_str())
        .collect();
    if lacking.is_empty() {
        eprintln!(
            "note: node 3 was the site's downloader for every package; none crosses to it later"
        );
    }
    let before = num(&site.status(2), "from_peers");

    site.node_mut(0).kill9();
    site.up.set_down(true);
    // Past the metadata freshness window (2 s): the nodes try upstream for repomd.xml and fail.
    std::thread::sleep(Duration::from_millis(2500));
    for (i, name) in [(2, "fresh3"), (1, "fresh2")] {
        let mut c = site.client(i, name);
        c.timeout = Duration::from_secs(150);
        c.install(&names(&pkgs)).assert_success();
        for p in &pkgs {
            assert_installed(&c, p);
        }
    }
    let st = site.status(2);
    assert!(
        num(&st, "from_peers") >= before + lacking.len() as u64,
        "node 3 got {lacking:?} from node 2: {st}"
    );
    for p in &pkgs {
        assert!(site.holds(2, p), "node 3 stores {}", p.name);
    }
}

/// Site test 5: A fourth node with the wrong site key (same site name) is refused both ways; its
/// client still works, through upstream only.
#[test]
fn a_node_with_the_wrong_site_key_is_refused() {
    let _wd = Watchdog::new(
        "a_node_with_the_wrong_site_key_is_refused",
        Duration::from_secs(400),
    );
    let Some(mut site) = site(
        "a_node_with_the_wrong_site_key_is_refused",
        3,
        LanOpts {
            pkgs: vec![PkgSpec::new("lml-s", "1.0", MIB)],
            site: Some("lmt-site".into()),
            site_key: Some("site key A: 0123456789abcdef0123456789abcdef".into()),
            ..Default::default()
        },
    ) else {
        return;
    };
    assert_site_formed(&site, &[0, 1, 2]);
    for i in 0..3 {
        let st = site.status(i);
        assert_eq!(st["site_key"], true, "{st}");
    }
    let pkg = site.repo.package("lml-s");
    site.client(0, "c1").install(&["lml-s"]).assert_success();
    assert_eq!(site.up.count(&pkg.file_name), 1);

    let key_b = site.path("site-key-b");
    write_private(&key_b, "site key B: fedcba9876543210fedcba9876543210");
    let n4 = site.add_node(|o| o.site_key_file = Some(key_b.clone()));
    let id4 = node_id(&site.status(n4));
    let all = [0, 1, 2, n4];
    let refused = |site: &LanSite| -> bool {
        let n: u64 = all
            .iter()
            .map(|&i| num(&site.status(i), "peers_refused"))
            .sum();
        let logged = all
            .iter()
            .any(|&i| site.node(i).log().to_lowercase().contains("site key"));
        n >= 1 && logged
    };
    assert!(
        wait_until(DISCOVERY, Duration::from_millis(250), || refused(&site)),
        "no refusal counted and logged (\"site key\") within {DISCOVERY:?}\n{}",
        statuses(&site)
    );
    // Give discovery time to (wrongly) admit it, then check nobody did.
    std::thread::sleep(Duration::from_secs(3));
    let st4 = site.status(n4);
    assert!(healthy_peers(&st4).is_empty(), "node 4 admitted: {st4}");
    for i in 0..3 {
        let st = site.status(i);
        assert!(
            !healthy_peers(&st).contains(&id4),
            "node {} admitted node 4: {st}",
            i + 1
        );
    }
    assert!(
        wait_site_formed(&site, &[0, 1, 2], Duration::from_secs(5)),
        "the three keyed nodes still form a site\n{}",
        statuses(&site)
    );

    // Node 4's client works, but only through upstream: the site neither feeds it nor is fed.
    let c4 = site.client(n4, "c4");
    c4.install(&["lml-s"]).assert_success();
    assert_installed(&c4, &pkg);
    assert_eq!(
        site.up.count(&pkg.file_name),
        2,
        "node 4 fetched it upstream: {}",
        upstream_log(&site.up)
    );
    let st4 = site.status(n4);
    assert_eq!(num(&st4, "from_peers"), 0, "{st4}");
    assert_eq!(num(&st4, "bytes_from_peers"), 0, "{st4}");
    assert_eq!(num(&st4, "bytes_to_peers"), 0, "{st4}");
}

/// Site test 6: A peer whose stored copy is corrupt (one byte changed on disk, same size): a node
/// asking the site for that package detects it, still serves its client the right bytes, and never
/// stores the corrupt ones.
#[test]
fn corrupt_bytes_from_a_peer_are_refused() {
    let _wd = Watchdog::new(
        "corrupt_bytes_from_a_peer_are_refused",
        Duration::from_secs(300),
    );
    let Some(site) = site(
        "corrupt_bytes_from_a_peer_are_refused",
        3,
        lan_opts(vec![PkgSpec::new("lml-c", "1.0", 2 * MIB)]),
    ) else {
        return;
    };
    assert_site_formed(&site, &[0, 1, 2]);
    let pkg = site.repo.package("lml-c");
    site.client(0, "c1").install(&["lml-c"]).assert_success();
    assert!(site.holds(0, &pkg));
    let other = (1..3)
        .find(|&i| !site.holds(i, &pkg))
        .expect("nodes 2 and 3 both hold a package only node 1 was asked for");
    // Corrupt every copy at the site, so whichever peer answers sends bad bytes.
    let mut corrupted = 0;
    for i in (0..3).filter(|&i| i != other) {
        for f in site.blobs_sized(i, &pkg) {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&f)
                .unwrap();
            let at = pkg.size / 2;
            let mut b = [0u8; 1];
            file.read_exact_at(&mut b, at).unwrap();
            file.write_all_at(&[b[0] ^ 0xff], at).unwrap();
            file.sync_all().unwrap();
            corrupted += 1;
        }
    }
    assert!(corrupted >= 1);
    assert!(!site.holds(0, &pkg), "node 1's copy is now corrupt");

    let before = num(&site.status(other), "peer_verify_failures");
    let mut c = site.client(other, "c2");
    c.timeout = Duration::from_secs(150);
    c.install(&["lml-c"]).assert_success();
    assert_installed(&c, &pkg);
    let st = site.status(other);
    assert!(num(&st, "peer_verify_failures") > before, "{st}");
    let blobs = site.blobs_sized(other, &pkg);
    assert!(!blobs.is_empty(), "node {} stored the package", other + 1);
    for f in blobs {
        assert_eq!(
            sha256_hex(&fs::read(&f).unwrap()),
            pkg.sha256_hex,
            "node {} stored corrupt bytes in {}",
            other + 1,
            f.display()
        );
    }
}

/// Appends a DNS name (uncompressed labels) to `out`.
fn dns_name(out: &mut Vec<u8>, name: &str) {
    for label in name.trim_end_matches('.').split('.') {
        assert!(!label.is_empty() && label.len() < 64, "label {label:?}");
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// An mDNS goodbye (RFC 6762 §10.1) for service instance `fullname` of `service_type`: an
/// authoritative response whose one answer is the PTR `service_type → fullname` with TTL 0, as
/// a node's own mdns-sd sends when it unregisters.
fn mdns_goodbye(service_type: &str, fullname: &str) -> Vec<u8> {
    // id 0, QR + AA, no questions, one answer.
    let mut p = vec![0, 0, 0x84, 0x00, 0, 0, 0, 1, 0, 0, 0, 0];
    dns_name(&mut p, service_type);
    p.extend_from_slice(&12u16.to_be_bytes()); // PTR
    p.extend_from_slice(&1u16.to_be_bytes()); // IN (shared record: no cache-flush bit)
    p.extend_from_slice(&0u32.to_be_bytes()); // TTL 0: goodbye
    let mut rdata = Vec::new();
    dns_name(&mut rdata, fullname);
    p.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    p.extend_from_slice(&rdata);
    p
}

/// Site test 7: Anyone on the LAN can send an mDNS goodbye for a node. A node that hears one
/// for a peer it holds a live, admitted connection to keeps that peer (it says so in its log),
/// and keeps using it: a package only that peer holds still comes from it, not upstream.
#[test]
fn a_spoofed_mdns_goodbye_does_not_split_the_site() {
    let _wd = Watchdog::new(
        "a_spoofed_mdns_goodbye_does_not_split_the_site",
        Duration::from_secs(240),
    );
    // Node 1 (B) alone first, so that it, and only it, holds the package.
    let Some(mut site) = site(
        "a_spoofed_mdns_goodbye_does_not_split_the_site",
        1,
        lan_opts(vec![PkgSpec::new("lml-g", "1.0", MIB)]),
    ) else {
        return;
    };
    let pkg = site.repo.package("lml-g");
    let b = 0;
    assert_eq!(
        site.node(b).get("/test/repodata/repomd.xml").status,
        200,
        "{}",
        site.node(b).log_tail(20)
    );
    site.node(b).assert_serves(&pkg);
    assert_eq!(site.up.count(&pkg.file_name), 1);
    let a = site.add_node(|_| {});
    assert_site_formed(&site, &[a, b]);
    let id_b = node_id(&site.status(b));
    // A knows B through mDNS (the entry a goodbye is about), and is connected to it.
    let by_mdns = wait_until(DISCOVERY, Duration::from_millis(250), || {
        site.status(a)["peers"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|p| p["id"] == id_b.as_str() && p["via"] == "mdns" && p["healthy"] == true)
        })
    });
    assert!(
        by_mdns,
        "A has no healthy mDNS entry for B: {}",
        site.status(a)
    );
    assert_eq!(site.node(a).get("/test/repodata/repomd.xml").status, 200);

    // A third host on the LAN says goodbye in B's name: B's exact service instance.
    let spoofer = site.lan.add_host("spoof");
    let fullname = format!("{id_b}.{}", lanmirror::discovery::SERVICE_TYPE);
    let packet = mdns_goodbye(lanmirror::discovery::SERVICE_TYPE, &fullname);
    let kept = "mDNS says a peer left, but its connection is alive";
    let dropped = "peer left the site (mDNS)";
    let sent_at = Instant::now();
    let mut sent = 0;
    let seen = wait_until(Duration::from_secs(24), Duration::from_millis(500), || {
        let log = site.node(a).log();
        if log.contains(kept) || log.contains(dropped) {
            return true;
        }
        // A goodbye every 3 s from the spoofer (UDP may drop one) until A reacts. mdns-sd
        // drops the record 1 s after a goodbye (RFC 6762 §10.1), and each goodbye restarts that
        // second: sent every second, they would keep the record alive.
        if sent * 3 <= sent_at.elapsed().as_secs() {
            in_netns(&spoofer.ns, || {
                let sock = UdpSocket::bind("0.0.0.0:5353").expect("bind 5353 in the spoofer");
                sock.set_multicast_ttl_v4(255).unwrap();
                sock.send_to(
                    &packet,
                    SocketAddrV4::new(Ipv4Addr::new(224, 0, 0, 251), 5353),
                )
                .expect("send the goodbye");
            });
            sent += 1;
        }
        false
    });
    assert!(
        seen,
        "A logged no mDNS removal for B within 24 s of {sent} spoofed goodbyes\n{}",
        site.node(a).log_tail(40)
    );
    let heard = sent_at.elapsed();
    let log = site.node(a).log();
    assert!(
        log.contains(kept) && !log.contains(dropped),
        "A dropped B on a spoofed goodbye\n{}",
        site.node(a).log_tail(40)
    );
    eprintln!("A heard the spoofed goodbye after {heard:?} ({sent} sent) and kept B");

    // B stays a healthy peer of A, seen every 250 ms for 6 s.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(6) {
        let st = site.status(a);
        assert!(
            healthy_peers(&st).contains(&id_b),
            "B fell out of A's site {:?} after the spoofed goodbye: {st}\n{}",
            watch.elapsed(),
            site.node(a).log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // And A still gets from B what only B holds.
    assert!(!site.holds(a, &pkg), "A must not hold the package yet");
    let before = num(&site.status(a), "from_peers");
    site.node(a).assert_serves(&pkg);
    let st = site.status(a);
    assert!(num(&st, "from_peers") > before, "{st}");
    assert_eq!(
        site.up.count(&pkg.file_name),
        1,
        "A went upstream for a package B holds: {}",
        upstream_log(&site.up)
    );
    assert!(healthy_peers(&site.status(a)).contains(&id_b));
}
