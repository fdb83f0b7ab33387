//! The judge stage: a verdict for every flow, and the findings.
//!
//! In: enriched batches; inventory generations (which carry the FlowIntents
//! and ClusterNetworkPolicies too) and the findings' flush timer between them.
//! Out: the same records, each with its verdict ([`JudgeStage::judge_batch`]),
//! and findings written at each flush and once more at the end. Without an
//! inventory nothing is judged: [`PassThrough`] stands in.

use std::time::Duration;

use tokio::{
    sync::watch,
    time::{Interval, MissedTickBehavior},
};

use super::driver::Stage;
use crate::{flow::FlowRecord, health::StageName, judge::stage::JudgeStage};

/// The judge stage, with what wakes it between batches.
pub struct Judging {
    stage: JudgeStage,
    generations: watch::Receiver<u64>,
    /// Cleared when the inventory has gone: generations no longer change.
    inventory_alive: bool,
    flush: Interval,
}

impl Judging {
    /// Drives `stage`.
    pub fn new(stage: JudgeStage) -> Self {
        let (generations, every) = stage.wakeups();
        let mut flush = tokio::time::interval(every.max(Duration::from_secs(1)));
        flush.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self { stage, generations, inventory_alive: true, flush }
    }
}

/// What woke the judge.
pub enum Wake {
    /// Policies, pods or intents changed: recompile.
    Rebuild,
    /// The inventory has gone; nothing to do.
    InventoryGone,
    /// Time to write the findings due.
    Flush,
}

impl Stage for Judging {
    type Event = Wake;
    const NAME: StageName = StageName::Judge;

    fn process(&mut self, batch: &mut [FlowRecord]) {
        self.stage.judge_batch(batch);
    }

    async fn next_event(&mut self) -> Wake {
        let alive = self.inventory_alive;
        tokio::select! {
            changed = self.generations.changed(), if alive => {
                if changed.is_ok() { Wake::Rebuild } else { Wake::InventoryGone }
            }
            _ = self.flush.tick() => Wake::Flush,
        }
    }

    fn on_event(&mut self, event: Wake) {
        match event {
            Wake::Rebuild => self.stage.rebuild(),
            Wake::InventoryGone => self.inventory_alive = false,
            Wake::Flush => self.stage.flush_findings(),
        }
    }

    fn finish(&mut self) {
        self.stage.finish();
    }
}

/// Without an inventory there is nothing to judge: records go straight on
/// (and are counted as the judge's when they cannot).
pub struct PassThrough;

impl Stage for PassThrough {
    type Event = ();
    const NAME: StageName = StageName::Judge;

    fn process(&mut self, _batch: &mut [FlowRecord]) {}
}
