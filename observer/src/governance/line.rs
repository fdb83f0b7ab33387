//! One flow-log record as the offline commands read it: borrowed from the
//! read buffer, only the fields they use.
//!
//! In: a line's bytes (through [`super::scan::line`], or serde_json's derive
//! when the scanner declines). Out: a [`FlowLine`] and its parts, and the
//! record's time in milliseconds ([`parse_time_ms`]).

use std::{borrow::Cow, collections::BTreeMap, net::IpAddr};

use serde::Deserialize;

use super::memo::Strings;
use crate::flow::{FlowState, LocalEnd};

/// One flow-log line, borrowed from the read buffer: the fields the offline
/// commands use (unknown fields are ignored, as the schema asks).
#[derive(Debug, PartialEq, Eq, Deserialize)]
pub struct FlowLine<'a> {
    /// `start`, `update` or `end`.
    #[serde(borrow)]
    pub event: Cow<'a, str>,
    /// The node that wrote it.
    #[serde(borrow)]
    pub node: Cow<'a, str>,
    /// `tcp`, `udp`, ...
    #[serde(borrow)]
    pub protocol: Cow<'a, str>,
    /// The initiator.
    #[serde(borrow)]
    pub src: LinePeer<'a>,
    /// The responder.
    #[serde(borrow)]
    pub dst: LinePeer<'a>,
    /// `src` or `dst`: which end the node observed.
    #[serde(borrow)]
    pub local: Cow<'a, str>,
    /// Where the flow stood.
    #[serde(borrow)]
    pub state: Cow<'a, str>,
    /// Traffic from src to dst.
    pub to_dst: LineTraffic,
    /// Traffic from dst to src.
    pub to_src: LineTraffic,
    /// First packet (RFC 3339).
    #[serde(borrow)]
    pub first_seen: Cow<'a, str>,
    /// Latest packet (RFC 3339).
    #[serde(borrow)]
    pub last_seen: Cow<'a, str>,
    /// The daemon's verdict, when it had an inventory.
    #[serde(default, borrow)]
    pub verdict: Option<LineVerdict<'a>>,
}

/// One end of a [`FlowLine`].
#[derive(Debug, PartialEq, Eq, Deserialize)]
pub struct LinePeer<'a> {
    /// Address.
    pub ip: IpAddr,
    /// Port; absent for ICMP.
    #[serde(default)]
    pub port: Option<u16>,
    /// `pod`, `service`, `node`, `world`, `host`, `unknown`.
    #[serde(default, borrow)]
    pub kind: Option<Cow<'a, str>>,
    /// Namespace of the pod or Service.
    #[serde(default, borrow)]
    pub namespace: Option<Cow<'a, str>>,
    /// Pod name.
    #[serde(default, borrow)]
    pub pod: Option<Cow<'a, str>>,
    /// Pod uid.
    #[serde(default, borrow)]
    pub uid: Option<Cow<'a, str>>,
    /// Node name.
    #[serde(default, borrow)]
    pub node: Option<Cow<'a, str>>,
    /// The pod's workload.
    #[serde(default, borrow)]
    pub workload: Option<LineWorkload<'a>>,
    /// The pod's labels the daemon was configured to copy, as their JSON
    /// text (made into a map only for a pod seen the first time).
    #[serde(default, borrow)]
    pub labels: RawLabels<'a>,
    /// The Service: its name (before Services were judged at their
    /// backends) or `{namespace, name}`.
    #[serde(default, borrow)]
    pub service: Option<LineService<'a>>,
    /// What DNS said of this end.
    #[serde(default, borrow)]
    pub dns: Option<LineDns<'a>>,
    /// Where a flow to a Service was sent (the destination's pod fields are
    /// then the backend's, `ip` and `port` what the socket asked for).
    #[serde(default)]
    pub backend: Option<LineBackend>,
    /// The AI provider of the catalog the daemon tagged this end with
    /// (`dst.ai_provider`), which FlowIntent `provider` peers match.
    #[serde(default, borrow)]
    pub ai_provider: Option<Cow<'a, str>>,
}

/// The backend of a Service flow in a [`FlowLine`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct LineBackend {
    /// The backend's address.
    pub ip: IpAddr,
    /// The port it took the flow on.
    pub port: u16,
}

/// A pod's workload in a [`FlowLine`].
#[derive(Debug, PartialEq, Eq, Deserialize)]
pub struct LineWorkload<'a> {
    /// `Deployment`, ... or `Pod`.
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    /// Its name.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
}

/// A Service named by a [`FlowLine`] end, in either of the schema's shapes.
#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum LineService<'a> {
    /// `{"namespace": ..., "name": ...}`.
    Object {
        /// Its namespace.
        #[serde(borrow)]
        namespace: Cow<'a, str>,
        /// Its name.
        #[serde(borrow)]
        name: Cow<'a, str>,
    },
    /// The name alone (the end's `namespace` is the Service's).
    Name(#[serde(borrow)] Cow<'a, str>),
}

/// DNS names of a [`FlowLine`] end.
#[derive(Debug, PartialEq, Eq, Deserialize)]
pub struct LineDns<'a> {
    /// Names the local pod had resolved to the address.
    #[serde(default, borrow)]
    pub names: Vec<Cow<'a, str>>,
}

/// A JSON object of strings, kept as its text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawLabels<'a>(&'a str);

impl<'a> RawLabels<'a> {
    /// Labels from their JSON text (already checked to be an object of strings).
    pub(super) fn new(text: &'a str) -> Self {
        Self(text)
    }

    /// The labels as a map (the last of a repeated key wins, as in serde_json).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        if self.0.is_empty() {
            return BTreeMap::new();
        }
        serde_json::from_str(self.0).unwrap_or_default()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawLabels<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <&'a serde_json::value::RawValue>::deserialize(deserializer)?;
        // Checked here so that a record with labels of another shape is of
        // another schema, as when they were read into a map.
        serde_json::from_str::<BTreeMap<Cow<'_, str>, Cow<'_, str>>>(raw.get()).map_err(serde::de::Error::custom)?;
        Ok(Self(raw.get()))
    }
}

/// Packets and bytes one way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct LineTraffic {
    /// Packets.
    pub packets: u64,
    /// Payload bytes.
    pub bytes: u64,
}

/// The verdict a record carries.
#[derive(Debug, PartialEq, Eq, Deserialize)]
pub struct LineVerdict<'a> {
    /// `allowed`, `denied-attempt`, `enforcement-gap`, `intent-violation`.
    #[serde(borrow)]
    pub verdict: Cow<'a, str>,
    /// The policies it cites, as their JSON text (most records of an edge
    /// cite what its earlier ones did, so they are read only when the text
    /// differs).
    #[serde(default, borrow)]
    pub policies: RawPolicies<'a>,
}

/// A JSON array of [`LinePolicy`] objects, kept as its text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawPolicies<'a>(&'a str);

impl<'a> RawPolicies<'a> {
    /// Policies from their JSON text (already checked to be an array of policies).
    pub(super) fn new(text: &'a str) -> Self {
        Self(text)
    }

    /// The array's text (empty when the record had none).
    pub fn text(&self) -> &'a str {
        self.0
    }

    /// The policies.
    pub fn to_vec(&self) -> Vec<LinePolicy<'a>> {
        if self.0.is_empty() {
            return Vec::new();
        }
        serde_json::from_str(self.0).unwrap_or_default()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawPolicies<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <&'a serde_json::value::RawValue>::deserialize(deserializer)?;
        // Checked here so that a record whose policies are of another shape
        // is of another schema, as when they were read into a Vec.
        serde_json::from_str::<Vec<LinePolicy<'_>>>(raw.get()).map_err(serde::de::Error::custom)?;
        Ok(Self(raw.get()))
    }
}

/// A policy cited by a record's verdict.
#[derive(Debug, PartialEq, Eq, Deserialize)]
pub struct LinePolicy<'a> {
    /// Its namespace.
    #[serde(borrow)]
    pub namespace: Cow<'a, str>,
    /// Its name.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// Its resourceVersion when judged.
    #[serde(default, borrow, rename = "resourceVersion")]
    pub resource_version: Option<Cow<'a, str>>,
}

impl FlowLine<'_> {
    /// The end the node observed.
    pub fn local_end(&self) -> LocalEnd {
        if self.local == "dst" { LocalEnd::Dst } else { LocalEnd::Src }
    }

    /// The flow's state; `None` for a name this build does not know.
    pub fn flow_state(&self) -> Option<FlowState> {
        Some(match &*self.state {
            "attempted" => FlowState::Attempted,
            "established" => FlowState::Established,
            "refused" => FlowState::Refused,
            "unanswered" => FlowState::Unanswered,
            "closed" => FlowState::Closed,
            "active" => FlowState::Active,
            "expired" => FlowState::Expired,
            "evicted" => FlowState::Evicted,
            _ => return None,
        })
    }

    /// The IANA number of the protocol; `None` for a name this build does not know.
    pub fn protocol_number(&self) -> Option<u8> {
        use observer_common::{PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
        Some(match &*self.protocol {
            "tcp" => PROTO_TCP,
            "udp" => PROTO_UDP,
            "sctp" => PROTO_SCTP,
            "icmp" => PROTO_ICMP,
            "icmpv6" => PROTO_ICMPV6,
            other => other.strip_prefix("ip-")?.parse().ok()?,
        })
    }
}

impl LinePeer<'_> {
    /// An end with its address and port alone.
    pub(super) fn at(ip: IpAddr, port: Option<u16>) -> Self {
        Self {
            ip,
            port,
            kind: None,
            namespace: None,
            pod: None,
            uid: None,
            node: None,
            workload: None,
            labels: RawLabels::default(),
            service: None,
            dns: None,
            backend: None,
            ai_provider: None,
        }
    }
}

impl Strings for LinePeer<'_> {
    type In<'b> = LinePeer<'b>;

    fn map_strings<'b>(&self, each: &mut dyn FnMut(&str) -> &'b str) -> LinePeer<'b> {
        let mut text = |string: &Option<Cow<'_, str>>| string.as_deref().map(|string| Cow::Borrowed(each(string)));
        let (kind, namespace, pod, uid, node) =
            (text(&self.kind), text(&self.namespace), text(&self.pod), text(&self.uid), text(&self.node));
        let workload = self.workload.as_ref().map(|workload| LineWorkload {
            kind: Cow::Borrowed(each(&workload.kind)),
            name: Cow::Borrowed(each(&workload.name)),
        });
        let labels = RawLabels(each(self.labels.0));
        let service = self.service.as_ref().map(|service| match service {
            LineService::Object { namespace, name } => {
                LineService::Object { namespace: Cow::Borrowed(each(namespace)), name: Cow::Borrowed(each(name)) }
            }
            LineService::Name(name) => LineService::Name(Cow::Borrowed(each(name))),
        });
        let dns = self
            .dns
            .as_ref()
            .map(|dns| LineDns { names: dns.names.iter().map(|name| Cow::Borrowed(each(name))).collect() });
        let ai_provider = self.ai_provider.as_deref().map(|provider| Cow::Borrowed(each(provider)));
        LinePeer {
            ip: self.ip,
            port: self.port,
            kind,
            namespace,
            pod,
            uid,
            node,
            workload,
            labels,
            service,
            dns,
            backend: self.backend,
            ai_provider,
        }
    }
}

impl Strings for LineVerdict<'_> {
    type In<'b> = LineVerdict<'b>;

    fn map_strings<'b>(&self, each: &mut dyn FnMut(&str) -> &'b str) -> LineVerdict<'b> {
        LineVerdict { verdict: Cow::Borrowed(each(&self.verdict)), policies: RawPolicies(each(self.policies.0)) }
    }
}

/// Milliseconds since the Unix epoch of an RFC 3339 UTC time as the flow
/// log writes it (`2026-11-23T04:17:29.793Z`; fractions of any length, `Z`
/// or `+00:00`); `None` for anything else.
pub fn parse_time_ms(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    let digits = |from: usize, len: usize| -> Option<u64> {
        let slice = bytes.get(from..from + len)?;
        slice.iter().try_fold(0_u64, |acc, b| b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0')))
    };
    if bytes.len() < 20 || bytes[4] != b'-' || bytes[7] != b'-' || bytes[10] != b'T' || bytes[13] != b':' {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut at = 19;
    let mut millis = 0;
    if bytes.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while bytes.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        // The first three digits, as milliseconds (`.7` is 700).
        millis = (0..3).fold(0, |millis, place| {
            let digit = if start + place < at { u64::from(bytes[start + place] - b'0') } else { 0 };
            millis * 10 + digit
        });
    }
    if !matches!(&text[at..], "Z" | "+00:00") {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let year = if month <= 2 { year.checked_sub(1)? } else { year };
    let era = year / 400;
    let yoe = year - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_the_flow_log_writes_them() {
        assert_eq!(parse_time_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(parse_time_ms("2024-02-29T12:34:56.789Z"), Some(1_709_210_096_789));
        assert_eq!(parse_time_ms("2024-02-29T12:34:56Z"), Some(1_709_210_096_000));
        assert_eq!(parse_time_ms("2024-02-29T12:34:56.7+00:00"), Some(1_709_210_096_700));
        assert_eq!(parse_time_ms("2024-02-29T12:34:56.789999Z"), Some(1_709_210_096_789));
        assert_eq!(parse_time_ms("2024-02-29 12:34:56Z"), None);
        assert_eq!(parse_time_ms("2024-13-29T12:34:56Z"), None);
        assert_eq!(parse_time_ms("2024-02-29T12:34:56.789+02:00"), None);
    }
}
