//! Prefetch on real nodes: repositories built with rpmbuild + createrepo_c carrying an
//! updateinfo.xml (modifyrepo_c), a real (local) upstream, real node processes.
//!
//! - After new metadata (found by the node's own scheduled check, no client asking), the
//!   security update of a package the site used is fetched before a bugfix, and nothing is
//!   fetched for a package nobody used; `/api/status` lists the advisory with its CVEs and
//!   says its files are ready.
//! - Background work stays outside the hours it is not given (the node's clock is set with
//!   `TZ`), and runs once they come.
//! - A dnf install during a background prefetch gets the link first: its time stays within
//!   20% of the same install on an idle link; a client joining a prefetch promotes it.
//! - `mirror = true` on a site of three: every file is taken from upstream once.
//! - A monthly budget stops background work when spent; client downloads go on.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn status(node: &Node) -> serde_json::Value {
    node.status_json()
}

fn prefetch(node: &Node) -> serde_json::Value {
    status(node)["prefetch"].clone()
}

/// When upstream first saw a GET of `rel_path`.
fn first_get(up: &Upstream, rel_path: &str) -> Option<Instant> {
    up.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(rel_path))
        .map(|r| r.at)
        .min()
}

#[test]
fn security_fix_of_a_used_package_comes_first_and_unused_packages_are_left() {
    let site = Site::with(
        &[
            PkgSpec::new("lp-a", "1.0", 64 << 10),
            PkgSpec::new("lp-b", "1.0", 64 << 10),
            PkgSpec::new("lp-c", "1.0", 64 << 10),
        ],
        |o| {
            // the node looks for new metadata by itself every second (any hour)
            o.scheduled_check_secs = 1;
            o.freshness_secs = 1;
        },
    );
    let Site {
        mut repo,
        up,
        node,
        dir: _dir,
    } = site;
    // the site's clients use lp-a and lp-b; nobody uses lp-c
    for name in ["lp-a", "lp-b"] {
        let p = repo.package(name);
        node.assert_serves(&p);
    }
    // upstream publishes updates of all three, with advisories: a Critical fix of the unused
    // lp-c, an Important fix of lp-b, a bugfix of lp-a (by name, lp-a would come first). The
    // mirror is down meanwhile, so the node's checks see only the finished state.
    up.set_down(true);
    let a11 = repo.add(&PkgSpec::new("lp-a", "1.1", 64 << 10));
    let b11 = repo.add(&PkgSpec::new("lp-b", "1.1", 64 << 10));
    let c11 = repo.add(&PkgSpec::new("lp-c", "1.1", 64 << 10));
    repo.set_updateinfo(&[
        AdvisorySpec::bugfix("LMBA-1", std::slice::from_ref(&a11)),
        AdvisorySpec::security("LMSA-2", "Important", std::slice::from_ref(&b11))
            .cve("CVE-2026-1111"),
        AdvisorySpec::security("LMSA-3", "Critical", std::slice::from_ref(&c11))
            .cve("CVE-2026-3333"),
    ]);
    up.clear_log();
    up.set_down(false);

    // no client asks: the node's own check finds the new metadata and prefetches
    let done = wait_until(Duration::from_secs(40), Duration::from_millis(200), || {
        prefetch(&node)["done"].as_u64() == Some(2)
    });
    let st = status(&node);
    assert!(done, "prefetch: {}\n{}", st["prefetch"], node.log_tail(40));
    assert_eq!(up.count(&a11.rel_path), 1, "lp-a 1.1 fetched once");
    assert_eq!(up.count(&b11.rel_path), 1, "lp-b 1.1 fetched once");
    let (ta, tb) = (
        first_get(&up, &a11.rel_path).unwrap(),
        first_get(&up, &b11.rel_path).unwrap(),
    );
    assert!(
        tb < ta,
        "the security fix (lp-b) must be fetched before the bugfix (lp-a)"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        up.count(&c11.rel_path),
        0,
        "nobody used lp-c: not prefetched"
    );
    let pf = &status(&node)["prefetch"];
    assert_eq!(pf["planned"], 2, "{pf}");
    assert_eq!(pf["waiting"], 0, "{pf}");
    assert_eq!(pf["bytes_done"].as_u64(), Some(a11.size + b11.size), "{pf}");

    // the advisory that affects the site, as data
    let adv = status(&node)["advisories"].clone();
    let list = adv.as_array().expect("advisories is a list");
    assert_eq!(
        list.len(),
        1,
        "only lp-b's advisory affects the site: {adv}"
    );
    let a = &list[0];
    assert_eq!(a["id"], "LMSA-2");
    assert_eq!(a["severity"], "important");
    assert_eq!(a["cves"], serde_json::json!(["CVE-2026-1111"]));
    assert_eq!(a["ready"], true, "{a}");
    assert_eq!(a["repo"], "test");
    assert_eq!(a["packages"][0]["name"], "lp-b");
    assert_eq!(a["packages"][0]["held"], true);

    // the client's update is then a hit
    let before = up.count(&a11.rel_path);
    node.assert_serves(&a11);
    assert_eq!(up.count(&a11.rel_path), before, "served from the store");
}

/// `HH:MM` of the current UTC time plus `mins` minutes.
fn utc_hhmm(mins: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let m = (now / 60 + mins).rem_euclid(24 * 60);
    format!("{:02}:{:02}", m / 60, m % 60)
}

#[test]
fn background_work_waits_for_its_hours() {
    // The node's clock is UTC (TZ), and its window opens in two hours.
    let closed = format!(
        "[uplink]\nbackground_hours = [\"{}-{}\"]\n",
        utc_hhmm(120),
        utc_hhmm(180)
    );
    let site = Site::with(&[PkgSpec::new("lw-a", "1.0", 64 << 10)], |o| {
        o.env.push(("TZ".into(), "UTC".into()));
        o.extra_toml = closed.clone();
    });
    let Site {
        mut repo,
        up,
        mut node,
        dir: _dir,
    } = site;
    node.assert_serves(&repo.package("lw-a"));
    let a11 = repo.add(&PkgSpec::new("lw-a", "1.1", 64 << 10));
    repo.set_updateinfo(&[AdvisorySpec::security(
        "LMSA-9",
        "Critical",
        std::slice::from_ref(&a11),
    )]);
    // a client asks for the new metadata (the node's own checks wait for the window too)
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(node.get("/test/repodata/repomd.xml").status, 200);
    let planned = wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
        prefetch(&node)["planned"].as_u64() == Some(1)
    });
    assert!(planned, "{}", prefetch(&node));
    std::thread::sleep(Duration::from_secs(4));
    let st = status(&node);
    assert_eq!(
        st["prefetch"]["held"], "outside_window",
        "{}",
        st["prefetch"]
    );
    assert_eq!(st["prefetch"]["done"], 0);
    assert_eq!(st["uplink"]["background"]["allowed"], false);
    assert_eq!(
        up.count(&a11.rel_path),
        0,
        "nothing fetched outside the window"
    );
    // the advisory is known, its fix not ready yet
    assert_eq!(st["advisories"][0]["id"], "LMSA-9");
    assert_eq!(st["advisories"][0]["ready"], false);

    // the clock moves into the window (here: the window moves to the clock, and the node
    // restarts): the fix comes
    node.set_extra_toml(&format!(
        "[uplink]\nbackground_hours = [\"{}-{}\"]\n",
        utc_hhmm(-60),
        utc_hhmm(60)
    ));
    node.restart();
    let done = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        prefetch(&node)["done"].as_u64() == Some(1)
    });
    assert!(done, "{}\n{}", prefetch(&node), node.log_tail(30));
    assert_eq!(up.count(&a11.rel_path), 1);
    assert_eq!(status(&node)["advisories"][0]["ready"], true);
}

const CAP: &str = "8 Mbit/s";

#[test]
fn a_client_download_goes_first_during_a_prefetch() {
    let dir = temp();
    // `bulk`: a repo the site mirrors whole (background work); `test`: what clients ask for
    let bulk_specs: Vec<PkgSpec> = ["lb-0", "lb-1", "lb-2", "lb-3"]
        .into_iter()
        .map(|n| PkgSpec::new(n, "1.0", 3 << 20))
        .collect();
    let bulk = RpmRepo::create(&dir.path().join("bulk"), &bulk_specs);
    let bulk_up = Upstream::start(bulk.dir());
    let site = Site::with(
        &[
            PkgSpec::new("lf-1", "1.0", 4 << 20),
            PkgSpec::new("lf-2", "1.0", 4 << 20),
        ],
        |o| {
            o.extra_toml = format!(
                "[uplink]\nmax_rate = \"{CAP}\"\n\n[[repo]]\nname = \"bulk\"\nurls = [\"{}\"]\nmirror = true\n",
                bulk_up.url()
            );
        },
    );
    // an idle link: a dnf install
    let t = Instant::now();
    site.client("idle").install(&["lf-1"]).assert_success();
    let idle = t.elapsed().as_secs_f64();

    // the mirror's metadata arrives: its 12 MiB are background work from now on
    assert_eq!(site.node.get("/bulk/repodata/repomd.xml").status, 200);
    let busy = wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
        let st = status(&site.node);
        st["uplink"]["transfers"]["background"].as_u64() == Some(1)
            && st["uplink"]["rate"]["background"].as_u64() > Some(0)
    });
    assert!(busy, "{}", status(&site.node)["uplink"]);
    // the same install during the prefetch
    let t = Instant::now();
    site.client("busy").install(&["lf-2"]).assert_success();
    let during = t.elapsed().as_secs_f64();
    eprintln!(
        "dnf install of a 4 MiB package under a {CAP} cap: idle {idle:.2} s, during a prefetch {during:.2} s"
    );
    assert!(
        during <= idle * 1.2,
        "during a prefetch the install took {during:.2} s, on an idle link {idle:.2} s"
    );
    assert_eq!(
        status(&site.node)["uplink"]["transfers"]["background"].as_u64(),
        Some(1),
        "the prefetch went on (paused, not stopped) during the install"
    );

    // a client asks for the file being prefetched: it joins that transfer, which goes first
    let running = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        prefetch(&site.node)["running"].is_string()
    });
    assert!(running, "{}", prefetch(&site.node));
    let path = prefetch(&site.node)["running"]
        .as_str()
        .unwrap()
        .to_string();
    let name = path.rsplit('/').next().unwrap().to_string();
    let pkg = bulk
        .packages()
        .into_iter()
        .find(|p| p.file_name == name)
        .unwrap();
    let r = site.node.get(&format!("/{path}"));
    assert_eq!(r.status, 200);
    assert_eq!(sha256_hex(&r.body), pkg.sha256_hex);
    assert!(
        site.node
            .log()
            .contains("a client asked for a file being prefetched"),
        "{}",
        site.node.log_tail(20)
    );
    // and the whole mirror arrives, each file taken once
    let all = wait_until(Duration::from_secs(60), Duration::from_millis(250), || {
        prefetch(&site.node)["done"].as_u64() == Some(4)
    });
    assert!(all, "{}", prefetch(&site.node));
    for p in bulk.packages() {
        assert_eq!(bulk_up.count(&p.rel_path), 1, "{}", p.file_name);
    }
}

#[test]
fn a_mirrored_repo_is_taken_from_upstream_once_per_site() {
    let dir = temp();
    let specs: Vec<PkgSpec> = (0..8)
        .map(|i| {
            PkgSpec::new(
                [
                    "lm-0", "lm-1", "lm-2", "lm-3", "lm-4", "lm-5", "lm-6", "lm-7",
                ][i],
                "1.0",
                128 << 10,
            )
        })
        .collect();
    let repo = RpmRepo::create(&dir.path().join("mirror"), &specs);
    let up = Upstream::start(repo.dir());
    let nodes = static_site(3, |_| {
        let mut o = NodeOpts::new(&up.url());
        o.repos.clear();
        o.extra_toml = format!(
            "[[repo]]\nname = \"test\"\nurls = [\"{}\"]\nmirror = true\n",
            up.url()
        );
        o
    });
    for n in &nodes {
        assert_eq!(n.get("/test/repodata/repomd.xml").status, 200);
    }
    let done = wait_until(Duration::from_secs(40), Duration::from_millis(200), || {
        nodes
            .iter()
            .map(|n| n.status_json()["prefetch"]["done"].as_u64().unwrap_or(0))
            .sum::<u64>()
            == 8
    });
    let planned: Vec<u64> = nodes
        .iter()
        .map(|n| n.status_json()["prefetch"]["planned"].as_u64().unwrap_or(0))
        .collect();
    assert!(done, "planned per node {planned:?}");
    assert_eq!(
        planned.iter().sum::<u64>(),
        8,
        "each file planned by one node: {planned:?}"
    );
    for p in repo.packages() {
        assert_eq!(
            up.count(&p.rel_path),
            1,
            "{} taken once for the site",
            p.file_name
        );
    }
    // and every node serves every file (from the site), without asking upstream again
    for n in &nodes {
        for p in repo.packages() {
            n.assert_serves(&p);
        }
    }
    for p in repo.packages() {
        assert_eq!(up.count(&p.rel_path), 1, "{}", p.file_name);
    }
}

#[test]
fn a_spent_budget_stops_background_work_but_not_clients() {
    let dir = temp();
    let bulk_specs: Vec<PkgSpec> = ["ly-0", "ly-1", "ly-2", "ly-3", "ly-4", "ly-5"]
        .into_iter()
        .map(|n| PkgSpec::new(n, "1.0", 1 << 20))
        .collect();
    let bulk = RpmRepo::create(&dir.path().join("bulk"), &bulk_specs);
    let bulk_up = Upstream::start(bulk.dir());
    let site = Site::with(&[PkgSpec::new("lc-1", "1.0", 1 << 20)], |o| {
        o.extra_toml = format!(
            "[uplink]\nmonthly_budget = \"3 MiB\"\n\n[[repo]]\nname = \"bulk\"\nurls = [\"{}\"]\nmirror = true\n",
            bulk_up.url()
        );
    });
    assert_eq!(site.node.get("/bulk/repodata/repomd.xml").status, 200);
    let held = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        prefetch(&site.node)["held"] == "budget_spent"
    });
    let st = status(&site.node);
    assert!(held, "{}\n{}", st["prefetch"], st["uplink"]);
    assert_eq!(st["uplink"]["budget"]["spent"], true);
    let done = st["prefetch"]["done"].as_u64().unwrap();
    assert!((1..6).contains(&done), "{}", st["prefetch"]);
    std::thread::sleep(Duration::from_secs(3));
    let taken: usize = bulk
        .packages()
        .iter()
        .map(|p| bulk_up.count(&p.rel_path))
        .sum();
    assert!(
        taken as u64 <= done + 1,
        "background work stopped: {taken} files asked, {done} done"
    );
    assert_eq!(prefetch(&site.node)["done"].as_u64().unwrap(), done);
    // a client still gets its download
    site.node.assert_serves(&site.repo.package("lc-1"));
}

/// A client at node A asks for a file A is prefetching through the site's downloader B: A asks
/// B again as interactive, so B's transfer goes first too (B says so), and the file still
/// crosses the uplink once.
#[test]
fn a_client_joining_a_prefetch_promotes_it_at_the_sites_downloader_too() {
    let dir = temp();
    let names: Vec<String> = (0..8).map(|i| format!("lq-{i}")).collect();
    let specs: Vec<PkgSpec> = names
        .iter()
        .map(|n| PkgSpec::new(n, "1.0", 16 << 10))
        .collect();
    let mut repo = RpmRepo::create(&dir.path().join("mirror"), &specs);
    let up = Upstream::start(repo.dir());
    let nodes = static_site(2, |i| {
        let mut o = NodeOpts::new(&up.url());
        o.extra_toml = format!("[uplink]\nmax_rate = \"{CAP}\"\n");
        // only A looks for new metadata by itself; B downloads what A asks of it
        o.scheduled_check_secs = if i == 0 { 1 } else { 0 };
        o.freshness_secs = 1;
        o
    });
    let (a, b) = (&nodes[0], &nodes[1]);
    for n in &nodes {
        assert_eq!(n.get("/test/repodata/repomd.xml").status, 200);
    }
    for p in repo.packages() {
        a.assert_serves(&p);
    }
    up.set_down(true);
    let new: Vec<BuiltPkg> = names
        .iter()
        .map(|n| repo.add(&PkgSpec::new(n, "1.1", 2 << 20)))
        .collect();
    up.clear_log();
    up.set_down(false);

    let ids: Vec<lanmirror::peer::NodeId> = nodes
        .iter()
        .map(|n| {
            lanmirror::peer::NodeId::parse(n.status_json()["node_id"].as_str().unwrap()).unwrap()
        })
        .collect();
    let owner = |p: &BuiltPkg| {
        lanmirror::peer::rendezvous(&format!("test/{}", p.rel_path), ids.iter().copied()).unwrap()
    };
    // wait until A prefetches a file whose downloader is B
    let mut target = None;
    let found = wait_until(Duration::from_secs(60), Duration::from_millis(20), || {
        let running = prefetch(a)["running"].as_str().map(String::from);
        target = running.and_then(|r| {
            new.iter()
                .find(|p| r == format!("test/{}", p.rel_path) && owner(p) == ids[1])
                .cloned()
        });
        target.is_some()
    });
    assert!(found, "A never prefetched a file of B's: {}", prefetch(a));
    let p = target.unwrap();
    let r = a.get(&format!("/test/{}", p.rel_path));
    assert_eq!(r.status, 200);
    assert_eq!(sha256_hex(&r.body), p.sha256_hex);
    let promoted_at_b = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        b.log()
            .contains("a client asked for a file being prefetched")
    });
    assert!(
        promoted_at_b,
        "B never heard that a client waits:\n{}",
        b.log_tail(30)
    );
    assert!(
        a.log()
            .contains("a client asked for a file being prefetched")
    );
    assert_eq!(
        up.count(&p.rel_path),
        1,
        "{} crossed the uplink once",
        p.file_name
    );
}
