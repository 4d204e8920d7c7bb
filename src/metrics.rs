//! The labelled families and the histogram of `/metrics` (Prometheus text format 0.0.4):
//! client file requests by result and their bytes by source, bytes taken in by source,
//! upstream latency, eviction runs, and how much of the store's cap, the uplink's cap and the
//! monthly budget is in use. Units are in the names (`_bytes`, `_seconds`,
//! `_bytes_per_second`), counters end in `_total`.
//!
//! Pure rendering of values `node` has read: no I/O, no locks. The plain, unlabelled counters
//! are rendered by `node::Node::metrics` itself.

use std::fmt::Write as _;

use crate::stats::{HistogramSnapshot, LATENCY_BUCKETS, Source, Stats};
use crate::store::DiskStatus;
use crate::uplink;

/// What the families below are made of.
pub struct Inputs<'a> {
    pub stats: &'a Stats,
    pub upstream_latency: HistogramSnapshot,
    pub disk: &'a DiskStatus,
    pub uplink: &'a uplink::Status,
}

/// One metric family: `# HELP`, `# TYPE` and its samples (`labels` as written inside `{}`,
/// empty for none). Samples whose value is `None` are left out.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, Option<u64>)]) {
    if samples.iter().all(|(_, v)| v.is_none()) {
        return;
    }
    let _ = writeln!(
        out,
        "# HELP lanmirror_{name} {help}\n# TYPE lanmirror_{name} {kind}"
    );
    for (labels, v) in samples {
        if let Some(v) = v {
            if labels.is_empty() {
                let _ = writeln!(out, "lanmirror_{name} {v}");
            } else {
                let _ = writeln!(out, "lanmirror_{name}{{{labels}}} {v}");
            }
        }
    }
}

/// Appends the families to `out`.
pub fn write(out: &mut String, i: &Inputs) {
    let s = i.stats;
    let from = |src: Source| Stats::get(&s.answered_from[src.index()]);
    let bytes_from = |src: Source| Stats::get(&s.answered_bytes_from[src.index()]);
    family(
        out,
        "client_requests_total",
        "counter",
        "Client file requests by how they were answered: hit (this node's store), peer, seed or upstream (a transfer's bytes came from there; counted once the whole body was sent), error (an error status, or a body cut by a failed transfer).",
        &[
            (
                "result=\"hit\"",
                Some(Stats::get(&s.hits) + from(Source::Store)),
            ),
            ("result=\"peer\"", Some(from(Source::Peer))),
            ("result=\"seed\"", Some(from(Source::Seed))),
            ("result=\"upstream\"", Some(from(Source::Upstream))),
            ("result=\"error\"", Some(Stats::get(&s.answer_errors))),
        ],
    );
    let store_bytes = Stats::get(&s.bytes_served).saturating_sub(Stats::get(&s.streamed_bytes))
        + bytes_from(Source::Store);
    family(
        out,
        "client_bytes_total",
        "counter",
        "Body bytes sent to clients by where they came from: store (hits), or the source of the transfer a complete answer streamed from.",
        &[
            ("source=\"store\"", Some(store_bytes)),
            ("source=\"peer\"", Some(bytes_from(Source::Peer))),
            ("source=\"seed\"", Some(bytes_from(Source::Seed))),
            ("source=\"upstream\"", Some(bytes_from(Source::Upstream))),
        ],
    );
    family(
        out,
        "received_bytes_total",
        "counter",
        "Bytes this node took in for its transfers, by source.",
        &[
            ("source=\"peer\"", Some(Stats::get(&s.bytes_from_peers))),
            ("source=\"seed\"", Some(Stats::get(&s.bytes_from_seeds))),
            ("source=\"upstream\"", Some(Stats::get(&s.bytes_fetched))),
        ],
    );
    histogram(
        out,
        "upstream_response_seconds",
        "Time from a request to upstream (GET or HEAD) to its response head, for requests upstream answered.",
        &i.upstream_latency,
    );
    let d = i.disk;
    family(
        out,
        "eviction_runs_total",
        "counter",
        "Eviction runs that deleted files to keep the store within [store] limits.",
        &[("", Some(d.eviction_runs))],
    );
    family(
        out,
        "store_max_size_bytes",
        "gauge",
        "[store] max_size: the most the stored files may take (absent: no cap).",
        &[("", d.max_size)],
    );
    family(
        out,
        "store_min_free_bytes",
        "gauge",
        "[store] min_free: free space kept on the data directory's filesystem.",
        &[("", Some(d.min_free))],
    );
    family(
        out,
        "filesystem_size_bytes",
        "gauge",
        "Size of the data directory's filesystem.",
        &[("", d.filesystem_bytes)],
    );
    let u = i.uplink;
    family(
        out,
        "uplink_max_rate_bytes_per_second",
        "gauge",
        "The site's uplink cap in force (the smallest [uplink] max_rate of the nodes heard; absent: no cap).",
        &[("", u.max_rate)],
    );
    family(
        out,
        "uplink_share_bytes_per_second",
        "gauge",
        "This node's share of the site's uplink cap now.",
        &[("", u.share)],
    );
    family(
        out,
        "uplink_rate_bytes_per_second",
        "gauge",
        "What this node took from upstream over the last 5 s, by class.",
        &[
            ("class=\"interactive\"", Some(u.rate.interactive)),
            ("class=\"background\"", Some(u.rate.background)),
        ],
    );
    let b = &u.budget;
    family(
        out,
        "uplink_budget_bytes",
        "gauge",
        "[uplink] monthly_budget (absent: no budget).",
        &[("", b.limit)],
    );
    family(
        out,
        "uplink_budget_used_bytes",
        "gauge",
        "Upstream bytes used this budget period: by the whole site (this node and what its peers announced) and by this node.",
        &[
            ("scope=\"site\"", Some(b.used)),
            ("scope=\"node\"", Some(b.used_here)),
        ],
    );
    family(
        out,
        "uplink_budget_left_bytes",
        "gauge",
        "What is left of the monthly budget (absent: no budget).",
        &[("", b.left)],
    );
    family(
        out,
        "uplink_budget_spent",
        "gauge",
        "1 when the monthly budget is spent (background work waits for the reset day).",
        &[("", Some(u64::from(b.spent)))],
    );
    family(
        out,
        "uplink_background_allowed",
        "gauge",
        "1 when background work (prefetch) may use the uplink now.",
        &[("", Some(u64::from(u.background.allowed)))],
    );
}

/// A histogram family: cumulative `_bucket{le=…}` series ending in `+Inf`, `_sum`, `_count`.
fn histogram(out: &mut String, name: &str, help: &str, h: &HistogramSnapshot) {
    let _ = writeln!(
        out,
        "# HELP lanmirror_{name} {help}\n# TYPE lanmirror_{name} histogram"
    );
    for (le, n) in LATENCY_BUCKETS.iter().zip(&h.cumulative) {
        let _ = writeln!(out, "lanmirror_{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "lanmirror_{name}_bucket{{le=\"+Inf\"}} {}\nlanmirror_{name}_sum {}\nlanmirror_{name}_count {}",
        h.count, h.sum_secs, h.count
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Histogram;
    use std::time::Duration;

    #[test]
    fn families_follow_the_text_format() {
        let stats = Stats::default();
        Stats::add(&stats.hits, 3);
        Stats::add(&stats.bytes_served, 1000);
        Stats::add(&stats.streamed_bytes, 400);
        stats.answered(Source::Peer, 300);
        stats.answered(Source::Upstream, 100);
        Stats::inc(&stats.answer_errors);
        let h = Histogram::default();
        h.observe(Duration::from_millis(40));
        let disk = DiskStatus {
            max_size: Some(1 << 30),
            ..DiskStatus::default()
        };
        let cfg = crate::config::Config::parse(
            "[uplink]\nmax_rate='1 MB/s'\nmonthly_budget='1 GiB'\n[[repo]]\nname='a'\nurls=['http://x/']",
            "t",
        )
        .unwrap();
        let mut sched = uplink::Scheduler::new(&cfg.uplink, None, uplink::Now::system());
        let status = sched.status(uplink::Now::system());
        let mut out = String::new();
        write(
            &mut out,
            &Inputs {
                stats: &stats,
                upstream_latency: h.snapshot(),
                disk: &disk,
                uplink: &status,
            },
        );
        for want in [
            "# TYPE lanmirror_client_requests_total counter\n",
            "lanmirror_client_requests_total{result=\"hit\"} 3\n",
            "lanmirror_client_requests_total{result=\"peer\"} 1\n",
            "lanmirror_client_requests_total{result=\"seed\"} 0\n",
            "lanmirror_client_requests_total{result=\"error\"} 1\n",
            "lanmirror_client_bytes_total{source=\"store\"} 600\n",
            "lanmirror_client_bytes_total{source=\"peer\"} 300\n",
            "lanmirror_client_bytes_total{source=\"upstream\"} 100\n",
            "# TYPE lanmirror_upstream_response_seconds histogram\n",
            "lanmirror_upstream_response_seconds_bucket{le=\"0.025\"} 0\n",
            "lanmirror_upstream_response_seconds_bucket{le=\"0.05\"} 1\n",
            "lanmirror_upstream_response_seconds_bucket{le=\"+Inf\"} 1\n",
            "lanmirror_upstream_response_seconds_count 1\n",
            "lanmirror_store_max_size_bytes 1073741824\n",
            "lanmirror_uplink_max_rate_bytes_per_second 1000000\n",
            "lanmirror_uplink_budget_bytes 1073741824\n",
            "lanmirror_uplink_budget_used_bytes{scope=\"site\"} 0\n",
            "lanmirror_uplink_budget_spent 0\n",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
        assert!(
            !out.contains("filesystem_size_bytes"),
            "absent values are left out"
        );
        // Every sample line is `name{labels} value` with a number for the value.
        for l in out.lines().filter(|l| !l.starts_with('#')) {
            let (name, v) = l.rsplit_once(' ').unwrap();
            assert!(name.starts_with("lanmirror_"), "{l}");
            assert!(v.parse::<f64>().is_ok(), "{l}");
        }
    }
}
