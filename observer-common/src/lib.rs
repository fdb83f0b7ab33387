//! Types shared by the kernel programs and the daemon: the flow map's key and
//! value, the ring-buffer records (flow events and captured DNS messages) and
//! the per-CPU counter slots.
//!
//! Every type is `#[repr(C)]` with explicit padding and a size assertion, so the
//! kernel and userspace agree byte for byte.
#![no_std]

/// `AF_INET`-independent family tag stored in [`FlowKey::family`].
pub const FAMILY_IPV4: u8 = 4;
/// IPv6 family tag stored in [`FlowKey::family`].
pub const FAMILY_IPV6: u8 = 6;

/// IANA protocol numbers the kernel programs classify.
pub const PROTO_ICMP: u8 = 1;
/// TCP.
pub const PROTO_TCP: u8 = 6;
/// UDP.
pub const PROTO_UDP: u8 = 17;
/// ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;
/// SCTP.
pub const PROTO_SCTP: u8 = 132;

/// TCP header flag bits as they appear in byte 13 of the header.
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// Kernel TCP states as reported by `sock/inet_sock_set_state`.
pub mod tcp_state {
    /// TCP_ESTABLISHED.
    pub const ESTABLISHED: u8 = 1;
    /// TCP_SYN_SENT.
    pub const SYN_SENT: u8 = 2;
    /// TCP_SYN_RECV.
    pub const SYN_RECV: u8 = 3;
    /// TCP_CLOSE.
    pub const CLOSE: u8 = 7;
}

/// Which end sent the first packet of a flow, stored in [`FlowStats::initiator`].
pub const INITIATOR_LOCAL: u8 = 1;
/// The remote end sent the first packet (an inbound flow).
pub const INITIATOR_REMOTE: u8 = 2;

/// Identity of one flow as seen from one local socket's cgroup.
///
/// Addresses are in network byte order; IPv4 uses the first four bytes and
/// leaves the rest zero. Ports are in host byte order. For ICMP and ICMPv6,
/// `local_port` holds the message type (echo replies folded onto the request
/// type so a ping is one flow) and `remote_port` the code.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// cgroup v2 id (inode number) of the local socket's cgroup.
    pub cgroup_id: u64,
    /// Address of the local end.
    pub local_addr: [u8; 16],
    /// Address of the remote end.
    pub remote_addr: [u8; 16],
    /// Port of the local end (ICMP: type).
    pub local_port: u16,
    /// Port of the remote end (ICMP: code).
    pub remote_port: u16,
    /// IANA protocol number.
    pub protocol: u8,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 48);

/// Counters of one flow, updated by the kernel for every packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowStats {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of the first packet.
    pub first_seen_ns: u64,
    /// `bpf_ktime_get_ns` of the latest packet.
    pub last_seen_ns: u64,
    /// Packets sent by the local end.
    pub packets_out: u64,
    /// Bytes (IP total length) sent by the local end.
    pub bytes_out: u64,
    /// Packets received by the local end.
    pub packets_in: u64,
    /// Bytes (IP total length) received by the local end.
    pub bytes_in: u64,
    /// Union of TCP flags the local end sent.
    pub tcp_flags_out: u8,
    /// Union of TCP flags the local end received.
    pub tcp_flags_in: u8,
    /// [`INITIATOR_LOCAL`] or [`INITIATOR_REMOTE`].
    pub initiator: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<FlowStats>() == 56);

/// [`Event::kind`]: the first packet of a flow the flow map had not seen.
pub const EVENT_NEW_FLOW: u8 = 1;
/// [`Event::kind`]: a TCP socket changed state.
pub const EVENT_TCP_STATE: u8 = 2;
/// [`DnsEvent::kind`]: a DNS message (UDP or TCP, port 53) a local socket
/// sent or received. Every ring-buffer record starts with its kind byte.
pub const EVENT_DNS: u8 = 3;

/// The DNS port: packets whose remote port is this are captured.
pub const DNS_PORT: u16 = 53;
/// Most payload bytes captured of one DNS packet (the classic UDP DNS limit).
pub const DNS_MAX_PAYLOAD: usize = 512;
/// Payload sizes the kernel reserves records for: a message goes into the
/// smallest class that holds it (the ring-buffer reservation size must be a
/// constant), and is cut at the largest.
pub const DNS_PAYLOAD_CLASSES: [usize; 3] = [128, 256, DNS_MAX_PAYLOAD];
// The kernel bounds copy lengths with a mask of `class - 1`.
const _: () = assert!(
    DNS_PAYLOAD_CLASSES[0].is_power_of_two()
        && DNS_PAYLOAD_CLASSES[1].is_power_of_two()
        && DNS_PAYLOAD_CLASSES[2].is_power_of_two()
);
/// [`DnsEvent::direction`]: the local socket sent it (a query).
pub const DIRECTION_EGRESS: u8 = 1;
/// [`DnsEvent::direction`]: the local socket received it (an answer).
pub const DIRECTION_INGRESS: u8 = 2;

/// A record on the ring buffer.
///
/// For [`EVENT_TCP_STATE`] the key's addresses and ports are the socket's own
/// (local) and peer (remote) ends; `cgroup_id` is the current task's cgroup
/// when the change happened in process context (`connect()`), else zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Event {
    /// [`EVENT_NEW_FLOW`] or [`EVENT_TCP_STATE`].
    pub kind: u8,
    /// Previous TCP state ([`tcp_state`]), for state events.
    pub old_state: u8,
    /// New TCP state ([`tcp_state`]), for state events.
    pub new_state: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 5],
    /// `bpf_ktime_get_ns` when the event happened.
    pub timestamp_ns: u64,
    /// The flow the event is about.
    pub key: FlowKey,
}
const _: () = assert!(core::mem::size_of::<Event>() == 64);

/// Header of a captured DNS message on the ring buffer; the payload
/// follows it in the same record: `captured_len` bytes of the transport
/// payload (UDP: the DNS message; TCP: the segment, starting with the
/// 2-byte length prefix), in a record sized by [`DNS_PAYLOAD_CLASSES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DnsEvent {
    /// Always [`EVENT_DNS`].
    pub kind: u8,
    /// [`DIRECTION_EGRESS`] or [`DIRECTION_INGRESS`].
    pub direction: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 2],
    /// Payload bytes copied after this header.
    pub captured_len: u16,
    /// Explicit padding, always zero.
    pub _pad2: [u8; 2],
    /// Transport payload length of the packet (before truncation).
    pub original_len: u32,
    /// Explicit padding, always zero.
    pub _pad3: [u8; 4],
    /// `bpf_ktime_get_ns` when the packet passed.
    pub timestamp_ns: u64,
    /// The packet's flow, oriented local/remote, with the cgroup id.
    pub key: FlowKey,
}
const _: () = assert!(core::mem::size_of::<DnsEvent>() == 72);

/// A [`DnsEvent`] with room for `N` payload bytes, as reserved on the ring.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DnsRecord<const N: usize> {
    /// The header.
    pub header: DnsEvent,
    /// The payload; only the first `header.captured_len` bytes are written.
    pub payload: [u8; N],
}
const _: () = assert!(core::mem::size_of::<DnsRecord<DNS_MAX_PAYLOAD>>() == 72 + DNS_MAX_PAYLOAD);

/// Slots of the per-CPU `COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Ring-buffer reservations that failed: events lost.
    EventsLost = 0,
    /// Flow-map inserts that failed.
    FlowInsertFailed = 1,
    /// Packets whose headers could not be read (truncated or malformed).
    PacketsUnparsed = 2,
    /// Flows the kernel created in the flow map.
    FlowsCreated = 3,
    /// DNS packets captured onto the ring buffer.
    DnsCaptured = 4,
    /// DNS packets longer than [`DNS_MAX_PAYLOAD`], captured cut short.
    DnsTruncated = 5,
    /// DNS packets lost: the ring buffer was full or the payload unreadable.
    DnsLost = 6,
}

/// Number of slots in the `COUNTERS` array.
pub const COUNTER_SLOTS: u32 = 7;

/// Names of the maps and programs, shared so the loader cannot drift.
pub mod names {
    /// LRU hash of [`super::FlowKey`] to [`super::FlowStats`].
    pub const FLOWS: &str = "FLOWS";
    /// Ring buffer of [`super::Event`] and [`super::DnsEvent`] records.
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU array of `u64` indexed by [`super::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// cgroup_skb ingress program.
    pub const PROG_INGRESS: &str = "flow_ingress";
    /// cgroup_skb egress program.
    pub const PROG_EGRESS: &str = "flow_egress";
    /// Tracepoint program on `sock/inet_sock_set_state`.
    pub const PROG_TCP_STATE: &str = "tcp_state";
    /// Global: non-zero to skip loopback traffic.
    pub const SKIP_LOOPBACK: &str = "SKIP_LOOPBACK";
    /// Global: pending ring-buffer bytes past which a submit wakes userspace.
    pub const WAKEUP_THRESHOLD: &str = "WAKEUP_THRESHOLD";
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data `#[repr(C)]` types with explicit padding.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DnsEvent {}
}
