//! Counters the node keeps for `/api/status` and `/metrics`: plain atomics, updated on the
//! paths that do the work, read without locks, plus one fixed-bucket histogram type (upstream
//! latency). No history, no rates here: scrapers compute those, and `history` keeps the daily
//! totals the dashboard shows. Rendering them is `node`, `metrics` and `dashboard`'s business.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Requests that joined an upstream transfer another request had started.
    pub joined: AtomicU64,
    pub not_found: AtomicU64,
    pub refused: AtomicU64,
    pub bytes_served: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub verify_failures: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub zero_copy_responses: AtomicU64,
    pub stale_served: AtomicU64,
    /// Files this node got from a peer (a holder or the site's downloader), verified and stored.
    pub from_peers: AtomicU64,
    pub bytes_from_peers: AtomicU64,
    pub bytes_to_peers: AtomicU64,
    pub peer_requests_served: AtomicU64,
    /// Transfers this node ran as the downloader for a peer that asked.
    pub fetched_for_peers: AtomicU64,
    /// Peer bytes that failed verification (the peer was put aside).
    pub peer_verify_failures: AtomicU64,
    /// Connections refused either way (other site, site key mismatch, too many strangers).
    pub peers_refused: AtomicU64,
    /// Peer transfers abandoned below the minimum rate (the peer was put aside).
    pub peer_too_slow: AtomicU64,
    /// Bytes read from seed directories (`[seed] dirs`) into transfers.
    pub bytes_from_seeds: AtomicU64,
    /// Body bytes of answers streamed from a transfer (the rest of `bytes_served` came from
    /// the store), counted as they are handed on.
    pub streamed_bytes: AtomicU64,
    /// Client file requests answered in full from a transfer, by where its bytes came from
    /// (indexed by [`Source::index`]).
    pub answered_from: [AtomicU64; Source::COUNT],
    /// The body bytes of those answers, by the same source.
    pub answered_bytes_from: [AtomicU64; Source::COUNT],
    /// Client file requests answered with an error status, or whose streamed body failed.
    pub answer_errors: AtomicU64,
}

impl Stats {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }

    /// A client's answer from a transfer ended complete: `bytes` of body from `source`.
    pub fn answered(&self, source: Source, bytes: u64) {
        Stats::inc(&self.answered_from[source.index()]);
        Stats::add(&self.answered_bytes_from[source.index()], bytes);
    }
}

/// Where the bytes of an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This node's own disk: the store, or the part file of an earlier, interrupted download.
    Store,
    /// Another node of the site (a holder or the site's downloader).
    Peer,
    /// A mounted bundle (`[seed] dirs`).
    Seed,
    Upstream,
}

impl Source {
    pub const COUNT: usize = 4;
    pub const ALL: [Source; Source::COUNT] =
        [Source::Store, Source::Peer, Source::Seed, Source::Upstream];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The label value in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Source::Store => "store",
            Source::Peer => "peer",
            Source::Seed => "seed",
            Source::Upstream => "upstream",
        }
    }
}

/// Upper bounds (seconds) of [`Histogram`]'s buckets; one more, `+Inf`, takes the rest.
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram with the fixed [`LATENCY_BUCKETS`], lock-free. Counts per bucket (not
/// cumulative; the renderer adds them up), the sum in microseconds, and the count.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// A consistent-enough copy of a [`Histogram`] for rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative counts, one per [`LATENCY_BUCKETS`] entry, then `+Inf` (= `count`).
    pub cumulative: Vec<u64>,
    pub sum_secs: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        Stats::inc(&self.buckets[i]);
        Stats::add(
            &self.sum_micros,
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
        );
        Stats::inc(&self.count);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut run = 0;
        let cumulative: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| {
                run += Stats::get(b);
                run
            })
            .collect();
        HistogramSnapshot {
            // The +Inf bucket is the count by definition: take it from the buckets, so the
            // rendered series never has a bucket above `_count`.
            count: run,
            cumulative,
            sum_secs: Stats::get(&self.sum_micros) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let h = Histogram::default();
        for ms in [1, 7, 30, 30, 2000, 60_000] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 6);
        assert_eq!(s.cumulative.len(), LATENCY_BUCKETS.len() + 1);
        // <= 5 ms: 1; <= 10 ms: 2; <= 25 ms: 2; <= 50 ms: 4; … <= 2.5 s: 5; +Inf: 6.
        assert_eq!(&s.cumulative[..4], &[1, 2, 2, 4]);
        assert_eq!(s.cumulative[8], 5);
        assert_eq!(*s.cumulative.last().unwrap(), 6);
        assert!(s.cumulative.windows(2).all(|w| w[0] <= w[1]));
        assert!((s.sum_secs - 62.068).abs() < 1e-6, "{}", s.sum_secs);
    }

    #[test]
    fn sources_index_their_counters() {
        let st = Stats::default();
        st.answered(Source::Peer, 10);
        st.answered(Source::Peer, 5);
        st.answered(Source::Upstream, 1);
        assert_eq!(Stats::get(&st.answered_from[Source::Peer.index()]), 2);
        assert_eq!(
            Stats::get(&st.answered_bytes_from[Source::Peer.index()]),
            15
        );
        assert_eq!(Stats::get(&st.answered_from[Source::Seed.index()]), 0);
        for (i, s) in Source::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
        }
    }
}
