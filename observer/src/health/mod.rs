//! The daemon's health and readiness: one state the workers write and the
//! readers share.
//!
//! In: capture's counters (once attached), the log files' state (once
//! opened), the inventory's sync and staleness, every stage's drops and the
//! judge's untracked flows. Out: the answers of `/healthz` (alive: capture
//! reads the flow map, every log file is written and none is stalled) and
//! `/readyz` (programs attached, flow map read, inventory synced and fresh),
//! and the same facts for the metrics' collectors, which read them at scrape
//! time. [`crate::metrics::Metrics`] keeps series only; readiness lives here.

pub mod drops;

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    time::Duration,
};

pub use drops::{Drops, StageName};

use crate::{
    capture::{CaptureHealth, clock::monotonic_ns},
    export::sink::SinkHealth,
};

const INVENTORY_NONE: u8 = 0;
const INVENTORY_SYNCING: u8 = 1;
const INVENTORY_SYNCED: u8 = 2;

/// How long capture may go without reading the flow map, and a log file
/// write may stay blocked, before `/healthz` fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StallLimits {
    /// Capture that has not read the flow map for this long is stuck.
    pub capture: Duration,
    /// A log file write blocked this long (a full pipe whose reader stopped,
    /// a hung network file system) is a stalled sink.
    pub sink: Duration,
}

impl Default for StallLimits {
    /// 30 s for capture, 10 s for a write.
    fn default() -> Self {
        Self { capture: Duration::from_secs(30), sink: Duration::from_secs(10) }
    }
}

/// The daemon's health: cheap to clone, shared by the stages that write it
/// and the HTTP server and metrics that read it.
#[derive(Clone, Debug, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    limits: StallLimits,
    capture: OnceLock<Arc<CaptureHealth>>,
    sinks: OnceLock<Vec<Arc<SinkHealth>>>,
    inventory: AtomicU8,
    inventory_stale: AtomicBool,
    drops: Drops,
    flows_untracked: AtomicU64,
}

impl Health {
    /// A health state with these stall limits.
    pub fn new(limits: StallLimits) -> Self {
        Self { inner: Arc::new(Inner { limits, ..Inner::default() }) }
    }

    /// The stall limits.
    pub fn limits(&self) -> StallLimits {
        self.inner.limits
    }

    /// Capture is attached: `/healthz` watches its polling from now on and
    /// its counters are exported.
    pub fn attach_capture(&self, health: Arc<CaptureHealth>) {
        let _ = self.inner.capture.set(health);
    }

    /// Capture's counters, once attached.
    pub fn capture(&self) -> Option<&Arc<CaptureHealth>> {
        self.inner.capture.get()
    }

    /// The log files are open: `/healthz` fails while one cannot be written
    /// or a write is stalled, and their state is exported.
    pub fn attach_sinks(&self, sinks: Vec<Arc<SinkHealth>>) {
        let _ = self.inner.sinks.set(sinks);
    }

    /// The log files' state, once attached.
    pub fn sinks(&self) -> &[Arc<SinkHealth>] {
        self.inner.sinks.get().map_or(&[], Vec::as_slice)
    }

    /// Records dropped, by stage and event.
    pub fn drops(&self) -> &Drops {
        &self.inner.drops
    }

    /// New flows the judge could not keep the starting verdict of (its
    /// open-flow map was full): judged with the current policies at each
    /// record, so a policy change they outlive goes unseen.
    pub fn flows_untracked(&self) -> u64 {
        self.inner.flows_untracked.load(Ordering::Relaxed)
    }

    /// Sets the judge's count of untracked flows (a total since start).
    pub fn set_flows_untracked(&self, count: u64) {
        self.inner.flows_untracked.store(count, Ordering::Relaxed);
    }

    /// Everything lost so far that makes what the observer reports
    /// incomplete: kernel events, failed and evicted flow-map entries, every
    /// stage's dropped records and the judge's untracked flows.
    pub fn lost(&self) -> u64 {
        let capture = self.capture().map_or(0, |health| {
            [&health.events_lost, &health.flow_inserts_failed, &health.flows_evicted]
                .iter()
                .map(|counter| counter.load(Ordering::Relaxed))
                .sum()
        });
        capture + self.drops().total() + self.flows_untracked()
    }

    /// `/readyz` waits for the inventory's first sync from now on.
    pub fn expect_inventory(&self) {
        let _ = self.inner.inventory.compare_exchange(
            INVENTORY_NONE,
            INVENTORY_SYNCING,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The inventory's latest sync state and staleness.
    pub fn set_inventory(&self, synced: bool, stale: bool) {
        let value = if synced { INVENTORY_SYNCED } else { INVENTORY_SYNCING };
        self.inner.inventory.store(value, Ordering::Relaxed);
        self.inner.inventory_stale.store(stale, Ordering::Relaxed);
    }

    /// `None` when no inventory is expected, else whether it has synced.
    pub fn inventory_synced(&self) -> Option<bool> {
        match self.inner.inventory.load(Ordering::Relaxed) {
            INVENTORY_NONE => None,
            state => Some(state == INVENTORY_SYNCED),
        }
    }

    /// Whether the inventory said last that it is stale.
    pub fn inventory_stale(&self) -> bool {
        self.inner.inventory_stale.load(Ordering::Relaxed)
    }

    /// Alive unless capture, once attached, has stopped reading the flow
    /// map, a log file cannot be written, or a write to one is stalled.
    pub fn liveness(&self) -> Result<String, String> {
        let limit = self.limits().sink;
        let sinks: String = self
            .sinks()
            .iter()
            .filter_map(|sink| {
                if let Some((reason, since)) = sink.failure() {
                    return Some(format!("{} failing for {}s: {reason}\n", sink.describe(), since.as_secs()));
                }
                let blocked = sink.blocked_for().filter(|blocked| *blocked >= limit)?;
                Some(format!(
                    "{} stalled: a write has been blocked for {}s (limit {}s); records queue and then drop, counted\n",
                    sink.describe(),
                    blocked.as_secs(),
                    limit.as_secs()
                ))
            })
            .collect();
        match self.capture_liveness() {
            Ok(_) if !sinks.is_empty() => Err(sinks),
            Ok(message) => Ok(message),
            Err(message) => Err(message + &sinks),
        }
    }

    fn capture_liveness(&self) -> Result<String, String> {
        let Some(health) = self.capture() else {
            return Ok("ok: starting\n".to_owned());
        };
        let limit = self.limits().capture;
        match last_poll_age(health) {
            // Attached but not polled yet: starting.
            None => Ok("ok: capture attached\n".to_owned()),
            Some(age) if age <= limit.as_secs_f64() => Ok(format!("ok: flow map read {age:.1}s ago\n")),
            Some(age) => {
                Err(format!("capture stalled: flow map last read {age:.1}s ago (limit {}s)\n", limit.as_secs()))
            }
        }
    }

    /// Ready once the programs are attached, the flow map has been read, and
    /// the inventory (if one is configured) has synced and is not stale.
    pub fn readiness(&self) -> Result<String, String> {
        let Some(health) = self.capture() else {
            return Err("not ready: kernel programs not attached yet\n".to_owned());
        };
        if last_poll_age(health).is_none() {
            return Err("not ready: flow map not read yet\n".to_owned());
        }
        match self.inventory_synced() {
            Some(false) => Err("not ready: inventory has not finished its first sync\n".to_owned()),
            Some(true) if self.inventory_stale() => Err(
                "not ready: inventory stale (its source has been failing past the threshold; the last good state stays in force)\n"
                    .to_owned(),
            ),
            Some(true) => Ok("ready: capture attached, inventory synced\n".to_owned()),
            None => Ok("ready: capture attached\n".to_owned()),
        }
    }
}

/// Seconds since capture last read the flow map; `None` before the first poll.
pub fn last_poll_age(health: &CaptureHealth) -> Option<f64> {
    let last = health.last_poll_ns.load(Ordering::Relaxed);
    (last != 0).then(|| monotonic_ns().saturating_sub(last) as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::RecordEvent;

    #[test]
    fn every_loss_counts_against_coverage() {
        let health = Health::default();
        assert_eq!(health.lost(), 0);
        let capture = Arc::new(CaptureHealth::default());
        capture.events_lost.store(1, Ordering::Relaxed);
        capture.flow_inserts_failed.store(2, Ordering::Relaxed);
        capture.flows_evicted.store(4, Ordering::Relaxed);
        // Capture's own count of its drops is the capture stage's in `drops`.
        capture.records_dropped.store(8, Ordering::Relaxed);
        health.attach_capture(capture);
        health.drops().count_event(StageName::Capture, RecordEvent::End, 8);
        health.drops().count_event(StageName::Enrich, RecordEvent::Start, 16);
        health.drops().count_event(StageName::Judge, RecordEvent::Update, 32);
        health.drops().count_event(StageName::Export, RecordEvent::End, 64);
        health.set_flows_untracked(128);
        assert_eq!(health.lost(), 255);
    }

    #[test]
    fn readiness_waits_for_an_expected_inventory_only() {
        let health = Health::default();
        let capture = Arc::new(CaptureHealth::default());
        capture.last_poll_ns.store(monotonic_ns(), Ordering::Relaxed);
        health.attach_capture(capture);
        assert_eq!(health.readiness(), Ok("ready: capture attached\n".to_owned()));
        health.expect_inventory();
        assert_eq!(health.inventory_synced(), Some(false));
        assert!(health.readiness().is_err_and(|message| message.contains("first sync")));
        health.set_inventory(true, false);
        assert_eq!(health.inventory_synced(), Some(true));
        assert!(health.readiness().is_ok());
        // A later call does not take the sync back.
        health.expect_inventory();
        assert_eq!(health.inventory_synced(), Some(true));
    }
}
