//! HTTP `Range` / `If-Range` request handling and `multipart/byteranges` framing
//! (RFC 9110 §14), as pure functions over strings and numbers.
//!
//! The server uses this to answer partial requests from a cached file: which
//! byte ranges to send, the `Content-Range` values, the part headers of a
//! multi-range response and its exact `Content-Length`.
//!
//! What this module deliberately does **not** do: no I/O, no network, no
//! header-map or response building, no choice of boundary string, and no
//! merging or reordering of overlapping ranges (legal, and keeps the parser
//! simple; the number of ranges is capped at [`MAX_RANGES`] instead). Only the
//! `bytes` unit is understood; anything unparsable means "send the whole
//! representation", as RFC 9110 allows.

use std::ops::Range;

/// Maximum number of ranges honoured in one `Range` header (zchunk clients
/// send up to 256). A header with more is ignored (the full body is sent).
pub const MAX_RANGES: usize = 256;

/// The outcome of evaluating a `Range` header against a representation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// Send the full representation with `200 OK`.
    Full,
    /// Send these ranges with `206 Partial Content`: half-open, non-empty,
    /// clamped to the length, in request order, at most [`MAX_RANGES`].
    Ranges(Vec<Range<u64>>),
    /// Answer `416 Range Not Satisfiable` (see [`unsatisfied_content_range`]).
    Unsatisfiable,
}

/// One syntactically valid range-spec, before it is checked against the length.
enum Spec {
    /// `first-last` (`last` absent for `first-`), inclusive, values saturated at `u64::MAX`.
    From { first: u64, last: Option<u64> },
    /// `-suffix_len`.
    Suffix(u64),
}

/// Evaluates a `Range` header value. `header` is the raw value (`None` when
/// the request has no `Range` header); `len` is the representation length.
///
/// * Syntax errors, a unit other than `bytes` (case-insensitive), or a range
///   whose last position is below its first (`bytes=5-2`) → [`RangeRequest::Full`]
///   (RFC 9110: an invalid `Range` is ignored).
/// * More than [`MAX_RANGES`] ranges → [`RangeRequest::Full`].
/// * Forms: `bytes=N-`, `bytes=N-M`, `bytes=-S`, comma-separated, optional
///   spaces/tabs around elements; empty list elements are ignored.
/// * Numbers too large for `u64` are not errors: they saturate, so a huge
///   first position is unsatisfiable and a huge last position or suffix is
///   clamped to the end.
/// * Ranges with `first >= len` and the suffix `-0` are unsatisfiable and are
///   dropped; if none remains → [`RangeRequest::Unsatisfiable`].
/// * A zero-length representation: a non-zero suffix range is satisfiable per
///   RFC 9110 but selects nothing, so the answer is [`RangeRequest::Full`]
///   (an empty `200`); any other range → [`RangeRequest::Unsatisfiable`].
pub fn parse_range(header: Option<&str>, len: u64) -> RangeRequest {
    let Some(header) = header else {
        return RangeRequest::Full;
    };
    let Some(specs) = parse_specs(header) else {
        return RangeRequest::Full;
    };
    let mut out = Vec::new();
    let mut empty_but_satisfiable = false;
    for spec in specs {
        match spec {
            Spec::From { first, last } => {
                if first >= len {
                    continue;
                }
                let end = match last {
                    Some(last) => last.min(len - 1) + 1,
                    None => len,
                };
                out.push(first..end);
            }
            Spec::Suffix(0) => {}
            Spec::Suffix(n) => {
                if len == 0 {
                    empty_but_satisfiable = true;
                } else {
                    out.push(len - n.min(len)..len);
                }
            }
        }
    }
    if !out.is_empty() {
        RangeRequest::Ranges(out)
    } else if empty_but_satisfiable {
        RangeRequest::Full
    } else {
        RangeRequest::Unsatisfiable
    }
}

/// Parses the whole header; `None` means "ignore it" (invalid or too many ranges).
fn parse_specs(header: &str) -> Option<Vec<Spec>> {
    let header = header.trim_matches(is_ows);
    let (unit, set) = header.split_once('=')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut specs = Vec::new();
    for element in set.split(',') {
        let element = element.trim_matches(is_ows);
        if element.is_empty() {
            continue;
        }
        if specs.len() >= MAX_RANGES {
            return None;
        }
        specs.push(parse_spec(element)?);
    }
    if specs.is_empty() { None } else { Some(specs) }
}

fn parse_spec(element: &str) -> Option<Spec> {
    let (first, last) = element.split_once('-')?;
    if first.is_empty() {
        return Some(Spec::Suffix(parse_digits(last)?));
    }
    let first = parse_digits(first)?;
    if last.is_empty() {
        return Some(Spec::From { first, last: None });
    }
    let last = parse_digits(last)?;
    if last < first {
        return None;
    }
    Some(Spec::From {
        first,
        last: Some(last),
    })
}

/// `1*DIGIT`, saturating at `u64::MAX` instead of overflowing.
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for b in s.bytes() {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.saturating_mul(10).saturating_add(u64::from(b - b'0'));
    }
    Some(n)
}

fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// The `Content-Range` value for a half-open range: `bytes a-b/len`.
pub fn content_range(r: &Range<u64>, len: u64) -> String {
    format!("bytes {}-{}/{}", r.start, r.end.saturating_sub(1), len)
}

/// The `Content-Range` value of a `416` response: `bytes */len`.
pub fn unsatisfied_content_range(len: u64) -> String {
    format!("bytes */{len}")
}

/// The bytes written before one part's data in a `multipart/byteranges` body:
/// `"\r\n--B\r\nContent-Type: T\r\nContent-Range: bytes a-b/len\r\n\r\n"`.
pub fn part_header(boundary: &str, content_type: &str, r: &Range<u64>, len: u64) -> String {
    format!(
        "\r\n--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: {}\r\n\r\n",
        content_range(r, len)
    )
}

/// The closing delimiter of a `multipart/byteranges` body: `"\r\n--B--\r\n"`.
pub fn closing(boundary: &str) -> String {
    format!("\r\n--{boundary}--\r\n")
}

/// Exact length of the `multipart/byteranges` body made of, for each range,
/// [`part_header`] followed by the range's bytes, then [`closing`].
/// Saturates at `u64::MAX` (only reachable with absurd overlapping ranges).
pub fn multipart_len(boundary: &str, content_type: &str, ranges: &[Range<u64>], len: u64) -> u64 {
    let closing_len = u64::try_from(closing(boundary).len()).unwrap_or(u64::MAX);
    ranges.iter().fold(closing_len, |total, r| {
        let header =
            u64::try_from(part_header(boundary, content_type, r, len).len()).unwrap_or(u64::MAX);
        total
            .saturating_add(header)
            .saturating_add(r.end.saturating_sub(r.start))
    })
}

/// Evaluates an `If-Range` value against the current validators.
///
/// `etag` is the current `ETag` header value as sent (quoted, e.g. `"abc"`);
/// `last_modified_http_date` is the current `Last-Modified` value. An entity-tag
/// matches only by strong comparison (weak tags, `W/"…"`, never match, on
/// either side); a date matches only if it is byte-for-byte the
/// `Last-Modified` value. Empty values never match.
pub fn if_range_matches(if_range: &str, etag: &str, last_modified_http_date: &str) -> bool {
    let if_range = if_range.trim_matches(is_ows);
    if if_range.is_empty() {
        return false;
    }
    if if_range.starts_with("W/") {
        return false;
    }
    if if_range.starts_with('"') {
        let etag = etag.trim_matches(is_ows);
        return is_strong_etag(if_range) && if_range == etag;
    }
    if_range == last_modified_http_date.trim_matches(is_ows)
}

/// `"` *etagc `"` with no `W/` prefix.
fn is_strong_etag(s: &str) -> bool {
    s.strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .is_some_and(|tag| {
            tag.bytes()
                .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(v: &[(u64, u64)]) -> RangeRequest {
        RangeRequest::Ranges(v.iter().map(|&(a, b)| a..b).collect())
    }

    #[test]
    fn no_header_is_full() {
        assert_eq!(parse_range(None, 100), RangeRequest::Full);
        assert_eq!(parse_range(None, 0), RangeRequest::Full);
    }

    #[test]
    fn simple_forms() {
        assert_eq!(parse_range(Some("bytes=0-9"), 100), ranges(&[(0, 10)]));
        assert_eq!(parse_range(Some("bytes=10-"), 100), ranges(&[(10, 100)]));
        assert_eq!(parse_range(Some("bytes=-10"), 100), ranges(&[(90, 100)]));
        assert_eq!(parse_range(Some("bytes=0-0"), 100), ranges(&[(0, 1)]));
        assert_eq!(parse_range(Some("bytes=99-99"), 100), ranges(&[(99, 100)]));
        assert_eq!(parse_range(Some("bytes=0-"), 1), ranges(&[(0, 1)]));
    }

    #[test]
    fn clamping() {
        assert_eq!(
            parse_range(Some("bytes=50-1000"), 100),
            ranges(&[(50, 100)])
        );
        assert_eq!(parse_range(Some("bytes=-1000"), 100), ranges(&[(0, 100)]));
        assert_eq!(parse_range(Some("bytes=-100"), 100), ranges(&[(0, 100)]));
    }

    #[test]
    fn lists_whitespace_and_order() {
        assert_eq!(
            parse_range(Some("bytes=50-59, 0-9,\t-5 ,20-"), 100),
            ranges(&[(50, 60), (0, 10), (95, 100), (20, 100)])
        );
        assert_eq!(
            parse_range(Some("  bytes=0-1,,2-3,  "), 10),
            ranges(&[(0, 2), (2, 4)])
        );
        // overlapping ranges are kept as requested
        assert_eq!(
            parse_range(Some("bytes=0-5,3-8,0-5"), 10),
            ranges(&[(0, 6), (3, 9), (0, 6)])
        );
    }

    #[test]
    fn unit_is_case_insensitive_and_must_be_bytes() {
        assert_eq!(parse_range(Some("BYTES=0-1"), 10), ranges(&[(0, 2)]));
        assert_eq!(parse_range(Some("Bytes=0-1"), 10), ranges(&[(0, 2)]));
        assert_eq!(parse_range(Some("items=0-1"), 10), RangeRequest::Full);
        assert_eq!(parse_range(Some("bytes 0-1"), 10), RangeRequest::Full);
        assert_eq!(parse_range(Some("bytes =0-1"), 10), RangeRequest::Full);
        assert_eq!(parse_range(Some("=0-1"), 10), RangeRequest::Full);
    }

    #[test]
    fn syntax_errors_are_full() {
        for bad in [
            "",
            "bytes",
            "bytes=",
            "bytes=,",
            "bytes=-",
            "bytes=5-2",
            "bytes=0-1,5-2",
            "bytes=a-b",
            "bytes=1-2-3",
            "bytes=+1-2",
            "bytes=1 -2",
            "bytes=1- 2",
            "bytes=0x10-20",
            "bytes=--5",
            "bytes=1.5-2",
            "bytes=0-1;2-3",
            "bytes=١-٢",
        ] {
            assert_eq!(parse_range(Some(bad), 100), RangeRequest::Full, "{bad:?}");
        }
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(
            parse_range(Some("bytes=100-"), 100),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=100-200"), 100),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=-0"), 100),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=-0,200-300,100-"), 100),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=0-0"), 0),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=-0"), 0),
            RangeRequest::Unsatisfiable
        );
    }

    #[test]
    fn zero_length_suffix_is_full() {
        assert_eq!(parse_range(Some("bytes=-5"), 0), RangeRequest::Full);
        assert_eq!(parse_range(Some("bytes=0-1,-5"), 0), RangeRequest::Full);
    }

    #[test]
    fn partially_satisfiable_keeps_only_satisfiable() {
        assert_eq!(
            parse_range(Some("bytes=200-300,0-4,-0,100-"), 100),
            ranges(&[(0, 5)])
        );
    }

    #[test]
    fn huge_numbers_do_not_overflow() {
        let max = u64::MAX;
        let huge = "99999999999999999999999999999999999999";
        assert_eq!(
            parse_range(Some(&format!("bytes=0-{huge}")), 100),
            ranges(&[(0, 100)])
        );
        assert_eq!(
            parse_range(Some(&format!("bytes={huge}-")), 100),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some(&format!("bytes=-{huge}")), 100),
            ranges(&[(0, 100)])
        );
        // last < first even when both saturate? equal after saturation: valid, unsatisfiable
        assert_eq!(
            parse_range(Some(&format!("bytes={huge}-{huge}")), 100),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some(&format!("bytes=0-{max}")), max),
            ranges(&[(0, max)])
        );
        assert_eq!(
            parse_range(Some(&format!("bytes={}-{max}", max - 1)), max),
            ranges(&[(max - 1, max)])
        );
        assert_eq!(
            parse_range(Some(&format!("bytes={max}-")), max),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=-1"), max),
            ranges(&[(max - 1, max)])
        );
        assert_eq!(
            parse_range(Some(&format!("bytes=-{huge}")), max),
            ranges(&[(0, max)])
        );
    }

    #[test]
    fn range_count_limit() {
        let list = |n: usize| {
            let parts: Vec<String> = (0..n).map(|i| format!("{i}-{i}")).collect();
            format!("bytes={}", parts.join(","))
        };
        match parse_range(Some(&list(MAX_RANGES)), 1000) {
            RangeRequest::Ranges(v) => {
                assert_eq!(v.len(), MAX_RANGES);
                assert_eq!(v[255], 255..256);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_range(Some(&list(MAX_RANGES + 1)), 1000),
            RangeRequest::Full
        );
        // empty elements do not count
        let padded = format!("{},,,", list(MAX_RANGES));
        assert!(matches!(
            parse_range(Some(&padded), 1000),
            RangeRequest::Ranges(v) if v.len() == MAX_RANGES
        ));
        // unsatisfiable ranges count towards the limit too
        assert_eq!(
            parse_range(Some(&list(MAX_RANGES + 1)), 10),
            RangeRequest::Full
        );
    }

    #[test]
    fn content_range_values() {
        assert_eq!(content_range(&(0..10), 100), "bytes 0-9/100");
        assert_eq!(content_range(&(99..100), 100), "bytes 99-99/100");
        assert_eq!(
            content_range(&(0..u64::MAX), u64::MAX),
            format!("bytes 0-{}/{}", u64::MAX - 1, u64::MAX)
        );
        // never panics, even on an empty range
        assert_eq!(content_range(&(0..0), 0), "bytes 0-0/0");
        assert_eq!(unsatisfied_content_range(100), "bytes */100");
    }

    #[test]
    fn multipart_framing() {
        assert_eq!(
            part_header("B", "application/x-rpm", &(0..10), 100),
            "\r\n--B\r\nContent-Type: application/x-rpm\r\nContent-Range: bytes 0-9/100\r\n\r\n"
        );
        assert_eq!(closing("B"), "\r\n--B--\r\n");
    }

    #[test]
    fn multipart_len_is_exact() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let len = data.len() as u64;
        let rs = vec![0..10, 500..1000, 3..4, 0..1000];
        let mut body = Vec::new();
        for r in &rs {
            body.extend_from_slice(part_header("xyz", "text/plain", r, len).as_bytes());
            body.extend_from_slice(&data[r.start as usize..r.end as usize]);
        }
        body.extend_from_slice(closing("xyz").as_bytes());
        assert_eq!(
            multipart_len("xyz", "text/plain", &rs, len),
            body.len() as u64
        );
        assert_eq!(
            multipart_len("xyz", "text/plain", &[], len),
            closing("xyz").len() as u64
        );
    }

    #[test]
    fn multipart_len_saturates() {
        let rs = vec![0..u64::MAX, 0..u64::MAX];
        assert_eq!(multipart_len("b", "t", &rs, u64::MAX), u64::MAX);
    }

    #[test]
    fn if_range() {
        let etag = "\"abc123\"";
        let date = "Sat, 22 Nov 2025 00:12:00 GMT";
        assert!(if_range_matches("\"abc123\"", etag, date));
        assert!(if_range_matches(" \"abc123\" ", etag, date));
        assert!(!if_range_matches("\"abc124\"", etag, date));
        assert!(!if_range_matches("W/\"abc123\"", etag, date));
        assert!(!if_range_matches("\"abc123\"", "W/\"abc123\"", date));
        assert!(!if_range_matches("abc123", "abc123", date));
        assert!(!if_range_matches("\"", "\"", date));
        assert!(if_range_matches(date, etag, date));
        assert!(!if_range_matches(
            "Sat, 22 Nov 2025 00:12:01 GMT",
            etag,
            date
        ));
        assert!(!if_range_matches(
            "sat, 22 nov 2025 00:12:00 gmt",
            etag,
            date
        ));
        assert!(!if_range_matches("", "", ""));
        assert!(!if_range_matches("\"\"", "", date));
        assert!(if_range_matches("\"\"", "\"\"", date));
    }

    #[test]
    fn arbitrary_input_never_panics() {
        let samples = [
            "bytes=0-1",
            "bytes=-",
            "bytes=--",
            "bytes=-5-",
            "bytes=,-,",
            "bytes=0-1,",
            "bytes=é-",
            "bytes=\u{0}-1",
            "bytes=18446744073709551615-18446744073709551615",
            "bytes=18446744073709551616-",
        ];
        for s in samples {
            for cut in 0..=s.len() {
                if let Some(prefix) = s.get(..cut) {
                    for len in [0, 1, 2, 100, u64::MAX] {
                        if let RangeRequest::Ranges(v) = parse_range(Some(prefix), len) {
                            for r in v {
                                assert!(r.start < r.end && r.end <= len, "{prefix:?} {len}");
                            }
                        }
                    }
                }
            }
        }
    }
}
