//! LAN discovery: with no rendezvous node configured, the receiver learns the sender's QUIC
//! address from the public nameplate by UDP multicast (DESIGN.md §4 step 2, LAN mode).
//!
//! The datagrams are [`DiscoveryMsg`]s (byte layout in [`crate::wire::discovery`]). They carry
//! the nameplate, random identifiers and a port, nothing secret: the PAKE that runs next over
//! QUIC is what authenticates the peer, so a forged answer can cost a retry, never data.
//!
//! Discovery runs over IPv4 and IPv6 side by side, on one port, each family with its own
//! group: [`GROUP_V4`] (administratively scoped) and [`GROUP_V6`] (link-local scope), so two
//! hosts whose link has only IPv6 link-local addresses find each other too. The same
//! datagrams travel on both; an answer goes back on the family its query came on.
//!
//! # Flow
//!
//! 1. **Sender** ([`Announcer::start`]): binds UDP `0.0.0.0:<port>` and `[::]:<port>` (IPv6
//!    only; default port [`DEFAULT_PORT`]) with `SO_REUSEADDR` + `SO_REUSEPORT`, so several
//!    senders (and receivers) on one host share the port, and joins each family's group on
//!    every interface of that family, loopback included: IPv4 by interface address, IPv6 by
//!    interface index. Linux's `lo` lacks the `MULTICAST` flag, yet IPv4 membership and sends
//!    pinned to 127.0.0.1 work, which is what lets two processes on a loopback-only host meet
//!    (IPv6 multicast on `lo` does not work; those sends fail and are only logged). A host
//!    without IPv6 runs IPv4 alone; IPv4 failures are errors, as they always were.
//! 2. For each family the sender multicasts an unsolicited `Announce { query_id: 0 }` through
//!    every interface (`IP_MULTICAST_IF` / `IPV6_MULTICAST_IF` per send, TTL / hop limit 1,
//!    loopback on) every [`DiscoveryConfig::announce_interval`], until the [`Announcer`] is
//!    dropped. It re-reads the interface list every few seconds so a network that comes up
//!    later is served too. Each family has its own task and its own rate limits.
//! 3. **Receiver** ([`find`]): per family, binds an ephemeral socket (for unicast answers)
//!    and, like the sender, a shared socket on the group port (for unsolicited announces).
//!    Through the ephemeral sockets it multicasts `Query { nameplate, query_id }` on every
//!    interface of both families, first at once, then every 200 ms, backing off to 1 s.
//! 4. The sender answers a `Query` for its nameplate with an `Announce` carrying the query's id,
//!    on the query's family: by unicast to the query's source (rate-limited) and by multicast
//!    (at most every 100 ms) so that a receiver whose unicast path is filtered still hears it.
//! 5. The receiver takes the announce's **source IP** with the **announced port** as the
//!    sender's address; an IPv6 link-local source keeps its scope (the index of the interface
//!    it came in on), without which it could not be connected to. After the first matching
//!    announce it keeps listening for a grace
//!    period (four times as long as that announce took to answer the receiver's last query,
//!    [`MIN_GRACE`] to [`GRACE`]: other answers to the same query take about as long). An
//!    unsolicited announce or a late answer gets the full [`GRACE`] and makes the receiver
//!    query again at once; the answer to that query shortens the grace as above. It collects
//!    the sender's other addresses (one per interface and family the datagrams crossed, at
//!    most [`MAX_ADDRS`], IPv4 first so that a host with IPv4 connects as it always did) and
//!    notices a second sender *instance* on
//!    the same nameplate, which is an [`DiscoveryError::Ambiguous`] error: picking one would
//!    be a coin toss, and a new code fixes it.
//! 6. Once the sender serves a receiver ([`Announcer::set_busy`]) it announces nothing
//!    unasked and answers queries with `Busy`: a second receiver fails at once with
//!    [`DiscoveryError::Busy`] instead of timing out.
//! 7. No answer within the timeout is [`DiscoveryError::NotFound`]. Malformed datagrams,
//!    queries and other nameplates are ignored (logged at debug level).
//!
//! Discovery keeps to the link ([`crate::net::link`]): the sender answers only queries sent
//! to its family's group (their destination address is read with `IP_PKTINFO` or
//! `IPV6_PKTINFO`, through `quinn-udp`) from a source on one of its subnets or an IPv6
//! link-local one, every datagram leaves with TTL / hop limit 1 (unicast included), and the
//! receiver ignores announces from sources off its links.
//!
//! The decisions (what to answer, when to stop, which addresses) live in two small sans-IO
//! state machines, `Responder` and `Collector`; the async code around them only moves bytes
//! (its sockets, per family, are in `socket`).

mod collector;
mod responder;
mod socket;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant, MissedTickBehavior};
use tracing::{debug, trace, warn};

use self::collector::Collector;
use self::responder::Responder;
use self::socket::{Family, Interfaces, Unbound, Via};
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
/// IPv6 group discovery datagrams go to: link-local scope (`ff_2`, never routed), with the
/// transient flag set (`ff1_`) because IANA did not assign it (RFC 4291 §2.7), as the IPv4
/// group is taken from the range left to local use; the group id spells the datagrams'
/// magic, `P2PC`.
pub const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff12, 0, 0, 0, 0, 0, 0x5032, 0x5043);
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
/// One more than the largest valid datagram, so oversized input is seen as such.
const RECV_BUF: usize = MAX_DATAGRAM + 1;

/// Where discovery runs; tests override the port so parallel tests do not see each other.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// UDP port shared by all senders and receivers on the network (both families).
    pub port: u16,
    /// IPv4 multicast group.
    pub group_v4: Ipv4Addr,
    /// IPv6 multicast group (link-local scope).
    pub group_v6: Ipv6Addr,
    /// Period of the sender's unsolicited announces.
    pub announce_interval: Duration,
}

impl Default for DiscoveryConfig {
    /// Port from `P2P_COPY_DISCOVERY_PORT` if set and valid, else [`DEFAULT_PORT`];
    /// groups [`GROUP_V4`] and [`GROUP_V6`]; announces every 500 ms.
    fn default() -> Self {
        DiscoveryConfig {
            port: port_from_env(std::env::var(PORT_ENV).ok().as_deref()),
            group_v4: GROUP_V4,
            group_v6: GROUP_V6,
            announce_interval: Duration::from_millis(500),
        }
    }
}

impl DiscoveryConfig {
    /// The group of `family`, with the port.
    fn group(&self, family: Family) -> SocketAddr {
        match family {
            Family::V4 => SocketAddr::from((self.group_v4, self.port)),
            Family::V6 => SocketAddr::from((self.group_v6, self.port)),
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
    /// Source IP(s) its announces came from, with the announced port (an IPv6 link-local one
    /// with the index of the interface it came in on as its scope): IPv4 first, then IPv6,
    /// each in order of arrival; deduplicated, at most [`MAX_ADDRS`].
    pub addrs: Vec<SocketAddr>,
}

/// Sender side: answers queries for the nameplate and announces it periodically until
/// dropped. Dropping it aborts the background tasks (one per address family), which closes
/// the sockets.
#[derive(Debug)]
pub struct Announcer {
    instance: u64,
    tasks: Vec<JoinHandle<()>>,
    /// Set once the sender serves a receiver: queries are then answered with `Busy`
    /// ([`FREE`], [`BUSY`], [`BUSY_AGAIN`]).
    busy: Arc<AtomicU8>,
}

impl Announcer {
    /// Binds the discovery port, joins the groups on every interface and starts announcing
    /// that `nameplate` is served by a QUIC endpoint on `quic_port` (which must take
    /// connections of both families where the host has IPv6).
    ///
    /// Fails if the port cannot be bound for IPv4 or the group joined on no interface at all.
    pub async fn start(
        config: &DiscoveryConfig,
        nameplate: u32,
        quic_port: u16,
    ) -> Result<Announcer, DiscoveryError> {
        let mut groups = Vec::new();
        for family in Family::ALL {
            groups.extend(GroupSocket::open(config, family)?);
        }
        if groups.iter().all(|g| g.interfaces.joined() == 0) {
            return Err(DiscoveryError::io(
                format!(
                    "could not join multicast group {} (or {}) on any network interface \
                     (not even loopback); LAN discovery cannot work on this host",
                    config.group_v4, config.group_v6
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
        let busy = Arc::new(AtomicU8::new(FREE));
        let mut tasks = Vec::new();
        for group in groups {
            debug!(
                nameplate,
                instance = format_args!("{instance:016x}"),
                quic_port,
                group = %group.group,
                interfaces = ?group.interfaces.via,
                "announcing on the local network"
            );
            let responder = Responder::new(nameplate, instance, quic_port, Instant::now());
            let interval = config.announce_interval;
            tasks.push(tokio::spawn(run_announcer(group, interval, responder, busy.clone())));
        }
        Ok(Announcer { instance, tasks, busy })
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
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A socket on the shared discovery port, in its family's group.
#[derive(Debug)]
struct GroupSocket {
    socket: UdpSocket,
    /// The group, with the port.
    group: SocketAddr,
    interfaces: Interfaces,
}

impl GroupSocket {
    /// Binds the discovery port for `family` and joins the group on every interface of the
    /// family. IPv4 errors are returned (nothing works without it), IPv6 ones only logged:
    /// `None` then, and discovery goes on over IPv4.
    fn open(
        config: &DiscoveryConfig,
        family: Family,
    ) -> Result<Option<GroupSocket>, DiscoveryError> {
        let port = config.port;
        let socket = match socket::bind_group_socket(family, port) {
            Ok(socket) => socket,
            Err(Unbound::Unsupported(e)) if family == Family::V6 => {
                debug!(error = %e, "no IPv6 on this host; discovery runs over IPv4 only");
                return Ok(None);
            }
            Err(Unbound::Failed(e)) if family == Family::V6 => {
                warn!(
                    port,
                    error = %e,
                    "could not bind the discovery port for IPv6; discovery runs over IPv4 only"
                );
                return Ok(None);
            }
            Err(Unbound::Unsupported(e) | Unbound::Failed(e)) => {
                return Err(DiscoveryError::io(
                    format!(
                        "could not bind UDP port {port} for LAN discovery; another program may \
                         hold it exclusively (set {PORT_ENV} to use another port on both sides)"
                    ),
                    e,
                ))
            }
        };
        let group = config.group(family);
        let mut interfaces = Interfaces::default();
        interfaces
            .refresh(&socket, group.ip())
            .map_err(|e| DiscoveryError::io("listing network interfaces for discovery", e))?;
        Ok(Some(GroupSocket { socket, group, interfaces }))
    }

    /// Joins the group on interfaces that came up since.
    fn refresh(&mut self) {
        if let Err(e) = self.interfaces.refresh(&self.socket, self.group.ip()) {
            debug!(error = %e, "could not re-read the network interfaces");
        }
    }

    /// Sends `bytes` to the group through every interface.
    async fn multicast(&self, bytes: &[u8]) -> usize {
        socket::send_multicast(&self.socket, &self.interfaces.via, self.group, bytes).await
    }
}

/// The announcer's loop for one family: periodic announces, answers to queries.
async fn run_announcer(
    mut group: GroupSocket,
    interval: Duration,
    mut responder: Responder,
    busy: Arc<AtomicU8>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    let mut buf = [0u8; RECV_BUF];
    let (state, mut links) = match (
        quinn_udp::UdpSocketState::new((&group.socket).into()),
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
                    group.multicast(&responder.announce(0).encode()).await;
                }
            }
        }
    };
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                ticks = ticks.wrapping_add(1);
                if ticks % REFRESH_INTERFACES_EVERY == 0 {
                    group.refresh();
                }
                if busy.load(Ordering::Relaxed) != FREE {
                    continue;
                }
                group.multicast(&responder.announce(0).encode()).await;
            }
            received = socket::recv_with_dst(&group.socket, &state, &mut buf) => match received {
                Ok(got) => {
                    for datagram in buf[..got.len].chunks(got.stride.max(1)) {
                        if !from_the_link(got.dst, group.group.ip(), || links.contains(got.from.ip())) {
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
                            if let Err(e) = group.socket.send_to(&bytes, to).await {
                                debug!(%to, error = %e, "could not answer a discovery query");
                            }
                        }
                        if answer.multicast {
                            group.multicast(&bytes).await;
                        }
                    }
                }
                Err(e) if socket::is_transient(&e) => trace!(error = %e, "discovery receive"),
                Err(e) => {
                    warn!(error = %e, "discovery socket receive failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// The receiver's ephemeral socket of one family, and where its queries go.
struct Querier {
    socket: UdpSocket,
    interfaces: Vec<Via>,
    group: SocketAddr,
}

impl Querier {
    /// The querier of `family`; `None` where the host lacks IPv6 (logged). IPv4 failures
    /// are errors.
    fn open(config: &DiscoveryConfig, family: Family) -> Result<Option<Querier>, DiscoveryError> {
        let context = "could not bind a UDP socket for LAN discovery queries";
        let socket = match socket::bind_query_socket(family) {
            Ok(socket) => socket,
            Err(Unbound::Unsupported(e) | Unbound::Failed(e)) if family == Family::V6 => {
                debug!(error = %e, "no IPv6 discovery queries on this host");
                return Ok(None);
            }
            Err(Unbound::Unsupported(e) | Unbound::Failed(e)) => {
                return Err(DiscoveryError::io(context, e))
            }
        };
        let interfaces = socket::interfaces(family)
            .map_err(|e| DiscoveryError::io("listing network interfaces for discovery", e))?;
        let interfaces = interfaces.into_iter().map(|(_, via)| via).collect();
        Ok(Some(Querier { socket, interfaces, group: config.group(family) }))
    }
}

/// The receiver's socket of `family` on the shared port, for unsolicited announces, if it
/// can be had. They are a second chance, not a requirement: if the shared port is taken by
/// something that does not allow sharing, unicast answers still work.
fn listener(config: &DiscoveryConfig, family: Family) -> Option<UdpSocket> {
    match GroupSocket::open(config, family) {
        Ok(Some(group)) if group.interfaces.joined() > 0 => Some(group.socket),
        Ok(Some(_)) => {
            debug!(%family, "joined the discovery group nowhere; relying on unicast answers");
            None
        }
        Ok(None) => None,
        Err(e) => {
            debug!(%family, error = %e, "no listener on the discovery port; relying on unicast answers");
            None
        }
    }
}

/// Receiver side: queries every interface of both families repeatedly until an announce for
/// `nameplate` arrives or `timeout` elapses, then listens [`GRACE`] longer to collect more
/// addresses of that sender and to detect a second sender on the same nameplate.
///
/// Returns within `timeout` + [`GRACE`]; `timeout` bounds the wait for the first answer.
pub async fn find(
    config: &DiscoveryConfig,
    nameplate: u32,
    timeout: Duration,
) -> Result<Found, DiscoveryError> {
    let started = Instant::now();
    let deadline = started + timeout;

    let mut queriers = Vec::new();
    for family in Family::ALL {
        queriers.extend(Querier::open(config, family)?);
    }
    let listeners: Vec<UdpSocket> =
        Family::ALL.into_iter().filter_map(|family| listener(config, family)).collect();
    let sockets: Vec<&UdpSocket> =
        queriers.iter().map(|q| &q.socket).chain(listeners.iter()).collect();

    let mut links = LiveLinks::new()
        .map_err(|e| DiscoveryError::io("listing network interfaces for discovery", e))?;
    let mut collector = Collector::new(nameplate);
    let mut query_interval = QUERY_INTERVAL_START;
    let mut next_query = started;
    let mut first_round = true;
    let mut turn = 0usize;
    let mut buf = [0u8; RECV_BUF];
    loop {
        let stop_at = collector.poll_timeout().unwrap_or(deadline);
        turn = turn.wrapping_add(1);
        let received = tokio::select! {
            _ = sleep_until(stop_at) => break,
            _ = sleep_until(next_query) => {
                // A fresh id per query: an answer names the query it answers, which tells
                // how long answers take (see `Collector::handle`).
                let query_id = rand::random::<u64>() | 1;
                let query = DiscoveryMsg::Query { nameplate, query_id }.encode();
                let mut sent = 0;
                for q in &queriers {
                    sent += socket::send_multicast(&q.socket, &q.interfaces, q.group, &query).await;
                }
                if sent == 0 && first_round {
                    return Err(DiscoveryError::io(
                        format!(
                            "could not send a discovery query to {} or {} on any network \
                             interface; check that this host has a working network (or at \
                             least loopback)",
                            config.group(Family::V4),
                            config.group(Family::V6),
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
            r = socket::recv_any(&sockets, turn, &mut buf) => r,
        };
        match received {
            Ok((_, from)) if !links.contains(from.ip()) => {
                debug!(%from, "ignoring an announce from beyond the link");
            }
            Ok((len, from)) => {
                if collector.handle(Instant::now(), from, &buf[..len]).is_err() {
                    return Err(DiscoveryError::Ambiguous { nameplate });
                }
                if collector.take_requery() {
                    next_query = Instant::now();
                }
            }
            Err(e) if socket::is_transient(&e) => trace!(error = %e, "discovery receive"),
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

/// Whether a datagram to a group socket is from the link: sent to the group (not by unicast
/// to this host's address, which a host anywhere could do), from an address on one of this
/// host's links. Where the platform does not tell the destination, the source must do.
fn from_the_link(dst: Option<IpAddr>, group: IpAddr, on_link: impl FnOnce() -> bool) -> bool {
    dst.is_none_or(|dst| dst == group) && on_link()
}

#[cfg(test)]
mod tests;
