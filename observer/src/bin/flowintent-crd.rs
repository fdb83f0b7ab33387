//! Prints the FlowIntent CRD generated from its Rust type, for `cargo xtask
//! deploy` (which writes it to `deploy/crds/flowintent.yaml`) and `cargo
//! xtask validate` (which fails when that file differs).
//!
//! In: nothing. Out: the CRD's YAML on stdout.

fn main() -> anyhow::Result<()> {
    print!("{}", observer::intent::crd_yaml()?);
    Ok(())
}
