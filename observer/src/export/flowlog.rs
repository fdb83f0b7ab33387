//! The JSON flow log.
//!
//! In: batches of [`FlowRecord`]s, the opened [`LineSink`] (stdout or a
//! file) and the drop counters. Out: one JSON object per line, each batch
//! written as soon as it comes, so a reader (`tail -f`, a log shipper) sees
//! records as soon as they are made; records that cannot be written are
//! counted by the sink and, by event, as dropped at `export`.

use tokio::sync::mpsc;

use super::{encode, sink::LineSink};
use crate::{
    flow::FlowRecord,
    health::{Health, StageName},
};

/// Writes every batch received until the channel closes, on a blocking
/// thread (a slow disk never stalls the runtime); returns the number of
/// records encoded (written or counted as dropped).
pub async fn write(
    sink: LineSink,
    batches: mpsc::Receiver<Vec<FlowRecord>>,
    health: Health,
) -> Result<u64, tokio::task::JoinError> {
    tokio::task::spawn_blocking(move || write_blocking(sink, batches, &health)).await
}

fn write_blocking(mut sink: LineSink, mut batches: mpsc::Receiver<Vec<FlowRecord>>, health: &Health) -> u64 {
    let mut encoded = 0u64;
    // A batch's lines are serialized together and written in one call.
    let mut lines = Vec::with_capacity(1 << 16);
    while let Some(batch) = batches.blocking_recv() {
        lines.clear();
        let count = encode::lines(&batch, &mut lines);
        let dropped = sink.write(&lines, count);
        if dropped > 0 {
            // The sink drops from the failed write on: the batch's last lines.
            let from = batch.len().saturating_sub(usize::try_from(dropped).unwrap_or(usize::MAX));
            health.drops().count(StageName::Export, &batch[from..]);
        }
        encoded += count;
    }
    sink.close();
    encoded
}
