//! [`HostilePeer`]: a peer that holds the site key and speaks the wire protocol itself, with
//! scripted answers, to test what a node does when a member of its own site lies or stalls.
//!
//! It has its own node identity (a key in its own temp dir) and a quinn endpoint on
//! 127.0.0.1 that acts as a server (a node lists it in `[discovery] peers` and dials it; it
//! answers the `Hello` with a `Welcome` and its site-key proof, then answers requests from its
//! [`Script`]) and can act as a client ([`HostilePeer::dial`]: a `Hello` with its proof, so the
//! node admits it and dials back). [`grind`] makes identities until rendezvous hashing picks
//! the one made for the keys a test cares about, so the peer can be made the fetcher of a
//! package or (for the v1 protocol) of a tree's snapshot.
//!
//! What it can be told to do (settable at any time, see [`HostilePeer::script`]):
//! - answer `Snapshot` with a given claimed revision and files, and serve files by BLAKE3 or
//!   SHA-256 for `Get` (a planted old repomd.xml, or an honest newer one);
//! - answer `Have` with nothing, what it holds, or everything;
//! - serve `Fetch` for paths it was given;
//! - trickle the body of a `Get` and/or `Fetch` one byte at a time (after an honest header);
//! - refuse the `Hello` with a given reason, or answer every request with a given error.
//!
//! Everything runs on a tokio runtime owned by the value; dropping it closes the endpoint and
//! shuts the runtime down. Every loop is bounded in count and every wait has a timeout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lanmirror::peer::wire::{self, ErrorKind, Request, Response, SnapFile, SnapshotInfo};
use lanmirror::peer::{Identity, NodeId, Role, SiteAuth, rendezvous};

/// Handshake + hello, and the time a node has to send one request.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a trickled body is kept going before the stream is reset.
pub const TRICKLE_MAX: Duration = Duration::from_secs(100);
/// Most connections the peer accepts in its life, and streams per connection.
const MAX_CONNS: usize = 256;
const MAX_STREAMS: usize = 100_000;
/// Most identities [`grind`] makes before giving up.
pub const GRIND_MAX: usize = 5000;

/// How the peer answers `Have`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HaveMode {
    /// Holds nothing.
    Nothing,
    /// What it was given with [`HostilePeer::hold`] (or a snapshot offer).
    #[default]
    Held,
    /// Claims every checksum asked about.
    Everything,
}

/// The scripted behaviour; change it through [`HostilePeer::script`].
#[derive(Debug, Default, Clone)]
pub struct Script {
    /// Answer to `Snapshot`: (claimed revision, files). `None`: `Error NotFound`.
    pub snapshot: Option<(String, Vec<SnapFile>)>,
    pub have: HaveMode,
    /// Send `Get` bodies one byte per this interval.
    pub trickle_get: Option<Duration>,
    /// Send `Fetch` bodies one byte per this interval.
    pub trickle_fetch: Option<Duration>,
    /// Refuse every `Hello` with this reason.
    pub refuse: Option<String>,
    /// After reading the `Hello`, close the connection with this reason (no answer).
    pub close_reason: Option<String>,
    /// Answer every request after the hello with `Error Unavailable` and this message.
    pub error_message: Option<String>,
    /// Answer `Get` and `Fetch` (only) with `Error Unavailable` and this message.
    pub fail_transfers: Option<String>,
    /// After welcoming a node, wait this long, then close the connection with this reason.
    pub close_after_welcome: Option<(Duration, String)>,
}

/// A request the peer received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    /// `hello`, `have`, `get`, `fetch`, `snapshot`, `bad`
    pub kind: &'static str,
    /// The checksum, path or tree asked for.
    pub detail: String,
}

#[derive(Default)]
struct State {
    script: Mutex<Script>,
    /// "blake3:<hex>" and "sha256:<hex>" → bytes.
    blobs: Mutex<HashMap<String, Bytes>>,
    /// `Fetch` paths (relative to the repo) → bytes.
    fetchable: Mutex<HashMap<String, Bytes>>,
    seen: Mutex<Vec<Seen>>,
}

impl State {
    fn note(&self, kind: &'static str, detail: String) {
        if let Ok(mut s) = self.seen.lock()
            && s.len() < 100_000
        {
            s.push(Seen {
                at: Instant::now(),
                kind,
                detail,
            });
        }
    }

    fn script(&self) -> Script {
        self.script.lock().unwrap().clone()
    }
}

/// `blake3:<hex>` of bytes.
pub fn blake3_ref(b: &[u8]) -> String {
    format!("blake3:{}", blake3::hash(b).to_hex())
}

/// `sha256:<hex>` of bytes.
pub fn sha256_ref(b: &[u8]) -> String {
    format!("sha256:{}", super::sha256_hex(b))
}

/// The snapshot answer's wire form. (The one place the v1 and v2 protocols differ in what
/// this peer sends: v1 also carried fetched_at, checked_at, etag and last_modified.)
pub fn snapshot_info(revision: String, files: Vec<SnapFile>) -> SnapshotInfo {
    SnapshotInfo { revision, files }
}

/// The `<revision>` of a repomd.xml.
pub fn revision_of(repomd: &[u8]) -> String {
    let t = String::from_utf8_lossy(repomd);
    let a = t.find("<revision>").expect("repomd.xml has a <revision>") + "<revision>".len();
    let b = t[a..].find("</revision>").expect("</revision>") + a;
    t[a..b].trim().to_string()
}

/// A site as a node's config names it: its name and key file (None: no key).
#[derive(Debug, Clone)]
pub struct SiteSpec {
    pub name: String,
    pub key_file: Option<PathBuf>,
}

impl SiteSpec {
    pub fn auth(&self) -> SiteAuth {
        SiteAuth::load(&self.name, self.key_file.as_deref()).expect("site key")
    }
}

/// Writes a site key file as the README says to make one (`openssl rand -hex 32`, mode 0600)
/// and returns its path.
pub fn write_site_key(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("site.key");
    let seed = format!("{} {:?}", dir.display(), Instant::now());
    let secret: String = super::hex(blake3::hash(seed.as_bytes()).as_bytes());
    std::fs::write(&p, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// Makes identities (`<tmp>/data/node.key`) until rendezvous over `others` and the new one
/// picks the new one for every key in `keys`. Returns the temp dir (`data/` inside it holds
/// the key: usable as a [`super::NodeOpts::base_dir`]) and the identity.
pub fn grind(keys: &[String], others: &[NodeId]) -> (tempfile::TempDir, Identity) {
    for _ in 0..GRIND_MAX {
        let t = super::temp();
        std::fs::create_dir_all(t.path().join("data")).expect("data dir");
        let id = Identity::load_or_create(&t.path().join("data")).expect("identity");
        let wins = keys
            .iter()
            .all(|k| rendezvous(k, others.iter().copied().chain([id.id])) == Some(id.id));
        if wins {
            return (t, id);
        }
    }
    panic!(
        "no identity out of {GRIND_MAX} wins the rendezvous for {keys:?} over {} others",
        others.len()
    );
}

/// Creates the node key a node with `base_dir` will load (`<base>/data/node.key`), so its id
/// is known before it starts.
pub fn node_identity(base_dir: &Path) -> NodeId {
    std::fs::create_dir_all(base_dir.join("data")).expect("node data dir");
    Identity::load_or_create(&base_dir.join("data"))
        .expect("node identity")
        .id
}

/// A scripted peer holding the site key. See the module docs.
pub struct HostilePeer {
    pub id: NodeId,
    addr: SocketAddr,
    state: Arc<State>,
    endpoint: quinn::Endpoint,
    identity: Arc<Identity>,
    site: SiteAuth,
    stop: tokio::sync::watch::Sender<bool>,
    rt: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

impl HostilePeer {
    /// A peer with a fresh identity.
    pub fn start(site: &SiteSpec) -> HostilePeer {
        let dir = super::temp();
        std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
        let identity = Identity::load_or_create(&dir.path().join("data")).expect("identity");
        Self::start_with(site, dir, identity)
    }

    /// A peer that wins the rendezvous for every key in `keys` against `others` (e.g. the
    /// node's id, made beforehand with [`node_identity`]).
    pub fn start_winning(site: &SiteSpec, keys: &[String], others: &[NodeId]) -> HostilePeer {
        let (dir, identity) = grind(keys, others);
        Self::start_with(site, dir, identity)
    }

    fn start_with(site: &SiteSpec, dir: tempfile::TempDir, identity: Identity) -> HostilePeer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("hostile-peer")
            .enable_all()
            .build()
            .expect("hostile peer runtime");
        let identity = Arc::new(identity);
        let tls = identity.server_tls().expect("server tls");
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic tls");
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::new(transport()));
        let endpoint = {
            let _g = rt.enter();
            quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).expect("bind")
        };
        let addr = endpoint.local_addr().unwrap();
        let state = Arc::new(State::default());
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let auth = site.auth();
        rt.spawn(accept_loop(
            endpoint.clone(),
            state.clone(),
            auth.clone(),
            stop_rx,
        ));
        HostilePeer {
            id: identity.id,
            addr,
            state,
            endpoint,
            identity,
            site: auth,
            stop,
            rt: Some(rt),
            _dir: dir,
        }
    }

    /// `127.0.0.1:<port>`, for `[discovery] peers`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Changes the script.
    pub fn script(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.state.script.lock().unwrap());
    }

    /// Holds `bytes` (served by `Get` under their BLAKE3 and SHA-256); returns the BLAKE3 hex.
    pub fn hold(&self, bytes: &[u8]) -> String {
        let b = Bytes::copy_from_slice(bytes);
        let mut m = self.state.blobs.lock().unwrap();
        m.insert(blake3_ref(bytes), b.clone());
        m.insert(sha256_ref(bytes), b);
        blake3::hash(bytes).to_hex().to_string()
    }

    /// Serves `bytes` for a `Fetch` of `path` (relative to the repo), not for `Get`.
    pub fn fetchable(&self, path: &str, bytes: &[u8]) {
        self.state
            .fetchable
            .lock()
            .unwrap()
            .insert(path.to_string(), Bytes::copy_from_slice(bytes));
    }

    /// Offers a snapshot: `repomd` (and companions `(suffix, bytes)`) held and named in the
    /// `Snapshot` answer, claiming `revision`.
    pub fn offer_snapshot(&self, revision: &str, repomd: &[u8], companions: &[(&str, &[u8])]) {
        let mut files = vec![SnapFile {
            suffix: String::new(),
            blake3: self.hold(repomd),
            size: repomd.len() as u64,
        }];
        for (suffix, b) in companions {
            files.push(SnapFile {
                suffix: suffix.to_string(),
                blake3: self.hold(b),
                size: b.len() as u64,
            });
        }
        self.script(|s| s.snapshot = Some((revision.to_string(), files)));
    }

    /// Holds every file of a snapshot (see [`repodata_files`]), as a peer that fetched it
    /// would.
    pub fn hold_repodata(&self, files: &[(String, Vec<u8>)]) {
        for (_, b) in files {
            self.hold(b);
        }
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests of one kind received so far.
    pub fn count(&self, kind: &str) -> usize {
        self.seen().iter().filter(|s| s.kind == kind).count()
    }

    /// Dials `addr` as a node would (Hello with its site proof as the dialler). Returns the
    /// answer to the hello. The connection is kept open (the node admits us and dials back)
    /// until the peer is dropped.
    pub fn dial(&self, addr: SocketAddr) -> Result<Response, String> {
        self.dial_conn(addr).map(|(_, answer)| answer)
    }

    /// [`HostilePeer::dial`], also returning the connection (to send raw requests on with
    /// [`HostilePeer::block_on`]).
    pub fn dial_conn(&self, addr: SocketAddr) -> Result<(quinn::Connection, Response), String> {
        let rt = self.rt.as_ref().unwrap();
        let endpoint = self.endpoint.clone();
        let identity = self.identity.clone();
        let site = self.site.clone();
        let state = self.state.clone();
        rt.block_on(async move {
            let tls = identity.client_tls(None).map_err(|e| e.to_string())?;
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
                .map_err(|e| e.to_string())?;
            let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
            cc.transport_config(Arc::new(transport()));
            let conn = tokio::time::timeout(
                STEP_TIMEOUT,
                endpoint
                    .connect_with(cc, addr, "lanmirror")
                    .map_err(|e| e.to_string())?,
            )
            .await
            .map_err(|_| "handshake timed out".to_string())?
            .map_err(|e| e.to_string())?;
            let exported = SiteAuth::exported(&conn)?;
            let hello = Request::Hello {
                site_id: site.site_id.clone(),
                http_port: 1,
                quic_port: endpoint.local_addr().map(|a| a.port()).unwrap_or(0),
                proof: site.proof(&exported, Role::Dialler),
            };
            let answer = tokio::time::timeout(STEP_TIMEOUT, async {
                let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                send.write_all(&wire::encode(&hello).unwrap())
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = send.finish();
                read_frame::<Response>(&mut recv).await
            })
            .await
            .map_err(|_| "no answer to hello".to_string())??;
            state.note("dialled", format!("{answer:?}"));
            if let Response::Welcome { proof, .. } = &answer {
                site.check(&exported, Role::Listener, proof.as_deref())
                    .map_err(|why| format!("the node's welcome does not prove the key: {why}"))?;
            }
            // Keep the connection alive while the runtime lives.
            let keep = conn.clone();
            tokio::spawn(async move {
                let _ = keep.closed().await;
            });
            Ok((conn, answer))
        })
    }

    /// Runs `f` on the peer's runtime (for raw protocol steps a test makes itself).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.as_ref().unwrap().block_on(f)
    }
}

impl Drop for HostilePeer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.endpoint.close(0u32.into(), b"hostile peer gone");
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(10)) {
        t.max_idle_timeout(Some(idle));
    }
    t
}

/// Reads one length-prefixed frame.
pub async fn read_frame<T>(recv: &mut quinn::RecvStream) -> Result<T, String>
where
    T: for<'de> serde::Deserialize<'de> + wire::Checked,
{
    let mut head = [0u8; 4];
    recv.read_exact(&mut head)
        .await
        .map_err(|e| format!("frame header: {e}"))?;
    let n = wire::frame_len(head).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; n];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| format!("frame: {e}"))?;
    wire::decode_body(&body).map_err(|e| e.to_string())
}

async fn send_frame(send: &mut quinn::SendStream, r: &Response) -> Result<(), String> {
    let f = wire::encode(r).map_err(|e| e.to_string())?;
    match tokio::time::timeout(STEP_TIMEOUT, send.write_all(&f)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("write timed out".into()),
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    state: Arc<State>,
    site: SiteAuth,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    for _ in 0..MAX_CONNS {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = stop.changed() => return,
        };
        let Some(incoming) = incoming else { return };
        let (state, site, stop) = (state.clone(), site.clone(), stop.clone());
        tokio::spawn(async move {
            let _ = connection(incoming, state, site, stop).await;
        });
    }
}

async fn connection(
    incoming: quinn::Incoming,
    state: Arc<State>,
    site: SiteAuth,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let conn = tokio::time::timeout(STEP_TIMEOUT, incoming)
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = tokio::time::timeout(STEP_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| "no hello stream".to_string())?
        .map_err(|e| e.to_string())?;
    let hello = tokio::time::timeout(STEP_TIMEOUT, read_frame::<Request>(&mut recv))
        .await
        .map_err(|_| "no hello".to_string())??;
    let Request::Hello { proof, .. } = hello else {
        state.note("bad", "first request not a hello".into());
        return Err("first request not a hello".into());
    };
    let exported = SiteAuth::exported(&conn)?;
    let proof_ok = site
        .check(&exported, Role::Dialler, proof.as_deref())
        .is_ok();
    state.note("hello", format!("proof ok: {proof_ok}"));
    if let Some(reason) = state.script().close_reason {
        conn.close(1u32.into(), reason.as_bytes());
        return Ok(());
    }
    if let Some(reason) = state.script().refuse {
        let _ = send_frame(&mut send, &Response::Refused { reason }).await;
        let _ = send.finish();
        tokio::time::sleep(Duration::from_millis(300)).await;
        conn.close(1u32.into(), b"refused");
        return Ok(());
    }
    send_frame(
        &mut send,
        &Response::Welcome {
            site_id: site.site_id.clone(),
            http_port: 1,
            proof: site.proof(&exported, Role::Listener),
        },
    )
    .await?;
    let _ = send.finish();
    if let Some((after, reason)) = state.script().close_after_welcome {
        let c = conn.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            c.close(1u32.into(), reason.as_bytes());
        });
    }
    for _ in 0..MAX_STREAMS {
        let (send, recv) = tokio::select! {
            s = conn.accept_bi() => s.map_err(|e| e.to_string())?,
            _ = stop.changed() => return Ok(()),
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                TRICKLE_MAX + Duration::from_secs(10),
                answer(send, recv, state),
            )
            .await;
        });
    }
    Ok(())
}

fn error(kind: ErrorKind, message: &str) -> Response {
    Response::Error {
        kind,
        message: message.into(),
    }
}

async fn answer(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    state: Arc<State>,
) -> Result<(), String> {
    let req = tokio::time::timeout(STEP_TIMEOUT, read_frame::<Request>(&mut recv))
        .await
        .map_err(|_| "no request".to_string())??;
    let script = state.script();
    let (kind, detail) = match &req {
        Request::Hello { .. } => ("hello", String::new()),
        Request::Have { checksums } => ("have", checksums.join(",")),
        Request::Get { checksum, offset } => ("get", format!("{checksum}@{offset}")),
        Request::Download { path, offset, .. } => ("download", format!("{path}@{offset}")),
        Request::Snapshot { repo, tree, .. } => ("snapshot", format!("{repo}/{tree}")),
        Request::Announce(_) => ("announce", String::new()),
    };
    state.note(kind, detail);
    if let Some(m) = &script.error_message {
        send_frame(&mut send, &error(ErrorKind::Unavailable, m)).await?;
        let _ = send.finish();
        return Ok(());
    }
    if let (Some(m), Request::Get { .. } | Request::Download { .. }) =
        (&script.fail_transfers, &req)
    {
        send_frame(&mut send, &error(ErrorKind::Unavailable, m)).await?;
        let _ = send.finish();
        return Ok(());
    }
    let (head, body, trickle) = match req {
        Request::Hello { .. } => (error(ErrorKind::BadRequest, "already admitted"), None, None),
        Request::Announce(_) => (Response::Ack, None, None),
        Request::Have { checksums } => {
            let blobs = state.blobs.lock().unwrap();
            let have = checksums
                .iter()
                .map(|c| match script.have {
                    HaveMode::Nothing => false,
                    HaveMode::Held => blobs.contains_key(c),
                    HaveMode::Everything => true,
                })
                .collect();
            (Response::Holding { have }, None, None)
        }
        Request::Get { checksum, offset } => {
            let blob = state.blobs.lock().unwrap().get(&checksum).cloned();
            match blob {
                Some(b) if offset <= b.len() as u64 => (
                    Response::Blob {
                        size: b.len() as u64,
                        blake3: blake3::hash(&b).to_hex().to_string(),
                    },
                    Some(b.slice(offset as usize..)),
                    script.trickle_get,
                ),
                _ => (error(ErrorKind::NotFound, "not held here"), None, None),
            }
        }
        Request::Download {
            path,
            checksum,
            offset,
            ..
        } => {
            let by_path = state.fetchable.lock().unwrap().get(&path).cloned();
            let by_sum = checksum.and_then(|c| state.blobs.lock().unwrap().get(&c).cloned());
            match by_path.or(by_sum) {
                Some(b) if offset <= b.len() as u64 => (
                    Response::Stream {
                        total: Some(b.len() as u64),
                    },
                    Some(b.slice(offset as usize..)),
                    script.trickle_fetch,
                ),
                _ => (
                    error(ErrorKind::Unavailable, "cannot fetch that"),
                    None,
                    None,
                ),
            }
        }
        Request::Snapshot { .. } => match script.snapshot {
            Some((rev, files)) => (Response::Snapshot(snapshot_info(rev, files)), None, None),
            None => (error(ErrorKind::NotFound, "no snapshot here"), None, None),
        },
    };
    send_frame(&mut send, &head).await?;
    let Some(body) = body else {
        let _ = send.finish();
        return Ok(());
    };
    match trickle {
        None => match tokio::time::timeout(STEP_TIMEOUT * 3, send.write_chunk(body)).await {
            Ok(Ok(())) => {
                let _ = send.finish();
            }
            _ => {
                let _ = send.reset(1u32.into());
            }
        },
        Some(every) => {
            // One byte per `every`, for at most TRICKLE_MAX, then a reset (never a clean end
            // of a body that was not sent whole).
            let started = Instant::now();
            let max = (TRICKLE_MAX.as_millis() / every.as_millis().max(1)) as usize + 1;
            let mut sent = 0usize;
            for i in 0..max.min(body.len()) {
                if started.elapsed() >= TRICKLE_MAX {
                    break;
                }
                let ok = tokio::time::timeout(STEP_TIMEOUT, send.write_all(&body[i..i + 1])).await;
                if !matches!(ok, Ok(Ok(()))) {
                    return Ok(());
                }
                sent += 1;
                if sent == body.len() {
                    break;
                }
                tokio::time::sleep(every).await;
            }
            if sent == body.len() {
                let _ = send.finish();
            } else {
                let _ = send.reset(1u32.into());
            }
        }
    }
    Ok(())
}

/// Every file under `<repo>/repodata/` now: (file name, bytes). Bounded to 64 files.
pub fn repodata_files(repo_dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(repo_dir.join("repodata"))
        .expect("repodata dir")
        .flatten()
        .take(64)
    {
        if e.path().is_file() {
            out.push((
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            ));
        }
    }
    out.sort();
    out
}

/// A client-only endpoint on `ip` (any loopback address, e.g. 127.0.0.7) with its own fresh
/// identity, for strangers: no site key, small send buffers. Call inside a runtime.
pub fn stranger_endpoint(ip: std::net::IpAddr) -> (quinn::Endpoint, quinn::ClientConfig) {
    let dir = super::temp();
    let me = Identity::load_or_create(dir.path()).expect("identity");
    let tls = me.client_tls(None).expect("client tls");
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
    let mut t = quinn::TransportConfig::default();
    t.send_window(1 << 20);
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(10)) {
        t.max_idle_timeout(Some(idle));
    }
    cc.transport_config(Arc::new(t));
    let ep = quinn::Endpoint::client(SocketAddr::new(ip, 0)).expect("bind stranger endpoint");
    (ep, cc)
}

/// Resident set size of a process (kB), from `/proc/<pid>/status`.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
