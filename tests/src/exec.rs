//! Running programs: a `Command` in, its output (bounded by a timeout) or a running-process guard out;
//! also entering a network namespace and cgroup before `exec`, and checks for the tools the lab needs.

use std::{
    ffi::CString,
    io::{BufRead, BufReader, Read, Write},
    os::unix::{ffi::OsStrExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use crate::error::{Error, Result};

/// How often a waiting loop looks at a child again.
const POLL: Duration = Duration::from_millis(5);

/// Fails with [`Error::NotRoot`] unless the effective uid is 0.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 { Ok(()) } else { Err(Error::NotRoot) }
}

/// Fails with [`Error::MissingTool`] naming the Debian package when `tool` is not in `PATH`.
pub fn require_tool(tool: &'static str, package: &'static str) -> Result<PathBuf> {
    find_in_path(tool).ok_or(Error::MissingTool { tool, package })
}

/// The first executable called `name` in `PATH`.
pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// The command line of `cmd` for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// A path as a C string, for use after `fork` where nothing may allocate.
fn c_path(path: &Path) -> CString {
    // Paths built by the lab never contain NUL; if one did, the empty string makes open fail with ENOENT.
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

/// Makes `cmd` join the cgroup (if given) and then the network namespace at `netns_path` before `exec`.
///
/// The cgroup comes first so that every process the program forks is accounted to it from the start,
/// including anything it does in the new namespace.
pub(crate) fn enter(cmd: &mut Command, netns_path: &Path, cgroup_dir: Option<&Path>) {
    let netns = c_path(netns_path);
    let procs = cgroup_dir.map(|dir| c_path(&dir.join("cgroup.procs")));
    // SAFETY: the closure runs in the forked child and only calls async-signal-safe functions
    // (open, write, setns, close) on memory allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = &procs {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" moves the writing process itself.
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(err);
                }
            }
            let fd = libc::open(netns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let rc = libc::setns(fd, libc::CLONE_NEWNET);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if rc != 0 {
                return Err(err);
            }
            Ok(())
        });
    }
}

/// Runs `f` on a fresh thread that has entered the network namespace at `netns_path`.
///
/// Network namespaces are per thread, so the caller's thread never changes namespace; used for the
/// per-namespace `/proc/sys/net` knobs.
pub(crate) fn in_netns<T: Send>(netns_path: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    thread::scope(|s| {
        s.spawn(|| {
            let ns = std::fs::File::open(netns_path).map_err(Error::io("opening network namespace", netns_path))?;
            use std::os::fd::AsRawFd;
            // SAFETY: a valid namespace fd; setns only affects this thread, which ends after `f`.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(Error::io("entering network namespace", netns_path)(std::io::Error::last_os_error()));
            }
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs `cmd` to completion with `stdin` fed to it, killing it after `timeout`; fails unless it exits 0.
pub(crate) fn run(cmd: &mut Command, stdin: Option<&str>, timeout: Duration) -> Result<Output> {
    let output = run_unchecked(cmd, stdin, timeout)?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(Error::Command {
            command: describe(cmd),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Runs `cmd` to completion with `stdin` fed to it, killing it after `timeout`, whatever its exit status.
pub(crate) fn run_unchecked(cmd: &mut Command, stdin: Option<&str>, timeout: Duration) -> Result<Output> {
    let command = describe(cmd);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| Error::Spawn { command: command.clone(), source })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Small inputs (ip/nft batches) fit the pipe buffer; a failed write shows up as a failed command.
        let _ = pipe.write_all(input.as_bytes());
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Timeout { command, timeout });
            }
        }
    };
    // The pipes close when the child exits unless it left a grandchild holding them; don't wait for that.
    let grace = Duration::from_secs(2);
    Ok(Output {
        status,
        stdout: stdout.recv_timeout(grace).unwrap_or_default(),
        stderr: stderr.recv_timeout(grace).unwrap_or_default(),
    })
}

/// Reads a pipe to its end on a thread; the bytes arrive on the returned channel.
fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    }
    rx
}

/// A running child process, killed (SIGKILL) and reaped when dropped.
///
/// Its stdout is collected line by line; [`Proc::wait_for_line`] waits (bounded) for a line,
/// and [`Proc::send_line`] writes one to its stdin.
#[must_use = "the process is killed when the guard is dropped"]
#[derive(Debug)]
pub struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    command: String,
    lines: Arc<Mutex<Vec<String>>>,
    /// Disconnected once every stdout line has been collected (the pipe closed).
    stdout_done: mpsc::Receiver<()>,
    stderr: mpsc::Receiver<Vec<u8>>,
}

impl Proc {
    /// Spawns `cmd` with stdout collected by the guard and stderr kept for error messages.
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        let command = describe(cmd);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| Error::Spawn { command: command.clone(), source })?;
        let stdin = child.stdin.take();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (collecting, stdout_done) = mpsc::channel::<()>();
        if let Some(out) = child.stdout.take() {
            let lines = Arc::clone(&lines);
            thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(mut lines) = lines.lock() {
                        lines.push(line);
                    }
                }
                drop(collecting);
            });
        }
        let stderr = drain(child.stderr.take());
        Ok(Self { child, stdin, command, lines, stdout_done, stderr })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The stdout lines printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Writes `line` and a newline to the process's stdin.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let write = |stdin: &mut ChildStdin| writeln!(stdin, "{line}").and_then(|()| stdin.flush());
        self.stdin
            .as_mut()
            .map_or_else(|| Err(std::io::Error::other("stdin closed")), write)
            .map_err(|source| Error::Stdin { command: self.command.clone(), source })
    }

    /// Waits up to `timeout` for a stdout line matching `pred` and returns it.
    pub fn wait_for_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| pred(l)) {
                return Ok(line);
            }
            let exited = matches!(self.child.try_wait(), Ok(Some(_)));
            if exited {
                // Its last lines may still be in the pipe: look again once they are all collected.
                let _ = self.stdout_done.recv_timeout(POLL * 200);
                if let Some(line) = self.lines().into_iter().find(|l| pred(l)) {
                    return Ok(line);
                }
            }
            if exited || Instant::now() >= deadline {
                let stderr = if exited {
                    String::from_utf8_lossy(&self.stderr.recv_timeout(POLL * 100).unwrap_or_default()).into_owned()
                } else {
                    String::from("(still running)")
                };
                return Err(Error::NotReady { command: self.command.clone(), timeout, stderr });
            }
            thread::sleep(POLL);
        }
    }

    /// Waits up to `timeout` for the process to exit on its own; kills it and fails after that.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
                _ => {
                    self.kill();
                    return Err(Error::Timeout { command: self.command.clone(), timeout });
                }
            }
        }
    }

    /// Kills (SIGKILL) and reaps the process; a no-op if it already exited.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
