//! cgroup v2 for the lab: finds the hierarchy, creates and removes the lab's directories, kills what
//! runs in them, and reads a directory's cgroup id (its inode number, as `bpf_get_current_cgroup_id`).

use std::{
    ffi::CString,
    fs,
    io::ErrorKind,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use crate::error::{Error, Result};

/// Environment variable that overrides the detected cgroup v2 root.
pub const CGROUP_ROOT_ENV: &str = "OBSERVER_CGROUP_ROOT";

/// The cgroup v2 mount points tried in order: the hybrid layout first, then the unified one.
const CANDIDATES: [&str; 2] = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"];

/// Whether `path` is on a cgroup2 file system.
fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: statfs writes into a zeroed struct of the right type; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type == libc::CGROUP2_SUPER_MAGIC
}

/// The cgroup v2 root: `$OBSERVER_CGROUP_ROOT` if set, else `/sys/fs/cgroup/unified` (hybrid mode) or
/// `/sys/fs/cgroup`, whichever is a cgroup2 mount.
pub fn detect_root() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(CGROUP_ROOT_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return if is_cgroup2(&path) { Ok(path) } else { Err(Error::NotCgroup2 { path }) };
    }
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| is_cgroup2(p))
        .ok_or_else(|| Error::NoCgroup2 { looked_at: CANDIDATES.join(", ") })
}

/// The cgroup id of the directory `dir`: its inode number, which is the kernfs node id that
/// `bpf_get_current_cgroup_id` returns for tasks in it.
pub fn id(dir: &Path) -> Result<u64> {
    fs::metadata(dir).map(|m| m.ino()).map_err(Error::io("reading cgroup", dir))
}

/// Creates `dir`; returns whether it was created (false if it already existed).
pub(crate) fn create(dir: &Path) -> Result<bool> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io("creating cgroup", dir)(e)),
    }
}

/// Kills every process in `dir` (SIGKILL), through `cgroup.kill` where the kernel has it (5.14+).
pub(crate) fn kill_all(dir: &Path) {
    if !dir.is_dir() {
        return;
    }
    if fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<libc::pid_t>().ok()) {
        // SAFETY: kill has no memory preconditions; these pids are in a cgroup only the lab uses.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Removes the empty cgroup `dir`, retrying for up to 3 s while killed processes finish exiting.
/// A directory that is already gone is fine.
pub(crate) fn remove(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(Error::io("removing cgroup", dir)(e)),
        }
    }
}

/// Removes `dir` only if it is empty of children and processes; true when it is gone afterwards.
pub(crate) fn remove_if_empty(dir: &Path) -> bool {
    match fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) => e.kind() == ErrorKind::NotFound,
    }
}
