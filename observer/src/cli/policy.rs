//! Flags of `observer policy check`, `simulate` and `advise`. In: the
//! command line. Out: the plain configuration of [`crate::policy::check`],
//! [`crate::governance::simulate`] and [`crate::governance::advise`].

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::recorded::RecordedArgs;

use crate::{
    governance::{
        advise::AdviseConfig,
        simulate::{Format, SimulateConfig},
    },
    policy::check::{self, CheckConfig, OutputFormat},
};

/// `observer policy`.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: PolicyCommand,
}

/// Subcommands of `observer policy`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Judge flows against the NetworkPolicies and ClusterNetworkPolicies in manifest files.
    Check(CheckArgs),
    /// Replay recorded flow logs against a proposed policy change: what
    /// would break, what would be newly allowed.
    Simulate(SimulateArgs),
    /// Least-privilege NetworkPolicies from recorded flow logs, verified by replay.
    Advise(AdviseArgs),
}

/// How to print a single verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CheckFormat {
    /// A readable explanation.
    Text,
    /// One JSON object, as `--flows` prints per line.
    Json,
}

impl From<CheckFormat> for OutputFormat {
    fn from(format: CheckFormat) -> Self {
        match format {
            CheckFormat::Text => Self::Text,
            CheckFormat::Json => Self::Json,
        }
    }
}

/// `observer policy check`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["from", "flows"])))]
pub struct CheckArgs {
    /// Manifest files or folders (YAML or JSON, multi-document) holding
    /// NetworkPolicies, ClusterNetworkPolicies, Namespaces, Nodes and Pods.
    #[arg(long, required = true, num_args = 1..)]
    pub manifests: Vec<PathBuf>,
    /// Source: `namespace/pod` or an IP address.
    #[arg(long, requires_all = ["to", "port"])]
    pub from: Option<String>,
    /// Destination: `namespace/pod` or an IP address.
    #[arg(long, requires = "from")]
    pub to: Option<String>,
    /// Destination port and protocol: `N` or `N/PROTO` (TCP, UDP, SCTP; TCP when absent).
    #[arg(long, requires = "from")]
    pub port: Option<String>,
    /// JSON lines of flows to judge, `-` for stdin; prints one JSON line per flow.
    #[arg(long, conflicts_with_all = ["from", "to", "port"])]
    pub flows: Option<PathBuf>,
    /// Output of a single verdict (`--flows` always prints JSON lines).
    #[arg(long, value_enum, default_value_t = CheckFormat::Text)]
    pub output: CheckFormat,
}

impl From<CheckArgs> for CheckConfig {
    fn from(args: CheckArgs) -> Self {
        Self {
            manifests: args.manifests,
            from: args.from,
            to: args.to,
            port: args.port,
            flows: args.flows,
            output: args.output.into(),
        }
    }
}

/// `observer policy simulate`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("change").required(true).multiple(true).args(["proposed", "remove"])))]
pub struct SimulateArgs {
    /// The cluster and the recorded flows.
    #[command(flatten)]
    pub recorded: RecordedArgs,
    /// Proposed NetworkPolicies and ClusterNetworkPolicies (files or
    /// folders): added, or replacing the current one of the same
    /// namespace/name (NetworkPolicy) or name (ClusterNetworkPolicy).
    #[arg(long, num_args = 1.., value_name = "PATH")]
    pub proposed: Vec<PathBuf>,
    /// Current policies to remove: `NAMESPACE/NAME` for a NetworkPolicy,
    /// `NAME` for a ClusterNetworkPolicy (cluster-scoped).
    #[arg(long, num_args = 1.., value_name = "NAMESPACE/NAME|NAME")]
    pub remove: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = SimulateFormat::Text)]
    pub output: SimulateFormat,
    /// Exit with status 1 when any recorded edge would break.
    #[arg(long)]
    pub fail_on_break: bool,
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SimulateFormat {
    /// A readable summary.
    Text,
    /// One JSON object.
    Json,
}

impl From<SimulateFormat> for Format {
    fn from(format: SimulateFormat) -> Self {
        match format {
            SimulateFormat::Text => Self::Text,
            SimulateFormat::Json => Self::Json,
        }
    }
}

impl From<SimulateArgs> for SimulateConfig {
    fn from(args: SimulateArgs) -> Self {
        Self {
            recorded: args.recorded.into(),
            proposed: args.proposed,
            remove: args.remove,
            output: args.output.into(),
            fail_on_break: args.fail_on_break,
        }
    }
}

/// `observer policy advise`.
#[derive(Debug, Args)]
pub struct AdviseArgs {
    /// The cluster and the recorded flows.
    #[command(flatten)]
    pub recorded: RecordedArgs,
    /// Write one file per workload here (`<namespace>.<workload>.yaml`) instead of stdout.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Also write, per FlowIntent with `egress.forbid`, an Admin-tier
    /// ClusterNetworkPolicy denying its forbidden peers (a guardrail
    /// namespace owners cannot override).
    #[arg(long)]
    pub guardrails: bool,
    /// Only workloads of these namespaces.
    #[arg(long, num_args = 1.., value_name = "NS")]
    pub namespace: Vec<String>,
}

impl From<AdviseArgs> for AdviseConfig {
    fn from(args: AdviseArgs) -> Self {
        Self {
            recorded: args.recorded.into(),
            output_dir: args.output_dir,
            guardrails: args.guardrails,
            namespace: args.namespace,
        }
    }
}

/// Runs `observer policy ...`.
pub fn run(args: PolicyArgs) -> anyhow::Result<()> {
    match args.command {
        PolicyCommand::Check(args) => check::check(args.into()),
        PolicyCommand::Advise(args) => crate::governance::advise::run(&args.into()),
        PolicyCommand::Simulate(args) => {
            if !crate::governance::simulate::run(&args.into())? {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
