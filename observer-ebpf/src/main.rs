//! Kernel programs of the flow observer.
//!
//! In: every packet a socket in the attached cgroup tree sends or receives
//! (cgroup_skb egress and ingress) and every TCP state change
//! (`sock/inet_sock_set_state`). Out: per-flow counters in the `FLOWS` LRU
//! hash, an `Event` on the `EVENTS` ring buffer for each new flow and each TCP
//! attempt, establishment and close, the payload of every DNS packet a local
//! socket exchanges with a remote port 53 (see `dns`), and per-CPU counters
//! of what went wrong.
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
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns, bpf_skb_cgroup_id},
    macros::{cgroup_skb, map, tracepoint},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::{SkBuffContext, TracePointContext},
};
use aya_log_ebpf::{debug, warn};
use core::intrinsics::{AtomicOrdering, atomic_xadd};
use observer_common::{
    COUNTER_SLOTS, Counter, DNS_PORT, EVENT_NEW_FLOW, EVENT_TCP_STATE, Event, FAMILY_IPV4, FAMILY_IPV6, FlowKey,
    FlowStats, INITIATOR_LOCAL, INITIATOR_REMOTE, PROTO_TCP, tcp_flags, tcp_state,
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

fn track_packet(ctx: &SkBuffContext, direction: Direction) {
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
    // SAFETY: `ctx.skb` is the program's own `__sk_buff`.
    key.cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let now = unsafe { bpf_ktime_get_ns() };
    // The one test DNS costs the common path: queries a pod sends and the
    // answers it gets both have the server's port 53 as the remote port.
    if key.remote_port == DNS_PORT {
        dns::capture(ctx, &dns::header(&key, direction, now), parsed.l4_offset);
    }
    if let Some(stats) = FLOWS.get_ptr_mut(key) {
        // SAFETY: the map value stays valid for the program's run.
        unsafe { update(stats, &parsed, direction, now) };
        return;
    }
    if parsed.key.protocol == PROTO_TCP && parsed.tcp_flags & (tcp_flags::RST | tcp_flags::SYN) == tcp_flags::RST {
        // A reset that belongs to no flow (the kernel answering a closed
        // port from its control socket) starts nothing; the peer's flow
        // counts it on arrival.
        return;
    }
    let stats = new_stats(&parsed, direction, now);
    if FLOWS.insert(key, stats, u64::from(BPF_NOEXIST)).is_ok() {
        bump(Counter::FlowsCreated);
        emit(EVENT_NEW_FLOW, 0, 0, now, &key);
        return;
    }
    // Another CPU inserted the same flow first: count on its entry.
    match FLOWS.get_ptr_mut(key) {
        // SAFETY: as above.
        Some(stats) => unsafe { update(stats, &parsed, direction, now) },
        None => {
            bump(Counter::FlowInsertFailed);
            warn!(ctx, "flow map insert failed");
        }
    }
}

fn new_stats(parsed: &Parsed, direction: Direction, now: u64) -> FlowStats {
    let mut stats = FlowStats { first_seen_ns: now, last_seen_ns: now, ..FlowStats::default() };
    match direction {
        Direction::Egress => {
            stats.packets_out = 1;
            stats.bytes_out = u64::from(parsed.len);
            stats.tcp_flags_out = parsed.tcp_flags;
            stats.initiator = INITIATOR_LOCAL;
        }
        Direction::Ingress => {
            stats.packets_in = 1;
            stats.bytes_in = u64::from(parsed.len);
            stats.tcp_flags_in = parsed.tcp_flags;
            stats.initiator = INITIATOR_REMOTE;
        }
    }
    stats
}

/// # Safety
/// `stats` must point at a live value of the flow map.
unsafe fn update(stats: *mut FlowStats, parsed: &Parsed, direction: Direction, now: u64) {
    // SAFETY: the caller guarantees `stats` is live; counters are only ever
    // touched atomically so concurrent CPUs never lose an increment.
    unsafe {
        let (packets, bytes, flags) = match direction {
            Direction::Egress => {
                (&raw mut (*stats).packets_out, &raw mut (*stats).bytes_out, &raw mut (*stats).tcp_flags_out)
            }
            Direction::Ingress => {
                (&raw mut (*stats).packets_in, &raw mut (*stats).bytes_in, &raw mut (*stats).tcp_flags_in)
            }
        };
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(packets, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(bytes, u64::from(parsed.len));
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

fn tcp_state_change(ctx: &TracePointContext) {
    // SAFETY: offsets and sizes match the tracepoint format (checked by the loader).
    let (protocol, old, new) =
        unsafe { (field::<u16>(ctx, tp::PROTOCOL), field::<i32>(ctx, tp::OLDSTATE), field::<i32>(ctx, tp::NEWSTATE)) };
    if protocol != u16::from(PROTO_TCP) || old == tp::TCP_LISTEN || new == tp::TCP_LISTEN {
        return;
    }
    let new = new as u8;
    if new != tcp_state::SYN_SENT && new != tcp_state::ESTABLISHED && new != tcp_state::CLOSE {
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
    if skip_loopback() && packet::is_loopback(key.family, &key.remote_addr) {
        return;
    }
    if new == tcp_state::SYN_SENT {
        // connect() runs in the caller's context: its cgroup is the socket's.
        key.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    }
    emit(EVENT_TCP_STATE, old as u8, new, unsafe { bpf_ktime_get_ns() }, &key);
}

fn emit(kind: u8, old_state: u8, new_state: u8, now: u64, key: &FlowKey) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(Event { kind, old_state, new_state, _pad: [0; 5], timestamp_ns: now, key: *key });
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
