//! Meeting through a rendezvous node (DESIGN §4, rendezvous mode).
//!
//! 1. Bind the data endpoint; reach the node from it over QUIC (so the node observes the data
//!    socket's mapping), or over TCP when UDP gets no answer within [`UDP_BOUND`].
//! 2. Sender: allocate a nameplate (or claim the one in a chosen code). Receiver: claim it.
//!    Wait for the other side.
//! 3. PAKE and key confirmation through the mailbox ([`Session::new_deferred`]). A wrong code
//!    ends here on both sides.
//! 4. Exchange sealed [`Candidates`]: addresses, certificate fingerprint, relay willingness.
//! 5. Try both paths at once. Direct: the receiver connects to the sender's candidates.
//!    Relay: both open a relay stream paired by the key-derived token and run the same QUIC
//!    connection through it ([`crate::net::relay`]). The receiver prefers direct: it takes
//!    the relay only when direct failed, or did not succeed within [`DIRECT_GRACE`] of the
//!    relay being ready. The sender takes whichever connection opens the control stream.
//!    Connections are pinned to the fingerprint from the candidates, and the session's hello
//!    binds the winning connection as on the LAN.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p_copy_rendezvous::client::{Client, ClientError, RelayOpener};
use p2p_copy_rendezvous::wire::{ErrorCode, NodeMsg};
use rand::rngs::OsRng;
use tokio::sync::watch;

use super::control::ControlStream;
use super::{Note, Observer, PathKind, TransferError};
use crate::code::Code;
use crate::crypto::{Keys, Role};
use crate::error::ErrorKind;
use crate::net::candidates;
use crate::net::quic::{Node, Tuning};
use crate::net::relay::{RelayLink, RelayState};
use crate::proto::{Config, Event, Session, MAILBOX_LANE};
use crate::wire::control::Candidates;
use crate::wire::frame;

/// How long QUIC to the node may go unanswered before TCP is tried.
pub const UDP_BOUND: Duration = Duration::from_secs(3);
/// Bound on every exchange with the node.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a direct connection attempt may take.
const DIRECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time between the starts of direct attempts to successive candidates.
const STAGGER: Duration = Duration::from_millis(20);
/// How long the receiver still waits for the direct path once the relay is ready.
pub const DIRECT_GRACE: Duration = Duration::from_secs(3);
/// How long a connection may still come once the other side left the nameplate.
const LEFT_GRACE: Duration = Duration::from_secs(3);
/// How long a relay stream waits for the other side's.
const PAIR_WAIT: Duration = Duration::from_secs(20);

/// Where and how to meet.
#[derive(Debug, Clone)]
pub struct Rendezvous {
    /// The node, `HOST:PORT`.
    pub node: String,
    /// The node's access token, if it requires one.
    pub token: Option<String>,
    /// Use only the relay (diagnosis).
    pub force_relay: bool,
    /// Never use the relay (diagnosis; fails where direct is impossible).
    pub no_relay: bool,
}

/// What one side brings to the meeting.
pub(crate) struct Plan<'a> {
    pub role: Role,
    /// The code (for a sender with a generated code, its nameplate is replaced by the one the
    /// node allocates).
    pub code: Code,
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
}

/// The connection the transfer runs on, and what must live as long as it.
pub(crate) struct Met {
    /// The endpoint of the winning path.
    pub node: Node,
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    /// Bound to `conn`; its hello is queued.
    pub session: Session,
    pub path: PathKind,
    /// From the exchange of candidates to the chosen connection.
    pub punch: Duration,
    relay: Option<watch::Receiver<RelayState>>,
    _keep: Keep,
}

/// Kept alive for the transfer: the node session (it carries the relay stream), the relay
/// link, and the data endpoint when the relay won.
struct Keep {
    /// The node session, while it carries the relay stream (QUIC).
    client: Option<Client>,
    link: Option<RelayLink>,
    other: Option<Node>,
}

impl Met {
    /// Splits into what the transfer uses and what it must keep alive.
    pub fn into_parts(
        self,
    ) -> (Node, quinn::Connection, Session, quinn::SendStream, quinn::RecvStream, PathKind, Guard)
    {
        let guard = Guard { relay: self.relay, punch: Some(self.punch), _keep: Some(self._keep) };
        (self.node, self.conn, self.session, self.send, self.recv, self.path, guard)
    }
}

/// Keeps the node session and relay alive for the transfer, and watches the relay.
#[allow(missing_debug_implementations)]
pub(crate) struct Guard {
    relay: Option<watch::Receiver<RelayState>>,
    punch: Option<Duration>,
    _keep: Option<Keep>,
}

impl Guard {
    /// Nothing to keep (the LAN path).
    pub fn none() -> Guard {
        Guard { relay: None, punch: None, _keep: None }
    }

    /// Ends what the transfer kept open at the node (the relay stream's connection), telling the
    /// node at once rather than leaving it to time out.
    pub async fn close(self) {
        let Some(keep) = self._keep else { return };
        drop(keep.link);
        if let Some(client) = &keep.client {
            client.close();
        }
        if let Some(data) = &keep.other {
            let _ = tokio::time::timeout(Duration::from_secs(1), data.endpoint.wait_idle()).await;
        }
    }

    /// Rendezvous mode: how long finding the path took.
    pub fn punch(&self) -> Option<Duration> {
        self.punch
    }

    /// Resolves if the relayed path breaks: damaged data (integrity) or a closed relay.
    /// Never resolves on the direct path.
    pub async fn trouble(&self) -> TransferError {
        let Some(mut state) = self.relay.clone() else { return std::future::pending().await };
        let bad = state.wait_for(|s| *s != RelayState::Up).await.map(|s| *s);
        match bad {
            Ok(RelayState::Tampered) => TransferError::new(
                ErrorKind::Integrity,
                "data relayed through the rendezvous node failed authentication: the relay \
                 altered it; nothing altered was written",
            ),
            _ => TransferError::network("the rendezvous node closed the relayed connection"),
        }
    }
}

/// What a side needs to run the transfer: the endpoint, the connection, the control stream
/// (its hello queued), the path, and what must live as long as the transfer.
pub(crate) type Joined = (Node, quinn::Connection, ControlStream, PathKind, Guard);

/// [`meet`], then the control stream on the chosen connection; ends early on a stop request.
pub(crate) async fn join(
    plan: Plan<'_>,
    observer: &Arc<dyn Observer>,
    stop: &mut super::Stop,
) -> Result<Joined, TransferError> {
    let (met, _code) = tokio::select! {
        met = meet(plan, observer) => met?,
        e = stop.requested() => return Err(e),
    };
    let (node, conn, session, send, recv, path, guard) = met.into_parts();
    Ok((node, conn, ControlStream::new(session, send, recv), path, guard))
}

/// Meets the other side through the node. On success the session is secured up to its
/// hello; the caller wraps it in a control stream and goes on as on the LAN.
pub(crate) async fn meet(
    plan: Plan<'_>,
    observer: &Arc<dyn Observer>,
) -> Result<(Met, Code), TransferError> {
    let rv = plan.rendezvous;
    let sender = plan.role == Role::Sender;
    // Both sides serve: each dials the other's candidates (hole punching).
    let any_v4 = SocketAddr::from(([0, 0, 0, 0], 0));
    let data = match plan.socket.clone() {
        Some(socket) => Node::with_socket(socket, plan.tuning, true)?,
        // The default: both address families, so IPv6 can go direct where IPv4 cannot.
        None if plan.bind == any_v4 => match Node::bind_dual_stack(plan.tuning, true) {
            Some(node) => node,
            None => Node::bind(plan.bind, plan.tuning, true)?,
        },
        None => Node::bind(plan.bind, plan.tuning, true)?,
    };
    let dual = data.local_addr().is_ok_and(|a| a.is_ipv6() && a.ip().is_unspecified());
    let node_addr = resolve(&rv.node, dual).await?;
    let mut client =
        Client::connect_any(&data.endpoint, node_addr, rv.token.clone(), UDP_BOUND, NODE_TIMEOUT)
            .await
            .map_err(|e| node_error(&rv.node, e))?;
    tracing::debug!(node = %node_addr, tcp = client.is_tcp(), observed = %client.observed(), "at the node");

    let outcome = async {
        // Nameplate.
        let (code, mut present) = if sender && !plan.claim {
            let n = client.allocate().await.map_err(|e| node_error(&rv.node, e))?;
            let code =
                plan.code.with_nameplate(n).map_err(|e| TransferError::internal(e.to_string()))?;
            (code, false)
        } else {
            let present =
                client.claim(plan.code.nameplate()).await.map_err(|e| claim_error(&rv.node, e))?;
            (plan.code.clone(), present)
        };
        if sender {
            observer.note(Note::Code(&code));
        } else {
            observer.note(Note::Searching { nameplate: code.nameplate() });
        }

        // The other side.
        let mut early = Vec::new();
        let give_up = Instant::now() + plan.wait;
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
                    return Err(TransferError::network(if sender {
                        format!(
                            "no receiver came within {}s; the code is no longer valid",
                            plan.wait.as_secs()
                        )
                    } else {
                        format!(
                            "nobody is sending with nameplate {} on the rendezvous node {} \
                             (waited {}s); check the code",
                            code.nameplate(),
                            rv.node,
                            plan.wait.as_secs()
                        )
                    }));
                }
                Err(e) => return Err(node_error(&rv.node, e)),
            }
        }

        // PAKE and confirmation through the mailbox.
        let mut session = Session::new_deferred(
            plan.role,
            &code,
            plan.config.clone(),
            Instant::now(),
            &mut OsRng,
        );
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
        client.post(sealed).await.map_err(|e| node_error(&rv.node, e))?;
        let mut theirs = match inbox.pop_front() {
            Some(b) => b,
            None => next_message(&mut client, &session, &rv.node).await?,
        };
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

        let use_relay = mine.relay && peer.relay;
        let use_direct = !rv.force_relay && !peer.addrs.is_empty() && !mine.addrs.is_empty();
        if !use_relay && !use_direct {
            return Err(TransferError::new(
                ErrorKind::Usage,
                "no path is allowed: one side forces the relay and the other refuses it",
            ));
        }
        let deadline = session.poll_timeout().unwrap_or_else(|| Instant::now() + NODE_TIMEOUT);
        let punch_started = Instant::now();
        let opener = client.relay_opener();
        let paths = Paths { data, relay: &opener, keys: &keys, tuning: plan.tuning, peer: &peer };
        let connect = async {
            if sender {
                paths.accept(use_direct, use_relay).await
            } else {
                paths.connect(use_direct, use_relay).await
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
                // A path may still be about to come up (a side that connected releases its
                // nameplate at once).
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
        })??;
        let punch = punch_started.elapsed();
        tracing::debug!(path = won.path.as_str(), peer = %won.conn.remote_address(), ?punch, "path chosen");
        Ok::<_, TransferError>((session, won, code, punch))
    }
    .await;
    let (mut session, won, code, punch) = match outcome {
        Ok(o) => o,
        Err(e) => {
            // Whatever we posted (our key confirmation, say) must reach the other side, so
            // that it fails for the same reason rather than on our vanishing.
            client.finish().await;
            return Err(e);
        }
    };
    // Through the relay, the peer's address is the node's.
    let via = if won.path == PathKind::Relay { client.node() } else { won.conn.remote_address() };
    let via = SocketAddr::new(via.ip().to_canonical(), via.port());
    observer.note(Note::Connected { peer: via, path: won.path });
    session.set_channel(Instant::now(), won.node.channel(&won.conn)?)?;
    // The nameplate has done its job: free it (and, when nothing more goes through the node,
    // the connection to it).
    let _ = tokio::time::timeout(Duration::from_secs(2), client.release()).await;
    let keep_client = won.path == PathKind::Relay && !client.is_tcp();
    let client = if keep_client {
        Some(client)
    } else {
        tokio::spawn(client.finish());
        None
    };
    let relay = won.link.as_ref().map(|l| l.state.clone());
    let met = Met {
        node: won.node,
        conn: won.conn,
        send: won.send,
        recv: won.recv,
        session,
        path: won.path,
        punch,
        relay,
        _keep: Keep { client, link: won.link, other: won.other },
    };
    Ok((met, code))
}

/// The winning connection of [`Paths`].
struct Won {
    node: Node,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    path: PathKind,
    link: Option<RelayLink>,
    /// The data endpoint, when the relay won (it carries the node connection).
    other: Option<Node>,
}

struct Paths<'a> {
    data: Node,
    relay: &'a RelayOpener,
    keys: &'a Keys,
    tuning: &'a Tuning,
    peer: &'a Candidates,
}

type Relayed = (Node, RelayLink);

impl Paths<'_> {
    /// A relayed endpoint, once the node paired our relay stream with the peer's.
    async fn relay(&self, serve: bool) -> Result<Relayed, TransferError> {
        let side = u8::from(!serve);
        let stream = self
            .relay
            .relay(self.keys.relay_token(), side, PAIR_WAIT)
            .await
            .map_err(|e| node_error(&self.relay.node().to_string(), e))?;
        let link = RelayLink::new(stream, self.keys);
        let node = self.data.relayed(link.socket.clone(), self.tuning, serve)?;
        Ok((node, link))
    }

    /// Receiver: connect directly and through the relay at once; prefer direct.
    async fn connect(self, direct: bool, relay: bool) -> Result<Won, TransferError> {
        let fp = Some(self.peer.fingerprint);
        let direct_attempt = async {
            if !direct {
                return Err(TransferError::network("direct path not tried"));
            }
            let started = Instant::now();
            let outgoing = self.data.connect_to(&self.peer.addrs, DIRECT_TIMEOUT, fp, STAGGER);
            // The sender dials our candidates at the same time (both punch through their NAT):
            // its connection counts as well.
            let incoming = async {
                tokio::time::timeout(DIRECT_TIMEOUT, first_connection(&self.data.endpoint, fp))
                    .await
                    .ok()
                    .flatten()
            };
            tokio::pin!(outgoing, incoming);
            let mut incoming_done = false;
            let mut outgoing_error = None;
            let conn = loop {
                tokio::select! {
                    r = &mut outgoing, if outgoing_error.is_none() => match r {
                        Ok(conn) => break conn,
                        Err(e) if incoming_done => return Err(e.into()),
                        Err(e) => outgoing_error = Some(e),
                    },
                    c = &mut incoming, if !incoming_done => match c {
                        Some(conn) => break conn,
                        None => {
                            incoming_done = true;
                            if let Some(e) = outgoing_error.take() {
                                return Err(e.into());
                            }
                        }
                    },
                }
            };
            tracing::debug!(elapsed = ?started.elapsed(), peer = %conn.remote_address(), "direct path up");
            Ok(conn)
        };
        let relay_attempt = async {
            if !relay {
                return Err(TransferError::network("relay not used"));
            }
            let started = Instant::now();
            let (node, link) = self.relay(false).await?;
            let conn =
                node.connect_to(&[RelayLink::peer_addr()], NODE_TIMEOUT, fp, STAGGER).await?;
            tracing::debug!(elapsed = ?started.elapsed(), "relayed path up");
            Ok::<_, TransferError>((node, link, conn))
        };
        let mut direct_result: Option<Result<quinn::Connection, TransferError>> = None;
        let mut relay_result = None;
        let chosen = {
            tokio::pin!(direct_attempt, relay_attempt);
            loop {
                if let Some(Ok(_)) = &direct_result {
                    break true;
                }
                match (&direct_result, &relay_result) {
                    (Some(Err(_)), Some(Ok(_))) => break false,
                    (Some(Err(_)), Some(Err(_))) => {
                        let (Some(Err(d)), Some(Err(r))) = (direct_result, relay_result) else {
                            unreachable!()
                        };
                        return Err(both_failed(d, r, direct, relay));
                    }
                    _ => {}
                }
                let grace = async {
                    match relay_result {
                        Some(Ok(_)) => tokio::time::sleep(DIRECT_GRACE).await,
                        _ => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = &mut direct_attempt, if direct_result.is_none() => direct_result = Some(r),
                    r = &mut relay_attempt, if relay_result.is_none() => relay_result = Some(r),
                    () = grace => break false,
                }
            }
        };
        self.data.serve(false);
        let (node, conn, path, link, other) = if chosen {
            let Some(Ok(conn)) = direct_result else { unreachable!() };
            (self.data, conn, PathKind::Direct, None, None)
        } else {
            let Some(Ok((node, link, conn))) = relay_result else { unreachable!() };
            (node, conn, PathKind::Relay, Some(link), Some(self.data))
        };
        let (send, recv) = tokio::time::timeout(NODE_TIMEOUT, conn.open_bi())
            .await
            .map_err(|_| TransferError::network("the sender did not let us open a stream"))?
            .map_err(TransferError::from)?;
        Ok(Won { node, conn, send, recv, path, link, other })
    }

    /// Sender: serve both paths; the first connection from the receiver's certificate that
    /// opens the control stream wins.
    async fn accept(self, direct: bool, relay: bool) -> Result<Won, TransferError> {
        let fp = Some(self.peer.fingerprint);
        if !direct {
            self.data.serve(false);
        }
        enum Outcome {
            Direct(quinn::Connection, quinn::SendStream, quinn::RecvStream),
            Relay(Box<Relayed>, quinn::Connection, quinn::SendStream, quinn::RecvStream),
        }
        let outcome = {
            let direct_wait = async {
                if !direct {
                    return std::future::pending().await;
                }
                let incoming = super::send::first_session(&self.data.endpoint, fp);
                // Dial the receiver's candidates too, so that both NATs see outgoing packets
                // (hole punching); the receiver may open the control stream on this one.
                let outgoing = async {
                    let conn = self
                        .data
                        .connect_to(&self.peer.addrs, DIRECT_TIMEOUT, fp, STAGGER)
                        .await
                        .ok()?;
                    let (send, recv) = conn.accept_bi().await.ok()?;
                    Some((conn, send, recv))
                };
                tokio::select! {
                    s = incoming => s,
                    Some(s) = outgoing => Some(s),
                }
            };
            let relay_wait = async {
                if !relay {
                    return Err(TransferError::network("relay not used"));
                }
                let (node, link) = self.relay(true).await?;
                let session = super::send::first_session(&node.endpoint, fp).await;
                Ok::<_, TransferError>((node, link, session))
            };
            tokio::pin!(direct_wait, relay_wait);
            let mut relay_done = false;
            loop {
                tokio::select! {
                    s = &mut direct_wait => {
                        let Some((conn, send, recv)) = s else {
                            return Err(TransferError::internal("the QUIC endpoint closed unexpectedly"));
                        };
                        break Outcome::Direct(conn, send, recv);
                    }
                    r = &mut relay_wait, if !relay_done => {
                        relay_done = true;
                        match r {
                            Ok((node, link, Some((conn, send, recv)))) => {
                                break Outcome::Relay(Box::new((node, link)), conn, send, recv);
                            }
                            Ok((_, _, None)) => {
                                return Err(TransferError::internal("the relayed endpoint closed unexpectedly"));
                            }
                            Err(e) if !direct => return Err(e),
                            Err(e) => tracing::debug!(error = %e, "relay failed; waiting for the direct path"),
                        }
                    }
                }
            }
        };
        // One connection per code: nothing else gets a handshake.
        self.data.serve(false);
        let won = match outcome {
            Outcome::Direct(conn, send, recv) => Won {
                node: self.data,
                conn,
                send,
                recv,
                path: PathKind::Direct,
                link: None,
                other: None,
            },
            Outcome::Relay(relayed, conn, send, recv) => {
                let (node, link) = *relayed;
                Won {
                    node,
                    conn,
                    send,
                    recv,
                    path: PathKind::Relay,
                    link: Some(link),
                    other: Some(self.data),
                }
            }
        };
        // One connection per code: nothing else gets a handshake.
        won.node.serve(false);
        if let Some(other) = &won.other {
            other.serve(false);
        }
        Ok(won)
    }
}

/// The first incoming connection from the certificate `fp` (others are closed).
async fn first_connection(
    endpoint: &quinn::Endpoint,
    fp: Option<[u8; 32]>,
) -> Option<quinn::Connection> {
    loop {
        let incoming = endpoint.accept().await?;
        let Ok(Ok(conn)) = tokio::time::timeout(DIRECT_TIMEOUT, incoming).await else { continue };
        match fp {
            Some(fp) if crate::net::quic::peer_fingerprint(&conn).ok() != Some(fp) => {
                conn.close(0u32.into(), b"not you");
            }
            _ => return Some(conn),
        }
    }
}

fn both_failed(d: TransferError, r: TransferError, direct: bool, relay: bool) -> TransferError {
    match (direct, relay) {
        (true, false) => d,
        (false, true) => r,
        _ => TransferError::network(format!(
            "could not reach the other side: directly: {}; through the relay: {}",
            d.message, r.message
        )),
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
    let bad = || TransferError::new(ErrorKind::Protocol, "the other side sent a malformed message");
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
        format!("the rendezvous node sent an unexpected {msg:?}"),
    )
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
        ClientError::Refused { code: ErrorCode::NameplateClosed, .. } => TransferError::new(
            ErrorKind::WrongCode,
            "this code was already used (or expired) on the rendezvous node; start again with a \
             new code",
        ),
        other => node_error(node, other),
    }
}
