//! The control stream's decoders on arbitrary bytes: the frame ([`Frame::decode`]), the
//! sealed message inside it ([`Control::decode`]) and the mailbox's [`Candidates`]. None may
//! panic; whatever decodes re-encodes to something that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2p_copy::internals::wire::control::{Candidates, Control, Frame, MAX_CANDIDATES};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = Frame::decode(data) {
        let mut out = Vec::new();
        frame.encode(&mut out);
        assert_eq!(Frame::decode(&out).as_ref(), Ok(&frame));
    }
    if let Ok(msg) = Control::decode(data) {
        assert!(msg.validate().is_ok());
        let mut out = Vec::new();
        msg.encode(&mut out);
        assert_eq!(Control::decode(&out).as_ref(), Ok(&msg));
    }
    if let Ok(c) = Candidates::decode(data) {
        assert!(c.addrs.len() <= MAX_CANDIDATES);
        let mut out = Vec::new();
        c.encode(&mut out);
        assert_eq!(Candidates::decode(&out).as_ref(), Ok(&c));
    }
});
