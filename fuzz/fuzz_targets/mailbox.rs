//! The mailbox: a side's [`Candidates`] sealed under the mailbox lane with keys from a fixed
//! shared secret (`Keys::from_shared_secret`), opened and decoded by the other side, as
//! `transfer::meet` does. Fuzzer bytes sealed with the right key reach the decoder; fuzzer
//! bytes *not* sealed, or a sealed message with one byte changed, must never open.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2p_copy::internals::crypto::{Keys, Role};
use p2p_copy::internals::proto::MAILBOX_LANE;
use p2p_copy::internals::wire::control::{Candidates, MAX_CANDIDATES};

#[derive(Arbitrary, Debug)]
struct Input {
    from_receiver: bool,
    plain: Vec<u8>,
    raw: Vec<u8>,
    flip: (u16, u8),
}

fuzz_target!(|input: Input| {
    let transcript = [0x42; 32];
    let secret = b"fixed shared secret for fuzzing";
    let (from, to) = if input.from_receiver {
        (Role::Receiver, Role::Sender)
    } else {
        (Role::Sender, Role::Receiver)
    };
    let sending = Keys::from_shared_secret(from, secret, transcript);
    let receiving = Keys::from_shared_secret(to, secret, transcript);

    let mut sealed = input.plain.clone();
    sending.sealer(MAILBOX_LANE).seal(&mut sealed, 0).unwrap();
    let mut opened = sealed.clone();
    receiving.opener(MAILBOX_LANE).open(&mut opened).unwrap();
    assert_eq!(opened, input.plain);
    if let Ok(c) = Candidates::decode(&opened) {
        assert!(c.addrs.len() <= MAX_CANDIDATES);
    }

    // Our own seal does not open as the other direction, nor on another lane.
    assert!(sending.opener(MAILBOX_LANE).open(&mut sealed.clone()).is_err());
    assert!(receiving.opener(0).open(&mut sealed.clone()).is_err());

    let mut tampered = sealed.clone();
    let at = usize::from(input.flip.0) % tampered.len();
    tampered[at] ^= input.flip.1.max(1);
    assert!(receiving.opener(MAILBOX_LANE).open(&mut tampered).is_err(), "a changed byte opened");

    if input.raw != sealed {
        let mut raw = input.raw.clone();
        assert!(receiving.opener(MAILBOX_LANE).open(&mut raw).is_err(), "unsealed bytes opened");
    }
});
