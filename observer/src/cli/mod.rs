//! Command line of the `observer` binary: every subcommand's flags live in
//! this folder, one file per command; domain modules take the plain
//! configuration these convert into, and never see clap.

pub mod policy;
pub mod recorded;
pub mod report;
pub mod run;
pub mod seccomp;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

/// Node-local eBPF flow observer for Kubernetes AI workloads.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Log level (error, warn, info, debug, trace) or a tracing filter; logs go to stderr.
    #[arg(long, global = true, default_value = "info", env = "OBSERVER_LOG")]
    pub log_level: String,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Formats of the diagnostic log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Capture flows on this node and write the JSON flow log.
    Run(Box<run::RunArgs>),
    /// Judge flows against declared NetworkPolicies.
    Policy(policy::PolicyArgs),
    /// Print the seccomp profile the observer's container needs, or install it for the kubelet.
    SeccompProfile(seccomp::SeccompArgs),
    /// Write the evidence record of each NetworkPolicy and AI-tier workload
    /// from recorded flow logs.
    Report(report::ReportArgs),
}

fn init_logging(cli: &Cli) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&cli.log_level)
        .map_err(|error| anyhow::anyhow!("invalid --log-level {:?}: {error}", cli.log_level))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

/// Parses the command line and runs the chosen subcommand.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli)?;
    match cli.command {
        Command::Run(args) => crate::run::run((*args).into()),
        Command::Policy(args) => policy::run(args),
        Command::SeccompProfile(args) => Ok(crate::seccomp_profile::run(args.install.as_deref())?),
        Command::Report(args) => crate::governance::report::run(&args.into()),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        // Unique argument ids across flattened option groups, valid defaults.
        Cli::command().debug_assert();
    }
}
