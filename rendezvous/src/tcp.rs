//! The node's TCP listener, for clients whose UDP is blocked.
//!
//! Each TCP connection carries one stream: a mailbox session or a relay stream, exactly as a
//! QUIC stream does (see [`crate::wire`]). Clients speak TLS (ALPN `p2p-copy-rendezvous/1`),
//! which also lets the port pass middleboxes that only allow TLS; the node presents the same
//! certificate as on QUIC: the operator's when given one, a self-signed one otherwise. As with
//! QUIC, clients authenticate the node only when they pin its certificate, and prove the
//! access token on the TLS session rather than send it ([`crate::auth`]). A connection whose first byte is not a TLS handshake record
//! is served in the clear only when the operator asked for it (`--tcp-plaintext`, for tools
//! and debugging), and closed otherwise; such a connection has no TLS session to prove a
//! token on, so a node with a token refuses its `Hello` and `Relay`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::client::ALPN;
use crate::relay::Attach;
use crate::server::{serve_stream, ServerError, Shared};

/// Time allowed for the first byte and the TLS handshake.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// First byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE: u8 = 0x16;

/// A certificate chain (leaf first) and the leaf's private key.
pub type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The TLS acceptor presenting `identity`.
pub fn acceptor(identity: Identity) -> Result<TlsAcceptor, ServerError> {
    let tls = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| tls(&e))?
        .with_no_client_auth()
        .with_single_cert(identity.0, identity.1)
        .map_err(|e| tls(&e))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves one TCP connection.
pub(crate) async fn serve(
    stream: TcpStream,
    addr: SocketAddr,
    tls: TlsAcceptor,
    plaintext: bool,
    shared: Arc<Shared>,
) {
    let _ = stream.set_nodelay(true);
    // A client that vanished without closing (crash, NAT timeout) is noticed.
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&crate::client::keepalive());
    let mut first = [0u8; 1];
    match tokio::time::timeout(SETUP_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return,
    }
    if first[0] == TLS_HANDSHAKE {
        let Ok(Ok(stream)) = tokio::time::timeout(SETUP_TIMEOUT, tls.accept(stream)).await else {
            return;
        };
        let channel = crate::auth::tls_channel(stream.get_ref().1);
        let (reader, writer) = tokio::io::split(stream);
        let (reader, writer) = (Box::new(reader), Box::new(writer));
        serve_stream(reader, writer, addr, channel, shared, Attach::Stream).await;
    } else if plaintext {
        let (reader, writer) = stream.into_split();
        let (reader, writer) = (Box::new(reader), Box::new(writer));
        serve_stream(reader, writer, addr, None, shared, Attach::Stream).await;
    } else {
        tracing::debug!(%addr, "a TCP client without TLS: closed (serve it with --tcp-plaintext)");
    }
}
