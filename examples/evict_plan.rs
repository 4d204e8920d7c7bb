//! Benchmark of eviction planning (`lanmirror::evict::plan`) over an index of N blobs (default
//! 1,000,000), with a baseline measured in the same run: sorting N `(last_access, size)` pairs,
//! the least any LRU planner must do. Run by `bench/evict` in release mode:
//!
//! ```text
//! cargo run --release --example evict_plan -- [--blobs N] [--reps R]
//! ```
//!
//! The blobs are synthetic and deterministic: sizes spread from 1 KiB to 64 MiB (log-uniform,
//! like a mirror's mix of small metadata and large packages), last access spread over 90 days,
//! 2% protected as snapshot files and 5% as pinned. The cap is 90% of the stored bytes, so a run
//! must free down to 81%: about a fifth of the bytes, tens of thousands of blobs. Each figure is
//! the median of R runs; peak RSS is the process's high-water mark (`VmHWM`), which includes
//! the input (N blobs, 56 bytes each). Prints one JSON line.
//!
//! Without arguments (as `cargo test --all-targets` builds and may run it) it does a 10,000-blob
//! smoke run.

use std::time::{Duration, Instant};

use lanmirror::evict::{self, Blob, Keep, Limits, Usage};

/// xorshift64*: deterministic, fast, good enough to spread synthetic data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn blobs(n: usize) -> Vec<Blob> {
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    let now = 1_800_000_000u64;
    let mut v: Vec<Blob> = (0..n)
        .map(|_| {
            let mut id = [0u8; 32];
            for c in id.chunks_mut(8) {
                c.copy_from_slice(&r.next().to_le_bytes());
            }
            // 2^10 .. 2^26 bytes, log-uniform.
            let exp = 10.0 + (r.next() % 16_000) as f64 / 1000.0;
            let size = 2f64.powf(exp) as u64;
            let last_access = now - r.next() % (90 * 86_400);
            let keep = match r.next() % 100 {
                0..2 => Keep::Snapshot,
                2..7 => Keep::Pinned,
                _ => Keep::Evictable,
            };
            Blob {
                id,
                size,
                last_access,
                keep,
            }
        })
        .collect();
    // As the index lists them: in id order.
    v.sort_unstable_by_key(|b| b.id);
    v
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let smoke = args.is_empty();
    let n = arg("--blobs", if smoke { 10_000 } else { 1_000_000 });
    let reps = arg("--reps", if smoke { 1 } else { 5 }).max(1);

    let t = Instant::now();
    let input = blobs(n);
    let generate = t.elapsed();
    let rss_input = vm_hwm_kib();
    let stored: u64 = input.iter().map(|b| b.size).sum();
    let limits = Limits {
        max_size: Some(stored / 10 * 9),
        min_free: 0,
    };
    let usage = Usage { stored, free: None };

    // Baseline: sort N (last_access, size) pairs (the copy is made outside the timing).
    let pairs: Vec<(u64, u64)> = input.iter().map(|b| (b.last_access, b.size)).collect();
    let mut base = Vec::new();
    for _ in 0..reps {
        let mut p = pairs.clone();
        let t = Instant::now();
        p.sort_unstable();
        base.push(t.elapsed());
        std::hint::black_box(&p);
    }
    drop(pairs);

    let mut planned = Vec::new();
    let mut last = None;
    for _ in 0..reps {
        let t = Instant::now();
        let plan = evict::plan(&input, &limits, &usage, 0);
        planned.push(t.elapsed());
        last = Some(plan);
    }
    let plan = last.unwrap_or_default();
    let rss_peak = vm_hwm_kib();
    let (p, b) = (median(planned), median(base));
    println!(
        "{{\"blobs\":{n},\"reps\":{reps},\"stored_bytes\":{stored},\"need_bytes\":{},\"evicted_files\":{},\"evicted_bytes\":{},\"short_bytes\":{},\"kept_snapshot\":{},\"kept_pinned\":{},\"kept_recent\":{},\"plan_ms\":{:.1},\"baseline_sort_ms\":{:.1},\"ratio\":{:.2},\"generate_ms\":{:.0},\"rss_after_input_kib\":{rss_input},\"rss_peak_kib\":{rss_peak}}}",
        plan.need,
        plan.evicted.files,
        plan.evicted.bytes,
        plan.short(),
        plan.kept.snapshot.files,
        plan.kept.pinned.files,
        plan.kept.recent.files,
        p.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3,
        p.as_secs_f64() / b.as_secs_f64().max(1e-9),
        generate.as_secs_f64() * 1e3,
    );
}
