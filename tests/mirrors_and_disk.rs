//! Upstream choice and local resources: mirrors tried in order (dead, 404, good), mirrorlists,
//! and a disk that fills up.

mod common;

use std::process::Command;

use common::*;

/// A dead mirror (connection refused), then one without the file (404, like the main mirror
/// for an old minor release), then the vault that has it: dnf installs, every mirror was asked.
#[test]
fn mirrors_are_tried_in_order() {
    let dir = temp();
    let repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[PkgSpec::new("lm-m", "1.0", 100_000)],
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let without = Upstream::start(&empty);
    let good = Upstream::start(repo.dir());
    let dead = format!("http://127.0.0.1:{}/", free_port());
    let opts = NodeOpts {
        repos: vec![RepoCfg::new("test", &[&dead, &without.url(), &good.url()])],
        retries: 1,
        ..Default::default()
    };
    let node = Node::start(opts);
    let c = Dnf::new(&dir.path().join("c"), &node.repo_url("test"));
    c.install(&["lm-m"]).assert_success();
    assert!(without.count("repomd.xml") >= 1 && without.count(".rpm") == 1);
    assert_eq!(good.count(".rpm"), 1);
}

/// Mirrors named by a mirrorlist (plain text, one base URL per line, comments skipped).
#[test]
fn mirrorlist_mirrors_are_used() {
    let dir = temp();
    let repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[PkgSpec::new("lm-ml", "1.0", 100_000)],
    );
    let good = Upstream::start(repo.dir());
    let lists = dir.path().join("lists");
    std::fs::create_dir_all(&lists).unwrap();
    std::fs::write(
        lists.join("mirrorlist"),
        format!(
            "# mirrors for test\n\nhttp://127.0.0.1:{}/\n{}\n",
            free_port(),
            good.url()
        ),
    )
    .unwrap();
    let ml = Upstream::start(&lists);
    let opts = NodeOpts {
        repos: vec![],
        retries: 0,
        extra_toml: format!(
            "[[repo]]\nname = \"test\"\nmirrorlists = [\"{}mirrorlist\"]\n",
            ml.url()
        ),
        ..Default::default()
    };
    let node = Node::start(opts);
    let c = Dnf::new(&dir.path().join("c"), &node.repo_url("test"));
    c.install(&["lm-ml"]).assert_success();
    assert_eq!(ml.count("mirrorlist"), 1, "resolved once");
    assert_eq!(good.count(".rpm"), 1);
}

/// The data directory fills up mid-download: the client gets an error (never a clean end),
/// nothing half-written is kept, the log says "disk full", and the node keeps serving.
#[test]
fn full_disk_is_a_clear_error_and_loses_nothing() {
    let dir = temp();
    let repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[
            PkgSpec::new("lm-huge", "1.0", 6 << 20),
            PkgSpec::new("lm-small", "1.0", 200_000),
        ],
    );
    let up = Upstream::start(repo.dir());
    let base = dir.path().join("node");
    let data = base.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&data)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!(
            "SKIP full_disk_is_a_clear_error_and_loses_nothing: cannot mount a small tmpfs here (needs root)"
        );
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(data.clone());
    let mut node = Node::start(NodeOpts {
        base_dir: Some(base.clone()),
        ..NodeOpts::new(&up.url())
    });
    assert_eq!(node.get("/test/repodata/repomd.xml").status, 200);
    let huge = repo.package("lm-huge");
    let r = node.get(&format!("/test/{}", huge.rel_path));
    assert!(!(r.status == 200 && r.complete), "status {}", r.status);
    assert!(node.log().contains("disk full"), "{}", node.log_tail(20));
    let leftovers: u64 = std::fs::read_dir(data.join("partial"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert_eq!(leftovers, 0, "nothing half-written kept");
    let small = repo.package("lm-small");
    node.assert_serves(&small);
    node.stop();
    let (ok, report) = node.verify();
    assert!(ok, "{report}");
}
