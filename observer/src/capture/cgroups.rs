//! Names cgroups: cgroup v2 id → path below the cgroup root.
//!
//! In: the cgroup ids the kernel programs put in flow keys. Out: paths such as
//! `/kubepods/besteffort/pod<uid>/<container>`, found by walking the cgroup
//! tree (the id of a cgroup v2 directory is its inode number). Unknown ids
//! trigger a rescan at most once per `rescan_after`.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

/// Cache of cgroup id → path.
#[derive(Debug)]
pub struct CgroupPaths {
    root: PathBuf,
    paths: HashMap<u64, Arc<str>>,
    last_scan: Option<Instant>,
    rescan_after: Duration,
}

/// Folders deeper than this are not walked (kubelet's tree is 3–4 deep).
const MAX_DEPTH: usize = 8;

impl CgroupPaths {
    /// A cache over the cgroup v2 tree at `root`.
    pub fn new(root: PathBuf, rescan_after: Duration) -> Self {
        Self { root, paths: HashMap::new(), last_scan: None, rescan_after }
    }

    /// The path of cgroup `id`, rescanning the tree if it is unknown and the
    /// last scan is old enough.
    pub fn path(&mut self, id: u64) -> Option<Arc<str>> {
        if let Some(path) = self.paths.get(&id) {
            return Some(Arc::clone(path));
        }
        if self.last_scan.is_some_and(|at| at.elapsed() < self.rescan_after) {
            return None;
        }
        self.rescan();
        self.paths.get(&id).cloned()
    }

    /// Whether cgroup `id` is under the root, rescanning as [`Self::path`] does.
    pub fn contains(&mut self, id: u64) -> bool {
        if self.paths.contains_key(&id) {
            return true;
        }
        if self.last_scan.is_some_and(|at| at.elapsed() < self.rescan_after) {
            return false;
        }
        self.rescan();
        self.paths.contains_key(&id)
    }

    /// Walks the whole tree again, dropping cgroups that are gone.
    pub fn rescan(&mut self) {
        self.paths.clear();
        walk(&self.root, &self.root, 0, &mut self.paths);
        self.last_scan = Some(Instant::now());
    }
}

fn walk(root: &Path, dir: &Path, depth: usize, paths: &mut HashMap<u64, Arc<str>>) {
    let Ok(metadata) = fs::metadata(dir) else { return };
    let relative = dir.strip_prefix(root).map(|rest| format!("/{}", rest.display())).unwrap_or_default();
    paths.insert(metadata.ino(), Arc::from(relative.as_str()));
    if depth >= MAX_DEPTH {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            walk(root, &entry.path(), depth + 1, paths);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_a_tree_by_inode() {
        let root = std::env::temp_dir().join(format!("cgroups-test-{}", std::process::id()));
        let leaf = root.join("kubepods/besteffort/podabc/cid");
        fs::create_dir_all(&leaf).expect("create tree");
        let mut paths = CgroupPaths::new(root.clone(), Duration::from_secs(60));
        let id = fs::metadata(&leaf).expect("stat").ino();
        assert_eq!(paths.path(id).as_deref(), Some("/kubepods/besteffort/podabc/cid"));
        let root_id = fs::metadata(&root).expect("stat").ino();
        assert_eq!(paths.path(root_id).as_deref(), Some("/"));
        assert!(paths.contains(id) && !paths.contains(u64::MAX));
        fs::remove_dir_all(&root).expect("cleanup");
    }
}
