//! Prefetch planning at scale (issue 10): parse a primary.xml of 60,000 packages and an
//! updateinfo.xml of 10,000 advisories, plan, and compute the advisory status: time and
//! peak RSS, against a baseline measured in the same run (parsing the same primary.xml
//! with the existing `parse_primary` alone).
//!
//! ```text
//! cargo bench --bench prefetch_plan                      # smoke run (2,000 packages), as `cargo test --all-targets` runs it
//! cargo bench --bench prefetch_plan -- --full [--runs N] [--write-md BENCHMARKS.md]
//!            [--packages N] [--advisories N] [--names-used-every K]
//! ```
//!
//! The parent generates the inputs once into a temporary directory (gzip, as AlmaLinux
//! publishes them): a createrepo_c-shaped primary.xml (name, arch, version, checksum, size,
//! location, and a `<format>` with license, sourcerpm, header range, provides, requires and
//! files, about 1.9 KiB per package), several versions per name, 65% x86_64, 25% noarch, 10%
//! x86_64 + i686, a few epochs; and an updateinfo.xml whose advisories (35% security with
//! Critical/Important/Moderate/Low, 45% bugfix, 20% enhancement) each name 1–20 packages
//! (a package and its neighbours, as subpackages of one source, plus the source rpm), with
//! CVE and bugzilla references and a description. Then it runs each measurement in a
//! child process of its own (this binary with `--child`), so that each VmHWM
//! (`/proc/self/status`, read at the end) belongs to that measurement alone:
//!
//! - `baseline`: `parse_primary` over primary.xml.gz, counting packages;
//! - `plan`: `parse_primary_packages` into a Vec, `parse_updateinfo` into a Vec, then
//!   `prefetch::plan` and `prefetch::advisory_status` for a site that used every K-th name
//!   (last use spread over 0–60 days, so about half inside the 30-day window; 70% with the
//!   version it fetched known, the previous one) and holds those fetched versions plus
//!   20,000 unrelated blobs (a `HashSet<Checksum>`);
//! - `mirror`: the same with `mirror = true` (every package planned).
//!
//! Runs are interleaved; medians are reported. Each child prints one JSON line.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use lanmirror::prefetch::{self, PlanInput, SiteUse};
use lanmirror::repodata::{
    Checksum, ChecksumAlgo, Compression, Evr, parse_primary, parse_primary_packages,
    parse_updateinfo,
};
use sha2::Digest;

type Res<T> = Result<T, String>;

const BEGIN: &str = "<!-- prefetch:begin -->";
const END: &str = "<!-- prefetch:end -->";
/// Unix time the synthetic site lives at.
const NOW: u64 = 1_800_000_000;
const DAY: u64 = 86_400;
/// Targets from issue 10.
const TARGET_SECONDS: f64 = 10.0;
const TARGET_RSS_MIB: f64 = 256.0;

#[derive(Debug, Clone)]
struct Params {
    packages: usize,
    advisories: usize,
    used_every: usize,
}

// ---------------------------------------------------------------------------
// Synthetic repository
// ---------------------------------------------------------------------------

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const PREFIXES: &[&str] = &[
    "", "lib", "python3-", "perl-", "golang-", "rust-", "ghc-", "texlive-",
];
const STEMS: &[&str] = &[
    "ssl",
    "curl",
    "xml2",
    "gnome",
    "kde",
    "qt",
    "gtk",
    "boost",
    "llvm",
    "gcc",
    "java",
    "node",
    "sql",
    "pg",
    "krb",
    "ldap",
    "nss",
    "dbus",
    "glib",
    "pango",
    "cairo",
    "fontconfig",
    "x11",
    "wayland",
    "mesa",
    "vulkan",
    "alsa",
    "pulse",
    "pipewire",
    "systemd",
    "selinux",
    "audit",
    "pam",
    "sasl",
    "zstd",
    "lz4",
    "bz",
    "xz",
    "archive",
    "yaml",
];
const SUFFIXES: &[&str] = &[
    "", "-devel", "-libs", "-doc", "-tools", "-common", "-static", "-utils",
];

/// One package name of the synthetic repository and its arches and version count.
struct NameInfo {
    name: String,
    arches: &'static [&'static str],
    versions: usize,
    epoch: u64,
    major: u64,
}

fn names(p: &Params) -> Vec<NameInfo> {
    let mut rng = Rng(0x5eed_0001);
    let mut out = Vec::new();
    let mut total = 0usize;
    let mut i = 0usize;
    while total < p.packages {
        let arches: &'static [&'static str] = match rng.below(100) {
            0..65 => &["x86_64"],
            65..90 => &["noarch"],
            _ => &["x86_64", "i686"],
        };
        // 1..=6 versions, most names few
        let versions = match rng.below(100) {
            0..35 => 1,
            35..60 => 2,
            60..78 => 3,
            78..90 => 4,
            90..96 => 5,
            _ => 6,
        };
        let epoch = if rng.below(100) < 5 {
            1 + rng.below(2)
        } else {
            0
        };
        let name = format!(
            "{}{}{}{}",
            PREFIXES[i % PREFIXES.len()],
            STEMS[(i / PREFIXES.len()) % STEMS.len()],
            i / (PREFIXES.len() * STEMS.len()),
            SUFFIXES[(i / 3) % SUFFIXES.len()]
        );
        total += arches.len() * versions;
        out.push(NameInfo {
            name,
            arches,
            versions,
            epoch,
            major: 1 + rng.below(30),
        });
        i += 1;
    }
    out
}

fn evr_of(n: &NameInfo, v: usize) -> Evr {
    // versions grow in the patch number; releases look like RHEL's
    Evr::new(
        n.epoch,
        format!("{}.{}.{}", n.major, (n.major * 7) % 13, 2 + v),
        format!("{}.el9_{}", 1 + v / 2, v),
    )
}

fn href_of(n: &NameInfo, v: usize, arch: &str) -> String {
    let e = evr_of(n, v);
    let first = n.name.chars().next().unwrap_or('x');
    format!(
        "Packages/{first}/{}-{}-{}.{arch}.rpm",
        n.name, e.version, e.release
    )
}

fn checksum_of(href: &str) -> Checksum {
    Checksum {
        algo: ChecksumAlgo::Sha256,
        digest: sha2::Sha256::digest(href.as_bytes()).to_vec(),
    }
}

fn gz_writer(path: &Path) -> Res<flate2::write::GzEncoder<BufWriter<File>>> {
    let f = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(flate2::write::GzEncoder::new(
        BufWriter::with_capacity(1 << 20, f),
        flate2::Compression::new(6),
    ))
}

fn finish_gz(w: flate2::write::GzEncoder<BufWriter<File>>) -> Res<()> {
    let mut inner = w.finish().map_err(|e| e.to_string())?;
    inner.flush().map_err(|e| e.to_string())
}

/// Writes primary.xml.gz; returns (packages written, uncompressed bytes).
fn write_primary(names: &[NameInfo], path: &Path) -> Res<(usize, u64)> {
    let mut w = gz_writer(path)?;
    let mut rng = Rng(0x5eed_0002);
    let mut bytes = 0u64;
    let mut count = 0usize;
    let total: usize = names.iter().map(|n| n.arches.len() * n.versions).sum();
    let mut s = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<metadata xmlns=\"http://linux.duke.edu/metadata/common\" xmlns:rpm=\"http://linux.duke.edu/metadata/rpm\" packages=\"{total}\">\n"
    );
    for n in names {
        for v in 0..n.versions {
            for arch in n.arches {
                let e = evr_of(n, v);
                let href = href_of(n, v, arch);
                let sum = checksum_of(&href).to_hex();
                let size = 20_000 + rng.below(2_000_000);
                let words = 20 + rng.below(40) as usize;
                let description: String = (0..words)
                    .map(|k| STEMS[(k * 7 + count) % STEMS.len()])
                    .collect::<Vec<_>>()
                    .join(" ");
                s.push_str(&format!(
                    "<package type=\"rpm\">\n  <name>{name}</name>\n  <arch>{arch}</arch>\n  <version epoch=\"{ep}\" ver=\"{ver}\" rel=\"{rel}\"/>\n  <checksum type=\"sha256\" pkgid=\"YES\">{sum}</checksum>\n  <summary>The {name} package</summary>\n  <description>{description}.</description>\n  <packager>Synthetic Build System &lt;build@example.org&gt;</packager>\n  <url>https://example.org/{name}</url>\n  <time file=\"1795306449\" build=\"1795306448\"/>\n  <size package=\"{size}\" installed=\"{inst}\" archive=\"{arc}\"/>\n  <location href=\"{href}\"/>\n  <format>\n    <rpm:license>MIT AND BSD-3-Clause</rpm:license>\n    <rpm:vendor>Synthetic</rpm:vendor>\n    <rpm:group>Unspecified</rpm:group>\n    <rpm:buildhost>build-{bh}.example.org</rpm:buildhost>\n    <rpm:sourcerpm>{name}-{ver}-{rel}.src.rpm</rpm:sourcerpm>\n    <rpm:header-range start=\"4504\" end=\"{hend}\"/>\n    <rpm:provides>\n",
                    name = n.name,
                    ep = e.epoch,
                    ver = e.version,
                    rel = e.release,
                    inst = size * 3,
                    arc = size * 3 + 512,
                    bh = rng.below(40),
                    hend = 5000 + rng.below(60_000),
                ));
                for k in 0..(2 + rng.below(5)) {
                    s.push_str(&format!(
                        "      <rpm:entry name=\"{}{}\" flags=\"EQ\" epoch=\"{}\" ver=\"{}\" rel=\"{}\"/>\n",
                        n.name,
                        if k == 0 { String::new() } else { format!("({arch})-{k}") },
                        e.epoch,
                        e.version,
                        e.release
                    ));
                }
                s.push_str("    </rpm:provides>\n    <rpm:requires>\n");
                for k in 0..(3 + rng.below(8)) {
                    let dep = &names[(rng.below(names.len() as u64)) as usize].name;
                    if k == 0 {
                        s.push_str("      <rpm:entry name=\"rpmlib(CompressedFileNames)\" flags=\"LE\" epoch=\"0\" ver=\"3.0.4\" rel=\"1\" pre=\"1\"/>\n");
                    } else {
                        s.push_str(&format!("      <rpm:entry name=\"{dep}\"/>\n"));
                    }
                }
                s.push_str("    </rpm:requires>\n");
                for k in 0..(1 + rng.below(5)) {
                    s.push_str(&format!("    <file>/usr/share/{}/file{k}</file>\n", n.name));
                }
                s.push_str("  </format>\n</package>\n");
                count += 1;
                if s.len() > 1 << 20 {
                    bytes += s.len() as u64;
                    w.write_all(s.as_bytes()).map_err(|e| e.to_string())?;
                    s.clear();
                }
            }
        }
    }
    s.push_str("</metadata>\n");
    bytes += s.len() as u64;
    w.write_all(s.as_bytes()).map_err(|e| e.to_string())?;
    finish_gz(w)?;
    Ok((count, bytes))
}

/// Writes updateinfo.xml.gz; returns (advisories, package references, uncompressed bytes).
fn write_updateinfo(p: &Params, names: &[NameInfo], path: &Path) -> Res<(usize, usize, u64)> {
    let mut w = gz_writer(path)?;
    let mut rng = Rng(0x5eed_0003);
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<updates>\n");
    let mut bytes = 0u64;
    let mut refs = 0usize;
    for i in 0..p.advisories {
        let (kind, prefix, severity) = match rng.below(100) {
            0..35 => {
                let sev = match rng.below(100) {
                    0..5 => "Critical",
                    5..40 => "Important",
                    40..85 => "Moderate",
                    _ => "Low",
                };
                ("security", "SA", Some(sev))
            }
            35..80 => ("bugfix", "BA", None),
            _ => ("enhancement", "EA", None),
        };
        let first = rng.below(names.len() as u64) as usize;
        let n0 = &names[first];
        let v = rng.below(n0.versions as u64) as usize;
        let want = 1 + rng.below(20) as usize;
        let id = format!("SYN{prefix}-2026:{i:05}");
        let title = match severity {
            Some(sev) => format!("{sev}: {} security update", n0.name),
            None => format!("{} {kind} update", n0.name),
        };
        let month = 1 + i % 12;
        let day = 1 + i % 28;
        s.push_str(&format!(
            "  <update from=\"errata@example.org\" status=\"final\" type=\"{kind}\" version=\"4\">\n    <id>{id}</id>\n    <title>{title}</title>\n    <issued date=\"2026-{month:02}-{day:02} 00:00:00\"/>\n    <updated date=\"2026-{month:02}-{day:02} 12:00:00\"/>\n    <rights>Copyright 2026 Example</rights>\n    <release>Synthetic 9</release>\n    <pushcount>1</pushcount>\n"
        ));
        if let Some(sev) = severity {
            s.push_str(&format!("    <severity>{sev}</severity>\n"));
        }
        let words = 40 + rng.below(200) as usize;
        let text: Vec<&str> = (0..words)
            .map(|k| STEMS[(k * 13 + i) % STEMS.len()])
            .collect();
        s.push_str(&format!(
            "    <summary>An update for {0} is now available.</summary>\n    <description>{1}.\n\nSecurity Fix(es):\n\n* {0}: a &amp; b &lt; c</description>\n    <solution>Run dnf update.</solution>\n    <references>\n",
            n0.name,
            text.join(" ")
        ));
        if severity.is_some() {
            for k in 0..(1 + rng.below(8)) {
                let cve = format!("CVE-2026-{}", 10_000 + i * 10 + k as usize);
                s.push_str(&format!(
                    "      <reference href=\"https://access.example.org/security/cve/{cve}\" id=\"{cve}\" type=\"cve\" title=\"{cve}\"/>\n"
                ));
            }
        }
        for _ in 0..(1 + rng.below(3)) {
            let bz = 2_000_000 + rng.below(900_000);
            s.push_str(&format!(
                "      <reference href=\"https://bugzilla.example.org/{bz}\" id=\"{bz}\" type=\"bugzilla\" title=\"bug {bz}\"/>\n"
            ));
        }
        s.push_str(&format!(
            "      <reference href=\"https://errata.example.org/{id}\" id=\"{id}\" type=\"self\" title=\"{id}\"/>\n    </references>\n    <pkglist>\n      <collection short=\"synthetic-9\">\n        <name>Synthetic 9</name>\n"
        ));
        // the package and its neighbours (subpackages of one source), up to `want`
        let mut listed = 0usize;
        let mut k = first;
        while listed < want && k < names.len() {
            let n = &names[k];
            let v = v.min(n.versions - 1);
            let e = evr_of(n, v);
            for arch in n.arches.iter().copied().chain(std::iter::once("src")) {
                if listed >= want {
                    break;
                }
                if arch == "src" && k != first {
                    continue;
                }
                let file = format!("{}-{}-{}.{arch}.rpm", n.name, e.version, e.release);
                s.push_str(&format!(
                    "        <package name=\"{}\" version=\"{}\" release=\"{}\" epoch=\"{}\" arch=\"{arch}\" src=\"{}-{}-{}.src.rpm\">\n          <filename>{file}</filename>\n",
                    n.name, e.version, e.release, e.epoch, n0.name, e.version, e.release
                ));
                if arch != "src" {
                    s.push_str(&format!(
                        "          <sum type=\"sha256\">{}</sum>\n",
                        checksum_of(&href_of(n, v, arch)).to_hex()
                    ));
                }
                s.push_str("        </package>\n");
                listed += 1;
            }
            k += 1;
        }
        refs += listed;
        s.push_str("      </collection>\n    </pkglist>\n  </update>\n");
        if s.len() > 1 << 20 {
            bytes += s.len() as u64;
            w.write_all(s.as_bytes()).map_err(|e| e.to_string())?;
            s.clear();
        }
    }
    s.push_str("</updates>\n");
    bytes += s.len() as u64;
    w.write_all(s.as_bytes()).map_err(|e| e.to_string())?;
    finish_gz(w)?;
    Ok((p.advisories, refs, bytes))
}

/// The synthetic site: every K-th name used, last use spread over 0–60 days; 70% with the
/// fetched version known (the one before the newest); held: those fetched versions plus
/// 20,000 unrelated blobs.
fn site(p: &Params, names: &[NameInfo]) -> (Vec<SiteUse>, HashSet<Checksum>) {
    let mut rng = Rng(0x5eed_0004);
    let mut used = Vec::new();
    let mut held = HashSet::new();
    for n in names.iter().step_by(p.used_every.max(1)) {
        let fetched = n.versions.saturating_sub(2);
        let known = rng.below(100) < 70;
        let last_used = NOW - rng.below(60 * DAY);
        for arch in n.arches {
            used.push(SiteUse {
                name: n.name.clone(),
                arch: (*arch).to_owned(),
                last_used,
                evr: known.then(|| evr_of(n, fetched)),
            });
            held.insert(checksum_of(&href_of(n, fetched, arch)));
        }
    }
    for i in 0..20_000 {
        held.insert(checksum_of(&format!("unrelated/{i}")));
    }
    (used, held)
}

// ---------------------------------------------------------------------------
// Children
// ---------------------------------------------------------------------------

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn child(mode: &str, dir: &Path, p: &Params) -> Res<String> {
    let primary = dir.join("primary.xml.gz");
    let updateinfo = dir.join("updateinfo.xml.gz");
    let open = |path: &Path| File::open(path).map_err(|e| format!("{}: {e}", path.display()));
    let t0 = Instant::now();
    if mode == "baseline" {
        let n =
            parse_primary(open(&primary)?, Compression::Gzip, |_| {}).map_err(|e| e.to_string())?;
        let secs = t0.elapsed().as_secs_f64();
        return Ok(format!(
            "{{\"mode\":\"baseline\",\"packages\":{n},\"total_s\":{secs:.4},\"vmhwm_kib\":{}}}",
            vm_hwm_kib()
        ));
    }
    let names = names(p);
    let (used, held) = site(p, &names);
    drop(names);
    let t_site = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut packages = Vec::new();
    parse_primary_packages(open(&primary)?, Compression::Gzip, |pk| packages.push(pk))
        .map_err(|e| e.to_string())?;
    let t_primary = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let mut advisories = Vec::new();
    parse_updateinfo(open(&updateinfo)?, Compression::Gzip, |a| {
        advisories.push(a)
    })
    .map_err(|e| e.to_string())?;
    let t_updateinfo = t2.elapsed().as_secs_f64();
    let contains = |c: &Checksum| held.contains(c);
    let input = PlanInput {
        packages: &packages,
        advisories: &advisories,
        used: &used,
        now: NOW,
        prefetch_days: prefetch::DEFAULT_PREFETCH_DAYS,
        mirror: mode == "mirror",
        held: &contains,
    };
    let t3 = Instant::now();
    let items = prefetch::plan(&input);
    let t_plan = t3.elapsed().as_secs_f64();
    let t4 = Instant::now();
    let status = prefetch::advisory_status(&input);
    let t_status = t4.elapsed().as_secs_f64();
    let total = t_primary + t_updateinfo + t_plan + t_status;
    let security = items
        .iter()
        .filter(|i| i.class == prefetch::Class::Security)
        .count();
    let bytes: u64 = items.iter().map(|i| i.size).sum();
    let ready = status.iter().filter(|s| s.ready).count();
    Ok(format!(
        "{{\"mode\":\"{mode}\",\"packages\":{},\"advisories\":{},\"used\":{},\"held\":{},\"items\":{},\"security_items\":{security},\"plan_bytes\":{bytes},\"status\":{},\"status_ready\":{ready},\"site_s\":{t_site:.4},\"primary_s\":{t_primary:.4},\"updateinfo_s\":{t_updateinfo:.4},\"plan_s\":{t_plan:.4},\"status_s\":{t_status:.4},\"total_s\":{total:.4},\"vmhwm_kib\":{}}}",
        packages.len(),
        advisories.len(),
        used.len(),
        held.len(),
        items.len(),
        status.len(),
        vm_hwm_kib()
    ))
}

// ---------------------------------------------------------------------------
// Parent
// ---------------------------------------------------------------------------

#[derive(Debug, Default, Clone)]
struct Run {
    fields: Vec<(String, String)>,
}

impl Run {
    fn parse(line: &str) -> Run {
        // flat JSON object of numbers and one string: good enough for our own output
        let body = line.trim().trim_start_matches('{').trim_end_matches('}');
        let fields = body
            .split(',')
            .filter_map(|kv| kv.split_once(':'))
            .map(|(k, v)| {
                (
                    k.trim_matches('"').to_owned(),
                    v.trim_matches('"').to_owned(),
                )
            })
            .collect();
        Run { fields }
    }
    fn get(&self, k: &str) -> f64 {
        self.fields
            .iter()
            .find(|(key, _)| key == k)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(f64::NAN)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn run_child(mode: &str, dir: &Path, p: &Params) -> Res<Run> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .args([
            "--child",
            mode,
            "--dir",
            &dir.display().to_string(),
            "--packages",
            &p.packages.to_string(),
            "--advisories",
            &p.advisories.to_string(),
            "--names-used-every",
            &p.used_every.to_string(),
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "child {mode} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    println!("{line}");
    Ok(Run::parse(&line))
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(String::new(), |kib| {
            format!(", {:.1} GiB RAM", kib / 1024.0 / 1024.0)
        });
    format!("{cores} cores, {cpu}{mem}")
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
fn report(
    p: &Params,
    gen_info: &str,
    runs: usize,
    base: &[Run],
    plan: &[Run],
    mirror: &[Run],
    started_load: &str,
    wall: f64,
) -> String {
    let med = |rs: &[Run], k: &str| median(rs.iter().map(|r| r.get(k)).collect());
    let all = |rs: &[Run], k: &str| {
        rs.iter()
            .map(|r| format!("{:.2}", r.get(k)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mib = |kib: f64| kib / 1024.0;
    let b_total = med(base, "total_s");
    let b_rss = mib(med(base, "vmhwm_kib"));
    let mut s = String::new();
    s.push_str(&format!("{BEGIN}\n## Prefetch planning (issue 10)\n\n"));
    s.push_str(
        "Generated by `cargo bench --bench prefetch_plan -- --full --write-md BENCHMARKS.md` \
         (`benches/prefetch_plan.rs`) — do not edit by hand; re-run to refresh (it rewrites only \
         this section, between the `prefetch:begin`/`prefetch:end` markers).\n\n",
    );
    s.push_str("| | |\n|---|---|\n");
    s.push_str(&format!(
        "| Date | {} |\n",
        sh("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"])
    ));
    s.push_str(&format!("| Machine | {} |\n", machine()));
    s.push_str(&format!(
        "| Commit | `{}` |\n",
        sh("git", &["rev-parse", "--short", "HEAD"])
    ));
    s.push_str(&format!(
        "| Build | release (`cargo bench`), {} |\n",
        sh("rustc", &["--version"])
    ));
    s.push_str(&format!("| Inputs | {gen_info} |\n"));
    s.push_str(&format!(
        "| Runs | {runs} per measurement, interleaved, each in its own process (VmHWM from /proc/self/status at its end); medians; load average at start {started_load}, at end {}; {wall:.0} s in all |\n\n",
        load()
    ));
    s.push_str(
        "*Baseline*: `repodata::parse_primary` over the same primary.xml.gz, counting packages \
         (what a snapshot switch already does). *Plan*: `parse_primary_packages` into a Vec + \
         `parse_updateinfo` into a Vec + `prefetch::plan` + `prefetch::advisory_status`, for a \
         site that used every K-th name (last use spread over 0–60 days, 70% with the fetched \
         version known) and holds those versions plus 20,000 unrelated blobs. *Mirror*: the same \
         with `mirror = true` (every package planned). Times exclude building the synthetic \
         site's use and held set.\n\n",
    );
    s.push_str("| Measurement | parse primary | parse updateinfo | plan | status | **total** | runs (total) | peak RSS (VmHWM) | vs baseline (time / RSS) | items planned (security) | target ≤ 10 s and ≤ 256 MiB |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|:---:|\n");
    s.push_str(&format!(
        "| baseline: `parse_primary` alone | {b_total:.2} s | | | | **{b_total:.2} s** | {} | {b_rss:.1} MiB | 1.00× / 1.00× | | |\n",
        all(base, "total_s")
    ));
    for (label, rs) in [("plan (site use)", plan), ("plan, `mirror = true`", mirror)] {
        let total = med(rs, "total_s");
        let rss = mib(med(rs, "vmhwm_kib"));
        let pass = total <= TARGET_SECONDS && rss <= TARGET_RSS_MIB;
        s.push_str(&format!(
            "| {label} | {:.2} s | {:.2} s | {:.3} s | {:.3} s | **{total:.2} s** | {} | {rss:.1} MiB | {:.2}× / {:.2}× | {:.0} ({:.0}) | **{}** |\n",
            med(rs, "primary_s"),
            med(rs, "updateinfo_s"),
            med(rs, "plan_s"),
            med(rs, "status_s"),
            all(rs, "total_s"),
            total / b_total,
            rss / b_rss,
            med(rs, "items"),
            med(rs, "security_items"),
            if pass { "PASS" } else { "FAIL" }
        ));
    }
    let r = plan.first().cloned().unwrap_or_default();
    s.push_str(&format!(
        "\nSite of the *plan* rows: {:.0} (name, arch) used, {:.0} checksums held; plan: {:.0} files, {:.1} GiB; status: {:.0} security advisories affecting used packages, {:.0} ready. Parameters: {} packages, {} advisories, every {}th name used.\n",
        r.get("used"),
        r.get("held"),
        r.get("items"),
        r.get("plan_bytes") / (1u64 << 30) as f64,
        r.get("status"),
        r.get("status_ready"),
        p.packages,
        p.advisories,
        p.used_every
    ));
    s.push_str(&format!("\n{END}\n"));
    s
}

fn write_section(file: &Path, section: &str) -> Res<()> {
    let old = std::fs::read_to_string(file).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => {
            let after = &old[e + END.len()..];
            format!(
                "{}{}{}",
                &old[..b],
                section.trim_end(),
                after
                    .strip_prefix('\n')
                    .map_or(after.to_owned(), |a| format!("\n{a}"))
            )
        }
        _ => format!(
            "{}\n{section}",
            old.trim_end_matches('\n').to_owned() + "\n"
        ),
    };
    std::fs::write(file, new).map_err(|e| format!("{}: {e}", file.display()))
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("prefetch_plan: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut p = Params {
        packages: 2_000,
        advisories: 300,
        used_every: 5,
    };
    let (mut full, mut runs, mut write_md, mut child_mode, mut dir) = (
        false,
        3usize,
        None::<PathBuf>,
        None::<String>,
        None::<PathBuf>,
    );
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let num = |v: String| v.parse::<usize>().map_err(|e| format!("{v}: {e}"));
        match a.as_str() {
            "--full" => {
                full = true;
                p.packages = 60_000;
                p.advisories = 10_000;
            }
            "--packages" => p.packages = num(val(a)?)?,
            "--advisories" => p.advisories = num(val(a)?)?,
            "--names-used-every" => p.used_every = num(val(a)?)?,
            "--runs" => runs = num(val(a)?)?.max(1),
            "--write-md" => write_md = Some(PathBuf::from(val(a)?)),
            "--child" => child_mode = Some(val(a)?),
            "--dir" => dir = Some(PathBuf::from(val(a)?)),
            // what `cargo bench` / `cargo test --all-targets` pass to a harness-less bench
            "--bench" | "--test" | "--nocapture" | "-q" | "--quiet" => {}
            other if other.starts_with("--test-threads") => {}
            other if !other.starts_with('-') => {} // a test filter
            other => return Err(format!("unknown option {other}")),
        }
    }
    if let Some(mode) = child_mode {
        let dir = dir.ok_or("--child needs --dir")?;
        println!("{}", child(&mode, &dir, &p)?);
        return Ok(());
    }
    if !full {
        runs = 1;
    }
    let started_load = load();
    let wall = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("lm-prefetch-bench-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let t = Instant::now();
    let names = names(&p);
    let (n_pkgs, primary_bytes) = write_primary(&names, &tmp.path().join("primary.xml.gz"))?;
    let (n_adv, n_refs, ui_bytes) =
        write_updateinfo(&p, &names, &tmp.path().join("updateinfo.xml.gz"))?;
    let size = |f: &str| std::fs::metadata(tmp.path().join(f)).map_or(0, |m| m.len());
    let gen_info = format!(
        "synthetic, generated in the run ({:.1} s): primary.xml.gz {:.1} MiB ({:.1} MiB uncompressed, {n_pkgs} packages, {} names), updateinfo.xml.gz {:.1} MiB ({:.1} MiB uncompressed, {n_adv} advisories naming {n_refs} packages, 1–20 each)",
        t.elapsed().as_secs_f64(),
        size("primary.xml.gz") as f64 / 1048576.0,
        primary_bytes as f64 / 1048576.0,
        names.len(),
        size("updateinfo.xml.gz") as f64 / 1048576.0,
        ui_bytes as f64 / 1048576.0,
    );
    eprintln!("{gen_info}");
    drop(names);
    let (mut base, mut plan, mut mirror) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        base.push(run_child("baseline", tmp.path(), &p)?);
        plan.push(run_child("plan", tmp.path(), &p)?);
        mirror.push(run_child("mirror", tmp.path(), &p)?);
    }
    let section = report(
        &p,
        &gen_info,
        runs,
        &base,
        &plan,
        &mirror,
        &started_load,
        wall.elapsed().as_secs_f64(),
    );
    match write_md {
        Some(f) => {
            write_section(&f, &section)?;
            eprintln!("wrote the prefetch section of {}", f.display());
        }
        None => println!("{section}"),
    }
    Ok(())
}
