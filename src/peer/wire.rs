//! The peer protocol's messages and their codec: pure, length-limited, no I/O.
//!
//! Every request travels on its own bidirectional QUIC stream: the asker writes one request
//! frame; the answerer writes one response frame and, for [`Response::Blob`] and
//! [`Response::Stream`], the file's raw bytes after it until the stream ends. A clean end of a
//! stream of bytes means "complete"; a reset means "failed, do not use" (the asker verifies the
//! bytes anyway). A frame is a 4-byte big-endian length and that many bytes of JSON; frames over
//! [`MAX_FRAME`] bytes, bad JSON, unknown message kinds and out-of-range fields are errors that
//! close the stream, never a panic.
//!
//! The protocol version is in the TLS ALPN ([`ALPN`]); a node speaking another version fails
//! the handshake with a clear error instead of misreading messages.
//!
//! Not here: sockets, admission, or what a node does with a message (see `peer::server`).

use serde::{Deserialize, Serialize};

/// Protocol version, carried in ALPN and in mDNS TXT records.
pub const VERSION: u32 = 2;
/// The TLS ALPN protocol name of this version.
pub const ALPN: &[u8] = b"lanmirror/2";
/// Largest frame accepted, in bytes (after the 4-byte length).
pub const MAX_FRAME: usize = 512 * 1024;
/// Most checksums one `Have` may ask about.
pub const MAX_HAVE: usize = 4096;
/// Longest string field (a path, a checksum, a reason).
pub const MAX_FIELD: usize = 4096;

/// What an asker sends first on a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The first stream of every connection, from the connecting node: who it claims to be
    /// part of, and (with a site key) proof that it holds the key, bound to this TLS session.
    Hello {
        site_id: String,
        http_port: u16,
        quic_port: u16,
        proof: Option<String>,
    },
    /// Which of these checksums (`algo:hex`) does the peer hold?
    Have { checksums: Vec<String> },
    /// A stored blob by checksum, from byte `offset`.
    Get { checksum: String, offset: u64 },
    /// Ask the item's downloader to obtain `repo/path` (from its store or upstream) and stream it.
    /// `upstream` is the asker's [`crate::config::RepoConfig::upstream_id`] of the repo: a
    /// node refuses to fetch for a repo of the same name with other upstream URLs.
    Download {
        repo: String,
        upstream: String,
        path: String,
        checksum: Option<String>,
        size: Option<u64>,
        offset: u64,
        /// Nobody waits for it (prefetch or mirroring): the downloader fetches it as background
        /// work (inside its background hours, under the budget, after every client download).
        /// Asking again without it promotes the download.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        background: bool,
    },
    /// The peer's current metadata snapshot of a repository tree (asked only by a node that
    /// cannot reach upstream itself). `upstream` as for [`Request::Download`].
    Snapshot {
        repo: String,
        upstream: String,
        tree: String,
    },
    /// This node's demand on the uplink (sent about once a second, and when it changes), so
    /// the site's nodes share `[uplink] max_rate` between them. Answered with [`Response::Ack`].
    Announce(crate::uplink::Announcement),
}

/// Why a request could not be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The peer does not have it and upstream says it does not exist.
    NotFound,
    /// The peer could not get it now (upstream down, disk full, …): ask elsewhere.
    Unavailable,
    /// The request was malformed, for an unconfigured repo, or a path that leaves its repo.
    BadRequest,
}

/// A snapshot file named by BLAKE3, fetched with [`Request::Get`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapFile {
    /// `""` for repomd.xml itself, else the companion's suffix (`.asc`, `.key`).
    pub suffix: String,
    pub blake3: String,
    pub size: u64,
}

/// A tree's metadata snapshot as one node tells another: only what names the bytes. No check
/// time and no upstream validators travel: freshness is each node's own. `revision` is what
/// the peer *claims* (used to order offers); the asker trusts only the revision parsed from
/// the repomd.xml it receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotInfo {
    pub revision: String,
    pub files: Vec<SnapFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// Admission accepted; with a site key, the answerer's own proof.
    Welcome {
        site_id: String,
        http_port: u16,
        proof: Option<String>,
    },
    /// Admission refused; the connection closes after this.
    Refused {
        reason: String,
    },
    /// One flag per checksum asked, in order.
    Holding {
        have: Vec<bool>,
    },
    /// A blob of `size` bytes follows, from the requested offset.
    Blob {
        size: u64,
        blake3: String,
    },
    /// The file follows as it arrives (`total` when known); a clean end means verified.
    Stream {
        total: Option<u64>,
    },
    /// The tree's snapshot: repomd.xml and companions, and when upstream last confirmed it.
    Snapshot(SnapshotInfo),
    Error {
        kind: ErrorKind,
        message: String,
    },
    /// Taken note of (an announcement).
    Ack,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("frame is truncated")]
    Truncated,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("message field out of range: {0}")]
    OutOfRange(&'static str),
}

/// A frame: 4-byte big-endian length, then the JSON message.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    let body = serde_json::to_vec(msg).map_err(|e| WireError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(WireError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The length a frame header announces, refused before any body is read when too large.
pub fn frame_len(head: [u8; 4]) -> Result<usize, WireError> {
    let n = u32::from_be_bytes(head) as usize;
    if n > MAX_FRAME {
        return Err(WireError::TooLarge(n));
    }
    Ok(n)
}

/// Decodes one whole frame (header included); the frame must be exactly `buf`.
pub fn decode_frame<T: for<'de> Deserialize<'de> + Checked>(buf: &[u8]) -> Result<T, WireError> {
    let head: [u8; 4] = buf
        .get(..4)
        .and_then(|h| h.try_into().ok())
        .ok_or(WireError::Truncated)?;
    let n = frame_len(head)?;
    let body = &buf[4..];
    if body.len() < n {
        return Err(WireError::Truncated);
    }
    if body.len() > n {
        return Err(WireError::Malformed("bytes after the frame".into()));
    }
    decode_body(body)
}

/// Decodes a frame's body (after the length).
pub fn decode_body<T: for<'de> Deserialize<'de> + Checked>(body: &[u8]) -> Result<T, WireError> {
    if body.len() > MAX_FRAME {
        return Err(WireError::TooLarge(body.len()));
    }
    let msg: T = serde_json::from_slice(body).map_err(|e| WireError::Malformed(e.to_string()))?;
    msg.check()?;
    Ok(msg)
}

/// Limits a decoded message must respect beyond its shape.
pub trait Checked {
    fn check(&self) -> Result<(), WireError>;
}

fn field(s: &str, what: &'static str) -> Result<(), WireError> {
    if s.len() > MAX_FIELD {
        return Err(WireError::OutOfRange(what));
    }
    Ok(())
}

impl Checked for Request {
    fn check(&self) -> Result<(), WireError> {
        match self {
            Request::Hello { site_id, proof, .. } => {
                field(site_id, "site_id")?;
                field(proof.as_deref().unwrap_or(""), "proof")
            }
            Request::Have { checksums } => {
                if checksums.len() > MAX_HAVE {
                    return Err(WireError::OutOfRange("too many checksums"));
                }
                checksums.iter().try_for_each(|c| field(c, "checksum"))
            }
            Request::Get { checksum, .. } => field(checksum, "checksum"),
            Request::Download {
                repo,
                upstream,
                path,
                checksum,
                ..
            } => {
                field(repo, "repo")?;
                field(upstream, "upstream")?;
                field(path, "path")?;
                field(checksum.as_deref().unwrap_or(""), "checksum")
            }
            Request::Announce(_) => Ok(()),
            Request::Snapshot {
                repo,
                upstream,
                tree,
            } => {
                field(repo, "repo")?;
                field(upstream, "upstream")?;
                field(tree, "tree")
            }
        }
    }
}

impl Checked for Response {
    fn check(&self) -> Result<(), WireError> {
        match self {
            Response::Welcome { site_id, proof, .. } => {
                field(site_id, "site_id")?;
                field(proof.as_deref().unwrap_or(""), "proof")
            }
            Response::Refused { reason } => field(reason, "reason"),
            Response::Holding { have } if have.len() > MAX_HAVE => {
                Err(WireError::OutOfRange("too many flags"))
            }
            Response::Ack => Ok(()),
            Response::Holding { .. } | Response::Stream { .. } => Ok(()),
            Response::Blob { blake3, .. } => field(blake3, "blake3"),
            Response::Snapshot(SnapshotInfo { revision, files }) => {
                field(revision, "revision")?;
                if files.len() > 16 {
                    return Err(WireError::OutOfRange("too many snapshot files"));
                }
                files.iter().try_for_each(|f| {
                    field(&f.suffix, "suffix")?;
                    field(&f.blake3, "blake3")
                })
            }
            Response::Error { message, .. } => field(message, "message"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<
        T: Serialize + for<'de> Deserialize<'de> + Checked + PartialEq + std::fmt::Debug,
    >(
        m: T,
    ) {
        let f = encode(&m).unwrap();
        assert_eq!(decode_frame::<T>(&f).unwrap(), m);
    }

    #[test]
    fn every_message_roundtrips() {
        roundtrip(Request::Hello {
            site_id: "ab12".into(),
            http_port: 7700,
            quic_port: 7701,
            proof: Some("ff".into()),
        });
        roundtrip(Request::Have {
            checksums: vec!["sha256:00".into(), "blake3:11".into()],
        });
        roundtrip(Request::Get {
            checksum: "sha256:00".into(),
            offset: 5,
        });
        roundtrip(Request::Download {
            repo: "test".into(),
            upstream: "0123456789abcdef".into(),
            path: "Packages/a.rpm".into(),
            checksum: None,
            size: Some(3),
            offset: 0,
            background: false,
        });
        roundtrip(Request::Download {
            repo: "test".into(),
            upstream: "0123456789abcdef".into(),
            path: "Packages/a.rpm".into(),
            checksum: Some("sha256:00".into()),
            size: None,
            offset: 7,
            background: true,
        });
        roundtrip(Request::Snapshot {
            repo: "r".into(),
            upstream: "0123456789abcdef".into(),
            tree: "9/os".into(),
        });
        roundtrip(Response::Holding {
            have: vec![true, false],
        });
        roundtrip(Response::Stream { total: None });
        roundtrip(Response::Snapshot(SnapshotInfo {
            revision: "1".into(),
            files: vec![SnapFile {
                suffix: String::new(),
                blake3: "aa".into(),
                size: 9,
            }],
        }));
        roundtrip(Response::Error {
            kind: ErrorKind::Unavailable,
            message: "upstream down".into(),
        });
    }

    #[test]
    fn oversized_frames_are_refused_from_the_header_alone() {
        let head = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert_eq!(frame_len(head), Err(WireError::TooLarge(MAX_FRAME + 1)));
        assert!(frame_len(u32::MAX.to_be_bytes()).is_err());
        let big = Request::Have {
            checksums: vec!["x".repeat(4000); 200],
        };
        assert!(matches!(encode(&big), Err(WireError::TooLarge(_))));
    }

    #[test]
    fn malformed_and_hostile_frames_are_errors() {
        for bad in [
            &b""[..],
            &b"\x00\x00"[..],
            &b"\x00\x00\x00\x05{}"[..],
            &b"\x00\x00\x00\x02{}"[..],
            &b"\x00\x00\x00\x0b{\"t\":\"zap\"}"[..],
            &b"\x00\x00\x00\x02{}extra"[..],
        ] {
            assert!(decode_frame::<Request>(bad).is_err(), "{bad:?}");
        }
        // Unknown fields are refused, not ignored.
        let f = br#"{"t":"get","checksum":"a","offset":1,"x":2}"#;
        assert!(decode_body::<Request>(f).is_err());
        // Limits beyond shape.
        let many = Request::Have {
            checksums: vec!["a".into(); MAX_HAVE + 1],
        };
        let body = serde_json::to_vec(&many).unwrap();
        assert_eq!(
            decode_body::<Request>(&body),
            Err(WireError::OutOfRange("too many checksums"))
        );
        let long = format!(
            r#"{{"t":"get","checksum":"{}","offset":0}}"#,
            "a".repeat(5000)
        );
        assert!(decode_body::<Request>(long.as_bytes()).is_err());
        // Deep nesting stops at serde_json's recursion limit instead of overflowing the stack.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(decode_body::<Response>(deep.as_bytes()).is_err());
        // Negative or fractional numbers where integers belong.
        assert!(decode_body::<Request>(br#"{"t":"get","checksum":"a","offset":-1}"#).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: xorshift bytes, and mutations of valid frames.
        let valid = encode(&Request::Download {
            repo: "r".into(),
            upstream: "u".into(),
            path: "p".into(),
            checksum: Some("sha256:ab".into()),
            size: None,
            offset: 0,
            background: true,
        })
        .unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut buf = valid.clone();
            let n = (x % buf.len() as u64) as usize;
            buf[n] = (x >> 8) as u8;
            if i % 3 == 0 {
                buf.truncate((x >> 16) as usize % (buf.len() + 1));
            }
            let _ = decode_frame::<Request>(&buf);
            let _ = decode_frame::<Response>(&buf);
        }
    }
}
