//! `lanmirror status`: the dashboard's picture as terminal text, from the same status document,
//! catalogs and formats as the page.
//!
//! Columns are padded by display width: Devanagari vowel signs, virama and other combining
//! marks take no column of their own ([`width`]), so Hindi and Nepali tables line up in
//! terminals that render Devanagari as most do (one column per base letter).

use serde_json::{Map, Value};

use super::format::{Fmt, lookup};
use super::i18n::catalog;

/// Marks that combine with the previous character and take no column.
fn combining(c: char) -> bool {
    matches!(c as u32,
        0x0300..=0x036F          // combining diacritics
        | 0x0900..=0x0902        // Devanagari candrabindu, anusvara
        | 0x093A | 0x093C
        | 0x0941..=0x0948        // vowel signs below / above
        | 0x094D                 // virama
        | 0x0951..=0x0957
        | 0x0962..=0x0963
        | 0x200B..=0x200D        // zero width space, ZWNJ, ZWJ
        | 0xFE00..=0xFE0F)
}

/// Columns `s` takes in a terminal (see the module docs).
pub fn width(s: &str) -> usize {
    s.chars().filter(|c| !combining(*c)).count()
}

fn pad(s: &str, w: usize) -> String {
    let mut o = s.to_string();
    for _ in width(s)..w {
        o.push(' ');
    }
    o
}

/// Rows as columns, each padded to its widest cell, indented.
fn table(out: &mut String, indent: &str, rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| width(s))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = indent.to_string();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&pad(cell, widths[c]));
                line.push_str("  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

struct T<'a> {
    f: Fmt<'a>,
    st: &'a Value,
    out: String,
}

impl T<'_> {
    fn t(&self, k: &str) -> String {
        self.f.cat.get(k).to_string()
    }

    fn v(&self, scope: &Value, path: &str, f: &str, null: &str) -> String {
        lookup(scope, path)
            .and_then(|v| self.f.value(v, f))
            .unwrap_or_else(|| self.t(null))
    }

    /// A row of a two-column table: a label and a figure of the status.
    fn kv(&self, label: &str, path: &str, f: &str, null: &str) -> Vec<String> {
        vec![self.t(label), self.v(self.st, path, f, null)]
    }

    fn msg(&self, key: &str, scope: &Value, args: &[(&str, &str)]) -> String {
        let m: Map<String, Value> = args
            .iter()
            .map(|(n, p)| {
                (
                    n.to_string(),
                    lookup(scope, p).cloned().unwrap_or(Value::Null),
                )
            })
            .collect();
        self.f.message(key, &m)
    }

    fn title(&mut self, key: &str) {
        let t = self.t(key);
        self.out.push('\n');
        self.out.push_str(&t);
        self.out.push('\n');
    }

    fn line(&mut self, s: &str) {
        self.out.push_str("  ");
        self.out.push_str(s);
        self.out.push('\n');
    }

    /// `(path, heading)` of the history's spans: a name, or "since <install date>".
    fn spans(&self, list: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        list.iter()
            .map(|&(p, key)| {
                let head = if p == "history.since_install" {
                    self.msg(
                        key,
                        self.st,
                        &[("since_date", "history.since_install.since_date")],
                    )
                } else {
                    self.t(key)
                };
                (p, head)
            })
            .collect()
    }

    fn items(&self, path: &str) -> Vec<Value> {
        lookup(self.st, path)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }
}

/// An empty corner, then the spans' headings.
fn header_row(spans: &[(&str, String)]) -> Vec<String> {
    std::iter::once(String::new())
        .chain(spans.iter().map(|(_, l)| l.clone()))
        .collect()
}

/// The status document as text in `lang`.
pub fn render(st: &Value, lang: &str) -> String {
    let mut t = T {
        f: Fmt::new(catalog(lang)),
        st,
        out: String::new(),
    };
    let head = format!(
        "lanmirror · {} · {} {} · {}",
        t.t("page.heading"),
        t.t("page.node"),
        t.v(st, "node_id", "short", "units.none"),
        t.msg(
            "page.node_line",
            st,
            &[("site", "site"), ("version", "version")]
        )
    );
    t.out.push_str(&head);
    t.out.push('\n');

    t.title("health.title");
    let l = format!(
        "{}: {}   {}: {}",
        t.t("health.node"),
        t.v(st, "health.node", "enum:health.state", "units.none"),
        t.t("health.site"),
        t.v(st, "health.site", "enum:health.state", "units.none")
    );
    t.line(&l);
    let problems = t.items("health.problems");
    if problems.is_empty() {
        let l = t.t("health.all_ok");
        t.line(&l);
    }
    let empty = Map::new();
    for p in &problems {
        let code = p["code"].as_str().unwrap_or("");
        let args = p.as_object().unwrap_or(&empty);
        let l = format!(
            "[{}] {}: {}",
            t.v(p, "level", "enum:health.level", "units.none"),
            t.v(p, "scope", "enum:health.scope", "units.none"),
            t.f.message(&format!("problem.{code}.text"), args)
        );
        t.line(&l);
        let l = format!(
            "    {} {}",
            t.t("health.fix"),
            t.f.message(&format!("problem.{code}.fix"), args)
        );
        t.line(&l);
    }
    let other = t.items("health.other_warnings");
    if !other.is_empty() {
        let l = t.t("health.other.title");
        t.line(&l);
        for w in other {
            t.line(&format!("    {}", w.as_str().unwrap_or("")));
        }
    }

    t.title("saved.title");
    let spans = t.spans(&[
        ("history.today", "saved.today"),
        ("history.month", "saved.month"),
        ("history.since_install", "saved.since"),
    ]);
    let mut rows = vec![header_row(&spans)];
    for (label, field) in [
        ("saved.served", "served"),
        ("saved.upstream", "upstream"),
        ("saved.saved", "saved"),
    ] {
        let mut r = vec![t.t(label)];
        for (p, _) in &spans {
            let mut cell = t.v(st, &format!("{p}.{field}"), "bytes", "units.none");
            if field == "saved"
                && let Some(pct) = lookup(st, &format!("{p}.saved_pct")).and_then(Value::as_u64)
            {
                cell = format!("{cell} ({})", t.f.pct(pct));
            }
            r.push(cell);
        }
        rows.push(r);
    }
    table(&mut t.out, "  ", &rows);

    t.title("sources.title");
    let spans = t.spans(&[
        ("history.today", "sources.today"),
        ("history.since_install", "sources.since"),
    ]);
    let mut rows = vec![header_row(&spans)];
    for src in ["store", "peers", "seed", "upstream"] {
        let mut r = vec![t.t(&format!("sources.{src}"))];
        for (p, _) in &spans {
            r.push(t.v(st, &format!("{p}.{src}"), "bytes", "units.none"));
        }
        rows.push(r);
    }
    table(&mut t.out, "  ", &rows);

    t.title("transfers.title");
    let list = t.items("transfers");
    if list.is_empty() {
        let l = t.t("transfers.none");
        t.line(&l);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|x| {
            vec![
                format!(
                    "{}/{}",
                    x["repo"].as_str().unwrap_or(""),
                    x["path"].as_str().unwrap_or("")
                ),
                t.v(x, "source", "enum:transfers.from", "units.none"),
                t.msg(
                    "transfers.of",
                    x,
                    &[("done_bytes", "done"), ("size_bytes", "size")],
                ),
                t.v(x, "percent", "pct", "units.none"),
                t.v(x, "bytes_per_sec", "rate", "units.none"),
            ]
        })
        .collect();
    table(&mut t.out, "  ", &rows);

    t.title("repos.title");
    for r in t.items("repos") {
        let l = format!(
            "{}  {}: {}",
            r["name"].as_str().unwrap_or(""),
            t.t("repos.source_state"),
            t.v(&r, "upstream_offline", "enum:repos.reach", "units.none")
        );
        t.line(&l);
        let snaps = r["snapshots"].as_array().cloned().unwrap_or_default();
        if snaps.is_empty() {
            let l = format!("    {}", t.t("repos.none"));
            t.line(&l);
        }
        let rows: Vec<Vec<String>> = snaps
            .iter()
            .map(|s| {
                vec![
                    match s["tree"].as_str() {
                        Some("") | None => t.t("repos.root_tree"),
                        Some(x) => x.to_string(),
                    },
                    t.msg(
                        "repos.tree_line",
                        s,
                        &[
                            ("age_secs", "age_secs"),
                            ("checked_secs", "checked_secs_ago"),
                        ],
                    ),
                    t.v(s, "stale", "enum:repos.stale", "units.none"),
                    t.v(s, "source", "enum:repos.source", "units.none"),
                ]
            })
            .collect();
        table(&mut t.out, "      ", &rows);
    }

    t.title("nodes.title");
    let mut rows = vec![vec![
        t.v(st, "node_id", "short", "units.none"),
        t.v(st, "quic_listen", "text", "units.none"),
        t.t("nodes.state.self"),
        String::new(),
    ]];
    for p in t.items("peers") {
        rows.push(vec![
            t.v(&p, "id", "short", "units.none"),
            t.v(&p, "addr", "text", "units.none"),
            t.v(&p, "state", "enum:nodes.state", "units.none"),
            format!(
                "{}: {}",
                t.t("nodes.last_contact"),
                t.v(&p, "last_contact_secs", "ago", "nodes.never")
            ),
        ]);
    }
    table(&mut t.out, "  ", &rows);
    if t.items("peers").is_empty() {
        let l = t.t("nodes.none");
        t.line(&l);
    }

    t.title("disk.title");
    let used = if lookup(st, "store.max_size").is_some_and(|v| !v.is_null()) {
        t.msg(
            "disk.used_of",
            st,
            &[
                ("used_bytes", "store.stored_bytes"),
                ("cap_bytes", "store.max_size"),
            ],
        )
    } else {
        t.v(st, "store.stored_bytes", "bytes", "units.none")
    };
    let rows = vec![
        vec![t.t("disk.used"), used],
        t.kv("disk.cap", "store.max_size", "bytes", "disk.nocap"),
        t.kv("disk.free", "store.free_bytes", "bytes", "units.none"),
        t.kv("disk.min_free", "store.min_free", "bytes", "units.none"),
        t.kv("disk.files", "stored_blobs", "int", "units.none"),
        vec![
            t.t("disk.evicted"),
            t.msg(
                "disk.evicted_of",
                st,
                &[
                    ("files", "store.evicted_files"),
                    ("evicted_bytes", "store.evicted_bytes"),
                ],
            ),
        ],
        t.kv(
            "disk.passthrough",
            "store.passthrough",
            "enum:disk.kept",
            "units.none",
        ),
    ];
    table(&mut t.out, "  ", &rows);

    t.title("uplink.title");
    let why: Vec<String> = t
        .items("uplink.background.why_not")
        .iter()
        .filter_map(|w| t.f.value(w, "enum:uplink.why"))
        .collect();
    let mut background = t.v(
        st,
        "uplink.background.allowed",
        "enum:uplink.allowed",
        "units.none",
    );
    if !why.is_empty() {
        background = format!("{background}: {}", why.join(", "));
    }
    let mut rows = vec![
        t.kv("uplink.cap", "uplink.max_rate", "rate", "uplink.nocap"),
        t.kv("uplink.share", "uplink.share", "rate", "uplink.nocap"),
        vec![
            t.t("uplink.rate"),
            t.msg(
                "uplink.rate_of",
                st,
                &[
                    ("interactive_rate", "uplink.rate.interactive"),
                    ("background_rate", "uplink.rate.background"),
                ],
            ),
        ],
        t.kv(
            "uplink.hours",
            "uplink.background.hours",
            "join",
            "uplink.any_time",
        ),
        vec![t.t("uplink.background"), background],
        t.kv(
            "uplink.budget",
            "uplink.budget.limit",
            "bytes",
            "uplink.nobudget",
        ),
        t.kv(
            "uplink.budget_used",
            "uplink.budget.used",
            "bytes",
            "units.none",
        ),
    ];
    if lookup(st, "uplink.budget.limit").is_some_and(|v| !v.is_null()) {
        rows.push(t.kv(
            "uplink.budget_left",
            "uplink.budget.left",
            "bytes",
            "units.none",
        ));
        rows.push(t.kv(
            "uplink.resets",
            "uplink.budget.resets_on",
            "date",
            "units.none",
        ));
    }
    table(&mut t.out, "  ", &rows);

    t.title("advisories.title");
    match st.get("advisories").and_then(Value::as_array) {
        None => {
            let l = t.t("advisories.not_yet");
            t.line(&l);
        }
        Some(a) if a.is_empty() => {
            let l = t.t("advisories.none");
            t.line(&l);
        }
        Some(a) => {
            for adv in a {
                let l = format!(
                    "[{}] {} {} · {}",
                    t.v(adv, "severity", "enum:advisories.severity", "units.none"),
                    adv["id"].as_str().unwrap_or(""),
                    adv["title"].as_str().unwrap_or(""),
                    t.v(adv, "ready", "enum:advisories.ready", "units.none")
                );
                t.line(&l);
                let l = format!(
                    "    {}: {} · {}: {}",
                    t.t("advisories.issued"),
                    t.v(adv, "issued", "date", "units.none"),
                    t.t("advisories.cves"),
                    t.v(adv, "cves", "join", "units.none")
                );
                t.line(&l);
                for p in adv["packages"].as_array().into_iter().flatten() {
                    let l = format!(
                        "    {}.{} {} {}",
                        p["name"].as_str().unwrap_or(""),
                        p["arch"].as_str().unwrap_or(""),
                        t.v(p, "evr", "evr", "units.none"),
                        t.v(p, "held", "enum:advisories.held", "units.none")
                    );
                    t.line(&l);
                }
            }
        }
    }
    if lookup(st, "prefetch").is_some_and(|v| !v.is_null()) {
        let l = t.msg(
            "advisories.prefetch",
            st,
            &[
                ("done", "prefetch.done"),
                ("done_bytes", "prefetch.bytes_done"),
                ("waiting", "prefetch.waiting"),
                ("waiting_bytes", "prefetch.bytes_waiting"),
            ],
        );
        t.line(&l);
    }

    t.title("events.title");
    let evs = t.items("recent_warnings");
    if evs.is_empty() {
        let l = t.t("events.none");
        t.line(&l);
    }
    for e in &evs {
        let code = e["code"].as_str().unwrap_or("");
        let l = format!(
            "{} ({}, {})",
            t.f.message(&format!("event.{code}"), e.as_object().unwrap_or(&empty)),
            t.msg("events.times", e, &[("count", "count")]),
            t.v(e, "ago_secs", "ago", "units.none")
        );
        t.line(&l);
    }
    t.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn devanagari_marks_take_no_column() {
        assert_eq!(width("abc"), 3);
        // क + ि (a spacing sign: one column) ; न + ् + द + ी : the virama takes none.
        assert_eq!(width("हिन्दी"), 5);
        assert_eq!(width("नेपाली"), 5);
        let mut out = String::new();
        table(
            &mut out,
            "",
            &[
                vec!["नेपाली".into(), "x".into()],
                vec!["abcdef".into(), "y".into()],
            ],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(width(lines[0]), width(lines[1]), "{out}");
    }

    #[test]
    fn the_table_says_what_the_page_says() {
        let st = json!({
            "node_id": "0123456789abcdef", "site": "clinic", "version": "0.1.0",
            "health": {"node": "ok", "site": "warn", "problems": [{"code": "no_site_key", "scope": "site", "level": "warn"}]},
            "history": {"today": {"served": 2048, "upstream": 1024, "saved": 1024, "saved_pct": 50}},
            "repos": [{"name": "epel", "upstream_offline": false, "snapshots": []}],
            "peers": [], "transfers": [],
            "store": {"stored_bytes": 10, "max_size": null, "passthrough": false},
            "uplink": {"max_rate": 500000, "background": {"allowed": true, "why_not": [], "hours": []}, "budget": {"limit": null, "used": 0}},
        });
        let en = render(&st, "en");
        assert!(en.contains("The site: Needs attention"), "{en}");
        assert!(en.contains("The site has no key"));
        assert!(
            en.contains("2.0 KiB") && en.contains("1.0 KiB (50%)"),
            "{en}"
        );
        assert!(en.contains("No computer has used it yet."));
        assert!(en.contains("488 KiB/s"), "{en}");
        assert!(en.contains("Not known yet"));
        let ne = render(&st, "ne");
        assert!(ne.contains("२.० KiB"), "{ne}");
        assert!(
            !ne.contains("problem.") && !ne.contains("health.state"),
            "{ne}"
        );
    }
}
