//! Precision and recall of the spike detector on a generated, labelled workload.
//!
//! Run with `AYA_BUILD_SKIP=1 cargo test -p observer --test anomaly_bench -- --nocapture`
//! to print the numbers recorded in `docs/bench-anomaly.md`; it also fails if
//! they fall below the floor asserted at the end.

use std::{
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use observer::anomaly::{EdgeKey, SpikeConfig, SpikeDetector};

mod anomaly_support;

use anomaly_support::Rng;

const DAY: u64 = 1440;
const DAYS: u64 = 4;
const SEED: u64 = 20_251_123;

#[derive(Clone, Copy, Debug)]
enum Shape {
    /// A level with multiplicative noise.
    Steady,
    /// Busy hours at a multiple of the night level, every day.
    Daily { factor: f64, start: u64, length: u64 },
    /// Growth by `factor` over `length` windows from the end of day one.
    Ramp { factor: f64, length: u64 },
    /// Steady with benign blips of up to twice the level, 2% of windows.
    Blips,
    /// A handful of connections a minute, never injected.
    Sparse,
}

/// An injected spike: windows `start..start + length` multiplied.
#[derive(Clone, Copy, Debug)]
struct Episode {
    start: u64,
    length: u64,
    magnitude: f64,
    bytes_only: bool,
}

struct Edge {
    key: EdgeKey,
    shape: Shape,
    level: f64,
    noise: f64,
    bytes_per_connection: f64,
    episodes: Vec<Episode>,
}

fn edges(rng: &mut Rng) -> Vec<Edge> {
    (0..140)
        .map(|index| {
            let shape = match index % 7 {
                0 | 1 => Shape::Steady,
                2 | 3 => Shape::Daily {
                    factor: rng.range(3.0, 12.0),
                    start: rng.below(5 * 60) + 6 * 60,
                    length: rng.below(4 * 60) + 6 * 60,
                },
                4 => Shape::Ramp { factor: rng.range(3.0, 10.0), length: rng.below(DAY * 3 / 2) + DAY / 2 },
                5 => Shape::Blips,
                _ => Shape::Sparse,
            };
            let level = if matches!(shape, Shape::Sparse) { rng.range(0.2, 3.0) } else { rng.log_range(20.0, 2000.0) };
            let mut episodes = Vec::new();
            if !matches!(shape, Shape::Sparse) {
                // At most one a day, after the first (learning) day, apart from each other.
                for day in 1..DAYS {
                    if rng.unit() < 0.6 {
                        episodes.push(Episode {
                            start: day * DAY + rng.below(DAY - 20),
                            length: rng.below(10) + 1,
                            magnitude: rng.range(5.0, 20.0),
                            bytes_only: rng.unit() < 0.3,
                        });
                    }
                }
            }
            Edge {
                key: EdgeKey {
                    source: Arc::from(format!("ns/Deployment/src-{index}")),
                    destination: Arc::from(format!("ns/Deployment/dst-{index}")),
                    port: 8000,
                },
                shape,
                level,
                noise: rng.range(0.1, 0.4),
                bytes_per_connection: rng.log_range(8_192.0, 262_144.0),
                episodes,
            }
        })
        .collect()
}

/// The expected (connections, bytes) of an edge in window `index`, before noise and spikes.
fn base(edge: &Edge, index: u64) -> f64 {
    match edge.shape {
        Shape::Steady | Shape::Blips | Shape::Sparse => edge.level,
        Shape::Daily { factor, start, length } => {
            let minute = index % DAY;
            if (start..start + length).contains(&minute) { edge.level * factor } else { edge.level }
        }
        Shape::Ramp { factor, length } => {
            let progress = (index.saturating_sub(DAY) as f64 / length as f64).min(1.0);
            edge.level * factor.powf(progress)
        }
    }
}

#[test]
fn precision_and_recall_on_a_labelled_workload() {
    let config = SpikeConfig::default();
    let mut rng = Rng(SEED);
    let edges = edges(&mut rng);
    let mut detector = SpikeDetector::new(config.clone());
    // Per edge, the windows flagged.
    let mut flags: Vec<Vec<u64>> = vec![Vec::new(); edges.len()];
    // Whether each episode reached the minimum volume it could be seen at.
    let mut visible: Vec<Vec<bool>> = edges.iter().map(|edge| vec![false; edge.episodes.len()]).collect();
    for index in 0..DAYS * DAY {
        for (number, edge) in edges.iter().enumerate() {
            let mut rate = base(edge, index) * (1.0 + edge.noise * (2.0 * rng.unit() - 1.0));
            if matches!(edge.shape, Shape::Blips) && rng.unit() < 0.02 {
                rate *= rng.range(1.2, 2.0);
            }
            let mut connections = if matches!(edge.shape, Shape::Sparse) {
                // Poisson-like: a Bernoulli per tenth of the rate.
                (0..30).filter(|_| rng.unit() < rate / 30.0).count() as f64
            } else {
                rate
            };
            let mut bytes = connections * edge.bytes_per_connection * rng.range(0.8, 1.2);
            for (episode_number, episode) in edge.episodes.iter().enumerate() {
                if (episode.start..episode.start + episode.length).contains(&index) {
                    bytes *= episode.magnitude;
                    if !episode.bytes_only {
                        connections *= episode.magnitude;
                    }
                    let seen = if episode.bytes_only {
                        bytes >= config.min_bytes as f64
                    } else {
                        connections >= config.min_connections as f64 || bytes >= config.min_bytes as f64
                    };
                    visible[number][episode_number] |= seen;
                }
            }
            let at = UNIX_EPOCH + Duration::from_secs(1_700_006_400 + index * 60);
            if detector.observe(&edge.key, at, connections.round() as u64, bytes.round() as u64).is_some() {
                flags[number].push(index);
            }
        }
    }

    let (mut episodes, mut detected, mut below_minimum) = (0, 0, 0);
    let (mut flagged, mut true_flags, mut learning_flags) = (0, 0, 0);
    // Per shape: (episodes, detected, flags, false flags).
    let mut by_shape = [(0, 0, 0, 0); 5];
    for (number, edge) in edges.iter().enumerate() {
        let shape = match edge.shape {
            Shape::Steady => 0,
            Shape::Daily { .. } => 1,
            Shape::Ramp { .. } => 2,
            Shape::Blips => 3,
            Shape::Sparse => 4,
        };
        let matches =
            |episode: &Episode, window: u64| (episode.start..=episode.start + episode.length).contains(&window);
        for (episode, seen) in edge.episodes.iter().zip(&visible[number]) {
            if !seen {
                below_minimum += 1;
                continue;
            }
            episodes += 1;
            let hit = usize::from(flags[number].iter().any(|window| matches(episode, *window)));
            detected += hit;
            by_shape[shape].0 += 1;
            by_shape[shape].1 += hit;
        }
        for window in &flags[number] {
            if *window < DAY {
                learning_flags += 1;
                continue;
            }
            flagged += 1;
            let true_flag = usize::from(edge.episodes.iter().any(|episode| matches(episode, *window)));
            true_flags += true_flag;
            by_shape[shape].2 += 1;
            by_shape[shape].3 += 1 - true_flag;
        }
    }
    let precision = true_flags as f64 / flagged.max(1) as f64;
    let recall = detected as f64 / episodes.max(1) as f64;
    println!("edges: {}, windows per edge: {}, seed: {SEED}", edges.len(), DAYS * DAY);
    println!("injected spikes above the minimum volume: {episodes} (below it, not counted: {below_minimum})");
    println!("detected: {detected}, recall: {recall:.3}");
    println!("flags after the learning day: {flagged}, true: {true_flags}, precision: {precision:.3}");
    println!("flags during the learning day (not counted): {learning_flags}");
    for (name, (episodes, detected, flags, false_flags)) in
        ["steady", "daily", "ramp", "blips", "sparse"].iter().zip(by_shape)
    {
        println!("  {name:>6}: spikes {episodes:>3}, detected {detected:>3}, flags {flags:>3}, false {false_flags:>3}");
    }
    println!("{:?}", detector.stats());
    assert!(precision >= 0.9 && recall >= 0.9, "precision {precision:.3}, recall {recall:.3}");
}
