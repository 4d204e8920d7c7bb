//! Human-readable quantities in the config file: sizes (`"40 GiB"`, `"500 MB"`) and rates
//! (`"4 Mbit/s"`, `"2 MiB/s"`), parsed into bytes and bytes per second. Pure.
//!
//! Binary prefixes (KiB, MiB, GiB, TiB) are powers of 1024, decimal ones (kB, MB, GB, TB)
//! powers of 1000, as on disks and in speed tests; `bit` units are divided by 8. Not here:
//! what the quantities are used for (`config`, the store and uplink modules).

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A size in bytes, written as `"40 GiB"`, `"1.5 GB"`, `"300MiB"` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

/// A rate in bytes per second, written as `"4 Mbit/s"`, `"512 kbit/s"`, `"2 MiB/s"`, `"1 MB/s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rate(pub u64);

/// What was wrong with a quantity, in words for a config error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a {what} (write e.g. {example})")]
pub struct UnitError {
    text: String,
    what: &'static str,
    example: &'static str,
}

const BYTE_UNITS: &[(&str, f64)] = &[
    ("b", 1.0),
    ("", 1.0),
    ("k", 1e3),
    ("kb", 1e3),
    ("kib", 1024.0),
    ("m", 1e6),
    ("mb", 1e6),
    ("mib", 1048576.0),
    ("g", 1e9),
    ("gb", 1e9),
    ("gib", 1073741824.0),
    ("t", 1e12),
    ("tb", 1e12),
    ("tib", 1099511627776.0),
];

/// `"1.5 GiB"` → (1.5, "gib"): a non-negative number, then a unit (case and spaces aside).
fn split(text: &str) -> Option<(f64, String)> {
    let t = text.trim();
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let n: f64 = t[..end].parse().ok()?;
    let unit = t[end..].trim().to_ascii_lowercase();
    (n.is_finite() && n >= 0.0).then_some((n, unit))
}

fn whole(x: f64) -> Option<u64> {
    (x.is_finite() && x >= 0.0 && x < u64::MAX as f64).then(|| x.round() as u64)
}

impl Size {
    pub fn parse(text: &str) -> Result<Size, UnitError> {
        let err = || UnitError {
            text: text.to_string(),
            what: "size",
            example: "\"40 GiB\" or \"500 MB\"",
        };
        let (n, unit) = split(text).ok_or_else(err)?;
        let (_, mult) = BYTE_UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .ok_or_else(err)?;
        whole(n * mult).map(Size).ok_or_else(err)
    }
}

impl Rate {
    pub fn parse(text: &str) -> Result<Rate, UnitError> {
        let err = || UnitError {
            text: text.to_string(),
            what: "rate",
            example: "\"4 Mbit/s\" or \"2 MiB/s\"",
        };
        let (n, unit) = split(text).ok_or_else(err)?;
        // "Mbps" and "Mbit/s" are bits; "MB/s" and "MiB/s" bytes.
        let (prefix, bits) = match unit.strip_suffix("bps") {
            Some(p) => (p, true),
            None => {
                let u = unit.strip_suffix("/s").ok_or_else(err)?;
                match u.strip_suffix("bit") {
                    Some(p) => (p, true),
                    None => (u, false),
                }
            }
        };
        let (_, mult) = BYTE_UNITS
            .iter()
            .find(|(u, _)| *u == prefix && bits != u.ends_with('b'))
            .ok_or_else(err)?;
        let bytes_per = if bits { mult / 8.0 } else { *mult };
        match whole(n * bytes_per) {
            Some(r) if r > 0 => Ok(Rate(r)),
            _ => Err(err()),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        match self.0 {
            n if n >= 1 << 30 => write!(f, "{:.1} GiB", b / 1073741824.0),
            n if n >= 1 << 20 => write!(f, "{:.1} MiB", b / 1048576.0),
            n if n >= 1 << 10 => write!(f, "{:.1} KiB", b / 1024.0),
            n => write!(f, "{n} B"),
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.0 as f64 * 8.0;
        if bits >= 1e6 {
            write!(f, "{:.1} Mbit/s", bits / 1e6)
        } else {
            write!(f, "{:.0} kbit/s", bits / 1e3)
        }
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Size::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Rate::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(Size::parse("40 GiB"), Ok(Size(40 << 30)));
        assert_eq!(Size::parse("2GiB"), Ok(Size(2 << 30)));
        assert_eq!(Size::parse("1.5 gib"), Ok(Size(3 << 29)));
        assert_eq!(Size::parse("500 MB"), Ok(Size(500_000_000)));
        assert_eq!(Size::parse(" 300 MiB "), Ok(Size(300 << 20)));
        assert_eq!(Size::parse("1024"), Ok(Size(1024)));
        assert_eq!(Size::parse("0"), Ok(Size(0)));
        assert_eq!(Size::parse("7 B"), Ok(Size(7)));
        for bad in [
            "", "GiB", "-1 GiB", "40 GiBs", "4 Mbit/s", "1e9", "inf", "1.2.3 MB",
        ] {
            assert!(Size::parse(bad).is_err(), "{bad}");
        }
        let e = Size::parse("lots").unwrap_err().to_string();
        assert!(e.contains("40 GiB"), "{e}");
        assert!(Size::parse("99999999999 TiB").is_err(), "overflow");
    }

    #[test]
    fn rates() {
        assert_eq!(Rate::parse("4 Mbit/s"), Ok(Rate(500_000)));
        assert_eq!(Rate::parse("512 kbit/s"), Ok(Rate(64_000)));
        assert_eq!(Rate::parse("100 Mbps"), Ok(Rate(12_500_000)));
        assert_eq!(Rate::parse("2 MiB/s"), Ok(Rate(2 << 20)));
        assert_eq!(Rate::parse("1 MB/s"), Ok(Rate(1_000_000)));
        assert_eq!(Rate::parse("1 Gbit/s"), Ok(Rate(125_000_000)));
        assert_eq!(Rate::parse("8000 bit/s"), Ok(Rate(1000)));
        for bad in [
            "",
            "4 Mbit",
            "4 Mb",
            "0 Mbit/s",
            "fast",
            "4 MiBit/s",
            "-4 Mbit/s",
            "4 /s",
        ] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn display_round_trips_roughly() {
        assert_eq!(Size(40 << 30).to_string(), "40.0 GiB");
        assert_eq!(Size(512).to_string(), "512 B");
        assert_eq!(Rate(500_000).to_string(), "4.0 Mbit/s");
        assert_eq!(Rate(64_000).to_string(), "512 kbit/s");
    }
}
