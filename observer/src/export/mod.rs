//! Export: where records leave the observer.

pub mod flowlog;
