//! A whole lanmirror site in one process, on loopback: what lanmirror is for, in a few seconds.
//!
//! ```text
//! cargo run --release --example site
//! RUST_LOG=info cargo run --release --example site    # with the nodes' own log lines
//! ```
//!
//! The example starts
//!
//! * an "upstream mirror": a tiny HTTP server on 127.0.0.1 serving a generated repository
//!   (`repodata/repomd.xml`, `repodata/<sha256>-primary.xml.gz` and four packages of 1–4 MiB
//!   under `Packages/`). The packages are stand-ins: a real 96-byte RPM lead, then random
//!   bytes. That is enough for a cache, which checks bytes against the metadata, but not for
//!   `rpm -i`. The server counts every request and every byte it sends: that is the uplink.
//! * three nodes (`lanmirror::node::Node`), each with its own temporary data directory, HTTP
//!   port and QUIC port, each listing the two others as static peers (`mdns = false`).
//!
//! Then "clients" (plain HTTP GETs, like dnf's) ask the nodes for files:
//!
//! 1. every client loads the metadata through its own node, as dnf does first;
//! 2. client 1 asks node 1 for package A;
//! 3. client 2 asks node 2 for A and B;
//! 4. all three clients ask their nodes for every package at the same moment.
//!
//! After each step a table shows what crossed the uplink in that step and, per node, what its
//! `/api/status` counters moved by: `hits` (answered from its own store), `from_peers` (files it
//! got from another node over QUIC instead of upstream), `bytes_from_peers`, `bytes_to_peers`
//! and `bytes_fetched_upstream`. The last line compares what the uplink carried with what the
//! clients received. Every client's bytes are checked against the packages' sha256 and the
//! example exits non-zero if any differ or if any package crossed the uplink more than once.
//!
//! Nothing leaves 127.0.0.1, and everything the example creates lives in one temporary
//! directory that is removed at the end.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Empty, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use lanmirror::config::Config;
use lanmirror::node::{Node, NodeError};
use lanmirror::peer::SiteError;

/// The repository's name on the nodes: clients ask `http://NODE/demo/…`.
const REPO: &str = "demo";
/// Where the upstream server keeps the repository.
const UPSTREAM_PREFIX: &str = "/pub/demo/";
/// The packages: name and size in bytes.
const PACKAGES: [(&str, usize); 4] = [
    ("demo-alpha", 1 << 20),
    ("demo-bravo", (5 << 20) / 2),
    ("demo-charlie", 4 << 20),
    ("demo-delta", (3 << 20) / 2),
];
const NODES: usize = 3;
/// Bounds on the waits: peers joining, a step settling, nodes stopping.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at starting the site (a QUIC port picked free may be taken before a node binds it).
const START_ATTEMPTS: u32 = 3;

fn main() -> Result<()> {
    // The nodes' upstream client honours http_proxy/ALL_PROXY like curl does; here upstream is
    // on 127.0.0.1, and nothing may leave loopback through a proxy.
    let proxy_vars = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"];
    if proxy_vars.iter().any(|v| std::env::var_os(v).is_some()) {
        // SAFETY: no other thread exists yet (the runtime is built below), so nothing can
        // read the environment while it changes.
        unsafe { std::env::set_var("NO_PROXY", "127.0.0.1") };
    }
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(run())
}

async fn run() -> Result<()> {
    // One TLS provider for the process: reqwest is built without one, quinn uses ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|e| anyhow!("cannot set up logging: {e}"))?;
    let started = Instant::now();

    let tmp = tempfile::Builder::new()
        .prefix("lanmirror-site-example-")
        .tempdir()
        .context("creating a temporary directory")?;
    let repo = Arc::new(Repository::generate()?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let upstream = Upstream::start(repo.clone(), stop_rx.clone()).await?;
    println!(
        "upstream mirror  {}  ({} packages, {} of packages)",
        upstream.url,
        repo.packages.len(),
        human(repo.packages.iter().map(|p| p.bytes.len() as u64).sum())
    );

    let site = Site::start(tmp.path(), &upstream.url, &stop_rx).await?;
    for (i, n) in site.nodes.iter().enumerate() {
        println!(
            "node {}           {}  (QUIC {}, data in {})",
            i + 1,
            n.url,
            n.node.peers.quic_addr(),
            n.node.cfg.data_dir().display()
        );
    }
    // Whatever the scenario's outcome, the nodes are stopped the way `lanmirror serve` stops.
    let outcome = scenario(&site, &upstream, &repo, started).await;
    let _ = stop_tx.send(true);
    let stopped = site.stop().await;
    upstream.stop().await;
    outcome?;
    stopped?;
    println!(
        "site stopped cleanly; total {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(tmp);
    Ok(())
}

/// The four steps, their tables, and the final check.
async fn scenario(
    site: &Site,
    upstream: &Upstream,
    repo: &Arc<Repository>,
    started: Instant,
) -> Result<()> {
    site.wait_joined().await?;
    println!(
        "the three nodes see each other over QUIC ({} ms after start)\n",
        started.elapsed().as_millis()
    );

    println!(
        "After each step: what crossed the uplink, then how each node's /api/status counters moved:\n\
         hits = answered from its own disk, from_peers = files it took from another node over QUIC\n\
         instead of upstream, bytes_from_peers / bytes_to_peers = QUIC traffic inside the site,\n\
         bytes_fetched_upstream = what it pulled over the uplink. Each file has one fetcher at the\n\
         site, picked by hashing its path with the node ids (new ones every run): the node a\n\
         client asks gets a cold file through that fetcher, so which node goes upstream varies.\n"
    );
    let clients = Clients::new()?;
    let mut report = Report::new(site, upstream);
    let (a, b) = (&repo.packages[0], &repo.packages[1]);

    // 1. dnf's first requests: repomd.xml, then the primary metadata it names.
    let mut set = JoinSet::new();
    for (i, n) in site.nodes.iter().enumerate() {
        let (c, url, repo) = (clients.clone(), n.url.clone(), repo.clone());
        set.spawn(async move { c.load_metadata(i + 1, &url, &repo).await });
    }
    join_all(set).await?;
    site.settle().await;
    report.step(
        "1. each client loads the metadata through its own node (repomd.xml + primary)",
        site,
        upstream,
    );

    // 2. One package on one node.
    clients.get_package(1, &site.nodes[0].url, a).await?;
    site.settle().await;
    report.step(
        &format!("2. client 1 asks node 1 for A ({})", a.name),
        site,
        upstream,
    );

    // 3. The same package and a new one on another node.
    clients.get_package(2, &site.nodes[1].url, a).await?;
    clients.get_package(2, &site.nodes[1].url, b).await?;
    site.settle().await;
    report.step(
        &format!(
            "3. client 2 asks node 2 for A ({}) and B ({})",
            a.name, b.name
        ),
        site,
        upstream,
    );

    // 4. Everyone, everything, at once.
    let mut set = JoinSet::new();
    for (i, n) in site.nodes.iter().enumerate() {
        for p in &repo.packages {
            let (c, url, p) = (clients.clone(), n.url.clone(), p.clone());
            set.spawn(async move { c.get_package(i + 1, &url, &p).await });
        }
    }
    join_all(set).await?;
    site.settle().await;
    report.step(
        "4. all three clients ask their nodes for every package at the same moment",
        site,
        upstream,
    );
    report.totals(site);

    // The claim: each package crossed the uplink once, and every client got the right bytes
    // (each GET above already compared the sha256).
    let log = upstream.uplink.log();
    for p in &repo.packages {
        let path = format!("{UPSTREAM_PREFIX}{}", p.href);
        let n = log.iter().filter(|e| e.path == path).count();
        ensure!(
            n == 1,
            "{} crossed the uplink {n} times, expected once; run with RUST_LOG=info to see why",
            p.href
        );
    }
    let carried = upstream.uplink.bytes.load(Ordering::Relaxed);
    let served = clients.received.load(Ordering::Relaxed);
    println!(
        "\nuplink carried {:.1} MiB for {:.1} MiB served to clients: each package crossed it once",
        mib(carried),
        mib(served)
    );
    println!(
        "every client got the right bytes ({} downloads checked against sha256)",
        clients.checked.load(Ordering::Relaxed)
    );

    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The generated repository

#[derive(Clone)]
struct Package {
    name: String,
    /// `Packages/NAME-1.0-1.noarch.rpm`
    href: String,
    bytes: Bytes,
    sha256: String,
}

struct Repository {
    packages: Vec<Package>,
    /// Every file by its path in the repository.
    files: HashMap<String, Bytes>,
    primary_href: String,
}

impl Repository {
    fn generate() -> Result<Repository> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let packages: Vec<Package> = PACKAGES
            .iter()
            .map(|(name, size)| {
                let bytes = Bytes::from(fake_rpm(name, *size));
                Package {
                    name: name.to_string(),
                    href: format!("Packages/{name}-1.0-1.noarch.rpm"),
                    sha256: sha256_hex(&bytes),
                    bytes,
                }
            })
            .collect();

        // primary.xml, shaped like createrepo_c's (see tests/data/repodata/).
        let mut primary = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<metadata xmlns=\"http://linux.duke.edu/metadata/common\" xmlns:rpm=\"http://linux.duke.edu/metadata/rpm\" packages=\"{}\">\n",
            packages.len()
        );
        for p in &packages {
            let size = p.bytes.len();
            primary.push_str(&format!(
                r#"<package type="rpm">
  <name>{name}</name>
  <arch>noarch</arch>
  <version epoch="0" ver="1.0" rel="1"/>
  <checksum type="sha256" pkgid="YES">{sha}</checksum>
  <summary>lanmirror example package {name}</summary>
  <description>A stand-in package generated by examples/site.rs.</description>
  <packager></packager>
  <url></url>
  <time file="{now}" build="{now}"/>
  <size package="{size}" installed="{size}" archive="{size}"/>
  <location href="{href}"/>
  <format>
    <rpm:license>MIT</rpm:license>
    <rpm:vendor></rpm:vendor>
    <rpm:group>Unspecified</rpm:group>
    <rpm:buildhost>localhost</rpm:buildhost>
    <rpm:sourcerpm>{name}-1.0-1.src.rpm</rpm:sourcerpm>
    <rpm:header-range start="96" end="96"/>
    <rpm:provides>
      <rpm:entry name="{name}" flags="EQ" epoch="0" ver="1.0" rel="1"/>
    </rpm:provides>
  </format>
</package>
"#,
                name = p.name,
                sha = p.sha256,
                href = p.href,
            ));
        }
        primary.push_str("</metadata>\n");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(primary.as_bytes())
            .context("compressing primary.xml")?;
        let gz = Bytes::from(enc.finish().context("compressing primary.xml")?);
        let sha = sha256_hex(&gz);
        let primary_href = format!("repodata/{sha}-primary.xml.gz");
        // repomd.xml, also shaped like createrepo_c's (primary only: all the node needs).
        let repomd = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<repomd xmlns="http://linux.duke.edu/metadata/repo" xmlns:rpm="http://linux.duke.edu/metadata/rpm">
  <revision>{now}</revision>
  <data type="primary">
    <checksum type="sha256">{sha}</checksum>
    <open-checksum type="sha256">{open_sha}</open-checksum>
    <location href="{primary_href}"/>
    <timestamp>{now}</timestamp>
    <size>{size}</size>
    <open-size>{open_size}</open-size>
  </data>
</repomd>
"#,
            open_sha = sha256_hex(primary.as_bytes()),
            size = gz.len(),
            open_size = primary.len(),
        );
        let mut files: HashMap<String, Bytes> = packages
            .iter()
            .map(|p| (p.href.clone(), p.bytes.clone()))
            .collect();
        files.insert(primary_href.clone(), gz);
        files.insert("repodata/repomd.xml".into(), Bytes::from(repomd));
        Ok(Repository {
            packages,
            files,
            primary_href,
        })
    }
}

/// A 96-byte RPM lead (magic `ed ab ee db`, format 3.0, binary, the package's name, Linux,
/// header-style signature), then `size - 96` pseudo-random bytes derived from the name.
fn fake_rpm(name: &str, size: usize) -> Vec<u8> {
    let mut out = vec![0u8; size.max(96)];
    out[..4].copy_from_slice(&[0xed, 0xab, 0xee, 0xdb]);
    out[4] = 3; // major
    out[6..8].copy_from_slice(&0u16.to_be_bytes()); // type: binary
    out[8..10].copy_from_slice(&1u16.to_be_bytes()); // archnum
    let nevr = format!("{name}-1.0-1");
    let n = nevr.len().min(65);
    out[10..10 + n].copy_from_slice(&nevr.as_bytes()[..n]);
    out[76..78].copy_from_slice(&1u16.to_be_bytes()); // osnum: Linux
    out[78..80].copy_from_slice(&5u16.to_be_bytes()); // signature type: header-style
    let mut h = blake3::Hasher::new();
    h.update(name.as_bytes());
    h.finalize_xof().fill(&mut out[96..]);
    out
}

// ---------------------------------------------------------------------------------------------
// The upstream mirror: hyper 1 on 127.0.0.1, GET and HEAD, counting what it sends.

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// One request the upstream answered.
#[derive(Clone)]
struct Logged {
    path: String,
    status: u16,
    /// Body length of the answer.
    len: u64,
}

#[derive(Default)]
struct Uplink {
    requests: AtomicU64,
    /// Body bytes handed to the connection, counted as they go.
    bytes: AtomicU64,
    log: Mutex<Vec<Logged>>,
}

impl Uplink {
    fn log(&self) -> Vec<Logged> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

struct Upstream {
    url: String,
    uplink: Arc<Uplink>,
    task: JoinHandle<()>,
}

impl Upstream {
    async fn start(repo: Arc<Repository>, stop: watch::Receiver<bool>) -> Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the upstream server on 127.0.0.1")?;
        let addr = listener
            .local_addr()
            .context("reading the upstream server's address")?;
        let uplink = Arc::new(Uplink::default());
        let task = tokio::spawn(serve_upstream(listener, repo, uplink.clone(), stop));
        Ok(Upstream {
            url: format!("http://{addr}{UPSTREAM_PREFIX}"),
            uplink,
            task,
        })
    }

    /// The accept loop ends on the stop signal; give it a moment, then make sure.
    async fn stop(self) {
        let abort = self.task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

/// Accepts connections until `stop` turns true; open connections are dropped then.
async fn serve_upstream(
    listener: TcpListener,
    repo: Arc<Repository>,
    uplink: Arc<Uplink>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        while conns.try_join_next().is_some() {}
        match accepted {
            Ok((tcp, _)) => {
                let (repo, uplink) = (repo.clone(), uplink.clone());
                let svc = service_fn(move |req| answer(req, repo.clone(), uplink.clone()));
                conns.spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
            Err(e) => {
                // Out of descriptors and the like: do not spin.
                tracing::warn!(error = %e, "upstream: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    conns.shutdown().await;
}

async fn answer(
    req: Request<Incoming>,
    repo: Arc<Repository>,
    uplink: Arc<Uplink>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let file = path
        .strip_prefix(UPSTREAM_PREFIX)
        .and_then(|p| repo.files.get(p))
        .cloned();
    let (status, body, len) = match (req.method(), file) {
        (&Method::GET, Some(b)) => (StatusCode::OK, counted(b.clone(), uplink.clone()), b.len()),
        (&Method::HEAD, Some(b)) => (StatusCode::OK, Empty::new().boxed_unsync(), b.len()),
        (&Method::GET | &Method::HEAD, None) => {
            (StatusCode::NOT_FOUND, Empty::new().boxed_unsync(), 0)
        }
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            Empty::new().boxed_unsync(),
            0,
        ),
    };
    uplink.requests.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut l) = uplink.log.lock() {
        l.push(Logged {
            path,
            status: status.as_u16(),
            len: if req.method() == Method::GET {
                len as u64
            } else {
                0
            },
        });
    }
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len as u64));
    Ok(resp)
}

/// A body in 256 KiB frames that adds each frame to the uplink's byte count as it is sent.
fn counted(b: Bytes, uplink: Arc<Uplink>) -> Body {
    const CHUNK: usize = 256 * 1024;
    let chunks: Vec<Bytes> = (0..b.len())
        .step_by(CHUNK)
        .map(|at| b.slice(at..(at + CHUNK).min(b.len())))
        .collect();
    let frames = futures_util::stream::iter(chunks).map(move |c| {
        uplink.bytes.fetch_add(c.len() as u64, Ordering::Relaxed);
        Ok::<_, Infallible>(Frame::data(c))
    });
    StreamBody::new(frames).boxed_unsync()
}

// ---------------------------------------------------------------------------------------------
// The site: three nodes on loopback, static peers.

struct SiteNode {
    node: Arc<Node>,
    /// `http://127.0.0.1:PORT`
    url: String,
    task: JoinHandle<Result<(), NodeError>>,
}

struct Site {
    nodes: Vec<SiteNode>,
}

impl Site {
    async fn start(
        dir: &std::path::Path,
        upstream: &str,
        stop: &watch::Receiver<bool>,
    ) -> Result<Site> {
        let mut attempt = 0;
        let nodes = loop {
            attempt += 1;
            let base = match attempt {
                1 => dir.to_path_buf(),
                n => dir.join(format!("retry-{n}")),
            };
            match open_nodes(&base, upstream) {
                Ok(nodes) => break nodes,
                // Another program took a QUIC port between our picking it and the node
                // binding it: pick again.
                Err(e)
                    if attempt < START_ATTEMPTS
                        && matches!(
                            e.downcast_ref::<NodeError>(),
                            Some(NodeError::Site(SiteError::Listen { .. }))
                        ) =>
                {
                    tracing::warn!(error = %e, "QUIC port taken meanwhile; picking new ports");
                }
                Err(e) => return Err(e.context("opening the nodes")),
            }
        };
        let nodes = nodes
            .into_iter()
            .map(|node| SiteNode {
                url: format!("http://{}", node.http_addr()),
                task: tokio::spawn(node.clone().run(stop.clone())),
                node,
            })
            .collect();
        Ok(Site { nodes })
    }

    /// Until every node has a live connection to both others.
    async fn wait_joined(&self) -> Result<()> {
        let deadline = Instant::now() + JOIN_TIMEOUT;
        while self
            .nodes
            .iter()
            .any(|n| n.node.peers.live().len() < NODES - 1)
        {
            if Instant::now() > deadline {
                let peers: Vec<_> = self
                    .nodes
                    .iter()
                    .map(|n| n.node.status()["peers"].clone())
                    .collect();
                bail!(
                    "the nodes did not all join within {} s; their peer tables: {}",
                    JOIN_TIMEOUT.as_secs(),
                    serde_json::Value::from(peers)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Until no node has a transfer running (the counters are final for the step).
    async fn settle(&self) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while self.nodes.iter().any(|n| n.node.fetcher.in_flight() > 0) && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Peers count bytes_to_peers as they hand chunks to QUIC, a moment before they land.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// The caller has sent `true` on the stop channel: wait for every node to finish.
    async fn stop(self) -> Result<()> {
        for (i, n) in self.nodes.into_iter().enumerate() {
            let abort = n.task.abort_handle();
            match tokio::time::timeout(STOP_TIMEOUT, n.task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => bail!("node {} stopped with an error: {e}", i + 1),
                Ok(Err(e)) => bail!("node {} task failed: {e}", i + 1),
                Err(_) => {
                    abort.abort();
                    bail!(
                        "node {} did not stop within {} s",
                        i + 1,
                        STOP_TIMEOUT.as_secs()
                    );
                }
            }
        }
        Ok(())
    }
}

/// Opens three nodes whose configs name each other's QUIC ports.
fn open_nodes(dir: &std::path::Path, upstream: &str) -> Result<Vec<Arc<Node>>> {
    let quic = free_udp_ports(NODES).context("picking free QUIC ports on 127.0.0.1")?;
    (0..NODES)
        .map(|i| {
            let peers: Vec<String> = (0..NODES)
                .filter(|j| *j != i)
                .map(|j| format!("\"127.0.0.1:{}\"", quic[j]))
                .collect();
            // A TOML string, quoted and escaped whatever the temporary directory's name.
            let data_dir =
                toml::Value::String(dir.join(format!("node{}", i + 1)).display().to_string());
            let text = format!(
                r#"
[node]
data_dir = {data_dir}
http_listen = "127.0.0.1:0"
quic_listen = "127.0.0.1:{quic}"
site = "example"

[discovery]
mdns = false
peers = [{peers}]

[upstream]
connect_timeout_secs = 2
read_timeout_secs = 10
retries = 1

[[repo]]
name = "{REPO}"
urls = ["{upstream}"]
"#,
                quic = quic[i],
                peers = peers.join(", "),
            );
            let cfg = Config::parse(&text, "example")?;
            Ok(Node::open(cfg, false)?)
        })
        .collect()
}

/// `n` distinct UDP ports free on 127.0.0.1 right now.
fn free_udp_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let socks = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    socks
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Clients: plain GETs, every package checked against its sha256.

#[derive(Clone)]
struct Clients {
    http: reqwest::Client,
    received: Arc<AtomicU64>,
    checked: Arc<AtomicU64>,
}

impl Clients {
    fn new() -> Result<Clients> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Clients {
            http,
            received: Arc::default(),
            checked: Arc::default(),
        })
    }

    async fn get(&self, client: usize, node: &str, path: &str) -> Result<Bytes> {
        let url = format!("{node}/{REPO}/{path}");
        let what = || format!("client {client}: GET {url}");
        let resp = self.http.get(&url).send().await.with_context(what)?;
        ensure!(
            resp.status() == StatusCode::OK,
            "{}: {}",
            what(),
            resp.status()
        );
        let body = resp.bytes().await.with_context(what)?;
        self.received
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok(body)
    }

    async fn load_metadata(&self, client: usize, node: &str, repo: &Repository) -> Result<()> {
        for path in ["repodata/repomd.xml", repo.primary_href.as_str()] {
            let got = self.get(client, node, path).await?;
            let want = repo.files.get(path).map(|b| sha256_hex(b));
            ensure!(
                want.as_deref() == Some(sha256_hex(&got).as_str()),
                "client {client}: {path} from {node} is not what upstream serves"
            );
            self.checked.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn get_package(&self, client: usize, node: &str, p: &Package) -> Result<()> {
        let got = self.get(client, node, &p.href).await?;
        let sum = sha256_hex(&got);
        ensure!(
            sum == p.sha256,
            "client {client}: {} from {node} has sha256 {sum}, expected {}",
            p.href,
            p.sha256
        );
        self.checked.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

async fn join_all(mut set: JoinSet<Result<()>>) -> Result<()> {
    while let Some(r) = set.join_next().await {
        r.context("a client task failed")??;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The tables

/// The node counters shown, from `/api/status`; the last three are byte counts.
const COLUMNS: [&str; 5] = [
    "hits",
    "from_peers",
    "bytes_from_peers",
    "bytes_to_peers",
    "bytes_fetched_upstream",
];

struct Report {
    uplink_seen: usize,
    uplink_bytes: u64,
    nodes: Vec<[u64; 5]>,
}

impl Report {
    fn new(site: &Site, up: &Upstream) -> Report {
        Report {
            uplink_seen: up.uplink.log().len(),
            uplink_bytes: up.uplink.bytes.load(Ordering::Relaxed),
            nodes: site.nodes.iter().map(counters).collect(),
        }
    }

    /// What crossed the uplink, and how each node's counters moved, since the last step.
    fn step(&mut self, title: &str, site: &Site, up: &Upstream) {
        println!("{title}");
        let log = up.uplink.log();
        let bytes = up.uplink.bytes.load(Ordering::Relaxed);
        let new = log.get(self.uplink_seen..).unwrap_or_default();
        println!(
            "   uplink: {} request{}, {}",
            new.len(),
            if new.len() == 1 { "" } else { "s" },
            human(bytes - self.uplink_bytes)
        );
        for e in new {
            let path = e.path.strip_prefix(UPSTREAM_PREFIX).unwrap_or(&e.path);
            println!("      {} {path} ({})", e.status, human(e.len));
        }
        self.uplink_seen = log.len();
        self.uplink_bytes = bytes;
        let now: Vec<[u64; 5]> = site.nodes.iter().map(counters).collect();
        let deltas: Vec<[u64; 5]> = now
            .iter()
            .zip(&self.nodes)
            .map(|(n, o)| std::array::from_fn(|k| n[k].saturating_sub(o[k])))
            .collect();
        table("this step", &deltas);
        self.nodes = now;
        println!();
    }

    fn totals(&self, site: &Site) {
        let now: Vec<[u64; 5]> = site.nodes.iter().map(counters).collect();
        println!("totals");
        table("whole run", &now);
    }
}

fn counters(n: &SiteNode) -> [u64; 5] {
    let s = n.node.status();
    COLUMNS.map(|k| s[k].as_u64().unwrap_or(0))
}

fn table(label: &str, rows: &[[u64; 5]]) {
    print!("   {label:<10}");
    for c in COLUMNS {
        print!("  {c:>w$}", w = c.len().max(8));
    }
    println!();
    for (i, r) in rows.iter().enumerate() {
        print!("   node {:<5}", i + 1);
        for (k, c) in COLUMNS.iter().enumerate() {
            let v = if k >= 2 {
                human(r[k])
            } else {
                r[k].to_string()
            };
            print!("  {v:>w$}", w = c.len().max(8));
        }
        println!();
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn mib(n: u64) -> f64 {
    n as f64 / (1u64 << 20) as f64
}

fn human(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", mib(n))
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}
