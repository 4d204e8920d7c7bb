//! The dashboard in a real browser (Debian's headless Chromium, driven over WebDriver by
//! chromedriver), against a real node with real dnf and HTTP traffic through it:
//!
//! - in English, Hindi and Nepali, every figure on the page (its `data-v`) equals
//!   `/api/status`, and its text is that value formatted as the Rust formatter formats it
//!   (so the page's script and `dashboard::format` agree);
//! - the page updates without a reload after more traffic, including a transfer in progress
//!   with its progress bar;
//! - Devanagari renders with a system font (not as empty boxes);
//! - the language follows `Accept-Language`, and `?lang=` is remembered;
//! - a screenshot per language goes to `target/test-artifacts/dashboard-<lang>.png`;
//! - the page works without JavaScript (the server writes the same figures);
//! - `lanmirror status` prints the same picture in the locale's language;
//! - the history survives a restart.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use common::browser::{Browser, Session};
use common::*;
use lanmirror::dashboard::format::{Fmt, lookup, raw};
use lanmirror::dashboard::i18n::catalog;

/// Figures that do not change while nobody uses the node: compared with `/api/status`
/// exactly. (Others, like free disk space or rates, may move between the two reads; their
/// text is still checked against their own raw value.)
const STABLE: &[&str] = &[
    "history.today.served",
    "history.today.upstream",
    "history.today.saved",
    "history.today.store",
    "history.today.peers",
    "history.today.upstream",
    "history.month.served",
    "history.month.upstream",
    "history.month.saved",
    "history.since_install.served",
    "history.since_install.upstream",
    "history.since_install.saved",
    "history.since_install.store",
    "history.days.29.date",
    "store.stored_bytes",
    "store.max_size",
    "store.min_free",
    "store.evicted_files",
    "stored_blobs",
    "health.node",
    "health.site",
    "node_id",
    "uplink.budget.used",
    "uplink.background.allowed",
];

fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts")
}

/// The browser, or `None` with the reason printed when this machine has none. In CI (`CI`
/// set: `scripts/test-all` installs chromium and chromium-driver) a missing browser fails.
fn browser() -> Option<Browser> {
    if let Some(why) = common::browser::missing() {
        if std::env::var_os("CI").is_some() {
            panic!("{why}: scripts/test-all installs it");
        }
        eprintln!("SKIPPED: the dashboard browser test needs a browser: {why}");
        return None;
    }
    Some(Browser::start())
}

/// Every figure of the page outside lists: `[k, f, v, text, null]`.
const FIGURES: &str = r#"
return Array.from(document.querySelectorAll('[data-k]'))
  .filter(e => e.parentElement.closest('[data-scope]') === document.body && !e.closest('template'))
  .map(e => [e.dataset.k, e.dataset.f || '', e.getAttribute('data-v') || '', e.textContent, e.dataset.null || '', e.tagName]);
"#;

/// Every message of the page outside lists: `[key, args, text]`.
const MESSAGES: &str = r#"
return Array.from(document.querySelectorAll('[data-msg]'))
  .filter(e => e.parentElement.closest('[data-scope]') === document.body && !e.closest('template'))
  .map(e => [e.dataset.msg, e.dataset.args || '', e.textContent]);
"#;

/// The value a figure's `data-v` stands for, by its format.
fn typed(v: &str, f: &str) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    match f {
        "int" | "bytes" | "rate" | "pct" | "dur" | "ago" => {
            json!(v.parse::<u64>().unwrap_or_else(|_| panic!("{v} for {f}")))
        }
        _ => json!(v),
    }
}

/// Checks the page's figures against `st` in `lang`: each text is its raw value formatted in
/// `lang`; stable figures equal the status; messages equal the status' values in words.
fn check_figures(s: &Session, st: &Value, lang: &str) {
    let f = Fmt::new(catalog(lang));
    let figs = s.exec(FIGURES, json!([]));
    let figs = figs.as_array().expect("figures");
    assert!(figs.len() > 30, "too few figures: {figs:?}");
    let mut seen = Vec::new();
    for fig in figs {
        let [k, fmt, v, text, null, tag] =
            [0, 1, 2, 3, 4, 5].map(|i| fig[i].as_str().unwrap_or(""));
        seen.push(k.to_string());
        if tag == "PROGRESS" {
            continue;
        }
        if fmt != "join" && fmt != "evr" {
            let want = f
                .value(&typed(v, fmt), fmt)
                .or_else(|| (!null.is_empty()).then(|| catalog(lang).get(null).to_string()))
                .unwrap_or_default();
            assert_eq!(text, want, "{lang}: the text of {k} ({fmt}, raw {v:?})");
        }
        if STABLE.contains(&k) {
            assert_eq!(
                v,
                raw(lookup(st, k)),
                "{lang}: {k} on the page and in /api/status"
            );
        }
    }
    for k in [
        "history.today.served",
        "history.since_install.served",
        "store.stored_bytes",
        "health.node",
    ] {
        assert!(seen.iter().any(|x| x == k), "{lang}: the page has no {k}");
    }
    let msgs = s.exec(MESSAGES, json!([]));
    for m in msgs.as_array().expect("messages") {
        let [key, args, text] = [0, 1, 2].map(|i| m[i].as_str().unwrap_or(""));
        if key == "uplink.rate_of" {
            continue; // rates move from second to second
        }
        let mut a = serde_json::Map::new();
        for spec in args.split(',').filter(|x| !x.is_empty()) {
            let (name, path) = spec.split_once(':').unwrap();
            a.insert(
                name.into(),
                lookup(st, path).cloned().unwrap_or(Value::Null),
            );
        }
        assert_eq!(text, f.message(key, &a), "{lang}: message {key}");
    }
}

/// Rows the script rendered for the list at `path` (top level).
fn rows(s: &Session, path: &str) -> Value {
    s.exec(
        r#"const l = document.querySelector('[data-list="' + arguments[0] + '"]');
           return l ? Array.from(l.children).filter(c => c.hasAttribute('data-scope'))
             .map(r => Object.fromEntries(Array.from(r.querySelectorAll('[data-k]'))
               .filter(e => e.parentElement.closest('[data-scope]') === r)
               .map(e => [e.dataset.k, [e.getAttribute('data-v'), e.textContent]]))) : null;"#,
        json!([path]),
    )
}

/// Devanagari letters draw differently from a character no font has (an empty box), with the
/// page's own font stack.
fn devanagari_renders(s: &Session) -> bool {
    let v = s.exec(
        r#"const font = getComputedStyle(document.body).fontFamily;
           const draw = ch => { const c = document.createElement('canvas'); c.width = c.height = 48;
             const x = c.getContext('2d'); x.font = '32px ' + font; x.fillText(ch, 4, 38); return c.toDataURL(); };
           const none = draw('\u{10FFFD}');
           return ['क', 'ष', 'ज्ञ'].every(ch => draw(ch) !== none);"#,
        json!([]),
    );
    v == Value::Bool(true)
}

/// The page's script formats like `dashboard::format`, value for value.
fn check_formatter(s: &Session, lang: &str) {
    let f = Fmt::new(catalog(lang));
    let mut cases = Vec::new();
    for n in [
        0u64,
        7,
        999,
        1000,
        12_345,
        123_456,
        1_234_567,
        123_456_789_012,
    ] {
        cases.push((json!(n), "int"));
        cases.push((json!(n), "pct"));
    }
    for n in [
        0u64,
        1023,
        1024,
        1280,
        10_239,
        102_349,
        1_048_575,
        1_572_864,
        104_857_599,
        1_000_000_000,
        3 << 40,
        5 << 50,
    ] {
        cases.push((json!(n), "bytes"));
        cases.push((json!(n), "rate"));
    }
    for n in [
        0u64, 4, 5, 59, 60, 3599, 3600, 86_399, 86_400, 172_800, 10_000_000,
    ] {
        cases.push((json!(n), "dur"));
        cases.push((json!(n), "ago"));
    }
    for d in ["2026-01-05", "2024-12-31 10:00:00", "2026-13-01", "soon"] {
        cases.push((json!(d), "date"));
        cases.push((json!(d), "dateshort"));
    }
    cases.push((json!("2026-02"), "month"));
    cases.push((json!("critical"), "enum:advisories.severity"));
    cases.push((json!(true), "enum:repos.reach"));
    cases.push((json!(["CVE-1", "CVE-2"]), "join"));
    cases.push((json!([]), "join"));
    cases.push((
        json!({"epoch": 1, "version": "2.0", "release": "3.el9"}),
        "evr",
    ));
    cases.push((json!("0123456789abcdefff"), "short"));
    cases.push((Value::Null, "bytes"));
    cases.push((json!("x"), "bytes"));
    let args: Vec<Value> = cases.iter().map(|(v, f)| json!([v, f])).collect();
    let got = s.exec(
        "return arguments[0].map(c => window.lanmirrorFormat(c[0], c[1]));",
        json!([args]),
    );
    for (i, (v, fmt)) in cases.iter().enumerate() {
        let want = f.value(v, fmt).map_or(Value::Null, Value::String);
        assert_eq!(
            got[i], want,
            "{lang}: {fmt} of {v}: the script and dashboard::format differ"
        );
    }
    let args = json!({"free_bytes": 1_572_864, "count": 1_234_567, "resets_date": "2026-06-01", "age_secs": 7300, "repo": "epel", "missing": null});
    let got = s.exec(
        "return window.lanmirrorMessage('problem.disk_low.text', arguments[0]) + '|' + window.lanmirrorMessage('problem.peers_silent.text', arguments[0]) + '|' + window.lanmirrorMessage('problem.budget_spent.text', arguments[0]) + '|' + window.lanmirrorMessage('problem.lists_old.text', arguments[0]);",
        json!([args]),
    );
    let m = args.as_object().unwrap();
    let want = [
        "problem.disk_low.text",
        "problem.peers_silent.text",
        "problem.budget_spent.text",
        "problem.lists_old.text",
    ]
    .map(|k| f.message(k, m))
    .join("|");
    assert_eq!(got, json!(want), "{lang}: messages");
}

/// A status document with something in every part of the page (advisories, prefetch, peers
/// in each state, problems, warnings, a transfer, caps and budgets, a failed bundle job).
fn rich_status(real: &Value) -> Value {
    let mut st = real.clone();
    st["advisories"] = json!([
        {"id": "ALSA-2026:0001", "kind": "security", "severity": "critical", "title": "openssl: a fix",
         "issued": "2026-01-05 00:00:00", "cves": ["CVE-2026-0001", "CVE-2026-0002"], "ready": true,
         "packages": [{"name": "openssl", "arch": "x86_64", "evr": {"epoch": 1, "version": "3.0.7", "release": "27.el9"}, "in_repo": true, "held": true}]},
        {"id": "ALSA-2026:0002", "kind": "security", "severity": "moderate", "title": "curl", "issued": null,
         "cves": [], "ready": false,
         "packages": [{"name": "curl", "arch": "x86_64", "evr": {"epoch": 0, "version": "7.76.1", "release": "29.el9"}, "in_repo": true, "held": false}]}
    ]);
    st["prefetch"] =
        json!({"done": 12, "waiting": 3, "bytes_done": 123_456_789, "bytes_waiting": 4_567_890});
    st["peers"] = json!([
        {"id": "aaaaaaaaaaaaaaaaaaaaaaaa", "addr": "127.0.0.2:7701", "healthy": true, "state": "healthy", "last_contact_secs": 1, "failures": 0},
        {"id": "bbbbbbbbbbbbbbbbbbbbbbbb", "addr": "127.0.0.3:7701", "healthy": false, "state": "aside", "last_contact_secs": 4000, "failures": 2},
        {"id": null, "addr": "127.0.0.4:7701", "healthy": false, "state": "down", "last_contact_secs": null, "failures": 1234567}
    ]);
    st["transfers"] = json!([
        {"repo": "test", "path": "Packages/x-1-1.noarch.rpm", "source": "peer", "done": 1_500_000, "size": 4_000_000, "percent": 37, "bytes_per_sec": 250_000, "secs": 6},
        {"repo": "test", "path": "Packages/y-1-1.noarch.rpm", "source": "connecting", "done": 0, "size": null, "percent": null, "bytes_per_sec": 0, "secs": 0}
    ]);
    st["recent_warnings"] = json!([
        {"code": "upstream_offline", "repo": "test", "count": 3, "at": 1, "ago_secs": 7300},
        {"code": "peer_refused", "count": 1, "at": 1, "ago_secs": 2}
    ]);
    st["store"]["max_size"] = json!(10_737_418_240u64);
    st["store"]["passthrough"] = json!(true);
    st["uplink"]["max_rate"] = json!(500_000);
    st["uplink"]["share"] = json!(250_000);
    st["uplink"]["background"] = json!({"allowed": false, "why_not": ["outside_window", "budget_spent"], "hours": ["22:00-06:00", "12:00-13:00"]});
    st["uplink"]["budget"] = json!({"limit": 32_212_254_720u64, "used": 32_212_254_720u64, "used_here": 1, "left": 0, "spent": true, "period_start": "2026-01-15", "resets_on": "2026-02-15"});
    st["warnings"] = json!(["something the dashboard has no words for"]);
    if let Some(repos) = st["repos"].as_array_mut() {
        repos.push(
            json!({"name": "epel", "upstream_offline": true, "pinned": false, "snapshots": []}),
        );
    }
    st["bundle_job"] = json!({"command": "import", "target": "/media/usb/lanmirror", "state": "failed", "started": 1_780_000_000,
        "progress": {"files": 1234, "bytes": 5_368_709_120u64, "done_files": 567, "done_bytes": 2_147_483_648u64},
        "report": null, "error": "the disk was removed: No such device"});
    st["health"] = lanmirror::dashboard::health::assess(&st);
    st
}

/// The page's script, given a status, writes the same words and values as the server given
/// the same status: section by section, text, raw values and what is hidden.
fn check_script_renders_like_the_server(s: &Session, st: &Value, lang: &str) {
    let server = lanmirror::dashboard::render(st, lang);
    let got = s.exec(
        r#"window.lanmirrorRender(arguments[0]);
           const doc = new DOMParser().parseFromString(arguments[1], 'text/html');
           const norm = t => t.replace(/\s+/g, ' ').trim();
           const look = root => [norm(root.textContent),
             Array.from(root.querySelectorAll('[data-k]')).map(e => e.dataset.k + '=' + e.getAttribute('data-v')),
             Array.from(root.querySelectorAll('[data-show],[data-hide]')).map(e => e.hidden)];
           return ['health', 'saved', 'sources', 'transfers', 'bundle', 'repos', 'nodes', 'disk', 'uplink', 'advisories', 'events']
             .map(id => [id, look(document.getElementById(id)), look(doc.getElementById(id))]);"#,
        json!([st, server]),
    );
    for sec in got.as_array().expect("sections") {
        assert_eq!(
            sec[1], sec[2],
            "{lang}: section {} differs between the script (left) and the server (right)",
            sec[0]
        );
    }
    let text = got.to_string();
    for must in [
        "ALSA-2026:0001",
        "CVE-2026-0002",
        "3.0.7-27",
        "something the dashboard has no words for",
        "/media/usb/lanmirror",
        "the disk was removed: No such device",
    ] {
        assert!(text.contains(must), "{lang}: {must} not on the page");
    }
}

fn polls(s: &Session) -> u64 {
    s.exec(
        "return +(document.documentElement.getAttribute('data-polls') || 0);",
        json!([]),
    )
    .as_u64()
    .unwrap_or(0)
}

#[test]
fn the_dashboard_shows_the_status_live_in_three_languages() {
    let Some(browser) = browser() else { return };
    let site = Site::new(&[
        PkgSpec::new("dash-alpha", "1.0", 300_000),
        PkgSpec::new("dash-beta", "1.0", 200_000),
        PkgSpec::new("dash-gamma", "1.0", 600_000),
    ]);
    let node = &site.node;
    // Real traffic: dnf installs a package through the node; another is fetched by HTTP.
    site.client("c1").install(&["dash-alpha"]).assert_success();
    assert_eq!(site.get_pkg("dash-beta").status, 200);
    let st = node.status_json();
    assert!(
        st["history"]["today"]["served"].as_u64().unwrap() > 500_000,
        "{st}"
    );
    assert_eq!(st["history"]["today"]["served"], st["bytes_served"], "{st}");

    // Without JavaScript: the server writes the figures (same markup, same formatting).
    for lang in ["en", "hi", "ne"] {
        let r = node.get(&format!("/?lang={lang}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-language"), Some(lang));
        assert!(
            r.header("set-cookie")
                .is_some_and(|c| c.starts_with(&format!("lang={lang};")))
        );
        let html = r.text();
        let served = st["history"]["today"]["served"].as_u64().unwrap();
        let want = format!(
            "data-k=\"history.today.served\" data-f=\"bytes\" data-v=\"{served}\">{}<",
            Fmt::new(catalog(lang)).bytes(served)
        );
        assert!(html.contains(&want), "{lang}: no {want} in the page");
        assert!(
            html.len() < 80 * 1024,
            "{lang}: the page is {} bytes",
            html.len()
        );
        assert!(!html.contains("://"), "{lang}: the page links outside");
        assert!(
            html.contains(catalog(lang).get("bundle.none")),
            "{lang}: no bundle job, and the page does not say so"
        );
    }

    let pkg = |name: &str| format!("/test/{}", site.repo.package(name).rel_path);
    for lang in ["en", "hi", "ne"] {
        let s = browser.session(None);
        s.goto(&format!("{}/?lang={lang}", node.url()));
        assert_eq!(
            s.exec("return document.documentElement.lang;", json!([])),
            json!(lang)
        );
        assert!(
            s.wait_for(
                Duration::from_secs(20),
                "return +(document.documentElement.getAttribute('data-polls')||0) >= 1;",
                json!([])
            ),
            "{lang}: the page never polled /api/status"
        );
        check_figures(&s, &node.status_json(), lang);
        check_formatter(&s, lang);
        let repos = rows(&s, "repos");
        assert_eq!(repos.as_array().map(Vec::len), Some(1), "{lang}: {repos}");
        assert_eq!(repos[0]["name"][0], "test");
        if lang != "en" {
            assert!(
                devanagari_renders(&s),
                "{lang}: Devanagari draws as empty boxes: install a Devanagari font (fonts-lohit-deva or fonts-noto-core)"
            );
        }

        // More traffic; the page follows without a reload.
        s.exec("window.__mark = arguments[0];", json!([lang]));
        let before = polls(&s);
        assert_eq!(node.get(&pkg("dash-alpha")).status, 200);
        let st = node.status_json();
        let served = st["history"]["today"]["served"].as_u64().unwrap();
        assert!(
            s.wait_for(
                Duration::from_secs(20),
                "return document.querySelector('[data-k=\"history.today.served\"]').getAttribute('data-v') === arguments[0];",
                json!([served.to_string()]),
            ),
            "{lang}: the page did not show the new figure {served}"
        );
        assert_eq!(
            s.exec("return window.__mark;", json!([])),
            json!(lang),
            "{lang}: the page was reloaded"
        );
        assert!(polls(&s) > before);
        check_figures(&s, &node.status_json(), lang);

        if lang == "en" {
            // A transfer in progress shows with its progress bar, then goes.
            site.up.throttle(Some(100_000));
            let url = format!("{}{}", node.url(), pkg("dash-gamma"));
            let fetch = std::thread::spawn(move || http_get(&url, &[]).status);
            assert!(
                s.wait_for(
                    Duration::from_secs(20),
                    r#"const r = document.querySelector('[data-list="transfers"] > [data-scope]');
                       if (!r) return false;
                       const p = r.querySelector('progress');
                       return r.querySelector('[data-k="path"]').textContent.includes('dash-gamma')
                         && p.max > 500000 && p.value > 0 && p.value < p.max;"#,
                    json!([]),
                ),
                "no transfer in progress on the page: {}",
                rows(&s, "transfers")
            );
            let t = rows(&s, "transfers");
            assert_eq!(t[0]["source"][0], "upstream", "{t}");
            assert_eq!(t[0]["source"][1], "the internet", "{t}");
            s.screenshot(&artifacts().join("dashboard-en-transfer.png"));
            assert_eq!(fetch.join().unwrap(), 200);
            site.up.throttle(None);
            assert!(
                s.wait_for(
                    Duration::from_secs(20),
                    "return document.querySelector('[data-list=\"transfers\"] > p.none') !== null;",
                    json!([]),
                ),
                "the finished transfer stayed on the page"
            );
        }
        s.screenshot(&artifacts().join(format!("dashboard-{lang}.png")));

        // Every part of the page, filled by the script from a status with something in each.
        check_script_renders_like_the_server(&s, &rich_status(&node.status_json()), lang);
        s.screenshot(&artifacts().join(format!("dashboard-{lang}-all-parts.png")));
    }

    // The browser's languages choose the page's; an explicit choice is remembered.
    let s = browser.session(Some("ne,en;q=0.5"));
    s.goto(&format!("{}/", node.url()));
    assert_eq!(
        s.exec("return document.documentElement.lang;", json!([])),
        json!("ne")
    );
    s.goto(&format!("{}/?lang=hi", node.url()));
    s.goto(&format!("{}/", node.url()));
    assert_eq!(
        s.exec("return document.documentElement.lang;", json!([])),
        json!("hi"),
        "the ?lang= choice was not remembered"
    );
    let r = node.get_with("/", &[("Accept-Language", "fr;q=0.9, ne;q=0.8, en;q=0.1")]);
    assert_eq!(r.header("content-language"), Some("ne"));

    // `lanmirror status`: the same picture, in the locale's language.
    let st = node.status_json();
    for (locale, lang, heading) in [
        ("C", "en", "Internet data saved"),
        ("ne_NP.UTF-8", "ne", "इन्टरनेट डाटाको बचत"),
        ("hi_IN.UTF-8", "hi", "इंटरनेट डेटा की बचत"),
    ] {
        let out = std::process::Command::new(common::node::node_bin())
            .args(["status", "--config"])
            .arg(node.config_path())
            .env("LANG", locale)
            .env_remove("LC_ALL")
            .env_remove("LC_MESSAGES")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let f = Fmt::new(catalog(lang));
        assert!(text.contains(heading), "{locale}:\n{text}");
        let served = f.bytes(st["history"]["today"]["served"].as_u64().unwrap());
        assert!(text.contains(&served), "{locale}: no {served}:\n{text}");
        let key = format!("health.state.{}", st["health"]["node"].as_str().unwrap());
        let state = catalog(lang).get(&key);
        assert!(text.contains(state), "{locale}: no {state}:\n{text}");
    }
}

/// Bytes served and taken from upstream, by day and by source, survive a restart; a hit
/// counts as served from the store.
#[test]
fn the_history_counts_by_source_and_survives_a_restart() {
    let mut site = Site::new(&[PkgSpec::new("hist-a", "1.0", 250_000)]);
    let size = site.repo.package("hist-a").size;
    assert_eq!(site.get_pkg("hist-a").status, 200);
    assert_eq!(site.get_pkg("hist-a").status, 200);
    let st = site.node.status_json();
    let h = &st["history"];
    assert_eq!(h["today"]["served"], st["bytes_served"], "{h}");
    assert_eq!(h["today"]["upstream"], st["bytes_fetched_upstream"], "{h}");
    assert!(
        h["today"]["store"].as_u64().unwrap() >= size,
        "the hit came from the store: {h}"
    );
    assert_eq!(h["since_install"]["served"], h["today"]["served"]);
    assert_eq!(h["days"].as_array().unwrap().len(), 30);
    assert_eq!(h["days"][29]["served"], h["today"]["served"]);
    let served = h["today"]["served"].as_u64().unwrap();
    let upstream = h["today"]["upstream"].as_u64().unwrap();
    assert_eq!(
        h["today"]["saved"].as_u64().unwrap(),
        served.saturating_sub(upstream)
    );

    site.node.restart();
    let st = site.node.status_json();
    assert_eq!(st["bytes_served"], 0, "a new process");
    assert_eq!(st["history"]["since_install"]["served"], served, "{st}");
    assert_eq!(st["history"]["today"]["upstream"], upstream);
    assert_eq!(site.get_pkg("hist-a").status, 200);
    let st = site.node.status_json();
    assert_eq!(
        st["history"]["since_install"]["served"].as_u64().unwrap(),
        served + size
    );
}

/// Two nodes of a keyed site: the second gets a package from the first, and its dashboard
/// says where the bytes came from (other nodes), that the site is healthy, and when it last
/// heard from the other node.
#[test]
fn a_site_of_two_nodes_shows_peers_and_bytes_from_them() {
    let dir = temp();
    let repo = RpmRepo::create(
        &dir.path().join("mirror"),
        &[PkgSpec::new("dash-shared", "1.0", 400_000)],
    );
    let up = Upstream::start(repo.dir());
    let key = dir.path().join("site.key");
    write_private(&key, "dashboard-test-site-key-0123456789abcdef\n");
    let quic = [free_port(), free_port()];
    let nodes: Vec<Node> = (0..2)
        .map(|i| {
            let mut o = NodeOpts::new(&up.url());
            o.quic_listen = format!("127.0.0.1:{}", quic[i]);
            o.peers = vec![format!("127.0.0.1:{}", quic[1 - i])];
            o.freshness_secs = 60;
            o.site_key_file = Some(key.clone());
            Node::start(o)
        })
        .collect();
    for n in &nodes {
        assert_eq!(n.get("/test/repodata/repomd.xml").status, 200);
    }
    let joined = |n: &Node| {
        let st = n.status_json();
        st["peers"][0]["state"] == "healthy"
            && st["peers"][0]["last_contact_secs"]
                .as_u64()
                .is_some_and(|s| s <= 5)
    };
    for n in &nodes {
        assert!(
            wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
                joined(n)
            }),
            "no live peer with a recent contact: {}",
            n.status_json()["peers"]
        );
    }
    let pkg = repo.package("dash-shared");
    nodes[0].assert_serves(&pkg);
    nodes[1].assert_serves(&pkg);
    // One node downloaded it (the site's downloader for it: either, by rendezvous), the other
    // got it from that one.
    let sts: Vec<Value> = nodes.iter().map(|n| n.status_json()).collect();
    let took = |st: &Value, k: &str| st["history"]["today"][k].as_u64().unwrap();
    let r = (0..2)
        .find(|&i| took(&sts[i], "peers") >= pkg.size)
        .unwrap_or_else(|| {
            panic!(
                "neither node got the package from the other: {} / {}",
                sts[0]["history"]["today"], sts[1]["history"]["today"]
            )
        });
    assert!(took(&sts[1 - r], "upstream") >= pkg.size);
    assert!(
        took(&sts[r], "upstream") < pkg.size,
        "{}",
        sts[r]["history"]
    );
    let st = &sts[r];
    let today = &st["history"]["today"];
    assert_eq!(st["health"]["node"], "ok", "{}", st["health"]);
    assert_eq!(st["health"]["site"], "ok", "{}", st["health"]);
    let html = nodes[r].get("/?lang=en").text();
    assert!(
        html.contains("data-k=\"state\" data-f=\"enum:nodes.state\" data-v=\"healthy\">connected<"),
        "no connected node on the page"
    );
    let f = Fmt::new(catalog("ne"));
    let html = nodes[r].get("/?lang=ne").text();
    let want = format!(
        "data-k=\"history.today.peers\" data-f=\"bytes\" data-v=\"{}\">{}<",
        today["peers"],
        f.bytes(today["peers"].as_u64().unwrap())
    );
    assert!(html.contains(&want), "no {want}");
}
