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
    /// TCP_FIN_WAIT1.
    pub const FIN_WAIT1: u8 = 4;
    /// TCP_FIN_WAIT2.
    pub const FIN_WAIT2: u8 = 5;
    /// TCP_TIME_WAIT.
    pub const TIME_WAIT: u8 = 6;
    /// TCP_CLOSE.
    pub const CLOSE: u8 = 7;
    /// TCP_CLOSE_WAIT.
    pub const CLOSE_WAIT: u8 = 8;
    /// TCP_LAST_ACK.
    pub const LAST_ACK: u8 = 9;
    /// TCP_LISTEN.
    pub const LISTEN: u8 = 10;
    /// TCP_CLOSING.
    pub const CLOSING: u8 = 11;
    /// TCP_NEW_SYN_RECV: a request socket (a passive open's handshake
    /// before the connection's socket exists); never a full socket.
    pub const NEW_SYN_RECV: u8 = 12;

    /// A socket in `state` has completed its handshake (ESTABLISHED or a
    /// state that follows it when closing).
    pub const fn is_synchronized(state: u8) -> bool {
        matches!(state, ESTABLISHED | FIN_WAIT1 | FIN_WAIT2 | TIME_WAIT | CLOSE_WAIT | LAST_ACK | CLOSING)
    }
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

/// [`FlowStats::counted`]: the kernel added up the flow's packets one by one.
pub const COUNTED_PACKETS: u8 = 0;
/// [`FlowStats::counted`]: the packet and byte counters are a TCP socket's
/// own (`struct tcp_sock`), written whole at the packets the kernel samples
/// (see [`TcpSockOffsets`]). Two handshake segments are not in them: the
/// SYN that an active opener's `bytes_acked` counts as one byte, and the
/// SYN-ACK a passive opener sends before its socket exists; userspace
/// corrects both, knowing which end initiated.
pub const COUNTED_SOCKET: u8 = 1;

/// Counters of one flow, kept by the kernel.
///
/// Bytes are transport payload bytes: what follows the TCP, UDP, SCTP or
/// ICMP header (everything after the IP headers for other protocols).
/// Counted per packet, retransmissions count again and a GSO super-packet
/// counts once; counted from a TCP socket ([`COUNTED_SOCKET`]), packets are
/// TCP segments and bytes are payload bytes acknowledged by the peer (sent)
/// or received in order (received), each byte once.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowStats {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of the first packet.
    pub first_seen_ns: u64,
    /// `bpf_ktime_get_ns` of the latest packet.
    pub last_seen_ns: u64,
    /// Packets sent by the local end.
    pub packets_out: u64,
    /// Payload bytes sent by the local end.
    pub bytes_out: u64,
    /// Packets received by the local end.
    pub packets_in: u64,
    /// Payload bytes received by the local end.
    pub bytes_in: u64,
    /// Union of TCP flags the local end sent.
    pub tcp_flags_out: u8,
    /// Union of TCP flags the local end received.
    pub tcp_flags_in: u8,
    /// [`INITIATOR_LOCAL`] or [`INITIATOR_REMOTE`], decided when the entry
    /// is created: a TCP SYN without ACK was sent by the initiator and a
    /// SYN-ACK by the responder; another TCP packet goes by its socket's
    /// state (SYN_SENT: local), else the end with the higher (ephemeral)
    /// port; a UDP packet received by a connected socket is a reply (local);
    /// anything else by who sent this first packet the kernel saw.
    pub initiator: u8,
    /// How the packet and byte counters were kept: [`COUNTED_PACKETS`] or
    /// [`COUNTED_SOCKET`].
    pub counted: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<FlowStats>() == 56);

/// A TCP socket's counters as a flow counts them, read by the kernel when
/// the socket closes. Meaning as in [`FlowStats`] with [`COUNTED_SOCKET`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SocketCounters {
    /// Segments the socket sent (`segs_out`).
    pub packets_out: u64,
    /// Payload bytes the peer acknowledged (`bytes_acked` less a FIN).
    pub bytes_out: u64,
    /// Segments the socket received (`segs_in`).
    pub packets_in: u64,
    /// Payload bytes received in order (`bytes_received` less a FIN).
    pub bytes_in: u64,
}
const _: () = assert!(core::mem::size_of::<SocketCounters>() == 32);

/// Byte offsets of the `struct tcp_sock` members the kernel programs read,
/// found by the loader in the running kernel's BTF: the socket's from its
/// start (a `tcp_sock` begins with its `sock`), [`Self::cgroup_kn`] and
/// [`Self::kn_id`] from their own structs'. `enabled` zero means they could
/// not be found, or the BTF tracepoint could not be attached, and TCP is
/// counted per packet.
///
/// With it enabled, the cgroup_skb programs count TCP from the socket. These
/// TCP packets take the full path, writing the socket's counters into the
/// flow map: on a socket whose handshake is under way (SYN_SENT, SYN_RECV),
/// one with SYN, FIN or RST; on a socket that completed it (ESTABLISHED and
/// the closing states), one with SYN or RST (and FIN without
/// [`TcpSockOffsets::sk_cgroup`]); a DNS packet; every packet at a sampling
/// point (see [`TCP_SAMPLE_MASK`]); at a listener, one with SYN, FIN or RST
/// (a SYN starts the passive opener's flow); and a packet of no full socket
/// but a request socket's (or of a closed socket, or of none). Any other TCP
/// packet returns at once: the data, the ACKs, the FINs of a connected
/// socket, the listener's share of the handshake's last ACK and the SYN-ACK
/// a request socket sends; the connection's socket counts them all. The
/// BTF tracepoint reads the final counters at TCP_CLOSE into
/// [`Event::counters`], with the socket's cgroup and the FINs it sent and
/// received.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TcpSockOffsets {
    /// Non-zero: count TCP from sockets.
    pub enabled: u32,
    /// `tcp_sock.segs_out` (u32).
    pub segs_out: u32,
    /// `tcp_sock.segs_in` (u32).
    pub segs_in: u32,
    /// `tcp_sock.bytes_acked` (u64).
    pub bytes_acked: u32,
    /// `tcp_sock.bytes_received` (u64).
    pub bytes_received: u32,
    /// `tcp_sock.snd_una` (u32).
    pub snd_una: u32,
    /// `tcp_sock.write_seq` (u32).
    pub write_seq: u32,
    /// `sock.__sk_common.skc_flags` (unsigned long; bit 1 is `SOCK_DONE`,
    /// set when the peer's FIN was taken in order).
    pub sk_flags: u32,
    /// `sock.sk_cgrp_data.cgroup` (`struct cgroup *`); zero when the
    /// kernel's BTF does not have it: closes then carry no cgroup, and FINs
    /// of connected sockets take the full path (see [`Event::key`]).
    pub sk_cgroup: u32,
    /// `cgroup.kn` (`struct kernfs_node *`).
    pub cgroup_kn: u32,
    /// `kernfs_node.id` (u64): the cgroup id.
    pub kn_id: u32,
}
const _: () = assert!(core::mem::size_of::<TcpSockOffsets>() == 44);

/// Byte offsets in `struct sock` of what names a TCP connection, found by
/// the loader in the running kernel's BTF. With them state changes come from
/// the BTF tracepoint `inet_sock_set_state`, which hands the program the
/// socket as a pointer the verifier knows the type of, and the program loads
/// the tuple from it (plain loads, checked against BTF); without them (the
/// global stays zero), from the `sock/inet_sock_set_state` tracepoint, whose
/// record the kernel fills for every state change (about as much time again
/// as the program itself).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockOffsets {
    /// `__sk_common.skc_daddr` (IPv4 peer address, network order).
    pub daddr: u32,
    /// `__sk_common.skc_rcv_saddr` (IPv4 local address, network order).
    pub rcv_saddr: u32,
    /// `__sk_common.skc_dport` (peer port, network order).
    pub dport: u32,
    /// `__sk_common.skc_num` (local port, host order; zero once a closing
    /// socket has given its port back).
    pub num: u32,
    /// `__sk_common.skc_family` (`AF_INET`, `AF_INET6`).
    pub family: u32,
    /// `__sk_common.skc_v6_daddr` (16 bytes).
    pub v6_daddr: u32,
    /// `__sk_common.skc_v6_rcv_saddr` (16 bytes).
    pub v6_rcv_saddr: u32,
    /// `inet_sock.inet_sport` (local port, network order): read when `num`
    /// is zero, as it is at a close.
    pub sport: u32,
}
const _: () = assert!(core::mem::size_of::<SockOffsets>() == 32);

/// A TCP packet with no SYN, FIN or RST counts its socket into the flow map
/// when `(segs_in + segs_out) & TCP_SAMPLE_MASK == TCP_SAMPLE_AT`: a window
/// of 64 segments in every 1024, which a GSO burst of up to 64 segments
/// cannot jump, placed so that connections shorter than 512 segments never
/// sample (their SYN and FIN packets say it all).
pub const TCP_SAMPLE_MASK: u32 = 0x3c0;
/// See [`TCP_SAMPLE_MASK`].
pub const TCP_SAMPLE_AT: u32 = 0x200;

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
/// for a SYN_SENT (`connect()` runs in the caller's context), the socket's
/// own cgroup for a close with counters (read from the socket; zero when it
/// could not be), else zero. A close that names its cgroup can report a
/// connection no packet put in the flow map (one older than the observer
/// whose FIN took the fast path).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Event {
    /// [`EVENT_NEW_FLOW`] or [`EVENT_TCP_STATE`].
    pub kind: u8,
    /// Previous TCP state ([`tcp_state`]), for state events.
    pub old_state: u8,
    /// New TCP state ([`tcp_state`]), for state events.
    pub new_state: u8,
    /// Non-zero: `counters` holds the socket's final counters (a close,
    /// with [`TcpSockOffsets::enabled`]).
    pub has_counters: u8,
    /// With `has_counters`: [`tcp_flags::FIN`] when the socket had sent its
    /// FIN (the FINs of connected sockets take the fast path), else zero.
    pub tcp_flags_out: u8,
    /// With `has_counters`: [`tcp_flags::FIN`] when the socket had received
    /// the peer's FIN in order, else zero.
    pub tcp_flags_in: u8,
    /// For [`EVENT_NEW_FLOW`]: the new entry's [`FlowStats::initiator`]. The
    /// first such event of a flow carries what the kernel saw first; an
    /// entry created again after the map evicted the flow's can only go by
    /// its packet (see [`FlowStats::initiator`]), so userspace keeps the first.
    pub initiator: u8,
    /// Explicit padding, always zero.
    pub _pad: u8,
    /// `bpf_ktime_get_ns` when the event happened.
    pub timestamp_ns: u64,
    /// The flow the event is about.
    pub key: FlowKey,
    /// The socket's counters when `has_counters` is set, else zero.
    pub counters: SocketCounters,
}
const _: () = assert!(core::mem::size_of::<Event>() == 96);

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
    /// Tracepoint program on `sock/inet_sock_set_state` (without
    /// [`super::SockOffsets`]).
    pub const PROG_TCP_STATE: &str = "tcp_state";
    /// BTF tracepoint program on `inet_sock_set_state` (with
    /// [`super::SockOffsets`]).
    pub const PROG_TCP_STATE_BTF: &str = "tcp_state_btf";
    /// Name the BTF tracepoint is attached by.
    pub const BTF_TRACEPOINT: &str = "inet_sock_set_state";
    /// Global: non-zero to skip loopback traffic.
    pub const SKIP_LOOPBACK: &str = "SKIP_LOOPBACK";
    /// Global: pending ring-buffer bytes past which a submit wakes userspace.
    pub const WAKEUP_THRESHOLD: &str = "WAKEUP_THRESHOLD";
    /// Global [`super::TcpSockOffsets`]: count TCP from sockets.
    pub const TCP_SOCK: &str = "TCP_SOCK";
    /// Global [`super::SockOffsets`]: where a socket's tuple is.
    pub const SOCK: &str = "SOCK";
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
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TcpSockOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockOffsets {}
}
