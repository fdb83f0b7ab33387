//! The metrics meter as a consumer of the judged stream.
//!
//! In: each judged batch, read after the judge and before the flow log.
//! Out: its traffic, flows and verdicts counted on workload-level edges
//! ([`FlowMeter`]). It reads the stream and is no link in it: it never holds
//! a batch back and cannot drop one.

use super::driver::Consumer;
use crate::{flow::FlowRecord, metrics::FlowMeter};

impl Consumer for FlowMeter {
    fn consume(&mut self, batch: &[FlowRecord]) {
        self.record_batch(batch);
    }
}
