//! Counters the node keeps for `/api/status` and `/metrics`: plain atomics, updated on the
//! paths that do the work, read without locks. No history, no rates here: scrapers compute
//! those, and `history` keeps the daily totals the dashboard shows.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
    /// Of `bytes_served`, those streamed from a transfer as it arrived (the rest came from
    /// stored files).
    pub bytes_served_streamed: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub verify_failures: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub zero_copy_responses: AtomicU64,
    pub stale_served: AtomicU64,
    /// Files this node got from a peer (a holder or the site's downloader), verified and stored.
    pub from_peers: AtomicU64,
    pub bytes_from_peers: AtomicU64,
    /// Bytes read from seed directories (mounted bundles) into transfers.
    pub bytes_from_seed: AtomicU64,
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
}
