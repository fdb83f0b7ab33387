//! Flags of `observer report`. In: the command line. Out: the plain
//! [`ReportConfig`] of [`crate::governance::report`].

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::recorded::RecordedArgs;

use crate::governance::report::{ReportConfig, ReportFormat};

/// `observer report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The cluster and the recorded flows.
    #[command(flatten)]
    pub recorded: RecordedArgs,
    /// Findings logs written by `observer run --findings-log`.
    #[arg(long, num_args = 1.., value_name = "FILE")]
    pub findings: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormatArg::Markdown)]
    pub format: ReportFormatArg,
    /// Where to write it (stdout when absent).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
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
            recorded: args.recorded.into(),
            findings: args.findings,
            format: args.format.into(),
            output: args.output,
        }
    }
}
