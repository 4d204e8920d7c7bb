//! The node's configuration: the TOML file, its defaults and its validation.
//!
//! The embedded default ([`DEFAULT_CONFIG`]) is `config/lanmirror.toml`, byte for byte, so the
//! documented file and the behaviour of `lanmirror serve` without `--config` cannot drift apart.
//! This module only reads and checks; it opens no sockets and creates no directories.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::evict::{Limits, Policy};
use crate::units::{Rate, Size};
use crate::window::Window;

/// The documented default configuration, embedded in the binary.
pub const DEFAULT_CONFIG: &str = include_str!("../config/lanmirror.toml");

/// First path segments the node answers itself (`/api/status`, `/metrics`, `/setup/…`,
/// `/mirrorlist/…`), so no repo may be named after them.
pub const RESERVED_NAMES: [&str; 4] = ["api", "metrics", "setup", "mirrorlist"];

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {origin} is not valid: {source}")]
    Parse {
        origin: String,
        source: Box<toml::de::Error>,
    },
    #[error("config {origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// A whole, validated configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub node: NodeConfig,
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    #[serde(default)]
    pub metadata: MetadataConfig,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub quic: QuicConfig,
    #[serde(default)]
    pub seed: SeedConfig,
    #[serde(default)]
    pub uplink: UplinkConfig,
    #[serde(default)]
    pub store: StoreConfig,
    /// The `[[repo]]` tables as written; [`Config::parse`] splits them into `repos` and
    /// `pinned`, so [`RepoConfig`] keeps only what travels with a repo.
    #[serde(default, rename = "repo")]
    repo_entries: Vec<RepoEntry>,
    #[serde(skip)]
    pub repos: Vec<RepoConfig>,
    /// Names of the repos with `pinned = true`: their files are never evicted.
    #[serde(skip)]
    pub pinned: Vec<String>,
    /// Names of the repos with `mirror = true`: every package of their metadata is fetched as
    /// background work, not only newer versions of what the site's clients used.
    #[serde(skip)]
    pub mirrored: Vec<String>,
}

/// `[store]`: how much disk the cache may take. See `evict` for the rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Most bytes of stored files (e.g. "40 GiB"); unset: no cap. Least recently used files are
    /// evicted down to 90% of it when a download would cross it.
    #[serde(default)]
    pub max_size: Option<Size>,
    /// Free space to leave on the data directory's filesystem (e.g. "2 GiB"); below it, least
    /// recently used files are evicted until it is free plus a margin.
    #[serde(default = "default_min_free")]
    pub min_free: Size,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_size: None,
            min_free: default_min_free(),
        }
    }
}

/// The default `[store] min_free`: 1 GiB.
pub const DEFAULT_MIN_FREE: u64 = 1 << 30;

fn default_min_free() -> Size {
    Size(DEFAULT_MIN_FREE)
}

/// One `[[repo]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepoEntry {
    name: String,
    #[serde(default)]
    urls: Vec<String>,
    #[serde(default)]
    mirrorlists: Vec<String>,
    /// Never evict this repo's files (they count against `max_size` all the same).
    #[serde(default)]
    pinned: bool,
    /// Fetch every package of this repo as background work (the site wants all of it, e.g.
    /// before going offline), not only updates of what its clients used.
    #[serde(default)]
    mirror: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Where blobs, partial downloads and the index live. Unset: see [`default_data_dir`].
    pub data_dir: Option<PathBuf>,
    #[serde(default = "default_http_listen")]
    pub http_listen: SocketAddr,
    #[serde(default = "default_quic_listen")]
    pub quic_listen: SocketAddr,
    /// The site's name: nodes of differently named sites on one LAN ignore each other.
    #[serde(default = "default_site")]
    pub site: String,
    /// A file holding the site's shared secret. When set, only nodes that hold the same secret
    /// are admitted as peers (both ways, proven on every connection).
    pub site_key_file: Option<PathBuf>,
    /// For a site without a key: trust every host on this LAN enough to take a newer metadata
    /// snapshot from it when this node cannot reach upstream (a keyed site does this anyway).
    /// Off by default: without a key, any host could hand out forged metadata.
    #[serde(default)]
    pub trust_lan: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            data_dir: None,
            http_listen: default_http_listen(),
            quic_listen: default_quic_listen(),
            site: default_site(),
            site_key_file: None,
            trust_lan: false,
        }
    }
}

/// Mounted sneakernet bundles used as a read-only source.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedConfig {
    /// Bundle directories (made by `lanmirror export`), e.g. `["/media/usb"]`. Files are found
    /// by checksum, verified, and stored; a directory not mounted yet is checked every 30 s.
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
}

/// QUIC transport knobs for network drivers and links that misbehave.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuicConfig {
    /// Generic segmentation offload: 2-3x less CPU per byte, but some drivers report it and
    /// then fail (EIO); set false on those.
    #[serde(default = "yes")]
    pub gso: bool,
    /// Probe for a path MTU above `initial_mtu`.
    #[serde(default = "yes")]
    pub mtu_discovery: bool,
    /// The UDP payload size to start with (1200 is safe everywhere).
    #[serde(default = "default_initial_mtu")]
    pub initial_mtu: u16,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            gso: true,
            mtu_discovery: true,
            initial_mtu: default_initial_mtu(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    #[serde(default = "yes")]
    pub mdns: bool,
    #[serde(default)]
    pub peers: Vec<String>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            mdns: true,
            peers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataConfig {
    /// How long a checked repomd.xml (and other mutable file) is served without asking upstream.
    #[serde(default = "default_freshness")]
    pub freshness_secs: u64,
    /// How long files of a replaced metadata snapshot stay listed as servable.
    #[serde(default = "default_retention")]
    pub old_snapshot_retention_secs: u64,
    /// How often the node asks upstream for new metadata on its own, without a client asking
    /// (inside `[uplink] background_hours`). Unset: every `freshness_secs`; 0: never.
    pub scheduled_check_secs: Option<u64>,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        Self {
            freshness_secs: default_freshness(),
            old_snapshot_retention_secs: default_retention(),
            scheduled_check_secs: None,
        }
    }
}

impl MetadataConfig {
    pub fn freshness(&self) -> Duration {
        Duration::from_secs(self.freshness_secs)
    }
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.old_snapshot_retention_secs)
    }
    /// How often to check upstream without a client asking; `None`: never.
    pub fn scheduled_check(&self) -> Option<Duration> {
        match self.scheduled_check_secs.unwrap_or(self.freshness_secs) {
            0 => None,
            s => Some(Duration::from_secs(s)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Longest silence while reading a response before the transfer is cut and resumed where
    /// it stopped (reqwest restarts this timer with every piece received).
    #[serde(default = "default_read_timeout")]
    pub read_timeout_secs: u64,
    /// Extra attempts per mirror after the first one fails (with backoff).
    #[serde(default = "default_retries")]
    pub retries: u32,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout_secs: default_connect_timeout(),
            read_timeout_secs: default_read_timeout(),
            retries: default_retries(),
        }
    }
}

/// How the site uses its uplink: a rate cap for the whole site (its nodes agree on their shares),
/// the hours in which background work may run, and a monthly volume budget. Applied by
/// [`crate::uplink::Scheduler`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// The site's cap on upstream traffic, e.g. `"4 Mbit/s"`, shared by its nodes. Unset: none.
    pub max_rate: Option<Rate>,
    /// Local-time windows in which background work (prefetch, mirroring) may run, e.g.
    /// `["22:00-06:00"]`. Empty: any time.
    #[serde(default)]
    pub background_hours: Vec<Window>,
    /// The site's upstream volume per month, e.g. `"30 GiB"`; when spent, background work stops
    /// until the reset day (client downloads go on). Unset: no budget.
    pub monthly_budget: Option<Size>,
    /// The day of the month the budget period begins (1–31; in shorter months, their last day).
    #[serde(default = "default_budget_reset_day")]
    pub budget_reset_day: u8,
    /// After a new metadata snapshot, newer versions of the packages the site's clients fetched
    /// in this many days are fetched as background work (security fixes first). 0: none
    /// (repos with `mirror = true` are still fetched whole).
    #[serde(default = "default_prefetch_days")]
    pub prefetch_days: u32,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        Self {
            max_rate: None,
            background_hours: Vec::new(),
            monthly_budget: None,
            budget_reset_day: default_budget_reset_day(),
            prefetch_days: default_prefetch_days(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Connections served at once; further ones wait in the kernel's accept queue.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A connection whose client takes no bytes of the answer for this long is closed (a
    /// stalled reader or a sleeping laptop must not keep a slot).
    #[serde(default = "default_write_timeout")]
    pub write_timeout_secs: u64,
    /// A connection must complete a request head within this long of opening, or of its
    /// previous answer (keep-alive), or it is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// The client networks served (CIDR, e.g. `["10.0.0.0/8", "192.168.1.0/24"]`). Unset:
    /// [`DEFAULT_ALLOW`], loopback and the private, link-local and unique-local ranges.
    /// When set it replaces that list.
    #[serde(default)]
    pub allow: Option<Vec<Cidr>>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            write_timeout_secs: default_write_timeout(),
            idle_timeout_secs: default_idle_timeout(),
            allow: None,
        }
    }
}

impl HttpConfig {
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_secs)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// The networks whose clients are served: `allow`, or [`DEFAULT_ALLOW`].
    pub fn allow_list(&self) -> AllowList {
        AllowList(match &self.allow {
            Some(v) => v.clone(),
            None => DEFAULT_ALLOW
                .iter()
                .filter_map(|s| Cidr::parse(s).ok())
                .collect(),
        })
    }
}

/// Who may use the HTTP port when `[http] allow` is not set: loopback, the RFC 1918 private
/// ranges, link-local, and IPv6 unique-local (IPv4-mapped IPv6 forms match as IPv4).
pub const DEFAULT_ALLOW: [&str; 8] = [
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "::1/128",
    "fe80::/10",
    "fc00::/7",
];

/// An IP network in CIDR form (`192.168.1.0/24`, `fc00::/7`; a bare address is a /32 or
/// /128). Host bits below the prefix are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| {
            format!("{s:?} is not a network in CIDR form (e.g. \"192.168.1.0/24\" or \"fc00::/7\")")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(format!(
                        "{s:?}: the prefix length after '/' must be a number from 0 to {max}"
                    ));
                }
            },
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` is inside this network. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
    /// is compared as the IPv4 address it carries, both ways.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.addr.to_canonical(), ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                // A mapped network (::ffff:10.0.0.0/104) carries its prefix over the v6 width.
                let prefix = if self.addr.is_ipv6() {
                    match self.prefix.checked_sub(96) {
                        Some(p) => p,
                        None => return true,
                    }
                } else {
                    self.prefix
                };
                prefix_eq(&net.octets(), &a.octets(), prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => prefix_eq(&net.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }
}

/// Whether the first `bits` bits of `a` and `b` agree.
fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits).min(a.len() * 8);
    let (whole, rest) = (bits / 8, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[whole] & mask) == (b[whole] & mask)
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Cidr::parse(&s)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The client networks the HTTP port serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList(pub Vec<Cidr>);

impl AllowList {
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }
}

/// One upstream repository tree, served under `/{name}/`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    pub name: String,
    /// Upstream base URLs, tried in order.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Optional mirrorlist URLs (plain text, one base URL per line), tried after `urls`.
    #[serde(default)]
    pub mirrorlists: Vec<String>,
}

impl RepoConfig {
    /// A short hash of the repo's upstream URL set (`urls` and `mirrorlists`, order and a
    /// trailing `/` aside). Travels with the repo name between nodes, so two nodes exchange a
    /// repo only when both take it from the same place.
    pub fn upstream_id(&self) -> String {
        let mut all: Vec<String> = self
            .urls
            .iter()
            .map(|u| format!("url {}", u.trim_end_matches('/')))
            .chain(self.mirrorlists.iter().map(|m| format!("list {m}")))
            .collect();
        all.sort();
        all.dedup();
        let h = blake3::derive_key("lanmirror repo upstream v1", all.join("\n").as_bytes());
        crate::hash::hex(&h[..8])
    }
}

fn yes() -> bool {
    true
}
fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7700))
}
fn default_quic_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7701))
}
fn default_site() -> String {
    "default".into()
}
fn default_initial_mtu() -> u16 {
    1200
}
fn default_freshness() -> u64 {
    300
}
fn default_retention() -> u64 {
    3 * 24 * 3600
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_read_timeout() -> u64 {
    30
}
fn default_retries() -> u32 {
    3
}
fn default_max_connections() -> usize {
    1024
}
fn default_budget_reset_day() -> u8 {
    1
}
fn default_prefetch_days() -> u32 {
    crate::prefetch::DEFAULT_PREFETCH_DAYS
}
fn default_write_timeout() -> u64 {
    60
}
fn default_idle_timeout() -> u64 {
    30
}

impl Config {
    /// Parses and validates `text`; `origin` names it in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            source: Box::new(e),
        })?;
        for e in std::mem::take(&mut cfg.repo_entries) {
            if e.pinned {
                cfg.pinned.push(e.name.clone());
            }
            if e.mirror {
                cfg.mirrored.push(e.name.clone());
            }
            cfg.repos.push(RepoConfig {
                name: e.name,
                urls: e.urls,
                mirrorlists: e.mirrorlists,
            });
        }
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Reads `path`, or the embedded default when `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            None => Self::parse(DEFAULT_CONFIG, "(embedded default)"),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                Self::parse(&text, &p.display().to_string())
            }
        }
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            message,
        };
        if self.repos.is_empty() {
            return Err(invalid(
                "no [[repo]] is configured: nothing to serve".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for r in &self.repos {
            let name_ok = !r.name.is_empty()
                && r.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
                && r.name != "."
                && r.name != ".."
                && !RESERVED_NAMES.contains(&r.name.as_str());
            if !name_ok {
                return Err(invalid(format!(
                    "repo name {:?} must be letters, digits, '-', '_' or '.', and not one of the node's own paths ({})",
                    r.name,
                    RESERVED_NAMES.join(", ")
                )));
            }
            if !seen.insert(r.name.as_str()) {
                return Err(invalid(format!("repo {:?} is configured twice", r.name)));
            }
            if r.urls.is_empty() && r.mirrorlists.is_empty() {
                return Err(invalid(format!(
                    "repo {:?} has neither urls nor mirrorlists",
                    r.name
                )));
            }
            for u in r.urls.iter().chain(&r.mirrorlists) {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(invalid(format!(
                        "repo {:?}: {u:?} is not an http:// or https:// URL",
                        r.name
                    )));
                }
            }
        }
        if self.node.site.is_empty() || self.node.site.len() > 63 {
            return Err(invalid("node.site must be 1 to 63 characters".into()));
        }
        for p in &self.discovery.peers {
            if p.rsplit_once(':')
                .is_none_or(|(h, port)| h.is_empty() || port.parse::<u16>().is_err())
            {
                return Err(invalid(format!(
                    "discovery.peers: {p:?} is not \"host:port\" (e.g. \"192.168.1.20:7701\")"
                )));
            }
        }
        if !(1200..=65000).contains(&self.quic.initial_mtu) {
            return Err(invalid(
                "quic.initial_mtu must be between 1200 and 65000".into(),
            ));
        }
        if self.http.max_connections == 0 {
            return Err(invalid("http.max_connections must be at least 1".into()));
        }
        if self.http.write_timeout_secs == 0 || self.http.idle_timeout_secs == 0 {
            return Err(invalid(
                "http.write_timeout_secs and http.idle_timeout_secs must be at least 1".into(),
            ));
        }
        if self.http.allow.as_ref().is_some_and(|a| a.is_empty()) {
            return Err(invalid(
                "http.allow is empty, so no client could be served: list networks (e.g. [\"192.168.1.0/24\"]) or remove the key for the default (loopback and private networks)".into(),
            ));
        }
        if self.upstream.connect_timeout_secs == 0 || self.upstream.read_timeout_secs == 0 {
            return Err(invalid(
                "upstream timeouts must be at least 1 second".into(),
            ));
        }
        if !(1..=31).contains(&self.uplink.budget_reset_day) {
            return Err(invalid(format!(
                "uplink.budget_reset_day is {}: it must be a day of the month, 1 to 31 (31 means the last day in shorter months)",
                self.uplink.budget_reset_day
            )));
        }
        if self.uplink.monthly_budget == Some(Size(0)) {
            return Err(invalid(
                "uplink.monthly_budget must be more than 0 (leave it unset for no budget)".into(),
            ));
        }
        if self.store.max_size.is_some_and(|m| m.0 == 0) {
            return Err(invalid(
                "store.max_size must be more than 0 (leave it out for no cap)".into(),
            ));
        }
        Ok(())
    }

    /// Whether repo `name` has `mirror = true`.
    pub fn is_mirrored(&self, name: &str) -> bool {
        self.mirrored.iter().any(|p| p == name)
    }

    /// Whether repo `name` has `pinned = true`.
    pub fn is_pinned(&self, name: &str) -> bool {
        self.pinned.iter().any(|p| p == name)
    }

    /// The eviction policy `[store]`, `pinned` and the snapshot retention make.
    pub fn store_policy(&self) -> Policy {
        Policy {
            limits: Limits {
                max_size: self.store.max_size.map(|s| s.0),
                min_free: self.store.min_free.0,
            },
            pinned: self.pinned.clone(),
            retention_secs: self.metadata.old_snapshot_retention_secs,
        }
    }

    /// The data directory in use: the configured one, else [`default_data_dir`].
    pub fn data_dir(&self) -> PathBuf {
        self.node.data_dir.clone().unwrap_or_else(default_data_dir)
    }

    pub fn repo(&self, name: &str) -> Option<&RepoConfig> {
        self.repos.iter().find(|r| r.name == name)
    }
}

/// `/var/lib/lanmirror` for root; for anyone else `$XDG_DATA_HOME/lanmirror`, or
/// `~/.local/share/lanmirror`, or `./lanmirror-data` when even `$HOME` is unknown.
pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return PathBuf::from("/var/lib/lanmirror");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("lanmirror");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/share/lanmirror");
    }
    PathBuf::from("lanmirror-data")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repos_upstream_id_is_its_url_set() {
        let r = |urls: &[&str], lists: &[&str]| RepoConfig {
            name: "x".into(),
            urls: urls.iter().map(|s| s.to_string()).collect(),
            mirrorlists: lists.iter().map(|s| s.to_string()).collect(),
        };
        let a = r(&["https://a/x/", "https://b/x/"], &[]).upstream_id();
        assert_eq!(a.len(), 16);
        assert_eq!(a, r(&["https://b/x", "https://a/x/"], &[]).upstream_id());
        assert_ne!(a, r(&["https://a/x/"], &[]).upstream_id());
        assert_ne!(a, r(&["https://a/y/", "https://b/x/"], &[]).upstream_id());
        // A URL is not a mirrorlist.
        assert_ne!(
            r(&["https://m/"], &[]).upstream_id(),
            r(&[], &["https://m/"]).upstream_id()
        );
    }

    #[test]
    fn embedded_default_is_valid_and_names_almalinux_and_epel() {
        let c = Config::load(None).unwrap();
        assert!(c.repo("almalinux").is_some());
        assert!(c.repo("epel").is_some());
        assert_eq!(c.node.http_listen.port(), 7700);
        assert_eq!(
            c.node.data_dir, None,
            "data dir follows the user by default"
        );
    }

    #[test]
    fn embedded_default_matches_the_documented_file() {
        let on_disk = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/lanmirror.toml"
        ))
        .unwrap();
        assert_eq!(on_disk, DEFAULT_CONFIG);
    }

    const REPO: &str = "\n[[repo]]\nname='a'\nurls=['http://x/']\n";

    #[test]
    fn the_uplink_section() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.uplink.max_rate, None, "no cap by default");
        assert!(c.uplink.background_hours.is_empty());
        assert_eq!(c.uplink.monthly_budget, None);
        assert_eq!(c.uplink.budget_reset_day, 1);
        let c = Config::parse(
            &format!(
                "[uplink]\nmax_rate = '4 Mbit/s'\nbackground_hours = ['22:00-06:00', '12:00-13:00']\nmonthly_budget = '30 GiB'\nbudget_reset_day = 31{REPO}"
            ),
            "t",
        )
        .unwrap();
        assert_eq!(c.uplink.max_rate, Some(Rate(500_000)));
        assert_eq!(c.uplink.background_hours.len(), 2);
        assert_eq!(c.uplink.background_hours[0].to_string(), "22:00-06:00");
        assert_eq!(c.uplink.monthly_budget, Some(Size(30 << 30)));
        assert_eq!(c.uplink.budget_reset_day, 31);
    }

    #[test]
    fn uplink_errors_name_the_problem() {
        for (section, words) in [
            ("background_hours = ['22:00-6']", "not a time window"),
            ("background_hours = ['22:00-06:00', 'nights']", "\"nights\""),
            ("background_hours = '22:00-06:00'", "background_hours"),
            ("max_rate = '4 Mbit'", "not a rate"),
            ("monthly_budget = '30 GiBs'", "not a size"),
            ("monthly_budget = '0 GiB'", "more than 0"),
            ("budget_reset_day = 0", "1 to 31"),
            ("budget_reset_day = 32", "1 to 31"),
            ("budget_reset_day = -1", "budget_reset_day"),
            ("max_rates = '4 Mbit/s'", "max_rates"),
        ] {
            let e = Config::parse(&format!("[uplink]\n{section}{REPO}"), "t")
                .unwrap_err()
                .to_string();
            assert!(e.contains(words), "{section}: {e}");
        }
        let e = Config::parse(
            &format!("[uplink]\nbackground_hours = ['25:00-06:00']{REPO}"),
            "t",
        )
        .unwrap_err()
        .to_string();
        // toml shows the offending line: the key, then what is wrong and how to write it.
        assert!(e.contains("background_hours = ['25:00-06:00']"), "{e}");
        assert!(
            e.contains("start is not a time") && e.contains("22:00-06:00"),
            "{e}"
        );
    }

    #[test]
    fn store_section_and_pinned_repos() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.store.max_size, None, "no cap by default");
        assert_eq!(c.store.min_free, Size(DEFAULT_MIN_FREE));
        assert!(c.pinned.is_empty());
        let c = Config::parse(
            "[store]\nmax_size = \"40 GiB\"\nmin_free = \"2 GiB\"\n\
             [[repo]]\nname='a'\nurls=['http://x/']\npinned = true\n\
             [[repo]]\nname='b'\nurls=['http://y/']\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.store.max_size, Some(Size(40 << 30)));
        assert_eq!(c.repos.len(), 2);
        assert!(c.is_pinned("a") && !c.is_pinned("b"));
        let p = c.store_policy();
        assert_eq!(p.limits.max_size, Some(40 << 30));
        assert_eq!(p.limits.min_free, 2 << 30);
        assert_eq!(p.pinned, vec!["a".to_string()]);
        assert_eq!(p.retention_secs, default_retention());
        let e = Config::parse(
            "[store]\nmax_size='lots'\n[[repo]]\nname='a'\nurls=['http://x/']",
            "t",
        )
        .unwrap_err();
        assert!(e.to_string().contains("40 GiB"), "{e}");
        let e = Config::parse(
            "[store]\nmax_size='0'\n[[repo]]\nname='a'\nurls=['http://x/']",
            "t",
        )
        .unwrap_err();
        assert!(e.to_string().contains("max_size"), "{e}");
        let e =
            Config::parse("[[repo]]\nname='a'\nurls=['http://x/']\npinnned=true", "t").unwrap_err();
        assert!(e.to_string().contains("pinnned"), "{e}");
    }

    #[test]
    fn errors_name_the_problem() {
        let e = Config::parse("[[repo]]\nname='a/b'\nurls=['http://x/']", "t").unwrap_err();
        assert!(e.to_string().contains("repo name"), "{e}");
        for own in RESERVED_NAMES {
            let e = Config::parse(&format!("[[repo]]\nname='{own}'\nurls=['http://x/']"), "t")
                .unwrap_err();
            assert!(e.to_string().contains("the node's own paths"), "{e}");
        }
        let e = Config::parse("[[repo]]\nname='a'\nurls=['ftp://x/']", "t").unwrap_err();
        assert!(e.to_string().contains("not an http"), "{e}");
        let e = Config::parse("[node]\nhttp_listen='nope'", "t").unwrap_err();
        assert!(e.to_string().contains("http_listen"), "{e}");
        let e = Config::parse(
            "[node]\ntypo=1\n[[repo]]\nname='a'\nurls=['http://x/']",
            "t",
        )
        .unwrap_err();
        assert!(e.to_string().contains("typo"), "{e}");
        let e = Config::parse("", "t").unwrap_err();
        assert!(e.to_string().contains("no [[repo]]"), "{e}");
    }

    #[test]
    fn cidr_parse_and_match() {
        let n = |s: &str| Cidr::parse(s).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(n("192.168.1.0/24").contains(ip("192.168.1.77")));
        assert!(!n("192.168.1.0/24").contains(ip("192.168.2.1")));
        assert!(
            n("192.168.1.9/24").contains(ip("192.168.1.200")),
            "host bits ignored"
        );
        assert!(n("172.16.0.0/12").contains(ip("172.31.255.255")));
        assert!(!n("172.16.0.0/12").contains(ip("172.32.0.1")));
        assert!(
            n("127.0.0.2").contains(ip("127.0.0.2")),
            "bare address is a /32"
        );
        assert!(!n("127.0.0.2").contains(ip("127.0.0.1")));
        assert!(n("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(n("fc00::/7").contains(ip("fd12:3456::1")));
        assert!(!n("fc00::/7").contains(ip("fe00::1")));
        assert!(n("fe80::/10").contains(ip("fe80::1")));
        assert!(!n("10.0.0.0/8").contains(ip("::1")), "families do not mix");
        assert!(!n("::/0").contains(ip("10.1.2.3")));
        // IPv4-mapped IPv6 clients are matched as IPv4, and mapped networks work too.
        assert!(n("10.0.0.0/8").contains(ip("::ffff:10.9.8.7")));
        assert!(!n("10.0.0.0/8").contains(ip("::ffff:11.9.8.7")));
        assert!(n("::ffff:10.0.0.0/104").contains(ip("10.200.0.1")));
        assert!(!n("::ffff:10.0.0.0/104").contains(ip("11.0.0.1")));
        assert_eq!(n("10.0.0.0/8").to_string(), "10.0.0.0/8");
    }

    #[test]
    fn cidr_errors_are_clear() {
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/",
            "nonsense",
            "10.0.0.0/-1",
            "",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        let cfg = |allow: &str| {
            Config::parse(
                &format!("[http]\nallow = {allow}\n[[repo]]\nname='a'\nurls=['http://x/']"),
                "t",
            )
        };
        let e = cfg("[\"10.0.0.0/8\", \"192.168.1.0/33\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("192.168.1.0/33") && e.contains("prefix"), "{e}");
        let e = cfg("[\"lan\"]").unwrap_err().to_string();
        assert!(e.contains("CIDR") && e.contains("allow"), "{e}");
        let e = cfg("[]").unwrap_err().to_string();
        assert!(e.contains("http.allow is empty"), "{e}");
        let c = cfg("[\"127.0.0.2/32\"]").unwrap();
        assert!(c.http.allow_list().allows("127.0.0.2".parse().unwrap()));
        assert!(!c.http.allow_list().allows("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn default_allow_list_is_the_site_not_the_internet() {
        let d = HttpConfig::default().allow_list();
        assert_eq!(d.0.len(), DEFAULT_ALLOW.len(), "every default parses");
        for ok in [
            "127.0.0.1",
            "127.1.2.3",
            "10.1.2.3",
            "172.16.0.9",
            "192.168.1.20",
            "169.254.3.4",
            "::1",
            "fe80::1",
            "fd00::7",
            "::ffff:192.168.1.20",
            "::ffff:127.0.0.1",
        ] {
            assert!(d.allows(ok.parse().unwrap()), "{ok}");
        }
        for no in [
            "8.8.8.8",
            "172.32.0.1",
            "100.64.0.1",
            "2001:db8::1",
            "::ffff:8.8.8.8",
            "::",
        ] {
            assert!(!d.allows(no.parse().unwrap()), "{no}");
        }
    }
}
