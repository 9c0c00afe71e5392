//! LAN discovery: with no rendezvous node configured, the receiver learns the sender's QUIC
//! address from the public nameplate by UDP multicast (DESIGN.md §4 step 2, LAN mode).
//!
//! The datagrams are [`DiscoveryMsg`]s (byte layout in [`crate::wire::discovery`]). They carry
//! the nameplate, random identifiers and a port, nothing secret: the PAKE that runs next over
//! QUIC is what authenticates the peer, so a forged answer can cost a retry, never data.
//!
//! # Flow
//!
//! 1. **Sender** ([`Announcer::start`]): binds UDP `0.0.0.0:<port>` (default [`DEFAULT_PORT`])
//!    with `SO_REUSEADDR` + `SO_REUSEPORT`, so several senders (and receivers) on one host
//!    share the port, and joins the group ([`GROUP_V4`]) on every IPv4 interface, loopback
//!    included. Linux's `lo` lacks the `MULTICAST` flag, yet membership and sends pinned to
//!    127.0.0.1 work, which is what lets two processes on a loopback-only host meet.
//! 2. The sender multicasts an unsolicited `Announce { query_id: 0 }` through every interface
//!    (`IP_MULTICAST_IF` per send, TTL 1, loopback on) every
//!    [`DiscoveryConfig::announce_interval`], until the [`Announcer`] is dropped. It re-reads
//!    the interface list every few seconds so a network that comes up later is served too.
//! 3. **Receiver** ([`find`]): binds an ephemeral socket (for unicast answers) and, like the
//!    sender, a shared socket on the group port (for unsolicited announces). Through the
//!    ephemeral socket it multicasts `Query { nameplate, query_id }` on every interface, first
//!    at once, then every 200 ms, backing off to 1 s.
//! 4. The sender answers a `Query` for its nameplate with an `Announce` carrying the query's id,
//!    by unicast to the query's source (rate-limited) and by multicast (at most every 100 ms)
//!    so that a receiver whose unicast path is filtered still hears it.
//! 5. The receiver takes the announce's **source IP** with the **announced port** as the
//!    sender's address. After the first matching announce it keeps listening for a grace
//!    period (four times as long as that announce took to answer the receiver's last query,
//!    [`MIN_GRACE`] to [`GRACE`]: other answers to the same query take about as long). An
//!    unsolicited announce or a late answer gets the full [`GRACE`] and makes the receiver
//!    query again at once; the answer to that query shortens the grace as above. It collects
//!    the sender's other addresses (one per interface the
//!    datagrams crossed, at most [`MAX_ADDRS`]) and to notice a second sender *instance* on
//!    the same nameplate, which is an [`DiscoveryError::Ambiguous`] error: picking one would
//!    be a coin toss, and a new code fixes it.
//! 6. Once the sender serves a receiver ([`Announcer::set_busy`]) it announces nothing
//!    unasked and answers queries with `Busy`: a second receiver fails at once with
//!    [`DiscoveryError::Busy`] instead of timing out.
//! 7. No answer within the timeout is [`DiscoveryError::NotFound`]. Malformed datagrams,
//!    queries and other nameplates are ignored (logged at debug level).
//!
//! Discovery keeps to the link ([`crate::net::link`]): the sender answers only queries sent
//! to the group (their destination address is read with `IP_PKTINFO`, through `quinn-udp`)
//! from a source on one of its subnets, every datagram leaves with TTL 1 (unicast included),
//! and the receiver ignores announces from sources off its subnets.
//!
//! The decisions (what to answer, when to stop, which addresses) live in two small sans-IO
//! state machines, `Responder` and `Collector`; the async code around them only moves bytes.
//! IPv6 is not used: every host that can run the QUIC transfer has IPv4 loopback, and LAN
//! peers have link IPv4 in practice.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant, MissedTickBehavior};
use tracing::{debug, trace, warn};

use super::link::LiveLinks;
use crate::error::ErrorKind;
use crate::wire::discovery::{DiscoveryMsg, MAX_DATAGRAM};

/// The announcer's states: serving nobody yet, serving the one receiver of the code, serving
/// one receiver of several (`send --count`).
const FREE: u8 = 0;
const BUSY: u8 = 1;
const BUSY_AGAIN: u8 = 2;

/// UDP port discovery runs on unless configured otherwise.
pub const DEFAULT_PORT: u16 = 41641;
/// Administratively scoped (RFC 2365) IPv4 group discovery datagrams go to.
pub const GROUP_V4: Ipv4Addr = Ipv4Addr::new(239, 255, 41, 41);
/// Environment variable that overrides [`DEFAULT_PORT`] in [`DiscoveryConfig::default`].
pub const PORT_ENV: &str = "P2P_COPY_DISCOVERY_PORT";
/// How long [`find`] keeps listening after the first matching answer, at most: four times
/// that answer's delay after the query it answers (when that is the last query), within
/// [`MIN_GRACE`] and this; this long after any other announce.
pub const GRACE: Duration = Duration::from_millis(300);
/// How long [`find`] keeps listening after the first matching answer, at least.
pub const MIN_GRACE: Duration = Duration::from_millis(50);
/// At most this many addresses are collected for one sender.
pub const MAX_ADDRS: usize = 16;

/// First query retry interval of [`find`]; it grows by a quarter each round up to the cap.
const QUERY_INTERVAL_START: Duration = Duration::from_millis(200);
const QUERY_INTERVAL_MAX: Duration = Duration::from_secs(1);
/// Minimum spacing of multicast answers to queries (each one costs a send per interface).
const MULTICAST_REPLY_SPACING: Duration = Duration::from_millis(100);
/// Unicast answers allowed per [`UNICAST_REPLY_WINDOW`].
const UNICAST_REPLIES_PER_WINDOW: u32 = 50;
const UNICAST_REPLY_WINDOW: Duration = Duration::from_secs(1);
/// The announcer re-reads the interface list every this many announce ticks.
const REFRESH_INTERFACES_EVERY: u32 = 10;
/// Interfaces beyond this many are ignored (bounds the sends per announce).
const MAX_INTERFACES: usize = 64;
/// One more than the largest valid datagram, so oversized input is seen as such.
const RECV_BUF: usize = MAX_DATAGRAM + 1;

/// Where discovery runs; tests override the port so parallel tests do not see each other.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// UDP port shared by all senders and receivers on the network.
    pub port: u16,
    /// IPv4 multicast group.
    pub group: Ipv4Addr,
    /// Period of the sender's unsolicited announces.
    pub announce_interval: Duration,
}

impl Default for DiscoveryConfig {
    /// Port from `P2P_COPY_DISCOVERY_PORT` if set and valid, else [`DEFAULT_PORT`];
    /// group [`GROUP_V4`]; announces every 500 ms.
    fn default() -> Self {
        DiscoveryConfig {
            port: port_from_env(std::env::var(PORT_ENV).ok().as_deref()),
            group: GROUP_V4,
            announce_interval: Duration::from_millis(500),
        }
    }
}

/// The port named by the environment variable's value, or [`DEFAULT_PORT`].
fn port_from_env(value: Option<&str>) -> u16 {
    let Some(value) = value else {
        return DEFAULT_PORT;
    };
    match value.trim().parse::<u16>() {
        Ok(port) if port != 0 => port,
        _ => {
            warn!(
                value,
                default = DEFAULT_PORT,
                "ignoring invalid {PORT_ENV} (want a port 1-65535)"
            );
            DEFAULT_PORT
        }
    }
}

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// A socket could not be bound, configured or used; `context` says which and what for.
    #[error("{context}")]
    Io {
        /// What was being done, in words a user can act on.
        context: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Nobody answered for the nameplate.
    #[error(
        "no sender for nameplate {nameplate} answered on the local network within {waited:?}; \
         check that the sender is running, on the same network, and that UDP port {port} is \
         not blocked (a sender that uses a rendezvous node needs the same --rendezvous here)"
    )]
    NotFound {
        /// The nameplate looked for.
        nameplate: u32,
        /// How long [`find`] waited.
        waited: Duration,
        /// The discovery port used.
        port: u16,
    },
    /// Two different senders answered for the nameplate.
    #[error(
        "two different senders on the local network use nameplate {nameplate}; ask the sender \
         to start again so it gets a new code"
    )]
    Ambiguous {
        /// The nameplate both senders offer.
        nameplate: u32,
    },
    /// The sender answered that it already serves a receiver.
    #[error(
        "the sender with nameplate {nameplate} is already serving another receiver (one at a \
         time); if it serves several (send --count), try again once it is done, else ask the \
         sender for a new code"
    )]
    Busy {
        /// The nameplate taken.
        nameplate: u32,
    },
    /// The sender serves receivers one after another (`send --count`) and was still busy.
    #[error(
        "the sender with nameplate {nameplate} serves receivers one after another and was still \
         serving another after {waited:?}; try again, or with a longer --wait"
    )]
    StillBusy {
        /// The nameplate.
        nameplate: u32,
        /// How long [`find`] waited.
        waited: Duration,
    },
}

impl DiscoveryError {
    /// Discovery failures are all network trouble as far as exit codes go.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Network
    }

    fn io(context: impl Into<String>, source: io::Error) -> Self {
        DiscoveryError::Io { context: context.into(), source }
    }
}

/// A sender found on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The sender's random instance id.
    pub instance: u64,
    /// Source IP(s) its announces came from, with the announced port; in order of arrival,
    /// deduplicated, at most [`MAX_ADDRS`].
    pub addrs: Vec<SocketAddr>,
}

/// Sender side: answers queries for the nameplate and announces it periodically until
/// dropped. Dropping it aborts the background task, which closes the socket.
#[derive(Debug)]
pub struct Announcer {
    instance: u64,
    task: JoinHandle<()>,
    /// Set once the sender serves a receiver: queries are then answered with `Busy`
    /// ([`FREE`], [`BUSY`], [`BUSY_AGAIN`]).
    busy: Arc<AtomicU8>,
}

impl Announcer {
    /// Binds the discovery port, joins the group on every interface and starts announcing
    /// that `nameplate` is served by a QUIC endpoint on `quic_port`.
    ///
    /// Fails if the port cannot be bound or the group joined on no interface at all.
    pub async fn start(
        config: &DiscoveryConfig,
        nameplate: u32,
        quic_port: u16,
    ) -> Result<Announcer, DiscoveryError> {
        let socket = bind_group_socket(config.port)?;
        let mut interfaces = Interfaces::default();
        interfaces
            .refresh(&socket, config.group)
            .map_err(|e| DiscoveryError::io("listing network interfaces for discovery", e))?;
        if interfaces.joined == 0 {
            return Err(DiscoveryError::io(
                format!(
                    "could not join multicast group {} on any network interface \
                     (not even loopback); LAN discovery cannot work on this host",
                    config.group
                ),
                io::Error::new(io::ErrorKind::AddrNotAvailable, "no interface joined"),
            ));
        }
        let instance = loop {
            // Non-zero, so it never looks like the unset `query_id` 0 in logs.
            let id = rand::random::<u64>();
            if id != 0 {
                break id;
            }
        };
        let responder = Responder::new(nameplate, instance, quic_port, Instant::now());
        debug!(
            nameplate,
            instance = format_args!("{instance:016x}"),
            quic_port,
            discovery_port = config.port,
            interfaces = ?interfaces.addrs,
            "announcing on the local network"
        );
        let busy = Arc::new(AtomicU8::new(FREE));
        let task = tokio::spawn(run_announcer(
            socket,
            interfaces,
            config.clone(),
            responder,
            busy.clone(),
        ));
        Ok(Announcer { instance, task, busy })
    }

    /// This sender's random instance id, as seen in [`Found::instance`].
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// The sender now serves a receiver: from now on queries for the nameplate are answered
    /// with `Busy` (a second receiver learns that the code is taken instead of waiting in
    /// vain), and nothing is announced unasked.
    /// With `again`, the sender serves another receiver after this one (`send --count`), and
    /// a receiver that comes now waits for it.
    pub fn set_busy(&self, again: bool) {
        self.busy.store(if again { BUSY_AGAIN } else { BUSY }, Ordering::Relaxed);
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The announcer's loop: periodic announces, answers to queries.
async fn run_announcer(
    socket: UdpSocket,
    mut interfaces: Interfaces,
    config: DiscoveryConfig,
    mut responder: Responder,
    busy: Arc<AtomicU8>,
) {
    let group = SocketAddrV4::new(config.group, config.port);
    let mut ticker = tokio::time::interval(config.announce_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    let mut buf = [0u8; RECV_BUF];
    let (state, mut links) = match (
        quinn_udp::UdpSocketState::new((&socket).into()),
        LiveLinks::new(),
    ) {
        (Ok(state), Ok(links)) => (state, links),
        (Err(e), _) | (_, Err(e)) => {
            // Without the destination address or the interface list no query can be told to
            // come from the link: announce only (receivers on the link hear the multicast).
            warn!(error = %e, "cannot check where discovery queries come from; only announcing");
            loop {
                ticker.tick().await;
                if busy.load(Ordering::Relaxed) == FREE {
                    let bytes = responder.announce(0).encode();
                    send_multicast(&socket, &interfaces.addrs, group, &bytes).await;
                }
            }
        }
    };
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                ticks = ticks.wrapping_add(1);
                if ticks % REFRESH_INTERFACES_EVERY == 0 {
                    if let Err(e) = interfaces.refresh(&socket, config.group) {
                        debug!(error = %e, "could not re-read the network interfaces");
                    }
                }
                if busy.load(Ordering::Relaxed) != FREE {
                    continue;
                }
                let bytes = responder.announce(0).encode();
                send_multicast(&socket, &interfaces.addrs, group, &bytes).await;
            }
            received = recv_with_dst(&socket, &state, &mut buf) => match received {
                Ok(got) => {
                    for datagram in buf[..got.len].chunks(got.stride.max(1)) {
                        if !from_the_link(got.dst, config.group, || links.contains(got.from.ip())) {
                            trace!(from = %got.from, dst = ?got.dst, "ignoring a datagram from beyond the link");
                            break;
                        }
                        responder.busy = match busy.load(Ordering::Relaxed) {
                            FREE => None,
                            state => Some(state == BUSY_AGAIN),
                        };
                        let Some(answer) = responder.handle(Instant::now(), got.from, datagram)
                        else {
                            continue;
                        };
                        let bytes = answer.msg.encode();
                        if let Some(to) = answer.unicast_to {
                            if let Err(e) = socket.send_to(&bytes, to).await {
                                debug!(%to, error = %e, "could not answer a discovery query");
                            }
                        }
                        if answer.multicast {
                            send_multicast(&socket, &interfaces.addrs, group, &bytes).await;
                        }
                    }
                }
                Err(e) if is_transient(&e) => trace!(error = %e, "discovery receive"),
                Err(e) => {
                    warn!(error = %e, "discovery socket receive failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Receiver side: queries every interface repeatedly until an announce for `nameplate`
/// arrives or `timeout` elapses, then listens [`GRACE`] longer to collect more addresses of
/// that sender and to detect a second sender on the same nameplate.
///
/// Returns within `timeout` + [`GRACE`]; `timeout` bounds the wait for the first answer.
pub async fn find(
    config: &DiscoveryConfig,
    nameplate: u32,
    timeout: Duration,
) -> Result<Found, DiscoveryError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let group = SocketAddrV4::new(config.group, config.port);

    let querier = bind_query_socket()?;
    // Unsolicited announces are a second chance, not a requirement: if the shared port is
    // taken by something that does not allow sharing, unicast answers still work.
    let listener = match bind_group_socket(config.port) {
        Ok(socket) => {
            let mut interfaces = Interfaces::default();
            match interfaces.refresh(&socket, config.group) {
                Ok(()) if interfaces.joined > 0 => Some(socket),
                Ok(()) => {
                    debug!("joined the discovery group nowhere; relying on unicast answers");
                    None
                }
                Err(e) => {
                    debug!(error = %e, "could not list interfaces for the discovery listener");
                    None
                }
            }
        }
        Err(e) => {
            debug!(error = %e, "no listener on the discovery port; relying on unicast answers");
            None
        }
    };
    let interfaces = ipv4_interfaces()
        .map_err(|e| DiscoveryError::io("listing network interfaces for discovery", e))?;
    let targets: Vec<Ipv4Addr> = interfaces.into_iter().map(|(_, ip)| ip).collect();

    let mut links = LiveLinks::new()
        .map_err(|e| DiscoveryError::io("listing network interfaces for discovery", e))?;
    let mut collector = Collector::new(nameplate);
    let mut query_interval = QUERY_INTERVAL_START;
    let mut next_query = started;
    let mut first_round = true;
    let mut query_buf = [0u8; RECV_BUF];
    let mut listen_buf = [0u8; RECV_BUF];
    loop {
        let stop_at = collector.poll_timeout().unwrap_or(deadline);
        let listen = async {
            match &listener {
                Some(socket) => socket.recv_from(&mut listen_buf).await,
                None => std::future::pending().await,
            }
        };
        let received = tokio::select! {
            _ = sleep_until(stop_at) => break,
            _ = sleep_until(next_query) => {
                // A fresh id per query: an answer names the query it answers, which tells
                // how long answers take (see `Collector::handle`).
                let query_id = rand::random::<u64>() | 1;
                let query = DiscoveryMsg::Query { nameplate, query_id }.encode();
                let sent = send_multicast(&querier, &targets, group, &query).await;
                if sent == 0 && first_round {
                    return Err(DiscoveryError::io(
                        format!(
                            "could not send a discovery query to {group} on any network \
                             interface; check that this host has a working network (or at \
                             least loopback)"
                        ),
                        io::Error::new(io::ErrorKind::NetworkUnreachable, "no interface sent"),
                    ));
                }
                first_round = false;
                collector.queried(query_id, Instant::now());
                next_query = Instant::now() + query_interval;
                query_interval = (query_interval * 5 / 4).min(QUERY_INTERVAL_MAX);
                continue;
            }
            r = querier.recv_from(&mut query_buf) => r.map(|(len, from)| (from, &query_buf[..len])),
            r = listen => r.map(|(len, from)| (from, &listen_buf[..len])),
        };
        match received {
            Ok((from, _)) if !links.contains(from.ip()) => {
                debug!(%from, "ignoring an announce from beyond the link");
            }
            Ok((from, bytes)) => {
                if collector.handle(Instant::now(), from, bytes).is_err() {
                    return Err(DiscoveryError::Ambiguous { nameplate });
                }
                if collector.take_requery() {
                    next_query = Instant::now();
                }
            }
            Err(e) if is_transient(&e) => trace!(error = %e, "discovery receive"),
            Err(e) => return Err(DiscoveryError::io("receiving discovery answers failed", e)),
        }
    }
    if collector.only_busy() {
        return Err(DiscoveryError::Busy { nameplate });
    }
    if collector.busy_again() {
        return Err(DiscoveryError::StillBusy { nameplate, waited: timeout });
    }
    collector.finish().ok_or(DiscoveryError::NotFound {
        nameplate,
        waited: timeout,
        port: config.port,
    })
}

/// What the announcer sends in answer to one datagram.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    msg: DiscoveryMsg,
    unicast_to: Option<SocketAddr>,
    multicast: bool,
}

/// Sans-IO sender logic: which datagrams deserve an answer, with rate limits so a flood of
/// queries cannot turn the sender into an amplifier.
#[derive(Debug)]
struct Responder {
    nameplate: u32,
    instance: u64,
    port: u16,
    window_start: Instant,
    unicast_in_window: u32,
    last_multicast: Option<Instant>,
    /// Serving a receiver already (and whether another comes after): answers say `Busy`.
    busy: Option<bool>,
}

impl Responder {
    fn new(nameplate: u32, instance: u64, port: u16, now: Instant) -> Self {
        Responder {
            nameplate,
            instance,
            port,
            window_start: now,
            unicast_in_window: 0,
            last_multicast: None,
            busy: None,
        }
    }

    fn announce(&self, query_id: u64) -> DiscoveryMsg {
        let (nameplate, instance) = (self.nameplate, self.instance);
        if let Some(again) = self.busy {
            return DiscoveryMsg::Busy { nameplate, instance, query_id, again };
        }
        DiscoveryMsg::Announce { nameplate, instance, port: self.port, query_id }
    }

    fn handle(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> Option<Answer> {
        let query_id = match DiscoveryMsg::decode(bytes) {
            Ok(DiscoveryMsg::Query { nameplate, query_id }) if nameplate == self.nameplate => {
                query_id
            }
            Ok(DiscoveryMsg::Query { nameplate, .. }) => {
                trace!(%from, nameplate, "query for another nameplate");
                return None;
            }
            Ok(DiscoveryMsg::Announce { nameplate, instance, .. }) => {
                if nameplate == self.nameplate && instance != self.instance {
                    debug!(%from, nameplate, "another sender announces the same nameplate");
                }
                return None;
            }
            Ok(DiscoveryMsg::Busy { .. }) => return None,
            Err(e) => {
                debug!(%from, len = bytes.len(), error = %e, "ignoring malformed datagram");
                return None;
            }
        };
        if now.saturating_duration_since(self.window_start) >= UNICAST_REPLY_WINDOW {
            self.window_start = now;
            self.unicast_in_window = 0;
        }
        let unicast_to = (self.unicast_in_window < UNICAST_REPLIES_PER_WINDOW).then(|| {
            self.unicast_in_window += 1;
            from
        });
        let multicast = self
            .last_multicast
            .is_none_or(|last| now.saturating_duration_since(last) >= MULTICAST_REPLY_SPACING);
        if multicast {
            self.last_multicast = Some(now);
        }
        if unicast_to.is_none() && !multicast {
            debug!(%from, "discovery answers rate-limited");
            return None;
        }
        trace!(%from, query_id, multicast, "answering discovery query");
        Some(Answer { msg: self.announce(query_id), unicast_to, multicast })
    }
}

/// Two different instances answered for the nameplate.
#[derive(Debug, PartialEq, Eq)]
struct Ambiguous;

/// Sans-IO receiver logic: collects the addresses of the first sender that answers and
/// notices a second one.
#[derive(Debug)]
struct Collector {
    nameplate: u32,
    found: Option<(Found, Instant)>,
    /// The last query's id and when it went out.
    queried: Option<(u64, Instant)>,
    /// The sender was first heard other than in answer to the last query: a fresh query now
    /// tells how long its answers take, and so how short the grace can be.
    requery: bool,
    /// A sender answered that it is busy, and until when to wait for one that is not.
    busy: Option<Instant>,
    /// A sender answered that it is busy but serves again after: wait for it to the end.
    busy_again: bool,
}

impl Collector {
    fn new(nameplate: u32) -> Self {
        Collector {
            nameplate,
            found: None,
            queried: None,
            requery: false,
            busy: None,
            busy_again: false,
        }
    }

    /// Query `id` went out at `now`.
    fn queried(&mut self, id: u64, now: Instant) {
        self.queried = Some((id, now));
    }

    /// Feeds one received datagram.
    fn handle(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> Result<(), Ambiguous> {
        let (instance, port, answers) = match DiscoveryMsg::decode(bytes) {
            Ok(DiscoveryMsg::Announce { nameplate, instance, port, query_id })
                if nameplate == self.nameplate && port != 0 =>
            {
                (instance, port, query_id)
            }
            Ok(DiscoveryMsg::Announce { nameplate, .. }) => {
                debug!(%from, nameplate, "ignoring announce for another nameplate (or port 0)");
                return Ok(());
            }
            Ok(DiscoveryMsg::Busy { nameplate, again: true, .. })
                if nameplate == self.nameplate =>
            {
                debug!(%from, "the sender is busy, and serves again after");
                self.busy_again = true;
                return Ok(());
            }
            Ok(DiscoveryMsg::Busy { nameplate, query_id, .. }) if nameplate == self.nameplate => {
                if self.busy.is_none() {
                    debug!(%from, "the sender is busy with another receiver");
                    let grace = self.grace(now, query_id);
                    self.requery = grace.is_none();
                    self.busy = Some(now + grace.unwrap_or(GRACE));
                }
                return Ok(());
            }
            Ok(DiscoveryMsg::Query { .. } | DiscoveryMsg::Busy { .. }) => return Ok(()),
            Err(e) => {
                debug!(%from, len = bytes.len(), error = %e, "ignoring malformed datagram");
                return Ok(());
            }
        };
        let addr = SocketAddr::new(from.ip(), port);
        let grace = self.grace(now, answers);
        match &mut self.found {
            None => {
                debug!(%addr, instance = format_args!("{instance:016x}"), "sender found");
                let found = Found { instance, addrs: vec![addr] };
                // Only an answer to the last query tells how long answers take; anything
                // else (an unsolicited announce, a late answer) gets the full grace, and a
                // fresh query that may shorten it.
                self.requery = grace.is_none();
                self.found = Some((found, now + grace.unwrap_or(GRACE)));
            }
            Some((found, _)) if found.instance != instance => {
                debug!(%addr, "a second sender answers for the same nameplate");
                return Err(Ambiguous);
            }
            Some((found, until)) => {
                if let Some(grace) = grace {
                    *until = (*until).min(now + grace);
                }
                if !found.addrs.contains(&addr) && found.addrs.len() < MAX_ADDRS {
                    debug!(%addr, "another address of the sender");
                    found.addrs.push(addr);
                }
            }
        }
        Ok(())
    }

    /// The grace period an answer to query `answers` arriving at `now` earns: four times its
    /// delay, within [`MIN_GRACE`] and [`GRACE`]; `None` unless it answers the last query.
    fn grace(&self, now: Instant, answers: u64) -> Option<Duration> {
        match self.queried {
            Some((id, at)) if id == answers => {
                Some((now.saturating_duration_since(at) * 4).clamp(MIN_GRACE, GRACE))
            }
            _ => None,
        }
    }

    /// True once after the sender was first heard other than in answer to the last query:
    /// the caller should send a fresh query now.
    fn take_requery(&mut self) -> bool {
        std::mem::take(&mut self.requery)
    }

    /// When the grace period after the first answer ends, if one arrived.
    fn poll_timeout(&self) -> Option<Instant> {
        self.found.as_ref().map(|(_, until)| *until).or(self.busy)
    }

    /// Whether only a busy sender answered.
    fn only_busy(&self) -> bool {
        self.found.is_none() && self.busy.is_some()
    }

    /// Whether only a sender that serves again after answered (so far).
    fn busy_again(&self) -> bool {
        self.found.is_none() && self.busy_again
    }

    fn finish(self) -> Option<Found> {
        self.found.map(|(found, _)| found)
    }
}

/// The IPv4 interfaces this host's discovery sockets use, and how many joined the group.
#[derive(Debug, Default)]
struct Interfaces {
    /// One address per interface; multicast sends go out through each.
    addrs: Vec<Ipv4Addr>,
    /// Interfaces (by name) the group was joined on; joins are not repeated.
    joined_names: BTreeMap<String, Ipv4Addr>,
    joined: usize,
}

impl Interfaces {
    /// Re-reads the interface list and joins the group on interfaces not joined yet. A join
    /// that fails is logged and skipped: an interface without multicast must not stop the
    /// others from working.
    fn refresh(&mut self, socket: &UdpSocket, group: Ipv4Addr) -> io::Result<()> {
        let current = ipv4_interfaces()?;
        for (name, ip) in &current {
            if self.joined_names.get(name) == Some(ip) {
                continue;
            }
            match socket.join_multicast_v4(group, *ip) {
                Ok(()) => {
                    trace!(interface = %name, %ip, %group, "joined discovery group");
                    self.joined_names.insert(name.clone(), *ip);
                }
                Err(e) => {
                    debug!(interface = %name, %ip, %group, error = %e, "could not join group");
                }
            }
        }
        self.addrs = current.into_iter().map(|(_, ip)| ip).collect();
        self.joined = self.joined_names.len();
        Ok(())
    }
}

/// Every IPv4 interface (loopback included), one address each, at most [`MAX_INTERFACES`].
fn ipv4_interfaces() -> io::Result<Vec<(String, Ipv4Addr)>> {
    let mut out: Vec<(String, Ipv4Addr)> = Vec::new();
    for interface in if_addrs::get_if_addrs()? {
        let IpAddr::V4(ip) = interface.ip() else {
            continue;
        };
        if out.len() < MAX_INTERFACES && !out.iter().any(|(name, _)| *name == interface.name) {
            out.push((interface.name, ip));
        }
    }
    Ok(out)
}

/// The socket on the shared discovery port: `0.0.0.0:port`, shared with other senders and
/// receivers on this host, multicast TTL 1 with loopback.
fn bind_group_socket(port: u16) -> Result<UdpSocket, DiscoveryError> {
    let context = || {
        format!(
            "could not bind UDP port {port} for LAN discovery; another program may hold it \
             exclusively (set {PORT_ENV} to use another port on both sides)"
        )
    };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| DiscoveryError::io(context(), e))?;
    socket.set_reuse_address(true).map_err(|e| DiscoveryError::io(context(), e))?;
    #[cfg(all(
        unix,
        not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
    ))]
    socket.set_reuse_port(true).map_err(|e| DiscoveryError::io(context(), e))?;
    socket
        .bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())
        .map_err(|e| DiscoveryError::io(context(), e))?;
    into_tokio(socket).map_err(|e| DiscoveryError::io(context(), e))
}

/// The receiver's ephemeral socket: queries go out of it, unicast answers come back to it.
fn bind_query_socket() -> Result<UdpSocket, DiscoveryError> {
    let context = "could not bind a UDP socket for LAN discovery queries";
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| DiscoveryError::io(context, e))?;
    socket
        .bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into())
        .map_err(|e| DiscoveryError::io(context, e))?;
    into_tokio(socket).map_err(|e| DiscoveryError::io(context, e))
}

/// Sets the multicast options every discovery socket shares and hands it to tokio.
fn into_tokio(socket: Socket) -> io::Result<UdpSocket> {
    // Stay on the local link, unicast answers included; let processes on this host (and
    // loopback-only hosts) hear us.
    socket.set_multicast_ttl_v4(1)?;
    socket.set_ttl(1)?;
    socket.set_multicast_loop_v4(true)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// Sends `bytes` to the group once through each interface; returns how many sends worked.
/// Failures are per interface (down, no multicast route) and only logged.
async fn send_multicast(
    socket: &UdpSocket,
    interfaces: &[Ipv4Addr],
    group: SocketAddrV4,
    bytes: &[u8],
) -> usize {
    let mut sent = 0;
    for ip in interfaces {
        // The caller's task is the only user of the socket, so the option set here is
        // still in force for the send that follows.
        if let Err(e) = SockRef::from(socket).set_multicast_if_v4(ip) {
            debug!(interface = %ip, error = %e, "could not select multicast interface");
            continue;
        }
        match socket.send_to(bytes, group).await {
            Ok(_) => sent += 1,
            Err(e) => debug!(interface = %ip, %group, error = %e, "multicast send failed"),
        }
    }
    sent
}

/// Whether a datagram to the group socket is from the link: sent to the group (not by unicast
/// to this host's address, which a host anywhere could do), from an address on one of this
/// host's links. Where the platform does not tell the destination, the source must do.
fn from_the_link(dst: Option<IpAddr>, group: Ipv4Addr, on_link: impl FnOnce() -> bool) -> bool {
    dst.is_none_or(|dst| dst == IpAddr::V4(group)) && on_link()
}

/// One receive on a discovery socket, with the address it was sent to.
struct Received {
    /// Bytes in the buffer: one datagram, or several of `stride` bytes each.
    len: usize,
    stride: usize,
    from: SocketAddr,
    dst: Option<IpAddr>,
}

/// Receives on `socket` with `recvmsg`, learning each datagram's destination address
/// (`IP_PKTINFO`, set up by `state`).
async fn recv_with_dst(
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

/// Errors a UDP receive may report because of an earlier send (ICMP unreachable on some
/// platforms); the socket is still fine.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests;
