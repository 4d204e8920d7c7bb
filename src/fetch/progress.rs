//! What the transfers in flight are doing, for `/api/status` (`transfers`) and the dashboard:
//! each one's file, the source it reads now, bytes so far of how many, and its speed.
//!
//! The transfer loop notes the source it switches to ([`reading`]); [`Fetcher::transfers`]
//! reads that together with each transfer's published [`Phase`]. Nothing here decides
//! anything about a transfer.

use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use super::source::Source;
use super::{Fetcher, Phase};

/// The source a transfer reads now, since when, and how many bytes it held then.
#[derive(Debug, Clone)]
pub(super) struct Reading {
    source: &'static str,
    since: Instant,
    held: u64,
}

impl Default for Reading {
    fn default() -> Self {
        Reading {
            source: "connecting",
            since: Instant::now(),
            held: 0,
        }
    }
}

/// Notes that the transfer now reads `source`, holding `held` bytes already.
pub(super) fn reading(now: &Mutex<Reading>, source: &Source, held: u64) {
    let name = match source {
        Source::Holder(_) | Source::Downloader(_) => "peer",
        Source::Seed(_) => "seed",
        Source::Upstream => "upstream",
        Source::Held => "held",
    };
    if let Ok(mut r) = now.lock() {
        *r = Reading {
            source: name,
            since: Instant::now(),
            held,
        };
    }
}

/// One transfer in flight, as `/api/status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransferView {
    pub repo: String,
    pub path: String,
    /// `connecting`, `upstream`, `peer` (another node of the site), `seed` or `held`.
    pub source: &'static str,
    /// Bytes received so far (resumed bytes included).
    pub done: u64,
    /// The file's size, when known.
    pub size: Option<u64>,
    /// `done` of `size`, in whole percent, when the size is known.
    pub percent: Option<u64>,
    /// Average speed from the current source, bytes per second.
    pub bytes_per_sec: u64,
    /// Seconds since the current source was opened.
    pub secs: u64,
}

impl Fetcher {
    /// The transfers in flight now, by file.
    pub fn transfers(&self) -> Vec<TransferView> {
        let list: Vec<_> = match self.inflight.lock() {
            Ok(m) => m.values().cloned().collect(),
            Err(_) => return Vec::new(),
        };
        let mut out: Vec<TransferView> = list
            .iter()
            .map(|t| {
                let (done, size) = match &*t.rx.borrow() {
                    Phase::Streaming { total, written, .. } => (*written, *total),
                    Phase::Done(d) => (d.size, Some(d.size)),
                    _ => (0, None),
                };
                let r = t.now.lock().map(|r| r.clone()).unwrap_or_default();
                let elapsed = r.since.elapsed();
                let fresh = done.saturating_sub(r.held);
                let bytes_per_sec = if elapsed.as_millis() >= 200 {
                    (fresh as f64 / elapsed.as_secs_f64()) as u64
                } else {
                    0
                };
                let (repo, path) = t.key.split_once('/').unwrap_or((t.key.as_str(), ""));
                TransferView {
                    repo: repo.to_string(),
                    path: path.to_string(),
                    source: r.source,
                    done,
                    size,
                    percent: size
                        .filter(|s| *s > 0)
                        .map(|s| (u128::from(done.min(s)) * 100 / u128::from(s)) as u64),
                    bytes_per_sec,
                    secs: elapsed.as_secs(),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.repo, &a.path).cmp(&(&b.repo, &b.path)));
        out
    }
}
