//! A bundle's manifest: its format, reading it from a directory, and the checks that decide
//! whether it can be trusted at all (the signature by the key it names, the site-key MAC where
//! this node has a site key, and paths that stay inside the bundle). Shared by `import` and by
//! mounted seed directories (`seed`).
//!
//! Not here: writing bundles, importing files, or checking files against metadata.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::paths::{PathKind, RepoPath};
use crate::peer::identity::{self, NodeId, SiteAuth};

pub const MANIFEST: &str = "lanmirror-bundle.json";
pub const SIGNATURE: &str = "lanmirror-bundle.sig";
pub(crate) const FORMAT: u32 = 1;
/// Largest manifest or signature file read.
pub(crate) const MAX_MANIFEST: u64 = 512 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the bundle's manifest is refused: {0}")]
    Refused(String),
    #[error("not a bundle: {0}")]
    NotABundle(String),
    #[error("have-list {path}: {why}")]
    BadHave { path: PathBuf, why: String },
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Other(String),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One file of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleFile {
    /// `<repo>/<path in repo>`, '/'-separated.
    pub path: String,
    pub size: u64,
    pub blake3: String,
    pub sha256: String,
}

/// A metadata snapshot carried by a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleSnapshot {
    pub repo: String,
    /// The tree inside the repo, e.g. `9/BaseOS/x86_64/os/` (empty for the repo root).
    pub tree: String,
    pub revision: String,
    pub fetched_at: u64,
    pub checked_at: u64,
    /// `(suffix, bundle path)` of repomd.xml (suffix "") and its companions.
    pub files: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub node_id: String,
    /// Raw Ed25519 public key of the exporting node (hex); `node_id` derives from it.
    pub public_key: String,
    pub site_id: String,
    /// Unix seconds.
    pub created: u64,
    pub snapshots: Vec<BundleSnapshot>,
    pub files: Vec<BundleFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Signature {
    pub(crate) ed25519: String,
    pub(crate) site_mac: Option<String>,
}

/// Who made a bundle, once its manifest is verified.
#[derive(Debug, Clone)]
pub struct Origin {
    pub node_id: NodeId,
    pub created: u64,
    /// The manifest was authenticated with this node's site key.
    pub site_key_checked: bool,
}

/// Reads and checks a bundle's manifest: signature by the key it names, and the site-key MAC
/// when this node has a site key.
pub fn read_manifest(dir: &Path, site: &SiteAuth) -> Result<(Manifest, Origin), BundleError> {
    let mpath = dir.join(MANIFEST);
    let spath = dir.join(SIGNATURE);
    let bytes = read_capped(&mpath).map_err(|e| match e {
        BundleError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            BundleError::NotABundle(format!(
                "{} has no {MANIFEST} (an export that did not finish? run it again)",
                dir.display()
            ))
        }
        e => e,
    })?;
    let sig: Signature = serde_json::from_slice(&read_capped(&spath)?)
        .map_err(|e| BundleError::Refused(format!("{SIGNATURE} is not valid: {e}")))?;
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| BundleError::Refused(format!("{MANIFEST} is not valid: {e}")))?;
    if m.format != FORMAT {
        return Err(BundleError::Refused(format!(
            "bundle format {} is not supported by this version (it reads {FORMAT})",
            m.format
        )));
    }
    let public =
        unhex(&m.public_key).ok_or_else(|| BundleError::Refused("bad public key".into()))?;
    let signature =
        unhex(&sig.ed25519).ok_or_else(|| BundleError::Refused("bad signature".into()))?;
    if !identity::verify_signature(&public, &bytes, &signature) {
        return Err(BundleError::Refused(
            "the manifest does not match its signature: it was altered after export".into(),
        ));
    }
    let node_id = NodeId::of_ed25519(&public);
    if node_id.to_string() != m.node_id {
        return Err(BundleError::Refused(
            "the manifest names a node id that is not its signer's".into(),
        ));
    }
    let site_key_checked = match (site.has_key(), &sig.site_mac) {
        (false, _) => false,
        (true, Some(mac)) if site.check_mac(&bytes, mac) => true,
        (true, Some(_)) => {
            return Err(BundleError::Refused(
                "the bundle was made with a different site key".into(),
            ));
        }
        (true, None) => {
            return Err(BundleError::Refused(
                "this site has a site key and the bundle was made without one".into(),
            ));
        }
    };
    // Every path must stay inside the bundle, in normal form, whoever signed it.
    for f in &m.files {
        if !bundle_path_ok(&f.path) {
            return Err(BundleError::Refused(format!(
                "the manifest names a path outside the bundle: {:?}",
                f.path
            )));
        }
    }
    for s in &m.snapshots {
        let tree_ok = RepoPath::in_tree(&s.tree, "repodata/repomd.xml").is_ok_and(|p| {
            p.kind()
                == PathKind::RepoMd {
                    tree: s.tree.clone(),
                }
        });
        if !tree_ok || !bundle_path_ok(&format!("{}/x", s.repo)) {
            return Err(BundleError::Refused(format!(
                "the manifest names a bad tree: {:?}/{:?}",
                s.repo, s.tree
            )));
        }
    }
    let origin = Origin {
        node_id,
        created: m.created,
        site_key_checked,
    };
    Ok((m, origin))
}

/// `<repo>/<path>` with a plain repo name and a path that stays in its repo, in normal form.
pub(crate) fn bundle_path_ok(p: &str) -> bool {
    let Some((repo, rest)) = p.split_once('/') else {
        return false;
    };
    let repo_ok = !repo.is_empty()
        && repo != "."
        && repo != ".."
        && repo
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    repo_ok && RepoPath::parse_relative(rest).is_ok_and(|r| r.as_str() == rest)
}

pub(crate) fn read_capped(path: &Path) -> Result<Vec<u8>, BundleError> {
    let f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut out = Vec::new();
    f.take(MAX_MANIFEST)
        .read_to_end(&mut out)
        .map_err(io_err(path))?;
    Ok(out)
}

pub(crate) use crate::hash::parse_hex as unhex;
