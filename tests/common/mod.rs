//! Integration-test support kit for `lanmirror`.
//!
//! Everything here is synchronous from a test's point of view (plain `#[test]`
//! fns); the one async piece, the upstream HTTP server, owns a tokio runtime on
//! a background thread and shuts down when dropped.
//!
//! * [`rpm`]: real RPM repositories. [`PkgSpec`] describes a noarch package
//!   whose single file `/usr/share/<name>/payload.bin` holds deterministic,
//!   incompressible bytes; [`RpmRepo`] builds such packages with `rpmbuild`
//!   (reproducibly, cached across tests under `target/tmp/test-rpm-cache/`)
//!   and indexes them with `createrepo_c`.
//! * [`upstream`]: [`Upstream`], an HTTP/1.1 file server on 127.0.0.1 (hyper)
//!   with conditional requests, byte ranges, a request log and runtime fault
//!   injection (throttle, cut, stall, 503, captive-portal HTML, down/up).
//! * [`node`]: [`Node`] runs the `lanmirror` binary with a generated TOML
//!   config, waits for `/api/status`, and can kill -9 / stop / restart it and
//!   run `lanmirror verify`. Its stderr goes to `<base>/node.log`, whose tail is
//!   printed when a test panics.
//! * [`dnf`]: [`Dnf`], a real dnf 4 client with its own installroot.
//! * [`browser`]: [`browser::Browser`], headless Chromium through chromedriver (WebDriver).
//! * [`http`]: [`http_get`], a tiny blocking HTTP/1.1 client over
//!   `std::net::TcpStream` that reports truncated bodies (`complete == false`).
//! * [`tmpfs`]: [`Tmpfs`], a small filesystem of the test's own for a node's data directory
//!   (root only), and [`du`].
//! * [`raw`]: [`RawConn`], exact bytes on a real connection (pipelining, bare LF, half-close)
//!   and answers read one by one; [`connect_from`] a chosen loopback address.
//! * [`netns`]: the real-LAN tier: [`Lan`], network namespaces on a bridge (root only), and
//!   [`LanSite`], nodes in their own namespaces with an upstream behind a slow link.
//!
//! Set `LANMIRROR_KEEP_TEST_DIRS=1` to keep a failed test's node directory.
#![allow(dead_code)]
#![allow(unused_imports)]

pub mod browser;
pub mod dnf;
pub mod hostile;
pub mod http;
pub mod netns;
pub mod node;
pub mod raw;
pub mod rpm;
pub mod tmpfs;
pub mod upstream;

pub use dnf::{Dnf, DnfOutput};
pub use http::{Response, http_get, http_request, try_http_request};
pub use netns::{Host, Lan, LanNode, LanOpts, LanSite, Watchdog, in_netns};
pub use node::{Node, NodeOpts, RepoCfg, free_port, healthy_peers, static_site};
pub use raw::{RawConn, RawResponse, connect_from};
pub use rpm::{AdvisorySpec, BuiltPkg, PkgSpec, RpmRepo, build_cache, build_rpm, payload_bytes};
pub use tmpfs::{Tmpfs, du};
pub use upstream::{Logged, Upstream};

use std::time::{Duration, Instant};

/// Polls `cond` every `every` until it returns true or `timeout` passes;
/// returns whether it became true. Bounded in time and in count.
pub fn wait_until(timeout: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let max_iters = (timeout.as_millis() / every.as_millis().max(1)) as u64 + 2;
    for _ in 0..max_iters {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
    cond()
}

/// Lowercase hex SHA-256 of `data`.
/// Writes a secret (a site key) readable by its owner only, as lanmirror requires.
pub fn write_private(path: &std::path::Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(data))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        write!(s, "{b:02x}").unwrap();
    }
    s
}

/// A fresh temporary directory, deleted on drop.
pub fn temp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// One test site: a temp dir, a real repository of the given packages under `dir/mirror`, an
/// upstream serving it, and a node in front whose first metadata snapshot is already loaded
/// (so packages are checked against primary.xml from the first request on).
pub struct Site {
    pub repo: RpmRepo,
    pub up: Upstream,
    pub node: Node,
    /// Dropped last: everything above lives in it. When destructuring a `Site`, bind it
    /// (`dir: _dir`), or `..` drops it, and the mirror with it, at once.
    pub dir: tempfile::TempDir,
}

impl Site {
    pub fn new(pkgs: &[PkgSpec]) -> Site {
        Site::with(pkgs, |_| {})
    }

    /// Like [`Site::new`], with the node's options adjusted first.
    pub fn with(pkgs: &[PkgSpec], tweak: impl FnOnce(&mut NodeOpts)) -> Site {
        let dir = temp();
        let repo = RpmRepo::create(&dir.path().join("mirror"), pkgs);
        let up = Upstream::start(repo.dir());
        let mut opts = NodeOpts::new(&up.url());
        tweak(&mut opts);
        let node = Node::start(opts);
        let r = node.get("/test/repodata/repomd.xml");
        assert_eq!(r.status, 200, "first snapshot: {}", r.text());
        up.clear_log();
        Site {
            repo,
            up,
            node,
            dir,
        }
    }

    /// `GET /test/<rel_path>` of a package, through the node.
    pub fn get_pkg(&self, name: &str) -> Response {
        self.node
            .get(&format!("/test/{}", self.repo.package(name).rel_path))
    }

    /// A dnf client of the node, in its own directory under the site's.
    pub fn client(&self, name: &str) -> Dnf {
        Dnf::new(&self.dir.path().join(name), &self.node.repo_url("test"))
    }
}
