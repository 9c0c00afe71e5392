//! The node in-process on loopback, driven by real clients.
#![cfg(feature = "server")]
// Fixture helpers outside #[test] functions panic on setup failure, like the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use p2p_copy_rendezvous::client::{Client, ClientError};
use p2p_copy_rendezvous::server::{self, ServerConfig};
use p2p_copy_rendezvous::wire::{
    put_datagram_header, ErrorCode, NodeMsg, DATAGRAM_HEADER, DATAGRAM_KIND,
};
use quinn::udp::{RecvMeta, Transmit};
use quinn::AsyncUdpSocket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// A client socket that can also send raw datagrams from the endpoint's own address, and
/// catches the relay datagrams that arrive (the rest goes to quinn).
struct Tapped {
    inner: Arc<dyn AsyncUdpSocket>,
    caught: std::sync::Mutex<Vec<Vec<u8>>>,
    arrived: tokio::sync::Notify,
}

impl std::fmt::Debug for Tapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tapped")
    }
}

impl AsyncUdpSocket for Tapped {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }
    fn try_send(&self, transmit: &Transmit) -> std::io::Result<()> {
        self.inner.try_send(transmit)
    }
    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let mut kept = 0;
            for i in 0..n {
                let m = meta[i];
                if bufs[i].first() == Some(&DATAGRAM_KIND) {
                    let mut caught = self.caught.lock().unwrap();
                    caught.extend(bufs[i][..m.len].chunks(m.stride.max(1)).map(<[u8]>::to_vec));
                    self.arrived.notify_one();
                    continue;
                }
                if kept != i {
                    let (front, back) = bufs.split_at_mut(i);
                    front[kept][..m.len].copy_from_slice(&back[0][..m.len]);
                }
                meta[kept] = m;
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl Tapped {
    /// Sends `segments` (equal sizes but the last) as one batch when there is more than one.
    fn send(&self, to: SocketAddr, segments: &[Vec<u8>]) {
        let contents: Vec<u8> = segments.concat();
        let segment_size = (segments.len() > 1).then(|| segments[0].len());
        let t = Transmit {
            destination: to,
            ecn: None,
            contents: &contents,
            segment_size,
            src_ip: None,
        };
        self.inner.try_send(&t).unwrap();
    }

    /// The next `n` relay datagrams that arrive.
    async fn catch(&self, n: usize) -> Vec<Vec<u8>> {
        tokio::time::timeout(WAIT, async {
            loop {
                let notified = self.arrived.notified();
                {
                    let mut caught = self.caught.lock().unwrap();
                    if caught.len() >= n {
                        return caught.drain(..n).collect();
                    }
                }
                notified.await;
            }
        })
        .await
        .expect("relay datagrams in time")
    }

    fn nothing_caught(&self) -> bool {
        self.caught.lock().unwrap().is_empty()
    }
}

/// A QUIC client whose socket is [`Tapped`].
async fn tapped_client(node: &Node) -> (Client, quinn::Endpoint, Arc<Tapped>) {
    let runtime = quinn::default_runtime().unwrap();
    let std = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let inner = runtime.wrap_udp_socket(std).unwrap();
    let tapped =
        Arc::new(Tapped { inner, caught: Default::default(), arrived: tokio::sync::Notify::new() });
    // As the real client: QUIC packets keep their fixed bit (0x40), so none is taken for a
    // relay datagram (0x01) by the tap.
    let mut config = quinn::EndpointConfig::default();
    config.grease_quic_bit(false);
    let ep =
        quinn::Endpoint::new_with_abstract_socket(config, None, tapped.clone(), runtime).unwrap();
    let c = Client::connect(&ep, node.addr, None, WAIT).await.unwrap();
    (c, ep, tapped)
}

/// Each side's relay ticket for their pairing.
async fn tickets(a: &mut Client, b: &mut Client) -> (u64, u64) {
    let mut got = Vec::new();
    for c in [a, b] {
        c.request_ticket().await.unwrap();
        match c.recv().await.unwrap() {
            NodeMsg::RelayTicket { ticket } => got.push(ticket),
            other => panic!("{other:?}"),
        }
    }
    (got[0], got[1])
}

fn datagram(ticket: u64, payload: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; DATAGRAM_HEADER];
    put_datagram_header(&mut d, ticket);
    d.extend_from_slice(payload);
    d
}

fn relay_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.relay.session_rate = 0;
    config.relay.total_rate = 0;
    config
}

/// Two QUIC clients of one pairing relay datagrams through the node: each arrives with the
/// receiving side's ticket and the packet unchanged, a batch stays a batch, a keep-alive goes
/// nowhere, and a datagram with a valid ticket from another address is dropped.
#[tokio::test]
async fn the_relay_forwards_datagrams_between_the_two_sides_of_a_pairing() {
    let config = relay_config();
    let metrics = config.metrics_handle.clone();
    let node = Node::start(config);
    let (mut a, _ea, ta) = tapped_client(&node).await;
    let (mut b, _eb, tb) = tapped_client(&node).await;
    pair(&mut a, &mut b).await;
    let (ka, kb) = tickets(&mut a, &mut b).await;
    let (ra, rb) = tokio::join!(a.relay(ka, WAIT), b.relay(kb, WAIT));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!((ra.datagrams, rb.datagrams), (Some(node.addr), Some(node.addr)));

    ta.send(node.addr, &[datagram(ka, b"\x40one packet")]);
    assert_eq!(tb.catch(1).await, [datagram(kb, b"\x40one packet")]);
    let batch: Vec<Vec<u8>> =
        [&b"\x41aaaa"[..], b"\x42bbbb", b"\x43c"].iter().map(|p| datagram(kb, p)).collect();
    tb.send(node.addr, &batch);
    let want: Vec<Vec<u8>> =
        [&b"\x41aaaa"[..], b"\x42bbbb", b"\x43c"].iter().map(|p| datagram(ka, p)).collect();
    assert_eq!(ta.catch(3).await, want);

    // A keep-alive refreshes the relay and goes nowhere; a stranger with A's ticket is dropped.
    ta.send(node.addr, &[datagram(ka, b"")]);
    let stranger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dropped = metrics.relay_dropped_total.load(Ordering::Relaxed);
    stranger.send_to(&datagram(ka, b"\x40spoofed"), node.addr).await.unwrap();
    ta.send(node.addr, &[datagram(ka, b"\x40marker")]);
    assert_eq!(tb.catch(1).await, [datagram(kb, b"\x40marker")], "only the marker arrives");
    assert!(tb.nothing_caught());
    assert_eq!(metrics.relay_dropped_total.load(Ordering::Relaxed), dropped + 1);
    assert_eq!(metrics.relays_active.load(Ordering::Relaxed), 1);
    assert!(metrics.relay_bytes_total.load(Ordering::Relaxed) > 0);

    // One side closing its relay stream ends the relay for the other.
    drop(ra);
    let mut rb = rb;
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, rb.reader.read_to_end(&mut rest)).await.unwrap().unwrap();
    node.shutdown().await;
}

/// A side on QUIC (datagrams) and a side on TCP (records) relay to each other: the node
/// translates.
#[tokio::test]
async fn the_relay_translates_between_datagrams_and_tcp_records() {
    let node = Node::start(relay_config());
    let (mut a, _ea, ta) = tapped_client(&node).await;
    let mut b = Client::connect_tcp(node.addr, None, WAIT).await.unwrap();
    pair(&mut a, &mut b).await;
    b.post(b"over tcp".to_vec()).await.unwrap();
    assert_eq!(a.recv().await.unwrap(), NodeMsg::Message { body: b"over tcp".to_vec() });
    let (ka, kb) = tickets(&mut a, &mut b).await;
    let (ra, rb) = tokio::join!(a.relay(ka, WAIT), b.relay(kb, WAIT));
    let (_ra, mut rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(rb.datagrams, None, "over TCP, packets travel on the stream");

    ta.send(node.addr, &[datagram(ka, b"\x40abcd"), datagram(ka, b"\x40ef")]);
    let mut got = Vec::new();
    while got.len() < 8 {
        let mut header = [0u8; 4];
        rb.reader.read_exact(&mut header).await.unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
        rb.reader.read_exact(&mut body).await.unwrap();
        got.extend_from_slice(&body[2..]);
    }
    assert_eq!(got, b"\x40abcd\x40ef");

    let mut record = 7u32.to_be_bytes().to_vec();
    record.extend_from_slice(&3u16.to_be_bytes());
    record.extend_from_slice(b"\x41xy\x42z");
    rb.writer.write_all(&record).await.unwrap();
    rb.writer.flush().await.unwrap();
    assert_eq!(ta.catch(2).await, [datagram(ka, b"\x41xy"), datagram(ka, b"\x42z")]);
    node.shutdown().await;
}

/// A ticket is only ever given to a side of the pairing, and an access token guards relay
/// streams as it guards sessions.
#[tokio::test]
async fn relay_tickets_and_streams_are_guarded() {
    let config = ServerConfig {
        limits: p2p_copy_rendezvous::table::Limits {
            token: Some("sesame".into()),
            ..Default::default()
        },
        ..relay_config()
    };
    let node = Node::start(config);
    let ep = endpoint();
    match Client::connect(&ep, node.addr, None, WAIT).await {
        Err(ClientError::Refused { code: ErrorCode::Unauthorized, .. }) => {}
        other => panic!("no token: {other:?}"),
    }
    let mut a = Client::connect(&ep, node.addr, Some("sesame".into()), WAIT).await.unwrap();
    let mut b = Client::connect_tcp(node.addr, Some("sesame".into()), WAIT).await.unwrap();
    // No ticket without a partner on the nameplate.
    a.request_ticket().await.unwrap();
    assert!(matches!(a.recv().await, Err(ClientError::Refused { code: ErrorCode::Protocol, .. })));
    pair(&mut a, &mut b).await;
    let (ka, kb) = tickets(&mut a, &mut b).await;
    // Without the token, even the right ticket is refused.
    let stranger =
        Client::connect(&endpoint(), node.addr, Some("sesame".into()), WAIT).await.unwrap();
    let ep2 = endpoint();
    let tokenless = Client::connect(&ep2, node.addr, None, WAIT).await;
    assert!(tokenless.is_err());
    // A guessed ticket is unknown; each real one attaches once.
    match stranger.relay(ka ^ kb, Duration::from_secs(2)).await {
        Err(ClientError::Refused { code: ErrorCode::Expired, .. }) => {}
        other => panic!("a guessed ticket: {other:?}"),
    }
    let (ra, rb) = tokio::join!(a.relay(ka, WAIT), b.relay(kb, WAIT));
    assert!(ra.is_ok() && rb.is_ok());
    match stranger.relay(ka, Duration::from_secs(2)).await {
        Err(ClientError::Refused { code: ErrorCode::Protocol, .. }) => {}
        other => panic!("a ticket attached twice: {other:?}"),
    }
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
        let hello = wire::encode(&ClientMsg::Hello { version: VERSION, proof: None });
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
