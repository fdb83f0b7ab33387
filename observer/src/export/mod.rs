//! Export: where records leave the observer.

pub mod dnslog;
pub mod encode;
pub mod flowlog;
