//! The relay: forwards the two peers' QUIC packets between the clients of one pairing, without
//! ever decrypting, sealing or otherwise changing them.
//!
//! 1. **Tickets.** When a side of a nameplate that has two sides asks (`RelayTicket`), the
//!    table names the pairing and the side, and [`Relays::grant`] answers with that side's
//!    ticket: two random 64-bit numbers are drawn per pairing, one per side. Only the two
//!    clients of the pairing ever learn them, over their own mailbox sessions.
//! 2. **Attaching.** Each side opens a relay stream (a QUIC stream to the node, or a TCP
//!    connection) whose first frame is `Relay { ticket }` ([`Relays::serve`]). The stream
//!    holds one relay slot of the side's source for as long as it lasts (both ends are
//!    counted). Once both tickets of the pairing are attached, both get `Paired`; a side
//!    whose partner does not attach within [`PAIR_TIMEOUT`] of the grant gets `Expired`.
//! 3. **Forwarding.** A side on QUIC sends the packets as UDP datagrams to the node's port
//!    (`0x01 ‖ ticket ‖ packet`, see [`crate::wire`]); `socket::NodeSocket` takes them out of
//!    what the node's QUIC endpoint receives and hands them to `Relays::datagrams`, which
//!    checks the ticket and that they come from the address of the QUIC connection that
//!    attached it, and sends them on to the other side (with that side's ticket in the
//!    header), batches as batches. A side on TCP sends and receives records on its stream.
//! 4. **Ending.** Either stream closing, the node shutting down, [`RelayLimits::idle_timeout`]
//!    without a packet (keep-alives count) or [`RelayLimits::max_duration`] end the relay for
//!    both sides: their streams are finished, and their tickets forgotten.
//!
//! Limits ([`RelayLimits`]): pairings at once (with or without their ends), relay streams per
//! source, bytes per second per relay and direction, and the node's total rate shared fairly
//! between sources (`meter`). A packet over a rate is dropped, as a policing router would;
//! the peers' congestion control backs off.

mod meter;
pub(crate) mod socket;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::udp::Transmit;
use quinn::AsyncUdpSocket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::metrics::{GaugeGuard, Metrics};
use crate::table::{Counts, SourceKey};
use crate::wire::{self, put_datagram_header, ErrorCode, NodeMsg, DATAGRAM_HEADER};
use meter::{Bucket, Fair};

pub use crate::client::{Reader, Writer};

/// How long after its grant a pairing waits for both sides to attach.
pub const PAIR_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest relay record on a TCP stream (stride and packets).
pub const MAX_RECORD: usize = 64 * 1024;
/// Records queued towards a side on TCP; more are dropped (as a full link would).
const STREAM_QUEUE: usize = 256;
/// How often a running relay checks its idle and duration limits.
const WATCH_TICK: Duration = Duration::from_secs(1);

/// Relay limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLimits {
    /// Pairings at once, counting those whose sides have not attached yet.
    pub max_sessions: usize,
    /// Bytes per second per relay and direction; 0 means unlimited.
    pub session_rate: u64,
    /// Bytes per second over all relays, shared fairly between sources; 0 means unlimited.
    pub total_rate: u64,
    /// The longest a relay may last.
    pub max_duration: Duration,
    /// A relay with no packet (keep-alives included) in either direction for this long is
    /// closed.
    pub idle_timeout: Duration,
    /// Relay streams at once from one IPv4 address or IPv6 /64 (each side of a relay holds
    /// one); the node sets it to its clients-per-address limit.
    pub per_source: usize,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            max_sessions: 1000,
            session_rate: 50_000_000,
            total_rate: 250_000_000,
            max_duration: Duration::from_secs(6 * 3600),
            idle_timeout: Duration::from_secs(60),
            per_source: 64,
        }
    }
}

/// Sees, and may alter, every relayed packet: `(side it came from, bytes relayed from that
/// side before it, the packet)`. Only for tests and diagnosis: it lets a test play a malicious
/// relay.
#[derive(Clone)]
pub struct Tap(pub Arc<TapFn>);

/// The function of a [`Tap`].
pub type TapFn = dyn Fn(u8, u64, &mut [u8]) + Send + Sync;

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tap")
    }
}

/// How a relay stream reached the node, which decides how its packets travel.
#[derive(Debug)]
pub enum Attach {
    /// A stream of this QUIC connection: packets come and go as datagrams to and from the
    /// connection's address.
    Datagrams(quinn::Connection),
    /// A TCP connection: packets travel as records on the stream itself.
    Stream,
}

/// The relays of one node.
#[derive(Debug)]
pub struct Relays {
    limits: RelayLimits,
    state: Mutex<State>,
    /// The node's UDP socket, which datagrams to sides on QUIC leave from.
    socket: Option<Arc<dyn AsyncUdpSocket>>,
    fair: Mutex<Fair>,
    closing: AtomicBool,
    tap: Option<Tap>,
    /// Where the relays count what they do (`relays_*`, `relay_bytes_total`,
    /// `relay_dropped_total`).
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct State {
    tickets: HashMap<u64, (Arc<Alloc>, u8)>,
    pairings: HashMap<u64, Arc<Alloc>>,
    per_source: Counts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    Paired,
    Ended,
}

/// The relay of one pairing.
#[derive(Debug)]
struct Alloc {
    pairing: u64,
    tickets: [u64; 2],
    granted: Instant,
    phase: watch::Sender<Phase>,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    ends: [Option<End>; 2],
    /// Per direction (from side 0, from side 1), when sessions have a rate.
    sessions: [Option<Bucket>; 2],
    /// Bytes relayed from each side.
    relayed: [u64; 2],
    /// The last packet (or keep-alive), and when the relay was paired.
    last: Instant,
    paired: Option<Instant>,
    /// Holds `relays_active` up while paired.
    active: Option<GaugeGuard>,
}

#[derive(Debug)]
enum End {
    Datagrams { conn: quinn::Connection, addr: SocketAddr, source: IpAddr },
    Stream { tx: mpsc::Sender<Vec<u8>>, source: IpAddr },
}

impl End {
    fn source(&self) -> IpAddr {
        match self {
            End::Datagrams { source, .. } | End::Stream { source, .. } => *source,
        }
    }
}

/// One relay stream counted for its source; released on drop.
struct Slot<'a> {
    relays: &'a Relays,
    keys: Vec<SourceKey>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        lock(&self.relays.state).per_source.release(&self.keys);
    }
}

/// What a packet run is forwarded as.
enum Packets<'a> {
    /// Relay datagrams, headers included, `stride` bytes each (the last maybe shorter).
    Datagrams { buf: &'a mut [u8], stride: usize },
    /// Bare packets from a TCP record, `stride` bytes each (the last maybe shorter).
    Bare { buf: &'a mut [u8], stride: usize },
}

impl Relays {
    /// Relays under `limits`, without a UDP socket (only TCP sides can be served; for tests).
    pub fn new(limits: RelayLimits) -> Relays {
        Relays::with(limits, None, None, Arc::default())
    }

    /// Relays under `limits` that send datagrams on `socket`, count into `metrics` and pass
    /// every packet through `tap`.
    pub fn with(
        limits: RelayLimits,
        socket: Option<Arc<dyn AsyncUdpSocket>>,
        tap: Option<Tap>,
        metrics: Arc<Metrics>,
    ) -> Relays {
        let fair = Fair::new(limits.total_rate, Instant::now());
        Relays {
            limits,
            state: Mutex::new(State::default()),
            socket,
            fair: Mutex::new(fair),
            closing: AtomicBool::new(false),
            tap,
            metrics,
        }
    }

    /// The ticket of `side` (0 or 1) for the relay of `pairing`, drawing both tickets of the
    /// pairing at its first request. Refused (code and message) when the node is closing or
    /// holds [`RelayLimits::max_sessions`] pairings.
    pub fn grant(&self, pairing: u64, side: u8) -> Result<u64, (ErrorCode, String)> {
        if self.closing.load(Ordering::Relaxed) {
            return Err((ErrorCode::ShuttingDown, "the node is shutting down".into()));
        }
        let side = usize::from(side.min(1));
        let now = Instant::now();
        let mut state = lock(&self.state);
        if let Some(alloc) = state.pairings.get(&pairing) {
            return Ok(alloc.tickets[side]);
        }
        // Pairings granted long ago whose sides never attached are forgotten here (one
        // whose side attached is ended by that side's stream).
        let stale: Vec<Arc<Alloc>> = state
            .pairings
            .values()
            .filter(|a| {
                now.saturating_duration_since(a.granted) > PAIR_TIMEOUT
                    && lock(&a.inner).ends.iter().all(Option::is_none)
            })
            .cloned()
            .collect();
        for alloc in stale {
            forget(&mut state, &alloc);
        }
        if state.pairings.len() >= self.limits.max_sessions {
            Metrics::bump(&self.metrics.relays_refused_total);
            return Err((ErrorCode::Busy, "the relay is full; try again later".into()));
        }
        let mut tickets = [0u64; 2];
        for t in &mut tickets {
            *t = loop {
                let candidate: u64 = rand::random();
                if candidate != 0 && !state.tickets.contains_key(&candidate) {
                    break candidate;
                }
            };
        }
        let rate = self.limits.session_rate;
        let alloc = Arc::new(Alloc {
            pairing,
            tickets,
            granted: now,
            phase: watch::Sender::new(Phase::Waiting),
            inner: Mutex::new(Inner {
                ends: [None, None],
                sessions: [(); 2].map(|()| (rate > 0).then(|| Bucket::new(rate, now))),
                relayed: [0; 2],
                last: now,
                paired: None,
                active: None,
            }),
        });
        for (i, t) in tickets.iter().enumerate() {
            state.tickets.insert(*t, (alloc.clone(), i as u8));
        }
        state.pairings.insert(pairing, alloc);
        Ok(tickets[side])
    }

    /// Serves one relay stream from `source` whose `Relay { ticket }` was read; returns when
    /// the relay is over (or was refused).
    pub async fn serve(
        &self,
        ticket: u64,
        source: SocketAddr,
        attach: Attach,
        mut reader: Reader,
        mut writer: Writer,
    ) {
        if self.closing.load(Ordering::Relaxed) {
            let message = "the node is shutting down; try again later";
            self.refuse(&mut writer, ErrorCode::ShuttingDown, message).await;
            return;
        }
        let found = lock(&self.state).tickets.get(&ticket).cloned();
        let Some((alloc, side)) = found else {
            let message = "unknown or expired relay ticket";
            self.refuse(&mut writer, ErrorCode::Expired, message).await;
            return;
        };
        let Some(slot) = self.admit(source.ip()) else {
            self.refuse(&mut writer, ErrorCode::Busy, "the relay is full; try again later").await;
            return;
        };
        let Some(rx) = self.attach(&alloc, side, source, attach) else {
            let message = "this relay ticket is already attached";
            self.refuse(&mut writer, ErrorCode::Protocol, message).await;
            return;
        };
        // Until the other side attaches (or never does, or this one hangs up: it sends
        // nothing before `Paired`, so a read that returns means it left).
        let mut phase = alloc.phase.subscribe();
        let deadline = tokio::time::Instant::from_std(alloc.granted + PAIR_TIMEOUT);
        let mut probe = [0u8; 1];
        let paired = tokio::select! {
            p = tokio::time::timeout_at(deadline, phase.wait_for(|p| *p != Phase::Waiting)) => {
                matches!(p, Ok(Ok(p)) if *p == Phase::Paired)
            }
            _ = reader.read(&mut probe) => false,
        };
        if !paired {
            self.end(&alloc);
            self.refuse(&mut writer, ErrorCode::Expired, "the other side never came").await;
            return;
        }
        let answered = tokio::time::timeout(
            Duration::from_secs(10),
            writer.write_all(&wire::encode(&NodeMsg::Paired)),
        )
        .await;
        if matches!(answered, Ok(Ok(()))) {
            let ended = async {
                let _ = phase.wait_for(|p| *p == Phase::Ended).await;
            };
            match rx {
                // The stream only holds the relay: it ends when the client closes it.
                None => tokio::select! {
                    () = drain(reader) => {}
                    () = ended => {}
                    () = self.watch(&alloc) => {}
                },
                Some(rx) => tokio::select! {
                    () = self.records_in(&alloc, side, reader) => {}
                    () = records_out(rx, &mut writer) => {}
                    () = ended => {}
                    () = self.watch(&alloc) => {}
                },
            }
        }
        self.end(&alloc);
        let _ = tokio::time::timeout(Duration::from_secs(5), writer.shutdown()).await;
        tracing::debug!(pairing = alloc.pairing, "relay finished");
        drop(slot);
    }

    /// Relay datagrams that arrived at the node's socket from `from`: `buf` holds one or more
    /// of `stride` bytes each (the last may be shorter), all with the same ticket.
    pub(crate) fn datagrams(&self, from: SocketAddr, buf: &mut [u8], stride: usize) {
        let Some(ticket) = wire::datagram_ticket(buf) else { return };
        let found = lock(&self.state).tickets.get(&ticket).cloned();
        let Some((alloc, side)) = found else {
            self.dropped(1);
            return;
        };
        let source = {
            let mut inner = lock(&alloc.inner);
            match &mut inner.ends[usize::from(side)] {
                Some(End::Datagrams { conn, addr, source }) => {
                    if !same_addr(*addr, from) {
                        // The client's QUIC connection to the node may have moved (a NAT
                        // rebinding); anything else is not the attached client.
                        if !same_addr(conn.remote_address(), from) {
                            drop(inner);
                            self.dropped(1);
                            return;
                        }
                        *addr = from;
                    }
                    *source
                }
                _ => {
                    drop(inner);
                    self.dropped(1);
                    return;
                }
            }
        };
        self.forward(&alloc, side, source, Packets::Datagrams { buf, stride });
    }

    /// Shutdown: new tickets and relay streams are refused; running relays go on (the server
    /// bounds them by its grace period).
    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    /// Pairings held (with or without their sides attached).
    pub fn pairings(&self) -> usize {
        lock(&self.state).pairings.len()
    }

    /// Takes a relay slot for `source` within the per-source caps (hierarchical, as the
    /// table's).
    fn admit(&self, source: IpAddr) -> Option<Slot<'_>> {
        let mut state = lock(&self.state);
        let Some(keys) = state.per_source.take(source, self.limits.per_source) else {
            Metrics::bump(&self.metrics.relays_refused_total);
            return None;
        };
        Some(Slot { relays: self, keys })
    }

    /// Attaches `side` of `alloc`; `None` if it is attached already (or the relay ended).
    /// For a side on TCP, returns the queue of records towards it.
    #[allow(clippy::option_option)]
    fn attach(
        &self,
        alloc: &Alloc,
        side: u8,
        source: SocketAddr,
        attach: Attach,
    ) -> Option<Option<mpsc::Receiver<Vec<u8>>>> {
        let mut inner = lock(&alloc.inner);
        if inner.ends[usize::from(side)].is_some() || *alloc.phase.borrow() == Phase::Ended {
            return None;
        }
        let ip = source.ip();
        let (end, rx) = match attach {
            Attach::Datagrams(conn) => {
                let addr = conn.remote_address();
                (End::Datagrams { conn, addr, source: ip }, None)
            }
            Attach::Stream => {
                let (tx, rx) = mpsc::channel(STREAM_QUEUE);
                (End::Stream { tx, source: ip }, Some(rx))
            }
        };
        inner.ends[usize::from(side)] = Some(end);
        if inner.ends.iter().all(Option::is_some) {
            let now = Instant::now();
            inner.last = now;
            inner.paired = Some(now);
            inner.active = Some(GaugeGuard::new(self.metrics.clone(), |m| &m.relays_active));
            Metrics::bump(&self.metrics.relays_total);
            alloc.phase.send_replace(Phase::Paired);
        }
        Some(rx)
    }

    /// Ends the relay of `alloc` for both sides (idempotent).
    fn end(&self, alloc: &Arc<Alloc>) {
        alloc.phase.send_replace(Phase::Ended);
        forget(&mut lock(&self.state), alloc);
        let mut inner = lock(&alloc.inner);
        inner.ends = [None, None];
        inner.active = None;
    }

    /// Resolves when the relay has been idle or has lasted too long.
    async fn watch(&self, alloc: &Alloc) {
        loop {
            tokio::time::sleep(WATCH_TICK.min(self.limits.idle_timeout)).await;
            let now = Instant::now();
            let inner = lock(&alloc.inner);
            let idle = now.saturating_duration_since(inner.last) >= self.limits.idle_timeout;
            let old = inner
                .paired
                .is_some_and(|p| now.saturating_duration_since(p) >= self.limits.max_duration);
            if idle || old {
                tracing::debug!(pairing = alloc.pairing, idle, old, "relay limit reached");
                return;
            }
        }
    }

    /// Reads relay records from a side on TCP and forwards them.
    async fn records_in(&self, alloc: &Arc<Alloc>, side: u8, mut reader: Reader) {
        let mut buf = vec![0u8; MAX_RECORD];
        loop {
            let mut header = [0u8; 4];
            if reader.read_exact(&mut header).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes(header) as usize;
            if !(2..=MAX_RECORD).contains(&len) || reader.read_exact(&mut buf[..len]).await.is_err()
            {
                return;
            }
            let stride = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
            let source = {
                let inner = lock(&alloc.inner);
                match &inner.ends[usize::from(side)] {
                    Some(end) => end.source(),
                    None => return,
                }
            };
            if len == 2 {
                lock(&alloc.inner).last = Instant::now();
                continue;
            }
            if stride == 0 {
                return;
            }
            self.forward(alloc, side, source, Packets::Bare { buf: &mut buf[2..len], stride });
        }
    }

    /// Forwards packets from `side` to the other side of `alloc`, within the limits.
    fn forward(&self, alloc: &Alloc, side: u8, source: IpAddr, packets: Packets<'_>) {
        let (from, to) = (usize::from(side), usize::from(1 - side.min(1)));
        let (payload, count) = match &packets {
            Packets::Datagrams { buf, stride } => {
                let count = buf.len().div_ceil((*stride).max(1));
                (buf.len().saturating_sub(count * DATAGRAM_HEADER), count)
            }
            Packets::Bare { buf, stride } => (buf.len(), buf.len().div_ceil((*stride).max(1))),
        };
        let now = Instant::now();
        let mut inner = lock(&alloc.inner);
        inner.last = now;
        if payload == 0 {
            return; // keep-alives
        }
        let allowed = {
            let mut fair = lock(&self.fair);
            fair.allow(source, payload as u64, inner.sessions[from].as_mut(), now)
        };
        if !allowed {
            drop(inner);
            self.dropped(count as u64);
            return;
        }
        let offset = inner.relayed[from];
        inner.relayed[from] += payload as u64;
        let dest = match &inner.ends[to] {
            Some(End::Datagrams { addr, .. }) => Dest::Datagrams(*addr),
            Some(End::Stream { tx, .. }) => Dest::Stream(tx.clone()),
            None => Dest::Nowhere,
        };
        drop(inner);
        let ticket = alloc.tickets[to];
        let sent = match (dest, packets) {
            (Dest::Nowhere, _) => false,
            (Dest::Datagrams(addr), Packets::Datagrams { buf, stride }) => {
                let mut at = offset;
                for segment in buf.chunks_mut(stride.max(1)) {
                    put_datagram_header(segment, ticket);
                    at += self.tap(side, at, &mut segment[DATAGRAM_HEADER..]);
                }
                self.send_datagrams(addr, buf, stride)
            }
            (Dest::Datagrams(addr), Packets::Bare { buf, stride }) => {
                let wide = stride + DATAGRAM_HEADER;
                let mut out = vec![0u8; buf.len() + count * DATAGRAM_HEADER];
                let mut at = offset;
                for (packet, segment) in buf.chunks_mut(stride).zip(out.chunks_mut(wide)) {
                    at += self.tap(side, at, packet);
                    put_datagram_header(segment, ticket);
                    segment[DATAGRAM_HEADER..DATAGRAM_HEADER + packet.len()]
                        .copy_from_slice(packet);
                }
                self.send_datagrams(addr, &out, wide)
            }
            (Dest::Stream(tx), Packets::Datagrams { buf, stride }) => {
                let narrow = stride.saturating_sub(DATAGRAM_HEADER);
                let mut record = Vec::with_capacity(6 + payload);
                record.extend_from_slice(&((payload + 2) as u32).to_be_bytes());
                record.extend_from_slice(&(narrow as u16).to_be_bytes());
                let mut at = offset;
                for segment in buf.chunks_mut(stride.max(1)) {
                    at += self.tap(side, at, &mut segment[DATAGRAM_HEADER..]);
                    record.extend_from_slice(&segment[DATAGRAM_HEADER..]);
                }
                tx.try_send(record).is_ok()
            }
            (Dest::Stream(tx), Packets::Bare { buf, stride }) => {
                let mut record = Vec::with_capacity(6 + payload);
                record.extend_from_slice(&((payload + 2) as u32).to_be_bytes());
                record.extend_from_slice(&(stride as u16).to_be_bytes());
                let mut at = offset;
                for packet in buf.chunks_mut(stride) {
                    at += self.tap(side, at, packet);
                    record.extend_from_slice(packet);
                }
                tx.try_send(record).is_ok()
            }
        };
        if sent {
            self.metrics.relay_bytes_total.fetch_add(payload as u64, Ordering::Relaxed);
        } else {
            self.dropped(count as u64);
        }
    }

    /// Passes a packet through the tap, if there is one; returns its length.
    fn tap(&self, side: u8, offset: u64, packet: &mut [u8]) -> u64 {
        if let Some(tap) = &self.tap {
            (tap.0)(side, offset, packet);
        }
        packet.len() as u64
    }

    /// Sends datagrams of `stride` bytes (the last may be shorter) to `to`, as one batch when
    /// the socket can; false if the socket had no room (they are dropped, like on a full link).
    fn send_datagrams(&self, to: SocketAddr, buf: &[u8], stride: usize) -> bool {
        let Some(socket) = &self.socket else { return false };
        let stride = stride.max(1);
        let per_batch = socket.max_transmit_segments().max(1) * stride;
        for batch in buf.chunks(per_batch) {
            let segment_size = (batch.len() > stride).then_some(stride);
            let transmit = Transmit {
                destination: to,
                ecn: None,
                contents: batch,
                segment_size,
                src_ip: None,
            };
            if let Err(e) = socket.try_send(&transmit) {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    tracing::debug!(error = %e, %to, "relay send failed");
                }
                return false;
            }
        }
        true
    }

    fn dropped(&self, packets: u64) {
        self.metrics.relay_dropped_total.fetch_add(packets, Ordering::Relaxed);
    }

    async fn refuse(&self, writer: &mut Writer, code: ErrorCode, message: &str) {
        Metrics::bump(&self.metrics.relays_refused_total);
        let frame = wire::encode(&NodeMsg::Error { code, message: message.to_owned() });
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = writer.write_all(&frame).await;
            let _ = writer.shutdown().await;
        })
        .await;
    }
}

/// Where a packet run goes.
enum Dest {
    Datagrams(SocketAddr),
    Stream(mpsc::Sender<Vec<u8>>),
    Nowhere,
}

/// Removes `alloc`'s tickets and pairing from `state` (if they are still its own).
fn forget(state: &mut State, alloc: &Arc<Alloc>) {
    for t in alloc.tickets {
        if state.tickets.get(&t).is_some_and(|(a, _)| Arc::ptr_eq(a, alloc)) {
            state.tickets.remove(&t);
        }
    }
    if state.pairings.get(&alloc.pairing).is_some_and(|a| Arc::ptr_eq(a, alloc)) {
        state.pairings.remove(&alloc.pairing);
    }
}

/// Writes the records queued for a side on TCP.
async fn records_out(mut rx: mpsc::Receiver<Vec<u8>>, writer: &mut Writer) {
    while let Some(record) = rx.recv().await {
        if writer.write_all(&record).await.is_err() {
            return;
        }
        if rx.is_empty() && writer.flush().await.is_err() {
            return;
        }
    }
}

/// Reads (and ignores) until the stream ends.
async fn drain(mut reader: Reader) {
    let mut sink = [0u8; 64];
    while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// Two addresses of the same host and port, however a dual-stack socket spelled them.
fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reads the first frame of a stream (bounded by `timeout` and [`wire::MAX_FRAME`]).
pub(crate) async fn read_first(
    reader: &mut Reader,
    timeout: Duration,
) -> Option<crate::wire::ClientMsg> {
    tokio::time::timeout(timeout, async {
        let mut header = [0u8; wire::HEADER_LEN];
        reader.read_exact(&mut header).await.ok()?;
        let len = wire::frame_len(header).ok()?;
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).await.ok()?;
        wire::decode_client(&body).ok()
    })
    .await
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests;
