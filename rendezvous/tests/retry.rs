//! Finding 6 of the security review: connection slots must not be charged to spoofed source
//! addresses. The node's socket is wrapped so that everything an "attacker" endpoint sends
//! arrives as if from the victim's address, and what the node answers there is dropped (and
//! counted), as on a network where the attacker spoofs the victim's address.
#![cfg(feature = "server")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use p2p_copy_rendezvous::client::Client;
use p2p_copy_rendezvous::metrics::Metrics;
use p2p_copy_rendezvous::server::{self, Listeners, ServerConfig};
use quinn::udp::{RecvMeta, Transmit};
use quinn::AsyncUdpSocket;

const WAIT: Duration = Duration::from_secs(5);
/// Initials the attacker sends in the victim's name: the victim's whole connection budget
/// (2 × the default 64 clients per address) before the fix.
const SPOOFED: usize = 128;

/// The node's socket, with datagrams from `attacker` rewritten to come from `victim`, and
/// datagrams to `victim`'s spoofed port dropped.
struct Spoofing {
    inner: Arc<dyn AsyncUdpSocket>,
    attacker: std::sync::Mutex<Option<SocketAddr>>,
    victim: SocketAddr,
    /// Bytes received as if from the victim, and sent back to the spoofed address.
    received: AtomicUsize,
    answered: AtomicUsize,
}

impl std::fmt::Debug for Spoofing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Spoofing")
    }
}

impl AsyncUdpSocket for Spoofing {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }
    fn try_send(&self, transmit: &Transmit) -> std::io::Result<()> {
        if transmit.destination == self.victim {
            self.answered.fetch_add(transmit.contents.len(), Ordering::Relaxed);
            return Ok(());
        }
        self.inner.try_send(transmit)
    }
    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<std::io::Result<usize>> {
        let polled = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(n)) = polled {
            let attacker = *self.attacker.lock().unwrap();
            for m in &mut meta[..n] {
                if Some(m.addr) == attacker {
                    m.addr = self.victim;
                    self.received.fetch_add(m.len, Ordering::Relaxed);
                }
            }
        }
        polled
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

/// Waits (bounded) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(WAIT, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    waited.await.unwrap_or_else(|_| panic!("waited too long for {what}"));
}

/// The review's test: 128 handshakes "from" address V, then a real client from V. Before the
/// fix the 128 took V's connection slots and the real client was refused; now slots are
/// charged only to validated addresses, and past 64 handshakes in progress the node answers
/// with a stateless Retry, which a spoofer never completes.
#[tokio::test]
async fn spoofed_initials_do_not_lock_out_their_source() {
    // The victim: a host at 127.0.0.2 (the attacker's packets claim its port 9).
    let victim = "127.0.0.2:9".parse().unwrap();
    let socket = quinn::default_runtime()
        .unwrap()
        .wrap_udp_socket(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .unwrap();
    let spoofing = Arc::new(Spoofing {
        inner: socket,
        attacker: std::sync::Mutex::new(None),
        victim,
        received: AtomicUsize::new(0),
        answered: AtomicUsize::new(0),
    });
    let config = ServerConfig::default();
    let metrics: Arc<Metrics> = config.metrics_handle.clone();
    let quic = server::endpoint_on(spoofing.clone(), &config).unwrap();
    let node = quic.local_addr().unwrap();
    let serving =
        tokio::spawn(server::serve(Listeners { quic, tcp: None }, config, std::future::pending()));

    // The attacker's Initials: connection attempts that never hear back.
    let attacker = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    *spoofing.attacker.lock().unwrap() = Some(attacker.local_addr().unwrap());
    let config = p2p_copy_rendezvous::client::client_config().unwrap();
    let attempts: Vec<_> = (0..SPOOFED)
        .map(|_| attacker.connect_with(config.clone(), node, "node").unwrap())
        .collect();
    // Each attempt's first Initial is at least 1,200 bytes.
    let arrived = || spoofing.received.load(Ordering::Relaxed) >= SPOOFED * 1_200;
    until("the spoofed Initials to reach the node", arrived).await;

    // The real client from the victim's address connects and is served.
    let ep = quinn::Endpoint::client("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut client = Client::connect(&ep, node, None, WAIT).await.expect("the victim connects");
    assert!(client.allocate().await.is_ok());
    assert_eq!(metrics.clients_refused_total.load(Ordering::Relaxed), 0);
    // Past 64 handshakes in progress, the rest were answered with a Retry.
    assert!(metrics.quic_retries_total.load(Ordering::Relaxed) as usize >= SPOOFED - 64);
    // What the node sent to the spoofed address stays within QUIC's anti-amplification bound
    // (3 × what it received from there).
    let (received, answered) =
        (spoofing.received.load(Ordering::Relaxed), spoofing.answered.load(Ordering::Relaxed));
    assert!(answered <= 3 * received, "sent {answered} bytes for {received} received");
    drop(attempts);
    serving.abort();
}

/// Below the threshold no Retry is sent (no round trip added), and the slot is charged once
/// the handshake completed: the per-address limit still holds for real clients.
#[tokio::test]
async fn real_clients_are_still_counted_per_address() {
    let limits = p2p_copy_rendezvous::table::Limits {
        clients_per_ip: 1,
        ..p2p_copy_rendezvous::table::Limits::default()
    };
    let config = ServerConfig { limits, ..ServerConfig::default() };
    let metrics: Arc<Metrics> = config.metrics_handle.clone();
    let listeners = server::bind("127.0.0.1:0".parse().unwrap(), &config).unwrap();
    let node = listeners.local_addr().unwrap();
    let serving = tokio::spawn(server::serve(listeners, config, std::future::pending()));
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    // Two connections per address (twice clients_per_ip, for relay streams on TCP).
    let a = Client::connect(&ep, node, None, WAIT).await.unwrap();
    let b = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let b = b.connect_with(p2p_copy_rendezvous::client::client_config().unwrap(), node, "n");
    let _b = b.unwrap().await.unwrap();
    let third = Client::connect(&ep, node, None, WAIT).await;
    assert!(third.is_err(), "a third connection from the address is refused");
    until("the refusal to be counted", || {
        metrics.clients_refused_total.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(metrics.quic_retries_total.load(Ordering::Relaxed), 0);
    drop(a);
    serving.abort();
}
