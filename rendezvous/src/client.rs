//! The client side of the node protocol.
//!
//! A [`Client`] rides on the caller's QUIC endpoint: the same UDP socket later talks to the
//! peer, so the address the node observes (and reports in `Welcome`) is the NAT mapping the
//! peer must reach. The node is trusted with nothing: the code protects everything that
//! passes through it, and a node's access token is proved on each TLS session, never sent
//! ([`crate::auth`]). So the node need not be authenticated; a client that knows its
//! certificate may still pin it ([`NodeAccess::fingerprint`]), and then refuses any other,
//! on QUIC and TCP alike.
//!
//! Every wait is bounded by the caller's timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::{self, Channel, Fingerprint};
use crate::tls::{AnyCert, PinnedCert};
use crate::wire::{self, ClientMsg, ErrorCode, NodeMsg, WireError, VERSION};

/// ALPN of the client ↔ node protocol.
pub const ALPN: &[u8] = b"p2p-copy-rendezvous/1";
/// Server name sent in the TLS handshake (the node's certificate is not checked).
const SERVER_NAME: &str = "p2p-copy-rendezvous";

/// Failures talking to the node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer, or the connection failed.
    #[error("cannot reach the rendezvous node at {node}: {reason}")]
    Unreachable {
        /// The node's address.
        node: SocketAddr,
        /// What failed.
        reason: String,
    },
    /// The connection to the node was lost.
    #[error("lost the connection to the rendezvous node: {0}")]
    Lost(String),
    /// The node answered with an error.
    #[error("the rendezvous node refused: {message} ({code:?})")]
    Refused {
        /// The error code.
        code: ErrorCode,
        /// The node's message.
        message: String,
    },
    /// The node sent something malformed or unexpected.
    #[error("the rendezvous node broke the protocol: {0}")]
    Protocol(String),
    /// A wait ran out.
    #[error("the rendezvous node did not answer within {0:?}")]
    Timeout(Duration),
    /// The node closed the connection because it is shutting down (or restarting).
    #[error("the rendezvous node is shutting down")]
    ShuttingDown,
    /// The node's certificate is not the pinned one.
    #[error(
        "the rendezvous node at {node} presented a certificate whose SHA-256 is not the pinned \
         fingerprint: it is not the node you pinned (or its operator changed its certificate; \
         ask for the new fingerprint)"
    )]
    WrongCertificate {
        /// The node's address.
        node: SocketAddr,
    },
}

/// What a client knows about the node it talks to.
#[derive(Clone, Default)]
pub struct NodeAccess {
    /// The node's access token, if it requires one (proved, never sent).
    pub token: Option<String>,
    /// SHA-256 of the node's certificate: any other certificate is refused.
    pub fingerprint: Option<Fingerprint>,
}

impl NodeAccess {
    /// With `token` and no pin.
    pub fn token(token: Option<String>) -> NodeAccess {
        NodeAccess { token, fingerprint: None }
    }

    /// The proof of the token on `channel`, if there is a token (and the session exported a
    /// channel, which a TLS 1.3 session always does).
    fn proof(&self, channel: Option<&Channel>) -> Option<auth::Proof> {
        Some(auth::proof(self.token.as_deref()?, channel?))
    }
}

impl std::fmt::Debug for NodeAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAccess")
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("fingerprint", &self.fingerprint.as_ref().map(auth::fingerprint_hex))
            .finish()
    }
}

/// The reason the node gives when it closes its connections on shutdown.
pub const SHUTDOWN_REASON: &[u8] = b"shutting down";

impl From<WireError> for ClientError {
    fn from(e: WireError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

/// The read half of a stream to the node (a QUIC stream or a TCP connection).
pub type Reader = Box<dyn AsyncRead + Send + Sync + Unpin>;
/// The write half of a stream to the node.
pub type Writer = Box<dyn AsyncWrite + Send + Sync + Unpin>;

/// How a client reaches the node.
#[derive(Debug, Clone)]
enum Transport {
    /// A QUIC connection: each stream is a new bidirectional stream on it.
    Quic(quinn::Connection),
    /// TCP with TLS: each stream is a new connection.
    Tcp,
}

/// A relay stream the node paired with the other side's. Over TCP it carries relay records
/// both ways; over QUIC it only holds the relay open (packets go as datagrams to
/// `datagrams`), and its end means the relay ended.
pub struct RelayStream {
    /// Records from the other side (TCP); the relay's end (QUIC).
    pub reader: Reader,
    /// Records to the other side (TCP); closing it ends the relay.
    pub writer: Writer,
    /// Over QUIC: where to send relay datagrams (the node's address).
    pub datagrams: Option<SocketAddr>,
    /// This side's ticket (the header of its datagrams).
    pub ticket: u64,
}

impl std::fmt::Debug for RelayStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayStream")
    }
}

/// Opens relay streams to a node (see [`Client::relay_opener`]).
#[derive(Debug, Clone)]
pub struct RelayOpener {
    transport: Transport,
    node: SocketAddr,
    access: NodeAccess,
    timeout: Duration,
}

impl RelayOpener {
    /// See [`Client::relay`].
    pub async fn relay(&self, ticket: u64, wait: Duration) -> Result<RelayStream, ClientError> {
        let (mut reader, mut writer, channel): (Reader, Writer, _) = match &self.transport {
            Transport::Quic(conn) => {
                let (send, recv) = tokio::time::timeout(self.timeout, conn.open_bi())
                    .await
                    .map_err(|_| ClientError::Timeout(self.timeout))?
                    .map_err(|e| ClientError::Lost(e.to_string()))?;
                (Box::new(recv), Box::new(send), auth::quic_channel(conn))
            }
            Transport::Tcp => open_tcp(self.node, &self.access, self.timeout).await?,
        };
        let proof = self.access.proof(channel.as_ref());
        let request = wire::encode(&ClientMsg::Relay { version: VERSION, proof, ticket });
        tokio::time::timeout(self.timeout, writer.write_all(&request))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?
            .map_err(|e| ClientError::Lost(e.to_string()))?;
        let datagrams = match self.transport {
            Transport::Quic(_) => Some(self.node),
            Transport::Tcp => None,
        };
        match read_msg(&mut reader, wait).await? {
            NodeMsg::Paired => Ok(RelayStream { reader, writer, datagrams, ticket }),
            NodeMsg::Error { code, message } => Err(ClientError::Refused { code, message }),
            other => Err(unexpected(&other)),
        }
    }

    /// The node's address.
    pub fn node(&self) -> SocketAddr {
        self.node
    }
}

/// How long [`Client::finish`] waits for its close to go out.
pub const CLOSE_WAIT: Duration = Duration::from_millis(300);

/// Closes a session with the node and sees the close go out: a process that exits before
/// its close was sent leaves the node counting it until its idle timeout.
#[derive(Debug, Clone)]
pub struct Closer(Option<quinn::Connection>);

impl Closer {
    /// Closes the session (what was sent and not yet delivered may be lost) and waits, at most
    /// `limit`, until the endpoint has sent the close. Over TCP the socket closes when the
    /// client is dropped: nothing to wait for.
    pub async fn close(&self, limit: Duration) {
        let Some(conn) = &self.0 else { return };
        if conn.close_reason().is_some() {
            // Closed already: by whoever saw to its close, by the node, or lost.
            return;
        }
        // A closed connection sends nothing but its close, so the first datagram it counts
        // after `close` is the close. (Counted before `close`, an ACK sent in between would
        // pass for it; if the close goes out before the count, the wait runs to `limit`.)
        conn.close(0u32.into(), b"bye");
        let sent = conn.stats().udp_tx.datagrams;
        let _ = tokio::time::timeout(limit, async {
            while conn.stats().udp_tx.datagrams == sent {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
    }
}

/// A session with the node.
pub struct Client {
    /// The transport, the node, the access and the timeout (shared with relay streams).
    link: RelayOpener,
    send: Writer,
    recv: Reader,
    observed: SocketAddr,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("node", &self.link.node)
            .field("transport", &self.link.transport)
            .field("observed", &self.observed)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `node` over QUIC on `endpoint` and says hello; every later wait is bounded
    /// by `timeout`.
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        node: SocketAddr,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        Client::connect_with(endpoint, node, NodeAccess::token(token), timeout).await
    }

    /// As [`Client::connect`], with a pin on the node's certificate if `access` has one.
    pub async fn connect_with(
        endpoint: &quinn::Endpoint,
        node: SocketAddr,
        access: NodeAccess,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        Client::connect_within(endpoint, node, access, timeout, timeout).await
    }

    /// As [`Client::connect_with`], with `handshake` bounding the QUIC handshake alone.
    async fn connect_within(
        endpoint: &quinn::Endpoint,
        node: SocketAddr,
        access: NodeAccess,
        handshake: Duration,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let conn = connect_quic(endpoint, node, access.fingerprint, handshake).await?;
        let (send, recv) = tokio::time::timeout(timeout, conn.open_bi())
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
            .map_err(|e| ClientError::Lost(e.to_string()))?;
        let channel = auth::quic_channel(&conn);
        let (send, recv): (Writer, Reader) = (Box::new(send), Box::new(recv));
        let link = RelayOpener { transport: Transport::Quic(conn), node, access, timeout };
        Client::start(link, send, recv, channel).await
    }

    /// Connects to `node` over TCP (TLS) and says hello.
    pub async fn connect_tcp(
        node: SocketAddr,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        Client::connect_tcp_with(node, NodeAccess::token(token), timeout).await
    }

    /// As [`Client::connect_tcp`], with a pin on the node's certificate if `access` has one.
    pub async fn connect_tcp_with(
        node: SocketAddr,
        access: NodeAccess,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let (recv, send, channel) = open_tcp(node, &access, timeout).await?;
        let link = RelayOpener { transport: Transport::Tcp, node, access, timeout };
        Client::start(link, send, recv, channel).await
    }

    /// Connects over QUIC; when UDP gets no answer within `udp_timeout`, over TCP instead.
    pub async fn connect_any(
        endpoint: &quinn::Endpoint,
        node: SocketAddr,
        token: Option<String>,
        udp_timeout: Duration,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let access = NodeAccess::token(token);
        Client::connect_any_with(endpoint, node, access, udp_timeout, timeout).await
    }

    /// As [`Client::connect_any`], with a pin on the node's certificate if `access` has one
    /// (a certificate that does not match is final: no TCP attempt follows).
    pub async fn connect_any_with(
        endpoint: &quinn::Endpoint,
        node: SocketAddr,
        access: NodeAccess,
        udp_timeout: Duration,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let handshake = udp_timeout.min(timeout);
        match Client::connect_within(endpoint, node, access.clone(), handshake, timeout).await {
            Ok(client) => Ok(client),
            // An answer that refuses is final; silence (UDP blocked) is worth a TCP try.
            Err(ClientError::Unreachable { reason: udp, .. }) => {
                Client::connect_tcp_with(node, access, timeout).await.map_err(|e| match e {
                    ClientError::Unreachable { node, reason } => ClientError::Unreachable {
                        node,
                        reason: format!("UDP: {udp}; TCP: {reason}"),
                    },
                    other => other,
                })
            }
            Err(other) => Err(other),
        }
    }

    /// Says hello on a new session, proving the token on `channel`.
    async fn start(
        link: RelayOpener,
        send: Writer,
        recv: Reader,
        channel: Option<Channel>,
    ) -> Result<Client, ClientError> {
        let proof = link.access.proof(channel.as_ref());
        let observed = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut client = Client { link, send, recv, observed };
        client.send(&ClientMsg::Hello { version: VERSION, proof }).await?;
        match client.recv().await? {
            NodeMsg::Welcome { observed, .. } => client.observed = observed,
            other => return Err(unexpected(&other)),
        }
        Ok(client)
    }

    /// The address the node sees this client's socket at.
    pub fn observed(&self) -> SocketAddr {
        self.observed
    }

    /// True when this client reached the node over TCP (its UDP is blocked, or the node's).
    pub fn is_tcp(&self) -> bool {
        matches!(self.link.transport, Transport::Tcp)
    }

    /// The node's address.
    pub fn node(&self) -> SocketAddr {
        self.link.node
    }

    /// Attaches to the relay of this side's `ticket` (from [`NodeMsg::RelayTicket`]) and waits
    /// (at most `wait`) until the other side attached too.
    pub async fn relay(&self, ticket: u64, wait: Duration) -> Result<RelayStream, ClientError> {
        self.relay_opener().relay(ticket, wait).await
    }

    /// Asks for this side's relay ticket; the node answers with [`NodeMsg::RelayTicket`] (or
    /// an error), which may come after messages from the other side already on their way.
    pub async fn request_ticket(&mut self) -> Result<(), ClientError> {
        self.send(&ClientMsg::RelayTicket).await
    }

    /// What opening relay streams needs, apart from the mailbox (so that the mailbox can be
    /// read while relay streams are opened).
    pub fn relay_opener(&self) -> RelayOpener {
        self.link.clone()
    }

    /// Asks for a fresh nameplate.
    pub async fn allocate(&mut self) -> Result<u32, ClientError> {
        self.send(&ClientMsg::Allocate).await?;
        match self.recv().await? {
            NodeMsg::Allocated { nameplate } => Ok(nameplate),
            other => Err(unexpected(&other)),
        }
    }

    /// Joins `nameplate`; returns whether the other side is already there.
    pub async fn claim(&mut self, nameplate: u32) -> Result<bool, ClientError> {
        self.send(&ClientMsg::Claim { nameplate }).await?;
        match self.recv().await? {
            NodeMsg::Claimed { peer_present, .. } => Ok(peer_present),
            other => Err(unexpected(&other)),
        }
    }

    /// Asks to hold our nameplate for several pairings, one after another. The answer,
    /// `Held { key }` (the key that reopens it, [`Client::reclaim`]), comes among the other
    /// messages: the other side may join or write first.
    pub async fn request_hold(&mut self) -> Result<(), ClientError> {
        self.send(&ClientMsg::Hold).await
    }

    /// Reopens `nameplate`, which we hold with `key`; returns whether the other side is
    /// already there (it claimed the number after our hold ran out).
    pub async fn reclaim(&mut self, nameplate: u32, key: [u8; 16]) -> Result<bool, ClientError> {
        self.send(&ClientMsg::Reclaim { nameplate, key }).await?;
        match self.recv().await? {
            NodeMsg::Claimed { peer_present, .. } => Ok(peer_present),
            other => Err(unexpected(&other)),
        }
    }

    /// Passes `body` to the other side.
    pub async fn post(&mut self, body: Vec<u8>) -> Result<(), ClientError> {
        self.send(&ClientMsg::Send { body }).await
    }

    /// Tells the node we are done with the nameplate.
    pub async fn release(&mut self) -> Result<(), ClientError> {
        self.send(&ClientMsg::Release).await
    }

    /// The next message from the node (errors are returned as [`ClientError::Refused`]).
    pub async fn recv(&mut self) -> Result<NodeMsg, ClientError> {
        self.recv_within(self.link.timeout).await
    }

    /// As [`Client::recv`], waiting at most `timeout`. A call that is cancelled (dropped before
    /// it returns) may leave half a message unread: afterwards, only send, or [`Client::finish`].
    pub async fn recv_within(&mut self, timeout: Duration) -> Result<NodeMsg, ClientError> {
        match read_msg(&mut self.recv, timeout).await {
            Ok(NodeMsg::Error { code, message }) => Err(ClientError::Refused { code, message }),
            Ok(msg) => Ok(msg),
            Err(e) => Err(self.why_lost(e)),
        }
    }

    /// A lost connection explained by how the node closed it, where it said.
    fn why_lost(&self, e: ClientError) -> ClientError {
        let ClientError::Lost(_) = e else { return e };
        match &self.link.transport {
            Transport::Quic(conn) => match conn.close_reason() {
                Some(quinn::ConnectionError::ApplicationClosed(c))
                    if c.reason.as_ref() == SHUTDOWN_REASON =>
                {
                    ClientError::ShuttingDown
                }
                _ => e,
            },
            Transport::Tcp => e,
        }
    }

    /// Ends the session after everything sent so far reached the node: ends our side of the
    /// stream and waits (at most 2 s) for the node to end its side, which it does once it has
    /// read ours to the end.
    /// Then closes it and waits (at most [`CLOSE_WAIT`]) for the close to go out.
    pub async fn finish(mut self) {
        let closer = self.closer();
        self.leave().await;
        closer.close(CLOSE_WAIT).await;
    }

    /// The first half of [`Client::finish`]: ends our side of the stream and waits (at most
    /// 2 s) for the node to end its side. The session stays open for [`Closer::close`].
    pub async fn leave(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.send.shutdown().await;
            let mut sink = [0u8; 512];
            while matches!(self.recv.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }

    /// What closes this session, also once the client itself has moved elsewhere.
    pub fn closer(&self) -> Closer {
        match &self.link.transport {
            Transport::Quic(conn) => Closer(Some(conn.clone())),
            Transport::Tcp => Closer(None),
        }
    }

    /// Closes the session at once (what was sent may be lost). True if that closed a QUIC
    /// connection, whose close the endpoint still has to send (over TCP, the socket closes
    /// when it is dropped).
    pub fn close(&self) -> bool {
        if let Transport::Quic(conn) = &self.link.transport {
            conn.close(0u32.into(), b"bye");
            return true;
        }
        false
    }

    async fn send(&mut self, msg: &ClientMsg) -> Result<(), ClientError> {
        let frame = wire::encode(msg);
        let timeout = self.link.timeout;
        tokio::time::timeout(timeout, self.send.write_all(&frame))
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
            .map_err(|e| self.why_lost(ClientError::Lost(e.to_string())))
    }
}

async fn read_msg(reader: &mut Reader, timeout: Duration) -> Result<NodeMsg, ClientError> {
    let read = async {
        let mut header = [0u8; 4];
        reader.read_exact(&mut header).await.map_err(|e| ClientError::Lost(e.to_string()))?;
        let len = wire::frame_len(header)?;
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).await.map_err(|e| ClientError::Lost(e.to_string()))?;
        Ok::<_, ClientError>(wire::decode_node(&body)?)
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| ClientError::Timeout(timeout))?
}

async fn connect_quic(
    endpoint: &quinn::Endpoint,
    node: SocketAddr,
    pin: Option<Fingerprint>,
    timeout: Duration,
) -> Result<quinn::Connection, ClientError> {
    let unreachable = |reason: String| ClientError::Unreachable { node, reason };
    let (tls, refused) = tls_client_config(pin)?;
    let config = quic_config(tls)?;
    let connecting =
        endpoint.connect_with(config, node, SERVER_NAME).map_err(|e| unreachable(e.to_string()))?;
    tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| unreachable(format!("no answer within {}s", timeout.as_secs_f32())))?
        .map_err(|e| match refused.refused() {
            true => ClientError::WrongCertificate { node },
            false => unreachable(e.to_string()),
        })
}

/// TCP keep-alive settings for connections between clients and the node: a dead peer is
/// noticed within about a minute.
pub fn keepalive() -> socket2::TcpKeepalive {
    socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(20))
        .with_interval(Duration::from_secs(10))
        .with_retries(4)
}

/// A new TLS-over-TCP stream to `node`, and the channel its session exported.
async fn open_tcp(
    node: SocketAddr,
    access: &NodeAccess,
    timeout: Duration,
) -> Result<(Reader, Writer, Option<Channel>), ClientError> {
    let unreachable = |reason: String| ClientError::Unreachable { node, reason };
    let setup = async {
        let tcp = TcpStream::connect(node).await.map_err(|e| unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        // A node (or NAT mapping) that vanished is noticed while we wait for the peer.
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive());
        let (config, refused) = tls_client_config(access.fingerprint)?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from(SERVER_NAME)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let tls = connector.connect(name, tcp).await.map_err(|e| match refused.refused() {
            true => ClientError::WrongCertificate { node },
            false => unreachable(format!("TLS over TCP: {e}")),
        })?;
        let channel = auth::tls_channel(tls.get_ref().1);
        let (reader, writer) = tokio::io::split(tls);
        Ok::<_, ClientError>((Box::new(reader) as Reader, Box::new(writer) as Writer, channel))
    };
    tokio::time::timeout(timeout, setup)
        .await
        .map_err(|_| unreachable(format!("no TCP answer within {}s", timeout.as_secs_f32())))?
}

fn unexpected(msg: &NodeMsg) -> ClientError {
    ClientError::Protocol(format!("unexpected {msg:?}"))
}

/// The QUIC client configuration for talking to a node (ALPN, no node authentication,
/// keep-alives).
pub fn client_config() -> Result<quinn::ClientConfig, ClientError> {
    quic_config(tls_client_config(None)?.0)
}

/// QUIC on `tls`, with keep-alives.
fn quic_config(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, ClientError> {
    let crypto =
        QuicClientConfig::try_from(tls).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    // The node never opens a stream towards a client: one that does gets none, instead of
    // quinn's default 100 of each kind with 1.25 MB buffered apiece that nobody reads.
    transport.max_concurrent_uni_streams(0u32.into());
    transport.max_concurrent_bidi_streams(0u32.into());
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// TLS settings towards a node (QUIC or TCP): ALPN, TLS 1.3, and either no node
/// authentication or the pinned certificate; with the flag that tells a refused pin.
fn tls_client_config(
    pin: Option<Fingerprint>,
) -> Result<(rustls::ClientConfig, Arc<PinnedCert>), ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pinned = Arc::new(PinnedCert::new(AnyCert::new(provider.clone()), pin));
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Protocol(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(pinned.clone())
        .with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    Ok((crypto, pinned))
}
