//! The rendezvous protocol's decoders on arbitrary bytes: client messages (what the node
//! reads from anyone), node messages (what a client reads), the frame header and the relay
//! datagram header. Never panic, keep the caps, round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2p_copy_rendezvous::wire::{
    datagram_ticket, decode_client, decode_node, encode, frame_len, put_datagram_header,
    DATAGRAM_HEADER, HEADER_LEN, MAX_FRAME,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode_client(data) {
        assert!(msg.validate().is_ok());
        let framed = encode(&msg);
        assert_eq!(decode_client(&framed[HEADER_LEN..]).as_ref(), Ok(&msg));
        let header: [u8; HEADER_LEN] = framed[..HEADER_LEN].try_into().unwrap();
        assert_eq!(frame_len(header), Ok(framed.len() - HEADER_LEN));
    }
    if let Ok(msg) = decode_node(data) {
        assert!(msg.validate().is_ok());
        let framed = encode(&msg);
        assert_eq!(decode_node(&framed[HEADER_LEN..]).as_ref(), Ok(&msg));
    }
    if let Some(header) = data.first_chunk::<HEADER_LEN>() {
        if let Ok(len) = frame_len(*header) {
            assert!(len <= MAX_FRAME);
            assert_eq!(len, u32::from_be_bytes(*header) as usize);
        }
    }
    if let Some(ticket) = datagram_ticket(data) {
        let mut again = data.to_vec();
        put_datagram_header(&mut again, ticket);
        assert_eq!(again, data);
        assert!(data.len() >= DATAGRAM_HEADER);
    }
});
