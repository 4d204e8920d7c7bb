//! Real RPM packages and repositories built with `rpmbuild` and `createrepo_c`.
//!
//! Builds are reproducible (fixed `SOURCE_DATE_EPOCH`, build host and
//! payload), so the same [`PkgSpec`] always yields a byte-identical rpm; built
//! rpms are cached in [`build_cache`] keyed by a hash of the spec.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::sha256_hex;

/// Bump when the spec template changes, to invalidate the build cache.
const TEMPLATE_VERSION: u32 = 1;

/// A noarch package with one file, `/usr/share/<name>/payload.bin`, of
/// `payload_bytes` incompressible bytes (deterministic from name + version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkgSpec<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub release: &'a str,
    pub payload_bytes: usize,
    /// `Requires:` entries, e.g. `"lm-base"` or `"lm-base >= 1.0"`.
    pub requires: Vec<String>,
}

impl<'a> PkgSpec<'a> {
    /// Release "1", no requires.
    pub fn new(name: &'a str, version: &'a str, payload_bytes: usize) -> Self {
        PkgSpec {
            name,
            version,
            release: "1",
            payload_bytes,
            requires: Vec::new(),
        }
    }

    pub fn requires(mut self, dep: &str) -> Self {
        self.requires.push(dep.to_string());
        self
    }

    pub fn release(mut self, release: &'a str) -> Self {
        self.release = release;
        self
    }

    /// `<name>-<version>-<release>.noarch.rpm`
    pub fn file_name(&self) -> String {
        format!("{}-{}-{}.noarch.rpm", self.name, self.version, self.release)
    }

    /// The installed payload's path inside an installroot.
    pub fn payload_path(&self) -> String {
        format!("/usr/share/{}/payload.bin", self.name)
    }

    fn validate(&self) {
        let ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._+~^".contains(c) || c == '-')
        };
        assert!(ok(self.name), "bad package name {:?}", self.name);
        for (what, v) in [("version", self.version), ("release", self.release)] {
            assert!(ok(v) && !v.contains('-'), "bad {what} {v:?}");
        }
        for r in &self.requires {
            assert!(
                !r.contains('\n') && !r.trim().is_empty(),
                "bad requires {r:?}"
            );
        }
    }

    fn spec_text(&self) -> String {
        let mut s = String::new();
        s.push_str(
            "%define _binary_payload w0.ufdio\n\
             %define __os_install_post %{nil}\n\
             %define __spec_install_post %{nil}\n\
             %define debug_package %{nil}\n\
             %define _build_id_links none\n\
             %define use_source_date_epoch_as_buildtime 1\n\
             %define clamp_mtime_to_source_date_epoch 1\n\
             %define source_date_epoch_from_changelog 0\n\
             %define _buildhost lanmirror-test\n",
        );
        s.push_str(&format!(
            "Name: {}\nVersion: {}\nRelease: {}\n",
            self.name, self.version, self.release
        ));
        s.push_str(
            "Summary: lanmirror test package\nLicense: MIT\nBuildArch: noarch\nAutoReqProv: no\n\
             Source0: payload.bin\n",
        );
        for r in &self.requires {
            s.push_str(&format!("Requires: {r}\n"));
        }
        s.push_str(&format!(
            "%description\nlanmirror test package {name}, {bytes} payload bytes.\n\
             %prep\n%build\n%install\n\
             install -D -m 0644 %{{SOURCE0}} %{{buildroot}}/usr/share/{name}/payload.bin\n\
             %files\n/usr/share/{name}/payload.bin\n",
            name = self.name,
            bytes = self.payload_bytes
        ));
        s
    }

    fn cache_key(&self) -> String {
        let key = format!(
            "v{TEMPLATE_VERSION}\n{}\npayload {} {} {}\n",
            self.spec_text(),
            self.name,
            self.version,
            self.payload_bytes
        );
        sha256_hex(key.as_bytes())[..24].to_string()
    }
}

/// `len` incompressible pseudo-random bytes, deterministic from name + version
/// (xorshift64* seeded with FNV-1a of `name\0version`).
pub fn payload_bytes(name: &str, version: &str, len: usize) -> Vec<u8> {
    let mut seed: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain([0u8]).chain(version.bytes()) {
        seed ^= b as u64;
        seed = seed.wrapping_mul(0x0100_0000_01b3);
    }
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Directory of cached rpm builds: `target/tmp/test-rpm-cache/`
/// (`LANMIRROR_NO_RPM_CACHE=1` forces fresh builds).
pub fn build_cache() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-rpm-cache");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Builds (or takes from the cache) the rpm for `spec` and copies it into
/// `out_dir`; returns the copy's path.
pub fn build_rpm(spec: &PkgSpec, out_dir: &Path) -> PathBuf {
    spec.validate();
    let cached = build_cache().join(spec.cache_key()).join(spec.file_name());
    let no_cache = std::env::var_os("LANMIRROR_NO_RPM_CACHE").is_some();
    if no_cache || !cached.is_file() {
        let dir = cached.parent().unwrap();
        fs::create_dir_all(dir).unwrap();
        // Atomic publish: concurrent tests may build the same spec.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(
            ".{}.{}.{seq}.tmp",
            spec.file_name(),
            std::process::id()
        ));
        rpmbuild(spec, &tmp);
        fs::rename(&tmp, &cached).unwrap();
    }
    fs::create_dir_all(out_dir).unwrap();
    let dest = out_dir.join(spec.file_name());
    fs::copy(&cached, &dest)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", cached.display(), dest.display()));
    dest
}

/// Runs rpmbuild in a scratch topdir and copies the rpm to `dest`.
fn rpmbuild(spec: &PkgSpec, dest: &Path) {
    let top = tempfile::Builder::new()
        .prefix("lm-rpmbuild-")
        .tempdir()
        .unwrap();
    let t = top.path();
    for d in [
        "SOURCES",
        "SPECS",
        "BUILD",
        "RPMS",
        "SRPMS",
        "BUILDROOT",
        "tmp",
    ] {
        fs::create_dir_all(t.join(d)).unwrap();
    }
    fs::write(
        t.join("SOURCES/payload.bin"),
        payload_bytes(spec.name, spec.version, spec.payload_bytes),
    )
    .unwrap();
    let spec_path = t.join(format!("SPECS/{}.spec", spec.name));
    fs::write(&spec_path, spec.spec_text()).unwrap();
    let out = Command::new("rpmbuild")
        .arg("--define")
        .arg(format!("_topdir {}", t.display()))
        .arg("--define")
        .arg(format!("_tmppath {}/tmp", t.display()))
        .arg("-bb")
        .arg(&spec_path)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env("LC_ALL", "C")
        .output()
        .expect("run rpmbuild (is the `rpm` package installed?)");
    assert!(
        out.status.success(),
        "rpmbuild failed for {}:\n{}\n{}",
        spec.file_name(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let built = t.join("RPMS/noarch").join(spec.file_name());
    assert!(
        built.is_file(),
        "rpmbuild did not produce {}",
        built.display()
    );
    fs::copy(&built, dest).unwrap();
}

/// One package of an [`RpmRepo`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltPkg {
    pub name: String,
    pub version: String,
    pub release: String,
    /// `name-version-release.noarch.rpm`
    pub file_name: String,
    /// Path relative to the repo root: `Packages/<file_name>`.
    pub rel_path: String,
    /// Absolute path of the rpm in the repo.
    pub path: PathBuf,
    pub size: u64,
    pub sha256_hex: String,
    pub payload_bytes: usize,
}

/// A directory laid out like an upstream mirror: `Packages/*.rpm` plus
/// `repodata/` from `createrepo_c` (gz, sha256, unique file names).
#[derive(Debug)]
pub struct RpmRepo {
    dir: PathBuf,
    pkgs: Vec<BuiltPkg>,
}

impl RpmRepo {
    /// Builds `pkgs` (two at a time) into `dir/Packages/` and runs
    /// `createrepo_c dir`.
    pub fn create(dir: &Path, pkgs: &[PkgSpec]) -> RpmRepo {
        let pkg_dir = dir.join("Packages");
        fs::create_dir_all(&pkg_dir).unwrap();
        let mut built = Vec::new();
        for pair in pkgs.chunks(2) {
            let paths: Vec<PathBuf> = std::thread::scope(|s| {
                let hs: Vec<_> = pair
                    .iter()
                    .map(|p| s.spawn(|| build_rpm(p, &pkg_dir)))
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for (spec, path) in pair.iter().zip(paths) {
                built.push(describe(spec, &path));
            }
        }
        let repo = RpmRepo {
            dir: dir.to_path_buf(),
            pkgs: built,
        };
        repo.createrepo(false);
        repo
    }

    /// Adds (or replaces, same file name) a package and re-runs
    /// `createrepo_c --update`: repomd.xml changes and the old repodata files
    /// are deleted, as on a real mirror.
    pub fn add(&mut self, spec: &PkgSpec) -> BuiltPkg {
        let path = build_rpm(spec, &self.dir.join("Packages"));
        let pkg = describe(spec, &path);
        self.pkgs.retain(|p| p.file_name != pkg.file_name);
        self.pkgs.push(pkg.clone());
        self.createrepo(true);
        pkg
    }

    /// Deletes every package named `name` and re-runs `createrepo_c --update`.
    pub fn remove(&mut self, name: &str) {
        let before = self.pkgs.len();
        self.pkgs.retain(|p| {
            if p.name == name {
                fs::remove_file(&p.path).unwrap();
                false
            } else {
                true
            }
        });
        assert!(self.pkgs.len() < before, "no package {name} in the repo");
        self.createrepo(true);
    }

    fn createrepo(&self, update: bool) {
        let mut cmd = Command::new("createrepo_c");
        if update {
            cmd.arg("--update");
        }
        let out = cmd
            .arg(&self.dir)
            .env("LC_ALL", "C")
            .output()
            .expect("run createrepo_c (is `createrepo-c` installed?)");
        assert!(
            out.status.success(),
            "createrepo_c failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn packages(&self) -> Vec<BuiltPkg> {
        self.pkgs.clone()
    }

    /// The (last added) package called `name`; panics if absent.
    pub fn package(&self, name: &str) -> BuiltPkg {
        self.pkgs
            .iter()
            .rev()
            .find(|p| p.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no package {name} in the repo"))
    }

    pub fn repomd_path(&self) -> PathBuf {
        self.dir.join("repodata/repomd.xml")
    }

    /// The `location href`s listed in repomd.xml, e.g.
    /// `repodata/<sha256>-primary.xml.gz`.
    pub fn metadata_files(&self) -> Vec<String> {
        let xml = fs::read_to_string(self.repomd_path()).unwrap();
        let mut out = Vec::new();
        let mut rest = xml.as_str();
        while let Some(i) = rest.find("<location href=\"") {
            rest = &rest[i + 16..];
            let end = rest.find('"').expect("unterminated href");
            out.push(rest[..end].to_string());
            rest = &rest[end..];
        }
        out
    }
}

fn describe(spec: &PkgSpec, path: &Path) -> BuiltPkg {
    let data = fs::read(path).unwrap();
    BuiltPkg {
        name: spec.name.to_string(),
        version: spec.version.to_string(),
        release: spec.release.to_string(),
        file_name: spec.file_name(),
        rel_path: format!("Packages/{}", spec.file_name()),
        path: path.to_path_buf(),
        size: data.len() as u64,
        sha256_hex: sha256_hex(&data),
        payload_bytes: spec.payload_bytes,
    }
}

/// One advisory for [`RpmRepo::set_updateinfo`]: written the way createrepo_c writes
/// `updateinfo.xml` (ids, type, severity, CVE references, a pkglist of the repo's own
/// packages with their file names and sha256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvisorySpec {
    pub id: String,
    /// `security`, `bugfix`, `enhancement`, ...
    pub kind: String,
    /// `Critical`, `Important`, `Moderate`, `Low`; `None` writes no `<severity>`.
    pub severity: Option<String>,
    pub title: String,
    /// `<issued date>`, e.g. `2026-03-01 10:00:00`.
    pub issued: String,
    pub cves: Vec<String>,
    pub packages: Vec<BuiltPkg>,
}

impl AdvisorySpec {
    /// A security advisory of `severity` for `packages`.
    pub fn security(id: &str, severity: &str, packages: &[BuiltPkg]) -> Self {
        AdvisorySpec {
            id: id.to_string(),
            kind: "security".to_string(),
            severity: Some(severity.to_string()),
            title: format!("{severity}: {id} security update"),
            issued: "2026-03-01 10:00:00".to_string(),
            cves: Vec::new(),
            packages: packages.to_vec(),
        }
    }

    /// A bugfix advisory (no severity) for `packages`.
    pub fn bugfix(id: &str, packages: &[BuiltPkg]) -> Self {
        AdvisorySpec {
            kind: "bugfix".to_string(),
            severity: None,
            title: format!("{id} bug fix update"),
            ..AdvisorySpec::security(id, "", packages)
        }
    }

    /// Adds a `<reference type="cve">`.
    pub fn cve(mut self, id: &str) -> Self {
        self.cves.push(id.to_string());
        self
    }

    fn xml(&self) -> String {
        let mut s = format!(
            "  <update from=\"lanmirror-tests\" status=\"final\" type=\"{}\" version=\"1\">\n    \
             <id>{}</id>\n    <title>{}</title>\n    <issued date=\"{}\"/>\n",
            esc(&self.kind),
            esc(&self.id),
            esc(&self.title),
            esc(&self.issued)
        );
        if let Some(sev) = &self.severity {
            s.push_str(&format!("    <severity>{}</severity>\n", esc(sev)));
        }
        s.push_str(&format!(
            "    <summary>{0}</summary>\n    <description>{0}</description>\n    <references>\n",
            esc(&self.title)
        ));
        for c in &self.cves {
            let c = esc(c);
            s.push_str(&format!(
                "      <reference href=\"https://cve.example/{c}\" id=\"{c}\" type=\"cve\" title=\"{c}\"/>\n"
            ));
        }
        s.push_str(
            "    </references>\n    <pkglist>\n      <collection short=\"lanmirror-tests\">\n        \
             <name>lanmirror tests</name>\n",
        );
        for p in &self.packages {
            s.push_str(&format!(
                "        <package name=\"{n}\" version=\"{v}\" release=\"{r}\" epoch=\"0\" arch=\"noarch\" \
                 src=\"{n}-{v}-{r}.src.rpm\">\n          <filename>{f}</filename>\n          \
                 <sum type=\"sha256\">{sum}</sum>\n        </package>\n",
                n = esc(&p.name),
                v = esc(&p.version),
                r = esc(&p.release),
                f = esc(&p.file_name),
                sum = p.sha256_hex
            ));
        }
        s.push_str("      </collection>\n    </pkglist>\n  </update>\n");
        s
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl RpmRepo {
    /// Writes `updateinfo.xml` for `advisories` and adds it to `repodata/` with
    /// `modifyrepo_c` (gz, checksum-named, as a mirror publishes it), replacing an earlier
    /// updateinfo record. Returns its href (`repodata/<sha256>-updateinfo.xml.gz`).
    /// `add`/`remove` re-run `createrepo_c --update`, which drops the record: call this again
    /// after them.
    pub fn set_updateinfo(&self, advisories: &[AdvisorySpec]) -> String {
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<updates>\n");
        for a in advisories {
            xml.push_str(&a.xml());
        }
        xml.push_str("</updates>\n");
        let tmp = tempfile::Builder::new()
            .prefix("lm-updateinfo-")
            .tempdir()
            .unwrap();
        let file = tmp.path().join("updateinfo.xml");
        fs::write(&file, xml).unwrap();
        let out = Command::new("modifyrepo_c")
            .arg("--mdtype=updateinfo")
            .arg(&file)
            .arg(self.dir.join("repodata"))
            .env("LC_ALL", "C")
            .output()
            .expect("run modifyrepo_c (is `createrepo-c` installed?)");
        assert!(
            out.status.success(),
            "modifyrepo_c failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.metadata_files()
            .into_iter()
            .find(|h| h.ends_with("-updateinfo.xml.gz"))
            .expect("modifyrepo_c wrote no updateinfo record")
    }
}
