//! The `lanmirror` command line: parses arguments, sets up logging, and calls the library.
//! Errors become exit codes here and nowhere else: 0 ok, 1 failure, 2 something was bad
//! (`verify`: a bad blob; `import`: a bad or missing file; `export`: a file that could not be
//! written), 3 the store is in use by a running node (`verify` and `gc` need it to themselves;
//! `export`, `import` and `have` ask a node running on the same data directory to do the work).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

use lanmirror::admin::{self, HaveOutcome, ImportOutcome, JobRequest};
use lanmirror::bundle;
use lanmirror::config::Config;
use lanmirror::node::Node;
use lanmirror::peer::{Identity, SiteAuth};
use lanmirror::store::{StartUp, Store, StoreError};
use lanmirror::units::Size;

#[derive(Parser)]
#[command(
    version,
    about = "A verified, peer-assisted cache of RPM repositories for sites with one poor uplink"
)]
struct Cli<C: Subcommand> {
    #[command(subcommand)]
    cmd: C,
}

/// What `lanmirror` runs: the documented commands, and `generate`, which is for packagers only
/// (hidden from help; man pages and completions describe [`Cli<Cmd>`], so they never offer it).
#[derive(Subcommand)]
enum Top {
    #[command(flatten)]
    Run(Cmd),
    /// Write shell completions, man pages or the packaged config into a directory, from this
    /// binary alone (offline).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generate,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node (without --config: the embedded default, AlmaLinux and EPEL).
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Do not announce or look for peers by mDNS this run (static peers still work).
        #[arg(long)]
        no_mdns: bool,
    },
    /// Re-hash every stored blob; remove bad ones; exit 2 if anything was bad.
    Verify {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Evict now: delete the least recently used files until the store is within its [store]
    /// limits (max_size, min_free), then compact the index. Prints what went and what was kept
    /// and why. The node must be stopped (exit 3 otherwise); a running node evicts by itself.
    Gc {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Only say what would go; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show the running node's dashboard as a table (in the language of LC_ALL, LC_MESSAGES or
    /// LANG), read from its /api/status.
    Status {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The node to ask, e.g. http://127.0.0.1:7700 (default: this config's http_listen).
        #[arg(long)]
        url: Option<String>,
        /// Print /api/status itself (JSON) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Write a sneakernet bundle: the repositories this node holds, laid out as upstream lays
    /// them out, with a signed manifest. Run it again to continue an interrupted export.
    Export {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The bundle directory (e.g. a mounted USB disk).
        #[arg(long)]
        to: PathBuf,
        /// Leave out what the receiving site holds (its `lanmirror have` file).
        #[arg(long)]
        have: Option<PathBuf>,
        /// Only this repo (repeatable); default: every configured repo.
        #[arg(long = "repo")]
        repos: Vec<String>,
    },
    /// Verify a bundle file by file and store the good files; exit 2 if any file was bad or
    /// missing. Run it again to continue an interrupted import.
    Import {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The bundle directory.
        dir: PathBuf,
    },
    /// Write this node's have-list: what it holds, for the next export to leave out.
    Have {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum Generate {
    /// The completion script for SHELL (bash: `lanmirror.bash`, zsh: `_lanmirror`, fish:
    /// `lanmirror.fish`).
    Completions {
        shell: clap_complete::Shell,
        #[arg(long)]
        out: PathBuf,
    },
    /// `lanmirror.1` and one page per subcommand (`lanmirror-serve.1`, …).
    Man {
        #[arg(long)]
        out: PathBuf,
    },
    /// `lanmirror.toml`: the embedded default config with `data_dir` set, for /etc/lanmirror/.
    Config {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::<Top>::parse();
    let result = match cli.cmd {
        Top::Run(cmd) => run(cmd),
        Top::Generate { what } => generate(what),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lanmirror: {e:#}");
            if e.chain().any(|c| {
                c.downcast_ref::<StoreError>()
                    .is_some_and(|s| matches!(s, StoreError::Db(redb::Error::DatabaseAlreadyOpen)))
            }) {
                eprintln!(
                    "lanmirror: the store is in use by a running node: stop it first, then run this again"
                );
                return ExitCode::from(3);
            }
            ExitCode::FAILURE
        }
    }
}

fn load(config: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(Config::load(config.map(|p| p.as_path()))?)
}

fn run(cmd: Cmd) -> anyhow::Result<ExitCode> {
    // One TLS provider for the whole process (reqwest and quinn).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cmd {
        Cmd::Serve { config, no_mdns } => {
            let cfg = load(config.as_ref())?;
            if config.is_none() {
                tracing::info!(
                    "no --config given: using the embedded default (config/lanmirror.toml)"
                );
            }
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(async {
                let mdns = cfg.discovery.mdns && !no_mdns;
                let node = Node::open(cfg, mdns)?;
                let (tx, rx) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    wait_for_signal().await;
                    tracing::info!("stopping: finishing the index writes, partial downloads are kept for resume");
                    let _ = tx.send(true);
                });
                node.run(rx).await?;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify { config } => {
            let cfg = load(config.as_ref())?;
            let dir = cfg.data_dir();
            let (store, rec) = Store::open(&dir)
                .with_context(|| format!("opening the store in {}", dir.display()))?;
            if rec.rows_dropped > 0 {
                println!(
                    "BAD {} blob(s) were missing or of the wrong size; their index rows were dropped (they will be fetched again when asked for)",
                    rec.rows_dropped
                );
            }
            if rec.temporaries + rec.orphan_blobs > 0 {
                println!(
                    "cleaned {} leftover temporary file(s) and {} unindexed blob file(s) of an interrupted run",
                    rec.temporaries, rec.orphan_blobs
                );
            }
            eprintln!("verifying every blob in {} …", dir.display());
            let report = store
                .verify(|i, n| {
                    if i > 0 && i % 1000 == 0 {
                        eprintln!("  {i}/{n}");
                    }
                })
                .context("verifying the store")?;
            for (blob, why) in &report.bad {
                println!("BAD {blob}: {why} (removed; it will be fetched again when asked for)");
            }
            println!(
                "checked {} blobs, {} bytes: {} bad, {} paths dropped",
                report.checked,
                report.bytes,
                report.bad.len(),
                report.paths_dropped
            );
            Ok(if report.bad.is_empty() && rec.rows_dropped == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Cmd::Gc { config, dry_run } => gc(config.as_ref(), dry_run),
        Cmd::Export {
            config,
            to,
            have,
            repos,
        } => {
            let cfg = load(config.as_ref())?;
            if let Some(node) = running_node(&cfg)? {
                let req = JobRequest::Export {
                    to: absolute(&to)?,
                    have: have.as_deref().map(absolute).transpose()?,
                    repos,
                };
                let r = job_report(node.run(&req)?)?;
                if !to.join(bundle::MANIFEST).exists() {
                    eprintln!(
                        "WARNING the node wrote the bundle, but {} is not visible from here: a sandboxed service has its own /tmp and sees only some of the filesystem (use a disk under /media, /mnt or /run/media)",
                        to.join(bundle::MANIFEST).display()
                    );
                }
                return Ok(print_export(&r, &to, &node.node_id));
            }
            let store = open_store(&cfg)?;
            let me = Identity::load_or_create(&cfg.data_dir())?;
            let site = SiteAuth::load(&cfg.node.site, cfg.node.site_key_file.as_deref())?;
            let have = have
                .map(|p| bundle::HaveList::read(&p))
                .transpose()
                .context("reading the have-list")?;
            if let Some(h) = &have {
                eprintln!(
                    "leaving out the {} files node {} holds",
                    h.len(),
                    h.header.node_id
                );
            }
            let r = bundle::Exporter {
                store: &store,
                cfg: &cfg,
                me: &me,
                site: &site,
                watch: bundle::Watch::default(),
            }
            .export(&to, have.as_ref(), &repos)
            .with_context(|| format!("exporting to {}", to.display()))?;
            Ok(print_export(&r, &to, &me.id.to_string()))
        }
        Cmd::Import { config, dir } => {
            let cfg = load(config.as_ref())?;
            if let Some(node) = running_node(&cfg)? {
                let req = JobRequest::Import {
                    dir: absolute(&dir)?,
                };
                let r: ImportOutcome = job_report(node.run(&req)?)?;
                return Ok(print_import(&r));
            }
            let store = open_store(&cfg)?;
            let site = SiteAuth::load(&cfg.node.site, cfg.node.site_key_file.as_deref())?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let (report, origin) = rt.block_on(async {
                let stats = std::sync::Arc::new(lanmirror::stats::Stats::default());
                let upstream = lanmirror::upstream::Upstream::new(&cfg)
                    .context("building the upstream client")?;
                let fetcher = lanmirror::fetch::Fetcher::new(
                    store.clone(),
                    std::sync::Arc::new(upstream),
                    None,
                    None,
                    stats.clone(),
                    cfg.upstream.retries,
                    None,
                );
                let snapshots = lanmirror::snapshot::Snapshots::new(
                    store.clone(),
                    fetcher,
                    stats,
                    cfg.metadata.clone(),
                    false,
                );
                let importer = bundle::Importer {
                    store: &store,
                    snapshots: &snapshots,
                    cfg: &cfg,
                    site: &site,
                    watch: bundle::Watch::default(),
                };
                importer
                    .import(&dir)
                    .await
                    .with_context(|| format!("importing {}", dir.display()))
            })?;
            Ok(print_import(&ImportOutcome {
                report,
                made_by: origin.node_id.to_string(),
                created: origin.created,
                site_key_checked: origin.site_key_checked,
            }))
        }
        Cmd::Have { config, out } => {
            let cfg = load(config.as_ref())?;
            if let Some(node) = running_node(&cfg)? {
                let r: HaveOutcome = job_report(node.run(&JobRequest::Have {})?)?;
                let bytes = lanmirror::hash::parse_hex(&r.list)
                    .context("the node's have-list is not hex")?;
                std::fs::write(&out, &bytes)
                    .with_context(|| format!("writing {}", out.display()))?;
                print_have(&r, &out);
                return Ok(ExitCode::SUCCESS);
            }
            let store = open_store(&cfg)?;
            let me = Identity::load_or_create(&cfg.data_dir())?;
            let h = bundle::have_list(&store, &me.id)?;
            let bytes = h.encode();
            std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
            print_have(
                &HaveOutcome {
                    node_id: me.id.to_string(),
                    files: h.len() as u64,
                    snapshots: h.header.snapshots.len() as u64,
                    bytes: bytes.len() as u64,
                    list: String::new(),
                },
                &out,
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { config, url, json } => {
            let lang = lanmirror::dashboard::i18n::from_locale(|k| std::env::var(k).ok());
            let (addr, shown) = match url {
                Some(u) => (status_addr(&u)?, u),
                None => {
                    let cfg = load(config.as_ref())?;
                    let mut addr = cfg.node.http_listen;
                    if addr.ip().is_unspecified() {
                        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                    }
                    (addr, format!("http://{addr}"))
                }
            };
            let v = admin::get_status(addr).with_context(|| {
                lanmirror::dashboard::format::fill(
                    lanmirror::dashboard::i18n::catalog(lang).get("cli.unreachable"),
                    &[("url", shown.clone())],
                )
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", lanmirror::dashboard::text::render(&v, lang));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The address of `--url http://host:port[/…]`.
fn status_addr(url: &str) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("--url {url}: only http://host:port is supported"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    hostport
        .to_socket_addrs()
        .with_context(|| format!("--url {url}: cannot resolve {hostport}"))?
        .next()
        .with_context(|| format!("--url {url}: no address for {hostport}"))
}

/// `lanmirror generate …`: files a package installs, made from the command definitions and the
/// embedded default config, so they cannot drift from the binary they ship with.
fn generate(what: Generate) -> anyhow::Result<ExitCode> {
    let out = match &what {
        Generate::Completions { out, .. }
        | Generate::Man { out }
        | Generate::Config { out, .. } => out,
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let written = match what {
        Generate::Completions { shell, out } => {
            clap_complete::generate_to(shell, &mut Cli::<Cmd>::command(), "lanmirror", &out)
                .with_context(|| format!("writing {shell} completions to {}", out.display()))?
                .display()
                .to_string()
        }
        Generate::Man { out } => {
            clap_mangen::generate_to(Cli::<Cmd>::command(), &out)
                .with_context(|| format!("writing man pages to {}", out.display()))?;
            format!("man pages in {}", out.display())
        }
        Generate::Config { data_dir, out } => {
            let path = out.join("lanmirror.toml");
            std::fs::write(&path, packaged_config(&data_dir)?)
                .with_context(|| format!("writing {}", path.display()))?;
            path.display().to_string()
        }
    };
    println!("wrote {written}");
    Ok(ExitCode::SUCCESS)
}

/// The embedded default config as a package installs it: its opening comment replaced by one
/// for the installed file, and `data_dir` set (a service user has no home to default to).
/// Checked by parsing it back, so a changed default that no longer fits fails here.
fn packaged_config(data_dir: &std::path::Path) -> anyhow::Result<String> {
    const UNSET: &str = "# data_dir = \"/var/lib/lanmirror\"\n";
    const HEADER: &str = "\
# lanmirror: this node's configuration, installed by the lanmirror package.
#
# The service runs `lanmirror serve --config /etc/lanmirror/lanmirror.toml` as the user
# lanmirror: edit this file, then `systemctl restart lanmirror`. Every key below is the
# embedded default (`lanmirror serve` without --config) except data_dir.
# Files the node reads must be readable by lanmirror; a site key must also be owned by it:
#   chown lanmirror:lanmirror /etc/lanmirror/site.key
# export, import and have work while the service runs (it does the work, on disks under /media,
# /mnt or /run/media). verify and gc need the store to themselves: stop the service and run
# them as lanmirror, e.g. `sudo -u lanmirror lanmirror gc --config /etc/lanmirror/lanmirror.toml`.
";
    let default = lanmirror::config::DEFAULT_CONFIG;
    let dir = data_dir
        .to_str()
        .context("the data directory must be valid UTF-8")?;
    // The opening comment block (up to the first blank line) speaks of the embedded file.
    let body = match default.split_once("\n\n") {
        Some((head, rest)) if head.lines().all(|l| l.starts_with('#')) => rest,
        _ => default,
    };
    anyhow::ensure!(
        body.matches(UNSET).count() == 1,
        "the embedded default config no longer has one line {UNSET:?} to set"
    );
    let set = format!("data_dir = {}\n", toml::Value::String(dir.to_string()));
    let text = format!("{HEADER}\n{}", body.replacen(UNSET, &set, 1));
    let cfg = Config::parse(&text, "(packaged config)")?;
    anyhow::ensure!(
        cfg.node.data_dir.as_deref() == Some(data_dir),
        "the packaged config does not set data_dir to {dir}"
    );
    Ok(text)
}

/// `lanmirror gc`: the start-up eviction run of a node, on its own, with a report.
fn gc(config: Option<&PathBuf>, dry_run: bool) -> anyhow::Result<ExitCode> {
    /// Evicted files listed one by one; past this, a count.
    const LISTED: usize = 50;
    let cfg = load(config)?;
    let dir = cfg.data_dir();
    let policy = cfg.store_policy();
    let start = StartUp {
        policy: Some(policy.clone()),
        dry_run,
        names: true,
        compact: true,
    };
    let (_store, rec) = Store::open_with(&dir, &start)
        .with_context(|| format!("opening the store in {}", dir.display()))?;
    if rec.temporaries + rec.orphan_blobs + rec.rows_dropped > 0 {
        println!(
            "cleaned {} leftover temporary file(s), {} unindexed blob file(s) and {} index row(s) without a file, left by an interrupted run",
            rec.temporaries, rec.orphan_blobs, rec.rows_dropped
        );
    }
    let r = rec.eviction.context("no eviction report")?;
    let l = policy.limits;
    println!(
        "store {}: {} stored (max_size {}), {} free on its filesystem (min_free {})",
        dir.display(),
        Size(r.stored_before),
        l.max_size
            .map_or("none".to_string(), |m| Size(m).to_string()),
        r.free_before
            .map_or("unknown".to_string(), |f| Size(f).to_string()),
        Size(l.min_free)
    );
    let verb = if dry_run { "WOULD EVICT" } else { "EVICTED" };
    for (name, size) in r.names.iter().take(LISTED) {
        println!("{verb} {name} ({})", Size(*size));
    }
    if r.names.len() > LISTED {
        println!("… and {} more", r.names.len() - LISTED);
    }
    let t = |x: lanmirror::evict::Tally| format!("{} files, {}", x.files, Size(x.bytes));
    if r.need == 0 {
        println!("within limits: nothing to evict");
    } else {
        println!(
            "{}: {} (least recently used first, down to the low-water mark)",
            if dry_run { "would evict" } else { "evicted" },
            t(r.evicted)
        );
    }
    println!(
        "kept: snapshot {} · pinned {} · recent {}",
        t(r.kept.snapshot),
        t(r.kept.pinned),
        t(r.kept.recent)
    );
    if r.short > 0 {
        println!(
            "SHORT: {} more would have to go, but everything left is protected (metadata in service, pinned repos); a node passes new downloads through until there is room: raise max_size, lower min_free or unpin a repo",
            Size(r.short)
        );
    }
    match rec.index_bytes {
        Some((before, after)) => println!("index compacted: {} → {}", Size(before), Size(after)),
        None if dry_run => println!("dry run: nothing deleted, index not compacted"),
        None => {}
    }
    Ok(ExitCode::SUCCESS)
}

fn open_store(cfg: &Config) -> anyhow::Result<Store> {
    let dir = cfg.data_dir();
    let (store, _) =
        Store::open(&dir).with_context(|| format!("opening the store in {}", dir.display()))?;
    Ok(store)
}

/// A minimal blocking GET of /api/status, so `status` needs no HTTP client stack.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The node running on this config's data directory, if any: the bundle commands then run in
/// it (the store is its own), over its HTTP port with its admin token.
fn running_node(cfg: &Config) -> anyhow::Result<Option<admin::Client>> {
    let node = admin::Client::running(cfg).context(
        "a node is running on this data directory, but its admin token cannot be read (run this as the node's user, or as root)",
    )?;
    if node.is_some() {
        eprintln!("a node is running on this data directory: asking it to do this while it serves");
    }
    Ok(node)
}

fn absolute(p: &std::path::Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("{}", p.display()))
}

/// The report of a finished job, or its error.
fn job_report<T: serde::de::DeserializeOwned>(job: admin::JobStatus) -> anyhow::Result<T> {
    if job.state != "done" {
        anyhow::bail!(
            "the node's {} job failed: {}",
            job.command,
            job.error.unwrap_or_else(|| "no reason given".into())
        );
    }
    let report = job
        .report
        .context("the node's job ended without a report")?;
    serde_json::from_value(report).context("reading the node's report")
}

fn print_export(r: &bundle::ExportReport, to: &std::path::Path, made_by: &str) -> ExitCode {
    for w in &r.warnings {
        println!("WARNING {w}");
    }
    for (path, why) in &r.refused {
        println!("NOT EXPORTED {path}: {why}");
    }
    println!(
        "bundle in {}: {} files, {:.1} MiB ({} already there from an earlier run), {} left out (the other site has them), made by node {made_by}",
        to.display(),
        r.files,
        r.bytes as f64 / 1048576.0,
        r.reused,
        r.left_out,
    );
    if r.refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

fn print_import(o: &ImportOutcome) -> ExitCode {
    let r = &o.report;
    println!(
        "bundle made by node {} on {}{}",
        o.made_by,
        httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(o.created)),
        if o.site_key_checked {
            ", authenticated with this site's key"
        } else {
            " (no site key here to check it with)"
        }
    );
    for (path, why) in &r.bad {
        println!("BAD {path}: {why} (not stored)");
    }
    for path in &r.missing {
        println!("MISSING {path}: listed in the manifest but not on the disk");
    }
    for (tree, rev) in &r.switched {
        println!("metadata of {tree} now at revision {rev}");
    }
    for (tree, why) in &r.kept {
        println!("metadata of {tree} kept: {why}");
    }
    println!(
        "stored {} files ({:.1} MiB), {} already held, {} bad, {} missing{}",
        r.stored,
        r.bytes as f64 / 1048576.0,
        r.already,
        r.bad.len(),
        r.missing.len(),
        if r.not_configured > 0 {
            format!(", {} of repos not configured here", r.not_configured)
        } else {
            String::new()
        }
    );
    if r.all_good() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

fn print_have(h: &HaveOutcome, out: &std::path::Path) {
    println!(
        "have-list of node {}: {} files, {} snapshots, {} bytes in {}",
        h.node_id,
        h.files,
        h.snapshots,
        h.bytes,
        out.display()
    );
}
