//! Whether the observer saw everything: windows in which capture lost events.
//!
//! In: the increase of capture's lost-event counters, with the time it was
//! read. Out: for any span of time, whether it overlaps a span with losses
//! ([`Coverage`]), the number lost, and totals for the health report. A span
//! older than the history kept is reported incomplete: forgetting a loss must
//! never turn into a claim that nothing was lost.

use std::{
    collections::VecDeque,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Whether every event of a span was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Coverage {
    /// Nothing was lost: an absence of findings means an absence of violations.
    Complete,
    /// Events were lost: findings may be missing and counts are lower bounds.
    Incomplete,
}

/// Totals for the health report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CoverageStatus {
    /// Events lost since start.
    pub lost_events: u64,
    /// Separate spans with losses since start.
    pub lossy_spans: u64,
    /// When losses were last read.
    #[serde(skip)]
    pub last_loss: Option<SystemTime>,
}

/// Remembers the spans in which events were lost.
#[derive(Clone, Debug)]
pub struct CoverageTracker {
    window: Duration,
    /// Spans with losses, oldest first: (start, end, events lost).
    lossy: VecDeque<(SystemTime, SystemTime, u64)>,
    cap: usize,
    /// Spans ending before this may have had losses that were forgotten.
    forgotten_until: Option<SystemTime>,
    status: CoverageStatus,
}

impl CoverageTracker {
    /// A tracker for counters read every `window`: a loss read at `t` may have
    /// happened anywhere in `t - window ..= t`. It remembers the last `cap`
    /// spans with losses (overlapping ones merge).
    pub fn new(window: Duration, cap: usize) -> Self {
        Self {
            window,
            lossy: VecDeque::new(),
            cap: cap.max(1),
            forgotten_until: None,
            status: CoverageStatus::default(),
        }
    }

    /// Records `lost` events (a counter's increase) read at `at`.
    pub fn record(&mut self, at: SystemTime, lost: u64) {
        if lost == 0 {
            return;
        }
        let start = at.checked_sub(self.window).unwrap_or(UNIX_EPOCH);
        self.status.lost_events = self.status.lost_events.saturating_add(lost);
        self.status.last_loss = Some(self.status.last_loss.map_or(at, |last| last.max(at)));
        match self.lossy.back_mut() {
            Some((_, end, count)) if start <= *end => {
                *end = (*end).max(at);
                *count = count.saturating_add(lost);
            }
            _ => {
                self.lossy.push_back((start, at, lost));
                self.status.lossy_spans += 1;
                if self.lossy.len() > self.cap
                    && let Some((_, end, _)) = self.lossy.pop_front()
                {
                    self.forgotten_until = Some(end);
                }
            }
        }
    }

    /// Events lost in spans overlapping `from..=to`, and whether that span
    /// reaches back into forgotten history.
    fn lost(&self, from: SystemTime, to: SystemTime) -> (u64, bool) {
        let lost =
            self.lossy.iter().filter(|(start, end, _)| *start <= to && *end >= from).map(|(_, _, lost)| *lost).sum();
        (lost, self.forgotten_until.is_some_and(|until| from <= until))
    }

    /// Events known lost in spans overlapping `from..=to`.
    pub fn lost_between(&self, from: SystemTime, to: SystemTime) -> u64 {
        self.lost(from, to).0
    }

    /// The coverage of `from..=to`.
    pub fn coverage(&self, from: SystemTime, to: SystemTime) -> Coverage {
        match self.lost(from, to) {
            (0, false) => Coverage::Complete,
            _ => Coverage::Incomplete,
        }
    }

    /// Totals since start.
    pub fn status(&self) -> CoverageStatus {
        self.status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn spans_touching_a_loss_are_incomplete() {
        let mut tracker = CoverageTracker::new(Duration::from_secs(10), 16);
        tracker.record(at(130), 0);
        assert_eq!(tracker.coverage(at(0), at(1000)), Coverage::Complete);
        tracker.record(at(130), 5);
        tracker.record(at(135), 2);
        // The losses read at 130 and 135 happened within 120..=135.
        assert_eq!(tracker.coverage(at(0), at(119)), Coverage::Complete);
        assert_eq!(tracker.coverage(at(100), at(121)), Coverage::Incomplete);
        assert_eq!(tracker.coverage(at(136), at(1000)), Coverage::Complete);
        assert_eq!(tracker.lost_between(at(0), at(1000)), 7);
        assert_eq!(tracker.status().lossy_spans, 1);
    }

    #[test]
    fn forgotten_history_is_never_claimed_complete() {
        let mut tracker = CoverageTracker::new(Duration::from_secs(1), 2);
        for second in [10, 20, 30] {
            tracker.record(at(second), 1);
        }
        assert_eq!(tracker.coverage(at(0), at(5)), Coverage::Incomplete, "the loss at 10 was forgotten");
        assert_eq!(tracker.coverage(at(11), at(18)), Coverage::Complete);
        assert_eq!(tracker.status().lost_events, 3);
    }
}
