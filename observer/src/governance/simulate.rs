//! `observer policy simulate`: what a NetworkPolicy change would do to the
//! traffic that was recorded.
//!
//! In: the current manifests, proposed NetworkPolicies (added, or replacing
//! those of the same namespace/name), policies to remove, and flow logs.
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

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Serialize;

use super::{
    edges::Edges,
    output::{EdgeOut, SideOut},
    reader::{self, ReadReport},
    replay::Cluster,
};
use crate::{
    config::ObserverConfig,
    inventory::manifests::{self, Object},
};

/// `observer policy simulate`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("change").required(true).multiple(true).args(["proposed", "remove"])))]
pub struct SimulateArgs {
    /// The cluster as it is: manifest files or folders (Pods, Namespaces,
    /// workloads, NetworkPolicies, Services, FlowIntents).
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    pub manifests: Vec<PathBuf>,
    /// Proposed NetworkPolicies (files or folders): added, or replacing the
    /// current one of the same namespace/name.
    #[arg(long, num_args = 1.., value_name = "PATH")]
    pub proposed: Vec<PathBuf>,
    /// Current NetworkPolicies to remove.
    #[arg(long, num_args = 1.., value_name = "NAMESPACE/NAME")]
    pub remove: Vec<String>,
    /// Flow logs written by `observer run` (plain or gzip; `-` for stdin).
    #[arg(long, required = true, num_args = 1.., value_name = "FILE")]
    pub flows: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
    /// Exit with status 1 when any recorded edge would break.
    #[arg(long)]
    pub fail_on_break: bool,
    /// The daemon's configuration file (tiers, intents), as `observer run --config`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
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
    /// `--remove` names a policy the manifests do not hold, or is not `namespace/name`.
    #[error("--remove {name}: {why}")]
    Remove {
        /// What was given.
        name: String,
        /// Why it cannot be removed.
        why: &'static str,
    },
    /// The configuration file cannot be used.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
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

/// Loads the proposal: every document a valid NetworkPolicy, or an error
/// naming each one that is not.
fn proposal(cluster: &Cluster, paths: &[PathBuf]) -> Result<Vec<NetworkPolicy>, SimulateError> {
    let loaded = manifests::load(paths);
    let mut problems: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    for skipped in &loaded.skipped {
        problems.push(format!("{}: {} is not a NetworkPolicy", skipped.origin, skipped.what));
    }
    let mut policies = Vec::new();
    let mut origins = Vec::new();
    for object in &loaded.objects {
        match &object.object {
            Object::NetworkPolicy(policy) => {
                policies.push((**policy).clone());
                origins.push(&object.origin);
            }
            _ => problems.push(format!("{}: not a NetworkPolicy", object.origin)),
        }
    }
    let (_, errors) = cluster.compile(&policies);
    for error in errors {
        match origins.get(error.index) {
            Some(origin) => problems.push(format!("{origin}: {error}")),
            None => problems.push(error.to_string()),
        }
    }
    if policies.is_empty() && problems.is_empty() && !paths.is_empty() {
        problems.push(format!("{}: no NetworkPolicy found", paths[0].display()));
    }
    if problems.is_empty() { Ok(policies) } else { Err(SimulateError::Proposal { problems }) }
}

fn key(policy: &NetworkPolicy) -> (String, String) {
    (
        policy.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned()),
        policy.metadata.name.clone().unwrap_or_default(),
    )
}

/// The policies after the change: the current ones minus those removed or
/// replaced, plus the proposed ones.
fn apply(
    current: &[NetworkPolicy],
    proposed: &[NetworkPolicy],
    remove: &[String],
) -> Result<Vec<NetworkPolicy>, SimulateError> {
    let mut removed = BTreeSet::new();
    for name in remove {
        let Some((namespace, policy)) = name.split_once('/').filter(|(ns, n)| !ns.is_empty() && !n.is_empty()) else {
            return Err(SimulateError::Remove { name: name.clone(), why: "expected namespace/name" });
        };
        let wanted = (namespace.to_owned(), policy.to_owned());
        if !current.iter().any(|policy| key(policy) == wanted) {
            return Err(SimulateError::Remove { name: name.clone(), why: "no such NetworkPolicy in --manifests" });
        }
        removed.insert(wanted);
    }
    let replaced: BTreeSet<_> = proposed.iter().map(key).collect();
    let mut after: Vec<NetworkPolicy> = current
        .iter()
        .filter(|policy| !removed.contains(&key(policy)) && !replaced.contains(&key(policy)))
        .cloned()
        .collect();
    after.extend(proposed.iter().cloned());
    Ok(after)
}

/// Runs the simulation.
pub fn simulate(args: &SimulateArgs) -> Result<Simulation, SimulateError> {
    let config = match &args.config {
        Some(path) => ObserverConfig::read(path)?,
        None => ObserverConfig::default(),
    };
    let mut cluster = Cluster::load(&args.manifests, config)?;
    let proposed = proposal(&cluster, &args.proposed)?;
    let current = cluster.policies();
    let after = apply(&current, &proposed, &args.remove)?;
    let mut edges = Edges::default();
    let input = reader::read(&args.flows, &mut |line, file, number, report| edges.add(line, file, number, report));
    cluster.adopt_gone(&edges);
    let (before_set, _) = cluster.compile(&current);
    let (after_set, _) = cluster.compile(&after);
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
    simulation.gone_pods = edges
        .pods
        .iter()
        .enumerate()
        .filter(|(id, _)| cluster.is_gone(*id as u32))
        .map(|(_, pod)| format!("{}/{}", pod.namespace, pod.name))
        .collect();
    simulation.gone_pods.sort();
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
pub fn run(args: &SimulateArgs) -> anyhow::Result<bool> {
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
