//! The node in-process on loopback, driven by real clients.
#![cfg(feature = "server")]
// Fixture helpers outside #[test] functions panic on setup failure, like the tests do.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use p2p_copy_rendezvous::client::{Client, ClientError};
use p2p_copy_rendezvous::server::{self, ServerConfig};
use p2p_copy_rendezvous::wire::{ErrorCode, NodeMsg};

const WAIT: Duration = Duration::from_secs(5);

struct Node {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Node {
    /// Starts a node; the shutdown grace is kept short, since test clients stay connected.
    fn start(config: ServerConfig) -> Node {
        let listeners = server::bind("127.0.0.1:0".parse().unwrap(), &config).unwrap();
        Node::serve(listeners, config)
    }

    fn serve(listeners: server::Listeners, mut config: ServerConfig) -> Node {
        config.grace = config.grace.min(Duration::from_millis(300));
        Node::serve_as_is(listeners, config)
    }

    /// Serves with the configured grace period.
    fn serve_as_is(listeners: server::Listeners, config: ServerConfig) -> Node {
        let addr = listeners.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(listeners, config, async {
            let _ = stopped.await;
        }));
        Node { addr, stop: Some(stop), task }
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), &mut self.task).await.unwrap().unwrap();
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

async fn client(node: &Node) -> (Client, quinn::Endpoint) {
    let ep = endpoint();
    let c = Client::connect(&ep, node.addr, None, WAIT).await.unwrap();
    (c, ep)
}

#[tokio::test]
async fn two_sides_meet_exchange_messages_and_part() {
    let node = Node::start(ServerConfig::default());
    let (mut a, ep_a) = client(&node).await;
    assert_eq!(
        a.observed(),
        ep_a.local_addr().unwrap(),
        "the node reports the client's own socket"
    );
    let (mut b, _ep_b) = client(&node).await;

    let n = a.allocate().await.unwrap();
    assert!(n >= 1);
    assert!(b.claim(n).await.unwrap(), "the allocator is already there");
    assert_eq!(a.recv().await.unwrap(), NodeMsg::PeerJoined);

    a.post(b"pake from a".to_vec()).await.unwrap();
    b.post(b"pake from b".to_vec()).await.unwrap();
    assert_eq!(b.recv().await.unwrap(), NodeMsg::Message { body: b"pake from a".to_vec() });
    assert_eq!(a.recv().await.unwrap(), NodeMsg::Message { body: b"pake from b".to_vec() });

    // A third party cannot join a nameplate that has two sides.
    let (mut c, _ep_c) = client(&node).await;
    match c.claim(n).await {
        Err(ClientError::Refused { code: ErrorCode::NameplateFull, .. }) => {}
        other => panic!("third party got {other:?}"),
    }

    a.release().await.unwrap();
    assert_eq!(b.recv().await.unwrap(), NodeMsg::PeerLeft);
    node.shutdown().await;
}

#[tokio::test]
async fn messages_wait_for_the_peer_and_a_preshared_nameplate_works() {
    let node = Node::start(ServerConfig::default());
    let (mut a, _ea) = client(&node).await;
    assert!(!a.claim(4242).await.unwrap(), "first to claim a pre-shared nameplate");
    a.post(b"early".to_vec()).await.unwrap();
    let (mut b, _eb) = client(&node).await;
    assert!(b.claim(4242).await.unwrap());
    assert_eq!(b.recv().await.unwrap(), NodeMsg::Message { body: b"early".to_vec() });
    node.shutdown().await;
}

#[tokio::test]
async fn malformed_input_closes_only_that_client() {
    let node = Node::start(ServerConfig::default());
    let (mut good, _eg) = client(&node).await;
    // A raw connection that sends an absurd length prefix instead of a hello.
    let ep = endpoint();
    let config = p2p_copy_rendezvous::client::client_config().unwrap();
    let raw = ep.connect_with(config, node.addr, "node").unwrap().await.unwrap();
    let (mut send, _recv) = raw.open_bi().await.unwrap();
    send.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await.unwrap();
    tokio::time::timeout(WAIT, raw.closed()).await.expect("the node closes a malformed client");
    let n = good.allocate().await.unwrap();
    assert!(n >= 1, "the node still serves others");
    node.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_node_fails_within_the_timeout_and_names_it() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let started = std::time::Instant::now();
    let err =
        Client::connect(&endpoint(), addr, None, Duration::from_millis(500)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn shutdown_refuses_new_sessions() {
    let node =
        Node::start(ServerConfig { grace: Duration::from_millis(200), ..Default::default() });
    let addr = node.addr;
    node.shutdown().await;
    let err = Client::connect(&endpoint(), addr, None, Duration::from_millis(500)).await;
    assert!(err.is_err(), "a stopped node accepts nobody");
}

/// While open sessions drain, a newcomer still reaches the node and is told it is shutting
/// down (rather than finding nothing there).
#[tokio::test]
async fn a_draining_node_says_so() {
    let config = ServerConfig { grace: Duration::from_secs(2), ..Default::default() };
    let listeners = server::bind("127.0.0.1:0".parse().unwrap(), &config).unwrap();
    let mut node = Node::serve_as_is(listeners, config);
    let (mut a, _ea) = client(&node).await;
    a.allocate().await.unwrap();
    let _ = node.stop.take().unwrap().send(());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut b, _eb) = client(&node).await;
    match b.allocate().await {
        Err(ClientError::Refused { code: ErrorCode::ShuttingDown, .. }) => {}
        other => panic!("newcomer during the grace period got {other:?}"),
    }
}

/// Pairs two clients on a fresh nameplate and returns them (a allocated, b claimed).
async fn pair(a: &mut Client, b: &mut Client) {
    let n = a.allocate().await.unwrap();
    assert!(b.claim(n).await.unwrap());
    assert_eq!(a.recv().await.unwrap(), NodeMsg::PeerJoined);
}

/// Relay streams with the same token and different sides are spliced; bytes pass both ways
/// and the end of one direction reaches the other side.
async fn relay_between(a: &Client, b: &Client, token: [u8; 32]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (ra, rb) = tokio::join!(a.relay(token, 0, WAIT), b.relay(token, 1, WAIT));
    let (mut ra, mut rb) = (ra.unwrap(), rb.unwrap());
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let send = async {
        ra.writer.write_all(&big).await.unwrap();
        ra.writer.shutdown().await.unwrap();
    };
    let recv = async {
        let mut got = Vec::new();
        rb.reader.read_to_end(&mut got).await.unwrap();
        got
    };
    let ((), got) = tokio::join!(send, recv);
    assert!(got == big, "the relay delivers every byte in order");
    rb.writer.write_all(b"back").await.unwrap();
    let mut back = [0u8; 4];
    ra.reader.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"back");
}

#[tokio::test]
async fn quic_and_tcp_clients_meet_and_relay() {
    let node = Node::start(ServerConfig::default());
    let (mut a, _ea) = client(&node).await;
    let mut b = Client::connect_tcp(node.addr, None, WAIT).await.unwrap();
    assert!(b.is_tcp());
    assert_eq!(b.observed().ip(), node.addr.ip());
    pair(&mut a, &mut b).await;
    b.post(b"over tcp".to_vec()).await.unwrap();
    assert_eq!(a.recv().await.unwrap(), NodeMsg::Message { body: b"over tcp".to_vec() });
    relay_between(&a, &b, [7; 32]).await;
    // Two QUIC clients relay too.
    let (c, _ec) = client(&node).await;
    let (d, _ed) = client(&node).await;
    relay_between(&c, &d, [8; 32]).await;
    node.shutdown().await;
}

#[tokio::test]
async fn an_access_token_guards_the_relay_too() {
    let config = ServerConfig {
        limits: p2p_copy_rendezvous::table::Limits {
            token: Some("sesame".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let node = Node::start(config);
    let ep = endpoint();
    match Client::connect(&ep, node.addr, None, WAIT).await {
        Err(ClientError::Refused { code: ErrorCode::Unauthorized, .. }) => {}
        other => panic!("no token: {other:?}"),
    }
    let a = Client::connect(&ep, node.addr, Some("sesame".into()), WAIT).await.unwrap();
    let b = Client::connect_tcp(node.addr, Some("sesame".into()), WAIT).await.unwrap();
    relay_between(&a, &b, [9; 32]).await;
    node.shutdown().await;
}

#[tokio::test]
async fn udp_without_answer_falls_back_to_tcp() {
    let config = ServerConfig::default();
    // QUIC is served elsewhere; on the port the client is given, UDP is a black hole and only
    // the node's TCP listener answers.
    let quic = server::endpoint("127.0.0.1:0".parse().unwrap(), &config).unwrap();
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port_addr = hole.local_addr().unwrap();
    let tcp = tokio::net::TcpListener::bind(port_addr).await.unwrap();
    let node = Node::serve(server::Listeners { quic, tcp: Some(tcp) }, config);
    let started = std::time::Instant::now();
    let c = Client::connect_any(&endpoint(), port_addr, None, Duration::from_millis(500), WAIT)
        .await
        .unwrap();
    assert!(c.is_tcp());
    assert!(started.elapsed() < Duration::from_secs(4));
    node.shutdown().await;
}

/// 500 pairings at once through one node, all from loopback (so the per-address limits are
/// lifted for the test), each completing the whole mailbox exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_pairings_complete() {
    const PAIRS: usize = 500;
    let mut config = ServerConfig::default();
    config.limits.clients_per_ip = 2 * PAIRS;
    config.limits.claims_per_minute = 0;
    let node = Node::start(config);
    let endpoints: Vec<_> = (0..8).map(|_| endpoint()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..PAIRS {
        let ep = endpoints[i % endpoints.len()].clone();
        let addr = node.addr;
        tasks.spawn(async move {
            let mut a = Client::connect(&ep, addr, None, Duration::from_secs(30)).await.unwrap();
            let mut b = Client::connect(&ep, addr, None, Duration::from_secs(30)).await.unwrap();
            let n = a.allocate().await.unwrap();
            b.claim(n).await.unwrap();
            assert_eq!(a.recv().await.unwrap(), NodeMsg::PeerJoined);
            a.post(n.to_be_bytes().to_vec()).await.unwrap();
            assert_eq!(
                b.recv().await.unwrap(),
                NodeMsg::Message { body: n.to_be_bytes().to_vec() }
            );
            n
        });
    }
    let mut nameplates = std::collections::HashSet::new();
    let all = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(done) = tasks.join_next().await {
            assert!(nameplates.insert(done.unwrap()), "a nameplate was handed out twice");
        }
    })
    .await;
    assert!(all.is_ok(), "pairings did not complete in time");
    assert_eq!(nameplates.len(), PAIRS);
    node.shutdown().await;
}

/// A TCP client that does not speak TLS is served only when the operator asked for it: by
/// default the connection is closed without an answer (its token would cross in the clear).
#[tokio::test]
async fn plaintext_tcp_is_served_only_when_asked_for() {
    use p2p_copy_rendezvous::wire::{self, ClientMsg, VERSION};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for plaintext in [false, true] {
        let config = ServerConfig { tcp_plaintext: plaintext, ..ServerConfig::default() };
        let node = Node::start(config);
        let mut tcp = tokio::net::TcpStream::connect(node.addr).await.unwrap();
        let hello = wire::encode(&ClientMsg::Hello { version: VERSION, token: None });
        let _ = tcp.write_all(&hello).await;
        let mut header = [0u8; 4];
        let read = tokio::time::timeout(WAIT, tcp.read_exact(&mut header)).await.unwrap();
        if plaintext {
            read.unwrap();
            let mut body = vec![0u8; wire::frame_len(header).unwrap()];
            tcp.read_exact(&mut body).await.unwrap();
            assert!(
                matches!(wire::decode_node(&body).unwrap(), NodeMsg::Welcome { .. }),
                "welcomed in the clear when asked for"
            );
        } else {
            assert!(read.is_err(), "closed without an answer");
        }
    }
}
