//! Inventory at scale: memory held and the cost of resolving one flow end.
//!
//! In: a generated cluster of 10,000 pods in 1,000 namespaces with 1,000
//! NetworkPolicies (plus 1,000 Services, 1,000 ReplicaSets, 100 nodes),
//! loaded through the standalone source. Out: the bytes the inventory keeps
//! (a counting global allocator: live bytes with the inventory loaded minus
//! before), printed, and criterion timings of `resolve_local`/`resolve_remote`.
//!
//! Run: `AYA_BUILD_SKIP=1 cargo bench -p observer --bench inventory`

use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    net::{IpAddr, Ipv4Addr},
    sync::atomic::{AtomicUsize, Ordering},
    time::SystemTime,
};

use criterion::{Criterion, criterion_group, criterion_main};
use observer::inventory::{EndpointKind, Inventory, InventoryConfig};
use serde_json::{Value, json};

const PODS: usize = 10_000;
const NAMESPACES: usize = 1_000;
const POLICIES: usize = 1_000;
const SERVICES: usize = 1_000;
const REPLICASETS: usize = 1_000;
const NODES: usize = 100;

/// Counts live and peak heap bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(pointer, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn pod_ip(index: usize) -> Ipv4Addr {
    // 198.18.0.0/15 holds 131,072 addresses.
    let offset = u32::try_from(index).unwrap_or(0) + 10;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + offset)
}

fn uid(kind: u32, index: usize) -> String {
    format!("{kind:08x}-0000-4000-8000-{index:012x}")
}

fn container_id(index: usize, container: usize) -> String {
    format!("{index:032x}{container:032x}")
}

/// A pod as a Deployment's ReplicaSet makes it, status as the kubelet reports it.
fn pod(index: usize) -> Value {
    let namespace = format!("ns-{}", index % NAMESPACES);
    let app = format!("app-{}", index % REPLICASETS);
    let replicaset = format!("{app}-7d9f8c6b5");
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("{replicaset}-{index:05}"), "namespace": namespace, "uid": uid(1, index),
            "resourceVersion": format!("{}", 100_000 + index),
            "labels": {"app": app, "app.kubernetes.io/name": app, "app.kubernetes.io/component": "server",
                "pod-template-hash": "7d9f8c6b5", "tier": if index.is_multiple_of(10) { "model-server" } else { "web" }},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": replicaset,
                "uid": uid(2, index % REPLICASETS), "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "nodeName": format!("node-{}", index % NODES),
            "containers": [
                {"name": "app", "image": "registry.example/app:1.2.3",
                 "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                           {"name": "metrics", "containerPort": 9090}]},
                {"name": "proxy", "image": "registry.example/proxy:2", "ports": [{"containerPort": 15001}]}
            ]
        },
        "status": {
            "phase": "Running", "podIP": pod_ip(index).to_string(), "podIPs": [{"ip": pod_ip(index).to_string()}],
            "containerStatuses": [
                {"name": "app", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                 "containerID": format!("containerd://{}", container_id(index, 0))},
                {"name": "proxy", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                 "containerID": format!("containerd://{}", container_id(index, 1))}
            ]
        }
    })
}

/// A typical allow policy: app pods take traffic from a labelled namespace's frontends.
fn policy(index: usize) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": format!("allow-{index}"), "namespace": format!("ns-{}", index % NAMESPACES),
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}".repeat(200)}},
        "spec": {
            "podSelector": {"matchLabels": {"app": format!("app-{}", index % REPLICASETS)}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "frontend"}},
                                   "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "edge"]}]}}],
                         "ports": [{"protocol": "TCP", "port": "http"}, {"protocol": "TCP", "port": 9090}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}}],
                        "ports": [{"protocol": "UDP", "port": 53}]}]
        }
    })
}

fn cluster() -> Value {
    let mut items = Vec::new();
    items.extend((0..NAMESPACES).map(|index| {
        json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": format!("ns-{index}"), "labels": {"team": if index.is_multiple_of(2) { "frontend" } else { "backend" }}}})
    }));
    items.extend((0..NODES).map(|index| {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{index}")},
            "status": {"addresses": [{"type": "InternalIP", "address": format!("10.0.{}.{}", index / 250, index % 250 + 1)}]}})
    }));
    items.extend((0..SERVICES).map(|index| {
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("app-{index}"), "namespace": format!("ns-{}", index % NAMESPACES)},
            "spec": {"clusterIP": format!("10.96.{}.{}", index / 250, index % 250 + 1), "selector": {"app": format!("app-{index}")}}})
    }));
    items.extend((0..REPLICASETS).map(|index| {
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": format!("app-{index}-7d9f8c6b5"), "namespace": format!("ns-{}", index % NAMESPACES), "uid": uid(2, index),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": format!("app-{index}"), "uid": uid(3, index), "controller": true}]}})
    }));
    items.extend((0..POLICIES).map(policy));
    items.extend((0..PODS).map(pod));
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("observer-bench-inventory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("cluster.json");
    std::fs::write(&file, cluster().to_string()).expect("write manifests");

    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let (inventory, reload) = Inventory::standalone(vec![file], InventoryConfig::default());
    let held = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    let snapshot = inventory.snapshot();
    assert_eq!(snapshot.pod_count(), PODS);
    assert_eq!(snapshot.namespaces().count(), NAMESPACES);
    assert_eq!(snapshot.network_policies().count(), POLICIES);
    println!(
        "inventory memory: {:.1} MiB held ({} bytes/pod overall), {:.1} MiB peak while loading; {PODS} pods, {NAMESPACES} namespaces, {POLICIES} NetworkPolicies, {SERVICES} Services, {REPLICASETS} ReplicaSets, {NODES} nodes",
        mib(held),
        held / PODS,
        mib(peak)
    );
    std::fs::remove_dir_all(&dir).ok();

    let resolver = inventory.resolver();
    let now = SystemTime::now();
    let pod_address = IpAddr::V4(pod_ip(4_242));
    let service_address: IpAddr = "10.96.1.1".parse().expect("ip");
    let world_address: IpAddr = "203.0.113.9".parse().expect("ip");
    let pod_uid = uid(1, 4_242);
    let systemd = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope",
        pod_uid.replace('-', "_"),
        container_id(4_242, 0)
    );
    let cgroupfs = format!("/kubepods/besteffort/pod{pod_uid}/{}", container_id(4_242, 0));
    assert_eq!(resolver.resolve_remote(pod_address, now).kind, EndpointKind::Pod);
    assert_eq!(resolver.resolve_local(Some(&systemd), pod_address, now).uid.as_deref(), Some(pod_uid.as_str()));
    assert_eq!(resolver.resolve_remote(service_address, now).kind, EndpointKind::Service);

    let mut group = c.benchmark_group("resolve");
    group.bench_function("remote_pod", |b| b.iter(|| resolver.resolve_remote(black_box(pod_address), now)));
    group.bench_function("remote_service", |b| b.iter(|| resolver.resolve_remote(black_box(service_address), now)));
    group.bench_function("remote_world", |b| b.iter(|| resolver.resolve_remote(black_box(world_address), now)));
    group.bench_function("local_cgroup_systemd", |b| {
        b.iter(|| resolver.resolve_local(Some(black_box(systemd.as_str())), pod_address, now))
    });
    group.bench_function("local_cgroup_cgroupfs", |b| {
        b.iter(|| resolver.resolve_local(Some(black_box(cgroupfs.as_str())), pod_address, now))
    });
    group.bench_function("local_ip_only", |b| b.iter(|| resolver.resolve_local(None, black_box(pod_address), now)));
    group.finish();
    drop(reload);
}

criterion_group!(benches, bench);
criterion_main!(benches);
