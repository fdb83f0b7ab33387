//! `cargo xtask lab up|down|status`: a persistent lab for working by hand; the subcommand in, the
//! lab brought up or removed (state in `/run/observer-lab/`) and a summary printed out.

use anyhow::Context;
use clap::Subcommand;
use observer_tests::{Lab, LabState, all_states, cleanup_stale, down_persistent, persistent_state};

/// What to do with the persistent lab.
#[derive(Debug, Subcommand)]
pub enum LabCmd {
    /// Bring up a persistent lab (prefix `obslab-`) and print its pods.
    Up {
        /// Number of pods (198.18.0.10, .11, …).
        #[arg(long, default_value_t = 3)]
        pods: usize,
        /// IPv4 only.
        #[arg(long)]
        no_ipv6: bool,
        /// No internet namespace.
        #[arg(long)]
        no_internet: bool,
    },
    /// Remove the persistent lab and leftovers of crashed test runs.
    Down,
    /// Show the persistent lab and any other labs on this machine.
    Status,
}

/// Runs a lab subcommand.
pub fn run(cmd: LabCmd) -> anyhow::Result<()> {
    match cmd {
        LabCmd::Up { pods, no_ipv6, no_internet } => {
            let lab = Lab::builder().pods(pods).ipv6(!no_ipv6).internet(!no_internet).persistent(true).build()?;
            let state = LabState::load(&lab.state_path())?;
            let path = lab.keep();
            print_summary(&state);
            println!("state: {}", path.display());
            println!("remove with: cargo xtask lab down");
        }
        LabCmd::Down => {
            let had = down_persistent().context("removing the persistent lab")?;
            let stale = cleanup_stale()?;
            println!("{}", if had { "persistent lab removed" } else { "no persistent lab was up" });
            if !stale.is_empty() {
                println!("removed stale labs: {}", stale.join(", "));
            }
        }
        LabCmd::Status => {
            match persistent_state()? {
                Some(state) => print_summary(&state),
                None => println!("no persistent lab is up (cargo xtask lab up)"),
            }
            for (path, state) in all_states() {
                match state {
                    Ok(s) if s.owner_pid != 0 => {
                        println!("test lab {} (owner pid {}): {} pods", s.prefix, s.owner_pid, s.pods.len());
                    }
                    Ok(_) => {}
                    Err(e) => println!("unreadable state {}: {e}", path.display()),
                }
            }
        }
    }
    Ok(())
}

fn print_summary(state: &LabState) {
    let root = state.cgroup_root.display();
    println!("lab {} (cgroup root {root}, node netns {}node)", state.prefix, state.prefix);
    println!("{:<6} {:<18} {:<14} {:<26} {:<38} {:<10} cgroup", "pod", "netns", "ipv4", "ipv6", "uid", "cgroup id");
    for p in &state.pods {
        use observer_tests::Endpoint;
        let v6 = p.ipv6().map(|a| a.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "{:<6} {:<18} {:<14} {:<26} {:<38} {:<10} {}",
            p.name(),
            p.netns(),
            p.ipv4(),
            v6,
            p.uid(),
            p.cgroup_id(),
            p.cgroup_path()
        );
    }
    if let Some(i) = &state.internet {
        let v6 = i.ipv6.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "internet netns {} at {} / {v6}, cgroup {} (id {})",
            i.netns,
            i.ipv4,
            i.cgroup_dir.display(),
            i.cgroup_id
        );
    }
}
