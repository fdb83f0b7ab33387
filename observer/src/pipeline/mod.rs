//! The pipeline: the path of a flow record through the daemon, wired in one
//! place.
//!
//! ```text
//! capture ──▶ enrich ──▶ judge ──▶ export (flow log)
//!                          │
//!                          └──▷ metrics meter (reads the judged stream)
//! ```
//!
//! In: capture's batches (through the sink [`start`] returns), the
//! inventory's resolver, the DNS view, the judge stage (none without an
//! inventory), the metrics and the opened flow log. Out: every record
//! enriched, judged, counted on its edge and written, or dropped and counted
//! by the stage that dropped it and its event ([`crate::health::Drops`]).
//!
//! Each stage is a file here run by one driver ([`driver::drive`]): receive
//! a batch, process it, hand it on without waiting (a full hand-off drops
//! and counts). Data flows one way; the metrics meter is a consumer of the
//! judged stream ([`driver::Consumer`]), never a link that could hold it
//! back. To add a stage: a file with a [`driver::Stage`] implementation, a
//! [`crate::health::StageName`] for its drops, and a channel in [`start`].

pub mod driver;
pub mod enrich;
pub mod judge;
pub mod meter;

use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    backends::Backends,
    dns::DnsView,
    export::{flowlog, sink::LineSink},
    flow::FlowRecord,
    health::{Health, StageName},
    inventory::{Inventory, Resolver},
    judge::stage::JudgeStage,
    metrics::{FlowMeter, InventoryState, Metrics, flows::EdgeOf},
    node::NodeAddresses,
};
use driver::{Batch, Consumer, Handed, Handoff, drive};

/// Batches a stage may queue for the next one before dropping.
pub const STAGE_CAPACITY: usize = 1024;

/// What the pipeline is made of.
pub struct Stages {
    /// Where drops are counted and readiness kept.
    pub health: Health,
    /// Where the meter counts.
    pub metrics: Metrics,
    /// The edge labels of the meter (the judge's spikes use the same).
    pub edges: EdgeOf,
    /// The inventory's resolver; `None` without an inventory.
    pub resolver: Option<Resolver>,
    /// The node's addresses, for enrichment.
    pub node: NodeAddresses,
    /// The DNS names pods resolved.
    pub dns: Option<DnsView>,
    /// Service flows to their backends.
    pub backends: Backends,
    /// The judge; `None` without an inventory (records pass unjudged).
    pub judge: Option<JudgeStage>,
    /// The flow log.
    pub flow_log: LineSink,
    /// Batches each stage may queue for the next ([`STAGE_CAPACITY`] by default).
    pub queue_batches: usize,
}

/// Why the pipeline did not end cleanly.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A stage's task panicked.
    #[error("the {stage} stage panicked")]
    Panicked {
        /// Which.
        stage: &'static str,
        /// The panic.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// The running stages after capture.
pub struct Running {
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    writer: JoinHandle<Result<u64, tokio::task::JoinError>>,
}

impl Running {
    /// Waits for every stage to finish (capture has stopped and dropped its
    /// sink); returns the records the flow log encoded.
    pub async fn join(self) -> Result<u64, PipelineError> {
        for (stage, task) in self.tasks {
            task.await.map_err(|source| PipelineError::Panicked { stage, source })?;
        }
        let panicked = |source| PipelineError::Panicked { stage: "export", source };
        self.writer.await.map_err(panicked)?.map_err(panicked)
    }
}

/// Starts every stage after capture; returns capture's sink (true when the
/// batch went on, false when it was dropped and counted) and the running
/// stages.
pub fn start(stages: Stages) -> (impl FnMut(Vec<FlowRecord>) -> bool + Send + 'static, Running) {
    let Stages { health, metrics, edges, resolver, node, dns, backends, judge, flow_log, queue_batches } = stages;
    let queue = queue_batches.max(1);
    let (captured_tx, captured_rx) = mpsc::channel::<Batch>(queue);
    let (enriched_tx, enriched_rx) = mpsc::channel::<Batch>(queue);
    let (judged_tx, judged_rx) = mpsc::channel::<Batch>(queue);
    let enrich = enrich::EnrichStage::new(resolver, node, dns, backends);
    let enricher = tokio::spawn(drive(enrich, captured_rx, Vec::new(), enriched_tx, health.clone()));
    let meter: Box<dyn Consumer> = Box::new(FlowMeter::new(metrics, edges));
    let judge = match judge {
        Some(stage) => {
            tokio::spawn(drive(judge::Judging::new(stage), enriched_rx, vec![meter], judged_tx, health.clone()))
        }
        None => tokio::spawn(drive(judge::PassThrough, enriched_rx, vec![meter], judged_tx, health.clone())),
    };
    let writer = tokio::spawn(flowlog::write(flow_log, judged_rx, health.clone()));
    let mut handoff = Handoff::new(StageName::Capture, captured_tx, health);
    let sink = move |batch| handoff.hand_on(batch) == Handed::On;
    (sink, Running { tasks: vec![("enrich", enricher), ("judge", judge)], writer })
}

/// Publishes the inventory's status every 5 seconds (staleness changes
/// without events) to the metrics' gauges and the daemon's readiness, until
/// `shutdown` turns true. `/readyz` waits for the inventory from the call on.
pub fn follow_inventory(
    inventory: Inventory,
    metrics: Metrics,
    health: Health,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    health.expect_inventory();
    async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            let state = InventoryState::from(&inventory.status());
            metrics.set_inventory(&state);
            health.set_inventory(state.synced, state.stale);
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::{inventory::InventoryConfig, metrics::MetricsConfig};

    #[tokio::test]
    async fn the_inventory_status_reaches_the_gauges_and_readiness() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ns.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n")
            .expect("write");
        let config = InventoryConfig { reload_interval: Duration::from_millis(20), ..InventoryConfig::default() };
        let (inventory, reload) = Inventory::standalone(vec![dir.path().to_owned()], config);
        let reload = tokio::spawn(reload);
        let health = Health::default();
        let metrics = Metrics::new(MetricsConfig::default(), &health);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let follow = follow_inventory(inventory, metrics.clone(), health.clone(), stopped);
        // Expected from the call on, before the task first runs.
        assert_eq!(health.inventory_synced(), Some(false));
        let follow = tokio::spawn(follow);
        let deadline = Instant::now() + Duration::from_secs(10);
        while health.inventory_synced() != Some(true) {
            assert!(Instant::now() < deadline, "the inventory never synced");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!health.inventory_stale());
        let text = metrics.encode();
        assert!(text.contains("flow_observer_inventory_synced{source=\"standalone\"} 1\n"), "{text}");
        stop.send(true).expect("stop");
        follow.await.expect("follow");
        reload.abort();
    }
}
