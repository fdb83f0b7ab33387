//! `cargo xtask setup`: installs what building and testing need, only what is
//! missing, so running it again changes nothing.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::command::{is_root, output, run as run_command, step, succeeds};

/// Debian packages and a command each provides (to check without dpkg).
const PACKAGES: [(&str, &str); 11] = [
    ("iproute2", "ip"),
    ("nftables", "nft"),
    ("iptables", "iptables"),
    ("iputils-ping", "ping"),
    ("iperf3", "iperf3"),
    ("bpftrace", "bpftrace"),
    ("bpftool", "bpftool"),
    ("prometheus", "promtool"),
    ("conntrack", "conntrack"),
    ("python3-pip", "pip3"),
    ("kubectl", "kubectl"),
];

/// The bpf-linker release that loads the installed nightly's own LLVM.
const BPF_LINKER_VERSION: &str = "0.9.15";

/// Installs everything that is missing.
pub fn run() -> anyhow::Result<()> {
    debian_packages()?;
    rust_toolchains()?;
    bpf_linker()?;
    tracefs()?;
    kubernetes_validate()?;
    step("setup complete");
    Ok(())
}

fn have(program: &str) -> bool {
    succeeds(Command::new("sh").args(["-c", &format!("command -v {program}")]))
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> =
        PACKAGES.iter().filter(|(_, program)| !have(program)).map(|(package, _)| *package).collect();
    if missing.is_empty() {
        step("Debian packages: all present");
        return Ok(());
    }
    step(&format!("installing Debian packages: {}", missing.join(" ")));
    if !is_root() {
        bail!("installing {} needs root: run `sudo cargo xtask setup`", missing.join(" "));
    }
    run_command(Command::new("apt-get").args(["update", "-qq"])).context("apt-get update")?;
    run_command(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get install")
}

fn rust_toolchains() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !installed.lines().any(|line| line.starts_with("nightly")) {
        step("installing the nightly toolchain (the kernel programs need it)");
        run_command(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let components =
        output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]))
            .unwrap_or_default();
    if components.lines().any(|line| line.starts_with("rust-src")) {
        step("nightly rust-src: present");
    } else {
        step("adding rust-src to nightly (build-std for bpfel-unknown-none)");
        run_command(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    for (component, probe) in [("rustfmt", "fmt"), ("clippy", "clippy")] {
        if !succeeds(Command::new("cargo").args([probe, "--version"])) {
            step(&format!("adding {component} to the stable toolchain"));
            run_command(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    Ok(())
}

fn bpf_linker() -> anyhow::Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        step(&format!("bpf-linker {BPF_LINKER_VERSION}: present"));
        return Ok(());
    }
    step(&format!("installing bpf-linker {BPF_LINKER_VERSION} (a few minutes, once)"));
    run_command(Command::new("cargo").args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}"), "--locked"]))
}

fn tracefs() -> anyhow::Result<()> {
    if Path::new("/sys/kernel/tracing/events").is_dir() {
        step("tracefs: mounted");
        return Ok(());
    }
    if !is_root() {
        step("tracefs is not mounted; the observer mounts it when it runs as root");
        return Ok(());
    }
    step("mounting tracefs at /sys/kernel/tracing");
    run_command(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))
}

/// kubernetes-validate (PyPI) in a venv under target/, for the offline
/// manifest validation of `cargo xtask test`.
fn kubernetes_validate() -> anyhow::Result<()> {
    let version = crate::validate::KUBERNETES_VALIDATE_VERSION;
    let venv = crate::validate::venv();
    let tool = venv.join("bin/kubernetes-validate");
    if output(Command::new(&tool).arg("--version")).is_some_and(|text| text.trim() == version) {
        step(&format!("kubernetes-validate {version}: present"));
        return Ok(());
    }
    step(&format!("installing kubernetes-validate {version} into {}", venv.display()));
    if !venv.join("bin/pip").exists() {
        run_command(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("python3 -m venv (Debian: apt-get install python3-venv)")?;
    }
    run_command(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        &format!("kubernetes-validate=={version}"),
    ]))
}
