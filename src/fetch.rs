//! The miss path: one upstream transfer per item however many clients ask (single-flight),
//! streamed to every one of them as bytes arrive, verified at the end, then published.
//!
//! A transfer writes into `partial/<key hash>.part` (with a `.meta` sidecar holding the
//! upstream validators), hashing as it goes. Readers follow the growing file, so memory does not
//! grow with file size or client count. A broken connection resumes with `Range` + `If-Range`,
//! also after a restart of the process; a 200 answer to a Range request restarts from zero.
//! At the end the size and the metadata checksum (when metadata names the file) are checked and
//! the file is installed as a blob; if a check fails nothing is stored and readers get an error
//! (so their connection is aborted, never ended cleanly). Transfers run as their own tasks: a
//! client that goes away does not cancel them.
//!
//! Not here: deciding whether a request is a hit (the `http` and `snapshot` modules), parsing
//! metadata, or choosing mirrors (the `upstream` module).

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::bundle::{SeedFile, Seeds};
use crate::hash::{self, BlobId, MultiHasher};
use crate::paths::{PathKind, RepoPath};
use crate::peer::{ContentRef, Peer, Peers};
use crate::repodata::ChecksumAlgo;
use crate::stats::Stats;
use crate::store::{Batch, BlobMeta, Expected, PathEntry, Store, StoreError, now_secs};
use crate::upstream::{self, Ask, BadStart, Opened, Upstream, UpstreamError};

/// Upstream attempts one transfer makes at most (resumes and restarts included).
const MAX_ATTEMPTS: u32 = 16;

/// Size of the pieces readers take from a growing file.
const READ_CHUNK: usize = 256 * 1024;

/// Something to fetch.
#[derive(Debug, Clone)]
pub struct Item {
    pub repo: String,
    pub path: RepoPath,
    /// What repository metadata says the file is, when it says.
    pub expected: Option<Expected>,
    /// Record a path row when done. False for repomd.xml and its companions, which only a
    /// complete metadata snapshot publishes.
    pub publish: bool,
    /// `(etag, last_modified)` of a stored copy: ask upstream conditionally.
    pub revalidate: Option<(Option<String>, Option<String>)>,
    /// Peers of the site may supply it (false when a peer asked us, so requests never
    /// travel in circles).
    pub site: bool,
}

impl Item {
    pub fn key(&self) -> String {
        format!("{}/{}", self.repo, self.path)
    }
}

/// A finished, stored transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub blob: BlobId,
    pub size: u64,
    /// The [`Phase::Streaming`] generation the stored bytes belong to.
    pub generation: u32,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// Where the bytes came from: "upstream", "the site" or "a seed directory".
    pub from: &'static str,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("verification failed: {0}")]
    Verify(String),
    #[error("{0}")]
    Store(String),
    #[error("transfer broke off and could not be resumed: {0}")]
    Interrupted(String),
}

impl FetchError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, FetchError::Upstream(e) if e.is_not_found())
    }

    /// Upstream could not be reached at all (already logged once per repo by `upstream`).
    pub fn is_uplink_down(&self) -> bool {
        matches!(
            self,
            FetchError::Upstream(UpstreamError::Offline | UpstreamError::Unreachable(_))
        )
    }

    pub fn is_disk_full(&self) -> bool {
        matches!(self, FetchError::Store(m) if m.starts_with("disk full"))
    }
}

impl From<StoreError> for FetchError {
    fn from(e: StoreError) -> Self {
        if e.is_disk_full() {
            FetchError::Store(format!(
                "disk full ({e}): free space in the data directory; nothing was stored"
            ))
        } else {
            FetchError::Store(e.to_string())
        }
    }
}

/// Where a transfer is.
#[derive(Debug, Clone)]
pub enum Phase {
    Connecting,
    /// `generation` grows each time the transfer has to start over from byte 0 (upstream
    /// ignored a resume, or the file changed): a reader that already sent bytes of an earlier
    /// generation must fail rather than splice two versions together.
    Streaming {
        total: Option<u64>,
        written: u64,
        generation: u32,
    },
    NotModified,
    Done(Done),
    Failed(FetchError),
}

/// A transfer in flight; readers subscribe to its progress.
pub struct Transfer {
    pub key: String,
    part: PathBuf,
    rx: watch::Receiver<Phase>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PartMeta {
    etag: Option<String>,
    last_modified: Option<String>,
    /// The metadata checksum of the content being written: bytes of a content-addressed file
    /// can be resumed from any source.
    #[serde(default)]
    checksum: Option<String>,
}

/// A step of the miss path, in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A live peer that says it holds the checksum.
    Holder,
    /// The item's fetcher at the site (when it is not this node).
    Fetcher,
    /// A mounted bundle (`[seed] dirs`) holding the checksum.
    Seed,
    Upstream,
}

/// Where to look for an item, in order. `site`: peers may be asked (false for requests that
/// came from a peer, and for files that change in place). Peers and seed directories are used
/// only for files that never change once published and whose checksum this node's metadata
/// names, of a type this build computes (`has_checksum`; never md5): their bytes must be
/// checked against something they did not say ("nothing unverified is published"). A seed (a
/// local disk) comes first.
pub fn plan(site: bool, has_checksum: bool, immutable: bool, seeds: bool) -> Vec<Step> {
    let mut v = Vec::new();
    if immutable && has_checksum {
        if seeds {
            v.push(Step::Seed);
        }
        if site {
            v.extend([Step::Holder, Step::Fetcher]);
        }
    }
    v.push(Step::Upstream);
    v
}

/// A source chosen for a transfer.
enum Source {
    Holder(Peer),
    Fetcher(Peer),
    Seed(SeedFile),
    Upstream,
    /// The part file already holds every byte (checked against metadata before it is used).
    Held,
}

/// The metadata a part file of `written` bytes can be checked against as a whole file: only
/// when metadata names the size, `written` is that size, and the checksum is one this build
/// computes.
fn held_whole(expected: Option<&Expected>, written: u64) -> Option<&Expected> {
    expected.filter(|e| written > 0 && e.size == Some(written) && hash::can_verify(e.checksum.algo))
}

/// The pace a peer source must keep during one attempt (see [`crate::peer::transfer_deadline`]).
struct Pace {
    start: tokio::time::Instant,
    rate: u64,
    /// Bytes the attempt has to deliver, when known: a fixed deadline. Unknown: each byte
    /// received buys time at `rate`.
    remaining: Option<u64>,
    got: u64,
}

impl Pace {
    fn deadline(&self) -> tokio::time::Instant {
        let bytes = self.remaining.unwrap_or(self.got);
        self.start + crate::peer::transfer_deadline(bytes, self.rate)
    }

    fn too_slow(&self) -> String {
        format!(
            "sent {} bytes{} in {} s, below the minimum of {} bytes/s",
            self.got,
            self.remaining
                .map(|r| format!(" of {r}"))
                .unwrap_or_default(),
            self.start.elapsed().as_secs(),
            self.rate
        )
    }
}

impl Source {
    /// The slowest a source may send, for peers; `None` for upstream (its own timeouts and
    /// retries apply) and seed directories (a local disk).
    fn min_rate(&self) -> Option<u64> {
        match self {
            Source::Holder(_) => Some(crate::peer::HOLDER_MIN_RATE),
            Source::Fetcher(_) => Some(crate::peer::FETCHER_MIN_RATE),
            Source::Seed(_) | Source::Upstream | Source::Held => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Source::Holder(_) | Source::Fetcher(_) => "the site",
            Source::Seed(_) => "a seed directory",
            Source::Upstream => "upstream",
            Source::Held => "an earlier download",
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Holder(p) => write!(f, "peer {} (holder)", p.id),
            Source::Fetcher(p) => write!(f, "peer {} (the site's fetcher)", p.id),
            Source::Seed(s) => write!(f, "seed file {}", s.path.display()),
            Source::Upstream => f.write_str("upstream"),
            Source::Held => f.write_str("bytes held from an earlier download"),
        }
    }
}

/// A local file's bytes from `from` on, in [`READ_CHUNK`] pieces.
async fn read_file(path: &std::path::Path, from: u64) -> Result<upstream::ByteStream, String> {
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.seek(io::SeekFrom::Start(from))
        .await
        .map_err(|e| e.to_string())?;
    let stream = futures_util::stream::unfold(Some(f), |f| async move {
        let mut f = f?;
        let mut buf = vec![0u8; READ_CHUNK];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e.to_string()), None)),
        }
    });
    Ok(Box::pin(stream))
}

/// Whether finished bytes are what metadata says (size and checksum); the reason if not.
/// A checksum type this build cannot compute (md5) leaves the size and BLAKE3 as the checks.
pub fn check_expected(
    path: &RepoPath,
    expected: Option<&Expected>,
    got: &crate::hash::Digests,
) -> Result<(), String> {
    let Some(exp) = expected else {
        return Ok(());
    };
    let size_ok = exp.size.is_none_or(|s| s == got.len);
    let sum_ok = got.matches(&exp.checksum) != Some(false);
    if size_ok && sum_ok {
        return Ok(());
    }
    Err(format!(
        "{path} is {} bytes with {} {}, metadata says {} bytes with {}",
        got.len,
        exp.checksum.algo.name(),
        got.get(exp.checksum.algo)
            .map(|c| c.to_hex())
            .unwrap_or_default(),
        exp.size.map_or("?".into(), |s| s.to_string()),
        exp.checksum.to_hex()
    ))
}

/// The file a transfer writes and what is known of its bytes so far.
struct Part {
    file: tokio::fs::File,
    written: u64,
    hasher: MultiHasher,
    /// Set by a restart from zero while readers may hold the old bytes.
    check: Option<PrefixCheck>,
    also: Option<crate::repodata::ChecksumAlgo>,
    /// Bytes already handed to the disk for writeback (see [`WRITEBACK_STEP`]).
    synced: u64,
}

/// A part file is written back to disk every this many bytes while it grows, so the fsync
/// before it is installed has little left to do (otherwise the whole file is flushed after the
/// last byte, which stalls the end of every large transfer).
const WRITEBACK_STEP: u64 = 8 << 20;

impl Part {
    /// Empties the file to start over from byte 0. When readers may already have sent the old
    /// bytes on (`exposed`), the new ones are compared with them as they come.
    async fn start_over(&mut self, exposed: bool) -> io::Result<()> {
        if exposed && self.written > 0 && self.check.is_none() {
            self.check = Some(PrefixCheck {
                len: self.written,
                old: self.hasher.blake3_so_far(),
                new: blake3::Hasher::new(),
            });
        }
        self.file.set_len(0).await?;
        self.file.seek(io::SeekFrom::Start(0)).await?;
        self.written = 0;
        self.synced = 0;
        self.hasher = MultiHasher::new(self.also);
        Ok(())
    }

    /// Appends a chunk. True when the bytes now differ from those held before a restart
    /// (readers that sent the old ones must fail).
    async fn append(&mut self, chunk: &[u8]) -> io::Result<bool> {
        self.file.write_all(chunk).await?;
        self.hasher.update(chunk);
        let before = self.written;
        self.written += chunk.len() as u64;
        if self.written - self.synced >= WRITEBACK_STEP {
            self.file.flush().await?;
            crate::store::start_writeback(&self.file, self.synced, self.written - self.synced);
            self.synced = self.written;
        }
        let Some(c) = &mut self.check else {
            return Ok(false);
        };
        let upto = (c.len.saturating_sub(before) as usize).min(chunk.len());
        c.new.update(&chunk[..upto]);
        if self.written < c.len {
            return Ok(false);
        }
        let diverged = c.new.finalize() != c.old;
        self.check = None;
        Ok(diverged)
    }
}

/// After a restart from zero: the first `len` bytes held before, by hash, to compare the new
/// bytes with once as many have arrived.
struct PrefixCheck {
    len: u64,
    old: blake3::Hash,
    new: blake3::Hasher,
}

/// Outcome of awaiting a transfer to its end.
#[derive(Debug, Clone)]
pub enum Finished {
    Stored(Done),
    NotModified,
}

pub struct Fetcher {
    store: Store,
    upstream: Arc<Upstream>,
    peers: Option<Arc<Peers>>,
    seeds: Option<Arc<Seeds>>,
    stats: Arc<Stats>,
    retries: u32,
    inflight: Mutex<HashMap<String, Arc<Transfer>>>,
}

impl Fetcher {
    pub fn new(
        store: Store,
        upstream: Arc<Upstream>,
        peers: Option<Arc<Peers>>,
        seeds: Option<Arc<Seeds>>,
        stats: Arc<Stats>,
        retries: u32,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            upstream,
            peers,
            seeds: seeds.filter(|s| !s.is_empty()),
            stats,
            retries,
            inflight: Mutex::new(HashMap::new()),
        })
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    pub fn peers(&self) -> Option<&Arc<Peers>> {
        self.peers.as_ref()
    }

    pub fn seeds(&self) -> Option<&Arc<Seeds>> {
        self.seeds.as_ref()
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Joins the transfer of `item` if one runs, else starts one.
    pub fn start(self: &Arc<Self>, item: Item) -> Arc<Transfer> {
        let key = item.key();
        let Ok(mut map) = self.inflight.lock() else {
            // A poisoned map only means a panic elsewhere; run unshared rather than fail.
            return self.spawn(item, key);
        };
        if let Some(t) = map.get(&key) {
            Stats::inc(&self.stats.joined);
            return t.clone();
        }
        let t = self.spawn(item, key.clone());
        map.insert(key, t.clone());
        t
    }

    fn spawn(self: &Arc<Self>, item: Item, key: String) -> Arc<Transfer> {
        let name = hash::hex(&blake3::hash(key.as_bytes()).as_bytes()[..16]);
        let part = self.store.partial_dir().join(format!("{name}.part"));
        let (tx, rx) = watch::channel(Phase::Connecting);
        let t = Arc::new(Transfer {
            key: key.clone(),
            part: part.clone(),
            rx,
        });
        Stats::inc(&self.stats.misses);
        let me = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = me.run(&item, &part, &tx).await;
            if let Ok(mut m) = me.inflight.lock() {
                m.remove(&key);
            }
            let phase = match result {
                Ok(Finished::Stored(d)) => {
                    let secs = started.elapsed().as_secs_f64();
                    let from = d.from;
                    tracing::info!(repo = %item.repo, path = %item.path, bytes = d.size,
                        secs = format!("{secs:.2}"),
                        mib_per_sec = format!("{:.1}", d.size as f64 / 1048576.0 / secs.max(1e-6)),
                        "fetched from {from}, verified and stored");
                    Phase::Done(d)
                }
                Ok(Finished::NotModified) => Phase::NotModified,
                Err(e) => {
                    if e.is_uplink_down() {
                        tracing::debug!(repo = %item.repo, path = %item.path, error = %e, "upstream unreachable");
                    } else if !e.is_not_found() {
                        Stats::inc(&me.stats.upstream_errors);
                        tracing::warn!(repo = %item.repo, path = %item.path, error = %e, "fetch failed; clients of this transfer got an error");
                    }
                    Phase::Failed(e)
                }
            };
            tx.send_replace(phase);
        });
        t
    }

    /// Fetches `item` (joining a running transfer) and waits for the end.
    pub async fn fetch(self: &Arc<Self>, item: Item) -> Result<Finished, FetchError> {
        let t = self.start(item);
        t.wait().await
    }

    async fn run(
        &self,
        item: &Item,
        part: &PathBuf,
        tx: &watch::Sender<Phase>,
    ) -> Result<Finished, FetchError> {
        let meta_path = part.with_extension("meta");
        let also = item.expected.as_ref().map(|e| e.checksum.algo);
        let sum_text = item
            .expected
            .as_ref()
            .map(|e| ContentRef::Sum(e.checksum.clone()).text());
        let io_err = |e: io::Error| {
            FetchError::from(StoreError::Io {
                path: part.clone(),
                source: e,
            })
        };

        // Resume what an earlier attempt (or an earlier run of the process) left behind: bytes
        // that upstream validators vouch for, or bytes of the content the checksum names.
        let mut meta: PartMeta = match (item.revalidate.is_none(), std::fs::read(&meta_path)) {
            (true, Ok(b)) => serde_json::from_slice(&b).unwrap_or_default(),
            _ => PartMeta::default(),
        };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(part)
            .await
            .map_err(io_err)?;
        let resumable = meta.etag.is_some()
            || meta.last_modified.is_some()
            || (meta.checksum.is_some() && meta.checksum == sum_text);
        let written = if resumable {
            file.metadata().await.map_err(io_err)?.len()
        } else {
            0
        };
        let mut hasher = if written > 0 {
            let p = part.clone();
            let h = tokio::task::spawn_blocking(move || {
                std::fs::File::open(&p).and_then(|f| hash::hash_reader(f.take(written), also))
            })
            .await
            .map_err(|e| FetchError::Store(e.to_string()))?
            .map_err(io_err)?;
            tracing::info!(repo = %item.repo, path = %item.path, bytes = written, "resuming a partial download");
            h
        } else {
            MultiHasher::new(also)
        };
        // Every byte may be held already (an earlier run stopped between the last byte and the
        // install): check them instead of asking a source for a range past the end.
        let held = match held_whole(item.expected.as_ref(), written) {
            Some(exp) => {
                let ok = check_expected(&item.path, Some(exp), &hasher.clone_finish()).is_ok();
                if !ok {
                    tracing::info!(repo = %item.repo, path = %item.path, "a complete partial download does not match the metadata; starting over");
                }
                ok
            }
            None => false,
        };
        let written = if written > 0
            && item
                .expected
                .as_ref()
                .and_then(|e| e.size)
                .is_some_and(|s| written >= s)
            && !held
        {
            // Longer than the file, or whole but wrong: nothing in it can be used.
            hasher = MultiHasher::new(also);
            0
        } else {
            written
        };
        if written == 0 {
            file.set_len(0).await.map_err(io_err)?;
        }
        file.seek(io::SeekFrom::Start(written))
            .await
            .map_err(io_err)?;
        let mut p = Part {
            file,
            written,
            hasher,
            check: None,
            also,
            synced: written,
        };
        let mut announced = p.written > 0;
        let mut generation = 0u32;
        let mut first_total: Option<Option<u64>> = None;
        // Progress is measured against the most bytes ever held, so a mirror that breaks off
        // at the same point after every restart from zero cannot keep us looping.
        let mut best = p.written;
        let mut failures_without_progress = 0u32;
        let mut attempts = 0u32;
        // Whether the part file holds bytes from a source other than upstream.
        let mut foreign = false;
        let mut steps = plan(
            item.site && self.peers.is_some(),
            item.expected
                .as_ref()
                .is_some_and(|e| hash::can_verify(e.checksum.algo)),
            item.path.kind() == PathKind::Immutable,
            self.seeds.is_some(),
        )
        .into_iter();
        let mut source = if held {
            Source::Held
        } else {
            self.next_source(item, &mut steps).await
        };

        let (etag, last_modified, source) = loop {
            if matches!(source, Source::Held) {
                tracing::info!(repo = %item.repo, path = %item.path, bytes = p.written, "every byte was already held from an earlier download; verified, not fetched again");
                break (meta.etag.clone(), meta.last_modified.clone(), source);
            }
            let ask = Ask {
                from: p.written,
                if_range: meta.etag.clone().or_else(|| meta.last_modified.clone()),
                if_none_match: item.revalidate.as_ref().and_then(|v| v.0.clone()),
                if_modified_since: item.revalidate.as_ref().and_then(|v| v.1.clone()),
            };
            let opened = match &source {
                Source::Upstream => self.upstream.open(&item.repo, &item.path, &ask).await,
                other => match self.open_other(item, other, p.written).await {
                    Ok(b) => Ok(Opened::Body(b)),
                    Err(e) => {
                        // Any failure but upstream's: on to the next source, keeping
                        // content-addressed bytes.
                        self.blame(&source, &e, false);
                        tracing::info!(repo = %item.repo, path = %item.path, source = %source, error = %e, "could not get the file there; trying the next source");
                        if item.expected.is_none() && p.written > 0 {
                            p.start_over(first_total.is_some()).await.map_err(io_err)?;
                        }
                        source = self.next_source(item, &mut steps).await;
                        continue;
                    }
                },
            };
            let body = match opened {
                Ok(Opened::NotModified) => {
                    drop(p);
                    let _ = std::fs::remove_file(part);
                    return Ok(Finished::NotModified);
                }
                Ok(Opened::Body(b)) => b,
                Err(UpstreamError::Status(code)) if p.written > 0 => {
                    // The partial file does not fit upstream's file (416 past its end, or a
                    // range answer we cannot use): drop it and start over.
                    tracing::info!(repo = %item.repo, path = %item.path, status = code,
                        "upstream refused to resume; restarting from zero");
                    p.start_over(first_total.is_some()).await.map_err(io_err)?;
                    meta = PartMeta::default();
                    let _ = std::fs::remove_file(&meta_path);
                    continue;
                }
                Err(e) => {
                    if p.written == 0 {
                        drop(p);
                        let _ = std::fs::remove_file(part);
                    }
                    return Err(e.into());
                }
            };
            if !body.resumed && p.written > 0 {
                tracing::info!(repo = %item.repo, path = %item.path, source = %source, "the source sent the whole file instead of the rest; restarting from zero");
                p.start_over(first_total.is_some()).await.map_err(io_err)?;
            }
            meta = PartMeta {
                etag: body.etag.clone(),
                last_modified: body.last_modified.clone(),
                checksum: sum_text.clone(),
            };
            if let Ok(b) = serde_json::to_vec(&meta) {
                let _ = tokio::fs::write(&meta_path, b).await;
            }
            let want_size = item.expected.as_ref().and_then(|e| e.size);
            if let (Some(w), Some(t)) = (want_size, body.total)
                && w != t
            {
                if !matches!(source, Source::Upstream) {
                    self.blame(
                        &source,
                        &format!("announced {t} bytes, metadata says {w}"),
                        true,
                    );
                    source = self.next_source(item, &mut steps).await;
                    continue;
                }
                self.discard(part, &meta_path);
                return Err(FetchError::Verify(format!(
                    "upstream {} says {t} bytes, metadata says {w}",
                    body.url
                )));
            }
            let total = want_size.or(body.total);
            if first_total.is_some_and(|t| t != total) {
                // A different length than clients were told: they must not end cleanly.
                generation += 1;
            }
            first_total.get_or_insert(total);
            if announced {
                tx.send_replace(Phase::Streaming {
                    total,
                    written: p.written,
                    generation,
                });
            }

            let from_upstream = matches!(source, Source::Upstream);
            let mut broke = None;
            let mut stream = body.stream;
            // A peer must keep a minimum pace (deadline from the size it has to send), or the
            // transfer goes on from the next source.
            let pace = source.min_rate().map(|rate| Pace {
                start: tokio::time::Instant::now(),
                rate,
                remaining: total.map(|t| t.saturating_sub(p.written)),
                got: 0,
            });
            let mut pace = pace;
            loop {
                let next = match &pace {
                    Some(pc) => match tokio::time::timeout_at(pc.deadline(), stream.next()).await {
                        Ok(n) => n,
                        Err(_) => {
                            let why = pc.too_slow();
                            if let (Source::Holder(peer) | Source::Fetcher(peer), Some(peers)) =
                                (&source, &self.peers)
                            {
                                peers.too_slow(peer, &why);
                            }
                            broke = Some(why);
                            break;
                        }
                    },
                    None => stream.next().await,
                };
                let Some(chunk) = next else { break };
                if let (Some(pc), Ok(c)) = (&mut pace, &chunk) {
                    pc.got += c.len() as u64;
                }
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        broke = Some(e);
                        break;
                    }
                };
                if p.written == 0
                    && let Err(bad) = upstream::check_first_bytes(&item.path, &chunk)
                {
                    if !matches!(source, Source::Upstream) {
                        self.blame(&source, &"sent something that is not the named file", true);
                        broke = Some("bad start".into());
                        break;
                    }
                    self.discard(part, &meta_path);
                    return Err(match bad {
                        BadStart::Html => {
                            tracing::warn!(url = %body.url, "upstream sent an HTML page instead of the file (captive portal?); not stored");
                            UpstreamError::Html.into()
                        }
                        BadStart::NotA(what) => {
                            Stats::inc(&self.stats.verify_failures);
                            FetchError::Verify(format!(
                                "upstream {} sent something that is not {what}; not stored",
                                body.url
                            ))
                        }
                    });
                }
                if !announced {
                    // Readers are told only once the start of the body looked right, so a
                    // refused body is a clean error answer rather than a cut one.
                    tx.send_replace(Phase::Streaming {
                        total,
                        written: p.written,
                        generation,
                    });
                    announced = true;
                }
                if let Some(t) = total
                    && p.written + chunk.len() as u64 > t
                {
                    if !matches!(source, Source::Upstream) {
                        self.blame(
                            &source,
                            &format!("sent more than the {t} bytes expected"),
                            true,
                        );
                        broke = Some("too long".into());
                        p.start_over(true).await.map_err(io_err)?;
                        break;
                    }
                    self.discard(part, &meta_path);
                    return Err(FetchError::Verify(format!(
                        "upstream {} sent more than the {t} bytes expected",
                        body.url
                    )));
                }
                let diverged = p.append(&chunk).await.map_err(|e| {
                    self.discard(part, &meta_path);
                    io_err(e)
                })?;
                if from_upstream {
                    Stats::add(&self.stats.bytes_fetched, chunk.len() as u64);
                } else {
                    foreign = true;
                }
                if diverged {
                    // Not the bytes readers already sent: they must fail, not splice.
                    generation += 1;
                    tracing::info!(repo = %item.repo, path = %item.path, "the file changed during the transfer; clients mid-way were cut");
                }
                tx.send_modify(|phase| {
                    if let Phase::Streaming {
                        written: w,
                        generation: g,
                        ..
                    } = phase
                    {
                        *w = p.written;
                        *g = generation;
                    }
                });
            }
            p.file.flush().await.map_err(io_err)?;
            if broke.is_none()
                && let Some(t) = total
                && p.written < t
            {
                broke = Some(format!("body ended after {} of {t} bytes", p.written));
            }
            if let Some(why) = broke {
                if !matches!(source, Source::Upstream) {
                    // A peer or seed that broke off: the next source continues where it
                    // stopped (the bytes are checked against the checksum at the end).
                    self.blame(&source, &why, false);
                    tracing::info!(repo = %item.repo, path = %item.path, source = %source, at = p.written, reason = %why, "transfer broke off; trying the next source");
                    if item.expected.is_none() {
                        p.start_over(first_total.is_some()).await.map_err(io_err)?;
                    }
                    source = self.next_source(item, &mut steps).await;
                    continue;
                }
                attempts += 1;
                if p.written > best {
                    best = p.written;
                    failures_without_progress = 0;
                } else {
                    failures_without_progress += 1;
                }
                if failures_without_progress > self.retries || attempts > MAX_ATTEMPTS {
                    // Keep the partial file: the next request resumes it.
                    return Err(FetchError::Interrupted(why));
                }
                tracing::info!(repo = %item.repo, path = %item.path, at = p.written, reason = %why, "transfer broke off; resuming");
                if meta.etag.is_none() && meta.last_modified.is_none() && item.expected.is_none() {
                    // Nothing to validate a resume with: start over.
                    p.start_over(first_total.is_some()).await.map_err(io_err)?;
                    tx.send_replace(Phase::Streaming {
                        total,
                        written: p.written,
                        generation,
                    });
                }
                continue;
            }
            if p.check.is_some() {
                // The new file is shorter than what readers may already have sent.
                generation += 1;
                p.check = None;
            }
            let digests = p.hasher.clone_finish();
            match check_expected(&item.path, item.expected.as_ref(), &digests) {
                Ok(()) => {
                    if self.is_peer(&source) {
                        Stats::inc(&self.stats.from_peers);
                        tracing::debug!(repo = %item.repo, path = %item.path, source = %source, "verified bytes from the site");
                    }
                    break (body.etag, body.last_modified, source);
                }
                Err(what) => {
                    Stats::inc(&self.stats.verify_failures);
                    if !matches!(source, Source::Upstream) {
                        // Bad bytes from a peer or seed: leave it aside and start over from
                        // the next source; readers that already sent some of them are cut.
                        self.blame(&source, &what, true);
                        p.start_over(true).await.map_err(io_err)?;
                        source = self.next_source(item, &mut steps).await;
                        continue;
                    }
                    if foreign {
                        // Upstream resumed what a peer or seed that broke off had sent, and the
                        // whole does not verify: those bytes were bad. Once, from zero, from
                        // upstream alone (readers that sent them are cut).
                        foreign = false;
                        tracing::info!(repo = %item.repo, path = %item.path, reason = %what,
                            "the file did not verify after upstream resumed another source's bytes; fetching it whole from upstream");
                        p.start_over(true).await.map_err(io_err)?;
                        continue;
                    }
                    // The partial file goes too, so if a resumed download was the culprit,
                    // the next request starts from zero.
                    self.discard(part, &meta_path);
                    return Err(FetchError::Verify(what));
                }
            }
        };

        let digests = std::mem::replace(&mut p.hasher, MultiHasher::new(None)).finish();
        let std_file = p.file.into_std().await;
        let store = self.store.clone();
        let (p, d) = (part.clone(), digests.clone());
        tokio::task::spawn_blocking(move || store.install_blob(&std_file, &p, &d))
            .await
            .map_err(|e| FetchError::Store(e.to_string()))?
            .inspect_err(|_| self.discard(part, &meta_path))?;
        let _ = std::fs::remove_file(&meta_path);
        let now = now_secs();
        let mut batch = Batch::new();
        batch.put_blob(BlobMeta::from_digests(&digests, now));
        if item.publish {
            batch.set_path(
                item.key(),
                PathEntry {
                    blob: digests.blake3,
                    checked_at: now,
                    etag: etag.clone(),
                    last_modified: last_modified.clone(),
                },
            );
        }
        // Disk cap hook (issue 10, `Store::commit_or_pass`): the rows are committed when the
        // store has room, after evicting least recently used files if needed; when everything
        // left is protected the blob is passed through instead: readers still get every byte
        // (Done below), nothing is indexed, and the file is deleted after a grace period.
        self.store
            .commit_or_pass(batch, &item.key(), &digests.blake3, digests.len)
            .await?;
        Ok(Finished::Stored(Done {
            blob: digests.blake3,
            size: digests.len,
            generation,
            etag,
            last_modified,
            from: source.kind(),
        }))
    }

    /// The next source of the plan that can be used now (upstream at the latest).
    async fn next_source(&self, item: &Item, steps: &mut std::vec::IntoIter<Step>) -> Source {
        let sum = item.expected.as_ref().map(|e| &e.checksum);
        for step in steps.by_ref() {
            match (step, &self.peers, &self.seeds, sum) {
                (Step::Seed, _, Some(seeds), Some(c)) if c.algo == ChecksumAlgo::Sha256 => {
                    if let Some(f) = seeds.find(&c.digest) {
                        return Source::Seed(f);
                    }
                }
                (Step::Holder, Some(peers), _, Some(c)) => {
                    if let Some(p) = peers.holder(&ContentRef::Sum(c.clone())).await {
                        return Source::Holder(p);
                    }
                }
                (Step::Fetcher, Some(peers), _, _) => {
                    if let Some(p) = peers.fetcher_for(&item.key()) {
                        return Source::Fetcher(p);
                    }
                }
                (Step::Upstream, ..) => return Source::Upstream,
                _ => {}
            }
        }
        Source::Upstream
    }

    /// A source other than upstream failed: a transport failure is noted; bad bytes (`bad`)
    /// put a peer aside, and are logged for a seed (its disk is damaged).
    fn blame(&self, s: &Source, why: &dyn std::fmt::Display, bad: bool) {
        match (s, &self.peers) {
            (Source::Holder(p) | Source::Fetcher(p), Some(peers)) if bad => {
                peers.put_aside(p, &why.to_string())
            }
            (Source::Holder(p) | Source::Fetcher(p), Some(peers)) => {
                peers.note_failure(p, &why.to_string())
            }
            (Source::Seed(f), _) if bad => {
                Stats::inc(&self.stats.verify_failures);
                tracing::warn!(file = %f.path.display(), reason = %why, "a seed directory file failed verification (damaged disk?); not used");
            }
            _ => {}
        }
    }

    fn is_peer(&self, s: &Source) -> bool {
        matches!(s, Source::Holder(_) | Source::Fetcher(_))
    }

    /// Opens a source other than upstream from byte `from`.
    async fn open_other(
        &self,
        item: &Item,
        source: &Source,
        from: u64,
    ) -> Result<Box<upstream::Body>, String> {
        let sum = item
            .expected
            .as_ref()
            .map(|e| ContentRef::Sum(e.checksum.clone()));
        let (stream, total) = match (source, &self.peers, sum) {
            (Source::Holder(p), Some(peers), Some(r)) => {
                let b = peers.get(p, &r, from).await.map_err(|e| e.to_string())?;
                (b.stream, b.total)
            }
            (Source::Fetcher(p), Some(peers), _) => {
                let b = peers
                    .fetch(
                        p,
                        &item.repo,
                        item.path.as_str(),
                        item.expected.as_ref(),
                        from,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                (b.stream, b.total)
            }
            (Source::Seed(f), ..) => (read_file(&f.path, from).await?, Some(f.size)),
            _ => return Err("no such source".into()),
        };
        Ok(Box::new(upstream::Body {
            stream,
            resumed: true,
            total,
            etag: None,
            last_modified: None,
            url: source.to_string(),
        }))
    }

    fn discard(&self, part: &PathBuf, meta: &PathBuf) {
        let _ = std::fs::remove_file(part);
        let _ = std::fs::remove_file(meta);
    }
}

impl Transfer {
    /// Waits until the transfer has answered headers: the phase is anything but Connecting.
    pub async fn started(&self) -> Phase {
        let mut rx = self.rx.clone();
        loop {
            let p = rx.borrow_and_update().clone();
            if !matches!(p, Phase::Connecting) {
                return p;
            }
            if rx.changed().await.is_err() {
                return rx.borrow().clone();
            }
        }
    }

    /// Waits for the end of the transfer.
    pub async fn wait(&self) -> Result<Finished, FetchError> {
        let mut rx = self.rx.clone();
        loop {
            match rx.borrow_and_update().clone() {
                Phase::Done(d) => return Ok(Finished::Stored(d)),
                Phase::NotModified => return Ok(Finished::NotModified),
                Phase::Failed(e) => return Err(e),
                _ => {}
            }
            if rx.changed().await.is_err() {
                return Err(FetchError::Interrupted("transfer task ended".into()));
            }
        }
    }

    /// The file's bytes as they arrive, from the start. Ends cleanly only once the transfer is
    /// verified and stored; yields an error if it fails, so the HTTP layer aborts the response.
    pub fn reader(
        self: Arc<Self>,
        store: Store,
    ) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send + 'static {
        self.reader_from(store, 0)
    }

    /// [`Transfer::reader`] from byte `offset` on.
    pub fn reader_from(
        self: Arc<Self>,
        store: Store,
        offset: u64,
    ) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send + 'static {
        struct St {
            t: Arc<Transfer>,
            store: Store,
            rx: watch::Receiver<Phase>,
            file: Option<Arc<std::fs::File>>,
            offset: u64,
            /// The generation of the bytes sent so far.
            generation: u32,
        }
        fn fail(msg: &str) -> Option<(io::Result<Bytes>, Option<St>)> {
            Some((Err(io::Error::other(msg.to_string())), None))
        }
        let rx = self.rx.clone();
        // A reader joining mid-way follows the bytes of the current generation.
        let generation = match &*rx.borrow() {
            Phase::Streaming { generation, .. } => *generation,
            Phase::Done(d) => d.generation,
            _ => 0,
        };
        let st = St {
            t: self,
            store,
            rx,
            file: None,
            offset,
            generation,
        };
        futures_util::stream::unfold(Some(st), |st| async move {
            let mut st = st?;
            loop {
                let phase = st.rx.borrow_and_update().clone();
                let (avail, generation, done) = match &phase {
                    // The last byte is held back until the transfer is verified, so a
                    // failed check can never look like a complete answer.
                    Phase::Streaming {
                        written,
                        total,
                        generation,
                    } => {
                        let avail = match total {
                            Some(t) => (*written).min(t.saturating_sub(1)),
                            None => *written,
                        };
                        (avail, *generation, None)
                    }
                    Phase::Done(d) => (d.size, d.generation, Some(d.blob)),
                    Phase::Failed(e) => return fail(&e.to_string()),
                    Phase::NotModified => return None,
                    Phase::Connecting => (0, st.generation, None),
                };
                if generation != st.generation {
                    if st.offset > 0 {
                        return fail(
                            "upstream sent the file anew mid-transfer; this answer is aborted, ask again",
                        );
                    }
                    st.generation = generation;
                }
                if st.offset < avail {
                    if st.file.is_none() {
                        // The part file, or the blob it became once the transfer finished.
                        let opened = match done {
                            Some(blob) => std::fs::File::open(st.store.blob_path(&blob)),
                            None => std::fs::File::open(&st.t.part),
                        };
                        match opened {
                            Ok(f) => st.file = Some(Arc::new(f)),
                            // Renamed into the store just now: wait for Done, then open the blob.
                            Err(e) if e.kind() == io::ErrorKind::NotFound && done.is_none() => {}
                            Err(e) => return Some((Err(e), None)),
                        }
                    }
                    if let Some(f) = st.file.clone() {
                        let (off, want) = (
                            st.offset,
                            (avail - st.offset).min(READ_CHUNK as u64) as usize,
                        );
                        let r = tokio::task::spawn_blocking(move || {
                            let mut buf = vec![0u8; want];
                            let n = f.read_at(&mut buf, off)?;
                            buf.truncate(n);
                            Ok::<_, io::Error>(buf)
                        })
                        .await;
                        match r {
                            Ok(Ok(buf)) if !buf.is_empty() => {
                                st.offset += buf.len() as u64;
                                return Some((Ok(Bytes::from(buf)), Some(st)));
                            }
                            Ok(Ok(_)) if done.is_some() => {
                                return fail("stored file is shorter than its recorded size");
                            }
                            Ok(Ok(_)) => {} // the writer truncated for a restart: wait
                            Ok(Err(e)) => return Some((Err(e), None)),
                            Err(e) => return Some((Err(io::Error::other(e)), None)),
                        }
                    }
                } else if done.is_some() {
                    return None;
                }
                if st.rx.changed().await.is_err()
                    && !matches!(*st.rx.borrow(), Phase::Done(_) | Phase::Failed(_))
                {
                    return fail("transfer ended without a result");
                }
            }
        })
    }
}

use std::io::Read as _;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repodata::Checksum;

    #[test]
    fn peers_are_asked_only_for_checksummed_immutable_files() {
        use Step::*;
        assert_eq!(
            plan(true, true, true, false),
            vec![Holder, Fetcher, Upstream]
        );
        // No checksum of our own to verify peer bytes against: upstream only.
        assert_eq!(plan(true, false, true, true), vec![Upstream]);
        // Files that change in place are each node's own business.
        assert_eq!(plan(true, true, false, true), vec![Upstream]);
        // A request that came from a peer is never forwarded (a local seed still helps).
        assert_eq!(plan(false, true, true, false), vec![Upstream]);
        assert_eq!(plan(false, true, true, true), vec![Seed, Upstream]);
        assert_eq!(
            plan(true, true, true, true),
            vec![Seed, Holder, Fetcher, Upstream]
        );
    }

    #[test]
    fn finished_bytes_are_checked_against_metadata() {
        let path = RepoPath::parse_relative("Packages/a.rpm").unwrap();
        let mut h = MultiHasher::new(None);
        h.update(b"package");
        let got = h.finish();
        let sha = got.get(ChecksumAlgo::Sha256).unwrap().clone();
        let exp = |size, checksum| Expected { checksum, size };
        assert_eq!(check_expected(&path, None, &got), Ok(()));
        assert_eq!(
            check_expected(&path, Some(&exp(Some(7), sha.clone())), &got),
            Ok(())
        );
        assert_eq!(
            check_expected(&path, Some(&exp(None, sha.clone())), &got),
            Ok(())
        );
        let e = check_expected(&path, Some(&exp(Some(8), sha.clone())), &got).unwrap_err();
        assert!(e.contains("metadata says 8 bytes"), "{e}");
        let other = Checksum {
            algo: ChecksumAlgo::Sha256,
            digest: vec![0; 32],
        };
        assert!(check_expected(&path, Some(&exp(Some(7), other)), &got).is_err());
        // md5 cannot be computed here: the size still decides.
        let md5 = Checksum {
            algo: ChecksumAlgo::Md5,
            digest: vec![0; 16],
        };
        assert_eq!(
            check_expected(&path, Some(&exp(Some(7), md5.clone())), &got),
            Ok(())
        );
        assert!(check_expected(&path, Some(&exp(Some(6), md5)), &got).is_err());
    }
}
