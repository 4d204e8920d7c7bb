//! The kit's `RpmRepo::set_updateinfo` (modifyrepo_c) against the parsers and the prefetch
//! planner: a real repository built with rpmbuild + createrepo_c, an updateinfo.xml added as
//! a mirror publishes it, read back through repomd.xml.

mod common;

use std::collections::HashSet;
use std::fs::File;

use common::*;
use lanmirror::prefetch::{self, Class, PlanInput, SiteUse};
use lanmirror::repodata::{
    AdvisoryKind, Checksum, Compression, Evr, Severity, parse_primary_packages, parse_repomd,
    parse_updateinfo,
};

#[test]
fn updateinfo_added_by_modifyrepo_is_named_by_repomd_and_plans() {
    let dir = tempfile::Builder::new()
        .prefix("lm-prefetch-kit-")
        .tempdir()
        .unwrap();
    let repo = RpmRepo::create(
        dir.path(),
        &[
            PkgSpec::new("lm-pf-a", "1.0", 1024),
            PkgSpec::new("lm-pf-a", "1.1", 1024),
            PkgSpec::new("lm-pf-b", "1.0", 1024),
            PkgSpec::new("lm-pf-b", "1.0", 1024).release("2"),
        ],
    );
    let a11 = repo.package("lm-pf-a");
    let b2 = repo.package("lm-pf-b");
    assert_eq!((a11.version.as_str(), b2.release.as_str()), ("1.1", "2"));
    let advisories = [
        AdvisorySpec::security("LMSA-1", "Important", std::slice::from_ref(&a11))
            .cve("CVE-2026-0001")
            .cve("CVE-2026-0002"),
        AdvisorySpec::bugfix("LMBA-2", std::slice::from_ref(&b2)),
    ];
    repo.set_updateinfo(&advisories[..1]);
    // a second call replaces the record
    let href = repo.set_updateinfo(&advisories);

    // repomd.xml names exactly one updateinfo record, and it is that file
    let md = parse_repomd(&std::fs::read(repo.repomd_path()).unwrap()).unwrap();
    let recs: Vec<_> = md
        .records
        .iter()
        .filter(|r| r.kind == "updateinfo")
        .collect();
    assert_eq!(recs.len(), 1, "{:?}", md.records);
    let rec = recs[0];
    assert_eq!(rec.href, href);
    let bytes = std::fs::read(repo.dir().join(&href)).unwrap();
    assert_eq!(rec.size, Some(bytes.len() as u64));
    assert_eq!(rec.checksum.to_hex(), sha256_hex(&bytes));

    // it parses back
    let mut parsed = Vec::new();
    parse_updateinfo(&bytes[..], Compression::from_href(&href), |a| {
        parsed.push(a)
    })
    .unwrap();
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[0].id, "LMSA-1");
    assert_eq!(parsed[0].kind, AdvisoryKind::Security);
    assert_eq!(parsed[0].severity, Severity::Important);
    assert_eq!(parsed[0].cves, ["CVE-2026-0001", "CVE-2026-0002"]);
    assert_eq!(parsed[0].packages[0].evr, Evr::new(0, "1.1", "1"));
    assert_eq!(parsed[1].kind, AdvisoryKind::Bugfix);
    assert_eq!(parsed[1].severity, Severity::Unknown);

    // and plans: a site that used both packages at 1.0-1 gets a's security fix first
    let primary = md.records.iter().find(|r| r.kind == "primary").unwrap();
    let mut packages = Vec::new();
    parse_primary_packages(
        File::open(repo.dir().join(&primary.href)).unwrap(),
        Compression::from_href(&primary.href),
        |p| packages.push(p),
    )
    .unwrap();
    assert_eq!(packages.len(), 4);
    let now = 1_800_000_000;
    let used: Vec<SiteUse> = ["lm-pf-b", "lm-pf-a"]
        .iter()
        .map(|n| SiteUse {
            name: n.to_string(),
            arch: "noarch".into(),
            last_used: now - 3600,
            evr: Some(Evr::new(0, "1.0", "1")),
        })
        .collect();
    let held: HashSet<Checksum> = HashSet::new();
    let contains = |c: &Checksum| held.contains(c);
    let input = PlanInput {
        packages: &packages,
        advisories: &parsed,
        used: &used,
        now,
        prefetch_days: prefetch::DEFAULT_PREFETCH_DAYS,
        mirror: false,
        held: &contains,
    };
    let items = prefetch::plan(&input);
    let got: Vec<(&str, Class)> = items.iter().map(|i| (i.href.as_str(), i.class)).collect();
    assert_eq!(
        got,
        [
            (a11.rel_path.as_str(), Class::Security),
            (b2.rel_path.as_str(), Class::Bugfix)
        ]
    );
    assert_eq!(items[0].checksum.to_hex(), a11.sha256_hex);
    assert_eq!(items[0].size, a11.size);
    let status = prefetch::advisory_status(&input);
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].id, "LMSA-1");
    assert!(!status[0].ready);
}
