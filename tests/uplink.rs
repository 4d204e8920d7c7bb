//! The uplink cap, with real nodes and a real (local) upstream: `[uplink] max_rate` holds for
//! one node alone and for a site of three downloading at once, and `/api/status` shows the
//! scheduler's view.

mod common;

use std::time::Instant;

use common::*;

const CAP: &str = "8 Mbit/s";
/// 8 Mbit/s in bytes per second.
const CAP_BYTES: f64 = 1_000_000.0;

fn capped(o: &mut NodeOpts) {
    o.extra_toml = format!("[uplink]\nmax_rate = \"{CAP}\"\n");
}

/// One node alone: a 3 MiB package takes at least as long as the cap allows (within 10%), and
/// the node's status says it had the whole cap.
#[test]
fn one_node_stays_under_the_cap() {
    let spec = PkgSpec::new("lu-one", "1.0", 3 << 20);
    let site = Site::with(std::slice::from_ref(&spec), capped);
    let p = site.repo.package("lu-one");
    assert_eq!(site.node.get("/test/repodata/repomd.xml").status, 200);
    let started = Instant::now();
    site.node.assert_serves(&p);
    let secs = started.elapsed().as_secs_f64();
    let rate = p.size as f64 / secs;
    eprintln!(
        "one node: {} bytes in {secs:.2} s = {rate:.0} B/s (cap {CAP_BYTES})",
        p.size
    );
    assert!(
        rate <= CAP_BYTES * 1.1,
        "{rate:.0} B/s is over the cap of {CAP_BYTES} B/s"
    );
    let st = site.node.status_json();
    let u = &st["uplink"];
    assert_eq!(u["max_rate"].as_u64(), Some(CAP_BYTES as u64), "{u}");
    assert!(
        u["share"]
            .as_u64()
            .is_some_and(|s| s as f64 >= CAP_BYTES * 0.99),
        "alone: the whole cap: {u}"
    );
}

/// Three nodes of one site download three different packages from upstream at the same moment:
/// their sum stays under the site's cap (within 10%), because they tell each other their demand.
#[test]
fn three_nodes_share_the_cap() {
    let dir = temp();
    let specs: Vec<PkgSpec> = ["lu-s0", "lu-s1", "lu-s2"]
        .into_iter()
        .map(|n| PkgSpec::new(n, "1.0", 2 << 20))
        .collect();
    let repo = RpmRepo::create(&dir.path().join("mirror"), &specs);
    let up = Upstream::start(repo.dir());
    let nodes = static_site(3, |_| {
        let mut o = NodeOpts::new(&up.url());
        capped(&mut o);
        o
    });
    for n in &nodes {
        assert_eq!(n.get("/test/repodata/repomd.xml").status, 200);
    }
    up.clear_log();
    let total: u64 = specs.iter().map(|s| repo.package(s.name).size).sum();
    let started = Instant::now();
    std::thread::scope(|s| {
        for (i, n) in nodes.iter().enumerate() {
            let p = repo.package(specs[i].name);
            s.spawn(move || n.assert_serves(&p));
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let rate = total as f64 / secs;
    eprintln!("three nodes: {total} bytes in {secs:.2} s = {rate:.0} B/s (cap {CAP_BYTES})");
    for s in &specs {
        assert_eq!(up.count(&s.file_name()), 1, "{:?}", up.requests());
    }
    assert!(
        rate <= CAP_BYTES * 1.1,
        "the site took {rate:.0} B/s, over its cap of {CAP_BYTES} B/s"
    );
    // They heard each other.
    let u = nodes[0].status_json()["uplink"].clone();
    assert_eq!(u["peers_heard"], 2, "{u}");
}
