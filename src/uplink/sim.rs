//! A site's nodes under the scheduler, on a simulated clock: deterministic, instant, no sleeping
//! and no sockets. The tests and `benches/uplink_accuracy.rs` use it to measure how close the
//! bytes the site takes come to the configured cap.
//!
//! Model: each node is a [`Scheduler`]. Each load is one transfer loop exactly as the module
//! docs describe it: it asks for a chunk, "sleeps" the permit's wait, passes the granted bytes
//! on (counted at that instant), and asks again; upstream delivers at most `source_rate` per
//! transfer. Each node checks [`Scheduler::announcement_due`] when one of its transfers starts or
//! ends (as the announcer woken by [`Uplink::changed`](super::Uplink::changed) does) and every
//! `poll`; an announcement reaches every other node `latency` later (or never, once the mesh is
//! down). Before the start
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
    /// How often each node checks whether an announcement is due (besides at each start and
    /// end of a transfer).
    pub poll: Duration,
    /// From this time on no announcement arrives anywhere (the mesh broke).
    pub mesh_down_from: Option<Duration>,
    /// The local wall-clock time (constant through the run).
    pub local: DateTime,
}

impl Scenario {
    /// `nodes` nodes with cap `cap` (bytes/s) and no loads yet; 16 KiB chunks, upstream 20× the
    /// cap per transfer, 2 ms LAN latency, 250 ms polls, noon.
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
            poll: Duration::from_millis(250),
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
    /// The longest wait a permit asked for while pacing (held background work waits
    /// [`Hold::retry`](super::Hold::retry) each time, by design).
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

/// The nodes and the announcements on their way between them.
struct Site<'a> {
    s: &'a Scenario,
    nodes: Vec<Scheduler>,
    /// (arrives at, to, from, what), in order of arrival.
    mail: VecDeque<(Instant, usize, usize, Announcement)>,
    mesh_down: Option<Instant>,
    end: Instant,
}

impl Site<'_> {
    fn now(&self, mono: Instant) -> Now {
        Now {
            mono,
            local: self.s.local,
        }
    }

    /// Node `i` announces at `t` if due.
    fn tell(&mut self, i: usize, t: Instant) {
        let now = self.now(t);
        if !self.nodes[i].announcement_due(now) {
            return;
        }
        let a = self.nodes[i].announce(now);
        if self.mesh_down.is_some_and(|d| t >= d) {
            return;
        }
        let at = t.checked_add(self.s.latency).unwrap_or(self.end);
        for j in (0..self.nodes.len()).filter(|&j| j != i) {
            self.mail.push_back((at, j, i, a.clone()));
        }
    }

    fn deliver(&mut self, t: Instant) {
        while self.mail.front().is_some_and(|m| m.0 <= t) {
            if let Some((at, to, from, a)) = self.mail.pop_front() {
                self.nodes[to].heard(&name(from), a, at);
            }
        }
    }
}

fn name(i: usize) -> String {
    format!("node{i}")
}

/// Runs `s` to its end and reports what moved.
pub fn run(s: &Scenario) -> Outcome {
    let t0 = Instant::now();
    let end = t0.checked_add(s.duration).unwrap_or(t0);
    let start = Now {
        mono: t0,
        local: s.local,
    };
    let mut site = Site {
        s,
        nodes: (0..s.nodes)
            .map(|_| Scheduler::new(&s.config, None, start))
            .collect(),
        mail: VecDeque::new(),
        mesh_down: s.mesh_down_from.map(|d| t0.checked_add(d).unwrap_or(end)),
        end,
    };
    // A site that has been up a while: everyone has heard everyone idle.
    let idle: Vec<Announcement> = site.nodes.iter_mut().map(|n| n.announce(start)).collect();
    for (i, node) in site.nodes.iter_mut().enumerate() {
        for (j, a) in idle.iter().enumerate().filter(|(j, _)| *j != i) {
            node.heard(&name(j), a.clone(), t0);
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
    let poll = s.poll.max(Duration::from_micros(1));
    let mut next_poll = t0.checked_add(poll).unwrap_or(end);
    let chunk = s.chunk.max(1);
    let source_rate = s.source_rate.max(1) as f64;
    loop {
        let next_load = running.iter().filter(|r| !r.done).map(|r| r.at).min();
        let next_mail = site.mail.front().map(|m| m.0);
        let t = [Some(next_poll), next_load, next_mail]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(end);
        if t >= end {
            break;
        }
        site.deliver(t);
        if next_poll <= t {
            for i in 0..site.nodes.len() {
                site.tell(i, t);
            }
            next_poll = next_poll.checked_add(poll).unwrap_or(end);
        }
        for r in running.iter_mut().filter(|r| !r.done && r.at <= t) {
            let (n, class) = (r.load.node, r.load.class);
            if !r.begun {
                site.nodes[n].begin(class);
                site.tell(n, t);
                r.begun = true;
            }
            let sec = usize::try_from(t.duration_since(t0).as_secs()).unwrap_or(usize::MAX);
            if let Some(slot) = out.moved[n].get_mut(sec) {
                slot[class.idx()] += std::mem::take(&mut r.pending);
            }
            if t0.checked_add(r.load.until).is_none_or(|until| t >= until) {
                site.nodes[n].end(class);
                site.tell(n, t);
                r.done = true;
                continue;
            }
            let now = site.now(t);
            let p = site.nodes[n].ask(class, chunk, now);
            if p.held.is_none() {
                out.max_wait = out.max_wait.max(p.wait);
            }
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
