//! The receiver's sans-IO rules: which answers count, how long to wait for more, and which
//! addresses of the sender to keep.

use std::net::{SocketAddr, SocketAddrV6};
use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

use super::{Found, GRACE, MAX_ADDRS, MIN_GRACE};
use crate::wire::discovery::DiscoveryMsg;

/// Two different instances answered for the nameplate.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Ambiguous;

/// Sans-IO receiver logic: collects the addresses of the first sender that answers and
/// notices a second one.
#[derive(Debug)]
pub(super) struct Collector {
    nameplate: u32,
    found: Option<(Found, Instant)>,
    /// The last query's id and when it went out.
    queried: Option<(u64, Instant)>,
    /// The sender was first heard other than in answer to the last query: a fresh query now
    /// tells how long its answers take, and so how short the grace can be.
    requery: bool,
    /// A sender answered that it is busy, and until when to wait for one that is not.
    busy: Option<Instant>,
    /// A sender answered that it is busy but serves again after: wait for it to the end.
    busy_again: bool,
}

impl Collector {
    pub(super) fn new(nameplate: u32) -> Self {
        Collector {
            nameplate,
            found: None,
            queried: None,
            requery: false,
            busy: None,
            busy_again: false,
        }
    }

    /// Query `id` went out at `now`.
    pub(super) fn queried(&mut self, id: u64, now: Instant) {
        self.queried = Some((id, now));
    }

    /// Feeds one received datagram.
    pub(super) fn handle(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), Ambiguous> {
        let (instance, port, answers) = match DiscoveryMsg::decode(bytes) {
            Ok(DiscoveryMsg::Announce { nameplate, instance, port, query_id })
                if nameplate == self.nameplate && port != 0 =>
            {
                (instance, port, query_id)
            }
            Ok(DiscoveryMsg::Announce { nameplate, .. }) => {
                debug!(%from, nameplate, "ignoring announce for another nameplate (or port 0)");
                return Ok(());
            }
            Ok(DiscoveryMsg::Busy { nameplate, again: true, .. })
                if nameplate == self.nameplate =>
            {
                debug!(%from, "the sender is busy, and serves again after");
                self.busy_again = true;
                return Ok(());
            }
            Ok(DiscoveryMsg::Busy { nameplate, query_id, .. }) if nameplate == self.nameplate => {
                if self.busy.is_none() {
                    debug!(%from, "the sender is busy with another receiver");
                    let grace = self.grace(now, query_id);
                    self.requery = grace.is_none();
                    self.busy = Some(now + grace.unwrap_or(GRACE));
                }
                return Ok(());
            }
            Ok(DiscoveryMsg::Query { .. } | DiscoveryMsg::Busy { .. }) => return Ok(()),
            Err(e) => {
                debug!(%from, len = bytes.len(), error = %e, "ignoring malformed datagram");
                return Ok(());
            }
        };
        let Some(addr) = sender_addr(from, port) else {
            debug!(%from, "ignoring a link-local announce that came with no interface");
            return Ok(());
        };
        let grace = self.grace(now, answers);
        match &mut self.found {
            None => {
                debug!(%addr, instance = format_args!("{instance:016x}"), "sender found");
                let found = Found { instance, addrs: vec![addr] };
                // Only an answer to the last query tells how long answers take; anything
                // else (an unsolicited announce, a late answer) gets the full grace, and a
                // fresh query that may shorten it.
                self.requery = grace.is_none();
                self.found = Some((found, now + grace.unwrap_or(GRACE)));
            }
            Some((found, _)) if found.instance != instance => {
                debug!(%addr, "a second sender answers for the same nameplate");
                return Err(Ambiguous);
            }
            Some((found, until)) => {
                if let Some(grace) = grace {
                    *until = (*until).min(now + grace);
                }
                if !found.addrs.contains(&addr) && found.addrs.len() < MAX_ADDRS {
                    debug!(%addr, "another address of the sender");
                    found.addrs.push(addr);
                }
            }
        }
        Ok(())
    }

    /// The grace period an answer to query `answers` arriving at `now` earns: four times its
    /// delay, within [`MIN_GRACE`] and [`GRACE`]; `None` unless it answers the last query.
    fn grace(&self, now: Instant, answers: u64) -> Option<Duration> {
        match self.queried {
            Some((id, at)) if id == answers => {
                Some((now.saturating_duration_since(at) * 4).clamp(MIN_GRACE, GRACE))
            }
            _ => None,
        }
    }

    /// True once after the sender was first heard other than in answer to the last query:
    /// the caller should send a fresh query now.
    pub(super) fn take_requery(&mut self) -> bool {
        std::mem::take(&mut self.requery)
    }

    /// When the grace period after the first answer ends, if one arrived.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.found.as_ref().map(|(_, until)| *until).or(self.busy)
    }

    /// Whether only a busy sender answered.
    pub(super) fn only_busy(&self) -> bool {
        self.found.is_none() && self.busy.is_some()
    }

    /// Whether only a sender that serves again after answered (so far).
    pub(super) fn busy_again(&self) -> bool {
        self.found.is_none() && self.busy_again
    }

    /// The sender found, if any: its IPv4 addresses first (tried first, as before IPv6 was
    /// used), then its IPv6 ones.
    pub(super) fn finish(self) -> Option<Found> {
        self.found.map(|(mut found, _)| {
            found.addrs.sort_by_key(SocketAddr::is_ipv6);
            found
        })
    }
}

/// Where a sender whose announce came from `from` takes QUIC connections: `from`'s IP with the
/// announced `port`. An IPv6 link-local IP keeps `from`'s scope, the index of the interface the
/// announce came in on, and is of no use without it (`None`).
fn sender_addr(from: SocketAddr, port: u16) -> Option<SocketAddr> {
    match from {
        SocketAddr::V4(from) => Some(SocketAddr::from((*from.ip(), port))),
        SocketAddr::V6(from) if from.ip().is_unicast_link_local() => (from.scope_id() != 0)
            .then(|| SocketAddrV6::new(*from.ip(), port, 0, from.scope_id()).into()),
        SocketAddr::V6(from) => Some(SocketAddrV6::new(*from.ip(), port, 0, 0).into()),
    }
}
