//! Runs a rendered pod template's containers under podman the way a kubelet
//! would run them: the declared capabilities, read-only root, privilege
//! escalation, seccomp profile, host paths and ConfigMap volumes, args, env
//! (downward-API values filled in), resource limits, host network and PID.
//!
//! In: the objects of `kubectl kustomize deploy/`, the image, where the pod's
//! network namespace is and what stands in for the node's writable folders.
//! Out: a finished init container ([`run_to_end`]) or a running container
//! ([`PodContainer`]) whose stdout and stderr go to files; it is removed on
//! drop, so a failing test leaves no container behind.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Why a pod template could not be run.
#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    /// The template declares something this runner does not translate.
    #[error("the pod template declares {what}, which this runner does not translate")]
    Unsupported {
        /// What.
        what: String,
    },
    /// A file operation or a command failed to start.
    #[error("{what}")]
    Io {
        /// What was attempted.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A command failed.
    #[error("{command} failed: {output}")]
    Command {
        /// The command line.
        command: String,
        /// Its stderr.
        output: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PodmanError {
    let what = what.into();
    move |source| PodmanError::Io { what, source }
}

/// Which seccomp profile the container gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seccomp {
    /// What the template declares (the container's, else the pod's).
    Declared,
    /// The runtime's default profile, whatever the template says.
    RuntimeDefault,
}

/// Where the pod runs and what stands in for the node.
#[derive(Clone, Debug)]
pub struct PodSetup {
    /// The image reference, for every container whose image the template names.
    pub image: String,
    /// The pod's network namespace (`/run/netns/...`), used when the
    /// template does not ask for the host's network.
    pub netns: PathBuf,
    /// What stands in for the host's network namespace when the template
    /// asks for it (`hostNetwork: true`): the lab's node, never the
    /// machine's own.
    pub host_netns: PathBuf,
    /// Downward-API fields (`spec.nodeName`, ...) and their values.
    pub fields: BTreeMap<String, String>,
    /// Host paths replaced by other folders (the node's writable folders,
    /// so that a test writes only under its own temporary folder).
    pub host_paths: BTreeMap<String, PathBuf>,
    /// The kubelet's root (`/var/lib/kubelet` on a node): `Localhost`
    /// seccomp profiles are read from `seccomp/` below it.
    pub kubelet_root: PathBuf,
    /// A folder for the ConfigMap volumes' files and the containers' output.
    pub work: PathBuf,
    /// Which seccomp profile to apply.
    pub seccomp: Seccomp,
    /// Arguments appended to the container's own.
    pub extra_args: Vec<String>,
    /// Extra read-only bind mounts `(host, container)`.
    pub extra_mounts: Vec<(PathBuf, String)>,
}

/// The podman arguments (after `podman run`) that run `container` of the
/// pod template `pod` (a DaemonSet's `spec.template`) found in `objects`.
pub fn run_args(
    objects: &[Value],
    pod: &Value,
    container: &Value,
    name: &str,
    setup: &PodSetup,
) -> Result<Vec<String>, PodmanError> {
    let spec = &pod["spec"];
    let unsupported = |what: String| Err(PodmanError::Unsupported { what });
    // On this machine crun refuses hybrid cgroup hosts, and root lacks
    // CAP_SYS_RESOURCE, so the ulimits may not exceed the host's.
    let mut args: Vec<String> = ["--name", name, "--runtime", "runc", "--ulimit", "nofile=4096:4096"]
        .into_iter()
        .chain(["--ulimit", "nproc=4096:4096", "--pull=never", "--log-driver=none"])
        .map(str::to_owned)
        .collect();
    let netns = if spec["hostNetwork"] == true { &setup.host_netns } else { &setup.netns };
    args.push(format!("--network=ns:{}", netns.display()));
    if spec["hostPID"] == true {
        args.push("--pid=host".to_owned());
    }
    if spec["hostIPC"] == true {
        args.push("--ipc=host".to_owned());
    }
    let context = &container["securityContext"];
    let pod_context = &spec["securityContext"];
    let user = context["runAsUser"].as_u64().or_else(|| pod_context["runAsUser"].as_u64());
    if let Some(user) = user {
        args.push(format!("--user={user}"));
    }
    if context["privileged"] == true {
        args.push("--privileged".to_owned());
    }
    if context["allowPrivilegeEscalation"] == false {
        args.push("--security-opt=no-new-privileges".to_owned());
    }
    if context["readOnlyRootFilesystem"] == true {
        // Kubernetes mounts no tmpfs of its own on a read-only root.
        args.extend(["--read-only".to_owned(), "--read-only-tmpfs=false".to_owned()]);
    }
    for cap in context["capabilities"]["drop"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        args.push(format!("--cap-drop={}", if cap == "ALL" { "all".to_owned() } else { format!("CAP_{cap}") }));
    }
    for cap in context["capabilities"]["add"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        args.push(format!("--cap-add=CAP_{cap}"));
    }
    let profile =
        if context["seccompProfile"].is_object() { &context["seccompProfile"] } else { &pod_context["seccompProfile"] };
    match (setup.seccomp, profile["type"].as_str()) {
        (Seccomp::RuntimeDefault, _) | (Seccomp::Declared, Some("RuntimeDefault")) => {}
        (Seccomp::Declared, Some("Localhost")) => {
            let file =
                setup.kubelet_root.join("seccomp").join(profile["localhostProfile"].as_str().unwrap_or_default());
            args.push(format!("--security-opt=seccomp={}", file.display()));
        }
        (Seccomp::Declared, Some("Unconfined")) => args.push("--security-opt=seccomp=unconfined".to_owned()),
        (Seccomp::Declared, other) => return unsupported(format!("seccomp profile {other:?}")),
    }
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let volume_name = mount["name"].as_str().unwrap_or_default();
        let volume =
            spec["volumes"].as_array().into_iter().flatten().find(|volume| volume["name"] == volume_name).ok_or_else(
                || PodmanError::Unsupported { what: format!("a mount of undeclared volume {volume_name}") },
            )?;
        let source = volume_source(objects, volume, setup)?;
        let target = mount["mountPath"].as_str().unwrap_or_default();
        let read_only = if mount["readOnly"] == true { ",ro" } else { "" };
        args.push(format!("--volume={}:{target}:rbind{read_only}", source.display()));
    }
    for (host, target) in &setup.extra_mounts {
        args.push(format!("--volume={}:{target}:rbind,ro", host.display()));
    }
    for variable in container["env"].as_array().into_iter().flatten() {
        let key = variable["name"].as_str().unwrap_or_default();
        let value = if let Some(value) = variable["value"].as_str() {
            value.to_owned()
        } else if let Some(field) = variable["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            setup.fields.get(field).cloned().ok_or_else(|| PodmanError::Unsupported {
                what: format!("env {key} from field {field}, which the test did not fill in"),
            })?
        } else {
            return unsupported(format!("env {key} from {}", variable["valueFrom"]));
        };
        args.push(format!("--env={key}={value}"));
    }
    let limits = &container["resources"]["limits"];
    if let Some(memory) = limits["memory"].as_str() {
        args.push(format!("--memory={}", memory_quantity(memory)?));
    }
    if let Some(cpu) = limits["cpu"].as_str() {
        args.push(format!("--cpus={}", cpu_quantity(cpu)?));
    }
    if let Some(command) = container["command"].as_array() {
        return unsupported(format!("command {command:?}"));
    }
    args.push(setup.image.clone());
    args.extend(container["args"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned));
    args.extend(setup.extra_args.iter().cloned());
    Ok(args)
}

/// The host folder a volume stands for.
fn volume_source(objects: &[Value], volume: &Value, setup: &PodSetup) -> Result<PathBuf, PodmanError> {
    let name = volume["name"].as_str().unwrap_or_default();
    if let Some(path) = volume["hostPath"]["path"].as_str() {
        let source = setup.host_paths.get(path).cloned().unwrap_or_else(|| PathBuf::from(path));
        match volume["hostPath"]["type"].as_str() {
            Some("DirectoryOrCreate") => fs::create_dir_all(&source).map_err(io(format!("creating {path}")))?,
            Some("Directory") if !source.is_dir() => {
                return Err(PodmanError::Unsupported { what: format!("host path {path}, which is no folder here") });
            }
            _ => {}
        }
        return Ok(source);
    }
    if let Some(map) = volume["configMap"]["name"].as_str() {
        let object =
            objects
                .iter()
                .find(|object| object["kind"] == "ConfigMap" && object["metadata"]["name"] == map)
                .ok_or_else(|| PodmanError::Unsupported { what: format!("ConfigMap {map}, which is not rendered") })?;
        let dir = setup.work.join(format!("configmap-{name}"));
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        for (key, text) in object["data"].as_object().into_iter().flatten() {
            let file = dir.join(key);
            fs::write(&file, text.as_str().unwrap_or_default()).map_err(io(format!("writing {}", file.display())))?;
        }
        return Ok(dir);
    }
    Err(PodmanError::Unsupported { what: format!("volume {name} of a kind other than hostPath or configMap") })
}

/// `512Mi` → `512m` (podman's binary suffixes).
fn memory_quantity(quantity: &str) -> Result<String, PodmanError> {
    for (suffix, unit) in [("Ki", "k"), ("Mi", "m"), ("Gi", "g")] {
        if let Some(number) = quantity.strip_suffix(suffix) {
            return Ok(format!("{number}{unit}"));
        }
    }
    if quantity.chars().all(|c| c.is_ascii_digit()) {
        return Ok(quantity.to_owned());
    }
    Err(PodmanError::Unsupported { what: format!("memory quantity {quantity}") })
}

/// `1` → `1`, `500m` → `0.5`.
fn cpu_quantity(quantity: &str) -> Result<String, PodmanError> {
    let parsed = match quantity.strip_suffix('m') {
        Some(millis) => millis.parse::<f64>().map(|millis| millis / 1000.0),
        None => quantity.parse::<f64>(),
    };
    parsed.map(|cpus| cpus.to_string()).map_err(|_| PodmanError::Unsupported { what: format!("cpu {quantity}") })
}

/// Runs a container to its end (an init container) and returns its status
/// and output (stdout and stderr together).
pub fn run_to_end(args: &[String], limit: Duration) -> Result<(ExitStatus, String), PodmanError> {
    let name = args.get(1).cloned().unwrap_or_default();
    let mut child = Command::new("podman")
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io("starting podman"))?;
    let start = Instant::now();
    while start.elapsed() < limit {
        if child.try_wait().map_err(io("waiting for podman"))?.is_some() {
            let output = child.wait_with_output().map_err(io("reading podman's output"))?;
            remove(&name);
            let text =
                format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
            return Ok((output.status, text));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    remove(&name);
    Err(PodmanError::Command {
        command: format!("podman run {}", args.join(" ")),
        output: format!("not done in {limit:?}"),
    })
}

/// Removes a container by name, whatever its state.
fn remove(name: &str) {
    let _ = Command::new("podman")
        .args(["rm", "--force", "--time", "0", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A container running in the foreground of a `podman run` child.
#[derive(Debug)]
pub struct PodContainer {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl PodContainer {
    /// Starts `podman run args...`; the output goes to files in `work`.
    pub fn start(args: &[String], work: &Path) -> Result<Self, PodmanError> {
        let name = args.get(1).cloned().unwrap_or_default();
        let stdout = work.join(format!("{name}.stdout"));
        let stderr = work.join(format!("{name}.stderr"));
        let file = |path: &Path| fs::File::create(path).map_err(io(format!("creating {}", path.display())));
        let child = Command::new("podman")
            .arg("run")
            .args(args)
            .stdin(Stdio::null())
            .stdout(file(&stdout)?)
            .stderr(file(&stderr)?)
            .spawn()
            .map_err(io("starting podman"))?;
        Ok(Self { name, child, stdout, stderr })
    }

    /// What the container wrote to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// What the container (and podman) wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The container's exit, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `signal` to the container's main process (what the kubelet
    /// does when a pod is deleted) and waits at most `grace` for its exit.
    pub fn stop(&mut self, signal: &str, grace: Duration) -> Result<ExitStatus, PodmanError> {
        let output = Command::new("podman")
            .args(["kill", "--signal", signal, &self.name])
            .output()
            .map_err(io("starting podman kill"))?;
        if !output.status.success() {
            return Err(PodmanError::Command {
                command: format!("podman kill --signal {signal} {}", self.name),
                output: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Some(status) = self.try_wait() {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(PodmanError::Command {
            command: format!("podman kill --signal {signal} {}", self.name),
            output: format!("the container did not exit within {grace:?}"),
        })
    }

    /// Waits at most `limit` for the container to exit by itself.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for PodContainer {
    fn drop(&mut self) {
        remove(&self.name);
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A label of a local image (`podman image inspect`).
pub fn image_label(image: &str, label: &str) -> Result<String, PodmanError> {
    let format = format!("{{{{index .Labels \"{label}\"}}}}");
    let output = Command::new("podman")
        .args(["image", "inspect", "--format", &format, image])
        .output()
        .map_err(io("starting podman image inspect"))?;
    if !output.status.success() {
        return Err(PodmanError::Command {
            command: format!("podman image inspect {image}"),
            output: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Whether the image is in the local storage.
pub fn image_exists(image: &str) -> bool {
    Command::new("podman")
        .args(["image", "exists", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_translate() {
        assert_eq!(memory_quantity("512Mi").expect("Mi"), "512m");
        assert_eq!(cpu_quantity("1").expect("cores"), "1");
        assert_eq!(cpu_quantity("100m").expect("millicores"), "0.1");
        assert!(memory_quantity("1.5G").is_err());
    }
}
