//! Sneakernet: a site's cache carried on a disk. `export` writes a *bundle* — each repository
//! tree laid out exactly as upstream lays it out (so dnf can use the disk as a `file://` repo
//! with no lanmirror at all), plus a signed manifest; `import` verifies a bundle file by file
//! and stores the good files; `have` writes the compact list of what a node holds, so the next
//! trip carries only what is missing; a [`Seeds`] directory serves a mounted bundle as a
//! read-only source without importing it.
//!
//! Bundle layout: `<dir>/<repo>/<path>` for every file, `<dir>/lanmirror-bundle.json` (the
//! manifest: every file with size, BLAKE3 and SHA-256; the metadata snapshots; the exporting
//! node and time) and `<dir>/lanmirror-bundle.sig` (Ed25519 signature by the exporting node's
//! key, and a MAC under the site key where one is set). The manifest is written last: a
//! directory without one is an unfinished export, and running the export again continues it.
//! Like `cp`, export leaves the data files to the page cache (only the manifest is fsynced):
//! if a disk is pulled before it is unmounted, import names the files that did not make it and
//! a second export rewrites them (files already there are checked by BLAKE3, never trusted).
//! Names are checked for FAT32/exFAT (no links, no `<>:"\|?*`, no reserved names), and files
//! over 4 GiB are refused on a FAT32 disk and reported elsewhere.
//!
//! Trust: the manifest says which bytes were exported; repository metadata says which bytes
//! are right. Import checks both for every file, so an altered package is named and never
//! stored even in a correctly signed bundle, and an altered manifest is refused outright.
//!
//! Not here: serving (the bundle's files reach clients through `fetch` and `snapshot` like any
//! other source), and GPG signatures (dnf's job).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::checksum::{Checksum, ChecksumAlgo};
use crate::config::Config;
use crate::hash::{self, BlobId, MultiHasher};
use crate::paths::{PathKind, RepoPath};
use crate::peer::identity::{Identity, NodeId, SiteAuth};
use crate::repodata;
use crate::store::{Batch, BlobMeta, Expected, PathEntry, Store, now_secs};

pub mod manifest;
pub use manifest::{
    BundleError, BundleFile, BundleSnapshot, MANIFEST, Manifest, Origin, SIGNATURE, read_manifest,
};
use manifest::{FORMAT, MAX_MANIFEST, Signature, io_err};
/// The largest file FAT32 can hold.
const FAT32_MAX: u64 = (4 << 30) - 1;
/// Have-list magic and limits.
const HAVE_MAGIC: &[u8] = b"LMHAVE1\n";
const MAX_HAVE_HEADER: usize = 1 << 20;
const MAX_HAVE_ENTRIES: usize = 50_000_000;

/// Why a bundle path cannot live on a FAT32/exFAT disk, if it cannot.
pub fn fat_problem(path: &str) -> Option<String> {
    for seg in path.split('/') {
        if seg.is_empty() || seg.len() > 255 {
            return Some(format!("segment {seg:?} is empty or longer than 255 bytes"));
        }
        if let Some(c) = seg
            .chars()
            .find(|c| (*c as u32) < 0x20 || "<>:\"\\|?*".contains(*c))
        {
            return Some(format!("{c:?} is not allowed in FAT/exFAT names"));
        }
        if seg.ends_with(' ') || seg.ends_with('.') {
            return Some(format!("{seg:?} ends with a space or a dot"));
        }
        let stem = seg.split('.').next().unwrap_or("").to_ascii_uppercase();
        let reserved = ["CON", "PRN", "AUX", "NUL"].contains(&stem.as_str())
            || ((stem.starts_with("COM") || stem.starts_with("LPT"))
                && stem.len() == 4
                && stem.as_bytes()[3].is_ascii_digit());
        if reserved {
            return Some(format!("{seg:?} is a reserved name on FAT/exFAT"));
        }
    }
    None
}

/// Whether `dir` is on a FAT (vfat) filesystem, which cannot hold files of 4 GiB or more.
fn on_fat32(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: c is a valid NUL-terminated path; st is a plain out-parameter.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == 0x4d44
    }
}

// ---------------------------------------------------------------- have-lists

/// What a node holds: SHA-256 prefixes (8 bytes each; a false match is one in 2^64 per file)
/// and the snapshots it follows. Small: 8 bytes per file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HaveList {
    pub header: HaveHeader,
    /// Sorted, deduplicated.
    prefixes: Vec<[u8; 8]>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaveHeader {
    pub node_id: String,
    pub created: u64,
    /// `(repo, tree, revision)` of each snapshot the node serves.
    pub snapshots: Vec<(String, String, String)>,
}

impl HaveList {
    pub fn new(header: HaveHeader, sha256: impl IntoIterator<Item = [u8; 32]>) -> HaveList {
        let mut prefixes: Vec<[u8; 8]> = sha256
            .into_iter()
            .map(|d| {
                let mut p = [0u8; 8];
                p.copy_from_slice(&d[..8]);
                p
            })
            .collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        HaveList { header, prefixes }
    }

    pub fn len(&self) -> usize {
        self.prefixes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }

    pub fn contains(&self, sha256: &[u8]) -> bool {
        sha256.len() >= 8
            && self
                .prefixes
                .binary_search_by(|p| p[..].cmp(&sha256[..8]))
                .is_ok()
    }

    pub fn encode(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&self.header).unwrap_or_default();
        let mut out = Vec::with_capacity(HAVE_MAGIC.len() + 8 + header.len() + 8 * self.len());
        out.extend_from_slice(HAVE_MAGIC);
        out.extend_from_slice(&(header.len() as u32).to_be_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&(self.prefixes.len() as u32).to_be_bytes());
        for p in &self.prefixes {
            out.extend_from_slice(p);
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<HaveList, String> {
        let rest = b
            .strip_prefix(HAVE_MAGIC)
            .ok_or("not a lanmirror have-list (made by `lanmirror have`)")?;
        let (n, rest) = take_u32(rest)?;
        if n > MAX_HAVE_HEADER || rest.len() < n {
            return Err("truncated or oversized header".into());
        }
        let header: HaveHeader =
            serde_json::from_slice(&rest[..n]).map_err(|e| format!("bad header: {e}"))?;
        let (count, rest) = take_u32(&rest[n..])?;
        if count > MAX_HAVE_ENTRIES || rest.len() != count * 8 {
            return Err(format!(
                "says {count} entries but holds {} bytes of them",
                rest.len()
            ));
        }
        let mut prefixes: Vec<[u8; 8]> = rest
            .chunks_exact(8)
            .map(|c| {
                let mut p = [0u8; 8];
                p.copy_from_slice(c);
                p
            })
            .collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        Ok(HaveList { header, prefixes })
    }

    pub fn read(path: &Path) -> Result<HaveList, BundleError> {
        let b = std::fs::read(path).map_err(io_err(path))?;
        HaveList::decode(&b).map_err(|why| BundleError::BadHave {
            path: path.to_path_buf(),
            why,
        })
    }
}

fn take_u32(b: &[u8]) -> Result<(usize, &[u8]), String> {
    let head: [u8; 4] = b
        .get(..4)
        .and_then(|h| h.try_into().ok())
        .ok_or("truncated")?;
    Ok((u32::from_be_bytes(head) as usize, &b[4..]))
}

/// The have-list of a store.
pub fn have_list(store: &Store, node_id: &NodeId) -> Result<HaveList, BundleError> {
    let snapshots = store
        .snapshots()?
        .into_iter()
        .filter_map(|(k, s)| {
            let (repo, tree) = k.split_once('/')?;
            Some((repo.to_string(), tree.to_string(), s.revision))
        })
        .collect();
    Ok(HaveList::new(
        HaveHeader {
            node_id: node_id.to_string(),
            created: now_secs(),
            snapshots,
        },
        store.all_sha256()?,
    ))
}

// ---------------------------------------------------------------- progress

/// How far a bundle command is, shared with whoever watches it (a running node's status, the
/// command line polling it).
#[derive(Debug, Default)]
pub struct Counters {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub done_files: AtomicU64,
    pub done_bytes: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    pub files: u64,
    pub bytes: u64,
    pub done_files: u64,
    pub done_bytes: u64,
}

impl Counters {
    pub fn read(&self) -> Done {
        Done {
            files: self.files.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            done_files: self.done_files.load(Ordering::Relaxed),
            done_bytes: self.done_bytes.load(Ordering::Relaxed),
        }
    }
}

/// Where a bundle command reports its progress: `counters` always, and a line on stderr when
/// `print` (the command line; not a node). Setting `stop` ends the command after the file it
/// is on (a node shutting down); running it again continues.
#[derive(Debug, Clone)]
pub struct Watch {
    pub counters: Arc<Counters>,
    pub print: bool,
    pub stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Default for Watch {
    fn default() -> Self {
        Watch {
            counters: Arc::default(),
            print: true,
            stop: Arc::default(),
        }
    }
}

impl Watch {
    fn stopped(&self) -> Result<(), BundleError> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(BundleError::Other(
                "stopped because the node is shutting down; run the command again to continue"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Files, bytes, rate and time left: one updating line on a terminal, a plain line every few
/// seconds otherwise (see [`print_progress`]); and the shared [`Counters`].
pub struct Progress {
    what: &'static str,
    watch: Watch,
    start: Instant,
    last: Instant,
    tty: bool,
}

impl Progress {
    pub fn new(what: &'static str, files: u64, bytes: u64, watch: &Watch) -> Progress {
        let now = Instant::now();
        let c = &watch.counters;
        c.files.store(files, Ordering::Relaxed);
        c.bytes.store(bytes, Ordering::Relaxed);
        c.done_files.store(0, Ordering::Relaxed);
        c.done_bytes.store(0, Ordering::Relaxed);
        Progress {
            what,
            watch: watch.clone(),
            start: now,
            last: now,
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }

    pub fn file_done(&mut self, bytes: u64) {
        let c = &self.watch.counters;
        c.done_files.fetch_add(1, Ordering::Relaxed);
        c.done_bytes.fetch_add(bytes, Ordering::Relaxed);
        if !self.watch.print {
            return;
        }
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.last.elapsed() >= every {
            self.last = Instant::now();
            self.print(false);
        }
    }

    pub fn finish(&mut self) {
        if self.watch.print {
            self.print(true);
        }
    }

    fn print(&self, last: bool) {
        let d = self.watch.counters.read();
        print_progress(self.what, &d, self.start.elapsed(), last, self.tty);
    }
}

/// One progress line on stderr: on a terminal it replaces the previous one.
pub fn print_progress(what: &str, d: &Done, took: Duration, last: bool, tty: bool) {
    let secs = took.as_secs_f64().max(1e-3);
    let rate = d.done_bytes as f64 / secs;
    let left = if rate > 0.0 {
        (d.bytes.saturating_sub(d.done_bytes) as f64 / rate) as u64
    } else {
        0
    };
    let line = format!(
        "{what}: {}/{} files, {:.1}/{:.1} MiB, {:.1} MiB/s, {} left",
        d.done_files,
        d.files,
        d.done_bytes as f64 / 1048576.0,
        d.bytes as f64 / 1048576.0,
        rate / 1048576.0,
        if last {
            format!("0 s (took {secs:.1} s)")
        } else {
            format!("{left} s")
        }
    );
    let mut e = std::io::stderr();
    if tty {
        let _ = write!(e, "\r\x1b[2K{line}{}", if last { "\n" } else { "" });
    } else {
        let _ = writeln!(e, "{line}");
    }
}

impl Progress {}

// ---------------------------------------------------------------- export

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ExportReport {
    pub files: u64,
    pub bytes: u64,
    /// Files already in place from an earlier, interrupted run (checked by BLAKE3).
    pub reused: u64,
    /// Files left out because the have-list says the other site holds them.
    pub left_out: u64,
    /// Files that could not be exported, and why.
    pub refused: Vec<(String, String)>,
    pub warnings: Vec<String>,
}

/// What an export needs from the node's parts.
pub struct Exporter<'a> {
    pub store: &'a Store,
    pub cfg: &'a Config,
    pub me: &'a Identity,
    pub site: &'a SiteAuth,
    pub watch: Watch,
}

impl Exporter<'_> {
    /// Writes a bundle of `repos` (all configured repos when empty) to `to`, leaving out what
    /// `have` lists. Blocking.
    pub fn export(
        &self,
        to: &Path,
        have: Option<&HaveList>,
        repos: &[String],
    ) -> Result<ExportReport, BundleError> {
        export(self, to, have, repos)
    }
}

fn export(
    x: &Exporter<'_>,
    to: &Path,
    have: Option<&HaveList>,
    repos: &[String],
) -> Result<ExportReport, BundleError> {
    let Exporter {
        store,
        cfg,
        me,
        site,
        watch,
    } = x;
    for r in repos {
        if cfg.repo(r).is_none() {
            return Err(BundleError::Other(format!("repo {r:?} is not configured")));
        }
    }
    let wanted: Vec<&str> = if repos.is_empty() {
        cfg.repos.iter().map(|r| r.name.as_str()).collect()
    } else {
        repos.iter().map(String::as_str).collect()
    };
    std::fs::create_dir_all(to).map_err(io_err(to))?;
    let fat32 = on_fat32(to);
    let mut report = ExportReport::default();

    // What to write: path → blob. Snapshot files first, then every stored path.
    let mut entries: BTreeMap<String, BlobId> = BTreeMap::new();
    let mut snapshots = Vec::new();
    let mut always: HashSet<String> = HashSet::new();
    for (key, s) in store.snapshots()? {
        let Some((repo, tree)) = key.split_once('/') else {
            continue;
        };
        if !wanted.contains(&repo) {
            continue;
        }
        let mut files = Vec::new();
        for (suffix, b) in std::iter::once(("", &s.repomd))
            .chain(s.companions.iter().map(|(x, b)| (x.as_str(), b)))
        {
            let Some(id) = hash::parse_blob_id(b) else {
                continue;
            };
            let path = format!("{repo}/{tree}repodata/repomd.xml{suffix}");
            entries.insert(path.clone(), id);
            always.insert(path.clone());
            files.push((suffix.to_string(), path));
        }
        snapshots.push(BundleSnapshot {
            repo: repo.to_string(),
            tree: tree.to_string(),
            revision: s.revision,
            fetched_at: s.fetched_at,
            checked_at: s.checked_at,
            files,
        });
    }
    for repo in &wanted {
        for (key, e) in store.paths_under(&format!("{repo}/"))? {
            entries.entry(key).or_insert(e.blob);
        }
    }

    let mut plan = Vec::new();
    for (path, blob) in entries {
        let Some(meta) = store.blob_meta(&blob)? else {
            continue;
        };
        let Some(sha) = meta.sha256().cloned() else {
            continue;
        };
        if !always.contains(&path) && have.is_some_and(|h| h.contains(&sha.digest)) {
            report.left_out += 1;
            continue;
        }
        if let Some(why) = fat_problem(&path) {
            report.refused.push((path, why));
            continue;
        }
        if meta.size > FAT32_MAX {
            if fat32 {
                report.refused.push((
                    path,
                    format!(
                        "{} bytes: a FAT32 disk cannot hold a file of 4 GiB or more (use exFAT)",
                        meta.size
                    ),
                ));
                continue;
            }
            report.warnings.push(format!(
                "{path} is {} bytes: this bundle cannot be copied to a FAT32 disk (exFAT is fine)",
                meta.size
            ));
        }
        plan.push((path, blob, meta.size, sha));
    }

    let total: u64 = plan.iter().map(|p| p.2).sum();
    let mut progress = Progress::new("export", plan.len() as u64, total, watch);
    let mut files = Vec::with_capacity(plan.len());
    for (path, blob, size, sha) in plan {
        watch.stopped()?;
        let dest = to.join(&path);
        let src = store.blob_path(&blob);
        if already_there(&dest, size, &blob) {
            report.reused += 1;
        } else {
            copy_into_place(&src, &dest)?;
        }
        report.files += 1;
        report.bytes += size;
        progress.file_done(size);
        files.push(BundleFile {
            path,
            size,
            blake3: hash::hex(&blob),
            sha256: sha.to_hex(),
        });
    }
    progress.finish();

    let public = me
        .public_key()
        .map_err(|e| BundleError::Other(e.to_string()))?;
    let manifest = Manifest {
        format: FORMAT,
        node_id: me.id.to_string(),
        public_key: hash::hex(&public),
        site_id: site.site_id.clone(),
        created: now_secs(),
        snapshots,
        files,
    };
    let bytes =
        serde_json::to_vec_pretty(&manifest).map_err(|e| BundleError::Other(e.to_string()))?;
    let sig = me
        .sign(&bytes)
        .map_err(|e| BundleError::Other(e.to_string()))?;
    let sig = Signature {
        ed25519: hash::hex(&sig),
        site_mac: site.mac(&bytes),
    };
    let sig_bytes =
        serde_json::to_vec_pretty(&sig).map_err(|e| BundleError::Other(e.to_string()))?;
    // Signature first, manifest last: a manifest present means a finished bundle.
    write_atomic(&to.join(SIGNATURE), &sig_bytes)?;
    write_atomic(&to.join(MANIFEST), &bytes)?;
    Ok(report)
}

/// Is `dest` already the blob (from an interrupted run)? Checked by size, then BLAKE3.
fn already_there(dest: &Path, size: u64, blob: &BlobId) -> bool {
    if !std::fs::metadata(dest).is_ok_and(|m| m.len() == size) {
        return false;
    }
    std::fs::File::open(dest)
        .and_then(|f| {
            let mut h = blake3::Hasher::new();
            h.update_reader(f)?;
            Ok(h.finalize())
        })
        .is_ok_and(|h| h.as_bytes() == blob)
}

/// Copies `src` to `dest` through `dest.part` (the kernel copies: copy_file_range).
fn copy_into_place(src: &Path, dest: &Path) -> Result<(), BundleError> {
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let mut part = dest.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    std::fs::copy(src, &part).map_err(io_err(&part))?;
    std::fs::rename(&part, dest).map_err(io_err(dest))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

// ---------------------------------------------------------------- import

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ImportReport {
    /// Files verified and stored by this run.
    pub stored: u64,
    pub bytes: u64,
    /// Files the store already held (an earlier run, or from upstream).
    pub already: u64,
    /// Files that failed verification, and why (never stored).
    pub bad: Vec<(String, String)>,
    /// Files the manifest lists that are not on the disk.
    pub missing: Vec<String>,
    /// Files of repos this node does not serve.
    pub not_configured: u64,
    /// `(repo/tree, revision)` of snapshots switched in.
    pub switched: Vec<(String, String)>,
    /// Snapshots not switched in, and why (older than the node's, or incomplete).
    pub kept: Vec<(String, String)>,
}

impl ImportReport {
    pub fn all_good(&self) -> bool {
        self.bad.is_empty() && self.missing.is_empty()
    }
}

/// What an import needs from the node's parts.
pub struct Importer<'a> {
    pub store: &'a Store,
    pub snapshots: &'a crate::snapshot::Snapshots,
    pub cfg: &'a Config,
    pub site: &'a SiteAuth,
    pub watch: Watch,
}

impl Importer<'_> {
    /// Verifies and stores a bundle's files, then switches in its snapshots where newer.
    pub async fn import(&self, dir: &Path) -> Result<(ImportReport, Origin), BundleError> {
        let (m, origin) = read_manifest(dir, self.site)?;
        let mut report = ImportReport::default();
        let by_path: HashMap<&str, &BundleFile> =
            m.files.iter().map(|f| (f.path.as_str(), f)).collect();

        // What repository metadata says each file must be, from the bundle's own metadata
        // (checked against the manifest first) and this node's.
        let mut expected: HashMap<String, Expected> = HashMap::new();
        for s in &m.snapshots {
            if self.cfg.repo(&s.repo).is_none() {
                continue;
            }
            let Some((_, rpath)) = s.files.iter().find(|(x, _)| x.is_empty()) else {
                continue;
            };
            let Some(bytes) = by_path
                .get(rpath.as_str())
                .and_then(|f| read_verified(dir, f).ok())
            else {
                continue;
            };
            let Ok(md) = repodata::parse_repomd(&bytes) else {
                report
                    .bad
                    .push((rpath.clone(), "repomd.xml does not parse".into()));
                continue;
            };
            for r in &md.records {
                let Ok(p) = RepoPath::in_tree(&s.tree, &r.href) else {
                    continue;
                };
                let key = format!("{}/{p}", s.repo);
                expected.insert(
                    key.clone(),
                    Expected {
                        checksum: r.checksum.clone(),
                        size: r.size,
                    },
                );
                if r.kind == "primary"
                    && let Some(f) = by_path.get(key.as_str())
                    && verify_file(dir, f, expected.get(&key)).is_ok()
                {
                    let file = dir.join(&f.path);
                    match crate::snapshot::primary_rows(&file, &r.href, &s.repo, &s.tree) {
                        Ok(rows) => expected.extend(rows),
                        Err(e) => report.bad.push((key, e.to_string())),
                    }
                }
            }
        }

        // Files are independent: verify and store them on a few threads at once, two per core,
        // so one file's hashing (SHA-256 runs at about 1 GB/s a core) overlaps another's fsync.
        let total: u64 = m.files.iter().map(|f| f.size).sum();
        let progress = Mutex::new(Progress::new(
            "import",
            m.files.len() as u64,
            total,
            &self.watch,
        ));
        let outcomes = Mutex::new(Vec::with_capacity(m.files.len()));
        let failed = Mutex::new(None);
        let stopped = Mutex::new(None);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get() * 2)
            .clamp(2, 8);
        std::thread::scope(|sc| {
            for _ in 0..workers {
                sc.spawn(|| {
                    loop {
                        if let Err(e) = self.watch.stopped() {
                            if let Ok(mut f) = stopped.lock() {
                                f.get_or_insert(e);
                            }
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(f) = m.files.get(i) else { break };
                        let mut batch = Batch::new();
                        let outcome = self.import_file(dir, f, &expected, &mut batch);
                        // Each file's rows are committed before the next file starts, so a run
                        // that is killed keeps every file it finished (the one index writer
                        // folds the workers' commits together).
                        if !batch.is_empty()
                            && let Err(e) = self.store.commit_blocking(batch)
                        {
                            if let Ok(mut f) = failed.lock() {
                                f.get_or_insert(e);
                            }
                            break;
                        }
                        if let Ok(mut p) = progress.lock() {
                            p.file_done(f.size);
                        }
                        if let Ok(mut o) = outcomes.lock() {
                            o.push((i, outcome));
                        }
                    }
                });
            }
        });
        if let Some(e) = failed.into_inner().ok().flatten() {
            return Err(e.into());
        }
        if let Some(e) = stopped.into_inner().ok().flatten() {
            return Err(e);
        }
        if let Ok(mut p) = progress.into_inner() {
            p.finish();
        }
        let mut outcomes = outcomes.into_inner().unwrap_or_default();
        outcomes.sort_by_key(|(i, _)| *i);
        for (i, outcome) in outcomes {
            let f = &m.files[i];
            match outcome {
                Outcome::Stored => {
                    report.stored += 1;
                    report.bytes += f.size;
                }
                Outcome::Already => report.already += 1,
                Outcome::NotConfigured => report.not_configured += 1,
                Outcome::Missing => report.missing.push(f.path.clone()),
                Outcome::Bad(why) => report.bad.push((f.path.clone(), why)),
            }
        }

        for s in &m.snapshots {
            let key = format!("{}/{}", s.repo, s.tree);
            if self.cfg.repo(&s.repo).is_none() {
                continue;
            }
            match self.adopt(s, &by_path).await {
                Ok(true) => report.switched.push((key, s.revision.clone())),
                Ok(false) => report
                    .kept
                    .push((key, "this node's snapshot is as new or newer".into())),
                Err(why) => report.kept.push((key, why)),
            }
        }
        report.bad.sort();
        report.bad.dedup();
        Ok((report, origin))
    }

    fn import_file(
        &self,
        dir: &Path,
        f: &BundleFile,
        expected: &HashMap<String, Expected>,
        batch: &mut Batch,
    ) -> Outcome {
        let Some((repo, rest)) = f.path.split_once('/') else {
            return Outcome::Bad("path has no repo".into());
        };
        if self.cfg.repo(repo).is_none() {
            return Outcome::NotConfigured;
        }
        let Ok(rpath) = RepoPath::parse_relative(rest) else {
            return Outcome::Bad("path leaves its repo".into());
        };
        let key = format!("{repo}/{rpath}");
        if key != f.path {
            return Outcome::Bad("path is not in normal form".into());
        }
        let publish = !matches!(
            rpath.kind(),
            PathKind::RepoMd { .. } | PathKind::RepoMdCompanion { .. }
        );
        let exp = expected
            .get(&key)
            .cloned()
            .or_else(|| self.store.expected(&key).ok().flatten());
        let Ok(sha) = Checksum::from_hex(ChecksumAlgo::Sha256, &f.sha256) else {
            return Outcome::Bad("manifest SHA-256 is malformed".into());
        };
        // Held already (an earlier run, or upstream): just list it under this path.
        if let Ok(Some(blob)) = self.store.blob_by_checksum(&sha)
            && self.store.blob_path(&blob).exists()
        {
            if publish
                && exp
                    .as_ref()
                    .is_none_or(|e| matches_sum(self.store, &blob, e))
            {
                batch.set_path(key, entry(blob));
            }
            return Outcome::Already;
        }
        let src = dir.join(&f.path);
        if !src.exists() {
            return Outcome::Missing;
        }
        match self.copy_verified(&src, f, exp.as_ref()) {
            Ok(d) => {
                batch.put_blob(BlobMeta::from_digests(&d, now_secs()));
                if publish {
                    batch.set_path(key, entry(d.blake3));
                }
                Outcome::Stored
            }
            Err(why) => Outcome::Bad(why),
        }
    }

    /// Copies a bundle file into the store while hashing it; installs it only if it matches the
    /// manifest and the metadata.
    fn copy_verified(
        &self,
        src: &Path,
        f: &BundleFile,
        exp: Option<&Expected>,
    ) -> Result<crate::hash::Digests, String> {
        let mut input = std::fs::File::open(src).map_err(|e| e.to_string())?;
        let tmp = self.store.new_tmp_path();
        let mut out = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
        let mut h = MultiHasher::new(exp.map(|e| e.checksum.algo));
        let mut buf = vec![0u8; 1 << 20];
        let result = (|| {
            let (mut written, mut flushed) = (0u64, 0u64);
            loop {
                let n = input.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(|e| e.to_string())?;
                written += n as u64;
                if written - flushed >= 8 << 20 {
                    crate::store::start_writeback(&out, flushed, written - flushed);
                    flushed = written;
                }
            }
            let d = h.finish();
            check_manifest(f, &d)?;
            let path = RepoPath::parse_relative(&f.path).map_err(|e| e.to_string())?;
            crate::store::check_expected(&path, exp, &d)
                .map_err(|w| format!("does not match the repository metadata: {w}"))?;
            self.store
                .install_blob(&out, &tmp, &d)
                .map_err(|e| e.to_string())?;
            Ok(d)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    async fn adopt(
        &self,
        s: &BundleSnapshot,
        by_path: &HashMap<&str, &BundleFile>,
    ) -> Result<bool, String> {
        let mut repomd = None;
        let mut companions = Vec::new();
        for (suffix, path) in &s.files {
            let f = by_path
                .get(path.as_str())
                .ok_or_else(|| format!("{path} is not in the manifest"))?;
            let blob = hash::parse_blob_id(&f.blake3).ok_or("bad manifest entry")?;
            if !self.store.blob_path(&blob).exists() {
                return Err(format!("{path} was not imported"));
            }
            if suffix.is_empty() {
                repomd = Some(blob);
            } else {
                companions.push((suffix.clone(), f.blake3.clone()));
            }
        }
        let new = crate::snapshot::NewSnapshot {
            repomd: repomd.ok_or("the snapshot has no repomd.xml")?,
            companions,
            etag: None,
            last_modified: None,
            checked_at: s.checked_at.min(now_secs()),
            origin: crate::store::Origin::Bundle,
        };
        self.snapshots
            .adopt(&s.repo, &s.tree, new)
            .await
            .map_err(|e| format!("not switched in: {e}"))
    }
}

enum Outcome {
    Stored,
    Already,
    NotConfigured,
    Missing,
    Bad(String),
}

fn entry(blob: BlobId) -> PathEntry {
    PathEntry {
        blob,
        checked_at: now_secs(),
        etag: None,
        last_modified: None,
    }
}

fn matches_sum(store: &Store, blob: &BlobId, e: &Expected) -> bool {
    store.blob_meta(blob).ok().flatten().is_some_and(|m| {
        m.checksums
            .iter()
            .all(|c| c.algo != e.checksum.algo || *c == e.checksum)
    })
}

fn check_manifest(f: &BundleFile, d: &crate::hash::Digests) -> Result<(), String> {
    if d.len != f.size {
        return Err(format!("is {} bytes, the manifest says {}", d.len, f.size));
    }
    if hash::hex(&d.blake3) != f.blake3
        || d.get(ChecksumAlgo::Sha256).map(|c| c.to_hex()).as_deref() != Some(f.sha256.as_str())
    {
        return Err("does not match the checksums in the manifest (damaged or altered)".into());
    }
    Ok(())
}

/// A small bundle file's bytes, checked against the manifest.
fn read_verified(dir: &Path, f: &BundleFile) -> Result<Vec<u8>, String> {
    if f.size > MAX_MANIFEST {
        return Err("too large".into());
    }
    let bytes = std::fs::read(dir.join(&f.path)).map_err(|e| e.to_string())?;
    let mut h = MultiHasher::new(None);
    h.update(&bytes);
    check_manifest(f, &h.finish())?;
    Ok(bytes)
}

/// Checks a bundle file against the manifest (and metadata) without storing it.
fn verify_file(dir: &Path, f: &BundleFile, exp: Option<&Expected>) -> Result<(), String> {
    let file = std::fs::File::open(dir.join(&f.path)).map_err(|e| e.to_string())?;
    let d = hash::hash_reader(file, exp.map(|e| e.checksum.algo))
        .map_err(|e| e.to_string())?
        .finish();
    check_manifest(f, &d)?;
    let path = RepoPath::parse_relative(&f.path).map_err(|e| e.to_string())?;
    crate::store::check_expected(&path, exp, &d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn have_lists_roundtrip_and_refuse_garbage() {
        let mut shas = vec![[7u8; 32], [1u8; 32], [7u8; 32]];
        shas[1][8] = 9;
        let h = HaveList::new(
            HaveHeader {
                node_id: "n".into(),
                created: 5,
                snapshots: vec![("r".into(), "t/".into(), "42".into())],
            },
            shas,
        );
        assert_eq!(h.len(), 2);
        assert!(h.contains(&[7u8; 32]) && h.contains(&[1u8; 32]));
        assert!(!h.contains(&[2u8; 32]));
        let b = h.encode();
        assert_eq!(
            b.len(),
            HAVE_MAGIC.len() + 4 + 4 + 16 + serde_json::to_vec(&h.header).unwrap().len()
        );
        assert_eq!(HaveList::decode(&b).unwrap(), h);
        assert!(HaveList::decode(b"nope").is_err());
        assert!(HaveList::decode(&b[..b.len() - 1]).is_err());
        let mut huge = HAVE_MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(HaveList::decode(&huge).is_err());
        // 100 000 packages: 800 kB, an e-mail attachment.
        let many = HaveList::new(
            HaveHeader::default(),
            (0..100_000u32).map(|i| {
                let mut d = [0u8; 32];
                d[..4].copy_from_slice(&i.to_be_bytes());
                d
            }),
        );
        assert!(many.encode().len() < 810_000);
    }

    #[test]
    fn fat_names() {
        assert_eq!(
            fat_problem("almalinux/9/BaseOS/x86_64/os/Packages/a-1.0-1.el9.x86_64.rpm"),
            None
        );
        assert_eq!(
            fat_problem("epel/9/Everything/x86_64/Packages/c/c++-utils-1^git.rpm"),
            None
        );
        assert!(fat_problem("r/a:b.rpm").is_some());
        assert!(fat_problem("r/CON.txt").is_some());
        assert!(fat_problem("r/com1").is_some());
        assert!(fat_problem("r/dir./x").is_some());
        assert!(fat_problem("r/x?.rpm").is_some());
        assert_eq!(fat_problem("r/COMPUTE.rpm"), None);
    }

    #[test]
    fn bundle_paths_stay_inside() {
        use super::manifest::bundle_path_ok;
        assert!(bundle_path_ok("almalinux/9/BaseOS/Packages/a.rpm"));
        for bad in [
            "",
            "a",
            "/etc/passwd",
            "../x/y",
            "r/../../etc",
            "r//x",
            "r/./x",
            "r/x/",
            "a b/x",
        ] {
            assert!(!bundle_path_ok(bad), "{bad}");
        }
    }

    #[test]
    fn unhex_is_strict() {
        use super::manifest::unhex;
        assert_eq!(unhex("00ff"), Some(vec![0, 255]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("+a"), None, "no sign accepted inside a byte");
    }
}
