//! `observer seccomp-profile`: the seccomp profile the observer's container
//! needs (the runtime default plus `bpf` and `perf_event_open`), printed or
//! installed where the kubelet looks for `Localhost` profiles.
//!
//! In: a folder (the DaemonSet's init container mounts the node's
//! `/var/lib/kubelet/seccomp/flow-observer`). Out: `observer.json` there,
//! replaced atomically and only when it differs, or the profile on stdout.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

/// The profile, `deploy/seccomp/flow-observer.json` (see its README).
pub const PROFILE: &str = include_str!("../../deploy/seccomp/flow-observer.json");
/// The file name the DaemonSet's `localhostProfile` names.
pub const FILE_NAME: &str = "observer.json";

/// Why the profile could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A file operation failed.
    #[error("cannot {action} {path}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Installs the profile into `folder` if given, else prints it.
pub fn run(folder: Option<&Path>) -> Result<(), InstallError> {
    match folder {
        Some(dir) => {
            let path = install(dir)?;
            tracing::info!(path = %path.display(), "seccomp profile installed");
            Ok(())
        }
        None => std::io::stdout().write_all(PROFILE.as_bytes()).map_err(|source| InstallError::Io {
            action: "write",
            path: PathBuf::from("/dev/stdout"),
            source,
        }),
    }
}

/// Writes `dir/observer.json` unless it already holds the profile; a
/// runtime reading it meanwhile sees the old file or the new one, whole.
pub fn install(dir: &Path) -> Result<PathBuf, InstallError> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| InstallError::Io { action, path, source }
    };
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let path = dir.join(FILE_NAME);
    if std::fs::read(&path).is_ok_and(|current| current == PROFILE.as_bytes()) {
        return Ok(path);
    }
    let temporary = dir.join(format!(".{FILE_NAME}.{}", std::process::id()));
    let mut file = std::fs::File::create(&temporary).map_err(io("create", &temporary))?;
    file.write_all(PROFILE.as_bytes()).map_err(io("write", &temporary))?;
    file.sync_all().map_err(io("sync", &temporary))?;
    std::fs::rename(&temporary, &path).map_err(io("rename into place", &path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_is_the_oci_format_and_allows_what_the_observer_needs() {
        let profile: serde_json::Value = serde_json::from_str(PROFILE).expect("the profile is JSON");
        assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
        let rules = profile["syscalls"].as_array().expect("syscalls");
        let action_of = |name: &str| -> Vec<&str> {
            rules
                .iter()
                .filter(|rule| rule["names"].as_array().is_some_and(|names| names.iter().any(|n| n == name)))
                .filter_map(|rule| rule["action"].as_str())
                .collect()
        };
        // Allowed once, unconditionally, and refused by no other rule.
        for needed in ["bpf", "perf_event_open"] {
            assert_eq!(action_of(needed), ["SCMP_ACT_ALLOW"], "{needed}");
        }
        // Still refused as by the runtime default.
        for refused in ["kexec_load", "init_module", "setns", "mount", "unshare"] {
            assert!(!action_of(refused).contains(&"SCMP_ACT_ALLOW"), "{refused}");
        }
        // Plain OCI: no capability or architecture conditions, which
        // containerd would ignore (and so apply unconditionally).
        assert!(rules.iter().all(|rule| rule.get("includes").is_none() && rule.get("excludes").is_none()));
    }

    #[test]
    fn install_writes_once_and_replaces_a_different_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("flow-observer");
        let path = install(&target).expect("install");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), PROFILE);
        std::fs::write(&path, "{}").expect("overwrite");
        install(&target).expect("reinstall");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), PROFILE);
        let names: Vec<_> =
            std::fs::read_dir(&target).expect("list").flatten().map(|entry| entry.file_name()).collect();
        assert_eq!(names, [FILE_NAME], "no temporary file left");
    }
}
