//! Parsers for RPM repository metadata: `repomd.xml`, `primary.xml[.gz|.xz|.bz2|.zst]`
//! and plain-text mirrorlists.
//!
//! The cache needs three facts from a repository: which metadata files exist
//! (with their checksums and sizes, from `repomd.xml`), which package files exist
//! (with their checksums and sizes, from `primary.xml`), and which mirrors to ask
//! (from a mirrorlist). This module extracts exactly those facts and nothing more.
//!
//! What this module deliberately does **not** do:
//!
//! * No I/O of its own and no network: every function works on a byte slice or a
//!   caller-supplied [`Read`]er, so everything here is pure and fuzzable.
//! * No checksum *computation*: [`Checksum`] only carries the expected digest.
//!   Verifying downloaded bytes against it is the caller's job.
//! * No zchunk (`.zck`) decoding, no `filelists`/`other`/`updateinfo`/comps
//!   parsing, no dependency data: only location, checksum and size are read.
//! * No resolution of `xml:base` on `<location>`: the `href` is reported as
//!   written (relative to the repository root), the base is ignored.
//!
//! Safety properties: hrefs are validated (no absolute paths or URLs, no `..`,
//! no NUL, backslash or control characters), every required field is checked and
//! reported by name, decompression and XML errors are errors (never a silent
//! partial result), and memory stays bounded while streaming `primary.xml`: a
//! single XML token is limited to [`MAX_XML_TOKEN_BYTES`].

use std::io::{self, BufRead, BufReader, Read};

pub use crate::checksum::{Checksum, ChecksumAlgo};
use quick_xml::NsReader;
use quick_xml::XmlVersion;
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::name::{Namespace, ResolveResult};

/// XML namespace of `repomd.xml`.
pub const REPO_NS: &str = "http://linux.duke.edu/metadata/repo";
/// XML namespace of `primary.xml`'s common (unprefixed) elements.
pub const COMMON_NS: &str = "http://linux.duke.edu/metadata/common";
/// Largest single XML token (tag, text run, comment...) accepted, in bytes.
/// Bounds the parser's memory use whatever the input.
pub const MAX_XML_TOKEN_BYTES: u64 = 1 << 20;
/// Largest text content kept for one field (checksum, size, name, revision).
const MAX_FIELD_TEXT: usize = 4096;
/// Deepest element nesting accepted (real documents nest 4 or 5 levels).
const MAX_DEPTH: usize = 64;
/// Memory limit for the xz decoder (xz -9 needs about 65 MiB).
const XZ_MEMLIMIT: u64 = 128 << 20;
/// Largest zstd window accepted, as a power of two (128 MiB, zstd's default cap).
const ZSTD_WINDOW_LOG_MAX: u32 = 27;
/// Read buffer size for the decompressed stream.
const READ_BUF: usize = 64 * 1024;

/// Everything that can go wrong while parsing repository metadata.
#[derive(Debug, thiserror::Error)]
pub enum RepodataError {
    /// The input is not well-formed XML, or not the expected document.
    #[error("malformed XML at byte {position}: {message}")]
    Xml {
        /// Byte offset in the (decompressed) document.
        position: u64,
        /// What was wrong.
        message: String,
    },
    /// A required element or attribute is absent.
    #[error("{context}: missing {field}")]
    Missing {
        /// The missing field, e.g. `"<checksum>"` or `"<location href>"`.
        field: &'static str,
        /// Which package or record, e.g. `package #3 (bash)`.
        context: String,
    },
    /// A field is present but its value is unusable.
    #[error("{context}: invalid {field}: {reason}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// Which package or record.
        context: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A checksum has an unknown algorithm, bad hex digits or the wrong length.
    #[error("bad checksum: {0}")]
    BadChecksum(String),
    /// A location href that could escape the repository root.
    #[error("{context}: unsafe href {href:?}: {reason}")]
    UnsafeHref {
        /// The href as written.
        href: String,
        /// Which package or record.
        context: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Reading or decompressing the input failed (truncated or corrupt stream).
    #[error("reading or decompressing failed: {0}")]
    Decompress(#[source] io::Error),
    /// A size limit was exceeded.
    #[error("{what} exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The limit, in bytes.
        limit: u64,
    },
}

/// The parsed `repodata/repomd.xml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoMd {
    /// `<revision>` text, if present.
    pub revision: Option<String>,
    /// One entry per `<data>` element, in document order.
    pub records: Vec<RepoMdRecord>,
}

/// One `<data type="…">` element of `repomd.xml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoMdRecord {
    /// The `type` attribute: `primary`, `filelists`, `group_gz`, `updateinfo`,
    /// `modules`, `primary_zck`, ...
    pub kind: String,
    /// `<location href>`, relative to the repository root,
    /// e.g. `repodata/abc-primary.xml.gz`. Validated by [`validate_href`].
    pub href: String,
    /// `<checksum>` of the file as stored (not `<open-checksum>`).
    pub checksum: Checksum,
    /// `<size>` of the file as stored (not `<open-size>`), if given.
    pub size: Option<u64>,
}

/// How a metadata file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Not compressed, or a format this module does not decode (e.g. `.zck`).
    None,
    /// `.gz` (concatenated members accepted).
    Gzip,
    /// `.xz` (concatenated streams accepted).
    Xz,
    /// `.zst` (concatenated frames accepted).
    Zstd,
    /// `.bz2` (concatenated streams accepted).
    Bzip2,
}

impl Compression {
    /// Guesses the compression from the href's extension (case-insensitive):
    /// `.gz`, `.xz`, `.zst`/`.zstd`, `.bz2`; anything else (including `.zck`,
    /// which is not decoded here) is [`Compression::None`].
    pub fn from_href(href: &str) -> Compression {
        let lower = href.to_ascii_lowercase();
        if lower.ends_with(".gz") {
            Compression::Gzip
        } else if lower.ends_with(".xz") {
            Compression::Xz
        } else if lower.ends_with(".zst") || lower.ends_with(".zstd") {
            Compression::Zstd
        } else if lower.ends_with(".bz2") {
            Compression::Bzip2
        } else {
            Compression::None
        }
    }
}

/// One `<package>` of `primary.xml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageEntry {
    /// `<location href>`, relative to the repository root. Validated by [`validate_href`].
    pub href: String,
    /// The package file's `<checksum>`.
    pub checksum: Checksum,
    /// `<size package=…>`: the package file's size in bytes.
    pub size: u64,
}

/// Checks that an href is a plain relative path inside the repository.
///
/// Rejects: empty hrefs, absolute paths (leading `/`), URLs or anything with a
/// scheme-like prefix (`http:`, `file:`, `c:` …: a `:` before the first `/`),
/// any `..` (even inside a file name), NUL, backslash and other ASCII control
/// characters. Returns the reason on rejection.
pub fn validate_href(href: &str) -> Result<(), &'static str> {
    if href.is_empty() {
        return Err("empty");
    }
    if href.starts_with('/') {
        return Err("absolute path");
    }
    if href.contains('\0') {
        return Err("contains NUL");
    }
    if href.contains('\\') {
        return Err("contains a backslash");
    }
    if href.chars().any(|c| c.is_ascii_control()) {
        return Err("contains a control character");
    }
    if href.contains("..") {
        return Err("contains \"..\"");
    }
    let first_segment = href.split('/').next().unwrap_or(href);
    if first_segment.contains(':') {
        return Err("absolute URL or scheme prefix");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Streaming plumbing
// ---------------------------------------------------------------------------

/// A `BufRead` adapter that (a) limits how many bytes one XML token may span,
/// and (b) keeps the underlying I/O error, which quick-xml would otherwise only
/// hand back behind an `Arc`.
struct Guard<R> {
    inner: R,
    since_reset: u64,
    exceeded: bool,
    error: Option<io::Error>,
}

impl<R: BufRead> Guard<R> {
    fn new(inner: R) -> Self {
        Guard {
            inner,
            since_reset: 0,
            exceeded: false,
            error: None,
        }
    }

    /// Called before each XML event: the budget is per token.
    fn reset(&mut self) {
        self.since_reset = 0;
    }
}

impl<R: BufRead> Read for Guard<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = {
            let avail = self.fill_buf()?;
            let n = avail.len().min(out.len());
            out[..n].copy_from_slice(&avail[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Guard<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let budget = MAX_XML_TOKEN_BYTES.saturating_sub(self.since_reset);
        if budget == 0 {
            self.exceeded = true;
            return Err(io::Error::other("XML token too large"));
        }
        let budget = usize::try_from(budget).unwrap_or(usize::MAX);
        match self.inner.fill_buf() {
            // Never hand out more than the remaining budget, so one token can
            // never make quick-xml buffer more than MAX_XML_TOKEN_BYTES.
            Ok(buf) => Ok(buf.get(..budget).unwrap_or(buf)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let msg = e.to_string();
                self.error = Some(e);
                Err(io::Error::other(msg))
            }
        }
    }

    fn consume(&mut self, amt: usize) {
        self.since_reset = self
            .since_reset
            .saturating_add(u64::try_from(amt).unwrap_or(u64::MAX));
        self.inner.consume(amt);
    }
}

/// The decompressing reader for each [`Compression`].
enum Decoder<R: Read> {
    Plain(R),
    Gzip(flate2::read::MultiGzDecoder<R>),
    Xz(liblzma::read::XzDecoder<R>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<R>>),
    Bzip2(bzip2::read::MultiBzDecoder<R>),
}

impl<R: Read> Decoder<R> {
    fn new(reader: R, compression: Compression) -> Result<Self, RepodataError> {
        Ok(match compression {
            Compression::None => Decoder::Plain(reader),
            Compression::Gzip => Decoder::Gzip(flate2::read::MultiGzDecoder::new(reader)),
            Compression::Xz => {
                let stream = liblzma::stream::Stream::new_stream_decoder(
                    XZ_MEMLIMIT,
                    liblzma::stream::CONCATENATED,
                )
                .map_err(|e| RepodataError::Decompress(e.into()))?;
                Decoder::Xz(liblzma::read::XzDecoder::new_stream(reader, stream))
            }
            Compression::Zstd => {
                let mut d =
                    zstd::stream::read::Decoder::new(reader).map_err(RepodataError::Decompress)?;
                d.window_log_max(ZSTD_WINDOW_LOG_MAX)
                    .map_err(RepodataError::Decompress)?;
                Decoder::Zstd(d)
            }
            Compression::Bzip2 => Decoder::Bzip2(bzip2::read::MultiBzDecoder::new(reader)),
        })
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
            Decoder::Xz(r) => r.read(buf),
            Decoder::Zstd(r) => r.read(buf),
            Decoder::Bzip2(r) => r.read(buf),
        }
    }
}

/// What the event loop hands to the document-specific handlers.
enum Ev {
    /// An element opened; `empty` when it is `<x/>` (no matching `End`).
    Open { depth: usize, empty: bool },
    /// The element at `depth` closed.
    Close { depth: usize },
    /// Text (already unescaped) directly inside the open element at `depth`.
    Text { depth: usize, text: String },
}

/// Namespace-aware, depth-tracking XML event pump with bounded memory.
struct Pump<R: BufRead> {
    reader: NsReader<Guard<R>>,
    buf: Vec<u8>,
    depth: usize,
    root_seen: bool,
    /// Open elements' names, for the "truncated inside <x>" message.
    stack: Vec<String>,
}

/// Element data extracted from a start tag (owned: it outlives the buffer).
struct Elem {
    /// Local name, only when the element is in the expected namespace
    /// (or in no namespace at all); `None` for foreign elements such as `rpm:*`.
    local: Option<String>,
    start: BytesStart<'static>,
}

impl Elem {
    fn is(&self, name: &str) -> bool {
        self.local.as_deref() == Some(name)
    }
}

impl<R: BufRead> Pump<R> {
    fn new(inner: R) -> Self {
        let mut reader = NsReader::from_reader(Guard::new(inner));
        reader.config_mut().check_end_names = true;
        Pump {
            reader,
            buf: Vec::new(),
            depth: 0,
            root_seen: false,
            stack: Vec::new(),
        }
    }

    fn position(&self) -> u64 {
        self.reader.buffer_position()
    }

    fn xml_error(&self, message: impl Into<String>) -> RepodataError {
        RepodataError::Xml {
            position: self.position(),
            message: message.into(),
        }
    }

    fn map_err(&mut self, err: quick_xml::Error) -> RepodataError {
        match err {
            quick_xml::Error::Io(io_err) => {
                let guard = self.reader.get_mut();
                if guard.exceeded {
                    RepodataError::TooLarge {
                        what: "a single XML token",
                        limit: MAX_XML_TOKEN_BYTES,
                    }
                } else if let Some(e) = guard.error.take() {
                    RepodataError::Decompress(e)
                } else {
                    RepodataError::Decompress(io::Error::new(io_err.kind(), io_err.to_string()))
                }
            }
            other => RepodataError::Xml {
                position: self.reader.error_position(),
                message: other.to_string(),
            },
        }
    }

    /// Returns the next interesting event, `None` at a well-formed end of
    /// document. `ns` is the namespace the document's elements must be in.
    fn next(&mut self, ns: &str) -> Result<Option<(Ev, Option<Elem>)>, RepodataError> {
        loop {
            self.reader.get_mut().reset();
            self.buf.clear();
            let (in_ns, event) = match self.reader.read_resolved_event_into(&mut self.buf) {
                Ok((res, ev)) => {
                    let in_ns = match res {
                        ResolveResult::Unbound => true,
                        ResolveResult::Bound(Namespace(n)) => n == ns,
                        ResolveResult::Unknown(_) => false,
                    };
                    (in_ns, ev.into_owned())
                }
                Err(e) => return Err(self.map_err(e)),
            };
            match event {
                Event::Start(_) | Event::Empty(_) if self.depth == 0 && self.root_seen => {
                    return Err(self.xml_error("more than one root element"));
                }
                Event::Start(start) => {
                    if self.depth >= MAX_DEPTH {
                        return Err(self
                            .xml_error(format!("elements nested deeper than {MAX_DEPTH} levels")));
                    }
                    self.depth = self.depth.saturating_add(1);
                    self.root_seen = true;
                    let elem = make_elem(start, in_ns);
                    self.stack.push(elem.start.name().as_ref().to_owned());
                    let ev = Ev::Open {
                        depth: self.depth,
                        empty: false,
                    };
                    return Ok(Some((ev, Some(elem))));
                }
                Event::Empty(start) => {
                    self.root_seen = true;
                    let elem = make_elem(start, in_ns);
                    let ev = Ev::Open {
                        depth: self.depth.saturating_add(1),
                        empty: true,
                    };
                    return Ok(Some((ev, Some(elem))));
                }
                Event::End(_) => {
                    let depth = self.depth;
                    if depth == 0 {
                        return Err(self.xml_error("unmatched end tag"));
                    }
                    self.depth -= 1;
                    self.stack.pop();
                    return Ok(Some((Ev::Close { depth }, None)));
                }
                Event::Text(t) => {
                    let text = t.xml10_content().into_owned();
                    return Ok(Some((self.text(text), None)));
                }
                Event::CData(c) => {
                    let text = c.into_inner().into_owned();
                    return Ok(Some((self.text(text), None)));
                }
                Event::GeneralRef(r) => {
                    let text = self.resolve_ref(&r)?;
                    return Ok(Some((self.text(text), None)));
                }
                Event::Eof => {
                    if let Some(open) = self.stack.last() {
                        let msg = format!("unexpected end of document inside <{open}>");
                        return Err(self.xml_error(msg));
                    }
                    if !self.root_seen {
                        return Err(self.xml_error("no root element"));
                    }
                    return Ok(None);
                }
                Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
            }
        }
    }

    fn text(&self, text: String) -> Ev {
        Ev::Text {
            depth: self.depth,
            text,
        }
    }

    fn resolve_ref(&self, r: &BytesRef<'_>) -> Result<String, RepodataError> {
        match r.resolve_char_ref() {
            Ok(Some(c)) => Ok(c.to_string()),
            Ok(None) => match quick_xml::escape::resolve_predefined_entity(r) {
                Some(s) => Ok(s.to_owned()),
                None => Err(self.xml_error(format!("unknown entity &{};", &**r))),
            },
            Err(e) => Err(self.xml_error(e.to_string())),
        }
    }
}

fn make_elem(start: BytesStart<'static>, in_ns: bool) -> Elem {
    let local = in_ns.then(|| start.local_name().as_ref().to_owned());
    Elem { local, start }
}

/// Reads one attribute's unescaped value.
fn attr(
    elem: &Elem,
    name: &str,
    context: &dyn Fn() -> String,
) -> Result<Option<String>, RepodataError> {
    let invalid = |reason: String| RepodataError::Invalid {
        field: "attribute",
        context: context(),
        reason,
    };
    match elem.start.try_get_attribute(name) {
        Ok(Some(a)) => match a.normalized_value(XmlVersion::Implicit1_0) {
            Ok(v) => Ok(Some(v.into_owned())),
            Err(e) => Err(invalid(format!("{name}: {e}"))),
        },
        Ok(None) => Ok(None),
        Err(e) => Err(invalid(format!("{name}: {e}"))),
    }
}

/// Parses a strictly decimal `u64` (no sign, no spaces inside).
fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Accumulates an element's text with a size cap.
#[derive(Default)]
struct TextBuf {
    text: String,
    overflow: bool,
}

impl TextBuf {
    fn push(&mut self, s: &str) {
        if self.text.len().saturating_add(s.len()) > MAX_FIELD_TEXT {
            self.overflow = true;
        } else {
            self.text.push_str(s);
        }
    }
}

fn checksum_from(
    algo_name: Option<String>,
    text: &TextBuf,
    context: &str,
) -> Result<Checksum, RepodataError> {
    let Some(algo_name) = algo_name else {
        return Err(RepodataError::Missing {
            field: "<checksum type>",
            context: context.to_owned(),
        });
    };
    let Some(algo) = ChecksumAlgo::from_name(&algo_name) else {
        return Err(RepodataError::BadChecksum(format!(
            "{context}: unknown checksum type {algo_name:?}"
        )));
    };
    if text.overflow {
        return Err(RepodataError::BadChecksum(format!(
            "{context}: checksum text longer than {MAX_FIELD_TEXT} bytes"
        )));
    }
    Checksum::from_hex(algo, &text.text).map_err(|crate::checksum::ChecksumError(m)| {
        RepodataError::BadChecksum(format!("{context}: {m}"))
    })
}

fn checked_href(href: Option<String>, context: &str) -> Result<String, RepodataError> {
    let Some(href) = href else {
        return Err(RepodataError::Missing {
            field: "<location href>",
            context: context.to_owned(),
        });
    };
    match validate_href(&href) {
        Ok(()) => Ok(href),
        Err(reason) => Err(RepodataError::UnsafeHref {
            href,
            context: context.to_owned(),
            reason,
        }),
    }
}

fn duplicate(field: &'static str, context: String) -> RepodataError {
    RepodataError::Invalid {
        field,
        context,
        reason: "appears more than once".to_owned(),
    }
}

// ---------------------------------------------------------------------------
// repomd.xml
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum RepoMdText {
    Revision,
    Checksum,
    Size,
}

#[derive(Default)]
struct RecordState {
    index: usize,
    kind: String,
    checksum_type: Option<String>,
    checksum: Option<TextBuf>,
    href: Option<String>,
    size: Option<TextBuf>,
    location_seen: bool,
}

impl RecordState {
    fn context(&self) -> String {
        rec_context(self.index, &self.kind)
    }

    fn finish(self) -> Result<RepoMdRecord, RepodataError> {
        let context = self.context();
        let Some(text) = self.checksum else {
            return Err(RepodataError::Missing {
                field: "<checksum>",
                context,
            });
        };
        let checksum = checksum_from(self.checksum_type, &text, &context)?;
        let href = checked_href(self.href, &context)?;
        let size = match self.size {
            None => None,
            Some(t) => match parse_u64(&t.text).filter(|_| !t.overflow) {
                Some(n) => Some(n),
                None => {
                    return Err(RepodataError::Invalid {
                        field: "<size>",
                        context,
                        reason: format!("not a decimal byte count: {:?}", t.text.trim()),
                    });
                }
            },
        };
        Ok(RepoMdRecord {
            kind: self.kind,
            href,
            checksum,
            size,
        })
    }
}

/// Parses `repodata/repomd.xml`.
///
/// Takes, for each `<data type=…>`, the `<checksum>`, `<location href>` and
/// `<size>` that are its direct children; `<open-checksum>`, `<header-checksum>`,
/// `<open-size>`, `<header-size>`, `<timestamp>` and unknown elements are
/// ignored. `<checksum>` and `<location>` are required, `<size>` is optional.
pub fn parse_repomd(xml: &[u8]) -> Result<RepoMd, RepodataError> {
    let mut pump = Pump::new(xml);
    let mut revision: Option<TextBuf> = None;
    let mut records = Vec::new();
    let mut record: Option<RecordState> = None;
    let mut collecting: Option<RepoMdText> = None;
    let mut data_index = 0usize;

    while let Some((ev, elem)) = pump.next(REPO_NS)? {
        match (ev, elem) {
            (Ev::Open { depth: 1, .. }, Some(e)) if !e.is("repomd") => {
                return Err(pump.xml_error(format!(
                    "root element is <{}>, expected <repomd> in {REPO_NS}",
                    e.start.name().as_ref()
                )));
            }
            (Ev::Open { depth: 2, empty }, Some(e)) => {
                if e.is("revision") {
                    if revision.is_some() {
                        return Err(duplicate("<revision>", "repomd".to_owned()));
                    }
                    revision = Some(TextBuf::default());
                    if !empty {
                        collecting = Some(RepoMdText::Revision);
                    }
                } else if e.is("data") {
                    data_index += 1;
                    let index = data_index;
                    let ctx = || format!("repomd <data> #{index}");
                    let Some(kind) = attr(&e, "type", &ctx)? else {
                        return Err(RepodataError::Missing {
                            field: "<data type>",
                            context: ctx(),
                        });
                    };
                    let state = RecordState {
                        index,
                        kind,
                        ..RecordState::default()
                    };
                    if empty {
                        records.push(state.finish()?);
                    } else {
                        record = Some(state);
                    }
                }
            }
            (Ev::Open { depth: 3, empty }, Some(e)) => {
                let Some(rec) = record.as_mut() else { continue };
                let ctx = || rec_context(rec.index, &rec.kind);
                if e.is("checksum") {
                    if rec.checksum.is_some() {
                        return Err(duplicate("<checksum>", ctx()));
                    }
                    rec.checksum_type = attr(&e, "type", &ctx)?;
                    rec.checksum = Some(TextBuf::default());
                    if !empty {
                        collecting = Some(RepoMdText::Checksum);
                    }
                } else if e.is("location") {
                    if rec.location_seen {
                        return Err(duplicate("<location>", ctx()));
                    }
                    rec.location_seen = true;
                    rec.href = attr(&e, "href", &ctx)?;
                } else if e.is("size") {
                    if rec.size.is_some() {
                        return Err(duplicate("<size>", ctx()));
                    }
                    rec.size = Some(TextBuf::default());
                    if !empty {
                        collecting = Some(RepoMdText::Size);
                    }
                }
            }
            (Ev::Text { depth, text: t }, _) => {
                let target = match collecting {
                    Some(RepoMdText::Revision) if depth == 2 => revision.as_mut(),
                    Some(RepoMdText::Checksum) if depth == 3 => {
                        record.as_mut().and_then(|r| r.checksum.as_mut())
                    }
                    Some(RepoMdText::Size) if depth == 3 => {
                        record.as_mut().and_then(|r| r.size.as_mut())
                    }
                    _ => None,
                };
                if let Some(buf) = target {
                    buf.push(&t);
                }
            }
            (Ev::Close { depth }, _) => {
                if depth <= 3 {
                    collecting = None;
                }
                if depth == 2 {
                    if let Some(rec) = record.take() {
                        records.push(rec.finish()?);
                    }
                }
            }
            _ => {}
        }
    }

    let revision = match revision {
        Some(t) if t.overflow => {
            return Err(RepodataError::TooLarge {
                what: "<revision>",
                limit: MAX_FIELD_TEXT as u64,
            });
        }
        Some(t) => Some(t.text.trim().to_owned()),
        None => None,
    };
    Ok(RepoMd { revision, records })
}

fn rec_context(index: usize, kind: &str) -> String {
    format!("repomd <data> #{index} (type {kind:?})")
}

// ---------------------------------------------------------------------------
// primary.xml
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum PrimaryText {
    Name,
    Checksum,
}

#[derive(Default)]
struct PackageState {
    index: usize,
    name: TextBuf,
    name_seen: bool,
    checksum_type: Option<String>,
    checksum: Option<TextBuf>,
    size: Option<u64>,
    size_seen: bool,
    href: Option<String>,
    location_seen: bool,
}

impl PackageState {
    fn context(&self) -> String {
        let name = self.name.text.trim();
        if name.is_empty() {
            format!("package #{}", self.index)
        } else {
            format!("package #{} ({name})", self.index)
        }
    }

    fn finish(self) -> Result<PackageEntry, RepodataError> {
        let context = self.context();
        let Some(text) = self.checksum else {
            return Err(RepodataError::Missing {
                field: "<checksum>",
                context,
            });
        };
        let checksum = checksum_from(self.checksum_type, &text, &context)?;
        let Some(size) = self.size else {
            return Err(RepodataError::Missing {
                field: "<size package>",
                context,
            });
        };
        let href = checked_href(self.href, &context)?;
        Ok(PackageEntry {
            href,
            checksum,
            size,
        })
    }
}

/// Streams `primary.xml` (compressed as given) from `reader` and calls
/// `on_package` once per `<package>`, in document order. Returns the count.
///
/// Only the direct children of `<package>` in the common namespace
/// (`http://linux.duke.edu/metadata/common`) are read: `<checksum type=…>`,
/// `<size package=…>` and `<location href=…>` are required, `<name>` is used in
/// error messages. Everything under `<format>` (the `rpm:` elements) is skipped.
///
/// A `<location>` with an `xml:base` attribute is still reported with its
/// `href` alone: the base is ignored, so such packages look like they live
/// in this repository.
///
/// Memory stays bounded whatever the file size: the decoder is read through a
/// buffered streaming XML reader and one XML token is limited to
/// [`MAX_XML_TOKEN_BYTES`]. Packages already passed to `on_package` stay passed
/// if a later error (truncation, corruption, bad field) is returned; callers
/// must treat an `Err` as "this primary.xml is unusable".
pub fn parse_primary<R: Read>(
    reader: R,
    compression: Compression,
    mut on_package: impl FnMut(PackageEntry),
) -> Result<usize, RepodataError> {
    let decoder = Decoder::new(reader, compression)?;
    let mut pump = Pump::new(BufReader::with_capacity(READ_BUF, decoder));
    let mut count = 0usize;
    let mut pkg: Option<PackageState> = None;
    let mut collecting: Option<PrimaryText> = None;
    let mut package_index = 0usize;

    while let Some((ev, elem)) = pump.next(COMMON_NS)? {
        match (ev, elem) {
            (Ev::Open { depth: 1, .. }, Some(e)) if !e.is("metadata") => {
                return Err(pump.xml_error(format!(
                    "root element is <{}>, expected <metadata> in {COMMON_NS}",
                    e.start.name().as_ref()
                )));
            }
            (Ev::Open { depth: 2, empty }, Some(e)) if e.is("package") => {
                package_index += 1;
                let state = PackageState {
                    index: package_index,
                    ..PackageState::default()
                };
                if empty {
                    on_package(state.finish()?);
                    count += 1;
                } else {
                    pkg = Some(state);
                }
            }
            (Ev::Open { depth: 3, empty }, Some(e)) => {
                let Some(p) = pkg.as_mut() else { continue };
                if e.is("name") {
                    if p.name_seen {
                        return Err(duplicate("<name>", p.context()));
                    }
                    p.name_seen = true;
                    if !empty {
                        collecting = Some(PrimaryText::Name);
                    }
                } else if e.is("checksum") {
                    if p.checksum.is_some() {
                        return Err(duplicate("<checksum>", p.context()));
                    }
                    let ctx = || p.context();
                    p.checksum_type = attr(&e, "type", &ctx)?;
                    p.checksum = Some(TextBuf::default());
                    if !empty {
                        collecting = Some(PrimaryText::Checksum);
                    }
                } else if e.is("size") {
                    if p.size_seen {
                        return Err(duplicate("<size>", p.context()));
                    }
                    p.size_seen = true;
                    let ctx = || p.context();
                    if let Some(v) = attr(&e, "package", &ctx)? {
                        match parse_u64(&v) {
                            Some(n) => p.size = Some(n),
                            None => {
                                return Err(RepodataError::Invalid {
                                    field: "<size package>",
                                    context: p.context(),
                                    reason: format!("not a decimal byte count: {v:?}"),
                                });
                            }
                        }
                    }
                } else if e.is("location") {
                    if p.location_seen {
                        return Err(duplicate("<location>", p.context()));
                    }
                    p.location_seen = true;
                    let ctx = || p.context();
                    p.href = attr(&e, "href", &ctx)?;
                }
            }
            (Ev::Text { depth: 3, text: t }, _) => {
                if let Some(p) = pkg.as_mut() {
                    match collecting {
                        Some(PrimaryText::Name) => p.name.push(&t),
                        Some(PrimaryText::Checksum) => {
                            if let Some(c) = p.checksum.as_mut() {
                                c.push(&t);
                            }
                        }
                        None => {}
                    }
                }
            }
            (Ev::Close { depth }, _) => {
                if depth <= 3 {
                    collecting = None;
                }
                if depth == 2 {
                    if let Some(p) = pkg.take() {
                        on_package(p.finish()?);
                        count += 1;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(count)
}

// ---------------------------------------------------------------------------
// mirrorlist
// ---------------------------------------------------------------------------

/// Parses a plain-text mirrorlist: one URL per line, surrounding whitespace
/// trimmed, blank lines and `#` comment lines skipped. Only `http://` and
/// `https://` URLs (scheme case-insensitive) are kept; lines that are not valid
/// UTF-8 or that contain inner whitespace or control characters are dropped.
/// Order is preserved; duplicates are kept.
pub fn parse_mirrorlist(body: &[u8]) -> Vec<String> {
    body.split(|&b| b == b'\n')
        .filter_map(|line| std::str::from_utf8(line).ok())
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter(|line| {
            let rest =
                strip_prefix_ci(line, "http://").or_else(|| strip_prefix_ci(line, "https://"));
            rest.is_some_and(|r| !r.is_empty())
                && !line.chars().any(|c| c.is_whitespace() || c.is_control())
        })
        .map(str::to_owned)
        .collect()
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const ALPHA_SHA256: &str = "c0afc8836e63d1c03fce85e20227ae96641f0f2f0b14124a166f3a9fa6e5bcca";
    const BETA_SHA256: &str = "fce83f7fd16f2063130caea380db4d5056cd7f14935fd44f8e2b4b077b6ef8bc";
    const PRIMARY_GZ: &str =
        "repodata/204284edab77043045eff61383ff5201e99c7df65d4fd5cebce89ef691e7677f-primary.xml.gz";

    fn fixture_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/repodata")
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(fixture_dir().join(name)).unwrap()
    }

    fn sha256(hex: &str) -> Checksum {
        Checksum::from_hex(ChecksumAlgo::Sha256, hex).unwrap()
    }

    fn expected_packages() -> Vec<PackageEntry> {
        vec![
            PackageEntry {
                href: "Packages/lm-alpha-1.0-1.noarch.rpm".into(),
                checksum: sha256(ALPHA_SHA256),
                size: 6118,
            },
            PackageEntry {
                href: "Packages/lm-beta-1.0-1.noarch.rpm".into(),
                checksum: sha256(BETA_SHA256),
                size: 6103,
            },
        ]
    }

    fn primary(data: &[u8], c: Compression) -> Result<Vec<PackageEntry>, RepodataError> {
        let mut out = Vec::new();
        let n = parse_primary(data, c, |p| out.push(p))?;
        assert_eq!(n, out.len());
        Ok(out)
    }

    fn primary_str(xml: &str) -> Result<Vec<PackageEntry>, RepodataError> {
        primary(xml.as_bytes(), Compression::None)
    }

    /// A minimal primary.xml around one package body.
    fn one_package(body: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<metadata xmlns="http://linux.duke.edu/metadata/common" xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="1">
<package type="rpm">
  <name>foo</name>
  {body}
</package>
</metadata>"#
        )
    }

    const GOOD_CHECKSUM: &str = r#"<checksum type="sha256" pkgid="YES">c0afc8836e63d1c03fce85e20227ae96641f0f2f0b14124a166f3a9fa6e5bcca</checksum>"#;
    const GOOD_SIZE: &str = r#"<size package="6118" installed="6" archive="272"/>"#;
    const GOOD_LOCATION: &str = r#"<location href="Packages/foo.rpm"/>"#;

    // ----- ChecksumAlgo / Checksum -----

    #[test]
    fn algo_names_and_codes() {
        for a in ChecksumAlgo::ALL {
            assert_eq!(ChecksumAlgo::from_name(a.name()), Some(a));
            assert_eq!(
                ChecksumAlgo::from_name(&a.name().to_ascii_uppercase()),
                Some(a)
            );
            assert_eq!(ChecksumAlgo::from_code(a.code()), Some(a));
        }
        assert_eq!(ChecksumAlgo::from_name("sha"), Some(ChecksumAlgo::Sha1));
        assert_eq!(ChecksumAlgo::from_name("SHA"), Some(ChecksumAlgo::Sha1));
        assert_eq!(
            ChecksumAlgo::from_name("SHA256"),
            Some(ChecksumAlgo::Sha256)
        );
        assert_eq!(ChecksumAlgo::from_name("crc32"), None);
        assert_eq!(ChecksumAlgo::from_name(""), None);
        let codes: Vec<u8> = ChecksumAlgo::ALL.iter().map(|a| a.code()).collect();
        assert_eq!(codes, [1, 2, 3, 4, 5, 6]);
        let lens: Vec<usize> = ChecksumAlgo::ALL.iter().map(|a| a.digest_len()).collect();
        assert_eq!(lens, [16, 20, 28, 32, 48, 64]);
        assert_eq!(ChecksumAlgo::from_code(0), None);
        assert_eq!(ChecksumAlgo::from_code(7), None);
        assert_eq!(ChecksumAlgo::Sha256.name(), "sha256");
    }

    #[test]
    fn checksum_hex_roundtrip_and_validation() {
        let c = sha256(ALPHA_SHA256);
        assert_eq!(c.digest.len(), 32);
        assert_eq!(c.digest[0], 0xc0);
        assert_eq!(c.to_hex(), ALPHA_SHA256);
        let upper = Checksum::from_hex(ChecksumAlgo::Sha256, &ALPHA_SHA256.to_uppercase()).unwrap();
        assert_eq!(upper, c);
        let padded =
            Checksum::from_hex(ChecksumAlgo::Sha256, &format!("\n  {ALPHA_SHA256}\n")).unwrap();
        assert_eq!(padded, c);
        for a in ChecksumAlgo::ALL {
            let hex = "ab".repeat(a.digest_len());
            assert_eq!(Checksum::from_hex(a, &hex).unwrap().to_hex(), hex);
            assert!(Checksum::from_hex(a, &hex[1..]).is_err());
            assert!(Checksum::from_hex(a, &format!("{hex}00")).is_err());
        }
        let short = Checksum::from_hex(ChecksumAlgo::Sha256, &ALPHA_SHA256[..62]);
        assert!(
            matches!(short, Err(crate::checksum::ChecksumError(_))),
            "{short:?}"
        );
        let bad_char = format!("g{}", &ALPHA_SHA256[1..]);
        assert!(Checksum::from_hex(ChecksumAlgo::Sha256, &bad_char).is_err());
        // multi-byte UTF-8 of the right byte length must not panic
        let utf8 = format!("é{}", &ALPHA_SHA256[2..]);
        assert!(Checksum::from_hex(ChecksumAlgo::Sha256, &utf8).is_err());
        // an md5 digest is not a valid sha256 digest
        assert!(Checksum::from_hex(ChecksumAlgo::Sha256, &"ab".repeat(16)).is_err());
    }

    // ----- repomd.xml -----

    #[test]
    fn real_repomd() {
        let md = parse_repomd(&fixture("repodata/repomd.xml")).unwrap();
        assert_eq!(md.revision.as_deref(), Some("1795306453"));
        let kinds: Vec<&str> = md.records.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(kinds, ["primary", "filelists", "other"]);
        for r in &md.records {
            let path = fixture_dir().join(&r.href);
            let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", r.href));
            assert_eq!(r.size, Some(meta.len()), "{}", r.href);
            assert_eq!(r.checksum.algo, ChecksumAlgo::Sha256);
            // createrepo_c names files after the checksum of their stored bytes
            let file = r.href.strip_prefix("repodata/").unwrap();
            assert!(file.starts_with(&r.checksum.to_hex()), "{}", r.href);
            assert_eq!(Compression::from_href(&r.href), Compression::Gzip);
        }
        let p = &md.records[0];
        assert_eq!(p.href, PRIMARY_GZ);
        assert_eq!(p.size, Some(671));
        // values read with sha256sum when the fixture was made; not the open-checksum
        assert_eq!(
            p.checksum,
            sha256("204284edab77043045eff61383ff5201e99c7df65d4fd5cebce89ef691e7677f")
        );
        assert_ne!(
            p.checksum,
            sha256("e7e0991be6c8b09873e21c616e1feb9dbcc8f859b1329822ec993411b18ef2d2")
        );
    }

    #[test]
    fn real_repomd_xz_and_bz2() {
        for (file, primary_file, hex, c) in [
            (
                "repomd-xz.xml",
                "primary.xml.xz",
                "26f87236fc9e77f4155227643817f09af87c836f749482fbb348138acdfb2c43",
                Compression::Xz,
            ),
            (
                "repomd-bz2.xml",
                "primary.xml.bz2",
                "fec370a2dbc22afd26e52363739582e73298d2177930112c099e9c6b646914ca",
                Compression::Bzip2,
            ),
        ] {
            let md = parse_repomd(&fixture(file)).unwrap();
            assert_eq!(md.records.len(), 3);
            let p = md.records.iter().find(|r| r.kind == "primary").unwrap();
            assert_eq!(p.href, format!("repodata/{primary_file}"));
            assert_eq!(Compression::from_href(&p.href), c);
            assert_eq!(p.checksum, sha256(hex));
            let on_disk = fixture(primary_file);
            assert_eq!(p.size, Some(on_disk.len() as u64));
            assert_eq!(primary(&on_disk, c).unwrap(), expected_packages());
        }
    }

    #[test]
    fn repomd_end_to_end() {
        // The href from repomd leads to a primary that parses.
        let md = parse_repomd(&fixture("repodata/repomd.xml")).unwrap();
        let rec = md.records.iter().find(|r| r.kind == "primary").unwrap();
        let data = fixture(&rec.href);
        let pkgs = primary(&data, Compression::from_href(&rec.href)).unwrap();
        assert_eq!(pkgs, expected_packages());
    }

    fn repomd_with(data: &str) -> Result<RepoMd, RepodataError> {
        let xml = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<repomd xmlns="http://linux.duke.edu/metadata/repo" xmlns:rpm="http://linux.duke.edu/metadata/rpm">
  <revision> 42 </revision>
  {data}
</repomd>"#
        );
        parse_repomd(xml.as_bytes())
    }

    const SUM: &str = "204284edab77043045eff61383ff5201e99c7df65d4fd5cebce89ef691e7677f";

    #[test]
    fn repomd_variants() {
        // zchunk record with header-checksum/header-size, legacy "sha", no size
        let md = repomd_with(&format!(
            r#"<data type="primary_zck">
    <checksum type="sha256">{SUM}</checksum>
    <open-checksum type="sha256">{ALPHA_SHA256}</open-checksum>
    <header-checksum type="sha256">{BETA_SHA256}</header-checksum>
    <location href="repodata/x-primary.xml.zck"/>
    <size>1234</size>
    <open-size>99</open-size>
    <header-size>7</header-size>
  </data>
  <data type="group"><checksum type="sha">{sha1}</checksum><location href="repodata/comps.xml"></location></data>
  <tags><content>binary-x86_64</content></tags>"#,
            sha1 = "ab".repeat(20)
        ))
        .unwrap();
        assert_eq!(md.revision.as_deref(), Some("42"));
        assert_eq!(md.records.len(), 2);
        let z = &md.records[0];
        assert_eq!(z.kind, "primary_zck");
        assert_eq!(z.checksum, sha256(SUM));
        assert_eq!(z.size, Some(1234));
        assert_eq!(Compression::from_href(&z.href), Compression::None);
        let g = &md.records[1];
        assert_eq!(g.checksum.algo, ChecksumAlgo::Sha1);
        assert_eq!(g.size, None);
        assert_eq!(g.href, "repodata/comps.xml");
    }

    #[test]
    fn repomd_without_revision_or_records() {
        let md = parse_repomd(br#"<repomd xmlns="http://linux.duke.edu/metadata/repo"/>"#).unwrap();
        assert_eq!(
            md,
            RepoMd {
                revision: None,
                records: vec![]
            }
        );
    }

    #[test]
    fn repomd_errors() {
        let loc = r#"<location href="repodata/p.xml.gz"/>"#;
        let cs = format!(r#"<checksum type="sha256">{SUM}</checksum>"#);
        // only open-checksum → missing checksum
        let e = repomd_with(&format!(
            r#"<data type="primary"><open-checksum type="sha256">{SUM}</open-checksum>{loc}</data>"#
        ))
        .unwrap_err();
        assert!(
            matches!(&e, RepodataError::Missing { field: "<checksum>", context } if context.contains("primary")),
            "{e}"
        );
        let e = repomd_with(&format!(r#"<data type="primary">{cs}</data>"#)).unwrap_err();
        assert!(
            matches!(
                e,
                RepodataError::Missing {
                    field: "<location href>",
                    ..
                }
            ),
            "{e}"
        );
        let e = repomd_with(&format!(r#"<data>{cs}{loc}</data>"#)).unwrap_err();
        assert!(
            matches!(
                e,
                RepodataError::Missing {
                    field: "<data type>",
                    ..
                }
            ),
            "{e}"
        );
        let e = repomd_with(&format!(
            r#"<data type="primary"><checksum>{SUM}</checksum>{loc}</data>"#
        ))
        .unwrap_err();
        assert!(
            matches!(
                e,
                RepodataError::Missing {
                    field: "<checksum type>",
                    ..
                }
            ),
            "{e}"
        );
        let e = repomd_with(&format!(
            r#"<data type="primary">{cs}{loc}<size>-1</size></data>"#
        ))
        .unwrap_err();
        assert!(
            matches!(
                e,
                RepodataError::Invalid {
                    field: "<size>",
                    ..
                }
            ),
            "{e}"
        );
        let e = repomd_with(&format!(
            r#"<data type="primary"><checksum type="sha256">{}</checksum>{loc}</data>"#,
            &SUM[..63]
        ))
        .unwrap_err();
        assert!(
            matches!(&e, RepodataError::BadChecksum(m) if m.contains("primary")),
            "{e}"
        );
        let e = repomd_with(&format!(
            r#"<data type="primary"><checksum type="crc">{SUM}</checksum>{loc}</data>"#
        ))
        .unwrap_err();
        assert!(matches!(e, RepodataError::BadChecksum(_)), "{e}");
        let e = repomd_with(&format!(
            r#"<data type="primary">{cs}<location href="../../etc/passwd"/></data>"#
        ))
        .unwrap_err();
        assert!(matches!(e, RepodataError::UnsafeHref { .. }), "{e}");
        let e = repomd_with(&format!(r#"<data type="primary">{cs}{cs}{loc}</data>"#)).unwrap_err();
        assert!(
            matches!(
                e,
                RepodataError::Invalid {
                    field: "<checksum>",
                    ..
                }
            ),
            "{e}"
        );
        // wrong root / wrong namespace / not XML / empty
        for bad in [
            &b"<metadata xmlns=\"http://linux.duke.edu/metadata/common\"/>"[..],
            b"<repomd xmlns=\"urn:other\"/>",
            b"hello world",
            b"",
            b"{\"json\": true}",
            b"<repomd xmlns=\"http://linux.duke.edu/metadata/repo\">",
            b"<repomd xmlns=\"http://linux.duke.edu/metadata/repo\"></repodata>",
            b"<repomd xmlns=\"http://linux.duke.edu/metadata/repo\"/><repomd/>",
        ] {
            let r = parse_repomd(bad);
            assert!(
                matches!(r, Err(RepodataError::Xml { .. })),
                "{:?}: {r:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    // ----- primary.xml -----

    #[test]
    fn real_primary_all_compressions() {
        let expected = expected_packages();
        for (file, c) in [
            (PRIMARY_GZ, Compression::Gzip),
            ("primary.xml.xz", Compression::Xz),
            ("primary.xml.bz2", Compression::Bzip2),
            ("primary.xml.zst", Compression::Zstd),
            ("primary.xml", Compression::None),
        ] {
            assert_eq!(Compression::from_href(file), c, "{file}");
            let got = primary(&fixture(file), c).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(got, expected, "{file}");
        }
    }

    /// A reader that hands out one byte per call, to exercise buffer boundaries.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((b, rest)), Some(slot)) => {
                    *slot = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn primary_byte_at_a_time() {
        let data = fixture(PRIMARY_GZ);
        let mut got = Vec::new();
        let n = parse_primary(Trickle(&data), Compression::Gzip, |p| got.push(p)).unwrap();
        assert_eq!(n, 2);
        assert_eq!(got, expected_packages());
        let plain = fixture("primary.xml");
        let mut got = Vec::new();
        parse_primary(Trickle(&plain), Compression::None, |p| got.push(p)).unwrap();
        assert_eq!(got, expected_packages());
    }

    #[test]
    fn compressed_truncations_are_errors() {
        for (file, c) in [
            (PRIMARY_GZ, Compression::Gzip),
            ("primary.xml.xz", Compression::Xz),
            ("primary.xml.bz2", Compression::Bzip2),
            ("primary.xml.zst", Compression::Zstd),
            ("primary.xml", Compression::None),
        ] {
            let data = fixture(file);
            for cut in 0..data.len() {
                let r = primary(&data[..cut], c);
                assert!(r.is_err(), "{file} cut at {cut}/{}: {r:?}", data.len());
            }
        }
    }

    #[test]
    fn truncated_gzip_is_decompress_error() {
        let data = fixture(PRIMARY_GZ);
        // cut inside the deflate stream, and cut inside the 8-byte trailer
        for cut in [data.len() / 2, data.len() - 1, data.len() - 4] {
            let e = primary(&data[..cut], Compression::Gzip).unwrap_err();
            assert!(matches!(e, RepodataError::Decompress(_)), "cut {cut}: {e}");
        }
    }

    #[test]
    fn corrupt_and_mislabelled_streams_are_errors() {
        let mut gz = fixture(PRIMARY_GZ);
        let mid = gz.len() / 2;
        gz[mid] ^= 0xff;
        assert!(primary(&gz, Compression::Gzip).is_err());
        // gzip data labelled as xz, plain XML labelled as gzip, zck-like binary as None
        assert!(primary(&fixture(PRIMARY_GZ), Compression::Xz).is_err());
        assert!(primary(&fixture("primary.xml"), Compression::Gzip).is_err());
        assert!(primary(&fixture("primary.xml.zst"), Compression::None).is_err());
        assert!(primary(&fixture("primary.xml.xz"), Compression::Zstd).is_err());
        // trailing garbage after a complete gzip member
        let mut trailing = fixture(PRIMARY_GZ);
        trailing.extend_from_slice(b"garbage!");
        assert!(primary(&trailing, Compression::Gzip).is_err());
    }

    #[test]
    fn compression_from_href() {
        assert_eq!(
            Compression::from_href("repodata/x-primary.xml.gz"),
            Compression::Gzip
        );
        assert_eq!(Compression::from_href("a.XZ"), Compression::Xz);
        assert_eq!(Compression::from_href("a.zst"), Compression::Zstd);
        assert_eq!(Compression::from_href("a.bz2"), Compression::Bzip2);
        assert_eq!(Compression::from_href("a.xml"), Compression::None);
        assert_eq!(Compression::from_href("a.xml.zck"), Compression::None);
        assert_eq!(Compression::from_href(""), Compression::None);
    }

    #[test]
    fn primary_minimal_and_nested_confusers() {
        // <format> children (also a stray unprefixed <checksum> and <location>
        // nested deeper) must not be taken for the package's own fields.
        let xml = one_package(&format!(
            r#"<arch>noarch</arch>
  {GOOD_CHECKSUM}
  {GOOD_SIZE}
  {GOOD_LOCATION}
  <format>
    <rpm:license>MIT</rpm:license>
    <rpm:header-range start="4504" end="6005"/>
    <rpm:provides><rpm:entry name="foo" flags="EQ" epoch="0" ver="1.0" rel="1"/></rpm:provides>
    <checksum type="md5">zz</checksum>
    <location href="/etc/passwd"/>
    <size package="1"/>
    <file>/usr/bin/foo</file>
  </format>"#
        ));
        let got = primary_str(&xml).unwrap();
        assert_eq!(
            got,
            vec![PackageEntry {
                href: "Packages/foo.rpm".into(),
                checksum: sha256(ALPHA_SHA256),
                size: 6118,
            }]
        );
        // rpm:-prefixed look-alikes directly under <package> are ignored too
        let xml = one_package(&format!(
            r#"<rpm:checksum type="md5">zz</rpm:checksum><rpm:location href="/x"/>{GOOD_CHECKSUM}{GOOD_SIZE}{GOOD_LOCATION}"#
        ));
        assert_eq!(primary_str(&xml).unwrap().len(), 1);
    }

    #[test]
    fn primary_xml_base_still_reported() {
        let xml = one_package(&format!(
            r#"{GOOD_CHECKSUM}{GOOD_SIZE}<location xml:base="http://elsewhere.example/repo/" href="Packages/foo.rpm"/>"#
        ));
        let got = primary_str(&xml).unwrap();
        assert_eq!(got[0].href, "Packages/foo.rpm");
    }

    #[test]
    fn primary_entities_and_cdata() {
        let xml = one_package(&format!(
            r#"<checksum type="sha256"><![CDATA[c0afc8836e63d1c03fce85e20227ae96]]>&#x36;41f0f2f0b14124a166f3a9fa6e5bcca</checksum>{GOOD_SIZE}<location href="Packages/a&amp;b.rpm"/>"#
        ));
        let got = primary_str(&xml).unwrap();
        assert_eq!(got[0].checksum, sha256(ALPHA_SHA256));
        assert_eq!(got[0].href, "Packages/a&b.rpm");
        // text of an element nested in <checksum> is not part of the checksum
        let xml = one_package(&format!(
            r#"<checksum type="sha256">{ALPHA_SHA256}<x>00</x></checksum>{GOOD_SIZE}{GOOD_LOCATION}"#
        ));
        assert_eq!(primary_str(&xml).unwrap()[0].checksum, sha256(ALPHA_SHA256));
        let xml = one_package(&format!(
            r#"<checksum type="sha256">&custom;</checksum>{GOOD_SIZE}{GOOD_LOCATION}"#
        ));
        assert!(matches!(primary_str(&xml), Err(RepodataError::Xml { .. })));
    }

    #[test]
    fn primary_missing_fields() {
        let cases = [
            (format!("{GOOD_SIZE}{GOOD_LOCATION}"), "<checksum>"),
            (format!("{GOOD_CHECKSUM}{GOOD_LOCATION}"), "<size package>"),
            (
                format!(r#"{GOOD_CHECKSUM}<size installed="6"/>{GOOD_LOCATION}"#),
                "<size package>",
            ),
            (format!("{GOOD_CHECKSUM}{GOOD_SIZE}"), "<location href>"),
            (
                format!(r#"{GOOD_CHECKSUM}{GOOD_SIZE}<location base="x"/>"#),
                "<location href>",
            ),
            (
                format!(r#"<checksum>{ALPHA_SHA256}</checksum>{GOOD_SIZE}{GOOD_LOCATION}"#),
                "<checksum type>",
            ),
        ];
        for (body, want) in cases {
            let e = primary_str(&one_package(&body)).unwrap_err();
            match &e {
                RepodataError::Missing { field, context } => {
                    assert_eq!(*field, want);
                    assert_eq!(context, "package #1 (foo)");
                }
                other => panic!("{want}: {other}"),
            }
            assert!(e.to_string().contains("foo"), "{e}");
        }
    }

    #[test]
    fn primary_bad_values() {
        let bad_len = format!(
            r#"<checksum type="sha256">{}</checksum>{GOOD_SIZE}{GOOD_LOCATION}"#,
            &ALPHA_SHA256[..60]
        );
        let e = primary_str(&one_package(&bad_len)).unwrap_err();
        assert!(
            matches!(&e, RepodataError::BadChecksum(m) if m.contains("foo")),
            "{e}"
        );
        let empty = format!(r#"<checksum type="sha256"/>{GOOD_SIZE}{GOOD_LOCATION}"#);
        assert!(matches!(
            primary_str(&one_package(&empty)),
            Err(RepodataError::BadChecksum(_))
        ));
        let unknown = format!(
            r#"<checksum type="blake3">{ALPHA_SHA256}</checksum>{GOOD_SIZE}{GOOD_LOCATION}"#
        );
        assert!(matches!(
            primary_str(&one_package(&unknown)),
            Err(RepodataError::BadChecksum(_))
        ));
        let huge = format!(
            r#"<checksum type="sha256">{}{ALPHA_SHA256}</checksum>{GOOD_SIZE}{GOOD_LOCATION}"#,
            " ".repeat(MAX_FIELD_TEXT)
        );
        assert!(matches!(
            primary_str(&one_package(&huge)),
            Err(RepodataError::BadChecksum(_))
        ));
        for size in ["-1", "+5", "", "1e3", "0x10", "99999999999999999999999"] {
            let body = format!(r#"{GOOD_CHECKSUM}<size package="{size}"/>{GOOD_LOCATION}"#);
            let e = primary_str(&one_package(&body)).unwrap_err();
            assert!(
                matches!(
                    e,
                    RepodataError::Invalid {
                        field: "<size package>",
                        ..
                    }
                ),
                "{size}: {e}"
            );
        }
        let dup = format!("{GOOD_CHECKSUM}{GOOD_CHECKSUM}{GOOD_SIZE}{GOOD_LOCATION}");
        assert!(matches!(
            primary_str(&one_package(&dup)),
            Err(RepodataError::Invalid {
                field: "<checksum>",
                ..
            })
        ));
        let dup = format!("{GOOD_CHECKSUM}{GOOD_SIZE}{GOOD_LOCATION}{GOOD_LOCATION}");
        assert!(matches!(
            primary_str(&one_package(&dup)),
            Err(RepodataError::Invalid {
                field: "<location>",
                ..
            })
        ));
    }

    #[test]
    fn primary_unsafe_hrefs() {
        for href in [
            "../secret.rpm",
            "Packages/../../x.rpm",
            "Packages/..",
            "/etc/passwd",
            "http://evil.example/x.rpm",
            "file:///etc/passwd",
            "C:/x.rpm",
            "Packages\\x.rpm",
            "Packages/x&#0;.rpm",
            "Packages/x&#10;.rpm",
            "",
        ] {
            let body = format!(r#"{GOOD_CHECKSUM}{GOOD_SIZE}<location href="{href}"/>"#);
            let r = primary_str(&one_package(&body));
            assert!(
                matches!(
                    r,
                    Err(RepodataError::UnsafeHref { .. }) | Err(RepodataError::Invalid { .. })
                ),
                "{href:?}: {r:?}"
            );
        }
    }

    #[test]
    fn href_validation() {
        assert_eq!(validate_href("Packages/a/b-1.0-1.noarch.rpm"), Ok(()));
        assert_eq!(validate_href("repodata/abc-primary.xml.gz"), Ok(()));
        assert_eq!(validate_href("x.rpm"), Ok(()));
        assert_eq!(validate_href("Packages/lib:colon.rpm"), Ok(()));
        assert!(validate_href("").is_err());
        assert!(validate_href("/abs").is_err());
        assert!(validate_href("a/../b").is_err());
        assert!(validate_href("..").is_err());
        assert!(validate_href("a..b").is_err());
        assert!(validate_href("a\0b").is_err());
        assert!(validate_href("a\\b").is_err());
        assert!(validate_href("a\nb").is_err());
        assert!(validate_href("https://x/y").is_err());
        assert!(validate_href("mailto:x").is_err());
    }

    #[test]
    fn primary_not_xml_or_wrong_document() {
        for bad in [
            &b""[..],
            b"not xml at all",
            b"\x00\x01\x02\xff\xfe",
            b"<metadata xmlns=\"http://linux.duke.edu/metadata/common\">",
            b"<metadata xmlns=\"http://linux.duke.edu/metadata/common\"><package></metadata>",
            b"<repomd xmlns=\"http://linux.duke.edu/metadata/repo\"/>",
            b"<metadata xmlns=\"http://linux.duke.edu/metadata/filelists\"/>",
            b"<html><body>404 Not Found</body></html>",
        ] {
            let r = primary(bad, Compression::None);
            assert!(r.is_err(), "{:?}: {r:?}", String::from_utf8_lossy(bad));
        }
        // an empty but valid primary is fine
        let empty =
            br#"<metadata xmlns="http://linux.duke.edu/metadata/common" packages="0"></metadata>"#;
        assert_eq!(primary(empty, Compression::None).unwrap(), vec![]);
        // a <package/> with nothing inside is an error naming the package
        let e = primary(
            br#"<metadata xmlns="http://linux.duke.edu/metadata/common"><package/></metadata>"#,
            Compression::None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("package #1"), "{e}");
    }

    #[test]
    fn primary_token_limit() {
        let big = "x".repeat(usize::try_from(MAX_XML_TOKEN_BYTES).unwrap() + 10);
        let xml = one_package(&format!(
            "<description>{big}</description>{GOOD_CHECKSUM}{GOOD_SIZE}{GOOD_LOCATION}"
        ));
        let r = primary_str(&xml);
        assert!(matches!(r, Err(RepodataError::TooLarge { .. })), "{r:?}");
        // a large but legal description is fine
        let ok = "y".repeat(200_000);
        let xml = one_package(&format!(
            "<description>{ok}</description>{GOOD_CHECKSUM}{GOOD_SIZE}{GOOD_LOCATION}"
        ));
        assert_eq!(primary_str(&xml).unwrap().len(), 1);
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let deep = format!("{}{}", "<a>".repeat(100_000), "</a>".repeat(100_000));
        let xml = one_package(&format!("{deep}{GOOD_CHECKSUM}{GOOD_SIZE}{GOOD_LOCATION}"));
        assert!(matches!(primary_str(&xml), Err(RepodataError::Xml { .. })));
        let ok = format!("{}{}", "<a>".repeat(50), "</a>".repeat(50));
        let xml = one_package(&format!("{ok}{GOOD_CHECKSUM}{GOOD_SIZE}{GOOD_LOCATION}"));
        assert_eq!(primary_str(&xml).unwrap().len(), 1);
    }

    #[test]
    fn primary_streams_many_packages() {
        // 20k packages through gzip, counted by the callback only.
        let mut xml = String::from(r#"<metadata xmlns="http://linux.duke.edu/metadata/common">"#);
        for i in 0..20_000 {
            xml.push_str(&format!(
                r#"<package type="rpm"><name>p{i}</name>{GOOD_CHECKSUM}<size package="{i}"/><location href="Packages/p{i}.rpm"/></package>"#
            ));
        }
        xml.push_str("</metadata>");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut enc, xml.as_bytes()).unwrap();
        let gz = enc.finish().unwrap();
        let mut last = None;
        let n = parse_primary(&gz[..], Compression::Gzip, |p| last = Some(p)).unwrap();
        assert_eq!(n, 20_000);
        let last = last.unwrap();
        assert_eq!(last.size, 19_999);
        assert_eq!(last.href, "Packages/p19999.rpm");
    }

    #[test]
    fn parsers_never_panic_on_mutations() {
        let inputs: Vec<(Vec<u8>, Compression)> = vec![
            (fixture("primary.xml"), Compression::None),
            (fixture(PRIMARY_GZ), Compression::Gzip),
            (fixture("primary.xml.xz"), Compression::Xz),
            (fixture("primary.xml.bz2"), Compression::Bzip2),
            (fixture("primary.xml.zst"), Compression::Zstd),
        ];
        for (data, c) in &inputs {
            for cut in 0..=data.len() {
                let _ = primary(&data[..cut], *c);
            }
            for i in 0..data.len() {
                for flip in [0x01u8, 0xff] {
                    let mut m = data.clone();
                    m[i] ^= flip;
                    let _ = primary(&m, *c);
                }
            }
        }
        let repomd = fixture("repodata/repomd.xml");
        let last_gt = repomd.iter().rposition(|&b| b == b'>').unwrap();
        assert!(parse_repomd(&repomd[..=last_gt]).is_ok());
        for cut in 0..=last_gt {
            // every prefix that cuts into the document is an error, never a panic
            assert!(parse_repomd(&repomd[..cut]).is_err(), "cut {cut}");
        }
        for i in 0..repomd.len() {
            let mut m = repomd.clone();
            m[i] = b'<';
            let _ = parse_repomd(&m);
            m[i] = 0;
            let _ = parse_repomd(&m);
        }
        // pseudo-random garbage
        let mut x: u32 = 0x1234_5678;
        for len in 0..2000usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    b"<>/=\"' ax:&;#![]?-"[(x % 18) as usize]
                })
                .collect();
            let _ = parse_repomd(&bytes);
            let _ = primary(&bytes, Compression::None);
            let _ = parse_mirrorlist(&bytes);
        }
    }

    // ----- mirrorlist -----

    #[test]
    fn mirrorlist() {
        let body = b"# Fedora mirrorlist\r\n\
            https://mirror.one.example/fedora/releases/40/Everything/x86_64/os/\r\n\
            \n\
            \t  http://mirror.two.example/fedora/  \n\
            ftp://old.example/fedora/\n\
            rsync://r.example/x\n\
            #https://commented.example/\n\
              # indented comment\n\
            HTTPS://UPPER.example/x\n\
            https://\n\
            http://has space.example/\n\
            /relative/path\n\
            \xff\xfe not utf8\n\
            https://last.example/no-newline";
        assert_eq!(
            parse_mirrorlist(body),
            vec![
                "https://mirror.one.example/fedora/releases/40/Everything/x86_64/os/",
                "http://mirror.two.example/fedora/",
                "HTTPS://UPPER.example/x",
                "https://last.example/no-newline",
            ]
        );
        assert!(parse_mirrorlist(b"").is_empty());
        assert!(parse_mirrorlist(b"\n\n# only comments\n").is_empty());
        assert_eq!(parse_mirrorlist(b"http://a/\nhttp://a/\n").len(), 2);
    }

    #[test]
    fn error_messages_are_descriptive() {
        let e = RepodataError::Missing {
            field: "<checksum>",
            context: "package #3 (bash)".into(),
        };
        assert_eq!(e.to_string(), "package #3 (bash): missing <checksum>");
        let e = parse_repomd(b"<repomd").unwrap_err();
        assert!(e.to_string().starts_with("malformed XML at byte"), "{e}");
    }
}
