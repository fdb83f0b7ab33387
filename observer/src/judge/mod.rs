//! Flow verdicts: NetworkPolicies, delivery evidence and AI-tier intents combined.
//!
//! In: a [`JudgeInput`] per flow (both ends resolved, state and counters),
//! the compiled [`crate::policy::PolicyEngine`] and
//! [`crate::intent::IntentIndex`]. Out: a [`FlowVerdict`] per flow
//! (`allowed`, `denied-attempt`, `enforcement-gap`, `intent-violation`,
//! `undecidable`, with
//! the deciding policies and intent rule and their versions), and per AI-tier
//! pod whether it is [`Unprotected`]. The stage keeps the policy outcome each
//! open flow started under, so a flow keeps its verdict across policy changes
//! (`verdict_now` and `outlived-policy` say when the new policies differ).

mod cluster;
mod decide;
mod delivery;
mod input;
mod open;
mod outcome;
mod rate;
mod service;
pub mod stage;
pub mod verdict;

pub use decide::{Judge, JudgeConfig, JudgeStats, Unprotected};
pub use input::JudgeInput;
pub use verdict::{BackendVerdict, Delivery, FlowVerdict, IntentCite, PolicyCite, VerdictKind};
