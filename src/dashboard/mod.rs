//! The dashboard: the page at `/` on every node, and the same picture as a terminal table
//! (`lanmirror status`, [`text`]). One data source: both are rendered from the `/api/status`
//! document ([`crate::node::Node::status`]), and the page's script polls `/api/status` and
//! updates the figures in place.
//!
//! **The page** is one HTML document with its stylesheet and script inlined (both embedded with
//! `include_str!`; no CDN, no web fonts: Devanagari uses the system's fonts), a few tens of KiB.
//! Without JavaScript it shows every figure as of the request. With it, `assets/dashboard.js`
//! polls `/api/status` every [`POLL_MS`] and rewrites the figures in place, by one contract
//! that this module's HTML follows:
//!
//! - `data-k="path"` (dotted, in the status document or the enclosing row's item) with
//!   `data-f="format"` ([`format::Fmt::value`]) and `data-null="key"` (the message when the
//!   value is null): the element's text is the formatted value, its `data-v` the raw value
//!   (tests compare those with `/api/status`); on `<progress>`, `value` and `max` (`data-max`);
//! - `data-msg="key"` + `data-args="name:path,…"`: a message with values;
//!   `data-msgk="path"` + `data-pre`/`data-suf`: a message whose key is in the data (problem
//!   and warning codes), with the item's fields as values;
//! - `data-list="path"` + `data-none="key"`: one row per array item, made from the list's
//!   `<template>` (rows are `data-scope` elements: paths inside are the item's);
//! - `data-show="path"` / `data-hide="path"`: hidden unless / when the value is set;
//! - `data-chart`: the 30-day chart (an inline SVG, drawn here and redrawn by the script).
//!
//! So each list's row is written once ([`H::list`] renders its template and its rows from one
//! function) and each format twice (here and in the script, checked against each other by the
//! browser test).
//!
//! Which language: [`i18n::choose`]. Messages: `i18n/<lang>.toml`. Health: [`health`].
//!
//! Not here: the figures themselves (`node`, `history`), HTTP (`http` calls [`page`]).

pub mod format;
pub mod health;
pub mod i18n;
pub mod text;

use std::fmt::Write;

use serde_json::{Map, Value};

use format::{Fmt, lookup, raw};
use i18n::{Choice, catalog, catalogs};

/// How often the page's script asks for `/api/status`, in milliseconds.
pub const POLL_MS: u64 = 5000;

const CSS: &str = include_str!("assets/dashboard.css");
const JS: &str = include_str!("assets/dashboard.js");

/// A rendered page.
#[derive(Debug)]
pub struct Page {
    pub html: String,
    pub lang: &'static str,
    /// A `Set-Cookie` value remembering an explicit choice of language.
    pub set_cookie: Option<String>,
}

/// The page for a status document, in the chosen language.
pub fn page(st: &Value, choice: Choice) -> Page {
    Page {
        html: render(st, choice.lang),
        lang: choice.lang,
        set_cookie: choice.remember.then(|| {
            format!(
                "lang={}; Path=/; Max-Age=31536000; SameSite=Lax",
                choice.lang
            )
        }),
    }
}

/// HTML-escapes text and attribute values.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Is a value "set" for `data-show`/`data-hide`: not missing, null, false or empty text.
fn set(v: Option<&Value>) -> bool {
    !matches!(v, None | Some(Value::Null) | Some(Value::Bool(false)))
        && v.and_then(Value::as_str) != Some("")
}

/// The page being written, in one language.
struct H<'a> {
    o: String,
    f: Fmt<'a>,
}

impl H<'_> {
    /// Catalog text, escaped.
    fn t(&self, key: &str) -> String {
        esc(self.f.cat.get(key))
    }

    fn push(&mut self, s: &str) {
        self.o.push_str(s);
    }

    /// Catalog text, escaped, into the page.
    fn label(&mut self, key: &str) {
        let t = self.t(key);
        self.o.push_str(&t);
    }

    /// ` data-show="path"`, hidden when the value is not set.
    fn show(&self, scope: Option<&Value>, path: &str) -> String {
        let hidden = scope.is_some_and(|s| !set(lookup(s, path)));
        format!(
            " data-show=\"{}\"{}",
            esc(path),
            if hidden { " hidden" } else { "" }
        )
    }

    /// ` data-hide="path"`, hidden when the value is set.
    fn hide(&self, scope: Option<&Value>, path: &str) -> String {
        let hidden = scope.is_some_and(|s| set(lookup(s, path)));
        format!(
            " data-hide=\"{}\"{}",
            esc(path),
            if hidden { " hidden" } else { "" }
        )
    }

    /// A figure: `<tag attrs data-k data-f data-v>formatted</tag>`.
    fn fig(
        &mut self,
        tag: &str,
        attrs: &str,
        scope: Option<&Value>,
        k: &str,
        f: &str,
        null: Option<&str>,
    ) {
        let v = scope.and_then(|s| lookup(s, k));
        let text = match scope {
            None => String::new(),
            Some(_) => v
                .and_then(|v| self.f.value(v, f))
                .or_else(|| null.map(|n| self.f.cat.get(n).to_string()))
                .unwrap_or_default(),
        };
        let _ = write!(
            self.o,
            "<{tag}{attrs} data-k=\"{}\" data-f=\"{}\"{} data-v=\"{}\">{}</{tag}>",
            esc(k),
            esc(f),
            null.map(|n| format!(" data-null=\"{}\"", esc(n)))
                .unwrap_or_default(),
            esc(&raw(v)),
            esc(&text)
        );
    }

    /// A message with values from `args` (`(name, path)`).
    fn msg(
        &mut self,
        tag: &str,
        attrs: &str,
        scope: Option<&Value>,
        key: &str,
        args: &[(&str, &str)],
    ) {
        let text = match scope {
            None => String::new(),
            Some(s) => {
                let m: Map<String, Value> = args
                    .iter()
                    .map(|(n, p)| (n.to_string(), lookup(s, p).cloned().unwrap_or(Value::Null)))
                    .collect();
                self.f.message(key, &m)
            }
        };
        let spec: Vec<String> = args.iter().map(|(n, p)| format!("{n}:{p}")).collect();
        let _ = write!(
            self.o,
            "<{tag}{attrs} data-msg=\"{}\" data-args=\"{}\">{}</{tag}>",
            esc(key),
            esc(&spec.join(",")),
            esc(&text)
        );
    }

    /// A message whose key is `pre` + the value at `path` + `suf`, with the item's fields as
    /// values.
    fn msgk(
        &mut self,
        tag: &str,
        attrs: &str,
        scope: Option<&Value>,
        path: &str,
        pre: &str,
        suf: &str,
    ) {
        let text = match scope {
            None => String::new(),
            Some(s) => {
                let key = format!("{pre}{}{suf}", raw(lookup(s, path)));
                let empty = Map::new();
                self.f.message(&key, s.as_object().unwrap_or(&empty))
            }
        };
        let _ = write!(
            self.o,
            "<{tag}{attrs} data-msgk=\"{}\" data-pre=\"{}\" data-suf=\"{}\">{}</{tag}>",
            esc(path),
            esc(pre),
            esc(suf),
            esc(&text)
        );
    }

    /// `<progress>` of the value at `k` against the value at `max`.
    fn progress(&mut self, attrs: &str, scope: Option<&Value>, k: &str, max: &str) {
        let v = scope.and_then(|s| lookup(s, k)).and_then(Value::as_u64);
        let m = scope.and_then(|s| lookup(s, max)).and_then(Value::as_u64);
        let _ = write!(
            self.o,
            "<progress{attrs} data-k=\"{}\" data-max=\"{}\" data-v=\"{}\"",
            esc(k),
            esc(max),
            v.map(|v| v.to_string()).unwrap_or_default()
        );
        // No total yet: an empty bar (not an "indeterminate" one).
        let (v, m) = match m.filter(|m| *m > 0) {
            Some(m) => (v.unwrap_or(0).min(m), m),
            None => (0, 1),
        };
        let _ = write!(self.o, " max=\"{m}\" value=\"{v}\"");
        self.o.push_str("></progress>");
    }

    /// A list: its `<template>` and one row per item of the array at `path` (or the `none`
    /// message). `row` writes one row (a `data-scope` element) for an item, or the empty
    /// template for `None`.
    fn list(
        &mut self,
        attrs: &str,
        scope: Option<&Value>,
        path: &str,
        none: Option<&str>,
        row: &dyn Fn(&mut Self, Option<&Value>),
    ) {
        let _ = write!(
            self.o,
            "<div{attrs} data-list=\"{}\"{}><template>",
            esc(path),
            none.map(|n| format!(" data-none=\"{}\"", esc(n)))
                .unwrap_or_default()
        );
        row(self, None);
        self.push("</template>");
        if let Some(s) = scope {
            let items = lookup(s, path).and_then(Value::as_array);
            match items {
                Some(items) if !items.is_empty() => {
                    for it in items {
                        row(self, Some(it));
                    }
                }
                _ => {
                    if let Some(n) = none {
                        let t = self.t(n);
                        let _ = write!(self.o, "<p class=\"none\">{t}</p>");
                    }
                }
            }
        }
        self.push("</div>");
    }

    /// A labelled figure in a `<dl>`.
    fn dt_fig(&mut self, label: &str, scope: Option<&Value>, k: &str, f: &str, null: Option<&str>) {
        let l = self.t(label);
        let _ = write!(self.o, "<dt>{l}</dt>");
        self.fig("dd", "", scope, k, f, null);
    }
}

fn section(h: &mut H, id: &str, title: &str) {
    let t = h.t(title);
    let _ = write!(h.o, "<section id=\"{id}\"><h2>{t}</h2>");
}

fn header(h: &mut H, st: &Value, lang: &str) {
    let s = Some(st);
    h.push("<header><div class=\"top\"><h1>");
    h.label("page.heading");
    h.push("</h1><nav class=\"langs\" aria-label=\"");
    h.label("page.language");
    h.push("\">");
    for c in catalogs() {
        let _ = write!(
            h.o,
            "<a href=\"?lang={0}\" hreflang=\"{0}\" lang=\"{0}\"{1}>{2}</a>",
            c.code,
            if c.code == lang {
                " aria-current=\"true\""
            } else {
                ""
            },
            esc(c.name())
        );
    }
    h.push("</nav></div><p class=\"who\">");
    h.label("page.node");
    h.push(" ");
    h.fig("code", "", s, "node_id", "short", None);
    h.push(" · ");
    h.msg(
        "span",
        "",
        s,
        "page.node_line",
        &[("site", "site"), ("version", "version")],
    );
    h.push("</p><p class=\"live\"><span id=\"updated\">");
    let now = jiff::ZonedDateTime::now();
    let time = h.f.digits(&format!(
        "{:02}:{:02}:{:02}",
        now.hour(),
        now.minute(),
        now.second()
    ));
    let t = esc(&h.f.pat("page.updated", &[("time", time)]));
    h.push(&t);
    h.push("</span> <span id=\"livenote\" hidden>");
    h.label("page.live");
    h.push("</span><noscript>");
    h.label("page.nojs");
    h.push("</noscript></p><p id=\"unreachable\" class=\"alert\" hidden>");
    h.label("page.unreachable");
    h.push("</p></header>");
}

fn health(h: &mut H, st: &Value) {
    let s = Some(st);
    section(h, "health", "health.title");
    h.push("<div class=\"states\"><p>");
    h.label("health.node");
    h.push(": ");
    h.fig(
        "strong",
        " class=\"badge\"",
        s,
        "health.node",
        "enum:health.state",
        None,
    );
    h.push("</p><p>");
    h.label("health.site");
    h.push(": ");
    h.fig(
        "strong",
        " class=\"badge\"",
        s,
        "health.site",
        "enum:health.state",
        None,
    );
    h.push("</p></div>");
    h.list(
        " class=\"problems\"",
        s,
        "health.problems",
        Some("health.all_ok"),
        &|h, it| {
            h.push("<div class=\"row problem\" data-scope><p>");
            h.fig(
                "span",
                " class=\"badge\"",
                it,
                "level",
                "enum:health.level",
                None,
            );
            h.push(" ");
            h.fig(
                "span",
                " class=\"scope\"",
                it,
                "scope",
                "enum:health.scope",
                None,
            );
            h.push("</p><p class=\"text\">");
            h.msgk("span", "", it, "code", "problem.", ".text");
            h.push("</p><p class=\"fix\"><b>");
            h.label("health.fix");
            h.push("</b> ");
            h.msgk("span", "", it, "code", "problem.", ".fix");
            h.push("</p></div>");
        },
    );
    let attr = h.show(s, "health.other_warnings");
    let _ = write!(h.o, "<div class=\"other\"{attr}><p>");
    h.label("health.other.title");
    h.push("</p>");
    h.list("", s, "health.other_warnings", None, &|h, it| {
        h.push("<div class=\"row\" data-scope>");
        h.fig("span", "", it, ".", "text", None);
        h.push("</div>");
    });
    h.push("</div></section>");
}

/// A card and its heading: the span's name, or "since <install date>".
fn card_head(h: &mut H, s: Option<&Value>, p: &str, title: &str) {
    h.push("<div class=\"card\"><h3>");
    if p == "history.since_install" {
        h.msg(
            "span",
            "",
            s,
            title,
            &[("since_date", "history.since_install.since_date")],
        );
    } else {
        h.label(title);
    }
    h.push("</h3>");
}

fn saved(h: &mut H, st: &Value) {
    let s = Some(st);
    section(h, "saved", "saved.title");
    let t = h.t("saved.explain");
    let _ = write!(h.o, "<p class=\"explain\">{t}</p><div class=\"cards\">");
    for (p, title) in [
        ("history.today", "saved.today"),
        ("history.month", "saved.month"),
        ("history.since_install", "saved.since"),
    ] {
        card_head(h, s, p, title);
        h.push("<dl>");
        h.dt_fig("saved.served", s, &format!("{p}.served"), "bytes", None);
        h.dt_fig("saved.upstream", s, &format!("{p}.upstream"), "bytes", None);
        let t = h.t("saved.saved");
        let _ = write!(h.o, "<dt>{t}</dt><dd>");
        h.fig(
            "strong",
            " class=\"big\"",
            s,
            &format!("{p}.saved"),
            "bytes",
            None,
        );
        h.push("</dd></dl>");
        let pct = format!("{p}.saved_pct");
        let attr = format!(" class=\"pct\"{}", h.show(s, &pct));
        h.msg("p", &attr, s, "saved.saved_pct", &[("saved_pct", &pct)]);
        h.push("</div>");
    }
    h.push("</div>");
    chart(h, st);
    h.push("</section>");
}

/// The chart's drawing area, in SVG user units.
const CHART_W: f64 = 600.0;
const CHART_H: f64 = 150.0;

fn chart(h: &mut H, st: &Value) {
    let s = Some(st);
    let days: Vec<Value> = lookup(st, "history.days")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let n = days.len().max(1) as f64;
    let max = lookup(st, "history.days_max")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .max(1) as f64;
    let slot = CHART_W / n;
    let bar = (slot / 2.0 - 1.5).max(1.0);
    let t = h.t("saved.chart");
    let _ = write!(
        h.o,
        "<h3>{t}</h3><svg class=\"chart\" viewBox=\"0 0 {CHART_W} {}\" role=\"img\" aria-label=\"{t}\" data-chart=\"history.days\" data-max=\"history.days_max\">",
        CHART_H + 22.0
    );
    let _ = write!(
        h.o,
        "<line x1=\"0\" y1=\"{CHART_H}\" x2=\"{CHART_W}\" y2=\"{CHART_H}\" class=\"axis\"/>"
    );
    for (i, d) in days.iter().enumerate() {
        for (j, series) in ["served", "upstream"].into_iter().enumerate() {
            let v = d[series].as_u64().unwrap_or(0) as f64;
            let height = (v / max * CHART_H).round();
            let x = i as f64 * slot + 1.0 + j as f64 * (bar + 1.0);
            let _ = write!(
                h.o,
                "<rect class=\"{series}\" data-i=\"{i}\" data-s=\"{series}\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{height:.1}\"></rect>",
                CHART_H - height
            );
        }
    }
    let last = days.len().saturating_sub(1);
    for (i, anchor) in [(0, "start"), (last / 2, "middle"), (last, "end")] {
        let x = match anchor {
            "start" => 0.0,
            "end" => CHART_W,
            _ => i as f64 * slot + slot / 2.0,
        };
        h.fig(
            "text",
            &format!(
                " x=\"{x:.1}\" y=\"{}\" text-anchor=\"{anchor}\"",
                CHART_H + 17.0
            ),
            s,
            &format!("history.days.{i}.date"),
            "dateshort",
            None,
        );
    }
    h.push("</svg><p class=\"legend\"><span class=\"key served\"></span> ");
    h.label("saved.chart_served");
    h.push(" <span class=\"key upstream\"></span> ");
    h.label("saved.chart_upstream");
    h.push(" · ");
    h.msg(
        "span",
        "",
        s,
        "saved.chart_max",
        &[("max_bytes", "history.days_max")],
    );
    h.push("</p>");
}

fn sources(h: &mut H, st: &Value) {
    let s = Some(st);
    section(h, "sources", "sources.title");
    let t = h.t("sources.explain");
    let _ = write!(h.o, "<p class=\"explain\">{t}</p><div class=\"cards\">");
    for (p, title) in [
        ("history.today", "sources.today"),
        ("history.since_install", "sources.since"),
    ] {
        card_head(h, s, p, title);
        h.push("<dl class=\"bars\">");
        for src in ["store", "peers", "seed", "upstream"] {
            let t = h.t(&format!("sources.{src}"));
            let _ = write!(h.o, "<dt>{t}</dt><dd>");
            h.progress(
                &format!(" class=\"src {src}\""),
                s,
                &format!("{p}.{src}"),
                &format!("{p}.sources"),
            );
            h.push(" ");
            h.fig("span", "", s, &format!("{p}.{src}"), "bytes", None);
            h.push("</dd>");
        }
        h.push("</dl></div>");
    }
    h.push("</div></section>");
}

fn transfers(h: &mut H, st: &Value) {
    section(h, "transfers", "transfers.title");
    h.list(
        " class=\"rows\"",
        Some(st),
        "transfers",
        Some("transfers.none"),
        &|h, it| {
            h.push("<div class=\"row transfer\" data-scope><p>");
            h.fig("code", " class=\"path\"", it, "path", "text", None);
            h.push(" <small>");
            h.fig("span", "", it, "repo", "text", None);
            h.push(" · ");
            h.label("transfers.source");
            h.push(": ");
            h.fig("span", "", it, "source", "enum:transfers.from", None);
            h.push("</small></p><p>");
            h.progress("", it, "done", "size");
            h.push(" ");
            h.fig("span", " class=\"pct\"", it, "percent", "pct", None);
            h.push(" · ");
            h.msg(
                "span",
                "",
                it,
                "transfers.of",
                &[("done_bytes", "done"), ("size_bytes", "size")],
            );
            h.push(" · ");
            h.fig("span", "", it, "bytes_per_sec", "rate", None);
            h.push("</p></div>");
        },
    );
    h.push("</section>");
}

/// The node's sneakernet job (`bundle_job`: the running or last `export`, `import` or `have`):
/// what, where, how far, and why it failed; "none" when there has been none.
fn bundle_job(h: &mut H, st: &Value) {
    let s = Some(st);
    section(h, "bundle", "bundle.title");
    let attr = h.hide(s, "bundle_job");
    let t = h.t("bundle.none");
    let _ = write!(h.o, "<p class=\"none\"{attr}>{t}</p>");
    let attr = h.show(s, "bundle_job");
    let _ = write!(h.o, "<dl class=\"facts\"{attr}>");
    h.dt_fig(
        "bundle.job",
        s,
        "bundle_job.command",
        "enum:bundle.command",
        None,
    );
    let t = h.t("bundle.target");
    let _ = write!(h.o, "<dt>{t}</dt><dd>");
    h.fig("code", "", s, "bundle_job.target", "text", None);
    let t = h.t("bundle.status");
    let _ = write!(h.o, "</dd><dt>{t}</dt><dd>");
    h.fig(
        "span",
        " class=\"badge job\"",
        s,
        "bundle_job.state",
        "enum:bundle.state",
        None,
    );
    let t = h.t("bundle.progress");
    let _ = write!(h.o, "</dd><dt>{t}</dt><dd>");
    h.progress(
        " class=\"job\"",
        s,
        "bundle_job.progress.done_bytes",
        "bundle_job.progress.bytes",
    );
    h.push(" ");
    h.msg(
        "span",
        "",
        s,
        "bundle.progress_of",
        &[
            ("done_files", "bundle_job.progress.done_files"),
            ("files", "bundle_job.progress.files"),
            ("done_bytes", "bundle_job.progress.done_bytes"),
            ("total_bytes", "bundle_job.progress.bytes"),
        ],
    );
    h.push("</dd>");
    let attr = h.show(s, "bundle_job.error");
    let _ = write!(h.o, "<div class=\"pair\"{attr}>");
    h.dt_fig("bundle.error", s, "bundle_job.error", "text", None);
    h.push("</div></dl></section>");
}

fn repos(h: &mut H, st: &Value) {
    section(h, "repos", "repos.title");
    h.list(" class=\"rows\"", Some(st), "repos", None, &|h, it| {
        h.push("<div class=\"row repo\" data-scope><h3>");
        h.fig("span", "", it, "name", "text", None);
        h.push("</h3><p>");
        h.label("repos.source_state");
        h.push(": ");
        h.fig(
            "span",
            " class=\"badge reach\"",
            it,
            "upstream_offline",
            "enum:repos.reach",
            None,
        );
        h.push("</p>");
        h.list("", it, "snapshots", Some("repos.none"), &|h, sn| {
            h.push("<div class=\"row tree\" data-scope><code>");
            h.fig("span", "", sn, "tree", "text", None);
            h.push("</code> ");
            h.msg(
                "span",
                "",
                sn,
                "repos.tree_line",
                &[
                    ("age_secs", "age_secs"),
                    ("checked_secs", "checked_secs_ago"),
                ],
            );
            h.push(" ");
            h.fig(
                "span",
                " class=\"badge stale\"",
                sn,
                "stale",
                "enum:repos.stale",
                None,
            );
            h.push(" ");
            h.fig("span", "", sn, "source", "enum:repos.source", None);
            h.push("</div>");
        });
        h.push("</div>");
    });
    h.push("</section>");
}

fn nodes(h: &mut H, st: &Value) {
    let s = Some(st);
    section(h, "nodes", "nodes.title");
    h.push("<div class=\"rows\"><div class=\"row node self\"><code>");
    h.fig("span", "", s, "node_id", "short", None);
    h.push("</code> ");
    h.fig("span", "", s, "quic_listen", "text", None);
    h.push(" <span class=\"badge\" data-v=\"self\">");
    h.label("nodes.state.self");
    h.push("</span></div></div>");
    h.list(
        " class=\"rows\"",
        s,
        "peers",
        Some("nodes.none"),
        &|h, it| {
            h.push("<div class=\"row node\" data-scope><code>");
            h.fig("span", "", it, "id", "short", None);
            h.push("</code> ");
            h.fig("span", "", it, "addr", "text", None);
            h.push(" ");
            h.fig(
                "span",
                " class=\"badge\"",
                it,
                "state",
                "enum:nodes.state",
                None,
            );
            h.push(" <small>");
            h.label("nodes.last_contact");
            h.push(": ");
            h.fig(
                "span",
                "",
                it,
                "last_contact_secs",
                "ago",
                Some("nodes.never"),
            );
            h.push(" · ");
            h.label("nodes.failures");
            h.push(": ");
            h.fig("span", "", it, "failures", "int", None);
            h.push("</small></div>");
        },
    );
    h.push("</section>");
}

fn disk(h: &mut H, st: &Value) {
    let s = Some(st);
    section(h, "disk", "disk.title");
    h.push("<dl class=\"facts\">");
    let t = h.t("disk.used");
    let _ = write!(h.o, "<dt>{t}</dt><dd>");
    let attr = h.show(s, "store.max_size");
    h.msg(
        "span",
        &attr,
        s,
        "disk.used_of",
        &[
            ("used_bytes", "store.stored_bytes"),
            ("cap_bytes", "store.max_size"),
        ],
    );
    let attr = h.hide(s, "store.max_size");
    h.fig("span", &attr, s, "store.stored_bytes", "bytes", None);
    let attr = format!(" class=\"disk\"{}", h.show(s, "store.max_size"));
    h.progress(&attr, s, "store.stored_bytes", "store.max_size");
    h.push("</dd>");
    h.dt_fig("disk.cap", s, "store.max_size", "bytes", Some("disk.nocap"));
    h.dt_fig(
        "disk.free",
        s,
        "store.free_bytes",
        "bytes",
        Some("units.none"),
    );
    h.dt_fig("disk.min_free", s, "store.min_free", "bytes", None);
    h.dt_fig("disk.files", s, "stored_blobs", "int", None);
    let t = h.t("disk.evicted");
    let _ = write!(h.o, "<dt>{t}</dt>");
    h.msg(
        "dd",
        "",
        s,
        "disk.evicted_of",
        &[
            ("files", "store.evicted_files"),
            ("evicted_bytes", "store.evicted_bytes"),
        ],
    );
    h.dt_fig(
        "disk.passthrough",
        s,
        "store.passthrough",
        "enum:disk.kept",
        None,
    );
    h.push("</dl></section>");
}

fn uplink(h: &mut H, st: &Value) {
    let s = Some(st);
    section(h, "uplink", "uplink.title");
    h.push("<dl class=\"facts\">");
    h.dt_fig(
        "uplink.cap",
        s,
        "uplink.max_rate",
        "rate",
        Some("uplink.nocap"),
    );
    h.dt_fig(
        "uplink.share",
        s,
        "uplink.share",
        "rate",
        Some("uplink.nocap"),
    );
    let t = h.t("uplink.rate");
    let _ = write!(h.o, "<dt>{t}</dt>");
    h.msg(
        "dd",
        "",
        s,
        "uplink.rate_of",
        &[
            ("interactive_rate", "uplink.rate.interactive"),
            ("background_rate", "uplink.rate.background"),
        ],
    );
    h.dt_fig(
        "uplink.hours",
        s,
        "uplink.background.hours",
        "join",
        Some("uplink.any_time"),
    );
    let t = h.t("uplink.background");
    let _ = write!(h.o, "<dt>{t}</dt><dd>");
    h.fig(
        "span",
        " class=\"badge allowed\"",
        s,
        "uplink.background.allowed",
        "enum:uplink.allowed",
        None,
    );
    h.list(
        " class=\"inline\"",
        s,
        "uplink.background.why_not",
        None,
        &|h, it| {
            h.push("<span class=\"why\" data-scope>");
            h.fig("span", "", it, ".", "enum:uplink.why", None);
            h.push("</span>");
        },
    );
    h.push("</dd>");
    h.dt_fig(
        "uplink.budget",
        s,
        "uplink.budget.limit",
        "bytes",
        Some("uplink.nobudget"),
    );
    let t = h.t("uplink.budget_used");
    let _ = write!(h.o, "<dt>{t}</dt><dd>");
    h.fig("span", "", s, "uplink.budget.used", "bytes", None);
    let attr = format!(" class=\"budget\"{}", h.show(s, "uplink.budget.limit"));
    h.progress(&attr, s, "uplink.budget.used", "uplink.budget.limit");
    h.push("</dd>");
    let attr = h.show(s, "uplink.budget.limit");
    let _ = write!(h.o, "<div class=\"pair\"{attr}>");
    h.dt_fig(
        "uplink.budget_left",
        s,
        "uplink.budget.left",
        "bytes",
        Some("units.none"),
    );
    h.dt_fig(
        "uplink.resets",
        s,
        "uplink.budget.resets_on",
        "date",
        Some("units.none"),
    );
    h.push("</div></dl></section>");
}

fn advisories(h: &mut H, st: &Value) {
    let s = Some(st);
    section(h, "advisories", "advisories.title");
    let attr = h.hide(s, "advisories");
    let t = h.t("advisories.not_yet");
    let _ = write!(h.o, "<p class=\"none\"{attr}>{t}</p>");
    let attr = format!(" class=\"rows\"{}", h.show(s, "advisories"));
    h.list(&attr, s, "advisories", Some("advisories.none"), &|h, it| {
        h.push("<div class=\"row advisory\" data-scope><p>");
        h.fig(
            "span",
            " class=\"badge sev\"",
            it,
            "severity",
            "enum:advisories.severity",
            None,
        );
        h.push(" ");
        h.fig("b", "", it, "id", "text", None);
        h.push(" ");
        h.fig("span", "", it, "title", "text", None);
        h.push("</p><p><small>");
        h.label("advisories.issued");
        h.push(": ");
        h.fig("span", "", it, "issued", "date", Some("units.none"));
        h.push(" · ");
        h.label("advisories.cves");
        h.push(": ");
        h.fig("span", "", it, "cves", "join", Some("units.none"));
        h.push("</small> ");
        h.fig(
            "span",
            " class=\"badge ready\"",
            it,
            "ready",
            "enum:advisories.ready",
            None,
        );
        h.push("</p>");
        h.list(" class=\"pkgs\"", it, "packages", None, &|h, p| {
            h.push("<div class=\"row pkg\" data-scope><code>");
            h.fig("span", "", p, "name", "text", None);
            h.push(".");
            h.fig("span", "", p, "arch", "text", None);
            h.push("</code> ");
            h.fig("span", "", p, "evr", "evr", None);
            h.push(" ");
            h.fig(
                "span",
                " class=\"badge held\"",
                p,
                "held",
                "enum:advisories.held",
                None,
            );
            h.push("</div>");
        });
        h.push("</div>");
    });
    let attr = h.show(s, "prefetch");
    h.msg(
        "p",
        &attr,
        s,
        "advisories.prefetch",
        &[
            ("done", "prefetch.done"),
            ("done_bytes", "prefetch.bytes_done"),
            ("waiting", "prefetch.waiting"),
            ("waiting_bytes", "prefetch.bytes_waiting"),
        ],
    );
    h.push("</section>");
}

fn events(h: &mut H, st: &Value) {
    section(h, "events", "events.title");
    h.list(
        " class=\"rows\"",
        Some(st),
        "recent_warnings",
        Some("events.none"),
        &|h, it| {
            h.push("<div class=\"row event\" data-scope><p>");
            h.msgk("span", "", it, "code", "event.", "");
            h.push("</p><p><small>");
            h.msg("span", "", it, "events.times", &[("count", "count")]);
            h.push(", ");
            h.fig("span", "", it, "ago_secs", "ago", None);
            h.push("</small></p></div>");
        },
    );
    h.push("</section>");
}

/// Messages the script always needs: formats and the "updated" line.
const SCRIPT_ALWAYS: &[&str] = &[
    "meta.",
    "units.",
    "date.",
    "month.",
    "month_short.",
    "page.updated",
];

/// The catalog for the page's script, as JSON safe inside a `<script>` element: the messages
/// the page's markup can ask for (`data-msg`, `data-null`, `data-none` keys; `enum:` and
/// `data-pre` prefixes, found in `html` itself) and [`SCRIPT_ALWAYS`]; static labels are
/// not repeated.
fn script_catalog(lang: &str, html: &str) -> String {
    let mut exact: Vec<&str> = Vec::new();
    let mut prefixes: Vec<String> = SCRIPT_ALWAYS.iter().map(|p| p.to_string()).collect();
    for (attr, is_prefix) in [
        ("data-msg=\"", false),
        ("data-null=\"", false),
        ("data-none=\"", false),
        ("data-f=\"enum:", true),
        ("data-pre=\"", true),
    ] {
        for part in html.split(attr).skip(1) {
            let v = part.split('"').next().unwrap_or("");
            if is_prefix {
                let p = if v.ends_with('.') {
                    v.to_string()
                } else {
                    format!("{v}.")
                };
                if !prefixes.contains(&p) {
                    prefixes.push(p);
                }
            } else if !exact.contains(&v) {
                exact.push(v);
            }
        }
    }
    let wanted = |k: &str| exact.contains(&k) || prefixes.iter().any(|p| k.starts_with(p.as_str()));
    let mut out = Map::new();
    // English first, so the script falls back key by key as `Catalog::get` does.
    for cat in [catalog(i18n::DEFAULT), catalog(lang)] {
        for (k, v) in cat.msgs.iter().filter(|(k, _)| wanted(k)) {
            out.insert(k.clone(), Value::String(v.clone()));
        }
    }
    Value::Object(out).to_string().replace("</", "<\\/")
}

/// The whole page.
pub fn render(st: &Value, lang: &str) -> String {
    let cat = catalog(lang);
    let mut h = H {
        o: String::with_capacity(48 * 1024),
        f: Fmt::new(cat),
    };
    let title = esc(&h.f.pat(
        "page.title",
        &[("site", st["site"].as_str().unwrap_or("").to_string())],
    ));
    let _ = write!(
        h.o,
        "<!doctype html><html lang=\"{lang}\" data-poll=\"{POLL_MS}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\"><title>{title}</title><style>{CSS}</style></head><body data-scope>"
    );
    header(&mut h, st, lang);
    h.push("<main>");
    health(&mut h, st);
    saved(&mut h, st);
    sources(&mut h, st);
    transfers(&mut h, st);
    bundle_job(&mut h, st);
    repos(&mut h, st);
    nodes(&mut h, st);
    disk(&mut h, st);
    uplink(&mut h, st);
    advisories(&mut h, st);
    events(&mut h, st);
    h.push("</main><footer><p>");
    h.label("page.raw");
    let (a, b) = (h.t("page.status_json"), h.t("page.metrics"));
    let _ = write!(
        h.o,
        " <a href=\"/api/status\">{a}</a> · <a href=\"/metrics\">{b}</a></p></footer>"
    );
    let messages = script_catalog(lang, &h.o);
    let _ = writeln!(
        h.o,
        "<script type=\"application/json\" id=\"i18n\">{messages}</script><script>{JS}</script></body></html>"
    );
    h.o
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status() -> Value {
        json!({
            "version": "0.1.0", "site": "school", "node_id": "0123456789abcdef0123",
            "quic_listen": "0.0.0.0:7701",
            "bytes_served": 5_000_000, "stored_blobs": 12,
            "repos": [{"name": "almalinux", "upstream_offline": true, "snapshots": [
                {"tree": "9/BaseOS/x86_64/os/", "age_secs": 7200, "checked_secs_ago": 60, "stale": false, "source": "upstream", "confirmed_upstream": true}
            ]}],
            "peers": [{"id": "fedcba9876543210", "addr": "192.0.2.9:7701", "healthy": true, "state": "healthy", "last_contact_secs": 2, "failures": 0}],
            "store": {"stored_bytes": 1_500_000, "max_size": 3_000_000, "min_free": 1000, "free_bytes": 9_000_000,
                      "evicted_files": 0, "evicted_bytes": 0, "passthrough": false},
            "uplink": {"max_rate": null, "share": null, "rate": {"interactive": 0, "background": 0},
                       "background": {"allowed": false, "why_not": ["outside_window"], "hours": ["22:00-06:00"]},
                       "budget": {"limit": null, "used": 100, "left": null, "resets_on": "2026-06-01", "spent": false}},
            "transfers": [{"repo": "almalinux", "path": "9/BaseOS/x86_64/os/Packages/a.rpm", "source": "upstream", "done": 512, "size": 1024, "percent": 50, "bytes_per_sec": 2048, "secs": 1}],
            "history": {"since_install": {"served": 5_000_000, "upstream": 1_000_000, "saved": 4_000_000, "saved_pct": 80, "store": 4_000_000, "peers": 0, "seed": 0, "sources": 5_000_000, "since_date": "2026-05-01"},
                        "today": {"served": 2048, "upstream": 1024, "saved": 1024, "saved_pct": 50, "store": 0, "peers": 0, "seed": 0, "sources": 1024, "date": "2026-05-12"},
                        "month": {"served": 2048, "upstream": 1024, "saved": 1024, "saved_pct": 50, "month": "2026-05"},
                        "days": [{"date": "2026-05-11", "served": 0, "upstream": 0}, {"date": "2026-05-12", "served": 2048, "upstream": 1024}],
                        "days_max": 2048},
            "recent_warnings": [{"code": "upstream_offline", "repo": "almalinux", "count": 1, "at": 1, "ago_secs": 60}],
            "health": {"node": "warn", "site": "warn", "problems": [{"code": "upstream_offline", "scope": "node", "level": "warn", "repo": "almalinux"}]},
            "bundle_job": {"command": "export", "target": "/media/usb/cache", "state": "running", "started": 1_780_000_000,
                           "progress": {"files": 40, "bytes": 4096, "done_files": 10, "done_bytes": 1024}, "report": null, "error": null},
        })
    }

    #[test]
    fn the_page_shows_the_status_figures_formatted_and_raw() {
        let html = render(&status(), "en");
        assert!(html.starts_with("<!doctype html><html lang=\"en\""));
        assert!(
            html.contains(
                "data-k=\"history.today.served\" data-f=\"bytes\" data-v=\"2048\">2.0 KiB<"
            ),
            "{html}"
        );
        assert!(html.contains("The internet source of “almalinux” cannot be reached."));
        assert!(html.contains(">Needs attention<"));
        assert!(html.contains("data-v=\"50\">50%<"));
        assert!(html.contains(">1.0 KiB of 2.0 KiB<") || html.contains("512 B of 1.0 KiB"));
        assert!(html.contains("outside the background hours"));
        // No advisories key: "not known yet", the (empty) list hidden.
        assert!(html.contains("Not known yet"));
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "no outside links"
        );
        assert!(html.len() < 64 * 1024, "{} bytes", html.len());
    }

    #[test]
    fn hindi_and_nepali_pages_use_their_words_and_digits() {
        let hi = render(&status(), "hi");
        assert!(hi.contains("<html lang=\"hi\""));
        assert!(hi.contains("data-v=\"50\">50%<"), "Hindi uses 0-9");
        let ne = render(&status(), "ne");
        assert!(
            ne.contains("data-v=\"50\">५०%<"),
            "Nepali uses Devanagari digits"
        );
        assert!(ne.contains("२.० KiB"));
        // A message for every code shown: nothing falls back to a bare key.
        for page in [&hi, &ne] {
            assert!(!page.contains(">problem."), "a problem without a message");
            assert!(!page.contains(">health.state"), "a state without a message");
        }
    }

    #[test]
    fn lists_carry_their_row_template_and_empty_lists_say_so() {
        let mut st = status();
        st["transfers"] = json!([]);
        st["advisories"] = json!([]);
        let html = render(&st, "en");
        assert!(html.contains("data-list=\"transfers\" data-none=\"transfers.none\"><template>"));
        assert!(html.contains("<p class=\"none\">None right now.</p>"));
        assert!(html.contains("<p class=\"none\">None known.</p>"));
        // A value with markup in it is text, not markup.
        st["site"] = json!("<b>x</b>");
        let html = render(&st, "en");
        assert!(html.contains("&lt;b&gt;x&lt;/b&gt;") && !html.contains("<b>x</b>"));
    }

    #[test]
    fn the_bundle_job_shows_its_progress_its_error_or_none() {
        let mut st = status();
        let html = render(&st, "en");
        assert!(html.contains(
            "data-k=\"bundle_job.command\" data-f=\"enum:bundle.command\" data-v=\"export\">copying the cache to a disk (export)<"
        ));
        assert!(html.contains(">/media/usb/cache<"));
        assert!(html.contains("data-v=\"running\">running<"));
        assert!(html.contains(
            "<progress class=\"job\" data-k=\"bundle_job.progress.done_bytes\" data-max=\"bundle_job.progress.bytes\" data-v=\"1024\" max=\"4096\" value=\"1024\">"
        ));
        assert!(
            html.contains(">10 of 40 files, 1.0 KiB of 4.0 KiB<"),
            "{html}"
        );
        assert!(html.contains("<p class=\"none\" data-hide=\"bundle_job\" hidden>"));
        assert!(html.contains("<div class=\"pair\" data-show=\"bundle_job.error\" hidden>"));
        // The script gets the words for every state and command.
        assert!(html.contains("\"bundle.state.failed\":\"failed\""));

        st["bundle_job"]["state"] = json!("failed");
        st["bundle_job"]["error"] = json!("the disk is full");
        let ne = render(&st, "ne");
        assert!(ne.contains("data-v=\"failed\">असफल<"));
        assert!(ne.contains("<div class=\"pair\" data-show=\"bundle_job.error\">"));
        assert!(ne.contains(">the disk is full<"));
        assert!(ne.contains(">४० मध्ये १० फाइल, ४.० KiB मध्ये १.० KiB<"), "{ne}");

        st["bundle_job"] = Value::Null;
        let html = render(&st, "hi");
        assert!(html.contains(
            "<p class=\"none\" data-hide=\"bundle_job\">नोड शुरू होने के बाद से डिस्क का कोई काम नहीं चला।</p>"
        ));
        assert!(html.contains("<dl class=\"facts\" data-show=\"bundle_job\" hidden>"));
    }

    #[test]
    fn a_language_choice_is_remembered() {
        let p = page(&status(), i18n::choose(Some("lang=ne"), None, None));
        assert_eq!(p.lang, "ne");
        assert!(p.set_cookie.unwrap().starts_with("lang=ne;"));
        let p = page(&status(), i18n::choose(None, None, Some("hi")));
        assert_eq!((p.lang, p.set_cookie), ("hi", None));
    }
}
