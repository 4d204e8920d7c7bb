//! In-process baselines for `bench/peer`: what the peer transport can do without a node around
//! it, measured in the same run as the node path.
//!
//! ```text
//! peer_baseline quic --bytes N [--src FILE] [--hash] [--write DIR] [--fsync]
//! peer_baseline tls  --bytes N
//! peer_baseline hash --bytes N
//! ```
//!
//! - `quic`: two quinn endpoints on 127.0.0.1, each on its own 2-worker tokio runtime (like two
//!   node processes), with lanmirror's own transport settings ([`transport_config`] for the
//!   dialler, [`server_transport_config`] for the listener, default `[quic]` section) and TLS configs ([`Identity::server_tls`]/[`client_tls`]: TLS 1.3,
//!   mutual, ring). One connection; the receiving side opens one bi stream and sends a small
//!   request, the other answers with `N` bytes written with `write_chunk` in 1 MiB pieces, then
//!   finishes; the receiver reads with `read_chunk(256 KiB)` (what `Peers::body` does). Timed from
//!   opening the stream to the end of it; the handshake is not timed (peer connections are
//!   long-lived). By default the bytes come from memory and are dropped on arrival: the
//!   transport's own ceiling. The options add the node's own stages one by one, to see where time
//!   goes: `--src FILE` reads the pieces from a file with `spawn_blocking` + `read_exact_at`
//!   (`server::send_blob`), `--hash` runs BLAKE3 + SHA-256 over every received chunk in the
//!   receiving task (`MultiHasher`, as `Part::append`), `--write DIR` appends them to a file with
//!   `tokio::fs::File::write_all`, `--fsync` syncs that file at the end (`install_blob`).
//! - `tls`: the same bytes over TLS 1.3 on a tokio `TcpStream` (rustls driven by hand, the same
//!   rustls configs and ring provider), 1 MiB plaintext writes, 256 KiB socket reads.
//! - `hash`: `MultiHasher` (BLAKE3 + SHA-256), BLAKE3 alone and SHA-256 alone over `N` bytes in
//!   256 KiB pieces, one thread: the CPU cost the receiving node adds per byte.
//!
//! Each run prints one JSON line on stdout. Without a mode (as `cargo test --all-targets` runs
//! it) it does a 1 MiB smoke run of `quic` and `tls` and exits.
//!
//! [`transport_config`]: lanmirror::peer::transport_config
//! [`server_transport_config`]: lanmirror::peer::server_transport_config
//! [`Identity::server_tls`]: lanmirror::peer::Identity::server_tls
//! [`client_tls`]: lanmirror::peer::Identity::client_tls

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lanmirror::config::QuicConfig;
use lanmirror::hash::MultiHasher;
use lanmirror::peer::{Identity, server_transport_config, transport_config};
use lanmirror::repodata::ChecksumAlgo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Res<T> = Result<T, String>;

const CHUNK: usize = 1 << 20;
const READ: usize = 256 * 1024;
/// Longest a single run may take before it is abandoned.
const RUN_LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug, Default, Clone)]
struct Opts {
    bytes: u64,
    src: Option<PathBuf>,
    hash: bool,
    write: Option<PathBuf>,
    fsync: bool,
    /// Receive with `RecvStream::read` into a 256 KiB buffer (everything already arrived, in
    /// one piece) instead of `read_chunk` (one STREAM frame, ~1.4 KB, per call).
    coalesce: bool,
    /// Only the sending side, on this address (one connection, then exit).
    listen: Option<SocketAddr>,
    /// Only the receiving side, dialling this address.
    connect: Option<SocketAddr>,
}

/// What one timed transfer measured.
struct Measured {
    secs: f64,
    /// CPU time of this process (all threads) over the timed part.
    cpu_secs: f64,
    /// `read_chunk` results the receiver got (0 where not counted).
    chunks: u64,
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    let result = match mode {
        "quic" | "tls" | "hash" => parse(&args[1..]).and_then(|o| run(mode, &o)),
        // `cargo bench` passes --bench, `cargo test` its own flags: a smoke run.
        _ => smoke(),
    };
    match result {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("peer_baseline: {e}");
            std::process::exit(1);
        }
    }
}

fn parse(args: &[String]) -> Res<Opts> {
    let mut o = Opts::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--bytes" => o.bytes = val()?.parse().map_err(|e| format!("--bytes: {e}"))?,
            "--src" => o.src = Some(val()?.into()),
            "--write" => o.write = Some(val()?.into()),
            "--hash" => o.hash = true,
            "--fsync" => o.fsync = true,
            "--coalesce" => o.coalesce = true,
            "--listen" => o.listen = Some(val()?.parse().map_err(|e| format!("--listen: {e}"))?),
            "--connect" => o.connect = Some(val()?.parse().map_err(|e| format!("--connect: {e}"))?),
            "--bench" => {}
            other => return Err(format!("unknown option {other}")),
        }
    }
    if o.bytes == 0 && o.listen.is_none() {
        return Err("--bytes N (> 0) is required".into());
    }
    if o.fsync && o.write.is_none() {
        return Err("--fsync needs --write DIR".into());
    }
    if o.listen.is_some() && o.connect.is_some() {
        return Err("--listen and --connect exclude each other".into());
    }
    Ok(o)
}

fn smoke() -> Res<String> {
    let o = Opts {
        bytes: 1 << 20,
        ..Opts::default()
    };
    let q = run("quic", &o)?;
    let t = run("tls", &o)?;
    Ok(format!("{q}\n{t}"))
}

fn run(mode: &str, o: &Opts) -> Res<String> {
    let (m, extra) = match mode {
        "quic" => {
            let side = match (o.listen, o.connect) {
                (Some(_), _) => "sender",
                (_, Some(_)) => "receiver",
                _ => "both",
            };
            let m = match (o.listen, o.connect) {
                (Some(addr), _) => quic_send_only(o, addr)?,
                (_, Some(addr)) => quic_receive_only(o, addr)?,
                _ => quic(o)?,
            };
            (m, format!("{},\"side\":\"{side}\"", quic_variant(o)))
        }
        "tls" => (
            tls(o)?,
            "\"variant\":\"tls13-tcp\",\"side\":\"both\"".to_string(),
        ),
        _ => return hash_bench(o.bytes),
    };
    let chunks = if m.chunks > 0 {
        format!(
            ",\"chunks\":{},\"avg_chunk\":{}",
            m.chunks,
            o.bytes / m.chunks
        )
    } else {
        String::new()
    };
    Ok(format!(
        "{{\"mode\":\"{mode}\",{extra},\"bytes\":{},\"secs\":{:.6},\"mib_s\":{:.2},\"cpu_s\":{:.3},\"cpu_s_per_gib\":{:.3}{chunks}}}",
        o.bytes,
        m.secs,
        o.bytes as f64 / 1048576.0 / m.secs,
        m.cpu_secs,
        m.cpu_secs / (o.bytes.max(1) as f64 / (1u64 << 30) as f64),
    ))
}

fn quic_variant(o: &Opts) -> String {
    let mut v = vec![if o.src.is_some() { "file" } else { "mem" }];
    if o.hash {
        v.push("hash");
    }
    if o.write.is_some() {
        v.push("write");
    }
    if o.fsync {
        v.push("fsync");
    }
    if o.coalesce {
        v.push("coalesce");
    }
    format!("\"variant\":\"{}\"", v.join("+"))
}

/// User + system CPU time of this process so far.
fn cpu_now() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn runtime() -> Res<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// An identity in a scratch directory.
fn identity() -> Res<(tempfile::TempDir, Identity)> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let id = Identity::load_or_create(dir.path()).map_err(|e| e.to_string())?;
    Ok((dir, id))
}

fn random_chunk() -> Bytes {
    // Incompressible bytes (nothing on the path compresses, but keep it honest).
    let mut out = vec![0u8; CHUNK];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for c in out.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
    Bytes::from(out)
}

/// Runs `server` on its own runtime in its own thread and `client` on another; returns what the
/// client returns.
fn two_sides<S, C, SF, CF, T>(server: S, client: C) -> Res<T>
where
    S: FnOnce(std::sync::mpsc::Sender<SocketAddr>) -> SF + Send + 'static,
    SF: std::future::Future<Output = Res<()>>,
    C: FnOnce(SocketAddr) -> CF,
    CF: std::future::Future<Output = Res<T>>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let srv = std::thread::spawn(move || -> Res<()> {
        let rt = runtime()?;
        rt.block_on(async move {
            tokio::time::timeout(RUN_LIMIT, server(tx))
                .await
                .map_err(|_| "server side timed out".to_string())?
        })
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| match srv.is_finished() {
            true => "server side failed to start".to_string(),
            false => "server side did not start in 10 s".to_string(),
        });
    let addr = match addr {
        Ok(a) => a,
        Err(e) => {
            return Err(srv
                .join()
                .map_err(|_| "server panicked".to_string())?
                .err()
                .unwrap_or(e));
        }
    };
    let rt = runtime()?;
    let out = rt.block_on(async move {
        tokio::time::timeout(RUN_LIMIT, client(addr))
            .await
            .map_err(|_| "client side timed out".to_string())?
    });
    let s = srv.join().map_err(|_| "server panicked".to_string())?;
    let out = out?;
    s?;
    Ok(out)
}

fn endpoint(id: &Identity, bind: SocketAddr) -> Res<quinn::Endpoint> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(
        id.server_tls().map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // Like a node: the listener's settings (it only receives requests) and the dialler's
    // (`transport_config`, which accepts no streams from the other side) on one endpoint.
    sc.transport_config(Arc::new(server_transport_config(&QuicConfig::default())));
    quinn::Endpoint::server(sc, bind).map_err(|e| e.to_string())
}

/// The answering side: accepts one connection, answers one request with that many bytes,
/// waits for the receiver to close. Returns the CPU time from the request to the end.
async fn quic_sender(
    id: Identity,
    bind: SocketAddr,
    src: Option<PathBuf>,
    tx: std::sync::mpsc::Sender<SocketAddr>,
) -> Res<f64> {
    let ep = endpoint(&id, bind)?;
    tx.send(ep.local_addr().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let conn = ep
        .accept()
        .await
        .ok_or("endpoint closed")?
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
    let mut req = [0u8; 8];
    recv.read_exact(&mut req).await.map_err(|e| e.to_string())?;
    let cpu0 = cpu_now();
    let n = u64::from_be_bytes(req);
    let chunk = random_chunk();
    let file = match &src {
        Some(p) => Some(Arc::new(std::fs::File::open(p).map_err(|e| e.to_string())?)),
        None => None,
    };
    let mut at = 0u64;
    while at < n {
        let want = (n - at).min(CHUNK as u64) as usize;
        let buf = match &file {
            Some(f) => {
                let f = f.clone();
                let v = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; want];
                    f.read_exact_at(&mut buf, at).map(|_| buf)
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("reading the source file: {e}"))?;
                Bytes::from(v)
            }
            None => chunk.slice(..want),
        };
        at += want as u64;
        send.write_chunk(buf).await.map_err(|e| e.to_string())?;
    }
    send.finish().map_err(|e| e.to_string())?;
    // Until the receiver has everything and closes.
    let _ = tokio::time::timeout(Duration::from_secs(30), conn.closed()).await;
    let cpu = cpu_now() - cpu0;
    ep.wait_idle().await;
    Ok(cpu)
}

/// The asking side: dials `addr`, asks for `bytes`, reads them to the end through the stages
/// `sink` turns on.
async fn quic_receiver(id: Identity, addr: SocketAddr, sink: Opts) -> Res<Measured> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|e: std::net::AddrParseError| e.to_string())?;
    let ep = endpoint(&id, bind)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(
        id.client_tls(None).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
    cc.transport_config(Arc::new(transport_config(&QuicConfig::default())));
    let conn = ep
        .connect_with(cc, addr, "lanmirror")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let part = sink
        .write
        .as_ref()
        .map(|d| d.join(format!("peer_baseline.{}.part", std::process::id())));
    let mut out = match &part {
        Some(p) => Some(
            tokio::fs::File::create(p)
                .await
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let mut hasher = sink
        .hash
        .then(|| MultiHasher::new(Some(ChecksumAlgo::Sha256)));
    let bytes = sink.bytes;
    let cpu0 = cpu_now();
    let started = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&bytes.to_be_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    let (mut got, mut chunks) = (0u64, 0u64);
    let mut chunk_hold: Bytes;
    let mut buf = vec![0u8; if sink.coalesce { READ } else { 0 }];
    loop {
        let piece: &[u8] = if sink.coalesce {
            match recv.read(&mut buf).await.map_err(|e| e.to_string())? {
                Some(n) => &buf[..n],
                None => break,
            }
        } else {
            match recv
                .read_chunk(READ, true)
                .await
                .map_err(|e| e.to_string())?
            {
                Some(c) => {
                    // Keep the chunk alive in `buf`'s place: copy-free for the common case.
                    chunk_hold = c.bytes;
                    &chunk_hold
                }
                None => break,
            }
        };
        got += piece.len() as u64;
        chunks += 1;
        if let Some(f) = &mut out {
            f.write_all(piece).await.map_err(|e| e.to_string())?;
        }
        if let Some(h) = &mut hasher {
            h.update(piece);
        }
    }
    if let Some(h) = hasher {
        std::hint::black_box(h.finish());
    }
    if let Some(mut f) = out {
        f.flush().await.map_err(|e| e.to_string())?;
        if sink.fsync {
            f.sync_all().await.map_err(|e| e.to_string())?;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_secs = cpu_now() - cpu0;
    if let Some(p) = &part {
        let _ = std::fs::remove_file(p);
    }
    conn.close(0u32.into(), b"done");
    ep.wait_idle().await;
    if got != bytes {
        return Err(format!("received {got} of {bytes} bytes"));
    }
    Ok(Measured {
        secs,
        cpu_secs,
        chunks,
    })
}

/// Both sides in this process, each on its own runtime.
fn quic(o: &Opts) -> Res<Measured> {
    let (_da, ia) = identity()?;
    let (_db, ib) = identity()?;
    let src = o.src.clone();
    let sink = o.clone();
    let local: SocketAddr = "127.0.0.1:0"
        .parse()
        .map_err(|e: std::net::AddrParseError| e.to_string())?;
    two_sides(
        move |tx| async move { quic_sender(ia, local, src, tx).await.map(|_| ()) },
        move |addr| async move { quic_receiver(ib, addr, sink).await },
    )
}

/// Only the sending side (another process, maybe in another network namespace, receives).
fn quic_send_only(o: &Opts, bind: SocketAddr) -> Res<Measured> {
    let (_d, id) = identity()?;
    let rt = runtime()?;
    let (tx, _rx) = std::sync::mpsc::channel();
    let src = o.src.clone();
    let started = Instant::now();
    let cpu_secs = rt.block_on(async move {
        tokio::time::timeout(RUN_LIMIT, quic_sender(id, bind, src, tx))
            .await
            .map_err(|_| "timed out".to_string())?
    })?;
    Ok(Measured {
        secs: started.elapsed().as_secs_f64(),
        cpu_secs,
        chunks: 0,
    })
}

/// Only the receiving side.
fn quic_receive_only(o: &Opts, addr: SocketAddr) -> Res<Measured> {
    let (_d, id) = identity()?;
    let rt = runtime()?;
    let sink = o.clone();
    rt.block_on(async move {
        tokio::time::timeout(RUN_LIMIT, quic_receiver(id, addr, sink))
            .await
            .map_err(|_| "timed out".to_string())?
    })
}

/// Moves every TLS record rustls has queued onto the socket.
async fn flush_tls(
    conn: &mut rustls::Connection,
    tcp: &mut tokio::net::TcpStream,
    out: &mut Vec<u8>,
) -> Res<()> {
    out.clear();
    while conn.wants_write() {
        conn.write_tls(out).map_err(|e| e.to_string())?;
    }
    if !out.is_empty() {
        tcp.write_all(out).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Feeds socket bytes to rustls until `want` more plaintext bytes arrived (or the handshake is
/// over when `want` is 0); returns the plaintext count, which it does not keep.
async fn pump(
    conn: &mut rustls::Connection,
    tcp: &mut tokio::net::TcpStream,
    want: u64,
    out: &mut Vec<u8>,
) -> Res<u64> {
    let mut buf = vec![0u8; READ];
    let mut plain = vec![0u8; READ];
    let mut got = 0u64;
    loop {
        flush_tls(conn, tcp, out).await?;
        if (want == 0 && !conn.is_handshaking()) || (want > 0 && got >= want) {
            return Ok(got);
        }
        let n = tcp.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("connection closed after {got} of {want} bytes"));
        }
        let mut rd = &buf[..n];
        while !rd.is_empty() {
            conn.read_tls(&mut rd).map_err(|e| e.to_string())?;
            conn.process_new_packets().map_err(|e| e.to_string())?;
            // During the handshake, plaintext (the request) stays queued for the caller.
            if want == 0 {
                continue;
            }
            loop {
                match conn.reader().read(&mut plain) {
                    Ok(0) => break,
                    Ok(k) => got += k as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
    }
}

fn tls(o: &Opts) -> Res<Measured> {
    let (_da, ia) = identity()?;
    let (_db, ib) = identity()?;
    let server_tls = Arc::new(ia.server_tls().map_err(|e| e.to_string())?);
    let client_tls = Arc::new(ib.client_tls(None).map_err(|e| e.to_string())?);
    let bytes = o.bytes;
    two_sides(
        move |tx| async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())?;
            tx.send(l.local_addr().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            let (mut tcp, _) = l.accept().await.map_err(|e| e.to_string())?;
            let mut conn: rustls::Connection = rustls::ServerConnection::new(server_tls)
                .map_err(|e| e.to_string())?
                .into();
            conn.set_buffer_limit(None);
            let mut out = Vec::with_capacity(2 * CHUNK);
            pump(&mut conn, &mut tcp, 0, &mut out).await?;
            // The request: 8 bytes, the count wanted (maybe already read with the handshake).
            let mut req = [0u8; 8];
            let mut have = 0;
            let mut buf = vec![0u8; 4096];
            loop {
                have += conn.reader().read(&mut req[have..]).unwrap_or(0);
                if have == 8 {
                    break;
                }
                let n = tcp.read(&mut buf).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("client went away".into());
                }
                let mut rd = &buf[..n];
                while !rd.is_empty() {
                    conn.read_tls(&mut rd).map_err(|e| e.to_string())?;
                    conn.process_new_packets().map_err(|e| e.to_string())?;
                }
            }
            let n = u64::from_be_bytes(req);
            let chunk = random_chunk();
            let mut at = 0u64;
            while at < n {
                let want = (n - at).min(CHUNK as u64) as usize;
                conn.writer()
                    .write_all(&chunk[..want])
                    .map_err(|e| e.to_string())?;
                flush_tls(&mut conn, &mut tcp, &mut out).await?;
                at += want as u64;
            }
            conn.send_close_notify();
            flush_tls(&mut conn, &mut tcp, &mut out).await?;
            let _ = tcp.shutdown().await;
            Ok(())
        },
        move |addr| async move {
            let mut tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            let name =
                rustls::pki_types::ServerName::try_from("lanmirror").map_err(|e| e.to_string())?;
            let mut conn: rustls::Connection = rustls::ClientConnection::new(client_tls, name)
                .map_err(|e| e.to_string())?
                .into();
            let mut out = Vec::new();
            pump(&mut conn, &mut tcp, 0, &mut out).await?;
            let cpu0 = cpu_now();
            let started = Instant::now();
            conn.writer()
                .write_all(&bytes.to_be_bytes())
                .map_err(|e| e.to_string())?;
            let got = pump(&mut conn, &mut tcp, bytes, &mut out).await?;
            let secs = started.elapsed().as_secs_f64();
            let cpu_secs = cpu_now() - cpu0;
            if got != bytes {
                return Err(format!("received {got} of {bytes} bytes"));
            }
            Ok(Measured {
                secs,
                cpu_secs,
                chunks: 0,
            })
        },
    )
}

fn hash_bench(bytes: u64) -> Res<String> {
    use sha2::Digest;
    let chunk = random_chunk();
    let pieces: Vec<Bytes> = (0..CHUNK / READ)
        .map(|i| chunk.slice(i * READ..(i + 1) * READ))
        .collect();
    let n = bytes.div_ceil(READ as u64) as usize;
    let time = |f: &mut dyn FnMut(&[u8])| {
        let t = Instant::now();
        for i in 0..n {
            f(&pieces[i % pieces.len()]);
        }
        (n * READ) as f64 / 1048576.0 / t.elapsed().as_secs_f64()
    };
    let mut m = MultiHasher::new(Some(ChecksumAlgo::Sha256));
    let both = time(&mut |b| m.update(b));
    std::hint::black_box(m.finish());
    let mut b3 = blake3::Hasher::new();
    let blake = time(&mut |b| {
        b3.update(b);
    });
    std::hint::black_box(b3.finalize());
    let mut s = sha2::Sha256::new();
    let sha = time(&mut |b| s.update(b));
    std::hint::black_box(s.finalize());
    Ok(format!(
        "{{\"mode\":\"hash\",\"bytes\":{},\"multihasher_mib_s\":{both:.1},\"blake3_mib_s\":{blake:.1},\"sha256_mib_s\":{sha:.1}}}",
        n * READ
    ))
}
