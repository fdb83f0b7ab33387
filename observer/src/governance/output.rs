//! How the offline commands name edges and their ends in JSON and text.
//!
//! In: an edge of [`Edges`] and what the inventory says of its pods. Out:
//! serializable [`EdgeOut`]/[`EndOut`] values (the documented JSON shape of
//! `docs/governance.md`) and one-line text descriptions.

use std::{fmt::Write as _, time::Duration};

use serde::Serialize;

use super::{
    edges::{EdgeKey, EdgeStats, Edges, EndKey},
    replay::{Cluster, Judged},
};
use crate::{
    flow::{Protocol, rfc3339},
    inventory::{EndpointKind, WorkloadRef},
};

/// One end of an edge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndOut {
    /// `pod`, `service`, `node`, `world`, `host` or `unknown`.
    pub kind: &'static str,
    /// The pod's namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The pod's workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadRef>,
    /// The pod's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// `true`: the manifests no longer hold this pod; it was judged as its
    /// records describe it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub gone: bool,
    /// The address, for ends that are not pods.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Names the source resolved for this address.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
}

/// A verdict on one side of a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SideOut {
    /// The judge's verdict.
    pub verdict: &'static str,
    /// The policies it cites (`namespace/name`): those that allow it, or
    /// those isolating the end that denies it.
    pub policies: Vec<String>,
}

impl SideOut {
    /// The side of a judged edge.
    pub fn of(judged: &Judged) -> Self {
        Self { verdict: judged.verdict.verdict.as_str(), policies: judged.policy_names() }
    }
}

/// A Service an edge went through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceOut {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// The address a Service flow asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AskedOut {
    /// The Service's address.
    pub ip: String,
    /// The Service's port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// An edge, as the commands print it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EdgeOut {
    /// The initiator.
    pub src: EndOut,
    /// The responder.
    pub dst: EndOut,
    /// Destination port (absent for ICMP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `tcp`, `udp`, ...
    pub protocol: String,
    /// The Service the destination was reached through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceOut>,
    /// The address the source asked for, when `dst` is the backend a
    /// Service sent it to (`port` is then the backend's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asked: Option<AskedOut>,
    /// Flows, each counted once.
    pub flows: u64,
    /// First packet of the first flow.
    pub first_seen: String,
    /// Latest packet.
    pub last_seen: String,
}

/// Formats milliseconds since the epoch as the flow log does.
pub fn time(ms: u64) -> String {
    rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(ms))
}

impl EdgeOut {
    /// The edge of `key`.
    pub fn of(cluster: &Cluster, edges: &Edges, key: &EdgeKey, stats: &EdgeStats) -> Self {
        let names = stats.names.iter().map(ToString::to_string).collect();
        Self {
            src: EndOut::of(cluster, edges, &key.src, stats.kinds.0, Vec::new()),
            dst: EndOut::of(cluster, edges, &key.dst, stats.kinds.1, names),
            port: key.port,
            protocol: Protocol(key.protocol).name().into_owned(),
            service: stats
                .service
                .as_ref()
                .map(|(namespace, name)| ServiceOut { namespace: namespace.to_string(), name: name.to_string() }),
            asked: stats.asked.map(|(ip, port)| AskedOut { ip: ip.to_string(), port }),
            flows: stats.flows(),
            first_seen: time(stats.first_ms),
            last_seen: time(stats.last_ms),
        }
    }

    /// `src -> dst port/proto`.
    pub fn describe(&self) -> String {
        let mut text = format!("{} -> {}", self.src.describe(), self.dst.describe());
        match self.port {
            Some(port) => {
                let _ = write!(text, " {port}/{}", self.protocol);
            }
            None => {
                let _ = write!(text, " {}", self.protocol);
            }
        }
        match (&self.service, &self.asked) {
            (Some(service), Some(asked)) => {
                let port = asked.port.map_or_else(String::new, |port| format!(":{port}"));
                let _ = write!(text, " (via Service {}/{} at {}{port})", service.namespace, service.name, asked.ip);
            }
            (Some(service), None) => {
                let _ = write!(text, " (via Service {}/{})", service.namespace, service.name);
            }
            (None, Some(asked)) => {
                let port = asked.port.map_or_else(String::new, |port| format!(":{port}"));
                let _ = write!(text, " (asked for {}{port})", asked.ip);
            }
            (None, None) => {}
        }
        text
    }
}

impl EndOut {
    /// The end of `end`, with the DNS names of a destination.
    pub fn of(cluster: &Cluster, edges: &Edges, end: &EndKey, kind: EndpointKind, dns: Vec<String>) -> Self {
        match end {
            EndKey::Pod(id) => {
                let seen = edges.pod(*id);
                Self {
                    kind: "pod",
                    namespace: seen.map(|seen| seen.namespace.clone()),
                    workload: seen.and_then(|seen| seen.workload.clone()),
                    pod: seen.map(|seen| seen.name.clone()),
                    gone: cluster.is_gone(*id),
                    ip: None,
                    dns: Vec::new(),
                }
            }
            EndKey::Address(ip) => Self {
                kind: kind.as_str(),
                namespace: None,
                workload: None,
                pod: None,
                gone: false,
                ip: Some(ip.to_string()),
                dns,
            },
        }
    }

    /// `namespace/pod (Kind/name)` or `ip (name, ...)`.
    pub fn describe(&self) -> String {
        let mut text = match (&self.namespace, &self.pod, &self.ip) {
            (Some(namespace), Some(pod), _) => format!("{namespace}/{pod}"),
            (_, _, Some(ip)) => format!("{} {ip}", self.kind),
            _ => self.kind.to_owned(),
        };
        if let Some(workload) = &self.workload {
            let _ = write!(text, " ({}/{})", workload.kind, workload.name);
        }
        if !self.dns.is_empty() {
            let _ = write!(text, " [{}]", self.dns.join(", "));
        }
        if self.gone {
            text.push_str(" [gone]");
        }
        text
    }
}
