//! The links this host is on: which addresses a LAN-mode peer may have.
//!
//! LAN mode has no node to vouch for anyone: a sender is found by multicast with TTL (IPv6: hop
//! limit) 1 and serves whoever connects first. So both ends keep to the link. A sender answers
//! discovery only for queries that came from an address on one of its interfaces' subnets (or
//! an IPv6 link-local one) and refuses QUIC connections from anywhere else, and a receiver
//! takes announces only from such addresses. An address on the Internet (a host that reaches the sender by routed unicast,
//! because the sender has a public address) is neither answered nor served
//! (`docs/security.md` §10).
//!
//! What counts as on the link: an address inside the prefix of one of this host's interface
//! addresses (IPv4 or IPv6), any loopback address, and IPv6 link-local addresses (which are
//! never routed). [`Links`] is the sans-IO part; [`LiveLinks`] re-reads the interfaces when
//! an address is not found and the list is more than a second old, so a network that comes up
//! during the wait is served.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

/// How old the interface list may be before an unknown address makes it read again.
const REFRESH_AFTER: Duration = Duration::from_secs(1);

/// At most this many interface addresses are kept (a host with more is unusual; the rest are
/// not on the link for us).
const MAX_NETS: usize = 256;

/// The subnets of this host's interface addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl Links {
    /// The subnets of this host's interfaces now.
    pub fn current() -> io::Result<Links> {
        let mut links = Links::default();
        for interface in if_addrs::get_if_addrs()?.into_iter().take(MAX_NETS) {
            match interface.addr {
                if_addrs::IfAddr::V4(a) => links.add_v4(a.ip, a.prefixlen),
                if_addrs::IfAddr::V6(a) => links.add_v6(a.ip, a.prefixlen),
            }
        }
        Ok(links)
    }

    /// Adds the subnet `ip/prefix`.
    pub fn add_v4(&mut self, ip: Ipv4Addr, prefix: u8) {
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0);
        self.v4.push((u32::from(ip) & mask, mask));
    }

    /// Adds the subnet `ip/prefix`.
    pub fn add_v6(&mut self, ip: Ipv6Addr, prefix: u8) {
        let mask = u128::MAX.checked_shl(128 - u32::from(prefix.min(128))).unwrap_or(0);
        self.v6.push((u128::from(ip) & mask, mask));
    }

    /// Whether `ip` is on one of the links (see the module docs).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(ip) => {
                let ip4 = u32::from(ip);
                ip.is_loopback() || self.v4.iter().any(|&(net, mask)| ip4 & mask == net)
            }
            IpAddr::V6(ip) => {
                let ip6 = u128::from(ip);
                ip.is_loopback()
                    || ip.is_unicast_link_local()
                    || self.v6.iter().any(|&(net, mask)| ip6 & mask == net)
            }
        }
    }
}

/// [`Links`] kept current: read again when an address is not on them and they are older
/// than a second.
#[derive(Debug)]
pub struct LiveLinks {
    links: Links,
    read: Instant,
}

impl LiveLinks {
    /// Reads the interfaces.
    pub fn new() -> io::Result<LiveLinks> {
        Ok(LiveLinks { links: Links::current()?, read: Instant::now() })
    }

    /// Whether `ip` is on one of this host's links.
    pub fn contains(&mut self, ip: IpAddr) -> bool {
        if self.links.contains(ip) {
            return true;
        }
        if self.read.elapsed() < REFRESH_AFTER {
            return false;
        }
        match Links::current() {
            Ok(links) => self.links = links,
            Err(e) => tracing::debug!(error = %e, "could not re-read the network interfaces"),
        }
        self.read = Instant::now();
        self.links.contains(ip)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn subnets_loopback_and_link_local_are_on_the_link() {
        let mut links = Links::default();
        links.add_v4(Ipv4Addr::new(192, 168, 1, 20), 24);
        links.add_v4(Ipv4Addr::new(10, 77, 1, 1), 32);
        links.add_v6("2001:db8:1::5".parse().unwrap(), 64);
        for on in [
            "192.168.1.1",
            "192.168.1.254",
            "10.77.1.1",
            "127.0.0.1",
            "127.8.9.1",
            "::1",
            "fe80::1234",
            "2001:db8:1::99",
            "::ffff:192.168.1.7",
        ] {
            assert!(links.contains(ip(on)), "{on} should be on the link");
        }
        for off in ["192.168.2.1", "10.77.1.2", "203.0.113.9", "2001:db8:2::1", "8.8.8.8"] {
            assert!(!links.contains(ip(off)), "{off} should not be on the link");
        }
    }

    #[test]
    fn a_zero_prefix_covers_everything_of_its_family() {
        let mut links = Links::default();
        links.add_v4(Ipv4Addr::new(10, 0, 0, 1), 0);
        assert!(links.contains(ip("203.0.113.9")));
        assert!(!links.contains(ip("2001:db8::1")));
    }

    #[test]
    fn the_live_list_includes_this_hosts_loopback() {
        let mut live = LiveLinks::new().unwrap();
        assert!(live.contains(ip("127.0.0.1")));
        assert!(!live.contains(ip("198.51.100.77")), "a documentation address is not local");
    }
}
