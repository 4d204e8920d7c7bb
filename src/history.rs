//! The figures the dashboard shows over time: bytes served to clients and bytes taken in by
//! source (this node's store, other nodes, seed disks, upstream), since install and per local
//! day, kept in the index so a restart loses none of it; and the recent warnings, in codes the
//! message catalogs put in words.
//!
//! How: the node's counters ([`Stats`]) only grow while the process runs. Every few seconds
//! (and whenever `/api/status` is asked for) [`History::observe`] takes what they grew by since
//! the last look and adds it to the total and to today's row ([`Ledger`], pure: no clock, no
//! I/O). [`History::flush`] writes the rows that changed to the index's `history` table through
//! the one index writer, once a minute and at shutdown, so a crash loses at most a minute of
//! counts. Days older than [`DAYS_KEPT`] are dropped.
//!
//! Rows (JSON): `"total"` → `{since, served, upstream, store, peers, seed}` (`since`: when this
//! node first counted, unix seconds); `"day/2026-05-12"` → the same without `since`.
//!
//! What the sources mean: `served` is body bytes sent to clients; `store` the part of them sent
//! from files this node already held (the rest was streamed from a transfer as it arrived);
//! `peers`, `seed` and `upstream` the bytes transfers took in from other nodes, seed
//! directories and upstream. "Saved" is `served − upstream` (never below zero).
//!
//! Recent warnings ([`Ledger::events`]) come from the same look: a counter of trouble that grew
//! (a download that failed verification, a peer put aside, a refused stranger…), a repo whose
//! upstream became unreachable, the store switching to pass-through. The same warning within
//! an hour adds to the last one's count. They live in memory only (the last
//! [`EVENTS_KEPT`]).
//!
//! Not here: rendering (the `dashboard` module), the counters themselves (`stats`).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use jiff::civil::Date;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::stats::Stats;
use crate::store::{Batch, Store, StoreError, now_secs};

/// Days shown in the status (and the dashboard's chart), today included.
pub const DAYS_SHOWN: usize = 30;
/// Days kept in the index (enough for "this month" and the chart).
pub const DAYS_KEPT: i64 = 62;
/// Recent warnings kept in memory.
pub const EVENTS_KEPT: usize = 20;
/// The same warning within this many seconds adds to the last one's count.
const COALESCE_SECS: u64 = 3600;

/// Bytes by what they were.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counts {
    /// Sent to clients.
    pub served: u64,
    /// Taken from upstream.
    pub upstream: u64,
    /// Sent to clients from files this node held.
    pub store: u64,
    /// Taken from other nodes of the site.
    pub peers: u64,
    /// Taken from seed directories.
    pub seed: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.served = self.served.saturating_add(o.served);
        self.upstream = self.upstream.saturating_add(o.upstream);
        self.store = self.store.saturating_add(o.store);
        self.peers = self.peers.saturating_add(o.peers);
        self.seed = self.seed.saturating_add(o.seed);
    }

    /// What grew from `old` to `self`, field by field (a field that reads lower grew by 0).
    fn since(&self, old: &Counts) -> Counts {
        Counts {
            served: self.served.saturating_sub(old.served),
            upstream: self.upstream.saturating_sub(old.upstream),
            store: self.store.saturating_sub(old.store),
            peers: self.peers.saturating_sub(old.peers),
            seed: self.seed.saturating_sub(old.seed),
        }
    }

    /// The larger of each field.
    fn max(&self, o: &Counts) -> Counts {
        Counts {
            served: self.served.max(o.served),
            upstream: self.upstream.max(o.upstream),
            store: self.store.max(o.store),
            peers: self.peers.max(o.peers),
            seed: self.seed.max(o.seed),
        }
    }

    fn is_zero(&self) -> bool {
        *self == Counts::default()
    }

    /// The figures as status shows them, with `saved` and `saved_pct` (whole percent of
    /// `served`; null when nothing was served).
    fn json(&self) -> Value {
        let saved = self.served.saturating_sub(self.upstream);
        json!({
            "served": self.served,
            "upstream": self.upstream,
            "store": self.store,
            "peers": self.peers,
            "seed": self.seed,
            "saved": saved,
            "sources": self
                .store
                .saturating_add(self.peers)
                .saturating_add(self.seed)
                .saturating_add(self.upstream),
            "saved_pct": (self.served > 0)
                .then(|| (u128::from(saved) * 100 / u128::from(self.served)) as u64),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct TotalRow {
    since: u64,
    #[serde(flatten)]
    counts: Counts,
}

/// What the node's counters say now: the byte counts, the trouble counters, and the states
/// whose changes are warnings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub counts: Counts,
    /// `(warning code, counter)`: a counter that grew is a warning.
    pub alarms: Vec<(&'static str, u64)>,
    /// Repos whose upstream is unreachable now.
    pub offline: Vec<String>,
    /// New downloads are passed through (the store is full of files that must stay).
    pub passthrough: bool,
}

impl Observed {
    /// The counters part, from the node's [`Stats`].
    pub fn from_stats(s: &Stats) -> Observed {
        let served = Stats::get(&s.bytes_served);
        Observed {
            counts: Counts {
                served,
                upstream: Stats::get(&s.bytes_fetched),
                store: served.saturating_sub(Stats::get(&s.streamed_bytes)),
                peers: Stats::get(&s.bytes_from_peers),
                seed: Stats::get(&s.bytes_from_seeds),
            },
            alarms: vec![
                ("verify_failed", Stats::get(&s.verify_failures)),
                ("upstream_errors", Stats::get(&s.upstream_errors)),
                ("peer_bad_bytes", Stats::get(&s.peer_verify_failures)),
                ("peer_too_slow", Stats::get(&s.peer_too_slow)),
                ("peer_refused", Stats::get(&s.peers_refused)),
                ("stale_served", Stats::get(&s.stale_served)),
            ],
            offline: Vec::new(),
            passthrough: false,
        }
    }
}

/// One recent warning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// How many times (within [`COALESCE_SECS`] of each other).
    pub count: u64,
    /// The last time, unix seconds.
    pub at: u64,
}

/// The history itself, without I/O or clock: what [`History`] keeps and writes.
#[derive(Debug)]
pub struct Ledger {
    since: u64,
    total: Counts,
    days: BTreeMap<Date, Counts>,
    /// The counters at the last look (zero: the process's counters start at zero).
    last: Counts,
    last_alarms: HashMap<&'static str, u64>,
    offline: BTreeSet<String>,
    passthrough: bool,
    events: VecDeque<Event>,
    dirty_total: bool,
    dirty_days: BTreeSet<Date>,
    gone_days: Vec<Date>,
}

fn day_key(d: Date) -> String {
    format!("day/{d}")
}

impl Ledger {
    /// A ledger with nothing counted, first counting at `now` (unix seconds).
    pub fn new(now: u64) -> Ledger {
        Ledger {
            since: now,
            total: Counts::default(),
            days: BTreeMap::new(),
            last: Counts::default(),
            last_alarms: HashMap::new(),
            offline: BTreeSet::new(),
            passthrough: false,
            events: VecDeque::new(),
            dirty_total: true,
            dirty_days: BTreeSet::new(),
            gone_days: Vec::new(),
        }
    }

    /// The ledger the index's rows hold (unreadable rows are skipped with a warning).
    pub fn load(rows: &[(String, Vec<u8>)], now: u64) -> Ledger {
        let mut l = Ledger::new(now);
        for (k, v) in rows {
            if k == "total" {
                match serde_json::from_slice::<TotalRow>(v) {
                    Ok(t) => {
                        l.since = t.since;
                        l.total = t.counts;
                        l.dirty_total = false;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the stored traffic total is unreadable; counting from zero")
                    }
                }
            } else if let Some(d) = k.strip_prefix("day/") {
                match (d.parse::<Date>(), serde_json::from_slice::<Counts>(v)) {
                    (Ok(d), Ok(c)) => {
                        l.days.insert(d, c);
                    }
                    _ => {
                        tracing::warn!(row = %k, "an unreadable day of traffic history was skipped")
                    }
                }
            }
        }
        l
    }

    /// Adds what the counters grew by since the last look to the total and to `today`, and
    /// notes warnings. `now`: unix seconds.
    pub fn observe(&mut self, o: &Observed, today: Date, now: u64) {
        let grew = o.counts.since(&self.last);
        self.last = self.last.max(&o.counts);
        if !grew.is_zero() {
            self.total.add(&grew);
            self.days.entry(today).or_default().add(&grew);
            self.dirty_total = true;
            self.dirty_days.insert(today);
        }
        if let Ok(oldest) = today.checked_sub(jiff::Span::new().days(DAYS_KEPT)) {
            while let Some((&d, _)) = self.days.first_key_value() {
                if d >= oldest {
                    break;
                }
                self.days.remove(&d);
                self.dirty_days.remove(&d);
                self.gone_days.push(d);
            }
        }
        for &(code, n) in &o.alarms {
            let before = self.last_alarms.insert(code, n).unwrap_or(0);
            if n > before {
                self.note(code, None, n - before, now);
            }
        }
        let offline: BTreeSet<String> = o.offline.iter().cloned().collect();
        let began: Vec<String> = offline.difference(&self.offline).cloned().collect();
        for repo in began {
            self.note("upstream_offline", Some(repo), 1, now);
        }
        self.offline = offline;
        if o.passthrough && !self.passthrough {
            self.note("store_passthrough", None, 1, now);
        }
        self.passthrough = o.passthrough;
    }

    fn note(&mut self, code: &'static str, repo: Option<String>, n: u64, now: u64) {
        let same = self.events.iter().position(|e| {
            e.code == code && e.repo == repo && now.saturating_sub(e.at) < COALESCE_SECS
        });
        let e = match same.and_then(|i| self.events.remove(i)) {
            Some(mut e) => {
                e.count = e.count.saturating_add(n);
                e.at = now;
                e
            }
            None => Event {
                code,
                repo,
                count: n,
                at: now,
            },
        };
        self.events.push_front(e);
        self.events.truncate(EVENTS_KEPT);
    }

    /// Recent warnings, the latest first.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.events.iter()
    }

    /// Bytes since install.
    pub fn total(&self) -> Counts {
        self.total
    }

    /// The rows to write (changed since the last call) and to delete.
    pub fn take_changes(&mut self) -> (Vec<(String, Vec<u8>)>, Vec<String>) {
        let mut put = Vec::new();
        if self.dirty_total {
            let row = TotalRow {
                since: self.since,
                counts: self.total,
            };
            if let Ok(v) = serde_json::to_vec(&row) {
                put.push(("total".to_string(), v));
            }
            self.dirty_total = false;
        }
        for d in std::mem::take(&mut self.dirty_days) {
            if let Some(c) = self.days.get(&d)
                && let Ok(v) = serde_json::to_vec(c)
            {
                put.push((day_key(d), v));
            }
        }
        let gone = self.gone_days.drain(..).map(day_key).collect();
        (put, gone)
    }

    /// Gives back rows [`Ledger::take_changes`] took that could not be written.
    fn unwritten(&mut self, put: &[(String, Vec<u8>)]) {
        for (k, _) in put {
            if k == "total" {
                self.dirty_total = true;
            } else if let Some(d) = k.strip_prefix("day/").and_then(|d| d.parse().ok()) {
                self.dirty_days.insert(d);
            }
        }
    }

    /// The `history` part of `/api/status` on `today`: since install, today, this calendar
    /// month, and the last [`DAYS_SHOWN`] days (oldest first, days without traffic as zeros).
    /// `since_date`: the local date of `since`.
    pub fn view(&self, today: Date, since_date: Option<Date>) -> Value {
        let mut month = Counts::default();
        for (_, c) in self.days.range(today.first_of_month()..=today) {
            month.add(c);
        }
        let mut days = Vec::with_capacity(DAYS_SHOWN);
        let mut days_max = 0u64;
        let mut d = today;
        for _ in 0..DAYS_SHOWN {
            let c = self.days.get(&d).copied().unwrap_or_default();
            days_max = days_max.max(c.served).max(c.upstream);
            let mut row = c.json();
            row["date"] = json!(d.to_string());
            days.push(row);
            match d.yesterday() {
                Ok(y) => d = y,
                Err(_) => break,
            }
        }
        days.reverse();
        let mut total = self.total.json();
        total["since"] = json!(self.since);
        total["since_date"] = json!(since_date.map(|d| d.to_string()));
        let mut t = self.days.get(&today).copied().unwrap_or_default().json();
        t["date"] = json!(today.to_string());
        let mut m = month.json();
        m["month"] = json!(format!("{:04}-{:02}", today.year(), today.month()));
        json!({
            "since_install": total,
            "today": t,
            "month": m,
            "days": days,
            "days_max": days_max,
        })
    }

    /// The `recent_warnings` part of `/api/status` at `now` (unix seconds).
    pub fn events_view(&self, now: u64) -> Value {
        Value::Array(
            self.events
                .iter()
                .map(|e| {
                    let mut v = json!(e);
                    v["ago_secs"] = json!(now.saturating_sub(e.at));
                    v
                })
                .collect(),
        )
    }
}

/// The ledger of a running node, read from and written to its index.
pub struct History {
    store: Store,
    ledger: Mutex<Ledger>,
    /// The stored rows could not be read: do not overwrite them.
    read_only: bool,
}

/// Today's date in the system time zone.
pub fn today() -> Date {
    jiff::ZonedDateTime::now().date()
}

impl History {
    /// Reads the history the index holds.
    pub fn open(store: &Store) -> History {
        let now = now_secs();
        let (ledger, read_only) = match store.history_rows() {
            Ok(rows) => (Ledger::load(&rows, now), false),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the traffic history; the dashboard counts from zero and keeps nothing this run");
                (Ledger::new(now), true)
            }
        };
        History {
            store: store.clone(),
            ledger: Mutex::new(ledger),
            read_only,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a look at the counters now (see [`Ledger::observe`]).
    pub fn observe(&self, o: &Observed) {
        self.lock().observe(o, today(), now_secs());
    }

    /// `(history, recent_warnings)` for `/api/status`.
    pub fn view(&self) -> (Value, Value) {
        let l = self.lock();
        let since = jiff::Timestamp::from_second(l.since as i64)
            .ok()
            .map(|t| t.to_zoned_datetime(jiff::tz::TimeZone::system()).date());
        (l.view(today(), since), l.events_view(now_secs()))
    }

    /// Writes what changed since the last flush, in one index transaction.
    pub async fn flush(&self) -> Result<(), StoreError> {
        if self.read_only {
            return Ok(());
        }
        let (put, gone) = self.lock().take_changes();
        if put.is_empty() && gone.is_empty() {
            return Ok(());
        }
        let mut b = Batch::new();
        for (k, v) in &put {
            b.put_history(k.clone(), v.clone());
        }
        for k in gone {
            b.remove_history(k);
        }
        let r = self.store.commit(b).await;
        if r.is_err() {
            self.lock().unwritten(&put);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Date {
        s.parse().unwrap()
    }

    fn obs(served: u64, upstream: u64) -> Observed {
        Observed {
            counts: Counts {
                served,
                upstream,
                store: served / 2,
                ..Counts::default()
            },
            ..Observed::default()
        }
    }

    #[test]
    fn growth_goes_to_the_total_and_the_day_it_was_seen() {
        let mut l = Ledger::new(100);
        l.observe(&obs(1000, 400), d("2026-05-31"), 200);
        l.observe(&obs(1500, 400), d("2026-05-31"), 300);
        l.observe(&obs(4000, 1400), d("2026-06-01"), 400);
        assert_eq!(l.total().served, 4000);
        assert_eq!(l.total().upstream, 1400);
        let v = l.view(d("2026-06-01"), Some(d("2026-05-01")));
        assert_eq!(v["today"]["served"], 2500);
        assert_eq!(v["today"]["upstream"], 1000);
        assert_eq!(v["today"]["saved"], 1500);
        assert_eq!(v["today"]["saved_pct"], 60);
        // The month starts on the 1st: May's bytes are not June's.
        assert_eq!(v["month"]["served"], 2500);
        assert_eq!(v["month"]["month"], "2026-06");
        assert_eq!(v["since_install"]["served"], 4000);
        assert_eq!(v["since_install"]["since"], 100);
        assert_eq!(v["since_install"]["since_date"], "2026-05-01");
        let days = v["days"].as_array().unwrap();
        assert_eq!(days.len(), DAYS_SHOWN);
        assert_eq!(days[DAYS_SHOWN - 1]["date"], "2026-06-01");
        assert_eq!(days[DAYS_SHOWN - 2]["date"], "2026-05-31");
        assert_eq!(days[DAYS_SHOWN - 2]["served"], 1500);
        assert_eq!(days[0]["served"], 0);
        // Nothing served: no percentage rather than a division by zero.
        assert_eq!(Counts::default().json()["saved_pct"], Value::Null);
    }

    #[test]
    fn a_restart_adds_to_what_the_index_holds() {
        let mut l = Ledger::new(100);
        l.observe(&obs(1000, 400), d("2026-05-31"), 200);
        let (put, gone) = l.take_changes();
        assert!(gone.is_empty());
        assert_eq!(put.len(), 2, "{put:?}");
        // Nothing new: nothing to write.
        l.observe(&obs(1000, 400), d("2026-05-31"), 210);
        assert_eq!(l.take_changes().0.len(), 0);
        // A new process: its counters start at zero again.
        let mut l2 = Ledger::load(&put, 999);
        l2.observe(&obs(300, 100), d("2026-05-31"), 1000);
        assert_eq!(l2.total().served, 1300);
        assert_eq!(l2.total().upstream, 500);
        let v = l2.view(d("2026-05-31"), None);
        assert_eq!(v["today"]["served"], 1300);
        assert_eq!(v["since_install"]["since"], 100);
    }

    #[test]
    fn old_days_are_dropped_from_the_index() {
        let mut l = Ledger::new(0);
        l.observe(&obs(10, 0), d("2026-01-01"), 1);
        let _ = l.take_changes();
        l.observe(&obs(20, 0), d("2026-04-01"), 2);
        let (put, gone) = l.take_changes();
        assert_eq!(gone, vec!["day/2026-01-01".to_string()]);
        assert!(put.iter().any(|(k, _)| k == "day/2026-04-01"));
        assert_eq!(l.total().served, 20);
    }

    #[test]
    fn unwritten_rows_are_written_next_time() {
        let mut l = Ledger::new(0);
        l.observe(&obs(10, 0), d("2026-01-01"), 1);
        let (put, _) = l.take_changes();
        l.unwritten(&put);
        assert_eq!(l.take_changes().0.len(), 2);
    }

    #[test]
    fn warnings_come_from_counters_that_grew_and_states_that_began() {
        let mut l = Ledger::new(0);
        let mut o = obs(0, 0);
        o.alarms = vec![("verify_failed", 0), ("peer_refused", 0)];
        l.observe(&o, d("2026-01-01"), 10);
        assert_eq!(l.events().count(), 0);
        o.alarms = vec![("verify_failed", 2), ("peer_refused", 0)];
        o.offline = vec!["epel".into()];
        l.observe(&o, d("2026-01-01"), 20);
        // Still offline, the same count: nothing new.
        l.observe(&o, d("2026-01-01"), 30);
        let ev: Vec<_> = l.events().cloned().collect();
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert_eq!(ev[0].code, "upstream_offline");
        assert_eq!(ev[0].repo.as_deref(), Some("epel"));
        assert_eq!(ev[1].code, "verify_failed");
        assert_eq!(ev[1].count, 2);
        // Within the hour the same warning adds up and moves to the front...
        o.alarms = vec![("verify_failed", 3), ("peer_refused", 0)];
        l.observe(&o, d("2026-01-01"), 100);
        let first = l.events().next().unwrap();
        assert_eq!(
            (first.code, first.count, first.at),
            ("verify_failed", 3, 100)
        );
        // ...later it is a new one.
        o.alarms = vec![("verify_failed", 4), ("peer_refused", 0)];
        l.observe(&o, d("2026-01-01"), 100 + COALESCE_SECS);
        assert_eq!(l.events().filter(|e| e.code == "verify_failed").count(), 2);
        // The view says how long ago.
        let v = l.events_view(100 + COALESCE_SECS + 5);
        assert_eq!(v[0]["ago_secs"], 5);
        assert!(v[0].get("repo").is_none());
        // Pass-through beginning is a warning; going on is not a new one.
        o.passthrough = true;
        l.observe(&o, d("2026-01-01"), 5000);
        l.observe(&o, d("2026-01-01"), 5001);
        assert_eq!(
            l.events().filter(|e| e.code == "store_passthrough").count(),
            1
        );
        // Bounded.
        for i in 0..100 {
            o.offline = vec![format!("r{i}")];
            l.observe(&o, d("2026-01-01"), 6000 + i);
        }
        assert_eq!(l.events().count(), EVENTS_KEPT);
    }
}
