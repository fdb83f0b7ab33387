//! Builds the kernel programs (observer-ebpf) with nightly and bpf-linker and
//! leaves the object in OUT_DIR for `include_bytes_aligned!`.
//!
//! With `AYA_BUILD_SKIP=1` (for `cargo check` and clippy on machines without
//! bpf-linker) an empty object is written instead; the loader refuses it with
//! a clear message.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow, bail};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let object = out_dir.join("observer");
    // The commit the binary is built from, for `build_info`: set by `cargo
    // xtask image` and the Dockerfile; "unknown" otherwise rather than a
    // revision an incremental build could leave stale.
    println!("cargo:rerun-if-env-changed=OBSERVER_GIT_REVISION");
    let revision = env::var("OBSERVER_GIT_REVISION").ok().filter(|value| !value.is_empty());
    println!("cargo:rustc-env=OBSERVER_GIT_REVISION={}", revision.as_deref().unwrap_or("unknown"));
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|value| value == "1" || value.eq_ignore_ascii_case("true"));
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if skip {
        fs::write(&object, []).with_context(|| format!("writing stub {}", object.display()))?;
        return Ok(());
    }
    let metadata = aya_build::Package { name: "observer-ebpf", root_dir: "../observer-ebpf", ..Default::default() };
    aya_build::build_ebpf([metadata], aya_build::Toolchain::default()).context(
        "building the kernel programs; run `cargo xtask setup` to install nightly rust-src and bpf-linker, or set AYA_BUILD_SKIP=1 to build without them",
    )?;
    let mut bytes = fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
    sanitize_btf_names(&mut bytes).context("sanitizing BTF names")?;
    fs::write(&object, bytes).with_context(|| format!("writing {}", object.display()))
}

/// Replaces `<` and `>` in the BTF string table with `_`.
///
/// bpf-linker 0.9.15 sanitizes generic struct names but not unions, so
/// `aya_ebpf::Global<u8>` (used by aya-log) leaves `MaybeUninit<u8>` in the
/// object's BTF and the kernel rejects all of it. Same-length replacement
/// keeps every offset valid.
fn sanitize_btf_names(elf: &mut [u8]) -> anyhow::Result<()> {
    let u16_at = |bytes: &[u8], at: usize| -> anyhow::Result<usize> {
        Ok(usize::from(u16::from_le_bytes(bytes.get(at..at + 2).context("truncated ELF")?.try_into()?)))
    };
    let u32_at = |bytes: &[u8], at: usize| -> anyhow::Result<usize> {
        Ok(usize::try_from(u32::from_le_bytes(bytes.get(at..at + 4).context("truncated ELF")?.try_into()?))?)
    };
    let u64_at = |bytes: &[u8], at: usize| -> anyhow::Result<usize> {
        Ok(usize::try_from(u64::from_le_bytes(bytes.get(at..at + 8).context("truncated ELF")?.try_into()?))?)
    };
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) {
        bail!("not a 64-bit ELF object");
    }
    let section_headers = u64_at(elf, 0x28)?;
    let entry_size = u16_at(elf, 0x3a)?;
    let count = u16_at(elf, 0x3c)?;
    let names_index = u16_at(elf, 0x3e)?;
    let header = |index: usize| section_headers + index * entry_size;
    let names_offset = u64_at(elf, header(names_index) + 0x18)?;
    for index in 0..count {
        let name_offset = names_offset + u32_at(elf, header(index))?;
        if elf.get(name_offset..name_offset + 5) != Some(b".BTF\0") {
            continue;
        }
        let btf = u64_at(elf, header(index) + 0x18)?;
        let header_len = u32_at(elf, btf + 4)?;
        let strings = btf + header_len + u32_at(elf, btf + 16)?;
        let strings_len = u32_at(elf, btf + 20)?;
        let table = elf.get_mut(strings..strings + strings_len).context("BTF string table out of bounds")?;
        for byte in table.iter_mut().filter(|byte| matches!(**byte, b'<' | b'>')) {
            *byte = b'_';
        }
        return Ok(());
    }
    Ok(())
}
