//! The log files' health as metrics, read at scrape time.
//!
//! In: each sink's [`SinkHealth`], once the sinks are opened. Out:
//! `flow_observer_sink_up{sink}`, `sink_lines_written_total{sink}`,
//! `sink_lines_dropped_total{sink}` and `sink_rotations_total{sink}`; the
//! flow log's drops also as `records_dropped_total{stage="export"}` (see
//! [`super::capture`]).

use std::sync::{Arc, OnceLock};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use crate::export::sink::{SinkHealth, SinkName};

/// The opened sinks, shared with `/healthz`.
pub type Sinks = Arc<OnceLock<Vec<Arc<SinkHealth>>>>;

/// Encodes the sinks' state on every scrape.
#[derive(Debug)]
pub struct SinkCollector {
    sinks: Sinks,
}

impl SinkCollector {
    /// A collector of whatever sinks are attached to `sinks` later.
    pub fn new(sinks: Sinks) -> Self {
        Self { sinks }
    }
}

/// Flow records the flow log could not write; `None` before it is opened.
pub fn flow_log_dropped(sinks: &Sinks) -> Option<u64> {
    sinks.get()?.iter().find(|sink| sink.name() == SinkName::FlowLog).map(|sink| sink.dropped())
}

fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    (name, help, kind): (&str, &str, MetricType),
    sinks: &[Arc<SinkHealth>],
    value: impl Fn(&SinkHealth) -> M,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for sink in sinks {
        value(sink).encode(metric.encode_family(&[("sink", sink.name().as_str())])?)?;
    }
    Ok(())
}

impl Collector for SinkCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(sinks) = self.sinks.get() else { return Ok(()) };
        let e = &mut encoder;
        family(
            e,
            ("sink_up", "1 while the log file is written, 0 from a failed write until one succeeds", MetricType::Gauge),
            sinks,
            |sink| ConstGauge::new(i64::from(sink.is_up())),
        )?;
        family(e, ("sink_lines_written", "Lines written to the log file", MetricType::Counter), sinks, |sink| {
            ConstCounter::new(sink.written())
        })?;
        family(
            e,
            ("sink_lines_dropped", "Lines the log file could not take (disk full, I/O error)", MetricType::Counter),
            sinks,
            |sink| ConstCounter::new(sink.dropped()),
        )?;
        family(
            e,
            ("sink_rotations", "Times the log file was rotated for its size", MetricType::Counter),
            sinks,
            |sink| ConstCounter::new(sink.rotations()),
        )
    }
}
