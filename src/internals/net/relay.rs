//! The relay path: the peers' QUIC packets carried through the rendezvous node.
//!
//! The node pairs the two sides of a nameplate by the tickets it gave them
//! (`p2p_copy_rendezvous::relay`) and forwards their packets without decrypting or sealing
//! them: they are the peers' own QUIC connection, encrypted end to end, and a relay that
//! damages one only makes QUIC send it again (`docs/security.md` §6). Two ways across:
//!
//! - **Datagrams**, for a side that reaches the node over QUIC: each packet goes as a UDP
//!   datagram `0x01 ‖ ticket ‖ packet` from the data socket to the node's port, batches as
//!   batches. [`super::path::PathSocket`] does this itself; the relay stream only holds the
//!   relay open, and its end means the relay ended (`watch_stream`).
//! - **Records on a TCP stream**, for a side without UDP to the node: a `RelayLink` carries
//!   `len: u32 BE ‖ stride: u16 BE ‖ packets` both ways (`packets`: one QUIC datagram, or a
//!   batch of `stride`-byte datagrams that quinn handed over at once, the last maybe shorter).
//!   An empty record is a keep-alive.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use p2p_copy_rendezvous::client::{Reader, RelayStream, Writer};

/// Largest record body (stride and packets): ten full-size QUIC datagrams with room to spare.
pub const MAX_RECORD: usize = 64 * 1024;
/// Records queued towards the relay.
const OUTBOX: usize = 256;
/// How long the relay may carry nothing before a keep-alive goes through it (the node closes
/// relays idle for a minute by default; the standby relay of a direct transfer is idle).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What became of the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayState {
    /// Carrying packets.
    Up,
    /// The node or the other side ended it.
    Closed,
}

/// Packets from the relay's stream, as quinn receives them: `stride`-byte datagrams.
#[derive(Debug)]
pub struct Record {
    /// Size of each datagram (the last may be shorter).
    pub stride: usize,
    /// The datagrams, back to back.
    pub packets: Vec<u8>,
}

/// The sending half of a relay stream on TCP.
#[derive(Clone)]
pub(crate) struct RelayOut {
    out: mpsc::Sender<Vec<u8>>,
    used: Arc<AtomicBool>,
}

impl RelayOut {
    /// Queues `packets` (datagrams of `stride` bytes). `Ok(false)` when the outbox is full (try
    /// again when [`RelayOut::ready`] resolves); a closed relay swallows packets like a dead
    /// link.
    pub fn try_send(&self, stride: usize, packets: &[u8]) -> std::io::Result<bool> {
        let permit = match self.out.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Full(())) => return Ok(false),
            Err(mpsc::error::TrySendError::Closed(())) => return Ok(true),
        };
        let stride = u16::try_from(stride).unwrap_or(u16::MAX);
        let mut frame = Vec::with_capacity(4 + 2 + packets.len());
        frame.extend_from_slice(&((packets.len() + 2) as u32).to_be_bytes());
        frame.extend_from_slice(&stride.to_be_bytes());
        frame.extend_from_slice(packets);
        permit.send(frame);
        self.used.store(true, Ordering::Relaxed);
        Ok(true)
    }

    /// Resolves once the outbox has room (or the relay is gone).
    pub async fn ready(self) {
        let _ = self.out.reserve().await;
    }
}

/// A paired relay stream on TCP with the tasks that move its records.
pub(crate) struct RelayLink {
    /// Where packets for the peer go.
    pub out: RelayOut,
    /// Changes when the stream ends.
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
    /// Wraps a paired relay stream on TCP; what the peer sends is delivered to `inbox`.
    pub fn new(stream: RelayStream, inbox: mpsc::Sender<Record>) -> RelayLink {
        let (out_tx, out_rx) = mpsc::channel(OUTBOX);
        let (state_tx, state) = watch::channel(RelayState::Up);
        let state_tx = Arc::new(state_tx);
        let out = RelayOut { out: out_tx, used: Arc::new(AtomicBool::new(false)) };
        let writer = tokio::spawn(write_frames(out_rx, stream.writer, state_tx.clone()));
        let reader = tokio::spawn(read_frames(stream.reader, inbox, state_tx));
        let keeper = tokio::spawn(keep_alive(out.clone()));
        RelayLink { out, state, tasks: [writer, reader, keeper] }
    }
}

/// Watches the relay stream of a side on QUIC, which carries nothing after `Paired`: resolves
/// when the node ends it (or the connection to the node is lost).
pub(crate) async fn watch_stream(mut reader: Reader) {
    let mut sink = [0u8; 64];
    while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
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
    state.send_replace(RelayState::Closed);
}

async fn read_frames(
    mut reader: Reader,
    tx: mpsc::Sender<Record>,
    state: Arc<watch::Sender<RelayState>>,
) {
    loop {
        let mut header = [0u8; 4];
        if reader.read_exact(&mut header).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes(header) as usize;
        if !(2..=MAX_RECORD).contains(&len) {
            tracing::debug!(len, "the relay sent a record of an impossible size");
            break;
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).await.is_err() {
            break;
        }
        let stride = usize::from(u16::from_be_bytes([body[0], body[1]]));
        if body.len() == 2 {
            continue; // keep-alive
        }
        if stride == 0 {
            tracing::debug!("the relay sent a record without a stride");
            break;
        }
        body.drain(..2);
        if tx.send(Record { stride, packets: body }).await.is_err() {
            break;
        }
    }
    state.send_replace(RelayState::Closed);
}
