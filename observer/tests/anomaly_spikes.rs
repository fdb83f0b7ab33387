//! The spike detector on synthetic series: what it must flag and what it must not.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use observer::anomaly::{Baseline, EdgeKey, Signal, SpikeConfig, SpikeDetector};

mod anomaly_support;

use anomaly_support::Rng;

const MINUTE: u64 = 60;
const DAY_WINDOWS: u64 = 1440;

fn edge() -> EdgeKey {
    EdgeKey { source: Arc::from("ai/Deployment/agent"), destination: Arc::from("ai/Deployment/model"), port: 8080 }
}

/// Window `index` starts here; a fixed day boundary keeps time-of-day buckets aligned.
fn at(index: u64, second: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_006_400 + index * MINUTE + second)
}

/// Feeds each window's connections as four events spread through the window
/// (bytes at 2 KiB per connection); returns the windows flagged.
fn run(detector: &mut SpikeDetector, series: &[u64]) -> Vec<u64> {
    let edge = edge();
    let mut flagged = Vec::new();
    for (index, connections) in series.iter().enumerate() {
        let index = index as u64;
        for part in 0..4 {
            let share = connections / 4 + u64::from(part < connections % 4);
            if let Some(spike) = detector.observe(&edge, at(index, part * 15), share, share * 2048) {
                assert_eq!(spike.edge, edge);
                flagged.push(index);
            }
        }
    }
    flagged
}

#[test]
fn steady_series_with_noise_is_not_flagged() {
    let mut rng = Rng(1);
    let series: Vec<u64> = (0..3 * DAY_WINDOWS).map(|_| rng.noisy(60.0, 0.4)).collect();
    let mut detector = SpikeDetector::new(SpikeConfig::default());
    assert_eq!(run(&mut detector, &series), Vec::<u64>::new());
}

#[test]
fn tenfold_step_is_flagged_within_two_windows_and_once() {
    let mut rng = Rng(2);
    let step = 300;
    let series: Vec<u64> = (0..600).map(|index| rng.noisy(if index < step { 50.0 } else { 500.0 }, 0.3)).collect();
    let mut detector = SpikeDetector::new(SpikeConfig::default());
    let flagged = run(&mut detector, &series);
    assert_eq!(flagged.len(), 1, "a lasting step is reported once, then learned: {flagged:?}");
    assert!((step..step + 2).contains(&flagged[0]), "flagged at {flagged:?}");
    assert_eq!(detector.stats().spikes, 1);
}

#[test]
fn step_starting_late_in_a_window_is_flagged_by_the_next() {
    let mut detector = SpikeDetector::new(SpikeConfig::default());
    let edge = edge();
    for index in 0..100 {
        assert!(detector.observe(&edge, at(index, 0), 40, 40 * 2048).is_none());
    }
    // The last seconds of window 100 and then window 101 at ten times the rate.
    assert!(detector.observe(&edge, at(100, 0), 40, 40 * 2048).is_none());
    let late = detector.observe(&edge, at(100, 55), 40, 40 * 2048);
    let next = detector.observe(&edge, at(101, 1), 400, 400 * 2048);
    let spike = late.or(next).expect("flagged within two windows");
    assert_eq!(spike.signal, Signal::NewConnections);
    assert!(spike.observed >= 400 && spike.expected < 50.0, "{spike:?}");
}

#[test]
fn slow_ramp_is_not_flagged() {
    let mut rng = Rng(3);
    // Tenfold over a day, with noise.
    let series: Vec<u64> = (0..2 * DAY_WINDOWS)
        .map(|index| {
            let growth = 10f64.powf((index as f64 / DAY_WINDOWS as f64).min(1.0));
            rng.noisy(40.0 * growth, 0.3)
        })
        .collect();
    let mut detector = SpikeDetector::new(SpikeConfig::default());
    assert_eq!(run(&mut detector, &series), Vec::<u64>::new());
}

/// Business hours: ten times the night rate from 09:20 to 17:20, every day.
fn daily(days: u64, seed: u64) -> Vec<u64> {
    let mut rng = Rng(seed);
    (0..days * DAY_WINDOWS)
        .map(|index| {
            let minute = index % DAY_WINDOWS;
            let busy = (9 * 60 + 20..17 * 60 + 20).contains(&minute);
            rng.noisy(if busy { 400.0 } else { 40.0 }, 0.3)
        })
        .collect()
}

#[test]
fn daily_pattern_is_not_flagged_once_learned() {
    let mut detector = SpikeDetector::new(SpikeConfig::default());
    let flagged = run(&mut detector, &daily(5, 4));
    assert!(!flagged.is_empty() && flagged.iter().all(|index| *index < DAY_WINDOWS), "only the first day: {flagged:?}");
}

#[test]
fn without_seasonality_the_daily_pattern_is_flagged_every_day() {
    let mut detector = SpikeDetector::new(SpikeConfig { seasonal_buckets: 0, ..SpikeConfig::default() });
    let flagged = run(&mut detector, &daily(5, 4));
    for day in 0..5 {
        assert!(flagged.iter().any(|index| index / DAY_WINDOWS == day), "day {day}: {flagged:?}");
    }
}

#[test]
fn spike_on_a_learned_daily_pattern_is_still_flagged() {
    let mut series = daily(4, 5);
    // Day 4, 03:00 (quiet hours): ten times the night rate for five windows.
    let start = 3 * DAY_WINDOWS + 3 * 60;
    for value in &mut series[start as usize..start as usize + 5] {
        *value *= 10;
    }
    let mut detector = SpikeDetector::new(SpikeConfig::default());
    let flagged: Vec<u64> = run(&mut detector, &series).into_iter().filter(|index| *index >= DAY_WINDOWS).collect();
    assert_eq!(flagged, vec![start]);
}

#[test]
fn low_volume_edges_do_not_spike() {
    let mut rng = Rng(6);
    let series: Vec<u64> = (0..600).map(|index| if index % 50 == 0 { 15 } else { rng.noisy(1.0, 1.0) }).collect();
    let mut detector = SpikeDetector::new(SpikeConfig::default());
    assert_eq!(run(&mut detector, &series), Vec::<u64>::new());
}

#[test]
fn byte_spike_without_more_connections_is_flagged_as_bytes() {
    let mut detector = SpikeDetector::new(SpikeConfig::default());
    let edge = edge();
    for index in 0..60 {
        assert!(detector.observe(&edge, at(index, 0), 30, 3 << 20).is_none());
    }
    let spike = detector.observe(&edge, at(60, 0), 30, 60 << 20).expect("exfiltration-like jump");
    assert_eq!(spike.signal, Signal::Bytes);
}

#[test]
fn sensitivity_trades_flags_for_misses() {
    let mut rng = Rng(7);
    // A threefold step: flagged at the default ratio, not when asking for five.
    let series: Vec<u64> = (0..400).map(|index| rng.noisy(if index < 200 { 100.0 } else { 330.0 }, 0.1)).collect();
    let mut default = SpikeDetector::new(SpikeConfig::default());
    assert_eq!(run(&mut default, &series).len(), 1);
    let mut strict = SpikeDetector::new(SpikeConfig { min_ratio: 5.0, ..SpikeConfig::default() });
    assert!(run(&mut strict, &series).is_empty());
}

#[test]
fn edges_are_capped_and_evictions_counted() {
    let mut detector = SpikeDetector::new(SpikeConfig { max_edges: 100, ..SpikeConfig::default() });
    for port in 0..250u16 {
        let edge = EdgeKey { port, ..edge() };
        detector.observe(&edge, at(0, 0), 1, 100);
    }
    let stats = detector.stats();
    assert_eq!((stats.edges, stats.evicted), (100, 150));
}

/// A detector without the seasonal baseline, so that the recent ones decide alone.
fn plain() -> SpikeDetector {
    SpikeDetector::new(SpikeConfig { seasonal_buckets: 0, ..SpikeConfig::default() })
}

/// Feeds window `start + i` its `(version, connections)`, in one event at the
/// window's start (bytes at 2 KiB per connection); returns the spikes by window.
fn run_versions(detector: &mut SpikeDetector, start: u64, series: &[(u64, u64)]) -> Vec<(u64, Baseline, f64)> {
    let edge = edge();
    let mut flagged = Vec::new();
    for (offset, (version, connections)) in series.iter().enumerate() {
        let index = start + offset as u64;
        if let Some(spike) = detector.observe_version(&edge, *version, at(index, 0), *connections, connections * 2048) {
            assert_eq!(spike.signal, Signal::NewConnections);
            assert_eq!(spike.observed, *connections);
            flagged.push((index, spike.baseline, spike.expected));
        }
    }
    flagged
}

/// `count` windows of `connections` on `version`.
fn windows(version: u64, connections: u64, count: usize) -> Vec<(u64, u64)> {
    vec![(version, connections); count]
}

/// The spikes' windows and baselines, with what each expected rounded to a connection.
fn rounded(flagged: &[(u64, Baseline, f64)]) -> Vec<(u64, Baseline, u64)> {
    flagged.iter().map(|(index, baseline, expected)| (*index, *baseline, expected.round() as u64)).collect()
}

#[test]
fn a_new_version_is_measured_against_the_old_ones_baseline_until_its_own_is_warm() {
    let mut detector = plain();
    assert_eq!(run_versions(&mut detector, 0, &windows(1, 40, 100)), vec![]);
    // Version 2 at the old rate for five windows, then ten times it: its own
    // baseline (five windows) is not warm, the old one's is the measure.
    let mut series = windows(2, 40, 5);
    series.push((2, 400));
    let flagged = run_versions(&mut detector, 100, &series);
    assert_eq!(rounded(&flagged), vec![(105, Baseline::PreviousRevision, 40)]);
    assert!((flagged[0].2 - 40.0).abs() < 1e-3, "the old version's flat 40: {flagged:?}");
}

#[test]
fn a_new_versions_lasting_step_is_flagged_once_then_it_is_measured_against_itself() {
    let mut detector = plain();
    assert_eq!(run_versions(&mut detector, 0, &windows(1, 40, 100)), vec![]);
    // Version 2 sends ten times as much from its first window, for 40
    // windows (past the cooldown and its warm-up), then ten times that.
    let mut series = windows(2, 400, 40);
    series.push((2, 4000));
    let flagged = run_versions(&mut detector, 100, &series);
    assert_eq!(rounded(&flagged), vec![(100, Baseline::PreviousRevision, 40), (140, Baseline::Own, 400)]);
    assert_eq!(detector.stats().spikes, 2);
}

#[test]
fn a_version_that_never_warmed_up_leaves_the_one_before_as_the_measure() {
    let mut detector = plain();
    run_versions(&mut detector, 0, &windows(1, 40, 100));
    // Version 2 for five windows at 2.5 times (under the minimum ratio of 3),
    // then version 3: measured against version 1, the last warm one.
    let mut series = windows(2, 100, 5);
    series.push((3, 400));
    assert_eq!(rounded(&run_versions(&mut detector, 100, &series)), vec![(105, Baseline::PreviousRevision, 40)]);
}

#[test]
fn a_rollback_before_the_new_version_warmed_up_takes_the_old_baseline_back() {
    let mut detector = plain();
    run_versions(&mut detector, 0, &windows(1, 40, 100));
    // Version 2 for five windows at twice the rate, then back to version 1,
    // whose own warm baseline measures it again at once.
    let mut series = windows(2, 80, 5);
    series.extend(windows(1, 40, 2));
    series.push((1, 400));
    assert_eq!(rounded(&run_versions(&mut detector, 100, &series)), vec![(107, Baseline::Own, 40)]);
}

#[test]
fn without_versions_an_edge_still_warms_up_before_it_can_spike() {
    let mut detector = plain();
    // A first version at once, nothing before it to measure against.
    let mut series = windows(7, 40, 14);
    series.push((7, 400));
    assert_eq!(run_versions(&mut detector, 0, &series), vec![], "fourteen windows closed: not warm");
    // Warm now; the step of window 14 moved the mean a tenth of the way to
    // it on the log scale: exp(ln 41 + 0.1·(ln 401 − ln 41)) − 1 ≈ 50.5.
    assert_eq!(rounded(&run_versions(&mut detector, 15, &[(7, 4000)])), vec![(15, Baseline::Own, 51)]);
}
