//! Metadata snapshots: what a tree's `repodata/repomd.xml` is, when to ask upstream again,
//! and how a new one is switched in.
//!
//! A tree is the directory holding `repodata/` (e.g. `9/BaseOS/x86_64/os/` of repo `almalinux`).
//! Its snapshot is repomd.xml with its `.asc`/`.key` and every metadata file it references that
//! clients fetch (primary, filelists, updateinfo, modules, group…), all stored and verified
//! against repomd's checksums before one index row switches the snapshot ("atomic metadata" in
//! ARCHITECTURE.md). The package list of primary.xml is recorded so every package is checked
//! against it. When upstream cannot be reached, or answers something inconsistent, the previous
//! snapshot stays.
//!
//! Freshness is each node's own: every refresh asks this node's upstream first, and only that
//! moves the check time. Only when upstream cannot be asked may a mounted bundle or (on a
//! trusted site) another node supply a snapshot, and only one whose repomd.xml revision is
//! newer than ours ([`revision_is_newer`]): nothing moves a node back.
//!
//! The freshness and revision policies ([`needs_check`], [`revision_is_newer`]) are pure;
//! everything else here drives `fetch`. Whether a file a new repomd.xml names is stored
//! already is `lookup`'s answer, by the checksum the new repomd.xml gives (held under another
//! path: `Fetcher::list` lists it under this one).
//! This module does not serve HTTP and does not parse XML itself (`repodata` does).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::config::MetadataConfig;
use crate::fetch::{FetchError, Fetcher, Finished, Item};
use crate::hash::{self, BlobId};
use crate::lookup::{self, Expect, Found};
use crate::paths::{REPOMD_COMPANIONS, RepoPath};
use crate::peer::{self, ContentRef, Peer, Peers, wire};
use crate::repodata::{self, Compression, RepoMdRecord};
use crate::stats::Stats;
use crate::store::{Batch, Expected, Origin, Snapshot, Store, now_secs};

/// How long a request for repomd.xml waits for a refresh when a snapshot can be served.
const REFRESH_WAIT: Duration = Duration::from_secs(5);
/// Longest pause before a failed refresh is tried again.
const FAILURE_BACKOFF: Duration = Duration::from_secs(30);

/// Largest repomd.xml (or companion) taken from a peer.
const MAX_REPOMD: u64 = 16 << 20;
/// Most peers asked for their snapshot at once, and most offers copied, per refresh.
const MAX_SITE_ASKED: usize = 16;
const MAX_SITE_TRIES: usize = 3;

/// What a refresh learnt about repomd.xml.
enum Obtained {
    /// The snapshot in service is still current: upstream confirmed it at `checked_at`, with
    /// new validators when it sent the whole file again.
    Same {
        validators: Option<(Option<String>, Option<String>)>,
        checked_at: u64,
    },
    /// A new repomd.xml (stored as a blob) with its companions.
    New(NewSnapshot),
}

/// How a refresh ended.
enum Refreshed {
    /// This node's upstream confirmed the snapshot in service or gave a new one.
    Upstream,
    /// Upstream could not be asked (`why`); a newer snapshot came from the site or a seed
    /// directory, not confirmed upstream.
    Elsewhere { why: SnapshotError },
}

/// A repomd.xml and its companions, stored, to be switched in once every file it names is.
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    pub repomd: BlobId,
    /// `(".asc" | ".key", BLAKE3 hex)`
    pub companions: Vec<(String, String)>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// When this node's upstream last confirmed it (unix seconds); for a snapshot from
    /// elsewhere, the check time of the snapshot it replaces (never one another node gave).
    pub checked_at: u64,
    pub origin: Origin,
}

/// Whether repomd.xml revision `theirs` is newer than `ours`, for metadata that did not come
/// from this node's own upstream (a peer, a bundle): only a strictly greater number counts
/// (createrepo_c writes the time of the run). Revisions that are not numbers cannot be
/// ordered, so they never replace anything: no offer can move a node back.
pub fn revision_is_newer(ours: &str, theirs: &str) -> bool {
    match (ours.trim().parse::<u64>(), theirs.trim().parse::<u64>()) {
        (Ok(a), Ok(b)) => b > a,
        _ => false,
    }
}

/// Every package a primary.xml file (`href` says its compression) lists, as the `expected` row
/// it gives: `("{repo}/{path}", checksum and size)`. Blocking.
pub fn primary_rows(
    file: &std::path::Path,
    href: &str,
    repo: &str,
    tree: &str,
) -> Result<Vec<(String, Expected)>, SnapshotError> {
    let f = std::fs::File::open(file).map_err(|e| SnapshotError::Store(e.to_string()))?;
    let mut rows = Vec::new();
    let mut bad = None;
    repodata::parse_primary(
        std::io::BufReader::new(f),
        Compression::from_href(href),
        |p| match RepoPath::in_tree(tree, &p.href) {
            Ok(path) => rows.push((
                format!("{repo}/{path}"),
                Expected {
                    checksum: p.checksum,
                    size: Some(p.size),
                },
            )),
            Err(e) => bad = Some(format!("{}: {e}", p.href)),
        },
    )
    .map_err(|e| SnapshotError::BadPrimary(e.to_string()))?;
    match bad {
        Some(b) => Err(SnapshotError::BadPrimary(b)),
        None => Ok(rows),
    }
}

/// Metadata files fetched at most this many at once during a refresh.
const PARALLEL_METADATA: usize = 4;

/// Whether a copy checked at `checked_at` must be re-checked upstream at `now` (unix seconds).
/// A clock that jumped backwards past the check also forces one.
pub fn needs_check(checked_at: u64, now: u64, freshness: Duration) -> bool {
    checked_at > now.saturating_add(60) || now.saturating_sub(checked_at) >= freshness.as_secs()
}

/// Which repomd records a snapshot stores before it is switched in: what dnf and librepo
/// fetch. sqlite databases and other.xml are fetched on demand (still checked against repomd).
pub fn prefetched(kind: &str) -> bool {
    !(kind.ends_with("_db") || kind.starts_with("other") || kind.starts_with("prestodelta"))
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotError {
    #[error("fetching {path}: {source}")]
    Fetch { path: String, source: FetchError },
    #[error("upstream repomd.xml is not valid: {0}")]
    BadRepomd(String),
    #[error("primary metadata is not valid: {0}")]
    BadPrimary(String),
    #[error("{0}")]
    Store(String),
    #[error("no metadata is stored for this tree yet and upstream is unreachable")]
    Unavailable,
    #[error("the offered metadata is not newer than the metadata in service")]
    NotNewer,
}

impl SnapshotError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, SnapshotError::Fetch { source, .. } if source.is_not_found())
    }
}

pub struct Snapshots {
    store: Store,
    fetcher: Arc<Fetcher>,
    stats: Arc<Stats>,
    cfg: MetadataConfig,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Trees whose last refresh failed, and when: not retried within the freshness window.
    failed: Mutex<HashMap<String, (Instant, SnapshotError)>>,
    stale_warned: Mutex<HashSet<String>>,
    /// Whether a snapshot may be taken from another node when upstream cannot be reached:
    /// on a site with a key, or a keyless one that said it trusts its LAN (`[node] trust_lan`).
    from_site: bool,
    /// Counts the snapshots switched in, so the prefetch queue learns of new metadata.
    switched: tokio::sync::watch::Sender<u64>,
}

impl Snapshots {
    pub fn new(
        store: Store,
        fetcher: Arc<Fetcher>,
        stats: Arc<Stats>,
        cfg: MetadataConfig,
        from_site: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            fetcher,
            stats,
            cfg,
            locks: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            stale_warned: Mutex::new(HashSet::new()),
            from_site,
            switched: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Changes each time a new snapshot is switched in (any tree, any origin).
    pub fn switches(&self) -> tokio::sync::watch::Receiver<u64> {
        self.switched.subscribe()
    }

    pub fn freshness(&self) -> Duration {
        self.cfg.freshness()
    }

    /// The tree's snapshot if its repomd.xml and companions are all on disk. One whose files
    /// are gone (removed by `verify`, or lost) counts as absent, so it is fetched anew.
    fn load(&self, key: &str) -> Result<Option<Snapshot>, SnapshotError> {
        let snap = self
            .store
            .snapshot(key)
            .map_err(|e| SnapshotError::Store(e.to_string()))?;
        Ok(snap.filter(|s| {
            let intact = std::iter::once(&s.repomd)
                .chain(s.companions.iter().map(|(_, b)| b))
                .all(|b| {
                    hash::parse_blob_id(b).is_some_and(|id| self.store.blob_path(&id).exists())
                });
            if !intact {
                tracing::warn!(
                    tree = key,
                    "stored metadata snapshot is missing files; fetching it again"
                );
            }
            intact
        }))
    }

    /// The snapshot in service, as it is, for a peer that asked (it asks only when it cannot
    /// reach upstream itself): no refresh, no waiting, and never another peer's.
    pub fn in_service(&self, repo: &str, tree: &str) -> Result<Snapshot, SnapshotError> {
        self.load(&format!("{repo}/{tree}"))?
            .ok_or(SnapshotError::Unavailable)
    }

    /// The snapshot to serve for a tree, refreshing it first when it is due and upstream is
    /// worth asking. Errors only when there is no snapshot at all.
    pub async fn current(
        self: &Arc<Self>,
        repo: &str,
        tree: &str,
    ) -> Result<Snapshot, SnapshotError> {
        let key = format!("{repo}/{tree}");
        let snap = self.load(&key)?;
        let due = snap
            .as_ref()
            .is_none_or(|s| needs_check(s.checked_at, now_secs(), self.cfg.freshness()));
        if !due {
            return snap.ok_or_else(|| SnapshotError::Store("snapshot vanished".into()));
        }
        let site_up = self.from_site && self.fetcher.peers().is_some_and(|p| !p.live().is_empty());
        let seeded = || {
            self.fetcher
                .seeds()
                .is_some_and(|s| s.snapshot(repo, tree).is_some())
        };
        if self.recent_failure(&key).is_none()
            && (site_up || !self.fetcher.upstream().is_offline(repo) || seeded())
        {
            let lock = self.tree_lock(&key)?;
            // The refresh runs as a task of its own holding the tree's lock: a client that goes
            // away does not cancel it, and clients that arrive meanwhile wait on the lock.
            if let Ok(guard) = lock.clone().try_lock_owned() {
                let me = self.clone();
                let (repo2, tree2, key2) = (repo.to_string(), tree.to_string(), key.clone());
                tokio::spawn(async move {
                    if let Err(e) = me.refresh_locked(&repo2, &tree2).await {
                        me.note_failure(&key2, e);
                    }
                    drop(guard);
                    me.prune();
                });
            }
            // With a snapshot in hand, wait only briefly: over a slow uplink the new metadata
            // can take minutes, and dnf gives up on a silent answer after 30 s. The refresh
            // goes on, and the next request gets its result.
            if snap.is_some() {
                if tokio::time::timeout(REFRESH_WAIT, lock.lock())
                    .await
                    .is_err()
                {
                    tracing::debug!(
                        repo,
                        tree,
                        "metadata refresh still running; serving the current snapshot meanwhile"
                    );
                }
            } else {
                let _ = lock.lock().await;
            }
        }
        let snap = self.load(&key)?;
        match snap {
            Some(s) => {
                if needs_check(s.checked_at, now_secs(), self.cfg.freshness()) {
                    Stats::inc(&self.stats.stale_served);
                    if self
                        .stale_warned
                        .lock()
                        .is_ok_and(|mut w| w.insert(key.clone()))
                    {
                        tracing::warn!(repo, tree, revision = %s.revision,
                            age_secs = now_secs().saturating_sub(s.checked_at),
                            "serving stale metadata: upstream has not confirmed it (a refresh is still running or failed; see above)");
                    }
                }
                Ok(s)
            }
            None => Err(self
                .recent_failure(&key)
                .unwrap_or(SnapshotError::Unavailable)),
        }
    }

    fn recent_failure(&self, key: &str) -> Option<SnapshotError> {
        let f = self.failed.lock().ok()?;
        let (at, e) = f.get(key)?;
        (at.elapsed() < self.failure_backoff()).then(|| e.clone())
    }

    /// How long a failed refresh is not retried: the freshness window, at most 30 s.
    fn failure_backoff(&self) -> Duration {
        self.cfg.freshness().min(FAILURE_BACKOFF)
    }

    fn note_failure(&self, key: &str, e: SnapshotError) {
        let offline = matches!(&e, SnapshotError::Fetch { source, .. } if source.is_uplink_down());
        if !e.is_not_found() && !offline {
            tracing::warn!(tree = key, error = %e, "metadata refresh failed; the previous snapshot (if any) stays in service");
        }
        if let Ok(mut f) = self.failed.lock() {
            f.insert(key.to_string(), (Instant::now(), e));
        }
    }

    fn tree_lock(&self, key: &str) -> Result<Arc<tokio::sync::Mutex<()>>, SnapshotError> {
        let mut l = self
            .locks
            .lock()
            .map_err(|_| SnapshotError::Store("lock poisoned".into()))?;
        Ok(l.entry(key.to_string()).or_default().clone())
    }

    /// Forgets locks nobody holds and failures past their back-off, so the maps do not grow
    /// with the tree names clients make up.
    fn prune(&self) {
        if let Ok(mut l) = self.locks.lock() {
            l.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        let backoff = self.failure_backoff();
        if let Ok(mut f) = self.failed.lock() {
            f.retain(|_, (at, _)| at.elapsed() < backoff);
        }
    }

    /// Refreshes a tree; the caller holds its lock.
    async fn refresh_locked(&self, repo: &str, tree: &str) -> Result<(), SnapshotError> {
        let key = format!("{repo}/{tree}");
        // Someone else may have refreshed just before.
        let current = self.load(&key)?;
        if let Some(s) = &current
            && !needs_check(s.checked_at, now_secs(), self.cfg.freshness())
        {
            return Ok(());
        }
        match self.refresh(repo, tree, current).await? {
            Refreshed::Upstream => {
                if let Ok(mut f) = self.failed.lock() {
                    f.remove(&key);
                }
                if self.stale_warned.lock().is_ok_and(|mut w| w.remove(&key)) {
                    tracing::info!(repo, tree, "metadata confirmed by upstream again");
                }
                Ok(())
            }
            // Still not confirmed upstream: the failure's back-off stands.
            Refreshed::Elsewhere { why } => Err(why),
        }
    }

    /// Asks this node's own upstream first, always. Only when it cannot be asked may a newer
    /// snapshot come from a mounted bundle or, on a trusted site, from another node.
    async fn refresh(
        &self,
        repo: &str,
        tree: &str,
        current: Option<Snapshot>,
    ) -> Result<Refreshed, SnapshotError> {
        let key = format!("{repo}/{tree}");
        let why = match self.ask_upstream(repo, tree, current.as_ref()).await {
            Ok(Obtained::Same {
                validators,
                checked_at,
            }) => {
                self.confirm(&key, current, validators, checked_at).await?;
                return Ok(Refreshed::Upstream);
            }
            Ok(Obtained::New(new)) => {
                self.switch_in(repo, tree, current, new).await?;
                return Ok(Refreshed::Upstream);
            }
            // Upstream says the tree does not exist: nobody else's copy changes that.
            Err(e) if e.is_not_found() => return Err(e),
            Err(e) => e,
        };
        let new = match self.ask_seed(repo, tree, current.as_ref()).await {
            Some(n) => Some(n),
            None if self.from_site => self.ask_site(repo, tree, current.as_ref()).await,
            None => None,
        };
        match new {
            Some(new) => {
                self.switch_in(repo, tree, current, new).await?;
                Ok(Refreshed::Elsewhere { why })
            }
            None => Err(why),
        }
    }

    /// Puts a snapshot brought in by other means (a sneakernet bundle) in service, if the
    /// revision in its repomd.xml is newer than the one in service. Every file it names must be
    /// stored already (or be fetchable); otherwise nothing changes. Returns whether it was
    /// switched in.
    pub async fn adopt(
        &self,
        repo: &str,
        tree: &str,
        new: NewSnapshot,
    ) -> Result<bool, SnapshotError> {
        let key = format!("{repo}/{tree}");
        let lock = self.tree_lock(&key)?;
        let _guard = lock.lock().await;
        let current = self.load(&key)?;
        if let Some(cur) = &current
            && (cur.repomd == hash::hex(&new.repomd)
                || !self
                    .revision_of(&new.repomd)
                    .and_then(|theirs| self.replaces(Some(cur), theirs.as_deref()))
                    .unwrap_or(false))
        {
            return Ok(false);
        }
        self.switch_in(repo, tree, current, new).await?;
        Ok(true)
    }

    /// The `<revision>` inside a stored repomd.xml.
    fn revision_of(&self, repomd: &BlobId) -> Result<Option<String>, SnapshotError> {
        let bytes = std::fs::read(self.store.blob_path(repomd))
            .map_err(|e| SnapshotError::Store(e.to_string()))?;
        let md =
            repodata::parse_repomd(&bytes).map_err(|e| SnapshotError::BadRepomd(e.to_string()))?;
        Ok(md.revision)
    }

    /// The `<revision>` inside the repomd.xml of snapshot `s` ("" when it names none).
    fn served_revision(&self, s: &Snapshot) -> Result<String, SnapshotError> {
        Ok(match hash::parse_blob_id(&s.repomd) {
            Some(id) => self.revision_of(&id)?.unwrap_or_default(),
            None => String::new(),
        })
    }

    /// Whether a repomd.xml whose own `<revision>` is `theirs` (parsed from the file, not what
    /// anyone claims), which did not come from this node's upstream, may replace `current`.
    fn replaces(
        &self,
        current: Option<&Snapshot>,
        theirs: Option<&str>,
    ) -> Result<bool, SnapshotError> {
        let Some(cur) = current else {
            return Ok(true);
        };
        Ok(revision_is_newer(
            &self.served_revision(cur)?,
            theirs.unwrap_or_default(),
        ))
    }

    /// Stores (or checks) every file `new` names, then switches it in with one commit.
    async fn switch_in(
        &self,
        repo: &str,
        tree: &str,
        current: Option<Snapshot>,
        new: NewSnapshot,
    ) -> Result<(), SnapshotError> {
        let key = format!("{repo}/{tree}");
        let NewSnapshot {
            repomd,
            companions,
            etag,
            last_modified,
            checked_at,
            origin,
        } = new;
        let bytes = std::fs::read(self.store.blob_path(&repomd))
            .map_err(|e| SnapshotError::Store(e.to_string()))?;
        let md =
            repodata::parse_repomd(&bytes).map_err(|e| SnapshotError::BadRepomd(e.to_string()))?;
        // Never back: what did not come from our own upstream must be newer by its own revision,
        // and only our own upstream moves the check time.
        let checked_at = if origin == Origin::Upstream {
            checked_at
        } else {
            if !self.replaces(current.as_ref(), md.revision.as_deref())? {
                return Err(SnapshotError::NotNewer);
            }
            current.as_ref().map_or(0, |c| c.checked_at)
        };

        let mut batch = Batch::new();
        let mut files = Vec::new();
        let mut wanted = Vec::new();
        for r in &md.records {
            let p = RepoPath::in_tree(tree, &r.href)
                .map_err(|e| SnapshotError::BadRepomd(format!("{}: {e}", r.href)))?;
            let exp = Expected {
                checksum: r.checksum.clone(),
                size: r.size,
            };
            batch.put_expected(format!("{repo}/{p}"), exp.clone());
            if prefetched(&r.kind) {
                files.push(p.to_string());
                wanted.push((r.clone(), p, exp));
            }
        }
        // Fetch what is not stored yet, a few at a time, each verified against repomd.
        let results: Vec<Result<(RepoMdRecord, BlobId), SnapshotError>> =
            futures_util::stream::iter(
                wanted
                    .into_iter()
                    .map(|(r, p, exp)| self.ensure(repo, r, p, exp)),
            )
            .buffer_unordered(PARALLEL_METADATA)
            .collect()
            .await;
        let mut primary = None;
        for res in results {
            let (r, blob) = res?;
            if r.kind == "primary" {
                primary = Some((r.href.clone(), blob));
            }
        }
        if let Some((href, blob)) = primary {
            let n = self
                .record_packages(repo, tree, &href, blob, &mut batch)
                .await?;
            tracing::debug!(repo, tree, packages = n, "primary parsed");
        }
        let now = now_secs();
        let revision = md
            .revision
            .clone()
            .unwrap_or_else(|| hash::hex(&repomd)[..12].to_string());
        let retention = self.cfg.retention().as_secs();
        let mut previous = Vec::new();
        if let Some(old) = current {
            for (at, old_files) in old.previous.into_iter().chain([(now, old.files)]) {
                if now.saturating_sub(at) < retention {
                    previous.push((at, old_files));
                } else {
                    for f in old_files.into_iter().filter(|f| !files.contains(f)) {
                        // Neither listed nor recognised by checksum any more.
                        batch.remove_path(format!("{repo}/{f}"));
                        batch.remove_expected(format!("{repo}/{f}"));
                    }
                }
            }
        }
        let snap = Snapshot {
            revision: revision.clone(),
            repomd: hash::hex(&repomd),
            companions,
            fetched_at: now,
            checked_at,
            etag,
            last_modified,
            files,
            previous,
            origin,
        };
        batch.put_snapshot(key, snap);
        self.store
            .commit(batch)
            .await
            .map_err(|e| SnapshotError::Store(e.to_string()))?;
        self.switched.send_modify(|n| *n = n.wrapping_add(1));
        match origin {
            Origin::Upstream => {
                tracing::info!(repo, tree, revision, "new metadata snapshot in service")
            }
            Origin::Site => tracing::warn!(
                repo,
                tree,
                revision,
                "new metadata snapshot in service from the site, not confirmed upstream: this node cannot reach upstream; it checks again and says stale until upstream confirms"
            ),
            Origin::Bundle => tracing::info!(
                repo,
                tree,
                revision,
                "new metadata snapshot in service from a bundle"
            ),
        }
        Ok(())
    }

    /// Upstream confirmed the current snapshot: only its check time (and validators) change.
    async fn confirm(
        &self,
        key: &str,
        current: Option<Snapshot>,
        validators: Option<(Option<String>, Option<String>)>,
        checked_at: u64,
    ) -> Result<(), SnapshotError> {
        let Some(mut s) = current else {
            return Err(SnapshotError::BadRepomd(
                "upstream said 'not modified' to an unconditional request".into(),
            ));
        };
        s.checked_at = s.checked_at.max(checked_at);
        s.origin = Origin::Upstream;
        if let Some((etag, lm)) = validators {
            s.etag = etag;
            s.last_modified = lm;
        }
        let mut b = Batch::new();
        b.put_snapshot(key.to_string(), s);
        self.store
            .commit(b)
            .await
            .map_err(|e| SnapshotError::Store(e.to_string()))
    }

    /// repomd.xml and its companions from upstream (conditionally when a snapshot exists).
    async fn ask_upstream(
        &self,
        repo: &str,
        tree: &str,
        current: Option<&Snapshot>,
    ) -> Result<Obtained, SnapshotError> {
        let path = RepoPath::in_tree(tree, "repodata/repomd.xml")
            .map_err(|e| SnapshotError::BadRepomd(e.to_string()))?;
        let fetch_err = |p: &RepoPath| {
            let p = p.to_string();
            move |source| SnapshotError::Fetch { path: p, source }
        };
        let item = Item {
            repo: repo.into(),
            path: path.clone(),
            expected: None,
            publish: false,
            revalidate: current.map(|s| (s.etag.clone(), s.last_modified.clone())),
            site: false,
            class: crate::uplink::Class::Interactive,
        };
        let now = now_secs();
        let done = match self.fetcher.fetch(item).await.map_err(fetch_err(&path))? {
            Finished::NotModified => {
                return Ok(Obtained::Same {
                    validators: None,
                    checked_at: now,
                });
            }
            Finished::Stored(d) => d,
        };
        if current.is_some_and(|s| s.repomd == hash::hex(&done.blob)) {
            return Ok(Obtained::Same {
                validators: Some((done.etag, done.last_modified)),
                checked_at: now,
            });
        }
        // The companions must come from the same moment as repomd.xml: fetch them fresh.
        let mut companions = Vec::new();
        for suffix in REPOMD_COMPANIONS {
            let p = RepoPath::in_tree(tree, &format!("repodata/repomd.xml{suffix}"))
                .map_err(|e| SnapshotError::BadRepomd(e.to_string()))?;
            let item = Item {
                repo: repo.into(),
                path: p.clone(),
                expected: None,
                publish: false,
                revalidate: None,
                site: false,
                class: crate::uplink::Class::Interactive,
            };
            match self.fetcher.fetch(item).await {
                Ok(Finished::Stored(d)) => {
                    companions.push((suffix.to_string(), hash::hex(&d.blob)))
                }
                Ok(Finished::NotModified) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(fetch_err(&p)(e)),
            }
        }
        Ok(Obtained::New(NewSnapshot {
            repomd: done.blob,
            companions,
            etag: done.etag,
            last_modified: done.last_modified,
            checked_at: now,
            origin: Origin::Upstream,
        }))
    }

    /// A newer snapshot from another node of the site, for a node that cannot reach upstream
    /// itself (the caller checks that, and that the site is trusted). Every live peer is asked
    /// what it holds; offers are tried from the highest claimed revision down, and one is taken
    /// only when the revision inside the repomd.xml received is newer than ours. Never its
    /// check time or validators: those were never ours.
    async fn ask_site(
        &self,
        repo: &str,
        tree: &str,
        current: Option<&Snapshot>,
    ) -> Option<NewSnapshot> {
        let peers = self.fetcher.peers()?;
        let asks = peers
            .live()
            .into_iter()
            .take(MAX_SITE_ASKED)
            .map(|p| async move {
                let r = peers.snapshot(&p, repo, tree).await;
                (p, r)
            });
        let ours = current.map(|c| self.served_revision(c).unwrap_or_default());
        let mut offers = Vec::new();
        for (p, r) in futures_util::future::join_all(asks).await {
            match r {
                // Claims not newer than ours are not worth a copy.
                Ok(info)
                    if ours
                        .as_ref()
                        .is_none_or(|o| revision_is_newer(o, &info.revision)) =>
                {
                    offers.push((p, info))
                }
                Ok(_) => {}
                Err(e) => peers.note_failure(&p, &e.to_string()),
            }
        }
        offers.sort_by_key(|(_, i)| std::cmp::Reverse(i.revision.trim().parse::<u64>().ok()));
        for (peer, info) in offers.into_iter().take(MAX_SITE_TRIES) {
            match self.take_offer(peers, &peer, &info, current).await {
                Ok(new) => return Some(new),
                Err(e) => {
                    tracing::info!(repo, tree, peer = %peer.id, error = %e, "not taking that node's metadata")
                }
            }
        }
        None
    }

    /// Copies one peer's offered snapshot (repomd.xml first) and checks that its repomd.xml
    /// says the revision the peer claimed and is newer than `current`.
    async fn take_offer(
        &self,
        peers: &Peers,
        peer: &Peer,
        info: &wire::SnapshotInfo,
        current: Option<&Snapshot>,
    ) -> Result<NewSnapshot, String> {
        let mut files: Vec<&wire::SnapFile> = info.files.iter().collect();
        files.sort_by_key(|f| !f.suffix.is_empty());
        let mut repomd = None;
        let mut companions = Vec::new();
        for f in files {
            let allowed = f.suffix.is_empty() || REPOMD_COMPANIONS.contains(&f.suffix.as_str());
            let id = hash::parse_blob_id(&f.blake3).filter(|_| allowed && f.size <= MAX_REPOMD);
            let Some(id) = id else {
                return Err(format!("offered an unusable file ({:?})", f.suffix));
            };
            self.copy_from_peer(peers, peer, id, f.size).await?;
            if f.suffix.is_empty() {
                let rev = self.revision_of(&id).map_err(|e| e.to_string())?;
                if rev.as_deref().map(str::trim) != Some(info.revision.trim()) {
                    peers.put_aside(peer, "its repomd.xml does not say the revision it claimed");
                    return Err(format!(
                        "it claimed revision {:?}; its repomd.xml says {rev:?}",
                        info.revision
                    ));
                }
                if !self
                    .replaces(current, rev.as_deref())
                    .map_err(|e| e.to_string())?
                {
                    return Err("its metadata is not newer than ours".into());
                }
                repomd = Some(id);
            } else {
                companions.push((f.suffix.clone(), f.blake3.clone()));
            }
        }
        Ok(NewSnapshot {
            repomd: repomd.ok_or("the offer names no repomd.xml")?,
            companions,
            etag: None,
            last_modified: None,
            checked_at: current.map_or(0, |c| c.checked_at),
            origin: Origin::Site,
        })
    }

    /// Copies a small blob (repomd.xml, a signature) from a peer, checking its BLAKE3, within
    /// the deadline its size allows ([`peer::transfer_deadline`]).
    async fn copy_from_peer(
        &self,
        peers: &Peers,
        peer: &Peer,
        id: BlobId,
        size: u64,
    ) -> Result<(), String> {
        if self.store.blob_path(&id).exists() {
            return Ok(());
        }
        let deadline = peer::transfer_deadline(size, peer::HOLDER_MIN_RATE);
        let copy = async {
            let body = peers
                .get(peer, &ContentRef::Blake3(id), 0)
                .await
                .map_err(|e| e.to_string())?;
            let mut bytes = Vec::with_capacity(size.min(MAX_REPOMD) as usize);
            let mut stream = body.stream;
            while let Some(chunk) = stream.next().await {
                bytes.extend_from_slice(&chunk?);
                if bytes.len() as u64 > size {
                    break;
                }
            }
            Ok::<_, String>(bytes)
        };
        let bytes = match tokio::time::timeout(deadline, copy).await {
            Ok(r) => r?,
            Err(_) => {
                let why = format!(
                    "sent {size} bytes of metadata slower than {} bytes/s",
                    peer::HOLDER_MIN_RATE
                );
                peers.too_slow(peer, &why);
                return Err(why);
            }
        };
        if blake3::hash(&bytes).as_bytes() != &id {
            peers.put_aside(peer, "metadata file does not match its BLAKE3");
            return Err("metadata file from peer failed verification".into());
        }
        Stats::inc(&self.stats.from_peers);
        self.store_small(bytes).await
    }

    /// A newer snapshot of the tree from a mounted bundle (`[seed] dirs`), when upstream cannot
    /// be asked. Its files are checked against the bundle's manifest here, its revision when
    /// switched in, and everything it names against it.
    async fn ask_seed(
        &self,
        repo: &str,
        tree: &str,
        current: Option<&Snapshot>,
    ) -> Option<NewSnapshot> {
        let seeds = self.fetcher.seeds()?;
        let (bs, files) = seeds.snapshot(repo, tree)?;
        let (_, main) = files.iter().find(|(x, _)| x.is_empty())?;
        if current.is_some_and(|c| c.repomd == hash::hex(&main.blake3)) {
            return None;
        }
        let mut companions = Vec::new();
        for (suffix, f) in &files {
            let bytes = match tokio::fs::read(&f.path).await {
                Ok(b) if f.size <= MAX_REPOMD && blake3::hash(&b).as_bytes() == &f.blake3 => b,
                _ => Vec::new(),
            };
            if bytes.is_empty() || self.store_small(bytes).await.is_err() {
                tracing::warn!(file = %f.path.display(), "seed metadata file unreadable or damaged; not used");
                return None;
            }
            if !suffix.is_empty() {
                companions.push((suffix.clone(), hash::hex(&f.blake3)));
            }
        }
        let newer = self
            .revision_of(&main.blake3)
            .and_then(|theirs| self.replaces(current, theirs.as_deref()));
        if !newer.unwrap_or(false) {
            return None;
        }
        tracing::info!(repo, tree, revision = %bs.revision, "taking metadata from a seed directory (upstream unreachable)");
        Some(NewSnapshot {
            repomd: main.blake3,
            companions,
            etag: None,
            last_modified: None,
            checked_at: bs.checked_at.min(now_secs()),
            origin: Origin::Bundle,
        })
    }

    /// Stores a small file (metadata) as a blob.
    async fn store_small(&self, bytes: Vec<u8>) -> Result<(), String> {
        let store = self.store.clone();
        let d = tokio::task::spawn_blocking(move || store.write_blob_bytes(&bytes, None))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let mut b = Batch::new();
        b.put_blob(crate::store::BlobMeta::from_digests(&d, now_secs()));
        self.store.commit(b).await.map_err(|e| e.to_string())
    }

    /// Makes sure one referenced metadata file is stored and listed under its path.
    async fn ensure(
        &self,
        repo: &str,
        r: RepoMdRecord,
        p: RepoPath,
        exp: Expected,
    ) -> Result<(RepoMdRecord, BlobId), SnapshotError> {
        let store_err = |e: crate::store::StoreError| SnapshotError::Store(e.to_string());
        // By what the new repomd.xml names, not the index (it still says the old one).
        let found = self
            .store
            .view()
            .and_then(|v| {
                lookup::find(
                    &v,
                    repo,
                    &p,
                    Expect::Given(&exp),
                    now_secs(),
                    self.cfg.freshness(),
                )
            })
            .map_err(store_err)?
            .found;
        match found {
            Found::Hit(held) => return Ok((r, held.blob)),
            Found::Alias(held) => {
                self.fetcher
                    .list(format!("{repo}/{p}"), &held)
                    .await
                    .map_err(|e| SnapshotError::Store(e.to_string()))?;
                return Ok((r, held.blob));
            }
            Found::Revalidate { .. } | Found::Miss => {}
        }
        let exp_check = exp.checksum.clone();
        let item = Item {
            repo: repo.into(),
            path: p.clone(),
            expected: Some(exp),
            publish: true,
            revalidate: None,
            site: true,
            class: crate::uplink::Class::Interactive,
        };
        match self.fetcher.fetch(item).await {
            Ok(Finished::Stored(d)) => {
                // The transfer may have been one a client started without the checksum: check.
                let meta = self.store.blob_meta(&d.blob).map_err(store_err)?;
                let ok = meta.is_some_and(|m| m.checksums.contains(&exp_check));
                if ok {
                    Ok((r, d.blob))
                } else {
                    Err(SnapshotError::Fetch {
                        path: p.to_string(),
                        source: FetchError::Verify(format!(
                            "does not match the {} repomd.xml names",
                            exp_check.algo.name()
                        )),
                    })
                }
            }
            Ok(Finished::NotModified) => Err(SnapshotError::Store("unexpected 304".into())),
            Err(source) => Err(SnapshotError::Fetch {
                path: p.to_string(),
                source,
            }),
        }
    }

    /// Streams primary.xml and records every package's expected checksum and size.
    async fn record_packages(
        &self,
        repo: &str,
        tree: &str,
        href: &str,
        blob: BlobId,
        batch: &mut Batch,
    ) -> Result<usize, SnapshotError> {
        let file = self.store.blob_path(&blob);
        let repo_name = repo.to_string();
        let (repo, tree, href) = (repo.to_string(), tree.to_string(), href.to_string());
        let rows = tokio::task::spawn_blocking(move || primary_rows(&file, &href, &repo, &tree))
            .await
            .map_err(|e| SnapshotError::Store(e.to_string()))??;
        let n = rows.len();
        let mut replaced = 0;
        let view = self
            .store
            .view()
            .map_err(|e| SnapshotError::Store(e.to_string()))?;
        for (k, e) in rows {
            // A package rebuilt under the same file name: the stored copy is no longer it (by
            // the rule lookups go by).
            if let Ok(Some(pe)) = view.path_entry(&k)
                && let Ok(Some(meta)) = view.blob_meta(&pe.blob)
                && !lookup::agrees(&meta, Some(&e))
            {
                batch.remove_path(k.clone());
                replaced += 1;
            }
            batch.put_expected(k, e);
        }
        drop(view);
        if replaced > 0 {
            tracing::info!(repo = %repo_name, packages = replaced, "packages changed upstream under the same name; the stored copies are dropped from the listing");
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_policy_with_a_controlled_clock() {
        let w = Duration::from_secs(300);
        let t0 = 1_700_000_000;
        assert!(!needs_check(t0, t0, w), "just checked");
        assert!(!needs_check(t0, t0 + 299, w), "inside the window");
        assert!(needs_check(t0, t0 + 300, w), "window over");
        assert!(needs_check(t0, t0 + 86_400, w));
        assert!(!needs_check(t0 + 30, t0, w), "small clock skew tolerated");
        assert!(
            needs_check(t0 + 3600, t0, w),
            "clock jumped back: check again"
        );
        assert!(needs_check(0, t0, Duration::ZERO));
    }

    #[test]
    fn only_a_strictly_newer_parsed_revision_replaces_ours() {
        // createrepo_c revisions are timestamps: compared as numbers, not text.
        assert!(revision_is_newer("999", "1000"));
        assert!(!revision_is_newer("1000", "999"), "never back");
        assert!(!revision_is_newer("1000", "1000"), "equal is not newer");
        assert!(revision_is_newer(" 1700000000\n", "1700000001"));
        // What cannot be ordered never replaces anything, whatever else it claims.
        assert!(!revision_is_newer("abc", "abd"));
        assert!(!revision_is_newer("1700000000", "abc"));
        assert!(!revision_is_newer("", "1700000000"), "ours has no revision");
        assert!(!revision_is_newer("1700000000", ""));
        assert!(!revision_is_newer("1", "-5"));
        assert!(
            !revision_is_newer("1", "99999999999999999999999"),
            "overflow"
        );
    }

    #[test]
    fn what_a_snapshot_prefetches() {
        for k in [
            "primary",
            "filelists",
            "updateinfo",
            "modules",
            "group",
            "group_gz",
            "primary_zck",
        ] {
            assert!(prefetched(k), "{k}");
        }
        for k in [
            "primary_db",
            "other",
            "other_db",
            "filelists_db",
            "prestodelta",
        ] {
            assert!(!prefetched(k), "{k}");
        }
    }
}
