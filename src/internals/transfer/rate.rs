//! `--limit-rate`: a byte rate shared by one side's lanes.
//!
//! The sender waits before it hands a record to QUIC, the receiver before it reads the next
//! piece of a stream (QUIC's flow control then slows the sender down to it), so either side
//! can hold the transfer to the rate, counted in bytes on the data streams (file data after
//! compression, with the records' few bytes of framing). The limit is a generic cell rate
//! ([`Gcra`]): it starts with no credit, so from the start of the transfer the rate is never
//! exceeded; a pause earns a burst of at most [`BURST`] of the rate, so over any span the
//! rate is exceeded by at most that much.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How much credit may gather while nothing is sent: 50 ms of the rate.
pub const BURST: Duration = Duration::from_millis(50);

/// A byte rate several lanes share.
#[derive(Debug)]
pub struct RateLimit {
    gcra: Mutex<Gcra>,
}

impl RateLimit {
    /// At most `bytes_per_second` (at least 1).
    pub fn new(bytes_per_second: u64) -> RateLimit {
        RateLimit { gcra: Mutex::new(Gcra::new(bytes_per_second, Instant::now())) }
    }

    /// Waits until `bytes` more may go.
    pub async fn take(&self, bytes: usize) {
        let wait = {
            let mut gcra = self.gcra.lock().unwrap_or_else(PoisonError::into_inner);
            gcra.reserve(Instant::now(), bytes as u64)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The sans-IO rule: a theoretical arrival time that moves on by `bytes / rate` per
/// reservation (from the clock, when it lags behind it); what it runs ahead of the clock
/// by more than [`BURST`] is waited for.
#[derive(Debug)]
pub struct Gcra {
    rate: u64,
    /// When everything reserved so far has been paid for.
    tat: Instant,
}

impl Gcra {
    /// At most `rate` bytes per second, starting at `now` with no credit: from the start, what
    /// has gone never exceeds the rate times the time since.
    pub fn new(rate: u64, now: Instant) -> Gcra {
        Gcra { rate: rate.max(1), tat: now + BURST }
    }

    /// Reserves `bytes` at `now`: how long to wait before sending them.
    pub fn reserve(&mut self, now: Instant, bytes: u64) -> Duration {
        let start = self.tat.max(now);
        let cost = Duration::from_secs_f64(bytes as f64 / self.rate as f64);
        self.tat = start + cost;
        self.tat.saturating_duration_since(now + BURST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the sizes and the clock, what has gone by any time stays within the rate
    /// times the time since the start plus the burst.
    #[test]
    fn the_rate_holds_over_any_span_and_a_burst_goes_at_once() {
        let t0 = Instant::now();
        let rate = 1_000_000u64;
        let mut g = Gcra::new(rate, t0);
        // No credit at the start: 50,000 bytes at 1 MB/s wait their 50 ms.
        assert_eq!(g.reserve(t0, 50_000), Duration::from_millis(50));
        // Sent as soon as allowed, a stream of records never runs ahead of the rate.
        let mut g = Gcra::new(rate, t0);
        let (mut now, mut sent) = (t0, 0u64);
        for i in 0..10_000u64 {
            let size = 1 + (i * 7919) % 70_000;
            now += g.reserve(now, size);
            sent += size;
            let allowed = (now - t0).as_secs_f64() * rate as f64;
            assert!(sent as f64 <= allowed + 1.0, "{sent} bytes by {:?}", now - t0);
        }
        // And it does not fall behind: the whole took what the bytes cost.
        let took = (now - t0).as_secs_f64();
        let cost = sent as f64 / rate as f64;
        assert!((cost - took).abs() < 0.01, "took {took}, cost {cost}");
        // Idle time earns a burst, not more.
        let later = now + Duration::from_secs(10);
        assert_eq!(g.reserve(later, 50_000), Duration::ZERO);
        assert!(g.reserve(later, 50_000) >= Duration::from_millis(49));
    }
}
