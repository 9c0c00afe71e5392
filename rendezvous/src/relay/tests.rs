//! The relay's pairing, limits and forwarding between stream ends (sides on TCP); datagram
//! ends are exercised through a real node in `tests/node.rs` and in p2p-copy's path tests.

use super::*;
use std::net::Ipv4Addr;

const LOCAL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1000);

fn unlimited() -> RelayLimits {
    RelayLimits { session_rate: 0, total_rate: 0, ..RelayLimits::default() }
}

fn pipe() -> (Reader, Writer, tokio::io::DuplexStream) {
    let (mine, theirs) = tokio::io::duplex(1 << 16);
    let (r, w) = tokio::io::split(mine);
    (Box::new(r), Box::new(w), theirs)
}

async fn read_msg(s: &mut tokio::io::DuplexStream) -> NodeMsg {
    let mut header = [0u8; 4];
    s.read_exact(&mut header).await.unwrap();
    let mut body = vec![0u8; wire::frame_len(header).unwrap()];
    s.read_exact(&mut body).await.unwrap();
    wire::decode_node(&body).unwrap()
}

/// Attaches a stream end for `ticket` from `from`; returns the task and the client's end.
fn attach(
    relays: &Arc<Relays>,
    ticket: u64,
    from: SocketAddr,
) -> (tokio::task::JoinHandle<()>, tokio::io::DuplexStream) {
    let (r, w, theirs) = pipe();
    let relays = relays.clone();
    let task = tokio::spawn(async move { relays.serve(ticket, from, Attach::Stream, r, w).await });
    (task, theirs)
}

fn record(stride: u16, packets: &[u8]) -> Vec<u8> {
    let mut out = ((packets.len() + 2) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&stride.to_be_bytes());
    out.extend_from_slice(packets);
    out
}

async fn read_record(s: &mut tokio::io::DuplexStream) -> (u16, Vec<u8>) {
    let mut header = [0u8; 4];
    s.read_exact(&mut header).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    s.read_exact(&mut body).await.unwrap();
    (u16::from_be_bytes([body[0], body[1]]), body[2..].to_vec())
}

#[tokio::test]
async fn the_two_tickets_of_a_pairing_are_paired_and_packets_pass_both_ways() {
    let relays = Arc::new(Relays::new(unlimited()));
    let t0 = relays.grant(7, 0).unwrap();
    let t1 = relays.grant(7, 1).unwrap();
    assert_ne!(t0, t1);
    assert_eq!(relays.grant(7, 0).unwrap(), t0, "asking again gives the same ticket");
    let (first, mut a) = attach(&relays, t0, LOCAL);
    let (second, mut b) = attach(&relays, t1, LOCAL);
    assert_eq!(read_msg(&mut a).await, NodeMsg::Paired);
    assert_eq!(read_msg(&mut b).await, NodeMsg::Paired);
    assert_eq!(relays.metrics.relays_active.load(Ordering::Relaxed), 1);

    // A batch of three packets of 5 bytes (the last shorter) passes unchanged.
    a.write_all(&record(5, b"aaaaabbbbbcc")).await.unwrap();
    assert_eq!(read_record(&mut b).await, (5, b"aaaaabbbbbcc".to_vec()));
    b.write_all(&record(4, b"back")).await.unwrap();
    assert_eq!(read_record(&mut a).await, (4, b"back".to_vec()));
    // A keep-alive goes nowhere.
    a.write_all(&record(0, b"")).await.unwrap();
    a.write_all(&record(1, b"z")).await.unwrap();
    assert_eq!(read_record(&mut b).await, (1, b"z".to_vec()));
    assert_eq!(relays.metrics.relay_bytes_total.load(Ordering::Relaxed), 17);

    // One side leaving ends the relay for both, and its tickets are forgotten.
    drop(a);
    first.await.unwrap();
    second.await.unwrap();
    let mut rest = Vec::new();
    b.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    assert_eq!(relays.metrics.relays_active.load(Ordering::Relaxed), 0);
    assert_eq!(relays.pairings(), 0);
    let (_, mut late) = attach(&relays, t0, LOCAL);
    assert!(matches!(read_msg(&mut late).await, NodeMsg::Error { code: ErrorCode::Expired, .. }));
}

#[tokio::test]
async fn a_ticket_attaches_once_and_unknown_tickets_are_refused() {
    let relays = Arc::new(Relays::new(unlimited()));
    let t0 = relays.grant(1, 0).unwrap();
    let (_first, _a) = attach(&relays, t0, LOCAL);
    tokio::task::yield_now().await;
    let (_, mut again) = attach(&relays, t0, LOCAL);
    let refused = read_msg(&mut again).await;
    assert!(matches!(refused, NodeMsg::Error { code: ErrorCode::Protocol, .. }), "{refused:?}");
    let (_, mut guess) = attach(&relays, t0 ^ 1, LOCAL);
    assert!(matches!(read_msg(&mut guess).await, NodeMsg::Error { code: ErrorCode::Expired, .. }));
}

#[tokio::test(start_paused = true)]
async fn a_side_whose_partner_never_comes_expires() {
    let relays = Arc::new(Relays::new(unlimited()));
    let t0 = relays.grant(2, 0).unwrap();
    let (task, mut a) = attach(&relays, t0, LOCAL);
    assert!(matches!(read_msg(&mut a).await, NodeMsg::Error { code: ErrorCode::Expired, .. }));
    task.await.unwrap();
    assert_eq!(relays.pairings(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_idle_relay_is_closed() {
    let limits = RelayLimits { idle_timeout: Duration::from_secs(5), ..unlimited() };
    let relays = Arc::new(Relays::new(limits));
    let (t0, t1) = (relays.grant(3, 0).unwrap(), relays.grant(3, 1).unwrap());
    let (first, mut a) = attach(&relays, t0, LOCAL);
    let (second, mut b) = attach(&relays, t1, LOCAL);
    assert_eq!(read_msg(&mut a).await, NodeMsg::Paired);
    assert_eq!(read_msg(&mut b).await, NodeMsg::Paired);
    // Nobody sends anything: the relay ends on its own and both ends see the close.
    first.await.unwrap();
    second.await.unwrap();
    let mut rest = Vec::new();
    a.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

/// Each side of a relay holds a slot of its own source: both ends count.
#[tokio::test]
async fn both_ends_count_against_their_sources() {
    let limits = RelayLimits { per_source: 2, ..unlimited() };
    let relays = Arc::new(Relays::new(limits));
    let (t0, t1) = (relays.grant(4, 0).unwrap(), relays.grant(4, 1).unwrap());
    let (_first, mut a) = attach(&relays, t0, LOCAL);
    let (_second, mut b) = attach(&relays, t1, LOCAL);
    assert_eq!(read_msg(&mut a).await, NodeMsg::Paired);
    assert_eq!(read_msg(&mut b).await, NodeMsg::Paired);
    // Loopback holds two slots now: a third stream from it is refused, another source's not.
    let t2 = relays.grant(5, 0).unwrap();
    let (_, mut c) = attach(&relays, t2, LOCAL);
    assert!(matches!(read_msg(&mut c).await, NodeMsg::Error { code: ErrorCode::Busy, .. }));
    let elsewhere = SocketAddr::from(([192, 0, 2, 9], 1000));
    let (waiting, _d) = attach(&relays, t2, elsewhere);
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    waiting.abort();
}

#[tokio::test]
async fn pairings_are_capped_and_a_closing_node_grants_none() {
    let limits = RelayLimits { max_sessions: 2, ..unlimited() };
    let relays = Relays::new(limits);
    relays.grant(1, 0).unwrap();
    relays.grant(2, 1).unwrap();
    assert_eq!(relays.grant(3, 0).unwrap_err().0, ErrorCode::Busy);
    relays.close();
    assert_eq!(relays.grant(1, 1).unwrap_err().0, ErrorCode::ShuttingDown);
}

/// Over its session rate, packets are dropped (and counted), not queued.
#[tokio::test]
async fn a_session_over_its_rate_loses_packets() {
    let limits = RelayLimits { session_rate: 1_000_000, total_rate: 0, ..RelayLimits::default() };
    let relays = Arc::new(Relays::new(limits));
    let (t0, t1) = (relays.grant(6, 0).unwrap(), relays.grant(6, 1).unwrap());
    let (_first, mut a) = attach(&relays, t0, LOCAL);
    let (_second, mut b) = attach(&relays, t1, LOCAL);
    assert_eq!(read_msg(&mut a).await, NodeMsg::Paired);
    assert_eq!(read_msg(&mut b).await, NodeMsg::Paired);
    // 400 KiB at once against a burst of 256 KiB.
    let packet = vec![0x41u8; 1000];
    for _ in 0..400 {
        a.write_all(&record(1000, &packet)).await.unwrap();
    }
    a.write_all(&record(0, b"")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let dropped = relays.metrics.relay_dropped_total.load(Ordering::Relaxed);
    let passed = relays.metrics.relay_bytes_total.load(Ordering::Relaxed);
    assert!(dropped > 100, "{dropped} dropped");
    assert!((200_000..=400_000).contains(&passed), "{passed} passed");
    drop(b);
}
