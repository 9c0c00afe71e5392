//! The relay's rate limits, sans-IO (time is passed in): token buckets that police (a packet
//! over the rate is dropped, QUIC's congestion control backs off), and a fair share of the
//! node's total rate per source.
//!
//! A packet passes when its session's bucket (one per relay and direction), its source's share
//! and the node's total all have room; only then is anything taken from them. The source's
//! share is the total rate divided by the sources that relayed in the last
//! [`ACTIVE_WINDOW`]: a source holding many relays gets one share, like a source holding one,
//! so it cannot starve the others.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A source counts as active this long after its last packet.
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(1);
/// Smallest burst a bucket allows, bytes: a full batch of packets.
const MIN_BURST: f64 = 256.0 * 1024.0;
/// Burst, in seconds at the bucket's rate.
const BURST_SECS: f64 = 0.1;

/// A policing token bucket: `rate` bytes per second, a burst of a tenth of a second (at least
/// [`MIN_BURST`]).
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket for `rate` bytes per second.
    pub fn new(rate: u64, now: Instant) -> Bucket {
        let burst = (rate as f64 * BURST_SECS).max(MIN_BURST);
        Bucket { rate: rate as f64, burst, tokens: burst, last: now }
    }

    /// Changes the rate (keeping what the bucket holds, up to the new burst).
    fn set_rate(&mut self, rate: u64, now: Instant) {
        self.refill(now);
        self.rate = rate as f64;
        self.burst = (self.rate * BURST_SECS).max(MIN_BURST);
        self.tokens = self.tokens.min(self.burst);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// Whether `n` bytes fit now (nothing is taken).
    pub fn has(&mut self, n: u64, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= n as f64
    }

    /// Takes `n` bytes (call after [`Bucket::has`] said yes).
    pub fn take(&mut self, n: u64) {
        self.tokens -= n as f64;
    }
}

#[derive(Debug)]
struct Share {
    bucket: Bucket,
    seen: Instant,
}

/// The node's total rate, shared fairly between sources. A rate of 0 is unlimited.
#[derive(Debug)]
pub struct Fair {
    rate: u64,
    total: Option<Bucket>,
    sources: HashMap<IpAddr, Share>,
    /// When idle sources were last forgotten.
    pruned: Instant,
}

impl Fair {
    /// Shares of `rate` bytes per second over all sources (0: unlimited).
    pub fn new(rate: u64, now: Instant) -> Fair {
        let total = (rate > 0).then(|| Bucket::new(rate, now));
        Fair { rate, total, sources: HashMap::new(), pruned: now }
    }

    /// Sources that relayed within [`ACTIVE_WINDOW`] of `now`.
    pub fn active(&self, now: Instant) -> usize {
        self.sources
            .values()
            .filter(|s| now.saturating_duration_since(s.seen) < ACTIVE_WINDOW)
            .count()
    }

    /// Whether `n` bytes from `source` pass, with `session` (the relay's own bucket, if it
    /// has a rate) in the same decision; takes from all of them if so.
    pub fn allow(
        &mut self,
        source: IpAddr,
        n: u64,
        session: Option<&mut Bucket>,
        now: Instant,
    ) -> bool {
        if let Some(s) = &session {
            // Checked on a clone: nothing is taken unless everything has room.
            let mut probe = (*s).clone();
            if !probe.has(n, now) {
                return false;
            }
        }
        if self.rate == 0 {
            if let Some(s) = session {
                s.has(n, now);
                s.take(n);
            }
            return true;
        }
        if now.saturating_duration_since(self.pruned) >= ACTIVE_WINDOW {
            self.sources.retain(|_, s| now.saturating_duration_since(s.seen) < ACTIVE_WINDOW);
            self.pruned = now;
        }
        let fresh = !self.sources.contains_key(&source);
        let active = self.active(now) + usize::from(fresh);
        let share = (self.rate / active.max(1) as u64).max(1);
        let entry = self
            .sources
            .entry(source)
            .or_insert_with(|| Share { bucket: Bucket::new(share, now), seen: now });
        entry.seen = now;
        entry.bucket.set_rate(share, now);
        let Some(total) = self.total.as_mut() else { return true };
        if !entry.bucket.has(n, now) || !total.has(n, now) {
            return false;
        }
        entry.bucket.take(n);
        total.take(n);
        if let Some(s) = session {
            s.has(n, now);
            s.take(n);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_polices_to_its_rate_after_its_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10_000_000, t0);
        // The burst: a tenth of a second's worth.
        assert!(b.has(1_000_000, t0));
        b.take(1_000_000);
        assert!(!b.has(1, t0), "empty after the burst");
        let later = t0 + Duration::from_millis(50);
        assert!(b.has(500_000, later));
        assert!(!b.has(500_001, later));
    }

    /// Offered far more than the total, every session of every source sending as fast as it
    /// can: what passes in ten (virtual) seconds is the total rate, split evenly between the
    /// two sources although one holds eight relays and the other one.
    #[test]
    fn one_source_with_many_relays_does_not_starve_another() {
        let rate = 10_000_000u64;
        let t0 = Instant::now();
        let mut fair = Fair::new(rate, t0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "198.51.100.7".parse().unwrap();
        // A holds eight relays, B one; every one offers a 1,400-byte packet each 100 µs
        // (14 MB/s each, 126 MB/s in all against 10 MB/s).
        let senders: Vec<IpAddr> = std::iter::repeat_n(a, 8).chain([b]).collect();
        let mut passed: HashMap<IpAddr, u64> = HashMap::new();
        let step = Duration::from_micros(100);
        let mut now = t0;
        for _ in 0..100_000 {
            now += step;
            for &s in &senders {
                if fair.allow(s, 1400, None, now) {
                    *passed.entry(s).or_default() += 1400;
                }
            }
        }
        let secs = (now - t0).as_secs_f64();
        let (got_a, got_b) = (passed[&a] as f64 / secs, passed[&b] as f64 / secs);
        assert!((got_a + got_b) <= rate as f64 * 1.05, "the total holds: {got_a} + {got_b}");
        assert!(got_b >= rate as f64 * 0.45, "B keeps about half: {got_b} of {rate}");
        assert!(got_a >= rate as f64 * 0.45, "A gets the other half: {got_a} of {rate}");
    }

    #[test]
    fn the_session_bucket_and_the_total_decide_together() {
        let t0 = Instant::now();
        let mut fair = Fair::new(0, t0);
        let mut session = Bucket::new(1_000_000, t0);
        let src: IpAddr = "192.0.2.1".parse().unwrap();
        // Unlimited total: only the session's burst (256 KiB minimum) counts.
        let mut n = 0u64;
        while fair.allow(src, 1000, Some(&mut session), t0) {
            n += 1000;
        }
        assert_eq!(n, 262_000);
        // A limited total refuses without draining the session bucket.
        let mut fair = Fair::new(1_000_000, t0);
        let mut session = Bucket::new(100_000_000, t0);
        while fair.allow(src, 1000, Some(&mut session), t0) {}
        assert!(session.has(9_000_000, t0), "the session kept what the total refused");
    }

    #[test]
    fn idle_sources_are_forgotten() {
        let t0 = Instant::now();
        let mut fair = Fair::new(1_000_000, t0);
        for i in 0..100u8 {
            let ip = IpAddr::from([10, 0, 0, i]);
            assert!(fair.allow(ip, 10, None, t0));
        }
        assert_eq!(fair.active(t0), 100);
        let later = t0 + ACTIVE_WINDOW * 2;
        assert!(fair.allow(IpAddr::from([10, 0, 1, 1]), 10, None, later));
        assert_eq!(fair.sources.len(), 1, "only the source seen since");
    }
}
