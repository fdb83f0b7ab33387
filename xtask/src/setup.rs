//! `cargo xtask setup`: installs what building and testing need, only what is
//! missing, so running it again changes nothing.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::command::{is_root, output, run as run_command, step, succeeds, workspace_root};

/// Debian 12 packages and a shell test that passes when each is there (to
/// check without dpkg, so a tool installed another way counts too).
const PACKAGES: [(&str, &str); 16] = [
    ("iproute2", "command -v ip"),
    ("nftables", "command -v nft"),
    ("iptables", "command -v iptables"),
    ("iputils-ping", "command -v ping"),
    ("iperf3", "command -v iperf3"),
    ("bpftrace", "command -v bpftrace"),
    ("bpftool", "command -v bpftool"),
    ("conntrack", "command -v conntrack"),
    ("python3-pip", "command -v pip3"),
    // `python3 -m venv` (kubernetes-validate) needs ensurepip, which Debian splits out.
    ("python3-venv", "python3 -c 'import ensurepip, venv'"),
    ("curl", "command -v curl"),
    ("ca-certificates", "test -s /etc/ssl/certs/ca-certificates.crt"),
    // The image (`cargo xtask image`) and the DaemonSet test: buildah builds,
    // podman runs it with runc (crun refuses hybrid cgroup hosts).
    ("buildah", "command -v buildah"),
    ("podman", "command -v podman"),
    ("runc", "command -v runc"),
    // musl-gcc, for C code in dependencies of the static (musl) release binary.
    ("musl-tools", "command -v musl-gcc"),
];

/// The Rust target of the image's static binary.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// kubectl from the Kubernetes release (Debian 12 has none recent enough for
/// `kubectl kustomize` with components), checked against its published SHA-256.
const KUBECTL_VERSION: &str = "v1.33.4";
/// Oldest kubectl minor version whose kustomize renders `deploy/` (components).
const KUBECTL_MIN_MINOR: u32 = 27;

/// The kubernetes-validate release installed here, for `cargo xtask validate`.
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// The venv holding kubernetes-validate.
pub fn venv() -> PathBuf {
    workspace_root().join("target/tools/venv")
}

/// The bpf-linker release that loads the installed nightly's own LLVM.
const BPF_LINKER_VERSION: &str = "0.9.15";

/// Installs everything that is missing.
pub fn run() -> anyhow::Result<()> {
    debian_packages()?;
    kubectl()?;
    promtool()?;
    rust_toolchains()?;
    bpf_linker()?;
    tracefs()?;
    kubernetes_validate()?;
    step("setup complete");
    Ok(())
}

fn passes(test: &str) -> bool {
    succeeds(Command::new("sh").args(["-c", test]))
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().filter(|(_, test)| !passes(test)).map(|(package, _)| *package).collect();
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

/// The client's minor version, from `kubectl version --client -o json`.
fn kubectl_minor() -> Option<u32> {
    let text = output(Command::new("kubectl").args(["version", "--client", "-o", "json"]))?;
    let version: serde_json::Value = serde_json::from_str(&text).ok()?;
    let minor = version["clientVersion"]["minor"].as_str()?;
    minor.trim_end_matches('+').parse().ok()
}

/// kubectl into /usr/local/bin unless one recent enough is on the PATH.
fn kubectl() -> anyhow::Result<()> {
    if let Some(minor) = kubectl_minor().filter(|minor| *minor >= KUBECTL_MIN_MINOR) {
        step(&format!("kubectl 1.{minor}: present"));
        return Ok(());
    }
    step(&format!("installing kubectl {KUBECTL_VERSION} from dl.k8s.io into /usr/local/bin"));
    if !is_root() {
        bail!("installing kubectl needs root: run `sudo cargo xtask setup`");
    }
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => bail!("no kubectl download for {other}; install kubectl 1.{KUBECTL_MIN_MINOR}+ yourself"),
    };
    let url = format!("https://dl.k8s.io/release/{KUBECTL_VERSION}/bin/linux/{arch}/kubectl");
    let download = workspace_root().join("target/tools/kubectl");
    fs::create_dir_all(download.parent().unwrap_or(Path::new("."))).context("creating target/tools")?;
    run_command(Command::new("curl").args(["-fsSL", "-o"]).arg(&download).arg(&url))
        .with_context(|| format!("downloading {url}"))?;
    let expected = output(Command::new("curl").args(["-fsSL", &format!("{url}.sha256")]))
        .with_context(|| format!("downloading {url}.sha256"))?;
    let actual = output(Command::new("sha256sum").arg(&download)).context("sha256sum")?;
    if actual.split_whitespace().next() != Some(expected.trim()) {
        bail!("{url}: SHA-256 {actual} is not the published {expected}");
    }
    run_command(Command::new("install").args(["-m", "0755"]).arg(&download).arg("/usr/local/bin/kubectl"))
}

/// promtool (alert rule tests) from Debian's `prometheus` package, unpacked
/// rather than installed: installing it would start a Prometheus server.
fn promtool() -> anyhow::Result<()> {
    if passes("command -v promtool") {
        step("promtool: present");
        return Ok(());
    }
    step("installing promtool from Debian's prometheus package (unpacked: no Prometheus service)");
    if !is_root() {
        bail!("installing promtool needs root: run `sudo cargo xtask setup`");
    }
    let dir = workspace_root().join("target/tools/prometheus-deb");
    fs::create_dir_all(&dir).context("creating target/tools/prometheus-deb")?;
    run_command(Command::new("apt-get").args(["update", "-qq"])).context("apt-get update")?;
    run_command(Command::new("apt-get").args(["download", "-qq", "prometheus"]).current_dir(&dir))
        .context("apt-get download prometheus")?;
    let deb = fs::read_dir(&dir)?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .context("apt-get download left no .deb")?;
    let unpacked = dir.join("root");
    run_command(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked)).context("dpkg-deb -x")?;
    run_command(
        Command::new("install")
            .args(["-m", "0755"])
            .arg(unpacked.join("usr/bin/promtool"))
            .arg("/usr/local/bin/promtool"),
    )
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
    let targets = output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if targets.lines().any(|line| line.trim() == MUSL_TARGET) {
        step(&format!("{MUSL_TARGET}: present"));
    } else {
        step(&format!("adding {MUSL_TARGET} (the image's static binary)"));
        run_command(Command::new("rustup").args(["target", "add", MUSL_TARGET]))?;
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
    let version = KUBERNETES_VALIDATE_VERSION;
    let venv = venv();
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
