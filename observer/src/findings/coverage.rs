//! Whether the observer saw everything: windows in which capture lost events.
//!
//! In: the increase of capture's lost-event counters, with the time it was
//! read. Out: for any span of time, whether it overlaps a window with losses
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
    /// Windows with losses since start.
    pub lossy_windows: u64,
    /// Start of the latest window with losses.
    #[serde(skip)]
    pub last_loss: Option<SystemTime>,
}

/// Remembers the windows in which events were lost.
#[derive(Clone, Debug)]
pub struct CoverageTracker {
    window_seconds: u64,
    /// Lossy windows, oldest first: (window index, events lost).
    lossy: VecDeque<(u64, u64)>,
    cap: usize,
    /// Windows before this index may have had losses that were forgotten.
    forgotten_before: u64,
    status: CoverageStatus,
}

fn seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

impl CoverageTracker {
    /// A tracker with windows of `window` (at least a second) that remembers
    /// the last `cap` lossy windows.
    pub fn new(window: Duration, cap: usize) -> Self {
        Self {
            window_seconds: window.as_secs().max(1),
            lossy: VecDeque::new(),
            cap: cap.max(1),
            forgotten_before: 0,
            status: CoverageStatus::default(),
        }
    }

    /// Records `lost` events lost (a counter's increase) in the window holding `at`.
    pub fn record(&mut self, at: SystemTime, lost: u64) {
        if lost == 0 {
            return;
        }
        let window = seconds(at) / self.window_seconds;
        self.status.lost_events = self.status.lost_events.saturating_add(lost);
        match self.lossy.back_mut() {
            Some((last, count)) if *last >= window => *count = count.saturating_add(lost),
            _ => {
                self.lossy.push_back((window, lost));
                self.status.lossy_windows += 1;
                self.status.last_loss = Some(UNIX_EPOCH + Duration::from_secs(window * self.window_seconds));
                if self.lossy.len() > self.cap
                    && let Some((oldest, _)) = self.lossy.pop_front()
                {
                    self.forgotten_before = oldest + 1;
                }
            }
        }
    }

    /// Events lost in the windows overlapping `from..=to`, and whether that
    /// span reaches back before the history kept.
    fn lost(&self, from: SystemTime, to: SystemTime) -> (u64, bool) {
        let (first, last) = (seconds(from) / self.window_seconds, seconds(to) / self.window_seconds);
        let lost = self
            .lossy
            .iter()
            .filter(|(window, _)| (first..=last).contains(window))
            .map(|(_, lost)| *lost)
            .sum();
        (lost, first < self.forgotten_before)
    }

    /// Events known lost in the windows overlapping `from..=to`.
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
    fn spans_touching_a_lossy_window_are_incomplete() {
        let mut tracker = CoverageTracker::new(Duration::from_secs(60), 16);
        tracker.record(at(130), 0);
        assert_eq!(tracker.coverage(at(0), at(1000)), Coverage::Complete);
        tracker.record(at(130), 5);
        tracker.record(at(150), 2);
        assert_eq!(tracker.coverage(at(0), at(119)), Coverage::Complete);
        assert_eq!(tracker.coverage(at(170), at(200)), Coverage::Incomplete);
        assert_eq!(tracker.coverage(at(180), at(1000)), Coverage::Complete);
        assert_eq!(tracker.lost_between(at(0), at(1000)), 7);
        assert_eq!(tracker.status().lossy_windows, 1);
    }

    #[test]
    fn forgotten_history_is_never_claimed_complete() {
        let mut tracker = CoverageTracker::new(Duration::from_secs(1), 2);
        for second in [10, 20, 30] {
            tracker.record(at(second), 1);
        }
        assert_eq!(tracker.coverage(at(0), at(5)), Coverage::Incomplete, "window 10 was forgotten");
        assert_eq!(tracker.coverage(at(11), at(19)), Coverage::Complete);
        assert_eq!(tracker.status().lost_events, 3);
    }
}
