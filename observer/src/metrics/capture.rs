//! Capture's health counters as metrics, read at scrape time.
//!
//! In: the [`CaptureHealth`] atomics, once capture is attached, and the flow
//! log's drops, once it is opened. Out: the `flow_observer_flows_*`,
//! `ringbuf_*`, `flow_map_*`, `records_*` (`records_dropped` by `stage`:
//! `capture`, `export`) and `capture_*` series; nothing before capture is
//! attached.

use std::sync::{Arc, OnceLock, atomic::Ordering};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use super::sinks::{Sinks, flow_log_dropped};
use crate::capture::{CaptureHealth, clock::monotonic_ns};

/// Encodes capture's counters on every scrape.
#[derive(Debug)]
pub struct CaptureCollector {
    health: Arc<OnceLock<Arc<CaptureHealth>>>,
    sinks: Sinks,
}

impl CaptureCollector {
    /// A collector of whatever capture is attached to `health` later, and
    /// of the flow log's drops once `sinks` are attached.
    pub fn new(health: Arc<OnceLock<Arc<CaptureHealth>>>, sinks: Sinks) -> Self {
        Self { health, sinks }
    }
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge<N>(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: N) -> Result<(), std::fmt::Error>
where
    ConstGauge<N>: EncodeMetric,
{
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Seconds since capture last read the flow map; `None` before the first poll.
pub fn last_poll_age(health: &CaptureHealth) -> Option<f64> {
    let last = health.last_poll_ns.load(Ordering::Relaxed);
    (last != 0).then(|| monotonic_ns().saturating_sub(last) as f64 / 1e9)
}

impl Collector for CaptureCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(health) = self.health.get() else {
            return Ok(());
        };
        let get = |value: &std::sync::atomic::AtomicU64| value.load(Ordering::Relaxed);
        let e = &mut encoder;
        counter(e, "flows_started", "Flows capture started tracking", get(&health.flows_tracked))?;
        gauge(e, "flows_active", "Flows tracked now", get(&health.flows_active))?;
        counter(e, "flows_ended", "Flows that ended", get(&health.flows_ended))?;
        counter(
            e,
            "flows_evicted",
            "Flows that ended evicted: the full kernel flow map evicted an entry of theirs, and the counters it \
             held since the last poll are lost",
            get(&health.flows_evicted),
        )?;
        counter(
            e,
            "flows_discovered",
            "Flows found only by polling the map because their new-flow event was lost",
            get(&health.flows_discovered),
        )?;
        counter(e, "ringbuf_events_read", "Events read from the kernel ring buffer", get(&health.events_read))?;
        counter(
            e,
            "ringbuf_events_lost",
            "Events the kernel could not queue because the ring buffer was full",
            get(&health.events_lost),
        )?;
        gauge(e, "flow_map_entries", "Entries in the kernel flow map at the last poll", get(&health.flow_map_entries))?;
        gauge(e, "flow_map_capacity", "Capacity of the kernel flow map", get(&health.flow_map_capacity))?;
        counter(
            e,
            "flow_map_evictions",
            "Entries the full kernel flow map evicted to make room for new flows",
            get(&health.flow_map_evictions),
        )?;
        counter(
            e,
            "flow_map_inserts_failed",
            "Flow map inserts that failed in the kernel",
            get(&health.flow_inserts_failed),
        )?;
        counter(
            e,
            "packets_unparsed",
            "Packets whose headers the kernel could not read",
            get(&health.packets_unparsed),
        )?;
        counter(e, "records_sent", "Flow records capture handed to the next stage", get(&health.records_sent))?;
        // One family for every stage that drops records: capture (the next
        // stage was full), export (the flow log could not be written).
        let mut dropped = e.encode_descriptor(
            "records_dropped",
            "Flow records dropped, by stage: capture (the next stage was not keeping up), export (the flow log \
             could not be written)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(get(&health.records_dropped)).encode(dropped.encode_family(&[("stage", "capture")])?)?;
        if let Some(export) = flow_log_dropped(&self.sinks) {
            ConstCounter::new(export).encode(dropped.encode_family(&[("stage", "export")])?)?;
        }
        gauge(
            e,
            "tcp_socket_counters",
            "1 when TCP is counted from each socket's own counters, 0 when per packet (asked for, or the kernel lacks \
             BTF or refused the BTF tracepoint)",
            get(&health.tcp_socket_counters),
        )?;
        gauge(
            e,
            "flow_map_batched",
            "1 while the flow map is read and pruned with batch commands, 0 once the kernel refused them",
            get(&health.flow_map_batched),
        )?;
        counter(e, "capture_polls", "Completed reads of the kernel flow map", get(&health.polls))?;
        if let Some(age) = last_poll_age(health) {
            gauge(e, "capture_last_poll_age_seconds", "Seconds since the flow map was last read", age)?;
        }
        Ok(())
    }
}
