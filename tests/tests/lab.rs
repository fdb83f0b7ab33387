//! Self-tests of the lab on the real kernel: a lab in, assertions on reachability, exact byte counts,
//! cgroup and namespace membership, firewall helpers and complete cleanup out.
//!
//! Root only; run with `--test-threads=1` (kernel state is shared):
//! `AYA_BUILD_SKIP=1 cargo test -p observer-tests --test lab -- --test-threads=1`

use std::{
    collections::HashSet,
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use observer_tests::{
    BurstOpts, Endpoint, Error, INTERNET_HOST_V4, INTERNET_HOST_V6, INTERNET_ROUTER_V4, INTERNET_ROUTER_V6,
    KUBE_DNS_IP_V4, KUBE_DNS_IP_V6, Lab, LabState, NETNS_DIR, NODE_IP_V4, NODE_IP_V6, ObserverProcess, POD_GATEWAY_V4,
    POD_GATEWAY_V6, PROBE_REQUEST_BYTES, PingReport, Proc, Protocol, ServerEvent, Service, TcpClientOpts,
    TcpServerOpts, UdpClientOpts, UdpServerOpts, cleanup_stale, cluster_ip_v4, cluster_ip_v6,
    dns::{DnsQueryOpts, Zone},
    manifests::{self, PodSpec},
    root_or_skip,
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_lab-traffic");

fn lab(pods: usize, ipv6: bool, internet: bool) -> Lab {
    Lab::builder().pods(pods).ipv6(ipv6).internet(internet).traffic_bin(TRAFFIC).build().expect("building the lab")
}

fn any(port: u16) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port)
}

fn quick(timeout_ms: u64) -> TcpClientOpts {
    TcpClientOpts { timeout: Duration::from_millis(timeout_ms), ..Default::default() }
}

/// The `done` line of a server started with `max_conns`/`max_requests`.
fn done(server: &mut Proc) -> (u64, u64, u64) {
    let line = server
        .wait_for_line(Duration::from_secs(30), |l| matches!(ServerEvent::parse(l), Some(ServerEvent::Done { .. })))
        .expect("server finished");
    match ServerEvent::parse(&line) {
        Some(ServerEvent::Done { served, bytes_received, bytes_sent }) => (served, bytes_received, bytes_sent),
        other => panic!("not a done line: {other:?}"),
    }
}

/// Everything a lab leaves on the machine, to check it is gone afterwards.
struct Footprint {
    netns: Vec<String>,
    cgroups: Vec<PathBuf>,
    state: PathBuf,
    prefix: String,
}

impl Footprint {
    fn of(lab: &Lab) -> Self {
        Self {
            netns: lab.netns_names().to_vec(),
            cgroups: lab.cgroup_dirs().to_vec(),
            state: lab.state_path(),
            prefix: lab.prefix().to_owned(),
        }
    }

    fn assert_gone(&self) {
        for ns in &self.netns {
            assert!(!Path::new(NETNS_DIR).join(ns).exists(), "netns {ns} still exists");
        }
        for dir in &self.cgroups {
            assert!(!dir.exists(), "cgroup {} still exists", dir.display());
        }
        assert!(!self.state.exists(), "state file {} still exists", self.state.display());
        let netns = fs::read_dir(NETNS_DIR).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or(vec![]);
        assert!(
            !netns.iter().any(|n| n.to_string_lossy().starts_with(&self.prefix)),
            "leftover namespaces with prefix {}: {netns:?}",
            self.prefix
        );
        let links = Command::new("ip").args(["-o", "link"]).output().expect("ip link");
        assert!(!String::from_utf8_lossy(&links.stdout).contains(&self.prefix), "links mention {}", self.prefix);
    }
}

/// Waits (bounded) for a process the lab should have killed, and reaps it.
fn assert_killed(child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "process {} survived the lab", child.id());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn pods_reach_each_other_over_tcp_with_exact_bytes() {
    if !root_or_skip("pods_reach_each_other_over_tcp_with_exact_bytes") {
        return;
    }
    let lab = lab(3, false, false);
    let (client, server_pod) = (lab.pod(0), lab.pod(1));
    let opts = TcpServerOpts { reply: 1000, max_conns: Some(5), log_conns: true, ..Default::default() };
    let mut server = server_pod.tcp_server(any(8080), &opts).expect("server");
    let report = client
        .tcp_client(server_pod.addr_v4(8080), &TcpClientOpts { count: 5, send: 300, expect: 1000, ..quick(2000) })
        .expect("client");
    assert_eq!((report.attempted, report.connected, report.complete), (5, 5, 5), "{report:?}");
    assert_eq!((report.refused, report.timed_out, report.other_errors), (0, 0, 0), "{report:?}");
    assert_eq!((report.bytes_sent, report.bytes_received), (1500, 5000), "{report:?}");
    assert_eq!(report.local_ports.iter().collect::<HashSet<_>>().len(), 5, "distinct local ports: {report:?}");
    assert_eq!(done(&mut server), (5, 1500, 5000));
    let peers: Vec<String> = server
        .lines()
        .iter()
        .filter_map(|l| match ServerEvent::parse(l) {
            Some(ServerEvent::Conn { peer, .. }) => Some(peer),
            _ => None,
        })
        .collect();
    assert_eq!(peers.len(), 5);
    assert!(peers.iter().all(|p| p.starts_with(&format!("{}:", client.ipv4()))), "peers {peers:?}");

    // The third pod reaches the second as well, and nobody answers on a closed port.
    let mut server =
        server_pod.tcp_server(any(8081), &TcpServerOpts { reply: 7, ..Default::default() }).expect("server");
    let r = lab.pod(2).tcp_client(server_pod.addr_v4(8081), &TcpClientOpts { send: 1, expect: 7, ..quick(2000) });
    assert_eq!(r.expect("client").complete, 1);
    server.kill();
    let r = lab.pod(2).tcp_client(server_pod.addr_v4(8081), &quick(2000)).expect("client");
    assert_eq!((r.refused, r.connected), (1, 0), "{r:?}");
}

#[test]
fn internet_hosts_are_reachable_through_the_router() {
    if !root_or_skip("internet_hosts_are_reachable_through_the_router") {
        return;
    }
    let lab = lab(1, false, true);
    let internet = lab.internet().expect("internet");
    assert_eq!(internet.ipv4(), INTERNET_HOST_V4);
    let _server = internet.tcp_server(any(443), &TcpServerOpts { reply: 200, ..Default::default() }).expect("server");
    let r = lab
        .pod(0)
        .tcp_client(
            SocketAddr::new(INTERNET_HOST_V4.into(), 443),
            &TcpClientOpts { send: 50, expect: 200, ..quick(2000) },
        )
        .expect("client");
    assert_eq!((r.complete, r.bytes_sent, r.bytes_received), (1, 50, 200), "{r:?}");

    let extra = internet.add_host_address().expect("extra address");
    assert_eq!(extra, Ipv4Addr::new(203, 0, 113, 11));
    let target = SocketAddr::new(extra.into(), 80);
    let _server2 = internet.tcp_server(target, &TcpServerOpts { reply: 3, ..Default::default() }).expect("server");
    let r = lab.pod(0).tcp_client(target, &TcpClientOpts { count: 2, send: 1, expect: 3, ..quick(2000) });
    assert_eq!(r.expect("client").complete, 2);

    // And back: the internet can open connections to a pod (no NAT in the lab).
    let _server3 = lab.pod(0).tcp_server(any(9000), &TcpServerOpts { reply: 1, ..Default::default() }).expect("server");
    let r = internet.tcp_client(lab.pod(0).addr_v4(9000), &TcpClientOpts { expect: 1, ..quick(2000) });
    assert_eq!(r.expect("client").complete, 1);

    let out_of_range = internet.add_address("192.0.2.1".parse().expect("ip"));
    assert!(matches!(out_of_range, Err(Error::AddressOutOfRange { .. })), "{out_of_range:?}");
}

#[test]
fn ipv6_works_between_pods_and_to_the_internet() {
    if !root_or_skip("ipv6_works_between_pods_and_to_the_internet") {
        return;
    }
    let lab = lab(2, true, true);
    let target = lab.pod(1).addr_v6(8080).expect("pod has IPv6");
    assert_eq!(target.to_string(), "[2001:db8:198:18::11]:8080");
    let _server = lab.pod(1).tcp_server(target, &TcpServerOpts { reply: 64, ..Default::default() }).expect("server");
    let r = lab.pod(0).tcp_client(target, &TcpClientOpts { count: 2, send: 10, expect: 64, ..quick(2000) });
    let r = r.expect("client");
    assert_eq!((r.complete, r.bytes_sent, r.bytes_received), (2, 20, 128), "{r:?}");

    let internet = lab.internet().expect("internet");
    let inet = SocketAddr::new(INTERNET_HOST_V6.into(), 443);
    let _server = internet.tcp_server(inet, &TcpServerOpts { reply: 5, ..Default::default() }).expect("server");
    let r = lab.pod(0).tcp_client(inet, &TcpClientOpts { send: 5, expect: 5, ..quick(2000) }).expect("client");
    assert_eq!(r.complete, 1, "{r:?}");

    let udp = lab.pod(1).addr_v6(5353).expect("v6");
    let _server = lab.pod(1).udp_server(udp, &UdpServerOpts { reply: 32, ..Default::default() }).expect("udp server");
    let r = lab.pod(0).udp_client(udp, &UdpClientOpts { count: 3, send: 8, expect: 32, ..Default::default() });
    assert_eq!(r.expect("udp client").complete, 3);
}

#[test]
fn udp_request_reply_with_exact_sizes() {
    if !root_or_skip("udp_request_reply_with_exact_sizes") {
        return;
    }
    let lab = lab(2, false, false);
    let opts = UdpServerOpts { reply: 100, max_requests: Some(3) };
    let mut server = lab.pod(1).udp_server(any(5353), &opts).expect("server");
    let r = lab
        .pod(0)
        .udp_client(lab.pod(1).addr_v4(5353), &UdpClientOpts { count: 3, send: 40, expect: 100, ..Default::default() })
        .expect("client");
    assert_eq!((r.sent, r.replies, r.complete, r.timed_out), (3, 3, 3, 0), "{r:?}");
    assert_eq!((r.bytes_sent, r.bytes_received), (120, 300), "{r:?}");
    assert_eq!(done(&mut server), (3, 120, 300));

    // Nothing listens any more: port unreachable comes back as refused.
    let r = lab
        .pod(0)
        .udp_client(lab.pod(1).addr_v4(5353), &UdpClientOpts { count: 2, ..Default::default() })
        .expect("client");
    assert_eq!((r.replies, r.refused), (0, 2), "{r:?}");
}

#[test]
fn ping_works_for_v4_and_v6_with_both_socket_kinds() {
    if !root_or_skip("ping_works_for_v4_and_v6_with_both_socket_kinds") {
        return;
    }
    let lab = lab(2, true, true);
    let pod = lab.pod(0);
    let internet = lab.internet().expect("internet");
    for dest in [
        IpAddr::from(lab.pod(1).ipv4()),
        IpAddr::from(lab.pod(1).ipv6().expect("v6")),
        internet.ipv4().into(),
        IpAddr::from(internet.ipv6().expect("v6")),
    ] {
        let r = pod.ping(dest, 2).expect("ping");
        assert_eq!((r.sent, r.received), (2, 2), "{r:?}");
        for socket in ["raw", "dgram"] {
            let args = ["ping", "--dest", &dest.to_string(), "--count", "1", "--socket", socket];
            let out = pod.run(TRAFFIC, args, Duration::from_secs(10)).expect("lab-traffic ping");
            let line = String::from_utf8_lossy(&out.stdout);
            let r: PingReport = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line:?} {out:?}"));
            assert_eq!((r.method.as_str(), r.received), (socket, 1), "{r:?}");
        }
    }
    // An address nobody has: no reply, within the bound.
    let r = pod.ping("198.18.0.99".parse().expect("ip"), 1).expect("ping");
    assert_eq!((r.sent, r.received), (1, 0), "{r:?}");
    // Outside the lab ranges: refused before anything is sent.
    let r = pod.ping("192.0.2.1".parse().expect("ip"), 1);
    assert!(matches!(r, Err(Error::AddressOutOfRange { .. })), "{r:?}");
}

fn same_file(a: &Path, b: &Path) -> bool {
    let (a, b) = (fs::metadata(a).expect("stat"), fs::metadata(b).expect("stat"));
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

#[test]
fn commands_run_in_the_pod_cgroup_and_netns() {
    if !root_or_skip("commands_run_in_the_pod_cgroup_and_netns") {
        return;
    }
    let lab = lab(2, false, true);
    let pod = lab.pod(1);
    assert!(pod.cgroup_dir().starts_with(lab.cgroup_root()));
    assert_eq!(pod.cgroup_dir(), lab.cgroup_root().join(pod.cgroup_path().trim_start_matches('/')));
    assert_eq!(pod.cgroup_path(), format!("/kubepods/besteffort/pod{}/{}", pod.uid(), pod.container_id()));
    assert_eq!(pod.cgroup_id(), fs::metadata(pod.cgroup_dir()).expect("stat").ino());
    assert_eq!(pod.container_id().len(), 64);
    assert_ne!(pod.uid(), lab.pod(0).uid());

    let sleeper = pod.spawn("sleep", ["30"]).expect("spawn");
    let pid = sleeper.pid();
    let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("proc cgroup");
    assert!(cgroup.lines().any(|l| l == format!("0::{}", pod.cgroup_path())), "{cgroup}");
    let procs = fs::read_to_string(pod.cgroup_dir().join("cgroup.procs")).expect("cgroup.procs");
    assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
    assert!(same_file(Path::new(&format!("/proc/{pid}/ns/net")), &pod.netns_path()), "pid {pid} not in the netns");
    assert!(!same_file(Path::new(&format!("/proc/{pid}/ns/net")), &lab.pod(0).netns_path()));

    // What a program sees from inside: its cgroup and only the pod's eth0 address.
    let out = pod.run("sh", ["-c", "cat /proc/self/cgroup; ip -o -4 addr show dev eth0"], Duration::from_secs(5));
    let out = String::from_utf8_lossy(&out.expect("run").stdout).into_owned();
    assert!(out.contains(&format!("0::{}", pod.cgroup_path())), "{out}");
    assert!(out.contains(&format!("inet {}/24", pod.ipv4())), "{out}");

    let internet = lab.internet().expect("internet");
    let p = internet.spawn("sleep", ["30"]).expect("spawn");
    let cgroup = fs::read_to_string(format!("/proc/{}/cgroup", p.pid())).expect("proc cgroup");
    let rel = internet.cgroup_dir().strip_prefix(lab.cgroup_root()).expect("under root");
    assert!(cgroup.lines().any(|l| l == format!("0::/{}", rel.display())), "{cgroup}");
    assert!(same_file(Path::new(&format!("/proc/{}/ns/net", p.pid())), &internet.netns_path()));
    assert_eq!(internet.cgroup_id(), fs::metadata(internet.cgroup_dir()).expect("stat").ino());

    drop(sleeper);
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "guard killed and reaped {pid}");
}

#[test]
fn syn_drop_makes_connects_time_out() {
    if !root_or_skip("syn_drop_makes_connects_time_out") {
        return;
    }
    let lab = lab(2, true, false);
    let server_pod = lab.pod(1);
    let _server = server_pod.tcp_server("[::]:8080".parse().expect("addr"), &TcpServerOpts::default()).expect("server");
    let rule = server_pod.drop_inbound_tcp_syn(8080).expect("nft rule");
    for target in [server_pod.addr_v4(8080), server_pod.addr_v6(8080).expect("v6")] {
        let start = Instant::now();
        let r = lab.pod(0).tcp_client(target, &TcpClientOpts { count: 2, ..quick(300) }).expect("client");
        assert_eq!((r.attempted, r.timed_out, r.connected, r.refused), (2, 2, 0, 0), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(5), "bounded: {:?}", start.elapsed());
    }
    drop(rule);
    let r = lab.pod(0).tcp_client(server_pod.addr_v4(8080), &quick(2000)).expect("client");
    assert_eq!((r.connected, r.complete), (1, 1), "rule removed: {r:?}");
}

#[test]
fn block_peer_drops_everything_from_it() {
    if !root_or_skip("block_peer_drops_everything_from_it") {
        return;
    }
    let lab = lab(3, false, false);
    let target = lab.pod(1);
    let _server = target.tcp_server(any(8080), &TcpServerOpts::default()).expect("server");
    let block = target.block_peer(lab.pod(0).ipv4().into()).expect("nft rules");
    let r = lab.pod(0).tcp_client(target.addr_v4(8080), &quick(300)).expect("client");
    assert_eq!((r.timed_out, r.connected), (1, 0), "{r:?}");
    assert_eq!(lab.pod(0).ping(target.ipv4().into(), 1).expect("ping").received, 0);
    let r = lab.pod(2).tcp_client(target.addr_v4(8080), &quick(2000)).expect("client");
    assert_eq!(r.complete, 1, "other peers unaffected: {r:?}");
    drop(block);
    let r = lab.pod(0).tcp_client(target.addr_v4(8080), &quick(2000)).expect("client");
    assert_eq!(r.complete, 1, "unblocked: {r:?}");
}

#[test]
fn burst_reports_exact_connection_counts() {
    if !root_or_skip("burst_reports_exact_connection_counts") {
        return;
    }
    const N: u64 = 20_000;
    let lab = lab(2, false, false);
    let opts = TcpServerOpts { max_conns: Some(N), ..Default::default() };
    let mut server = lab.pod(1).tcp_server(any(8080), &opts).expect("server");
    let r = lab
        .pod(0)
        .burst(lab.pod(1).addr_v4(8080), &BurstOpts { count: N, threads: 4, send: 16, ..Default::default() })
        .expect("burst");
    assert_eq!((r.attempted, r.completed, r.bytes_sent), (N, N, 16 * N), "{r:?}");
    assert_eq!((r.refused, r.timed_out, r.other_errors), (0, 0, 0), "{r:?}");
    assert_eq!(done(&mut server), (N, 16 * N, 0));
    eprintln!("burst of {N} connections took {} ms", r.elapsed_ms);
}

#[test]
fn drop_removes_namespaces_links_cgroups_and_processes() {
    if !root_or_skip("drop_removes_namespaces_links_cgroups_and_processes") {
        return;
    }
    let kubepods_before =
        Path::new(&observer_tests::detect_cgroup_root().expect("cgroup root")).join("kubepods").exists();
    let lab = lab(2, true, true);
    let footprint = Footprint::of(&lab);
    assert!(footprint.netns.iter().all(|ns| Path::new(NETNS_DIR).join(ns).exists()));
    assert!(footprint.cgroups.iter().all(|d| d.is_dir()));
    // A process nobody guards: the lab must kill it through its cgroup.
    let mut stray = lab.pod(0).command("sleep").arg("60").spawn().expect("spawn");
    let _rule = lab.pod(1).drop_inbound_tcp_syn(80).expect("rule");
    let kubepods = lab.cgroup_root().join("kubepods");
    drop(lab);
    footprint.assert_gone();
    assert_killed(&mut stray);
    if !kubepods_before && observer_tests::all_states().is_empty() {
        assert!(!kubepods.exists(), "the lab created {} and left it", kubepods.display());
    }
}

#[test]
fn a_panicking_test_still_cleans_up() {
    if !root_or_skip("a_panicking_test_still_cleans_up") {
        return;
    }
    let seen: Mutex<Option<Footprint>> = Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let lab = lab(1, false, true);
        let _server = lab.pod(0).tcp_server(any(80), &TcpServerOpts::default()).expect("server");
        *seen.lock().expect("lock") = Some(Footprint::of(&lab));
        panic!("a test failing half-way");
    });
    assert!(result.is_err());
    seen.lock().expect("lock").take().expect("lab was built").assert_gone();
}

#[test]
fn cleanup_stale_removes_what_a_crashed_run_left() {
    if !root_or_skip("cleanup_stale_removes_what_a_crashed_run_left") {
        return;
    }
    let lab = lab(2, false, true);
    let footprint = Footprint::of(&lab);
    let mut stray = lab.pod(0).command("sleep").arg("60").spawn().expect("spawn");
    // Simulate a crash: the Lab is never dropped and its owner pid is dead (a reaped child's pid).
    std::mem::forget(lab);
    let mut dead = Command::new("true").spawn().expect("spawn true");
    let dead_pid = dead.id();
    dead.wait().expect("wait true");
    let mut state: serde_json::Value =
        serde_json::from_slice(&fs::read(&footprint.state).expect("state file")).expect("state json");
    state["owner_pid"] = dead_pid.into();
    fs::write(&footprint.state, serde_json::to_vec(&state).expect("json")).expect("write state");

    let removed = cleanup_stale().expect("cleanup_stale");
    assert!(removed.contains(&footprint.prefix), "{removed:?}");
    footprint.assert_gone();
    assert_killed(&mut stray);
}

#[test]
fn bad_requests_fail_with_clear_errors() {
    if !root_or_skip("bad_requests_fail_with_clear_errors") {
        return;
    }
    let zero = Lab::builder().pods(0).traffic_bin(TRAFFIC).build();
    assert!(matches!(zero, Err(Error::PodCount { pods: 0, .. })), "{zero:?}");
    let lab = lab(1, false, false);
    let r = lab.pod(0).tcp_client("8.8.8.8:53".parse().expect("addr"), &quick(100));
    assert!(matches!(r, Err(Error::AddressOutOfRange { .. })), "{r:?}");
    // The binary refuses too, whoever runs it.
    let out =
        lab.pod(0).run(TRAFFIC, ["tcp-client", "--connect", "192.0.2.1:80"], Duration::from_secs(5)).expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside the lab ranges"));
    assert_eq!(Error::NotRoot.to_string(), "the lab needs root (network namespaces, cgroups): run as root");
    let missing = Error::MissingTool { tool: "nft", package: "nftables" }.to_string();
    assert!(missing.contains("nftables"), "{missing}");
}

// ---- The lab as a node: kube-proxy Services, kube-dns, probes, host-network pod, masquerade. ----

fn node_lab(pods: usize, internet: bool) -> Lab {
    Lab::builder().pods(pods).ipv6(true).internet(internet).node(true).traffic_bin(TRAFFIC).build().expect("node lab")
}

/// A server that logs every connection.
fn logging_server(pod: &impl Endpoint, listen: SocketAddr, reply: u64) -> Proc {
    pod.tcp_server(listen, &TcpServerOpts { reply, log_conns: true, ..Default::default() }).expect("server")
}

/// The peers of the connections a `logging_server` served so far.
fn peers(server: &Proc) -> Vec<IpAddr> {
    server
        .lines()
        .iter()
        .filter_map(|l| match ServerEvent::parse(l) {
            Some(ServerEvent::Conn { peer, .. }) => peer.parse::<SocketAddr>().ok().map(|a| a.ip()),
            _ => None,
        })
        .collect()
}

/// Waits (bounded) until `servers` logged `n` connections between them and returns their peers.
fn wait_all_peers(servers: &[&Proc], n: usize) -> Vec<Vec<IpAddr>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let all: Vec<Vec<IpAddr>> = servers.iter().map(|s| peers(s)).collect();
        if all.iter().map(Vec::len).sum::<usize>() >= n || Instant::now() >= deadline {
            return all;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (bounded) until `server` logged `n` connections and returns their peers.
fn wait_peers(server: &Proc, n: usize) -> Vec<IpAddr> {
    wait_all_peers(&[server], n).remove(0)
}

/// The `web` Service on pods 1 and 2 (port 80 → 8080, NodePort 30080), dual-stack.
fn web(lab: &Lab) -> Service {
    Service::new("shop", "web", &[cluster_ip_v4(20).into(), cluster_ip_v6(20).into()])
        .selector("app", "web")
        .port("http", Protocol::Tcp, 80, 8080)
        .node_port(30080)
        .backend(lab.pod(1), "web-0")
        .backend(lab.pod(2), "web-1")
}

/// `iptables-save -t nat` (or ip6tables) inside the node namespace.
fn nat_table(lab: &Lab, v6: bool) -> String {
    let tool = if v6 { "ip6tables-save" } else { "iptables-save" };
    let out = lab.node().expect("node").run(tool, ["-t", "nat"], Duration::from_secs(10)).expect("iptables-save");
    assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_service_spreads_its_clients_over_every_backend_and_conntrack_shows_the_dnat() {
    if !root_or_skip("a_service_spreads_its_clients_over_every_backend_and_conntrack_shows_the_dnat") {
        return;
    }
    let lab = node_lab(3, false);
    let (client, a, b) = (lab.pod(0), lab.pod(1), lab.pod(2));
    let service = web(&lab);
    let _proxy = lab.kube_proxy(vec![service.clone()]).expect("kube-proxy rules");
    let nat = nat_table(&lab, false);
    assert!(
        nat.contains("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"),
        "{nat}"
    );
    assert!(nat.contains("-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"), "{nat}");
    assert_eq!(nat.matches("-m statistic --mode random --probability 0.50000000000").count(), 1, "{nat}");
    let node = lab.node().expect("node");
    assert!(!node.conntrack().expect("conntrack").iter().any(|e| e.orig_dst.port() == 80));

    for v6 in [false, true] {
        let listen = |p: &observer_tests::Pod| if v6 { p.addr_v6(8080).expect("v6") } else { p.addr_v4(8080) };
        let servers = [logging_server(a, listen(a), 7), logging_server(b, listen(b), 7)];
        let target = service.addr("http", v6).expect("ClusterIP");
        const N: u64 = 40;
        let r = client.tcp_client(target, &TcpClientOpts { count: N, send: 5, expect: 7, ..quick(2000) });
        let r = r.expect("client");
        assert_eq!((r.attempted, r.complete), (N, N), "{r:?}");
        let served = wait_all_peers(&[&servers[0], &servers[1]], N as usize);
        // Each backend got some (both empty-handed would be a 1 in 2^39 chance), all from the client's own address.
        assert_eq!(served[0].len() + served[1].len(), N as usize, "{served:?}");
        assert!(served.iter().all(|s| !s.is_empty()), "the statistic rule did not spread: {served:?}");
        let client_ip: IpAddr = if v6 { client.ipv6().expect("v6").into() } else { client.ipv4().into() };
        assert!(served.iter().flatten().all(|peer| *peer == client_ip), "{served:?}");

        let dnat: Vec<_> = node.conntrack().expect("conntrack").into_iter().filter(|e| e.orig_dst == target).collect();
        assert_eq!(dnat.len(), N as usize, "{dnat:?}");
        let backends: HashSet<IpAddr> = [listen(a).ip(), listen(b).ip()].into();
        for entry in &dnat {
            assert!(entry.is_dnat() && entry.protocol == "tcp", "{entry:?}");
            assert_eq!(entry.orig_src.ip(), client_ip, "{entry:?}");
            assert!(backends.contains(&entry.reply_src.ip()) && entry.reply_src.port() == 8080, "{entry:?}");
            assert_eq!(entry.reply_dst, entry.orig_src, "no SNAT between pods: {entry:?}");
        }
    }
}

#[test]
fn kube_dns_answers_through_its_cluster_ip_over_udp_and_tcp() {
    if !root_or_skip("kube_dns_answers_through_its_cluster_ip_over_udp_and_tcp") {
        return;
    }
    let lab = node_lab(2, false);
    let (client, coredns) = (lab.pod(0), lab.pod(1));
    let web_ip: IpAddr = cluster_ip_v4(20).into();
    let zone = Zone::default().with("web.shop.svc.cluster.local", &[web_ip], 30);
    let _dns = coredns.dns_server(coredns.addr_v4(53), &zone).expect("DNS server");
    let _dns6 = coredns.dns_server(coredns.addr_v6(53).expect("v6"), &zone).expect("DNS server v6");
    let _proxy = lab.kube_proxy(vec![Service::kube_dns(coredns, "coredns-0", true)]).expect("kube-proxy");
    for server in [SocketAddr::new(KUBE_DNS_IP_V4.into(), 53), SocketAddr::new(KUBE_DNS_IP_V6.into(), 53)] {
        for tcp in [false, true] {
            let opts = DnsQueryOpts { tcp, ..DnsQueryOpts::a("web.shop.svc.cluster.local") };
            let answer = client.dns_query(server, &opts).expect("query");
            assert_eq!(
                (answer.rcode.as_str(), answer.addrs.as_slice()),
                ("NOERROR", &[web_ip][..]),
                "{server} tcp={tcp}"
            );
        }
    }
    let node = lab.node().expect("node");
    let dns: Vec<_> = node.conntrack().expect("conntrack").into_iter().filter(|e| e.orig_dst.port() == 53).collect();
    assert_eq!(dns.iter().filter(|e| e.protocol == "udp").count(), 2, "{dns:?}");
    assert_eq!(dns.iter().filter(|e| e.protocol == "tcp").count(), 2, "{dns:?}");
    assert!(dns.iter().all(|e| e.is_dnat() && e.reply_src.ip() != e.orig_dst.ip()), "{dns:?}");
}

#[test]
fn a_node_port_reaches_its_backend_from_pods_and_from_the_node() {
    if !root_or_skip("a_node_port_reaches_its_backend_from_pods_and_from_the_node") {
        return;
    }
    let lab = node_lab(3, false);
    let service = Service { backends: web(&lab).backends[..1].to_vec(), ..web(&lab) };
    let _proxy = lab.kube_proxy(vec![service]).expect("kube-proxy");
    let backend = lab.pod(1);
    let server = logging_server(backend, backend.addr_v4(8080), 9);
    let node = lab.node().expect("node");
    let node_port = SocketAddr::new(NODE_IP_V4.into(), 30080);
    let r = lab.pod(0).tcp_client(node_port, &TcpClientOpts { count: 2, send: 3, expect: 9, ..quick(2000) });
    assert_eq!(r.expect("pod to NodePort").complete, 2);
    let r = node.tcp_client(node_port, &TcpClientOpts { count: 1, send: 3, expect: 9, ..quick(2000) });
    assert_eq!(r.expect("node to NodePort").complete, 1);
    // NodePort traffic is marked and masqueraded (externalTrafficPolicy: Cluster): the backend sees
    // the node's bridge address for all three.
    assert_eq!(wait_peers(&server, 3), vec![IpAddr::from(POD_GATEWAY_V4); 3]);
    let v6 = SocketAddr::new(NODE_IP_V6.into(), 30080);
    let _server6 = logging_server(backend, backend.addr_v6(8080).expect("v6"), 9);
    let r = lab.pod(0).tcp_client(v6, &TcpClientOpts { send: 3, expect: 9, ..quick(2000) });
    assert_eq!(r.expect("pod to v6 NodePort").complete, 1);
}

#[test]
fn probes_come_from_the_bridge_and_from_the_node_address() {
    if !root_or_skip("probes_come_from_the_bridge_and_from_the_node_address") {
        return;
    }
    let lab = node_lab(2, false);
    let (pod, node) = (lab.pod(1), lab.node().expect("node"));
    let server = logging_server(pod, pod.addr_v4(8080), 20);
    let server6 = logging_server(pod, pod.addr_v6(8080).expect("v6"), 20);
    for source in [IpAddr::from(POD_GATEWAY_V4), IpAddr::from(NODE_IP_V4)] {
        let r = node.probe(source, pod.addr_v4(8080), 20).expect("probe");
        assert_eq!((r.complete, r.bytes_sent), (1, PROBE_REQUEST_BYTES), "{r:?}");
    }
    for source in [IpAddr::from(POD_GATEWAY_V6), IpAddr::from(NODE_IP_V6)] {
        let r = node.probe(source, pod.addr_v6(8080).expect("v6"), 20).expect("probe v6");
        assert_eq!(r.complete, 1, "{r:?}");
    }
    assert_eq!(wait_peers(&server, 2), vec![IpAddr::from(POD_GATEWAY_V4), IpAddr::from(NODE_IP_V4)]);
    assert_eq!(wait_peers(&server6, 2), vec![IpAddr::from(POD_GATEWAY_V6), IpAddr::from(NODE_IP_V6)]);
    assert_eq!(
        node.addresses(),
        vec![IpAddr::from(POD_GATEWAY_V4), NODE_IP_V4.into(), POD_GATEWAY_V6.into(), NODE_IP_V6.into()]
    );
    // The probes run in the node's own cgroup, not in a pod's.
    let out = node.run("cat", ["/proc/self/cgroup"], Duration::from_secs(5)).expect("cat");
    let cgroup = String::from_utf8_lossy(&out.stdout);
    assert!(cgroup.lines().any(|l| l == format!("0::/{}node", lab.prefix())), "{cgroup}");
}

#[test]
fn the_host_network_pod_has_the_node_namespace_and_a_pod_cgroup() {
    if !root_or_skip("the_host_network_pod_has_the_node_namespace_and_a_pod_cgroup") {
        return;
    }
    let lab = node_lab(1, false);
    let host = lab.host_pod().expect("host-network pod");
    assert!(host.host_network());
    assert_eq!((host.ipv4(), host.ipv6()), (NODE_IP_V4, Some(NODE_IP_V6)));
    assert_eq!(host.netns(), lab.node_netns());
    let sleeper = host.spawn("sleep", ["30"]).expect("spawn");
    let cgroup = fs::read_to_string(format!("/proc/{}/cgroup", sleeper.pid())).expect("proc cgroup");
    assert!(cgroup.lines().any(|l| l == format!("0::{}", host.cgroup_path())), "{cgroup}");
    assert!(host.cgroup_path().starts_with("/kubepods/besteffort/pod"), "{}", host.cgroup_path());
    let netns = format!("/proc/{}/ns/net", sleeper.pid());
    assert!(same_file(Path::new(&netns), &lab.node_netns_path()), "not in the node's namespace");
    // It serves on the node's address; a pod reaches it with its own address.
    let server = logging_server(host, host.addr_v4(9100), 4);
    let r = lab.pod(0).tcp_client(host.addr_v4(9100), &TcpClientOpts { send: 1, expect: 4, ..quick(2000) });
    assert_eq!(r.expect("pod to host-network pod").complete, 1);
    assert_eq!(wait_peers(&server, 1), vec![IpAddr::from(lab.pod(0).ipv4())]);
    let pod = manifests::pod(&PodSpec {
        pod: host,
        namespace: "kube-system",
        name: "node-agent-0",
        labels: vec![],
        owner: None,
        ports: vec![],
    });
    assert_eq!(
        (pod["spec"]["hostNetwork"].as_bool(), pod["status"]["podIP"].as_str()),
        (Some(true), Some("198.18.255.10"))
    );
}

#[test]
fn pod_traffic_to_the_internet_is_masqueraded() {
    if !root_or_skip("pod_traffic_to_the_internet_is_masqueraded") {
        return;
    }
    let lab = node_lab(1, true);
    let inet = lab.internet().expect("internet");
    let server = logging_server(inet, SocketAddr::new(INTERNET_HOST_V4.into(), 80), 2);
    let server6 = logging_server(inet, SocketAddr::new(INTERNET_HOST_V6.into(), 80), 2);
    let r = lab
        .pod(0)
        .tcp_client(SocketAddr::new(INTERNET_HOST_V4.into(), 80), &TcpClientOpts { expect: 2, ..quick(2000) });
    assert_eq!(r.expect("v4").complete, 1);
    let r = lab
        .pod(0)
        .tcp_client(SocketAddr::new(INTERNET_HOST_V6.into(), 80), &TcpClientOpts { expect: 2, ..quick(2000) });
    assert_eq!(r.expect("v6").complete, 1);
    assert_eq!(wait_peers(&server, 1), vec![IpAddr::from(INTERNET_ROUTER_V4)]);
    assert_eq!(wait_peers(&server6, 1), vec![IpAddr::from(INTERNET_ROUTER_V6)]);
}

#[test]
fn service_rules_and_the_node_network_are_gone_after_drop() {
    if !root_or_skip("service_rules_and_the_node_network_are_gone_after_drop") {
        return;
    }
    let knobs = ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"];
    let root_knobs = || knobs.map(|k| fs::read_to_string(Path::new("/proc/sys/net/bridge").join(k)).ok());
    let before = root_knobs();
    let lab = node_lab(3, true);
    let footprint = Footprint::of(&lab);
    // bridge-nf is on in the node namespace.
    let out = lab.node().expect("node").run(
        "cat",
        knobs.map(|k| format!("/proc/sys/net/bridge/{k}")),
        Duration::from_secs(5),
    );
    assert_eq!(String::from_utf8_lossy(&out.expect("cat").stdout), "1\n1\n");

    let mut proxy = lab.kube_proxy(vec![web(&lab)]).expect("kube-proxy");
    assert_eq!(LabState::load(&lab.state_path()).expect("state").services, vec![web(&lab)]);
    for v6 in [false, true] {
        assert!(nat_table(&lab, v6).contains("KUBE-SVC-"), "v6={v6}");
    }
    // A sync to fewer backends deletes the backend chain that went away.
    let one = Service { backends: web(&lab).backends[..1].to_vec(), ..web(&lab) };
    proxy.sync(vec![one]).expect("sync");
    assert_eq!(nat_table(&lab, false).matches(":KUBE-SEP-").count(), 1);
    drop(proxy);
    for v6 in [false, true] {
        let nat = nat_table(&lab, v6);
        assert!(!nat.contains("KUBE-"), "v6={v6}: {nat}");
        // The masquerade of pod traffic stays with the lab.
        assert!(nat.contains("-A POSTROUTING -s") && nat.contains("-o inet0 -j MASQUERADE"), "{nat}");
    }
    assert!(LabState::load(&lab.state_path()).expect("state").services.is_empty());

    // Rules recorded in the state file and kept (as `cargo xtask lab up --node` keeps them) go on teardown.
    lab.kube_proxy(vec![web(&lab)]).expect("kube-proxy").keep();
    assert_eq!(LabState::load(&lab.state_path()).expect("state").services.len(), 1);
    drop(lab);
    footprint.assert_gone();
    assert_eq!(root_knobs(), before, "the root namespace's bridge-nf knobs moved");
}

#[test]
fn services_need_a_node_lab() {
    if !root_or_skip("services_need_a_node_lab") {
        return;
    }
    let lab = lab(1, false, false);
    assert!(lab.node().is_none() && lab.host_pod().is_none());
    assert!(matches!(lab.kube_proxy(vec![]), Err(Error::NoNode)));
}

#[test]
fn the_observer_runs_in_the_node_namespace_and_serves_metrics_only_there() {
    if !root_or_skip("the_observer_runs_in_the_node_namespace_and_serves_metrics_only_there") {
        return;
    }
    let lab = node_lab(2, false);
    let observer = ObserverProcess::start_in_netns(&lab.node_netns_path(), &["--poll-interval", "200ms"])
        .expect("observer starts in the node namespace");
    assert!(same_file(Path::new(&format!("/proc/{}/ns/net", observer.pid())), &lab.node_netns_path()));
    let (status, body) = observer.get("/metrics").expect("scrape from inside the node namespace");
    assert_eq!(status, 200);
    assert!(body.contains("flow_observer_"), "{body}");
    // Its loopback is the node's: from the test's own namespace nothing answers there.
    let addr = observer.metrics_addr().expect("metrics address");
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
        "{addr} answered outside"
    );
    // It still sees the pods' sockets through the cgroup hierarchy.
    let (a, b) = (lab.pod(0), lab.pod(1));
    let _server = b.tcp_server(b.addr_v4(8080), &TcpServerOpts { reply: 5, ..Default::default() }).expect("server");
    assert_eq!(a.tcp_client(b.addr_v4(8080), &TcpClientOpts { expect: 5, ..quick(2000) }).expect("client").complete, 1);
    let seen = observer.wait_for_records(Duration::from_secs(10), |records| {
        records.iter().any(|r| r["event"] == "end" && r["cgroup"]["id"].as_u64() == Some(a.cgroup_id()))
    });
    assert!(seen, "no end record from pod0's cgroup:\n{}", observer.log());
    let run = observer.stop().expect("observer stops");
    assert!(run.metrics.contains("flow_observer_"), "the final scrape also goes through the namespace");
}
