//! The miss path: one transfer per item however many clients ask (single-flight), streamed to
//! every one of them as bytes arrive, verified at the end, then published.
//!
//! A transfer writes into `partial/<key hash>.part` (with a `.meta` sidecar holding the
//! upstream validators or the checksum), hashing as it goes. Readers follow the growing file,
//! so memory does not grow with file size or client count. Its sources (`source`) come in the
//! order [`plan`] gives (bytes already held, a seed disk, a peer that holds the checksum, the site's
//! downloader, upstream); what happens when one opens, breaks off, is too slow or sends bad
//! bytes is decided by [`rules`] (a state machine without I/O); this module only carries its
//! steps out: opening sources, writing the part file, publishing progress to readers, and at
//! the end installing the verified file as a blob. If a check fails nothing is stored and
//! readers get an error (so their connection is aborted, never ended cleanly). Transfers run as
//! their own tasks: a client that goes away does not cancel them.
//!
//! Path rows for served content are written here: at the end of a transfer (`Item::publish`),
//! when upstream confirms a stored copy (a 304 moves its check time), and when bytes held under
//! another path are listed under a new one ([`Fetcher::list`]).
//!
//! Not here: deciding whether a request is a hit (`lookup`), parsing metadata, or choosing
//! mirrors (the `upstream` module).

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::hash::{self, BlobId, MultiHasher};
use crate::paths::{PathKind, RepoPath};
use crate::peer::{ContentRef, Peers};
use crate::seed::Seeds;
use crate::stats::Stats;
use crate::store::{
    Batch, BlobMeta, Expected, PathEntry, Store, StoreError, check_expected, now_secs,
};
use crate::uplink::{self as link, Class, Uplink};
use crate::upstream::{self, Ask, BadStart, Opened, Upstream, UpstreamError};

mod progress;
pub mod rules;
mod source;
pub use progress::TransferView;
use rules::{Next, Restart, Rules};
use source::{OpenError, Pace, Source, Sources};
pub use source::{Step, plan};

/// Size of the pieces readers take from a growing file.
const READ_CHUNK: usize = 256 * 1024;

/// Longest silence allowed from the site's downloader sending background work: it pauses
/// while a client of the site downloads, but an honest one stops (and says so) after
/// [`MAX_BACKGROUND_PAUSE`] rather than stay silent.
const BACKGROUND_PEER_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// The pace the site's downloader must keep on average for background work (bytes per second;
/// see [`crate::peer::transfer_deadline`]): low, for a small share of a capped site, but a peer
/// that trickles below it is left, as for client downloads.
const BACKGROUND_PEER_MIN_RATE: u64 = 1024;

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
    /// `(etag, last_modified)` of a stored copy: ask upstream conditionally. A 304 confirms
    /// it: with `publish`, its path row's check time moves to now.
    pub revalidate: Option<(Option<String>, Option<String>)>,
    /// Peers of the site may supply it (false when a peer asked us, so requests never
    /// travel in circles).
    pub site: bool,
    /// Whether a client waits for it ([`Class::Interactive`]) or it is prefetch or mirroring
    /// ([`Class::Background`]: its upstream bytes wait for the background hours, the budget and
    /// every client download of the site). A client joining a background transfer promotes it.
    pub class: Class,
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
    /// The same, for counting.
    pub source: crate::stats::Source,
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
    /// Background work was told to stop for now (outside its hours, budget spent, or a client
    /// waiting for long); what it received is kept and resumed later.
    #[error("background work paused: {0}")]
    Held(crate::uplink::Hold),
    /// Background work the site's downloader could not send now: asked again later rather
    /// than taken from upstream by this node (the site takes each file from upstream once).
    #[error("background work deferred: {0}")]
    Deferred(String),
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
        /// Why readers of an earlier generation were cut (for their error), if one was.
        cut: Option<Arc<str>>,
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
    /// Set when a client waits for a transfer that began as background work: from its next
    /// piece on it is paced as interactive.
    promoted: Arc<Promotion>,
    /// Which source it reads now and since when, for the status (`progress`).
    now: Arc<Mutex<progress::Reading>>,
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

/// The metadata a part file of `written` bytes can be checked against as a whole file: only
/// when metadata names the size, `written` is that size, and the checksum is one this build
/// computes.
fn held_whole(expected: Option<&Expected>, written: u64) -> Option<&Expected> {
    expected.filter(|e| written > 0 && e.size == Some(written) && hash::can_verify(e.checksum.algo))
}

/// The file a transfer writes and what is known of its bytes so far.
struct Part {
    file: tokio::fs::File,
    written: u64,
    hasher: MultiHasher,
    /// Set by a restart from zero while readers may hold the old bytes.
    check: Option<PrefixCheck>,
    also: Option<crate::checksum::ChecksumAlgo>,
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
        if !exposed {
            // Nobody holds the old bytes (or they are known bad and their readers were cut):
            // nothing to compare the new ones with.
            self.check = None;
        } else if self.written > 0 && self.check.is_none() {
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

/// Whether a client waits for a transfer that began as background work (set once, never
/// cleared), and a wake-up for the loop reading it from the site's downloader, which must then
/// ask again as interactive.
struct Promotion {
    flag: AtomicBool,
    wake: tokio::sync::Notify,
}

impl Promotion {
    fn new(interactive: bool) -> Promotion {
        Promotion {
            flag: AtomicBool::new(interactive),
            wake: tokio::sync::Notify::new(),
        }
    }

    fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// True when this call promoted it (it was background until now).
    fn promote(&self) -> bool {
        let first = !self.flag.swap(true, Ordering::Relaxed);
        if first {
            // A stored permit: the reading loop sees it even if it is not waiting yet.
            self.wake.notify_one();
        }
        first
    }

    /// The class the transfer has now.
    fn class(&self, asked: Class) -> Class {
        if self.is_set() {
            Class::Interactive
        } else {
            asked
        }
    }
}

/// Longest a background transfer pauses its upstream stream for a client of the site; held
/// longer (or held by the clock or the budget), it stops and resumes later from its part file,
/// rather than keep a mirror's connection open (or let it time out) for nothing.
const MAX_BACKGROUND_PAUSE: std::time::Duration = std::time::Duration::from_secs(15);

/// Waits until the uplink scheduler has granted `len` bytes, in slices of at most a second
/// (so the upstream stream is never still for long: reqwest's read timeout restarts per
/// piece, and TCP holds what we have not read yet). A background transfer that a client
/// joins meanwhile (`promoted`) asks as interactive from its next slice on. `Err`: a
/// background transfer must stop for now (see [`MAX_BACKGROUND_PAUSE`]).
async fn wait_for_uplink(
    t: &mut link::Transfer,
    len: u64,
    promoted: &Promotion,
) -> Result<(), link::Hold> {
    let mut left = len;
    let mut held_since: Option<Instant> = None;
    while left > 0 {
        if t.class() == Class::Background && promoted.is_set() {
            t.promote();
        }
        let p = t.ask(left, link::Now::system());
        match p.held {
            // A client joined meanwhile: ask again at once (promoted at the top of the loop).
            Some(_) if promoted.is_set() => continue,
            Some(h) => {
                let since = *held_since.get_or_insert_with(Instant::now);
                if h != link::Hold::InteractiveBusy || since.elapsed() >= MAX_BACKGROUND_PAUSE {
                    return Err(h);
                }
            }
            None => held_since = None,
        }
        let wait = if p.bytes == 0 && p.wait.is_zero() {
            std::time::Duration::from_millis(10)
        } else {
            p.wait
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        left = left.saturating_sub(p.bytes);
    }
    Ok(())
}

/// Tells readers what changed (the stream started, a new generation, another total);
/// true when there was something to tell.
fn publish(tx: &watch::Sender<Phase>, rules: &mut Rules) -> bool {
    if !rules.take_publish() {
        return false;
    }
    tx.send_replace(Phase::Streaming {
        total: rules.total(),
        written: rules.written(),
        generation: rules.generation(),
        cut: rules.cut().map(Arc::from),
    });
    true
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
    sources: Sources,
    stats: Arc<Stats>,
    retries: u32,
    inflight: Mutex<HashMap<String, Arc<Transfer>>>,
    /// Paces bytes from upstream under the site's cap (`[uplink]`); none: unpaced.
    uplink: Option<Arc<Uplink>>,
}

impl Fetcher {
    pub fn new(
        store: Store,
        upstream: Arc<Upstream>,
        peers: Option<Arc<Peers>>,
        seeds: Option<Arc<Seeds>>,
        stats: Arc<Stats>,
        retries: u32,
        uplink: Option<Arc<Uplink>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            sources: Sources {
                upstream,
                peers,
                seeds: seeds.filter(|s| !s.is_empty()),
            },
            stats,
            retries,
            inflight: Mutex::new(HashMap::new()),
            uplink,
        })
    }

    pub fn upstream(&self) -> &Upstream {
        &self.sources.upstream
    }

    pub fn peers(&self) -> Option<&Arc<Peers>> {
        self.sources.peers.as_ref()
    }

    pub fn seeds(&self) -> Option<&Arc<Seeds>> {
        self.sources.seeds.as_ref()
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
            if item.class == Class::Interactive && t.promoted.promote() {
                tracing::info!(repo = %item.repo, path = %item.path,
                    "a client asked for a file being prefetched: its download now goes first");
            }
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
        let promoted = Arc::new(Promotion::new(item.class == Class::Interactive));
        let now = Arc::new(Mutex::new(progress::Reading::default()));
        let t = Arc::new(Transfer {
            key: key.clone(),
            part: part.clone(),
            rx,
            promoted: promoted.clone(),
            now: now.clone(),
        });
        Stats::inc(&self.stats.misses);
        let me = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = me.run(&item, &part, &tx, &promoted, &now).await;
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
                    if matches!(e, FetchError::Held(_) | FetchError::Deferred(_)) {
                        tracing::info!(repo = %item.repo, path = %item.path, reason = %e,
                            "background download paused; what it received is kept and it resumes later");
                    } else if e.is_uplink_down() {
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
        promoted: &Promotion,
        now: &Mutex<progress::Reading>,
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
        let validated = meta.etag.is_some() || meta.last_modified.is_some();
        let mut rules = Rules::new(item.expected.is_some(), self.retries, p.written, validated);
        let mut steps = plan(
            item.site && self.sources.peers.is_some(),
            item.expected
                .as_ref()
                .is_some_and(|e| hash::can_verify(e.checksum.algo)),
            item.path.kind() == PathKind::Immutable,
            self.sources.seeds.is_some(),
        )
        .into_iter();
        let mut source = if held {
            Source::Held
        } else {
            self.sources.next(item, &mut steps).await
        };
        let want_size = item.expected.as_ref().and_then(|e| e.size);

        let (etag, last_modified, source) = 'source: loop {
            if matches!(source, Source::Held) {
                tracing::info!(repo = %item.repo, path = %item.path, bytes = p.written, "every byte was already held from an earlier download; verified, not fetched again");
                break (meta.etag.clone(), meta.last_modified.clone(), source);
            }
            rules.use_source(source.rules_kind(), source.to_string());
            progress::reading(now, &source, p.written);
            let ask = Ask {
                from: p.written,
                if_range: meta.etag.clone().or_else(|| meta.last_modified.clone()),
                if_none_match: item.revalidate.as_ref().and_then(|v| v.0.clone()),
                if_modified_since: item.revalidate.as_ref().and_then(|v| v.1.clone()),
            };
            // The class the source is asked in (a promotion after this point must be told to
            // the site's downloader by asking it again).
            let asked_as = promoted.class(item.class);
            let opened = match self.sources.open(item, asked_as, &source, &ask).await {
                Ok(o) => Ok(o),
                Err(OpenError::Upstream(e)) => Err(e),
                Err(OpenError::Other(e)) => {
                    tracing::info!(repo = %item.repo, path = %item.path, source = %source, error = %e, "could not get the file there; trying the next source");
                    let step = rules.open_failed(e);
                    self.restart(&mut p, tx, &rules, step.restart)
                        .await
                        .map_err(io_err)?;
                    if let Next::OtherSource(blame) = step.next {
                        self.sources.blame(&source, &blame);
                    }
                    source = self
                        .sources
                        .after(item, promoted.class(item.class), &source, &mut steps)
                        .await?;
                    continue 'source;
                }
            };
            let body = match opened {
                Ok(Opened::NotModified) => {
                    drop(p);
                    let _ = std::fs::remove_file(part);
                    if item.publish {
                        self.confirm(item).await?;
                    }
                    return Ok(Finished::NotModified);
                }
                Ok(Opened::Body(b)) => b,
                Err(UpstreamError::Status(code)) if p.written > 0 => {
                    // The partial file does not fit upstream's file (416 past its end, or a
                    // range answer we cannot use): drop it and start over.
                    tracing::info!(repo = %item.repo, path = %item.path, status = code,
                        "upstream refused to resume; restarting from zero");
                    let step = rules.resume_refused();
                    self.restart(&mut p, tx, &rules, step.restart)
                        .await
                        .map_err(io_err)?;
                    meta = PartMeta::default();
                    let _ = std::fs::remove_file(&meta_path);
                    continue 'source;
                }
                Err(e) => {
                    let step = rules.upstream_failed(e);
                    return Err(self.fail(step.next, part, &meta_path));
                }
            };
            if !body.resumed && p.written > 0 {
                tracing::info!(repo = %item.repo, path = %item.path, source = %source, "the source sent the whole file instead of the rest; restarting from zero");
            }
            meta = PartMeta {
                etag: body.etag.clone(),
                last_modified: body.last_modified.clone(),
                checksum: sum_text.clone(),
            };
            if let Ok(b) = serde_json::to_vec(&meta) {
                let _ = tokio::fs::write(&meta_path, b).await;
            }
            let step = rules.opened(
                body.total,
                body.resumed,
                want_size,
                body.etag.is_some() || body.last_modified.is_some(),
            );
            self.restart(&mut p, tx, &rules, step.restart)
                .await
                .map_err(io_err)?;
            match step.next {
                Next::Read => {}
                Next::OtherSource(blame) => {
                    self.sources.blame(&source, &blame);
                    source = self
                        .sources
                        .after(item, promoted.class(item.class), &source, &mut steps)
                        .await?;
                    continue 'source;
                }
                other => return Err(self.fail(other, part, &meta_path)),
            }
            publish(tx, &mut rules);

            let from_upstream = matches!(source, Source::Upstream);
            // Bytes from upstream go through the site's uplink scheduler, in the transfer's
            // class (interactive once a client waits for it).
            let class = promoted.class(item.class);
            let mut paced = self
                .uplink
                .as_ref()
                .filter(|_| from_upstream)
                .map(|u| u.transfer(class));
            let mut stream = body.stream;
            // The site's downloader sending background work paces by its own schedule (it
            // pauses while a client of the site downloads): a lower minimum pace and a limit on
            // silence apply instead; a client joining makes us ask it again as interactive.
            let background_peer =
                matches!(source, Source::Downloader(_)) && asked_as == Class::Background;
            // A peer must keep a minimum pace (deadline from the size it has to send), or the
            // transfer goes on from the next source.
            let mut pace = source
                .min_rate()
                .map(|rate| {
                    if background_peer {
                        BACKGROUND_PEER_MIN_RATE
                    } else {
                        rate
                    }
                })
                .map(|rate| Pace {
                    start: tokio::time::Instant::now(),
                    rate,
                    remaining: rules.total().map(|t| t.saturating_sub(p.written)),
                    got: 0,
                });
            let mut last_piece = tokio::time::Instant::now();
            let step = loop {
                let deadline = pace.as_ref().map(|pc| {
                    if background_peer {
                        pc.deadline().min(last_piece + BACKGROUND_PEER_IDLE)
                    } else {
                        pc.deadline()
                    }
                });
                let read = async {
                    match deadline {
                        Some(d) => tokio::time::timeout_at(d, stream.next()).await.ok(),
                        None => Some(stream.next().await),
                    }
                };
                let next = tokio::select! {
                    n = read => match n {
                        Some(n) => n,
                        None => {
                            let why = pace.as_ref().map_or_else(String::new, |pc| pc.too_slow());
                            break rules.too_slow(why);
                        }
                    },
                    _ = promoted.wake.notified(), if background_peer => break rules.promoted(),
                };
                last_piece = tokio::time::Instant::now();
                let chunk = match next {
                    None => match rules.ended() {
                        Some(step) => break step,
                        None => {
                            p.file.flush().await.map_err(io_err)?;
                            let digests = p.hasher.clone_finish();
                            let result =
                                check_expected(&item.path, item.expected.as_ref(), &digests);
                            if result.is_err() {
                                Stats::inc(&self.stats.verify_failures);
                            }
                            let pending = p.check.take().is_some();
                            break rules.verified(result, pending);
                        }
                    },
                    Some(Err(e)) => break rules.broke(e),
                    Some(Ok(c)) => c,
                };
                if let Some(pc) = &mut pace {
                    pc.got += chunk.len() as u64;
                }
                if background_peer && promoted.is_set() {
                    // Keep nothing of this piece: the source is asked again from p.written.
                    break rules.promoted();
                }
                if let Some(t) = &mut paced
                    && let Err(hold) = wait_for_uplink(t, chunk.len() as u64, promoted).await
                {
                    break rules.held(hold);
                }
                if p.written == 0 {
                    let check = upstream::check_first_bytes(&item.path, &chunk);
                    match &check {
                        Err(BadStart::Html) if from_upstream => {
                            tracing::warn!(url = %body.url, "upstream sent an HTML page instead of the file (captive portal?); not stored");
                        }
                        Err(BadStart::NotA(_)) if from_upstream => {
                            Stats::inc(&self.stats.verify_failures)
                        }
                        _ => {}
                    }
                    let step = rules.first_bytes(check);
                    if !matches!(step.next, Next::Read) {
                        break step;
                    }
                    publish(tx, &mut rules);
                }
                let step = rules.piece(chunk.len() as u64);
                if !matches!(step.next, Next::Read) {
                    break step;
                }
                let diverged = p.append(&chunk).await.map_err(|e| {
                    self.discard(part, &meta_path);
                    io_err(e)
                })?;
                rules.appended(chunk.len() as u64, diverged);
                if from_upstream {
                    Stats::add(&self.stats.bytes_fetched, chunk.len() as u64);
                } else if source.is_seed() {
                    Stats::add(&self.stats.bytes_from_seeds, chunk.len() as u64);
                }
                if diverged {
                    tracing::info!(repo = %item.repo, path = %item.path, "the file changed during the transfer; clients mid-way were cut");
                }
                if !publish(tx, &mut rules) {
                    tx.send_modify(|phase| {
                        if let Phase::Streaming { written, .. } = phase {
                            *written = p.written;
                        }
                    });
                }
            };
            p.file.flush().await.map_err(io_err)?;
            self.restart(&mut p, tx, &rules, step.restart)
                .await
                .map_err(io_err)?;
            match step.next {
                Next::Read => {}
                Next::Install => {
                    if source.is_peer() {
                        Stats::inc(&self.stats.from_peers);
                        tracing::debug!(repo = %item.repo, path = %item.path, source = %source, "verified bytes from the site");
                    }
                    break (body.etag, body.last_modified, source);
                }
                Next::Resume => {
                    tracing::info!(repo = %item.repo, path = %item.path, source = %source, at = p.written, "resuming");
                }
                Next::OtherSource(blame) => {
                    tracing::info!(repo = %item.repo, path = %item.path, source = %source, at = p.written, "trying the next source");
                    self.sources.blame(&source, &blame);
                    source = self
                        .sources
                        .after(item, promoted.class(item.class), &source, &mut steps)
                        .await?;
                }
                fail @ Next::Fail { .. } => return Err(self.fail(fail, part, &meta_path)),
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
        let mut blob = BlobMeta::from_digests(&digests, now);
        if !promoted.is_set() {
            // Stored by background work that no client joined: never used yet (see
            // `prefetch::queue`). A client's fetch later sets the time.
            blob.last_access = 0;
        }
        batch.put_blob(blob);
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
            .commit_or_pass(
                batch,
                &item.key(),
                &digests.blake3,
                digests.len,
                promoted.is_set(),
            )
            .await?;
        Ok(Finished::Stored(Done {
            blob: digests.blake3,
            size: digests.len,
            generation: rules.generation(),
            etag,
            last_modified,
            from: source.origin(),
            source: source.counted_as(),
        }))
    }

    /// Upstream said the stored copy of a published path is current (a 304 to
    /// `Item::revalidate`'s validators): its row's check time moves to now. A row that changed
    /// meanwhile (other validators) is left alone.
    async fn confirm(&self, item: &Item) -> Result<(), FetchError> {
        let key = item.key();
        let Some(e) = self.store.path_entry(&key)? else {
            return Ok(());
        };
        if item.revalidate != Some((e.etag.clone(), e.last_modified.clone())) {
            return Ok(());
        }
        let mut b = Batch::new();
        b.set_path(
            key,
            PathEntry {
                checked_at: now_secs(),
                ..e
            },
        );
        Ok(self.store.commit(b).await?)
    }

    /// Lists bytes already stored under another path (a `lookup::Found::Alias`: the checksum
    /// metadata names for `key` is a blob we hold) under `key` too, as a transfer that fetched
    /// them would have: from now on the path is a hit of its own, exported and protected with
    /// its repo. A blob evicted meanwhile is not listed (`Store::commit` checks).
    pub async fn list(&self, key: String, held: &crate::lookup::Held) -> Result<(), FetchError> {
        let mut b = Batch::new();
        b.set_path(
            key,
            PathEntry {
                blob: held.blob,
                checked_at: held.modified,
                etag: None,
                last_modified: None,
            },
        );
        Ok(self.store.commit(b).await?)
    }

    /// Empties the part file as a step of the rules says, and tells readers (the new length,
    /// and the new generation with why their bytes were cut, if any).
    async fn restart(
        &self,
        p: &mut Part,
        tx: &watch::Sender<Phase>,
        rules: &Rules,
        restart: Option<Restart>,
    ) -> io::Result<()> {
        let Some(r) = restart else {
            return Ok(());
        };
        p.start_over(r == Restart::Compare).await?;
        if rules.announced() {
            tx.send_modify(|phase| {
                if let Phase::Streaming {
                    written,
                    generation,
                    cut,
                    ..
                } = phase
                {
                    *written = 0;
                    if *generation != rules.generation() {
                        *generation = rules.generation();
                        *cut = rules.cut().map(Arc::from);
                    }
                }
            });
        }
        Ok(())
    }

    /// The error a failing step ends the transfer with; its partial file goes unless kept.
    fn fail(&self, next: Next, part: &PathBuf, meta: &PathBuf) -> FetchError {
        match next {
            Next::Fail { error, keep_part } => {
                if !keep_part {
                    self.discard(part, meta);
                }
                error
            }
            other => FetchError::Store(format!("transfer rules: unexpected step {other:?}")),
        }
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

    /// The stored result, if the transfer has finished storing (without waiting).
    pub fn done(&self) -> Option<Done> {
        match &*self.rx.borrow() {
            Phase::Done(d) => Some(d.clone()),
            _ => None,
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
                        ..
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
                        let why = match &phase {
                            Phase::Streaming { cut: Some(c), .. } => c.to_string(),
                            _ => rules::CHANGED.to_string(),
                        };
                        return fail(&why);
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
    use crate::checksum::{Checksum, ChecksumAlgo};

    #[test]
    fn peers_are_asked_only_for_checksummed_immutable_files() {
        use Step::*;
        assert_eq!(
            plan(true, true, true, false),
            vec![Holder, Downloader, Upstream]
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
            vec![Seed, Holder, Downloader, Upstream]
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
