//! The control stream: a [`Session`] pumped over one bidirectional QUIC stream.
//!
//! A task reads length-prefixed frames into a bounded channel, so waiting for the next event
//! can be raced against other work without losing half-read frames. Writes go straight to the
//! stream. Every wait is bounded: the session's handshake deadline, or the caller's timeout.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{connection_lost, TransferError};
use crate::error::ErrorKind;
use crate::proto::{Event, Session};
use crate::wire::control::MAX_FRAME;
use crate::wire::frame;

/// Application close codes. 0 is what a connection closes with when its process ends
/// without a word (killed, interrupted): the peer reports that as such.
pub mod close {
    /// The transfer completed.
    pub const DONE: u32 = 1;
    /// The transfer failed; the close reason is the error kind's name, and the full report was
    /// sent on the control stream when the channel was sealed.
    pub const ERROR: u32 = 2;
}

/// Longest a write on the control stream may take (a peer that grants no flow-control credit
/// must not hold us forever).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an aborting side waits for its error report to be acknowledged before closing.
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// A wait with no deadline of its own, for use where another bounded wait runs alongside.
pub const UNBOUNDED: Duration = Duration::from_secs(365 * 24 * 3600);

/// A session bound to its QUIC stream.
#[derive(Debug)]
pub struct ControlStream {
    session: Session,
    send: quinn::SendStream,
    frames: mpsc::Receiver<Result<Vec<u8>, TransferError>>,
    reader: JoinHandle<()>,
}

impl Drop for ControlStream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl ControlStream {
    /// Wraps a session around a stream pair.
    pub fn new(session: Session, send: quinn::SendStream, recv: quinn::RecvStream) -> Self {
        let (tx, frames) = mpsc::channel(8);
        let reader = tokio::spawn(read_frames(recv, tx));
        ControlStream { session, send, frames, reader }
    }

    /// The session, for application calls (`offer`, `accept`, …).
    pub fn session(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Writes everything the session has queued, within `WRITE_TIMEOUT`.
    pub async fn flush(&mut self) -> Result<(), TransferError> {
        let write = async {
            while let Some(f) = self.session.poll_transmit() {
                self.send.write_all(&f).await.map_err(|e| match e {
                    quinn::WriteError::ConnectionLost(c) => connection_lost(&c),
                    other => TransferError::network(format!("control stream: {other}")),
                })?;
            }
            Ok(())
        };
        tokio::time::timeout(WRITE_TIMEOUT, write).await.unwrap_or_else(|_| {
            Err(TransferError::network("the other side stopped reading the control stream"))
        })
    }

    /// Sends our error report now (while data streams are still open, so the peer learns the
    /// reason from the report rather than from streams closing under it).
    pub async fn report(&mut self, err: &TransferError) {
        self.session.abort(err.kind, &err.message);
        let _ = self.flush().await;
    }

    /// When a data stream failed because of the network, or because the peer closed the
    /// connection (whose close carries only an error kind), the peer may have said why on the
    /// control stream: prefer its report (briefly waited for) over our own guess.
    pub async fn explain(&mut self, err: TransferError) -> TransferError {
        if !matches!(err.kind, ErrorKind::Network | ErrorKind::Peer) {
            return err;
        }
        match self.next_event(Duration::from_secs(1)).await {
            Err(peer) if peer.kind != ErrorKind::Network => peer,
            _ => err,
        }
    }

    /// Runs the session until it has an event, waiting at most `timeout` for the peer (and
    /// never past the session's own deadline).
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Event, TransferError> {
        let give_up = Instant::now() + timeout;
        loop {
            self.flush().await?;
            if let Some(ev) = self.session.poll_event() {
                return Ok(ev);
            }
            let deadline = self.session.poll_timeout().map_or(give_up, |d| d.min(give_up));
            let frame =
                tokio::time::timeout_at(deadline.into(), self.frames.recv()).await.ok().flatten();
            let now = Instant::now();
            match frame {
                Some(Ok(body)) => {
                    let handled = self.session.handle_frame(now, &body);
                    // Whatever the outcome, send what the session queued (e.g. an error
                    // report), then report the failure.
                    self.flush().await?;
                    handled?;
                }
                Some(Err(e)) => return Err(e),
                None if self.session.poll_timeout().is_some_and(|d| now >= d) => {
                    self.session.handle_timeout(now)?;
                }
                None if now >= give_up => {
                    return Err(TransferError::network(format!(
                        "the other side did not answer within {}s",
                        timeout.as_secs()
                    )));
                }
                None => {
                    if self.frames.is_closed() && self.frames.is_empty() {
                        return Err(TransferError::network(
                            "the other side closed the control stream",
                        ));
                    }
                }
            }
        }
    }

    /// Tells the peer why we stop (when the channel is sealed and it was not told yet), waits
    /// until the report is acknowledged (bounded), and closes the connection with the error
    /// kind as the reason.
    pub async fn abort(&mut self, conn: &quinn::Connection, err: &TransferError) {
        self.session.abort(err.kind, &err.message);
        let _ = tokio::time::timeout(REPORT_TIMEOUT, async {
            let _ = self.flush().await;
            if self.send.finish().is_ok() {
                let _ = self.send.stopped().await;
            }
        })
        .await;
        conn.close(close::ERROR.into(), err.kind.as_str().as_bytes());
    }
}

/// The error for an event that is valid in the protocol but not at this point of a transfer.
pub(crate) fn unexpected(ev: &Event) -> TransferError {
    TransferError::new(ErrorKind::Protocol, format!("the other side sent an unexpected {ev:?}"))
}

async fn read_frames(
    mut recv: quinn::RecvStream,
    tx: mpsc::Sender<Result<Vec<u8>, TransferError>>,
) {
    loop {
        let result = read_frame(&mut recv).await;
        let stop = !matches!(result, Ok(Some(_)));
        let item = match result {
            Ok(Some(body)) => Ok(body),
            Ok(None) => return, // clean end of stream: the channel closes
            Err(e) => Err(e),
        };
        if tx.send(item).await.is_err() || stop {
            return;
        }
    }
}

/// Reads one frame body; `None` at a clean end of stream between frames.
pub(crate) async fn read_frame(
    recv: &mut quinn::RecvStream,
) -> Result<Option<Vec<u8>>, TransferError> {
    read_frame_capped(recv, MAX_FRAME).await
}

/// Reads one frame body of at most `max` bytes; `None` at a clean end between frames. The body
/// is filled without being zeroed first.
pub(crate) async fn read_frame_capped(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<Option<Vec<u8>>, TransferError> {
    let mut header = [0u8; frame::HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(read_error(e)),
    }
    let len = frame::body_len(header, max)
        .map_err(|e| TransferError::new(ErrorKind::Protocol, format!("the other side sent {e}")))?;
    let mut body = Vec::with_capacity(len);
    while body.len() < len {
        match recv.read_chunk(len - body.len(), true).await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk.bytes),
            Ok(None) => return Err(read_error(quinn::ReadExactError::FinishedEarly(body.len()))),
            Err(e) => return Err(read_error(quinn::ReadExactError::ReadError(e))),
        }
    }
    Ok(Some(body))
}

pub(crate) fn read_error(e: quinn::ReadExactError) -> TransferError {
    match e {
        quinn::ReadExactError::FinishedEarly(_) => {
            TransferError::network("the other side stopped in the middle of a message")
        }
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => {
            connection_lost(&c)
        }
        quinn::ReadExactError::ReadError(other) => {
            TransferError::network(format!("stream failed: {other}"))
        }
    }
}
