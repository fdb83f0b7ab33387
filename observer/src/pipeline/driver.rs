//! The stage driver: receive a batch, process it, hand it on, with one drop
//! policy for every stage.
//!
//! In: a [`Stage`] (what it does to each batch, and any work of its own
//! between batches), its input channel, the consumers that read the stream
//! after it, and a [`Handoff`] to the next stage. Out: every batch processed,
//! shown to each consumer, and handed on; a batch the next stage has no room
//! for is dropped and counted where it happens, by stage and event
//! ([`crate::health::Drops`]). No stage waits for the next one: back-pressure
//! would reach capture, whose ring buffer then loses events uncounted by
//! record.

use std::future::Future;

use tokio::sync::mpsc;

use crate::{
    flow::FlowRecord,
    health::{Health, StageName},
};

/// A batch of records, as they travel between stages.
pub type Batch = Vec<FlowRecord>;

/// What a stage does. A new stage is a new file implementing this, wired in
/// [`super::start`].
pub trait Stage: Send + 'static {
    /// Work that comes to the stage between batches (a policy change, a
    /// timer), handled by [`Stage::on_event`].
    type Event: Send;

    /// The stage's name in the drop counters.
    const NAME: StageName;

    /// Processes a batch in place.
    fn process(&mut self, batch: &mut [FlowRecord]);

    /// Resolves when the stage has work of its own; never, by default.
    fn next_event(&mut self) -> impl Future<Output = Self::Event> + Send {
        std::future::pending()
    }

    /// Handles what [`Stage::next_event`] gave.
    fn on_event(&mut self, _event: Self::Event) {}

    /// Called once the input has closed, before the driver returns.
    fn finish(&mut self) {}
}

/// Something that reads the stream without being a link in it (the metrics
/// meter): shown every batch after the stage, before it is handed on.
pub trait Consumer: Send + 'static {
    /// Reads a processed batch.
    fn consume(&mut self, batch: &[FlowRecord]);
}

/// The sending side of a hand-off between two stages: a bounded queue that
/// never waits; a full (or closed) queue drops the batch and counts its
/// records by event as dropped by the sending stage.
#[derive(Debug)]
pub struct Handoff {
    stage: StageName,
    output: mpsc::Sender<Batch>,
    health: Health,
    /// Whether the closed queue was said once.
    said_closed: bool,
}

/// What became of a batch handed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handed {
    /// The next stage has it.
    On,
    /// The next stage was full: dropped and counted.
    Dropped,
    /// The next stage has gone: dropped and counted.
    Closed,
}

impl Handoff {
    /// A hand-off from `stage` into `output`, counting drops in `health`.
    pub fn new(stage: StageName, output: mpsc::Sender<Batch>, health: Health) -> Self {
        Self { stage, output, health, said_closed: false }
    }

    /// Hands `batch` on without waiting; a batch that cannot go is dropped
    /// and counted.
    pub fn hand_on(&mut self, batch: Batch) -> Handed {
        match self.output.try_send(batch) {
            Ok(()) => Handed::On,
            Err(mpsc::error::TrySendError::Full(batch)) => {
                self.health.drops().count(self.stage, &batch);
                tracing::warn!(
                    stage = self.stage.as_str(),
                    records = batch.len(),
                    "the next stage is not keeping up: records dropped and counted"
                );
                Handed::Dropped
            }
            Err(mpsc::error::TrySendError::Closed(batch)) => {
                self.health.drops().count(self.stage, &batch);
                if !self.said_closed {
                    self.said_closed = true;
                    tracing::warn!(
                        stage = self.stage.as_str(),
                        "the next stage has stopped: records dropped and counted"
                    );
                }
                Handed::Closed
            }
        }
    }
}

/// Runs `stage` until `input` closes: each batch processed, shown to
/// `consumers`, then handed on into `output`, its drops counted in `health`
/// under the stage's name.
pub async fn drive<S: Stage>(
    mut stage: S,
    mut input: mpsc::Receiver<Batch>,
    mut consumers: Vec<Box<dyn Consumer>>,
    output: mpsc::Sender<Batch>,
    health: Health,
) {
    let mut output = Handoff::new(S::NAME, output, health);
    loop {
        tokio::select! {
            batch = input.recv() => {
                let Some(mut batch) = batch else { break };
                stage.process(&mut batch);
                for consumer in &mut consumers {
                    consumer.consume(&batch);
                }
                output.hand_on(batch);
            }
            event = stage.next_event() => stage.on_event(event),
        }
    }
    stage.finish();
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::SystemTime};

    use super::*;
    use crate::{
        flow::{Cgroup, FlowState, RecordEvent},
        testing::tcp_record,
    };

    fn record(event: RecordEvent) -> FlowRecord {
        FlowRecord {
            state: FlowState::Closed,
            cgroup: Cgroup { id: 1, path: None },
            ..tcp_record("198.18.0.10:80", "198.18.0.11:80", event, SystemTime::now())
        }
    }

    /// Marks each record it sees by setting its flow id.
    struct Mark;

    impl Stage for Mark {
        type Event = ();
        const NAME: StageName = StageName::Enrich;

        fn process(&mut self, batch: &mut [FlowRecord]) {
            for record in batch {
                record.progress.flow = 7;
            }
        }
    }

    struct Count(Arc<std::sync::atomic::AtomicU64>);

    impl Consumer for Count {
        fn consume(&mut self, batch: &[FlowRecord]) {
            self.0.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn a_full_next_stage_drops_and_counts_by_event_and_consumers_see_everything() {
        let health = Health::default();
        let (input_tx, input_rx) = mpsc::channel(8);
        // Room for one batch: the next stage never reads in this test.
        let (output_tx, mut output_rx) = mpsc::channel(1);
        let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let driver =
            tokio::spawn(drive(Mark, input_rx, vec![Box::new(Count(Arc::clone(&seen)))], output_tx, health.clone()));
        input_tx.send(vec![record(RecordEvent::Start), record(RecordEvent::End)]).await.expect("send");
        input_tx
            .send(vec![record(RecordEvent::Start), record(RecordEvent::Update), record(RecordEvent::End)])
            .await
            .expect("send");
        input_tx.send(vec![record(RecordEvent::End)]).await.expect("send");
        drop(input_tx);
        driver.await.expect("driver");
        let passed = output_rx.recv().await.expect("the first batch went on");
        assert_eq!(passed.len(), 2);
        assert!(passed.iter().all(|record| record.progress.flow == 7), "processed before it went on");
        assert!(output_rx.recv().await.is_none(), "the other two batches were dropped");
        let drops = health.drops();
        assert_eq!(drops.get(StageName::Enrich, RecordEvent::Start), 1);
        assert_eq!(drops.get(StageName::Enrich, RecordEvent::Update), 1);
        assert_eq!(drops.get(StageName::Enrich, RecordEvent::End), 2);
        assert_eq!(drops.total(), 4);
        assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), 6, "consumers see dropped batches too");
    }
}
