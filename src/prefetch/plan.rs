//! Prefetch planning: once a new metadata snapshot is in service, which package files the
//! site will want, most urgent first, so that the fixes are waiting before anyone runs
//! `dnf update`; and the advisory status the dashboard shows.
//!
//! [`plan`] takes the new snapshot's packages ([`parse_primary_packages`]), its advisories
//! ([`parse_updateinfo`]), what the site's clients fetched lately ([`SiteUse`], built with
//! [`usage_from_fetches`] from the paths the store served), `now`, the `prefetch_days`
//! window, the repo's `mirror` setting and which checksums the store already holds, and
//! returns an ordered list of [`PlanItem`]s:
//!
//! 1. **Which files.** For every (name, arch) a client fetched less than `prefetch_days`
//!    ago, the newest version in the new primary (by [`Evr::rpm_cmp`]), when it is newer
//!    than the newest version the site fetched (if known) and not held. Names that nobody
//!    used are not planned, unless the repo is a mirror (`mirror = true`): then every
//!    package of primary that is not held is planned.
//! 2. **Which advisories a file carries.** The newest version of a used package carries
//!    every advisory that names its (name, arch) at a version newer than the one the site
//!    fetched (any version, when that is not known) and not newer than itself: updating to
//!    it applies them all. Any other file (mirror mode) carries the advisories that name
//!    exactly its name, arch and EVR. Source packages in advisories are ignored.
//! 3. **Order.** Security advisories first, by severity (Critical, Important, Moderate,
//!    Low, then unknown), then bugfix, then enhancement and every other advisory type,
//!    then files no advisory names ([`Class`]); within a class, files of used packages
//!    before others, the most recently used first, then by name, arch, newest version
//!    first, and path. A file (checksum) named by several paths is planned once.
//!
//! [`advisory_status`] returns, over the same inputs, the security advisories that still
//! affect packages the site uses, each with its CVE ids, the packages concerned and
//! whether the fixed files are already held at the site: data for `/api/status` and the
//! dashboard, not sentences.
//!
//! What this module deliberately does **not** do: no I/O (no parsing of files, no store
//! or network access: `held` is a caller-supplied predicate), no clock (`now` is an
//! input), no fetching, no scheduling, no rate limits or byte budgets, no deciding when
//! to plan (the node calls it after a snapshot switch) and no dependency resolution (a
//! new dependency of an updated package is fetched when a client asks for it).
//!
//! [`parse_primary_packages`]: crate::repodata::parse_primary_packages
//! [`parse_updateinfo`]: crate::repodata::parse_updateinfo

use std::cmp::{Ordering, Reverse};
use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::repodata::{Advisory, AdvisoryKind, Checksum, Evr, PrimaryPackage, Severity};

/// Default for how far back the site's use of a package counts, in days.
pub const DEFAULT_PREFETCH_DAYS: u32 = 30;

const DAY: u64 = 86_400;

/// One (name, arch) the site's clients fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteUse {
    /// Package name, e.g. `openssl-libs`.
    pub name: String,
    /// Package arch, e.g. `x86_64` or `noarch`.
    pub arch: String,
    /// When a client last fetched a package of this name and arch, unix seconds.
    pub last_used: u64,
    /// The newest version of it the site fetched, when known: only newer versions are
    /// planned, and only advisories newer than it count. `None`: every version counts.
    pub evr: Option<Evr>,
}

/// Everything [`plan`] and [`advisory_status`] look at.
#[derive(Clone, Copy)]
pub struct PlanInput<'a> {
    /// The new snapshot's primary.xml packages ([`crate::repodata::parse_primary_packages`]).
    pub packages: &'a [PrimaryPackage],
    /// The new snapshot's advisories ([`crate::repodata::parse_updateinfo`]); may be empty.
    pub advisories: &'a [Advisory],
    /// What the site's clients fetched; several entries for one (name, arch) are merged.
    pub used: &'a [SiteUse],
    /// Now, unix seconds.
    pub now: u64,
    /// Use older than this many days does not count; 0 plans nothing for used packages.
    pub prefetch_days: u32,
    /// The repo asks for everything (`mirror = true`): every package of primary is planned.
    pub mirror: bool,
    /// Whether the store already holds a file with this checksum.
    pub held: &'a dyn Fn(&Checksum) -> bool,
}

/// Why a file is planned, most urgent first (the derived order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// It carries a security advisory.
    Security,
    /// It carries a bugfix advisory (and no security one).
    Bugfix,
    /// It carries an enhancement, newpackage or other advisory (and no security or bugfix one).
    Enhancement,
    /// No advisory names it: a newer version of a used package, or (mirror) any package.
    Unadvised,
}

/// One file to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanItem {
    /// `<location href>` from primary, relative to the repository root.
    pub href: String,
    /// The checksum primary names for it.
    pub checksum: Checksum,
    /// Its size in bytes.
    pub size: u64,
    /// Package name.
    pub name: String,
    /// Package arch.
    pub arch: String,
    /// Package version.
    pub evr: Evr,
    /// Why it is planned.
    pub class: Class,
    /// The most severe of its security advisories; `Unknown` for other classes.
    pub severity: Severity,
    /// The ids of the advisories it carries, most urgent first.
    pub advisories: Vec<String>,
    /// When the site last used its (name, arch), if within the window.
    pub last_used: Option<u64>,
}

/// A security advisory that affects packages the site uses (see [`advisory_status`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdvisoryStatus {
    /// Advisory id, e.g. `ALSA-2024:1234`.
    pub id: String,
    /// Its type (always `security` today).
    pub kind: AdvisoryKind,
    /// Its severity.
    pub severity: Severity,
    /// Its title.
    pub title: String,
    /// Issue date as written in updateinfo.xml.
    pub issued: Option<String>,
    /// CVE ids it references.
    pub cves: Vec<String>,
    /// The packages it names that the site uses and has not yet moved past.
    pub packages: Vec<AdvisoryPackageStatus>,
    /// Every one of `packages` is `held`: the fix is waiting at the site.
    pub ready: bool,
}

/// One package of an [`AdvisoryStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdvisoryPackageStatus {
    /// Package name.
    pub name: String,
    /// Package arch.
    pub arch: String,
    /// The fixed version the advisory names.
    pub evr: Evr,
    /// The repo (new primary) has this version or a newer one.
    pub in_repo: bool,
    /// The store holds this version or a newer one.
    pub held: bool,
}

/// What the site's use of one (name, arch) amounts to, after merging and the window.
#[derive(Clone, Copy)]
struct Use<'a> {
    last_used: u64,
    evr: Option<&'a Evr>,
}

type Key<'a> = (&'a str, &'a str);

/// The site's recent use, by (name, arch).
fn recent_use<'a>(input: &PlanInput<'a>) -> HashMap<Key<'a>, Use<'a>> {
    let window = u64::from(input.prefetch_days).saturating_mul(DAY);
    let mut out: HashMap<Key<'a>, Use<'a>> = HashMap::new();
    for u in input.used {
        // A last use in the future (a clock that went back) counts as recent.
        if input.now.saturating_sub(u.last_used) >= window {
            continue;
        }
        let entry = out
            .entry((u.name.as_str(), u.arch.as_str()))
            .or_insert(Use {
                last_used: u.last_used,
                evr: None,
            });
        entry.last_used = entry.last_used.max(u.last_used);
        if let Some(e) = &u.evr
            && entry.evr.is_none_or(|old| e.newer_than(old))
        {
            entry.evr = Some(e);
        }
    }
    out
}

/// For each key, the index of its newest package in `packages` (the first of equals).
fn newest<'a>(
    packages: &'a [PrimaryPackage],
    wanted: impl Fn(&Key<'a>) -> bool,
) -> HashMap<Key<'a>, usize> {
    let mut out: HashMap<Key<'a>, usize> = HashMap::new();
    for (i, p) in packages.iter().enumerate() {
        let key = (p.name.as_str(), p.arch.as_str());
        if !wanted(&key) {
            continue;
        }
        out.entry(key)
            .and_modify(|best| {
                if p.evr.newer_than(&packages[*best].evr) {
                    *best = i;
                }
            })
            .or_insert(i);
    }
    out
}

/// Binary packages named by advisories: (name, arch) → (advisory index, EVR).
fn advisory_index<'a>(
    advisories: &'a [Advisory],
    wanted: impl Fn(&Key<'a>) -> bool,
) -> HashMap<Key<'a>, Vec<(usize, &'a Evr)>> {
    let mut out: HashMap<Key<'a>, Vec<(usize, &'a Evr)>> = HashMap::new();
    for (i, a) in advisories.iter().enumerate() {
        for p in &a.packages {
            if is_source(&p.arch) {
                continue;
            }
            let key = (p.name.as_str(), p.arch.as_str());
            if wanted(&key) {
                out.entry(key).or_default().push((i, &p.evr));
            }
        }
    }
    out
}

fn is_source(arch: &str) -> bool {
    arch == "src" || arch == "nosrc"
}

/// How urgent one advisory is: (class, severity), smaller is more urgent.
fn urgency(a: &Advisory) -> (Class, Severity) {
    match a.kind {
        AdvisoryKind::Security => (Class::Security, a.severity),
        AdvisoryKind::Bugfix => (Class::Bugfix, Severity::Unknown),
        _ => (Class::Enhancement, Severity::Unknown),
    }
}

/// Plans the downloads the site will want from a new snapshot, most urgent first. See the
/// module documentation for the rules.
pub fn plan(input: &PlanInput<'_>) -> Vec<PlanItem> {
    let used = recent_use(input);
    let newest_used = newest(input.packages, |k| used.contains_key(k));
    let index = advisory_index(input.advisories, |k| input.mirror || used.contains_key(k));

    // (package index, lower bound for advisories: None = exact match only, Some(None) =
    // any version up to the package's, Some(Some(l)) = newer than l up to the package's)
    let mut chosen: Vec<(usize, Option<Option<&Evr>>)> = Vec::new();
    if input.mirror {
        for (i, p) in input.packages.iter().enumerate() {
            let key = (p.name.as_str(), p.arch.as_str());
            let range = match (newest_used.get(&key), used.get(&key)) {
                (Some(&n), Some(u)) if n == i => Some(u.evr),
                _ => None,
            };
            chosen.push((i, range));
        }
    } else {
        for (key, &i) in &newest_used {
            let floor = used.get(key).and_then(|u| u.evr);
            if floor.is_some_and(|l| !input.packages[i].evr.newer_than(l)) {
                continue;
            }
            chosen.push((i, Some(floor)));
        }
    }

    let mut items = Vec::with_capacity(chosen.len());
    let mut seen: HashSet<&Checksum> = HashSet::new();
    // Deterministic before deduplication by checksum: document order.
    chosen.sort_unstable_by_key(|&(i, _)| i);
    for (i, range) in chosen {
        let p = &input.packages[i];
        if (input.held)(&p.checksum) || !seen.insert(&p.checksum) {
            continue;
        }
        let key = (p.name.as_str(), p.arch.as_str());
        let mut carried: Vec<usize> = index
            .get(&key)
            .into_iter()
            .flatten()
            .filter(|(_, a)| match range {
                None => a.rpm_cmp(&p.evr) == Ordering::Equal,
                Some(floor) => !a.newer_than(&p.evr) && floor.is_none_or(|l| a.newer_than(l)),
            })
            .map(|&(adv, _)| adv)
            .collect();
        carried.sort_unstable_by(|&x, &y| {
            let (ax, ay) = (&input.advisories[x], &input.advisories[y]);
            urgency(ax)
                .cmp(&urgency(ay))
                .then_with(|| ax.id.cmp(&ay.id))
        });
        let mut ids = HashSet::new();
        carried.retain(|&a| ids.insert(input.advisories[a].id.as_str()));
        let (class, severity) = carried
            .first()
            .map_or((Class::Unadvised, Severity::Unknown), |&a| {
                urgency(&input.advisories[a])
            });
        items.push(PlanItem {
            href: p.href.clone(),
            checksum: p.checksum.clone(),
            size: p.size,
            name: p.name.clone(),
            arch: p.arch.clone(),
            evr: p.evr.clone(),
            class,
            severity,
            advisories: carried
                .iter()
                .map(|&a| input.advisories[a].id.clone())
                .collect(),
            last_used: used.get(&key).map(|u| u.last_used),
        });
    }
    items.sort_by(compare_items);
    items
}

/// The plan's order (see the module documentation).
fn compare_items(a: &PlanItem, b: &PlanItem) -> Ordering {
    let rank = |i: &PlanItem| {
        (
            i.class,
            i.severity,
            i.last_used.is_none(),
            Reverse(i.last_used),
        )
    };
    rank(a)
        .cmp(&rank(b))
        .then_with(|| a.name.cmp(&b.name))
        .then_with(|| a.arch.cmp(&b.arch))
        .then_with(|| b.evr.rpm_cmp(&a.evr))
        .then_with(|| a.href.cmp(&b.href))
}

/// The security advisories that still affect packages the site uses, most severe first
/// (then the most recently issued, then by id).
///
/// An advisory is listed when it names a (name, arch) the site used within the window at
/// a version newer than the newest the site fetched (any version, when that is not
/// known). `packages` lists exactly those; `held` says whether the store holds that
/// version or a newer one (by the new primary's checksums), `in_repo` whether the new
/// primary has one at all, and `ready` is true when every listed package is held.
pub fn advisory_status(input: &PlanInput<'_>) -> Vec<AdvisoryStatus> {
    let used = recent_use(input);
    let mut versions: HashMap<Key<'_>, Vec<&PrimaryPackage>> = HashMap::new();
    for p in input.packages {
        let key = (p.name.as_str(), p.arch.as_str());
        if used.contains_key(&key) {
            versions.entry(key).or_default().push(p);
        }
    }
    let mut out: Vec<AdvisoryStatus> = Vec::new();
    // An id listed twice in updateinfo.xml is one advisory: the first copy's facts, the
    // packages of both.
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    for a in input.advisories {
        if a.kind != AdvisoryKind::Security {
            continue;
        }
        let earlier = by_id.get(a.id.as_str()).copied();
        let mut packages: Vec<AdvisoryPackageStatus> =
            earlier.map_or_else(Vec::new, |i| std::mem::take(&mut out[i].packages));
        for p in &a.packages {
            let key = (p.name.as_str(), p.arch.as_str());
            let Some(u) = used.get(&key) else { continue };
            if u.evr.is_some_and(|l| !p.evr.newer_than(l)) {
                continue; // the site already moved past this fix
            }
            if packages
                .iter()
                .any(|q| q.name == p.name && q.arch == p.arch && q.evr == p.evr)
            {
                continue;
            }
            let fixed: Vec<&&PrimaryPackage> = versions
                .get(&key)
                .into_iter()
                .flatten()
                .filter(|q| !p.evr.newer_than(&q.evr))
                .collect();
            packages.push(AdvisoryPackageStatus {
                name: p.name.clone(),
                arch: p.arch.clone(),
                evr: p.evr.clone(),
                in_repo: !fixed.is_empty(),
                held: fixed.iter().any(|q| (input.held)(&q.checksum)),
            });
        }
        if let Some(i) = earlier {
            out[i].ready = packages.iter().all(|p| p.held);
            out[i].packages = packages;
            continue;
        }
        if packages.is_empty() {
            continue;
        }
        by_id.insert(a.id.as_str(), out.len());
        out.push(AdvisoryStatus {
            id: a.id.clone(),
            kind: a.kind.clone(),
            severity: a.severity,
            title: a.title.clone(),
            issued: a.issued.clone(),
            cves: a.cves.clone(),
            ready: packages.iter().all(|p| p.held),
            packages,
        });
    }
    out.sort_by(|x, y| {
        x.severity
            .cmp(&y.severity)
            .then_with(|| y.issued.cmp(&x.issued))
            .then_with(|| x.id.cmp(&y.id))
    });
    out
}

/// The site's use from what its clients fetched: `fetched` yields (href relative to the
/// repository root, last fetch time in unix seconds), e.g. from the store's paths of one
/// repo tree; `packages` says which package each href is (the primary those fetches came
/// from). An href primary does not name (a version the new metadata dropped) is read as an
/// RPM file name, `name-version-release.arch.rpm` ([`nevra_from_href`]); anything else is
/// skipped. One [`SiteUse`] per (name, arch), with the latest time and the newest EVR fetched.
pub fn usage_from_fetches<'a>(
    packages: &[PrimaryPackage],
    fetched: impl IntoIterator<Item = (&'a str, u64)>,
) -> Vec<SiteUse> {
    let by_href: HashMap<&str, &PrimaryPackage> =
        packages.iter().map(|p| (p.href.as_str(), p)).collect();
    let mut merged: HashMap<(String, String), (u64, Evr)> = HashMap::new();
    for (href, when) in fetched {
        let (name, arch, evr) = match by_href.get(href) {
            Some(p) => (p.name.clone(), p.arch.clone(), p.evr.clone()),
            None => match nevra_from_href(href) {
                Some(n) => n,
                None => continue,
            },
        };
        match merged.entry((name, arch)) {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let (t, e) = o.get_mut();
                *t = (*t).max(when);
                if evr.newer_than(e) {
                    *e = evr;
                }
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert((when, evr));
            }
        }
    }
    let mut out: Vec<SiteUse> = merged
        .into_iter()
        .map(|((name, arch), (last_used, evr))| SiteUse {
            name,
            arch,
            last_used,
            evr: Some(evr),
        })
        .collect();
    out.sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
    out
}

/// Name, arch and EVR from an RPM file name, `…/name-version-release.arch.rpm` (the epoch is
/// not in file names: 0). `None` for anything else (source packages included).
pub fn nevra_from_href(href: &str) -> Option<(String, String, Evr)> {
    let file = href.rsplit('/').next()?.strip_suffix(".rpm")?;
    let (nvr, arch) = file.rsplit_once('.')?;
    let (nv, release) = nvr.rsplit_once('-')?;
    let (name, version) = nv.rsplit_once('-')?;
    if [name, version, release, arch].iter().any(|s| s.is_empty()) || arch == "src" {
        return None;
    }
    Some((name.into(), arch.into(), Evr::new(0, version, release)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repodata::{
        AdvisoryPackage, ChecksumAlgo, Compression, parse_primary_packages, parse_repomd,
        parse_updateinfo,
    };
    use sha2::Digest;
    use std::path::PathBuf;

    const NOW: u64 = 1_800_000_000;

    fn sum(text: &str) -> Checksum {
        Checksum {
            algo: ChecksumAlgo::Sha256,
            digest: sha2::Sha256::digest(text.as_bytes()).to_vec(),
        }
    }

    /// A package `name-evr.arch` at `Packages/name-evr.arch.rpm`, checksum from its href.
    fn pkg(name: &str, arch: &str, evr: &str) -> PrimaryPackage {
        let href = format!("Packages/{name}-{evr}.{arch}.rpm");
        PrimaryPackage {
            name: name.into(),
            arch: arch.into(),
            evr: Evr::parse(evr).unwrap(),
            checksum: sum(&href),
            size: 1000 + href.len() as u64,
            href,
        }
    }

    fn adv(id: &str, kind: &str, severity: &str, pkgs: &[(&str, &str, &str)]) -> Advisory {
        Advisory {
            id: id.into(),
            kind: AdvisoryKind::from_name(kind),
            severity: Severity::from_name(severity),
            title: format!("{id} title"),
            issued: Some(format!("2026-01-{:02} 00:00:00", id.len())),
            updated: None,
            cves: vec![format!("CVE-{id}")],
            packages: pkgs
                .iter()
                .map(|&(n, a, e)| AdvisoryPackage {
                    name: n.into(),
                    arch: a.into(),
                    evr: Evr::parse(e).unwrap(),
                })
                .collect(),
        }
    }

    fn used(name: &str, arch: &str, days_ago: u64, evr: Option<&str>) -> SiteUse {
        SiteUse {
            name: name.into(),
            arch: arch.into(),
            last_used: NOW - days_ago * DAY,
            evr: evr.map(|e| Evr::parse(e).unwrap()),
        }
    }

    struct Case {
        packages: Vec<PrimaryPackage>,
        advisories: Vec<Advisory>,
        used: Vec<SiteUse>,
        held: HashSet<Checksum>,
        mirror: bool,
        days: u32,
    }

    impl Case {
        fn new(
            packages: Vec<PrimaryPackage>,
            advisories: Vec<Advisory>,
            used: Vec<SiteUse>,
        ) -> Self {
            Case {
                packages,
                advisories,
                used,
                held: HashSet::new(),
                mirror: false,
                days: DEFAULT_PREFETCH_DAYS,
            }
        }

        fn hold(mut self, href: &str) -> Self {
            let p = self.packages.iter().find(|p| p.href == href).unwrap();
            self.held.insert(p.checksum.clone());
            self
        }

        fn with<T>(&self, f: impl FnOnce(&PlanInput<'_>) -> T) -> T {
            let held = |c: &Checksum| self.held.contains(c);
            f(&PlanInput {
                packages: &self.packages,
                advisories: &self.advisories,
                used: &self.used,
                now: NOW,
                prefetch_days: self.days,
                mirror: self.mirror,
                held: &held,
            })
        }

        fn plan(&self) -> Vec<PlanItem> {
            self.with(plan)
        }

        /// `name-evr.arch class/severity [ids]` per item.
        fn lines(&self) -> Vec<String> {
            self.plan().iter().map(line).collect()
        }

        fn status(&self) -> Vec<AdvisoryStatus> {
            self.with(advisory_status)
        }
    }

    fn line(i: &PlanItem) -> String {
        let class = match i.class {
            Class::Security => format!("security/{:?}", i.severity).to_lowercase(),
            c => format!("{c:?}").to_lowercase(),
        };
        format!("{}-{}.{} {class} {:?}", i.name, i.evr, i.arch, i.advisories)
    }

    // ----- the real fixture -----

    fn fixture() -> (Vec<PrimaryPackage>, Vec<Advisory>) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/updateinfo");
        let md = parse_repomd(&std::fs::read(dir.join("repodata/repomd.xml")).unwrap()).unwrap();
        let open = |kind: &str| {
            let rec = md.records.iter().find(|r| r.kind == kind).unwrap();
            let file = std::fs::File::open(dir.join(&rec.href)).unwrap();
            (file, Compression::from_href(&rec.href))
        };
        let mut packages = Vec::new();
        let (f, c) = open("primary");
        parse_primary_packages(f, c, |p| packages.push(p)).unwrap();
        let mut advisories = Vec::new();
        let (f, c) = open("updateinfo");
        parse_updateinfo(f, c, |a| advisories.push(a)).unwrap();
        (packages, advisories)
    }

    #[test]
    fn fixture_security_update_before_unrelated_bugfix() {
        let (packages, advisories) = fixture();
        // The site runs lm-beta (used yesterday) and lm-alpha (used 10 days ago), both 1.0-1.
        let case = Case::new(
            packages,
            advisories,
            vec![
                used("lm-beta", "noarch", 1, Some("1.0-1")),
                used("lm-alpha", "noarch", 10, Some("1.0-1")),
            ],
        )
        .hold("Packages/lm-alpha-1.0-1.noarch.rpm")
        .hold("Packages/lm-beta-1.0-1.noarch.rpm");
        let items = case.plan();
        assert_eq!(
            items.iter().map(line).collect::<Vec<_>>(),
            [
                r#"lm-alpha-1.1-1.noarch security/important ["LMSA-2026:0001"]"#,
                r#"lm-beta-1.0-2.noarch bugfix ["LMBA-2026:0002"]"#,
            ]
        );
        // lm-gamma (Critical!) is not planned: nobody at the site uses it
        let a = &items[0];
        assert_eq!(a.href, "Packages/lm-alpha-1.1-1.noarch.rpm");
        assert_eq!(a.size, 6150);
        assert_eq!(
            a.checksum.to_hex(),
            "d5c23df98e5950f0681746bf6c21db2f2f1a824e80e67dbf685a25e61f4600e6"
        );
        assert_eq!(a.last_used, Some(NOW - 10 * DAY));

        // The status: only LMSA-2026:0001 touches a used package; not ready yet.
        let status = case.status();
        assert_eq!(status.len(), 1);
        let s = &status[0];
        assert_eq!(s.id, "LMSA-2026:0001");
        assert_eq!(s.severity, Severity::Important);
        assert_eq!(s.cves, ["CVE-2026-1111", "CVE-2026-2222"]);
        assert_eq!(s.issued.as_deref(), Some("2026-03-01 10:00:00"));
        assert_eq!(
            s.packages,
            [AdvisoryPackageStatus {
                name: "lm-alpha".into(),
                arch: "noarch".into(),
                evr: Evr::new(0, "1.1", "1"),
                in_repo: true,
                held: false,
            }]
        );
        assert!(!s.ready);
        // once the planned files are held: nothing left to plan, the advisory is ready
        let case = case
            .hold("Packages/lm-alpha-1.1-1.noarch.rpm")
            .hold("Packages/lm-beta-1.0-2.noarch.rpm");
        assert!(case.plan().is_empty());
        let status = case.status();
        assert!(status[0].ready && status[0].packages[0].held);
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json[0]["kind"], "security");
        assert_eq!(json[0]["severity"], "important");
        assert_eq!(json[0]["cves"][1], "CVE-2026-2222");
        assert_eq!(json[0]["packages"][0]["evr"]["release"], "1");
        assert_eq!(json[0]["ready"], true);
    }

    #[test]
    fn fixture_mirror_plans_everything_in_order() {
        let (packages, advisories) = fixture();
        let mut case = Case::new(
            packages,
            advisories,
            vec![used("lm-beta", "noarch", 1, Some("1.0-1"))],
        )
        .hold("Packages/lm-beta-1.0-1.noarch.rpm");
        case.mirror = true;
        assert_eq!(
            case.lines(),
            [
                r#"lm-gamma-2.0-2.x86_64 security/critical ["LMSA-2026:0003"]"#,
                r#"lm-alpha-1.1-1.noarch security/important ["LMSA-2026:0001"]"#,
                r#"lm-beta-1.0-2.noarch bugfix ["LMBA-2026:0002"]"#,
                "lm-alpha-1.0-1.noarch unadvised []",
                "lm-gamma-2.0-1.x86_64 unadvised []",
            ]
        );
        // the dashboard still lists only advisories of used packages: none are security
        assert!(case.status().is_empty());
    }

    // ----- which files -----

    #[test]
    fn nothing_for_packages_nobody_used_unless_mirror() {
        let mut case = Case::new(
            vec![pkg("a", "x86_64", "1.0-1"), pkg("b", "x86_64", "2.0-1")],
            vec![adv(
                "S-1",
                "security",
                "Critical",
                &[("b", "x86_64", "2.0-1")],
            )],
            vec![],
        );
        assert!(case.plan().is_empty());
        assert!(case.status().is_empty());
        case.mirror = true;
        assert_eq!(
            case.lines(),
            [
                r#"b-2.0-1.x86_64 security/critical ["S-1"]"#,
                "a-1.0-1.x86_64 unadvised []"
            ]
        );
        assert!(
            case.status().is_empty(),
            "status is about used packages only"
        );
    }

    #[test]
    fn use_older_than_the_window_does_not_count() {
        let packages = vec![
            pkg("fresh", "noarch", "1-1"),
            pkg("edge", "noarch", "1-1"),
            pkg("stale", "noarch", "1-1"),
            pkg("future", "noarch", "1-1"),
        ];
        let mut future = used("future", "noarch", 0, None);
        future.last_used = NOW + 3600;
        let mut edge_in = used("edge", "noarch", 0, None);
        edge_in.last_used = NOW - 30 * DAY + 1;
        let mut case = Case::new(
            packages,
            vec![],
            vec![
                used("fresh", "noarch", 29, None),
                edge_in,
                used("stale", "noarch", 30, None),
                used("stale", "noarch", 45, None),
                future,
            ],
        );
        let names = |c: &Case| -> Vec<String> { c.plan().into_iter().map(|i| i.name).collect() };
        // the most recently used first
        assert_eq!(names(&case), ["future", "fresh", "edge"]);
        case.days = 7;
        assert_eq!(names(&case), ["future"]);
        case.days = 0;
        assert!(names(&case).is_empty());
        case.days = 60;
        assert_eq!(names(&case), ["future", "fresh", "edge", "stale"]);
        // a stale entry does not spoil a fresh one for the same package
        case.days = 30;
        case.used.push(used("stale", "noarch", 2, None));
        assert_eq!(names(&case), ["future", "stale", "fresh", "edge"]);
    }

    #[test]
    fn held_files_are_not_planned() {
        let case = Case::new(
            vec![pkg("a", "noarch", "1-1"), pkg("a", "noarch", "2-1")],
            vec![adv("S", "security", "Low", &[("a", "noarch", "2-1")])],
            vec![used("a", "noarch", 1, None)],
        );
        assert_eq!(case.lines(), [r#"a-2-1.noarch security/low ["S"]"#]);
        // newest held: nothing, even though an older version is not held
        let case = case.hold("Packages/a-2-1.noarch.rpm");
        assert!(case.plan().is_empty());
        let mut case = case;
        case.mirror = true;
        assert_eq!(case.lines(), ["a-1-1.noarch unadvised []"]);
    }

    #[test]
    fn the_newest_version_by_rpm_order_is_planned() {
        let case = Case::new(
            vec![
                pkg("a", "noarch", "1.9-1"),
                pkg("a", "noarch", "1.10-1"),
                pkg("a", "noarch", "1.10~rc1-1"),
                pkg("a", "noarch", "1.10-1.el9"),
                pkg("e", "noarch", "1:0.1-1"),
                pkg("e", "noarch", "9.9-1"),
            ],
            vec![],
            vec![used("a", "noarch", 1, None), used("e", "noarch", 1, None)],
        );
        let got: Vec<String> = case.plan().iter().map(|i| i.href.clone()).collect();
        assert_eq!(
            got,
            [
                "Packages/a-1.10-1.el9.noarch.rpm",
                "Packages/e-1:0.1-1.noarch.rpm"
            ]
        );
    }

    #[test]
    fn arch_matters() {
        let case = Case::new(
            vec![
                pkg("lib", "x86_64", "1-1"),
                pkg("lib", "i686", "2-1"),
                pkg("lib", "noarch", "3-1"),
                pkg("tool", "noarch", "5-1"),
                pkg("tool", "x86_64", "5-1"),
            ],
            vec![
                adv("S-i686", "security", "Critical", &[("lib", "i686", "2-1")]),
                adv(
                    "S-noarch",
                    "security",
                    "Important",
                    &[("lib", "noarch", "3-1")],
                ),
                adv("B-tool", "bugfix", "", &[("tool", "x86_64", "5-1")]),
            ],
            vec![
                used("lib", "x86_64", 1, Some("0.9-1")),
                used("tool", "noarch", 1, Some("4-1")),
            ],
        );
        assert_eq!(
            case.lines(),
            [
                "lib-1-1.x86_64 unadvised []",
                "tool-5-1.noarch unadvised []"
            ]
        );
        assert!(case.status().is_empty());
    }

    #[test]
    fn only_newer_than_what_the_site_fetched() {
        let case = Case::new(
            vec![
                pkg("a", "noarch", "1-1"),
                pkg("a", "noarch", "1-2"),
                pkg("a", "noarch", "1-3"),
                pkg("b", "noarch", "1-1"),
            ],
            vec![
                adv("S-old", "security", "Critical", &[("a", "noarch", "1-2")]),
                adv("B-new", "bugfix", "", &[("a", "noarch", "1-3")]),
                adv("S-b", "security", "Critical", &[("b", "noarch", "1-1")]),
            ],
            vec![
                // the site already fetched a-1-2, which has S-old's fix
                used("a", "noarch", 1, Some("1-2")),
                // and b-2-1, newer than anything in this primary
                used("b", "noarch", 1, Some("2-1")),
            ],
        );
        assert_eq!(case.lines(), [r#"a-1-3.noarch bugfix ["B-new"]"#]);
        assert!(
            case.status().is_empty(),
            "the site moved past S-old and S-b"
        );
        // without the versions, every advisory up to the newest counts
        let mut case = case;
        for u in &mut case.used {
            u.evr = None;
        }
        assert_eq!(
            case.lines(),
            [
                r#"a-1-3.noarch security/critical ["S-old", "B-new"]"#,
                r#"b-1-1.noarch security/critical ["S-b"]"#,
            ]
        );
        // same severity: the most recently issued first
        let ids: Vec<String> = case.status().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["S-old", "S-b"]);
    }

    #[test]
    fn order_by_class_then_severity() {
        let names = [
            "crit", "imp", "mod", "low", "unk", "bug", "enh", "newp", "oth", "plain",
        ];
        let packages: Vec<PrimaryPackage> = names.iter().map(|n| pkg(n, "x86_64", "2-1")).collect();
        fn one(n: &str) -> [(&str, &str, &str); 1] {
            [(n, "x86_64", "2-1")]
        }
        let advisories = vec![
            adv("A-enh", "enhancement", "Critical", &one("enh")),
            adv("A-bug", "bugfix", "Critical", &one("bug")),
            adv("A-low", "security", "low", &one("low")),
            adv("A-unk", "security", "", &one("unk")),
            adv("A-oth", "vendor-special", "", &one("oth")),
            adv("A-mod", "security", "Moderate", &one("mod")),
            adv("A-newp", "newpackage", "", &one("newp")),
            adv("A-crit", "security", "CRITICAL", &one("crit")),
            adv("A-imp", "security", "Important", &one("imp")),
        ];
        // the least recently used is the most urgent: the order must come from the class
        let used: Vec<SiteUse> = names
            .iter()
            .enumerate()
            .map(|(i, n)| used(n, "x86_64", 20 - i as u64, Some("1-1")))
            .collect();
        let case = Case::new(packages, advisories, used);
        assert_eq!(
            case.lines(),
            [
                r#"crit-2-1.x86_64 security/critical ["A-crit"]"#,
                r#"imp-2-1.x86_64 security/important ["A-imp"]"#,
                r#"mod-2-1.x86_64 security/moderate ["A-mod"]"#,
                r#"low-2-1.x86_64 security/low ["A-low"]"#,
                r#"unk-2-1.x86_64 security/unknown ["A-unk"]"#,
                r#"bug-2-1.x86_64 bugfix ["A-bug"]"#,
                // within a class, the most recently used first
                r#"oth-2-1.x86_64 enhancement ["A-oth"]"#,
                r#"newp-2-1.x86_64 enhancement ["A-newp"]"#,
                r#"enh-2-1.x86_64 enhancement ["A-enh"]"#,
                "plain-2-1.x86_64 unadvised []",
            ]
        );
        let status = case.status();
        let got: Vec<(&str, Severity)> =
            status.iter().map(|s| (s.id.as_str(), s.severity)).collect();
        assert_eq!(
            got,
            [
                ("A-crit", Severity::Critical),
                ("A-imp", Severity::Important),
                ("A-mod", Severity::Moderate),
                ("A-low", Severity::Low),
                ("A-unk", Severity::Unknown),
            ]
        );
    }

    #[test]
    fn advisories_carried_are_deduplicated_most_urgent_first() {
        let case = Case::new(
            vec![pkg("a", "noarch", "1-1"), pkg("a", "noarch", "1-4")],
            vec![
                adv("E", "enhancement", "", &[("a", "noarch", "1-4")]),
                adv("S-low", "security", "Low", &[("a", "noarch", "1-2")]),
                adv(
                    "S-imp",
                    "security",
                    "Important",
                    &[("a", "noarch", "1-3"), ("a", "src", "1-3")],
                ),
                // named twice (two collections), and a version newer than the repo has
                adv("S-imp", "security", "Important", &[("a", "noarch", "1-3")]),
                adv(
                    "S-future",
                    "security",
                    "Critical",
                    &[("a", "noarch", "1-5")],
                ),
                adv(
                    "B",
                    "bugfix",
                    "",
                    &[("a", "noarch", "1-4"), ("a", "noarch", "1-4")],
                ),
            ],
            vec![used("a", "noarch", 3, Some("1-1"))],
        );
        assert_eq!(
            case.lines(),
            [r#"a-1-4.noarch security/important ["S-imp", "S-low", "B", "E"]"#]
        );
        // the status lists S-future as not in the repo, and not ready
        let status = case.status();
        let future = status.iter().find(|s| s.id == "S-future").unwrap();
        assert!(!future.packages[0].in_repo && !future.packages[0].held && !future.ready);
        let ids: Vec<&str> = status.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["S-future", "S-imp", "S-low"]);
        // the two copies of S-imp are one entry with the packages of both
        let imp = status.iter().find(|s| s.id == "S-imp").unwrap();
        assert_eq!(imp.packages.len(), 1);
    }

    #[test]
    fn mirror_mode_details() {
        let mut case = Case::new(
            vec![
                pkg("a", "noarch", "1-1"),
                pkg("a", "noarch", "1-2"),
                pkg("a", "noarch", "1-3"),
                pkg("z", "noarch", "1-1"),
                pkg("z", "noarch", "1-2"),
            ],
            vec![
                adv("S-a2", "security", "Moderate", &[("a", "noarch", "1-2")]),
                adv("S-z2", "security", "Moderate", &[("z", "noarch", "1-2")]),
            ],
            vec![used("a", "noarch", 5, None)],
        );
        case.mirror = true;
        // a-1-3 (newest of a used package) carries S-a2 by range; a-1-2 by exact match;
        // z-1-2 by exact match; used before unused within a class; then newest first
        assert_eq!(
            case.lines(),
            [
                r#"a-1-3.noarch security/moderate ["S-a2"]"#,
                r#"a-1-2.noarch security/moderate ["S-a2"]"#,
                r#"z-1-2.noarch security/moderate ["S-z2"]"#,
                "a-1-1.noarch unadvised []",
                "z-1-1.noarch unadvised []",
            ]
        );
        // one file under two paths is planned once
        let mut twin = pkg("a", "noarch", "1-3");
        twin.href = "Packages/a/a-1-3.noarch.rpm".into();
        case.packages.push(twin);
        let hrefs: Vec<String> = case.plan().into_iter().map(|i| i.href).collect();
        assert_eq!(hrefs.len(), 5);
        assert!(hrefs.contains(&"Packages/a-1-3.noarch.rpm".to_owned()));
        // held files are left out in mirror mode too
        let case = case.hold("Packages/z-1-2.noarch.rpm");
        assert_eq!(case.plan().len(), 4);
    }

    #[test]
    fn status_readiness_and_order() {
        let mut s1 = adv(
            "S-1",
            "security",
            "Important",
            &[
                ("a", "x86_64", "1-2"),
                ("b", "x86_64", "1-2"),
                ("c", "x86_64", "1-2"),
            ],
        );
        s1.issued = Some("2026-02-01 00:00:00".into());
        s1.cves = vec!["CVE-1".into(), "CVE-2".into()];
        let mut s2 = adv("S-2", "security", "Important", &[("a", "x86_64", "1-2")]);
        s2.issued = Some("2026-03-01 00:00:00".into());
        let bug = adv("B", "bugfix", "", &[("a", "x86_64", "1-2")]);
        let case = Case::new(
            vec![
                pkg("a", "x86_64", "1-1"),
                pkg("a", "x86_64", "1-2"),
                pkg("a", "x86_64", "1-3"),
                pkg("b", "x86_64", "1-2"),
            ],
            vec![s1, s2, bug],
            // c is not used: not listed
            vec![
                used("a", "x86_64", 1, Some("1-1")),
                used("b", "x86_64", 40, None),
            ],
        )
        // a newer version than the fix is held: the fix is waiting
        .hold("Packages/a-1-3.x86_64.rpm");
        let status = case.status();
        // same severity: the most recently issued first; bugfix advisories never listed
        let ids: Vec<&str> = status.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["S-2", "S-1"]);
        let s1 = &status[1];
        assert_eq!(s1.cves, ["CVE-1", "CVE-2"]);
        // b was used 40 days ago: outside the window
        assert_eq!(s1.packages.len(), 1);
        assert_eq!(s1.packages[0].name, "a");
        assert!(s1.packages[0].held && s1.packages[0].in_repo && s1.ready);
        let mut case = case;
        case.days = 60;
        let status = case.status();
        let s1 = status.iter().find(|s| s.id == "S-1").unwrap();
        let b = s1.packages.iter().find(|p| p.name == "b").unwrap();
        assert!(b.in_repo && !b.held && !s1.ready);
    }

    #[test]
    fn status_merges_an_advisory_listed_twice() {
        let case = Case::new(
            vec![pkg("a", "noarch", "1-2"), pkg("b", "noarch", "1-2")],
            vec![
                adv("S", "security", "Low", &[("x", "noarch", "1-2")]),
                adv("S", "security", "Low", &[("a", "noarch", "1-2")]),
                adv(
                    "S",
                    "security",
                    "Low",
                    &[("b", "noarch", "1-2"), ("a", "noarch", "1-2")],
                ),
            ],
            vec![used("a", "noarch", 1, None), used("b", "noarch", 1, None)],
        )
        .hold("Packages/a-1-2.noarch.rpm");
        let status = case.status();
        assert_eq!(status.len(), 1);
        let names: Vec<(&str, bool)> = status[0]
            .packages
            .iter()
            .map(|p| (p.name.as_str(), p.held))
            .collect();
        assert_eq!(names, [("a", true), ("b", false)]);
        assert!(!status[0].ready);
    }

    #[test]
    fn usage_from_fetched_paths() {
        let packages = vec![
            pkg("a", "noarch", "1-1"),
            pkg("a", "noarch", "1-2"),
            pkg("a", "x86_64", "1-1"),
            pkg("b", "noarch", "1-1"),
        ];
        let got = usage_from_fetches(
            &packages,
            [
                ("Packages/a-1-2.noarch.rpm", 100),
                ("Packages/a-1-1.noarch.rpm", 300),
                ("Packages/a-1-1.x86_64.rpm", 50),
                ("Packages/unknown.rpm", 999),
                ("repodata/repomd.xml", 999),
            ],
        );
        assert_eq!(
            got,
            [
                SiteUse {
                    name: "a".into(),
                    arch: "noarch".into(),
                    last_used: 300,
                    evr: Some(Evr::new(0, "1", "2")),
                },
                SiteUse {
                    name: "a".into(),
                    arch: "x86_64".into(),
                    last_used: 50,
                    evr: Some(Evr::new(0, "1", "1")),
                },
            ]
        );
        assert!(usage_from_fetches(&packages, []).is_empty());

        // a version the new primary dropped is read from its file name
        let got = usage_from_fetches(
            &packages[3..],
            [("Packages/o/openssl-libs-3.0.7-27.el9.x86_64.rpm", 7)],
        );
        assert_eq!(
            got,
            [SiteUse {
                name: "openssl-libs".into(),
                arch: "x86_64".into(),
                last_used: 7,
                evr: Some(Evr::new(0, "3.0.7", "27.el9")),
            }]
        );
    }

    #[test]
    fn rpm_file_names() {
        let n = |h: &str| nevra_from_href(h).map(|(n, a, e)| (n, a, e.version, e.release));
        let s = |a: &str, b: &str, c: &str, d: &str| Some((a.into(), b.into(), c.into(), d.into()));
        assert_eq!(
            n("Packages/b/bash-5.1.8-9.el9.x86_64.rpm"),
            s("bash", "x86_64", "5.1.8", "9.el9")
        );
        assert_eq!(
            n("a-b-c-1.0-1.noarch.rpm"),
            s("a-b-c", "noarch", "1.0", "1")
        );
        for bad in [
            "repodata/repomd.xml",
            "x.rpm",
            "a-1.noarch.rpm",
            "a-1-2.src.rpm",
            "-1-2.x86_64.rpm",
            "a-1-.x86_64.rpm",
        ] {
            assert_eq!(n(bad), None, "{bad}");
        }
    }

    #[test]
    fn duplicate_use_entries_merge() {
        let case = Case::new(
            vec![
                pkg("a", "noarch", "1-1"),
                pkg("a", "noarch", "1-2"),
                pkg("a", "noarch", "1-3"),
            ],
            vec![],
            vec![
                used("a", "noarch", 9, Some("1-1")),
                used("a", "noarch", 2, None),
                used("a", "noarch", 5, Some("1-3")),
            ],
        );
        // the newest fetched (1-3) wins: nothing newer to plan
        assert!(case.plan().is_empty());
        let mut case = case;
        case.used[2].evr = Some(Evr::new(0, "1", "2"));
        let items = case.plan();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].last_used, Some(NOW - 2 * DAY));
    }
}
