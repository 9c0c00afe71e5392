//! One QUIC connection over two paths: direct UDP, and the rendezvous node's relay.
//!
//! [`PathSocket`] is the data endpoint's socket in rendezvous mode. quinn talks to the peer at
//! one fixed, made-up address ([`PathSocket::peer`]); the socket decides, packet by packet, how that
//! address is reached:
//!
//! - **direct**, to the peer address that last answered a probe, while it keeps answering;
//! - otherwise **through the relay**, when one is attached ([`PathSocket::attach_relay`]):
//!   as relay datagrams to the node from this same socket, or as records on a TCP stream
//!   ([`super::relay`]);
//! - otherwise nowhere (the packet is lost, and QUIC sends it again later).
//!
//! Everything else the endpoint sends (its connection to the node) goes out unchanged.
//! Because quinn never sees the peer's address change, a transfer moves between the paths
//! without knowing: QUIC retransmits what a dying path lost, and no stream, lane or file
//! starts again.
//!
//! **Probes** find and watch the direct path ([`PathSocket::start_probing`]). A probe is
//! `0x00 ‖ kind ‖ id (16) ‖ tag (16)`: the first byte lacks QUIC's fixed bit (our endpoints
//! never grease it), so probes and QUIC share the socket. The tag is an HMAC under a key from
//! the session, so only the peer can make one. Each side pings every candidate of the other
//! (punching its own NAT open on the way) and answers every authentic ping *to the address it
//! came from* — so a side behind a symmetric NAT is reached at the mapping its ping revealed
//! (peer-reflexive). A pong from the address its ping went to validates that address as the
//! direct path. Datagrams from addresses that sent authentic probes are the peer's, and quinn
//! sees them as coming from [`PathSocket::peer`].

use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use p2p_copy_rendezvous::client::RelayStream;
use p2p_copy_rendezvous::wire::{datagram_ticket, put_datagram_header, DATAGRAM_HEADER};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::relay::{watch_stream, Record, RelayLink, RelayOut, RelayState, KEEP_ALIVE};
use crate::crypto::Keys;

mod probe;

use probe::Prober;
pub use probe::{DEAD_AFTER, REPLAY_WINDOW};
#[cfg(test)]
use probe::{ID_LEN, PING, PONG, PROBE_LEN};

/// First byte of a probe (QUIC packets have 0x40 set).
const PROBE: u8 = 0x00;
/// Probes queued towards the prober.
const PROBE_QUEUE: usize = 256;
/// Records queued from the relay towards quinn.
const INBOX: usize = 256;
/// Datagrams quinn may hand over at once (and receive in one relayed record).
const SEGMENTS: usize = 10;

thread_local! {
    /// Where relay datagrams are put together before they are sent.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The poller whose `poll_writable` last said "ready" on this thread: quinn calls
    /// `try_send` right after, on the same thread, for the same connection. 0: none.
    static WRITING: Cell<usize> = const { Cell::new(0) };
    /// The poller whose packet for the peer the relay's outbox refused on this thread. quinn
    /// calls that poller's `poll_writable` again at once to retry the packet: that call, and
    /// only that one, waits for room in the outbox. The endpoint's connection to the node must
    /// never wait for it, since it is what empties the outbox (waiting there would deadlock a
    /// busy relay); so must packets quinn's endpoint sends without a poller (its answers to
    /// unknown connections), which leave no mark. 0: none.
    static REFUSED: Cell<usize> = const { Cell::new(0) };
}

/// How the data flowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PathKind {
    /// A direct QUIC connection between the peers.
    Direct,
    /// The peers' QUIC connection carried through the rendezvous node's relay.
    Relay,
}

impl PathKind {
    /// The name used in output.
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Relay => "relay",
        }
    }
}

/// The address quinn sends to for the peer (any path reaches it), in the family of the local
/// socket (quinn insists): from the discard-only prefix 100::/64 (RFC 6666), or from 240/4
/// (reserved, never routed). Never a real host.
fn peer_addr(ipv6: bool) -> SocketAddr {
    if ipv6 {
        SocketAddr::from((Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 2), 1))
    } else {
        SocketAddr::from((Ipv4Addr::new(240, 0, 0, 2), 1))
    }
}

/// Where the paths stand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathStatus {
    /// The validated direct address of the peer, while it answers.
    pub direct: Option<SocketAddr>,
    /// The relay, once attached.
    pub relay: Option<RelayState>,
    /// The path the last packet to the peer took.
    pub using: Option<PathKind>,
    /// How often the peer's packets moved from one path to the other.
    pub changes: u32,
}

/// A received probe and where it came from.
type Probe = (SocketAddr, Vec<u8>);

struct Route {
    direct: Option<SocketAddr>,
    relay: Option<RelayRoute>,
    /// Addresses that sent authentic probes: their datagrams are the peer's.
    peers: HashSet<SocketAddr>,
}

/// How packets reach the relay.
#[derive(Clone)]
enum RelayRoute {
    /// As relay datagrams to the node (at `node`, as the node connection reaches it), headed
    /// with our ticket.
    Datagrams { node: SocketAddr, ticket: u64 },
    /// As records on a TCP stream.
    Stream(RelayOut),
}

impl Route {
    /// The node's address and our ticket, when the relay goes by datagrams.
    fn relay_datagrams(&self) -> Option<(SocketAddr, u64)> {
        match &self.relay {
            Some(RelayRoute::Datagrams { node, ticket }) => Some((*node, *ticket)),
            _ => None,
        }
    }
}

struct Shared {
    route: Mutex<Route>,
    status: watch::Sender<PathStatus>,
    inbox: mpsc::Sender<Record>,
    probes: mpsc::Sender<Probe>,
    probe_rx: Mutex<Option<mpsc::Receiver<Probe>>>,
    link: Mutex<Option<RelayLink>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Bytes sent to the peer: direct, relayed.
    sent: [AtomicU64; 2],
    /// Datagrams received through the relay.
    relayed_in: AtomicU64,
    /// Something went to the relay since the last keep-alive.
    relay_used: AtomicBool,
}

impl Shared {
    fn route(&self) -> MutexGuard<'_, Route> {
        self.route.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_direct(&self, to: Option<SocketAddr>) {
        self.route().direct = to;
        self.status.send_if_modified(|s| {
            let changed = s.direct != to;
            s.direct = to;
            changed
        });
    }
}

/// The data endpoint's socket in rendezvous mode (see the module documentation).
pub struct PathSocket {
    base: Arc<dyn AsyncUdpSocket>,
    /// Where quinn sees the peer.
    peer: SocketAddr,
    shared: Arc<Shared>,
    inbox: Mutex<mpsc::Receiver<Record>>,
    /// Alternates which source `poll_recv` serves first.
    relay_first: AtomicBool,
}

impl fmt::Debug for PathSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PathSocket").field("status", &*self.shared.status.borrow()).finish()
    }
}

impl Drop for PathSocket {
    fn drop(&mut self) {
        self.close();
    }
}

impl PathSocket {
    /// Wraps `base`, the UDP socket that reaches the node and the peer's direct addresses.
    pub fn new(base: Arc<dyn AsyncUdpSocket>) -> Arc<PathSocket> {
        let (inbox_tx, inbox) = mpsc::channel(INBOX);
        let (probes, probe_rx) = mpsc::channel(PROBE_QUEUE);
        let shared = Arc::new(Shared {
            route: Mutex::new(Route { direct: None, relay: None, peers: HashSet::new() }),
            status: watch::Sender::new(PathStatus::default()),
            inbox: inbox_tx,
            probes,
            probe_rx: Mutex::new(Some(probe_rx)),
            link: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
            sent: [AtomicU64::new(0), AtomicU64::new(0)],
            relayed_in: AtomicU64::new(0),
            relay_used: AtomicBool::new(false),
        });
        let ipv6 = base.local_addr().is_ok_and(|a| a.is_ipv6());
        Arc::new(PathSocket {
            base,
            peer: peer_addr(ipv6),
            shared,
            inbox: Mutex::new(inbox),
            relay_first: AtomicBool::new(false),
        })
    }

    /// The address quinn reaches the peer at, by whichever path is up.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Watches the paths.
    pub fn status(&self) -> watch::Receiver<PathStatus> {
        self.shared.status.subscribe()
    }

    /// Bytes sent to the peer so far: (direct, relayed).
    pub fn sent(&self) -> (u64, u64) {
        (self.shared.sent[0].load(Ordering::Relaxed), self.shared.sent[1].load(Ordering::Relaxed))
    }

    /// Datagrams received through the relay so far.
    pub fn relayed_in(&self) -> u64 {
        self.shared.relayed_in.load(Ordering::Relaxed)
    }

    /// Starts pinging `candidates` (the peer's addresses) and answering the peer's pings, for
    /// as long as the socket lives. Call once.
    pub fn start_probing(&self, keys: &Keys, candidates: &[SocketAddr]) {
        let Some(rx) = self.shared.probe_rx.lock().unwrap_or_else(PoisonError::into_inner).take()
        else {
            return;
        };
        let prober = Prober::new(self.base.clone(), self.shared.clone(), keys.clone());
        let candidates: Vec<SocketAddr> = candidates.iter().map(|a| canonical(*a)).collect();
        self.spawn(prober.run(rx, candidates));
    }

    /// Makes a paired relay the fallback path (and the path while there is no direct one).
    /// Returns its state.
    pub fn attach_relay(&self, stream: RelayStream) -> watch::Receiver<RelayState> {
        let mut state = match stream.datagrams {
            Some(node) => {
                let (tx, state) = watch::channel(RelayState::Up);
                let route = RelayRoute::Datagrams { node, ticket: stream.ticket };
                self.shared.route().relay = Some(route);
                let reader = stream.reader;
                // Dropping the writer would end the relay: it lives as long as the watch.
                let writer = stream.writer;
                self.spawn(async move {
                    watch_stream(reader).await;
                    drop(writer);
                    tx.send_replace(RelayState::Closed);
                });
                self.spawn(keep_alive(self.base.clone(), self.shared.clone(), node, stream.ticket));
                state
            }
            None => {
                let link = RelayLink::new(stream, self.shared.inbox.clone());
                let state = link.state.clone();
                self.shared.route().relay = Some(RelayRoute::Stream(link.out.clone()));
                *self.shared.link.lock().unwrap_or_else(PoisonError::into_inner) = Some(link);
                state
            }
        };
        self.shared.status.send_modify(|s| s.relay = Some(RelayState::Up));
        let shared = self.shared.clone();
        let watched = state.clone();
        self.spawn(async move {
            let ended = state.wait_for(|s| *s != RelayState::Up).await.map(|s| *s);
            let ended = ended.unwrap_or(RelayState::Closed);
            shared.route().relay = None;
            tracing::debug!(state = ?ended, "the relay ended");
            shared.status.send_modify(|s| s.relay = Some(ended));
        });
        watched
    }

    /// Stops probing and drops the relay.
    pub fn close(&self) {
        for t in self.shared.tasks.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            t.abort();
        }
        self.shared.route().relay = None;
        self.shared.link.lock().unwrap_or_else(PoisonError::into_inner).take();
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        self.shared.tasks.lock().unwrap_or_else(PoisonError::into_inner).push(handle);
    }

    /// Sends to the peer's direct address; datagrams beyond what the base socket takes at
    /// once go one by one. Errors other than a full buffer lose the packet, as on any link.
    fn send_direct(&self, to: SocketAddr, t: &Transmit) -> io::Result<()> {
        let size = t.segment_size.unwrap_or(t.contents.len()).max(1);
        let segments = t.contents.len().div_ceil(size);
        let parts: Vec<(&[u8], Option<usize>)> = if segments <= self.base.max_transmit_segments() {
            vec![(t.contents, t.segment_size)]
        } else {
            t.contents.chunks(size).map(|c| (c, None)).collect()
        };
        for (i, (contents, segment_size)) in parts.into_iter().enumerate() {
            let direct =
                Transmit { destination: to, ecn: t.ecn, contents, segment_size, src_ip: None };
            if !self.sent_part(&direct, i == 0)? {
                break;
            }
        }
        Ok(())
    }

    /// Sends one part of a transmit. A full buffer on the first part is quinn's to retry
    /// (`Err`); after that, or for any other error, the rest is lost as on any link
    /// (`Ok(false)`: stop).
    fn sent_part(&self, part: &Transmit, first: bool) -> io::Result<bool> {
        match self.base.try_send(part) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && first => Err(e),
            Err(e) => {
                tracing::trace!(error = %e, to = %part.destination, "send failed");
                Ok(false)
            }
        }
    }

    /// Sends to the peer through the relay's datagrams: each datagram of `t` goes to `node`
    /// headed with `ticket`, batches as batches.
    fn send_relayed(&self, node: SocketAddr, ticket: u64, t: &Transmit) -> io::Result<()> {
        let size = t.segment_size.unwrap_or(t.contents.len()).max(1);
        let wide = size + DATAGRAM_HEADER;
        let per_batch = self.base.max_transmit_segments().max(1);
        SCRATCH.with_borrow_mut(|out| {
            for (i, batch) in t.contents.chunks(size * per_batch).enumerate() {
                out.clear();
                for packet in batch.chunks(size) {
                    let at = out.len();
                    out.resize(at + DATAGRAM_HEADER, 0);
                    put_datagram_header(&mut out[at..], ticket);
                    out.extend_from_slice(packet);
                }
                let segment_size = (out.len() > wide).then_some(wide);
                let relayed = Transmit {
                    destination: node,
                    ecn: None,
                    contents: out,
                    segment_size,
                    src_ip: None,
                };
                if !self.sent_part(&relayed, i == 0)? {
                    break;
                }
            }
            Ok(())
        })
    }

    /// Takes relayed records into quinn's buffers; `cx` registers for more when none is ready.
    fn take_relay(
        &self,
        cx: Option<&mut Context>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> usize {
        let mut inbox = self.inbox.lock().unwrap_or_else(PoisonError::into_inner);
        let mut cx = cx;
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            // Register for a wakeup only while nothing was taken (then we return Pending).
            let record = match cx.as_deref_mut().filter(|_| n == 0) {
                Some(cx) => match inbox.poll_recv(cx) {
                    Poll::Ready(Some(r)) => r,
                    Poll::Ready(None) | Poll::Pending => break,
                },
                None => match inbox.try_recv() {
                    Ok(r) => r,
                    Err(_) => break,
                },
            };
            let len = record.packets.len();
            if len > bufs[n].len() {
                tracing::debug!(len, "dropped a relayed record too large for quinn's buffer");
                continue;
            }
            bufs[n][..len].copy_from_slice(&record.packets);
            meta[n] = RecvMeta {
                addr: self.peer,
                len,
                stride: record.stride.min(len),
                ecn: None,
                dst_ip: None,
            };
            self.shared
                .relayed_in
                .fetch_add(len.div_ceil(record.stride.max(1)) as u64, Ordering::Relaxed);
            n += 1;
        }
        n
    }

    /// Takes probes out of what the base socket received, unwraps relay datagrams, and marks
    /// the peer's datagrams as coming from [`PathSocket::peer`]; returns how many entries
    /// remain (moved to the front).
    fn sort(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta], n: usize) -> usize {
        let (peers_known, relay) = {
            let route = self.shared.route();
            let known = (0..n).map(|i| route.peers.contains(&canonical(meta[i].addr)));
            (known.collect::<Vec<_>>(), route.relay_datagrams())
        };
        let mut kept = 0;
        // The node's own packets found in a batch of relay datagrams, put in a spare buffer.
        let mut extra: Option<(usize, RecvMeta)> = None;
        for i in 0..n {
            let mut m = meta[i];
            match relay {
                Some((node, ticket)) if canonical(m.addr) == canonical(node) => {
                    let (relayed, rest) = self.unwrap_relayed(&mut bufs[i], &mut m, ticket);
                    if let Some(rest) = rest {
                        // At most one spare buffer is used per call: a mixed batch is rare
                        // (GRO only joins datagrams of one size), and a dropped packet is
                        // sent again.
                        let spare = bufs.len() - 1;
                        if extra.is_none() && spare >= n && rest.len() <= bufs[spare].len() {
                            bufs[spare][..rest.len()].copy_from_slice(&rest);
                            let mut r = meta[i];
                            r.len = rest.len();
                            r.stride = r.stride.min(r.len.max(1));
                            extra = Some((spare, r));
                        }
                    }
                    if relayed {
                        m.addr = self.peer;
                    }
                }
                _ => {
                    m.len = self.strip_probes(&mut bufs[i], &m);
                    if peers_known[i] {
                        m.addr = self.peer;
                    }
                }
            }
            if m.len == 0 {
                continue;
            }
            move_entry(bufs, i, kept, m.len);
            meta[kept] = m;
            kept += 1;
        }
        if let Some((spare, m)) = extra {
            move_entry(bufs, spare, kept, m.len);
            meta[kept] = m;
            kept += 1;
        }
        kept
    }

    /// In one received entry from the node: strips the headers of the relay datagrams for
    /// `ticket` and closes the gaps (`m` then describes the packets they carried), and drops
    /// relay datagrams for another ticket. Returns whether relay datagrams were found and, if
    /// the node's own QUIC packets came in the same batch, those (taken out of the entry).
    fn unwrap_relayed(
        &self,
        buf: &mut [u8],
        m: &mut RecvMeta,
        ticket: u64,
    ) -> (bool, Option<Vec<u8>>) {
        let stride = m.stride.clamp(1, m.len.max(1));
        let is_relayed = |seg: &[u8]| seg.first().is_some_and(|b| b & 0x40 == 0);
        if !buf[..m.len].chunks(stride).any(is_relayed) {
            return (false, None);
        }
        let mut rest: Vec<u8> = Vec::new();
        let (mut write, mut read, mut count) = (0, 0, 0u64);
        while read < m.len {
            let end = (read + stride).min(m.len);
            let segment = &buf[read..end];
            if !is_relayed(segment) {
                rest.extend_from_slice(segment);
            } else if datagram_ticket(segment) == Some(ticket) && segment.len() > DATAGRAM_HEADER {
                buf.copy_within(read + DATAGRAM_HEADER..end, write);
                write += end - read - DATAGRAM_HEADER;
                count += 1;
            }
            read = end;
        }
        self.shared.relayed_in.fetch_add(count, Ordering::Relaxed);
        m.len = write;
        m.stride = stride.saturating_sub(DATAGRAM_HEADER).clamp(1, write.max(1));
        (true, (!rest.is_empty()).then_some(rest))
    }

    /// Hands the probes among one received entry (a GRO batch may hold several datagrams) to
    /// the prober and closes the gaps; returns the length left.
    fn strip_probes(&self, buf: &mut [u8], m: &RecvMeta) -> usize {
        let stride = m.stride.clamp(1, m.len.max(1));
        let is_probe = |seg: &[u8]| seg.first().is_some_and(|b| b & 0x40 == 0);
        if !buf[..m.len].chunks(stride).any(is_probe) {
            return m.len;
        }
        let from = canonical(m.addr);
        let mut write = 0;
        let mut read = 0;
        while read < m.len {
            let end = (read + stride).min(m.len);
            if is_probe(&buf[read..end]) {
                if self.shared.probes.try_send((from, buf[read..end].to_vec())).is_err() {
                    tracing::trace!("probe queue full; dropped a probe");
                }
            } else {
                buf.copy_within(read..end, write);
                write += end - read;
            }
            read = end;
        }
        write
    }
}

impl AsyncUdpSocket for PathSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(PathPoller {
            base: self.base.clone().create_io_poller(),
            shared: self.shared.clone(),
            waiting: Mutex::new(None),
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let writing = WRITING.replace(0);
        if transmit.destination != self.peer {
            return self.base.try_send(transmit);
        }
        let (direct, relay) = {
            let route = self.shared.route();
            (route.direct, route.relay.clone())
        };
        let (kind, result) = if let Some(to) = direct {
            (PathKind::Direct, self.send_direct(to, transmit))
        } else if let Some(relay) = relay {
            self.shared.relay_used.store(true, Ordering::Relaxed);
            let result = match relay {
                RelayRoute::Datagrams { node, ticket } => self.send_relayed(node, ticket, transmit),
                RelayRoute::Stream(out) => {
                    let stride = transmit.segment_size.unwrap_or(transmit.contents.len());
                    match out.try_send(stride, transmit.contents) {
                        Ok(true) => Ok(()),
                        Ok(false) => {
                            REFUSED.set(writing);
                            Err(io::ErrorKind::WouldBlock.into())
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            (PathKind::Relay, result)
        } else {
            // No path (yet, or any more): lost, like on a dead link.
            return Ok(());
        };
        if result.is_ok() {
            let index = usize::from(kind == PathKind::Relay);
            self.shared.sent[index].fetch_add(transmit.contents.len() as u64, Ordering::Relaxed);
            self.shared.status.send_if_modified(|s| match s.using {
                Some(k) if k == kind => false,
                before => {
                    if before.is_some() {
                        s.changes += 1;
                        tracing::info!(from = ?before, to = kind.as_str(), "the transfer moved to another path");
                    }
                    s.using = Some(kind);
                    true
                }
            });
        }
        result
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if self.relay_first.fetch_xor(true, Ordering::Relaxed) {
            let n = self.take_relay(None, bufs, meta);
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
        }
        loop {
            match self.base.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => {
                    let kept = self.sort(bufs, meta, n);
                    if kept > 0 {
                        return Poll::Ready(Ok(kept));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        match self.take_relay(Some(cx), bufs, meta) {
            0 => Poll::Pending,
            n => Poll::Ready(Ok(n)),
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.base.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.base.max_transmit_segments().max(SEGMENTS)
    }

    fn max_receive_segments(&self) -> usize {
        self.base.max_receive_segments().max(SEGMENTS)
    }

    fn may_fragment(&self) -> bool {
        self.base.may_fragment()
    }
}

type Reserve = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Wakes quinn when the path in use can take more.
struct PathPoller {
    base: Pin<Box<dyn UdpPoller>>,
    shared: Arc<Shared>,
    /// In a mutex only to be `Sync`, as quinn requires: one task polls.
    waiting: Mutex<Option<Reserve>>,
}

impl fmt::Debug for PathPoller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PathPoller")
    }
}

impl UdpPoller for PathPoller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let me = std::ptr::from_ref::<PathPoller>(this) as usize;
        let waiting = this.waiting.get_mut().unwrap_or_else(PoisonError::into_inner);
        let refused = REFUSED.replace(0);
        if waiting.is_none() && refused == me {
            let relay = match &this.shared.route().relay {
                Some(RelayRoute::Stream(out)) => Some(out.clone()),
                _ => None,
            };
            if let Some(relay) = relay {
                // Room in the outbox, a direct path to send on instead, or the relay gone.
                let mut status = this.shared.status.subscribe();
                *waiting = Some(Box::pin(async move {
                    tokio::select! {
                        () = relay.ready() => {}
                        _ = status.wait_for(|s| {
                            s.direct.is_some() || s.relay != Some(RelayState::Up)
                        }) => {}
                    }
                }));
            }
        }
        if let Some(fut) = waiting.as_mut() {
            match fut.as_mut().poll(cx) {
                Poll::Ready(()) => *waiting = None,
                Poll::Pending => return Poll::Pending,
            }
        }
        let ready = this.base.as_mut().poll_writable(cx);
        if ready.is_ready() {
            WRITING.set(me);
        }
        ready
    }
}

/// Sends a keep-alive datagram to the relay whenever nothing went there for [`KEEP_ALIVE`]
/// (the node closes idle relays; a relay standing by beside a direct path is idle).
async fn keep_alive(
    base: Arc<dyn AsyncUdpSocket>,
    shared: Arc<Shared>,
    node: SocketAddr,
    ticket: u64,
) {
    let mut header = [0u8; DATAGRAM_HEADER];
    put_datagram_header(&mut header, ticket);
    let transmit = Transmit {
        destination: node,
        ecn: None,
        contents: &header,
        segment_size: None,
        src_ip: None,
    };
    loop {
        if !shared.relay_used.swap(false, Ordering::Relaxed) {
            if let Err(e) = base.try_send(&transmit) {
                tracing::trace!(error = %e, "relay keep-alive not sent");
            }
        }
        tokio::time::sleep(KEEP_ALIVE).await;
    }
}

/// Moves the first `len` bytes of received entry `from` to entry `to` (`to <= from`).
fn move_entry(bufs: &mut [IoSliceMut<'_>], from: usize, to: usize, len: usize) {
    if to != from {
        let (front, back) = bufs.split_at_mut(from);
        front[to][..len].copy_from_slice(&back[0][..len]);
    }
}

/// An address in the form received datagrams carry on a dual-stack socket's IPv4 side
/// normalised to plain IPv4, so that both compare equal.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Role;
    use crate::net::quic::{udp_socket, Node, Tuning};
    use p2p_copy_netsim::sim::{Link, Sim};
    use p2p_copy_rendezvous::client::Client;
    use p2p_copy_rendezvous::server::{self, RelayLimits, ServerConfig};
    use p2p_copy_rendezvous::wire::NodeMsg;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const WAIT: Duration = Duration::from_secs(10);

    fn keys() -> (Keys, Keys) {
        let (secret, transcript) = ([7u8; 32], [9u8; 32]);
        (
            Keys::from_shared_secret(Role::Sender, &secret, transcript),
            Keys::from_shared_secret(Role::Receiver, &secret, transcript),
        )
    }

    /// Two relay streams joined in memory: a byte splice, optionally damaging one byte.
    fn joined(tamper_at: Option<usize>) -> (RelayStream, RelayStream) {
        let (a, a_far) = tokio::io::duplex(1 << 20);
        let (b, b_far) = tokio::io::duplex(1 << 20);
        let (mut a_far_r, mut a_far_w) = tokio::io::split(a_far);
        let (mut b_far_r, mut b_far_w) = tokio::io::split(b_far);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut seen = 0usize;
            while let Ok(n) = a_far_r.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if let Some(at) = tamper_at.filter(|at| (seen..seen + n).contains(at)) {
                    buf[at - seen] ^= 0x01;
                }
                seen += n;
                if b_far_w.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut b_far_r, &mut a_far_w).await;
        });
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        (
            RelayStream { reader: Box::new(ar), writer: Box::new(aw), datagrams: None, ticket: 1 },
            RelayStream { reader: Box::new(br), writer: Box::new(bw), datagrams: None, ticket: 2 },
        )
    }

    struct Pair {
        s: (Arc<PathSocket>, Node, Keys),
        r: (Arc<PathSocket>, Node, Keys),
    }

    fn pair(s_base: Arc<dyn AsyncUdpSocket>, r_base: Arc<dyn AsyncUdpSocket>) -> Pair {
        let (ks, kr) = keys();
        let tuning = Tuning::default();
        let s = PathSocket::new(s_base);
        let r = PathSocket::new(r_base);
        let s_node = Node::with_socket(s.clone(), &tuning, true).unwrap();
        let r_node = Node::with_socket(r.clone(), &tuning, false).unwrap();
        Pair { s: (s, s_node, ks), r: (r, r_node, kr) }
    }

    impl Pair {
        /// A relay on a byte stream (as over TCP), spliced in memory.
        fn relay(&self, tamper_at: Option<usize>) {
            let (a, b) = joined(tamper_at);
            self.s.0.attach_relay(a);
            self.r.0.attach_relay(b);
        }

        /// A relay through a real node on loopback, by datagrams from the data sockets; the
        /// node's clients must live as long as the relay.
        async fn relay_through(&self, node: SocketAddr) -> (Client, Client) {
            let (s_ep, r_ep) = (self.s.1.endpoint.clone(), self.r.1.endpoint.clone());
            let mut a = Client::connect(&s_ep, node, None, WAIT).await.unwrap();
            let mut b = Client::connect(&r_ep, node, None, WAIT).await.unwrap();
            let n = a.allocate().await.unwrap();
            assert!(b.claim(n).await.unwrap());
            assert_eq!(a.recv().await.unwrap(), NodeMsg::PeerJoined);
            let mut tickets = Vec::new();
            for c in [&mut a, &mut b] {
                c.request_ticket().await.unwrap();
                match c.recv().await.unwrap() {
                    NodeMsg::RelayTicket { ticket } => tickets.push(ticket),
                    other => panic!("{other:?}"),
                }
            }
            let (sa, sb) = tokio::join!(a.relay(tickets[0], WAIT), b.relay(tickets[1], WAIT));
            let (sa, sb) = (sa.unwrap(), sb.unwrap());
            assert_eq!(sa.datagrams, Some(node));
            self.s.0.attach_relay(sa);
            self.r.0.attach_relay(sb);
            (a, b)
        }

        fn probe(&self) {
            let s_addr = self.s.0.base.local_addr().unwrap();
            let r_addr = self.r.0.base.local_addr().unwrap();
            self.s.0.start_probing(&self.s.2, &[r_addr]);
            self.r.0.start_probing(&self.r.2, &[s_addr]);
        }

        async fn connect(&self) -> (quinn::Connection, quinn::Connection) {
            let ep = self.s.1.endpoint.clone();
            let accept = tokio::spawn(async move { ep.accept().await.unwrap().await.unwrap() });
            let peer = self.r.0.peer();
            let c = self.r.1.connect_to(&[peer], WAIT, None, Duration::ZERO).await.unwrap();
            (c, accept.await.unwrap())
        }
    }

    async fn until(paths: &PathSocket, what: impl Fn(&PathStatus) -> bool) -> PathStatus {
        let mut status = paths.status();
        let seen = tokio::time::timeout(WAIT, status.wait_for(|s| what(s))).await;
        #[allow(clippy::let_and_return)] // the borrow of `status` must end first
        let seen = seen.expect("in time").unwrap().clone();
        seen
    }

    /// Sends `chunks` of 64 KiB on a new stream, `pause` apart; returns what arrived.
    async fn stream(
        from: &quinn::Connection,
        to: &quinn::Connection,
        chunks: usize,
        pause: Duration,
    ) -> usize {
        let mut send = from.open_uni().await.unwrap();
        let to = to.clone();
        let reader = tokio::spawn(async move {
            let mut recv = to.accept_uni().await.unwrap();
            recv.read_to_end(1 << 30).await.unwrap().len()
        });
        for _ in 0..chunks {
            send.write_all(&[0x5a; 64 << 10]).await.unwrap();
            tokio::time::sleep(pause).await;
        }
        send.finish().unwrap();
        tokio::time::timeout(Duration::from_secs(60), reader).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn probes_find_the_direct_path_and_quic_uses_it() {
        let local = "127.0.0.1:0".parse().unwrap();
        let p = pair(udp_socket(local).unwrap(), udp_socket(local).unwrap());
        p.probe();
        let r_addr = p.r.0.base.local_addr().unwrap();
        assert_eq!(until(&p.s.0, |s| s.direct.is_some()).await.direct, Some(r_addr));
        let (c, s) = p.connect().await;
        assert_eq!(stream(&c, &s, 64, Duration::ZERO).await, 64 << 16);
        let (direct, relayed) = p.r.0.sent();
        assert!(direct > 4 << 20 && relayed == 0, "{direct} {relayed}");
        assert_eq!(p.r.0.status().borrow().using, Some(PathKind::Direct));
    }

    /// A connection made over the relay moves to the direct path once probes find it; the
    /// stream open across the move completes.
    #[tokio::test]
    async fn a_relayed_connection_moves_to_a_direct_path_that_appears() {
        let local = "127.0.0.1:0".parse().unwrap();
        let p = pair(udp_socket(local).unwrap(), udp_socket(local).unwrap());
        p.relay(None);
        let (c, s) = p.connect().await;
        let moving = tokio::spawn({
            let (c, s) = (c.clone(), s.clone());
            async move { stream(&c, &s, 100, Duration::from_millis(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(p.r.0.sent().0, 0, "nothing direct before probing");
        p.probe();
        until(&p.r.0, |s| s.using == Some(PathKind::Direct)).await;
        assert_eq!(moving.await.unwrap(), 100 << 16);
        let (direct, relayed) = p.r.0.sent();
        assert!(direct > 0 && relayed > 0, "{direct} {relayed}");
        assert!(p.r.0.status().borrow().changes >= 1);
    }

    /// The direct path is cut mid-stream: after [`DEAD_AFTER`] the packets go through the
    /// relay and the stream completes, nothing sent twice at the application's level.
    #[tokio::test]
    async fn a_cut_direct_path_falls_back_to_the_relay() {
        let sim = Sim::new(11);
        let (a, b) = (sim.public_host(Link::IDEAL), sim.public_host(Link::IDEAL));
        let p = pair(a.bind(0).unwrap(), b.bind(0).unwrap());
        p.relay(None);
        p.probe();
        until(&p.r.0, |s| s.direct.is_some()).await;
        let (c, s) = p.connect().await;
        let moving = tokio::spawn({
            let (c, s) = (c.clone(), s.clone());
            async move { stream(&c, &s, 300, Duration::from_millis(20)).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(p.r.0.sent().0 > 0);
        sim.cut(a.ip, b.ip, true);
        let s_status = until(&p.r.0, |s| s.direct.is_none()).await;
        assert_eq!(s_status.relay, Some(RelayState::Up));
        assert_eq!(moving.await.unwrap(), 300 << 16);
        let status = p.r.0.status().borrow().clone();
        assert_eq!(status.using, Some(PathKind::Relay));
        assert!(status.changes >= 1);
        assert!(p.r.0.sent().1 > 0);
    }

    /// A relay that damages a packet costs a retransmission, never the data: QUIC rejects
    /// the damaged packet and sends its content again.
    #[tokio::test]
    async fn a_packet_the_relay_damages_is_sent_again() {
        let local = "127.0.0.1:0".parse().unwrap();
        let p = pair(udp_socket(local).unwrap(), udp_socket(local).unwrap());
        // Inside the receiver's first packet (its handshake), past the record's header.
        p.relay(Some(100));
        let (c, s) = p.connect().await;
        assert_eq!(stream(&c, &s, 32, Duration::ZERO).await, 32 << 16);
        assert_eq!(p.r.0.status().borrow().using, Some(PathKind::Relay));
    }

    /// The relay through a real node: packets go as datagrams from the data sockets to the
    /// node's port, which forwards them (batches included) without touching them.
    #[tokio::test]
    async fn the_node_relays_the_connection_as_datagrams() {
        let config = ServerConfig {
            relay: RelayLimits { session_rate: 0, total_rate: 0, ..RelayLimits::default() },
            ..ServerConfig::default()
        };
        let listeners = server::bind("127.0.0.1:0".parse().unwrap(), &config).unwrap();
        let node = listeners.local_addr().unwrap();
        let metrics = config.metrics_handle.clone();
        let serving = tokio::spawn(server::serve(listeners, config, std::future::pending()));
        let local = "127.0.0.1:0".parse().unwrap();
        let p = pair(udp_socket(local).unwrap(), udp_socket(local).unwrap());
        let _clients = p.relay_through(node).await;
        until(&p.r.0, |s| s.relay == Some(RelayState::Up)).await;
        let (c, s) = p.connect().await;
        assert_eq!(stream(&c, &s, 128, Duration::ZERO).await, 128 << 16);
        let (direct, relayed) = p.r.0.sent();
        assert!(direct == 0 && relayed > 0, "{direct} {relayed}");
        assert!(p.s.0.relayed_in() > 100, "the sender heard the receiver through the relay");
        let bytes = metrics.relay_bytes_total.load(Ordering::Relaxed);
        assert!(bytes > 8 << 20, "the node counted the relayed bytes: {bytes}");
        serving.abort();
    }

    /// Only the peer's probes get answers, and only they make an address the peer's.
    #[tokio::test]
    async fn probes_without_the_key_are_ignored() {
        let local = "127.0.0.1:0".parse().unwrap();
        let (ks, kr) = keys();
        let paths = PathSocket::new(udp_socket(local).unwrap());
        // The endpoint drives the socket.
        let _node = Node::with_socket(paths.clone(), &Tuning::default(), false).unwrap();
        paths.start_probing(&ks, &[]);
        let to = paths.base.local_addr().unwrap();
        let stranger = tokio::net::UdpSocket::bind(local).await.unwrap();
        let ping = |keys: &Keys| {
            let id = [3u8; ID_LEN];
            let mut p = vec![PROBE, PING];
            p.extend_from_slice(&id);
            p.extend_from_slice(&keys.probe_tag(PING, &id));
            p
        };
        let (_, other) = {
            let (secret, transcript) = ([8u8; 32], [9u8; 32]);
            (
                Keys::from_shared_secret(Role::Sender, &secret, transcript),
                Keys::from_shared_secret(Role::Receiver, &secret, transcript),
            )
        };
        let mut buf = [0u8; 100];
        for wrong in [ping(&other), ping(&ks)] {
            stranger.send_to(&wrong, to).await.unwrap();
            let answer =
                tokio::time::timeout(Duration::from_millis(500), stranger.recv(&mut buf)).await;
            assert!(answer.is_err(), "no pong to a ping without the peer's key");
        }
        stranger.send_to(&ping(&kr), to).await.unwrap();
        let n = tokio::time::timeout(WAIT, stranger.recv(&mut buf)).await.unwrap().unwrap();
        assert_eq!(n, PROBE_LEN);
        assert_eq!(&buf[..2], &[PROBE, PONG]);
        assert!(kr.check_probe_tag(PONG, &[3u8; ID_LEN], &buf[2 + ID_LEN..n]));
    }

    /// A ping captured once and replayed, from anywhere, gets no pong and makes nobody the
    /// peer; a fresh one does. New addresses are learnt only a few at a time.
    #[tokio::test]
    async fn a_replayed_ping_is_ignored() {
        let local = "127.0.0.1:0".parse().unwrap();
        let (ks, kr) = keys();
        let paths = PathSocket::new(udp_socket(local).unwrap());
        let _node = Node::with_socket(paths.clone(), &Tuning::default(), false).unwrap();
        paths.start_probing(&ks, &[]);
        let to = paths.base.local_addr().unwrap();
        let ping = |counter: u64| {
            let mut id = [7u8; ID_LEN];
            id[..8].copy_from_slice(&counter.to_be_bytes());
            let mut p = vec![PROBE, PING];
            p.extend_from_slice(&id);
            p.extend_from_slice(&kr.probe_tag(PING, &id));
            p
        };
        /// Whether a pong comes within half a second (pings of our own may come too: a
        /// learnt address is pinged).
        async fn answered(socket: &tokio::net::UdpSocket) -> bool {
            let mut buf = [0u8; 100];
            let pong = async {
                loop {
                    match socket.recv(&mut buf).await {
                        Ok(n) if n == PROBE_LEN && buf[1] == PONG => return,
                        _ => {}
                    }
                }
            };
            tokio::time::timeout(Duration::from_millis(500), pong).await.is_ok()
        }
        let first = tokio::net::UdpSocket::bind(local).await.unwrap();
        let captured = ping(2000);
        first.send_to(&captured, to).await.unwrap();
        assert!(answered(&first).await, "a fresh ping is answered");
        // The same ping again, from the same address or from another: nothing.
        let other = tokio::net::UdpSocket::bind(local).await.unwrap();
        for socket in [&first, &other] {
            socket.send_to(&captured, to).await.unwrap();
            assert!(!answered(socket).await, "a replayed ping gets no pong");
        }
        assert!(!paths.shared.route().peers.contains(&other.local_addr().unwrap()));
        // Far older than the newest counter seen: refused as well.
        other.send_to(&ping(2000 - REPLAY_WINDOW), to).await.unwrap();
        assert!(!answered(&other).await, "a ping older than the window gets no pong");
        // Fresh pings from many new addresses at once: only a few are learnt.
        let mut learnt = 0;
        for i in 0..8 {
            let s = tokio::net::UdpSocket::bind(local).await.unwrap();
            s.send_to(&ping(3000 + i), to).await.unwrap();
            learnt += usize::from(answered(&s).await);
        }
        assert!((1..8).contains(&learnt), "{learnt} of 8 new addresses answered at once");
    }
}
