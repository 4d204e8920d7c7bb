//! The answering side of the peer protocol: admits connecting nodes (site id and site-key
//! proof on the first stream) and answers their requests from this node's store, its running
//! transfers, and — as an item's downloader — upstream.
//!
//! Strangers cost almost nothing: until admission a connection gets one stream and a small
//! window, at most [`MAX_PENDING`] wait (a few per address), and refusals are logged at most
//! once a minute per address with every string the stranger sent escaped. Admitted peers are
//! bounded too: streams per connection, connections per node id, a deadline to send a request
//! and to take each write; `Have` lookups run on the blocking pool.
//!
//! Requests from peers never travel further than this node: a `Download` this node cannot answer
//! from its store goes to upstream directly, never to another peer, and a `Snapshot` request is
//! answered with the snapshot in service, as it is. So two nodes that briefly disagree about who
//! the downloader is cannot ask each other in a circle.
//!
//! Whether something is held (`Have`, `Get`, a `Download` this node can answer from its store)
//! is `lookup`'s answer, the same the HTTP side gets: the row and the file, checked against
//! this node's own metadata before the asker's.
//!
//! Every request is checked like an HTTP request (configured repo with the same upstream URLs,
//! a path that stays inside it) before any I/O; anything malformed gets an error answer on that
//! stream only.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::wire::{self, ErrorKind, Request, Response};
use super::{ContentRef, MAX_PENDING, NodeId, Peers, Role, SiteAuth, identity, read_frame};
use crate::config::Config;
use crate::fetch::{Fetcher, Item, Phase};
use crate::hash::{self, BlobId};
use crate::lookup::{self, Expect, Found};
use crate::paths::{PathKind, RepoPath};
use crate::snapshot::Snapshots;
use crate::stats::Stats;
use crate::store::{Store, View, now_secs};
use crate::uplink::Class;

/// How long a connecting node has for the handshake and for its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Size of the pieces a blob is sent in.
const CHUNK: usize = 1 << 20;
/// Connections not admitted yet, at most from one address (in total: [`MAX_PENDING`]).
const MAX_PENDING_PER_ADDR: usize = 4;
/// Admitted connections one node id may hold to us at once (a node dials one; a restart or
/// a network change briefly makes two).
const MAX_CONNS_PER_NODE: usize = 4;
/// Time an admitted peer has to send its whole request after opening a stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a write to a peer may wait for it to take bytes: a peer that stops reading loses
/// the stream, not our task and buffers.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A refusal is logged at most this often per source address.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);
/// Addresses remembered for that.
const REFUSAL_LOG_MAX: usize = 1024;

/// What the server answers from.
pub struct Local {
    pub cfg: Config,
    pub store: Store,
    pub fetcher: Arc<Fetcher>,
    pub snapshots: Arc<Snapshots>,
    pub peers: Arc<Peers>,
    pub stats: Arc<Stats>,
    pub uplink: Arc<crate::uplink::Uplink>,
}

/// Who is connected or trying to: the caps before and after admission, and when a refusal
/// was last logged per address.
#[derive(Default)]
struct Gate {
    pending: HashMap<IpAddr, usize>,
    admitted: HashMap<NodeId, usize>,
    logged: HashMap<IpAddr, Instant>,
}

/// A place held in the [`Gate`]: released on drop.
struct Slot {
    gate: Arc<Mutex<Gate>>,
    held: Held,
}

enum Held {
    Pending(IpAddr),
    Admitted(NodeId),
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut g) = self.gate.lock() {
            match self.held {
                Held::Pending(ip) => release(&mut g.pending, &ip),
                Held::Admitted(id) => release(&mut g.admitted, &id),
            }
        }
    }
}

fn release<K: std::hash::Hash + Eq>(m: &mut HashMap<K, usize>, k: &K) {
    if let Some(n) = m.get_mut(k) {
        *n -= 1;
        if *n == 0 {
            m.remove(k);
        }
    }
}

/// Whether one more can be let in under `per_key` for this key and `total` overall.
pub fn room<K: std::hash::Hash + Eq>(
    m: &HashMap<K, usize>,
    k: &K,
    per_key: usize,
    total: usize,
) -> bool {
    m.get(k).copied().unwrap_or(0) < per_key && m.values().sum::<usize>() < total
}

fn take(gate: &Arc<Mutex<Gate>>, held: Held) -> Option<Slot> {
    let mut g = gate.lock().ok()?;
    let ok = match &held {
        Held::Pending(ip) => {
            room(&g.pending, ip, MAX_PENDING_PER_ADDR, MAX_PENDING) && {
                *g.pending.entry(*ip).or_default() += 1;
                true
            }
        }
        Held::Admitted(id) => {
            room(&g.admitted, id, MAX_CONNS_PER_NODE, usize::MAX) && {
                *g.admitted.entry(*id).or_default() += 1;
                true
            }
        }
    };
    ok.then(|| Slot {
        gate: gate.clone(),
        held,
    })
}

/// Logs a refusal at most once a minute per address. `reason` may carry strings the stranger
/// sent: the caller escapes them.
fn log_refusal(gate: &Arc<Mutex<Gate>>, ip: IpAddr, peer: Option<NodeId>, reason: &str) {
    let due = gate.lock().is_ok_and(|mut g| {
        let now = Instant::now();
        if g.logged.len() >= REFUSAL_LOG_MAX {
            g.logged
                .retain(|_, at| now.duration_since(*at) < REFUSAL_LOG_EVERY);
        }
        let due = g
            .logged
            .get(&ip)
            .is_none_or(|at| now.duration_since(*at) >= REFUSAL_LOG_EVERY);
        if due && g.logged.len() < REFUSAL_LOG_MAX {
            g.logged.insert(ip, now);
        }
        due
    });
    if due {
        tracing::warn!(addr = %ip, peer = ?peer, %reason,
            "refused a node that asked to join the site (logged once a minute per address)");
    }
}

/// Accepts connections until `stop` turns true.
pub async fn serve(local: Arc<Local>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let endpoint = local.peers.endpoint().clone();
    let gate = Arc::new(Mutex::new(Gate::default()));
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = stop.changed() => break,
        };
        let Some(incoming) = incoming else { break };
        let remote = incoming.remote_address();
        let Some(slot) = take(&gate, Held::Pending(remote.ip())) else {
            // Too many handshakes at once (from this address, or in all): no state kept.
            Stats::inc(&local.stats.peers_refused);
            log_refusal(
                &gate,
                remote.ip(),
                None,
                "too many connections waiting for admission",
            );
            incoming.refuse();
            continue;
        };
        let (local, gate) = (local.clone(), gate.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(local, gate, incoming, slot).await {
                tracing::debug!(%remote, error = %super::printable(&e), "peer connection ended");
            }
        });
    }
    endpoint.close(0u32.into(), b"node stopping");
}

async fn connection(
    local: Arc<Local>,
    gate: Arc<Mutex<Gate>>,
    incoming: quinn::Incoming,
    pending: Slot,
) -> Result<(), String> {
    let conn = tokio::time::timeout(HELLO_TIMEOUT, incoming)
        .await
        .map_err(|_| "no handshake in time".to_string())?
        .map_err(|e| e.to_string())?;
    let remote = conn.remote_address();
    let id = identity::peer_id(&conn).ok_or("no client certificate")?;
    let hello = async {
        let (send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let hello = read_frame::<Request>(&mut recv).await?;
        Ok::<_, String>((send, hello))
    };
    let (mut send, hello) = tokio::time::timeout(HELLO_TIMEOUT, hello)
        .await
        .map_err(|_| "no hello in time".to_string())??;
    let Request::Hello {
        site_id,
        quic_port,
        proof,
        ..
    } = hello
    else {
        conn.close(1u32.into(), b"first request was not a hello");
        return Err("first request was not a hello".into());
    };
    let site: &SiteAuth = &local.peers.site;
    let exported = SiteAuth::exported(&conn)?;
    let verdict = if site_id != site.site_id {
        Err(format!(
            "this node belongs to another site (site id {}, yours {site_id:?}): check [node] site",
            site.site_id
        ))
    } else {
        site.check(&exported, Role::Dialler, proof.as_deref())
            .map_err(|why| format!("site key check failed: {why}"))
    };
    let listen = std::net::SocketAddr::new(remote.ip(), quic_port);
    let verdict = verdict.and_then(|()| match local.peers.pinned_elsewhere(id, listen) {
        Some(pinned) => Err(format!(
            "this node's static peer at {listen} is node {pinned}, not {id}; if that machine was reinstalled, restart this node to accept its new key"
        )),
        None => Ok(()),
    });
    let admitted = match verdict {
        Ok(()) => take(&gate, Held::Admitted(id)).ok_or_else(|| {
            format!("node {id} already has {MAX_CONNS_PER_NODE} connections to this node")
        }),
        Err(e) => Err(e),
    };
    let _admitted = match admitted {
        Ok(slot) => slot,
        Err(reason) => {
            Stats::inc(&local.stats.peers_refused);
            log_refusal(&gate, remote.ip(), Some(id), &reason);
            let answer = Response::Refused { reason };
            let _ = tokio::time::timeout(HELLO_TIMEOUT, send_frame(&mut send, &answer)).await;
            let _ = send.finish();
            // Give the refusal a moment to arrive before the connection goes.
            tokio::time::sleep(Duration::from_millis(200)).await;
            conn.close(1u32.into(), b"refused");
            return Ok(());
        }
    };
    drop(pending);
    super::admit(&conn);
    send_frame(
        &mut send,
        &Response::Welcome {
            site_id: site.site_id.clone(),
            http_port: local.peers.http_port(),
            proof: site.proof(&exported, Role::Listener),
        },
    )
    .await?;
    let _ = send.finish();
    // The hello's stream is done: it must not hold one of the peer's stream slots.
    drop(send);
    local.peers.learn(id, listen);
    loop {
        // At most `ADMITTED_STREAMS` are open at once (the transport's stream limit).
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => return Err(e.to_string()),
        };
        let local = local.clone();
        tokio::spawn(async move {
            if let Err(e) = stream(local, id, send, recv).await {
                tracing::debug!(peer = %id, error = %super::printable(&e), "peer request failed");
            }
        });
    }
}

async fn send_frame(send: &mut quinn::SendStream, r: &Response) -> Result<(), String> {
    let f = wire::encode(r).map_err(|e| e.to_string())?;
    match tokio::time::timeout(WRITE_TIMEOUT, send.write_all(&f)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(stalled(send)),
    }
}

/// Sends a piece of a body, giving up when the peer takes nothing for [`WRITE_TIMEOUT`].
async fn send_chunk(send: &mut quinn::SendStream, b: bytes::Bytes) -> Result<(), String> {
    match tokio::time::timeout(WRITE_TIMEOUT, send.write_chunk(b)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(stalled(send)),
    }
}

fn stalled(send: &mut quinn::SendStream) -> String {
    let _ = send.reset(2u32.into());
    format!("the peer read nothing for {} s", WRITE_TIMEOUT.as_secs())
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error {
        kind,
        message: message.into(),
    }
}

async fn stream(
    local: Arc<Local>,
    peer: NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), String> {
    let req = match tokio::time::timeout(REQUEST_TIMEOUT, read_frame::<Request>(&mut recv)).await {
        Ok(Ok(r)) => r,
        Err(_) => {
            let _ = send.reset(2u32.into());
            return Err(format!(
                "no whole request within {} s",
                REQUEST_TIMEOUT.as_secs()
            ));
        }
        Ok(Err(e)) => {
            let _ = send_frame(&mut send, &error(ErrorKind::BadRequest, e.clone())).await;
            let _ = send.finish();
            return Err(e);
        }
    };
    Stats::inc(&local.stats.peer_requests_served);
    let answer = match req {
        Request::Hello { .. } => error(ErrorKind::BadRequest, "already admitted"),
        Request::Announce(a) => {
            local
                .uplink
                .lock()
                .heard(&peer.to_string(), a, std::time::Instant::now());
            Response::Ack
        }
        Request::Have { checksums } => {
            // Up to `MAX_HAVE` index reads: on the blocking pool, not an async worker.
            let store = local.store.clone();
            let have = tokio::task::spawn_blocking(move || {
                let view = store.view();
                checksums
                    .iter()
                    .map(|c| view.as_ref().is_ok_and(|v| holds(v, c).is_some()))
                    .collect()
            })
            .await
            .map_err(|e| e.to_string())?;
            Response::Holding { have }
        }
        Request::Get { checksum, offset } => {
            match local.store.view().ok().and_then(|v| holds(&v, &checksum)) {
                Some(blob) => {
                    let blake3 = hash::hex(&blob);
                    return local
                        .send_held(send, blob, offset, |size| Response::Blob { size, blake3 })
                        .await;
                }
                None => error(ErrorKind::NotFound, "not held here"),
            }
        }
        Request::Download {
            repo,
            upstream,
            path,
            checksum,
            size,
            offset,
            background,
        } => match local.same_upstream(&repo, &upstream) {
            Ok(()) => {
                let ask = DownloadAsk {
                    repo,
                    path,
                    checksum,
                    size,
                    offset,
                    class: if background {
                        Class::Background
                    } else {
                        Class::Interactive
                    },
                };
                return local.download(send, ask).await;
            }
            Err(answer) => answer,
        },
        Request::Snapshot {
            repo,
            upstream,
            tree,
        } => match local.same_upstream(&repo, &upstream) {
            Ok(()) => local.snapshot(&repo, &tree),
            Err(answer) => answer,
        },
    };
    send_frame(&mut send, &answer).await?;
    let _ = send.finish();
    Ok(())
}

/// The stored blob a content reference names, if it is held (`lookup`: its row, and its file
/// in place). Blocking (an index read and a `stat`).
fn holds(view: &View<'_>, text: &str) -> Option<BlobId> {
    let held = match ContentRef::parse(text)? {
        ContentRef::Blake3(b) => lookup::blob(view, &b),
        ContentRef::Sum(c) => lookup::checksum(view, &c),
    };
    held.ok().flatten().map(|h| h.blob)
}

/// The fields of a `Download` request, as this node serves it.
struct DownloadAsk {
    repo: String,
    path: String,
    checksum: Option<String>,
    size: Option<u64>,
    offset: u64,
    /// Background when the asker prefetches: this node's transfer then waits its turn.
    class: Class,
}

impl Local {
    /// Whether the asker's repo of this name takes its files from the same upstream URLs as
    /// ours (else it is another repo that happens to share the name), or the answer to give.
    fn same_upstream(&self, repo: &str, theirs: &str) -> Result<(), Response> {
        if self.cfg.repo(repo).is_none() {
            return Err(error(
                ErrorKind::BadRequest,
                format!("repo {repo:?} is not configured here"),
            ));
        }
        if self.peers.upstream_id(repo) != theirs {
            return Err(error(
                ErrorKind::BadRequest,
                format!(
                    "repo {repo:?} here has other upstream URLs (nodes share a repo only when its [[repo]] urls and mirrorlists agree)"
                ),
            ));
        }
        Ok(())
    }

    /// Opens a held blob: its file and size, or the error answer to give.
    fn open_blob(&self, blob: &BlobId, offset: u64) -> Result<(Arc<std::fs::File>, u64), Response> {
        let file = std::fs::File::open(self.store.blob_path(blob))
            .map_err(|e| error(ErrorKind::NotFound, e.to_string()))?;
        let size = file
            .metadata()
            .map_err(|e| error(ErrorKind::Unavailable, e.to_string()))?
            .len();
        if offset > size {
            return Err(error(ErrorKind::BadRequest, "offset past the end"));
        }
        Ok((Arc::new(file), size))
    }

    /// A held blob from `offset`, after the header `head(size)` makes (`Blob` for `Get`,
    /// `Stream` for `Download`), or the error answer when it cannot be read.
    async fn send_held(
        &self,
        mut send: quinn::SendStream,
        blob: BlobId,
        offset: u64,
        head: impl FnOnce(u64) -> Response,
    ) -> Result<(), String> {
        let (file, size) = match self.open_blob(&blob, offset) {
            Ok(x) => x,
            Err(answer) => {
                send_frame(&mut send, &answer).await?;
                let _ = send.finish();
                return Ok(());
            }
        };
        send_frame(&mut send, &head(size)).await?;
        self.pump(send, &blob, file, offset, size).await
    }

    /// Sends `file[at..size]` and ends the stream cleanly, or resets it if reading fails.
    async fn pump(
        &self,
        mut send: quinn::SendStream,
        blob: &BlobId,
        file: Arc<std::fs::File>,
        mut at: u64,
        size: u64,
    ) -> Result<(), String> {
        while at < size {
            let f = file.clone();
            let want = (size - at).min(CHUNK as u64) as usize;
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; want];
                f.read_exact_at(&mut buf, at).map(|_| buf)
            })
            .await
            .map_err(|e| e.to_string())?;
            let buf = match read {
                Ok(b) => b,
                Err(e) => {
                    let _ = send.reset(1u32.into());
                    return Err(format!("reading blob: {e}"));
                }
            };
            at += buf.len() as u64;
            Stats::add(&self.stats.bytes_to_peers, buf.len() as u64);
            send_chunk(&mut send, buf.into()).await?;
        }
        let _ = send.finish();
        self.store.touch(blob);
        Ok(())
    }

    /// `Download`: as this item's downloader, obtain it (store, a running transfer, or upstream) and
    /// stream it as it arrives.
    async fn download(&self, mut send: quinn::SendStream, ask: DownloadAsk) -> Result<(), String> {
        let DownloadAsk {
            repo,
            path,
            checksum,
            size,
            offset,
            class,
        } = ask;
        let bad = |m: String| error(ErrorKind::BadRequest, m);
        let checked = (|| {
            if self.cfg.repo(&repo).is_none() {
                return Err(bad(format!("repo {repo:?} is not configured here")));
            }
            let p = RepoPath::parse_relative(&path).map_err(|e| bad(e.to_string()))?;
            if p.kind() != PathKind::Immutable {
                return Err(bad(
                    "only packages and checksum-named metadata are fetched for peers".into(),
                ));
            }
            let theirs = match checksum.as_deref().map(ContentRef::parse) {
                None => None,
                Some(Some(ContentRef::Sum(c))) => {
                    Some(crate::store::Expected { checksum: c, size })
                }
                Some(_) => return Err(bad("checksum must be a metadata checksum".into())),
            };
            Ok((p, theirs))
        })();
        let (p, theirs) = match checked {
            Ok(x) => x,
            Err(answer) => {
                send_frame(&mut send, &answer).await?;
                let _ = send.finish();
                return Ok(());
            }
        };
        // What this node's own metadata says wins over what the asker says.
        let found = self.store.view().and_then(|v| {
            lookup::find(
                &v,
                &repo,
                &p,
                Expect::IndexOr(theirs.as_ref()),
                now_secs(),
                self.snapshots.freshness(),
            )
        });
        let (found, expected) = match found {
            Ok(l) => (l.found, l.expected),
            Err(e) => {
                tracing::debug!(repo, path = %p, error = %e, "index unreadable; fetching");
                (Found::Miss, theirs)
            }
        };
        if let Found::Hit(held) | Found::Alias(held) = found {
            return self
                .send_held(send, held.blob, offset, |size| Response::Stream {
                    total: Some(size),
                })
                .await;
        }
        let t = self.fetcher.start(Item {
            repo,
            path: p,
            expected,
            publish: true,
            revalidate: None,
            site: false,
            class,
        });
        let total = match t.started().await {
            Phase::Failed(e) => {
                let kind = if e.is_not_found() {
                    ErrorKind::NotFound
                } else {
                    ErrorKind::Unavailable
                };
                send_frame(&mut send, &error(kind, e.to_string())).await?;
                let _ = send.finish();
                return Ok(());
            }
            Phase::Streaming { total, .. } => total,
            Phase::Done(d) => Some(d.size),
            Phase::Connecting | Phase::NotModified => None,
        };
        Stats::inc(&self.stats.fetched_for_peers);
        send_frame(&mut send, &Response::Stream { total }).await?;
        let mut body = Box::pin(t.reader_from(self.store.clone(), offset));
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(b) => {
                    Stats::add(&self.stats.bytes_to_peers, b.len() as u64);
                    send_chunk(&mut send, b).await?;
                }
                Err(e) => {
                    // Never a clean end for a failed transfer: the asker must not keep it.
                    let _ = send.reset(1u32.into());
                    return Err(e.to_string());
                }
            }
        }
        let _ = send.finish();
        Ok(())
    }

    /// `Snapshot`: the snapshot in service as it is (no refresh for the asker: it asks only
    /// when it cannot reach upstream itself), named by BLAKE3 and size.
    fn snapshot(&self, repo: &str, tree: &str) -> Response {
        match RepoPath::in_tree(tree, "repodata/repomd.xml").map(|p| p.kind()) {
            Ok(PathKind::RepoMd { tree: t }) if t == tree => {}
            _ => return error(ErrorKind::BadRequest, "not a repository tree"),
        }
        let s = match self.snapshots.in_service(repo, tree) {
            Ok(s) => s,
            Err(e) => return error(ErrorKind::NotFound, e.to_string()),
        };
        let mut files = Vec::new();
        for (suffix, b) in std::iter::once(("", &s.repomd))
            .chain(s.companions.iter().map(|(x, b)| (x.as_str(), b)))
        {
            let size = hash::parse_blob_id(b)
                .and_then(|id| std::fs::metadata(self.store.blob_path(&id)).ok())
                .map(|m| m.len());
            let Some(size) = size else {
                return error(ErrorKind::Unavailable, "snapshot files missing here");
            };
            files.push(wire::SnapFile {
                suffix: suffix.to_string(),
                blake3: b.clone(),
                size,
            });
        }
        Response::Snapshot(wire::SnapshotInfo {
            revision: s.revision,
            files,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_caps_per_source_and_in_total() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut m = HashMap::new();
        assert!(room(&m, &a, 4, 32));
        m.insert(a, 4);
        assert!(!room(&m, &a, 4, 32), "per-address cap");
        assert!(room(&m, &b, 4, 32), "another address still gets in");
        for i in 0..7u8 {
            m.insert(IpAddr::from([10, 0, 1, i]), 4);
        }
        assert_eq!(m.values().sum::<usize>(), 32);
        assert!(!room(&m, &b, 4, 32), "total cap");
    }

    #[test]
    fn slots_are_released_on_drop() {
        let gate = Arc::new(Mutex::new(Gate::default()));
        let ip: IpAddr = "192.168.1.9".parse().unwrap();
        let held: Vec<Slot> = (0..MAX_PENDING_PER_ADDR)
            .map(|_| take(&gate, Held::Pending(ip)).unwrap())
            .collect();
        assert!(take(&gate, Held::Pending(ip)).is_none());
        drop(held);
        assert!(gate.lock().unwrap().pending.is_empty());
        let id = NodeId([7; 16]);
        let conns: Vec<Slot> = (0..MAX_CONNS_PER_NODE)
            .map(|_| take(&gate, Held::Admitted(id)).unwrap())
            .collect();
        assert!(take(&gate, Held::Admitted(id)).is_none(), "per node id");
        assert!(take(&gate, Held::Admitted(NodeId([8; 16]))).is_some());
        drop(conns);
        assert!(take(&gate, Held::Admitted(id)).is_some());
    }
}
