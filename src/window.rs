//! `[uplink] background_hours`: daily windows of local wall-clock time, `"22:00-06:00"`. Pure.

use std::fmt;

use jiff::civil::Time;
use serde::{Deserialize, Deserializer};

/// Minutes in a day; `24:00` is allowed as a window's end.
const DAY: u16 = 24 * 60;

/// A daily window of local time, written `"HH:MM-HH:MM"`: from the first minute (included) to
/// the second (excluded). When the end is before the start it crosses midnight: `22:00-06:00`
/// holds at 23:59, 00:00 and 05:59, not at 06:00. `00:00-24:00` is the whole day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Minutes since midnight, `0..1440`.
    start: u16,
    /// Minutes since midnight, `1..=1440`, never equal to `start`.
    end: u16,
}

/// Why a window string was refused, in words for a config error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a time window: {why} (write e.g. \"22:00-06:00\", local time; a window may cross midnight)"
)]
pub struct WindowError {
    text: String,
    why: &'static str,
}

impl Window {
    pub fn parse(text: &str) -> Result<Window, WindowError> {
        let err = |why| WindowError {
            text: text.to_string(),
            why,
        };
        let (a, b) = text
            .split_once('-')
            .ok_or_else(|| err("expected two times joined by '-'"))?;
        let start = minutes(a).ok_or_else(|| err("the start is not a time HH:MM"))?;
        let end = minutes(b).ok_or_else(|| err("the end is not a time HH:MM"))?;
        if start == DAY {
            return Err(err("24:00 can only end a window"));
        }
        if start == end {
            return Err(err(
                "it starts and ends at the same minute (for the whole day write \"00:00-24:00\")",
            ));
        }
        Ok(Window { start, end })
    }

    /// Is the wall-clock time `t` inside this window?
    pub fn contains(&self, t: Time) -> bool {
        let m = minute_of_day(t);
        if self.start < self.end {
            self.start <= m && m < self.end
        } else {
            m >= self.start || m < self.end
        }
    }
}

/// May background work run at local time `t`? With no windows configured: always.
pub fn in_windows(windows: &[Window], t: Time) -> bool {
    windows.is_empty() || windows.iter().any(|w| w.contains(t))
}

fn minute_of_day(t: Time) -> u16 {
    // hour() is 0..=23 and minute() 0..=59, so this is below 1440.
    t.hour().unsigned_abs() as u16 * 60 + t.minute().unsigned_abs() as u16
}

/// `"6:00"`, `"06:00"`, `"24:00"` → minutes since midnight.
fn minutes(text: &str) -> Option<u16> {
    let (h, m) = text.trim().split_once(':')?;
    let digits = |s: &str, n: std::ops::RangeInclusive<usize>| {
        n.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(h, 1..=2) || !digits(m, 2..=2) {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    let total = h * 60 + m;
    (h <= 24 && m <= 59 && total <= DAY).then_some(total)
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{}-{}", hm(self.start), hm(self.end))
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Window::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::time;

    fn w(s: &str) -> Window {
        Window::parse(s).unwrap()
    }

    #[test]
    fn a_window_across_midnight() {
        let night = w("22:00-06:00");
        for (h, m, inside) in [
            (21, 59, false),
            (22, 0, true),
            (23, 59, true),
            (0, 0, true),
            (5, 59, true),
            (6, 0, false),
            (12, 0, false),
        ] {
            assert_eq!(night.contains(time(h, m, 30, 0)), inside, "{h}:{m}");
        }
    }

    #[test]
    fn a_window_within_a_day_and_the_whole_day() {
        let lunch = w("12:00-13:30");
        assert!(!lunch.contains(time(11, 59, 59, 999_999_999)));
        assert!(lunch.contains(time(12, 0, 0, 0)));
        assert!(lunch.contains(time(13, 29, 0, 0)));
        assert!(!lunch.contains(time(13, 30, 0, 0)));
        let all = w("00:00-24:00");
        for h in 0..24 {
            assert!(all.contains(time(h, 0, 0, 0)));
        }
        assert!(all.contains(time(23, 59, 59, 0)));
        let evening = w("18:00-24:00");
        assert!(evening.contains(time(23, 59, 0, 0)));
        assert!(!evening.contains(time(0, 0, 0, 0)));
    }

    #[test]
    fn several_windows_and_none() {
        let ws = [w("22:00-06:00"), w(" 12:00 - 13:00 ")];
        assert!(in_windows(&ws, time(12, 30, 0, 0)));
        assert!(in_windows(&ws, time(3, 0, 0, 0)));
        assert!(!in_windows(&ws, time(13, 0, 0, 0)));
        assert!(!in_windows(&ws, time(9, 0, 0, 0)));
        assert!(in_windows(&[], time(9, 0, 0, 0)), "no windows: any time");
    }

    #[test]
    fn bad_windows_are_refused_with_words() {
        for (bad, why) in [
            ("22:00", "two times"),
            ("22-06", "start is not"),
            ("22:00-6", "end is not"),
            ("25:00-06:00", "start is not"),
            ("22:60-06:00", "start is not"),
            ("22:00-24:01", "end is not"),
            ("24:00-06:00", "24:00"),
            ("08:00-08:00", "same minute"),
            ("", "two times"),
            ("-1:00-02:00", "start is not"),
            ("10:00-11:00-12:00", "end is not"),
            ("+1:00-02:00", "start is not"),
            ("22:5-06:00", "start is not"),
        ] {
            let e = Window::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(e.contains("22:00-06:00"), "{e}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["22:00-06:00", "00:00-24:00", "09:05-09:06"] {
            assert_eq!(w(s).to_string(), s);
        }
        assert_eq!(w("6:00-7:30").to_string(), "06:00-07:30");
    }
}
