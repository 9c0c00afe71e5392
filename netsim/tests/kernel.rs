//! The kernel layer's NAT behaviours, checked with datagrams between sockets opened inside the
//! topology's hosts: mapping, filtering, unsolicited input and hairpinning, for every NAT
//! kind. Needs root (network namespaces); skipped with a reason elsewhere, failed under
//! `CI=true`.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use p2p_copy_netsim::{Host, Nat, Net, RouterOptions};

/// Long enough for a datagram through a few namespaces on a loaded machine.
const ARRIVES: Duration = Duration::from_secs(2);
/// How long a datagram that must not arrive is waited for.
const BLOCKED: Duration = Duration::from_millis(400);

fn net() -> Option<Net> {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if !root {
        let reason = "NAT topologies in network namespaces need root";
        assert!(!std::env::var("CI").is_ok_and(|v| v == "true"), "{reason} (CI=true: must run)");
        eprintln!("SKIPPED: {reason}");
        return None;
    }
    Some(Net::new().unwrap())
}

fn socket(host: &Host, port: u16) -> UdpSocket {
    host.udp_socket(port).unwrap()
}

/// Sends `what` from `from` to `to`; returns where it came from at `at`, if it arrived.
fn deliver(from: &UdpSocket, to: SocketAddr, at: &UdpSocket, wait: Duration) -> Option<SocketAddr> {
    let payload = format!("from {} to {to}", from.local_addr().unwrap());
    from.send_to(payload.as_bytes(), to).unwrap();
    at.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match at.recv_from(&mut buf) {
            Ok((n, source)) if buf[..n] == *payload.as_bytes() => return Some(source),
            Ok(_) => continue, // an earlier datagram that arrived late
            Err(_) => return None,
        }
    }
}

fn addr(host: &Host, port: u16) -> SocketAddr {
    SocketAddr::from((host.addr, port))
}

/// A host behind each NAT kind sends to two public servers: the mapping it gets and who may
/// then send to it, as the crate documentation's table says.
#[test]
fn nat_kinds_map_and_filter_as_documented() {
    let Some(mut net) = net() else { return };
    let one = net.public_host("one").unwrap();
    let two = net.public_host("two").unwrap();
    let stranger = net.public_host("stranger").unwrap();
    for (k, nat) in [Nat::FullCone, Nat::AddressRestricted, Nat::PortRestricted, Nat::Symmetric]
        .into_iter()
        .enumerate()
    {
        let mut router = net.router(&format!("nat{k}"), nat, RouterOptions::default()).unwrap();
        let inside = net.host_behind(&mut router, &format!("in{k}")).unwrap();
        let port = 4000 + k as u16;
        let me = socket(&inside, port);
        let (one_a, one_b) = (socket(&one, 5000 + k as u16), socket(&one, 6000 + k as u16));
        let two_a = socket(&two, 5000 + k as u16);
        let stranger_a = socket(&stranger, 5000 + k as u16);

        let seen_by_one = deliver(&me, one_a.local_addr_on(&one), &one_a, ARRIVES)
            .unwrap_or_else(|| panic!("{}: outgoing datagram lost", nat.name()));
        let seen_by_two = deliver(&me, two_a.local_addr_on(&two), &two_a, ARRIVES)
            .unwrap_or_else(|| panic!("{}: outgoing datagram lost", nat.name()));
        assert_eq!(seen_by_one.ip(), IpAddr::V4(router.wan), "{}: translated", nat.name());
        let independent = seen_by_one == seen_by_two;
        assert_eq!(
            independent,
            nat != Nat::Symmetric,
            "{}: {seen_by_one} {seen_by_two}",
            nat.name()
        );
        if nat != Nat::Symmetric {
            assert_eq!(seen_by_one.port(), port, "{}: the port is kept", nat.name());
        }

        // Replies from exactly where we sent: always.
        assert!(deliver(&one_a, seen_by_one, &me, ARRIVES).is_some(), "{}: reply", nat.name());
        // Another port of a contacted host.
        let other_port = deliver(&one_b, seen_by_one, &me, BLOCKED).is_some();
        assert_eq!(
            other_port,
            matches!(nat, Nat::FullCone | Nat::AddressRestricted),
            "{}: from another port of a contacted address",
            nat.name()
        );
        // A host never contacted.
        let unsolicited = deliver(&stranger_a, seen_by_one, &me, BLOCKED).is_some();
        assert_eq!(unsolicited, nat == Nat::FullCone, "{}: unsolicited", nat.name());
        eprintln!(
            "{}: mapping {seen_by_one} / {seen_by_two}, other port {other_port}, \
             unsolicited {unsolicited}",
            nat.name()
        );
    }
}

/// Two hosts behind one router: through the router's public address only with hairpinning,
/// and then from the sender's public mapping.
#[test]
fn hairpinning_only_when_asked_for() {
    let Some(mut net) = net() else { return };
    let server = net.public_host("server").unwrap();
    let to_server = socket(&server, 5000);
    for (k, hairpin) in [false, true].into_iter().enumerate() {
        for (j, nat) in [Nat::PortRestricted, Nat::Symmetric].into_iter().enumerate() {
            let options = RouterOptions { hairpin, ..RouterOptions::default() };
            let name = format!("hp{k}{j}");
            let mut router = net.router(&name, nat, options).unwrap();
            let a_host = net.host_behind(&mut router, &format!("{name}a")).unwrap();
            let b_host = net.host_behind(&mut router, &format!("{name}b")).unwrap();
            let (a, b) = (socket(&a_host, 4000), socket(&b_host, 4001));
            // Each opens a mapping by sending to the server.
            let server_addr = addr(&server, 5000);
            let a_public = deliver(&a, server_addr, &to_server, ARRIVES).unwrap();
            let b_public = deliver(&b, server_addr, &to_server, ARRIVES).unwrap();
            let wait = if hairpin { ARRIVES } else { BLOCKED };
            let got = deliver(&b, a_public, &a, wait);
            let what = format!("{} hairpin {hairpin}: {b_public} to {a_public}", nat.name());
            assert_eq!(got.is_some(), hairpin, "{what}: arrived {got:?}");
            if let Some(from) = got {
                assert_eq!(from.ip(), IpAddr::V4(router.wan), "{what}: from the public address");
                if nat == Nat::PortRestricted {
                    // The port is kept too: exactly the sender's public mapping.
                    assert_eq!(from, b_public, "{what}");
                }
                // The answer goes back the same way.
                assert_eq!(deliver(&a, from, &b, ARRIVES), Some(a_public), "{what}: answer");
            }
            // The LAN works either way.
            assert!(deliver(&b, addr(&a_host, 4000), &a, ARRIVES).is_some(), "{what}: LAN");
        }
    }
}

trait LocalOn {
    /// The socket's address as other hosts reach it (it is bound to all addresses).
    fn local_addr_on(&self, host: &Host) -> SocketAddr;
}

impl LocalOn for UdpSocket {
    fn local_addr_on(&self, host: &Host) -> SocketAddr {
        addr(host, self.local_addr().unwrap().port())
    }
}
