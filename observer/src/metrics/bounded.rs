//! A metric family with a cap on its series and garbage collection of idle
//! series.
//!
//! In: observations under a label set. Out: a prometheus-client [`Family`]
//! that never holds more than `cap` series plus one overflow series, whose
//! overflow is counted, and whose series untouched for the grace period are
//! removed, so the series of deleted pods and workloads go away instead of
//! being exported until the daemon restarts.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};

use super::labels::{FamilyLabels, Overflow};

/// The counters every bounded family reports into: series held, series
/// removed by GC, observations sent to the overflow series.
#[derive(Clone, Debug, Default)]
pub struct SeriesAccounting {
    /// Series held per family.
    pub series: Family<FamilyLabels, Gauge>,
    /// Observations that landed in a family's overflow series.
    pub overflow: Family<FamilyLabels, Counter>,
    /// Series removed after the grace period.
    pub removed: Family<FamilyLabels, Counter>,
}

/// A [`Family`] of at most `cap` series (plus the overflow series) whose idle
/// series are removed by [`BoundedFamily::collect_garbage`].
#[derive(Debug)]
pub struct BoundedFamily<L, M> {
    name: &'static str,
    family: Family<L, M>,
    touched: Mutex<HashMap<L, Instant>>,
    cap: usize,
    accounting: SeriesAccounting,
}

impl<L, M> BoundedFamily<L, M>
where
    L: Clone + Hash + Eq + Overflow,
    M: Default,
{
    /// A family exposed as `name` holding at most `cap` series.
    pub fn new(name: &'static str, cap: usize, accounting: SeriesAccounting) -> Self {
        // Exposed at zero from the start, so that `rate()` and `increase()`
        // see the first overflow and the first removal.
        let labels = FamilyLabels { family: name };
        accounting.series.get_or_create(&labels).set(0);
        accounting.overflow.get_or_create(&labels).inc_by(0);
        accounting.removed.get_or_create(&labels).inc_by(0);
        Self { name, family: Family::default(), touched: Mutex::new(HashMap::new()), cap, accounting }
    }

    /// The family to register.
    pub fn family(&self) -> Family<L, M> {
        self.family.clone()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<L, Instant>> {
        // The map holds plain timestamps: a panic elsewhere cannot leave it
        // inconsistent, so a poisoned lock is still usable.
        self.touched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn family_labels(&self) -> FamilyLabels {
        FamilyLabels { family: self.name }
    }

    /// Runs `update` on the series of `labels` (or on the overflow series if
    /// `labels` is new and the family is full) and marks it used at `now`.
    pub fn with(&self, labels: &L, now: Instant, update: impl FnOnce(&M)) {
        let mut touched = self.lock();
        if let Some(last) = touched.get_mut(labels) {
            *last = now;
            update(&self.family.get_or_create(labels));
            return;
        }
        let overflow = L::overflow();
        // The overflow series sits beyond the cap so that it always has room.
        let held = touched.len() - usize::from(touched.contains_key(&overflow));
        let target = if held < self.cap {
            labels.clone()
        } else {
            self.accounting.overflow.get_or_create(&self.family_labels()).inc();
            overflow
        };
        update(&self.family.get_or_create(&target));
        touched.insert(target, now);
        self.accounting.series.get_or_create(&self.family_labels()).set(gauge_value(touched.len()));
    }

    /// Sets the series of the label sets in `current` to their values and
    /// removes every other series at once: for state the caller recomputes as
    /// a whole (unprotected workloads), where an absent series means zero.
    pub fn replace(&self, current: &[(L, i64)], now: Instant)
    where
        M: SetValue,
    {
        let mut touched = self.lock();
        let stale: Vec<L> =
            touched.keys().filter(|labels| !current.iter().any(|(kept, _)| kept == *labels)).cloned().collect();
        for labels in stale {
            touched.remove(&labels);
            self.family.remove(&labels);
        }
        drop(touched);
        for (labels, value) in current {
            self.with(labels, now, |metric| metric.set_value(*value));
        }
        self.accounting.series.get_or_create(&self.family_labels()).set(gauge_value(self.lock().len()));
    }

    /// Marks the series of `labels` used at `now` if it exists; never
    /// creates one.
    pub fn touch(&self, labels: &L, now: Instant) {
        if let Some(last) = self.lock().get_mut(labels) {
            *last = now;
        }
    }

    /// Removes the series not touched since `now - grace`; returns how many.
    pub fn collect_garbage(&self, now: Instant, grace: Duration) -> usize {
        let mut touched = self.lock();
        let before = touched.len();
        touched.retain(|labels, last| {
            let keep = now.saturating_duration_since(*last) < grace;
            if !keep {
                self.family.remove(labels);
            }
            keep
        });
        let removed = before - touched.len();
        if removed > 0 {
            self.accounting.removed.get_or_create(&self.family_labels()).inc_by(removed as u64);
        }
        self.accounting.series.get_or_create(&self.family_labels()).set(gauge_value(touched.len()));
        removed
    }

    /// Series held now, the overflow series included.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no series is held.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

fn gauge_value(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// A metric that can be set to a value (gauges).
pub trait SetValue {
    /// Sets the value.
    fn set_value(&self, value: i64);
}

impl SetValue for Gauge {
    fn set_value(&self, value: i64) {
        self.set(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::labels::WorkloadLabels;

    fn workload(name: &str) -> WorkloadLabels {
        WorkloadLabels::new("Deployment", "ns", name, "")
    }

    #[test]
    fn new_series_past_the_cap_go_to_the_counted_overflow_series() {
        let accounting = SeriesAccounting::default();
        let family: BoundedFamily<WorkloadLabels, Counter> = BoundedFamily::new("test", 2, accounting.clone());
        let now = Instant::now();
        for name in ["a", "b", "c", "d", "a"] {
            family.with(&workload(name), now, |counter| {
                counter.inc();
            });
        }
        let inner = family.family();
        assert_eq!(inner.get(&workload("a")).map(|c| c.get()), Some(2));
        assert_eq!(inner.get(&workload("b")).map(|c| c.get()), Some(1));
        assert!(inner.get(&workload("c")).is_none());
        assert_eq!(inner.get(&WorkloadLabels::overflow()).map(|c| c.get()), Some(2));
        let labels = FamilyLabels { family: "test" };
        assert_eq!(accounting.overflow.get(&labels).map(|c| c.get()), Some(2));
        assert_eq!(accounting.series.get(&labels).map(|g| g.get()), Some(3));
    }

    #[test]
    fn idle_series_are_removed_after_the_grace_period_and_counted() {
        let accounting = SeriesAccounting::default();
        let family: BoundedFamily<WorkloadLabels, Counter> = BoundedFamily::new("test", 10, accounting.clone());
        let start = Instant::now();
        family.with(&workload("gone"), start, |counter| {
            counter.inc();
        });
        family.with(&workload("busy"), start, |counter| {
            counter.inc();
        });
        let later = start + Duration::from_secs(300);
        family.with(&workload("busy"), later, |counter| {
            counter.inc();
        });
        assert_eq!(family.collect_garbage(later + Duration::from_secs(60), Duration::from_secs(120)), 1);
        let inner = family.family();
        assert!(inner.get(&workload("gone")).is_none());
        assert_eq!(inner.get(&workload("busy")).map(|c| c.get()), Some(2));
        let labels = FamilyLabels { family: "test" };
        assert_eq!(accounting.removed.get(&labels).map(|c| c.get()), Some(1));
        // A removed series frees room under the cap.
        assert_eq!(family.len(), 1);
    }

    #[test]
    fn replace_keeps_only_the_current_state() {
        let family: BoundedFamily<WorkloadLabels, Gauge> = BoundedFamily::new("test", 10, SeriesAccounting::default());
        let now = Instant::now();
        family.replace(&[(workload("a"), 2), (workload("b"), 1)], now);
        family.replace(&[(workload("b"), 3)], now);
        let inner = family.family();
        assert!(inner.get(&workload("a")).is_none());
        assert_eq!(inner.get(&workload("b")).map(|g| g.get()), Some(3));
    }
}
