//! Header parsing for cgroup_skb programs: the packet starts at the IP header.
//!
//! In: the `__sk_buff` and the hook's direction. Out: a [`FlowKey`] oriented
//! local/remote (cgroup id left for the caller), the payload bytes and TCP
//! flags to count, or `Ok(None)` for a packet that is not IP; and, for the
//! socket-counting fast path, just the TCP flags ([`tcp_flags`]).

use aya_ebpf::programs::SkBuffContext;
use observer_common::{FAMILY_IPV4, FAMILY_IPV6, FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

/// Which hook saw the packet, relative to the local socket.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received by the local socket.
    Ingress,
    /// Sent by the local socket.
    Egress,
}

/// What one packet contributes to its flow.
pub struct Parsed {
    pub key: FlowKey,
    /// Payload bytes counted for the packet: what follows the transport
    /// header (the IP headers for protocols without ports or a fragment
    /// without the transport header).
    pub len: u32,
    pub tcp_flags: u8,
    /// Offset of the transport header from the start of the packet.
    pub l4_offset: usize,
    /// The remote end is a loopback address.
    pub loopback: bool,
}

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;
/// Extension headers walked before giving up on finding the transport header.
const IPV6_MAX_EXT: usize = 4;
/// Header sizes not counted as payload.
const UDP_HEADER: u32 = 8;
const SCTP_HEADER: u32 = 12;
const ICMP_HEADER: u32 = 8;

/// Reads the packet. The IP header (at offset 0) is read straight from the
/// linear data when it is there: a bounds check the verifier understands, no
/// helper call. Headers at variable offsets go through `bpf_skb_load_bytes`,
/// because LLVM rewrites variable-offset bounds checks into forms the
/// verifier cannot follow.
struct Packet<'a> {
    ctx: &'a SkBuffContext,
    data: usize,
    data_end: usize,
}

impl<'a> Packet<'a> {
    fn new(ctx: &'a SkBuffContext) -> Self {
        // SAFETY: `ctx.skb.skb` is the program's own `__sk_buff`.
        let (data, data_end) = unsafe { ((*ctx.skb.skb).data as usize, (*ctx.skb.skb).data_end as usize) };
        Self { ctx, data, data_end }
    }

    /// A header at the start of the packet.
    #[inline(always)]
    fn head<T: Copy>(&self) -> Result<T, ()> {
        if self.data + core::mem::size_of::<T>() <= self.data_end {
            // SAFETY: bounds checked against data_end just above.
            return Ok(unsafe { core::ptr::read_unaligned(self.data as *const T) });
        }
        self.load(0)
    }

    /// A header at a constant offset, read directly when it is in the
    /// linear data.
    #[inline(always)]
    fn at<const OFFSET: usize, T: Copy>(&self) -> Result<T, ()> {
        if self.data + OFFSET + core::mem::size_of::<T>() <= self.data_end {
            // SAFETY: bounds checked against data_end just above.
            return Ok(unsafe { core::ptr::read_unaligned((self.data + OFFSET) as *const T) });
        }
        self.load(OFFSET)
    }

    /// The transport header: directly at the two usual offsets (IPv4 with
    /// no options, IPv6 with no extension headers), else through the helper.
    #[inline(always)]
    fn transport<T: Copy>(&self, offset: usize) -> Result<T, ()> {
        match offset {
            20 => self.at::<20, T>(),
            40 => self.at::<40, T>(),
            _ => self.load(offset),
        }
    }

    /// A header at a computed offset.
    #[inline(always)]
    fn load<T>(&self, offset: usize) -> Result<T, ()> {
        self.ctx.load::<T>(offset).map_err(|_| ())
    }
}

pub fn parse(ctx: &SkBuffContext, direction: Direction) -> Result<Option<Parsed>, ()> {
    let packet = Packet::new(ctx);
    // The 20 bytes every IP packet has; a lone first-byte read would compile
    // to a bounds check the verifier does not credit.
    let start: [u8; 20] = packet.head()?;
    let (mut key, l4_offset, has_ports) = match start[0] >> 4 {
        4 => parse_ipv4(&start)?,
        6 => parse_ipv6(&packet)?,
        _ => return Ok(None),
    };
    let mut tcp_flags = 0;
    // Bytes before the payload: IP headers, then the transport header.
    let mut headers = l4_offset as u32;
    if has_ports {
        match key.protocol {
            PROTO_TCP => {
                // Ports, header length and flags in one read: the data
                // offset is the top nibble of byte 12, flags are byte 13.
                let header: [u8; 14] = packet.transport(l4_offset)?;
                key.local_port = u16::from_be_bytes([header[0], header[1]]);
                key.remote_port = u16::from_be_bytes([header[2], header[3]]);
                tcp_flags = header[13];
                headers += u32::from(header[12] >> 4) * 4;
            }
            PROTO_UDP | PROTO_SCTP => {
                let ports: [u8; 4] = packet.transport(l4_offset)?;
                key.local_port = u16::from_be_bytes([ports[0], ports[1]]);
                key.remote_port = u16::from_be_bytes([ports[2], ports[3]]);
                headers += if key.protocol == PROTO_UDP { UDP_HEADER } else { SCTP_HEADER };
            }
            PROTO_ICMP | PROTO_ICMPV6 => {
                let head: [u8; 2] = packet.transport(l4_offset)?;
                key.local_port = u16::from(fold_echo(key.protocol, head[0]));
                key.remote_port = u16::from(head[1]);
                headers += ICMP_HEADER;
            }
            _ => {}
        }
    }
    if direction == Direction::Ingress {
        // The parse filled the key as source/destination; the local end of a
        // received packet is its destination.
        core::mem::swap(&mut key.local_addr, &mut key.remote_addr);
        if !matches!(key.protocol, PROTO_ICMP | PROTO_ICMPV6) {
            core::mem::swap(&mut key.local_port, &mut key.remote_port);
        }
    }
    let loopback = is_loopback(key.family, &key.remote_addr);
    Ok(Some(Parsed { key, len: ctx.len().saturating_sub(headers), tcp_flags, l4_offset, loopback }))
}

/// The TCP flags of a packet, read at the constant offsets of an IPv4
/// header without options or an IPv6 header without extension headers;
/// `None` for anything else (not TCP, a fragment, other headers, or not in
/// the linear data), which then takes the full path.
#[inline(always)]
pub fn tcp_flags(ctx: &SkBuffContext) -> Option<u8> {
    let packet = Packet::new(ctx);
    let start: [u8; 20] = packet.head().ok()?;
    match start[0] {
        // Version 4, IHL 5; not a fragment (offset zero, MF clear).
        0x45 if start[9] == PROTO_TCP && start[6] & 0x3f == 0 && start[7] == 0 => {
            let header: [u8; 14] = packet.at::<20, [u8; 14]>().ok()?;
            Some(header[13])
        }
        version if version >> 4 == 6 && start[6] == PROTO_TCP => {
            let header: [u8; 14] = packet.at::<40, [u8; 14]>().ok()?;
            Some(header[13])
        }
        _ => None,
    }
}

fn parse_ipv4(header: &[u8; 20]) -> Result<(FlowKey, usize, bool), ()> {
    let ihl = usize::from(header[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(());
    }
    let mut key = FlowKey { family: FAMILY_IPV4, protocol: header[9], ..FlowKey::default() };
    key.local_addr[..4].copy_from_slice(&header[12..16]);
    key.remote_addr[..4].copy_from_slice(&header[16..20]);
    // Only the first fragment carries the transport header.
    let fragment_offset = u16::from_be_bytes([header[6], header[7]]) & 0x1fff;
    Ok((key, ihl, fragment_offset == 0))
}

fn parse_ipv6(packet: &Packet<'_>) -> Result<(FlowKey, usize, bool), ()> {
    let header: [u8; 40] = packet.head()?;
    let mut key = FlowKey { family: FAMILY_IPV6, ..FlowKey::default() };
    key.local_addr.copy_from_slice(&header[8..24]);
    key.remote_addr.copy_from_slice(&header[24..40]);
    let mut next = header[6];
    let mut offset = 40usize;
    let mut has_ports = true;
    for _ in 0..IPV6_MAX_EXT {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                let ext: [u8; 2] = packet.load(offset)?;
                next = ext[0];
                offset += (usize::from(ext[1]) + 1) * 8;
            }
            IPV6_AUTH => {
                let ext: [u8; 2] = packet.load(offset)?;
                next = ext[0];
                offset += (usize::from(ext[1]) + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let ext: [u8; 4] = packet.load(offset)?;
                next = ext[0];
                has_ports = u16::from_be_bytes([ext[2], ext[3]]) & 0xfff8 == 0;
                offset += 8;
            }
            _ => break,
        }
    }
    key.protocol = next;
    Ok((key, offset, has_ports))
}

/// Echo replies count on the echo request's flow.
fn fold_echo(protocol: u8, icmp_type: u8) -> u8 {
    match (protocol, icmp_type) {
        (PROTO_ICMP, 0) => 8,
        (PROTO_ICMPV6, 129) => 128,
        (_, other) => other,
    }
}

pub fn is_loopback(family: u8, addr: &[u8; 16]) -> bool {
    if family == FAMILY_IPV4 { addr[0] == 127 } else { addr[..15].iter().all(|byte| *byte == 0) && addr[15] == 1 }
}
