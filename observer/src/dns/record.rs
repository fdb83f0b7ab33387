//! One line of the DNS log.
//!
//! In: a query and its answer (or the lack of one) from the tracker. Out: a
//! serde-serializable [`DnsLogEntry`] whose shape the README documents ("DNS
//! log"); the writer fills in who the client is from the inventory.

use std::{borrow::Cow, net::IpAddr, sync::Arc, time::SystemTime};

use observer_common::DnsEvent;
use serde::{Serialize, Serializer};

use super::message::{AnswerData, DnsMessage, rcode_name, type_name};
use crate::flow::{Cgroup, Peer, Protocol, rfc3339};

/// What happened to a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsLogEvent {
    /// The query was answered (with any response code).
    Answer,
    /// No answer came within the timeout (or before the observer stopped).
    Unanswered,
    /// An answer to no query the observer saw (its names are not learned).
    Unmatched,
}

/// One answer record, as logged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LoggedAnswer {
    /// Owner name.
    pub name: Arc<str>,
    /// Record type mnemonic.
    #[serde(rename = "type")]
    pub rtype: String,
    /// TTL in seconds.
    pub ttl: u32,
    /// Address or alias target; absent for other types.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// One line of the DNS log: a query and what came of it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DnsLogEntry {
    /// When the query was sent (for unmatched answers: received).
    #[serde(serialize_with = "serialize_time")]
    pub time: SystemTime,
    /// What happened.
    pub event: DnsLogEvent,
    /// The node that observed it.
    pub node: Arc<str>,
    /// `udp` or `tcp`.
    pub protocol: Protocol,
    /// The asking socket, enriched like a flow end (pod, workload, labels).
    pub client: Peer,
    /// The DNS server.
    pub server: Peer,
    /// The asking socket's cgroup.
    pub cgroup: Cgroup,
    /// DNS transaction id.
    pub id: u16,
    /// The name asked for; absent only when the question was unreadable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Arc<str>>,
    /// Record type asked for.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub qtype: Option<String>,
    /// Response code (`NOERROR`, `NXDOMAIN`, `REFUSED`, …); absent when unanswered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rcode: Option<Cow<'static, str>>,
    /// Answer records (A, AAAA and CNAME with data; others by type only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<LoggedAnswer>,
    /// Milliseconds from query to answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// The answer was only partly decoded (cut at 512 bytes, or malformed).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

fn serialize_time<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&rfc3339(*time))
}

fn peer(endpoint: (IpAddr, u16)) -> Peer {
    Peer { ip: endpoint.0, port: Some(endpoint.1), endpoint: None, backend: None, dns: None, ai: None }
}

impl DnsLogEntry {
    /// A query just sent, awaiting its answer.
    pub(super) fn query(
        node: &Arc<str>,
        protocol: Protocol,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
        cgroup: Cgroup,
        message: &DnsMessage,
        at: SystemTime,
    ) -> Self {
        Self {
            time: at,
            event: DnsLogEvent::Unanswered,
            node: Arc::clone(node),
            protocol,
            client: peer(local),
            server: peer(remote),
            cgroup,
            id: message.id,
            name: message.question.as_ref().map(|question| Arc::clone(&question.name)),
            qtype: message.question.as_ref().map(|question| type_name(question.qtype)),
            rcode: None,
            answers: Vec::new(),
            latency_ms: None,
            partial: false,
        }
    }

    /// This query, answered by `message` at `at`.
    pub(super) fn answered(mut self, message: &DnsMessage, at: SystemTime) -> Self {
        self.event = DnsLogEvent::Answer;
        self.rcode = Some(rcode_name(message.rcode));
        self.answers = logged_answers(message);
        self.latency_ms = at.duration_since(self.time).ok().map(|latency| latency.as_secs_f64() * 1000.0);
        self.partial = message.partial;
        self
    }

    /// This query, never answered.
    pub(super) fn unanswered(mut self) -> Self {
        self.event = DnsLogEvent::Unanswered;
        self
    }

    /// An answer that matched no query seen.
    pub(super) fn unmatched(
        node: &Arc<str>,
        header: &DnsEvent,
        (local_ip, remote_ip): (IpAddr, IpAddr),
        cgroup: Cgroup,
        message: &DnsMessage,
        at: SystemTime,
    ) -> Self {
        let query = Self::query(
            node,
            Protocol(header.key.protocol),
            (local_ip, header.key.local_port),
            (remote_ip, header.key.remote_port),
            cgroup,
            message,
            at,
        );
        Self { event: DnsLogEvent::Unmatched, latency_ms: None, ..query.answered(message, at) }
    }
}

fn logged_answers(message: &DnsMessage) -> Vec<LoggedAnswer> {
    message
        .answers
        .iter()
        .map(|answer| LoggedAnswer {
            name: Arc::clone(&answer.name),
            rtype: type_name(answer.rtype),
            ttl: answer.ttl,
            data: match &answer.data {
                AnswerData::Addr(ip) => Some(ip.to_string()),
                AnswerData::Alias(name) => Some(name.to_string()),
                AnswerData::Other => None,
            },
        })
        .collect()
}
