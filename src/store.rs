//! The content-addressed store: blob files named by BLAKE3 on disk, and a redb index of
//! repo paths, checksum aliases, blob facts, expected checksums and metadata snapshots.
//!
//! Invariants kept here:
//! - A blob file appears under `blobs/` only complete and synced: temporary file, `fsync`,
//!   rename, directory `fsync`, and only then the index rows naming it are committed.
//! - One thread owns every index write and batches what arrives together into one transaction;
//!   readers use their own read transactions (MVCC) and never wait for a writer.
//! - At open, temporaries are cleared, blob files without index rows are removed, and index rows
//!   whose blob file is missing or of the wrong size are dropped. `verify` re-hashes everything.
//! - Eviction (the `[store]` cap and free-space floor) is installation reversed: the index rows
//!   (blob row, aliases, every path naming it) are committed away through the one writer first,
//!   then the files are unlinked. A crash in between leaves files no row names, which the next
//!   open deletes, finishing the eviction. What to evict is planned by the pure `evict` module;
//!   what is protected (snapshot files, pinned repos) is worked out here from the index.
//! - A file being read when it is evicted stays readable through the reader's open handle
//!   (Linux unlink semantics): running downloads, `sendfile` hits and peer transfers complete.
//! - When nothing more can be evicted, downloads are passed through: the verified file is put in
//!   place so readers can finish, but no index row names it, and it is deleted after
//!   [`PASS_THROUGH_GRACE`] (or by the next open's recovery after a crash).
//!
//! What this module does not do: decide what to fetch, talk to the network, or check content
//! against repository metadata (the `fetch` module does; the store only records what it is given).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::checksum::{Checksum, ChecksumAlgo};
use crate::evict::{self, Kept, Limits, Policy, Tally, Usage};
use crate::hash::{self, BlobId, Digests};

/// `"{repo}/{path}"` → [`PathEntry`]
const PATHS: TableDefinition<&str, &[u8]> = TableDefinition::new("paths");
/// algorithm code ‖ digest → BLAKE3 of the blob
const ALIASES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("aliases");
/// BLAKE3 → [`BlobMeta`]
const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
/// `"{repo}/{path}"` → [`Expected`]: what metadata says a file must be
const EXPECTED: TableDefinition<&str, &[u8]> = TableDefinition::new("expected");
/// `"{repo}/{tree}"` → JSON [`Snapshot`]
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// `history` rows (`"total"`, `"day/2026-05-12"`) → JSON; the schema is `history.rs`'s.
const HISTORY: TableDefinition<&str, &[u8]> = TableDefinition::new("history");

/// Partial downloads untouched this long are deleted at start-up.
const PARTIAL_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Most operations the index writer folds into one transaction.
const MAX_BATCH: usize = 512;

/// How long a passed-through file stays in place after its transfer ended, so that readers that
/// saw the transfer finish can still open it (they do within milliseconds; readers that were
/// following the download hold it open already).
pub const PASS_THROUGH_GRACE: Duration = Duration::from_secs(10);

/// After an eviction run that could not free enough, downloads are passed through without
/// planning again for this long (planning reads the whole index).
const SHORT_RECHECK: Duration = Duration::from_secs(30);

/// Metadata files (under `repodata/`) used within this many seconds are never evicted: a new
/// snapshot references them before its row is committed.
const ASSEMBLY_WINDOW_SECS: u64 = 3600;

/// Start-up eviction compacts the index when it removed at least this many blob rows and at
/// least a quarter of them.
const COMPACT_MIN_ROWS: u64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("index database: {0}")]
    Db(#[from] redb::Error),
    #[error("index row {key:?} is corrupt")]
    CorruptRow { key: String },
    #[error("the index writer has stopped")]
    WriterGone,
    #[error("index write failed: {0}")]
    WriteFailed(String),
    #[error("compacting the index: {0}")]
    Compact(String),
}

impl StoreError {
    fn io(path: &Path, source: io::Error) -> Self {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// True when the disk is full (so callers can say so plainly).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
    }
}

macro_rules! db_err {
    ($e:expr) => {
        $e.map_err(|e| StoreError::Db(e.into()))
    };
}

/// Asks the kernel to start writing `len` bytes of `file` at `offset` back to disk, without
/// waiting, so a later fsync has little left to do. Only an optimisation: failure is ignored.
pub fn start_writeback(file: &impl std::os::fd::AsRawFd, offset: u64, len: u64) {
    // SAFETY: the descriptor is open for the duration of the call; the range is plain numbers.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What the index knows of one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    pub id: BlobId,
    pub size: u64,
    pub stored_at: u64,
    pub last_access: u64,
    /// SHA-256 always, plus whatever other digests metadata asked for.
    pub checksums: Vec<Checksum>,
}

impl BlobMeta {
    pub fn from_digests(d: &Digests, now: u64) -> Self {
        Self {
            id: d.blake3,
            size: d.len,
            stored_at: now,
            last_access: now,
            checksums: d.checksums.clone(),
        }
    }

    pub fn sha256(&self) -> Option<&Checksum> {
        self.checksums
            .iter()
            .find(|c| c.algo == ChecksumAlgo::Sha256)
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(25 + 66 * self.checksums.len());
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&self.stored_at.to_le_bytes());
        v.extend_from_slice(&self.last_access.to_le_bytes());
        v.push(self.checksums.len() as u8);
        for c in &self.checksums {
            v.push(c.algo.code());
            v.push(c.digest.len() as u8);
            v.extend_from_slice(&c.digest);
        }
        v
    }

    fn decode(id: BlobId, b: &[u8]) -> Option<Self> {
        let u = |i: usize| Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?));
        let (size, stored_at, last_access) = (u(0)?, u(8)?, u(16)?);
        let n = *b.get(24)? as usize;
        let mut at = 25;
        let mut checksums = Vec::with_capacity(n);
        for _ in 0..n {
            let algo = ChecksumAlgo::from_code(*b.get(at)?)?;
            let len = *b.get(at + 1)? as usize;
            checksums.push(Checksum {
                algo,
                digest: b.get(at + 2..at + 2 + len)?.to_vec(),
            });
            at += 2 + len;
        }
        Some(Self {
            id,
            size,
            stored_at,
            last_access,
            checksums,
        })
    }
}

/// One served path and the blob behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathEntry {
    pub blob: BlobId,
    /// When upstream last confirmed this content (for mutable paths); when it was stored otherwise.
    pub checked_at: u64,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

fn put_str(v: &mut Vec<u8>, s: &Option<String>) {
    let s = s.as_deref().unwrap_or("");
    let len = s.len().min(u16::MAX as usize);
    v.extend_from_slice(&(len as u16).to_le_bytes());
    v.extend_from_slice(&s.as_bytes()[..len]);
}

fn get_str(b: &[u8], at: &mut usize) -> Option<Option<String>> {
    let len = u16::from_le_bytes(b.get(*at..*at + 2)?.try_into().ok()?) as usize;
    let s = std::str::from_utf8(b.get(*at + 2..*at + 2 + len)?).ok()?;
    *at += 2 + len;
    Some((!s.is_empty()).then(|| s.to_string()))
}

impl PathEntry {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(48);
        v.extend_from_slice(&self.blob);
        v.extend_from_slice(&self.checked_at.to_le_bytes());
        put_str(&mut v, &self.etag);
        put_str(&mut v, &self.last_modified);
        v
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let blob: BlobId = b.get(..32)?.try_into().ok()?;
        let checked_at = u64::from_le_bytes(b.get(32..40)?.try_into().ok()?);
        let mut at = 40;
        let etag = get_str(b, &mut at)?;
        let last_modified = get_str(b, &mut at)?;
        Some(Self {
            blob,
            checked_at,
            etag,
            last_modified,
        })
    }
}

/// What repository metadata says a file must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub checksum: Checksum,
    pub size: Option<u64>,
}

impl Expected {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(10 + self.checksum.digest.len());
        v.push(self.checksum.algo.code());
        v.extend_from_slice(&self.size.map_or(u64::MAX, |s| s).to_le_bytes());
        v.extend_from_slice(&self.checksum.digest);
        v
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let algo = ChecksumAlgo::from_code(*b.first()?)?;
        let size = u64::from_le_bytes(b.get(1..9)?.try_into().ok()?);
        let digest = b.get(9..)?.to_vec();
        (digest.len() == algo.digest_len()).then_some(Self {
            checksum: Checksum { algo, digest },
            size: (size != u64::MAX).then_some(size),
        })
    }
}

/// Whether finished bytes are what metadata says (size and checksum); the reason if not.
/// A checksum type this build cannot compute (md5) leaves the size and BLAKE3 as the checks.
pub fn check_expected(
    path: &crate::paths::RepoPath,
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

/// A tree's metadata as served: repomd.xml, its companions and everything it references.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// repomd.xml `<revision>`, or the first 12 hex digits of its BLAKE3 when it has none.
    pub revision: String,
    /// BLAKE3 (hex) of repomd.xml.
    pub repomd: String,
    /// `(".asc" | ".key", BLAKE3 hex)` of the companions upstream had.
    pub companions: Vec<(String, String)>,
    /// When this snapshot was switched in (unix seconds).
    pub fetched_at: u64,
    /// When upstream last confirmed it or a check was attempted (unix seconds).
    pub checked_at: u64,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// Repo-relative paths of the metadata files this snapshot references.
    pub files: Vec<String>,
    /// Snapshots replaced by this one: `(replaced_at, files)`, kept for the retention window.
    #[serde(default)]
    pub previous: Vec<(u64, Vec<String>)>,
    /// Where its repomd.xml came from. Only [`Origin::Upstream`] was confirmed by this node's
    /// own upstream; `checked_at` is only ever set by that.
    #[serde(default)]
    pub origin: Origin,
}

/// Where a snapshot's repomd.xml came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// This node's own upstream (confirmed at `checked_at`).
    #[default]
    Upstream,
    /// Another node of the site, taken while this node could not reach upstream: not
    /// confirmed upstream.
    Site,
    /// A sneakernet bundle (imported, or a mounted seed directory).
    Bundle,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::Upstream => "upstream",
            Origin::Site => "site",
            Origin::Bundle => "bundle",
        }
    }
}

fn alias_key(c: &Checksum) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + c.digest.len());
    k.push(c.algo.code());
    k.extend_from_slice(&c.digest);
    k
}

/// One change to the index; a [`Batch`] of them commits atomically.
#[derive(Debug, Clone)]
enum Op {
    PutBlob(BlobMeta),
    SetPath(String, PathEntry),
    RemovePath(String),
    PutExpected(String, Expected),
    RemoveExpected(String),
    PutSnapshot(String, Snapshot),
    RemoveBlob(BlobId),
    /// Blob rows, their aliases and every path naming them, in one pass over the paths.
    EvictBlobs(Vec<BlobId>),
    Touch(BlobId, u64),
    PutHistory(String, Vec<u8>),
    RemoveHistory(String),
}

/// Index changes that must become visible together.
#[derive(Debug, Default, Clone)]
pub struct Batch(Vec<Op>);

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn put_blob(&mut self, m: BlobMeta) -> &mut Self {
        self.0.push(Op::PutBlob(m));
        self
    }
    pub fn set_path(&mut self, key: String, e: PathEntry) -> &mut Self {
        self.0.push(Op::SetPath(key, e));
        self
    }
    pub fn remove_path(&mut self, key: String) -> &mut Self {
        self.0.push(Op::RemovePath(key));
        self
    }
    pub fn put_expected(&mut self, key: String, e: Expected) -> &mut Self {
        self.0.push(Op::PutExpected(key, e));
        self
    }
    pub fn remove_expected(&mut self, key: String) -> &mut Self {
        self.0.push(Op::RemoveExpected(key));
        self
    }
    pub fn put_snapshot(&mut self, key: String, s: Snapshot) -> &mut Self {
        self.0.push(Op::PutSnapshot(key, s));
        self
    }
    pub fn remove_blob(&mut self, id: BlobId) -> &mut Self {
        self.0.push(Op::RemoveBlob(id));
        self
    }
    /// A row of the `history` table (its contents are `history.rs`'s business).
    pub fn put_history(&mut self, key: String, value: Vec<u8>) -> &mut Self {
        self.0.push(Op::PutHistory(key, value));
        self
    }
    pub fn remove_history(&mut self, key: String) -> &mut Self {
        self.0.push(Op::RemoveHistory(key));
        self
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The blobs this batch adds rows for (to release their install guards once committed).
    fn installed(&self) -> Vec<BlobId> {
        self.0
            .iter()
            .filter_map(|op| match op {
                Op::PutBlob(m) => Some(m.id),
                _ => None,
            })
            .collect()
    }
}

struct WriteReq {
    batch: Batch,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// What `verify` found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct VerifyReport {
    pub checked: u64,
    pub bytes: u64,
    /// `(blob hex, what was wrong)`
    pub bad: Vec<(String, String)>,
    pub paths_dropped: u64,
}

/// Counts of what start-up recovery cleaned.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    pub temporaries: u64,
    /// Blob files no index row named: an install cut before its commit, an eviction cut
    /// between its commit and its unlinks, or a passed-through file.
    pub orphan_blobs: u64,
    pub rows_dropped: u64,
    /// What the start-up eviction run did ([`StartUp::policy`] set).
    pub eviction: Option<EvictReport>,
    /// Index file size before and after compaction, when it was compacted.
    pub index_bytes: Option<(u64, u64)>,
}

/// What [`Store::open_with`] does before the store is shared: everything here needs the index
/// to itself.
#[derive(Debug, Clone, Default)]
pub struct StartUp {
    /// Evict now if a limit is crossed, and keep to this policy while running.
    pub policy: Option<Policy>,
    /// Plan only: nothing is deleted and the index is not compacted.
    pub dry_run: bool,
    /// Name the evicted files in the report (a path of each): costs one more pass over paths.
    pub names: bool,
    /// Compact the index after the eviction run whatever it freed (`gc`); otherwise only when
    /// it freed a lot.
    pub compact: bool,
}

/// What one eviction run did, or (dry run) would do.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EvictReport {
    /// Unix seconds.
    pub at: u64,
    pub dry_run: bool,
    pub stored_before: u64,
    pub free_before: Option<u64>,
    /// Bytes that had to go to reach the low-water mark.
    pub need: u64,
    pub evicted: Tally,
    pub kept: Kept,
    /// Bytes still missing: everything left is protected.
    pub short: u64,
    /// `(a path that named it, or its blob id; size)` of each evicted file, when asked for.
    #[serde(skip)]
    pub names: Vec<(String, u64)>,
}

impl EvictReport {
    fn new(plan: &evict::Plan, usage: &Usage, dry_run: bool) -> Self {
        Self {
            at: now_secs(),
            dry_run,
            stored_before: usage.stored,
            free_before: usage.free,
            need: plan.need,
            evicted: plan.evicted,
            kept: plan.kept,
            short: plan.short(),
            names: Vec::new(),
        }
    }
}

/// The store's disk use and eviction record, for `/api/status` and `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiskStatus {
    pub max_size: Option<u64>,
    pub min_free: u64,
    pub stored_bytes: u64,
    /// Free bytes on the data directory's filesystem.
    pub free_bytes: Option<u64>,
    /// Size of that filesystem.
    pub filesystem_bytes: Option<u64>,
    /// Eviction runs that deleted something.
    pub eviction_runs: u64,
    pub evicted_files: u64,
    pub evicted_bytes: u64,
    /// New downloads are served but not kept: nothing more can be evicted.
    pub passthrough: bool,
    pub passthrough_reason: Option<String>,
    pub passed_through_files: u64,
    pub passed_through_bytes: u64,
    pub last_eviction: Option<EvictReport>,
}

/// Who is doing what to which blob file right now; guards the file side of installs, evictions
/// and pass-throughs against each other (the index side is ordered by the one writer).
#[derive(Debug, Default)]
struct Guards {
    /// Blobs put in place whose index rows are not committed yet, with how many installers.
    installing: HashMap<BlobId, u32>,
    /// Blobs of an eviction run between its index commit and its unlinks.
    evicting: HashSet<BlobId>,
    /// Of those, blobs installed again meanwhile: their file stays.
    reinstalled: HashSet<BlobId>,
    /// Passed-through blobs (in place, no index row) and since when.
    passing: HashMap<BlobId, Instant>,
}

impl Guards {
    fn release(&mut self, id: &BlobId) {
        if let Some(n) = self.installing.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                self.installing.remove(id);
            }
        }
    }
}

/// Eviction counters and the pass-through state.
#[derive(Debug, Default)]
struct DiskState {
    runs: u64,
    evicted: Tally,
    passed: Tally,
    passthrough: Option<String>,
    /// When a run last could not free enough.
    short_at: Option<Instant>,
    last: Option<EvictReport>,
}

/// A lock that survives a panic elsewhere: the data behind these locks stays consistent at
/// every step, so a poisoned one is taken over rather than failing every later call.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `(free, total)` bytes of the filesystem holding `path`, as an unprivileged user sees them.
pub fn filesystem_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let unit = st.f_frsize as u64;
    Some((
        (st.f_bavail as u64).saturating_mul(unit),
        (st.f_blocks as u64).saturating_mul(unit),
    ))
}

fn blob_file(root: &Path, id: &BlobId) -> PathBuf {
    let h = hash::hex(id);
    root.join("blobs").join(&h[..2]).join(h)
}

/// The store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    db: Arc<Database>,
    writer: Mutex<Option<mpsc::Sender<WriteReq>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    touched: Mutex<HashMap<BlobId, u64>>,
    /// Bytes of the blobs the index names; kept by the writer.
    stored: Arc<AtomicU64>,
    policy: Option<Policy>,
    /// Shared with the writer, which releases install guards as soon as it has committed.
    guards: Arc<Mutex<Guards>>,
    disk: Mutex<DiskState>,
    /// Bytes of installs between their room check and their commit.
    reserved: AtomicU64,
    /// Held by an eviction run, and by an install that found no room from its check (and the
    /// run it starts) to its commit: one run at a time.
    run: tokio::sync::Mutex<()>,
}

/// Bytes reserved in [`Inner::reserved`] until dropped.
struct Reserved<'a> {
    total: &'a AtomicU64,
    bytes: u64,
}

impl<'a> Reserved<'a> {
    fn take(total: &'a AtomicU64, bytes: u64) -> Self {
        total.fetch_add(bytes, Ordering::Relaxed);
        Self { total, bytes }
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut w) = self.writer.lock() {
            w.take();
        }
        if let Ok(mut t) = self.thread.lock()
            && let Some(t) = t.take()
        {
            let _ = t.join();
        }
    }
}

/// Rows of the index as of one moment ([`Store::view`]): reads only.
pub struct View<'a> {
    store: &'a Store,
    tx: redb::ReadTransaction,
}

impl View<'_> {
    /// Where the blob's file is (whether it is there is the caller's question).
    pub fn blob_path(&self, id: &BlobId) -> PathBuf {
        self.store.blob_path(id)
    }

    /// The row `key` of a table keyed by name, decoded; a row that does not decode is an error.
    fn named<T>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        decode: impl FnOnce(&[u8]) -> Option<T>,
    ) -> Result<Option<T>, StoreError> {
        let t = db_err!(self.tx.open_table(table))?;
        let Some(v) = db_err!(t.get(key))? else {
            return Ok(None);
        };
        decode(v.value())
            .map(Some)
            .ok_or_else(|| StoreError::CorruptRow { key: key.into() })
    }

    pub fn path_entry(&self, key: &str) -> Result<Option<PathEntry>, StoreError> {
        self.named(PATHS, key, PathEntry::decode)
    }

    pub fn blob_meta(&self, id: &BlobId) -> Result<Option<BlobMeta>, StoreError> {
        let t = db_err!(self.tx.open_table(BLOBS))?;
        match db_err!(t.get(id.as_slice()))? {
            None => Ok(None),
            Some(v) => BlobMeta::decode(*id, v.value())
                .map(Some)
                .ok_or_else(|| StoreError::CorruptRow { key: hash::hex(id) }),
        }
    }

    /// The blob whose digest of `c.algo` is `c`, if one is stored.
    pub fn blob_by_checksum(&self, c: &Checksum) -> Result<Option<BlobId>, StoreError> {
        let t = db_err!(self.tx.open_table(ALIASES))?;
        Ok(db_err!(t.get(alias_key(c).as_slice()))?.and_then(|v| v.value().try_into().ok()))
    }

    pub fn expected(&self, key: &str) -> Result<Option<Expected>, StoreError> {
        self.named(EXPECTED, key, Expected::decode)
    }

    pub fn snapshot(&self, key: &str) -> Result<Option<Snapshot>, StoreError> {
        self.named(SNAPSHOTS, key, |b| serde_json::from_slice(b).ok())
    }
}

impl Store {
    /// Opens (creating if needed) the store under `root`, then runs start-up recovery.
    pub fn open(root: &Path) -> Result<(Self, Recovery), StoreError> {
        Self::open_with(root, &StartUp::default())
    }

    /// Opens the store, runs start-up recovery, then (with a policy) an eviction run and, when
    /// it freed a lot or `start.compact` asks, a compaction of the index: all before anything
    /// else can use the index.
    pub fn open_with(root: &Path, start: &StartUp) -> Result<(Self, Recovery), StoreError> {
        for d in ["blobs", "tmp", "partial"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(|e| StoreError::io(&p, e))?;
        }
        let db_path = root.join("index.redb");
        let mut db = db_err!(Database::create(&db_path))?;
        {
            let tx = db_err!(db.begin_write())?;
            db_err!(tx.open_table(PATHS))?;
            db_err!(tx.open_table(ALIASES))?;
            db_err!(tx.open_table(BLOBS))?;
            db_err!(tx.open_table(EXPECTED))?;
            db_err!(tx.open_table(SNAPSHOTS))?;
            db_err!(tx.open_table(HISTORY))?;
            db_err!(tx.commit())?;
        }
        let mut rec = recover(root, &db)?;
        let mut disk = DiskState::default();
        if let Some(policy) = &start.policy {
            let report = evict_offline(root, &db, policy, start.dry_run, start.names)?;
            let freed = report.evicted.files;
            let rows = freed
                + report.kept.snapshot.files
                + report.kept.pinned.files
                + report.kept.recent.files;
            let a_lot = freed >= COMPACT_MIN_ROWS && freed.saturating_mul(4) >= rows;
            if !start.dry_run && (start.compact || a_lot) {
                let size = || std::fs::metadata(&db_path).map(|m| m.len()).unwrap_or(0);
                let before = size();
                // Each call moves what it can; a few rounds reach the smallest file.
                for _ in 0..4 {
                    match db.compact() {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => return Err(StoreError::Compact(e.to_string())),
                    }
                }
                rec.index_bytes = Some((before, size()));
            }
            if freed > 0 && !start.dry_run {
                disk.runs = 1;
                disk.evicted = report.evicted;
            }
            if report.short > 0 {
                disk.short_at = Some(Instant::now());
            }
            disk.last = Some(report.clone());
            rec.eviction = Some(report);
        }
        let db = Arc::new(db);
        let stored = Arc::new(AtomicU64::new(stored_total(&db)?));
        let guards = Arc::new(Mutex::new(Guards::default()));
        let (tx, rx) = mpsc::channel::<WriteReq>();
        let (wdb, wstored, wguards) = (db.clone(), stored.clone(), guards.clone());
        let thread = std::thread::Builder::new()
            .name("lanmirror-index".into())
            .spawn(move || writer_loop(&wdb, rx, &wstored, &wguards))
            .map_err(|e| StoreError::io(&db_path, e))?;
        let store = Store {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                db,
                writer: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
                touched: Mutex::new(HashMap::new()),
                stored,
                policy: start.policy.clone(),
                guards,
                disk: Mutex::new(disk),
                reserved: AtomicU64::new(0),
                run: tokio::sync::Mutex::new(()),
            }),
        };
        Ok((store, rec))
    }

    pub fn blob_path(&self, id: &BlobId) -> PathBuf {
        blob_file(&self.inner.root, id)
    }

    /// Where install temporaries go; cleared at every start.
    pub fn tmp_dir(&self) -> PathBuf {
        self.inner.root.join("tmp")
    }

    /// Where resumable partial downloads live; kept across restarts.
    pub fn partial_dir(&self) -> PathBuf {
        self.inner.root.join("partial")
    }

    // ---- reads: each its own read transaction; never waits for the writer ----

    /// A read-only view of the index: one read transaction, so every read through it sees the
    /// same moment (MVCC: the writer never waits for it, nor it for the writer). Drop it soon:
    /// pages it sees cannot be reused until then.
    pub fn view(&self) -> Result<View<'_>, StoreError> {
        Ok(View {
            store: self,
            tx: db_err!(self.inner.db.begin_read())?,
        })
    }

    pub fn path_entry(&self, key: &str) -> Result<Option<PathEntry>, StoreError> {
        self.view()?.path_entry(key)
    }

    pub fn blob_meta(&self, id: &BlobId) -> Result<Option<BlobMeta>, StoreError> {
        self.view()?.blob_meta(id)
    }

    /// The blob whose digest of `c.algo` is `c`, if one is stored.
    pub fn blob_by_checksum(&self, c: &Checksum) -> Result<Option<BlobId>, StoreError> {
        self.view()?.blob_by_checksum(c)
    }

    pub fn expected(&self, key: &str) -> Result<Option<Expected>, StoreError> {
        self.view()?.expected(key)
    }

    pub fn snapshot(&self, key: &str) -> Result<Option<Snapshot>, StoreError> {
        self.view()?.snapshot(key)
    }

    pub fn snapshots(&self) -> Result<Vec<(String, Snapshot)>, StoreError> {
        let tx = db_err!(self.inner.db.begin_read())?;
        let t = db_err!(tx.open_table(SNAPSHOTS))?;
        let mut out = Vec::new();
        for row in db_err!(t.iter())? {
            let (k, v) = db_err!(row)?;
            if let Ok(s) = serde_json::from_slice(v.value()) {
                out.push((k.value().to_string(), s));
            }
        }
        Ok(out)
    }

    /// Every row of the `history` table (see `history.rs`), in key order.
    pub fn history_rows(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = db_err!(self.inner.db.begin_read())?;
        let t = db_err!(tx.open_table(HISTORY))?;
        let mut out = Vec::new();
        for row in db_err!(t.iter())? {
            let (k, v) = db_err!(row)?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Every path row under `prefix` (e.g. `"almalinux/"`), in order.
    pub fn paths_under(&self, prefix: &str) -> Result<Vec<(String, PathEntry)>, StoreError> {
        let tx = db_err!(self.inner.db.begin_read())?;
        let t = db_err!(tx.open_table(PATHS))?;
        let mut out = Vec::new();
        for row in db_err!(t.range(prefix..))? {
            let (k, v) = db_err!(row)?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            let e = PathEntry::decode(v.value()).ok_or_else(|| StoreError::CorruptRow {
                key: key.to_string(),
            })?;
            out.push((key.to_string(), e));
        }
        Ok(out)
    }

    /// The SHA-256 of every stored blob.
    pub fn all_sha256(&self) -> Result<Vec<[u8; 32]>, StoreError> {
        let tx = db_err!(self.inner.db.begin_read())?;
        let t = db_err!(tx.open_table(ALIASES))?;
        let code = ChecksumAlgo::Sha256.code();
        let mut out = Vec::new();
        for row in db_err!(t.range([code].as_slice()..[code + 1].as_slice()))? {
            let (k, _) = db_err!(row)?;
            if let Ok(d) = k.value()[1..].try_into() {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Number of blobs and their total size. Cheap (the dashboard asks every few seconds): the
    /// count is the blob table's length (kept by redb in the table's header), the size the
    /// stored-bytes count the writer keeps.
    pub fn totals(&self) -> Result<(u64, u64), StoreError> {
        let tx = db_err!(self.inner.db.begin_read())?;
        let t = db_err!(tx.open_table(BLOBS))?;
        Ok((db_err!(t.len())?, self.inner.stored.load(Ordering::Relaxed)))
    }

    // ---- writes ----

    /// Commits `batch` atomically through the index writer.
    pub async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let installed = batch.installed();
        let (done, rx) = oneshot::channel();
        match self.send(WriteReq { batch, done }) {
            // The writer releases the install guards.
            Ok(()) => rx.await.map_err(|_| StoreError::WriterGone)?,
            Err(e) => {
                self.release_installs(&installed);
                Err(e)
            }
        }
    }

    /// Like [`Store::commit`], for callers outside the async runtime.
    pub fn commit_blocking(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let installed = batch.installed();
        let (done, rx) = oneshot::channel();
        match self.send(WriteReq { batch, done }) {
            Ok(()) => rx.blocking_recv().map_err(|_| StoreError::WriterGone)?,
            Err(e) => {
                self.release_installs(&installed);
                Err(e)
            }
        }
    }

    /// The rows of these installs will not be committed: eviction may take them again.
    fn release_installs(&self, ids: &[BlobId]) {
        if ids.is_empty() {
            return;
        }
        let mut g = lock(&self.inner.guards);
        for id in ids {
            g.release(id);
        }
    }

    fn send(&self, req: WriteReq) -> Result<(), StoreError> {
        let w = self
            .inner
            .writer
            .lock()
            .map_err(|_| StoreError::WriterGone)?;
        w.as_ref()
            .ok_or(StoreError::WriterGone)?
            .send(req)
            .map_err(|_| StoreError::WriterGone)
    }

    /// Notes that a blob was served; written to the index later by [`Store::flush_access`].
    pub fn touch(&self, id: &BlobId) {
        if let Ok(mut t) = self.inner.touched.lock() {
            t.insert(*id, now_secs());
        }
    }

    /// Writes the last-access times gathered since the previous flush, in one transaction.
    pub async fn flush_access(&self) -> Result<usize, StoreError> {
        let touched: Vec<(BlobId, u64)> = match self.inner.touched.lock() {
            Ok(mut t) => t.drain().collect(),
            Err(_) => return Ok(0),
        };
        let n = touched.len();
        let mut b = Batch::new();
        for (id, at) in touched {
            b.0.push(Op::Touch(id, at));
        }
        self.commit(b).await?;
        Ok(n)
    }

    /// Moves a finished, verified temporary file into place as blob `d.blake3`: sync the file,
    /// rename it, sync the directory. The caller commits index rows only after this returns.
    /// Blocking: call from a blocking thread.
    pub fn install_blob(
        &self,
        file: &File,
        tmp_path: &Path,
        d: &Digests,
    ) -> Result<(), StoreError> {
        let dest = self.blob_path(&d.blake3);
        let dir = dest.parent().unwrap_or(&self.inner.root).to_path_buf();
        file.sync_all().map_err(|e| StoreError::io(tmp_path, e))?;
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
            sync_dir(&self.inner.root.join("blobs"))?;
        }
        {
            // Until the rows are committed (or the blob is passed through) eviction leaves this
            // blob alone; a running eviction of the same content keeps the file; a pending
            // pass-through deletion of it is called off.
            let mut g = lock(&self.inner.guards);
            *g.installing.entry(d.blake3).or_default() += 1;
            g.passing.remove(&d.blake3);
            if g.evicting.contains(&d.blake3) {
                g.reinstalled.insert(d.blake3);
            }
            if let Ok(m) = std::fs::metadata(&dest)
                && m.len() == d.len
            {
                // Same content already stored (another path, or a race): keep the existing file.
                let _ = std::fs::remove_file(tmp_path);
                return Ok(());
            }
            if let Err(e) = std::fs::rename(tmp_path, &dest) {
                g.release(&d.blake3);
                return Err(StoreError::io(&dest, e));
            }
        }
        sync_dir(&dir)
    }

    /// Writes `bytes` as a blob (small files: metadata), returning its digests. Blocking.
    pub fn write_blob_bytes(
        &self,
        bytes: &[u8],
        also: Option<ChecksumAlgo>,
    ) -> Result<Digests, StoreError> {
        use std::io::Write;
        let mut h = hash::MultiHasher::new(also);
        h.update(bytes);
        let d = h.finish();
        let tmp = self.new_tmp_path();
        let mut f = File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| StoreError::io(&tmp, e))?;
        self.install_blob(&f, &tmp, &d)?;
        Ok(d)
    }

    /// A fresh name in the temporary directory.
    pub fn new_tmp_path(&self) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        self.tmp_dir().join(format!(
            "{}-{}-{}.tmp",
            std::process::id(),
            nanos,
            N.fetch_add(1, Ordering::Relaxed)
        ))
    }

    // ---- disk: the cap, free space, eviction and pass-through ----

    /// Bytes of the blobs the index names, and the filesystem's free space now.
    pub fn usage(&self) -> Usage {
        Usage {
            stored: self.inner.stored.load(Ordering::Relaxed),
            free: filesystem_space(&self.inner.root).map(|(free, _)| free),
        }
    }

    /// Whether `size` more bytes can be kept without evicting anything: background work
    /// (prefetch) only fills room, it never makes the store evict.
    /// Background work fills the store up to the cap's low-water mark only (so a client's
    /// download does not start an eviction at once) and leaves `min_free` after its own bytes.
    pub fn room_for(&self, size: u64) -> bool {
        self.limits().is_none_or(|(_, limits)| {
            let u = self.usage_reserved();
            limits
                .cap_low_water()
                .is_none_or(|low| u.stored.saturating_add(size) <= low)
                && u.free
                    .is_none_or(|f| f.saturating_sub(size) >= limits.min_free)
        })
    }

    fn limits(&self) -> Option<(&Policy, Limits)> {
        self.inner
            .policy
            .as_ref()
            .filter(|p| p.limits != Limits::default())
            .map(|p| (p, p.limits))
    }

    /// Commits the index rows of an install (`batch`, naming blob `id` of `size` bytes for
    /// `"{repo}/{path}"` `key`) if the store has room for it, evicting least recently used files
    /// to make room when a limit would be crossed. When even that cannot make room (everything
    /// left is protected), the blob is passed through instead ([`Store::pass_through`]) and
    /// `Ok(false)` returned: readers of the transfer still get every byte, nothing is indexed.
    /// Metadata (under `repodata/`) is always committed: a snapshot needs it whole, and it is
    /// small; the next run evicts something else. Without `[store]` limits this is
    /// [`Store::commit`].
    /// `may_evict` false (background work nobody waits for): commit only if it fits as it is,
    /// else pass it through without evicting anything.
    pub async fn commit_or_pass(
        &self,
        batch: Batch,
        key: &str,
        id: &BlobId,
        size: u64,
        may_evict: bool,
    ) -> Result<bool, StoreError> {
        let Some((policy, limits)) = self.limits() else {
            self.commit(batch).await?;
            return Ok(true);
        };
        if self.blob_meta(id)?.is_some() {
            // Already stored (under another path): no new bytes.
            self.commit(batch).await?;
            return Ok(true);
        }
        let metadata = evict::is_metadata_key(key);
        // Fast path, no lock: every install reserves its bytes before it checks, so
        // concurrent installs cannot each see room for themselves and cross the cap together.
        let reserved = Reserved::take(&self.inner.reserved, size);
        if evict::fits(&limits, &self.usage_reserved(), 0) {
            self.commit(batch).await?;
            drop(reserved);
            if !metadata {
                self.leave_passthrough();
            }
            return Ok(true);
        }
        drop(reserved);
        if !may_evict && !metadata {
            tracing::info!(
                path = key,
                bytes = size,
                "background download not kept: the store has no room without evicting"
            );
            self.pass_through(id, size);
            return Ok(false);
        }
        // Slow path: one eviction run at a time; the others wait for it, then check again.
        let _run = self.inner.run.lock().await;
        let reserved = Reserved::take(&self.inner.reserved, size);
        let mut full = None;
        if !evict::fits(&limits, &self.usage_reserved(), 0) {
            if limits.max_size.is_some_and(|m| size > m) {
                tracing::info!(
                    path = key,
                    bytes = size,
                    "larger than [store] max_size: served, not kept"
                );
                full = Some(String::new());
            } else {
                let recently_short = lock(&self.inner.disk)
                    .short_at
                    .is_some_and(|at| at.elapsed() < SHORT_RECHECK);
                if !recently_short {
                    let incoming = self.inner.reserved.load(Ordering::Relaxed);
                    self.run_eviction(policy, incoming).await;
                }
                let usage = self.usage_reserved();
                if !evict::fits(&limits, &usage, 0) {
                    full = Some(full_reason(&limits, &self.usage()));
                }
            }
        }
        match full {
            None => {
                self.commit(batch).await?;
                drop(reserved);
                if !metadata {
                    self.leave_passthrough();
                }
                Ok(true)
            }
            Some(_) if metadata => {
                self.commit(batch).await?;
                Ok(true)
            }
            Some(why) => {
                drop(reserved);
                self.pass_through(id, size);
                if !why.is_empty() {
                    self.enter_passthrough(why);
                }
                Ok(false)
            }
        }
    }

    /// [`Store::usage`] with the bytes of installs between their check and their commit
    /// counted as stored.
    fn usage_reserved(&self) -> Usage {
        let u = self.usage();
        Usage {
            stored: u
                .stored
                .saturating_add(self.inner.reserved.load(Ordering::Relaxed)),
            ..u
        }
    }

    /// Passes an installed blob through: its file stays in place (readers of the transfer
    /// opening it now still can) but no index row names it, and it is deleted after
    /// [`PASS_THROUGH_GRACE`] by [`Store::sweep_passing`], unless something stores the same
    /// content meanwhile. A crash before that leaves an unindexed file, which the next open
    /// deletes.
    fn pass_through(&self, id: &BlobId, size: u64) {
        let indexed = self.blob_meta(id).ok().flatten().is_some();
        {
            let mut g = lock(&self.inner.guards);
            g.release(id);
            if !indexed && !g.installing.contains_key(id) {
                g.passing.insert(*id, Instant::now());
            }
        }
        lock(&self.inner.disk).passed.add_one(size);
    }

    /// Deletes passed-through files whose grace period is over; returns how many.
    pub fn sweep_passing(&self) -> usize {
        self.sweep_older_than(PASS_THROUGH_GRACE)
    }

    fn sweep_older_than(&self, grace: Duration) -> usize {
        let mut g = lock(&self.inner.guards);
        let due: Vec<BlobId> = g
            .passing
            .iter()
            .filter(|(_, at)| at.elapsed() >= grace)
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            g.passing.remove(id);
            if !g.installing.contains_key(id) {
                remove_blob_file(&self.inner.root, id);
            }
        }
        due.len()
    }

    /// The periodic check: evicts when a limit is crossed (metadata kept over the cap, files
    /// stored by other paths than a download, free space taken by something else). The
    /// pass-through state ends only when a download is kept again: proof of room.
    pub async fn evict_if_needed(&self) {
        let Some((policy, limits)) = self.limits() else {
            return;
        };
        if evict::crossed(&limits, &self.usage()).is_none() {
            return;
        }
        let _run = self.inner.run.lock().await;
        if evict::crossed(&limits, &self.usage()).is_some() {
            self.run_eviction(policy, 0).await;
        }
    }

    /// One eviction run on a blocking thread; the caller holds `run`. Logs what it did.
    async fn run_eviction(&self, policy: &Policy, incoming: u64) {
        let (me, p) = (self.clone(), policy.clone());
        let started = Instant::now();
        let r = tokio::task::spawn_blocking(move || me.evict_blocking(&p, incoming)).await;
        let report = match r {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "eviction failed; nothing was deleted that the index still names");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "eviction task failed");
                return;
            }
        };
        let mut d = lock(&self.inner.disk);
        if report.evicted.files > 0 {
            d.runs += 1;
            d.evicted.files += report.evicted.files;
            d.evicted.bytes = d.evicted.bytes.saturating_add(report.evicted.bytes);
            tracing::info!(
                files = report.evicted.files,
                bytes = report.evicted.bytes,
                kept_snapshot = report.kept.snapshot.files,
                kept_pinned = report.kept.pinned.files,
                kept_recent = report.kept.recent.files,
                secs = format!("{:.2}", started.elapsed().as_secs_f64()),
                "evicted the least recently used files to stay within [store] limits ({} freed); they are fetched again when asked for",
                crate::units::Size(report.evicted.bytes)
            );
        }
        d.short_at = (report.short > 0).then(Instant::now);
        d.last = Some(report);
    }

    /// The runtime eviction run: plan from the index, commit the rows away through the writer,
    /// then unlink, skipping blobs being installed right now. Blocking.
    fn evict_blocking(&self, policy: &Policy, incoming: u64) -> Result<EvictReport, StoreError> {
        let touched = lock(&self.inner.touched).clone();
        let blobs = gather(
            &self.inner.root,
            &self.inner.db,
            policy,
            &touched,
            now_secs(),
        )?;
        let usage = Usage {
            stored: blobs.iter().map(|b| b.size).fold(0, u64::saturating_add),
            free: filesystem_space(&self.inner.root).map(|(free, _)| free),
        };
        let plan = evict::plan(&blobs, &policy.limits, &usage, incoming);
        drop(blobs);
        let mut report = EvictReport::new(&plan, &usage, false);
        if plan.evict.is_empty() {
            return Ok(report);
        }
        let chosen: Vec<(BlobId, u64)> = {
            let mut g = lock(&self.inner.guards);
            let chosen: Vec<_> = plan
                .evict
                .into_iter()
                .filter(|(id, _)| !g.installing.contains_key(id))
                .collect();
            g.evicting.extend(chosen.iter().map(|(id, _)| *id));
            chosen
        };
        // Index rows first, through the one writer; then the files.
        let ids: Vec<BlobId> = chosen.iter().map(|(id, _)| *id).collect();
        let committed = self.commit_blocking(Batch(vec![Op::EvictBlobs(ids)]));
        // In slices, so installs and the writer (which take the same lock) wait little.
        for slice in chosen.chunks(1024) {
            let mut g = lock(&self.inner.guards);
            for (id, _) in slice {
                g.evicting.remove(id);
                let again = g.reinstalled.remove(id);
                if committed.is_ok() && !again {
                    remove_blob_file(&self.inner.root, id);
                }
            }
        }
        committed?;
        let mut t = lock(&self.inner.touched);
        report.evicted = Tally::default();
        for (id, size) in &chosen {
            t.remove(id);
            report.evicted.add_one(*size);
        }
        // `short` stays the plan's: what protection left missing. Blobs skipped because they
        // were being installed are a passing state, not a reason to stop evicting.
        Ok(report)
    }

    fn enter_passthrough(&self, why: String) {
        let mut d = lock(&self.inner.disk);
        if d.passthrough.is_none() {
            tracing::warn!(
                reason = %why,
                "store full of files that must stay (snapshots in service, pinned repos): new downloads are served, verified, but not kept; raise [store] max_size, lower min_free, free disk space, or unpin a repo"
            );
        }
        d.passthrough = Some(why);
    }

    fn leave_passthrough(&self) {
        let mut d = lock(&self.inner.disk);
        if d.passthrough.take().is_some() {
            tracing::info!("the store has room again: downloads are kept again");
        }
    }

    /// Disk use and the eviction record, for `/api/status` and `/metrics`.
    pub fn disk_status(&self) -> DiskStatus {
        let limits = self
            .inner
            .policy
            .as_ref()
            .map(|p| p.limits)
            .unwrap_or_default();
        let space = filesystem_space(&self.inner.root);
        let d = lock(&self.inner.disk);
        DiskStatus {
            max_size: limits.max_size,
            min_free: limits.min_free,
            stored_bytes: self.inner.stored.load(Ordering::Relaxed),
            free_bytes: space.map(|s| s.0),
            filesystem_bytes: space.map(|s| s.1),
            eviction_runs: d.runs,
            evicted_files: d.evicted.files,
            evicted_bytes: d.evicted.bytes,
            passthrough: d.passthrough.is_some(),
            passthrough_reason: d.passthrough.clone(),
            passed_through_files: d.passed.files,
            passed_through_bytes: d.passed.bytes,
            last_eviction: d.last.clone(),
        }
    }

    /// Re-hashes every blob; removes bad ones (file and rows) and reports. Blocking.
    pub fn verify(&self, mut progress: impl FnMut(u64, u64)) -> Result<VerifyReport, StoreError> {
        let mut metas = Vec::new();
        {
            let tx = db_err!(self.inner.db.begin_read())?;
            let t = db_err!(tx.open_table(BLOBS))?;
            for row in db_err!(t.iter())? {
                let (k, v) = db_err!(row)?;
                if let Ok(id) = <BlobId>::try_from(k.value()) {
                    metas.push((id, BlobMeta::decode(id, v.value())));
                }
            }
        }
        let mut report = VerifyReport::default();
        let total = metas.len() as u64;
        let mut remove = Batch::new();
        for (i, (id, meta)) in metas.into_iter().enumerate() {
            progress(i as u64, total);
            let problem = match meta {
                None => Some("its index row is unreadable".to_string()),
                Some(m) => self.check_blob(&m, &mut report.bytes),
            };
            report.checked += 1;
            if let Some(p) = problem {
                report.bad.push((hash::hex(&id), p));
                let _ = std::fs::remove_file(self.blob_path(&id));
                remove.remove_blob(id);
            }
        }
        if !remove.is_empty() {
            let before = self.count_paths()?;
            self.commit_blocking(remove)?;
            report.paths_dropped = before.saturating_sub(self.count_paths()?);
        }
        Ok(report)
    }

    fn check_blob(&self, m: &BlobMeta, bytes: &mut u64) -> Option<String> {
        let path = self.blob_path(&m.id);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) => return Some(format!("cannot open {}: {e}", path.display())),
        };
        let extra = m
            .checksums
            .iter()
            .map(|c| c.algo)
            .find(|a| *a != ChecksumAlgo::Sha256);
        let d = match hash::hash_reader(f, extra) {
            Ok(h) => h.finish(),
            Err(e) => return Some(format!("cannot read {}: {e}", path.display())),
        };
        *bytes += d.len;
        if d.len != m.size {
            return Some(format!("size is {} bytes, index says {}", d.len, m.size));
        }
        if d.blake3 != m.id {
            return Some(format!("content hashes to {}", hash::hex(&d.blake3)));
        }
        for c in &m.checksums {
            if d.matches(c) == Some(false) {
                return Some(format!("{} does not match", c.algo.name()));
            }
        }
        None
    }

    fn count_paths(&self) -> Result<u64, StoreError> {
        let tx = db_err!(self.inner.db.begin_read())?;
        let t = db_err!(tx.open_table(PATHS))?;
        Ok(db_err!(t.len())?)
    }
}

/// Total bytes of the blob rows.
fn stored_total(db: &Database) -> Result<u64, StoreError> {
    let tx = db_err!(db.begin_read())?;
    let t = db_err!(tx.open_table(BLOBS))?;
    let mut bytes = 0u64;
    for row in db_err!(t.iter())? {
        let (_, v) = db_err!(row)?;
        if let Some(b) = v.value().get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            bytes = bytes.saturating_add(u64::from_le_bytes(b));
        }
    }
    Ok(bytes)
}

/// Every blob of the index as the planner sees it: size, last access (the later of the index's
/// and `touched`, the accesses not flushed yet), and what protects it. In blob-id order.
///
/// Protected as [`evict::Keep::Snapshot`]: for every snapshot, its repomd.xml and companions,
/// every file its repomd.xml names (fetched up front or on demand), and the files of replaced
/// snapshots still within `policy.retention_secs`; and metadata files (under `repodata/`) used
/// within [`ASSEMBLY_WINDOW_SECS`], which a snapshot being assembled may name before its row is
/// committed. As [`evict::Keep::Pinned`]: every blob a path of a pinned repo names.
fn gather(
    root: &Path,
    db: &Database,
    policy: &Policy,
    touched: &HashMap<BlobId, u64>,
    now: u64,
) -> Result<Vec<evict::Blob>, StoreError> {
    use evict::Keep;
    let tx = db_err!(db.begin_read())?;
    let mut blobs = Vec::new();
    {
        let t = db_err!(tx.open_table(BLOBS))?;
        blobs.reserve(db_err!(t.len())? as usize);
        for row in db_err!(t.iter())? {
            let (k, v) = db_err!(row)?;
            let (Ok(id), Some(size), Some(last)) = (
                BlobId::try_from(k.value()),
                v.value().get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()),
                v.value()
                    .get(16..24)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok()),
            ) else {
                continue;
            };
            blobs.push(evict::Blob {
                id,
                size: u64::from_le_bytes(size),
                last_access: u64::from_le_bytes(last),
                keep: Keep::Evictable,
            });
        }
    }
    // redb lists keys in order; sort anyway if not, the lookups below need it.
    if !blobs.is_sorted_by(|a, b| a.id <= b.id) {
        blobs.sort_unstable_by_key(|a| a.id);
    }
    let find = |blobs: &[evict::Blob], id: &BlobId| blobs.binary_search_by(|b| b.id.cmp(id)).ok();
    for (id, at) in touched {
        if let Some(i) = find(&blobs, id) {
            blobs[i].last_access = blobs[i].last_access.max(*at);
        }
    }
    let mark = |blobs: &mut [evict::Blob], id: &BlobId, keep: Keep| {
        if let Some(i) = find(blobs, id)
            && blobs[i].keep == Keep::Evictable
        {
            blobs[i].keep = keep;
        }
    };

    let aliases = db_err!(tx.open_table(ALIASES))?;
    let expected = db_err!(tx.open_table(EXPECTED))?;
    let by_sum = |c: &Checksum| -> Result<Option<BlobId>, StoreError> {
        Ok(db_err!(aliases.get(alias_key(c).as_slice()))?
            .and_then(|v| BlobId::try_from(v.value()).ok()))
    };
    let snaps = db_err!(tx.open_table(SNAPSHOTS))?;
    for row in db_err!(snaps.iter())? {
        let (k, v) = db_err!(row)?;
        let key = k.value();
        let Ok(snap) = serde_json::from_slice::<Snapshot>(v.value()) else {
            tracing::warn!(
                tree = key,
                "unreadable snapshot row; its files are not protected from eviction"
            );
            continue;
        };
        let repo = key.split_once('/').map_or(key, |(r, _)| r);
        let heads = std::iter::once(&snap.repomd).chain(snap.companions.iter().map(|(_, b)| b));
        for id in heads.filter_map(|h| hash::parse_blob_id(h)) {
            mark(&mut blobs, &id, Keep::Snapshot);
        }
        // Everything repomd.xml names, also what is fetched only on demand.
        if let Some(id) = hash::parse_blob_id(&snap.repomd)
            && let Ok(bytes) = std::fs::read(blob_file(root, &id))
            && let Ok(md) = crate::repodata::parse_repomd(&bytes)
        {
            for r in &md.records {
                if let Some(b) = by_sum(&r.checksum)? {
                    mark(&mut blobs, &b, Keep::Snapshot);
                }
            }
        }
        let kept_previous = snap
            .previous
            .iter()
            .filter(|(at, _)| now.saturating_sub(*at) < policy.retention_secs)
            .flat_map(|(_, files)| files);
        for f in snap.files.iter().chain(kept_previous) {
            let exp = db_err!(expected.get(format!("{repo}/{f}").as_str()))?
                .and_then(|v| Expected::decode(v.value()));
            if let Some(e) = exp
                && let Some(b) = by_sum(&e.checksum)?
            {
                mark(&mut blobs, &b, Keep::Snapshot);
            }
        }
    }

    let pinned: Vec<String> = policy.pinned.iter().map(|r| format!("{r}/")).collect();
    let young = now.saturating_sub(ASSEMBLY_WINDOW_SECS);
    let paths = db_err!(tx.open_table(PATHS))?;
    for row in db_err!(paths.iter())? {
        let (k, v) = db_err!(row)?;
        let key = k.value();
        let is_pinned = pinned.iter().any(|p| key.starts_with(p.as_str()));
        if !is_pinned && !evict::is_metadata_key(key) {
            continue;
        }
        let Some(id) = v.value().get(..32).and_then(|b| BlobId::try_from(b).ok()) else {
            continue;
        };
        if is_pinned {
            mark(&mut blobs, &id, Keep::Pinned);
        } else if let Some(i) = find(&blobs, &id)
            && blobs[i].last_access >= young
            && blobs[i].keep == Keep::Evictable
        {
            blobs[i].keep = Keep::Snapshot;
        }
    }
    Ok(blobs)
}

/// A name for each of `ids`: a path that named it, else its blob id. One pass over the paths.
fn names_of(db: &Database, ids: &[(BlobId, u64)]) -> Result<Vec<(String, u64)>, StoreError> {
    let mut found: HashMap<BlobId, String> = HashMap::new();
    let wanted: HashSet<BlobId> = ids.iter().map(|(id, _)| *id).collect();
    {
        let tx = db_err!(db.begin_read())?;
        let paths = db_err!(tx.open_table(PATHS))?;
        for row in db_err!(paths.iter())? {
            let (k, v) = db_err!(row)?;
            if let Some(id) = v.value().get(..32).and_then(|b| BlobId::try_from(b).ok())
                && wanted.contains(&id)
            {
                found.entry(id).or_insert_with(|| k.value().to_string());
            }
        }
    }
    Ok(ids
        .iter()
        .map(|(id, size)| {
            let name = found
                .remove(id)
                .unwrap_or_else(|| format!("blob {} (no path names it)", hash::hex(id)));
            (name, *size)
        })
        .collect())
}

/// An eviction run before the store is shared (start-up, `gc`): plan, commit the rows away
/// directly, unlink. Nothing else uses the index or the files meanwhile.
fn evict_offline(
    root: &Path,
    db: &Database,
    policy: &Policy,
    dry_run: bool,
    names: bool,
) -> Result<EvictReport, StoreError> {
    let blobs = gather(root, db, policy, &HashMap::new(), now_secs())?;
    let usage = Usage {
        stored: blobs.iter().map(|b| b.size).fold(0, u64::saturating_add),
        free: filesystem_space(root).map(|(free, _)| free),
    };
    let plan = evict::plan(&blobs, &policy.limits, &usage, 0);
    drop(blobs);
    let mut report = EvictReport::new(&plan, &usage, dry_run);
    if names {
        report.names = names_of(db, &plan.evict)?;
    }
    if dry_run || plan.evict.is_empty() {
        return Ok(report);
    }
    // Crash-safe order: the rows go first; files left by a crash after this are orphans,
    // which the next open deletes.
    let ids: Vec<BlobId> = plan.evict.iter().map(|(id, _)| *id).collect();
    apply(db, std::iter::once(&Op::EvictBlobs(ids)))?;
    for (id, _) in &plan.evict {
        remove_blob_file(root, id);
    }
    Ok(report)
}

/// Unlinks an evicted or passed-through blob's file; one already gone is fine.
fn remove_blob_file(root: &Path, id: &BlobId) {
    let path = blob_file(root, id);
    if let Err(e) = std::fs::remove_file(&path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(file = %path.display(), error = %e, "could not delete an evicted file; the next start-up removes it");
    }
}

/// Start-up recovery: clear temporaries, drop rows whose blob file is missing or of the
/// wrong size, and remove blob files no row names (a crash between rename and commit, or an
/// eviction cut between its commit and its unlinks: this finishes it).
fn recover(root: &Path, db: &Database) -> Result<Recovery, StoreError> {
    let mut rec = Recovery::default();
    let tmp = root.join("tmp");
    for e in std::fs::read_dir(&tmp).map_err(|e| StoreError::io(&tmp, e))? {
        let e = e.map_err(|e| StoreError::io(&tmp, e))?;
        if std::fs::remove_file(e.path()).is_ok() {
            rec.temporaries += 1;
        }
    }
    // Partial downloads are kept for resume, but not forever.
    let partial = root.join("partial");
    if let Ok(entries) = std::fs::read_dir(&partial) {
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > PARTIAL_MAX_AGE);
            if old && std::fs::remove_file(e.path()).is_ok() {
                rec.temporaries += 1;
            }
        }
    }
    let mut known = std::collections::HashSet::new();
    let mut bad = Vec::new();
    {
        let tx = db_err!(db.begin_read())?;
        let t = db_err!(tx.open_table(BLOBS))?;
        for row in db_err!(t.iter())? {
            let (k, v) = db_err!(row)?;
            let Ok(id) = <BlobId>::try_from(k.value()) else {
                continue;
            };
            let ok = BlobMeta::decode(id, v.value()).is_some_and(|m| {
                std::fs::metadata(blob_file(root, &id)).is_ok_and(|f| f.len() == m.size)
            });
            if ok {
                known.insert(id);
            } else {
                bad.push(id);
            }
        }
    }
    let blobs = root.join("blobs");
    for dir in std::fs::read_dir(&blobs).map_err(|e| StoreError::io(&blobs, e))? {
        let dir = dir.map_err(|e| StoreError::io(&blobs, e))?.path();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for f in entries.flatten() {
            let name = f.file_name();
            let id = name.to_str().and_then(hash::parse_blob_id);
            if id.is_none_or(|id| !known.contains(&id) && !bad.contains(&id)) {
                let _ = std::fs::remove_file(f.path());
                rec.orphan_blobs += 1;
            }
        }
    }
    if !bad.is_empty() {
        rec.rows_dropped = bad.len() as u64;
        let mut b = Batch::new();
        for id in bad {
            let _ = std::fs::remove_file(blob_file(root, &id));
            b.remove_blob(id);
        }
        // Directly: the writer does not run yet.
        apply(db, b.0.iter())?;
    }
    Ok(rec)
}

/// Why nothing more fits, in words for the log and the status.
fn full_reason(l: &Limits, u: &Usage) -> String {
    use crate::units::Size;
    let mut why = Vec::new();
    if let Some(m) = l.max_size
        && u.stored >= l.cap_low_water().unwrap_or(m)
    {
        why.push(format!(
            "{} stored of max_size {}, all of it protected or in use",
            Size(u.stored),
            Size(m)
        ));
    }
    if let Some(f) = u.free
        && f < l.min_free
    {
        why.push(format!(
            "{} free on the filesystem, under min_free {}",
            Size(f),
            Size(l.min_free)
        ));
    }
    if why.is_empty() {
        why.push(format!("{} stored, nothing left to evict", Size(u.stored)));
    }
    why.join("; ")
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

fn writer_loop(
    db: &Database,
    rx: mpsc::Receiver<WriteReq>,
    stored: &AtomicU64,
    guards: &Mutex<Guards>,
) {
    while let Ok(first) = rx.recv() {
        let mut reqs = vec![first];
        while reqs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => reqs.push(r),
                Err(_) => break,
            }
        }
        let result = apply(db, reqs.iter().flat_map(|r| r.batch.0.iter()));
        match &result {
            Ok(delta) => add_stored(stored, *delta),
            Err(e) => {
                tracing::error!(error = %e, "index write failed; the affected files will be fetched again")
            }
        }
        // Installs committed (or failed): eviction may take their blobs from now on. Done here,
        // not by the waiting task, which may be scheduled much later.
        {
            let mut g = lock(guards);
            for r in &reqs {
                for id in r.batch.installed() {
                    g.release(&id);
                }
            }
        }
        for r in reqs {
            let res = match &result {
                Ok(_) => Ok(()),
                Err(e) => Err(StoreError::WriteFailed(e.to_string())),
            };
            let _ = r.done.send(res);
        }
    }
}

fn add_stored(stored: &AtomicU64, delta: i128) {
    let _ = stored.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some((i128::from(v) + delta).clamp(0, i128::from(u64::MAX)) as u64)
    });
}

/// Applies `ops` in one transaction; returns the change in stored bytes (blob rows added minus
/// blob rows removed).
fn apply<'a>(db: &Database, ops: impl Iterator<Item = &'a Op>) -> Result<i128, StoreError> {
    let mut delta: i128 = 0;
    let tx = db_err!(db.begin_write())?;
    {
        let mut paths = db_err!(tx.open_table(PATHS))?;
        let mut aliases = db_err!(tx.open_table(ALIASES))?;
        let mut blobs = db_err!(tx.open_table(BLOBS))?;
        let mut expected = db_err!(tx.open_table(EXPECTED))?;
        let mut snaps = db_err!(tx.open_table(SNAPSHOTS))?;
        let mut history = db_err!(tx.open_table(HISTORY))?;
        for op in ops {
            match op {
                Op::PutBlob(m) => {
                    // Keep digests an earlier store of the same bytes computed.
                    let mut m = m.clone();
                    if let Some(old) = db_err!(blobs.get(m.id.as_slice()))?
                        .and_then(|v| BlobMeta::decode(m.id, v.value()))
                    {
                        m.stored_at = old.stored_at;
                        // A background install (last access 0) never makes a used blob look
                        // unused.
                        m.last_access = m.last_access.max(old.last_access);
                        delta -= i128::from(old.size);
                        for c in old.checksums {
                            if !m.checksums.iter().any(|x| x.algo == c.algo) {
                                m.checksums.push(c);
                            }
                        }
                    }
                    for c in &m.checksums {
                        db_err!(aliases.insert(alias_key(c).as_slice(), m.id.as_slice()))?;
                    }
                    delta += i128::from(m.size);
                    db_err!(blobs.insert(m.id.as_slice(), m.encode().as_slice()))?;
                }
                Op::SetPath(k, e) => {
                    // A path row names a stored blob: not one evicted since the caller found it.
                    if db_err!(blobs.get(e.blob.as_slice()))?.is_some() {
                        db_err!(paths.insert(k.as_str(), e.encode().as_slice()))?;
                    }
                }
                Op::RemovePath(k) => {
                    db_err!(paths.remove(k.as_str()))?;
                }
                Op::PutExpected(k, e) => {
                    db_err!(expected.insert(k.as_str(), e.encode().as_slice()))?;
                }
                Op::RemoveExpected(k) => {
                    db_err!(expected.remove(k.as_str()))?;
                }
                Op::PutSnapshot(k, s) => {
                    let json = serde_json::to_vec(s)
                        .map_err(|_| StoreError::CorruptRow { key: k.clone() })?;
                    db_err!(snaps.insert(k.as_str(), json.as_slice()))?;
                }
                Op::Touch(id, at) => {
                    let updated = db_err!(blobs.get(id.as_slice()))?
                        .and_then(|v| BlobMeta::decode(*id, v.value()))
                        .map(|mut m| {
                            m.last_access = m.last_access.max(*at);
                            m
                        });
                    if let Some(m) = updated {
                        db_err!(blobs.insert(id.as_slice(), m.encode().as_slice()))?;
                    }
                }
                Op::PutHistory(k, v) => {
                    db_err!(history.insert(k.as_str(), v.as_slice()))?;
                }
                Op::RemoveHistory(k) => {
                    db_err!(history.remove(k.as_str()))?;
                }
                Op::RemoveBlob(id) => {
                    let meta = db_err!(blobs.remove(id.as_slice()))?
                        .and_then(|v| BlobMeta::decode(*id, v.value()));
                    if let Some(m) = meta {
                        delta -= i128::from(m.size);
                        for c in &m.checksums {
                            db_err!(aliases.remove(alias_key(c).as_slice()))?;
                        }
                    }
                    db_err!(
                        paths.retain(|_, v| PathEntry::decode(v).is_none_or(|e| e.blob != *id))
                    )?;
                }
                Op::EvictBlobs(ids) => {
                    let set: HashSet<BlobId> = ids.iter().copied().collect();
                    for id in ids {
                        let meta = db_err!(blobs.remove(id.as_slice()))?
                            .and_then(|v| BlobMeta::decode(*id, v.value()));
                        if let Some(m) = meta {
                            delta -= i128::from(m.size);
                            for c in &m.checksums {
                                db_err!(aliases.remove(alias_key(c).as_slice()))?;
                            }
                        }
                    }
                    // One pass over the paths for the whole run; only the blob id is read.
                    db_err!(paths.retain(|_, v| {
                        v.get(..32)
                            .and_then(|b| BlobId::try_from(b).ok())
                            .is_none_or(|b| !set.contains(&b))
                    }))?;
                }
            }
        }
    }
    db_err!(tx.commit())?;
    Ok(delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digests(bytes: &[u8]) -> Digests {
        let mut h = hash::MultiHasher::new(None);
        h.update(bytes);
        h.finish()
    }

    fn entry(id: BlobId) -> PathEntry {
        PathEntry {
            blob: id,
            checked_at: 7,
            etag: Some("\"e\"".into()),
            last_modified: None,
        }
    }

    #[test]
    fn encodings_round_trip() {
        let d = digests(b"x");
        let m = BlobMeta::from_digests(&d, 5);
        assert_eq!(BlobMeta::decode(m.id, &m.encode()), Some(m));
        let e = entry(d.blake3);
        assert_eq!(PathEntry::decode(&e.encode()), Some(e));
        let x = Expected {
            checksum: d.checksums[0].clone(),
            size: Some(1),
        };
        assert_eq!(Expected::decode(&x.encode()), Some(x));
        assert_eq!(PathEntry::decode(b"short"), None);
    }

    #[test]
    fn same_content_under_two_paths_is_one_blob_and_recovery_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let d1 = store.write_blob_bytes(b"package bytes", None).unwrap();
        let d2 = store.write_blob_bytes(b"package bytes", None).unwrap();
        assert_eq!(d1, d2);
        let mut b = Batch::new();
        b.put_blob(BlobMeta::from_digests(&d1, 1))
            .set_path("r/a/x.rpm".into(), entry(d1.blake3))
            .set_path("r/b/x.rpm".into(), entry(d1.blake3));
        store.commit_blocking(b).unwrap();
        assert_eq!(
            store.blob_by_checksum(&d1.checksums[0]).unwrap(),
            Some(d1.blake3)
        );
        let files: Vec<_> = walk(&dir.path().join("blobs"));
        assert_eq!(files.len(), 1, "one file for two paths");

        // A leftover temporary, an orphan blob and a row whose blob vanished.
        std::fs::write(store.new_tmp_path(), b"half").unwrap();
        let orphan = store.write_blob_bytes(b"orphan", None).unwrap();
        let gone = store.write_blob_bytes(b"gone", None).unwrap();
        let mut b = Batch::new();
        b.put_blob(BlobMeta::from_digests(&gone, 1))
            .set_path("r/gone".into(), entry(gone.blake3));
        store.commit_blocking(b).unwrap();
        std::fs::remove_file(store.blob_path(&gone.blake3)).unwrap();
        drop(store);

        let (store, rec) = Store::open(dir.path()).unwrap();
        assert_eq!(rec.temporaries, 1);
        assert_eq!(rec.orphan_blobs, 1);
        assert_eq!(rec.rows_dropped, 1);
        assert!(!store.blob_path(&orphan.blake3).exists());
        assert_eq!(store.path_entry("r/gone").unwrap(), None);
        assert!(store.path_entry("r/a/x.rpm").unwrap().is_some());
        assert_eq!(store.blob_by_checksum(&gone.checksums[0]).unwrap(), None);
    }

    #[test]
    fn verify_finds_and_removes_a_corrupted_blob() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let good = store.write_blob_bytes(b"good", None).unwrap();
        let bad = store.write_blob_bytes(b"soon bad", None).unwrap();
        let mut b = Batch::new();
        for (d, p) in [(&good, "r/good"), (&bad, "r/bad")] {
            b.put_blob(BlobMeta::from_digests(d, 1))
                .set_path(p.into(), entry(d.blake3));
        }
        store.commit_blocking(b).unwrap();
        assert!(store.verify(|_, _| {}).unwrap().bad.is_empty());
        // Same size, different bytes: only a re-hash can tell.
        std::fs::write(store.blob_path(&bad.blake3), b"soon BAD").unwrap();
        let r = store.verify(|_, _| {}).unwrap();
        assert_eq!(r.checked, 2);
        assert_eq!(r.bad.len(), 1, "{r:?}");
        assert_eq!(r.paths_dropped, 1);
        assert_eq!(store.path_entry("r/bad").unwrap(), None);
        assert!(store.path_entry("r/good").unwrap().is_some());
        assert!(store.verify(|_, _| {}).unwrap().bad.is_empty());
    }

    // ---- eviction ----

    const NOW_MINUS: u64 = 1_000_000;

    /// Stores `bytes` as a blob last used at `at`, optionally listed under `path`.
    fn put(store: &Store, bytes: &[u8], at: u64, path: Option<&str>) -> Digests {
        let d = store.write_blob_bytes(bytes, None).unwrap();
        let mut m = BlobMeta::from_digests(&d, at);
        m.last_access = at;
        let mut b = Batch::new();
        b.put_blob(m);
        if let Some(p) = path {
            b.set_path(p.into(), entry(d.blake3));
        }
        store.commit_blocking(b).unwrap();
        d
    }

    fn repomd_naming(records: &[(&str, &Digests, &str)]) -> Vec<u8> {
        let mut x = String::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<repomd xmlns=\"http://linux.duke.edu/metadata/repo\">\n<revision>100</revision>\n",
        );
        for (kind, d, href) in records {
            x.push_str(&format!(
                "<data type=\"{kind}\"><checksum type=\"sha256\">{}</checksum><location href=\"{href}\"/><size>{}</size></data>\n",
                d.checksums[0].to_hex(),
                d.len
            ));
        }
        x.push_str("</repomd>\n");
        x.into_bytes()
    }

    fn policy(max: Option<u64>, pinned: &[&str]) -> Policy {
        Policy {
            limits: Limits {
                max_size: max,
                min_free: 0,
            },
            pinned: pinned.iter().map(|p| p.to_string()).collect(),
            retention_secs: 3600,
        }
    }

    fn kb(n: u8) -> Vec<u8> {
        vec![n; 1000]
    }

    /// A store holding: four packages of repo `r` (1000 bytes each, used at t=10..40), one of
    /// pinned repo `p` (used at t=1), and a snapshot of `r` whose repomd.xml, `.asc`, primary
    /// (listed in `files`), `other` (named by repomd.xml only), a replaced snapshot's file within
    /// retention, and one past it.
    struct Fixture {
        dir: tempfile::TempDir,
        pkgs: Vec<Digests>,
        pinned: Digests,
        protected: Vec<Digests>,
        ancient: Digests,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let pkgs: Vec<Digests> = (1..=4)
            .map(|i| {
                put(
                    &store,
                    &kb(i),
                    u64::from(i) * 10,
                    Some(&format!("r/Packages/p{i}.rpm")),
                )
            })
            .collect();
        let pinned = put(&store, &kb(9), 1, Some("p/Packages/x.rpm"));
        let primary = put(
            &store,
            b"primary bytes",
            5,
            Some("r/repodata/aa-primary.xml.gz"),
        );
        let other = put(
            &store,
            b"other bytes",
            6,
            Some("r/repodata/bb-other.xml.gz"),
        );
        let asc = put(&store, b"signature", 7, None);
        let recent_old = put(
            &store,
            b"previous primary",
            8,
            Some("r/repodata/cc-primary.xml.gz"),
        );
        let ancient = put(
            &store,
            b"ancient primary",
            9,
            Some("r/repodata/dd-primary.xml.gz"),
        );
        let repomd = put(
            &store,
            &repomd_naming(&[
                ("primary", &primary, "repodata/aa-primary.xml.gz"),
                ("other", &other, "repodata/bb-other.xml.gz"),
            ]),
            4,
            None,
        );
        let now = now_secs();
        let mut b = Batch::new();
        for (f, d) in [
            ("repodata/aa-primary.xml.gz", &primary),
            ("repodata/cc-primary.xml.gz", &recent_old),
            ("repodata/dd-primary.xml.gz", &ancient),
        ] {
            b.put_expected(
                format!("r/{f}"),
                Expected {
                    checksum: d.checksums[0].clone(),
                    size: Some(d.len),
                },
            );
        }
        b.put_snapshot(
            "r/".into(),
            Snapshot {
                revision: "100".into(),
                repomd: hash::hex(&repomd.blake3),
                companions: vec![(".asc".into(), hash::hex(&asc.blake3))],
                fetched_at: now,
                checked_at: now,
                etag: None,
                last_modified: None,
                files: vec!["repodata/aa-primary.xml.gz".into()],
                previous: vec![
                    (now - NOW_MINUS, vec!["repodata/dd-primary.xml.gz".into()]),
                    (now - 10, vec!["repodata/cc-primary.xml.gz".into()]),
                ],
                origin: Origin::Upstream,
            },
        );
        store.commit_blocking(b).unwrap();
        drop(store);
        Fixture {
            dir,
            pkgs,
            pinned,
            protected: vec![primary, other, asc, recent_old, repomd],
            ancient,
        }
    }

    fn total(f: &Fixture) -> u64 {
        f.pkgs.iter().map(|d| d.len).sum::<u64>()
            + f.pinned.len
            + f.protected.iter().map(|d| d.len).sum::<u64>()
            + f.ancient.len
    }

    #[test]
    fn start_up_eviction_goes_lru_first_and_never_touches_snapshot_or_pinned_files() {
        let f = fixture();
        let s = total(&f);
        // Need ~1600 bytes: the ancient metadata (t=9), then p1 (t=10) and p2 (t=20).
        let cap = (s - 1600) * 10 / 9;
        let start = StartUp {
            policy: Some(policy(Some(cap), &["p"])),
            names: true,
            ..StartUp::default()
        };
        let (store, rec) = Store::open_with(f.dir.path(), &start).unwrap();
        let r = rec.eviction.unwrap();
        assert_eq!(r.evicted.files, 3, "{r:?}");
        assert_eq!(r.kept.snapshot.files, 5, "{r:?}");
        assert_eq!(r.kept.pinned.files, 1, "{r:?}");
        assert_eq!(r.kept.recent.files, 2, "{r:?}");
        assert_eq!(r.short, 0);
        assert_eq!(r.names[0].0, "r/repodata/dd-primary.xml.gz");
        assert_eq!(r.names[1].0, "r/Packages/p1.rpm");
        for gone in [&f.ancient, &f.pkgs[0], &f.pkgs[1]] {
            assert!(!store.blob_path(&gone.blake3).exists());
            assert_eq!(store.blob_meta(&gone.blake3).unwrap(), None);
            assert_eq!(store.blob_by_checksum(&gone.checksums[0]).unwrap(), None);
        }
        assert_eq!(store.path_entry("r/Packages/p1.rpm").unwrap(), None);
        assert!(store.path_entry("r/Packages/p3.rpm").unwrap().is_some());
        assert_eq!(store.usage().stored, s - 2 * 1000 - f.ancient.len);
        assert!(store.usage().stored <= cap);
        drop(store);

        // A cap nothing but protected files would fit: every evictable file goes, the plan
        // says how much is missing, and a snapshot in service stays whole.
        let start = StartUp {
            policy: Some(policy(Some(100), &["p"])),
            dry_run: false,
            ..StartUp::default()
        };
        let (store, rec) = Store::open_with(f.dir.path(), &start).unwrap();
        let r = rec.eviction.unwrap();
        assert_eq!(r.evicted.files, 2);
        assert!(r.short > 0);
        for kept in f.protected.iter().chain([&f.pinned]) {
            assert!(store.blob_path(&kept.blake3).exists());
            assert!(store.blob_meta(&kept.blake3).unwrap().is_some());
        }
        assert!(store.path_entry("p/Packages/x.rpm").unwrap().is_some());
        assert!(store.disk_status().last_eviction.is_some());
    }

    #[test]
    fn a_dry_run_deletes_nothing_and_gc_compacts() {
        let f = fixture();
        let start = StartUp {
            policy: Some(policy(Some(100), &[])),
            dry_run: true,
            names: true,
            compact: true,
        };
        let (store, rec) = Store::open_with(f.dir.path(), &start).unwrap();
        let r = rec.eviction.unwrap();
        assert!(
            r.dry_run && r.evicted.files == 6 && r.names.len() == 6,
            "{r:?}"
        );
        assert_eq!(rec.index_bytes, None);
        for d in f.pkgs.iter().chain([&f.pinned, &f.ancient]) {
            assert!(store.blob_path(&d.blake3).exists());
        }
        drop(store);
        let start = StartUp {
            dry_run: false,
            ..start
        };
        let (_store, rec) = Store::open_with(f.dir.path(), &start).unwrap();
        assert_eq!(
            rec.eviction.unwrap().evicted.files,
            6,
            "pinned is not pinned now"
        );
        let (before, after) = rec.index_bytes.unwrap();
        assert!(after <= before, "{before} -> {after}");
    }

    #[test]
    fn recovery_finishes_an_eviction_cut_between_commit_and_unlink() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let a = put(&store, &kb(1), 1, Some("r/a.rpm"));
        let b = put(&store, &kb(2), 2, Some("r/b.rpm"));
        // The rows go, then the process dies before unlinking.
        store
            .commit_blocking(Batch(vec![Op::EvictBlobs(vec![a.blake3])]))
            .unwrap();
        assert_eq!(store.usage().stored, 1000);
        assert!(store.blob_path(&a.blake3).exists());
        drop(store);
        let (store, rec) = Store::open(dir.path()).unwrap();
        assert_eq!(rec.orphan_blobs, 1);
        assert!(!store.blob_path(&a.blake3).exists());
        assert!(store.blob_path(&b.blake3).exists());
        assert_eq!(store.path_entry("r/a.rpm").unwrap(), None);
        assert!(store.verify(|_, _| {}).unwrap().bad.is_empty());
        // A path row is never made for a blob that is gone.
        store
            .commit_blocking({
                let mut x = Batch::new();
                x.set_path("r/again.rpm".into(), entry(a.blake3));
                x
            })
            .unwrap();
        assert_eq!(store.path_entry("r/again.rpm").unwrap(), None);
    }

    /// Installs `bytes` the way `fetch` does: a temporary file, `install_blob`, then
    /// `commit_or_pass` with the blob and path rows (last used at `at`).
    async fn install(store: &Store, bytes: &[u8], key: &str, at: u64) -> (bool, Digests) {
        install_as(store, bytes, key, at, true).await
    }

    /// [`install`], saying whether the install may evict (background work may not).
    async fn install_as(
        store: &Store,
        bytes: &[u8],
        key: &str,
        at: u64,
        may_evict: bool,
    ) -> (bool, Digests) {
        use std::io::Write;
        let mut h = hash::MultiHasher::new(None);
        h.update(bytes);
        let d = h.finish();
        let tmp = store.new_tmp_path();
        let mut f = File::create(&tmp).unwrap();
        f.write_all(bytes).unwrap();
        store.install_blob(&f, &tmp, &d).unwrap();
        let mut m = BlobMeta::from_digests(&d, at);
        m.last_access = at;
        let mut b = Batch::new();
        b.put_blob(m).set_path(key.into(), entry(d.blake3));
        let kept = store
            .commit_or_pass(b, key, &d.blake3, d.len, may_evict)
            .await
            .unwrap();
        (kept, d)
    }

    /// Background work fills room only: up to the cap's low-water mark, and an install that
    /// does not fit is passed through without evicting anything.
    #[test]
    fn background_work_fills_room_and_never_evicts() {
        let dir = tempfile::tempdir().unwrap();
        let start = StartUp {
            policy: Some(policy(Some(3000), &[])),
            ..StartUp::default()
        };
        let (store, _) = Store::open_with(dir.path(), &start).unwrap();
        runtime().block_on(async {
            let (k1, a) = install(&store, &kb(1), "r/a.rpm", 100).await;
            let (k2, b) = install(&store, &kb(2), "r/b.rpm", 50).await;
            assert!(k1 && k2);
            // low water of 3000 is 2700: 700 more fit, 701 do not
            assert!(store.room_for(700));
            assert!(!store.room_for(701));
            // 3500 would cross the cap: a client's install would evict a; a background one is
            // not kept, and nothing goes
            let (kept, c) = install_as(&store, &vec![3u8; 1500], "r/c.rpm", 0, false).await;
            assert!(!kept);
            assert_eq!(store.blob_meta(&c.blake3).unwrap(), None);
            for held in [&a, &b] {
                assert!(store.blob_meta(&held.blake3).unwrap().is_some());
            }
            assert_eq!(store.totals().unwrap(), (2, 2000));
            assert_eq!(store.disk_status().eviction_runs, 0);
        });
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn installs_evict_to_make_room_and_pass_through_when_all_is_protected() {
        let dir = tempfile::tempdir().unwrap();
        let start = StartUp {
            policy: Some(policy(Some(3000), &["p"])),
            ..StartUp::default()
        };
        let (store, _) = Store::open_with(dir.path(), &start).unwrap();
        runtime().block_on(async {
            let (k1, a) = install(&store, &kb(1), "r/a.rpm", 100).await;
            let (k2, b) = install(&store, &kb(2), "r/b.rpm", 50).await;
            let (k3, c) = install(&store, &kb(3), "r/c.rpm", 200).await;
            assert!(k1 && k2 && k3);
            assert_eq!(store.usage().stored, 3000);
            // 4000 > 3000: down to 2700 with the newcomer, so b (t=50) and a (t=100) go.
            assert_eq!(store.totals().unwrap(), (3, 3000));
            let (k4, d) = install(&store, &kb(4), "r/d.rpm", 300).await;
            assert!(k4);
            assert_eq!(store.usage().stored, 2000);
            // the cheap totals follow installs and evictions
            assert_eq!(store.totals().unwrap(), (2, 2000));
            for gone in [&a, &b] {
                assert!(!store.blob_path(&gone.blake3).exists());
                assert_eq!(store.blob_meta(&gone.blake3).unwrap(), None);
            }
            assert!(store.blob_path(&c.blake3).exists() && store.blob_path(&d.blake3).exists());
            let st = store.disk_status();
            assert_eq!(
                (st.evicted_files, st.evicted_bytes, st.eviction_runs),
                (2, 2000, 1)
            );

            // A pinned repo fills the rest; then nothing evictable is left but c and d.
            let (kp, _) = install(&store, &kb(5), "p/x.rpm", 1).await;
            assert!(kp);
            let (kq, _) = install(&store, &kb(6), "p/y.rpm", 1).await;
            assert!(kq, "c and d made room");
            let (kr, _) = install(&store, &kb(7), "p/z.rpm", 2).await;
            assert!(kr);
            assert_eq!(store.usage().stored, 3000);
            // Everything stored is pinned now: the next download is passed through.
            let (ke, e) = install(&store, &kb(8), "r/e.rpm", 400).await;
            assert!(!ke);
            assert_eq!(store.blob_meta(&e.blake3).unwrap(), None);
            assert_eq!(store.path_entry("r/e.rpm").unwrap(), None);
            assert!(
                store.blob_path(&e.blake3).exists(),
                "readers may still open it"
            );
            let st = store.disk_status();
            assert!(st.passthrough, "{st:?}");
            assert!(
                st.passthrough_reason
                    .as_deref()
                    .unwrap()
                    .contains("max_size"),
                "{st:?}"
            );
            assert_eq!(st.passed_through_files, 1);
            assert_eq!(store.usage().stored, 3000);
            // Metadata is kept even so (a snapshot needs it whole).
            let (km, _) = install(&store, b"metadata", "r/repodata/x-primary.xml.gz", 500).await;
            assert!(km);
            // The grace period over, the passed-through file goes.
            assert_eq!(store.sweep_older_than(Duration::ZERO), 1);
            assert!(!store.blob_path(&e.blake3).exists());
            // A file larger than the whole cap is passed through without emptying the store.
            let (kb_, _) = install(&store, &[9u8; 4000], "r/huge.rpm", 600).await;
            assert!(!kb_);
        });
        drop(store);
        let (store, rec) = Store::open(dir.path()).unwrap();
        assert_eq!(rec.orphan_blobs, 1, "the huge one, never swept");
        assert!(store.verify(|_, _| {}).unwrap().bad.is_empty());
    }

    #[test]
    fn concurrent_installs_never_cross_the_cap_together() {
        let dir = tempfile::tempdir().unwrap();
        let start = StartUp {
            policy: Some(policy(Some(10_000), &[])),
            ..StartUp::default()
        };
        let (store, _) = Store::open_with(dir.path(), &start).unwrap();
        let rt = runtime();
        let max_seen = Arc::new(AtomicU64::new(0));
        rt.block_on(async {
            let watcher = {
                let (store, max_seen) = (store.clone(), max_seen.clone());
                tokio::spawn(async move {
                    for _ in 0..2000 {
                        max_seen.fetch_max(store.usage().stored, Ordering::Relaxed);
                        tokio::task::yield_now().await;
                    }
                })
            };
            let tasks: Vec<_> = (0..40u8)
                .map(|i| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        install(&store, &kb(i), &format!("r/{i}.rpm"), u64::from(i)).await
                    })
                })
                .collect();
            let mut kept_n = 0u64;
            for t in tasks {
                let (kept, _) = t.await.unwrap();
                kept_n += u64::from(kept);
            }
            watcher.await.unwrap();
            // Nothing is protected, so room is made for almost every file; one may still pass
            // through when, at that moment, every other stored file is itself mid-install.
            assert!(kept_n >= 20, "{kept_n} kept: {:?}", store.disk_status());
            assert!(
                store.disk_status().evicted_files + 10 >= kept_n,
                "{:?}",
                store.disk_status()
            );
        });
        // The cap holds at every moment, whatever happened.
        assert!(store.usage().stored <= 10_000, "{}", store.usage().stored);
        assert!(max_seen.load(Ordering::Relaxed) <= 10_000);
        assert_eq!(store.usage().stored, stored_total(&store.inner.db).unwrap());
    }

    #[test]
    fn a_blob_being_installed_again_is_not_evicted_under_it() {
        let dir = tempfile::tempdir().unwrap();
        let start = StartUp {
            policy: Some(policy(Some(100_000), &[])),
            ..StartUp::default()
        };
        let (store, _) = Store::open_with(dir.path(), &start).unwrap();
        let a = put(&store, &kb(1), 1, Some("r/a.rpm"));
        // Another transfer of the same content has put its file in place, rows not yet
        // committed.
        let tmp = store.new_tmp_path();
        std::fs::write(&tmp, kb(1)).unwrap();
        store
            .install_blob(&File::open(&tmp).unwrap(), &tmp, &a)
            .unwrap();
        let tight = policy(Some(10), &[]);
        let r = store.evict_blocking(&tight, 0).unwrap();
        assert_eq!(r.evicted.files, 0, "{r:?}");
        assert!(store.blob_path(&a.blake3).exists());
        let mut b = Batch::new();
        b.put_blob(BlobMeta::from_digests(&a, 1))
            .set_path("r/a2.rpm".into(), entry(a.blake3));
        store.commit_blocking(b).unwrap();
        // Committed: now it may go, rows and file together.
        let r = store.evict_blocking(&tight, 0).unwrap();
        assert_eq!(r.evicted.files, 1, "{r:?}");
        assert!(!store.blob_path(&a.blake3).exists());
        assert_eq!(store.path_entry("r/a.rpm").unwrap(), None);
        assert_eq!(store.path_entry("r/a2.rpm").unwrap(), None);
        assert_eq!(store.usage().stored, 0);
    }

    #[test]
    fn an_open_evicted_file_stays_readable() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let a = put(&store, &bytes, 1, Some("r/a.rpm"));
        let mut f = File::open(store.blob_path(&a.blake3)).unwrap();
        let mut head = vec![0u8; 1000];
        f.read_exact(&mut head).unwrap();
        let r = store.evict_blocking(&policy(Some(10), &[]), 0).unwrap();
        assert_eq!(r.evicted.files, 1);
        assert!(!store.blob_path(&a.blake3).exists());
        let mut rest = Vec::new();
        f.read_to_end(&mut rest).unwrap();
        head.extend(rest);
        assert_eq!(head, bytes);
    }

    fn walk(p: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(p).unwrap().flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }
}
