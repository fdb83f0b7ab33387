//! The addresses this node holds, for telling traffic with the node itself.
//!
//! In: the network interfaces of the observer's network namespace (the
//! node's, as a `hostNetwork` DaemonSet pod: bridge and CNI gateway
//! addresses included), read at start, again on every netlink address change
//! (`RTM_NEWADDR`/`RTM_DELADDR`), and every [`REREAD_INTERVAL`] in case a
//! notification was lost. Out: a [`NodeAddresses`] whose current set any
//! stage reads; enrichment resolves a remote end at one of these addresses
//! to the node itself (`host`), and NetworkPolicy always allows traffic
//! between a pod and its own node.

use std::{
    collections::HashSet,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::Arc,
    time::Duration,
};

use tokio::{io::unix::AsyncFd, sync::watch};

/// A set of addresses.
pub type AddressSet = HashSet<IpAddr, foldhash::fast::RandomState>;

/// How often the interfaces are read again without a notification.
pub const REREAD_INTERVAL: Duration = Duration::from_secs(30);

/// The addresses of this node's interfaces, as last read: cheap to clone.
#[derive(Clone, Debug)]
pub struct NodeAddresses {
    current: watch::Receiver<Arc<AddressSet>>,
}

impl Default for NodeAddresses {
    /// No address: nothing resolves to the node by address.
    fn default() -> Self {
        Self::fixed([])
    }
}

impl NodeAddresses {
    /// A set that never changes (tests, offline commands).
    pub fn fixed(addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        let (_, current) = watch::channel(Arc::new(addresses.into_iter().collect()));
        Self { current }
    }

    /// Reads the interfaces now and returns the task that keeps the set
    /// current until `shutdown` turns true: run it. Without a netlink socket
    /// (refused by a seccomp profile, say) the set is re-read periodically only.
    pub fn watch(
        mut shutdown: watch::Receiver<bool>,
    ) -> io::Result<(Self, impl std::future::Future<Output = ()> + Send + 'static)> {
        let (sender, current) = watch::channel(Arc::new(read_interfaces()?));
        let notifications = match subscribe() {
            Ok(socket) => Some(socket),
            Err(error) => {
                tracing::warn!(%error, "no netlink address notifications; node addresses re-read every 30 s only");
                None
            }
        };
        let task = async move {
            let mut tick = tokio::time::interval(REREAD_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = changed(notifications.as_ref()) => {}
                    _ = tick.tick() => {}
                    result = shutdown.changed() => {
                        if result.is_err() || *shutdown.borrow() { return; }
                        continue;
                    }
                }
                match read_interfaces() {
                    Ok(addresses) => {
                        let differs = **sender.borrow() != addresses;
                        if differs {
                            tracing::info!(addresses = addresses.len(), "node addresses changed");
                            sender.send_replace(Arc::new(addresses));
                        }
                    }
                    Err(error) => tracing::warn!(%error, "cannot read the node's addresses; keeping the last ones"),
                }
            }
        };
        Ok((Self { current }, task))
    }

    /// The current set.
    pub fn current(&self) -> Arc<AddressSet> {
        Arc::clone(&self.current.borrow())
    }

    /// The current set when it changed since this handle last took it.
    pub fn changed_set(&mut self) -> Option<Arc<AddressSet>> {
        if !self.current.has_changed().unwrap_or(false) {
            return None;
        }
        Some(Arc::clone(&self.current.borrow_and_update()))
    }
}

/// Waits for an address notification and drains the socket; never returns
/// without a socket. A read error (ENOBUFS: notifications were lost) counts
/// as a change: the caller reads every address again anyway.
async fn changed(socket: Option<&AsyncFd<OwnedFd>>) {
    let Some(socket) = socket else { return std::future::pending().await };
    loop {
        let Ok(mut guard) = socket.readable().await else { return std::future::pending().await };
        let mut buffer = [0_u8; 8192];
        let mut any = false;
        loop {
            // SAFETY: the buffer is valid for its length; the fd is open while `socket` lives.
            let read =
                unsafe { libc::recv(socket.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), libc::MSG_DONTWAIT) };
            if read > 0 {
                any = true;
                continue;
            }
            let error = io::Error::last_os_error();
            if read < 0 && error.kind() == io::ErrorKind::WouldBlock {
                guard.clear_ready();
                break;
            }
            // Lost notifications (ENOBUFS) or end of stream: read all again.
            any = true;
            guard.clear_ready();
            break;
        }
        if any {
            return;
        }
    }
}

/// A netlink socket subscribed to IPv4 and IPv6 address changes.
fn subscribe() -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe {
        libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, libc::NETLINK_ROUTE)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data; all zeroes is a valid value.
    let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    address.nl_groups = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
    // SAFETY: `address` is a valid sockaddr_nl of the length given.
    let bound = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&address).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if bound != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the AsyncFd owns the descriptor, open until it is dropped.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.map_err(io::Error::from)
}

/// Every address of every interface of this network namespace.
pub fn read_interfaces() -> io::Result<AddressSet> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list it allocated, freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut addresses = AddressSet::default();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, not freed yet.
        let entry = unsafe { &*cursor };
        if !entry.ifa_addr.is_null() {
            // SAFETY: a non-null ifa_addr points to a sockaddr whose family
            // says which sockaddr it is.
            match i32::from(unsafe { (*entry.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    // SAFETY: the family is AF_INET: it is a sockaddr_in.
                    let address = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in>() };
                    addresses.insert(IpAddr::V4(Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr))));
                }
                libc::AF_INET6 => {
                    // SAFETY: the family is AF_INET6: it is a sockaddr_in6.
                    let address = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in6>() };
                    addresses.insert(IpAddr::V6(Ipv6Addr::from(address.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_hold_loopback() {
        let addresses = read_interfaces().expect("getifaddrs");
        assert!(addresses.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{addresses:?}");
    }

    /// Runs `ip` with `args` (in the calling thread's network namespace).
    fn ip(args: &str) {
        let status = std::process::Command::new("ip").args(args.split(' ')).status().expect("runs ip");
        assert!(status.success(), "ip {args}");
    }

    /// Waits up to 5 s (well under [`REREAD_INTERVAL`]) until `addresses` holds `ip`, or not, as `expected`.
    async fn settles(addresses: &NodeAddresses, ip: IpAddr, expected: bool) {
        for _ in 0..100 {
            if addresses.current().contains(&ip) == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{ip} held: {}, expected {expected}", addresses.current().contains(&ip));
    }

    #[test]
    fn address_changes_are_seen_at_once_through_netlink() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "needs root (a network namespace)");
            let _ = std::io::Write::write_all(&mut std::io::stderr(), b"skipping: needs root\n");
            return;
        }
        // A thread of its own in a network namespace of its own, gone with
        // the thread (and the addresses added to its loopback), even on failure.
        let thread = std::thread::spawn(|| {
            // SAFETY: unshare affects only this thread, which nothing else uses.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "{}", io::Error::last_os_error());
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                let (_stop, stop) = watch::channel(false);
                let (addresses, task) = NodeAddresses::watch(stop).expect("reads the interfaces");
                let task = tokio::spawn(task);
                let (v4, v6) = (IpAddr::from([198, 18, 255, 10]), "2001:db8:198:255::10".parse().expect("ip"));
                assert!(!addresses.current().contains(&v4));
                ip("link set lo up");
                ip("addr add 198.18.255.10/32 dev lo");
                ip("addr add 2001:db8:198:255::10/128 dev lo nodad");
                settles(&addresses, v4, true).await;
                settles(&addresses, v6, true).await;
                ip("addr del 198.18.255.10/32 dev lo");
                settles(&addresses, v4, false).await;
                assert!(addresses.current().contains(&v6));
                task.abort();
            });
        });
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    }

    #[test]
    fn a_fixed_set_is_current_and_never_changes() {
        let ip = IpAddr::from([198, 18, 0, 1]);
        let mut addresses = NodeAddresses::fixed([ip]);
        assert!(addresses.current().contains(&ip));
        assert!(addresses.changed_set().is_none());
    }
}
