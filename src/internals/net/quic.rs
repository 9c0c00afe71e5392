//! QUIC endpoints with self-signed certificates, authenticated after the fact.
//!
//! Each process makes a fresh key pair and self-signed certificate. The TLS verifiers on both
//! sides accept any certificate *but* check the handshake signature, so the peer proves it
//! holds the key of the certificate it shows. Who that peer is gets settled by the session on
//! top ([`crate::proto::session`]): each side sends the fingerprint of its certificate in its
//! sealed hello, together with a MAC over the TLS exporter of this very connection under the
//! PAKE key. A machine in the middle would need the code to produce either.
//!
//! One [`quinn::Endpoint`] acts as client and server on one UDP socket.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use p2p_copy_rendezvous::tls::AnyCert;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::crypto::{fingerprint, Role};

/// ALPN protocol name; a peer speaking anything else fails the TLS handshake.
pub const ALPN: &[u8] = b"p2p-copy/1";
/// Label of the TLS exporter the channel binding is computed over (context is empty).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-p2p-copy/1 channel binding";
/// Server name used in the TLS handshake (certificates are self-signed; it is not checked).
const SERVER_NAME: &str = "p2p-copy";

/// Failures setting up or using the QUIC layer.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// Could not make a certificate or TLS configuration (a bug or a broken crypto provider).
    #[error("could not set up TLS: {0}")]
    Tls(String),
    /// Could not bind the UDP socket.
    #[error("could not open a UDP socket on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// No candidate address answered.
    #[error("could not connect to the sender at {addrs}: {reason}")]
    Connect {
        /// The addresses tried.
        addrs: String,
        /// The last failure.
        reason: String,
    },
    /// The peer presented no usable certificate.
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    /// The exporter could not be computed.
    #[error("could not compute the TLS exporter")]
    Exporter,
}

/// The flow-control window a connection starts with, bytes: 1 Gbit/s at up to 33 ms round
/// trip, and what keeps each side's memory well under 40 MB on a LAN (what is in flight, or
/// waits for a slower reader, is buffered on both sides).
/// Auto-tuning ([`super::tune`]) grows it on links that need more, up to [`MAX_WINDOW`].
pub const DEFAULT_WINDOW: u32 = 4 << 20;

/// The largest window auto-tuning grows a connection to, bytes: 1 Gbit/s at up to 250 ms
/// round trip (`docs/architecture.md` §5.11).
pub const MAX_WINDOW: u32 = 32 << 20;

/// quinn's default ceiling for path MTU discovery: a 1500-byte MTU less IPv6 and UDP headers.
pub const MAX_UDP_PAYLOAD: u16 = 1452;

/// Which congestion controller a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Congestion {
    /// quinn's CUBIC, told random loss from congestion ([`super::congestion`]): the default
    /// (`docs/architecture.md` §5.11).
    #[default]
    Tolerant,
    /// quinn's CUBIC (RFC 9438) as it is: every loss is congestion.
    Cubic,
    /// BBR (version 1: quinn's port of quiche's, which quinn marks experimental).
    Bbr,
    /// NewReno (RFC 9002).
    NewReno,
}

impl Congestion {
    /// The controller's name as options spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Congestion::Tolerant => "tolerant",
            Congestion::Cubic => "cubic",
            Congestion::Bbr => "bbr",
            Congestion::NewReno => "newreno",
        }
    }
}

/// Transport tunables.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Per-stream receive window, bytes (fixed when the connection is made).
    pub stream_window: u32,
    /// Connection-wide receive window the connection starts with, bytes.
    pub conn_window: u32,
    /// Send window the connection starts with, bytes.
    pub send_window: u64,
    /// Auto-tuning grows the connection and send windows up to this many bytes; at or below
    /// `conn_window` the windows stay as they are.
    pub max_window: u32,
    /// Congestion controller.
    pub congestion: Congestion,
    /// Largest UDP payload path MTU discovery tries (quinn's default: 1452, what a 1500-byte
    /// Ethernet MTU carries over IPv6).
    pub max_udp_payload: u16,
    /// Idle timeout: a silent peer is declared gone after this long.
    pub idle_timeout: Duration,
    /// Keep-alive interval (must be well below the idle timeout).
    pub keep_alive: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            // One lane may use all of the connection's window, however far it grows.
            stream_window: MAX_WINDOW,
            conn_window: DEFAULT_WINDOW,
            send_window: DEFAULT_WINDOW.into(),
            max_window: MAX_WINDOW,
            congestion: Congestion::default(),
            max_udp_payload: MAX_UDP_PAYLOAD,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
        }
    }
}

impl Tuning {
    /// These settings with every flow-control window (per stream, per connection, sending)
    /// fixed at `window` bytes: one stream may use all of it, and auto-tuning is off.
    pub fn with_window(self, window: u32) -> Tuning {
        Tuning {
            stream_window: window,
            conn_window: window,
            send_window: window.into(),
            max_window: window,
            ..self
        }
    }

    /// Whether auto-tuning may grow the windows.
    pub fn auto_window(&self) -> bool {
        self.max_window > self.conn_window
    }
}

/// The receive buffer the receiving side's data socket asks for, and the send buffer the
/// sending side's. The system's default (208 KiB on Linux) holds about 1.5 ms of a 1 Gbit/s
/// flow: when the receiving process is not on a core for longer (it shares the cores with its
/// own disk work), datagrams are dropped and QUIC must resend them, a loss its congestion
/// controller then pays for. The kernel caps the request at `net.core.rmem_max` /
/// `wmem_max`; the memory is only used while datagrams wait. The sending side keeps the
/// default receive buffer (what it receives is acknowledgements): a larger one let a receiver
/// that floods it with datagrams raise its memory past 40 MB under load, as quinn takes in
/// whatever the socket holds.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// A UDP socket bound on `addr`, for quinn, with large buffers both ways.
pub fn udp_socket(addr: SocketAddr) -> Result<Arc<dyn quinn::AsyncUdpSocket>, QuicError> {
    role_socket(addr, None)
}

/// A UDP socket bound on `addr` with the buffers of `role` (`None`: both).
fn role_socket(
    addr: SocketAddr,
    role: Option<Role>,
) -> Result<Arc<dyn quinn::AsyncUdpSocket>, QuicError> {
    let bind = |source| QuicError::Bind { addr, source };
    let socket = new_socket(socket2::Domain::for_address(addr), role).map_err(bind)?;
    socket.bind(&addr.into()).map_err(bind)?;
    runtime()?.wrap_udp_socket(socket.into()).map_err(bind)
}

/// A UDP socket on every interface and both address families (`[::]:0` with IPv4 mapped in),
/// so that IPv6 candidates work where IPv4 is behind a NAT; `None` where the system has no
/// IPv6 (the caller then binds IPv4 only).
pub fn dual_stack_socket(role: Role) -> Option<Arc<dyn quinn::AsyncUdpSocket>> {
    let socket = new_socket(socket2::Domain::IPV6, Some(role)).ok()?;
    socket.set_only_v6(false).ok()?;
    let any = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0));
    socket.bind(&any.into()).ok()?;
    runtime().ok()?.wrap_udp_socket(socket.into()).ok()
}

/// An unbound UDP socket with [`SOCKET_BUFFER`] asked for as `role` needs it (`None`: both
/// ways). A smaller buffer works, only with more loss under load.
fn new_socket(domain: socket2::Domain, role: Option<Role>) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if role != Some(Role::Sender) {
        if let Err(e) = socket.set_recv_buffer_size(SOCKET_BUFFER) {
            tracing::debug!(error = %e, "could not enlarge the UDP receive buffer");
        }
        // Linux reports twice what it granted (its bookkeeping included); the system's cap is
        // the usual reason for less.
        let reported = if cfg!(target_os = "linux") { 2 } else { 1 };
        if let Ok(granted) = socket.recv_buffer_size().map(|b| b / reported) {
            if granted < SOCKET_BUFFER {
                tracing::debug!(
                    granted,
                    asked = SOCKET_BUFFER,
                    "UDP receive buffer capped by the system (net.core.rmem_max): fast \
                     transfers may lose datagrams; docs/cli.md, \"UDP buffers\""
                );
            }
        }
    }
    if role != Some(Role::Receiver) {
        if let Err(e) = socket.set_send_buffer_size(SOCKET_BUFFER) {
            tracing::debug!(error = %e, "could not enlarge the UDP send buffer");
        }
    }
    Ok(socket)
}

/// A UDP socket for an endpoint bound on `addr`. `0.0.0.0:0`, every interface and any port
/// (what the options default to), takes [`dual_stack_socket`] where the system has IPv6, so
/// that peers of either family reach the endpoint and are reached from it (on a LAN, IPv6
/// link-local addresses may be all there is); any other address is bound as it is.
pub fn socket_for(
    addr: SocketAddr,
    role: Role,
) -> Result<Arc<dyn quinn::AsyncUdpSocket>, QuicError> {
    if addr == SocketAddr::from(([0, 0, 0, 0], 0)) {
        if let Some(socket) = dual_stack_socket(role) {
            return Ok(socket);
        }
    }
    role_socket(addr, Some(role))
}

/// An endpoint's socket that counts what it sends ([`Node::sent`]).
#[derive(Debug)]
struct Counted {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    sent: Arc<AtomicU64>,
}

impl quinn::AsyncUdpSocket for Counted {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        self.inner.try_send(transmit)?;
        self.sent.fetch_add(transmit.contents.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> Poll<std::io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// The peer's address on `conn` as people write it: an IPv4 peer of a dual-stack endpoint
/// shows as IPv4, not as `::ffff:a.b.c.d`.
pub fn peer_addr(conn: &quinn::Connection) -> SocketAddr {
    unmapped(conn.remote_address())
}

/// `addr` with an IPv4-mapped IPv6 address (what a dual-stack socket reports for an IPv4
/// peer) written as the IPv4 address it is.
pub fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

fn runtime() -> Result<Arc<dyn quinn::Runtime>, QuicError> {
    quinn::default_runtime().ok_or_else(|| QuicError::Tls("no async runtime for QUIC".to_owned()))
}

/// A bound endpoint and the certificate it presents.
#[derive(Debug)]
pub struct Node {
    /// The endpoint (client and server).
    pub endpoint: quinn::Endpoint,
    /// SHA-256 of our certificate.
    pub fingerprint: [u8; 32],
    client_config: quinn::ClientConfig,
    server_config: quinn::ServerConfig,
    sent: Arc<AtomicU64>,
}

impl Node {
    /// Binds a UDP socket on `addr` and starts an endpoint with a fresh identity; it accepts
    /// connections only when `serve` is set.
    pub fn bind(addr: SocketAddr, tuning: &Tuning, serve: bool) -> Result<Node, QuicError> {
        Node::with_socket(udp_socket(addr)?, tuning, serve)
    }

    /// As [`Node::bind`], on a socket of another kind ([`dual_stack_socket`],
    /// [`super::path::PathSocket`], a simulated network in tests).
    pub fn with_socket(
        socket: Arc<dyn quinn::AsyncUdpSocket>,
        tuning: &Tuning,
        serve: bool,
    ) -> Result<Node, QuicError> {
        Node::new(tuning, serve, socket)
    }

    fn new(
        tuning: &Tuning,
        serve: bool,
        socket: Arc<dyn quinn::AsyncUdpSocket>,
    ) -> Result<Node, QuicError> {
        let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])
            .map_err(|e| QuicError::Tls(e.to_string()))?;
        let cert = CertificateDer::from(certified.cert.der().to_vec());
        let key =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let transport = Arc::new(transport_config(tuning));

        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_client_cert_verifier(Arc::new(AnyCert::new(provider.clone())))
            .with_single_cert(vec![cert.clone()], key.clone_key())
            .map_err(tls)?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        let server = QuicServerConfig::try_from(server).map_err(tls)?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server));
        server_config.transport_config(transport.clone());
        let serving = server_config.clone();

        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert::new(provider)))
            .with_client_auth_cert(vec![cert.clone()], key)
            .map_err(tls)?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        let client = QuicClientConfig::try_from(client).map_err(tls)?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client));
        client_config.transport_config(transport);

        let runtime = runtime()?;
        let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
        let addr = socket.local_addr().unwrap_or(unknown);
        let sent = Arc::new(AtomicU64::new(0));
        let socket = Arc::new(Counted { inner: socket, sent: sent.clone() });
        // Our QUIC packets always carry the fixed bit, so that probes (which lack it) share
        // the socket: see `super::path`.
        let mut endpoint_config = quinn::EndpointConfig::default();
        endpoint_config.grease_quic_bit(false);
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            serve.then_some(server_config),
            socket,
            runtime,
        )
        .map_err(|source| QuicError::Bind { addr, source })?;
        Ok(Node {
            endpoint,
            fingerprint: fingerprint(&cert),
            client_config,
            server_config: serving,
            sent,
        })
    }

    /// Bytes the endpoint has sent (UDP payloads, every connection on it), counted as they
    /// leave: unlike `quinn::Connection::stats`, reading it takes no lock the connection's
    /// driver holds.
    pub fn sent(&self) -> Arc<AtomicU64> {
        self.sent.clone()
    }

    /// Stops (or resumes) accepting connections.
    pub fn serve(&self, on: bool) {
        self.endpoint.set_server_config(on.then(|| self.server_config.clone()));
    }

    /// What the session needs to bind itself to `conn`: both certificate fingerprints and the
    /// connection's TLS exporter value.
    pub fn channel(&self, conn: &quinn::Connection) -> Result<crate::proto::Channel, QuicError> {
        Ok(crate::proto::Channel {
            local_fingerprint: self.fingerprint,
            peer_fingerprint: peer_fingerprint(conn)?,
            exporter: exporter(conn)?,
        })
    }

    /// The local address (port) of the endpoint.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Connects to the first of `addrs` that answers, trying them staggered by 250 ms, each
    /// attempt bounded by `timeout`. Losing attempts are closed.
    pub async fn connect_any(
        &self,
        addrs: &[SocketAddr],
        timeout: Duration,
    ) -> Result<quinn::Connection, QuicError> {
        self.connect_to(addrs, timeout, None, Duration::from_millis(250)).await
    }

    /// As [`Node::connect_any`], with attempts `stagger` apart; with `expect`, a peer whose
    /// certificate has another fingerprint counts as a failed attempt (some other program on a
    /// candidate address).
    pub async fn connect_to(
        &self,
        addrs: &[SocketAddr],
        timeout: Duration,
        expect: Option<[u8; 32]>,
        stagger: Duration,
    ) -> Result<quinn::Connection, QuicError> {
        let mut attempts = tokio::task::JoinSet::new();
        for (i, &addr) in addrs.iter().enumerate() {
            let endpoint = self.endpoint.clone();
            let config = self.client_config.clone();
            attempts.spawn(async move {
                tokio::time::sleep(stagger * i as u32).await;
                let connecting = endpoint
                    .connect_with(config, addr, SERVER_NAME)
                    .map_err(|e| format!("{addr}: {e}"))?;
                match tokio::time::timeout(timeout, connecting).await {
                    Ok(Ok(conn)) => match expect {
                        Some(fp) if peer_fingerprint(&conn).ok() != Some(fp) => {
                            conn.close(0u32.into(), b"not you");
                            Err(format!("{addr}: another program answered"))
                        }
                        _ => Ok(conn),
                    },
                    Ok(Err(e)) => Err(format!("{addr}: {e}")),
                    Err(_) => Err(format!("{addr}: no answer within {timeout:?}")),
                }
            });
        }
        let mut last = String::from("no address to try");
        while let Some(joined) = attempts.join_next().await {
            match joined {
                Ok(Ok(conn)) => {
                    // Dropping the set aborts the other attempts; their handshakes time out
                    // on the sender, which only serves the connection that opens a stream.
                    tracing::debug!(peer = %conn.remote_address(), "connected");
                    return Ok(conn);
                }
                Ok(Err(reason)) => {
                    tracing::debug!(%reason, "connection attempt failed");
                    last = reason;
                }
                Err(e) => last = e.to_string(),
            }
        }
        let addrs = addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ");
        Err(QuicError::Connect { addrs, reason: last })
    }
}

/// SHA-256 of the certificate the peer presented on `conn`.
pub fn peer_fingerprint(conn: &quinn::Connection) -> Result<[u8; 32], QuicError> {
    let identity = conn.peer_identity().ok_or(QuicError::NoPeerCertificate)?;
    let certs = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| QuicError::NoPeerCertificate)?;
    let first = certs.first().ok_or(QuicError::NoPeerCertificate)?;
    Ok(fingerprint(first))
}

/// The channel-binding value of `conn`: 32 bytes of TLS exporter output.
pub fn exporter(conn: &quinn::Connection) -> Result<Vec<u8>, QuicError> {
    let mut out = vec![0u8; 32];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"").map_err(|_| QuicError::Exporter)?;
    Ok(out)
}

fn transport_config(t: &Tuning) -> quinn::TransportConfig {
    let mut config = quinn::TransportConfig::default();
    config
        .stream_receive_window(t.stream_window.into())
        .receive_window(t.conn_window.into())
        .send_window(t.send_window)
        .max_concurrent_bidi_streams(4u32.into())
        .max_concurrent_uni_streams(64u32.into())
        .keep_alive_interval(Some(t.keep_alive))
        // quinn assumes 333 ms before it has measured anything, so a first packet lost to a
        // NAT that had not opened yet (hole punching) would be sent again only after about a
        // second; peers that punch need the retry sooner.
        .initial_rtt(Duration::from_millis(100));
    let controller: Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> = match t.congestion
    {
        Congestion::Tolerant => Arc::new(super::congestion::TolerantConfig::default()),
        Congestion::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
        Congestion::Bbr => Arc::new(quinn::congestion::BbrConfig::default()),
        Congestion::NewReno => Arc::new(quinn::congestion::NewRenoConfig::default()),
    };
    config.congestion_controller_factory(controller);
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(t.max_udp_payload);
    config.mtu_discovery_config(Some(mtu));
    // Invariant: durations of seconds fit QUIC's idle-timeout varint.
    if let Ok(idle) = t.idle_timeout.try_into() {
        config.max_idle_timeout(Some(idle));
    }
    config
}

fn tls(e: impl std::fmt::Display) -> QuicError {
    QuicError::Tls(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data sockets get the buffers they ask for, as far as the system allows: the default
    /// (208 KiB on Linux) dropped about 1,300 datagrams per GiB on loopback.
    #[test]
    fn data_sockets_ask_for_large_buffers() {
        let allowed = |name: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
        };
        let (Some(rmem), Some(wmem), Some(rdefault)) =
            (allowed("rmem_max"), allowed("wmem_max"), allowed("rmem_default"))
        else {
            eprintln!("skipped: no /proc/sys/net/core here");
            return;
        };
        for domain in [socket2::Domain::IPV4, socket2::Domain::IPV6] {
            // No IPv6 here: nothing to check for it.
            let Ok(socket) = new_socket(domain, Some(Role::Receiver)) else { continue };
            // Linux reports twice what it granted (bookkeeping included).
            assert!(socket.recv_buffer_size().unwrap() >= SOCKET_BUFFER.min(rmem));
            let socket = new_socket(domain, Some(Role::Sender)).unwrap();
            assert!(socket.send_buffer_size().unwrap() >= SOCKET_BUFFER.min(wmem));
            // The sending side keeps the system's receive buffer (reported doubled).
            assert!(socket.recv_buffer_size().unwrap() <= 2 * rdefault);
            let both = new_socket(domain, None).unwrap();
            assert!(both.recv_buffer_size().unwrap() >= SOCKET_BUFFER.min(rmem));
            assert!(both.send_buffer_size().unwrap() >= SOCKET_BUFFER.min(wmem));
        }
    }

    /// A serving and a connecting endpoint on loopback, and the server's address.
    fn two_nodes() -> (Node, Node, SocketAddr) {
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let server = Node::bind(local, &Tuning::default(), true).unwrap();
        let client = Node::bind(local, &Tuning::default(), false).unwrap();
        let addr = server.local_addr().unwrap();
        (server, client, addr)
    }

    /// Two endpoints on loopback connect; both see the other's certificate and the same
    /// exporter value.
    #[tokio::test]
    async fn endpoints_connect_and_agree_on_binding_inputs() {
        let (server, client, addr) = two_nodes();
        let accept = tokio::spawn({
            let ep = server.endpoint.clone();
            async move { ep.accept().await.unwrap().await.unwrap() }
        });
        let c = client.connect_any(&[addr], Duration::from_secs(5)).await.unwrap();
        let s = accept.await.unwrap();
        assert_eq!(peer_fingerprint(&c).unwrap(), server.fingerprint);
        assert_eq!(peer_fingerprint(&s).unwrap(), client.fingerprint);
        assert_eq!(exporter(&c).unwrap(), exporter(&s).unwrap());
        assert_ne!(server.fingerprint, client.fingerprint);
    }

    /// `Node::sent` counts what the endpoint sent as quinn counts it for the connection
    /// (the only one on it): the same bytes, without the connection's lock.
    #[tokio::test]
    async fn an_endpoint_counts_what_it_sends() {
        let (server, client, addr) = two_nodes();
        let accept = tokio::spawn({
            let ep = server.endpoint.clone();
            async move {
                let conn = ep.accept().await.unwrap().await.unwrap();
                let mut recv = conn.accept_uni().await.unwrap();
                recv.read_to_end(1 << 22).await.unwrap().len()
            }
        });
        let c = client.connect_any(&[addr], Duration::from_secs(5)).await.unwrap();
        let mut send = c.open_uni().await.unwrap();
        send.write_all(&vec![7u8; 1 << 21]).await.unwrap();
        send.finish().unwrap();
        assert_eq!(accept.await.unwrap(), 1 << 21);
        c.close(0u32.into(), b"done");
        client.endpoint.wait_idle().await; // nothing more leaves
        let sent = client.sent().load(Ordering::Relaxed);
        assert!(sent > 1 << 21, "{sent}");
        assert_eq!(sent, c.stats().udp_tx.bytes);
    }

    /// A dual-stack endpoint reaches an IPv4 peer, and the peer's address reads as IPv4.
    #[tokio::test]
    async fn a_dual_stack_endpoint_shows_ipv4_peers_as_ipv4() {
        let server = Node::bind("127.0.0.1:0".parse().unwrap(), &Tuning::default(), true).unwrap();
        let any = SocketAddr::from(([0, 0, 0, 0], 0));
        let client =
            Node::with_socket(socket_for(any, Role::Sender).unwrap(), &Tuning::default(), false)
                .unwrap();
        if !client.local_addr().unwrap().is_ipv6() {
            eprintln!("no IPv6 on this host: nothing dual-stack to check");
            return;
        }
        let addr = server.local_addr().unwrap();
        let accept = tokio::spawn({
            let ep = server.endpoint.clone();
            async move { ep.accept().await.unwrap().await.unwrap() }
        });
        let c = client.connect_any(&[addr], Duration::from_secs(5)).await.unwrap();
        accept.await.unwrap();
        assert!(c.remote_address().is_ipv6(), "mapped: {}", c.remote_address());
        assert_eq!(peer_addr(&c), addr);
    }

    #[tokio::test]
    async fn connect_any_reports_every_failure() {
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let client = Node::bind(local, &Tuning::default(), false).unwrap();
        // A bound socket that never answers QUIC.
        let silent = std::net::UdpSocket::bind(local).unwrap();
        let addr = silent.local_addr().unwrap();
        let err = client.connect_any(&[addr], Duration::from_millis(300)).await.unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
