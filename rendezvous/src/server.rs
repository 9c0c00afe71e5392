//! The node's QUIC server: a thin async driver around [`Table`].
//!
//! 1. [`serve`] accepts connections (bounded in number) on a QUIC endpoint the caller bound.
//! 2. Each connection opens one bidirectional stream; its task reads frames, decodes them and
//!    hands them to the table task. A writer task drains the connection's bounded outbox.
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

pub use crate::config::{ConfigError, LogFormat, NodeArgs, RelayLimits, ServerConfig, TlsFiles};

use crate::client::ALPN;
use crate::metrics::{self, GaugeGuard, Metrics};
use crate::table::{ClientId, Output, Table};
use crate::wire::{self, ClientMsg, NodeMsg};

/// Messages buffered for one client before it counts as not reading.
const OUTBOX: usize = 64;
/// Receive buffer requested for the node's UDP socket.
const SOCKET_BUFFER: usize = 4 << 20;
/// Events buffered towards the table task.
const EVENTS: usize = 4096;
/// Time allowed for a connection's handshake and for its first stream.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

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
    let endpoint = endpoint(config.listen, &config)?;
    let local = endpoint
        .local_addr()
        .map_err(|source| ServerError::Bind { addr: config.listen, source })?;
    let http = match config.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })?,
        ),
        None => None,
    };
    tracing::info!(listen = %local, token = config.limits.token.is_some(), "rendezvous node serving");
    if let Some(addr) = config.metrics {
        tracing::info!(metrics = %addr, "metrics and health served over HTTP");
    }
    let counters = config.metrics_handle.clone();
    let (served, served_rx) = tokio::sync::oneshot::channel::<()>();
    let node = async {
        serve(endpoint, config, shutdown).await;
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

/// Binds a QUIC endpoint for the node on `addr` with a fresh self-signed certificate.
/// Clients do not authenticate the node: everything they exchange through it is protected
/// end to end by the code, so the node is not trusted with anything.
pub fn endpoint(addr: SocketAddr, config: &ServerConfig) -> Result<quinn::Endpoint, ServerError> {
    let tls = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let certified = rcgen::generate_simple_self_signed(vec!["p2p-copy-rendezvous".to_owned()])
        .map_err(|e| tls(&e))?;
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| tls(&e))?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(crypto).map_err(|e| tls(&e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((64u32 << 10).into())
        .receive_window((128u32 << 10).into());
    if let Ok(idle) = config.idle_timeout.try_into() {
        transport.max_idle_timeout(Some(idle));
    }
    server.transport_config(Arc::new(transport));
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
    socket.bind(&addr.into()).map_err(bind)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| ServerError::Tls("no async runtime for QUIC".to_owned()))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket.into(), runtime)
        .map_err(bind)
}

enum Event {
    Connect { client: ClientId, addr: SocketAddr, outbox: mpsc::Sender<Routed> },
    Message { client: ClientId, msg: ClientMsg },
    Disconnect { client: ClientId },
}

/// What the table task sends a connection.
enum Routed {
    Msg(NodeMsg),
    Close,
}

/// Serves the node on `endpoint` until `shutdown` resolves, then drains for the grace period.
pub async fn serve(
    endpoint: quinn::Endpoint,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let (events_tx, events_rx) = mpsc::channel(EVENTS);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let counters = config.metrics_handle.clone();
    let table = Table::new(config.limits.clone());
    let mut table_task = tokio::spawn(run_table(table, events_rx, stop_rx, counters.clone()));
    let mut connections = JoinSet::new();
    let mut next_id: ClientId = 1;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if connections.len() >= config.max_connections {
                    Metrics::bump(&counters.clients_refused_total);
                    incoming.refuse();
                    continue;
                }
                let client = next_id;
                next_id += 1;
                let open = GaugeGuard::new(counters.clone(), |m| &m.connections_quic);
                let served = serve_connection(incoming, client, events_tx.clone());
                connections.spawn(async move { served.await; drop(open) });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    tracing::info!(connections = connections.len(), "shutting down: refusing new sessions");
    counters.shutting_down.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = stop_tx.send(true);
    endpoint.set_server_config(None);
    let drained = tokio::time::timeout(config.grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(left = connections.len(), "grace period over: closing remaining sessions");
    }
    connections.shutdown().await;
    endpoint.close(0u32.into(), b"shutting down");
    drop(events_tx);
    let _ = tokio::time::timeout(Duration::from_secs(1), &mut table_task).await;
    table_task.abort();
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

async fn run_table(
    mut table: Table,
    mut events: mpsc::Receiver<Event>,
    mut stop: tokio::sync::watch::Receiver<bool>,
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
                    Event::Connect { client, addr, outbox } => match table.connect(now, client, addr) {
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
        while let Some(out) = table.poll_output() {
            counters.observe(&out);
            let (client, routed) = match out {
                Output::Send { to, msg } => (to, Routed::Msg(msg)),
                Output::Close { client } => (client, Routed::Close),
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

async fn serve_connection(
    incoming: quinn::Incoming,
    client: ClientId,
    events: mpsc::Sender<Event>,
) {
    let Ok(Ok(conn)) = tokio::time::timeout(SETUP_TIMEOUT, incoming).await else { return };
    let addr = conn.remote_address();
    let Ok(Ok((mut send, mut recv))) = tokio::time::timeout(SETUP_TIMEOUT, conn.accept_bi()).await
    else {
        conn.close(1u32.into(), b"no stream");
        return;
    };
    let (outbox, mut inbox) = mpsc::channel(OUTBOX);
    if events.send(Event::Connect { client, addr, outbox }).await.is_err() {
        return;
    }
    let writer = async {
        while let Some(routed) = inbox.recv().await {
            match routed {
                Routed::Msg(msg) => {
                    if send.write_all(&wire::encode(&msg)).await.is_err() {
                        break;
                    }
                }
                Routed::Close => break,
            }
        }
        let _ = send.finish();
        // Let the last message (often an error) reach the client before closing.
        let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
    };
    let reader = async {
        loop {
            let mut header = [0u8; 4];
            if recv.read_exact(&mut header).await.is_err() {
                return;
            }
            let Ok(len) = wire::frame_len(header) else { return };
            let mut body = vec![0u8; len];
            if recv.read_exact(&mut body).await.is_err() {
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
    // Either side ending ends the connection.
    tokio::select! {
        () = writer => {}
        () = reader => {}
    }
    let _ = events.send(Event::Disconnect { client }).await;
    conn.close(0u32.into(), b"bye");
}
