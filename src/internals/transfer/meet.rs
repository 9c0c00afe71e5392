//! Meeting through a rendezvous node (DESIGN §4, rendezvous mode).
//!
//! 1. Bind the data endpoint; reach the node from it over QUIC (so the node observes the data
//!    socket's mapping), or over TCP when UDP gets no answer within [`UDP_BOUND`].
//! 2. Sender: allocate a nameplate (or claim the one in a chosen code). Receiver: claim it.
//!    Wait for the other side.
//! 3. PAKE and key confirmation through the mailbox ([`Session::new_deferred`]). A wrong code
//!    ends here on both sides.
//! 4. Ask the node for this side's relay ticket (unless the relay is refused), and exchange
//!    sealed [`Candidates`]: addresses, certificate fingerprint, relay willingness. Both sides
//!    are on the nameplate until then (a side releases it only once connected, which needs
//!    the other's candidates), so the node can check that the two tickets' holders are the
//!    nameplate's two sides.
//! 5. Try both paths at once. Direct: the receiver connects to the sender's candidates.
//!    Relay: both attach to the relay with their tickets and run the same QUIC connection
//!    through it ([`crate::net::relay`]): as datagrams to the node over UDP, or on a TCP
//!    stream. The receiver prefers direct: it takes
//!    the relay only when direct failed, or did not succeed within [`DIRECT_GRACE`] of the
//!    relay being ready. The sender takes whichever connection opens the control stream.
//!    Connections are pinned to the fingerprint from the candidates, and the session's hello
//!    binds the winning connection as on the LAN.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p_copy_rendezvous::client::{Client, ClientError, Closer, NodeAccess};
use p2p_copy_rendezvous::wire::{ErrorCode, NodeMsg};

use super::control::ControlStream;
use super::{Key, Note, Observer, PathKind, TransferError};
use crate::crypto::Role;
use crate::error::ErrorKind;
use crate::net::candidates;
use crate::net::path::PathSocket;
use crate::net::quic::{socket_for, Node, Tuning};
use crate::net::relay::RelayState;
use crate::proto::{Config, Event, Session, MAILBOX_LANE};
use crate::wire::control::Candidates;
use crate::wire::frame;

/// How long QUIC to the node may go unanswered before TCP is tried.
pub const UDP_BOUND: Duration = Duration::from_secs(3);
/// Bound on every exchange with the node.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a direct connection attempt may take.
const DIRECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the receiver still waits for the direct path once the relay is ready.
pub const DIRECT_GRACE: Duration = Duration::from_secs(1);
/// How long a connection may still come once the other side left the nameplate.
const LEFT_GRACE: Duration = Duration::from_secs(3);
/// How long a relay stream waits for the other side's.
const PAIR_WAIT: Duration = Duration::from_secs(20);
/// How long a transfer waits for a direct path to come back once the relay closed under it.
const RELAY_LOST_GRACE: Duration = Duration::from_secs(10);

/// Where and how to meet.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Rendezvous {
    /// The node, `HOST:PORT`.
    pub node: String,
    /// The node's access token, if it requires one (proved, never sent).
    pub token: Option<String>,
    /// SHA-256 of the node's certificate: a node presenting another is refused.
    pub fingerprint: Option<[u8; 32]>,
    /// Use only the relay (diagnosis).
    pub force_relay: bool,
    /// Never use the relay (diagnosis; fails where direct is impossible).
    pub no_relay: bool,
}

impl Rendezvous {
    /// The node at `node` (`HOST:PORT`), open to all, its certificate not pinned.
    pub fn new(node: impl Into<String>) -> Rendezvous {
        Rendezvous {
            node: node.into(),
            token: None,
            fingerprint: None,
            force_relay: false,
            no_relay: false,
        }
    }

    /// The node's access token (`--rendezvous-token`).
    pub fn token(mut self, token: impl Into<String>) -> Rendezvous {
        self.token = Some(token.into());
        self
    }

    /// Pins the node's certificate by its SHA-256 (`--rendezvous-fingerprint`).
    pub fn fingerprint(mut self, sha256: [u8; 32]) -> Rendezvous {
        self.fingerprint = Some(sha256);
        self
    }
}

/// What one side brings to the meeting.
pub(crate) struct Plan<'a> {
    pub role: Role,
    /// The code (for a sender with a generated code, its nameplate is replaced by the one the
    /// node allocates), or the secret of the transfer being rejoined.
    pub key: Key,
    /// The code was typed or pre-shared: claim its nameplate rather than allocate one.
    pub claim: bool,
    pub rendezvous: &'a Rendezvous,
    pub bind: SocketAddr,
    /// Use this socket instead of binding `bind`.
    pub socket: Option<Arc<dyn quinn::AsyncUdpSocket>>,
    pub tuning: &'a Tuning,
    pub config: Config,
    /// How long to wait for the other side to show up at the node.
    pub wait: Duration,
    /// Sender serving several receivers (`send --count`): the nameplate it holds across them.
    pub hold: Option<&'a Hold>,
}

/// A sender's nameplate held across its transfers (`send --count` through a node): the code
/// with the nameplate the node gave it, and the key that reopens the nameplate after each
/// pairing. Shared by the transfers (clones share it); empty until the first one meets.
#[derive(Debug, Clone, Default)]
pub struct Hold(Arc<std::sync::Mutex<Option<Held>>>);

/// The code of a held nameplate and the key that reopens it.
type Held = (crate::code::Code, [u8; 16]);

impl Hold {
    fn get(&self) -> Option<Held> {
        self.0.lock().ok()?.clone()
    }

    fn set(&self, code: crate::code::Code, key: [u8; 16]) {
        if let Ok(mut held) = self.0.lock() {
            *held = Some((code, key));
        }
    }
}

/// How often a receiver asks again for a nameplate whose sender is serving another receiver
/// (each ask spends one of the source's claims at the node).
const SERVING_RETRY: Duration = Duration::from_secs(3);
/// The longest pause between two such asks (they back off from [`SERVING_RETRY`]).
const SERVING_RETRY_MAX: Duration = Duration::from_secs(12);

/// The connection the transfer runs on, and what must live as long as it.
pub(crate) struct Met {
    /// The data endpoint.
    pub node: Node,
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    /// Bound to `conn`; its hello is queued.
    pub session: Session,
    pub guard: Guard,
}

/// How long a side waits for the node to take its leaving before it closes.
const NODE_LEAVE_WAIT: Duration = Duration::from_millis(300);
/// How long a side waits for its close to the node to go out before it exits. The wait ends
/// as soon as the close is sent (within milliseconds); the bound only matters on a machine so
/// loaded that the connection's task does not run for a while, and a close that never goes
/// out leaves the node counting this side until its idle timeout.
const NODE_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Keeps the paths (and the node session that carries the relay) alive for the transfer, and
/// watches them.
#[allow(missing_debug_implementations)]
pub(crate) struct Guard {
    paths: Option<Arc<PathSocket>>,
    punch: Option<Duration>,
    /// The node session, while it carries (or may yet carry) the relay stream.
    client: Option<Client>,
    /// Setting up the relay, if it is still under way.
    relay: Option<tokio::task::JoinHandle<()>>,
    /// Leaving the node session when no relay needs it (started at once, waited for at the
    /// end), and what closes it then.
    leaving: Option<(tokio::task::JoinHandle<()>, Closer)>,
}

impl Guard {
    /// Nothing to keep (the LAN path).
    pub fn none() -> Guard {
        Guard { paths: None, punch: None, client: None, relay: None, leaving: None }
    }

    /// Ends what the transfer kept open: probing, the relay, and the connection to the node
    /// (telling the node at once rather than leaving it to time out). Waits, at most
    /// [`NODE_LEAVE_WAIT`] and [`NODE_CLOSE_WAIT`], for the node to take our leaving and for
    /// the close to go out: a process that exits first leaves the node counting it until its
    /// idle timeout.
    pub async fn close(self) {
        if let Some(r) = &self.relay {
            r.abort();
        }
        if let Some(paths) = &self.paths {
            paths.close();
        }
        if let Some(client) = &self.client {
            client.closer().close(NODE_CLOSE_WAIT).await;
        }
        if let Some((leaving, closer)) = self.leaving {
            // A short transfer can end before the node acknowledged our leaving; the session
            // is closed whether it did or not.
            let _ = tokio::time::timeout(NODE_LEAVE_WAIT, leaving).await;
            closer.close(NODE_CLOSE_WAIT).await;
        }
    }

    /// Rendezvous mode: how long finding the first path took.
    pub fn punch(&self) -> Option<Duration> {
        self.punch
    }

    /// The path the data took last (`lan`: what the LAN path is).
    pub fn path(&self, lan: PathKind) -> PathKind {
        self.paths.as_ref().and_then(|p| p.status().borrow().using).unwrap_or(lan)
    }

    /// The paths' status as it changes (rendezvous mode; nothing to watch on the LAN).
    pub fn status(&self) -> Option<tokio::sync::watch::Receiver<crate::net::path::PathStatus>> {
        self.paths.as_ref().map(|p| p.status())
    }

    /// How often the data moved from one path to the other.
    pub fn changes(&self) -> u32 {
        self.paths.as_ref().map_or(0, |p| p.status().borrow().changes)
    }

    /// Resolves when the paths fail the transfer: the relay altered data (integrity), or the
    /// relay ended while no direct path came back within [`RELAY_LOST_GRACE`]. Never resolves
    /// on the LAN. Meanwhile, whenever the direct path comes or goes, it nudges `conn` (see
    /// [`nudge`]).
    pub async fn trouble(&self, conn: &quinn::Connection) -> TransferError {
        let Some(paths) = &self.paths else { return std::future::pending().await };
        let mut status = paths.status();
        let mut direct = status.borrow().direct;
        // Until the connection ends (then reading fails at once, every time).
        let mut reading = true;
        let mut tampering = Tampering::default();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let s = status.borrow_and_update().clone();
            if s.direct != direct {
                direct = s.direct;
                nudge(conn);
            }
            let stranded = s.relay == Some(RelayState::Closed) && s.direct.is_none();
            let lost = async {
                if stranded {
                    tokio::time::sleep(RELAY_LOST_GRACE).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                changed = status.changed() => {
                    if changed.is_err() {
                        return std::future::pending().await;
                    }
                }
                // The peer's nudges: read and dropped (quinn would buffer them).
                read = conn.read_datagram(), if reading => reading = read.is_ok(),
                _ = tick.tick() => {
                    if tampering.sample(paths.relayed_in(), frames_in(conn), s.direct.is_none()) {
                        return TransferError::new(
                            ErrorKind::Integrity,
                            "packets keep arriving through the rendezvous node's relay and none \
                             of them authenticates: the relay alters them (QUIC rejected every \
                             altered packet; nothing altered was written)",
                        );
                    }
                }
                () = lost => {
                    return TransferError::network(
                        "the rendezvous node closed the relay and there is no direct path to the \
                         other side",
                    );
                }
            }
        }
    }
}

/// Relayed datagrams known not to have authenticated, at least, before the relay counts as
/// altering packets ...
const TAMPERED_PACKETS: i64 = 8;
/// ... once the connection decoded nothing for this many one-second samples.
const TAMPER_SAMPLES: u32 = 3;

/// Tells a relay that alters packets from one that carries them. QUIC drops a packet that
/// fails authentication as if it were lost, so an altering relay looks like a lossy one, except
/// that its packets keep arriving: every packet that authenticates holds at least one frame,
/// so datagrams that came through the relay beyond the frames decoded are packets that did not
/// authenticate. `excess` keeps that surplus, floored at zero (a packet read before a sample
/// and decoded after it only borrows from the next sample). The relay counts as altering when
/// the surplus reaches [`TAMPERED_PACKETS`] while the connection decodes nothing at all for
/// [`TAMPER_SAMPLES`] samples: a healthy relay never gets there, since the packets it
/// delivers are decoded within the sample after.
#[derive(Debug, Default)]
struct Tampering {
    /// (relayed datagrams, frames decoded) at the last sample.
    last: Option<(u64, u64)>,
    excess: i64,
    /// Samples in a row without a frame decoded.
    still: u32,
}

impl Tampering {
    /// Takes a sample; true when the relay alters packets (see the type's documentation).
    /// Only a connection on the relay alone is judged.
    fn sample(&mut self, relayed: u64, frames: u64, relay_only: bool) -> bool {
        if !relay_only {
            *self = Tampering::default();
            return false;
        }
        if let Some((r0, f0)) = self.last {
            let arrived = i64::try_from(relayed.saturating_sub(r0)).unwrap_or(i64::MAX);
            let decoded = i64::try_from(frames.saturating_sub(f0)).unwrap_or(i64::MAX);
            self.excess = self.excess.saturating_add(arrived).saturating_sub(decoded).max(0);
            self.still = if decoded == 0 { self.still + 1 } else { 0 };
        }
        self.last = Some((relayed, frames));
        self.still >= TAMPER_SAMPLES && self.excess >= TAMPERED_PACKETS
    }
}

/// Frames of the connection decoded so far (every authenticated packet holds at least one).
fn frames_in(conn: &quinn::Connection) -> u64 {
    let f = conn.stats().frame_rx;
    f.acks
        + f.crypto
        + f.stream
        + f.ping
        + f.datagram
        + f.max_data
        + f.max_stream_data
        + f.data_blocked
        + f.stream_data_blocked
        + f.new_connection_id
        + f.retire_connection_id
        + f.connection_close
        + f.reset_stream
        + f.stop_sending
        + f.max_streams_uni
        + f.max_streams_bidi
        + f.path_challenge
        + f.path_response
        + f.new_token
        + u64::from(f.handshake_done)
}

/// Sends a one-byte QUIC datagram on `conn` after the path changed. Its acknowledgement, over the
/// new path, lets QUIC declare what the old path swallowed lost and send it again at once,
/// rather than when its retransmission timer (backed off while the old path died) fires.
fn nudge(conn: &quinn::Connection) {
    if let Err(e) = conn.send_datagram(bytes::Bytes::from_static(&[0])) {
        tracing::debug!(error = %e, "could not nudge the connection after a path change");
    }
}

/// What a side needs to run the transfer: the endpoint, the connection, the control stream
/// (its hello queued), and what must live as long as the transfer.
pub(crate) type Joined = (Node, quinn::Connection, ControlStream, Guard);

/// Meets the other side through the node. On success the session is secured up to its
/// hello; the caller wraps it in a control stream and goes on as on the LAN.
pub(crate) async fn meet(
    plan: Plan<'_>,
    observer: &Arc<dyn Observer>,
) -> Result<Met, TransferError> {
    let rv = plan.rendezvous;
    let sender = plan.role == Role::Sender;
    // One socket reaches the node and the peer; the peer by either path (see `PathSocket`).
    // By default both address families, so IPv6 can go direct where IPv4 cannot.
    let base = match plan.socket.clone() {
        Some(socket) => socket,
        None => socket_for(plan.bind, plan.role)?,
    };
    let paths = PathSocket::new(base);
    // Relayed packets travel 9 bytes longer (the relay's header): the connection's packets,
    // which may take either path, leave room for it.
    let tuning = Tuning {
        max_udp_payload: crate::net::quic::MAX_UDP_PAYLOAD
            - p2p_copy_rendezvous::wire::DATAGRAM_HEADER as u16,
        ..plan.tuning.clone()
    };
    let data = Node::with_socket(paths.clone(), &tuning, false)?;
    let dual = data.local_addr().is_ok_and(|a| a.is_ipv6() && a.ip().is_unspecified());
    let node_addr = resolve(&rv.node, dual).await?;
    let access = NodeAccess { token: rv.token.clone(), fingerprint: rv.fingerprint };
    let mut client =
        Client::connect_any_with(&data.endpoint, node_addr, access, UDP_BOUND, NODE_TIMEOUT)
            .await
            .map_err(|e| node_error(&rv.node, e))?;
    tracing::debug!(node = %node_addr, tcp = client.is_tcp(), observed = %client.observed(), "at the node");

    let outcome = async {
        // Nameplate.
        let rejoining = matches!(plan.key, Key::Rejoin(_));
        let give_up = Instant::now() + plan.wait;
        let held = plan.hold.and_then(Hold::get);
        let (key, mut present) = match (&plan.key, held.clone()) {
            // The next receiver of a sender that serves several: the same nameplate, reopened.
            (Key::Code(_), Some((code, key))) if sender => {
                let present = client
                    .reclaim(code.nameplate(), key)
                    .await
                    .map_err(|e| claim_error(&rv.node, e))?;
                (Key::Code(code), present)
            }
            (Key::Code(code), _) if sender && !plan.claim => {
                let n = client.allocate().await.map_err(|e| node_error(&rv.node, e))?;
                // A number no code can carry is the node breaking the protocol, not our bug.
                let code = code.with_nameplate(n).map_err(|e| {
                    TransferError::new(
                        ErrorKind::Protocol,
                        format!("the rendezvous node {} allocated nameplate {n}: {e}", rv.node),
                    )
                })?;
                (Key::Code(code), false)
            }
            (key, _) => {
                let (mut waiting, mut pause) = (false, SERVING_RETRY);
                let present = loop {
                    match client.claim(key.nameplate()).await {
                        Ok(present) => break present,
                        // Its sender serves receivers one after another and is busy (asking
                        // too often is refused for a while too).
                        Err(ClientError::Refused {
                            code: code @ (ErrorCode::Serving | ErrorCode::RateLimited),
                            message,
                        }) if !sender
                            && (waiting || code == ErrorCode::Serving)
                            && Instant::now() + pause < give_up =>
                        {
                            if !waiting {
                                waiting = true;
                                observer.note(Note::Warning(
                                    "the sender is serving another receiver; waiting for it \
                                     (up to --wait)"
                                        .into(),
                                ));
                            }
                            let shown = crate::transfer::printable(&message);
                            tracing::debug!(?code, message = %shown, "nameplate busy");
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(SERVING_RETRY_MAX);
                        }
                        Err(e) => return Err(claim_error(&rv.node, e)),
                    }
                };
                (key.clone(), present)
            }
        };
        match &key {
            Key::Code(code) if sender => observer.note(Note::Code(code)),
            Key::Code(code) => observer.note(Note::Searching { nameplate: code.nameplate() }),
            Key::Rejoin(_) => {}
        }

        // Held for the next receivers (`send --count`): the node's answer may come after the
        // other side joined or wrote.
        let mut early = Vec::new();
        if let (Some(hold), None, Key::Code(code)) = (plan.hold, &held, &key) {
            client.request_hold().await.map_err(|e| node_error(&rv.node, e))?;
            loop {
                match client.recv().await {
                    Ok(NodeMsg::Held { key }) => break hold.set(code.clone(), key),
                    Ok(NodeMsg::PeerJoined) => present = true,
                    Ok(NodeMsg::Message { body }) => {
                        early.push(body);
                        present = true;
                    }
                    Ok(other) => return Err(protocol(&other)),
                    Err(e) => return Err(node_error(&rv.node, e)),
                }
            }
        }

        // The other side.
        while !present {
            let left = give_up.saturating_duration_since(Instant::now());
            match client.recv_within(left).await {
                Ok(NodeMsg::PeerJoined) => present = true,
                Ok(NodeMsg::Message { body }) => {
                    early.push(body);
                    present = true;
                }
                Ok(other) => return Err(protocol(&other)),
                Err(ClientError::Timeout(_)) => {
                    return Err(TransferError::network(if rejoining {
                        "the other side of the interrupted transfer did not come back".to_owned()
                    } else if sender {
                        format!(
                            "no receiver came within {}s; the code is no longer valid",
                            plan.wait.as_secs()
                        )
                    } else {
                        format!(
                            "nobody is sending with nameplate {} on the rendezvous node {} \
                             (waited {}s); check the code, and that the sender uses this node \
                             too (a sender on the local network without --rendezvous is not \
                             at the node)",
                            key.nameplate(),
                            rv.node,
                            plan.wait.as_secs()
                        )
                    }));
                }
                Err(e) => return Err(node_error(&rv.node, e)),
            }
        }

        // PAKE (or the rejoin handshake) and confirmation through the mailbox.
        let mut session = key.deferred(plan.role, plan.config.clone());
        let mut inbox = std::collections::VecDeque::from(early);
        loop {
            while let Some(f) = session.poll_transmit() {
                client.post(f).await.map_err(|e| node_error(&rv.node, e))?;
            }
            if let Some(ev) = session.poll_event() {
                match ev {
                    Event::Confirmed => break,
                    other => return Err(super::control::unexpected(&other)),
                }
            }
            let body = match inbox.pop_front() {
                Some(b) => b,
                None => next_message(&mut client, &session, &rv.node).await?,
            };
            let frame_body = unframe(&body)?;
            let handled = session.handle_frame(Instant::now(), frame_body);
            handled?;
        }
        let keys = session.keys().ok_or_else(|| TransferError::internal("no keys"))?.clone();

        // Candidates, sealed.
        let observed = (!client.is_tcp()).then(|| client.observed());
        let local = data.local_addr().map_err(|e| TransferError::network(e.to_string()))?;
        let mine = Candidates {
            fingerprint: data.fingerprint,
            addrs: if rv.force_relay { Vec::new() } else { candidates::gather(local, observed) },
            relay: !rv.no_relay,
        };
        tracing::debug!(candidates = ?mine.addrs, relay = mine.relay, "our candidates");
        let mut sealed = Vec::new();
        mine.encode(&mut sealed);
        keys.sealer(MAILBOX_LANE)
            .seal(&mut sealed, 0)
            .map_err(|e| TransferError::internal(e.to_string()))?;
        // A holder asks even without the relay: the node takes a pairing that asked for none
        // for a failed key exchange, and ends the hold.
        let ask = mine.relay || plan.hold.is_some();
        if ask {
            client.request_ticket().await.map_err(|e| node_error(&rv.node, e))?;
        }
        client.post(sealed).await.map_err(|e| node_error(&rv.node, e))?;
        let (mut theirs, ticket) =
            candidates_and_ticket(&mut client, &session, &rv.node, inbox.pop_front(), ask).await?;
        keys.opener(MAILBOX_LANE).open(&mut theirs).map_err(|_| {
            TransferError::new(
                ErrorKind::Integrity,
                "the candidates message was altered in transit",
            )
        })?;
        let peer = Candidates::decode(&theirs).map_err(|e| {
            TransferError::new(
                ErrorKind::Protocol,
                format!("the other side sent bad candidates: {e}"),
            )
        })?;
        tracing::debug!(candidates = ?peer.addrs, relay = peer.relay, "peer candidates");
        // Only unicast addresses are probed, whatever the peer (or a node lying about what it
        // observed) put in its candidates.
        let mut peer = peer;
        peer.addrs.retain(|a| candidates::unicast(*a));

        let use_relay = mine.relay && peer.relay && ticket.is_some();
        let use_direct = !rv.force_relay && !peer.addrs.is_empty() && !mine.addrs.is_empty();
        if !use_relay && !use_direct {
            return Err(TransferError::new(
                ErrorKind::Usage,
                "no path is allowed: one side forces the relay and the other refuses it",
            ));
        }
        let deadline = session.poll_timeout().unwrap_or_else(|| Instant::now() + NODE_TIMEOUT);
        let punch_started = Instant::now();
        if use_direct {
            paths.start_probing(&keys, &peer.addrs);
        }
        // The relay comes up in the background and stays as the fallback (or the path, until
        // a direct one appears) for the whole transfer.
        let relay = ticket.filter(|_| use_relay).map(|ticket| {
            let opener = client.relay_opener();
            let paths = paths.clone();
            tokio::spawn(async move {
                match opener.relay(ticket, PAIR_WAIT).await {
                    Ok(stream) => {
                        let how = if stream.datagrams.is_some() { "datagrams" } else { "tcp" };
                        paths.attach_relay(stream);
                        tracing::debug!(how, "relay ready");
                    }
                    Err(e) => tracing::info!(error = %e, "no relay"),
                }
            })
        });
        let fp = peer.fingerprint;
        let relay_handle = relay.as_ref().map(|r| r.abort_handle());
        let connect = async {
            if sender {
                data.serve(true);
                let session =
                    super::send::first_session(&data.endpoint, Some(fp), Some(paths.peer()))
                        .await
                        .ok_or_else(|| {
                            TransferError::internal("the QUIC endpoint closed unexpectedly")
                        })?;
                data.serve(false);
                Ok(session)
            } else {
                first_path(&paths, use_direct, relay_handle, punch_started).await?;
                let conn = data
                    .connect_to(&[paths.peer()], NODE_TIMEOUT, Some(fp), Duration::ZERO)
                    .await?;
                let (send, recv) = tokio::time::timeout(NODE_TIMEOUT, conn.open_bi())
                    .await
                    .map_err(|_| TransferError::network("the sender did not let us open a stream"))?
                    .map_err(|e| super::connection_lost(&e))?;
                Ok((conn, send, recv))
            }
        };
        let connect = tokio::time::timeout_at(deadline.into(), connect);
        tokio::pin!(connect);
        // Meanwhile, watch the mailbox: if the other side leaves (it failed, or gave up), stop
        // trying rather than wait out the deadline. A side that connected releases its
        // nameplate at once, so its leaving only counts if no connection comes soon after.
        let won = tokio::select! {
            won = &mut connect => won,
            gone = peer_leaves(&mut client) => {
                match tokio::time::timeout(LEFT_GRACE, &mut connect).await {
                    Ok(won) => won,
                    Err(_) => return Err(gone),
                }
            }
        };
        let won = won.map_err(|_| {
            TransferError::network(
                "could not connect to the other side directly or through the relay in time",
            )
        })?;
        let (conn, send, recv) = match won {
            Ok(c) => c,
            Err(e) => {
                if let Some(r) = &relay {
                    r.abort();
                }
                return Err(e);
            }
        };
        let punch = punch_started.elapsed();
        Ok::<_, TransferError>((session, conn, send, recv, relay, punch))
    }
    .await;
    let (mut session, conn, send, recv, relay, punch) = match outcome {
        Ok(o) => o,
        Err(e) => {
            paths.close();
            // Whatever we posted (our key confirmation, say) must reach the other side, so
            // that it fails for the same reason rather than on our vanishing.
            client.finish().await;
            return Err(e);
        }
    };
    let status = paths.status().borrow().clone();
    let path = if status.direct.is_some() { PathKind::Direct } else { PathKind::Relay };
    // Through the relay, the peer's address is the node's.
    let via = status.direct.unwrap_or_else(|| client.node());
    let via = SocketAddr::new(via.ip().to_canonical(), via.port());
    tracing::debug!(path = path.as_str(), %via, ?punch, "connected");
    observer.note(Note::Connected { peer: via, path });
    session.set_channel(Instant::now(), data.channel(&conn)?)?;
    // The nameplate has done its job: free it. The connection to the node stays while it
    // carries (or may yet carry) the relay stream.
    let _ = tokio::time::timeout(Duration::from_secs(2), client.release()).await;
    let (client, leaving) = if relay.is_some() && !client.is_tcp() {
        (Some(client), None)
    } else {
        let closer = client.closer();
        let leave = async move {
            let mut client = client;
            client.leave().await;
        };
        (None, Some((tokio::spawn(leave), closer)))
    };
    let guard = Guard { paths: Some(paths), punch: Some(punch), client, relay, leaving };
    Ok(Met { node: data, conn, send, recv, session, guard })
}

/// Receiver: waits until a path to the peer is up. Direct wins at once; the relay wins when
/// direct is impossible, or has not come within [`DIRECT_GRACE`] of the relay being ready (a
/// transfer moves to a direct path that comes later). Fails when neither can come.
async fn first_path(
    paths: &PathSocket,
    direct: bool,
    relay: Option<tokio::task::AbortHandle>,
    started: Instant,
) -> Result<(), TransferError> {
    let mut status = paths.status();
    let mut grace: Option<tokio::time::Instant> = None;
    let direct_deadline = tokio::time::Instant::from(started + DIRECT_TIMEOUT);
    loop {
        let s = status.borrow_and_update().clone();
        if s.direct.is_some() {
            return Ok(());
        }
        let relay_up = s.relay == Some(RelayState::Up);
        if relay_up && !direct {
            return Ok(());
        }
        if relay_up {
            grace.get_or_insert_with(|| tokio::time::Instant::now() + DIRECT_GRACE);
        }
        let relay_gone = match &relay {
            None => true,
            Some(r) => r.is_finished() && !relay_up,
        };
        if relay_gone && !direct {
            return Err(TransferError::network(
                "the relay could not be set up and the direct path is not allowed",
            ));
        }
        let give_up = if relay_gone { Some(direct_deadline) } else { None };
        let wake = grace.into_iter().chain(give_up).min();
        tokio::select! {
            changed = status.changed() => {
                if changed.is_err() {
                    return Err(TransferError::internal("the data socket closed"));
                }
            }
            () = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            } => {
                let now = tokio::time::Instant::now();
                if grace.is_some_and(|g| now >= g) && relay_up {
                    return Ok(());
                }
                if give_up.is_some_and(|g| now >= g) {
                    return Err(TransferError::network(format!(
                        "could not reach the other side directly within {}s{}",
                        DIRECT_TIMEOUT.as_secs(),
                        if relay.is_some() { ", and the relay failed" } else { "" }
                    )));
                }
            }
        }
    }
}

/// Resolves once the node says the other side left (with the error to report). Other messages
/// are ignored; if the node connection fails, this stops watching and never resolves: a direct
/// path does not need the node, and a relay over it fails by itself.
async fn peer_leaves(client: &mut Client) -> TransferError {
    loop {
        match client.recv_within(Duration::from_secs(3600)).await {
            Ok(NodeMsg::PeerLeft) => {
                return TransferError::new(
                    ErrorKind::Peer,
                    "the other side left before a connection was made",
                )
            }
            Ok(_) | Err(ClientError::Timeout(_)) => {}
            Err(e) => {
                tracing::debug!(error = %e, "lost the node while connecting to the other side");
                return std::future::pending().await;
            }
        }
    }
}

/// The other side's candidates message (unless `early` is it) and, when `ticket` was asked
/// for, the node's answer: our relay ticket, or `None` when the node cannot give one (the
/// transfer then goes direct or not at all).
async fn candidates_and_ticket(
    client: &mut Client,
    session: &Session,
    node: &str,
    early: Option<Vec<u8>>,
    ticket: bool,
) -> Result<(Vec<u8>, Option<u64>), TransferError> {
    let mut theirs = early;
    let mut answer: Option<Option<u64>> = (!ticket).then_some(None);
    while theirs.is_none() || answer.is_none() {
        if answer.is_some() {
            theirs = Some(next_message(client, session, node).await?);
            continue;
        }
        let left = session
            .poll_timeout()
            .map_or(NODE_TIMEOUT, |d| d.saturating_duration_since(Instant::now()));
        match client.recv_within(left).await {
            Ok(NodeMsg::RelayTicket { ticket }) => answer = Some(Some(ticket)),
            Ok(NodeMsg::Message { body }) if theirs.is_none() => theirs = Some(body),
            Ok(NodeMsg::PeerLeft) => {
                return Err(TransferError::new(
                    ErrorKind::Peer,
                    "the other side left before connecting",
                ))
            }
            Ok(other) => return Err(protocol(&other)),
            // The node's answer to the ticket request (the relay is full, say): no relay.
            Err(ClientError::Refused { code, message }) => {
                tracing::info!(?code, message = %crate::transfer::printable(&message), "no relay ticket");
                answer = Some(None);
            }
            Err(ClientError::Timeout(t)) => {
                return Err(TransferError::network(format!(
                    "the other side did not complete the handshake within {}s",
                    t.as_secs()
                )))
            }
            Err(e) => return Err(node_error(node, e)),
        }
    }
    let theirs = theirs.ok_or_else(|| TransferError::internal("no candidates"))?;
    Ok((theirs, answer.flatten()))
}

async fn next_message(
    client: &mut Client,
    session: &Session,
    node: &str,
) -> Result<Vec<u8>, TransferError> {
    let left = session
        .poll_timeout()
        .map_or(NODE_TIMEOUT, |d| d.saturating_duration_since(Instant::now()));
    match client.recv_within(left).await {
        Ok(NodeMsg::Message { body }) => Ok(body),
        Ok(NodeMsg::PeerLeft) => {
            Err(TransferError::new(ErrorKind::Peer, "the other side left before connecting"))
        }
        Ok(other) => Err(protocol(&other)),
        Err(ClientError::Timeout(t)) => Err(TransferError::network(format!(
            "the other side did not complete the handshake within {}s",
            t.as_secs()
        ))),
        Err(e) => Err(node_error(node, e)),
    }
}

/// The body of a length-prefixed control frame carried whole in a mailbox message.
fn unframe(msg: &[u8]) -> Result<&[u8], TransferError> {
    // Which of the two it was, the receiving side cannot tell: the node passes the message on.
    let bad = || {
        TransferError::new(
            ErrorKind::Protocol,
            "a malformed message came through the rendezvous node (from the other side, or the \
             node itself)",
        )
    };
    if msg.len() < frame::HEADER_LEN {
        return Err(bad());
    }
    let mut header = [0u8; frame::HEADER_LEN];
    header.copy_from_slice(&msg[..frame::HEADER_LEN]);
    let len = frame::body_len(header, crate::wire::control::MAX_FRAME).map_err(|_| bad())?;
    if len != msg.len() - frame::HEADER_LEN {
        return Err(bad());
    }
    Ok(&msg[frame::HEADER_LEN..])
}

/// The node's address: IPv4 first (the NAT mapping the node observes is then the IPv4 one that
/// needs punching); IPv6 too when the data socket has both families.
async fn resolve(node: &str, dual: bool) -> Result<SocketAddr, TransferError> {
    let unresolved = |why: String| {
        TransferError::new(
            ErrorKind::Network,
            format!("cannot resolve the rendezvous node {node}: {why}"),
        )
    };
    let addrs = tokio::time::timeout(NODE_TIMEOUT, tokio::net::lookup_host(node))
        .await
        .map_err(|_| unresolved("no answer from DNS".into()))?
        .map_err(|e| unresolved(e.to_string()))?
        .collect::<Vec<_>>();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.iter().find(|_| dual))
        .copied()
        .ok_or_else(|| unresolved("no IPv4 address".into()))
}

fn protocol(msg: &NodeMsg) -> TransferError {
    TransferError::new(
        ErrorKind::Protocol,
        format!("the rendezvous node sent an unexpected {}", shown(msg)),
    )
}

/// A node's message for an error line: at most 200 characters of its debug form (a message
/// may hold kilobytes of body).
fn shown(msg: &NodeMsg) -> String {
    let text = format!("{msg:?}");
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}… ({} bytes in all)", &text[..cut], text.len()),
        None => text,
    }
}

fn node_error(node: &str, e: ClientError) -> TransferError {
    let kind = match &e {
        ClientError::Refused { code: ErrorCode::Unauthorized, .. } => ErrorKind::Usage,
        ClientError::Refused { code: ErrorCode::Version, .. } => ErrorKind::Protocol,
        ClientError::Refused { code: ErrorCode::NoSuchNameplate, .. } => ErrorKind::Usage,
        ClientError::Protocol(_) => ErrorKind::Protocol,
        _ => ErrorKind::Network,
    };
    let message = match e {
        ClientError::Refused { code: ErrorCode::Unauthorized, message } => format!(
            "rendezvous node {node}: {message}; give its token with --rendezvous-token or \
             P2P_COPY_RENDEZVOUS_TOKEN"
        ),
        ClientError::Unreachable { node: addr, reason } if addr.to_string() != node => {
            format!("cannot reach the rendezvous node {node} (at {addr}): {reason}")
        }
        ClientError::Unreachable { .. } => e.to_string(),
        ClientError::WrongCertificate { .. } => format!(
            "rendezvous node {node}: {e}; check --rendezvous-fingerprint \
             (P2P_COPY_RENDEZVOUS_FINGERPRINT, rendezvous_fingerprint in the settings file)"
        ),
        ClientError::ShuttingDown | ClientError::Refused { code: ErrorCode::ShuttingDown, .. } => {
            format!(
            "the rendezvous node {node} is shutting down (or restarting); try again once it is \
             back, or use another node"
        )
        }
        other => format!("rendezvous node {node}: {other}"),
    };
    TransferError::new(kind, message)
}

fn claim_error(node: &str, e: ClientError) -> TransferError {
    match e {
        ClientError::Refused { code: ErrorCode::NameplateFull, .. } => TransferError::new(
            ErrorKind::WrongCode,
            "this code is already in use by two other parties on the rendezvous node; start \
             again with a new code",
        ),
        ClientError::Refused { code: ErrorCode::Serving, .. } => TransferError::new(
            ErrorKind::Network,
            "the sender serves receivers one after another and was still serving another at the \
             end of --wait (or has served its last); try again, or with a longer --wait",
        ),
        ClientError::Refused { code: ErrorCode::NameplateClosed, .. } => TransferError::new(
            ErrorKind::WrongCode,
            "this code was already used (or expired) on the rendezvous node; start again with a \
             new code",
        ),
        other => node_error(node, other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds samples of (datagrams arrived, frames decoded) per second; the first sample at
    /// which the relay is judged to alter packets, if any.
    fn judge(per_second: &[(u64, u64)], relay_only: bool) -> Option<usize> {
        let mut t = Tampering::default();
        let (mut relayed, mut frames) = (0u64, 0u64);
        let mut found = None;
        for (i, (r, f)) in [(0, 0)].iter().chain(per_second).enumerate() {
            relayed += r;
            frames += f;
            if t.sample(relayed, frames, relay_only) && found.is_none() {
                found = Some(i);
            }
        }
        found
    }

    #[test]
    fn a_healthy_relay_is_never_taken_for_an_altering_one() {
        // A busy relay with packets read before a sample and decoded after it (a standing
        // queue of up to 300 packets), then a pause with only keep-alives, then more data.
        let mut busy: Vec<(u64, u64)> = (0..20).map(|i| (20_000 + i * 7, 20_000)).collect();
        busy.push((0, 20_000 + 20 * 7 + 300));
        busy.extend(std::iter::repeat_n((0, 0), 4));
        busy.push((1, 1));
        busy.extend(std::iter::repeat_n((0, 0), 4));
        busy.extend((0..10).map(|_| (5_000, 5_300)));
        assert_eq!(judge(&busy, true), None);
    }

    #[test]
    fn a_relay_that_alters_everything_is_found_in_seconds() {
        // Good data, then every packet altered: a burst, then retransmissions backing off.
        let mut s = vec![(10_000, 10_500), (10_000 + 120, 10_000)];
        s.extend([(6, 0), (4, 0), (2, 0), (0, 0), (2, 0), (0, 0)]);
        assert_eq!(judge(&s, true), Some(5), "three seconds after the last frame");
    }

    #[test]
    fn a_relay_that_alters_only_data_packets_is_found_too() {
        // The small packets (acknowledgements of keep-alives, one frame each) still pass every
        // five seconds; everything that carries data is altered.
        let mut s = vec![(10_000, 10_500), (10_000 + 120, 10_000)];
        for _ in 0..4 {
            s.extend([(3, 1), (2, 0), (1, 0), (1, 0), (0, 0)]);
        }
        assert!(judge(&s, true).is_some_and(|at| at <= 6), "{:?}", judge(&s, true));
    }

    #[test]
    fn a_few_altered_packets_cost_retransmissions_not_the_transfer() {
        let s: Vec<(u64, u64)> = (0..30).map(|i| (10_000 + (i % 3), 10_000)).collect();
        assert_eq!(judge(&s, true), None);
    }

    #[test]
    fn only_the_relay_alone_is_judged() {
        let s = vec![(100, 0); 10];
        assert_eq!(judge(&s, false), None);
    }
}
