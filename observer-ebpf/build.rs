//! Rebuild the kernel programs when bpf-linker changes: it is invoked by rustc
//! as the linker, which cargo does not track.
use which::which;

fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
