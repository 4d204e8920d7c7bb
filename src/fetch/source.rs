//! Where a transfer's bytes come from: the plan ([`plan`]: which kinds of source, in order),
//! the sources themselves ([`Source`]: bytes already held, a seed disk, a peer that holds the
//! checksum, the site's downloader, upstream) and one interface over them ([`Sources`]): find
//! the next usable source, open it from an offset, blame it when it fails, and the pace a peer
//! must keep ([`Pace`]).
//!
//! Not here: what a failure means for the transfer (`fetch::rules`) or the part file and
//! readers (`fetch`).

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncSeekExt;

use super::rules::{Blame, Kind};
use super::{Item, READ_CHUNK};
use crate::body::{Body, ByteStream};
use crate::checksum::ChecksumAlgo;
use crate::peer::{ContentRef, Peer, Peers};
use crate::seed::{SeedFile, Seeds};
use crate::upstream::{Ask, Opened, Upstream, UpstreamError};

/// A step of the miss path, in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A live peer that says it holds the checksum.
    Holder,
    /// The item's downloader at the site (when it is not this node).
    Downloader,
    /// A mounted bundle (`[seed] dirs`) holding the checksum.
    Seed,
    Upstream,
}

/// Where to look for an item, in order. `site`: peers may be asked (false for requests that
/// came from a peer, and for files that change in place). Peers and seed directories are used
/// only for files that never change once published and whose checksum this node's metadata
/// names, of a type this build computes (`has_checksum`; never md5): their bytes must be
/// checked against something they did not say ("nothing unverified is published"). A seed (a
/// local disk) comes first.
pub fn plan(site: bool, has_checksum: bool, immutable: bool, seeds: bool) -> Vec<Step> {
    let mut v = Vec::new();
    if immutable && has_checksum {
        if seeds {
            v.push(Step::Seed);
        }
        if site {
            v.extend([Step::Holder, Step::Downloader]);
        }
    }
    v.push(Step::Upstream);
    v
}

/// A source chosen for a transfer.
pub(super) enum Source {
    Holder(Peer),
    Downloader(Peer),
    Seed(SeedFile),
    Upstream,
    /// The part file already holds every byte (checked against metadata before it is used).
    Held,
}

/// The pace a peer source must keep during one attempt (see [`crate::peer::transfer_deadline`]).
pub(super) struct Pace {
    pub(super) start: tokio::time::Instant,
    pub(super) rate: u64,
    /// Bytes the attempt has to deliver, when known: a fixed deadline. Unknown: each byte
    /// received buys time at `rate`.
    pub(super) remaining: Option<u64>,
    pub(super) got: u64,
}

impl Pace {
    pub(super) fn deadline(&self) -> tokio::time::Instant {
        let bytes = self.remaining.unwrap_or(self.got);
        self.start + crate::peer::transfer_deadline(bytes, self.rate)
    }

    pub(super) fn too_slow(&self) -> String {
        format!(
            "sent {} bytes{} in {} s, below the minimum of {} bytes/s",
            self.got,
            self.remaining
                .map(|r| format!(" of {r}"))
                .unwrap_or_default(),
            self.start.elapsed().as_secs(),
            self.rate
        )
    }
}

impl Source {
    /// The slowest a source may send, for peers; `None` for upstream (its own timeouts and
    /// retries apply) and seed directories (a local disk).
    pub(super) fn min_rate(&self) -> Option<u64> {
        match self {
            Source::Holder(_) => Some(crate::peer::HOLDER_MIN_RATE),
            Source::Downloader(_) => Some(crate::peer::DOWNLOADER_MIN_RATE),
            Source::Seed(_) | Source::Upstream | Source::Held => None,
        }
    }

    /// How the transfer rules treat it.
    pub(super) fn rules_kind(&self) -> Kind {
        match self {
            Source::Upstream => Kind::Upstream,
            _ => Kind::Other,
        }
    }

    /// Where the bytes came from, in words for the log ("fetched from …").
    pub(super) fn origin(&self) -> &'static str {
        match self {
            Source::Holder(_) | Source::Downloader(_) => "the site",
            Source::Seed(_) => "a seed directory",
            Source::Upstream => "upstream",
            Source::Held => "an earlier download",
        }
    }

    /// Where the bytes came from, for `/metrics` (bytes held from an earlier download are
    /// this node's own disk).
    pub(super) fn counted_as(&self) -> crate::stats::Source {
        match self {
            Source::Holder(_) | Source::Downloader(_) => crate::stats::Source::Peer,
            Source::Seed(_) => crate::stats::Source::Seed,
            Source::Upstream => crate::stats::Source::Upstream,
            Source::Held => crate::stats::Source::Store,
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Holder(p) => write!(f, "peer {} (holder)", p.id),
            Source::Downloader(p) => write!(f, "peer {} (the site's downloader)", p.id),
            Source::Seed(s) => write!(f, "seed file {}", s.path.display()),
            Source::Upstream => f.write_str("upstream"),
            Source::Held => f.write_str("bytes held from an earlier download"),
        }
    }
}

/// A local file's bytes from `from` on, in [`READ_CHUNK`] pieces.
pub(super) async fn read_file(path: &std::path::Path, from: u64) -> Result<ByteStream, String> {
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.seek(io::SeekFrom::Start(from))
        .await
        .map_err(|e| e.to_string())?;
    let stream = futures_util::stream::unfold(Some(f), |f| async move {
        let mut f = f?;
        let mut buf = vec![0u8; READ_CHUNK];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e.to_string()), None)),
        }
    });
    Ok(Box::pin(stream))
}

/// Why a source could not be opened.
pub(super) enum OpenError {
    /// Upstream's own error (its statuses drive resume and restart rules).
    Upstream(UpstreamError),
    /// Any other source: the next one is tried.
    Other(String),
}

/// The sources this node can use.
pub(super) struct Sources {
    pub(super) upstream: Arc<Upstream>,
    pub(super) peers: Option<Arc<Peers>>,
    pub(super) seeds: Option<Arc<Seeds>>,
}

impl Sources {
    /// The next source of the plan that can be used now (upstream at the latest).
    pub(super) async fn next(&self, item: &Item, steps: &mut std::vec::IntoIter<Step>) -> Source {
        let sum = item.expected.as_ref().map(|e| &e.checksum);
        for step in steps.by_ref() {
            match (step, &self.peers, &self.seeds, sum) {
                (Step::Seed, _, Some(seeds), Some(c)) if c.algo == ChecksumAlgo::Sha256 => {
                    if let Some(f) = seeds.find(&c.digest) {
                        return Source::Seed(f);
                    }
                }
                (Step::Holder, Some(peers), _, Some(c)) => {
                    if let Some(p) = peers.holder(&ContentRef::Sum(c.clone())).await {
                        return Source::Holder(p);
                    }
                }
                (Step::Downloader, Some(peers), _, _) => {
                    if let Some(p) = peers.downloader_for(&item.key()) {
                        return Source::Downloader(p);
                    }
                }
                (Step::Upstream, ..) => return Source::Upstream,
                _ => {}
            }
        }
        Source::Upstream
    }

    /// The source to go on from after `left` failed. Background work the site's downloader
    /// could not send is deferred (`FetchError::Deferred`, the part file kept) rather than taken
    /// from upstream by this node: the site takes each file from upstream once.
    pub(super) async fn after(
        &self,
        item: &Item,
        class: crate::uplink::Class,
        left: &Source,
        steps: &mut std::vec::IntoIter<Step>,
    ) -> Result<Source, super::FetchError> {
        if matches!(left, Source::Downloader(_)) && class == crate::uplink::Class::Background {
            return Err(super::FetchError::Deferred(format!(
                "{left} could not send it now"
            )));
        }
        Ok(self.next(item, steps).await)
    }

    /// A source other than upstream was left: a failure to deliver is noted; bad bytes or a
    /// pace below the minimum put a peer aside; bad bytes from a seed are logged (its disk is
    /// damaged).
    pub(super) fn blame(&self, s: &Source, blame: &Blame) {
        match (s, &self.peers, blame) {
            (Source::Holder(p) | Source::Downloader(p), Some(peers), Blame::BadBytes(why)) => {
                peers.put_aside(p, why)
            }
            (Source::Holder(p) | Source::Downloader(p), Some(peers), Blame::TooSlow(why)) => {
                peers.too_slow(p, why)
            }
            (Source::Holder(p) | Source::Downloader(p), Some(peers), Blame::Failed(why)) => {
                peers.note_failure(p, why)
            }
            (Source::Seed(f), _, Blame::BadBytes(why)) => {
                tracing::warn!(file = %f.path.display(), reason = %why, "a seed directory file failed verification (damaged disk?); not used");
            }
            _ => {}
        }
    }

    /// Opens `source` for `item` as `ask` says (from `ask.from`; the conditions and the
    /// resume validator concern upstream only). `class`: the transfer's class now (a promoted
    /// background transfer asks the site's downloader as interactive).
    pub(super) async fn open(
        &self,
        item: &Item,
        class: crate::uplink::Class,
        source: &Source,
        ask: &Ask,
    ) -> Result<Opened, OpenError> {
        if matches!(source, Source::Upstream) {
            return self
                .upstream
                .open(&item.repo, &item.path, ask)
                .await
                .map_err(OpenError::Upstream);
        }
        self.open_other(item, class, source, ask.from)
            .await
            .map(Opened::Body)
            .map_err(OpenError::Other)
    }

    async fn open_other(
        &self,
        item: &Item,
        class: crate::uplink::Class,
        source: &Source,
        from: u64,
    ) -> Result<Box<Body>, String> {
        let sum = item
            .expected
            .as_ref()
            .map(|e| ContentRef::Sum(e.checksum.clone()));
        let (stream, total) = match (source, &self.peers, sum) {
            (Source::Holder(p), Some(peers), Some(r)) => {
                let b = peers.get(p, &r, from).await.map_err(|e| e.to_string())?;
                (b.stream, b.total)
            }
            (Source::Downloader(p), Some(peers), _) => {
                let b = peers
                    .download(
                        p,
                        &item.repo,
                        item.path.as_str(),
                        item.expected.as_ref(),
                        from,
                        class,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                (b.stream, b.total)
            }
            (Source::Seed(f), ..) => (read_file(&f.path, from).await?, Some(f.size)),
            _ => return Err("no such source".into()),
        };
        Ok(Box::new(Body {
            stream,
            resumed: true,
            total,
            etag: None,
            last_modified: None,
            url: source.to_string(),
        }))
    }
}

impl Source {
    /// Whether the bytes come from another node of the site.
    pub(super) fn is_peer(&self) -> bool {
        matches!(self, Source::Holder(_) | Source::Downloader(_))
    }

    /// Whether the bytes come from a seed directory.
    pub(super) fn is_seed(&self) -> bool {
        matches!(self, Source::Seed(_))
    }
}
