//! Makes the kernel refuse one `bpf(2)` command to a child process: how a
//! test reaches the observer's paths for a kernel that lacks one feature
//! while everything else it does still works.
//!
//! In: the command to refuse. Out: a `pre_exec` hook that installs a
//! seccomp filter failing that command with EPERM in the child.

use std::{io, os::unix::process::CommandExt, process::Command};

/// `BPF_RAW_TRACEPOINT_OPEN`: how BTF tracepoints (and only they, among the
/// observer's programs) are attached.
pub const BPF_RAW_TRACEPOINT_OPEN: u32 = 17;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
/// The low half of the first argument (little-endian).
const ARG0: u32 = 16;

/// Makes `bpf(bpf_command, ...)` fail with EPERM in the child `command`
/// starts (and its children); every other call is allowed.
pub fn deny_bpf_command(command: &mut Command, bpf_command: u32) {
    let hook = move || install(bpf_command);
    // SAFETY: the hook only calls prctl(2) with data on its own stack, which
    // is async-signal-safe.
    unsafe { command.pre_exec(hook) };
}

fn install(bpf_command: u32) -> io::Result<()> {
    let statement = |code: u32, k: u32| libc::sock_filter { code: code as u16, jt: 0, jf: 0, k };
    let jump = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let load = |offset: u32| statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset);
    let ret = |value: u32| statement(libc::BPF_RET | libc::BPF_K, value);
    // Another architecture's calls, other system calls and other commands
    // jump to the last instruction.
    let mut filter = [
        load(ARCH),
        jump(AUDIT_ARCH, 0, 5),
        load(NR),
        jump(libc::SYS_bpf as u32, 0, 3),
        load(ARG0),
        jump(bpf_command, 0, 1),
        ret(libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        ret(libc::SECCOMP_RET_ALLOW),
    ];
    let program = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_mut_ptr() };
    // SAFETY: prctl with a valid filter program that outlives the call.
    let installed = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &raw const program) == 0
    };
    if installed { Ok(()) } else { Err(io::Error::last_os_error()) }
}
