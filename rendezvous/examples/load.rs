//! Load generator for a rendezvous node: N concurrent pairings, each allocating a nameplate,
//! claiming it, exchanging one message each way and releasing. Loopback or a test network
//! only. Usage: `cargo run --release -p p2p-copy-rendezvous --example load -- NODE_ADDR PAIRS`
//! (the node needs `--clients-per-ip` ≥ 2×PAIRS and `--claims-per-minute 0` when all
//! clients share one address). Prints completed pairings, failures and timing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2p_copy_rendezvous::client::Client;
use p2p_copy_rendezvous::wire::NodeMsg;

const WAIT: Duration = Duration::from_secs(30);

async fn pairing(ep: quinn::Endpoint, node: SocketAddr) -> Result<Duration, String> {
    let started = Instant::now();
    let err = |e: p2p_copy_rendezvous::client::ClientError| e.to_string();
    let mut a = Client::connect(&ep, node, None, WAIT).await.map_err(err)?;
    let mut b = Client::connect(&ep, node, None, WAIT).await.map_err(err)?;
    let n = a.allocate().await.map_err(err)?;
    b.claim(n).await.map_err(err)?;
    if a.recv().await.map_err(err)? != NodeMsg::PeerJoined {
        return Err("no PeerJoined".into());
    }
    a.post(b"a".to_vec()).await.map_err(err)?;
    b.post(b"b".to_vec()).await.map_err(err)?;
    if b.recv().await.map_err(err)? != (NodeMsg::Message { body: b"a".to_vec() }) {
        return Err("wrong message to b".into());
    }
    if a.recv().await.map_err(err)? != (NodeMsg::Message { body: b"b".to_vec() }) {
        return Err("wrong message to a".into());
    }
    a.release().await.map_err(err)?;
    if b.recv().await.map_err(err)? != NodeMsg::PeerLeft {
        return Err("no PeerLeft".into());
    }
    a.close();
    b.close();
    Ok(started.elapsed())
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let node: SocketAddr =
        args.next().ok_or("NODE_ADDR missing")?.parse().map_err(|e| format!("{e}"))?;
    let pairs: usize =
        args.next().unwrap_or_else(|| "500".into()).parse().map_err(|e| format!("{e}"))?;
    // A handful of client sockets, as many hosts behind one address would have.
    let endpoints: Vec<quinn::Endpoint> = (0..16)
        .map(|_| quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..pairs {
        tasks.spawn(pairing(endpoints[i % endpoints.len()].clone(), node));
    }
    let (mut ok, mut failed, mut slowest) = (0usize, 0usize, Duration::ZERO);
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(t)) => {
                ok += 1;
                slowest = slowest.max(t);
            }
            Ok(Err(e)) => {
                failed += 1;
                if failed <= 5 {
                    eprintln!("pairing failed: {e}");
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("task failed: {e}");
            }
        }
    }
    println!(
        "pairings={pairs} ok={ok} failed={failed} total={:.2}s slowest={:.2}s",
        started.elapsed().as_secs_f64(),
        slowest.as_secs_f64()
    );
    if failed > 0 {
        return Err(format!("{failed} pairings failed"));
    }
    Ok(())
}
