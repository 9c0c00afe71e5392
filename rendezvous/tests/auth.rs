//! Finding 10 of the security review: the access token never crosses the wire (a node
//! impersonator learns nothing it can use), and a client can pin the node's certificate.
#![cfg(feature = "server")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use p2p_copy_rendezvous::auth;
use p2p_copy_rendezvous::client::{Client, ClientError, NodeAccess, ALPN};
use p2p_copy_rendezvous::server::{self, ServerConfig, TlsFiles};
use p2p_copy_rendezvous::table::Limits;
use p2p_copy_rendezvous::wire::{self, ClientMsg, ErrorCode, NodeMsg};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(5);
const TOKEN: &str = "a-long-secret-node-token-1234567890";

/// A node in-process on loopback; stops when dropped.
struct Node {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Node {
    fn start(config: ServerConfig) -> Node {
        let listeners = server::bind("127.0.0.1:0".parse().unwrap(), &config).unwrap();
        let addr = listeners.local_addr().unwrap();
        let task = tokio::spawn(server::serve(listeners, config, std::future::pending()));
        Node { addr, task }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn endpoint() -> quinn::Endpoint {
    quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap()
}

fn with_token() -> ServerConfig {
    ServerConfig {
        limits: Limits { token: Some(TOKEN.into()), ..Limits::default() },
        ..ServerConfig::default()
    }
}

/// A self-signed certificate and its key.
fn certificate() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let certified = rcgen::generate_simple_self_signed(vec!["node.example".to_owned()]).unwrap();
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    (cert, key)
}

/// A certificate and key written as PEM files, for `--tls-cert`/`--tls-key`.
fn certificate_files(dir: &std::path::Path) -> (TlsFiles, auth::Fingerprint) {
    let certified = rcgen::generate_simple_self_signed(vec!["node.example".to_owned()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    (TlsFiles { cert, key }, auth::fingerprint(certified.cert.der()))
}

fn server_tls() -> rustls::ServerConfig {
    let (cert, key) = certificate();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls
}

/// Reads one frame: its raw bytes (header included) and what it decodes to.
async fn read_frame(reader: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut header = [0u8; 4];
    reader.read_exact(&mut header).await.unwrap();
    let len = wire::frame_len(header).unwrap();
    let mut frame = header.to_vec();
    frame.resize(4 + len, 0);
    reader.read_exact(&mut frame[4..]).await.unwrap();
    frame
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The frame a raw QUIC client gets back from `node` after sending `frame` on a new stream.
async fn replay_quic(node: SocketAddr, frame: &[u8]) -> NodeMsg {
    let ep = endpoint();
    let config = p2p_copy_rendezvous::client::client_config().unwrap();
    let conn = ep.connect_with(config, node, "node").unwrap().await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(frame).await.unwrap();
    let answer = tokio::time::timeout(WAIT, read_frame(&mut recv)).await.unwrap();
    wire::decode_node(&answer[4..]).unwrap()
}

/// A fake node that accepts any client over QUIC (as a hijacked address would) sees a proof
/// bound to its own session, never the token; and that proof, replayed to the real node
/// by the man in the middle, is refused.
#[tokio::test]
async fn a_fake_quic_node_never_sees_the_token() {
    let real = Node::start(with_token());
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls()).unwrap();
    let fake = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(crypto)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let fake_addr = fake.local_addr().unwrap();
    let captured = tokio::spawn(async move {
        let conn = fake.accept().await.unwrap().await.unwrap();
        let (_send, mut recv) = conn.accept_bi().await.unwrap();
        let frame = read_frame(&mut recv).await;
        (frame, auth::quic_channel(&conn).unwrap())
    });
    let ep = endpoint();
    let client = Client::connect(&ep, fake_addr, Some(TOKEN.into()), Duration::from_secs(2));
    let (_, captured) = tokio::join!(client, captured);
    let (frame, channel) = captured.unwrap();
    assert!(!contains(&frame, TOKEN.as_bytes()), "the token crossed the wire");
    let proof = match wire::decode_client(&frame[4..]).unwrap() {
        ClientMsg::Hello { proof: Some(proof), .. } => proof,
        other => panic!("{other:?}"),
    };
    assert_eq!(proof, auth::proof(TOKEN, &channel), "bound to the fake's own session");
    match replay_quic(real.addr, &frame).await {
        NodeMsg::Error { code: ErrorCode::Unauthorized, .. } => {}
        other => panic!("a replayed proof was accepted: {other:?}"),
    }
    // The real node takes the real client.
    let ok = Client::connect(&endpoint(), real.addr, Some(TOKEN.into()), WAIT).await;
    assert!(ok.is_ok(), "{ok:?}");
}

/// The same over TLS on TCP, for the session and for a relay stream's `Relay`.
#[tokio::test]
async fn a_fake_tcp_node_never_sees_the_token() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls()));
    let fake = tokio::spawn(async move {
        let mut seen = Vec::new();
        // The session, then the relay stream the client opens once welcomed.
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let frame = read_frame(&mut tls).await;
            let channel = auth::tls_channel(tls.get_ref().1).unwrap();
            let welcome = NodeMsg::Welcome { version: wire::VERSION, observed: fake_addr };
            tls.write_all(&wire::encode(&welcome)).await.unwrap();
            seen.push((frame, channel));
            tokio::spawn(async move {
                let _ = tokio::time::timeout(WAIT, tls.read(&mut [0; 64])).await;
            });
        }
        seen
    });
    let client = Client::connect_tcp(fake_addr, Some(TOKEN.into()), WAIT).await.unwrap();
    // The fake answers the relay request with Welcome: the client gives up, which is fine.
    let _ = client.relay(42, Duration::from_millis(500)).await;
    let seen = fake.await.unwrap();
    let channels: Vec<_> = seen.iter().map(|(_, c)| *c).collect();
    assert_ne!(channels[0], channels[1], "each TCP connection is its own session");
    for (frame, channel) in &seen {
        assert!(!contains(frame, TOKEN.as_bytes()), "the token crossed the wire");
        let proof = match wire::decode_client(&frame[4..]).unwrap() {
            ClientMsg::Hello { proof, .. } | ClientMsg::Relay { proof, .. } => proof,
            other => panic!("{other:?}"),
        };
        assert_eq!(proof, Some(auth::proof(TOKEN, channel)));
    }
}

/// A client pinned to the node's certificate (the operator's, on QUIC and TCP alike) reaches
/// it, and refuses a node with another certificate on either transport, without falling
/// back from one to the other.
#[tokio::test]
async fn a_pinned_client_refuses_another_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (files, fingerprint) = certificate_files(dir.path());
    let node = Node::start(ServerConfig { tls: Some(files), ..with_token() });
    let pinned = NodeAccess { token: Some(TOKEN.into()), fingerprint: Some(fingerprint) };
    let ep = endpoint();
    let quic = Client::connect_with(&ep, node.addr, pinned.clone(), WAIT).await;
    assert!(quic.is_ok(), "QUIC presents the operator's certificate: {quic:?}");
    let tcp = Client::connect_tcp_with(node.addr, pinned.clone(), WAIT).await;
    assert!(tcp.is_ok(), "TCP presents it too: {tcp:?}");

    // Another node (its own self-signed certificate) at another address.
    let other = Node::start(with_token());
    let wrong = |r: Result<Client, ClientError>| match r {
        Err(ClientError::WrongCertificate { node }) => node,
        other => panic!("not refused: {other:?}"),
    };
    let udp = std::time::Duration::from_secs(1);
    assert_eq!(
        wrong(Client::connect_with(&ep, other.addr, pinned.clone(), WAIT).await),
        other.addr
    );
    assert_eq!(wrong(Client::connect_tcp_with(other.addr, pinned.clone(), WAIT).await), other.addr);
    let any = Client::connect_any_with(&ep, other.addr, pinned.clone(), udp, WAIT).await;
    assert_eq!(wrong(any), other.addr);
    // A pin of the other node's fingerprint refuses the first one.
    let mut flipped = pinned;
    flipped.fingerprint = Some([0x5a; 32]);
    assert_eq!(wrong(Client::connect_with(&ep, node.addr, flipped, WAIT).await), node.addr);
}
