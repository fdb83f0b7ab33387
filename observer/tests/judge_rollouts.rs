//! Spikes after a rollout through the real stages, without a kernel: a standalone inventory whose
//! manifests roll one model server out (a new `pod-template-hash`, ReplicaSet and image), the
//! judge stage running as the daemon runs it, and the findings log it writes. The same tenfold
//! step on two edges: the rolled-out one's finding names the rollout and was measured against the
//! old revision's baseline, the other's does neither.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use observer::{
    backends::Backends,
    capture::{build_record, clock::Clock, table::Emission},
    config::ObserverConfig,
    enrich::Enricher,
    findings::FindingsWriter,
    flow::{FlowRecord, FlowState, RecordEvent},
    inventory::{Inventory, InventoryConfig},
    judge::stage::{JudgeStage, StageSetup},
    metrics::{Metrics, MetricsConfig, services::ServiceCounters},
};
use observer_common::{FAMILY_IPV4, FlowKey, FlowStats, INITIATOR_LOCAL, PROTO_TCP};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// The client, and model servers `model-a` and `model-b` of Deployments at `hash_a` and 7d9f.
fn cluster(hash_a: &str, image_a: &str) -> String {
    let model = |name: &str, ip: &str, hash: &str, image: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}-{hash}-x, namespace: ai, uid: uid-{name}, \
             labels: {{app: {name}, pod-template-hash: \"{hash}\"}}, ownerReferences: [{{apiVersion: apps/v1, \
             kind: ReplicaSet, name: {name}-{hash}, uid: uid-rs-{name}-{hash}, controller: true}}]}}\n\
             spec: {{nodeName: node-1, containers: [{{name: main, image: \"{image}\"}}]}}\n\
             status: {{phase: Running, podIP: {ip}}}\n---\n"
        )
    };
    let mut text = "apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: ai, uid: uid-client}\n\
                    spec: {nodeName: node-1, containers: [{name: c, image: i}]}\n\
                    status: {phase: Running, podIP: 198.18.0.10}\n---\n"
        .to_owned();
    text += &model("model-a", "198.18.0.20", hash_a, image_a);
    text += &model("model-b", "198.18.0.30", "7d9f", "registry.example/model-b:1");
    text
}

/// The client's first record of connection `flow` to `dst`:8080 at `at`.
fn record(dst: &str, flow: u64, at: SystemTime) -> FlowRecord {
    let key = FlowKey { protocol: PROTO_TCP, family: FAMILY_IPV4, ..FlowKey::default() };
    let stats = FlowStats { initiator: INITIATOR_LOCAL, ..FlowStats::default() };
    let emission = Emission { key, stats, event: RecordEvent::End, state: FlowState::Closed, flow, reported: None };
    let mut record = build_record(&emission, at, &Clock::new(), None, &Arc::from("node-1"));
    (record.src.ip, record.src.port) = ("198.18.0.10".parse().expect("ip"), Some(40_000));
    (record.dst.ip, record.dst.port) = (dst.parse().expect("ip"), Some(8080));
    (record.time, record.first_seen, record.last_seen) = (at, at, at);
    record.to_src.packets = 1;
    record.progress.first = true;
    record
}

/// The last line of each spike finding, by destination workload.
fn spikes(path: &Path) -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(path).expect("findings log");
    let mut last: Vec<(String, Value)> = Vec::new();
    for line in text.lines().map(|line| serde_json::from_str::<Value>(line).expect("JSON line")) {
        if line["kind"] == "spike" {
            let name = line["destination"]["workload"]["name"].as_str().unwrap_or("?").to_owned();
            last.retain(|(held, _)| *held != name);
            last.push((name, line));
        }
    }
    last.sort_by(|a, b| a.0.cmp(&b.0));
    last
}

#[tokio::test]
async fn a_spike_after_a_rollout_names_it_and_is_measured_against_the_old_revision() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifests");
    std::fs::write(manifests.join("cluster.yaml"), cluster("7d9f", "registry.example/model-a:1")).expect("write");
    let config = InventoryConfig { reload_interval: Duration::from_millis(20), ..InventoryConfig::default() };
    let (inventory, reload) = Inventory::standalone(vec![manifests.clone()], config);
    let reload = tokio::spawn(reload);
    let mut observer_config = ObserverConfig::default();
    observer_config.spikes.window_seconds = 1;
    observer_config.spikes.warmup_windows = 4;
    // The step is checked at each connection: flagged at the fortieth, not before.
    observer_config.spikes.min_connections = 40;
    observer_config.spikes.seasonal_buckets = 0;
    observer_config.spikes.cooldown_windows = 600;
    observer_config.spikes.after_rollout_seconds = 120;
    let findings = dir.path().join("findings.jsonl");
    let health = observer::health::Health::default();
    let metrics = Metrics::new(MetricsConfig::default(), &health);
    let stage = JudgeStage::new(StageSetup {
        inventory: inventory.clone(),
        config: observer_config,
        findings_log: Some(FindingsWriter::open(&findings).expect("findings log")),
        node: None,
        health: health.clone(),
        metrics: Some(metrics.clone()),
        edges: observer::metrics::flows::EdgeOf::new(Default::default()),
    })
    .expect("judge stage");
    let (input, input_rx) = mpsc::channel(16);
    let (output_tx, mut output) = mpsc::channel(16);
    let running = tokio::spawn(observer::pipeline::driver::drive(
        observer::pipeline::judge::Judging::new(stage),
        input_rx,
        Vec::new(),
        output_tx,
        health,
    ));
    let mut enricher = Enricher::with_backends(Backends::new(None, Vec::new(), ServiceCounters::default()));
    let mut flow = 0;
    let mut send = async |records: Vec<FlowRecord>| {
        let snapshot = inventory.snapshot();
        let mut records = records;
        for record in &mut records {
            enricher.enrich(record, &snapshot);
        }
        input.send(records).await.expect("stage running");
        output.recv().await.expect("judged")
    };

    // Ten one-second windows of two connections a second on both edges, ending now.
    let start = SystemTime::now() - Duration::from_secs(10);
    for second in 0..10 {
        let at = start + Duration::from_secs(second);
        let mut batch = Vec::new();
        for dst in ["198.18.0.20", "198.18.0.30"] {
            for _ in 0..2 {
                flow += 1;
                batch.push(record(dst, flow, at));
            }
        }
        let judged = send(batch).await;
        assert!(judged.iter().all(|record| record.verdict.is_some()), "judged: {judged:?}");
    }
    // model-a rolls out; the judge recompiles with the inventory that knows it.
    std::fs::write(manifests.join("cluster.yaml"), cluster("5c8d", "registry.example/model-a:2")).expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !metrics.encode().lines().any(|line| line == "flow_observer_workload_rollouts_total 1") {
        assert!(Instant::now() < deadline, "no rollout within 10 s: {:?}", inventory.status());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The same step on both edges: forty connections in one second.
    let at = SystemTime::now();
    let mut batch = Vec::new();
    for dst in ["198.18.0.20", "198.18.0.30"] {
        for _ in 0..40 {
            flow += 1;
            batch.push(record(dst, flow, at));
        }
    }
    send(batch).await;
    drop(input);
    running.await.expect("the stage flushes its findings and stops");
    reload.abort();

    let found = spikes(&findings);
    let names: Vec<&str> = found.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["model-a", "model-b"], "one spike per edge: {found:?}");
    let (rolled, steady) = (&found[0].1, &found[1].1);
    let after = &rolled["evidence"]["after_rollout"];
    let rolled_at = after["at"].as_str().expect("at").to_owned();
    assert_eq!(
        after,
        &json!({"end": "destination", "namespace": "ai", "workload": {"kind": "Deployment", "name": "model-a"},
            "from": "7d9f", "to": "5c8d", "images": ["registry.example/model-a:2"], "at": rolled_at}),
        "{rolled}"
    );
    assert!(rolled_at.as_str() <= observer::flow::rfc3339(at).as_str(), "the rollout came before the step");
    for (finding, baseline) in [(rolled, "previous-revision"), (steady, "own")] {
        let spike = &finding["evidence"]["spike"];
        assert_eq!((spike["observed"].as_u64(), spike["baseline"].as_str()), (Some(40), Some(baseline)), "{finding}");
        // Both measured against two a second (less once an idle second counts as zero).
        assert!(spike["expected"].as_f64().is_some_and(|expected| expected <= 2.0 + 1e-3), "{finding}");
    }
    assert!(steady["evidence"].get("after_rollout").is_none(), "no rollout, no after_rollout: {steady}");
}
