//! The answering side of the peer protocol: admits connecting nodes (site id and site-key
//! proof on the first stream) and answers their requests from this node's store, its running
//! transfers, and — as an item's fetcher — upstream.
//!
//! Requests from peers never travel further than this node: a `Fetch` this node cannot answer
//! from its store goes to upstream directly, never to another peer, and a `Snapshot` request is
//! answered from this node's own upstream check. So two nodes that briefly disagree about who
//! the fetcher is cannot ask each other in a circle.
//!
//! Every request is checked like an HTTP request (configured repo, a path that stays inside it)
//! before any I/O; anything malformed gets an error answer on that stream only.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::wire::{self, ErrorKind, Request, Response};
use super::{ContentRef, Peers, Role, SiteAuth, identity, read_frame};
use crate::config::Config;
use crate::fetch::{Fetcher, Item, Phase};
use crate::hash::{self, BlobId};
use crate::paths::{PathKind, RepoPath};
use crate::snapshot::Snapshots;
use crate::stats::Stats;
use crate::store::Store;

/// How long a connecting node has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Size of the pieces a blob is sent in.
const CHUNK: usize = 1 << 20;

/// What the server answers from.
pub struct Local {
    pub cfg: Config,
    pub store: Store,
    pub fetcher: Arc<Fetcher>,
    pub snapshots: Arc<Snapshots>,
    pub peers: Arc<Peers>,
    pub stats: Arc<Stats>,
}

/// Accepts connections until `stop` turns true.
pub async fn serve(local: Arc<Local>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let endpoint = local.peers.endpoint().clone();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = stop.changed() => break,
        };
        let Some(incoming) = incoming else { break };
        let local = local.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            if let Err(e) = connection(local, incoming).await {
                tracing::debug!(%remote, error = %e, "peer connection ended");
            }
        });
    }
    endpoint.close(0u32.into(), b"node stopping");
}

async fn connection(local: Arc<Local>, incoming: quinn::Incoming) -> Result<(), String> {
    let conn = incoming.await.map_err(|e| e.to_string())?;
    let remote = conn.remote_address();
    let id = identity::peer_id(&conn).ok_or("no client certificate")?;
    let (mut send, mut recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| "no hello in time".to_string())?
        .map_err(|e| e.to_string())?;
    let hello = tokio::time::timeout(HELLO_TIMEOUT, read_frame::<Request>(&mut recv))
        .await
        .map_err(|_| "no hello in time".to_string())??;
    let Request::Hello {
        site_id,
        quic_port,
        proof,
        ..
    } = hello
    else {
        return Err("first request was not a hello".into());
    };
    let site: &SiteAuth = &local.peers.site;
    let exported = SiteAuth::exported(&conn)?;
    let verdict = if site_id != site.site_id {
        Err(format!(
            "this node belongs to another site (site id {}, yours {site_id}): check [node] site",
            site.site_id
        ))
    } else {
        site.check(&exported, Role::Dialler, proof.as_deref())
            .map_err(|why| format!("site key check failed: {why}"))
    };
    if let Err(reason) = verdict {
        Stats::inc(&local.stats.peers_refused);
        tracing::warn!(peer = %id, addr = %remote, %reason, "refused a node that asked to join the site");
        let _ = send_frame(
            &mut send,
            &Response::Refused {
                reason: reason.clone(),
            },
        )
        .await;
        let _ = send.finish();
        // Give the refusal a moment to arrive before the connection goes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        conn.close(1u32.into(), reason.as_bytes());
        return Ok(());
    }
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
    local
        .peers
        .learn(id, std::net::SocketAddr::new(remote.ip(), quic_port));
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => return Err(e.to_string()),
        };
        let local = local.clone();
        tokio::spawn(async move {
            if let Err(e) = stream(local, send, recv).await {
                tracing::debug!(peer = %id, error = %e, "peer request failed");
            }
        });
    }
}

async fn send_frame(send: &mut quinn::SendStream, r: &Response) -> Result<(), String> {
    let f = wire::encode(r).map_err(|e| e.to_string())?;
    send.write_all(&f).await.map_err(|e| e.to_string())
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error {
        kind,
        message: message.into(),
    }
}

async fn stream(
    local: Arc<Local>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), String> {
    let req = match read_frame::<Request>(&mut recv).await {
        Ok(r) => r,
        Err(e) => {
            let _ = send_frame(&mut send, &error(ErrorKind::BadRequest, e.clone())).await;
            let _ = send.finish();
            return Err(e);
        }
    };
    Stats::inc(&local.stats.peer_requests_served);
    let answer = match req {
        Request::Hello { .. } => error(ErrorKind::BadRequest, "already admitted"),
        Request::Have { checksums } => Response::Holding {
            have: checksums.iter().map(|c| local.holds(c).is_some()).collect(),
        },
        Request::Get { checksum, offset } => match local.holds(&checksum) {
            Some(blob) => {
                let blake3 = hash::hex(&blob);
                return local
                    .send_held(send, blob, offset, |size| Response::Blob { size, blake3 })
                    .await;
            }
            None => error(ErrorKind::NotFound, "not held here"),
        },
        Request::Fetch {
            repo,
            path,
            checksum,
            size,
            offset,
        } => return local.fetch(send, repo, path, checksum, size, offset).await,
        Request::Snapshot { repo, tree } => local.snapshot(&repo, &tree).await,
    };
    send_frame(&mut send, &answer).await?;
    let _ = send.finish();
    Ok(())
}

impl Local {
    /// The stored blob a content reference names, if its file is there.
    fn holds(&self, text: &str) -> Option<BlobId> {
        let blob = match ContentRef::parse(text)? {
            ContentRef::Blake3(b) => {
                self.store.blob_meta(&b).ok()??;
                b
            }
            ContentRef::Sum(c) => self.store.blob_by_checksum(&c).ok()??,
        };
        self.store.blob_path(&blob).exists().then_some(blob)
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
    /// `Stream` for `Fetch`), or the error answer when it cannot be read.
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
            send.write_chunk(buf.into())
                .await
                .map_err(|e| e.to_string())?;
        }
        let _ = send.finish();
        self.store.touch(blob);
        Ok(())
    }

    /// `Fetch`: as this item's fetcher, obtain it (store, a running transfer, or upstream) and
    /// stream it as it arrives.
    async fn fetch(
        &self,
        mut send: quinn::SendStream,
        repo: String,
        path: String,
        checksum: Option<String>,
        size: Option<u64>,
        offset: u64,
    ) -> Result<(), String> {
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
        let key = format!("{repo}/{p}");
        // What this node's own metadata says wins over what the asker says.
        let expected = self.store.expected(&key).ok().flatten().or(theirs);
        let held = match &expected {
            Some(e) => self.store.blob_by_checksum(&e.checksum).ok().flatten(),
            None => self.store.path_entry(&key).ok().flatten().map(|e| e.blob),
        };
        if let Some(blob) = held.filter(|b| self.store.blob_path(b).exists()) {
            return self
                .send_held(send, blob, offset, |size| Response::Stream {
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
                    send.write_chunk(b).await.map_err(|e| e.to_string())?;
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

    async fn snapshot(&self, repo: &str, tree: &str) -> Response {
        if self.cfg.repo(repo).is_none() {
            return error(
                ErrorKind::BadRequest,
                format!("repo {repo:?} is not configured here"),
            );
        }
        match RepoPath::in_tree(tree, "repodata/repomd.xml").map(|p| p.kind()) {
            Ok(PathKind::RepoMd { tree: t }) if t == tree => {}
            _ => return error(ErrorKind::BadRequest, "not a repository tree"),
        }
        let s = match self.snapshots.current_for_peer(repo, tree).await {
            Ok(s) => s,
            Err(e) => {
                let kind = if e.is_not_found() {
                    ErrorKind::NotFound
                } else {
                    ErrorKind::Unavailable
                };
                return error(kind, e.to_string());
            }
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
            fetched_at: s.fetched_at,
            checked_at: s.checked_at,
            etag: s.etag,
            last_modified: s.last_modified,
            files,
        })
    }
}
