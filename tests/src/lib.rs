//! The test lab: pods as network namespaces on a bridge, each with processes
//! in a kubelet-style cgroup; used by the end-to-end tests and `cargo xtask lab`.
