//! Which Service a flow's destination is, and which pods back it.
//!
//! In: Services (ClusterIPs, ports, NodePorts) and EndpointSlices (ready
//! addresses and ports, by port name). Out: a [`ServiceIndex`] from
//! ClusterIP and port, or address family and NodePort, to the Service's
//! [`ServiceBackends`]: what a flow to that address was sent to when
//! kube-proxy (or a socket-level load balancer) picked one of them. Rebuilt
//! when Services or EndpointSlices change, never per flow.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use super::{
    endpoint::Endpoint,
    model::{EndpointSlice, Service},
};
use crate::FastMap;

/// One port of a Service and the ready backends that take its traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceBackends {
    /// The Service, as the end of a flow (kind `service`).
    pub service: Endpoint,
    /// The ready backends' addresses, each with the port it takes this
    /// Service port's traffic on (from the EndpointSlice port of the same
    /// name), of the address family of the Service address; sorted.
    pub backends: Box<[SocketAddr]>,
}

/// Service ports by ClusterIP and by NodePort.
#[derive(Clone, Debug, Default)]
pub struct ServiceIndex {
    /// By ClusterIP, port and protocol number.
    by_cluster_ip: FastMap<(IpAddr, u16, u8), Arc<ServiceBackends>>,
    /// By address family (`true`: IPv4), NodePort and protocol number.
    by_node_port: FastMap<(bool, u16, u8), Arc<ServiceBackends>>,
}

impl ServiceIndex {
    /// Indexes every Service port with the ready addresses its EndpointSlices
    /// list. `services_by_ip` gives the Service endpoints already built for
    /// the ClusterIPs, so that a flow's end is the same endpoint either way.
    pub fn build(
        services: &BTreeMap<(String, String), Arc<Service>>,
        slices: &BTreeMap<(String, String), Arc<EndpointSlice>>,
        services_by_ip: &FastMap<IpAddr, Endpoint>,
    ) -> Self {
        let mut of_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices.values() {
            if let Some(service) = &slice.service {
                of_service.entry((slice.namespace.as_str(), service.as_str())).or_default().push(slice);
            }
        }
        let mut index = Self::default();
        for service in services.values() {
            let endpoint = service
                .cluster_ips
                .first()
                .and_then(|ip| services_by_ip.get(ip))
                .cloned()
                .unwrap_or_else(|| service.endpoint());
            let slices = of_service.get(&(service.namespace.as_str(), service.name.as_str()));
            for port in &service.ports {
                let backends_of = |ipv4: bool| -> Arc<ServiceBackends> {
                    let mut backends: Vec<SocketAddr> = slices
                        .into_iter()
                        .flatten()
                        .flat_map(|slice| {
                            // Slice ports match Service ports by name (both
                            // absent for a Service's single unnamed port).
                            let target = slice
                                .ports
                                .iter()
                                .find(|target| target.name == port.name && target.protocol == port.protocol);
                            target.into_iter().flat_map(|target| {
                                slice
                                    .ready
                                    .iter()
                                    .filter(move |ip| ip.is_ipv4() == ipv4)
                                    .map(|ip| SocketAddr::new(*ip, target.port))
                            })
                        })
                        .collect();
                    backends.sort_unstable();
                    backends.dedup();
                    Arc::new(ServiceBackends { service: endpoint.clone(), backends: backends.into() })
                };
                let protocol = port.protocol.0;
                for ip in &service.cluster_ips {
                    index.by_cluster_ip.insert((*ip, port.port, protocol), backends_of(ip.is_ipv4()));
                }
                if let Some(node_port) = port.node_port {
                    for ipv4 in [true, false] {
                        index.by_node_port.insert((ipv4, node_port, protocol), backends_of(ipv4));
                    }
                }
            }
        }
        index
    }

    /// The Service port a flow to `ip`:`port` over `protocol` reaches: by
    /// ClusterIP, else, when `ip` is a node's address, by NodePort.
    pub fn port(&self, ip: IpAddr, port: u16, protocol: u8, node_address: bool) -> Option<&Arc<ServiceBackends>> {
        self.by_cluster_ip
            .get(&(ip, port, protocol))
            .or_else(|| if node_address { self.by_node_port.get(&(ip.is_ipv4(), port, protocol)) } else { None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        inventory::model::{ContainerPort, Protocol, ServicePort},
        testing::{service, slice},
    };

    fn keyed<T>(items: Vec<T>, key: impl Fn(&T) -> (String, String)) -> BTreeMap<(String, String), Arc<T>> {
        items.into_iter().map(|item| (key(&item), Arc::new(item))).collect()
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap_or_else(|error| panic!("{text}: {error}"))
    }

    #[test]
    fn ports_map_by_name_and_family_to_ready_backends() {
        let mut dns = service("kube-system", "kube-dns", "198.19.0.10");
        dns.cluster_ips.push("2001:db8:198:19::a".parse().expect("ip"));
        dns.ports = vec![
            ServicePort { name: Some("dns".to_owned()), port: 53, protocol: Protocol::UDP, node_port: None },
            ServicePort {
                name: Some("metrics".to_owned()),
                port: 9153,
                protocol: Protocol::TCP,
                node_port: Some(30153),
            },
        ];
        let mut v4 = slice("kube-system", "kube-dns", 0, &["198.18.0.54", "198.18.0.53"]);
        v4.ports = vec![
            ContainerPort { name: Some("dns".to_owned()), port: 5353, protocol: Protocol::UDP },
            ContainerPort { name: Some("metrics".to_owned()), port: 9153, protocol: Protocol::TCP },
        ];
        let mut v6 = slice("kube-system", "kube-dns", 0, &["2001:db8::53"]);
        v6.name = "kube-dns-v6".to_owned();
        v6.ports = vec![ContainerPort { name: Some("dns".to_owned()), port: 53, protocol: Protocol::UDP }];
        let services = keyed(vec![dns], |s| (s.namespace.clone(), s.name.clone()));
        let slices = keyed(vec![v4, v6], |s| (s.namespace.clone(), s.name.clone()));
        let index = ServiceIndex::build(&services, &slices, &FastMap::default());
        let backends = |ip: &str, port, protocol, node| {
            index
                .port(ip.parse().expect("ip"), port, protocol, node)
                .map(|found| found.backends.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        assert_eq!(
            backends("198.19.0.10", 53, 17, false),
            Some(vec!["198.18.0.53:5353".to_owned(), "198.18.0.54:5353".to_owned()])
        );
        assert_eq!(backends("2001:db8:198:19::a", 53, 17, false), Some(vec!["[2001:db8::53]:53".to_owned()]));
        assert_eq!(backends("198.19.0.10", 53, 6, false), None, "no TCP port 53");
        assert_eq!(backends("2001:db8:198:19::a", 9153, 6, false), Some(Vec::new()), "no IPv6 slice lists it");
        assert_eq!(
            backends("198.18.255.10", 30153, 6, true),
            Some(vec!["198.18.0.53:9153".to_owned(), "198.18.0.54:9153".to_owned()])
        );
        assert_eq!(backends("198.18.255.10", 30153, 6, false), None, "a NodePort only on a node's address");
        let found = index.port(addr("198.19.0.10:53").ip(), 53, 17, false).expect("found");
        assert_eq!(found.service.service.as_ref().map(|service| service.name.as_str()), Some("kube-dns"));
    }
}
