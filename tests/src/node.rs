//! The lab node's own network, the parts that change verdicts on a real node: what the lab builder
//! asked for in, and out the node's primary address (on `eth0`), `bridge-nf-call-ip(6)tables` so
//! bridged replies pass conntrack and are un-NATed, masquerade for pod traffic to the internet, a
//! [`Node`] endpoint that runs processes as the node (kubelet's probes) and reads its conntrack table.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
};

use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    exec,
    lab::{Endpoint, POD_GATEWAY_V4, POD_GATEWAY_V6},
    state::{NETNS_DIR, TOOL_TIMEOUT},
    traffic::{TcpClientOpts, TcpClientReport},
};

/// The Node object's name (every lab Pod's `spec.nodeName`).
pub const NODE_NAME: &str = "lab-node";
/// The node's primary address, the Node object's InternalIP.
pub const NODE_IP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 10);
/// The node's primary IPv6 address.
pub const NODE_IP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x198, 0x255, 0, 0, 0, 0x10);
/// The link holding the node's primary address. Not a `dummy` (this kernel has no
/// `CONFIG_DUMMY`): a veth whose peer (`eth0-peer`) stays in the node namespace, up, unused.
pub const NODE_LINK: &str = "eth0";
/// The pod range masqueraded towards the internet.
const POD_RANGE_V4: &str = "198.18.0.0/24";
const POD_RANGE_V6: &str = "2001:db8:198:18::/64";
/// The knobs that send bridged IPv4/IPv6 through iptables (and conntrack), as kube-proxy requires.
const BRIDGE_NF: [&str; 2] = ["net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables"];

/// The node's network as recorded in the lab's state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's network namespace.
    pub netns: String,
    /// The cgroup node processes (the lab's kubelet) run in: outside `kubepods`, not a pod.
    pub cgroup_dir: PathBuf,
    /// Its cgroup id.
    pub cgroup_id: u64,
    /// The primary IPv4 address, on [`NODE_LINK`].
    pub ipv4: Ipv4Addr,
    /// The primary IPv6 address, when the lab has IPv6.
    pub ipv6: Option<Ipv6Addr>,
    /// The masquerade rules added to the nat table's POSTROUTING (`iptables -t nat -A` arguments),
    /// by family (`ip` or `ip6`).
    pub masquerade: Vec<(String, String)>,
    /// Root-namespace values of the bridge-nf knobs to put back on teardown. Empty where the
    /// kernel keeps them per network namespace (5.3 and later), where they go with the namespace.
    pub restore_sysctls: Vec<(String, String)>,
}

/// The lab node itself: its network namespace, as kubelet and host-network processes see it.
#[derive(Debug)]
pub struct Node {
    pub(crate) info: NodeInfo,
    pub(crate) traffic_bin: PathBuf,
}

impl Node {
    /// The primary IPv4 address (198.18.255.10).
    pub fn ipv4(&self) -> Ipv4Addr {
        self.info.ipv4
    }
    /// The primary IPv6 address (2001:db8:198:255::10), when the lab has IPv6.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.info.ipv6
    }
    /// Every address the node holds that pods see: the bridge (pod gateway) and the primary address.
    pub fn addresses(&self) -> Vec<IpAddr> {
        let mut all = vec![IpAddr::V4(POD_GATEWAY_V4), IpAddr::V4(self.info.ipv4)];
        if let Some(v6) = self.info.ipv6 {
            all.extend([IpAddr::V6(POD_GATEWAY_V6), IpAddr::V6(v6)]);
        }
        all
    }
    /// The cgroup id of the node's own processes.
    pub fn cgroup_id(&self) -> u64 {
        self.info.cgroup_id
    }

    /// A kubelet-style probe of `target` from the node address `source`: one TCP connection that
    /// sends a small HTTP request and reads the reply to its end (the server decides its length).
    pub fn probe(&self, source: IpAddr, target: SocketAddr, expect: u64) -> Result<TcpClientReport> {
        let opts = TcpClientOpts { bind: Some(source), send: PROBE_REQUEST_BYTES, expect, ..Default::default() };
        self.tcp_client(target, &opts)
    }

    /// The node's conntrack table (`conntrack -L` in its namespace), parsed.
    pub fn conntrack(&self) -> Result<Vec<ConntrackEntry>> {
        exec::require_tool("conntrack", "conntrack")?;
        let mut entries = Vec::new();
        for family in ["ipv4", "ipv6"] {
            let mut cmd = Command::new("conntrack");
            exec::enter(&mut cmd, &self.netns_path(), None);
            cmd.args(["-L", "-f", family]);
            let out = exec::run(&mut cmd, None, TOOL_TIMEOUT)?;
            entries.extend(String::from_utf8_lossy(&out.stdout).lines().filter_map(ConntrackEntry::parse));
        }
        Ok(entries)
    }
}

/// What a lab probe sends: the size of `GET /healthz HTTP/1.1` with kubelet's headers.
pub const PROBE_REQUEST_BYTES: u64 = 112;

impl Endpoint for Node {
    fn netns(&self) -> &str {
        &self.info.netns
    }
    fn cgroup_dir(&self) -> &Path {
        &self.info.cgroup_dir
    }
    fn traffic_bin(&self) -> &Path {
        &self.traffic_bin
    }
}

/// One connection in the node's conntrack table: the original direction as the client sent it,
/// and the reply direction, which shows a DNAT's real destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConntrackEntry {
    /// `tcp`, `udp`, `icmp`, …
    pub protocol: String,
    /// The client's source address and port.
    pub orig_src: SocketAddr,
    /// The destination the client addressed (a ClusterIP for a Service).
    pub orig_dst: SocketAddr,
    /// Who replies (the backend pod, after DNAT).
    pub reply_src: SocketAddr,
    /// Where the replies go (the client, or the masquerade address after SNAT).
    pub reply_dst: SocketAddr,
}

impl ConntrackEntry {
    /// Parses one `conntrack -L` line (`tcp 6 117 TIME_WAIT src=… dst=… sport=… dport=… src=… …`);
    /// `None` for lines without ports (ICMP) or anything else.
    pub fn parse(line: &str) -> Option<Self> {
        let protocol = line.split_whitespace().next()?.to_owned();
        let field = |key: &str, nth: usize| {
            line.split_whitespace().filter_map(|w| w.strip_prefix(key)).nth(nth).map(str::to_owned)
        };
        let addr = |ip: &str, port: &str, nth: usize| -> Option<SocketAddr> {
            Some(SocketAddr::new(field(ip, nth)?.parse().ok()?, field(port, nth)?.parse().ok()?))
        };
        Some(Self {
            protocol,
            orig_src: addr("src=", "sport=", 0)?,
            orig_dst: addr("dst=", "dport=", 0)?,
            reply_src: addr("src=", "sport=", 1)?,
            reply_dst: addr("dst=", "dport=", 1)?,
        })
    }

    /// Whether the destination was rewritten (DNAT: a Service or NodePort).
    pub fn is_dnat(&self) -> bool {
        self.orig_dst != self.reply_src
    }
}

/// Creates the node's network in its namespace `info.netns`: the primary address on [`NODE_LINK`],
/// bridge-nf on, and (with `internet_link`) masquerade of the pod range out of it. What it did
/// that teardown must undo (rules, root sysctls that moved) is added to `info`, which the caller
/// saves in the state file whether or not this succeeded.
pub(crate) fn create(info: &mut NodeInfo, internet_link: Option<&str>) -> Result<()> {
    let mut lines = format!(
        "link add {NODE_LINK} type veth peer name {NODE_LINK}-peer\naddr add {}/32 dev {NODE_LINK}\n",
        info.ipv4
    );
    if let Some(v6) = info.ipv6 {
        lines.push_str(&format!("addr add {v6}/128 dev {NODE_LINK} nodad\n"));
    }
    lines.push_str(&format!("link set {NODE_LINK}-peer up\nlink set {NODE_LINK} up\n"));
    crate::lab::ip_batch(Some(&info.netns), &lines)?;

    // Per namespace on this kernel (and every kernel since 5.3): then the root namespace's values
    // do not move. Should they, they are recorded to be put back.
    let before: Vec<Option<String>> = BRIDGE_NF.iter().map(|k| read_sysctl(k)).collect();
    crate::lab::set_sysctls(&info.netns, &BRIDGE_NF.map(|k| (k, "1")))?;
    for (knob, old) in BRIDGE_NF.iter().zip(before) {
        if let Some(old) = old
            && read_sysctl(knob).as_deref() != Some(old.as_str())
        {
            info.restore_sysctls.push(((*knob).to_owned(), old));
        }
    }

    if let Some(link) = internet_link {
        info.masquerade.push(("ip".to_owned(), format!("POSTROUTING -s {POD_RANGE_V4} -o {link} -j MASQUERADE")));
        if info.ipv6.is_some() {
            info.masquerade.push(("ip6".to_owned(), format!("POSTROUTING -s {POD_RANGE_V6} -o {link} -j MASQUERADE")));
        }
        for (family, rule) in &info.masquerade {
            iptables(&info.netns, family, "-A", rule)?;
        }
    }
    Ok(())
}

/// Undoes what [`create`] did outside the node namespace (root-namespace sysctls, when the kernel
/// keeps them globally) and, while the namespace exists, its rules. Keeps going past failures.
pub(crate) fn teardown(info: &NodeInfo) -> Vec<Error> {
    let mut errors = Vec::new();
    if Path::new(NETNS_DIR).join(&info.netns).exists() {
        for (family, rule) in &info.masquerade {
            if let Err(e) = iptables(&info.netns, family, "-D", rule) {
                errors.push(e);
            }
        }
    }
    for (knob, value) in &info.restore_sysctls {
        let path = Path::new("/proc/sys").join(knob);
        if let Err(e) = fs::write(&path, value) {
            errors.push(Error::io("restoring", path)(e));
        }
    }
    errors
}

/// Reads `/proc/sys/<knob>` in the caller's (root) namespace.
fn read_sysctl(knob: &str) -> Option<String> {
    fs::read_to_string(Path::new("/proc/sys").join(knob)).ok().map(|v| v.trim().to_owned())
}

/// `iptables -w 5 -t nat <op> <rule>` (or `ip6tables`) in the namespace `netns`.
fn iptables(netns: &str, family: &str, op: &str, rule: &str) -> Result<()> {
    let tool = if family == "ip6" { "ip6tables" } else { "iptables" };
    exec::require_tool(tool, "iptables")?;
    let mut cmd = Command::new(tool);
    exec::enter(&mut cmd, &Path::new(NETNS_DIR).join(netns), None);
    cmd.args(["-w", "5", "-t", "nat", op]).args(rule.split_whitespace());
    exec::run(&mut cmd, None, TOOL_TIMEOUT).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_lines_give_both_directions() {
        let line = "tcp      6 117 TIME_WAIT src=198.18.0.10 dst=198.19.0.20 sport=40000 dport=80 \
                    src=198.18.0.12 dst=198.18.0.10 sport=8080 dport=40000 [ASSURED] mark=0 use=1";
        let entry = ConntrackEntry::parse(line).expect("parses");
        assert_eq!(entry.protocol, "tcp");
        assert_eq!(entry.orig_dst, "198.19.0.20:80".parse().expect("addr"));
        assert_eq!(entry.reply_src, "198.18.0.12:8080".parse().expect("addr"));
        assert!(entry.is_dnat());
        let v6 = "udp      17 29 src=2001:db8:198:18::10 dst=2001:db8:198:19::10 sport=5000 dport=53 \
                  src=2001:db8:198:18::12 dst=2001:db8:198:18::10 sport=53 dport=5000 mark=0 use=1";
        assert_eq!(ConntrackEntry::parse(v6).expect("v6").orig_dst.port(), 53);
        assert_eq!(ConntrackEntry::parse("icmp 1 29 src=198.18.0.10 dst=198.18.0.1 type=8 code=0 id=1"), None);
    }
}
