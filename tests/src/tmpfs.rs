//! A small tmpfs for tests of full and read-only disks: a size in, a
//! mounted folder out, unmounted and removed on drop (even when a test fails).

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

/// A tmpfs mounted on a fresh folder under the temporary directory.
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
    size: u64,
}

fn c_string(path: &Path) -> CString {
    // Paths made here never contain NUL.
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

fn mount(dir: &Path, size: u64, flags: libc::c_ulong) -> std::io::Result<()> {
    let target = c_string(dir);
    let options = CString::new(format!("size={size},mode=0755")).unwrap_or_default();
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            flags,
            options.as_ptr().cast::<libc::c_void>(),
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes (rounded up to pages by the kernel).
    /// Needs root.
    pub fn mount(size: u64) -> Result<Self> {
        crate::require_root()?;
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let serial = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("observer-tmpfs-{}-{serial}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        if let Err(source) = mount(&dir, size, 0) {
            let _ = std::fs::remove_dir(&dir);
            return Err(Error::Io { what: "mounting a tmpfs on", path: dir, source });
        }
        Ok(Self { dir, size })
    }

    /// The mounted folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Makes the file system read-only (files in it stay, and cannot be
    /// opened for writing, even by root).
    pub fn remount_read_only(&self) -> Result<()> {
        mount(&self.dir, self.size, libc::MS_REMOUNT | libc::MS_RDONLY)
            .map_err(Error::io("remounting read-only", &self.dir))
    }

    /// Fills the free space with a file named `name`, so the next write fails
    /// with "No space left on device"; returns its path (remove it to free the space).
    pub fn fill(&self, name: &str) -> Result<PathBuf> {
        use std::io::Write as _;
        let path = self.dir.join(name);
        let mut file = std::fs::File::create(&path).map_err(Error::io("creating", &path))?;
        let block = [b'x'; 4096];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(source) => return Err(Error::Io { what: "filling", path, source }),
            }
        }
        Ok(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = c_string(&self.dir);
        // SAFETY: umount2(2) with a NUL-terminated path; MNT_DETACH so that a
        // file a test still holds open does not keep the mount.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&self.dir);
    }
}
