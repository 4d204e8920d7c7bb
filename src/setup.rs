//! Client set-up, served by the node itself: ready `.repo` files for the distributions its
//! repos carry (`/setup/almalinux-9.repo`, `/setup/epel-9.repo`, …), a one-command client
//! script (`/setup/client.sh`), and the site's mirrorlist (`/mirrorlist/{repo}/{path}`): this
//! node first, then the site's other live nodes, in dnf's mirrorlist format.
//!
//! Failover: each `.repo` section's `baseurl=` lists the same nodes as the mirrorlist, this
//! node first; dnf tries them in order, so a client whose node is off goes on with the next.
//! The `.repo` files do not point `mirrorlist=` at the node (it is there, commented out): dnf
//! fetches a `mirrorlist=` URL again on every run, for package downloads too, fails outright
//! when that one node is off, and ignores `baseurl=` while `mirrorlist=` is set. A
//! `mirrorlist=` pays off only under a name that resolves to every node of the site.
//!
//! Everything here is text made from the config, the address the client reached the node at,
//! and the peers' HTTP addresses, which `http` passes in: no I/O. The address comes from the
//! request's `Host` header only when it is plainly `host[:port]` or `[v6]:port`
//! ([`authority`]); anything else (a hostile header that would add lines to a `.repo` file or
//! the script, a `$variable` dnf would expand) is never written out, and the connection's local
//! address stands in for it.
//!
//! Which distribution a `[[repo]]` carries is read from its name and upstream URLs
//! ([`distro_of`]); the layout of each (its sub-repositories, stock repo ids, mirrorlist or
//! metalink lines and GPG keys for AlmaLinux 8, 9 and 10 and EPEL) is the table below. Not
//! here: which peers are live (`peer`), serving repository files (`http`), or anything done on
//! the client (the script does that, in POSIX sh).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::config::{Config, RepoConfig};
use crate::paths::{self, PathError};

/// Path prefix of the set-up files.
pub const SETUP_PREFIX: &str = "/setup/";
/// Path prefix of the site's mirrorlist.
pub const MIRRORLIST_PREFIX: &str = "/mirrorlist/";
/// First line of every `.repo` file the node makes; the client script recognises its own
/// files by it.
pub const MARK: &str = "# lanmirror:";
/// Prefix of the repo ids in the node's `.repo` files: they sit beside the stock ones (which
/// the client script disables) instead of clashing with them (dnf keeps the first definition
/// of an id it reads and ignores the rest).
pub const ID_PREFIX: &str = "lanmirror-";
/// `cost=` of the node's repos: below dnf's default of 1000, so while the stock repos are
/// still enabled dnf takes a package from the node rather than from the internet.
pub const COST: u32 = 500;
/// The releases served `.repo` files are made for.
pub const MAJORS: [u8; 3] = [8, 9, 10];

/// Why a set-up request has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    #[error("no such set-up file (see /setup/ for the list)")]
    NotFound,
    #[error("no such repository")]
    NoRepo,
    #[error("refused: {0}")]
    BadPath(#[from] PathError),
}

/// A set-up answer: its body and content type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub content_type: &'static str,
    pub body: String,
}

impl Page {
    fn text(body: String) -> Page {
        Page {
            content_type: "text/plain; charset=utf-8",
            body,
        }
    }
}

/// Whether `path` is one of this module's (checked before repository paths: `setup` and
/// `mirrorlist` are reserved repo names).
pub fn serves(path: &str) -> bool {
    path == SETUP_PREFIX.trim_end_matches('/')
        || path.starts_with(SETUP_PREFIX)
        || path.starts_with(MIRRORLIST_PREFIX)
}

/// The answer to `path` (one [`serves`] accepts). `host`: the request's `Host` header;
/// `local`: the connection's local address; `peers`: the live peers in order, each with the
/// HTTP addresses it is known by (best first).
pub fn answer(
    cfg: &Config,
    path: &str,
    host: Option<&[u8]>,
    local: SocketAddr,
    peers: &[Vec<SocketAddr>],
) -> Result<Page, SetupError> {
    let me = authority(host, local);
    // This node as the client reached it, then every peer at an address the client can use.
    let nodes: Vec<String> = std::iter::once(me.clone())
        .chain(
            peers
                .iter()
                .filter_map(|p| client_address(p, local.ip()))
                .map(socket_text),
        )
        .collect();
    if let Some(rest) = path.strip_prefix(MIRRORLIST_PREFIX) {
        return mirrorlist(cfg, rest, &nodes).map(Page::text);
    }
    let offers = offers(cfg);
    let file = path
        .strip_prefix(SETUP_PREFIX)
        .unwrap_or_default()
        .trim_end_matches('/');
    if file.is_empty() {
        return Ok(Page::text(index(&me, &offers)));
    }
    if file == "client.sh" {
        return Ok(Page {
            content_type: "text/x-shellscript; charset=utf-8",
            body: client_script(&me, &offers),
        });
    }
    let offer = offers
        .iter()
        .find(|o| format!("{}.repo", o.file_stem()) == file)
        .ok_or(SetupError::NotFound)?;
    Ok(Page::text(repo_file(offer, &nodes, &cfg.node.site)))
}

// ------------------------------------------------------------------ the node's address

/// The node's address as the client reached it, for URLs: the `Host` header when it is a
/// plain `host[:port]` (letters, digits, `-` and `.`) or `[v6]:port`, else the connection's
/// local address. Nothing else a client sends ends up in a file.
pub fn authority(host: Option<&[u8]>, local: SocketAddr) -> String {
    match host.and_then(|h| std::str::from_utf8(h).ok()) {
        Some(h) if valid_host(h) => h.to_string(),
        _ => socket_text(local),
    }
}

/// `host[:port]` or `[v6][:port]`, nothing more.
fn valid_host(h: &str) -> bool {
    if h.is_empty() || h.len() > 260 {
        return false;
    }
    let (name, port) = if let Some(rest) = h.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(p) => (None, Some(p)),
                None => return false,
            },
        }
    } else {
        match h.split_once(':') {
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(h), None),
        }
    };
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|n| n > 0)
    });
    let name_ok = name.is_none_or(|n| {
        !n.is_empty()
            && n.len() <= 253
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !n.starts_with(['-', '.'])
    });
    port_ok && name_ok
}

/// An address as it goes in a URL: `1.2.3.4:7700`, `[fd00::1]:7700` (no zone: a client
/// cannot use another host's interface index), IPv4-mapped addresses as IPv4.
pub fn socket_text(a: SocketAddr) -> String {
    match a.ip().to_canonical() {
        IpAddr::V4(v4) => format!("{v4}:{}", a.port()),
        IpAddr::V6(v6) => format!("[{v6}]:{}", a.port()),
    }
}

// ------------------------------------------------------------------ distributions

/// A distribution whose client `.repo` files the node can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distro {
    AlmaLinux,
    Epel,
}

impl Distro {
    /// The start of its file names: `almalinux-9.repo`.
    pub fn slug(self) -> &'static str {
        match self {
            Distro::AlmaLinux => "almalinux",
            Distro::Epel => "epel",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Distro::AlmaLinux => "AlmaLinux",
            Distro::Epel => "EPEL (Extra Packages for Enterprise Linux)",
        }
    }
}

/// Which distribution `repo` carries, from its name (`almalinux`, `epel`) or an upstream URL
/// whose last path segment is one (`https://repo.almalinux.org/almalinux/`,
/// `https://dl.fedoraproject.org/pub/epel/`), or the root of an `almalinux.org` host (the
/// vault). `None` for anything else: its layout is unknown, so no `.repo` file is offered.
pub fn distro_of(repo: &RepoConfig) -> Option<Distro> {
    let by_name = |n: &str| match n.to_ascii_lowercase().as_str() {
        "almalinux" => Some(Distro::AlmaLinux),
        "epel" => Some(Distro::Epel),
        _ => None,
    };
    if let Some(d) = by_name(&repo.name) {
        return Some(d);
    }
    repo.urls.iter().chain(&repo.mirrorlists).find_map(|u| {
        let rest = u.split_once("://")?.1;
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host = host
            .rsplit('@')
            .next()?
            .split(':')
            .next()?
            .to_ascii_lowercase();
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let path = path.trim_matches('/');
        if path.is_empty() && (host == "almalinux.org" || host.ends_with(".almalinux.org")) {
            return Some(Distro::AlmaLinux);
        }
        by_name(path.rsplit('/').next().unwrap_or_default())
    })
}

/// A `.repo` file the node offers: a distribution at a release, through one of its repos.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub distro: Distro,
    pub major: u8,
    /// The `[[repo]]` name its files are served under.
    pub repo: String,
}

impl Offer {
    /// `almalinux-9`: the file is `almalinux-9.repo`.
    pub fn file_stem(&self) -> String {
        format!("{}-{}", self.distro.slug(), self.major)
    }
}

/// Every `.repo` file the node offers: for each distribution its repos carry (the first repo
/// that carries it), every release in [`MAJORS`].
pub fn offers(cfg: &Config) -> Vec<Offer> {
    let mut out = Vec::new();
    for distro in [Distro::AlmaLinux, Distro::Epel] {
        if let Some(r) = cfg.repos.iter().find(|r| distro_of(r) == Some(distro)) {
            out.extend(MAJORS.iter().map(|&major| Offer {
                distro,
                major,
                repo: r.name.clone(),
            }));
        }
    }
    out
}

/// One repository of a distribution's release, as its stock `.repo` file has it.
struct Section {
    /// The stock repo id (`baseos`); the node's is [`ID_PREFIX`] + this.
    id: &'static str,
    /// Its `name=` (after "AlmaLinux $releasever - ").
    title: &'static str,
    /// Directory under the release: `BaseOS` → `…/$releasever/BaseOS/$basearch/os/`.
    dir: &'static str,
    /// Enabled in a stock installation.
    enabled: bool,
    /// The releases that have it.
    majors: &'static [u8],
}

/// AlmaLinux's repositories (from the distribution's own `.repo` files and mirror layout;
/// debug and source repos are left out: they live on the vault).
#[rustfmt::skip]
const ALMALINUX: &[Section] = &[
    Section { id: "baseos",           title: "BaseOS",            dir: "BaseOS",           enabled: true,  majors: &[8, 9, 10] },
    Section { id: "appstream",        title: "AppStream",         dir: "AppStream",        enabled: true,  majors: &[8, 9, 10] },
    Section { id: "extras",           title: "Extras",            dir: "extras",           enabled: true,  majors: &[8, 9, 10] },
    Section { id: "powertools",       title: "PowerTools",        dir: "PowerTools",       enabled: false, majors: &[8] },
    Section { id: "crb",              title: "CRB",               dir: "CRB",              enabled: false, majors: &[9, 10] },
    Section { id: "ha",               title: "HighAvailability",  dir: "HighAvailability", enabled: false, majors: &[8] },
    Section { id: "highavailability", title: "HighAvailability",  dir: "HighAvailability", enabled: false, majors: &[9, 10] },
    Section { id: "resilientstorage", title: "ResilientStorage",  dir: "ResilientStorage", enabled: false, majors: &[8, 9] },
    Section { id: "nfv",              title: "Real Time for NFV", dir: "NFV",              enabled: false, majors: &[8, 9, 10] },
    Section { id: "rt",               title: "Real Time",         dir: "RT",               enabled: false, majors: &[8, 9, 10] },
    Section { id: "sap",              title: "SAP",               dir: "SAP",              enabled: false, majors: &[8, 9, 10] },
    Section { id: "saphana",          title: "SAP HANA",          dir: "SAPHANA",          enabled: false, majors: &[8, 9, 10] },
    Section { id: "plus",             title: "Plus",              dir: "plus",             enabled: false, majors: &[8, 9] },
];

/// One section of a `.repo` file, ready to print.
struct RepoSection {
    id: String,
    name: String,
    /// The stock line that names the source (`mirrorlist=…` or `metalink=…`), printed
    /// commented out.
    stock: String,
    /// The node's path of the tree, without the repo name: `$releasever/BaseOS/$basearch/os/`.
    tree: String,
    enabled: bool,
    gpgkey: String,
    metadata_expire: Option<u32>,
}

fn sections(offer: &Offer) -> Vec<RepoSection> {
    let m = offer.major;
    match offer.distro {
        Distro::AlmaLinux => ALMALINUX
            .iter()
            .filter(|s| s.majors.contains(&m))
            .map(|s| RepoSection {
                id: format!("{ID_PREFIX}{}", s.id),
                name: format!("AlmaLinux $releasever - {}", s.title),
                stock: format!(
                    "mirrorlist=https://mirrors.almalinux.org/mirrorlist/$releasever/{}",
                    s.id
                ),
                tree: format!("$releasever/{}/$basearch/os/", s.dir),
                enabled: s.enabled,
                // AlmaLinux 8 names its key without the release.
                gpgkey: if m == 8 {
                    "file:///etc/pki/rpm-gpg/RPM-GPG-KEY-AlmaLinux".into()
                } else {
                    format!("file:///etc/pki/rpm-gpg/RPM-GPG-KEY-AlmaLinux-{m}")
                },
                metadata_expire: (m >= 9).then_some(86400),
            })
            .collect(),
        Distro::Epel => {
            // EPEL 10 has minor releases (10.0, 10.1, …), named by dnf's $releasever_minor.
            let rel = if m >= 10 {
                "$releasever_major${releasever_minor:+.$releasever_minor}"
            } else {
                "$releasever"
            };
            let stock = if m >= 10 {
                format!(
                    "metalink=https://mirrors.fedoraproject.org/metalink?repo=epel-{rel}&arch=$basearch"
                )
            } else {
                format!(
                    "metalink=https://mirrors.fedoraproject.org/metalink?repo=epel-{rel}&arch=$basearch&infra=$infra&content=$contentdir"
                )
            };
            vec![RepoSection {
                id: format!("{ID_PREFIX}epel"),
                name: format!(
                    "Extra Packages for Enterprise Linux {} - $basearch",
                    if m >= 10 {
                        "$releasever_major"
                    } else {
                        "$releasever"
                    }
                ),
                stock,
                tree: format!("{rel}/Everything/$basearch/"),
                enabled: true,
                gpgkey: format!("file:///etc/pki/rpm-gpg/RPM-GPG-KEY-EPEL-{m}"),
                metadata_expire: None,
            }]
        }
    }
}

/// The `.repo` file of `offer`. `nodes`: the site's nodes as a client reaches them, this node
/// (as the client reached it) first.
pub fn repo_file(offer: &Offer, nodes: &[String], site: &str) -> String {
    let stem = offer.file_stem();
    let me = nodes.first().map_or("", String::as_str);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{MARK} {} {} from the lanmirror nodes of site \"{}\", through http://{me}/",
        offer.distro.title(),
        offer.major,
        printable(site)
    );
    let _ = write!(
        out,
        "# Made by the node at http://{me}/setup/{stem}.repo. To use it:\n\
         #   curl -fsS http://{me}/setup/client.sh | sudo sh\n\
         # (adds this file and disables the stock repos it replaces), or by hand:\n\
         #   dnf config-manager --add-repo http://{me}/setup/{stem}.repo\n\
         #   dnf config-manager --set-disabled <the stock ids: the ones below without \"{ID_PREFIX}\">\n\
         #\n\
         # baseurl= lists this node, then the site's other nodes it knew of when this file was\n\
         # made: dnf tries them in order, so when one is off it goes on with the next. Fetch the\n\
         # file again (run client.sh again) after adding or removing a node. The mirrorlist= under\n\
         # it is the same list kept current by this node, but dnf must reach this node to read it\n\
         # on every run and then ignores baseurl=: use it only with a name that resolves to every\n\
         # node of the site. The stock source of each repo is kept, commented out. cost={COST}\n\
         # makes dnf prefer these repos while stock ones are still enabled.\n"
    );
    for s in sections(offer) {
        let urls: Vec<String> = nodes
            .iter()
            .map(|n| format!("http://{n}/{}/{}", offer.repo, s.tree))
            .collect();
        let _ = write!(
            out,
            "\n[{}]\nname={} (lanmirror)\n#{}\nbaseurl={}\n\
             #mirrorlist=http://{me}{MIRRORLIST_PREFIX}{}/{}\n\
             enabled={}\ngpgcheck=1\ngpgkey={}\ncost={COST}\n",
            s.id,
            s.name,
            s.stock,
            // One URL a line: continuation lines start with white space.
            urls.join("\n        "),
            offer.repo,
            s.tree,
            u8::from(s.enabled),
            s.gpgkey,
        );
        if let Some(secs) = s.metadata_expire {
            let _ = writeln!(out, "metadata_expire={secs}");
        }
    }
    out
}

/// `/setup/`: what there is, as plain text.
fn index(me: &str, offers: &[Offer]) -> String {
    let mut out = format!(
        "lanmirror client set-up\n\n\
         On each client, as root, one command:\n\n  curl -fsS http://{me}/setup/client.sh | sudo sh\n\n\
         Or add a .repo file with dnf config-manager --add-repo URL:\n\n"
    );
    for o in offers {
        let _ = writeln!(out, "  http://{me}/setup/{}.repo", o.file_stem());
    }
    if offers.is_empty() {
        out.push_str("  (none: no configured repo is AlmaLinux or EPEL)\n");
    }
    out
}

/// Text safe on one line of a comment: printable ASCII, the rest as `?`.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

// ------------------------------------------------------------------ the mirrorlist

/// `/mirrorlist/{repo}/{path}`: one base URL per line, one per node of `nodes` (this node
/// first). dnf substitutes `$releasever`/`$basearch` before asking, so `path` is a concrete
/// tree; `$` in it is encoded so that dnf does not expand it again.
fn mirrorlist(cfg: &Config, rest: &str, nodes: &[String]) -> Result<String, SetupError> {
    let trimmed = rest.trim_end_matches('/');
    let (repo, tree) = match paths::parse_request_path(&format!("/{trimmed}")) {
        Ok((repo, path)) => (repo, format!("{}/", encode(path.as_str()))),
        // The repo's root itself.
        Err(PathError::Empty) if !trimmed.is_empty() && !trimmed.contains('/') => {
            paths::parse_request_path(&format!("/{trimmed}/x"))?;
            (trimmed.to_string(), String::new())
        }
        Err(e) => return Err(SetupError::BadPath(e)),
    };
    if cfg.repo(&repo).is_none() {
        return Err(SetupError::NoRepo);
    }
    let mut out = format!("# lanmirror: the site's nodes for {repo}/{tree}, this node first\n");
    for n in nodes {
        let _ = writeln!(out, "http://{n}/{repo}/{tree}");
    }
    Ok(out)
}

/// Of a peer's addresses (best first), the one to give a client that reached this node at
/// `local`: one it can use (a loopback address only when the client came over loopback too;
/// never an IPv6 link-local one, which a URL cannot tie to an interface), of the same family
/// as `local` when there is one.
fn client_address(addrs: &[SocketAddr], local: IpAddr) -> Option<SocketAddr> {
    let local = local.to_canonical();
    let usable: Vec<IpAddr> = addrs
        .iter()
        .map(|a| a.ip().to_canonical())
        .filter(|ip| {
            !(ip.is_unspecified()
                || (ip.is_loopback() && !local.is_loopback())
                || matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))
        })
        .collect();
    let ip = usable
        .iter()
        .find(|ip| ip.is_ipv4() == local.is_ipv4())
        .or(usable.first())?;
    let port = addrs.first()?.port();
    Some(SocketAddr::new(*ip, port))
}

/// A checked repo path for a URL: every byte outside the unreserved set and `/` encoded.
fn encode(path: &str) -> String {
    let mut s = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/+".contains(&b) {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

// ------------------------------------------------------------------ the client script

/// `/setup/client.sh`: a POSIX sh script that adds this node's `.repo` files for the client's
/// release (and EPEL when the client has EPEL set up, or with `--epel`) and disables the stock
/// repos they replace. It takes the node's address (`me`) and what the node offers.
pub fn client_script(me: &str, offers: &[Offer]) -> String {
    let list: Vec<String> = offers.iter().map(Offer::file_stem).collect();
    let mut majors: Vec<String> = offers
        .iter()
        .filter(|o| o.distro == Distro::AlmaLinux)
        .map(|o| o.major.to_string())
        .collect();
    majors.dedup();
    CLIENT_SH
        .replace("@NODE@", &format!("http://{me}"))
        .replace("@OFFERS@", &list.join(" "))
        .replace("@MAJORS@", &majors.join(", "))
        .replace("@MARK@", MARK)
        .replace("@PREFIX@", ID_PREFIX)
}

const CLIENT_SH: &str = include_str!("setup/client.sh");

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(repos: &str) -> Config {
        Config::parse(repos, "t").unwrap()
    }

    fn local() -> SocketAddr {
        "10.0.0.5:7700".parse().unwrap()
    }

    #[test]
    fn host_headers_are_used_only_when_plain() {
        let a = |h: &str| authority(Some(h.as_bytes()), local());
        for ok in [
            "node",
            "node.example:7700",
            "192.168.1.10:7700",
            "lanmirror.local",
            "[fd00::1]:7700",
            "[::1]",
            "NODE-2.Example",
        ] {
            assert_eq!(a(ok), ok);
        }
        for bad in [
            "",
            "node:",
            "node:0",
            "node:99999",
            "node:77a",
            "-node",
            ".node",
            "node/x",
            "node example",
            "node\tbaseurl=http://evil/",
            "node:7700\nbaseurl=http://evil/",
            "evil@node",
            "node$basearch",
            "node:7700:1",
            "[fd00::1",
            "[nonsense]:1",
            "[fd00::1]x",
            "[fe80::1%25eth0]:7700",
            "nöde",
            "a\"b",
            "node'; rm -rf /; '",
        ] {
            assert_eq!(a(bad), "10.0.0.5:7700", "{bad:?}");
        }
        assert_eq!(authority(None, local()), "10.0.0.5:7700");
        assert_eq!(authority(Some(b"\xff\xfe"), local()), "10.0.0.5:7700");
        assert_eq!(
            authority(None, "[::ffff:10.1.2.3]:7700".parse().unwrap()),
            "10.1.2.3:7700"
        );
        assert_eq!(
            authority(None, "[fe80::1%2]:7700".parse().unwrap()),
            "[fe80::1]:7700"
        );
    }

    #[test]
    fn repos_are_recognised_by_name_or_url() {
        let r = |name: &str, urls: &[&str]| RepoConfig {
            name: name.into(),
            urls: urls.iter().map(|s| s.to_string()).collect(),
            mirrorlists: vec![],
        };
        let (alma, epel) = (Some(Distro::AlmaLinux), Some(Distro::Epel));
        for (name, url, want) in [
            ("almalinux", "http://x/", alma),
            ("alma", "https://repo.almalinux.org/almalinux/", alma),
            ("v", "https://vault.almalinux.org/", alma),
            ("m", "http://mirror.lan:8080/pub/almalinux", alma),
            ("e", "https://dl.fedoraproject.org/pub/epel/", epel),
            ("e", "https://dl.fedoraproject.org/pub/archive/epel/", epel),
            ("EPEL", "http://x/", epel),
            ("test", "http://127.0.0.1:1/", None),
            ("rocky", "https://dl.rockylinux.org/pub/rocky/", None),
            // A path is not a host.
            ("x", "https://evil.example/almalinux.org/", None),
        ] {
            assert_eq!(distro_of(&r(name, &[url])), want, "{name} {url}");
        }
    }

    #[test]
    fn the_default_config_offers_almalinux_and_epel_8_to_10() {
        let c = Config::load(None).unwrap();
        let stems: Vec<String> = offers(&c).iter().map(Offer::file_stem).collect();
        assert_eq!(
            stems,
            [
                "almalinux-8",
                "almalinux-9",
                "almalinux-10",
                "epel-8",
                "epel-9",
                "epel-10"
            ]
        );
        assert!(offers(&cfg("[[repo]]\nname='test'\nurls=['http://x/']")).is_empty());
    }

    #[test]
    fn almalinux_9_has_the_stock_repos_with_the_nodes_as_baseurl() {
        let c = Config::load(None).unwrap();
        let page = answer(
            &c,
            "/setup/almalinux-9.repo",
            Some(b"node.lan:7700"),
            local(),
            &[],
        )
        .unwrap();
        let f = page.body;
        assert!(f.starts_with(MARK), "{f}");
        for id in [
            "baseos",
            "appstream",
            "extras",
            "crb",
            "highavailability",
            "sap",
        ] {
            assert!(f.contains(&format!("\n[lanmirror-{id}]\n")), "{id}: {f}");
            assert!(
                f.contains(&format!(
                    "\n#mirrorlist=https://mirrors.almalinux.org/mirrorlist/$releasever/{id}\n"
                )),
                "{id}: {f}"
            );
        }
        assert!(
            !f.contains("powertools"),
            "PowerTools is AlmaLinux 8's: {f}"
        );
        assert!(
            f.contains(
                "\nbaseurl=http://node.lan:7700/almalinux/$releasever/BaseOS/$basearch/os/\n\
                 #mirrorlist=http://node.lan:7700/mirrorlist/almalinux/$releasever/BaseOS/$basearch/os/\n\
                 enabled=1\ngpgcheck=1\ngpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-AlmaLinux-9\n"
            ),
            "{f}"
        );
        // Stock state: BaseOS/AppStream/extras on, the rest off.
        let enabled = |id: &str| {
            let at = f.find(&format!("[lanmirror-{id}]")).unwrap();
            f[at..]
                .lines()
                .find(|l| l.starts_with("enabled="))
                .unwrap()
                .to_string()
        };
        assert_eq!(enabled("extras"), "enabled=1");
        assert_eq!(enabled("crb"), "enabled=0");
        // Every line is a section, a key=value, a comment or blank: nothing else got in.
        for l in f.lines() {
            assert!(
                l.is_empty() || l.starts_with('#') || l.starts_with('[') || l.contains('='),
                "{l:?}"
            );
        }
        let f8 = answer(&c, "/setup/almalinux-8.repo", None, local(), &[])
            .unwrap()
            .body;
        assert!(f8.contains("[lanmirror-powertools]") && !f8.contains("[lanmirror-crb]"));
        assert!(f8.contains("gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-AlmaLinux\n"));
        assert!(
            f8.contains("http://10.0.0.5:7700/mirrorlist/almalinux/"),
            "no Host: {f8}"
        );
        let e10 = answer(&c, "/setup/epel-10.repo", None, local(), &[])
            .unwrap()
            .body;
        assert!(e10.contains(
            "baseurl=http://10.0.0.5:7700/epel/$releasever_major${releasever_minor:+.$releasever_minor}/Everything/$basearch/\n"
        ), "{e10}");
        assert!(e10.contains("gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-EPEL-10\n"));
        assert_eq!(
            answer(&c, "/setup/almalinux-7.repo", None, local(), &[]),
            Err(SetupError::NotFound)
        );
        assert_eq!(
            answer(&c, "/setup/nope", None, local(), &[]),
            Err(SetupError::NotFound)
        );
    }

    #[test]
    fn baseurl_lists_this_node_then_the_peers_a_client_can_reach() {
        let c = Config::load(None).unwrap();
        let peers = vec![
            vec!["10.0.0.6:7700".parse().unwrap()],
            vec!["[fe80::2]:7700".parse().unwrap()],
        ];
        let f = answer(&c, "/setup/epel-9.repo", Some(b"n:1"), local(), &peers)
            .unwrap()
            .body;
        assert!(
            f.contains(
                "\nbaseurl=http://n:1/epel/$releasever/Everything/$basearch/\n        \
                 http://10.0.0.6:7700/epel/$releasever/Everything/$basearch/\n#mirrorlist="
            ),
            "{f}"
        );
        assert!(!f.contains("fe80"), "{f}");
    }

    #[test]
    fn the_mirrorlist_is_this_node_then_reachable_peers() {
        let c = Config::load(None).unwrap();
        let addrs =
            |v: &[&str]| -> Vec<SocketAddr> { v.iter().map(|p| p.parse().unwrap()).collect() };
        let peers: Vec<Vec<SocketAddr>> = vec![
            addrs(&["10.0.0.6:7700"]),
            addrs(&["[::ffff:10.0.0.7]:7800"]),
            addrs(&["127.0.0.1:7700"]),
            addrs(&["[fe80::2]:7700"]),
            addrs(&["[fd00::9]:7700"]),
            // Dialled over IPv6 link-local; its IPv4 address (the client's family) goes out.
            addrs(&["[fe80::3]:7700", "[fd00::3]:7700", "10.0.0.3:7700"]),
        ];
        let ml = |path: &str, host: &[u8], local: SocketAddr| {
            answer(&c, path, Some(host), local, &peers).map(|p| p.body)
        };
        let body = ml(
            "/mirrorlist/almalinux/9/BaseOS/x86_64/os/",
            b"node:7700",
            local(),
        )
        .unwrap();
        let urls: Vec<&str> = body.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            urls,
            [
                "http://node:7700/almalinux/9/BaseOS/x86_64/os/",
                "http://10.0.0.6:7700/almalinux/9/BaseOS/x86_64/os/",
                "http://10.0.0.7:7800/almalinux/9/BaseOS/x86_64/os/",
                "http://[fd00::9]:7700/almalinux/9/BaseOS/x86_64/os/",
                "http://10.0.0.3:7700/almalinux/9/BaseOS/x86_64/os/",
            ]
        );
        // Over loopback, a loopback peer is reachable.
        let lo = ml(
            "/mirrorlist/epel/9/Everything/x86_64",
            b"127.0.0.1:7701",
            "127.0.0.1:7701".parse().unwrap(),
        )
        .unwrap();
        assert!(
            lo.contains("\nhttp://127.0.0.1:7701/epel/9/Everything/x86_64/\n"),
            "{lo}"
        );
        assert!(
            lo.contains("\nhttp://127.0.0.1:7700/epel/9/Everything/x86_64/\n"),
            "{lo}"
        );
        // A repo's root; `$` (an unsubstituted variable) is encoded, not expanded again.
        let root = ml("/mirrorlist/epel/", b"n", local()).unwrap();
        assert!(root.contains("\nhttp://n/epel/\n"), "{root}");
        let dollar = ml("/mirrorlist/epel/$releasever/x", b"n", local()).unwrap();
        assert!(
            dollar.contains("http://n/epel/%24releasever/x/"),
            "{dollar}"
        );
        assert_eq!(
            ml("/mirrorlist/nope/9/", b"n", local()),
            Err(SetupError::NoRepo)
        );
        assert!(matches!(
            ml("/mirrorlist/epel/../../etc/", b"n", local()),
            Err(SetupError::BadPath(_))
        ));
        assert!(matches!(
            ml("/mirrorlist/", b"n", local()),
            Err(SetupError::BadPath(_))
        ));
        // A hostile Host is not written out.
        let h = ml("/mirrorlist/epel/9/", b"x\r\nhttp://evil/", local()).unwrap();
        assert!(
            !h.contains("evil") && h.contains("\nhttp://10.0.0.5:7700/epel/9/\n"),
            "{h}"
        );
    }

    #[test]
    fn the_client_script_names_the_node_and_its_offers() {
        let c = Config::load(None).unwrap();
        let s = answer(&c, "/setup/client.sh", Some(b"10.1.1.1:7700"), local(), &[]).unwrap();
        assert!(s.body.starts_with("#!/bin/sh\n"));
        assert!(
            s.body.contains("\nnode='http://10.1.1.1:7700'\n"),
            "{}",
            s.body
        );
        assert!(
            s.body.contains(
                "\noffers='almalinux-8 almalinux-9 almalinux-10 epel-8 epel-9 epel-10'\n"
            )
        );
        for p in ["@NODE@", "@OFFERS@", "@MAJORS@", "@MARK@", "@PREFIX@"] {
            assert!(!s.body.contains(p), "{p} is filled");
        }
        assert!(s.body.contains("AlmaLinux 8, 9, 10;"), "{}", s.body);
        let idx = answer(&c, "/setup/", Some(b"n"), local(), &[])
            .unwrap()
            .body;
        assert!(
            idx.contains("curl -fsS http://n/setup/client.sh | sudo sh"),
            "{idx}"
        );
        assert!(idx.contains("http://n/setup/epel-10.repo"), "{idx}");
        assert!(serves("/setup") && serves("/setup/x") && serves("/mirrorlist/a/b"));
        assert!(!serves("/setupx/a") && !serves("/almalinux/setup/") && !serves("/"));
    }
}
