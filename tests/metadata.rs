//! Metadata freshness and snapshots: one upstream check per window however many clients ask,
//! every referenced file stored before a snapshot is served, in-place files revalidated with
//! conditional requests.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn repomd_gets(up: &Upstream) -> usize {
    up.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/repomd.xml"))
        .count()
}

/// A burst of clients after the freshness window ran out: one upstream check.
#[test]
fn a_burst_of_clients_triggers_one_upstream_check() {
    let dir = temp();
    let repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[PkgSpec::new("lm-b", "1.0", 50_000)],
    );
    let up = Upstream::start(repo.dir());
    let node = Node::start(NodeOpts::new(&up.url()));
    assert_eq!(node.get("/test/repodata/repomd.xml").status, 200);
    assert_eq!(repomd_gets(&up), 1);
    // Inside the window: no upstream traffic at all.
    for _ in 0..10 {
        assert_eq!(node.get("/test/repodata/repomd.xml").status, 200);
    }
    assert_eq!(repomd_gets(&up), 1);
    std::thread::sleep(Duration::from_millis(2100));
    up.delay_headers("repomd.xml", Some(Duration::from_millis(300)));
    up.clear_log();
    let url = format!("{}/test/repodata/repomd.xml", node.url());
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..12)
            .map(|_| s.spawn(|| http_get(&url, &[]).status))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(repomd_gets(&up), 1, "{:?}", up.requests());
    let check = &up.requests()[0];
    assert!(
        check.if_none_match.is_some() || check.if_modified_since.is_some(),
        "the check is a conditional request: {check:?}"
    );
    assert_eq!(check.status, 304);
}

/// updateinfo, group (comps) and modules records are fetched and verified with the snapshot,
/// before any client asks for them.
#[test]
fn snapshot_holds_updateinfo_group_and_modules() {
    let dir = temp();
    let repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[PkgSpec::new("lm-u", "1.0", 50_000)],
    );
    let extra = dir.path().join("extra");
    std::fs::create_dir_all(&extra).unwrap();
    let files = [
        (
            "updateinfo.xml",
            "updateinfo",
            "<?xml version=\"1.0\"?>\n<updates><update from=\"t\" status=\"stable\" type=\"security\" version=\"1\"><id>LM-1</id><title>t</title><issued date=\"2026-01-01 00:00:00\"/><description>d</description><pkglist/></update></updates>\n",
        ),
        (
            "comps.xml",
            "group",
            "<?xml version=\"1.0\"?>\n<comps><group><id>lm</id><name>lm</name><description>d</description><packagelist><packagereq>lm-u</packagereq></packagelist></group></comps>\n",
        ),
        (
            "modules.yaml",
            "modules",
            "---\ndocument: modulemd-defaults\nversion: 1\ndata:\n  module: lm\n  stream: '1'\n...\n",
        ),
    ];
    for (name, kind, body) in files {
        let p = extra.join(name);
        std::fs::write(&p, body).unwrap();
        let st = Command::new("modifyrepo_c")
            .arg(format!("--mdtype={kind}"))
            .arg(&p)
            .arg(repo.dir().join("repodata"))
            .status()
            .unwrap();
        assert!(st.success(), "modifyrepo_c {name}");
    }
    let up = Upstream::start(repo.dir());
    let node = Node::start(NodeOpts::new(&up.url()));
    let r = node.get("/test/repodata/repomd.xml");
    assert_eq!(r.status, 200);
    for kind in ["updateinfo", "comps", "modules", "primary", "filelists"] {
        assert_eq!(
            up.count(kind),
            1,
            "{kind} fetched with the snapshot: {:?}",
            up.requests()
        );
    }
    up.set_down(true);
    // With upstream gone, a real client still gets everything repomd.xml names.
    let c = Dnf::new(&dir.path().join("c"), &node.repo_url("test"));
    let out = c.run(&["updateinfo", "list", "--all"]);
    out.assert_success();
    c.run(&["group", "list"]).assert_success();
}

/// `RPM-GPG-KEY*`, `.treeinfo` and such change in place: served from the store inside the
/// window, revalidated with a conditional request after it, replaced when upstream changed,
/// and served stale when upstream is down.
#[test]
fn in_place_files_are_revalidated() {
    let dir = temp();
    let root = dir.path().join("mirror");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("RPM-GPG-KEY-lm"), "key one\n").unwrap();
    let up = Upstream::start(&root);
    let node = Node::start(NodeOpts::new(&up.url()));
    assert_eq!(node.get("/test/RPM-GPG-KEY-lm").text(), "key one\n");
    assert_eq!(node.get("/test/RPM-GPG-KEY-lm").text(), "key one\n");
    assert_eq!(
        up.count("RPM-GPG-KEY"),
        1,
        "second read inside the window is a hit"
    );

    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(node.get("/test/RPM-GPG-KEY-lm").text(), "key one\n");
    let reqs = up.requests();
    let last = reqs.last().unwrap();
    assert!(
        last.if_none_match.is_some() || last.if_modified_since.is_some(),
        "{last:?}"
    );
    assert_eq!(last.status, 304);
    // The 304 confirmed the stored copy for another window: the next read is a hit.
    assert_eq!(node.get("/test/RPM-GPG-KEY-lm").text(), "key one\n");
    assert_eq!(up.count("RPM-GPG-KEY"), 2, "{:?}", up.requests());

    std::thread::sleep(Duration::from_millis(1100)); // a new mtime second for the validator
    std::fs::write(root.join("RPM-GPG-KEY-lm"), "key two, longer\n").unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(node.get("/test/RPM-GPG-KEY-lm").text(), "key two, longer\n");

    up.set_down(true);
    std::thread::sleep(Duration::from_millis(2100));
    let r = node.get("/test/RPM-GPG-KEY-lm");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "key two, longer\n");
}

/// The same package under two repos (like `/9/` and `/9.6/`): stored once, and the second path
/// is answered from the store through the checksum primary.xml names, without upstream.
#[test]
fn the_same_package_under_two_paths_is_one_blob() {
    let site = Site::with(&[PkgSpec::new("lm-dup", "1.0", 400_000)], |o| {
        let url = o.repos[0].urls[0].clone();
        o.repos.push(RepoCfg::new("alias", &[&url]));
    });
    let p = site.repo.package("lm-dup");
    assert_eq!(site.get_pkg("lm-dup").status, 200);
    assert_eq!(site.node.get("/alias/repodata/repomd.xml").status, 200);
    site.up.clear_log();
    let alias = format!("/alias/{}", p.rel_path);
    let r = site.node.get(&alias);
    assert_eq!(r.status, 200);
    assert_eq!(sha256_hex(&r.body), p.sha256_hex);
    assert_eq!(site.up.count(".rpm"), 0, "{:?}", site.up.requests());
    // Listed under the second path now: a plain hit, answered on the zero-copy path.
    let zero_copy = || {
        site.node.status_json()["zero_copy_responses"]
            .as_u64()
            .unwrap()
    };
    let before = zero_copy();
    let r = site.node.get(&alias);
    assert_eq!(sha256_hex(&r.body), p.sha256_hex);
    assert_eq!(zero_copy(), before + 1);
    let copies = site
        .node
        .blob_files()
        .iter()
        .filter(|b| std::fs::metadata(b).unwrap().len() == p.size)
        .count();
    assert_eq!(copies, 1);
}

/// Over a slow uplink new metadata takes long to arrive: clients are not kept waiting for it
/// (dnf gives up on a silent answer), they get the current snapshot, and the new one once
/// it is complete.
#[test]
fn a_slow_refresh_serves_the_current_snapshot_meanwhile() {
    let mut site = Site::with(&[PkgSpec::new("lm-slow", "1.0", 10_000)], |o| {
        o.read_timeout_secs = 30
    });
    let old = site.node.get("/test/repodata/repomd.xml").body;
    site.repo.add(&PkgSpec::new("lm-slow", "2.0", 10_000));
    std::thread::sleep(Duration::from_millis(2100));
    site.up
        .delay_headers("-primary.xml", Some(Duration::from_secs(8)));
    let r = site.node.get("/test/repodata/repomd.xml");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body, old,
        "the previous snapshot, not a half-fetched new one"
    );
    assert!(r.elapsed < Duration::from_secs(7), "waited {:?}", r.elapsed);
    let switched = wait_until(Duration::from_secs(20), Duration::from_millis(250), || {
        site.node.get("/test/repodata/repomd.xml").body != old
    });
    assert!(switched, "the refresh finished in the background");
    let _ = &mut site;
}

/// A package rebuilt upstream under the same file name: once the new metadata is in service,
/// the node serves the new bytes, not its stored old copy (which dnf would reject).
#[test]
fn a_package_rebuilt_under_the_same_name_is_fetched_anew() {
    let mut site = Site::new(&[PkgSpec::new("lm-re", "1.0", 100_000)]);
    let old = site.repo.package("lm-re");
    assert_eq!(sha256_hex(&site.get_pkg("lm-re").body), old.sha256_hex);
    let new = site.repo.add(&PkgSpec::new("lm-re", "1.0", 120_000));
    assert_eq!(new.file_name, old.file_name);
    assert_ne!(new.sha256_hex, old.sha256_hex);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(site.node.get("/test/repodata/repomd.xml").status, 200);
    let r = site.get_pkg("lm-re");
    assert_eq!(r.status, 200);
    assert_eq!(sha256_hex(&r.body), new.sha256_hex);
}

/// Repositories made with `--simple-md-filenames` change `repodata/primary.xml.gz` in place:
/// the node serves the primary that matches the repomd.xml it serves, however old.
#[test]
fn simple_named_metadata_follows_the_snapshot() {
    let mut site = Site::new(&[PkgSpec::new("lm-simple", "1.0", 10_000)]);
    let simple = |dir: &std::path::Path| {
        let st = Command::new("createrepo_c")
            .args(["--simple-md-filenames", "--no-database", "--update"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
    };
    simple(site.repo.dir());
    std::thread::sleep(Duration::from_millis(2100));
    let repomd1 = site.node.get("/test/repodata/repomd.xml").text();
    assert!(repomd1.contains("repodata/primary.xml.gz"), "{repomd1}");
    let primary1 = site.node.get("/test/repodata/primary.xml.gz").body;
    assert_eq!(
        primary1,
        std::fs::read(site.repo.dir().join("repodata/primary.xml.gz")).unwrap()
    );

    site.repo.add(&PkgSpec::new("lm-simple", "2.0", 10_000));
    simple(site.repo.dir());
    std::thread::sleep(Duration::from_millis(2100));
    // Asked before repomd.xml: still the primary of the snapshot in service.
    let r = site.node.get("/test/repodata/primary.xml.gz");
    assert_eq!(
        r.body, primary1,
        "primary.xml.gz must match the repomd.xml being served"
    );
    let repomd2 = site.node.get("/test/repodata/repomd.xml").text();
    assert_ne!(repomd1, repomd2);
    let primary2 = site.node.get("/test/repodata/primary.xml.gz").body;
    assert_ne!(primary2, primary1);
    assert_eq!(
        primary2,
        std::fs::read(site.repo.dir().join("repodata/primary.xml.gz")).unwrap()
    );
}

/// With no client asking, the node asks upstream for new metadata on its own every
/// `scheduled_check_secs` (inside `[uplink] background_hours`), so a new snapshot is in service
/// before anyone needs it. Outside the hours it does not.
#[test]
fn new_metadata_arrives_without_a_client_asking() {
    let dir = temp();
    let mut repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[PkgSpec::new("lm-sched", "1.0", 30_000)],
    );
    let up = Upstream::start(repo.dir());
    let mut o = NodeOpts::new(&up.url());
    o.scheduled_check_secs = 1;
    let node = Node::start(o);
    // A second node whose background hours never include now (local time is UTC here unless
    // TZ says otherwise; a one-minute window twelve hours away).
    let hour = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 3600
        + 12)
        % 24;
    let mut q = NodeOpts::new(&up.url());
    q.scheduled_check_secs = 1;
    q.extra_toml = format!("[uplink]\nbackground_hours = [\"{hour:02}:00-{hour:02}:01\"]\n");
    q.env.push(("TZ".into(), "UTC".into()));
    let quiet = Node::start(q);
    for n in [&node, &quiet] {
        assert_eq!(n.get("/test/repodata/repomd.xml").status, 200);
    }
    let revision = |n: &Node| n.status_json()["repos"][0]["snapshots"][0]["revision"].clone();
    let (before, quiet_before) = (revision(&node), revision(&quiet));
    std::thread::sleep(Duration::from_millis(1100));
    repo.add(&PkgSpec::new("lm-sched-new", "1.0", 30_000));
    let new = std::fs::read(repo.repomd_path()).unwrap();
    let arrived = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        revision(&node) != before
    });
    assert!(
        arrived,
        "no new snapshot without a client: {}\n{}",
        node.status_json(),
        node.log_tail(20)
    );
    assert_eq!(node.get("/test/repodata/repomd.xml").body, new);
    let st = node.status_json();
    assert_eq!(st["repos"][0]["snapshots"][0]["source"], "upstream", "{st}");
    assert_eq!(st["repos"][0]["snapshots"][0]["stale"], false, "{st}");
    // The package the new metadata names is served at once (its checksum is known).
    node.assert_serves(&repo.package("lm-sched-new"));
    assert_eq!(
        revision(&quiet),
        quiet_before,
        "checked outside its hours: {}",
        quiet.status_json()
    );
}
