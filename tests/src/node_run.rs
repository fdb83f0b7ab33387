//! One observer run on a lab node, as the node tests set it up.
//!
//! In: a name for the run. Out: a fresh folder holding `manifests/` (what the
//! observer reads as its cluster), `config.yaml` and `findings.jsonl`, and an
//! observer started over them in the lab node's network namespace, as a
//! hostNetwork DaemonSet pod runs. The folder is removed on drop.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use serde_json::Value;

use crate::{Lab, NODE_NAME, ObserverProcess};

/// The folder of one run.
pub struct NodeRunDir {
    dir: PathBuf,
}

impl NodeRunDir {
    /// A fresh, empty folder named after `name` and this process, with `manifests/` in it.
    pub fn create(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("manifests")).expect("manifest dir");
        Self { dir }
    }

    /// The folder itself.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The folder the observer reads its manifests from.
    pub fn manifests(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    /// The observer's `--config`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.yaml")
    }

    /// The observer's `--findings-log`.
    pub fn findings_path(&self) -> PathBuf {
        self.dir.join("findings.jsonl")
    }

    /// The last line of each finding in the findings log, a finding being what `key` names
    /// (the log writes a finding again when it repeats).
    pub fn findings_by(&self, key: impl Fn(&Value) -> String) -> Vec<Value> {
        let text = std::fs::read_to_string(self.findings_path()).unwrap_or_default();
        let mut last: HashMap<String, Value> = HashMap::new();
        for line in text.lines() {
            let finding: Value = serde_json::from_str(line).expect("finding is JSON");
            last.insert(key(&finding), finding);
        }
        last.into_values().collect()
    }

    /// Starts the observer in `lab`'s node network namespace as node [`NODE_NAME`], over this
    /// folder's manifests, config and findings log, polling every 200 ms and ending idle flows
    /// after 2 s; `extra` arguments follow.
    pub fn start_observer(&self, lab: &Lab, extra: &[&str]) -> ObserverProcess {
        let arg = |path: PathBuf| path.display().to_string();
        let (manifests, config, findings) = (arg(self.manifests()), arg(self.config()), arg(self.findings_path()));
        let mut args = vec![
            "--poll-interval",
            "200ms",
            "--idle-timeout",
            "2s",
            "--manifests",
            &manifests,
            "--node-name",
            NODE_NAME,
            "--config",
            &config,
            "--findings-log",
            &findings,
        ];
        args.extend_from_slice(extra);
        ObserverProcess::start_in_netns(&lab.node_netns_path(), &args).expect("observer starts in the node namespace")
    }
}

impl Drop for NodeRunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
