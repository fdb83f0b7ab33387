//! DNS message parsing, hardened against hostile packets.
//!
//! In: the transport payload of one captured packet (UDP: a DNS message; TCP:
//! a segment starting with the 2-byte length prefix), possibly cut short by
//! the kernel's 512-byte capture limit. Out: a [`DnsMessage`] with the header,
//! the first question and the address and alias answers, or a [`ParseError`].
//!
//! The wire decoding is `hickory-proto`'s (maintained and fuzzed upstream);
//! this module reads section by section and keeps what it decoded before the
//! first error, so a truncated answer still yields its name and first
//! records. Everything kept is bounded: one question, [`MAX_ANSWERS`]
//! answers, names as hickory escapes them (ASCII, at most 255 bytes on the wire).

use std::{net::IpAddr, sync::Arc};

use hickory_proto::{
    op::{Header, MessageType, Query},
    rr::{Name, RData, Record, RecordType},
    serialize::binary::{BinDecodable, BinDecoder},
};

/// Answers kept per message; the rest are skipped.
pub const MAX_ANSWERS: usize = 32;
/// Questions walked past to reach the answers (real messages carry one).
const MAX_QUESTIONS: u16 = 4;

/// How the message travelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// One message per datagram.
    Udp,
    /// A 2-byte length prefix, then the message.
    Tcp,
}

/// Why a payload is not a DNS message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than the 12-byte header (plus the TCP length prefix).
    #[error("payload of {len} bytes is shorter than a DNS header")]
    TooShort {
        /// Payload bytes.
        len: usize,
    },
    /// The header decoded but it is not a standard query or its answer.
    #[error("not a standard query (opcode {opcode})")]
    NotQuery {
        /// The opcode.
        opcode: u8,
    },
    /// The question section is unreadable, so no name is known.
    #[error("unreadable question: {reason}")]
    Question {
        /// The decoder's complaint.
        reason: String,
    },
}

/// The question of a message: the name asked for and the record type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// Normalized name (see [`normalize`]).
    pub name: Arc<str>,
    /// Record type asked for.
    pub qtype: u16,
}

/// The data of one answer record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnswerData {
    /// A or AAAA.
    Addr(IpAddr),
    /// CNAME target (normalized).
    Alias(Arc<str>),
    /// Any other type: only counted.
    Other,
}

/// One answer record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Owner name (normalized).
    pub name: Arc<str>,
    /// Record type.
    pub rtype: u16,
    /// Time to live in seconds.
    pub ttl: u32,
    /// What it says.
    pub data: AnswerData,
}

/// What one DNS packet says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsMessage {
    /// Transaction id.
    pub id: u16,
    /// An answer (QR set) rather than a query.
    pub response: bool,
    /// Response code (4 bits of the header; EDNS extended codes are not read).
    pub rcode: u8,
    /// The TC bit: the server cut the answer (the client retries over TCP).
    pub truncated: bool,
    /// The first question, if there is one.
    pub question: Option<Question>,
    /// Answer records, at most [`MAX_ANSWERS`].
    pub answers: Vec<Answer>,
    /// Decoding stopped early: the capture was cut, a record was malformed,
    /// or more answers than kept. What was decoded before is kept.
    pub partial: bool,
}

impl DnsMessage {
    /// Addresses in the answer, with the TTL of their record.
    pub fn addresses(&self) -> impl Iterator<Item = (IpAddr, u32)> + '_ {
        self.answers.iter().filter_map(|answer| match answer.data {
            AnswerData::Addr(ip) => Some((ip, answer.ttl)),
            _ => None,
        })
    }
}

/// A name as records carry it: ASCII (hickory escapes other bytes),
/// lowercase, without the trailing dot; the root is `.`.
pub fn normalize(name: &Name) -> Arc<str> {
    let mut text = name.to_ascii();
    text.make_ascii_lowercase();
    if text.len() > 1 && text.ends_with('.') {
        text.pop();
    }
    Arc::from(text)
}

/// Parses one captured payload.
pub fn parse(payload: &[u8], transport: Transport) -> Result<DnsMessage, ParseError> {
    let (message, cut) = match transport {
        Transport::Udp => (payload, false),
        Transport::Tcp => {
            let [high, low, rest @ ..] = payload else {
                return Err(ParseError::TooShort { len: payload.len() });
            };
            let declared = usize::from(u16::from_be_bytes([*high, *low]));
            if declared <= rest.len() { (&rest[..declared], false) } else { (rest, true) }
        }
    };
    if message.len() < 12 {
        return Err(ParseError::TooShort { len: payload.len() });
    }
    let mut decoder = BinDecoder::new(message);
    let header = Header::read(&mut decoder).map_err(|_| ParseError::TooShort { len: payload.len() })?;
    let opcode: u8 = header.op_code.into();
    if opcode != 0 {
        return Err(ParseError::NotQuery { opcode });
    }
    let mut parsed = DnsMessage {
        id: header.id,
        response: header.message_type == MessageType::Response,
        rcode: header.response_code.low(),
        truncated: header.truncation,
        question: None,
        answers: Vec::new(),
        partial: cut,
    };
    let questions = header.counts.queries;
    for index in 0..questions.min(MAX_QUESTIONS) {
        match Query::read(&mut decoder) {
            Ok(query) if index == 0 => {
                parsed.question =
                    Some(Question { name: normalize(query.name()), qtype: u16::from(query.query_type()) });
            }
            Ok(_) => {}
            Err(error) if index == 0 => return Err(ParseError::Question { reason: error.to_string() }),
            Err(_) => {
                parsed.partial = true;
                return Ok(parsed);
            }
        }
    }
    if questions > MAX_QUESTIONS {
        parsed.partial = true;
        return Ok(parsed);
    }
    let answers = usize::from(header.counts.answers);
    for _ in 0..answers.min(MAX_ANSWERS) {
        match Record::<RData>::read(&mut decoder) {
            Ok(record) => parsed.answers.push(answer(&record)),
            Err(_) => {
                parsed.partial = true;
                return Ok(parsed);
            }
        }
    }
    if answers > MAX_ANSWERS {
        parsed.partial = true;
    }
    Ok(parsed)
}

fn answer(record: &Record<RData>) -> Answer {
    let data = match &record.data {
        RData::A(a) => AnswerData::Addr(IpAddr::V4(a.0)),
        RData::AAAA(aaaa) => AnswerData::Addr(IpAddr::V6(aaaa.0)),
        RData::CNAME(cname) => AnswerData::Alias(normalize(&cname.0)),
        _ => AnswerData::Other,
    };
    Answer { name: normalize(&record.name), rtype: u16::from(record.record_type()), ttl: record.ttl, data }
}

/// The mnemonic of a record type (`A`, `AAAA`, `CNAME`, …, or `TYPE123`).
pub fn type_name(rtype: u16) -> String {
    match RecordType::from(rtype) {
        RecordType::Unknown(code) => format!("TYPE{code}"),
        known => known.to_string(),
    }
}

/// The mnemonic of a response code (`NOERROR`, `NXDOMAIN`, …, or `RCODE12`).
pub fn rcode_name(rcode: u8) -> std::borrow::Cow<'static, str> {
    match rcode {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        other => format!("RCODE{other}").into(),
    }
}

/// Builders of wire-format messages for tests, the fuzz seed corpus and benchmarks.
#[cfg(any(test, feature = "fuzzing"))]
pub mod wire {
    use std::net::IpAddr;

    /// One answer: owner name, TTL, and an address or a CNAME target.
    pub enum Rr<'a> {
        /// A or AAAA.
        Addr(&'a str, u32, IpAddr),
        /// CNAME.
        Alias(&'a str, u32, &'a str),
    }

    fn push_name(out: &mut Vec<u8>, name: &str) {
        for label in name.trim_end_matches('.').split('.').filter(|label| !label.is_empty()) {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
    }

    /// A query for `name` of type `qtype`.
    pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        push_name(&mut out, name);
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&[0, 1]);
        out
    }

    /// The answer to [`query`] with `rcode` and `answers`; the owner name of
    /// an answer equal to the question is written as a compression pointer.
    pub fn response(id: u16, name: &str, qtype: u16, rcode: u8, answers: &[Rr<'_>]) -> Vec<u8> {
        let mut out = query(id, name, qtype);
        out[2] = 0x81;
        out[3] = 0x80 | rcode;
        out[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
        for answer in answers {
            let (owner, ttl) = match answer {
                Rr::Addr(owner, ttl, _) | Rr::Alias(owner, ttl, _) => (*owner, *ttl),
            };
            if owner == name {
                out.extend_from_slice(&[0xc0, 12]);
            } else {
                push_name(&mut out, owner);
            }
            let (rtype, rdata): (u16, Vec<u8>) = match answer {
                Rr::Addr(_, _, IpAddr::V4(ip)) => (1, ip.octets().to_vec()),
                Rr::Addr(_, _, IpAddr::V6(ip)) => (28, ip.octets().to_vec()),
                Rr::Alias(_, _, target) => {
                    let mut rdata = Vec::new();
                    push_name(&mut rdata, target);
                    (5, rdata)
                }
            };
            out.extend_from_slice(&rtype.to_be_bytes());
            out.extend_from_slice(&[0, 1]);
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            out.extend_from_slice(&rdata);
        }
        out
    }

    /// A message framed for TCP (2-byte length prefix).
    pub fn tcp(message: &[u8]) -> Vec<u8> {
        let mut out = (message.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(message);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::{wire::Rr, *};
    use proptest::prelude::*;

    const A: u16 = 1;

    #[test]
    fn query_yields_its_normalized_name() {
        let message = parse(&wire::query(0x1234, "API.Example.com.", A), Transport::Udp).expect("parses");
        assert_eq!(message.id, 0x1234);
        assert!(!message.response);
        assert_eq!(message.question, Some(Question { name: "api.example.com".into(), qtype: A }));
        assert!(message.answers.is_empty());
        assert!(!message.partial);
    }

    #[test]
    fn answer_with_alias_chain_yields_addresses_and_ttls() {
        let bytes = wire::response(
            7,
            "api.example.com",
            A,
            0,
            &[
                Rr::Alias("api.example.com", 300, "edge.cdn.example.net"),
                Rr::Addr("edge.cdn.example.net", 60, "203.0.113.20".parse().expect("ip")),
                Rr::Addr("edge.cdn.example.net", 30, "2001:db8:203:113::20".parse().expect("ip")),
            ],
        );
        let message = parse(&bytes, Transport::Udp).expect("parses");
        assert!(message.response);
        assert_eq!(message.rcode, 0);
        assert_eq!(message.answers[0].data, AnswerData::Alias("edge.cdn.example.net".into()));
        let addresses: Vec<_> = message.addresses().collect();
        assert_eq!(
            addresses,
            vec![("203.0.113.20".parse().expect("ip"), 60), ("2001:db8:203:113::20".parse().expect("ip"), 30)]
        );
    }

    #[test]
    fn nxdomain_keeps_the_name() {
        let message = parse(&wire::response(9, "blocked.example.org", A, 3, &[]), Transport::Udp).expect("parses");
        assert_eq!(rcode_name(message.rcode), "NXDOMAIN");
        assert_eq!(message.question.expect("question").name.as_ref(), "blocked.example.org");
    }

    #[test]
    fn tcp_framing_is_stripped_and_a_cut_segment_is_partial() {
        let answer = wire::response(
            1,
            "a.example.com",
            A,
            0,
            &[Rr::Addr("a.example.com", 5, "203.0.113.5".parse().expect("ip"))],
        );
        let framed = wire::tcp(&answer);
        let message = parse(&framed, Transport::Tcp).expect("parses");
        assert_eq!(message.addresses().count(), 1);
        assert!(!message.partial);
        // Cut inside the answer record: the question survives, the answer does not.
        let cut = parse(&framed[..framed.len() - 3], Transport::Tcp).expect("parses");
        assert!(cut.partial);
        assert_eq!(cut.question.as_ref().expect("question").name.as_ref(), "a.example.com");
        assert_eq!(cut.addresses().count(), 0);
    }

    #[test]
    fn a_truncated_capture_keeps_the_answers_before_the_cut() {
        let records: Vec<Rr<'_>> =
            (0..40u8).map(|index| Rr::Addr("many.example.com", 60, IpAddr::from([203, 0, 113, index]))).collect();
        let bytes = wire::response(3, "many.example.com", A, 0, &records);
        assert!(bytes.len() > 512);
        let message = parse(&bytes[..512], Transport::Udp).expect("parses");
        assert!(message.partial);
        assert!(message.answers.len() > 20 && message.answers.len() < 40, "{}", message.answers.len());
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        assert_eq!(parse(&[0; 5], Transport::Udp), Err(ParseError::TooShort { len: 5 }));
        assert_eq!(parse(&[0, 40, 1, 2], Transport::Tcp), Err(ParseError::TooShort { len: 4 }));
        // A question whose name is a compression pointer to itself.
        let mut looped = wire::query(1, "x", A);
        looped.truncate(12);
        looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert!(matches!(parse(&looped, Transport::Udp), Err(ParseError::Question { .. })));
        // Opcode 5 (UPDATE).
        let mut update = wire::query(1, "x", A);
        update[2] = 5 << 3;
        assert_eq!(parse(&update, Transport::Udp), Err(ParseError::NotQuery { opcode: 5 }));
    }

    #[test]
    fn names_are_escaped_ascii() {
        let mut bytes = wire::query(1, "a", A);
        bytes.truncate(12);
        bytes.extend_from_slice(&[3, b'a', 0x07, b'"', 3, b'c', b'o', b'm', 0, 0, 1, 0, 1]);
        let name = parse(&bytes, Transport::Udp).expect("parses").question.expect("question").name;
        assert!(name.is_ascii() && !name.contains('\u{7}'), "{name:?}");
    }

    #[test]
    fn type_and_rcode_names() {
        assert_eq!(type_name(28), "AAAA");
        assert_eq!(type_name(65_000), "TYPE65000");
        assert_eq!(rcode_name(5), "REFUSED");
        assert_eq!(rcode_name(12), "RCODE12");
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            for transport in [Transport::Udp, Transport::Tcp] {
                if let Ok(message) = parse(&bytes, transport) {
                    prop_assert!(message.answers.len() <= MAX_ANSWERS);
                }
            }
        }

        #[test]
        fn any_prefix_of_a_real_answer_parses_or_fails(cut in 0usize..200) {
            let bytes = wire::response(
                2, "api.example.com", A, 0,
                &[Rr::Alias("api.example.com", 60, "x.example.net"), Rr::Addr("x.example.net", 60, "203.0.113.9".parse().expect("ip"))],
            );
            let cut = cut.min(bytes.len());
            if let Ok(message) = parse(&bytes[..cut], Transport::Udp) {
                prop_assert!(message.partial || cut == bytes.len());
            }
        }
    }
}
