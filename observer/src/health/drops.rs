//! Records dropped, by the stage that dropped them and the event they were.
//!
//! In: each batch (or count of records) a stage could not hand on, from the
//! stage's hand-off ([`crate::pipeline::driver::Handoff`]) or the flow log's
//! writer. Out: counts by stage and event (`start`, `update`, `end`), read by
//! the metrics (`flow_observer_records_dropped_total{stage, event}`), the
//! findings' coverage and the health report. Counting per event is what lets
//! the accounting close: every flow that ended has an `end` record written
//! or an `end` record counted here.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::flow::{FlowRecord, RecordEvent};

/// A stage of the pipeline that can drop records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StageName {
    /// Capture: enrichment was not keeping up.
    Capture,
    /// Enrich: the judge was not keeping up.
    Enrich,
    /// Judge (or the pass-through without an inventory): the flow log's
    /// queue was full.
    Judge,
    /// Export: the flow log could not be written.
    Export,
}

impl StageName {
    /// Every stage, in the order a record passes them.
    pub const ALL: [Self; 4] = [Self::Capture, Self::Enrich, Self::Judge, Self::Export];

    /// The `stage` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Capture => "capture",
            Self::Enrich => "enrich",
            Self::Judge => "judge",
            Self::Export => "export",
        }
    }
}

/// Every record event, in label order.
pub const EVENTS: [RecordEvent; 3] = [RecordEvent::Start, RecordEvent::Update, RecordEvent::End];

/// The `event` label value of a record event.
pub fn event_label(event: RecordEvent) -> &'static str {
    match event {
        RecordEvent::Start => "start",
        RecordEvent::Update => "update",
        RecordEvent::End => "end",
    }
}

fn event_index(event: RecordEvent) -> usize {
    match event {
        RecordEvent::Start => 0,
        RecordEvent::Update => 1,
        RecordEvent::End => 2,
    }
}

/// Drop counters by stage and event.
#[derive(Debug, Default)]
pub struct Drops {
    counts: [[AtomicU64; 3]; 4],
}

impl Drops {
    fn cell(&self, stage: StageName, event: RecordEvent) -> &AtomicU64 {
        &self.counts[stage as usize][event_index(event)]
    }

    /// Counts every record of `records` as dropped by `stage`.
    pub fn count(&self, stage: StageName, records: &[FlowRecord]) {
        let mut by_event = [0u64; 3];
        for record in records {
            by_event[event_index(record.event)] += 1;
        }
        for (event, count) in EVENTS.into_iter().zip(by_event) {
            if count > 0 {
                self.cell(stage, event).fetch_add(count, Ordering::Relaxed);
            }
        }
    }

    /// Counts `count` records of `event` as dropped by `stage`.
    pub fn count_event(&self, stage: StageName, event: RecordEvent, count: u64) {
        self.cell(stage, event).fetch_add(count, Ordering::Relaxed);
    }

    /// Records of `event` dropped by `stage`.
    pub fn get(&self, stage: StageName, event: RecordEvent) -> u64 {
        self.cell(stage, event).load(Ordering::Relaxed)
    }

    /// Records dropped by `stage`, whatever their event.
    pub fn stage_total(&self, stage: StageName) -> u64 {
        EVENTS.iter().map(|event| self.get(stage, *event)).sum()
    }

    /// Records dropped by every stage.
    pub fn total(&self) -> u64 {
        StageName::ALL.iter().map(|stage| self.stage_total(*stage)).sum()
    }

    /// Every count as a JSON object by stage then event, for the stop log.
    pub fn snapshot(&self) -> serde_json::Value {
        let stages = StageName::ALL.iter().map(|stage| {
            let events = EVENTS.iter().map(|event| (event_label(*event).to_owned(), self.get(*stage, *event).into()));
            (stage.as_str().to_owned(), serde_json::Value::Object(events.collect()))
        });
        serde_json::Value::Object(stages.collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_kept_apart_by_stage_and_event() {
        let drops = Drops::default();
        drops.count_event(StageName::Enrich, RecordEvent::End, 3);
        drops.count_event(StageName::Export, RecordEvent::Start, 2);
        drops.count_event(StageName::Export, RecordEvent::End, 1);
        assert_eq!(drops.get(StageName::Enrich, RecordEvent::End), 3);
        assert_eq!(drops.get(StageName::Enrich, RecordEvent::Start), 0);
        assert_eq!(drops.get(StageName::Capture, RecordEvent::End), 0);
        assert_eq!(drops.stage_total(StageName::Export), 3);
        assert_eq!(drops.total(), 6);
        assert_eq!(StageName::ALL.map(StageName::as_str), ["capture", "enrich", "judge", "export"]);
        assert_eq!(drops.snapshot()["export"], serde_json::json!({"start": 2, "update": 0, "end": 1}));
    }
}
