//! The standalone source fails closed: a manifest that cannot be read or
//! parsed completely keeps what it held in force, and the source says it is
//! failing (stale after the threshold) until it recovers. Verdicts are
//! judged from the inventory's own snapshot, as the daemon's judge does.
//!
//! One test lowers the process's descriptor limit, so every test here takes
//! the same lock (a std mutex: each async test has its own runtime).
#![expect(clippy::await_holding_lock, reason = "the lock serializes whole tests, each on its own runtime")]

use std::{
    fs,
    net::IpAddr,
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use observer::{
    inventory::{Inventory, InventoryConfig, InventoryOptions, model::Protocol},
    policy::{Endpoint, PolicyEngine},
    testing::ManifestDir,
};

static SERIAL: Mutex<()> = Mutex::new(());

const PODS: &str = "apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, uid: 7a000000-0000-4000-8000-000000000001, labels: {app: web}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 198.18.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, uid: 7a000000-0000-4000-8000-000000000002, labels: {app: client}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 198.18.1.11}
";

/// Isolates `web` for ingress and allows only `app: frontend` to it.
const POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-ingress
  namespace: shop
spec:
  podSelector:
    matchLabels:
      app: web
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: frontend
    ports:
    - port: 8080
";

fn config() -> InventoryConfig {
    InventoryConfig {
        reload_interval: Duration::from_millis(20),
        stale_after: Duration::from_millis(200),
        ..InventoryConfig::default()
    }
}

/// Whether the inventory's policies allow client → web:8080, as the judge would decide.
fn client_may_reach_web(inventory: &Inventory) -> bool {
    let snapshot = inventory.snapshot();
    let namespaces: Vec<_> = snapshot.namespaces().cloned().collect();
    let policies: Vec<_> = snapshot.network_policies().cloned().collect();
    let (engine, errors) = PolicyEngine::compile(&policies, &namespaces);
    assert!(errors.is_empty(), "{errors:?}");
    let pod = |name: &str| snapshot.pods().find(|pod| pod.name == name).unwrap_or_else(|| panic!("pod {name}"));
    engine.verdict(Endpoint::pod(pod("client")), Endpoint::pod(pod("web")), 8080, Protocol::TCP).allowed
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < Duration::from_secs(5), "not within 5 s: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Lets the reload task run a few reload intervals.
async fn ticks(ticks: u32) {
    tokio::time::sleep(config().reload_interval * ticks).await;
}

#[tokio::test]
async fn a_half_written_policy_keeps_the_old_one_and_the_source_turns_stale() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = ManifestDir::new("fail-closed-half");
    dir.write("pods.yaml", PODS);
    let policy = dir.write("policy.yaml", POLICY);
    let (inventory, reload) = Inventory::standalone(vec![dir.path().to_owned()], config());
    let task = tokio::spawn(reload);
    assert!(!client_may_reach_web(&inventory), "the policy denies client → web");
    let generation = inventory.snapshot().generation();
    // An editor or `kubectl cp` rewriting in place: cut off mid-document, left so.
    let half = &POLICY[..POLICY.find("    - podSelector").expect("cut point") + 8];
    fs::write(&policy, half).expect("truncate");
    eventually("the bad read reported", || !inventory.status().manifest_errors.is_empty()).await;
    let status = inventory.status();
    assert!(status.manifest_errors[0].starts_with(&policy.display().to_string()), "{:?}", status.manifest_errors);
    assert_eq!(status.source_errors.get("invalid"), Some(&1), "{status:?}");
    assert!(status.manifests_failing_since.is_some());
    assert!(!client_may_reach_web(&inventory), "the policy in force is still the whole one");
    assert_eq!(inventory.snapshot().network_policies().count(), 1);
    eventually("stale after the threshold", || inventory.status().stale).await;
    assert!(!client_may_reach_web(&inventory));
    // Written whole again (now allowing the client): read, and the source recovers.
    fs::write(&policy, POLICY.replace("app: frontend", "app: client")).expect("rewrite");
    eventually("recovered", || !inventory.status().stale && inventory.status().manifest_errors.is_empty()).await;
    eventually("the new policy in force", || client_may_reach_web(&inventory)).await;
    assert!(inventory.snapshot().generation() > generation);
    assert_eq!(inventory.status().source_errors.get("invalid"), Some(&1), "counted once per failure");
    task.abort();
}

#[tokio::test]
async fn a_vanished_path_keeps_what_it_held() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = ManifestDir::new("fail-closed-vanish");
    let pods = dir.write("pods.yaml", PODS);
    let policies = dir.path().join("policies");
    dir.write("policies/policy.yaml", POLICY);
    let (inventory, reload) = Inventory::standalone(vec![pods, policies.clone()], config());
    let task = tokio::spawn(reload);
    assert!(!client_may_reach_web(&inventory));
    let moved = dir.path().join("elsewhere");
    fs::rename(&policies, &moved).expect("move away");
    eventually("missing reported", || inventory.status().source_errors.get("missing") == Some(&1)).await;
    assert!(inventory.status().manifest_errors[0].contains("no such file or folder"));
    ticks(5).await;
    assert!(!client_may_reach_web(&inventory), "the policy of a vanished path stays in force");
    eventually("stale", || inventory.status().stale).await;
    fs::rename(&moved, &policies).expect("move back");
    eventually("recovered", || !inventory.status().stale).await;
    assert!(!client_may_reach_web(&inventory));
    task.abort();
}

/// The daemon's start refuses a `--manifests` path that is not there.
#[tokio::test]
async fn a_missing_path_is_an_error_at_start() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = ManifestDir::new("fail-closed-missing");
    let args = InventoryOptions {
        manifests: vec![dir.path().to_owned(), dir.path().join("typo")],
        ..InventoryOptions::default()
    };
    let error = match Inventory::from_options(&args).await {
        Ok(_) => panic!("started without {}", dir.path().join("typo").display()),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("typo") && error.contains("no such file or folder"), "{error}");
}

/// A folder that cannot be listed because the process is out of file
/// descriptors (the case: idle connections had taken them all).
#[tokio::test]
async fn an_unlistable_folder_keeps_what_it_held() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = ManifestDir::new("fail-closed-emfile");
    dir.write("pods.yaml", PODS);
    dir.write("policies/policy.yaml", POLICY);
    let (inventory, reload) = Inventory::standalone(vec![dir.path().to_owned()], config());
    let task = tokio::spawn(reload);
    assert!(!client_may_reach_web(&inventory));
    // A change that cannot be seen while the folder cannot be listed.
    dir.write("pods.yaml", &format!("{PODS}\n"));
    let held = exhaust_descriptors();
    eventually("the listing failure reported", || {
        inventory.status().source_errors.get("unlistable").is_some_and(|count| *count > 0)
    })
    .await;
    assert!(inventory.status().manifest_errors.iter().any(|error| error.contains("Too many open files")));
    assert!(!client_may_reach_web(&inventory), "the policy under the unlistable folder stays in force");
    assert_eq!(inventory.snapshot().network_policies().count(), 1);
    drop(held);
    eventually("recovered", || inventory.status().manifest_errors.is_empty()).await;
    assert!(!client_may_reach_web(&inventory));
    assert_eq!(inventory.snapshot().pod_count(), 2);
    task.abort();
}

/// Opens `/dev/null` until the process has no descriptor left (under a
/// soft limit lowered for the purpose); dropping the guard closes them and
/// restores the limit.
fn exhaust_descriptors() -> Descriptors {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid pointer to an rlimit.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    let lowered = libc::rlimit { rlim_cur: 4096.min(limit.rlim_max), rlim_max: limit.rlim_max };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
    let mut files = Vec::new();
    while files.len() < 4096 {
        match fs::File::open("/dev/null") {
            Ok(file) => files.push(file),
            Err(error) => {
                assert_eq!(error.raw_os_error(), Some(libc::EMFILE), "{error}");
                break;
            }
        }
    }
    assert!(fs::File::open("/dev/null").is_err(), "descriptors exhausted");
    Descriptors { files, limit }
}

struct Descriptors {
    files: Vec<fs::File>,
    limit: libc::rlimit,
}

impl Drop for Descriptors {
    fn drop(&mut self) {
        self.files.clear();
        // SAFETY: a valid pointer to the rlimit read before.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &self.limit) };
    }
}

#[test]
fn pods_without_uid_stay_apart() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = ManifestDir::new("fail-closed-uid");
    let without_uids = PODS
        .replace(", uid: 7a000000-0000-4000-8000-000000000001", "")
        .replace(", uid: 7a000000-0000-4000-8000-000000000002", "");
    assert!(!without_uids.contains("uid"));
    dir.write("pods.yaml", &without_uids);
    let (inventory, _reload) = Inventory::standalone(vec![dir.path().to_owned()], config());
    let snapshot = inventory.snapshot();
    assert_eq!(snapshot.pod_count(), 2);
    let at = std::time::SystemTime::now();
    let name =
        |ip: &str| snapshot.resolve_remote(ip.parse::<IpAddr>().expect("ip"), at).pod.as_deref().map(str::to_owned);
    assert_eq!(name("198.18.1.10").as_deref(), Some("web"));
    assert_eq!(name("198.18.1.11").as_deref(), Some("client"));
}

#[test]
fn a_folder_of_loops_fifos_and_devices_loads_each_file_once() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    use std::os::unix::fs::symlink;
    let dir = ManifestDir::new("fail-closed-hostile");
    dir.write("a/pods.yaml", PODS);
    dir.write("a/b/policy.yaml", POLICY);
    // A loop back to the root from deep inside, a self-link, links to a
    // FIFO's name and to /dev/zero.
    symlink(dir.path(), dir.path().join("a/b/root")).expect("loop");
    symlink(".", dir.path().join("a/self")).expect("self");
    symlink("/dev/zero", dir.path().join("a/zero.yaml")).expect("zero");
    let fifo = dir.path().join("a/pipe.yaml");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    let (inventory, _reload) = Inventory::standalone(vec![dir.path().to_owned(), dir.path().join("a/self")], config());
    let snapshot = inventory.snapshot();
    assert_eq!(snapshot.pod_count(), 2);
    assert_eq!(snapshot.network_policies().count(), 1);
    assert!(inventory.status().manifest_errors.is_empty(), "{:?}", inventory.status().manifest_errors);
    let loaded = observer::inventory::manifests::load(&[dir.path().to_owned(), dir.path().join("a/self")]);
    assert_eq!(loaded.objects.len(), 3, "each file once");
    let mut skipped: Vec<&Path> = loaded.skipped.iter().map(|skipped| skipped.origin.file.as_path()).collect();
    skipped.sort();
    assert_eq!(skipped, [fifo.as_path(), dir.path().join("a/zero.yaml").as_path()]);
}
