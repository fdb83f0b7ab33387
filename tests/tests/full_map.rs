//! A kernel flow map far too small for the traffic: thousands of short TCP
//! connections and then UDP flows between two lab pods through a map of 256
//! entries. Every flow keeps the orientation the kernel saw first (its
//! initiator as `src`), every connection's client end is reported exactly
//! once (with its real end, or as `evicted` with the counters known), and
//! the records, the capture health and /metrics agree on the evictions.
//! Root only; run with one thread (`cargo xtask test` does).

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::Duration,
};

use observer_tests::{BurstOpts, Endpoint, Lab, ObserverProcess, Pod, TcpServerOpts, UdpServerOpts, root_or_skip};
use serde_json::Value;

/// Flow-map capacity of the run: a few hundred flows fill it.
const MAP_SIZE: &str = "256";
/// TCP connections in the burst.
const CONNECTIONS: u64 = 3000;
/// UDP sockets, one request and one reply each. A port the kernel gives
/// again to a later socket while the earlier one's flow is still live makes
/// the same tuple: one flow, counting both.
const UDP_SOCKETS: u64 = 2000;
/// Bytes of each UDP request and reply.
const UDP_REQUEST: u64 = 32;
const UDP_REPLY: u64 = 64;

/// Sends one request from a fresh unconnected socket per flow (so only the
/// first packet the kernel saw says who initiated) and waits for its reply;
/// prints the local port of every answered flow.
const UDP_CLIENTS: &str = "
import json, socket, sys
host, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ports = []
for _ in range(count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('0.0.0.0', 0))
    s.settimeout(2)
    s.sendto(b'x' * size, (host, port))
    try:
        s.recvfrom(65536)
        ports.append(s.getsockname()[1])
    except socket.timeout:
        pass
    s.close()
print('ports', json.dumps(ports), flush=True)
";

fn u64_at(record: &Value, pointer: &str) -> u64 {
    record.pointer(pointer).and_then(Value::as_u64).unwrap_or_else(|| panic!("{pointer} missing in {record}"))
}

fn str_at<'a>(record: &'a Value, pointer: &str) -> &'a str {
    record.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("{pointer} missing in {record}"))
}

/// Records of `protocol` between `client` and the server at `target`,
/// whichever way they are oriented.
fn between<'a>(records: &'a [Value], protocol: &str, client: &Pod, target: SocketAddr) -> Vec<&'a Value> {
    let (client_ip, server_ip) = (client.ipv4().to_string(), target.ip().to_string());
    records
        .iter()
        .filter(|record| record["protocol"] == protocol)
        .filter(|record| {
            let ips = (str_at(record, "/src/ip"), str_at(record, "/dst/ip"));
            ips == (client_ip.as_str(), server_ip.as_str()) || ips == (server_ip.as_str(), client_ip.as_str())
        })
        .collect()
}

/// Records naming the server as `src` (or its port as the client's).
fn reversed<'a>(records: &[&'a Value], client: &Pod, target: SocketAddr) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|record| {
            str_at(record, "/src/ip") != client.ipv4().to_string()
                || u64_at(record, "/dst/port") != u64::from(target.port())
        })
        .copied()
        .collect()
}

/// `end` records from `cgroup_id`'s side.
fn ends_of<'a>(records: &[&'a Value], cgroup_id: u64) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|record| record["event"] == "end" && u64_at(record, "/cgroup/id") == cgroup_id)
        .copied()
        .collect()
}

fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing in /metrics:\n{metrics}"))
}

/// Counts of one side's end records by state, for the failure message.
fn states(ends: &[&Value]) -> String {
    let mut counts = std::collections::BTreeMap::<&str, u64>::new();
    for record in ends {
        *counts.entry(str_at(record, "/state")).or_default() += 1;
    }
    format!("{counts:?}")
}

#[test]
fn a_full_flow_map_never_reverses_a_flow_and_counts_every_eviction() {
    if !root_or_skip("a_full_flow_map_never_reverses_a_flow_and_counts_every_eviction") {
        return;
    }
    full_map_run(&[]);
}

/// Counted per packet, a TCP connection whose entry went has no socket
/// counters to make up for it: it ends `evicted`, still oriented and once.
#[test]
fn a_full_flow_map_counting_tcp_per_packet_never_reverses_a_flow() {
    if !root_or_skip("a_full_flow_map_counting_tcp_per_packet_never_reverses_a_flow") {
        return;
    }
    full_map_run(&["--tcp-per-packet"]);
}

/// The burst, then the UDP exchanges, through the 256-entry map of an
/// observer started with `extra` options.
fn full_map_run(extra: &[&str]) {
    let lab = Lab::builder().pods(2).ipv6(false).internet(false).build().expect("lab");
    let (client, server) = (lab.pod(0), lab.pod(1));
    let tcp_target = server.addr_v4(8082);
    let udp_target = server.addr_v4(5300);
    let _tcp = server.tcp_server(tcp_target, &TcpServerOpts::default()).expect("TCP server");
    let _udp = server.udp_server(udp_target, &UdpServerOpts { reply: UDP_REPLY, ..Default::default() }).expect("UDP");
    let args = ["--poll-interval", "200ms", "--flow-map-size", MAP_SIZE, "--idle-timeout", "1s"];
    let args: Vec<&str> = args.iter().chain(extra).copied().collect();
    let observer = ObserverProcess::start(&args).expect("observer starts");

    let burst = client
        .burst(tcp_target, &BurstOpts { count: CONNECTIONS, threads: 4, send: 16, timeout: Duration::from_secs(5) })
        .expect("burst");
    let made = burst.attempted;
    assert_eq!((made, burst.completed), (CONNECTIONS, CONNECTIONS), "{burst:?}");
    // Both ends of every flow reported (or the wait runs out and the
    // assertions below say what is missing).
    let all_ended = |records: &[Value], protocol: &str, target: SocketAddr, count: u64| {
        let flows = between(records, protocol, client, target);
        [client, server].iter().all(|pod| ends_of(&flows, pod.cgroup_id()).len() as u64 >= count)
    };
    observer.wait_for_records(Duration::from_secs(60), |records| all_ended(records, "tcp", tcp_target, made));

    let (host, port) = (udp_target.ip().to_string(), udp_target.port().to_string());
    let mut udp = client
        .spawn("python3", ["-c", UDP_CLIENTS, &host, &port, &UDP_SOCKETS.to_string(), &UDP_REQUEST.to_string()])
        .expect("UDP clients");
    let line = udp.wait_for_line(Duration::from_secs(120), |line| line.starts_with("ports ")).expect("UDP clients end");
    let udp_ports: Vec<u64> = serde_json::from_str(&line["ports ".len()..]).expect("ports");
    assert_eq!(udp_ports.len() as u64, UDP_SOCKETS, "every UDP request answered");
    let mut sockets_per_port = HashMap::<u64, u64>::new();
    for port in &udp_ports {
        *sockets_per_port.entry(*port).or_default() += 1;
    }
    let udp_flows = sockets_per_port.len() as u64;
    // UDP flows end 1 s after their last packet.
    observer.wait_for_records(Duration::from_secs(60), |records| all_ended(records, "udp", udp_target, udp_flows));
    let run = observer.stop().expect("observer stops cleanly");

    let tcp = between(&run.records, "tcp", client, tcp_target);
    let udp = between(&run.records, "udp", client, udp_target);
    let (tcp_client, tcp_server) = (ends_of(&tcp, client.cgroup_id()), ends_of(&tcp, server.cgroup_id()));
    let (udp_client, udp_server) = (ends_of(&udp, client.cgroup_id()), ends_of(&udp, server.cgroup_id()));
    let evicted_records = run.records.iter().filter(|record| record["state"] == "evicted").count() as u64;
    let summary = format!(
        "TCP: {} records, {} reversed, client ends {} {}, server ends {} {}; UDP: {} records, {} reversed, client \
         ends {} {}, server ends {} {}; evicted records {evicted_records}; health {}",
        tcp.len(),
        reversed(&tcp, client, tcp_target).len(),
        tcp_client.len(),
        states(&tcp_client),
        tcp_server.len(),
        states(&tcp_server),
        udp.len(),
        reversed(&udp, client, udp_target).len(),
        udp_client.len(),
        states(&udp_client),
        udp_server.len(),
        states(&udp_server),
        run.health,
    );
    eprintln!("{summary}");

    // Never reversed: the client is `src` in every record of either end.
    assert!(reversed(&tcp, client, tcp_target).is_empty(), "TCP flows reversed: {summary}");
    assert!(reversed(&udp, client, udp_target).is_empty(), "UDP flows reversed: {summary}");
    // Nothing else was lost, so each end of each connection has exactly one
    // end record: its real end, or `evicted` with the counters known.
    for counter in ["events_lost", "records_dropped"] {
        assert_eq!(run.health[counter], 0, "{counter}: {summary}");
    }
    for (what, ends, count) in [
        ("TCP client", &tcp_client, made),
        ("TCP server", &tcp_server, made),
        ("UDP client", &udp_client, udp_flows),
        ("UDP server", &udp_server, udp_flows),
    ] {
        let ports: HashSet<u64> = ends.iter().map(|record| u64_at(record, "/src/port")).collect();
        assert_eq!((ends.len() as u64, ports.len() as u64), (count, count), "{what} ends, one per flow: {summary}");
    }
    let answered: HashSet<u64> = sockets_per_port.keys().copied().collect();
    let reported: HashSet<u64> = udp_client.iter().map(|record| u64_at(record, "/src/port")).collect();
    assert_eq!(reported, answered, "the UDP clients' own ports: {summary}");
    for record in &tcp_client {
        let state = str_at(record, "/state");
        assert!(state == "closed" || state == "evicted", "{record}");
        if state == "closed" {
            // Counted from the socket: exact, whatever the map lost.
            assert_eq!((u64_at(record, "/to_dst/bytes"), u64_at(record, "/to_src/bytes")), (16, 0), "{record}");
        }
    }
    for record in udp_client.iter().chain(&udp_server) {
        let state = str_at(record, "/state");
        let counters = [
            u64_at(record, "/to_dst/packets"),
            u64_at(record, "/to_dst/bytes"),
            u64_at(record, "/to_src/packets"),
            u64_at(record, "/to_src/bytes"),
        ];
        let sockets = sockets_per_port[&u64_at(record, "/src/port")];
        let sent = [sockets, sockets * UDP_REQUEST, sockets, sockets * UDP_REPLY];
        match state {
            "expired" => assert_eq!(counters, sent, "{record}"),
            // The counters known before the entry went: never more.
            "evicted" => assert!(counters.iter().zip(sent).all(|(known, sent)| *known <= sent), "{record}"),
            _ => panic!("a UDP flow ends expired or evicted: {record}"),
        }
    }
    // The map was full: the kernel evicted entries, the log said so, and the
    // evicted records are the ones counted.
    let map_evictions = run.health["flow_map_evictions"].as_u64().unwrap_or_else(|| panic!("{summary}"));
    assert!(map_evictions > 0, "the kernel evicted entries: {summary}");
    assert!(
        udp_client.iter().any(|record| record["state"] == "evicted"),
        "UDP flows lost their entries before a poll: {summary}"
    );
    assert_eq!(run.health["flows_evicted"], evicted_records, "{summary}");
    assert_eq!(metric(&run.metrics, "flow_observer_flows_evicted_total"), evicted_records, "{summary}");
    assert!(metric(&run.metrics, "flow_observer_flow_map_evictions_total") > 0, "{summary}");
    assert!(run.log.contains("flow map full"), "a warning says the map is full:\n{}", run.log);
}
