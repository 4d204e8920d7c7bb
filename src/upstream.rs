//! The upstream side: an HTTPS client (reqwest on rustls) that opens a file from a repo's
//! mirrors in order, with connect and read timeouts, retries with backoff, failover to the next
//! mirror, Range resume with `If-Range`, conditional requests, and captive-portal detection.
//!
//! It hands back an open response; reading the body (and resuming when it breaks) is the
//! `fetch` module's job. [`Upstream::head`] asks mirrors about a file with a HEAD request
//! (no body crosses the uplink), for HEAD requests of files not stored. It never stores anything, and it treats an upstream error page as an
//! error, never as content. It also remembers, per repo, when upstream was last unreachable, so
//! a dead uplink costs one timeout per back-off period instead of one per request.

use crate::body::Body;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderValue};

use crate::config::{Config, RepoConfig, UpstreamConfig};
use crate::paths::RepoPath;
use crate::repodata;
use crate::stats::Histogram;

/// Largest mirrorlist accepted.
const MAX_MIRRORLIST: usize = 1 << 20;

/// How long a repo counts as offline after every mirror failed.
pub const OFFLINE_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("not found on any upstream mirror")]
    NotFound,
    #[error("repo {0:?} is not configured")]
    UnknownRepo(String),
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    #[error(
        "upstream answered an error page (HTML) instead of the file: a captive portal or a broken mirror"
    )]
    Html,
    #[error("upstream answered {0}")]
    Status(u16),
    #[error("upstream is failing: {0}")]
    Busy(String),
    #[error("upstream for this repo failed recently; retrying after a back-off")]
    Offline,
}

impl UpstreamError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, UpstreamError::NotFound)
    }
}

/// What to ask upstream for.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    /// Resume from this byte (`Range: bytes=N-`); 0 for the whole file.
    pub from: u64,
    /// Validator of the bytes already held, sent as `If-Range` when resuming.
    pub if_range: Option<String>,
    /// Validators of a stored copy, for a conditional request (revalidation).
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<String>,
}

/// An open upstream answer.
pub enum Opened {
    NotModified,
    Body(Box<Body>),
}

/// What a mirror said about a file in answer to a HEAD request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeadInfo {
    pub len: Option<u64>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

pub struct Upstream {
    client: reqwest::Client,
    cfg: UpstreamConfig,
    repos: HashMap<String, RepoConfig>,
    /// Mirrors resolved from mirrorlists, per repo, and when (empty: resolution failed).
    mirrorlists: tokio::sync::Mutex<HashMap<String, (Instant, Vec<String>)>>,
    offline_since: Mutex<HashMap<String, Instant>>,
    /// Mirror base URLs that were unreachable, and since when.
    mirror_down: Mutex<HashMap<String, Instant>>,
    /// How long upstream took from a request (GET or HEAD) to its response head, for every
    /// request that got an answer (whatever its status).
    pub latency: Histogram,
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_string())
}

/// `bytes START-END/TOTAL` → (START, TOTAL)
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

/// Is this answer an HTML page where a file was expected?
pub fn looks_like_error_page(path: &RepoPath, content_type: Option<&str>) -> bool {
    let name = path.file_name().to_ascii_lowercase();
    if name.ends_with(".html") || name.ends_with(".htm") {
        return false;
    }
    content_type.is_some_and(|ct| {
        let ct = ct.trim().to_ascii_lowercase();
        ct.starts_with("text/html") || ct.starts_with("application/xhtml")
    })
}

/// What is wrong with the start of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadStart {
    /// An HTML page: a captive portal or a mirror's error page.
    Html,
    /// Not the kind of file the name promises (the text says what was expected).
    NotA(&'static str),
}

/// Does the first chunk of a body fit what the file name promises? Catches error pages served
/// with a wrong content type, and bytes that cannot be the named kind of file.
pub fn check_first_bytes(path: &RepoPath, head: &[u8]) -> Result<(), BadStart> {
    let text = String::from_utf8_lossy(&head[..head.len().min(512)]).to_ascii_lowercase();
    let trimmed = text.trim_start();
    if trimmed.starts_with("<!doctype html") || trimmed.starts_with("<html") {
        return Err(BadStart::Html);
    }
    const KINDS: [(&str, &[u8], &str); 5] = [
        (".rpm", &[0xed, 0xab, 0xee, 0xdb], "an RPM package"),
        (".gz", &[0x1f, 0x8b], "gzip data"),
        (".xz", &[0xfd, b'7', b'z', b'X', b'Z'], "xz data"),
        (".zst", &[0x28, 0xb5, 0x2f, 0xfd], "zstd data"),
        (".bz2", b"BZh", "bzip2 data"),
    ];
    let name = path.file_name().to_ascii_lowercase();
    for (ext, magic, what) in KINDS {
        if name.ends_with(ext) {
            let ok = head.len() < magic.len() || head.starts_with(magic);
            return if ok {
                Ok(())
            } else {
                Err(BadStart::NotA(what))
            };
        }
    }
    Ok(())
}

impl Upstream {
    pub fn new(cfg: &Config) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("lanmirror/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(cfg.upstream.connect_timeout_secs))
            .read_timeout(Duration::from_secs(cfg.upstream.read_timeout_secs))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            client,
            cfg: cfg.upstream.clone(),
            repos: cfg
                .repos
                .iter()
                .map(|r| (r.name.clone(), r.clone()))
                .collect(),
            mirrorlists: tokio::sync::Mutex::new(HashMap::new()),
            offline_since: Mutex::new(HashMap::new()),
            mirror_down: Mutex::new(HashMap::new()),
            latency: Histogram::default(),
        })
    }

    /// True while `repo` is in its back-off after every mirror failed.
    pub fn is_offline(&self, repo: &str) -> bool {
        self.offline_since
            .lock()
            .ok()
            .and_then(|m| m.get(repo).copied())
            .is_some_and(|t| t.elapsed() < OFFLINE_BACKOFF)
    }

    fn mark(&self, repo: &str, reachable: bool) {
        let Ok(mut m) = self.offline_since.lock() else {
            return;
        };
        if reachable {
            if m.remove(repo).is_some() {
                tracing::info!(repo, "upstream is reachable again");
            }
        } else if m.insert(repo.to_string(), Instant::now()).is_none() {
            tracing::warn!(
                repo,
                "upstream unreachable: serving what is stored (stale metadata included) until it comes back; check the uplink"
            );
        }
    }

    /// The base URLs of `repo`, configured ones first, then those its mirrorlists name.
    async fn bases(&self, repo: &RepoConfig) -> Vec<String> {
        let mut out: Vec<String> = repo.urls.clone();
        if repo.mirrorlists.is_empty() {
            return out;
        }
        let mut cache = self.mirrorlists.lock().await;
        // Resolved once; a failed resolution is retried after the offline back-off, not on
        // every request (the lock is held meanwhile).
        let stale = cache
            .get(&repo.name)
            .is_none_or(|(at, m)| m.is_empty() && at.elapsed() >= OFFLINE_BACKOFF);
        if stale {
            let mut found = Vec::new();
            for ml in &repo.mirrorlists {
                match self.fetch_mirrorlist(ml).await {
                    Ok(m) => found.extend(m),
                    Err(e) => {
                        tracing::warn!(repo = %repo.name, mirrorlist = %ml, error = %e, "mirrorlist unusable")
                    }
                }
            }
            if !found.is_empty() {
                tracing::info!(repo = %repo.name, mirrors = found.len(), "mirrorlist resolved");
            }
            cache.insert(repo.name.clone(), (Instant::now(), found));
        }
        if let Some((_, m)) = cache.get(&repo.name) {
            out.extend(m.iter().cloned());
        }
        out
    }

    async fn fetch_mirrorlist(&self, url: &str) -> Result<Vec<String>, String> {
        let mut r = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        if !r.status().is_success() {
            return Err(format!("answered {}", r.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = r.chunk().await.map_err(|e| error_chain(&e))? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_MIRRORLIST {
                return Err(format!("larger than {MAX_MIRRORLIST} bytes"));
            }
        }
        Ok(repodata::parse_mirrorlist(&body))
    }

    /// The base URLs of `repo` to try, in order: mirrors that failed recently go last (still
    /// tried, but after the healthy ones). Fails fast while the repo's uplink is in back-off.
    async fn mirrors_in_order(&self, repo: &str) -> Result<Vec<String>, UpstreamError> {
        let rc = self
            .repos
            .get(repo)
            .ok_or_else(|| UpstreamError::UnknownRepo(repo.into()))?;
        if self.is_offline(repo) {
            return Err(UpstreamError::Offline);
        }
        let mut bases = self.bases(rc).await;
        if let Ok(down) = self.mirror_down.lock() {
            bases.sort_by_key(|b| down.get(b).is_some_and(|t| t.elapsed() < OFFLINE_BACKOFF));
        }
        Ok(bases)
    }

    /// Opens `path` of `repo`: mirrors in order, each retried with backoff on errors and 5xx;
    /// a 404 moves straight to the next mirror; NotFound only when every mirror said so.
    pub async fn open(
        &self,
        repo: &str,
        path: &RepoPath,
        ask: &Ask,
    ) -> Result<Opened, UpstreamError> {
        let bases = self.mirrors_in_order(repo).await?;
        let mut not_found = false;
        let mut answered = false;
        let mut last_err = UpstreamError::Unreachable("no mirror configured".into());
        for base in &bases {
            let url = join_url(base, path.as_str());
            let mut reachable = false;
            for attempt in 0..=self.cfg.retries {
                if attempt > 0 {
                    let backoff = Duration::from_millis(250u64 << (attempt - 1).min(5));
                    tokio::time::sleep(backoff).await;
                }
                match self.try_once(&url, path, ask).await {
                    Ok(o) => {
                        self.mark(repo, true);
                        self.mark_mirror(base, true);
                        return Ok(o);
                    }
                    Err(UpstreamError::NotFound) => {
                        not_found = true;
                        reachable = true;
                        break;
                    }
                    Err(e @ (UpstreamError::Html | UpstreamError::Status(_))) => {
                        if matches!(e, UpstreamError::Html) {
                            tracing::warn!(%url, "upstream answered an HTML page instead of the file (captive portal?); trying the next mirror");
                        }
                        reachable = true;
                        last_err = e;
                        break;
                    }
                    Err(e) => {
                        reachable |= matches!(e, UpstreamError::Busy(_));
                        tracing::debug!(%url, attempt, error = %e, "upstream attempt failed");
                        last_err = e;
                    }
                }
            }
            answered |= reachable;
            self.mark_mirror(base, reachable);
        }
        if not_found {
            // Every mirror that could answer said the file does not exist.
            self.mark(repo, true);
            return Err(UpstreamError::NotFound);
        }
        // Offline only when no mirror answered at all (the uplink, not one mirror).
        self.mark(repo, answered);
        Err(last_err)
    }

    /// Asks the mirrors of `repo`, in the order [`Upstream::open`] uses, about `path` with a
    /// HEAD request: one attempt per mirror, no body. `NotFound` only when every mirror that
    /// answered said 404.
    pub async fn head(&self, repo: &str, path: &RepoPath) -> Result<HeadInfo, UpstreamError> {
        let bases = self.mirrors_in_order(repo).await?;
        let (mut not_found, mut answered) = (false, false);
        let mut last_err = UpstreamError::Unreachable("no mirror configured".into());
        for base in &bases {
            let url = join_url(base, path.as_str());
            let asked = Instant::now();
            let resp = match self.client.head(&url).send().await {
                Ok(r) => {
                    self.latency.observe(asked.elapsed());
                    r
                }
                Err(e) => {
                    tracing::debug!(%url, error = %error_chain(&e), "upstream HEAD failed");
                    last_err = UpstreamError::Unreachable(format!("{url}: {}", error_chain(&e)));
                    self.mark_mirror(base, false);
                    continue;
                }
            };
            answered = true;
            self.mark_mirror(base, true);
            let h = resp.headers();
            match resp.status() {
                StatusCode::OK => {
                    if looks_like_error_page(
                        path,
                        h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
                    ) {
                        last_err = UpstreamError::Html;
                        continue;
                    }
                    self.mark(repo, true);
                    return Ok(HeadInfo {
                        len: header_str(h, header::CONTENT_LENGTH)
                            .and_then(|v| v.trim().parse().ok()),
                        etag: header_str(h, header::ETAG),
                        last_modified: header_str(h, header::LAST_MODIFIED),
                    });
                }
                StatusCode::NOT_FOUND | StatusCode::GONE => not_found = true,
                s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                    last_err = UpstreamError::Busy(format!("{url}: {s}"));
                }
                s => last_err = UpstreamError::Status(s.as_u16()),
            }
        }
        if not_found {
            self.mark(repo, true);
            return Err(UpstreamError::NotFound);
        }
        self.mark(repo, answered);
        Err(last_err)
    }

    fn mark_mirror(&self, base: &str, ok: bool) {
        let Ok(mut down) = self.mirror_down.lock() else {
            return;
        };
        if ok {
            down.remove(base);
        } else if down.insert(base.to_string(), Instant::now()).is_none() {
            tracing::info!(
                mirror = base,
                "mirror unreachable; trying it after the others for a while"
            );
        }
    }

    async fn try_once(
        &self,
        url: &str,
        path: &RepoPath,
        ask: &Ask,
    ) -> Result<Opened, UpstreamError> {
        let mut req = self.client.get(url);
        if ask.from > 0 {
            req = req.header(header::RANGE, format!("bytes={}-", ask.from));
            if let Some(v) = ask
                .if_range
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                req = req.header(header::IF_RANGE, v);
            }
        } else {
            if let Some(v) = ask
                .if_none_match
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                req = req.header(header::IF_NONE_MATCH, v);
            }
            if let Some(v) = ask
                .if_modified_since
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                req = req.header(header::IF_MODIFIED_SINCE, v);
            }
        }
        let asked = Instant::now();
        let resp = req
            .send()
            .await
            .map_err(|e| UpstreamError::Unreachable(format!("{url}: {}", error_chain(&e))))?;
        self.latency.observe(asked.elapsed());
        let status = resp.status();
        let h = resp.headers();
        match status {
            StatusCode::NOT_MODIFIED => return Ok(Opened::NotModified),
            StatusCode::NOT_FOUND | StatusCode::GONE => return Err(UpstreamError::NotFound),
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => {}
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                return Err(UpstreamError::Busy(format!("{url}: {s}")));
            }
            s => return Err(UpstreamError::Status(s.as_u16())),
        }
        if looks_like_error_page(
            path,
            h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        ) {
            return Err(UpstreamError::Html);
        }
        let etag = header_str(h, header::ETAG);
        let last_modified = header_str(h, header::LAST_MODIFIED);
        let len = resp.content_length();
        let (resumed, total) = if status == StatusCode::PARTIAL_CONTENT {
            match header_str(h, header::CONTENT_RANGE)
                .as_deref()
                .and_then(parse_content_range)
            {
                Some((start, total)) if start == ask.from && ask.from > 0 => (true, total),
                // A range we did not ask for: unusable.
                _ => return Err(UpstreamError::Status(206)),
            }
        } else {
            (false, len)
        };
        use futures_util::StreamExt;
        let stream = resp.bytes_stream().map(|r| r.map_err(|e| error_chain(&e)));
        Ok(Opened::Body(Box::new(Body {
            stream: Box::pin(stream),
            resumed,
            total,
            etag,
            last_modified,
            url: url.to_string(),
        })))
    }
}

pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `base` + `path`, with every byte of the path outside the URL-safe set percent-encoded, so
/// the upstream URL names exactly the file the checked `RepoPath` names.
pub fn join_url(base: &str, path: &str) -> String {
    let mut url = String::with_capacity(base.len() + path.len() + 1);
    url.push_str(base);
    if !base.ends_with('/') {
        url.push('/');
    }
    for b in path.bytes() {
        let safe = b.is_ascii_alphanumeric() || b"-._~+!$&'()*,;=:@/".contains(&b);
        if safe {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_and_urls() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert_eq!(join_url("http://a/b", "c/d"), "http://a/b/c/d");
        assert_eq!(join_url("http://a/b/", "c/d"), "http://a/b/c/d");
        assert_eq!(
            join_url("http://a/", "P/lib c++-1.0 é.rpm"),
            "http://a/P/lib%20c++-1.0%20%C3%A9.rpm"
        );
    }

    #[test]
    fn error_pages_are_recognised() {
        let rpm = RepoPath::parse_relative("Packages/a.rpm").unwrap();
        assert!(looks_like_error_page(
            &rpm,
            Some("text/html; charset=utf-8")
        ));
        assert!(!looks_like_error_page(&rpm, Some("application/x-rpm")));
        assert_eq!(
            check_first_bytes(&rpm, b"<html><body>login</body></html>"),
            Err(BadStart::Html)
        );
        assert_eq!(
            check_first_bytes(&rpm, &[0xed, 0xab, 0xee, 0xdb, 3, 0]),
            Ok(())
        );
        assert_eq!(
            check_first_bytes(&rpm, &[1, 2, 3, 4, 5]),
            Err(BadStart::NotA("an RPM package"))
        );
        let xml = RepoPath::parse_relative("repodata/repomd.xml").unwrap();
        assert_eq!(
            check_first_bytes(&xml, b"  <!DOCTYPE html><html>"),
            Err(BadStart::Html)
        );
        assert_eq!(
            check_first_bytes(&xml, b"<?xml version=\"1.0\"?><repomd>"),
            Ok(())
        );
        let page = RepoPath::parse_relative("index.html").unwrap();
        assert!(!looks_like_error_page(&page, Some("text/html")));
    }
}
