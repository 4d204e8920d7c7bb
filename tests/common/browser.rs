//! [`Browser`]: Debian's headless Chromium driven through chromedriver's WebDriver HTTP API,
//! spoken with a tiny blocking client (std `TcpStream` + serde_json), for the dashboard test.
//!
//! `Browser::start` runs `/usr/bin/chromedriver` on a loopback port (the `Child` is killed on
//! drop, by its pid); each [`Session`] is one Chromium with a fresh profile directory,
//! `--headless=new --no-sandbox --disable-background-networking`, host names resolving to
//! nothing (only the loopback addresses the test gives are reachable), and is closed on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A running chromedriver.
pub struct Browser {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

/// Why the browser cannot run here (the caller decides whether that skips or fails).
pub fn missing() -> Option<String> {
    [CHROMIUM, CHROMEDRIVER]
        .iter()
        .find(|p| !Path::new(p).exists())
        .map(|p| format!("{p} is not installed (Debian packages chromium, chromium-driver)"))
}

/// One exchange with chromedriver: `(status, JSON body)`.
fn call(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, Value)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(90)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    // chromedriver keeps connections open: read the head, then Content-Length bytes.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other("connection closed before the head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    let mut body = buf[head_end + 4..].to_vec();
    match len {
        Some(n) => {
            while body.len() < n {
                let got = s.read(&mut chunk)?;
                if got == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..got]);
            }
            body.truncate(n);
        }
        None => {
            s.read_to_end(&mut body)?;
        }
    }
    let body = String::from_utf8_lossy(&body).to_string();
    let v = serde_json::from_str(&body).unwrap_or(Value::String(body));
    Ok((status, v))
}

impl Browser {
    /// Starts chromedriver and waits until it is ready.
    pub fn start() -> Browser {
        let dir = tempfile::Builder::new()
            .prefix("lanmirror-browser-")
            .tempdir()
            .unwrap();
        let port = super::free_port();
        let log = std::fs::File::create(dir.path().join("chromedriver.log")).unwrap();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {CHROMEDRIVER}: {e}"));
        let b = Browser { child, port, dir };
        let ready = super::wait_until(
            Duration::from_secs(20),
            Duration::from_millis(100),
            || matches!(call(port, "GET", "/status", None), Ok((200, v)) if v["value"]["ready"] == true),
        );
        assert!(ready, "chromedriver did not get ready:\n{}", b.log());
        b
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default()
    }

    /// A new browser window; `accept_language` sets the browser's language list (the
    /// `Accept-Language` it sends), e.g. `"ne,en;q=0.5"`.
    pub fn session(&self, accept_language: Option<&str>) -> Session<'_> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let profile = self.dir.path().join(format!("profile-{n}"));
        std::fs::create_dir_all(&profile).unwrap();
        let mut prefs = json!({});
        if let Some(a) = accept_language {
            prefs["intl.accept_languages"] = json!(a);
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.display()),
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-extensions", "--disable-default-apps",
                    "--no-first-run", "--hide-scrollbars", "--window-size=1200,1600",
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                ],
                "prefs": prefs,
            }
        }}});
        let (status, v) = call(self.port, "POST", "/session", Some(&caps)).unwrap();
        assert_eq!(status, 200, "new session: {v}\n{}", self.log());
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id: {v}"))
            .to_string();
        Session {
            b: self,
            id,
            _profile: profile,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Our own child, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser window.
pub struct Session<'a> {
    b: &'a Browser,
    id: String,
    _profile: PathBuf,
}

impl Session<'_> {
    fn cmd(&self, method: &str, what: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}/{what}", self.id);
        let (status, v) = call(self.b.port, method, &path, body.as_ref())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(status, 200, "{method} {path}: {v}");
        v["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page, returns its value.
    pub fn exec(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Waits (bounded) until `script` returns `true`.
    pub fn wait_for(&self, timeout: Duration, script: &str, args: Value) -> bool {
        super::wait_until(timeout, Duration::from_millis(200), || {
            self.exec(script, args.clone()) == Value::Bool(true)
        })
    }

    /// A PNG of the whole page (the window is first made as tall as the page).
    pub fn screenshot(&self, path: &Path) {
        let h = self
            .exec("return document.documentElement.scrollHeight;", json!([]))
            .as_u64()
            .unwrap_or(1600)
            .clamp(600, 8000);
        self.cmd(
            "POST",
            "window/rect",
            Some(json!({"width": 1200, "height": h + 120})),
        );
        let b64 = self.cmd("GET", "screenshot", None);
        let png = base64_decode(b64.as_str().unwrap_or(""));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG screenshot");
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let _ = call(
            self.b.port,
            "DELETE",
            &format!("/session/{}", self.id),
            None,
        );
    }
}

/// Standard base64 (with or without padding; other characters skipped).
pub fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
