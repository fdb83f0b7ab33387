//! Service flows through the real enrich and judge stages: a standalone
//! inventory with Services, EndpointSlices and policies, a conntrack table of
//! plain values, and the records the stages hand on (`dst` named at the
//! backend, verdict at the backend, or ambiguous over the ready backends).

mod judge_fixtures;

use judge_fixtures::SERVICE_POLICIES;
use observer::{
    backends::Backends,
    config::ObserverConfig,
    enrich::Enricher,
    export::encode,
    flow::{FlowRecord, FlowState, RecordEvent},
    inventory::{Inventory, InventoryConfig},
    judge::{
        VerdictKind,
        stage::{JudgeStage, StageSetup},
    },
    metrics::services::ServiceCounters,
    testing::{ConntrackTable, socket_record},
};
use observer_common::{PROTO_TCP, PROTO_UDP};

/// The pods, Services and EndpointSlices beside [`SERVICE_POLICIES`].
const CLUSTER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: ai, uid: uid-client, labels: {app: client}}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 198.18.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns-1, namespace: kube-system, uid: uid-coredns-1, labels: {k8s-app: kube-dns}}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 198.18.0.53}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns-2, namespace: kube-system, uid: uid-coredns-2, labels: {k8s-app: kube-dns}}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 198.18.0.54}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: ai, uid: uid-web-1, labels: {app: web}}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 198.18.0.60}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: ai, uid: uid-web-2, labels: {app: web, locked: "true"}}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 198.18.0.61}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec: {clusterIP: 198.19.0.10, ports: [{name: dns, port: 53, protocol: UDP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kube-dns-x, namespace: kube-system, labels: {kubernetes.io/service-name: kube-dns}}
addressType: IPv4
ports: [{name: dns, port: 53, protocol: UDP}]
endpoints: [{addresses: [198.18.0.53]}, {addresses: [198.18.0.54]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ai}
spec: {clusterIP: 198.19.0.20, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-x, namespace: ai, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [198.18.0.60]}, {addresses: [198.18.0.61]}]
"#;

/// The client's first record of a connection to `dst`, with a reply seen.
fn record(src: &str, dst: &str, protocol: u8, flow: u64) -> FlowRecord {
    let mut record = socket_record(src, dst, protocol, flow, RecordEvent::End);
    record.state = FlowState::Closed;
    record.to_src.packets = 1;
    record
}

#[test]
fn service_flows_are_judged_at_their_backends_through_the_stages() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("cluster.yaml"), CLUSTER).expect("write");
    std::fs::write(dir.path().join("policies.yaml"), SERVICE_POLICIES).expect("write");
    let (inventory, _reload) = Inventory::standalone(vec![dir.path().to_owned()], InventoryConfig::default());
    assert!(inventory.snapshot().synced(), "{:?}", inventory.status());
    // Conntrack as plain values: the DNAT of one DNS query.
    let table = ConntrackTable::default().with("198.18.0.10:40000", "198.19.0.10:53", PROTO_UDP, Ok("198.18.0.54:53"));
    let mut enricher =
        Enricher::with_backends(Backends::new(Some(Box::new(table)), Vec::new(), ServiceCounters::default()));
    let mut stage = JudgeStage::new(StageSetup {
        inventory: inventory.clone(),
        config: ObserverConfig::default(),
        findings_log: None,
        node: None,
        health: observer::health::Health::default(),
        metrics: None,
        edges: observer::metrics::flows::EdgeOf::new(Default::default()),
    })
    .expect("judge stage");
    let mut records = vec![
        // Conntrack names the backend.
        record("198.18.0.10:40000", "198.19.0.10:53", PROTO_UDP, 1),
        // No entry: both kube-dns pods allow it.
        record("198.18.0.10:40001", "198.19.0.10:53", PROTO_UDP, 2),
        // No entry: one web backend lets the client in, the other nobody.
        record("198.18.0.10:40002", "198.19.0.20:80", PROTO_TCP, 3),
    ];
    let snapshot = inventory.snapshot();
    for record in &mut records {
        enricher.enrich(record, &snapshot);
    }
    stage.judge_batch(&mut records);
    let json: Vec<serde_json::Value> =
        records.iter().map(|record| serde_json::to_value(record).expect("serializes")).collect();

    let by_conntrack = &json[0];
    assert_eq!((&by_conntrack["dst"]["kind"], &by_conntrack["dst"]["pod"]), (&"pod".into(), &"coredns-2".into()));
    assert_eq!(by_conntrack["dst"]["service"], serde_json::json!({"namespace": "kube-system", "name": "kube-dns"}));
    assert_eq!(
        by_conntrack["dst"]["backend"],
        serde_json::json!({"ip": "198.18.0.54", "port": 53, "via": "conntrack"})
    );
    assert_eq!(by_conntrack["verdict"]["verdict"], "allowed", "{}", by_conntrack["verdict"]);
    assert_eq!(by_conntrack["verdict"]["dst_uid"], "uid-coredns-2");
    assert!(by_conntrack["verdict"].get("ambiguous").is_none());

    let agreed = &json[1];
    assert_eq!(agreed["dst"]["kind"], "service");
    assert_eq!(agreed["verdict"]["verdict"], "allowed", "{}", agreed["verdict"]);
    assert!(agreed["verdict"].get("ambiguous").is_none() && agreed["verdict"].get("backends").is_none());

    let ambiguous = &json[2];
    assert_eq!(ambiguous["dst"]["kind"], "service");
    assert_eq!(ambiguous["verdict"]["verdict"], "allowed", "never a guessed gap: {}", ambiguous["verdict"]);
    assert_eq!(ambiguous["verdict"]["ambiguous"], true);
    let verdicts: Vec<(&str, &str)> = ambiguous["verdict"]["backends"]
        .as_array()
        .expect("backends listed")
        .iter()
        .map(|backend| (backend["pod"].as_str().unwrap_or(""), backend["verdict"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(verdicts, [("web-1", "allowed"), ("web-2", "enforcement-gap")]);
    assert_eq!(records[2].verdict.as_ref().map(|verdict| verdict.verdict), Some(VerdictKind::Allowed));
    // The flow log's encoder writes what serde_json does for these records too.
    let mut lines = Vec::new();
    encode::lines(&records, &mut lines);
    let mut expected = Vec::new();
    for record in &records {
        serde_json::to_writer(&mut expected, record).expect("serializes");
        expected.push(b'\n');
    }
    assert_eq!(String::from_utf8_lossy(&lines), String::from_utf8_lossy(&expected));
}
