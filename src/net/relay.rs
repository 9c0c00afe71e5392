//! The peers' QUIC connection carried through the rendezvous node's relay.
//!
//! The node splices two byte streams (QUIC streams, or TCP connections for clients without
//! UDP). [`RelaySocket`] turns such a stream into a datagram socket for quinn, so the relayed
//! path runs exactly the protocol of the direct path — the same TLS handshake, channel
//! binding, lanes and close codes — over a second endpoint with the same certificate.
//!
//! Each datagram travels as `len: u32 BE ‖ AES-256-GCM(packet)`, sealed under the session key
//! on [`RELAY_LANE`] with a counter per direction. QUIC alone would treat a byte the relay
//! damaged as a lost packet and send it again; the seal turns any damage, reordering, drop or
//! injection into an immediate [`RelayState::Tampered`], which ends the transfer with an
//! integrity error. The relay still sees only ciphertext: the inner QUIC packets are
//! encrypted too.
//!
//! Datagrams can be large ([`RELAY_MTU`]): nothing on the way fragments them, and fewer
//! packets cost less CPU.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use p2p_copy_rendezvous::client::{Reader, RelayStream, Writer};

use crate::crypto::{Keys, Opener, Sealer};

/// The nonce lane of relay framing (data lanes are small numbers, the control lane is 0).
pub const RELAY_LANE: u32 = u32::MAX;
/// Largest QUIC packet sent through the relay.
pub const RELAY_MTU: u16 = 16 * 1024;
/// Sealed datagrams queued towards the relay.
const OUTBOX: usize = 256;
/// Opened datagrams queued towards quinn.
const INBOX: usize = 256;
/// AES-GCM tag length.
const TAG: usize = 16;

/// What became of the relay stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayState {
    /// Carrying packets.
    Up,
    /// The node or the other side ended the stream.
    Closed,
    /// A datagram failed authentication: the relay altered, dropped, reordered or injected
    /// data.
    Tampered,
}

/// A relay stream as quinn's socket, with the tasks that move its bytes.
pub struct RelayLink {
    /// The socket to build the relayed endpoint on.
    pub socket: Arc<RelaySocket>,
    /// Changes when the stream ends or is tampered with.
    pub state: watch::Receiver<RelayState>,
    tasks: [JoinHandle<()>; 2],
}

impl fmt::Debug for RelayLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayLink").field("state", &*self.state.borrow()).finish()
    }
}

impl Drop for RelayLink {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl RelayLink {
    /// Wraps a paired relay stream; `keys` seal what we send and open what the peer sends.
    pub fn new(stream: RelayStream, keys: &Keys) -> RelayLink {
        let (out_tx, out_rx) = mpsc::channel(OUTBOX);
        let (in_tx, in_rx) = mpsc::channel(INBOX);
        let (state_tx, state) = watch::channel(RelayState::Up);
        let state_tx = Arc::new(state_tx);
        let writer = tokio::spawn(write_frames(out_rx, stream.writer, state_tx.clone()));
        let reader =
            tokio::spawn(read_frames(stream.reader, keys.opener(RELAY_LANE), in_tx, state_tx));
        let socket = Arc::new(RelaySocket {
            out: out_tx,
            sealer: Mutex::new(keys.sealer(RELAY_LANE)),
            inbox: Mutex::new(in_rx),
        });
        RelayLink { socket, state, tasks: [writer, reader] }
    }

    /// The address the peer's relayed endpoint appears at (any address reaches the peer).
    pub fn peer_addr() -> SocketAddr {
        // The discard-only prefix 100::/64 (RFC 6666): never a real peer.
        SocketAddr::from((Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 2), 1))
    }

    fn local_addr() -> SocketAddr {
        SocketAddr::from((Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 1), 1))
    }
}

async fn write_frames(
    mut rx: mpsc::Receiver<Vec<u8>>,
    writer: Writer,
    state: Arc<watch::Sender<RelayState>>,
) {
    let mut writer = BufWriter::with_capacity(256 * 1024, writer);
    while let Some(frame) = rx.recv().await {
        if writer.write_all(&frame).await.is_err() {
            break;
        }
        if rx.is_empty() && writer.flush().await.is_err() {
            break;
        }
    }
    let _ = writer.shutdown().await;
    state.send_if_modified(|s| set_if_up(s, RelayState::Closed));
}

async fn read_frames(
    mut reader: Reader,
    mut opener: Opener,
    tx: mpsc::Sender<Vec<u8>>,
    state: Arc<watch::Sender<RelayState>>,
) {
    let outcome = loop {
        let mut header = [0u8; 4];
        if reader.read_exact(&mut header).await.is_err() {
            break RelayState::Closed;
        }
        let len = u32::from_be_bytes(header) as usize;
        if !(TAG..=usize::from(RELAY_MTU) + TAG).contains(&len) {
            break RelayState::Tampered;
        }
        let mut packet = vec![0u8; len];
        if reader.read_exact(&mut packet).await.is_err() {
            break RelayState::Closed;
        }
        if opener.open(&mut packet).is_err() {
            break RelayState::Tampered;
        }
        if tx.send(packet).await.is_err() {
            break RelayState::Closed;
        }
    };
    if outcome == RelayState::Tampered {
        tracing::warn!("a relayed packet failed authentication: the relay altered the data");
    }
    state.send_if_modified(|s| set_if_up(s, outcome));
}

fn set_if_up(s: &mut RelayState, to: RelayState) -> bool {
    if *s == RelayState::Up {
        *s = to;
        true
    } else {
        false
    }
}

/// quinn's view of a relay stream: every datagram goes to the one peer behind it.
pub struct RelaySocket {
    out: mpsc::Sender<Vec<u8>>,
    sealer: Mutex<Sealer>,
    inbox: Mutex<mpsc::Receiver<Vec<u8>>>,
}

impl fmt::Debug for RelaySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RelaySocket")
    }
}

impl AsyncUdpSocket for RelaySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Poller { out: self.out.clone(), waiting: Mutex::new(None) })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        // Reserve first: a sealed datagram must never be thrown away, or the peer's counter
        // would skip and it would (rightly) report tampering.
        let permit = match self.out.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Full(())) => {
                return Err(io::ErrorKind::WouldBlock.into())
            }
            // The stream is gone; the state watch reports it. Like a dead link, drop the packet.
            Err(mpsc::error::TrySendError::Closed(())) => return Ok(()),
        };
        let mut frame = Vec::with_capacity(4 + transmit.contents.len() + TAG);
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(transmit.contents);
        // Seal and queue under one lock: quinn sends from more than one task, and datagrams
        // must be queued in counter order.
        let mut sealer = self.sealer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if sealer.seal(&mut frame, 4).is_err() {
            // 2^64 datagrams: cannot happen in practice; refuse rather than reuse a nonce.
            return Err(io::Error::other("relay nonce space exhausted"));
        }
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        permit.send(frame);
        drop(sealer);
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut inbox = self.inbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let packet = if n == 0 {
                match inbox.poll_recv(cx) {
                    Poll::Ready(Some(p)) => p,
                    // Closed: the state watch tells the driver; quinn just sees silence.
                    Poll::Ready(None) | Poll::Pending => return Poll::Pending,
                }
            } else {
                match inbox.try_recv() {
                    Ok(p) => p,
                    Err(_) => break,
                }
            };
            let len = packet.len().min(bufs[n].len());
            bufs[n][..len].copy_from_slice(&packet[..len]);
            meta[n] = RecvMeta {
                addr: RelayLink::peer_addr(),
                len,
                stride: len,
                ecn: None,
                dst_ip: None,
            };
            n += 1;
        }
        Poll::Ready(Ok(n))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(RelayLink::local_addr())
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

type Reserve = Pin<Box<dyn std::future::Future<Output = bool> + Send>>;

/// Wakes quinn when the outbox has room again.
struct Poller {
    out: mpsc::Sender<Vec<u8>>,
    waiting: Mutex<Option<Reserve>>,
}

impl fmt::Debug for Poller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Poller")
    }
}

impl UdpPoller for Poller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let waiting = this.waiting.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        let fut = waiting.get_or_insert_with(|| {
            let out = this.out.clone();
            // Room for one datagram; the permit is released at once, try_send takes it.
            Box::pin(async move { out.reserve().await.is_ok() })
        });
        match fut.as_mut().poll(cx) {
            Poll::Ready(_) => {
                *waiting = None;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Role;
    use crate::net::quic::{Node, Tuning};
    use std::time::Duration;

    fn keys() -> (Keys, Keys) {
        let secret = [7u8; 32];
        let transcript = [9u8; 32];
        (
            Keys::from_shared_secret(Role::Sender, &secret, transcript),
            Keys::from_shared_secret(Role::Receiver, &secret, transcript),
        )
    }

    /// Two relay streams joined in memory: a byte splice, optionally damaging one byte.
    fn joined(tamper_at: Option<usize>) -> (RelayStream, RelayStream) {
        let (a, a_far) = tokio::io::duplex(1 << 20);
        let (b, b_far) = tokio::io::duplex(1 << 20);
        let (mut a_far_r, mut a_far_w) = tokio::io::split(a_far);
        let (mut b_far_r, mut b_far_w) = tokio::io::split(b_far);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut seen = 0usize;
            while let Ok(n) = a_far_r.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if let Some(at) = tamper_at {
                    if (seen..seen + n).contains(&at) {
                        buf[at - seen] ^= 0x01;
                    }
                }
                seen += n;
                if b_far_w.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut b_far_r, &mut a_far_w).await;
        });
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        (
            RelayStream { reader: Box::new(ar), writer: Box::new(aw) },
            RelayStream { reader: Box::new(br), writer: Box::new(bw) },
        )
    }

    async fn endpoints(tamper_at: Option<usize>) -> (Node, RelayLink, Node, RelayLink) {
        let (ks, kr) = keys();
        let (sa, sb) = joined(tamper_at);
        let local = "127.0.0.1:0".parse().unwrap();
        let tuning = Tuning::default();
        let s_link = RelayLink::new(sa, &ks);
        let r_link = RelayLink::new(sb, &kr);
        let s = Node::bind(local, &tuning, false)
            .unwrap()
            .relayed(s_link.socket.clone(), &tuning, true)
            .unwrap();
        let r = Node::bind(local, &tuning, false)
            .unwrap()
            .relayed(r_link.socket.clone(), &tuning, false)
            .unwrap();
        (s, s_link, r, r_link)
    }

    #[tokio::test]
    async fn quic_runs_over_a_relay_stream() {
        let (s, _sl, r, _rl) = endpoints(None).await;
        let server = tokio::spawn({
            let ep = s.endpoint.clone();
            async move {
                let conn = ep.accept().await.unwrap().await.unwrap();
                let (mut send, mut recv) = conn.accept_bi().await.unwrap();
                let got = recv.read_to_end(4 << 20).await.unwrap();
                send.write_all(&(got.len() as u64).to_be_bytes()).await.unwrap();
                send.finish().unwrap();
                let _ = conn.closed().await;
                got
            }
        });
        let conn = r
            .connect_to(
                &[RelayLink::peer_addr()],
                Duration::from_secs(5),
                Some(s.fingerprint),
                Duration::ZERO,
            )
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        send.write_all(&data).await.unwrap();
        send.finish().unwrap();
        let n = recv.read_to_end(8).await.unwrap();
        assert_eq!(n, (data.len() as u64).to_be_bytes());
        conn.close(0u32.into(), b"");
        assert!(server.await.unwrap() == data);
    }

    #[tokio::test]
    async fn one_damaged_byte_is_reported_as_tampering() {
        let (s, _sl, r, rl) = endpoints(Some(3000)).await;
        let _server = tokio::spawn({
            let ep = s.endpoint.clone();
            async move {
                let conn = ep.accept().await?.await.ok()?;
                let (_send, mut recv) = conn.accept_bi().await.ok()?;
                recv.read_to_end(1 << 20).await.ok()
            }
        });
        let _client = tokio::spawn(async move {
            r.connect_to(&[RelayLink::peer_addr()], Duration::from_secs(3), None, Duration::ZERO)
                .await
        });
        let mut state = rl.state.clone();
        let s =
            tokio::time::timeout(Duration::from_secs(5), state.wait_for(|s| *s != RelayState::Up))
                .await
                .unwrap()
                .unwrap()
                .to_owned();
        assert_eq!(s, RelayState::Tampered);
    }
}
