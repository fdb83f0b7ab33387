//! The lab itself: a builder's wishes (pods, IPv6, internet) in, a [`Lab`] out that owns a node
//! namespace with a bridge and router, one namespace + veth + kubelet-style cgroup per pod, and an
//! "internet" namespace; everything is removed when the `Lab` is dropped.

use std::{
    ffi::OsStr,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU8, AtomicU32, Ordering},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    cgroup,
    error::{Error, Result},
    exec::{self, Proc},
    firewall::FirewallRules,
    ids::Ids,
    kube_proxy::{KubeProxy, Service},
    node::{self, NODE_IP_V4, NODE_IP_V6, Node, NodeInfo},
    state::{self, LabState, NETNS_DIR, TOOL_TIMEOUT},
    traffic::{
        self, BurstOpts, BurstReport, PingReport, ServerEvent, TcpClientOpts, TcpClientReport, TcpServerOpts,
        UdpClientOpts, UdpClientReport, UdpServerOpts,
    },
};

/// The pods' gateway: the bridge address in the node namespace.
pub const POD_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The pods' IPv6 gateway.
pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x198, 0x18, 0, 0, 0, 1);
/// Prefix length of the pod subnet (198.18.0.0/24, 2001:db8:198:18::/64).
pub const POD_PREFIX_V4: u8 = 24;
/// The router's address on the internet link.
pub const INTERNET_ROUTER_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The router's IPv6 address on the internet link.
pub const INTERNET_ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0x113, 0, 0, 0, 1);
/// The first internet host (the internet namespace's main address).
pub const INTERNET_HOST_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The internet host's IPv6 address.
pub const INTERNET_HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0x113, 0, 0, 0, 0x10);
/// Pod `i` gets host number `FIRST_POD_HOST + i` (198.18.0.10, .11, …).
const FIRST_POD_HOST: u8 = 10;
/// Upper bound on pods: host numbers stay below 250.
pub const MAX_PODS: usize = 240;
/// Prefix of the persistent lab (`cargo xtask lab up`), whose owner is not a running process.
pub const PERSISTENT_PREFIX: &str = "obslab-";
/// Knobs set in every pod and internet namespace: bursts of tens of thousands of short connections
/// would run out of the default 28k ephemeral ports while earlier ones sit in TIME_WAIT (servers in
/// tests listen below 10000), and unprivileged ICMP sockets are allowed so `ping --socket dgram` works.
const POD_SYSCTLS: [(&str, &str); 3] = [
    ("net/ipv4/ip_local_port_range", "10000 65000"),
    ("net/ipv4/tcp_tw_reuse", "1"),
    ("net/ipv4/ping_group_range", "0 2147483647"),
];
/// How long a server may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the lab may send to `ip`: the pod and internet test ranges, documentation IPv6, loopback.
pub fn allowed_destination(ip: IpAddr) -> bool {
    match ip {
        // 198.18.0.0/15 (pods), 203.0.113.0/24 (internet), loopback (stays in the namespace).
        IpAddr::V4(v4) => {
            let o = v4.octets();
            (o[0] == 198 && (o[1] & 0xfe) == 18) || (o[0..3] == [203, 0, 113]) || v4.is_loopback()
        }
        // 2001:db8::/32 (documentation prefix) and ::1.
        IpAddr::V6(v6) => (v6.segments()[0..2] == [0x2001, 0xdb8]) || v6.is_loopback(),
    }
}

fn check_destination(ip: IpAddr) -> Result<()> {
    if allowed_destination(ip) {
        Ok(())
    } else {
        Err(Error::AddressOutOfRange { addr: ip, allowed: "198.18.0.0/15, 203.0.113.0/24, 2001:db8::/32, loopback" })
    }
}

/// Something processes can run in: a network namespace plus a cgroup. Implemented by [`Pod`] and
/// [`Internet`]; the provided methods run programs and traffic there.
pub trait Endpoint {
    /// The network namespace name (under `/run/netns/`).
    fn netns(&self) -> &str;
    /// The absolute cgroup directory processes are put in.
    fn cgroup_dir(&self) -> &Path;
    /// The `lab-traffic` binary to use.
    fn traffic_bin(&self) -> &Path;

    /// The network namespace's bind mount, `/run/netns/<name>`.
    fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(self.netns())
    }

    /// A `Command` for `program` that joins this cgroup and then this network namespace before exec.
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        exec::enter(&mut cmd, &self.netns_path(), Some(self.cgroup_dir()));
        cmd
    }

    /// Starts `program args…` here; the returned guard kills and reaps it when dropped.
    fn spawn<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<Proc>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Proc::spawn(self.command(program).args(args))
    }

    /// Runs `program args…` here to completion (killed after `timeout`) and returns its output,
    /// whatever its exit status.
    fn run<I, S>(&self, program: impl AsRef<OsStr>, args: I, timeout: Duration) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        exec::run_unchecked(self.command(program).args(args), None, timeout)
    }

    /// Starts a `lab-traffic tcp-server` on `listen` and waits (bounded) until it is listening.
    fn tcp_server(&self, listen: SocketAddr, opts: &TcpServerOpts) -> Result<Proc> {
        self.server(opts.args(listen))
    }

    /// Starts a `lab-traffic udp-server` on `listen` and waits (bounded) until it is bound.
    fn udp_server(&self, listen: SocketAddr, opts: &UdpServerOpts) -> Result<Proc> {
        self.server(opts.args(listen))
    }

    /// Starts a `lab-traffic dns-server` answering `zone` on `listen` (UDP and TCP) and waits until it is up.
    fn dns_server(&self, listen: SocketAddr, zone: &crate::dns::Zone) -> Result<Proc> {
        self.server(vec![
            "dns-server".to_owned(),
            "--listen".to_owned(),
            listen.to_string(),
            "--zone".to_owned(),
            zone.to_arg(),
        ])
    }

    /// Runs `lab-traffic dns-query` against `server` and returns what it resolved.
    fn dns_query(&self, server: SocketAddr, opts: &crate::dns::DnsQueryOpts) -> Result<crate::dns::DnsQueryReport> {
        check_destination(server.ip())?;
        self.traffic_report(opts.args(server), opts.timeout + Duration::from_secs(5))
    }

    /// Starts a `lab-traffic` server with `args` and waits for its ready line.
    fn server(&self, args: Vec<String>) -> Result<Proc> {
        let mut proc = self.spawn(self.traffic_bin(), args)?;
        proc.wait_for_line(READY_TIMEOUT, |l| matches!(ServerEvent::parse(l), Some(ServerEvent::Ready { .. })))?;
        Ok(proc)
    }

    /// Runs `lab-traffic tcp-client` against `target` and returns its report.
    fn tcp_client(&self, target: SocketAddr, opts: &TcpClientOpts) -> Result<TcpClientReport> {
        check_destination(target.ip())?;
        self.traffic_report(opts.args(target), opts.bound())
    }

    /// Runs `lab-traffic burst` against `target` and returns its report.
    fn burst(&self, target: SocketAddr, opts: &BurstOpts) -> Result<BurstReport> {
        check_destination(target.ip())?;
        self.traffic_report(opts.args(target), opts.bound())
    }

    /// Runs `lab-traffic udp-client` against `target` and returns its report.
    fn udp_client(&self, target: SocketAddr, opts: &UdpClientOpts) -> Result<UdpClientReport> {
        check_destination(target.ip())?;
        self.traffic_report(opts.args(target), opts.bound())
    }

    /// Runs `lab-traffic` with `args` to completion and parses the JSON line it ends with.
    fn traffic_report<T: for<'de> Deserialize<'de>>(&self, args: Vec<String>, bound: Duration) -> Result<T> {
        let mut cmd = self.command(self.traffic_bin());
        cmd.args(&args);
        let out = exec::run(&mut cmd, None, bound)?;
        traffic::parse_report(&exec::describe(&cmd), &out.stdout)
    }

    /// Sends `count` ICMP echo requests to `dest` (200 ms apart, 1 s wait each) and counts the replies,
    /// with iputils `ping` if it is installed, else with `lab-traffic ping`.
    fn ping(&self, dest: IpAddr, count: u32) -> Result<PingReport> {
        check_destination(dest)?;
        let bound = Duration::from_secs(u64::from(count) + 10);
        if let Some(ping) = exec::find_in_path("ping") {
            let args = ["-n", "-c", &count.to_string(), "-i", "0.2", "-W", "1", &dest.to_string()];
            let out = self.run(ping, args, bound)?;
            // Exit status 1 means "no reply", still a valid count; anything unparsable falls through.
            if let Some(report) = traffic::parse_iputils_ping(&dest.to_string(), &String::from_utf8_lossy(&out.stdout))
            {
                return Ok(report);
            }
        }
        let args = ["ping", "--dest", &dest.to_string(), "--count", &count.to_string(), "--timeout-ms", "1000"];
        self.traffic_report(args.iter().map(|s| s.to_string()).collect(), bound)
    }

    /// Drops incoming TCP SYNs to `port` in this namespace (connects to it time out) until the guard drops.
    fn drop_inbound_tcp_syn(&self, port: u16) -> Result<FirewallRules> {
        FirewallRules::syn_drop(self.netns_path(), port)
    }

    /// Drops all traffic from and to `peer` in this namespace until the guard drops.
    fn block_peer(&self, peer: IpAddr) -> Result<FirewallRules> {
        FirewallRules::block_peer(self.netns_path(), peer)
    }
}

/// A simulated pod: a network namespace with `eth0` on the node bridge, and a cgroup named the way
/// kubelet's cgroupfs driver names a container's (`kubepods/besteffort/pod<uid>/<container-id>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pod {
    name: String,
    uid: String,
    container_id: String,
    netns: String,
    ipv4: Ipv4Addr,
    ipv6: Option<Ipv6Addr>,
    mac: String,
    cgroup_dir: PathBuf,
    cgroup_path: String,
    cgroup_id: u64,
    /// A host-network pod: its processes run in the node's namespace and it has the node's addresses.
    #[serde(default)]
    host_network: bool,
    #[serde(skip)]
    traffic_bin: PathBuf,
}

impl Pod {
    /// Whether this is a host-network pod (`hostNetwork: true`): the node's namespace and addresses.
    pub fn host_network(&self) -> bool {
        self.host_network
    }
    /// The pod name (`pod0`, `pod1`, …).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The pod UID, a UUID as the API server assigns.
    pub fn uid(&self) -> &str {
        &self.uid
    }
    /// The container id, 64 hex digits.
    pub fn container_id(&self) -> &str {
        &self.container_id
    }
    /// The pod IPv4 address (198.18.0.10 + index).
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }
    /// The pod IPv6 address (2001:db8:198:18::10 + index, hex), when the lab has IPv6.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.ipv6
    }
    /// The MAC address of the pod's `eth0`.
    pub fn mac(&self) -> &str {
        &self.mac
    }
    /// The container cgroup path relative to the cgroup v2 root, with a leading `/`, as
    /// `/proc/<pid>/cgroup` prints it (`/kubepods/besteffort/pod<uid>/<container-id>`).
    pub fn cgroup_path(&self) -> &str {
        &self.cgroup_path
    }
    /// The container cgroup's id: its inode number, what `bpf_get_current_cgroup_id` returns for
    /// processes started with [`Endpoint::command`].
    pub fn cgroup_id(&self) -> u64 {
        self.cgroup_id
    }
    /// The pod-level cgroup directory (`…/kubepods/besteffort/pod<uid>`).
    pub fn pod_cgroup_dir(&self) -> &Path {
        self.cgroup_dir.parent().unwrap_or(&self.cgroup_dir)
    }
    /// `ip:port` on the pod's IPv4 address.
    pub fn addr_v4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ipv4.into(), port)
    }
    /// `[ip]:port` on the pod's IPv6 address, when the lab has IPv6.
    pub fn addr_v6(&self, port: u16) -> Option<SocketAddr> {
        self.ipv6.map(|ip| SocketAddr::new(ip.into(), port))
    }
}

impl Endpoint for Pod {
    fn netns(&self) -> &str {
        &self.netns
    }
    fn cgroup_dir(&self) -> &Path {
        &self.cgroup_dir
    }
    fn traffic_bin(&self) -> &Path {
        &self.traffic_bin
    }
}

/// The internet namespace as recorded in the state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InternetInfo {
    /// Network namespace name.
    pub netns: String,
    /// The main host address (203.0.113.10).
    pub ipv4: Ipv4Addr,
    /// The main IPv6 host address, when the lab has IPv6.
    pub ipv6: Option<Ipv6Addr>,
    /// Its cgroup directory (outside `kubepods`: it is not a pod).
    pub cgroup_dir: PathBuf,
    /// Its cgroup id.
    pub cgroup_id: u64,
}

/// "The internet": a namespace behind the node's router at 203.0.113.0/24 that can hold any number of
/// host addresses, with its own cgroup.
#[derive(Debug)]
pub struct Internet {
    info: InternetInfo,
    traffic_bin: PathBuf,
    next_host: AtomicU8,
}

impl Internet {
    /// The main host address, 203.0.113.10.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.info.ipv4
    }
    /// The main IPv6 host address, 2001:db8:203:113::10, when the lab has IPv6.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.info.ipv6
    }
    /// Its cgroup id.
    pub fn cgroup_id(&self) -> u64 {
        self.info.cgroup_id
    }
    /// Adds the next free host address (203.0.113.11, .12, …) and returns it.
    pub fn add_host_address(&self) -> Result<Ipv4Addr> {
        let host = self.next_host.fetch_add(1, Ordering::Relaxed);
        let ip = Ipv4Addr::new(203, 0, 113, host);
        if host >= 250 {
            return Err(Error::AddressOutOfRange { addr: ip.into(), allowed: "203.0.113.11-249" });
        }
        self.add_address(ip.into())?;
        Ok(ip)
    }
    /// Adds `addr` as an internet host address; it must be in 203.0.113.0/24 or 2001:db8:203:113::/64.
    pub fn add_address(&self, addr: IpAddr) -> Result<()> {
        let (line, ok) = match addr {
            IpAddr::V4(v4) => (format!("addr add {v4}/24 dev eth0"), v4.octets()[0..3] == [203, 0, 113]),
            IpAddr::V6(v6) => {
                (format!("addr add {v6}/64 dev eth0 nodad"), v6.segments()[0..4] == [0x2001, 0xdb8, 0x203, 0x113])
            }
        };
        if !ok {
            return Err(Error::AddressOutOfRange { addr, allowed: "203.0.113.0/24, 2001:db8:203:113::/64" });
        }
        ip_batch(Some(&self.info.netns), &line)
    }
}

impl Endpoint for Internet {
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

/// Configures a [`Lab`].
#[derive(Debug, Clone)]
pub struct LabBuilder {
    pods: usize,
    ipv6: bool,
    internet: bool,
    persistent: bool,
    node: bool,
    traffic_bin: Option<PathBuf>,
}

impl Default for LabBuilder {
    /// Two pods, IPv4 only, no internet, no node network, removed on drop.
    fn default() -> Self {
        Self { pods: 2, ipv6: false, internet: false, persistent: false, node: false, traffic_bin: None }
    }
}

impl LabBuilder {
    /// How many pods (1 to [`MAX_PODS`]).
    pub fn pods(mut self, n: usize) -> Self {
        self.pods = n;
        self
    }
    /// Whether pods (and the internet) also get IPv6 addresses.
    pub fn ipv6(mut self, on: bool) -> Self {
        self.ipv6 = on;
        self
    }
    /// Whether to add the internet namespace behind the node's router.
    pub fn internet(mut self, on: bool) -> Self {
        self.internet = on;
        self
    }
    /// Whether the node namespace gets a real node's network (see `docs/lab.md`): the primary
    /// address 198.18.255.10 on `eth0`, bridge-nf-call-ip(6)tables, masquerade of pod traffic to the
    /// internet, a node cgroup for its own processes ([`Lab::node`]) and a host-network pod
    /// ([`Lab::host_pod`]); Services come with [`Lab::kube_proxy`].
    pub fn node(mut self, on: bool) -> Self {
        self.node = on;
        self
    }
    /// The persistent lab of `cargo xtask lab up`: fixed prefix `obslab-`, not owned by this process,
    /// so [`cleanup_stale`](crate::cleanup_stale) leaves it alone; call [`Lab::keep`] to leave it up.
    pub fn persistent(mut self, on: bool) -> Self {
        self.persistent = on;
        self
    }
    /// The `lab-traffic` binary (integration tests: `env!("CARGO_BIN_EXE_lab-traffic")`); by default
    /// it is looked up with [`traffic_binary`](crate::traffic_binary) when the lab is built.
    pub fn traffic_bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.traffic_bin = Some(path.into());
        self
    }

    /// Creates the lab. Needs root and `ip`; removes stale labs of crashed runs first. On failure,
    /// whatever was already created is removed again.
    pub fn build(self) -> Result<Lab> {
        exec::require_root()?;
        exec::require_tool("ip", "iproute2")?;
        if self.pods == 0 || self.pods > MAX_PODS {
            return Err(Error::PodCount { pods: self.pods, max: MAX_PODS });
        }
        if let Err(e) = state::cleanup_stale() {
            eprintln!("observer-lab: cleaning stale labs: {e}");
        }
        let traffic_bin = match self.traffic_bin {
            Some(path) => path,
            None => traffic::traffic_binary()?,
        };
        let cgroup_root = cgroup::detect_root()?;
        let (prefix, owner_pid, owner_start) = if self.persistent {
            let path = LabState::path_for(PERSISTENT_PREFIX);
            if path.exists() {
                return Err(Error::AlreadyUp { path });
            }
            (PERSISTENT_PREFIX.to_owned(), 0, 0)
        } else {
            static SEQ: AtomicU32 = AtomicU32::new(0);
            let pid = std::process::id();
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            (format!("obs{pid}-{seq}-"), pid, state::process_start(pid).unwrap_or(0))
        };

        let mut ids = Ids::new(u64::from(owner_pid) << 8 | self.pods as u64);
        let besteffort = cgroup_root.join("kubepods").join("besteffort");
        let pods: Vec<Pod> = (0..self.pods)
            .map(|i| {
                let host = FIRST_POD_HOST + i as u8;
                let uid = ids.uuid();
                let container_id = ids.container_id();
                let rel = format!("kubepods/besteffort/pod{uid}/{container_id}");
                Pod {
                    name: format!("pod{i}"),
                    netns: format!("{prefix}pod{i}"),
                    ipv4: Ipv4Addr::new(198, 18, 0, host),
                    // ::10 for .10: the same digits, read as hex.
                    ipv6: self.ipv6.then(|| {
                        let h = u16::from_str_radix(&host.to_string(), 16).unwrap_or(u16::from(host));
                        Ipv6Addr::new(0x2001, 0xdb8, 0x198, 0x18, 0, 0, 0, h)
                    }),
                    mac: ids.mac(),
                    cgroup_dir: cgroup_root.join(&rel),
                    cgroup_path: format!("/{rel}"),
                    cgroup_id: 0,
                    host_network: false,
                    uid,
                    container_id,
                    traffic_bin: traffic_bin.clone(),
                }
            })
            .collect();
        let node = format!("{prefix}node");
        let node_info = self.node.then(|| NodeInfo {
            netns: node.clone(),
            cgroup_dir: cgroup_root.join(format!("{prefix}node")),
            cgroup_id: 0,
            ipv4: NODE_IP_V4,
            ipv6: self.ipv6.then_some(NODE_IP_V6),
            masquerade: Vec::new(),
            restore_sysctls: Vec::new(),
        });
        let host_pods: Vec<Pod> = node_info
            .iter()
            .map(|info| {
                let uid = ids.uuid();
                let container_id = ids.container_id();
                let rel = format!("kubepods/besteffort/pod{uid}/{container_id}");
                Pod {
                    name: "host0".to_owned(),
                    netns: node.clone(),
                    ipv4: info.ipv4,
                    ipv6: info.ipv6,
                    mac: String::new(),
                    cgroup_dir: cgroup_root.join(&rel),
                    cgroup_path: format!("/{rel}"),
                    cgroup_id: 0,
                    host_network: true,
                    uid,
                    container_id,
                    traffic_bin: traffic_bin.clone(),
                }
            })
            .collect();
        let internet = self.internet.then(|| InternetInfo {
            netns: format!("{prefix}internet"),
            ipv4: INTERNET_HOST_V4,
            ipv6: self.ipv6.then_some(INTERNET_HOST_V6),
            cgroup_dir: cgroup_root.join(format!("{prefix}internet")),
            cgroup_id: 0,
        });

        let mut netns: Vec<String> = pods.iter().map(|p| p.netns.clone()).collect();
        netns.extend(internet.iter().map(|i| i.netns.clone()));
        netns.push(node.clone());
        let mut cgroups: Vec<PathBuf> = Vec::new();
        for pod in pods.iter().chain(&host_pods) {
            cgroups.push(pod.cgroup_dir.clone());
            cgroups.push(pod.pod_cgroup_dir().to_owned());
        }
        cgroups.extend(internet.iter().map(|i| i.cgroup_dir.clone()));
        cgroups.extend(node_info.iter().map(|n| n.cgroup_dir.clone()));
        let state = LabState {
            prefix,
            owner_pid,
            owner_start,
            netns,
            cgroups,
            cgroup_root,
            pods,
            internet,
            node: node_info,
            host_pods,
            services: Vec::new(),
        };
        // Recorded before anything exists, so a crash from here on is cleaned by `cleanup_stale`.
        state.save()?;

        let mut lab = Lab { node_netns: node, state, internet: None, node: None, keep: false };
        lab.create(self.ipv6, &besteffort, traffic_bin)?;
        Ok(lab)
    }
}

/// A running lab; dropping it kills every process in its cgroups and namespaces and removes the
/// namespaces (with their links), the cgroups and its state file.
#[derive(Debug)]
pub struct Lab {
    node_netns: String,
    state: LabState,
    internet: Option<Internet>,
    node: Option<Node>,
    keep: bool,
}

impl Lab {
    /// Starts configuring a lab.
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// The pods, in order (`pod0` is 198.18.0.10).
    pub fn pods(&self) -> &[Pod] {
        &self.state.pods
    }

    /// Pod `i`. Panics if there is no such pod, which is a bug in the test.
    pub fn pod(&self, i: usize) -> &Pod {
        &self.state.pods[i]
    }

    /// The internet namespace, if the lab was built with one.
    pub fn internet(&self) -> Option<&Internet> {
        self.internet.as_ref()
    }

    /// The cgroup v2 root the pod cgroups are under.
    pub fn cgroup_root(&self) -> &Path {
        &self.state.cgroup_root
    }

    /// The prefix of this lab's namespace names (`obs<pid>-<n>-`, or `obslab-` when persistent).
    pub fn prefix(&self) -> &str {
        &self.state.prefix
    }

    /// The node namespace holding the bridge (198.18.0.1) and the router to the internet.
    pub fn node_netns(&self) -> &str {
        &self.node_netns
    }

    /// The node namespace's bind mount, `/run/netns/<prefix>node` (for `setns`).
    pub fn node_netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.node_netns)
    }

    /// The node itself (its namespace, addresses, conntrack table, probes), when the lab was built
    /// with [`LabBuilder::node`].
    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    /// The host-network pod (`host0`: the node's namespace and addresses, a pod cgroup), when the
    /// lab was built with [`LabBuilder::node`].
    pub fn host_pod(&self) -> Option<&Pod> {
        self.state.host_pods.first()
    }

    /// Writes `services` into the node's nat table as kube-proxy's iptables mode does, recorded in
    /// the state file; the guard removes them when dropped. Needs [`LabBuilder::node`] (for
    /// bridge-nf, without which replies between pods on the bridge are not un-NATed).
    pub fn kube_proxy(&self, services: Vec<Service>) -> Result<KubeProxy> {
        if self.node.is_none() {
            return Err(Error::NoNode);
        }
        for service in &services {
            for ip in &service.cluster_ips {
                check_destination(*ip)?;
            }
        }
        KubeProxy::start(self.node_netns_path(), self.state_path(), services)
    }

    /// Every network namespace of the lab.
    pub fn netns_names(&self) -> &[String] {
        &self.state.netns
    }

    /// Every cgroup directory of the lab (pod-level and container-level, and the internet's).
    pub fn cgroup_dirs(&self) -> &[PathBuf] {
        &self.state.cgroups
    }

    /// The lab's state file under `/run/observer-lab/`.
    pub fn state_path(&self) -> PathBuf {
        LabState::path_for(&self.state.prefix)
    }

    /// Leaves the lab up after this value is gone (for `cargo xtask lab up`); returns its state file.
    pub fn keep(mut self) -> PathBuf {
        self.keep = true;
        self.state_path()
    }

    /// Creates the cgroups, namespaces, links, addresses, routes and sysctls.
    fn create(&mut self, ipv6: bool, besteffort: &Path, traffic_bin: PathBuf) -> Result<()> {
        // The shared parents; recorded when the lab made them so the last lab removes them.
        for dir in [besteffort.parent().unwrap_or(besteffort), besteffort] {
            if cgroup::create(dir)? {
                state::record_parent(dir)?;
            }
        }
        for pod in &mut self.state.pods {
            cgroup::create(pod.cgroup_dir.parent().unwrap_or(&pod.cgroup_dir))?;
            cgroup::create(&pod.cgroup_dir)?;
            pod.cgroup_id = cgroup::id(&pod.cgroup_dir)?;
        }
        for pod in &mut self.state.host_pods {
            cgroup::create(pod.cgroup_dir.parent().unwrap_or(&pod.cgroup_dir))?;
            cgroup::create(&pod.cgroup_dir)?;
            pod.cgroup_id = cgroup::id(&pod.cgroup_dir)?;
        }
        if let Some(inet) = &mut self.state.internet {
            cgroup::create(&inet.cgroup_dir)?;
            inet.cgroup_id = cgroup::id(&inet.cgroup_dir)?;
        }
        if let Some(node) = &mut self.state.node {
            cgroup::create(&node.cgroup_dir)?;
            node.cgroup_id = cgroup::id(&node.cgroup_dir)?;
        }
        self.state.save()?;

        let adds: String = self.state.netns.iter().map(|n| format!("netns add {n}\n")).collect();
        ip_batch(None, &adds)?;
        // Before any link exists, so every interface inherits it: with DAD on, link-local addresses
        // stay tentative for a second or two and the router sends no neighbour solicitations in that
        // time, so the first forwarded IPv6 packets would vanish.
        for ns in &self.state.netns {
            set_sysctls(ns, &[("net/ipv6/conf/all/accept_dad", "0"), ("net/ipv6/conf/default/accept_dad", "0")])?;
        }

        let v6 = |line: String| if ipv6 { line } else { String::new() };
        let mut node = format!(
            "link set lo up\nlink add br0 type bridge\naddr add {POD_GATEWAY_V4}/{POD_PREFIX_V4} dev br0\n{}link set br0 up\n",
            v6(format!("addr add {POD_GATEWAY_V6}/64 dev br0 nodad\n"))
        );
        for (i, pod) in self.state.pods.iter().enumerate() {
            node.push_str(&format!(
                "link add veth{i} type veth peer name eth0 address {} netns {}\nlink set veth{i} master br0 up\n",
                pod.mac, pod.netns
            ));
        }
        if let Some(inet) = &self.state.internet {
            node.push_str(&format!(
                "link add inet0 type veth peer name eth0 netns {}\naddr add {INTERNET_ROUTER_V4}/24 dev inet0\n{}\
                 link set inet0 up\n",
                inet.netns,
                v6(format!("addr add {INTERNET_ROUTER_V6}/64 dev inet0 nodad\n"))
            ));
        }
        ip_batch(Some(&self.node_netns), &node)?;
        // A router only inside the node namespace; the root namespace is never touched.
        let mut knobs = vec![("net/ipv4/ip_forward", "1")];
        if ipv6 {
            knobs.push(("net/ipv6/conf/all/forwarding", "1"));
        }
        set_sysctls(&self.node_netns, &knobs)?;
        if let Some(mut info) = self.state.node.clone() {
            let internet_link = self.state.internet.is_some().then_some("inet0");
            let created = node::create(&mut info, internet_link);
            // Whatever was done is recorded, also when a step failed, so teardown undoes it.
            self.state.node = Some(info.clone());
            self.state.save()?;
            created?;
            self.node = Some(Node { info, traffic_bin: traffic_bin.clone() });
        }

        for pod in &self.state.pods {
            let mut lines = format!(
                "link set lo up\naddr add {}/{POD_PREFIX_V4} dev eth0\nlink set eth0 up\nroute add default via {POD_GATEWAY_V4}\n",
                pod.ipv4
            );
            if let Some(ip6) = pod.ipv6 {
                lines.push_str(&format!("addr add {ip6}/64 dev eth0 nodad\nroute add ::/0 via {POD_GATEWAY_V6}\n"));
            }
            ip_batch(Some(&pod.netns), &lines)?;
            set_sysctls(&pod.netns, &POD_SYSCTLS)?;
        }
        if let Some(inet) = &self.state.internet {
            let mut lines = format!(
                "link set lo up\naddr add {}/24 dev eth0\nlink set eth0 up\nroute add default via {INTERNET_ROUTER_V4}\n",
                inet.ipv4
            );
            if let Some(ip6) = inet.ipv6 {
                lines.push_str(&format!("addr add {ip6}/64 dev eth0 nodad\nroute add ::/0 via {INTERNET_ROUTER_V6}\n"));
            }
            ip_batch(Some(&inet.netns), &lines)?;
            set_sysctls(&inet.netns, &POD_SYSCTLS)?;
            self.internet =
                Some(Internet { info: inet.clone(), traffic_bin: traffic_bin.clone(), next_host: AtomicU8::new(11) });
        }
        for pod in self.state.pods.iter_mut().chain(&mut self.state.host_pods) {
            pod.traffic_bin.clone_from(&traffic_bin);
        }
        self.state.save()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for e in self.state.teardown() {
            eprintln!("observer-lab: tearing down {}: {e}", self.state.prefix);
        }
    }
}

/// Runs `ip [-n netns] -batch -` with `lines`.
pub(crate) fn ip_batch(netns: Option<&str>, lines: &str) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"]);
    exec::run(&mut cmd, Some(lines), TOOL_TIMEOUT).map(drop)
}

/// Writes `/proc/sys/<knob>` values inside the namespace `netns`.
pub(crate) fn set_sysctls(netns: &str, knobs: &[(&str, &str)]) -> Result<()> {
    exec::in_netns(&Path::new(NETNS_DIR).join(netns), || {
        for (knob, value) in knobs {
            let path = Path::new("/proc/sys").join(knob);
            fs::write(&path, value).map_err(Error::io("setting", path))?;
        }
        Ok(())
    })
}

/// The persistent lab's state, if one is up.
pub fn persistent_state() -> Result<Option<LabState>> {
    let path = LabState::path_for(PERSISTENT_PREFIX);
    if path.exists() { LabState::load(&path).map(Some) } else { Ok(None) }
}

/// Removes the persistent lab if one is up; returns whether there was one.
pub fn down_persistent() -> Result<bool> {
    exec::require_root()?;
    let Some(state) = persistent_state()? else { return Ok(false) };
    let errors = state.teardown();
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(true),
    }
}
