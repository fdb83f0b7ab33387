//! A small DNS implementation for the lab: the wire format of queries and of
//! A/AAAA answers, written independently of the observer's parser so each
//! checks the other. Used by `lab-traffic dns-server` (answers configured
//! names with their TTLs, NXDOMAIN for the rest, REFUSED for names listed as
//! refused) and `lab-traffic dns-query` (asks once over UDP or TCP, prints a
//! [`DnsQueryReport`]).
//!
//! In: names, addresses, TTLs. Out: DNS messages as bytes, and parsed answers.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};

/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type AAAA.
pub const TYPE_AAAA: u16 = 28;
/// NXDOMAIN.
pub const RCODE_NXDOMAIN: u8 = 3;
/// REFUSED.
pub const RCODE_REFUSED: u8 = 5;

/// What the lab DNS server knows: name → (addresses, TTL); names it refuses.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    /// Answered names (lowercase, no trailing dot).
    pub records: BTreeMap<String, (Vec<IpAddr>, u32)>,
    /// Names answered REFUSED (as a DNS policy would).
    pub refused: Vec<String>,
}

impl Zone {
    /// Adds `name` with `addrs` and `ttl`.
    pub fn with(mut self, name: &str, addrs: &[IpAddr], ttl: u32) -> Self {
        self.records.insert(name.to_ascii_lowercase(), (addrs.to_vec(), ttl));
        self
    }

    /// Refuses `name`.
    pub fn refuse(mut self, name: &str) -> Self {
        self.refused.push(name.to_ascii_lowercase());
        self
    }

    /// The `--zone` argument: `name=ip,ip/ttl;…` and `!name` for refused names.
    pub fn to_arg(&self) -> String {
        let mut parts: Vec<String> = self
            .records
            .iter()
            .map(|(name, (addrs, ttl))| {
                let addrs: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
                format!("{name}={}/{ttl}", addrs.join(","))
            })
            .collect();
        parts.extend(self.refused.iter().map(|name| format!("!{name}")));
        parts.join(";")
    }

    /// Parses [`Zone::to_arg`].
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut zone = Self::default();
        for part in text.split(';').filter(|part| !part.is_empty()) {
            if let Some(name) = part.strip_prefix('!') {
                zone.refused.push(name.to_ascii_lowercase());
                continue;
            }
            let (name, rest) = part.split_once('=').ok_or_else(|| format!("{part:?}: expected name=ip,…/ttl"))?;
            let (addrs, ttl) = rest.split_once('/').ok_or_else(|| format!("{part:?}: expected /ttl"))?;
            let ttl: u32 = ttl.parse().map_err(|_| format!("{part:?}: bad ttl"))?;
            let addrs = addrs
                .split(',')
                .filter(|addr| !addr.is_empty())
                .map(|addr| addr.parse().map_err(|_| format!("{part:?}: bad address {addr:?}")))
                .collect::<Result<Vec<IpAddr>, String>>()?;
            zone.records.insert(name.to_ascii_lowercase(), (addrs, ttl));
        }
        Ok(zone)
    }

    /// The answer to `query` (a whole DNS message), or `None` for garbage.
    pub fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let (id, name, qtype, question_end) = parse_question(query)?;
        let mut out = query[..question_end].to_vec();
        out[0..2].copy_from_slice(&id.to_be_bytes());
        // QR, opcode 0, RD copied; RA.
        out[2] = 0x80 | (query[2] & 0x01);
        out[3] = 0x80;
        out[6..12].copy_from_slice(&[0, 0, 0, 0, 0, 0]);
        if self.refused.contains(&name) {
            out[3] |= RCODE_REFUSED;
            return Some(out);
        }
        let Some((addrs, ttl)) = self.records.get(&name) else {
            out[3] |= RCODE_NXDOMAIN;
            return Some(out);
        };
        let mut count = 0u16;
        for addr in addrs {
            let rdata = match (addr, qtype) {
                (IpAddr::V4(v4), TYPE_A) => v4.octets().to_vec(),
                (IpAddr::V6(v6), TYPE_AAAA) => v6.octets().to_vec(),
                _ => continue,
            };
            // Owner: a pointer to the question name at offset 12.
            out.extend_from_slice(&[0xc0, 12]);
            out.extend_from_slice(&qtype.to_be_bytes());
            out.extend_from_slice(&[0, 1]);
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            out.extend_from_slice(&rdata);
            count += 1;
        }
        out[6..8].copy_from_slice(&count.to_be_bytes());
        Some(out)
    }
}

/// A query for `name` of `qtype` with recursion desired.
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.').filter(|label| !label.is_empty()) {
        out.push(label.len().min(63) as u8);
        out.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&[0, 1]);
    out
}

/// `(id, lowercase name, qtype, end of the question)` of a message with an
/// uncompressed first question.
fn parse_question(message: &[u8]) -> Option<(u16, String, u16, usize)> {
    if message.len() < 12 || u16::from_be_bytes([message[4], message[5]]) == 0 {
        return None;
    }
    let id = u16::from_be_bytes([message[0], message[1]]);
    let mut labels = Vec::new();
    let mut at = 12;
    loop {
        let len = usize::from(*message.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(message.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*message.get(at)?, *message.get(at + 1)?]);
    Some((id, labels.join("."), qtype, at + 4))
}

/// The response code and addresses of an answer to a query made by [`query`].
pub fn parse_answer(message: &[u8]) -> Option<(u8, Vec<IpAddr>)> {
    let (_, _, _, mut at) = parse_question(message)?;
    let rcode = message[3] & 0x0f;
    let count = u16::from_be_bytes([message[6], message[7]]);
    let mut addrs = Vec::new();
    for _ in 0..count {
        // Owner: a pointer (two bytes) or labels.
        if *message.get(at)? & 0xc0 == 0xc0 {
            at += 2;
        } else {
            while *message.get(at)? != 0 {
                at += 1 + usize::from(*message.get(at)?);
            }
            at += 1;
        }
        let rtype = u16::from_be_bytes([*message.get(at)?, *message.get(at + 1)?]);
        let len = usize::from(u16::from_be_bytes([*message.get(at + 8)?, *message.get(at + 9)?]));
        let rdata = message.get(at + 10..at + 10 + len)?;
        match (rtype, len) {
            (TYPE_A, 4) => addrs.push(IpAddr::from(<[u8; 4]>::try_from(rdata).ok()?)),
            (TYPE_AAAA, 16) => addrs.push(IpAddr::from(<[u8; 16]>::try_from(rdata).ok()?)),
            _ => {}
        }
        at += 10 + len;
    }
    Some((rcode, addrs))
}

/// What `lab-traffic dns-query` printed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DnsQueryReport {
    /// The name asked for.
    pub name: String,
    /// `NOERROR`, `NXDOMAIN`, `REFUSED`, `RCODE<n>`, or `TIMEOUT` when no answer came.
    pub rcode: String,
    /// Addresses in the answer.
    pub addrs: Vec<IpAddr>,
    /// Local port the query was sent from.
    pub local_port: u16,
}

/// Options of `lab-traffic dns-query`.
#[derive(Debug, Clone)]
pub struct DnsQueryOpts {
    /// Name to resolve.
    pub name: String,
    /// `A` (false) or `AAAA` (true).
    pub aaaa: bool,
    /// Over TCP instead of UDP.
    pub tcp: bool,
    /// How long to wait for the answer.
    pub timeout: Duration,
}

impl DnsQueryOpts {
    /// An A query over UDP with a 2 s timeout.
    pub fn a(name: &str) -> Self {
        Self { name: name.to_owned(), aaaa: false, tcp: false, timeout: Duration::from_secs(2) }
    }

    /// The `lab-traffic` arguments to ask `server`.
    pub fn args(&self, server: std::net::SocketAddr) -> Vec<String> {
        let mut args = vec![
            "dns-query".to_owned(),
            "--server".to_owned(),
            server.to_string(),
            "--name".to_owned(),
            self.name.clone(),
            "--type".to_owned(),
            if self.aaaa { "AAAA" } else { "A" }.to_owned(),
            "--timeout-ms".to_owned(),
            self.timeout.as_millis().to_string(),
        ];
        if self.tcp {
            args.push("--tcp".to_owned());
        }
        args
    }
}

/// The name of a response code.
pub fn rcode_name(rcode: u8) -> String {
    match rcode {
        0 => "NOERROR".to_owned(),
        2 => "SERVFAIL".to_owned(),
        RCODE_NXDOMAIN => "NXDOMAIN".to_owned(),
        RCODE_REFUSED => "REFUSED".to_owned(),
        other => format!("RCODE{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_answers_configured_names_and_nxdomain_otherwise() {
        let ip: IpAddr = "203.0.113.20".parse().expect("ip");
        let zone = Zone::default().with("api.example.com", &[ip], 30).refuse("blocked.example.com");
        assert_eq!(Zone::parse(&zone.to_arg()).expect("parses").to_arg(), zone.to_arg());
        let answer = zone.answer(&query(5, "API.example.com", TYPE_A)).expect("answer");
        assert_eq!(parse_answer(&answer), Some((0, vec![ip])));
        let answer = zone.answer(&query(6, "nope.example.com", TYPE_A)).expect("answer");
        assert_eq!(parse_answer(&answer), Some((RCODE_NXDOMAIN, vec![])));
        let answer = zone.answer(&query(7, "blocked.example.com", TYPE_A)).expect("answer");
        assert_eq!(parse_answer(&answer), Some((RCODE_REFUSED, vec![])));
        assert_eq!(zone.answer(&[1, 2, 3]), None);
    }
}
