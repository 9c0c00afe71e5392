//! The addresses a peer may be reached at directly, for its sealed candidates message.

use std::net::{IpAddr, SocketAddr};

use crate::wire::control::MAX_CANDIDATES;

/// Candidates for an endpoint bound at `local`: the address of the first interface (when bound
/// to the unspecified address) with its port, the address the rendezvous node observed (the
/// NAT mapping), the other IPv4 interfaces, the IPv6 ones (a dual-stack socket, bound to
/// `[::]`, has both), then loopback (same-host peers). The observed address comes early because
/// behind a NAT it is the one that works, while a machine with several interfaces (containers,
/// VPNs) may list many that do not. Link-local addresses are left out (they need a scope). No
/// duplicates; at most [`MAX_CANDIDATES`].
pub fn gather(local: SocketAddr, observed: Option<SocketAddr>) -> Vec<SocketAddr> {
    let dual = local.is_ipv6() && local.ip().is_unspecified();
    let usable = |ip: IpAddr| dual || ip.is_ipv4() == local.is_ipv4();
    let mut host = Vec::new();
    let mut v6 = Vec::new();
    let mut loopback = Vec::new();
    if local.ip().is_unspecified() {
        for iface in if_addrs::get_if_addrs().unwrap_or_default() {
            let ip = iface.ip();
            if !usable(ip) || is_link_local(ip) {
                continue;
            }
            let addr = SocketAddr::new(ip, local.port());
            if ip.is_loopback() {
                loopback.push(addr);
            } else if ip.is_ipv6() {
                v6.push(addr);
            } else {
                host.push(addr);
            }
        }
    } else if local.ip().is_loopback() {
        loopback.push(local);
    } else {
        host.push(local);
    }
    let observed = observed
        .map(|o| SocketAddr::new(o.ip().to_canonical(), o.port()))
        .filter(|o| usable(o.ip()) && unicast(*o));
    let mut out: Vec<SocketAddr> = Vec::new();
    let rest = if host.is_empty() { Vec::new() } else { host.split_off(1) };
    // IPv4 loopback before IPv6 loopback.
    loopback.sort_by_key(|a| a.is_ipv6());
    for addr in host.into_iter().chain(observed).chain(rest).chain(v6).chain(loopback) {
        if !out.contains(&addr) && out.len() < MAX_CANDIDATES {
            out.push(addr);
        }
    }
    out
}

/// Whether `addr` can be a peer's address at all: a unicast address with a port. A node that
/// lies about what it observed, or a peer, could otherwise point probes at a multicast or
/// broadcast address (every host on a link would get them).
pub fn unicast(addr: SocketAddr) -> bool {
    let ip = addr.ip().to_canonical();
    let bad = match ip {
        IpAddr::V4(v4) => v4.is_broadcast() || v4.is_multicast() || v4.is_unspecified(),
        IpAddr::V6(v6) => v6.is_multicast() || v6.is_unspecified(),
    };
    addr.port() != 0 && !bad
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        // fe80::/10 needs a scope id, which candidates do not carry.
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_then_observed_then_loopback_without_duplicates() {
        let local: SocketAddr = "0.0.0.0:5000".parse().unwrap();
        let observed: SocketAddr = "203.0.113.7:6000".parse().unwrap();
        let c = gather(local, Some(observed));
        assert!(c.contains(&observed));
        assert!(c.contains(&"127.0.0.1:5000".parse().unwrap()), "{c:?}");
        assert_eq!(c.last(), Some(&"127.0.0.1:5000".parse().unwrap()), "loopback last");
        let mut sorted = c.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), c.len());
        assert!(c.iter().all(|a| a.is_ipv4() && a.port() != 0));
        // An observed address of the other family is left out.
        let v6: SocketAddr = "[2001:db8::1]:7".parse().unwrap();
        assert!(!gather(local, Some(v6)).contains(&v6));
    }

    /// Multicast, broadcast, unspecified addresses and port 0 are never candidates, whoever
    /// names them (a lying node's observed address, a peer).
    #[test]
    fn only_unicast_addresses_are_candidates() {
        let local: SocketAddr = "0.0.0.0:5000".parse().unwrap();
        for bad in ["239.255.41.41:7", "255.255.255.255:7", "0.0.0.0:7", "203.0.113.7:0"] {
            let bad: SocketAddr = bad.parse().unwrap();
            assert!(!unicast(bad), "{bad}");
            assert!(!gather(local, Some(bad)).contains(&bad), "{bad}");
        }
        for bad in ["[ff02::1]:7", "[::]:7", "[::ffff:224.0.0.1]:7"] {
            assert!(!unicast(bad.parse().unwrap()), "{bad}");
        }
        assert!(unicast("203.0.113.7:6000".parse().unwrap()));
        assert!(unicast("[2001:db8::1]:7".parse().unwrap()));
    }

    #[test]
    fn a_dual_stack_socket_offers_both_families() {
        let local: SocketAddr = "[::]:5000".parse().unwrap();
        let observed: SocketAddr = "[::ffff:203.0.113.7]:6000".parse().unwrap();
        let c = gather(local, Some(observed));
        assert!(
            c.contains(&"203.0.113.7:6000".parse().unwrap()),
            "mapped address made IPv4: {c:?}"
        );
        assert!(c.contains(&"127.0.0.1:5000".parse().unwrap()), "{c:?}");
        assert!(c.iter().all(|a| a.port() == 5000 || a.port() == 6000));
        assert!(
            c.iter().all(|a| match a.ip() {
                IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
                IpAddr::V4(_) => true,
            }),
            "no link-local: {c:?}"
        );
    }

    #[test]
    fn a_specific_bind_address_is_the_only_host_candidate() {
        let local: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(gather(local, None), vec![local]);
    }
}
