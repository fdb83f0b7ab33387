//! Spike detection per edge: new-connection and byte rates against a learned baseline.
//!
//! In: per flow event, the edge (source workload → destination, port), the
//! new connections and bytes it adds, and when. Out: a [`Spike`] when an
//! edge's rate in the running window leaves its baseline; counts of edges,
//! evictions and spikes for metrics; per edge, the version of its ends (the
//! revisions their workloads run), by which baselines are kept, and the
//! rollout a spike followed. See `docs/bench-anomaly.md` for the maths and
//! the measured precision and recall.

mod baseline;
mod detector;
pub(crate) mod lru;
mod rollout;

pub(crate) use detector::EdgeHandle;
pub use detector::{Baseline, EdgeKey, Signal, Spike, SpikeConfig, SpikeDetector, SpikeStats};
pub use rollout::{AfterRollout, End, after_rollout, edge_version};
