//! [`Tmpfs`]: a small filesystem of its own for a test's data directory, so disk limits are
//! real (root only; tests skip with a printed reason elsewhere), unmounted on drop even when
//! the test fails. Also [`du`], the bytes of the files under a directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted by the test; `umount -l` on drop.
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=…`, e.g. `"200m"`) on `dir` (created). `None`
    /// when it cannot be mounted here (not root): the caller prints why and skips.
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `(used, free)` bytes of the filesystem.
    pub fn space(&self) -> (u64, u64) {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(self.dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C path and a zeroed statvfs to fill.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0, "statvfs");
        let unit = st.f_frsize as u64;
        (
            (st.f_blocks as u64 - st.f_bfree as u64) * unit,
            st.f_bavail as u64 * unit,
        )
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Total length of the regular files under `dir` (recursively); 0 when it does not exist.
/// Files that vanish while it walks are skipped.
pub fn du(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            n += du(&e.path());
        } else if t.is_file() {
            n += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    n
}
