//! Takes capabilities away from a child process: how a test runs the
//! observer as root lacking exactly the capabilities it names.
//!
//! In: capability numbers. Out: a `pre_exec` hook that drops them from the
//! bounding set and clears the ambient set, so that after `execve` (as root)
//! the child's permitted and effective sets lack them.

use std::{io, os::unix::process::CommandExt, process::Command};

/// CAP_NET_ADMIN.
pub const NET_ADMIN: u32 = 12;
/// CAP_SYS_ADMIN (grants what CAP_BPF and CAP_PERFMON grant).
pub const SYS_ADMIN: u32 = 21;
/// CAP_PERFMON.
pub const PERFMON: u32 = 38;
/// CAP_BPF.
pub const BPF: u32 = 39;

/// Makes the child `command` starts lack `capabilities`.
pub fn drop_capabilities(command: &mut Command, capabilities: &[u32]) {
    let capabilities = capabilities.to_vec();
    let hook = move || {
        for &capability in &capabilities {
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(capability), 0, 0, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook only calls prctl(2), which is async-signal-safe, and
    // allocates nothing (the vector was moved in before the fork).
    unsafe { command.pre_exec(hook) };
}
