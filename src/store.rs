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
//!
//! What this module does not do: decide what to fetch, talk to the network, or check content
//! against repository metadata (the `fetch` module does; the store only records what it is given).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::checksum::{Checksum, ChecksumAlgo};
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

/// Partial downloads untouched this long are deleted at start-up.
const PARTIAL_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Most operations the index writer folds into one transaction.
const MAX_BATCH: usize = 512;

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
    Touch(BlobId, u64),
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
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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
    pub orphan_blobs: u64,
    pub rows_dropped: u64,
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

impl Store {
    /// Opens (creating if needed) the store under `root`, then runs start-up recovery.
    pub fn open(root: &Path) -> Result<(Self, Recovery), StoreError> {
        for d in ["blobs", "tmp", "partial"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(|e| StoreError::io(&p, e))?;
        }
        let db_path = root.join("index.redb");
        let db = db_err!(Database::create(&db_path))?;
        {
            let tx = db_err!(db.begin_write())?;
            db_err!(tx.open_table(PATHS))?;
            db_err!(tx.open_table(ALIASES))?;
            db_err!(tx.open_table(BLOBS))?;
            db_err!(tx.open_table(EXPECTED))?;
            db_err!(tx.open_table(SNAPSHOTS))?;
            db_err!(tx.commit())?;
        }
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<WriteReq>();
        let wdb = db.clone();
        let thread = std::thread::Builder::new()
            .name("lanmirror-index".into())
            .spawn(move || writer_loop(&wdb, rx))
            .map_err(|e| StoreError::io(&db_path, e))?;
        let store = Store {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                db,
                writer: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
                touched: Mutex::new(HashMap::new()),
            }),
        };
        let rec = store.recover()?;
        Ok((store, rec))
    }

    pub fn blob_path(&self, id: &BlobId) -> PathBuf {
        let h = hash::hex(id);
        self.inner.root.join("blobs").join(&h[..2]).join(h)
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

    pub fn path_entry(&self, key: &str) -> Result<Option<PathEntry>, StoreError> {
        let tx = db_err!(self.inner.db.begin_read())?;
        let t = db_err!(tx.open_table(PATHS))?;
        match db_err!(t.get(key))? {
            None => Ok(None),
            Some(v) => PathEntry::decode(v.value())
                .map(Some)
                .ok_or_else(|| StoreError::CorruptRow { key: key.into() }),
        }
    }

    pub fn blob_meta(&self, id: &BlobId) -> Result<Option<BlobMeta>, StoreError> {
        let tx = db_err!(self.inner.db.begin_read())?;
        let t = db_err!(tx.open_table(BLOBS))?;
        match db_err!(t.get(id.as_slice()))? {
            None => Ok(None),
            Some(v) => BlobMeta::decode(*id, v.value())
                .map(Some)
                .ok_or_else(|| StoreError::CorruptRow { key: hash::hex(id) }),
        }
    }

    /// The blob whose digest of `c.algo` is `c`, if one is stored.
    pub fn blob_by_checksum(&self, c: &Checksum) -> Result<Option<BlobId>, StoreError> {
        let tx = db_err!(self.inner.db.begin_read())?;
        let t = db_err!(tx.open_table(ALIASES))?;
        Ok(db_err!(t.get(alias_key(c).as_slice()))?.and_then(|v| v.value().try_into().ok()))
    }

    pub fn expected(&self, key: &str) -> Result<Option<Expected>, StoreError> {
        let tx = db_err!(self.inner.db.begin_read())?;
        let t = db_err!(tx.open_table(EXPECTED))?;
        match db_err!(t.get(key))? {
            None => Ok(None),
            Some(v) => Expected::decode(v.value())
                .map(Some)
                .ok_or_else(|| StoreError::CorruptRow { key: key.into() }),
        }
    }

    pub fn snapshot(&self, key: &str) -> Result<Option<Snapshot>, StoreError> {
        let tx = db_err!(self.inner.db.begin_read())?;
        let t = db_err!(tx.open_table(SNAPSHOTS))?;
        match db_err!(t.get(key))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(v.value())
                .map(Some)
                .map_err(|_| StoreError::CorruptRow { key: key.into() }),
        }
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

    /// Number of blobs and their total size.
    pub fn totals(&self) -> Result<(u64, u64), StoreError> {
        let tx = db_err!(self.inner.db.begin_read())?;
        let t = db_err!(tx.open_table(BLOBS))?;
        let (mut n, mut bytes) = (0, 0);
        for row in db_err!(t.iter())? {
            let (k, v) = db_err!(row)?;
            let id: BlobId = k.value().try_into().unwrap_or([0; 32]);
            if let Some(m) = BlobMeta::decode(id, v.value()) {
                n += 1;
                bytes += m.size;
            }
        }
        Ok((n, bytes))
    }

    // ---- writes ----

    /// Commits `batch` atomically through the index writer.
    pub async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (done, rx) = oneshot::channel();
        self.send(WriteReq { batch, done })?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Like [`Store::commit`], for callers outside the async runtime.
    pub fn commit_blocking(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (done, rx) = oneshot::channel();
        self.send(WriteReq { batch, done })?;
        rx.blocking_recv().map_err(|_| StoreError::WriterGone)?
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
        if let Ok(m) = std::fs::metadata(&dest)
            && m.len() == d.len
        {
            // Same content already stored (another path, or a race): keep the existing file.
            let _ = std::fs::remove_file(tmp_path);
            return Ok(());
        }
        std::fs::rename(tmp_path, &dest).map_err(|e| StoreError::io(&dest, e))?;
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

    /// Start-up recovery: clear temporaries, drop rows whose blob file is missing or of the
    /// wrong size, and remove blob files no row names (a crash between rename and commit).
    fn recover(&self) -> Result<Recovery, StoreError> {
        let mut rec = Recovery::default();
        let tmp = self.tmp_dir();
        for e in std::fs::read_dir(&tmp).map_err(|e| StoreError::io(&tmp, e))? {
            let e = e.map_err(|e| StoreError::io(&tmp, e))?;
            if std::fs::remove_file(e.path()).is_ok() {
                rec.temporaries += 1;
            }
        }
        // Partial downloads are kept for resume, but not forever.
        let partial = self.partial_dir();
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
            let tx = db_err!(self.inner.db.begin_read())?;
            let t = db_err!(tx.open_table(BLOBS))?;
            for row in db_err!(t.iter())? {
                let (k, v) = db_err!(row)?;
                let Ok(id) = <BlobId>::try_from(k.value()) else {
                    continue;
                };
                let ok = BlobMeta::decode(id, v.value()).is_some_and(|m| {
                    std::fs::metadata(self.blob_path(&id)).is_ok_and(|f| f.len() == m.size)
                });
                if ok {
                    known.insert(id);
                } else {
                    bad.push(id);
                }
            }
        }
        let blobs = self.inner.root.join("blobs");
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
                let _ = std::fs::remove_file(self.blob_path(&id));
                b.remove_blob(id);
            }
            // Directly, not through the writer: this may run inside an async runtime, where
            // waiting on the writer would block a worker; nothing else writes yet.
            apply(&self.inner.db, b.0.iter())?;
        }
        Ok(rec)
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

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

fn writer_loop(db: &Database, rx: mpsc::Receiver<WriteReq>) {
    while let Ok(first) = rx.recv() {
        let mut reqs = vec![first];
        while reqs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => reqs.push(r),
                Err(_) => break,
            }
        }
        let result = apply(db, reqs.iter().flat_map(|r| r.batch.0.iter()));
        if let Err(e) = &result {
            tracing::error!(error = %e, "index write failed; the affected files will be fetched again");
        }
        for r in reqs {
            let res = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::WriteFailed(e.to_string())),
            };
            let _ = r.done.send(res);
        }
    }
}

fn apply<'a>(db: &Database, ops: impl Iterator<Item = &'a Op>) -> Result<(), StoreError> {
    let tx = db_err!(db.begin_write())?;
    {
        let mut paths = db_err!(tx.open_table(PATHS))?;
        let mut aliases = db_err!(tx.open_table(ALIASES))?;
        let mut blobs = db_err!(tx.open_table(BLOBS))?;
        let mut expected = db_err!(tx.open_table(EXPECTED))?;
        let mut snaps = db_err!(tx.open_table(SNAPSHOTS))?;
        for op in ops {
            match op {
                Op::PutBlob(m) => {
                    // Keep digests an earlier store of the same bytes computed.
                    let mut m = m.clone();
                    if let Some(old) = db_err!(blobs.get(m.id.as_slice()))?
                        .and_then(|v| BlobMeta::decode(m.id, v.value()))
                    {
                        m.stored_at = old.stored_at;
                        for c in old.checksums {
                            if !m.checksums.iter().any(|x| x.algo == c.algo) {
                                m.checksums.push(c);
                            }
                        }
                    }
                    for c in &m.checksums {
                        db_err!(aliases.insert(alias_key(c).as_slice(), m.id.as_slice()))?;
                    }
                    db_err!(blobs.insert(m.id.as_slice(), m.encode().as_slice()))?;
                }
                Op::SetPath(k, e) => {
                    db_err!(paths.insert(k.as_str(), e.encode().as_slice()))?;
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
                Op::RemoveBlob(id) => {
                    let meta = db_err!(blobs.remove(id.as_slice()))?
                        .and_then(|v| BlobMeta::decode(*id, v.value()));
                    if let Some(m) = meta {
                        for c in &m.checksums {
                            db_err!(aliases.remove(alias_key(c).as_slice()))?;
                        }
                    }
                    db_err!(
                        paths.retain(|_, v| PathEntry::decode(v).is_none_or(|e| e.blob != *id))
                    )?;
                }
            }
        }
    }
    db_err!(tx.commit())?;
    Ok(())
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
