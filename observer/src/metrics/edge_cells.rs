//! Edge counters in one small cell per edge.
//!
//! In: bytes and packets each way, ended flows by outcome and verdicts,
//! counted on an edge's cell (the meter holds the cells of its edges and
//! counts a whole batch under one lock) or on an edge's labels. Out: the
//! series of the `edge_bytes`, `edge_packets`, `edge_flows` and `verdicts`
//! families, read at scrape time by [`super::edge_exposition`].
//!
//! The families are bounded as a [`super::bounded::BoundedFamily`] is: at
//! most `cap` series each, new series past it counted in one `__overflow__`
//! series (and each such observation in `series_overflow_total`), a series
//! untouched for the grace period removed (counted in `series_removed_total`)
//! and counted from zero if it comes back.
//!
//! Why cells: a record writes plain integers in two or three cache lines of
//! one slab, where a prometheus-client counter per series cost a pointer
//! chase and a cache miss each. `edge_bytes` and `edge_packets` are always
//! counted on the same observations, so each direction of an edge is one
//! series of both, with one stamp: the two families hold the same series.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};

use super::{
    FlowDelta,
    bounded::SeriesAccounting,
    labels::{EdgeLabels, FamilyLabels, Outcome, Overflow},
};
use crate::judge::VerdictKind;

/// When a series was last used: nanoseconds since the cells were made.
pub type Stamp = u64;

/// The outcomes, in the order of their series in a cell.
pub const OUTCOMES: [Outcome; 4] = [Outcome::Completed, Outcome::Refused, Outcome::Unanswered, Outcome::Evicted];

/// The verdicts, in the order of their series in a cell.
pub const VERDICTS: [VerdictKind; 5] = [
    VerdictKind::Allowed,
    VerdictKind::DeniedAttempt,
    VerdictKind::EnforcementGap,
    VerdictKind::IntentViolation,
    VerdictKind::Undecidable,
];

/// What a series of a cell counts, and where its bits sit in [`Cell::live`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Bytes and packets, by direction (to the destination, to the source).
    Traffic,
    /// Ended flows, by [`Outcome`].
    Flows,
    /// Judged flows, by [`VerdictKind`].
    Verdicts,
}

impl Kind {
    const ALL: [Self; 3] = [Self::Traffic, Self::Flows, Self::Verdicts];

    /// The bit of series `index` of this kind.
    fn bit(self, index: usize) -> u16 {
        let first = match self {
            Self::Traffic => 0,
            Self::Flows => 2,
            Self::Verdicts => 6,
        };
        1 << (first + index)
    }

    /// The bits of every series of this kind.
    fn mask(self) -> u16 {
        match self {
            Self::Traffic => 0b11,
            Self::Flows => 0b1111 << 2,
            Self::Verdicts => 0b1_1111 << 6,
        }
    }

    /// The families a series of this kind belongs to (by their index in
    /// [`EdgeCells::accounts`]).
    fn families(self) -> &'static [usize] {
        match self {
            Self::Traffic => &[0, 1],
            Self::Flows => &[2],
            Self::Verdicts => &[3],
        }
    }
}

/// The exposed names of the families, without the prefix.
pub const FAMILIES: [&str; 4] = ["edge_bytes", "edge_packets", "edge_flows", "verdicts"];

/// A count and when it was last used.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    /// The counter's value.
    pub count: u64,
    used: Stamp,
}

/// Traffic one way and when it was last used.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrafficTally {
    /// The `edge_bytes` counter's value.
    pub bytes: u64,
    /// The `edge_packets` counter's value.
    pub packets: u64,
    used: Stamp,
}

/// The series of one edge. Aligned so that the traffic sits in the first
/// cache line, the outcomes in the second, the verdicts from the third (the
/// fifth, `undecidable`, rarely counted, in the fourth).
#[derive(Clone, Debug, Default)]
#[repr(C, align(64))]
pub struct Cell {
    /// Which series are held, one bit each (see [`Kind`]); a series not held
    /// is not exposed and restarts from zero.
    live: u16,
    /// Meter edges counting on the cell: it is not reused while one does.
    refs: u32,
    /// By direction.
    pub traffic: [TrafficTally; 2],
    /// The edge; none while the cell is free.
    pub labels: Option<Arc<EdgeLabels>>,
    /// By [`OUTCOMES`].
    pub flows: [Tally; 4],
    /// By [`VERDICTS`].
    pub verdicts: [Tally; 5],
}

impl Cell {
    /// Whether series `index` of `kind` is held.
    pub fn holds(&self, kind: Kind, index: usize) -> bool {
        self.live & kind.bit(index) != 0
    }

    /// Whether any series of `kind` is held.
    pub fn holds_any(&self, kind: Kind) -> bool {
        self.live & kind.mask() != 0
    }

    /// Starts series `index` of `kind` from zero.
    fn start(&mut self, kind: Kind, index: usize) {
        self.live |= kind.bit(index);
        match kind {
            Kind::Traffic => self.traffic[index] = TrafficTally::default(),
            Kind::Flows => self.flows[index] = Tally::default(),
            Kind::Verdicts => self.verdicts[index] = Tally::default(),
        }
    }

    fn used(&self, kind: Kind, index: usize) -> Stamp {
        match kind {
            Kind::Traffic => self.traffic[index].used,
            Kind::Flows => self.flows[index].used,
            Kind::Verdicts => self.verdicts[index].used,
        }
    }

    /// Drops the series untouched since `now - grace`; returns how many of
    /// each kind.
    fn collect(&mut self, now: Stamp, grace: u64) -> [usize; 3] {
        let mut removed = [0; 3];
        for (count, kind) in removed.iter_mut().zip(Kind::ALL) {
            let series = match kind {
                Kind::Traffic => 2,
                Kind::Flows => OUTCOMES.len(),
                Kind::Verdicts => VERDICTS.len(),
            };
            for index in 0..series {
                if self.holds(kind, index) && now.saturating_sub(self.used(kind, index)) >= grace {
                    self.live &= !kind.bit(index);
                    *count += 1;
                }
            }
        }
        removed
    }
}

/// The accounting series of one family, fetched once.
#[derive(Debug)]
struct Account {
    series: Gauge,
    overflow: Counter,
    removed: Counter,
}

impl Account {
    fn new(name: &'static str, accounting: &SeriesAccounting) -> Self {
        let labels = FamilyLabels { family: name };
        Self {
            series: accounting.series.get_or_create(&labels).clone(),
            overflow: accounting.overflow.get_or_create(&labels).clone(),
            removed: accounting.removed.get_or_create(&labels).clone(),
        }
    }
}

/// The cells of every edge, their label index, and the overflow series.
#[derive(Debug)]
pub struct EdgeCells {
    cells: Vec<Cell>,
    free: Vec<u32>,
    index: HashMap<Arc<EdgeLabels>, u32>,
    /// The `__overflow__` series of each family: series 0 of each kind.
    overflow: Cell,
    /// Series held in `cells` per [`Kind`] (the overflow series not counted).
    held: [usize; 3],
    cap: usize,
    /// By [`FAMILIES`].
    accounts: [Account; 4],
    /// Origin of the stamps.
    epoch: Instant,
}

impl EdgeCells {
    /// Cells whose families hold at most `cap` series each, accounted in
    /// `accounting` (exposed at zero from the start).
    pub fn new(cap: usize, accounting: &SeriesAccounting) -> Self {
        let accounts = FAMILIES.map(|name| Account::new(name, accounting));
        for account in &accounts {
            account.series.set(0);
        }
        let overflow = Cell { labels: Some(Arc::new(EdgeLabels::overflow())), ..Cell::default() };
        Self {
            cells: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            overflow,
            held: [0; 3],
            cap,
            accounts,
            epoch: Instant::now(),
        }
    }

    /// The stamp of `now`.
    pub fn stamp(&self, now: Instant) -> Stamp {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The cell of `edge`, made (holding no series) if there is none.
    pub fn intern(&mut self, edge: &EdgeLabels) -> u32 {
        if let Some(cell) = self.index.get(edge) {
            return *cell;
        }
        let labels = Arc::new(edge.clone());
        let cell = Cell { labels: Some(Arc::clone(&labels)), ..Cell::default() };
        let index = match self.free.pop() {
            Some(index) => {
                self.cells[index as usize] = cell;
                index
            }
            None => {
                self.cells.push(cell);
                u32::try_from(self.cells.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.index.insert(labels, index);
        index
    }

    /// Keeps a cell from being reused until [`EdgeCells::release`]d.
    pub fn hold(&mut self, cell: u32) {
        if let Some(cell) = self.cells.get_mut(cell as usize) {
            cell.refs += 1;
        }
    }

    /// Undoes one [`EdgeCells::hold`]; the cell is freed once nothing holds
    /// it and it holds no series.
    pub fn release(&mut self, cell: u32) {
        if let Some(held) = self.cells.get_mut(cell as usize) {
            held.refs = held.refs.saturating_sub(1);
        }
        self.free_if_unused(cell);
    }

    /// Counts on the cell of `edge` without holding it, for callers that
    /// count by labels.
    pub fn with_edge(&mut self, edge: &EdgeLabels, count: impl FnOnce(&mut Self, u32)) {
        let cell = self.intern(edge);
        count(self, cell);
        self.free_if_unused(cell);
    }

    fn free_if_unused(&mut self, cell: u32) {
        let Some(unused) = self.cells.get_mut(cell as usize) else { return };
        if unused.live != 0 || unused.refs != 0 {
            return;
        }
        if let Some(labels) = unused.labels.take() {
            self.index.remove(&labels);
            self.free.push(cell);
        }
    }

    /// Where an observation of series `index` of `kind` on `cell` goes: its
    /// own series, started if there is room, else the overflow series
    /// (counted as overflow in each family of `kind`).
    fn target(&mut self, cell: u32, kind: Kind, index: usize) -> Option<(&mut Cell, usize)> {
        let held = self.cells.get(cell as usize)?.holds(kind, index);
        if held || self.held[kind as usize] < self.cap {
            if !held {
                self.held[kind as usize] += 1;
                self.cells.get_mut(cell as usize)?.start(kind, index);
                self.account_series(kind);
            }
            return Some((self.cells.get_mut(cell as usize)?, index));
        }
        for family in kind.families() {
            self.accounts[*family].overflow.inc();
        }
        if !self.overflow.holds(kind, 0) {
            self.overflow.start(kind, 0);
            self.account_series(kind);
        }
        Some((&mut self.overflow, 0))
    }

    /// Sets the series gauge of the families of `kind`.
    fn account_series(&self, kind: Kind) {
        let held = self.held[kind as usize] + usize::from(self.overflow.holds(kind, 0));
        for family in kind.families() {
            self.accounts[*family].series.set(i64::try_from(held).unwrap_or(i64::MAX));
        }
    }

    /// Counts a flow's traffic, and the flow itself if it ended, on `cell`.
    pub fn count_traffic(&mut self, cell: u32, delta: &FlowDelta, stamp: Stamp) {
        for (direction, traffic) in [delta.to_dst, delta.to_src].into_iter().enumerate() {
            if traffic.packets == 0 && traffic.bytes == 0 {
                continue;
            }
            if let Some((target, index)) = self.target(cell, Kind::Traffic, direction) {
                let tally = &mut target.traffic[index];
                tally.bytes = tally.bytes.wrapping_add(traffic.bytes);
                tally.packets = tally.packets.wrapping_add(traffic.packets);
                tally.used = tally.used.max(stamp);
            }
        }
        if let Some(outcome) = delta.ended
            && let Some((target, index)) = self.target(cell, Kind::Flows, outcome as usize)
        {
            target.flows[index].add(stamp);
        }
    }

    /// Counts a flow's verdict on `cell`.
    pub fn count_verdict(&mut self, cell: u32, verdict: VerdictKind, stamp: Stamp) {
        if let Some((target, index)) = self.target(cell, Kind::Verdicts, verdict as usize) {
            target.verdicts[index].add(stamp);
        }
    }

    /// Marks the traffic series `cell` holds used at `stamp`, so that an edge
    /// with open flows keeps them while quiet; starts none, and leaves the
    /// overflow series alone.
    pub fn keep_traffic(&mut self, cell: u32, stamp: Stamp) {
        let Some(cell) = self.cells.get_mut(cell as usize) else { return };
        for direction in 0..2 {
            if cell.holds(Kind::Traffic, direction) {
                let tally = &mut cell.traffic[direction];
                tally.used = tally.used.max(stamp);
            }
        }
    }

    /// Removes the series untouched since `now - grace`, frees the cells
    /// left unused; returns how many series were removed, per family.
    pub fn collect_garbage(&mut self, now: Instant, grace: Duration) -> usize {
        let now = self.stamp(now);
        let grace = u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX);
        let mut removed = [0; 3];
        for index in 0..self.cells.len() {
            let Some(cell) = self.cells.get_mut(index) else { continue };
            if cell.labels.is_none() {
                continue;
            }
            let gone = cell.collect(now, grace);
            for (total, gone) in removed.iter_mut().zip(gone) {
                *total += gone;
            }
            self.free_if_unused(u32::try_from(index).unwrap_or(u32::MAX));
        }
        for (held, gone) in self.held.iter_mut().zip(removed) {
            *held = held.saturating_sub(gone);
        }
        let overflow = self.overflow.collect(now, grace);
        let mut families = 0;
        for kind in Kind::ALL {
            let gone = removed[kind as usize] + overflow[kind as usize];
            for family in kind.families() {
                if gone > 0 {
                    self.accounts[*family].removed.inc_by(gone as u64);
                }
                families += gone;
            }
            self.account_series(kind);
        }
        families
    }

    /// A copy of the series held, for a scrape to encode without the lock.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            overflow: self.overflow.clone(),
            cells: self.cells.iter().filter(|cell| cell.live != 0).cloned().collect(),
        }
    }
}

/// The series held at one time.
#[derive(Debug)]
pub struct Snapshot {
    /// The overflow series: series 0 of each kind, under the overflow labels.
    pub overflow: Cell,
    /// The cells holding at least one series.
    pub cells: Vec<Cell>,
}

impl Tally {
    fn add(&mut self, stamp: Stamp) {
        self.count = self.count.wrapping_add(1);
        self.used = self.used.max(stamp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{flow::Traffic, metrics::labels::EndLabels};

    fn edge(dst: &str) -> EdgeLabels {
        EdgeLabels {
            src: EndLabels::new("Deployment", "shop", "agent"),
            dst: EndLabels::new("Deployment", "shop", dst),
            protocol: Arc::from("tcp"),
            reporter: super::super::Reporter::Src,
        }
    }

    fn traffic(bytes: u64, ended: Option<Outcome>) -> FlowDelta {
        FlowDelta { to_dst: Traffic { packets: 1, bytes }, to_src: Traffic { packets: 2, bytes: bytes * 10 }, ended }
    }

    fn account(accounting: &SeriesAccounting, family: &'static str) -> (i64, u64, u64) {
        let labels = FamilyLabels { family };
        let get = |counters: &prometheus_client::metrics::family::Family<FamilyLabels, Counter>| {
            counters.get(&labels).map(|counter| counter.get()).unwrap_or_default()
        };
        let series = accounting.series.get(&labels).map(|gauge| gauge.get()).unwrap_or_default();
        (series, get(&accounting.overflow), get(&accounting.removed))
    }

    impl EdgeCells {
        /// Cells in use (interned), free ones not counted.
        fn interned(&self) -> usize {
            self.index.len()
        }
    }

    #[test]
    fn series_orders_follow_the_discriminants() {
        for (index, outcome) in OUTCOMES.into_iter().enumerate() {
            assert_eq!(outcome as usize, index);
        }
        for (index, verdict) in VERDICTS.into_iter().enumerate() {
            assert_eq!(verdict as usize, index);
        }
        assert_eq!(std::mem::size_of::<Cell>(), 256, "traffic, outcomes and verdicts each from a cache line");
    }

    #[test]
    fn series_past_the_cap_go_to_the_overflow_series_counted_in_each_family() {
        let accounting = SeriesAccounting::default();
        let mut cells = EdgeCells::new(2, &accounting);
        let stamp = cells.stamp(Instant::now());
        let (a, b) = (cells.intern(&edge("a")), cells.intern(&edge("b")));
        cells.count_traffic(a, &traffic(100, Some(Outcome::Refused)), stamp);
        cells.count_verdict(a, VerdictKind::Allowed, stamp);
        // Both directions of a fill the traffic families: b's go to the overflow series (direction to_dst).
        cells.count_traffic(b, &traffic(7, Some(Outcome::Completed)), stamp);
        cells.count_traffic(b, &traffic(7, None), stamp);
        let snapshot = cells.snapshot();
        let overflow = &snapshot.overflow;
        assert_eq!((overflow.traffic[0].bytes, overflow.traffic[0].packets), (154, 6));
        assert!(!overflow.holds(Kind::Traffic, 1) && !overflow.holds_any(Kind::Flows));
        assert_eq!(snapshot.cells.len(), 2);
        let cell_b = &snapshot.cells[1];
        assert!(!cell_b.holds_any(Kind::Traffic), "b holds no traffic series");
        assert_eq!(cell_b.flows[0].count, 1, "room for b's completed flows");
        for family in ["edge_bytes", "edge_packets"] {
            assert_eq!(account(&accounting, family), (3, 4, 0), "{family}: a's two series and the overflow's");
        }
        assert_eq!(account(&accounting, "edge_flows"), (2, 0, 0));
        assert_eq!(account(&accounting, "verdicts"), (1, 0, 0));
    }

    #[test]
    fn idle_series_are_removed_and_count_again_from_zero() {
        let accounting = SeriesAccounting::default();
        let mut cells = EdgeCells::new(10, &accounting);
        let start = Instant::now();
        let grace = Duration::from_secs(120);
        let a = cells.intern(&edge("a"));
        cells.hold(a);
        cells.count_traffic(a, &traffic(100, Some(Outcome::Completed)), cells.stamp(start));
        cells.count_verdict(a, VerdictKind::DeniedAttempt, cells.stamp(start));
        let later = start + Duration::from_secs(100);
        cells.count_verdict(a, VerdictKind::DeniedAttempt, cells.stamp(later));
        // Traffic both ways (2 series × 2 families) and the flows series went idle; the verdict did not.
        assert_eq!(cells.collect_garbage(start + grace, grace), 5);
        assert_eq!(account(&accounting, "edge_bytes"), (0, 0, 2));
        assert_eq!(account(&accounting, "edge_flows"), (0, 0, 1));
        assert_eq!(account(&accounting, "verdicts"), (1, 0, 0));
        cells.count_traffic(a, &traffic(5, None), cells.stamp(start + grace));
        let snapshot = cells.snapshot();
        assert_eq!(snapshot.cells[0].traffic[0].bytes, 5, "counted from zero");
        assert_eq!(snapshot.cells[0].verdicts[VerdictKind::DeniedAttempt as usize].count, 2);
        // Held, the cell stays while it holds no series; released, it goes.
        assert_eq!(cells.collect_garbage(start + grace * 3, grace), 5);
        assert_eq!(cells.interned(), 1);
        cells.release(a);
        assert_eq!(cells.interned(), 0);
        assert_eq!(cells.intern(&edge("b")), a, "the free cell is reused");
    }

    #[test]
    fn kept_traffic_outlives_the_grace_period_and_nothing_else_does() {
        let accounting = SeriesAccounting::default();
        let mut cells = EdgeCells::new(1, &accounting);
        let start = Instant::now();
        let grace = Duration::from_secs(120);
        let (a, b) = (cells.intern(&edge("a")), cells.intern(&edge("b")));
        cells.hold(a);
        cells.count_traffic(a, &FlowDelta { to_dst: Traffic { packets: 1, bytes: 1 }, ..FlowDelta::default() }, 0);
        cells.count_verdict(a, VerdictKind::Allowed, cells.stamp(start));
        cells.count_traffic(b, &traffic(1, None), cells.stamp(start));
        for cell in [a, b] {
            cells.keep_traffic(cell, cells.stamp(start + grace));
        }
        // a's to_dst series stays; its verdict, and the overflow series b counted on, go.
        assert_eq!(cells.collect_garbage(start + grace + Duration::from_secs(1), grace), 3);
        let snapshot = cells.snapshot();
        assert!(!snapshot.overflow.holds_any(Kind::Traffic));
        assert_eq!(snapshot.cells.len(), 1);
        assert!(snapshot.cells[0].holds(Kind::Traffic, 0) && !snapshot.cells[0].holds_any(Kind::Verdicts));
        assert_eq!(cells.interned(), 1, "b, unheld and empty, was freed");
    }
}
