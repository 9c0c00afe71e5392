//! The baseline p2p-copy is measured against: raw quinn on loopback, one stream, no disk, no
//! hashing, no records, the same endpoints and TLS setup p2p-copy uses.
//!
//! `cargo run --release --example raw_quinn -- [MIB]` prints bytes, seconds and MB/s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2p_copy::net::quic::{Node, Tuning};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1024);
    let total = mib << 20;
    let local: SocketAddr = "127.0.0.1:0".parse()?;
    let tuning = Tuning::default();
    let server = Node::bind(local, &tuning, true)?;
    let client = Node::bind(local, &tuning, false)?;
    let addr = server.local_addr()?;
    let receiving = tokio::spawn({
        let endpoint = server.endpoint.clone();
        async move {
            let conn = endpoint.accept().await.ok_or("no connection")?.await?;
            let mut recv = conn.accept_uni().await?;
            let mut got = 0u64;
            while let Some(chunk) = recv.read_chunk(1 << 20, true).await? {
                got += chunk.bytes.len() as u64;
            }
            conn.close(0u32.into(), b"done");
            Ok::<u64, Box<dyn std::error::Error + Send + Sync>>(got)
        }
    });
    let started = Instant::now();
    let conn = client.connect_any(&[addr], Duration::from_secs(5)).await?;
    let mut send = conn.open_uni().await?;
    let block = bytes::Bytes::from(vec![0x5a; 1 << 20]);
    let mut sent = 0u64;
    while sent < total {
        send.write_chunk(block.clone()).await?;
        sent += block.len() as u64;
    }
    send.finish()?;
    let got = receiving.await?.map_err(|e| e.to_string())?;
    let _ = conn.closed().await;
    let secs = started.elapsed().as_secs_f64();
    println!("raw quinn: {got} bytes in {secs:.2} s, {:.0} MB/s", got as f64 / secs / 1e6);
    Ok(())
}
