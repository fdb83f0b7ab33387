//! One end of a flow as intents and the judge see it.
//!
//! In: what enrichment resolved for an address (kind, pod, Service, workload,
//! and for the destination of egress the DNS names the source pod resolved
//! for it) plus the address and port the flow used. Out: a borrowed, copyable
//! [`FlowEnd`], so judging a flow allocates nothing to describe its ends.

use std::{net::IpAddr, sync::Arc};

use crate::{
    ai::AiDestination,
    flow::PeerDns,
    inventory::{EndpointInfo, EndpointKind, WorkloadRef, model::Pod},
};

/// The workload a pod belongs to, borrowed: the form of
/// [`WorkloadRef`] a [`FlowEnd`] holds, so judging allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadName<'a> {
    /// `Deployment`, `StatefulSet`, ... or `Pod` for a bare pod.
    pub kind: &'a str,
    /// Its name.
    pub name: &'a str,
}

impl WorkloadName<'_> {
    /// The owned [`WorkloadRef`].
    pub fn to_ref(self) -> WorkloadRef {
        WorkloadRef { kind: self.kind.to_owned(), name: self.name.to_owned() }
    }
}

impl<'a> From<&'a WorkloadRef> for WorkloadName<'a> {
    fn from(workload: &'a WorkloadRef) -> Self {
        Self { kind: &workload.kind, name: &workload.name }
    }
}

/// One end of a flow.
#[derive(Clone, Copy, Debug)]
pub struct FlowEnd<'a> {
    /// What is there.
    pub kind: EndpointKind,
    /// The address the flow used.
    pub ip: IpAddr,
    /// The port the flow used; absent for ICMP.
    pub port: Option<u16>,
    /// The pod, when the end is a pod the inventory holds: its labels, named
    /// ports and namespace are what policies and intents match.
    pub pod: Option<&'a Pod>,
    /// Namespace of the pod or Service.
    pub namespace: Option<&'a str>,
    /// Pod name.
    pub pod_name: Option<&'a str>,
    /// Pod uid.
    pub uid: Option<&'a str>,
    /// Service name.
    pub service: Option<&'a str>,
    /// The pod's workload.
    pub workload: Option<WorkloadName<'a>>,
    /// For the destination of egress: the names the source pod had resolved
    /// for this address (`Some(&[])`: never resolved, a direct-IP
    /// connection); `None` when DNS says nothing (not egress, or no DNS data).
    /// `fqdn` peers match these names.
    pub names: Option<&'a [Arc<str>]>,
    /// For the destination of egress: the AI provider of the catalog it is
    /// (`dst.ai_provider`); `provider` peers match it.
    pub provider: Option<&'a str>,
}

impl<'a> FlowEnd<'a> {
    /// An end with nothing known but its kind and address.
    pub fn address(kind: EndpointKind, ip: IpAddr, port: Option<u16>) -> Self {
        Self {
            kind,
            ip,
            port,
            pod: None,
            namespace: None,
            pod_name: None,
            uid: None,
            service: None,
            workload: None,
            names: None,
            provider: None,
        }
    }

    /// An address outside the cluster.
    pub fn world(ip: IpAddr, port: Option<u16>) -> Self {
        Self::address(EndpointKind::World, ip, port)
    }

    /// A pod; its workload is its controller (for example a ReplicaSet) until
    /// [`Self::with_workload`] names the top of the chain, or the pod itself
    /// when it has no controller.
    pub fn pod(pod: &'a Pod, ip: IpAddr, port: Option<u16>) -> Self {
        let workload = match &pod.owner {
            Some(owner) => WorkloadName { kind: &owner.kind, name: &owner.name },
            None => WorkloadName { kind: "Pod", name: &pod.name },
        };
        Self {
            kind: EndpointKind::Pod,
            ip,
            port,
            pod: Some(pod),
            namespace: Some(&pod.namespace),
            pod_name: Some(&pod.name),
            uid: Some(&pod.uid),
            service: None,
            workload: Some(workload),
            names: None,
            provider: None,
        }
    }

    /// A Service by its ClusterIP.
    pub fn service(namespace: &'a str, name: &'a str, ip: IpAddr, port: Option<u16>) -> Self {
        Self { namespace: Some(namespace), service: Some(name), ..Self::address(EndpointKind::Service, ip, port) }
    }

    /// An end as enrichment resolved it. `pod` is the inventory's pod for a
    /// pod end (`Snapshot::pod(uid)`): its labels and named ports are what
    /// policies and intents match; without it a pod end is judged as an address.
    pub fn from_endpoint(endpoint: &'a EndpointInfo, pod: Option<&'a Pod>, ip: IpAddr, port: Option<u16>) -> Self {
        Self {
            kind: endpoint.kind,
            ip,
            port,
            pod,
            namespace: endpoint.namespace.as_deref(),
            pod_name: endpoint.pod.as_deref(),
            uid: endpoint.uid.as_deref(),
            service: endpoint.service.as_ref().map(|service| service.name.as_str()),
            workload: endpoint.workload.as_ref().map(WorkloadName::from),
            names: None,
            provider: None,
        }
    }

    /// The same end with what DNS said about it: the flow record's
    /// `dns` field of this end (see [`FlowEnd::names`]).
    pub fn with_dns(self, dns: Option<&'a PeerDns>) -> Self {
        Self { names: dns.map(|dns| dns.names.as_slice()), ..self }
    }

    /// The same end with the AI provider the record's `dst.ai_provider` names.
    pub fn with_ai(self, ai: Option<&'a AiDestination>) -> Self {
        Self { provider: ai.map(|ai| &*ai.provider), ..self }
    }

    /// The same end with the names the source pod resolved for it.
    pub fn with_names(self, names: &'a [Arc<str>]) -> Self {
        Self { names: Some(names), ..self }
    }

    /// The same end with its workload named.
    pub fn with_workload(self, kind: &'a str, name: &'a str) -> Self {
        Self { workload: Some(WorkloadName { kind, name }), ..self }
    }
}
