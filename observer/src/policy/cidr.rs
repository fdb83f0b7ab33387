//! CIDR blocks for `ipBlock` peers.
//!
//! In: `cidr` and `except` strings as NetworkPolicies spell them. Out: a
//! compact network that answers "does this address fall inside" in a few
//! integer operations, so ipBlock checks cost nothing next to selector checks.

use std::{fmt, net::IpAddr, str::FromStr};

/// An IPv4 or IPv6 network, host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cidr {
    /// The network address, IPv4 addresses in the low 32 bits.
    network: u128,
    /// Prefix length.
    prefix: u8,
    /// Whether this is an IPv4 network.
    v4: bool,
}

/// Why a string is not a CIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// No `/` separating address and prefix length.
    #[error("missing /prefix")]
    MissingPrefix,
    /// The part before `/` is not an IP address.
    #[error("not an IP address before /")]
    BadAddress,
    /// The prefix length is not a number or too long for the address family.
    #[error("prefix length must be 0-32 for IPv4 or 0-128 for IPv6")]
    BadPrefix,
}

fn bits(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(ip) => (u128::from(u32::from(ip)), true),
        IpAddr::V6(ip) => (u128::from(ip), false),
    }
}

fn mask(prefix: u8, v4: bool) -> u128 {
    let width: u32 = if v4 { 32 } else { 128 };
    let host_bits = width - u32::from(prefix);
    let all: u128 = if v4 { u128::from(u32::MAX) } else { u128::MAX };
    // A /0 has every bit as a host bit; shifting a u128 by 128 would overflow.
    all.checked_shl(host_bits).map_or(0, |shifted| shifted & all)
}

impl Cidr {
    /// Whether `ip` is inside this network (a different address family never is).
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let (address, v4) = bits(ip);
        v4 == self.v4 && address & mask(self.prefix, v4) == self.network
    }

    /// Whether `other` lies inside this network with a strictly longer prefix,
    /// as the API server demands of `except` entries.
    pub(crate) fn strictly_contains(&self, other: &Cidr) -> bool {
        other.v4 == self.v4 && other.prefix > self.prefix && other.network & mask(self.prefix, self.v4) == self.network
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Parses `address/prefix`; host bits are cleared rather than refused, as
    /// the API server accepts them (strict CIDR validation is off by default in 1.33).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = text.split_once('/').ok_or(CidrError::MissingPrefix)?;
        let address: IpAddr = address.parse().map_err(|_| CidrError::BadAddress)?;
        if prefix.is_empty() || !prefix.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(CidrError::BadPrefix);
        }
        let prefix: u8 = prefix.parse().map_err(|_| CidrError::BadPrefix)?;
        let (address, v4) = bits(address);
        if prefix > if v4 { 32 } else { 128 } {
            return Err(CidrError::BadPrefix);
        }
        Ok(Self { network: address & mask(prefix, v4), prefix, v4 })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let address = if self.v4 {
            // The network of an IPv4 CIDR was built from a u32, so it fits.
            IpAddr::from(std::net::Ipv4Addr::from(self.network as u32))
        } else {
            IpAddr::from(std::net::Ipv6Addr::from(self.network))
        };
        write!(f, "{address}/{}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().expect("valid CIDR")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("valid IP")
    }

    #[test]
    fn contains_by_prefix_and_family() {
        let net = cidr("10.1.0.0/16");
        assert!(net.contains(ip("10.1.255.7")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(!net.contains(ip("::ffff:10.1.0.1")));
        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!cidr("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(cidr("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(cidr("::/0").contains(ip("2001:db8::1")));
        assert!(cidr("198.18.0.5/32").contains(ip("198.18.0.5")));
        assert!(!cidr("198.18.0.5/32").contains(ip("198.18.0.6")));
    }

    #[test]
    fn host_bits_are_cleared() {
        assert_eq!(cidr("10.1.2.3/16"), cidr("10.1.0.0/16"));
        assert_eq!(cidr("10.1.2.3/16").to_string(), "10.1.0.0/16");
    }

    #[test]
    fn malformed_cidrs_are_refused() {
        assert_eq!("10.0.0.1".parse::<Cidr>(), Err(CidrError::MissingPrefix));
        assert_eq!("10.0.0/8".parse::<Cidr>(), Err(CidrError::BadAddress));
        assert_eq!("10.0.0.0/33".parse::<Cidr>(), Err(CidrError::BadPrefix));
        assert_eq!("10.0.0.0/+8".parse::<Cidr>(), Err(CidrError::BadPrefix));
        assert_eq!("::/129".parse::<Cidr>(), Err(CidrError::BadPrefix));
        assert_eq!("10.0.0.0/".parse::<Cidr>(), Err(CidrError::BadPrefix));
    }

    #[test]
    fn strict_subsets() {
        let net = cidr("10.0.0.0/8");
        assert!(net.strictly_contains(&cidr("10.1.0.0/16")));
        assert!(!net.strictly_contains(&cidr("10.0.0.0/8")));
        assert!(!net.strictly_contains(&cidr("11.0.0.0/16")));
        assert!(!net.strictly_contains(&cidr("::/64")));
    }
}
