//! A site's nodes under the scheduler, on a simulated clock: deterministic, instant, no sleeping
//! and no sockets. The tests and `benches/uplink_accuracy.rs` use it to measure how close the
//! bytes the site takes come to the configured cap.
//!
//! Model: each node is a [`Scheduler`]. Each load is one transfer loop exactly as the module
//! docs describe it: it asks for a chunk, "sleeps" the permit's wait, passes the granted bytes
//! on (counted at that instant), and asks again; upstream delivers at most `source_rate` per
//! transfer. Every `poll` each node checks [`Scheduler::announcement_due`] and its announcement
//! reaches every other node `latency` later (or never, once the mesh is down). Before the start
//! every node has heard every other node's idle announcement, as on a site that has been up a
//! while. Meant for runs of seconds to minutes (it keeps a counter per node per second).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use jiff::civil::{DateTime, date};

use super::{Announcement, Class, Now, Scheduler};
use crate::config::UplinkConfig;
use crate::units::Rate;

/// One transfer: on which node, of which class, when it runs (from the start of the run).
#[derive(Debug, Clone)]
pub struct Load {
    pub node: usize,
    pub class: Class,
    pub from: Duration,
    pub until: Duration,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    /// Every node's `[uplink]` section.
    pub config: UplinkConfig,
    pub nodes: usize,
    pub loads: Vec<Load>,
    pub duration: Duration,
    /// Bytes per chunk from upstream (a body frame).
    pub chunk: u64,
    /// The most one transfer's upstream could deliver, bytes per second.
    pub source_rate: u64,
    /// Delay of an announcement between two nodes.
    pub latency: Duration,
    /// How often each node checks whether an announcement is due.
    pub poll: Duration,
    /// From this time on no announcement arrives anywhere (the mesh broke).
    pub mesh_down_from: Option<Duration>,
    /// The local wall-clock time (constant through the run).
    pub local: DateTime,
}

impl Scenario {
    /// `nodes` nodes with cap `cap` (bytes/s) and no loads yet; 16 KiB chunks, upstream 20× the
    /// cap per transfer, 2 ms LAN latency, 100 ms polls, noon.
    pub fn new(cap: u64, nodes: usize, duration: Duration) -> Scenario {
        Scenario {
            config: UplinkConfig {
                max_rate: Some(Rate(cap)),
                ..UplinkConfig::default()
            },
            nodes,
            loads: Vec::new(),
            duration,
            chunk: 16 << 10,
            source_rate: cap.saturating_mul(20),
            latency: Duration::from_millis(2),
            poll: Duration::from_millis(100),
            mesh_down_from: None,
            local: date(2026, 1, 15).at(12, 0, 0, 0),
        }
    }

    /// Adds one transfer of `class` on `node` for the whole run.
    pub fn load(mut self, node: usize, class: Class) -> Scenario {
        let until = self.duration;
        self.loads.push(Load {
            node,
            class,
            from: Duration::ZERO,
            until,
        });
        self
    }
}

/// What a run moved.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Bytes passed on, by node, by second of the run, by class (interactive, background).
    pub moved: Vec<Vec<[u64; 2]>>,
    /// The longest wait any permit asked for.
    pub max_wait: Duration,
    pub secs: usize,
}

impl Outcome {
    /// Bytes of `class` (or both: `None`) on `node` (or all: `None`) in seconds `from..to`.
    pub fn bytes(
        &self,
        node: Option<usize>,
        class: Option<Class>,
        secs: std::ops::Range<usize>,
    ) -> u64 {
        let mut sum = 0u64;
        for (n, per_sec) in self.moved.iter().enumerate() {
            if node.is_some_and(|x| x != n) {
                continue;
            }
            for s in per_sec.get(secs.clone()).unwrap_or_default() {
                for c in [Class::Interactive, Class::Background] {
                    if class.is_none_or(|x| x == c) {
                        sum = sum.saturating_add(s[c.idx()]);
                    }
                }
            }
        }
        sum
    }

    /// The site's average rate over the whole run, bytes per second.
    pub fn site_rate(&self) -> f64 {
        self.bytes(None, None, 0..self.secs) as f64 / self.secs.max(1) as f64
    }

    /// The site's highest average rate over any `window` consecutive seconds.
    pub fn peak_rate(&self, window: usize) -> f64 {
        let window = window.clamp(1, self.secs.max(1));
        (0..=self.secs.saturating_sub(window))
            .map(|s| self.bytes(None, None, s..s + window))
            .max()
            .unwrap_or(0) as f64
            / window as f64
    }
}

struct Running {
    load: Load,
    begun: bool,
    done: bool,
    /// When it next asks (and passes on `pending`).
    at: Instant,
    pending: u64,
}

/// Runs `s` to its end and reports what moved.
pub fn run(s: &Scenario) -> Outcome {
    let t0 = Instant::now();
    let end = t0.checked_add(s.duration).unwrap_or(t0);
    let now = |mono: Instant| Now {
        mono,
        local: s.local,
    };
    let name = |i: usize| format!("node{i}");
    let mut nodes: Vec<Scheduler> = (0..s.nodes)
        .map(|_| Scheduler::new(&s.config, None, now(t0)))
        .collect();
    let idle: Vec<Announcement> = nodes.iter_mut().map(|n| n.announce(now(t0))).collect();
    for (i, node) in nodes.iter_mut().enumerate() {
        for (j, a) in idle.iter().enumerate() {
            if i != j {
                node.heard(&name(j), a.clone(), t0);
            }
        }
    }
    let secs = usize::try_from(s.duration.as_secs()).unwrap_or(usize::MAX);
    let mut out = Outcome {
        moved: vec![vec![[0; 2]; secs]; s.nodes],
        max_wait: Duration::ZERO,
        secs,
    };
    let mut running: Vec<Running> = s
        .loads
        .iter()
        .filter(|l| l.node < s.nodes)
        .map(|l| Running {
            load: l.clone(),
            begun: false,
            done: false,
            at: t0.checked_add(l.from).unwrap_or(end),
            pending: 0,
        })
        .collect();
    let mut mail: VecDeque<(Instant, usize, usize, Announcement)> = VecDeque::new();
    let poll = s.poll.max(Duration::from_micros(1));
    let mut next_poll = t0.checked_add(poll).unwrap_or(end);
    let mesh_down = s.mesh_down_from.map(|d| t0 + d);
    let chunk = s.chunk.max(1);
    let source_rate = s.source_rate.max(1) as f64;
    loop {
        let next_load = running.iter().filter(|r| !r.done).map(|r| r.at).min();
        let next_mail = mail.front().map(|m| m.0);
        let t = [Some(next_poll), next_load, next_mail]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(end);
        if t >= end {
            break;
        }
        while mail.front().is_some_and(|m| m.0 <= t) {
            if let Some((at, to, from, a)) = mail.pop_front() {
                nodes[to].heard(&name(from), a, at);
            }
        }
        if next_poll <= t {
            for i in 0..nodes.len() {
                if nodes[i].announcement_due(now(t)) {
                    let a = nodes[i].announce(now(t));
                    if mesh_down.is_none_or(|d| t < d) {
                        for j in (0..nodes.len()).filter(|&j| j != i) {
                            let at = t.checked_add(s.latency).unwrap_or(end);
                            mail.push_back((at, j, i, a.clone()));
                        }
                    }
                }
            }
            next_poll = next_poll.checked_add(poll).unwrap_or(end);
        }
        for r in running.iter_mut().filter(|r| !r.done && r.at <= t) {
            let node = &mut nodes[r.load.node];
            let class = r.load.class;
            if !r.begun {
                node.begin(class);
                r.begun = true;
            }
            let sec = usize::try_from(t.duration_since(t0).as_secs()).unwrap_or(usize::MAX);
            if let Some(slot) = out.moved[r.load.node].get_mut(sec) {
                slot[class.idx()] += std::mem::take(&mut r.pending);
            }
            if t0.checked_add(r.load.until).is_none_or(|until| t >= until) {
                node.end(class);
                r.done = true;
                continue;
            }
            let p = node.ask(class, chunk, now(t));
            out.max_wait = out.max_wait.max(p.wait);
            r.pending = p.bytes;
            let read =
                Duration::try_from_secs_f64(p.bytes as f64 / source_rate).unwrap_or(s.duration);
            let step = p.wait.max(read).max(Duration::from_micros(1));
            r.at = t.checked_add(step).unwrap_or(end);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MBIT: u64 = 125_000;
    const SECS: Duration = Duration::from_secs(30);

    fn within_10_percent(what: &str, achieved: f64, cap: f64) {
        let ratio = achieved / cap;
        assert!(
            (0.9..=1.1).contains(&ratio),
            "{what}: {achieved:.0} B/s against a cap of {cap:.0}: {ratio:.3}"
        );
    }

    #[test]
    fn one_node_alone_gets_the_cap() {
        for mbit in [1, 10, 100] {
            let cap = mbit * MBIT;
            let o = run(&Scenario::new(cap, 1, SECS).load(0, Class::Interactive));
            within_10_percent(
                &format!("{mbit} Mbit/s, one node"),
                o.site_rate(),
                cap as f64,
            );
            assert!(o.max_wait <= Duration::from_secs(1));
            // Alone among idle peers: the same.
            let o = run(&Scenario::new(cap, 3, SECS).load(1, Class::Interactive));
            within_10_percent(
                &format!("{mbit} Mbit/s, one of three"),
                o.site_rate(),
                cap as f64,
            );
        }
    }

    #[test]
    fn three_nodes_share_the_cap() {
        for mbit in [1, 10, 100] {
            let cap = mbit * MBIT;
            let s = Scenario::new(cap, 3, SECS)
                .load(0, Class::Interactive)
                .load(1, Class::Interactive)
                .load(2, Class::Interactive);
            let o = run(&s);
            within_10_percent(
                &format!("{mbit} Mbit/s, three nodes"),
                o.site_rate(),
                cap as f64,
            );
            assert!(o.peak_rate(5) <= 1.1 * cap as f64, "{}", o.peak_rate(5));
            for n in 0..3 {
                let r = o.bytes(Some(n), None, 0..30) as f64 / 30.0;
                within_10_percent(&format!("node {n}"), r, cap as f64 / 3.0);
            }
        }
    }

    #[test]
    fn nodes_joining_one_by_one_stay_under_the_cap() {
        let cap = 10 * MBIT;
        let mut s = Scenario::new(cap, 3, SECS);
        for n in 0..3 {
            s.loads.push(Load {
                node: n,
                class: Class::Interactive,
                from: Duration::from_secs(10 * n as u64),
                until: SECS,
            });
        }
        let o = run(&s);
        within_10_percent("staggered", o.site_rate(), cap as f64);
        assert!(o.peak_rate(5) <= 1.1 * cap as f64);
        // The first node had it all at first, a third at the end.
        within_10_percent(
            "node 0 alone",
            o.bytes(Some(0), None, 1..9) as f64 / 8.0,
            cap as f64,
        );
        let third = o.bytes(Some(0), None, 21..29) as f64 / 8.0;
        within_10_percent("node 0 of three", third, cap as f64 / 3.0);
    }

    #[test]
    fn interactive_work_starves_background_which_resumes_after() {
        let cap = 10 * MBIT;
        let mut s = Scenario::new(cap, 2, SECS).load(0, Class::Background);
        s.loads.push(Load {
            node: 1,
            class: Class::Interactive,
            from: Duration::from_secs(10),
            until: Duration::from_secs(20),
        });
        let o = run(&s);
        let bg = |r| o.bytes(Some(0), Some(Class::Background), r) as f64 / 8.0;
        within_10_percent("background before", bg(1..9), cap as f64);
        assert!(bg(11..19) < 0.01 * cap as f64, "held: {}", bg(11..19));
        within_10_percent("background after", bg(21..29), cap as f64);
        let fg = o.bytes(Some(1), Some(Class::Interactive), 11..19) as f64 / 8.0;
        within_10_percent("interactive", fg, cap as f64);
        within_10_percent("site", o.site_rate(), cap as f64);
    }

    #[test]
    fn a_broken_mesh_falls_back_to_the_safe_share() {
        for mbit in [1, 100] {
            let cap = mbit * MBIT;
            let mut s = Scenario::new(cap, 3, SECS)
                .load(0, Class::Interactive)
                .load(1, Class::Interactive)
                .load(2, Class::Interactive);
            s.mesh_down_from = Some(Duration::from_secs(3));
            let o = run(&s);
            within_10_percent("mesh down", o.site_rate(), cap as f64);
            assert!(o.peak_rate(5) <= 1.1 * cap as f64);
        }
    }

    #[test]
    fn a_run_without_cap_or_loads_ends() {
        let mut s = Scenario::new(MBIT, 2, Duration::from_secs(3)).load(0, Class::Interactive);
        s.config.max_rate = None;
        let o = run(&s);
        // Only upstream limits it: 20 × 1 Mbit/s.
        within_10_percent("uncapped", o.site_rate(), 20.0 * MBIT as f64);
        let o = run(&Scenario::new(MBIT, 0, Duration::from_secs(3)));
        assert_eq!(o.site_rate(), 0.0);
        assert_eq!(o.peak_rate(5), 0.0);
    }
}
