//! A data lane's record decoder ([`Record::decode`]) on arbitrary bytes: never panics, keeps
//! every cap, and whatever decodes re-encodes to the same bytes' meaning.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2p_copy::internals::wire::data::{Record, FLAG_ZSTD, MAX_CHUNK};

fuzz_target!(|data: &[u8]| {
    let Ok(record) = Record::decode(data) else { return };
    match &record {
        Record::Entry(e) => assert!(e.validate().is_ok()),
        Record::Chunk { flags, payload, .. } => {
            assert_eq!(flags & !FLAG_ZSTD, 0);
            assert!(payload.len() <= MAX_CHUNK);
        }
        _ => {}
    }
    let mut out = Vec::new();
    record.encode(&mut out);
    assert_eq!(Record::decode(&out).as_ref(), Ok(&record));
});
