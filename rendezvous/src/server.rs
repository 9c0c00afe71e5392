//! The node's server: a thin async driver around [`Table`] and [`Relays`].
//!
//! 1. [`serve`] accepts connections (bounded in number) on the QUIC endpoint and the TCP
//!    listener the caller bound ([`bind`]). A QUIC connection attempt from an address not
//!    validated yet gets a stateless Retry first while [`ServerConfig::retry_above`]
//!    handshakes are in progress. A connection is charged to its source's per-address slots
//!    only once its address is validated (by the Retry, by QUIC's handshake completing, by
//!    TCP's), so spoofed source addresses never use up anyone's slots.
//! 2. Each QUIC stream, and each TCP connection (TLS, see [`crate::tcp`]), starts with one
//!    frame: `Hello` makes it a mailbox session, `Relay` a relay stream. A mailbox task reads
//!    frames, decodes them and hands them to the table task; a writer drains its bounded
//!    outbox. Relay streams go to [`Relays`], and so do relay datagrams, which the node's
//!    socket takes out of what reaches its QUIC endpoint
//!    (`relay::socket::NodeSocket`).
//! 3. The table task owns the [`Table`]: it applies events in arrival order, fires its timers
//!    and routes its outputs to the outboxes. A client whose outbox is full (it does not read)
//!    is closed rather than buffered without bound.
//! 4. When the shutdown future resolves, new claims are refused, the endpoint stops accepting,
//!    health turns to 503, and open connections get a bounded grace period before they are
//!    closed.
//!
//! Every wait is bounded: the handshake and first stream (10 s each), QUIC's idle timeout
//! (30 s) for silent clients, and the grace period at shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use crate::config::{ConfigError, LogFormat, NodeArgs, RelayLimits, ServerConfig, TlsFiles};

use crate::auth::{self, Channel};
use crate::client::ALPN;
use crate::metrics::{self, GaugeGuard, Metrics};
use crate::relay::socket::NodeSocket;
use crate::relay::{read_first, Attach, Reader, Relays, Writer};
use crate::table::{ClientId, Counts, Output, Random, SourceKey, Table};
use crate::tcp::Identity;
use crate::wire::{self, ClientMsg, ErrorCode, NodeMsg, VERSION};

/// Messages buffered for one client before it counts as not reading.
const OUTBOX: usize = 64;
/// Receive and send buffers requested for the node's UDP socket.
const SOCKET_BUFFER: usize = 4 << 20;
/// Events buffered towards the table task.
const EVENTS: usize = 4096;
/// Time allowed for a connection's handshake and for its first stream, and for each write.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Receive window of a client's QUIC connection and of each of its streams: they carry
/// mailbox messages only (relayed packets travel as datagrams).
const MAILBOX_WINDOW: u32 = 64 * 1024;

/// Failures starting the node.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// TLS or certificate setup failed.
    #[error("could not set up TLS: {0}")]
    Tls(String),
    /// The UDP socket could not be bound.
    #[error("could not listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The settings are unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Binds and serves the node `config` describes until `shutdown` resolves, with its metrics
/// listener if it has one.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let listeners = bind(config.listen, &config)?;
    let local = listeners
        .local_addr()
        .map_err(|source| ServerError::Bind { addr: config.listen, source })?;
    let fingerprint = listeners.quic.identity.0.first().map(|c| auth::fingerprint(c));
    let http = match config.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })?,
        ),
        None => None,
    };
    tracing::info!(
        listen = %local,
        tcp = listeners.tcp.is_some(),
        tls_certificate = config.tls.is_some(),
        certificate_sha256 = %fingerprint.as_ref().map(auth::fingerprint_hex).unwrap_or_default(),
        token = config.limits.token.is_some(),
        "rendezvous node serving"
    );
    if let Some(addr) = config.metrics {
        tracing::info!(metrics = %addr, "metrics and health served over HTTP");
    }
    let counters = config.metrics_handle.clone();
    let (served, served_rx) = tokio::sync::oneshot::channel::<()>();
    let node = async {
        serve(listeners, config, shutdown).await;
        let _ = served.send(());
    };
    // The metrics listener outlives the grace period, so health reports it.
    let http = async {
        if let Some(listener) = http {
            metrics::serve(listener, counters, async {
                let _ = served_rx.await;
            })
            .await;
        }
    };
    tokio::join!(node, http);
    tracing::info!("rendezvous node stopped");
    Ok(())
}

/// The node's QUIC endpoint and the relays that share its socket.
#[derive(Debug)]
pub struct QuicListener {
    /// The endpoint.
    pub endpoint: quinn::Endpoint,
    relays: Arc<Relays>,
    /// The certificate chain and key the endpoint presents (the TCP listener presents them
    /// too).
    identity: Identity,
}

impl QuicListener {
    /// The UDP address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }
}

/// A QUIC endpoint for the node on any socket quinn can use (a simulated network in tests).
pub fn endpoint_on(
    socket: Arc<dyn quinn::AsyncUdpSocket>,
    config: &ServerConfig,
) -> Result<QuicListener, ServerError> {
    let runtime = quinn::default_runtime()
        .ok_or_else(|| ServerError::Tls("no async runtime for QUIC".to_owned()))?;
    let addr = socket.local_addr().map_err(|source| ServerError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let relays = Arc::new(Relays::with(
        RelayLimits { per_source: config.limits.clients_per_ip, ..config.relay.clone() },
        Some(socket.clone()),
        config.relay_tap.clone(),
        config.metrics_handle.clone(),
    ));
    let socket = Arc::new(NodeSocket::new(socket, relays.clone()));
    let identity = identity(config)?;
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(server_config(config, &identity)?),
        socket,
        runtime,
    )
    .map_err(|source| ServerError::Bind { addr, source })?;
    Ok(QuicListener { endpoint, relays, identity })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn signalled() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// The node's certificate chain and key: the operator's (`--tls-cert`/`--tls-key`), or a
/// fresh self-signed one (another at every start, so clients can only pin a node that has
/// the operator's).
fn identity(config: &ServerConfig) -> Result<Identity, ServerError> {
    if let Some(files) = &config.tls {
        return Ok(files.load()?);
    }
    let tls = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let certified = rcgen::generate_simple_self_signed(vec!["p2p-copy-rendezvous".to_owned()])
        .map_err(|e| tls(&e))?;
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    Ok((vec![cert], key))
}

/// How long a Retry token stays good (see [`server_config`]).
const RETRY_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// The node's QUIC settings, presenting `identity`. Clients only authenticate the node when
/// they pin its certificate (`--rendezvous-fingerprint`): everything they exchange through it
/// is protected end to end by the code, and the access token is proved, never sent
/// ([`crate::auth`]).
fn server_config(
    config: &ServerConfig,
    identity: &Identity,
) -> Result<quinn::ServerConfig, ServerError> {
    let tls = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let (chain, key) = (identity.0.clone(), identity.1.clone_key());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(&e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| tls(&e))?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(crypto).map_err(|e| tls(&e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        // The mailbox stream plus a few relay streams.
        .max_concurrent_bidi_streams(4u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window(MAILBOX_WINDOW.into())
        .receive_window(MAILBOX_WINDOW.into())
        .send_window(MAILBOX_WINDOW.into());
    if let Ok(idle) = config.idle_timeout.try_into() {
        transport.max_idle_timeout(Some(idle));
    }
    server.transport_config(Arc::new(transport));
    // A client answers a Retry with the token in every copy of its next Initial; on a lossy
    // path the copies back off (1, 2, 4, 8 s...), and quinn's default 15 s lets a token
    // expire before a late copy arrives, which ends that client with INVALID_TOKEN instead of
    // a new Retry. The token stays bound to the client's address and first connection ID.
    server.retry_token_lifetime(RETRY_TOKEN_LIFETIME);
    Ok(server)
}

/// Binds a QUIC endpoint for the node on `addr` with its certificate (the operator's, or a
/// fresh self-signed one), and the relays that share its socket.
pub fn endpoint(addr: SocketAddr, config: &ServerConfig) -> Result<QuicListener, ServerError> {
    let bind = |source| ServerError::Bind { addr, source };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(bind)?;
    // A burst of handshakes (hundreds of clients at once) overflows the default buffer; lost
    // Initial packets are only resent after a growing backoff. The kernel caps the request
    // at net.core.rmem_max.
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(error = %e, "could not enlarge the UDP receive buffer");
    }
    // Relayed batches leave in bursts too.
    if let Err(e) = socket.set_send_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(error = %e, "could not enlarge the UDP send buffer");
    }
    socket.bind(&addr.into()).map_err(bind)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| ServerError::Tls("no async runtime for QUIC".to_owned()))?;
    let socket = runtime.wrap_udp_socket(socket.into()).map_err(bind)?;
    endpoint_on(socket, config)
}

enum Event {
    Connect {
        client: ClientId,
        addr: SocketAddr,
        channel: Option<Channel>,
        outbox: mpsc::Sender<Routed>,
    },
    Message {
        client: ClientId,
        msg: ClientMsg,
    },
    Disconnect {
        client: ClientId,
    },
}

/// What the table task sends a connection.
enum Routed {
    Msg(NodeMsg),
    Close,
}

/// The node's sockets: QUIC on UDP and, optionally, TCP on the same port number.
#[derive(Debug)]
pub struct Listeners {
    /// The QUIC endpoint, with the relays that share its socket.
    pub quic: QuicListener,
    /// The TCP listener for clients that cannot use UDP.
    pub tcp: Option<tokio::net::TcpListener>,
}

impl Listeners {
    /// The UDP address (the TCP listener has the same port).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.quic.local_addr()
    }
}

/// Binds QUIC on `addr` and, when `config.tcp` is set, TCP on the same address and port (for
/// port 0, on the port the UDP socket got).
pub fn bind(addr: SocketAddr, config: &ServerConfig) -> Result<Listeners, ServerError> {
    let quic = endpoint(addr, config)?;
    let tcp = if config.tcp {
        let local = quic.local_addr().map_err(|source| ServerError::Bind { addr, source })?;
        let listener = std::net::TcpListener::bind(local)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|source| ServerError::Bind { addr: local, source })?;
        Some(listener)
    } else {
        None
    };
    Ok(Listeners { quic, tcp })
}

/// Serves the node until `shutdown` resolves, then drains for the grace period.
pub async fn serve(listeners: Listeners, config: ServerConfig, shutdown: impl Future<Output = ()>) {
    let Listeners { quic: QuicListener { endpoint, relays, identity }, tcp } = listeners;
    let tls = match crate::tcp::acceptor(identity) {
        Ok(tls) => Some(tls),
        Err(e) => {
            tracing::error!(error = %e, "TCP listener disabled: no usable TLS configuration");
            None
        }
    };
    let tcp = tcp.zip(tls);
    let (events_tx, events_rx) = mpsc::channel(EVENTS);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Set once the grace period is over: every connection task closes and ends.
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let counters = config.metrics_handle.clone();
    // Nameplate numbers from the OS-seeded CSPRNG: nobody can predict the next one.
    let table = Table::new(config.limits.clone(), Random::new(rand::random));
    let mut table_task =
        tokio::spawn(run_table(table, events_rx, stop_rx, relays.clone(), counters.clone()));
    let shared = Arc::new(Shared {
        events: events_tx,
        relays,
        next_id: AtomicU64::new(1),
        token: config.limits.token.clone(),
        metrics: counters.clone(),
        conns: Arc::default(),
        per_ip: config.limits.clients_per_ip.saturating_mul(2),
        handshakes: AtomicUsize::new(0),
        closing: closing_rx,
    });
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    // Set when shutdown starts: the end of the grace period.
    let grace = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
    tokio::pin!(grace);
    let mut draining = false;
    loop {
        let tcp_accept = async {
            match &tcp {
                Some((listener, _)) => listener.accept().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let validated = incoming.remote_address_validated();
                let busy = shared.handshakes.load(Ordering::Relaxed) >= config.retry_above;
                if !validated && busy && incoming.may_retry() {
                    // Stateless: a spoofed source costs the node one small packet, no state.
                    Metrics::bump(&counters.quic_retries_total);
                    if let Err(e) = incoming.retry() {
                        e.into_incoming().ignore();
                    }
                    continue;
                }
                if connections.len() >= config.max_connections {
                    Metrics::bump(&counters.clients_refused_total);
                    incoming.refuse();
                    continue;
                }
                // A source address is charged once it is validated: by a Retry now, or else
                // by the handshake completing (serve_connection).
                let slot = if validated {
                    let Some(slot) = shared.conns.take(incoming.remote_address().ip(), shared.per_ip) else {
                        Metrics::bump(&counters.clients_refused_total);
                        incoming.refuse();
                        continue;
                    };
                    Some(slot)
                } else {
                    None
                };
                let open = GaugeGuard::new(counters.clone(), |m| &m.connections_quic);
                let served = serve_connection(incoming, slot, shared.clone());
                connections.spawn(async move { served.await; drop(open) });
            }
            accepted = tcp_accept => {
                let Some((stream, addr)) = accepted else {
                    // Out of file descriptors, say: pause rather than spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                // The TCP handshake validated the address.
                let slot = shared.conns.take(addr.ip(), shared.per_ip);
                let Some(slot) = slot.filter(|_| connections.len() < config.max_connections) else {
                    Metrics::bump(&counters.clients_refused_total);
                    continue;
                };
                if let Some((_, tls)) = &tcp {
                    let open = GaugeGuard::new(counters.clone(), |m| &m.connections_tcp);
                    let served = crate::tcp::serve(
                        stream,
                        addr,
                        tls.clone(),
                        config.tcp_plaintext,
                        shared.clone(),
                    );
                    let mut closing = shared.closing.clone();
                    connections.spawn(async move {
                        tokio::select! {
                            () = served => {}
                            _ = closing.wait_for(|&c| c) => {}
                        }
                        drop((open, slot));
                    });
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {
                if draining && connections.is_empty() {
                    break;
                }
            }
            () = &mut shutdown, if !draining => {
                // Still accepting during the grace period, so that new clients hear that the
                // node is shutting down (the table refuses their nameplates, the relay their
                // streams) instead of finding nothing there.
                tracing::info!(connections = connections.len(), "shutting down: refusing new sessions");
                counters.shutting_down.store(true, std::sync::atomic::Ordering::Relaxed);
                shared.relays.close();
                let _ = stop_tx.send(true);
                draining = true;
                grace.as_mut().reset(tokio::time::Instant::now() + config.grace);
                if connections.is_empty() {
                    break;
                }
            }
            () = &mut grace, if draining => {
                tracing::info!(left = connections.len(), "grace period over: closing remaining sessions");
                break;
            }
        }
    }
    endpoint.set_server_config(None);
    drop(tcp);
    // Each connection task closes its connection with the reason and ends. Aborting them
    // instead would drop the last handle of each connection, which quinn closes at once
    // without a reason, before its driver got to the endpoint's close below: the client could
    // not tell a shutdown from a lost network.
    let _ = closing_tx.send(true);
    endpoint.close(0u32.into(), crate::client::SHUTDOWN_REASON);
    let ended = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(1), ended).await;
    connections.shutdown().await;
    drop(shared);
    let _ = tokio::time::timeout(Duration::from_secs(1), &mut table_task).await;
    table_task.abort();
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

async fn run_table(
    mut table: Table,
    mut events: mpsc::Receiver<Event>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    relays: Arc<Relays>,
    counters: Arc<Metrics>,
) {
    let mut outboxes: std::collections::HashMap<ClientId, mpsc::Sender<Routed>> =
        std::collections::HashMap::new();
    loop {
        let timer = table.poll_timeout();
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { return };
                let now = Instant::now();
                match ev {
                    Event::Connect { client, addr, channel, outbox } => match match channel {
                        Some(channel) => table.connect_bound(now, client, addr, channel),
                        None => table.connect(now, client, addr),
                    } {
                        Ok(()) => { outboxes.insert(client, outbox); }
                        Err(code) => {
                            Metrics::bump(&counters.clients_refused_total);
                            let _ = outbox.try_send(Routed::Msg(NodeMsg::Error {
                                code,
                                message: "too many connections from your address".into(),
                            }));
                            let _ = outbox.try_send(Routed::Close);
                        }
                    },
                    Event::Message { client, msg } => table.handle(now, client, msg),
                    Event::Disconnect { client } => {
                        table.disconnect(now, client);
                        outboxes.remove(&client);
                    }
                }
            }
            () = sleep_until(timer) => table.handle_timeout(Instant::now()),
            changed = stop.changed() => {
                if changed.is_ok() && *stop.borrow() { table.shutting_down(); }
            }
        }
        let open = i64::try_from(table.nameplates()).unwrap_or(i64::MAX);
        counters.nameplates_open.store(open, std::sync::atomic::Ordering::Relaxed);
        let guesses = table.suspected_guesses();
        counters.suspected_guesses_total.store(guesses, std::sync::atomic::Ordering::Relaxed);
        while let Some(out) = table.poll_output() {
            counters.observe(&out);
            let (client, routed) = match out {
                Output::Send { to, msg } => (to, Routed::Msg(msg)),
                Output::Close { client } => (client, Routed::Close),
                Output::Ticket { to, pairing, side } => {
                    let msg = match relays.grant(pairing, side) {
                        Ok(ticket) => NodeMsg::RelayTicket { ticket },
                        Err((code, message)) => NodeMsg::Error { code, message },
                    };
                    (to, Routed::Msg(msg))
                }
            };
            let Some(outbox) = outboxes.get(&client) else { continue };
            if outbox.try_send(routed).is_err() {
                // It does not read what it is sent: drop it rather than buffer without bound.
                tracing::debug!(client, "outbox full: closing");
                outboxes.remove(&client);
                table.disconnect(Instant::now(), client);
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// What every connection and stream task shares.
pub(crate) struct Shared {
    events: mpsc::Sender<Event>,
    relays: Arc<Relays>,
    next_id: AtomicU64,
    token: Option<String>,
    metrics: Arc<Metrics>,
    conns: Arc<Conns>,
    /// Connections per source (at the narrowest level) counted in `conns`.
    per_ip: usize,
    /// QUIC connections in their handshake.
    handshakes: AtomicUsize,
    /// Turns true when the node closes its remaining connections.
    closing: tokio::sync::watch::Receiver<bool>,
}

/// Counts one QUIC handshake in progress while it lives.
struct Handshaking<'a>(&'a AtomicUsize);

impl<'a> Handshaking<'a> {
    fn new(count: &'a AtomicUsize) -> Handshaking<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        Handshaking(count)
    }
}

impl Drop for Handshaking<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connections (QUIC and TCP) per source, counted once the source address is validated: a
/// bound even before a client says hello. Sources are hierarchical as in the table (IPv4 address; IPv6 /64, and its /56
/// and /48 with 4 and 16 times the cap, [`crate::table::V6_LEVELS`]).
#[derive(Debug, Default)]
pub(crate) struct Conns(std::sync::Mutex<Counts>);

impl Conns {
    fn take(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<ConnSlot> {
        let mut counts = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let keys = counts.take(ip, max)?;
        Some(ConnSlot { conns: self.clone(), keys })
    }
}

/// One counted connection; released on drop.
pub(crate) struct ConnSlot {
    conns: Arc<Conns>,
    keys: Vec<SourceKey>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut counts = self.conns.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.release(&self.keys);
    }
}

impl Shared {
    fn client_id(&self) -> ClientId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Serves one QUIC connection: each bidirectional stream is a mailbox session or a relay
/// stream ([`serve_stream`]). The connection closes when the client closes it, or when its
/// last stream ended. `slot` is its source's connection slot if its address was validated
/// before the handshake (a Retry); otherwise the slot is taken once the handshake completed,
/// which validates it too, so a spoofed source address is never charged.
async fn serve_connection(incoming: quinn::Incoming, slot: Option<ConnSlot>, shared: Arc<Shared>) {
    let handshake = Handshaking::new(&shared.handshakes);
    let Ok(Ok(conn)) = tokio::time::timeout(SETUP_TIMEOUT, incoming).await else { return };
    drop(handshake);
    let addr = conn.remote_address();
    let _slot = match slot.or_else(|| shared.conns.take(addr.ip(), shared.per_ip)) {
        Some(slot) => slot,
        None => {
            Metrics::bump(&shared.metrics.clients_refused_total);
            conn.close(0u32.into(), b"too many connections from your address");
            return;
        }
    };
    let channel = auth::quic_channel(&conn);
    let mut streams = JoinSet::new();
    let mut node_closed = false;
    let mut closing = shared.closing.clone();
    loop {
        let idle = streams.is_empty();
        let accept = async {
            if idle {
                // A connection without a stream gets a bounded time to open one.
                tokio::time::timeout(SETUP_TIMEOUT, conn.accept_bi()).await.ok()
            } else {
                Some(conn.accept_bi().await)
            }
        };
        tokio::select! {
            stream = accept => match stream {
                Some(Ok((send, recv))) => {
                    let attach = Attach::Datagrams(conn.clone());
                    let (reader, writer) = (Box::new(recv), Box::new(send));
                    let stream = serve_stream(reader, writer, addr, channel, shared.clone(), attach);
                    streams.spawn(stream);
                }
                _ => break,
            },
            Some(ended) = streams.join_next(), if !streams.is_empty() => {
                node_closed |= matches!(ended, Ok(StreamEnd::NodeClosed));
                if streams.is_empty() {
                    break;
                }
            }
            _ = closing.wait_for(|&c| c) => {
                conn.close(0u32.into(), crate::client::SHUTDOWN_REASON);
                break;
            }
        }
    }
    if node_closed {
        // Let the last message (often an error) reach the client: it hangs up on reading it.
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
    }
    // A session ended by the node's shutdown says so: the client tells its user, rather than
    // reporting a lost connection.
    let reason = if shared.metrics.shutting_down.load(std::sync::atomic::Ordering::Relaxed) {
        crate::client::SHUTDOWN_REASON
    } else {
        b"bye"
    };
    conn.close(0u32.into(), reason);
    // The streams end with the connection; wait so that the table hears every disconnect.
    while streams.join_next().await.is_some() {}
}

/// How a stream ended.
pub(crate) enum StreamEnd {
    /// The client ended it, or it broke.
    Client,
    /// The node ended the mailbox session (an error, a full outbox, shutdown).
    NodeClosed,
}

/// Serves one stream (a QUIC stream, or a whole TCP connection): its first frame says whether
/// it is a mailbox session (`Hello`) or a relay stream (`Relay`). `channel` is what the TLS
/// session under it exported (`None` without TLS), on which token proofs are checked.
pub(crate) async fn serve_stream(
    mut reader: Reader,
    mut writer: Writer,
    addr: SocketAddr,
    channel: Option<Channel>,
    shared: Arc<Shared>,
    attach: Attach,
) -> StreamEnd {
    match read_first(&mut reader, SETUP_TIMEOUT).await {
        Some(hello @ ClientMsg::Hello { .. }) => {
            mailbox(reader, writer, addr, channel, hello, &shared).await
        }
        Some(ClientMsg::Relay { version, proof, ticket }) => {
            let authorized = shared
                .token
                .as_deref()
                .is_none_or(|token| auth::verify(token, channel.as_ref(), proof.as_ref()));
            let refusal = if version != VERSION {
                Some((ErrorCode::Version, format!("this node speaks version {VERSION}")))
            } else if !authorized {
                Some((ErrorCode::Unauthorized, "this node requires an access token".to_owned()))
            } else {
                None
            };
            if let Some((code, message)) = refusal {
                Metrics::bump(&shared.metrics.relays_refused_total);
                let frame = wire::encode(&NodeMsg::Error { code, message });
                let _ = tokio::time::timeout(SETUP_TIMEOUT, writer.write_all(&frame)).await;
                let _ = writer.shutdown().await;
                return StreamEnd::NodeClosed;
            }
            shared.relays.serve(ticket, addr, attach, reader, writer).await;
            StreamEnd::Client
        }
        _ => StreamEnd::Client,
    }
}

/// A mailbox session: frames go to the table task, its answers come back through a bounded
/// outbox.
async fn mailbox(
    mut reader: Reader,
    mut writer: Writer,
    addr: SocketAddr,
    channel: Option<Channel>,
    hello: ClientMsg,
    shared: &Shared,
) -> StreamEnd {
    let client = shared.client_id();
    let events = &shared.events;
    let (outbox, mut inbox) = mpsc::channel(OUTBOX);
    if events.send(Event::Connect { client, addr, channel, outbox }).await.is_err()
        || events.send(Event::Message { client, msg: hello }).await.is_err()
    {
        return StreamEnd::NodeClosed;
    }
    let writer = async {
        while let Some(routed) = inbox.recv().await {
            match routed {
                Routed::Msg(msg) => {
                    // A client that grants no credit is dropped, not waited for.
                    let frame = wire::encode(&msg);
                    let write = tokio::time::timeout(SETUP_TIMEOUT, writer.write_all(&frame));
                    if !matches!(write.await, Ok(Ok(()))) {
                        return StreamEnd::Client;
                    }
                }
                Routed::Close => break,
            }
        }
        let _ = writer.shutdown().await;
        StreamEnd::NodeClosed
    };
    let reader = async {
        loop {
            let mut header = [0u8; 4];
            if reader.read_exact(&mut header).await.is_err() {
                return;
            }
            let Ok(len) = wire::frame_len(header) else { return };
            let mut body = vec![0u8; len];
            if reader.read_exact(&mut body).await.is_err() {
                return;
            }
            let msg = match wire::decode_client(&body) {
                Ok(msg) => msg,
                Err(e) => {
                    tracing::debug!(client, error = %e, "malformed message: closing");
                    return;
                }
            };
            if events.send(Event::Message { client, msg }).await.is_err() {
                return;
            }
        }
    };
    // Either side ending ends the session.
    let end = tokio::select! {
        end = writer => end,
        () = reader => StreamEnd::Client,
    };
    let _ = events.send(Event::Disconnect { client }).await;
    end
}
