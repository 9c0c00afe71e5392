//! The sender's sans-IO rules: which datagrams deserve an answer, and how often.

use std::net::SocketAddr;

use tokio::time::Instant;
use tracing::{debug, trace};

use super::{MULTICAST_REPLY_SPACING, UNICAST_REPLIES_PER_WINDOW, UNICAST_REPLY_WINDOW};
use crate::wire::discovery::DiscoveryMsg;

/// What the announcer sends in answer to one datagram.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Answer {
    pub(super) msg: DiscoveryMsg,
    pub(super) unicast_to: Option<SocketAddr>,
    pub(super) multicast: bool,
}

/// Sans-IO sender logic: which datagrams deserve an answer, with rate limits so a flood of
/// queries cannot turn the sender into an amplifier.
#[derive(Debug)]
pub(super) struct Responder {
    nameplate: u32,
    instance: u64,
    port: u16,
    window_start: Instant,
    unicast_in_window: u32,
    last_multicast: Option<Instant>,
    /// Serving a receiver already (and whether another comes after): answers say `Busy`.
    pub(super) busy: Option<bool>,
}

impl Responder {
    pub(super) fn new(nameplate: u32, instance: u64, port: u16, now: Instant) -> Self {
        Responder {
            nameplate,
            instance,
            port,
            window_start: now,
            unicast_in_window: 0,
            last_multicast: None,
            busy: None,
        }
    }

    pub(super) fn announce(&self, query_id: u64) -> DiscoveryMsg {
        let (nameplate, instance) = (self.nameplate, self.instance);
        if let Some(again) = self.busy {
            return DiscoveryMsg::Busy { nameplate, instance, query_id, again };
        }
        DiscoveryMsg::Announce { nameplate, instance, port: self.port, query_id }
    }

    pub(super) fn handle(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Option<Answer> {
        let query_id = match DiscoveryMsg::decode(bytes) {
            Ok(DiscoveryMsg::Query { nameplate, query_id }) if nameplate == self.nameplate => {
                query_id
            }
            Ok(DiscoveryMsg::Query { nameplate, .. }) => {
                trace!(%from, nameplate, "query for another nameplate");
                return None;
            }
            Ok(DiscoveryMsg::Announce { nameplate, instance, .. }) => {
                if nameplate == self.nameplate && instance != self.instance {
                    debug!(%from, nameplate, "another sender announces the same nameplate");
                }
                return None;
            }
            Ok(DiscoveryMsg::Busy { .. }) => return None,
            Err(e) => {
                debug!(%from, len = bytes.len(), error = %e, "ignoring malformed datagram");
                return None;
            }
        };
        if now.saturating_duration_since(self.window_start) >= UNICAST_REPLY_WINDOW {
            self.window_start = now;
            self.unicast_in_window = 0;
        }
        let unicast_to = (self.unicast_in_window < UNICAST_REPLIES_PER_WINDOW).then(|| {
            self.unicast_in_window += 1;
            from
        });
        let multicast = self
            .last_multicast
            .is_none_or(|last| now.saturating_duration_since(last) >= MULTICAST_REPLY_SPACING);
        if multicast {
            self.last_multicast = Some(now);
        }
        if unicast_to.is_none() && !multicast {
            debug!(%from, "discovery answers rate-limited");
            return None;
        }
        trace!(%from, query_id, multicast, "answering discovery query");
        Some(Answer { msg: self.announce(query_id), unicast_to, multicast })
    }
}
