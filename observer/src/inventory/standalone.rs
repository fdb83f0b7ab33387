//! The standalone source: manifest files instead of an API server.
//!
//! In: files or folders of manifests, checked for changes (files added or
//! removed, size, modification time, inode) every reload interval. Out: on
//! each change, a full list of every resource to the [`Writer`], exactly as a
//! cluster relist would send it, so everything downstream behaves the same in
//! both modes. It fails closed, file by file: a changed file is read only once
//! its size and modification time have held for a whole interval, and a file
//! that cannot be read or parsed completely (half written, unreadable, its
//! folder unlistable, its path gone) keeps in force what it held at its last
//! good read, while the errors make the source failing (and stale after the
//! threshold) until everything reads cleanly again.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use k8s_openapi::api::core::v1 as core;

use super::{
    convert,
    manifests::{self, ManifestError, Manifests, Object},
    resource::Resource,
    store::{Item, Update},
    walk::{self, Found, Stamp},
    writer::Writer,
};

/// Every resource manifests can hold.
pub(crate) const RESOURCES: [Resource; 11] = [
    Resource::Pods,
    Resource::Namespaces,
    Resource::NetworkPolicies,
    Resource::Services,
    Resource::EndpointSlices,
    Resource::Nodes,
    Resource::ReplicaSets,
    Resource::Jobs,
    Resource::Controllers,
    Resource::FlowIntents,
    Resource::ClusterNetworkPolicies,
];

/// What one file held at its last read that counted.
#[derive(Debug, Default)]
struct FileRecord {
    /// The file as it was read.
    stamp: Option<Stamp>,
    /// `(resource, key)` of every object it gave the store.
    keys: Vec<(Resource, String)>,
    /// Namespaces its pods are in, and namespaces it declares.
    used: BTreeSet<String>,
    declared: BTreeSet<String>,
    /// The errors of its latest read, with the stamp of that read when it
    /// was read whole (it parsed badly): while the file stays like this it is
    /// not read again, and the errors stand. A read that failed (no stamp) is
    /// tried again at the next check.
    failed: Option<(Option<Stamp>, Vec<ManifestError>)>,
}

/// The manifest files and what each contributes.
#[derive(Debug)]
pub(crate) struct Source {
    paths: Vec<PathBuf>,
    files: BTreeMap<PathBuf, FileRecord>,
    /// Files seen changed at the previous check, with how they looked then:
    /// read once they look the same at the next.
    pending: BTreeMap<PathBuf, Stamp>,
    /// Paths already warned about as not regular files.
    warned: BTreeSet<PathBuf>,
}

/// A pod with no `metadata.uid` (manifests written by hand) gets one from
/// its namespace and name, so two such pods stay two.
fn with_uid(mut pod: core::Pod) -> core::Pod {
    if pod.metadata.uid.as_deref().is_none_or(str::is_empty) {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        pod.metadata.uid = Some(format!("manifest:{namespace}/{name}"));
    }
    pod
}

impl Source {
    /// A source for `paths`, nothing read yet.
    pub fn new(paths: Vec<PathBuf>) -> Self {
        Self { paths, files: BTreeMap::new(), pending: BTreeMap::new(), warned: BTreeSet::new() }
    }

    /// Reads every file now, without waiting for changes to settle, and
    /// hands the writer a full list of each resource (the first load).
    pub fn load_now(&mut self, writer: &mut Writer) {
        self.check(writer, false);
    }

    /// [`Source::load_now`], showing `seen` every object read before it is
    /// trimmed for the store (what the store drops, such as annotations, is
    /// read from the same parse rather than a second one).
    pub fn load_now_seeing(&mut self, writer: &mut Writer, seen: &mut dyn FnMut(&Object)) {
        self.check_seeing(writer, false, seen);
    }

    /// Looks for changes; when there are, reloads what changed and settled
    /// and hands the writer a full list. With `settle`, a changed file is
    /// only read once it looked the same at the previous check.
    fn check(&mut self, writer: &mut Writer, settle: bool) {
        self.check_seeing(writer, settle, &mut |_| {});
    }

    /// [`Source::check`], showing `seen` every object read.
    fn check_seeing(&mut self, writer: &mut Writer, settle: bool, seen: &mut dyn FnMut(&Object)) {
        let found = walk::walk(&self.paths);
        let mut problems = Manifests::default();
        manifests::problems(&found, &mut problems);
        let mut to_read = Vec::new();
        let mut pending = BTreeMap::new();
        for file in &found.files {
            let record = self.files.get(&file.path);
            let unchanged = record.is_some_and(|record| {
                record.stamp == Some(file.stamp)
                    || record.failed.as_ref().is_some_and(|(stamp, _)| *stamp == Some(file.stamp))
            });
            if unchanged {
                continue;
            }
            if settle && self.pending.get(&file.path) != Some(&file.stamp) {
                pending.insert(file.path.clone(), file.stamp);
                continue;
            }
            to_read.push(file);
        }
        let present: BTreeSet<&PathBuf> = found.files.iter().map(|file| &file.path).collect();
        // Files gone from a listing that worked were removed; a file under a
        // missing path or an unlistable folder may well still be there.
        let removed: Vec<PathBuf> =
            self.files.keys().filter(|path| !present.contains(path) && !found.hides(path)).cloned().collect();
        self.pending = pending;
        let first = self.files.is_empty() && !settle;
        if to_read.is_empty() && removed.is_empty() && !first {
            self.report(writer, &problems);
            return;
        }
        for path in &removed {
            self.files.remove(path);
        }
        tracing::info!(read = to_read.len(), removed = removed.len(), "manifests changed, reloading");
        let mut items: BTreeMap<Resource, Vec<Item>> = BTreeMap::new();
        for file in to_read {
            self.read(file, &mut items, seen);
        }
        self.publish(writer, items);
        self.report(writer, &problems);
    }

    /// Reads one file: a clean read replaces its record; a failed one keeps
    /// what its record held (or, for a file never read cleanly, takes what
    /// did load) and records the errors.
    fn read(&mut self, file: &Found, items: &mut BTreeMap<Resource, Vec<Item>>, seen: &mut dyn FnMut(&Object)) {
        let mut fresh = FileRecord::default();
        let mut read_items = Vec::new();
        let mut manifests = Manifests::default();
        let stamp = manifests::read_file(
            file,
            &mut |loaded| {
                seen(&loaded.object);
                let item = match loaded.object {
                    Object::Pod(pod) => {
                        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
                        if !fresh.used.contains(namespace) {
                            fresh.used.insert(namespace.to_owned());
                        }
                        convert::pod(with_uid(*pod))
                    }
                    Object::Namespace(namespace) => {
                        fresh.declared.insert(namespace.metadata.name.clone().unwrap_or_default());
                        convert::namespace(&namespace)
                    }
                    Object::NetworkPolicy(policy) => convert::network_policy(*policy),
                    Object::Service(service) => convert::service(&service),
                    Object::EndpointSlice(slice) => convert::endpoint_slice(&slice),
                    Object::Node(node) => convert::node(&node),
                    Object::Workload(workload) => Item::Workload(workload),
                    Object::FlowIntent(intent) => convert::flow_intent(*intent, Some(loaded.origin)),
                    Object::ClusterNetworkPolicy(policy) => {
                        convert::cluster_network_policy(*policy, Some(loaded.origin))
                    }
                };
                read_items.push(item);
            },
            &mut manifests,
        );
        for skipped in &manifests.skipped {
            tracing::warn!(origin = %skipped.origin, what = %skipped.what, "manifest object of a kind the observer does not use, skipped");
        }
        let had_good_read = self.files.get(&file.path).is_some_and(|record| record.stamp.is_some());
        if !manifests.errors.is_empty() && had_good_read {
            // Fail closed: the last good version of this file stays in force.
            if let Some(record) = self.files.get_mut(&file.path) {
                record.failed = Some((stamp, manifests.errors));
            }
            return;
        }
        fresh.keys = read_items.iter().map(|item| (item.resource(), item.key())).collect();
        for item in read_items {
            items.entry(item.resource()).or_default().push(item);
        }
        if manifests.errors.is_empty() {
            fresh.stamp = stamp;
        } else {
            // Never read cleanly: what did load is all there is to go on.
            fresh.failed = Some((stamp, manifests.errors));
        }
        self.files.insert(file.path.clone(), fresh);
    }

    /// Hands the writer a full list: the items just read, and the keys of
    /// every other file's objects to keep as they are.
    fn publish(&self, writer: &mut Writer, mut items: BTreeMap<Resource, Vec<Item>>) {
        let fresh_keys: BTreeSet<(Resource, String)> =
            items.values().flatten().map(|item| (item.resource(), item.key())).collect();
        // The API server would hold every namespace a pod is in: so does the
        // standalone inventory, labelled only with its name.
        let used: BTreeSet<&String> = self.files.values().flat_map(|record| &record.used).collect();
        let declared: BTreeSet<&String> = self.files.values().flat_map(|record| &record.declared).collect();
        for name in used.difference(&declared) {
            let namespace = core::Namespace {
                metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    name: Some((*name).clone()),
                    ..Default::default()
                },
                ..Default::default()
            };
            items.entry(Resource::Namespaces).or_default().push(convert::namespace(&namespace));
        }
        let mut kept: BTreeMap<Resource, BTreeSet<&String>> = BTreeMap::new();
        for (resource, key) in self.files.values().flat_map(|record| &record.keys) {
            if !fresh_keys.contains(&(*resource, key.clone())) {
                kept.entry(*resource).or_default().insert(key);
            }
        }
        for resource in RESOURCES {
            writer.record(resource, Update::Init(resource));
            for key in kept.remove(&resource).unwrap_or_default() {
                writer.record(resource, Update::InitKeep(resource, key.clone()));
            }
            for item in items.remove(&resource).unwrap_or_default() {
                writer.record(resource, Update::InitApply(item));
            }
            writer.record(resource, Update::InitDone(resource));
        }
        writer.publish();
    }

    /// Tells the writer every error standing: the walk's, and each file's.
    fn report(&mut self, writer: &mut Writer, problems: &Manifests) {
        for skipped in &problems.skipped {
            if self.warned.insert(skipped.origin.file.clone()) {
                tracing::warn!(path = %skipped.origin.file.display(), what = %skipped.what, "manifest path skipped");
            }
        }
        let errors = problems
            .errors
            .iter()
            .chain(self.files.values().filter_map(|record| record.failed.as_ref()).flat_map(|(_, errors)| errors))
            .map(|error| (error.reason, error.to_string()))
            .collect();
        writer.set_manifest_errors(errors);
    }
}

/// Reloads the manifests whenever they change, forever.
pub(crate) async fn run(mut source: Source, mut writer: Writer, reload_interval: std::time::Duration) {
    let mut interval = tokio::time::interval(reload_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        source.check(&mut writer, true);
        writer.tick();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::config::InventoryConfig;

    const POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: shop}
spec: {podSelector: {}}
";

    fn policies(writer: &Writer) -> usize {
        writer.shared().snapshot().network_policies().count()
    }

    /// Rewrites `path` with `text` and a modification time of its own, so
    /// two writes within the clock's granularity still look different.
    fn write(path: &std::path::Path, text: &str, second: u64) {
        std::fs::write(path, text).expect("write");
        let when = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000 + second);
        std::fs::File::options().write(true).open(path).expect("open").set_modified(when).expect("set mtime");
    }

    #[test]
    fn a_changed_file_is_read_only_once_it_looks_the_same_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("policy.yaml");
        write(&path, POLICY, 0);
        let mut writer = Writer::new("standalone", RESOURCES.to_vec(), InventoryConfig::default());
        let mut source = Source::new(vec![dir.path().to_owned()]);
        source.load_now(&mut writer);
        assert_eq!(policies(&writer), 1);
        // Truncated (`O_TRUNC`, the new text not written yet): an empty file
        // is valid YAML with no documents, so only waiting tells it apart.
        write(&path, "", 1);
        source.check(&mut writer, true);
        assert_eq!(policies(&writer), 1, "not read at first sight");
        write(&path, POLICY.replace("deny", "deny-2").as_str(), 2);
        source.check(&mut writer, true);
        assert_eq!(policies(&writer), 1, "changed again since: still not read");
        let generation = writer.shared().snapshot().generation();
        source.check(&mut writer, true);
        let snapshot = writer.shared().snapshot();
        assert!(snapshot.generation() > generation, "read once it held still");
        let names: Vec<_> = snapshot.network_policies().filter_map(|policy| policy.metadata.name.clone()).collect();
        assert_eq!(names, ["deny-2"]);
        // Nothing changed: nothing is read or published.
        source.check(&mut writer, true);
        assert_eq!(writer.shared().snapshot().generation(), snapshot.generation());
    }

    #[test]
    fn a_file_that_breaks_keeps_its_objects_while_the_others_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, second) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
        write(&first, POLICY, 0);
        write(&second, &POLICY.replace("deny", "other"), 0);
        let mut writer = Writer::new("standalone", RESOURCES.to_vec(), InventoryConfig::default());
        let mut source = Source::new(vec![dir.path().to_owned()]);
        source.load_now(&mut writer);
        write(&first, "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: [", 1);
        write(&second, &POLICY.replace("deny", "renamed"), 1);
        source.check(&mut writer, true);
        source.check(&mut writer, true);
        let mut names: Vec<_> =
            writer.shared().snapshot().network_policies().filter_map(|policy| policy.metadata.name.clone()).collect();
        names.sort();
        assert_eq!(names, ["deny", "renamed"], "the broken file's policy stays, the other file's change applies");
        let status = writer.shared().status();
        assert_eq!(status.manifest_errors.len(), 1, "{status:?}");
        assert!(status.manifest_errors[0].starts_with(&first.display().to_string()), "{status:?}");
        // Removed for real (its folder listed fine): its objects go.
        std::fs::remove_file(&first).expect("remove");
        source.check(&mut writer, true);
        let names: Vec<_> =
            writer.shared().snapshot().network_policies().filter_map(|policy| policy.metadata.name.clone()).collect();
        assert_eq!(names, ["renamed"]);
        assert!(writer.shared().status().manifest_errors.is_empty());
    }
}
