//! The raw discovery side of the hostile LAN party: sockets on the group as the real ones
//! use it, forged answers, floods, and counting what comes back.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p_copy::internals::net::discovery::GROUP_V4;
use p2p_copy::internals::wire::discovery::DiscoveryMsg;
use socket2::{Domain, Protocol, Socket, Type};

/// A socket on the fixture's discovery port, shared as the real ones share it, in the group
/// on loopback: it hears every query and every multicast announce of the test.
pub fn group_listener(port: u16) -> UdpSocket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
    s.set_reuse_address(true).expect("SO_REUSEADDR");
    s.set_reuse_port(true).expect("SO_REUSEPORT");
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into()).expect("bind the group port");
    s.join_multicast_v4(&GROUP_V4, &Ipv4Addr::LOCALHOST).expect("join the group on loopback");
    s.set_ttl(1).expect("TTL");
    s.into()
}

/// An ephemeral socket whose datagrams to the group go out through loopback (so they come
/// from 127.0.0.1, an address on the link), TTL 1.
pub fn group_sender() -> UdpSocket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into()).expect("bind");
    s.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).expect("IP_MULTICAST_IF");
    s.set_multicast_loop_v4(true).expect("IP_MULTICAST_LOOP");
    s.set_multicast_ttl_v4(1).expect("multicast TTL");
    s.set_ttl(1).expect("TTL");
    s.into()
}

pub fn group(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(GROUP_V4, port)
}

/// Answers every query for `nameplate` that reaches `socket` with an announce of the real
/// sender's `instance` (so the receiver sees one sender, not two) pointing at `port`, by
/// unicast to the querier, as the real sender answers; counts the answers.
pub async fn answer_for(
    socket: tokio::net::UdpSocket,
    nameplate: u32,
    instance: u64,
    port: u16,
    answered: Arc<AtomicU64>,
) {
    let mut buf = [0u8; 1024];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else { continue };
        if let Ok(DiscoveryMsg::Query { nameplate: n, query_id }) =
            DiscoveryMsg::decode(&buf[..len])
        {
            if n == nameplate {
                let answer = DiscoveryMsg::Announce { nameplate, instance, port, query_id };
                let _ = socket.send_to(&answer.encode(), from).await;
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Sends `msg(i)` for i = 0, 1, … from `socket` (a [`group_sender`]) to the group on `port`,
/// in bursts of 50 a millisecond apart, until `stop` is set or `max` were sent; counts them in
/// `sent`.
pub fn flood(
    socket: &UdpSocket,
    port: u16,
    max: u64,
    stop: &AtomicBool,
    sent: &AtomicU64,
    msg: impl Fn(u64) -> DiscoveryMsg,
) {
    let mut i = 0;
    while i < max && !stop.load(Ordering::Relaxed) {
        for _ in 0..50 {
            if socket.send_to(&msg(i).encode(), group(port)).is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            i += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Receives on `socket` until `end`; returns every discovery message received by then.
pub fn collect_until(socket: &UdpSocket, end: Instant) -> Vec<DiscoveryMsg> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return got;
        }
        socket.set_read_timeout(Some(left)).expect("read timeout");
        if let Ok((len, _)) = socket.recv_from(&mut buf) {
            if Instant::now() < end {
                got.extend(DiscoveryMsg::decode(&buf[..len]).ok());
            }
        }
    }
}
