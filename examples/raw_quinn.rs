//! The baseline p2p-copy is measured against: raw quinn, one stream, no disk, no hashing, no
//! records, the same endpoints and TLS setup p2p-copy uses.
//!
//! ```text
//! raw_quinn [MIB]                    both ends in this process, on loopback
//! raw_quinn serve ADDR               receive one transfer on ADDR, then exit
//! raw_quinn send ADDR [MIB]          send MIB MiB to a `serve` at ADDR
//! ```
//!
//! The sending side prints bytes, seconds (from connecting to the receiver's close) and MB/s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2p_copy::internals::net::quic::{Node, Tuning};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok()).unwrap_or(1024);
    let addr = || -> Result<SocketAddr, Error> {
        Ok(args.get(1).ok_or("ADDR missing")?.parse::<SocketAddr>()?)
    };
    match args.first().map(String::as_str) {
        Some("serve") => {
            let server = Node::bind(addr()?, &Tuning::default(), true)?;
            receive(&server).await?;
        }
        Some("send") => {
            let client = Node::bind(unspecified(addr()?), &Tuning::default(), false)?;
            send(&client, addr()?, mib(2) << 20).await?;
        }
        _ => {
            let local: SocketAddr = "127.0.0.1:0".parse()?;
            let server = Node::bind(local, &Tuning::default(), true)?;
            let client = Node::bind(local, &Tuning::default(), false)?;
            let to = server.local_addr()?;
            let receiving = tokio::spawn(async move { receive(&server).await });
            send(&client, to, mib(0) << 20).await?;
            receiving.await??;
        }
    }
    Ok(())
}

fn unspecified(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().unwrap_or(peer),
        SocketAddr::V6(_) => "[::]:0".parse().unwrap_or(peer),
    }
}

async fn receive(server: &Node) -> Result<u64, Error> {
    let conn = server.endpoint.accept().await.ok_or("no connection")?.await?;
    let mut recv = conn.accept_uni().await?;
    let mut got = 0u64;
    while let Some(chunk) = recv.read_chunk(1 << 20, true).await? {
        got += chunk.bytes.len() as u64;
    }
    conn.close(0u32.into(), b"done");
    server.endpoint.wait_idle().await;
    Ok(got)
}

async fn send(client: &Node, to: SocketAddr, total: u64) -> Result<(), Error> {
    let started = Instant::now();
    let conn = client.connect_any(&[to], Duration::from_secs(5)).await?;
    let mut send = conn.open_uni().await?;
    let block = bytes::Bytes::from(vec![0x5a; 1 << 20]);
    let mut sent = 0u64;
    while sent < total {
        send.write_chunk(block.clone()).await?;
        sent += block.len() as u64;
    }
    send.finish()?;
    // The receiver closes once it has read everything.
    let _ = conn.closed().await;
    let secs = started.elapsed().as_secs_f64();
    println!("raw quinn: {sent} bytes in {secs:.2} s, {:.0} MB/s", sent as f64 / secs / 1e6);
    Ok(())
}
