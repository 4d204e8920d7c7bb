//! Clients of a site as its admin sets them up and watches them: the node's ready `.repo`
//! files added with Debian's `dnf config-manager --add-repo` and installed from; the one-command
//! `/setup/client.sh` run by `sh` on an installroot-like tree (stock repos disabled, the node's
//! added, then dnf installs through them, then `--undo`); hostile `Host` headers; the site's
//! `/mirrorlist/…`; a client that goes on installing from the next node when its own stops, on
//! a LAN of network namespaces (root only, skipped with a printed reason otherwise); and
//! `/metrics` moving with traffic (hits, a cold miss, a 404, a file from a peer).
//!
//! The upstream is laid out like AlmaLinux's and EPEL's mirrors (`alma/9/BaseOS/$basearch/os/`,
//! `epel/9/Everything/$basearch/`), each tree a real repository made by rpmbuild and
//! createrepo_c, so the `.repo` files are used exactly as a site's clients use them.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::netns;
use common::*;

/// dnf's `$basearch` on this machine (x86_64 and aarch64 are their own basearch).
const ARCH: &str = std::env::consts::ARCH;

/// Packages of the distribution-shaped upstream, by tree.
fn trees() -> Vec<(String, Vec<PkgSpec<'static>>)> {
    vec![
        (
            format!("alma/9/BaseOS/{ARCH}/os"),
            vec![PkgSpec::new("lm-base", "1.0", 200_000)],
        ),
        (
            format!("alma/9/AppStream/{ARCH}/os"),
            vec![PkgSpec::new("lm-app", "1.0", 300_000).requires("lm-base")],
        ),
        (
            format!("alma/9/extras/{ARCH}/os"),
            vec![PkgSpec::new("lm-extra", "1.0", 100_000)],
        ),
        (
            format!("alma/9/CRB/{ARCH}/os"),
            vec![PkgSpec::new("lm-crb", "1.0", 100_000)],
        ),
        (
            format!("epel/9/Everything/{ARCH}"),
            vec![PkgSpec::new("lm-epel", "1.0", 150_000).requires("lm-app")],
        ),
    ]
}

/// Builds the trees under `mirror` (served by an upstream whose root it is).
fn build_trees(mirror: &Path) -> Vec<RpmRepo> {
    trees()
        .into_iter()
        .map(|(t, pkgs)| RpmRepo::create(&mirror.join(t), &pkgs))
        .collect()
}

/// The node's repos for that upstream: `almalinux` and `epel`, as in the default config.
fn distro_repos(up_url: &str) -> Vec<RepoCfg> {
    vec![
        RepoCfg::new("almalinux", &[&format!("{up_url}alma/")]),
        RepoCfg::new("epel", &[&format!("{up_url}epel/")]),
    ]
}

/// A distribution-shaped mirror, its upstream and a node in front (repos `almalinux`, `epel`).
struct Distro {
    repos: Vec<RpmRepo>,
    up: Upstream,
    node: Node,
    dir: tempfile::TempDir,
}

impl Distro {
    fn start(tweak: impl FnOnce(&mut NodeOpts)) -> Distro {
        let dir = temp();
        let repos = build_trees(&dir.path().join("mirror"));
        let up = Upstream::start(&dir.path().join("mirror"));
        let mut o = NodeOpts {
            repos: distro_repos(&up.url()),
            ..NodeOpts::default()
        };
        tweak(&mut o);
        let node = Node::start(o);
        Distro {
            repos,
            up,
            node,
            dir,
        }
    }

    fn pkg(&self, name: &str) -> BuiltPkg {
        self.repos
            .iter()
            .find_map(|r| r.packages().into_iter().find(|p| p.name == name))
            .unwrap_or_else(|| panic!("no package {name}"))
    }

    /// A dnf client in `dir/<name>` that reads its repo files from `reposdir` (default: its own
    /// empty `yum.repos.d`).
    fn client(&self, name: &str, reposdir: Option<&Path>) -> Dnf {
        let home = self.dir.path().join(name);
        let rd = reposdir.map_or_else(|| home.join("yum.repos.d"), Path::to_path_buf);
        Dnf::new(&home, "http://unused.invalid/").with_reposdir(&rd)
    }
}

/// The body lines of a mirrorlist that are URLs.
fn mirror_urls(body: &str) -> Vec<String> {
    body.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// `dnf config-manager --add-repo` of the node's `.repo` files, then installs from every
/// enabled section and from a disabled one turned on, with nothing but those files.
#[test]
fn repo_files_added_with_dnf_config_manager_install() {
    let d = Distro::start(|_| {});
    let url = d.node.url();
    let c = d.client("c1", None);
    for f in ["almalinux-9", "epel-9"] {
        c.run(&[
            "config-manager",
            "--add-repo",
            &format!("{url}/setup/{f}.repo"),
        ])
        .assert_success();
        let saved = fs::read_to_string(c.reposdir().join(format!("{f}.repo")))
            .unwrap_or_else(|e| panic!("config-manager did not save {f}.repo: {e}"));
        assert!(saved.starts_with("# lanmirror:"), "{saved}");
    }
    let alma = fs::read_to_string(c.reposdir().join("almalinux-9.repo")).unwrap();
    // The node named itself as the client reached it (it has no peers: one URL); the stock
    // source is kept, commented, and so is the node's own mirrorlist.
    assert!(
        alma.contains(&format!(
            "\nbaseurl={url}/almalinux/$releasever/BaseOS/$basearch/os/\n\
             #mirrorlist={url}/mirrorlist/almalinux/$releasever/BaseOS/$basearch/os/\n"
        )),
        "{alma}"
    );
    assert!(
        alma.contains(
            "\n#mirrorlist=https://mirrors.almalinux.org/mirrorlist/$releasever/baseos\n"
        )
    );
    assert!(alma.contains("gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-AlmaLinux-9\n"));

    // BaseOS, AppStream, extras and EPEL are on, through the node only.
    c.install(&["lm-epel", "lm-extra"]).assert_success();
    for p in ["lm-epel", "lm-app", "lm-base", "lm-extra"] {
        assert_eq!(
            c.payload_size(p),
            Some(d.pkg(p).payload_bytes as u64),
            "{p} installed"
        );
    }
    // CRB is off, as on a stock system, until enabled by its id.
    assert!(
        !c.install(&["lm-crb"]).success,
        "lm-crb from a disabled repo"
    );
    c.run(&["--enablerepo=lanmirror-crb", "install", "lm-crb"])
        .assert_success();
    assert!(c.is_installed("lm-crb"));
    // Every package crossed the uplink once, fetched by the node.
    for p in ["lm-epel", "lm-app", "lm-base", "lm-extra", "lm-crb"] {
        assert_eq!(
            d.up.count(&format!("{p}-1.0-1.noarch.rpm")),
            1,
            "{p}: {:?}",
            d.up.requests()
        );
    }
}

/// Stock repo files as an AlmaLinux 9 system has them (reduced to what matters), every source
/// pointing at a closed port: any of them left enabled fails the install.
const STOCK: &[(&str, &str)] = &[
    (
        "almalinux-baseos.repo",
        "[baseos]\nname=AlmaLinux $releasever - BaseOS\nmirrorlist=http://127.0.0.1:9/mirrorlist/$releasever/baseos\nenabled=1\ngpgcheck=1\n\n[baseos-debuginfo]\nname=AlmaLinux $releasever - BaseOS - Debug\nmirrorlist=http://127.0.0.1:9/mirrorlist/$releasever/baseos-debug\nenabled=0\n",
    ),
    (
        "almalinux-appstream.repo",
        "[appstream]\nname=AlmaLinux $releasever - AppStream\nmirrorlist=http://127.0.0.1:9/mirrorlist/$releasever/appstream\nenabled = 1\n",
    ),
    // No enabled= line: on by default.
    (
        "almalinux-extras.repo",
        "[extras]\nname=AlmaLinux $releasever - Extras\nmirrorlist=http://127.0.0.1:9/mirrorlist/$releasever/extras\n",
    ),
    // The admin had turned CRB on: it stays on, through the node.
    (
        "almalinux-crb.repo",
        "[crb]\nname=AlmaLinux $releasever - CRB\nmirrorlist=http://127.0.0.1:9/mirrorlist/$releasever/crb\nenabled=True\n",
    ),
    (
        "almalinux-highavailability.repo",
        "[highavailability]\nname=AlmaLinux $releasever - HighAvailability\nmirrorlist=http://127.0.0.1:9/mirrorlist/$releasever/highavailability\nenabled=0\n",
    ),
    (
        "epel.repo",
        "[epel]\nname=Extra Packages for Enterprise Linux $releasever - $basearch\nmetalink=http://127.0.0.1:9/metalink?repo=epel-$releasever&arch=$basearch\nenabled=1\n\n[epel-debuginfo]\nname=EPEL debug\nmetalink=http://127.0.0.1:9/metalink?repo=epel-debug-$releasever\nenabled=0\n",
    ),
    (
        "other.repo",
        "[other]\nname=Something else\nbaseurl=http://127.0.0.1:9/other/\nenabled=0\n",
    ),
    // The admin's own file under the name the node's file takes: kept, and back on --undo.
    ("epel-9.repo", "# my own notes on EPEL\n"),
];

/// Runs `curl -fsS URL/setup/client.sh | sh -s -- ARGS` with `LANMIRROR_ROOT=root`.
fn run_client_sh(node_url: &str, root: &Path, args: &str) -> (bool, String) {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "curl -fsS {node_url}/setup/client.sh | sh -s -- {args}"
        ))
        .env("LANMIRROR_ROOT", root)
        .env("LC_ALL", "C");
    for v in ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"] {
        cmd.env_remove(v);
    }
    let out = common::node::run_with_timeout(cmd, Duration::from_secs(60));
    (out.success, format!("{}{}", out.stdout, out.stderr))
}

/// The files of a directory, by name.
fn files(dir: &Path) -> HashMap<String, String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

/// The `enabled=` line of section `id` in `text` (None: the section has none or is absent).
fn enabled_line(text: &str, id: &str) -> Option<String> {
    let start = text.find(&format!("[{id}]"))?;
    text[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .find(|l| l.replace(' ', "").starts_with("enabled="))
        .map(|l| l.replace(' ', ""))
}

/// `/setup/client.sh` on an AlmaLinux-9-like tree: the stock repos it replaces are disabled in
/// their own files (originals kept once), the node's files are added with CRB carried over,
/// dnf installs from every one of them; a second run changes nothing; `--undo` restores the
/// stock files byte for byte.
#[test]
fn client_sh_sets_up_a_tree_and_undoes_it() {
    let d = Distro::start(|_| {});
    let root = d.dir.path().join("root");
    let rd = root.join("etc/yum.repos.d");
    fs::create_dir_all(&rd).unwrap();
    fs::write(
        root.join("etc/os-release"),
        "NAME=\"AlmaLinux\"\nVERSION=\"9.6 (Sage Margay)\"\nID=\"almalinux\"\nVERSION_ID=\"9.6\"\n",
    )
    .unwrap();
    for (name, text) in STOCK {
        fs::write(rd.join(name), text).unwrap();
    }
    let stock = files(&rd);

    let (ok, out) = run_client_sh(&d.node.url(), &root, "");
    assert!(ok, "client.sh failed:\n{out}");
    let after = files(&rd);
    let alma = &after["almalinux-9.repo"];
    let epel = &after["epel-9.repo"];
    assert!(alma.starts_with("# lanmirror:") && epel.starts_with("# lanmirror:"));
    assert!(alma.contains(&format!("\nbaseurl={}/almalinux/", d.node.url())));
    // Stock repos the node replaces: off, in their own files; the rest untouched.
    for (file, id) in [
        ("almalinux-baseos.repo", "baseos"),
        ("almalinux-appstream.repo", "appstream"),
        ("almalinux-extras.repo", "extras"),
        ("almalinux-crb.repo", "crb"),
        ("epel.repo", "epel"),
    ] {
        assert_eq!(
            enabled_line(&after[file], id).as_deref(),
            Some("enabled=0"),
            "{file}:\n{}\n{out}",
            after[file]
        );
        assert_eq!(
            after[&format!("{file}.lanmirror-orig")],
            stock[file],
            "{file} kept"
        );
    }
    assert_eq!(after["epel-9.repo.lanmirror-orig"], stock["epel-9.repo"]);
    assert_eq!(
        after["almalinux-highavailability.repo"],
        stock["almalinux-highavailability.repo"]
    );
    assert_eq!(after["other.repo"], stock["other.repo"]);
    assert_eq!(
        enabled_line(&after["almalinux-baseos.repo"], "baseos-debuginfo").as_deref(),
        Some("enabled=0")
    );
    assert_eq!(
        enabled_line(&after["epel.repo"], "epel-debuginfo").as_deref(),
        Some("enabled=0")
    );
    // The node's sections: on where the stock ones were on (CRB included), else off.
    for (id, want) in [
        ("baseos", "enabled=1"),
        ("extras", "enabled=1"),
        ("crb", "enabled=1"),
        ("highavailability", "enabled=0"),
        ("sap", "enabled=0"),
    ] {
        assert_eq!(
            enabled_line(alma, &format!("lanmirror-{id}")).as_deref(),
            Some(want),
            "{id}"
        );
    }
    assert_eq!(
        enabled_line(epel, "lanmirror-epel").as_deref(),
        Some("enabled=1")
    );

    // Real dnf on that repo directory: the stock sources are a closed port, so this works only
    // if every one of them is off and the node's are on.
    let c = d.client("c1", Some(&rd));
    c.install(&["lm-epel", "lm-crb", "lm-extra"])
        .assert_success();
    for p in ["lm-epel", "lm-app", "lm-base", "lm-crb", "lm-extra"] {
        assert!(c.is_installed(p), "{p}");
    }

    // Again: nothing changes (the originals are not overwritten with disabled copies).
    let (ok, out2) = run_client_sh(&d.node.url(), &root, "");
    assert!(ok, "second run:\n{out2}");
    assert_eq!(files(&rd), after, "a second run changes nothing\n{out2}");

    // Undo: the stock files as they were, nothing of lanmirror's left.
    let (ok, out3) = run_client_sh(&d.node.url(), &root, "--undo");
    assert!(ok, "--undo:\n{out3}");
    assert_eq!(files(&rd), stock, "{out3}");

    // Refusals say why: another distribution, an unknown option.
    fs::write(
        root.join("etc/os-release"),
        "ID=\"rocky\"\nVERSION_ID=\"9.4\"\n",
    )
    .unwrap();
    let (ok, out4) = run_client_sh(&d.node.url(), &root, "");
    assert!(!ok && out4.contains("this system is 'rocky'"), "{out4}");
    let (ok, out5) = run_client_sh(&d.node.url(), &root, "--bogus");
    assert!(!ok && out5.contains("unknown option"), "{out5}");
    assert_eq!(files(&rd), stock, "refusals touch nothing");
}

/// A `Host` header that is not plainly `host[:port]` never reaches a file: the answer names
/// the connection's local address instead (or hyper refuses the head outright).
#[test]
fn hostile_host_headers_are_not_written_out() {
    let node = Node::start(NodeOpts {
        repos: distro_repos("http://127.0.0.1:9/"),
        ..NodeOpts::default()
    });
    let me = format!("127.0.0.1:{}", node.port());
    let paths = [
        "/setup/almalinux-9.repo",
        "/setup/epel-10.repo",
        "/setup/client.sh",
        "/setup/",
        "/mirrorlist/almalinux/9/BaseOS/x86_64/os/",
    ];
    let ask = |host: Option<&[u8]>, path: &str| -> RawResponse {
        let mut c = RawConn::connect(node.port());
        let mut req = format!("GET {path} HTTP/1.1\r\n").into_bytes();
        if let Some(h) = host {
            req.extend_from_slice(b"Host: ");
            req.extend_from_slice(h);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"Connection: close\r\n\r\n");
        c.send(&req);
        c.response(false, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let hostile: [&[u8]; 12] = [
        b"evil.example/x",
        b"evil.example@other",
        b"evil\tbaseurl=http://evil/",
        b"node:7700 gpgcheck=0 evil",
        b"$basearch.evil",
        b"evil'; touch /tmp/evil; '",
        b"[::1]:80]evil",
        b"evil\x0bx",
        b"\xffevil",
        b"evil:99999",
        b"evil\"",
        b"-evil",
    ];
    for h in hostile {
        for p in paths {
            let r = ask(Some(h), p);
            let body = String::from_utf8_lossy(&r.body).into_owned();
            assert!(
                !body.contains("evil"),
                "{:?} on {p} got into the answer ({}):\n{body}",
                String::from_utf8_lossy(h),
                r.status
            );
            if r.status == 200 {
                assert!(body.contains(&me), "{p}: {body}");
            } else {
                assert_eq!(r.status, 400, "{:?} on {p}", String::from_utf8_lossy(h));
            }
        }
    }
    // Bytes no parser lets through a head are refused before any of this.
    for h in [&b"a\rbaseurl=http://evil/"[..], b"a\x00b"] {
        let r = ask(Some(h), "/setup/almalinux-9.repo");
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(h));
    }
    // Plain names and addresses are used as the client wrote them.
    for good in [
        "node.example:7700",
        "lanmirror.local",
        "[::1]:7700",
        "192.168.1.10:7700",
    ] {
        let r = ask(Some(good.as_bytes()), "/setup/almalinux-9.repo");
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(r.status, 200);
        assert!(
            body.contains(&format!("mirrorlist=http://{good}/mirrorlist/almalinux/")),
            "{good}: {body}"
        );
    }
    // HTTP/1.0 without Host: the local address.
    let mut c = RawConn::connect(node.port());
    c.send(b"GET /mirrorlist/epel/9/Everything/x86_64/ HTTP/1.0\r\n\r\n");
    let r = c.response(false, Duration::from_secs(10)).unwrap();
    assert_eq!(
        mirror_urls(&String::from_utf8_lossy(&r.body)),
        [format!("http://{me}/epel/9/Everything/x86_64/")]
    );
    // Not a repo of this node, or a path that leaves it.
    assert_eq!(node.get("/mirrorlist/nope/9/").status, 404);
    assert_eq!(node.get("/mirrorlist/epel/%2e%2e/x/").status, 400);
    assert_eq!(node.get("/setup/almalinux-7.repo").status, 404);
}

/// Two nodes on loopback with static peers: each node's mirrorlist is itself, then the other;
/// once one stops, the other leaves it out.
#[test]
fn the_mirrorlist_follows_the_live_nodes() {
    let qa = free_port();
    let qb = free_port();
    let opts = |me: u16, other: u16| NodeOpts {
        repos: distro_repos("http://127.0.0.1:9/"),
        quic_listen: format!("127.0.0.1:{me}"),
        peers: vec![format!("127.0.0.1:{other}")],
        ..NodeOpts::default()
    };
    let a = Node::start(opts(qa, qb));
    let mut b = Node::start(opts(qb, qa));
    let path = "/mirrorlist/almalinux/9/AppStream/x86_64/os/";
    let want = |first: &Node, then: &[&Node]| -> Vec<String> {
        std::iter::once(first)
            .chain(then.iter().copied())
            .map(|n| format!("{}/almalinux/9/AppStream/x86_64/os/", n.url()))
            .collect()
    };
    let listed = |n: &Node| mirror_urls(&n.get(path).text());
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            listed(&a) == want(&a, &[&b]) && listed(&b) == want(&b, &[&a])
        }),
        "a: {:?}\nb: {:?}\n{}",
        listed(&a),
        listed(&b),
        a.status_json()["peers"]
    );
    let r = a.get(path);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("text/plain")
    );
    b.stop();
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            listed(&a) == want(&a, &[])
        }),
        "a still lists the stopped node: {:?}",
        listed(&a)
    );
}

/// `name{labels} value` lines of a `/metrics` page.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn metric(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("/metrics has no {key}: {:?}", m.keys().collect::<Vec<_>>()))
}

/// `/metrics` moves with traffic: a cold miss counts as upstream (request, bytes sent, bytes
/// received, an upstream latency sample), a repeat as a hit from the store, a 404 as an error,
/// a second node's request as a peer answer; the caps and the budget show as configured.
#[test]
fn metrics_move_with_traffic() {
    // Two nodes sharing as a site; node A with caps and a budget.
    let dir = temp();
    let repos = build_trees(&dir.path().join("mirror"));
    let up = Upstream::start(&dir.path().join("mirror"));
    let (qa, qb) = (free_port(), free_port());
    let a = Node::start(NodeOpts {
        repos: distro_repos(&up.url()),
        quic_listen: format!("127.0.0.1:{qa}"),
        peers: vec![format!("127.0.0.1:{qb}")],
        freshness_secs: 60,
        extra_toml: "[store]\nmax_size = \"1 GiB\"\n\n[uplink]\nmax_rate = \"100 MB/s\"\nmonthly_budget = \"10 GiB\"\n".into(),
        ..NodeOpts::default()
    });
    let b = Node::start(NodeOpts {
        repos: distro_repos(&up.url()),
        quic_listen: format!("127.0.0.1:{qb}"),
        peers: vec![format!("127.0.0.1:{qa}")],
        freshness_secs: 60,
        ..NodeOpts::default()
    });
    let m0 = samples(&a.get("/metrics").text());
    for key in [
        "lanmirror_client_requests_total{result=\"hit\"}",
        "lanmirror_client_requests_total{result=\"peer\"}",
        "lanmirror_client_requests_total{result=\"seed\"}",
        "lanmirror_client_requests_total{result=\"upstream\"}",
        "lanmirror_client_requests_total{result=\"error\"}",
        "lanmirror_client_bytes_total{source=\"store\"}",
        "lanmirror_client_bytes_total{source=\"upstream\"}",
        "lanmirror_received_bytes_total{source=\"upstream\"}",
        "lanmirror_received_bytes_total{source=\"seed\"}",
        "lanmirror_upstream_response_seconds_count",
        "lanmirror_eviction_runs_total",
        "lanmirror_evictions_total",
    ] {
        assert_eq!(metric(&m0, key), 0.0, "{key} before any traffic");
    }
    assert_eq!(
        metric(&m0, "lanmirror_store_max_size_bytes"),
        (1u64 << 30) as f64
    );
    assert_eq!(
        metric(&m0, "lanmirror_uplink_max_rate_bytes_per_second"),
        100e6
    );
    assert_eq!(
        metric(&m0, "lanmirror_uplink_budget_bytes"),
        (10u64 << 30) as f64
    );
    assert_eq!(
        metric(&m0, "lanmirror_uplink_budget_left_bytes"),
        (10u64 << 30) as f64
    );

    let tree = format!("/almalinux/9/BaseOS/{ARCH}/os");
    let base = repos
        .iter()
        .find_map(|r| r.packages().into_iter().find(|p| p.name == "lm-base"))
        .unwrap();
    let pkg = format!("{tree}/{}", base.rel_path);
    let repomd = format!("{tree}/repodata/repomd.xml");
    assert_eq!(a.get(&repomd).status, 200);
    let m1 = samples(&a.get("/metrics").text());
    assert!(
        metric(&m1, "lanmirror_upstream_response_seconds_count") >= 1.0,
        "{m1:?}"
    );
    assert!(
        metric(
            &m1,
            "lanmirror_upstream_response_seconds_bucket{le=\"+Inf\"}"
        ) == metric(&m1, "lanmirror_upstream_response_seconds_count")
    );
    assert!(metric(&m1, "lanmirror_upstream_response_seconds_sum") > 0.0);

    // Cold: from upstream.
    let r = a.get(&pkg);
    assert_eq!((r.status, r.body.len() as u64), (200, base.size));
    let m2 = samples(&a.get("/metrics").text());
    let delta = |k: &str, from: &HashMap<String, f64>, to: &HashMap<String, f64>| {
        metric(to, k) - metric(from, k)
    };
    let size = base.size as f64;
    assert_eq!(
        delta(
            "lanmirror_client_requests_total{result=\"upstream\"}",
            &m1,
            &m2
        ),
        1.0
    );
    assert_eq!(
        delta(
            "lanmirror_client_bytes_total{source=\"upstream\"}",
            &m1,
            &m2
        ),
        size
    );
    assert_eq!(
        delta(
            "lanmirror_received_bytes_total{source=\"upstream\"}",
            &m1,
            &m2
        ),
        size
    );
    assert!(metric(&m2, "lanmirror_uplink_budget_used_bytes{scope=\"node\"}") >= size);

    // Warm: a hit from the store.
    assert_eq!(a.get(&pkg).status, 200);
    let m3 = samples(&a.get("/metrics").text());
    assert_eq!(
        delta("lanmirror_client_requests_total{result=\"hit\"}", &m2, &m3),
        1.0
    );
    assert_eq!(
        delta("lanmirror_client_bytes_total{source=\"store\"}", &m2, &m3),
        size
    );
    assert_eq!(
        delta(
            "lanmirror_client_requests_total{result=\"upstream\"}",
            &m2,
            &m3
        ),
        0.0
    );

    // A file that is not there: an error answer.
    assert_eq!(
        a.get(&format!("{tree}/Packages/nope-1-1.noarch.rpm"))
            .status,
        404
    );
    let m4 = samples(&a.get("/metrics").text());
    assert_eq!(
        delta(
            "lanmirror_client_requests_total{result=\"error\"}",
            &m3,
            &m4
        ),
        1.0
    );

    // Node B gets the package from A, its peer.
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            b.status_json()["peers"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["healthy"] == true))
        }),
        "B never saw A: {}",
        b.status_json()["peers"]
    );
    assert_eq!(b.get(&repomd).status, 200);
    let r = b.get(&pkg);
    assert_eq!((r.status, r.body.len() as u64), (200, base.size));
    let mb = samples(&b.get("/metrics").text());
    assert_eq!(
        metric(&mb, "lanmirror_client_requests_total{result=\"peer\"}"),
        1.0,
        "{}",
        b.log_tail(30)
    );
    assert_eq!(
        metric(&mb, "lanmirror_client_bytes_total{source=\"peer\"}"),
        size
    );
    // The files repomd.xml names came from A too: every byte from a peer is counted.
    let from_peers = metric(&mb, "lanmirror_received_bytes_total{source=\"peer\"}");
    assert!(from_peers >= size, "{from_peers}");
    assert_eq!(
        Some(from_peers as u64),
        b.status_json()["bytes_from_peers"].as_u64()
    );
    assert_eq!(
        up.count(&base.file_name),
        1,
        "one upstream download for the site"
    );
}

/// Three nodes on a namespace LAN (mDNS); a client on its own host adds node A's `.repo` file,
/// installs through A, then A stops: the client installs the next package from B or C, which
/// that file's `baseurl=` lists after A.
#[test]
fn a_client_goes_on_from_the_next_node_when_its_own_stops() {
    const TEST: &str = "a_client_goes_on_from_the_next_node_when_its_own_stops";
    if let Some(why) = netns::unavailable_reason() {
        eprintln!("SKIPPED {TEST}: {why}");
        return;
    }
    let _wd = Watchdog::new(TEST, Duration::from_secs(420));
    let mut site = LanSite::with(
        3,
        LanOpts {
            uplink_rate: None,
            ..LanOpts::default()
        },
        |_, o| {
            let up = o.repos[0].urls[0].clone();
            o.repos = distro_repos(&up);
            o.freshness_secs = 60;
        },
    );
    let repos = build_trees(&site.dir.path().join("mirror"));
    let pkg = |name: &str| {
        repos
            .iter()
            .find_map(|r| r.packages().into_iter().find(|p| p.name == name))
            .unwrap()
    };
    let a_ip = site.nodes[0].host.ip;
    let ml = format!("/mirrorlist/almalinux/9/BaseOS/{ARCH}/os/");
    // A's mirrorlist names all three nodes once they found each other.
    let ips: Vec<String> = site.nodes.iter().map(|n| n.host.ip.to_string()).collect();
    assert!(
        wait_until(Duration::from_secs(40), Duration::from_millis(250), || {
            let urls = mirror_urls(&site.node(0).get(&ml).text());
            urls.len() == 3
                && ips[1..]
                    .iter()
                    .all(|ip| urls.iter().any(|u| u.contains(&format!("//{ip}:7700/"))))
        }),
        "A's mirrorlist: {}\nA's peers: {}",
        site.node(0).get(&ml).text(),
        site.status(0)["peers"]
    );

    let client_host = site.lan.add_host("c1");
    let home = site.dir.path().join("c1");
    let c = Dnf::in_netns(&home, "http://unused.invalid/", &client_host.ns)
        .with_reposdir(&home.join("yum.repos.d"));
    c.run(&[
        "config-manager",
        "--add-repo",
        &format!("http://{a_ip}:7700/setup/almalinux-9.repo"),
    ])
    .assert_success();
    let saved = fs::read_to_string(c.reposdir().join("almalinux-9.repo")).unwrap();
    // baseurl= lists A first (as the client reached it), then B and C.
    let appstream =
        |ip: &str| format!("http://{ip}:7700/almalinux/$releasever/AppStream/$basearch/os/");
    let at = saved.find("[lanmirror-appstream]").unwrap();
    let section: Vec<&str> = saved[at..].lines().take(6).collect();
    assert_eq!(
        section[3],
        format!("baseurl={}", appstream(&ips[0])),
        "{saved}"
    );
    let rest: Vec<&str> = section[4..6].iter().map(|l| l.trim()).collect();
    for ip in &ips[1..] {
        assert!(
            rest.contains(&appstream(ip).as_str()),
            "{ip} missing:\n{saved}"
        );
    }
    c.install(&["lm-base"]).assert_success();
    assert!(
        site.holds(0, &pkg("lm-base")),
        "the first install went through A"
    );

    site.node_mut(0).stop();
    let out = c.install(&["lm-app"]);
    out.assert_success();
    let app = pkg("lm-app");
    assert!(c.is_installed("lm-app"));
    assert!(
        site.holds(1, &app) || site.holds(2, &app),
        "lm-app came from neither B nor C\n{}",
        out.combined()
    );
    // B's mirrorlist leaves the stopped node out.
    let b_lists = |n: usize| mirror_urls(&site.node(1).get(&ml).text()).len() == n;
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(250), || {
            b_lists(2)
        }),
        "B still lists A: {}",
        site.node(1).get(&ml).text()
    );
}
