//! The sans-IO nameplate and mailbox table: the whole state of a node, without any I/O.
//!
//! The driver feeds it connections ([`Table::connect`], [`Table::disconnect`]), decoded client
//! messages ([`Table::handle`]) and the time; it drains [`Output`]s with
//! [`Table::poll_output`] after every call and calls [`Table::handle_timeout`] at
//! [`Table::poll_timeout`]. Every entry point first applies the timers that are due, so the
//! outcome never depends on how late the driver wakes up.
//!
//! # Flow of one client
//!
//! 1. `connect`: refused with [`ErrorCode::Busy`] when its source already has
//!    [`Limits::clients_per_ip`] clients (at any level, see Sources).
//! 2. `Hello` must come first. Wrong version → `Error Version`, a missing or wrong proof of
//!    the token (when [`Limits::token`] is set: [`crate::auth::verify`] against the channel
//!    given to [`Table::connect_bound`]; a client connected without one cannot prove it) →
//!    `Error Unauthorized`, anything else first → `Error Protocol`;
//!    each followed by [`Output::Close`] (later messages from that client are ignored).
//!    Otherwise → `Welcome { observed }` with the address given to `connect` (an IPv4-mapped
//!    IPv6 address is reported as IPv4).
//! 3. `Allocate` / `Claim` (at most one nameplate per client; each spends rate tokens of the
//!    source, successful or not: one, or [`JOIN_COST`] for a claim of a nameplate somebody
//!    holds, which may be a guess; `RateLimited` without them, `Busy` past the node-wide
//!    [`Limits::total_claims_per_minute`] for a source that made a request in the last
//!    [`FAIR_WINDOW`]):
//!    - `Allocate` → `Allocated { n }` with `n` drawn at random ([`Random`]) among the numbers
//!      in `1..=max(999, 100 × taken)` (capped by [`Limits::max_nameplate_number`]) that are
//!      neither open nor cooling down, `taken` counting those that are: codes stay short, and
//!      neither the answer nor a claim tells where the live nameplates are.
//!    - `Claim { n }` of a number nobody holds → creates it: `Claimed { n, peer_present: false }`.
//!    - `Claim { n }` of a nameplate with one side → `Claimed { n, peer_present: true }` to the
//!      claimer, `PeerJoined` to the first side, then the first side's queued messages.
//!    - two sides already → `Error NameplateFull`; closed and cooling down → `Error
//!      NameplateClosed` (one guess per code: a used nameplate is never reopened while a stale
//!      peer may still try it); `n = 0` → `Error NoSuchNameplate`. A held nameplate (8) answers
//!      `Error Serving` in both cases instead: its holder serves the next peer soon.
//!    - `Reclaim { n, key }` (one rate token) → as a `Claim` that creates `n`, for the holder of
//!      a held `n` that is cooling down, or of an `n` free again; as a `Claim` that joins `n`
//!      when a peer opened it meanwhile (the hold ran out while the next receiver waited);
//!      `Error NameplateClosed` when `n` is held with another key, or open otherwise.
//! 4. `Send { body }` → `Message { body }` to the other side, or queued for it while it has not
//!    joined ([`Limits::mailbox_messages`], [`Limits::mailbox_bytes`]; over → `Error Busy`).
//! 5. `Release` or disconnect → `PeerLeft` to the other side; the nameplate closes and its
//!    number cools down for [`Limits::reuse_after`] (not a rejoin nameplate,
//!    [`crate::wire::REJOIN_NAMEPLATES`]: no code is guessed on one). The other side no longer holds it: its
//!    `Send`s get `Error NameplateClosed` until it allocates or claims again. A `Release`
//!    without a nameplate is a no-op.
//! 6. A nameplate without `Claim` or `Send` for [`Limits::idle_expiry`] expires: both sides
//!    get `Error Expired` (they stay connected) and it closes as in 5.
//! 7. `RelayTicket` from a side of a nameplate whose other side is there →
//!    [`Output::Ticket`] with the pairing (a number that is never reused) and the side (0 for
//!    the first, 1 for the second); the driver answers with the ticket its relay draws. Without
//!    a nameplate, or before the other side joined, → `Error Protocol`; after the nameplate
//!    closed → `Error NameplateClosed`.
//! 8. `Hold` from a side of a nameplate (not a rejoin nameplate, at most once per nameplate)
//!    → `Held { key }`, 128 random bits. The nameplate closes as in 5 after each pairing, but
//!    keeps its key while it cools down, for [`Limits::idle_expiry`] if that is longer (a
//!    transfer may take a while), unless the pairing closed like a failed key exchange (see
//!    Suspected guesses); `Reclaim` with the key reopens it at once, held again. A claim of a
//!    held number, open with two sides or cooling down, costs one rate token.
//!    Every pairing is its own key exchange; the holder (a `send --count`) stops at a failed
//!    one. Whoever knows the code could claim the number anyway once it has cooled down, so a
//!    key lets its holder only skip the cooldown.
//!
//! # Suspected guesses
//!
//! The node cannot see a key exchange fail, only its trace: a nameplate whose second side
//! joined and which closed within [`GUESS_WINDOW`] without either side asking for a relay
//! ticket (peers whose codes matched ask for one before they release, unless the relay is
//! turned off) is counted in [`Table::suspected_guesses`]. Rejoin nameplates never count.
//!
//! # Bounds
//!
//! Open nameplates ≤ [`Limits::max_nameplates`]; queued bytes per nameplate ≤
//! [`Limits::mailbox_bytes`]; closed numbers of nameplates that had two sides ≤
//! [`Limits::max_closed`] + `max_nameplates` (new nameplates get `Busy` while `max_closed`
//! are cooling down); closed numbers that only had one side ≤ what the claim rates admit in
//! [`Limits::reuse_after`] (with the default ceiling, 6,000 a minute: 60,000, plus a request
//! per minute per source past the ceiling). They cool down too, so that a receiver who comes
//! late hears that the code is used, but no guess was possible on them, so they do not count
//! towards `max_closed`: claim-and-release from many sources cannot close the node. Rate-limit
//! entries ≤ sources with clients + [`Limits::max_idle_sources`] (the entry of a source without
//! clients is dropped once its bucket is full again and its last request is [`FAIR_WINDOW`]
//! old, or evicted early when there are too many). Clients are bounded by the driver's
//! connection cap and `clients_per_ip`. Outputs are bounded per call: drain them after each
//! one.
//!
//! # Sources
//!
//! Rate limits and `clients_per_ip` apply per *source*, hierarchically: an IPv4 address
//! (IPv4-mapped IPv6 included); an IPv6 address counts in its /64 (one host or LAN usually
//! holds a whole /64), and also in its /56 and /48 with 4 and 16 times the limits
//! ([`V6_LEVELS`]), so one customer's /56 or one tunnel-broker /48 is not thousands of
//! sources. A request must fit every level.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::auth::{Channel, Proof};
use crate::wire::{ClientMsg, ErrorCode, NodeMsg, MAX_TEXT, REJOIN_NAMEPLATES, VERSION};

mod numbers;
mod sources;

#[cfg(feature = "server")]
pub(crate) use sources::Counts;
use sources::{Refusal, Sources};
pub use sources::{SourceKey, FAIR_WINDOW, V6_LEVELS};

pub use numbers::Random;

/// Rate tokens a claim of a nameplate that somebody else holds costs (an ordinary request
/// costs one). Such a claim is either the receiver of a transfer or a guess; at the default 30
/// tokens a minute a source can still join five nameplates a minute (six transfers when it
/// also allocated them), while a guesser gets six tries a minute instead of thirty.
pub const JOIN_COST: u32 = 5;
/// A nameplate that closes this soon after its second side joined, with no relay ticket
/// asked for, counts as a suspected guess (see the module documentation).
pub const GUESS_WINDOW: Duration = Duration::from_secs(30);

/// The driver's name for a connection.
pub type ClientId = u64;

/// What the table admits. [`Limits::default`] suits a public node.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open nameplates at once; over it, `Allocate` and `Claim` get `Busy`.
    pub max_nameplates: usize,
    /// `Allocate` never hands out a number above this (claims of pre-shared codes may use any
    /// number ≥ 1); `Busy` when none is free. The range it draws from is usually smaller: see
    /// the module documentation.
    pub max_nameplate_number: u32,
    /// A nameplate without `Claim` or `Send` this long expires.
    pub idle_expiry: Duration,
    /// A closed (released or expired) number is neither allocated nor claimable for this long.
    pub reuse_after: Duration,
    /// `Allocate` + `Claim` per minute per source, as a token bucket of this size refilling
    /// continuously; a claim of a nameplate somebody holds costs [`JOIN_COST`]. 0 disables the
    /// limit.
    pub claims_per_minute: u32,
    /// Connections at once per source (IPv4 address or IPv6 /64; an IPv6 /56 and /48 get 4
    /// and 16 times as many, [`V6_LEVELS`]).
    pub clients_per_ip: usize,
    /// Messages queued for a peer that has not joined yet.
    pub mailbox_messages: usize,
    /// Bytes queued for a peer that has not joined yet.
    pub mailbox_bytes: usize,
    /// Access token whose proof `Hello` must carry (`None`: open node).
    pub token: Option<String>,
    /// Closed numbers of nameplates that had two sides cooling down at once; while this many
    /// are, new nameplates get `Busy` (a closed number is never forgotten early, so it cannot
    /// be reopened early). Numbers that only ever had one side cool down too but do not count
    /// here: no guess was possible on them, and the claim rates bound them.
    pub max_closed: usize,
    /// `Allocate` + `Claim` per minute over all sources, as a token bucket of this size (a
    /// join costs [`JOIN_COST`] here too). Once it is spent, only a source that made no
    /// request in the last [`FAIR_WINDOW`] gets one through (`Busy` for the others), so
    /// sources exhausting it cannot lock the others out. 0 disables the ceiling.
    pub total_claims_per_minute: u32,
    /// Rate-limit entries kept for sources with no client (the entry closest to a full
    /// bucket is forgotten first when there are more).
    pub max_idle_sources: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_nameplates: 10_000,
            max_nameplate_number: 999_999,
            idle_expiry: Duration::from_secs(60 * 60),
            reuse_after: Duration::from_secs(10 * 60),
            claims_per_minute: 30,
            clients_per_ip: 64,
            mailbox_messages: 16,
            mailbox_bytes: 64 * 1024,
            token: None,
            max_closed: 100_000,
            total_claims_per_minute: 6_000,
            max_idle_sources: 65_536,
        }
    }
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this message to this client.
    Send {
        /// The recipient.
        to: ClientId,
        /// The message.
        msg: NodeMsg,
    },
    /// Close this client's connection after sending what is queued for it; then call
    /// [`Table::disconnect`].
    Close {
        /// The client.
        client: ClientId,
    },
    /// Answer this client with its relay ticket for this pairing (`NodeMsg::RelayTicket`, or
    /// an error if the relay cannot take it).
    Ticket {
        /// The client.
        to: ClientId,
        /// The two sides' meeting on a nameplate: unique for the table's life.
        pairing: u64,
        /// 0: the nameplate's first side; 1: its second.
        side: u8,
    },
}

/// The nameplate and mailbox table. See the [module documentation](self).
#[derive(Debug)]
pub struct Table {
    limits: Limits,
    clients: HashMap<ClientId, Client>,
    sources: Sources,
    nameplates: HashMap<u32, Nameplate>,
    /// Open nameplates by expiry deadline.
    deadlines: BTreeSet<(Instant, u32)>,
    /// Closed numbers cooling down.
    closed: HashMap<u32, Closed>,
    /// Closed numbers in `closed` whose nameplate had two sides.
    closed_joined: usize,
    /// The same, by end of cooldown.
    cooldowns: BTreeSet<(Instant, u32)>,
    /// Numbers in `1..=max_nameplate_number` that are open or cooling down.
    taken: BTreeSet<u32>,
    outputs: VecDeque<Output>,
    shutting_down: bool,
    /// The serial of the last nameplate opened.
    next_serial: u64,
    /// Draws allocated numbers.
    random: Random,
    /// Nameplates that closed like a failed key exchange (see the module documentation).
    suspected_guesses: u64,
}

/// A closed number, cooling down.
#[derive(Debug, Clone, Copy)]
struct Closed {
    /// Its nameplate had two sides (which counts towards [`Limits::max_closed`]).
    joined: bool,
    /// The end of its cooldown.
    until: Instant,
    /// The key that reopens it for its holder (`Hold`, `Reclaim`).
    hold: Option<[u8; 16]>,
}

#[derive(Debug)]
struct Client {
    observed: SocketAddr,
    /// The TLS session's exported keying material (token proofs are checked against it).
    channel: Option<Channel>,
    phase: Phase,
    slot: Slot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitHello,
    Ready,
    /// Close was output; everything from this client is ignored until it disconnects.
    Closing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    None,
    Held(u32),
    /// Its nameplate was closed under it (peer left, expiry).
    Lost,
}

#[derive(Debug)]
struct Nameplate {
    first: ClientId,
    second: Option<ClientId>,
    deadline: Instant,
    /// Messages from `first` waiting for `second`.
    queue: VecDeque<Vec<u8>>,
    queued_bytes: usize,
    /// Tells one opening of a number from the next: the pairing of its relay.
    serial: u64,
    /// When the second side joined.
    joined: Option<Instant>,
    /// A side asked for a relay ticket.
    ticketed: bool,
    /// Its holder serves peers one after another: the key that reopens it (`Hold`).
    hold: Option<[u8; 16]>,
}

impl Nameplate {
    fn peer_of(&self, client: ClientId) -> Option<ClientId> {
        if client == self.first {
            self.second
        } else {
            Some(self.first)
        }
    }
}

/// Why a nameplate closes.
#[derive(Debug, Clone, Copy)]
enum CloseReason {
    /// This side released it or disconnected.
    Left(ClientId),
    Expired,
}

impl Table {
    /// An empty table drawing nameplate numbers from `random`.
    pub fn new(limits: Limits, random: Random) -> Table {
        let sources = Sources::new(&limits);
        Table {
            limits,
            clients: HashMap::new(),
            sources,
            nameplates: HashMap::new(),
            deadlines: BTreeSet::new(),
            closed: HashMap::new(),
            closed_joined: 0,
            cooldowns: BTreeSet::new(),
            taken: BTreeSet::new(),
            outputs: VecDeque::new(),
            shutting_down: false,
            next_serial: 0,
            random,
            suspected_guesses: 0,
        }
    }

    /// A connection arrived. `Err(ErrorCode::Busy)` if its source already has
    /// [`Limits::clients_per_ip`] clients (the driver then refuses it); `Err(ErrorCode::Protocol)`
    /// if the id is already connected (a driver bug; the table is unchanged).
    pub fn connect(
        &mut self,
        now: Instant,
        client: ClientId,
        addr: SocketAddr,
    ) -> Result<(), ErrorCode> {
        self.connect_with(now, client, addr, None)
    }

    /// As [`Table::connect`], for a connection whose TLS session exported `channel`
    /// ([`crate::auth::quic_channel`], [`crate::auth::tls_channel`]): the one its token proof
    /// must be made on.
    pub fn connect_bound(
        &mut self,
        now: Instant,
        client: ClientId,
        addr: SocketAddr,
        channel: Channel,
    ) -> Result<(), ErrorCode> {
        self.connect_with(now, client, addr, Some(channel))
    }

    fn connect_with(
        &mut self,
        now: Instant,
        client: ClientId,
        addr: SocketAddr,
        channel: Option<Channel>,
    ) -> Result<(), ErrorCode> {
        self.advance(now);
        if self.clients.contains_key(&client) {
            return Err(ErrorCode::Protocol);
        }
        if self.limits.clients_per_ip == 0 || self.sources.connect(now, addr.ip()).is_err() {
            return Err(ErrorCode::Busy);
        }
        let observed = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        let c = Client { observed, channel, phase: Phase::AwaitHello, slot: Slot::None };
        self.clients.insert(client, c);
        Ok(())
    }

    /// A message from a client. Outputs are queued ([`Table::poll_output`]). Messages from
    /// unknown clients are ignored.
    pub fn handle(&mut self, now: Instant, client: ClientId, msg: ClientMsg) {
        self.advance(now);
        let Some(c) = self.clients.get(&client) else { return };
        match (c.phase, msg) {
            (Phase::Closing, _) => {}
            (Phase::AwaitHello, ClientMsg::Hello { version, proof }) => {
                self.hello(client, version, proof)
            }
            (Phase::AwaitHello, _) => {
                self.fail(client, ErrorCode::Protocol, "send Hello first".into());
            }
            (Phase::Ready, msg) if msg.validate().is_err() => {
                self.error(client, ErrorCode::Protocol, "message over the size limit".into());
            }
            (Phase::Ready, ClientMsg::Hello { .. }) => {
                self.error(client, ErrorCode::Protocol, "Hello was already received".into());
            }
            (Phase::Ready, ClientMsg::Allocate) => self.allocate(now, client),
            (Phase::Ready, ClientMsg::Claim { nameplate }) => self.claim(now, client, nameplate),
            (Phase::Ready, ClientMsg::Send { body }) => self.send(now, client, body),
            (Phase::Ready, ClientMsg::Release) => self.release(now, client),
            (Phase::Ready, ClientMsg::Relay { .. }) => {
                self.error(client, ErrorCode::Protocol, "Relay opens its own stream".into());
            }
            (Phase::Ready, ClientMsg::RelayTicket) => self.ticket(client),
            (Phase::Ready, ClientMsg::Hold) => self.hold(client),
            (Phase::Ready, ClientMsg::Reclaim { nameplate, key }) => {
                self.reclaim(now, client, nameplate, key)
            }
        }
    }

    /// The connection is gone (closed, reset, timed out): as `Release`, then forget the
    /// client. Unknown clients are ignored.
    pub fn disconnect(&mut self, now: Instant, client: ClientId) {
        self.advance(now);
        self.release(now, client);
        let Some(c) = self.clients.remove(&client) else { return };
        // Nothing is sent to a client that is gone (timers applied above may have queued).
        self.outputs.retain(|o| match o {
            Output::Send { to, .. } | Output::Ticket { to, .. } => *to != client,
            Output::Close { client: c } => *c != client,
        });
        self.sources.disconnect(now, c.observed.ip());
    }

    /// The next output for the driver.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Next expiry/refill instant to call [`Table::handle_timeout`] at.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.deadlines.first(), self.cooldowns.first()]
            .into_iter()
            .flatten()
            .map(|&(at, _)| at)
            .chain(self.sources.poll_timeout())
            .min()
    }

    /// Applies the timers due at `now`: expiries, ends of cooldowns, dropping full idle
    /// buckets.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
    }

    /// Open nameplates (for metrics).
    pub fn nameplates(&self) -> usize {
        self.nameplates.len()
    }

    /// Connected clients (for metrics).
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// Nameplates that closed soon after their second side joined, with no relay ticket asked
    /// for: failed key exchanges, a wrong code or a guess (for metrics; see the module
    /// documentation).
    pub fn suspected_guesses(&self) -> u64 {
        self.suspected_guesses
    }

    /// Stop accepting `Allocate`/`Claim` (graceful shutdown): they get `Error ShuttingDown`.
    /// Open nameplates keep working.
    pub fn shutting_down(&mut self) {
        self.shutting_down = true;
    }

    fn advance(&mut self, now: Instant) {
        while let Some(&(at, n)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.remove(&(at, n));
            self.close(now, n, CloseReason::Expired);
        }
        while let Some(&(at, n)) = self.cooldowns.first() {
            if at > now {
                break;
            }
            self.cooldowns.remove(&(at, n));
            if self.closed.remove(&n).is_some_and(|c| c.joined) {
                self.closed_joined -= 1;
            }
            self.taken.remove(&n);
        }
        self.sources.advance(now);
    }

    fn hello(&mut self, client: ClientId, version: u16, proof: Option<Proof>) {
        if version != VERSION {
            let message = format!(
                "this node speaks rendezvous protocol version {VERSION}, the client {version}: \
                 use a p2p-copy release that matches the node"
            );
            return self.fail(client, ErrorCode::Version, message);
        }
        if let Some(want) = &self.limits.token {
            let channel = self.clients.get(&client).and_then(|c| c.channel);
            if !crate::auth::verify(want, channel.as_ref(), proof.as_ref()) {
                let message = "this node requires an access token and the one given is missing \
                               or wrong: pass the node's token";
                return self.fail(client, ErrorCode::Unauthorized, message.into());
            }
        }
        let Some(c) = self.clients.get_mut(&client) else { return };
        c.phase = Phase::Ready;
        let observed = c.observed;
        self.send_to(client, NodeMsg::Welcome { version: VERSION, observed });
    }

    /// The checks common to `Allocate` and `Claim`; spends `cost` rate tokens.
    fn admit(&mut self, now: Instant, client: ClientId, cost: u32) -> bool {
        let Some(c) = self.clients.get(&client) else { return false };
        if self.shutting_down {
            let message = "the node is shutting down: try again in a moment";
            self.error(client, ErrorCode::ShuttingDown, message.into());
            return false;
        }
        if let Slot::Held(n) = c.slot {
            let message = format!("this connection already holds nameplate {n}; release it first");
            self.error(client, ErrorCode::Protocol, message);
            return false;
        }
        match self.sources.spend(now, c.observed.ip(), cost) {
            Ok(()) => true,
            Err(Refusal::Rate { level, per_minute }) => {
                let message = format!(
                    "too many nameplate requests from {level} (at most {per_minute} a minute, \
                     joining a nameplate counts {JOIN_COST}): wait a little and try again"
                );
                self.error(client, ErrorCode::RateLimited, message);
                false
            }
            Err(Refusal::Ceiling) => {
                let message = format!(
                    "the node takes at most {} nameplate requests a minute and is at it: try \
                     again in a minute",
                    self.limits.total_claims_per_minute
                );
                self.error(client, ErrorCode::Busy, message);
                false
            }
        }
    }

    /// Whether another nameplate may open; answers `Busy` if not.
    fn room(&mut self, client: ClientId) -> bool {
        if self.nameplates.len() >= self.limits.max_nameplates
            || self.closed_joined >= self.limits.max_closed
        {
            let message = "the node has too many nameplates open: try again later";
            self.error(client, ErrorCode::Busy, message.into());
            return false;
        }
        true
    }

    fn allocate(&mut self, now: Instant, client: ClientId) {
        if !self.admit(now, client, 1) || !self.room(client) {
            return;
        }
        let top = numbers::range_top(self.taken.len(), self.limits.max_nameplate_number);
        let Some(n) = numbers::pick(&mut self.random, &self.taken, top) else {
            let message = "no free nameplate number on this node: try again later";
            return self.error(client, ErrorCode::Busy, message.into());
        };
        self.open(now, client, n);
        self.send_to(client, NodeMsg::Allocated { nameplate: n });
    }

    fn claim(&mut self, now: Instant, client: ClientId, n: u32) {
        // Joining somebody's nameplate may be a guess; a rejoin nameplate is no code's. Asking
        // again for a held nameplate whose holder is busy is waiting, not guessing.
        let joins = n & REJOIN_NAMEPLATES == 0
            && self.nameplates.get(&n).is_some_and(|np| np.hold.is_none() || np.second.is_none());
        if !self.admit(now, client, if joins { JOIN_COST } else { 1 }) {
            return;
        }
        if n == 0 {
            let message = "nameplate 0 does not exist: check the code".to_string();
            return self.error(client, ErrorCode::NoSuchNameplate, message);
        }
        if let Some(closed) = self.closed.get(&n) {
            if closed.hold.is_some() {
                let message = format!(
                    "nameplate {n}'s sender serves one receiver at a time and is busy: try again \
                     in a moment"
                );
                return self.error(client, ErrorCode::Serving, message);
            }
            let message = format!(
                "nameplate {n} was used or expired and is closed: ask the sender for a new code"
            );
            return self.error(client, ErrorCode::NameplateClosed, message);
        }
        let Some(np) = self.nameplates.get_mut(&n) else {
            if self.room(client) {
                self.open(now, client, n);
                self.send_to(client, NodeMsg::Claimed { nameplate: n, peer_present: false });
            }
            return;
        };
        if np.second.is_some() && np.hold.is_some() {
            let message = format!(
                "nameplate {n}'s sender serves one receiver at a time and is busy: try again in \
                 a moment"
            );
            return self.error(client, ErrorCode::Serving, message);
        }
        if np.second.is_some() {
            let message =
                format!("nameplate {n} already has two sides: someone else is using this code");
            return self.error(client, ErrorCode::NameplateFull, message);
        }
        np.second = Some(client);
        np.joined = Some(now);
        let first = np.first;
        let queue = std::mem::take(&mut np.queue);
        np.queued_bytes = 0;
        if let Some(c) = self.clients.get_mut(&client) {
            c.slot = Slot::Held(n);
        }
        self.touch(now, n);
        self.send_to(client, NodeMsg::Claimed { nameplate: n, peer_present: true });
        self.send_to(first, NodeMsg::PeerJoined);
        for body in queue {
            self.send_to(client, NodeMsg::Message { body });
        }
    }

    /// Opens nameplate `n` with `client` as its first side.
    fn open(&mut self, now: Instant, client: ClientId, n: u32) {
        let deadline = after(now, self.limits.idle_expiry);
        let np = Nameplate {
            first: client,
            second: None,
            deadline,
            queue: VecDeque::new(),
            queued_bytes: 0,
            serial: {
                self.next_serial += 1;
                self.next_serial
            },
            joined: None,
            ticketed: false,
            hold: None,
        };
        self.nameplates.insert(n, np);
        self.deadlines.insert((deadline, n));
        if n <= self.limits.max_nameplate_number {
            self.taken.insert(n);
        }
        if let Some(c) = self.clients.get_mut(&client) {
            c.slot = Slot::Held(n);
        }
    }

    /// Records activity on nameplate `n`: its expiry starts again.
    fn touch(&mut self, now: Instant, n: u32) {
        let Some(np) = self.nameplates.get_mut(&n) else { return };
        self.deadlines.remove(&(np.deadline, n));
        np.deadline = after(now, self.limits.idle_expiry);
        self.deadlines.insert((np.deadline, n));
    }

    fn send(&mut self, now: Instant, client: ClientId, body: Vec<u8>) {
        let Some(c) = self.clients.get(&client) else { return };
        let n = match c.slot {
            Slot::Held(n) => n,
            Slot::None => {
                let message = "allocate or claim a nameplate before sending";
                return self.error(client, ErrorCode::Protocol, message.into());
            }
            Slot::Lost => {
                let message = "the nameplate is closed: the other side left or it expired";
                return self.error(client, ErrorCode::NameplateClosed, message.into());
            }
        };
        let Some(np) = self.nameplates.get_mut(&n) else { return };
        match np.peer_of(client) {
            Some(peer) => self.send_to(peer, NodeMsg::Message { body }),
            None => {
                if np.queue.len() >= self.limits.mailbox_messages
                    || np.queued_bytes.saturating_add(body.len()) > self.limits.mailbox_bytes
                {
                    let message = format!(
                        "the mailbox of nameplate {n} is full: wait for the other side to join"
                    );
                    return self.error(client, ErrorCode::Busy, message);
                }
                np.queued_bytes += body.len();
                np.queue.push_back(body);
            }
        }
        self.touch(now, n);
    }

    fn ticket(&mut self, client: ClientId) {
        let Some(c) = self.clients.get(&client) else { return };
        let n = match c.slot {
            Slot::Held(n) => n,
            Slot::None => {
                let message = "a relay ticket needs a nameplate with two sides";
                return self.error(client, ErrorCode::Protocol, message.into());
            }
            Slot::Lost => {
                let message = "the nameplate is closed: the other side left or it expired";
                return self.error(client, ErrorCode::NameplateClosed, message.into());
            }
        };
        let Some(np) = self.nameplates.get_mut(&n) else { return };
        if np.second.is_none() {
            let message = "a relay ticket needs the other side on the nameplate";
            return self.error(client, ErrorCode::Protocol, message.into());
        }
        np.ticketed = true;
        let side = u8::from(client != np.first);
        let pairing = np.serial;
        self.outputs.push_back(Output::Ticket { to: client, pairing, side });
    }

    /// `Hold`: the key that reopens the client's nameplate after this pairing.
    fn hold(&mut self, client: ClientId) {
        let Some(Slot::Held(n)) = self.clients.get(&client).map(|c| c.slot) else {
            let message = "Hold needs a nameplate";
            return self.error(client, ErrorCode::Protocol, message.into());
        };
        if n & REJOIN_NAMEPLATES != 0 {
            let message = "a rejoin nameplate serves one pairing";
            return self.error(client, ErrorCode::Protocol, message.into());
        }
        let key = self.draw_key();
        let Some(np) = self.nameplates.get_mut(&n) else { return };
        if np.hold.is_some() {
            let message = format!("nameplate {n} is held already");
            return self.error(client, ErrorCode::Protocol, message);
        }
        np.hold = Some(key);
        self.send_to(client, NodeMsg::Held { key });
    }

    /// `Reclaim`: reopens a held nameplate for its holder, as its first side.
    fn reclaim(&mut self, now: Instant, client: ClientId, n: u32, key: [u8; 16]) {
        if !self.admit(now, client, 1) {
            return;
        }
        if n == 0 || n & REJOIN_NAMEPLATES != 0 {
            let message = format!("nameplate {n} cannot be held");
            return self.error(client, ErrorCode::Protocol, message);
        }
        let lost = || {
            format!(
                "nameplate {n} is no longer this sender's (it closed, or another transfer took \
                 its number): start again with a new code"
            )
        };
        match (self.closed.get(&n), self.nameplates.get(&n)) {
            (Some(closed), _) if closed.hold == Some(key) => {}
            (Some(_), _) => return self.error(client, ErrorCode::NameplateClosed, lost()),
            // Its hold ran out and a peer claimed the number meanwhile (the next receiver,
            // waiting): join it, as a sender does that comes second to a pre-shared code.
            (None, Some(np)) if np.second.is_none() && np.hold.is_none() => {
                self.claim(now, client, n);
                if let Some(np) = self.nameplates.get_mut(&n) {
                    if np.second == Some(client) {
                        np.hold = Some(key);
                    }
                }
                return;
            }
            (None, Some(_)) => return self.error(client, ErrorCode::NameplateClosed, lost()),
            // Its hold ran out and nobody took the number: the holder's again.
            (None, None) => {}
        }
        if self.nameplates.len() >= self.limits.max_nameplates {
            let message = "the node has too many nameplates open: try again later";
            return self.error(client, ErrorCode::Busy, message.into());
        }
        if let Some(closed) = self.closed.remove(&n) {
            self.closed_joined -= usize::from(closed.joined);
            self.cooldowns.remove(&(closed.until, n));
        }
        self.open(now, client, n);
        if let Some(np) = self.nameplates.get_mut(&n) {
            np.hold = Some(key);
        }
        self.send_to(client, NodeMsg::Claimed { nameplate: n, peer_present: false });
    }

    fn draw_key(&mut self) -> [u8; 16] {
        let mut key = [0; 16];
        key[..8].copy_from_slice(&self.random.bits().to_be_bytes());
        key[8..].copy_from_slice(&self.random.bits().to_be_bytes());
        key
    }

    fn release(&mut self, now: Instant, client: ClientId) {
        let Some(c) = self.clients.get_mut(&client) else { return };
        match std::mem::replace(&mut c.slot, Slot::None) {
            Slot::Held(n) => self.close(now, n, CloseReason::Left(client)),
            Slot::None | Slot::Lost => {}
        }
    }

    /// Closes nameplate `n`, tells the sides that remain, and starts its cooldown.
    fn close(&mut self, now: Instant, n: u32, why: CloseReason) {
        let Some(np) = self.nameplates.remove(&n) else { return };
        self.deadlines.remove(&(np.deadline, n));
        let soon = np.joined.is_some_and(|at| now.saturating_duration_since(at) <= GUESS_WINDOW);
        let guess = soon && !np.ticketed;
        if guess && n & REJOIN_NAMEPLATES == 0 {
            self.suspected_guesses += 1;
        }
        if n & REJOIN_NAMEPLATES == 0 {
            // A held number waits for its holder's next pairing as long as a nameplate may
            // idle; after what looks like a failed key exchange it is not held any more (the
            // holder stops there, and a guesser must not keep it).
            let hold = np.hold.filter(|_| !guess);
            let wait = match hold {
                Some(_) => self.limits.reuse_after.max(self.limits.idle_expiry),
                None => self.limits.reuse_after,
            };
            let until = after(now, wait);
            let joined = np.joined.is_some();
            self.closed.insert(n, Closed { joined, until, hold });
            self.closed_joined += usize::from(joined);
            self.cooldowns.insert((until, n));
        }
        for side in [Some(np.first), np.second].into_iter().flatten() {
            match why {
                CloseReason::Left(leaver) if side == leaver => {}
                CloseReason::Left(_) => {
                    self.lose(side);
                    self.send_to(side, NodeMsg::PeerLeft);
                }
                CloseReason::Expired => {
                    self.lose(side);
                    let secs = self.limits.idle_expiry.as_secs();
                    let idle = match secs {
                        s if s >= 120 && s % 60 == 0 => format!("{} minutes", s / 60),
                        s => format!("{s} seconds"),
                    };
                    let message = format!(
                        "nameplate {n} expired after {idle} without activity: start again with \
                         a new code"
                    );
                    self.error(side, ErrorCode::Expired, message);
                }
            }
        }
    }

    fn lose(&mut self, client: ClientId) {
        if let Some(c) = self.clients.get_mut(&client) {
            c.slot = Slot::Lost;
        }
    }

    fn send_to(&mut self, to: ClientId, msg: NodeMsg) {
        self.outputs.push_back(Output::Send { to, msg });
    }

    /// Answers with an error; the connection stays usable.
    fn error(&mut self, to: ClientId, code: ErrorCode, mut message: String) {
        truncate_utf8(&mut message, MAX_TEXT);
        self.send_to(to, NodeMsg::Error { code, message });
    }

    /// Answers with an error and closes the connection.
    fn fail(&mut self, client: ClientId, code: ErrorCode, message: String) {
        self.error(client, code, message);
        if let Some(c) = self.clients.get_mut(&client) {
            c.phase = Phase::Closing;
        }
        self.outputs.push_back(Output::Close { client });
    }
}

/// `now + d`, saturating at about a year from now for a duration too large to represent
/// (ample for an expiry or a cooldown).
fn after(now: Instant, d: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    now.checked_add(d).or_else(|| now.checked_add(YEAR)).unwrap_or(now)
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let cut = (0..=max).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        s.truncate(cut);
    }
}

#[cfg(test)]
mod tests;
