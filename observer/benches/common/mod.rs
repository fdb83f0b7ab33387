//! The userspace pipeline of `observer run`, driven on one thread without a
//! kernel: synthetic ring-buffer events and flow-map snapshots of short TCP
//! connections between pods of a generated cluster, through the real stage
//! functions (flow table → `build_record` → `enrich` → the judge stage →
//! the metrics meter). Shared by the `pipeline` and `flow_memory` benches.
//!
//! In: a [`ClusterSize`] and the pod pairs that talk. Out: a [`Pipeline`]
//! whose methods run each stage on a batch.

#![allow(dead_code, reason = "each bench uses part of the shared workload")]

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use observer::{
    backends::Backends,
    capture::{
        build_record,
        clock::{Clock, monotonic_ns},
        table::{Emission, FlowTable, TableConfig},
    },
    config::ObserverConfig,
    enrich::Enricher,
    flow::FlowRecord,
    inventory::{EndpointKind, Inventory, InventoryConfig, Resolver},
    judge::stage::{JudgeStage, StageSetup},
    metrics::{
        Metrics, MetricsConfig,
        flows::{EdgeOf, FlowMeter, TIER_LABEL},
    },
};
use observer_common::{
    COUNTED_SOCKET, EVENT_NEW_FLOW, EVENT_TCP_STATE, Event, FAMILY_IPV4, FlowKey, FlowStats, INITIATOR_LOCAL,
    PROTO_TCP, SocketCounters, tcp_flags, tcp_state,
};
use observer_tests::manifests::{ClusterSize, cluster, cluster_cgroup_path, cluster_pod_ip};

/// Ring-buffer events the kernel sends for the client side of one short TCP
/// connection: the new flow (its SYN), ESTABLISHED, CLOSE. (connect()'s
/// SYN_SENT comes before the source port is picked and is not sent.)
pub const EVENTS_PER_CONNECTION: usize = 3;

/// A small deterministic generator, so every run sees the same pairs.
pub struct Lcg(pub u64);

impl Lcg {
    /// A number below `bound`.
    pub fn next(&mut self, bound: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % bound.max(1)
    }
}

/// `pairs` (client pod, server pod) pairs: half stay in the client's
/// namespace, as most traffic does.
pub fn pod_pairs(size: &ClusterSize, pairs: usize) -> Vec<(usize, usize)> {
    let mut random = Lcg(42);
    (0..pairs)
        .map(|_| {
            let client = random.next(size.pods);
            let server = if random.next(2) == 0 {
                // Pod i is in namespace i % namespaces.
                let per_namespace = size.pods / size.namespaces.max(1);
                client % size.namespaces + size.namespaces * random.next(per_namespace)
            } else {
                random.next(size.pods)
            };
            (client, if server == client { (server + 1) % size.pods } else { server })
        })
        .collect()
}

/// The ClusterIP a bench gives the Service in front of pod `index`:
/// 198.19.0.10 onwards, beside the pods' 198.18.0.0/16.
pub fn service_ip(index: usize) -> std::net::Ipv4Addr {
    let offset = u32::try_from(index).unwrap_or(0) + 10;
    std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 19, 0, 0)) + offset)
}

/// The port of every bench Service (its backends take it on 8080).
pub const SERVICE_PORT: u16 = 80;

/// A `List` of a Service `svc-<i>` (ClusterIP [`service_ip`], port 80) per
/// server pod `i`, in the pod's namespace, and its EndpointSlice with two
/// ready backends on 8080: the server and the next pod. Without a conntrack
/// entry a flow to it is judged at both (`docs/policy.md`, "Services").
pub fn service_manifests(size: &ClusterSize, servers: &[usize]) -> serde_json::Value {
    let items: Vec<serde_json::Value> = servers
        .iter()
        .flat_map(|&server| {
            let namespace = format!("ns-{}", server % size.namespaces.max(1));
            let name = format!("svc-{server}");
            let backends = [server, (server + 1) % size.pods].map(|pod| {
                serde_json::json!({
                "addresses": [cluster_pod_ip(pod).to_string()], "conditions": {"ready": true}})
            });
            [
                serde_json::json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {"clusterIP": service_ip(server).to_string(),
                             "ports": [{"name": "http", "port": SERVICE_PORT, "protocol": "TCP"}]}}),
                serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": format!("{name}-x"), "namespace": namespace,
                                 "labels": {"kubernetes.io/service-name": name}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                    "endpoints": backends}),
            ]
        })
        .collect();
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// The cgroup id a bench gives pod `index`'s container.
fn cgroup_id(index: usize) -> u64 {
    1_000_000 + index as u64
}

/// Every stage of the pipeline, set up over a generated cluster.
pub struct Pipeline {
    dir: PathBuf,
    /// The flow table of capture.
    pub table: FlowTable,
    clock: Clock,
    node: Arc<str>,
    /// cgroup id → path, as capture's cache holds them.
    cgroup_paths: HashMap<u64, Arc<str>>,
    /// Resolves flow ends.
    pub resolver: Resolver,
    /// The enrich stage's per-cgroup memory.
    enricher: Enricher,
    /// The judge stage (policies and intents compiled from the cluster).
    pub judge: JudgeStage,
    /// The metrics registry.
    pub metrics: Metrics,
    /// The metrics meter.
    pub meter: FlowMeter,
    // Holds the inventory's store alive.
    _inventory: Inventory,
}

impl Pipeline {
    /// Loads a cluster of `size` into a standalone inventory and builds every stage.
    pub fn new(size: &ClusterSize) -> Self {
        Self::with_services(size, &[], Backends::default())
    }

    /// [`Pipeline::new`] plus a Service in front of each of `servers` (see
    /// [`service_manifests`]), resolved by the enrich stage with `backends`.
    pub fn with_services(size: &ClusterSize, servers: &[usize], backends: Backends) -> Self {
        let dir = std::env::temp_dir().join(format!("observer-bench-pipeline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("cluster.json");
        std::fs::write(&file, cluster(size).to_string()).expect("write manifests");
        std::fs::write(dir.join("services.json"), service_manifests(size, servers).to_string())
            .expect("write services");
        let metrics = Metrics::new(MetricsConfig::default(), &observer::health::Health::default());
        let mut config = InventoryConfig::default();
        config.label_keys.push(TIER_LABEL.to_owned());
        let (inventory, reload) = Inventory::standalone(vec![dir.clone()], config);
        // Never run: the files do not change during a bench.
        drop(reload);
        assert_eq!(inventory.snapshot().pod_count(), size.pods);
        let judge = JudgeStage::new(StageSetup {
            inventory: inventory.clone(),
            config: ObserverConfig::default(),
            findings_log: None,
            node: None,
            health: observer::health::Health::default(),
            metrics: Some(metrics.clone()),
            edges: EdgeOf::new(metrics.allowlist().clone()),
        })
        .expect("judge stage");
        let cgroup_paths =
            (0..size.pods).map(|index| (cgroup_id(index), Arc::from(cluster_cgroup_path(index)))).collect();
        Self {
            dir,
            table: FlowTable::new(TableConfig {
                update_interval_ns: 10_000_000_000,
                idle_timeout_ns: 30_000_000_000,
                tcp_idle_timeout_ns: 600_000_000_000,
                close_linger_ns: 200_000_000,
                pending_timeout_ns: 10_000_000_000,
            }),
            clock: Clock::new(),
            node: Arc::from("node-0"),
            cgroup_paths,
            resolver: inventory.resolver(),
            enricher: Enricher::with_backends(backends),
            judge,
            meter: FlowMeter::new(metrics.clone(), EdgeOf::new(metrics.allowlist().clone())),
            metrics,
            _inventory: inventory,
        }
    }

    /// Records from emissions, with the cgroup path looked up as capture does.
    pub fn build(&self, emissions: &[Emission]) -> Vec<FlowRecord> {
        let time = std::time::SystemTime::now();
        emissions
            .iter()
            .map(|emission| {
                let path = self.cgroup_paths.get(&emission.key.cgroup_id).cloned();
                build_record(emission, time, &self.clock, path, &self.node)
            })
            .collect()
    }

    /// Fills in both ends of every record.
    pub fn enrich(&mut self, records: &mut [FlowRecord]) {
        let snapshot = self.resolver.snapshot();
        for record in records {
            self.enricher.enrich(record, &snapshot);
        }
    }

    /// Counts every record on its edge.
    pub fn meter(&mut self, records: &[FlowRecord]) {
        self.meter.record_batch(records);
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The kernel side of a batch of connections: ring-buffer bytes and the
/// flow-map snapshot the next poll reads.
pub struct KernelBatch {
    /// Events as the ring buffer holds them (96 bytes each).
    pub ring: Vec<u8>,
    /// The flow map at the poll.
    pub snapshot: Vec<(FlowKey, FlowStats)>,
    /// When the poll read it.
    pub poll_ns: u64,
}

/// Makes batches of short TCP connections over fixed pod pairs, each batch
/// one poll interval (1 s of kernel time) after the previous one.
pub struct Connections {
    pairs: Vec<(usize, usize)>,
    next: usize,
    port: u16,
    now: u64,
    /// Whether every other pair's connections go to the server's Service.
    services: bool,
}

impl Connections {
    /// Connections cycling over `pairs`.
    pub fn new(pairs: Vec<(usize, usize)>) -> Self {
        Self { pairs, next: 0, port: 10_000, now: monotonic_ns(), services: false }
    }

    /// Connections cycling over `pairs`, those of every other pair (the
    /// even positions) to the server's Service ([`service_ip`]:80) instead
    /// of the server itself.
    pub fn through_services(pairs: Vec<(usize, usize)>) -> Self {
        Self { services: true, ..Self::new(pairs) }
    }

    fn key(&mut self) -> FlowKey {
        let position = self.next % self.pairs.len();
        let (client, server) = self.pairs[position];
        self.next += 1;
        if self.next.is_multiple_of(self.pairs.len()) {
            self.port = if self.port >= 65_000 { 10_000 } else { self.port + 1 };
        }
        let mut key = FlowKey {
            cgroup_id: cgroup_id(client),
            protocol: PROTO_TCP,
            family: FAMILY_IPV4,
            local_port: self.port,
            remote_port: 8080,
            ..FlowKey::default()
        };
        key.local_addr[..4].copy_from_slice(&cluster_pod_ip(client).octets());
        key.remote_addr[..4].copy_from_slice(&cluster_pod_ip(server).octets());
        if self.services && position.is_multiple_of(2) {
            key.remote_addr[..4].copy_from_slice(&service_ip(server).octets());
            key.remote_port = SERVICE_PORT;
        }
        key
    }

    /// `count` connections opened and closed within the batch; `closed: false`
    /// leaves them established (open flows, for memory).
    pub fn batch(&mut self, count: usize, closed: bool) -> KernelBatch {
        let start = self.now;
        self.now += 1_000_000_000;
        let mut ring = Vec::with_capacity(count * EVENTS_PER_CONNECTION * size_of::<Event>());
        let mut snapshot = Vec::with_capacity(count);
        let push = |ring: &mut Vec<u8>, event: Event| {
            // SAFETY: Event is repr(C) plain data with explicit padding.
            let bytes = unsafe { std::slice::from_raw_parts((&raw const event).cast::<u8>(), size_of::<Event>()) };
            ring.extend_from_slice(bytes);
        };
        for index in 0..count {
            let key = self.key();
            let at = start + index as u64 * 100;
            let tuple = FlowKey { cgroup_id: 0, ..key };
            let state = |old: u8, new: u8, at: u64| Event {
                kind: EVENT_TCP_STATE,
                old_state: old,
                new_state: new,
                timestamp_ns: at,
                key: tuple,
                ..Event::default()
            };
            push(
                &mut ring,
                Event {
                    kind: EVENT_NEW_FLOW,
                    timestamp_ns: at + 1,
                    key,
                    initiator: INITIATOR_LOCAL,
                    ..Event::default()
                },
            );
            push(&mut ring, state(tcp_state::SYN_SENT, tcp_state::ESTABLISHED, at + 30_000));
            if closed {
                // A close carries the socket's final counters, FINs and
                // cgroup, as the kernel sends it when counting TCP from sockets.
                let counters = SocketCounters { packets_out: 5, bytes_out: 16, packets_in: 4, bytes_in: 0 };
                let close = state(tcp_state::FIN_WAIT2, tcp_state::CLOSE, at + 90_000);
                let fin = tcp_flags::FIN;
                push(
                    &mut ring,
                    Event { has_counters: 1, counters, key, tcp_flags_out: fin, tcp_flags_in: fin, ..close },
                );
            }
            let flags = tcp_flags::SYN | tcp_flags::ACK | tcp_flags::FIN;
            snapshot.push((
                key,
                FlowStats {
                    first_seen_ns: at + 1,
                    last_seen_ns: at + 90_000,
                    packets_out: 5,
                    bytes_out: 16,
                    packets_in: 4,
                    bytes_in: 0,
                    tcp_flags_out: flags | tcp_flags::PSH,
                    tcp_flags_in: flags,
                    initiator: INITIATOR_LOCAL,
                    counted: COUNTED_SOCKET,
                    _pad: [0; 4],
                },
            ));
        }
        KernelBatch { ring, snapshot, poll_ns: start + 500_000_000 }
    }
}

/// Decodes the ring buffer as capture does and applies every event, then the
/// poll, then the flush: the emissions of the batch.
pub fn table_stage(table: &mut FlowTable, batch: &KernelBatch, out: &mut Vec<Emission>, delete: &mut Vec<FlowKey>) {
    for item in batch.ring.chunks_exact(size_of::<Event>()) {
        // SAFETY: each chunk holds one `Event` (repr(C), any bit pattern valid).
        let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
        table.on_event(&event, out);
    }
    table.on_poll(&batch.snapshot, batch.poll_ns);
    table.flush(batch.poll_ns, out, delete);
    // The daemon deletes these from the kernel map (a syscall each; kernel work).
    delete.clear();
}

/// Sanity of judged records: how many ends resolved to pods and how many
/// verdicts were not `allowed`, so a bench cannot time a no-op path.
pub fn check(records: &[FlowRecord]) -> (usize, usize) {
    let pods = records
        .iter()
        .filter(|record| {
            [&record.src, &record.dst]
                .iter()
                .all(|peer| peer.endpoint.as_ref().is_some_and(|end| end.kind == EndpointKind::Pod))
        })
        .count();
    let denied = records
        .iter()
        .filter(|record| {
            record.verdict.as_ref().is_some_and(|verdict| verdict.verdict != observer::judge::VerdictKind::Allowed)
        })
        .count();
    assert!(records.iter().all(|record| record.verdict.is_some()), "every record judged");
    (pods, denied)
}
