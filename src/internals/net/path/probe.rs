//! Probes: the pings and pongs that find the direct path and watch it (see the parent
//! module).
//!
//! A probe is `0x00 ‖ kind ‖ id (16) ‖ tag (16)`; the tag is an HMAC over kind and id under the
//! sending role's probe key. A ping's id starts with the sender's ping counter (`u64 BE`,
//! from 1) and ends with 8 random bytes; a pong repeats its ping's id.
//!
//! Defences against someone who captured probes (`docs/security.md` §12):
//! - a ping is answered, and its source learnt, only the first time its counter is seen, and
//!   only while the counter is within [`REPLAY_WINDOW`] of the highest seen: a captured ping
//!   replayed from elsewhere is ignored;
//! - a pong counts only from the address its ping went to, once;
//! - addresses learnt from pings (peer-reflexive) are added at most [`LEARN_BURST`] at a time,
//!   refilled one every [`LEARN_EVERY`], and one that never answered is dropped after
//!   [`LEARNT_GIVE_UP`].

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use quinn::udp::Transmit;
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Shared, PROBE};
use crate::crypto::{Keys, PROBE_TAG_LEN};

pub(super) const PING: u8 = 1;
pub(super) const PONG: u8 = 2;
pub(super) const ID_LEN: usize = 16;
pub(super) const PROBE_LEN: usize = 2 + ID_LEN + PROBE_TAG_LEN;

/// How often candidates are pinged while the connection is being set up.
const PUNCH_INTERVAL: Duration = Duration::from_millis(200);
/// How long candidates are pinged at [`PUNCH_INTERVAL`].
const PUNCH_PHASE: Duration = Duration::from_secs(5);
/// How often the other candidates are pinged afterwards (a relayed transfer moves to the
/// direct path when one answers), for the first minute; then every [`LATE_INTERVAL`].
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
const LATE_INTERVAL: Duration = Duration::from_secs(5);
/// How often the direct path in use is pinged.
const PING_INTERVAL: Duration = Duration::from_millis(500);
/// The direct path is given up after this long without an answer.
pub const DEAD_AFTER: Duration = Duration::from_secs(3);
/// How long a probe waits for room in a full socket buffer before it is dropped.
const PROBE_SEND_WAIT: Duration = Duration::from_millis(250);
/// Addresses pinged at most (candidates, then addresses learnt from the peer's pings).
const MAX_TARGETS: usize = 48;
/// Addresses whose datagrams count as the peer's, at most.
const MAX_PEERS: usize = 64;
/// Pings awaiting their pong, at most.
const MAX_PENDING: usize = 512;
/// Ping counters this far below the highest one seen are refused as too old.
pub const REPLAY_WINDOW: u64 = 1024;
/// Addresses learnt from pings: at most this many at once ...
const LEARN_BURST: u32 = 4;
/// ... and one more each this long.
const LEARN_EVERY: Duration = Duration::from_millis(500);
/// An address learnt from a ping that never answered our pings is dropped after this long.
const LEARNT_GIVE_UP: Duration = Duration::from_secs(20);

/// The ping counters seen from the peer: the highest, and which of the [`REPLAY_WINDOW`]
/// below it (sans-IO).
#[derive(Debug, Default)]
pub(super) struct ReplayWindow {
    highest: u64,
    /// Bit `i` set: counter `highest - i` was seen.
    seen: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl ReplayWindow {
    /// Whether `counter` is fresh (never seen, not too old); marks it seen if so.
    pub(super) fn fresh(&mut self, counter: u64) -> bool {
        if counter == 0 {
            return false;
        }
        if counter > self.highest {
            self.shift(counter - self.highest);
            self.highest = counter;
            self.set(0);
            return true;
        }
        let age = self.highest - counter;
        if age >= REPLAY_WINDOW || self.get(age) {
            return false;
        }
        self.set(age);
        true
    }

    /// Ages every mark by `by` (bit `i` moves to `i + by`).
    fn shift(&mut self, by: u64) {
        let n = self.seen.len();
        if by >= REPLAY_WINDOW {
            self.seen = [0; (REPLAY_WINDOW / 64) as usize];
            return;
        }
        let (words, bits) = ((by / 64) as usize, (by % 64) as u32);
        for i in (0..n).rev() {
            let hi = i.checked_sub(words).map_or(0, |s| self.seen[s] << bits);
            let lo = match i.checked_sub(words + 1) {
                Some(s) if bits > 0 => self.seen[s] >> (64 - bits),
                _ => 0,
            };
            self.seen[i] = hi | lo;
        }
    }

    fn get(&self, age: u64) -> bool {
        self.seen[(age / 64) as usize] & (1 << (age % 64)) != 0
    }

    fn set(&mut self, age: u64) {
        self.seen[(age / 64) as usize] |= 1 << (age % 64);
    }
}

/// Drops the addresses learnt from pings that never answered ours within [`LEARNT_GIVE_UP`]
/// (the path in use stays whatever it is; the peer's own candidates stay).
fn drop_silent(targets: &mut Vec<Target>, current: Option<SocketAddr>, now: Instant) {
    targets.retain(|t| {
        let silent = t.answered.is_none()
            && t.learnt.is_some_and(|at| now.saturating_duration_since(at) >= LEARNT_GIVE_UP);
        if silent {
            tracing::debug!(addr = %t.addr, "forgot an address that never answered");
        }
        !silent || Some(t.addr) == current
    });
}

struct Target {
    addr: SocketAddr,
    next: Instant,
    answered: Option<Instant>,
    /// Learnt from a ping (not one of the peer's candidates), and when.
    learnt: Option<Instant>,
}

/// Pings the peer's addresses, answers its pings and keeps the direct path up to date.
pub(super) struct Prober {
    base: Arc<dyn AsyncUdpSocket>,
    /// Wakes a probe waiting for room in the socket buffer.
    poller: Pin<Box<dyn UdpPoller>>,
    shared: Arc<Shared>,
    keys: Keys,
    started: Instant,
    targets: Vec<Target>,
    /// Pings sent: (id, to).
    pending: VecDeque<([u8; ID_LEN], SocketAddr)>,
    current: Option<SocketAddr>,
    /// The last ping counter used.
    sent: u64,
    /// The peer's ping counters seen.
    replay: ReplayWindow,
    /// Addresses that may still be learnt now, and when the next one is earned.
    learn_tokens: u32,
    learn_refill: Instant,
}

impl Prober {
    pub(super) fn new(base: Arc<dyn AsyncUdpSocket>, shared: Arc<Shared>, keys: Keys) -> Prober {
        let now = Instant::now();
        Prober {
            poller: base.clone().create_io_poller(),
            base,
            shared,
            keys,
            started: now,
            targets: Vec::new(),
            pending: VecDeque::new(),
            current: None,
            sent: 0,
            replay: ReplayWindow::default(),
            learn_tokens: LEARN_BURST,
            learn_refill: now,
        }
    }
}

impl Prober {
    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
        candidates: Vec<SocketAddr>,
    ) {
        for addr in candidates {
            self.add_target(addr, false);
        }
        tracing::debug!(targets = self.targets.len(), "probing the peer's candidates");
        loop {
            let now = Instant::now();
            self.ping_due(now).await;
            self.check_current(now);
            drop_silent(&mut self.targets, self.current, now);
            let mut wake = self.targets.iter().map(|t| t.next).min().unwrap_or(now + LATE_INTERVAL);
            if let Some(dead) = self.current_deadline() {
                wake = wake.min(dead);
            }
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                probe = rx.recv() => match probe {
                    Some((from, bytes)) => self.handle(from, &bytes).await,
                    None => return,
                },
            }
        }
    }

    fn add_target(&mut self, addr: SocketAddr, learnt: bool) {
        if self.targets.len() < MAX_TARGETS && !self.targets.iter().any(|t| t.addr == addr) {
            let now = Instant::now();
            let learnt = learnt.then_some(now);
            self.targets.push(Target { addr, next: now, answered: None, learnt });
        }
    }

    /// Whether another address may be learnt from a ping now (a token bucket).
    fn may_learn(&mut self, now: Instant) -> bool {
        while self.learn_tokens < LEARN_BURST && now >= self.learn_refill + LEARN_EVERY {
            self.learn_tokens += 1;
            self.learn_refill += LEARN_EVERY;
        }
        if self.learn_tokens == LEARN_BURST {
            self.learn_refill = now;
        }
        if self.learn_tokens == 0 {
            return false;
        }
        self.learn_tokens -= 1;
        true
    }

    fn interval(&self, now: Instant, addr: SocketAddr) -> Duration {
        let age = now.saturating_duration_since(self.started);
        if self.current == Some(addr) {
            PING_INTERVAL
        } else if age < PUNCH_PHASE && self.current.is_none() {
            PUNCH_INTERVAL
        } else if age < Duration::from_secs(60) {
            RETRY_INTERVAL
        } else {
            LATE_INTERVAL
        }
    }

    async fn ping_due(&mut self, now: Instant) {
        for i in 0..self.targets.len() {
            if self.targets[i].next > now {
                continue;
            }
            let addr = self.targets[i].addr;
            // A fresh counter, then random bytes (the peer refuses a counter twice).
            self.sent += 1;
            let mut id: [u8; ID_LEN] = rand::random();
            id[..8].copy_from_slice(&self.sent.to_be_bytes());
            self.send(PING, &id, addr).await;
            if self.pending.len() >= MAX_PENDING {
                self.pending.pop_front();
            }
            self.pending.push_back((id, addr));
            self.targets[i].next = now + self.interval(now, addr);
        }
    }

    /// Sends a probe. A socket buffer kept full by a transfer on a slow link must not drop
    /// probes (the direct path would look dead and the transfer flap to the relay): wait a
    /// little for room rather than give up at once.
    async fn send(&mut self, kind: u8, id: &[u8; ID_LEN], to: SocketAddr) {
        let mut probe = Vec::with_capacity(PROBE_LEN);
        probe.extend_from_slice(&[PROBE, kind]);
        probe.extend_from_slice(id);
        probe.extend_from_slice(&self.keys.probe_tag(kind, id));
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: &probe,
            segment_size: None,
            src_ip: None,
        };
        let give_up = Instant::now() + PROBE_SEND_WAIT;
        loop {
            match self.base.try_send(&transmit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let poller = &mut self.poller;
                    let room = std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx));
                    match tokio::time::timeout_at(give_up, room).await {
                        Ok(Ok(())) => {}
                        _ => {
                            tracing::trace!(%to, "probe not sent: no room in the socket buffer");
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::trace!(error = %e, %to, "probe not sent");
                    return;
                }
                Ok(()) => return,
            }
        }
    }

    async fn handle(&mut self, from: SocketAddr, probe: &[u8]) {
        if probe.len() != PROBE_LEN || probe[0] != PROBE {
            return;
        }
        let kind = probe[1];
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&probe[2..2 + ID_LEN]);
        if !self.keys.check_probe_tag(kind, &id, &probe[2 + ID_LEN..]) {
            tracing::trace!(%from, "ignored a probe that is not the peer's");
            return;
        }
        match kind {
            PING => {
                let mut counter = [0u8; 8];
                counter.copy_from_slice(&id[..8]);
                if !self.replay.fresh(u64::from_be_bytes(counter)) {
                    tracing::debug!(%from, "ignored a ping seen before (replayed?)");
                    return;
                }
                let known = self.targets.iter().any(|t| t.addr == from);
                if !known && !self.may_learn(Instant::now()) {
                    tracing::debug!(%from, "ignored a ping from one new address too many");
                    return;
                }
                self.peer_at(from);
                self.send(PONG, &id, from).await;
                match self.targets.iter_mut().find(|t| t.addr == from) {
                    // Its ping opened the way through its NAT: answer with a ping of our own
                    // now, rather than at the next round (ours so far may have been dropped).
                    Some(t) if self.current.is_none() => t.next = Instant::now(),
                    Some(_) => {}
                    None => {
                        tracing::debug!(%from, "the peer pings from an address it did not announce");
                        self.add_target(from, true);
                    }
                }
            }
            PONG => {
                let Some(at) = self.pending.iter().position(|(p, to)| *p == id && *to == from)
                else {
                    return;
                };
                self.pending.remove(at);
                self.peer_at(from);
                let now = Instant::now();
                if let Some(t) = self.targets.iter_mut().find(|t| t.addr == from) {
                    t.answered = Some(now);
                }
                if self.current.is_none() {
                    tracing::info!(peer = %from, after = ?now.duration_since(self.started), "direct path up");
                    self.current = Some(from);
                    self.shared.set_direct(Some(from));
                    if let Some(t) = self.targets.iter_mut().find(|t| t.addr == from) {
                        t.next = now + PING_INTERVAL;
                    }
                }
            }
            _ => {}
        }
    }

    /// Datagrams from `from` are the peer's from now on (it sent an authentic, fresh probe).
    fn peer_at(&self, from: SocketAddr) {
        let mut route = self.shared.route();
        if route.peers.len() < MAX_PEERS {
            route.peers.insert(from);
        }
    }

    fn current_deadline(&self) -> Option<Instant> {
        let current = self.current?;
        let t = self.targets.iter().find(|t| t.addr == current)?;
        Some(t.answered? + DEAD_AFTER)
    }

    /// Gives up a direct path that stopped answering: another address that answered lately
    /// takes over, or the relay does.
    fn check_current(&mut self, now: Instant) {
        match self.current_deadline() {
            Some(dead) if dead <= now => {}
            _ => return,
        }
        let lost = self.current.take();
        let next = self
            .targets
            .iter()
            .filter(|t| Some(t.addr) != lost)
            .filter(|t| {
                t.answered.is_some_and(|a| now.saturating_duration_since(a) < PING_INTERVAL * 3)
            })
            .map(|t| t.addr)
            .next();
        tracing::info!(lost = ?lost, next = ?next, "the direct path stopped answering");
        self.current = next;
        self.shared.set_direct(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finding 8: an address learnt from a (possibly replayed or spoofed) ping that never
    /// answers our pings is pinged for 20 s at most; the peer's candidates, an address that
    /// answered, and the path in use stay.
    #[test]
    fn an_address_that_never_answers_is_dropped_after_20_s() {
        let t0 = Instant::now();
        let addr = |port: u16| SocketAddr::from(([192, 0, 2, 1], port));
        let target = |port, answered: Option<Instant>, learnt: Option<Instant>| Target {
            addr: addr(port),
            next: t0,
            answered,
            learnt,
        };
        let mut targets = vec![
            target(1, None, None),
            target(2, None, Some(t0)),
            target(3, Some(t0), Some(t0)),
            target(4, None, Some(t0)),
        ];
        let current = Some(addr(4));
        drop_silent(&mut targets, current, t0 + LEARNT_GIVE_UP - Duration::from_millis(1));
        assert_eq!(targets.len(), 4);
        drop_silent(&mut targets, current, t0 + LEARNT_GIVE_UP);
        let left: Vec<u16> = targets.iter().map(|t| t.addr.port()).collect();
        assert_eq!(left, [1, 3, 4]);
    }

    #[test]
    fn the_replay_window_takes_each_counter_once_and_not_too_old() {
        let mut w = ReplayWindow::default();
        assert!(!w.fresh(0), "counters start at 1");
        assert!(w.fresh(1));
        assert!(!w.fresh(1));
        assert!(w.fresh(5));
        // Out of order within the window: each once.
        for c in [4, 2, 3] {
            assert!(w.fresh(c), "{c}");
            assert!(!w.fresh(c), "{c} again");
        }
        assert!(w.fresh(5 + 700));
        assert!(w.fresh(6), "still within the window");
        assert!(!w.fresh(6));
        // A jump beyond the window forgets everything below it.
        assert!(w.fresh(10_000));
        assert!(!w.fresh(10_000 - REPLAY_WINDOW));
        assert!(w.fresh(10_000 - REPLAY_WINDOW + 1));
        assert!(!w.fresh(700 + 5));
    }

    /// Against a plain set of what was seen, over random counters near the front.
    #[test]
    fn the_replay_window_agrees_with_a_set() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut w = ReplayWindow::default();
        let mut seen = std::collections::HashSet::new();
        let mut highest = 0u64;
        for _ in 0..20_000 {
            let c = (highest + 50).saturating_sub(rng.gen_range(0..1500)).max(1);
            let want = !seen.contains(&c) && c + REPLAY_WINDOW > highest;
            assert_eq!(w.fresh(c), want, "counter {c}, highest {highest}");
            if want {
                seen.insert(c);
                highest = highest.max(c);
            }
        }
    }
}
