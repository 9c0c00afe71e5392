//! Flow-control window auto-tuning: a connection starts with [`DEFAULT_WINDOW`] for sending
//! and receiving, and grows each window when it, and not the path, limits the transfer, up to
//! [`Tuning::max_window`].
//!
//! How it decides ([`WindowTuner`], sans-IO):
//!
//! 1. Every [`SAMPLE_EVERY`] the driver reads the connection's statistics: UDP bytes sent and
//!    received so far, packets lost so far, and the minimum round trip seen.
//! 2. Over an epoch of at least [`EPOCH_RTTS`] minimum round trips (and at least
//!    [`MIN_EPOCH`]), it scales the bytes sent, and the bytes received, to one minimum round
//!    trip: what the path carried per round trip in each direction.
//! 3. **Send window.** A transfer held back by its window has the whole window in flight, and
//!    with no queue on the path a round trip carries about 9/10 of it (the rest waits for the
//!    receiver's next window update). One held back by the path has part of its window waiting
//!    in the bottleneck's queue instead, so a round trip carries less of it: 3/4 for 8 MiB on
//!    1 Gbit/s at 50 ms. The send window doubles when a round trip carried
//!    [`SEND_GROW_AT`] of it in two epochs running. While packets are being lost, a hole holds
//!    the receiver's in-order delivery (and with it the window) for another round trip or two,
//!    and a window-limited transfer carries only about half its window per round trip: then
//!    [`SEND_GROW_AT_LOSS`] is enough.
//! 4. **Receive window.** It doubles when a round trip brought in [`RECEIVE_GROW_AT`] of it in
//!    two epochs running, so it stays ahead of the sender's window. That costs little: what it
//!    holds is at most what the sender's window lets be in flight.
//!
//! This is the receive-buffer auto-tuning of Linux (`tcp_rcv_space_adjust`: a window of about
//! twice what the application read in the last round trip) and of quic-go and Chromium (double
//! the window when it was used up within a few round trips), with the minimum round trip instead
//! of the smoothed one, so that a queue the transfer itself builds does not look like a long
//! path. At ordinary round trips (a LAN, loopback, a few tens of milliseconds at 1 Gbit/s) the
//! starting window is more than a round trip carries, so the windows stay as they are, and so does memory.
//!
//! The windows never shrink: a connection that needed a large window keeps it (and the memory
//! the sender buffers up to it) until it ends. Both sides run a tuner; the sender's send window
//! and the receiver's receive window are the ones that grow. `--window` fixes the windows and
//! turns auto-tuning off ([`Tuning::with_window`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::quic::Tuning;
#[cfg(doc)]
use super::quic::DEFAULT_WINDOW;

/// How often the driver samples a connection's statistics.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// An epoch lasts at least this many minimum round trips.
pub const EPOCH_RTTS: u32 = 2;
/// An epoch lasts at least this long.
pub const MIN_EPOCH: Duration = Duration::from_millis(200);
/// The send window grows when a round trip carries at least this share of it (numerator,
/// denominator).
pub const SEND_GROW_AT: (u64, u64) = (4, 5);
/// As [`SEND_GROW_AT`], in an epoch in which packets were lost.
pub const SEND_GROW_AT_LOSS: (u64, u64) = (1, 3);
/// The receive window grows when a round trip brings in at least this share of it.
pub const RECEIVE_GROW_AT: (u64, u64) = (2, 5);
/// Epochs in a row that must ask for growth before a window grows (one alone may be a burst
/// into a queue).
pub const STREAK: u8 = 2;

/// What the driver reads from a connection for each sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// UDP payload bytes sent so far.
    pub sent: u64,
    /// UDP payload bytes received so far.
    pub received: u64,
    /// Packets declared lost so far.
    pub lost: u64,
    /// Minimum round trip seen so far (zero before the first).
    pub min_rtt: Duration,
}

/// The windows a connection should have, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Send window.
    pub send: u64,
    /// Connection receive window.
    pub receive: u64,
}

/// The auto-tuning decision (sans-IO): fed samples and their time, it says when to grow the
/// windows and to what.
#[derive(Debug, Clone)]
pub struct WindowTuner {
    send: Grower,
    receive: Grower,
    /// Start of the current epoch and the sample taken then.
    epoch: Option<(Instant, Sample)>,
}

/// One window and its growth.
#[derive(Debug, Clone)]
struct Grower {
    size: u64,
    cap: u64,
    /// Epochs in a row that asked for growth.
    streak: u8,
}

impl Grower {
    /// One epoch's verdict: `per_rtt` bytes per round trip, growth when they reach
    /// `num / den` of the window. Returns whether the window grew.
    fn epoch(&mut self, per_rtt: u128, (num, den): (u64, u64)) -> bool {
        if self.size >= self.cap {
            return false;
        }
        if per_rtt * u128::from(den) < u128::from(self.size) * u128::from(num) {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        if self.streak < STREAK {
            return false;
        }
        self.streak = 0;
        self.size = self.size.saturating_mul(2).min(self.cap);
        true
    }
}

impl WindowTuner {
    /// A tuner for a connection whose windows start at `window` bytes and may grow to `cap`.
    pub fn new(window: u64, cap: u64) -> WindowTuner {
        let grower = Grower { size: window, cap: cap.max(window), streak: 0 };
        WindowTuner { send: grower.clone(), receive: grower, epoch: None }
    }

    /// The windows the connection should have now.
    pub fn windows(&self) -> Windows {
        Windows { send: self.send.size, receive: self.receive.size }
    }

    /// Whether both windows reached their cap (nothing more to do).
    pub fn at_cap(&self) -> bool {
        self.send.size >= self.send.cap && self.receive.size >= self.receive.cap
    }

    /// Takes `sample`, read at `now`; returns the new windows when either grew.
    pub fn on_sample(&mut self, now: Instant, sample: Sample) -> Option<Windows> {
        let Some((start, first)) = self.epoch else {
            self.epoch = Some((now, sample));
            return None;
        };
        if sample.min_rtt.is_zero() {
            return None;
        }
        let elapsed = now.saturating_duration_since(start);
        if elapsed < (sample.min_rtt * EPOCH_RTTS).max(MIN_EPOCH) {
            return None;
        }
        self.epoch = Some((now, sample));
        // Bytes per minimum round trip; u128: terabytes times seconds in nanoseconds.
        let per_rtt =
            |bytes: u64| u128::from(bytes) * sample.min_rtt.as_nanos() / elapsed.as_nanos().max(1);
        let sent = per_rtt(sample.sent.saturating_sub(first.sent));
        let received = per_rtt(sample.received.saturating_sub(first.received));
        let losing = sample.lost > first.lost;
        let send_at = if losing { SEND_GROW_AT_LOSS } else { SEND_GROW_AT };
        let send = self.send.epoch(sent, send_at);
        let receive = self.receive.epoch(received, RECEIVE_GROW_AT);
        (send || receive).then(|| self.windows())
    }
}

/// A connection's auto-tuning, running while this lives.
#[derive(Debug)]
pub struct Tuner {
    send: Arc<AtomicU64>,
    receive: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Tuner {
    /// The windows the connection has now.
    pub fn windows(&self) -> Windows {
        Windows {
            send: self.send.load(Ordering::Relaxed),
            receive: self.receive.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Tuner {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Starts auto-tuning `conn`'s windows as `tuning` allows (nothing to do when its windows are
/// fixed); it stops when the connection closes, both windows reach their cap, or the returned
/// [`Tuner`] is dropped. Must be called within a tokio runtime.
pub fn spawn(conn: &quinn::Connection, tuning: &Tuning) -> Tuner {
    let send = Arc::new(AtomicU64::new(tuning.send_window));
    let receive = Arc::new(AtomicU64::new(tuning.conn_window.into()));
    let task = tuning.auto_window().then(|| {
        let start = u64::from(tuning.conn_window).min(tuning.send_window);
        let tuner = WindowTuner::new(start, tuning.max_window.into());
        tokio::spawn(drive(conn.clone(), tuner, send.clone(), receive.clone()))
    });
    Tuner { send, receive, task }
}

async fn drive(
    conn: quinn::Connection,
    mut tuner: WindowTuner,
    send: Arc<AtomicU64>,
    receive: Arc<AtomicU64>,
) {
    while conn.close_reason().is_none() && !tuner.at_cap() {
        let stats = conn.stats();
        let sample = Sample {
            sent: stats.udp_tx.bytes,
            received: stats.udp_rx.bytes,
            lost: stats.path.lost_packets,
            min_rtt: stats.path.min_rtt,
        };
        let now = tokio::time::Instant::now().into_std();
        if let Some(windows) = tuner.on_sample(now, sample) {
            if windows.send != send.load(Ordering::Relaxed) {
                conn.set_send_window(windows.send);
                send.store(windows.send, Ordering::Relaxed);
            }
            if windows.receive != receive.load(Ordering::Relaxed) {
                // Invariant: windows are at most `Tuning::max_window`, a u32.
                let varint = quinn::VarInt::from_u64(windows.receive).unwrap_or(quinn::VarInt::MAX);
                conn.set_receive_window(varint);
                receive.store(windows.receive, Ordering::Relaxed);
            }
            tracing::debug!(
                send = windows.send,
                receive = windows.receive,
                min_rtt = ?sample.min_rtt,
                "flow-control windows grown"
            );
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const MS: Duration = Duration::from_millis(1);

    /// A simulated transfer: `link(windows)` gives the bytes per second sent and the packets
    /// lost per second under those windows.
    struct Run {
        tuner: WindowTuner,
        rtt: Duration,
    }

    impl Run {
        fn new(rtt: Duration, cap: u64) -> Run {
            Run { tuner: WindowTuner::new(8 * MIB, cap), rtt }
        }

        /// Feeds samples every 50 ms for `secs` seconds; the receiver gets what is sent.
        /// Returns the windows asked for.
        fn feed(&mut self, link: impl Fn(Windows) -> (u64, u64), secs: u64) -> Vec<Windows> {
            let t0 = Instant::now();
            let (mut sent, mut lost) = (0, 0);
            let mut grown = Vec::new();
            for step in 0..secs * 20 {
                let (rate, losses) = link(self.tuner.windows());
                sent += rate / 20;
                lost += losses / 20;
                let sample = Sample { sent, received: sent, lost, min_rtt: self.rtt };
                if let Some(w) = self.tuner.on_sample(t0 + SAMPLE_EVERY * step as u32, sample) {
                    grown.push(w);
                }
            }
            grown
        }
    }

    /// A path of `rate` bytes per second and `rtt`, and a transfer held by the smaller of its
    /// windows (moving 9/10 of it per round trip) or by the path.
    fn path(rate: u64, rtt: Duration) -> impl Fn(Windows) -> (u64, u64) {
        move |w: Windows| {
            let by_window = w.send.min(w.receive) as f64 * 0.9 / rtt.as_secs_f64();
            ((by_window as u64).min(rate), 0)
        }
    }

    fn both(send: u64, receive: u64) -> Windows {
        Windows { send, receive }
    }

    /// 1 Gbit/s at 100 ms, held by 8 MiB: both windows grow; the send window stops at 16 MiB
    /// (which fills the path), the receive window keeps 2.5 round trips, 32 MiB.
    #[test]
    fn a_long_fat_link_grows_both_windows_until_the_path_is_the_limit() {
        let mut run = Run::new(100 * MS, 64 * MIB);
        run.feed(path(125_000_000, 100 * MS), 10);
        assert_eq!(run.tuner.windows(), both(16 * MIB, 32 * MIB));
    }

    /// Never beyond the cap.
    #[test]
    fn growth_stops_at_the_cap() {
        let mut run = Run::new(300 * MS, 32 * MIB);
        let grown = run.feed(path(1_250_000_000, 300 * MS), 10);
        assert_eq!(grown.last(), Some(&both(32 * MIB, 32 * MIB)));
        assert!(run.tuner.at_cap());
    }

    /// With loss, a window-limited transfer moves about half its window per round trip: the
    /// send window still grows, to 32 MiB at 1 Gbit/s and 100 ms.
    #[test]
    fn a_lossy_window_limited_transfer_grows_too() {
        let mut run = Run::new(100 * MS, 32 * MIB);
        let lossy = |w: Windows| {
            let by_window = w.send.min(w.receive) as f64 * 0.45 / 0.1;
            ((by_window as u64).min(100_000_000), 1000)
        };
        run.feed(lossy, 10);
        assert_eq!(run.tuner.windows(), both(32 * MIB, 32 * MIB));
    }

    /// 1 Gbit/s at 20 ms (2.5 MB per round trip), and loopback at 2 GB/s and 0.2 ms: no
    /// growth. At 50 ms (6.25 MB, 3/4 of 8 MiB with the rest queued) the send window stays
    /// and the receive window takes one step ahead.
    #[test]
    fn ordinary_round_trips_keep_the_send_window() {
        let gbit = 125_000_000;
        let mut run = Run::new(20 * MS, 32 * MIB);
        assert_eq!(run.feed(|_| (gbit, 0), 30), Vec::new());
        let mut run = Run::new(Duration::from_micros(200), 32 * MIB);
        assert_eq!(run.feed(|_| (2_000_000_000, 0), 30), Vec::new());
        assert_eq!(run.tuner.windows(), both(8 * MIB, 8 * MIB));
        let mut run = Run::new(50 * MS, 32 * MIB);
        assert_eq!(run.feed(|_| (gbit, 0), 30), vec![both(8 * MIB, 16 * MIB)]);
    }

    /// A transfer CUBIC keeps slow on a lossy long link (1 MB/s at 100 ms): nothing grows.
    #[test]
    fn a_slow_lossy_transfer_keeps_the_windows() {
        let mut run = Run::new(100 * MS, 32 * MIB);
        assert_eq!(run.feed(|_| (1_000_000, 10), 30), Vec::new());
    }

    /// One epoch's burst into a queue is not enough: growth needs two epochs in a row.
    #[test]
    fn one_burst_is_not_enough() {
        let mut tuner = WindowTuner::new(8 * MIB, 32 * MIB);
        let t0 = Instant::now();
        let rtt = 100 * MS;
        let at = |ms: u32| t0 + MS * ms;
        let sample = |sent: u64| Sample { sent, received: 0, lost: 0, min_rtt: rtt };
        assert_eq!(tuner.on_sample(at(0), sample(0)), None);
        // 8 MiB per round trip for one epoch, then a quarter of it.
        assert_eq!(tuner.on_sample(at(200), sample(16 * MIB)), None);
        assert_eq!(tuner.on_sample(at(400), sample(20 * MIB)), None);
        assert_eq!(tuner.on_sample(at(600), sample(36 * MIB)), None);
        // Two in a row.
        assert_eq!(tuner.on_sample(at(800), sample(52 * MIB)), Some(both(16 * MIB, 8 * MIB)));
    }

    /// No round trip measured yet: nothing decided, however busy the connection.
    #[test]
    fn no_decision_without_a_round_trip() {
        let mut tuner = WindowTuner::new(8 * MIB, 32 * MIB);
        let t0 = Instant::now();
        for s in 0..10u64 {
            let busy =
                Sample { sent: s << 30, received: s << 30, lost: 0, min_rtt: Duration::ZERO };
            assert_eq!(tuner.on_sample(t0 + Duration::from_secs(s), busy), None);
        }
        assert_eq!(tuner.windows(), both(8 * MIB, 8 * MIB));
    }

    /// A cap at or below the start: fixed.
    #[test]
    fn a_cap_below_the_start_means_fixed() {
        let mut run = Run::new(100 * MS, MIB);
        assert!(run.tuner.at_cap());
        assert_eq!(run.feed(path(125_000_000, 100 * MS), 5), Vec::new());
    }
}
