//! FlowIntents from the API server (the in-process fake, real list and
//! watch) reach the judge through the cluster inventory, as manifests' do in
//! standalone mode: an intent added, changed and deleted by watch, and one
//! changed while its watch was gone (a `410 Gone` relist), each changes what
//! the judge compiles.

mod inventory_support;

use std::time::Duration;

use inventory_support::{FLOW_INTENTS, FakeApi, NAMESPACES, eventually, namespace};
use observer::{
    config::ObserverConfig,
    health::Health,
    inventory::{Inventory, InventoryConfig, Resource},
    judge::stage::{JudgeStage, StageSetup},
    metrics::{Metrics, MetricsConfig, flows::EdgeOf},
    pipeline::{driver::drive, judge::Judging},
};
use serde_json::{Value, json};

/// A FlowIntent `name` in namespace `ai` limiting agents to `rate` new connections a minute.
fn limit(name: &str, rate: u32) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "ai", "uid": format!("uid-fi-{name}"),
            "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
        "spec": {"subject": {"tiers": ["agent"]}, "maxNewConnectionsPerMinute": rate},
    })
}

/// What the judge compiled at its latest rebuild, as its metrics say:
/// (intents loaded, objects left out as invalid).
fn compiled(metrics: &Metrics) -> (u64, u64) {
    let exposition = metrics.encode();
    let gauge = |name: &str| {
        exposition
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {exposition}"))
    };
    (gauge("flow_observer_intents_loaded"), gauge("flow_observer_objects_invalid"))
}

/// The rate of intent `name` in the inventory's latest snapshot.
fn rate(inventory: &Inventory, name: &str) -> Option<u32> {
    let loaded = inventory.snapshot().intents();
    loaded
        .intents
        .iter()
        .find(|intent| intent.metadata.name.as_deref() == Some(name))
        .and_then(|intent| intent.spec.max_new_connections_per_minute)
}

#[tokio::test]
async fn intents_added_changed_deleted_and_relisted_reach_the_judge_through_the_inventory() {
    let api = FakeApi::start().await;
    api.apply(NAMESPACES, namespace("ai"));
    api.apply(FLOW_INTENTS, limit("agents", 120));
    let config = InventoryConfig { publish_interval: Duration::from_millis(50), ..InventoryConfig::default() };
    let (inventory, task) = Inventory::cluster(api.client(), config);
    let task = tokio::spawn(task);
    tokio::time::timeout(Duration::from_secs(10), inventory.ready()).await.expect("synced within 10 s");
    eventually(Duration::from_secs(5), "the listed intent in the snapshot", || rate(&inventory, "agents") == Some(120))
        .await;
    let loaded = inventory.snapshot().intents();
    assert!(loaded.origins.is_empty(), "no file and line for the API server's objects");
    assert_eq!(loaded.intents[0].metadata.managed_fields, None, "trimmed on arrival");
    assert_eq!(inventory.status().resources[&Resource::FlowIntents].objects, 1);

    let health = Health::default();
    let metrics = Metrics::new(MetricsConfig::default(), &health);
    let stage = JudgeStage::new(StageSetup {
        inventory: inventory.clone(),
        config: ObserverConfig::default(),
        findings_log: None,
        node: None,
        health: health.clone(),
        metrics: Some(metrics.clone()),
        edges: EdgeOf::new(Default::default()),
    })
    .expect("judge stage");
    assert_eq!(compiled(&metrics), (1, 0), "compiled from the first snapshot");
    let (records, input) = tokio::sync::mpsc::channel(1);
    let (output, _judged) = tokio::sync::mpsc::channel(1);
    let judge = tokio::spawn(drive(Judging::new(stage), input, Vec::new(), output, health));

    // Added by watch.
    eventually(Duration::from_secs(2), "the intents watch open", || !api.watches(FLOW_INTENTS).is_empty()).await;
    api.apply(FLOW_INTENTS, limit("tools", 30));
    eventually(Duration::from_secs(5), "the added intent compiled", || compiled(&metrics) == (2, 0)).await;
    // Changed by watch: to a rate the judge refuses.
    api.apply(FLOW_INTENTS, limit("tools", 0));
    eventually(Duration::from_secs(5), "the changed intent refused", || compiled(&metrics) == (1, 1)).await;
    assert_eq!(rate(&inventory, "tools"), Some(0));
    // Deleted by watch.
    api.delete(FLOW_INTENTS, limit("tools", 0));
    eventually(Duration::from_secs(5), "the deleted intent gone", || compiled(&metrics) == (1, 0)).await;
    assert_eq!(rate(&inventory, "tools"), None);

    // Changed while the watch missed it: the `410 Gone` relist finds it.
    let lists = api.lists(FLOW_INTENTS);
    api.apply_unseen(FLOW_INTENTS, limit("agents", 0));
    api.apply_unseen(FLOW_INTENTS, limit("models", 60));
    api.expire(FLOW_INTENTS);
    eventually(Duration::from_secs(10), "the relisted intents compiled", || compiled(&metrics) == (1, 1)).await;
    assert_eq!((rate(&inventory, "agents"), rate(&inventory, "models")), (Some(0), Some(60)));
    assert_eq!(api.lists(FLOW_INTENTS), lists + 1, "one relist");
    assert_eq!(inventory.status().resources[&Resource::FlowIntents].errors, 1, "the 410 is counted");

    drop(records);
    judge.await.expect("the judge stops when its input closes");
    task.abort();
}
