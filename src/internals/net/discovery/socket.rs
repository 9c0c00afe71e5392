//! The sockets of LAN discovery, per address family: the shared socket on the discovery port
//! (in the family's group on every interface), the receiver's ephemeral query socket, and the
//! sends and receives on them. What to send, and to whom, is decided in the parent module.
//!
//! IPv4 names an interface for multicast by one of its addresses, IPv6 by its index ([`Via`]).
//! Both families stay on the link: multicast and unicast leave with TTL / hop limit 1, and
//! multicast loops back so that processes on this host hear each other.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::task::Poll;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::UdpSocket;
use tracing::{debug, trace};

/// Interfaces beyond this many are ignored (bounds the sends per announce).
const MAX_INTERFACES: usize = 64;

/// An address family discovery runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    V4,
    V6,
}

impl Family {
    /// Both, IPv4 first.
    pub(super) const ALL: [Family; 2] = [Family::V4, Family::V6];

    pub(super) fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn domain(self) -> Domain {
        match self {
            Family::V4 => Domain::IPV4,
            Family::V6 => Domain::IPV6,
        }
    }

    fn any(self, port: u16) -> SocketAddr {
        match self {
            Family::V4 => SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            Family::V6 => SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// One interface as multicast names it: an IPv4 address of it, or its IPv6 index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    V4(Ipv4Addr),
    V6(u32),
}

/// The interfaces of one family a discovery socket sends through, and those it joined the
/// group on.
#[derive(Debug, Default)]
pub(super) struct Interfaces {
    /// One entry per interface; multicast sends go out through each.
    pub(super) via: Vec<Via>,
    /// Interfaces (by name) the group was joined on; joins are not repeated.
    joined: BTreeMap<String, Via>,
}

impl Interfaces {
    /// How many interfaces the group was joined on.
    pub(super) fn joined(&self) -> usize {
        self.joined.len()
    }

    /// Re-reads the interfaces of the group's family and joins the group on those not joined
    /// yet. A join that fails is logged and skipped: an interface without multicast must not
    /// stop the others from working.
    pub(super) fn refresh(&mut self, socket: &UdpSocket, group: IpAddr) -> io::Result<()> {
        let current = interfaces(Family::of(group))?;
        for (name, via) in &current {
            if self.joined.get(name) == Some(via) {
                continue;
            }
            let joined = match (group, via) {
                (IpAddr::V4(group), Via::V4(ip)) => socket.join_multicast_v4(group, *ip),
                (IpAddr::V6(group), Via::V6(index)) => socket.join_multicast_v6(&group, *index),
                // `interfaces` lists the group's family only.
                _ => continue,
            };
            match joined {
                Ok(()) => {
                    trace!(interface = %name, ?via, %group, "joined discovery group");
                    self.joined.insert(name.clone(), *via);
                }
                Err(e) => {
                    debug!(interface = %name, ?via, %group, error = %e, "could not join group");
                }
            }
        }
        self.via = current.into_iter().map(|(_, via)| via).collect();
        Ok(())
    }
}

/// Every interface with an address of `family` (loopback included), one entry each, at most
/// [`MAX_INTERFACES`]. An IPv6 interface whose index the system does not tell is left out.
pub(super) fn interfaces(family: Family) -> io::Result<Vec<(String, Via)>> {
    let mut out: Vec<(String, Via)> = Vec::new();
    for interface in if_addrs::get_if_addrs()? {
        let via = match (family, interface.ip(), interface.index) {
            (Family::V4, IpAddr::V4(ip), _) => Via::V4(ip),
            (Family::V6, IpAddr::V6(_), Some(index)) if index != 0 => Via::V6(index),
            _ => continue,
        };
        if out.len() < MAX_INTERFACES && !out.iter().any(|(name, _)| *name == interface.name) {
            out.push((interface.name, via));
        }
    }
    Ok(out)
}

/// Why a discovery socket could not be had.
#[derive(Debug)]
pub(super) enum Unbound {
    /// The system lacks the family (no IPv6 in this kernel): nothing to do there.
    Unsupported(io::Error),
    /// The socket could not be bound or set up.
    Failed(io::Error),
}

/// A socket of `family` on the shared discovery port (`0.0.0.0:port`, or `[::]:port` for
/// IPv6 only), shared with other senders and receivers on this host (`SO_REUSEADDR`,
/// `SO_REUSEPORT`).
pub(super) fn bind_group_socket(family: Family, port: u16) -> Result<UdpSocket, Unbound> {
    let socket = new_socket(family)?;
    let shared = socket.set_reuse_address(true);
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))))]
    let shared = shared.and_then(|()| socket.set_reuse_port(true));
    shared.map_err(Unbound::Failed)?;
    bind(socket, family, port)
}

/// The receiver's ephemeral socket of `family`: queries go out of it, unicast answers come
/// back to it.
pub(super) fn bind_query_socket(family: Family) -> Result<UdpSocket, Unbound> {
    bind(new_socket(family)?, family, 0)
}

fn new_socket(family: Family) -> Result<Socket, Unbound> {
    let socket = Socket::new(family.domain(), Type::DGRAM, Some(Protocol::UDP))
        .map_err(Unbound::Unsupported)?;
    if family == Family::V6 {
        // IPv4 has its own socket (and group): no mapped addresses here.
        socket.set_only_v6(true).map_err(Unbound::Failed)?;
    }
    Ok(socket)
}

fn bind(socket: Socket, family: Family, port: u16) -> Result<UdpSocket, Unbound> {
    socket.bind(&family.any(port).into()).map_err(Unbound::Failed)?;
    into_tokio(socket, family).map_err(Unbound::Failed)
}

/// Sets the multicast options every discovery socket shares and hands it to tokio.
fn into_tokio(socket: Socket, family: Family) -> io::Result<UdpSocket> {
    // Stay on the local link, unicast answers included; let processes on this host (and
    // loopback-only hosts) hear us.
    match family {
        Family::V4 => {
            socket.set_multicast_ttl_v4(1)?;
            socket.set_ttl(1)?;
            socket.set_multicast_loop_v4(true)?;
        }
        Family::V6 => {
            socket.set_multicast_hops_v6(1)?;
            socket.set_unicast_hops_v6(1)?;
            socket.set_multicast_loop_v6(true)?;
        }
    }
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// Sends `bytes` to `group` once through each interface; returns how many sends worked.
/// Failures are per interface (down, no multicast route: Linux's `lo` carries no IPv6
/// multicast) and only logged.
pub(super) async fn send_multicast(
    socket: &UdpSocket,
    interfaces: &[Via],
    group: SocketAddr,
    bytes: &[u8],
) -> usize {
    let mut sent = 0;
    for via in interfaces {
        // The caller's task is the only user of the socket, so the option set here is
        // still in force for the send that follows.
        let chosen = match via {
            Via::V4(ip) if group.is_ipv4() => SockRef::from(socket).set_multicast_if_v4(ip),
            Via::V6(index) if group.is_ipv6() => SockRef::from(socket).set_multicast_if_v6(*index),
            _ => continue,
        };
        if let Err(e) = chosen {
            debug!(interface = ?via, error = %e, "could not select multicast interface");
            continue;
        }
        match socket.send_to(bytes, group).await {
            Ok(_) => sent += 1,
            Err(e) => debug!(interface = ?via, %group, error = %e, "multicast send failed"),
        }
    }
    sent
}

/// One receive on a discovery socket, with the address it was sent to.
pub(super) struct Received {
    /// Bytes in the buffer: one datagram, or several of `stride` bytes each.
    pub(super) len: usize,
    pub(super) stride: usize,
    pub(super) from: SocketAddr,
    pub(super) dst: Option<IpAddr>,
}

/// Receives on `socket` with `recvmsg`, learning each datagram's destination address
/// (`IP_PKTINFO` or `IPV6_PKTINFO`, set up by `state`).
pub(super) async fn recv_with_dst(
    socket: &UdpSocket,
    state: &quinn_udp::UdpSocketState,
    buf: &mut [u8],
) -> io::Result<Received> {
    loop {
        socket.readable().await?;
        let mut meta = [quinn_udp::RecvMeta::default()];
        let got = socket.try_io(tokio::io::Interest::READABLE, || {
            state.recv(socket.into(), &mut [io::IoSliceMut::new(buf)], &mut meta)
        });
        match got {
            Ok(_) => {
                let m = &meta[0];
                return Ok(Received { len: m.len, stride: m.stride, from: m.addr, dst: m.dst_ip });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Receives one datagram from whichever of `sockets` has one, looking at them in turn from
/// `first` (the caller moves it on) so that a flooded socket cannot starve the others. With
/// no socket it waits forever.
pub(super) async fn recv_any(
    sockets: &[&UdpSocket],
    first: usize,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr)> {
    std::future::poll_fn(|cx| {
        for i in 0..sockets.len() {
            let socket = sockets[(first + i) % sockets.len()];
            let mut read = tokio::io::ReadBuf::new(buf);
            match socket.poll_recv_from(cx, &mut read) {
                Poll::Ready(Ok(from)) => return Poll::Ready(Ok((read.filled().len(), from))),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

/// Errors a UDP receive may report because of an earlier send (ICMP unreachable on some
/// platforms); the socket is still fine.
pub(super) fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
