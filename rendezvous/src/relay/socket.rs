//! The node's UDP socket as its QUIC endpoint sees it: relay datagrams are taken out of what
//! arrives and forwarded on the spot; everything else goes to QUIC.
//!
//! QUIC packets always have the fixed bit (0x40) set in their first byte (the node never
//! allows its clients to grease it); relay datagrams start with
//! [`DATAGRAM_KIND`](crate::wire::DATAGRAM_KIND) (0x01). A receive batch (GRO) holds datagrams
//! of one source and one size, but may mix the two kinds: each datagram is sorted on its own,
//! and a run of relay datagrams with the same ticket is forwarded as one batch (GSO) without
//! being copied.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use super::Relays;
use crate::wire::{datagram_ticket, DATAGRAM_KIND};

/// The node's socket: `inner`, with relay datagrams handed to `relays`.
pub(crate) struct NodeSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    relays: Arc<Relays>,
}

impl fmt::Debug for NodeSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeSocket")
    }
}

impl NodeSocket {
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, relays: Arc<Relays>) -> NodeSocket {
        NodeSocket { inner, relays }
    }

    /// Forwards the relay datagrams among the `n` received entries and keeps the rest, moved
    /// to the front; returns how many entries remain.
    fn sift(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta], n: usize) -> usize {
        let mut kept = 0;
        for i in 0..n {
            let mut m = meta[i];
            m.len = self.take_relayed(&mut bufs[i], &m);
            if m.len == 0 {
                continue;
            }
            if kept != i {
                let (front, back) = bufs.split_at_mut(i);
                front[kept][..m.len].copy_from_slice(&back[0][..m.len]);
            }
            meta[kept] = m;
            kept += 1;
        }
        kept
    }

    /// Forwards the relay datagrams of one received entry and closes the gaps they leave;
    /// returns the length of what is left for QUIC.
    fn take_relayed(&self, buf: &mut [u8], m: &RecvMeta) -> usize {
        let stride = m.stride.clamp(1, m.len.max(1));
        let relayed = |seg: &[u8]| seg.first() == Some(&DATAGRAM_KIND);
        if !buf[..m.len].chunks(stride).any(relayed) {
            return m.len;
        }
        let mut write = 0;
        let mut read = 0;
        while read < m.len {
            let end = (read + stride).min(m.len);
            if !relayed(&buf[read..end]) {
                buf.copy_within(read..end, write);
                write += end - read;
                read = end;
                continue;
            }
            // A run of relay datagrams with the same ticket goes on as one batch.
            let ticket = datagram_ticket(&buf[read..end]);
            let mut run_end = end;
            while run_end < m.len {
                let next = (run_end + stride).min(m.len);
                if !relayed(&buf[run_end..next]) || datagram_ticket(&buf[run_end..next]) != ticket {
                    break;
                }
                run_end = next;
            }
            self.relays.datagrams(m.addr, &mut buf[read..run_end], stride);
            read = run_end;
        }
        write
    }
}

impl AsyncUdpSocket for NodeSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // A batch that held only relay datagrams comes back empty: quinn's endpoint then polls
        // again, within its own bound on work per turn, so relaying cannot starve it.
        match self.inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(n)) => Poll::Ready(Ok(self.sift(bufs, meta, n))),
            other => other,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
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
