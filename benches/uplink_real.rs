//! The rate cap's accuracy with **real transfers** (issue 10): real node processes (the release
//! binary), a real upstream HTTP server on loopback, `[uplink] max_rate` at 1, 10 and 100 Mbit/s;
//! one node downloading alone, and three nodes of one site (static peers, QUIC) downloading a
//! file each at the same moment. The achieved rate is the bytes clients received over the time
//! from the first request to the last byte; the baseline, measured in the same run, is the same
//! download with no cap.
//!
//! ```text
//! cargo bench --bench uplink_real                              # smoke: 10 Mbit/s, one node, 2 s
//! cargo bench --bench uplink_real -- --full                    # the table
//! cargo bench --bench uplink_real -- --full --write BENCHMARKS.md
//! ```
//!
//! `--write FILE` replaces the part of FILE between `<!-- uplink-real:begin -->` and
//! `<!-- uplink-real:end -->` (appended when absent). Exits 1 when a capped row is more than
//! 10% over its cap. Other arguments (the test harness's `--test-threads`, …) are ignored, so
//! `cargo test --all-targets` runs the smoke.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use common::{Node, NodeOpts, Upstream, payload_bytes, static_site, temp};

const MBIT: u64 = 125_000;
const BEGIN: &str = "<!-- uplink-real:begin -->";
const END: &str = "<!-- uplink-real:end -->";

/// Writes `n` files `Packages/<prefix>-<i>.rpm` of `size` bytes (an RPM lead, then bytes that do
/// not compress) under `root`.
fn make_files(root: &Path, prefix: &str, n: usize, size: usize) -> Vec<String> {
    let dir = root.join("Packages");
    std::fs::create_dir_all(&dir).expect("mkdir");
    (0..n)
        .map(|i| {
            let name = format!("Packages/{prefix}-{i}.rpm");
            let mut data = vec![0xed, 0xab, 0xee, 0xdb];
            data.extend(payload_bytes(&name, "bench", size.saturating_sub(4)));
            std::fs::write(root.join(&name), data).expect("write");
            name
        })
        .collect()
}

fn opts(up: &Upstream, cap: Option<u64>) -> NodeOpts {
    let mut o = NodeOpts::new(&up.url());
    o.read_timeout_secs = 30;
    o.env.push(("RUST_LOG".into(), "warn".into()));
    if let Some(mbit) = cap {
        o.extra_toml = format!("[uplink]\nmax_rate = \"{mbit} Mbit/s\"\n");
    }
    o
}

/// Each node GETs its own file at the same moment; bytes received / (first request → last byte).
fn download_all(nodes: &[Node], files: &[String]) -> (u64, f64) {
    let start = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let hs: Vec<_> = nodes
            .iter()
            .zip(files)
            .map(|(node, f)| {
                s.spawn(move || {
                    let r = node.get(&format!("/test/{f}"));
                    assert_eq!(r.status, 200, "{f}");
                    assert!(r.complete, "{f} cut short");
                    r.body.len() as u64
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("download")).sum()
    });
    (total, start.elapsed().as_secs_f64())
}

struct Row {
    what: String,
    cap: u64,
    bytes: u64,
    secs: f64,
    baseline: f64,
}

impl Row {
    fn rate(&self) -> f64 {
        self.bytes as f64 / self.secs
    }
    fn ratio(&self) -> f64 {
        self.rate() / (self.cap * MBIT) as f64
    }
}

/// One scenario at `mbit` with `n` nodes, each downloading `secs` worth of the cap, plus the
/// same with no cap (fresh nodes, other files) as the baseline.
fn measure(root: &Path, up: &Upstream, mbit: u64, n: usize, secs: u64) -> Row {
    let size = (mbit * MBIT * secs / n as u64) as usize;
    let tag = format!("r{mbit}n{n}");
    let capped = make_files(root, &format!("{tag}c"), n, size);
    let free = make_files(root, &format!("{tag}f"), n, size);
    let nodes = static_site(n, |_| opts(up, Some(mbit)));
    let (bytes, took) = download_all(&nodes, &capped);
    drop(nodes);
    let nodes = static_site(n, |_| opts(up, None));
    let (fb, ft) = download_all(&nodes, &free);
    drop(nodes);
    for f in capped.iter().chain(&free) {
        let _ = std::fs::remove_file(root.join(f));
    }
    Row {
        what: if n == 1 {
            "one node".into()
        } else {
            format!("{n} nodes at once")
        },
        cap: mbit,
        bytes,
        secs: took,
        baseline: fb as f64 / ft,
    }
}

fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| cap | scenario | bytes | time | achieved | achieved / cap | no cap (baseline, same run) |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} Mbit/s | {} | {:.1} MB | {:.2} s | {:.3} Mbit/s | **{:.3}** | {:.0} Mbit/s |\n",
            r.cap,
            r.what,
            r.bytes as f64 / 1e6,
            r.secs,
            r.rate() * 8.0 / 1e6,
            r.ratio(),
            r.baseline * 8.0 / 1e6,
        ));
    }
    s
}

fn write_section(path: &str, body: &str) -> std::io::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!("{BEGIN}\n{body}{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(a), Some(b)) if b > a => format!("{}{}{}", &old[..a], section, &old[b + END.len()..]),
        _ => format!("{}\n{}\n", old.trim_end(), section),
    };
    std::fs::write(path, new)
}

/// The 1-minute load average, as `/proc/loadavg` says.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--full");
    let write = args
        .iter()
        .position(|a| a == "--write")
        .and_then(|i| args.get(i + 1).cloned());
    let dir = temp();
    let root = dir.path().join("mirror");
    std::fs::create_dir_all(&root).expect("mkdir");
    let up = Upstream::start(&root);
    let plan: Vec<(u64, usize, u64)> = if full {
        vec![
            (1, 1, 15),
            (1, 3, 15),
            (10, 1, 15),
            (10, 3, 15),
            (100, 1, 15),
            (100, 3, 15),
        ]
    } else {
        vec![(10, 1, 2)]
    };
    let load_before = loadavg();
    let mut rows = Vec::new();
    for (mbit, n, secs) in plan {
        let r = measure(&root, &up, mbit, n, secs);
        eprintln!(
            "{} Mbit/s, {}: {:.3} Mbit/s = {:.3}× the cap (no cap: {:.0} Mbit/s)",
            r.cap,
            r.what,
            r.rate() * 8.0 / 1e6,
            r.ratio(),
            r.baseline * 8.0 / 1e6
        );
        rows.push(r);
    }
    let t = table(&rows);
    print!("{t}");
    let _ = std::io::stdout().flush();
    if let Some(path) = write {
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let load = format!(
            "Load average (1 min) at the start and the end of the run: {load_before} and {}.",
            loadavg()
        );
        let body = format!(
            "## Uplink rate cap (issue 10): real transfers\n\n\
             Generated by `cargo bench --bench uplink_real -- --full --write BENCHMARKS.md` on {cpus} \
             cores: real `lanmirror serve` processes (release), a real upstream HTTP server and \
             the clients on loopback, QUIC between the nodes of a site (static peers). Each row \
             starts fresh nodes with `[uplink] max_rate` set, and every node downloads one file \
             of its own at the same moment, sized for about 15 s at the cap; *achieved* is the \
             bytes the clients received over the time from the first request to the last byte \
             (so it includes connection set-up, metadata-less miss handling and the bucket's \
             initial allowance). The baseline is the same downloads on fresh nodes with no cap, \
             measured in the same run: what the cap holds back. {load} The nodes, the \
             clients and the upstream share the machine's cores, so a busy machine shows as \
             rows *under* the cap (at 100 Mbit/s the three nodes' QUIC and hashing need CPU \
             time), never over it.\n\n{t}\n"
        );
        if let Err(e) = write_section(&path, &body) {
            eprintln!("cannot write {path}: {e}");
            std::process::exit(2);
        }
    }
    if rows.iter().any(|r| r.ratio() > 1.10) {
        eprintln!("a capped row is more than 10% over its cap");
        std::process::exit(1);
    }
}
