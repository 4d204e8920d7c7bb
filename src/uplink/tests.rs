//! The scheduler as a node uses it, on a controlled clock. Pacing accuracy over time is in
//! `sim`'s tests; the calendar, windows, split and bucket have their own.

use std::time::{Duration, Instant};

use jiff::civil::{DateTime, date};

use super::*;
use crate::units::Size;

fn cfg(text: &str) -> UplinkConfig {
    let repo = "\n[[repo]]\nname='a'\nurls=['http://x/']\n";
    crate::config::Config::parse(&format!("[uplink]\n{text}{repo}"), "test")
        .unwrap()
        .uplink
}

/// A controlled clock: a fixed `Instant` plus offsets, and a wall-clock time.
struct Clock {
    t0: Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock { t0: Instant::now() }
    }
    fn at(&self, secs: f64, local: DateTime) -> Now {
        Now {
            mono: self.t0 + Duration::from_secs_f64(secs),
            local,
        }
    }
}

fn noon() -> DateTime {
    date(2026, 1, 15).at(12, 0, 0, 0)
}

/// Asks until `bytes` are granted or a hold answers; returns the hold.
fn drain(s: &mut Scheduler, class: Class, now: Now) -> Option<Hold> {
    for _ in 0..100 {
        let p = s.ask(class, 1 << 20, now);
        if p.held.is_some() {
            return p.held;
        }
        if p.bytes == 0 {
            return None;
        }
    }
    None
}

#[test]
fn background_runs_only_inside_its_windows() {
    let c = Clock::new();
    let mut s = Scheduler::new(
        &cfg("background_hours = ['22:00-06:00', '12:00-13:00']"),
        None,
        c.at(0.0, noon()),
    );
    s.begin(Class::Background);
    let day = date(2026, 1, 15);
    for (h, m, allowed) in [
        (21, 59, false),
        (22, 0, true),
        (23, 59, true),
        (0, 0, true),
        (5, 59, true),
        (6, 0, false),
        (12, 30, true),
        (13, 0, false),
    ] {
        let now = c.at(0.0, day.at(h, m, 0, 0));
        let p = s.ask(Class::Background, 1000, now);
        let expect = if allowed {
            None
        } else {
            Some(Hold::OutsideWindow)
        };
        assert_eq!(p.held, expect, "{h}:{m:02}");
        assert!(p.wait <= MAX_WAIT);
        let st = s.status(now);
        assert_eq!(st.background.allowed, allowed);
        assert_eq!(st.background.hours, ["22:00-06:00", "12:00-13:00"]);
        // Held background is not announced as demand.
        assert_eq!(s.announce(now).background, u32::from(allowed));
    }
    // Interactive work ignores windows.
    let p = s.ask(Class::Interactive, 1000, c.at(1.0, day.at(9, 0, 0, 0)));
    assert_eq!((p.bytes, p.held), (1000, None));
}

#[test]
fn interactive_demand_holds_background_which_resumes_after() {
    let c = Clock::new();
    let mut s = Scheduler::new(&cfg("max_rate = '8 Mbit/s'"), None, c.at(0.0, noon()));
    s.begin(Class::Background);
    assert_eq!(drain(&mut s, Class::Background, c.at(0.0, noon())), None);
    s.begin(Class::Interactive);
    let now = c.at(0.5, noon());
    let p = s.ask(Class::Background, 1000, now);
    assert_eq!((p.bytes, p.held), (0, Some(Hold::InteractiveBusy)));
    assert_eq!(p.wait, BUSY_RETRY);
    assert_eq!(s.status(now).background.why_not, [Hold::InteractiveBusy]);
    assert!(s.ask(Class::Interactive, 1000, now).bytes > 0);
    s.end(Class::Interactive);
    let now = c.at(1.0, noon());
    let p = s.ask(Class::Background, 1000, now);
    assert_eq!((p.bytes, p.held), (1000, None), "resumed");

    // A peer's waiting client holds this node's background too.
    s.heard(
        "peer",
        Announcement {
            interactive: 1,
            ..Default::default()
        },
        now.mono,
    );
    let p = s.ask(Class::Background, 1000, c.at(1.1, noon()));
    assert_eq!(p.held, Some(Hold::InteractiveBusy));
    // …until the peer says it is done.
    s.heard("peer", Announcement::default(), c.at(1.2, noon()).mono);
    let p = s.ask(Class::Background, 1000, c.at(1.3, noon()));
    assert_eq!(p.held, None);
}

#[test]
fn a_spent_budget_stops_background_but_not_clients() {
    let c = Clock::new();
    let jan = date(2026, 1, 20).at(12, 0, 0, 0);
    let mut s = Scheduler::new(
        &cfg("monthly_budget = '1 MiB'\nbudget_reset_day = 31"),
        None,
        c.at(0.0, jan),
    );
    s.begin(Class::Background);
    let p = s.ask(Class::Background, 1 << 20, c.at(0.0, jan));
    assert_eq!(p.bytes, 1 << 20);
    let now = c.at(1.0, jan);
    let p = s.ask(Class::Background, 1, now);
    assert_eq!((p.bytes, p.held), (0, Some(Hold::BudgetSpent)));
    assert_eq!(p.wait, HOLD_RETRY);
    let p = s.ask(Class::Interactive, 5000, now);
    assert_eq!(p.bytes, 5000, "clients go on");
    let st = s.status(now).budget;
    assert!(st.spent);
    assert_eq!(st.used, (1 << 20) + 5000);
    assert_eq!(st.left, Some(0));
    assert_eq!(st.period_start, date(2025, 12, 31));
    assert_eq!(st.resets_on, Some(date(2026, 1, 31)));
    assert_eq!(s.status(now).background.why_not, [Hold::BudgetSpent]);
    // The reset day: a new period, background runs again.
    let reset = c.at(2.0, date(2026, 1, 31).at(0, 0, 0, 0));
    assert_eq!(s.ask(Class::Background, 10, reset).held, None);
    assert_eq!(s.budget_state().used, 10);
    assert_eq!(s.status(reset).budget.resets_on, Some(date(2026, 2, 28)));
}

#[test]
fn the_budget_counts_the_whole_site_and_survives_restarts() {
    let c = Clock::new();
    let day = date(2026, 3, 10).at(9, 0, 0, 0);
    let config = cfg("monthly_budget = '10 MB'");
    let mut s = Scheduler::new(&config, None, c.at(0.0, day));
    let _ = s.ask(Class::Interactive, 3_000_000, c.at(0.0, day));
    let peer = |used, period| Announcement {
        budget_used: used,
        budget_period: Some(period),
        ..Default::default()
    };
    s.heard("a", peer(6_000_000, date(2026, 3, 1)), c.t0);
    s.heard("b", peer(9_000_000, date(2026, 2, 1)), c.t0); // another period: not counted
    let st = s.status(c.at(0.0, day)).budget;
    assert_eq!(
        (st.used, st.used_here, st.left),
        (9_000_000, 3_000_000, Some(1_000_000))
    );
    assert!(!st.spent);
    s.heard("a", peer(7_000_000, date(2026, 3, 1)), c.t0);
    s.begin(Class::Background);
    assert_eq!(
        s.ask(Class::Background, 1, c.at(0.0, day)).held,
        Some(Hold::BudgetSpent)
    );
    // Its own count is what it stores; a restart goes on from it.
    let stored = s.budget_state();
    let json = serde_json::to_string(&stored).unwrap();
    let back: BudgetState = serde_json::from_str(&json).unwrap();
    let s2 = Scheduler::new(&config, Some(back), c.at(0.0, day));
    assert_eq!(s2.budget_state(), stored);
    assert_eq!(stored.used, 3_000_000);
    assert_eq!(config.monthly_budget, Some(Size(10_000_000)));
}

#[test]
fn a_node_whose_peers_went_silent_keeps_a_safe_share() {
    let c = Clock::new();
    let mut s = Scheduler::new(&cfg("max_rate = '9 MB/s'"), None, c.at(0.0, noon()));
    let busy = Announcement {
        interactive: 1,
        max_rate: Some(9_000_000),
        ..Default::default()
    };
    s.heard("a", busy.clone(), c.t0);
    s.heard("b", busy, c.t0);
    s.begin(Class::Interactive);
    let st = s.status(c.at(1.0, noon()));
    assert_eq!(
        (st.share, st.fallback, st.peers_heard),
        (Some(3_000_000), false, 2)
    );
    // Both peers go silent (the mesh to them broke; they may still be downloading).
    let st = s.status(c.at(10.0, noon()));
    assert_eq!(
        st.share,
        Some(3_000_000),
        "cap / (1 + 2 peers), not the whole cap"
    );
    assert!(st.fallback);
    assert_eq!(st.peers_silent, 2);
    // One comes back idle: its reserve is freed, the silent one's stays.
    s.heard("a", Announcement::default(), c.at(10.0, noon()).mono);
    assert_eq!(s.status(c.at(10.0, noon())).share, Some(6_000_000));
    // After an hour of silence the other one is no longer counted.
    let later = c.at(3700.0, noon());
    s.heard("a", Announcement::default(), later.mono);
    let st = s.status(later);
    assert_eq!((st.share, st.fallback), (Some(9_000_000), false));
}

#[test]
fn the_site_cap_is_the_smallest_configured() {
    let c = Clock::new();
    let mut s = Scheduler::new(&cfg("max_rate = '8 Mbit/s'"), None, c.at(0.0, noon()));
    let capped = |r| Announcement {
        max_rate: Some(r),
        ..Default::default()
    };
    s.heard("a", capped(250_000), c.t0);
    let st = s.status(c.at(0.0, noon()));
    assert_eq!(st.max_rate, Some(250_000));
    assert_eq!(st.max_rate_text.as_deref(), Some("2.0 Mbit/s"));
    // A node without a cap of its own follows a capped peer.
    let mut free = Scheduler::new(&cfg(""), None, c.at(0.0, noon()));
    assert_eq!(free.status(c.at(0.0, noon())).max_rate, None);
    free.heard("a", capped(250_000), c.t0);
    assert_eq!(free.status(c.at(0.0, noon())).share, Some(250_000));
}

#[test]
fn without_a_cap_bytes_go_at_once_but_priorities_hold() {
    let c = Clock::new();
    let mut s = Scheduler::new(&cfg(""), None, c.at(0.0, noon()));
    let p = s.ask(Class::Interactive, u64::MAX, c.at(0.0, noon()));
    assert_eq!((p.bytes, p.wait), (u64::MAX, Duration::ZERO));
    s.begin(Class::Interactive);
    s.begin(Class::Background);
    let p = s.ask(Class::Background, 10, c.at(0.0, noon()));
    assert_eq!(p.held, Some(Hold::InteractiveBusy));
    let st = s.status(c.at(0.0, noon()));
    assert_eq!((st.max_rate, st.share), (None, None));
    assert_eq!(st.budget.used, u64::MAX, "counted, saturating");
}

#[test]
fn announcements_are_due_on_change_and_every_second() {
    let c = Clock::new();
    let mut s = Scheduler::new(&cfg("max_rate = '1 MB/s'"), None, c.at(0.0, noon()));
    assert!(s.announcement_due(c.at(0.0, noon())), "never announced");
    let a = s.announce(c.at(0.0, noon()));
    assert_eq!(a.max_rate, Some(1_000_000));
    assert_eq!(a.budget_period, Some(date(2026, 1, 1)));
    assert!(!s.announcement_due(c.at(0.5, noon())));
    s.begin(Class::Interactive);
    assert!(s.announcement_due(c.at(0.5, noon())), "demand changed");
    assert_eq!(s.announce(c.at(0.5, noon())).interactive, 1);
    assert!(!s.announcement_due(c.at(1.4, noon())));
    assert!(s.announcement_due(c.at(1.5, noon())), "a second passed");
}

#[test]
fn a_transfer_guard_ends_its_demand_when_dropped() {
    let c = Clock::new();
    let up = Uplink::new(Scheduler::new(
        &cfg("max_rate = '1 MB/s'"),
        None,
        c.at(0.0, noon()),
    ));
    let t = up.transfer(Class::Interactive);
    let t2 = up.transfer(Class::Background);
    assert_eq!(t.class(), Class::Interactive);
    assert_eq!(up.lock().status(c.at(0.0, noon())).transfers.interactive, 1);
    assert_eq!(
        t2.ask(1, c.at(0.0, noon())).held,
        Some(Hold::InteractiveBusy)
    );
    let p = t.ask(50_000, c.at(0.0, noon()));
    assert_eq!(p.bytes, 50_000);
    drop(t);
    let st = up.lock().status(c.at(0.0, noon()));
    assert_eq!(
        st.transfers,
        Demand {
            interactive: 0,
            background: 1
        }
    );
    assert_eq!(t2.ask(1, c.at(0.1, noon())).held, None);
    drop(t2);
    assert_eq!(
        up.lock().status(c.at(0.1, noon())).transfers,
        Demand::default()
    );
}

#[test]
fn permits_stay_short_on_any_input() {
    let c = Clock::new();
    for rate in ["8 bit/s", "1 kbit/s", "100 Mbit/s", "1000000 TB/s"] {
        let mut s = Scheduler::new(
            &cfg(&format!("max_rate = '{rate}'")),
            None,
            c.at(0.0, noon()),
        );
        for p in 0..64 {
            s.heard(&format!("p{p}"), Announcement::default(), c.t0);
        }
        for (i, want) in [0, 1, 1500, u64::MAX].into_iter().enumerate() {
            for k in 0..50 {
                let now = c.at(20.0 + i as f64 + k as f64 * 0.01, noon());
                for class in [Class::Interactive, Class::Background] {
                    let p = s.ask(class, want, now);
                    assert!(p.wait <= MAX_WAIT, "{rate} {want}: {p:?}");
                    assert!(p.bytes <= want);
                }
            }
        }
        // Every peer silent: cap / 65 may round to 0 B/s; that waits, it does not divide by 0.
        let st = s.status(c.at(30.0, noon()));
        assert!(st.fallback);
        assert!(st.share.is_some());
    }
}

#[test]
fn status_is_json_for_api_status() {
    let c = Clock::new();
    let mut s = Scheduler::new(
        &cfg(
            "max_rate = '4 Mbit/s'\nbackground_hours = ['22:00-06:00']\nmonthly_budget = '30 GiB'",
        ),
        None,
        c.at(0.0, noon()),
    );
    s.begin(Class::Interactive);
    let _ = s.ask(Class::Interactive, 1000, c.at(0.0, noon()));
    let v = serde_json::to_value(s.status(c.at(0.5, noon()))).unwrap();
    assert_eq!(v["max_rate"], 500_000);
    assert_eq!(v["max_rate_text"], "4.0 Mbit/s");
    assert_eq!(v["share"], 500_000);
    assert_eq!(v["rate"]["interactive"], 200, "1000 B over the last 5 s");
    assert_eq!(v["transfers"]["interactive"], 1);
    assert_eq!(v["background"]["allowed"], false);
    assert_eq!(
        v["background"]["why_not"],
        serde_json::json!(["outside_window", "interactive_busy"])
    );
    assert_eq!(v["budget"]["limit"], 30u64 << 30);
    assert_eq!(v["budget"]["used"], 1000);
    assert_eq!(v["budget"]["period_start"], "2026-01-01");
    assert_eq!(v["budget"]["resets_on"], "2026-02-01");
}

#[test]
fn background_hold_says_why_a_prefetch_may_not_start() {
    let c = Clock::new();
    let mut s = Scheduler::new(
        &cfg("background_hours = ['22:00-06:00']\nmonthly_budget = '1 MiB'"),
        None,
        c.at(0.0, noon()),
    );
    let night = date(2026, 1, 15).at(23, 30, 0, 0);
    assert_eq!(
        s.background_hold(c.at(0.0, noon())),
        Some(Hold::OutsideWindow)
    );
    assert_eq!(s.background_hold(c.at(0.0, night)), None);
    s.begin(Class::Interactive);
    assert_eq!(
        s.background_hold(c.at(0.0, night)),
        Some(Hold::InteractiveBusy)
    );
    s.end(Class::Interactive);
    // spend the budget (interactive bytes count too), then it holds until the reset
    let _ = s.ask(Class::Interactive, 2 << 20, c.at(0.0, night));
    assert_eq!(s.background_hold(c.at(1.0, night)), Some(Hold::BudgetSpent));
    let next_month = date(2026, 2, 1).at(23, 0, 0, 0);
    assert_eq!(s.background_hold(c.at(2.0, next_month)), None);
}

#[test]
fn a_promoted_transfer_counts_as_interactive_from_then_on() {
    let c = Clock::new();
    let u = Uplink::new(Scheduler::new(&cfg(""), None, c.at(0.0, noon())));
    let mut t = u.transfer(Class::Background);
    assert_eq!(u.lock().active, [0, 1]);
    assert_eq!(u.lock().background_hold(c.at(0.0, noon())), None);
    t.promote();
    assert_eq!(t.class(), Class::Interactive);
    assert_eq!(u.lock().active, [1, 0]);
    // other background work now waits for it
    assert_eq!(
        u.lock().background_hold(c.at(0.0, noon())),
        Some(Hold::InteractiveBusy)
    );
    t.promote(); // twice is once
    assert_eq!(u.lock().active, [1, 0]);
    drop(t);
    assert_eq!(u.lock().active, [0, 0]);
}
