//! `[uplink] monthly_budget`: this node's upstream bytes in the current budget period, and the
//! calendar rule of when a period begins. Pure: the caller stores [`BudgetState`] (a JSON file,
//! a redb row) and hands it back at start-up; nothing here reads or writes a file.
//!
//! **The reset rule.** A period begins at local midnight on `budget_reset_day` of each month; in
//! a month that has no such day (31 in April, 29–31 in February) it begins on the month's last
//! day instead. So with `budget_reset_day = 31` the periods begin on Jan 31, Feb 28 (29), Mar 31,
//! Apr 30, …; with `1`, on the first of each month.

use jiff::civil::{Date, date};
use serde::{Deserialize, Serialize};

/// What the node stores between runs: its own upstream bytes since the period that began on
/// `period_start`. Serialises as `{"period_start":"2026-01-31","used":123}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetState {
    pub period_start: Date,
    pub used: u64,
}

/// This node's count of upstream bytes in the current period, and the period's limit.
#[derive(Debug, Clone)]
pub struct Budget {
    limit: Option<u64>,
    reset_day: i8,
    state: BudgetState,
}

impl Budget {
    /// The budget as of `today` (local date), continuing `stored` if it belongs to the current
    /// period, else starting from 0. A stored period that begins after `today` (the clock was
    /// ahead when it was written) is kept, re-dated to the current period: bytes are not
    /// forgotten because a clock was wrong. `reset_day` outside 1..=31 is clamped into it.
    pub fn from_state(
        limit: Option<u64>,
        reset_day: u8,
        stored: Option<BudgetState>,
        today: Date,
    ) -> Budget {
        let reset_day = reset_day.clamp(1, 31) as i8;
        let start = period_start(today, reset_day);
        let state = match stored {
            Some(s) if s.period_start > today => BudgetState {
                period_start: start,
                used: s.used,
            },
            Some(s) => BudgetState {
                period_start: s.period_start,
                used: s.used,
            },
            None => BudgetState {
                period_start: start,
                used: 0,
            },
        };
        let mut b = Budget {
            limit,
            reset_day,
            state,
        };
        b.roll(today);
        b
    }

    /// What to store (at least every minute or so, and at shutdown).
    pub fn state(&self) -> BudgetState {
        self.state
    }

    /// Starts a new period (counter at 0) when a reset date has passed since the current period
    /// began. True when it did.
    pub fn roll(&mut self, today: Date) -> bool {
        if self.next_reset().is_none_or(|r| today < r) {
            return false;
        }
        self.state = BudgetState {
            period_start: period_start(today, self.reset_day),
            used: 0,
        };
        true
    }

    pub fn add(&mut self, bytes: u64) {
        self.state.used = self.state.used.saturating_add(bytes);
    }

    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// This node's bytes in the current period.
    pub fn used(&self) -> u64 {
        self.state.used
    }

    pub fn period_start(&self) -> Date {
        self.state.period_start
    }

    /// The first day of the next period (`None` only at the end of the calendar, year 9999).
    pub fn next_reset(&self) -> Option<Date> {
        next_reset_after(self.state.period_start, self.reset_day)
    }
}

/// The day a period begins in `year`-`month`: `reset_day`, or the month's last day when it is
/// shorter.
pub fn reset_date(year: i16, month: i8, reset_day: i8) -> Date {
    let first = date(year, month, 1);
    date(year, month, reset_day.clamp(1, first.days_in_month()))
}

/// The first day of the period that `today` is in.
pub fn period_start(today: Date, reset_day: i8) -> Date {
    let this_month = reset_date(today.year(), today.month(), reset_day);
    if today >= this_month {
        return this_month;
    }
    match today.first_of_month().yesterday() {
        Ok(prev) => reset_date(prev.year(), prev.month(), reset_day),
        // Before the first month jiff knows: nothing earlier to go back to.
        Err(_) => today.first_of_month(),
    }
}

/// The first reset date strictly after `day`; `None` after the last month jiff knows (9999).
pub fn next_reset_after(day: Date, reset_day: i8) -> Option<Date> {
    let this_month = reset_date(day.year(), day.month(), reset_day);
    if this_month > day {
        return Some(this_month);
    }
    let next = day.last_of_month().tomorrow().ok()?;
    Some(reset_date(next.year(), next.month(), reset_day))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_day_31_falls_on_the_last_day_of_shorter_months() {
        assert_eq!(reset_date(2026, 4, 31), date(2026, 4, 30));
        assert_eq!(reset_date(2026, 2, 31), date(2026, 2, 28));
        assert_eq!(reset_date(2028, 2, 30), date(2028, 2, 29), "leap year");
        assert_eq!(reset_date(2026, 1, 31), date(2026, 1, 31));
        assert_eq!(reset_date(2026, 1, 1), date(2026, 1, 1));
        let starts: Vec<Date> =
            std::iter::successors(Some(date(2026, 1, 31)), |d| next_reset_after(*d, 31))
                .take(5)
                .collect();
        assert_eq!(
            starts,
            [
                date(2026, 1, 31),
                date(2026, 2, 28),
                date(2026, 3, 31),
                date(2026, 4, 30),
                date(2026, 5, 31)
            ]
        );
    }

    #[test]
    fn the_period_of_a_day() {
        assert_eq!(period_start(date(2026, 3, 15), 1), date(2026, 3, 1));
        assert_eq!(period_start(date(2026, 3, 1), 1), date(2026, 3, 1));
        assert_eq!(period_start(date(2026, 3, 15), 20), date(2026, 2, 20));
        assert_eq!(period_start(date(2026, 1, 5), 20), date(2025, 12, 20));
        // Reset day 31: mid-April belongs to the period that began on Mar 31; Apr 30 begins one.
        assert_eq!(period_start(date(2026, 4, 15), 31), date(2026, 3, 31));
        assert_eq!(period_start(date(2026, 4, 30), 31), date(2026, 4, 30));
        assert_eq!(period_start(date(2026, 3, 1), 31), date(2026, 2, 28));
        assert_eq!(
            next_reset_after(date(2025, 12, 20), 20),
            Some(date(2026, 1, 20))
        );
        assert_eq!(
            next_reset_after(date(2026, 1, 19), 20),
            Some(date(2026, 1, 20))
        );
    }

    #[test]
    fn jan_31_rolls_over_into_february() {
        let mut b = Budget::from_state(Some(1000), 31, None, date(2026, 1, 31));
        assert_eq!(b.period_start(), date(2026, 1, 31));
        assert_eq!(b.next_reset(), Some(date(2026, 2, 28)));
        b.add(700);
        assert!(!b.roll(date(2026, 2, 1)));
        assert!(!b.roll(date(2026, 2, 27)));
        assert_eq!(b.used(), 700);
        assert!(b.roll(date(2026, 2, 28)));
        assert_eq!(b.used(), 0);
        assert_eq!(b.period_start(), date(2026, 2, 28));
        assert_eq!(b.next_reset(), Some(date(2026, 3, 31)));
        // reset day 1: Jan 31 → Feb 1.
        let mut b = Budget::from_state(None, 1, None, date(2026, 1, 31));
        b.add(5);
        assert_eq!(b.next_reset(), Some(date(2026, 2, 1)));
        assert!(b.roll(date(2026, 2, 1)));
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_node_off_for_months_starts_the_current_period() {
        let old = BudgetState {
            period_start: date(2025, 11, 1),
            used: 999,
        };
        let b = Budget::from_state(Some(10), 1, Some(old), date(2026, 3, 7));
        assert_eq!(
            b.state(),
            BudgetState {
                period_start: date(2026, 3, 1),
                used: 0
            }
        );
    }

    #[test]
    fn persistence_round_trip_through_json() {
        let mut b = Budget::from_state(Some(30 << 30), 1, None, date(2026, 1, 10));
        b.add(123_456);
        let json = serde_json::to_string(&b.state()).unwrap();
        assert_eq!(json, r#"{"period_start":"2026-01-01","used":123456}"#);
        let back: BudgetState = serde_json::from_str(&json).unwrap();
        // Restarted the same month: the count goes on.
        let again = Budget::from_state(Some(30 << 30), 1, Some(back), date(2026, 1, 20));
        assert_eq!(again.used(), 123_456);
        // Restarted after the reset: a new period.
        let later = Budget::from_state(Some(30 << 30), 1, Some(back), date(2026, 2, 1));
        assert_eq!(later.used(), 0);
        assert_eq!(later.period_start(), date(2026, 2, 1));
    }

    #[test]
    fn a_changed_reset_day_keeps_the_count_until_the_next_reset() {
        let stored = BudgetState {
            period_start: date(2026, 1, 1),
            used: 42,
        };
        // Now configured for the 15th: Jan 10 is still in the stored period…
        let b = Budget::from_state(None, 15, Some(stored), date(2026, 1, 10));
        assert_eq!(b.used(), 42);
        assert_eq!(b.next_reset(), Some(date(2026, 1, 15)));
        // …and Jan 15 begins a new one.
        let b = Budget::from_state(None, 15, Some(stored), date(2026, 1, 15));
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_stored_period_from_the_future_keeps_its_bytes() {
        let stored = BudgetState {
            period_start: date(2030, 5, 1),
            used: 77,
        };
        let b = Budget::from_state(None, 1, Some(stored), date(2026, 1, 10));
        assert_eq!(b.used(), 77);
        assert_eq!(b.period_start(), date(2026, 1, 1));
    }

    #[test]
    fn extremes_do_not_panic() {
        let mut b = Budget::from_state(Some(u64::MAX), 0, None, Date::MAX);
        b.add(u64::MAX);
        b.add(u64::MAX);
        assert_eq!(b.used(), u64::MAX);
        assert!(!b.roll(Date::MAX));
        assert_eq!(b.next_reset(), None);
        let b = Budget::from_state(Some(0), 255, None, Date::MIN);
        assert_eq!(b.used(), 0);
        assert!(b.period_start() <= Date::MIN.last_of_month());
    }
}
