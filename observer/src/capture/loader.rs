//! Loads the kernel programs and attaches them.
//!
//! In: the embedded eBPF object and the capture settings. Out: a loaded
//! [`aya::Ebpf`] whose programs are attached (cgroup_skb at the cgroup v2
//! root in multi mode, the TCP state BTF tracepoint or tracepoint), with
//! links owned by this process so that nothing stays attached when it exits,
//! crashes included. A failure names the kernel feature or privilege that is
//! missing. The offsets of `struct tcp_sock`'s counters and of a socket's
//! tuple come from the running kernel's BTF; without the second (or before
//! Linux 5.9) state changes come from the tracepoint (which needs tracefs),
//! and without the first, or without the BTF tracepoint (the only program
//! that reads a closing socket's final counters), TCP is counted per packet,
//! each logged, not fatal. Before anything loads, the [`super::preflight`]
//! names what is missing (capabilities, a seccomp filter, kernel, cgroup v2).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    programs::{BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError, TracePoint},
};
use observer_common::{SockOffsets, TcpSockOffsets, names};

pub use super::load_options::{LoadOptions, is_cgroup2};
use super::{
    btf::{Btf, BtfError},
    preflight::PreflightError,
};
use crate::error_chain;

/// The kernel programs, built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer"));

const TRACEFS: &str = "/sys/kernel/tracing";
/// The running kernel's BTF.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
const TRACEPOINT_CATEGORY: &str = "sock";
const TRACEPOINT_NAME: &str = "inet_sock_set_state";
/// Fields of `sock/inet_sock_set_state` the kernel program reads, with the
/// offsets it was compiled for.
const TRACEPOINT_FIELDS: [(&str, usize); 10] = [
    ("oldstate", 16),
    ("newstate", 20),
    ("sport", 24),
    ("dport", 26),
    ("family", 28),
    ("protocol", 30),
    ("saddr", 32),
    ("daddr", 36),
    ("saddr_v6", 40),
    ("daddr_v6", 56),
];

/// How the loaded programs count TCP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TcpCounting {
    /// From each socket's own counters (`struct tcp_sock`).
    Socket,
    /// Per packet, because it was asked for.
    PerPacketAsked,
    /// Per packet, because the kernel's BTF did not give the offsets.
    PerPacketNoBtf(String),
    /// Per packet, because the BTF tracepoint, the only program that reads a
    /// closing socket's final counters, could not be loaded or attached.
    PerPacketNoBtfTracepoint(String),
}

/// Why the programs could not be loaded or attached.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The binary carries an empty object.
    #[error(
        "this observer binary was built without its eBPF programs (AYA_BUILD_SKIP); rebuild it after `cargo xtask setup` installs nightly rust-src and bpf-linker"
    )]
    NoObject,
    /// What loading needs is missing (capabilities, seccomp, kernel, cgroup v2).
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    /// Loading was refused although the preflight found what it needs.
    #[error(
        "permission denied loading eBPF programs although CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN are granted and bpf(2) is not filtered: an LSM (SELinux, AppArmor) may refuse it; see docs/install.md, \"Troubleshooting\""
    )]
    Permission(#[source] Box<EbpfError>),
    /// The kernel could not create a map of the size asked for: memory
    /// (the memory cgroup or, before Linux 5.11, RLIMIT_MEMLOCK), not a
    /// missing feature.
    #[error(
        "the kernel could not create the {name} map with the size asked for ({reason}); lower --flow-map-size or --ring-buffer-bytes, or raise the memory limit"
    )]
    MapSize {
        /// The map.
        name: String,
        /// The kernel's answer.
        reason: std::io::Error,
    },
    /// The kernel refused the object.
    #[error(
        "the kernel refused the eBPF object (needs Linux 5.8+ with BPF ring buffers, LRU hash maps, cgroup_skb and tracepoint programs)"
    )]
    Load(#[source] Box<EbpfError>),
    /// The cgroup root cannot be opened.
    #[error("cannot open cgroup root {path}")]
    CgroupOpen {
        /// The root.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A program is missing from the object.
    #[error("program {name} is missing from the eBPF object")]
    MissingProgram {
        /// Program name.
        name: &'static str,
    },
    /// Loading or attaching one program failed.
    #[error("{action} {name} failed (kernel feature: {feature})")]
    Program {
        /// What was attempted.
        action: &'static str,
        /// Program name.
        name: &'static str,
        /// The kernel feature it needs.
        feature: &'static str,
        /// Cause.
        #[source]
        source: Box<ProgramError>,
    },
    /// tracefs is not mounted and could not be mounted.
    #[error("tracefs is not mounted at {TRACEFS} and mounting it failed; run `mount -t tracefs nodev {TRACEFS}`")]
    Tracefs(#[source] io::Error),
    /// The tracepoint's record layout differs from what the program reads.
    #[error("tracepoint {TRACEPOINT_CATEGORY}/{TRACEPOINT_NAME} has an unexpected layout: {detail}")]
    TracepointLayout {
        /// What differs.
        detail: String,
    },
}

/// Finds the cgroup v2 root: `/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones.
pub fn detect_cgroup_root() -> Option<PathBuf> {
    cgroup2_under(Path::new("/sys/fs/cgroup"))
}

/// The cgroup v2 mount at `mount` (a unified host's cgroup folder) or at
/// `mount/unified` (a hybrid host's), as seen also through a container's
/// mount of the host's `/sys/fs/cgroup`.
pub fn cgroup2_under(mount: &Path) -> Option<PathBuf> {
    [mount.to_owned(), mount.join("unified")].into_iter().find(|path| is_cgroup2(path))
}

/// Loads the object and attaches every program; says how TCP is counted.
pub fn load(options: &LoadOptions) -> Result<(Ebpf, TcpCounting), LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    let preflight = super::preflight::check(options)?;
    for note in &preflight.notes {
        tracing::warn!("{note}");
    }
    raise_memlock_limit();
    // `--tcp-per-packet` runs everything a kernel without BTF runs: TCP
    // counted per packet, state changes from the tracepoint.
    let btf = (!options.tcp_per_packet).then(|| {
        fs::read(VMLINUX_BTF)
            .map_err(|error| format!("reading {VMLINUX_BTF}: {error}"))
            .and_then(|data| Btf::parse(&data).map_err(|error| error.to_string()))
    });
    let (tcp_sock, mut counting, sock) = match &btf {
        None => (TcpSockOffsets::default(), TcpCounting::PerPacketAsked, None),
        Some(Err(reason)) => (TcpSockOffsets::default(), TcpCounting::PerPacketNoBtf(reason.clone()), None),
        // Counted from sockets, TCP needs the BTF tracepoint (see below),
        // which needs the tuple's offsets. A reason TCP is counted per
        // packet is told by the capture stage's warning; this one only when
        // it is not that reason.
        Some(Ok(btf)) => match (tcp_sock_offsets(btf), sock_offsets(btf)) {
            (Ok(offsets), Ok(sock)) => (offsets, TcpCounting::Socket, Some(sock)),
            (Ok(_), Err(error)) => {
                (TcpSockOffsets::default(), TcpCounting::PerPacketNoBtfTracepoint(error.to_string()), None)
            }
            (Err(error), sock) => {
                if let Err(error) = &sock {
                    tracing::info!("TCP state changes from the tracepoint: {error}");
                }
                (TcpSockOffsets::default(), TcpCounting::PerPacketNoBtf(error.to_string()), sock.ok())
            }
        },
    };
    let mut ebpf = load_object(options, &tcp_sock, &sock.unwrap_or_default())?;
    // The BTF tracepoint also needs bpf_skc_to_tcp_sock (Linux 5.9+).
    let btf_attached = match sock {
        None => false,
        Some(_) => match attach_btf_tracepoint(&mut ebpf) {
            Ok(()) => true,
            Err(error) => {
                let reason = error_chain(&error);
                if counting != TcpCounting::Socket {
                    tracing::info!("TCP state changes from the tracepoint: {reason}");
                } else {
                    // (The capture stage warns of this, with the reason.)
                    // Counted from sockets, a connection's packets after the
                    // handshake leave the flow map alone and only its close
                    // brings the final counters, which the tracepoint does
                    // not read: start again as `--tcp-per-packet` does. The
                    // first object goes (its links detached) before the
                    // second loads, so the memory of two flow maps and rings
                    // is never charged at once.
                    drop(ebpf);
                    ebpf = load_object(options, &TcpSockOffsets::default(), &SockOffsets::default())?;
                    counting = TcpCounting::PerPacketNoBtfTracepoint(reason);
                }
                false
            }
        },
    };
    if !btf_attached {
        ensure_tracefs()?;
        check_tracepoint_layout()?;
        attach_tracepoint(&mut ebpf)?;
    }
    drop(btf);
    // Reading the kernel BTF (ours for the offsets, aya's for relocations
    // and the BTF tracepoint) took tens of MB of heap, all free again: give
    // the pages back instead of holding them for the daemon's lifetime
    // (glibc's allocator; others keep their own policy).
    // SAFETY: malloc_trim has no preconditions.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0)
    };
    Ok((ebpf, counting))
}

/// Loads the object with these offsets and attaches the cgroup_skb programs.
fn load_object(options: &LoadOptions, tcp_sock: &TcpSockOffsets, sock: &SockOffsets) -> Result<Ebpf, LoadError> {
    let skip_loopback = u8::from(options.skip_loopback);
    let wakeup_threshold = u64::from(options.ring_buffer_bytes / 4);
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(names::FLOWS, options.flow_map_size)
        .map_max_entries(names::EVENTS, options.ring_buffer_bytes)
        .override_global(names::SKIP_LOOPBACK, &skip_loopback, true)
        .override_global(names::WAKEUP_THRESHOLD, &wakeup_threshold, true)
        .override_global(names::TCP_SOCK, tcp_sock, true)
        .override_global(names::SOCK, sock, true)
        .override_global(aya_log::LEVEL, &options.kernel_log_level, false)
        .load(OBJECT)
        .map_err(|error| match error {
            EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error })
                if matches!(io_error.raw_os_error(), Some(libc::ENOMEM | libc::E2BIG)) =>
            {
                LoadError::MapSize { name, reason: io_error }
            }
            error if is_permission(&error) => LoadError::Permission(Box::new(error)),
            error => LoadError::Load(Box::new(error)),
        })?;

    let cgroup = fs::File::open(&options.cgroup_root)
        .map_err(|source| LoadError::CgroupOpen { path: options.cgroup_root.clone(), source })?;
    for (name, attach_type) in
        [(names::PROG_INGRESS, CgroupSkbAttachType::Ingress), (names::PROG_EGRESS, CgroupSkbAttachType::Egress)]
    {
        let program: &mut CgroupSkb = program(&mut ebpf, name)?;
        let feature = "cgroup_skb programs (Linux 4.10+)";
        program.load().map_err(failed("loading", name, feature))?;
        // aya attaches through a bpf_link (Linux 5.7+, below our 5.8 floor), and
        // cgroup links always run in multi mode: other agents' programs on the
        // same cgroup keep running. The link rejects explicit mode flags.
        program.attach(&cgroup, attach_type, CgroupAttachMode::Single).map_err(failed(
            "attaching",
            name,
            "cgroup v2 BPF attachment",
        ))?;
    }
    Ok(ebpf)
}

/// Attaches the BTF tracepoint program (the tuple loaded from the socket).
fn attach_btf_tracepoint(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    let name = names::PROG_TCP_STATE_BTF;
    let feature = "BTF tracepoint inet_sock_set_state with bpf_skc_to_tcp_sock (Linux 5.9+)";
    // aya finds the tracepoint's type in its own reading of the kernel BTF,
    // dropped once the program is loaded.
    let btf = aya::Btf::from_sys_fs().map_err(|error| failed("loading", name, feature)(error.into()))?;
    let program: &mut BtfTracePoint = program(ebpf, name)?;
    program.load(names::BTF_TRACEPOINT, &btf).map_err(failed("loading", name, feature))?;
    program.attach().map_err(failed("attaching", name, feature))?;
    Ok(())
}

/// Attaches the tracepoint program (the tuple read from the record).
fn attach_tracepoint(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    let name = names::PROG_TCP_STATE;
    let feature = "tracepoint sock/inet_sock_set_state (Linux 4.16+)";
    let program: &mut TracePoint = program(ebpf, name)?;
    program.load().map_err(failed("loading", name, feature))?;
    program.attach(TRACEPOINT_CATEGORY, TRACEPOINT_NAME).map_err(failed("attaching", name, feature))?;
    Ok(())
}

/// The offsets of what names a socket's connection (see [`SockOffsets`]),
/// each checked for the size the BTF tracepoint loads it with.
pub fn sock_offsets(btf: &Btf) -> Result<SockOffsets, BtfError> {
    let common = |member: &str, size: u32| sized_field(btf, "sock", &["__sk_common", member], size);
    Ok(SockOffsets {
        daddr: common("skc_daddr", 4)?,
        rcv_saddr: common("skc_rcv_saddr", 4)?,
        dport: common("skc_dport", 2)?,
        num: common("skc_num", 2)?,
        family: common("skc_family", 2)?,
        v6_daddr: common("skc_v6_daddr", 16)?,
        v6_rcv_saddr: common("skc_v6_rcv_saddr", 16)?,
        sport: sized_field(btf, "inet_sock", &["inet_sport"], 2)?,
    })
}

/// The offset of member `path` of `structure`, which must be `size` bytes.
fn sized_field(btf: &Btf, structure: &str, path: &[&str], size: u32) -> Result<u32, BtfError> {
    let field = btf.field(structure, path)?;
    if field.size != size {
        return Err(BtfError::NoMember {
            structure: structure.to_owned(),
            member: format!("{} of {size} bytes (it has {})", path.join("."), field.size),
        });
    }
    Ok(field.offset)
}

/// The offsets of the `tcp_sock` and `sock` members the kernel programs
/// read, each checked for the size they read it with.
pub fn tcp_sock_offsets(btf: &Btf) -> Result<TcpSockOffsets, BtfError> {
    let field = |structure: &str, path: &[&str], size: u32| sized_field(btf, structure, path, size);
    // The socket's cgroup, for closes: optional (before Linux 5.15
    // `sock_cgroup_data` held the pointer in a tagged union); without it
    // FINs keep the full path, which finds connections older than the
    // observer.
    let cgroup = || -> Result<[u32; 3], BtfError> {
        Ok([
            field("sock", &["sk_cgrp_data", "cgroup"], 8)?,
            field("cgroup", &["kn"], 8)?,
            field("kernfs_node", &["id"], 8)?,
        ])
    };
    let [sk_cgroup, cgroup_kn, kn_id] = cgroup().unwrap_or_default();
    Ok(TcpSockOffsets {
        enabled: 1,
        segs_out: field("tcp_sock", &["segs_out"], 4)?,
        segs_in: field("tcp_sock", &["segs_in"], 4)?,
        bytes_acked: field("tcp_sock", &["bytes_acked"], 8)?,
        bytes_received: field("tcp_sock", &["bytes_received"], 8)?,
        snd_una: field("tcp_sock", &["snd_una"], 4)?,
        write_seq: field("tcp_sock", &["write_seq"], 4)?,
        sk_flags: field("sock", &["__sk_common", "skc_flags"], 8)?,
        sk_cgroup,
        cgroup_kn,
        kn_id,
    })
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    let program = ebpf.program_mut(name).ok_or(LoadError::MissingProgram { name })?;
    program.try_into().map_err(|_| LoadError::MissingProgram { name })
}

/// The error of `action` on program `name`, which needs kernel `feature`.
fn failed(action: &'static str, name: &'static str, feature: &'static str) -> impl FnOnce(ProgramError) -> LoadError {
    move |source| LoadError::Program { action, name, feature, source: Box::new(source) }
}

fn is_permission(error: &EbpfError) -> bool {
    let text = format!("{error:?}");
    text.contains("PermissionDenied") || text.contains("Operation not permitted")
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
fn raise_memlock_limit() {
    let limit = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on Linux 5.11+");
    }
}

fn ensure_tracefs() -> Result<(), LoadError> {
    if Path::new(TRACEFS).join("events").is_dir() || Path::new("/sys/kernel/debug/tracing/events").is_dir() {
        return Ok(());
    }
    let target = std::ffi::CString::new(TRACEFS).map_err(|error| LoadError::Tracefs(io::Error::other(error)))?;
    let fstype = c"tracefs";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(c"nodev".as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(LoadError::Tracefs(io::Error::last_os_error()));
    }
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(())
}

fn check_tracepoint_layout() -> Result<(), LoadError> {
    let format_path = [TRACEFS, "/sys/kernel/debug/tracing"]
        .iter()
        .map(|root| Path::new(root).join("events").join(TRACEPOINT_CATEGORY).join(TRACEPOINT_NAME).join("format"))
        .find(|path| path.exists())
        .ok_or_else(|| LoadError::TracepointLayout { detail: "the tracepoint does not exist".to_owned() })?;
    let format = fs::read_to_string(&format_path).map_err(|error| LoadError::TracepointLayout {
        detail: format!("reading {}: {error}", format_path.display()),
    })?;
    check_layout(&format).map_err(|detail| LoadError::TracepointLayout { detail })
}

/// Compares a tracefs `format` file with [`TRACEPOINT_FIELDS`].
fn check_layout(format: &str) -> Result<(), String> {
    for (field, expected) in TRACEPOINT_FIELDS {
        let offset = format
            .lines()
            .find_map(|line| {
                let declaration = line.trim().strip_prefix("field:")?.split(';').next()?;
                let name = declaration.rsplit(' ').next()?.split('[').next()?;
                if name != field {
                    return None;
                }
                line.split(';').find_map(|part| part.trim().strip_prefix("offset:")?.parse::<usize>().ok())
            })
            .ok_or_else(|| format!("field {field} is missing"))?;
        if offset != expected {
            return Err(format!("field {field} at offset {offset}, the program reads offset {expected}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running_kernel() -> Option<Btf> {
        let data = fs::read(VMLINUX_BTF).ok()?;
        Some(Btf::parse(&data).expect("the running kernel's BTF parses"))
    }

    /// No two of the `(offset, size)` fields overlap.
    fn apart(fields: &[(u32, u32)]) -> bool {
        fields
            .iter()
            .enumerate()
            .all(|(i, (a, a_size))| fields[i + 1..].iter().all(|(b, b_size)| a + a_size <= *b || b + b_size <= *a))
    }

    #[test]
    fn the_running_kernels_counters_are_found_apart_in_tcp_sock() {
        let Some(btf) = running_kernel() else { return };
        let offsets = tcp_sock_offsets(&btf).expect("this kernel has the counters");
        assert_eq!(offsets.enabled, 1);
        let counters = [
            (offsets.segs_out, 4),
            (offsets.segs_in, 4),
            (offsets.bytes_acked, 8),
            (offsets.bytes_received, 8),
            (offsets.snd_una, 4),
            (offsets.write_seq, 4),
        ];
        assert!(apart(&counters), "{offsets:?}");
        // The BTF tracepoint loads them from the start of the socket: they
        // follow the `inet_connection_sock` a `tcp_sock` begins with, and
        // `skc_flags` is inside that.
        let inet_conn = btf.field("tcp_sock", &["inet_conn"]).expect("tcp_sock starts with its inet_connection_sock");
        let end = inet_conn.offset + inet_conn.size;
        assert!(counters.iter().all(|(offset, _)| *offset >= end), "{offsets:?}");
        assert!(offsets.sk_flags + 8 <= end, "{offsets:?}");
        // Linux 5.15 and later: a close names its socket's cgroup.
        assert!(offsets.sk_cgroup != 0 && offsets.cgroup_kn != 0 && offsets.kn_id != 0, "{offsets:?}");
    }

    #[test]
    fn the_running_kernels_socket_tuple_is_found_apart() {
        let Some(btf) = running_kernel() else { return };
        let offsets = sock_offsets(&btf).expect("this kernel's sock has the tuple");
        let fields = [
            (offsets.daddr, 4),
            (offsets.rcv_saddr, 4),
            (offsets.dport, 2),
            (offsets.num, 2),
            (offsets.family, 2),
            (offsets.v6_daddr, 16),
            (offsets.v6_rcv_saddr, 16),
        ];
        assert!(apart(&fields), "{offsets:?}");
        let sock = btf.field("inet_sock", &["sk"]).expect("inet_sock starts with its sock");
        assert!(offsets.sport >= sock.offset + sock.size, "inet_sport follows struct sock: {offsets:?}");
    }

    #[test]
    fn the_cgroup2_root_is_found_under_a_hosts_cgroup_folder() {
        let plain = tempfile::tempdir().expect("tempdir");
        assert_eq!(cgroup2_under(plain.path()), None, "a plain folder is no cgroup v2 mount");
        // This host: unified (at the folder) or hybrid (at unified/).
        if let Some(found) = cgroup2_under(Path::new("/sys/fs/cgroup")) {
            assert!(is_cgroup2(&found));
            assert!(found == Path::new("/sys/fs/cgroup") || found == Path::new("/sys/fs/cgroup/unified"), "{found:?}");
            assert_eq!(detect_cgroup_root(), Some(found));
        }
    }

    const FORMAT: &str = "\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;";

    #[test]
    fn layout_of_this_kernel_generation_is_accepted() {
        assert_eq!(check_layout(FORMAT), Ok(()));
    }

    #[test]
    fn moved_field_is_named() {
        let moved = FORMAT.replace("offset:24", "offset:28");
        assert_eq!(check_layout(&moved), Err("field sport at offset 28, the program reads offset 24".to_owned()));
    }
}
