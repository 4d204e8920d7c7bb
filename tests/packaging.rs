//! The packaging files (`packaging/`), each checked by the tool that will read it: the systemd
//! unit by `systemd-analyze verify` and `security`, the sysusers file by `systemd-sysusers`, the
//! firewalld service by firewalld's own reader, the spec by `rpmspec` and `rpmbuild`, the source
//! tarball by an offline cargo; the generated man pages and completions against `--help`; and
//! the unit's sandbox against what a real node does: a two-node site on a namespace LAN, run as
//! an unprivileged user without capabilities under `strace`, must use only the system calls,
//! address families and paths the unit allows.
//!
//! Tools (installed by `scripts/test-all` when missing): systemd (`systemd-analyze`,
//! `systemd-sysusers`), rpm (`rpmspec`, `rpmbuild`), python3-firewall, strace, iproute2. A test
//! whose tool is missing prints why and skips; the sandbox test also needs root.
//! The source tarball needs crates.io once (`cargo vendor`). The rpmbuild test is a whole
//! release build: about 10 minutes on 2 cores the first time; the vendored crates it compiled
//! are kept in target/rpmbuild-cache, so later runs rebuild only lanmirror (1–2 minutes).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::netns::{self, tool};
use common::node::{node_bin, run_with_timeout};
use common::*;
use lanmirror::config::{Config, DEFAULT_CONFIG};

/// The package's own names, as the spec installs them.
const UNIT_PATH: &str = "/usr/lib/systemd/system/lanmirror.service";
const BIN_PATH: &str = "/usr/bin/lanmirror";
const CONFIG_PATH: &str = "/etc/lanmirror/lanmirror.toml";
const STATE_DIR: &str = "/var/lib/lanmirror";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn packaging(name: &str) -> PathBuf {
    repo().join("packaging").join(name)
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// The path of `name` on PATH (or in /usr/sbin, /sbin), or None after printing why `test` is
/// skipped, naming the Debian package that has it.
fn need(test: &str, name: &str, package: &str) -> Option<PathBuf> {
    let p = tool(name);
    if p.is_absolute() {
        Some(p)
    } else {
        eprintln!("SKIPPED {test}: no `{name}` here (Debian package {package})");
        None
    }
}

/// Runs `cmd`, which must succeed within `timeout`; returns its stdout.
fn run_ok(cmd: Command, timeout: Duration) -> String {
    let what = format!("{cmd:?}");
    let out = run_with_timeout(cmd, timeout);
    assert!(
        out.success,
        "{what} failed ({:?}, timed out: {}):\n{}\n{}",
        out.code, out.timed_out, out.stdout, out.stderr
    );
    out.stdout
}

fn lanmirror(args: &[&str]) -> Command {
    let mut c = Command::new(node_bin());
    c.args(args);
    c
}

/// The default config as the node reads it.
fn default_config() -> Config {
    Config::parse(DEFAULT_CONFIG, "(embedded default)").expect("the embedded default parses")
}

/// `KEY=value` settings of a unit file, in order (comments and section headers left out).
fn unit_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter(|l| !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The one value of `key` in the unit (panics when it is missing or given twice).
fn unit_value(settings: &[(String, String)], key: &str) -> String {
    let v: Vec<&String> = settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(v.len(), 1, "the unit sets {key} {} times", v.len());
    v[0].clone()
}

/// The subcommands `lanmirror --help` lists (without `help`).
fn subcommands() -> Vec<String> {
    let help = run_ok(lanmirror(&["--help"]), Duration::from_secs(20));
    let list: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(
        list.iter().any(|c| c == "serve") && list.len() >= 5,
        "no command list in --help:\n{help}"
    );
    list
}

/// The long options `lanmirror <sub> --help` lists, e.g. `--config`.
fn long_options(sub: &str) -> Vec<String> {
    let help = run_ok(lanmirror(&[sub, "--help"]), Duration::from_secs(20));
    let opts: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Options:"))
        .flat_map(|l| l.split(|c: char| c.is_whitespace() || c == ','))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.split(['=', '<', '[']).next().unwrap_or(w).to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(
        opts.iter().any(|o| o == "--help"),
        "no options in `{sub} --help`:\n{help}"
    );
    opts
}

/// The generated files of `lanmirror generate ARGS --out <dir>/<sub>`.
fn generate(dir: &Path, sub: &str, args: &[&str]) -> PathBuf {
    let out = dir.join(sub);
    let mut c = lanmirror(&["generate"]);
    c.args(args).arg("--out").arg(&out);
    run_ok(c, Duration::from_secs(20));
    out
}

/// roff text with its escapes of `-` undone, for searching.
fn unroff(s: &str) -> String {
    s.replace("\\-", "-")
        .replace("\\fB", "")
        .replace("\\fR", "")
}

#[test]
fn man_pages_cover_every_subcommand_and_option() {
    let dir = temp();
    let man = generate(dir.path(), "man", &["man"]);
    let main = unroff(&read(&man.join("lanmirror.1")));
    assert!(
        main.starts_with(".ie") || main.contains(".TH lanmirror 1"),
        "{main}"
    );
    let mut pages: BTreeSet<String> = fs::read_dir(&man)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(pages.remove("lanmirror.1"));
    for sub in subcommands() {
        assert!(
            main.contains(&format!("lanmirror-{sub}(1)")),
            "lanmirror.1 does not point to lanmirror-{sub}(1):\n{main}"
        );
        let page_name = format!("lanmirror-{sub}.1");
        assert!(pages.remove(&page_name), "no {page_name} in {pages:?}");
        let page = unroff(&read(&man.join(&page_name)));
        for opt in long_options(&sub) {
            assert!(page.contains(&opt), "{page_name} does not describe {opt}");
        }
    }
    assert!(
        pages.is_empty(),
        "pages of commands --help does not list (hidden ones?): {pages:?}"
    );
    assert!(
        !main.contains("generate"),
        "the hidden `generate` is in the man page"
    );
}

#[test]
fn completions_offer_every_subcommand_and_option() {
    let test = "completions_offer_every_subcommand_and_option";
    let dir = temp();
    let mut files = BTreeMap::new();
    for (shell, file) in [
        ("bash", "lanmirror.bash"),
        ("zsh", "_lanmirror"),
        ("fish", "lanmirror.fish"),
    ] {
        let out = generate(dir.path(), shell, &["completions", shell]);
        let path = out.join(file);
        let text = read(&path);
        assert!(
            !text.contains("generate"),
            "{shell} completions offer the hidden `generate`"
        );
        files.insert(shell, (path, text));
    }
    let subs = subcommands();
    for (shell, (_, text)) in &files {
        for sub in &subs {
            assert!(text.contains(sub.as_str()), "{shell}: no {sub}");
            for opt in long_options(sub) {
                let bare = opt.trim_start_matches('-');
                assert!(text.contains(bare), "{shell}: no {opt} of {sub}");
            }
        }
    }
    // bash: source the script and ask it, as bash would on <TAB>.
    let (script, _) = &files["bash"];
    let ask = |words: &[&str]| -> BTreeSet<String> {
        let line = words.join(" ");
        let prog = format!(
            "source {script:?}; spec=$(complete -p lanmirror) || exit 3; \
             fn=${{spec#*-F }}; fn=${{fn%% *}}; \
             COMP_WORDS=({line}); COMP_CWORD={cword}; COMP_LINE={line:?}; COMP_POINT=${{#COMP_LINE}}; \
             \"$fn\" lanmirror {cur:?} {prev:?}; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            cword = words.len() - 1,
            cur = words[words.len() - 1].trim_matches('"'),
            prev = words[words.len() - 2],
        );
        let mut c = Command::new("bash");
        c.arg("--norc").arg("-c").arg(prog);
        run_ok(c, Duration::from_secs(20))
            .lines()
            .map(str::to_string)
            .collect()
    };
    let top = ask(&["lanmirror", "\"\""]);
    for sub in &subs {
        assert!(top.contains(sub), "bash offers {top:?}, not {sub}");
    }
    for sub in &subs {
        let offered = ask(&["lanmirror", sub, "--"]);
        for opt in long_options(sub) {
            assert!(
                offered.contains(&opt),
                "bash offers {offered:?} after `lanmirror {sub} --`, not {opt}"
            );
        }
    }
    // zsh and fish check their scripts' syntax when they are here (not installed for this).
    for (shell, flag) in [("zsh", "-n"), ("fish", "--no-execute")] {
        match tool(shell) {
            p if p.is_absolute() => {
                let mut c = Command::new(p);
                c.arg(flag).arg(&files[shell].0);
                run_ok(c, Duration::from_secs(20));
            }
            _ => eprintln!("{test}: no {shell} here, its completions' syntax is not checked"),
        }
    }
}

#[test]
fn packaged_config_is_the_default_with_the_data_dir_set() {
    let dir = temp();
    let out = generate(dir.path(), "etc", &["config", "--data-dir", STATE_DIR]);
    let path = out.join("lanmirror.toml");
    let text = read(&path);
    let cfg = Config::load(Some(&path)).expect("the packaged config loads");
    assert_eq!(cfg.data_dir(), PathBuf::from(STATE_DIR));
    assert!(
        text.contains(CONFIG_PATH),
        "the header names the file's place"
    );
    // Every setting of the default, and nothing else but data_dir.
    let settings = |t: &str| -> Vec<String> {
        t.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    let mut packaged = settings(&text);
    let set = format!("data_dir = \"{STATE_DIR}\"");
    let at = packaged
        .iter()
        .position(|l| *l == set)
        .unwrap_or_else(|| panic!("no `{set}` in\n{text}"));
    packaged.remove(at);
    assert_eq!(packaged, settings(DEFAULT_CONFIG));
    let d = default_config();
    assert_eq!(cfg.node.http_listen, d.node.http_listen);
    assert_eq!(cfg.node.quic_listen, d.node.quic_listen);
    assert_eq!(
        cfg.repos.iter().map(|r| &r.name).collect::<Vec<_>>(),
        d.repos.iter().map(|r| &r.name).collect::<Vec<_>>()
    );
}

/// A root for `systemd-analyze verify --root`: the unit where the package puts it, the
/// system's targets, and an executable at the unit's ExecStart path.
fn verify_root(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    let units = root.join("usr/lib/systemd/system");
    fs::create_dir_all(&units).unwrap();
    fs::copy(
        packaging("lanmirror.service"),
        root.join(UNIT_PATH.trim_start_matches('/')),
    )
    .unwrap();
    for sys in ["/usr/lib/systemd/system", "/lib/systemd/system"] {
        let Ok(entries) = fs::read_dir(sys) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().ends_with(".target") && !units.join(&name).exists() {
                let _ = fs::copy(e.path(), units.join(&name));
            }
        }
    }
    // `verify` checks that ExecStart names an executable; the arguments are checked against
    // the real binary in unit_runs_the_packaged_binary_and_config.
    let bin = root.join(BIN_PATH.trim_start_matches('/'));
    fs::create_dir_all(bin.parent().unwrap()).unwrap();
    fs::write(&bin, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    root
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let test = "unit_passes_systemd_analyze_verify";
    let Some(sa) = need(test, "systemd-analyze", "systemd") else {
        return;
    };
    let dir = temp();
    let root = verify_root(dir.path());
    // Documentation= pages are checked against the generated ones below (`man` may be absent).
    let verify = || {
        let mut c = Command::new(&sa);
        c.arg("verify")
            .arg("--man=no")
            .arg(format!("--root={}", root.display()))
            .arg(UNIT_PATH);
        run_with_timeout(c, Duration::from_secs(60))
    };
    let out = verify();
    // verify exits 0 on unknown keys too, only saying so: any word from it is a failure.
    assert!(
        out.success && out.stdout.trim().is_empty() && out.stderr.trim().is_empty(),
        "systemd-analyze verify ({:?}):\n{}{}",
        out.code,
        out.stdout,
        out.stderr
    );
    // It can fail: a key systemd does not know is reported.
    let bad = root.join(UNIT_PATH.trim_start_matches('/'));
    fs::write(
        &bad,
        read(&bad).replace("[Service]\n", "[Service]\nProtectEverything=yes\n"),
    )
    .unwrap();
    let out = verify();
    assert!(
        out.stderr.contains("ProtectEverything"),
        "verify did not notice an unknown key: {}{}",
        out.stdout,
        out.stderr
    );
    // Documentation=man:… names pages the package installs.
    let man = generate(dir.path(), "man", &["man"]);
    let settings = unit_settings(&read(&packaging("lanmirror.service")));
    let docs = unit_value(&settings, "Documentation");
    for d in docs.split_whitespace() {
        let page = d
            .strip_prefix("man:")
            .and_then(|p| p.strip_suffix("(1)"))
            .unwrap_or_else(|| panic!("Documentation={d}: not a man page of section 1"));
        assert!(
            man.join(format!("{page}.1")).is_file(),
            "no man page {page}"
        );
    }
}

/// `Overall exposure level for X: N.N` from `systemd-analyze security`.
fn exposure(out: &str) -> f64 {
    out.lines()
        .find_map(|l| l.split_once("Overall exposure level for "))
        .and_then(|(_, rest)| rest.split_once(": "))
        .and_then(|(_, v)| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"))
}

/// The systemd major version of `systemd-analyze --version` ("systemd 252 (252.39-1~deb12u2)").
fn systemd_version(sa: &Path) -> u32 {
    let mut c = Command::new(sa);
    c.arg("--version");
    let v = run_ok(c, Duration::from_secs(20));
    v.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no version in {v}"))
}

#[test]
fn unit_exposure_is_the_one_the_readme_reports() {
    let test = "unit_exposure_is_the_one_the_readme_reports";
    let Some(sa) = need(test, "systemd-analyze", "systemd") else {
        return;
    };
    // Offline: no running systemd needed (this is how it runs in a container).
    let mut c = Command::new(&sa);
    c.arg("security")
        .arg("--offline=yes")
        .arg("--no-pager")
        .arg(packaging("lanmirror.service"));
    let out = run_with_timeout(c, Duration::from_secs(60));
    let text = format!("{}{}", out.stdout, out.stderr);
    let level = exposure(&text);
    // README: "… rates the unit's exposure 1.1 (OK) with systemd 252 …".
    let readme = read(&repo().join("README.md"));
    let (said, said_version) = readme
        .split_once("rates the unit's exposure ")
        .and_then(|(_, rest)| {
            let mut w = rest.split_whitespace();
            let level: f64 = w.next()?.parse().ok()?;
            let version = rest.split_once("with systemd ")?.1;
            let version = version.split_whitespace().next()?;
            let version: u32 = version
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()?;
            Some((level, version))
        })
        .expect("README.md says \"rates the unit's exposure N.N (…) with systemd NNN\"");
    let here = systemd_version(&sa);
    eprintln!(
        "{test}: systemd {here} rates the unit {level} (README: {said} with systemd {said_version})"
    );
    if here == said_version {
        assert_eq!(
            level, said,
            "README.md reports another exposure level:\n{text}"
        );
    } else {
        // Another systemd weighs settings differently; the level must stay low all the same.
        assert!(
            level <= said + 0.5,
            "exposure {level} on systemd {here}:\n{text}"
        );
    }
    assert!(level < 2.0, "exposure {level} is not OK:\n{text}");
}

#[test]
fn unit_runs_the_packaged_binary_and_config() {
    let unit = read(&packaging("lanmirror.service"));
    let s = unit_settings(&unit);
    let exec = unit_value(&s, "ExecStart");
    let words: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(words[0], BIN_PATH, "{exec}");
    let config_at = words
        .iter()
        .position(|w| *w == "--config")
        .expect("ExecStart names the config");
    assert_eq!(words[config_at + 1], CONFIG_PATH);
    // The binary takes exactly these arguments: with the config path swapped for a missing
    // file it fails reading that file (exit 1), not parsing the command line (clap: exit 2).
    let dir = temp();
    let missing = dir.path().join("missing.toml");
    let mut args: Vec<String> = words[1..].iter().map(|w| w.to_string()).collect();
    args[config_at] = missing.to_string_lossy().into_owned();
    let mut c = Command::new(node_bin());
    c.args(&args);
    let out = run_with_timeout(c, Duration::from_secs(20));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("cannot read config file"),
        "{}",
        out.stderr
    );
    // The directories systemd makes are the ones the packaged config uses.
    assert_eq!(
        format!("/var/lib/{}", unit_value(&s, "StateDirectory")),
        STATE_DIR
    );
    assert_eq!(
        format!("/etc/{}", unit_value(&s, "ConfigurationDirectory")),
        Path::new(CONFIG_PATH).parent().unwrap().to_string_lossy()
    );
    // The user is the sysusers file's.
    let user = unit_value(&s, "User");
    let sysusers = sysusers_line();
    assert_eq!(user, sysusers[1]);
    assert_eq!(unit_value(&s, "Group"), sysusers[1]);
}

/// The fields of the `u` line of packaging/lanmirror.sysusers (GECOS unquoted).
fn sysusers_line() -> Vec<String> {
    let text = read(&packaging("lanmirror.sysusers"));
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("u "))
        .expect("a `u` line");
    let mut fields = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        rest = rest.trim_start();
        if let Some(q) = rest.strip_prefix('"') {
            let (f, r) = q.split_once('"').expect("closing quote");
            fields.push(f.to_string());
            rest = r;
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            fields.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    assert_eq!(fields.len(), 6, "{line}");
    fields
}

#[test]
fn sysusers_file_makes_the_service_user() {
    let test = "sysusers_file_makes_the_service_user";
    let Some(sysusers) = need(test, "systemd-sysusers", "systemd") else {
        return;
    };
    // systemd-sysusers itself, into an empty root: what a machine without the user gets.
    let dir = temp();
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("etc")).unwrap();
    let mut c = Command::new(sysusers);
    c.arg(format!("--root={}", root.display()))
        .arg(packaging("lanmirror.sysusers"));
    run_ok(c, Duration::from_secs(30));
    let passwd = read(&root.join("etc/passwd"));
    let entry: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("lanmirror:"))
        .unwrap_or_else(|| panic!("no lanmirror in\n{passwd}"))
        .split(':')
        .collect();
    assert_eq!(entry[4], "lanmirror package cache");
    assert_eq!(entry[5], STATE_DIR);
    assert_eq!(entry[6], "/sbin/nologin");
    let uid: u32 = entry[2].parse().unwrap();
    assert!(uid > 0 && uid < 1000, "not a system user: uid {uid}");
    let group = read(&root.join("etc/group"));
    assert!(
        group
            .lines()
            .any(|l| l.starts_with(&format!("lanmirror:x:{}:", entry[3]))),
        "no lanmirror group with gid {}:\n{group}",
        entry[3]
    );
}

/// Ports of `<port protocol=… port=…/>` elements and names of `<include service=…/>`, read with
/// quick-xml (which also rejects a file that is not well-formed).
fn firewalld_service(xml: &str) -> (BTreeSet<(String, u16)>, BTreeSet<String>, String) {
    use quick_xml::events::Event;
    let mut r = quick_xml::Reader::from_str(xml);
    let (mut ports, mut includes, mut description) = (BTreeSet::new(), BTreeSet::new(), None);
    let mut root = None;
    let mut in_description = false;
    loop {
        match r.read_event().expect("well-formed XML") {
            Event::Eof => break,
            Event::Start(e) | Event::Empty(e) => {
                let name = e.name().into_inner().to_string();
                root.get_or_insert(name.clone());
                let attr = |k: &str| {
                    e.try_get_attribute(k).expect("attribute").map(|a| {
                        a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .expect("value")
                            .into_owned()
                    })
                };
                match name.as_str() {
                    "port" => {
                        let proto = attr("protocol").expect("protocol");
                        let port = attr("port").expect("port").parse().expect("a port number");
                        ports.insert((proto, port));
                    }
                    "include" => {
                        includes.insert(attr("service").expect("service"));
                    }
                    "description" => in_description = true,
                    _ => {}
                }
            }
            Event::Text(t) if in_description => {
                description = Some(t.xml10_content().into_owned());
            }
            Event::End(_) => in_description = false,
            _ => {}
        }
    }
    assert_eq!(root.as_deref(), Some("service"));
    (ports, includes, description.expect("a <description>"))
}

#[test]
fn firewalld_service_opens_the_default_ports() {
    let test = "firewalld_service_opens_the_default_ports";
    let path = packaging("lanmirror.xml");
    let (ports, includes, description) = firewalld_service(&read(&path));
    let d = default_config();
    let want: BTreeSet<(String, u16)> = [
        ("tcp".to_string(), d.node.http_listen.port()),
        ("udp".to_string(), d.node.quic_listen.port()),
    ]
    .into();
    assert_eq!(ports, want);
    // mDNS: firewalld's own `mdns` service (5353/udp, to the mDNS groups only), the port
    // mdns-sd uses.
    assert_eq!(includes, ["mdns".to_string()].into());
    for (proto, port) in want
        .iter()
        .cloned()
        .chain([("udp".to_string(), mdns_sd::MDNS_PORT)])
    {
        assert!(
            description.contains(&format!("{port}/{proto}")),
            "the description does not say {port}/{proto}: {description}"
        );
    }
    // firewalld's own reader (python3-firewall) validates elements and values.
    let python = Path::new("/usr/bin/python3");
    let probe = Command::new(python)
        .args(["-c", "import firewall.core.io.service"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("{test}: no python3-firewall here, firewalld's reader is not run");
        return;
    }
    let prog = "import sys\n\
        from firewall.core.io.service import service_reader\n\
        s = service_reader(sys.argv[1], sys.argv[2])\n\
        print(sorted('%s/%s' % (p, proto) for p, proto in s.ports), sorted(s.includes))\n";
    let mut c = Command::new(python);
    c.arg("-c")
        .arg(prog)
        .arg("lanmirror.xml")
        .arg(path.parent().unwrap());
    let out = run_ok(c, Duration::from_secs(30));
    let mut expect: Vec<String> = want.iter().map(|(p, n)| format!("'{n}/{p}'")).collect();
    expect.sort();
    assert_eq!(out.trim(), format!("[{}] ['mdns']", expect.join(", ")));
}

/// `rpmspec ARGS packaging/lanmirror.spec`.
fn rpmspec(bin: &Path, args: &[&str]) -> String {
    let mut c = Command::new(bin);
    c.args(args).arg(packaging("lanmirror.spec"));
    run_ok(c, Duration::from_secs(60))
}

/// The lines of section `name` (e.g. `%files`, `%pre`) of an expanded spec.
fn spec_section(spec: &str, name: &str) -> Vec<String> {
    const SECTIONS: [&str; 12] = [
        "%description",
        "%prep",
        "%build",
        "%install",
        "%check",
        "%pre",
        "%post",
        "%preun",
        "%postun",
        "%files",
        "%changelog",
        "%package",
    ];
    spec.lines()
        .skip_while(|l| l.split_whitespace().next() != Some(name))
        .skip(1)
        .take_while(|l| {
            !SECTIONS
                .iter()
                .any(|s| l.split_whitespace().next() == Some(*s))
        })
        .map(str::to_string)
        .collect()
}

/// The highest `rust-version` among the packages Cargo.lock builds.
fn locked_rust_version() -> (u32, u32) {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .current_dir(repo());
    let meta: serde_json::Value =
        serde_json::from_str(&run_ok(c, Duration::from_secs(120))).expect("metadata JSON");
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|p| p["rust_version"].as_str())
        .filter_map(|v| {
            let mut n = v.split('.').map(|x| x.parse::<u32>().ok());
            Some((n.next()??, n.next().flatten().unwrap_or(0)))
        })
        .max()
        .expect("rust versions")
}

#[test]
fn spec_parses_and_installs_every_packaging_file() {
    let test = "spec_parses_and_installs_every_packaging_file";
    let Some(bin) = need(test, "rpmspec", "rpm") else {
        return;
    };
    let version = rpmspec(&bin, &["-q", "--srpm", "--qf", "%{version}"]);
    assert_eq!(version.trim(), env!("CARGO_PKG_VERSION"), "spec Version");
    let spec = rpmspec(&bin, &["-P"]);

    let files = spec_section(&spec, "%files");
    let has = |want: &str| files.iter().any(|l| l.trim() == want);
    for want in [
        BIN_PATH.to_string(),
        UNIT_PATH.to_string(),
        "/usr/lib/sysusers.d/lanmirror.conf".into(),
        "/usr/lib/firewalld/services/lanmirror.xml".into(),
        format!("%config(noreplace) {CONFIG_PATH}"),
        format!("%dir %attr(0750,lanmirror,lanmirror) {STATE_DIR}"),
        "/usr/share/man/man1/lanmirror.1*".into(),
        "/usr/share/man/man1/lanmirror-*.1*".into(),
        "/usr/share/bash-completion/completions/lanmirror".into(),
        "/usr/share/zsh/site-functions/_lanmirror".into(),
        "/usr/share/fish/vendor_completions.d/lanmirror.fish".into(),
    ] {
        assert!(has(&want), "%files lacks {want}:\n{}", files.join("\n"));
    }
    // The build: offline from vendor/, the packaging files installed from the tarball, the
    // generated ones made by the binary just built.
    // (rpm 4.18's `rpmspec -P` leaves the %build line out: the file as written.)
    let build = spec_section(&read(&packaging("lanmirror.spec")), "%build").join("\n");
    assert!(build.contains("cargo build --release --frozen"), "{build}");
    let install = spec_section(&spec, "%install").join("\n");
    for f in [
        "packaging/lanmirror.service",
        "packaging/lanmirror.sysusers",
        "packaging/lanmirror.xml",
        &format!("generate config --data-dir {STATE_DIR}"),
        "generate man",
        "generate completions bash",
        "generate completions zsh",
        "generate completions fish",
    ] {
        assert!(install.contains(f), "%install does not use {f}:\n{install}");
    }

    // The user: %pre makes the one the sysusers file describes (rpm on EL9 does not read
    // sysusers.d itself).
    let pre = spec_section(&spec, "%pre").join("\n");
    let u = sysusers_line();
    let useradd = pre
        .lines()
        .find(|l| l.contains("useradd"))
        .unwrap_or_else(|| panic!("no useradd in %pre:\n{pre}"));
    for (flag, value) in [
        ("-d", u[4].clone()),
        ("-s", u[5].clone()),
        ("-c", format!("\"{}\"", u[3])),
    ] {
        assert!(
            useradd.contains(&format!("{flag} {value}")),
            "useradd lacks {flag} {value}: {useradd}"
        );
    }
    assert!(
        useradd.trim_end().ends_with(&format!(" {}", u[1])),
        "{useradd}"
    );
    assert!(pre.contains(&format!("groupadd -r {}", u[1])), "{pre}");
    // The service's scriptlets (systemd-rpm-macros expand them on EL9; unexpanded here).
    for (section, macro_) in [
        ("%post", "systemd_post"),
        ("%preun", "systemd_preun"),
        ("%postun", "systemd_postun"),
    ] {
        let s = spec_section(&spec, section).join("\n");
        assert!(
            s.contains("lanmirror.service") && (s.contains(macro_) || s.contains("systemctl")),
            "{section} does not run {macro_} lanmirror.service:\n{s}"
        );
    }
    assert!(
        spec_section(&spec, "%post")
            .join("\n")
            .contains("firewalld_reload")
            || spec_section(&spec, "%post")
                .join("\n")
                .contains("firewall-cmd --reload"),
        "%post does not reload firewalld"
    );

    let requires = rpmspec(&bin, &["-q", "--requires"]);
    for r in ["firewalld-filesystem", "shadow-utils"] {
        assert!(
            requires.lines().any(|l| l.trim() == r),
            "Requires: {r}\n{requires}"
        );
    }
    // The Rust the spec asks for builds every locked crate.
    let build_requires = rpmspec(&bin, &["-q", "--buildrequires"]);
    let (major, minor) = locked_rust_version();
    for what in ["rust", "cargo"] {
        let line = build_requires
            .lines()
            .find(|l| l.starts_with(&format!("{what} >= ")))
            .unwrap_or_else(|| panic!("no `{what} >= …` in BuildRequires:\n{build_requires}"));
        let v: Vec<u32> = line
            .rsplit(' ')
            .next()
            .unwrap()
            .split('.')
            .map(|x| x.parse().unwrap())
            .collect();
        assert!(
            (v[0], v.get(1).copied().unwrap_or(0)) >= (major, minor),
            "{line}: Cargo.lock needs Rust {major}.{minor}"
        );
    }
    for r in ["gcc", "systemd-rpm-macros", "firewalld-filesystem"] {
        assert!(
            build_requires.lines().any(|l| l.trim() == r),
            "BuildRequires: {r}\n{build_requires}"
        );
    }
    // --without system_rust drops rust and cargo (a rustup toolchain builds it).
    let without = rpmspec(&bin, &["-q", "--buildrequires", "--without", "system_rust"]);
    assert!(
        !without.contains("rust") && !without.contains("cargo"),
        "{without}"
    );
}

/// `packaging/make-tarball` run once per test process, into target/packaging-test (one place,
/// replaced each run: a static is never dropped, so a temporary directory would be left): the
/// tarball's path.
fn tarball() -> &'static Path {
    static TARBALL: OnceLock<PathBuf> = OnceLock::new();
    TARBALL.get_or_init(|| {
        let dir = repo().join("target/packaging-test");
        let mut c = Command::new(packaging("make-tarball"));
        c.arg(&dir);
        let out = run_ok(c, Duration::from_secs(600));
        let path = PathBuf::from(out.trim());
        assert_eq!(
            path,
            dir.join(format!("lanmirror-{}.tar.gz", env!("CARGO_PKG_VERSION")))
        );
        path
    })
}

/// Unpacks the tarball into `dir`; returns the source tree.
fn unpack(dir: &Path) -> PathBuf {
    let mut c = Command::new("tar");
    c.arg("-xzf").arg(tarball()).arg("-C").arg(dir);
    run_ok(c, Duration::from_secs(300));
    dir.join(format!("lanmirror-{}", env!("CARGO_PKG_VERSION")))
}

#[test]
fn source_tarball_holds_every_crate_and_resolves_offline() {
    let dir = temp();
    let src = unpack(dir.path());
    for f in [
        "Cargo.toml",
        "Cargo.lock",
        "src/main.rs",
        "config/lanmirror.toml",
        "packaging/lanmirror.spec",
        "packaging/lanmirror.service",
        "packaging/lanmirror.sysusers",
        "packaging/lanmirror.xml",
    ] {
        assert!(src.join(f).is_file(), "the tarball has no {f}");
    }
    assert!(!src.join("target").exists(), "the tarball holds target/");
    assert_eq!(
        fs::read(src.join("Cargo.lock")).unwrap(),
        fs::read(repo().join("Cargo.lock")).unwrap(),
        "the tarball's Cargo.lock is not the checkout's"
    );
    let config = read(&src.join(".cargo/config.toml"));
    assert!(
        config.contains("replace-with = \"vendored-sources\"")
            && config.contains("directory = \"vendor\""),
        "{config}"
    );
    // Every registry package of Cargo.lock is in vendor/ at its version.
    let lock: toml::Table = toml::from_str(&read(&src.join("Cargo.lock"))).unwrap();
    let mut n = 0;
    for p in lock["package"].as_array().unwrap() {
        if p.get("source").is_none() {
            continue; // lanmirror itself
        }
        let (name, version) = (p["name"].as_str().unwrap(), p["version"].as_str().unwrap());
        assert!(
            src.join(format!("vendor/{name}-{version}/Cargo.toml"))
                .is_file(),
            "vendor/ lacks {name} {version}"
        );
        n += 1;
    }
    assert!(n > 100, "only {n} locked packages?");
    // Cargo resolves the whole graph from vendor/ alone: no network, an empty CARGO_HOME (no
    // registry cache to fall back on), and Cargo.lock as it is.
    let home = dir.path().join("cargo-home");
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.args(["metadata", "--format-version", "1", "--frozen"])
        .current_dir(&src)
        .env("CARGO_HOME", &home)
        .env("CARGO_NET_OFFLINE", "true");
    let meta: serde_json::Value =
        serde_json::from_str(&run_ok(c, Duration::from_secs(300))).expect("metadata JSON");
    let resolved = meta["resolve"]["nodes"].as_array().unwrap().len();
    assert_eq!(resolved, n + 1, "cargo resolved {resolved} packages");
    // And it can fail: without vendor/ there is nothing to build from.
    fs::rename(src.join("vendor"), src.join("vendor.away")).unwrap();
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.args(["metadata", "--format-version", "1", "--frozen"])
        .current_dir(&src)
        .env("CARGO_HOME", &home)
        .env("CARGO_NET_OFFLINE", "true");
    assert!(!run_with_timeout(c, Duration::from_secs(300)).success);
}

/// rpmbuild on this machine: a whole release build from the tarball, offline. The build
/// requirements name EL9 packages, which this Debian's rpm database does not hold: --nodeps.
/// The macros of systemd-rpm-macros and firewalld-filesystem are EL9's too, so the scriptlets
/// keep them unexpanded here; everything else is the package AlmaLinux gets.
#[test]
fn rpm_builds_from_the_source_tarball() {
    let test = "rpm_builds_from_the_source_tarball";
    let Some(rpmbuild) = need(test, "rpmbuild", "rpm") else {
        return;
    };
    let Some(rpm) = need(test, "rpm", "rpm") else {
        return;
    };
    let tarball = tarball();
    let dir = temp();
    // Compiled crates are kept between runs (the spec honours CARGO_TARGET_DIR), so only the
    // first run builds every vendored crate. Cargo keys them by their source paths too, so the
    // build tree is at one place: target/rpmbuild (emptied first; %prep unpacks afresh).
    let top = repo().join("target/rpmbuild");
    let _ = fs::remove_dir_all(&top);
    let cache = repo().join("target/rpmbuild-cache");
    // lanmirror itself is always built again: the tarball gives every file the last commit's
    // time, so cargo would take uncommitted changes for the build it already has.
    for e in fs::read_dir(cache.join("release/.fingerprint"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with("lanmirror-") {
            fs::remove_dir_all(e.path()).unwrap();
        }
    }
    let mut c = Command::new(&rpmbuild);
    c.arg("-bb")
        .arg("--nodeps")
        .arg("--define")
        .arg(format!("_topdir {}", top.display()))
        .arg("--define")
        .arg(format!(
            "_sourcedir {}",
            tarball.parent().unwrap().display()
        ))
        .arg(packaging("lanmirror.spec"))
        .env("CARGO_TARGET_DIR", &cache)
        .env_remove("RUSTFLAGS")
        .env("CARGO_NET_OFFLINE", "true");
    let start = Instant::now();
    let log = run_ok(c, Duration::from_secs(3600));
    eprintln!("{test}: rpmbuild took {:?}", start.elapsed());
    let rpms: Vec<PathBuf> = walk(&top.join("RPMS"))
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("lanmirror-") && !n.contains("debug") && n.ends_with(".rpm")
        })
        .collect();
    assert_eq!(rpms.len(), 1, "{rpms:?}\n{log}");
    let pkg = &rpms[0];
    let q = |args: &[&str]| {
        let mut c = Command::new(&rpm);
        c.arg("-qp").args(args).arg(pkg);
        run_ok(c, Duration::from_secs(60))
    };
    let list = q(&["--list"]);
    for f in [
        BIN_PATH,
        UNIT_PATH,
        CONFIG_PATH,
        STATE_DIR,
        "/usr/lib/sysusers.d/lanmirror.conf",
        "/usr/lib/firewalld/services/lanmirror.xml",
        "/usr/share/bash-completion/completions/lanmirror",
        "/usr/share/zsh/site-functions/_lanmirror",
        "/usr/share/fish/vendor_completions.d/lanmirror.fish",
    ] {
        assert!(
            list.lines().any(|l| l == f),
            "the package lacks {f}:\n{list}"
        );
    }
    for sub in subcommands() {
        assert!(
            list.lines()
                .any(|l| l.starts_with(&format!("/usr/share/man/man1/lanmirror-{sub}.1"))),
            "no man page of {sub} in the package:\n{list}"
        );
    }
    let config_files = q(&["--configfiles"]);
    assert_eq!(config_files.trim(), CONFIG_PATH);
    // The packaged binary runs, and the packaged config is the generated one.
    let root = dir.path().join("unpacked");
    fs::create_dir_all(&root).unwrap();
    // (rpm2archive comes with Debian's rpm, where cpio may be missing.)
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("rpm2archive - < {pkg:?} | tar -xzf -"))
        .current_dir(&root);
    run_ok(c, Duration::from_secs(120));
    let mut c = Command::new(root.join(BIN_PATH.trim_start_matches('/')));
    c.arg("--version");
    let v = run_ok(c, Duration::from_secs(20));
    assert_eq!(v.trim(), format!("lanmirror {}", env!("CARGO_PKG_VERSION")));
    let packaged = root.join(CONFIG_PATH.trim_start_matches('/'));
    let cfg = Config::load(Some(&packaged)).expect("the packaged config loads");
    assert_eq!(cfg.data_dir(), PathBuf::from(STATE_DIR));
    assert_eq!(
        read(&root.join(UNIT_PATH.trim_start_matches('/'))),
        read(&packaging("lanmirror.service"))
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

// ---- The unit's sandbox against a running node ----------------------------------------------

/// The uid/gid the traced nodes run as (nobody), like the service's own user: no root, no
/// capabilities, no_new_privs.
const NOBODY: u32 = 65534;

/// Every group of `systemd-analyze syscall-filter`, its nested groups expanded.
fn syscall_groups(sa: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut c = Command::new(sa);
    c.args(["syscall-filter", "--no-pager"]);
    let text = run_ok(c, Duration::from_secs(30));
    let mut raw: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(group) = line.strip_prefix('@') {
            current = Some(format!("@{}", group.trim()));
            raw.entry(format!("@{}", group.trim())).or_default();
        } else if line.starts_with(char::is_whitespace) && !line.trim().starts_with('#') {
            if let (Some(g), name) = (&current, line.trim())
                && !name.is_empty()
            {
                raw.get_mut(g).unwrap().push(name.to_string());
            }
        } else if !line.starts_with(char::is_whitespace) {
            current = None;
        }
    }
    fn expand(
        g: &str,
        raw: &BTreeMap<String, Vec<String>>,
        out: &mut BTreeSet<String>,
        seen: &mut BTreeSet<String>,
    ) {
        if !seen.insert(g.to_string()) {
            return;
        }
        for m in raw.get(g).unwrap_or_else(|| panic!("no group {g}")) {
            if m.starts_with('@') {
                expand(m, raw, out, seen);
            } else {
                out.insert(m.clone());
            }
        }
    }
    let groups: BTreeMap<String, BTreeSet<String>> = raw
        .keys()
        .map(|g| {
            let mut out = BTreeSet::new();
            expand(g, &raw, &mut out, &mut BTreeSet::new());
            (g.clone(), out)
        })
        .collect();
    assert!(
        groups
            .get("@system-service")
            .is_some_and(|s| s.contains("sendfile")),
        "no @system-service in:\n{text}"
    );
    groups
}

/// The system calls the unit's `SystemCallFilter=` lines allow: an allow list first, then
/// `~` lists taken out of it (systemd's order).
fn allowed_syscalls(
    settings: &[(String, String)],
    groups: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeSet<String> {
    let mut allowed: Option<BTreeSet<String>> = None;
    for (_, v) in settings.iter().filter(|(k, _)| k == "SystemCallFilter") {
        let (deny, list) = match v.strip_prefix('~') {
            Some(l) => (true, l),
            None => (false, v.as_str()),
        };
        let names: BTreeSet<String> = list
            .split_whitespace()
            .flat_map(|n| match n.strip_prefix('@') {
                Some(_) => groups
                    .get(n)
                    .unwrap_or_else(|| panic!("no group {n}"))
                    .clone(),
                None => [n.to_string()].into(),
            })
            .collect();
        allowed = Some(match (allowed, deny) {
            (None, true) => panic!("the unit's first SystemCallFilter= is a deny list"),
            (None, false) => names,
            (Some(a), false) => a.union(&names).cloned().collect(),
            (Some(a), true) => a.difference(&names).cloned().collect(),
        });
    }
    allowed.expect("the unit has a SystemCallFilter=")
}

/// Whether this process may trace a process it did not start (`strace -p`): root in a
/// container may lack CAP_SYS_PTRACE.
fn ptrace_reason(strace: &Path) -> Option<String> {
    let mut sleeper = Command::new("sleep").arg("30").spawn().ok()?;
    let mut tracer = Command::new(strace)
        .args(["-qq", "-o", "/dev/null", "-p", &sleeper.id().to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let pid = sleeper.id();
    let attached = wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        tracer_pid(pid) != 0 || tracer.try_wait().ok().flatten().is_some()
    }) && tracer_pid(pid) != 0;
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let _ = tracer.wait();
    let mut err = String::new();
    if let Some(mut e) = tracer.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (!attached).then(|| format!("strace -p cannot attach here: {}", err.trim()))
}

/// `TracerPid:` of /proc/PID/status (0: not traced, or gone).
fn tracer_pid(pid: u32) -> u32 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Whether PID is stopped (state T in /proc/PID/stat).
fn is_stopped(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('T')))
        .unwrap_or(false)
}

/// Kills a tracer left running when the test fails (by its pid, which this test started).
struct Tracer(Child);

impl Drop for Tracer {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits (on a thread of its own) for the wrapper that writes `pid_file` to stop itself,
/// attaches `strace -f` to it, and lets it go on: from its exec of the node on, every system
/// call is in `trace`. The wrapper stops itself because the node kit starts it and waits for
/// it to answer; strace as its parent would not pass the kit's SIGTERM on.
fn trace_when_stopped(
    strace: PathBuf,
    pid_file: PathBuf,
    trace: PathBuf,
) -> std::thread::JoinHandle<Tracer> {
    std::thread::spawn(move || {
        let mut pid = 0;
        assert!(
            wait_until(Duration::from_secs(60), Duration::from_millis(20), || {
                pid = fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0);
                pid != 0 && is_stopped(pid)
            }),
            "the wrapper never stopped itself ({})",
            pid_file.display()
        );
        let child = Command::new(&strace)
            .args(["-f", "-qq", "-y", "-s", "512", "-o"])
            .arg(&trace)
            .arg("-p")
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .spawn()
            .expect("strace");
        let tracer = Tracer(child);
        assert!(
            wait_until(Duration::from_secs(10), Duration::from_millis(10), || {
                tracer_pid(pid) != 0
            }),
            "strace did not attach to {pid}"
        );
        // SAFETY: kill(2) on the pid of the wrapper this test started.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGCONT) }, 0);
        tracer
    })
}

/// One system call of a trace: the pid's line, its name and what follows the `(`.
struct Call<'a> {
    line: &'a str,
    name: &'a str,
    args: &'a str,
}

/// The calls of the node in a `strace -f` log: from the exec of `bin` (what the wrapper and
/// setpriv did before is not the node's).
fn node_calls<'a>(trace: &'a str, bin: &Path) -> Vec<Call<'a>> {
    let exec = format!("execve(\"{}\"", bin.display());
    let mut lines = trace.lines();
    assert!(
        lines
            .by_ref()
            .any(|l| l.contains(&exec) && l.trim_end().ends_with("= 0")),
        "no exec of {} in the trace",
        bin.display()
    );
    lines
        .filter_map(|line| {
            let rest = line
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start();
            let open = rest.find('(')?;
            let name = &rest[..open];
            (!name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .then(|| Call {
                line,
                name,
                args: &rest[open + 1..],
            })
        })
        .collect()
}

/// The paths a call names: each quoted string, made absolute with the directory of the fd
/// before it (`-y` prints `3</dir>`), or left relative after AT_FDCWD or alone.
fn call_paths(args: &str, how_many: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = args;
    while out.len() < how_many {
        let Some(q) = rest.find('"') else { break };
        let before = &rest[..q];
        let Some(end) = rest[q + 1..].find('"') else {
            break;
        };
        let s = &rest[q + 1..q + 1 + end];
        let dir = before
            .trim_end()
            .strip_suffix(',')
            .and_then(|b| b.trim_end().strip_suffix('>'))
            .and_then(|b| b.rsplit_once('<'))
            .map(|(_, d)| d);
        out.push(match dir {
            Some(d) if !s.starts_with('/') => format!("{d}/{s}"),
            _ => s.to_string(),
        });
        rest = &rest[q + 1 + end + 1..];
    }
    out
}

/// What the unit's sandbox would refuse in these calls, one line each (with an example).
fn sandbox_violations(
    calls: &[Call],
    allowed: &BTreeSet<String>,
    families: &BTreeSet<String>,
    writable: &[PathBuf],
) -> Vec<String> {
    let mut found: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut note = |what: String, line: &str| {
        let e = found.entry(what).or_insert((0, line.to_string()));
        e.0 += 1;
    };
    // What a service with PrivateDevices= finds in its /dev.
    const DEVICES: [&str; 8] = [
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
        "/dev/ptmx",
        "/dev/shm",
    ];
    const WRITE_FLAGS: [&str; 4] = ["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC"];
    // Outside the pid subset of /proc but harmless to miss: glibc's malloc reads it once to
    // decide how to give back heap memory, and does without it (as for a setuid program).
    const PROC_TOLERATED: [&str; 1] = ["/proc/sys/vm/overcommit_memory"];
    for c in calls {
        // SystemCallFilter=
        if !allowed.contains(c.name) {
            note(format!("SystemCallFilter= refuses {}", c.name), c.line);
        }
        // RestrictAddressFamilies=
        if c.name == "socket" || c.name == "socketpair" {
            let family = c.args.split(',').next().unwrap_or("").trim();
            if !families.contains(family) {
                note(format!("RestrictAddressFamilies= refuses {family}"), c.line);
            }
        }
        // MemoryDenyWriteExecute=: no writable and executable mapping, no mprotect to exec.
        let exec = c.args.contains("PROT_EXEC");
        if (c.name == "mmap" && exec && c.args.contains("PROT_WRITE"))
            || (matches!(c.name, "mprotect" | "pkey_mprotect") && exec)
        {
            note(
                format!("MemoryDenyWriteExecute= refuses {}", c.name),
                c.line,
            );
        }
        // LockPersonality=: only reading the personality.
        if c.name == "personality" && !c.args.starts_with("0xffffffff") {
            note(
                "LockPersonality= refuses personality changes".into(),
                c.line,
            );
        }
        // RestrictNamespaces=
        if matches!(c.name, "unshare" | "setns" | "clone" | "clone3")
            && c.args.contains("CLONE_NEW")
        {
            note(format!("RestrictNamespaces= refuses {}", c.name), c.line);
        }
        // RestrictRealtime=
        if matches!(c.name, "sched_setscheduler" | "sched_setattr")
            && (c.args.contains("SCHED_FIFO") || c.args.contains("SCHED_RR"))
        {
            note(
                "RestrictRealtime= refuses realtime scheduling".into(),
                c.line,
            );
        }
        // Paths: ProcSubset=pid, PrivateDevices=, ProtectHome=, ProtectSystem=strict.
        let (n, writes) = match c.name {
            "open" | "creat" | "openat" | "openat2" => {
                (1, WRITE_FLAGS.iter().any(|f| c.args.contains(f)))
            }
            "mkdir" | "mkdirat" | "unlink" | "unlinkat" | "rmdir" | "truncate" | "chmod"
            | "fchmodat" | "chown" | "fchownat" | "lchown" | "utimensat" | "mknod" | "mknodat" => {
                (1, true)
            }
            "rename" | "renameat" | "renameat2" | "link" | "linkat" | "symlink" | "symlinkat" => {
                (2, true)
            }
            "stat" | "lstat" | "newfstatat" | "statx" | "access" | "faccessat" | "faccessat2"
            | "readlink" | "readlinkat" | "execve" | "statfs" | "inotify_add_watch" => (1, false),
            _ => (0, false),
        };
        for p in call_paths(c.args, n) {
            if let Some(rest) = p.strip_prefix("/proc/") {
                let first = rest.split('/').next().unwrap_or("");
                let pid_subset = first == "self"
                    || first == "thread-self"
                    || first.chars().all(|d| d.is_ascii_digit());
                if !pid_subset && !PROC_TOLERATED.contains(&p.as_str()) {
                    note(format!("ProcSubset=pid hides /proc/{first}"), c.line);
                }
            }
            if p.starts_with("/dev/")
                && !DEVICES
                    .iter()
                    .any(|d| p == *d || p.starts_with(&format!("{d}/")))
            {
                note(format!("PrivateDevices= hides {p}"), c.line);
            }
            if ["/home/", "/root/", "/run/user/"]
                .iter()
                .any(|h| p.starts_with(h))
                || p == "/root"
            {
                note(format!("ProtectHome= hides {p}"), c.line);
            }
            if writes && !writable.iter().any(|w| Path::new(&p).starts_with(w)) {
                note(format!("ProtectSystem=strict keeps {p} read-only"), c.line);
            }
        }
    }
    found
        .into_iter()
        .map(|(what, (n, line))| format!("{what} ({n}×), e.g. {line}"))
        .collect()
}

#[test]
fn sandbox_violations_are_found() {
    // The checker itself, on lines strace really writes: each of these must be reported.
    let trace = "\
1 execve(\"/x/lanmirror\", [\"lanmirror\"], 0x7ffd /* 3 vars */) = 0
1 mount(\"none\", \"/mnt\", \"tmpfs\", 0, NULL) = -1 EPERM (Operation not permitted)
1 socket(AF_PACKET, SOCK_RAW, 768) = 3<socket:[1]>
1 mmap(NULL, 4096, PROT_READ|PROT_WRITE|PROT_EXEC, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f
1 openat(AT_FDCWD, \"/proc/meminfo\", O_RDONLY|O_CLOEXEC) = 4</proc/meminfo>
1 openat(5</etc>, \"passwd\", O_WRONLY|O_CREAT|O_CLOEXEC, 0644) = 6</etc/passwd>
1 openat(AT_FDCWD, \"/dev/sda\", O_RDONLY) = -1 ENOENT (No such file or directory)
1 unshare(CLONE_NEWNET) = 0
1 openat(7</data>, \"blobs/ab\", O_WRONLY|O_CREAT, 0600) = 8</data/blobs/ab>
1 socket(AF_INET6, SOCK_DGRAM|SOCK_CLOEXEC, IPPROTO_IP) = 9<socket:[2]>
";
    let calls = node_calls(trace, Path::new("/x/lanmirror"));
    let allowed: BTreeSet<String> = ["socket", "mmap", "openat", "unshare"]
        .map(String::from)
        .into();
    let families: BTreeSet<String> = ["AF_INET", "AF_INET6"].map(String::from).into();
    let v = sandbox_violations(&calls, &allowed, &families, &[PathBuf::from("/data")]);
    let text = v.join("\n");
    for want in [
        "SystemCallFilter= refuses mount",
        "RestrictAddressFamilies= refuses AF_PACKET",
        "MemoryDenyWriteExecute= refuses mmap",
        "ProcSubset=pid hides /proc/meminfo",
        "ProtectSystem=strict keeps /etc/passwd read-only",
        "PrivateDevices= hides /dev/sda",
        "RestrictNamespaces= refuses unshare",
    ] {
        assert!(text.contains(want), "not reported: {want}\n{text}");
    }
    assert_eq!(v.len(), 7, "{text}");
}

/// A two-node site on a namespace LAN (mDNS, QUIC, an upstream), each node run as nobody
/// without capabilities and with no_new_privs (what User=, CapabilityBoundingSet= and
/// NoNewPrivileges= give it), traced by strace from its exec to its exit on SIGTERM: it fetches
/// from upstream, serves a client, shares with the other node. Every system call, socket
/// family, memory mapping and path it used must pass the unit's sandbox settings.
#[test]
fn a_node_stays_inside_the_sandbox_of_its_unit() {
    let test = "a_node_stays_inside_the_sandbox_of_its_unit";
    if let Some(why) = netns::unavailable_reason() {
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    let (Some(strace), Some(setpriv), Some(sa)) = (
        need(test, "strace", "strace"),
        need(test, "setpriv", "util-linux"),
        need(test, "systemd-analyze", "systemd"),
    ) else {
        return;
    };
    if let Some(why) = ptrace_reason(&strace) {
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    let _wd = Watchdog::new(test, Duration::from_secs(300));
    let settings = unit_settings(&read(&packaging("lanmirror.service")));
    let allowed = allowed_syscalls(&settings, &syscall_groups(&sa));
    let families: BTreeSet<String> = unit_value(&settings, "RestrictAddressFamilies")
        .split_whitespace()
        .map(String::from)
        .collect();

    // A directory nobody can reach: the binary, the wrappers, the nodes' directories.
    let work = tempfile::Builder::new()
        .prefix("lanmirror-sandbox-")
        .tempdir()
        .unwrap();
    let w = work.path();
    fs::set_permissions(w, fs::Permissions::from_mode(0o755)).unwrap();
    let bin = w.join("lanmirror");
    fs::copy(node_bin(), &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let mut tracers = Vec::new();
    for i in 0..2 {
        let pid_file = w.join(format!("wrapper-{i}.pid"));
        // Run by the kit as `wrapper serve --config <base>/node.toml` (data in <base>/data),
        // with the environment systemd gives a service of a user (no LD_LIBRARY_PATH of cargo's).
        let wrapper = w.join(format!("wrapper-{i}"));
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\n\
                 chown -R {NOBODY}:{NOBODY} \"$(dirname \"$3\")/data\" || exit 1\n\
                 echo $$ > {pid_file:?}\n\
                 kill -STOP $$\n\
                 exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin \
                 HOME=\"$(dirname \"$3\")/data\" USER=nobody LOGNAME=nobody SHELL=/sbin/nologin \
                 LANG=C.UTF-8 RUST_LOG=\"$RUST_LOG\" \
                 {setpriv:?} --reuid={NOBODY} --regid={NOBODY} --clear-groups \
                 --inh-caps=-all --bounding-set=-all --no-new-privs {bin:?} \"$@\"\n"
            ),
        )
        .unwrap();
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
        tracers.push(trace_when_stopped(
            strace.clone(),
            pid_file,
            w.join(format!("trace-{i}")),
        ));
    }
    let mut site = LanSite::with(
        2,
        LanOpts {
            pkgs: vec![PkgSpec::new("lms-a", "1.0", 300_000)],
            uplink_rate: None,
            ..Default::default()
        },
        |i, o| {
            o.bin = Some(w.join(format!("wrapper-{i}")));
            o.base_dir = Some(w.join(format!("node{i}")));
        },
    );
    let tracers: Vec<Tracer> = tracers
        .into_iter()
        .map(|t| t.join().expect("tracing a node"))
        .collect();
    let pkg = site.repo.package("lms-a");
    // Each node's own metadata first (as dnf asks for it), so both know the package's checksum.
    for i in 0..2 {
        let r = site.node(i).get("/test/repodata/repomd.xml");
        assert_eq!(r.status, 200, "node {}: {}", i + 1, r.text());
    }
    site.node(0).assert_serves(&pkg);
    // The nodes find each other by mDNS, then node 2 takes the package from node 1 over QUIC.
    let ids: Vec<String> = (0..2)
        .map(|i| site.status(i)["node_id"].as_str().unwrap_or("").to_string())
        .collect();
    let formed = wait_until(Duration::from_secs(30), Duration::from_millis(250), || {
        (0..2).all(|i| {
            site.status(i)["peers"].as_array().is_some_and(|ps| {
                ps.iter()
                    .any(|p| p["healthy"] == true && p["id"] == ids[1 - i].as_str())
            })
        })
    });
    assert!(
        formed,
        "the nodes did not find each other:\n{}\n{}",
        site.status(0),
        site.status(1)
    );
    site.node(1).assert_serves(&pkg);
    assert_eq!(
        site.up.count(&pkg.file_name),
        1,
        "node 2 went upstream instead of to node 1"
    );
    // And hits, which go out by sendfile.
    for i in 0..2 {
        site.node(i).assert_serves(&pkg);
    }
    for i in 0..2 {
        let st = site.node_mut(i).stop().expect("running");
        assert!(st.success(), "node {} exited with {st}", i + 1);
    }
    let data_dirs: Vec<PathBuf> = (0..2).map(|i| site.node(i).data_dir()).collect();
    for (i, mut t) in tracers.into_iter().enumerate() {
        let done = wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
            t.0.try_wait().ok().flatten().is_some()
        });
        assert!(done, "strace of node {} did not end with it", i + 1);
        let trace = read(&w.join(format!("trace-{i}")));
        let calls = node_calls(&trace, &bin);
        assert!(calls.len() > 1000, "only {} calls traced", calls.len());
        // What the service may write: its StateDirectory (here the node's data dir) and its
        // private /tmp; /dev/null and its own /proc entries.
        let writable = [
            data_dirs[i].clone(),
            "/tmp".into(),
            "/var/tmp".into(),
            "/dev/null".into(),
            "/proc/self".into(),
            "/proc/thread-self".into(),
        ];
        let v = sandbox_violations(&calls, &allowed, &families, &writable);
        let used: BTreeSet<&str> = calls.iter().map(|c| c.name).collect();
        eprintln!(
            "{test}: node {} made {} system calls of {} kinds",
            i + 1,
            calls.len(),
            used.len()
        );
        assert!(
            v.is_empty(),
            "node {} did what lanmirror.service forbids:\n{}",
            i + 1,
            v.join("\n")
        );
        // The run did what a node's life is made of, so the check covered it: hits by sendfile,
        // installs synced and renamed into place, mDNS (netlink for the interfaces), QUIC.
        for needed in [
            &["sendfile"][..],
            &["fsync", "fdatasync"],
            &["rename", "renameat", "renameat2"],
            &["sendmsg", "sendmmsg"],
            &["recvmsg", "recvmmsg"],
        ] {
            assert!(
                needed.iter().any(|n| used.contains(n)),
                "node {} never called {needed:?}: {used:?}",
                i + 1
            );
        }
        let families_used: BTreeSet<&str> = calls
            .iter()
            .filter(|c| c.name == "socket")
            .filter_map(|c| c.args.split(',').next())
            .collect();
        for f in ["AF_NETLINK", "AF_INET"] {
            assert!(
                families_used.contains(f),
                "node {} opened no {f} socket: {families_used:?}",
                i + 1
            );
        }
        eprintln!(
            "{test}: node {}: socket families {families_used:?}; calls {used:?}",
            i + 1
        );
    }
}
