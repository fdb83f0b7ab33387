//! The JSON flow log.
//!
//! In: batches of [`FlowRecord`]s and the opened [`LineSink`] (stdout or a
//! file). Out: one JSON object per line, each batch written as soon as it
//! comes, so a reader (`tail -f`, a log shipper) sees records as soon as they
//! are made; records that cannot be written are counted by the sink.

use tokio::sync::mpsc;

use super::{encode, sink::LineSink};
use crate::flow::FlowRecord;

/// Writes every batch received until the channel closes, on a blocking
/// thread (a slow disk never stalls the runtime); returns the number of
/// records encoded (written or counted as dropped by the sink).
pub async fn write(sink: LineSink, batches: mpsc::Receiver<Vec<FlowRecord>>) -> Result<u64, tokio::task::JoinError> {
    tokio::task::spawn_blocking(move || write_blocking(sink, batches)).await
}

fn write_blocking(mut sink: LineSink, mut batches: mpsc::Receiver<Vec<FlowRecord>>) -> u64 {
    let mut encoded = 0u64;
    // A batch's lines are serialized together and written in one call.
    let mut lines = Vec::with_capacity(1 << 16);
    while let Some(batch) = batches.blocking_recv() {
        lines.clear();
        let count = encode::lines(&batch, &mut lines);
        sink.write(&lines, count);
        encoded += count;
    }
    sink.close();
    encoded
}
