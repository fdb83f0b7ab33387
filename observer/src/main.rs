//! The `observer` binary: parse the command line and hand over to the library.
fn main() -> anyhow::Result<()> {
    observer::cli::main()
}
