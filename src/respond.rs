//! How to answer a request for a stored file: what the request's header fields mean
//! ([`read_fields`]: one rule for repeated fields, `Host`, `Connection`), the pure decision
//! (full, one range, several ranges, 304, 416) and the header fields that go with it. Shared by
//! the zero-copy hit path and the hyper path so both read and answer alike.
//!
//! No I/O here: the callers open files and write bytes. A 304 is only ever the answer to a
//! request that was conditional (dnf never is; see notes/dnf-protocol.md).

use std::borrow::Cow;
use std::ops::Range;
use std::time::{Duration, UNIX_EPOCH};

use crate::hash;
use crate::range::{self, RangeRequest};

/// The boundary of `multipart/byteranges` answers (never appears in a part header value).
pub const BOUNDARY: &str = "lanmirror-byteranges-3f9c2b";

/// Longest request target (the URI in the request line) served; a longer one is answered
/// 414 on both paths. Repository paths are far shorter.
pub const MAX_URI: usize = 8 * 1024;

/// The request fields that change the answer.
#[derive(Debug, Default, Clone)]
pub struct Conditions<'a> {
    pub range: Option<&'a str>,
    pub if_range: Option<&'a str>,
    /// Every `If-None-Match` line of the request, combined into one list.
    pub if_none_match: Option<Cow<'a, str>>,
    pub if_modified_since: Option<&'a str>,
}

/// A request head that is refused before anything is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error(
        "bad request: an HTTP/1.1 request needs exactly one Host header, and no request may have two"
    )]
    Host,
    #[error("the request target is longer than {MAX_URI} bytes")]
    UriTooLong,
}

/// What a request's header fields mean, as [`read_fields`] reads them.
#[derive(Debug, Default, Clone)]
pub struct Fields<'a> {
    pub conditions: Conditions<'a>,
    /// A `close` token in `Connection`.
    pub close: bool,
    /// A `keep-alive` token in `Connection`.
    pub keep_alive: bool,
    /// A request body (`Content-Length` other than 0, `Transfer-Encoding`), `Expect` or
    /// `Upgrade`: left to hyper by the zero-copy path.
    pub special: bool,
}

impl Fields<'_> {
    /// Whether the connection stays open after the answer (RFC 9112 §9.3).
    pub fn persistent(&self, http11: bool) -> bool {
        !self.close && (http11 || self.keep_alive)
    }
}

/// Reads the header fields of a request, in the order received, by one rule for both HTTP
/// paths (RFC 9110/9112):
///
/// * `Host`: missing on HTTP/1.1, or present twice on any version, is an error (400).
/// * `If-None-Match` is a list: repeated lines combine.
/// * `Range`, `If-Range` and `If-Modified-Since` are single values: a repeated `Range` is
///   ignored (the whole file is sent), a repeated `If-Range` never matches (so the whole file is
///   sent), a repeated `If-Modified-Since` is ignored.
/// * A value that is not UTF-8 counts as absent.
/// * `target` longer than [`MAX_URI`] is an error (414).
pub fn read_fields<'a>(
    http11: bool,
    target: &str,
    fields: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<Fields<'a>, HeadError> {
    if target.len() > MAX_URI {
        return Err(HeadError::UriTooLong);
    }
    let mut out = Fields::default();
    let (mut hosts, mut ranges, mut if_ranges, mut ims) = (0u32, 0u32, 0u32, 0u32);
    let mut inm: Option<Cow<'a, str>> = None;
    for (name, value) in fields {
        let v = std::str::from_utf8(value).ok();
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("host") {
            hosts += 1;
        } else if is("range") {
            ranges += 1;
            out.conditions.range = v;
        } else if is("if-range") {
            if_ranges += 1;
            out.conditions.if_range = v;
        } else if is("if-modified-since") {
            ims += 1;
            out.conditions.if_modified_since = v;
        } else if is("if-none-match") {
            if let Some(v) = v {
                inm = Some(match inm {
                    None => Cow::Borrowed(v),
                    Some(prev) => Cow::Owned(format!("{prev}, {v}")),
                });
            }
        } else if is("connection") {
            for token in v.unwrap_or("").split(',') {
                let t = token.trim();
                out.close |= t.eq_ignore_ascii_case("close");
                out.keep_alive |= t.eq_ignore_ascii_case("keep-alive");
            }
        } else if is("transfer-encoding")
            || is("expect")
            || is("upgrade")
            || (is("content-length") && value != b"0")
        {
            out.special = true;
        }
    }
    if hosts > 1 || (http11 && hosts == 0) {
        return Err(HeadError::Host);
    }
    if ranges > 1 {
        out.conditions.range = None;
    }
    if if_ranges > 1 {
        // Never matches a validator: a range with it is ignored.
        out.conditions.if_range = Some("");
    }
    if ims > 1 {
        out.conditions.if_modified_since = None;
    }
    out.conditions.if_none_match = inm;
    Ok(out)
}

/// The `ETag` of content whose digest (SHA-256 where known, so a file streamed before it is
/// stored has the ETag it keeps) is `digest`.
pub fn etag(digest: &[u8]) -> String {
    let hex = hash::hex(digest);
    format!("\"{}\"", &hex[..hex.len().min(32)])
}

/// A file as the HTTP layer describes it: a stored one, or one known from metadata or a HEAD
/// upstream (whose ETag may be unknown).
#[derive(Debug, Clone)]
pub struct FileInfo {
    pub len: u64,
    pub etag: Option<String>,
    pub last_modified: String,
    pub last_modified_secs: u64,
    pub content_type: &'static str,
}

impl FileInfo {
    /// `tag`: the digest the ETag is made of (see [`etag`]).
    pub fn new(tag: &[u8], len: u64, modified_secs: u64, name: &str) -> Self {
        Self::with(len, Some(etag(tag)), modified_secs, name)
    }

    /// A file whose ETag (if any) is already made.
    pub fn with(len: u64, etag: Option<String>, modified_secs: u64, name: &str) -> Self {
        Self {
            len,
            etag,
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

/// Weak comparison of each entity-tag of an `If-None-Match` list (RFC 9110 §13.1.2); `*`
/// matches any current representation.
fn etag_matches(list: &str, etag: Option<&str>) -> bool {
    list.split(',').any(|t| {
        let t = t.trim();
        t == "*" || etag.is_some_and(|e| t.trim_start_matches("W/") == e)
    })
}

/// Decides the answer (RFC 9110 §13.2.2 order: If-None-Match, then If-Modified-Since, then
/// Range with If-Range).
pub fn plan(c: &Conditions<'_>, f: &FileInfo) -> Plan {
    if let Some(inm) = c.if_none_match.as_deref() {
        if etag_matches(inm, f.etag.as_deref()) {
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
        (Some(_), Some(ir))
            if !range::if_range_matches(ir, f.etag.as_deref().unwrap_or(""), &f.last_modified) =>
        {
            None
        }
        (r, _) => r,
    };
    match range::parse_range(range, f.len) {
        RangeRequest::Full => Plan::Full,
        RangeRequest::Unsatisfiable => Plan::Unsatisfiable,
        RangeRequest::Ranges(mut rs) if rs.len() == 1 => Plan::Single(rs.remove(0)),
        // A multipart answer (part headers included) larger than the file (256 × "0-", or 256
        // one-byte ranges of a small file) would turn one request into a bigger answer than
        // the whole file: the whole file once is the legal, cheaper reply.
        RangeRequest::Ranges(rs)
            if range::multipart_len(BOUNDARY, f.content_type, &rs, f.len) > f.len =>
        {
            Plan::Full
        }
        RangeRequest::Ranges(rs) => Plan::Multi(rs),
    }
}

/// Header fields of the answer, lowercase names (librepo must not see `Content-Length:` on a
/// 206; hyper writes lowercase too).
pub fn fields(p: &Plan, f: &FileInfo) -> Vec<(&'static str, String)> {
    let mut h = Vec::with_capacity(6);
    if let Some(e) = &f.etag {
        h.push(("etag", e.clone()));
    }
    h.push(("last-modified", f.last_modified.clone()));
    h.push(("accept-ranges", "bytes".to_string()));
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
        cc.if_range = f.etag.as_deref();
        assert_eq!(plan(&cc, &f), Plan::Single(0..10));
    }

    #[test]
    fn conditional_only_when_asked() {
        let f = info();
        let mut c = Conditions::default();
        assert_eq!(plan(&c, &f), Plan::Full);
        c.if_none_match = f.etag.as_deref().map(Into::into);
        assert_eq!(plan(&c, &f), Plan::NotModified);
        c.if_none_match = Some("\"nope\"".into());
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

    #[test]
    fn multipart_guard_counts_part_headers() {
        // 256 one-byte ranges of a 3 KiB file: the parts' headers alone are ~25 KB.
        let f = FileInfo::new(&[7; 32], 3072, 1_700_000_000, "a.rpm");
        let spec: Vec<String> = (0..256).map(|i| format!("{}-{}", i * 2, i * 2)).collect();
        let header = format!("bytes={}", spec.join(","));
        let c = Conditions {
            range: Some(&header),
            ..Default::default()
        };
        assert_eq!(plan(&c, &f), Plan::Full);
        // A few ranges of a big file stay multipart.
        let f = FileInfo::new(&[7; 32], 1 << 20, 1_700_000_000, "a.rpm");
        assert!(matches!(plan(&c, &f), Plan::Multi(v) if v.len() == 256));
    }

    fn read<'a>(http11: bool, h: &'a [(&'a str, &'a str)]) -> Result<Fields<'a>, HeadError> {
        read_fields(http11, "/x", h.iter().map(|(k, v)| (*k, v.as_bytes())))
    }

    #[test]
    fn repeated_fields_have_one_meaning() {
        let f = read(
            true,
            &[
                ("Host", "x"),
                ("If-None-Match", "\"a\""),
                ("if-none-match", "\"b\", \"c\""),
            ],
        )
        .unwrap();
        assert_eq!(
            f.conditions.if_none_match.as_deref(),
            Some("\"a\", \"b\", \"c\"")
        );
        let info = info();
        let etag = info.etag.as_deref().unwrap();
        let both = [
            ("host", "x"),
            ("if-none-match", "\"zz\""),
            ("if-none-match", etag),
        ];
        assert_eq!(
            plan(&read(true, &both).unwrap().conditions, &info),
            Plan::NotModified
        );
        let both = [
            ("host", "x"),
            ("if-none-match", etag),
            ("if-none-match", "\"zz\""),
        ];
        assert_eq!(
            plan(&read(true, &both).unwrap().conditions, &info),
            Plan::NotModified
        );
        // Two Range lines: the whole file, whichever order.
        let two = [
            ("host", "x"),
            ("range", "bytes=0-9"),
            ("range", "bytes=10-19"),
        ];
        assert_eq!(
            plan(&read(true, &two).unwrap().conditions, &info),
            Plan::Full
        );
        // Two If-Range lines never match.
        let two = [
            ("host", "x"),
            ("range", "bytes=0-9"),
            ("if-range", etag),
            ("if-range", etag),
        ];
        assert_eq!(
            plan(&read(true, &two).unwrap().conditions, &info),
            Plan::Full
        );
        let two = [
            ("host", "x"),
            ("if-modified-since", info.last_modified.as_str()),
            ("if-modified-since", info.last_modified.as_str()),
        ];
        assert_eq!(
            plan(&read(true, &two).unwrap().conditions, &info),
            Plan::Full
        );
    }

    #[test]
    fn unknown_etag() {
        let f = FileInfo::with(100, None, 1_700_000_000, "a.rpm");
        let c = Conditions {
            if_none_match: Some("\"x\"".into()),
            range: Some("bytes=0-9"),
            if_range: Some("\"x\""),
            ..Default::default()
        };
        assert_eq!(plan(&c, &f), Plan::Full);
        assert!(fields(&Plan::Full, &f).iter().all(|(k, _)| *k != "etag"));
        let c = Conditions {
            if_none_match: Some("*".into()),
            ..Default::default()
        };
        assert_eq!(plan(&c, &f), Plan::NotModified);
    }

    #[test]
    fn host_connection_and_special_fields() {
        assert_eq!(read(true, &[]).unwrap_err(), HeadError::Host);
        assert_eq!(
            read(true, &[("Host", "a"), ("host", "a")]).unwrap_err(),
            HeadError::Host
        );
        assert_eq!(
            read(false, &[("Host", "a"), ("host", "b")]).unwrap_err(),
            HeadError::Host
        );
        assert!(read(false, &[]).is_ok(), "HTTP/1.0 needs no Host");
        let long = "a".repeat(MAX_URI + 1);
        assert_eq!(
            read_fields(true, &long, [("host", &b"x"[..])]).unwrap_err(),
            HeadError::UriTooLong
        );
        let f = read(true, &[("host", "x"), ("connection", "Keep-Alive, Close")]).unwrap();
        assert!(f.close && f.keep_alive && !f.persistent(true));
        let f = read(false, &[("connection", "keep-alive")]).unwrap();
        assert!(f.persistent(false));
        assert!(!read(false, &[]).unwrap().persistent(false));
        assert!(read(true, &[("host", "x")]).unwrap().persistent(true));
        assert!(
            !read(true, &[("host", "x"), ("connection", "closed")])
                .unwrap()
                .close
        );
        for special in [
            ("transfer-encoding", "chunked"),
            ("content-length", "5"),
            ("expect", "100-continue"),
            ("upgrade", "h2c"),
        ] {
            assert!(
                read(true, &[("host", "x"), special]).unwrap().special,
                "{special:?}"
            );
        }
        assert!(
            !read(true, &[("host", "x"), ("content-length", "0")])
                .unwrap()
                .special
        );
    }
}
