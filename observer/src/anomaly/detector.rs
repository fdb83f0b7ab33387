//! The spike detector: one online baseline per edge and signal.
//!
//! In: per edge (source workload → destination workload, Service or address,
//! and port), new connections and bytes with their time, as they are seen.
//! Out: a [`Spike`] when the current window's new-connection count or byte
//! count leaves the edge's baseline.
//!
//! Time is cut into fixed windows. Counts are compared on the log scale,
//! `ln(1 + x)`, so a tenfold rise is the same step at any volume and noise
//! that scales with the rate has a constant spread. Each edge keeps, per
//! signal, a recent baseline (exponentially weighted mean and variance of the
//! closed windows, see `baseline.rs`) and, optionally, a seasonal one per
//! time-of-day bucket that forgets at half weight per period. A window is a
//! spike when, after warm-up, its count reaches the minimum volume and exceeds
//! the recent baseline (and the seasonal one, once that bucket has seen a
//! full period) by more than `sensitivity` standard deviations and by more
//! than `min_ratio` times. The running window is checked on every event, so a
//! step is flagged in the window it starts in, or the next if it starts late.
//! A cooldown follows each spike; spike windows feed the baselines like any
//! other, so a lasting step becomes the new normal instead of firing forever.
//! Idle windows count as zero, up to `max_idle_windows` of them.
//!
//! The recent baseline is kept per version of the edge (the revisions its
//! source and destination workloads run, see `rollout.rs`): when a version
//! comes that the edge has not learned, a new baseline starts for it, and
//! until that one has warmed up (`warmup_windows`) the running window is
//! compared with the last warm baseline of the version before (and with what
//! the new one has done so far, once it has closed a window), so a new model
//! version is held to the old one's traffic in its first minutes and to its
//! own after. The older baseline is dropped once the new one is warm
//! (a rollback to it before then takes it back), so an edge holds at most two.
//! The seasonal baseline describes the edge's time of day, not a version,
//! and is kept across versions.
//!
//! Each event is O(1); edges are capped (least recently seen forgotten, counted).

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::{
    baseline::Ewma,
    lru::{Handle, Lru},
};
use crate::{intent::FlowEnd, inventory::EndpointKind};

/// Settings of the spike detector.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpikeConfig {
    /// Length of a window in seconds. Default: 60.
    pub window_seconds: u64,
    /// Weight of the newest window in the recent baseline (0 to 1): higher
    /// follows changes faster. Default: 0.1 (about the last 20 windows).
    pub alpha: f64,
    /// Windows an edge must have before it can spike. Default: 15.
    pub warmup_windows: u32,
    /// Fewest new connections in a window for a connection spike. Default: 20.
    pub min_connections: u64,
    /// Fewest bytes in a window for a byte spike. Default: 1 MiB.
    pub min_bytes: u64,
    /// Standard deviations above the baseline a spike must reach: higher
    /// flags less. Default: 4.
    pub sensitivity: f64,
    /// Times the baseline a spike must reach, whatever the deviation. Default: 3.
    pub min_ratio: f64,
    /// Windows after a spike during which the edge does not spike again. Default: 10.
    pub cooldown_windows: u32,
    /// Time-of-day buckets of the seasonal baseline; 0 turns it off. Default: 24.
    pub seasonal_buckets: u32,
    /// Period of the seasonal baseline in seconds. Default: 86400 (a day).
    pub seasonal_period_seconds: u64,
    /// Most idle windows folded into the baselines as zeros when an edge comes
    /// back. Default: 60.
    pub max_idle_windows: u32,
    /// Most edges tracked; the least recently seen are forgotten. Default: 16384.
    pub max_edges: usize,
    /// A spike this many seconds or fewer after its source or destination
    /// workload changed revision names that rollout in its finding
    /// (`evidence.after_rollout`); 0 never does. Default: 900 (15 minutes).
    pub after_rollout_seconds: u64,
}

impl Default for SpikeConfig {
    fn default() -> Self {
        Self {
            window_seconds: 60,
            alpha: 0.1,
            warmup_windows: 15,
            min_connections: 20,
            min_bytes: 1 << 20,
            sensitivity: 4.0,
            min_ratio: 3.0,
            cooldown_windows: 10,
            seasonal_buckets: 24,
            seasonal_period_seconds: 86_400,
            max_idle_windows: 60,
            max_edges: 16_384,
            after_rollout_seconds: 900,
        }
    }
}

/// The edge a spike is on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct EdgeKey {
    /// The source: `namespace/Kind/name` of its workload, else its address.
    pub source: Arc<str>,
    /// The destination: its workload, `namespace/service` of a Service, or its address.
    pub destination: Arc<str>,
    /// Destination port (0 for none).
    pub port: u16,
}

impl fmt::Display for EdgeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}:{}", self.source, self.destination, self.port)
    }
}

/// How an end is named in an edge.
fn edge_name(end: &FlowEnd<'_>) -> Arc<str> {
    match (end.kind, end.namespace, end.workload, end.service) {
        (EndpointKind::Pod, Some(namespace), Some(workload), _) => {
            format!("{namespace}/{}/{}", workload.kind, workload.name).into()
        }
        (EndpointKind::Service, Some(namespace), _, Some(service)) => format!("{namespace}/service/{service}").into(),
        _ => end.ip.to_string().into(),
    }
}

impl EdgeKey {
    /// The edge of a flow from `src` to `dst`.
    pub fn between(src: &FlowEnd<'_>, dst: &FlowEnd<'_>) -> Self {
        Self { source: edge_name(src), destination: edge_name(dst), port: dst.port.unwrap_or(0) }
    }
}

/// Where the detector keeps an edge's state, for a caller that observes the
/// same edge often ([`SpikeDetector::observe_held`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EdgeHandle(Handle);

/// The two signals watched per edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Signal {
    /// New connections per window.
    NewConnections,
    /// Bytes per window, both directions.
    Bytes,
}

impl Signal {
    /// The name used in findings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NewConnections => "new-connections",
            Self::Bytes => "bytes",
        }
    }
}

const SIGNALS: [Signal; 2] = [Signal::NewConnections, Signal::Bytes];

/// Which baseline a spike was measured against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Baseline {
    /// The edge's own, learned from the versions of its ends running now.
    Own,
    /// The one learned before the latest version came, which has not warmed
    /// up yet.
    PreviousRevision,
}

/// An edge whose rate left its baseline.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Spike {
    /// The edge.
    pub edge: EdgeKey,
    /// Which signal.
    pub signal: Signal,
    /// Start of the window.
    #[serde(skip)]
    pub window_start: SystemTime,
    /// Length of the window in seconds.
    pub window_seconds: u64,
    /// Count in the window when it was flagged.
    pub observed: u64,
    /// What the recent baseline expected per window.
    pub expected: f64,
    /// What the seasonal baseline expected for this time of day, when it took part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seasonal_expected: Option<f64>,
    /// How far above the recent baseline, in its standard deviations (on the log scale).
    pub score: f64,
    /// Which recent baseline it was measured against.
    pub baseline: Baseline,
}

/// Baselines and the running window of one edge.
#[derive(Clone, Debug)]
struct EdgeState {
    /// Index of the running window.
    window: u64,
    /// Counts of the running window.
    counts: [u64; 2],
    /// The version of the edge's ends that `recent` learns.
    version: u64,
    recent: [Ewma; 2],
    /// Windows `recent` has learned (saturating).
    closed: u32,
    /// The last warm baseline of an earlier version, while `recent` warms up.
    previous: Option<Box<Previous>>,
    /// Per time-of-day bucket; empty when seasonality is off.
    seasonal: Box<[[Ewma; 2]]>,
    /// First window that may spike again.
    quiet_until: u64,
}

/// A warm recent baseline of a version the edge ran before.
#[derive(Clone, Debug)]
struct Previous {
    version: u64,
    recent: [Ewma; 2],
    closed: u32,
}

/// Counts of what the detector did, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpikeStats {
    /// Edges tracked now.
    pub edges: usize,
    /// Edges forgotten because the cap was reached.
    pub evicted: u64,
    /// Spikes reported.
    pub spikes: u64,
}

/// The settings, with what follows from them.
#[derive(Debug)]
struct Params {
    config: SpikeConfig,
    /// Windows in one seasonal bucket.
    windows_per_bucket: u64,
    /// Weight of a window in its seasonal bucket: a whole visit to the bucket
    /// (one period) carries half the weight.
    seasonal_alpha: f64,
    /// `ln(min_ratio)`.
    min_gap: f64,
}

/// Spike detection over every edge.
#[derive(Debug)]
pub struct SpikeDetector {
    params: Params,
    edges: Lru<EdgeKey, EdgeState>,
    evicted: u64,
    spikes: u64,
}

impl SpikeDetector {
    /// A detector with no edges yet. Out-of-range settings are clamped: a
    /// window of at least a second, `alpha` within (0, 1], a ratio of at least 1.
    pub fn new(mut config: SpikeConfig) -> Self {
        config.window_seconds = config.window_seconds.max(1);
        config.alpha = config.alpha.clamp(1e-6, 1.0);
        config.min_ratio = config.min_ratio.max(1.0);
        let windows_per_bucket = match config.seasonal_buckets {
            0 => 0,
            buckets => (config.seasonal_period_seconds / u64::from(buckets) / config.window_seconds).max(1),
        };
        let seasonal_alpha =
            if windows_per_bucket == 0 { 0.0 } else { 1.0 - 0.5_f64.powf(1.0 / windows_per_bucket as f64) };
        Self {
            edges: Lru::new(config.max_edges),
            params: Params { windows_per_bucket, seasonal_alpha, min_gap: config.min_ratio.ln(), config },
            evicted: 0,
            spikes: 0,
        }
    }

    /// What the detector did so far.
    pub fn stats(&self) -> SpikeStats {
        SpikeStats { edges: self.edges.len(), evicted: self.evicted, spikes: self.spikes }
    }

    /// Records `new_connections` and `bytes` on `edge` at `at`; returns a spike
    /// if the running window now leaves the baseline.
    pub fn observe(&mut self, edge: &EdgeKey, at: SystemTime, new_connections: u64, bytes: u64) -> Option<Spike> {
        self.observe_held(&mut None, edge, 0, at, new_connections, bytes)
    }

    /// [`SpikeDetector::observe`] on an edge whose ends run `version` (any
    /// number that changes when the revision of either end's workload does,
    /// see [`edge_version`](super::edge_version)): each version learns its
    /// own baseline, measured against the previous one's until warm.
    pub fn observe_version(
        &mut self,
        edge: &EdgeKey,
        version: u64,
        at: SystemTime,
        new_connections: u64,
        bytes: u64,
    ) -> Option<Spike> {
        self.observe_held(&mut None, edge, version, at, new_connections, bytes)
    }

    /// [`SpikeDetector::observe_version`] through the handle `held` of
    /// `edge`'s state, which it sets: the edge is looked up by its names only
    /// when the handle is unset or its state was forgotten since.
    pub(crate) fn observe_held(
        &mut self,
        held: &mut Option<EdgeHandle>,
        edge: &EdgeKey,
        version: u64,
        at: SystemTime,
        new_connections: u64,
        bytes: u64,
    ) -> Option<Spike> {
        let seconds = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let window = seconds / self.params.config.window_seconds;
        let state = match held.and_then(|handle| self.edges.get_mut_at(handle.0)) {
            Some(state) => state,
            None => {
                let params = &self.params;
                let found = self.edges.get_or_insert_with(edge, || params.empty(window, version))?;
                self.evicted += u64::from(found.evicted.is_some());
                *held = Some(EdgeHandle(found.handle));
                found.value
            }
        };
        // A late event counts in the running window.
        if window > state.window {
            self.params.advance(state, window);
        }
        // The windows closed before the new version came were the old one's.
        if version != state.version {
            self.params.switch(state, version);
        }
        state.counts[0] = state.counts[0].saturating_add(new_connections);
        state.counts[1] = state.counts[1].saturating_add(bytes);
        let spike = self.params.check(edge, state);
        self.spikes += u64::from(spike.is_some());
        spike
    }
}

impl Params {
    fn empty(&self, window: u64, version: u64) -> EdgeState {
        let buckets = self.config.seasonal_buckets as usize;
        EdgeState {
            window,
            counts: [0, 0],
            version,
            recent: [Ewma::default(); 2],
            closed: 0,
            previous: None,
            seasonal: vec![[Ewma::default(); 2]; buckets].into_boxed_slice(),
            quiet_until: 0,
        }
    }

    fn warm(&self, closed: u32) -> bool {
        closed >= self.config.warmup_windows
    }

    /// The edge's ends now run `version`: its baseline starts anew (or is
    /// the one kept of that version, on a rollback), and the one it had is
    /// kept to measure against while the new one warms up, if it was warm.
    fn switch(&self, state: &mut EdgeState, version: u64) {
        let outgoing = self
            .warm(state.closed)
            .then(|| Box::new(Previous { version: state.version, recent: state.recent, closed: state.closed }));
        let returning = state.previous.take_if(|previous| previous.version == version);
        match returning {
            Some(returning) => {
                state.recent = returning.recent;
                state.closed = returning.closed;
                state.previous = outgoing;
            }
            None => {
                state.recent = [Ewma::default(); 2];
                state.closed = 0;
                // A version that never warmed up leaves the one before it in place.
                if outgoing.is_some() {
                    state.previous = outgoing;
                }
            }
        }
        state.version = version;
    }

    fn bucket(&self, window: u64) -> usize {
        let buckets = u64::from(self.config.seasonal_buckets);
        if buckets == 0 {
            return 0;
        }
        // Windows count from the Unix epoch, so buckets line up with the clock.
        ((window / self.windows_per_bucket) % buckets) as usize
    }

    /// Feeds one closed window into the baselines.
    fn feed(&self, state: &mut EdgeState, window: u64, counts: [u64; 2]) {
        let bucket = self.bucket(window);
        for (index, count) in counts.iter().enumerate() {
            let value = (*count as f64).ln_1p();
            state.recent[index].update(value, self.config.alpha);
            if let Some(stats) = state.seasonal.get_mut(bucket) {
                stats[index].update(value, self.seasonal_alpha);
            }
        }
        state.closed = state.closed.saturating_add(1);
        if state.previous.is_some() && self.warm(state.closed) {
            // The new version is measured against itself from now on.
            state.previous = None;
        }
    }

    /// Closes the running window and the idle ones up to `window`.
    fn advance(&self, state: &mut EdgeState, window: u64) {
        self.feed(state, state.window, state.counts);
        let idle = (window - state.window - 1).min(u64::from(self.config.max_idle_windows));
        for offset in 1..=idle {
            self.feed(state, state.window + offset, [0, 0]);
        }
        state.window = window;
        state.counts = [0, 0];
    }

    fn check(&self, edge: &EdgeKey, state: &mut EdgeState) -> Option<Spike> {
        if state.window < state.quiet_until {
            return None;
        }
        let (recents, baseline) = if self.warm(state.closed) {
            (&state.recent, Baseline::Own)
        } else {
            (&state.previous.as_ref()?.recent, Baseline::PreviousRevision)
        };
        let minimum = [self.config.min_connections, self.config.min_bytes];
        let bucket = self.bucket(state.window);
        for (index, signal) in SIGNALS.iter().enumerate() {
            let observed = state.counts[index];
            if observed < minimum[index] {
                continue;
            }
            let value = (observed as f64).ln_1p();
            let recent = &recents[index];
            if !recent.exceeded_by(value, self.config.sensitivity, self.min_gap) {
                continue;
            }
            // Measured against the version before, a window must also rise
            // above what the new version has done so far: its lasting step is
            // reported once, not again when the cooldown ends before it warms up.
            let own = &state.recent[index];
            if baseline == Baseline::PreviousRevision
                && state.closed > 0
                && !own.exceeded_by(value, self.config.sensitivity, self.min_gap)
            {
                continue;
            }
            // The seasonal bucket takes part once it has seen a whole period's
            // visit, and only to excuse a rise it expects: this time of day is
            // busier than the recent past. Its spread includes day-to-day
            // change, so letting it veto otherwise would hide spikes on edges
            // whose level moved (a ramp) behind a wide seasonal band.
            let seasonal = state
                .seasonal
                .get(bucket)
                .map(|stats| stats[index])
                .filter(|stats| u64::from(stats.count()) >= self.windows_per_bucket);
            let expected_rise = seasonal.filter(|stats| stats.mean() > recent.mean());
            if expected_rise.is_some_and(|stats| !stats.exceeded_by(value, self.config.sensitivity, self.min_gap)) {
                continue;
            }
            state.quiet_until = state.window + 1 + u64::from(self.config.cooldown_windows);
            let deviation = recent.deviation();
            let gap = value - recent.mean();
            return Some(Spike {
                edge: edge.clone(),
                signal: *signal,
                window_start: UNIX_EPOCH + Duration::from_secs(state.window * self.config.window_seconds),
                window_seconds: self.config.window_seconds,
                observed,
                expected: recent.mean().exp_m1(),
                seasonal_expected: seasonal.map(|stats| stats.mean().exp_m1()),
                // A flat baseline has no spread: report the gap over a tiny one.
                score: gap / deviation.max(1e-3),
                baseline,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state<'a>(detector: &'a mut SpikeDetector, edge: &EdgeKey) -> &'a EdgeState {
        detector.edges.get_mut(edge).expect("tracked")
    }

    #[test]
    fn an_old_versions_baseline_is_dropped_once_the_new_one_is_warm() {
        let config = SpikeConfig { seasonal_buckets: 0, warmup_windows: 3, ..SpikeConfig::default() };
        let mut detector = SpikeDetector::new(config);
        let edge =
            EdgeKey { source: "ai/Deployment/agent".into(), destination: "ai/Deployment/model".into(), port: 80 };
        let at = |window: u64| UNIX_EPOCH + Duration::from_secs(600 + window * 60);
        for window in 0..5 {
            detector.observe_version(&edge, 1, at(window), 40, 0);
        }
        assert!(state(&mut detector, &edge).previous.is_none(), "one version: one baseline");
        // Three versions in a row, none warm: only the last warm one (1) is kept.
        for (window, version) in [(5, 2), (6, 3), (7, 4)] {
            detector.observe_version(&edge, version, at(window), 40, 0);
            let held = state(&mut detector, &edge);
            assert_eq!(held.previous.as_ref().map(|previous| previous.version), Some(1), "at version {version}");
            assert_eq!((held.version, held.closed), (version, 0));
        }
        // Version 4 closes its third window: warm, and version 1's baseline goes.
        for window in 8..=9 {
            detector.observe_version(&edge, 4, at(window), 40, 0);
            assert!(state(&mut detector, &edge).previous.is_some(), "window {window}: still warming up");
        }
        detector.observe_version(&edge, 4, at(10), 40, 0);
        let held = state(&mut detector, &edge);
        assert_eq!((held.closed, held.previous.is_none()), (3, true));
        // A memory bound that does not depend on versions: the state's size.
        assert!(std::mem::size_of::<EdgeState>() <= 96, "{}", std::mem::size_of::<EdgeState>());
    }
}
