//! The control-stream state machine of one side.
//!
//! Flow (S = sender, R = receiver; both run the same machine with their [`Role`]):
//!
//! 1. Both send `PAKE` at once ([`Session::new`] queues it).
//! 2. On the peer's `PAKE`: finish SPAKE2, send `CONFIRM`.
//! 3. On the peer's `CONFIRM`: check it (a mismatch is [`SessionError::WrongCode`]: nothing
//!    else is sent), then send a sealed `Hello` with our certificate fingerprint and the
//!    channel-binding MAC over the QUIC exporter.
//! 4. On the peer's `Hello`: check the fingerprint against the certificate the QUIC layer saw
//!    and the binding MAC; emit [`Event::Secured`].
//! 5. S: [`Session::offer`] → `Offer`. R: emits [`Event::Offer`]; the application answers with
//!    [`Session::accept`] or [`Session::refuse`]. S emits [`Event::Accepted`], or fails with
//!    [`SessionError::Refused`].
//!
//!    Before deciding, R may [`Session::ask`] for a listing (its destination may already hold
//!    part of the offer). S emits [`Event::Asked`] and sends the manifest in batches
//!    ([`Session::list`], then [`Session::list_end`]); R emits [`Event::Listing`] per batch and
//!    answers each, in order ([`Session::answer`]), which S emits as [`Event::Answers`]. Once
//!    every batch is answered and the listing has ended, R decides as above.
//! 6. Data flows on lanes ([`super::lane`]). S: [`Session::finish`] → `Finish(totals)`.
//!    R: emits [`Event::Finished`]; after checking its lanes, [`Session::complete`] →
//!    `Complete`. S emits [`Event::Completed`]. Both are done.
//!
//! A session made with [`Session::new_deferred`] runs steps 1–2 over the rendezvous mailbox:
//! after step 3's check it emits [`Event::Confirmed`] and sends its hello only when the driver
//! passes the connection in with [`Session::set_channel`].
//!
//! Either side may send `Error` at any point after step 3 ([`Session::abort`]); the other
//! fails with [`SessionError::Peer`]. Time comes in as `now`; the only timer is the handshake
//! deadline (steps 1–4), exposed by [`Session::poll_timeout`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::{CryptoRng, RngCore};

use crate::code::Code;
use crate::crypto::{CryptoError, Keys, Opener, Pake, Role, Sealer};
use crate::error::ErrorKind;
use crate::wire::control::{
    Accept, Answer, Ask, Control, ErrorReport, Frame, Hello, Listed, Offer, Refuse, RefuseReason,
    Summary, VERSION,
};
use crate::wire::{frame, DecodeError};

/// The control stream's lane number in both directions (each direction has its own key).
pub const CONTROL_LANE: u32 = 0;
/// The lane of the sealed candidates message sent through the rendezvous mailbox.
pub const MAILBOX_LANE: u32 = u32::MAX - 1;

/// Tunables the session announces in its hello.
#[derive(Debug, Clone)]
pub struct Config {
    /// Most data lanes this side runs.
    pub max_lanes: u16,
    /// Largest chunk payload this side accepts.
    pub max_chunk: u32,
    /// Time allowed from the start until the peer's hello is verified.
    pub handshake_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_lanes: 8,
            max_chunk: crate::wire::data::MAX_CHUNK as u32,
            handshake_timeout: Duration::from_secs(30),
        }
    }
}

/// What the QUIC layer knows about the connection, for channel binding.
#[derive(Debug, Clone)]
pub struct Channel {
    /// SHA-256 of our certificate.
    pub local_fingerprint: [u8; 32],
    /// SHA-256 of the certificate the peer presented in the TLS handshake.
    pub peer_fingerprint: [u8; 32],
    /// TLS exporter value of this connection (same on both ends).
    pub exporter: Vec<u8>,
}

/// Something the application must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Deferred sessions only: the peer proved it knows the code; call
    /// [`Session::set_channel`] once connected.
    Confirmed,
    /// Key confirmed, channel bound: the peer knows the code. Carries the verifier string.
    Secured {
        /// Short string equal on both sides.
        verifier: String,
        /// The peer's hello (its limits).
        peer: Hello,
    },
    /// Receiver: the sender's offer; answer with accept or refuse.
    Offer(Offer),
    /// Sender: the receiver asks for a listing before it decides; send it with
    /// [`Session::list`] and [`Session::list_end`].
    Asked(Ask),
    /// Receiver: the next batch of the listing; answer it with [`Session::answer`].
    Listing(Vec<Listed>),
    /// Receiver: the listing is complete; decide once every batch is answered.
    ListEnd,
    /// Sender: the receiver's answers to the oldest unanswered batch, in order.
    Answers(Vec<Answer>),
    /// Sender: the receiver accepted; start the lanes.
    Accepted(Accept),
    /// Receiver: the sender wrote every lane; these are its totals.
    Finished(Summary),
    /// Sender: the receiver verified everything. The transfer succeeded.
    Completed(Summary),
}

/// Why a session ended unsuccessfully.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Key confirmation failed.
    #[error("the code is wrong: the other side used a different code (or someone tried to guess it); no data was exchanged")]
    WrongCode,
    /// A rejoining peer could not prove the transfer's secret.
    #[error("the other side is not the one this transfer was with (it does not hold the transfer's secret)")]
    Stranger,
    /// The peer speaks another protocol version.
    #[error("the other side speaks protocol version {0}, this p2p-copy speaks {VERSION}; install the same version on both sides")]
    Version(u16),
    /// A frame could not be decoded.
    #[error("the other side sent a malformed message: {0}")]
    Decode(#[from] DecodeError),
    /// A sealed frame failed authentication or the binding did not verify.
    #[error("{0}")]
    Crypto(CryptoError),
    /// The peer's certificate is not the one it claims in its sealed hello.
    #[error("the connection's certificate does not match the one the peer announced: someone is in the middle")]
    Fingerprint,
    /// A message that is not allowed in the current state.
    #[error("the other side broke the protocol: unexpected {got} while {state}")]
    Unexpected {
        /// What arrived.
        got: &'static str,
        /// What we were doing.
        state: &'static str,
    },
    /// An application call that is not allowed in the current state (a bug in the driver).
    #[error("internal error: {0} not allowed now")]
    Misuse(&'static str),
    /// The handshake did not complete in time.
    #[error("the other side did not complete the handshake within {0:?}")]
    Timeout(Duration),
    /// The receiver refused the offer.
    #[error("{}", refusal_message(.0))]
    Refused(Refuse),
    /// The peer reported an error and ended the session.
    #[error("the other side failed: {}", crate::transfer::printable(&.0.message))]
    Peer(ErrorReport),
}

/// Names of a refusal shown in its message, at most.
const SHOWN_NAMES: usize = 20;

fn refusal_message(r: &Refuse) -> String {
    match r.reason {
        RefuseReason::Declined => "the receiver declined the transfer".into(),
        RefuseReason::NoSpace => "the receiver does not have enough free space".into(),
        RefuseReason::NotOneFile => {
            "the receiver writes a single file to its standard output (receive --stdout), and \
             this offer holds more than one file"
                .into()
        }
        RefuseReason::Conflict => {
            // A receiver lists up to 20; a longer list is shown as a count, not printed whole.
            let shown = r.names.iter().take(SHOWN_NAMES).map(|n| crate::transfer::fs::shown(n));
            let more = match r.names.len().saturating_sub(SHOWN_NAMES) {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            format!(
                "the receiver already has {}{more} and did not allow overwriting (receive with \
                 --overwrite)",
                crate::transfer::printable(&shown.collect::<Vec<_>>().join(", "))
            )
        }
    }
}

impl SessionError {
    /// The error kind (and so the exit code) this failure maps to.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SessionError::WrongCode => ErrorKind::WrongCode,
            SessionError::Stranger => ErrorKind::Protocol,
            SessionError::Version(_)
            | SessionError::Decode(_)
            | SessionError::Unexpected { .. } => ErrorKind::Protocol,
            SessionError::Crypto(CryptoError::WrongCode) => ErrorKind::WrongCode,
            SessionError::Crypto(_) | SessionError::Fingerprint => ErrorKind::Integrity,
            SessionError::Misuse(_) => ErrorKind::Internal,
            SessionError::Timeout(_) => ErrorKind::Network,
            SessionError::Refused(r) if r.reason == RefuseReason::Conflict => ErrorKind::Conflict,
            SessionError::Refused(_) => ErrorKind::Refused,
            SessionError::Peer(r) => match r.kind {
                // Kinds that describe the shared session are the same on both sides; the
                // peer's own trouble (its disk, its bug, its Ctrl-C) is "peer" here.
                k @ (ErrorKind::WrongCode
                | ErrorKind::Refused
                | ErrorKind::Conflict
                | ErrorKind::Integrity
                | ErrorKind::Protocol
                | ErrorKind::Network) => k,
                _ => ErrorKind::Peer,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitPake,
    AwaitConfirm,
    /// Deferred sessions: keys confirmed, waiting for the connection.
    AwaitChannel,
    AwaitHello,
    /// Sender: may offer. Receiver: awaiting the offer.
    Ready,
    /// Sender: offer sent.
    Offered,
    /// Receiver: offer shown, awaiting the application's answer.
    Deciding,
    /// After an ask: the listing and its answers travel (see [`Survey`]).
    Listing,
    Transferring,
    /// Sender: finish sent, awaiting complete. Receiver: finish received, checking lanes.
    Finishing,
    Done,
    Failed,
}

impl State {
    fn describe(self) -> &'static str {
        match self {
            State::AwaitPake => "awaiting the key exchange",
            State::AwaitConfirm => "awaiting key confirmation",
            State::AwaitChannel => "connecting",
            State::AwaitHello => "awaiting the hello",
            State::Ready => "awaiting the offer",
            State::Offered => "awaiting the answer to the offer",
            State::Deciding => "deciding on the offer",
            State::Listing => "listing the offer",
            State::Transferring => "transferring",
            State::Finishing => "finishing",
            State::Done => "done",
            State::Failed => "failed",
        }
    }
}

/// One side of a session. See the module documentation for the flow.
#[derive(Debug)]
pub struct Session {
    role: Role,
    config: Config,
    /// `None` until the driver knows the connection (rendezvous mode: after confirmation).
    channel: Option<Channel>,
    state: State,
    pake: Option<Pake>,
    keys: Option<Keys>,
    sealer: Option<Sealer>,
    opener: Option<Opener>,
    deadline: Option<Instant>,
    outbox: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    survey: Survey,
    /// A rejoining session: the transfer's resume secret and our nonce (no PAKE runs).
    rejoin: Option<([u8; 32], [u8; 32])>,
}

/// The listing's bookkeeping, the same on both sides.
#[derive(Debug, Default)]
struct Survey {
    /// Sizes of the batches sent (sender) or received (receiver) and not yet answered, oldest
    /// first.
    unanswered: VecDeque<usize>,
    /// The listing has ended.
    ended: bool,
}

impl Survey {
    /// Every batch answered after the end: the receiver may decide.
    fn complete(&self) -> bool {
        self.ended && self.unanswered.is_empty()
    }
}

impl Session {
    /// Starts a session and queues our PAKE message.
    pub fn new<R: RngCore + CryptoRng>(
        role: Role,
        code: &Code,
        channel: Channel,
        config: Config,
        now: Instant,
        rng: &mut R,
    ) -> Session {
        Session::start(role, code, Some(channel), config, now, rng)
    }

    /// Starts a session whose connection is not known yet: the PAKE and confirmation travel
    /// another way (the rendezvous mailbox). After the peer's confirmation checks out it emits
    /// [`Event::Confirmed`] and waits for [`Session::set_channel`] before sending its hello.
    pub fn new_deferred<R: RngCore + CryptoRng>(
        role: Role,
        code: &Code,
        config: Config,
        now: Instant,
        rng: &mut R,
    ) -> Session {
        Session::start(role, code, None, config, now, rng)
    }

    fn start<R: RngCore + CryptoRng>(
        role: Role,
        code: &Code,
        channel: Option<Channel>,
        config: Config,
        now: Instant,
        rng: &mut R,
    ) -> Session {
        let (pake, msg) = Pake::start(role, code, rng);
        let mut s = Session::blank(role, channel, config, now);
        s.pake = Some(pake);
        let mut fixed = [0u8; crate::wire::control::PAKE_LEN];
        fixed.copy_from_slice(&msg);
        s.send_clear(&Frame::Pake { version: VERSION, msg: fixed });
        s
    }

    /// Starts a session that rejoins a transfer whose resume secret is `secret` (the keys of
    /// its first session gave it): instead of a PAKE each side sends a fresh nonce, and the
    /// keys come from the secret and both nonces. No code is involved, so no guess at one can
    /// be made this way; a peer that sends a PAKE here fails the session. Then as [`Session::new`].
    pub fn rejoin<R: RngCore + CryptoRng>(
        role: Role,
        secret: [u8; 32],
        channel: Channel,
        config: Config,
        now: Instant,
        rng: &mut R,
    ) -> Session {
        Session::start_rejoin(role, secret, Some(channel), config, now, rng)
    }

    /// [`Session::rejoin`] over the rendezvous mailbox (as [`Session::new_deferred`]).
    pub fn rejoin_deferred<R: RngCore + CryptoRng>(
        role: Role,
        secret: [u8; 32],
        config: Config,
        now: Instant,
        rng: &mut R,
    ) -> Session {
        Session::start_rejoin(role, secret, None, config, now, rng)
    }

    fn start_rejoin<R: RngCore + CryptoRng>(
        role: Role,
        secret: [u8; 32],
        channel: Option<Channel>,
        config: Config,
        now: Instant,
        rng: &mut R,
    ) -> Session {
        let mut nonce = [0u8; 32];
        rng.fill_bytes(&mut nonce);
        let mut s = Session::blank(role, channel, config, now);
        s.rejoin = Some((secret, nonce));
        s.send_clear(&Frame::Rejoin { version: VERSION, nonce });
        s
    }

    fn blank(role: Role, channel: Option<Channel>, config: Config, now: Instant) -> Session {
        Session {
            role,
            deadline: Some(now + config.handshake_timeout),
            config,
            channel,
            state: State::AwaitPake,
            pake: None,
            keys: None,
            sealer: None,
            opener: None,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            survey: Survey::default(),
            rejoin: None,
        }
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The agreed keys, once the peer's confirmation has been checked.
    pub fn keys(&self) -> Option<&Keys> {
        self.keys.as_ref().filter(|_| self.opener.is_some())
    }

    /// True once the session ended successfully (or with a refusal this side sent).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The next frame to write on the control stream, length prefix included.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.outbox.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Fails the session if a deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        match self.deadline {
            Some(d) if now >= d => self.fail(SessionError::Timeout(self.config.handshake_timeout)),
            _ => Ok(()),
        }
    }

    /// Handles one control frame body from the peer.
    pub fn handle_frame(&mut self, _now: Instant, body: &[u8]) -> Result<(), SessionError> {
        if matches!(self.state, State::Failed | State::Done) {
            return Err(SessionError::Misuse("a frame after the session ended"));
        }
        let result = self.handle_frame_inner(body);
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                // Tell the peer why, when the channel is sealed (the driver's own abort finds
                // the session failed and sends nothing); never answer its report or refusal.
                if !matches!(e, SessionError::Peer(_) | SessionError::Refused(_)) {
                    self.abort(e.kind(), &e.to_string());
                }
                self.fail(e)
            }
        }
    }

    fn handle_frame_inner(&mut self, body: &[u8]) -> Result<(), SessionError> {
        let frame = Frame::decode(body)?;
        match (self.state, frame) {
            (State::AwaitPake, Frame::Rejoin { version, nonce }) if self.rejoin.is_some() => {
                if version != VERSION {
                    return Err(SessionError::Version(version));
                }
                let (secret, ours) =
                    self.rejoin.ok_or(SessionError::Misuse("rejoin without a secret"))?;
                let (sender, receiver) = match self.role {
                    Role::Sender => (ours, nonce),
                    Role::Receiver => (nonce, ours),
                };
                let keys = Keys::rejoin(self.role, &secret, &sender, &receiver);
                self.send_clear(&Frame::Confirm(keys.confirmation()));
                self.keys = Some(keys);
                self.state = State::AwaitConfirm;
                Ok(())
            }
            (State::AwaitPake, Frame::Pake { version, msg }) if self.pake.is_some() => {
                if version != VERSION {
                    return Err(SessionError::Version(version));
                }
                let pake = self.pake.take().ok_or(SessionError::Misuse("PAKE twice"))?;
                let keys = pake.finish(&msg).map_err(SessionError::Crypto)?;
                self.send_clear(&Frame::Confirm(keys.confirmation()));
                self.keys = Some(keys);
                self.state = State::AwaitConfirm;
                Ok(())
            }
            (State::AwaitConfirm, Frame::Confirm(mac)) => {
                let keys =
                    self.keys.as_ref().ok_or(SessionError::Misuse("confirm without keys"))?;
                let wrong = if self.rejoin.is_some() {
                    SessionError::Stranger
                } else {
                    SessionError::WrongCode
                };
                keys.check_confirmation(&mac).map_err(|_| wrong)?;
                self.sealer = Some(keys.sealer(CONTROL_LANE));
                self.opener = Some(keys.opener(CONTROL_LANE));
                if self.channel.is_some() {
                    self.send_hello()
                } else {
                    self.state = State::AwaitChannel;
                    self.events.push_back(Event::Confirmed);
                    Ok(())
                }
            }
            (_, Frame::Sealed(ct)) if self.opener.is_some() => {
                let msg = self.open(ct)?;
                self.handle_control(msg)
            }
            (state, frame) => Err(SessionError::Unexpected {
                got: match frame {
                    Frame::Pake { .. } if self.rejoin.is_some() => {
                        "key exchange message (a code) on a rejoining connection"
                    }
                    Frame::Rejoin { .. } if self.pake.is_some() => {
                        "request to rejoin where a code was expected"
                    }
                    Frame::Rejoin { .. } => "request to rejoin",
                    Frame::Pake { .. } => "key exchange message",
                    Frame::Confirm(_) => "key confirmation",
                    Frame::Sealed(_) => "sealed message",
                },
                state: state.describe(),
            }),
        }
    }

    fn send_hello(&mut self) -> Result<(), SessionError> {
        let channel = self.channel.as_ref().ok_or(SessionError::Misuse("hello without channel"))?;
        let keys = self.keys.as_ref().ok_or(SessionError::Misuse("hello without keys"))?;
        let (sender_fp, receiver_fp) = fingerprints(self.role, channel);
        let hello = Hello {
            version: VERSION,
            cert_fingerprint: channel.local_fingerprint,
            binding: keys.binding(&channel.exporter, &sender_fp, &receiver_fp),
            max_lanes: self.config.max_lanes,
            max_chunk: self.config.max_chunk,
            features: 0,
        };
        self.send(&Control::Hello(hello))?;
        self.state = State::AwaitHello;
        Ok(())
    }

    /// Deferred sessions: the connection the rest of the session runs on is now known; sends
    /// our hello on it. The handshake deadline restarts: finding a path had its own bound.
    pub fn set_channel(&mut self, now: Instant, channel: Channel) -> Result<(), SessionError> {
        if self.state != State::AwaitChannel {
            return Err(SessionError::Misuse("set_channel"));
        }
        self.deadline = Some(now + self.config.handshake_timeout);
        self.channel = Some(channel);
        self.send_hello()
    }

    fn handle_control(&mut self, msg: Control) -> Result<(), SessionError> {
        let sender = self.role == Role::Sender;
        match (self.state, msg) {
            (_, Control::Error(report)) => Err(SessionError::Peer(report)),
            (State::AwaitHello, Control::Hello(hello)) => {
                let channel =
                    self.channel.as_ref().ok_or(SessionError::Misuse("hello without channel"))?;
                if hello.cert_fingerprint != channel.peer_fingerprint {
                    return Err(SessionError::Fingerprint);
                }
                let (sender_fp, receiver_fp) = fingerprints(self.role, channel);
                let keys = self.keys.as_ref().ok_or(SessionError::Misuse("hello without keys"))?;
                keys.check_binding(&hello.binding, &channel.exporter, &sender_fp, &receiver_fp)
                    .map_err(SessionError::Crypto)?;
                let verifier = keys.verifier();
                self.deadline = None;
                self.state = State::Ready;
                self.events.push_back(Event::Secured { verifier, peer: hello });
                Ok(())
            }
            (State::Ready, Control::Offer(offer)) if !sender => {
                self.state = State::Deciding;
                self.events.push_back(Event::Offer(offer));
                Ok(())
            }
            (State::Offered, Control::Accept(accept)) if sender => {
                self.state = State::Transferring;
                self.events.push_back(Event::Accepted(accept));
                Ok(())
            }
            (State::Listing, Control::Accept(accept)) if sender && self.survey.complete() => {
                self.state = State::Transferring;
                self.events.push_back(Event::Accepted(accept));
                Ok(())
            }
            (State::Offered | State::Listing, Control::Refuse(refuse)) if sender => {
                Err(SessionError::Refused(refuse))
            }
            (State::Offered, Control::Ask(ask)) if sender => {
                self.state = State::Listing;
                self.events.push_back(Event::Asked(ask));
                Ok(())
            }
            (State::Listing, Control::Answers(answers))
                if sender && self.survey.unanswered.front() == Some(&answers.len()) =>
            {
                self.survey.unanswered.pop_front();
                self.events.push_back(Event::Answers(answers));
                Ok(())
            }
            (State::Listing, Control::Listing(batch))
                if !sender && !self.survey.ended && !batch.is_empty() =>
            {
                self.survey.unanswered.push_back(batch.len());
                self.events.push_back(Event::Listing(batch));
                Ok(())
            }
            (State::Listing, Control::ListEnd) if !sender && !self.survey.ended => {
                self.survey.ended = true;
                self.events.push_back(Event::ListEnd);
                Ok(())
            }
            (State::Transferring, Control::Finish(summary)) if !sender => {
                self.state = State::Finishing;
                self.events.push_back(Event::Finished(summary));
                Ok(())
            }
            (State::Finishing, Control::Complete(summary)) if sender => {
                self.state = State::Done;
                self.events.push_back(Event::Completed(summary));
                Ok(())
            }
            (state, msg) => Err(SessionError::Unexpected {
                got: match msg {
                    Control::Hello(_) => "hello",
                    Control::Offer(_) => "offer",
                    Control::Accept(_) => "accept",
                    Control::Refuse(_) => "refusal",
                    Control::Finish(_) => "finish",
                    Control::Complete(_) => "complete",
                    Control::Error(_) => "error",
                    Control::Ask(_) => "request for a listing",
                    Control::Listing(_) => "listing",
                    Control::ListEnd => "end of the listing",
                    Control::Answers(_) => "answers",
                },
                state: state.describe(),
            }),
        }
    }

    /// Sender: offers the transfer.
    pub fn offer(&mut self, offer: Offer) -> Result<(), SessionError> {
        self.expect(Role::Sender, State::Ready, "offer")?;
        self.send(&Control::Offer(offer))?;
        self.state = State::Offered;
        Ok(())
    }

    /// Receiver: accepts the offer (after a listing: once it ended and every batch is
    /// answered).
    pub fn accept(&mut self, accept: Accept) -> Result<(), SessionError> {
        self.expect_decision("accept")?;
        self.send(&Control::Accept(accept))?;
        self.state = State::Transferring;
        Ok(())
    }

    /// Receiver: refuses the offer (also while a listing is still coming); the session is
    /// over.
    pub fn refuse(&mut self, refuse: Refuse) -> Result<(), SessionError> {
        if !(self.role == Role::Receiver && self.state == State::Listing) {
            self.expect_decision("refuse")?;
        }
        self.send(&Control::Refuse(refuse))?;
        self.state = State::Done;
        Ok(())
    }

    fn expect_decision(&self, what: &'static str) -> Result<(), SessionError> {
        if self.role == Role::Receiver && self.state == State::Listing && self.survey.complete() {
            return Ok(());
        }
        self.expect(Role::Receiver, State::Deciding, what)
    }

    /// Receiver: asks for a listing of the offer before deciding.
    pub fn ask(&mut self, ask: Ask) -> Result<(), SessionError> {
        self.expect(Role::Receiver, State::Deciding, "ask")?;
        self.send(&Control::Ask(ask))?;
        self.state = State::Listing;
        Ok(())
    }

    /// Sender: the next batch of the listing (1 to [`crate::wire::control::MAX_LISTING`]
    /// entries).
    pub fn list(&mut self, batch: Vec<Listed>) -> Result<(), SessionError> {
        self.expect(Role::Sender, State::Listing, "list")?;
        if self.survey.ended || batch.is_empty() || batch.len() > crate::wire::control::MAX_LISTING
        {
            return Err(SessionError::Misuse("list"));
        }
        let n = batch.len();
        self.send(&Control::Listing(batch))?;
        self.survey.unanswered.push_back(n);
        Ok(())
    }

    /// Sender: the listing is complete.
    pub fn list_end(&mut self) -> Result<(), SessionError> {
        self.expect(Role::Sender, State::Listing, "list_end")?;
        if self.survey.ended {
            return Err(SessionError::Misuse("list_end"));
        }
        self.send(&Control::ListEnd)?;
        self.survey.ended = true;
        Ok(())
    }

    /// Receiver: the answers to the oldest unanswered batch, one per entry, in order.
    pub fn answer(&mut self, answers: Vec<Answer>) -> Result<(), SessionError> {
        self.expect(Role::Receiver, State::Listing, "answer")?;
        if self.survey.unanswered.front() != Some(&answers.len()) {
            return Err(SessionError::Misuse("answer"));
        }
        self.send(&Control::Answers(answers))?;
        self.survey.unanswered.pop_front();
        Ok(())
    }

    /// Batches of the listing not answered yet.
    pub fn unanswered(&self) -> usize {
        self.survey.unanswered.len()
    }

    /// Sender: every lane is written; tells the receiver the totals.
    pub fn finish(&mut self, summary: Summary) -> Result<(), SessionError> {
        self.expect(Role::Sender, State::Transferring, "finish")?;
        self.send(&Control::Finish(summary))?;
        self.state = State::Finishing;
        Ok(())
    }

    /// Receiver: every file is verified and in place.
    pub fn complete(&mut self, summary: Summary) -> Result<(), SessionError> {
        self.expect(Role::Receiver, State::Finishing, "complete")?;
        self.send(&Control::Complete(summary))?;
        self.state = State::Done;
        Ok(())
    }

    /// Ends the session because of a local error, telling the peer when the channel is
    /// sealed (before key confirmation nothing is sent: the peer learns from the closed
    /// connection).
    pub fn abort(&mut self, kind: ErrorKind, message: &str) {
        if self.sealer.is_some() && !matches!(self.state, State::Done | State::Failed) {
            let mut message = message.to_owned();
            truncate_utf8(&mut message, crate::wire::control::MAX_MESSAGE);
            // A failure to seal here only means the counter is exhausted; nothing more to say.
            let _ = self.send(&Control::Error(ErrorReport { kind, message }));
        }
        self.state = State::Failed;
        self.deadline = None;
    }

    fn expect(&self, role: Role, state: State, what: &'static str) -> Result<(), SessionError> {
        if self.role != role || self.state != state {
            return Err(SessionError::Misuse(what));
        }
        Ok(())
    }

    fn fail(&mut self, e: SessionError) -> Result<(), SessionError> {
        self.state = State::Failed;
        self.deadline = None;
        Err(e)
    }

    fn send_clear(&mut self, f: &Frame) {
        let mut buf = Vec::new();
        frame::begin(&mut buf);
        f.encode(&mut buf);
        frame::finish(&mut buf);
        self.outbox.push_back(buf);
    }

    fn send(&mut self, msg: &Control) -> Result<(), SessionError> {
        let sealer = self.sealer.as_mut().ok_or(SessionError::Misuse("send before keys"))?;
        let mut buf = Vec::new();
        frame::begin(&mut buf);
        buf.push(crate::wire::control::KIND_SEALED);
        let start = buf.len();
        msg.encode(&mut buf);
        sealer.seal(&mut buf, start).map_err(SessionError::Crypto)?;
        frame::finish(&mut buf);
        self.outbox.push_back(buf);
        Ok(())
    }

    fn open(&mut self, mut ct: Vec<u8>) -> Result<Control, SessionError> {
        let opener = self.opener.as_mut().ok_or(SessionError::Misuse("open before keys"))?;
        opener.open(&mut ct).map_err(SessionError::Crypto)?;
        Ok(Control::decode(&ct)?)
    }
}

/// (sender's, receiver's) certificate fingerprints.
fn fingerprints(role: Role, channel: &Channel) -> ([u8; 32], [u8; 32]) {
    match role {
        Role::Sender => (channel.local_fingerprint, channel.peer_fingerprint),
        Role::Receiver => (channel.peer_fingerprint, channel.local_fingerprint),
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests;
