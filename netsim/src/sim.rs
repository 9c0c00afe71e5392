//! The in-process layer: a simulated network behind quinn's [`AsyncUdpSocket`], with NATs,
//! latency, jitter, loss and bandwidth, driven by tokio's clock and a seeded generator.
//!
//! A [`Sim`] holds hosts (public, or behind [`Nat`]s, possibly nested as a carrier-grade NAT)
//! and the sockets bound on them. A datagram sent from a socket climbs through the NATs its
//! host sits behind (each maps and records what may come back), crosses the "internet", and
//! descends through the NATs in front of its destination (each checks its filter). Every hop on
//! a host's access link adds latency, jitter, maybe loss, and queues behind the link's rate;
//! delivery happens on tokio's timer, so with `start_paused` tests run on a virtual clock. All
//! randomness comes from the seed: [`Sim::seed`] is printed by tests so a failure can be
//! replayed.
//!
//! NAT semantics match the kernel layer (crate documentation): endpoint-independent mapping
//! that keeps the port when it can (full cone, address-restricted, port-restricted) or a random
//! port per destination (symmetric); filtering by nothing, address, or address and port; no
//! hairpinning unless asked for; unsolicited input dropped.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::Nat;

/// Datagrams waiting in a socket before more are dropped.
const SOCKET_QUEUE: usize = 4096;
/// Longest a datagram may wait behind a link's rate before it is dropped (tail drop).
const LINK_QUEUE: Duration = Duration::from_millis(200);

/// A host's access link (applies in both directions). Jitter varies the delay but keeps the
/// order of datagrams, as a queue does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// One-way latency.
    pub latency: Duration,
    /// Uniform extra delay, 0 to this.
    pub jitter: Duration,
    /// Probability of losing a datagram, 0 to 1.
    pub loss: f64,
    /// Bytes per second; `None`: unlimited.
    pub rate: Option<u64>,
}

impl Link {
    /// No delay, no loss, no limit.
    pub const IDEAL: Link =
        Link { latency: Duration::ZERO, jitter: Duration::ZERO, loss: 0.0, rate: None };

    /// A link with this one-way latency and nothing else.
    pub fn latency(latency: Duration) -> Link {
        Link { latency, ..Link::IDEAL }
    }
}

/// Options of a simulated NAT beyond its kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct NatOptions {
    /// Drop everything its LAN sends.
    pub udp_blocked: bool,
    /// Let a LAN host reach another through the public address.
    pub hairpin: bool,
}

/// A simulated network; cheap to clone.
#[derive(Clone)]
pub struct Sim(Arc<Mutex<World>>);

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim").field("seed", &self.seed()).finish()
    }
}

/// A host of a [`Sim`].
#[derive(Debug, Clone)]
pub struct SimHost {
    sim: Sim,
    /// Its address.
    pub ip: Ipv4Addr,
}

/// A NAT of a [`Sim`].
#[derive(Debug, Clone, Copy)]
pub struct SimNat {
    index: usize,
    /// Its outside address.
    pub public: Ipv4Addr,
}

struct HostInfo {
    behind: Option<usize>,
    link: Link,
    up_free: Instant,
    down_free: Instant,
    /// Latest departure so far: jitter varies delay but keeps order (FIFO).
    up_last: Instant,
}

struct NatBox {
    kind: Nat,
    options: NatOptions,
    public: Ipv4Addr,
    /// The NAT this one sits behind (carrier-grade NAT).
    behind: Option<usize>,
    lan: [u8; 3],
    next_host: u8,
    out: HashMap<(SocketAddr, Option<SocketAddr>), u16>,
    mappings: HashMap<u16, Mapping>,
}

struct Mapping {
    internal: SocketAddr,
    to_addrs: HashSet<SocketAddr>,
    to_ips: HashSet<IpAddr>,
}

/// A datagram on its way: (arrival, sequence, source, bytes).
type InFlight = std::cmp::Reverse<(Instant, u64, SocketAddr, Vec<u8>)>;

/// A bound socket's side of the network: what is on its way to it, in arrival order.
struct SocketState {
    inbox: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    pending: std::collections::BinaryHeap<InFlight>,
    wake: Arc<tokio::sync::Notify>,
}

struct World {
    seed: u64,
    rng: StdRng,
    hosts: HashMap<Ipv4Addr, HostInfo>,
    nats: Vec<NatBox>,
    sockets: HashMap<SocketAddr, SocketState>,
    /// Latest arrival so far from one host to another: jitter keeps each pair's order.
    last_arrival: HashMap<(Ipv4Addr, Ipv4Addr), Instant>,
    /// Orders datagrams that arrive at the same instant.
    next_seq: u64,
    next_public: u16,
    next_lan: u8,
    dropped: u64,
    /// Pairs of public addresses that cannot reach each other (a cut path).
    cuts: HashSet<(IpAddr, IpAddr)>,
}

impl Sim {
    /// An empty network whose randomness all comes from `seed`.
    pub fn new(seed: u64) -> Sim {
        Sim(Arc::new(Mutex::new(World {
            seed,
            rng: StdRng::seed_from_u64(seed),
            hosts: HashMap::new(),
            nats: Vec::new(),
            sockets: HashMap::new(),
            last_arrival: HashMap::new(),
            next_seq: 0,
            next_public: 2,
            next_lan: 1,
            dropped: 0,
            cuts: HashSet::new(),
        })))
    }

    /// The seed (print it: the same seed replays the same network).
    pub fn seed(&self) -> u64 {
        self.world().seed
    }

    /// Datagrams lost so far (loss, filters, full queues, nowhere to go).
    pub fn dropped(&self) -> u64 {
        self.world().dropped
    }

    /// Cuts (or, with `cut` false, restores) the internet between two public addresses (hosts
    /// or NATs), both ways, from now on: datagrams between them are lost. What either sends to
    /// anyone else still arrives.
    pub fn cut(&self, a: Ipv4Addr, b: Ipv4Addr, cut: bool) {
        let mut w = self.world();
        for pair in [(IpAddr::V4(a), IpAddr::V4(b)), (IpAddr::V4(b), IpAddr::V4(a))] {
            if cut {
                w.cuts.insert(pair);
            } else {
                w.cuts.remove(&pair);
            }
        }
    }

    /// A host with a public address.
    pub fn public_host(&self, link: Link) -> SimHost {
        let mut w = self.world();
        let ip = w.public_ip();
        w.add_host(ip, None, link);
        SimHost { sim: self.clone(), ip }
    }

    /// A NAT on the internet.
    pub fn nat(&self, kind: Nat, options: NatOptions) -> SimNat {
        let mut w = self.world();
        let public = w.public_ip();
        w.add_nat(kind, options, public, None)
    }

    /// A NAT whose outside is on `outer`'s LAN (a home router behind a carrier-grade NAT).
    pub fn nat_behind(&self, outer: SimNat, kind: Nat, options: NatOptions) -> SimNat {
        let mut w = self.world();
        let public = w.lan_ip(outer.index);
        w.add_nat(kind, options, public, Some(outer.index))
    }

    /// A host on `nat`'s LAN.
    pub fn host_behind(&self, nat: SimNat, link: Link) -> SimHost {
        let mut w = self.world();
        let ip = w.lan_ip(nat.index);
        w.add_host(ip, Some(nat.index), link);
        SimHost { sim: self.clone(), ip }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends one datagram; queues it for delivery at its arrival time (or drops it).
    fn send(&self, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        let now = Instant::now();
        let mut w = self.world();
        let Some((at, from, to)) = w.route(now, from, to, data.len()) else { return };
        let seq = w.next_seq;
        w.next_seq += 1;
        match w.sockets.get_mut(&to) {
            Some(socket) => {
                socket.pending.push(std::cmp::Reverse((at, seq, from, data.to_vec())));
                socket.wake.notify_one();
            }
            None => w.dropped += 1,
        }
    }

    /// Delivers what arrives at `addr`, in order of arrival, until the socket is closed.
    async fn deliver(self, addr: SocketAddr, wake: Arc<tokio::sync::Notify>) {
        loop {
            let next = {
                let mut w = self.world();
                // Gone, or bound again by a newer socket with a task of its own.
                let Some(socket) = w.sockets.get_mut(&addr) else { return };
                if !Arc::ptr_eq(&socket.wake, &wake) {
                    return;
                }
                match socket.pending.peek() {
                    Some(std::cmp::Reverse((at, ..))) if *at <= Instant::now() => {
                        let Some(std::cmp::Reverse((_, _, from, data))) = socket.pending.pop()
                        else {
                            continue;
                        };
                        if socket.inbox.try_send((from, data)).is_err() {
                            w.dropped += 1;
                        }
                        continue;
                    }
                    Some(std::cmp::Reverse((at, ..))) => Some(*at),
                    None => None,
                }
            };
            match next {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = wake.notified() => {}
                    }
                }
                None => wake.notified().await,
            }
        }
    }
}

impl SimHost {
    /// Binds a UDP socket on `port` (0: any free port).
    pub fn bind(&self, port: u16) -> io::Result<Arc<SimSocket>> {
        let mut w = self.sim.world();
        let port = if port == 0 {
            loop {
                let p = w.rng.gen_range(20_000..60_000);
                if !w.sockets.contains_key(&SocketAddr::from((self.ip, p))) {
                    break p;
                }
            }
        } else {
            port
        };
        let addr = SocketAddr::from((self.ip, port));
        if w.sockets.contains_key(&addr) {
            return Err(io::ErrorKind::AddrInUse.into());
        }
        let (tx, rx) = mpsc::channel(SOCKET_QUEUE);
        let wake = Arc::new(tokio::sync::Notify::new());
        w.sockets.insert(
            addr,
            SocketState { inbox: tx, pending: Default::default(), wake: wake.clone() },
        );
        drop(w);
        tokio::spawn(self.sim.clone().deliver(addr, wake));
        Ok(Arc::new(SimSocket { sim: self.sim.clone(), addr, inbox: Mutex::new(rx) }))
    }
}

impl World {
    fn public_ip(&mut self) -> Ipv4Addr {
        let n = self.next_public;
        self.next_public += 1;
        Ipv4Addr::new(198, 18, (n >> 8) as u8, (n & 0xff) as u8)
    }

    fn lan_ip(&mut self, nat: usize) -> Ipv4Addr {
        let n = &mut self.nats[nat];
        n.next_host += 1;
        let [a, b, c] = n.lan;
        Ipv4Addr::new(a, b, c, n.next_host)
    }

    fn add_host(&mut self, ip: Ipv4Addr, behind: Option<usize>, link: Link) {
        let now = Instant::now();
        self.hosts
            .insert(ip, HostInfo { behind, link, up_free: now, down_free: now, up_last: now });
    }

    fn add_nat(
        &mut self,
        kind: Nat,
        options: NatOptions,
        public: Ipv4Addr,
        behind: Option<usize>,
    ) -> SimNat {
        let k = self.next_lan;
        self.next_lan = self.next_lan.wrapping_add(1).max(1);
        let lan = [10, k, 0];
        self.nats.push(NatBox {
            kind,
            options,
            public,
            behind,
            lan,
            next_host: 1,
            out: HashMap::new(),
            mappings: HashMap::new(),
        });
        SimNat { index: self.nats.len() - 1, public }
    }

    /// The NAT whose inside address range holds `ip`.
    fn nat_of_lan(&self, ip: Ipv4Addr) -> Option<usize> {
        let [a, b, c, _] = ip.octets();
        self.nats.iter().position(|n| n.lan == [a, b, c])
    }

    /// The chain of NATs in front of `ip`, innermost first.
    fn chain(&self, ip: Ipv4Addr) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = self.hosts.get(&ip).and_then(|h| h.behind);
        while let Some(n) = at {
            out.push(n);
            at = self.nats[n].behind;
        }
        out
    }

    /// Where and when a datagram arrives, as (time, source seen by the receiver, socket).
    fn route(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: SocketAddr,
        len: usize,
    ) -> Option<(Instant, SocketAddr, SocketAddr)> {
        let result = self.route_inner(now, from, to, len);
        if result.is_none() {
            self.dropped += 1;
        }
        result
    }

    fn route_inner(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: SocketAddr,
        len: usize,
    ) -> Option<(Instant, SocketAddr, SocketAddr)> {
        let (IpAddr::V4(src_ip), IpAddr::V4(dst_ip)) = (from.ip(), to.ip()) else { return None };
        let sent = self.uplink(now, src_ip, len)?;
        let src_chain = self.chain(src_ip);
        let dst_chain = self.chain(dst_ip);
        // Same LAN: straight across, no NAT.
        if !src_chain.is_empty()
            && src_chain.first() == dst_chain.first()
            && self.hosts.contains_key(&dst_ip)
        {
            let at = self.downlink(sent, src_ip, dst_ip, len)?;
            return Some((at, from, to));
        }
        // Up through our NATs.
        let mut src = from;
        for &n in &src_chain {
            // The destination is inside this NAT (an inner NAT's outside): it stays inside.
            if self.nat_of_lan(dst_ip) == Some(n) {
                break;
            }
            src = self.translate_out(n, src, to)?;
        }
        if self.cuts.contains(&(src.ip(), to.ip())) {
            return None;
        }
        // Down through theirs.
        let mut dst = to;
        loop {
            let IpAddr::V4(ip) = dst.ip() else { return None };
            if let Some(n) = self.nats.iter().position(|b| b.public == ip) {
                if src_chain.contains(&n) && !self.nats[n].options.hairpin {
                    return None;
                }
                dst = self.translate_in(n, src, dst)?;
                continue;
            }
            break;
        }
        let IpAddr::V4(final_ip) = dst.ip() else { return None };
        if !self.hosts.contains_key(&final_ip) {
            return None;
        }
        let at = self.downlink(sent, src_ip, final_ip, len)?;
        Some((at, src, dst))
    }

    /// A datagram leaving host `ip`: its arrival on the network, or `None` when lost.
    fn uplink(&mut self, now: Instant, ip: Ipv4Addr, len: usize) -> Option<Instant> {
        let loss: f64 = self.rng.gen();
        let jitter: f64 = self.rng.gen();
        let host = self.hosts.get_mut(&ip)?;
        let link = host.link;
        let start = host.up_free.max(now);
        let done = start + serialization(link.rate, len);
        if done.saturating_duration_since(now) > LINK_QUEUE {
            return None;
        }
        host.up_free = done;
        if loss < link.loss {
            return None;
        }
        let arrives = (done + link.latency + link.jitter.mul_f64(jitter)).max(host.up_last);
        host.up_last = arrives;
        Some(arrives)
    }

    /// A datagram arriving at host `ip` from the network at `at`.
    fn downlink(
        &mut self,
        at: Instant,
        from: Ipv4Addr,
        ip: Ipv4Addr,
        len: usize,
    ) -> Option<Instant> {
        let loss: f64 = self.rng.gen();
        let jitter: f64 = self.rng.gen();
        let host = self.hosts.get_mut(&ip)?;
        let link = host.link;
        let last = self.last_arrival.entry((from, ip)).or_insert(at);
        let arrives = (at + link.latency + link.jitter.mul_f64(jitter)).max(*last);
        *last = arrives;
        let host = self.hosts.get_mut(&ip)?;
        let start = host.down_free.max(arrives);
        let done = start + serialization(link.rate, len);
        if done.saturating_duration_since(arrives) > LINK_QUEUE {
            return None;
        }
        host.down_free = done;
        if loss < link.loss {
            return None;
        }
        Some(done)
    }

    /// Outbound through NAT `n`: the source as seen outside.
    fn translate_out(&mut self, n: usize, src: SocketAddr, dst: SocketAddr) -> Option<SocketAddr> {
        if self.nats[n].options.udp_blocked {
            return None;
        }
        let kind = self.nats[n].kind;
        let key = (src, (kind == Nat::Symmetric).then_some(dst));
        let port = match self.nats[n].out.get(&key) {
            Some(&p) => p,
            None => {
                let keep = src.port();
                let port = if kind != Nat::Symmetric && !self.nats[n].mappings.contains_key(&keep) {
                    keep
                } else {
                    loop {
                        let p = self.rng.gen_range(1024..=u16::MAX);
                        if !self.nats[n].mappings.contains_key(&p) {
                            break p;
                        }
                    }
                };
                let nat = &mut self.nats[n];
                nat.out.insert(key, port);
                nat.mappings.insert(
                    port,
                    Mapping { internal: src, to_addrs: HashSet::new(), to_ips: HashSet::new() },
                );
                port
            }
        };
        let nat = &mut self.nats[n];
        let m = nat.mappings.get_mut(&port)?;
        m.to_addrs.insert(dst);
        m.to_ips.insert(dst.ip());
        Some(SocketAddr::from((nat.public, port)))
    }

    /// Inbound through NAT `n`: the inside destination, if the filter lets `src` in.
    fn translate_in(&mut self, n: usize, src: SocketAddr, dst: SocketAddr) -> Option<SocketAddr> {
        let nat = &self.nats[n];
        let m = nat.mappings.get(&dst.port())?;
        let allowed = match nat.kind {
            Nat::FullCone => true,
            Nat::AddressRestricted => m.to_ips.contains(&src.ip()),
            Nat::PortRestricted | Nat::Symmetric => m.to_addrs.contains(&src),
        };
        allowed.then_some(m.internal)
    }
}

fn serialization(rate: Option<u64>, len: usize) -> Duration {
    match rate {
        Some(r) if r > 0 => Duration::from_secs_f64(len as f64 / r as f64),
        _ => Duration::ZERO,
    }
}

/// A UDP socket of a [`Sim`], for quinn.
pub struct SimSocket {
    sim: Sim,
    addr: SocketAddr,
    inbox: Mutex<mpsc::Receiver<(SocketAddr, Vec<u8>)>>,
}

impl fmt::Debug for SimSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimSocket").field("addr", &self.addr).finish()
    }
}

impl Drop for SimSocket {
    fn drop(&mut self) {
        if let Some(socket) = self.sim.world().sockets.remove(&self.addr) {
            socket.wake.notify_one();
        }
    }
}

impl SimSocket {
    /// Sends one datagram (outside quinn: for tests of the network itself).
    pub fn send_to(&self, data: &[u8], to: SocketAddr) {
        self.sim.send(self.addr, to, data);
    }

    /// Receives one datagram and its source (outside quinn).
    pub async fn recv_from(&self) -> Option<(Vec<u8>, SocketAddr)> {
        std::future::poll_fn(|cx| {
            let mut inbox = self.inbox.lock().unwrap_or_else(PoisonError::into_inner);
            inbox.poll_recv(cx)
        })
        .await
        .map(|(from, data)| (data, from))
    }
}

impl AsyncUdpSocket for SimSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        match transmit.segment_size {
            Some(size) if size > 0 => {
                for segment in transmit.contents.chunks(size) {
                    self.sim.send(self.addr, transmit.destination, segment);
                }
            }
            _ => self.sim.send(self.addr, transmit.destination, transmit.contents),
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut inbox = self.inbox.lock().unwrap_or_else(PoisonError::into_inner);
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let (from, data) = if n == 0 {
                match inbox.poll_recv(cx) {
                    Poll::Ready(Some(d)) => d,
                    Poll::Ready(None) | Poll::Pending => return Poll::Pending,
                }
            } else {
                match inbox.try_recv() {
                    Ok(d) => d,
                    Err(_) => break,
                }
            };
            let len = data.len().min(bufs[n].len());
            bufs[n][..len].copy_from_slice(&data[..len]);
            meta[n] = RecvMeta { addr: from, len, stride: len, ecn: None, dst_ip: None };
            n += 1;
        }
        Poll::Ready(Ok(n))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests;
