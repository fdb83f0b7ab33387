//! A metric family with a cap on its series and garbage collection of idle
//! series.
//!
//! In: observations under a label set, or through a [`Series`] handle held
//! for repeated use. Out: a prometheus-client [`Family`] that never holds
//! more than `cap` series plus one overflow series, whose overflow is
//! counted, and whose series untouched for the grace period are removed, so
//! the series of deleted pods and workloads go away instead of being exported
//! until the daemon restarts.
//!
//! A handle updates its series without hashing the label set: each series
//! has a shared "last used" stamp that the handle sets and the collector
//! reads. The collector marks a stamp removed (compare-and-swap against the
//! idle value it read) before removing the series, so an update either lands
//! on a live series or finds the mark and looks the labels up again. A
//! family may let handles refresh the stamp only every so often (a small
//! fraction of the grace period) while it has removed nothing since they last
//! looked, which saves a shared write per update.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
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

/// A series' last use, in nanoseconds since the family was made; [`REMOVED`]
/// once the series is gone.
type Stamp = Arc<AtomicU64>;

/// The stamp of a removed series.
const REMOVED: u64 = u64::MAX;

/// A [`Family`] of at most `cap` series (plus the overflow series) whose idle
/// series are removed by [`BoundedFamily::collect_garbage`].
#[derive(Debug)]
pub struct BoundedFamily<L, M> {
    name: &'static str,
    family: Family<L, M>,
    touched: Mutex<HashMap<L, Stamp>>,
    cap: usize,
    accounting: SeriesAccounting,
    /// Origin of the stamps.
    epoch: Instant,
    /// Series removed so far: a handle to the overflow series looks for room
    /// again when it changed.
    removals: AtomicU64,
    /// How long a handle may go without refreshing its stamp, in nanoseconds.
    stamp_refresh_ns: u64,
}

/// A handle to one series of a [`BoundedFamily`], for a caller that updates
/// the same label set often (the judge, per finding). Stays valid until the
/// series is removed; [`BoundedFamily::update`] then looks the labels up again.
#[derive(Clone, Debug)]
pub struct Series<M> {
    metric: M,
    stamp: Stamp,
    /// The family's removals when the series was last found live.
    checked: u64,
    /// The stamp this handle last wrote.
    stamped: u64,
    /// Set when the labels went to the overflow series: the family's
    /// overflow counter, counted on every update.
    overflow: Option<Counter>,
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
        Self {
            name,
            family: Family::default(),
            touched: Mutex::new(HashMap::new()),
            cap,
            accounting,
            epoch: Instant::now(),
            removals: AtomicU64::new(0),
            stamp_refresh_ns: 0,
        }
    }

    /// Lets handles refresh the stamp of their series only every `every`
    /// (by default, on every update): series are then collected up to
    /// `every` before the grace period has passed since their last use, so
    /// keep it a small fraction of the grace period.
    pub fn with_stamp_refresh(mut self, every: Duration) -> Self {
        self.stamp_refresh_ns = u64::try_from(every.as_nanos()).unwrap_or(u64::MAX);
        self
    }

    /// The family to register.
    pub fn family(&self) -> Family<L, M> {
        self.family.clone()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<L, Stamp>> {
        // The map holds plain timestamps: a panic elsewhere cannot leave it
        // inconsistent, so a poisoned lock is still usable.
        self.touched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn family_labels(&self) -> FamilyLabels {
        FamilyLabels { family: self.name }
    }

    fn stamp(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(REMOVED - 1).min(REMOVED - 1)
    }

    /// Runs `update` on the series of `labels` (or on the overflow series if
    /// `labels` is new and the family is full) and marks it used at `now`.
    pub fn with(&self, labels: &L, now: Instant, update: impl FnOnce(&M)) {
        let (target, overflowed, _) = self.acquire(labels, now);
        if overflowed {
            self.accounting.overflow.get_or_create(&self.family_labels()).inc();
        }
        update(&self.family.get_or_create(&target));
    }

    /// Marks the series of `labels` used at `now`, creating it (or, with the
    /// family full, taking the overflow series) if needed; returns the label
    /// set of the series, whether it is the overflow one, and its stamp.
    fn acquire(&self, labels: &L, now: Instant) -> (L, bool, Stamp) {
        let stamp = self.stamp(now);
        let mut touched = self.lock();
        if let Some(last) = touched.get(labels) {
            last.store(stamp, Ordering::Relaxed);
            return (labels.clone(), false, Arc::clone(last));
        }
        let overflow = L::overflow();
        // The overflow series sits beyond the cap so that it always has room.
        let held = touched.len() - usize::from(touched.contains_key(&overflow));
        let (target, overflowed) = if held < self.cap { (labels.clone(), false) } else { (overflow, true) };
        let last = match touched.get(&target) {
            Some(last) => {
                last.store(stamp, Ordering::Relaxed);
                Arc::clone(last)
            }
            None => {
                let last = Arc::new(AtomicU64::new(stamp));
                touched.insert(target.clone(), Arc::clone(&last));
                last
            }
        };
        self.accounting.series.get_or_create(&self.family_labels()).set(gauge_value(touched.len()));
        (target, overflowed, last)
    }

    /// A handle to the series of `labels` (the overflow series if `labels`
    /// is new and the family is full), marked used at `now`.
    fn series(&self, labels: &L, now: Instant) -> Series<M>
    where
        M: Clone,
    {
        // Read before the series is chosen: a removal in between only makes
        // the handle look again sooner.
        let removals = self.removals.load(Ordering::Acquire);
        let (target, overflowed, stamp) = self.acquire(labels, now);
        let overflow = overflowed.then(|| self.accounting.overflow.get_or_create(&self.family_labels()).clone());
        let metric = self.family.get_or_create(&target).clone();
        Series { metric, stamp, checked: removals, stamped: self.stamp(now), overflow }
    }

    /// Whether a handle still points where [`BoundedFamily::with`] would go,
    /// marking its series used at `stamp` if so.
    fn still_valid(&self, series: &mut Series<M>, stamp: u64) -> bool {
        let removals = self.removals.load(Ordering::Acquire);
        if removals == series.checked && stamp.saturating_sub(series.stamped) < self.stamp_refresh_ns {
            return true;
        }
        if series.overflow.is_some() && removals != series.checked {
            // Series were removed: there may be room for the labels' own now.
            return false;
        }
        let live = series
            .stamp
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| (last != REMOVED).then_some(last.max(stamp)))
            .is_ok();
        if live {
            (series.checked, series.stamped) = (removals, stamp);
        }
        live
    }

    /// Runs `update` on the series of `labels` and marks it used at `now`,
    /// as [`BoundedFamily::with`] does, through the handle `held`: the labels
    /// are built and looked up only when there is no handle yet, its series
    /// was removed, or it holds the overflow series and series were removed
    /// since (there may be room now).
    pub fn update(
        &self,
        held: &mut Option<Series<M>>,
        labels: impl FnOnce() -> L,
        now: Instant,
        update: impl FnOnce(&M),
    ) where
        M: Clone,
    {
        let stamp = self.stamp(now);
        let valid = held.as_mut().is_some_and(|series| self.still_valid(series, stamp));
        let series = match held {
            Some(series) if valid => series,
            _ => held.insert(self.series(&labels(), now)),
        };
        if let Some(overflow) = &series.overflow {
            overflow.inc();
        }
        update(&series.metric);
    }

    /// Removes the series of `labels` from the family; the caller holds the lock.
    fn remove(&self, labels: &L, stamp: &Stamp) {
        stamp.store(REMOVED, Ordering::Release);
        self.family.remove(labels);
        self.removals.fetch_add(1, Ordering::AcqRel);
    }

    /// Sets the series of the label sets in `current` to their values and
    /// removes every other series at once: for state the caller recomputes as
    /// a whole (unprotected workloads), where an absent series means zero.
    pub fn replace(&self, current: &[(L, i64)], now: Instant)
    where
        M: SetValue,
    {
        let mut touched = self.lock();
        touched.retain(|labels, stamp| {
            let keep = current.iter().any(|(kept, _)| kept == labels);
            if !keep {
                self.remove(labels, stamp);
            }
            keep
        });
        drop(touched);
        for (labels, value) in current {
            self.with(labels, now, |metric| metric.set_value(*value));
        }
        self.accounting.series.get_or_create(&self.family_labels()).set(gauge_value(self.lock().len()));
    }

    /// Removes the series not touched since `now - grace`; returns how many.
    pub fn collect_garbage(&self, now: Instant, grace: Duration) -> usize {
        let now = self.stamp(now);
        let grace = u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX);
        let mut touched = self.lock();
        let before = touched.len();
        touched.retain(|labels, stamp| {
            let last = stamp.load(Ordering::Acquire);
            if now.saturating_sub(last) < grace {
                return true;
            }
            // A handle that used the series since it was read keeps it.
            if stamp.compare_exchange(last, REMOVED, Ordering::AcqRel, Ordering::Acquire).is_err() {
                return true;
            }
            self.remove(labels, stamp);
            false
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
    fn handles_count_like_labels_and_look_again_after_removal_or_overflow() {
        let accounting = SeriesAccounting::default();
        let family: BoundedFamily<WorkloadLabels, Counter> = BoundedFamily::new("test", 1, accounting.clone());
        let start = Instant::now();
        let inc = |counter: &Counter| {
            counter.inc();
        };
        let (mut a, mut b) = (None, None);
        family.update(&mut a, || workload("a"), start, inc);
        // The family is full: b goes to the overflow series, counted on every update.
        family.update(&mut b, || workload("b"), start, inc);
        family.update(&mut b, || workload("b"), start, inc);
        let inner = family.family();
        assert_eq!(inner.get(&workload("a")).map(|c| c.get()), Some(1));
        assert_eq!(inner.get(&WorkloadLabels::overflow()).map(|c| c.get()), Some(2));
        let labels = FamilyLabels { family: "test" };
        assert_eq!(accounting.overflow.get(&labels).map(|c| c.get()), Some(2));
        // A used handle keeps its series alive; an idle one loses it.
        let later = start + Duration::from_secs(300);
        family.update(&mut b, || workload("b"), later, inc);
        assert_eq!(family.collect_garbage(later, Duration::from_secs(120)), 1, "a was idle");
        assert!(inner.get(&workload("a")).is_none());
        // a is counted again from zero; b finds the room a left.
        family.update(&mut a, || workload("a"), later, inc);
        assert_eq!(inner.get(&workload("a")).map(|c| c.get()), Some(1));
        family.collect_garbage(later + Duration::from_secs(200), Duration::from_secs(120));
        family.update(&mut b, || workload("b"), later + Duration::from_secs(200), inc);
        assert_eq!(inner.get(&workload("b")).map(|c| c.get()), Some(1));
        assert_eq!(accounting.overflow.get(&labels).map(|c| c.get()), Some(3));
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
