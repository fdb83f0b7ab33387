//! The node's conntrack table, asked over netlink where a connection was
//! really sent.
//!
//! In: a connection's original [`Tuple`] as the client's socket saw it
//! (protocol, source and destination address and port). Out: the source of
//! its reply tuple, which is the backend that a DNAT (kube-proxy's Service
//! rules, a NodePort, a metadata redirect) sent it to, or `None` when
//! conntrack holds no such connection. One `IPCTNL_MSG_CT_GET` request and
//! its answer on a `NETLINK_NETFILTER` socket, in the network namespace the
//! socket was opened in (conntrack is per namespace: the observer runs in
//! the node's). The kernel answers a netlink request before `send` returns,
//! so the answer is read without waiting and a lookup never blocks.
//! Conntrack zones other than the default are not looked up.

mod message;

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

pub use self::message::Malformed;
use self::message::{Answer, NETLINK_NETFILTER};

/// A connection as its initiator's socket saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// IANA protocol number (TCP, UDP, SCTP: the protocols with ports).
    pub protocol: u8,
    /// The initiator's address and port.
    pub src: SocketAddr,
    /// The address and port it sent to.
    pub dst: SocketAddr,
}

impl Tuple {
    /// A tuple of two ends of the same address family; `None` otherwise.
    pub fn new(protocol: u8, src: SocketAddr, dst: SocketAddr) -> Option<Self> {
        (src.is_ipv4() == dst.is_ipv4()).then_some(Self { protocol, src, dst })
    }
}

/// Why a lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The netlink socket could not be opened or bound (no `CAP_NET_ADMIN`,
    /// or a kernel without `nf_conntrack_netlink`).
    #[error("cannot open a NETLINK_NETFILTER socket")]
    Open {
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The request could not be sent.
    #[error("cannot send a conntrack request")]
    Send {
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No answer could be read.
    #[error("cannot read the conntrack answer")]
    Receive {
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the request.
    #[error("the kernel refused the conntrack request (errno {errno}: {})", io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// The errno it answered.
        errno: i32,
    },
    /// The answer could not be read.
    #[error("unreadable conntrack answer")]
    Malformed {
        /// What is wrong with it.
        #[source]
        source: Malformed,
    },
}

/// A ctnetlink socket of the network namespace it was opened in.
#[derive(Debug)]
pub struct Conntrack {
    fd: OwnedFd,
    seq: u32,
    request: Vec<u8>,
    answer: Vec<u8>,
}

/// Room for one answer: a conntrack entry with every attribute is well under 1 KiB.
const ANSWER_BUFFER: usize = 8192;

impl Conntrack {
    /// Opens a ctnetlink socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, ConntrackError> {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_NETFILTER) };
        if fd < 0 {
            return Err(ConntrackError::Open { source: io::Error::last_os_error() });
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; all zero is the kernel-assigned port, no groups.
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `address` is a valid sockaddr_nl of the size given.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const address).cast::<libc::sockaddr>(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if bound < 0 {
            return Err(ConntrackError::Open { source: io::Error::last_os_error() });
        }
        Ok(Self { fd, seq: 0, request: Vec::with_capacity(128), answer: vec![0; ANSWER_BUFFER] })
    }

    /// Where conntrack says the connection `tuple` was sent: the source of its
    /// reply tuple (the tuple's own destination when nothing rewrote it), or
    /// `None` when conntrack holds no such connection.
    pub fn lookup(&mut self, tuple: &Tuple) -> Result<Option<SocketAddr>, ConntrackError> {
        self.seq = self.seq.wrapping_add(1);
        message::request(tuple, self.seq, &mut self.request);
        // SAFETY: the buffer is valid for its length; the socket is ours.
        let sent = unsafe {
            libc::send(self.fd.as_raw_fd(), self.request.as_ptr().cast(), self.request.len(), libc::MSG_DONTWAIT)
        };
        if sent < 0 {
            return Err(ConntrackError::Send { source: io::Error::last_os_error() });
        }
        // A late answer to an earlier request (one that failed half way) may
        // come first: read until ours, a bounded number of times.
        for _ in 0..4 {
            // SAFETY: the buffer is valid for its length; the socket is ours.
            let received = unsafe {
                libc::recv(self.fd.as_raw_fd(), self.answer.as_mut_ptr().cast(), self.answer.len(), libc::MSG_DONTWAIT)
            };
            let Ok(received) = usize::try_from(received) else {
                return Err(ConntrackError::Receive { source: io::Error::last_os_error() });
            };
            match message::answer(&self.answer[..received], self.seq) {
                Ok(Answer::Found(backend)) => return Ok(Some(backend)),
                Ok(Answer::NotFound) => return Ok(None),
                Ok(Answer::Error(errno)) => return Err(ConntrackError::Kernel { errno }),
                Err(Malformed::NoAnswer { .. }) => continue,
                Err(source) => return Err(ConntrackError::Malformed { source }),
            }
        }
        Err(ConntrackError::Malformed { source: Malformed::NoAnswer { seq: self.seq, len: 0 } })
    }
}
