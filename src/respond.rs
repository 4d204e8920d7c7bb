//! How to answer a request for a stored file: the pure decision (full, one range, several
//! ranges, 304, 416) and the header fields that go with it, shared by the zero-copy hit path
//! and the hyper path so both answer alike.
//!
//! No I/O here: the callers open files and write bytes. A 304 is only ever the answer to a
//! request that was conditional (dnf never is; see notes/dnf-protocol.md).

use std::ops::Range;
use std::time::{Duration, UNIX_EPOCH};

use crate::hash::{self, BlobId};
use crate::range::{self, RangeRequest};

/// The boundary of `multipart/byteranges` answers (never appears in a part header value).
pub const BOUNDARY: &str = "lanmirror-byteranges-3f9c2b";

/// The request fields that change the answer.
#[derive(Debug, Default, Clone)]
pub struct Conditions<'a> {
    pub range: Option<&'a str>,
    pub if_range: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: Option<&'a str>,
}

/// A stored file as the HTTP layer describes it.
#[derive(Debug, Clone)]
pub struct FileInfo {
    pub len: u64,
    pub etag: String,
    pub last_modified: String,
    pub last_modified_secs: u64,
    pub content_type: &'static str,
}

impl FileInfo {
    pub fn new(blob: &BlobId, len: u64, modified_secs: u64, name: &str) -> Self {
        Self {
            len,
            etag: format!("\"{}\"", &hash::hex(blob)[..32]),
            last_modified: httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(modified_secs)),
            last_modified_secs: modified_secs,
            content_type: content_type(name),
        }
    }
}

/// What to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Full,
    Single(Range<u64>),
    Multi(Vec<Range<u64>>),
    NotModified,
    Unsatisfiable,
}

impl Plan {
    pub fn status(&self) -> u16 {
        match self {
            Plan::Full => 200,
            Plan::Single(_) | Plan::Multi(_) => 206,
            Plan::NotModified => 304,
            Plan::Unsatisfiable => 416,
        }
    }

    /// Bytes of body a GET carries.
    pub fn body_len(&self, f: &FileInfo) -> u64 {
        match self {
            Plan::Full => f.len,
            Plan::Single(r) => r.end - r.start,
            Plan::Multi(rs) => range::multipart_len(BOUNDARY, f.content_type, rs, f.len),
            Plan::NotModified | Plan::Unsatisfiable => 0,
        }
    }
}

fn etag_matches(list: &str, etag: &str) -> bool {
    list.split(',').any(|t| {
        let t = t.trim();
        t == "*" || t.trim_start_matches("W/") == etag
    })
}

/// Decides the answer (RFC 9110 §13.2.2 order: If-None-Match, then If-Modified-Since, then
/// Range with If-Range).
pub fn plan(c: &Conditions<'_>, f: &FileInfo) -> Plan {
    if let Some(inm) = c.if_none_match {
        if etag_matches(inm, &f.etag) {
            return Plan::NotModified;
        }
    } else if let Some(ims) = c.if_modified_since
        && let Ok(t) = httpdate::parse_http_date(ims)
        && t.duration_since(UNIX_EPOCH)
            .is_ok_and(|d| d.as_secs() >= f.last_modified_secs)
    {
        return Plan::NotModified;
    }
    let range = match (c.range, c.if_range) {
        (Some(r), Some(ir)) if !range::if_range_matches(ir, &f.etag, &f.last_modified) => {
            let _ = r;
            None
        }
        (r, _) => r,
    };
    match range::parse_range(range, f.len) {
        RangeRequest::Full => Plan::Full,
        RangeRequest::Unsatisfiable => Plan::Unsatisfiable,
        RangeRequest::Ranges(mut rs) if rs.len() == 1 => Plan::Single(rs.remove(0)),
        // Ranges adding up to more than the file (e.g. 256 × "0-") would turn one request
        // into a huge answer: the whole file once is the legal, cheaper reply.
        RangeRequest::Ranges(rs) if rs.iter().map(|r| r.end - r.start).sum::<u64>() > f.len => {
            Plan::Full
        }
        RangeRequest::Ranges(rs) => Plan::Multi(rs),
    }
}

/// Header fields of the answer, lowercase names (librepo must not see `Content-Length:` on a
/// 206; hyper writes lowercase too).
pub fn fields(p: &Plan, f: &FileInfo) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("etag", f.etag.clone()),
        ("last-modified", f.last_modified.clone()),
        ("accept-ranges", "bytes".to_string()),
    ];
    match p {
        Plan::Full => {
            h.push(("content-type", f.content_type.to_string()));
            h.push(("content-length", f.len.to_string()));
        }
        Plan::Single(r) => {
            h.push(("content-type", f.content_type.to_string()));
            h.push(("content-range", range::content_range(r, f.len)));
            h.push(("content-length", (r.end - r.start).to_string()));
        }
        Plan::Multi(_) => {
            h.push((
                "content-type",
                format!("multipart/byteranges; boundary={BOUNDARY}"),
            ));
            h.push(("content-length", p.body_len(f).to_string()));
        }
        Plan::NotModified => {}
        Plan::Unsatisfiable => {
            h.push(("content-range", range::unsatisfied_content_range(f.len)));
            h.push(("content-length", "0".to_string()));
        }
    }
    h
}

pub fn content_type(name: &str) -> &'static str {
    let n = name.to_ascii_lowercase();
    let ext = n.rsplit('.').next().unwrap_or("");
    match ext {
        "rpm" | "drpm" => "application/x-rpm",
        "xml" => "application/xml",
        "gz" => "application/gzip",
        "xz" => "application/x-xz",
        "zst" | "zck" => "application/zstd",
        "bz2" => "application/x-bzip2",
        "asc" | "key" | "txt" | "treeinfo" => "text/plain",
        "yaml" | "yml" => "application/yaml",
        "sqlite" => "application/vnd.sqlite3",
        "json" => "application/json",
        "html" | "htm" => "text/html",
        _ if n.starts_with("rpm-gpg-key") => "text/plain",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> FileInfo {
        FileInfo::new(&[7; 32], 1000, 1_700_000_000, "a.rpm")
    }

    #[test]
    fn plans() {
        let f = info();
        let c = |range: Option<&'static str>| Conditions {
            range,
            ..Default::default()
        };
        assert_eq!(plan(&c(None), &f), Plan::Full);
        assert_eq!(plan(&c(Some("bytes=0-9")), &f), Plan::Single(0..10));
        assert_eq!(plan(&c(Some("bytes=-10")), &f), Plan::Single(990..1000));
        assert_eq!(
            plan(&c(Some("bytes=0-0,10-19")), &f),
            Plan::Multi(vec![0..1, 10..20])
        );
        assert_eq!(plan(&c(Some("bytes=5000-")), &f), Plan::Unsatisfiable);
        assert_eq!(
            plan(&c(Some("bytes=0-,0-,0-")), &f),
            Plan::Full,
            "amplification refused"
        );
        // If-Range with another validator: the whole file.
        let mut cc = c(Some("bytes=0-9"));
        cc.if_range = Some("\"other\"");
        assert_eq!(plan(&cc, &f), Plan::Full);
        cc.if_range = Some(&f.etag);
        assert_eq!(plan(&cc, &f), Plan::Single(0..10));
    }

    #[test]
    fn conditional_only_when_asked() {
        let f = info();
        let mut c = Conditions::default();
        assert_eq!(plan(&c, &f), Plan::Full);
        c.if_none_match = Some(&f.etag);
        assert_eq!(plan(&c, &f), Plan::NotModified);
        c.if_none_match = Some("\"nope\"");
        c.if_modified_since = Some("Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(
            plan(&c, &f),
            Plan::Full,
            "If-None-Match wins over If-Modified-Since"
        );
        c.if_none_match = None;
        assert_eq!(plan(&c, &f), Plan::Full, "modified since 1994");
        c.if_modified_since = Some(&f.last_modified);
        assert_eq!(plan(&c, &f), Plan::NotModified);
    }

    #[test]
    fn header_fields() {
        let f = info();
        let h = fields(&Plan::Single(10..20), &f);
        assert!(h.contains(&("content-range", "bytes 10-19/1000".into())));
        assert!(h.contains(&("content-length", "10".into())));
        let m = Plan::Multi(vec![0..1, 5..6]);
        let len: u64 = fields(&m, &f)
            .iter()
            .find(|(k, _)| *k == "content-length")
            .unwrap()
            .1
            .parse()
            .unwrap();
        assert_eq!(len, m.body_len(&f));
        assert!(
            fields(&Plan::Unsatisfiable, &f).contains(&("content-range", "bytes */1000".into()))
        );
        assert!(
            h.iter()
                .all(|(k, _)| k.chars().all(|c| !c.is_ascii_uppercase()))
        );
    }
}
