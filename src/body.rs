//! A body of bytes on its way in, from whichever source: upstream, a peer, a seed disk. The
//! transfer loop (`fetch`) reads every source through this one shape.
//!
//! Not here: opening sources (each source's own module) or checking bytes (`fetch::rules`).

/// The bytes, chunk by chunk; an `Err` means the body broke off (the text says why).
pub type ByteStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, String>> + Send>>;

/// An opened body and what its source said about it.
pub struct Body {
    pub stream: ByteStream,
    /// True when the body continues from the offset asked for; false when it is the whole
    /// file from byte 0.
    pub resumed: bool,
    /// Length of the whole file, when the source said it.
    pub total: Option<u64>,
    /// Upstream's validators (never a peer's or a seed's).
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// Where it comes from, for messages (a URL, a peer, a file).
    pub url: String,
}
