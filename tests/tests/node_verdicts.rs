//! Issues 18 and 25 end to end: verdicts on a lab built like a real node (kube-proxy Services with
//! conntrack DNAT, kube-dns behind its ClusterIP, probes from the node, a host-network pod,
//! policies that change while a connection is open), with the observer inside the node's network
//! namespace as a hostNetwork DaemonSet pod runs. Exact assertions on the flow log, the findings
//! log and `/metrics`, against the names fixed in `/work/wt/CONTRACT-18.md`.
//!
//! Root only; one thread:
//! `cargo test -p observer-tests --test node_verdicts -- --test-threads=1`

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use observer_tests::{
    ConntrackEntry, Endpoint, KUBE_DNS_IP_V4, KUBE_DNS_IP_V6, KubeProxy, Lab, NODE_IP_V4, NODE_IP_V6, NodeRunDir,
    ObserverProcess, POD_GATEWAY_V4, POD_GATEWAY_V6, Pod, Proc, Protocol, Service, TcpClientOpts, TcpClientReport,
    TcpServerOpts, cluster_ip_v4, cluster_ip_v6,
    dns::{DnsQueryOpts, Zone},
    manifests::{self, PodSpec},
    root_or_skip,
};
use serde_json::{Value, json};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_lab-traffic");
const TIER: &str = "ai.governance/tier";
/// Reply sizes, so each server's traffic is recognisable.
const WEB_REPLY: u64 = 50;
const METRICS_REPLY: u64 = 300;

/// The lab cluster every test starts from: six pods, a host-network pod, three Services, kube-dns
/// running, the observer in the node namespace.
///
/// | lab pod | Pod object | namespace | labels |
/// | --- | --- | --- | --- |
/// | pod0 | client-0 | shop | app=client, tier agent |
/// | pod1, pod2 | web-0, web-1 | shop | app=web, tier model-serving |
/// | pod3 | coredns-0 | kube-system | k8s-app=kube-dns |
/// | pod4 | db-0 | shop | app=db |
/// | pod5 | prometheus-0 | monitoring | app=prometheus |
/// | host0 | node-agent-0 (hostNetwork) | kube-system | app=node-agent |
///
/// Services: `shop/web` 198.19.0.20:80 and [2001:db8:198:19::20]:80 → 8080 (NodePort 30080),
/// `shop/db` 198.19.0.30:5432, `kube-system/kube-dns` 198.19.0.10:53 UDP/TCP (and IPv6), and a
/// headless `shop/web-headless`.
struct Cluster {
    lab: Lab,
    run: NodeRunDir,
    web: Service,
    db: Service,
    _proxy: KubeProxy,
    _dns: [Proc; 2],
}

/// A lab pod, its namespace, its Pod object's name and labels.
type PodRow<'a> = (&'a Pod, &'a str, &'a str, Vec<(&'a str, &'a str)>);

fn labels(pairs: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    pairs.to_vec()
}

impl Cluster {
    fn client(&self) -> &Pod {
        self.lab.pod(0)
    }
    fn web(&self, i: usize) -> &Pod {
        self.lab.pod(1 + i)
    }
    fn coredns(&self) -> &Pod {
        self.lab.pod(3)
    }
    fn db(&self) -> &Pod {
        self.lab.pod(4)
    }
    fn prometheus(&self) -> &Pod {
        self.lab.pod(5)
    }
    fn host(&self) -> &Pod {
        self.lab.host_pod().expect("host-network pod")
    }

    fn build(test: &str) -> Self {
        let lab =
            Lab::builder().pods(6).ipv6(true).internet(true).node(true).traffic_bin(TRAFFIC).build().expect("node lab");
        let dual = |host: u8| [IpAddr::from(cluster_ip_v4(host)), IpAddr::from(cluster_ip_v6(host))];
        let web = Service::new("shop", "web", &dual(20))
            .selector("app", "web")
            .port("http", Protocol::Tcp, 80, 8080)
            .node_port(30080)
            .backend(lab.pod(1), "web-0")
            .backend(lab.pod(2), "web-1");
        let db = Service::new("shop", "db", &[cluster_ip_v4(30).into()])
            .selector("app", "db")
            .port("postgres", Protocol::Tcp, 5432, 5432)
            .backend(lab.pod(4), "db-0");
        let dns = Service::kube_dns(lab.pod(3), "coredns-0", true);
        let headless = Service::headless("shop", "web-headless")
            .selector("app", "web")
            .port("http", Protocol::Tcp, 8080, 8080)
            .backend(lab.pod(1), "web-0")
            .backend(lab.pod(2), "web-1");
        let proxy = lab.kube_proxy(vec![web.clone(), db.clone(), dns.clone()]).expect("kube-proxy");
        let zone = Zone::default().with("web.shop.svc.cluster.local", &[cluster_ip_v4(20).into()], 30).with(
            "db.shop.svc.cluster.local",
            &[cluster_ip_v4(30).into()],
            30,
        );
        let coredns = lab.pod(3);
        let dns_servers = [
            coredns.dns_server(coredns.addr_v4(53), &zone).expect("DNS server"),
            coredns.dns_server(coredns.addr_v6(53).expect("v6"), &zone).expect("DNS server v6"),
        ];
        let run = NodeRunDir::create(&format!("node-verdicts-{test}"));
        let cluster = Self { lab, run, web, db, _proxy: proxy, _dns: dns_servers };
        cluster.write_manifests(&[], &[headless]);
        std::fs::write(
            cluster.run.config(),
            "findings: {flush_interval_seconds: 1}\nspikes: {min_connections: 100000}\n",
        )
        .expect("config");
        cluster
    }

    /// Every object but the policies and intents: namespaces, Pods, the Node, Services and their
    /// EndpointSlices.
    fn objects(&self, extra_services: &[Service]) -> Vec<Value> {
        let ns = |name: &str| manifests::namespace(name, &[("kubernetes.io/metadata.name", name)]);
        let mut items = vec![ns("shop"), ns("kube-system"), ns("monitoring")];
        let pods: [PodRow<'_>; 7] = [
            (self.client(), "shop", "client-0", labels(&[("app", "client"), (TIER, "agent")])),
            (self.web(0), "shop", "web-0", labels(&[("app", "web"), (TIER, "model-serving")])),
            (self.web(1), "shop", "web-1", labels(&[("app", "web"), (TIER, "model-serving")])),
            (self.coredns(), "kube-system", "coredns-0", labels(&[("k8s-app", "kube-dns")])),
            (self.db(), "shop", "db-0", labels(&[("app", "db")])),
            (self.prometheus(), "monitoring", "prometheus-0", labels(&[("app", "prometheus")])),
            (self.host(), "kube-system", "node-agent-0", labels(&[("app", "node-agent")])),
        ];
        for (pod, namespace, name, labels) in pods {
            items.push(manifests::pod(&PodSpec { pod, namespace, name, labels, owner: None, ports: vec![] }));
        }
        items.push(manifests::node(self.lab.node().expect("node")));
        let dns = Service::kube_dns(self.coredns(), "coredns-0", true);
        for service in [&self.web, &self.db, &dns].into_iter().chain(extra_services) {
            items.extend(manifests::service_objects(service));
        }
        items
    }

    /// Writes the cluster's objects (`cluster.json`) and `policies` (`policies.json`).
    fn write_manifests(&self, policies: &[Value], extra_services: &[Service]) {
        manifests::write_list(&self.run.manifests().join("cluster.json"), self.objects(extra_services))
            .expect("cluster manifests");
        self.write_policies(policies);
    }

    /// Replaces the policies and intents (the observer reloads them within half a second). Written
    /// aside and renamed, so the observer never reads half a file.
    fn write_policies(&self, policies: &[Value]) {
        let tmp = self.run.path().join("policies.json.tmp");
        manifests::write_list(&tmp, policies.to_vec()).expect("policies");
        std::fs::rename(&tmp, self.run.manifests().join("policies.json")).expect("policies in place");
    }

    /// Starts the observer in the node's network namespace, as a hostNetwork DaemonSet pod.
    fn observer(&self) -> ObserverProcess {
        self.run.start_observer(&self.lab, &["--manifest-reload-interval", "0.5"])
    }

    /// The last version of each finding in the findings log.
    fn findings(&self) -> Vec<Value> {
        self.run.findings_by(|finding| {
            format!(
                "{}|{}|{}|{}|{}",
                finding["kind"], finding["rule"], finding["source"], finding["destination"], finding["policies"]
            )
        })
    }
}

fn policy(namespace: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"}, "spec": spec})
}

fn app(name: &str) -> Value {
    json!({"podSelector": {"matchLabels": {"app": name}}})
}

fn kube_dns_peer() -> Value {
    json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
           "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}})
}

/// `namespace`'s pods may neither send nor receive anything not allowed by another policy.
fn default_deny(namespace: &str) -> Value {
    policy(namespace, "default-deny", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))
}

fn server(pod: &impl Endpoint, listen: SocketAddr, reply: u64) -> Proc {
    pod.tcp_server(listen, &TcpServerOpts { reply, ..Default::default() }).expect("server")
}

fn connect(from: &impl Endpoint, to: SocketAddr, count: u64, expect: u64) -> TcpClientReport {
    let opts = TcpClientOpts { count, send: 10, expect, timeout: Duration::from_millis(1500), ..Default::default() };
    from.tcp_client(to, &opts).expect("client runs")
}

fn verdict(record: &Value) -> &str {
    record["verdict"]["verdict"].as_str().unwrap_or("none")
}

fn ip_of(record: &Value, end: &str) -> Option<IpAddr> {
    record[end]["ip"].as_str().and_then(|ip| ip.parse().ok())
}

/// Records written at the socket in cgroup `cgroup` for flows to `dst` (the address the client's
/// socket used), `end` events only unless `any_event`.
fn at(records: &[Value], cgroup: u64, dst: SocketAddr, any_event: bool) -> Vec<Value> {
    records
        .iter()
        .filter(|r| any_event || r["event"] == "end")
        .filter(|r| r["cgroup"]["id"].as_u64() == Some(cgroup))
        .filter(|r| ip_of(r, "dst") == Some(dst.ip()) && r["dst"]["port"].as_u64() == Some(u64::from(dst.port())))
        .cloned()
        .collect()
}

/// Waits (bounded) until the flow log holds `n` end records at `cgroup` to `dst`.
fn wait_ends(observer: &ObserverProcess, cgroup: u64, dst: SocketAddr, n: usize) {
    observer.wait_for_records(Duration::from_secs(20), |records| at(records, cgroup, dst, false).len() >= n);
}

fn verdicts(records: &[Value]) -> Vec<String> {
    records.iter().map(|r| verdict(r).to_owned()).collect()
}

fn pretty(records: &[Value]) -> String {
    records.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n")
}

/// The sum of a counter's samples whose labels contain `label`.
fn metric_sum(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Waits until the judge has compiled a policy set of `count` NetworkPolicies (it sets the gauge
/// when it swaps the set in), so connections from then on are judged under it.
fn wait_policies(observer: &ObserverProcess, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let expected = format!("flow_observer_policies_loaded{{kind=\"NetworkPolicy\"}} {count}");
    loop {
        let metrics = observer.get("/metrics").expect("metrics from inside the node namespace").1;
        if metrics.lines().any(|line| line == expected) {
            return;
        }
        assert!(Instant::now() < deadline, "the judge never took {count} policies; log:\n{}", observer.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn pod_to_service_to_pod_allowed_by_selector_is_allowed_and_names_service_and_backend() {
    if !root_or_skip("pod_to_service_to_pod_allowed_by_selector_is_allowed_and_names_service_and_backend") {
        return;
    }
    let cluster = Cluster::build("service");
    // The client may only send to web pods on 8080; web pods only take 8080 from the client. The
    // ClusterIP (port 80) matches neither: only the backend does.
    cluster.write_policies(&[
        policy(
            "shop",
            "client-egress",
            json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [app("web")], "ports": [{"protocol": "TCP", "port": 8080}]}]}),
        ),
        policy(
            "shop",
            "web-ingress",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [app("client")], "ports": [{"protocol": "TCP", "port": 8080}]}]}),
        ),
    ]);
    let observer = cluster.observer();
    let mut servers = Vec::new();
    for i in 0..2 {
        let web = cluster.web(i);
        servers.push(server(web, web.addr_v4(8080), WEB_REPLY));
        servers.push(server(web, web.addr_v6(8080).expect("v6"), WEB_REPLY));
    }
    const N: usize = 20;
    let client = cluster.client();
    for v6 in [false, true] {
        let target = cluster.web.addr("http", v6).expect("ClusterIP");
        assert_eq!(connect(client, target, N as u64, WEB_REPLY).complete, N as u64, "{target}");
        wait_ends(&observer, client.cgroup_id(), target, N);
    }
    let conntrack = cluster.lab.node().expect("node").conntrack().expect("conntrack");
    let run = observer.stop().expect("observer stops");

    for v6 in [false, true] {
        let target = cluster.web.addr("http", v6).expect("ClusterIP");
        let records = at(&run.records, client.cgroup_id(), target, false);
        assert_eq!(verdicts(&records), vec!["allowed"; N], "{target}:\n{}", pretty(&records));
        let mut backends_seen = BTreeSet::new();
        for record in &records {
            let dst = &record["dst"];
            assert_eq!(dst["service"], json!({"namespace": "shop", "name": "web"}), "{record}");
            assert_eq!((dst["ip"].as_str(), dst["port"].as_u64()), (Some(target.ip().to_string().as_str()), Some(80)));
            assert_eq!((dst["kind"].as_str(), dst["namespace"].as_str()), (Some("pod"), Some("shop")), "{record}");
            let i = match dst["pod"].as_str() {
                Some("web-0") => 0,
                Some("web-1") => 1,
                other => panic!("backend {other:?} is not a web pod: {record}"),
            };
            let backend = cluster.web(i);
            let backend_ip: IpAddr = if v6 { backend.ipv6().expect("v6").into() } else { backend.ipv4().into() };
            assert_eq!(dst["uid"], backend.uid(), "{record}");
            assert_eq!(
                dst["backend"],
                json!({"ip": backend_ip.to_string(), "port": 8080, "via": "conntrack"}),
                "{record}"
            );
            assert_ne!(record["verdict"]["ambiguous"], json!(true), "{record}");
            // The backend named is the one the node's conntrack DNATed this very connection to.
            let port = record["src"]["port"].as_u64().expect("src port");
            let entry: Vec<&ConntrackEntry> =
                conntrack.iter().filter(|e| e.orig_dst == target && u64::from(e.orig_src.port()) == port).collect();
            assert_eq!(entry.len(), 1, "{record}\n{conntrack:?}");
            assert_eq!(entry[0].reply_src.ip(), backend_ip, "{record}");
            backends_seen.insert(i);
        }
        assert_eq!(backends_seen.len(), 2, "20 connections all went to one backend");
        // At the backends' sockets the flow arrives from the client's own address: allowed too.
        let client_ip: IpAddr = if v6 { client.ipv6().expect("v6").into() } else { client.ipv4().into() };
        let mut at_backends = Vec::new();
        for i in 0..2 {
            let web = cluster.web(i);
            let addr = if v6 { web.addr_v6(8080).expect("v6") } else { web.addr_v4(8080) };
            at_backends.extend(at(&run.records, web.cgroup_id(), addr, false));
        }
        assert_eq!(at_backends.len(), N, "{}", pretty(&at_backends));
        assert!(at_backends.iter().all(|r| ip_of(r, "src") == Some(client_ip) && verdict(r) == "allowed"));
    }
}

#[test]
fn dns_through_kube_dns_from_a_default_deny_egress_pod_is_allowed() {
    if !root_or_skip("dns_through_kube_dns_from_a_default_deny_egress_pod_is_allowed") {
        return;
    }
    let cluster = Cluster::build("dns");
    cluster.write_policies(&[
        policy("shop", "default-deny-egress", json!({"podSelector": {}, "policyTypes": ["Egress"]})),
        policy(
            "shop",
            "allow-dns",
            json!({"podSelector": {}, "policyTypes": ["Egress"],
            "egress": [{"to": [kube_dns_peer()], "ports": [{"protocol": "UDP", "port": 53}]}]}),
        ),
    ]);
    let observer = cluster.observer();
    let client = cluster.client();
    let udp_v4 = SocketAddr::new(KUBE_DNS_IP_V4.into(), 53);
    let udp_v6 = SocketAddr::new(KUBE_DNS_IP_V6.into(), 53);
    let mut ports = BTreeSet::new();
    for (server, name) in [
        (udp_v4, "web.shop.svc.cluster.local"),
        (udp_v4, "db.shop.svc.cluster.local"),
        (udp_v4, "web.shop.svc.cluster.local"),
        (udp_v6, "web.shop.svc.cluster.local"),
    ] {
        let answer = client.dns_query(server, &DnsQueryOpts::a(name)).expect("query");
        assert_eq!(answer.rcode, "NOERROR", "{server} {name}");
        ports.insert((server, answer.local_port));
    }
    // Over TCP, which the policy does not allow: delivered all the same, a real gap.
    let tcp = client.dns_query(udp_v4, &DnsQueryOpts { tcp: true, ..DnsQueryOpts::a("web.shop.svc.cluster.local") });
    assert_eq!(tcp.expect("TCP query").rcode, "NOERROR");
    observer.wait_for_records(Duration::from_secs(20), |records| {
        ports.iter().all(|(server, port)| {
            at(records, client.cgroup_id(), *server, true)
                .iter()
                .any(|r| r["src"]["port"].as_u64() == Some(u64::from(*port)))
        }) && at(records, client.cgroup_id(), udp_v4, false).iter().any(|r| r["protocol"] == "tcp")
    });
    let run = observer.stop().expect("observer stops");

    let mut udp: Vec<Value> = Vec::new();
    for server in [udp_v4, udp_v6] {
        udp.extend(at(&run.records, client.cgroup_id(), server, true).into_iter().filter(|r| r["protocol"] == "udp"));
    }
    let flows: BTreeSet<(String, u64)> = udp
        .iter()
        .map(|r| (r["dst"]["ip"].as_str().unwrap_or("").to_owned(), r["src"]["port"].as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(flows.len(), 4, "{}", pretty(&udp));
    for record in &udp {
        assert_eq!(verdict(record), "allowed", "{record}");
        assert_eq!(record["dst"]["service"], json!({"namespace": "kube-system", "name": "kube-dns"}), "{record}");
        assert_eq!((record["dst"]["kind"].as_str(), record["dst"]["pod"].as_str()), (Some("pod"), Some("coredns-0")));
        assert_eq!(record["dst"]["port"], 53, "{record}");
    }
    let tcp: Vec<Value> =
        at(&run.records, client.cgroup_id(), udp_v4, false).into_iter().filter(|r| r["protocol"] == "tcp").collect();
    assert_eq!(verdicts(&tcp), vec!["enforcement-gap"], "{}", pretty(&tcp));
    let names: BTreeSet<&str> =
        tcp[0]["verdict"]["policies"].as_array().into_iter().flatten().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, BTreeSet::from(["allow-dns", "default-deny-egress"]), "{}", tcp[0]);
}

#[test]
fn probes_from_the_node_to_an_ingress_isolated_pod_are_allowed() {
    if !root_or_skip("probes_from_the_node_to_an_ingress_isolated_pod_are_allowed") {
        return;
    }
    let cluster = Cluster::build("probes");
    cluster.write_policies(&[policy(
        "shop",
        "web-isolated",
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}),
    )]);
    let observer = cluster.observer();
    let web = cluster.web(0);
    let (v4, v6) = (web.addr_v4(8080), web.addr_v6(8080).expect("v6"));
    let _servers = [server(web, v4, WEB_REPLY), server(web, v6, WEB_REPLY)];
    let node = cluster.lab.node().expect("node");
    let sources =
        [(POD_GATEWAY_V4.into(), v4), (NODE_IP_V4.into(), v4), (POD_GATEWAY_V6.into(), v6), (NODE_IP_V6.into(), v6)];
    for (source, target) in sources {
        for _ in 0..3 {
            assert_eq!(node.probe(source, target, WEB_REPLY).expect("probe").complete, 1, "{source} → {target}");
        }
    }
    // A pod is still held to the policy: the real gap is still reported.
    assert_eq!(connect(cluster.client(), v4, 1, WEB_REPLY).complete, 1);
    observer.wait_for_records(Duration::from_secs(20), |records| {
        at(records, web.cgroup_id(), v4, false).len() >= 7 && at(records, web.cgroup_id(), v6, false).len() >= 6
    });
    let run = observer.stop().expect("observer stops");

    let mut probes = at(&run.records, web.cgroup_id(), v4, false);
    let from_client: Vec<Value> =
        probes.iter().filter(|r| ip_of(r, "src") == Some(cluster.client().ipv4().into())).cloned().collect();
    probes.retain(|r| ip_of(r, "src") != Some(cluster.client().ipv4().into()));
    probes.extend(at(&run.records, web.cgroup_id(), v6, false));
    let mut by_source: HashMap<IpAddr, usize> = HashMap::new();
    for record in &probes {
        *by_source.entry(ip_of(record, "src").expect("src ip")).or_default() += 1;
        assert_eq!(verdict(record), "allowed", "{record}");
        let reason = record["verdict"]["reason"].as_str().unwrap_or("");
        assert!(reason.contains("node"), "the reason should say it is node traffic: {record}");
    }
    let expected: HashMap<IpAddr, usize> = sources.iter().map(|(source, _)| (*source, 3)).collect();
    assert_eq!(by_source, expected, "{}", pretty(&probes));
    assert_eq!(verdicts(&from_client), vec!["enforcement-gap"], "{}", pretty(&from_client));
    // The prober's own end (the node's cgroup, like kubelet's) is never a gap either.
    let node_side: Vec<Value> =
        run.records.iter().filter(|r| r["cgroup"]["id"].as_u64() == Some(node.cgroup_id())).cloned().collect();
    assert!(
        node_side.iter().all(|r| !matches!(verdict(r), "enforcement-gap" | "denied-attempt" | "intent-violation")),
        "{}",
        pretty(&node_side)
    );
}

#[test]
fn a_service_whose_backend_denies_the_client_is_an_enforcement_gap_then_a_denied_attempt() {
    if !root_or_skip("a_service_whose_backend_denies_the_client_is_an_enforcement_gap_then_a_denied_attempt") {
        return;
    }
    let cluster = Cluster::build("gap");
    cluster.write_policies(&[policy(
        "shop",
        "db-ingress",
        json!({"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
               "ingress": [{"from": [app("web")], "ports": [{"protocol": "TCP", "port": 5432}]}]}),
    )]);
    let observer = cluster.observer();
    let db = cluster.db();
    let _server = server(db, db.addr_v4(5432), 20);
    let client = cluster.client();
    let target = cluster.db.addr("postgres", false).expect("ClusterIP");
    // The lab does not enforce the policy: delivered.
    assert_eq!(connect(client, target, 2, 20).complete, 2);
    wait_ends(&observer, client.cgroup_id(), target, 2);
    // Now it does (an nftables drop in the pod, as a CNI would): the SYN goes unanswered.
    let drop_rule = db.drop_inbound_tcp_syn(5432).expect("nft drop");
    assert_eq!(connect(client, target, 1, 20).timed_out, 1);
    wait_ends(&observer, client.cgroup_id(), target, 3);
    drop(drop_rule);
    let run = observer.stop().expect("observer stops");

    let records = at(&run.records, client.cgroup_id(), target, false);
    assert_eq!(
        verdicts(&records),
        vec!["enforcement-gap", "enforcement-gap", "denied-attempt"],
        "{}",
        pretty(&records)
    );
    for record in &records {
        assert_eq!(record["dst"]["service"], json!({"namespace": "shop", "name": "db"}), "{record}");
        assert_eq!(record["dst"]["pod"], "db-0", "{record}");
        assert_eq!(
            record["verdict"]["policies"],
            json!([{"namespace": "shop", "name": "db-ingress", "resourceVersion": "1"}])
        );
    }
    let at_db = at(&run.records, db.cgroup_id(), db.addr_v4(5432), false);
    assert_eq!(verdicts(&at_db), vec!["enforcement-gap"; 2], "delivered: seen at db-0\n{}", pretty(&at_db));
}

#[test]
fn a_policy_applied_mid_connection_is_outlived_policy_and_the_next_connection_a_gap() {
    if !root_or_skip("a_policy_applied_mid_connection_is_outlived_policy_and_the_next_connection_a_gap") {
        return;
    }
    let cluster = Cluster::build("outlived");
    let observer = cluster.observer();
    let (client, web) = (cluster.client(), cluster.web(0));
    let target = web.addr_v4(8080);
    let _server = server(web, target, WEB_REPLY);
    // A connection that stays open for 8 s, allowed when it opens (no policy selects anyone).
    let opts = TcpClientOpts {
        send: 10,
        expect: WEB_REPLY,
        hold: Duration::from_secs(8),
        timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let mut long = client.spawn(TRAFFIC, opts.args(target)).expect("long connection");
    assert!(
        observer.wait_for_records(Duration::from_secs(5), |records| !at(records, client.cgroup_id(), target, true)
            .is_empty()),
        "the long connection was never seen open"
    );
    // While it is open, web pods start taking connections from prometheus only.
    cluster.write_policies(&[policy(
        "shop",
        "web-ingress",
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
               "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "prometheus"}}}]}]}),
    )]);
    wait_policies(&observer, 1);
    let line =
        long.wait_for_line(Duration::from_secs(20), |l| l.contains("\"complete\"")).expect("long connection ends");
    let report: TcpClientReport = serde_json::from_str(&line).expect("report");
    assert_eq!(report.complete, 1, "{report:?}");
    // A connection opened after the change is judged under the new policy.
    assert_eq!(connect(client, target, 1, WEB_REPLY).complete, 1);
    wait_ends(&observer, client.cgroup_id(), target, 2);
    wait_ends(&observer, web.cgroup_id(), target, 2);
    // Findings are counted when the judge flushes them: scrape until both kinds show, then judge
    // the exact counts of that scrape.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = observer.get("/metrics").expect("metrics from inside the node namespace").1;
        let flushed = metric_sum(&metrics, "flow_observer_findings_total", "kind=\"outlived-policy\"") >= 1.0
            && metric_sum(&metrics, "flow_observer_findings_total", "kind=\"enforcement-gap\"") >= 2.0;
        if flushed || Instant::now() >= deadline {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let run = observer.stop().expect("observer stops");

    for cgroup in [client.cgroup_id(), web.cgroup_id()] {
        let records = at(&run.records, cgroup, target, true);
        let mut flows: Vec<u64> = Vec::new();
        for port in records.iter().filter_map(|r| r["src"]["port"].as_u64()) {
            if !flows.contains(&port) {
                flows.push(port);
            }
        }
        assert_eq!(flows.len(), 2, "{}", pretty(&records));
        let (first, second): (Vec<&Value>, Vec<&Value>) =
            records.iter().partition(|r| r["src"]["port"].as_u64() == Some(flows[0]));
        // The long connection keeps the verdict it started with; its end says what it would be now.
        assert!(first.iter().all(|r| verdict(r) == "allowed"), "{}", pretty(&records));
        let end = first.iter().find(|r| r["event"] == "end").expect("end of the long connection");
        assert_eq!(end["verdict_now"]["verdict"], "enforcement-gap", "{end}");
        assert_eq!(end["verdict_now"]["policies"][0]["name"], "web-ingress", "{end}");
        assert!(second.iter().all(|r| verdict(r) == "enforcement-gap"), "{}", pretty(&records));
        assert!(second.iter().all(|r| r.get("verdict_now").is_none()), "{}", pretty(&records));
    }
    let findings = cluster.findings();
    let outlived: Vec<&Value> = findings.iter().filter(|f| f["kind"] == "outlived-policy").collect();
    assert_eq!(outlived.len(), 1, "one per edge and policy change:\n{findings:#?}");
    // Seen at both ends (both pods are on this node): one finding whose log count says so, and
    // counted once in findings_total (once per edge and policy change).
    assert_eq!(outlived[0]["count"], 2, "{}", outlived[0]);
    let gaps: Vec<&Value> = findings.iter().filter(|f| f["kind"] == "enforcement-gap").collect();
    assert_eq!(gaps.len(), 1, "only the new connection is a gap:\n{findings:#?}");
    assert_eq!(gaps[0]["count"], 2, "{}", gaps[0]);
    assert_eq!(metric_sum(&metrics, "flow_observer_findings_total", "kind=\"outlived-policy\""), 1.0, "{metrics}");
    assert_eq!(metric_sum(&metrics, "flow_observer_findings_total", "kind=\"enforcement-gap\""), 2.0, "{metrics}");
}

#[test]
fn a_host_network_pods_flows_are_node_traffic() {
    if !root_or_skip("a_host_network_pods_flows_are_node_traffic") {
        return;
    }
    let cluster = Cluster::build("hostnet");
    // Everything in shop is isolated both ways, and the node agent's own policy isolates nothing:
    // a host-network pod is the node.
    cluster.write_policies(&[
        default_deny("shop"),
        policy(
            "kube-system",
            "node-agent-deny",
            json!({"podSelector": {"matchLabels": {"app": "node-agent"}},
            "policyTypes": ["Ingress", "Egress"]}),
        ),
    ]);
    let observer = cluster.observer();
    let (client, web, host) = (cluster.client(), cluster.web(0), cluster.host());
    let agent_addr = host.addr_v4(9100);
    let _agent = server(host, agent_addr, METRICS_REPLY);
    let _web = server(web, web.addr_v4(8080), WEB_REPLY);
    // A pod reaches the node agent (a default-deny-egress pod to its node), and the node agent
    // reaches a default-deny-ingress pod.
    assert_eq!(connect(client, agent_addr, 2, METRICS_REPLY).complete, 2);
    assert_eq!(connect(host, web.addr_v4(8080), 2, WEB_REPLY).complete, 2);
    for (cgroup, dst) in [
        (client.cgroup_id(), agent_addr),
        (host.cgroup_id(), agent_addr),
        (host.cgroup_id(), web.addr_v4(8080)),
        (web.cgroup_id(), web.addr_v4(8080)),
    ] {
        wait_ends(&observer, cgroup, dst, 2);
    }
    let run = observer.stop().expect("observer stops");

    let to_agent = at(&run.records, client.cgroup_id(), agent_addr, false);
    let agent_in = at(&run.records, host.cgroup_id(), agent_addr, false);
    let agent_out = at(&run.records, host.cgroup_id(), web.addr_v4(8080), false);
    let web_in = at(&run.records, web.cgroup_id(), web.addr_v4(8080), false);
    for (what, records) in
        [("client → agent", &to_agent), ("at agent", &agent_in), ("agent → web", &agent_out), ("at web", &web_in)]
    {
        assert_eq!(verdicts(records), vec!["allowed"; 2], "{what}:\n{}", pretty(records));
        for record in records.iter() {
            let reason = record["verdict"]["reason"].as_str().unwrap_or("");
            assert!(reason.contains("node"), "{what}: {record}");
        }
    }
    // The host-network pod's own sockets are found by their cgroup: the pod, not just "the node",
    // with the node's addresses (to a pod on the bridge the route picks the bridge address).
    for (record, ip) in
        agent_in.iter().map(|r| (&r["dst"], NODE_IP_V4)).chain(agent_out.iter().map(|r| (&r["src"], POD_GATEWAY_V4)))
    {
        assert_eq!((record["kind"].as_str(), record["pod"].as_str()), (Some("pod"), Some("node-agent-0")), "{record}");
        assert_eq!(record["ip"], ip.to_string(), "{record}");
    }
}

#[test]
fn a_normal_cluster_day_has_no_enforcement_gaps_and_no_intent_violations() {
    if !root_or_skip("a_normal_cluster_day_has_no_enforcement_gaps_and_no_intent_violations") {
        return;
    }
    let cluster = Cluster::build("day");
    let dns_ports = json!([{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]);
    let scrape_from_monitoring = json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                                        "podSelector": {"matchLabels": {"app": "prometheus"}}});
    cluster.write_policies(&[
        default_deny("shop"),
        default_deny("kube-system"),
        default_deny("monitoring"),
        // Every pod may resolve names.
        policy("shop", "allow-dns", json!({"podSelector": {}, "policyTypes": ["Egress"],
            "egress": [{"to": [kube_dns_peer()], "ports": dns_ports}]})),
        policy("monitoring", "allow-dns", json!({"podSelector": {}, "policyTypes": ["Egress"],
            "egress": [{"to": [kube_dns_peer()], "ports": dns_ports}]})),
        policy("kube-system", "dns-ingress", json!({"podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            "policyTypes": ["Ingress"], "ingress": [{"from": [{"namespaceSelector": {}}], "ports": dns_ports}]})),
        // The client calls the web Service; web pods take it and prometheus's scrapes.
        policy("shop", "client-to-web", json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [app("web")], "ports": [{"protocol": "TCP", "port": 8080}]}]})),
        policy("shop", "web-ingress", json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [app("client")], "ports": [{"protocol": "TCP", "port": 8080}]},
                        {"from": [scrape_from_monitoring], "ports": [{"protocol": "TCP", "port": 9090}]}]})),
        policy("monitoring", "prometheus-scrapes", json!({"podSelector": {"matchLabels": {"app": "prometheus"}},
            "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": 9090}]}]})),
        // The agent tier may only reach model servers on 8080 and kube-dns.
        json!({"apiVersion": "ai.governance/v1alpha1", "kind": "FlowIntent",
               "metadata": {"name": "agents", "namespace": "shop", "generation": 1},
               "spec": {"subject": {"tiers": ["agent"]},
                        "egress": {"forbid": [{"metadataService": true}],
                                   "allow": [{"tiers": ["model-serving"], "ports": [{"port": 8080}]},
                                             {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                                              "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]},
                        "isolation": {"ingress": true, "egress": true}}}),
    ]);
    let observer = cluster.observer();
    let (client, prometheus, coredns, node) =
        (cluster.client(), cluster.prometheus(), cluster.coredns(), cluster.lab.node().expect("node"));
    let mut servers = Vec::new();
    for i in 0..2 {
        let web = cluster.web(i);
        servers.push(server(web, web.addr_v4(8080), WEB_REPLY));
        servers.push(server(web, web.addr_v4(9090), METRICS_REPLY));
    }
    servers.push(server(coredns, coredns.addr_v4(8080), 2)); // CoreDNS's health endpoint
    let dns = SocketAddr::new(KUBE_DNS_IP_V4.into(), 53);
    let web_service = cluster.web.addr("http", false).expect("ClusterIP");
    let mut observer_scrapes = 0;
    for round in 0..3 {
        for (pod, tcp) in [(client, false), (client, true), (prometheus, false)] {
            let opts = DnsQueryOpts { tcp, ..DnsQueryOpts::a("web.shop.svc.cluster.local") };
            assert_eq!(pod.dns_query(dns, &opts).expect("DNS").rcode, "NOERROR", "round {round}");
        }
        assert_eq!(connect(client, web_service, 4, WEB_REPLY).complete, 4);
        for pod in [cluster.web(0), cluster.web(1), coredns] {
            for source in [IpAddr::from(POD_GATEWAY_V4), IpAddr::from(NODE_IP_V4)] {
                let expect = if pod.name() == coredns.name() { 2 } else { WEB_REPLY };
                assert_eq!(node.probe(source, pod.addr_v4(8080), expect).expect("probe").complete, 1);
            }
        }
        for i in 0..2 {
            assert_eq!(connect(prometheus, cluster.web(i).addr_v4(9090), 1, METRICS_REPLY).complete, 1);
        }
        let (status, body) = observer.get("/metrics").expect("scrape the observer in the node namespace");
        assert_eq!(status, 200);
        assert!(body.contains("flow_observer_"), "{body}");
        observer_scrapes += 1;
    }
    assert_eq!(observer_scrapes, 3);
    // Everything has ended: 12 Service calls, 12 probes of each web pod's 8080 … seen at the client.
    wait_ends(&observer, client.cgroup_id(), web_service, 12);
    wait_ends(&observer, prometheus.cgroup_id(), cluster.web(1).addr_v4(9090), 3);
    observer.wait_for_records(Duration::from_secs(20), |records| {
        at(records, cluster.web(0).cgroup_id(), cluster.web(0).addr_v4(8080), false).len() >= 6
    });
    // UDP flows end after 2 s idle: wait until every DNS flow seen has ended (its findings, if any,
    // were counted when the judge passed it on to the log).
    let dns_ended = |records: &[Value]| {
        [client, prometheus].iter().all(|pod| {
            let seen = at(records, pod.cgroup_id(), dns, true);
            let ports = |end_only: bool| -> std::collections::BTreeSet<u64> {
                seen.iter()
                    .filter(|r| !end_only || r["event"] == "end")
                    .filter_map(|r| r["src"]["port"].as_u64())
                    .collect()
            };
            !seen.is_empty() && ports(false) == ports(true)
        })
    };
    assert!(observer.wait_for_records(Duration::from_secs(10), dns_ended), "DNS flows never ended");
    let metrics = observer.get("/metrics").expect("metrics").1;
    let run = observer.stop().expect("observer stops");

    let bad: Vec<Value> = run
        .records
        .iter()
        .filter(|r| {
            matches!(verdict(r), "enforcement-gap" | "intent-violation")
                || matches!(r["verdict_now"]["verdict"].as_str(), Some("enforcement-gap" | "intent-violation"))
        })
        .cloned()
        .collect();
    assert!(bad.is_empty(), "a normal day's traffic reported as gaps or violations:\n{}", pretty(&bad));
    // And the day did happen, judged: every kind of traffic has allowed records (`end` records for
    // TCP, one per connection; any record for UDP flows).
    let allowed = |cgroup: u64, dst: SocketAddr, any_event: bool| {
        at(&run.records, cgroup, dst, any_event).iter().filter(|r| verdict(r) == "allowed").count()
    };
    assert_eq!(allowed(client.cgroup_id(), web_service, false), 12, "Service calls");
    assert!(allowed(client.cgroup_id(), dns, true) >= 6, "DNS over UDP and TCP");
    assert!(allowed(prometheus.cgroup_id(), dns, true) >= 3, "prometheus's DNS");
    for i in 0..2 {
        assert_eq!(allowed(prometheus.cgroup_id(), cluster.web(i).addr_v4(9090), false), 3, "scrapes of web-{i}");
    }
    let node_ips = [IpAddr::from(POD_GATEWAY_V4), IpAddr::from(NODE_IP_V4)];
    for pod in [cluster.web(0), cluster.web(1), coredns] {
        let probes: Vec<Value> = at(&run.records, pod.cgroup_id(), pod.addr_v4(8080), false)
            .into_iter()
            .filter(|r| ip_of(r, "src").is_some_and(|ip| node_ips.contains(&ip)))
            .collect();
        assert_eq!(verdicts(&probes), vec!["allowed"; 6], "probes of {}", pod.name());
    }
    let findings = cluster.findings();
    let bad_findings: Vec<&Value> = findings
        .iter()
        .filter(|f| matches!(f["kind"].as_str(), Some("enforcement-gap" | "intent-violation")))
        .collect();
    assert!(bad_findings.is_empty(), "{bad_findings:#?}");
    for kind in ["enforcement-gap", "intent-violation", "outlived-policy"] {
        let label = format!("kind=\"{kind}\"");
        assert_eq!(metric_sum(&metrics, "flow_observer_findings_total", &label), 0.0, "{kind}");
    }
}

#[test]
fn a_node_port_flow_is_judged_at_its_backend_not_as_node_traffic() {
    if !root_or_skip("a_node_port_flow_is_judged_at_its_backend_not_as_node_traffic") {
        return;
    }
    let cluster = Cluster::build("nodeport");
    // The client may reach web pods on 8080; prometheus may send nothing at all.
    cluster.write_policies(&[
        policy(
            "shop",
            "client-egress",
            json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [app("web")], "ports": [{"protocol": "TCP", "port": 8080}]}]}),
        ),
        policy("monitoring", "deny-egress", json!({"podSelector": {}, "policyTypes": ["Egress"]})),
    ]);
    let observer = cluster.observer();
    let _servers: Vec<Proc> = (0..2).map(|i| server(cluster.web(i), cluster.web(i).addr_v4(8080), WEB_REPLY)).collect();
    let node_port = SocketAddr::new(NODE_IP_V4.into(), 30080);
    let (client, prometheus) = (cluster.client(), cluster.prometheus());
    assert_eq!(connect(client, node_port, 4, WEB_REPLY).complete, 4);
    assert_eq!(connect(prometheus, node_port, 2, WEB_REPLY).complete, 2);
    wait_ends(&observer, client.cgroup_id(), node_port, 4);
    wait_ends(&observer, prometheus.cgroup_id(), node_port, 2);
    let run = observer.stop().expect("observer stops");

    // A node address and a NodePort is a Service: judged where kube-proxy sent it, not as the node.
    for (pod, expected) in [(client, "allowed"), (prometheus, "enforcement-gap")] {
        let records = at(&run.records, pod.cgroup_id(), node_port, false);
        assert_eq!(verdicts(&records).len(), if expected == "allowed" { 4 } else { 2 }, "{}", pretty(&records));
        for record in &records {
            assert_eq!(verdict(record), expected, "{record}");
            assert_eq!(record["dst"]["service"], json!({"namespace": "shop", "name": "web"}), "{record}");
            assert!(matches!(record["dst"]["pod"].as_str(), Some("web-0" | "web-1")), "{record}");
            assert_eq!(record["dst"]["backend"]["via"], "conntrack", "{record}");
            assert_eq!(record["dst"]["backend"]["port"], 8080, "{record}");
        }
    }
    // At the backends the NodePort traffic arrives masqueraded from the bridge address: the node.
    let mut at_backends = Vec::new();
    for i in 0..2 {
        at_backends.extend(at(&run.records, cluster.web(i).cgroup_id(), cluster.web(i).addr_v4(8080), false));
    }
    assert_eq!(at_backends.len(), 6, "{}", pretty(&at_backends));
    assert!(
        at_backends.iter().all(|r| ip_of(r, "src") == Some(POD_GATEWAY_V4.into()) && verdict(r) == "allowed"),
        "{}",
        pretty(&at_backends)
    );
}

fn cluster_policy(name: &str, tier: &str, priority: u32, spec: Value) -> Value {
    let mut spec = spec;
    spec["tier"] = json!(tier);
    spec["priority"] = json!(priority);
    json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
           "metadata": {"name": name, "resourceVersion": "1"}, "spec": spec})
}

/// Issue 25: ClusterNetworkPolicies judged on the node. An Admin `Deny` the lab does not enforce
/// is an `enforcement-gap` citing the ClusterNetworkPolicy rule, directly and through a Service
/// (judged at the backend kube-proxy DNATed it to, on the backend's port); a Baseline `Deny`
/// is overridden by a NetworkPolicy that allows, and decides where no NetworkPolicy isolates.
#[test]
fn cluster_network_policies_admin_deny_is_a_gap_and_a_baseline_deny_yields_to_a_networkpolicy() {
    if !root_or_skip("cluster_network_policies_admin_deny_is_a_gap_and_a_baseline_deny_yields_to_a_networkpolicy") {
        return;
    }
    let cluster = Cluster::build("cnp");
    let web_pods = json!({"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}});
    let clients = json!({"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "client"}}});
    cluster.write_policies(&[
        // No agent reaches a model server's 8080, whatever the namespace owners allow.
        cluster_policy(
            "guard-web",
            "Admin",
            10,
            json!({"subject": {"pods": web_pods}, "ingress": [{"name": "no-agents", "action": "Deny",
                "from": [{"pods": clients}], "protocols": [{"tcp": {"destinationPort": {"number": 8080}}}]}]}),
        ),
        // Nothing enters shop unless a NetworkPolicy there says otherwise.
        cluster_policy(
            "baseline-deny",
            "Baseline",
            100,
            json!({"subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}},
                   "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
        ),
        policy(
            "shop",
            "db-from-client",
            json!({"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                   "ingress": [{"from": [app("client")], "ports": [{"protocol": "TCP", "port": 5432}]}]}),
        ),
    ]);
    let observer = cluster.observer();
    let (client, prometheus, db, web) = (cluster.client(), cluster.prometheus(), cluster.db(), cluster.web(0));
    let mut servers: Vec<Proc> =
        (0..2).map(|i| server(cluster.web(i), cluster.web(i).addr_v4(8080), WEB_REPLY)).collect();
    servers.push(server(db, db.addr_v4(5432), 20));
    let service = cluster.web.addr("http", false).expect("ClusterIP");
    // The lab enforces nothing: every connection is delivered.
    assert_eq!(connect(client, web.addr_v4(8080), 3, WEB_REPLY).complete, 3);
    assert_eq!(connect(client, service, 4, WEB_REPLY).complete, 4);
    assert_eq!(connect(client, db.addr_v4(5432), 2, 20).complete, 2);
    assert_eq!(connect(prometheus, web.addr_v4(8080), 1, WEB_REPLY).complete, 1);
    wait_ends(&observer, client.cgroup_id(), web.addr_v4(8080), 3);
    wait_ends(&observer, client.cgroup_id(), service, 4);
    wait_ends(&observer, client.cgroup_id(), db.addr_v4(5432), 2);
    wait_ends(&observer, prometheus.cgroup_id(), web.addr_v4(8080), 1);
    wait_ends(&observer, db.cgroup_id(), db.addr_v4(5432), 2);
    observer.wait_for_records(Duration::from_secs(20), |records| {
        (0..2)
            .map(|i| at(records, cluster.web(i).cgroup_id(), cluster.web(i).addr_v4(8080), false).len())
            .sum::<usize>()
            >= 8
    });
    // Verdicts are counted as records are metered, findings when the judge flushes them: scrape
    // until every flow's verdict shows, then judge the exact counts of that scrape.
    // Of flows into shop (the test's own scrapes of the observer are node traffic).
    let verdicts_total = |metrics: &str, verdict: &str| {
        let label = format!("verdict=\"{verdict}\"");
        metrics
            .lines()
            .filter(|l| l.starts_with("flow_observer_verdicts_total") && l.contains(&label))
            .filter(|l| l.contains("dst_namespace=\"shop\""))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum::<f64>()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = observer.get("/metrics").expect("metrics from inside the node namespace").1;
        let counted = verdicts_total(&metrics, "enforcement-gap") >= 16.0 && verdicts_total(&metrics, "allowed") >= 4.0;
        let flushed = metric_sum(&metrics, "flow_observer_findings_total", "kind=\"enforcement-gap\"") >= 16.0;
        if (counted && flushed) || Instant::now() >= deadline {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let run = observer.stop().expect("observer stops");

    let guard = json!([{"kind": "ClusterNetworkPolicy", "name": "guard-web", "tier": "Admin", "priority": 10,
                        "resourceVersion": "1"}]);
    let guard_rule = "cnp/guard-web@1 rule 0 (\"no-agents\") (Admin, priority 10): Deny";
    // The Admin Deny, straight to the pod: a gap at the client's socket.
    let records = at(&run.records, client.cgroup_id(), web.addr_v4(8080), false);
    assert_eq!(verdicts(&records), vec!["enforcement-gap"; 3], "{}", pretty(&records));
    for record in &records {
        assert_eq!(record["verdict"]["policies"], guard, "{record}");
        let reason = record["verdict"]["reason"].as_str().unwrap_or("");
        assert!(reason.contains(&format!("ingress of shop/web-0: {guard_rule}")), "{record}");
    }
    // Through the Service: judged at the backend, on its port 8080 (the ClusterIP's is 80).
    let records = at(&run.records, client.cgroup_id(), service, false);
    assert_eq!(verdicts(&records), vec!["enforcement-gap"; 4], "{}", pretty(&records));
    let mut by_backend = [0_usize; 2];
    for record in &records {
        match record["dst"]["pod"].as_str() {
            Some("web-0") => by_backend[0] += 1,
            Some("web-1") => by_backend[1] += 1,
            _ => {}
        }
        assert_eq!(record["dst"]["service"], json!({"namespace": "shop", "name": "web"}), "{record}");
        assert!(matches!(record["dst"]["pod"].as_str(), Some("web-0" | "web-1")), "{record}");
        assert_eq!(record["dst"]["backend"]["via"], "conntrack", "{record}");
        assert_eq!(record["dst"]["backend"]["port"], 8080, "{record}");
        assert_eq!(record["verdict"]["policies"], guard, "{record}");
        assert!(record["verdict"]["reason"].as_str().unwrap_or("").contains(guard_rule), "{record}");
    }
    assert_eq!(by_backend.iter().sum::<usize>(), 4, "every Service connection at a web backend");
    // At the web pods' sockets, where the direct and the Service connections both arrive from the
    // client's address: gaps too, the direct ones at web-0.
    for (i, service_calls) in by_backend.into_iter().enumerate() {
        let pod = cluster.web(i);
        let records: Vec<Value> = at(&run.records, pod.cgroup_id(), pod.addr_v4(8080), false)
            .into_iter()
            .filter(|r| ip_of(r, "src") == Some(client.ipv4().into()))
            .collect();
        let expected = service_calls + if i == 0 { 3 } else { 0 };
        assert_eq!(verdicts(&records), vec!["enforcement-gap"; expected], "web-{i}:\n{}", pretty(&records));
        for record in &records {
            assert_eq!(record["verdict"]["policies"], guard, "{record}");
            let reason = record["verdict"]["reason"].as_str().unwrap_or("");
            assert!(reason.contains(&format!("ingress of shop/web-{i}: {guard_rule}")), "{record}");
        }
    }
    // The Baseline Deny yields to the NetworkPolicy isolating db-0, which allows the client.
    for cgroup in [client.cgroup_id(), db.cgroup_id()] {
        let records = at(&run.records, cgroup, db.addr_v4(5432), false);
        assert_eq!(verdicts(&records), vec!["allowed"; 2], "{}", pretty(&records));
        for record in &records {
            assert_eq!(
                record["verdict"]["policies"],
                json!([{"namespace": "shop", "name": "db-from-client", "resourceVersion": "1"}]),
                "{record}"
            );
        }
    }
    // Where no NetworkPolicy isolates (web-0) and no Admin rule decides (prometheus is no
    // agent), the Baseline Deny does.
    let baseline = json!([{"kind": "ClusterNetworkPolicy", "name": "baseline-deny", "tier": "Baseline",
                           "priority": 100, "resourceVersion": "1"}]);
    for cgroup in [prometheus.cgroup_id(), web.cgroup_id()] {
        let records: Vec<Value> = at(&run.records, cgroup, web.addr_v4(8080), false)
            .into_iter()
            .filter(|r| ip_of(r, "src") == Some(prometheus.ipv4().into()))
            .collect();
        assert_eq!(verdicts(&records), vec!["enforcement-gap"], "{}", pretty(&records));
        assert_eq!(records[0]["verdict"]["policies"], baseline, "{}", records[0]);
        let reason = records[0]["verdict"]["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains("ingress of shop/web-0: cnp/baseline-deny@1 rule 0 (Baseline, priority 100): Deny"),
            "{reason}"
        );
    }
    // Exact counts, each flow at both its sockets: gaps 3 + 4 + 1 at the clients and as many at
    // the web pods; 2 allowed at the client and 2 at db-0.
    assert_eq!(verdicts_total(&metrics, "enforcement-gap"), 16.0, "{metrics}");
    assert_eq!(verdicts_total(&metrics, "allowed"), 4.0, "{metrics}");
    for verdict in ["denied-attempt", "intent-violation", "undecidable"] {
        assert_eq!(verdicts_total(&metrics, verdict), 0.0, "{verdict}: {metrics}");
    }
    assert_eq!(metric_sum(&metrics, "flow_observer_findings_total", "kind=\"enforcement-gap\""), 16.0, "{metrics}");
    for (kind, loaded) in [("ClusterNetworkPolicy", 2.0), ("NetworkPolicy", 1.0)] {
        let label = format!("kind=\"{kind}\"");
        assert_eq!(metric_sum(&metrics, "flow_observer_policies_loaded", &label), loaded, "{kind}: {metrics}");
    }
    let findings = cluster.findings();
    let mut gaps: Vec<(String, u64)> = findings
        .iter()
        .filter(|f| f["kind"] == "enforcement-gap")
        .map(|f| (f["rule"].as_str().unwrap_or("").to_owned(), f["count"].as_u64().unwrap_or(0)))
        .collect();
    gaps.sort();
    let guard_count: u64 = gaps.iter().filter(|(rule, _)| rule == "cnp/guard-web").map(|(_, count)| count).sum();
    let baseline_count: u64 = gaps.iter().filter(|(rule, _)| rule == "cnp/baseline-deny").map(|(_, count)| count).sum();
    assert_eq!((guard_count, baseline_count), (14, 2), "{findings:#?}");
    assert_eq!(gaps.iter().map(|(_, count)| count).sum::<u64>(), 16, "{findings:#?}");
    drop(servers);
}
