//! `cargo xtask image`: the observer's OCI image, built offline with buildah.
//!
//! In: the workspace. Out: `localhost/flow-observer:<version>` in the local
//! container storage (printed as the last line). The static release binary
//! (musl) is built here, then buildah runs the repository's `Dockerfile`
//! with its `builder` stage replaced by that binary (`--build-context`), so
//! the final stage is the one users with a network build, line for line.

use std::{fs, process::Command};

use anyhow::{Context as _, bail};

use crate::{
    command::{output, run as run_command, step, workspace_root},
    setup::MUSL_TARGET,
};

/// The image's repository in the local container storage.
pub const IMAGE_NAME: &str = "localhost/flow-observer";

/// What the image is built from, for its labels and `build_info`.
#[derive(Debug)]
struct Provenance {
    version: String,
    /// The commit, with `-dirty` when tracked files differ from it.
    revision: String,
    /// Where the source lives (`git remote get-url origin`), if anywhere.
    source: String,
    /// The commit's time (seconds since 1970), the image's creation time, so
    /// that two builds of one commit give the same image.
    timestamp: String,
}

/// Builds the image and prints its reference as the last line.
pub fn run() -> anyhow::Result<()> {
    crate::setup::run()?;
    let reference = build()?;
    println!("{reference}");
    Ok(())
}

/// Builds the binary and the image; returns the image reference.
pub fn build() -> anyhow::Result<String> {
    let root = workspace_root();
    let provenance = provenance()?;
    step(&format!("static release binary ({MUSL_TARGET}), revision {}", provenance.revision));
    run_command(
        Command::new("cargo")
            .current_dir(&root)
            .args(["build", "--release", "--locked", "--target", MUSL_TARGET, "-p", "observer", "--bin", "observer"])
            .env("OBSERVER_GIT_REVISION", &provenance.revision),
    )?;
    let binary = root.join("target").join(MUSL_TARGET).join("release/observer");
    // What the Dockerfile's builder stage leaves in /out.
    let context = root.join("target/image/builder");
    let out = context.join("out");
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    fs::copy(&binary, out.join("observer")).with_context(|| format!("copying {}", binary.display()))?;
    let reference = format!("{IMAGE_NAME}:{}", provenance.version);
    let image_id =
        || output(Command::new("buildah").args(["images", "--quiet", "--noheading", "--no-trunc", &reference]));
    let previous = image_id();
    step(&format!("buildah: the Dockerfile's final stage into {reference}"));
    run_command(
        Command::new("buildah")
            .current_dir(&root)
            .args(["build", "--quiet", "--layers=false", "--pull=never", "--format", "oci"])
            .arg("--build-context")
            .arg(format!("builder={}", context.display()))
            .args(["--build-arg", &format!("VERSION={}", provenance.version)])
            .args(["--build-arg", &format!("REVISION={}", provenance.revision)])
            .args(["--build-arg", &format!("SOURCE={}", provenance.source)])
            .args(["--timestamp", &provenance.timestamp])
            .args(["--tag", &reference, "--file", "Dockerfile", "."]),
    )?;
    // The image this one replaced is left untagged: remove it, unless a
    // container still uses it (then buildah refuses, which is fine).
    if let Some(previous) = previous.filter(|previous| Some(previous) != image_id().as_ref()) {
        let _ = crate::command::succeeds(Command::new("buildah").args(["rmi", previous.trim()]));
    }
    Ok(reference)
}

/// The observer's version (from its manifest) and the git state.
fn provenance() -> anyhow::Result<Provenance> {
    let root = workspace_root();
    let manifest = fs::read_to_string(root.join("observer/Cargo.toml")).context("reading observer/Cargo.toml")?;
    let version = manifest
        .lines()
        .find_map(|line| line.strip_prefix("version = \"")?.strip_suffix('"'))
        .map(str::to_owned)
        .context("no version in observer/Cargo.toml")?;
    let git =
        |args: &[&str]| output(Command::new("git").current_dir(&root).args(args)).map(|text| text.trim().to_owned());
    let Some(commit) = git(&["rev-parse", "HEAD"]) else {
        bail!("not a git checkout: the image's revision label needs the commit it is built from");
    };
    let dirty = !crate::command::succeeds(Command::new("git").current_dir(&root).args(["diff", "--quiet", "HEAD"]));
    if dirty {
        step("tracked files differ from HEAD: the revision is marked -dirty");
    }
    Ok(Provenance {
        version,
        revision: if dirty { format!("{commit}-dirty") } else { commit },
        source: git(&["remote", "get-url", "origin"]).unwrap_or_default(),
        timestamp: git(&["log", "-1", "--format=%ct"]).unwrap_or_else(|| "0".to_owned()),
    })
}
