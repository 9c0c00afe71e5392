//! Sources: the keys rate limits and connection counts apply to, and their token buckets.

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use super::{after, Source};

/// The rate-limit and connection-count key of an address: itself (IPv4), or its /64 (IPv6).
pub(crate) fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// The time one token takes to come back, or `None` when the rate is unlimited.
fn token_period(rate: u32) -> Option<Duration> {
    (rate > 0).then(|| Duration::from_secs(60) / rate)
}

/// Adds the tokens earned since the last refill.
pub(super) fn refill(s: &mut Source, now: Instant, rate: u32) {
    let Some(period) = token_period(rate) else { return };
    let elapsed = now.saturating_duration_since(s.refilled_at);
    let earned = elapsed.as_nanos() / period.as_nanos().max(1);
    let missing = rate.saturating_sub(s.tokens);
    if earned >= u128::from(missing) {
        s.tokens = rate;
        s.refilled_at = now;
    } else {
        // `earned < missing ≤ u32::MAX`, and `period * earned ≤ elapsed`.
        let earned = earned as u32;
        s.tokens += earned;
        s.refilled_at = after(s.refilled_at, period.saturating_mul(earned));
    }
}

/// When the bucket will be full again, or `None` when the rate is unlimited.
pub(super) fn full_at(s: &Source, rate: u32) -> Option<Instant> {
    let period = token_period(rate)?;
    Some(after(s.refilled_at, period.saturating_mul(rate.saturating_sub(s.tokens))))
}
