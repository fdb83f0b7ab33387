//! Preflight: what loading the kernel programs needs, checked before
//! anything is loaded, so that a missing piece is named instead of being
//! guessed from a verifier log or a bare EPERM.
//!
//! In: the load options, the running kernel (`uname`, `/proc/self/status`,
//! `/sys/kernel/btf/vmlinux`) and two harmless system calls. Out: the
//! degradations to log ([`Preflight::notes`]), or the first blocking
//! problem as a [`PreflightError`] whose message says what to change.

use std::{fmt, path::Path};

use super::load_options::{LoadOptions, is_cgroup2};

/// The oldest kernel the programs load on (BPF ring buffers, CAP_BPF).
pub const MIN_KERNEL: (u32, u32) = (5, 8);
/// From this kernel on, BPF memory is charged to the memory cgroup and
/// RLIMIT_MEMLOCK no longer applies.
const MEMCG_ACCOUNTING: (u32, u32) = (5, 11);
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// Where the seccomp profile the observer needs is, and how to use it.
const SECCOMP_HELP: &str = "run the container with the seccomp profile deploy/seccomp/flow-observer.json \
     (the runtime's default plus bpf and perf_event_open; the shipped DaemonSet installs and uses it, \
     see docs/install.md, \"Seccomp\")";

/// A Linux capability the observer may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    /// Its name, as `securityContext.capabilities.add` spells it after `CAP_`.
    pub name: &'static str,
    /// Its bit in the capability sets.
    pub bit: u32,
    /// What the observer needs it for.
    pub purpose: &'static str,
}

/// CAP_SYS_ADMIN: before CAP_BPF and CAP_PERFMON existed it granted both, and still does.
const SYS_ADMIN: u32 = 21;
/// The capabilities every kernel needs for the observer's programs.
pub const REQUIRED: [Capability; 3] = [
    Capability { name: "BPF", bit: 39, purpose: "create maps and load programs" },
    Capability { name: "PERFMON", bit: 38, purpose: "load the tracing programs (TCP state tracepoints)" },
    Capability { name: "NET_ADMIN", bit: 12, purpose: "load and attach the cgroup_skb programs" },
];
/// Needed only before Linux 5.11, to raise RLIMIT_MEMLOCK for the maps.
pub const SYS_RESOURCE: Capability =
    Capability { name: "SYS_RESOURCE", bit: 24, purpose: "raise RLIMIT_MEMLOCK for the maps (kernels before 5.11)" };

/// A problem that stops the observer from loading.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// The kernel is older than [`MIN_KERNEL`].
    #[error(
        "kernel {release} is too old: the observer needs Linux {}.{} or newer (BPF ring buffers, CAP_BPF); run it on newer nodes (docs/install.md, \"Compatibility\")",
        MIN_KERNEL.0, MIN_KERNEL.1
    )]
    KernelTooOld {
        /// `uname -r`.
        release: String,
    },
    /// The cgroup root is not cgroup v2.
    #[error(
        "{path} is not a cgroup v2 mount, nor is {path}/unified: the observer attaches at the cgroup v2 root; pass --cgroup-root with the host's cgroup v2 mount, or boot the node with cgroup v2 (systemd.unified_cgroup_hierarchy=1)"
    )]
    NoCgroup2 {
        /// The path checked.
        path: std::path::PathBuf,
    },
    /// Capabilities are missing.
    #[error(
        "missing {}: add them to the container's securityContext.capabilities.add (deploy/daemonset.yaml does), or run as root",
        Missing(.missing)
    )]
    MissingCapabilities {
        /// What is missing.
        missing: Vec<Capability>,
    },
    /// A seccomp filter refuses a system call the observer needs.
    #[error(
        "a seccomp filter refuses {syscall}(2) ({errno}) although the capabilities it needs are granted: the container runtime's default seccomp profile does not allow it; {SECCOMP_HELP}"
    )]
    Seccomp {
        /// The refused call.
        syscall: &'static str,
        /// What it returned.
        errno: std::io::Error,
    },
    /// Something that is not seccomp refuses bpf(2).
    #[error(
        "the kernel refuses bpf(2) ({errno}) although CAP_BPF is granted and no seccomp filter is active: check the node's LSM (SELinux, AppArmor) policy for bpf"
    )]
    BpfRefused {
        /// What it returned.
        errno: std::io::Error,
    },
}

/// Formats missing capabilities as `CAP_X (why), CAP_Y (why)`.
struct Missing<'a>(&'a [Capability]);

impl fmt::Display for Missing<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = if self.0.len() == 1 { "capability" } else { "capabilities" };
        write!(formatter, "{word} ")?;
        for (index, capability) in self.0.iter().enumerate() {
            if index > 0 {
                write!(formatter, ", ")?;
            }
            write!(formatter, "CAP_{} (to {})", capability.name, capability.purpose)?;
        }
        Ok(())
    }
}

/// What the preflight found that does not stop the observer.
#[derive(Debug, Default)]
pub struct Preflight {
    /// Degradations to log as warnings.
    pub notes: Vec<String>,
}

/// Runs every check; the first blocking problem is returned.
pub fn check(options: &LoadOptions) -> Result<Preflight, PreflightError> {
    let mut report = Preflight::default();
    let release = kernel_release();
    let version = parse_release(&release);
    if version.is_some_and(|version| version < MIN_KERNEL) {
        return Err(PreflightError::KernelTooOld { release });
    }
    if !is_cgroup2(&options.cgroup_root) {
        return Err(PreflightError::NoCgroup2 { path: options.cgroup_root.clone() });
    }
    let effective = effective_capabilities();
    let has = |capability: &Capability| {
        effective.is_none_or(|set| set & (1 << capability.bit) != 0 || set & (1 << SYS_ADMIN) != 0)
    };
    let mut missing: Vec<Capability> = REQUIRED.iter().filter(|capability| !has(capability)).copied().collect();
    let old_kernel = version.is_some_and(|version| version < MEMCG_ACCOUNTING);
    if old_kernel && !memlock_enough(options) && !has(&SYS_RESOURCE) {
        missing.push(SYS_RESOURCE);
    }
    if !missing.is_empty() {
        return Err(PreflightError::MissingCapabilities { missing });
    }
    let filtered = seccomp_filtered();
    if let Some(errno) = refused(probe_bpf()) {
        return Err(if filtered {
            PreflightError::Seccomp { syscall: "bpf", errno }
        } else {
            PreflightError::BpfRefused { errno }
        });
    }
    let btf = Path::new(VMLINUX_BTF).exists();
    if !btf {
        report.notes.push(format!(
            "no kernel BTF ({VMLINUX_BTF}): TCP is counted per packet and state changes come from the tracepoint (kernel built without CONFIG_DEBUG_INFO_BTF)"
        ));
    }
    if let Some(errno) = refused(probe_perf_event_open()).filter(|_| filtered) {
        // Only the tracepoint (no BTF, or --tcp-per-packet) attaches
        // through perf_event_open; the BTF tracepoint does not.
        if !btf || options.tcp_per_packet {
            return Err(PreflightError::Seccomp { syscall: "perf_event_open", errno });
        }
        report.notes.push(format!(
            "a seccomp filter refuses perf_event_open(2) ({errno}): fine while the BTF tracepoint attaches, fatal if it cannot; {SECCOMP_HELP}"
        ));
    }
    Ok(report)
}

/// `uname -r`.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|text| text.trim().to_owned()).unwrap_or_default()
}

/// `(major, minor)` of a release such as `6.18.44-fc-v1300`.
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// A field of `/proc/self/status`.
fn status_field(name: &str) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| Some(line.strip_prefix(name)?.strip_prefix(':')?.trim().to_owned()))
}

/// The effective capability set, if it can be read (if not, the kernel's
/// own refusals say what is missing).
fn effective_capabilities() -> Option<u64> {
    u64::from_str_radix(&status_field("CapEff")?, 16).ok()
}

/// Whether a seccomp filter is installed on this process.
fn seccomp_filtered() -> bool {
    status_field("Seccomp").is_some_and(|mode| mode == "2")
}

/// Whether RLIMIT_MEMLOCK is, or can be raised to, enough for the maps.
fn memlock_enough(options: &LoadOptions) -> bool {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        return true;
    }
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscall writing into a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return false;
    }
    // About 200 bytes per flow-map entry (with the kernel's own overhead),
    // the ring buffer, and a few MiB for the small maps and programs.
    let needed = u64::from(options.flow_map_size) * 256 + u64::from(options.ring_buffer_bytes) + (4 << 20);
    limit.rlim_cur == libc::RLIM_INFINITY || limit.rlim_cur >= needed
}

/// The errno of a refusal a seccomp filter (or an LSM) gives: EPERM, or
/// ENOSYS (what most runtimes' profiles return for calls they do not list).
fn refused(result: Result<(), std::io::Error>) -> Option<std::io::Error> {
    result.err().filter(|error| matches!(error.raw_os_error(), Some(libc::EPERM | libc::ENOSYS)))
}

/// `bpf(BPF_MAP_CREATE)` with an all-zero attribute: no map type, so the
/// kernel answers EINVAL and creates nothing; a filter answers before it.
fn probe_bpf() -> Result<(), std::io::Error> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    let mut attr = [0_u64; 16];
    // SAFETY: a valid, writable buffer of the size passed.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, attr.as_mut_ptr(), std::mem::size_of_val(&attr) as libc::c_long)
    };
    if rc >= 0 {
        // SAFETY: the kernel returned a descriptor we own.
        unsafe { libc::close(rc as libc::c_int) };
        return Ok(());
    }
    match std::io::Error::last_os_error() {
        error if error.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        error => Err(error),
    }
}

/// `perf_event_open` with no attribute: the kernel answers EFAULT reading
/// it and opens nothing; a filter answers before it.
fn probe_perf_event_open() -> Result<(), std::io::Error> {
    // SAFETY: a null attribute is refused by the kernel before any use.
    let rc = unsafe { libc::syscall(libc::SYS_perf_event_open, std::ptr::null::<u8>(), 0, -1, -1, 0) };
    if rc >= 0 {
        // SAFETY: the kernel returned a descriptor we own.
        unsafe { libc::close(rc as libc::c_int) };
        return Ok(());
    }
    match std::io::Error::last_os_error() {
        error if error.raw_os_error() == Some(libc::EFAULT) => Ok(()),
        error => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_to_major_and_minor() {
        assert_eq!(parse_release("6.18.44-fc-v1300"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0-150-generic"), Some((5, 4)));
        assert!(parse_release("5.4.0").is_some_and(|version| version < MIN_KERNEL));
        assert!(parse_release("5.10.0").is_some_and(|version| version >= MIN_KERNEL && version < MEMCG_ACCOUNTING));
        assert_eq!(parse_release(""), None);
    }

    #[test]
    fn missing_capabilities_are_named_with_their_purpose() {
        let error = PreflightError::MissingCapabilities { missing: vec![REQUIRED[1], REQUIRED[2]] };
        let text = error.to_string();
        assert!(text.starts_with("missing capabilities CAP_PERFMON (to load the tracing programs"), "{text}");
        assert!(text.contains(", CAP_NET_ADMIN (to load and attach the cgroup_skb programs)"), "{text}");
        let one = PreflightError::MissingCapabilities { missing: vec![SYS_RESOURCE] }.to_string();
        assert!(one.starts_with("missing capability CAP_SYS_RESOURCE"), "{one}");
    }

    #[test]
    fn the_probes_reach_this_kernel_when_nothing_filters_them() {
        // As root without a filter (how the tests run) both calls reach the
        // kernel, which refuses their empty arguments.
        if effective_capabilities().is_none_or(|set| set & (1 << SYS_ADMIN) == 0) || seccomp_filtered() {
            return;
        }
        assert!(probe_bpf().is_ok(), "{:?}", probe_bpf());
        assert!(probe_perf_event_open().is_ok(), "{:?}", probe_perf_event_open());
    }
}
