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
    BurstOpts, Endpoint, Error, INTERNET_HOST_V4, INTERNET_HOST_V6, Lab, NETNS_DIR, PingReport, Proc, ServerEvent,
    TcpClientOpts, TcpServerOpts, UdpClientOpts, UdpServerOpts, cleanup_stale, root_or_skip,
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
