//! Issue 24 item 4 end to end: a spike after a rollout says so. On a node lab (the observer in the
//! node's network namespace, standalone manifests reloaded as a cluster's objects change), an
//! agent calls two model servers at a steady rate; one of them rolls out (its pod's
//! `pod-template-hash`, ReplicaSet and image change, as a Deployment's new ReplicaSet would bring
//! them); then both edges take the same tenfold step. Exactly two spike findings: the rolled-out
//! edge's names the rollout (`evidence.after_rollout`, measured against the old revision's
//! baseline), the other's does not. Spike windows of one second compress the detector's time.
//!
//! Root only; one thread:
//! `cargo test -p observer-tests --test rollouts -- --test-threads=1`

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use observer_tests::{
    Endpoint, Lab, ObserverProcess, Pod, TcpClientOpts, TcpServerOpts,
    manifests::{self, PodSpec},
    root_or_skip,
};
use serde_json::{Value, json};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_lab-traffic");
const OLD_HASH: &str = "7d9f8c6b5";
const NEW_HASH: &str = "5c8d7b4a9";

/// A model server pod of Deployment `deployment` at revision `hash`, running `image` and a proxy.
fn model(pod: &Pod, deployment: &str, hash: &str, image: &str) -> Vec<Value> {
    let replicaset = format!("{deployment}-{hash}");
    let name = format!("{replicaset}-x1");
    let labels = vec![("app", deployment), ("pod-template-hash", hash)];
    let spec =
        PodSpec { pod, namespace: "ai", name: &name, labels, owner: Some(("ReplicaSet", &replicaset)), ports: vec![] };
    let mut object = manifests::pod(&spec);
    object["spec"]["containers"][0]["image"] = json!(image);
    object["spec"]["containers"]
        .as_array_mut()
        .expect("containers")
        .push(json!({"name": "proxy", "image": "registry.example/proxy:2"}));
    vec![manifests::workload("ReplicaSet", "ai", &replicaset, Some(("Deployment", deployment))), object]
}

/// Writes the cluster with model-a at `hash` and `image`, aside then renamed, so the observer
/// never reads half a file.
fn write_cluster(lab: &Lab, dir: &Path, hash: &str, image: &str) {
    let (agent, model_a, model_b) = (lab.pod(0), lab.pod(1), lab.pod(2));
    let mut items = vec![
        manifests::namespace("ai", &[("kubernetes.io/metadata.name", "ai")]),
        manifests::node(lab.node().expect("node")),
        manifests::pod(&PodSpec {
            pod: agent,
            namespace: "ai",
            name: "agent-0",
            labels: vec![("app", "agent")],
            owner: None,
            ports: vec![],
        }),
    ];
    items.extend(model(model_a, "model-a", hash, image));
    items.extend(model(model_b, "model-b", OLD_HASH, "registry.example/model-b:1"));
    let tmp = dir.join("cluster.json.tmp");
    manifests::write_list(&tmp, items).expect("manifests");
    std::fs::rename(&tmp, dir.join("manifests").join("cluster.json")).expect("manifests in place");
}

/// The last version of each spike finding in the findings log, by destination workload.
fn spikes(path: &Path) -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut last: Vec<(String, Value)> = Vec::new();
    for line in text.lines() {
        let finding: Value = serde_json::from_str(line).expect("finding is JSON");
        if finding["kind"] != "spike" {
            continue;
        }
        let workload = finding["destination"]["workload"]["name"].as_str().unwrap_or("?").to_owned();
        last.retain(|(name, _)| *name != workload);
        last.push((workload, finding));
    }
    last.sort_by(|a, b| a.0.cmp(&b.0));
    last
}

fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(&format!("{name} ")))
        .and_then(|line| line.rsplit_once(' ')?.1.parse().ok())
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_spike_after_a_rollout_names_it_and_the_same_step_without_one_does_not() {
    if !root_or_skip("a_spike_after_a_rollout_names_it_and_the_same_step_without_one_does_not") {
        return;
    }
    let lab =
        Lab::builder().pods(3).ipv6(false).internet(false).node(true).traffic_bin(TRAFFIC).build().expect("node lab");
    let (agent, model_a, model_b) = (lab.pod(0), lab.pod(1), lab.pod(2));
    let dir = TempDir(std::env::temp_dir().join(format!("rollouts-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(dir.0.join("manifests")).expect("manifest dir");
    write_cluster(&lab, &dir.0, OLD_HASH, "registry.example/model-a:1");
    // One-second windows, four to warm up; a lower sensitivity than the default so that the step
    // is a spike whatever second the lab's timing puts it in; one spike per edge at most.
    let config = dir.0.join("config.yaml");
    std::fs::write(
        &config,
        "spikes: {window_seconds: 1, warmup_windows: 4, min_connections: 10, sensitivity: 2, seasonal_buckets: 0, \
         cooldown_windows: 600, after_rollout_seconds: 120}\nfindings: {flush_interval_seconds: 1}\n",
    )
    .expect("config");
    let findings = dir.0.join("findings.jsonl");
    let _a = model_a
        .tcp_server(model_a.addr_v4(8080), &TcpServerOpts { reply: 20, ..Default::default() })
        .expect("model-a serves");
    let _b = model_b
        .tcp_server(model_b.addr_v4(8080), &TcpServerOpts { reply: 20, ..Default::default() })
        .expect("model-b serves");
    let arg = |path: &Path| path.display().to_string();
    let (manifests_arg, config_arg, findings_arg) = (arg(&dir.0.join("manifests")), arg(&config), arg(&findings));
    let observer = ObserverProcess::start_in_netns(
        &lab.node_netns_path(),
        &[
            "--poll-interval",
            "200ms",
            "--manifests",
            &manifests_arg,
            "--manifest-reload-interval",
            "0.2",
            "--config",
            &config_arg,
            "--findings-log",
            &findings_arg,
        ],
    )
    .expect("observer starts in the node namespace");

    let calls = |count: u64| TcpClientOpts { count, send: 10, expect: 20, ..Default::default() };
    // The baseline of both edges: two connections a second each, for eight one-second windows.
    for _ in 0..8 {
        for server in [model_a, model_b] {
            assert_eq!(agent.tcp_client(server.addr_v4(8080), &calls(2)).expect("baseline").complete, 2);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    // model-a rolls out: its pod now belongs to a new ReplicaSet with a new image. Wait until the
    // judge has taken the inventory that knows it (it sets the counter when it recompiles).
    write_cluster(&lab, &dir.0, NEW_HASH, "registry.example/model-a:2");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = observer.get("/metrics").expect("metrics from the node namespace").1;
        if metric(&metrics, "flow_observer_workload_rollouts_total") == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "no rollout seen within 10 s:\n{metrics}\n{}", observer.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The same step on both edges: forty connections in about a second, twenty times the baseline.
    for server in [model_a, model_b] {
        assert_eq!(agent.tcp_client(server.addr_v4(8080), &calls(40)).expect("step").complete, 40);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while spikes(&findings).len() < 2 {
        assert!(Instant::now() < deadline, "two spikes within 15 s: {:?}\n{}", spikes(&findings), observer.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let run = observer.stop().expect("observer stops");

    let found = spikes(&findings);
    let names: Vec<&str> = found.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["model-a", "model-b"], "exactly one spike per edge: {found:?}");
    let (rolled, steady) = (&found[0].1, &found[1].1);
    for finding in [rolled, steady] {
        assert_eq!(finding["source"]["pod"], "agent-0");
        assert_eq!(finding["port"], 8080);
        assert_eq!(finding["rule"], "spike:new-connections", "{finding}");
    }
    let after = &rolled["evidence"]["after_rollout"];
    let at = after["at"].as_str().expect("at").to_owned();
    assert_eq!(
        after,
        &json!({"end": "destination", "namespace": "ai", "workload": {"kind": "Deployment", "name": "model-a"},
            "from": OLD_HASH, "to": NEW_HASH, "images": ["registry.example/model-a:2", "registry.example/proxy:2"],
            "at": at}),
        "{rolled}"
    );
    assert!(at.len() == 24 && at.ends_with('Z'), "RFC 3339 in UTC: {at}");
    assert_eq!(rolled["evidence"]["spike"]["baseline"], "previous-revision", "its first seconds: the old baseline");
    assert_eq!(rolled["destination"]["workload"], json!({"kind": "Deployment", "name": "model-a"}));
    assert!(steady["evidence"].get("after_rollout").is_none(), "no rollout, no after_rollout: {steady}");
    assert_eq!(steady["evidence"]["spike"]["baseline"], "own");
    assert_eq!(metric(&run.metrics, "flow_observer_workload_rollouts_total"), Some(1.0));
}
