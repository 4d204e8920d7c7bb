//! The real-LAN tier: a LAN built from Linux network namespaces on a bridge, and [`LanSite`],
//! a site of `lanmirror` nodes on it with an upstream behind a slow link.
//!
//! [`Lan`] makes one namespace that holds only a bridge (`br0`, multicast snooping off), and per
//! host a namespace with `lo` up and one veth, [`HOST_IF`], whose peer is a port of that bridge,
//! an address in `10.213.X.0/24` and a multicast route `224.0.0.0/4 dev lan0`, so mDNS and QUIC
//! cross real interfaces. Nothing is created in the test's own (root) namespace, and nothing in
//! the root namespace has a route to the LAN. [`Lan::limit_rate`] puts a `tc … tbf` on a host's
//! link, both ways.
//!
//! Clean-up: every name starts with `lmt<pid>x<n>`; dropping the [`Lan`] deletes its namespaces
//! (their veths and the bridge go with them), also when the test panics. The first `Lan` of a
//! process deletes leftovers of crashed runs: `lmt<pid>x…` namespaces whose pid is gone. Node
//! and dnf processes run under `ip netns exec` get `PR_SET_PDEATHSIG = SIGKILL`, so a test
//! process that dies takes them along. [`Watchdog`] bounds a whole test.
//!
//! [`in_netns`] runs a closure on a thread that entered a namespace (`setns`): sockets keep the
//! namespace they were made in, so that is how the kit's upstream ([`Upstream::start_in_netns`]),
//! the node wrapper's HTTP helpers (`NodeOpts::netns`) and tests reach hosts of the LAN.
//!
//! Needs root and `ip`/`tc` (Debian's iproute2). [`Lan::new_or_skip`] prints why and returns
//! None when either is missing; as root with `ip` present it never skips (set-up failures panic).

use std::fs::{self, File};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once, mpsc};
use std::time::Duration;

use super::dnf::Dnf;
use super::node::{Node, NodeOpts, ProcOutput, run_with_timeout};
use super::rpm::{BuiltPkg, PkgSpec, RpmRepo};
use super::upstream::Upstream;

/// Every namespace name made here starts with this, then `<pid>x<n>`.
pub const PREFIX: &str = "lmt";
/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";
/// The veth of a host, inside its namespace.
pub const HOST_IF: &str = "lan0";
/// The bridge, inside the bridge namespace.
pub const BRIDGE_IF: &str = "br0";
/// Time limit of one `ip`/`tc` command.
const CMD_TIMEOUT: Duration = Duration::from_secs(20);

/// Namespaces made by live [`Lan`]s of this process (for [`Watchdog`]'s last-resort clean-up).
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Path of an iproute2 tool (`ip`, `tc`): found on `PATH`, else in `/usr/sbin` or `/sbin`
/// (which a non-login `PATH` may lack); the bare name when nowhere.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// `ip netns exec NS` as a command to which the program and its arguments are to be added;
/// the child dies with the thread that spawns it ([`kill_with_parent`]).
pub fn exec_in(ns: &str) -> Command {
    let mut c = Command::new(tool("ip"));
    c.args(["netns", "exec", ns]);
    kill_with_parent(&mut c);
    c
}

/// Why the tier cannot run here, or None when it can (root, and `ip` present).
pub fn unavailable_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: network namespaces need CAP_SYS_ADMIN".into());
    }
    match Command::new(tool("ip")).arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("no `ip` command (Debian package iproute2)".into()),
    }
}

/// Moves the calling thread into the network namespace `ns` (an `ip netns` name).
pub fn enter(ns: &str) -> io::Result<()> {
    let f = File::open(Path::new(NETNS_DIR).join(ns))?;
    // SAFETY: a valid fd of a namespace file; setns only changes this thread's namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Runs `f` on a fresh thread inside the network namespace `ns` and returns its result
/// (a panic in `f` is re-raised here). Sockets made by `f` belong to `ns`, and so do
/// processes it spawns. Anything process-wide that makes a socket on first use must not be
/// first used in here, or that socket keeps `ns` alive after its deletion (tokio's signal
/// driver does this when the process's first runtime is built: build runtimes outside).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name(format!("netns {ns}"))
            .spawn_scoped(s, || {
                enter(ns).unwrap_or_else(|e| panic!("setns into {ns}: {e}"));
                f()
            })
            .expect("spawn a thread");
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// Makes the child get SIGKILL when the thread that spawned it exits (`PR_SET_PDEATHSIG`), so
/// processes in a test's namespaces do not outlive a test process that died. Spawn from a
/// thread that outlives the child (a test's own thread, or one that waits for the child).
pub fn kill_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn run(prog: &str, args: &[&str]) -> ProcOutput {
    let mut cmd = Command::new(tool(prog));
    cmd.args(args).env("LC_ALL", "C");
    run_with_timeout(cmd, CMD_TIMEOUT)
}

/// Runs `ip ARGS…`; panics with its output unless it succeeds.
pub fn ip(args: &[&str]) -> String {
    let out = run("ip", args);
    assert!(
        out.success,
        "ip {} failed: {}{}",
        args.join(" "),
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// Runs `tc ARGS…`; panics with its output unless it succeeds.
pub fn tc(args: &[&str]) -> String {
    let out = run("tc", args);
    assert!(
        out.success,
        "tc {} failed (is iproute2 installed?): {}{}",
        args.join(" "),
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// Names of all `ip netns` namespaces.
pub fn netns_list() -> Vec<String> {
    ip(&["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Names of the interfaces of namespace `ns` (`ip -n NS -o link`), without `@peer` suffixes.
pub fn links_in(ns: &str) -> Vec<String> {
    ip(&["-n", ns, "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// The pid in a name `lmt<pid>x<n>…`, if it is one of ours.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let after = &rest[digits.len()..];
    let n: String = after
        .strip_prefix('x')?
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    if digits.is_empty() || n.is_empty() {
        return None;
    }
    digits.parse().ok()
}

/// Deletes leftovers of crashed runs: namespaces named `lmt<pid>x<n>…` whose process is gone
/// (or whose pid is this process's, which has made none yet when this runs). Once per process.
fn remove_stale() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let me = std::process::id();
        for name in netns_list() {
            let Some(pid) = owner_pid(&name) else {
                continue;
            };
            if pid == me || !Path::new(&format!("/proc/{pid}")).exists() {
                let out = run("ip", &["netns", "del", &name]);
                eprintln!(
                    "netns kit: removed leftover namespace {name} of dead pid {pid}{}",
                    if out.success { "" } else { " (failed)" }
                );
            }
        }
    });
}

/// One host of a [`Lan`]: a namespace with one interface on the bridge.
#[derive(Debug, Clone)]
pub struct Host {
    /// The short name given to [`Lan::add_host`].
    pub name: String,
    /// The namespace (`ip netns` name).
    pub ns: String,
    /// Its address on the LAN (/24, on [`HOST_IF`]).
    pub ip: Ipv4Addr,
    /// Its bridge port, in the bridge namespace.
    pub port: String,
}

/// A LAN of network namespaces on one bridge; dropping it deletes everything it made.
#[derive(Debug)]
pub struct Lan {
    prefix: String,
    subnet: u8,
    bridge: String,
    hosts: Vec<Host>,
    /// Namespaces made, in order.
    made: Vec<String>,
}

impl Lan {
    /// A LAN with its bridge and no hosts. Panics unless root with `ip` (see
    /// [`Lan::new_or_skip`]) or if any set-up step fails.
    pub fn new() -> Lan {
        if let Some(why) = unavailable_reason() {
            panic!("cannot build a namespace LAN: {why}");
        }
        remove_stale();
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let prefix = format!("{PREFIX}{pid}x{n}");
        // Each LAN has its own bridge, so subnets cannot clash; still, vary it per LAN so that
        // logs of parallel tests are told apart.
        let subnet = (pid.wrapping_mul(7).wrapping_add(n) % 250 + 1) as u8;
        let bridge = format!("{prefix}br");
        let mut lan = Lan {
            prefix,
            subnet,
            bridge: bridge.clone(),
            hosts: Vec::new(),
            made: Vec::new(),
        };
        lan.add_ns(&bridge);
        ip(&[
            "-n",
            &bridge,
            "link",
            "add",
            BRIDGE_IF,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", &bridge, "link", "set", BRIDGE_IF, "up"]);
        lan
    }

    /// [`Lan::new`], or None after printing why the test is skipped (not root, or no `ip`).
    pub fn new_or_skip(test: &str) -> Option<Lan> {
        match unavailable_reason() {
            Some(why) => {
                eprintln!("SKIPPED {test}: {why}");
                None
            }
            None => Some(Lan::new()),
        }
    }

    fn add_ns(&mut self, ns: &str) {
        ip(&["netns", "add", ns]);
        self.made.push(ns.to_string());
        LIVE.lock().unwrap().push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }

    /// Adds a host: namespace `<prefix><name>`, `lo` up, [`HOST_IF`] on the bridge with the next
    /// address of the subnet (from `.10`), and the multicast route.
    pub fn add_host(&mut self, name: &str) -> Host {
        let idx = self.hosts.len() + 1;
        assert!(idx <= 200, "too many hosts");
        let host = Host {
            name: name.to_string(),
            ns: format!("{}{name}", self.prefix),
            ip: Ipv4Addr::new(10, 213, self.subnet, 9 + idx as u8),
            port: format!("p{idx}"),
        };
        self.add_ns(&host.ns);
        let (ns, br, port) = (host.ns.as_str(), self.bridge.as_str(), host.port.as_str());
        // Both ends are made directly in their namespaces: nothing appears in the root one.
        ip(&[
            "link", "add", HOST_IF, "netns", ns, "type", "veth", "peer", "name", port, "netns", br,
        ]);
        ip(&["-n", br, "link", "set", port, "master", BRIDGE_IF]);
        ip(&["-n", br, "link", "set", port, "up"]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", host.ip),
            "dev",
            HOST_IF,
        ]);
        ip(&["-n", ns, "link", "set", HOST_IF, "up"]);
        ip(&["-n", ns, "route", "add", "224.0.0.0/4", "dev", HOST_IF]);
        self.hosts.push(host.clone());
        host
    }

    /// Limits `host`'s link to `rate` (tc syntax, e.g. `"20mbit"`) in both directions:
    /// `tbf rate RATE burst 64kb latency 50ms` on its veth and on its bridge port.
    pub fn limit_rate(&self, host: &Host, rate: &str) {
        for (ns, dev) in [(&host.ns, HOST_IF), (&self.bridge, host.port.as_str())] {
            tc(&[
                "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst",
                "64kb", "latency", "50ms",
            ]);
        }
    }

    /// `lmt<pid>x<n>`: the start of every name this LAN made.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace holding the bridge.
    pub fn bridge_ns(&self) -> &str {
        &self.bridge
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Every namespace this LAN made (bridge first).
    pub fn namespaces(&self) -> Vec<String> {
        self.made.clone()
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // Hosts first (each takes its veth pair along), the bridge last.
        for ns in self.made.iter().rev() {
            let pids = run("ip", &["netns", "pids", ns]).stdout;
            if !pids.trim().is_empty() {
                eprintln!(
                    "netns kit: processes still in {ns} at clean-up: {}",
                    pids.split_whitespace().collect::<Vec<_>>().join(" ")
                );
            }
            let out = run("ip", &["netns", "del", ns]);
            if !out.success {
                eprintln!("netns kit: ip netns del {ns}: {}", out.stderr.trim());
            }
        }
        LIVE.lock().unwrap().retain(|n| !self.made.contains(n));
    }
}

/// Bounds a whole test: unless dropped within `limit`, prints what timed out, deletes the
/// namespaces of this process's live [`Lan`]s and exits the test process (status 101). Its
/// nodes die with it (`PR_SET_PDEATHSIG`). A last resort; every wait in the kit is bounded too.
pub struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    pub fn new(test: &str, limit: Duration) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        let test = test.to_string();
        let thread = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!(
                    "WATCHDOG: {test} still running after {limit:?}; exiting the test process"
                );
                let live = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
                for ns in live.iter().rev() {
                    let _ = run("ip", &["netns", "del", ns]);
                }
                std::process::exit(101);
            }
        });
        Watchdog {
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// HTTP port of every [`LanSite`] node (in its own namespace, so all use the same).
pub const NODE_HTTP_PORT: u16 = 7700;
/// QUIC port of every [`LanSite`] node.
pub const NODE_QUIC_PORT: u16 = 7701;
/// Port of the upstream server in its namespace.
pub const UPSTREAM_PORT: u16 = 8080;

/// How a [`LanSite`] is built.
#[derive(Debug, Clone)]
pub struct LanOpts<'a> {
    /// Packages of the repository `test` (built with rpmbuild, indexed with createrepo_c).
    pub pkgs: Vec<PkgSpec<'a>>,
    /// tc rate of the upstream's link (e.g. `"20mbit"`); None = no limit.
    pub uplink_rate: Option<String>,
    /// `[discovery] mdns` of every node (never any static peers).
    pub mdns: bool,
    /// `[node] site` of every node (None = not written).
    pub site: Option<String>,
    /// Site key of every node, written to a `site_key_file` (None = not written).
    pub site_key: Option<String>,
}

impl Default for LanOpts<'_> {
    fn default() -> Self {
        LanOpts {
            pkgs: Vec::new(),
            uplink_rate: Some("20mbit".into()),
            mdns: true,
            site: None,
            site_key: None,
        }
    }
}

/// A node of a [`LanSite`] and the host it runs on.
#[derive(Debug)]
pub struct LanNode {
    pub node: Node,
    pub host: Host,
}

/// A site on a namespace LAN: an upstream (repository `test`) on host `up` behind a
/// rate-limited link, and nodes `n1`, `n2`, … each in its own namespace, listening on
/// `0.0.0.0:7700` (HTTP) and `0.0.0.0:7701` (QUIC), with no static peers. Clients run dnf inside
/// a node's namespace against `http://127.0.0.1:7700/test/`.
pub struct LanSite {
    /// Dropped first: the node processes (killed).
    pub nodes: Vec<LanNode>,
    pub up: Upstream,
    pub up_host: Host,
    pub repo: RpmRepo,
    /// Dropped after everything running in it.
    pub lan: Lan,
    /// Dropped last: mirror, node directories, key files and clients live in it.
    pub dir: tempfile::TempDir,
    mdns: bool,
    site: Option<String>,
    site_key: Option<String>,
}

impl LanSite {
    /// A LAN, the repository and its upstream, and `n` running nodes.
    pub fn new(n: usize, opts: LanOpts) -> LanSite {
        LanSite::with(n, opts, |_, _| {})
    }

    /// Like [`LanSite::new`], with each node's options adjusted by `tweak(index, opts)` (index
    /// from 0) before it starts.
    pub fn with(n: usize, opts: LanOpts, tweak: impl Fn(usize, &mut NodeOpts)) -> LanSite {
        let mut lan = Lan::new();
        let dir = tempfile::Builder::new()
            .prefix("lanmirror-lan-")
            .tempdir()
            .unwrap();
        let repo = RpmRepo::create(&dir.path().join("mirror"), &opts.pkgs);
        let up_host = lan.add_host("up");
        if let Some(rate) = &opts.uplink_rate {
            lan.limit_rate(&up_host, rate);
        }
        let up = Upstream::start_in_netns(repo.dir(), &up_host.ns, up_host.ip, UPSTREAM_PORT);
        let mut site = LanSite {
            nodes: Vec::new(),
            up,
            up_host,
            repo,
            lan,
            dir,
            mdns: opts.mdns,
            site: opts.site.clone(),
            site_key: opts.site_key.clone(),
        };
        for i in 0..n {
            site.add_node(|o| tweak(i, o));
        }
        site
    }

    /// The options node number `idx` (from 0) would get on host `host`.
    pub fn node_opts(&self, idx: usize, host: &Host) -> NodeOpts {
        let key_file = self.site_key.as_ref().map(|k| {
            let f = self.dir.path().join(format!("site-{idx}.key"));
            super::write_private(&f, k);
            f
        });
        NodeOpts {
            mdns: self.mdns,
            peers: Vec::new(),
            quic_listen: format!("0.0.0.0:{NODE_QUIC_PORT}"),
            http_listen: Some(format!("0.0.0.0:{NODE_HTTP_PORT}")),
            http_port: Some(NODE_HTTP_PORT),
            base_dir: Some(self.dir.path().join(format!("node{}", idx + 1))),
            site: self.site.clone(),
            site_key_file: key_file,
            netns: Some(host.ns.clone()),
            ..NodeOpts::new(&self.up.url())
        }
    }

    /// Adds and starts one more node (host `n<k>`), its options adjusted by `tweak` (e.g. a
    /// different `site_key_file`); returns its index. Call from the test's thread.
    pub fn add_node(&mut self, tweak: impl FnOnce(&mut NodeOpts)) -> usize {
        let idx = self.nodes.len();
        let host = self.lan.add_host(&format!("n{}", idx + 1));
        let mut opts = self.node_opts(idx, &host);
        tweak(&mut opts);
        let node = Node::start(opts);
        self.nodes.push(LanNode { node, host });
        idx
    }

    /// Node `i` (from 0).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i].node
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i].node
    }

    /// Node `i`'s `/api/status`.
    pub fn status(&self, i: usize) -> serde_json::Value {
        self.node(i).status_json()
    }

    /// A fresh dnf client in node `i`'s namespace, using that node
    /// (`http://127.0.0.1:7700/test/`), in `dir/<name>`.
    pub fn client(&self, i: usize, name: &str) -> Dnf {
        Dnf::in_netns(
            &self.dir.path().join(name),
            &self.nodes[i].node.repo_url("test"),
            &self.nodes[i].host.ns,
        )
    }

    /// A path for a file of the site directory (e.g. a key file).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Node `i`'s blob files with the size of `pkg` (candidates for holding it).
    pub fn blobs_sized(&self, i: usize, pkg: &BuiltPkg) -> Vec<PathBuf> {
        self.node(i)
            .blob_files()
            .into_iter()
            .filter(|f| fs::metadata(f).is_ok_and(|m| m.len() == pkg.size))
            .collect()
    }

    /// Whether node `i` stores exactly `pkg`'s bytes.
    pub fn holds(&self, i: usize, pkg: &BuiltPkg) -> bool {
        self.blobs_sized(i, pkg)
            .iter()
            .any(|f| fs::read(f).is_ok_and(|d| super::sha256_hex(&d) == pkg.sha256_hex))
    }
}
