//! Benchmark of eviction planning (`lanmirror::evict::plan`) over an index of N blobs (default
//! 1,000,000), with a baseline measured in the same run: sorting N `(last_access, size)` pairs,
//! the least any LRU planner must do. Run by `bench/evict` in release mode:
//!
//! ```text
//! cargo run --release --example evict_plan -- [--blobs N] [--reps R] [--index DIR]
//! ```
//!
//! The blobs are synthetic and deterministic: sizes spread from 1 KiB to 64 MiB (log-uniform,
//! like a mirror's mix of small metadata and large packages), last access spread over 90 days,
//! 2% protected as snapshot files and 5% as pinned. The cap is 90% of the stored bytes, so a run
//! must free down to 81%: about a fifth of the bytes, tens of thousands of blobs. Each figure is
//! the median of R runs; peak RSS is the process's high-water mark (`VmHWM`), which includes
//! the input (N blobs, 56 bytes each). Prints one JSON line.
//!
//! With `--index DIR`, also the index side a node's run adds before planning: a redb file in DIR
//! with N blob rows and N path rows laid out like `store.rs` lays them (size, stored-at,
//! last-access, one SHA-256; a path row is the blob id, a check time and two empty validators),
//! written once (not timed), reopened, then one read pass of the same shape as `store::gather`:
//! every blob row into the planner's input, then every path row (key checked for a pinned repo
//! or `/repodata/`, blob id read). redb's page cache (1 GiB by default, as in the node) keeps
//! what the pass read, so the RSS after it is reported separately. The file is deleted after.
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

/// Writes `input` as blob and path rows into a new redb file, reopens it and times one read
/// pass like `store::gather`; returns (read ms, blobs read, RSS after in KiB, file bytes).
fn index_pass(dir: &std::path::Path, input: &[Blob]) -> (f64, usize, u64, u64) {
    use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
    const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
    const PATHS: TableDefinition<&str, &[u8]> = TableDefinition::new("paths");
    let file = dir.join(format!("evict-bench-{}.redb", std::process::id()));
    {
        let db = Database::create(&file).expect("create the bench index");
        let tx = db.begin_write().expect("write");
        {
            let mut blobs = tx.open_table(BLOBS).expect("table");
            let mut paths = tx.open_table(PATHS).expect("table");
            for (i, b) in input.iter().enumerate() {
                let mut v = Vec::with_capacity(59);
                v.extend_from_slice(&b.size.to_le_bytes());
                v.extend_from_slice(&b.last_access.to_le_bytes());
                v.extend_from_slice(&b.last_access.to_le_bytes());
                v.extend_from_slice(&[1, 1, 32]);
                v.extend_from_slice(&b.id);
                blobs.insert(b.id.as_slice(), v.as_slice()).expect("insert");
                let mut p = Vec::with_capacity(44);
                p.extend_from_slice(&b.id);
                p.extend_from_slice(&b.last_access.to_le_bytes());
                p.extend_from_slice(&[0, 0, 0, 0]);
                let key =
                    format!("bench/9/BaseOS/x86_64/os/Packages/p/pkg-{i:07}-1.0-1.noarch.rpm");
                paths.insert(key.as_str(), p.as_slice()).expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let db = Database::open(&file).expect("open the bench index");
    let t = Instant::now();
    let tx = db.begin_read().expect("read");
    let mut out = Vec::new();
    {
        let blobs = tx.open_table(BLOBS).expect("table");
        for row in blobs.iter().expect("iter") {
            let (k, v) = row.expect("row");
            let (Ok(id), Some(size), Some(last)) = (
                <[u8; 32]>::try_from(k.value()),
                v.value().get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()),
                v.value()
                    .get(16..24)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok()),
            ) else {
                continue;
            };
            out.push(Blob {
                id,
                size: u64::from_le_bytes(size),
                last_access: u64::from_le_bytes(last),
                keep: Keep::Evictable,
            });
        }
        let paths = tx.open_table(PATHS).expect("table");
        let mut marked = 0usize;
        for row in paths.iter().expect("iter") {
            let (k, v) = row.expect("row");
            if !(k.value().starts_with("pinned/") || k.value().contains("/repodata/")) {
                continue;
            }
            if let Some(id) = v
                .value()
                .get(..32)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                && out.binary_search_by(|b| b.id.cmp(&id)).is_ok()
            {
                marked += 1;
            }
        }
        std::hint::black_box(marked);
    }
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let n = out.len();
    let rss = vm_hwm_kib();
    drop(tx);
    drop(db);
    let _ = std::fs::remove_file(&file);
    (ms, n, rss, bytes)
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
    let index = args
        .iter()
        .position(|a| a == "--index")
        .and_then(|i| args.get(i + 1))
        .map(|d| index_pass(std::path::Path::new(d), &input));
    let index_json = match index {
        Some((ms, read, rss, bytes)) => format!(
            ",\"index_read_ms\":{ms:.0},\"index_rows_read\":{read},\"index_file_bytes\":{bytes},\"rss_after_index_kib\":{rss}"
        ),
        None => String::new(),
    };
    println!(
        "{{\"blobs\":{n},\"reps\":{reps},\"stored_bytes\":{stored},\"need_bytes\":{},\"evicted_files\":{},\"evicted_bytes\":{},\"short_bytes\":{},\"kept_snapshot\":{},\"kept_pinned\":{},\"kept_recent\":{},\"plan_ms\":{:.1},\"baseline_sort_ms\":{:.1},\"ratio\":{:.2},\"generate_ms\":{:.0},\"rss_after_input_kib\":{rss_input},\"rss_peak_kib\":{rss_peak}{index_json}}}",
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
