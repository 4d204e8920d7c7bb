//! The uplink scheduler: decides **when** and **how fast** this node may take bytes from
//! upstream, so that the whole site stays under `[uplink] max_rate`, clients waiting for a
//! download go first, background work (prefetch, mirroring) runs only inside
//! `background_hours` and while the `monthly_budget` lasts.
//!
//! What it deliberately does not do: no I/O, no sockets, no sleeping, no clock reading of its
//! own (apart from [`Now::system`], which the caller may use or not). The caller passes the time
//! ([`Now`]: a monotonic `Instant` and the local wall-clock time), does the waiting a
//! [`Permit`] asks for, carries [`Announcement`]s between the site's nodes, and stores
//! [`BudgetState`]. So everything here is tested with a controlled clock ([`sim`]).
//!
//! # How a node uses it
//!
//! One [`Uplink`] per node (an `Arc`), built from the config and the stored budget state:
//! `Uplink::new(Scheduler::new(&cfg.uplink, stored, Now::system()))`.
//!
//! **Each transfer from upstream** takes a [`Transfer`] (it counts as demand until dropped) and,
//! for each chunk the body yields, asks before passing the bytes on:
//!
//! ```no_run
//! # use lanmirror::uplink::{Class, Now, Uplink};
//! # async fn f(uplink: std::sync::Arc<Uplink>, mut chunk: bytes::Bytes) {
//! let transfer = uplink.transfer(Class::Interactive); // Background for prefetch/mirroring
//! // for each chunk from the upstream body:
//! while !chunk.is_empty() {
//!     let p = transfer.ask(chunk.len() as u64, Now::system());
//!     tokio::time::sleep(p.wait).await; // ≤ 1 s: the stream is never still for long
//!     let part = chunk.split_to(p.bytes as usize); // p.bytes ≤ what was asked; may be 0
//!     // … hash, write, wake readers with `part` …
//! }
//! # }
//! ```
//!
//! A background transfer that gets `p.held == Some(..)` (outside its window, budget spent, a
//! client waiting) may keep asking after each `p.wait` (the stream stays open and resumes where
//! it stopped), or, once held for some tens of seconds, close its upstream response and resume
//! later with a Range request: mirrors drop connections they cannot write to for long.
//!
//! **The site.** One announcer task per node tells every peer this node's demand, and hands each
//! announcement a peer sends to [`Scheduler::heard`] with that peer's node id (see [`share`] for
//! how the cap is split):
//!
//! ```no_run
//! # use lanmirror::uplink::{Now, Uplink, share::ANNOUNCE_EVERY};
//! # async fn f(uplink: std::sync::Arc<Uplink>) {
//! loop {
//!     tokio::select! {
//!         _ = uplink.changed() => {}                        // a transfer started or ended
//!         _ = tokio::time::sleep(ANNOUNCE_EVERY / 4) => {} // windows, budget, the heartbeat
//!     }
//!     let now = Now::system();
//!     let due = {
//!         let mut s = uplink.lock();
//!         s.announcement_due(now).then(|| s.announce(now))
//!     };
//!     if let Some(a) = due {
//!         // … send `a` to every admitted peer (a small JSON message on the QUIC mesh); on
//!         // receipt: uplink.lock().heard(&peer_node_id, a, Instant::now()) …
//!     }
//! }
//! # }
//! ```
//!
//! **Persistence:** store [`Scheduler::budget_state`] (serde) every minute or so and at
//! shutdown; a crash loses at most what was counted since. **Status:** [`Scheduler::status`]
//! is a serde struct for `/api/status`.

mod bucket;
mod budget;
pub mod share;
pub mod sim;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use jiff::civil::{Date, DateTime};
use serde::Serialize;

pub use crate::window::{Window, WindowError, in_windows};
pub use bucket::MAX_WAIT;
pub use budget::{Budget, BudgetState, next_reset_after, period_start, reset_date};
pub use share::{Announcement, Demand, Share};

use crate::config::UplinkConfig;
use crate::units::Rate;
use bucket::{Bucket, Meter};
use share::{Peers, View, split};

/// How long background work held by the clock or the budget waits before asking again.
pub const HOLD_RETRY: Duration = MAX_WAIT;
/// How long background work held for a waiting client waits before asking again (clients'
/// downloads end at any moment; the link should not then stay idle for long).
pub const BUSY_RETRY: Duration = Duration::from_millis(250);

/// Who is waiting for a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// A client is waiting for it: always goes first.
    Interactive,
    /// Nobody is waiting (prefetch, mirroring): gets the link when no client needs it, inside
    /// the background hours, while the budget lasts.
    Background,
}

impl Class {
    fn idx(self) -> usize {
        match self {
            Class::Interactive => 0,
            Class::Background => 1,
        }
    }
}

/// The two clocks the scheduler reads, passed in by the caller: monotonic time for pacing,
/// local wall-clock time for background hours and the budget's calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub local: DateTime,
}

impl Now {
    /// The system's clocks: `Instant::now()` and the local time in the system time zone (`TZ`,
    /// else `/etc/localtime`; UTC when neither can be read).
    pub fn system() -> Now {
        Now {
            mono: Instant::now(),
            local: jiff::ZonedDateTime::now().datetime(),
        }
    }
}

/// Why background work may not run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hold {
    /// The site's monthly budget is spent (until the reset day).
    BudgetSpent,
    /// Outside every `background_hours` window.
    OutsideWindow,
    /// A client somewhere at the site is waiting for a download.
    InteractiveBusy,
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hold::BudgetSpent => "the monthly budget is spent",
            Hold::OutsideWindow => "outside the background hours",
            Hold::InteractiveBusy => "a client of the site is downloading",
        })
    }
}

impl Hold {
    /// How long to wait before asking again.
    pub fn retry(self) -> Duration {
        match self {
            Hold::InteractiveBusy => BUSY_RETRY,
            Hold::BudgetSpent | Hold::OutsideWindow => HOLD_RETRY,
        }
    }
}

/// The answer to [`Scheduler::ask`]: wait `wait` (never more than [`MAX_WAIT`]), then pass on
/// `bytes` (at most what was asked; already counted). `bytes == 0`: nothing yet, ask again
/// after `wait`; `held` then says why when background work is held rather than paced.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    pub bytes: u64,
    pub wait: Duration,
    pub held: Option<Hold>,
}

/// Bytes per second by class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ClassRates {
    pub interactive: u64,
    pub background: u64,
}

/// The uplink part of `/api/status`. Rates and sizes are bytes (per second).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The site cap in force: the smallest `max_rate` of this node and the peers it knows;
    /// `None`: no cap.
    pub max_rate: Option<u64>,
    /// The same, readable: `"4.0 Mbit/s"`.
    pub max_rate_text: Option<String>,
    /// This node's share of the cap now (for an idle node: what a new client download would
    /// get); `None`: no cap.
    pub share: Option<u64>,
    /// True while some known peer has gone silent and its safe share is held back for it.
    pub fallback: bool,
    /// What this node took from upstream over the last 5 s.
    pub rate: ClassRates,
    /// Transfers running on this node, and on the site (this node and the peers heard lately).
    pub transfers: Demand,
    pub site_transfers: Demand,
    pub peers_heard: usize,
    pub peers_silent: usize,
    pub background: BackgroundStatus,
    pub budget: BudgetStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackgroundStatus {
    pub allowed: bool,
    /// Every reason that holds it now (empty when allowed).
    pub why_not: Vec<Hold>,
    /// The configured windows, `"22:00-06:00"`; empty: any time.
    pub hours: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetStatus {
    /// The monthly budget; `None`: none (the volume is still counted).
    pub limit: Option<u64>,
    /// The site's upstream bytes this period: this node's and those its peers announced.
    pub used: u64,
    /// This node's own part of `used`.
    pub used_here: u64,
    pub left: Option<u64>,
    pub spent: bool,
    pub period_start: Date,
    /// The first day of the next period.
    pub resets_on: Option<Date>,
}

/// One node's uplink scheduler. Not thread-safe by itself: share it as an [`Uplink`].
pub struct Scheduler {
    /// This node's configured cap, bytes per second.
    cap: Option<u64>,
    windows: Vec<Window>,
    budget: Budget,
    /// Transfers running here, by [`Class::idx`].
    active: [u32; 2],
    peers: Peers,
    buckets: [Bucket; 2],
    meters: [Meter; 2],
    /// When this node last announced, and the demand it announced.
    announced: Option<(Instant, Demand)>,
}

impl Scheduler {
    /// A scheduler for `cfg`, continuing the budget count `stored` (from the last run; `None`
    /// on a first start).
    pub fn new(cfg: &UplinkConfig, stored: Option<BudgetState>, now: Now) -> Scheduler {
        Scheduler {
            cap: cfg.max_rate.map(|r| r.0),
            windows: cfg.background_hours.clone(),
            budget: Budget::from_state(
                cfg.monthly_budget.map(|s| s.0),
                cfg.budget_reset_day,
                stored,
                now.local.date(),
            ),
            active: [0; 2],
            peers: Peers::default(),
            buckets: Default::default(),
            meters: [Meter::new(now.mono), Meter::new(now.mono)],
            announced: None,
        }
    }

    /// A transfer of `class` starts: it counts as this node's demand until [`end`](Self::end).
    /// ([`Uplink::transfer`] pairs the two.)
    pub fn begin(&mut self, class: Class) {
        let n = &mut self.active[class.idx()];
        *n = n.saturating_add(1);
    }

    pub fn end(&mut self, class: Class) {
        let n = &mut self.active[class.idx()];
        *n = n.saturating_sub(1);
    }

    /// Asks to pass on the next `want` bytes of a `class` transfer. See [`Permit`].
    pub fn ask(&mut self, class: Class, want: u64, now: Now) -> Permit {
        self.budget.roll(now.local.date());
        let view = self.peers.view(now.mono);
        if class == Class::Background
            && let Some(&why) = self.holds(now, &view).first()
        {
            return Permit {
                bytes: 0,
                wait: why.retry(),
                held: Some(why),
            };
        }
        let (bytes, wait) = match self.site_cap(&view) {
            None => (want, Duration::ZERO),
            Some(cap) => {
                let mut own = self.demand(now);
                // A transfer that asks is demand, whether or not it was begun.
                match class {
                    Class::Interactive => own.interactive = own.interactive.max(1),
                    Class::Background => own.background = own.background.max(1),
                }
                let share = split(cap, own, &view.fresh, view.silent);
                let rate = match class {
                    Class::Interactive => share.interactive,
                    Class::Background => share.background,
                };
                let bucket = &mut self.buckets[class.idx()];
                bucket.set_rate(rate, now.mono);
                bucket.take(want, now.mono)
            }
        };
        self.budget.add(bytes);
        self.meters[class.idx()].add(bytes, now.mono);
        Permit {
            bytes,
            wait,
            held: None,
        }
    }

    /// Why background work may not start now (the most lasting reason), or `None` when it may.
    /// A prefetch queue asks this before it opens a transfer, so that nothing is opened upstream
    /// only to be held.
    pub fn background_hold(&mut self, now: Now) -> Option<Hold> {
        self.budget.roll(now.local.date());
        let view = self.peers.view(now.mono);
        self.holds(now, &view).first().copied()
    }

    /// An announcement from the peer with node id `peer` arrived at `now` (`Instant::now()`
    /// when it is received).
    pub fn heard(&mut self, peer: &str, ann: Announcement, now: Instant) {
        self.peers.heard(peer, ann, now);
    }

    /// The peer left the site for good (e.g. removed from the peer table): no share is kept
    /// for it any more.
    pub fn forget(&mut self, peer: &str) {
        self.peers.forget(peer);
    }

    /// How long ago each peer (by node id) was last heard from (see [`share::Peers::heard_ago`]).
    pub fn heard_ago(&self, now: Instant) -> Vec<(String, Duration)> {
        self.peers.heard_ago(now)
    }

    /// Should this node announce now? Once per [`share::ANNOUNCE_EVERY`], and at once when its
    /// demand changed since the last announcement.
    pub fn announcement_due(&self, now: Now) -> bool {
        let demand = self.demand(now);
        self.announced.is_none_or(|(at, last)| {
            last != demand || now.mono.saturating_duration_since(at) >= share::ANNOUNCE_EVERY
        })
    }

    /// What to send to every peer now (and remember having sent it).
    pub fn announce(&mut self, now: Now) -> Announcement {
        self.budget.roll(now.local.date());
        let demand = self.demand(now);
        self.announced = Some((now.mono, demand));
        Announcement {
            interactive: demand.interactive,
            background: demand.background,
            max_rate: self.cap,
            budget_period: Some(self.budget.period_start()),
            budget_used: self.budget.used(),
        }
    }

    /// This node's own budget count, to store.
    pub fn budget_state(&self) -> BudgetState {
        self.budget.state()
    }

    pub fn status(&mut self, now: Now) -> Status {
        self.budget.roll(now.local.date());
        let view = self.peers.view(now.mono);
        let cap = self.site_cap(&view);
        let own = self.demand(now);
        let share = cap.map(|cap| {
            let idle = own == Demand::default();
            let asking = if idle {
                Demand {
                    interactive: 1,
                    background: 0,
                }
            } else {
                own
            };
            let s = split(cap, asking, &view.fresh, view.silent);
            s.interactive.saturating_add(s.background)
        });
        let site_transfers = view.fresh.iter().fold(
            Demand {
                interactive: self.active[0],
                background: self.active[1],
            },
            |sum, d| Demand {
                interactive: sum.interactive.saturating_add(d.interactive),
                background: sum.background.saturating_add(d.background),
            },
        );
        let why_not = self.holds(now, &view);
        let used = self.site_used();
        let limit = self.budget.limit();
        Status {
            max_rate: cap,
            max_rate_text: cap.map(|c| Rate(c).to_string()),
            share,
            fallback: view.silent > 0,
            rate: ClassRates {
                interactive: self.meters[0].rate(now.mono),
                background: self.meters[1].rate(now.mono),
            },
            transfers: Demand {
                interactive: self.active[0],
                background: self.active[1],
            },
            site_transfers,
            peers_heard: view.fresh.len(),
            peers_silent: view.silent,
            background: BackgroundStatus {
                allowed: why_not.is_empty(),
                why_not,
                hours: self.windows.iter().map(|w| w.to_string()).collect(),
            },
            budget: BudgetStatus {
                limit,
                used,
                used_here: self.budget.used(),
                left: limit.map(|l| l.saturating_sub(used)),
                spent: self.budget_spent(),
                period_start: self.budget.period_start(),
                resets_on: self.budget.next_reset(),
            },
        }
    }

    /// The cap in force: the smallest of ours and those of the peers we know.
    fn site_cap(&self, view: &View) -> Option<u64> {
        match (self.cap, view.min_cap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The site's upstream bytes in this budget period.
    fn site_used(&self) -> u64 {
        let peers = self.peers.budget_used(self.budget.period_start());
        self.budget.used().saturating_add(peers)
    }

    fn budget_spent(&self) -> bool {
        self.budget.limit().is_some_and(|l| self.site_used() >= l)
    }

    /// Why background work may not run now, most lasting reason first.
    fn holds(&self, now: Now, view: &View) -> Vec<Hold> {
        let mut why = Vec::new();
        if self.budget_spent() {
            why.push(Hold::BudgetSpent);
        }
        if !in_windows(&self.windows, now.local.time()) {
            why.push(Hold::OutsideWindow);
        }
        if self.active[0] > 0 || view.fresh.iter().any(|d| d.interactive > 0) {
            why.push(Hold::InteractiveBusy);
        }
        why
    }

    /// This node's demand as the site should see it: background transfers count only while
    /// they may run by the clock and the budget.
    fn demand(&self, now: Now) -> Demand {
        let background_may_run =
            !self.budget_spent() && in_windows(&self.windows, now.local.time());
        Demand {
            interactive: self.active[0],
            background: if background_may_run {
                self.active[1]
            } else {
                0
            },
        }
    }
}

/// A [`Scheduler`] shared by a node's tasks.
pub struct Uplink {
    inner: Mutex<Scheduler>,
    /// Woken when a transfer starts or ends, so the announcer can tell the site at once.
    changed: tokio::sync::Notify,
}

impl Uplink {
    pub fn new(scheduler: Scheduler) -> Arc<Uplink> {
        Arc::new(Uplink {
            inner: Mutex::new(scheduler),
            changed: tokio::sync::Notify::new(),
        })
    }

    /// Registers a transfer from upstream; it counts as demand until the [`Transfer`] drops.
    pub fn transfer(self: &Arc<Self>, class: Class) -> Transfer {
        self.lock().begin(class);
        self.changed.notify_one();
        Transfer {
            uplink: Arc::clone(self),
            class,
        }
    }

    /// The scheduler, for announcements, status and the budget state. Hold it briefly.
    pub fn lock(&self) -> MutexGuard<'_, Scheduler> {
        // Nothing in the scheduler panics while it is locked; a poisoned lock still holds
        // consistent counters.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Completes when a transfer started or ended since the last call (one waiter: the node's
    /// announcer, which then checks [`Scheduler::announcement_due`]).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// One transfer's place in the schedule; its demand ends when it drops.
pub struct Transfer {
    uplink: Arc<Uplink>,
    class: Class,
}

impl Transfer {
    /// [`Scheduler::ask`] for this transfer.
    pub fn ask(&self, want: u64, now: Now) -> Permit {
        self.uplink.lock().ask(self.class, want, now)
    }

    pub fn class(&self) -> Class {
        self.class
    }

    /// A client now waits for this transfer (it joined a prefetch): it counts as interactive
    /// demand from here on.
    pub fn promote(&mut self) {
        if self.class == Class::Interactive {
            return;
        }
        {
            let mut s = self.uplink.lock();
            s.end(self.class);
            s.begin(Class::Interactive);
        }
        self.class = Class::Interactive;
        self.uplink.changed.notify_one();
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.uplink.lock().end(self.class);
        self.uplink.changed.notify_one();
    }
}

#[cfg(test)]
mod tests;
