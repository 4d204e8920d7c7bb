//! A real dnf client against a real node against a real (test) upstream: the whole path a site
//! uses, with repositories built by rpmbuild and createrepo_c.

mod common;

use std::time::Duration;

use common::*;

/// Cold install through the node; a second client installs with zero upstream package
/// requests; with upstream down, a fresh client still installs from what is stored.
#[test]
fn cold_warm_and_offline_installs() {
    let dir = temp();
    let repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[
            PkgSpec::new("lm-base", "1.0", 1 << 20),
            PkgSpec::new("lm-app", "1.0", 2 << 20).requires("lm-base"),
            PkgSpec::new("lm-extra", "1.0", 300_000),
        ],
    );
    let up = Upstream::start(repo.dir());
    let node = Node::start(NodeOpts::new(&up.url()));
    let baseurl = node.repo_url("test");

    // Cold.
    let c1 = Dnf::new(&dir.path().join("c1"), &baseurl);
    c1.install(&["lm-app"]).assert_success();
    assert!(c1.is_installed("lm-app") && c1.is_installed("lm-base"));
    assert_eq!(c1.payload_size("lm-app"), Some(2 << 20));
    assert_eq!(
        up.count(".rpm"),
        2,
        "each package once: {:?}",
        up.requests()
    );
    assert_eq!(up.count("lm-app-1.0-1.noarch.rpm"), 1);

    // Warm: a fresh client, zero package requests upstream.
    up.clear_log();
    let c2 = Dnf::new(&dir.path().join("c2"), &baseurl);
    c2.install(&["lm-app"]).assert_success();
    assert_eq!(c2.payload_size("lm-base"), Some(1 << 20));
    assert_eq!(
        up.count(".rpm"),
        0,
        "warm install went upstream: {:?}",
        up.requests()
    );
    let st = node.status_json();
    assert!(st["hits"].as_u64().unwrap() >= 4, "{st}");

    // Upstream down, metadata older than the freshness window: a fresh client still works.
    up.set_down(true);
    std::thread::sleep(Duration::from_millis(2500));
    let c3 = Dnf::new(&dir.path().join("c3"), &baseurl);
    c3.install(&["lm-app"]).assert_success();
    assert!(c3.is_installed("lm-base"));
    let st = node.status_json();
    assert_eq!(st["repos"][0]["upstream_offline"], true, "{st}");
    assert_eq!(st["repos"][0]["snapshots"][0]["stale"], true, "{st}");
    assert!(st["stale_metadata_served"].as_u64().unwrap() >= 1, "{st}");
    // What was never fetched cannot be installed, and says so; the node stays up.
    let out = c3.install(&["lm-extra"]);
    assert!(!out.success, "lm-extra cannot come from a down upstream");
    assert_eq!(node.get("/api/status").status, 200);
    let log = node.log();
    assert_eq!(
        log.matches("upstream unreachable: serving what is stored")
            .count(),
        1,
        "offline is logged once per repo, not per request:\n{log}"
    );
}

/// Several clients at once, all cold: exactly one upstream download per package, one
/// repomd.xml and one primary.
#[test]
fn simultaneous_cold_clients_share_one_download_per_package() {
    let dir = temp();
    let specs = [
        PkgSpec::new("lm-one", "1.0", 2 << 20),
        PkgSpec::new("lm-two", "1.0", 2 << 20),
        PkgSpec::new("lm-three", "1.0", 1 << 20),
    ];
    let repo = RpmRepo::create(&dir.path().join("mirror"), &specs);
    let up = Upstream::start(repo.dir());
    // Slow enough that the clients' requests overlap with the transfers.
    up.throttle(Some(6 << 20));
    let node = Node::start(NodeOpts::new(&up.url()));
    let baseurl = node.repo_url("test");
    let clients: Vec<Dnf> = (0..4)
        .map(|i| Dnf::new(&dir.path().join(format!("c{i}")), &baseurl))
        .collect();
    let outs: Vec<DnfOutput> = std::thread::scope(|s| {
        let hs: Vec<_> = clients
            .iter()
            .map(|c| s.spawn(|| c.install(&["lm-one", "lm-two", "lm-three"])))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (o, c) in outs.iter().zip(&clients) {
        o.assert_success();
        assert_eq!(c.payload_size("lm-two"), Some(2 << 20));
    }
    for s in &specs {
        assert_eq!(
            up.count(&s.file_name()),
            1,
            "{}: {:?}",
            s.name,
            up.requests()
        );
    }
    // The clients really overlapped: later ones joined transfers in flight.
    let st = node.status_json();
    assert!(st["joined_transfers"].as_u64().unwrap() >= 3, "{st}");
    let repomd_downloads = up
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/repomd.xml") && r.status == 200)
        .count();
    assert_eq!(repomd_downloads, 1, "{:?}", up.requests());
    assert_eq!(up.count("-primary.xml"), 1, "{:?}", up.requests());
}

/// Upstream publishes new metadata (and deletes the old files, as createrepo_c does): the node
/// picks it up within the freshness window, dnf sees no checksum errors, and the old snapshot's
/// files stay servable for clients that still hold the old repomd.xml.
#[test]
fn repomd_change_is_picked_up_within_the_freshness_window() {
    let dir = temp();
    let mut repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[PkgSpec::new("lm-tool", "1.0", 200_000)],
    );
    let up = Upstream::start(repo.dir());
    let node = Node::start(NodeOpts::new(&up.url()));
    let c = Dnf::new(&dir.path().join("c"), &node.repo_url("test"));
    c.install(&["lm-tool"]).assert_success();
    assert!(c.installed_nevra("lm-tool").unwrap().contains("1.0-1"));
    let old_repomd = node.get("/test/repodata/repomd.xml");
    assert_eq!(old_repomd.status, 200);
    let old_primary = primary_href(&old_repomd.text());

    repo.add(&PkgSpec::new("lm-tool", "2.0", 200_000));
    assert!(
        !repo.dir().join(&old_primary).exists(),
        "createrepo_c --update deletes old metadata"
    );
    // Inside the window the node keeps serving the snapshot it has.
    assert_eq!(node.get("/test/repodata/repomd.xml").body, old_repomd.body);
    std::thread::sleep(Duration::from_millis(2200)); // freshness_secs = 2
    let out = c.upgrade();
    out.assert_success();
    let all = out.combined();
    assert!(
        !all.contains("checksum doesn't match") && !all.contains("Cannot download"),
        "{all}"
    );
    assert!(c.installed_nevra("lm-tool").unwrap().contains("2.0-1"));
    let new_repomd = node.get("/test/repodata/repomd.xml");
    assert_ne!(new_repomd.body, old_repomd.body);
    assert!(node.log().contains("new metadata snapshot in service"));
    // A client that fetched the old repomd.xml a moment ago can still get what it names.
    let r = node.get(&format!("/test/{old_primary}"));
    assert_eq!(r.status, 200, "old snapshot file gone: {}", r.text());
}

fn primary_href(repomd: &str) -> String {
    let at = repomd.find("-primary.xml").expect("primary in repomd");
    let start = repomd[..at].rfind("href=\"").expect("href") + 6;
    let end = at + repomd[at..].find('"').expect("quote");
    repomd[start..end].to_string()
}

/// Files of replaced snapshots are dropped once the retention window has passed, not before.
#[test]
fn old_snapshot_files_expire_after_the_retention_window() {
    let dir = temp();
    let mut repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[PkgSpec::new("lm-ret", "1.0", 50_000)],
    );
    let up = Upstream::start(repo.dir());
    let node = Node::start(NodeOpts {
        freshness_secs: 1,
        retention_secs: Some(3),
        ..NodeOpts::new(&up.url())
    });
    let first = primary_href(&node.get("/test/repodata/repomd.xml").text());
    repo.add(&PkgSpec::new("lm-ret", "2.0", 50_000));
    std::thread::sleep(Duration::from_millis(1100));
    let second = primary_href(&node.get("/test/repodata/repomd.xml").text());
    assert_ne!(first, second);
    assert_eq!(
        node.get(&format!("/test/{first}")).status,
        200,
        "kept within retention"
    );
    std::thread::sleep(Duration::from_millis(3100));
    repo.add(&PkgSpec::new("lm-ret", "3.0", 50_000));
    let third = primary_href(&node.get("/test/repodata/repomd.xml").text());
    assert_ne!(second, third);
    // `first` was replaced more than 3 s ago: dropped, and upstream deleted it long ago.
    assert_eq!(node.get(&format!("/test/{first}")).status, 404);
    // `second` was replaced just now: still served although upstream deleted it.
    assert_eq!(node.get(&format!("/test/{second}")).status, 200);
}
