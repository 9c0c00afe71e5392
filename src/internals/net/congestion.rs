//! Congestion control that tells random loss from congestion: quinn's CUBIC, with the loss
//! events it would back off for filtered.
//!
//! CUBIC (like every loss-based controller) takes each lost packet for a full queue. On a long
//! path that also loses packets at random (a wide-area link with 0.1 % loss, Wi-Fi), it backs
//! off every round trip and never grows: 1 % of a 1 Gbit/s, 100 ms link at 0.1 % loss
//! (`docs/benchmarks.md`, "Long fat link"). quinn's BBR ignores random loss but, as of quinn
//! 0.11, keeps growing its window while flow control holds the connection back, and overfills
//! the queues of slower links.
//!
//! [`Tolerant`] keeps CUBIC and passes it a loss only when the loss looks like congestion
//! ([`LossFilter`]):
//!
//! - the path is queueing: the smoothed round trip is above the smallest one seen by a quarter
//!   of it and at least [`QUEUE_SLACK`] (a filling drop-tail queue delays packets long before it
//!   drops them);
//! - or the loss is not rare: more than [`LOSS_TOLERANCE`] of the bytes sent over the last two
//!   round trips, and at least [`MIN_LOSS_BYTES`] (a policer, or a queue too short to show up
//!   as delay, drops a growing share as the window grows; one or two packets lost among the
//!   first few dozen of a connection are chance, not a rate, and backing off for them leaves
//!   CUBIC crawling up from a window of a few packets for half a minute on a long path);
//! - or quinn declares persistent congestion, or the peer marked packets with ECN.
//!
//! Isolated losses on an empty path are only retransmitted. Everything else (slow start, the
//! cubic growth, recovery) is quinn's CUBIC unchanged.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};
use quinn_proto::RttEstimator;

/// Share of the bytes sent (over the last two round trips) that may be lost before a loss
/// counts as congestion even without queueing delay.
pub const LOSS_TOLERANCE: f64 = 0.02;
/// Fewest bytes lost over the last two round trips that make a loss rate: three packets of
/// QUIC's smallest size (more than two of any size up to 1,800 bytes).
pub const MIN_LOSS_BYTES: u64 = 3 * 1200;
/// Smallest rise of the smoothed round trip over the smallest one that counts as queueing.
pub const QUEUE_SLACK: Duration = Duration::from_millis(2);
/// Shortest loss-accounting epoch, for paths whose round trip is tiny (loopback).
const MIN_EPOCH: Duration = Duration::from_millis(10);

/// Builds [`Tolerant`] controllers around CUBIC with quinn's default settings.
#[derive(Debug, Default)]
pub struct TolerantConfig {
    cubic: Arc<CubicConfig>,
}

impl ControllerFactory for TolerantConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Tolerant {
            inner: self.cubic.clone().build(now, current_mtu),
            filter: LossFilter::new(now),
        })
    }
}

/// quinn's CUBIC behind a [`LossFilter`] (see the module documentation).
pub struct Tolerant {
    inner: Box<dyn Controller>,
    filter: LossFilter,
}

impl std::fmt::Debug for Tolerant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tolerant").field("filter", &self.filter).finish_non_exhaustive()
    }
}

impl Controller for Tolerant {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.filter.sent(now, bytes);
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.filter.rtt(rtt.get(), rtt.min());
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner.on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        // ECN marks come with no lost bytes: an explicit signal, always passed on.
        let congestion = is_persistent_congestion || lost_bytes == 0;
        if self.filter.lost(now, lost_bytes) || congestion {
            self.inner.on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Tolerant { inner: self.inner.clone_box(), filter: self.filter.clone() })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Decides whether a loss is congestion (sans-IO: time and round trips are passed in).
#[derive(Debug, Clone)]
pub struct LossFilter {
    /// Bytes sent and lost in the current accounting epoch and in the one before.
    sent: [u64; 2],
    lost: [u64; 2],
    epoch_start: Instant,
    /// The smoothed and the smallest round trip, as last reported.
    srtt: Duration,
    min_rtt: Duration,
}

impl LossFilter {
    /// A filter that has seen nothing yet.
    pub fn new(now: Instant) -> LossFilter {
        LossFilter {
            sent: [0; 2],
            lost: [0; 2],
            epoch_start: now,
            srtt: Duration::ZERO,
            min_rtt: Duration::ZERO,
        }
    }

    /// `bytes` were sent at `now`.
    pub fn sent(&mut self, now: Instant, bytes: u64) {
        self.roll(now);
        self.sent[1] += bytes;
    }

    /// The latest round-trip estimates: smoothed, and the smallest seen.
    pub fn rtt(&mut self, srtt: Duration, min_rtt: Duration) {
        self.srtt = srtt;
        self.min_rtt = min_rtt;
    }

    /// `bytes` were declared lost at `now`; whether that is congestion.
    pub fn lost(&mut self, now: Instant, bytes: u64) -> bool {
        self.roll(now);
        self.lost[1] += bytes;
        self.queueing() || self.lossy()
    }

    /// Whether the path holds a standing queue: the smoothed round trip is clearly above the
    /// smallest one.
    fn queueing(&self) -> bool {
        let slack = (self.min_rtt / 4).max(QUEUE_SLACK);
        self.min_rtt.is_zero() || self.srtt > self.min_rtt + slack
    }

    /// Whether more than [`LOSS_TOLERANCE`] of the bytes sent over this epoch and the one
    /// before were lost, and at least [`MIN_LOSS_BYTES`].
    fn lossy(&self) -> bool {
        let sent = self.sent[0] + self.sent[1];
        let lost = self.lost[0] + self.lost[1];
        lost >= MIN_LOSS_BYTES && lost as f64 > sent as f64 * LOSS_TOLERANCE
    }

    /// Starts a new epoch once a round trip (at least [`MIN_EPOCH`]) has passed.
    fn roll(&mut self, now: Instant) {
        let epoch = self.srtt.max(MIN_EPOCH);
        if now.saturating_duration_since(self.epoch_start) >= epoch {
            self.sent = [self.sent[1], 0];
            self.lost = [self.lost[1], 0];
            self.epoch_start = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A path with a 100 ms round trip carrying 12.5 MB per round trip, losing `lost` bytes
    /// per round trip; what the filter makes of the losses at `srtt`.
    fn judge(srtt: Duration, lost_per_rtt: u64, rounds: u32) -> Vec<bool> {
        let t0 = Instant::now();
        let mut f = LossFilter::new(t0);
        let mut verdicts = Vec::new();
        for r in 0..rounds {
            let start = t0 + 100 * MS * r;
            f.rtt(srtt, 100 * MS);
            for i in 0..100 {
                f.sent(start + i * MS, 125_000);
            }
            if lost_per_rtt > 0 {
                verdicts.push(f.lost(start + 99 * MS, lost_per_rtt));
            }
        }
        verdicts
    }

    #[test]
    fn random_loss_on_an_empty_path_is_not_congestion() {
        // 0.1 % of 12.5 MB per round trip, the round trip at its floor.
        assert!(judge(100 * MS, 12_500, 20).iter().all(|c| !c));
        // 1 % too.
        assert!(judge(101 * MS, 125_000, 20).iter().all(|c| !c));
    }

    #[test]
    fn loss_with_a_standing_queue_is_congestion() {
        // A drop-tail queue adding 40 ms: every loss counts.
        assert!(judge(140 * MS, 1_500, 20).iter().all(|c| *c));
    }

    #[test]
    fn heavy_loss_is_congestion_even_without_delay() {
        // A policer dropping 5 %: no queue to see, but far more than random loss.
        assert!(judge(100 * MS, 625_000, 20).iter().skip(1).all(|c| *c));
    }

    #[test]
    fn without_a_round_trip_yet_every_loss_counts() {
        let t0 = Instant::now();
        let mut f = LossFilter::new(t0);
        f.sent(t0, 10_000);
        assert!(f.lost(t0, 1_200), "no estimate: plain CUBIC");
    }

    #[test]
    fn a_packet_lost_early_is_chance_not_a_rate() {
        // Slow start's first round trips on an empty 100 ms path: ten packets, then twenty.
        // One of them lost is 10 % of what was sent, but one packet makes no rate.
        let t0 = Instant::now();
        let mut f = LossFilter::new(t0);
        f.rtt(100 * MS, 100 * MS);
        f.sent(t0, 12_000);
        assert!(!f.lost(t0 + 100 * MS, 1_200));
        f.sent(t0 + 100 * MS, 24_000);
        assert!(!f.lost(t0 + 150 * MS, 1_200), "two packets of 36 kB");
        // A third in the same two round trips (9 %): a policer, not chance.
        assert!(f.lost(t0 + 180 * MS, 1_200));
    }

    #[test]
    fn short_round_trips_need_a_clear_rise() {
        // Loopback: 0.2 ms floor; 1 ms of scheduling noise is not a queue, 5 ms is.
        let t0 = Instant::now();
        let mut f = LossFilter::new(t0);
        f.rtt(MS, MS / 5);
        f.sent(t0, 100_000_000);
        assert!(!f.lost(t0, 1_200));
        f.rtt(5 * MS, MS / 5);
        assert!(f.lost(t0, 1_200));
    }
}
