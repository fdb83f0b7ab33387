//! A flow record as one line of the flow log's JSON, written by hand.
//!
//! In: [`FlowRecord`]s. Out: for each, the very bytes `serde_json` makes of
//! it (the record's derived `Serialize` is the schema; a test holds this
//! encoder to it byte for byte), in a fraction of the time: keys are
//! literals, numbers go through `itoa`, strings are copied whole when they
//! need no escape, and what records share (an endpoint's fields, a verdict)
//! is rendered by `serde_json` once per shared value, kept beside it (see
//! [`crate::rendered`]), and copied after that.
//! The flow log is the observer's largest userspace cost per record without
//! this (see BENCHMARKS.md).
//!
//! Each record type is taken apart field by field without `..`, so a field
//! added to one does not compile until it is written here too.

use std::{io::Write as _, net::IpAddr, time::SystemTime};

use crate::{
    ai::AiDestination,
    flow::{Backend, Cgroup, FLAG_NAMES, FlagSet, FlowRecord, Icmp, Peer, PeerDns, Rfc3339, TcpFlags, Traffic},
};

/// Appends one line per record to `out`; returns how many. A record that
/// fails to encode (which plain data cannot) is left out whole.
pub fn lines(records: &[FlowRecord], out: &mut Vec<u8>) -> u64 {
    let mut written = 0;
    // The records of a batch are written at one time: format it once.
    let mut written_at: Option<(SystemTime, Rfc3339)> = None;
    for record in records {
        let start = out.len();
        let time = match written_at {
            Some((at, text)) if at == record.time => text,
            _ => written_at.insert((record.time, Rfc3339::of(record.time))).1,
        };
        if encode(record, &time, out).is_ok() {
            out.push(b'\n');
            written += 1;
        } else {
            out.truncate(start);
        }
    }
    written
}

/// Appends `record`'s JSON (no newline) to `out`, its `time` formatted as
/// `time`; on an error `out` may hold part of it.
fn encode(record: &FlowRecord, time: &Rfc3339, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let FlowRecord {
        time: _,
        event,
        node,
        protocol,
        family,
        src,
        dst,
        local,
        icmp,
        cgroup,
        state,
        to_dst,
        to_src,
        tcp_flags,
        first_seen,
        last_seen,
        duration_ms,
        verdict,
        verdict_now,
        progress: _,
    } = record;
    out.extend_from_slice(b"{\"time\":");
    string(out, time.as_str());
    out.extend_from_slice(b",\"event\":");
    string(out, event.as_str());
    out.extend_from_slice(b",\"node\":");
    string(out, node);
    out.extend_from_slice(b",\"protocol\":");
    string(out, &protocol.name());
    out.extend_from_slice(b",\"family\":");
    string(out, family.as_str());
    out.extend_from_slice(b",\"src\":");
    peer(src, out)?;
    out.extend_from_slice(b",\"dst\":");
    peer(dst, out)?;
    out.extend_from_slice(b",\"local\":");
    string(out, local.as_str());
    if let Some(Icmp { kind, code }) = icmp {
        out.extend_from_slice(b",\"icmp\":{\"type\":");
        number(out, *kind);
        out.extend_from_slice(b",\"code\":");
        number(out, *code);
        out.push(b'}');
    }
    let Cgroup { id, path } = cgroup;
    out.extend_from_slice(b",\"cgroup\":{\"id\":");
    number(out, *id);
    out.extend_from_slice(b",\"path\":");
    match path {
        Some(path) => string(out, path),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b"},\"state\":");
    string(out, state.as_str());
    out.extend_from_slice(b",\"to_dst\":");
    traffic(out, to_dst);
    out.extend_from_slice(b",\"to_src\":");
    traffic(out, to_src);
    if let Some(TcpFlags { to_dst, to_src }) = tcp_flags {
        out.extend_from_slice(b",\"tcp_flags\":{\"to_dst\":");
        flags(out, *to_dst);
        out.extend_from_slice(b",\"to_src\":");
        flags(out, *to_src);
        out.push(b'}');
    }
    out.extend_from_slice(b",\"first_seen\":");
    string(out, Rfc3339::of(*first_seen).as_str());
    out.extend_from_slice(b",\"last_seen\":");
    string(out, Rfc3339::of(*last_seen).as_str());
    out.extend_from_slice(b",\"duration_ms\":");
    number(out, *duration_ms);
    if let Some(verdict) = verdict {
        out.extend_from_slice(b",\"verdict\":");
        out.extend_from_slice(verdict.json.get_or_render(&**verdict)?.as_bytes());
    }
    if let Some(verdict) = verdict_now {
        out.extend_from_slice(b",\"verdict_now\":");
        out.extend_from_slice(verdict.json.get_or_render(&**verdict)?.as_bytes());
    }
    out.push(b'}');
    Ok(())
}

fn peer(peer: &Peer, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let Peer { ip, port, endpoint, backend, dns, ai } = peer;
    out.extend_from_slice(b"{\"ip\":");
    address(out, ip);
    if let Some(port) = port {
        out.extend_from_slice(b",\"port\":");
        number(out, *port);
    }
    if let Some(endpoint) = endpoint {
        // Its fields sit beside the address (flattened): the object
        // serde_json makes of it, without the braces.
        let json = endpoint.json()?;
        let fields = json.strip_prefix('{').and_then(|json| json.strip_suffix('}')).unwrap_or_default();
        if !fields.is_empty() {
            out.push(b',');
            out.extend_from_slice(fields.as_bytes());
        }
    }
    if let Some(Backend { ip, port, via, .. }) = backend {
        out.extend_from_slice(b",\"backend\":{\"ip\":");
        address(out, ip);
        out.extend_from_slice(b",\"port\":");
        number(out, *port);
        out.extend_from_slice(b",\"via\":\"");
        out.extend_from_slice(via.as_str().as_bytes());
        out.extend_from_slice(b"\"}");
    }
    if let Some(PeerDns { names, resolved }) = dns {
        out.extend_from_slice(b",\"dns\":{");
        if !names.is_empty() {
            out.extend_from_slice(b"\"names\":[");
            for (index, name) in names.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                string(out, name);
            }
            out.extend_from_slice(b"],");
        }
        out.extend_from_slice(if *resolved { b"\"resolved\":true}" } else { b"\"resolved\":false}" });
    }
    if let Some(AiDestination { provider, kind, via, name }) = ai {
        out.extend_from_slice(b",\"ai_provider\":");
        string(out, provider);
        out.extend_from_slice(b",\"ai_kind\":");
        string(out, kind.as_str());
        out.extend_from_slice(b",\"ai_via\":");
        string(out, via.as_str());
        if let Some(name) = name {
            out.extend_from_slice(b",\"ai_name\":");
            string(out, name);
        }
    }
    out.push(b'}');
    Ok(())
}

fn traffic(out: &mut Vec<u8>, traffic: &Traffic) {
    let Traffic { packets, bytes } = traffic;
    out.extend_from_slice(b"{\"packets\":");
    number(out, *packets);
    out.extend_from_slice(b",\"bytes\":");
    number(out, *bytes);
    out.push(b'}');
}

fn flags(out: &mut Vec<u8>, set: FlagSet) {
    out.push(b'[');
    let mut first = true;
    for (bit, name) in FLAG_NAMES {
        if set.0 & bit != 0 {
            if !first {
                out.push(b',');
            }
            first = false;
            string(out, name);
        }
    }
    out.push(b']');
}

fn number(out: &mut Vec<u8>, value: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn address(out: &mut Vec<u8>, ip: &IpAddr) {
    out.push(b'"');
    match ip {
        IpAddr::V4(ip) => {
            for (index, octet) in ip.octets().into_iter().enumerate() {
                if index > 0 {
                    out.push(b'.');
                }
                number(out, octet);
            }
        }
        // Writing to a Vec cannot fail.
        IpAddr::V6(ip) => {
            let _ = write!(out, "{ip}");
        }
    }
    out.push(b'"');
}

/// A JSON string, escaped as `serde_json` escapes it.
fn string(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.push(b'"');
    // Without an early exit the scan compiles to vector compares.
    if !bytes.iter().fold(false, |found, byte| found | needs_escape(*byte)) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (index, byte) in bytes.iter().enumerate() {
        if !needs_escape(*byte) {
            continue;
        }
        out.extend_from_slice(&bytes[start..index]);
        start = index + 1;
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            control => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(control >> 4)]);
                out.push(HEX[usize::from(control & 0xf)]);
            }
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        net::{Ipv4Addr, Ipv6Addr},
        sync::Arc,
        time::{Duration, SystemTime, UNIX_EPOCH},
    };

    use observer_common::tcp_flags;

    use super::*;
    use crate::{
        ai::{AiKind, AiVia},
        flow::BackendSource,
        flow::{Family, FlowState, LocalEnd, Progress, Protocol, RecordEvent},
        inventory::{Endpoint, EndpointInfo, EndpointKind, ServiceRef, WorkloadRef},
        inventory::{ObjectKind, ObjectRef},
        judge::{Delivery, FlowVerdict, PolicyCite, VerdictKind},
        policy::{ClusterRank, Tier},
        rendered::RenderedJson,
    };

    /// Strings with every kind of character the encoder treats apart.
    const AWKWARD: [&str; 4] =
        ["plain", "quote \" and \\ backslash", "controls \u{1}\u{8}\u{c}\n\r\t\u{1f}\u{7f}", "ünïcødé ✓"];

    fn pod(name: &str) -> Endpoint {
        Endpoint::from(EndpointInfo {
            kind: EndpointKind::Pod,
            namespace: Some("ai".to_owned()),
            pod: Some(name.to_owned()),
            uid: Some("00000001-0000-4000-8000-000000000001".to_owned()),
            service: None,
            node: Some("node-1".to_owned()),
            workload: Some(WorkloadRef { kind: "Deployment".to_owned(), name: "model".to_owned() }),
            labels: BTreeMap::from([("app".to_owned(), name.to_owned()), ("tier".to_owned(), "model".to_owned())]),
        })
    }

    fn verdict() -> Arc<FlowVerdict> {
        Arc::new(FlowVerdict {
            verdict: VerdictKind::EnforcementGap,
            reason: "denied: \"egress\" isolated".to_owned(),
            delivery: Delivery::Delivered,
            policies: Vec::new(),
            intent: None,
            ambiguous: false,
            backends: Vec::new(),
            src_uid: Some("a".to_owned()),
            dst_uid: None,
            src_tier: None,
            dst_tier: None,
            json: RenderedJson::default(),
        })
    }

    fn cites(text: &str) -> Vec<PolicyCite> {
        let network = ObjectRef {
            kind: ObjectKind::NetworkPolicy,
            namespace: text.to_owned(),
            name: "allow-web".to_owned(),
            uid: None,
            resource_version: Some("12".to_owned()),
            generation: Some(2),
        };
        let cluster = ObjectRef {
            kind: ObjectKind::ClusterNetworkPolicy(ClusterRank { tier: Tier::Admin, priority: 1000 }),
            namespace: String::new(),
            name: text.to_owned(),
            uid: Some("u".to_owned()),
            resource_version: None,
            generation: None,
        };
        vec![PolicyCite(Arc::new(network)), PolicyCite(Arc::new(cluster))]
    }

    fn record(text: &str) -> FlowRecord {
        let at = |millis: u64| UNIX_EPOCH + Duration::from_millis(millis);
        FlowRecord {
            time: at(1_790_000_000_123),
            event: RecordEvent::End,
            node: Arc::from(text),
            protocol: Protocol(observer_common::PROTO_TCP),
            family: Family::Ipv4,
            src: Peer {
                ip: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10)),
                port: Some(40_000),
                endpoint: None,
                backend: None,
                dns: None,
                ai: None,
            },
            dst: Peer {
                ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
                port: Some(443),
                endpoint: None,
                backend: None,
                dns: None,
                ai: None,
            },
            local: LocalEnd::Src,
            icmp: None,
            cgroup: Cgroup { id: 158_941, path: Some(Arc::from(text)) },
            state: FlowState::Closed,
            to_dst: Traffic { packets: 6, bytes: 16 },
            to_src: Traffic { packets: 4, bytes: u64::MAX },
            tcp_flags: Some(TcpFlags {
                to_dst: FlagSet(tcp_flags::SYN | tcp_flags::ACK | tcp_flags::FIN),
                to_src: FlagSet(0),
            }),
            first_seen: at(1_790_000_000_000),
            last_seen: SystemTime::UNIX_EPOCH,
            duration_ms: 123,
            verdict: None,
            verdict_now: None,
            progress: Progress::default(),
        }
    }

    /// Every way a record can differ, each applied to the base record; the
    /// enriched ones twice, so their shared values are also copied as kept.
    fn variants() -> Vec<FlowRecord> {
        let mut records = Vec::new();
        for text in AWKWARD {
            let base = record(text);
            records.push(base.clone());
            for event in [RecordEvent::Start, RecordEvent::Update, RecordEvent::End] {
                records.push(FlowRecord { event, ..base.clone() });
            }
            records.push(FlowRecord { time: base.time + Duration::from_millis(1), ..base.clone() });
            for state in [
                FlowState::Attempted,
                FlowState::Established,
                FlowState::Refused,
                FlowState::Unanswered,
                FlowState::Closed,
                FlowState::Active,
                FlowState::Expired,
                FlowState::Evicted,
            ] {
                records.push(FlowRecord { state, local: LocalEnd::Dst, ..base.clone() });
            }
            for protocol in [observer_common::PROTO_UDP, observer_common::PROTO_SCTP, 47] {
                records.push(FlowRecord { protocol: Protocol(protocol), tcp_flags: None, ..base.clone() });
            }
            let mut icmp = FlowRecord {
                protocol: Protocol(observer_common::PROTO_ICMPV6),
                family: Family::Ipv6,
                icmp: Some(Icmp { kind: 128, code: 0 }),
                tcp_flags: None,
                ..base.clone()
            };
            icmp.src = Peer {
                ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
                port: None,
                endpoint: None,
                backend: None,
                dns: None,
                ai: None,
            };
            icmp.dst.ip = IpAddr::V6("2001:db8:203:113::10".parse().expect("address"));
            icmp.dst.port = None;
            records.push(icmp);
            let mut enriched = FlowRecord { verdict: Some(verdict()), ..base.clone() };
            enriched.cgroup.path = None;
            enriched.src.endpoint = Some(pod(text));
            enriched.dst.endpoint = Some(Endpoint::world());
            enriched.dst.dns =
                Some(PeerDns { names: vec![Arc::from("api.example.com"), Arc::from(text)], resolved: true });
            records.push(enriched.clone());
            records.push(enriched.clone());
            // To an AI provider, by name and by an address resolved elsewhere.
            let mut to_ai = enriched.clone();
            to_ai.dst.ai =
                Some(AiDestination { provider: Arc::from(text), kind: AiKind::LlmApi, via: AiVia::Dns, name: None });
            records.push(to_ai.clone());
            to_ai.dst.dns = Some(PeerDns { names: Vec::new(), resolved: false });
            to_ai.dst.ai = Some(AiDestination {
                provider: Arc::from("openai"),
                kind: AiKind::ModelHub,
                via: AiVia::Address,
                name: Some(Arc::from(text)),
            });
            records.push(to_ai);
            // A connection that outlived a policy change: both verdicts.
            let now = FlowVerdict {
                verdict: VerdictKind::Allowed,
                reason: format!("allowed: {text}"),
                delivery: Delivery::Unproven,
                ..FlowVerdict::clone(&verdict())
            };
            let outlived = FlowRecord { verdict_now: Some(Arc::new(now)), ..enriched.clone() };
            records.push(outlived.clone());
            records.push(outlived);
            // Verdicts citing a NetworkPolicy and a ClusterNetworkPolicy with its tier.
            let cited = FlowVerdict { policies: cites(text), ..FlowVerdict::clone(&verdict()) };
            records.push(FlowRecord { verdict: Some(Arc::new(cited)), ..enriched.clone() });
            enriched.dst.endpoint = Some(Endpoint::host(Some(text)));
            enriched.dst.dns = Some(PeerDns { names: Vec::new(), resolved: false });
            records.push(enriched.clone());
            // A Service flow judged at its backend, both ways it is learned.
            let service = Endpoint::from(EndpointInfo {
                kind: EndpointKind::Service,
                namespace: Some(text.to_owned()),
                service: Some(ServiceRef { namespace: text.to_owned(), name: text.to_owned() }),
                ..(*Endpoint::world()).clone()
            });
            enriched.dst.dns = None;
            enriched.dst.endpoint = Some(pod(text).behind(&service));
            for (ip, via) in [
                (IpAddr::V4(Ipv4Addr::new(198, 18, 0, 53)), BackendSource::Conntrack),
                (IpAddr::V6("2001:db8::53".parse().expect("address")), BackendSource::EndpointSlices),
            ] {
                enriched.dst.backend = Some(Backend { ip, port: 5353, via, asked: service.clone() });
                records.push(enriched.clone());
            }
        }
        records
    }

    #[test]
    fn lines_are_the_bytes_serde_json_makes() {
        let records = variants();
        let mut all = Vec::new();
        for record in &records {
            let mut line = Vec::new();
            assert_eq!(lines(std::slice::from_ref(record), &mut line), 1);
            let mut expected = serde_json::to_vec(record).expect("serializes");
            expected.push(b'\n');
            assert_eq!(String::from_utf8_lossy(&line), String::from_utf8_lossy(&expected));
            all.extend_from_slice(&expected);
        }
        // In one batch, where the write time is formatted once per run of
        // records that share it.
        let mut batch = Vec::new();
        assert_eq!(lines(&records, &mut batch), records.len() as u64);
        assert_eq!(String::from_utf8_lossy(&batch), String::from_utf8_lossy(&all));
    }
}
