//! What a QUIC Retry costs a client: the time to connect to an in-process node and get its
//! `Welcome`, with a Retry for every connection (`retry_above = 0`) against none, over
//! loopback with the node's packets delayed by `DELAY_MS` (the round trip), alternating.
//!
//! `cargo run --release -p p2p-copy-rendezvous --features server --example retry_cost -- 50 20`

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use p2p_copy_rendezvous::client::Client;
use p2p_copy_rendezvous::server::{self, Listeners, ServerConfig};
use quinn::udp::{RecvMeta, Transmit};
use quinn::AsyncUdpSocket;

/// The node's socket, sending every datagram `delay` late.
#[derive(Debug)]
struct Delayed {
    inner: Arc<dyn AsyncUdpSocket>,
    delay: Duration,
}

impl AsyncUdpSocket for Delayed {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }
    fn try_send(&self, transmit: &Transmit) -> std::io::Result<()> {
        let (inner, delay) = (self.inner.clone(), self.delay);
        let (destination, contents) = (transmit.destination, transmit.contents.to_vec());
        let (segment_size, ecn, src_ip) = (transmit.segment_size, transmit.ecn, transmit.src_ip);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let t = Transmit { destination, ecn, contents: &contents, segment_size, src_ip };
            let _ = inner.try_send(&t);
        });
        Ok(())
    }
    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<std::io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

fn node(delay: Duration, retry_above: usize) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let socket = quinn::default_runtime()
        .ok_or("no runtime")?
        .wrap_udp_socket(std::net::UdpSocket::bind("127.0.0.1:0")?)?;
    let config = ServerConfig {
        retry_above,
        limits: p2p_copy_rendezvous::table::Limits {
            clients_per_ip: 100_000,
            ..Default::default()
        },
        ..ServerConfig::default()
    };
    let quic = server::endpoint_on(Arc::new(Delayed { inner: socket, delay }), &config)?;
    let addr = quic.local_addr()?;
    tokio::spawn(server::serve(Listeners { quic, tcp: None }, config, std::future::pending()));
    Ok(addr)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let delay_ms: u64 = args.next().map_or(Ok(50), |a| a.parse())?;
    let runs: usize = args.next().map_or(Ok(20), |a| a.parse())?;
    let delay = Duration::from_millis(delay_ms);
    let (always, never) = (node(delay, 0)?, node(delay, usize::MAX)?);
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        for (addr, times) in [(always, &mut with), (never, &mut without)] {
            let ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
            let started = Instant::now();
            let client = Client::connect(&ep, addr, None, Duration::from_secs(10)).await?;
            times.push(started.elapsed());
            client.close();
        }
    }
    let (with, without) = (median(with), median(without));
    println!(
        "round trip {delay_ms} ms, {runs} connections each: to Welcome {:.1} ms with a Retry, \
         {:.1} ms without (+{:.1} ms)",
        with.as_secs_f64() * 1e3,
        without.as_secs_f64() * 1e3,
        (with.as_secs_f64() - without.as_secs_f64()) * 1e3
    );
    Ok(())
}
