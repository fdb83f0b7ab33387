//! Builds the kernel programs (observer-ebpf) with nightly and bpf-linker and
//! leaves the object in OUT_DIR for `include_bytes_aligned!`.
//!
//! With `AYA_BUILD_SKIP=1` (for `cargo check` and clippy on machines without
//! bpf-linker) an empty object is written instead; the loader refuses it with
//! a clear message.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let object = out_dir.join("observer");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|value| value == "1" || value.eq_ignore_ascii_case("true"));
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if skip {
        fs::write(&object, []).with_context(|| format!("writing stub {}", object.display()))?;
        return Ok(());
    }
    let metadata = aya_build::Package { name: "observer-ebpf", root_dir: "../observer-ebpf", ..Default::default() };
    aya_build::build_ebpf([metadata], aya_build::Toolchain::default())
        .context("building the kernel programs; run `cargo xtask setup` to install nightly rust-src and bpf-linker, or set AYA_BUILD_SKIP=1 to build without them")
}
