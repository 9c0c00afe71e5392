//! Two control-stream state machines ([`Session`]) with fixed codes, channels and randomness,
//! driven against each other by a fuzzer-chosen sequence of operations: frames are delivered,
//! dropped, corrupted or replaced; sealed fuzzer bytes and structured messages are injected
//! *sealed with the sending side's key and the counter the receiving side expects*, so they pass
//! authentication and reach the decoder and the state machine at every stage (PAKE or rejoin,
//! confirmation, hello, offer, listing and answers, finish, complete); and the application calls
//! come in any order on either side.
//!
//! Nothing may panic. Invariants checked: no event after a side failed; every event is one its
//! role may see, in an order the protocol allows (secured first, decisions after the offer,
//! completion last); a peer's hello is only accepted with the fingerprint the channel saw.
#![no_main]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2p_copy::error::ErrorKind;
use p2p_copy::internals::crypto::{Keys, Role};
use p2p_copy::internals::proto::{Channel, Config, Event, Session};
use p2p_copy::internals::wire::control::{
    Accept, Answer, Ask, Control, ErrorReport, Hello, Listed, Offer, Refuse, RefuseReason, Summary,
    KIND_SEALED, VERSION,
};
use p2p_copy::internals::wire::data::{Entry, EntryKind, Timestamp};
use rand::rngs::StdRng;
use rand::SeedableRng;

const CODE: &str = "7-orbit-velvet-canyon";
const CONTROL_LANE: u32 = 0;
const SENDER_FP: [u8; 32] = [0x11; 32];
const RECEIVER_FP: [u8; 32] = [0x22; 32];

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    S,
    R,
}

impl Side {
    fn i(self) -> usize {
        self as usize
    }
    fn other(self) -> Side {
        match self {
            Side::S => Side::R,
            Side::R => Side::S,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Rejoin (cheap key schedule) instead of SPAKE2 (slow: a few hundred execs/s).
    pake: bool,
    /// Keys over the "mailbox" first, then `SetChannel`.
    deferred: bool,
    /// The code the receiver types: the right one or a wrong one.
    wrong_code: bool,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Deliver everything both sides have queued, alternating, a few rounds.
    Pump,
    /// Deliver `from`'s next frame.
    Deliver(Side),
    /// Lose `from`'s next frame.
    Drop(Side),
    /// Deliver `from`'s next frame with one byte changed.
    Flip(Side, u16, u8),
    /// Deliver `from`'s next frame cut short.
    Truncate(Side, u16),
    /// Replace `from`'s next frame by these bytes (a frame body, not sealed).
    Replace(Side, Vec<u8>),
    /// Replace `from`'s next sealed frame by these bytes sealed as `from` would.
    ReplaceSealed(Side, Vec<u8>),
    /// Send these bytes sealed as `from` would, as an extra frame.
    InjectSealed(Side, Vec<u8>),
    /// Send this message sealed as `from` would, as an extra frame.
    InjectControl(Side, ArbControl),
    /// Raw frame body as if from `from`.
    Raw(Side, Vec<u8>),
    /// An application call.
    App(Side, App),
    /// Time passes for a side; its deadline is checked.
    Wait(Side, u8),
    /// Deferred sessions: the connection is known.
    SetChannel(Side),
    /// The next step an honest application would take on this side (offer, ask or accept,
    /// list, answer, finish, complete), then pump: reaches the late stages in few operations.
    Honest(Side, bool),
}

#[derive(Arbitrary, Debug)]
enum App {
    Offer(ArbOffer),
    Accept,
    Refuse(u8, Vec<Vec<u8>>),
    Ask(bool),
    List(Vec<ArbListed>),
    ListEnd,
    /// Answers: this many (or as many as the oldest batch, when `None`).
    Answer(Option<u8>, Vec<ArbAnswer>),
    Finish(u64, u64, u64, u64),
    Complete(u64, u64, u64, u64),
    Abort(u8, String),
}

#[derive(Arbitrary, Debug)]
enum ArbControl {
    Hello {
        version_ok: bool,
        fp: bool,
        binding: [u8; 32],
        max_lanes: u16,
        max_chunk: u32,
        features: u64,
    },
    Offer(ArbOffer),
    Accept,
    Refuse(u8, Vec<Vec<u8>>),
    Finish(u64, u64, u64, u64),
    Complete(u64, u64, u64, u64),
    Error(u8, String),
    Ask(bool),
    Listing(Vec<ArbListed>),
    ListEnd,
    Answers(Vec<ArbAnswer>),
}

#[derive(Arbitrary, Debug)]
struct ArbOffer {
    files: u64,
    dirs: u64,
    symlinks: u64,
    bytes: u64,
    names: Vec<Vec<u8>>,
    lanes: u16,
    chunk_size: u32,
    transfer_id: [u8; 16],
    hardlinks: u64,
}

#[derive(Arbitrary, Debug)]
struct ArbListed {
    id: u64,
    path: Vec<u8>,
    kind: u8,
    size: u64,
    target: Vec<u8>,
    mode: u32,
    mtime: Option<(i64, u32)>,
    hash: Option<[u8; 32]>,
}

#[derive(Arbitrary, Debug)]
enum ArbAnswer {
    Send,
    Skip,
    Resume(u64, [u8; 32]),
}

fn offer(o: ArbOffer) -> Offer {
    Offer {
        files: o.files,
        dirs: o.dirs,
        symlinks: o.symlinks,
        bytes: o.bytes,
        names: o.names,
        lanes: o.lanes,
        chunk_size: o.chunk_size,
        transfer_id: o.transfer_id,
        streams: 0,
        text: None,
        hardlinks: o.hardlinks,
        xattrs: false,
    }
}

fn listed(l: ArbListed) -> Listed {
    let kind = match l.kind % 4 {
        0 => EntryKind::Dir,
        1 => EntryKind::File { size: l.size },
        2 => EntryKind::HardLink { target: l.target },
        _ => EntryKind::Symlink { target: l.target },
    };
    Listed {
        entry: Entry {
            id: l.id,
            path: l.path,
            kind,
            mode: l.mode,
            mtime: l.mtime.map(|(secs, nanos)| Timestamp { secs, nanos }),
        },
        hash: l.hash,
    }
}

fn answer(a: ArbAnswer) -> Answer {
    match a {
        ArbAnswer::Send => Answer::Send,
        ArbAnswer::Skip => Answer::Skip,
        ArbAnswer::Resume(offset, digest) => Answer::Resume { offset, digest },
    }
}

fn reason(r: u8) -> RefuseReason {
    match r % 3 {
        0 => RefuseReason::Declined,
        1 => RefuseReason::Conflict,
        _ => RefuseReason::NoSpace,
    }
}

const KINDS: [ErrorKind; 12] = [
    ErrorKind::Usage,
    ErrorKind::WrongCode,
    ErrorKind::Refused,
    ErrorKind::Conflict,
    ErrorKind::Integrity,
    ErrorKind::Network,
    ErrorKind::Protocol,
    ErrorKind::Io,
    ErrorKind::Peer,
    ErrorKind::Internal,
    ErrorKind::Interrupted,
    ErrorKind::Incomplete,
];

fn summary(entries: u64, files: u64, bytes: u64, resumed: u64) -> Summary {
    // Some entries refused now and then (it only counts in Complete).
    Summary { entries, files, bytes, resumed, refused: bytes % 3 }
}

fn control(c: ArbControl, from: Side) -> Control {
    match c {
        ArbControl::Hello { version_ok, fp, binding, max_lanes, max_chunk, features } => {
            let own = if from == Side::S { SENDER_FP } else { RECEIVER_FP };
            Control::Hello(Hello {
                version: if version_ok { VERSION } else { VERSION.wrapping_add(1) },
                cert_fingerprint: if fp { own } else { [0x44; 32] },
                binding,
                max_lanes,
                max_chunk,
                features,
            })
        }
        ArbControl::Offer(o) => Control::Offer(offer(o)),
        ArbControl::Accept => Control::Accept(Accept {}),
        ArbControl::Refuse(r, names) => Control::Refuse(Refuse { reason: reason(r), names }),
        ArbControl::Finish(a, b, c, d) => Control::Finish(summary(a, b, c, d)),
        ArbControl::Complete(a, b, c, d) => Control::Complete(summary(a, b, c, d)),
        ArbControl::Error(k, message) => {
            Control::Error(ErrorReport { kind: KINDS[k as usize % KINDS.len()], message })
        }
        ArbControl::Ask(checksum) => Control::Ask(Ask { checksum }),
        ArbControl::Listing(l) => Control::Listing(l.into_iter().map(listed).collect()),
        ArbControl::ListEnd => Control::ListEnd,
        ArbControl::Answers(a) => Control::Answers(a.into_iter().map(answer).collect()),
    }
}

fn channels() -> [Channel; 2] {
    let exporter = vec![0x33; 32];
    [
        Channel {
            local_fingerprint: SENDER_FP,
            peer_fingerprint: RECEIVER_FP,
            exporter: exporter.clone(),
        },
        Channel { local_fingerprint: RECEIVER_FP, peer_fingerprint: SENDER_FP, exporter },
    ]
}

/// What one side has seen, to check the order of its events.
#[derive(Default, Clone, Copy)]
struct Seen {
    failed: bool,
    confirmed: bool,
    secured: bool,
    offer: bool,
    asked: bool,
    list_end: bool,
    accepted: bool,
    finished: bool,
    completed: bool,
}

struct Harness {
    sides: [Session; 2],
    seen: [Seen; 2],
    /// Frames each side sent and that were not delivered yet.
    queues: [VecDeque<Vec<u8>>; 2],
    /// Each side's keys, kept once it had them (to seal as it would).
    keys: [Option<Keys>; 2],
    /// Sealed frames each side opened successfully (its opener's counter).
    opened: [u64; 2],
    now: [Instant; 2],
    deferred: bool,
    /// Receiver: sizes of the listing's batches not answered yet (from its events).
    batches: VecDeque<usize>,
}

impl Harness {
    fn collect(&mut self) {
        for side in [Side::S, Side::R] {
            let i = side.i();
            while let Some(f) = self.sides[i].poll_transmit() {
                assert!(f.len() >= 4);
                assert_eq!(u32::from_be_bytes(f[..4].try_into().unwrap()) as usize, f.len() - 4);
                self.queues[i].push_back(f[4..].to_vec());
            }
            if self.keys[i].is_none() {
                self.keys[i] = self.sides[i].keys().cloned();
            }
        }
    }

    /// Seals `plain` as `from` would for the frame its peer opens next.
    fn seal_as(&self, from: Side, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys[from.i()].as_ref()?;
        let mut sealer = keys.sealer(CONTROL_LANE);
        for _ in 0..self.opened[from.other().i()] {
            sealer.seal(&mut Vec::new(), 0).ok()?;
        }
        let mut body = vec![KIND_SEALED];
        body.extend_from_slice(plain);
        sealer.seal(&mut body, 1).ok()?;
        Some(body)
    }

    /// Hands a frame body from `from` to the other side and checks what follows.
    fn deliver(&mut self, from: Side, body: &[u8]) {
        let to = from.other().i();
        let before_failed = self.seen[to].failed;
        let sealed = body.first() == Some(&KIND_SEALED);
        let result = self.sides[to].handle_frame(self.now[to], body);
        match result {
            Ok(()) => {
                assert!(!before_failed, "a frame accepted after the session ended");
                if sealed {
                    self.opened[to] += 1;
                }
            }
            Err(_) => self.seen[to].failed = true,
        }
        self.events(from.other());
        self.collect();
    }

    fn events(&mut self, side: Side) {
        let i = side.i();
        let sender = side == Side::S;
        while let Some(e) = self.sides[i].poll_event() {
            let seen = &mut self.seen[i];
            assert!(!seen.failed, "{side:?}: event {e:?} after the session failed");
            match e {
                Event::Confirmed => {
                    assert!(self.deferred && !seen.confirmed);
                    seen.confirmed = true;
                }
                Event::Secured { peer, .. } => {
                    assert!(!seen.secured);
                    assert!(!self.deferred || seen.confirmed);
                    let expected = if sender { RECEIVER_FP } else { SENDER_FP };
                    assert_eq!(peer.cert_fingerprint, expected);
                    assert_eq!(peer.version, VERSION);
                    assert!(peer.max_lanes > 0);
                    seen.secured = true;
                }
                Event::Offer(_) => {
                    assert!(!sender && seen.secured && !seen.offer);
                    seen.offer = true;
                }
                Event::Asked(_) => {
                    assert!(sender && seen.secured && !seen.asked && !seen.accepted);
                    seen.asked = true;
                }
                Event::Listing(batch) => {
                    assert!(!sender && seen.offer && !seen.list_end && !seen.finished);
                    assert!(!batch.is_empty());
                    self.batches.push_back(batch.len());
                }
                Event::ListEnd => {
                    assert!(!sender && seen.offer && !seen.list_end);
                    seen.list_end = true;
                }
                Event::Answers(_) => assert!(sender && seen.asked && !seen.accepted),
                Event::Accepted(_) => {
                    assert!(sender && seen.secured && !seen.accepted);
                    seen.accepted = true;
                }
                Event::Finished(_) => {
                    assert!(!sender && seen.offer && !seen.finished);
                    seen.finished = true;
                }
                Event::Completed(_) => {
                    assert!(sender && seen.accepted && !seen.completed);
                    seen.completed = true;
                }
            }
        }
    }

    fn app(&mut self, side: Side, call: App) {
        let s = &mut self.sides[side.i()];
        let result = match call {
            App::Offer(o) => s.offer(offer(o)),
            App::Accept => s.accept(Accept {}),
            App::Refuse(r, names) => s.refuse(Refuse { reason: reason(r), names }),
            App::Ask(checksum) => s.ask(Ask { checksum }),
            App::List(batch) => s.list(batch.into_iter().map(listed).collect()),
            App::ListEnd => s.list_end(),
            App::Answer(n, answers) => {
                let mut answers: Vec<Answer> = answers.into_iter().map(answer).collect();
                // As many as the oldest batch holds, unless the fuzzer says otherwise.
                let n = n.map_or(self.batches.front().copied().unwrap_or(1), usize::from);
                answers.resize(n, Answer::Send);
                let result = s.answer(answers);
                if result.is_ok() {
                    self.batches.pop_front();
                }
                result
            }
            App::Finish(a, b, c, d) => s.finish(summary(a, b, c, d)),
            App::Complete(a, b, c, d) => s.complete(summary(a, b, c, d)),
            App::Abort(k, message) => {
                s.abort(KINDS[k as usize % KINDS.len()], &message);
                self.seen[side.i()].failed = true;
                Ok(())
            }
        };
        let _ = result;
        self.events(side);
        self.collect();
    }

    /// What an honest application does next on `side`, given what it has seen.
    fn honest(&mut self, side: Side, ask: bool) {
        self.pump();
        let i = side.i();
        if self.deferred && self.seen[i].confirmed && !self.seen[i].secured {
            // Both sides learn the connection before either hello travels on it (as the
            // drivers do: each reads the connection only once it has it).
            for other in [Side::S, Side::R] {
                let _ = self.sides[other.i()]
                    .set_channel(self.now[other.i()], channels()[other.i()].clone());
                self.events(other);
            }
            self.collect();
            self.pump();
        }
        let seen = Seen { ..self.seen[i] };
        let call = match side {
            Side::S if seen.accepted => App::Finish(3, 2, 10, 0),
            Side::S if seen.asked => {
                let batch = (0..3)
                    .map(|i| ArbListed {
                        id: i + 1,
                        path: format!("top/f{i}").into(),
                        kind: 1,
                        size: 5,
                        target: Vec::new(),
                        mode: 0o644,
                        mtime: None,
                        hash: None,
                    })
                    .collect();
                self.app(side, App::List(batch));
                App::ListEnd
            }
            Side::S => App::Offer(ArbOffer {
                files: 2,
                dirs: 1,
                symlinks: 0,
                bytes: 10,
                names: vec!["top".into()],
                lanes: 2,
                chunk_size: 1 << 16,
                transfer_id: [1; 16],
                hardlinks: 0,
            }),
            Side::R if seen.finished => App::Complete(3, 2, 10, 0),
            Side::R if !self.batches.is_empty() => App::Answer(None, Vec::new()),
            Side::R if seen.list_end => App::Accept,
            Side::R if ask && seen.offer => App::Ask(false),
            Side::R => App::Accept,
        };
        self.app(side, call);
        self.pump();
    }

    fn pump(&mut self) {
        for _ in 0..8 {
            let mut moved = false;
            for from in [Side::S, Side::R] {
                while let Some(f) = self.queues[from.i()].pop_front() {
                    moved = true;
                    self.deliver(from, &f);
                }
            }
            if !moved {
                break;
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let mut rng = StdRng::seed_from_u64(7);
    let start = Instant::now();
    let [cs, cr] = channels();
    let config = || Config { handshake_timeout: Duration::from_secs(30), ..Config::default() };
    let secret = [0x55; 32];
    let (s, r) = match (input.pake, input.deferred) {
        (true, deferred) => {
            let code = CODE.parse().unwrap();
            let rcode = if input.wrong_code { "7-orbit-velvet-canal" } else { CODE };
            let rcode = rcode.parse().unwrap();
            if deferred {
                (
                    Session::new_deferred(Role::Sender, &code, config(), start, &mut rng),
                    Session::new_deferred(Role::Receiver, &rcode, config(), start, &mut rng),
                )
            } else {
                (
                    Session::new(Role::Sender, &code, cs.clone(), config(), start, &mut rng),
                    Session::new(Role::Receiver, &rcode, cr.clone(), config(), start, &mut rng),
                )
            }
        }
        (false, deferred) => {
            let rsecret = if input.wrong_code { [0x56; 32] } else { secret };
            if deferred {
                (
                    Session::rejoin_deferred(Role::Sender, secret, config(), start, &mut rng),
                    Session::rejoin_deferred(Role::Receiver, rsecret, config(), start, &mut rng),
                )
            } else {
                (
                    Session::rejoin(Role::Sender, secret, cs.clone(), config(), start, &mut rng),
                    Session::rejoin(Role::Receiver, rsecret, cr.clone(), config(), start, &mut rng),
                )
            }
        }
    };
    let mut h = Harness {
        sides: [s, r],
        seen: [Seen::default(), Seen::default()],
        queues: [VecDeque::new(), VecDeque::new()],
        keys: [None, None],
        opened: [0, 0],
        now: [start, start],
        deferred: input.deferred,
        batches: VecDeque::new(),
    };
    h.collect();
    for op in input.ops.into_iter().take(256) {
        match op {
            Op::Pump => h.pump(),
            Op::Honest(side, ask) => h.honest(side, ask),
            Op::Deliver(from) => {
                if let Some(f) = h.queues[from.i()].pop_front() {
                    h.deliver(from, &f);
                }
            }
            Op::Drop(from) => {
                h.queues[from.i()].pop_front();
            }
            Op::Flip(from, at, xor) => {
                if let Some(mut f) = h.queues[from.i()].pop_front() {
                    if !f.is_empty() {
                        let at = at as usize % f.len();
                        f[at] ^= xor.max(1);
                    }
                    h.deliver(from, &f);
                }
            }
            Op::Truncate(from, len) => {
                if let Some(mut f) = h.queues[from.i()].pop_front() {
                    f.truncate(len as usize % (f.len() + 1));
                    h.deliver(from, &f);
                }
            }
            Op::Replace(from, bytes) => {
                h.queues[from.i()].pop_front();
                h.deliver(from, &bytes);
            }
            Op::ReplaceSealed(from, plain) => {
                if h.queues[from.i()].front().is_some_and(|f| f.first() == Some(&KIND_SEALED)) {
                    h.queues[from.i()].pop_front();
                }
                if let Some(f) = h.seal_as(from, &plain) {
                    h.deliver(from, &f);
                }
            }
            Op::InjectSealed(from, plain) => {
                if let Some(f) = h.seal_as(from, &plain) {
                    h.deliver(from, &f);
                }
            }
            Op::InjectControl(from, c) => {
                let mut plain = Vec::new();
                control(c, from).encode(&mut plain);
                if let Some(f) = h.seal_as(from, &plain) {
                    h.deliver(from, &f);
                }
            }
            Op::Raw(from, bytes) => h.deliver(from, &bytes),
            Op::App(side, call) => h.app(side, call),
            Op::Wait(side, secs) => {
                let i = side.i();
                h.now[i] += Duration::from_secs(u64::from(secs));
                if h.sides[i].handle_timeout(h.now[i]).is_err() {
                    h.seen[i].failed = true;
                }
                if let Some(deadline) = h.sides[i].poll_timeout() {
                    assert!(deadline > h.now[i], "a deadline that passed is still pending");
                }
                h.events(side);
            }
            Op::SetChannel(side) => {
                let channel = channels()[side.i()].clone();
                let i = side.i();
                if h.sides[i].set_channel(h.now[i], channel).is_ok() {
                    assert!(h.seen[i].confirmed && !h.seen[i].failed);
                }
                h.events(side);
                h.collect();
            }
        }
    }
    // An honest finish: whatever is still queued goes through without a panic.
    for from in [Side::S, Side::R] {
        while let Some(f) = h.queues[from.i()].pop_front() {
            h.deliver(from, &f);
        }
    }
    if std::env::var_os("SESSION_DEPTH").is_some() {
        // How far the input got (to check the corpus reaches every stage).
        let [s, r] = &h.seen;
        eprintln!(
            "depth secured={} offer={} asked={} list_end={} accepted={} finished={} completed={}",
            s.secured, r.offer, s.asked, r.list_end, s.accepted, r.finished, s.completed
        );
    }
    if input.wrong_code {
        for i in 0..2 {
            assert!(!h.seen[i].secured, "secured with the wrong code");
        }
    }
});
