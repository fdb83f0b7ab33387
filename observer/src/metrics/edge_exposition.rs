//! The edge families, encoded from the edge cells at scrape time.
//!
//! In: a [`Snapshot`] of the [`EdgeCells`], taken under their lock. Out: the
//! `edge_bytes`, `edge_packets`, `edge_flows` and `verdicts` counter families
//! with the names, help and labels they had as prometheus-client families;
//! a family with no series is left out, as the registry leaves out an empty
//! family.

use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabel, EncodeLabelSet, EncodeMetric, LabelSetEncoder},
    metrics::{MetricType, counter::ConstCounter},
};

use super::{
    OVERFLOW,
    edge_cells::{Cell, EdgeCells, Kind, OUTCOMES, Snapshot, VERDICTS},
    labels::{Direction, EdgeLabels},
};

// With the full stop `Registry::register` added when these were registered families.
const BYTES_HELP: &str = "Transport payload bytes between two workloads (no IP or TCP/UDP headers), by direction; counted as the flow map is polled.";
const PACKETS_HELP: &str = "Packets between two workloads, by direction.";
const FLOWS_HELP: &str =
    "Flows between two workloads that ended, by outcome (completed, refused, unanswered, evicted).";
const VERDICTS_HELP: &str =
    "Flows judged on an edge, by verdict (allowed, denied-attempt, enforcement-gap, intent-violation, undecidable).";

/// Encodes the edge families on every scrape.
#[derive(Debug)]
pub struct EdgeCollector {
    cells: Arc<Mutex<EdgeCells>>,
}

impl EdgeCollector {
    /// A collector of `cells`.
    pub fn new(cells: Arc<Mutex<EdgeCells>>) -> Self {
        Self { cells }
    }
}

/// An edge's labels and one more: its direction, outcome or verdict.
struct EdgeAnd<'a> {
    edge: &'a EdgeLabels,
    name: &'static str,
    value: &'a str,
}

impl EncodeLabelSet for EdgeAnd<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.edge.encode(encoder)?;
        (self.name, self.value).encode(encoder.encode_label())
    }
}

/// One sample: the value of series `index` of a kind in a cell, under its
/// labels.
type Sample<'a> = (EdgeAnd<'a>, u64);

/// The samples of one family: `own` gives a cell's series, `overflow` the
/// overflow series' (whose extra label is fixed).
fn family<'a>(
    encoder: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    kind: Kind,
    snapshot: &'a Snapshot,
    sample: impl Fn(&'a Cell, &'a EdgeLabels, usize, bool) -> Sample<'a>,
) -> Result<(), std::fmt::Error> {
    let overflow = snapshot.overflow.holds(kind, 0);
    if !overflow && !snapshot.cells.iter().any(|cell| cell.holds_any(kind)) {
        return Ok(());
    }
    let mut metrics = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    let series = if kind == Kind::Traffic { 2 } else { 4 };
    for cell in &snapshot.cells {
        let Some(edge) = &cell.labels else { continue };
        for index in (0..series).filter(|index| cell.holds(kind, *index)) {
            let (labels, value) = sample(cell, edge, index, false);
            ConstCounter::new(value).encode(metrics.encode_family(&labels)?)?;
        }
    }
    if let (true, Some(edge)) = (overflow, &snapshot.overflow.labels) {
        let (labels, value) = sample(&snapshot.overflow, edge, 0, true);
        ConstCounter::new(value).encode(metrics.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for EdgeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Copied under the lock and encoded after it, so the meter never
        // waits for a scrape's encoding.
        let snapshot = self.cells.lock().unwrap_or_else(PoisonError::into_inner).snapshot();
        let direction = |index: usize| if index == 0 { Direction::ToDst } else { Direction::ToSrc }.as_str();
        family(&mut encoder, ("edge_bytes", BYTES_HELP), Kind::Traffic, &snapshot, |cell, edge, index, _| {
            (EdgeAnd { edge, name: "direction", value: direction(index) }, cell.traffic[index].bytes)
        })?;
        family(&mut encoder, ("edge_packets", PACKETS_HELP), Kind::Traffic, &snapshot, |cell, edge, index, _| {
            (EdgeAnd { edge, name: "direction", value: direction(index) }, cell.traffic[index].packets)
        })?;
        family(&mut encoder, ("edge_flows", FLOWS_HELP), Kind::Flows, &snapshot, |cell, edge, index, _| {
            (EdgeAnd { edge, name: "outcome", value: OUTCOMES[index].as_str() }, cell.flows[index].count)
        })?;
        family(&mut encoder, ("verdicts", VERDICTS_HELP), Kind::Verdicts, &snapshot, |cell, edge, index, overflow| {
            let value = if overflow { OVERFLOW } else { VERDICTS[index].as_str() };
            (EdgeAnd { edge, name: "verdict", value }, cell.verdicts[index].count)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use prometheus_client::{
        encoding::text::encode,
        metrics::{counter::Counter, family::Family},
        registry::Registry,
    };

    use super::*;
    use crate::{
        flow::Traffic,
        judge::VerdictKind,
        metrics::{EndLabels, FlowDelta, Outcome, PREFIX, Reporter, bounded::SeriesAccounting, labels::Overflow},
    };

    /// The label sets the families had as prometheus-client families: the
    /// edge flattened, then its direction, outcome or verdict.
    #[derive(Clone, Debug, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
    struct Labelled {
        #[prometheus(flatten)]
        edge: EdgeLabels,
        #[prometheus(flatten)]
        extra: Extra,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Hash)]
    struct Extra(&'static str, &'static str);

    impl EncodeLabelSet for Extra {
        fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
            [(self.0, self.1)].encode(encoder)
        }
    }

    fn edge(dst: &str) -> EdgeLabels {
        EdgeLabels {
            src: EndLabels::new("Deployment", "shop", "agent").tier("agent"),
            dst: EndLabels::new("StatefulSet", "shop", dst).extra(Arc::from([(Arc::from("team"), Arc::from("db"))])),
            protocol: Arc::from("tcp"),
            reporter: Reporter::Dst,
        }
    }

    fn exposition(registry: &Registry) -> Vec<String> {
        let mut text = String::new();
        encode(&mut text, registry).expect("encode");
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    }

    /// Counts on three edges with room for two series per family (so that
    /// each family overflows), and encodes the same counts through
    /// prometheus-client families: the two expositions hold the same lines.
    #[test]
    fn cells_encode_as_the_prometheus_client_families_did() {
        let cells = Arc::new(Mutex::new(EdgeCells::new(2, &SeriesAccounting::default())));
        let mut collected = Registry::with_prefix(PREFIX);
        let mut expected = Registry::with_prefix(PREFIX);
        // An empty family is left out.
        assert_eq!(exposition(&collected), ["# EOF"]);
        collected.register_collector(Box::new(EdgeCollector::new(Arc::clone(&cells))));
        let families: [Family<Labelled, Counter>; 4] = Default::default();
        for ((name, help), family) in [
            ("edge_bytes", BYTES_HELP),
            ("edge_packets", PACKETS_HELP),
            ("edge_flows", FLOWS_HELP),
            ("verdicts", VERDICTS_HELP),
        ]
        .into_iter()
        .zip(&families)
        {
            // Registered with the help they had: the registry adds the full stop.
            expected.register(name, help.strip_suffix('.').expect("a full stop"), family.clone());
        }
        let [bytes, packets, flows, verdicts] = &families;
        let labelled = |edge: &EdgeLabels, direction: Option<_>, outcome: Option<_>, verdict: Option<_>| {
            let extra = direction.map(|value| Extra("direction", value));
            let extra = extra.or(outcome.map(|value| Extra("outcome", value)));
            Labelled { edge: edge.clone(), extra: extra.or(verdict.map(|value| Extra("verdict", value))).expect("one") }
        };
        let overflow = EdgeLabels::overflow();
        let inc = |family: &Family<Labelled, Counter>, labels, by| {
            family.get_or_create(&labels).inc_by(by);
        };
        let mut store = cells.lock().expect("lock");
        let stamp = store.stamp(Instant::now());
        let (a, b, c) = (edge("a"), edge("b"), edge("c"));
        let delta = FlowDelta {
            to_dst: Traffic { packets: 2, bytes: 300 },
            to_src: Traffic { packets: 3, bytes: 4000 },
            ended: Some(Outcome::Refused),
        };
        let only_to_dst = FlowDelta { to_src: Traffic::default(), ended: Some(Outcome::Evicted), ..delta };
        let cell = store.intern(&a);
        store.count_traffic(cell, &delta, stamp);
        store.count_verdict(cell, VerdictKind::EnforcementGap, stamp);
        for (direction, traffic) in [("to_dst", delta.to_dst), ("to_src", delta.to_src)] {
            inc(bytes, labelled(&a, Some(direction), None, None), traffic.bytes);
            inc(packets, labelled(&a, Some(direction), None, None), traffic.packets);
        }
        inc(flows, labelled(&a, None, Some("refused"), None), 1);
        inc(verdicts, labelled(&a, None, None, Some("enforcement-gap")), 1);
        for (edge, verdict) in [(&b, VerdictKind::Allowed), (&c, VerdictKind::IntentViolation)] {
            let cell = store.intern(edge);
            store.count_traffic(cell, &only_to_dst, stamp);
            store.count_verdict(cell, verdict, stamp);
        }
        let to_dst = |edge| labelled(edge, Some("to_dst"), None, None);
        inc(bytes, to_dst(&overflow), 600);
        inc(packets, to_dst(&overflow), 4);
        inc(flows, labelled(&b, None, Some("evicted"), None), 1);
        inc(flows, labelled(&overflow, None, Some("completed"), None), 1);
        inc(verdicts, labelled(&b, None, None, Some("allowed")), 1);
        inc(verdicts, labelled(&overflow, None, None, Some(OVERFLOW)), 1);
        drop(store);
        let (collected, expected) = (exposition(&collected), exposition(&expected));
        assert_eq!(collected, expected);
        // # EOF, HELP and TYPE of each family, 3 series each.
        assert_eq!(collected.len(), 1 + 4 * 2 + 4 * 3, "{collected:#?}");
    }
}
