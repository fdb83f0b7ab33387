//! `cargo xtask test`: every check and test, in the order that fails fastest.
//! The real-kernel tests run as root on one thread (kernel state is shared).

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::command::{is_root, run as run_command, step, workspace_root};

/// Totals parsed from cargo test's result lines.
#[derive(Debug, Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Runs the whole suite.
pub fn run() -> anyhow::Result<()> {
    crate::setup::run()?;
    let root = workspace_root();
    let cargo = || {
        let mut command = Command::new("cargo");
        command.current_dir(&root);
        command
    };
    step("formatting");
    run_command(cargo().args(["fmt", "--all", "--check"]))?;
    step("clippy (userspace, with the kernel programs built by build.rs)");
    // The kernel crate is a workspace member but only builds for bpfel.
    run_command(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "observer-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("clippy (kernel programs, bpfel-unknown-none)");
    run_command(cargo().current_dir(root.join("observer-ebpf")).args([
        "+nightly",
        "clippy",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("deploy/: generated files, alert rule tests, manifests against the Kubernetes schemas");
    crate::validate::run()?;
    step("building binaries");
    run_command(cargo().args(["build", "--workspace", "--exclude", "observer-ebpf", "--bins"]))?;
    let root_user = is_root();
    if !root_user {
        if std::env::var("CI").as_deref() == Ok("true") {
            bail!("CI=true but not running as root: the real-kernel tests need root");
        }
        step("not root: the real-kernel tests will skip themselves (run as root to include them)");
    }
    // The DaemonSet test runs the image: build it first, into root's
    // container storage, where the (root) test looks for it.
    let image = if root_user {
        step("the image, for the DaemonSet test (cargo xtask image)");
        Some(crate::image::build()?)
    } else {
        None
    };
    let mut totals = Totals::default();
    step("unit, fake API server and CLI tests");
    cargo_test(
        cargo().args(["test", "--workspace", "--exclude", "observer-ebpf", "--exclude", "observer-tests"]),
        &mut totals,
    )?;
    step("end-to-end tests on the real kernel (one thread)");
    let observer = root.join("target/debug/observer");
    let mut end_to_end = cargo();
    end_to_end.args(["test", "-p", "observer-tests", "--", "--test-threads=1"]).env("OBSERVER_BIN", &observer);
    if let Some(image) = &image {
        end_to_end.env("OBSERVER_IMAGE", image);
    }
    cargo_test(&mut end_to_end, &mut totals)?;
    println!("test: {} passed, {} failed, {} skipped", totals.passed, totals.failed, totals.ignored);
    if totals.failed > 0 {
        bail!("{} tests failed", totals.failed);
    }
    Ok(())
}

/// Runs `cargo test`, echoing its output and adding up its result lines.
fn cargo_test(command: &mut Command, totals: &mut Totals) -> anyhow::Result<()> {
    let mut child = command.stdout(Stdio::piped()).spawn().context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            for part in result.split(['.', ';']) {
                let mut words = part.split_whitespace();
                if let (Some(count), Some(kind)) = (words.next(), words.next()) {
                    let count: u64 = count.parse().unwrap_or(0);
                    match kind {
                        "passed" => totals.passed += count,
                        "failed" => totals.failed += count,
                        "ignored" => totals.ignored += count,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        bail!("cargo test failed ({status}); {} passed, {} failed so far", totals.passed, totals.failed);
    }
    Ok(())
}
