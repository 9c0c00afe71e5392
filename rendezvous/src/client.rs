//! The client side of the node protocol.
//!
//! A [`Client`] rides on the caller's QUIC endpoint: the same UDP socket later talks to the
//! peer, so the address the node observes (and reports in `Welcome`) is the NAT mapping the
//! peer must reach. The node is not authenticated — it is trusted with nothing; the code
//! protects everything that passes through it.
//!
//! Every wait is bounded by the caller's timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;

use crate::tls::AnyCert;
use crate::wire::{self, ClientMsg, ErrorCode, NodeMsg, WireError, VERSION};

/// ALPN of the client ↔ node protocol.
pub const ALPN: &[u8] = b"p2p-copy-rendezvous/1";

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
}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

/// A session with the node.
#[derive(Debug)]
pub struct Client {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    observed: SocketAddr,
    timeout: Duration,
}

impl Client {
    /// Connects to `node` over `endpoint` and says hello; every later wait is bounded by
    /// `timeout`.
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        node: SocketAddr,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable { node, reason };
        let connecting = endpoint
            .connect_with(client_config()?, node, "p2p-copy-rendezvous")
            .map_err(|e| unreachable(e.to_string()))?;
        let conn = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| unreachable(format!("no answer within {}s", timeout.as_secs())))?
            .map_err(|e| unreachable(e.to_string()))?;
        let (send, recv) = tokio::time::timeout(timeout, conn.open_bi())
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
            .map_err(|e| ClientError::Lost(e.to_string()))?;
        let mut client =
            Client { conn, send, recv, observed: SocketAddr::from(([0, 0, 0, 0], 0)), timeout };
        client.send(&ClientMsg::Hello { version: VERSION, token }).await?;
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
        self.recv_within(self.timeout).await
    }

    /// As [`Client::recv`], waiting at most `timeout`.
    pub async fn recv_within(&mut self, timeout: Duration) -> Result<NodeMsg, ClientError> {
        let read = async {
            let mut header = [0u8; 4];
            self.recv
                .read_exact(&mut header)
                .await
                .map_err(|e| ClientError::Lost(e.to_string()))?;
            let len = wire::frame_len(header)?;
            let mut body = vec![0u8; len];
            self.recv.read_exact(&mut body).await.map_err(|e| ClientError::Lost(e.to_string()))?;
            Ok::<_, ClientError>(wire::decode_node(&body)?)
        };
        match tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| ClientError::Timeout(timeout))??
        {
            NodeMsg::Error { code, message } => Err(ClientError::Refused { code, message }),
            msg => Ok(msg),
        }
    }

    /// Closes the session.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
    }

    async fn send(&mut self, msg: &ClientMsg) -> Result<(), ClientError> {
        let frame = wire::encode(msg);
        tokio::time::timeout(self.timeout, self.send.write_all(&frame))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?
            .map_err(|e| ClientError::Lost(e.to_string()))
    }
}

fn unexpected(msg: &NodeMsg) -> ClientError {
    ClientError::Protocol(format!("unexpected {msg:?}"))
}

/// The QUIC client configuration for talking to a node (ALPN, no node authentication,
/// keep-alives).
pub fn client_config() -> Result<quinn::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Protocol(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert::new(provider)))
        .with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        QuicClientConfig::try_from(crypto).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    config.transport_config(Arc::new(transport));
    Ok(config)
}
