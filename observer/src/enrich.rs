//! Enrich: says who is at each end of a flow.
//!
//! In: batches of flow records from capture. Out: the same records with each
//! end's pod, namespace, workload and configured labels (or service, node,
//! `world`, `host`) filled in from the inventory as it was when the flow
//! started, on a bounded channel; a full channel drops the batch and counts it.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::mpsc;

use crate::{
    flow::{FlowRecord, LocalEnd},
    inventory::Resolver,
};

/// Counters of the enrich stage.
#[derive(Debug, Default)]
pub struct EnrichHealth {
    /// Records enriched and passed on.
    pub records: AtomicU64,
    /// Records dropped because the next stage was full.
    pub records_dropped: AtomicU64,
}

/// Fills in both ends of one record.
pub fn enrich(record: &mut FlowRecord, resolver: &Resolver) {
    let at = record.first_seen;
    let path = record.cgroup.path.as_deref();
    let (local, remote) = match record.local {
        LocalEnd::Src => (&mut record.src, &mut record.dst),
        LocalEnd::Dst => (&mut record.dst, &mut record.src),
    };
    local.endpoint = Some(resolver.resolve_local(path, local.ip, at));
    remote.endpoint = Some(resolver.resolve_remote(remote.ip, at));
}

/// Runs the stage until `input` closes. Without a resolver (no inventory),
/// records pass through unchanged.
pub async fn run(
    resolver: Option<Resolver>,
    mut input: mpsc::Receiver<Vec<FlowRecord>>,
    output: mpsc::Sender<Vec<FlowRecord>>,
    health: Arc<EnrichHealth>,
) {
    while let Some(mut batch) = input.recv().await {
        if let Some(resolver) = &resolver {
            for record in &mut batch {
                enrich(record, resolver);
            }
        }
        let count = batch.len() as u64;
        match output.try_send(batch) {
            Ok(()) => {
                health.records.fetch_add(count, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                health.records_dropped.fetch_add(count, Ordering::Relaxed);
                tracing::warn!(records = count, "export is not keeping up: records dropped after enrichment");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}
