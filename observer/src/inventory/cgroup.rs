//! Reads which pod and container a kubelet cgroup path belongs to.
//!
//! In: a cgroup path relative to the cgroup root, as kubelet lays it out with
//! the cgroupfs or systemd driver for containerd, CRI-O or Docker. Out: the pod
//! uid and container id it names, borrowed from the path (no allocation, as
//! this runs for every flow).
//!
//! Shapes understood (QoS class directory absent for Guaranteed pods):
//! - cgroupfs: `/kubepods/burstable/pod<uid>/<container-id>`
//! - systemd: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`
//!   (also `crio-<id>.scope`, `crio-conmon-<id>.scope`, `docker-<id>.scope`)
//! - containerd's cgroup v1 systemd form: `/system.slice/containerd.service/kubepods-burstable-pod<uid>.slice:cri-containerd:<id>`
//!
//! Anything above the `kubepods` part (a kind node's `/kubelet.slice/...`, a
//! nested cgroup namespace) is ignored.

/// Runtime prefixes of a container's systemd scope name, longest first.
const SCOPE_PREFIXES: [&str; 5] = ["cri-containerd-", "crio-conmon-", "cri-dockerd-", "crio-", "docker-"];

/// The uid as the cgroup path spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodUid<'a> {
    raw: &'a str,
    /// The systemd driver writes the uid's `-` as `_`.
    underscored: bool,
}

impl<'a> PodUid<'a> {
    /// The uid as the API server spells it, using `buf` to undo systemd's
    /// underscores. Uids longer than `buf` (never kubelet's) are returned as written.
    pub fn normalized<'s>(&'s self, buf: &'s mut [u8; 64]) -> &'s str {
        if !self.underscored || self.raw.len() > buf.len() || !self.raw.contains('_') {
            return self.raw;
        }
        let out = &mut buf[..self.raw.len()];
        for (to, from) in out.iter_mut().zip(self.raw.bytes()) {
            *to = if from == b'_' { b'-' } else { from };
        }
        // Replacing one ASCII byte by another keeps the text valid UTF-8.
        std::str::from_utf8(out).unwrap_or(self.raw)
    }

    /// The normalized uid, owned.
    pub fn to_owned_uid(&self) -> String {
        let mut buf = [0; 64];
        self.normalized(&mut buf).to_owned()
    }
}

/// The pod and container a cgroup path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupRef<'a> {
    /// The pod's uid.
    pub pod_uid: PodUid<'a>,
    /// The container id, if the path goes below the pod's own cgroup.
    pub container_id: Option<&'a str>,
}

/// Parses a kubelet cgroup path; `None` for paths outside `kubepods`.
pub fn parse(path: &str) -> Option<CgroupRef<'_>> {
    // Walks up from the leaf, so the pod is found after a segment or two and
    // the rest of a long path is never read (this runs for every flow).
    let mut below: Option<&str> = None;
    let mut rest = path;
    while !rest.is_empty() {
        let (above, segment) = rest.rsplit_once('/').unwrap_or(("", rest));
        rest = above;
        if segment.is_empty() {
            continue;
        }
        // containerd's cgroup v1 systemd form puts pod and container in one segment.
        if let Some((slice, runtime_and_id)) = segment.split_once(':') {
            if let Some(pod_uid) = pod_segment(slice, above) {
                let container_id = runtime_and_id.rsplit_once(':').map(|(_, id)| id).filter(|id| !id.is_empty());
                return Some(CgroupRef { pod_uid, container_id });
            }
        } else if let Some(pod_uid) = pod_segment(segment, above) {
            return Some(CgroupRef { pod_uid, container_id: below.and_then(container_segment) });
        }
        below = Some(segment);
    }
    None
}

/// The uid in `pod<uid>` under a `kubepods` folder (cgroupfs) or in
/// `kubepods-<class>-pod<uid>.slice` (systemd).
fn pod_segment<'a>(segment: &'a str, above: &str) -> Option<PodUid<'a>> {
    let (raw, underscored) = match segment.strip_suffix(".slice") {
        Some(slice) if slice.contains("kubepods") => (slice.rsplit_once('-')?.1.strip_prefix("pod")?, true),
        Some(_) => return None,
        None if above.contains("kubepods") => (segment.strip_prefix("pod")?, false),
        None => return None,
    };
    (!raw.is_empty()).then_some(PodUid { raw, underscored })
}

/// The container id in `<runtime>-<id>.scope` or a bare cgroupfs `<id>`.
fn container_segment(segment: &str) -> Option<&str> {
    let id = match segment.strip_suffix(".scope") {
        Some(scope) => SCOPE_PREFIXES.iter().find_map(|prefix| scope.strip_prefix(prefix))?,
        None => segment,
    };
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "8f1c2a4e-5b6d-4e7f-9a0b-1c2d3e4f5a6b";
    const ID: &str = "3b4f0c8e9d2a1f6e7c5b4a3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f";

    fn parsed(path: &str) -> (String, Option<String>) {
        let cgroup = parse(path).unwrap_or_else(|| panic!("{path} should parse"));
        (cgroup.pod_uid.to_owned_uid(), cgroup.container_id.map(str::to_owned))
    }

    #[test]
    fn cgroupfs_shapes_for_every_qos_class() {
        for class in ["besteffort/", "burstable/", ""] {
            let path = format!("/kubepods/{class}pod{UID}/{ID}");
            assert_eq!(parsed(&path), (UID.to_owned(), Some(ID.to_owned())), "{path}");
        }
        // The lab's relative form and a pod's own cgroup.
        assert_eq!(parsed(&format!("kubepods/besteffort/pod{UID}/web")), (UID.to_owned(), Some("web".to_owned())));
        assert_eq!(parsed(&format!("/kubepods/burstable/pod{UID}/")), (UID.to_owned(), None));
    }

    #[test]
    fn systemd_shapes_for_each_runtime() {
        let underscored = UID.replace('-', "_");
        for (class, runtime) in [
            ("besteffort", "cri-containerd"),
            ("burstable", "crio"),
            ("burstable", "crio-conmon"),
            ("besteffort", "docker"),
        ] {
            let path = format!(
                "/kubepods.slice/kubepods-{class}.slice/kubepods-{class}-pod{underscored}.slice/{runtime}-{ID}.scope"
            );
            assert_eq!(parsed(&path), (UID.to_owned(), Some(ID.to_owned())), "{path}");
        }
        let guaranteed = format!("/kubepods.slice/kubepods-pod{underscored}.slice/cri-containerd-{ID}.scope");
        assert_eq!(parsed(&guaranteed), (UID.to_owned(), Some(ID.to_owned())));
    }

    #[test]
    fn nested_roots_and_cgroup_v1_colon_form() {
        let underscored = UID.replace('-', "_");
        let kind = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{underscored}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(parsed(&kind), (UID.to_owned(), Some(ID.to_owned())));
        let colon =
            format!("/system.slice/containerd.service/kubepods-burstable-pod{underscored}.slice:cri-containerd:{ID}");
        assert_eq!(parsed(&colon), (UID.to_owned(), Some(ID.to_owned())));
        // A process nested inside a container's cgroup still belongs to the pod.
        let nested = format!("/kubepods/burstable/pod{UID}/{ID}/init.scope");
        assert_eq!(parsed(&nested).0, UID);
    }

    #[test]
    fn paths_outside_kubepods_are_not_pods() {
        for path in
            ["/", "", "/system.slice/sshd.service", "/user.slice/user-0.slice/session-1.scope", "/kubepods/burstable"]
        {
            assert_eq!(parse(path), None, "{path}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_uid_and_id_round_trip_through_every_driver(
            uid in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            id in "[0-9a-f]{64}",
            class in proptest::sample::select(vec!["besteffort", "burstable", ""]),
        ) {
            let underscored = uid.replace('-', "_");
            let (cgroupfs_class, systemd_class, pod_prefix) = if class.is_empty() {
                (String::new(), String::new(), "kubepods".to_owned())
            } else {
                (format!("{class}/"), format!("kubepods-{class}.slice/"), format!("kubepods-{class}"))
            };
            let cgroupfs = format!("/kubepods/{cgroupfs_class}pod{uid}/{id}");
            let systemd = format!("/kubepods.slice/{systemd_class}{pod_prefix}-pod{underscored}.slice/crio-{id}.scope");
            for path in [cgroupfs, systemd] {
                proptest::prop_assert_eq!(parsed(&path), (uid.clone(), Some(id.clone())), "{}", path);
            }
        }

        #[test]
        fn arbitrary_paths_never_panic(path in "[a-z0-9_./:-]{0,120}") {
            let _ = parse(&path);
        }
    }
}
