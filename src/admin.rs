//! The bundle commands on a running node: `export`, `import` and `have` while the node serves.
//!
//! The store is one process's (redb locks it), so while a node runs the command line does not
//! open it: it asks the node, over its own HTTP port, to run the command as a *job*, and polls
//! the job's progress. The API (`POST /api/bundle/{export,import,have}` with a JSON body,
//! `GET /api/bundle/job`) answers only requests that carry the node's admin token
//! (`Authorization: Bearer …`), a random secret the node writes at start-up to
//! `<data_dir>/admin.token`, readable by the node's own user only: whoever can read it could
//! also stop the node and open the store. One job runs at a time; its progress and outcome are
//! also the `bundle_job` part of `/api/status` (the dashboard shows it).
//!
//! Paths in a request are the node's: it reads and writes them as its own user (a sandboxed
//! service must be allowed to: see the systemd unit's `ReadWritePaths`).
//!
//! Not here: the bundle format and checks (`bundle`), or serving the HTTP port (`http`, which
//! hands `/api/bundle/…` here).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::bundle::{self, Counters, Done, HaveList, Watch};
use crate::config::Config;
use crate::peer::identity::{Identity, SiteAuth};
use crate::snapshot::Snapshots;
use crate::store::{Store, now_secs};

/// The admin token's file in the data directory.
pub const TOKEN_FILE: &str = "admin.token";

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the node at {addr} did not answer: {source}")]
    Unreachable {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the node answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("the node's answer is not what this command expects: {0}")]
    BadAnswer(String),
}

/// Reads the admin token, creating it (mode 0600) when there is none yet.
pub fn load_or_create_token(data_dir: &Path) -> Result<String, AdminError> {
    let path = data_dir.join(TOKEN_FILE);
    let io = |source| AdminError::Io {
        path: path.clone(),
        source,
    };
    let private = std::fs::metadata(&path)
        .is_ok_and(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o077 == 0);
    match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().len() >= 32 && private => return Ok(t.trim().to_string()),
        Ok(_) => {
            tracing::warn!(path = %path.display(), "the admin token was readable by others (or too short): a new one was made")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| io(std::io::Error::other("no randomness")))?;
    let token = crate::hash::hex(&secret);
    crate::peer::identity::write_private(&path, token.as_bytes()).map_err(io)?;
    Ok(token)
}

// ---------------------------------------------------------------- the node's side

/// A request to run a bundle command.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum JobRequest {
    Export {
        to: PathBuf,
        /// A have-list file of the site the disk goes to.
        #[serde(default)]
        have: Option<PathBuf>,
        #[serde(default)]
        repos: Vec<String>,
    },
    Import {
        dir: PathBuf,
    },
    /// The have-list comes back in the report; the command line writes it where it was asked.
    Have {},
}

impl JobRequest {
    fn name(&self) -> &'static str {
        match self {
            JobRequest::Export { .. } => "export",
            JobRequest::Import { .. } => "import",
            JobRequest::Have { .. } => "have",
        }
    }
}

/// A job's state, as `GET /api/bundle/job` and `/api/status` (`bundle_job`) show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    /// `export`, `import` or `have`.
    pub command: String,
    /// The directory or file it works on.
    pub target: String,
    /// `running`, `done` or `failed`.
    pub state: String,
    pub started: u64,
    pub progress: Done,
    /// When done: the command's report (`bundle::ExportReport`, `bundle::ImportReport` and
    /// the bundle's origin, or the have-list's size).
    pub report: Option<serde_json::Value>,
    /// When failed: why.
    pub error: Option<String>,
}

struct Job {
    status: JobStatus,
    counters: Arc<Counters>,
}

/// What the jobs need of the node, and the current (or last) job.
pub struct Admin {
    pub cfg: Config,
    pub store: Store,
    pub snapshots: Arc<Snapshots>,
    pub me: Arc<Identity>,
    pub site: SiteAuth,
    token: String,
    job: Mutex<Option<Job>>,
    /// Set when the node stops: a running job ends after its current file.
    stop: Arc<std::sync::atomic::AtomicBool>,
}

/// Marks the job failed if dropped while it runs (a panic in the job).
struct Ended<'a>(&'a Mutex<Option<Job>>);

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        let mut j = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(j) = j.as_mut().filter(|j| j.status.state == "running") {
            j.status.state = "failed".into();
            j.status.error = Some("the job stopped unexpectedly; see the node's log".into());
        }
    }
}

/// Whether `path` is `dir` or under it (compared as far as both exist on disk).
fn inside(path: &Path, dir: &Path) -> bool {
    let real = |p: &Path| {
        // The nearest existing ancestor, resolved, plus the rest.
        let mut base = p.to_path_buf();
        let mut rest = Vec::new();
        while !base.exists() {
            match (base.file_name().map(|n| n.to_owned()), base.parent()) {
                (Some(n), Some(parent)) => {
                    rest.push(n);
                    base = parent.to_path_buf();
                }
                _ => break,
            }
        }
        let mut r = std::fs::canonicalize(&base).unwrap_or(base);
        r.extend(rest.iter().rev());
        r
    };
    real(path).starts_with(real(dir))
}

/// An answer of the API: status and a JSON body.
pub type Answer = (u16, serde_json::Value);

fn refuse(status: u16, message: &str) -> Answer {
    (status, serde_json::json!({ "error": message }))
}

impl Admin {
    pub fn new(
        cfg: Config,
        store: Store,
        snapshots: Arc<Snapshots>,
        me: Arc<Identity>,
        site: SiteAuth,
        token: String,
    ) -> Arc<Admin> {
        Arc::new(Admin {
            cfg,
            store,
            snapshots,
            me,
            site,
            token,
            job: Mutex::new(None),
            stop: Arc::default(),
        })
    }

    /// The node is stopping: a running job ends after its current file.
    pub fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The current or last job, for `/api/status`.
    pub fn job(&self) -> Option<JobStatus> {
        let j = self.job.lock().unwrap_or_else(PoisonError::into_inner);
        j.as_ref().map(|j| {
            let mut s = j.status.clone();
            s.progress = j.counters.read();
            s
        })
    }

    /// Whether `authorization` (the header's value) carries the token. Constant time.
    fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        let Some(given) = authorization.and_then(|a| a.strip_prefix(b"Bearer ")) else {
            return false;
        };
        // blake3::Hash compares in constant time.
        blake3::hash(given) == blake3::hash(self.token.as_bytes())
    }

    /// Handles `/api/bundle/…` (`tail` is what follows `/api/bundle/`).
    pub fn handle(
        self: &Arc<Self>,
        post: bool,
        tail: &str,
        authorization: Option<&[u8]>,
        body: &[u8],
    ) -> Answer {
        if !self.authorized(authorization) {
            return refuse(
                401,
                "the bundle API needs the node's admin token (Authorization: Bearer <the contents of <data_dir>/admin.token>)",
            );
        }
        match (post, tail) {
            (false, "job") => match self.job() {
                Some(s) => (200, serde_json::to_value(s).unwrap_or_default()),
                None => refuse(404, "no bundle job has run since the node started"),
            },
            (true, "export" | "import" | "have") => {
                let req: JobRequest = match serde_json::from_slice(body) {
                    Ok(r) => r,
                    Err(e) => return refuse(400, &format!("bad request body: {e}")),
                };
                if req.name() != tail {
                    return refuse(400, "the body's command does not match the path");
                }
                self.start(req)
            }
            (_, "job" | "export" | "import" | "have") => refuse(405, "wrong method"),
            _ => refuse(404, "no such bundle API"),
        }
    }

    /// Starts `req` as the job, unless one runs.
    fn start(self: &Arc<Self>, req: JobRequest) -> Answer {
        let counters = Arc::new(Counters::default());
        let stop = self.stop.clone();
        let target = match &req {
            JobRequest::Export { to, .. } => to.clone(),
            JobRequest::Import { dir } => dir.clone(),
            JobRequest::Have {} => self.cfg.data_dir(),
        };
        if !target.is_absolute() {
            return refuse(400, "paths must be absolute (they are the node's)");
        }
        if matches!(req, JobRequest::Export { .. }) && inside(&target, &self.cfg.data_dir()) {
            return refuse(
                400,
                "a bundle cannot be written inside the node's data directory",
            );
        }
        let status = JobStatus {
            command: req.name().to_string(),
            target: target.display().to_string(),
            state: "running".into(),
            started: now_secs(),
            progress: Done::default(),
            report: None,
            error: None,
        };
        {
            let mut j = self.job.lock().unwrap_or_else(PoisonError::into_inner);
            if j.as_ref().is_some_and(|j| j.status.state == "running") {
                return refuse(409, "a bundle job is running; wait for it to end");
            }
            *j = Some(Job {
                status: status.clone(),
                counters: counters.clone(),
            });
        }
        tracing::info!(
            command = status.command,
            target = status.target,
            "bundle job started"
        );
        let me = self.clone();
        let watch = Watch {
            counters,
            print: false,
            stop,
        };
        tokio::task::spawn_blocking(move || {
            // Whatever happens to the job (even a panic), it does not stay "running".
            let guard = Ended(&me.job);
            let outcome = me.run(req, watch);
            std::mem::forget(guard);
            let mut j = me.job.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(j) = j.as_mut() {
                match outcome {
                    Ok(report) => {
                        tracing::info!(command = j.status.command, "bundle job done");
                        j.status.state = "done".into();
                        j.status.report = Some(report);
                    }
                    Err(e) => {
                        tracing::warn!(command = j.status.command, error = %e, "bundle job failed");
                        j.status.state = "failed".into();
                        j.status.error = Some(e);
                    }
                }
            }
        });
        (202, serde_json::to_value(status).unwrap_or_default())
    }

    /// Runs a job to its end. Blocking (on the blocking pool).
    fn run(&self, req: JobRequest, watch: Watch) -> Result<serde_json::Value, String> {
        let json = |v: Result<serde_json::Value, serde_json::Error>| v.map_err(|e| e.to_string());
        match req {
            JobRequest::Export { to, have, repos } => {
                let have = have
                    .map(|p| HaveList::read(&p))
                    .transpose()
                    .map_err(|e| format!("reading the have-list: {e}"))?;
                let r = bundle::Exporter {
                    store: &self.store,
                    cfg: &self.cfg,
                    me: &self.me,
                    site: &self.site,
                    watch,
                }
                .export(&to, have.as_ref(), &repos)
                .map_err(|e| sandbox_hint(e.to_string()))?;
                json(serde_json::to_value(r))
            }
            JobRequest::Import { dir } => {
                let importer = bundle::Importer {
                    store: &self.store,
                    snapshots: &self.snapshots,
                    cfg: &self.cfg,
                    site: &self.site,
                    watch,
                };
                let (r, origin) = tokio::runtime::Handle::current()
                    .block_on(importer.import(&dir))
                    .map_err(|e| sandbox_hint(e.to_string()))?;
                json(serde_json::to_value(ImportOutcome {
                    report: r,
                    made_by: origin.node_id.to_string(),
                    created: origin.created,
                    site_key_checked: origin.site_key_checked,
                }))
            }
            JobRequest::Have {} => {
                let h = bundle::have_list(&self.store, &self.me.id).map_err(|e| e.to_string())?;
                let bytes = h.encode();
                json(serde_json::to_value(HaveOutcome {
                    node_id: self.me.id.to_string(),
                    files: h.len() as u64,
                    snapshots: h.header.snapshots.len() as u64,
                    bytes: bytes.len() as u64,
                    list: crate::hash::hex(&bytes),
                }))
            }
        }
    }
}

/// An error about a path the node cannot reach, with what to do about it.
fn sandbox_hint(e: String) -> String {
    if e.contains("Read-only file system") || e.contains("No such file") {
        format!(
            "{e} (the node reads and writes bundle paths as its own user, and a sandboxed service sees only some of the filesystem: use a disk under /media, /mnt or /run/media)"
        )
    } else {
        e
    }
}

/// The report of an import job.
#[derive(Debug, Serialize, Deserialize)]
pub struct ImportOutcome {
    pub report: bundle::ImportReport,
    /// The node that made the bundle, when, and whether this node's site key vouched for it.
    pub made_by: String,
    pub created: u64,
    pub site_key_checked: bool,
}

/// The report of a have job.
#[derive(Debug, Serialize, Deserialize)]
pub struct HaveOutcome {
    pub node_id: String,
    pub files: u64,
    pub snapshots: u64,
    pub bytes: u64,
    /// The have-list itself, hex (from a running node: the command line writes the file).
    #[serde(default)]
    pub list: String,
}

// ---------------------------------------------------------------- the command line's side

/// The running node of a config, reached over its HTTP port with its admin token.
pub struct Client {
    addr: SocketAddr,
    token: String,
    /// The running node's id.
    pub node_id: String,
}

/// How long one API exchange may take.
const EXCHANGE: Duration = Duration::from_secs(10);

/// The command line gives up following a job whose progress has not moved for this long (one
/// file of a bundle takes seconds).
const STALLED: Duration = Duration::from_secs(600);

impl Client {
    /// The node serving `cfg`'s data directory, if one is running there: its `/api/status`
    /// answers and names the same data directory. `Ok(None)`: no node runs (use the store
    /// directly). An error: a node runs but its token cannot be read.
    pub fn running(cfg: &Config) -> Result<Option<Client>, AdminError> {
        let mut addr = cfg.node.http_listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let Ok((200, body)) = exchange(addr, "GET", "/api/status", None, None) else {
            return Ok(None);
        };
        let status = serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
        let ours = status["data_dir"]
            .as_str()
            .is_some_and(|d| same_dir(Path::new(d), &cfg.data_dir()));
        if !ours {
            return Ok(None);
        }
        let path = cfg.data_dir().join(TOKEN_FILE);
        let token =
            std::fs::read_to_string(&path).map_err(|source| AdminError::Io { path, source })?;
        Ok(Some(Client {
            addr,
            token: token.trim().to_string(),
            node_id: status["node_id"].as_str().unwrap_or("?").to_string(),
        }))
    }

    /// Starts a job and follows it to its end, printing progress on stderr; returns the job's
    /// final status (done or failed).
    pub fn run(&self, req: &JobRequest) -> Result<JobStatus, AdminError> {
        let body = serde_json::to_vec(req).map_err(|e| AdminError::BadAnswer(e.to_string()))?;
        let path = format!("/api/bundle/{}", req.name());
        self.call("POST", &path, Some(&body))?;
        let started = Instant::now();
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let mut last_print = Instant::now();
        let (mut seen, mut moved) = (Done::default(), Instant::now());
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let body = self.call("GET", "/api/bundle/job", None)?;
            let s: JobStatus =
                serde_json::from_slice(&body).map_err(|e| AdminError::BadAnswer(e.to_string()))?;
            if s.progress != seen {
                (seen, moved) = (s.progress, Instant::now());
            } else if moved.elapsed() >= STALLED {
                return Err(AdminError::BadAnswer(format!(
                    "the node's {} job made no progress for {} minutes; see the node's log",
                    s.command,
                    STALLED.as_secs() / 60
                )));
            }
            if s.state != "running" {
                if s.progress.files > 0 {
                    bundle::print_progress(req.name(), &s.progress, started.elapsed(), true, tty);
                }
                return Ok(s);
            }
            let every = if tty { 200 } else { 5000 };
            if last_print.elapsed() >= Duration::from_millis(every) && s.progress.files > 0 {
                last_print = Instant::now();
                bundle::print_progress(req.name(), &s.progress, started.elapsed(), false, tty);
            }
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Vec<u8>, AdminError> {
        let (status, answer) =
            exchange(self.addr, method, path, Some(&self.token), body).map_err(|source| {
                AdminError::Unreachable {
                    addr: self.addr,
                    source,
                }
            })?;
        if (200..300).contains(&status) {
            return Ok(answer);
        }
        let message = serde_json::from_slice::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&answer).into_owned());
        Err(AdminError::Refused { status, message })
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// A running node's `/api/status` (the `status` command).
pub fn get_status(addr: SocketAddr) -> Result<serde_json::Value, AdminError> {
    let (status, body) = exchange(addr, "GET", "/api/status", None, None)
        .map_err(|source| AdminError::Unreachable { addr, source })?;
    if status != 200 {
        return Err(AdminError::Refused {
            status,
            message: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    serde_json::from_slice(&body).map_err(|e| AdminError::BadAnswer(e.to_string()))
}

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`): status and body.
fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, EXCHANGE)?;
    s.set_read_timeout(Some(EXCHANGE))?;
    s.set_write_timeout(Some(EXCHANGE))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or_default();
    if method == "POST" {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut all = Vec::new();
    s.take(16 << 20).read_to_end(&mut all)?;
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no complete answer head"))?;
    let head = String::from_utf8_lossy(&all[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status in the answer"))?;
    // The node answers with Content-Length (whole JSON bodies), never chunked.
    Ok((status, all[split + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_private_and_stable() {
        let d = tempfile::tempdir().unwrap();
        let t = load_or_create_token(d.path()).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(load_or_create_token(d.path()).unwrap(), t);
        let mode = std::fs::metadata(d.path().join(TOKEN_FILE))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn requests_parse_strictly() {
        let r: JobRequest =
            serde_json::from_str(r#"{"command":"import","dir":"/media/usb"}"#).unwrap();
        assert_eq!(r.name(), "import");
        assert!(serde_json::from_str::<JobRequest>(r#"{"command":"rm","dir":"/"}"#).is_err());
        assert!(
            serde_json::from_str::<JobRequest>(r#"{"command":"have","out":"/x","extra":1}"#)
                .is_err()
        );
    }
}
