//! DNS capture: copies the payload of DNS packets onto the ring buffer.
//!
//! In: a packet already parsed whose remote port is 53 (the caller checks,
//! so the common path pays one comparison). Out: a [`DnsRecord`] on the
//! `EVENTS` ring buffer (header + up to 512 payload bytes, copied by
//! `bpf_skb_load_bytes` straight into the reservation, never through the
//! stack), and the `DnsCaptured`, `DnsTruncated` and `DnsLost` counters.
//!
//! UDP: the payload is one DNS message. TCP: the segment payload, which
//! starts with the 2-byte length prefix when the segment starts a message;
//! userspace parses the first message of a segment only, and messages split
//! over segments or several messages per segment beyond the first are not
//! reassembled. Segments without payload (handshake, bare ACKs) are skipped.

use aya_ebpf::{helpers::bpf_skb_load_bytes, programs::SkBuffContext};
use observer_common::{
    Counter, DIRECTION_EGRESS, DIRECTION_INGRESS, DNS_MAX_PAYLOAD, DNS_PAYLOAD_CLASSES, DnsEvent, DnsRecord, EVENT_DNS,
    FlowKey, PROTO_TCP, PROTO_UDP,
};

use crate::{EVENTS, bump, packet::Direction, submit_flags};

const UDP_HEADER: usize = 8;

/// The header of a DNS record for a packet of `key`. Built in the caller's
/// cold branch and passed by reference, so the flow key itself never has its
/// address taken (which would make LLVM copy it on the hot path).
#[inline(always)]
pub fn header(key: &FlowKey, direction: Direction, now: u64) -> DnsEvent {
    DnsEvent {
        kind: EVENT_DNS,
        direction: match direction {
            Direction::Egress => DIRECTION_EGRESS,
            Direction::Ingress => DIRECTION_INGRESS,
        },
        _pad: [0; 2],
        captured_len: 0,
        _pad2: [0; 2],
        original_len: 0,
        _pad3: [0; 4],
        timestamp_ns: now,
        key: *key,
    }
}

/// Captures one DNS packet whose transport header starts at `l4_offset`;
/// never fails the packet.
#[inline(never)]
pub fn capture(ctx: &SkBuffContext, header: &DnsEvent, l4_offset: usize) {
    let payload_offset = match header.key.protocol {
        PROTO_UDP => l4_offset + UDP_HEADER,
        PROTO_TCP => match ctx.load::<u8>(l4_offset + 12) {
            Ok(data_offset) => l4_offset + usize::from(data_offset >> 4) * 4,
            Err(_) => {
                bump(Counter::DnsLost);
                return;
            }
        },
        _ => return,
    };
    let packet_len = ctx.len() as usize;
    if packet_len <= payload_offset {
        return;
    }
    let original_len = packet_len - payload_offset;
    let header = DnsEvent { original_len: original_len as u32, ..*header };
    if original_len <= DNS_PAYLOAD_CLASSES[0] {
        record::<{ DNS_PAYLOAD_CLASSES[0] }>(ctx, header, payload_offset, original_len);
    } else if original_len <= DNS_PAYLOAD_CLASSES[1] {
        record::<{ DNS_PAYLOAD_CLASSES[1] }>(ctx, header, payload_offset, original_len);
    } else {
        if original_len > DNS_MAX_PAYLOAD {
            bump(Counter::DnsTruncated);
        }
        record::<DNS_MAX_PAYLOAD>(ctx, header, payload_offset, original_len);
    }
}

/// Reserves a record with room for `N` payload bytes and fills it.
#[inline(always)]
fn record<const N: usize>(ctx: &SkBuffContext, mut header: DnsEvent, offset: usize, original_len: usize) {
    let Some(mut entry) = EVENTS.reserve::<DnsRecord<N>>(0) else {
        bump(Counter::DnsLost);
        return;
    };
    let copy = if original_len > N { N } else { original_len };
    // Bounded in a form the verifier follows: `(x - 1) & (N - 1)` is in
    // 0..N, plus one is 1..=N (N is a power of two, `copy` is at least 1).
    // `black_box` keeps LLVM from folding the mask away: it knows the range,
    // the verifier would not.
    let copy = (core::hint::black_box(copy).wrapping_sub(1) & (N - 1)) + 1;
    header.captured_len = copy as u16;
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at the reservation, N payload bytes after the
    // header; `copy` is at most N.
    let loaded = unsafe {
        (&raw mut (*record).header).write(header);
        bpf_skb_load_bytes(ctx.skb.skb.cast(), offset as u32, (&raw mut (*record).payload).cast(), copy as u32)
    };
    if loaded != 0 {
        entry.discard(0);
        bump(Counter::DnsLost);
        return;
    }
    entry.submit(submit_flags());
    bump(Counter::DnsCaptured);
}
