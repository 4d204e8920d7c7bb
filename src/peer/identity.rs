//! Who a node is and who may join its site: the persistent key pair, the node id derived from
//! it, the TLS configurations that pin it, and the site-key proof.
//!
//! - Each node keeps an Ed25519 key in `<data_dir>/node.key` (created on first start, mode 0600)
//!   and presents a self-signed certificate for it. Its node id is the first 16 bytes of the
//!   BLAKE3 hash of the certificate's SubjectPublicKeyInfo, so the id survives certificate
//!   re-issue but not a new key.
//! - Both sides of a connection present certificates (mutual TLS 1.3). A node dialling a peer
//!   it learnt by mDNS pins the advertised id: a different key fails the handshake. A static
//!   peer ("host:port") has no advertised id; its id is learnt from the handshake.
//! - With a site key, each side proves on every connection that it holds the key: a keyed
//!   BLAKE3 of a TLS exporter value (unique to this session) and its role, so a proof cannot be
//!   replayed on another connection or reflected back.
//!
//! Certificates are not checked against any authority: identity is continuity, admission is the
//! site key, and content is trusted only after its checksum is verified (`fetch`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::wire::ALPN;

/// A node's id: 16 bytes of BLAKE3 over its public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; 16]);

impl NodeId {
    pub fn parse(s: &str) -> Option<NodeId> {
        if s.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(NodeId(out))
    }

    /// The id of the node holding the key in this certificate.
    pub fn of_cert(cert: &CertificateDer<'_>) -> Result<NodeId, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(cert)?;
        let spki = parsed.subject_public_key_info();
        let h = blake3::hash(spki.as_ref());
        let mut id = [0u8; 16];
        id.copy_from_slice(&h.as_bytes()[..16]);
        Ok(NodeId(id))
    }
}

/// DER prefix of an Ed25519 SubjectPublicKeyInfo; the raw 32-byte key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

impl NodeId {
    /// The id of the node whose raw Ed25519 public key this is (the same id its certificate
    /// gives).
    pub fn of_ed25519(raw: &[u8]) -> NodeId {
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(raw);
        let h = blake3::hash(&spki);
        let mut id = [0u8; 16];
        id.copy_from_slice(&h.as_bytes()[..16]);
        NodeId(id)
    }
}

/// Checks an Ed25519 signature made by [`Identity::sign`].
pub fn verify_signature(public: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
        .verify(msg, sig)
        .is_ok()
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::hash::hex(&self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("node key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("node key {path} is not a usable key ({why}); move it away to make a new one")]
    BadKey { path: PathBuf, why: String },
    #[error("site key file {path}: {source}")]
    SiteKeyIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "site key file {path} holds {len} bytes of key material; use at least {MIN_SITE_KEY}: make one with `openssl rand -hex 32 > {path} && chmod 600 {path}` and copy it to every node"
    )]
    SiteKeyShort { path: PathBuf, len: usize },
    #[error(
        "site key file {path} can be read by other users (mode {mode:o}); make it private with `chmod 600 {path}` (and owned by the user lanmirror runs as)"
    )]
    SiteKeyOpen { path: PathBuf, mode: u32 },
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// This node's key pair and certificate.
pub struct Identity {
    pub id: NodeId,
    cert: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Identity {
    /// Loads `<dir>/node.key`, creating it on first use.
    pub fn load_or_create(dir: &Path) -> Result<Identity, IdentityError> {
        let path = dir.join("node.key");
        let io = |source| IdentityError::Io {
            path: path.clone(),
            source,
        };
        let bad = |why: String| IdentityError::BadKey {
            path: path.clone(),
            why,
        };
        let key = match std::fs::read_to_string(&path) {
            Ok(pem) => {
                use std::os::unix::fs::PermissionsExt;
                if let Ok(m) = std::fs::metadata(&path)
                    && mode_is_open(m.permissions().mode())
                {
                    tracing::warn!(path = %path.display(), mode = format!("{:o}", m.permissions().mode() & 0o777),
                        "this node's private key can be read by other users; run `chmod 600` on it");
                }
                rcgen::KeyPair::from_pem(&pem).map_err(|e| bad(e.to_string()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
                    .map_err(|e| bad(e.to_string()))?;
                write_private(&path, key.serialize_pem().as_bytes()).map_err(io)?;
                tracing::info!(path = %path.display(), "created this node's key");
                key
            }
            Err(e) => return Err(io(e)),
        };
        let params = rcgen::CertificateParams::new(vec!["lanmirror".to_string()])
            .map_err(|e| IdentityError::Tls(e.to_string()))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| IdentityError::Tls(e.to_string()))?;
        let cert = cert.der().clone();
        let id = NodeId::of_cert(&cert).map_err(|e| IdentityError::Tls(e.to_string()))?;
        Ok(Identity {
            id,
            cert,
            key_der: key.serialize_der(),
        })
    }

    fn key_pair(&self) -> Result<ring::signature::Ed25519KeyPair, IdentityError> {
        ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&self.key_der)
            .map_err(|e| IdentityError::Tls(format!("node key cannot sign: {e}")))
    }

    /// This node's raw Ed25519 public key.
    pub fn public_key(&self) -> Result<Vec<u8>, IdentityError> {
        use ring::signature::KeyPair;
        Ok(self.key_pair()?.public_key().as_ref().to_vec())
    }

    /// Signs `msg` with this node's key (Ed25519); the signature, raw.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, IdentityError> {
        Ok(self.key_pair()?.sign(msg).as_ref().to_vec())
    }

    fn chain(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            vec![self.cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
        )
    }

    /// The server side: our certificate, any client certificate accepted (the id is read
    /// from it after the handshake), ALPN [`ALPN`].
    pub fn server_tls(&self) -> Result<rustls::ServerConfig, IdentityError> {
        let provider = provider();
        let (chain, key) = self.chain();
        let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| IdentityError::Tls(e.to_string()))?
            .with_client_cert_verifier(Arc::new(AnyPeer { provider }))
            .with_single_cert(chain, key)
            .map_err(|e| IdentityError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        Ok(tls)
    }

    /// The client side, pinning the server's id when it is known.
    pub fn client_tls(
        &self,
        expect: Option<NodeId>,
    ) -> Result<rustls::ClientConfig, IdentityError> {
        let provider = provider();
        let (chain, key) = self.chain();
        let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| IdentityError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned { expect, provider }))
            .with_client_auth_cert(chain, key)
            .map_err(|e| IdentityError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        Ok(tls)
    }
}

/// Writes a secret file readable only by its owner, atomically.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("key.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Fewest bytes of secret a site key must carry.
pub const MIN_SITE_KEY: usize = 32;

/// Bytes of secret in a site key file's (trimmed) text: hex text, as `openssl rand -hex`
/// writes it, carries half its length; anything else its raw length.
pub fn key_material(text: &[u8]) -> usize {
    if !text.is_empty() && text.iter().all(u8::is_ascii_hexdigit) {
        text.len() / 2
    } else {
        text.len()
    }
}

/// Whether a secret file's mode lets users other than its owner in (group or others bits).
pub fn mode_is_open(mode: u32) -> bool {
    mode & 0o077 != 0
}

/// The site a node belongs to: its id (advertised and compared) and, optionally, its key.
#[derive(Clone)]
pub struct SiteAuth {
    pub site_id: String,
    key: Option<[u8; 32]>,
}

/// Label of the TLS exporter value that site-key proofs are bound to.
const EXPORTER_LABEL: &[u8] = b"EXPORTER-lanmirror-site-proof-v1";

/// Which side of a connection a proof is from (so a proof cannot be reflected).
#[derive(Debug, Clone, Copy)]
pub enum Role {
    Dialler,
    Listener,
}

impl SiteAuth {
    /// The site named `name`, with the key read from `key_file` when given.
    pub fn load(name: &str, key_file: Option<&Path>) -> Result<SiteAuth, IdentityError> {
        let key = match key_file {
            None => None,
            Some(p) => {
                use std::os::unix::fs::PermissionsExt;
                let io = |source| IdentityError::SiteKeyIo {
                    path: p.to_path_buf(),
                    source,
                };
                let mode = std::fs::metadata(p).map_err(io)?.permissions().mode();
                if mode_is_open(mode) {
                    return Err(IdentityError::SiteKeyOpen {
                        path: p.to_path_buf(),
                        mode: mode & 0o777,
                    });
                }
                let raw = std::fs::read(p).map_err(io)?;
                let trimmed = raw.trim_ascii();
                if key_material(trimmed) < MIN_SITE_KEY {
                    return Err(IdentityError::SiteKeyShort {
                        path: p.to_path_buf(),
                        len: key_material(trimmed),
                    });
                }
                Some(blake3::derive_key("lanmirror site key v1", trimmed))
            }
        };
        Ok(SiteAuth::new(name, key))
    }

    pub fn new(name: &str, key: Option<[u8; 32]>) -> SiteAuth {
        let h = blake3::derive_key("lanmirror site id v1", name.as_bytes());
        SiteAuth {
            site_id: crate::hash::hex(&h[..8]),
            key,
        }
    }

    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    /// This side's proof for a connection whose exporter value is `exported`.
    pub fn proof(&self, exported: &[u8; 32], role: Role) -> Option<String> {
        let key = self.key.as_ref()?;
        let mut h = blake3::Hasher::new_keyed(key);
        h.update(format!("{role:?}").as_bytes());
        h.update(exported);
        Some(h.finalize().to_hex().to_string())
    }

    /// Checks the other side's proof; `Err` says, in words for the log, what is wrong.
    pub fn check(
        &self,
        exported: &[u8; 32],
        their_role: Role,
        proof: Option<&str>,
    ) -> Result<(), String> {
        match (self.proof(exported, their_role), proof) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(
                "the peer's site uses a site key and this node has none: set [node] site_key_file"
                    .into(),
            ),
            (Some(_), None) => {
                Err("the peer does not hold a site key, and this site requires one".into())
            }
            (Some(want), Some(got)) => {
                if constant_time_eq(want.as_bytes(), got.as_bytes()) {
                    Ok(())
                } else {
                    Err("the peer holds a different site key".into())
                }
            }
        }
    }

    /// A MAC of `msg` under the site key (for bundle manifests), when there is a key.
    pub fn mac(&self, msg: &[u8]) -> Option<String> {
        let key = self.key.as_ref()?;
        let mut h = blake3::Hasher::new_keyed(key);
        h.update(b"lanmirror bundle manifest v1");
        h.update(msg);
        Some(h.finalize().to_hex().to_string())
    }

    /// Checks a MAC made by [`SiteAuth::mac`].
    pub fn check_mac(&self, msg: &[u8], mac: &str) -> bool {
        self.mac(msg)
            .is_some_and(|m| constant_time_eq(m.as_bytes(), mac.as_bytes()))
    }

    /// The exporter value of a connection.
    pub fn exported(conn: &quinn::Connection) -> Result<[u8; 32], String> {
        let mut out = [0u8; 32];
        conn.export_keying_material(&mut out, EXPORTER_LABEL, b"")
            .map_err(|_| "TLS exporter unavailable".to_string())?;
        Ok(out)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The handshake-signature part shared by both verifiers: TLS 1.3 only, with the provider's
/// algorithms, against the key in the presented certificate.
macro_rules! signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::General(
                "TLS 1.2 is not used between peers".into(),
            ))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

/// Server-certificate check: the certificate must be for the expected id (when known) and
/// the handshake signed by its key.
#[derive(Debug)]
struct Pinned {
    expect: Option<NodeId>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = NodeId::of_cert(end_entity)?;
        match self.expect {
            Some(want) if want != id => Err(rustls::Error::General(format!(
                "peer presented node id {id}, but {want} was advertised"
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    signatures!();
}

/// Client-certificate check: any certificate, as long as the handshake is signed by its key
/// (the id it yields is what the server then knows the peer by).
#[derive(Debug)]
struct AnyPeer {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyPeer {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        NodeId::of_cert(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    signatures!();
}

/// The node id of the other side of an established connection.
pub fn peer_id(conn: &quinn::Connection) -> Option<NodeId> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    NodeId::of_cert(certs.first()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_key_is_persistent_and_private() {
        let d = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(d.path()).unwrap();
        let b = Identity::load_or_create(d.path()).unwrap();
        assert_eq!(a.id, b.id, "same key, same id across restarts");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join("node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "node.key must not be readable by others");
        let (public, sig) = (a.public_key().unwrap(), a.sign(b"manifest").unwrap());
        assert_eq!(
            NodeId::of_ed25519(&public),
            a.id,
            "signing key is the TLS key"
        );
        assert!(verify_signature(&public, b"manifest", &sig));
        assert!(!verify_signature(&public, b"manifesT", &sig));
        let other = tempfile::tempdir().unwrap();
        let c = Identity::load_or_create(other.path()).unwrap();
        assert_ne!(a.id, c.id);
        assert_eq!(NodeId::parse(&a.id.to_string()), Some(a.id));
        std::fs::write(d.path().join("node.key"), "garbage").unwrap();
        let e = Identity::load_or_create(d.path()).err().unwrap();
        assert!(e.to_string().contains("not a usable key"), "{e}");
    }

    #[test]
    fn site_proofs_bind_key_session_and_role() {
        let k1 = SiteAuth::new("school", Some([1; 32]));
        let k2 = SiteAuth::new("school", Some([2; 32]));
        let open = SiteAuth::new("school", None);
        assert_eq!(k1.site_id, open.site_id, "the id comes from the name");
        assert_ne!(SiteAuth::new("clinic", None).site_id, open.site_id);
        let (s1, s2) = ([7u8; 32], [8u8; 32]);
        let p = k1.proof(&s1, Role::Dialler);
        assert!(k1.check(&s1, Role::Dialler, p.as_deref()).is_ok());
        // Another session, the other role, another key, no key: all refused.
        assert!(k1.check(&s2, Role::Dialler, p.as_deref()).is_err());
        assert!(k1.check(&s1, Role::Listener, p.as_deref()).is_err());
        let e = k2.check(&s1, Role::Dialler, p.as_deref()).unwrap_err();
        assert!(e.contains("different site key"), "{e}");
        let e = k1.check(&s1, Role::Dialler, None).unwrap_err();
        assert!(e.contains("does not hold a site key"), "{e}");
        let e = open.check(&s1, Role::Dialler, p.as_deref()).unwrap_err();
        assert!(e.contains("site_key_file"), "{e}");
        assert!(open.check(&s1, Role::Dialler, None).is_ok());
    }

    #[test]
    fn short_or_open_site_keys_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        let write = |text: &str, mode: u32| {
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write("short\n", 0o600);
        let e = SiteAuth::load("s", Some(&p)).err().unwrap();
        assert!(e.to_string().contains("at least 32"), "{e}");
        assert!(e.to_string().contains("openssl rand -hex 32"), "{e}");
        // 32 hex digits are 16 bytes of material: too short.
        write("0123456789abcdef0123456789abcdef\n", 0o600);
        assert!(SiteAuth::load("s", Some(&p)).is_err());
        // What `openssl rand -hex 32` makes.
        let hex64 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        write(&format!("{hex64}\n"), 0o600);
        let a = SiteAuth::load("s", Some(&p)).unwrap();
        write(hex64, 0o400);
        let b = SiteAuth::load("s", Some(&p)).unwrap();
        let x = [3u8; 32];
        assert_eq!(
            a.proof(&x, Role::Listener),
            b.proof(&x, Role::Listener),
            "a trailing newline does not change the key"
        );
        for open in [0o644, 0o640, 0o604, 0o660] {
            write(hex64, open);
            let e = SiteAuth::load("s", Some(&p)).err().unwrap();
            assert!(e.to_string().contains("chmod 600"), "{open:o}: {e}");
        }
    }

    #[test]
    fn key_material_and_modes() {
        assert_eq!(key_material(b""), 0);
        assert_eq!(key_material(b"abcd"), 2, "hex counts half");
        assert_eq!(key_material(b"abcx"), 4, "not hex: raw bytes");
        assert_eq!(key_material(b"ABCDEF01"), 4);
        assert!(mode_is_open(0o644));
        assert!(mode_is_open(0o100_640));
        assert!(mode_is_open(0o601));
        assert!(!mode_is_open(0o600));
        assert!(!mode_is_open(0o100_400));
    }
}
