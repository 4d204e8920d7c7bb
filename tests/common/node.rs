//! [`Node`]: the `lanmirror` binary under test, run as a child process.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::http::{Response, try_http_request, try_http_request_from};

/// How long [`Node::start`] waits for `/api/status` to answer 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Time limit of `lanmirror verify`.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(120);

/// Path of the node binary: `$LANMIRROR_BIN` or cargo's `CARGO_BIN_EXE_lanmirror`.
pub fn node_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LANMIRROR_BIN") {
        return PathBuf::from(p);
    }
    match option_env!("CARGO_BIN_EXE_lanmirror") {
        Some(p) => PathBuf::from(p),
        None => panic!("the crate has no `lanmirror` binary target (src/main.rs) yet"),
    }
}

/// A free TCP port on 127.0.0.1, outside the kernel's ephemeral range (so a
/// later `bind(:0)` elsewhere cannot take it) and distinct within this process.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 400) as u16 * 25;
    let _ = NEXT.compare_exchange(0, base, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..2000 {
        let mut p = NEXT.fetch_add(1, Ordering::SeqCst);
        if !(20_000..32_000).contains(&p) {
            NEXT.store(20_001, Ordering::SeqCst);
            p = 20_000;
        }
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port found in 20000..32000");
}

/// One `[[repo]]` of the node's config.
#[derive(Debug, Clone)]
pub struct RepoCfg {
    pub name: String,
    pub urls: Vec<String>,
}

impl RepoCfg {
    pub fn new(name: &str, urls: &[&str]) -> Self {
        RepoCfg {
            name: name.into(),
            urls: urls.iter().map(|u| u.to_string()).collect(),
        }
    }
}

/// What [`Node::start`] writes into the config.
#[derive(Debug, Clone)]
pub struct NodeOpts {
    pub repos: Vec<RepoCfg>,
    pub freshness_secs: u64,
    /// `[metadata] scheduled_check_secs`: 0 (off) unless a test is about it, so upstream
    /// request counts stay the clients' own.
    pub scheduled_check_secs: u64,
    /// `[metadata] old_snapshot_retention_secs` (None = the node's default).
    pub retention_secs: Option<u64>,
    pub connect_timeout_secs: u64,
    pub read_timeout_secs: u64,
    pub retries: u32,
    pub mdns: bool,
    /// `[discovery] peers`, e.g. `["127.0.0.1:4433"]`.
    pub peers: Vec<String>,
    pub quic_listen: String,
    /// HTTP port; None = [`free_port`].
    pub http_port: Option<u16>,
    /// Directory holding `node.toml`, `node.log` and `data/`; None = a fresh
    /// temp dir owned (and deleted) by the `Node`.
    pub base_dir: Option<PathBuf>,
    /// Appended verbatim to the config.
    pub extra_toml: String,
    /// Program to run instead of [`node_bin`] (e.g. a stand-in script).
    pub bin: Option<PathBuf>,
    /// Extra environment for the node process (RUST_LOG defaults to
    /// `info,lanmirror=debug` unless set here or in the test's environment).
    pub env: Vec<(String, String)>,
    /// `[node] http_listen` verbatim (e.g. `0.0.0.0:7700`); None = `127.0.0.1:<port>`. The
    /// kit's own requests always go to `127.0.0.1:<port>`, so the port must be the same.
    pub http_listen: Option<String>,
    /// `[node] site` (None = not written, the node's default).
    pub site: Option<String>,
    /// `[node] site_key_file` (None = not written: no site key).
    pub site_key_file: Option<PathBuf>,
    /// Network namespace (`ip netns` name) to run the node in: `spawn` runs it under
    /// `ip netns exec NS`, and the kit's HTTP helpers connect from inside that namespace
    /// (see [`super::netns::in_netns`]). Such a node gets `PR_SET_PDEATHSIG = SIGKILL`, so it
    /// must be started from a thread that outlives it (the test's own thread).
    pub netns: Option<String>,
    /// The local address the kit's own requests (readiness, `get`, `status_json`) come from;
    /// None = the kernel's choice (127.0.0.1). For a node whose `[http] allow` leaves out
    /// 127.0.0.1.
    pub client_ip: Option<std::net::IpAddr>,
}

impl Default for NodeOpts {
    fn default() -> Self {
        NodeOpts {
            repos: Vec::new(),
            freshness_secs: 2,
            scheduled_check_secs: 0,
            retention_secs: None,
            connect_timeout_secs: 2,
            read_timeout_secs: 5,
            retries: 3,
            mdns: false,
            peers: Vec::new(),
            quic_listen: "127.0.0.1:0".into(),
            http_port: None,
            base_dir: None,
            extra_toml: String::new(),
            bin: None,
            env: Vec::new(),
            http_listen: None,
            site: None,
            site_key_file: None,
            netns: None,
            client_ip: None,
        }
    }
}

impl NodeOpts {
    /// One repo named `test` with one upstream URL.
    pub fn new(upstream_url: &str) -> Self {
        NodeOpts {
            repos: vec![RepoCfg::new("test", &[upstream_url])],
            ..Default::default()
        }
    }

    /// Renders the TOML config for a node listening on `port` with `data_dir`.
    pub fn to_toml(&self, port: u16, data_dir: &Path) -> String {
        let q = |s: &str| toml_str(s);
        let list = |v: &[String]| v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ");
        let mut node_extra = String::new();
        if let Some(site) = &self.site {
            node_extra.push_str(&format!("site = {}\n", q(site)));
        }
        if let Some(f) = &self.site_key_file {
            node_extra.push_str(&format!("site_key_file = {}\n", q(&f.to_string_lossy())));
        }
        let http_listen = self
            .http_listen
            .clone()
            .unwrap_or_else(|| format!("127.0.0.1:{port}"));
        let mut t = format!(
            "[node]\ndata_dir = {}\nhttp_listen = {}\nquic_listen = {}\n{}\n\
             [discovery]\nmdns = {}\npeers = [{}]\n\n\
             [metadata]\nfreshness_secs = {}\nscheduled_check_secs = {}\n{}\n\
             [upstream]\nconnect_timeout_secs = {}\nread_timeout_secs = {}\nretries = {}\n",
            q(&data_dir.to_string_lossy()),
            q(&http_listen),
            q(&self.quic_listen),
            node_extra,
            self.mdns,
            list(&self.peers),
            self.freshness_secs,
            self.scheduled_check_secs,
            self.retention_secs
                .map(|r| format!("old_snapshot_retention_secs = {r}\n"))
                .unwrap_or_default(),
            self.connect_timeout_secs,
            self.read_timeout_secs,
            self.retries,
        );
        for r in &self.repos {
            t.push_str(&format!(
                "\n[[repo]]\nname = {}\nurls = [{}]\n",
                q(&r.name),
                list(&r.urls)
            ));
        }
        if !self.extra_toml.is_empty() {
            t.push('\n');
            t.push_str(&self.extra_toml);
            t.push('\n');
        }
        t
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A running (or stopped) `lanmirror serve` process.
#[derive(Debug)]
pub struct Node {
    child: Option<Child>,
    opts: NodeOpts,
    port: u16,
    base: PathBuf,
    tmp: Option<tempfile::TempDir>,
    starts: u32,
}

impl Node {
    /// Writes `<base>/node.toml`, starts `lanmirror serve` and waits until
    /// `GET /api/status` answers 200 (panics with the log tail otherwise).
    pub fn start(opts: NodeOpts) -> Node {
        let (base, tmp) = match &opts.base_dir {
            Some(d) => {
                fs::create_dir_all(d).unwrap();
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("lanmirror-node-")
                    .tempdir()
                    .unwrap();
                (t.path().to_path_buf(), Some(t))
            }
        };
        let port = opts.http_port.unwrap_or_else(free_port);
        let mut node = Node {
            child: None,
            opts,
            port,
            base,
            tmp,
            starts: 0,
        };
        fs::create_dir_all(node.data_dir()).unwrap();
        fs::write(
            node.config_path(),
            node.opts.to_toml(node.port, &node.data_dir()),
        )
        .unwrap();
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "node already running");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        self.starts += 1;
        writeln!(
            log,
            "===== test kit: start #{} of lanmirror serve at unix {} =====",
            self.starts,
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
        )
        .unwrap();
        let bin = self.bin();
        let mut cmd = match &self.opts.netns {
            None => Command::new(&bin),
            Some(ns) => {
                let mut c = super::netns::exec_in(ns);
                c.arg(&bin);
                c
            }
        };
        cmd.arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info,lanmirror=debug");
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        self.child = Some(child);
        self.wait_ready();
    }

    fn bin(&self) -> PathBuf {
        self.opts.bin.clone().unwrap_or_else(node_bin)
    }

    /// Polls `/api/status` every 50 ms for up to [`READY_TIMEOUT`].
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = format!("{}/api/status", self.url());
        for _ in 0..(READY_TIMEOUT.as_millis() / 50 + 1) {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                self.child = None;
                panic!(
                    "node exited during startup with {st}\n{}",
                    self.log_tail(60)
                );
            }
            if let Ok(r) = self.try_request("GET", &url, &[], Duration::from_secs(2))
                && r.status == 200
            {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "node not ready after {READY_TIMEOUT:?} ({url})\n{}",
            self.log_tail(60)
        );
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port>/<repo>/`, a dnf baseurl.
    pub fn repo_url(&self, repo: &str) -> String {
        format!("{}/{repo}/", self.url())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn opts(&self) -> &NodeOpts {
        &self.opts
    }

    pub fn base_dir(&self) -> &Path {
        &self.base
    }

    pub fn data_dir(&self) -> PathBuf {
        self.base.join("data")
    }

    pub fn config_path(&self) -> PathBuf {
        self.base.join("node.toml")
    }

    /// `data_dir/../node.log`
    pub fn log_path(&self) -> PathBuf {
        self.base.join("node.log")
    }

    /// The whole log (all starts).
    pub fn log(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        let from = all.len().saturating_sub(lines);
        format!(
            "----- tail of {} -----\n{}\n----- end of node log -----",
            self.log_path().display(),
            all[from..].join("\n")
        )
    }

    /// True while the child process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL. Returns the exit status (None
    /// if it was not running).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        if let Some(st) = c.try_wait().unwrap() {
            return Some(st);
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        for _ in 0..1000 {
            if let Some(st) = c.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("node did not exit within 10 s of SIGTERM; sending SIGKILL");
        let _ = c.kill();
        c.wait().ok()
    }

    /// Stops the node if it runs (SIGTERM), then starts it again with the
    /// same config, port and data dir, and waits until ready.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts it again after [`Node::kill9`] / [`Node::stop`].
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Runs `lanmirror verify --config FILE`: (exit code 0, stdout + stderr).
    pub fn verify(&self) -> (bool, String) {
        let mut cmd = Command::new(self.bin());
        cmd.arg("verify")
            .arg("--config")
            .arg(self.config_path())
            .stdin(Stdio::null());
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        let out = run_with_timeout(cmd, VERIFY_TIMEOUT);
        (out.success, format!("{}{}", out.stdout, out.stderr))
    }

    /// Runs `lanmirror <args…> --config FILE` with a time limit (e.g. `["gc", "--dry-run"]`).
    pub fn run_command(&self, args: &[&str]) -> ProcOutput {
        let mut cmd = Command::new(self.bin());
        cmd.args(args)
            .arg("--config")
            .arg(self.config_path())
            .stdin(Stdio::null());
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        run_with_timeout(cmd, VERIFY_TIMEOUT)
    }

    /// Replaces `extra_toml` and rewrites the config file (takes effect at the next start).
    pub fn set_extra_toml(&mut self, extra: &str) {
        self.opts.extra_toml = extra.to_string();
        fs::write(
            self.config_path(),
            self.opts.to_toml(self.port, &self.data_dir()),
        )
        .unwrap();
    }

    /// Starts `lanmirror serve` without waiting for it to be ready (for a test that kills it
    /// at a chosen moment); [`Node::kill9`] or [`Node::stop`] end it as usual.
    pub fn spawn_unwaited(&mut self) {
        assert!(self.child.is_none(), "node already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        self.starts += 1;
        let mut cmd = Command::new(self.bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info,lanmirror=debug");
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().unwrap());
    }

    /// `GET <url><path>`; `path` starts with `/`.
    pub fn get(&self, path: &str) -> Response {
        self.get_with(path, &[])
    }

    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        let url = format!("{}{path}", self.url());
        self.try_request("GET", &url, headers, super::http::DEFAULT_TIMEOUT)
            .unwrap_or_else(|e| panic!("GET {url} failed: {e}"))
    }

    /// [`try_http_request`] from where the node can be reached: the test's own network
    /// namespace, or the node's (`NodeOpts::netns`).
    pub fn try_request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> std::io::Result<Response> {
        match &self.opts.netns {
            None => try_http_request_from(self.opts.client_ip, method, url, headers, timeout),
            Some(ns) => {
                super::netns::in_netns(ns, || try_http_request(method, url, headers, timeout))
            }
        }
    }

    /// The network namespace the node runs in, if any.
    pub fn netns(&self) -> Option<&str> {
        self.opts.netns.as_deref()
    }

    /// `GET /test/<rel_path>` of a built package; asserts a 200 with exactly its bytes.
    pub fn assert_serves(&self, p: &super::rpm::BuiltPkg) -> Response {
        let r = self.get(&format!("/test/{}", p.rel_path));
        assert_eq!(r.status, 200, "{}: {}", p.rel_path, r.text());
        assert_eq!(super::sha256_hex(&r.body), p.sha256_hex, "{}", p.rel_path);
        r
    }

    /// `GET /api/status` parsed as JSON (panics unless 200 + JSON).
    pub fn status_json(&self) -> serde_json::Value {
        let r = self.get("/api/status");
        assert_eq!(r.status, 200, "/api/status: {}", r.text());
        serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("/api/status is not JSON ({e}): {}", r.text()))
    }

    /// Every `data_dir/blobs/<2 hex>/<64 hex>` file, sorted.
    pub fn blob_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let Ok(dirs) = fs::read_dir(self.data_dir().join("blobs")) else {
            return out;
        };
        let is_hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        for d in dirs.flatten() {
            let dn = d.file_name().to_string_lossy().into_owned();
            if !is_hex(&dn, 2) || !d.path().is_dir() {
                continue;
            }
            for f in fs::read_dir(d.path()).unwrap().flatten() {
                let fname = f.file_name().to_string_lossy().into_owned();
                if is_hex(&fname, 64) && fname.starts_with(&dn) && f.path().is_file() {
                    out.push(f.path());
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!(
                "node (port {}, dir {}) at test failure:\n{}",
                self.port,
                self.base.display(),
                self.log_tail(80)
            );
        }
        self.kill9();
        if panicking
            && std::env::var_os("LANMIRROR_KEEP_TEST_DIRS").is_some()
            && let Some(t) = self.tmp.take()
        {
            eprintln!("keeping {}", t.keep().display());
        }
    }
}

/// Output of a child process run with [`run_with_timeout`].
#[derive(Debug, Clone)]
pub struct ProcOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub elapsed: Duration,
}

/// Runs `cmd` with stdout/stderr captured; kills it after `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> ProcOutput {
    use std::io::Read;
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out_pipe.read_to_end(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err_pipe.read_to_end(&mut s);
        s
    });
    let deadline = start + timeout;
    let mut timed_out = false;
    let mut status = None;
    for _ in 0..(timeout.as_millis() / 20 + 2) {
        if let Some(st) = child.try_wait().unwrap() {
            status = Some(st);
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = match status {
        Some(st) => st,
        None => {
            timed_out = true;
            let _ = child.kill();
            child.wait().unwrap()
        }
    };
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap()).into_owned();
    let mut stderr = String::from_utf8_lossy(&err_t.join().unwrap()).into_owned();
    if timed_out {
        stderr.push_str(&format!("\n[test kit: killed after {timeout:?}]\n"));
    }
    ProcOutput {
        success: status.success() && !timed_out,
        code: status.code(),
        stdout,
        stderr,
        timed_out,
        elapsed: start.elapsed(),
    }
}

/// How many peers `n`'s `/api/status` counts healthy.
pub fn healthy_peers(n: &Node) -> usize {
    n.status_json()["peers"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|p| p["healthy"] == true).count())
}

/// Starts `n` nodes of one site on loopback, each with every other's QUIC port as a static peer
/// (`make(i)` gives node `i`'s options; its `quic_listen` and `peers` are set here), and waits
/// until every node counts all the others healthy.
pub fn static_site(n: usize, make: impl Fn(usize) -> NodeOpts) -> Vec<Node> {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let nodes: Vec<Node> = (0..n)
        .map(|i| {
            let mut o = make(i);
            o.quic_listen = format!("127.0.0.1:{}", ports[i]);
            o.peers = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("127.0.0.1:{p}"))
                .collect();
            Node::start(o)
        })
        .collect();
    for node in &nodes {
        let joined = super::wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            healthy_peers(node) == n - 1
        });
        assert!(
            joined,
            "the site's nodes did not find each other: {}",
            node.log_tail(30)
        );
    }
    nodes
}
