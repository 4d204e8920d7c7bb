//! The site-wide cap: what nodes announce to each other, what a node remembers of its peers'
//! announcements, and the pure split of the cap into this node's share. No sockets: the
//! caller puts [`Announcement`]s on the wire and hands received ones to
//! [`Scheduler::heard`](super::Scheduler::heard).
//!
//! **The split.** Every node announces its demand (transfers from upstream running now, by
//! class) about once a second and at once when it changes. A node then takes, of the site cap:
//!
//! - for a peer it has not heard from for [`SILENT_AFTER`] but heard within [`FORGET_AFTER`]
//!   (a *silent* peer: the mesh to it broke, it may still be downloading), a reserve of the safe
//!   share `cap / (1 + peers known)`; what is left is *available*;
//! - while any node it hears has interactive demand: interactive share = available × (its own
//!   interactive transfers / the site's), background share = 0 (background waits);
//! - otherwise: background share = available × (its own background transfers / the site's).
//!
//! So a node alone gets the whole cap; three nodes with one transfer each get a third each; a
//! node that hears nobody any more falls back to `cap / (1 + peers known)`, never to no cap.
//! The site cap is the smallest `max_rate` configured on this node or a known peer.
//!
//! Not done (deliberately, for now): a share a node leaves unused (its upstream is slower than
//! its share) is not lent to the others; announcing measured rates would allow it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jiff::civil::Date;
use serde::{Deserialize, Serialize};

/// How often a node announces itself when nothing changes.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
/// A peer not heard from for this long is *silent*: the safe share is reserved for it.
pub const SILENT_AFTER: Duration = Duration::from_secs(5);
/// A peer not heard from for this long is no longer counted at all (it was switched off).
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// Peers remembered at most (as many as the peer table holds); the longest silent goes first.
pub const MAX_PEERS: usize = 64;

/// What a node tells the other nodes of its site, about once a second and at once when its
/// demand changes (see [`Scheduler::announcement_due`](super::Scheduler::announcement_due)).
/// Small and JSON-friendly; every field has a default, so fields can be added later.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Announcement {
    /// Transfers from upstream for a waiting client, running now.
    pub interactive: u32,
    /// Background transfers (prefetch, mirroring) that may run now (inside a window, budget
    /// left); 0 while they are held for those reasons.
    pub background: u32,
    /// The node's configured `max_rate` in bytes per second; `None`: none configured.
    pub max_rate: Option<u64>,
    /// The first day of the node's current budget period, and its own upstream bytes in it.
    pub budget_period: Option<Date>,
    pub budget_used: u64,
}

/// Transfers running on one node, by class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Demand {
    pub interactive: u32,
    pub background: u32,
}

impl Demand {
    pub fn of(a: &Announcement) -> Demand {
        Demand {
            interactive: a.interactive,
            background: a.background,
        }
    }
}

/// One node's share of the site cap, by class, in bytes per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Share {
    pub interactive: u64,
    pub background: u64,
}

/// Splits `cap` (bytes per second) for a node whose own demand is `own`, which hears `fresh`
/// peers (their demands) and has `silent` silent peers. See the module docs for the rule.
pub fn split(cap: u64, own: Demand, fresh: &[Demand], silent: usize) -> Share {
    let known = (fresh.len() as u64).saturating_add(silent as u64);
    let safe = cap / known.saturating_add(1);
    let available = cap.saturating_sub(safe.saturating_mul(silent as u64));
    let site = |class: fn(&Demand) -> u32| {
        fresh
            .iter()
            .chain([&own])
            .fold(0u64, |sum, d| sum.saturating_add(u64::from(class(d))))
    };
    let (site_i, site_b) = (site(|d| d.interactive), site(|d| d.background));
    if site_i > 0 {
        Share {
            interactive: part(available, own.interactive, site_i),
            background: 0,
        }
    } else {
        Share {
            interactive: 0,
            background: part(available, own.background, site_b),
        }
    }
}

/// `total × mine / all`, without overflow; 0 when `all` is 0.
fn part(total: u64, mine: u32, all: u64) -> u64 {
    if all == 0 {
        return 0;
    }
    let p = u128::from(total) * u128::from(mine) / u128::from(all);
    u64::try_from(p).unwrap_or(u64::MAX)
}

struct Heard {
    ann: Announcement,
    at: Instant,
}

/// What this node last heard from each peer, and when.
#[derive(Default)]
pub struct Peers {
    map: HashMap<String, Heard>,
}

/// The peers' part of the picture at one instant.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Demands of the peers heard within [`SILENT_AFTER`].
    pub fresh: Vec<Demand>,
    /// Peers heard within [`FORGET_AFTER`] but not within [`SILENT_AFTER`].
    pub silent: usize,
    /// The smallest `max_rate` announced by a known (fresh or silent) peer.
    pub min_cap: Option<u64>,
}

impl Peers {
    pub fn heard(&mut self, peer: &str, ann: Announcement, now: Instant) {
        if !self.map.contains_key(peer)
            && self.map.len() >= MAX_PEERS
            && let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, h)| h.at)
                .map(|(k, _)| k.clone())
        {
            self.map.remove(&oldest);
        }
        self.map.insert(peer.to_string(), Heard { ann, at: now });
    }

    pub fn forget(&mut self, peer: &str) {
        self.map.remove(peer);
    }

    pub fn view(&self, now: Instant) -> View {
        let mut v = View::default();
        for h in self.map.values() {
            let age = now.saturating_duration_since(h.at);
            if age > FORGET_AFTER {
                continue;
            }
            if age > SILENT_AFTER {
                v.silent += 1;
            } else {
                v.fresh.push(Demand::of(&h.ann));
            }
            if let Some(c) = h.ann.max_rate {
                v.min_cap = Some(v.min_cap.map_or(c, |m| m.min(c)));
            }
        }
        v
    }

    /// How long ago each peer (by node id) was last heard from: the site's nodes' "last
    /// contact" on the dashboard.
    pub fn heard_ago(&self, now: Instant) -> Vec<(String, Duration)> {
        self.map
            .iter()
            .map(|(k, h)| (k.clone(), now.saturating_duration_since(h.at)))
            .collect()
    }

    /// The upstream bytes peers announced for the budget period beginning on `period`
    /// (forgotten peers included: their bytes were spent all the same).
    pub fn budget_used(&self, period: Date) -> u64 {
        self.map
            .values()
            .filter(|h| h.ann.budget_period == Some(period))
            .fold(0u64, |sum, h| sum.saturating_add(h.ann.budget_used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(i: u32, b: u32) -> Demand {
        Demand {
            interactive: i,
            background: b,
        }
    }

    #[test]
    fn alone_a_node_gets_the_whole_cap() {
        assert_eq!(split(1000, d(1, 0), &[], 0).interactive, 1000);
        assert_eq!(split(1000, d(0, 3), &[], 0).background, 1000);
        // Idle peers take nothing.
        assert_eq!(
            split(1000, d(2, 0), &[d(0, 0), d(0, 0)], 0).interactive,
            1000
        );
    }

    #[test]
    fn busy_nodes_split_by_transfers() {
        assert_eq!(split(900, d(1, 0), &[d(1, 0), d(1, 0)], 0).interactive, 300);
        assert_eq!(split(900, d(2, 0), &[d(1, 0)], 0).interactive, 600);
        assert_eq!(split(900, d(0, 1), &[d(0, 2)], 0).background, 300);
    }

    #[test]
    fn interactive_anywhere_holds_background_everywhere() {
        let s = split(900, d(0, 5), &[d(1, 0)], 0);
        assert_eq!(s, Share::default());
        let s = split(900, d(1, 5), &[], 0);
        assert_eq!(s.interactive, 900);
        assert_eq!(s.background, 0);
    }

    #[test]
    fn silent_peers_leave_the_safe_share() {
        // Both peers silent: cap / (1 + 2).
        assert_eq!(split(900, d(1, 0), &[], 2).interactive, 300);
        // One silent, one heard and busy: 300 reserved, 600 split.
        assert_eq!(split(900, d(1, 0), &[d(1, 0)], 1).interactive, 300);
        // One silent, one heard and idle: 600.
        assert_eq!(split(900, d(1, 0), &[d(0, 0)], 1).interactive, 600);
    }

    #[test]
    fn huge_and_zero_inputs() {
        assert_eq!(split(0, d(1, 1), &[d(1, 1)], 3), Share::default());
        assert_eq!(split(u64::MAX, d(1, 0), &[], 0).interactive, u64::MAX);
        let many = vec![d(u32::MAX, u32::MAX); 100];
        let s = split(u64::MAX, d(u32::MAX, u32::MAX), &many, usize::MAX);
        assert!(s.interactive <= u64::MAX / 100);
        assert_eq!(split(7, d(0, 0), &[], 0), Share::default());
        assert_eq!(split(1, d(1, 0), &[d(1, 0)], 0).interactive, 0);
    }

    #[test]
    fn peers_turn_silent_then_are_forgotten() {
        let t0 = Instant::now();
        let mut p = Peers::default();
        let ann = |i, cap| Announcement {
            interactive: i,
            max_rate: cap,
            ..Default::default()
        };
        p.heard("a", ann(1, Some(500)), t0);
        p.heard("b", ann(0, None), t0 + Duration::from_secs(4));
        let v = p.view(t0 + Duration::from_secs(5));
        assert_eq!((v.fresh.len(), v.silent, v.min_cap), (2, 0, Some(500)));
        let v = p.view(t0 + Duration::from_secs(6));
        assert_eq!((v.fresh.len(), v.silent, v.min_cap), (1, 1, Some(500)));
        let v = p.view(t0 + FORGET_AFTER + Duration::from_secs(2));
        assert_eq!((v.fresh.len(), v.silent, v.min_cap), (0, 1, None));
        p.forget("b");
        let v = p.view(t0);
        assert_eq!(v.fresh, vec![d(1, 0)]);
    }

    #[test]
    fn the_table_is_bounded() {
        let t0 = Instant::now();
        let mut p = Peers::default();
        for i in 0..(MAX_PEERS + 10) {
            let at = t0 + Duration::from_millis(i as u64);
            p.heard(&format!("n{i}"), Announcement::default(), at);
        }
        assert_eq!(p.map.len(), MAX_PEERS);
        assert!(!p.map.contains_key("n0"), "the longest silent went first");
        assert!(p.map.contains_key(&format!("n{}", MAX_PEERS + 9)));
    }

    #[test]
    fn announcements_are_small_json_with_defaults() {
        let a = Announcement {
            interactive: 2,
            background: 1,
            max_rate: Some(500_000),
            budget_period: Some(jiff::civil::date(2026, 2, 1)),
            budget_used: 1 << 30,
        };
        let j = serde_json::to_string(&a).unwrap();
        assert_eq!(
            j,
            r#"{"interactive":2,"background":1,"max_rate":500000,"budget_period":"2026-02-01","budget_used":1073741824}"#
        );
        assert_eq!(serde_json::from_str::<Announcement>(&j).unwrap(), a);
        // An older or newer node's announcement: missing fields default, unknown ones pass.
        let b: Announcement = serde_json::from_str(r#"{"interactive":1,"future":true}"#).unwrap();
        assert_eq!(b.interactive, 1);
        assert_eq!(b.max_rate, None);
    }
}
