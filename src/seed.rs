//! Mounted bundles (`[seed] dirs`) as a read-only source of the miss path: a file is looked up
//! by the SHA-256 that metadata names and read from the disk, then verified and stored like
//! bytes from anywhere else; a bundle's metadata snapshot can stand in when upstream cannot be
//! reached. Manifests are checked like an import's (`bundle::manifest`).
//!
//! Not here: verifying the bytes (the transfer does) or writing bundles (`bundle`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::bundle::manifest::{BundleFile, BundleSnapshot, MANIFEST, read_manifest, unhex};
use crate::hash::{self, BlobId};
use crate::peer::identity::SiteAuth;

/// Mounted bundles used as a read-only source: a file is looked up by the SHA-256 that
/// metadata names and read from the disk (then verified and stored like bytes from anywhere
/// else). Manifests are (re)read when a directory's manifest changes, at most every 30 s, so a
/// disk mounted after the node started is found.
pub struct Seeds {
    dirs: Vec<PathBuf>,
    site: SiteAuth,
    state: Mutex<SeedState>,
}

#[derive(Default)]
struct SeedState {
    checked: Option<Instant>,
    /// Manifest modification times the index was built from.
    seen: Vec<Option<std::time::SystemTime>>,
    by_sha256: HashMap<[u8; 32], (PathBuf, BundleFile)>,
    snapshots: Vec<(PathBuf, BundleSnapshot)>,
    by_path: HashMap<String, (PathBuf, BundleFile)>,
}

/// A file a seed holds.
#[derive(Debug, Clone)]
pub struct SeedFile {
    pub path: PathBuf,
    pub size: u64,
    pub blake3: BlobId,
}

impl Seeds {
    pub fn new(dirs: Vec<PathBuf>, site: SiteAuth) -> Seeds {
        Seeds {
            dirs,
            site,
            state: Mutex::new(SeedState::default()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    fn refresh(&self, st: &mut SeedState) {
        if st
            .checked
            .is_some_and(|t| t.elapsed() < Duration::from_secs(30))
        {
            return;
        }
        st.checked = Some(Instant::now());
        let seen: Vec<_> = self
            .dirs
            .iter()
            .map(|d| {
                std::fs::metadata(d.join(MANIFEST))
                    .and_then(|m| m.modified())
                    .ok()
            })
            .collect();
        if seen == st.seen {
            return;
        }
        st.seen = seen;
        st.by_sha256.clear();
        st.by_path.clear();
        st.snapshots.clear();
        for d in &self.dirs {
            match read_manifest(d, &self.site) {
                Ok((m, origin)) => {
                    tracing::info!(dir = %d.display(), files = m.files.len(), made_by = %origin.node_id,
                        "seed directory in use as a read-only source");
                    for f in m.files {
                        if let Some(sha) =
                            unhex(&f.sha256).and_then(|v| <[u8; 32]>::try_from(v).ok())
                        {
                            st.by_sha256.insert(sha, (d.clone(), f.clone()));
                        }
                        st.by_path.insert(f.path.clone(), (d.clone(), f));
                    }
                    st.snapshots
                        .extend(m.snapshots.into_iter().map(|s| (d.clone(), s)));
                }
                Err(e) => {
                    tracing::warn!(dir = %d.display(), error = %e, "seed directory not usable (not mounted yet?); checked again in 30 s");
                }
            }
        }
    }

    /// The seed file holding content with this SHA-256, if any.
    pub fn find(&self, sha256: &[u8]) -> Option<SeedFile> {
        let key: [u8; 32] = sha256.try_into().ok()?;
        let mut st = self.state.lock().ok()?;
        self.refresh(&mut st);
        let (dir, f) = st.by_sha256.get(&key)?;
        Some(SeedFile {
            path: dir.join(&f.path),
            size: f.size,
            blake3: hash::parse_blob_id(&f.blake3)?,
        })
    }

    /// The newest snapshot a seed holds for `repo/tree`, with its repomd.xml and companions as
    /// `(suffix, file)`.
    pub fn snapshot(
        &self,
        repo: &str,
        tree: &str,
    ) -> Option<(BundleSnapshot, Vec<(String, SeedFile)>)> {
        let mut st = self.state.lock().ok()?;
        self.refresh(&mut st);
        let (dir, s) = st
            .snapshots
            .iter()
            .filter(|(_, s)| s.repo == repo && s.tree == tree)
            .max_by_key(|(_, s)| (s.revision.parse::<u64>().unwrap_or(0), s.fetched_at))?;
        let mut files = Vec::new();
        for (suffix, path) in &s.files {
            let (_, f) = st.by_path.get(path)?;
            files.push((
                suffix.clone(),
                SeedFile {
                    path: dir.join(&f.path),
                    size: f.size,
                    blake3: hash::parse_blob_id(&f.blake3)?,
                },
            ));
        }
        Some((s.clone(), files))
    }
}
