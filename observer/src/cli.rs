//! Command line of the `observer` binary.

use clap::{Parser, Subcommand};

/// Node-local eBPF flow observer for Kubernetes AI workloads.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Judge flows against declared NetworkPolicies.
    Policy(crate::policy::check::PolicyArgs),
}

/// Parses the command line and runs the chosen subcommand.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Policy(args) => crate::policy::check::run(args),
    }
}
