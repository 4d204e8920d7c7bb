//! Sneakernet with the real binary, real dnf and real repositories: export from a node warmed by
//! dnf, dnf straight from the bundle (`file://`), import into a node with no uplink, the
//! have-list round trip, a damaged package, an altered manifest, and interrupted runs.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::node::{ProcOutput, node_bin, run_with_timeout};
use common::*;

/// `lanmirror <args>` against a node's config (the node must be stopped: the store is
/// single-process).
fn cli(node: &Node, args: &[&str]) -> ProcOutput {
    let mut c = Command::new(node_bin());
    c.arg(args[0])
        .arg("--config")
        .arg(node.config_path())
        .args(&args[1..]);
    run_with_timeout(c, Duration::from_secs(120))
}

fn export(node: &Node, to: &Path, extra: &[&str]) -> ProcOutput {
    let to = to.to_string_lossy();
    let mut args = vec!["export", "--to", &to];
    args.extend_from_slice(extra);
    cli(node, &args)
}

fn import(node: &Node, dir: &Path) -> ProcOutput {
    cli(node, &["import", &dir.to_string_lossy()])
}

/// Total size of the regular files under `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        if m.is_dir() {
            n += tree_bytes(&e.path());
        } else {
            n += m.len();
        }
    }
    n
}

/// A node with no reachable upstream (its configured upstream is a closed port).
fn offline_node() -> Node {
    let dead = format!("http://127.0.0.1:{}/", free_port());
    let mut o = NodeOpts::new(&dead);
    o.connect_timeout_secs = 1;
    o.retries = 0;
    Node::start(o)
}

/// A node that served every package of [`pkgs`], stopped, and its export in `<dir>/usb`.
fn exported_site() -> (RpmRepo, Node, tempfile::TempDir, std::path::PathBuf) {
    exported_site_of(&pkgs())
}

/// A node that served every package of `specs`, stopped, and its export in `<dir>/usb`.
fn exported_site_of(specs: &[PkgSpec]) -> (RpmRepo, Node, tempfile::TempDir, std::path::PathBuf) {
    let site = Site::new(specs);
    for p in site.repo.packages() {
        site.node.assert_serves(&p);
    }
    let Site {
        repo,
        up: _up,
        mut node,
        dir,
    } = site;
    node.stop();
    let disk = dir.path().join("usb");
    let out = export(&node, &disk, &[]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    (repo, node, dir, disk)
}

fn pkgs() -> Vec<PkgSpec<'static>> {
    vec![
        PkgSpec::new("ls-base", "1.0", 2 << 20),
        PkgSpec::new("ls-app", "1.0", 1 << 20).requires("ls-base"),
        PkgSpec::new("ls-doc", "1.0", 500_000),
    ]
}

/// The walk-through of the README: export at the connected site, dnf from the disk directly,
/// import at the offline site, a fresh client there; then the next trip carries only what is
/// new, by the offline site's have-list.
#[test]
fn carry_a_site_on_a_disk_and_then_only_what_it_lacks() {
    let dir = temp();
    let mut repo = RpmRepo::create(&dir.path().join("mirror"), &pkgs());
    let up = Upstream::start(repo.dir());
    let mut a = Node::start(NodeOpts::new(&up.url()));
    Dnf::new(&dir.path().join("c1"), &a.repo_url("test"))
        .install(&["ls-app", "ls-doc"])
        .assert_success();

    a.stop();
    let disk = dir.path().join("usb");
    let out = export(&a, &disk, &[]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("3 files") || out.stdout.contains("files"),
        "{}",
        out.stdout
    );
    assert!(disk.join("lanmirror-bundle.json").exists());
    assert!(disk.join("test/repodata/repomd.xml").exists());
    let first_bytes = tree_bytes(&disk);

    // dnf straight from the disk, no lanmirror involved.
    let from_disk = Dnf::new(
        &dir.path().join("c2"),
        &format!("file://{}/test/", disk.display()),
    );
    from_disk.install(&["ls-app"]).assert_success();
    assert_eq!(from_disk.payload_size("ls-base"), Some(2 << 20));

    // The offline site imports it and serves a fresh client.
    let mut b = offline_node();
    b.stop();
    let out = import(&b, &disk);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("made by node"), "{}", out.stdout);
    assert!(out.stderr.contains("import: "), "{}", out.stderr);
    assert!(out.stdout.contains("now at revision"), "{}", out.stdout);
    b.start_again();
    let c3 = Dnf::new(&dir.path().join("c3"), &b.repo_url("test"));
    c3.install(&["ls-app", "ls-doc"]).assert_success();
    assert_eq!(c3.payload_size("ls-app"), Some(1 << 20));

    // Next trip: the offline site's have-list goes to the connected site by e-mail.
    b.stop();
    let have = dir.path().join("site-b.have");
    let out = cli(&b, &["have", "--out", &have.to_string_lossy()]);
    assert!(out.success, "{}", out.stderr);
    assert!(
        std::fs::metadata(&have).unwrap().len() < 1024,
        "a have-list of a few files is tiny"
    );
    // Upstream publishes one more package; the connected site gets it.
    repo.add(&PkgSpec::new("ls-new", "1.0", 100_000));
    a.start_again();
    std::thread::sleep(Duration::from_millis(2200)); // past the freshness window
    Dnf::new(&dir.path().join("c4"), &a.repo_url("test"))
        .install(&["ls-new"])
        .assert_success();
    a.stop();
    let disk2 = dir.path().join("usb2");
    let out = export(&a, &disk2, &["--have", &have.to_string_lossy()]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    let second_bytes = tree_bytes(&disk2);
    assert!(
        second_bytes * 10 < first_bytes,
        "second bundle {second_bytes} bytes is not under 10% of the first {first_bytes}"
    );
    assert!(!disk2.join(repo.package("ls-base").rel_path).exists());
    let out = import(&b, &disk2);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    b.start_again();
    let c5 = Dnf::new(&dir.path().join("c5"), &b.repo_url("test"));
    c5.install(&["ls-new", "ls-app"]).assert_success();
}

/// One byte changed in one package of a correctly signed bundle: import names that package,
/// stores the rest, exits non-zero, and the bad bytes are never served.
#[test]
fn a_damaged_package_is_named_and_never_served() {
    let (repo, _node, _dir, disk) = exported_site();
    let bad = repo.package("ls-app");
    let f = disk.join("test").join(&bad.rel_path);
    let mut bytes = std::fs::read(&f).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&f, &bytes).unwrap();

    let mut b = offline_node();
    b.stop();
    let out = import(&b, &disk);
    assert_eq!(out.code, Some(2), "{}\n{}", out.stdout, out.stderr);
    let named: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("BAD"))
        .collect();
    assert_eq!(named.len(), 1, "{}", out.stdout);
    assert!(named[0].contains(&bad.file_name), "{}", out.stdout);
    b.start_again();
    assert_ne!(b.get(&format!("/test/{}", bad.rel_path)).status, 200);
    b.assert_serves(&repo.package("ls-base"));
    b.assert_serves(&repo.package("ls-doc"));
}

/// A manifest edited after export (here: a package's listed checksum swapped for the damaged
/// file's) is refused as a whole, before anything is stored.
#[test]
fn an_altered_manifest_is_refused() {
    let (repo, _node, _dir, disk) = exported_site();
    let m = disk.join("lanmirror-bundle.json");
    let text = std::fs::read_to_string(&m).unwrap();
    let sha = &repo.package("ls-doc").sha256_hex;
    assert!(text.contains(sha.as_str()));
    std::fs::write(&m, text.replace(sha.as_str(), &"0".repeat(64))).unwrap();
    let mut b = offline_node();
    b.stop();
    let out = import(&b, &disk);
    assert!(!out.success);
    assert!(
        out.stderr.contains("altered"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(
        b.blob_files().len(),
        0,
        "nothing stored from a refused bundle"
    );
    // A bundle signed by another node (a forged signature file) is refused the same way.
    let sig = disk.join("lanmirror-bundle.sig");
    std::fs::write(&m, text).unwrap();
    let s = std::fs::read_to_string(&sig).unwrap();
    let forged = s.replacen(|c: char| c.is_ascii_hexdigit(), "f", 1);
    let forged = if forged == s {
        s.replacen('f', "0", 1)
    } else {
        forged
    };
    std::fs::write(&sig, forged).unwrap();
    assert!(!import(&b, &disk).success);
}

/// An export cut off mid-way (no manifest yet, one file half-written, one missing) finishes on
/// the second run, reusing what was done; an import cut off (the disk was pulled: only some files
/// were there) finishes on the second run with the whole disk.
#[test]
fn interrupted_export_and_import_finish_on_a_second_run() {
    let (repo, node, dir, disk) = exported_site();
    // The state a killed export leaves: files renamed so far, one in its .part, no manifest.
    std::fs::remove_file(disk.join("lanmirror-bundle.json")).unwrap();
    std::fs::remove_file(disk.join("lanmirror-bundle.sig")).unwrap();
    let base = disk.join("test").join(repo.package("ls-base").rel_path);
    let half = std::fs::read(&base).unwrap();
    std::fs::remove_file(&base).unwrap();
    let mut part = base.clone().into_os_string();
    part.push(".part");
    std::fs::write(&part, &half[..half.len() / 2]).unwrap();
    std::fs::remove_file(disk.join("test").join(repo.package("ls-doc").rel_path)).unwrap();
    // A file of the right size but wrong bytes is not taken as done.
    let app = disk.join("test").join(repo.package("ls-app").rel_path);
    let mut b = std::fs::read(&app).unwrap();
    b[10] ^= 0xff;
    std::fs::write(&app, &b).unwrap();

    let out = export(&node, &disk, &[]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("already there"), "{}", out.stdout);
    assert!(
        !out.stdout.contains("(0 already there"),
        "nothing was reused: {}",
        out.stdout
    );
    for p in repo.packages() {
        let got = std::fs::read(disk.join("test").join(&p.rel_path)).unwrap();
        assert_eq!(sha256_hex(&got), p.sha256_hex, "{}", p.name);
    }

    // Import, first with half the disk (the rest "not copied yet"), then the whole disk.
    let partial = dir.path().join("partial");
    copy_tree(&disk, &partial);
    let gone = partial.join("test").join(repo.package("ls-base").rel_path);
    std::fs::remove_file(&gone).unwrap();
    let mut off = offline_node();
    off.stop();
    let out = import(&off, &partial);
    assert_eq!(out.code, Some(2), "{}", out.stdout);
    assert!(out.stdout.contains("MISSING"), "{}", out.stdout);
    let out = import(&off, &disk);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("already held"), "{}", out.stdout);
    off.start_again();
    let c = Dnf::new(&dir.path().join("c"), &off.repo_url("test"));
    c.install(&["ls-app", "ls-doc"]).assert_success();
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.metadata().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A mounted bundle configured as a seed directory serves a site with no uplink without any
/// import: metadata and packages come off the disk, verified; a damaged file on it is refused.
#[test]
fn a_mounted_bundle_serves_a_site_without_import() {
    let (repo, _node, dir, disk) = exported_site();
    let bad = repo.package("ls-doc");
    let f = disk.join("test").join(&bad.rel_path);
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&f, &bytes).unwrap();

    let dead = format!("http://127.0.0.1:{}/", free_port());
    let mut o = NodeOpts::new(&dead);
    o.connect_timeout_secs = 1;
    o.retries = 0;
    o.extra_toml = format!("[seed]\ndirs = [\"{}\"]\n", disk.display());
    let seeded = Node::start(o);
    let c = Dnf::new(&dir.path().join("c"), &seeded.repo_url("test"));
    c.install(&["ls-app"]).assert_success();
    assert_eq!(c.payload_size("ls-base"), Some(2 << 20));
    assert!(
        seeded.log().contains("fetched from a seed directory"),
        "{}",
        seeded.log_tail(30)
    );
    // The damaged file is never served: refused on read, and there is no other source.
    // (The answer may have started: then it is cut short, never completed.)
    let url = format!("{}/test/{}", seeded.url(), bad.rel_path);
    if let Ok(r) = seeded.try_request("GET", &url, &[], Duration::from_secs(30)) {
        assert!(
            r.status != 200 || r.body.len() < bad.size as usize,
            "damaged seed bytes were served as a complete answer"
        );
    }
    assert!(
        seeded
            .log()
            .contains("seed directory file failed verification"),
        "{}",
        seeded.log_tail(30)
    );
    // What was good is stored now: served even with the disk gone.
    std::fs::remove_dir_all(disk.join("test/Packages")).unwrap();
    seeded.assert_serves(&repo.package("ls-base"));
}

/// Files under `dir`, recursively.
fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

/// `import`, `have` and `export` while the node serves: the command line hands the work to the
/// running node (the store is its own), shows its progress, and the node serves what it imported
/// at once; the API refuses anyone without the node's admin token.
#[test]
fn bundle_commands_work_on_a_running_node() {
    let (repo, _node, dir, disk) = exported_site();
    let off = offline_node();
    // the node runs: import through it
    let out = import(&off, &disk);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("a node is running on this data directory"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("import: "),
        "progress shown: {}",
        out.stderr
    );
    assert!(out.stdout.contains("now at revision"), "{}", out.stdout);
    assert!(out.stdout.contains("made by node"), "{}", out.stdout);
    let job = &off.status_json()["bundle_job"];
    assert_eq!(job["command"], "import", "{job}");
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(
        job["progress"]["done_files"], job["progress"]["files"],
        "{job}"
    );
    // served at once, by the same process, with no uplink
    let c = Dnf::new(&dir.path().join("live"), &off.repo_url("test"));
    c.install(&["ls-app", "ls-doc"]).assert_success();

    // have and export on the running node
    let have = dir.path().join("have.bin");
    let out = cli(&off, &["have", "--out", &have.to_string_lossy()]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("have-list of node"), "{}", out.stdout);
    assert!(std::fs::metadata(&have).unwrap().len() > 0);
    let again = dir.path().join("usb2");
    let out = export(&off, &again, &[]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(again.join("lanmirror-bundle.json").exists());
    for p in repo.packages() {
        let got = std::fs::read(again.join("test").join(&p.rel_path)).unwrap();
        assert_eq!(sha256_hex(&got), p.sha256_hex, "{}", p.name);
    }
    // a relative path is the command line's, made absolute for the node
    let out = Command::new(node_bin())
        .current_dir(dir.path())
        .args(["have", "--out", "rel.bin", "--config"])
        .arg(off.config_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("rel.bin").exists());

    // without the token, or with a wrong one: refused, nothing runs
    let body = format!(
        "{{\"command\":\"have\",\"out\":\"{}\"}}",
        dir.path().join("x.bin").display()
    );
    for auth in [None, Some("Bearer nope")] {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        let r = post(&off, "/api/bundle/have", &headers, &body);
        assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    }
    assert!(!dir.path().join("x.bin").exists());
    let token = std::fs::read_to_string(off.data_dir().join("admin.token")).unwrap();
    let mode = std::fs::metadata(off.data_dir().join("admin.token"))
        .unwrap()
        .permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077, 0);
    let auth = format!("Bearer {}", token.trim());
    // with it: a path that is not absolute, or a bundle inside the node's own data directory,
    // is refused
    for to in [
        "relative".to_string(),
        off.data_dir().join("blobs").display().to_string(),
    ] {
        let body = format!("{{\"command\":\"export\",\"to\":\"{to}\"}}");
        let r = post(
            &off,
            "/api/bundle/export",
            &[("Authorization", &auth)],
            &body,
        );
        assert_eq!(r.status, 400, "{to}: {}", String::from_utf8_lossy(&r.body));
    }
    assert!(
        !off.data_dir()
            .join("blobs")
            .join("lanmirror-bundle.json")
            .exists()
    );
}

/// An import killed mid-way keeps every file it finished: the next run skips them (and a
/// loop of kills still ends with every file stored once, and a clean `verify`).
#[test]
fn a_killed_import_keeps_what_it_stored() {
    let names: Vec<String> = (0..24).map(|i| format!("lk-{i:02}")).collect();
    let specs: Vec<PkgSpec> = names
        .iter()
        .map(|n| PkgSpec::new(n, "1.0", 1 << 20))
        .collect();
    let (repo, _node, _dir, disk) = exported_site_of(&specs);

    let mut off = offline_node();
    off.stop();
    let blobs = off.data_dir().join("blobs");
    let total = repo.packages().len();
    let mut kills = 0;
    let mut last_at_kill = 0;
    for round in 0..6 {
        let before = count_files(&blobs);
        let mut child = Command::new(node_bin())
            .args(["import", "--config"])
            .arg(off.config_path())
            .arg(&disk)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // kill it once a few more files are in place
        let want = before + 4;
        let started = std::time::Instant::now();
        let mut finished = false;
        while count_files(&blobs) < want {
            if child.try_wait().unwrap().is_some() {
                finished = true;
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "import stuck");
            std::thread::sleep(Duration::from_millis(2));
        }
        if finished {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        last_at_kill = count_files(&blobs);
        eprintln!("round {round}: killed with {last_at_kill} blob files in place");
    }
    assert!(kills >= 2, "the import was never caught mid-way");
    // the rerun skips what the killed runs stored: at most one file per worker (installed,
    // its row not yet committed) is lost to each kill
    let out = import(&off, &disk);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    let held: usize = out
        .stdout
        .split(" already held")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'already held' count: {}", out.stdout));
    assert!(
        held + 8 >= last_at_kill.min(total),
        "only {held} of the {last_at_kill} files stored before the last kill were kept: {}",
        out.stdout
    );
    assert!(held > 0, "{}", out.stdout);
    let (ok, report) = off.verify();
    assert!(ok, "{report}");
    off.start_again();
    for p in repo.packages() {
        off.assert_serves(&p);
    }
}

/// A POST with a JSON body to the node's bundle API, on a fresh connection (the kit's raw
/// client): the answer.
fn post(node: &Node, path: &str, headers: &[(&str, &str)], body: &str) -> RawResponse {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let mut c = RawConn::connect(node.port());
    c.send(format!("{head}\r\n{body}").as_bytes());
    c.response(false, Duration::from_secs(10)).unwrap()
}
