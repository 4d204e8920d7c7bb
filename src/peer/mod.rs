//! The site: the live set of peer nodes, the QUIC connections to them, and the questions a node
//! asks them (who holds this checksum, send me this blob, fetch this for the site, what is your
//! metadata snapshot).
//!
//! Peers come from mDNS (`discovery`), from `[discovery] peers`, and from nodes that dialled us
//! and were admitted. Each node dials its own connection to each peer (mutual TLS, the peer's id
//! pinned when mDNS advertised it, then a `Hello`/`Welcome` exchange that checks the site id and
//! the site-key proofs). A peer whose connection fails is retried with a growing back-off; a
//! peer that sent bytes that failed verification is put aside for [`ASIDE`]. Only admitted,
//! connected peers not put aside are *live*, and only live peers take part in choosing an
//! item's downloader ([`rendezvous`]).
//!
//! Policy here is pure and unit-tested ([`rendezvous`], [`backoff`]); bytes from peers are
//! verified by `fetch`, never trusted here. Not here: serving requests (`server`), finding
//! peers on the LAN (`discovery`), or deciding what a request needs (`fetch`, `snapshot`).

pub mod identity;
pub mod server;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;

use crate::checksum::{Checksum, ChecksumAlgo};
use crate::config::{Config, QuicConfig};
use crate::hash::{self, BlobId};
use crate::stats::Stats;
pub use identity::{Identity, NodeId, Role, SiteAuth};
use wire::{Request, Response};

/// How long a peer that sent bad bytes is left out.
pub const ASIDE: Duration = Duration::from_secs(120);
/// Dial + handshake + hello.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// From sending a request to its response header.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// A `Download` answer waits for the downloader's upstream to answer headers.
const DOWNLOAD_ANSWER_TIMEOUT: Duration = Duration::from_secs(40);
/// Longest silence inside a body from a peer before it counts as stalled.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a `Have` round waits for slow peers.
const HAVE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Connections to this node not admitted yet (handshake or hello under way), at most, in total
/// (also quinn's queue of handshakes not yet accepted); `server` caps them per address too.
pub const MAX_PENDING: usize = 32;
/// Most entries the peer table holds (static, mDNS and incoming together): a LAN full of
/// spoofed adverts cannot grow it further.
pub const MAX_PEERS: usize = 64;

/// Slowest pace at which a peer that holds a file may send it: 128 KiB/s (1 Mbit/s), far
/// below any LAN, so only a broken or hostile peer is slower.
pub const HOLDER_MIN_RATE: u64 = 128 * 1024;
/// Slowest pace for the site's downloader, which streams as its own upstream delivers: 16 KiB/s,
/// the poorest uplink lanmirror is meant for.
pub const DOWNLOADER_MIN_RATE: u64 = 16 * 1024;
/// Time every attempt gets on top of what its size needs (connection, first bytes).
pub const DEADLINE_SLACK: Duration = Duration::from_secs(15);

/// How long an attempt to take `bytes` from a peer may last at `min_rate` bytes per second:
/// past it, the peer is too slow and the transfer goes on from the next source. For a body of
/// unknown length, call it with the bytes received so far: each byte buys time.
pub fn transfer_deadline(bytes: u64, min_rate: u64) -> Duration {
    DEADLINE_SLACK
        .saturating_add(Duration::from_secs(bytes / min_rate.max(1)))
        .min(LONGEST_DEADLINE)
}

/// Cap on [`transfer_deadline`], so a size nobody checked cannot overflow a clock.
const LONGEST_DEADLINE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Errors of questions asked of the site. The text after the peer's name may carry what the
/// peer sent (a refusal reason, an error message, a close reason): it is escaped when shown
/// ([`printable`]), so a peer cannot forge log lines.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    #[error("peer {} unreachable: {}", .0, printable(.1))]
    Unreachable(String, String),
    #[error("peer {} refused this node: {}", .0, printable(.1))]
    Refused(String, String),
    #[error("peer {} broke the protocol: {}", .0, printable(.1))]
    Protocol(String, String),
    #[error("peer {}: {}", .0, printable(.1))]
    Answered(String, String),
    #[error("peer {0} does not have it")]
    NotFound(String),
    #[error("peer {0} timed out")]
    Timeout(String),
}

/// Text a peer controls, made safe to log and show: control characters (newlines above all)
/// escaped, and at most 512 characters.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(520));
    for (i, c) in text.chars().enumerate() {
        if i == 512 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// A content reference on the wire: `blake3:<hex>` or `<metadata algo>:<hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentRef {
    Blake3(BlobId),
    Sum(Checksum),
}

impl ContentRef {
    pub fn parse(s: &str) -> Option<ContentRef> {
        let (algo, hexd) = s.split_once(':')?;
        if algo == "blake3" {
            return hash::parse_blob_id(hexd).map(ContentRef::Blake3);
        }
        let a = ChecksumAlgo::from_name(algo)?;
        Checksum::from_hex(a, hexd).ok().map(ContentRef::Sum)
    }

    pub fn text(&self) -> String {
        match self {
            ContentRef::Blake3(b) => format!("blake3:{}", hash::hex(b)),
            ContentRef::Sum(c) => format!("{}:{}", c.algo.name(), c.to_hex()),
        }
    }
}

/// The node whose score for `key` is highest: the item's downloader. Every node computes the same
/// answer from the same live set, and an item moves only when its own downloader leaves.
pub fn rendezvous(key: &str, nodes: impl IntoIterator<Item = NodeId>) -> Option<NodeId> {
    nodes.into_iter().max_by_key(|id| {
        let mut h = blake3::Hasher::new();
        h.update(&id.0);
        h.update(key.as_bytes());
        let b = h.finalize();
        let mut x = [0u8; 8];
        x.copy_from_slice(&b.as_bytes()[..8]);
        (u64::from_be_bytes(x), *id)
    })
}

/// Wait before redialling a peer after `failures` failures in a row: 1 s doubling to 60 s.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs((1u64 << failures.saturating_sub(1).min(6)).min(60))
}

/// Where a peer entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Mdns,
    Static,
    /// It dialled us and was admitted; we dial it back on the port it gave.
    Incoming,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Mdns => "mdns",
            Via::Static => "static",
            Via::Incoming => "incoming",
        }
    }
}

struct Entry {
    via: Via,
    /// "host:port" for static peers (resolved at each dial); else the addresses learnt.
    target: String,
    addrs: Vec<SocketAddr>,
    advertised: Option<NodeId>,
    id: Option<NodeId>,
    http_port: Option<u16>,
    conn: Option<quinn::Connection>,
    connecting: bool,
    failures: u32,
    retry_at: Option<Instant>,
    aside_until: Option<Instant>,
    last_error: Option<String>,
    /// mDNS said goodbye while the connection was alive: drop the entry when it ends.
    said_goodbye: bool,
}

impl Entry {
    fn new(via: Via, target: String) -> Entry {
        Entry {
            via,
            target,
            addrs: Vec::new(),
            advertised: None,
            id: None,
            http_port: None,
            conn: None,
            connecting: false,
            failures: 0,
            retry_at: None,
            aside_until: None,
            last_error: None,
            said_goodbye: false,
        }
    }

    fn live(&self, now: Instant) -> Option<(NodeId, &quinn::Connection)> {
        let conn = self.conn.as_ref()?;
        if conn.close_reason().is_some() || self.aside_until.is_some_and(|t| t > now) {
            return None;
        }
        Some((self.id?, conn))
    }
}

/// A live peer to ask.
#[derive(Clone)]
pub struct Peer {
    pub id: NodeId,
    conn: quinn::Connection,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peer {}", self.id)
    }
}

impl Peer {
    fn name(&self) -> String {
        format!("{} ({})", short(&self.id), self.conn.remote_address())
    }
}

fn short(id: &NodeId) -> String {
    id.to_string()[..8].to_string()
}

/// A body arriving from a peer.
pub struct PeerBody {
    /// Length of the whole file when the peer said it.
    pub total: Option<u64>,
    pub stream: crate::body::ByteStream,
}

/// The site as this node sees it.
pub struct Peers {
    pub me: NodeId,
    pub site: SiteAuth,
    identity: Identity,
    endpoint: quinn::Endpoint,
    transport: Arc<quinn::TransportConfig>,
    http_port: u16,
    quic_addr: SocketAddr,
    mdns: bool,
    table: Mutex<HashMap<String, Entry>>,
    stats: Arc<Stats>,
    wake: tokio::sync::Notify,
    /// Repo name → [`crate::config::RepoConfig::upstream_id`], sent with every request that
    /// names a repo.
    upstream_ids: HashMap<String, String>,
    /// When the table was last found full (warned at most once a minute).
    full_warned: Mutex<Option<Instant>>,
}

/// Transport settings for connections this node dials: it asks, the other side answers with
/// bodies, so the receive windows are large (one stream can fill a gigabit link). The other
/// side may open no streams and send no datagrams: nothing reaches us that we did not ask for.
pub fn transport_config(q: &QuicConfig) -> quinn::TransportConfig {
    let mut t = base_transport(q);
    t.stream_receive_window(quinn::VarInt::from_u32(16 << 20));
    t.receive_window(quinn::VarInt::from_u32(64 << 20));
    t.max_concurrent_bidi_streams(0u32.into());
    t
}

/// Streams an admitted peer may have open on one connection to us.
pub const ADMITTED_STREAMS: u32 = 64;
/// Connection-level receive window of an admitted connection to us (requests only).
const ADMITTED_WINDOW: u32 = 1 << 20;

/// Transport settings for connections to this node. Until admission a stranger gets one
/// stream and windows just large enough for a hello; `server::connection` widens them once the
/// site id and key check out. Peers only send requests this way (small frames), so even an
/// admitted connection keeps small windows.
pub fn server_transport_config(q: &QuicConfig) -> quinn::TransportConfig {
    let mut t = base_transport(q);
    t.stream_receive_window(quinn::VarInt::from_u32(wire::MAX_FRAME as u32 + 4));
    t.receive_window(quinn::VarInt::from_u32(64 * 1024));
    t.max_concurrent_bidi_streams(1u32.into());
    t
}

/// Raises an admitted connection's limits to what a peer of the site needs.
pub(crate) fn admit(conn: &quinn::Connection) {
    conn.set_receive_window(quinn::VarInt::from_u32(ADMITTED_WINDOW));
    conn.set_max_concurrent_bi_streams(ADMITTED_STREAMS.into());
}

fn base_transport(q: &QuicConfig) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.enable_segmentation_offload(q.gso);
    t.initial_mtu(q.initial_mtu);
    if !q.mtu_discovery {
        t.mtu_discovery_config(None);
    }
    t.send_window(64 << 20);
    t.max_concurrent_uni_streams(0u32.into());
    t.datagram_receive_buffer_size(None);
    // Quick detection of a peer that vanished (kill -9, unplugged).
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(8)) {
        t.max_idle_timeout(Some(idle));
    }
    t
}

#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error("cannot listen for QUIC on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl Peers {
    /// Binds the QUIC endpoint (server and client on one socket) and loads the identity.
    pub fn open(
        cfg: &Config,
        http_port: u16,
        mdns: bool,
        stats: Arc<Stats>,
    ) -> Result<Arc<Peers>, SiteError> {
        let dir = cfg.data_dir();
        let identity = Identity::load_or_create(&dir)?;
        let site = SiteAuth::load(&cfg.node.site, cfg.node.site_key_file.as_deref())?;
        let transport = Arc::new(transport_config(&cfg.quic));
        let tls = identity.server_tls()?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| identity::IdentityError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::new(server_transport_config(&cfg.quic)));
        // Handshakes waiting to be accepted, and what they may buffer meanwhile, are bounded.
        server.max_incoming(MAX_PENDING);
        server.incoming_buffer_size(64 * 1024);
        server.incoming_buffer_size_total(4 << 20);
        let addr = cfg.node.quic_listen;
        let endpoint = quinn::Endpoint::server(server, addr)
            .map_err(|source| SiteError::Listen { addr, source })?;
        let quic_addr = endpoint.local_addr().unwrap_or(addr);
        let peers = Arc::new(Peers {
            me: identity.id,
            site,
            identity,
            endpoint,
            transport,
            http_port,
            quic_addr,
            mdns,
            table: Mutex::new(HashMap::new()),
            stats,
            wake: tokio::sync::Notify::new(),
            upstream_ids: cfg
                .repos
                .iter()
                .map(|r| (r.name.clone(), r.upstream_id()))
                .collect(),
            full_warned: Mutex::new(None),
        });
        for p in &cfg.discovery.peers {
            peers.add_static(p);
        }
        Ok(peers)
    }

    /// This node's [`crate::config::RepoConfig::upstream_id`] of `repo` (empty when the repo
    /// is not configured here, which no peer accepts).
    pub fn upstream_id(&self, repo: &str) -> String {
        self.upstream_ids.get(repo).cloned().unwrap_or_default()
    }

    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    fn with_table<R>(&self, f: impl FnOnce(&mut HashMap<String, Entry>) -> R) -> Option<R> {
        self.table.lock().ok().map(|mut t| f(&mut t))
    }

    /// Adds a peer by address ("host:port" of its QUIC port), as `[discovery] peers` does.
    pub fn add_static(&self, target: &str) {
        self.with_table(|t| {
            let key = format!("static:{target}");
            if !t.contains_key(&key) && self.has_room(t) {
                t.insert(key, Entry::new(Via::Static, target.to_string()));
            }
        });
        self.wake.notify_one();
    }

    /// Whether the table may take one more entry; warns (once a minute) when it may not.
    fn has_room(&self, t: &HashMap<String, Entry>) -> bool {
        if t.len() < MAX_PEERS {
            return true;
        }
        let warn = self.full_warned.lock().is_ok_and(|mut w| {
            let due = w.is_none_or(|at| at.elapsed() >= Duration::from_secs(60));
            if due {
                *w = Some(Instant::now());
            }
            due
        });
        if warn {
            tracing::warn!(
                max = MAX_PEERS,
                "the peer table is full; further nodes are ignored (a LAN flooded with adverts?)"
            );
        }
        false
    }

    /// A peer seen by mDNS. The advert's addresses replace the entry's (an advert says where
    /// the node is now, so addresses never pile up).
    pub fn upsert_mdns(&self, name: &str, id: NodeId, addrs: Vec<SocketAddr>, http_port: u16) {
        if id == self.me || addrs.is_empty() {
            return;
        }
        let changed = self.with_table(|t| {
            let key = format!("mdns:{name}");
            if !t.contains_key(&key)
                && !t.contains_key(&format!("incoming:{id}"))
                && !self.has_room(t)
            {
                return false;
            }
            if !t.contains_key(&key) {
                // It may have dialled us first: its entry, and our connection to it, become
                // the mDNS one.
                let mut e = t
                    .remove(&format!("incoming:{id}"))
                    .unwrap_or_else(|| Entry::new(Via::Mdns, name.to_string()));
                e.via = Via::Mdns;
                e.target = name.to_string();
                // A dial still running under the old key is dropped when it ends.
                e.connecting = false;
                t.insert(key.clone(), e);
            }
            let Some(e) = t.get_mut(&key) else {
                return false;
            };
            let mut addrs = addrs;
            addrs.sort();
            addrs.dedup();
            addrs.truncate(8);
            let changed = e.advertised != Some(id) || addrs != e.addrs || e.said_goodbye;
            e.said_goodbye = false;
            if e.advertised.is_some_and(|old| old != id) {
                if e.live(Instant::now()).is_some() {
                    // A live, admitted connection is pinned to the id it proved; an advert
                    // (which anyone on the LAN can send) does not take it over.
                    tracing::warn!(name, live = ?e.id, advertised = %id,
                        "an mDNS advert names another node id for a connected peer; ignored");
                    return false;
                }
                // Another node now answers to this name: forget the old one.
                e.conn = None;
                e.id = None;
                e.failures = 0;
                e.retry_at = None;
            }
            e.advertised = Some(id);
            e.addrs = addrs;
            e.http_port = Some(http_port);
            changed
        });
        if changed == Some(true) {
            tracing::debug!(peer = %id, name, "peer seen on mDNS");
            self.wake.notify_one();
        }
    }

    /// A peer mDNS says left (goodbye or expiry). Anyone on the LAN can send a goodbye, so a
    /// live connection is never closed for one: the entry stays while its connection lives and
    /// is dropped (not redialled) when it ends. An entry without a live connection goes now.
    pub fn remove_mdns(&self, name: &str) {
        let gone = self.with_table(|t| {
            let key = format!("mdns:{name}");
            let e = t.get_mut(&key)?;
            if e.id.is_some() && e.conn.as_ref().is_some_and(|c| c.close_reason().is_none()) {
                e.said_goodbye = true;
                tracing::info!(peer = ?e.id, "mDNS says a peer left, but its connection is alive; keeping it while it lasts");
                return None;
            }
            t.remove(&key)
        });
        if let Some(Some(e)) = gone {
            tracing::info!(peer = ?e.id.or(e.advertised), "peer left the site (mDNS)");
        }
    }

    /// A node that dialled us and was admitted: dial it back if no entry knows it yet.
    pub(crate) fn learn(&self, id: NodeId, addr: SocketAddr) {
        if id == self.me {
            return;
        }
        let added = self.with_table(|t| {
            let known = t.values().any(|e| {
                e.id == Some(id)
                    || e.advertised == Some(id)
                    || e.addrs.contains(&addr)
                    || e.target == addr.to_string()
                    || (e.connecting && e.via == Via::Static)
            });
            if known || !self.has_room(t) {
                return false;
            }
            let mut e = Entry::new(Via::Incoming, addr.to_string());
            e.advertised = Some(id);
            e.addrs = vec![addr];
            t.insert(format!("incoming:{id}"), e);
            true
        });
        if added == Some(true) {
            self.wake.notify_one();
        }
    }

    /// The id pinned for a static peer at `listen` (the address a connecting node says it
    /// listens on), when that is not `id`: another node now answers at that address, and it
    /// is refused both ways.
    pub(crate) fn pinned_elsewhere(&self, id: NodeId, listen: SocketAddr) -> Option<NodeId> {
        self.with_table(|t| {
            t.values()
                .filter(|e| e.via == Via::Static)
                .filter(|e| e.addrs.contains(&listen) || e.target == listen.to_string())
                .find_map(|e| e.advertised.filter(|p| *p != id))
        })
        .flatten()
    }

    /// Admitted, connected peers that are not put aside, one per node id.
    pub fn live(&self) -> Vec<Peer> {
        let now = Instant::now();
        let mut out: Vec<Peer> = Vec::new();
        self.with_table(|t| {
            for e in t.values() {
                if let Some((id, conn)) = e.live(now)
                    && !out.iter().any(|p| p.id == id)
                {
                    out.push(Peer {
                        id,
                        conn: conn.clone(),
                    });
                }
            }
        });
        out.sort_by_key(|p| p.id);
        out
    }

    /// Where the live peers serve HTTP (dnf clients), one entry per node id in node-id order:
    /// the HTTP port it gave in its `Hello`/`Welcome` or mDNS advert, on the address of the
    /// connection to it first, then on the other addresses it is known by (mDNS lists them
    /// all; IPv4-mapped ones as IPv4). A peer whose HTTP port is not known yet is left out.
    pub fn live_http(&self) -> Vec<Vec<SocketAddr>> {
        let now = Instant::now();
        let mut out: Vec<(NodeId, Vec<SocketAddr>)> = Vec::new();
        self.with_table(|t| {
            for e in t.values() {
                if let (Some((id, conn)), Some(port)) = (e.live(now), e.http_port)
                    && !out.iter().any(|(i, _)| *i == id)
                {
                    let mut addrs: Vec<SocketAddr> = Vec::new();
                    for ip in std::iter::once(conn.remote_address().ip())
                        .chain(e.addrs.iter().map(|a| a.ip()))
                    {
                        let a = SocketAddr::new(ip.to_canonical(), port);
                        if !addrs.contains(&a) {
                            addrs.push(a);
                        }
                    }
                    out.push((id, addrs));
                }
            }
        });
        out.sort_by_key(|(id, _)| *id);
        out.into_iter().map(|(_, a)| a).collect()
    }

    /// The live peer that should fetch `key` for the site; `None` when it is this node (or
    /// this node is alone).
    pub fn downloader_for(&self, key: &str) -> Option<Peer> {
        let live = self.live();
        let winner = rendezvous(key, live.iter().map(|p| p.id).chain([self.me]))?;
        live.into_iter().find(|p| p.id == winner)
    }

    /// A peer's content was bad: leave it out for [`ASIDE`].
    pub fn put_aside(&self, peer: &Peer, why: &str) {
        Stats::inc(&self.stats.peer_verify_failures);
        tracing::warn!(peer = %peer.id, addr = %peer.conn.remote_address(), reason = why,
            "peer sent bytes that failed verification; not asking it for {} s", ASIDE.as_secs());
        self.set_aside(peer, format!("sent bad bytes: {why}"));
    }

    /// A peer sent slower than the minimum rate ([`transfer_deadline`]): leave it out for
    /// [`ASIDE`] so the transfer (and the next ones) go on from another source.
    pub fn too_slow(&self, peer: &Peer, why: &str) {
        Stats::inc(&self.stats.peer_too_slow);
        tracing::warn!(peer = %peer.id, addr = %peer.conn.remote_address(), reason = why,
            "peer too slow; going on from the next source and not asking it for {} s", ASIDE.as_secs());
        self.set_aside(peer, format!("too slow: {why}"));
    }

    fn set_aside(&self, peer: &Peer, why: String) {
        self.with_table(|t| {
            for e in t.values_mut().filter(|e| e.id == Some(peer.id)) {
                e.aside_until = Some(Instant::now() + ASIDE);
                e.last_error = Some(why.clone());
            }
        });
    }

    /// A request to a peer failed at the transport level.
    pub fn note_failure(&self, peer: &Peer, why: &str) {
        tracing::debug!(peer = %peer.id, error = why, "peer request failed");
        self.with_table(|t| {
            for e in t.values_mut().filter(|e| e.id == Some(peer.id)) {
                e.last_error = Some(why.to_string());
            }
        });
    }

    /// `/api/status` view of the peer table.
    pub fn status(&self) -> serde_json::Value {
        let now = Instant::now();
        let peers: Vec<_> = self
            .with_table(|t| {
                let mut v: Vec<_> = t
                    .values()
                    .map(|e| {
                        let addr = e
                            .conn
                            .as_ref()
                            .map(|c| c.remote_address().to_string())
                            .or_else(|| e.addrs.first().map(|a| a.to_string()))
                            .unwrap_or_else(|| e.target.clone());
                        json!({
                            "id": e.id.or(e.advertised).map(|i| i.to_string()),
                            "addr": addr,
                            "http_port": e.http_port,
                            "via": e.via.name(),
                            "healthy": e.live(now).is_some(),
                            "failures": e.failures,
                            "put_aside_secs": e.aside_until.map(|t| t.saturating_duration_since(now).as_secs()),
                            "last_error": e.last_error,
                        })
                    })
                    .collect();
                v.sort_by_key(|j| j["addr"].as_str().map(str::to_string));
                v
            })
            .unwrap_or_default();
        json!(peers)
    }

    pub fn mdns(&self) -> bool {
        self.mdns
    }

    /// Keeps a connection to every known peer: dials those without one whose back-off is
    /// over, until `stop` turns true.
    pub async fn keep_connected(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            let now = Instant::now();
            let due: Vec<String> = self
                .with_table(|t| {
                    t.retain(|_, e| {
                        !(e.said_goodbye
                            && !e.connecting
                            && e.conn.as_ref().is_none_or(|c| c.close_reason().is_some()))
                    });
                    t.iter_mut()
                        .filter(|(_, e)| {
                            !e.connecting
                                && e.conn.as_ref().is_none_or(|c| c.close_reason().is_some())
                                && e.retry_at.is_none_or(|r| r <= now)
                        })
                        .map(|(k, e)| {
                            e.connecting = true;
                            k.clone()
                        })
                        .collect()
                })
                .unwrap_or_default();
            for key in due {
                let me = self.clone();
                tokio::spawn(async move { me.dial(&key).await });
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => return,
            }
        }
    }

    async fn dial(self: Arc<Self>, key: &str) {
        let Some(Some((target, addrs, advertised, via))) = self.with_table(|t| {
            t.get(key)
                .map(|e| (e.target.clone(), e.addrs.clone(), e.advertised, e.via))
        }) else {
            return;
        };
        let result = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.connect(&target, addrs, advertised, via),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(PeerError::Timeout(target.clone())),
        };
        let was_up = self
            .with_table(|t| {
                t.get(key)
                    .is_some_and(|e| e.failures == 0 && e.id.is_some())
            })
            .unwrap_or(false);
        let conn_for_watch = self.with_table(|t| {
            let e = t.get_mut(key)?;
            e.connecting = false;
            match result {
                Ok((conn, id, http_port)) => {
                    // Pinned on first contact (a static peer) or by its advert.
                    if e.advertised.is_none() {
                        e.advertised = Some(id);
                    }
                    if via == Via::Static {
                        e.addrs = vec![conn.remote_address()];
                    }
                    e.id = Some(id);
                    e.http_port = Some(http_port);
                    e.failures = 0;
                    e.retry_at = None;
                    e.last_error = None;
                    e.conn = Some(conn.clone());
                    tracing::info!(peer = %id, addr = %conn.remote_address(), via = via.name(), "peer joined the site");
                    if via != Via::Incoming {
                        // Known now by its own entry: drop one made when it dialled us.
                        t.retain(|_, o| !(o.via == Via::Incoming && o.advertised == Some(id)));
                    }
                    Some(Ok(conn))
                }
                Err(err) => {
                    e.failures += 1;
                    e.retry_at = Some(Instant::now() + backoff(e.failures));
                    let refused = matches!(err, PeerError::Refused(..));
                    if refused || e.failures == 1 || was_up {
                        tracing::warn!(peer = %target, error = %err,
                            retry_in_secs = backoff(e.failures).as_secs(),
                            "cannot use peer");
                    }
                    e.last_error = Some(err.to_string());
                    e.conn = None;
                    Some(Err(()))
                }
            }
        });
        if let Some(Some(Ok(conn))) = conn_for_watch {
            let me = self.clone();
            let key = key.to_string();
            tokio::spawn(async move {
                let why = conn.closed().await;
                me.with_table(|t| {
                    if let Some(e) = t.get_mut(&key)
                        && e.conn
                            .as_ref()
                            .is_some_and(|c| c.stable_id() == conn.stable_id())
                    {
                        e.conn = None;
                        e.last_error = Some(printable(&format!("connection lost: {why}")));
                        e.retry_at = Some(Instant::now() + backoff(1));
                        e.failures = e.failures.max(1);
                    }
                });
                tracing::info!(peer = ?conn.remote_address(), reason = %printable(&why.to_string()), "peer connection closed; redialling");
                me.wake.notify_one();
            });
        }
    }

    /// Dials, checks identity and admission. Returns the connection, the peer's id and its
    /// HTTP port.
    async fn connect(
        &self,
        target: &str,
        addrs: Vec<SocketAddr>,
        advertised: Option<NodeId>,
        via: Via,
    ) -> Result<(quinn::Connection, NodeId, u16), PeerError> {
        let unreachable = |e: String| PeerError::Unreachable(target.to_string(), e);
        let addrs = if via == Via::Static {
            tokio::net::lookup_host(target)
                .await
                .map_err(|e| unreachable(format!("cannot resolve: {e}")))?
                .collect()
        } else {
            addrs
        };
        // Prefer an address of the family our socket speaks.
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4() == self.quic_addr.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| unreachable("no address".into()))?;
        // mDNS and dial-back entries pin the advertised id in the handshake; a static peer is
        // checked after it (below), so its log line can say what changed.
        let pin = if via == Via::Static { None } else { advertised };
        let tls = self
            .identity
            .client_tls(pin)
            .map_err(|e| unreachable(e.to_string()))?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| unreachable(e.to_string()))?;
        let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
        cc.transport_config(self.transport.clone());
        let conn = self
            .endpoint
            .connect_with(cc, addr, "lanmirror")
            .map_err(|e| unreachable(e.to_string()))?
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let id = identity::peer_id(&conn)
            .ok_or_else(|| PeerError::Protocol(target.into(), "no certificate".into()))?;
        if id == self.me {
            conn.close(0u32.into(), b"self");
            return Err(PeerError::Refused(
                target.into(),
                "that address is this node itself".into(),
            ));
        }
        if let Some(pinned) = advertised.filter(|p| via == Via::Static && *p != id) {
            conn.close(1u32.into(), b"node id changed");
            Stats::inc(&self.stats.peers_refused);
            return Err(PeerError::Refused(
                target.into(),
                format!(
                    "it now presents node id {id}, but this address was node {pinned} at first contact; if that machine was reinstalled, restart this node to accept its new key"
                ),
            ));
        }
        let exported = SiteAuth::exported(&conn).map_err(unreachable)?;
        let hello = Request::Hello {
            site_id: self.site.site_id.clone(),
            http_port: self.http_port,
            quic_port: self.quic_addr.port(),
            proof: self.site.proof(&exported, Role::Dialler),
        };
        let peer = Peer {
            id,
            conn: conn.clone(),
        };
        let (resp, _) = self.ask(&peer, &hello, ANSWER_TIMEOUT).await?;
        match resp {
            Response::Welcome {
                site_id,
                http_port,
                proof,
            } => {
                let refuse = |why: String| {
                    conn.close(1u32.into(), why.as_bytes());
                    Stats::inc(&self.stats.peers_refused);
                    PeerError::Refused(target.into(), why)
                };
                if site_id != self.site.site_id {
                    return Err(refuse(format!(
                        "it belongs to another site (id {site_id}, ours {})",
                        self.site.site_id
                    )));
                }
                self.site
                    .check(&exported, Role::Listener, proof.as_deref())
                    .map_err(|why| refuse(format!("site key check failed: {why}")))?;
                Ok((conn, id, http_port))
            }
            Response::Refused { reason } => {
                Stats::inc(&self.stats.peers_refused);
                Err(PeerError::Refused(target.into(), reason))
            }
            other => Err(PeerError::Protocol(
                target.into(),
                format!("unexpected answer to hello: {other:?}"),
            )),
        }
    }

    /// Sends one request on a new stream and reads the response header.
    async fn ask(
        &self,
        peer: &Peer,
        req: &Request,
        timeout: Duration,
    ) -> Result<(Response, quinn::RecvStream), PeerError> {
        let name = peer.name();
        let frame =
            wire::encode(req).map_err(|e| PeerError::Protocol(name.clone(), e.to_string()))?;
        let io = async {
            let (mut send, mut recv) = peer
                .conn
                .open_bi()
                .await
                .map_err(|e| PeerError::Unreachable(name.clone(), e.to_string()))?;
            send.write_all(&frame)
                .await
                .map_err(|e| PeerError::Unreachable(name.clone(), e.to_string()))?;
            let _ = send.finish();
            let resp = read_frame::<Response>(&mut recv)
                .await
                .map_err(|e| PeerError::Protocol(name.clone(), e))?;
            Ok::<_, PeerError>((resp, recv))
        };
        match tokio::time::timeout(timeout, io).await {
            Ok(r) => r,
            Err(_) => Err(PeerError::Timeout(name)),
        }
    }

    /// Which of `refs` a peer holds.
    pub async fn have(&self, peer: &Peer, refs: &[ContentRef]) -> Result<Vec<bool>, PeerError> {
        let req = Request::Have {
            checksums: refs.iter().map(ContentRef::text).collect(),
        };
        match self.ask(peer, &req, HAVE_TIMEOUT).await?.0 {
            Response::Holding { have } if have.len() == refs.len() => Ok(have),
            other => Err(unexpected(peer, &other)),
        }
    }

    /// The first live peer that says it holds `r` (asked all at once, briefly).
    pub async fn holder(&self, r: &ContentRef) -> Option<Peer> {
        let live = self.live();
        if live.is_empty() {
            return None;
        }
        let asks = live.into_iter().map(|p| async move {
            let got = self.have(&p, std::slice::from_ref(r)).await;
            (p, got)
        });
        let mut pending: futures_util::stream::FuturesUnordered<_> = asks.collect();
        use futures_util::StreamExt;
        while let Some((p, got)) = pending.next().await {
            match got {
                Ok(v) if v.first() == Some(&true) => return Some(p),
                Ok(_) => {}
                Err(e) => self.note_failure(&p, &e.to_string()),
            }
        }
        None
    }

    /// A stored blob from a peer, from `offset`.
    pub async fn get(
        &self,
        peer: &Peer,
        r: &ContentRef,
        offset: u64,
    ) -> Result<PeerBody, PeerError> {
        let req = Request::Get {
            checksum: r.text(),
            offset,
        };
        let (resp, recv) = self.ask(peer, &req, ANSWER_TIMEOUT).await?;
        match resp {
            Response::Blob { size, .. } if size >= offset => {
                Ok(self.body(peer, recv, Some(size), offset))
            }
            other => Err(unexpected(peer, &other)),
        }
    }

    /// Asks the item's downloader to obtain a file and stream it (from `offset`).
    pub async fn download(
        &self,
        peer: &Peer,
        repo: &str,
        path: &str,
        expected: Option<&crate::store::Expected>,
        offset: u64,
        class: crate::uplink::Class,
    ) -> Result<PeerBody, PeerError> {
        let req = Request::Download {
            repo: repo.into(),
            upstream: self.upstream_id(repo),
            path: path.into(),
            checksum: expected.map(|e| ContentRef::Sum(e.checksum.clone()).text()),
            size: expected.and_then(|e| e.size),
            offset,
            background: class == crate::uplink::Class::Background,
        };
        let (resp, recv) = self.ask(peer, &req, DOWNLOAD_ANSWER_TIMEOUT).await?;
        match resp {
            Response::Stream { total } => Ok(self.body(peer, recv, total, offset)),
            other => Err(unexpected(peer, &other)),
        }
    }

    /// Tells a peer this node's demand on the uplink.
    pub async fn announce(
        &self,
        peer: &Peer,
        a: &crate::uplink::Announcement,
    ) -> Result<(), PeerError> {
        match self
            .ask(peer, &Request::Announce(a.clone()), HAVE_TIMEOUT)
            .await?
            .0
        {
            Response::Ack => Ok(()),
            other => Err(unexpected(peer, &other)),
        }
    }

    /// A peer's current snapshot of `repo/tree`.
    pub async fn snapshot(
        &self,
        peer: &Peer,
        repo: &str,
        tree: &str,
    ) -> Result<wire::SnapshotInfo, PeerError> {
        let req = Request::Snapshot {
            repo: repo.into(),
            upstream: self.upstream_id(repo),
            tree: tree.into(),
        };
        match self.ask(peer, &req, ANSWER_TIMEOUT).await?.0 {
            Response::Snapshot(info) => Ok(info),
            other => Err(unexpected(peer, &other)),
        }
    }

    /// The raw bytes after a response header, as a stream that fails on a reset, a stall, or
    /// a length that does not match what the peer announced.
    fn body(
        &self,
        peer: &Peer,
        recv: quinn::RecvStream,
        total: Option<u64>,
        offset: u64,
    ) -> PeerBody {
        let st = BodyState {
            recv,
            got: offset,
            total,
            stats: self.stats.clone(),
            name: peer.name(),
            ended: false,
        };
        let stream = futures_util::stream::unfold(st, |mut st| async move {
            let item = st.next_piece().await?;
            Some((item, st))
        });
        PeerBody {
            total,
            stream: Box::pin(stream),
        }
    }
}

/// Size the pieces of a peer body are gathered into: quinn hands out one STREAM frame
/// (~1.4 kB) per read, and hashing, writing and waking readers per frame costs more than the
/// transfer itself.
const PIECE: usize = 256 * 1024;
/// Longest a piece waits for more bytes after its first ones.
const GATHER: Duration = Duration::from_millis(20);

struct BodyState {
    recv: quinn::RecvStream,
    got: u64,
    total: Option<u64>,
    stats: Arc<Stats>,
    name: String,
    ended: bool,
}

impl BodyState {
    /// The next piece: what has arrived, up to [`PIECE`] bytes, waiting only when nothing has.
    /// `None` at a clean end of the announced length; an error for a reset, a stall or a
    /// length that does not match.
    async fn next_piece(&mut self) -> Option<Result<Bytes, String>> {
        if self.ended {
            return None;
        }
        let first =
            match tokio::time::timeout(READ_TIMEOUT, self.recv.read_chunk(PIECE, true)).await {
                Err(_) => {
                    return self.fail(format!(
                        "peer {} stalled for {} s",
                        self.name,
                        READ_TIMEOUT.as_secs()
                    ));
                }
                Ok(Err(e)) => return self.fail(printable(&format!("peer {}: {e}", self.name))),
                Ok(Ok(None)) => return self.end(),
                Ok(Ok(Some(c))) => c.bytes,
            };
        let mut piece = bytes::BytesMut::new();
        let mut last = first;
        // Gather what arrives within GATHER of the first bytes (read_chunk is cancel-safe): at
        // link rates a few kB arrive at a time, and each piece costs a write and a wake-up.
        let until = tokio::time::Instant::now() + GATHER;
        while piece.len() + last.len() < PIECE {
            let more = tokio::time::timeout_at(until, self.recv.read_chunk(PIECE, true));
            match more.await.ok() {
                Some(Ok(Some(c))) => {
                    if piece.is_empty() {
                        piece.reserve(PIECE);
                    }
                    piece.extend_from_slice(&last);
                    last = c.bytes;
                }
                // The end or an error shows up on the next call.
                _ => break,
            }
        }
        let out = if piece.is_empty() {
            last
        } else {
            piece.extend_from_slice(&last);
            piece.freeze()
        };
        self.got += out.len() as u64;
        Stats::add(&self.stats.bytes_from_peers, out.len() as u64);
        Some(Ok(out))
    }

    fn fail(&mut self, why: String) -> Option<Result<Bytes, String>> {
        self.ended = true;
        Some(Err(why))
    }

    fn end(&mut self) -> Option<Result<Bytes, String>> {
        self.ended = true;
        match self.total {
            Some(t) if self.got != t => Some(Err(format!(
                "peer {} ended after {} of {t} bytes",
                self.name, self.got
            ))),
            _ => None,
        }
    }
}

/// The error an answer other than the expected one means.
fn unexpected(peer: &Peer, r: &Response) -> PeerError {
    match r {
        Response::Error {
            kind: wire::ErrorKind::NotFound,
            ..
        } => PeerError::NotFound(peer.name()),
        Response::Error { message, .. } => PeerError::Answered(peer.name(), message.clone()),
        other => PeerError::Protocol(peer.name(), format!("unexpected answer {other:?}")),
    }
}

/// Reads one length-prefixed frame from a stream.
pub(crate) async fn read_frame<T>(recv: &mut quinn::RecvStream) -> Result<T, String>
where
    T: for<'de> serde::Deserialize<'de> + wire::Checked,
{
    let mut head = [0u8; 4];
    // Every error may quote what the peer sent (a close reason, a bad field): escaped.
    recv.read_exact(&mut head)
        .await
        .map_err(|e| printable(&format!("reading a frame header: {e}")))?;
    let n = wire::frame_len(head).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; n];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| printable(&format!("reading a frame: {e}")))?;
    wire::decode_body(&body).map_err(|e| printable(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId([n; 16])
    }

    #[test]
    fn rendezvous_is_stable_and_moves_only_what_the_leaver_held() {
        let all: Vec<NodeId> = (1..=5).map(id).collect();
        let keys: Vec<String> = (0..2000).map(|i| format!("sha256:{i}")).collect();
        let before: Vec<NodeId> = keys
            .iter()
            .map(|k| rendezvous(k, all.iter().copied()).unwrap())
            .collect();
        // Order of the input does not matter.
        for (k, b) in keys.iter().zip(&before) {
            assert_eq!(rendezvous(k, all.iter().rev().copied()), Some(*b));
        }
        // Load spreads: each of 5 nodes gets 12–28 % of 2000 keys.
        for n in &all {
            let share = before.iter().filter(|b| *b == n).count();
            assert!((240..=560).contains(&share), "{n}: {share}");
        }
        // Node 3 leaves: only its keys move.
        let rest: Vec<NodeId> = all.iter().copied().filter(|n| *n != id(3)).collect();
        for (k, b) in keys.iter().zip(&before) {
            let after = rendezvous(k, rest.iter().copied()).unwrap();
            if *b != id(3) {
                assert_eq!(after, *b);
            }
        }
        assert_eq!(rendezvous("x", []), None);
    }

    #[test]
    fn peer_deadlines_follow_size_and_minimum_rate() {
        // A 100 kB package from a holder: the slack and under a second of transfer.
        assert_eq!(transfer_deadline(100_000, HOLDER_MIN_RATE), DEADLINE_SLACK);
        // 20 MiB from a holder at 128 KiB/s: 160 s on top of the slack.
        assert_eq!(
            transfer_deadline(20 << 20, HOLDER_MIN_RATE),
            DEADLINE_SLACK + Duration::from_secs(160)
        );
        // The same through the site's downloader, at an uplink's 16 KiB/s: 1280 s.
        assert_eq!(
            transfer_deadline(20 << 20, DOWNLOADER_MIN_RATE),
            DEADLINE_SLACK + Duration::from_secs(1280)
        );
        // A trickle of one byte every 8 s is far below either: 1 MiB would need 97 days, and
        // is cut at 23 s.
        let trickle_secs = (1u64 << 20) * 8;
        assert!(transfer_deadline(1 << 20, HOLDER_MIN_RATE).as_secs() < trickle_secs / 10_000);
        assert_eq!(
            transfer_deadline(0, 0),
            DEADLINE_SLACK,
            "no division by zero"
        );
        assert_eq!(
            transfer_deadline(u64::MAX, 1),
            LONGEST_DEADLINE,
            "no overflow"
        );
    }

    #[test]
    fn peer_text_cannot_forge_log_lines() {
        assert_eq!(printable("busy"), "busy");
        assert_eq!(
            printable("a\nFORGED line\r\u{1b}[31m"),
            "a\\nFORGED line\\r\\u{1b}[31m"
        );
        assert!(!printable("x\ny").contains('\n'));
        assert_eq!(printable("é ünïcode"), "é ünïcode");
        let long = "x".repeat(10_000);
        assert_eq!(printable(&long).chars().count(), 513);
        let e = PeerError::Refused("p".into(), "no\nFORGED-REFUSAL line".into());
        assert!(!e.to_string().contains('\n'), "{e}");
        let e = PeerError::Answered("p".into(), "busy\nFORGED-ERROR".into());
        assert!(!e.to_string().contains('\n'), "{e}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(50), Duration::from_secs(60));
    }

    #[test]
    fn content_refs_roundtrip() {
        let b = ContentRef::Blake3([7; 32]);
        assert_eq!(ContentRef::parse(&b.text()), Some(b));
        let s = ContentRef::Sum(Checksum {
            algo: ChecksumAlgo::Sha256,
            digest: vec![1; 32],
        });
        assert_eq!(ContentRef::parse(&s.text()), Some(s));
        for bad in [
            "",
            "sha256",
            "sha256:zz",
            "blake3:00",
            "md6:00",
            "sha256:0102",
        ] {
            assert_eq!(ContentRef::parse(bad), None, "{bad}");
        }
    }
}
