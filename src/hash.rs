//! Hashing bytes as they stream past: BLAKE3 (the store's key) and SHA-256 (what repository
//! metadata names) always, plus any other digest the metadata asks for, in one pass.
//!
//! Hashing happens while bytes arrive, never by re-reading a finished file on the hot path.
//! This module knows nothing about files or the network.

use sha2::Digest;

use crate::checksum::{Checksum, ChecksumAlgo};

/// The BLAKE3 hash of a blob: its identity in the store.
pub type BlobId = [u8; 32];

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub fn parse_blob_id(s: &str) -> Option<BlobId> {
    if s.len() != 64 {
        return None;
    }
    parse_hex(s)?.try_into().ok()
}

/// Bytes from hex digits (either case); `None` for an odd length or a non-hex character.
pub fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|c| {
            let hi = (c[0] as char).to_digit(16)?;
            let lo = (c[1] as char).to_digit(16)?;
            Some((hi * 16 + lo) as u8)
        })
        .collect()
}

#[derive(Clone)]
enum Extra {
    Sha1(sha1::Sha1),
    Sha224(sha2::Sha224),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

/// Computes BLAKE3, SHA-256 and optionally one more digest over the same bytes.
#[derive(Clone)]
pub struct MultiHasher {
    blake3: blake3::Hasher,
    sha256: sha2::Sha256,
    extra: Option<Extra>,
    len: u64,
}

/// The digests of a finished stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub blake3: BlobId,
    pub len: u64,
    /// SHA-256 always first, then the extra digest if one was asked for.
    pub checksums: Vec<Checksum>,
}

impl Digests {
    pub fn get(&self, algo: ChecksumAlgo) -> Option<&Checksum> {
        self.checksums.iter().find(|c| c.algo == algo)
    }

    /// Whether these digests prove the bytes match `want`. `None` when the algorithm is one
    /// this build cannot compute (md5), so the caller can decide how to treat it.
    pub fn matches(&self, want: &Checksum) -> Option<bool> {
        self.get(want.algo).map(|c| c.digest == want.digest)
    }
}

/// Whether this build computes `algo`, so bytes can be checked against a checksum of it. Only
/// such checksums let bytes come from a peer or a seed directory (md5 never does).
pub fn can_verify(algo: ChecksumAlgo) -> bool {
    algo != ChecksumAlgo::Md5
}

impl MultiHasher {
    /// `also`: a digest that metadata names besides SHA-256 (ignored when it is SHA-256).
    pub fn new(also: Option<ChecksumAlgo>) -> Self {
        let extra = match also {
            Some(ChecksumAlgo::Sha1) => Some(Extra::Sha1(sha1::Sha1::new())),
            Some(ChecksumAlgo::Sha224) => Some(Extra::Sha224(sha2::Sha224::new())),
            Some(ChecksumAlgo::Sha384) => Some(Extra::Sha384(sha2::Sha384::new())),
            Some(ChecksumAlgo::Sha512) => Some(Extra::Sha512(sha2::Sha512::new())),
            Some(ChecksumAlgo::Sha256) | Some(ChecksumAlgo::Md5) | None => None,
        };
        Self {
            blake3: blake3::Hasher::new(),
            sha256: sha2::Sha256::new(),
            extra,
            len: 0,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.blake3.update(data);
        self.sha256.update(data);
        match &mut self.extra {
            Some(Extra::Sha1(h)) => h.update(data),
            Some(Extra::Sha224(h)) => h.update(data),
            Some(Extra::Sha384(h)) => h.update(data),
            Some(Extra::Sha512(h)) => h.update(data),
            None => {}
        }
        self.len += data.len() as u64;
    }

    /// BLAKE3 of the bytes so far, without ending the stream.
    pub fn blake3_so_far(&self) -> blake3::Hash {
        self.blake3.finalize()
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digests of the bytes so far, leaving the hasher as it is.
    pub fn clone_finish(&self) -> Digests {
        self.clone().finish()
    }

    pub fn finish(self) -> Digests {
        let mut checksums = vec![Checksum {
            algo: ChecksumAlgo::Sha256,
            digest: self.sha256.finalize().to_vec(),
        }];
        let extra = match self.extra {
            Some(Extra::Sha1(h)) => Some((ChecksumAlgo::Sha1, h.finalize().to_vec())),
            Some(Extra::Sha224(h)) => Some((ChecksumAlgo::Sha224, h.finalize().to_vec())),
            Some(Extra::Sha384(h)) => Some((ChecksumAlgo::Sha384, h.finalize().to_vec())),
            Some(Extra::Sha512(h)) => Some((ChecksumAlgo::Sha512, h.finalize().to_vec())),
            None => None,
        };
        if let Some((algo, digest)) = extra {
            checksums.push(Checksum { algo, digest });
        }
        Digests {
            blake3: *self.blake3.finalize().as_bytes(),
            len: self.len,
            checksums,
        }
    }
}

/// Hashes a whole reader (used by `verify` and when resuming a partial download).
pub fn hash_reader(
    mut r: impl std::io::Read,
    also: Option<ChecksumAlgo>,
) -> std::io::Result<MultiHasher> {
    let mut h = MultiHasher::new(also);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(h),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_is_never_a_check() {
        assert!(!can_verify(ChecksumAlgo::Md5));
        for a in [
            ChecksumAlgo::Sha1,
            ChecksumAlgo::Sha224,
            ChecksumAlgo::Sha256,
            ChecksumAlgo::Sha384,
            ChecksumAlgo::Sha512,
        ] {
            assert!(can_verify(a), "{a:?}");
            // Every algorithm called verifiable is one the hasher really computes.
            let mut h = MultiHasher::new(Some(a));
            h.update(b"x");
            assert!(h.finish().get(a).is_some(), "{a:?}");
        }
    }

    #[test]
    fn known_vectors() {
        let mut h = MultiHasher::new(Some(ChecksumAlgo::Sha512));
        h.update(b"ab");
        h.update(b"c");
        let d = h.finish();
        assert_eq!(d.len, 3);
        assert_eq!(
            hex(&d.get(ChecksumAlgo::Sha256).unwrap().digest),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(hex(&d.get(ChecksumAlgo::Sha512).unwrap().digest).starts_with("ddaf35a1"));
        assert_eq!(d.blake3, *blake3::hash(b"abc").as_bytes());
        assert_eq!(parse_blob_id(&hex(&d.blake3)), Some(d.blake3));
        assert_eq!(parse_blob_id("zz"), None);
        let md5 = Checksum {
            algo: ChecksumAlgo::Md5,
            digest: vec![0; 16],
        };
        assert_eq!(d.matches(&md5), None);
    }
}
