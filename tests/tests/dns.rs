//! DNS on the real kernel: a DNS server in the lab's internet answers names
//! for 203.0.113.x, an agent pod resolves them (UDP and TCP) and connects,
//! and the observer must name each egress flow after what the pod resolved,
//! mark a connection to an address the pod never resolved as direct-IP, and
//! record every query in the DNS log, NXDOMAIN and REFUSED ones included, and
//! answers of every captured size, one cut at 512 bytes and kept in part.
//! FQDN intents are then judged on the observed flows, both ways.
//! Root only; one thread.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use observer::{
    flow::PeerDns,
    intent::{FlowEnd, FlowIntent, IntentConfig, IntentIndex, Tiers},
    inventory::model::{Pod as ModelPod, Protocol},
};
use observer_tests::{
    Endpoint, INTERNET_HOST_V4, Lab, ObserverProcess, TcpClientOpts, TcpServerOpts,
    dns::{DnsQueryOpts, Zone},
    manifests::{self, PodSpec},
    root_or_skip,
};
use serde_json::{Value, json};

const TIER_LABEL: &str = "ai.governance/tier";

/// The `end` record of the one flow from `cgroup_id` to `dst`.
fn end(records: &[Value], cgroup_id: u64, dst: SocketAddr) -> &Value {
    let matching: Vec<&Value> = records
        .iter()
        .filter(|record| record["event"] == "end" && record["cgroup"]["id"].as_u64() == Some(cgroup_id))
        .filter(|record| {
            record["dst"]["ip"].as_str() == Some(&dst.ip().to_string())
                && record["dst"]["port"].as_u64() == Some(u64::from(dst.port()))
        })
        .collect();
    assert_eq!(matching.len(), 1, "one flow from cgroup {cgroup_id} to {dst}: {matching:#?}");
    matching[0]
}

/// `count` addresses in the internet range, answered but never connected to.
fn hosts(count: u8) -> Vec<IpAddr> {
    (0..count).map(|index| IpAddr::from([203, 0, 113, 100 + index])).collect()
}

/// The DNS log entries asking for `name`.
fn asked<'a>(entries: &'a [Value], name: &str) -> Vec<&'a Value> {
    entries.iter().filter(|entry| entry["name"] == name).collect()
}

/// The record's `dst.dns` as the type the judge reads.
fn peer_dns(record: &Value) -> Option<PeerDns> {
    let dns = record["dst"].get("dns")?;
    let names = dns["names"].as_array().map_or_else(Vec::new, |names| {
        names.iter().filter_map(Value::as_str).map(Arc::from).collect::<Vec<Arc<str>>>()
    });
    Some(PeerDns { names, resolved: dns["resolved"].as_bool().expect("resolved") })
}

#[test]
fn egress_flows_carry_resolved_names_and_fqdn_intents_judge_them() {
    if !root_or_skip("egress_flows_carry_resolved_names_and_fqdn_intents_judge_them") {
        return;
    }
    let lab = Lab::builder().pods(1).ipv6(false).internet(true).build().expect("lab");
    let agent = lab.pod(0);
    let internet = lab.internet().expect("internet");
    let api = internet.add_host_address().expect("address");
    let direct = internet.add_host_address().expect("address");
    let partner = internet.add_host_address().expect("address");
    let zone = Zone::default()
        .with("api.example.com", &[api.into()], 30)
        .with("partner.example.org", &[partner.into()], 30)
        .refuse("refused.example.com")
        // Answers of each kernel record size: 10 addresses fit 256 bytes,
        // 40 overflow the 512 captured.
        .with("mid.example.com", &hosts(10), 60)
        .with("many.example.com", &hosts(40), 60);
    let resolver: SocketAddr = (INTERNET_HOST_V4, 53).into();
    let _dns = internet.dns_server(resolver, &zone).expect("DNS server");
    let _https = internet
        .tcp_server("0.0.0.0:443".parse().expect("addr"), &TcpServerOpts { reply: 100, ..Default::default() })
        .expect("internet server");

    let dir = std::env::temp_dir().join(format!("dns-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // Agents may reach names below example.com and example.org, but not the partner.
    let intent = json!({
        "apiVersion": "ai.governance/v1alpha1", "kind": "FlowIntent",
        "metadata": {"name": "agent-apis", "namespace": "ai"},
        "spec": {
            "subject": {"tiers": ["agent"]},
            "egress": {
                "allow": [{"fqdn": "*.example.com"}, {"fqdn": "*.example.org"}],
                "forbid": [{"fqdn": "partner.example.org"}],
            },
        },
    });
    manifests::write_list(
        &dir.join("agents.json"),
        vec![
            intent.clone(),
            manifests::namespace("ai", &[]),
            manifests::pod(&PodSpec {
                pod: agent,
                namespace: "ai",
                name: "agent-1",
                labels: vec![("app", "agent"), (TIER_LABEL, "agent")],
                owner: None,
                ports: vec![],
            }),
        ],
    )
    .expect("manifests");
    let dns_log = dir.join("dns.jsonl");
    let manifests_arg = dir.join("agents.json").to_string_lossy().into_owned();
    let dns_log_arg = dns_log.to_string_lossy().into_owned();
    let observer =
        ObserverProcess::start(&["--poll-interval", "200ms", "--manifests", &manifests_arg, "--dns-log", &dns_log_arg])
            .expect("observer starts");

    let client = TcpClientOpts { send: 10, expect: 100, ..Default::default() };
    // Resolve, then connect: the flow must carry the name.
    let answer = agent.dns_query(resolver, &DnsQueryOpts::a("api.example.com")).expect("query");
    assert_eq!((answer.rcode.as_str(), answer.addrs.as_slice()), ("NOERROR", &[IpAddr::from(api)][..]));
    assert_eq!(agent.tcp_client((api, 443).into(), &client).expect("to api").complete, 1);
    // Over TCP this time.
    let tcp_query = DnsQueryOpts { tcp: true, ..DnsQueryOpts::a("partner.example.org") };
    let answer = agent.dns_query(resolver, &tcp_query).expect("TCP query");
    assert_eq!(answer.addrs, vec![IpAddr::from(partner)]);
    assert_eq!(agent.tcp_client((partner, 443).into(), &client).expect("to partner").complete, 1);
    // Names that do not resolve: the names must still be recorded.
    let nx = agent.dns_query(resolver, &DnsQueryOpts::a("exfil.attacker.example")).expect("query");
    assert_eq!(nx.rcode, "NXDOMAIN");
    let refused = agent.dns_query(resolver, &DnsQueryOpts::a("refused.example.com")).expect("query");
    assert_eq!(refused.rcode, "REFUSED");
    for (name, count) in [("mid.example.com", 10), ("many.example.com", 40)] {
        let answer = agent.dns_query(resolver, &DnsQueryOpts::a(name)).expect("query");
        assert_eq!(answer.addrs.len(), count, "{name}");
    }
    // An address the pod never resolved.
    assert_eq!(agent.tcp_client((direct, 443).into(), &client).expect("direct").complete, 1);
    observer.wait_for_records(Duration::from_secs(30), |records| {
        records.iter().any(|record| record["event"] == "end" && record["dst"]["ip"] == direct.to_string())
    });
    let run = observer.stop().expect("observer stops");
    let dns_entries: Vec<Value> = std::fs::read_to_string(&dns_log)
        .expect("DNS log")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    std::fs::remove_dir_all(&dir).expect("cleanup");

    // Flow records: names for what was resolved, direct-IP for what was not.
    let cgroup = agent.cgroup_id();
    let to_api = end(&run.records, cgroup, (api, 443).into());
    assert_eq!(to_api["dst"]["kind"], "world");
    assert_eq!(to_api["dst"]["dns"], json!({"names": ["api.example.com"], "resolved": true}));
    let to_partner = end(&run.records, cgroup, (partner, 443).into());
    assert_eq!(to_partner["dst"]["dns"], json!({"names": ["partner.example.org"], "resolved": true}));
    let to_direct = end(&run.records, cgroup, (direct, 443).into());
    assert_eq!(to_direct["dst"]["dns"], json!({"resolved": false}));
    // The DNS traffic itself is not a direct-IP connection.
    let to_resolver: Vec<&Value> = run
        .records
        .iter()
        .filter(|record| record["cgroup"]["id"].as_u64() == Some(cgroup) && record["dst"]["port"] == 53)
        .collect();
    assert!(!to_resolver.is_empty());
    assert!(to_resolver.iter().all(|record| record["dst"].get("dns").is_none()), "{to_resolver:#?}");

    // The DNS log: one entry per query, with the pod, rcode and answers.
    let api_entries = asked(&dns_entries, "api.example.com");
    assert_eq!(api_entries.len(), 1, "{dns_entries:#?}");
    let entry = api_entries[0];
    assert_eq!(
        (entry["event"].as_str(), entry["rcode"].as_str(), entry["type"].as_str()),
        (Some("answer"), Some("NOERROR"), Some("A"))
    );
    assert_eq!((entry["client"]["pod"].as_str(), entry["client"]["namespace"].as_str()), (Some("agent-1"), Some("ai")));
    assert_eq!(entry["answers"], json!([{"name": "api.example.com", "type": "A", "ttl": 30, "data": api.to_string()}]));
    assert_eq!(entry["server"]["ip"], INTERNET_HOST_V4.to_string());
    assert_eq!(asked(&dns_entries, "partner.example.org")[0]["protocol"], "tcp");
    assert_eq!(asked(&dns_entries, "exfil.attacker.example")[0]["rcode"], "NXDOMAIN");
    assert_eq!(asked(&dns_entries, "refused.example.com")[0]["rcode"], "REFUSED");
    let mid = asked(&dns_entries, "mid.example.com")[0];
    assert_eq!((mid["answers"].as_array().map(Vec::len), mid.get("partial")), (Some(10), None));
    // Cut at 512 bytes: what came before the cut is kept and said to be partial.
    let many = asked(&dns_entries, "many.example.com")[0];
    let kept = many["answers"].as_array().map_or(0, Vec::len);
    assert!((20..40).contains(&kept), "{kept} answers kept of 40");
    assert_eq!(many["partial"], true);
    let health: Value = run
        .log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["message"] == "capture stopped")
        .and_then(|line| line["dns"].as_str().and_then(|text| serde_json::from_str(text).ok()))
        .expect("DNS health in the final log line");
    assert_eq!((health["queries"].as_u64(), health["answers"].as_u64()), (Some(6), Some(6)), "{health}");
    assert_eq!((health["kernel_truncated"].as_u64(), health["partial"].as_u64()), (Some(1), Some(1)), "{health}");
    // 6 queries and 6 answers, the TCP ones as one data segment each.
    assert_eq!(health["kernel_captured"].as_u64(), Some(12), "{health}");
    assert_eq!((health["nxdomain"].as_u64(), health["refused"].as_u64()), (Some(1), Some(1)), "{health}");
    for counter in ["kernel_lost", "parse_errors", "answers_unmatched", "log_dropped", "unanswered"] {
        assert_eq!(health[counter], 0, "{counter} in {health}");
    }

    // FQDN intents, judged by the daemon on the observed flows, both ways.
    let verdict = |record: &Value| record["verdict"]["verdict"].as_str().map(str::to_owned);
    assert_eq!(verdict(to_api).as_deref(), Some("allowed"), "{to_api}");
    assert_eq!(verdict(to_partner).as_deref(), Some("intent-violation"), "{to_partner}");
    assert_eq!(to_partner["verdict"]["intent"]["rule"], "spec.egress.forbid[0]", "{to_partner}");
    assert_eq!(verdict(to_direct).as_deref(), Some("intent-violation"), "{to_direct}");
    assert_eq!(to_direct["verdict"]["intent"]["rule"], "spec.egress.allow", "{to_direct}");
    let reason = to_direct["verdict"]["reason"].as_str().expect("reason");
    assert!(reason.contains("direct-IP"), "{reason}");

    // The same judgement through the library, as a consumer of the flow log would make it.
    let intent: FlowIntent = serde_json::from_value(intent).expect("intent");
    let (index, errors) = IntentIndex::compile(&[intent], &[], Tiers::default(), &IntentConfig::default());
    assert!(errors.is_empty(), "{errors:?}");
    let agent_pod = ModelPod {
        uid: agent.uid().to_owned(),
        namespace: "ai".to_owned(),
        name: "agent-1".to_owned(),
        labels: [(TIER_LABEL.to_owned(), "agent".to_owned())].into(),
        resource_version: None,
        owner: None,
        ips: vec![agent.ipv4().into()],
        host_network: false,
        node_name: None,
        container_ports: Vec::new(),
        container_ids: Vec::new(),
        phase: None,
    };
    let src = FlowEnd::pod(&agent_pod, agent.ipv4().into(), None);
    let judge = |record: &Value| {
        let dns = peer_dns(record);
        let ip: IpAddr = record["dst"]["ip"].as_str().expect("ip").parse().expect("ip");
        let dst = FlowEnd::world(ip, Some(443)).with_dns(dns.as_ref());
        index
            .check_egress(&src, &dst, Some(Protocol::TCP))
            .map(|violation| (violation.rule.to_string(), violation.reason))
    };
    assert_eq!(judge(to_api), None, "api.example.com is allowed");
    let (rule, _) = judge(to_partner).expect("partner.example.org is forbidden");
    assert_eq!(rule, "spec.egress.forbid[0]");
    let (rule, reason) = judge(to_direct).expect("direct-IP is not allowed");
    assert_eq!(rule, "spec.egress.allow");
    assert!(reason.contains("direct-IP"), "{reason}");
}
