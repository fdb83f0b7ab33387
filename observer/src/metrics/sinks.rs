//! The log files' health as metrics, read at scrape time.
//!
//! In: each sink's [`SinkHealth`] from the daemon's [`Health`], once the
//! sinks are opened. Out: `flow_observer_sink_up{sink}`,
//! `sink_write_blocked_seconds{sink}`, `sink_lines_written_total{sink}`,
//! `sink_lines_dropped_total{sink}` and `sink_rotations_total{sink}`; the
//! flow log's drops are also `records_dropped_total{stage="export"}` (see
//! [`super::capture`]).

use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use crate::{export::sink::SinkHealth, health::Health};

/// Encodes the sinks' state on every scrape.
#[derive(Debug)]
pub struct SinkCollector {
    health: Health,
}

impl SinkCollector {
    /// A collector of whatever sinks are attached to `health` later.
    pub fn new(health: Health) -> Self {
        Self { health }
    }
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
        let sinks = self.health.sinks();
        if sinks.is_empty() {
            return Ok(());
        }
        let e = &mut encoder;
        family(
            e,
            ("sink_up", "1 while the log file is written, 0 from a failed write until one succeeds", MetricType::Gauge),
            sinks,
            |sink| ConstGauge::new(i64::from(sink.is_up())),
        )?;
        family(
            e,
            (
                "sink_write_blocked_seconds",
                "How long the write in progress to the log file has been blocked (a reader that stopped reading a \
                 pipe, a hung file system); 0 between writes",
                MetricType::Gauge,
            ),
            sinks,
            |sink| ConstGauge::new(sink.blocked_for().map_or(0.0, |blocked| blocked.as_secs_f64())),
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
