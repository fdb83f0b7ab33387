//! Finds and reads manifest files without following loops or blocking.
//!
//! In: paths named by `--manifests` (files or folders). Out: the regular
//! manifest files under them, each once (by device and inode), in name order,
//! with what went wrong on the way: a path that does not exist, a folder that
//! cannot be listed, a file that is not regular or is too large. Reading a
//! file opens it without blocking, checks it is still a regular file and
//! reads at most [`MAX_FILE_BYTES`].

use std::{
    collections::HashSet,
    fs::{self, File, OpenOptions},
    io::Read as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::SystemTime,
};

/// Largest manifest file read (64 MiB): a `kubectl get -o json` of 10,000
/// pods is about 14 MiB; beyond this a file is refused, not read.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Deepest folder nesting walked below a named path.
pub const MAX_FOLDER_DEPTH: usize = 32;

/// What a file looked like when it was found or read: enough to see that it
/// changed, and that it did not change while it was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Modification time.
    pub modified: Option<SystemTime>,
    /// Size in bytes.
    pub len: u64,
    /// Device and inode: an atomic rename gives a new inode.
    pub inode: (u64, u64),
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        Self { modified: meta.modified().ok(), len: meta.len(), inode: (meta.dev(), meta.ino()) }
    }
}

/// One manifest file found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Its path (as reached: through the named folder, links not resolved).
    pub path: PathBuf,
    /// What it looked like when found.
    pub stamp: Stamp,
}

/// Why a path yielded no file, or a file could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    /// A named path does not exist (or is a dangling link).
    #[error("no such file or folder")]
    Missing,
    /// A folder that cannot be listed (permissions, out of file descriptors).
    #[error("cannot list folder: {reason}")]
    Unlistable {
        /// The system's reason.
        reason: String,
    },
    /// A FIFO, socket or device: never opened, it could block or never end.
    #[error("not a regular file (a FIFO, socket or device): never opened")]
    NotRegular,
    /// Larger than [`MAX_FILE_BYTES`].
    #[error("{len} bytes, more than the {MAX_FILE_BYTES}-byte limit of a manifest file")]
    TooLarge {
        /// Its size.
        len: u64,
    },
    /// Opening or reading it failed.
    #[error("cannot read: {reason}")]
    Unreadable {
        /// The system's reason.
        reason: String,
    },
    /// Its size or modification time changed while it was read.
    #[error("changed while it was read (still being written?)")]
    Changing,
    /// Not UTF-8 text.
    #[error("not UTF-8 text")]
    NotText,
}

impl WalkError {
    /// A short stable name for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Unlistable { .. } => "unlistable",
            Self::NotRegular => "not_regular",
            Self::TooLarge { .. } => "too_large",
            Self::Unreadable { .. } | Self::NotText => "unreadable",
            Self::Changing => "changing",
        }
    }
}

/// Everything found under a set of paths.
#[derive(Clone, Debug, Default)]
pub struct Walk {
    /// Manifest files, each once.
    pub files: Vec<Found>,
    /// Paths that yielded nothing, or part of what they hold, and why.
    pub problems: Vec<(PathBuf, WalkError)>,
}

impl Walk {
    /// Whether `file` lies under a named path or folder that could not be
    /// listed this time: what it held before still stands.
    pub fn hides(&self, file: &Path) -> bool {
        self.problems.iter().any(|(path, error)| {
            matches!(error, WalkError::Missing | WalkError::Unlistable { .. }) && file.starts_with(path)
        })
    }
}

fn is_manifest(path: &Path) -> bool {
    path.extension().and_then(|ext| ext.to_str()).is_some_and(|ext| matches!(ext, "yaml" | "yml" | "json"))
}

/// The manifest files under `paths`: folders walked in name order, links
/// followed but each folder and file visited once (so a link loop or a link
/// to a parent costs nothing), only regular files kept.
pub fn walk(paths: &[PathBuf]) -> Walk {
    let mut walk = Walk::default();
    let mut folders = HashSet::new();
    let mut files = HashSet::new();
    for path in paths {
        match fs::metadata(path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                walk.problems.push((path.clone(), WalkError::Missing));
            }
            Err(error) => walk.problems.push((path.clone(), WalkError::Unlistable { reason: error.to_string() })),
            Ok(meta) if meta.is_dir() => {
                folder(path, &meta, 0, &mut folders, &mut files, &mut walk);
            }
            // A file named explicitly is read whatever its extension.
            Ok(meta) => file(path, &meta, &mut files, &mut walk),
        }
    }
    walk
}

fn file(path: &Path, meta: &fs::Metadata, seen: &mut HashSet<(u64, u64)>, walk: &mut Walk) {
    if !meta.is_file() {
        walk.problems.push((path.to_owned(), WalkError::NotRegular));
        return;
    }
    if !seen.insert((meta.dev(), meta.ino())) {
        // The same file through another link: loaded once.
        return;
    }
    walk.files.push(Found { path: path.to_owned(), stamp: Stamp::of(meta) });
}

fn folder(
    path: &Path,
    meta: &fs::Metadata,
    depth: usize,
    folders: &mut HashSet<(u64, u64)>,
    files: &mut HashSet<(u64, u64)>,
    walk: &mut Walk,
) {
    if !folders.insert((meta.dev(), meta.ino())) {
        // Reached again through a link: a loop, or the same folder twice.
        return;
    }
    if depth > MAX_FOLDER_DEPTH {
        walk.problems.push((
            path.to_owned(),
            WalkError::Unlistable { reason: format!("more than {MAX_FOLDER_DEPTH} folders deep") },
        ));
        return;
    }
    let mut entries = match fs::read_dir(path).and_then(|entries| entries.collect::<Result<Vec<_>, _>>()) {
        Ok(entries) => entries.into_iter().map(|entry| entry.path()).collect::<Vec<_>>(),
        Err(error) => {
            walk.problems.push((path.to_owned(), WalkError::Unlistable { reason: error.to_string() }));
            return;
        }
    };
    entries.sort();
    for entry in entries {
        // Follows links; a dangling one is skipped like any other non-manifest.
        let Ok(meta) = fs::metadata(&entry) else {
            continue;
        };
        if meta.is_dir() {
            folder(&entry, &meta, depth + 1, folders, files, walk);
        } else if is_manifest(&entry) {
            file(&entry, &meta, files, walk);
        }
    }
}

/// Reads a found file: opened without blocking (it may have been replaced
/// by a FIFO since), still a regular file, at most [`MAX_FILE_BYTES`], and
/// unchanged in size and modification time from before the read to after it.
pub fn read(found: &Found) -> Result<(String, Stamp), WalkError> {
    let unreadable = |error: std::io::Error| WalkError::Unreadable { reason: error.to_string() };
    let mut handle: File =
        OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&found.path).map_err(unreadable)?;
    let before = handle.metadata().map_err(unreadable)?;
    if !before.is_file() {
        return Err(WalkError::NotRegular);
    }
    if before.len() > MAX_FILE_BYTES {
        return Err(WalkError::TooLarge { len: before.len() });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(before.len()).unwrap_or(0));
    // One byte more than the limit tells a file that grew past it.
    (&mut handle).take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(unreadable)?;
    let after = handle.metadata().map_err(unreadable)?;
    let stamp = Stamp::of(&after);
    if stamp != Stamp::of(&before) || bytes.len() as u64 != stamp.len {
        return Err(WalkError::Changing);
    }
    let text = String::from_utf8(bytes).map_err(|_| WalkError::NotText)?;
    Ok((text, stamp))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn names(walk: &Walk, root: &Path) -> Vec<String> {
        walk.files
            .iter()
            .map(|found| found.path.strip_prefix(root).unwrap_or(&found.path).display().to_string())
            .collect()
    }

    #[test]
    fn links_to_parents_and_self_are_walked_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir(root.join("sub")).expect("sub");
        fs::write(root.join("a.yaml"), "kind: Namespace\n").expect("a");
        fs::write(root.join("sub/b.yaml"), "kind: Namespace\n").expect("b");
        // A loop (sub/up -> ..), a self-link, and a second link to a file.
        symlink("..", root.join("sub/up")).expect("loop");
        symlink(".", root.join("self")).expect("self");
        symlink("a.yaml", root.join("z.yaml")).expect("file link");
        let walk = walk(&[root.to_owned()]);
        assert_eq!(names(&walk, root), ["a.yaml", "sub/b.yaml"]);
        assert!(walk.problems.is_empty(), "{:?}", walk.problems);
    }

    #[test]
    fn fifos_and_devices_are_never_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let fifo = root.join("pipe.yaml");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a node.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
        symlink("/dev/zero", root.join("zero.yaml")).expect("zero link");
        fs::write(root.join("ok.yaml"), "kind: Namespace\n").expect("ok");
        let walk = walk(&[root.to_owned()]);
        assert_eq!(names(&walk, root), ["ok.yaml"]);
        let skipped: Vec<(&Path, &WalkError)> =
            walk.problems.iter().map(|(path, error)| (path.as_path(), error)).collect();
        assert_eq!(
            skipped,
            [(fifo.as_path(), &WalkError::NotRegular), (root.join("zero.yaml").as_path(), &WalkError::NotRegular)]
        );
    }

    #[test]
    fn missing_and_oversized_are_told_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big.json");
        let handle = File::create(&big).expect("big");
        // Sparse: no disk used.
        handle.set_len(MAX_FILE_BYTES + 1).expect("set_len");
        let walk = walk(&[big.clone(), dir.path().join("nope")]);
        assert_eq!(walk.problems, [(dir.path().join("nope"), WalkError::Missing)]);
        assert_eq!(read(&walk.files[0]), Err(WalkError::TooLarge { len: MAX_FILE_BYTES + 1 }));
    }
}
