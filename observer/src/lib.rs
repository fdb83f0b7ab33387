//! The flow observer: capture connections with eBPF, say who is at each end,
//! judge them against declared intent, and export what was seen.
//!
//! Stages, in the order a flow passes them: [`capture`] → [`enrich`]
//! ([`inventory`]) → judge ([`judge`]: [`policy`], [`intent`], and spikes from
//! [`anomaly`]) → [`export`] and [`findings`], wired in [`pipeline`], with
//! [`metrics`] reading the judged stream and the HTTP [`api`] answering from
//! [`health`] beside them. See `docs/architecture.md`.

pub mod ai;
pub mod anomaly;
pub mod api;
pub mod backends;
pub mod capture;
pub mod cli;
pub mod config;
pub mod conntrack;
pub mod dns;
pub mod duration;
pub mod enrich;
pub mod export;
pub mod findings;
pub mod flow;
pub mod governance;
pub mod health;
pub mod intent;
pub mod inventory;
pub mod judge;
pub mod metrics;
pub mod node;
pub mod pipeline;
pub mod policy;
pub mod rendered;
pub mod run;
pub mod seccomp_profile;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;

/// The hash map of the per-flow lookups (flow tuples, IPs, uids, cgroup ids,
/// the meter's handles): foldhash hashes such a key in a fraction of
/// SipHash's time, and its per-process random seed keeps a peer that picks
/// its addresses and ports from predicting which keys collide.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The error and its causes on one line, for logs: top-level messages alone
/// ("failed to start watching", "BPF_MAP_LOOKUP_BATCH failed") do not say why.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
