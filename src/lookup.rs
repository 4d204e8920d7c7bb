//! "Is it stored?", answered in one place for everything that serves files: the HTTP handler
//! (both its zero-copy path and hyper's), the peer server and the snapshot refresh.
//!
//! [`find`] looks a request path up in a read-only view of the index (`Store::view`: one
//! read transaction, never waiting for the writer) and `stat`s the blob file, and says one of:
//!
//! - [`Found::Hit`]: a path row whose blob is stored (row and file of the recorded size) and
//!   agrees with what metadata says the file is ([`agrees`]), for an immutable path or a mutable
//!   one checked upstream within the freshness interval; repomd.xml and its companions from
//!   a fresh snapshot; simple-named metadata (`repodata/primary.xml.gz`) by the checksum the
//!   snapshot names, when the path row lists that blob.
//! - [`Found::Alias`]: no usable path row, but the checksum metadata names is a blob we hold:
//!   the same bytes under another path or repo (content-addressed dedupe). Its answer is the
//!   same as a hit's; the path is not listed yet (`fetch::Fetcher::list` lists it).
//! - [`Found::Revalidate`]: a mutable path (or a snapshot file) whose stored copy is older than
//!   the freshness interval: ask upstream before serving it, or serve it as stale.
//! - [`Found::Miss`]: nothing stored can answer (a path row whose blob was evicted or whose file
//!   is gone counts as nothing).
//!
//! What metadata says the file is comes from the index's `expected` row, or from the caller
//! ([`Expect`]: a peer's word when we have none, a snapshot being assembled). A checksum this
//! build cannot compute (md5, see `hash::can_verify`) never finds an alias and leaves the size
//! as the only check of a path row.
//!
//! Also here: [`blob`] and [`checksum`], the same question by content (the peer protocol's
//! `Have` and `Get`).
//!
//! What this module does not do: write anything (an alias is listed under its path by `fetch`,
//! a revalidation is confirmed by the transfer that asked upstream, last access by
//! `Store::touch`), ask upstream or peers, refresh a snapshot (`snapshot`), or open files
//! for serving.

use std::time::Duration;

use crate::hash::{self, BlobId};
use crate::paths::{PathKind, RepoPath};
use crate::snapshot::needs_check;
use crate::store::{BlobMeta, Expected, PathEntry, Snapshot, StoreError, View};

/// Stored bytes that can answer a request: the blob, its size and what its answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub blob: BlobId,
    pub size: u64,
    /// Unix seconds for `Last-Modified`: the path row's check time (when the path was stored,
    /// or last confirmed upstream), the switch time of the snapshot for repomd.xml and its
    /// companions, or when the blob was stored for bytes found by checksum.
    pub modified: u64,
    /// SHA-256 of the bytes, when the index has it (what ETags are made of).
    pub sha256: Option<[u8; 32]>,
}

impl Held {
    /// The blob a row describes, answered with `modified`.
    pub fn of(meta: &BlobMeta, modified: u64) -> Self {
        Self {
            blob: meta.id,
            size: meta.size,
            modified,
            sha256: meta
                .sha256()
                .and_then(|c| <[u8; 32]>::try_from(c.digest.as_slice()).ok()),
        }
    }
}

/// What the store can do for a request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Stored under this path and servable as it is.
    Hit(Held),
    /// Not listed under this path, but the checksum metadata names is stored.
    Alias(Held),
    /// Stored, but older than the freshness interval. `entry` is the row to confirm or replace
    /// (for repomd.xml and companions: the snapshot's check time and validators).
    Revalidate {
        held: Held,
        entry: PathEntry,
    },
    Miss,
}

/// A lookup's answer, and the metadata it went by (what a transfer must then verify).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub found: Found,
    pub expected: Option<Expected>,
}

/// Where what a file must be comes from.
#[derive(Debug, Clone, Copy)]
pub enum Expect<'a> {
    /// The index's `expected` row (written by the snapshot in service), if any.
    Index,
    /// The index's row, else this: what a peer says (our own metadata wins).
    IndexOr(Option<&'a Expected>),
    /// This, whatever the index says: a snapshot being assembled names the file.
    Given(&'a Expected),
}

/// Looks `repo`/`path` up: one read of `view`, and a `stat` of the blob file. `now` and
/// `freshness` decide whether a mutable path or a snapshot is fresh (`snapshot::needs_check`).
pub fn find(
    view: &View<'_>,
    repo: &str,
    path: &RepoPath,
    expect: Expect<'_>,
    now: u64,
    freshness: Duration,
) -> Result<Lookup, StoreError> {
    let kind = path.kind();
    if let PathKind::RepoMd { tree } | PathKind::RepoMdCompanion { tree, .. } = &kind {
        let suffix = match &kind {
            PathKind::RepoMdCompanion { suffix, .. } => Some(*suffix),
            _ => None,
        };
        return Ok(Lookup {
            found: snapshot_file(view, &format!("{repo}/{tree}"), suffix, now, freshness)?,
            expected: None,
        });
    }
    let key = format!("{repo}/{path}");
    let expected = match expect {
        Expect::Index => view.expected(&key)?,
        Expect::IndexOr(theirs) => view.expected(&key)?.or_else(|| theirs.cloned()),
        Expect::Given(e) => Some(e.clone()),
    };
    // Simple-named metadata changes in place upstream: it must be the bytes the snapshot
    // names, by checksum, whatever its row says and however old that is.
    let by_checksum_only =
        expected.is_some() && kind == PathKind::Mutable && path.parent_dir().ends_with("repodata/");
    let row = view.path_entry(&key)?;
    if !by_checksum_only
        && let Some(e) = &row
        && let Some(meta) = view.blob_meta(&e.blob)?
        && agrees(&meta, expected.as_ref())
        && on_disk(view, &meta)
    {
        let held = Held::of(&meta, e.checked_at);
        let fresh = kind == PathKind::Immutable || !needs_check(e.checked_at, now, freshness);
        let found = if fresh {
            Found::Hit(held)
        } else {
            Found::Revalidate {
                held,
                entry: e.clone(),
            }
        };
        return Ok(Lookup { found, expected });
    }
    let by_sum = match &expected {
        Some(exp) => by_checksum(view, exp)?,
        None => None,
    };
    let found = match by_sum {
        Some(held) if row.is_some_and(|e| e.blob == held.blob) => Found::Hit(held),
        Some(held) => Found::Alias(held),
        None => Found::Miss,
    };
    Ok(Lookup { found, expected })
}

/// A blob, when its row and its file (of the row's size) are there.
pub fn blob(view: &View<'_>, id: &BlobId) -> Result<Option<Held>, StoreError> {
    Ok(view
        .blob_meta(id)?
        .filter(|m| on_disk(view, m))
        .map(|m| Held::of(&m, m.stored_at)))
}

/// The stored blob with this checksum, when it is there and the checksum is one this build
/// computes (never md5: no stored blob has one).
pub fn checksum(
    view: &View<'_>,
    c: &crate::checksum::Checksum,
) -> Result<Option<Held>, StoreError> {
    if !hash::can_verify(c.algo) {
        return Ok(None);
    }
    match view.blob_by_checksum(c)? {
        Some(id) => blob(view, &id),
        None => Ok(None),
    }
}

/// The stored blob metadata names, if it is the whole of what metadata says (size included).
fn by_checksum(view: &View<'_>, exp: &Expected) -> Result<Option<Held>, StoreError> {
    Ok(checksum(view, &exp.checksum)?.filter(|h| exp.size.is_none_or(|s| s == h.size)))
}

/// repomd.xml (`suffix` none) or a companion of the snapshot row `key`.
fn snapshot_file(
    view: &View<'_>,
    key: &str,
    suffix: Option<&str>,
    now: u64,
    freshness: Duration,
) -> Result<Found, StoreError> {
    let Some(s) = view.snapshot(key)? else {
        return Ok(Found::Miss);
    };
    let Some(held) = in_snapshot(view, &s, suffix)? else {
        return Ok(Found::Miss);
    };
    if !needs_check(s.checked_at, now, freshness) {
        return Ok(Found::Hit(held));
    }
    // The snapshot's validators are repomd.xml's; companions are fetched along with it.
    let (etag, last_modified) = match suffix {
        None => (s.etag, s.last_modified),
        Some(_) => (None, None),
    };
    let entry = PathEntry {
        blob: held.blob,
        checked_at: s.checked_at,
        etag,
        last_modified,
    };
    Ok(Found::Revalidate { held, entry })
}

/// repomd.xml (`suffix` none) or the companion `suffix` of snapshot `s`, when stored; its
/// answer says the snapshot's switch time.
pub fn in_snapshot(
    view: &View<'_>,
    s: &Snapshot,
    suffix: Option<&str>,
) -> Result<Option<Held>, StoreError> {
    let id = match suffix {
        None => hash::parse_blob_id(&s.repomd),
        Some(x) => s
            .companions
            .iter()
            .find(|(c, _)| c == x)
            .and_then(|(_, b)| hash::parse_blob_id(b)),
    };
    let Some(id) = id else {
        return Ok(None);
    };
    Ok(blob(view, &id)?.map(|h| Held {
        modified: s.fetched_at,
        ..h
    }))
}

/// Whether the blob's file is in place with the size its row records (a file that is missing,
/// evicted or cut short cannot answer; fetching the file again puts it right).
fn on_disk(view: &View<'_>, meta: &BlobMeta) -> bool {
    std::fs::metadata(view.blob_path(&meta.id)).is_ok_and(|m| m.len() == meta.size)
}

/// Whether stored bytes are the file metadata names: the same size when it says one, and the
/// same digest of its type. A type this build cannot compute (md5) leaves the size as the
/// check; one it can but did not keep for this blob counts as different (fetching it again,
/// verified, records that digest too).
pub fn agrees(meta: &BlobMeta, expected: Option<&Expected>) -> bool {
    let Some(e) = expected else {
        return true;
    };
    if e.size.is_some_and(|s| s != meta.size) {
        return false;
    }
    match meta.checksums.iter().find(|c| c.algo == e.checksum.algo) {
        Some(c) => c.digest == e.checksum.digest,
        None => !hash::can_verify(e.checksum.algo),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::{Checksum, ChecksumAlgo};
    use crate::store::{Batch, Store};

    const HOUR: Duration = Duration::from_secs(3600);
    const NOW: u64 = 1_000_000;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        Fixture { _dir: dir, store }
    }

    impl Fixture {
        /// Stores `bytes` as a blob (row and file), stored at `NOW - 100`.
        fn blob(&self, bytes: &[u8]) -> BlobMeta {
            let d = self.store.write_blob_bytes(bytes, None).unwrap();
            let m = BlobMeta::from_digests(&d, NOW - 100);
            let mut b = Batch::new();
            b.put_blob(m.clone());
            self.store.commit_blocking(b).unwrap();
            m
        }

        fn list(&self, key: &str, blob: &BlobId, checked_at: u64) {
            let mut b = Batch::new();
            b.set_path(
                key.into(),
                PathEntry {
                    blob: *blob,
                    checked_at,
                    etag: Some("\"v1\"".into()),
                    last_modified: None,
                },
            );
            self.store.commit_blocking(b).unwrap();
        }

        fn expect(&self, key: &str, e: &Expected) {
            let mut b = Batch::new();
            b.put_expected(key.into(), e.clone());
            self.store.commit_blocking(b).unwrap();
        }

        fn find(&self, path: &str, expect: Expect<'_>) -> Lookup {
            let p = RepoPath::parse_relative(path).unwrap();
            find(&self.store.view().unwrap(), "r", &p, expect, NOW, HOUR).unwrap()
        }
    }

    fn sha256_of(m: &BlobMeta) -> Expected {
        Expected {
            checksum: m.sha256().unwrap().clone(),
            size: Some(m.size),
        }
    }

    #[test]
    fn a_listed_package_is_a_hit_with_its_row_time_and_sha256() {
        let f = fixture();
        let m = f.blob(b"package one");
        f.list("r/Packages/a.rpm", &m.id, NOW - 10);
        let l = f.find("Packages/a.rpm", Expect::Index);
        let Found::Hit(h) = l.found else {
            panic!("{l:?}")
        };
        assert_eq!((h.blob, h.size, h.modified), (m.id, 11, NOW - 10));
        assert_eq!(h.sha256.unwrap().as_slice(), m.sha256().unwrap().digest);
        // Immutable: however old its row, never revalidated.
        f.list("r/Packages/a.rpm", &m.id, 1);
        assert!(matches!(
            f.find("Packages/a.rpm", Expect::Index).found,
            Found::Hit(_)
        ));
    }

    #[test]
    fn a_row_whose_blob_file_is_gone_or_cut_short_is_a_miss() {
        let f = fixture();
        let m = f.blob(b"soon gone");
        f.list("r/Packages/a.rpm", &m.id, NOW);
        f.expect("r/Packages/a.rpm", &sha256_of(&m));
        std::fs::remove_file(f.store.blob_path(&m.id)).unwrap();
        let l = f.find("Packages/a.rpm", Expect::Index);
        assert_eq!(
            l.found,
            Found::Miss,
            "the alias by checksum is the same missing file"
        );
        assert_eq!(
            l.expected,
            Some(sha256_of(&m)),
            "the miss says what to verify"
        );
        // A file cut short is no better.
        std::fs::write(f.store.blob_path(&m.id), b"soon").unwrap();
        assert_eq!(f.find("Packages/a.rpm", Expect::Index).found, Found::Miss);
        // Put back whole, it is a hit again.
        std::fs::write(f.store.blob_path(&m.id), b"soon gone").unwrap();
        assert!(matches!(
            f.find("Packages/a.rpm", Expect::Index).found,
            Found::Hit(_)
        ));
    }

    #[test]
    fn metadata_naming_a_held_checksum_is_an_alias() {
        let f = fixture();
        let m = f.blob(b"the same package");
        f.list("r/9/Packages/a.rpm", &m.id, NOW);
        f.expect("r/9.6/Packages/a.rpm", &sha256_of(&m));
        let l = f.find("9.6/Packages/a.rpm", Expect::Index);
        assert_eq!(l.found, Found::Alias(Held::of(&m, m.stored_at)));
        // No metadata for the path: nothing to go by.
        assert_eq!(
            f.find("9.7/Packages/a.rpm", Expect::Index).found,
            Found::Miss
        );
        // A peer's word counts only when ours says nothing...
        let other = f.blob(b"another package");
        let theirs = sha256_of(&other);
        assert_eq!(
            f.find("9.7/Packages/a.rpm", Expect::IndexOr(Some(&theirs)))
                .found,
            Found::Alias(Held::of(&other, other.stored_at))
        );
        // ...and ours wins when it does.
        let l = f.find("9.6/Packages/a.rpm", Expect::IndexOr(Some(&theirs)));
        assert_eq!(l.found, Found::Alias(Held::of(&m, m.stored_at)));
        assert_eq!(l.expected, Some(sha256_of(&m)));
        // Metadata that says another size is not these bytes.
        let wrong_size = Expected {
            size: Some(m.size + 1),
            ..sha256_of(&m)
        };
        assert_eq!(
            f.find("9.7/Packages/a.rpm", Expect::Given(&wrong_size))
                .found,
            Found::Miss
        );
    }

    #[test]
    fn a_row_that_is_not_what_metadata_names_is_not_a_hit() {
        let f = fixture();
        let old = f.blob(b"rebuilt under the same name, v1");
        let new = f.blob(b"rebuilt under the same name, v2");
        f.list("r/Packages/a.rpm", &old.id, NOW);
        f.expect("r/Packages/a.rpm", &sha256_of(&new));
        assert_eq!(
            f.find("Packages/a.rpm", Expect::Index).found,
            Found::Alias(Held::of(&new, new.stored_at))
        );
        let unknown = Expected {
            checksum: Checksum {
                algo: ChecksumAlgo::Sha256,
                digest: vec![7; 32],
            },
            size: None,
        };
        f.expect("r/Packages/a.rpm", &unknown);
        assert_eq!(f.find("Packages/a.rpm", Expect::Index).found, Found::Miss);
        // A digest we can compute but did not keep for this blob: fetch and verify again.
        let sha512 = Expected {
            checksum: Checksum {
                algo: ChecksumAlgo::Sha512,
                digest: vec![7; 64],
            },
            size: Some(old.size),
        };
        assert_eq!(
            f.find("Packages/a.rpm", Expect::Given(&sha512)).found,
            Found::Miss
        );
    }

    #[test]
    fn md5_only_metadata_checks_the_size_and_finds_no_alias() {
        let f = fixture();
        let m = f.blob(b"an old repository's package");
        let md5 = |size| Expected {
            checksum: Checksum {
                algo: ChecksumAlgo::Md5,
                digest: vec![1; 16],
            },
            size,
        };
        f.list("r/Packages/a.rpm", &m.id, NOW);
        f.expect("r/Packages/a.rpm", &md5(Some(m.size)));
        let Found::Hit(h) = f.find("Packages/a.rpm", Expect::Index).found else {
            panic!("a listed file of the right size is served")
        };
        assert_eq!(h.blob, m.id);
        f.expect("r/Packages/a.rpm", &md5(Some(m.size + 1)));
        assert_eq!(f.find("Packages/a.rpm", Expect::Index).found, Found::Miss);
        // Never found by an md5: this build computes none, so no stored blob has one.
        f.expect("r/Packages/b.rpm", &md5(None));
        assert_eq!(f.find("Packages/b.rpm", Expect::Index).found, Found::Miss);
        assert_eq!(
            checksum(&f.store.view().unwrap(), &md5(None).checksum).unwrap(),
            None
        );
    }

    #[test]
    fn a_stale_mutable_path_is_revalidated_with_its_row() {
        let f = fixture();
        let m = f.blob(b"-----BEGIN PGP PUBLIC KEY BLOCK-----");
        f.list("r/RPM-GPG-KEY-test", &m.id, NOW - 60);
        let Found::Hit(h) = f.find("RPM-GPG-KEY-test", Expect::Index).found else {
            panic!("checked a minute ago: fresh")
        };
        assert_eq!(h.modified, NOW - 60);
        f.list("r/RPM-GPG-KEY-test", &m.id, NOW - 2 * 3600);
        let Found::Revalidate { held, entry } = f.find("RPM-GPG-KEY-test", Expect::Index).found
        else {
            panic!("checked two hours ago: due")
        };
        assert_eq!(held.blob, m.id);
        assert_eq!(
            entry.etag.as_deref(),
            Some("\"v1\""),
            "validators to ask with"
        );
        assert_eq!(entry.checked_at, NOW - 2 * 3600);
        // A stale row whose file is gone has nothing to revalidate: fetch it whole.
        std::fs::remove_file(f.store.blob_path(&m.id)).unwrap();
        assert_eq!(f.find("RPM-GPG-KEY-test", Expect::Index).found, Found::Miss);
    }

    #[test]
    fn simple_named_metadata_is_what_the_snapshot_names_however_old() {
        let f = fixture();
        let old = f.blob(b"primary v1");
        let new = f.blob(b"primary v2");
        let key = "r/repodata/primary.xml.gz";
        f.list(key, &old.id, 1);
        // Without metadata for it, it is any mutable file: due for a check.
        assert!(matches!(
            f.find("repodata/primary.xml.gz", Expect::Index).found,
            Found::Revalidate { .. }
        ));
        // The snapshot names v2: v2 it is, by checksum, never revalidated.
        f.expect(key, &sha256_of(&new));
        assert_eq!(
            f.find("repodata/primary.xml.gz", Expect::Index).found,
            Found::Alias(Held::of(&new, new.stored_at))
        );
        f.list(key, &new.id, 1);
        assert_eq!(
            f.find("repodata/primary.xml.gz", Expect::Index).found,
            Found::Hit(Held::of(&new, new.stored_at))
        );
        // A snapshot being assembled goes by the new repomd.xml, not the index.
        assert_eq!(
            f.find("repodata/primary.xml.gz", Expect::Given(&sha256_of(&old)))
                .found,
            Found::Alias(Held::of(&old, old.stored_at))
        );
    }

    #[test]
    fn repomd_is_a_hit_while_its_snapshot_is_fresh() {
        let f = fixture();
        let md = f.blob(b"<repomd/>");
        let asc = f.blob(b"signature");
        let snap = |checked_at| Snapshot {
            revision: "1".into(),
            repomd: hash::hex(&md.id),
            companions: vec![(".asc".into(), hash::hex(&asc.id))],
            fetched_at: NOW - 5000,
            checked_at,
            etag: Some("\"md\"".into()),
            last_modified: None,
            files: vec![],
            previous: vec![],
            origin: Default::default(),
        };
        let put = |s: Snapshot| {
            let mut b = Batch::new();
            b.put_snapshot("r/".into(), s);
            f.store.commit_blocking(b).unwrap();
        };
        assert_eq!(
            f.find("repodata/repomd.xml", Expect::Index).found,
            Found::Miss
        );
        put(snap(NOW - 60));
        assert_eq!(
            f.find("repodata/repomd.xml", Expect::Index).found,
            Found::Hit(Held::of(&md, NOW - 5000))
        );
        assert_eq!(
            f.find("repodata/repomd.xml.asc", Expect::Index).found,
            Found::Hit(Held::of(&asc, NOW - 5000))
        );
        assert_eq!(
            f.find("repodata/repomd.xml.key", Expect::Index).found,
            Found::Miss,
            "the snapshot has no .key"
        );
        put(snap(NOW - 7200));
        let Found::Revalidate { held, entry } = f.find("repodata/repomd.xml", Expect::Index).found
        else {
            panic!("due for a check")
        };
        assert_eq!(held.blob, md.id);
        assert_eq!(entry.etag.as_deref(), Some("\"md\""));
        std::fs::remove_file(f.store.blob_path(&md.id)).unwrap();
        assert_eq!(
            f.find("repodata/repomd.xml", Expect::Index).found,
            Found::Miss
        );
    }

    #[test]
    fn content_lookups_need_the_row_and_the_file() {
        let f = fixture();
        let m = f.blob(b"held");
        let v = f.store.view().unwrap();
        assert_eq!(blob(&v, &m.id).unwrap(), Some(Held::of(&m, m.stored_at)));
        assert_eq!(
            checksum(&v, m.sha256().unwrap()).unwrap().map(|h| h.blob),
            Some(m.id)
        );
        drop(v);
        std::fs::remove_file(f.store.blob_path(&m.id)).unwrap();
        let v = f.store.view().unwrap();
        assert_eq!(blob(&v, &m.id).unwrap(), None);
        assert_eq!(checksum(&v, m.sha256().unwrap()).unwrap(), None);
        // A file in place that no row names (passed through, or an orphan) is not held.
        let loose = f.store.write_blob_bytes(b"loose", None).unwrap();
        assert_eq!(blob(&v, &loose.blake3).unwrap(), None);
    }
}
