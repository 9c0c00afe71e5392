//! Sources: the keys that rate limits and connection counts apply to, and their token
//! buckets.
//!
//! An IPv4 address is one source. An IPv6 address is counted at three levels at once: its
//! /64 (one host or LAN), its /56 and its /48 (what one customer or site usually gets), with
//! [`V6_LEVELS`] times the per-source limits: one ISP customer cannot fill the node from the
//! 256 /64s of its /56, nor one tunnel-broker /48 from its 65,536. A request must fit every
//! level it belongs to. IPv4 has no /24 level: carrier-grade NAT and shared hosting put
//! unrelated people in one /24, and a pool of IPv4 addresses is what the global limits
//! ([`super::Limits::max_closed`] counting only joined nameplates, and
//! [`super::Limits::total_claims_per_minute`]) are for.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use super::{after, Limits};

/// A source that spent a token this recently gets no request past a full
/// [`Limits::total_claims_per_minute`]; one that did not gets one.
pub const FAIR_WINDOW: Duration = Duration::from_secs(60);

/// IPv6 levels: prefix length and the multiple of the per-source limits it gets.
pub const V6_LEVELS: [(u8, u32); 3] = [(64, 1), (56, 4), (48, 16)];

/// One level of the hierarchy an address belongs to: a prefix and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    prefix: IpAddr,
    len: u8,
}

impl SourceKey {
    /// The per-source limits this level gets, as a multiple of a single source's.
    pub fn multiple(self) -> u32 {
        V6_LEVELS
            .iter()
            .find(|&&(len, _)| len == self.len && self.prefix.is_ipv6())
            .map_or(1, |l| l.1)
    }

    /// Whether this is the narrowest level (an IPv4 address or an IPv6 /64).
    pub fn is_leaf(self) -> bool {
        self.prefix.is_ipv4() || self.len == V6_LEVELS[0].0
    }

    /// How to name this level to the person refused.
    pub fn describe(self) -> String {
        if self.is_leaf() {
            "your address".to_owned()
        } else {
            format!("your network ({}/{})", self.prefix, self.len)
        }
    }
}

/// The levels of `ip`, narrowest first: its IPv4 address (IPv4-mapped IPv6 included), or its
/// IPv6 /64, /56 and /48.
pub fn keys_of(ip: IpAddr) -> Vec<SourceKey> {
    match ip.to_canonical() {
        IpAddr::V6(v6) => V6_LEVELS
            .iter()
            .map(|&(len, _)| {
                let mask = !((1u128 << (128 - u32::from(len))) - 1);
                SourceKey { prefix: IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)), len }
            })
            .collect(),
        v4 => vec![SourceKey { prefix: v4, len: 32 }],
    }
}

/// Connections (or relay streams) counted per source at every level: at most `max` per
/// leaf, `max ×` [`SourceKey::multiple`] per wider level (the server's connection and relay
/// slots).
#[cfg_attr(not(feature = "server"), allow(dead_code))]
#[derive(Debug, Default)]
pub struct Counts(HashMap<SourceKey, usize>);

#[cfg_attr(not(feature = "server"), allow(dead_code))]
impl Counts {
    /// Counts one more for `ip` if every level has room; the keys to [`Counts::release`]
    /// later, or `None` (nothing counted).
    pub fn take(&mut self, ip: IpAddr, max: usize) -> Option<Vec<SourceKey>> {
        let keys = keys_of(ip);
        let full = |k: &SourceKey| {
            let cap = max.saturating_mul(k.multiple() as usize);
            self.0.get(k).copied().unwrap_or(0) >= cap
        };
        if keys.iter().any(full) {
            return None;
        }
        for k in &keys {
            *self.0.entry(*k).or_insert(0) += 1;
        }
        Some(keys)
    }

    /// Gives back what [`Counts::take`] counted.
    pub fn release(&mut self, keys: &[SourceKey]) {
        for k in keys {
            if let Some(n) = self.0.get_mut(k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.0.remove(k);
                }
            }
        }
    }

    /// Levels with something counted.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// Why [`Sources::spend`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// This level of the requester's sources has no tokens left.
    Rate {
        /// The level, as [`SourceKey::describe`] puts it.
        level: String,
        /// Its tokens a minute.
        per_minute: u32,
    },
    /// The node-wide ceiling is reached and the requester had its share of the last minute.
    Ceiling,
}

/// The rate limits and client counts of every source: see the module documentation.
#[derive(Debug)]
pub struct Sources {
    per_minute: u32,
    clients_per_ip: usize,
    total_per_minute: u32,
    max_idle: usize,
    entries: HashMap<SourceKey, Source>,
    /// Entries without clients, by the instant they may be forgotten.
    idle: BTreeSet<(Instant, SourceKey)>,
    /// The node-wide bucket (created at the first request).
    global: Option<Bucket>,
}

#[derive(Debug)]
struct Source {
    clients: usize,
    bucket: Bucket,
    /// The last time a request of this source was admitted (leaves only).
    last_spent: Option<Instant>,
    /// The key of this entry in `idle`, while it has no clients.
    idle_key: Option<Instant>,
}

impl Sources {
    /// No sources yet, with `limits`' rates and caps.
    pub fn new(limits: &Limits) -> Sources {
        Sources {
            per_minute: limits.claims_per_minute,
            clients_per_ip: limits.clients_per_ip,
            total_per_minute: limits.total_claims_per_minute,
            max_idle: limits.max_idle_sources,
            entries: HashMap::new(),
            idle: BTreeSet::new(),
            global: None,
        }
    }

    /// Counts a client from `ip` at every level; `Err` (nothing counted) when a level already
    /// has its [`Limits::clients_per_ip`] × [`SourceKey::multiple`] clients.
    pub fn connect(&mut self, now: Instant, ip: IpAddr) -> Result<(), SourceKey> {
        let keys = keys_of(ip);
        for k in &keys {
            let cap = self.clients_per_ip.saturating_mul(k.multiple() as usize);
            if self.entries.get(k).map_or(0, |s| s.clients) >= cap {
                return Err(*k);
            }
        }
        for k in keys {
            let size = self.per_minute.saturating_mul(k.multiple());
            let s = self.entries.entry(k).or_insert_with(|| Source {
                clients: 0,
                bucket: Bucket::full(size, now),
                last_spent: None,
                idle_key: None,
            });
            if let Some(at) = s.idle_key.take() {
                self.idle.remove(&(at, k));
            }
            s.clients += 1;
        }
        Ok(())
    }

    /// A client from `ip` is gone. An entry left without clients is kept until its bucket is
    /// full and its last request is [`FAIR_WINDOW`] old (so that reconnecting restores
    /// nothing), at most [`Limits::max_idle_sources`] of them.
    pub fn disconnect(&mut self, now: Instant, ip: IpAddr) {
        for k in keys_of(ip) {
            let Some(s) = self.entries.get_mut(&k) else { continue };
            s.clients = s.clients.saturating_sub(1);
            if s.clients > 0 {
                continue;
            }
            let size = self.per_minute.saturating_mul(k.multiple());
            s.bucket.refill(now, size);
            let full = s.bucket.full_at(size).unwrap_or(now);
            let fair = s.last_spent.map_or(now, |t| after(t, FAIR_WINDOW));
            let forget = full.max(fair);
            if forget > now {
                s.idle_key = Some(forget);
                self.idle.insert((forget, k));
            } else {
                self.entries.remove(&k);
            }
        }
        while self.idle.len() > self.max_idle {
            let Some((_, k)) = self.idle.pop_first() else { break };
            self.entries.remove(&k);
        }
    }

    /// Spends `cost` tokens for a request from `ip` at every level, and from the node-wide
    /// ceiling; nothing is spent when refused. A level smaller than the cost lets a request
    /// through when it is full. When the ceiling is spent, a source that made no request in
    /// the last [`FAIR_WINDOW`] still gets one through: however many sources exhaust it, each
    /// other one still gets a request a minute.
    pub fn spend(&mut self, now: Instant, ip: IpAddr, cost: u32) -> Result<(), Refusal> {
        let keys = keys_of(ip);
        if self.per_minute > 0 {
            for k in &keys {
                let size = self.per_minute.saturating_mul(k.multiple());
                let Some(s) = self.entries.get_mut(k) else { continue };
                s.bucket.refill(now, size);
                if s.bucket.tokens < cost.min(size) {
                    return Err(Refusal::Rate { level: k.describe(), per_minute: size });
                }
            }
        }
        let recent = keys
            .first()
            .and_then(|k| self.entries.get(k))
            .and_then(|s| s.last_spent)
            .is_some_and(|t| now.saturating_duration_since(t) < FAIR_WINDOW);
        let total = self.total_per_minute;
        if total > 0 {
            let global = self.global.get_or_insert_with(|| Bucket::full(total, now));
            global.refill(now, total);
            let cost = cost.min(total);
            if global.tokens >= cost {
                global.tokens -= cost;
            } else if recent {
                return Err(Refusal::Ceiling);
            } else {
                global.tokens = 0;
            }
        }
        for k in &keys {
            let size = self.per_minute.saturating_mul(k.multiple());
            let Some(s) = self.entries.get_mut(k) else { continue };
            if self.per_minute > 0 {
                s.bucket.tokens -= cost.min(size);
            }
            if k.is_leaf() {
                s.last_spent = Some(now);
            }
        }
        Ok(())
    }

    /// The next instant an idle entry may be forgotten.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.idle.first().map(|&(at, _)| at)
    }

    /// Forgets the idle entries due at `now`.
    pub fn advance(&mut self, now: Instant) {
        while let Some(&(at, k)) = self.idle.first() {
            if at > now {
                break;
            }
            self.idle.remove(&(at, k));
            self.entries.remove(&k);
        }
    }

    /// Entries kept (for tests and invariants).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Clients counted at the leaf level.
    #[cfg(test)]
    pub fn leaf_clients(&self) -> usize {
        self.entries.iter().filter(|(k, _)| k.is_leaf()).map(|(_, s)| s.clients).sum()
    }

    /// The tokens left at the leaf level of `ip`, if it has an entry.
    #[cfg(test)]
    pub fn tokens(&self, ip: IpAddr) -> Option<u32> {
        keys_of(ip).first().and_then(|k| self.entries.get(k)).map(|s| s.bucket.tokens)
    }

    /// Checks the bookkeeping (tests).
    #[cfg(test)]
    pub fn check(&self) {
        for (k, s) in &self.entries {
            assert_eq!(s.idle_key.is_some(), s.clients == 0);
            if let Some(at) = s.idle_key {
                assert!(self.idle.contains(&(at, *k)));
            }
            assert!(s.bucket.tokens <= self.per_minute.saturating_mul(k.multiple()));
        }
        assert_eq!(self.idle.len(), self.entries.values().filter(|s| s.clients == 0).count());
        assert!(self.idle.len() <= self.max_idle);
    }
}

/// A token bucket: whole tokens, and the instant up to which refills are counted.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    /// Tokens available.
    pub tokens: u32,
    refilled_at: Instant,
}

impl Bucket {
    /// A full bucket of `size`.
    pub fn full(size: u32, now: Instant) -> Bucket {
        Bucket { tokens: size, refilled_at: now }
    }

    /// Adds the tokens earned since the last refill at `per_minute` (also the bucket's size).
    pub fn refill(&mut self, now: Instant, per_minute: u32) {
        let Some(period) = token_period(per_minute) else { return };
        let elapsed = now.saturating_duration_since(self.refilled_at);
        let earned = elapsed.as_nanos() / period.as_nanos().max(1);
        let missing = per_minute.saturating_sub(self.tokens);
        if earned >= u128::from(missing) {
            self.tokens = per_minute;
            self.refilled_at = now;
        } else {
            // `earned < missing ≤ u32::MAX`, and `period * earned ≤ elapsed`.
            let earned = earned as u32;
            self.tokens += earned;
            self.refilled_at = after(self.refilled_at, period.saturating_mul(earned));
        }
    }

    /// When the bucket will be full again at `per_minute`, or `None` when unlimited.
    pub fn full_at(&self, per_minute: u32) -> Option<Instant> {
        let period = token_period(per_minute)?;
        let missing = per_minute.saturating_sub(self.tokens);
        Some(after(self.refilled_at, period.saturating_mul(missing)))
    }
}

/// The time one token takes to come back, or `None` when the rate is unlimited.
fn token_period(per_minute: u32) -> Option<Duration> {
    (per_minute > 0).then(|| Duration::from_secs(60) / per_minute)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn levels_of_an_address() {
        let keys = keys_of(v6("2001:db8:aa:bbcc:1:2:3:4"));
        let shown: Vec<String> = keys.iter().map(|k| format!("{}/{}", k.prefix, k.len)).collect();
        assert_eq!(shown, ["2001:db8:aa:bbcc::/64", "2001:db8:aa:bb00::/56", "2001:db8:aa::/48"]);
        assert_eq!(keys.iter().map(|k| k.multiple()).collect::<Vec<_>>(), [1, 4, 16]);
        // A /64 whose prefix happens to equal a /56's is still another key.
        assert_ne!(keys_of(v6("2001:db8:aa:bb00::1"))[0], keys[1]);
        let v4 = keys_of(v6("::ffff:198.51.100.7"));
        assert_eq!(v4, [SourceKey { prefix: "198.51.100.7".parse().unwrap(), len: 32 }]);
        assert!(v4[0].is_leaf() && v4[0].multiple() == 1);
    }

    #[test]
    fn counts_apply_at_every_level() {
        let mut c = Counts::default();
        // 2 per /64, so 8 per /56 and 32 per /48.
        let mut held = Vec::new();
        for i in 0..4u16 {
            for _ in 0..2 {
                held.push(c.take(v6(&format!("2001:db8:0:{i}::1")), 2).unwrap());
            }
        }
        assert!(c.take(v6("2001:db8:0:9::1"), 2).is_none(), "the /56 is full");
        assert!(c.take(v6("2001:db8:0:100::1"), 2).is_some(), "another /56 of the /48");
        assert!(c.take(v6("2001:db8:0:0::2"), 2).is_none(), "the /64 is full");
        c.release(&held.pop().unwrap());
        assert!(c.take(v6("2001:db8:0:9::1"), 2).is_some());
        for keys in held.drain(..) {
            c.release(&keys);
        }
        assert_eq!(c.len(), 5);
    }
}
