//! End-to-end capture on the real kernel: lab pods send real traffic while
//! `observer run` watches, and the flow log must say exactly what happened.
//! Root only; run with one thread (`cargo xtask test` does).

use std::{
    collections::HashSet,
    net::SocketAddr,
    time::{Duration, Instant},
};

use observer_tests::{
    BurstOpts, Endpoint, Lab, ObserverProcess, ObserverRun, Pod, TcpClientOpts, TcpClientReport, TcpServerOpts,
    UdpClientOpts, UdpServerOpts, root_or_skip, seccomp,
};
use serde_json::Value;

/// Poll often so the tests do not wait long for records.
const FAST: [&str; 2] = ["--poll-interval", "200ms"];

fn lab(pods: usize) -> Lab {
    Lab::builder().pods(pods).ipv6(true).internet(false).build().expect("lab")
}

fn observe(extra: &[&str]) -> ObserverProcess {
    let args: Vec<&str> = FAST.iter().chain(extra).copied().collect();
    ObserverProcess::start(&args).expect("observer starts")
}

/// Ends the run once the flow log shows what the test waits for (at most
/// 30 s: a record that never comes fails the test's assertions instead).
fn finish(observer: ObserverProcess, done: impl Fn(&[Value]) -> bool) -> ObserverRun {
    observer.wait_for_records(Duration::from_secs(30), done);
    observer.stop().expect("observer stops cleanly")
}

fn u64_at(record: &Value, pointer: &str) -> u64 {
    record.pointer(pointer).and_then(Value::as_u64).unwrap_or_else(|| panic!("{pointer} missing in {record}"))
}

fn str_at<'a>(record: &'a Value, pointer: &str) -> &'a str {
    record.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("{pointer} missing in {record}"))
}

/// `end` records of the flows seen from one pod's cgroup towards `dst`.
fn ends(records: &[Value], cgroup_id: u64, dst: SocketAddr) -> Vec<&Value> {
    records
        .iter()
        .filter(|record| record["event"] == "end" && u64_at(record, "/cgroup/id") == cgroup_id)
        .filter(|record| {
            record["dst"]["ip"].as_str() == Some(&dst.ip().to_string())
                && record["dst"]["port"].as_u64() == Some(u64::from(dst.port()))
        })
        .collect()
}

/// Every record of one flow has the same key; no flow gets two `end` records.
fn assert_one_end_per_flow(run: &ObserverRun) {
    let mut seen = HashSet::new();
    for record in run.records.iter().filter(|record| record["event"] == "end") {
        let key = (
            record["cgroup"]["id"].clone(),
            record["src"].clone(),
            record["dst"].clone(),
            record["protocol"].clone(),
            record["first_seen"].clone(),
        );
        assert!(seen.insert(format!("{key:?}")), "two end records for one flow: {record}");
    }
}

fn assert_no_loss(run: &ObserverRun) {
    for counter in ["events_lost", "flow_inserts_failed", "flows_evicted", "records_dropped"] {
        assert_eq!(run.health[counter], 0, "{counter} in {}", run.health);
    }
}

/// The record of the same connection seen from the other end: same ports.
fn same_connection<'a>(records: &[&'a Value], record: &Value) -> &'a Value {
    let port = u64_at(record, "/src/port");
    let found: Vec<&&Value> = records.iter().filter(|other| u64_at(other, "/src/port") == port).collect();
    assert_eq!(found.len(), 1, "one record from the other end for port {port}: {found:#?}");
    found[0]
}

/// Both ends of each connection are on this node: the client's and the
/// server's records count the same segments and payload bytes each way.
fn assert_ends_agree(client_side: &[&Value], server_side: &[&Value]) {
    for client in client_side {
        let server = same_connection(server_side, client);
        for pointer in ["/to_dst/packets", "/to_dst/bytes", "/to_src/packets", "/to_src/bytes"] {
            assert_eq!(u64_at(client, pointer), u64_at(server, pointer), "{pointer}: {client} vs {server}");
        }
    }
}

/// A connection that completed and closed shows SYN, ACK and FIN each way.
fn assert_handshake_and_fins(record: &Value) {
    for way in ["/tcp_flags/to_dst", "/tcp_flags/to_src"] {
        let flags = record.pointer(way).and_then(Value::as_array).unwrap_or_else(|| panic!("{way} in {record}"));
        for flag in ["SYN", "ACK", "FIN"] {
            assert!(flags.contains(&Value::from(flag)), "{flag} in {way}: {record}");
        }
    }
}

/// `client`'s connections to `target` as `opts` makes them, answered with
/// `opts.expect` bytes by a server on `server` listening on `listen`, while
/// the observer `start` starts watches: every connection completed, both
/// ends of each reported once, nothing lost.
fn watched_connections(
    (client, server): (&Pod, &Pod),
    listen: SocketAddr,
    target: SocketAddr,
    opts: &TcpClientOpts,
    start: impl FnOnce() -> ObserverProcess,
) -> (ObserverRun, TcpClientReport) {
    let _listener =
        server.tcp_server(listen, &TcpServerOpts { reply: opts.expect, ..Default::default() }).expect("server");
    let observer = start();
    let report = client.tcp_client(target, opts).expect("client");
    assert_eq!(report.complete, opts.count, "{report:?}");
    let run = finish(observer, |records| {
        ends(records, client.cgroup_id(), target).len() as u64 == opts.count
            && ends(records, server.cgroup_id(), target).len() as u64 == opts.count
    });
    assert_no_loss(&run);
    assert_one_end_per_flow(&run);
    (run, report)
}

#[test]
fn tcp_connections_are_reported_once_each_with_their_bytes() {
    if !root_or_skip("tcp_connections_are_reported_once_each_with_their_bytes") {
        return;
    }
    tcp_connections_with_exact_payload(|| observe(&[]), true);
}

#[test]
fn tcp_counted_per_packet_has_the_same_payload_bytes() {
    if !root_or_skip("tcp_counted_per_packet_has_the_same_payload_bytes") {
        return;
    }
    tcp_connections_with_exact_payload(|| observe(&["--tcp-per-packet"]), false);
}

/// Socket counting needs the BTF tracepoint, the only program that reads a
/// closing socket's counters. A kernel that will not attach it (here: a
/// seccomp filter refusing the one `bpf` command that attaches it) gets the
/// object loaded again, counting TCP per packet: the same exact bytes, and
/// a warning that says why.
#[test]
fn tcp_is_counted_per_packet_when_the_btf_tracepoint_cannot_attach() {
    if !root_or_skip("tcp_is_counted_per_packet_when_the_btf_tracepoint_cannot_attach") {
        return;
    }
    let start = || {
        ObserverProcess::start_with(&FAST, |command| {
            seccomp::deny_bpf_command(command, seccomp::BPF_RAW_TRACEPOINT_OPEN)
        })
        .expect("observer starts without the BTF tracepoint")
    };
    let run = tcp_connections_with_exact_payload(start, false);
    let warning = run
        .log
        .lines()
        .find(|line| line.contains("cannot count TCP from sockets without the BTF tracepoint"))
        .unwrap_or_else(|| panic!("no warning of the fallback in:\n{}", run.log));
    assert!(
        warning.contains("attaching tcp_state_btf failed") && warning.contains("bpf_raw_tracepoint_open"),
        "the warning names the attach that failed: {warning}"
    );
}

/// Five connections, 1000 bytes up and 5000 down each: exact payload bytes
/// from both ends, counted from sockets or per packet as `socket_counted`
/// says the observer `start` starts does.
fn tcp_connections_with_exact_payload(start: impl FnOnce() -> ObserverProcess, socket_counted: bool) -> ObserverRun {
    let lab = lab(2);
    let (client, server) = (lab.pod(0), lab.pod(1));
    let target = server.addr_v4(8080);
    const K: u64 = 5;
    let opts = TcpClientOpts { count: K, send: 1000, expect: 5000, ..Default::default() };
    let (run, report) = watched_connections((client, server), target, target, &opts, start);
    assert_eq!(run.health["tcp_socket_counters"], u64::from(socket_counted), "{}", run.health);
    let gauge = format!("flow_observer_tcp_socket_counters {}\n", u64::from(socket_counted));
    assert!(run.metrics.contains(&gauge), "{gauge} missing in /metrics:\n{}", run.metrics);
    // Every state change found its flow (connect's SYN_SENT, before the
    // source port is picked, is not sent at all).
    assert_eq!(run.health["states_unmatched"], 0, "{}", run.health);

    let client_side = ends(&run.records, client.cgroup_id(), target);
    assert_eq!(client_side.len() as u64, K, "client-side flows: {client_side:#?}");
    let ports: HashSet<u64> = client_side.iter().map(|record| u64_at(record, "/src/port")).collect();
    let expected_ports: HashSet<u64> = report.local_ports.iter().map(|port| u64::from(*port)).collect();
    assert_eq!(ports, expected_ports);
    for record in &client_side {
        assert_eq!(str_at(record, "/state"), "closed");
        assert_eq!(str_at(record, "/local"), "src");
        assert_eq!(str_at(record, "/src/ip"), client.ipv4().to_string());
        assert_eq!(str_at(record, "/cgroup/path"), client.cgroup_path());
        assert_eq!(str_at(record, "/family"), "ipv4");
        // Payload bytes, exactly: no headers, no SYN or FIN.
        assert_eq!((u64_at(record, "/to_dst/bytes"), u64_at(record, "/to_src/bytes")), (1000, 5000), "{record}");
        assert_handshake_and_fins(record);
    }
    let server_side = ends(&run.records, server.cgroup_id(), target);
    assert_eq!(server_side.len() as u64, K, "server-side flows: {server_side:#?}");
    for record in &server_side {
        assert_eq!((str_at(record, "/state"), str_at(record, "/local")), ("closed", "dst"));
        assert_eq!(str_at(record, "/cgroup/path"), server.cgroup_path());
        assert_eq!((u64_at(record, "/to_dst/bytes"), u64_at(record, "/to_src/bytes")), (1000, 5000), "{record}");
        assert_handshake_and_fins(record);
    }
    if socket_counted {
        // Segments as each socket counted them (the handshake included);
        // per packet, a GSO or GRO batch counts once at one end and as
        // several segments nowhere, so only the bytes must agree.
        assert_ends_agree(&client_side, &server_side);
    }
    run
}

#[test]
fn connect_to_a_closed_port_is_refused() {
    if !root_or_skip("connect_to_a_closed_port_is_refused") {
        return;
    }
    let lab = lab(2);
    let (client, server) = (lab.pod(0), lab.pod(1));
    let target = server.addr_v4(9);
    let observer = observe(&[]);
    let report = client.tcp_client(target, &TcpClientOpts::default()).expect("client");
    assert_eq!(report.refused, 1, "{report:?}");
    let run = finish(observer, |records| !ends(records, client.cgroup_id(), target).is_empty());
    let flows = ends(&run.records, client.cgroup_id(), target);
    assert_eq!(flows.len(), 1, "{flows:#?}");
    assert_eq!(str_at(flows[0], "/state"), "refused");
    assert_eq!(run.records.iter().filter(|record| u64_at(record, "/cgroup/id") == server.cgroup_id()).count(), 0);
    assert!(flows[0]["tcp_flags"]["to_src"].as_array().expect("flags").contains(&Value::from("RST")));
}

#[test]
fn connect_whose_syn_is_dropped_is_unanswered() {
    if !root_or_skip("connect_whose_syn_is_dropped_is_unanswered") {
        return;
    }
    let lab = lab(2);
    let (client, server) = (lab.pod(0), lab.pod(1));
    let target = server.addr_v4(8081);
    let _listener = server.tcp_server(target, &TcpServerOpts::default()).expect("server");
    let _drop_syn = server.drop_inbound_tcp_syn(8081).expect("nft rule");
    let observer = observe(&[]);
    let report = client
        .tcp_client(target, &TcpClientOpts { timeout: Duration::from_millis(1500), ..Default::default() })
        .expect("client");
    assert_eq!(report.timed_out, 1, "{report:?}");
    let run = finish(observer, |records| !ends(records, client.cgroup_id(), target).is_empty());
    let flows = ends(&run.records, client.cgroup_id(), target);
    assert_eq!(flows.len(), 1, "{flows:#?}");
    assert_eq!(str_at(flows[0], "/state"), "unanswered");
    assert_eq!(u64_at(flows[0], "/to_src/packets"), 0);
    assert!(u64_at(flows[0], "/to_dst/packets") >= 1);
    assert!(ends(&run.records, server.cgroup_id(), target).is_empty(), "the server never saw it");
}

#[test]
fn udp_request_and_reply_is_one_flow_that_expires() {
    if !root_or_skip("udp_request_and_reply_is_one_flow_that_expires") {
        return;
    }
    let lab = lab(2);
    let (client, server) = (lab.pod(0), lab.pod(1));
    let target = server.addr_v4(5353);
    let _listener = server.udp_server(target, &UdpServerOpts { reply: 200, ..Default::default() }).expect("server");
    let observer = observe(&["--idle-timeout", "1s"]);
    let report = client
        .udp_client(target, &UdpClientOpts { count: 3, send: 100, expect: 200, ..Default::default() })
        .expect("client");
    assert_eq!(report.complete, 3, "{report:?}");
    // The flow ends when it has been idle for the 1 s idle timeout.
    let run = finish(observer, |records| {
        !ends(records, client.cgroup_id(), target).is_empty() && !ends(records, server.cgroup_id(), target).is_empty()
    });
    let flows = ends(&run.records, client.cgroup_id(), target);
    assert_eq!(flows.len(), 1, "{flows:#?}");
    let flow = flows[0];
    assert_eq!(str_at(flow, "/state"), "expired");
    assert_eq!(str_at(flow, "/protocol"), "udp");
    assert_eq!(u64_at(flow, "/src/port"), u64::from(report.local_port));
    // UDP payload bytes: exact.
    assert_eq!((u64_at(flow, "/to_dst/packets"), u64_at(flow, "/to_dst/bytes")), (3, 3 * 100));
    assert_eq!((u64_at(flow, "/to_src/packets"), u64_at(flow, "/to_src/bytes")), (3, 3 * 200));
    let server_flows = ends(&run.records, server.cgroup_id(), target);
    assert_eq!(server_flows.len(), 1, "{server_flows:#?}");
    assert_eq!(str_at(server_flows[0], "/local"), "dst");
}

#[test]
fn icmp_echo_is_one_flow_with_both_directions() {
    if !root_or_skip("icmp_echo_is_one_flow_with_both_directions") {
        return;
    }
    let lab = lab(2);
    let (client, server) = (lab.pod(0), lab.pod(1));
    let observer = observe(&[]);
    let report = client.ping(server.ipv4().into(), 3).expect("ping");
    assert_eq!(report.received, 3, "{report:?}");
    // ICMP flows end by idle timeout; stopping drains them with final counters.
    let run = finish(observer, |_| true);
    let flows: Vec<&Value> = run
        .records
        .iter()
        .filter(|record| {
            record["event"] == "end"
                && u64_at(record, "/cgroup/id") == client.cgroup_id()
                && record["protocol"] == "icmp"
                && record["dst"]["ip"] == server.ipv4().to_string()
        })
        .collect();
    assert_eq!(flows.len(), 1, "{flows:#?}");
    let flow = flows[0];
    assert_eq!((u64_at(flow, "/icmp/type"), u64_at(flow, "/icmp/code")), (8, 0));
    assert_eq!(u64_at(flow, "/to_dst/packets"), 3);
    assert_eq!(u64_at(flow, "/to_src/packets"), 3);
    assert_eq!(u64_at(flow, "/to_dst/bytes"), u64_at(flow, "/to_src/bytes"), "echo replies mirror requests");
    assert!(flow["src"].get("port").is_none(), "no ports for ICMP: {flow}");
}

#[test]
fn ipv6_tcp_is_captured() {
    if !root_or_skip("ipv6_tcp_is_captured") {
        return;
    }
    let lab = lab(2);
    let (client, server) = (lab.pod(0), lab.pod(1));
    let target = server.addr_v6(8080).expect("pods have IPv6");
    let opts = TcpClientOpts { count: 2, send: 700, expect: 3000, ..Default::default() };
    let (run, _) = watched_connections((client, server), target, target, &opts, || observe(&[]));
    let flows = ends(&run.records, client.cgroup_id(), target);
    assert_eq!(flows.len(), 2, "{flows:#?}");
    for flow in &flows {
        assert_eq!((str_at(flow, "/family"), str_at(flow, "/state")), ("ipv6", "closed"));
        assert_eq!((u64_at(flow, "/to_dst/bytes"), u64_at(flow, "/to_src/bytes")), (700, 3000), "{flow}");
    }
    let server_side = ends(&run.records, server.cgroup_id(), target);
    assert_eq!(server_side.len(), 2);
    assert_ends_agree(&flows, &server_side);
}

/// A server listening on `[::]` (dual-stack, the default of many servers)
/// holds IPv4 clients in IPv6 sockets with IPv4-mapped addresses; their
/// packets are IPv4, and so must every state change of theirs be, or the
/// close would name another flow.
#[test]
fn a_dual_stack_server_sees_ipv4_clients_as_ipv4() {
    if !root_or_skip("a_dual_stack_server_sees_ipv4_clients_as_ipv4") {
        return;
    }
    let lab = lab(2);
    let (client, server) = (lab.pod(0), lab.pod(1));
    let target = server.addr_v4(8080);
    let any = SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), 8080);
    const K: u64 = 3;
    let opts = TcpClientOpts { count: K, send: 600, expect: 2000, ..Default::default() };
    let (run, _) = watched_connections((client, server), any, target, &opts, || observe(&[]));
    assert_eq!(run.health["states_unmatched"], 0, "{}", run.health);
    let server_flows: Vec<&Value> = run
        .records
        .iter()
        .filter(|record| record["event"] == "end" && u64_at(record, "/cgroup/id") == server.cgroup_id())
        .collect();
    assert_eq!(server_flows.len() as u64, K, "the server's flows, all IPv4: {server_flows:#?}");
    for record in &server_flows {
        assert_eq!((str_at(record, "/family"), str_at(record, "/state")), ("ipv4", "closed"), "{record}");
        assert_eq!(str_at(record, "/src/ip"), client.ipv4().to_string());
        assert_eq!((u64_at(record, "/to_dst/bytes"), u64_at(record, "/to_src/bytes")), (600, 2000), "{record}");
        assert_handshake_and_fins(record);
    }
    assert_ends_agree(&ends(&run.records, client.cgroup_id(), target), &server_flows);
}

#[test]
fn burst_of_20k_connections_is_fully_accounted_for() {
    if !root_or_skip("burst_of_20k_connections_is_fully_accounted_for") {
        return;
    }
    let lab = lab(2);
    let (client, server) = (lab.pod(0), lab.pod(1));
    let target = server.addr_v4(8082);
    let _listener = server.tcp_server(target, &TcpServerOpts::default()).expect("server");
    let observer = observe(&[]);
    let burst = client
        .burst(target, &BurstOpts { count: 20_000, threads: 4, send: 16, timeout: Duration::from_secs(5) })
        .expect("burst");
    let made = burst.attempted;
    assert_eq!(made, 20_000, "{burst:?}");
    let run = finish(observer, |records| ends(records, client.cgroup_id(), target).len() as u64 >= made);
    let reported = ends(&run.records, client.cgroup_id(), target).len() as u64;
    let lost = ["events_lost", "flow_inserts_failed", "flows_evicted", "records_dropped", "states_unmatched"]
        .iter()
        .map(|counter| run.health[counter].as_u64().unwrap_or_else(|| panic!("{counter} in {}", run.health)))
        .sum::<u64>();
    assert_eq!(reported + lost, made, "reported {reported} + lost {lost} != made {made}; health {}", run.health);
    assert_eq!(lost, 0, "nothing is lost at this rate: {}", run.health);
    assert_eq!(run.health["flow_map_batched"], 1, "the flow map is read and pruned in batches: {}", run.health);
    let completed =
        ends(&run.records, client.cgroup_id(), target).iter().filter(|record| record["state"] == "closed").count()
            as u64;
    assert_eq!(completed, burst.completed, "{burst:?}");
}

#[test]
fn nothing_stays_attached_after_the_observer_stops() {
    if !root_or_skip("nothing_stays_attached_after_the_observer_stops") {
        return;
    }
    // Program ids with our names; ids, not counts, so another observer on the
    // same machine cannot confuse the test.
    let ours = || -> HashSet<u64> {
        let output = std::process::Command::new("bpftool").args(["prog", "show", "--json"]).output().expect("bpftool");
        let programs: Vec<Value> = serde_json::from_slice(&output.stdout).expect("bpftool JSON");
        programs
            .iter()
            .filter(|program| {
                ["flow_ingress", "flow_egress", "tcp_state", "tcp_state_btf"]
                    .iter()
                    .any(|name| program["name"].as_str() == Some(name))
            })
            .filter_map(|program| program["id"].as_u64())
            .collect()
    };
    let before = ours();
    let observer = observe(&[]);
    let loaded: HashSet<u64> = ours().difference(&before).copied().collect();
    assert_eq!(loaded.len(), 3, "three programs while running: {loaded:?}");
    observer.stop().expect("stops");
    // Closing a BTF tracepoint's link detaches it at once, but the kernel
    // frees the link, and with it the program, only after an RCU tasks-trace
    // grace period (about 300 ms here): wait for that, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    let left = loop {
        let left: HashSet<u64> = ours().intersection(&loaded).copied().collect();
        if left.is_empty() || Instant::now() >= deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(left.is_empty(), "all detached and unloaded within 10 s of SIGTERM, but {left:?} remain");
}

/// Echoes every byte back on the one connection it accepts, then closes.
const ECHO_SERVER: &str = "
import socket, sys
listener = socket.create_server((sys.argv[1], int(sys.argv[2])))
print('listening', flush=True)
connection, _ = listener.accept()
while data := connection.recv(65536):
    connection.sendall(data)
connection.close()
";

/// Connects and exchanges 100 bytes, then (once a line comes on stdin) as
/// many round trips of 10 bytes as its third argument says, then (at the
/// next line) closes.
const PING_PONG_CLIENT: &str = "
import socket, sys
def exchange(size):
    connection.sendall(b'x' * size)
    got = 0
    while got < size:
        got += len(connection.recv(size - got))
connection = socket.create_connection((sys.argv[1], int(sys.argv[2])))
connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
exchange(100)
print('connected', connection.getsockname()[1], flush=True)
sys.stdin.readline()
for _ in range(int(sys.argv[3])):
    exchange(10)
print('exchanged', flush=True)
sys.stdin.readline()
connection.close()
print('closed', flush=True)
";

#[test]
fn tcp_connection_older_than_the_observer_is_found_at_a_sample_and_ends_exact() {
    if !root_or_skip("tcp_connection_older_than_the_observer_is_found_at_a_sample_and_ends_exact") {
        return;
    }
    let lab = lab(2);
    let (client, server) = (lab.pod(0), lab.pod(1));
    let target = server.addr_v4(8090);
    let (host, port) = (target.ip().to_string(), target.port().to_string());
    let mut echo = server.spawn("python3", ["-c", ECHO_SERVER, &host, &port]).expect("echo server");
    echo.wait_for_line(Duration::from_secs(10), |line| line == "listening").expect("echo server listens");
    let mut ping = client.spawn("python3", ["-c", PING_PONG_CLIENT, &host, &port, "600"]).expect("ping-pong client");
    let connected =
        ping.wait_for_line(Duration::from_secs(10), |line| line.starts_with("connected ")).expect("connects");
    let client_port: u64 = connected["connected ".len()..].parse().expect("port");

    // The observer starts on a connection that already carried 100 bytes
    // each way; about 1200 segments later both ends have passed a sampling
    // point, where the flow is found with the socket's counters.
    let observer = observe(&["--update-interval", "100ms"]);
    ping.send_line("go").expect("go");
    ping.wait_for_line(Duration::from_secs(30), |line| line == "exchanged").expect("exchanges");
    let live = |records: &[Value], cgroup_id: u64| {
        records.iter().any(|record| {
            record["event"] != "end" && u64_at(record, "/cgroup/id") == cgroup_id && record["dst"]["port"] == 8090
        })
    };
    let found = observer.wait_for_records(Duration::from_secs(30), |records| {
        live(records, client.cgroup_id()) && live(records, server.cgroup_id())
    });
    assert!(found, "both ends found while open: {:#?}", observer.records());
    ping.send_line("close").expect("close");
    ping.wait_for_line(Duration::from_secs(10), |line| line == "closed").expect("closes");
    let run = finish(observer, |records| {
        ends(records, client.cgroup_id(), target).len() == 1 && ends(records, server.cgroup_id(), target).len() == 1
    });
    assert_no_loss(&run);

    let first =
        |cgroup_id: u64| run.records.iter().find(|record| u64_at(record, "/cgroup/id") == cgroup_id).expect("a record");
    for cgroup_id in [client.cgroup_id(), server.cgroup_id()] {
        let start = first(cgroup_id);
        assert_eq!((str_at(start, "/event"), str_at(start, "/state")), ("start", "established"), "{start}");
        // Found mid-exchange: more than the first 100 bytes, less than all.
        let sent = u64_at(start, "/to_dst/bytes");
        assert!(sent > 100 && sent < 6100, "{start}");
    }
    let client_end = ends(&run.records, client.cgroup_id(), target);
    let server_end = ends(&run.records, server.cgroup_id(), target);
    for record in client_end.iter().chain(&server_end) {
        // The whole connection, the bytes before the observer started too.
        assert_eq!(str_at(record, "/state"), "closed");
        assert_eq!(u64_at(record, "/src/port"), client_port, "oriented client to server: {record}");
        assert_eq!((u64_at(record, "/to_dst/bytes"), u64_at(record, "/to_src/bytes")), (6100, 6100), "{record}");
    }
    assert_ends_agree(&client_end, &server_end);
}

#[test]
fn tcp_connection_older_than_the_observer_that_closes_before_a_sample_is_reported_at_its_close() {
    if !root_or_skip("tcp_connection_older_than_the_observer_that_closes_before_a_sample_is_reported_at_its_close") {
        return;
    }
    let lab = lab(2);
    let (client, server) = (lab.pod(0), lab.pod(1));
    let target = server.addr_v4(8091);
    let (host, port) = (target.ip().to_string(), target.port().to_string());
    let mut echo = server.spawn("python3", ["-c", ECHO_SERVER, &host, &port]).expect("echo server");
    echo.wait_for_line(Duration::from_secs(10), |line| line == "listening").expect("echo server listens");
    let mut ping = client.spawn("python3", ["-c", PING_PONG_CLIENT, &host, &port, "0"]).expect("client");
    let connected =
        ping.wait_for_line(Duration::from_secs(10), |line| line.starts_with("connected ")).expect("connects");
    let client_port: u64 = connected["connected ".len()..].parse().expect("port");

    // No packet of the connection reaches the flow map while the observer
    // runs (no SYN, no sampling point; FINs of connected sockets take the
    // fast path): each end's close reports it, naming the socket's cgroup.
    let observer = observe(&[]);
    ping.send_line("go").expect("go");
    ping.wait_for_line(Duration::from_secs(10), |line| line == "exchanged").expect("no exchanges");
    ping.send_line("close").expect("close");
    ping.wait_for_line(Duration::from_secs(10), |line| line == "closed").expect("closes");
    let run = finish(observer, |records| {
        ends(records, client.cgroup_id(), target).len() == 1 && ends(records, server.cgroup_id(), target).len() == 1
    });
    assert_no_loss(&run);
    assert_eq!(run.health["states_unmatched"], 0, "{}", run.health);
    let client_end = ends(&run.records, client.cgroup_id(), target);
    let server_end = ends(&run.records, server.cgroup_id(), target);
    assert_eq!((client_end.len(), server_end.len()), (1, 1), "{:#?}", run.records);
    for record in client_end.iter().chain(&server_end) {
        assert_eq!(str_at(record, "/state"), "closed", "{record}");
        assert_eq!(u64_at(record, "/src/port"), client_port, "oriented client to server: {record}");
        assert_eq!((u64_at(record, "/to_dst/bytes"), u64_at(record, "/to_src/bytes")), (100, 100), "{record}");
        assert_handshake_and_fins(record);
    }
    assert_eq!(str_at(client_end[0], "/local"), "src");
    assert_eq!(str_at(server_end[0], "/local"), "dst");
    assert_ends_agree(&client_end, &server_end);
}
