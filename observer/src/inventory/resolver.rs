//! The seam between capture and the inventory: who is at each end of a flow.
//!
//! In: a flow end (cgroup path and IP of the local end, IP of the remote end)
//! and the time of the flow. Out: an [`Endpoint`], resolved against the latest
//! published [`Snapshot`]. Cheap to clone and share between threads; a lookup
//! takes a read lock only for as long as the lookup itself.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::SystemTime,
};

use tokio::sync::watch;

use super::{endpoint::Endpoint, snapshot::Snapshot, status::Status};

/// What the inventory's writer and its readers share.
#[derive(Debug)]
pub(crate) struct Shared {
    current: RwLock<Arc<Snapshot>>,
    status: Mutex<Status>,
    generation: watch::Sender<u64>,
}

impl Shared {
    pub fn new(snapshot: Snapshot, status: Status) -> Self {
        let generation = snapshot.generation();
        Self {
            current: RwLock::new(Arc::new(snapshot)),
            status: Mutex::new(status),
            generation: watch::Sender::new(generation),
        }
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Makes `snapshot` the one every reader sees from now on.
    pub fn publish(&self, snapshot: Snapshot) {
        let generation = snapshot.generation();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(snapshot);
        self.generation.send_replace(generation);
    }

    pub fn status(&self) -> Status {
        self.status.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn set_status(&self, status: Status) {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = status;
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

/// Resolves flow ends against the latest inventory snapshot.
#[derive(Clone, Debug)]
pub struct Resolver {
    pub(crate) shared: Arc<Shared>,
}

impl Resolver {
    /// The local end of a flow: by cgroup path (relative to the cgroup v2
    /// root, e.g. `/kubepods/besteffort/pod<uid>/<container-id>`), else by
    /// IP, else `host`. `unknown` before the first full sync.
    pub fn resolve_local(&self, cgroup_path: Option<&str>, ip: IpAddr, at: SystemTime) -> Endpoint {
        self.shared.current.read().unwrap_or_else(PoisonError::into_inner).resolve_local(cgroup_path, ip, at)
    }

    /// The remote end of a flow: the pod that held `ip` at `at`, else a
    /// Service by ClusterIP, else a node, else `world`. `unknown` before the
    /// first full sync.
    pub fn resolve_remote(&self, ip: IpAddr, at: SystemTime) -> Endpoint {
        self.shared.current.read().unwrap_or_else(PoisonError::into_inner).resolve_remote(ip, at)
    }

    /// The latest snapshot, to resolve many ends against one consistent view.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot()
    }
}
