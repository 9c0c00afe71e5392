//! LAN discovery datagrams ([`DiscoveryMsg::decode`]) from anyone on the network: never
//! panics; a decoded message re-encodes to exactly the datagram (the format has one encoding).
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2p_copy::internals::wire::discovery::DiscoveryMsg;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = DiscoveryMsg::decode(data) {
        assert_eq!(msg.encode(), data);
    }
});
