//! Building the binaries the lab tasks (`demo`, `bench`) run: after
//! `cargo xtask setup`, `observer` and `lab-traffic` in the chosen profile,
//! and the lab helpers pointed at them.

use std::process::Command;

use crate::command::{run, step, workspace_root};

/// Which cargo profile to build the lab binaries with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// `target/debug`, shared with the tests.
    Debug,
    /// `target/release`, for measurements.
    Release,
}

/// Installs what is missing, builds `observer` and `lab-traffic`, and points
/// the lab helpers (`ObserverProcess`, the traffic tool) at those binaries.
pub fn build_lab_binaries(profile: Profile) -> anyhow::Result<()> {
    crate::setup::run()?;
    step("building the observer and the lab traffic tool");
    let mut cargo = Command::new("cargo");
    cargo.current_dir(workspace_root()).arg("build");
    if profile == Profile::Release {
        cargo.arg("--release");
    }
    run(cargo.args(["-p", "observer", "-p", "observer-tests", "--bins"]))?;
    let target = workspace_root().join(if profile == Profile::Release { "target/release" } else { "target/debug" });
    // SAFETY: called before any thread is started; the variables are read by children.
    unsafe {
        std::env::set_var(observer_tests::OBSERVER_BIN_ENV, target.join("observer"));
        std::env::set_var(observer_tests::TRAFFIC_BIN_ENV, target.join("lab-traffic"));
    }
    Ok(())
}
