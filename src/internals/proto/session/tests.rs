//! Two sessions driven against each other in memory, deterministically.

use super::*;
use crate::wire::control::{Accept, Answer, Ask, Listed, Offer, Refuse, RefuseReason, Summary};
use crate::wire::data::{Entry, EntryKind};
use rand::rngs::StdRng;
use rand::SeedableRng;

const CODE: &str = "7-orbit-velvet-canyon";

struct Pair {
    s: Session,
    r: Session,
    now: Instant,
}

fn channels() -> (Channel, Channel) {
    let (fs, fr) = ([0x11; 32], [0x22; 32]);
    let exporter = vec![0x33; 32];
    (
        Channel { local_fingerprint: fs, peer_fingerprint: fr, exporter: exporter.clone() },
        Channel { local_fingerprint: fr, peer_fingerprint: fs, exporter },
    )
}

fn pair_with(sender_code: &str, receiver_code: &str, cs: Channel, cr: Channel) -> Pair {
    let mut rng = StdRng::seed_from_u64(99);
    let now = Instant::now();
    let s = Session::new(
        Role::Sender,
        &sender_code.parse().unwrap(),
        cs,
        Config::default(),
        now,
        &mut rng,
    );
    let r = Session::new(
        Role::Receiver,
        &receiver_code.parse().unwrap(),
        cr,
        Config::default(),
        now,
        &mut rng,
    );
    Pair { s, r, now }
}

fn pair() -> Pair {
    let (cs, cr) = channels();
    pair_with(CODE, CODE, cs, cr)
}

fn body(frame: &[u8]) -> &[u8] {
    &frame[frame::HEADER_LEN..]
}

impl Pair {
    /// Delivers frames both ways until neither side has anything to send. Returns the first
    /// error of each side.
    fn pump(&mut self) -> (Option<SessionError>, Option<SessionError>) {
        let (mut es, mut er) = (None, None);
        loop {
            let mut moved = false;
            while let Some(f) = self.s.poll_transmit() {
                moved = true;
                if er.is_none() {
                    er = self.r.handle_frame(self.now, body(&f)).err();
                }
            }
            while let Some(f) = self.r.poll_transmit() {
                moved = true;
                if es.is_none() {
                    es = self.s.handle_frame(self.now, body(&f)).err();
                }
            }
            if !moved {
                return (es, er);
            }
        }
    }

    fn events(s: &mut Session) -> Vec<Event> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }
}

fn offer() -> Offer {
    Offer {
        files: 1,
        dirs: 0,
        symlinks: 0,
        bytes: 5,
        names: vec!["a.txt".into()],
        lanes: 1,
        chunk_size: 1 << 20,
        transfer_id: [7; 16],
        streams: 0,
        text: None,
        hardlinks: 0,
        xattrs: false,
    }
}

#[test]
fn full_session_succeeds() {
    let mut p = pair();
    assert_eq!(p.pump(), (None, None));
    let es = Pair::events(&mut p.s);
    let er = Pair::events(&mut p.r);
    let (Event::Secured { verifier: vs, .. }, Event::Secured { verifier: vr, .. }) =
        (&es[0], &er[0])
    else {
        panic!("not secured: {es:?} {er:?}")
    };
    assert_eq!(vs, vr);
    assert!(p.s.keys().is_some() && p.r.keys().is_some());
    assert_eq!(p.s.poll_timeout(), None, "handshake deadline cleared");

    p.s.offer(offer()).unwrap();
    p.pump();
    assert_eq!(Pair::events(&mut p.r), [Event::Offer(offer())]);
    p.r.accept(Accept {}).unwrap();
    p.pump();
    assert_eq!(Pair::events(&mut p.s), [Event::Accepted(Accept {})]);

    let totals = Summary { entries: 1, files: 1, bytes: 5, resumed: 0, refused: 0 };
    p.s.finish(totals).unwrap();
    p.pump();
    assert_eq!(Pair::events(&mut p.r), [Event::Finished(totals)]);
    p.r.complete(totals).unwrap();
    assert_eq!(p.pump(), (None, None));
    assert_eq!(Pair::events(&mut p.s), [Event::Completed(totals)]);
    assert!(p.s.is_done() && p.r.is_done());
}

fn listed(id: u64) -> Listed {
    let entry = Entry {
        id,
        path: format!("a/{id}").into(),
        kind: EntryKind::File { size: 1 },
        mode: 0o644,
        mtime: None,
    };
    Listed { entry, hash: None }
}

/// A receiver asks for a listing, answers every batch in order, then accepts; the sender sees
/// the answers in order and the acceptance only once everything was answered.
#[test]
fn a_listing_is_answered_batch_by_batch_before_the_decision() {
    let mut p = pair();
    p.pump();
    Pair::events(&mut p.s);
    Pair::events(&mut p.r);
    p.s.offer(offer()).unwrap();
    p.pump();
    assert_eq!(Pair::events(&mut p.r), [Event::Offer(offer())]);
    p.r.ask(Ask { checksum: false }).unwrap();
    p.pump();
    assert_eq!(Pair::events(&mut p.s), [Event::Asked(Ask { checksum: false })]);

    p.s.list(vec![listed(1), listed(2)]).unwrap();
    p.s.list(vec![listed(3)]).unwrap();
    assert_eq!(p.s.unanswered(), 2);
    p.s.list_end().unwrap();
    assert_eq!(p.s.list(vec![listed(4)]), Err(SessionError::Misuse("list")), "after the end");
    p.pump();
    assert_eq!(
        Pair::events(&mut p.r),
        [
            Event::Listing(vec![listed(1), listed(2)]),
            Event::Listing(vec![listed(3)]),
            Event::ListEnd
        ]
    );
    // Not yet: two batches are unanswered. Answers must match the oldest batch's length.
    assert_eq!(p.r.accept(Accept {}), Err(SessionError::Misuse("accept")));
    assert_eq!(p.r.answer(vec![Answer::Send]), Err(SessionError::Misuse("answer")));
    let resume = Answer::Resume { offset: 1, digest: [9; 32] };
    p.r.answer(vec![Answer::Skip, resume]).unwrap();
    p.r.answer(vec![Answer::Send]).unwrap();
    p.r.accept(Accept {}).unwrap();
    assert_eq!(p.pump(), (None, None));
    assert_eq!(
        Pair::events(&mut p.s),
        [
            Event::Answers(vec![Answer::Skip, resume]),
            Event::Answers(vec![Answer::Send]),
            Event::Accepted(Accept {})
        ]
    );
    assert_eq!(p.s.unanswered(), 0);
}

/// Answers the sender did not ask for, an acceptance before the answers, or a listing the
/// receiver did not ask for break the protocol.
#[test]
fn listing_out_of_turn_is_a_protocol_error() {
    // Answers to no batch.
    let mut p = pair();
    p.pump();
    p.s.offer(offer()).unwrap();
    p.pump();
    p.r.ask(Ask { checksum: false }).unwrap();
    p.pump();
    p.r.survey.unanswered.push_back(1);
    p.r.answer(vec![Answer::Send]).unwrap();
    let (es, _) = p.pump();
    assert!(matches!(es, Some(SessionError::Unexpected { got: "answers", .. })), "{es:?}");

    // An acceptance while a batch is unanswered.
    let mut p = pair();
    p.pump();
    p.s.offer(offer()).unwrap();
    p.pump();
    p.r.ask(Ask { checksum: false }).unwrap();
    p.pump();
    p.s.list(vec![listed(1)]).unwrap();
    p.s.list_end().unwrap();
    p.pump();
    p.r.survey.unanswered.clear();
    p.r.accept(Accept {}).unwrap();
    let (es, _) = p.pump();
    assert!(matches!(es, Some(SessionError::Unexpected { got: "accept", .. })), "{es:?}");

    // A listing nobody asked for.
    let mut p = pair();
    p.pump();
    p.s.offer(offer()).unwrap();
    p.pump();
    p.s.state = State::Listing;
    p.s.list(vec![listed(1)]).unwrap();
    let (_, er) = p.pump();
    assert!(matches!(er, Some(SessionError::Unexpected { got: "listing", .. })), "{er:?}");
}

#[test]
fn wrong_code_fails_both_sides_before_any_sealed_message() {
    let (cs, cr) = channels();
    let mut p = pair_with(CODE, "7-orbit-velvet-cannon", cs, cr);
    let (es, er) = p.pump();
    assert_eq!(es, Some(SessionError::WrongCode));
    assert_eq!(er, Some(SessionError::WrongCode));
    assert_eq!(SessionError::WrongCode.kind(), ErrorKind::WrongCode);
    assert!(Pair::events(&mut p.s).is_empty() && Pair::events(&mut p.r).is_empty());
    assert!(p.s.keys().is_none(), "keys are never released after a failed confirmation");
    // A second guess on the same session goes nowhere.
    assert!(p.s.handle_frame(p.now, &[0x01]).is_err());
}

#[test]
fn refusal_reaches_the_sender_with_its_reason() {
    let mut p = pair();
    p.pump();
    p.s.offer(offer()).unwrap();
    p.pump();
    let refuse = Refuse { reason: RefuseReason::Conflict, names: vec!["a.txt".into()] };
    p.r.refuse(refuse.clone()).unwrap();
    let (es, er) = p.pump();
    assert_eq!(er, None);
    let err = es.unwrap();
    assert_eq!(err, SessionError::Refused(refuse));
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("--overwrite"));
    assert!(p.r.is_done());
}

#[test]
fn a_substituted_connection_is_detected() {
    // The sender sees a different exporter than the receiver: two TLS sessions spliced by a
    // machine in the middle that relays the PAKE.
    let (cs, mut cr) = channels();
    cr.exporter = vec![0x44; 32];
    let mut p = pair_with(CODE, CODE, cs, cr);
    let (es, er) = p.pump();
    assert_eq!(es, Some(SessionError::Crypto(CryptoError::BadBinding)));
    assert_eq!(er, Some(SessionError::Crypto(CryptoError::BadBinding)));
    assert_eq!(es.unwrap().kind(), ErrorKind::Integrity);
}

#[test]
fn a_swapped_certificate_is_detected() {
    let (cs, mut cr) = channels();
    cr.peer_fingerprint = [0x55; 32];
    let mut p = pair_with(CODE, CODE, cs, cr);
    let (_, er) = p.pump();
    assert_eq!(er, Some(SessionError::Fingerprint));
}

#[test]
fn out_of_order_messages_are_protocol_errors() {
    let mut p = pair();
    p.pump();
    // The receiver cannot finish or offer; the sender cannot accept.
    assert_eq!(p.r.offer(offer()), Err(SessionError::Misuse("offer")));
    assert_eq!(p.s.accept(Accept {}), Err(SessionError::Misuse("accept")));
    // A peer that sends Finish before an offer was accepted breaks the protocol.
    p.s.state = State::Transferring;
    p.s.finish(Summary::default()).unwrap();
    let (_, er) = p.pump();
    assert!(matches!(er, Some(SessionError::Unexpected { got: "finish", .. })), "{er:?}");
}

#[test]
fn peer_errors_are_reported() {
    let mut p = pair();
    p.pump();
    p.r.abort(ErrorKind::Io, "disk full while writing a.txt");
    let (es, _) = p.pump();
    let err = es.unwrap();
    assert!(err.to_string().contains("disk full"));
    assert_eq!(err.kind(), ErrorKind::Peer);
}

#[test]
fn handshake_times_out() {
    let mut p = pair();
    let deadline = p.s.poll_timeout().unwrap();
    assert!(p.s.handle_timeout(deadline - Duration::from_millis(1)).is_ok());
    assert_eq!(
        p.s.handle_timeout(deadline),
        Err(SessionError::Timeout(Config::default().handshake_timeout))
    );
}

#[test]
fn garbage_frames_fail_cleanly() {
    for junk in [&[][..], &[0x03, 1, 2, 3], &[0x01, 0, 1], &[0xff; 40]] {
        let mut p = pair();
        assert!(p.r.handle_frame(p.now, junk).is_err());
    }
    // Sealed garbage after the handshake.
    let mut p = pair();
    p.pump();
    let err = p.r.handle_frame(p.now, &[0x03, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]);
    assert_eq!(err, Err(SessionError::Crypto(CryptoError::Open)));
}

fn deferred_pair(sender_code: &str, receiver_code: &str) -> Pair {
    let mut rng = StdRng::seed_from_u64(7);
    let now = Instant::now();
    let s = Session::new_deferred(
        Role::Sender,
        &sender_code.parse().unwrap(),
        Config::default(),
        now,
        &mut rng,
    );
    let r = Session::new_deferred(
        Role::Receiver,
        &receiver_code.parse().unwrap(),
        Config::default(),
        now,
        &mut rng,
    );
    Pair { s, r, now }
}

/// Rendezvous mode: PAKE and confirmation first (over the mailbox), then the channel, then the
/// hello on it; the result is the same secured session.
#[test]
fn deferred_session_confirms_then_binds_the_channel() {
    let mut p = deferred_pair(CODE, CODE);
    assert_eq!(p.pump(), (None, None));
    assert_eq!(Pair::events(&mut p.s), [Event::Confirmed]);
    assert_eq!(Pair::events(&mut p.r), [Event::Confirmed]);
    assert!(p.s.keys().is_some() && p.r.keys().is_some(), "keys usable for the candidates");
    assert!(p.s.poll_transmit().is_none(), "no hello before the channel is known");
    assert!(p.s.offer(offer()).is_err(), "no offer before the hello");

    let (cs, cr) = channels();
    p.s.set_channel(p.now, cs.clone()).unwrap();
    assert!(p.s.set_channel(p.now, cs).is_err(), "once only");
    p.r.set_channel(p.now, cr).unwrap();
    assert_eq!(p.pump(), (None, None));
    assert!(matches!(Pair::events(&mut p.s)[..], [Event::Secured { .. }]));
    assert!(matches!(Pair::events(&mut p.r)[..], [Event::Secured { .. }]));
    p.s.offer(offer()).unwrap();
    p.pump();
    assert_eq!(Pair::events(&mut p.r), [Event::Offer(offer())]);
}

#[test]
fn deferred_session_with_the_wrong_code_never_confirms() {
    let mut p = deferred_pair(CODE, "7-orbit-velvet-canyom");
    let (es, er) = p.pump();
    assert_eq!(es, Some(SessionError::WrongCode));
    assert_eq!(er, Some(SessionError::WrongCode));
    assert!(Pair::events(&mut p.s).is_empty() && Pair::events(&mut p.r).is_empty());
    assert!(p.s.keys().is_none() && p.r.keys().is_none());
}

/// The binding still protects a deferred session: a connection other than the peer's (its
/// exporter differs) fails the hello.
#[test]
fn deferred_session_detects_a_substituted_connection() {
    let mut p = deferred_pair(CODE, CODE);
    p.pump();
    let (cs, mut cr) = channels();
    cr.exporter = vec![0x44; 32];
    p.s.set_channel(p.now, cs).unwrap();
    p.r.set_channel(p.now, cr).unwrap();
    let (es, er) = p.pump();
    assert!(es.is_some() && er.is_some(), "{es:?} {er:?}");
}

fn rejoin_pair(secret_s: [u8; 32], secret_r: [u8; 32], seed: u64) -> Pair {
    let mut rng = StdRng::seed_from_u64(seed);
    let now = Instant::now();
    let (cs, cr) = channels();
    let s = Session::rejoin(Role::Sender, secret_s, cs, Config::default(), now, &mut rng);
    let r = Session::rejoin(Role::Receiver, secret_r, cr, Config::default(), now, &mut rng);
    Pair { s, r, now }
}

/// Two sides holding the transfer's secret rejoin without a code: secured, with keys of
/// their own (other nonces, other keys), and the secret carried over for the next rejoin.
#[test]
fn a_rejoin_is_secured_by_the_secret_alone() {
    let secret = [0x5a; 32];
    let mut p = rejoin_pair(secret, secret, 1);
    assert_eq!(p.pump(), (None, None));
    assert!(matches!(Pair::events(&mut p.s)[..], [Event::Secured { .. }]));
    assert!(matches!(Pair::events(&mut p.r)[..], [Event::Secured { .. }]));
    let k1 = p.s.keys().unwrap().confirmation();
    assert_eq!(p.s.keys().unwrap().resume_secret(), secret);
    p.s.offer(offer()).unwrap();
    p.pump();
    assert_eq!(Pair::events(&mut p.r), [Event::Offer(offer())]);
    let mut q = rejoin_pair(secret, secret, 2);
    q.pump();
    assert_ne!(q.s.keys().unwrap().confirmation(), k1, "fresh keys per rejoin");
}

/// Without the secret a rejoin fails on both sides before anything is sealed, as a stranger,
/// not as a wrong code.
#[test]
fn a_rejoin_without_the_secret_fails() {
    let mut p = rejoin_pair([1; 32], [2; 32], 3);
    let (es, er) = p.pump();
    assert_eq!(es, Some(SessionError::Stranger));
    assert_eq!(er, Some(SessionError::Stranger));
    assert!(p.s.keys().is_none() && p.r.keys().is_none());
}

/// A rejoining side never runs a PAKE (no guess at the code through it), and a side waiting
/// for a code does not take a rejoin.
#[test]
fn rejoin_and_pake_never_mix() {
    let mut rng = StdRng::seed_from_u64(4);
    let now = Instant::now();
    let (cs, cr) = channels();
    let mut s = Session::rejoin(Role::Sender, [7; 32], cs, Config::default(), now, &mut rng);
    let mut r =
        Session::new(Role::Receiver, &CODE.parse().unwrap(), cr, Config::default(), now, &mut rng);
    let to_s = r.poll_transmit().unwrap();
    let err = s.handle_frame(now, body(&to_s)).unwrap_err();
    assert!(matches!(err, SessionError::Unexpected { .. }), "{err:?}");
    assert!(err.to_string().contains("rejoining"), "{err}");
    let to_r = s.poll_transmit().unwrap();
    let err = r.handle_frame(now, body(&to_r)).unwrap_err();
    assert!(err.to_string().contains("rejoin"), "{err}");
}
