//! nftables rules inside one lab namespace: a match (port SYNs, a peer) in, a guard out that deletes
//! the rules again when dropped. The table lives in the namespace, so it also goes with the namespace.

use std::{net::IpAddr, path::PathBuf, process::Command};

use crate::{
    error::{Error, Result},
    exec,
    state::TOOL_TIMEOUT,
};

/// The lab's table in every namespace it filters in.
const TABLE: &str = "inet obslab";

/// nftables rules added by the lab in one namespace; deleted when dropped.
#[must_use = "the rules are deleted when the guard is dropped"]
#[derive(Debug)]
pub struct FirewallRules {
    netns_path: PathBuf,
    /// (chain, handle) of each rule.
    rules: Vec<(&'static str, u64)>,
}

impl FirewallRules {
    /// Adds `rules` (chain, rule text) in the namespace at `netns_path`, creating the table and chains.
    pub(crate) fn add(netns_path: PathBuf, rules: &[(&'static str, String)]) -> Result<Self> {
        exec::require_tool("nft", "nftables")?;
        let mut script = format!(
            "add table {TABLE}\n\
             add chain {TABLE} input {{ type filter hook input priority 0; policy accept; }}\n\
             add chain {TABLE} output {{ type filter hook output priority 0; policy accept; }}\n"
        );
        for (chain, rule) in rules {
            script.push_str(&format!("add rule {TABLE} {chain} {rule} counter drop comment \"observer-lab\"\n"));
        }
        let mut cmd = nft(&netns_path);
        cmd.args(["--echo", "--handle", "-f", "-"]);
        let out = exec::run(&mut cmd, Some(&script), TOOL_TIMEOUT)?;
        let echoed = String::from_utf8_lossy(&out.stdout);
        // The echo lists every added object; rules come in the order they were given.
        let handles: Vec<u64> = echoed
            .lines()
            .filter(|l| l.trim_start().starts_with("add rule"))
            .filter_map(|l| l.rsplit_once("# handle ").and_then(|(_, h)| h.trim().parse().ok()))
            .collect();
        if handles.len() != rules.len() {
            return Err(Error::Output {
                command: exec::describe(&cmd),
                detail: format!("no rule handles in {echoed:?}"),
            });
        }
        Ok(Self { netns_path, rules: rules.iter().map(|(chain, _)| *chain).zip(handles).collect() })
    }

    /// Drops incoming TCP SYNs (without ACK) to `port`, so connects to it go unanswered and time out.
    pub(crate) fn syn_drop(netns_path: PathBuf, port: u16) -> Result<Self> {
        Self::add(netns_path, &[("input", format!("tcp dport {port} tcp flags & (syn | ack) == syn"))])
    }

    /// Drops everything from and to `peer`.
    pub(crate) fn block_peer(netns_path: PathBuf, peer: IpAddr) -> Result<Self> {
        let family = if peer.is_ipv4() { "ip" } else { "ip6" };
        Self::add(
            netns_path,
            &[("input", format!("{family} saddr {peer}")), ("output", format!("{family} daddr {peer}"))],
        )
    }
}

fn nft(netns_path: &std::path::Path) -> Command {
    let mut cmd = Command::new("nft");
    exec::enter(&mut cmd, netns_path, None);
    cmd
}

impl Drop for FirewallRules {
    fn drop(&mut self) {
        if !self.netns_path.exists() {
            // The namespace, and the rules with it, are already gone.
            return;
        }
        let script: String =
            self.rules.iter().map(|(chain, handle)| format!("delete rule {TABLE} {chain} handle {handle}\n")).collect();
        if let Err(e) = exec::run(nft(&self.netns_path).args(["-f", "-"]), Some(&script), TOOL_TIMEOUT) {
            eprintln!("observer-lab: removing firewall rules: {e}");
        }
    }
}
