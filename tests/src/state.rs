//! Lab state files under `/run/observer-lab/`: what a lab created (namespaces, cgroups, pods) goes in,
//! so that teardown, `cleanup_stale` and `cargo xtask lab status|down` can find it again.

use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    cgroup,
    error::{Error, Result},
    exec,
    kube_proxy::{self, Service},
    lab::{InternetInfo, Pod},
    node::{self, NodeInfo},
};

/// Where lab state files live.
pub const STATE_DIR: &str = "/run/observer-lab";

/// Where `ip netns` keeps its namespace mounts.
pub const NETNS_DIR: &str = "/run/netns";

/// Records the shared kubelet-style parents (`kubepods`, `kubepods/besteffort`) a lab had to create,
/// so the last lab to go removes them and a real kubelet's are never touched.
const PARENTS_FILE: &str = "cgroup-parents.json";

/// How long one `ip` or `nft` invocation may take.
pub(crate) const TOOL_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything one lab created, written before the lab creates it so that a crash at any point
/// leaves a record of what to remove.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// Prefix of every network namespace name of this lab, e.g. `obs1234-0-`.
    pub prefix: String,
    /// Pid of the process that owns the lab; 0 for a persistent lab (`cargo xtask lab up`).
    pub owner_pid: u32,
    /// Start time of the owner (field 22 of `/proc/<pid>/stat`), so a reused pid is not mistaken for it.
    pub owner_start: u64,
    /// Network namespace names, removed in this order.
    pub netns: Vec<String>,
    /// cgroup directories, deepest first, removed in this order.
    pub cgroups: Vec<PathBuf>,
    /// The cgroup v2 root the paths are under.
    pub cgroup_root: PathBuf,
    /// The pods, for `lab status`.
    pub pods: Vec<Pod>,
    /// The internet namespace, if any.
    pub internet: Option<InternetInfo>,
    /// The node's network (primary address, masquerade, sysctls to restore), if the lab has one.
    #[serde(default)]
    pub node: Option<NodeInfo>,
    /// Host-network pods (in the node's namespace, with pod cgroups).
    #[serde(default)]
    pub host_pods: Vec<Pod>,
    /// The Services whose kube-proxy rules are in the node's nat table.
    #[serde(default)]
    pub services: Vec<Service>,
}

impl LabState {
    /// The state file of the lab with this prefix.
    pub fn path_for(prefix: &str) -> PathBuf {
        Path::new(STATE_DIR).join(format!("{}.json", prefix.trim_end_matches('-')))
    }

    /// Writes the state file.
    pub(crate) fn save(&self) -> Result<()> {
        fs::create_dir_all(STATE_DIR).map_err(Error::io("creating", STATE_DIR))?;
        let path = Self::path_for(&self.prefix);
        let json = serde_json::to_vec_pretty(self).map_err(|source| Error::State { path: path.clone(), source })?;
        // Write then rename, so a reader never sees half a file.
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, json).map_err(Error::io("writing", &tmp))?;
        fs::rename(&tmp, &path).map_err(Error::io("writing", &path))
    }

    /// Reads a state file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = fs::read(path).map_err(Error::io("reading", path))?;
        serde_json::from_slice(&bytes).map_err(|source| Error::State { path: path.to_owned(), source })
    }

    /// Whether the owning process has died (a persistent lab is never stale).
    fn is_stale(&self) -> bool {
        self.owner_pid != 0 && process_start(self.owner_pid) != Some(self.owner_start)
    }

    /// Removes everything in the record: kills the processes in its cgroups and namespaces, deletes
    /// the namespaces (and with them the veths and bridge), removes the cgroups and the state file.
    /// Keeps going past failures and returns them all.
    pub(crate) fn teardown(&self) -> Vec<Error> {
        let mut errors = Vec::new();
        for dir in &self.cgroups {
            cgroup::kill_all(dir);
        }
        // The rules go with the node namespace anyway; removing them first keeps the record honest
        // should the namespace outlive this (and it restores what lives outside it).
        if let Some(info) = &self.node {
            let netns_path = Path::new(NETNS_DIR).join(&info.netns);
            if !self.services.is_empty()
                && netns_path.exists()
                && let Err(e) = kube_proxy::remove(&netns_path, &self.services)
            {
                errors.push(e);
            }
            errors.extend(node::teardown(info));
        }
        for name in &self.netns {
            if let Err(e) = delete_netns(name) {
                errors.push(e);
            }
        }
        for dir in &self.cgroups {
            if let Err(e) = cgroup::remove(dir) {
                errors.push(e);
            }
        }
        remove_unused_parents();
        // The manifests `cargo xtask lab up --node` wrote next to the state file.
        let _ = fs::remove_file(Self::path_for(&self.prefix).with_extension("manifests"));
        let path = Self::path_for(&self.prefix);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => errors.push(Error::io("removing", path)(e)),
            _ => {}
        }
        errors
    }
}

/// The start time of `pid`, or `None` if there is no such process.
pub(crate) fn process_start(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields after the last ')' are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name, so starttime (field 22) is the 20th.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Kills every process in the network namespace `name` and deletes it, if it exists.
fn delete_netns(name: &str) -> Result<()> {
    if !Path::new(NETNS_DIR).join(name).exists() {
        return Ok(());
    }
    let pids = exec::run_unchecked(Command::new("ip").args(["netns", "pids", name]), None, TOOL_TIMEOUT)?;
    for pid in String::from_utf8_lossy(&pids.stdout).lines().filter_map(|l| l.trim().parse::<libc::pid_t>().ok()) {
        // SAFETY: kill has no memory preconditions; these processes live in a namespace only the lab uses.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    exec::run(Command::new("ip").args(["netns", "delete", name]), None, TOOL_TIMEOUT).map(drop)
}

/// Records that the lab created the shared parent cgroup `dir`.
pub(crate) fn record_parent(dir: &Path) -> Result<()> {
    let path = Path::new(STATE_DIR).join(PARENTS_FILE);
    let mut parents = read_parents(&path);
    if !parents.iter().any(|p| p == dir) {
        parents.push(dir.to_owned());
    }
    fs::create_dir_all(STATE_DIR).map_err(Error::io("creating", STATE_DIR))?;
    let json = serde_json::to_vec(&parents).map_err(|source| Error::State { path: path.clone(), source })?;
    fs::write(&path, json).map_err(Error::io("writing", &path))
}

fn read_parents(path: &Path) -> Vec<PathBuf> {
    fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Removes the shared parents the lab created once no lab uses them (rmdir fails while a child exists).
fn remove_unused_parents() {
    let path = Path::new(STATE_DIR).join(PARENTS_FILE);
    let mut parents = read_parents(&path);
    if parents.is_empty() {
        return;
    }
    // Deepest first.
    parents.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    parents.retain(|dir| !cgroup::remove_if_empty(dir));
    let _ = if parents.is_empty() {
        fs::remove_file(&path)
    } else {
        serde_json::to_vec(&parents).map_err(std::io::Error::other).and_then(|json| fs::write(&path, json))
    };
}

/// The state files of every lab on this machine.
pub fn all_states() -> Vec<(PathBuf, Result<LabState>)> {
    let Ok(dir) = fs::read_dir(STATE_DIR) else { return Vec::new() };
    let mut states: Vec<_> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json") && !p.ends_with(PARENTS_FILE))
        .map(|p| {
            let state = LabState::load(&p);
            (p, state)
        })
        .collect();
    states.sort_by(|a, b| a.0.cmp(&b.0));
    states
}

/// Removes what crashed labs left behind: every lab in `/run/observer-lab/` whose owning process is
/// gone (persistent labs are left alone). Only the namespaces and cgroups recorded in a state file are
/// touched. Returns the prefixes of the labs removed.
pub fn cleanup_stale() -> Result<Vec<String>> {
    exec::require_root()?;
    let mut removed = Vec::new();
    for (path, state) in all_states() {
        match state {
            Ok(state) if state.is_stale() => {
                for e in state.teardown() {
                    eprintln!("observer-lab: cleaning stale lab {}: {e}", state.prefix);
                }
                removed.push(state.prefix);
            }
            Ok(_) => {}
            Err(e) => eprintln!("observer-lab: ignoring {}: {e}", path.display()),
        }
    }
    remove_unused_parents();
    Ok(removed)
}
