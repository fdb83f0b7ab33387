//! Capture's health counters and the pipeline's drops as metrics, read at
//! scrape time.
//!
//! In: the daemon's [`Health`]: capture's atomics once capture is attached,
//! every stage's drops, the judge's untracked flows. Out: the
//! `flow_observer_flows_*`, `ringbuf_*`, `flow_map_*`, `records_*`
//! (`records_dropped` by `stage` and `event`), `judge_flows_untracked` and
//! `capture_*` series; nothing before capture is attached.

use std::sync::atomic::Ordering;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use crate::health::{Health, StageName, drops};

/// Encodes capture's counters and the drops on every scrape.
#[derive(Debug)]
pub struct CaptureCollector {
    health: Health,
}

impl CaptureCollector {
    /// A collector of whatever capture is attached to `health` later.
    pub fn new(health: Health) -> Self {
        Self { health }
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

impl Collector for CaptureCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(health) = self.health.capture() else {
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
        // One family for every stage that drops records, by the event they
        // were: every flow that ended has its `end` record written or
        // counted here.
        let mut dropped = e.encode_descriptor(
            "records_dropped",
            "Flow records dropped, by the stage that dropped them (capture, enrich, judge: the next stage was not \
             keeping up; export: the flow log could not be written) and their event (start, update, end)",
            None,
            MetricType::Counter,
        )?;
        let drops = self.health.drops();
        for stage in StageName::ALL {
            for event in drops::EVENTS {
                let labels = [("stage", stage.as_str()), ("event", drops::event_label(event))];
                ConstCounter::new(drops.get(stage, event)).encode(dropped.encode_family(&labels)?)?;
            }
        }
        counter(
            e,
            "judge_flows_untracked",
            "New flows the judge could not keep the starting verdict of (too many open flows): judged with the \
             current policies at each record, so a policy change they outlive is not reported",
            self.health.flows_untracked(),
        )?;
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
        if let Some(age) = crate::health::last_poll_age(health) {
            gauge(e, "capture_last_poll_age_seconds", "Seconds since the flow map was last read", age)?;
        }
        Ok(())
    }
}
