//! Flags of `observer report`. In: the command line. Out: the plain
//! [`ReportConfig`] of [`crate::governance::report`].

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::governance::{
    replay::Recorded,
    report::{ReportConfig, ReportFormat},
};

/// `observer report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The cluster: manifest files or folders.
    #[arg(long, required_unless_present = "kubeconfig", num_args = 1.., value_name = "PATH")]
    pub manifests: Vec<PathBuf>,
    /// Read the cluster from the API server of this kubeconfig instead
    /// (listed once, as `observer run` reads it).
    #[arg(long, value_name = "FILE", conflicts_with = "manifests")]
    pub kubeconfig: Option<PathBuf>,
    /// Flow logs written by `observer run` (plain or gzip; `-` for stdin).
    #[arg(long, required = true, num_args = 1.., value_name = "FILE")]
    pub flows: Vec<PathBuf>,
    /// Findings logs written by `observer run --findings-log`.
    #[arg(long, num_args = 1.., value_name = "FILE")]
    pub findings: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormatArg::Markdown)]
    pub format: ReportFormatArg,
    /// Where to write it (stdout when absent).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The daemon's configuration file (tiers, intents), as `observer run --config`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Report formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportFormatArg {
    /// For people, in a repository or a ticket.
    Markdown,
    /// The stable, documented format.
    Json,
    /// One self-contained page, readable offline.
    Html,
}

impl From<ReportFormatArg> for ReportFormat {
    fn from(format: ReportFormatArg) -> Self {
        match format {
            ReportFormatArg::Markdown => Self::Markdown,
            ReportFormatArg::Json => Self::Json,
            ReportFormatArg::Html => Self::Html,
        }
    }
}

impl From<ReportArgs> for ReportConfig {
    fn from(args: ReportArgs) -> Self {
        Self {
            recorded: Recorded {
                manifests: args.manifests,
                kubeconfig: args.kubeconfig,
                flows: args.flows,
                config: args.config,
            },
            findings: args.findings,
            format: args.format.into(),
            output: args.output,
        }
    }
}
