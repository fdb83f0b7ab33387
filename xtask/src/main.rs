//! Project tasks: `cargo xtask <task>`; the command line in, the task's effects out.

mod lab;

use clap::{Parser, Subcommand};

/// Project tasks.
#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// The test lab: pods as network namespaces with kubelet-style cgroups (needs root).
    #[command(subcommand)]
    Lab(lab::LabCmd),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Lab(cmd) => lab::run(cmd),
    }
}
