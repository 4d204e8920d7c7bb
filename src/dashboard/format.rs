//! Numbers, sizes, rates, durations and dates in a language's own way, from its catalog's
//! `meta.*`, `units.*`, `date.*` and month names: no ICU, a few rules.
//!
//! - Digits: `latn` (0–9) or `deva` (०–९). Nepali pages use Devanagari digits (customary in
//!   Nepal, and CLDR's default for `ne`); Hindi pages use 0–9 (CLDR's default for `hi`, and
//!   what Indian government and press sites print).
//! - Grouping: `3` (1,234,567) or `indian` (12,34,567: the last three digits, then pairs).
//! - Sizes in binary units, one decimal below 100 (`1.5 MiB`, `512 B`, `123 GiB`), rounded half
//!   up in integer arithmetic so that the page's script (`assets/dashboard.js`, which mirrors
//!   this module rule for rule) prints exactly the same text.
//! - Durations in one unit, rounded down (`45 s`, `12 min`, `3 h`, `2 days`); dates are the
//!   Gregorian calendar (`12 May 2026`, `१२ मे २०२६`; Nepal's Bikram Sambat is not done).
//!
//! [`Fmt::value`] is the one entry point by format name that the page, its script and the
//! terminal table share: `int`, `bytes`, `rate`, `pct`, `dur`, `ago`, `date`, `dateshort`,
//! `month`, `enum:<prefix>`, `join`, `evr`, `short`, `text`. [`Fmt::message`] fills a
//! message's `{placeholders}`, formatting each by its name's ending (`_bytes`, `_rate`,
//! `_secs`, `_pct`, `_date`; other numbers as `int`).

use serde_json::{Map, Value};

use super::i18n::Catalog;

/// Formats in one language.
pub struct Fmt<'a> {
    pub cat: &'a Catalog,
    deva: bool,
    indian: bool,
}

const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];

/// Fills `{name}` placeholders from `args` (already formatted); unknown ones stay as written.
pub fn fill(pattern: &str, args: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut rest = pattern;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match after.find('}') {
            Some(j)
                if after[..j]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                let name = &after[..j];
                match args.iter().find(|(n, _)| *n == name) {
                    Some((_, v)) => out.push_str(v),
                    None => {
                        out.push('{');
                        out.push_str(name);
                        out.push('}');
                    }
                }
                rest = &after[j + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The value at a dotted path (`uplink.budget.used`, `days.29.served`; `.` is `v` itself).
pub fn lookup<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    if path == "." || path.is_empty() {
        return Some(v);
    }
    let mut cur = v;
    for part in path.split('.') {
        cur = match cur {
            Value::Object(m) => m.get(part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// The raw form of a value for `data-v` (what the script writes there too).
pub fn raw(v: Option<&Value>) -> String {
    match v {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

impl<'a> Fmt<'a> {
    pub fn new(cat: &'a Catalog) -> Fmt<'a> {
        Fmt {
            cat,
            deva: cat.get("meta.digits") == "deva",
            indian: cat.get("meta.grouping") == "indian",
        }
    }

    /// A message with its placeholders filled (already formatted values).
    pub fn pat(&self, key: &str, args: &[(&str, String)]) -> String {
        fill(self.cat.get(key), args)
    }

    /// `s` with its ASCII digits in the language's digits.
    pub fn digits(&self, s: &str) -> String {
        if !self.deva {
            return s.to_string();
        }
        s.chars()
            .map(|c| match c.to_digit(10) {
                Some(d) => char::from_u32(0x966 + d).unwrap_or(c),
                None => c,
            })
            .collect()
    }

    fn group(&self, s: &str) -> String {
        if s.len() <= 3 {
            return s.to_string();
        }
        let sep = self.cat.get("meta.group_sep");
        let (rest, last) = s.split_at(s.len() - 3);
        let n = if self.indian { 2 } else { 3 };
        let mut parts = Vec::new();
        let mut rest = rest;
        while rest.len() > n {
            let (a, b) = rest.split_at(rest.len() - n);
            parts.push(b);
            rest = a;
        }
        parts.push(rest);
        parts.reverse();
        let mut out = parts.join(sep);
        out.push_str(sep);
        out.push_str(last);
        out
    }

    /// A whole number, grouped.
    pub fn int(&self, n: u64) -> String {
        self.digits(&self.group(&n.to_string()))
    }

    /// A number given in tenths, with one decimal.
    fn dec1(&self, tenths: u64) -> String {
        format!(
            "{}{}{}",
            self.int(tenths / 10),
            self.cat.get("meta.decimal"),
            self.digits(&(tenths % 10).to_string())
        )
    }

    pub fn bytes(&self, v: u64) -> String {
        if v < 1024 {
            return self.pat(
                "units.size",
                &[("n", self.int(v)), ("unit", self.cat.get("units.B").into())],
            );
        }
        let v = u128::from(v);
        let (mut k, mut div) = (0usize, 1024u128);
        while v >= div * 1024 && k < UNITS.len() - 1 {
            div *= 1024;
            k += 1;
        }
        let tenths = (v * 10 + div / 2) / div;
        let n = if tenths < 1000 {
            self.dec1(tenths as u64)
        } else {
            self.int(((v + div / 2) / div) as u64)
        };
        let unit = format!("units.{}", UNITS[k]);
        self.pat(
            "units.size",
            &[("n", n), ("unit", self.cat.get(&unit).into())],
        )
    }

    pub fn rate(&self, v: u64) -> String {
        self.pat("units.per_sec", &[("v", self.bytes(v))])
    }

    pub fn pct(&self, v: u64) -> String {
        self.pat("units.pct", &[("n", self.int(v))])
    }

    pub fn dur(&self, s: u64) -> String {
        let (key, n) = match s {
            0..60 => ("units.secs", s),
            60..3600 => ("units.mins", s / 60),
            3600..86400 => ("units.hours", s / 3600),
            _ if s / 86400 == 1 => ("units.day", 1),
            _ => ("units.days", s / 86400),
        };
        self.pat(key, &[("n", self.int(n))])
    }

    pub fn ago(&self, s: u64) -> String {
        if s < 5 {
            return self.cat.get("units.just_now").into();
        }
        self.pat("units.ago", &[("dur", self.dur(s))])
    }

    /// `(year, month, day)` of a text starting with `YYYY-MM-DD`.
    fn ymd(s: &str) -> Option<(&str, u32, u32)> {
        let b = s.as_bytes();
        if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let y = s.get(..4)?;
        if !y.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let m: u32 = s.get(5..7)?.parse().ok()?;
        let d: u32 = s.get(8..10)?.parse().ok()?;
        ((1..=12).contains(&m) && (1..=31).contains(&d)).then_some((y, m, d))
    }

    /// `2026-05-12` (or a text beginning so) → `12 May 2026`; anything else as it is.
    pub fn date(&self, s: &str) -> String {
        match Self::ymd(s) {
            Some((y, m, d)) => self.pat(
                "date.long",
                &[
                    ("d", self.digits(&d.to_string())),
                    ("month", self.cat.get(&format!("month.{m}")).into()),
                    ("y", self.digits(y)),
                ],
            ),
            None => s.to_string(),
        }
    }

    /// `2026-05-12` → `12 May`.
    pub fn date_short(&self, s: &str) -> String {
        match Self::ymd(s) {
            Some((_, m, d)) => self.pat(
                "date.short",
                &[
                    ("d", self.digits(&d.to_string())),
                    ("mon", self.cat.get(&format!("month_short.{m}")).into()),
                ],
            ),
            None => s.to_string(),
        }
    }

    /// `2026-05` → `May 2026`.
    pub fn month(&self, s: &str) -> String {
        match Self::ymd(&format!("{s}-01")) {
            Some((y, m, _)) => self.pat(
                "date.month",
                &[
                    ("month", self.cat.get(&format!("month.{m}")).into()),
                    ("y", self.digits(y)),
                ],
            ),
            None => s.to_string(),
        }
    }

    /// A value by format name (see the module docs); `None` for null or missing values.
    pub fn value(&self, v: &Value, f: &str) -> Option<String> {
        if v.is_null() {
            return None;
        }
        let n = v.as_u64();
        Some(match f {
            "int" => self.int(n?),
            "bytes" => self.bytes(n?),
            "rate" => self.rate(n?),
            "pct" => self.pct(n?),
            "dur" => self.dur(n?),
            "ago" => self.ago(n?),
            "date" => self.date(v.as_str()?),
            "dateshort" => self.date_short(v.as_str()?),
            "month" => self.month(v.as_str()?),
            "join" => v
                .as_array()
                .filter(|a| !a.is_empty())?
                .iter()
                .map(|x| raw(Some(x)))
                .collect::<Vec<_>>()
                .join(", "),
            "evr" => match v {
                Value::Object(_) => {
                    let epoch = v["epoch"].as_u64().unwrap_or(0);
                    let vr = format!(
                        "{}-{}",
                        v["version"].as_str().unwrap_or(""),
                        v["release"].as_str().unwrap_or("")
                    );
                    if epoch > 0 {
                        format!("{epoch}:{vr}")
                    } else {
                        vr
                    }
                }
                _ => raw(Some(v)),
            },
            "short" => {
                let s = raw(Some(v));
                if s.chars().count() > 12 {
                    s.chars().take(12).collect::<String>() + "…"
                } else {
                    s
                }
            }
            _ => match f.strip_prefix("enum:") {
                Some(prefix) => self.cat.get(&format!("{prefix}.{}", raw(Some(v)))).into(),
                None => raw(Some(v)),
            },
        })
    }

    /// One message argument, formatted by the ending of its name.
    pub fn arg(&self, name: &str, v: &Value) -> String {
        let f = if v.is_number() {
            [
                ("_bytes", "bytes"),
                ("_rate", "rate"),
                ("_secs", "dur"),
                ("_pct", "pct"),
            ]
            .iter()
            .find(|(end, _)| name.ends_with(end))
            .map_or("int", |(_, f)| f)
        } else if name.ends_with("_date") {
            "date"
        } else {
            "text"
        };
        self.value(v, f)
            .unwrap_or_else(|| self.cat.get("units.none").into())
    }

    /// The message `key` with placeholders from the fields of `args`.
    pub fn message(&self, key: &str, args: &Map<String, Value>) -> String {
        let a: Vec<(&str, String)> = args
            .iter()
            .map(|(k, v)| (k.as_str(), self.arg(k, v)))
            .collect();
        self.pat(key, &a)
    }
}

#[cfg(test)]
mod tests {
    use super::super::i18n::catalog;
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_group_and_use_each_languages_digits() {
        let (en, hi, ne) = (
            Fmt::new(catalog("en")),
            Fmt::new(catalog("hi")),
            Fmt::new(catalog("ne")),
        );
        assert_eq!(en.int(1234567), "1,234,567");
        assert_eq!(hi.int(1234567), "12,34,567");
        assert_eq!(ne.int(1234567), "१२,३४,५६७");
        assert_eq!(hi.int(123), "123");
        assert_eq!(hi.int(1234), "1,234");
        assert_eq!(hi.int(123456789), "12,34,56,789");
        assert_eq!(en.int(0), "0");
        assert_eq!(en.int(1000), "1,000");
    }

    #[test]
    fn sizes_round_half_up_with_one_decimal_below_100() {
        let en = Fmt::new(catalog("en"));
        assert_eq!(en.bytes(0), "0 B");
        assert_eq!(en.bytes(1023), "1,023 B");
        assert_eq!(en.bytes(1024), "1.0 KiB");
        assert_eq!(en.bytes(1280), "1.3 KiB", "1.25 rounds up");
        assert_eq!(en.bytes(1536 * 1024), "1.5 MiB");
        assert_eq!(en.bytes(150 * 1024 * 1024), "150 MiB");
        assert_eq!(en.bytes(3 << 40), "3.0 TiB");
        assert_eq!(en.rate(2048), "2.0 KiB/s");
        let ne = Fmt::new(catalog("ne"));
        assert_eq!(ne.bytes(1536 * 1024), "१.५ MiB");
    }

    #[test]
    fn durations_dates_and_enums() {
        let en = Fmt::new(catalog("en"));
        assert_eq!(en.dur(59), "59 s");
        assert_eq!(en.dur(3599), "59 min");
        assert_eq!(en.dur(7300), "2 h");
        assert_eq!(en.dur(86400), "1 day");
        assert_eq!(en.dur(3 * 86400 + 5), "3 days");
        assert_eq!(en.ago(2), "just now");
        assert_eq!(en.ago(120), "2 min ago");
        assert_eq!(en.date("2026-05-12"), "12 May 2026");
        assert_eq!(en.date("2024-01-03 00:00:00"), "3 January 2024");
        assert_eq!(en.date("soon"), "soon");
        assert_eq!(en.date_short("2026-05-12"), "12 May");
        assert_eq!(en.month("2026-05"), "May 2026");
        let ne = Fmt::new(catalog("ne"));
        assert_eq!(ne.date("2026-05-12"), "१२ मे २०२६");
        assert_eq!(
            en.value(&json!("critical"), "enum:advisories.severity")
                .unwrap(),
            "Critical"
        );
        assert_eq!(
            en.value(
                &json!({"epoch": 2, "version": "1.0", "release": "1.el9"}),
                "evr"
            )
            .unwrap(),
            "2:1.0-1.el9"
        );
        assert_eq!(en.value(&json!(["a", "b"]), "join").unwrap(), "a, b");
        assert_eq!(en.value(&json!([]), "join"), None);
        assert_eq!(en.value(&Value::Null, "bytes"), None);
        assert_eq!(
            en.value(&json!("0123456789abcdef"), "short").unwrap(),
            "0123456789ab…"
        );
    }

    #[test]
    fn messages_format_their_arguments_by_name() {
        let en = Fmt::new(catalog("en"));
        let args = json!({"free_bytes": 1024, "min_free_bytes": 2048, "count": 1500, "resets_date": "2026-06-01", "repo": "epel"});
        let m = args.as_object().unwrap();
        assert_eq!(en.arg("free_bytes", &m["free_bytes"]), "1.0 KiB");
        assert_eq!(en.arg("count", &m["count"]), "1,500");
        assert_eq!(en.arg("resets_date", &m["resets_date"]), "1 June 2026");
        assert_eq!(en.arg("repo", &m["repo"]), "epel");
        assert_eq!(fill("{a} and {b} {c", &[("a", "1".into())]), "1 and {b} {c");
        assert_eq!(lookup(&json!({"a": [{"b": 3}]}), "a.0.b"), Some(&json!(3)));
        assert_eq!(raw(lookup(&json!({"a": true}), "a")), "true");
    }
}
