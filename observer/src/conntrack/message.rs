//! ctnetlink messages: the `IPCTNL_MSG_CT_GET` request for one connection
//! and the parts of the kernel's answer the observer reads.
//!
//! In: an original [`Tuple`] (or the bytes the kernel answered). Out: the
//! request's bytes, or a [`Answer`]: the reply tuple's source (where the
//! connection was really sent), no such connection, or a kernel error.
//! Plain byte work with no socket, so every branch is tested with values.

use std::net::{IpAddr, SocketAddr};

use super::Tuple;

/// `NETLINK_NETFILTER`.
pub(crate) const NETLINK_NETFILTER: i32 = 12;
/// `NFNL_SUBSYS_CTNETLINK`.
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
/// `IPCTNL_MSG_CT_NEW`: the kernel answers a GET with one of these.
const IPCTNL_MSG_CT_NEW: u16 = 0;
/// `IPCTNL_MSG_CT_GET`.
const IPCTNL_MSG_CT_GET: u16 = 1;
/// `NLMSG_ERROR`.
const NLMSG_ERROR: u16 = 2;
/// `NLM_F_REQUEST`.
const NLM_F_REQUEST: u16 = 1;
/// `NLA_F_NESTED`.
const NLA_F_NESTED: u16 = 1 << 15;
/// What is left of an attribute type without its flags.
const NLA_TYPE_MASK: u16 = 0x3fff;
/// `NFNETLINK_V0`.
const NFNETLINK_V0: u8 = 0;

/// `CTA_TUPLE_ORIG`, `CTA_TUPLE_REPLY`.
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
/// `CTA_TUPLE_IP`, `CTA_TUPLE_PROTO`.
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
/// `CTA_IP_V4_SRC`, `CTA_IP_V4_DST`, `CTA_IP_V6_SRC`, `CTA_IP_V6_DST`.
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
/// `CTA_PROTO_NUM`, `CTA_PROTO_SRC_PORT`, `CTA_PROTO_DST_PORT`.
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// Size of `struct nlmsghdr`.
const NLMSG_HEADER: usize = 16;
/// Size of `struct nfgenmsg`.
const NFGEN_HEADER: usize = 4;
/// Size of `struct nlattr`.
const NLA_HEADER: usize = 4;

/// What the kernel said to one GET.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The connection, and the source of its reply tuple: the address and
    /// port that answer it (a DNAT's target).
    Found(SocketAddr),
    /// Conntrack holds no such connection (`ENOENT`).
    NotFound,
    /// The kernel refused the request with this errno.
    Error(i32),
}

/// Why an answer could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// No message of our sequence number in what was received.
    #[error("no answer to request {seq} in {len} bytes received")]
    NoAnswer {
        /// The request's sequence number.
        seq: u32,
        /// Bytes received.
        len: usize,
    },
    /// A header or attribute runs past the end of the data.
    #[error("truncated netlink message")]
    Truncated,
    /// The connection's message has no usable reply tuple.
    #[error("conntrack answer has no reply tuple source address and port")]
    NoReplyTuple,
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// Appends an attribute, padded to four bytes.
fn put_attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = NLA_HEADER + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(align(out.len()), 0);
}

/// Appends a nested attribute whose payload `fill` writes.
fn put_nested(out: &mut Vec<u8>, kind: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; NLA_HEADER]);
    fill(out);
    let len = (out.len() - start) as u16;
    out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    out[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
}

/// Writes the GET request for `tuple` with sequence number `seq` into `out`
/// (cleared first).
pub(crate) fn request(tuple: &Tuple, seq: u32, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[0; NLMSG_HEADER]);
    let family = match tuple.src.ip() {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    };
    // nfgenmsg: family, version, res_id (big endian, 0).
    out.extend_from_slice(&[family, NFNETLINK_V0, 0, 0]);
    put_nested(out, CTA_TUPLE_ORIG, |out| {
        put_nested(out, CTA_TUPLE_IP, |out| match (tuple.src.ip(), tuple.dst.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                put_attr(out, CTA_IP_V4_SRC, &src.octets());
                put_attr(out, CTA_IP_V4_DST, &dst.octets());
            }
            (src, dst) => {
                put_attr(out, CTA_IP_V6_SRC, &v6_octets(src));
                put_attr(out, CTA_IP_V6_DST, &v6_octets(dst));
            }
        });
        put_nested(out, CTA_TUPLE_PROTO, |out| {
            put_attr(out, CTA_PROTO_NUM, &[tuple.protocol]);
            put_attr(out, CTA_PROTO_SRC_PORT, &tuple.src.port().to_be_bytes());
            put_attr(out, CTA_PROTO_DST_PORT, &tuple.dst.port().to_be_bytes());
        });
    });
    let len = out.len() as u32;
    let kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET;
    out[0..4].copy_from_slice(&len.to_ne_bytes());
    out[4..6].copy_from_slice(&kind.to_ne_bytes());
    out[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    out[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: the kernel.
}

/// An IPv6 address's bytes; an IPv4 address (a mixed tuple, which
/// [`Tuple::new`] refuses) as IPv4-mapped.
fn v6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V6(ip) => ip.octets(),
        IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
    }
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// The attributes in `data`, as (type without flags, payload).
fn attrs(data: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), Malformed>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at + NLA_HEADER > data.len() {
            return None;
        }
        let (Some(len), Some(kind)) = (u16_at(data, at), u16_at(data, at + 2)) else {
            return Some(Err(Malformed::Truncated));
        };
        let len = usize::from(len);
        if len < NLA_HEADER || at + len > data.len() {
            at = data.len();
            return Some(Err(Malformed::Truncated));
        }
        let payload = &data[at + NLA_HEADER..at + len];
        at += align(len);
        Some(Ok((kind & NLA_TYPE_MASK, payload)))
    })
}

/// The payload of the first attribute of `kind` in `data`.
fn find(data: &[u8], kind: u16) -> Result<Option<&[u8]>, Malformed> {
    for attr in attrs(data) {
        let (found, payload) = attr?;
        if found == kind {
            return Ok(Some(payload));
        }
    }
    Ok(None)
}

/// The source address and port of a tuple attribute's payload.
fn tuple_source(tuple: &[u8]) -> Result<SocketAddr, Malformed> {
    let ip = find(tuple, CTA_TUPLE_IP)?.ok_or(Malformed::NoReplyTuple)?;
    let address = match (find(ip, CTA_IP_V4_SRC)?, find(ip, CTA_IP_V6_SRC)?) {
        (Some(v4), _) => IpAddr::from(<[u8; 4]>::try_from(v4).map_err(|_| Malformed::NoReplyTuple)?),
        (None, Some(v6)) => IpAddr::from(<[u8; 16]>::try_from(v6).map_err(|_| Malformed::NoReplyTuple)?),
        (None, None) => return Err(Malformed::NoReplyTuple),
    };
    let proto = find(tuple, CTA_TUPLE_PROTO)?.ok_or(Malformed::NoReplyTuple)?;
    let port = find(proto, CTA_PROTO_SRC_PORT)?.ok_or(Malformed::NoReplyTuple)?;
    let port = u16::from_be_bytes(port.try_into().map_err(|_| Malformed::NoReplyTuple)?);
    Ok(SocketAddr::new(address, port))
}

/// Reads the kernel's answer to request `seq` from the datagram `data`;
/// messages of other sequence numbers (a late answer to an earlier request)
/// are passed over.
pub(crate) fn answer(data: &[u8], seq: u32) -> Result<Answer, Malformed> {
    let mut at = 0;
    while at + NLMSG_HEADER <= data.len() {
        let (Some(len), Some(kind), Some(found_seq)) = (u32_at(data, at), u16_at(data, at + 4), u32_at(data, at + 8))
        else {
            return Err(Malformed::Truncated);
        };
        let len = len as usize;
        if len < NLMSG_HEADER || at + len > data.len() {
            return Err(Malformed::Truncated);
        }
        let body = &data[at + NLMSG_HEADER..at + len];
        at += align(len);
        if found_seq != seq {
            continue;
        }
        if kind == NLMSG_ERROR {
            let errno = body.get(..4).ok_or(Malformed::Truncated)?;
            let errno = -i32::from_ne_bytes(errno.try_into().map_err(|_| Malformed::Truncated)?);
            return Ok(match errno {
                libc::ENOENT => Answer::NotFound,
                // An acknowledgement: there was nothing to say.
                0 => Answer::NotFound,
                errno => Answer::Error(errno),
            });
        }
        if kind == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW {
            let attributes = body.get(NFGEN_HEADER..).ok_or(Malformed::Truncated)?;
            let reply = find(attributes, CTA_TUPLE_REPLY)?.ok_or(Malformed::NoReplyTuple)?;
            return tuple_source(reply).map(Answer::Found);
        }
    }
    Err(Malformed::NoAnswer { seq, len: data.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's answer to a GET: a `CT_NEW` message with both tuples
    /// (and a status attribute before them, as the kernel writes).
    fn found(seq: u32, original: &Tuple, reply_src: SocketAddr) -> Vec<u8> {
        let mut out = Vec::new();
        // The original tuple is written by the request encoder itself.
        request(original, seq, &mut out);
        let kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
        out[4..6].copy_from_slice(&kind.to_ne_bytes());
        let reply = Tuple::new(original.protocol, reply_src, original.src).expect("same family");
        let mut reply_bytes = Vec::new();
        request(&reply, 0, &mut reply_bytes);
        // The nested CTA_TUPLE_ORIG of the reply's encoding, renamed CTA_TUPLE_REPLY.
        let mut nested = reply_bytes[NLMSG_HEADER + NFGEN_HEADER..].to_vec();
        nested[2..4].copy_from_slice(&(CTA_TUPLE_REPLY | NLA_F_NESTED).to_ne_bytes());
        put_attr(&mut out, 3, &0x0000_0188u32.to_be_bytes());
        out.extend_from_slice(&nested);
        let len = out.len() as u32;
        out[0..4].copy_from_slice(&len.to_ne_bytes());
        out
    }

    fn error(seq: u32, errno: i32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&36u32.to_ne_bytes());
        out.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&(-errno).to_ne_bytes());
        // The request's header, echoed.
        out.extend_from_slice(&[0; 16]);
        out
    }

    fn tuple(src: &str, dst: &str) -> Tuple {
        Tuple::new(6, src.parse().expect("src"), dst.parse().expect("dst")).expect("same family")
    }

    #[test]
    fn the_ipv4_request_is_laid_out_as_ctnetlink_reads_it() {
        let mut out = Vec::new();
        request(&tuple("198.18.0.5:40000", "198.19.0.10:53"), 7, &mut out);
        assert_eq!(out.len(), 16 + 4 + 4 + (4 + 8 + 8) + (4 + 8 + 8 + 8));
        assert_eq!(u32_at(&out, 0), Some(out.len() as u32));
        assert_eq!(u16_at(&out, 4), Some(0x0101), "ctnetlink subsystem, GET");
        assert_eq!(u16_at(&out, 6), Some(NLM_F_REQUEST));
        assert_eq!(u32_at(&out, 8), Some(7));
        assert_eq!(&out[16..20], &[libc::AF_INET as u8, 0, 0, 0]);
        let original = find(&out[20..], CTA_TUPLE_ORIG).expect("parses").expect("original tuple");
        let ip = find(original, CTA_TUPLE_IP).expect("parses").expect("ip");
        assert_eq!(find(ip, CTA_IP_V4_SRC), Ok(Some(&[198, 18, 0, 5][..])));
        assert_eq!(find(ip, CTA_IP_V4_DST), Ok(Some(&[198, 19, 0, 10][..])));
        let proto = find(original, CTA_TUPLE_PROTO).expect("parses").expect("proto");
        assert_eq!(find(proto, CTA_PROTO_NUM), Ok(Some(&[6][..])));
        assert_eq!(find(proto, CTA_PROTO_SRC_PORT), Ok(Some(&40000u16.to_be_bytes()[..])));
        assert_eq!(find(proto, CTA_PROTO_DST_PORT), Ok(Some(&53u16.to_be_bytes()[..])));
        assert_eq!(u16_at(&out, 22), Some(CTA_TUPLE_ORIG | NLA_F_NESTED), "nested flag set");
    }

    #[test]
    fn the_ipv6_request_carries_sixteen_byte_addresses() {
        let mut out = Vec::new();
        request(&tuple("[2001:db8::5]:40000", "[2001:db8:198:19::10]:80"), 1, &mut out);
        assert_eq!(out[16], libc::AF_INET6 as u8);
        let original = find(&out[20..], CTA_TUPLE_ORIG).expect("parses").expect("original tuple");
        let ip = find(original, CTA_TUPLE_IP).expect("parses").expect("ip");
        let dst: std::net::Ipv6Addr = "2001:db8:198:19::10".parse().expect("ip");
        assert_eq!(find(ip, CTA_IP_V6_DST), Ok(Some(&dst.octets()[..])));
        assert_eq!(find(ip, CTA_IP_V4_DST), Ok(None));
    }

    #[test]
    fn a_found_connection_gives_its_reply_source() {
        let original = tuple("198.18.0.5:40000", "198.19.0.10:53");
        let backend: SocketAddr = "198.18.0.53:5353".parse().expect("addr");
        assert_eq!(answer(&found(9, &original, backend), 9), Ok(Answer::Found(backend)));
        let original = tuple("[2001:db8::5]:40000", "[2001:db8:198:19::10]:80");
        let backend: SocketAddr = "[2001:db8::80]:8080".parse().expect("addr");
        assert_eq!(answer(&found(2, &original, backend), 2), Ok(Answer::Found(backend)));
    }

    #[test]
    fn errors_and_other_sequence_numbers() {
        assert_eq!(answer(&error(4, libc::ENOENT), 4), Ok(Answer::NotFound));
        assert_eq!(answer(&error(4, libc::EPERM), 4), Ok(Answer::Error(libc::EPERM)));
        // A late answer to request 3 before ours.
        let mut both = error(3, libc::EPERM);
        both.extend(error(4, libc::ENOENT));
        assert_eq!(answer(&both, 4), Ok(Answer::NotFound));
        assert_eq!(answer(&error(3, libc::ENOENT), 4), Err(Malformed::NoAnswer { seq: 4, len: 36 }));
    }

    #[test]
    fn truncated_and_incomplete_answers_are_errors_not_panics() {
        let original = tuple("198.18.0.5:40000", "198.19.0.10:53");
        let whole = found(9, &original, "198.18.0.53:53".parse().expect("addr"));
        for cut in [1, 15, 16, 20, whole.len() - 1] {
            let mut part = whole[..cut].to_vec();
            if cut >= 4 {
                // Even when the header claims only what is there.
                part[0..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            }
            assert!(answer(&part, 9).is_err(), "cut at {cut}");
        }
        // A CT_NEW message without a reply tuple.
        let mut bare = Vec::new();
        request(&original, 9, &mut bare);
        bare[4..6].copy_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW).to_ne_bytes());
        assert_eq!(answer(&bare, 9), Err(Malformed::NoReplyTuple));
    }
}
