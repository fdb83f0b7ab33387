//! The flow record: what the observer says about one flow, as written to the
//! JSON flow log.
//!
//! In: a flow's key and counters from capture. Out: a serde-serializable record
//! whose shape is documented in the README ("Flow log"). Later stages add
//! fields (pods, workloads, verdicts, names) without changing existing ones.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use observer_common::{FAMILY_IPV4, FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, tcp_flags};
use serde::{Serialize, Serializer};

// The record's parts that other folders define, each from its own leaf file
// (not the folder's `mod.rs`), which imports nothing that imports this one.
use crate::{ai::destination::AiDestination, inventory::endpoint::Endpoint, judge::verdict::FlowVerdict};

/// Why a record was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordEvent {
    /// First record of a flow still going on.
    Start,
    /// The flow's counters or state changed.
    Update,
    /// Last record of the flow (a flow that starts and ends between two
    /// flushes has only this one).
    End,
}

impl RecordEvent {
    /// The name used in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Update => "update",
            Self::End => "end",
        }
    }
}

/// Where a flow stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowState {
    /// TCP: a SYN was sent or received, no handshake yet.
    Attempted,
    /// TCP: the handshake completed.
    Established,
    /// TCP: the connect was answered with a reset.
    Refused,
    /// TCP: the connect got no answer before it was given up.
    Unanswered,
    /// TCP: the connection closed after it was established.
    Closed,
    /// UDP, SCTP, ICMP: packets are flowing.
    Active,
    /// Idle for longer than the idle timeout (TCP: no close was seen).
    Expired,
    /// The kernel's flow map evicted the flow before it ended (map full).
    Evicted,
}

impl FlowState {
    /// The name used in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Attempted => "attempted",
            Self::Established => "established",
            Self::Refused => "refused",
            Self::Unanswered => "unanswered",
            Self::Closed => "closed",
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Evicted => "evicted",
        }
    }
}

/// One end of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Peer {
    /// Address.
    pub ip: IpAddr,
    /// Port; absent for ICMP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Who is at this end (pod, service, node, world, host), once enriched;
    /// its fields sit beside `ip` and `port`.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    /// Where a flow to a Service (or a redirected address) was really sent:
    /// set on the destination when the node's conntrack table or the
    /// Service's EndpointSlices name the backend; `endpoint` is then that
    /// backend, and `ip` and `port` stay what the socket saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
    /// The names the local pod resolved for this address: set on the
    /// remote end of egress flows to the world (and of any flow whose remote
    /// address the pod resolved).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<PeerDns>,
    /// The AI provider API or model hub of the catalog this end is
    /// (`ai_provider`, `ai_kind`, `ai_via`, `ai_name` beside `ip`): set on
    /// the destination of egress to the world ([`crate::ai::tag::tag_remote`]).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub ai: Option<AiDestination>,
}

/// The backend a flow to a Service was sent to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Backend {
    /// The backend's address.
    pub ip: IpAddr,
    /// The port it took the flow on.
    pub port: u16,
    /// Who said so.
    pub via: BackendSource,
    /// The destination as the socket's address resolves (the Service, or
    /// what a redirected address is): what the pod asked for, which intents
    /// match besides the backend.
    #[serde(skip)]
    pub asked: Endpoint,
}

/// Where a [`Backend`] was learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendSource {
    /// The node's conntrack table: the DNAT of this very connection.
    Conntrack,
    /// The Service's EndpointSlices, which list only this ready backend.
    #[serde(rename = "endpointslices")]
    EndpointSlices,
}

impl BackendSource {
    /// The name used in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Conntrack => "conntrack",
            Self::EndpointSlices => "endpointslices",
        }
    }
}

/// What DNS says about the remote end of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerDns {
    /// Names the local pod had resolved to this address when the flow
    /// started (sorted, at most [`crate::dns::MAX_NAMES`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<Arc<str>>,
    /// `false`: the pod never resolved this address (a direct-IP connection).
    pub resolved: bool,
}

/// Packets and bytes in one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Traffic {
    /// Packets: for TCP counted from the socket, segments as the socket
    /// counted them (handshake included); otherwise packets as the cgroup
    /// hooks saw them (a GSO super-packet counts once).
    pub packets: u64,
    /// Transport payload bytes (after the TCP, UDP, SCTP or ICMP header);
    /// for TCP counted from the socket, each byte once (acknowledged by the
    /// peer when sent, in order when received), retransmissions not counted.
    pub bytes: u64,
}

/// ICMP message type and code of an ICMP flow (echo replies fold onto the
/// request type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Icmp {
    /// Message type.
    #[serde(rename = "type")]
    pub kind: u8,
    /// Message code.
    pub code: u8,
}

/// The cgroup of the local socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cgroup {
    /// cgroup v2 id (inode).
    pub id: u64,
    /// Path below the cgroup v2 root, if the cgroup still exists.
    pub path: Option<Arc<str>>,
}

/// Which end of the flow is on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalEnd {
    /// The initiator.
    Src,
    /// The responder.
    Dst,
}

impl LocalEnd {
    /// The name used in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Src => "src",
            Self::Dst => "dst",
        }
    }
}

/// TCP flags seen in each direction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TcpFlags {
    /// Flags sent by the source.
    pub to_dst: FlagSet,
    /// Flags sent by the destination.
    pub to_src: FlagSet,
}

/// A set of TCP flags, serialized as names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlagSet(pub u8);

/// The flags a [`FlagSet`] names, in the order it lists them.
pub(crate) const FLAG_NAMES: [(u8, &str); 5] = [
    (tcp_flags::SYN, "SYN"),
    (tcp_flags::ACK, "ACK"),
    (tcp_flags::PSH, "PSH"),
    (tcp_flags::FIN, "FIN"),
    (tcp_flags::RST, "RST"),
];

impl Serialize for FlagSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(FLAG_NAMES.iter().filter(|(bit, _)| self.0 & bit != 0).map(|(_, name)| name))
    }
}

/// One line of the flow log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowRecord {
    /// When the record was written (RFC 3339, UTC).
    #[serde(serialize_with = "serialize_time")]
    pub time: SystemTime,
    /// Why it was written.
    pub event: RecordEvent,
    /// The node that observed it.
    pub node: Arc<str>,
    /// `tcp`, `udp`, `sctp`, `icmp`, `icmpv6`, or `ip-<number>`.
    pub protocol: Protocol,
    /// `ipv4` or `ipv6`.
    pub family: Family,
    /// The initiator (the end that sent the first packet).
    pub src: Peer,
    /// The responder.
    pub dst: Peer,
    /// Which end is local to this node.
    pub local: LocalEnd,
    /// ICMP type and code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp: Option<Icmp>,
    /// The local socket's cgroup.
    pub cgroup: Cgroup,
    /// Where the flow stands.
    pub state: FlowState,
    /// Traffic from src to dst.
    pub to_dst: Traffic,
    /// Traffic from dst to src.
    pub to_src: Traffic,
    /// TCP flags seen each way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<TcpFlags>,
    /// First packet.
    #[serde(serialize_with = "serialize_time")]
    pub first_seen: SystemTime,
    /// Latest packet.
    #[serde(serialize_with = "serialize_time")]
    pub last_seen: SystemTime,
    /// `last_seen - first_seen` in milliseconds.
    pub duration_ms: u64,
    /// The judgement of the flow against NetworkPolicies and intents, when an
    /// inventory is available; shared by the records of a flow judged alike.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Arc<FlowVerdict>>,
    /// The judgement of the flow under the policies in effect now, when they
    /// judge it otherwise than those it started under (`verdict`): the
    /// connection outlived a policy change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict_now: Option<Arc<FlowVerdict>>,
    /// Where the record stands in its connection, for the stages after
    /// capture; not written to the log.
    #[serde(skip)]
    pub progress: Progress,
}

/// A record's place in its connection: what lets the judge and the metrics
/// work per record without keeping state per flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Capture's handle of the connection: the same on each of its records,
    /// never reused while the observer runs (0: not from capture).
    pub flow: u64,
    /// Whether this is the connection's first record.
    pub first: bool,
    /// Traffic from src to dst since the connection's previous record (all
    /// of it on the first).
    pub new_to_dst: Traffic,
    /// Traffic from dst to src since the connection's previous record.
    pub new_to_src: Traffic,
}

/// The IP protocol of a flow, or of a port a policy, intent, Service or
/// container declares: the one protocol type, by IANA number. The three a
/// Kubernetes port can name are [`Protocol::from_k8s`]'s; records name any.
// Ordered by number, which keeps TCP < UDP < SCTP as the Kubernetes enum had it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Protocol(pub u8);

impl Protocol {
    /// TCP (the Kubernetes default).
    pub const TCP: Self = Self(PROTO_TCP);
    /// UDP.
    pub const UDP: Self = Self(PROTO_UDP);
    /// SCTP.
    pub const SCTP: Self = Self(PROTO_SCTP);

    /// Parses the Kubernetes spelling (`TCP`, `UDP`, `SCTP`); absent means TCP.
    pub fn from_k8s(value: Option<&str>) -> Option<Self> {
        match value {
            None | Some("TCP") => Some(Self::TCP),
            Some("UDP") => Some(Self::UDP),
            Some("SCTP") => Some(Self::SCTP),
            Some(_) => None,
        }
    }

    /// The Kubernetes spelling (`TCP`, `UDP`, `SCTP`), for a protocol a port can name.
    pub fn k8s_name(self) -> Option<&'static str> {
        match self.0 {
            PROTO_TCP => Some("TCP"),
            PROTO_UDP => Some("UDP"),
            PROTO_SCTP => Some("SCTP"),
            _ => None,
        }
    }

    /// This protocol, if a Kubernetes port can name it (policies and intents
    /// match ports only of these); `None` for ICMP and the rest.
    pub fn with_ports(self) -> Option<Self> {
        self.k8s_name().map(|_| self)
    }

    /// The name used in records.
    pub fn name(self) -> std::borrow::Cow<'static, str> {
        match self.0 {
            PROTO_TCP => "tcp".into(),
            PROTO_UDP => "udp".into(),
            PROTO_SCTP => "sctp".into(),
            PROTO_ICMP => "icmp".into(),
            PROTO_ICMPV6 => "icmpv6".into(),
            other => format!("ip-{other}").into(),
        }
    }

    /// ICMP or ICMPv6.
    pub fn is_icmp(self) -> bool {
        matches!(self.0, PROTO_ICMP | PROTO_ICMPV6)
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name())
    }
}

/// Address family of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

impl Family {
    /// The name used in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        }
    }
}

/// Serializes the enums records name by `as_str`.
macro_rules! serialize_as_str {
    ($($name:ty),*) => {$(
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    )*};
}

serialize_as_str!(RecordEvent, FlowState, LocalEnd, Family);

/// The local and remote addresses of a key.
pub fn key_addrs(key: &FlowKey) -> (IpAddr, IpAddr) {
    if key.family == FAMILY_IPV4 {
        let v4 = |bytes: &[u8; 16]| IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]));
        (v4(&key.local_addr), v4(&key.remote_addr))
    } else {
        (IpAddr::V6(Ipv6Addr::from(key.local_addr)), IpAddr::V6(Ipv6Addr::from(key.remote_addr)))
    }
}

fn serialize_time<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(Rfc3339::of(*time).as_str())
}

/// Formats a time as RFC 3339 in UTC with milliseconds.
pub fn rfc3339(time: SystemTime) -> String {
    Rfc3339::of(time).as_str().to_owned()
}

/// A time formatted as RFC 3339 in UTC with milliseconds
/// (`2026-11-23T04:17:29.793Z`, years up to 9999), on the stack: a record
/// has three of them.
#[derive(Clone, Copy)]
pub(crate) struct Rfc3339([u8; 24]);

impl Rfc3339 {
    pub(crate) fn of(time: SystemTime) -> Self {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let secs = since.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = civil_from_days(days);
        let mut text = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut value: u64| {
            for index in (at..at + width).rev() {
                text[index] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, rem / 3600);
        put(14, 2, rem / 60 % 60);
        put(17, 2, rem % 60);
        put(20, 3, u64::from(since.subsec_millis()));
        Self(text)
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap_day = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339(leap_day), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn flags_serialize_as_names() {
        let flags = FlagSet(tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST);
        assert_eq!(serde_json::to_string(&flags).expect("json"), r#"["SYN","ACK","RST"]"#);
    }
}
