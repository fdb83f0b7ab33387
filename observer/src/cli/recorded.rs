//! The flags every offline governance command reads its input with. In: the
//! command line. Out: the plain [`Recorded`] of [`crate::governance::replay`].

use std::path::PathBuf;

use clap::Args;

use crate::governance::replay::Recorded;

/// The cluster, the daemon's configuration and the recorded flow logs.
#[derive(Debug, Args)]
pub struct RecordedArgs {
    /// The cluster as it is: manifest files or folders (Pods, Namespaces,
    /// workloads, NetworkPolicies, ClusterNetworkPolicies, Services, FlowIntents).
    #[arg(long, required_unless_present = "kubeconfig", num_args = 1.., value_name = "PATH")]
    pub manifests: Vec<PathBuf>,
    /// Read the cluster as it is from the API server of this kubeconfig
    /// instead (listed once, as `observer run` reads it).
    #[arg(long, value_name = "FILE", conflicts_with = "manifests")]
    pub kubeconfig: Option<PathBuf>,
    /// Flow logs written by `observer run` (plain or gzip; `-` for stdin).
    #[arg(long, required = true, num_args = 1.., value_name = "FILE")]
    pub flows: Vec<PathBuf>,
    /// The daemon's configuration file (tiers, intents), as `observer run --config`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl From<RecordedArgs> for Recorded {
    fn from(args: RecordedArgs) -> Self {
        Self { manifests: args.manifests, kubeconfig: args.kubeconfig, flows: args.flows, config: args.config }
    }
}
