//! One running node wired together: store, upstream client, fetcher, metadata snapshots,
//! counters and the HTTP server, plus the status report they feed.
//!
//! `main.rs` only parses the command line and calls in here. This module holds no policy of
//! its own: it builds the parts, runs start-up recovery (with the start-up eviction run of
//! `[store]`), and starts the background chores (flushing last-access times with the periodic
//! eviction check, deleting passed-through files, keeping the traffic history). Its status adds
//! the dashboard's parts: `history`, `recent_warnings`, `transfers`, peers' `state` and
//! `last_contact_secs`, and `health`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::fetch::Fetcher;
use crate::history::{History, Observed};
use crate::peer::{Peers, SiteError, server};
use crate::snapshot::{Snapshots, needs_check};
use crate::stats::Stats;
use crate::store::{Origin, StartUp, Store, StoreError, now_secs};
use crate::uplink::{Now, Scheduler, Uplink};
use crate::upstream::Upstream;

/// The uplink budget's count, kept across restarts (`<data_dir>/uplink-budget.json`).
const BUDGET_FILE: &str = "uplink-budget.json";

/// The stored budget count, if there is a readable one.
fn load_budget(dir: &std::path::Path) -> Option<crate::uplink::BudgetState> {
    let bytes = std::fs::read(dir.join(BUDGET_FILE)).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "the stored uplink budget count is unreadable; counting from zero");
            None
        }
    }
}

/// Asks upstream for new metadata of every tree this node serves, at the freshness interval and
/// inside `[uplink] background_hours`, so a new snapshot (and the fixes it names) is at the site
/// before any client asks. Runs until `stop` turns true.
async fn refresh_metadata(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let Some(every) = node.cfg.metadata.scheduled_check() else {
        return;
    };
    let fresh = node.snapshots.freshness();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let now = Now::system();
        if !crate::uplink::in_windows(&node.cfg.uplink.background_hours, now.local.time()) {
            continue;
        }
        let due: Vec<(String, String)> = node
            .store
            .snapshots()
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, s)| needs_check(s.checked_at, now_secs(), fresh))
            .filter_map(|(key, _)| {
                let (repo, tree) = key.split_once('/')?;
                node.cfg
                    .repo(repo)
                    .map(|_| (repo.to_string(), tree.to_string()))
            })
            .collect();
        for (repo, tree) in due {
            if let Err(e) = node.snapshots.current(&repo, &tree).await {
                tracing::debug!(repo, tree, error = %e, "scheduled metadata check failed");
            }
        }
    }
}

impl crate::http::Report for Node {
    fn status(&self) -> serde_json::Value {
        Node::status(self)
    }
    fn metrics(&self) -> String {
        Node::metrics(self)
    }
}

/// Tells every live peer this node's demand on the uplink, about once a second and at once
/// when it changes, until `stop` turns true (see `uplink::share`).
async fn announce(uplink: Arc<Uplink>, peers: Arc<Peers>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = uplink.changed() => {}
            _ = tokio::time::sleep(crate::uplink::share::ANNOUNCE_EVERY / 4) => {}
            _ = stop.changed() => return,
        }
        let now = Now::system();
        let due = {
            let mut s = uplink.lock();
            s.announcement_due(now).then(|| s.announce(now))
        };
        let Some(a) = due else { continue };
        let sends = peers.live().into_iter().map(|p| {
            let (peers, a) = (peers.clone(), a.clone());
            async move {
                if let Err(e) = peers.announce(&p, &a).await {
                    tracing::debug!(peer = %p.id, error = %e, "could not tell a peer our uplink demand");
                }
            }
        });
        futures_util::future::join_all(sends).await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot open the store in {dir}: {source}")]
    Store { dir: String, source: StoreError },
    #[error("cannot build the upstream HTTPS client: {0}")]
    Client(String),
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Site(#[from] SiteError),
    #[error("cannot set up the bundle API: {0}")]
    Admin(#[from] crate::admin::AdminError),
    #[error("cannot load this node's key: {0}")]
    Identity(#[from] crate::peer::identity::IdentityError),
}

pub struct Node {
    pub cfg: Config,
    pub store: Store,
    pub peers: Arc<Peers>,
    pub fetcher: Arc<Fetcher>,
    pub snapshots: Arc<Snapshots>,
    pub stats: Arc<Stats>,
    pub uplink: Arc<Uplink>,
    pub prefetch: Arc<crate::prefetch::Queue>,
    /// `export`, `import` and `have` while the node runs.
    pub admin: Arc<crate::admin::Admin>,
    /// Traffic since install and by day, and recent warnings (the dashboard's figures).
    pub history: History,
    pub started: Instant,
    http: std::sync::Mutex<Option<std::net::TcpListener>>,
    http_addr: SocketAddr,
}

impl Node {
    /// Opens the store (running recovery), binds the HTTP and QUIC ports and builds the parts.
    /// `mdns`: announce and browse by multicast DNS (the config's setting, unless the command
    /// line turned it off).
    pub fn open(cfg: Config, mdns: bool) -> Result<Arc<Self>, NodeError> {
        let dir = cfg.data_dir();
        let start = StartUp {
            policy: Some(cfg.store_policy()),
            ..StartUp::default()
        };
        let (store, rec) = Store::open_with(&dir, &start).map_err(|source| NodeError::Store {
            dir: dir.display().to_string(),
            source,
        })?;
        if rec.temporaries + rec.orphan_blobs + rec.rows_dropped > 0 {
            tracing::warn!(
                temporaries = rec.temporaries,
                orphan_blobs = rec.orphan_blobs,
                index_rows_dropped = rec.rows_dropped,
                "start-up recovery cleaned what an earlier crash left (unfinished downloads, installs or evictions); dropped files will be fetched again"
            );
        }
        if let Some(r) = rec.eviction.as_ref().filter(|r| r.evicted.files > 0) {
            tracing::info!(
                files = r.evicted.files,
                bytes = r.evicted.bytes,
                kept_snapshot = r.kept.snapshot.files,
                kept_pinned = r.kept.pinned.files,
                kept_recent = r.kept.recent.files,
                "start-up eviction: the store was over its [store] limits; the least recently used files were deleted"
            );
        }
        if let Some((before, after)) = rec.index_bytes {
            tracing::info!(before, after, "index compacted after a large eviction");
        }
        let limits = cfg.store_policy().limits;
        tracing::info!(
            max_size = %limits.max_size.map_or("none".to_string(), |m| crate::units::Size(m).to_string()),
            min_free = %crate::units::Size(limits.min_free),
            pinned = ?cfg.pinned,
            "store limits"
        );
        let upstream = Upstream::new(&cfg).map_err(|e| NodeError::Client(e.to_string()))?;
        let uplink = Uplink::new(Scheduler::new(
            &cfg.uplink,
            load_budget(&dir),
            Now::system(),
        ));
        let stats = Arc::new(Stats::default());
        let addr = cfg.node.http_listen;
        let http = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|_| l))
            .map_err(|source| NodeError::Listen { addr, source })?;
        let http_addr = http.local_addr().unwrap_or(addr);
        let http_port = http_addr.port();
        let peers = Peers::open(&cfg, http_port, mdns, stats.clone())?;
        let seeds = Arc::new(crate::seed::Seeds::new(
            cfg.seed.dirs.clone(),
            peers.site.clone(),
        ));
        let fetcher = Fetcher::new(
            store.clone(),
            Arc::new(upstream),
            Some(peers.clone()),
            Some(seeds),
            stats.clone(),
            cfg.upstream.retries,
            Some(uplink.clone()),
        );
        let snapshots = Snapshots::new(
            store.clone(),
            fetcher.clone(),
            stats.clone(),
            cfg.metadata.clone(),
            peers.site.has_key() || cfg.node.trust_lan,
        );
        let prefetch = crate::prefetch::Queue::new(
            crate::prefetch::Settings {
                repos: cfg
                    .repos
                    .iter()
                    .map(|r| (r.name.clone(), cfg.is_mirrored(&r.name)))
                    .collect(),
                days: cfg.uplink.prefetch_days,
            },
            store.clone(),
            fetcher.clone(),
            Some(peers.clone()),
            uplink.clone(),
        );
        let admin = crate::admin::Admin::new(
            cfg.clone(),
            store.clone(),
            snapshots.clone(),
            Arc::new(crate::peer::identity::Identity::load_or_create(&dir)?),
            peers.site.clone(),
            crate::admin::load_or_create_token(&dir)?,
        );
        let history = History::open(&store);
        Ok(Arc::new(Self {
            admin,
            cfg,
            history,
            store,
            peers,
            fetcher,
            snapshots,
            stats,
            uplink,
            prefetch,
            started: Instant::now(),
            http: std::sync::Mutex::new(Some(http)),
            http_addr,
        }))
    }

    /// Serves until `shutdown` turns true.
    pub async fn run(
        self: Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), NodeError> {
        let addr = self.cfg.node.http_listen;
        let std_listener = self.http.lock().ok().and_then(|mut l| l.take());
        let listener = std_listener
            .ok_or_else(|| std::io::Error::other("the node is already running"))
            .and_then(TcpListener::from_std)
            .map_err(|source| NodeError::Listen { addr, source })?;
        let local = listener.local_addr().unwrap_or(addr);
        tracing::info!(
            http = %local,
            data_dir = %self.cfg.data_dir().display(),
            repos = ?self.cfg.repos.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            "lanmirror node serving; set clients up with: curl -fsS http://<this host>:{}/setup/client.sh | sudo sh", local.port()
        );
        tracing::info!(
            node_id = %self.peers.me,
            site = %self.cfg.node.site,
            site_key = self.peers.site.has_key(),
            quic = %self.peers.quic_addr(),
            mdns = self.peers.mdns(),
            static_peers = self.cfg.discovery.peers.len(),
            "sharing with the site's other nodes over QUIC"
        );
        if let Some(w) = self.open_site_warning() {
            tracing::warn!("{w}");
        }
        let mut chores = vec![
            tokio::spawn(self.peers.clone().keep_connected(shutdown.clone())),
            tokio::spawn(server::serve(
                Arc::new(server::Local {
                    cfg: self.cfg.clone(),
                    store: self.store.clone(),
                    fetcher: self.fetcher.clone(),
                    snapshots: self.snapshots.clone(),
                    peers: self.peers.clone(),
                    stats: self.stats.clone(),
                    uplink: self.uplink.clone(),
                }),
                shutdown.clone(),
            )),
        ];
        chores.push(tokio::spawn(refresh_metadata(
            self.clone(),
            shutdown.clone(),
        )));
        chores.push(tokio::spawn(
            self.prefetch
                .clone()
                .run(self.snapshots.switches(), shutdown.clone()),
        ));
        chores.push(tokio::spawn(announce(
            self.uplink.clone(),
            self.peers.clone(),
            shutdown.clone(),
        )));
        if self.peers.mdns() {
            chores.push(tokio::spawn(crate::discovery::run(
                self.peers.clone(),
                shutdown.clone(),
            )));
        }
        // Every 5 s: delete passed-through files past their grace period. Every 60 s: record
        // last-access times, then evict if a [store] limit is crossed.
        let flusher = {
            let node = self.clone();
            let mut stop = shutdown.clone();
            tokio::spawn(async move {
                for tick in 1u64.. {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = stop.changed() => break,
                    }
                    node.store.sweep_passing();
                    node.history.observe(&node.observed());
                    if tick % 12 != 0 {
                        continue;
                    }
                    if let Err(e) = node.history.flush().await {
                        tracing::warn!(error = %e, "could not record the traffic history");
                    }
                    if let Err(e) = node.store.flush_access().await {
                        tracing::warn!(error = %e, "could not record last-access times");
                    }
                    node.save_budget();
                    node.store.evict_if_needed().await;
                }
            })
        };
        let site = Arc::new(crate::http::Site {
            cfg: self.cfg.clone(),
            store: self.store.clone(),
            snapshots: self.snapshots.clone(),
            fetcher: self.fetcher.clone(),
            stats: self.stats.clone(),
            report: self.clone(),
            admin: self.admin.clone(),
        });
        crate::http::serve(listener, site, &mut shutdown).await;
        // A bundle job ends after its current file (the runtime waits for it).
        self.admin.stop();
        let _ = flusher.await;
        for c in chores {
            let _ = tokio::time::timeout(Duration::from_secs(3), c).await;
        }
        if let Err(e) = self.store.flush_access().await {
            tracing::warn!(error = %e, "could not record last-access times");
        }
        self.history.observe(&self.observed());
        if let Err(e) = self.history.flush().await {
            tracing::warn!(error = %e, "could not record the traffic history");
        }
        self.save_budget();
        tracing::info!("stopped");
        Ok(())
    }

    /// Writes the uplink budget's count (a crash loses at most what was counted since).
    fn save_budget(&self) {
        let state = self.uplink.lock().budget_state();
        let path = self.cfg.data_dir().join(BUDGET_FILE);
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec(&state)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "could not record the uplink budget's count");
        }
    }

    /// What a node without a site key must say at start-up and in its status.
    pub fn open_site_warning(&self) -> Option<&'static str> {
        if self.peers.site.has_key() {
            return None;
        }
        Some(if self.cfg.node.trust_lan {
            "no site key, and trust_lan = true: any host on this LAN can join the site, ask for files, and hand this node metadata whenever it cannot reach upstream; set [node] site_key_file to restrict"
        } else {
            "no site key: any host on this LAN can join the site and ask for files (what it sends is verified; metadata is never taken from it); set [node] site_key_file to restrict"
        })
    }

    /// What the history looks at: the counters, the repos whose upstream is unreachable, and
    /// whether the store passes downloads through.
    fn observed(&self) -> Observed {
        let mut o = Observed::from_stats(&self.stats);
        o.offline = self
            .cfg
            .repos
            .iter()
            .filter(|r| self.fetcher.upstream().is_offline(&r.name))
            .map(|r| r.name.clone())
            .collect();
        o.passthrough = self.store.disk_status().passthrough;
        o
    }

    /// The HTTP address the node is bound to (the real port, also when the config said 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The `/api/status` document.
    pub fn status(&self) -> serde_json::Value {
        let now = now_secs();
        let fresh = self.snapshots.freshness();
        let snaps = self.store.snapshots().unwrap_or_default();
        let repos: Vec<_> = self
            .cfg
            .repos
            .iter()
            .map(|r| {
                let prefix = format!("{}/", r.name);
                let trees: Vec<_> = snaps
                    .iter()
                    .filter_map(|(k, s)| k.strip_prefix(&prefix).map(|t| (t, s)))
                    .map(|(tree, s)| {
                        json!({
                            "tree": tree,
                            "revision": s.revision,
                            "age_secs": now.saturating_sub(s.fetched_at),
                            "checked_secs_ago": now.saturating_sub(s.checked_at),
                            "stale": needs_check(s.checked_at, now, fresh),
                            "source": s.origin.name(),
                            "confirmed_upstream": s.origin == Origin::Upstream,
                            "files": s.files.len(),
                        })
                    })
                    .collect();
                json!({
                    "name": r.name,
                    "pinned": self.cfg.is_pinned(&r.name),
                    "upstream": r.urls,
                    "upstream_offline": self.fetcher.upstream().is_offline(&r.name),
                    "snapshots": trees,
                })
            })
            .collect();
        let (blobs, bytes) = self.store.totals().unwrap_or((0, 0));
        let s = &self.stats;
        let mut v = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": self.started.elapsed().as_secs(),
            "data_dir": self.cfg.data_dir().display().to_string(),
            "repos": repos,
            "requests": Stats::get(&s.requests),
            "hits": Stats::get(&s.hits),
            "misses": Stats::get(&s.misses),
            "joined_transfers": Stats::get(&s.joined),
            "not_found": Stats::get(&s.not_found),
            "refused": Stats::get(&s.refused),
            "bytes_served": Stats::get(&s.bytes_served),
            "bytes_fetched_upstream": Stats::get(&s.bytes_fetched),
            "verify_failures": Stats::get(&s.verify_failures),
            "upstream_errors": Stats::get(&s.upstream_errors),
            "stale_metadata_served": Stats::get(&s.stale_served),
            "zero_copy_responses": Stats::get(&s.zero_copy_responses),
            "in_flight_transfers": self.fetcher.in_flight(),
            "node_id": self.peers.me.to_string(),
            "site": self.cfg.node.site,
            "site_id": self.peers.site.site_id,
            "site_key": self.peers.site.has_key(),
            "trust_lan": self.cfg.node.trust_lan,
            "warnings": self.open_site_warning().into_iter().collect::<Vec<_>>(),
            "mdns": self.peers.mdns(),
            "quic_listen": self.peers.quic_addr().to_string(),
            "peers": self.peers.status(),
            "uplink": self.uplink.lock().status(Now::system()),
            "prefetch": self.prefetch.status(),
            "bundle_job": self.admin.job(),
            "advisories": self.prefetch.advisories(),
            "from_peers": Stats::get(&s.from_peers),
            "bytes_from_peers": Stats::get(&s.bytes_from_peers),
            "bytes_to_peers": Stats::get(&s.bytes_to_peers),
            "peer_requests_served": Stats::get(&s.peer_requests_served),
            "fetched_for_peers": Stats::get(&s.fetched_for_peers),
            "peer_verify_failures": Stats::get(&s.peer_verify_failures),
            "peers_refused": Stats::get(&s.peers_refused),
            "peer_too_slow": Stats::get(&s.peer_too_slow),
            "stored_blobs": blobs,
            "stored_bytes": bytes,
            "store": self.store.disk_status(),
        });
        // The dashboard's figures (see `history` and `dashboard::health`).
        self.history.observe(&self.observed());
        let (history, recent) = self.history.view();
        v["history"] = history;
        v["recent_warnings"] = recent;
        v["transfers"] = json!(self.fetcher.transfers());
        let heard = self.uplink.lock().heard_ago(Instant::now());
        crate::dashboard::health::peer_states(&mut v["peers"], &heard);
        v["health"] = crate::dashboard::health::assess(&v);
        v
    }

    /// The `/metrics` page (Prometheus text format).
    pub fn metrics(&self) -> String {
        use std::fmt::Write;
        let s = &self.stats;
        let mut out = String::new();
        let mut put = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP lanmirror_{name} {help}\n# TYPE lanmirror_{name} {kind}\nlanmirror_{name} {v}"
            );
        };
        put(
            "requests_total",
            "counter",
            "HTTP requests received.",
            Stats::get(&s.requests),
        );
        put(
            "hits_total",
            "counter",
            "Requests answered from the store.",
            Stats::get(&s.hits),
        );
        put(
            "misses_total",
            "counter",
            "Upstream transfers started.",
            Stats::get(&s.misses),
        );
        put(
            "joined_transfers_total",
            "counter",
            "Requests that joined a transfer already running.",
            Stats::get(&s.joined),
        );
        put(
            "not_found_total",
            "counter",
            "Requests answered 404.",
            Stats::get(&s.not_found),
        );
        put(
            "refused_total",
            "counter",
            "Requests refused (bad path, method).",
            Stats::get(&s.refused),
        );
        put(
            "served_bytes_total",
            "counter",
            "Body bytes sent to clients.",
            Stats::get(&s.bytes_served),
        );
        put(
            "upstream_bytes_total",
            "counter",
            "Bytes received from upstream.",
            Stats::get(&s.bytes_fetched),
        );
        put(
            "verify_failures_total",
            "counter",
            "Downloads refused because they did not match metadata.",
            Stats::get(&s.verify_failures),
        );
        put(
            "upstream_errors_total",
            "counter",
            "Transfers that failed upstream.",
            Stats::get(&s.upstream_errors),
        );
        put(
            "stale_metadata_served_total",
            "counter",
            "Times metadata was served unconfirmed by upstream.",
            Stats::get(&s.stale_served),
        );
        put(
            "zero_copy_responses_total",
            "counter",
            "Hits answered with sendfile.",
            Stats::get(&s.zero_copy_responses),
        );
        for (name, help, v) in [
            (
                "peer_files_total",
                "Files got from the site (a holder or the downloader), verified.",
                &s.from_peers,
            ),
            (
                "peer_bytes_received_total",
                "Bytes received from peers.",
                &s.bytes_from_peers,
            ),
            (
                "peer_bytes_sent_total",
                "Bytes sent to peers.",
                &s.bytes_to_peers,
            ),
            (
                "peer_requests_served_total",
                "Requests from peers answered.",
                &s.peer_requests_served,
            ),
            (
                "fetched_for_peers_total",
                "Transfers run as the site's downloader for a peer.",
                &s.fetched_for_peers,
            ),
            (
                "peer_verify_failures_total",
                "Peer bytes that failed verification (peer put aside).",
                &s.peer_verify_failures,
            ),
            (
                "peers_refused_total",
                "Peer connections refused either way (site or site key).",
                &s.peers_refused,
            ),
        ] {
            put(name, "counter", help, Stats::get(v));
        }
        let disk = self.store.disk_status();
        put(
            "evictions_total",
            "counter",
            "Files evicted to keep the store within [store] max_size and min_free.",
            disk.evicted_files,
        );
        put(
            "evicted_bytes_total",
            "counter",
            "Bytes of the files evicted.",
            disk.evicted_bytes,
        );
        put(
            "passed_through_total",
            "counter",
            "Downloads served but not kept because nothing more could be evicted.",
            disk.passed_through_files,
        );
        put(
            "store_passthrough",
            "gauge",
            "1 while new downloads are passed through (the store is full of protected files).",
            u64::from(disk.passthrough),
        );
        put(
            "stored_bytes",
            "gauge",
            "Bytes of the files the store keeps.",
            disk.stored_bytes,
        );
        if let Some(free) = disk.free_bytes {
            put(
                "filesystem_free_bytes",
                "gauge",
                "Free bytes on the data directory's filesystem.",
                free,
            );
        }
        put(
            "live_peers",
            "gauge",
            "Admitted, connected peers.",
            self.peers.live().len() as u64,
        );
        put(
            "in_flight_transfers",
            "gauge",
            "Upstream transfers running now.",
            self.fetcher.in_flight() as u64,
        );
        let now = now_secs();
        let _ = writeln!(
            out,
            "# HELP lanmirror_snapshot_age_seconds Seconds since the tree's metadata changed.\n# TYPE lanmirror_snapshot_age_seconds gauge"
        );
        for (k, snap) in self.store.snapshots().unwrap_or_default() {
            let label = k.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(
                out,
                "lanmirror_snapshot_age_seconds{{tree=\"{label}\"}} {}",
                now.saturating_sub(snap.fetched_at)
            );
        }
        let uplink = self.uplink.lock().status(Now::system());
        crate::metrics::write(
            &mut out,
            &crate::metrics::Inputs {
                stats: s,
                upstream_latency: self.fetcher.upstream().latency.snapshot(),
                disk: &disk,
                uplink: &uplink,
            },
        );
        out
    }
}
