//! [`Dnf`]: a real dnf 4 client with its own installroot, config and repo file.
//!
//! Layout under the given directory: `installroot/`, `repos.d/lmtest.repo`,
//! `dnf.conf`, `cache/`. The cache directory is this client's own absolute
//! path: Debian's dnf 4 does *not* put a `--setopt=cachedir` under the
//! installroot, so a shared name made parallel clients delete each other's
//! downloads (keepcache=0). Debian's rpm keeps the rpmdb at `installroot/root/.rpmdb` (`%_dbpath`);
//! `rpm --root R -q` finds it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::node::{ProcOutput, run_with_timeout};

/// Repo id used in the generated `.repo` file.
pub const REPO_ID: &str = "lmtest";

#[derive(Debug, Clone)]
pub struct DnfOutput {
    /// Exit code 0 and not killed by the time limit.
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl DnfOutput {
    /// Panics with dnf's output unless it succeeded.
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.success,
            "dnf failed (code {:?}, {:?}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        );
        self
    }

    pub fn combined(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl From<ProcOutput> for DnfOutput {
    fn from(p: ProcOutput) -> Self {
        DnfOutput {
            success: p.success,
            code: p.code,
            stdout: p.stdout,
            stderr: p.stderr,
            timed_out: p.timed_out,
            elapsed: p.elapsed,
        }
    }
}

pub struct Dnf {
    dir: PathBuf,
    baseurl: String,
    /// Kill dnf after this long (default 120 s).
    pub timeout: Duration,
    /// Extra arguments placed before the dnf command, e.g. `--setopt=timeout=5`.
    pub extra_args: Vec<String>,
    /// Network namespace (`ip netns` name) to run dnf in (`ip netns exec NS dnf …`); None = the
    /// test's own.
    pub netns: Option<String>,
    /// The repo directory dnf reads (`--setopt=reposdir`): `repos.d/` unless a test chose
    /// another ([`Dnf::with_reposdir`]).
    reposdir: PathBuf,
}

impl Dnf {
    /// Sets up a client in `dir` (created if missing) for one repo at
    /// `repo_baseurl`.
    pub fn new(dir: &Path, repo_baseurl: &str) -> Dnf {
        fs::create_dir_all(dir.join("installroot")).unwrap();
        fs::create_dir_all(dir.join("repos.d")).unwrap();
        // Our own main config so the host's /etc/dnf/dnf.conf does not matter.
        fs::write(
            dir.join("dnf.conf"),
            "[main]\ngpgcheck=0\ninstallonly_limit=3\nclean_requirements_on_remove=True\n\
             best=True\nskip_if_unavailable=False\ninstall_weak_deps=False\n",
        )
        .unwrap();
        let mut d = Dnf {
            dir: dir.to_path_buf(),
            baseurl: String::new(),
            timeout: Duration::from_secs(120),
            extra_args: Vec::new(),
            netns: None,
            reposdir: dir.join("repos.d"),
        };
        d.set_baseurl(repo_baseurl);
        d
    }

    /// Like [`Dnf::new`], for a client that runs inside the network namespace `ns`.
    pub fn in_netns(dir: &Path, repo_baseurl: &str, ns: &str) -> Dnf {
        let mut d = Dnf::new(dir, repo_baseurl);
        d.netns = Some(ns.to_string());
        d
    }

    /// Rewrites the `.repo` file with a new baseurl.
    pub fn set_baseurl(&mut self, url: &str) {
        self.baseurl = url.to_string();
        fs::write(
            self.dir.join("repos.d").join(format!("{REPO_ID}.repo")),
            format!(
                "[{REPO_ID}]\nname=lanmirror test repo\nbaseurl={url}\ngpgcheck=0\n\
                 repo_gpgcheck=0\nmetadata_expire=0\nenabled=1\n"
            ),
        )
        .unwrap();
    }

    /// Reads repo files from `dir` (created if missing) instead of `repos.d/` with its
    /// `lmtest.repo`: for clients set up the way a site's are (`dnf config-manager`, a script).
    pub fn with_reposdir(mut self, dir: &Path) -> Dnf {
        fs::create_dir_all(dir).unwrap();
        self.reposdir = dir.to_path_buf();
        self
    }

    /// The repo directory dnf reads.
    pub fn reposdir(&self) -> &Path {
        &self.reposdir
    }

    pub fn baseurl(&self) -> &str {
        &self.baseurl
    }

    pub fn installroot(&self) -> PathBuf {
        self.dir.join("installroot")
    }

    /// dnf's cache directory (this client's own).
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.join("cache")
    }

    /// `dnf -y … <args>` with the kit's flags; never panics.
    pub fn run(&self, args: &[&str]) -> DnfOutput {
        let mut cmd = match &self.netns {
            None => Command::new("dnf"),
            Some(ns) => {
                let mut c = super::netns::exec_in(ns);
                c.arg("dnf");
                c
            }
        };
        cmd.arg("-y")
            .arg(format!("--config={}", self.dir.join("dnf.conf").display()))
            .arg(format!("--installroot={}", self.installroot().display()))
            .arg("--releasever=9")
            .arg("--disableplugin=local")
            .arg(format!("--setopt=reposdir={}", self.reposdir.display()))
            .arg(format!("--setopt=cachedir={}", self.cache_dir().display()))
            .arg("--setopt=skip_if_unavailable=False")
            .arg("--setopt=keepcache=0")
            .arg("--nogpgcheck")
            .args(&self.extra_args)
            .args(args)
            .env("LC_ALL", "C.UTF-8")
            .env("LANG", "C.UTF-8");
        for v in [
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "no_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "NO_PROXY",
        ] {
            cmd.env_remove(v);
        }
        run_with_timeout(cmd, self.timeout).into()
    }

    /// `dnf install NAME…`
    pub fn install(&self, names: &[&str]) -> DnfOutput {
        let mut args = vec!["install"];
        args.extend_from_slice(names);
        self.run(&args)
    }

    /// `dnf makecache`
    pub fn makecache(&self) -> DnfOutput {
        self.run(&["makecache"])
    }

    /// `dnf upgrade`
    pub fn upgrade(&self) -> DnfOutput {
        self.run(&["upgrade"])
    }

    /// `dnf clean all` (drops metadata and packages from this client's cache).
    pub fn clean_all(&self) -> DnfOutput {
        self.run(&["clean", "all"])
    }

    /// `rpm --root R -q NAME` succeeds.
    pub fn is_installed(&self, name: &str) -> bool {
        self.installed_nevra(name).is_some()
    }

    /// `name-version-release.arch` from the installroot's rpmdb.
    pub fn installed_nevra(&self, name: &str) -> Option<String> {
        let out = Command::new("rpm")
            .arg("--root")
            .arg(self.installroot())
            .arg("-q")
            .arg(name)
            .env("LC_ALL", "C")
            .output()
            .expect("run rpm");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The installed payload file of a kit-built package.
    pub fn payload_path(&self, name: &str) -> PathBuf {
        self.installroot()
            .join(format!("usr/share/{name}/payload.bin"))
    }

    /// Size of the installed payload file, if present.
    pub fn payload_size(&self, name: &str) -> Option<u64> {
        fs::metadata(self.payload_path(name)).ok().map(|m| m.len())
    }
}
