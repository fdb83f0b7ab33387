//! Cluster inventory: Pods, Namespaces, NetworkPolicies, Services,
//! EndpointSlices, Nodes, FlowIntents and ClusterNetworkPolicies, from the
//! API server or from manifest files, behind one interface.
//!
//! In: a kube client ([`Inventory::cluster`]) or manifest paths
//! ([`Inventory::standalone`]). Out: a [`Resolver`] that says who is at each
//! end of a flow ([`Endpoint`]), [`Snapshot`]s with the object lists the policy
//! engine reads (with each workload's revision and latest [`Rollout`]), and a
//! [`Status`] for health and metrics. Both sources feed
//! the same store, so everything downstream is the same in both modes.

pub mod cgroup;
mod cluster;
pub mod config;
mod convert;
pub mod endpoint;
pub mod manifests;
pub mod model;
pub mod object_ref;
mod resolver;
mod resource;
pub mod revision;
pub mod services;
mod snapshot;
mod standalone;
pub mod status;
mod store;
#[cfg(test)]
pub(crate) mod test_store;
pub mod walk;
mod workload;
mod writer;
pub mod yaml_bounds;

use std::{future::Future, path::PathBuf, sync::Arc};

use futures::{FutureExt, future::BoxFuture};
use tokio::sync::watch;

pub use self::{
    config::{DEFAULT_LABEL_KEYS, InventoryConfig, InventoryOptions},
    endpoint::{Endpoint, EndpointInfo, EndpointKind, ServiceRef, WorkloadRef},
    object_ref::{ObjectKind, ObjectRef},
    resolver::Resolver,
    resource::Resource,
    revision::{Rollout, WorkloadRevisions},
    services::ServiceBackends,
    snapshot::{CgroupEnd, Snapshot},
    status::{ResourceStatus, Status},
};
use self::{resolver::Shared, writer::Writer};

/// Why the inventory could not start.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// No kubeconfig and not in a cluster.
    #[error("no Kubernetes configuration found (no kubeconfig, not running in a pod)")]
    InferConfig {
        /// Why.
        #[source]
        source: kube::config::InferConfigError,
    },
    /// The kubeconfig given could not be read.
    #[error("cannot read kubeconfig {path}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// A `--manifests` path does not exist at start.
    #[error("--manifests {path}: no such file or folder")]
    ManifestsMissing {
        /// The path.
        path: PathBuf,
    },
    /// The client could not be built from the configuration.
    #[error("cannot build a Kubernetes client")]
    Client {
        /// Why.
        #[source]
        source: kube::Error,
    },
}

/// The inventory of one node: cheap to clone, shared by every stage.
#[derive(Clone, Debug)]
pub struct Inventory {
    shared: Arc<Shared>,
    /// Every resource its source lists and watches.
    watched: &'static [Resource],
}

impl Inventory {
    /// Reads the manifests now (so the inventory is ready when this returns)
    /// and returns the task that reloads them on change; run it (spawn it or
    /// select on it with the shutdown signal).
    pub fn standalone(
        paths: Vec<PathBuf>,
        config: InventoryConfig,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let reload_interval = config.reload_interval;
        let mut writer = Writer::new("standalone", standalone::RESOURCES.to_vec(), config);
        let mut source = standalone::Source::new(paths);
        source.load_now(&mut writer);
        let inventory = Self { shared: writer.shared(), watched: &standalone::RESOURCES };
        (inventory, standalone::run(source, writer, reload_interval))
    }

    /// Reads the manifests once, as [`Inventory::standalone`] first does,
    /// showing `seen` every object before the store trims it (the offline
    /// commands read annotations from the same parse); nothing reloads.
    pub fn standalone_once(
        paths: Vec<PathBuf>,
        config: InventoryConfig,
        seen: &mut dyn FnMut(&manifests::Object),
    ) -> Self {
        let mut writer = Writer::new("standalone", standalone::RESOURCES.to_vec(), config);
        standalone::Source::new(paths).load_now_seeing(&mut writer, seen);
        Self { shared: writer.shared(), watched: &standalone::RESOURCES }
    }

    /// Watches the API server through `client`; returns at once, not ready
    /// until the first full sync (see [`Inventory::ready`]), with the task
    /// that runs the watches: run it.
    pub fn cluster(client: kube::Client, config: InventoryConfig) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let writer = Writer::new("cluster", cluster::RESOURCES.to_vec(), config);
        let inventory = Self { shared: writer.shared(), watched: &cluster::RESOURCES };
        (inventory, cluster::run(client, writer))
    }

    /// Starts the source the flags choose: manifests when given, else the
    /// cluster (kubeconfig, else in-cluster config).
    pub async fn from_options(args: &InventoryOptions) -> Result<(Self, BoxFuture<'static, ()>), InventoryError> {
        let config = args.config();
        if !args.manifests.is_empty() {
            // A path that is not there at start is a typo, not an outage: an
            // empty policy set would judge everything allowed.
            if let Some(path) = args.manifests.iter().find(|path| !path.exists()) {
                return Err(InventoryError::ManifestsMissing { path: path.clone() });
            }
            let (inventory, task) = Self::standalone(args.manifests.clone(), config);
            return Ok((inventory, task.boxed()));
        }
        let client = client(args.kubeconfig.clone()).await?;
        let (inventory, task) = Self::cluster(client, config);
        Ok((inventory, task.boxed()))
    }

    /// Resolves flow ends; hand one to each capture task.
    pub fn resolver(&self) -> Resolver {
        Resolver { shared: Arc::clone(&self.shared) }
    }

    /// The FlowIntents and ClusterNetworkPolicies of the latest snapshot
    /// (see [`Snapshot::intents`]), in both modes.
    pub fn intents(&self) -> Arc<crate::intent::load::LoadedIntents> {
        Arc::new(self.shared.snapshot().intents())
    }

    /// The latest snapshot: object lists for the policy engine.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot()
    }

    /// Health for `/health` and metrics.
    pub fn status(&self) -> Status {
        self.shared.status()
    }

    /// Waits until every required resource has had its first full sync.
    pub async fn ready(&self) {
        let mut changes = self.shared.subscribe();
        while !self.shared.snapshot().synced() {
            if changes.changed().await.is_err() {
                // The writer is gone: no snapshot will ever come.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Waits until a published snapshot holds every resource the source
    /// watches, optional ones included (EndpointSlices, ReplicaSets, Jobs and
    /// the custom resources), for readers that take one moment of the
    /// cluster rather than follow it.
    pub async fn complete(&self) {
        let mut changes = self.shared.subscribe();
        loop {
            let snapshot = self.shared.snapshot();
            if snapshot.synced() && self.watched.iter().all(|&resource| snapshot.listed(resource)) {
                return;
            }
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The resources its source watches that the latest snapshot has not
    /// listed yet.
    pub fn unlisted(&self) -> Vec<Resource> {
        let snapshot = self.shared.snapshot();
        self.watched.iter().copied().filter(|&resource| !snapshot.listed(resource)).collect()
    }

    /// Ticks with the generation of every newly published snapshot, for
    /// consumers that recompute on change (the policy engine).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.subscribe()
    }
}

/// A client from `kubeconfig`, or without one from `~/.kube/config` or the
/// in-cluster service account.
pub async fn client(kubeconfig: Option<PathBuf>) -> Result<kube::Client, InventoryError> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(&path)
                .map_err(|source| InventoryError::Kubeconfig { path: path.clone(), source })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| InventoryError::Kubeconfig { path, source })?
        }
        None => kube::Config::infer().await.map_err(|source| InventoryError::InferConfig { source })?,
    };
    client_from_config(config)
}

/// A client for the inventory from a kube configuration. kube's own retry of
/// 429/503/504 answers is turned off: it retries silently for minutes, which
/// would hide an outage from the status, and the watchers back off anyway.
pub fn client_from_config(mut config: kube::Config) -> Result<kube::Client, InventoryError> {
    config.default_retry = false;
    kube::Client::try_from(config).map_err(|source| InventoryError::Client { source })
}
