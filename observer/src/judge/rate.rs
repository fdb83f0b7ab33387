//! New-connection rates per pod and intent, for `maxNewConnectionsPerMinute`.
//!
//! In: one call per new connection of a pod under a rate-limited intent,
//! with its time. Out: the estimated number of new connections in the minute
//! ending then. The estimate is the sliding-window approximation: this
//! calendar minute's count plus the previous minute's weighted by how much of
//! it the sliding minute still covers, so each pair costs three numbers and
//! every call is O(1). The pairs tracked are capped (least recently used
//! forgotten, counted).

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::anomaly::lru::Lru;

#[derive(Clone, Copy, Debug)]
struct Window {
    minute: u64,
    current: u32,
    previous: u32,
}

/// Counts new connections per (intent, pod uid).
#[derive(Clone, Debug)]
pub(crate) struct RateTracker {
    windows: Lru<(usize, Arc<str>), Window>,
    evicted: u64,
}

impl RateTracker {
    pub(crate) fn new(cap: usize) -> Self {
        Self { windows: Lru::new(cap), evicted: 0 }
    }

    /// Counts one new connection at `at` and returns the estimated count over
    /// the minute ending at `at`, this one included.
    pub(crate) fn count(&mut self, intent: usize, uid: &str, at: SystemTime) -> f64 {
        let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let minute = since.as_secs() / 60;
        let elapsed = (since.as_secs_f64() % 60.0) / 60.0;
        let key = (intent, Arc::<str>::from(uid));
        let window = match self.windows.get_mut(&key) {
            Some(window) => {
                // Connections judged slightly out of order count in the newest minute.
                if minute == window.minute + 1 {
                    *window = Window { minute, current: 0, previous: window.current };
                } else if minute > window.minute + 1 {
                    *window = Window { minute, current: 0, previous: 0 };
                }
                window.current = window.current.saturating_add(1);
                *window
            }
            None => {
                let window = Window { minute, current: 1, previous: 0 };
                if self.windows.insert(key, window).is_some() {
                    self.evicted += 1;
                }
                window
            }
        };
        f64::from(window.previous) * (1.0 - elapsed) + f64::from(window.current)
    }

    /// Pairs forgotten because the tracker was full.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Forgets every count (the intents were recompiled).
    pub(crate) fn clear(&mut self) {
        self.windows.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(seconds: f64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs_f64(seconds)
    }

    #[test]
    fn sliding_minute_weights_the_previous_one() {
        let mut tracker = RateTracker::new(8);
        for i in 0..10 {
            tracker.count(0, "p", at(600.0 + f64::from(i)));
        }
        // Half-way through the next minute, half of the previous 10 still count.
        assert!((tracker.count(0, "p", at(690.0)) - 6.0).abs() < 1e-9);
        // Other pods and intents count apart.
        assert_eq!(tracker.count(1, "p", at(690.0)), 1.0);
        assert_eq!(tracker.count(0, "q", at(690.0)), 1.0);
        // After an idle minute nothing carries over.
        assert_eq!(tracker.count(0, "p", at(800.0)), 1.0);
    }

    #[test]
    fn forgets_least_recent_pairs_when_full() {
        let mut tracker = RateTracker::new(2);
        tracker.count(0, "a", at(0.0));
        tracker.count(0, "b", at(0.0));
        tracker.count(0, "c", at(0.0));
        assert_eq!(tracker.evicted(), 1);
    }
}
