//! `observer policy simulate`: what a NetworkPolicy or ClusterNetworkPolicy
//! change would do to the traffic that was recorded.
//!
//! In: the current manifests (or cluster), proposed NetworkPolicies and
//! ClusterNetworkPolicies (added, or replacing those of the same
//! namespace/name, or name), policies to remove, and flow logs.
//! Out: every recorded edge judged before and after by the daemon's judge;
//! the edges whose verdict changes, as `would_break` (the policies allowed
//! it, now deny it) and `newly_allowed`, with counts, as text or JSON on
//! stdout. A proposal that does not validate stops the command with its
//! file:line: a half-applied proposal would mislead.

use std::{
    collections::BTreeSet,
    io::{self, Write},
    path::PathBuf,
};

use crate::policy::cnp::ClusterNetworkPolicy;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Serialize;

use super::{
    output::{EdgeOut, SideOut},
    reader::ReadReport,
    replay::{Cluster, Recorded},
};
use crate::inventory::manifests::{self, Object};

/// What `observer policy simulate` replays (from its flags in [`crate::cli::policy`]).
#[derive(Debug)]
pub struct SimulateConfig {
    /// The cluster as it is and the flow logs.
    pub recorded: Recorded,
    /// Proposed NetworkPolicies and ClusterNetworkPolicies (files or
    /// folders): added, or replacing the current one of the same
    /// namespace/name (NetworkPolicy) or name (ClusterNetworkPolicy).
    pub proposed: Vec<PathBuf>,
    /// Current policies to remove: `NAMESPACE/NAME` for a NetworkPolicy,
    /// `NAME` for a ClusterNetworkPolicy (cluster-scoped).
    pub remove: Vec<String>,
    /// Output format.
    pub output: Format,
    /// Exit with status 1 when any recorded edge would break.
    pub fail_on_break: bool,
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A readable summary.
    Text,
    /// One JSON object.
    Json,
}

/// Why the simulation cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// The proposal does not validate; each problem with its file:line.
    #[error("the proposed policies do not validate; nothing was simulated:\n{}", .problems.join("\n"))]
    Proposal {
        /// Each problem.
        problems: Vec<String>,
    },
    /// `--remove` names a policy the manifests do not hold.
    #[error("--remove {name}: {why}")]
    Remove {
        /// What was given.
        name: String,
        /// Why it cannot be removed.
        why: &'static str,
    },
    /// The inventory cannot be used.
    #[error(transparent)]
    Replay(#[from] super::replay::ReplayError),
}

/// An edge whose verdict changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The edge.
    #[serde(flatten)]
    pub edge: EdgeOut,
    /// Under the current policies.
    pub before: SideOut,
    /// Under the proposed ones.
    pub after: SideOut,
}

/// What the simulation found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Simulation {
    /// Flows judged (each counted once).
    pub flows: u64,
    /// Edges judged.
    pub edges: u64,
    /// Edges whose policy verdict does not change.
    pub unchanged: u64,
    /// Edges the policies allowed and would deny.
    pub would_break: Vec<Change>,
    /// Edges the policies denied and would allow.
    pub newly_allowed: Vec<Change>,
    /// Recorded pods the manifests no longer hold (`namespace/name`), judged
    /// as their records describe them.
    pub gone_pods: Vec<String>,
    /// What was read, and what could not be used.
    pub input: ReadReport,
}

/// A proposed policy set: NetworkPolicies and ClusterNetworkPolicies.
#[derive(Clone, Debug, Default)]
pub struct Policies {
    /// NetworkPolicies.
    pub network: Vec<NetworkPolicy>,
    /// ClusterNetworkPolicies.
    pub cluster: Vec<ClusterNetworkPolicy>,
}

/// Loads the proposal: every document a valid NetworkPolicy or
/// ClusterNetworkPolicy, or an error naming each one that is not, with its
/// file:line.
fn proposal(cluster: &Cluster, paths: &[PathBuf]) -> Result<Policies, SimulateError> {
    let loaded = manifests::load(paths);
    let mut problems: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    for skipped in &loaded.skipped {
        problems.push(format!("{}: {} is not a NetworkPolicy or ClusterNetworkPolicy", skipped.origin, skipped.what));
    }
    let mut proposed = Policies::default();
    let (mut origins, mut cluster_origins) = (Vec::new(), Vec::new());
    for object in &loaded.objects {
        match &object.object {
            Object::NetworkPolicy(policy) => {
                proposed.network.push((**policy).clone());
                origins.push(&object.origin);
            }
            Object::ClusterNetworkPolicy(policy) => {
                proposed.cluster.push((**policy).clone());
                cluster_origins.push(&object.origin);
            }
            _ => problems.push(format!("{}: not a NetworkPolicy or ClusterNetworkPolicy", object.origin)),
        }
    }
    let (errors, cluster_errors) = cluster.validate(&proposed.network, &proposed.cluster);
    for error in errors {
        match origins.get(error.index) {
            Some(origin) => problems.push(format!("{origin}: {error}")),
            None => problems.push(error.to_string()),
        }
    }
    for error in cluster_errors {
        match cluster_origins.get(error.index) {
            Some(origin) => problems.push(format!("{origin}: {error}")),
            None => problems.push(error.to_string()),
        }
    }
    if proposed.network.is_empty() && proposed.cluster.is_empty() && problems.is_empty() && !paths.is_empty() {
        problems.push(format!("{}: no NetworkPolicy or ClusterNetworkPolicy found", paths[0].display()));
    }
    if problems.is_empty() { Ok(proposed) } else { Err(SimulateError::Proposal { problems }) }
}

fn key(policy: &NetworkPolicy) -> (String, String) {
    (
        policy.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned()),
        policy.metadata.name.clone().unwrap_or_default(),
    )
}

fn cluster_key(policy: &ClusterNetworkPolicy) -> String {
    policy.metadata.name.clone().unwrap_or_default()
}

/// The policies after the change: the current ones minus those removed or
/// replaced, plus the proposed ones.
fn apply(current: &Policies, proposed: &Policies, remove: &[String]) -> Result<Policies, SimulateError> {
    let mut removed = BTreeSet::new();
    let mut removed_cluster = BTreeSet::new();
    for name in remove {
        match name.split_once('/') {
            Some((namespace, policy)) if !namespace.is_empty() && !policy.is_empty() && !policy.contains('/') => {
                let wanted = (namespace.to_owned(), policy.to_owned());
                if !current.network.iter().any(|policy| key(policy) == wanted) {
                    return Err(SimulateError::Remove {
                        name: name.clone(),
                        why: "no such NetworkPolicy in the current policies",
                    });
                }
                removed.insert(wanted);
            }
            Some(_) => {
                return Err(SimulateError::Remove {
                    name: name.clone(),
                    why: "expected NAMESPACE/NAME (NetworkPolicy) or NAME (ClusterNetworkPolicy)",
                });
            }
            None if name.is_empty() => {
                return Err(SimulateError::Remove { name: name.clone(), why: "empty name" });
            }
            None => {
                if !current.cluster.iter().any(|policy| cluster_key(policy) == *name) {
                    return Err(SimulateError::Remove {
                        name: name.clone(),
                        why: "no such ClusterNetworkPolicy in the current policies",
                    });
                }
                removed_cluster.insert(name.clone());
            }
        }
    }
    let replaced: BTreeSet<_> = proposed.network.iter().map(key).collect();
    let replaced_cluster: BTreeSet<_> = proposed.cluster.iter().map(cluster_key).collect();
    let mut network: Vec<NetworkPolicy> = current
        .network
        .iter()
        .filter(|policy| !removed.contains(&key(policy)) && !replaced.contains(&key(policy)))
        .cloned()
        .collect();
    network.extend(proposed.network.iter().cloned());
    let mut cluster: Vec<ClusterNetworkPolicy> = current
        .cluster
        .iter()
        .filter(|policy| {
            !removed_cluster.contains(&cluster_key(policy)) && !replaced_cluster.contains(&cluster_key(policy))
        })
        .cloned()
        .collect();
    cluster.extend(proposed.cluster.iter().cloned());
    Ok(Policies { network, cluster })
}

/// Runs the simulation.
pub fn simulate(args: &SimulateConfig) -> Result<Simulation, SimulateError> {
    let mut cluster = args.recorded.cluster()?;
    let proposed = proposal(&cluster, &args.proposed)?;
    let current = Policies { network: cluster.policies(), cluster: cluster.cluster_policies().to_vec() };
    let after = apply(&current, &proposed, &args.remove)?;
    let (edges, input) = args.recorded.edges();
    cluster.adopt_gone(&edges);
    let (before_set, _, _) = cluster.compile(&current.network, &current.cluster);
    let (after_set, _, _) = cluster.compile(&after.network, &after.cluster);
    let mut before_judges = cluster.judges(&before_set, &edges);
    let mut after_judges = cluster.judges(&after_set, &edges);
    let mut simulation = Simulation {
        flows: 0,
        edges: 0,
        unchanged: 0,
        would_break: Vec::new(),
        newly_allowed: Vec::new(),
        gone_pods: Vec::new(),
        input,
    };
    for (key, stats) in edges.sorted() {
        let before = cluster.judge(&mut before_judges, &edges, key, stats);
        let after = cluster.judge(&mut after_judges, &edges, key, stats);
        let (Some(before), Some(after)) = (before, after) else { continue };
        simulation.edges += 1;
        simulation.flows += stats.flows();
        let change = || Change {
            edge: EdgeOut::of(&cluster, &edges, key, stats),
            before: SideOut::of(&before),
            after: SideOut::of(&after),
        };
        match (before.policy_allows(), after.policy_allows()) {
            (true, false) => simulation.would_break.push(change()),
            (false, true) => simulation.newly_allowed.push(change()),
            _ => simulation.unchanged += 1,
        }
    }
    simulation.gone_pods = cluster.gone_pods(&edges);
    Ok(simulation)
}

/// Writes the simulation as text.
pub fn write_text(simulation: &Simulation, out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "judged {} flows in {} edges: {} unchanged, {} would break, {} newly allowed",
        simulation.flows,
        simulation.edges,
        simulation.unchanged,
        simulation.would_break.len(),
        simulation.newly_allowed.len()
    )?;
    for (title, changes) in [("would break", &simulation.would_break), ("newly allowed", &simulation.newly_allowed)] {
        if changes.is_empty() {
            continue;
        }
        writeln!(out, "\n{title}:")?;
        for change in changes {
            writeln!(
                out,
                "  {}: {} flows, {} .. {}",
                change.edge.describe(),
                change.edge.flows,
                change.edge.first_seen,
                change.edge.last_seen
            )?;
            writeln!(
                out,
                "    before: {} ({})  after: {} ({})",
                change.before.verdict,
                names(&change.before.policies),
                change.after.verdict,
                names(&change.after.policies)
            )?;
        }
    }
    if !simulation.gone_pods.is_empty() {
        writeln!(
            out,
            "\n{} recorded pods are not in the manifests and were judged as their records describe them: {}",
            simulation.gone_pods.len(),
            simulation.gone_pods.join(", ")
        )?;
    }
    Ok(())
}

fn names(policies: &[String]) -> String {
    if policies.is_empty() { "no policy".to_owned() } else { policies.join(", ") }
}

/// The command: prints the simulation; `Ok(false)` when `--fail-on-break`
/// is given and something would break.
pub fn run(args: &SimulateConfig) -> anyhow::Result<bool> {
    let simulation = simulate(args)?;
    simulation.input.describe(&mut io::stderr().lock())?;
    let mut out = io::stdout().lock();
    match args.output {
        Format::Text => write_text(&simulation, &mut out)?,
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &simulation)?;
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(!args.fail_on_break || simulation.would_break.is_empty())
}
