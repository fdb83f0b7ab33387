//! Standalone-mode enrichment on the real kernel: lab pods described by
//! manifests (their real UIDs and IPs), traffic between them and to the
//! internet, and the flow log must name the pods and workloads at both ends.
//! Root only; one thread.

use std::time::Duration;

use observer_tests::{
    Endpoint, INTERNET_HOST_V4, Lab, ObserverProcess, TcpClientOpts, TcpServerOpts,
    manifests::{self, PodSpec},
    root_or_skip,
};
use serde_json::{Value, json};

fn end(records: &[Value], cgroup_id: u64, dst_port: u64) -> &Value {
    let matching: Vec<&Value> = records
        .iter()
        .filter(|record| record["event"] == "end" && record["cgroup"]["id"].as_u64() == Some(cgroup_id))
        .filter(|record| record["dst"]["port"].as_u64() == Some(dst_port))
        .collect();
    assert_eq!(matching.len(), 1, "one flow from cgroup {cgroup_id} to port {dst_port}: {matching:#?}");
    matching[0]
}

/// The enrichment fields of one end, without address and port.
fn who(end: &Value) -> Value {
    let mut end = end.clone();
    if let Some(map) = end.as_object_mut() {
        map.remove("ip");
        map.remove("port");
    }
    end
}

#[test]
fn flow_log_names_pods_and_workloads_at_both_ends() {
    if !root_or_skip("flow_log_names_pods_and_workloads_at_both_ends") {
        return;
    }
    let lab = Lab::builder().pods(2).ipv6(false).internet(true).build().expect("lab");
    let (web, db) = (lab.pod(0), lab.pod(1));
    let dir = std::env::temp_dir().join(format!("enrichment-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("manifest dir");
    manifests::write_list(
        &dir.join("shop.json"),
        vec![
            manifests::namespace("shop", &[("team", "storefront")]),
            manifests::workload("Deployment", "shop", "web", None),
            manifests::workload("ReplicaSet", "shop", "web-7d9f", Some(("Deployment", "web"))),
            manifests::pod(&PodSpec {
                pod: web,
                namespace: "shop",
                name: "web-7d9f-x2x4q",
                labels: vec![("app", "web"), ("pod-template-hash", "7d9f")],
                owner: Some(("ReplicaSet", "web-7d9f")),
                ports: vec![],
            }),
            manifests::pod(&PodSpec {
                pod: db,
                namespace: "shop",
                name: "db-0",
                labels: vec![("app", "db")],
                owner: Some(("StatefulSet", "db")),
                ports: vec![("postgres", 5432)],
            }),
        ],
    )
    .expect("manifests");
    let internet = lab.internet().expect("internet");
    let _db = db.tcp_server(db.addr_v4(5432), &TcpServerOpts { reply: 100, ..Default::default() }).expect("server");
    let _api = internet
        .tcp_server((INTERNET_HOST_V4, 443).into(), &TcpServerOpts { reply: 100, ..Default::default() })
        .expect("internet server");
    let manifests_arg = dir.to_string_lossy().into_owned();
    let observer =
        ObserverProcess::start(&["--poll-interval", "200ms", "--manifests", &manifests_arg]).expect("observer starts");
    let client = TcpClientOpts { send: 10, expect: 100, ..Default::default() };
    assert_eq!(web.tcp_client(db.addr_v4(5432), &client).expect("to db").complete, 1);
    assert_eq!(web.tcp_client((INTERNET_HOST_V4, 443).into(), &client).expect("to internet").complete, 1);
    // Three flows end: web's two, and the one seen at db's socket.
    let ended = |records: &[Value], cgroup: u64| {
        records.iter().filter(|record| record["event"] == "end" && record["cgroup"]["id"] == cgroup).count()
    };
    observer.wait_for_records(Duration::from_secs(30), |records| {
        ended(records, web.cgroup_id()) >= 2 && ended(records, db.cgroup_id()) >= 1
    });
    let run = observer.stop().expect("observer stops");
    std::fs::remove_dir_all(&dir).expect("cleanup");

    let web_end = json!({
        "kind": "pod", "namespace": "shop", "pod": "web-7d9f-x2x4q", "uid": web.uid(), "node": "lab-node",
        "workload": {"kind": "Deployment", "name": "web"}, "labels": {"app": "web"},
    });
    let db_end = json!({
        "kind": "pod", "namespace": "shop", "pod": "db-0", "uid": db.uid(), "node": "lab-node",
        "workload": {"kind": "StatefulSet", "name": "db"}, "labels": {"app": "db"},
    });
    // Seen from the client's socket: local end by cgroup, remote end by IP.
    let from_web = end(&run.records, web.cgroup_id(), 5432);
    assert_eq!((who(&from_web["src"]), who(&from_web["dst"])), (web_end.clone(), db_end.clone()));
    // Seen from the server's socket: the same two pods, resolved the other way round.
    let at_db = end(&run.records, db.cgroup_id(), 5432);
    assert_eq!(at_db["local"], "dst");
    assert_eq!((who(&at_db["src"]), who(&at_db["dst"])), (web_end.clone(), db_end));
    // Egress to the internet: the remote end is the world, reached by
    // address without resolving a name (direct-IP).
    let egress = end(&run.records, web.cgroup_id(), 443);
    assert_eq!(
        (who(&egress["src"]), who(&egress["dst"])),
        (web_end, json!({"kind": "world", "dns": {"resolved": false}}))
    );
}
