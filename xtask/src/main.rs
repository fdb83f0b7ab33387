//! Project tasks: `cargo xtask <task>`. `setup` installs what the build and
//! tests need, `test` is what CI runs, `demo` shows the observer on lab traffic.

mod bench;
mod binaries;
mod command;
mod demo;
mod deploy;
mod image;
mod interrupt;
mod lab;
mod setup;
mod test;
mod validate;

use clap::{Parser, Subcommand};

/// Tasks of the flow observer project.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building and testing need (Debian packages, nightly rust-src, bpf-linker, tracefs); idempotent.
    Setup,
    /// Run every check and test: formatting, clippy, unit, fake API server and real-kernel tests (what CI runs).
    Test,
    /// Build the observer's OCI image offline with buildah (static musl binary, the Dockerfile's final stage).
    Image,
    /// Write the generated files of deploy/: Grafana dashboards (JSON and ConfigMaps), the PrometheusRule, the FlowIntent CRD.
    Deploy,
    /// Check deploy/ offline: generated files, promtool rule tests, Kubernetes schemas, least privilege.
    Validate,
    /// Build, bring up a lab of pods, run the observer on scripted traffic and show the flows (needs root).
    Demo,
    /// Benchmarks: every part, or one (capture, completeness, pipeline, memory); results go into BENCHMARKS.md (needs root).
    Bench(bench::BenchArgs),
    /// The test lab: pods as network namespaces with kubelet-style cgroups (needs root).
    #[command(subcommand)]
    Lab(lab::LabCmd),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Test => test::run(),
        Task::Demo => demo::run(),
        Task::Deploy => deploy::run(),
        Task::Image => image::run(),
        Task::Validate => validate::run(),
        Task::Lab(cmd) => lab::run(cmd),
        Task::Bench(cmd) => bench::run(cmd),
    }
}
