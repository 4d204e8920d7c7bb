//! Request paths: turning `/{repo}/{path}` from the wire into a checked repo name and a
//! normalised path inside it, and classifying that path (immutable, mutable, repomd.xml).
//!
//! Everything here is pure and runs before any I/O: a path that could leave its repository
//! (`..` or `.` segments, encoded or not, NUL, backslashes, control bytes, bad UTF-8 or bad
//! percent-encoding) is refused here, so nothing below ever sees it. This module does not know
//! which repos are configured; the caller checks the name.

use std::fmt;

/// Why a request path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with '/'")]
    NotAbsolute,
    #[error("bad percent-encoding")]
    BadEncoding,
    #[error("path contains a forbidden character (NUL, control, backslash, '%', '?' or '#')")]
    ForbiddenByte,
    #[error("path is not UTF-8")]
    NotUtf8,
    #[error("path contains a '.' or '..' segment")]
    DotSegment,
    #[error("path names no file")]
    Empty,
    #[error("path is too long")]
    TooLong,
}

/// Longest accepted request path, in bytes, before decoding.
pub const MAX_PATH_LEN: usize = 4096;

/// A normalised path inside a repository: no leading or trailing '/', no empty, `.` or `..`
/// segments, no NUL, control bytes or backslashes. Safe to append to an upstream base URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoPath(String);

impl RepoPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Builds a path from repo-relative text such as a metadata `location href`.
    pub fn parse_relative(s: &str) -> Result<Self, PathError> {
        let mut out = String::with_capacity(s.len());
        for seg in s.split('/') {
            check_segment(seg)?;
            if seg.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push('/');
            }
            out.push_str(seg);
        }
        if out.is_empty() {
            return Err(PathError::Empty);
        }
        Ok(RepoPath(out))
    }

    /// The directory part including its trailing '/', or "" at the top.
    pub fn parent_dir(&self) -> &str {
        match self.0.rfind('/') {
            Some(i) => &self.0[..=i],
            None => "",
        }
    }

    pub fn file_name(&self) -> &str {
        match self.0.rfind('/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// Joins a repo-relative `href` onto a tree prefix such as `9/BaseOS/x86_64/os/`.
    pub fn in_tree(tree: &str, href: &str) -> Result<Self, PathError> {
        Self::parse_relative(&format!("{tree}{href}"))
    }

    pub fn kind(&self) -> PathKind {
        classify(&self.0)
    }
}

impl fmt::Display for RepoPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_segment(seg: &str) -> Result<(), PathError> {
    if seg == "." || seg == ".." {
        return Err(PathError::DotSegment);
    }
    // '%' would be decoded a second time by the upstream URL parser ("%2e%2e" is ".."),
    // '?' and '#' would end the path there: none belongs in a repository file name.
    if seg
        .bytes()
        .any(|b| b < 0x20 || b == 0x7f || matches!(b, b'\\' | b'%' | b'?' | b'#'))
    {
        return Err(PathError::ForbiddenByte);
    }
    Ok(())
}

/// Splits a raw (percent-encoded) request path into the repo name and the path inside it.
pub fn parse_request_path(raw: &str) -> Result<(String, RepoPath), PathError> {
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    let rest = raw.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let decoded = percent_decode(rest)?;
    let text = String::from_utf8(decoded).map_err(|_| PathError::NotUtf8)?;
    let mut segs = text.split('/').filter(|s| !s.is_empty());
    let repo = segs.next().ok_or(PathError::Empty)?;
    check_segment(repo)?;
    // A trailing '/' asks for a directory listing, which is not served.
    if text.ends_with('/') {
        // Still refuse dot segments first, so a traversal attempt is reported as one.
        for s in text.split('/') {
            check_segment(s)?;
        }
        return Err(PathError::Empty);
    }
    let inner: Vec<&str> = segs.collect();
    let path = RepoPath::parse_relative(&inner.join("/"))?;
    Ok((repo.to_string(), path))
}

fn percent_decode(s: &str) -> Result<Vec<u8>, PathError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or(PathError::BadEncoding)?;
                let hi = (hex[0] as char)
                    .to_digit(16)
                    .ok_or(PathError::BadEncoding)?;
                let lo = (hex[1] as char)
                    .to_digit(16)
                    .ok_or(PathError::BadEncoding)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// What kind of file a path names, which decides how long a stored copy may be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathKind {
    /// `…/repodata/repomd.xml`: served from the tree's current metadata snapshot.
    RepoMd { tree: String },
    /// `…/repodata/repomd.xml.asc` or `.key`: served from the same snapshot as repomd.xml.
    RepoMdCompanion { tree: String, suffix: &'static str },
    /// Packages and checksum-named metadata: never change once published.
    Immutable,
    /// Anything else (`.treeinfo`, `RPM-GPG-KEY*`, simple-named metadata): revalidated
    /// upstream when older than the freshness window.
    Mutable,
}

/// Companion files fetched and served together with repomd.xml.
pub const REPOMD_COMPANIONS: [&str; 2] = [".asc", ".key"];

fn classify(p: &str) -> PathKind {
    let (dir, name) = match p.rfind('/') {
        Some(i) => (&p[..=i], &p[i + 1..]),
        None => ("", p),
    };
    if let Some(tree) = dir.strip_suffix("repodata/") {
        if name == "repomd.xml" {
            return PathKind::RepoMd { tree: tree.into() };
        }
        for suffix in REPOMD_COMPANIONS {
            if name.strip_prefix("repomd.xml") == Some(suffix) {
                return PathKind::RepoMdCompanion {
                    tree: tree.into(),
                    suffix,
                };
            }
        }
        // createrepo_c's default unique names: "<hex checksum>-<type>.<ext>"
        if let Some((prefix, _)) = name.split_once('-')
            && prefix.len() >= 32
            && prefix.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return PathKind::Immutable;
        }
        return PathKind::Mutable;
    }
    let lower = name.to_ascii_lowercase();
    if [".rpm", ".drpm"].iter().any(|e| lower.ends_with(e)) {
        PathKind::Immutable
    } else {
        PathKind::Mutable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> (String, String) {
        let (r, p) = parse_request_path(raw).unwrap();
        (r, p.as_str().to_string())
    }

    #[test]
    fn normal_paths() {
        assert_eq!(
            ok("/almalinux/9/BaseOS/x86_64/os/repodata/repomd.xml"),
            (
                "almalinux".into(),
                "9/BaseOS/x86_64/os/repodata/repomd.xml".into()
            )
        );
        assert_eq!(
            ok("/epel//9/Everything/x86_64/Packages/a/a%2Bb-1.rpm"),
            (
                "epel".into(),
                "9/Everything/x86_64/Packages/a/a+b-1.rpm".into()
            )
        );
    }

    #[test]
    fn traversal_and_tricks_are_refused() {
        use PathError::*;
        let cases = [
            ("/repo/../etc/passwd", DotSegment),
            ("/repo/a/%2e%2e/%2e%2e/etc/passwd", DotSegment),
            ("/repo/a/%2E%2E%2Fetc", DotSegment),
            ("/repo/a%2f..%2f..%2fetc", DotSegment),
            ("/repo/./a", DotSegment),
            ("/..", DotSegment),
            ("/repo/a%00b", ForbiddenByte),
            ("/repo/a\\..\\b", ForbiddenByte),
            ("/repo/a%5c..%5cb", ForbiddenByte),
            ("/repo/a%0ab", ForbiddenByte),
            ("/repo/%252e%252e/secret", ForbiddenByte),
            ("/repo/a%253Fb.rpm", ForbiddenByte),
            ("/repo/a%23b.rpm", ForbiddenByte),
            ("/repo/a#b.rpm", ForbiddenByte),
            ("/repo/a%zz", BadEncoding),
            ("/repo/a%2", BadEncoding),
            ("/repo/%ff%fe", NotUtf8),
            ("repo/a", NotAbsolute),
            ("http://evil/x", NotAbsolute),
            ("/", Empty),
            ("/repo", Empty),
            ("/repo/", Empty),
            ("/repo/dir/", Empty),
            ("/repo/../", DotSegment),
        ];
        for (raw, want) in cases {
            assert_eq!(parse_request_path(raw), Err(want), "{raw}");
        }
        assert_eq!(
            parse_request_path(&format!("/r/{}", "a".repeat(5000))),
            Err(TooLong)
        );
    }

    #[test]
    fn classification() {
        let k = |s: &str| RepoPath::parse_relative(s).unwrap().kind();
        assert_eq!(
            k("9/BaseOS/x86_64/os/repodata/repomd.xml"),
            PathKind::RepoMd {
                tree: "9/BaseOS/x86_64/os/".into()
            }
        );
        assert_eq!(
            k("repodata/repomd.xml"),
            PathKind::RepoMd { tree: "".into() }
        );
        assert_eq!(
            k("x/repodata/repomd.xml.asc"),
            PathKind::RepoMdCompanion {
                tree: "x/".into(),
                suffix: ".asc"
            }
        );
        assert_eq!(
            k(
                "x/repodata/2f7a33d8e1a5a9a1b5c0c4ff00aa11bb22cc33dd44ee55ff6677889900aabbcc-primary.xml.gz"
            ),
            PathKind::Immutable
        );
        assert_eq!(k("x/repodata/primary.xml.gz"), PathKind::Mutable);
        assert_eq!(
            k("x/Packages/b/bash-5.1-1.el9.x86_64.rpm"),
            PathKind::Immutable
        );
        assert_eq!(k("x/Packages/B.RPM"), PathKind::Immutable);
        assert_eq!(k("9/BaseOS/x86_64/os/.treeinfo"), PathKind::Mutable);
        assert_eq!(k("RPM-GPG-KEY-AlmaLinux-9"), PathKind::Mutable);
    }

    #[test]
    fn helpers() {
        let p = RepoPath::parse_relative("a/b/c.rpm").unwrap();
        assert_eq!(p.parent_dir(), "a/b/");
        assert_eq!(p.file_name(), "c.rpm");
        assert_eq!(
            RepoPath::in_tree("9/os/", "repodata/x-primary.xml.gz")
                .unwrap()
                .as_str(),
            "9/os/repodata/x-primary.xml.gz"
        );
        assert!(RepoPath::in_tree("9/os/", "../../x").is_err());
    }
}
