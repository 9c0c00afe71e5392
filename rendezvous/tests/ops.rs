//! Node operations: the metrics and health listener next to an in-process node on loopback.
#![cfg(feature = "server")]
// Fixture helpers outside #[test] functions panic on setup failure, like the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use p2p_copy_rendezvous::client::Client;
use p2p_copy_rendezvous::metrics::{
    self, Metrics, HTTP_TIMEOUT, MAX_HTTP_CONNECTIONS, MAX_REQUEST,
};
use p2p_copy_rendezvous::server::{self, ServerConfig};
use p2p_copy_rendezvous::wire::NodeMsg;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(5);

/// A node and its metrics listener, both stopped on drop.
struct Node {
    addr: SocketAddr,
    http: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    http_stop: Option<tokio::sync::oneshot::Sender<()>>,
    http_task: tokio::task::JoinHandle<()>,
}

impl Node {
    async fn start(config: ServerConfig) -> Node {
        let endpoint = server::endpoint("127.0.0.1:0".parse().unwrap(), &config).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let (http_stop, http_task, http) = start_http(config.metrics_handle.clone()).await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listeners = server::Listeners { quic: endpoint, tcp: None };
        let task = tokio::spawn(server::serve(listeners, config, async {
            let _ = stopped.await;
        }));
        Node { addr, http, stop: Some(stop), task, http_stop: Some(http_stop), http_task }
    }

    async fn client(&self) -> (Client, quinn::Endpoint) {
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let c = Client::connect(&ep, self.addr, None, WAIT).await.unwrap();
        (c, ep)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
        self.http_task.abort();
    }
}

async fn start_http(
    metrics: Arc<Metrics>,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(metrics::serve(listener, metrics, async {
        let _ = stopped.await;
    }));
    (stop, task, addr)
}

/// One HTTP/1.1 GET: the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: node\r\nAccept: */*\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response)).await.unwrap().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a complete response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("a Content-Length")
        .parse()
        .unwrap();
    assert_eq!(length, body.len(), "Content-Length matches the body");
    (status, body.to_owned())
}

/// The value of one sample (`name` with its labels, without the prefix) in a metrics body.
fn sample(body: &str, name: &str) -> i64 {
    let full = format!("p2p_copy_rendezvous_{name} ");
    let line =
        body.lines().find(|l| l.starts_with(&full)).unwrap_or_else(|| panic!("{name} in {body}"));
    line[full.len()..].parse().unwrap()
}

#[tokio::test]
async fn metrics_count_a_real_pairing() {
    let node = Node::start(ServerConfig::default()).await;
    let (status, body) = get(node.http, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(sample(&body, "nameplates_allocated_total"), 0);

    let (mut a, _ea) = node.client().await;
    let (mut b, _eb) = node.client().await;
    let n = a.allocate().await.unwrap();
    assert!(b.claim(n).await.unwrap());
    assert_eq!(a.recv().await.unwrap(), NodeMsg::PeerJoined);
    a.post(b"pake".to_vec()).await.unwrap();
    assert_eq!(b.recv().await.unwrap(), NodeMsg::Message { body: b"pake".to_vec() });
    b.post(b"hello".to_vec()).await.unwrap();
    assert_eq!(a.recv().await.unwrap(), NodeMsg::Message { body: b"hello".to_vec() });

    let (_, body) = get(node.http, "/metrics").await;
    assert!(body.contains("# TYPE p2p_copy_rendezvous_claims_total counter\n"), "{body}");
    assert_eq!(sample(&body, "connections{transport=\"quic\"}"), 2);
    assert_eq!(sample(&body, "connections{transport=\"tcp\"}"), 0);
    assert_eq!(sample(&body, "nameplates_open"), 1);
    assert_eq!(sample(&body, "nameplates_allocated_total"), 1);
    assert_eq!(sample(&body, "claims_total"), 1);
    assert_eq!(sample(&body, "messages_total"), 2);
    assert_eq!(sample(&body, "clients_refused_total"), 0);
    assert_eq!(sample(&body, "shutting_down"), 0);

    assert_eq!(sample(&body, "suspected_guesses_total"), 0);

    a.release().await.unwrap();
    assert_eq!(b.recv().await.unwrap(), NodeMsg::PeerLeft);
    let (_, body) = get(node.http, "/metrics").await;
    assert_eq!(sample(&body, "nameplates_open"), 0);
    // Two messages and gone at once without a relay ticket: what a wrong code looks like.
    assert_eq!(sample(&body, "suspected_guesses_total"), 1);
    drop((a, b));
    // The connection gauge comes back down once the node has seen them go.
    let gone = async {
        while sample(&get(node.http, "/metrics").await.1, "connections{transport=\"quic\"}") != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, gone).await.expect("closed connections are no longer counted");
}

#[tokio::test]
async fn refusals_by_the_connection_limits_are_counted() {
    let mut config = ServerConfig::default();
    config.limits.clients_per_ip = 1;
    let node = Node::start(config).await;
    let (_a, _ea) = node.client().await;
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    assert!(Client::connect(&ep, node.addr, None, WAIT).await.is_err(), "one per address");
    let (_, body) = get(node.http, "/metrics").await;
    assert_eq!(sample(&body, "clients_refused_total"), 1);
}

#[tokio::test]
async fn health_turns_503_when_shutdown_starts_and_stays_so_through_the_grace_period() {
    let config = ServerConfig { grace: Duration::from_secs(2), ..ServerConfig::default() };
    let mut node = Node::start(config).await;
    assert_eq!(get(node.http, "/health").await, (200, "ok\n".to_owned()));
    assert_eq!(get(node.http, "/healthz").await.0, 200);
    assert_eq!(get(node.http, "/nothing").await.0, 404);
    // A connected client holds the node in its grace period.
    let (_a, _ea) = node.client().await;
    let _ = node.stop.take().unwrap().send(());
    let unhealthy = async {
        loop {
            let (status, body) = get(node.http, "/health").await;
            if status == 503 {
                assert_eq!(body, "shutting down\n");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(1), unhealthy)
        .await
        .expect("503 once shutdown starts");
    assert!(!node.task.is_finished(), "still draining");
    assert_eq!(sample(&get(node.http, "/metrics").await.1, "shutting_down"), 1);
    tokio::time::timeout(Duration::from_secs(20), &mut node.task).await.unwrap().unwrap();
    assert_eq!(get(node.http, "/health").await.0, 503, "after the grace period too");
    let _ = node.http_stop.take().unwrap().send(());
    tokio::time::timeout(WAIT, &mut node.http_task).await.unwrap().unwrap();
    assert!(TcpStream::connect(node.http).await.is_err(), "the metrics listener is closed");
}

/// Slow and oversized requests are dropped, and they cannot hold the listener for long.
/// Virtual time: the runtime jumps ahead while every task waits.
#[tokio::test(start_paused = true)]
async fn oversized_and_slow_requests_are_dropped() {
    let metrics = Arc::new(Metrics::default());
    let (_stop, _task, addr) = start_http(metrics).await;

    // A head over the cap is dropped as soon as the cap is passed.
    let mut big = TcpStream::connect(addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let head = format!("GET /metrics HTTP/1.1\r\nX-Filler: {}", "a".repeat(MAX_REQUEST));
    big.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let read = big.read_to_end(&mut buf).await;
    assert!(read.is_err() || buf.is_empty(), "no answer to an oversized request");
    assert!(started.elapsed() < HTTP_TIMEOUT, "dropped at the cap, not at the timeout");

    // Connections that never finish their request fill every slot...
    let started = tokio::time::Instant::now();
    let mut slow = Vec::new();
    for _ in 0..MAX_HTTP_CONNECTIONS {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
        slow.push(s);
    }
    // Let the listener take them all before the next one.
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...so one more is dropped unanswered rather than queued without bound...
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let _ = extra.write_all(b"GET /health HTTP/1.1\r\n\r\n").await;
    let mut buf = Vec::new();
    let read = extra.read_to_end(&mut buf).await;
    assert!(read.is_err() || buf.is_empty(), "over the cap: {:?}", String::from_utf8_lossy(&buf));
    assert!(started.elapsed() < HTTP_TIMEOUT);

    // ...until the timeout closes them, unanswered.
    for mut s in slow {
        let mut buf = Vec::new();
        let read = s.read_to_end(&mut buf).await;
        assert!(read.is_err() || buf.is_empty(), "a slow request got an answer");
    }
    assert!(started.elapsed() >= HTTP_TIMEOUT, "held until the timeout");
    assert_eq!(get(addr, "/health").await, (200, "ok\n".to_owned()), "then it serves again");
}
