//! The relay path: the peers' QUIC packets carried through the rendezvous node.
//!
//! The node splices two byte streams (QUIC streams, or TCP connections for clients without
//! UDP). A [`RelayLink`] turns such a stream into one of the two paths of a
//! [`super::path::PathSocket`], so the relayed path carries the very QUIC connection the direct
//! path carries: the same TLS handshake, channel binding, lanes and close codes, and a
//! transfer can move between the paths without noticing.
//!
//! Each record travels as `len: u32 BE ‖ AES-256-GCM(stride: u16 BE ‖ packets)`, sealed under
//! the session key on [`RELAY_LANE`] with a counter per direction. `packets` is one QUIC
//! datagram, or a batch of equal-size datagrams (`stride` bytes each, the last maybe shorter)
//! that quinn handed over at once, so a record costs one seal however small the packets. An
//! empty record is a keep-alive. QUIC alone would treat a byte the relay damaged as a lost
//! packet and send it again; the seal turns any damage, reordering, drop or injection into an
//! immediate [`RelayState::Tampered`], which ends the transfer with an integrity error. The
//! relay still sees only ciphertext: the inner QUIC packets are encrypted too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use p2p_copy_rendezvous::client::{Reader, RelayStream, Writer};

use crate::crypto::{Keys, Opener, Sealer};

/// The nonce lane of relay framing (data lanes are small numbers, the control lane is 0).
pub const RELAY_LANE: u32 = u32::MAX;
/// Largest record body (stride and packets, before the tag): ten full-size QUIC datagrams with
/// room to spare.
pub const MAX_RECORD: usize = 64 * 1024;
/// Records queued towards the relay.
const OUTBOX: usize = 256;
/// How long the relay may carry nothing before a keep-alive goes through it (the node closes
/// relays idle for a minute by default; the standby relay of a direct transfer is idle).
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// AES-GCM tag length.
const TAG: usize = crate::crypto::TAG_LEN;

/// What became of the relay stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayState {
    /// Carrying packets.
    Up,
    /// The node or the other side ended the stream.
    Closed,
    /// A record failed authentication: the relay altered, dropped, reordered or injected data.
    Tampered,
}

/// Opened packets from the relay, as quinn receives them: `stride`-byte datagrams.
#[derive(Debug)]
pub struct Record {
    /// Size of each datagram (the last may be shorter).
    pub stride: usize,
    /// The datagrams, back to back.
    pub packets: Vec<u8>,
}

/// The sending half of a paired relay stream.
#[derive(Clone)]
pub(crate) struct RelayOut {
    out: mpsc::Sender<Vec<u8>>,
    sealer: Arc<Mutex<Sealer>>,
    used: Arc<AtomicBool>,
}

impl RelayOut {
    /// Seals and queues `packets` (datagrams of `stride` bytes). `Ok(false)` when the outbox
    /// is full (try again when [`RelayOut::ready`] resolves); a closed relay swallows packets
    /// like a dead link.
    pub fn try_send(&self, stride: usize, packets: &[u8]) -> std::io::Result<bool> {
        // Reserve first: a sealed record must never be thrown away, or the peer's counter
        // would skip and it would (rightly) report tampering.
        let permit = match self.out.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Full(())) => return Ok(false),
            Err(mpsc::error::TrySendError::Closed(())) => return Ok(true),
        };
        let stride = u16::try_from(stride).unwrap_or(u16::MAX);
        let mut frame = Vec::with_capacity(4 + 2 + packets.len() + TAG);
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(&stride.to_be_bytes());
        frame.extend_from_slice(packets);
        // Seal and queue under one lock: quinn sends from more than one task, and records must
        // be queued in counter order.
        let mut sealer = self.sealer.lock().unwrap_or_else(PoisonError::into_inner);
        if sealer.seal(&mut frame, 4).is_err() {
            // 2^64 records: cannot happen in practice; refuse rather than reuse a nonce.
            return Err(std::io::Error::other("relay nonce space exhausted"));
        }
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        permit.send(frame);
        self.used.store(true, Ordering::Relaxed);
        Ok(true)
    }

    /// Resolves once the outbox has room (or the relay is gone).
    pub async fn ready(self) {
        let _ = self.out.reserve().await;
    }
}

/// A paired relay stream with the tasks that move its bytes.
pub(crate) struct RelayLink {
    /// Where packets for the peer go.
    pub out: RelayOut,
    /// Changes when the stream ends or is tampered with.
    pub state: watch::Receiver<RelayState>,
    tasks: [JoinHandle<()>; 3],
}

impl Drop for RelayLink {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl RelayLink {
    /// Wraps a paired relay stream; `keys` seal what we send and open what the peer sends,
    /// which is delivered to `inbox`.
    pub fn new(stream: RelayStream, keys: &Keys, inbox: mpsc::Sender<Record>) -> RelayLink {
        let (out_tx, out_rx) = mpsc::channel(OUTBOX);
        let (state_tx, state) = watch::channel(RelayState::Up);
        let state_tx = Arc::new(state_tx);
        let out = RelayOut {
            out: out_tx,
            sealer: Arc::new(Mutex::new(keys.sealer(RELAY_LANE))),
            used: Arc::new(AtomicBool::new(false)),
        };
        let writer = tokio::spawn(write_frames(out_rx, stream.writer, state_tx.clone()));
        let reader =
            tokio::spawn(read_frames(stream.reader, keys.opener(RELAY_LANE), inbox, state_tx));
        let keeper = tokio::spawn(keep_alive(out.clone()));
        RelayLink { out, state, tasks: [writer, reader, keeper] }
    }
}

/// Sends an empty record whenever the relay carried nothing for [`KEEP_ALIVE`].
async fn keep_alive(out: RelayOut) {
    loop {
        tokio::time::sleep(KEEP_ALIVE).await;
        if !out.used.swap(false, Ordering::Relaxed) {
            // A full outbox means a busy relay, which needs no keep-alive.
            let _ = out.try_send(0, &[]);
            out.used.store(false, Ordering::Relaxed);
        }
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
    tx: mpsc::Sender<Record>,
    state: Arc<watch::Sender<RelayState>>,
) {
    let outcome = loop {
        let mut header = [0u8; 4];
        if reader.read_exact(&mut header).await.is_err() {
            break RelayState::Closed;
        }
        let len = u32::from_be_bytes(header) as usize;
        if !(2 + TAG..=MAX_RECORD + TAG).contains(&len) {
            break RelayState::Tampered;
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).await.is_err() {
            break RelayState::Closed;
        }
        if opener.open(&mut body).is_err() {
            break RelayState::Tampered;
        }
        let stride = usize::from(u16::from_be_bytes([body[0], body[1]]));
        if body.len() == 2 {
            continue; // keep-alive
        }
        if stride == 0 {
            break RelayState::Tampered; // sealed by the peer, so a bug there; stop anyway
        }
        body.drain(..2);
        if tx.send(Record { stride, packets: body }).await.is_err() {
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
