//! Services the way kube-proxy's iptables mode writes them, in the lab node's nat table: Service
//! descriptions (ClusterIPs, ports, NodePorts, backend pods) in, `iptables-restore` scripts and a
//! guard out that keeps the rules in sync and removes them (and the state file's record) on drop.
//!
//! The chains are kube-proxy's: `PREROUTING`/`OUTPUT` → `KUBE-SERVICES` → `KUBE-SVC-*` (one rule
//! per backend, `-m statistic --mode random --probability 1/n`, 1/(n-1), …) → `KUBE-SEP-*` (DNAT to
//! the backend), NodePorts through `KUBE-NODEPORTS` → `KUBE-EXT-*` (marked for masquerade), and
//! `KUBE-POSTROUTING` masquerading what was marked. Like kube-proxy, every change rewrites the whole
//! set in one `iptables-restore --noflush` transaction.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
};

use serde::{Deserialize, Serialize};

use crate::{
    error::Result,
    exec,
    lab::Pod,
    state::{LabState, TOOL_TIMEOUT},
};

/// The kube-dns Service's ClusterIP (the resolver in every pod's `resolv.conf`).
pub const KUBE_DNS_IP_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
/// The kube-dns Service's IPv6 ClusterIP.
pub const KUBE_DNS_IP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x198, 0x19, 0, 0, 0, 0x10);
/// The mark kube-proxy sets on packets to masquerade.
const MASQ_MARK: &str = "0x4000";
/// The comment on the jumps from the built-in chains, which finds them again for removal.
const PORTALS: &str = "kubernetes service portals";
const POSTROUTING: &str = "kubernetes postrouting rules";

/// ClusterIP `host` of the lab's Service range, 198.19.0.`host`.
pub fn cluster_ip_v4(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 0, host)
}

/// IPv6 ClusterIP `host` of the lab's Service range, 2001:db8:198:19::`host` (the same digits, hex).
pub fn cluster_ip_v6(host: u8) -> Ipv6Addr {
    let h = u16::from_str_radix(&host.to_string(), 16).unwrap_or(u16::from(host));
    Ipv6Addr::new(0x2001, 0xdb8, 0x198, 0x19, 0, 0, 0, h)
}

/// A Service port's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// As iptables spells it.
    fn iptables(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }

    /// As Kubernetes spells it.
    pub fn kubernetes(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        }
    }
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// The port's name (`http`, `dns`, …).
    pub name: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// The port on the ClusterIP.
    pub port: u16,
    /// The port on the backend pods.
    pub target_port: u16,
    /// The NodePort (30000-32767) on the node's addresses, if the Service has one.
    pub node_port: Option<u16>,
}

/// A backend pod of a Service, as its EndpointSlice lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    /// The Pod object's name.
    pub name: String,
    /// The Pod object's uid (the lab pod's).
    pub uid: String,
    /// Its IPv4 address.
    pub ipv4: Ipv4Addr,
    /// Its IPv6 address, if it has one.
    pub ipv6: Option<Ipv6Addr>,
}

/// A Service: what its manifest says and which lab pods are behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Its namespace (its backends' too).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its ClusterIPs, at most one per family; none for a headless Service.
    pub cluster_ips: Vec<IpAddr>,
    /// The pod labels it selects.
    pub selector: Vec<(String, String)>,
    /// Its ports.
    pub ports: Vec<ServicePort>,
    /// Its ready backends.
    pub backends: Vec<Backend>,
}

impl Service {
    /// A Service `namespace/name` with the ClusterIPs `cluster_ips` (none: headless), no ports, no
    /// selector and no backends yet.
    pub fn new(namespace: &str, name: &str, cluster_ips: &[IpAddr]) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            cluster_ips: cluster_ips.to_vec(),
            selector: Vec::new(),
            ports: Vec::new(),
            backends: Vec::new(),
        }
    }

    /// A headless Service (`clusterIP: None`): DNS names only, no rules.
    pub fn headless(namespace: &str, name: &str) -> Self {
        Self::new(namespace, name, &[])
    }

    /// kube-dns in `kube-system` at 198.19.0.10 (and 2001:db8:198:19::10 when `ipv6`), port 53 on
    /// UDP (`dns`) and TCP (`dns-tcp`), selecting `k8s-app: kube-dns`, with `server` (Pod object
    /// `name`) behind it.
    pub fn kube_dns(server: &Pod, name: &str, ipv6: bool) -> Self {
        let mut ips = vec![IpAddr::V4(KUBE_DNS_IP_V4)];
        if ipv6 {
            ips.push(IpAddr::V6(KUBE_DNS_IP_V6));
        }
        Self::new("kube-system", "kube-dns", &ips)
            .selector("k8s-app", "kube-dns")
            .port("dns", Protocol::Udp, 53, 53)
            .port("dns-tcp", Protocol::Tcp, 53, 53)
            .backend(server, name)
    }

    /// Adds `key: value` to the selector.
    pub fn selector(mut self, key: &str, value: &str) -> Self {
        self.selector.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Adds a port `port` on the ClusterIP forwarded to `target_port` on the backends.
    pub fn port(mut self, name: &str, protocol: Protocol, port: u16, target_port: u16) -> Self {
        self.ports.push(ServicePort { name: name.to_owned(), protocol, port, target_port, node_port: None });
        self
    }

    /// Gives the last port added the NodePort `node_port` (which makes this a `type: NodePort`).
    pub fn node_port(mut self, node_port: u16) -> Self {
        if let Some(last) = self.ports.last_mut() {
            last.node_port = Some(node_port);
        }
        self
    }

    /// Adds the lab pod `pod`, whose Pod object is called `name`, as a ready backend.
    pub fn backend(mut self, pod: &Pod, name: &str) -> Self {
        self.backends.push(Backend {
            name: name.to_owned(),
            uid: pod.uid().to_owned(),
            ipv4: pod.ipv4(),
            ipv6: pod.ipv6(),
        });
        self
    }

    /// Whether the Service has no ClusterIP.
    pub fn is_headless(&self) -> bool {
        self.cluster_ips.is_empty()
    }

    /// Whether any port has a NodePort.
    pub fn has_node_port(&self) -> bool {
        self.ports.iter().any(|p| p.node_port.is_some())
    }

    /// The ClusterIP of the family of `v6`, if any.
    pub fn cluster_ip(&self, v6: bool) -> Option<IpAddr> {
        self.cluster_ips.iter().copied().find(|ip| ip.is_ipv6() == v6)
    }

    /// `ClusterIP:port` of the port called `port_name` in the family of `v6`.
    pub fn addr(&self, port_name: &str, v6: bool) -> Option<SocketAddr> {
        let port = self.ports.iter().find(|p| p.name == port_name)?;
        Some(SocketAddr::new(self.cluster_ip(v6)?, port.port))
    }

    /// The backends' addresses in one family.
    fn backend_ips(&self, v6: bool) -> Vec<IpAddr> {
        self.backends
            .iter()
            .filter_map(|b| if v6 { b.ipv6.map(IpAddr::V6) } else { Some(IpAddr::V4(b.ipv4)) })
            .collect()
    }
}

/// An address family's iptables flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    const BOTH: [Self; 2] = [Self::V4, Self::V6];

    fn v6(self) -> bool {
        self == Self::V6
    }

    fn restore(self) -> &'static str {
        match self {
            Self::V4 => "iptables-restore",
            Self::V6 => "ip6tables-restore",
        }
    }

    fn host(self, ip: IpAddr) -> String {
        match self {
            Self::V4 => format!("{ip}/32"),
            Self::V6 => format!("{ip}/128"),
        }
    }

    fn endpoint(self, ip: IpAddr, port: u16) -> String {
        SocketAddr::new(ip, port).to_string()
    }
}

/// A chain name as kube-proxy builds them: a prefix and 16 characters of a hash of what the chain
/// stands for (kube-proxy uses base32 of SHA-256; any stable hash serves the lab).
fn chain(prefix: &str, key: &str) -> String {
    // FNV-1a, 64 bit.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{prefix}-{hash:016X}")
}

/// The nat-table rules of `services` in one family: the chains they need and the rule lines.
fn rules(services: &[Service], family: Family) -> (Vec<String>, Vec<String>) {
    let mut chains = vec![
        "KUBE-SERVICES".to_owned(),
        "KUBE-NODEPORTS".to_owned(),
        "KUBE-POSTROUTING".to_owned(),
        "KUBE-MARK-MASQ".to_owned(),
    ];
    let mut lines = vec![
        format!("-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}"),
        format!("-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"),
        format!("-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}"),
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE"
            .to_owned(),
    ];
    for service in services {
        let Some(cluster_ip) = service.cluster_ip(family.v6()) else { continue };
        let backends = service.backend_ips(family.v6());
        for port in &service.ports {
            let id = format!("{}/{}:{}", service.namespace, service.name, port.name);
            let proto = port.protocol.iptables();
            let key = format!("{id}{proto}{}", if family.v6() { "6" } else { "" });
            let svc = chain("KUBE-SVC", &key);
            if backends.is_empty() {
                // kube-proxy rejects these in the filter table; without a backend the lab just has no rule.
                continue;
            }
            chains.push(svc.clone());
            lines.push(format!(
                "-A KUBE-SERVICES -d {} -p {proto} -m comment --comment \"{id} cluster IP\" -m {proto} --dport {} -j {svc}",
                family.host(cluster_ip),
                port.port
            ));
            if let Some(node_port) = port.node_port {
                let ext = chain("KUBE-EXT", &key);
                chains.push(ext.clone());
                lines.push(format!(
                    "-A KUBE-NODEPORTS -p {proto} -m comment --comment \"{id}\" -m {proto} --dport {node_port} -j {ext}"
                ));
                lines.push(format!(
                    "-A {ext} -m comment --comment \"masquerade traffic for {id} external destinations\" -j KUBE-MARK-MASQ"
                ));
                lines.push(format!("-A {ext} -j {svc}"));
            }
            let n = backends.len();
            for (i, backend) in backends.iter().enumerate() {
                let sep = chain("KUBE-SEP", &format!("{key}{backend}"));
                chains.push(sep.clone());
                let endpoint = family.endpoint(*backend, port.target_port);
                // Rule i of n catches 1/(n-i) of what the rules before it let through: every backend
                // gets 1/n. The last one takes the rest.
                let statistic = if i + 1 < n {
                    format!(" -m statistic --mode random --probability {:.10}", 1.0 / (n - i) as f64)
                } else {
                    String::new()
                };
                lines.push(format!("-A {svc} -m comment --comment \"{id} -> {endpoint}\"{statistic} -j {sep}"));
                // Hairpin: a pod reaching itself through its Service is masqueraded, as kube-proxy does.
                lines.push(format!(
                    "-A {sep} -s {} -m comment --comment \"{id}\" -j KUBE-MARK-MASQ",
                    family.host(*backend)
                ));
                lines.push(format!(
                    "-A {sep} -p {proto} -m comment --comment \"{id}\" -m {proto} -j DNAT --to-destination {endpoint}"
                ));
            }
        }
    }
    // Last, as kube-proxy: anything addressed to the node itself may be a NodePort.
    lines.push(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
            .to_owned(),
    );
    (chains, lines)
}

/// The jumps from the built-in chains into kube-proxy's, without the `-A`/`-D`.
fn jumps() -> [String; 3] {
    [
        format!("PREROUTING -m comment --comment \"{PORTALS}\" -j KUBE-SERVICES"),
        format!("OUTPUT -m comment --comment \"{PORTALS}\" -j KUBE-SERVICES"),
        format!("POSTROUTING -m comment --comment \"{POSTROUTING}\" -j KUBE-POSTROUTING"),
    ]
}

/// The `iptables-restore --noflush` script that brings the nat table from `old` to `new` in one
/// family: declaring a chain flushes it, chains no longer needed are deleted, the jumps from the
/// built-in chains are added the first time (`add_jumps`).
fn sync_script(old: &[Service], new: &[Service], family: Family, add_jumps: bool) -> String {
    let (old_chains, _) = rules(old, family);
    let (new_chains, lines) = rules(new, family);
    let keep: BTreeSet<&String> = new_chains.iter().collect();
    let stale: Vec<&String> = old_chains.iter().filter(|c| !keep.contains(c)).collect();
    let mut script = String::from("*nat\n");
    for c in new_chains.iter().chain(stale.iter().copied()) {
        let _ = writeln!(script, ":{c} - [0:0]");
    }
    if add_jumps {
        for jump in jumps() {
            let _ = writeln!(script, "-A {jump}");
        }
    }
    for line in &lines {
        let _ = writeln!(script, "{line}");
    }
    for c in stale {
        let _ = writeln!(script, "-X {c}");
    }
    script.push_str("COMMIT\n");
    script
}

/// The script that removes every rule and chain of `services` in one family, the jumps included.
fn removal_script(services: &[Service], family: Family) -> String {
    let (chains, _) = rules(services, family);
    let mut script = String::from("*nat\n");
    for jump in jumps() {
        let _ = writeln!(script, "-D {jump}");
    }
    for c in &chains {
        let _ = writeln!(script, ":{c} - [0:0]");
    }
    for c in &chains {
        let _ = writeln!(script, "-X {c}");
    }
    script.push_str("COMMIT\n");
    script
}

/// Runs `(ip6)iptables-restore --noflush` with `script` in the namespace at `netns_path`.
fn restore(netns_path: &Path, family: Family, script: &str) -> Result<()> {
    let tool = family.restore();
    exec::require_tool(tool, "iptables")?;
    let mut cmd = Command::new(tool);
    exec::enter(&mut cmd, netns_path, None);
    cmd.args(["-w", "5", "--noflush"]);
    exec::run(&mut cmd, Some(script), TOOL_TIMEOUT).map(drop)
}

/// Removes the rules of `services` from the namespace at `netns_path` (teardown of a recorded lab).
pub(crate) fn remove(netns_path: &Path, services: &[Service]) -> Result<()> {
    let mut first = Ok(());
    for family in Family::BOTH {
        if let Err(e) = restore(netns_path, family, &removal_script(services, family)) {
            first = first.and(Err(e));
        }
    }
    first
}

/// kube-proxy for the lab: the nat rules of a set of Services in the node namespace, recorded in
/// the lab's state file; removed (rules and record) when dropped.
#[must_use = "the Service rules are removed when the guard is dropped"]
#[derive(Debug)]
pub struct KubeProxy {
    netns_path: PathBuf,
    state_path: PathBuf,
    services: Vec<Service>,
    keep: bool,
}

impl KubeProxy {
    /// Writes the rules of `services` in the node namespace at `netns_path` and records them in the
    /// state file at `state_path`.
    pub(crate) fn start(netns_path: PathBuf, state_path: PathBuf, services: Vec<Service>) -> Result<Self> {
        // Recorded first, so that a crash half way still leaves a record for teardown to remove, and
        // the guard exists first, so that a failure half way removes what was written.
        let proxy = Self { netns_path, state_path, services, keep: false };
        proxy.record(&proxy.services)?;
        for family in Family::BOTH {
            restore(&proxy.netns_path, family, &sync_script(&[], &proxy.services, family, true))?;
        }
        Ok(proxy)
    }

    /// The Services whose rules are in place.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// The Service `namespace/name`, if it is one of them.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.namespace == namespace && s.name == name)
    }

    /// Replaces the rules with those of `services`, in one transaction per family (as a kube-proxy
    /// sync does when Services or endpoints change).
    pub fn sync(&mut self, services: Vec<Service>) -> Result<()> {
        let mut union = self.services.clone();
        union.extend(services.iter().cloned());
        self.record(&union)?;
        for family in Family::BOTH {
            restore(&self.netns_path, family, &sync_script(&self.services, &services, family, false))?;
        }
        self.services = services;
        self.record(&self.services.clone())
    }

    /// Leaves the rules in place after this value is gone (`cargo xtask lab up`); the state file
    /// keeps the record, so `cargo xtask lab down` removes them.
    pub fn keep(mut self) {
        self.keep = true;
    }

    /// Writes `services` as the lab's recorded Services.
    fn record(&self, services: &[Service]) -> Result<()> {
        let mut state = LabState::load(&self.state_path)?;
        state.services = services.to_vec();
        state.save()
    }
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        if self.keep || !self.netns_path.exists() {
            // Kept, or the namespace (and the rules with it) is already gone.
            return;
        }
        if let Err(e) = remove(&self.netns_path, &self.services) {
            eprintln!("observer-lab: removing Service rules: {e}");
        }
        if self.state_path.exists()
            && let Err(e) = self.record(&[])
        {
            eprintln!("observer-lab: updating {}: {e}", self.state_path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str, host: u8) -> Backend {
        Backend {
            name: name.to_owned(),
            uid: format!("uid-{name}"),
            ipv4: Ipv4Addr::new(198, 18, 0, host),
            ipv6: Some(Ipv6Addr::new(0x2001, 0xdb8, 0x198, 0x18, 0, 0, 0, u16::from(host))),
        }
    }

    fn web() -> Service {
        let mut web = Service::new("shop", "web", &[cluster_ip_v4(20).into(), cluster_ip_v6(20).into()])
            .selector("app", "web")
            .port("http", Protocol::Tcp, 80, 8080)
            .node_port(30080);
        web.backends = vec![backend("web-0", 11), backend("web-1", 12), backend("web-2", 13)];
        web
    }

    #[test]
    fn three_backends_get_a_third_each_and_the_last_takes_the_rest() {
        let (_, lines) = rules(&[web()], Family::V4);
        let svc: Vec<&String> = lines.iter().filter(|l| l.starts_with("-A KUBE-SVC-")).collect();
        assert_eq!(svc.len(), 3, "{lines:#?}");
        assert!(svc[0].contains("--probability 0.3333333333"), "{}", svc[0]);
        assert!(svc[1].contains("--probability 0.5000000000"), "{}", svc[1]);
        assert!(!svc[2].contains("statistic"), "{}", svc[2]);
        let dnat: Vec<&String> = lines.iter().filter(|l| l.contains("DNAT")).collect();
        assert!(dnat[0].ends_with("--to-destination 198.18.0.11:8080"), "{}", dnat[0]);
        assert!(lines.iter().any(|l| l.contains("-d 198.19.0.20/32 -p tcp") && l.contains("--dport 80 -j KUBE-SVC-")));
        assert!(
            lines.iter().any(|l| l.starts_with("-A KUBE-NODEPORTS -p tcp") && l.contains("--dport 30080 -j KUBE-EXT-"))
        );
        assert!(lines.last().is_some_and(|l| l.contains("--dst-type LOCAL -j KUBE-NODEPORTS")));
    }

    #[test]
    fn ipv6_rules_use_the_v6_cluster_ip_and_backends() {
        let (_, lines) = rules(&[web()], Family::V6);
        assert!(lines.iter().any(|l| l.contains("-d 2001:db8:198:19::20/128 -p tcp")), "{lines:#?}");
        assert!(lines.iter().any(|l| l.ends_with("--to-destination [2001:db8:198:18::b]:8080")), "{lines:#?}");
        // A v4-only Service writes nothing but the fixed chains in the v6 table.
        let v4_only = Service { cluster_ips: vec![cluster_ip_v4(21).into()], ..web() };
        assert_eq!(rules(&[v4_only], Family::V6).0.len(), 4);
    }

    #[test]
    fn headless_services_and_services_without_backends_write_no_rules() {
        let headless = Service { cluster_ips: vec![], ..web() };
        let empty = Service { backends: vec![], ..web() };
        for service in [headless, empty] {
            let (chains, lines) = rules(&[service], Family::V4);
            assert_eq!(chains.len(), 4, "{chains:?}");
            assert_eq!(lines.len(), 5, "{lines:?}");
        }
    }

    #[test]
    fn a_sync_deletes_the_chains_that_went_away() {
        let before = [web()];
        let after = [Service { backends: vec![backend("web-0", 11)], ..web() }];
        let script = sync_script(&before, &after, Family::V4, false);
        assert_eq!(script.matches("\n-X KUBE-SEP-").count(), 2, "{script}");
        assert!(!script.contains("-A PREROUTING"), "{script}");
        let removal = removal_script(&after, Family::V4);
        assert!(removal.contains("-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"));
        assert!(removal.contains("-X KUBE-SERVICES\n"), "{removal}");
    }

    #[test]
    fn chain_names_fit_iptables_and_are_stable() {
        let name = chain("KUBE-SVC", "shop/web:httptcp");
        assert_eq!(name.len(), 25);
        assert_eq!(name, chain("KUBE-SVC", "shop/web:httptcp"));
        assert_ne!(name, chain("KUBE-SVC", "shop/web:httpudp"));
    }
}
