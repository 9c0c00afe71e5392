//! The relay: pairs two byte streams that present the same token and copies bytes between
//! them, within limits.
//!
//! A relay stream is a QUIC stream or a TCP connection whose first frame was
//! [`ClientMsg::Relay`](crate::wire::ClientMsg::Relay). [`Relays::serve`] parks the first of a
//! pair (bounded in number and in time), hands the second to it, answers both with
//! [`NodeMsg::Paired`] and then splices. The node never looks at what passes: the peers seal
//! it end to end, so the relay can only delay, drop or damage bytes, and the peers detect
//! damage.
//!
//! Limits: relays at once (waiting ones included), bytes per second per relay and direction,
//! bytes per second over all relays, the longest a relay may last, and how long it may stay
//! silent in both directions.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::metrics::{GaugeGuard, Metrics};
use crate::wire::{self, ErrorCode, NodeMsg};

/// How long the first stream of a pair waits for the second.
pub const PAIR_TIMEOUT: Duration = Duration::from_secs(30);
/// Size of the copy buffer of each direction.
const COPY_BUFFER: usize = 64 * 1024;

pub use crate::client::{Reader, Writer};

/// Relay limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLimits {
    /// Relays at once, counting streams still waiting for their partner.
    pub max_sessions: usize,
    /// Bytes per second per relay and direction; 0 means unlimited.
    pub session_rate: u64,
    /// Bytes per second over all relays; 0 means unlimited.
    pub total_rate: u64,
    /// The longest a relay may last.
    pub max_duration: Duration,
    /// A relay with no bytes in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// Relays at once (waiting ones included) from one IPv4 address or IPv6 /64; the node
    /// sets it to its clients-per-address limit.
    pub per_source: usize,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            max_sessions: 1000,
            session_rate: 0,
            total_rate: 0,
            max_duration: Duration::from_secs(6 * 3600),
            idle_timeout: Duration::from_secs(60),
            per_source: 64,
        }
    }
}

/// Sees, and may alter, every relayed buffer: `(side it came from, offset in that direction,
/// bytes)`. Only for tests and diagnosis: it lets a test play a malicious relay.
#[derive(Clone)]
pub struct Tap(pub Arc<TapFn>);

/// The function of a [`Tap`].
pub type TapFn = dyn Fn(u8, u64, &mut [u8]) + Send + Sync;

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tap")
    }
}

/// One end of a relay: its stream and, for the second end, a signal that the splice ended.
struct End {
    side: u8,
    reader: Reader,
    writer: Writer,
    /// Dropped when the splice is over (the end's connection must live until then).
    _done: Option<oneshot::Sender<()>>,
}

/// A relay slot: one session (or waiting end) counted overall and for its source.
struct Slot<'a> {
    relays: &'a Relays,
    key: IpAddr,
    _active: GaugeGuard,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut per_source = lock(&self.relays.per_source);
        if let Some(n) = per_source.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                per_source.remove(&self.key);
            }
        }
    }
}

struct Waiting {
    side: u8,
    id: u64,
    deliver: oneshot::Sender<End>,
}

/// The relays of one node.
#[derive(Debug)]
pub struct Relays {
    limits: RelayLimits,
    waiting: Mutex<HashMap<[u8; 32], Waiting>>,
    per_source: Mutex<HashMap<IpAddr, usize>>,
    closing: std::sync::atomic::AtomicBool,
    total: Option<Mutex<Bucket>>,
    next_id: AtomicU64,
    tap: Option<Tap>,
    /// Where the relays count what they do (`relays_*`, `relay_bytes_total`).
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting").field("side", &self.side).field("id", &self.id).finish()
    }
}

impl Relays {
    /// Relays under `limits`.
    pub fn new(limits: RelayLimits) -> Relays {
        Relays::with(limits, None, Arc::default())
    }

    /// Relays under `limits` that count into `metrics` and pass their bytes through `tap`.
    pub fn with(limits: RelayLimits, tap: Option<Tap>, metrics: Arc<Metrics>) -> Relays {
        let total = (limits.total_rate > 0).then(|| Mutex::new(Bucket::new(limits.total_rate)));
        Relays {
            limits,
            waiting: Mutex::new(HashMap::new()),
            per_source: Mutex::new(HashMap::new()),
            closing: std::sync::atomic::AtomicBool::new(false),
            total,
            next_id: AtomicU64::new(1),
            tap,
            metrics,
        }
    }

    /// Serves one relay stream from `source` whose `Relay` request (`token`, `side`) was read;
    /// returns when the relay is over (or was refused). `on_paired` runs once the stream is
    /// paired (the QUIC server widens the connection's receive window then).
    pub async fn serve(
        &self,
        token: [u8; 32],
        side: u8,
        source: IpAddr,
        reader: Reader,
        mut writer: Writer,
        on_paired: Option<Box<dyn FnOnce() + Send>>,
    ) {
        if self.closing.load(Ordering::Relaxed) {
            let message = "the node is shutting down; try again later";
            self.refuse(&mut writer, ErrorCode::ShuttingDown, message).await;
            return;
        }
        let Some(slot) = self.admit(source) else {
            self.refuse(&mut writer, ErrorCode::Busy, "the relay is full; try again later").await;
            return;
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (deliver, delivered) = oneshot::channel();
        enum Role {
            First,
            Second(Waiting),
            Duplicate,
        }
        // One critical section decides: pair with the waiting end, wait, or refuse.
        let role = {
            let mut waiting = lock(&self.waiting);
            match waiting.remove(&token) {
                Some(w) if w.side != side => Role::Second(w),
                Some(w) => {
                    waiting.insert(token, w);
                    Role::Duplicate
                }
                None => {
                    waiting.insert(token, Waiting { side, id, deliver });
                    Role::First
                }
            }
        };
        match role {
            Role::Duplicate => {
                self.refuse(
                    &mut writer,
                    ErrorCode::Protocol,
                    "this relay token is already waiting",
                )
                .await;
            }
            Role::Second(partner) => {
                // Hand ourselves to the first end, which runs the splice (and counts as the
                // session), and stay until it is over so that our connection stays open.
                drop(slot);
                if let Some(widen) = on_paired {
                    widen();
                }
                let (done, finished) = oneshot::channel();
                let end = End { side, reader, writer, _done: Some(done) };
                match partner.deliver.send(end) {
                    Ok(()) => {
                        let _ = finished.await;
                    }
                    Err(mut end) => {
                        self.refuse(&mut end.writer, ErrorCode::Expired, "the other side left")
                            .await;
                    }
                }
            }
            Role::First => {
                let mut reader = reader;
                // The client sends nothing before `Paired`: a read that returns means it hung
                // up (or broke the protocol); either way stop waiting.
                let mut probe = [0u8; 1];
                let other = tokio::select! {
                    r = tokio::time::timeout(PAIR_TIMEOUT, delivered) => r.ok().and_then(Result::ok),
                    _ = reader.read(&mut probe) => None,
                };
                let Some(other) = other else {
                    {
                        let mut waiting = lock(&self.waiting);
                        if waiting.get(&token).is_some_and(|w| w.id == id) {
                            waiting.remove(&token);
                        }
                    }
                    self.refuse(&mut writer, ErrorCode::Expired, "the other side never came").await;
                    return;
                };
                if let Some(widen) = on_paired {
                    widen();
                }
                Metrics::bump(&self.metrics.relays_total);
                let mine = End { side, reader, writer, _done: None };
                let bytes = self.splice(mine, other).await;
                tracing::debug!(bytes, "relay finished");
                drop(slot);
            }
        }
    }

    /// Shutdown: new relay streams are refused; running relays go on (the server bounds them
    /// by its grace period).
    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    /// Takes a relay slot for `source` within the session cap and the per-address cap.
    fn admit(&self, source: IpAddr) -> Option<Slot<'_>> {
        let key = crate::table::source_of(source);
        let mut per_source = lock(&self.per_source);
        let active = self.metrics.relays_active.load(Ordering::Relaxed);
        let mine = per_source.get(&key).copied().unwrap_or(0);
        if usize::try_from(active).unwrap_or(usize::MAX) >= self.limits.max_sessions
            || mine >= self.limits.per_source
        {
            return None;
        }
        per_source.insert(key, mine + 1);
        Some(Slot {
            relays: self,
            key,
            _active: GaugeGuard::new(self.metrics.clone(), |m| &m.relays_active),
        })
    }

    async fn refuse(&self, writer: &mut Writer, code: ErrorCode, message: &str) {
        Metrics::bump(&self.metrics.relays_refused_total);
        let frame = wire::encode(&NodeMsg::Error { code, message: message.to_owned() });
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = writer.write_all(&frame).await;
            let _ = writer.shutdown().await;
        })
        .await;
    }

    /// Answers both ends and copies bytes until both directions end, the relay goes idle or
    /// runs out of time. Returns the bytes copied.
    async fn splice(&self, a: End, b: End) -> u64 {
        let End { side: a_side, reader: ar, writer: mut aw, _done: a_done } = a;
        let End { side: b_side, reader: br, writer: mut bw, _done: b_done } = b;
        let paired = wire::encode(&NodeMsg::Paired);
        let answered = tokio::time::timeout(Duration::from_secs(10), async {
            aw.write_all(&paired).await?;
            bw.write_all(&paired).await
        })
        .await;
        if !matches!(answered, Ok(Ok(()))) {
            return 0;
        }
        let started = Instant::now();
        let activity = AtomicU64::new(0);
        let forward = self.pump(a_side, ar, bw, started, &activity);
        let backward = self.pump(b_side, br, aw, started, &activity);
        let idle = async {
            let tick = (self.limits.idle_timeout / 4).max(Duration::from_millis(100));
            loop {
                tokio::time::sleep(tick).await;
                let last = Duration::from_millis(activity.load(Ordering::Relaxed));
                if started.elapsed().saturating_sub(last) >= self.limits.idle_timeout {
                    return;
                }
            }
        };
        let bytes = tokio::select! {
            (f, b) = async { tokio::join!(forward, backward) } => f + b,
            () = idle => 0,
            () = tokio::time::sleep(self.limits.max_duration) => 0,
        };
        drop((a_done, b_done));
        bytes
    }

    /// Copies one direction until end of stream or an error, then ends the writer.
    async fn pump(
        &self,
        from: u8,
        mut reader: Reader,
        mut writer: Writer,
        started: Instant,
        activity: &AtomicU64,
    ) -> u64 {
        let mut own = (self.limits.session_rate > 0).then(|| Bucket::new(self.limits.session_rate));
        let mut buf = vec![0u8; COPY_BUFFER];
        let mut copied = 0u64;
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            activity.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
            if let Some(tap) = &self.tap {
                (tap.0)(from, copied, &mut buf[..n]);
            }
            if let Some(own) = own.as_mut() {
                tokio::time::sleep(own.take(n as u64)).await;
            }
            if let Some(total) = &self.total {
                let wait = lock(total).take(n as u64);
                tokio::time::sleep(wait).await;
            }
            if writer.write_all(&buf[..n]).await.is_err() {
                break;
            }
            copied += n as u64;
            self.metrics.relay_bytes_total.fetch_add(n as u64, Ordering::Relaxed);
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), writer.shutdown()).await;
        copied
    }
}

/// A token bucket with one second of burst: [`Bucket::take`] returns how long to wait before
/// the bytes may pass.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u64) -> Bucket {
        Bucket { rate: rate as f64, tokens: rate as f64, last: Instant::now() }
    }

    fn take(&mut self, n: u64) -> Duration {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reads the first frame of a stream (bounded by `timeout` and [`wire::MAX_FRAME`]).
pub(crate) async fn read_first(
    reader: &mut Reader,
    timeout: Duration,
) -> Option<crate::wire::ClientMsg> {
    tokio::time::timeout(timeout, async {
        let mut header = [0u8; wire::HEADER_LEN];
        reader.read_exact(&mut header).await.ok()?;
        let len = wire::frame_len(header).ok()?;
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).await.ok()?;
        wire::decode_client(&body).ok()
    })
    .await
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn bucket_paces_to_its_rate() {
        let mut b = Bucket::new(1000);
        assert_eq!(b.take(1000), Duration::ZERO, "one second of burst");
        let wait = b.take(500);
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
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

    #[tokio::test]
    async fn pairs_by_token_and_copies_both_ways() {
        let relays = Arc::new(Relays::new(RelayLimits::default()));
        let (ar, aw, mut a) = pipe();
        let (br, bw, mut b) = pipe();
        let first = tokio::spawn({
            let r = relays.clone();
            async move { r.serve([1; 32], 0, LOCAL, ar, aw, None).await }
        });
        tokio::task::yield_now().await;
        let second = tokio::spawn({
            let r = relays.clone();
            async move { r.serve([1; 32], 1, LOCAL, br, bw, None).await }
        });
        assert_eq!(read_msg(&mut a).await, NodeMsg::Paired);
        assert_eq!(read_msg(&mut b).await, NodeMsg::Paired);
        a.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        b.write_all(b"pong").await.unwrap();
        a.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        drop(a);
        drop(b);
        first.await.unwrap();
        second.await.unwrap();
        assert_eq!(relays.metrics.relay_bytes_total.load(Ordering::Relaxed), 8);
        assert_eq!(relays.metrics.relays_active.load(Ordering::Relaxed), 0);
        assert_eq!(relays.metrics.relays_total.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn same_side_twice_and_over_the_limit_are_refused() {
        let limits = RelayLimits { max_sessions: 2, ..RelayLimits::default() };
        let relays = Arc::new(Relays::new(limits));
        let (ar, aw, _a) = pipe();
        let first = tokio::spawn({
            let r = relays.clone();
            async move { r.serve([2; 32], 0, LOCAL, ar, aw, None).await }
        });
        tokio::task::yield_now().await;
        let (br, bw, mut b) = pipe();
        relays.serve([2; 32], 0, LOCAL, br, bw, None).await;
        assert!(matches!(read_msg(&mut b).await, NodeMsg::Error { code: ErrorCode::Protocol, .. }));
        let (cr, cw, _c) = pipe();
        let other = tokio::spawn({
            let r = relays.clone();
            async move { r.serve([3; 32], 0, LOCAL, cr, cw, None).await }
        });
        tokio::task::yield_now().await;
        let (dr, dw, mut d) = pipe();
        relays.serve([4; 32], 0, LOCAL, dr, dw, None).await;
        assert!(matches!(read_msg(&mut d).await, NodeMsg::Error { code: ErrorCode::Busy, .. }));
        first.abort();
        other.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn an_unpaired_stream_expires() {
        let relays = Relays::new(RelayLimits::default());
        let (ar, aw, mut a) = pipe();
        relays.serve([5; 32], 0, LOCAL, ar, aw, None).await;
        assert!(matches!(read_msg(&mut a).await, NodeMsg::Error { code: ErrorCode::Expired, .. }));
        assert!(lock(&relays.waiting).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_relay_is_closed() {
        let limits = RelayLimits { idle_timeout: Duration::from_secs(5), ..RelayLimits::default() };
        let relays = Arc::new(Relays::new(limits));
        let (ar, aw, mut a) = pipe();
        let (br, bw, mut b) = pipe();
        let first = tokio::spawn({
            let r = relays.clone();
            async move { r.serve([6; 32], 0, LOCAL, ar, aw, None).await }
        });
        tokio::task::yield_now().await;
        let second = tokio::spawn({
            let r = relays.clone();
            async move { r.serve([6; 32], 1, LOCAL, br, bw, None).await }
        });
        assert_eq!(read_msg(&mut a).await, NodeMsg::Paired);
        assert_eq!(read_msg(&mut b).await, NodeMsg::Paired);
        // Nobody sends anything: the relay ends on its own and both ends see the close.
        first.await.unwrap();
        second.await.unwrap();
        let mut rest = Vec::new();
        a.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_pair_counts_once_and_a_source_has_a_cap() {
        let limits = RelayLimits { per_source: 2, ..RelayLimits::default() };
        let relays = Arc::new(Relays::new(limits));
        let (ar, aw, mut a) = pipe();
        let (br, bw, mut b) = pipe();
        let first = tokio::spawn({
            let r = relays.clone();
            async move { r.serve([10; 32], 0, LOCAL, ar, aw, None).await }
        });
        tokio::task::yield_now().await;
        let second = tokio::spawn({
            let r = relays.clone();
            async move { r.serve([10; 32], 1, LOCAL, br, bw, None).await }
        });
        assert_eq!(read_msg(&mut a).await, NodeMsg::Paired);
        assert_eq!(read_msg(&mut b).await, NodeMsg::Paired);
        assert_eq!(relays.metrics.relays_active.load(Ordering::Relaxed), 1, "one session");
        // The same source holds one slot; a second waiting end takes the other; a third is
        // refused.
        let (cr, cw, _c) = pipe();
        let waiting = tokio::spawn({
            let r = relays.clone();
            async move { r.serve([11; 32], 0, LOCAL, cr, cw, None).await }
        });
        tokio::task::yield_now().await;
        let (dr, dw, mut d) = pipe();
        relays.serve([12; 32], 0, LOCAL, dr, dw, None).await;
        assert!(matches!(read_msg(&mut d).await, NodeMsg::Error { code: ErrorCode::Busy, .. }));
        // Another source is not affected.
        let (er, ew, _e) = pipe();
        let other: IpAddr = "192.0.2.9".parse().unwrap();
        let elsewhere = tokio::spawn({
            let r = relays.clone();
            async move { r.serve([13; 32], 0, other, er, ew, None).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(relays.metrics.relays_active.load(Ordering::Relaxed), 3);
        drop((a, b));
        first.await.unwrap();
        second.await.unwrap();
        waiting.abort();
        elsewhere.abort();
    }

    #[tokio::test]
    async fn a_waiting_end_that_hangs_up_is_forgotten_at_once() {
        let relays = Arc::new(Relays::new(RelayLimits::default()));
        let (ar, aw, a) = pipe();
        let task = tokio::spawn({
            let r = relays.clone();
            async move { r.serve([14; 32], 0, LOCAL, ar, aw, None).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(relays.metrics.relays_active.load(Ordering::Relaxed), 1);
        drop(a);
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
        assert_eq!(relays.metrics.relays_active.load(Ordering::Relaxed), 0);
        assert!(lock(&relays.waiting).is_empty());
    }

    #[tokio::test]
    async fn a_closing_node_takes_no_new_relays() {
        let relays = Relays::new(RelayLimits::default());
        relays.close();
        let (ar, aw, mut a) = pipe();
        relays.serve([15; 32], 0, LOCAL, ar, aw, None).await;
        let refused = read_msg(&mut a).await;
        assert!(matches!(refused, NodeMsg::Error { code: ErrorCode::ShuttingDown, .. }));
    }
}
