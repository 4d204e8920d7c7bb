//! The message catalogs: one TOML file per language in `src/dashboard/i18n/`, embedded in the
//! binary. `build.rs` lists the directory, so adding a language is adding one file (named by
//! its language code, `pt-br.toml`); a unit test fails when a catalog lacks a key English has,
//! has a key English does not, or changes a message's `{placeholders}`.
//!
//! A catalog is flat text under dotted keys (`[health] title = …` is `health.title`). The
//! `meta.*` keys are not shown as such: `meta.name` is the language's own name (for the
//! switch), `meta.digits` `latn` or `deva`, `meta.grouping` `3` or `indian`, `meta.decimal` and
//! `meta.group_sep` the separators (see `format`).
//!
//! Which language: [`choose`] takes `?lang=`, then the `lang` cookie, then the browser's
//! `Accept-Language` (by q-value), then English; [`from_locale`] reads `LC_ALL`,
//! `LC_MESSAGES`, `LANG` for the command line.

use std::collections::BTreeMap;
use std::sync::OnceLock;

include!(concat!(env!("OUT_DIR"), "/catalogs.rs"));

/// The language every other falls back to, key by key.
pub const DEFAULT: &str = "en";

/// One language's messages.
#[derive(Debug)]
pub struct Catalog {
    pub code: &'static str,
    pub msgs: BTreeMap<String, String>,
}

/// Why an embedded catalog is unusable (only a broken build can have one; a unit test reads
/// them all).
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {code}: {source}")]
    Toml {
        code: &'static str,
        source: toml::de::Error,
    },
    #[error("catalog {code}: {key} is not text")]
    NotText { code: &'static str, key: String },
}

fn flatten(
    code: &'static str,
    prefix: &str,
    t: &toml::Table,
    out: &mut BTreeMap<String, String>,
) -> Result<(), CatalogError> {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::String(s) => {
                out.insert(key, s.clone());
            }
            toml::Value::Table(t) => flatten(code, &key, t, out)?,
            _ => return Err(CatalogError::NotText { code, key }),
        }
    }
    Ok(())
}

/// Parses one catalog.
pub fn parse(code: &'static str, text: &str) -> Result<Catalog, CatalogError> {
    let t: toml::Table =
        toml::from_str(text).map_err(|source| CatalogError::Toml { code, source })?;
    let mut msgs = BTreeMap::new();
    flatten(code, "", &t, &mut msgs)?;
    Ok(Catalog { code, msgs })
}

/// Every usable catalog, English first.
pub fn catalogs() -> &'static [Catalog] {
    static ALL: OnceLock<Vec<Catalog>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut v: Vec<Catalog> = CATALOGS
            .iter()
            .filter_map(|(code, text)| match parse(code, text) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "a message catalog is unusable; that language is left out");
                    None
                }
            })
            .collect();
        v.sort_by_key(|c| (c.code != DEFAULT, c.code));
        v
    })
}

/// The catalog of `code`, else English's (else an empty one).
pub fn catalog(code: &str) -> &'static Catalog {
    static EMPTY: Catalog = Catalog {
        code: DEFAULT,
        msgs: BTreeMap::new(),
    };
    let all = catalogs();
    all.iter()
        .find(|c| c.code == code)
        .or_else(|| all.iter().find(|c| c.code == DEFAULT))
        .unwrap_or(&EMPTY)
}

/// A language code we have a catalog for, from a language tag (`hi-IN`, `ne_NP.UTF-8`,
/// `pt-BR`): the whole tag first, then its first part.
pub fn supported(tag: &str) -> Option<&'static str> {
    let tag = tag.trim().split(['.', '@']).next().unwrap_or("");
    let tag = tag.replace('_', "-").to_ascii_lowercase();
    let primary = tag.split('-').next().unwrap_or("");
    let all = catalogs();
    all.iter()
        .find(|c| c.code == tag)
        .or_else(|| all.iter().find(|c| c.code == primary))
        .map(|c| c.code)
}

impl Catalog {
    /// The message under `key`: this language's, else English's, else the key itself (so a
    /// missing message shows up on the page instead of an empty space).
    pub fn get<'a>(&'a self, key: &'a str) -> &'a str {
        if let Some(m) = self.msgs.get(key) {
            return m;
        }
        let en = catalog(DEFAULT);
        en.msgs.get(key).map(String::as_str).unwrap_or(key)
    }

    /// The language's own name (`हिन्दी`).
    pub fn name(&self) -> &str {
        self.get("meta.name")
    }
}

/// The page's language, and whether to remember it (a `?lang=` choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub lang: &'static str,
    pub remember: bool,
}

/// The value of one query parameter (no percent-decoding: language codes need none).
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `lang` cookie of a `Cookie` header.
fn cookie_lang(cookie: &str) -> Option<&str> {
    cookie
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == "lang")
        .map(|(_, v)| v.trim_matches('"'))
}

/// The languages of an `Accept-Language` header we have, best first (by q-value, then order;
/// `q=0` means "not this one").
pub fn accept_language(header: &str) -> Vec<&'static str> {
    let mut v: Vec<(u32, usize, &'static str)> = Vec::new();
    for (i, part) in header.split(',').enumerate() {
        let mut it = part.split(';');
        let tag = it.next().unwrap_or("").trim();
        let mut q = 1000u32;
        for p in it {
            if let Some(x) = p.trim().strip_prefix("q=") {
                q = x
                    .trim()
                    .parse::<f32>()
                    .map(|f| (f.clamp(0.0, 1.0) * 1000.0).round() as u32)
                    .unwrap_or(0);
            }
        }
        if q == 0 || tag == "*" {
            continue;
        }
        if let Some(code) = supported(tag)
            && !v.iter().any(|(_, _, c)| *c == code)
        {
            v.push((q, i, code));
        }
    }
    v.sort_by_key(|(q, i, _)| (std::cmp::Reverse(*q), *i));
    v.into_iter().map(|(_, _, c)| c).collect()
}

/// The language of a page request: `?lang=` (remembered), the `lang` cookie, `Accept-Language`,
/// English.
pub fn choose(query: Option<&str>, cookie: Option<&str>, accept: Option<&str>) -> Choice {
    if let Some(code) = query
        .and_then(|q| query_param(q, "lang"))
        .and_then(supported)
    {
        return Choice {
            lang: code,
            remember: true,
        };
    }
    let lang = cookie
        .and_then(cookie_lang)
        .and_then(supported)
        .or_else(|| accept.and_then(|a| accept_language(a).first().copied()))
        .unwrap_or(DEFAULT);
    Choice {
        lang,
        remember: false,
    }
}

/// The language of the command line, from the environment the way gettext reads it: the first
/// set of `LC_ALL`, `LC_MESSAGES`, `LANG` (`hi_IN.UTF-8`); `C`/`POSIX` and unknown languages
/// are English.
pub fn from_locale(var: impl Fn(&str) -> Option<String>) -> &'static str {
    ["LC_ALL", "LC_MESSAGES", "LANG"]
        .iter()
        .filter_map(|k| var(k))
        .find(|v| !v.is_empty())
        .and_then(|v| supported(&v))
        .unwrap_or(DEFAULT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn placeholders(s: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut rest = s;
        while let Some(i) = rest.find('{') {
            rest = &rest[i + 1..];
            if let Some(j) = rest.find('}') {
                out.insert(rest[..j].to_string());
                rest = &rest[j + 1..];
            }
        }
        out
    }

    /// Every catalog parses and has exactly English's keys, with the same placeholders; the
    /// three shipped languages are there.
    #[test]
    fn every_catalog_has_exactly_the_keys_english_has() {
        let mut problems = Vec::new();
        let parsed: Vec<Catalog> = CATALOGS
            .iter()
            .map(|(code, text)| parse(code, text).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let en = parsed.iter().find(|c| c.code == "en").expect("en.toml");
        for c in &parsed {
            for (k, v) in &en.msgs {
                match c.msgs.get(k) {
                    None => problems.push(format!("{}: lacks {k}", c.code)),
                    Some(m) if placeholders(m) != placeholders(v) => problems.push(format!(
                        "{}: {k} has placeholders {:?}, English {:?}",
                        c.code,
                        placeholders(m),
                        placeholders(v)
                    )),
                    Some(m) if m.trim().is_empty() => {
                        problems.push(format!("{}: {k} is empty", c.code))
                    }
                    _ => {}
                }
            }
            for k in c.msgs.keys() {
                if !en.msgs.contains_key(k) {
                    problems.push(format!("{}: has {k}, which English does not", c.code));
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        let codes: Vec<_> = catalogs().iter().map(|c| c.code).collect();
        assert_eq!(codes[0], "en");
        for l in ["hi", "ne"] {
            assert!(codes.contains(&l), "{codes:?}");
        }
    }

    /// The check above would catch a missing or an unknown key (it is not vacuous).
    #[test]
    fn the_key_check_catches_missing_and_unknown_keys() {
        let en = parse("en", "[a]\nx = \"1\"\ny = \"{n} 2\"\n").unwrap();
        let other = parse("xx", "[a]\nx = \"1\"\nz = \"3\"\n").unwrap();
        let missing: Vec<_> = en
            .msgs
            .keys()
            .filter(|k| !other.msgs.contains_key(*k))
            .collect();
        let unknown: Vec<_> = other
            .msgs
            .keys()
            .filter(|k| !en.msgs.contains_key(*k))
            .collect();
        assert_eq!(missing, ["a.y"]);
        assert_eq!(unknown, ["a.z"]);
        assert!(parse("xx", "a = 1").is_err());
        assert_eq!(placeholders("{a} of {b_bytes}").len(), 2);
    }

    #[test]
    fn accept_language_follows_q_values() {
        assert_eq!(
            accept_language("hi-IN,hi;q=0.9,en-US;q=0.8,en;q=0.7"),
            ["hi", "en"]
        );
        assert_eq!(accept_language("en;q=0.5, ne-NP"), ["ne", "en"]);
        assert_eq!(accept_language("fr, de;q=0.9"), Vec::<&str>::new());
        assert_eq!(accept_language("hi;q=0, ne;q=0.1"), ["ne"]);
        assert_eq!(accept_language("*"), Vec::<&str>::new());
        assert_eq!(accept_language("NE"), ["ne"]);
    }

    #[test]
    fn query_then_cookie_then_header() {
        let c = choose(Some("lang=ne"), Some("lang=hi"), Some("en"));
        assert_eq!((c.lang, c.remember), ("ne", true));
        let c = choose(Some("x=1"), Some("a=b; lang=hi"), Some("ne"));
        assert_eq!((c.lang, c.remember), ("hi", false));
        assert_eq!(
            choose(None, Some("lang=zz"), Some("ne;q=0.4, fr")).lang,
            "ne"
        );
        assert_eq!(choose(Some("lang=zz"), None, None).lang, "en");
        assert_eq!(choose(None, None, None).lang, "en");
    }

    #[test]
    fn the_command_line_reads_the_locale() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(from_locale(env(&[("LANG", "hi_IN.UTF-8")])), "hi");
        assert_eq!(
            from_locale(env(&[("LANG", "hi_IN.UTF-8"), ("LC_ALL", "ne_NP.UTF-8")])),
            "ne"
        );
        assert_eq!(
            from_locale(env(&[("LANG", "ne_NP"), ("LC_MESSAGES", "C")])),
            "en"
        );
        assert_eq!(from_locale(env(&[("LC_ALL", ""), ("LANG", "ne_NP")])), "ne");
        assert_eq!(from_locale(env(&[])), "en");
    }

    #[test]
    fn a_missing_message_falls_back_to_english_then_the_key() {
        let hi = catalog("hi");
        assert_eq!(hi.code, "hi");
        assert_eq!(hi.get("no.such.key"), "no.such.key");
        assert_eq!(catalog("zz").code, "en");
    }
}
