//! What loading the kernel programs takes, shared by the loader and its
//! preflight (so neither reaches into the other for it).
//!
//! In: the capture settings. Out: [`LoadOptions`], and whether a path is a
//! cgroup v2 mount ([`is_cgroup2`]).

use std::path::{Path, PathBuf};

/// How to load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// cgroup v2 root to attach at.
    pub cgroup_root: PathBuf,
    /// Capacity of the flow map.
    pub flow_map_size: u32,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_buffer_bytes: u32,
    /// Ignore loopback traffic.
    pub skip_loopback: bool,
    /// Kernel log level (aya-log): 0 = off … 5 = trace.
    pub kernel_log_level: u8,
    /// Count TCP per packet, and take state changes from the tracepoint,
    /// even when the kernel's BTF would allow counting from sockets and the
    /// BTF tracepoint.
    pub tcp_per_packet: bool,
}

/// Whether `path` is the root of a cgroup v2 mount.
pub fn is_cgroup2(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: valid NUL-terminated path and a buffer of the right type.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    // SAFETY: the buffer was zeroed, which is a valid statfs, and statfs
    // filled it if it succeeded.
    let f_type = unsafe { stat.assume_init() }.f_type;
    // glibc and musl type the field and the constant differently (i64 and
    // u64): compare the bits.
    rc == 0 && f_type as u64 == libc::CGROUP2_SUPER_MAGIC as u64
}
