//! Flags of `observer seccomp-profile`. In: the command line. Out: the
//! folder [`crate::seccomp_profile::run`] installs into, if any.

use std::path::PathBuf;

use clap::Args;

/// Options of `observer seccomp-profile`.
#[derive(Debug, Args)]
pub struct SeccompArgs {
    /// Write the profile as `observer.json` into this folder (created if
    /// missing) instead of printing it.
    #[arg(long, value_name = "DIR")]
    pub install: Option<PathBuf>,
}
