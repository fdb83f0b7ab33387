//! Kernel programs of the flow observer.
//!
//! In: every packet a socket in the attached cgroup tree sends or receives
//! (cgroup_skb egress and ingress) and every TCP state change (the BTF
//! tracepoint `inet_sock_set_state`, or the classic tracepoint
//! `sock/inet_sock_set_state` where the loader cannot attach that). Out:
//! per-flow counters in the `FLOWS` LRU hash, an `Event` on the `EVENTS`
//! ring buffer for each new flow and each TCP attempt, establishment and
//! close (with TCP counted from sockets, a close carries the socket's final
//! counters, FINs and cgroup), the payload of every DNS packet a local
//! socket exchanges with a remote port 53 (see `dns`), and per-CPU counters
//! of what went wrong.
//!
//! TCP is counted from the socket when the loader found `struct tcp_sock`'s
//! layout (`TCP_SOCK`) and attached the BTF tracepoint, which reads those
//! final counters: only the handshake's SYNs, resets, FINs before the
//! handshake is done, DNS packets, packets of no connected socket and
//! packets at a sampling point touch the flow map, writing the socket's own
//! counters; other TCP packets return after a few loads (`TcpSockOffsets`
//! says which is which). Everything else, and TCP without the layout, is
//! counted packet by packet.
//!
//! Every program observes only: the cgroup_skb programs return "pass" on every
//! path, errors included.
#![no_std]
#![no_main]
// `atomic_xadd`: the BPF target has no compare-and-swap, so core's atomic
// types lack `fetch_add`, but LLVM lowers this intrinsic to BPF_ATOMIC_ADD.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic_xadd is the only atomic add on bpfel")]

mod dns;
mod packet;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_ktime_get_ns, bpf_sk_fullsock, bpf_skb_cgroup_id, bpf_tcp_sock, generated,
    },
    macros::{btf_tracepoint, cgroup_skb, map, tracepoint},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, SkBuffContext, TracePointContext},
};
use aya_log_ebpf::{debug, warn};
use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};
use observer_common::{
    COUNTED_SOCKET, COUNTER_SLOTS, Counter, DNS_PORT, EVENT_NEW_FLOW, EVENT_TCP_STATE, Event, FAMILY_IPV4, FAMILY_IPV6,
    FlowKey, FlowStats, INITIATOR_LOCAL, INITIATOR_REMOTE, PROTO_TCP, PROTO_UDP, SockOffsets, SocketCounters,
    TCP_SAMPLE_AT, TCP_SAMPLE_MASK, TcpSockOffsets, tcp_flags, tcp_state,
};
use packet::{Direction, Parsed};

/// Default capacity of the flow map; the loader overrides it.
const DEFAULT_MAX_FLOWS: u32 = 131_072;
/// Default ring buffer size; the loader overrides it.
const DEFAULT_RING_BYTES: u32 = 8 << 20;
/// cgroup_skb verdict that lets the packet through.
const PASS: i32 = 1;

#[map(name = "FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowStats> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Non-zero: ignore loopback traffic (a pod talking to itself is not a flow
/// between workloads, and loopback tuples repeat across network namespaces).
///
/// A plain static rather than `aya_ebpf::Global`: the `MaybeUninit` inside
/// `Global` yields a BTF name the kernel rejects with bpf-linker 0.9.15.
#[unsafe(no_mangle)]
static SKIP_LOOPBACK: u8 = 1;

/// Pending ring-buffer bytes past which a submit wakes userspace. Below it
/// events are queued silently and userspace drains the ring on a timer: a
/// wakeup per event (an irq_work) costs more than the rest of the program.
/// The loader sets it to a quarter of the ring.
#[unsafe(no_mangle)]
static WAKEUP_THRESHOLD: u64 = DEFAULT_RING_BYTES as u64 / 4;

/// Where `struct tcp_sock`'s counters are in the running kernel; the loader
/// fills it from BTF when it attaches the BTF tracepoint too (the only
/// program that reads a closing socket's final counters), else leaves
/// `enabled` zero to count TCP per packet.
#[unsafe(no_mangle)]
static TCP_SOCK: TcpSockOffsets = TcpSockOffsets {
    enabled: 0,
    segs_out: 0,
    segs_in: 0,
    bytes_acked: 0,
    bytes_received: 0,
    snd_una: 0,
    write_seq: 0,
    sk_flags: 0,
    sk_cgroup: 0,
    cgroup_kn: 0,
    kn_id: 0,
};

/// Where a socket's tuple is, for the BTF tracepoint; the loader fills it
/// from BTF and attaches the BTF tracepoint, or leaves it zero and attaches
/// the tracepoint.
#[unsafe(no_mangle)]
static SOCK: SockOffsets =
    SockOffsets { daddr: 0, rcv_saddr: 0, dport: 0, num: 0, family: 0, v6_daddr: 0, v6_rcv_saddr: 0, sport: 0 };

/// `SOCK_DONE` in `sock.sk_flags`: the peer's FIN was taken in order.
const SOCK_DONE: u64 = 1 << 1;

fn tcp_sock_offsets() -> TcpSockOffsets {
    // SAFETY: the loader may rewrite this global; read it through memory.
    unsafe { core::ptr::read_volatile(&raw const TCP_SOCK) }
}

fn sock_offsets() -> SockOffsets {
    // SAFETY: the loader may rewrite this global; read it through memory.
    unsafe { core::ptr::read_volatile(&raw const SOCK) }
}

fn skip_loopback() -> bool {
    // SAFETY: the loader may rewrite this global; read it through memory.
    unsafe { core::ptr::read_volatile(&raw const SKIP_LOOPBACK) != 0 }
}

#[cgroup_skb]
pub fn flow_ingress(ctx: SkBuffContext) -> i32 {
    track_packet(&ctx, Direction::Ingress);
    PASS
}

#[cgroup_skb]
pub fn flow_egress(ctx: SkBuffContext) -> i32 {
    track_packet(&ctx, Direction::Egress);
    PASS
}

#[tracepoint]
pub fn tcp_state(ctx: TracePointContext) -> u32 {
    tcp_state_change(&ctx);
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tcp_state_btf(ctx: BtfTracePointContext) -> i32 {
    socket_state_change(&ctx);
    0
}

/// How a TCP packet's socket counts it, in socket-counting mode.
enum Socket {
    /// Not a connected TCP socket (or not socket-counting): the full path
    /// decides by protocol.
    None,
    /// A connected TCP socket with these counters: the full path writes them.
    Counters(SocketCounters),
}

/// The socket-counting fast path: `Err(())` when the packet needs nothing
/// more (see [`TcpSockOffsets`] for which TCP packets those are), else what
/// the full path needs to know of its socket.
#[inline(always)]
fn classify(ctx: &SkBuffContext) -> Result<Socket, ()> {
    let offsets = tcp_sock_offsets();
    if offsets.enabled == 0 {
        return Ok(Socket::None);
    }
    // SAFETY: `ctx.skb.skb` is the program's own `__sk_buff`; the socket
    // pointers come from it or from helpers that return null or a valid
    // socket; `state` is one of the fields the verifier lets a program read
    // from any socket, full or not (bpf_sock_common_is_valid_access).
    unsafe {
        let sk = (*ctx.skb.skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            return Ok(Socket::None);
        }
        // The SYN-ACK of a passive open leaves from the request socket; the
        // socket the handshake creates counts it (userspace adds it back).
        if (*sk).state == u32::from(tcp_state::NEW_SYN_RECV) {
            return Err(());
        }
        let sk = bpf_sk_fullsock(sk);
        if sk.is_null() || (*sk).protocol != u32::from(PROTO_TCP) {
            return Ok(Socket::None);
        }
        let state = (*sk).state as u8;
        // A closed socket (the kernel's reset sender) holds no counters of
        // this flow.
        if state == tcp_state::CLOSE {
            return Ok(Socket::None);
        }
        let tp = bpf_tcp_sock(sk);
        if tp.is_null() {
            return Ok(Socket::None);
        }
        let (segs_in, segs_out) = ((*tp).segs_in, (*tp).segs_out);
        let listening = state == tcp_state::LISTEN;
        // Once the handshake is done a FIN is only counters, which the close
        // event brings final, with the FINs each way and the socket's cgroup
        // (so it also reports a connection no packet put in the map).
        let noisy = if !listening && tcp_state::is_synchronized(state) && offsets.sk_cgroup != 0 {
            tcp_flags::SYN | tcp_flags::RST
        } else {
            tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST
        };
        let quiet = match packet::tcp_flags(ctx) {
            Some(flags) => flags & noisy == 0,
            None => false,
        };
        // A listener holds no counters of this flow either. Its SYN starts
        // the passive opener's flow; the handshake's last ACK, filtered
        // against it before the connection's socket exists, is counted by
        // that socket.
        if quiet
            && (listening
                || (*sk).dst_port != DNS_PORT.to_be()
                    && segs_in.wrapping_add(segs_out) & TCP_SAMPLE_MASK != TCP_SAMPLE_AT)
        {
            return Err(());
        }
        if listening {
            return Ok(Socket::None);
        }
        // Which FIN the counters hold, from the state: ours is acknowledged
        // once FIN_WAIT2 or TIME_WAIT is reached; the peer's was taken in
        // every state that follows receiving it.
        let fin_acked = matches!(state, tcp_state::FIN_WAIT2 | tcp_state::TIME_WAIT);
        let fin_received =
            matches!(state, tcp_state::CLOSE_WAIT | tcp_state::LAST_ACK | tcp_state::CLOSING | tcp_state::TIME_WAIT);
        Ok(Socket::Counters(SocketCounters {
            packets_out: u64::from(segs_out),
            bytes_out: (*tp).bytes_acked.saturating_sub(u64::from(fin_acked)),
            packets_in: u64::from(segs_in),
            bytes_in: (*tp).bytes_received.saturating_sub(u64::from(fin_received)),
        }))
    }
}

fn track_packet(ctx: &SkBuffContext, direction: Direction) {
    let Ok(socket) = classify(ctx) else { return };
    let parsed = match packet::parse(ctx, direction) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return,
        Err(()) => {
            bump(Counter::PacketsUnparsed);
            debug!(ctx, "unparsed packet, len {}", ctx.len());
            return;
        }
    };
    if skip_loopback() && parsed.loopback {
        return;
    }
    let mut key = parsed.key;
    // SAFETY: `ctx.skb.skb` is the program's own `__sk_buff`.
    key.cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let now = unsafe { bpf_ktime_get_ns() };
    // The one test DNS costs the common path: queries a pod sends and the
    // answers it gets both have the server's port 53 as the remote port.
    if key.remote_port == DNS_PORT {
        dns::capture(ctx, &dns::header(&key, direction, now), parsed.l4_offset);
    }
    let counters = match socket {
        Socket::Counters(counters) if parsed.key.protocol == PROTO_TCP => Some(counters),
        _ => None,
    };
    if let Some(stats) = FLOWS.get_ptr_mut(key) {
        // SAFETY: the map value stays valid for the program's run.
        unsafe { update(stats, &parsed, counters.as_ref(), direction, now) };
        return;
    }
    if parsed.key.protocol == PROTO_TCP && parsed.tcp_flags & (tcp_flags::RST | tcp_flags::SYN) == tcp_flags::RST {
        // A reset that belongs to no flow (the kernel answering a closed
        // port from its control socket) starts nothing; the peer's flow
        // counts it on arrival.
        return;
    }
    let stats = new_stats(&parsed, counters.as_ref(), direction, initiator(ctx, &parsed, direction), now);
    if FLOWS.insert(key, stats, u64::from(BPF_NOEXIST)).is_ok() {
        bump(Counter::FlowsCreated);
        emit_new_flow(now, &key, stats.initiator);
        return;
    }
    // Another CPU inserted the same flow first: count on its entry.
    match FLOWS.get_ptr_mut(key) {
        // SAFETY: as above.
        Some(stats) => unsafe { update(stats, &parsed, counters.as_ref(), direction, now) },
        None => {
            bump(Counter::FlowInsertFailed);
            warn!(ctx, "flow map insert failed");
        }
    }
}

fn new_stats(
    parsed: &Parsed,
    counters: Option<&SocketCounters>,
    direction: Direction,
    initiator: u8,
    now: u64,
) -> FlowStats {
    let mut stats = FlowStats { first_seen_ns: now, last_seen_ns: now, initiator, ..FlowStats::default() };
    match direction {
        Direction::Egress => {
            stats.packets_out = 1;
            stats.bytes_out = u64::from(parsed.len);
            stats.tcp_flags_out = parsed.tcp_flags;
        }
        Direction::Ingress => {
            stats.packets_in = 1;
            stats.bytes_in = u64::from(parsed.len);
            stats.tcp_flags_in = parsed.tcp_flags;
        }
    }
    if let Some(counters) = counters {
        set_counters(&mut stats, counters);
    }
    stats
}

/// Who initiated the flow whose entry this packet creates (see
/// [`FlowStats::initiator`]). Only the packet that creates an entry pays
/// for it: the flow's first packet, or one whose entry the map evicted.
/// Then "who sent it" can be wrong (a reply re-creating an evicted entry),
/// so the handshake's flags and the socket's state go first, and userspace
/// keeps the initiator of a flow's first entry over any later one's.
#[inline(always)]
fn initiator(ctx: &SkBuffContext, parsed: &Parsed, direction: Direction) -> u8 {
    let (sender, receiver) = match direction {
        Direction::Egress => (INITIATOR_LOCAL, INITIATOR_REMOTE),
        Direction::Ingress => (INITIATOR_REMOTE, INITIATOR_LOCAL),
    };
    // SAFETY: `ctx.skb.skb` is the program's own `__sk_buff`; `state` is a
    // field the verifier lets a program read from any socket, full or not.
    let state = unsafe {
        let sk = (*ctx.skb.skb).__bindgen_anon_2.sk;
        if sk.is_null() { None } else { Some((*sk).state as u8) }
    };
    let key = &parsed.key;
    match key.protocol {
        PROTO_TCP => match parsed.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) {
            tcp_flags::SYN => sender,
            syn_ack if syn_ack == tcp_flags::SYN | tcp_flags::ACK => receiver,
            _ => match state {
                Some(tcp_state::SYN_SENT) => INITIATOR_LOCAL,
                Some(tcp_state::LISTEN | tcp_state::SYN_RECV | tcp_state::NEW_SYN_RECV) => INITIATOR_REMOTE,
                // A connection first seen after its handshake (older than
                // the observer, or its entry evicted): the end with the
                // higher (ephemeral) port most likely connected.
                _ if key.local_port > key.remote_port => INITIATOR_LOCAL,
                _ => INITIATOR_REMOTE,
            },
        },
        // A connected UDP socket (connect() puts it in TCP_ESTABLISHED)
        // receives only from its peer: what it gets are replies.
        PROTO_UDP if direction == Direction::Ingress && state == Some(tcp_state::ESTABLISHED) => INITIATOR_LOCAL,
        _ => sender,
    }
}

fn set_counters(stats: &mut FlowStats, counters: &SocketCounters) {
    stats.packets_out = counters.packets_out;
    stats.bytes_out = counters.bytes_out;
    stats.packets_in = counters.packets_in;
    stats.bytes_in = counters.bytes_in;
    stats.counted = COUNTED_SOCKET;
}

/// # Safety
/// `stats` must point at a live value of the flow map.
unsafe fn update(
    stats: *mut FlowStats,
    parsed: &Parsed,
    counters: Option<&SocketCounters>,
    direction: Direction,
    now: u64,
) {
    // SAFETY: the caller guarantees `stats` is live; added counters are only
    // ever touched atomically so concurrent CPUs never lose an increment.
    // Socket counters are absolute: a racing CPU can only write an equal or
    // slightly older value, and the close event brings the final one.
    unsafe {
        let (packets, bytes, flags) = match direction {
            Direction::Egress => {
                (&raw mut (*stats).packets_out, &raw mut (*stats).bytes_out, &raw mut (*stats).tcp_flags_out)
            }
            Direction::Ingress => {
                (&raw mut (*stats).packets_in, &raw mut (*stats).bytes_in, &raw mut (*stats).tcp_flags_in)
            }
        };
        match counters {
            Some(counters) => set_counters(&mut *stats, counters),
            // A socket-counted flow's packet without a connected socket (a
            // listener's handshake, a reset) is in its socket's counters.
            None if (*stats).counted == COUNTED_SOCKET => {}
            None => {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(packets, 1);
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(bytes, u64::from(parsed.len));
            }
        }
        // Only write when something changes, to keep the cache line clean.
        let seen = *flags;
        if seen | parsed.tcp_flags != seen {
            *flags = seen | parsed.tcp_flags;
        }
        if (*stats).last_seen_ns < now {
            (*stats).last_seen_ns = now;
        }
    }
}

/// Offsets in the `sock/inet_sock_set_state` record; the loader checks them
/// against the running kernel's format file before attaching.
mod tp {
    pub const OLDSTATE: usize = 16;
    pub const NEWSTATE: usize = 20;
    pub const SPORT: usize = 24;
    pub const DPORT: usize = 26;
    pub const FAMILY: usize = 28;
    pub const PROTOCOL: usize = 30;
    pub const SADDR: usize = 32;
    pub const DADDR: usize = 36;
    pub const SADDR_V6: usize = 40;
    pub const DADDR_V6: usize = 56;
    pub const AF_INET: u16 = 2;
    pub const AF_INET6: u16 = 10;
    pub const TCP_LISTEN: i32 = 10;
}

/// Reads a field of the tracepoint record straight from the context: the
/// verifier checks the (aligned, in-bounds) load, which costs far less than
/// `bpf_probe_read_kernel`.
///
/// # Safety
/// `offset` must be a field of `T`'s size and alignment inside the record.
#[inline(always)]
unsafe fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: guaranteed by the caller; the context is the record.
    unsafe { core::ptr::read(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

/// A state change worth an event: TCP, not a listener's, and into SYN_SENT,
/// ESTABLISHED or CLOSE.
#[inline(always)]
fn wanted(old: i32, new: i32) -> bool {
    old != tp::TCP_LISTEN
        && new != tp::TCP_LISTEN
        && matches!(new as u8, tcp_state::SYN_SENT | tcp_state::ESTABLISHED | tcp_state::CLOSE)
}

fn tcp_state_change(ctx: &TracePointContext) {
    // SAFETY: offsets and sizes match the tracepoint format (checked by the loader).
    let (protocol, old, new) =
        unsafe { (field::<u16>(ctx, tp::PROTOCOL), field::<i32>(ctx, tp::OLDSTATE), field::<i32>(ctx, tp::NEWSTATE)) };
    if protocol != u16::from(PROTO_TCP) || !wanted(old, new) {
        return;
    }
    let mut key = FlowKey { protocol: PROTO_TCP, ..FlowKey::default() };
    // SAFETY: as above.
    unsafe {
        key.local_port = field::<u16>(ctx, tp::SPORT);
        key.remote_port = field::<u16>(ctx, tp::DPORT);
        match field::<u16>(ctx, tp::FAMILY) {
            tp::AF_INET => {
                key.family = FAMILY_IPV4;
                key.local_addr[..4].copy_from_slice(&field::<u32>(ctx, tp::SADDR).to_ne_bytes());
                key.remote_addr[..4].copy_from_slice(&field::<u32>(ctx, tp::DADDR).to_ne_bytes());
            }
            tp::AF_INET6 => {
                key.family = FAMILY_IPV6;
                key.local_addr[..8].copy_from_slice(&field::<u64>(ctx, tp::SADDR_V6).to_ne_bytes());
                key.local_addr[8..].copy_from_slice(&field::<u64>(ctx, tp::SADDR_V6 + 8).to_ne_bytes());
                key.remote_addr[..8].copy_from_slice(&field::<u64>(ctx, tp::DADDR_V6).to_ne_bytes());
                key.remote_addr[8..].copy_from_slice(&field::<u64>(ctx, tp::DADDR_V6 + 8).to_ne_bytes());
            }
            _ => return,
        }
    }
    // The loader attaches the tracepoint only with TCP counted per packet:
    // a close has no socket counters to bring.
    state_change(key, old as u8, new as u8, |_, _| None);
}

/// The BTF tracepoint's arguments are `inet_sock_set_state`'s own: the
/// socket, as a pointer the verifier knows the type of, and both states.
/// Nothing is read unless the change is wanted, and then the fields are
/// plain loads, which the verifier checks against the kernel's BTF (no
/// helper call, no copy).
fn socket_state_change(ctx: &BtfTracePointContext) {
    let (sk, old, new): (*const c_void, i32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    if !wanted(old, new) {
        return;
    }
    // SAFETY: `sk` is the tracepoint's socket; the helper returns it as a
    // `struct tcp_sock` when it is a full TCP socket, else null.
    let tcp = unsafe { generated::bpf_skc_to_tcp_sock(sk.cast_mut()) }.cast::<u8>().cast_const();
    if tcp.is_null() {
        return;
    }
    // SAFETY: `tcp` is a `struct tcp_sock` the verifier knows.
    let Some(key) = (unsafe { socket_key(tcp) }) else { return };
    state_change(key, old as u8, new as u8, |cgroup_id, fins| {
        // SAFETY: as above.
        unsafe { final_counters(tcp, old as u8, cgroup_id, fins) }
    });
}

/// A field of the socket at `tcp`, `offset` bytes in.
///
/// # Safety
/// `tcp` must be a socket pointer the verifier knows the BTF type of (it
/// checks that a member of that size is there) and `offset` a constant to
/// it: the loader's globals are, being read-only.
#[inline(always)]
unsafe fn load<T: Copy>(tcp: *const u8, offset: u32) -> T {
    // SAFETY: as the caller guarantees; a load through a socket that went
    // away reads zero instead of faulting (the JIT guards BTF pointer loads).
    unsafe { core::ptr::read_volatile(tcp.add(offset as usize).cast::<T>()) }
}

/// The tuple of TCP socket `tcp`, read at the offsets the loader found;
/// `None` for an address family other than IPv4 and IPv6.
///
/// # Safety
/// As for [`load`].
unsafe fn socket_key(tcp: *const u8) -> Option<FlowKey> {
    let offsets = sock_offsets();
    let mut key = FlowKey { protocol: PROTO_TCP, ..FlowKey::default() };
    // SAFETY: as the caller guarantees.
    unsafe {
        key.local_port = load::<u16>(tcp, offsets.num);
        if key.local_port == 0 {
            // A closing socket gives its port back before the state
            // changes; the port it sent from stays.
            key.local_port = u16::from_be(load::<u16>(tcp, offsets.sport));
        }
        key.remote_port = u16::from_be(load::<u16>(tcp, offsets.dport));
        match load::<u16>(tcp, offsets.family) {
            tp::AF_INET => {
                key.family = FAMILY_IPV4;
                key.local_addr[..4].copy_from_slice(&load::<u32>(tcp, offsets.rcv_saddr).to_ne_bytes());
                key.remote_addr[..4].copy_from_slice(&load::<u32>(tcp, offsets.daddr).to_ne_bytes());
            }
            tp::AF_INET6 => {
                key.family = FAMILY_IPV6;
                for word in 0..4 {
                    let at = word * 4;
                    let local = load::<u32>(tcp, offsets.v6_rcv_saddr + at as u32);
                    let remote = load::<u32>(tcp, offsets.v6_daddr + at as u32);
                    key.local_addr[at..at + 4].copy_from_slice(&local.to_ne_bytes());
                    key.remote_addr[at..at + 4].copy_from_slice(&remote.to_ne_bytes());
                }
            }
            _ => return None,
        }
    }
    Some(key)
}

/// Emits the event of a socket changing from `old` to `new` (a wanted
/// change; see [`wanted`]), `key` being its tuple; `closing` reads a
/// closing socket's final counters, cgroup and FINs.
fn state_change(
    mut key: FlowKey,
    old: u8,
    new: u8,
    closing: impl FnOnce(&mut u64, &mut (u8, u8)) -> Option<SocketCounters>,
) {
    if new == tcp_state::SYN_SENT && key.local_port == 0 {
        // connect() enters SYN_SENT before it picks the source port
        // (unless the socket was bound): such an event names no flow,
        // and the SYN that follows starts the flow anyway.
        return;
    }
    unmap_ipv4(&mut key);
    if skip_loopback() && packet::is_loopback(key.family, &key.remote_addr) {
        return;
    }
    if new == tcp_state::SYN_SENT {
        // connect() runs in the caller's context: its cgroup is the socket's.
        key.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    }
    let mut fins = (0, 0);
    let counters = if new == tcp_state::CLOSE { closing(&mut key.cgroup_id, &mut fins) } else { None };
    emit(EVENT_TCP_STATE, old, new, unsafe { bpf_ktime_get_ns() }, &key, counters.as_ref(), fins);
}

/// Turns the key of an IPv4 connection held by an IPv6 socket (a dual-stack
/// listener's, or one that connected to `::ffff:a.b.c.d`) into the IPv4 key
/// its packets have.
#[inline(always)]
fn unmap_ipv4(key: &mut FlowKey) {
    const MAPPED: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    if key.family != FAMILY_IPV6 || key.remote_addr[..12] != MAPPED || key.local_addr[..12] != MAPPED {
        return;
    }
    key.family = FAMILY_IPV4;
    for addr in [&mut key.local_addr, &mut key.remote_addr] {
        let ipv4 = [addr[12], addr[13], addr[14], addr[15]];
        *addr = [0; 16];
        addr[..4].copy_from_slice(&ipv4);
    }
}

/// The final counters of closing socket `tcp`, loaded at the
/// [`TcpSockOffsets`] the loader found; `None` without them (TCP counted per
/// packet). Also sets `cgroup_id` to the socket's cgroup and `fins` to the
/// FINs it sent and received (as tcp_flags, out and in).
///
/// # Safety
/// As for [`load`].
unsafe fn final_counters(tcp: *const u8, old: u8, cgroup_id: &mut u64, fins: &mut (u8, u8)) -> Option<SocketCounters> {
    let offsets = tcp_sock_offsets();
    if offsets.enabled == 0 {
        return None;
    }
    // SAFETY: as the caller guarantees; the offsets are the loader's,
    // checked against the same BTF.
    unsafe {
        // Our FIN counts in bytes_acked once acknowledged: it was sent when
        // the socket left ESTABLISHED or CLOSE_WAIT by closing, and it was
        // acknowledged when nothing written is unacknowledged.
        let fin_sent =
            matches!(old, tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2 | tcp_state::CLOSING | tcp_state::LAST_ACK);
        let fin_acked = fin_sent && load::<u32>(tcp, offsets.snd_una) == load::<u32>(tcp, offsets.write_seq);
        let fin_received = load::<u64>(tcp, offsets.sk_flags) & SOCK_DONE != 0;
        *fins = (if fin_sent { tcp_flags::FIN } else { 0 }, if fin_received { tcp_flags::FIN } else { 0 });
        *cgroup_id = socket_cgroup_id(tcp, &offsets);
        Some(SocketCounters {
            packets_out: u64::from(load::<u32>(tcp, offsets.segs_out)),
            bytes_out: load::<u64>(tcp, offsets.bytes_acked).saturating_sub(u64::from(fin_acked)),
            packets_in: u64::from(load::<u32>(tcp, offsets.segs_in)),
            bytes_in: load::<u64>(tcp, offsets.bytes_received).saturating_sub(u64::from(fin_received)),
        })
    }
}

/// `sk->sk_cgrp_data.cgroup->kn->id` of socket `tcp` (what
/// `bpf_skb_cgroup_id` gives its packets), or zero.
///
/// # Safety
/// As for [`load`].
unsafe fn socket_cgroup_id(tcp: *const u8, offsets: &TcpSockOffsets) -> u64 {
    if offsets.sk_cgroup == 0 {
        return 0;
    }
    // SAFETY: as the caller guarantees; each pointer loaded is one the
    // verifier types from BTF, and is checked for null before it is followed.
    unsafe {
        let cgroup = load::<u64>(tcp, offsets.sk_cgroup) as *const u8;
        if cgroup.is_null() {
            return 0;
        }
        let kn = load::<u64>(cgroup, offsets.cgroup_kn) as *const u8;
        if kn.is_null() {
            return 0;
        }
        load(kn, offsets.kn_id)
    }
}

fn emit_new_flow(now: u64, key: &FlowKey, initiator: u8) {
    submit(Event { kind: EVENT_NEW_FLOW, timestamp_ns: now, key: *key, initiator, ..Event::default() });
}

fn emit(
    kind: u8,
    old_state: u8,
    new_state: u8,
    now: u64,
    key: &FlowKey,
    counters: Option<&SocketCounters>,
    (tcp_flags_out, tcp_flags_in): (u8, u8),
) {
    submit(Event {
        kind,
        old_state,
        new_state,
        has_counters: u8::from(counters.is_some()),
        tcp_flags_out,
        tcp_flags_in,
        initiator: 0,
        _pad: 0,
        timestamp_ns: now,
        key: *key,
        counters: counters.copied().unwrap_or_default(),
    });
}

/// Queues `event` on the ring buffer, or counts it lost.
#[inline(always)]
fn submit(event: Event) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(event);
            entry.submit(submit_flags());
        }
        None => bump(Counter::EventsLost),
    }
}

/// Wake userspace only once the ring holds a quarter of its size.
#[inline(always)]
fn submit_flags() -> u64 {
    // SAFETY: the loader may rewrite this global; read it through memory.
    let threshold = unsafe { core::ptr::read_volatile(&raw const WAKEUP_THRESHOLD) };
    let pending = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    u64::from(if pending >= threshold { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP })
}

fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *slot += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
