//! Checksums as repository metadata names them (`sha256` and kin): the algorithm, the digest,
//! their names, hex form and one-byte index codes. The small core every other module shares:
//! the metadata parsers produce them, the store indexes by them, peers ask for them.
//!
//! Not here: computing digests (`hash`) or parsing metadata (`repodata`).

/// A digest that is not valid for its algorithm (length, characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ChecksumError(pub String);

/// A checksum algorithm as named in repository metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChecksumAlgo {
    /// MD5 (16 bytes).
    Md5,
    /// SHA-1 (20 bytes); also spelled `sha` by old yum tools.
    Sha1,
    /// SHA-224 (28 bytes).
    Sha224,
    /// SHA-256 (32 bytes).
    Sha256,
    /// SHA-384 (48 bytes).
    Sha384,
    /// SHA-512 (64 bytes).
    Sha512,
}

impl ChecksumAlgo {
    pub const ALL: [ChecksumAlgo; 6] = [
        ChecksumAlgo::Md5,
        ChecksumAlgo::Sha1,
        ChecksumAlgo::Sha224,
        ChecksumAlgo::Sha256,
        ChecksumAlgo::Sha384,
        ChecksumAlgo::Sha512,
    ];

    /// Parses a metadata `type` attribute, case-insensitively. The legacy name
    /// `sha` means SHA-1.
    pub fn from_name(s: &str) -> Option<Self> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
            .or_else(|| s.eq_ignore_ascii_case("sha").then_some(ChecksumAlgo::Sha1))
    }

    /// Canonical lowercase name, e.g. `"sha256"`.
    pub fn name(self) -> &'static str {
        match self {
            ChecksumAlgo::Md5 => "md5",
            ChecksumAlgo::Sha1 => "sha1",
            ChecksumAlgo::Sha224 => "sha224",
            ChecksumAlgo::Sha256 => "sha256",
            ChecksumAlgo::Sha384 => "sha384",
            ChecksumAlgo::Sha512 => "sha512",
        }
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            ChecksumAlgo::Md5 => 16,
            ChecksumAlgo::Sha1 => 20,
            ChecksumAlgo::Sha224 => 28,
            ChecksumAlgo::Sha256 => 32,
            ChecksumAlgo::Sha384 => 48,
            ChecksumAlgo::Sha512 => 64,
        }
    }

    /// Stable one-byte code for on-disk indexes. Never renumber.
    pub fn code(self) -> u8 {
        match self {
            ChecksumAlgo::Md5 => 1,
            ChecksumAlgo::Sha1 => 2,
            ChecksumAlgo::Sha224 => 3,
            ChecksumAlgo::Sha256 => 4,
            ChecksumAlgo::Sha384 => 5,
            ChecksumAlgo::Sha512 => 6,
        }
    }

    /// Inverse of [`ChecksumAlgo::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.code() == code)
    }
}

/// An expected digest: algorithm plus raw digest bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Checksum {
    /// The algorithm.
    pub algo: ChecksumAlgo,
    /// Raw digest bytes; always `algo.digest_len()` long when built by [`Checksum::from_hex`].
    pub digest: Vec<u8>,
}

impl Checksum {
    /// Decodes a hex digest (either case, surrounding whitespace ignored) and
    /// checks its length against the algorithm.
    pub fn from_hex(algo: ChecksumAlgo, hex: &str) -> Result<Self, ChecksumError> {
        let hex = hex.trim();
        let want = algo.digest_len() * 2;
        if hex.len() != want {
            return Err(ChecksumError(format!(
                "{} digest must be {want} hex digits, got {}",
                algo.name(),
                hex.len()
            )));
        }
        let mut digest = Vec::with_capacity(algo.digest_len());
        for pair in hex.as_bytes().chunks_exact(2) {
            match (hex_val(pair[0]), hex_val(pair[1])) {
                (Some(hi), Some(lo)) => digest.push((hi << 4) | lo),
                _ => {
                    return Err(ChecksumError(format!(
                        "{} digest contains a non-hex character",
                        algo.name()
                    )));
                }
            }
        }
        Ok(Checksum { algo, digest })
    }

    /// Lowercase hex of the digest.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(self.digest.len() * 2);
        for b in &self.digest {
            s.push(char::from(DIGITS[usize::from(b >> 4)]));
            s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
        }
        s
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}
