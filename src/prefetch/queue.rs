//! The prefetch queue of a running node: plans every tree in service after each new snapshot
//! (and at start-up), then fetches the planned files one after another as background work.
//!
//! Rules it keeps:
//! - A file starts only while background work may run ([`Scheduler::background_hold`]: inside
//!   the background hours, budget left, no client of the site waiting) and while the store
//!   has room for it without evicting ([`Store::room_for`]). Otherwise the queue waits and
//!   says why (`held`).
//! - Once per site: files of a `mirror = true` repo are fetched only by their downloader (the
//!   node the site's rendezvous gives them to); updates of used packages go through the
//!   site's sources (a peer that holds them, else their downloader, asked for background work),
//!   so the site takes each file from upstream once.
//! - One file at a time: background work is the polite kind; the cap, not parallelism, sets
//!   its speed.
//! - A file a prefetch stored counts as never used (last access 0) until a client fetches it:
//!   it does not make its package "used" for the next plan, and it is the first to go when a
//!   client's download needs room.
//! - Nothing is kept across restarts: the plan is made again from the store (files held are
//!   skipped), so a restart resumes where the queue was.
//!
//! Not here: the plan itself (`prefetch::plan`), pacing (`uplink`), sources and verification
//! (`fetch`).

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use super::plan::{self, AdvisoryStatus, PlanInput, PlanItem, SiteUse};
use crate::checksum::ChecksumAlgo;
use crate::fetch::{FetchError, Fetcher, Item};
use crate::hash;
use crate::paths::RepoPath;
use crate::peer::Peers;
use crate::repodata::{
    self, Advisory, Checksum, Compression, PrimaryPackage, RepoMdRecord, RepodataError,
};
use crate::store::{Expected, Snapshot, Store, StoreError, now_secs};
use crate::uplink::{Class, Hold, Now, Uplink};

/// A plan is made again this often even without new metadata (new use by clients, files that
/// failed, room freed on disk).
const REPLAN_EVERY: Duration = Duration::from_secs(3600);

/// How long a file the site's downloader could not send waits before it is asked again, and
/// how many times; then it counts as failed (planned again next time).
const DEFER_RETRY: Duration = Duration::from_secs(30);
const MAX_DEFERRALS: u32 = 3;

/// How many of the next waiting files `/api/status` lists.
const SHOWN: usize = 10;

/// What the queue needs of the node's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `(repo, mirror)` for every configured repo.
    pub repos: Vec<(String, bool)>,
    /// `[uplink] prefetch_days`.
    pub days: u32,
}

/// The `prefetch` part of `/api/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueStatus {
    /// Files in the last plan (every tree).
    pub planned: usize,
    /// Of those: fetched, or found held already, since.
    pub done: usize,
    /// Of those: tried and failed (they are planned again next time).
    pub failed: usize,
    /// Of those: left out because the store had no room for them without evicting (they are
    /// planned again next time; prefetch never makes the store evict).
    pub skipped: usize,
    /// Of those: not tried yet.
    pub waiting: usize,
    pub bytes_done: u64,
    pub bytes_waiting: u64,
    /// The file being fetched now (`repo/path`).
    pub running: Option<String>,
    /// Why the queue waits now, when it does: `budget_spent`, `outside_window` or
    /// `interactive_busy`.
    pub held: Option<Hold>,
    /// When the last plan was made (unix seconds).
    pub planned_at: Option<u64>,
    /// The next files, in order.
    pub next: Vec<NextFile>,
}

/// One waiting file of [`QueueStatus::next`].
#[derive(Debug, Clone, Serialize)]
pub struct NextFile {
    pub repo: String,
    pub path: String,
    pub size: u64,
    pub class: plan::Class,
    pub advisories: Vec<String>,
}

/// One entry of the `advisories` part of `/api/status`: a security advisory that affects
/// packages this node's clients use, in the tree it was found in.
#[derive(Debug, Clone, Serialize)]
pub struct RepoAdvisory {
    pub repo: String,
    pub tree: String,
    #[serde(flatten)]
    pub advisory: AdvisoryStatus,
}

#[derive(Debug, thiserror::Error)]
enum PlanError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading {what}: {source}")]
    Read { what: String, source: io::Error },
    #[error("{what} is not valid: {source}")]
    Parse { what: String, source: RepodataError },
    #[error("the snapshot names no stored repomd.xml ({0})")]
    NoRepomd(String),
    #[error("the planning task failed: {0}")]
    Task(String),
}

/// The plan of one tree, with what it was made from (kept to recompute the advisories as
/// files arrive).
struct TreePlan {
    repo: String,
    tree: String,
    mirror: bool,
    packages: Vec<PrimaryPackage>,
    advisories: Vec<Advisory>,
    used: Vec<SiteUse>,
    items: Vec<PlanItem>,
}

#[derive(Default)]
struct State {
    status: QueueStatus,
    advisories: Vec<RepoAdvisory>,
}

pub struct Queue {
    settings: Settings,
    store: Store,
    fetcher: Arc<Fetcher>,
    peers: Option<Arc<Peers>>,
    uplink: Arc<Uplink>,
    state: Mutex<State>,
}

/// How one attempt at a file ended.
enum Attempt {
    /// Stored or already held (`true`), or failed.
    Done(bool),
    /// The scheduler paused it: try again once background work may run.
    Paused,
    /// The site's downloader could not send it now: ask again after [`DEFER_RETRY`].
    Deferred,
}

/// What became of a planned file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    Failed,
    /// The store had no room for it without evicting.
    Skipped,
}

/// How one waiting period ended.
enum Woken {
    Ready,
    Replan,
    Stop,
}

impl Queue {
    pub fn new(
        settings: Settings,
        store: Store,
        fetcher: Arc<Fetcher>,
        peers: Option<Arc<Peers>>,
        uplink: Arc<Uplink>,
    ) -> Arc<Queue> {
        Arc::new(Queue {
            settings,
            store,
            fetcher,
            peers,
            uplink,
            state: Mutex::new(State::default()),
        })
    }

    /// The `prefetch` part of `/api/status`.
    pub fn status(&self) -> QueueStatus {
        self.state().status.clone()
    }

    /// The `advisories` part of `/api/status`: most severe first.
    pub fn advisories(&self) -> Vec<RepoAdvisory> {
        self.state().advisories.clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Plans and fetches until `stop` turns true; plans again when `switches` changes (a new
    /// snapshot is in service) and every [`REPLAN_EVERY`].
    pub async fn run(
        self: Arc<Self>,
        mut switches: watch::Receiver<u64>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            switches.borrow_and_update();
            let trees = match self.plan_all().await {
                Ok(t) => Arc::new(t),
                Err(e) => {
                    tracing::warn!(error = %e, "could not plan the prefetch; trying again after the next new metadata");
                    Arc::default()
                }
            };
            match self.work(&trees, &mut switches, &mut stop).await {
                Woken::Stop => return,
                Woken::Replan => continue,
                Woken::Ready => {}
            }
            tokio::select! {
                _ = switches.changed() => {}
                _ = tokio::time::sleep(REPLAN_EVERY) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Plans every tree this node serves (blocking reads and parsing on the blocking pool).
    async fn plan_all(&self) -> Result<Vec<TreePlan>, PlanError> {
        // Last-access times of recent hits are still in memory: write them first.
        if let Err(e) = self.store.flush_access().await {
            tracing::debug!(error = %e, "could not record last-access times before planning");
        }
        let store = self.store.clone();
        let settings = self.settings.clone();
        let peers = self.peers.clone();
        let trees = tokio::task::spawn_blocking(move || plan_trees(&store, &settings, peers))
            .await
            .map_err(|e| PlanError::Task(e.to_string()))??;
        let mut st = self.state();
        st.status = QueueStatus {
            planned: trees.iter().map(|t| t.items.len()).sum(),
            waiting: trees.iter().map(|t| t.items.len()).sum(),
            bytes_waiting: trees.iter().flat_map(|t| &t.items).map(|i| i.size).sum(),
            planned_at: Some(now_secs()),
            ..QueueStatus::default()
        };
        st.status.next = next_files(&trees, 0, 0);
        st.advisories = advisories(&self.store, &trees);
        drop(st);
        for t in &trees {
            if !t.items.is_empty() {
                let security = t
                    .items
                    .iter()
                    .filter(|i| i.class == plan::Class::Security)
                    .count();
                tracing::info!(repo = %t.repo, tree = %t.tree, files = t.items.len(), security,
                    bytes = t.items.iter().map(|i| i.size).sum::<u64>(),
                    "prefetch planned: newer versions of what this site uses, security fixes first");
            }
        }
        Ok(trees)
    }

    /// Fetches the planned files in order. A file the store has no room for is skipped (the
    /// ones after it may fit); new metadata, or [`REPLAN_EVERY`], makes a new plan at once.
    async fn work(
        &self,
        trees: &Arc<Vec<TreePlan>>,
        switches: &mut watch::Receiver<u64>,
        stop: &mut watch::Receiver<bool>,
    ) -> Woken {
        let planned = tokio::time::Instant::now();
        for (ti, t) in trees.iter().enumerate() {
            for (ii, it) in t.items.iter().enumerate() {
                let mut deferrals = 0;
                let outcome = loop {
                    if switches.has_changed().unwrap_or(false) || planned.elapsed() >= REPLAN_EVERY
                    {
                        return Woken::Replan;
                    }
                    match self.wait_until_allowed(switches, stop).await {
                        Woken::Ready => {}
                        other => return other,
                    }
                    if !self.store.room_for(it.size) {
                        break Outcome::Skipped;
                    }
                    match self.fetch_one(t, it, stop).await {
                        // Paused by the scheduler: tried again once allowed.
                        Some(Attempt::Paused) => continue,
                        Some(Attempt::Deferred) if deferrals < MAX_DEFERRALS => {
                            deferrals += 1;
                            tokio::select! {
                                _ = tokio::time::sleep(DEFER_RETRY) => continue,
                                _ = stop.changed() => return Woken::Stop,
                            }
                        }
                        Some(Attempt::Deferred) => break Outcome::Failed,
                        Some(Attempt::Done(true)) => break Outcome::Done,
                        Some(Attempt::Done(false)) => break Outcome::Failed,
                        None => return Woken::Stop,
                    }
                };
                self.count(outcome, it, trees, ti, ii).await;
            }
        }
        self.state().status.running = None;
        Woken::Ready
    }

    /// Fetches one planned file; `None` when the node is stopping.
    async fn fetch_one(
        &self,
        t: &TreePlan,
        it: &PlanItem,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Attempt> {
        let Ok(path) = RepoPath::in_tree(&t.tree, &it.href) else {
            return Some(Attempt::Done(false));
        };
        if self.held(&it.checksum) {
            return Some(Attempt::Done(true));
        }
        let key = format!("{}/{path}", t.repo);
        self.state().status.running = Some(key.clone());
        let transfer = self.fetcher.start(Item {
            repo: t.repo.clone(),
            path,
            expected: Some(Expected {
                checksum: it.checksum.clone(),
                size: Some(it.size),
            }),
            publish: true,
            revalidate: None,
            site: true,
            class: Class::Background,
        });
        let result = tokio::select! {
            r = transfer.wait() => r,
            // The transfer goes on as its own task; the node is stopping.
            _ = stop.changed() => return None,
        };
        Some(match result {
            Ok(_) => Attempt::Done(true),
            Err(FetchError::Held(_)) => Attempt::Paused,
            Err(FetchError::Deferred(why)) => {
                tracing::info!(file = %key, reason = %why, "prefetch of a file deferred; asking the site again in {} s", DEFER_RETRY.as_secs());
                Attempt::Deferred
            }
            Err(e) => {
                tracing::info!(file = %key, error = %e, "prefetch of a file failed; it is planned again next time");
                Attempt::Done(false)
            }
        })
    }

    /// Waits until background work may start now.
    async fn wait_until_allowed(
        &self,
        switches: &mut watch::Receiver<u64>,
        stop: &mut watch::Receiver<bool>,
    ) -> Woken {
        loop {
            let Some(why) = self.uplink.lock().background_hold(Now::system()) else {
                self.state().status.held = None;
                return Woken::Ready;
            };
            {
                let mut st = self.state();
                if st.status.held != Some(why) {
                    tracing::debug!(held = %why, "prefetch waits");
                }
                st.status.held = Some(why);
                st.status.running = None;
            }
            tokio::select! {
                _ = tokio::time::sleep(why.retry()) => {}
                _ = switches.changed() => return Woken::Replan,
                _ = stop.changed() => return Woken::Stop,
            }
        }
    }

    /// The store holds the file (row and file on disk): the one lookup's answer.
    fn held(&self, c: &Checksum) -> bool {
        self.store
            .view()
            .and_then(|v| crate::lookup::checksum(&v, c))
            .is_ok_and(|h| h.is_some())
    }

    /// One file of the plan is finished. The advisories are computed again (on the blocking
    /// pool) when the file carried one.
    async fn count(
        &self,
        outcome: Outcome,
        it: &PlanItem,
        trees: &Arc<Vec<TreePlan>>,
        ti: usize,
        ii: usize,
    ) {
        let fresh = if outcome == Outcome::Done && !it.advisories.is_empty() {
            let (store, trees) = (self.store.clone(), trees.clone());
            tokio::task::spawn_blocking(move || advisories(&store, &trees))
                .await
                .ok()
        } else {
            None
        };
        let size = it.size;
        let mut st = self.state();
        let s = &mut st.status;
        s.waiting = s.waiting.saturating_sub(1);
        s.bytes_waiting = s.bytes_waiting.saturating_sub(size);
        match outcome {
            Outcome::Done => {
                s.done += 1;
                s.bytes_done += size;
            }
            Outcome::Failed => s.failed += 1,
            Outcome::Skipped => s.skipped += 1,
        }
        s.running = None;
        s.next = next_files(trees, ti, ii + 1);
        if let Some(a) = fresh {
            st.advisories = a;
        }
    }
}

/// The first [`SHOWN`] files from item `ii` of tree `ti` on.
fn next_files(trees: &[TreePlan], ti: usize, ii: usize) -> Vec<NextFile> {
    trees
        .iter()
        .enumerate()
        .skip(ti)
        .flat_map(|(i, t)| {
            let from = if i == ti { ii } else { 0 };
            t.items.iter().skip(from).map(move |it| NextFile {
                repo: t.repo.clone(),
                path: format!("{}{}", t.tree, it.href),
                size: it.size,
                class: it.class,
                advisories: it.advisories.clone(),
            })
        })
        .take(SHOWN)
        .collect()
}

/// The security advisories affecting used packages, over every tree, most severe first.
fn advisories(store: &Store, trees: &[TreePlan]) -> Vec<RepoAdvisory> {
    // "Ready" is the one lookup's answer (row and file), over one read transaction.
    let view = store.view().ok();
    let held = |c: &Checksum| {
        view.as_ref()
            .is_some_and(|v| matches!(crate::lookup::checksum(v, c), Ok(Some(_))))
    };
    let now = now_secs();
    let mut out: Vec<RepoAdvisory> = Vec::new();
    for t in trees {
        let input = PlanInput {
            packages: &t.packages,
            advisories: &t.advisories,
            used: &t.used,
            now,
            prefetch_days: u32::MAX,
            mirror: t.mirror,
            held: &held,
        };
        out.extend(
            plan::advisory_status(&input)
                .into_iter()
                .map(|advisory| RepoAdvisory {
                    repo: t.repo.clone(),
                    tree: t.tree.clone(),
                    advisory,
                }),
        );
    }
    out.sort_by(|a, b| {
        a.advisory
            .severity
            .cmp(&b.advisory.severity)
            .then_with(|| b.advisory.issued.cmp(&a.advisory.issued))
            .then_with(|| a.advisory.id.cmp(&b.advisory.id))
    });
    out
}

/// Plans every tree in service of a configured repo. Blocking.
fn plan_trees(
    store: &Store,
    settings: &Settings,
    peers: Option<Arc<Peers>>,
) -> Result<Vec<TreePlan>, PlanError> {
    let sha256: HashSet<[u8; 32]> = store.all_sha256()?.into_iter().collect();
    let held = |c: &Checksum| match c.algo {
        ChecksumAlgo::Sha256 => {
            <[u8; 32]>::try_from(c.digest.as_slice()).is_ok_and(|d| sha256.contains(&d))
        }
        _ => matches!(store.blob_by_checksum(c), Ok(Some(_))),
    };
    let now = now_secs();
    let mut out = Vec::new();
    for (key, snap) in store.snapshots()? {
        let Some((repo, tree)) = key.split_once('/') else {
            continue;
        };
        let Some(&(_, mirror)) = settings.repos.iter().find(|(r, _)| r == repo) else {
            continue;
        };
        if settings.days == 0 && !mirror {
            continue;
        }
        let mut t = match read_tree(store, repo, tree, &snap) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(repo, tree, error = %e, "cannot plan the prefetch of this tree");
                continue;
            }
        };
        t.mirror = mirror;
        let input = PlanInput {
            packages: &t.packages,
            advisories: &t.advisories,
            used: &t.used,
            now,
            prefetch_days: settings.days,
            mirror,
            held: &held,
        };
        let mut items = plan::plan(&input);
        if mirror && let Some(p) = &peers {
            // Files nobody here used are fetched by their downloader alone: once per site.
            let used: HashSet<(&str, &str)> = t
                .used
                .iter()
                .map(|u| (u.name.as_str(), u.arch.as_str()))
                .collect();
            items.retain(|i| {
                used.contains(&(i.name.as_str(), i.arch.as_str()))
                    || RepoPath::in_tree(tree, &i.href)
                        .is_ok_and(|path| p.downloader_for(&format!("{repo}/{path}")).is_none())
            });
        }
        t.items = items;
        out.push(t);
    }
    Ok(out)
}

/// A tree's packages, advisories and the site's use of it, from the store. Blocking.
fn read_tree(
    store: &Store,
    repo: &str,
    tree: &str,
    snap: &Snapshot,
) -> Result<TreePlan, PlanError> {
    let what = |w: &str| format!("{repo}/{tree} {w}");
    let repomd_id =
        hash::parse_blob_id(&snap.repomd).ok_or_else(|| PlanError::NoRepomd(what("")))?;
    let bytes = std::fs::read(store.blob_path(&repomd_id)).map_err(|source| PlanError::Read {
        what: what("repomd.xml"),
        source,
    })?;
    let md = repodata::parse_repomd(&bytes).map_err(|source| PlanError::Parse {
        what: what("repomd.xml"),
        source,
    })?;
    let open = |r: &RepoMdRecord| -> Result<Option<std::fs::File>, PlanError> {
        let Some(id) = store.blob_by_checksum(&r.checksum)? else {
            return Ok(None);
        };
        std::fs::File::open(store.blob_path(&id))
            .map(Some)
            .map_err(|source| PlanError::Read {
                what: what(&r.href),
                source,
            })
    };
    let mut packages = Vec::new();
    if let Some(r) = md.records.iter().find(|r| r.kind == "primary")
        && let Some(f) = open(r)?
    {
        repodata::parse_primary_packages(
            io::BufReader::new(f),
            Compression::from_href(&r.href),
            |p| packages.push(p),
        )
        .map_err(|source| PlanError::Parse {
            what: what(&r.href),
            source,
        })?;
    }
    let mut advisories = Vec::new();
    if let Some(r) = md.records.iter().find(|r| r.kind == "updateinfo")
        && let Some(f) = open(r)?
    {
        repodata::parse_updateinfo(
            io::BufReader::new(f),
            Compression::from_href(&r.href),
            |a| advisories.push(a),
        )
        .map_err(|source| PlanError::Parse {
            what: what(&r.href),
            source,
        })?;
    }
    // Trees end with '/' (or are empty, at the repo's root), like the keys of their paths.
    let prefix = format!("{repo}/{tree}");
    let mut fetched = Vec::new();
    for (key, entry) in store.paths_under(&prefix)? {
        let Some(href) = key.strip_prefix(&prefix) else {
            continue;
        };
        // Last access 0: stored by a prefetch and not fetched by any client since.
        let last = store.blob_meta(&entry.blob)?.map_or(0, |m| m.last_access);
        if last > 0 {
            fetched.push((href.to_string(), last));
        }
    }
    let used = plan::usage_from_fetches(&packages, fetched.iter().map(|(h, t)| (h.as_str(), *t)));
    Ok(TreePlan {
        repo: repo.to_string(),
        tree: tree.to_string(),
        mirror: false,
        packages,
        advisories,
        used,
        items: Vec::new(),
    })
}
