//! The flow observer: capture connections with eBPF, say who is at each end,
//! judge them against declared intent, and export what was seen.
//!
//! Stages, in the order a flow passes them: [`capture`] → [`enrich`]
//! ([`inventory`]) → judge ([`policy`]) → [`export`]. See `ARCHITECTURE.md` in the shared docs.

pub mod capture;
pub mod cli;
pub mod dns;
pub mod enrich;
pub mod export;
pub mod flow;
pub mod inventory;
pub mod policy;
pub mod run;
