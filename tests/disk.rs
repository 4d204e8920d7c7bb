//! The disk: `[store] max_size` / `min_free`, least-recently-used eviction, `pinned` repos,
//! pass-through when everything left is protected, `lanmirror gc`, and kill -9 in the middle of
//! an eviction. Every node here keeps its data on a small tmpfs of its own (root only: the
//! tests print why and skip elsewhere), and the clients are real dnf, the repositories real
//! rpmbuild + createrepo_c output.
//!
//! On a build without the feature (main before it) each test fails: the `[store]` section and
//! `pinned` are unknown keys there, so the node does not even start; and without them the store
//! only grows, which each test's own assertions catch (named in each test's doc).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;

/// A node whose data directory is a tmpfs of its own. The node is dropped (killed) first.
struct OnTmpfs {
    node: Node,
    fs: Tmpfs,
}

fn node_on_tmpfs(dir: &Path, fs_size: &str, opts: NodeOpts, test: &str) -> Option<OnTmpfs> {
    let base = dir.join("node");
    let Some(fs) = Tmpfs::mount(&base.join("data"), fs_size) else {
        eprintln!("SKIP {test}: cannot mount a tmpfs for the data directory here (needs root)");
        return None;
    };
    let node = Node::start(NodeOpts {
        base_dir: Some(base),
        ..opts
    });
    Some(OnTmpfs { node, fs })
}

fn store_toml(max_size: Option<&str>, min_free: &str) -> String {
    let mut t = String::from("[store]\n");
    if let Some(m) = max_size {
        t.push_str(&format!("max_size = \"{m}\"\n"));
    }
    t.push_str(&format!("min_free = \"{min_free}\"\n"));
    t
}

/// Polls the node's `stored_bytes` (status) and the bytes of `data/blobs` every 50 ms in the
/// background until stopped; bounded by `limit`.
struct UsagePoll {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(u64, u64, u32)>,
}

impl UsagePoll {
    fn start(node: &Node, limit: Duration) -> UsagePoll {
        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("{}/api/status", node.url());
        let blobs = node.data_dir().join("blobs");
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            let (mut max_stored, mut max_du, mut samples) = (0u64, 0u64, 0u32);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok(r) = try_http_request("GET", &url, &[], Duration::from_secs(5))
                    && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&r.body)
                    && let Some(b) = v["stored_bytes"].as_u64()
                {
                    max_stored = max_stored.max(b);
                    samples += 1;
                }
                max_du = max_du.max(du(&blobs));
                std::thread::sleep(Duration::from_millis(50));
            }
            (max_stored, max_du, samples)
        });
        UsagePoll { stop, handle }
    }

    /// `(most stored bytes seen, most bytes under blobs/ seen, status samples)`
    fn finish(self) -> (u64, u64, u32) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

fn blake3_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// Where the node keeps the blob of `bytes`.
fn blob_file(node: &Node, bytes: &[u8]) -> PathBuf {
    let h = blake3_hex(bytes);
    node.data_dir().join("blobs").join(&h[..2]).join(h)
}

/// Every file repomd.xml names is served, byte for byte what the mirror had.
fn assert_snapshot_complete(node: &Node, hrefs: &[(String, Vec<u8>)]) {
    for (href, bytes) in hrefs {
        let r = node.get(&format!("/test/{href}"));
        assert_eq!(r.status, 200, "{href}: {}", r.text());
        assert!(r.complete, "{href}");
        assert_eq!(sha256_hex(&r.body), sha256_hex(bytes), "{href}");
    }
}

/// The metadata files the mirror's repomd.xml names, with their bytes now.
fn metadata_now(repo: &RpmRepo) -> Vec<(String, Vec<u8>)> {
    repo.metadata_files()
        .into_iter()
        .map(|h| {
            let b = std::fs::read(repo.dir().join(&h)).unwrap();
            (h, b)
        })
        .collect()
}

/// A 12 MiB cap under a repo of 10 packages of 3 MiB: dnf clients keep installing different
/// packages, round after round, with a metadata change upstream in the middle. The stored bytes
/// never exceed the cap (polled every 50 ms through the whole run); files on disk exceed it at
/// most by the downloads being installed at that moment; the least recently used packages were
/// evicted (and one of them is fetched again when asked for); the snapshot in service, and the
/// replaced one within its retention, stay complete although upstream deleted the old files;
/// dnf makecache works; `verify` is clean.
///
/// Without the feature: the store grows to the whole repo (~30 MiB), so `max_stored <= cap`
/// fails, and nothing is ever evicted.
#[test]
fn cap_holds_while_dnf_clients_keep_installing() {
    let dir = temp();
    let names: Vec<String> = (0..10).map(|i| format!("lm-cap{i}")).collect();
    let specs: Vec<PkgSpec> = names
        .iter()
        .map(|n| PkgSpec::new(n, "1.0", 3 << 20))
        .collect();
    let mut repo = RpmRepo::create(&dir.path().join("mirror"), &specs);
    let up = Upstream::start(repo.dir());
    let cap = 12 * MIB;
    let opts = NodeOpts {
        extra_toml: store_toml(Some("12 MiB"), "1 MiB"),
        ..NodeOpts::new(&up.url())
    };
    let Some(t) = node_on_tmpfs(
        dir.path(),
        "200m",
        opts,
        "cap_holds_while_dnf_clients_keep_installing",
    ) else {
        return;
    };
    let node = &t.node;
    let pkg_size = repo.packages().iter().map(|p| p.size).max().unwrap();
    let poll = UsagePoll::start(node, Duration::from_secs(600));

    let client = |i: usize| Dnf::new(&dir.path().join(format!("c{i}")), &node.repo_url("test"));
    let mut first_metadata = Vec::new();
    for round in 0..5 {
        let pair = [names[2 * round].as_str(), names[2 * round + 1].as_str()];
        let c = client(round);
        c.install(&pair).assert_success();
        for n in pair {
            assert_eq!(c.payload_size(n), Some(3 << 20), "{n}");
        }
        if round == 1 {
            // Upstream publishes new metadata and deletes the old files, as createrepo_c
            // --update does: the old snapshot's files now exist only on the node.
            // What dnf fetched of it (other.xml and the sqlite files are fetched on demand only).
            first_metadata = metadata_now(&repo)
                .into_iter()
                .filter(|(h, _)| !h.contains("-other.") && !h.contains(".sqlite"))
                .collect();
            repo.add(&PkgSpec::new("lm-cap-new", "1.0", 100_000));
            std::thread::sleep(Duration::from_millis(2100));
        }
    }
    // The first package went long ago: it comes back from upstream when asked for.
    let again = client(10);
    again.install(&[names[0].as_str()]).assert_success();
    assert_eq!(
        up.count(&format!("{}-1.0-1.noarch.rpm", names[0])),
        2,
        "evicted, then fetched again: {:?}",
        up.requests()
    );
    let (max_stored, max_du, samples) = poll.finish();
    eprintln!(
        "cap {cap}: max stored {max_stored} ({:.1}% of the cap), max bytes under blobs/ {max_du}, {samples} samples",
        max_stored as f64 * 100.0 / cap as f64
    );
    assert!(samples > 20, "the poll ran ({samples} samples)");
    assert!(max_stored <= cap, "stored {max_stored} > cap {cap}");
    assert!(
        max_du <= cap + 3 * pkg_size,
        "files under blobs/ {max_du}: more than the cap plus the downloads being installed"
    );

    let st = node.status_json();
    let store = &st["store"];
    assert_eq!(store["max_size"], cap, "{st}");
    assert!(store["evicted_files"].as_u64().unwrap() >= 6, "{st}");
    assert!(store["evicted_bytes"].as_u64().unwrap() >= 18 * MIB, "{st}");
    assert_eq!(store["passthrough"], false, "{st}");
    assert!(store["free_bytes"].as_u64().unwrap() > 100 * MIB, "{st}");
    assert!(st["stored_bytes"].as_u64().unwrap() <= cap, "{st}");
    let metrics = node.get("/metrics").text();
    assert!(
        metrics.contains("lanmirror_evictions_total ")
            && metrics.contains("lanmirror_evicted_bytes_total "),
        "{metrics}"
    );

    // The snapshot in service is whole, and so is the replaced one (within its retention),
    // whose files upstream no longer has.
    assert_snapshot_complete(node, &metadata_now(&repo));
    assert!(!first_metadata.is_empty());
    for (href, _) in &first_metadata {
        assert!(!repo.dir().join(href).exists(), "upstream deleted {href}");
    }
    assert_snapshot_complete(node, &first_metadata);
    let fresh = client(11);
    fresh.makecache().assert_success();

    let mut node = t.node;
    node.stop();
    let (ok, report) = node.verify();
    assert!(ok, "{report}");
    drop(t.fs);
}

/// A client is slowly downloading a stored 24 MiB package (the zero-copy hit path) when another
/// download needs room and eviction takes that package: its file is unlinked while the first
/// client is mid-way, and the client still receives every byte, byte-exact (the open handle
/// keeps the unlinked file readable).
///
/// Without the feature: nothing is evicted, so the check that the package's blob file is gone
/// while the download runs fails.
#[test]
fn a_client_mid_download_of_an_evicted_file_gets_every_byte() {
    let dir = temp();
    let repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[
            PkgSpec::new("lm-mid-big", "1.0", 24 << 20),
            PkgSpec::new("lm-mid-other", "1.0", 8 << 20),
            PkgSpec::new("lm-mid-push", "1.0", 20 << 20),
        ],
    );
    let up = Upstream::start(repo.dir());
    let opts = NodeOpts {
        extra_toml: store_toml(Some("40 MiB"), "1 MiB"),
        ..NodeOpts::new(&up.url())
    };
    let Some(t) = node_on_tmpfs(
        dir.path(),
        "200m",
        opts,
        "a_client_mid_download_of_an_evicted_file_gets_every_byte",
    ) else {
        return;
    };
    let node = &t.node;
    assert_eq!(node.get("/test/repodata/repomd.xml").status, 200);
    let big = repo.package("lm-mid-big");
    let big_bytes = std::fs::read(&big.path).unwrap();
    node.assert_serves(&big);
    node.assert_serves(&repo.package("lm-mid-other"));
    let big_blob = blob_file(node, &big_bytes);
    assert!(big_blob.exists());

    // A slow reader with a small receive buffer: the node cannot push the file ahead into
    // socket buffers, so most of it is read from the file after the eviction.
    let mut s = slow_socket(node.port());
    write!(
        s,
        "GET /test/{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        big.rel_path
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    while got.len() < (1 << 20) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }

    // 32 MiB stored + 20 MiB coming > 40 MiB: eviction down to 36 MiB must take both stored
    // packages, including the one being read.
    let push = repo.package("lm-mid-push");
    std::thread::scope(|sc| {
        let h = sc.spawn(|| node.assert_serves(&push));
        // Keep reading slowly meanwhile, so the download is running when the file goes.
        let deadline = Instant::now() + Duration::from_secs(60);
        while big_blob.exists() && Instant::now() < deadline {
            let n = s.read(&mut buf[..16 << 10]).unwrap();
            got.extend_from_slice(&buf[..n]);
            std::thread::sleep(Duration::from_millis(20));
        }
        h.join().unwrap();
    });
    assert!(
        !big_blob.exists(),
        "the package being downloaded was evicted"
    );
    let total_len = big_bytes.len();
    assert!(
        got.len() < total_len,
        "the download was still running when its file was evicted ({} of {total_len} bytes read)",
        got.len()
    );
    s.read_to_end(&mut got).unwrap();
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&got[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = &got[head_end..];
    assert_eq!(body.len(), total_len, "{head}");
    assert_eq!(sha256_hex(body), big.sha256_hex, "byte-exact");
    let st = node.status_json();
    assert!(st["store"]["evicted_files"].as_u64().unwrap() >= 2, "{st}");
    assert!(st["stored_bytes"].as_u64().unwrap() <= 40 * MIB, "{st}");
    // Asked again, it comes from upstream, whole.
    node.assert_serves(&big);
    assert_eq!(up.count("lm-mid-big-1.0-1.noarch.rpm"), 2);
}

/// A TCP connection to 127.0.0.1:port whose receive buffer is 32 KiB.
fn slow_socket(port: u16) -> std::net::TcpStream {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns until it hands it over.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 32 << 10;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "connect");
        let s = std::net::TcpStream::from_raw_fd(fd);
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    }
}

/// A pinned repo fills the cap: nothing can be evicted (its packages are pinned, the metadata
/// is in service). A miss of the other repo is still served byte-exact, also as a Range
/// request, but not kept: no index row, the file gone after the grace period, asked again it
/// goes upstream again; the status says `passthrough` with a reason and the log says it once;
/// the pinned packages stay served from the store; nothing crashes and `verify` is clean.
///
/// Without the feature: the miss is stored (stored bytes grow past the cap, the second request
/// is a hit, so the upstream count stays 1), and the status has no `passthrough`.
#[test]
fn a_pinned_repo_filling_the_cap_passes_new_misses_through() {
    let dir = temp();
    let pin_repo = RpmRepo::create(
        &dir.path().join("pin-mirror"),
        &[
            PkgSpec::new("lm-pin1", "1.0", 6 << 20),
            PkgSpec::new("lm-pin2", "1.0", 6 << 20),
            PkgSpec::new("lm-pin3", "1.0", 6 << 20),
        ],
    );
    let repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[
            PkgSpec::new("lm-pass1", "1.0", 5 << 20),
            PkgSpec::new("lm-pass2", "1.0", 3 << 20),
        ],
    );
    let pin_up = Upstream::start(pin_repo.dir());
    let up = Upstream::start(repo.dir());
    let cap = 20 * MIB;
    let opts = NodeOpts {
        extra_toml: format!(
            "{}\n[[repo]]\nname = \"pin\"\nurls = [\"{}\"]\npinned = true\n",
            store_toml(Some("20 MiB"), "1 MiB"),
            pin_up.url()
        ),
        ..NodeOpts::new(&up.url())
    };
    let Some(t) = node_on_tmpfs(
        dir.path(),
        "200m",
        opts,
        "a_pinned_repo_filling_the_cap_passes_new_misses_through",
    ) else {
        return;
    };
    let node = &t.node;
    assert_eq!(node.get("/test/repodata/repomd.xml").status, 200);
    assert_eq!(node.get("/pin/repodata/repomd.xml").status, 200);
    let pins = pin_repo.packages();
    for p in &pins {
        let r = node.get(&format!("/pin/{}", p.rel_path));
        assert_eq!(r.status, 200);
        assert_eq!(sha256_hex(&r.body), p.sha256_hex);
    }
    let st = node.status_json();
    let stored = st["stored_bytes"].as_u64().unwrap();
    assert!(stored <= cap && stored > 18 * MIB, "{st}");
    assert_eq!(st["repos"][1]["pinned"], true, "{st}");
    assert_eq!(st["store"]["passthrough"], false, "{st}");

    // A miss that does not fit: served whole, not kept.
    let p1 = repo.package("lm-pass1");
    let p1_bytes = std::fs::read(&p1.path).unwrap();
    node.assert_serves(&p1);
    let st = node.status_json();
    assert_eq!(st["store"]["passthrough"], true, "{st}");
    let why = st["store"]["passthrough_reason"].as_str().unwrap();
    assert!(why.contains("max_size"), "{why}");
    assert_eq!(
        st["stored_bytes"].as_u64().unwrap(),
        stored,
        "nothing kept: {st}"
    );
    assert_eq!(st["store"]["passed_through_files"], 1, "{st}");
    assert_eq!(st["store"]["evicted_files"], 0, "nothing could go: {st}");
    // Asked again: upstream again, byte-exact again.
    node.assert_serves(&p1);
    assert_eq!(
        up.count("lm-pass1-1.0-1.noarch.rpm"),
        2,
        "{:?}",
        up.requests()
    );
    // A ranged request for a miss waits for the verified file and is answered from it.
    let p2 = repo.package("lm-pass2");
    let p2_bytes = std::fs::read(&p2.path).unwrap();
    let r = node.get_with(
        &format!("/test/{}", p2.rel_path),
        &[("Range", "bytes=1000-200999")],
    );
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(r.body, &p2_bytes[1000..201000]);
    // The pinned packages are still hits.
    for p in &pins {
        let r = node.get(&format!("/pin/{}", p.rel_path));
        assert_eq!(sha256_hex(&r.body), p.sha256_hex);
    }
    assert_eq!(
        pin_up.count(".rpm"),
        3,
        "pinned packages never left the store"
    );
    // The passed-through files go after their grace period.
    let gone = wait_until(Duration::from_secs(40), Duration::from_millis(200), || {
        !blob_file(node, &p1_bytes).exists() && !blob_file(node, &p2_bytes).exists()
    });
    assert!(gone, "passed-through files deleted after the grace period");
    let st = node.status_json();
    assert_eq!(st["stored_bytes"].as_u64().unwrap(), stored, "{st}");
    assert_eq!(st["store"]["passthrough"], true, "{st}");
    let metrics = node.get("/metrics").text();
    assert!(
        metrics.contains("lanmirror_store_passthrough 1"),
        "{metrics}"
    );
    let log = node.log();
    assert_eq!(
        log.matches("new downloads are served, verified, but not kept")
            .count(),
        1,
        "said once:\n{}",
        node.log_tail(40)
    );

    let mut node = t.node;
    node.stop();
    let (ok, report) = node.verify();
    assert!(ok, "{report}");
    drop(t.fs);
}

/// Writes `n` files of `size` random bytes under `mirror/files/`.
fn filler_files(mirror: &Path, n: usize, size: usize) -> Vec<(String, Vec<u8>)> {
    let d = mirror.join("files");
    std::fs::create_dir_all(&d).unwrap();
    (0..n)
        .map(|i| {
            let mut bytes = payload_bytes(&format!("filler{i}"), "1", size);
            bytes[0] = b'F';
            let rel = format!("files/f{i:05}.bin");
            std::fs::write(mirror.join(&rel), &bytes).unwrap();
            (rel, bytes)
        })
        .collect()
}

/// GETs every file through the node, 4 at a time, asserting byte-exact answers.
fn fetch_all(node: &Node, files: &[(String, Vec<u8>)]) {
    std::thread::scope(|s| {
        for chunk in files.chunks(files.len().div_ceil(4)) {
            s.spawn(move || {
                for (rel, bytes) in chunk {
                    let r = node.get(&format!("/test/{rel}"));
                    assert_eq!(r.status, 200, "{rel}");
                    assert!(r.body == *bytes, "{rel} not byte-exact");
                }
            });
        }
    });
}

fn blob_count(node: &Node) -> usize {
    node.blob_files().len()
}

/// 2000 small files fill a node's store. `gc` refuses while the node runs (exit 3, as
/// `verify`); stopped, `gc --dry-run` lists what would go and deletes nothing; `gc` evicts,
/// reports counts and bytes per reason, and compacts the index (the file shrinks). Refilled,
/// the cap is dropped and the node restarted, which evicts at start-up; it is killed -9 while
/// the eviction is unlinking files (watched on the tmpfs's free space). The next start finishes
/// the eviction (deletes the files whose rows were already committed away), `verify` is clean,
/// the store is within the cap, and every file and the metadata are served byte-exact again.
///
/// Without the feature: there is no `gc` command (exit 2 from the argument parser) and nothing
/// is ever evicted at start-up, so the checks on what `gc` printed and on the blob counts fail.
#[test]
fn gc_and_kill_9_during_eviction() {
    let dir = temp();
    let repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[PkgSpec::new("lm-gc", "1.0", 200_000)],
    );
    let files = filler_files(repo.dir(), 2000, 16 << 10);
    let up = Upstream::start(repo.dir());
    let opts = NodeOpts {
        extra_toml: store_toml(None, "1 MiB"),
        ..NodeOpts::new(&up.url())
    };
    let Some(t) = node_on_tmpfs(dir.path(), "200m", opts, "gc_and_kill_9_during_eviction") else {
        return;
    };
    let OnTmpfs { fs, mut node } = t;
    assert_eq!(node.get("/test/repodata/repomd.xml").status, 200);
    let metadata = metadata_now(&repo);
    assert_snapshot_complete(&node, &metadata);
    fetch_all(&node, &files);
    let full = blob_count(&node);
    assert!(full > 2000, "{full} blobs");

    // A running node has the store: gc says so and exits 3.
    let out = node.run_command(&["gc"]);
    assert_eq!(out.code, Some(3), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("in use by a running node"),
        "{}",
        out.stderr
    );
    node.stop();

    // Dry run: what would go, nothing deleted.
    node.set_extra_toml(&store_toml(Some("4 MiB"), "1 MiB"));
    let out = node.run_command(&["gc", "--dry-run"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("WOULD EVICT test/files/"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("would evict: "), "{}", out.stdout);
    assert!(out.stdout.contains("kept: snapshot "), "{}", out.stdout);
    assert!(
        out.stdout.contains("dry run: nothing deleted"),
        "{}",
        out.stdout
    );
    assert_eq!(blob_count(&node), full);

    let index = node.data_dir().join("index.redb");
    let index_before = std::fs::metadata(&index).unwrap().len();
    let out = node.run_command(&["gc"]);
    eprintln!("gc:\n{}", out.stdout);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("EVICTED test/files/"), "{}", out.stdout);
    assert!(
        out.stdout.contains("… and "),
        "a long list is cut: {}",
        out.stdout
    );
    let evicted_line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("evicted: "))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    let evicted: usize = evicted_line["evicted: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(evicted > 1700, "{evicted_line}");
    assert!(out.stdout.contains("index compacted: "), "{}", out.stdout);
    let index_after = std::fs::metadata(&index).unwrap().len();
    eprintln!("index.redb: {index_before} -> {index_after} bytes");
    assert!(
        index_after < index_before,
        "{index_before} -> {index_after}"
    );
    assert_eq!(blob_count(&node), full - evicted);
    assert!(
        du(&node.data_dir().join("blobs")) <= 4 * MIB,
        "within the cap after gc"
    );
    let (ok, report) = node.verify();
    assert!(ok, "{report}");

    // Refill without a cap, then drop the cap and kill the node while it evicts at start-up.
    // The unlinking takes milliseconds: a kill that comes too late (a busy machine) is retried
    // with a refilled store, at most 3 times.
    let mut mid = false;
    for attempt in 1..=3 {
        node.set_extra_toml(&store_toml(None, "1 MiB"));
        node.start_again();
        fetch_all(&node, &files);
        assert_eq!(blob_count(&node), full);
        node.stop();
        node.set_extra_toml(&store_toml(Some("4 MiB"), "1 MiB"));
        let (used_before, _) = fs.space();
        node.spawn_unwaited();
        // Kill as soon as 2 MiB were freed: the rows are committed away and the unlinking runs.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut spins = 0u64;
        while Instant::now() < deadline {
            spins += 1;
            if fs.space().0 + 2 * MIB <= used_before {
                break;
            }
            if spins.is_multiple_of(1000) {
                std::thread::yield_now();
            }
        }
        node.kill9();
        let left = blob_count(&node);
        eprintln!(
            "attempt {attempt}: killed with {left} of {full} blob files left ({spins} polls)"
        );
        assert!(
            left < full,
            "the kill came after the eviction started deleting"
        );

        // The next start finishes what the eviction committed; everything is consistent.
        node.start_again();
        let after = blob_count(&node);
        eprintln!("after the restart: {after} blob files");
        assert!(left >= after);
        if left > after {
            // Killed between the commit and the last unlink: recovery deleted the rest.
            assert!(
                node.log()
                    .contains("start-up recovery cleaned what an earlier crash left"),
                "{}",
                node.log_tail(30)
            );
            mid = true;
            break;
        }
        eprintln!("the eviction finished before the kill; again");
    }
    assert!(
        mid,
        "no kill landed in the middle of an eviction in 3 attempts"
    );
    let st = node.status_json();
    assert!(st["stored_bytes"].as_u64().unwrap() <= 4 * MIB, "{st}");
    assert!(du(&node.data_dir().join("blobs")) <= 4 * MIB);
    node.stop();
    let (ok, report) = node.verify();
    assert!(ok, "{report}");
    assert!(report.contains(" 0 bad"), "{report}");
    node.set_extra_toml(&store_toml(None, "1 MiB"));
    node.start_again();
    fetch_all(&node, &files);
    assert_snapshot_complete(&node, &metadata);
    let c = Dnf::new(&dir.path().join("c"), &node.repo_url("test"));
    c.install(&["lm-gc"]).assert_success();
    drop(node);
    drop(fs);
}
